//! The kernel calls the launcher needs that no safe wrapper offers:
//! `fork` (nix marks it unsafe because the child of a multi-threaded
//! process may only do async-signal-safe work) and `mount_setattr` (no
//! crate wraps it: rustix lists it as not implemented), used to idmap the
//! image and to make it nodev.
//!
//! Everything else the launcher does goes through nix and rustix.

// The crate denies unsafe code; this module is the launcher's only
// exception, and each block says why it is sound.
#![allow(unsafe_code)]

use std::os::fd::{AsFd, AsRawFd};

use nix::errno::Errno;
use nix::unistd::{ForkResult, Pid};

/// Which side of a fork this is.
#[derive(Debug)]
pub(crate) enum Forked {
    Parent(Pid),
    Child,
}

/// Forks. Sound only while the process is single-threaded: the launcher
/// forks its helpers and the container before it opens the D-Bus
/// connection (zbus's executor is its first thread), which
/// [`assert_single_threaded`] checks.
pub(crate) fn fork() -> nix::Result<Forked> {
    assert_single_threaded();
    // SAFETY: the process has exactly one thread (checked above), so the
    // child inherits no lock held by another thread and may allocate and
    // run ordinary Rust code until it execs or exits.
    match unsafe { nix::unistd::fork() }? {
        ForkResult::Parent { child } => Ok(Forked::Parent(child)),
        ForkResult::Child => Ok(Forked::Child),
    }
}

/// Panics if another thread exists: forking then would be unsound.
fn assert_single_threaded() {
    let threads = std::fs::read_dir("/proc/self/task").map(|dir| dir.count()).unwrap_or(1);
    assert_eq!(threads, 1, "the launcher must fork while it has a single thread");
}

/// `MOUNT_ATTR_IDMAP` from linux/mount.h.
const MOUNT_ATTR_IDMAP: u64 = 0x0010_0000;
/// `AT_RECURSIVE` from linux/fcntl.h.
const AT_RECURSIVE: u32 = 0x8000;

/// `struct mount_attr` from linux/mount.h (MOUNT_ATTR_SIZE_VER0).
#[repr(C)]
struct MountAttr {
    attr_set: u64,
    attr_clr: u64,
    propagation: u64,
    userns_fd: u64,
}

/// `MS_PRIVATE` from linux/mount.h.
const MS_PRIVATE: u64 = 1 << 18;

/// Makes the detached mount tree `tree` (from `open_tree(OPEN_TREE_CLONE)`)
/// idmapped with the UID/GID mapping of the user namespace `userns`, and
/// private, recursively. Private because a clone of a shared mount joins its
/// peer group: whatever is later mounted on the tree would propagate back to
/// the host.
pub(crate) fn idmap_tree(tree: impl AsFd, userns: impl AsFd) -> nix::Result<()> {
    set_tree_attributes(tree, 0, Some(userns.as_fd()))
}

/// Sets `attr_set` (MOUNT_ATTR_* bits) on the detached tree `tree` and
/// every mount below it, makes them private (see [`idmap_tree`]), and
/// idmaps them with `userns` when given.
pub(crate) fn set_tree_attributes(
    tree: impl AsFd,
    attr_set: u64,
    userns: Option<std::os::fd::BorrowedFd<'_>>,
) -> nix::Result<()> {
    let attr = MountAttr {
        attr_set: attr_set | if userns.is_some() { MOUNT_ATTR_IDMAP } else { 0 },
        attr_clr: 0,
        propagation: MS_PRIVATE,
        userns_fd: userns.map_or(0, |fd| fd.as_raw_fd() as u64),
    };
    let flags = nix::libc::AT_EMPTY_PATH as u32 | AT_RECURSIVE;
    // SAFETY: mount_setattr reads `size_of::<MountAttr>()` bytes from a live,
    // properly laid out struct and an empty NUL-terminated path; the
    // descriptors are borrowed for the duration of the call.
    let result = unsafe {
        nix::libc::syscall(
            nix::libc::SYS_mount_setattr,
            tree.as_fd().as_raw_fd(),
            c"".as_ptr(),
            flags,
            &attr as *const MountAttr,
            std::mem::size_of::<MountAttr>(),
        )
    };
    Errno::result(result).map(drop)
}

