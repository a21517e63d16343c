//! The testbed: a real systemd (PID 1, dbus-daemon, systemd-machined, the
//! reference portablectl and machinectl) booted in a throwaway container on a
//! machine whose own PID 1 is not systemd.
//!
//! Used by the integration tests, the demo and the benchmarks. It
//! - makes a Debian root with debootstrap once and caches it as a tarball
//!   keyed by release and package list ([`cache`]);
//! - unpacks it afresh per testbed, installs wharf into it the way a package
//!   would ([`install`]), boots it with systemd-nspawn and waits until
//!   `systemctl is-system-running` says `running`;
//! - runs commands inside with nsenter;
//! - powers it off and removes every trace (process, mount, loop device, work
//!   directory) when dropped, on SIGINT/SIGTERM, and, for a harness that was
//!   killed outright, at the start of the next run ([`cleanup`]).
//!
//! It never skips: if it cannot boot, it says why and the caller fails.

#![allow(dead_code)] // Each user (tests, demo, benches) takes a different part.

pub mod bench;
pub mod cache;
pub mod cleanup;
pub mod images;
pub mod install;

use std::fmt;
use std::fs;
use std::io::Write;
use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// Where testbeds are unpacked and run. The stale-run reaper owns this tree.
pub const WORK_BASE: &str = "/var/tmp/wharf-testbed";

/// Debian releases the testbed can boot.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Release {
    /// Debian 12, systemd 252: the default.
    Bookworm,
    /// Debian 13, systemd 257.
    Trixie,
}

impl Release {
    /// The release chosen with `WHARF_TESTBED_RELEASE` (default bookworm).
    pub fn from_env() -> Result<Release> {
        match std::env::var("WHARF_TESTBED_RELEASE").as_deref() {
            Err(_) | Ok("") | Ok("bookworm") => Ok(Release::Bookworm),
            Ok("trixie") => Ok(Release::Trixie),
            Ok(other) => Err(Error(format!(
                "WHARF_TESTBED_RELEASE={other:?} is not a release the testbed knows (bookworm, trixie)"
            ))),
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Release::Bookworm => "bookworm",
            Release::Trixie => "trixie",
        }
    }

    /// Packages of the testbed root: systemd as PID 1 with dbus,
    /// systemd-container for machined and the reference portablectl/machinectl,
    /// python3 so that Ansible can manage testbeds as hosts (and serve
    /// images over HTTP to pulls), nftables for the port forwarding and
    /// masquerading of machines on veth and zones, libcurl for wharfd's
    /// fetcher, gpg for the pull tests' throwaway signing keys, openssl and
    /// ca-certificates for their throwaway certificate authority (made with
    /// the one, put in the system's CA store with the other), zsh and fish
    /// to run the completions wharf installs for them, polkitd (with
    /// JavaScript rules, and pkttyagent) and logind to authorize callers
    /// other than root (every trial runs with polkit there, as on most
    /// hosts), and a registry (docker-registry), skopeo to push to it and
    /// squashfs-tools for the registry pulls.
    pub fn packages(self) -> Vec<&'static str> {
        // Each release's root is cached apart (its key includes the release).
        let libcurl = match self {
            Release::Bookworm => "libcurl4",
            // The 64-bit time_t transition renamed it.
            Release::Trixie => "libcurl4t64",
        };
        let mut packages = vec![
            "systemd",
            "systemd-sysv",
            "dbus",
            "systemd-container",
            "iproute2",
            "util-linux",
            "kmod",
            "python3",
            "nftables",
            "gpg",
            "gpg-agent",
            "gpgv",
            "openssl",
            "ca-certificates",
            "zsh",
            "fish",
            "polkitd",
            // What polkitd depends on as default-logind | logind, which
            // debootstrap does not resolve.
            "libpam-systemd",
            "docker-registry",
            "skopeo",
            // What skopeo's containers-common depends on is a virtual
            // package (container-network-stack), which debootstrap cannot
            // choose a provider for.
            "netavark",
            "squashfs-tools",
        ];
        packages.push(libcurl);
        packages
    }
}

