//! Giving a directory image's files to a container's UID range.
//!
//! The preferred way changes nothing on disk: the image is mounted
//! *idmapped* (`mount_setattr(MOUNT_ATTR_IDMAP)`), so that on-disk UID 0
//! shows as the range's base through that mount. It needs kernel ≥ 5.12 and
//! a file system that supports it (ext4, xfs, btrfs, tmpfs ≥ 6.3, ...).
//!
//! Where it does not work, the fallback is what systemd-nspawn does: the
//! files are shifted once with `lchown` (UID u becomes base + u), and the
//! image's root directory, shifted last, records the range: an image whose
//! root is owned by a range's base is taken as shifted to it and not walked
//! again. An interrupted shift is finished by the next start (IDs already in
//! the range are left alone). Not carried over: POSIX ACL entries naming
//! users or groups, and file capabilities (`security.capability`, which
//! chown removes); the set-user/group-ID bits, which chown also clears, are
//! put back.

use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

use super::uid_range::RANGE_SIZE;

/// How a range's files are owned: `--private-users-ownership=`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ownership {
    /// Idmapped if the kernel and file system allow it, else chown.
    Auto,
    /// Idmapped or fail.
    Idmap,
    /// Shift with chown.
    Chown,
}

impl std::str::FromStr for Ownership {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "auto" => Ok(Ownership::Auto),
            "idmap" => Ok(Ownership::Idmap),
            "chown" => Ok(Ownership::Chown),
            _ => Err(format!("'{s}' is not auto, idmap or chown")),
        }
    }
}

/// As [`FromStr`](std::str::FromStr) reads it back.
impl std::fmt::Display for Ownership {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Ownership::Auto => "auto",
            Ownership::Idmap => "idmap",
            Ownership::Chown => "chown",
        })
    }
}

/// The owner an ID of an unshifted image gets in the range at `base`.
pub fn shifted(id: u32, base: u32) -> u32 {
    if id >= base && u64::from(id) < u64::from(base) + u64::from(RANGE_SIZE) {
        id
    } else if id < RANGE_SIZE {
        base + id
    } else {
        // Not representable inside: the container sees it as nobody.
        base + 65534
    }
}

#[derive(Debug, thiserror::Error)]
#[error("shifting ownership of {} to the container's range: {source}", .path.display())]
pub struct ShiftError {
    pub path: PathBuf,
    #[source]
    pub source: std::io::Error,
}

/// Shifts every file of `root` (not crossing into other file systems) to
/// the range at `base`, the root directory last. Returns how many entries
/// changed.
pub fn shift_tree(root: &Path, base: u32) -> Result<u64, ShiftError> {
    let fail = |path: &Path| {
        let path = path.to_path_buf();
        move |source| ShiftError { path, source }
    };
    let top = std::fs::symlink_metadata(root).map_err(fail(root))?;
    let mut changed = 0;
    let mut pending: Vec<PathBuf> = vec![root.to_path_buf()];
    while let Some(dir) = pending.pop() {
        for entry in std::fs::read_dir(&dir).map_err(fail(&dir))? {
            let path = entry.map_err(fail(&dir))?.path();
            let meta = std::fs::symlink_metadata(&path).map_err(fail(&path))?;
            if meta.dev() != top.dev() {
                // Another file system mounted in the image is not the image's.
                continue;
            }
            if meta.is_dir() {
                pending.push(path.clone());
            }
            changed += u64::from(shift_one(&path, &meta, base).map_err(fail(&path))?);
        }
    }
    changed += u64::from(shift_one(root, &top, base).map_err(fail(root))?);
    Ok(changed)
}

fn shift_one(path: &Path, meta: &std::fs::Metadata, base: u32) -> std::io::Result<bool> {
    let (uid, gid) = (shifted(meta.uid(), base), shifted(meta.gid(), base));
    if (uid, gid) == (meta.uid(), meta.gid()) {
        return Ok(false);
    }
    std::os::unix::fs::lchown(path, Some(uid), Some(gid))?;
    if !meta.file_type().is_symlink() && meta.mode() & 0o6000 != 0 {
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(meta.mode() & 0o7777))?;
    }
    Ok(true)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shifts_ids_into_the_range_once() {
        let base = 0x1C_0000;
        assert_eq!(shifted(0, base), base);
        assert_eq!(shifted(1000, base), base + 1000);
        assert_eq!(shifted(base + 5, base), base + 5);
        assert_eq!(shifted(4_000_000_000, base), base + 65534);
    }

    #[test]
    fn parses_the_option() {
        assert_eq!("auto".parse(), Ok(Ownership::Auto));
        assert_eq!("chown".parse(), Ok(Ownership::Chown));
        assert!("copy".parse::<Ownership>().is_err());
    }
}
