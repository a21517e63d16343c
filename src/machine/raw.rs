//! Raw file system images for the launcher (`--image`): recognised by their
//! magic, attached to a loop device and mounted as a detached mount (the
//! new mount API), which the container side then moves onto its root.
//!
//! squashfs and erofs are read-only by nature; ext4 is mounted writable
//! unless the image file is marked read-only (no write permission bits, as
//! `machine read-only` marks it). Of a GPT disk image, the root partition
//! for this architecture (Discoverable Partitions Specification) is
//! attached alone, through a loop device limited to its extent; its GPT
//! read-only flag is honoured as well.
//!
//! The loop device ([`crate::image::loop_device`]) is attached with
//! autoclear, so the kernel detaches it when the last mount of it is gone;
//! dropping a [`RawImage`] waits for that (the container's mount namespace
//! goes asynchronously), so the launcher never leaves a loop device behind.

use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::image::ImageKind;
use crate::image::loop_device::{LoopDevice, LoopOptions};

#[derive(Debug, thiserror::Error)]
pub enum RawError {
    #[error(transparent)]
    Image(#[from] crate::image::Error),
    #[error("{} is a {kind} image; --image takes squashfs, erofs or ext4 file systems, or GPT disks", .path.display())]
    Unsupported { path: PathBuf, kind: ImageKind },
    #[error("{}: the GPT disk has no root partition for {architecture} (a /usr partition alone does not boot)", .path.display())]
    NoRootPartition { path: PathBuf, architecture: &'static str },
    #[error("{what} for {}: {source}", .path.display())]
    Io {
        path: PathBuf,
        what: &'static str,
        #[source]
        source: std::io::Error,
    },
}

/// A raw image attached and mounted (detached from any mount namespace).
#[derive(Debug)]
pub struct RawImage {
    pub path: PathBuf,
    pub kind: ImageKind,
    pub read_only: bool,
    mount: Option<OwnedFd>,
    loop_device: Option<LoopDevice>,
}

/// The file system type the kernel mounts a kind of raw image as.
pub fn fs_type(kind: ImageKind) -> Option<&'static str> {
    match kind {
        ImageKind::Squashfs => Some("squashfs"),
        ImageKind::Erofs => Some("erofs"),
        ImageKind::Ext4 => Some("ext4"),
        ImageKind::Directory | ImageKind::Gpt | ImageKind::Xz => None,
    }
}

/// Whether a kind of image can only be mounted read-only.
pub fn always_read_only(kind: ImageKind) -> bool {
    matches!(kind, ImageKind::Squashfs | ImageKind::Erofs)
}

impl RawImage {
    /// Attaches `path` to a free loop device and mounts it, detached.
    pub fn open(path: &Path) -> Result<RawImage, RawError> {
        let fail = |what: &'static str| {
            let path = path.to_path_buf();
            move |source: std::io::Error| RawError::Io { path, what, source }
        };
        let kind = ImageKind::detect(path)?;
        let mut checked = None;
        let (fs_kind, extent, marked_read_only) = if kind == ImageKind::Gpt {
            let file = std::sync::Arc::new(std::fs::File::open(path).map_err(fail("opening the image"))?);
            let layout = crate::image::gpt::layout(path, &file)?;
            if !layout.has_root() {
                let architecture = crate::image::gpt::host_architecture();
                return Err(RawError::NoRootPartition { path: path.to_path_buf(), architecture });
            }
            // A verity-protected root is checked whole, through the
            // descriptor the loop device is then attached with, so that
            // what boots is what was checked (short of a write to the file
            // while it runs, which only dm-verity would catch: this kernel
            // may have none), and is read-only, as verity is.
            let verity = crate::image::verity::find(path, &file, &layout, None)?;
            if let Some(protected) = &verity {
                crate::image::verity::verify(path, &file, protected)?;
                tracing::info!(
                    image = %path.display(),
                    root_hash = protected.root_hash_hex(),
                    source = %protected.source,
                    "the root partition matches its verity hash"
                );
                checked = Some(file);
            }
            let root = layout.chosen();
            (layout.fs, Some((root.offset, root.size)), layout.read_only || verity.is_some())
        } else {
            (kind, None, false)
        };
        let fstype = fs_type(fs_kind).ok_or_else(|| RawError::Unsupported { path: path.to_path_buf(), kind })?;
        let meta = std::fs::metadata(path).map_err(fail("reading the image"))?;
        let read_only =
            always_read_only(fs_kind) || marked_read_only || crate::image::readonly::is_read_only(path, &meta);

        let backing = match checked {
            Some(file) => file,
            None => std::sync::Arc::new(
                std::fs::OpenOptions::new()
                    .read(true)
                    .write(!read_only)
                    .open(path)
                    .map_err(fail("opening the image"))?,
            ),
        };
        let options = LoopOptions { read_only, extent };
        let loop_device = LoopDevice::attach(&backing, options).map_err(fail("attaching a loop device"))?;
        let mount = mount_detached(fstype, loop_device.path(), read_only).map_err(fail("mounting"))?;
        Ok(RawImage { path: path.to_path_buf(), kind, read_only, mount: Some(mount), loop_device: Some(loop_device) })
    }

    /// The detached mount of the image's file system.
    pub fn mount(&self) -> &OwnedFd {
        self.mount.as_ref().expect("mounted until dropped")
    }

    /// A path through which the mounted tree can be read now.
    pub fn view(&self) -> PathBuf {
        PathBuf::from(format!("/proc/self/fd/{}", std::os::fd::AsRawFd::as_raw_fd(self.mount())))
    }
}

fn mount_detached(fstype: &str, device: &Path, read_only: bool) -> std::io::Result<OwnedFd> {
    use rustix::mount::{FsMountFlags, FsOpenFlags, MountAttrFlags, fsconfig_create, fsconfig_set_flag};
    use rustix::mount::{fsconfig_set_string, fsmount, fsopen};
    let context = fsopen(fstype, FsOpenFlags::FSOPEN_CLOEXEC)?;
    fsconfig_set_string(&context, "source", device)?;
    if read_only {
        fsconfig_set_flag(&context, "ro")?;
    }
    fsconfig_create(&context)?;
    let attributes = if read_only { MountAttrFlags::MOUNT_ATTR_RDONLY } else { MountAttrFlags::empty() };
    Ok(fsmount(&context, FsMountFlags::FSMOUNT_CLOEXEC, attributes)?)
}

/// How long the kernel gets to detach an autoclear loop device once its
/// last user is gone (it does so asynchronously).
const DETACH_WAIT: Duration = Duration::from_secs(5);

impl Drop for RawImage {
    fn drop(&mut self) {
        // Our mount first, so that the loop device has no user of ours left.
        drop(self.mount.take());
        if let Some(device) = self.loop_device.take() {
            let name = device.path().to_path_buf();
            if !device.release_and_wait(DETACH_WAIT) {
                tracing::warn!("loop device {} of {} is still attached", name.display(), self.path.display());
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn file_system_types() {
        assert_eq!(fs_type(ImageKind::Squashfs), Some("squashfs"));
        assert_eq!(fs_type(ImageKind::Ext4), Some("ext4"));
        assert_eq!(fs_type(ImageKind::Gpt), None);
        assert_eq!(fs_type(ImageKind::Xz), None);
        assert!(always_read_only(ImageKind::Squashfs) && !always_read_only(ImageKind::Ext4));
    }
}
