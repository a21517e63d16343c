//! squashfs images, read in user space with backhand: no loop device, no
//! mount, no privilege. The superblock is checked here before backhand sees
//! the image, so that a truncated or forged image is refused with a reason
//! instead of sending backhand after tables that are not there; backhand's
//! own parsing then runs under a panic guard.

use std::collections::HashMap;
use std::io::{BufReader, Read};
use std::path::Path;

use backhand::{FilesystemReader, InnerNode, SquashfsFileReader};

use super::served::panic_message;
use super::slice::FileSlice;
use super::tree::{EntryType, Tree, TreeError};
use super::{Error, ImageKind, Result};

/// Size of the squashfs 4.0 superblock.
pub const SUPERBLOCK_SIZE: usize = 96;
const MAGIC: u32 = 0x7371_7368;
const NOT_SET: u64 = u64::MAX;
const MIN_BLOCK_SIZE: u32 = 4096;
const MAX_BLOCK_SIZE: u32 = 1 << 20;

/// What wharf needs from a squashfs superblock.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Superblock {
    pub inode_count: u32,
    pub block_size: u32,
    pub compressor: &'static str,
    /// Bytes the file system occupies from its start.
    pub bytes_used: u64,
}

fn le_u16(bytes: &[u8], at: usize) -> u16 {
    u16::from_le_bytes([bytes[at], bytes[at + 1]])
}

fn le_u32(bytes: &[u8], at: usize) -> u32 {
    u32::from_le_bytes(bytes[at..at + 4].try_into().expect("4 bytes"))
}

fn le_u64(bytes: &[u8], at: usize) -> u64 {
    u64::from_le_bytes(bytes[at..at + 8].try_into().expect("8 bytes"))
}

/// Checks a squashfs superblock (`head` holds at least its 96 bytes) against
/// `available`, the bytes the image really has. The reason is for people.
pub fn check_superblock(head: &[u8], available: u64) -> Result<Superblock, String> {
    if head.len() < SUPERBLOCK_SIZE {
        return Err(format!("{} bytes long, shorter than a squashfs superblock", head.len()));
    }
    if le_u32(head, 0) != MAGIC {
        return Err("no squashfs magic".into());
    }
    let (major, minor) = (le_u16(head, 28), le_u16(head, 30));
    if (major, minor) != (4, 0) {
        return Err(format!("squashfs version {major}.{minor}, only 4.0 is read"));
    }
    let block_size = le_u32(head, 12);
    let block_log = le_u16(head, 22);
    if !(MIN_BLOCK_SIZE..=MAX_BLOCK_SIZE).contains(&block_size)
        || !block_size.is_power_of_two()
        || block_size.ilog2() != u32::from(block_log)
    {
        return Err(format!("invalid block size {block_size} (log {block_log})"));
    }
    let compressor = match le_u16(head, 20) {
        1 => "gzip",
        4 => "xz",
        5 => "lz4",
        6 => "zstd",
        2 => return Err("compressed with lzma, which wharf does not read (gzip, xz, lz4 and zstd are read)".into()),
        3 => return Err("compressed with lzo, which wharf does not read (gzip, xz, lz4 and zstd are read)".into()),
        other => return Err(format!("unknown compressor {other}")),
    };
    let inode_count = le_u32(head, 4);
    if inode_count == 0 {
        return Err("no inodes".into());
    }
    let bytes_used = le_u64(head, 40);
    if bytes_used < SUPERBLOCK_SIZE as u64 {
        return Err(format!("bytes_used {bytes_used} is smaller than the superblock"));
    }
    if bytes_used > available {
        return Err(format!("truncated: the superblock says {bytes_used} bytes, the image has {available}"));
    }
    for (name, at, optional) in [
        ("id table", 48, false),
        ("xattr table", 56, true),
        ("inode table", 64, false),
        ("directory table", 72, false),
        ("fragment table", 80, true),
        ("export table", 88, true),
    ] {
        let start = le_u64(head, at);
        if optional && start == NOT_SET {
            continue;
        }
        if start < SUPERBLOCK_SIZE as u64 || start >= bytes_used {
            return Err(format!("the {name} starts at {start}, outside the file system's {bytes_used} bytes"));
        }
    }
    let (inode_table, dir_table) = (le_u64(head, 64), le_u64(head, 72));
    if inode_table >= dir_table {
        return Err("the inode table does not come before the directory table".into());
    }
    Ok(Superblock { inode_count, block_size, compressor, bytes_used })
}

#[derive(Debug, Clone, Copy)]
struct Entry {
    node: usize,
    kind: EntryType,
}

