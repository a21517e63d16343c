//! The container's side of the launch: what the launcher's child does to
//! build the container's world and start its init in it.
//!
//! Two processes do it, because a PID namespace only applies to the
//! children of the process that creates it:
//!
//! 1. The *outer child*, forked by the launcher, still in the host's user
//!    namespace (so with the host's privileges): joins the payload cgroup,
//!    takes a private mount namespace (slave of the host's, so nothing
//!    propagates back), mounts the image as the new root (idmapped when the
//!    kernel allows it), gives it `/dev`, `/run`, `/tmp`, a read-only `/sys`
//!    and a `/proc` (the kernel lets a user namespace mount procfs or sysfs
//!    only where an unobstructed instance is already visible), binds the
//!    console and the notify socket, and `pivot_root`s into it. Then it
//!    unshares the user, mount, PID, UTS, IPC, cgroup (and network)
//!    namespaces at once, waits for the launcher to write its UID/GID maps,
//!    becomes root of the new user namespace, forks the init, reports the
//!    init's PID and exits.
//! 2. The *init*, PID 1 of the new PID namespace, root of the new user
//!    namespace: mounts what must belong to the container's own namespaces
//!    (procfs for its PID namespace, sysfs for a private network, its
//!    cgroup namespace's hierarchies, a new devpts instance, `/dev/shm`,
//!    `/dev/mqueue`), sets the host name, takes the console as its
//!    controlling terminal and stdio, and execs the image's init.
//!
//! Any failure is sent to the launcher as one line on the report pipe and
//! ends the process; a successful exec closes the pipe (it is close-on-exec),
//! which is how the launcher knows the init runs.

use std::convert::Infallible;
use std::ffi::CString;
use std::fs::File;
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::fs::{PermissionsExt, symlink};
use std::path::{Path, PathBuf};

use nix::mount::{MntFlags, MsFlags, mount, umount2};
use nix::sched::{CloneFlags, unshare};
use nix::unistd::{Gid, Uid, chdir, pivot_root, setgroups, sethostname, setresgid, setresuid, setsid};
use rustix::thread::CapabilitySet;

use super::cgroup::{self, CgroupMount};
use super::sys::{self, Forked};

/// The path of the notify socket inside the container.
pub const NOTIFY_SOCKET: &str = "/run/host/notify";

/// Device nodes bound from the host into the container's /dev: the ones a
/// user namespace may not create with mknod, and all a booting systemd needs.
const DEVICES: &[&str] = &["null", "zero", "full", "random", "urandom", "tty"];

/// Parts of /proc that stay read-only inside, as nspawn keeps them: the
/// kernel's settings and its hardware views belong to the host.
const PROC_READ_ONLY: &[&str] = &["sys", "acpi", "apm", "asound", "bus", "fs", "irq", "scsi"];

/// Files of /proc that are made inaccessible inside, as nspawn makes them:
/// the kernel's memory and symbols, the keys of every user, the magic
/// SysRq key and the kernel's timers.
const PROC_INACCESSIBLE: &[&str] = &["kallsyms", "kcore", "keys", "sysrq-trigger", "timer_list"];

/// An empty file without permissions, bound over [`PROC_INACCESSIBLE`].
const INACCESSIBLE: &str = "/run/host/inaccessible";

