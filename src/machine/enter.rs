//! `wharfd enter`: runs a command inside a running container and exits with
//! the command's own exit status — what `machine shell` needs and
//! `machinectl shell` cannot give.
//!
//! wharfd starts it with the caller's descriptors as its standard input,
//! output and error. It joins every namespace of the container's init (user
//! first: host root holds all capabilities over the namespaces that user
//! namespace owns, so the others can then be joined), looks the user up in
//! the container's own /etc/passwd, and forks (a process only enters a PID
//! namespace with its children). The child becomes the user and executes
//! the command; the parent waits and exits as the child did. With `--pty`,
//! the child gets a new terminal of the container's devpts as its
//! controlling terminal, and the parent copies between that terminal and its
//! own standard input and output, for interactive shells. Without `--pty`,
//! the child gets pipes of this process instead, which the parent relays
//! to and from its own standard descriptors: the command never holds the
//! caller's descriptors (a terminal of the host, a socket), which it could
//! keep and use after it ends. This process is made non-dumpable before it
//! joins anything, so that root in the container can neither ptrace it nor
//! open its descriptors through /proc while it holds the caller's.

use std::ffi::CString;
use std::fs::File;
use std::io::{Read, Write};
use std::os::fd::{AsFd, OwnedFd};
use std::process::ExitCode;

use nix::sched::{CloneFlags, setns};
use nix::sys::wait::{WaitStatus, waitpid};
use nix::unistd::{Gid, Pid, Uid};

use super::sys::{Forked, fork};

/// Options of `wharfd enter`, carried from wharfd to it in the shell
/// unit's `ExecStart=` ([`EnterArgs::command_line`]).
#[derive(Debug, Clone, PartialEq, Eq, clap::Args)]
pub struct EnterArgs {
    /// PID (on the host) of the container's init.
    #[arg(long, value_name = "PID")]
    pub leader: u32,
    /// The user to run as, looked up in the container.
    #[arg(long, default_value = "root")]
    pub user: String,
    /// Give the command a terminal of its own (an interactive shell).
    #[arg(long)]
    pub pty: bool,
    /// Terminal size as ROWSxCOLUMNS, with --pty.
    #[arg(long, value_name = "ROWSxCOLUMNS")]
    pub size: Option<String>,
    /// A variable of the command's environment (repeatable; a later one
    /// of the same name wins), taken literally.
    #[arg(long, value_name = "VAR=VALUE")]
    pub setenv: Vec<String>,
    /// The command's own cgroup: PATH below the cgroup of the machine's
    /// unit, its parent, so that the machine's limits count it.
    #[arg(long, value_name = "PATH")]
    pub cgroup: Option<String>,
    /// Join the user namespace after the others: for a service, whose
    /// other namespaces systemd may have made before its user namespace
    /// (so that they belong to the host's, and host root must join them
    /// before it gives its capabilities there up).
    #[arg(long)]
    pub user_namespace_last: bool,
    /// The command; the user's login shell when empty.
    #[arg(last = true)]
    pub command: Vec<String>,
}

impl EnterArgs {
    /// `PROGRAM enter --option=value... -- COMMAND...`, which wharfd parses
    /// back into these arguments: every value is joined to its option with
    /// `=`, and the command follows `--`, so that no user name, size or
    /// word of the command is read as an option.
    pub fn command_line(&self, program: &str) -> Vec<String> {
        let mut argv = vec![
            program.to_string(),
            "enter".to_string(),
            format!("--leader={}", self.leader),
            format!("--user={}", self.user),
        ];
        if self.pty {
            argv.push("--pty".to_string());
        }
        if let Some(size) = &self.size {
            argv.push(format!("--size={size}"));
        }
        argv.extend(self.setenv.iter().map(|variable| format!("--setenv={variable}")));
        if self.user_namespace_last {
            argv.push("--user-namespace-last".to_string());
        }
        if let Some(cgroup) = &self.cgroup {
            argv.push(format!("--cgroup={cgroup}"));
        }
        argv.push("--".to_string());
        argv.extend(self.command.iter().cloned());
        argv
    }
}

/// Checks a VAR=VALUE of `machine shell --setenv`: a name of letters,
/// digits and `_` that does not start with a digit (what a shell can
/// read), then `=`, then any value without a NUL. The error says why.
pub fn check_variable(variable: &str) -> Result<(), String> {
    let Some((name, value)) = variable.split_once('=') else {
        return Err(format!("environment variable '{variable}' is not VAR=VALUE"));
    };
    let valid_name = name.chars().next().is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
        && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_');
    if !valid_name {
        return Err(format!(
            "'{name}' is not a valid environment variable name (letters, digits and _, not first a digit)"
        ));
    }
    if value.contains('\0') {
        return Err(format!("the value of environment variable '{name}' holds a NUL byte"));
    }
    Ok(())
}

