//! `wharfd launch`: boots an OS image as a container, as the main process
//! of a systemd unit (`Type=notify`, `Delegate=yes`, `KillMode=mixed`, in
//! `machine.slice`), the way systemd-nspawn does for systemd-nspawn@.service
//! — but it is wharf's own code, not a call to nspawn.
//!
//! The launcher (the *supervisor*) stays in the host's namespaces. It
//! checks its input, picks the container's UID range and prepares the
//! image's ownership (idmapped mount, else a recorded chown), splits its
//! delegated cgroup into `payload/` and `supervisor/`, opens the console pty
//! and the notify socket, then forks the container side (see
//! `container`) and writes the container's UID/GID maps when asked.
//! Once the container's init runs it registers the machine with
//! systemd-machined and serves three things until the init exits:
//!
//! - the console: the pty master's output is copied to the launcher's stdout,
//!   so it lands in the unit's journal;
//! - the notify socket: the init's `READY=1` becomes the unit's `READY=1`
//!   (so `systemctl start`/`systemd-run` returns once the container has
//!   booted), `STOPPING=1` and `STATUS=` are relayed;
//! - signals: SIGTERM or SIGINT (a stop of the unit) sends the init
//!   SIGRTMIN+3, systemd's halt request, and the launcher waits for it to exit.
//!
//! Exit status: 0 when the container powered off or halted; [`EXIT_REBOOT`]
//! (133, as nspawn) when it rebooted, so a unit with
//! `RestartForceExitStatus=133` and `SuccessExitStatus=133` starts it again;
//! the init's own status when it exited with one; 1 on any failure, after a
//! one-line error naming the machine and the reason.
//!
//! Nothing is left behind: every mount is in the container's mount namespace
//! (which dies with its last process), the user namespace dies with the
//! container's processes, the range lock is removed, the machine is
//! unregistered, and the payload/supervisor cgroups go with the unit.

use std::fs::File;
use std::io::{BufRead, BufReader, Write};
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use nix::fcntl::OFlag;
use nix::sys::signal::{SigSet, Signal};
use nix::sys::signalfd::{SfdFlags, SignalFd};
use nix::sys::socket::{AddressFamily, MsgFlags, SockFlag, SockType, socket};
use nix::sys::wait::{WaitPidFlag, WaitStatus, waitpid};
use nix::unistd::Pid;
use rustix::thread::CapabilitySet;

use super::capability;
use super::cgroup::{self, HostCgroups};
use super::container::{self, Bind, Channels, Plan};
use super::files::{self, BindSpec};
use super::init::{self, EXIT_REBOOT, INITS};
use super::lock::{self, LockError, LockMode};
use super::name::{MachineName, NameError};
use super::notify;
use super::ownership::{self, Ownership};
use super::raw::{RawError, RawImage};
use super::sys::{self, Forked};
use super::uid_range::{self, HeldRange, PrivateUsers, RangeError};

pub use super::network::Network;
use super::network::Port;

/// Options of `wharfd launch`: what wharfd decides for a start, carried to
/// the launcher in its unit's `ExecStart=` ([`LaunchArgs::command_line`])
/// and parsed back by wharfd's command line.
#[derive(Debug, Clone, PartialEq, Eq, clap::Args)]
pub struct LaunchArgs {
    /// The machine's name (host name rules: up to 64 of a-z A-Z 0-9 - _ .).
    #[arg(long, short = 'M', value_name = "NAME")]
    pub machine: String,
    /// The image: a directory holding the OS tree.
    #[arg(long, short = 'D', value_name = "PATH")]
    pub directory: Option<PathBuf>,
    /// The image: a raw file system (squashfs: read-only; ext4: writable).
    #[arg(long, short = 'i', value_name = "PATH", conflicts_with = "directory")]
    pub image: Option<PathBuf>,
    /// User namespace: `pick` a free 65536-UID range, `no` (container root
    /// is host root), or the first host UID of the range to use.
    #[arg(long, default_value = "pick", value_name = "pick|no|UID")]
    pub private_users: PrivateUsers,
    /// How the image's files get the range's owners: `idmap` (an idmapped
    /// mount, nothing changed on disk), `chown` (shift once, recorded), or
    /// `auto` (idmap where the kernel and file system allow it, else chown).
    #[arg(long, default_value = "auto", value_name = "auto|idmap|chown")]
    pub private_users_ownership: Ownership,
    /// The container's network: host, private, veth, bridge:BRIDGE or zone:ZONE.
    #[arg(long, default_value = "host", value_name = "NETWORK", value_parser = parse_network)]
    pub network: Network,
    /// A port forwarded to the machine ([tcp:|udp:]HOST[:MACHINE]); repeatable.
    #[arg(long = "port", value_name = "PORT", value_parser = parse_port)]
    pub ports: Vec<Port>,
    /// Capabilities kept beyond nspawn's default set (CAP_A,CAP_B or all).
    #[arg(long, default_value = "", value_name = "CAP[,CAP...]", value_parser = parse_capabilities)]
    pub capability: CapabilitySet,
    /// Capabilities dropped from the bounding set (CAP_A,CAP_B or all).
    #[arg(long, default_value = "", value_name = "CAP[,CAP...]", value_parser = parse_capabilities)]
    pub drop_capability: CapabilitySet,
    /// Run the init with no_new_privs set.
    #[arg(long, default_value = "no", value_name = "yes|no", value_parser = parse_yes_no, action = clap::ArgAction::Set)]
    pub no_new_privileges: bool,
    /// A bind mount from the host, as `ro:SPEC` or `rw:SPEC` (SPEC as
    /// `machine start --bind=` takes it, every option spelled out); repeatable,
    /// mounted in this order.
    #[arg(long = "bind", value_name = "ro|rw:SRC:DST:OPTIONS", value_parser = BindSpec::parse_launch)]
    pub binds: Vec<BindSpec>,
    /// An environment variable for the init (over PATH and TERM, not over
    /// container= and the others wharf sets); repeatable.
    #[arg(long = "setenv", value_name = "VAR=VALUE", value_parser = parse_assignment)]
    pub environment: Vec<String>,
}

