//! The fallback for file systems wharf cannot read in user space (erofs):
//! the kernel reads them, through a read-only loop device and a read-only
//! `nodev,nosuid,noexec` mount, and the existing [`DirTree`] reads the mount.
//!
//! Design: a dedicated thread ([`ServedTree`]) unshares its mount namespace
//! (a thread may: `CLONE_NEWNS` implies only `CLONE_FS`), makes every mount
//! in it a slave so nothing it mounts propagates back, mounts the image on a
//! temporary directory and answers all reads itself until the tree is
//! dropped; then, on that thread, the tree's descriptor is closed, the file
//! system unmounted, the loop device detached and the directory removed, in
//! that order, and only then does the drop return. No other process ever
//! sees the mount, and if wharf dies the namespace dies with it (the loop
//! device is set to autoclear, so the kernel detaches it too). Every step is
//! a guard, so a failure half-way undoes exactly what was done.
//!
//! This needs root (CAP_SYS_ADMIN); without it the error says so.

use std::io;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use nix::mount::{MntFlags, MsFlags};
use nix::sched::CloneFlags;

use super::dir::DirTree;
use super::loop_device::{LoopDevice, LoopOptions};
use super::served::{LocalTree, ServedTree};
use super::slice::FileSlice;
use super::tree::{EntryType, Tree, TreeError};
use super::{Error, ImageKind, Result};

pub const ACCESS: &str = "erofs, kernel mount of a read-only loop device in a private mount namespace";

/// Where mount points are made: wharfd's runtime directory (writable under
/// its `ProtectSystem=strict`), else the temporary directory.
fn mount_base() -> PathBuf {
    let run = Path::new("/run/wharf");
    if run.is_dir() { run.to_path_buf() } else { std::env::temp_dir() }
}

/// Mounts the file system in `slice` (of kind `kind`) and serves its tree
/// from a private mount namespace; see the module documentation.
pub fn open(image: &Path, kind: ImageKind, slice: FileSlice) -> Result<Box<dyn Tree>> {
    let fstype = match kind {
        ImageKind::Erofs => "erofs",
        ImageKind::Squashfs => "squashfs",
        ImageKind::Ext4 => "ext4",
        other => return Err(Error::Unsupported { image: image.to_path_buf(), kind: other }),
    };
    let owned = image.to_path_buf();
    let base = mount_base();
    let served = ServedTree::spawn(image, kind, ACCESS, move || Mounted::new(&owned, kind, fstype, &slice, &base))?;
    tracing::debug!(image = %image.display(), access = ACCESS, "reading through a mount");
    Ok(Box::new(served))
}

/// A mounted image. Fields drop in order: the tree's descriptor, the mount,
/// the loop device, the directory.
struct Mounted {
    tree: DirTree,
    _mount: Mount,
    _loop: LoopDevice,
    _dir: MountDir,
}

impl Mounted {
    fn new(image: &Path, kind: ImageKind, fstype: &str, slice: &FileSlice, base: &Path) -> Result<Mounted> {
        let fail = |step: &'static str| {
            let image = image.to_path_buf();
            move |source: io::Error| match source.raw_os_error() {
                Some(nix::libc::EPERM | nix::libc::EACCES) => Error::NeedsPrivilege { image, kind },
                _ => Error::Mount { image, kind, step, source },
            }
        };
        nix::sched::unshare(CloneFlags::CLONE_NEWNS).map_err(|e| fail("unsharing the mount namespace")(e.into()))?;
        nix::mount::mount(None::<&str>, "/", None::<&str>, MsFlags::MS_REC | MsFlags::MS_SLAVE, None::<&str>)
            .map_err(|e| fail("making the private mount namespace a slave")(e.into()))?;
        let dir = MountDir::create(base).map_err(fail("creating the mount point"))?;
        let options = LoopOptions { read_only: true, extent: Some((slice.offset(), slice.len())) };
        let device = LoopDevice::attach(slice.file(), options).map_err(fail("attaching a loop device"))?;
        let mount = Mount::new(device.path(), &dir.path, fstype).map_err(|source| match source.raw_os_error() {
            // What the kernel says when the file system does not check out.
            Some(nix::libc::EBADMSG | nix::libc::EUCLEAN | nix::libc::EINVAL) => Error::Corrupt {
                image: image.to_path_buf(),
                kind,
                reason: format!("the kernel refused to mount it: {source}"),
            },
            _ => fail("mounting the loop device")(source),
        })?;
        let tree = DirTree::open(&dir.path).map_err(fail("opening the mount"))?;
        tracing::debug!(image = %image.display(), device = %device.path().display(), at = %dir.path.display(), "mounted");
        Ok(Mounted { tree, _mount: mount, _loop: device, _dir: dir })
    }
}