/// Exit status when entering failed before the command ran (as env(1) and
/// nspawn use: 125 for the tool's own failure, 127 command not found).
const EXIT_ENTER_FAILED: u8 = 125;
const EXIT_NOT_FOUND: u8 = 127;

#[derive(Debug, thiserror::Error)]
enum EnterError {
    #[error("the container's init (PID {0}) is gone or not a container: {1}")]
    Namespaces(u32, String),
    #[error("user '{0}' does not exist in the container")]
    NoUser(String),
    #[error("{0}")]
    Setup(String),
}

/// A user as the container's /etc/passwd and /etc/group know it.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Account {
    uid: u32,
    gid: u32,
    home: String,
    shell: String,
    groups: Vec<u32>,
}

pub fn main(args: EnterArgs) -> ExitCode {
    let entered = match &args.cgroup {
        Some(cgroup) => supervise(&args, cgroup),
        None => enter(&args),
    };
    match entered {
        Ok(code) => ExitCode::from(code),
        Err(e) => {
            eprintln!("wharfd enter: {e}");
            ExitCode::from(EXIT_ENTER_FAILED)
        }
    }
}

fn enter(args: &EnterArgs) -> Result<u8, EnterError> {
    // Before joining the container's user namespace: a dumpable process
    // whose credentials are in it can be ptraced by the container's root,
    // and its descriptors (the caller's) opened through /proc/PID/fd. The
    // child inherits this until it executes the command, by which time it
    // holds only its pipes or terminal.
    rustix::process::set_dumpable_behavior(rustix::process::DumpableBehavior::NotDumpable)
        .map_err(|e| EnterError::Setup(format!("making this process non-dumpable: {e}")))?;
    // Open every namespace before joining any: after joining the mount
    // namespace, /proc/PID is no longer the host's.
    let kinds: [(&str, CloneFlags); 7] = [
        ("user", CloneFlags::CLONE_NEWUSER),
        ("cgroup", CloneFlags::CLONE_NEWCGROUP),
        ("ipc", CloneFlags::CLONE_NEWIPC),
        ("uts", CloneFlags::CLONE_NEWUTS),
        ("net", CloneFlags::CLONE_NEWNET),
        ("pid", CloneFlags::CLONE_NEWPID),
        ("mnt", CloneFlags::CLONE_NEWNS),
    ];
    // The command gets no capability the container's init lacks (as under
    // machinectl shell, whose command the container's own manager starts).
    let status = std::fs::read_to_string(format!("/proc/{}/status", args.leader))
        .map_err(|e| EnterError::Namespaces(args.leader, e.to_string()))?;
    let bounding = capability_bounding_set(&status)
        .ok_or_else(|| EnterError::Namespaces(args.leader, "no CapBnd in its status".into()))?;
    let mut namespaces = Vec::new();
    for (name, flag) in kinds {
        let path = format!("/proc/{}/ns/{name}", args.leader);
        let ours = std::fs::read_link(format!("/proc/self/ns/{name}")).ok();
        let theirs = std::fs::read_link(&path).map_err(|e| EnterError::Namespaces(args.leader, e.to_string()))?;
        // Joining one's own user namespace is refused (EINVAL); the others
        // are shared with the host when the container shares them.
        if Some(&theirs) == ours.as_ref() {
            continue;
        }
        let file = File::open(&path).map_err(|e| EnterError::Namespaces(args.leader, e.to_string()))?;
        namespaces.push((name, flag, OwnedFd::from(file)));
    }
    if args.user_namespace_last
        && let Some(at) = namespaces.iter().position(|(name, ..)| *name == "user")
    {
        let user = namespaces.remove(at);
        namespaces.push(user);
    }
    for (name, flag, fd) in &namespaces {
        setns(fd.as_fd(), *flag)
            .map_err(|e| EnterError::Namespaces(args.leader, format!("joining its {name} namespace: {e}")))?;
    }
    super::sys::bound_capabilities(rustix::thread::CapabilitySet::from_bits_retain(bounding))
        .map_err(|(n, e)| EnterError::Setup(format!("dropping capability {n}: {e}")))?;
    // Nor fewer restrictions: the init's no_new_privs and system call filter.
    let field = |key: &str| status.lines().find_map(|l| l.strip_prefix(key)).map(str::trim);
    if field("NoNewPrivs:") == Some("1") {
        rustix::thread::set_no_new_privs(true).map_err(|e| EnterError::Setup(format!("setting no_new_privs: {e}")))?;
    }
    if field("Seccomp:") == Some("2") {
        super::seccomp::install(rustix::thread::CapabilitySet::from_bits_retain(bounding))
            .map_err(|e| EnterError::Setup(e.to_string()))?;
    }
    std::env::set_current_dir("/").map_err(|e| EnterError::Setup(format!("cannot enter /: {e}")))?;
    let account = lookup(&args.user)?;
    let command = if args.command.is_empty() { vec![account.shell.clone(), "-l".into()] } else { args.command.clone() };
    let io = if args.pty { Io::Terminal(open_pty(args.size.as_deref())?) } else { Io::Pipes(Pipes::new()?) };

    match fork().map_err(|e| EnterError::Setup(format!("fork: {e}")))? {
        Forked::Child => {
            let code = run_child(&account, args, &command, &io);
            std::process::exit(code);
        }
        Forked::Parent(child) => {
            match io {
                Io::Terminal((master, slave)) => {
                    drop(slave);
                    let _raw = RawInput::enter();
                    if relay(&master, child) == Relayed::Left {
                        // Closing the terminal hangs the session up; what
                        // ignores that goes with the shell's cgroup, or
                        // with its unit.
                        drop(master);
                        return Ok(0);
                    }
                }
                Io::Pipes(mut pipes) => pipes.relay(child),
            }
            Ok(wait_exit_code(child))
        }
    }
}

