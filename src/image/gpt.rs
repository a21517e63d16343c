//! GPT disk images following the Discoverable Partitions Specification: the
//! partition table is read, every partition is classified by its type GUID,
//! and the root partition for this machine's architecture (else its /usr
//! partition) is opened through a window onto the disk ([`FileSlice`]).
//!
//! The table is parsed here rather than with the `gpt` crate: that crate
//! asserts (panics) on an entry size other than 128 (which the UEFI
//! specification allows), sizes its reads from the untrusted header, does
//! not check the entry array's CRC, and wants a writable device even to read.
//! Reading a GPT is a hundred lines of bounds-checked parsing.

use std::fmt;
use std::fs::File;
use std::path::Path;
use std::sync::Arc;

use super::inspect::Partition;
use super::kind::MAGIC_PROBE_LEN;
use super::policy::{DerivedPolicy, PartitionContent};
use super::slice::{FileSlice, file_len};
use super::squashfs::SquashfsTree;
use super::tree::{EntryType, Tree, TreeError};
use super::{Error, ImageKind, Result};

const SIGNATURE: &[u8] = b"EFI PART";
/// Logical block sizes a disk image may have been made for.
const LBA_SIZES: [u64; 2] = [512, 4096];
const MIN_HEADER_SIZE: usize = 92;
const MIN_ENTRY_SIZE: u32 = 128;
/// Far more than any real table (128 entries of 128 bytes is the norm): a
/// bound on what a forged header can make wharf read.
const MAX_TABLE_BYTES: u64 = 1 << 20;
/// DPS: a partition with this attribute is not used automatically.
const FLAG_NO_AUTO: u64 = 1 << 63;
/// Partition attribute bit 60: mount read-only.
const FLAG_READ_ONLY: u64 = 1 << 60;
const CRC32: crc::Crc<u32> = crc::Crc::<u32>::new(&crc::CRC_32_ISO_HDLC);

/// A GUID as stored on disk: the first three fields little-endian.
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct Guid(pub [u8; 16]);

impl Guid {
    pub fn is_zero(&self) -> bool {
        self.0 == [0; 16]
    }
}

impl fmt::Display for Guid {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let b = &self.0;
        write!(
            f,
            "{:02x}{:02x}{:02x}{:02x}-{:02x}{:02x}-{:02x}{:02x}-{:02x}{:02x}-{:02x}{:02x}{:02x}{:02x}{:02x}{:02x}",
            b[3], b[2], b[1], b[0], b[5], b[4], b[7], b[6], b[8], b[9], b[10], b[11], b[12], b[13], b[14], b[15]
        )
    }
}

impl fmt::Debug for Guid {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

/// The fields of a GPT header that locate the partition entries.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Header {
    pub entries_lba: u64,
    pub entry_count: u32,
    pub entry_size: u32,
    pub entries_crc: u32,
}

impl Header {
    fn table_bytes(&self) -> u64 {
        u64::from(self.entry_count) * u64::from(self.entry_size)
    }
}

/// Parses and checks the GPT header in `sector` (one logical block), which
/// was read from `lba`.
pub fn parse_header(sector: &[u8], lba: u64) -> Result<Header, String> {
    if sector.len() < MIN_HEADER_SIZE || &sector[..8] != SIGNATURE {
        return Err("no GPT header".into());
    }
    let u32_at = |at: usize| u32::from_le_bytes(sector[at..at + 4].try_into().expect("4 bytes"));
    let u64_at = |at: usize| u64::from_le_bytes(sector[at..at + 8].try_into().expect("8 bytes"));
    let header_size = u32_at(12) as usize;
    if !(MIN_HEADER_SIZE..=sector.len()).contains(&header_size) {
        return Err(format!("GPT header size {header_size} is invalid"));
    }
    let mut copy = sector[..header_size].to_vec();
    copy[16..20].fill(0);
    if CRC32.checksum(&copy) != u32_at(16) {
        return Err("GPT header checksum mismatch".into());
    }
    if u64_at(24) != lba {
        return Err(format!("GPT header at block {lba} says it is at block {}", u64_at(24)));
    }
    let header =
        Header { entries_lba: u64_at(72), entry_count: u32_at(80), entry_size: u32_at(84), entries_crc: u32_at(88) };
    if header.entry_size < MIN_ENTRY_SIZE || !header.entry_size.is_power_of_two() {
        return Err(format!("GPT entry size {} is invalid", header.entry_size));
    }
    if header.table_bytes() > MAX_TABLE_BYTES {
        return Err(format!("GPT partition table of {} bytes is implausibly large", header.table_bytes()));
    }
    if header.entries_lba < 2 {
        return Err(format!("GPT partition entries at block {} overlap the headers", header.entries_lba));
    }
    Ok(header)
}