/// A squashfs image's tree, indexed by path once when opened.
pub struct SquashfsTree {
    fs: FilesystemReader<'static>,
    entries: HashMap<String, Entry>,
    children: HashMap<String, Vec<(String, EntryType)>>,
}

impl std::fmt::Debug for SquashfsTree {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SquashfsTree").field("entries", &self.entries.len()).finish()
    }
}

fn corrupt(image: &Path, reason: impl Into<String>) -> Error {
    Error::Corrupt { image: image.to_path_buf(), kind: ImageKind::Squashfs, reason: reason.into() }
}

impl SquashfsTree {
    /// Reads the squashfs file system in `slice` (`image` names it in errors).
    pub fn open(image: &Path, slice: FileSlice) -> Result<SquashfsTree> {
        let mut head = [0u8; SUPERBLOCK_SIZE];
        slice.read_exact_at(&mut head, 0).map_err(|e| match e.kind() {
            std::io::ErrorKind::UnexpectedEof => corrupt(image, format!("truncated: {e}")),
            _ => Error::io(image)(e),
        })?;
        let superblock = check_superblock(&head, slice.len()).map_err(|reason| corrupt(image, reason))?;
        tracing::debug!(image = %image.display(), ?superblock, "reading squashfs in user space");
        // backhand reads the image in small pieces: a buffer saves most syscalls.
        let reader = BufReader::with_capacity(64 * 1024, slice);
        let fs = std::panic::catch_unwind(move || FilesystemReader::from_reader(reader))
            .map_err(|panic| corrupt(image, format!("the squashfs reader failed: {}", panic_message(&*panic))))?
            .map_err(|e| corrupt(image, e.to_string()))?;
        SquashfsTree::index(fs).map_err(|reason| corrupt(image, reason))
    }

    fn index(fs: FilesystemReader<'static>) -> Result<SquashfsTree, String> {
        let mut entries = HashMap::with_capacity(fs.root.nodes.len());
        let mut children: HashMap<String, Vec<(String, EntryType)>> = HashMap::new();
        for (node_index, node) in fs.root.nodes.iter().enumerate() {
            let path = node.fullpath.to_str().ok_or("a path in the image is not UTF-8")?;
            let kind = match node.inner {
                InnerNode::File(_) => EntryType::File,
                InnerNode::Dir(_) => EntryType::Dir,
                InnerNode::Symlink(_) => EntryType::Symlink,
                _ => EntryType::Other,
            };
            if path != "/" {
                // A forged directory entry named "..", "a/b" or "" would put a
                // node somewhere the directory structure does not say.
                let (parent, name) = path.rsplit_once('/').ok_or_else(|| format!("path '{path}' is not absolute"))?;
                if name.is_empty() || name == "." || name == ".." || path.contains("//") {
                    return Err(format!("invalid path '{path}' in the image"));
                }
                let parent = if parent.is_empty() { "/" } else { parent };
                children.entry(parent.to_string()).or_default().push((name.to_string(), kind));
            }
            if entries.insert(path.to_string(), Entry { node: node_index, kind }).is_some() {
                return Err(format!("'{path}' appears twice"));
            }
        }
        if entries.get("/").map(|e| e.kind) != Some(EntryType::Dir) {
            return Err("the root is not a directory".into());
        }
        Ok(SquashfsTree { fs, entries, children })
    }

    fn entry(&self, path: &str) -> Option<Entry> {
        self.entries.get(path).copied()
    }

    fn file(&self, path: &str) -> Result<&SquashfsFileReader, TreeError> {
        let entry = self.entry(path).ok_or_else(|| not_found(path))?;
        match &self.fs.root.nodes[entry.node].inner {
            InnerNode::File(file) => Ok(file),
            _ => Err(TreeError::NotAFile(path.to_string())),
        }
    }
}

fn not_found(path: &str) -> TreeError {
    TreeError::Io { path: path.to_string(), source: std::io::ErrorKind::NotFound.into() }
}

fn corrupt_at(path: &str, reason: impl std::fmt::Display) -> TreeError {
    TreeError::Corrupt { path: path.to_string(), reason: reason.to_string() }
}

impl Tree for SquashfsTree {
    fn entry_type(&mut self, path: &str) -> Result<Option<EntryType>, TreeError> {
        Ok(self.entry(path).map(|e| e.kind))
    }

    fn read_link(&mut self, path: &str) -> Result<String, TreeError> {
        let entry = self.entry(path).ok_or_else(|| not_found(path))?;
        match &self.fs.root.nodes[entry.node].inner {
            InnerNode::Symlink(link) => {
                link.link.to_str().map(str::to_string).ok_or_else(|| corrupt_at(path, "symlink target is not UTF-8"))
            }
            _ => Err(corrupt_at(path, "not a symlink")),
        }
    }

