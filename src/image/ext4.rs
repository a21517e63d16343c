//! ext2/3/4 images, read in user space with ext4-view: no loop device, no
//! mount, no privilege. ext4-view's handle is not `Send`, so it lives on a
//! thread of its own ([`ServedTree`]).

use std::path::{Path, PathBuf};

use ext4_view::{Ext4, Ext4Error};

use super::served::{LocalTree, ServedTree};
use super::slice::FileSlice;
use super::tree::{EntryType, Tree, TreeError};
use super::{Error, ImageKind, Result};

pub const ACCESS: &str = "ext4, user-space reader (no loop device, no mount)";

const SUPERBLOCK_OFFSET: u64 = 1024;
const SUPERBLOCK_SIZE: usize = 1024;
const MAGIC: u16 = 0xef53;
const INCOMPAT_64BIT: u32 = 0x80;

/// Checks that the file system the superblock (`sb`, its 1024 bytes)
/// describes fits in the `available` bytes: ext4-view only finds out about a
/// truncated image when it reads past the end, if ever.
pub fn check_superblock(sb: &[u8], available: u64) -> Result<u64, String> {
    if sb.len() < SUPERBLOCK_SIZE || u16::from_le_bytes([sb[56], sb[57]]) != MAGIC {
        return Err("no ext2/3/4 superblock".into());
    }
    let u32_at = |at: usize| u32::from_le_bytes(sb[at..at + 4].try_into().expect("4 bytes"));
    let log_block_size = u32_at(0x18);
    if log_block_size > 6 {
        return Err(format!("invalid block size 2^{}", 10 + log_block_size));
    }
    let block_size = 1024u64 << log_block_size;
    let mut blocks = u64::from(u32_at(0x4));
    if u32_at(0x60) & INCOMPAT_64BIT != 0 {
        blocks |= u64::from(u32_at(0x150)) << 32;
    }
    let size = blocks.checked_mul(block_size).ok_or("the block count overflows")?;
    if size > available {
        return Err(format!("truncated: the superblock says {size} bytes, the image has {available}"));
    }
    Ok(size)
}

/// Opens the ext2/3/4 file system in `slice` (`image` names it in errors).
pub fn open(image: &Path, slice: FileSlice) -> Result<Box<dyn Tree>> {
    let corrupt = |reason: String| Error::Corrupt { image: image.to_path_buf(), kind: ImageKind::Ext4, reason };
    let mut sb = vec![0u8; SUPERBLOCK_SIZE];
    slice.read_exact_at(&mut sb, SUPERBLOCK_OFFSET).map_err(|e| corrupt(format!("truncated: {e}")))?;
    check_superblock(&sb, slice.len()).map_err(corrupt)?;
    let owned: PathBuf = image.to_path_buf();
    let served = ServedTree::spawn(image, ImageKind::Ext4, ACCESS, move || {
        let fs = Ext4::load(Box::new(slice)).map_err(|e| Error::Corrupt {
            image: owned,
            kind: ImageKind::Ext4,
            reason: e.to_string(),
        })?;
        Ok(Ext4Tree { fs })
    })?;
    Ok(Box::new(served))
}

struct Ext4Tree {
    fs: Ext4,
}

fn error(path: &str, e: Ext4Error) -> TreeError {
    match e {
        Ext4Error::Io(source) => {
            TreeError::Io { path: path.to_string(), source: std::io::Error::other(source.to_string()) }
        }
        other => TreeError::Corrupt { path: path.to_string(), reason: other.to_string() },
    }
}

fn entry_type(file_type: ext4_view::FileType) -> EntryType {
    if file_type.is_regular_file() {
        EntryType::File
    } else if file_type.is_dir() {
        EntryType::Dir
    } else if file_type.is_symlink() {
        EntryType::Symlink
    } else {
        EntryType::Other
    }
}

impl LocalTree for Ext4Tree {
    fn entry_type(&mut self, path: &str) -> Result<Option<EntryType>, TreeError> {
        // Callers never pass a symlink but in the last component, which
        // symlink_metadata does not follow: this is lstat(2).
        match self.fs.symlink_metadata(path) {
            Ok(meta) => Ok(Some(entry_type(meta.file_type()))),
            Err(Ext4Error::NotFound | Ext4Error::NotADirectory) => Ok(None),
            Err(e) => Err(error(path, e)),
        }
    }

    fn read_link(&mut self, path: &str) -> Result<String, TreeError> {
        let target = self.fs.read_link(path).map_err(|e| error(path, e))?;
        target
            .to_str()
            .map(str::to_string)
            .map_err(|_| TreeError::Corrupt { path: path.to_string(), reason: "symlink target is not UTF-8".into() })
    }

    fn read_file(&mut self, path: &str, limit: u64) -> Result<Vec<u8>, TreeError> {
        let meta = self.fs.symlink_metadata(path).map_err(|e| error(path, e))?;
        if !meta.file_type().is_regular_file() {
            return Err(TreeError::NotAFile(path.to_string()));
        }
        // Checked before reading: ext4-view allocates the whole file at once.
        if meta.len() > limit {
            return Err(TreeError::TooLarge { path: path.to_string(), limit });
        }
        self.fs.read(path).map_err(|e| error(path, e))
    }

    fn read_dir(&mut self, path: &str) -> Result<Vec<(String, EntryType)>, TreeError> {
        let mut entries = Vec::new();
        for entry in self.fs.read_dir(path).map_err(|e| error(path, e))? {
            let entry = entry.map_err(|e| error(path, e))?;
            let name = entry.file_name();
            let Ok(name) = name.as_str() else {
                continue;
            };
            if name == "." || name == ".." {
                continue;
            }
            let kind = entry_type(entry.file_type().map_err(|e| error(path, e))?);
            entries.push((name.to_string(), kind));
        }
        Ok(entries)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn superblock(blocks: u32, log: u32, hi: Option<u32>) -> Vec<u8> {
        let mut sb = vec![0u8; SUPERBLOCK_SIZE];
        sb[56..58].copy_from_slice(&MAGIC.to_le_bytes());
        sb[0x4..0x8].copy_from_slice(&blocks.to_le_bytes());
        sb[0x18..0x1c].copy_from_slice(&log.to_le_bytes());
        if let Some(hi) = hi {
            sb[0x60..0x64].copy_from_slice(&INCOMPAT_64BIT.to_le_bytes());
            sb[0x150..0x154].copy_from_slice(&hi.to_le_bytes());
        }
        sb
    }

    #[test]
    fn the_file_system_must_fit_in_the_image() {
        assert_eq!(check_superblock(&superblock(2048, 2, None), 8 << 20), Ok(8 << 20));
        let error = check_superblock(&superblock(2048, 2, None), (8 << 20) - 1).unwrap_err();
        assert_eq!(error, "truncated: the superblock says 8388608 bytes, the image has 8388607");
        assert!(check_superblock(&superblock(1, 2, Some(1)), 8 << 20).unwrap_err().starts_with("truncated"));
        assert!(check_superblock(&superblock(1, 40, None), 8 << 20).unwrap_err().contains("block size"));
        assert!(check_superblock(&[0u8; 1024], 8 << 20).is_err());
    }
}
