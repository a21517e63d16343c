//! Size limits of machine images (`machine set-limit`), as machined sets
//! them: a btrfs quota group limit on the image's subvolume, or on the
//! pool's (`/var/lib/machines`) for the limit of all images together.
//! Other file systems have no per-tree limit, which is said in one line.

// The crate denies unsafe code; btrfs's quota ioctls have no safe wrapper
// in rustix or nix, so this module calls them, each block saying why it is
// sound.
#![allow(unsafe_code)]

use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("'{0}' is not a size (a number of bytes, possibly with K, M, G, T, P or E, or '-' for no limit)")]
    Size(String),
    #[error("{}: size limits need btrfs quota groups, and this is on {fs}", path.display())]
    NotBtrfs { path: PathBuf, fs: String },
    #[error("{}: size limits apply to btrfs subvolumes, and this is a plain directory or file", path.display())]
    NotSubvolume { path: PathBuf },
    #[error("{}: {source}", path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

/// A limit as machinectl set-limit takes it: bytes, possibly with a
/// (binary) unit suffix and a fraction (`1.5G`), several added up (`1G
/// 512M`), or `-` (also `infinity`) for none. `None` is no limit.
pub fn parse_size(text: &str) -> Result<Option<u64>, Error> {
    let bad = || Error::Size(text.to_string());
    let trimmed = text.trim();
    if trimmed == "-" || trimmed == "infinity" {
        return Ok(None);
    }
    if trimmed.is_empty() {
        return Err(bad());
    }
    const UNITS: [(char, u32); 6] = [('K', 10), ('M', 20), ('G', 30), ('T', 40), ('P', 50), ('E', 60)];
    let mut total: u128 = 0;
    let mut rest = trimmed;
    while !rest.is_empty() {
        let digits = rest.find(|c: char| !c.is_ascii_digit()).unwrap_or(rest.len());
        if digits == 0 {
            return Err(bad());
        }
        let whole: u128 = rest[..digits].parse().map_err(|_| bad())?;
        rest = &rest[digits..];
        // A fraction: its digits, as a numerator over a power of ten.
        let (mut numerator, mut denominator) = (0u128, 1u128);
        if let Some(after) = rest.strip_prefix('.') {
            let len = after.find(|c: char| !c.is_ascii_digit()).unwrap_or(after.len());
            if len == 0 || len > 18 {
                return Err(bad());
            }
            numerator = after[..len].parse().map_err(|_| bad())?;
            denominator = 10u128.pow(len as u32);
            rest = &after[len..];
        }
        let shift = match rest.chars().next() {
            Some(c) if c.is_ascii_alphabetic() => {
                let unit = UNITS.iter().find(|(u, _)| *u == c).map(|(_, s)| *s);
                rest = &rest[1..];
                match (unit, c) {
                    (Some(shift), _) => shift,
                    (None, 'B') => 0,
                    _ => return Err(bad()),
                }
            }
            _ => 0,
        };
        if numerator > 0 && shift == 0 {
            // A fraction of a byte.
            return Err(bad());
        }
        let factor = 1u128 << shift;
        total = total
            .checked_add(whole.checked_mul(factor).ok_or_else(bad)?)
            .and_then(|t| t.checked_add(numerator * factor / denominator))
            .ok_or_else(bad)?;
        rest = rest.trim_start();
    }
    // u64::MAX is what "no limit" is on the wire: a number that large is refused.
    u64::try_from(total).ok().filter(|n| *n < u64::MAX).map(Some).ok_or_else(bad)
}

const BTRFS_SUPER_MAGIC: i64 = 0x9123_683e;
/// The inode number of a btrfs subvolume's root directory.
const SUBVOLUME_INODE: u64 = 256;

/// The name of a file system type, as statfs reports it, for the one line
/// that says why a limit cannot be set.
fn fs_name(magic: i64) -> String {
    match magic {
        0xef53 => "ext4".into(),
        0x5846_5342 => "xfs".into(),
        0x0102_1994 => "tmpfs".into(),
        0x794c_7630 => "overlayfs".into(),
        0x7363_6673 => "squashfs (read-only)".into(),
        0xe0f5_e1e2 => "erofs (read-only)".into(),
        0x2fc1_2fc1 => "zfs".into(),
        other => format!("a file system of type {other:#x}"),
    }
}

/// Whether `path` is a btrfs subvolume; one line saying why not.
pub fn check_subvolume(path: &Path) -> Result<(), Error> {
    let io = |source| Error::Io { path: path.to_path_buf(), source };
    let stat = rustix::fs::statfs(path).map_err(|e| io(e.into()))?;
    #[allow(clippy::unnecessary_cast)] // f_type's width differs between architectures
    let magic = stat.f_type as i64;
    if magic != BTRFS_SUPER_MAGIC {
        return Err(Error::NotBtrfs { path: path.to_path_buf(), fs: fs_name(magic) });
    }
    let meta = std::fs::symlink_metadata(path).map_err(io)?;
    if !meta.is_dir() || meta.ino() != SUBVOLUME_INODE {
        return Err(Error::NotSubvolume { path: path.to_path_buf() });
    }
    Ok(())
}

