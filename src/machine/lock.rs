//! Image locks, the same ones systemd-nspawn and systemd-machined take, so
//! that a machine wharf runs is as busy to them as one of theirs, and the
//! other way round.
//!
//! An image is locked twice, as systemd does it: a *local* lock
//! `.#NAME.lck` in the directory holding the image `NAME` (a directory or a
//! raw file), and a *global* one in /run/systemd/nspawn/locks named after
//! what the image is (`inode-DEV:INO` for a directory or file, DEV being the
//! whole st_dev number; `block-MAJOR:MINOR` for a block device), which also
//! catches the same tree reached by another path. Both are open file
//! description locks (`F_OFD_SETLK`, whole file): write locks for exclusive
//! use (a machine on a writable image, remove, rename), read locks for
//! shared use (a machine on a read-only image). They are not flock(2)
//! locks, which Linux keeps apart from fcntl locks and which would
//! therefore conflict with nothing systemd holds.
//!
//! A lock belongs to its open file description, so it goes when the last
//! descriptor of it is closed: when the holder exits in any way, SIGKILL
//! included. An exclusive holder removes the lock file when it lets go.
//!
//! A lock file is opened without following a symlink and never truncated or
//! written, so a planted symlink cannot make wharf create or change a file
//! elsewhere; one that is not a regular file, not root's, open to other
//! users (who could hold it locked and so block every start) or linked
//! elsewhere is refused, naming it.

use std::ffi::OsString;
use std::io;
use std::os::fd::{AsFd, OwnedFd};
use std::path::{Path, PathBuf};

use rustix::fs::{AtFlags, FileType, Mode, OFlags, Stat};

/// Where systemd keeps the global image locks.
pub const GLOBAL_DIR: &str = "/run/systemd/nspawn/locks";

/// How an image is held.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LockMode {
    /// Others may hold it shared too (a read-only image in use).
    Shared,
    /// No one else may hold it (a writable image in use, or being changed).
    Exclusive,
}

#[derive(Debug, thiserror::Error)]
pub enum LockError {
    #[error("image {} is in use by a running machine (lock {} is held)", image.display(), lock.display())]
    Busy { image: PathBuf, lock: PathBuf },
    #[error("image name '{name}' is in use by another operation (lock {} is held)", lock.display())]
    NameBusy { name: String, lock: PathBuf },
    #[error("lock file {} {reason}; refusing to use it", lock.display())]
    Untrusted { lock: PathBuf, reason: String },
    #[error("lock file {}: {source}", lock.display())]
    Io {
        lock: PathBuf,
        #[source]
        source: io::Error,
    },
}

/// The local lock of an image: `.#NAME.lck` beside it.
pub fn local_lock_path(image: &Path) -> Option<PathBuf> {
    let name = image.file_name()?;
    let mut lock = OsString::from(".#");
    lock.push(name);
    lock.push(".lck");
    Some(image.with_file_name(lock))
}

/// The name of an image's global lock in [`GLOBAL_DIR`], from what the
/// image path resolves to; `None` for what systemd locks no other way.
pub fn global_lock_name(stat: &Stat) -> Option<String> {
    match FileType::from_raw_mode(stat.st_mode) {
        FileType::BlockDevice => {
            let dev = stat.st_rdev;
            Some(format!("block-{}:{}", rustix::fs::major(dev), rustix::fs::minor(dev)))
        }
        FileType::Directory | FileType::RegularFile => Some(format!("inode-{}:{}", stat.st_dev, stat.st_ino)),
        _ => None,
    }
}

/// Why a lock file that exists may not be trusted, if it may not.
fn distrust(stat: &Stat) -> Option<String> {
    if FileType::from_raw_mode(stat.st_mode) != FileType::RegularFile {
        return Some("is not a regular file".into());
    }
    if stat.st_uid != 0 {
        return Some(format!("is owned by UID {}, not root", stat.st_uid));
    }
    let mode = stat.st_mode & 0o7777;
    if mode & 0o077 != 0 {
        return Some(format!("can be opened by other users (mode {mode:04o})"));
    }
    if stat.st_nlink > 1 {
        return Some(format!("has {} hard links", stat.st_nlink));
    }
    None
}