/// One used entry of the partition table.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    pub type_guid: Guid,
    pub uuid: Guid,
    pub first_lba: u64,
    pub last_lba: u64,
    pub flags: u64,
    pub label: String,
}

/// Parses the partition entry array `table` that `header` describes;
/// unused entries (type all zero) are left out.
pub fn parse_entries(table: &[u8], header: &Header) -> Result<Vec<Entry>, String> {
    if table.len() as u64 != header.table_bytes() {
        return Err("GPT partition table is truncated".into());
    }
    if CRC32.checksum(table) != header.entries_crc {
        return Err("GPT partition table checksum mismatch".into());
    }
    let mut entries = Vec::new();
    for raw in table.chunks_exact(header.entry_size as usize) {
        let guid = |at: usize| Guid(raw[at..at + 16].try_into().expect("16 bytes"));
        let u64_at = |at: usize| u64::from_le_bytes(raw[at..at + 8].try_into().expect("8 bytes"));
        let type_guid = guid(0);
        if type_guid.is_zero() {
            continue;
        }
        let (first_lba, last_lba) = (u64_at(32), u64_at(40));
        if last_lba < first_lba {
            return Err(format!("GPT partition {} ends before it starts", guid(16)));
        }
        let units: Vec<u16> =
            raw[56..128].chunks_exact(2).map(|c| u16::from_le_bytes([c[0], c[1]])).take_while(|&u| u != 0).collect();
        entries.push(Entry {
            type_guid,
            uuid: guid(16),
            first_lba,
            last_lba,
            flags: u64_at(48),
            label: String::from_utf16_lossy(&units),
        });
    }
    Ok(entries)
}

