//! The system call filter of a machine's init, in the style of
//! systemd-nspawn's: an allow-list.
//!
//! - Allowed: the groups nspawn allows (systemd's @aio @basic-io @chown
//!   @default @file-system @io-event @ipc @keyring @mount @network-io
//!   @process @resources @setuid @signal @sync @timer, as systemd 252 lists
//!   them), a few calls named on their own ([`NAMED`]), and the calls whose
//!   use needs a capability when the container keeps that capability
//!   ([`BY_CAPABILITY`]: no @clock without CAP_SYS_TIME, no reboot(2)
//!   without CAP_SYS_BOOT, ...).
//! - Known to this libseccomp but not allowed (kexec, open_by_handle_at,
//!   perf_event_open, quotactl, fanotify, swapon, the obsolete calls, ...):
//!   EPERM, the answer a program expects when it may not do something.
//! - Unknown (newer than this list): ENOSYS, so that a program falls back as
//!   it would on an older kernel instead of treating a new call as forbidden.
//! - A second filter refuses audit netlink sockets with EAFNOSUPPORT: the
//!   kernel's audit belongs to the host, and journald and friends take that
//!   answer to mean "no audit here".
//!
//! Both filters leave no_new_privs alone (libseccomp would set it): whether
//! the init runs with it is `--no-new-privileges=`'s choice, as in nspawn.
//! Loading a filter without no_new_privs needs CAP_SYS_ADMIN in the current
//! user namespace, which the container's root has until it execs.

use std::collections::BTreeSet;

use libseccomp::{ScmpAction, ScmpArch, ScmpArgCompare, ScmpCompareOp, ScmpFilterContext, ScmpSyscall};
use rustix::thread::CapabilitySet;

/// A filter that could not be built or loaded: the step and the reason
/// (libseccomp's, or the kernel's when it refused a built program).
#[derive(Debug, thiserror::Error)]
pub enum SeccompError {
    #[error("system call filter: {step}: {source}")]
    Build {
        step: String,
        #[source]
        source: libseccomp::error::SeccompError,
    },
    #[error("system call filter: {step}: {source}")]
    Load {
        step: &'static str,
        #[source]
        source: std::io::Error,
    },
}

fn failed(step: impl Into<String>) -> impl FnOnce(libseccomp::error::SeccompError) -> SeccompError {
    let step = step.into();
    move |source| SeccompError::Build { step, source }
}