/// Everything the two container-side processes need, decided by the launcher.
#[derive(Debug)]
pub(crate) struct Plan {
    pub name: String,
    /// The image's root directory on the host.
    pub root: PathBuf,
    /// A detached mount to put on `root` (an idmapped clone of a directory,
    /// or a raw image's file system); `None`: `root` is bound onto itself.
    pub root_tree: Option<OwnedFd>,
    /// Host UID (and GID) of the container's root; `None`: no user namespace.
    pub base: Option<u32>,
    pub private_network: bool,
    /// Wait, once the network namespace exists, until the launcher has
    /// put the veth pair's end into it.
    pub wait_for_network: bool,
    /// The machine's resolv.conf, bound over the image's (a regular file).
    pub resolv_conf: Option<String>,
    /// The init's capability bounding set (see `capability::bounding_set`).
    pub capabilities: CapabilitySet,
    /// Whether the init runs with no_new_privs set.
    pub no_new_privileges: bool,
    /// The init's system call filters, built for `capabilities`.
    pub seccomp: super::seccomp::Compiled,
    /// `VAR=VALUE` for the init, checked by `launcher::parse_assignment`.
    pub environment: Vec<String>,
    pub payload_cgroups: Vec<PathBuf>,
    pub cgroup_mounts: Vec<CgroupMount>,
    /// The host path of the console pty's slave.
    pub console: PathBuf,
    /// The launcher's notify socket, bound here at [`NOTIFY_SOCKET`].
    pub notify: OwnedFd,
    /// The init to exec, as a path inside the image.
    pub init: String,
    pub uuid: String,
    /// The `--bind=` trees, mounted in this order.
    pub binds: Vec<Bind>,
}

/// A bind mount's detached tree and where it goes inside the image.
#[derive(Debug)]
pub(crate) struct Bind {
    pub tree: OwnedFd,
    /// Absolute, inside the image.
    pub destination: PathBuf,
    /// Whether the source is a directory (else the mount point made for it is a file).
    pub directory: bool,
}

/// The pipes between the launcher and the container side.
#[derive(Debug)]
pub(crate) struct Channels {
    /// Lines for the launcher: `userns`, `pid N`, `error ...`.
    pub report: OwnedFd,
    /// One byte from the launcher once the ID maps are written.
    pub go: OwnedFd,
}

/// A step that failed, with what it was doing.
#[derive(Debug, thiserror::Error)]
#[error("{what}: {reason}")]
struct StepError {
    what: String,
    reason: String,
}

type Step<T = ()> = Result<T, StepError>;

fn step<E: std::fmt::Display>(what: impl Into<String>) -> impl FnOnce(E) -> StepError {
    let what = what.into();
    move |e| StepError { what, reason: e.to_string() }
}

/// The outer child's work; never returns.
pub(crate) fn run_outer_child(plan: Plan, channels: Channels) -> ! {
    let result = outer(&plan, &channels);
    if let Err(e) = result {
        report(&channels.report, &format!("error {e}"));
        std::process::exit(1);
    }
    std::process::exit(0);
}

/// Writes one line for the launcher (one write: a pipe keeps it whole).
fn report(pipe: &OwnedFd, line: &str) {
    let line = format!("{}\n", line.replace('\n', " "));
    // Nothing to do if the launcher is gone: the launch is over anyway.
    let _ = nix::unistd::write(pipe, line.as_bytes());
}

fn mount_fs(source: &str, target: &Path, fstype: &str, flags: MsFlags, data: Option<&str>) -> Step {
    mount(Some(source), target, Some(fstype), flags, data)
        .map_err(step(format!("mounting {fstype} on {}", target.display())))
}

fn bind(source: &Path, target: &Path, flags: MsFlags) -> Step {
    mount(Some(source), target, None::<&str>, MsFlags::MS_BIND | flags, None::<&str>).map_err(step(format!(
        "binding {} to {}",
        source.display(),
        target.display()
    )))
}

fn owner_options(base: Option<u32>, mode: &str) -> String {
    match base {
        Some(base) => format!("mode={mode},uid={base},gid={base}"),
        None => format!("mode={mode}"),
    }
}

fn chown_to(path: &Path, base: Option<u32>) -> Step {
    let id = base.unwrap_or(0);
    std::os::unix::fs::lchown(path, Some(id), Some(id)).map_err(step(format!("chown {}", path.display())))
}