/// How long the processes left in a shell's cgroup get to be gone.
const CLEANUP_PATIENCE: std::time::Duration = std::time::Duration::from_secs(10);

/// With `--cgroup`: this process stays in the shell's unit, as its main
/// process, and a child does the entering from inside the machine's
/// cgroups (the move must come first: once in the container's user and
/// cgroup namespaces, the host's cgroups cannot be joined). When the child
/// is done, or the unit is stopped (SIGTERM, or SIGHUP/SIGINT), every
/// process left in the shell's cgroups is killed and the cgroups are
/// removed: what the command started ends with it, although systemd, which
/// knows only the unit's own cgroup, would not see those processes.
fn supervise(args: &EnterArgs, cgroup: &str) -> Result<u8, EnterError> {
    use nix::sys::signal::{SigSet, Signal};
    let (unit, leaf) =
        cgroup.rsplit_once('/').ok_or_else(|| EnterError::Setup(format!("'{cgroup}' is not a cgroup path")))?;
    let leader = std::fs::read_to_string(format!("/proc/{}/cgroup", args.leader))
        .map_err(|e| EnterError::Namespaces(args.leader, e.to_string()))?;
    let layout = super::cgroup::HostCgroups::detect()
        .map_err(|e| EnterError::Setup(format!("reading the host's cgroups: {e}")))?
        .layout;
    let cgroups = super::cgroup::shell_cgroups(layout, &leader, unit, leaf)
        .map_err(|e| EnterError::Setup(format!("placing the shell in the machine's cgroup: {e}")))?;
    // Made here, before the child exists, so that a stop at any moment
    // finds (and removes) them.
    super::cgroup::make_shell_cgroups(&cgroups).map_err(|e| EnterError::Setup(e.to_string()))?;
    let mut signals = SigSet::empty();
    for signal in [Signal::SIGCHLD, Signal::SIGTERM, Signal::SIGHUP, Signal::SIGINT] {
        signals.add(signal);
    }
    let cleanup = |cgroups: &[super::cgroup::ShellCgroup]| {
        if let Err(e) = super::cgroup::remove_shell_cgroups(cgroups, CLEANUP_PATIENCE) {
            eprintln!("wharfd enter: {e}");
        }
    };
    if let Err(e) = signals.thread_block() {
        cleanup(&cgroups);
        return Err(EnterError::Setup(format!("blocking signals: {e}")));
    }
    let child = match fork() {
        Err(e) => {
            cleanup(&cgroups);
            return Err(EnterError::Setup(format!("fork: {e}")));
        }
        Ok(Forked::Child) => {
            let code = match signals.thread_unblock() {
                Err(e) => Err(EnterError::Setup(format!("unblocking signals: {e}"))),
                Ok(()) => super::cgroup::join_shell_cgroups(&cgroups)
                    .map_err(|e| EnterError::Setup(e.to_string()))
                    .and_then(|()| enter(args)),
            };
            std::process::exit(match code {
                Ok(code) => i32::from(code),
                Err(e) => {
                    eprintln!("wharfd enter: {e}");
                    i32::from(EXIT_ENTER_FAILED)
                }
            });
        }
        Ok(Forked::Parent(child)) => child,
    };
    let mut stopped = None;
    let code = loop {
        match waitpid(child, Some(nix::sys::wait::WaitPidFlag::WNOHANG)) {
            Ok(WaitStatus::Exited(_, code)) => break code as u8,
            Ok(WaitStatus::Signaled(_, signal, _)) => break 128 + signal as u8,
            Err(nix::errno::Errno::ECHILD) => break EXIT_ENTER_FAILED,
            _ => {}
        }
        match signals.wait() {
            Ok(Signal::SIGCHLD) | Err(_) => {}
            Ok(signal) => {
                // Stopped: the child first, so that nothing joins the
                // cgroups any more, then all it left there.
                let _ = nix::sys::signal::kill(child, Signal::SIGKILL);
                stopped.get_or_insert(signal);
            }
        }
    };
    cleanup(&cgroups);
    Ok(stopped.map_or(code, |signal| 128 + signal as u8))
}