/// The calls of the groups nspawn allows (systemd 252's lists, merged).
#[rustfmt::skip]
const GROUPS: &[&str] = &[
    "_llseek", "_newselect", "accept", "accept4", "access", "add_key", "alarm", "arch_prctl", "bind", "brk",
    "cacheflush", "capget", "chdir", "chmod", "chown", "chown32", "chroot", "clock_getres",
    "clock_getres_time64", "clock_gettime", "clock_gettime64", "clock_nanosleep", "clock_nanosleep_time64",
    "clone", "clone3", "close", "close_range", "connect", "creat", "dup", "dup2", "dup3", "epoll_create",
    "epoll_create1", "epoll_ctl", "epoll_ctl_old", "epoll_pwait", "epoll_pwait2", "epoll_wait",
    "epoll_wait_old", "eventfd", "eventfd2", "execve", "execveat", "exit", "exit_group", "faccessat",
    "faccessat2", "fallocate", "fchdir", "fchmod", "fchmodat", "fchmodat2", "fchown", "fchown32", "fchownat",
    "fcntl", "fcntl64", "fdatasync", "fgetxattr", "flistxattr", "fork", "fremovexattr", "fsconfig",
    "fsetxattr", "fsmount", "fsopen", "fspick", "fstat", "fstat64", "fstatat64", "fstatfs", "fstatfs64",
    "fsync", "ftruncate", "ftruncate64", "futex", "futex_time64", "futex_waitv", "futimesat",
    "get_robust_list", "get_thread_area", "getcwd", "getdents", "getdents64", "getegid", "getegid32",
    "geteuid", "geteuid32", "getgid", "getgid32", "getgroups", "getgroups32", "getitimer", "getpeername",
    "getpgid", "getpgrp", "getpid", "getppid", "getrandom", "getresgid", "getresgid32", "getresuid",
    "getresuid32", "getrlimit", "getrusage", "getsid", "getsockname", "getsockopt", "gettid", "gettimeofday",
    "getuid", "getuid32", "getxattr", "inotify_add_watch", "inotify_init", "inotify_init1",
    "inotify_rm_watch", "io_cancel", "io_destroy", "io_getevents", "io_pgetevents", "io_pgetevents_time64",
    "io_setup", "io_submit", "io_uring_enter", "io_uring_register", "io_uring_setup", "ioprio_set", "ipc",
    "keyctl", "kill", "lchown", "lchown32", "lgetxattr", "link", "linkat", "listen", "listxattr",
    "llistxattr", "lremovexattr", "lseek", "lsetxattr", "lstat", "lstat64", "mbind", "membarrier",
    "memfd_create", "migrate_pages", "mkdir", "mkdirat", "mknod", "mknodat", "mmap", "mmap2", "mount",
    "mount_setattr", "move_mount", "move_pages", "mprotect", "mq_getsetattr", "mq_notify", "mq_open",
    "mq_timedreceive", "mq_timedreceive_time64", "mq_timedsend", "mq_timedsend_time64", "mq_unlink", "msgctl",
    "msgget", "msgrcv", "msgsnd", "msync", "munmap", "nanosleep", "newfstatat", "nice", "oldfstat",
    "oldlstat", "oldstat", "open", "open_tree", "openat", "openat2", "pause", "pidfd_open",
    "pidfd_send_signal", "pipe", "pipe2", "pivot_root", "poll", "ppoll", "ppoll_time64", "prctl", "pread64",
    "preadv", "preadv2", "prlimit64", "process_madvise", "process_vm_readv", "process_vm_writev", "pselect6",
    "pselect6_time64", "pwrite64", "pwritev", "pwritev2", "read", "readlink", "readlinkat", "readv", "recv",
    "recvfrom", "recvmmsg", "recvmmsg_time64", "recvmsg", "removexattr", "rename", "renameat", "renameat2",
    "request_key", "restart_syscall", "riscv_flush_icache", "riscv_hwprobe", "rmdir", "rseq", "rt_sigaction",
    "rt_sigpending", "rt_sigprocmask", "rt_sigqueueinfo", "rt_sigreturn", "rt_sigsuspend", "rt_sigtimedwait",
    "rt_sigtimedwait_time64", "rt_tgsigqueueinfo", "sched_getaffinity", "sched_setaffinity", "sched_setattr",
    "sched_setparam", "sched_setscheduler", "sched_yield", "select", "semctl", "semget", "semop",
    "semtimedop", "semtimedop_time64", "send", "sendmmsg", "sendmsg", "sendto", "set_mempolicy",
    "set_mempolicy_home_node", "set_robust_list", "set_thread_area", "set_tid_address", "set_tls", "setgid",
    "setgid32", "setgroups", "setgroups32", "setitimer", "setns", "setpriority", "setregid", "setregid32",
    "setresgid", "setresgid32", "setresuid", "setresuid32", "setreuid", "setreuid32", "setrlimit",
    "setsockopt", "setuid", "setuid32", "setxattr", "shmat", "shmctl", "shmdt", "shmget", "shutdown",
    "sigaction", "sigaltstack", "signal", "signalfd", "signalfd4", "sigpending", "sigprocmask", "sigreturn",
    "sigsuspend", "socket", "socketcall", "socketpair", "stat", "stat64", "statfs", "statfs64", "statx",
    "swapcontext", "symlink", "symlinkat", "sync", "sync_file_range", "sync_file_range2", "syncfs", "tgkill",
    "time", "timer_create", "timer_delete", "timer_getoverrun", "timer_gettime", "timer_gettime64",
    "timer_settime", "timer_settime64", "timerfd_create", "timerfd_gettime", "timerfd_gettime64",
    "timerfd_settime", "timerfd_settime64", "times", "tkill", "truncate", "truncate64", "ugetrlimit",
    "umount", "umount2", "unlink", "unlinkat", "unshare", "uretprobe", "utime", "utimensat",
    "utimensat_time64", "utimes", "vfork", "wait4", "waitid", "waitpid", "write", "writev",
];