/// Partition types of the Discoverable Partitions Specification: type GUID,
/// role, architecture.
const TYPES: &[(&str, &str, Option<&str>)] = &[
    ("4f68bce3-e8cd-4db1-96e7-fbcaf984b709", "root", Some("x86-64")),
    ("8484680c-9521-48c6-9c11-b0720656f69e", "usr", Some("x86-64")),
    ("2c7357ed-ebd2-46d9-aec1-23d437ec2bf5", "root-verity", Some("x86-64")),
    ("77ff5f63-e7b6-4633-acf4-1565b864c0e6", "usr-verity", Some("x86-64")),
    ("41092b05-9fc8-4523-994f-2def0408b176", "root-verity-sig", Some("x86-64")),
    ("e7bb33fb-06cf-4e81-8273-e543b413e2e2", "usr-verity-sig", Some("x86-64")),
    ("b921b045-1df0-41c3-af44-4c6f280d3fae", "root", Some("arm64")),
    ("b0e01050-ee5f-4390-949a-9101b17104e9", "usr", Some("arm64")),
    ("df3300ce-d69f-4c92-978c-9bfb0f38d820", "root-verity", Some("arm64")),
    ("6e11a4e7-fbca-4ded-b9e9-e1a512bb664e", "usr-verity", Some("arm64")),
    ("6db69de6-29f4-4758-a7a5-962190f00ce3", "root-verity-sig", Some("arm64")),
    ("c23ce4ff-44bd-4b00-b2d4-b41b3419e02a", "usr-verity-sig", Some("arm64")),
    ("44479540-f297-41b2-9af7-d131d5f0458a", "root", Some("x86")),
    ("75250d76-8cc6-458e-bd66-bd47cc81a812", "usr", Some("x86")),
    ("d13c5d3b-b5d1-422a-b29f-9454fdc89d76", "root-verity", Some("x86")),
    ("8f461b0d-14ee-4e81-9aa9-049b6fb97abd", "usr-verity", Some("x86")),
    ("5996fc05-109c-48de-808b-23fa0830b676", "root-verity-sig", Some("x86")),
    ("974a71c0-de41-43c3-be5d-5c5ccd1ad2c0", "usr-verity-sig", Some("x86")),
    ("69dad710-2ce4-4e3c-b16c-21a1d49abed3", "root", Some("arm")),
    ("7d0359a3-02b3-4f0a-865c-654403e70625", "usr", Some("arm")),
    ("7386cdf2-203c-47a9-a498-f2ecce45a2d6", "root-verity", Some("arm")),
    ("c215d751-7bcd-4649-be90-6627490a4c05", "usr-verity", Some("arm")),
    ("42b0455f-eb11-491d-98d3-56145ba9d037", "root-verity-sig", Some("arm")),
    ("d7ff812f-37d1-4902-a810-d76ba57b975a", "usr-verity-sig", Some("arm")),
    ("72ec70a6-cf74-40e6-bd49-4bda08e8f224", "root", Some("riscv64")),
    ("beaec34b-8442-439b-a40b-984381ed097d", "usr", Some("riscv64")),
    ("b6ed5582-440b-4209-b8da-5ff7c419ea3d", "root-verity", Some("riscv64")),
    ("8f1056be-9b05-47c4-81d6-be53128e5b54", "usr-verity", Some("riscv64")),
    ("efe0f087-ea8d-4469-821a-4c2a96a8386a", "root-verity-sig", Some("riscv64")),
    ("d2f9000a-7a18-453f-b5cd-4d32f77a7b32", "usr-verity-sig", Some("riscv64")),
    ("c12a7328-f81f-11d2-ba4b-00a0c93ec93b", "esp", None),
    ("bc13c2ff-59e6-4262-a352-b275fd6f7172", "xbootldr", None),
    ("0657fd6d-a4ab-43c4-84e5-0933c84b4f4f", "swap", None),
    ("933ac7e1-2eb4-4f13-b844-0e14e2aef915", "home", None),
    ("3b8f8425-20e0-4f3b-907f-1a25a76f98e8", "srv", None),
    ("4d21b016-b534-45c2-a9fb-5c16e091fd2d", "var", None),
    ("7ec6f557-3bc5-4aca-b293-16ef5df639d1", "tmp", None),
    ("773f91ef-66d4-49b5-bd83-d683bf40ad16", "user-home", None),
    ("0fc63daf-8483-4772-8e79-3d69d8477de4", "linux-generic", None),
];

/// The role and architecture of a partition type; `other` for types the
/// specification does not name.
pub fn classify(type_guid: &Guid) -> (&'static str, Option<&'static str>) {
    let text = type_guid.to_string();
    TYPES.iter().find(|(guid, _, _)| *guid == text).map(|(_, role, arch)| (*role, *arch)).unwrap_or(("other", None))
}

/// This machine's architecture as the specification names it.
pub fn host_architecture() -> &'static str {
    match std::env::consts::ARCH {
        "x86_64" => "x86-64",
        "aarch64" => "arm64",
        "x86" => "x86",
        "arm" => "arm",
        "riscv64" => "riscv64",
        other => other,
    }
}

/// The partition to read the tree from: the first root partition for
/// `arch`, else the first /usr partition for it, skipping those marked
/// no-auto. An index into `partitions`.
pub fn choose(partitions: &[Partition], flags: &[u64], arch: &str) -> Option<usize> {
    ["root", "usr"].iter().find_map(|role| {
        partitions.iter().zip(flags).position(|(p, flags)| {
            p.role == *role && p.architecture.as_deref() == Some(arch) && flags & FLAG_NO_AUTO == 0
        })
    })
}

