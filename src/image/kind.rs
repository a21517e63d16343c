//! Recognising what an image is from its file type and its first bytes.
//! The content decides, never the file name: a `.raw` that holds ext4 is ext4,
//! and a file with no suffix is fine when its magic says what it is.

use std::fmt;
use std::fs::File;
use std::os::unix::fs::{FileExt, FileTypeExt};
use std::path::Path;

use serde::{Deserialize, Serialize};

use super::{Error, Result};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum ImageKind {
    /// A directory tree (or btrfs subvolume), used with `RootDirectory=`.
    Directory,
    /// A bare squashfs file system.
    Squashfs,
    /// A bare ext2/3/4 file system.
    Ext4,
    /// A bare erofs file system.
    Erofs,
    /// A GPT disk image following the Discoverable Partitions Specification.
    Gpt,
    /// Any of the raw kinds, compressed with xz; decompressed into the pool before use.
    Xz,
}

/// How many bytes from the start of a file [`ImageKind::from_magic`] needs to
/// see every magic it knows (a GPT header at the 4096-byte sector of a 4Kn disk).
pub const MAGIC_PROBE_LEN: usize = 4096 + 8;

const XZ_MAGIC: &[u8] = &[0xfd, b'7', b'z', b'X', b'Z', 0x00];
const SQUASHFS_MAGIC: &[u8] = b"hsqs";
const GPT_SIGNATURE: &[u8] = b"EFI PART";
const EXT_MAGIC_OFFSET: usize = 1024 + 56;
const EXT_MAGIC: &[u8] = &[0x53, 0xef];
const EROFS_MAGIC_OFFSET: usize = 1024;
const EROFS_MAGIC: &[u8] = &[0xe2, 0xe1, 0xf5, 0xe0];

impl ImageKind {
    /// Recognises a file image from its first bytes (at least
    /// [`MAGIC_PROBE_LEN`] of them when the file is that long).
    pub fn from_magic(head: &[u8]) -> Option<ImageKind> {
        let at = |offset: usize, magic: &[u8]| head.get(offset..offset + magic.len()) == Some(magic);
        if at(0, XZ_MAGIC) {
            Some(ImageKind::Xz)
        } else if at(0, SQUASHFS_MAGIC) {
            Some(ImageKind::Squashfs)
        } else if at(512, GPT_SIGNATURE) || at(4096, GPT_SIGNATURE) {
            // Checked before the file systems: a GPT disk has a protective MBR,
            // never a file system superblock, at its start.
            Some(ImageKind::Gpt)
        } else if at(EROFS_MAGIC_OFFSET, EROFS_MAGIC) {
            Some(ImageKind::Erofs)
        } else if at(EXT_MAGIC_OFFSET, EXT_MAGIC) {
            Some(ImageKind::Ext4)
        } else {
            None
        }
    }

    /// Looks at `path` (following a symlink to it) and says what it is.
    pub fn detect(path: &Path) -> Result<ImageKind> {
        let file = File::open(path).map_err(Error::io(path))?;
        ImageKind::detect_open(&file, path)
    }

    /// Says what an open image is (`path` only names it in errors). Reads
    /// with pread, so the file position is left alone.
    pub fn detect_open(file: &File, path: &Path) -> Result<ImageKind> {
        let meta = file.metadata().map_err(Error::io(path))?;
        ImageKind::detect_with(file, &meta, path)
    }

    /// [`ImageKind::detect_open`] for a caller that has the metadata already.
    pub fn detect_with(file: &File, meta: &std::fs::Metadata, path: &Path) -> Result<ImageKind> {
        if meta.is_dir() {
            return Ok(ImageKind::Directory);
        }
        if !meta.is_file() && !meta.file_type().is_block_device() {
            return Err(Error::NotAnImage(path.to_path_buf()));
        }
        // Most images say what they are in their first bytes; only the
        // others need the superblock area read.
        let mut head = vec![0u8; MAGIC_PROBE_LEN];
        let mut filled = read_at_least(file, &mut head, XZ_MAGIC.len()).map_err(Error::io(path))?;
        if !head[..filled].starts_with(XZ_MAGIC) && !head[..filled].starts_with(SQUASHFS_MAGIC) {
            filled = read_at_least(file, &mut head, MAGIC_PROBE_LEN).map_err(Error::io(path))?;
        }
        head.truncate(filled);
        ImageKind::from_magic(&head).ok_or_else(|| Error::NotAnImage(path.to_path_buf()))
    }

    /// True for kinds systemd gets with `RootImage=` (a file), false for `RootDirectory=`.
    pub fn is_file(self) -> bool {
        self != ImageKind::Directory
    }

    pub fn as_str(self) -> &'static str {
        match self {
            ImageKind::Directory => "directory",
            ImageKind::Squashfs => "squashfs",
            ImageKind::Ext4 => "ext4",
            ImageKind::Erofs => "erofs",
            ImageKind::Gpt => "gpt",
            ImageKind::Xz => "xz",
        }
    }
}

impl fmt::Display for ImageKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Fills `buffer` from the start of `file` until `wanted` bytes are in or
/// the file ends; returns how many bytes were read.
fn read_at_least(file: &File, buffer: &mut [u8], wanted: usize) -> std::io::Result<usize> {
    let wanted = wanted.min(buffer.len());
    let mut filled = 0;
    while filled < wanted {
        match file.read_at(&mut buffer[filled..wanted], filled as u64) {
            Ok(0) => break,
            Ok(n) => filled += n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        }
    }
    Ok(filled)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn with(offset: usize, magic: &[u8]) -> Vec<u8> {
        let mut head = vec![0u8; MAGIC_PROBE_LEN];
        head[offset..offset + magic.len()].copy_from_slice(magic);
        head
    }

    #[test]
    fn recognises_each_magic() {
        assert_eq!(ImageKind::from_magic(&with(0, XZ_MAGIC)), Some(ImageKind::Xz));
        assert_eq!(ImageKind::from_magic(&with(0, SQUASHFS_MAGIC)), Some(ImageKind::Squashfs));
        assert_eq!(ImageKind::from_magic(&with(512, GPT_SIGNATURE)), Some(ImageKind::Gpt));
        assert_eq!(ImageKind::from_magic(&with(4096, GPT_SIGNATURE)), Some(ImageKind::Gpt));
        assert_eq!(ImageKind::from_magic(&with(EXT_MAGIC_OFFSET, EXT_MAGIC)), Some(ImageKind::Ext4));
        assert_eq!(ImageKind::from_magic(&with(EROFS_MAGIC_OFFSET, EROFS_MAGIC)), Some(ImageKind::Erofs));
    }

    #[test]
    fn refuses_unknown_and_short_input() {
        assert_eq!(ImageKind::from_magic(&[0u8; MAGIC_PROBE_LEN]), None);
        assert_eq!(ImageKind::from_magic(b"hsq"), None);
        assert_eq!(ImageKind::from_magic(&[]), None);
        assert_eq!(ImageKind::from_magic(b"#!/bin/sh\necho hello\n"), None);
    }
}