/// Reads of the command's output after it exited, at most (of 64 KiB each,
/// the size of a pipe's default buffer).
const DRAIN_READS: usize = 64;

/// The command's standard descriptors.
enum Io {
    /// A terminal of the container's devpts: (master, slave).
    Terminal((OwnedFd, OwnedFd)),
    /// Pipes of this process.
    Pipes(Pipes),
}

/// Pipes between the command and this process: the command's ends (its
/// stdin, stdout and stderr), and this process's ends of each, all
/// close-on-exec (the command gets its own ends as 0, 1 and 2 only).
struct Pipes {
    child: Option<[OwnedFd; 3]>,
    to_stdin: Option<OwnedFd>,
    from_stdout: Option<OwnedFd>,
    from_stderr: Option<OwnedFd>,
}

impl Pipes {
    fn new() -> Result<Pipes, EnterError> {
        let pipe =
            || nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC).map_err(|e| EnterError::Setup(format!("pipe: {e}")));
        let ((stdin, to_stdin), (from_stdout, stdout), (from_stderr, stderr)) = (pipe()?, pipe()?, pipe()?);
        for ours in [&to_stdin, &from_stdout, &from_stderr] {
            let flags = rustix::fs::fcntl_getfl(ours).map_err(|e| EnterError::Setup(format!("pipe: {e}")))?;
            rustix::fs::fcntl_setfl(ours, flags | rustix::fs::OFlags::NONBLOCK)
                .map_err(|e| EnterError::Setup(format!("pipe: {e}")))?;
        }
        Ok(Pipes {
            child: Some([stdin, stdout, stderr]),
            to_stdin: Some(to_stdin),
            from_stdout: Some(from_stdout),
            from_stderr: Some(from_stderr),
        })
    }

    /// Copies this process's stdin to the command and the command's stdout
    /// and stderr to this process's, until the command has exited (then
    /// what it left in the pipes is copied too; what processes it left
    /// behind write later is not waited for).
    fn relay(&mut self, child: Pid) {
        use nix::poll::{PollFd, PollFlags, PollTimeout, poll};
        drop(self.child.take());
        let exited = rustix::process::Pid::from_raw(child.as_raw())
            .and_then(|pid| rustix::process::pidfd_open(pid, rustix::process::PidfdFlags::empty()).ok());
        let stdin = std::io::stdin();
        let mut input_open = true;
        let mut pending: Vec<u8> = Vec::new();
        let mut buffer = vec![0u8; 1 << 16];
        loop {
            #[derive(Clone, Copy, PartialEq)]
            enum Slot {
                Exited,
                Input,
                ToStdin,
                Stdout,
                Stderr,
            }
            let mut slots = Vec::new();
            let mut fds = Vec::new();
            if let Some(pidfd) = &exited {
                slots.push(Slot::Exited);
                fds.push(PollFd::new(pidfd.as_fd(), PollFlags::POLLIN));
            }
            if let Some(to_stdin) = &self.to_stdin {
                if !pending.is_empty() {
                    slots.push(Slot::ToStdin);
                    fds.push(PollFd::new(to_stdin.as_fd(), PollFlags::POLLOUT));
                } else if input_open {
                    slots.push(Slot::Input);
                    fds.push(PollFd::new(stdin.as_fd(), PollFlags::POLLIN));
                }
            }
            for (slot, fd) in [(Slot::Stdout, &self.from_stdout), (Slot::Stderr, &self.from_stderr)] {
                if let Some(fd) = fd {
                    slots.push(slot);
                    fds.push(PollFd::new(fd.as_fd(), PollFlags::POLLIN));
                }
            }
            // Without a pidfd (a kernel before 5.3), look for the exit twice a second.
            let timeout = if exited.is_some() { PollTimeout::NONE } else { PollTimeout::from(500u16) };
            match poll(&mut fds, timeout) {
                Ok(_) | Err(nix::errno::Errno::EINTR) => {}
                Err(_) => break,
            }
            let ready: Vec<(Slot, PollFlags)> =
                slots.iter().zip(&fds).map(|(slot, fd)| (*slot, fd.revents().unwrap_or(PollFlags::empty()))).collect();
            drop(fds);
            let mut done = exited.is_none()
                && matches!(
                    waitpid(child, Some(nix::sys::wait::WaitPidFlag::WNOHANG | nix::sys::wait::WaitPidFlag::WNOWAIT)),
                    Ok(WaitStatus::Exited(..)) | Ok(WaitStatus::Signaled(..))
                );
            let any = PollFlags::POLLIN | PollFlags::POLLOUT | PollFlags::POLLHUP | PollFlags::POLLERR;
            for (slot, _) in ready.into_iter().filter(|(_, flags)| flags.intersects(any)) {
                match slot {
                    Slot::Exited => done = true,
                    Slot::Input => match stdin.lock().read(&mut buffer) {
                        Ok(0) | Err(_) => input_open = false,
                        Ok(n) => pending.extend_from_slice(&buffer[..n]),
                    },
                    Slot::ToStdin => self.feed(&mut pending),
                    Slot::Stdout | Slot::Stderr => self.copy_out(slot == Slot::Stdout, &mut buffer, false),
                }
            }
            if !pending.is_empty() {
                self.feed(&mut pending);
            }
            if !input_open && pending.is_empty() {
                // The command sees the end of its input.
                self.to_stdin = None;
            }
            if done {
                // What is in the pipes, bounded: a process the command left
                // behind could keep writing forever.
                for _ in 0..DRAIN_READS {
                    self.copy_out(true, &mut buffer, true);
                    self.copy_out(false, &mut buffer, true);
                }
                return;
            }
        }
    }

    /// Writes what it can of `pending` to the command's stdin.
    fn feed(&mut self, pending: &mut Vec<u8>) {
        let Some(to_stdin) = &self.to_stdin else {
            pending.clear();
            return;
        };
        match nix::unistd::write(to_stdin, pending) {
            Ok(n) => drop(pending.drain(..n)),
            Err(nix::errno::Errno::EAGAIN | nix::errno::Errno::EINTR) => {}
            // The command closed its stdin: nothing more goes to it.
            Err(_) => {
                pending.clear();
                self.to_stdin = None;
            }
        }
    }

    /// Copies one read from the command's stdout (or stderr) to this
    /// process's; at the end of that pipe, or if this side cannot take
    /// more (a closed pipe), the pipe is closed. When `draining` (the
    /// command has exited), nothing left to read closes it too.
    fn copy_out(&mut self, stdout: bool, buffer: &mut [u8], draining: bool) {
        let pipe = if stdout { &mut self.from_stdout } else { &mut self.from_stderr };
        let Some(fd) = pipe.as_ref() else { return };
        let written = match nix::unistd::read(fd, buffer) {
            Ok(0) => false,
            Ok(n) if stdout => {
                let mut out = std::io::stdout().lock();
                out.write_all(&buffer[..n]).and_then(|()| out.flush()).is_ok()
            }
            Ok(n) => std::io::stderr().write_all(&buffer[..n]).is_ok(),
            Err(nix::errno::Errno::EINTR) => true,
            Err(nix::errno::Errno::EAGAIN) => !draining,
            Err(_) => false,
        };
        if !written {
            *pipe = None;
        }
    }
}