fn corrupt(image: &Path, reason: impl Into<String>) -> Error {
    Error::Corrupt { image: image.to_path_buf(), kind: ImageKind::Gpt, reason: reason.into() }
}

/// Reads and checks the partition table: the primary header, else the
/// backup one at the end of the disk, for 512- then 4096-byte blocks.
/// Returns the block size and the used entries.
pub fn read_table(image: &Path, disk: &FileSlice) -> Result<(u64, Vec<Entry>)> {
    let mut problems = Vec::new();
    for lba_size in LBA_SIZES {
        let last_lba = (disk.len() / lba_size).saturating_sub(1);
        for lba in [1, last_lba] {
            if lba < 1 {
                continue;
            }
            let mut sector = vec![0u8; lba_size as usize];
            if disk.read_exact_at(&mut sector, lba * lba_size).is_err() {
                continue;
            }
            if &sector[..8] != SIGNATURE {
                continue;
            }
            let header = match parse_header(&sector, lba) {
                Ok(header) => header,
                Err(problem) => {
                    problems.push(problem);
                    continue;
                }
            };
            let mut table = vec![0u8; header.table_bytes() as usize];
            let at =
                header.entries_lba.checked_mul(lba_size).ok_or_else(|| corrupt(image, "GPT table offset overflows"))?;
            if let Err(e) = disk.read_exact_at(&mut table, at) {
                problems.push(match e.kind() {
                    std::io::ErrorKind::UnexpectedEof => format!("truncated: {e}, in the GPT partition table"),
                    _ => format!("cannot read the GPT partition table: {e}"),
                });
                continue;
            }
            match parse_entries(&table, &header) {
                Ok(entries) => {
                    if lba != 1 {
                        tracing::warn!(image = %image.display(), "primary GPT header unusable, read the backup header");
                    }
                    return Ok((lba_size, entries));
                }
                Err(problem) => problems.push(problem),
            }
        }
    }
    problems.dedup();
    Err(corrupt(image, if problems.is_empty() { "no GPT header found".into() } else { problems.join("; ") }))
}

/// The partitions of a GPT disk image and the one to use.
#[derive(Debug)]
pub struct Layout {
    pub partitions: Vec<Partition>,
    /// Index of the root (or /usr) partition for this machine's architecture.
    pub chosen: usize,
    /// The file system in it.
    pub fs: ImageKind,
    /// Whether its GPT flags mark it read-only.
    pub read_only: bool,
}

impl Layout {
    pub fn chosen(&self) -> &Partition {
        &self.partitions[self.chosen]
    }

    /// Whether the chosen partition is a whole root file system (what a
    /// machine boots), not a /usr partition alone.
    pub fn has_root(&self) -> bool {
        self.chosen().role == "root"
    }
}