/// Why a testbed could not be made, booted or used; always says what to do.
#[derive(Debug, Clone)]
pub struct Error(pub String);

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "testbed: {}", self.0)
    }
}

impl std::error::Error for Error {}

pub type Result<T> = std::result::Result<T, Error>;

/// The output of a command run in the testbed, with helpers for assertions.
#[derive(Debug, Clone)]
pub struct Out {
    pub command: String,
    pub code: Option<i32>,
    pub stdout: String,
    pub stderr: String,
}

impl Out {
    fn from_output(command: &str, output: Output) -> Out {
        Out {
            command: command.to_string(),
            code: output.status.code(),
            stdout: String::from_utf8_lossy(&output.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
        }
    }

    pub fn success(&self) -> bool {
        self.code == Some(0)
    }
}

impl fmt::Display for Out {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "`{}` exited with {:?}\n--- stdout ---\n{}--- stderr ---\n{}",
            self.command, self.code, self.stdout, self.stderr
        )
    }
}

/// What a booted testbed needs to be torn down; shared with the signal handler.
#[derive(Debug)]
struct Running {
    name: String,
    work: PathBuf,
    nspawn: Option<Child>,
    pid1: Option<u32>,
}

/// Every testbed this process booted and has not torn down yet.
static LIVE: Mutex<Vec<Arc<Mutex<Running>>>> = Mutex::new(Vec::new());

/// A booted testbed. Dropping it powers it off and removes its traces.
#[derive(Debug)]
pub struct Testbed {
    pub release: Release,
    name: String,
    work: PathBuf,
    root: PathBuf,
    pid1: u32,
    running: Arc<Mutex<Running>>,
}

/// What to put into a testbed before it boots.
#[derive(Debug, Clone)]
pub struct BootOptions {
    pub release: Release,
    /// Directory holding the built `portable`, `machine` and `wharfd`.
    pub bin_dir: PathBuf,
    /// A name for logs and the machine name of the container.
    pub label: String,
}

const INNER_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

impl Testbed {
    /// Makes (or takes from the cache) a root, installs wharf, boots it and
    /// waits until systemd reports the system running.
    pub fn boot(options: &BootOptions) -> Result<Testbed> {
        preflight()?;
        cleanup::install_signal_handler();
        cleanup::reap_stale_runs();
        let tarball = cache::root_tarball(options.release)?;

        let name = format!("wharf-tb-{}-{}-{}", options.label, std::process::id(), next_serial());
        let work = Path::new(WORK_BASE).join(&name);
        let root = work.join("root");
        fs::create_dir_all(&root).map_err(|e| Error(format!("cannot create {}: {e}", root.display())))?;
        cleanup::write_owner(&work)?;
        // A root that is not 0755 boots, but dbus-daemon (as messagebus) then
        // cannot read its configuration and the system never gets to running.
        fs::set_permissions(&root, fs::Permissions::from_mode(0o755))
            .map_err(|e| Error(format!("cannot chmod {}: {e}", root.display())))?;
        let running =
            Arc::new(Mutex::new(Running { name: name.clone(), work: work.clone(), nspawn: None, pid1: None }));
        LIVE.lock().unwrap().push(running.clone());

        let booted = (|| {
            run_host(Command::new("tar").arg("-C").arg(&root).arg("-xf").arg(&tarball), "unpacking the testbed root")?;
            install::install_wharf(&options.bin_dir, &root)?;
            fs::write(root.join("etc/hostname"), format!("{}\n", options.label))
                .map_err(|e| Error(format!("cannot write the hostname: {e}")))?;
            let (nspawn, pid1) = start_nspawn(&name, &work, &root)?;
            {
                let mut state = running.lock().unwrap();
                state.pid1 = Some(pid1);
                state.nspawn = Some(nspawn);
            }
            fs::write(work.join("pid1"), pid1.to_string()).map_err(|e| Error(format!("cannot record pid1: {e}")))?;
            Ok(pid1)
        })();
        let pid1 = match booted {
            Ok(pid1) => pid1,
            Err(e) => {
                if let Err(cleanup) = teardown(&running) {
                    eprintln!("{cleanup}");
                }
                return Err(e);
            }
        };
        let testbed = Testbed { release: options.release, name, work, root, pid1, running };
        // From here on, dropping `testbed` tears it down.
        testbed.wait_until_running()?;
        testbed.mount_host_dev()?;
        testbed.writable_cgroup_controllers()?;
        Ok(testbed)
    }

