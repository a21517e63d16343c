//! Loop devices: an image file, or one extent of it, as a block device the
//! kernel can mount. Both users — the erofs fallback reader (`mount`) and
//! the machine launcher's raw images (`machine::raw`) — attach them here,
//! so they agree on the parts that matter:
//!
//! - **autoclear**, always: the kernel detaches the device once its last
//!   user is gone, so a wharf process that dies leaves no device behind;
//! - **read-only** when asked, which the kernel takes from the backing
//!   descriptor's access mode only (`LOOP_SET_STATUS64` cannot set it), so
//!   a writable descriptor is reopened read-only first;
//! - **an extent** (offset and size limit), for a GPT partition;
//! - **EBUSY retry**: another process may take the device
//!   `LOOP_CTL_GET_FREE` offered before we attach it; then we ask again.

use std::fs::File;
use std::io;
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use loopdev::LoopControl;

/// How a loop device is attached.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct LoopOptions {
    pub read_only: bool,
    /// The part of the file the device shows (offset, size in bytes); the
    /// whole file when `None`.
    pub extent: Option<(u64, u64)>,
}

/// How many free devices are asked for before giving up on EBUSY.
const ATTEMPTS: usize = 16;

/// An attached loop device. Dropping it detaches it now if nothing else
/// uses it; otherwise the kernel does once the last user (a mount) is gone.
pub struct LoopDevice {
    device: Option<loopdev::LoopDevice>,
    path: PathBuf,
}

impl LoopDevice {
    /// Attaches `backing` to a free loop device.
    pub fn attach(backing: &File, options: LoopOptions) -> io::Result<LoopDevice> {
        let reopened;
        let backing = if options.read_only && is_writable(backing)? {
            reopened = File::open(format!("/proc/self/fd/{}", backing.as_raw_fd()))?;
            &reopened
        } else {
            backing
        };
        let control = LoopControl::open()?;
        let mut last = None;
        for _ in 0..ATTEMPTS {
            let device = control.next_free()?;
            let mut with = device.with().read_only(options.read_only).autoclear(true);
            if let Some((offset, size)) = options.extent {
                with = with.offset(offset).size_limit(size);
            }
            match with.attach_fd(backing.as_raw_fd()) {
                Ok(()) => {
                    // A guard first, so that a failure from here on detaches.
                    let path = device.path().unwrap_or_default();
                    let attached = LoopDevice { device: Some(device), path };
                    if attached.path.as_os_str().is_empty() {
                        return Err(io::Error::other("the attached loop device has no path in /proc/self/fd"));
                    }
                    return Ok(attached);
                }
                Err(e) if e.raw_os_error() == Some(nix::libc::EBUSY) => last = Some(e),
                Err(e) => return Err(e),
            }
        }
        Err(last.unwrap_or_else(|| io::Error::other("no free loop device")))
    }

    /// The device node, `/dev/loopN`.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Lets go of the device and waits, up to `timeout`, until the kernel
    /// has detached it: for a device whose last user is a mount in another
    /// mount namespace, which the kernel releases asynchronously once that
    /// namespace is gone. Returns whether it is detached.
    pub fn release_and_wait(mut self, timeout: Duration) -> bool {
        self.release();
        let name = self.path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
        // The `loop` attributes exist while a file is attached.
        let backing = Path::new("/sys/block").join(name).join("loop/backing_file");
        let deadline = Instant::now() + timeout;
        while backing.exists() {
            if Instant::now() >= deadline {
                return false;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        true
    }

    /// Detaches (with other users: marks for autoclear, which the device
    /// is already) and closes our descriptor.
    fn release(&mut self) {
        if let Some(device) = self.device.take()
            && let Err(e) = device.detach()
            && e.raw_os_error() != Some(nix::libc::ENXIO)
        {
            tracing::warn!(device = %self.path.display(), "cannot detach the loop device: {e}");
        }
    }
}

impl Drop for LoopDevice {
    fn drop(&mut self) {
        self.release();
    }
}

impl std::fmt::Debug for LoopDevice {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LoopDevice").field("path", &self.path).finish()
    }
}

/// Whether `file` is open for writing.
fn is_writable(file: &File) -> io::Result<bool> {
    let flags = rustix::fs::fcntl_getfl(file)?;
    Ok(flags & rustix::fs::OFlags::RWMODE != rustix::fs::OFlags::RDONLY)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn access_modes_are_read_from_the_descriptor() {
        let path = std::env::temp_dir().join(format!("wharf-loop-mode-{}", std::process::id()));
        let writable = File::create(&path).unwrap();
        assert!(is_writable(&writable).unwrap());
        assert!(!is_writable(&File::open(&path).unwrap()).unwrap());
        std::fs::remove_file(&path).unwrap();
    }
}