fn outer(plan: &Plan, channels: &Channels) -> Step {
    for payload in &plan.payload_cgroups {
        cgroup::join(payload).map_err(step("joining the payload cgroup"))?;
    }
    unshare(CloneFlags::CLONE_NEWNS).map_err(step("unsharing the mount namespace"))?;
    mount(None::<&str>, "/", None::<&str>, MsFlags::MS_REC | MsFlags::MS_SLAVE, None::<&str>)
        .map_err(step("making / a slave mount"))?;

    let root = plan.root.as_path();
    match &plan.root_tree {
        Some(tree) => rustix::mount::move_mount(
            tree.as_fd(),
            "",
            rustix::fs::CWD,
            root,
            rustix::mount::MoveMountFlags::MOVE_MOUNT_F_EMPTY_PATH,
        )
        .map_err(step(format!("mounting the image on {}", root.display())))?,
        None => bind(root, root, MsFlags::MS_REC)?,
    }
    // The image's device nodes are the image's author's: a `b 8 0` in a
    // downloaded tree must not open the host's disk. The launcher's own
    // /dev below holds the nodes a container needs.
    sys::forbid_devices(root).map_err(step(format!("mounting {} nodev", root.display())))?;
    // A clone of a shared mount joins its peer group, and pivot_root
    // refuses shared mounts: this tree must not propagate anywhere anyway.
    mount(None::<&str>, root, None::<&str>, MsFlags::MS_REC | MsFlags::MS_SLAVE, None::<&str>)
        .map_err(step("making the image mount a slave"))?;
    let api = MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC;
    // Unobstructed instances for the kernel's "fully visible" check; the
    // init mounts its own /proc over this one (and its own /sys when the
    // network is private). This /sys, of the host's network namespace, is
    // the right one when the network is shared.
    mount_fs("proc", &root.join("proc"), "proc", api, None)?;
    mount_fs("sysfs", &root.join("sys"), "sysfs", api | MsFlags::MS_RDONLY, None)?;

    let dev = root.join("dev");
    // nodev: the nodes bound below are mounts of their own and keep working;
    // a node made here (by a root without a user namespace) would not.
    mount_fs("tmpfs", &dev, "tmpfs", MsFlags::MS_NOSUID | MsFlags::MS_NODEV, Some(&owner_options(plan.base, "755")))?;
    for node in DEVICES {
        let target = dev.join(node);
        File::create(&target).map_err(step(format!("creating {}", target.display())))?;
        bind(&Path::new("/dev").join(node), &target, MsFlags::empty())?;
    }
    for (link, target) in [
        ("fd", "/proc/self/fd"),
        ("stdin", "/proc/self/fd/0"),
        ("stdout", "/proc/self/fd/1"),
        ("stderr", "/proc/self/fd/2"),
        ("ptmx", "pts/ptmx"),
        ("log", "/run/systemd/journal/dev-log"),
    ] {
        symlink(target, dev.join(link)).map_err(step(format!("creating /dev/{link}")))?;
        chown_to(&dev.join(link), plan.base)?;
    }
    for dir in ["pts", "shm", "mqueue"] {
        std::fs::create_dir(dev.join(dir)).map_err(step(format!("creating /dev/{dir}")))?;
        chown_to(&dev.join(dir), plan.base)?;
    }
    let console = dev.join("console");
    File::create(&console).map_err(step("creating /dev/console"))?;
    bind(&plan.console, &console, MsFlags::empty())?;

    let run = root.join("run");
    mount_fs("tmpfs", &run, "tmpfs", MsFlags::MS_NOSUID | MsFlags::MS_NODEV, Some(&owner_options(plan.base, "755")))?;
    let host = run.join("host");
    std::fs::create_dir(&host).map_err(step("creating /run/host"))?;
    chown_to(&host, plan.base)?;
    let inaccessible = host.join("inaccessible");
    File::create(&inaccessible).map_err(step("creating /run/host/inaccessible"))?;
    std::fs::set_permissions(&inaccessible, std::fs::Permissions::from_mode(0o000))
        .map_err(step("chmod /run/host/inaccessible"))?;
    if let Some(text) = &plan.resolv_conf {
        let path = host.join("resolv.conf");
        std::fs::write(&path, text).map_err(step("writing /run/host/resolv.conf"))?;
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644))
            .map_err(step("chmod /run/host/resolv.conf"))?;
        chown_to(&path, plan.base)?;
    }
    let manager = host.join("container-manager");
    std::fs::write(&manager, "wharf\n").map_err(step("writing /run/host/container-manager"))?;
    chown_to(&manager, plan.base)?;
    // Bound by relative name: the image's path may be longer than a socket
    // address allows.
    chdir(&host).map_err(step("entering /run/host"))?;
    let address = nix::sys::socket::UnixAddr::new("notify").map_err(step("naming the notify socket"))?;
    nix::sys::socket::bind(std::os::fd::AsRawFd::as_raw_fd(&plan.notify), &address)
        .map_err(step(format!("binding the notify socket at {NOTIFY_SOCKET}")))?;
    let socket = host.join("notify");
    std::fs::set_permissions(&socket, std::fs::Permissions::from_mode(0o600)).map_err(step("chmod notify"))?;
    chown_to(&socket, plan.base)?;
    mount_fs(
        "tmpfs",
        &root.join("tmp"),
        "tmpfs",
        MsFlags::MS_NOSUID | MsFlags::MS_NODEV,
        Some(&owner_options(plan.base, "1777")),
    )?;

    // Last, so that no mount of the launcher's hides them (a bind into /tmp).
    // Mount points are found inside the image, its symlinks read as the
    // container will read them, and made by the container's root.
    if !plan.binds.is_empty() {
        let image = File::open(root).map_err(step(format!("opening {}", root.display())))?;
        for bind in &plan.binds {
            let what = format!("binding to {}", bind.destination.display());
            let target = super::files::make_mount_point(&image, &bind.destination, bind.directory, plan.base)
                .map_err(step(what.clone()))?;
            super::files::attach(&bind.tree, &target).map_err(step(what))?;
        }
    }

    // pivot_root(".", ".") stacks the old root on the new one; detaching it
    // leaves only the container's tree in this mount namespace.
    chdir(root).map_err(step(format!("entering {}", root.display())))?;
    pivot_root(".", ".").map_err(step("pivot_root into the image"))?;
    umount2(".", MntFlags::MNT_DETACH).map_err(step("detaching the host's root"))?;
    chdir("/").map_err(step("entering the new root"))?;

    let mut flags = CloneFlags::CLONE_NEWNS
        | CloneFlags::CLONE_NEWPID
        | CloneFlags::CLONE_NEWUTS
        | CloneFlags::CLONE_NEWIPC
        | CloneFlags::CLONE_NEWCGROUP;
    if plan.base.is_some() {
        flags |= CloneFlags::CLONE_NEWUSER;
    }
    if plan.private_network {
        flags |= CloneFlags::CLONE_NEWNET;
    }
    unshare(flags).map_err(step("unsharing the container's namespaces"))?;
    if plan.base.is_some() {
        report(&channels.report, "userns");
        let mut byte = [0u8; 1];
        match nix::unistd::read(&channels.go, &mut byte) {
            Ok(1) => {}
            other => return Err(step("waiting for the ID maps")(format!("{other:?}"))),
        }
        setresgid(Gid::from_raw(0), Gid::from_raw(0), Gid::from_raw(0)).map_err(step("setresgid(0)"))?;
        setgroups(&[]).map_err(step("setgroups"))?;
        setresuid(Uid::from_raw(0), Uid::from_raw(0), Uid::from_raw(0)).map_err(step("setresuid(0)"))?;
    }
    if plan.wait_for_network {
        report(&channels.report, "netns");
        let mut byte = [0u8; 1];
        match nix::unistd::read(&channels.go, &mut byte) {
            Ok(1) => {}
            other => return Err(step("waiting for the network")(format!("{other:?}"))),
        }
    }
    match sys::fork().map_err(step("forking the init"))? {
        Forked::Child => {
            let Err(e) = init(plan);
            report(&channels.report, &format!("error {e}"));
            std::process::exit(1);
        }
        Forked::Parent(pid) => {
            report(&channels.report, &format!("pid {pid}"));
            Ok(())
        }
    }
}