/// Reads the partition table of a GPT disk image and chooses the root (or
/// /usr) partition for this machine's architecture.
pub fn layout(image: &Path, file: &Arc<File>) -> Result<Layout> {
    let disk_len = file_len(file).map_err(Error::io(image))?;
    let disk = FileSlice::new(file.clone(), 0, disk_len);
    let (lba_size, entries) = read_table(image, &disk)?;
    let mut partitions = Vec::with_capacity(entries.len());
    let mut flags = Vec::with_capacity(entries.len());
    for entry in &entries {
        let (role, architecture) = classify(&entry.type_guid);
        let offset = entry.first_lba.checked_mul(lba_size);
        let size = (entry.last_lba - entry.first_lba).checked_add(1).and_then(|blocks| blocks.checked_mul(lba_size));
        let (Some(offset), Some(size)) = (offset, size) else {
            return Err(corrupt(image, format!("partition {} has an impossible extent", entry.uuid)));
        };
        if offset.checked_add(size).is_none_or(|end| end > disk_len) {
            return Err(corrupt(
                image,
                format!("partition {} ('{}') extends past the end of the disk", entry.uuid, entry.label),
            ));
        }
        partitions.push(Partition {
            role: role.to_string(),
            architecture: architecture.map(str::to_string),
            type_uuid: entry.type_guid.to_string(),
            uuid: entry.uuid.to_string(),
            label: entry.label.clone(),
            offset,
            size,
            used: false,
        });
        flags.push(entry.flags);
    }
    let arch = host_architecture();
    let Some(chosen) = choose(&partitions, &flags, arch) else {
        let found: Vec<String> = partitions
            .iter()
            .map(|p| match &p.architecture {
                Some(a) => format!("{} ({a})", p.role),
                None => p.role.clone(),
            })
            .collect();
        return Err(Error::NoRootPartition {
            image: image.to_path_buf(),
            architecture: arch.to_string(),
            found: if found.is_empty() { "no partitions".into() } else { found.join(", ") },
        });
    };
    partitions[chosen].used = true;
    let part = &partitions[chosen];
    tracing::debug!(image = %image.display(), role = part.role, offset = part.offset, size = part.size, "GPT partition chosen");
    let slice = FileSlice::new(file.clone(), part.offset, part.size);
    let mut head = vec![0u8; MAGIC_PROBE_LEN.min(part.size as usize)];
    slice.read_exact_at(&mut head, 0).map_err(Error::io(image))?;
    let fs = match ImageKind::from_magic(&head) {
        Some(kind @ (ImageKind::Squashfs | ImageKind::Ext4 | ImageKind::Erofs)) => kind,
        _ => {
            return Err(corrupt(
                image,
                format!("the {} partition holds no squashfs, ext4 or erofs file system", part.role),
            ));
        }
    };
    let read_only = flags[chosen] & FLAG_READ_ONLY != 0;
    Ok(Layout { partitions, chosen, fs, read_only })
}