/// Calls nspawn allows by name, outside those groups: sessions and process
/// groups, umask, terminal and file controls, scheduling queries, the UTS
/// and mount namespace calls a container's systemd makes, and the splice
/// family. With the groups they cover all of systemd's @system-service.
#[rustfmt::skip]
const NAMED: &[&str] = &[
    "capget", "capset", "copy_file_range", "fadvise64", "fadvise64_64", "flock", "get_mempolicy", "getcpu",
    "getpriority", "ioctl", "ioprio_get", "kcmp", "landlock_add_rule", "landlock_create_ruleset",
    "landlock_restrict_self", "madvise", "mincore", "mremap", "name_to_handle_at", "oldolduname", "olduname",
    "personality", "readahead", "readdir", "remap_file_pages", "sched_get_priority_max", "sched_get_priority_min",
    "sched_getattr", "sched_getparam", "sched_getscheduler", "sched_rr_get_interval",
    "sched_rr_get_interval_time64", "seccomp", "sendfile", "sendfile64", "setdomainname", "setfsgid",
    "setfsgid32", "setfsuid", "setfsuid32", "sethostname", "setpgid", "setsid", "splice", "sysinfo", "tee", "umask",
    "uname", "userfaultfd", "vmsplice", "arm_fadvise64_64",
];

/// Calls allowed only while the container keeps the capability they need
/// (without it the kernel would refuse them anyway; the filter keeps the
/// refusal even if a capability check has a hole).
const BY_CAPABILITY: &[(CapabilitySet, &[&str])] = &[
    (
        CapabilitySet::SYS_TIME,
        &["adjtimex", "clock_adjtime", "clock_adjtime64", "clock_settime", "clock_settime64", "settimeofday"],
    ),
    (CapabilitySet::SYS_MODULE, &["delete_module", "finit_module", "init_module"]),
    (CapabilitySet::SYS_RAWIO, &["ioperm", "iopl", "pciconfig_iobase", "pciconfig_read", "pciconfig_write"]),
    (CapabilitySet::IPC_LOCK, &["mlock", "mlock2", "mlockall", "munlock", "munlockall"]),
    (CapabilitySet::BPF, &["bpf"]),
    (CapabilitySet::SYS_PTRACE, &["ptrace"]),
    (CapabilitySet::SYS_BOOT, &["reboot"]),
    (CapabilitySet::SYSLOG, &["syslog"]),
    (CapabilitySet::SYS_PACCT, &["acct"]),
    (CapabilitySet::SYS_TTY_CONFIG, &["vhangup"]),
];

/// The names the filter allows for a container with these capabilities.
pub fn allowed(capabilities: CapabilitySet) -> BTreeSet<&'static str> {
    let mut names: BTreeSet<&'static str> = GROUPS.iter().chain(NAMED).copied().collect();
    for (capability, calls) in BY_CAPABILITY {
        if capabilities.contains(*capability) {
            names.extend(calls.iter().copied());
        }
    }
    names
}

/// The architectures a filter covers: the native one and those whose
/// programs it can also run (32-bit x86 and x32 on x86-64, arm on arm64),
/// so a compatibility call cannot get around the filter.
fn architectures() -> Vec<ScmpArch> {
    let native = ScmpArch::native();
    let mut archs = vec![native];
    match native {
        ScmpArch::X8664 => archs.extend([ScmpArch::X86, ScmpArch::X32]),
        ScmpArch::Aarch64 => archs.push(ScmpArch::Arm),
        _ => {}
    }
    archs
}

/// Highest system call number looked at when listing what libseccomp knows
/// (x86-64 is near 470, the compat tables are smaller).
const MAX_NUMBER: i32 = 1024;

/// Every call this libseccomp can name on these architectures.
fn known(archs: &[ScmpArch]) -> BTreeSet<String> {
    let mut names = BTreeSet::new();
    for arch in archs.iter().filter(|a| **a != ScmpArch::X32) {
        for number in 0..MAX_NUMBER {
            if let Ok(name) = ScmpSyscall::from(number).get_name_by_arch(*arch) {
                names.insert(name);
            }
        }
    }
    names
}