/// PID 1's work before exec.
fn init(plan: &Plan) -> Result<Infallible, StepError> {
    let api = MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC;
    mount_fs("proc", Path::new("/proc"), "proc", api, None)?;
    for sub in PROC_READ_ONLY {
        let path = Path::new("/proc").join(sub);
        if path.exists() {
            read_only_bind(&path, api)?;
        }
    }
    for file in PROC_INACCESSIBLE {
        let path = Path::new("/proc").join(file);
        if path.exists() {
            bind(Path::new(INACCESSIBLE), &path, MsFlags::empty())?;
            mount(
                None::<&str>,
                &path,
                None::<&str>,
                MsFlags::MS_BIND | MsFlags::MS_REMOUNT | MsFlags::MS_RDONLY | api,
                None::<&str>,
            )
            .map_err(step(format!("making {} inaccessible", path.display())))?;
        }
    }
    if plan.private_network {
        // The network's own sysctls are the container's to change.
        let net = Path::new("/proc/sys/net");
        bind(net, net, MsFlags::empty())?;
        mount(None::<&str>, net, None::<&str>, MsFlags::MS_BIND | MsFlags::MS_REMOUNT | api, None::<&str>)
            .map_err(step("making /proc/sys/net writable"))?;
        mount_fs("sysfs", Path::new("/sys"), "sysfs", api | MsFlags::MS_RDONLY, None)?;
    }
    for step_ in &plan.cgroup_mounts {
        cgroup_mount(step_)?;
    }
    mount_fs(
        "devpts",
        Path::new("/dev/pts"),
        "devpts",
        MsFlags::MS_NOSUID | MsFlags::MS_NOEXEC,
        Some("newinstance,ptmxmode=0666,mode=0620,gid=5"),
    )?;
    mount_fs("tmpfs", Path::new("/dev/shm"), "tmpfs", MsFlags::MS_NOSUID | MsFlags::MS_NODEV, Some("mode=1777"))?;
    mount_fs("mqueue", Path::new("/dev/mqueue"), "mqueue", api, None)?;
    if plan.resolv_conf.is_some() {
        // As nspawn's --resolv-conf=auto, but bound rather than copied, so
        // the image is not changed. Looked up after pivot_root: a symlink
        // in the image resolves inside it. A symlink (to resolved's file,
        // say) or no file is left to the image.
        let target = Path::new("/etc/resolv.conf");
        if std::fs::symlink_metadata(target).is_ok_and(|m| m.is_file()) {
            bind(&Path::new(INACCESSIBLE).with_file_name("resolv.conf"), target, MsFlags::empty())?;
        }
    }
    sethostname(&plan.name).map_err(step("setting the host name"))?;

    setsid().map_err(step("setsid"))?;
    // Opened without O_NOCTTY: the console becomes the controlling terminal.
    let console = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/console")
        .map_err(step("opening /dev/console"))?;
    nix::unistd::dup2_stdin(&console).map_err(step("console as stdin"))?;
    nix::unistd::dup2_stdout(&console).map_err(step("console as stdout"))?;
    nix::unistd::dup2_stderr(&console).map_err(step("console as stderr"))?;
    drop(console);
    super::sys::bound_capabilities(plan.capabilities).map_err(|(n, e)| step(format!("dropping capability {n}"))(e))?;
    nix::sys::signal::SigSet::empty().thread_set_mask().map_err(step("unblocking signals"))?;
    sys::default_sigpipe().map_err(step("resetting SIGPIPE"))?;
    chdir("/").map_err(step("entering /"))?;
    if plan.no_new_privileges {
        rustix::thread::set_no_new_privs(true).map_err(step("setting no_new_privs"))?;
    }

    let cstring = |s: String| CString::new(s).map_err(step("building the init's arguments"));
    let path = cstring(plan.init.clone())?;
    let env =
        init_environment(&plan.uuid, &plan.environment).into_iter().map(cstring).collect::<Result<Vec<_>, _>>()?;
    // Last: from here on only execve runs, and the filter allows it.
    plan.seccomp.install().map_err(step("installing the init's system call filter"))?;
    nix::unistd::execve(&path, std::slice::from_ref(&path), &env).map_err(step(format!("executing {}", plan.init)))
}