    /// The container's root directory, seen from the host.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// A host path for a path inside the container.
    pub fn host_path(&self, inner: &str) -> PathBuf {
        self.root.join(inner.trim_start_matches('/'))
    }

    pub fn pid1(&self) -> u32 {
        self.pid1
    }

    /// Runs a shell script inside the testbed as root.
    pub fn sh(&self, script: &str) -> Out {
        self.sh_env(script, &[])
    }

    /// Runs a shell script inside, with extra environment variables.
    pub fn sh_env(&self, script: &str, env: &[(&str, &str)]) -> Out {
        let mut command = self.inner_command();
        for (key, value) in env {
            command.arg(format!("{key}={value}"));
        }
        command.args(["sh", "-c", script]);
        match command.output() {
            Ok(output) => Out::from_output(script, output),
            Err(e) => {
                Out { command: script.to_string(), code: None, stdout: String::new(), stderr: format!("nsenter: {e}") }
            }
        }
    }

    /// Runs a shell script inside as an unprivileged user (nobody).
    pub fn sh_nobody(&self, script: &str) -> Out {
        let quoted = script.replace('\'', r"'\''");
        let mut out = self.sh(&format!("setpriv --reuid=nobody --regid=nogroup --clear-groups sh -c '{quoted}'"));
        out.command = format!("(as nobody) {script}");
        out
    }

    /// Waits until process `pid` runs the program `comm`; false if it
    /// ended or 10 s passed. A service is "active" as soon as systemd has
    /// forked it, while the child still sets up the sandbox in the host's
    /// root: only after the exec does /proc/PID/root show the image.
    pub fn wait_exec(&self, pid: &str, comm: &str) -> bool {
        self.sh(&format!(
            "for i in $(seq 100); do [ \"$(cat /proc/{pid}/comm 2>/dev/null)\" = {comm} ] && exit 0; \
             [ -e /proc/{pid} ] || exit 1; sleep 0.1; done; exit 1"
        ))
        .success()
    }