/// The allow-list filter for a container with these capabilities.
pub fn allow_list(capabilities: CapabilitySet) -> Result<ScmpFilterContext, SeccompError> {
    let mut filter = ScmpFilterContext::new(ScmpAction::Errno(nix::libc::ENOSYS)).map_err(failed("creating"))?;
    filter.set_ctl_nnp(false).map_err(failed("leaving no_new_privs alone"))?;
    // A binary tree of the call numbers rather than a list of every one of
    // them (some 1,200 instructions): the same answers, found in a few
    // comparisons by every call the kernel does not cache, and by the
    // kernel itself when it works out that cache as the filter is loaded
    // (which walked the whole list once per call number, on every boot).
    filter.set_ctl_optimize(2).map_err(failed("asking for a binary tree"))?;
    let archs = architectures();
    for arch in &archs {
        filter.add_arch(*arch).map_err(failed(format!("adding architecture {arch:?}")))?;
    }
    let allowed = allowed(capabilities);
    let mut rules: Vec<(String, ScmpAction)> = known(&archs)
        .into_iter()
        .filter(|name| !allowed.contains(name.as_str()))
        .map(|name| (name, ScmpAction::Errno(nix::libc::EPERM)))
        .collect();
    rules.extend(allowed.iter().map(|name| (name.to_string(), ScmpAction::Allow)));
    for (name, action) in rules {
        // A name this libseccomp does not know is a call of another
        // architecture or newer than the library: nothing to add.
        let Ok(call) = ScmpSyscall::from_name(&name) else { continue };
        filter.add_rule(action, call).map_err(failed(format!("adding {name}")))?;
    }
    Ok(filter)
}

/// The filter that refuses audit netlink sockets (everything else passes
/// it; the allow-list decides).
pub fn no_audit() -> Result<ScmpFilterContext, SeccompError> {
    let mut filter = ScmpFilterContext::new(ScmpAction::Allow).map_err(failed("creating"))?;
    filter.set_ctl_nnp(false).map_err(failed("leaving no_new_privs alone"))?;
    // Other architectures multiplex socket(2) through socketcall(2), whose
    // arguments a filter cannot see; they are left to the allow-list.
    filter.set_act_badarch(ScmpAction::Allow).map_err(failed("passing other architectures"))?;
    let socket = ScmpSyscall::from_name("socket").map_err(failed("naming socket"))?;
    let conditions = [
        ScmpArgCompare::new(0, ScmpCompareOp::Equal, nix::libc::AF_NETLINK as u64),
        ScmpArgCompare::new(2, ScmpCompareOp::Equal, nix::libc::NETLINK_AUDIT as u64),
    ];
    filter
        .add_rule_conditional(ScmpAction::Errno(nix::libc::EAFNOSUPPORT), socket, &conditions)
        .map_err(failed("refusing audit sockets"))?;
    Ok(filter)
}

/// Installs both filters on the calling thread, for good: every process
/// it starts inherits them.
pub fn install(capabilities: CapabilitySet) -> Result<(), SeccompError> {
    compile(capabilities)?.install()
}

/// Both filters as the programs the kernel is given. Building them costs
/// libseccomp some 15 ms of CPU: the launcher does it while it prepares
/// the rest of a boot, before the container side forks, rather than in
/// that child between fork and exec, where every boot waited for it.
#[derive(Debug, Clone)]
pub struct Compiled {
    allow: Vec<u8>,
    audit: Vec<u8>,
}

/// Builds both filters for a container with these capabilities.
pub fn compile(capabilities: CapabilitySet) -> Result<Compiled, SeccompError> {
    let allow = export(&allow_list(capabilities)?, "building the allow-list")?;
    let audit = export(&no_audit()?, "building the audit filter")?;
    Ok(Compiled { allow, audit })
}

/// The BPF program of `filter`, as libseccomp would load it. Through a
/// memfd: the in-memory export needs libseccomp 2.6, Debian 12 has 2.5.
fn export(filter: &ScmpFilterContext, step: &'static str) -> Result<Vec<u8>, SeccompError> {
    use std::io::{Read, Seek};
    let io = |source| SeccompError::Load { step, source };
    let mut file = std::fs::File::from(
        rustix::fs::memfd_create("wharf-seccomp", rustix::fs::MemfdFlags::CLOEXEC).map_err(|e| io(e.into()))?,
    );
    filter.export_bpf(&file).map_err(failed(step))?;
    let mut program = Vec::new();
    file.rewind().and_then(|_| file.read_to_end(&mut program)).map_err(io)?;
    Ok(program)
}