/// One held lock file.
#[derive(Debug)]
pub struct LockFile {
    dir: OwnedFd,
    name: OsString,
    path: PathBuf,
    fd: OwnedFd,
    mode: LockMode,
}

impl LockFile {
    pub fn path(&self) -> &Path {
        &self.path
    }
}

/// Whole-file OFD lock (`F_RDLCK`, `F_WRLCK` or `F_UNLCK`), without waiting.
fn ofd_lock(fd: impl AsFd, kind: nix::libc::c_int) -> nix::Result<()> {
    let lock = nix::libc::flock {
        l_type: kind as nix::libc::c_short,
        l_whence: nix::libc::SEEK_SET as nix::libc::c_short,
        l_start: 0,
        l_len: 0,
        l_pid: 0,
    };
    nix::fcntl::fcntl(fd, nix::fcntl::FcntlArg::F_OFD_SETLK(&lock)).map(drop)
}

/// What happened when a lock was tried.
enum Tried {
    Held(LockFile),
    Busy,
    /// The lock file cannot be made: its directory is read-only to us.
    ReadOnly,
}

/// Opens (creating it if need be) and locks `path`, without waiting.
fn try_lock(path: &Path, mode: LockMode) -> Result<Tried, LockError> {
    let io_err = |source: io::Error| LockError::Io { lock: path.to_path_buf(), source };
    let (Some(parent), Some(name)) = (path.parent(), path.file_name()) else {
        return Err(io_err(io::Error::from(io::ErrorKind::InvalidInput)));
    };
    let dir = rustix::fs::open(parent, OFlags::DIRECTORY | OFlags::CLOEXEC | OFlags::PATH, Mode::empty())
        .map_err(|e| io_err(e.into()))?;
    loop {
        // O_NONBLOCK: opening a FIFO planted under the name must not hang.
        let flags =
            OFlags::RDWR | OFlags::CREATE | OFlags::NOFOLLOW | OFlags::CLOEXEC | OFlags::NOCTTY | OFlags::NONBLOCK;
        let fd = match rustix::fs::openat(&dir, name, flags, Mode::from_raw_mode(0o600)) {
            Ok(fd) => fd,
            Err(rustix::io::Errno::LOOP) => {
                return Err(LockError::Untrusted { lock: path.to_path_buf(), reason: "is a symbolic link".into() });
            }
            Err(rustix::io::Errno::ROFS) => return Ok(Tried::ReadOnly),
            Err(e) => return Err(io_err(e.into())),
        };
        let stat = rustix::fs::fstat(&fd).map_err(|e| io_err(e.into()))?;
        if let Some(reason) = distrust(&stat) {
            return Err(LockError::Untrusted { lock: path.to_path_buf(), reason });
        }
        let kind = if mode == LockMode::Exclusive { nix::libc::F_WRLCK } else { nix::libc::F_RDLCK };
        match ofd_lock(&fd, kind) {
            Ok(()) => {}
            Err(nix::errno::Errno::EAGAIN | nix::errno::Errno::EACCES) => return Ok(Tried::Busy),
            Err(e) => return Err(io_err(e.into())),
        }
        // An exclusive holder removes the file as it lets go: a lock taken
        // on a file removed since it was opened protects nothing.
        if rustix::fs::fstat(&fd).map_err(|e| io_err(e.into()))?.st_nlink == 0 {
            continue;
        }
        return Ok(Tried::Held(LockFile { dir, name: name.to_owned(), path: path.to_path_buf(), fd, mode }));
    }
}