    /// The entries of /etc/systemd/system matching `glob`, sorted: type
    /// and mode, owner, inode, name, and a file's size and link target.
    /// Equal listings mean nothing was rewritten (a rewrite is a new
    /// inode). No times: putting a file back changes its directory's mtime,
    /// and across a minute boundary `ls -l` made that a difference.
    pub fn unit_files(&self, glob: &str) -> String {
        // Also portabled's directory, where wharf mirrors its attachments.
        self.ok(&format!(
            "for dir in /etc/systemd/system /etc/systemd/system.attached; do [ -d $dir ] || continue; cd $dir; \\
               prefix=; [ $dir = /etc/systemd/system ] || prefix=$dir/; \\
               for f in {glob}; do [ -e \"$f\" ] || [ -L \"$f\" ] || continue; \\
                 find \"$f\" \\( -type d -printf \"%M %u:%g %i $prefix%p\\n\" \\) \\
                   -o -printf \"%M %u:%g %i $prefix%p %s %l\\n\"; done; done | sort"
        ))
    }

    /// This testbed's loop devices backed by files whose path (inside the
    /// testbed) starts with `prefix`, as "DEVICE PATH" lines. The kernel's
    /// loop devices are the host's, seen alike by every testbed (another
    /// release's suite may run the same test beside this one), so a device
    /// is this testbed's only if its backing file is the file at that path
    /// here: the same inode. One whose file is deleted counts too.
    pub fn loop_devices(&self, prefix: &str) -> Vec<String> {
        let listing = Command::new("losetup")
            .args(["--list", "--noheadings", "--raw", "--output", "NAME,BACK-INO,BACK-FILE"])
            .output()
            .expect("losetup on the host");
        use std::os::unix::fs::MetadataExt;
        String::from_utf8_lossy(&listing.stdout)
            .lines()
            .filter_map(|line| {
                let mut fields = line.splitn(3, ' ');
                let (device, inode, file) = (fields.next()?, fields.next()?, fields.next()?);
                // --raw escapes blanks in the path as \x20.
                let file = file.replace("\\x20", " ");
                let (path, deleted) = match file.strip_suffix(" (deleted)") {
                    Some(path) => (path.to_string(), true),
                    None => (file, false),
                };
                let ours = deleted || fs::metadata(self.host_path(&path)).is_ok_and(|m| inode.parse() == Ok(m.ino()));
                (path.starts_with(prefix) && ours).then(|| format!("{device} {path}"))
            })
            .collect()
    }

    /// Runs a script that must succeed; returns its stdout.
    #[track_caller]
    pub fn ok(&self, script: &str) -> String {
        let out = self.sh(script);
        assert!(out.success(), "in the testbed: {out}");
        out.stdout
    }

    /// Runs a script that must fail; returns its output for more checks.
    #[track_caller]
    pub fn fails(&self, script: &str) -> Out {
        let out = self.sh(script);
        assert!(!out.success() && out.code.is_some(), "expected a failure in the testbed: {out}");
        out
    }

    fn inner_command(&self) -> Command {
        let mut command = Command::new("nsenter");
        command
            .args(["-t", &self.pid1.to_string(), "-a", "--", "env", "-i"])
            .arg(format!("PATH={INNER_PATH}"))
            .args(["LANG=C.UTF-8", "HOME=/root", "TERM=dumb", "SYSTEMD_PAGER=", "SYSTEMD_COLORS=0"])
            .stdin(Stdio::null());
        command
    }

    fn wait_until_running(&self) -> Result<()> {
        let deadline = Instant::now() + Duration::from_secs(120);
        let mut last = String::new();
        while Instant::now() < deadline {
            if !self.is_alive() {
                return Err(Error(format!(
                    "the container exited while booting; its console said:\n{}",
                    self.console_tail(40)
                )));
            }
            let out = self.sh("systemctl is-system-running");
            last = out.stdout.trim().to_string();
            match last.as_str() {
                "running" => return Ok(()),
                "degraded" => {
                    let failed = self.sh("systemctl --failed --no-legend --plain").stdout;
                    return Err(Error(format!("the testbed booted degraded; failed units:\n{failed}")));
                }
                _ => std::thread::sleep(Duration::from_millis(200)),
            }
        }
        let jobs = self.sh("systemctl list-jobs --no-legend").stdout;
        Err(Error(format!(
            "systemd did not reach 'running' within 120 s (last state '{last}'); pending jobs:\n{jobs}\nconsole:\n{}",
            self.console_tail(30)
        )))
    }

    /// The host's devtmpfs over the container's /dev: without it no loop
    /// partition nodes (/dev/loop0p1) appear and GPT images cannot be used.
    fn mount_host_dev(&self) -> Result<()> {
        let script = r#"set -e
d=/run/hostdev; mkdir -p $d; mount -t devtmpfs devtmpfs $d
mount --bind /dev/console $d/console
for s in pts shm mqueue hugepages; do
  if mountpoint -q /dev/$s; then mkdir -p $d/$s; mount --bind /dev/$s $d/$s; fi
done
rm -f $d/ptmx; ln -s pts/ptmx $d/ptmx
ln -sfn /run/systemd/journal/dev-log $d/log; ln -sfn /proc/self/fd $d/fd
ln -sfn /proc/self/fd/0 $d/stdin; ln -sfn /proc/self/fd/1 $d/stdout; ln -sfn /proc/self/fd/2 $d/stderr
mount --rbind $d /dev"#;
        let out = self.sh(script);
        if out.success() { Ok(()) } else { Err(Error(format!("cannot give the testbed the host's /dev: {out}"))) }
    }

    /// nspawn mounts the host's cgroup v1 controllers read-only in the
    /// container, so the testbed's systemd can set no resource limit (these
    /// hosts run a hybrid hierarchy whose v2 side has no controllers). Make
    /// them writable and let systemd start over on them, so that MemoryMax,
    /// TasksMax and CPUQuota of units really reach cgroup files, as on a
    /// host where systemd is PID 1.
    fn writable_cgroup_controllers(&self) -> Result<()> {
        let script = r#"set -e
for d in /sys/fs/cgroup/*/; do
  case "$d" in */systemd/|*/unified/) continue ;; esac
  if mountpoint -q "$d"; then mount -o remount,bind,rw "$d"; fi
done
systemctl daemon-reexec"#;
        let out = self.sh(script);
        if !out.success() {
            return Err(Error(format!("cannot make the cgroup controllers writable: {out}")));
        }
        self.wait_until_running()
    }