    fn read_file(&mut self, path: &str, limit: u64) -> Result<Vec<u8>, TreeError> {
        let file = self.file(path)?;
        let len = file.file_len() as u64;
        if len > limit {
            return Err(TreeError::TooLarge { path: path.to_string(), limit });
        }
        let fs = &self.fs;
        let read = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            let mut reader = fs.file(file).reader_checked()?;
            let mut data = Vec::with_capacity(len as usize);
            reader.by_ref().take(limit + 1).read_to_end(&mut data)?;
            Ok::<_, backhand::BackhandError>(data)
        }));
        let data = match read {
            Ok(Ok(data)) => data,
            Ok(Err(e)) => return Err(corrupt_at(path, e)),
            Err(panic) => {
                return Err(corrupt_at(path, format!("the squashfs reader failed: {}", panic_message(&*panic))));
            }
        };
        if data.len() as u64 != len {
            return Err(corrupt_at(path, format!("{} bytes read where the inode says {len}", data.len())));
        }
        Ok(data)
    }

    fn read_dir(&mut self, path: &str) -> Result<Vec<(String, EntryType)>, TreeError> {
        match self.entry(path) {
            Some(Entry { kind: EntryType::Dir, .. }) => Ok(self.children.get(path).cloned().unwrap_or_default()),
            Some(_) => Err(corrupt_at(path, "not a directory")),
            None => Err(not_found(path)),
        }
    }

    fn access(&self) -> &'static str {
        "squashfs, user-space reader (no loop device, no mount)"
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A superblock as mksquashfs writes it, for a 1 MiB image.
    fn superblock() -> Vec<u8> {
        let mut sb = vec![0u8; SUPERBLOCK_SIZE];
        sb[0..4].copy_from_slice(&MAGIC.to_le_bytes());
        sb[4..8].copy_from_slice(&10u32.to_le_bytes());
        sb[12..16].copy_from_slice(&131072u32.to_le_bytes());
        sb[20..22].copy_from_slice(&1u16.to_le_bytes());
        sb[22..24].copy_from_slice(&17u16.to_le_bytes());
        sb[28..30].copy_from_slice(&4u16.to_le_bytes());
        sb[40..48].copy_from_slice(&(1u64 << 20).to_le_bytes());
        for (at, value) in [(48, 900_000u64), (56, NOT_SET), (64, 1000), (72, 2000), (80, 800_000), (88, NOT_SET)] {
            sb[at..at + 8].copy_from_slice(&value.to_le_bytes());
        }
        sb
    }

    #[test]
    fn a_sound_superblock_passes() {
        let sb = check_superblock(&superblock(), 1 << 20).unwrap();
        assert_eq!(sb, Superblock { inode_count: 10, block_size: 131072, compressor: "gzip", bytes_used: 1 << 20 });
    }

    #[test]
    fn forged_superblocks_are_refused_with_a_reason() {
        let with = |at: usize, bytes: &[u8]| {
            let mut sb = superblock();
            sb[at..at + bytes.len()].copy_from_slice(bytes);
            sb
        };
        let cases: Vec<(Vec<u8>, u64, &str)> = vec![
            (superblock(), (1 << 20) - 1, "truncated: the superblock says 1048576 bytes, the image has 1048575"),
            (superblock()[..50].to_vec(), 1 << 20, "shorter than a squashfs superblock"),
            (with(0, b"hsqt"), 1 << 20, "no squashfs magic"),
            (with(28, &3u16.to_le_bytes()), 1 << 20, "version 3.0"),
            (with(12, &131073u32.to_le_bytes()), 1 << 20, "invalid block size"),
            (with(22, &16u16.to_le_bytes()), 1 << 20, "invalid block size"),
            (with(20, &3u16.to_le_bytes()), 1 << 20, "compressed with lzo"),
            (with(20, &9u16.to_le_bytes()), 1 << 20, "unknown compressor 9"),
            (with(4, &0u32.to_le_bytes()), 1 << 20, "no inodes"),
            (with(64, &(2u64 << 20).to_le_bytes()), 1 << 20, "the inode table starts at 2097152"),
            (with(80, &(1u64 << 20).to_le_bytes()), 1 << 20, "the fragment table starts at 1048576"),
            (with(72, &500u64.to_le_bytes()), 1 << 20, "does not come before"),
        ];
        for (sb, available, reason) in cases {
            let error = check_superblock(&sb, available).unwrap_err();
            assert!(error.contains(reason), "{error:?} does not say {reason:?}");
        }
    }
}