/// The image policy a GPT disk image satisfies as it is: its partitions
/// for this machine's architecture (or for none), each with what it holds
/// (LUKS, or the file system its magic names).
pub fn derived_policy(image: &Path, file: &File) -> Result<DerivedPolicy> {
    let file = Arc::new(file.try_clone().map_err(Error::io(image))?);
    let layout = layout(image, &file)?;
    let arch = host_architecture();
    let mut found: Vec<(&str, Option<ImageKind>, bool)> = Vec::new();
    for part in &layout.partitions {
        if part.architecture.as_deref().is_some_and(|a| a != arch) {
            continue;
        }
        let mut head = vec![0u8; MAGIC_PROBE_LEN.min(part.size as usize)];
        FileSlice::new(file.clone(), part.offset, part.size).read_exact_at(&mut head, 0).map_err(Error::io(image))?;
        found.push((part.role.as_str(), ImageKind::from_magic(&head), head.starts_with(LUKS_MAGIC)));
    }
    let contents: Vec<(&str, PartitionContent<'_>)> = found
        .iter()
        .map(|&(role, kind, luks)| {
            let content = match kind {
                _ if luks => PartitionContent::Encrypted,
                Some(kind @ (ImageKind::Squashfs | ImageKind::Ext4 | ImageKind::Erofs)) => {
                    PartitionContent::FileSystem(Some(kind.as_str()))
                }
                _ => PartitionContent::FileSystem(None),
            };
            (role, content)
        })
        .collect();
    Ok(DerivedPolicy::of_partitions(&contents))
}

/// The first bytes of a LUKS header.
const LUKS_MAGIC: &[u8] = b"LUKS\xba\xbe";

/// Opens a GPT disk image: its partitions, and the tree of the root (or
/// /usr) partition for this machine's architecture.
pub fn open(image: &Path, file: File) -> Result<(Box<dyn Tree>, Vec<Partition>)> {
    open_with(image, file, true)
}

/// [`open`]; a partition only the kernel reads (erofs) is refused unless
/// `mount` allows mounting it.
pub fn open_with(image: &Path, file: File, mount: bool) -> Result<(Box<dyn Tree>, Vec<Partition>)> {
    let file = Arc::new(file);
    let layout = layout(image, &file)?;
    let part = layout.chosen();
    let slice = FileSlice::new(file, part.offset, part.size);
    let tree: Box<dyn Tree> = match layout.fs {
        ImageKind::Squashfs => Box::new(SquashfsTree::open(image, slice)?),
        ImageKind::Ext4 => super::ext4::open(image, slice)?,
        _ if !mount => return Err(Error::NeedsPrivilege { image: image.to_path_buf(), kind: ImageKind::Erofs }),
        _ => super::mount::open(image, ImageKind::Erofs, slice)?,
    };
    let tree = if part.role == "usr" { Box::new(UsrTree { usr: tree }) } else { tree };
    Ok((tree, layout.partitions))
}

/// An image of which only a /usr partition is used: its file system appears
/// at /usr of an otherwise empty root, as systemd mounts it.
struct UsrTree {
    usr: Box<dyn Tree>,
}

impl UsrTree {
    /// The path inside the /usr partition, `None` for the root itself.
    fn inner(path: &str) -> Result<Option<&str>, ()> {
        match path {
            "/" => Ok(None),
            "/usr" => Ok(Some("/")),
            _ => path.strip_prefix("/usr").filter(|rest| rest.starts_with('/')).map(Some).ok_or(()),
        }
    }
}

impl Tree for UsrTree {
    fn entry_type(&mut self, path: &str) -> Result<Option<EntryType>, TreeError> {
        match UsrTree::inner(path) {
            Ok(None) => Ok(Some(EntryType::Dir)),
            Ok(Some(inner)) => self.usr.entry_type(inner),
            Err(()) => Ok(None),
        }
    }

    fn read_link(&mut self, path: &str) -> Result<String, TreeError> {
        match UsrTree::inner(path) {
            Ok(Some(inner)) => self.usr.read_link(inner),
            _ => Err(TreeError::Corrupt { path: path.to_string(), reason: "not a symlink".into() }),
        }
    }

    fn read_file(&mut self, path: &str, limit: u64) -> Result<Vec<u8>, TreeError> {
        match UsrTree::inner(path) {
            Ok(Some(inner)) => self.usr.read_file(inner, limit),
            _ => Err(TreeError::NotAFile(path.to_string())),
        }
    }

    fn read_dir(&mut self, path: &str) -> Result<Vec<(String, EntryType)>, TreeError> {
        match UsrTree::inner(path) {
            Ok(None) => Ok(vec![("usr".to_string(), EntryType::Dir)]),
            Ok(Some(inner)) => self.usr.read_dir(inner),
            Err(()) => Err(TreeError::Io { path: path.to_string(), source: std::io::ErrorKind::NotFound.into() }),
        }
    }

    fn access(&self) -> &'static str {
        self.usr.access()
    }
}

#[cfg(test)]
mod tests {
    use super::super::tree::memory::{MemoryTree, Node};
    use super::super::tree::read_file;
    use super::*;

    fn guid(text: &str) -> Guid {
        let hex: Vec<u8> = text
            .replace('-', "")
            .as_bytes()
            .chunks(2)
            .map(|pair| u8::from_str_radix(std::str::from_utf8(pair).unwrap(), 16).unwrap())
            .collect();
        let mut b: [u8; 16] = hex.try_into().unwrap();
        b[0..4].reverse();
        b[4..6].reverse();
        b[6..8].reverse();
        Guid(b)
    }