/// `MOUNT_ATTR_NODEV` from linux/mount.h.
const MOUNT_ATTR_NODEV: u64 = 0x0000_0004;

/// Sets nodev on the mount at `path` and every mount below it, keeping
/// their other flags (read-only stays read-only), which a remount with
/// mount(2) cannot do for a whole tree at once.
pub(crate) fn forbid_devices(path: &std::path::Path) -> nix::Result<()> {
    let attr = MountAttr { attr_set: MOUNT_ATTR_NODEV, attr_clr: 0, propagation: 0, userns_fd: 0 };
    let path =
        std::ffi::CString::new(std::os::unix::ffi::OsStrExt::as_bytes(path.as_os_str())).map_err(|_| Errno::EINVAL)?;
    // SAFETY: mount_setattr reads `size_of::<MountAttr>()` bytes from a live,
    // properly laid out struct and a NUL-terminated path that outlives the
    // call; AT_FDCWD is not a descriptor of ours.
    let result = unsafe {
        nix::libc::syscall(
            nix::libc::SYS_mount_setattr,
            nix::libc::AT_FDCWD,
            path.as_ptr(),
            AT_RECURSIVE,
            &attr as *const MountAttr,
            std::mem::size_of::<MountAttr>(),
        )
    };
    Errno::result(result).map(drop)
}

/// Sends signal number `signal` to `pid`. nix's `kill` only takes the
/// named signals; systemd's halt, poweroff and reboot requests are
/// realtime signals (SIGRTMIN+3, +4, ...).
pub(crate) fn send_signal(pid: Pid, signal: i32) -> nix::Result<()> {
    // SAFETY: kill(2) takes two integers and touches no memory of ours.
    Errno::result(unsafe { nix::libc::kill(pid.as_raw(), signal) }).map(drop)
}

/// SIGRTMIN+`n` as the kernel numbers it (glibc reserves the first few
/// realtime signals, so its SIGRTMIN() is not the kernel's 32; systemd
/// counts from the libc value, and so must we).
pub(crate) fn sigrtmin_plus(n: i32) -> i32 {
    nix::libc::SIGRTMIN() + n
}

/// Puts SIGPIPE back to its default action. Rust's runtime ignores it, and
/// an ignored signal stays ignored across exec: the container's init must
/// start with the dispositions a kernel-started init has.
pub(crate) fn default_sigpipe() -> nix::Result<()> {
    use nix::sys::signal::{SaFlags, SigAction, SigHandler, SigSet, Signal, sigaction};
    let default = SigAction::new(SigHandler::SigDfl, SaFlags::empty(), SigSet::empty());
    // SAFETY: installing SIG_DFL runs no handler code, so there is no
    // async-signal-safety requirement to meet.
    unsafe { sigaction(Signal::SIGPIPE, &default) }.map(drop)
}

/// Drops from this thread's capability bounding set every capability not in
/// `keep`. On failure: the capability's number and the error.
pub(crate) fn bound_capabilities(keep: rustix::thread::CapabilitySet) -> Result<(), (u32, rustix::io::Errno)> {
    let last: u32 = std::fs::read_to_string("/proc/sys/kernel/cap_last_cap")
        .ok()
        .and_then(|text| text.trim().parse().ok())
        .unwrap_or(40);
    for n in 0..=last.min(63) {
        let capability = rustix::thread::CapabilitySet::from_bits_retain(1 << n);
        if !keep.contains(capability) {
            rustix::thread::remove_capability_from_bounding_set(capability).map_err(|e| (n, e))?;
        }
    }
    Ok(())
}