/// A path the launcher's command line cannot carry: `ExecStart=` goes to
/// systemd as D-Bus strings, which are UTF-8.
#[derive(Debug, thiserror::Error)]
#[error("{} is not a UTF-8 path", .0.display())]
pub struct NotUtf8(pub PathBuf);

impl LaunchArgs {
    /// `PROGRAM launch --option=value...`, which wharfd parses back into
    /// these arguments. Every value is joined to its option with `=`, so no
    /// value (a name or path that begins with `-`, holds spaces or
    /// newlines) can be read as an option of its own.
    pub fn command_line(&self, program: &str) -> Result<Vec<String>, NotUtf8> {
        let path = |path: &Path| path.to_str().map(str::to_string).ok_or_else(|| NotUtf8(path.to_path_buf()));
        let mut argv = vec![program.to_string(), "launch".to_string(), format!("--machine={}", self.machine)];
        if let Some(directory) = &self.directory {
            argv.push(format!("--directory={}", path(directory)?));
        }
        if let Some(image) = &self.image {
            argv.push(format!("--image={}", path(image)?));
        }
        argv.extend([
            format!("--private-users={}", self.private_users),
            format!("--private-users-ownership={}", self.private_users_ownership),
            format!("--network={}", self.network),
            format!("--capability={}", capability::format(self.capability)),
            format!("--drop-capability={}", capability::format(self.drop_capability)),
            format!("--no-new-privileges={}", if self.no_new_privileges { "yes" } else { "no" }),
        ]);
        argv.extend(self.ports.iter().map(|port| format!("--port={port}")));
        for bind in &self.binds {
            path(&bind.source)?;
            path(&bind.destination)?;
            argv.push(format!("--bind={}", bind.launch_value()));
        }
        argv.extend(self.environment.iter().map(|assignment| format!("--setenv={assignment}")));
        Ok(argv)
    }
}

fn parse_network(value: &str) -> Result<Network, String> {
    value.parse().map_err(|e: super::network::SpecError| e.to_string())
}

fn parse_port(value: &str) -> Result<Port, String> {
    value.parse().map_err(|e: super::network::SpecError| e.to_string())
}

fn parse_capabilities(list: &str) -> Result<CapabilitySet, String> {
    capability::parse(list).map_err(|e| e.to_string())
}

/// Variables of the init's environment that wharf sets and nothing overrides.
pub const RESERVED_ENVIRONMENT: [&str; 3] = ["container", "container_uuid", "NOTIFY_SOCKET"];

/// `VAR=VALUE` for the init's environment: VAR of letters, digits and
/// `_` (not first a digit), not one of [`RESERVED_ENVIRONMENT`]; VALUE without NUL.
pub fn parse_assignment(text: &str) -> Result<String, String> {
    let (name, value) = text.split_once('=').ok_or_else(|| format!("'{text}' is not VAR=VALUE"))?;
    let mut chars = name.chars();
    let first_ok = chars.next().is_some_and(|c| c.is_ascii_alphabetic() || c == '_');
    if !first_ok || !chars.all(|c| c.is_ascii_alphanumeric() || c == '_') {
        return Err(format!("'{name}' is not a variable name (letters, digits and _, not first a digit)"));
    }
    if RESERVED_ENVIRONMENT.contains(&name) {
        return Err(format!("{name}= is set by wharf and cannot be changed"));
    }
    if value.contains('\0') {
        return Err(format!("the value of {name} holds a NUL byte"));
    }
    Ok(text.to_string())
}

/// `yes`/`no` (and the other spellings systemd takes for a boolean).
pub fn parse_yes_no(value: &str) -> Result<bool, String> {
    match value {
        "yes" | "true" | "on" | "1" => Ok(true),
        "no" | "false" | "off" | "0" => Ok(false),
        other => Err(format!("'{other}' is not yes or no")),
    }
}

/// A launch that failed: which machine, and why (one line).
#[derive(Debug, thiserror::Error)]
#[error("machine '{machine}': {reason}")]
pub struct LaunchError {
    pub machine: String,
    pub reason: Reason,
}