impl LocalTree for Mounted {
    fn entry_type(&mut self, path: &str) -> Result<Option<EntryType>, TreeError> {
        self.tree.entry_type(path)
    }
    fn read_link(&mut self, path: &str) -> Result<String, TreeError> {
        self.tree.read_link(path)
    }
    fn read_file(&mut self, path: &str, limit: u64) -> Result<Vec<u8>, TreeError> {
        self.tree.read_file(path, limit)
    }
    fn read_dir(&mut self, path: &str) -> Result<Vec<(String, EntryType)>, TreeError> {
        self.tree.read_dir(path)
    }
}

/// An empty directory of our own, removed when dropped.
#[derive(Debug)]
struct MountDir {
    path: PathBuf,
}

impl MountDir {
    fn create(base: &Path) -> io::Result<MountDir> {
        use std::os::unix::fs::DirBuilderExt;
        static SERIAL: AtomicU64 = AtomicU64::new(0);
        loop {
            let name = format!(".mount-{}-{}", std::process::id(), SERIAL.fetch_add(1, Ordering::Relaxed));
            let path = base.join(name);
            match std::fs::DirBuilder::new().mode(0o700).create(&path) {
                Ok(()) => return Ok(MountDir { path }),
                Err(e) if e.kind() == io::ErrorKind::AlreadyExists => continue,
                Err(e) => return Err(e),
            }
        }
    }
}

impl Drop for MountDir {
    fn drop(&mut self) {
        if let Err(e) = std::fs::remove_dir(&self.path) {
            tracing::warn!(path = %self.path.display(), "cannot remove the mount point: {e}");
        }
    }
}

/// A read-only mount, unmounted when dropped.
#[derive(Debug)]
struct Mount {
    target: PathBuf,
}

impl Mount {
    fn new(device: &Path, target: &Path, fstype: &str) -> io::Result<Mount> {
        let flags = MsFlags::MS_RDONLY | MsFlags::MS_NODEV | MsFlags::MS_NOSUID | MsFlags::MS_NOEXEC;
        nix::mount::mount(Some(device), target, Some(fstype), flags, None::<&str>)?;
        Ok(Mount { target: target.to_path_buf() })
    }
}

impl Drop for Mount {
    fn drop(&mut self) {
        if let Err(e) = nix::mount::umount2(&self.target, MntFlags::empty()) {
            tracing::warn!(target = %self.target.display(), "cannot unmount ({e}), detaching lazily");
            let _ = nix::mount::umount2(&self.target, MntFlags::MNT_DETACH);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mount_points_are_made_and_removed() {
        let base = std::env::temp_dir().join(format!("wharf-mountdir-{}", std::process::id()));
        std::fs::create_dir_all(&base).unwrap();
        let a = MountDir::create(&base).unwrap();
        let b = MountDir::create(&base).unwrap();
        assert_ne!(a.path, b.path);
        assert!(a.path.is_dir());
        drop(a);
        drop(b);
        assert_eq!(std::fs::read_dir(&base).unwrap().count(), 0);
        std::fs::remove_dir(&base).unwrap();
    }
}