/// The init's environment: wharf's variables, PATH and TERM unless given,
/// then those given (the last of a name wins; wharf's own are never
/// replaced, whatever got past the launcher's check).
fn init_environment(uuid: &str, given: &[String]) -> Vec<String> {
    let name = |assignment: &str| assignment.split_once('=').map_or(assignment, |(n, _)| n).to_string();
    let mut env =
        vec!["container=wharf".to_string(), format!("container_uuid={uuid}"), format!("NOTIFY_SOCKET={NOTIFY_SOCKET}")];
    let defaults = ["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin", "TERM=vt220"];
    let mut rest: Vec<String> = defaults.iter().map(|s| s.to_string()).collect();
    for assignment in given {
        let var = name(assignment);
        if super::launcher::RESERVED_ENVIRONMENT.contains(&var.as_str()) {
            continue;
        }
        rest.retain(|kept| name(kept) != var);
        rest.push(assignment.clone());
    }
    env.extend(rest);
    env
}

fn read_only_bind(path: &Path, flags: MsFlags) -> Step {
    bind(path, path, MsFlags::empty())?;
    mount(
        None::<&str>,
        path,
        None::<&str>,
        MsFlags::MS_BIND | MsFlags::MS_REMOUNT | MsFlags::MS_RDONLY | flags,
        None::<&str>,
    )
    .map_err(step(format!("making {} read-only", path.display())))
}