#[derive(Debug, thiserror::Error)]
pub enum Reason {
    #[error(transparent)]
    Name(#[from] NameError),
    #[error("give the image with --directory or --image")]
    NoImage,
    #[error("image directory {} does not exist", .0.display())]
    NoDirectory(PathBuf),
    #[error("{} is not a directory", .0.display())]
    NotADirectory(PathBuf),
    #[error("no init in {} (looked for {})", .0.display(), INITS.join(", "))]
    NoInit(PathBuf),
    #[error(transparent)]
    Raw(#[from] RawError),
    #[error("read-only image {} cannot be shifted with chown: it needs idmapped mounts, or --private-users=no", .0.display())]
    CannotShift(PathBuf),
    #[error("{what}: {source}")]
    Io {
        what: String,
        #[source]
        source: std::io::Error,
    },
    #[error("{what}: {source}")]
    Sys {
        what: String,
        #[source]
        source: nix::Error,
    },
    #[error(transparent)]
    Range(#[from] RangeError),
    #[error(transparent)]
    Cgroup(#[from] cgroup::CgroupError),
    #[error(transparent)]
    Shift(#[from] ownership::ShiftError),
    #[error("image is shifted to UID range {image}, not {requested} (see --private-users)")]
    ShiftedElsewhere { image: u32, requested: u32 },
    #[error("idmapped mount of {} not possible: {source}", .root.display())]
    Idmap {
        root: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("setting up the container failed: {0}")]
    Setup(String),
    #[error("registering with systemd-machined: {0}")]
    Register(#[source] zbus::Error),
    #[error(transparent)]
    Lock(#[from] LockError),
    #[error("network: {0}")]
    Network(#[from] super::network::host::NetError),
    #[error("bind source {} does not exist", .0.display())]
    NoBindSource(PathBuf),
    #[error("binding {}: {source}", .source_path.display())]
    Bind {
        source_path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

fn io(what: impl Into<String>) -> impl FnOnce(std::io::Error) -> Reason {
    let what = what.into();
    move |source| Reason::Io { what, source }
}

fn sys_err(what: impl Into<String>) -> impl FnOnce(nix::Error) -> Reason {
    let what = what.into();
    move |source| Reason::Sys { what, source }
}

/// How the container ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// Powered off or halted (its init was ended by reboot(2) with
    /// POWER_OFF/HALT, which the kernel turns into SIGINT for a PID
    /// namespace's init).
    PoweredOff,
    /// Rebooted (reboot(2) with RESTART: SIGHUP).
    Rebooted,
    /// The init exited with this status.
    Exited(i32),
    /// The init was killed by this signal.
    Killed(i32),
}

impl Outcome {
    pub fn exit_code(self) -> ExitCode {
        match self {
            Outcome::PoweredOff => ExitCode::SUCCESS,
            Outcome::Rebooted => ExitCode::from(EXIT_REBOOT),
            Outcome::Exited(code) => ExitCode::from(u8::try_from(code).unwrap_or(1)),
            Outcome::Killed(_) => ExitCode::FAILURE,
        }
    }
}

/// `wharfd launch`: runs the container, reports a failure on one line.
pub fn main(args: LaunchArgs) -> ExitCode {
    init_logging();
    match launch(&args) {
        Ok(outcome) => {
            if let Outcome::Killed(signal) = outcome {
                eprintln!(
                    "wharfd launch: machine '{}': the container's init was killed by signal {signal}",
                    args.machine
                );
            }
            outcome.exit_code()
        }
        Err(error) => {
            let _ = sd_notify::notify(&[sd_notify::NotifyState::Status(&error.to_string())]);
            eprintln!("wharfd launch: {error}");
            ExitCode::FAILURE
        }
    }
}

/// Logs to stderr, which the unit sends to the journal: what the launcher
/// decided (range, ownership) at info level, zbus only when it warns.
/// `WHARF_LOG` overrides, as for the other binaries.
fn init_logging() {
    use tracing::level_filters::LevelFilter;
    use tracing_subscriber::filter::Targets;
    use tracing_subscriber::layer::SubscriberExt;
    use tracing_subscriber::util::SubscriberInitExt;
    let filter = std::env::var("WHARF_LOG")
        .ok()
        .and_then(|spec| spec.parse::<Targets>().ok())
        .unwrap_or_else(|| Targets::new().with_default(LevelFilter::INFO).with_target("zbus", LevelFilter::WARN));
    let stderr = tracing_subscriber::fmt::layer()
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_target(false)
        .without_time();
    let _ = tracing_subscriber::registry().with(stderr).with(filter).try_init();
}

/// Boots the image and supervises the container until its init exits.
pub fn launch(args: &LaunchArgs) -> Result<Outcome, LaunchError> {
    let fail = |reason: Reason| LaunchError { machine: args.machine.clone(), reason };
    let name = MachineName::new(&args.machine).map_err(|e| fail(e.into()))?;
    let image = match (&args.directory, &args.image) {
        (Some(directory), _) => Image::Directory(image_directory(directory).map_err(fail)?),
        (None, Some(raw)) => Image::Raw(RawImage::open(raw).map_err(|e| fail(e.into()))?),
        (None, None) => return Err(fail(Reason::NoImage)),
    };
    // The lock nspawn and machined take too, held as long as the container
    // runs: its descriptor dies with this process, however that ends.
    let locked = args.directory.as_ref().or(args.image.as_ref()).map(|path| {
        let mode = if image.read_only() { LockMode::Shared } else { LockMode::Exclusive };
        std::path::absolute(path)
            .map_err(io(format!("resolving {}", path.display())))
            .and_then(|path| lock::lock_image(&path, mode).map_err(Reason::from))
    });
    let lock = locked.transpose().map_err(fail)?;
    let init = find_init(&image.view()).map_err(fail)?;
    let outcome = supervise(&name, &image, &init, args).map_err(fail);
    // The unit's ExecStopPost= does the same for a launcher that was killed.
    if args.network.has_link()
        && let Err(e) = super::network::host::cleanup(name.as_str())
    {
        tracing::warn!("removing the network of machine '{name}': {e} (the unit's ExecStopPost= tries again)");
    }
    // A raw image's loop device is gone once this returns, then its lock.
    drop(image);
    drop(lock);
    outcome
}

/// The image as the launcher holds it.
#[derive(Debug)]
enum Image {
    Directory(PathBuf),
    Raw(RawImage),
}

impl Image {
    /// Where its tree can be read from the launcher.
    fn view(&self) -> PathBuf {
        match self {
            Image::Directory(root) => root.clone(),
            Image::Raw(raw) => raw.view(),
        }
    }

    /// The path machined records as the machine's root.
    fn registered_root(&self) -> &Path {
        match self {
            Image::Directory(root) => root,
            Image::Raw(raw) => &raw.path,
        }
    }

    fn read_only(&self) -> bool {
        matches!(self, Image::Raw(raw) if raw.read_only)
    }
}

/// Where a raw image's root is mounted in the container side's mount
/// namespace (pivot_root needs a directory to mount it on).
fn raw_mount_point(name: &MachineName) -> PathBuf {
    Path::new("/run/wharf/machines").join(name.as_str())
}

/// The image directory, absolute.
fn image_directory(directory: &Path) -> Result<PathBuf, Reason> {
    match std::fs::metadata(directory) {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Err(Reason::NoDirectory(directory.to_path_buf())),
        Err(e) => Err(io(format!("reading {}", directory.display()))(e)),
        Ok(meta) if !meta.is_dir() => Err(Reason::NotADirectory(directory.to_path_buf())),
        Ok(_) => std::fs::canonicalize(directory).map_err(io(format!("resolving {}", directory.display()))),
    }
}

/// The image's init (see [`init::find`]), which must be executable.
fn find_init(root: &Path) -> Result<String, Reason> {
    let mut tree = crate::image::dir::DirTree::open(root).map_err(io(format!("opening {}", root.display())))?;
    let executable = |path: &str| Ok(std::fs::metadata(root.join(path.trim_start_matches('/')))?.mode() & 0o111 != 0);
    match init::find(&mut tree, executable) {
        Ok(Some(init)) => Ok(init.to_string()),
        Ok(None) => Err(Reason::NoInit(root.to_path_buf())),
        Err(e) => Err(Reason::Setup(e.to_string())),
    }
}

/// The user namespace's range and how the image is mounted for it.
#[derive(Debug)]
struct Users {
    range: HeldRange,
    idmapped_root: Option<OwnedFd>,
}

fn prepare_users(name: &MachineName, image: &Image, args: &LaunchArgs) -> Result<Option<Users>, Reason> {
    let root = &image.view();
    let root_uid = std::fs::metadata(root).map_err(io(format!("reading {}", root.display())))?.uid();
    let shifted_to = uid_range::base_of_shifted_image(root_uid);
    let range = match (args.private_users, shifted_to) {
        (PrivateUsers::No, _) => return Ok(None),
        (PrivateUsers::Pick, Some(image)) => uid_range::take(image)?,
        (PrivateUsers::Pick, None) => uid_range::pick(name.as_str())?,
        (PrivateUsers::Base(requested), Some(image)) if image != requested => {
            return Err(Reason::ShiftedElsewhere { image, requested });
        }
        (PrivateUsers::Base(base), _) => uid_range::take(base)?,
    };
    if shifted_to.is_some() {
        tracing::info!("image {} is shifted to UID range {} already", root.display(), range.base);
        return Ok(Some(Users { range, idmapped_root: None }));
    }
    let idmapped = match args.private_users_ownership {
        Ownership::Chown => None,
        wanted => match idmapped_tree(image, range.base) {
            Ok(tree) => Some(tree),
            Err(source) if wanted == Ownership::Auto => {
                tracing::warn!(
                    "idmapped mount of {} not possible ({source}); shifting its files to UID range {} with chown",
                    root.display(),
                    range.base
                );
                None
            }
            Err(source) => return Err(Reason::Idmap { root: root.to_path_buf(), source }),
        },
    };
    if idmapped.is_none() {
        if image.read_only() {
            return Err(Reason::CannotShift(image.registered_root().to_path_buf()));
        }
        let changed = ownership::shift_tree(root, range.base)?;
        tracing::info!("shifted {changed} files of {} to UID range {}", root.display(), range.base);
    }
    Ok(Some(Users { range, idmapped_root: idmapped }))
}

/// A detached mount of the image, idmapped to the range at `base`: a
/// clone of a directory's mount tree, or the raw image's own mount.
fn idmapped_tree(image: &Image, base: u32) -> std::io::Result<OwnedFd> {
    use rustix::mount::{OpenTreeFlags, open_tree};
    let userns = throwaway_userns(&files::idmap_line(files::IdMapping::Identity, base, 0).expect("a mapping"))?;
    let tree = match image {
        Image::Directory(root) => open_tree(
            rustix::fs::CWD,
            root,
            OpenTreeFlags::OPEN_TREE_CLONE | OpenTreeFlags::OPEN_TREE_CLOEXEC | OpenTreeFlags::AT_RECURSIVE,
        )?,
        Image::Raw(raw) => raw.mount().try_clone()?,
    };
    sys::idmap_tree(&tree, &userns)?;
    Ok(tree)
}

/// A user namespace with the UID and GID map `map`, only to describe an
/// idmapping (the mount keeps it alive; it has no process).
fn throwaway_userns(map: &str) -> std::io::Result<File> {
    let (ready_read, ready_write) = nix::unistd::pipe2(OFlag::O_CLOEXEC)?;
    let (done_read, done_write) = nix::unistd::pipe2(OFlag::O_CLOEXEC)?;
    match sys::fork()? {
        Forked::Child => {
            drop((ready_read, done_write));
            if nix::sched::unshare(nix::sched::CloneFlags::CLONE_NEWUSER).is_err() {
                std::process::exit(1);
            }
            let _ = nix::unistd::write(&ready_write, b"1");
            // Lives until the parent has opened the namespace and closes the pipe.
            let _ = nix::unistd::read(&done_read, &mut [0u8; 1]);
            std::process::exit(0);
        }
        Forked::Parent(child) => {
            drop((ready_write, done_read));
            let result = (|| {
                let mut byte = [0u8; 1];
                if nix::unistd::read(&ready_read, &mut byte)? != 1 {
                    return Err(std::io::Error::other("the helper could not create a user namespace"));
                }
                std::fs::write(format!("/proc/{child}/uid_map"), map)?;
                std::fs::write(format!("/proc/{child}/gid_map"), map)?;
                File::open(format!("/proc/{child}/ns/user"))
            })();
            drop(done_write);
            let _ = waitpid(child, None);
            result
        }
    }
}

/// The init's system call filters, built by a child process while the
/// launcher prepares the rest of the boot (libseccomp takes some 15 ms of
/// CPU for them, which every boot waited for when the container side built
/// them between its fork and exec). A process and not a thread: the
/// launcher forks helpers meanwhile, which is sound only while it has a
/// single thread.
struct FilterBuild {
    child: Pid,
    output: File,
}

impl FilterBuild {
    fn start(capabilities: CapabilitySet) -> Result<FilterBuild, Reason> {
        let (read, write) = nix::unistd::pipe2(OFlag::O_CLOEXEC).map_err(sys_err("pipe"))?;
        match sys::fork().map_err(sys_err("forking the filter builder"))? {
            Forked::Child => {
                drop(read);
                let mut write = File::from(write);
                let code = match super::seccomp::compile(capabilities) {
                    Ok(compiled) => i32::from(write.write_all(&compiled.to_bytes()).is_err()),
                    Err(e) => {
                        let _ = write.write_all(e.to_string().as_bytes());
                        2
                    }
                };
                std::process::exit(code);
            }
            Forked::Parent(child) => Ok(FilterBuild { child, output: File::from(read) }),
        }
    }

    /// Waits for the builder and takes its programs, or its one-line error.
    fn finish(mut self) -> Result<super::seccomp::Compiled, Reason> {
        let mut bytes = Vec::new();
        let read = std::io::Read::read_to_end(&mut self.output, &mut bytes);
        let status = waitpid(self.child, None).map_err(sys_err("waiting for the filter builder"))?;
        read.map_err(io("reading the system call filter"))?;
        match status {
            WaitStatus::Exited(_, 0) => super::seccomp::Compiled::from_bytes(&bytes)
                .ok_or_else(|| Reason::Setup("the system call filter came back garbled".into())),
            WaitStatus::Exited(_, 2) => Err(Reason::Setup(String::from_utf8_lossy(&bytes).into_owned())),
            other => Err(Reason::Setup(format!("building the system call filter failed ({other:?})"))),
        }
    }
}

/// The machine's /etc/resolv.conf (see [`super::network::resolv_conf`]).
fn host_resolv_conf() -> String {
    let host = std::fs::read_to_string("/etc/resolv.conf").unwrap_or_default();
    let upstream = std::fs::read_to_string("/run/systemd/resolve/resolv.conf").ok();
    super::network::resolv_conf(&host, upstream.as_deref())
}
/// The detached trees of the `--bind=`s, in their order: cloned here, in
/// the host's mount namespace, with its rights; mounted by the container
/// side inside the image.
fn prepare_binds(binds: &[BindSpec], base: Option<u32>) -> Result<Vec<Bind>, Reason> {
    let mut prepared = Vec::new();
    for spec in binds {
        let meta = match std::fs::metadata(&spec.source) {
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return Err(Reason::NoBindSource(spec.source.clone()));
            }
            other => other.map_err(io(format!("reading {}", spec.source.display())))?,
        };
        let fail = |source| Reason::Bind { source_path: spec.source.clone(), source };
        let userns = match base.and_then(|base| files::idmap_line(spec.idmap, base, meta.uid())) {
            Some(map) => Some(throwaway_userns(&map).map_err(fail)?),
            None => None,
        };
        let tree = files::clone_tree(&spec.source, spec.recursive, spec.read_only, userns.as_ref()).map_err(fail)?;
        prepared.push(Bind { tree, destination: spec.destination.clone(), directory: meta.is_dir() });
    }
    Ok(prepared)
}

/// Maps IDs 0..65536 of `pid`'s user namespace to `base`.. on the host.
fn write_id_maps(pid: Pid, base: u32) -> std::io::Result<()> {
    let map = format!("0 {base} {}\n", uid_range::RANGE_SIZE);
    std::fs::write(format!("/proc/{pid}/uid_map"), &map)?;
    std::fs::write(format!("/proc/{pid}/gid_map"), &map)
}

/// The console: a pty on the host whose slave is the container's
/// /dev/console. The launcher keeps a slave fd open too, so the master does
/// not report hang-ups while no one in the container has it open.
#[derive(Debug)]
struct Console {
    master: File,
    _slave: File,
    path: PathBuf,
}

fn open_console(base: Option<u32>) -> Result<Console, Reason> {
    let pty = super::pty::open(true).map_err(|e| io(format!("opening the console: {}", e.step))(e.source))?;
    let (master, slave, path) = (File::from(pty.master), File::from(pty.slave), pty.path);
    // Container root (and its tty group, GID 5) must be able to open it.
    if let Some(base) = base {
        std::os::unix::fs::fchown(&slave, Some(base), Some(base + 5))
            .map_err(io(format!("giving {} to the container", path.display())))?;
    }
    Ok(Console { master, _slave: slave, path })
}

/// A random (version 4) UUID: the machine ID machined records and the
/// container's systemd takes as its machine ID (`container_uuid`).
fn new_machine_id() -> Result<[u8; 16], Reason> {
    let mut id = [0u8; 16];
    std::io::Read::read_exact(&mut File::open("/dev/urandom").map_err(io("opening /dev/urandom"))?, &mut id)
        .map_err(io("reading /dev/urandom"))?;
    id[6] = (id[6] & 0x0f) | 0x40;
    id[8] = (id[8] & 0x3f) | 0x80;
    Ok(id)
}

fn uuid_string(id: &[u8; 16]) -> String {
    let hex: String = id.iter().map(|b| format!("{b:02x}")).collect();
    format!("{}-{}-{}-{}-{}", &hex[..8], &hex[8..12], &hex[12..16], &hex[16..20], &hex[20..])
}

/// The container's processes as the supervisor knows them.
#[derive(Debug)]
struct Running {
    init: Pid,
    outer: Pid,
}

impl Running {
    /// Kills the container outright (a launch that failed half way) and reaps it.
    fn kill(&self) {
        for pid in [self.init, self.outer] {
            let _ = nix::sys::signal::kill(pid, Signal::SIGKILL);
            let _ = waitpid(pid, None);
        }
    }
}

/// The signals the supervisor blocks: all but those a fault raises (and
/// SIGKILL and SIGSTOP, which cannot be). A signal for the machine's
/// processes reaches the supervisor too: machined before systemd 257 kills
/// "all" of a machine by signalling its whole unit, the supervisor with it,
/// and most signals (SIGUSR2, which asks the container's systemd for a
/// state dump, SIGRTMIN+n, ...) would end it by default, and the machine
/// with it. Blocked, they stay pending and harmless; the four it acts on
/// are read from its signalfd. The container's init starts with none blocked.
fn supervisor_mask() -> SigSet {
    let mut mask = SigSet::all();
    for fault in [
        Signal::SIGSEGV,
        Signal::SIGBUS,
        Signal::SIGILL,
        Signal::SIGFPE,
        Signal::SIGTRAP,
        Signal::SIGSYS,
        Signal::SIGABRT,
    ] {
        mask.remove(fault);
    }
    mask
}

fn supervise(name: &MachineName, image: &Image, init: &str, args: &LaunchArgs) -> Result<Outcome, Reason> {
    // Signals arrive through a signalfd: blocked from now on, so none is
    // lost between here and the loop, and the children unblock them.
    let mut signals = SigSet::empty();
    for signal in [Signal::SIGCHLD, Signal::SIGTERM, Signal::SIGINT, Signal::SIGHUP] {
        signals.add(signal);
    }
    supervisor_mask().thread_block().map_err(sys_err("blocking signals"))?;
    let signal_fd = SignalFd::with_flags(&signals, SfdFlags::SFD_NONBLOCK | SfdFlags::SFD_CLOEXEC)
        .map_err(sys_err("creating a signalfd"))?;
    // The init is the outer child's child: when that exits, the init is
    // reparented here, and its exit status (reboot or poweroff) with it.
    nix::sys::prctl::set_child_subreaper(true).map_err(sys_err("becoming a subreaper"))?;

    let capabilities = capability::bounding_set(args.network.private(), args.capability, args.drop_capability);
    let filters = FilterBuild::start(capabilities)?;
    let users = prepare_users(name, image, args)?;
    let base = users.as_ref().map(|u| u.range.base);
    let network = super::network::host::prepare(name.as_str(), &args.network, &args.ports)?;
    if let Some(network) = &network {
        tracing::info!("network: {network}");
    }
    let resolv_conf = args.network.addressed().then(host_resolv_conf);
    let host_cgroups = HostCgroups::detect().map_err(io("reading the host's cgroups"))?;
    let payload_cgroups = cgroup::split(&host_cgroups, base)?;
    let binds = prepare_binds(&args.binds, base)?;
    let console = open_console(base)?;
    let notify_socket = socket(AddressFamily::Unix, SockType::Datagram, SockFlag::SOCK_CLOEXEC, None)
        .map_err(sys_err("creating the notify socket"))?;
    let id = new_machine_id()?;
    let (report_read, report_write) = nix::unistd::pipe2(OFlag::O_CLOEXEC).map_err(sys_err("pipe"))?;
    let (go_read, go_write) = nix::unistd::pipe2(OFlag::O_CLOEXEC).map_err(sys_err("pipe"))?;

    let (users, idmapped_root) = match users {
        Some(Users { range, idmapped_root }) => (Some(range), idmapped_root),
        None => (None, None),
    };
    let (root, root_tree) = match image {
        Image::Directory(root) => (root.clone(), idmapped_root),
        Image::Raw(raw) => {
            let mount_point = raw_mount_point(name);
            std::fs::create_dir_all(&mount_point).map_err(io(format!("creating {}", mount_point.display())))?;
            let tree = match idmapped_root {
                Some(tree) => tree,
                None => raw.mount().try_clone().map_err(io("duplicating the image's mount"))?,
            };
            (mount_point, Some(tree))
        }
    };
    let seccomp = filters.finish()?;
    let plan = Plan {
        name: name.to_string(),
        root: root.clone(),
        root_tree,
        base,
        private_network: args.network.private(),
        wait_for_network: network.is_some(),
        resolv_conf,
        capabilities,
        no_new_privileges: args.no_new_privileges,
        seccomp,
        environment: args.environment.clone(),
        payload_cgroups,
        cgroup_mounts: host_cgroups.container_mounts(),
        console: console.path.clone(),
        notify: notify_socket.try_clone().map_err(io("duplicating the notify socket"))?,
        init: init.to_string(),
        uuid: uuid_string(&id),
        binds,
    };
    let outer = match sys::fork().map_err(sys_err("forking the container"))? {
        Forked::Child => container::run_outer_child(plan, Channels { report: report_write, go: go_read }),
        Forked::Parent(pid) => pid,
    };
    // The container side has its copies now; ours would keep the pipe open
    // and the idmapped tree alive.
    drop((plan, report_write, go_read));

    let running = start(outer, base, network.as_ref(), report_read, go_write);
    if matches!(image, Image::Raw(_)) {
        // Only the container side's mount namespace uses it.
        let _ = std::fs::remove_dir(&root);
    }
    let running = running?;
    let bus = match register(name, &id, running.init, image.registered_root()) {
        Ok(bus) => bus,
        Err(e) => {
            running.kill();
            return Err(Reason::Register(e));
        }
    };
    let _ = sd_notify::notify(&[sd_notify::NotifyState::Status("Container booting.")]);
    let outcome = serve(&running, &signal_fd, &notify_socket, &console);
    if let Err(e) = zbus::block_on(unregister(&bus, name)) {
        tracing::debug!("unregistering {name}: {e}");
    }
    drop(users);
    outcome
}

/// Follows the container side's reports until its init has exec'd; writes
/// the ID maps when asked. Returns the container's processes.
fn start(
    outer: Pid,
    base: Option<u32>,
    network: Option<&super::network::host::Prepared>,
    report: OwnedFd,
    go: OwnedFd,
) -> Result<Running, Reason> {
    let mut lines = BufReader::new(File::from(report)).lines();
    // The next report; `None` once every writer has closed the pipe.
    let mut next = || -> Result<Option<String>, Reason> {
        match lines.next() {
            None => Ok(None),
            Some(Err(e)) => Err(io("reading the container's reports")(e)),
            Some(Ok(line)) => match line.strip_prefix("error ") {
                Some(error) => Err(Reason::Setup(error.to_string())),
                None => Ok(Some(line)),
            },
        }
    };
    let unexpected = |line: Option<String>| match line {
        Some(line) => Reason::Setup(format!("unexpected report '{line}'")),
        None => Reason::Setup("the container side exited without saying why".into()),
    };
    let result = (|| {
        if let Some(base) = base {
            match next()? {
                Some(line) if line == "userns" => {}
                other => return Err(unexpected(other)),
            }
            write_id_maps(outer, base).map_err(io("writing the container's UID/GID maps"))?;
            nix::unistd::write(&go, b"1").map_err(sys_err("releasing the container"))?;
        }
        if let Some(network) = network {
            // The container's network namespace exists now: its end of
            // the veth pair goes in, configured, before its init runs.
            match next()? {
                Some(line) if line == "netns" => {}
                other => return Err(unexpected(other)),
            }
            super::network::host::attach(network, outer.as_raw())?;
            nix::unistd::write(&go, b"1").map_err(sys_err("releasing the container"))?;
        }
        let line = next()?;
        match line.as_deref().and_then(|l| l.strip_prefix("pid ")).and_then(|pid| pid.parse().ok()) {
            Some(pid) => Ok(Pid::from_raw(pid)),
            None => Err(unexpected(line)),
        }
    })();
    let init = match result {
        Ok(init) => init,
        Err(e) => {
            let _ = nix::sys::signal::kill(outer, Signal::SIGKILL);
            let _ = waitpid(outer, None);
            return Err(e);
        }
    };
    let running = Running { init, outer };
    // The pipe closes without a word when the init has exec'd (its end is
    // close-on-exec, and the outer child has exited).
    match next() {
        Ok(None) => Ok(running),
        Ok(line) => {
            running.kill();
            Err(unexpected(line))
        }
        Err(e) => {
            running.kill();
            Err(e)
        }
    }
}

fn register(name: &MachineName, id: &[u8; 16], leader: Pid, root: &Path) -> zbus::Result<zbus::Connection> {
    zbus::block_on(async {
        let bus = zbus::Connection::system().await?;
        let machined = zbus_systemd::machine1::ManagerProxy::new(&bus).await?;
        machined
            .register_machine(
                name.to_string(),
                id.to_vec(),
                "wharf".into(),
                "container".into(),
                leader.as_raw() as u32,
                root.display().to_string(),
            )
            .await?;
        Ok(bus)
    })
}

async fn unregister(bus: &zbus::Connection, name: &MachineName) -> zbus::Result<()> {
    let machined = zbus_systemd::machine1::ManagerProxy::new(bus).await?;
    machined.unregister_machine(name.to_string()).await
}

/// How often a halt request is repeated until the init exits.
const HALT_RESEND_MS: u16 = 250;

/// The supervisor's loop: console, notifications, signals, until the init exits.
fn serve(running: &Running, signals: &SignalFd, notify: &OwnedFd, console: &Console) -> Result<Outcome, Reason> {
    use nix::poll::{PollFd, PollFlags, PollTimeout, poll};
    let mut ready = false;
    let mut stopping = false;
    let mut stop_requested = false;
    loop {
        let mut fds = [
            PollFd::new(signals.as_fd(), PollFlags::POLLIN),
            PollFd::new(notify.as_fd(), PollFlags::POLLIN),
            PollFd::new(console.master.as_fd(), PollFlags::POLLIN),
        ];
        let timeout = if stop_requested { PollTimeout::from(HALT_RESEND_MS) } else { PollTimeout::NONE };
        let events = match poll(&mut fds, timeout) {
            Err(nix::errno::Errno::EINTR) => continue,
            other => other.map_err(sys_err("poll"))?,
        };
        if events == 0 {
            // The kernel drops a signal sent from outside to a PID
            // namespace's init while that init has no handler for it: a
            // halt request that came before the container's systemd set up
            // its signal handling was lost. Asking again is harmless.
            let _ = sys::send_signal(running.init, init::halt_signal());
            continue;
        }
        let readable = |fd: &PollFd| fd.revents().is_some_and(|r| !r.is_empty());
        let (signal_ready, notify_ready, console_ready) = (readable(&fds[0]), readable(&fds[1]), readable(&fds[2]));
        if console_ready {
            copy_console(console);
        }
        if notify_ready {
            relay_notifications(notify, &mut ready, &mut stopping);
        }
        if signal_ready {
            while let Ok(Some(info)) = signals.read_signal() {
                let signal = info.ssi_signo as i32;
                if signal == Signal::SIGTERM as i32 || signal == Signal::SIGINT as i32 {
                    tracing::info!("stop requested: asking the container to halt");
                    stop_requested = true;
                    let _ = sd_notify::notify(&[sd_notify::NotifyState::Stopping]);
                    let _ = sys::send_signal(running.init, init::halt_signal());
                }
            }
            if let Some(outcome) = reap(running)? {
                copy_console(console);
                return Ok(match outcome {
                    // Our halt request reached the init before its systemd
                    // handled signals (a stop right at start): the stop we
                    // were asked for, not a failure.
                    Outcome::Killed(_) if stop_requested => Outcome::PoweredOff,
                    other => other,
                });
            }
        }
    }
}

/// Reaps exited children; the init's end is the container's end.
fn reap(running: &Running) -> Result<Option<Outcome>, Reason> {
    loop {
        match waitpid(None, Some(WaitPidFlag::WNOHANG)) {
            Ok(WaitStatus::StillAlive) | Err(nix::errno::Errno::ECHILD) => return Ok(None),
            Ok(WaitStatus::Exited(pid, code)) if pid == running.init => return Ok(Some(Outcome::Exited(code))),
            Ok(WaitStatus::Signaled(pid, signal, _)) if pid == running.init => {
                return Ok(Some(match signal {
                    Signal::SIGINT => Outcome::PoweredOff,
                    Signal::SIGHUP => Outcome::Rebooted,
                    other => Outcome::Killed(other as i32),
                }));
            }
            Ok(_) => continue,
            Err(e) => return Err(sys_err("waiting for the container")(e)),
        }
    }
}

/// Copies what the container wrote to its console to our stdout (the
/// journal), without the carriage returns a terminal adds.
fn copy_console(console: &Console) {
    let mut buffer = [0u8; 8192];
    let mut stdout = std::io::stdout().lock();
    loop {
        match std::io::Read::read(&mut &console.master, &mut buffer) {
            Ok(0) | Err(_) => break,
            Ok(n) => {
                let text: Vec<u8> = buffer[..n].iter().copied().filter(|&b| b != b'\r').collect();
                if stdout.write_all(&text).is_err() {
                    break;
                }
            }
        }
    }
    let _ = stdout.flush();
}

fn relay_notifications(socket: &OwnedFd, ready: &mut bool, stopping: &mut bool) {
    use sd_notify::NotifyState;
    let mut buffer = [0u8; 4096];
    while let Ok(n) =
        nix::sys::socket::recv(std::os::fd::AsRawFd::as_raw_fd(socket), &mut buffer, MsgFlags::MSG_DONTWAIT)
    {
        let message = notify::parse(&buffer[..n]);
        let mut states = Vec::new();
        let status;
        if message.ready && !*ready {
            *ready = true;
            states.push(NotifyState::Ready);
        }
        if message.stopping && !*stopping {
            *stopping = true;
            states.push(NotifyState::Stopping);
        }
        if let Some(text) = &message.status {
            let phase = if *stopping {
                "stopping"
            } else if *ready {
                "running"
            } else {
                "booting"
            };
            status = format!("Container {phase}: {text}");
            states.push(NotifyState::Status(&status));
        }
        if !states.is_empty() {
            let _ = sd_notify::notify(&states);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formats_a_machine_id_as_a_uuid() {
        let id = [0x12, 0x34, 0x56, 0x78, 0x9a, 0xbc, 0x4e, 0xf0, 0x81, 0x23, 0x45, 0x67, 0x89, 0xab, 0xcd, 0xef];
        assert_eq!(uuid_string(&id), "12345678-9abc-4ef0-8123-456789abcdef");
    }

    #[test]
    fn outcomes_map_to_exit_statuses() {
        assert_eq!(Outcome::PoweredOff.exit_code(), ExitCode::SUCCESS);
        assert_eq!(Outcome::Rebooted.exit_code(), ExitCode::from(133));
        assert_eq!(Outcome::Exited(3).exit_code(), ExitCode::from(3));
        assert_eq!(Outcome::Killed(9).exit_code(), ExitCode::FAILURE);
    }

    /// What wharfd's own command line makes of `argv`.
    fn parse(argv: &[String]) -> Result<LaunchArgs, clap::Error> {
        use clap::Parser;
        match crate::cli::wharfd::Args::try_parse_from(argv)?.command {
            Some(crate::cli::wharfd::Command::Launch(args)) => Ok(args),
            other => panic!("{argv:?} is not a launch: {other:?}"),
        }
    }

    fn directory_launch(machine: &str, directory: &str) -> LaunchArgs {
        LaunchArgs {
            machine: machine.into(),
            directory: Some(PathBuf::from(directory)),
            image: None,
            private_users: PrivateUsers::Pick,
            private_users_ownership: Ownership::Auto,
            network: Network::Host,
            ports: Vec::new(),
            capability: CapabilitySet::empty(),
            drop_capability: CapabilitySet::SYS_ADMIN,
            no_new_privileges: true,
            binds: Vec::new(),
            environment: Vec::new(),
        }
    }

    #[test]
    fn launch_arguments_survive_the_command_line() {
        let args = directory_launch("f28", "/var/lib/machines/f28");
        let argv = args.command_line("/usr/lib/wharf/wharfd").unwrap();
        assert_eq!(&argv[..3], ["/usr/lib/wharf/wharfd", "launch", "--machine=f28"]);
        for word in &argv[2..] {
            assert!(word.starts_with("--") && word.contains('='), "{word} is not --option=value");
        }
        assert_eq!(parse(&argv).unwrap(), args);

        let every = LaunchArgs {
            directory: None,
            image: Some(PathBuf::from("/var/lib/machines/f29.raw")),
            private_users: PrivateUsers::Base(1_835_008),
            private_users_ownership: Ownership::Chown,
            network: Network::Zone("lab".into()),
            ports: vec!["tcp:8080:80".parse().unwrap(), "udp:53".parse().unwrap()],
            capability: capability::all(),
            drop_capability: CapabilitySet::empty(),
            no_new_privileges: false,
            binds: vec![
                BindSpec::parse("/srv/a\\:b:/--network=private:idmap", true).unwrap(),
                BindSpec::parse("/srv/c", false).unwrap(),
            ],
            environment: vec!["A=two words".into(), "B=--network=private".into(), "C=".into(), "D=x\ny".into()],
            ..directory_launch("f29", "/")
        };
        assert_eq!(parse(&every.command_line("wharfd").unwrap()).unwrap(), every);
        for (private_users, ownership) in [(PrivateUsers::No, Ownership::Idmap), (PrivateUsers::Pick, Ownership::Auto)]
        {
            let args = LaunchArgs { private_users, private_users_ownership: ownership, ..every.clone() };
            assert_eq!(parse(&args.command_line("wharfd").unwrap()).unwrap(), args);
        }
    }

    /// Names and paths that look like options, or hold spaces and newlines,
    /// come back as the values they were.
    #[test]
    fn hostile_values_stay_values() {
        let hostile = [
            "-rf",
            "--directory=/etc",
            "--image=/etc/shadow",
            "-D/etc",
            "--",
            "a b",
            "f28\n--network=private",
            "f28\n",
            " ",
            "",
            "=",
        ];
        for value in hostile {
            let named = directory_launch(value, "/var/lib/machines/x");
            assert_eq!(parse(&named.command_line("wharfd").unwrap()).unwrap(), named, "machine {value:?}");
            let placed = directory_launch("x", &format!("/srv/{value}"));
            assert_eq!(parse(&placed.command_line("wharfd").unwrap()).unwrap(), placed, "directory {value:?}");
            let relative =
                LaunchArgs { directory: None, image: Some(PathBuf::from(value)), ..directory_launch("x", "/") };
            if !value.is_empty() {
                assert_eq!(parse(&relative.command_line("wharfd").unwrap()).unwrap(), relative, "image {value:?}");
            }
        }
        // The launcher then refuses what is not a machine name, in one line.
        let error = launch(&directory_launch("-rf", "/nonexistent")).unwrap_err().to_string();
        assert!(error.starts_with("machine '-rf': ") && !error.contains('\n'), "{error}");
        let error = launch(&directory_launch("f28\n--network=private", "/nonexistent")).unwrap_err();
        assert!(matches!(error.reason, Reason::Name(_)), "{error}");
    }

    #[test]
    fn paths_that_are_not_utf8_are_refused() {
        use std::os::unix::ffi::OsStrExt;
        let path = PathBuf::from(std::ffi::OsStr::from_bytes(b"/srv/\xff"));
        let args = LaunchArgs { directory: Some(path.clone()), ..directory_launch("x", "/") };
        assert_eq!(args.command_line("wharfd").unwrap_err().0, path);
    }

    #[test]
    fn errors_name_the_machine_in_one_line() {
        let error =
            LaunchError { machine: "f28".into(), reason: Reason::NoInit(PathBuf::from("/var/lib/machines/f28")) };
        let text = error.to_string();
        assert!(text.starts_with("machine 'f28': no init in /var/lib/machines/f28"), "{text}");
        assert!(!text.contains('\n'));
    }
}