    fn entry_bytes(type_guid: &str, first: u64, last: u64, label: &str) -> Vec<u8> {
        let mut e = vec![0u8; 128];
        e[0..16].copy_from_slice(&guid(type_guid).0);
        e[16..32].copy_from_slice(&guid("11111111-2222-3333-4444-555555555555").0);
        e[32..40].copy_from_slice(&first.to_le_bytes());
        e[40..48].copy_from_slice(&last.to_le_bytes());
        for (i, unit) in label.encode_utf16().enumerate() {
            e[56 + 2 * i..58 + 2 * i].copy_from_slice(&unit.to_le_bytes());
        }
        e
    }

    fn header_bytes(lba: u64, entries_lba: u64, count: u32, entry_size: u32, table: &[u8]) -> Vec<u8> {
        let mut h = vec![0u8; 512];
        h[..8].copy_from_slice(SIGNATURE);
        h[8..12].copy_from_slice(&0x0001_0000u32.to_le_bytes());
        h[12..16].copy_from_slice(&92u32.to_le_bytes());
        h[24..32].copy_from_slice(&lba.to_le_bytes());
        h[72..80].copy_from_slice(&entries_lba.to_le_bytes());
        h[80..84].copy_from_slice(&count.to_le_bytes());
        h[84..88].copy_from_slice(&entry_size.to_le_bytes());
        h[88..92].copy_from_slice(&CRC32.checksum(table).to_le_bytes());
        let crc = CRC32.checksum(&h[..92]);
        h[16..20].copy_from_slice(&crc.to_le_bytes());
        h
    }

    #[test]
    fn guids_print_in_mixed_endian_order() {
        let text = "4f68bce3-e8cd-4db1-96e7-fbcaf984b709";
        assert_eq!(guid(text).to_string(), text);
        assert_eq!(guid(text).0[0], 0xe3);
    }

    #[test]
    fn partition_types_are_classified() {
        assert_eq!(classify(&guid("4f68bce3-e8cd-4db1-96e7-fbcaf984b709")), ("root", Some("x86-64")));
        assert_eq!(classify(&guid("b921b045-1df0-41c3-af44-4c6f280d3fae")), ("root", Some("arm64")));
        assert_eq!(classify(&guid("2c7357ed-ebd2-46d9-aec1-23d437ec2bf5")), ("root-verity", Some("x86-64")));
        assert_eq!(classify(&guid("c23ce4ff-44bd-4b00-b2d4-b41b3419e02a")), ("usr-verity-sig", Some("arm64")));
        assert_eq!(classify(&guid("c12a7328-f81f-11d2-ba4b-00a0c93ec93b")), ("esp", None));
        assert_eq!(classify(&guid("01234567-89ab-cdef-0123-456789abcdef")), ("other", None));
        // Every role/architecture pair appears once.
        for (i, a) in TYPES.iter().enumerate() {
            for b in &TYPES[i + 1..] {
                assert!(a.0 != b.0 && (a.1, a.2) != (b.1, b.2), "{a:?} and {b:?}");
            }
        }
        assert!(["x86-64", "arm64", "x86", "arm", "riscv64"].contains(&host_architecture()));
    }

    fn partition(role: &str, arch: Option<&str>) -> Partition {
        Partition {
            role: role.into(),
            architecture: arch.map(str::to_string),
            type_uuid: String::new(),
            uuid: String::new(),
            label: String::new(),
            offset: 0,
            size: 0,
            used: false,
        }
    }

    #[test]
    fn the_root_for_the_architecture_is_chosen_else_usr() {
        let parts = [
            partition("esp", None),
            partition("root", Some("arm64")),
            partition("usr", Some("x86-64")),
            partition("root-verity", Some("x86-64")),
            partition("root", Some("x86-64")),
        ];
        assert_eq!(choose(&parts, &[0; 5], "x86-64"), Some(4));
        assert_eq!(choose(&parts, &[0, 0, 0, 0, FLAG_NO_AUTO], "x86-64"), Some(2));
        assert_eq!(choose(&parts, &[0; 5], "arm64"), Some(1));
        assert_eq!(choose(&parts, &[0; 5], "riscv64"), None);
        assert_eq!(choose(&parts[..1], &[0], "x86-64"), None);
    }