/// The `CapBnd:` mask of a /proc/PID/status text.
fn capability_bounding_set(status: &str) -> Option<u64> {
    let value = status.lines().find_map(|line| line.strip_prefix("CapBnd:"))?;
    u64::from_str_radix(value.trim(), 16).ok()
}

/// The command's environment: a login's basic variables, then the caller's
/// (`--setenv`, TERM among them), each replacing one of the same name.
fn environment(account: &Account, user: &str, pty: bool, setenv: &[String]) -> Vec<String> {
    let mut env = vec![
        "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin".to_string(),
        format!("HOME={}", account.home),
        format!("USER={user}"),
        format!("LOGNAME={user}"),
        format!("SHELL={}", account.shell),
        "container=wharf".to_string(),
    ];
    // A terminal the caller did not name is taken for a plain VT220.
    if pty {
        env.push("TERM=vt220".to_string());
    }
    for variable in setenv {
        let name = variable.split('=').next().unwrap_or_default();
        env.retain(|have| have.split('=').next() != Some(name));
        env.push(variable.clone());
    }
    env
}

/// In the child: become the user and run the command. Returns only on failure.
fn run_child(account: &Account, args: &EnterArgs, command: &[String], io: &Io) -> i32 {
    let user = args.user.as_str();
    let fail = |what: &str, e: &dyn std::fmt::Display| {
        eprintln!("wharfd enter: {what}: {e}");
        i32::from(EXIT_ENTER_FAILED)
    };
    // First of all: the caller's descriptors are replaced by the command's own.
    if let Io::Pipes(Pipes { child: Some([stdin, stdout, stderr]), .. }) = io {
        let standard =
            [rustix::stdio::dup2_stdin(stdin), rustix::stdio::dup2_stdout(stdout), rustix::stdio::dup2_stderr(stderr)];
        if let Some(Err(e)) = standard.into_iter().find(|r| r.is_err()) {
            return fail("pipes", &e);
        }
    }
    if let Io::Terminal((_, slave)) = io {
        if let Err(e) = nix::unistd::setsid() {
            return fail("setsid", &e);
        }
        if let Err(e) = rustix::process::ioctl_tiocsctty(slave) {
            return fail("taking the terminal", &e);
        }
        let standard =
            [rustix::stdio::dup2_stdin(slave), rustix::stdio::dup2_stdout(slave), rustix::stdio::dup2_stderr(slave)];
        if let Some(Err(e)) = standard.into_iter().find(|r| r.is_err()) {
            return fail("terminal", &e);
        }
    }
    let groups: Vec<Gid> = account.groups.iter().map(|g| Gid::from_raw(*g)).collect();
    if let Err(e) = nix::unistd::setgroups(&groups) {
        // A user namespace whose setgroups is "deny" (a service's, under
        // PrivateUsers=) lets no one change the supplementary groups: the
        // command keeps those it has, as the service itself does.
        let denied = std::fs::read_to_string("/proc/self/setgroups").is_ok_and(|s| s.trim() == "deny");
        if !(e == nix::errno::Errno::EPERM && denied) {
            return fail("setgroups", &e);
        }
    }
    if let Err(e) = nix::unistd::setgid(Gid::from_raw(account.gid)) {
        return fail("setgid", &e);
    }
    if let Err(e) = nix::unistd::setuid(Uid::from_raw(account.uid)) {
        return fail("setuid", &e);
    }
    let _ = std::env::set_current_dir(&account.home);
    let env = environment(account, user, args.pty, &args.setenv);
    let to_c = |s: &String| CString::new(s.as_bytes()).unwrap_or_default();
    let argv: Vec<CString> = command.iter().map(to_c).collect();
    let envp: Vec<CString> = env.iter().map(to_c).collect();
    let error = nix::unistd::execvpe(&argv[0], &argv, &envp).unwrap_err();
    eprintln!("wharfd enter: {}: {error}", command[0]);
    i32::from(if error == nix::errno::Errno::ENOENT { EXIT_NOT_FOUND } else { EXIT_ENTER_FAILED })
}