impl Compiled {
    /// Both programs in one buffer (the allow-list's length, 8 bytes in
    /// native order, then the allow-list and the audit filter), to pass
    /// them from the process that built them.
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut bytes = (self.allow.len() as u64).to_ne_bytes().to_vec();
        bytes.extend_from_slice(&self.allow);
        bytes.extend_from_slice(&self.audit);
        bytes
    }

    /// What [`Compiled::to_bytes`] made; `None` for anything else.
    pub fn from_bytes(bytes: &[u8]) -> Option<Compiled> {
        let (length, rest) = bytes.split_first_chunk::<8>()?;
        let length = usize::try_from(u64::from_ne_bytes(*length)).ok()?;
        if length > rest.len() {
            return None;
        }
        let (allow, audit) = rest.split_at(length);
        Some(Compiled { allow: allow.to_vec(), audit: audit.to_vec() })
    }

    /// Loads both programs on the calling thread, in the order libseccomp
    /// would (the allow-list first), with the flags it would use for them
    /// (none: no thread sync, no logging).
    pub fn install(&self) -> Result<(), SeccompError> {
        load(&self.allow).map_err(|source| SeccompError::Load { step: "loading the allow-list", source })?;
        load(&self.audit).map_err(|source| SeccompError::Load { step: "loading the audit filter", source })
    }
}