fn cgroup_mount(m: &CgroupMount) -> Step {
    let api = MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC;
    let mkdir = |target: &str| {
        std::fs::create_dir_all(target).map_err(step(format!("creating {target}")))?;
        Ok::<_, StepError>(Path::new(target).to_path_buf())
    };
    match m {
        CgroupMount::Tmpfs { target } => mount_fs("tmpfs", &mkdir(target)?, "tmpfs", api, Some("mode=755")),
        CgroupMount::Cgroup1 { target, options, writable } => {
            let flags = if *writable { api } else { api | MsFlags::MS_RDONLY };
            mount_fs("cgroup", &mkdir(target)?, "cgroup", flags, Some(options))
        }
        CgroupMount::Cgroup2 { target } => mount_fs("cgroup2", &mkdir(target)?, "cgroup2", api, None),
        CgroupMount::Symlink { target, link } => symlink(target, link).map_err(step(format!("linking {link}"))),
        CgroupMount::ReadOnly { target } => mount(
            None::<&str>,
            Path::new(target),
            None::<&str>,
            MsFlags::MS_REMOUNT | MsFlags::MS_RDONLY | api,
            Some("mode=755"),
        )
        .map_err(step(format!("making {target} read-only"))),
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_init_environment_keeps_wharfs_variables() {
        let given = ["TERM=xterm".to_string(), "A=1".into(), "container=evil".into(), "A=2".into()];
        let env = super::init_environment("u", &given);
        assert_eq!(
            env,
            [
                "container=wharf",
                "container_uuid=u",
                &format!("NOTIFY_SOCKET={}", super::NOTIFY_SOCKET),
                "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
                "TERM=xterm",
                "A=2"
            ]
        );
    }
}