    fn is_alive(&self) -> bool {
        let mut state = self.running.lock().unwrap();
        match state.nspawn.as_mut() {
            Some(child) => matches!(child.try_wait(), Ok(None)),
            None => false,
        }
    }

    pub fn console_tail(&self, lines: usize) -> String {
        let log = fs::read_to_string(self.work.join("console.log")).unwrap_or_default();
        let all: Vec<&str> = log.lines().collect();
        all[all.len().saturating_sub(lines)..].join("\n")
    }

    /// Powers off and removes everything; the same as dropping it, but says
    /// what went wrong.
    pub fn poweroff(self) -> Result<()> {
        let result = teardown(&self.running);
        std::mem::forget(self);
        result
    }
}

impl Drop for Testbed {
    fn drop(&mut self) {
        if let Err(e) = teardown(&self.running) {
            eprintln!("{e}");
        }
    }
}

fn next_serial() -> u32 {
    use std::sync::atomic::{AtomicU32, Ordering};
    static SERIAL: AtomicU32 = AtomicU32::new(0);
    SERIAL.fetch_add(1, Ordering::Relaxed)
}

/// Checks what booting needs, so that a missing piece is named up front.
fn preflight() -> Result<()> {
    if !nix::unistd::geteuid().is_root() {
        return Err(Error("must run as root (it boots a container with systemd-nspawn)".into()));
    }
    for (tool, package) in [
        ("debootstrap", "debootstrap"),
        ("systemd-nspawn", "systemd-container"),
        ("nsenter", "util-linux"),
        ("tar", "tar"),
    ] {
        let found = std::env::split_paths(&std::env::var_os("PATH").unwrap_or_default())
            .chain([PathBuf::from("/usr/sbin"), PathBuf::from("/usr/bin")])
            .any(|dir| dir.join(tool).is_file());
        if !found {
            return Err(Error(format!("'{tool}' is missing: install the Debian package '{package}'")));
        }
    }
    Ok(())
}

/// Runs a host command, turning a failure into an error with its stderr.
pub fn run_host(command: &mut Command, what: &str) -> Result<Output> {
    let output = command.output().map_err(|e| Error(format!("{what}: cannot run {command:?}: {e}")))?;
    if !output.status.success() {
        return Err(Error(format!(
            "{what}: {command:?} failed ({}): {}",
            output.status,
            String::from_utf8_lossy(&output.stderr).trim()
        )));
    }
    Ok(output)
}

/// Loop devices the container may use, made on the host if missing (the
/// container's /dev only has the nodes bound into it until the host's
/// devtmpfs is mounted over it).
const LOOP_DEVICES: u32 = 16;