fn wait_exit_code(child: Pid) -> u8 {
    loop {
        match waitpid(child, None) {
            Ok(WaitStatus::Exited(_, code)) => return code as u8,
            Ok(WaitStatus::Signaled(_, signal, _)) => return 128 + signal as u8,
            Err(nix::errno::Errno::EINTR) => continue,
            Ok(_) => continue,
            Err(_) => return EXIT_ENTER_FAILED,
        }
    }
}

/// Looks a user up in the container's /etc/passwd and /etc/group (numeric
/// IDs are taken as they are).
fn lookup(user: &str) -> Result<Account, EnterError> {
    let passwd = std::fs::read_to_string("/etc/passwd").unwrap_or_default();
    let group = std::fs::read_to_string("/etc/group").unwrap_or_default();
    parse_account(user, &passwd, &group).ok_or_else(|| EnterError::NoUser(user.to_string()))
}

fn parse_account(user: &str, passwd: &str, group: &str) -> Option<Account> {
    let entry = passwd
        .lines()
        .map(|l| l.split(':').collect::<Vec<_>>())
        .find(|f| f.len() >= 7 && (f[0] == user || f[2] == user));
    let (uid, gid, home, shell) = match &entry {
        Some(f) => (f[2].parse().ok()?, f[3].parse().ok()?, f[5].to_string(), f[6].to_string()),
        None => {
            let uid: u32 = user.parse().ok()?;
            (uid, uid, "/".to_string(), "/bin/sh".to_string())
        }
    };
    let name = entry.as_ref().map_or(user, |f| f[0]);
    let mut groups = vec![gid];
    for line in group.lines() {
        let f: Vec<&str> = line.split(':').collect();
        if f.len() >= 4
            && f[3].split(',').any(|member| member == name)
            && let Ok(id) = f[2].parse()
        {
            groups.push(id);
        }
    }
    let shell = if shell.is_empty() { "/bin/sh".to_string() } else { shell };
    Some(Account { uid, gid, home: if home.is_empty() { "/".into() } else { home }, shell, groups })
}