impl Drop for LockFile {
    fn drop(&mut self) {
        // The file goes with its last holder, as systemd does: an exclusive
        // one, or a shared one that can become exclusive now.
        let last = self.mode == LockMode::Exclusive || ofd_lock(&self.fd, nix::libc::F_WRLCK).is_ok();
        if !last {
            return;
        }
        // Only if the name still is this file.
        let ours = rustix::fs::fstat(&self.fd).ok();
        let named = rustix::fs::statat(&self.dir, self.name.as_os_str(), AtFlags::SYMLINK_NOFOLLOW).ok();
        if let (Some(ours), Some(named)) = (ours, named)
            && (ours.st_dev, ours.st_ino) == (named.st_dev, named.st_ino)
        {
            let _ = rustix::fs::unlinkat(&self.dir, self.name.as_os_str(), AtFlags::empty());
        }
    }
}

/// Both locks of an image, held until dropped.
#[derive(Debug)]
pub struct ImageLock {
    pub local: Option<LockFile>,
    pub global: Option<LockFile>,
}

/// Makes [`GLOBAL_DIR`] (0700, as systemd does) if it is missing. `false`
/// when it cannot be made where the file system is read-only to us (wharfd
/// started before tmpfiles made it): the local lock then stands alone.
fn global_dir() -> Result<bool, LockError> {
    use std::os::unix::fs::DirBuilderExt;
    match std::fs::DirBuilder::new().recursive(true).mode(0o700).create(GLOBAL_DIR) {
        Ok(()) => Ok(true),
        Err(e) if e.raw_os_error() == Some(nix::libc::EROFS) => {
            tracing::warn!("cannot create {GLOBAL_DIR} ({e}); taking only the image's own lock");
            Ok(false)
        }
        Err(source) => Err(LockError::Io { lock: PathBuf::from(GLOBAL_DIR), source }),
    }
}

/// Locks the image at `image` (absolute) as nspawn and machined do. An
/// image that does not exist gets its local lock only.
pub fn lock_image(image: &Path, mode: LockMode) -> Result<ImageLock, LockError> {
    let busy = |lock: &Path| LockError::Busy { image: image.to_path_buf(), lock: lock.to_path_buf() };
    let global_path = match rustix::fs::stat(image) {
        Ok(stat) => global_lock_name(&stat).map(|name| Path::new(GLOBAL_DIR).join(name)),
        Err(_) => None,
    };
    // A block device is local to the host: its global lock is enough.
    let local = match local_lock_path(image) {
        Some(path) if !image.starts_with("/dev/") => match try_lock(&path, mode)? {
            Tried::Held(lock) => Some(lock),
            Tried::Busy => return Err(busy(&path)),
            // As systemd: a shared lock beside an image on a read-only file
            // system is not needed (nothing there can change it).
            Tried::ReadOnly if mode == LockMode::Shared => None,
            Tried::ReadOnly => {
                let source = io::Error::from_raw_os_error(nix::libc::EROFS);
                return Err(LockError::Io { lock: path, source });
            }
        },
        _ => None,
    };
    let global = match global_path {
        Some(path) if global_dir()? => match try_lock(&path, mode)? {
            Tried::Held(lock) => Some(lock),
            Tried::Busy => return Err(busy(&path)),
            Tried::ReadOnly => {
                tracing::warn!("{GLOBAL_DIR} is read-only here; taking only the image's own lock");
                None
            }
        },
        _ => None,
    };
    Ok(ImageLock { local, global })
}

