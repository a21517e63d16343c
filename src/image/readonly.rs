//! Read-only images, the way portablectl and machinectl mark them: a file
//! image loses its write permission bits, a directory image gets the
//! immutable inode flag (`chattr +i`), which even root must clear to write.

use std::fs::{File, Metadata};
use std::os::unix::fs::PermissionsExt;
use std::path::Path;

use rustix::fs::{IFlags, ioctl_getflags, ioctl_setflags};

use super::{Error, Result};

const WRITE_BITS: u32 = 0o222;

pub fn is_read_only(path: &Path, meta: &Metadata) -> bool {
    if meta.is_dir() {
        File::open(path)
            .ok()
            .and_then(|dir| ioctl_getflags(&dir).ok())
            .is_some_and(|flags| flags.contains(IFlags::IMMUTABLE))
    } else {
        meta.permissions().mode() & WRITE_BITS == 0
    }
}

/// Marks an image read-only or writable again.
pub fn set_read_only(path: &Path, read_only: bool) -> Result<()> {
    let meta = std::fs::metadata(path).map_err(Error::io(path))?;
    if meta.is_dir() {
        let dir = File::open(path).map_err(Error::io(path))?;
        let mut flags = ioctl_getflags(&dir).map_err(|e| Error::io(path)(e.into()))?;
        flags.set(IFlags::IMMUTABLE, read_only);
        ioctl_setflags(&dir, flags).map_err(|e| Error::io(path)(e.into()))
    } else {
        let mode = meta.permissions().mode();
        let mode = if read_only {
            mode & !WRITE_BITS
        } else {
            // Give back write permission to the owner only: the bits others
            // had before are unknown, and owner-writable is the safe default.
            mode | 0o200
        };
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).map_err(Error::io(path))
    }
}