/// A new terminal of the container's devpts: (master, slave).
fn open_pty(size: Option<&str>) -> Result<(OwnedFd, OwnedFd), EnterError> {
    let pty = super::pty::open(false).map_err(|e| EnterError::Setup(format!("opening a terminal: {e}")))?;
    if let Some(size) = size {
        super::pty::set_size(&pty.slave, size);
    }
    Ok((pty.master, pty.slave))
}

/// The caller's terminal (standard input, if one) in raw mode while the
/// command's terminal is relayed, and as it was afterwards: ^C, ^Z and ^\
/// are then bytes for the command's terminal, which makes them signals in
/// the machine, and ^] is seen here. The client set it so already; a
/// service manager may have reset it when it handed it over.
struct RawInput(Option<rustix::termios::Termios>);

impl RawInput {
    fn enter() -> RawInput {
        let stdin = std::io::stdin();
        let Ok(saved) = rustix::termios::tcgetattr(&stdin) else { return RawInput(None) };
        let mut raw = saved.clone();
        raw.make_raw();
        let _ = rustix::termios::tcsetattr(&stdin, rustix::termios::OptionalActions::Now, &raw);
        RawInput(Some(saved))
    }
}

impl Drop for RawInput {
    fn drop(&mut self) {
        if let Some(saved) = &self.0 {
            let _ = rustix::termios::tcsetattr(std::io::stdin(), rustix::termios::OptionalActions::Now, saved);
        }
    }
}

/// How a terminal relay ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Relayed {
    /// The command is done with the terminal.
    Ended,
    /// ^] three times within a second: the caller left.
    Left,
}

/// Copies standard input to the terminal and the terminal to standard
/// output until the command is done with it or the caller leaves.
fn relay(master: &OwnedFd, child: Pid) -> Relayed {
    use nix::poll::{PollFd, PollFlags, PollTimeout, poll};
    let stdin = std::io::stdin();
    let mut stdout = std::io::stdout();
    let mut buffer = [0u8; 8192];
    let mut input_open = true;
    let mut escape = super::pty::EscapeCounter::default();
    loop {
        let mut fds = vec![PollFd::new(master.as_fd(), PollFlags::POLLIN)];
        if input_open {
            fds.push(PollFd::new(stdin.as_fd(), PollFlags::POLLIN));
        }
        if poll(&mut fds, PollTimeout::from(500u16)).is_err() {
            continue;
        }
        let master_ready = fds[0].revents().unwrap_or(PollFlags::empty());
        let input_ready = fds.get(1).and_then(|f| f.revents()).unwrap_or(PollFlags::empty());
        if master_ready.intersects(PollFlags::POLLIN) {
            match nix::unistd::read(master, &mut buffer) {
                Ok(0) | Err(_) => break,
                Ok(n) => {
                    let _ = stdout.write_all(&buffer[..n]);
                    let _ = stdout.flush();
                }
            }
        } else if master_ready.intersects(PollFlags::POLLHUP | PollFlags::POLLERR) {
            break;
        }
        if input_ready.intersects(PollFlags::POLLIN | PollFlags::POLLHUP) {
            match stdin.lock().read(&mut buffer) {
                Ok(0) | Err(_) => input_open = false,
                Ok(n) => {
                    if escape.feed(&buffer[..n], std::time::Instant::now()) {
                        let _ = stdout.write_all(b"\r\nConnection closed.\r\n");
                        let _ = stdout.flush();
                        return Relayed::Left;
                    }
                    let _ = nix::unistd::write(master, &buffer[..n]);
                }
            }
        }
        if matches!(
            waitpid(child, Some(nix::sys::wait::WaitPidFlag::WNOHANG | nix::sys::wait::WaitPidFlag::WNOWAIT)),
            Ok(WaitStatus::Exited(..)) | Ok(WaitStatus::Signaled(..))
        ) {
            break;
        }
    }
    Relayed::Ended
}

#[cfg(test)]
mod tests {
    use super::*;