fn start_nspawn(name: &str, work: &Path, root: &Path) -> Result<(Child, u32)> {
    for n in 0..LOOP_DEVICES {
        let node = format!("/dev/loop{n}");
        if !Path::new(&node).exists() {
            let _ = Command::new("mknod").args([&node, "b", "7", &n.to_string()]).status();
        }
    }
    let console =
        fs::File::create(work.join("console.log")).map_err(|e| Error(format!("cannot create the console log: {e}")))?;
    // A shell that moves itself into the testbed's own cgroups, then becomes nspawn.
    let cgroups = cleanup::testbed_cgroups(name);
    for dir in &cgroups {
        fs::create_dir_all(dir).map_err(|e| Error(format!("cannot create the cgroup {}: {e}", dir.display())))?;
    }
    let join: String = cgroups.iter().map(|dir| format!("echo $$ > '{}/cgroup.procs' && ", dir.display())).collect();
    let mut command = Command::new("sh");
    command.args(["-c", &format!("{join}exec \"$0\" \"$@\""), "systemd-nspawn"]);
    // --register=no --keep-unit: there is no system bus on the host to register with.
    // --private-network: testbeds booted at the same time (several test runs,
    // or the hosts of the Ansible test) must not share ports like 8080.
    command
        .args(["--register=no", "--keep-unit", "-q", "-b", "--capability=all", "--private-network"])
        .arg(format!("--machine={name}"))
        .arg("--bind=/dev/loop-control");
    for n in 0..LOOP_DEVICES {
        command.arg(format!("--bind=/dev/loop{n}"));
    }
    command
        .arg("-D")
        .arg(root)
        .stdin(Stdio::null())
        .stdout(console.try_clone().map_err(|e| Error(e.to_string()))?)
        .stderr(console)
        // Its own process group: a ^C on the terminal reaches the harness,
        // which powers the container off, not nspawn directly.
        .process_group(0);
    let mut child =
        cleanup::spawn_dying_with_us(command).map_err(|e| Error(format!("cannot start systemd-nspawn: {e}")))?;
    fs::write(work.join("nspawn.pid"), child.id().to_string()).map_err(|e| Error(e.to_string()))?;

    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        // nspawn forks an outer child that forks the container's init and
        // exits; the init is the child that has become systemd.
        let init = cleanup::children_of(child.id())
            .into_iter()
            .find(|pid| fs::read_to_string(format!("/proc/{pid}/comm")).is_ok_and(|comm| comm.trim() == "systemd"));
        if let Some(pid1) = init {
            return Ok((child, pid1));
        }
        if let Ok(Some(status)) = child.try_wait() {
            let log = fs::read_to_string(work.join("console.log")).unwrap_or_default();
            return Err(Error(format!("systemd-nspawn exited at once ({status}): {}", log.trim())));
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            return Err(Error("systemd-nspawn started no container within 30 s".into()));
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Powers a testbed off (SIGRTMIN+4 to its systemd), waits, kills what is
/// left, then unmounts and removes its work directory. Idempotent.
fn teardown(running: &Arc<Mutex<Running>>) -> Result<()> {
    let mut state = running.lock().unwrap();
    if let Some(mut nspawn) = state.nspawn.take() {
        if let Some(pid1) = state.pid1 {
            cleanup::signal(pid1, libc_sigrtmin() + 4);
        }
        let deadline = Instant::now() + Duration::from_secs(30);
        while matches!(nspawn.try_wait(), Ok(None)) && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(50));
        }
        if matches!(nspawn.try_wait(), Ok(None)) {
            eprintln!("testbed {}: did not power off within 30 s, killing it", state.name);
            if let Some(pid1) = state.pid1 {
                cleanup::signal(pid1, 9);
            }
            let _ = nspawn.kill();
            let _ = nspawn.wait();
        }
    }
    let result = cleanup::remove_work_dir(&state.work, &state.name);
    cleanup::remove_cgroups(&state.name);
    LIVE.lock().unwrap().retain(|other| !Arc::ptr_eq(other, running));
    result
}

fn libc_sigrtmin() -> i32 {
    nix::libc::SIGRTMIN()
}

/// Tears down every live testbed; for the signal handler.
pub(crate) fn teardown_all() {
    let live: Vec<_> = LIVE.lock().unwrap().clone();
    for running in live {
        if let Err(e) = teardown(&running) {
            eprintln!("{e}");
        }
    }
}

/// Appends a line to a progress log on stderr, flushed, for long steps.
pub fn note(message: &str) {
    let mut stderr = std::io::stderr().lock();
    let _ = writeln!(stderr, "testbed: {message}");
}