#[repr(C)]
struct QuotaCtlArgs {
    cmd: u64,
    status: u64,
}

#[repr(C)]
struct QgroupLimitArgs {
    qgroupid: u64,
    flags: u64,
    max_rfer: u64,
    max_excl: u64,
    rsv_rfer: u64,
    rsv_excl: u64,
}

const BTRFS_IOCTL_MAGIC: u8 = 0x94;
const QUOTA_CTL_ENABLE: u64 = 1;
const QGROUP_LIMIT_MAX_RFER: u64 = 1;
/// The value that clears a qgroup limit.
const CLEAR_LIMIT: u64 = u64::MAX;

/// Limits what the subvolume at `path` refers to (`None`: no limit),
/// enabling quotas on its file system first, as machined does.
pub fn set_limit(path: &Path, limit: Option<u64>) -> Result<(), Error> {
    check_subvolume(path)?;
    let io = |source: std::io::Error| Error::Io { path: path.to_path_buf(), source };
    let dir = std::fs::File::open(path).map_err(io)?;
    // Enabling quotas on a file system that has them is a no-op.
    let mut ctl = QuotaCtlArgs { cmd: QUOTA_CTL_ENABLE, status: 0 };
    // SAFETY: BTRFS_IOC_QUOTA_CTL is _IOWR(0x94, 40, struct
    // btrfs_ioctl_quota_ctl_args), two u64s as QuotaCtlArgs lays them out;
    // the kernel reads and writes only that struct, which outlives the call.
    unsafe {
        rustix::ioctl::ioctl(
            &dir,
            rustix::ioctl::Updater::<{ rustix::ioctl::opcode::read_write::<QuotaCtlArgs>(BTRFS_IOCTL_MAGIC, 40) }, _>::new(
                &mut ctl,
            ),
        )
    }
    .map_err(|e| io(e.into()))?;
    let args = QgroupLimitArgs {
        // 0: the qgroup of the subvolume the descriptor is in.
        qgroupid: 0,
        flags: QGROUP_LIMIT_MAX_RFER,
        max_rfer: limit.unwrap_or(CLEAR_LIMIT),
        max_excl: 0,
        rsv_rfer: 0,
        rsv_excl: 0,
    };
    // SAFETY: BTRFS_IOC_QGROUP_LIMIT is _IOR(0x94, 43, struct
    // btrfs_ioctl_qgroup_limit_args) (an R the kernel only reads through),
    // six u64s as QgroupLimitArgs lays them out; the struct outlives the call.
    unsafe {
        rustix::ioctl::ioctl(
            &dir,
            rustix::ioctl::Setter::<{ rustix::ioctl::opcode::read::<QgroupLimitArgs>(BTRFS_IOCTL_MAGIC, 43) }, _>::new(
                args,
            ),
        )
    }
    .map_err(|e| io(e.into()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_as_machinectl_takes_them() {
        let gib = 1u64 << 30;
        for (text, bytes) in [
            ("0", 0),
            ("4096", 4096),
            ("512B", 512),
            ("1K", 1024),
            ("10M", 10 << 20),
            ("1G", gib),
            ("1.5G", gib + gib / 2),
            ("2T", 2 << 40),
            ("1G 512M", gib + (512 << 20)),
            (" 3G ", 3 * gib),
        ] {
            assert_eq!(parse_size(text).unwrap(), Some(bytes), "{text}");
        }
        assert_eq!(parse_size("-").unwrap(), None);
        assert_eq!(parse_size("infinity").unwrap(), None);
        for junk in
            ["", "abc", "-1", "1X", "1.5", "G", "1..5G", "16E", "99999999999999999999999", "1G;rm", "0x10", "1e9"]
        {
            let error = parse_size(junk).unwrap_err().to_string();
            assert!(error.contains("is not a size") && !error.contains('\n'), "{junk}: {error}");
        }
    }

    #[test]
    fn a_limit_off_btrfs_says_why_in_one_line() {
        // The test's temporary directory is not a btrfs subvolume root
        // (its inode is not 256), whatever file system it is on.
        let dir = std::env::temp_dir().join(format!("wharf-quota-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let error = set_limit(&dir, Some(1 << 30)).unwrap_err();
        std::fs::remove_dir_all(&dir).unwrap();
        assert!(matches!(error, Error::NotBtrfs { .. } | Error::NotSubvolume { .. }), "{error}");
        assert!(!error.to_string().contains('\n'));
        assert_eq!(fs_name(0xef53), "ext4");
        assert!(fs_name(0x1234).contains("0x1234"));
    }
}