    /// What wharfd's own command line makes of `argv`.
    fn parse(argv: &[String]) -> EnterArgs {
        use clap::Parser;
        match crate::cli::wharfd::Args::try_parse_from(argv).unwrap().command {
            Some(crate::cli::wharfd::Command::Enter(args)) => args,
            other => panic!("{argv:?} is not an enter: {other:?}"),
        }
    }

    #[test]
    fn enter_arguments_survive_the_command_line() {
        let plain = EnterArgs {
            leader: 42,
            user: "root".into(),
            pty: false,
            size: None,
            setenv: Vec::new(),
            cgroup: None,
            user_namespace_last: false,
            command: Vec::new(),
        };
        assert_eq!(parse(&plain.command_line("wharfd")), plain);
        let shell = EnterArgs {
            leader: 7,
            user: "alice".into(),
            pty: true,
            size: Some("40x120".into()),
            setenv: vec!["TERM=xterm-256color".into(), "X=$HOME a".into()],
            cgroup: Some("/machine.slice/wharf-f28.service/wharf-shell-f28-1-0".into()),
            user_namespace_last: true,
            command: vec!["systemctl".into(), "is-system-running".into()],
        };
        assert_eq!(parse(&shell.command_line("wharfd")), shell);
        // Values that look like options stay values.
        for hostile in ["-rf", "--pty", "--leader=1", "--", "a b", "x\n--user=root", ""] {
            let args = EnterArgs {
                user: hostile.into(),
                size: Some(hostile.into()),
                setenv: vec![format!("V={hostile}"), hostile.into()],
                cgroup: Some(hostile.into()),
                user_namespace_last: false,
                command: vec![hostile.into(), "--user=evil".into(), "-c".into()],
                ..plain.clone()
            };
            assert_eq!(parse(&args.command_line("wharfd")), args, "{hostile:?}");
        }
    }

    const PASSWD: &str = "root:x:0:0:root:/root:/bin/bash\nalice:x:1000:1000::/home/alice:/bin/zsh\nnobody:x:65534:65534::/nonexistent:/usr/sbin/nologin\n";
    const GROUP: &str = "root:x:0:\nwheel:x:10:alice,bob\nalice:x:1000:\n";

    #[test]
    fn variables_are_checked() {
        for good in ["X=$HOME a", "TERM=xterm-256color", "_a1=", "A==b", "X=line\nbreak"] {
            assert_eq!(check_variable(good), Ok(()), "{good}");
        }
        for bad in ["NOEQUALS", "=value", "1X=a", "A B=c", "A-B=c", "Ä=c", "X=a\0b", ""] {
            let error = check_variable(bad).unwrap_err();
            assert_eq!(error.lines().count(), 1, "{error}");
        }
    }

    #[test]
    fn the_callers_variables_replace_the_defaults() {
        let root = parse_account("root", PASSWD, GROUP).unwrap();
        let env = environment(&root, "root", true, &["TERM=xterm".into(), "X=$HOME a".into(), "HOME=/srv".into()]);
        assert!(env.contains(&"TERM=xterm".to_string()) && !env.contains(&"TERM=vt220".to_string()), "{env:?}");
        assert!(env.contains(&"X=$HOME a".to_string()), "{env:?}");
        assert_eq!(env.iter().filter(|v| v.starts_with("HOME=")).collect::<Vec<_>>(), ["HOME=/srv"]);
        assert!(environment(&root, "root", true, &[]).contains(&"TERM=vt220".to_string()));
        assert!(!environment(&root, "root", false, &[]).iter().any(|v| v.starts_with("TERM=")));
    }

    #[test]
    fn bounding_set_from_status() {
        let status =
            "Name:\tsystemd\nCapPrm:\t000001ffffffffff\nCapBnd:\t00000000fdecafff\nCapAmb:\t0000000000000000\n";
        assert_eq!(capability_bounding_set(status), Some(0xfdec_afff));
        assert_eq!(capability_bounding_set("Name:\tx\n"), None);
        assert_eq!(capability_bounding_set("CapBnd:\tzz\n"), None);
    }

    #[test]
    fn accounts_come_from_the_container() {
        let alice = parse_account("alice", PASSWD, GROUP).unwrap();
        assert_eq!(
            alice,
            Account {
                uid: 1000,
                gid: 1000,
                home: "/home/alice".into(),
                shell: "/bin/zsh".into(),
                groups: vec![1000, 10]
            }
        );
        assert_eq!(parse_account("0", PASSWD, GROUP).unwrap().home, "/root");
        assert_eq!(parse_account("4242", PASSWD, GROUP).unwrap().uid, 4242);
        assert_eq!(parse_account("mallory", PASSWD, GROUP), None);
    }
}