/// Locks an image name for an operation that creates or renames an image
/// (`name-NAME` in [`GLOBAL_DIR`], as machined's clone and rename do).
pub fn lock_name(name: &str) -> Result<Option<LockFile>, LockError> {
    if name.is_empty() || name.as_bytes().contains(&b'/') || !global_dir()? {
        return Ok(None);
    }
    let path = Path::new(GLOBAL_DIR).join(format!("name-{name}"));
    match try_lock(&path, LockMode::Exclusive)? {
        Tried::Held(lock) => Ok(Some(lock)),
        Tried::Busy => Err(LockError::NameBusy { name: name.to_string(), lock: path }),
        Tried::ReadOnly => Ok(None),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn scratch(tag: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("wharf-lock-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        dir
    }

    #[test]
    fn names_are_systemds() {
        assert_eq!(
            local_lock_path(Path::new("/var/lib/machines/f28")).unwrap(),
            Path::new("/var/lib/machines/.#f28.lck")
        );
        assert_eq!(
            local_lock_path(Path::new("/var/lib/machines/f28.raw")).unwrap(),
            Path::new("/var/lib/machines/.#f28.raw.lck")
        );
        let dir = scratch("names");
        let stat = rustix::fs::stat(&dir).unwrap();
        assert_eq!(global_lock_name(&stat).unwrap(), format!("inode-{}:{}", stat.st_dev, stat.st_ino));
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn an_exclusive_lock_excludes_and_goes_with_its_holder() {
        let dir = scratch("excl");
        let lock_path = dir.join(".#f28.lck");
        let path = lock_path.clone();
        let first = match try_lock(&path, LockMode::Exclusive).unwrap() {
            Tried::Held(lock) => lock,
            _ => panic!("not locked"),
        };
        assert_eq!(rustix::fs::stat(&lock_path).unwrap().st_mode & 0o777, 0o600);
        // OFD locks conflict between open file descriptions, even in one process.
        assert!(matches!(try_lock(&path, LockMode::Exclusive).unwrap(), Tried::Busy));
        assert!(matches!(try_lock(&path, LockMode::Shared).unwrap(), Tried::Busy));
        drop(first);
        assert!(!lock_path.exists(), "the exclusive holder removes its lock file");
        let a = match try_lock(&path, LockMode::Shared).unwrap() {
            Tried::Held(lock) => lock,
            _ => panic!("not locked"),
        };
        let b = match try_lock(&path, LockMode::Shared).unwrap() {
            Tried::Held(lock) => lock,
            _ => panic!("not shared"),
        };
        assert!(matches!(try_lock(&path, LockMode::Exclusive).unwrap(), Tried::Busy));
        drop(a);
        assert!(lock_path.exists(), "still held shared");
        drop(b);
        assert!(!lock_path.exists(), "the last shared holder removes it");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn a_symlink_or_a_loose_file_is_refused_and_left_alone() {
        let dir = scratch("attack");
        let target = dir.join("elsewhere");
        std::os::unix::fs::symlink(&target, dir.join(".#f28.lck")).unwrap();
        let error = try_lock(&dir.join(".#f28.lck"), LockMode::Exclusive).err().unwrap();
        assert!(error.to_string().ends_with(".#f28.lck is a symbolic link; refusing to use it"), "{error}");
        assert!(!target.exists(), "nothing created through the link");

        let loose = dir.join(".#f29.lck");
        std::fs::write(&loose, "keep").unwrap();
        std::fs::set_permissions(&loose, std::os::unix::fs::PermissionsExt::from_mode(0o644)).unwrap();
        let error = try_lock(&loose, LockMode::Exclusive).err().unwrap();
        assert!(error.to_string().contains("can be opened by other users (mode 0644)"), "{error}");
        assert_eq!(std::fs::read_to_string(&loose).unwrap(), "keep", "not truncated");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn files_of_others_are_distrusted() {
        let dir = scratch("owner");
        let mut stat = rustix::fs::stat(&dir).unwrap();
        assert_eq!(distrust(&stat).unwrap(), "is not a regular file");
        std::fs::write(dir.join("f"), "").unwrap();
        stat = rustix::fs::stat(dir.join("f")).unwrap();
        stat.st_mode = (stat.st_mode & !0o7777) | 0o600;
        stat.st_uid = 1000;
        assert_eq!(distrust(&stat).unwrap(), "is owned by UID 1000, not root");
        stat.st_uid = 0;
        stat.st_nlink = 2;
        assert_eq!(distrust(&stat).unwrap(), "has 2 hard links");
        stat.st_nlink = 1;
        assert_eq!(distrust(&stat), None);
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