    #[test]
    fn tables_are_parsed_and_checked() {
        let mut table = entry_bytes("4f68bce3-e8cd-4db1-96e7-fbcaf984b709", 2048, 4095, "root-x86-64");
        table.extend(vec![0u8; 128]);
        table.extend(entry_bytes("2c7357ed-ebd2-46d9-aec1-23d437ec2bf5", 4096, 4100, "verity"));
        let header = parse_header(&header_bytes(1, 2, 3, 128, &table), 1).unwrap();
        assert_eq!(
            header,
            Header { entries_lba: 2, entry_count: 3, entry_size: 128, entries_crc: CRC32.checksum(&table) }
        );
        let entries = parse_entries(&table, &header).unwrap();
        assert_eq!(entries.len(), 2);
        assert_eq!(entries[0].label, "root-x86-64");
        assert_eq!((entries[0].first_lba, entries[0].last_lba), (2048, 4095));
        assert_eq!(entries[1].type_guid.to_string(), "2c7357ed-ebd2-46d9-aec1-23d437ec2bf5");

        // Larger entries, as the UEFI specification allows.
        let mut wide = entry_bytes("4f68bce3-e8cd-4db1-96e7-fbcaf984b709", 34, 40, "x");
        wide.extend(vec![0u8; 128]);
        let header = parse_header(&header_bytes(1, 2, 1, 256, &wide), 1).unwrap();
        assert_eq!(parse_entries(&wide, &header).unwrap().len(), 1);
    }

    #[test]
    fn forged_tables_are_refused() {
        let table = entry_bytes("4f68bce3-e8cd-4db1-96e7-fbcaf984b709", 10, 5, "backwards");
        let good = header_bytes(1, 2, 1, 128, &table);
        let mut bad_crc = good.clone();
        bad_crc[80] = 2;
        let cases = [
            (parse_header(&good, 7).unwrap_err(), "says it is at block 1"),
            (parse_header(&bad_crc, 1).unwrap_err(), "checksum mismatch"),
            (parse_header(&header_bytes(1, 2, 1, 100, &table), 1).unwrap_err(), "entry size 100"),
            (parse_header(&header_bytes(1, 2, 1 << 20, 128, &table), 1).unwrap_err(), "implausibly large"),
            (parse_header(&header_bytes(1, 1, 1, 128, &table), 1).unwrap_err(), "overlap the headers"),
            (parse_header(&[0u8; 512], 1).unwrap_err(), "no GPT header"),
        ];
        for (error, expected) in cases {
            assert!(error.contains(expected), "{error:?} does not say {expected:?}");
        }
        let header = parse_header(&good, 1).unwrap();
        assert!(parse_entries(&table, &header).unwrap_err().contains("ends before it starts"));
        assert!(parse_entries(&table[..64], &header).unwrap_err().contains("truncated"));
        let mut flipped = table.clone();
        flipped[100] ^= 1;
        assert!(parse_entries(&flipped, &header).unwrap_err().contains("checksum mismatch"));
    }

    #[test]
    fn a_usr_partition_appears_at_usr() {
        let usr = MemoryTree::with(&[
            ("/lib/os-release", Node::File(b"ID=x\n".to_vec())),
            ("/lib/link", Node::Link("/usr/lib/os-release".into())),
        ]);
        let mut tree = UsrTree { usr: Box::new(usr) };
        assert_eq!(tree.read_dir("/").unwrap(), [("usr".to_string(), EntryType::Dir)]);
        assert_eq!(tree.entry_type("/etc").unwrap(), None);
        assert_eq!(tree.entry_type("/usrx").unwrap(), None);
        assert_eq!(read_file(&mut tree, "/usr/lib/os-release", 10).unwrap(), Some(b"ID=x\n".to_vec()));
        assert_eq!(read_file(&mut tree, "/usr/lib/link", 10).unwrap(), Some(b"ID=x\n".to_vec()));
    }
}