/// seccomp(SECCOMP_SET_MODE_FILTER, 0, program): `program` is what
/// libseccomp exported, an array of `struct sock_filter`.
fn load(program: &[u8]) -> std::io::Result<()> {
    use nix::libc::{SECCOMP_SET_MODE_FILTER, SYS_seccomp, c_ushort, sock_filter, sock_fprog, syscall};
    let size = std::mem::size_of::<sock_filter>();
    if program.is_empty() || !program.len().is_multiple_of(size) {
        return Err(std::io::Error::other(format!("a program of {} bytes is no BPF program", program.len())));
    }
    let filters: Vec<sock_filter> = program
        .chunks_exact(size)
        .map(|b| sock_filter {
            code: u16::from_ne_bytes([b[0], b[1]]),
            jt: b[2],
            jf: b[3],
            k: u32::from_ne_bytes([b[4], b[5], b[6], b[7]]),
        })
        .collect();
    let len = c_ushort::try_from(filters.len()).map_err(|_| std::io::Error::other("the program is too long"))?;
    let prog = sock_fprog { len, filter: filters.as_ptr().cast_mut() };
    // SAFETY: `prog` points at `len` initialised sock_filter entries in
    // `filters`, which outlives the call; the kernel copies the program
    // and keeps no pointer to our memory.
    #[allow(unsafe_code)]
    let result = unsafe { syscall(SYS_seccomp, SECCOMP_SET_MODE_FILTER, 0, &prog as *const sock_fprog) };
    if result < 0 { Err(std::io::Error::last_os_error()) } else { Ok(()) }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_list_follows_the_capabilities() {
        let default = allowed(crate::machine::capability::DEFAULT);
        for call in
            ["execve", "openat", "mount", "ioctl", "reboot", "ptrace", "sethostname", "keyctl", "setsid", "umask"]
        {
            assert!(default.contains(call), "{call} should be allowed");
        }
        for call in [
            "kexec_load",
            "open_by_handle_at",
            "perf_event_open",
            "quotactl",
            "fanotify_init",
            "swapon",
            "clock_settime",
            "init_module",
            "syslog",
            "bpf",
            "iopl",
            "mlock",
            "acct",
        ] {
            assert!(!default.contains(call), "{call} should not be allowed");
        }
        let with_time = allowed(crate::machine::capability::DEFAULT | CapabilitySet::SYS_TIME);
        assert!(with_time.contains("clock_settime"));
        let without_boot = allowed(crate::machine::capability::DEFAULT - CapabilitySet::SYS_BOOT);
        assert!(!without_boot.contains("reboot"));
    }

    #[test]
    fn both_filters_build() {
        allow_list(crate::machine::capability::DEFAULT).unwrap();
        no_audit().unwrap();
    }

    #[test]
    fn built_programs_survive_the_pipe_and_garbage_does_not_load() {
        let compiled = compile(crate::machine::capability::DEFAULT).unwrap();
        let size = std::mem::size_of::<nix::libc::sock_filter>();
        assert!(!compiled.allow.is_empty() && compiled.allow.len().is_multiple_of(size));
        assert!(!compiled.audit.is_empty() && compiled.audit.len().is_multiple_of(size));
        let back = Compiled::from_bytes(&compiled.to_bytes()).expect("its own bytes");
        assert_eq!((back.allow, back.audit), (compiled.allow.clone(), compiled.audit.clone()));
        assert!(Compiled::from_bytes(&[1, 2, 3]).is_none());
        assert!(Compiled::from_bytes(&u64::MAX.to_ne_bytes()).is_none());
        // Refused before the kernel is asked: nothing is loaded here.
        assert!(load(&[]).is_err());
        assert!(load(&compiled.allow[..size - 1]).is_err());
    }

    /// What the child checks, once its filter is in place: the exit status
    /// says which check failed (0: none).
    const CHILD: &str = "WHARF_SECCOMP_TEST_CHILD";

    /// The filter is loaded in a child process of its own (this test binary,
    /// run again for [`filtered_child`] alone), never in the test runner,
    /// whose other threads would then be filtered too. Loading it without
    /// no_new_privs needs root, as the launcher is.
    #[test]
    fn filtered_calls_fail_with_their_errno() {
        if !nix::unistd::Uid::effective().is_root() {
            panic!("this test loads a seccomp filter without no_new_privs and must run as root");
        }
        let output = std::process::Command::new(std::env::current_exe().unwrap())
            .args(["--exact", "machine::seccomp::tests::filtered_child", "--nocapture", "--test-threads=1"])
            .env(CHILD, "1")
            .output()
            .unwrap();
        let stdout = String::from_utf8_lossy(&output.stdout);
        assert!(output.status.success(), "{stdout}{}", String::from_utf8_lossy(&output.stderr));
        assert!(stdout.contains("filter checks passed"), "the child did not run its checks: {stdout}");
    }

    /// The child's side of [`filtered_calls_fail_with_their_errno`]; does
    /// nothing unless started by it.
    #[test]
    fn filtered_child() {
        if std::env::var_os(CHILD).is_none() {
            return;
        }
        use nix::errno::Errno;
        let syscall = |number: nix::libc::c_long, a: nix::libc::c_long, b: nix::libc::c_long, c: nix::libc::c_long| {
            // SAFETY: only calls whose arguments are integers (no pointer
            // is passed), so no memory of ours is touched.
            #[allow(unsafe_code)]
            let result = unsafe { nix::libc::syscall(number, a, b, c) };
            if result < 0 { Err(Errno::last()) } else { Ok(result) }
        };
        install(crate::machine::capability::DEFAULT).unwrap();
        // Allowed: getpid works.
        assert_eq!(syscall(nix::libc::SYS_getpid, 0, 0, 0).unwrap(), i64::from(std::process::id()));
        // Known but denied (CAP_SYSLOG is not kept): EPERM. SYSLOG_ACTION_SIZE_BUFFER.
        assert_eq!(syscall(nix::libc::SYS_syslog, 10, 0, 0), Err(Errno::EPERM));
        // Never allowed: EPERM.
        assert_eq!(syscall(nix::libc::SYS_perf_event_open, 0, 0, -1), Err(Errno::EPERM));
        // A number no kernel has given out yet: ENOSYS.
        assert_eq!(syscall(1000, 0, 0, 0), Err(Errno::ENOSYS));
        // Audit netlink sockets: EAFNOSUPPORT; other netlink sockets work.
        let audit = syscall(
            nix::libc::SYS_socket,
            nix::libc::AF_NETLINK.into(),
            nix::libc::SOCK_RAW.into(),
            nix::libc::NETLINK_AUDIT.into(),
        );
        assert_eq!(audit, Err(Errno::EAFNOSUPPORT));
        let route = syscall(
            nix::libc::SYS_socket,
            nix::libc::AF_NETLINK.into(),
            nix::libc::SOCK_RAW.into(),
            nix::libc::NETLINK_ROUTE.into(),
        );
        assert!(route.is_ok(), "{route:?}");
        // The filter left no_new_privs alone.
        assert_eq!(
            std::fs::read_to_string("/proc/self/status")
                .unwrap()
                .lines()
                .find(|l| l.starts_with("NoNewPrivs:"))
                .map(|l| l.split_whitespace().nth(1) == Some("0")),
            Some(true)
        );
        println!("filter checks passed");
    }
}
