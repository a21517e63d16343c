//! dm-verity data of GPT disk images (Discoverable Partitions
//! Specification): a root partition with a `root-verity` partition beside
//! it holding its hash tree (with the superblock `veritysetup format`
//! writes), and optionally a `root-verity-sig` partition holding the root
//! hash and its PKCS#7 signature as JSON.
//!
//! What verity guarantees is that the bytes read are those the root hash
//! was computed over. The root hash is what has to be trusted; a hash tree
//! only says which hash the data has. wharf learns the root hash, in
//! systemd's order, from the image's `user.verity.roothash` xattr, a
//! `.roothash` file beside it, the signature partition, or the partition
//! UUIDs that systemd-repart derives from it (data partition: its first 128
//! bits, verity partition: its last 128). All of these come with the image,
//! so they prove nothing about where it came from (only a signature checked
//! against a trusted key does, which is the kernel's or systemd's business
//! at activation). What wharf makes of them is a pin: the whole root
//! partition is checked against the root hash when the image is attached or
//! booted (so an image modified since it was made, a flipped byte, is
//! refused in one line naming the partition), and the root hash found then
//! is written into the attachment (`RootHash=`), so that a file modified or
//! swapped under the attachment later no longer opens.

use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use sha2::{Digest, Sha256};

use super::gpt::Layout;
use super::slice::FileSlice;
use super::{Error, Result};

/// The start of a verity superblock (`veritysetup format` without
/// `--no-superblock`, as systemd-repart writes it too).
const SUPERBLOCK_MAGIC: &[u8; 8] = b"verity\0\0";
const SUPERBLOCK_LEN: usize = 512;
/// A bound on the JSON of a signature partition (systemd writes one 4 KiB
/// block; a forged partition cannot make wharf read more).
const MAX_SIGNATURE_JSON: u64 = 64 * 1024;
/// A bound on the hash tree held in memory while checking (a 32 GiB
/// partition of 4 KiB blocks has a 256 MiB tree level; a sparse file can
/// claim any size for nothing): beyond it the image is refused rather than
/// checked.
const MAX_TREE_BYTES: u64 = 256 << 20;
/// The xattr and sidecar suffixes systemd reads the root hash from.
pub const ROOT_HASH_XATTR: &str = "user.verity.roothash";

/// The parameters of a hash tree, from its superblock.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Superblock {
    /// 1: the salt is hashed before each block (0, Chrome OS's, after it).
    pub hash_type: u32,
    pub algorithm: String,
    pub data_block_size: u32,
    pub hash_block_size: u32,
    pub data_blocks: u64,
    pub salt: Vec<u8>,
}

/// Parses a verity superblock (the first 512 bytes of a hash partition).
pub fn parse_superblock(bytes: &[u8]) -> Result<Superblock, String> {
    if bytes.len() < SUPERBLOCK_LEN || &bytes[..8] != SUPERBLOCK_MAGIC {
        return Err("no verity superblock".into());
    }
    let u32_at = |at: usize| u32::from_le_bytes(bytes[at..at + 4].try_into().expect("4 bytes"));
    let version = u32_at(8);
    if version != 1 {
        return Err(format!("verity superblock version {version} is not 1"));
    }
    let hash_type = u32_at(12);
    if hash_type > 1 {
        return Err(format!("verity hash type {hash_type} is unknown"));
    }
    let algorithm: Vec<u8> = bytes[32..64].iter().copied().take_while(|&b| b != 0).collect();
    let algorithm = String::from_utf8_lossy(&algorithm).to_ascii_lowercase();
    let (data_block_size, hash_block_size) = (u32_at(64), u32_at(68));
    for size in [data_block_size, hash_block_size] {
        if !size.is_power_of_two() || !(512..=65536).contains(&size) {
            return Err(format!("verity block size {size} is invalid"));
        }
    }
    let data_blocks = u64::from_le_bytes(bytes[72..80].try_into().expect("8 bytes"));
    if data_blocks == 0 {
        return Err("the verity superblock covers no data".into());
    }
    let salt_size = usize::from(u16::from_le_bytes([bytes[80], bytes[81]]));
    if salt_size > 256 {
        return Err(format!("verity salt of {salt_size} bytes is too long"));
    }
    let salt = bytes[88..88 + salt_size].to_vec();
    Ok(Superblock { hash_type, algorithm, data_block_size, hash_block_size, data_blocks, salt })
}

impl Superblock {
    fn hash(&self, block: &[u8]) -> [u8; 32] {
        let mut hasher = Sha256::new();
        if self.hash_type == 1 {
            hasher.update(&self.salt);
            hasher.update(block);
        } else {
            hasher.update(block);
            hasher.update(&self.salt);
        }
        hasher.finalize().into()
    }

    /// Hashes in one hash block (each digest takes a power-of-two slot).
    fn per_block(&self) -> u64 {
        u64::from(self.hash_block_size) / 32
    }

    /// The number of tree levels, as the kernel counts them: the fewest
    /// with which one hash block at the top covers every data block.
    pub fn levels(&self) -> u32 {
        let bits = self.per_block().trailing_zeros();
        let mut levels = 0;
        while bits * levels < 64 && (self.data_blocks - 1) >> (bits * levels) != 0 {
            levels += 1;
        }
        levels
    }

    /// Where the tree starts in the hash partition: after the superblock,
    /// rounded up to a hash block.
    fn tree_start(&self) -> u64 {
        (SUPERBLOCK_LEN as u64).next_multiple_of(u64::from(self.hash_block_size))
    }

    /// The blocks of level `level` (0 hashes the data).
    fn level_blocks(&self, level: u32) -> u64 {
        let bits = self.per_block().trailing_zeros() * (level + 1);
        if bits >= 64 { 1 } else { self.data_blocks.div_ceil(1 << bits) }
    }

    /// The offset of each level in the hash partition: the top level first.
    fn level_offsets(&self) -> Vec<u64> {
        let levels = self.levels();
        let mut offsets = vec![0; levels as usize];
        let mut at = self.tree_start();
        for level in (0..levels).rev() {
            offsets[level as usize] = at;
            at += self.level_blocks(level) * u64::from(self.hash_block_size);
        }
        offsets
    }

    /// The bytes of hash partition the tree needs.
    fn tree_end(&self) -> u64 {
        let levels = self.levels();
        (0..levels).fold(self.tree_start(), |at, l| at + self.level_blocks(l) * u64::from(self.hash_block_size))
    }
}

/// Packs digests into hash blocks, each zero-padded to the block size.
fn pack(digests: &[[u8; 32]], sb: &Superblock) -> Vec<u8> {
    let per_block = sb.per_block() as usize;
    let block = sb.hash_block_size as usize;
    let mut out = Vec::with_capacity(digests.len().div_ceil(per_block) * block);
    for chunk in digests.chunks(per_block) {
        let start = out.len();
        for digest in chunk {
            out.extend_from_slice(digest);
        }
        out.resize(start + block, 0);
    }
    out
}

/// Why a partition does not match its verity data.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Mismatch {
    /// A data block hashes to another value than the tree holds for it.
    Data { block: u64 },
    /// The tree is not the one computed from the data (its upper levels).
    Tree,
    /// Data and tree agree, but their root hash is another.
    RootHash { found: String },
}

/// Computes the hash tree of the data `read_block` returns (block by
/// block, in order) and compares it with the tree stored in
/// `stored_level(level, offset, len)`; returns the root hash on success.
pub fn check_tree(
    sb: &Superblock,
    mut read_blocks: impl FnMut(u64, &mut [u8]) -> std::io::Result<()>,
    mut stored: impl FnMut(u64, &mut [u8]) -> std::io::Result<()>,
    expected_root: &[u8; 32],
) -> std::io::Result<Result<(), Mismatch>> {
    let block = sb.data_block_size as usize;
    // One MiB at a time (whole blocks).
    let batch = (1usize << 20).max(block) / block;
    let mut digests: Vec<[u8; 32]> = Vec::with_capacity(sb.data_blocks.min(1 << 20) as usize);
    let mut buf = vec![0u8; batch * block];
    let mut index = 0u64;
    while index < sb.data_blocks {
        let count = (sb.data_blocks - index).min(batch as u64) as usize;
        let bytes = &mut buf[..count * block];
        read_blocks(index * block as u64, bytes)?;
        digests.extend(bytes.chunks_exact(block).map(|b| sb.hash(b)));
        index += count as u64;
    }
    let offsets = sb.level_offsets();
    let mut current = digests;
    for (level, offset) in offsets.iter().enumerate() {
        let packed = pack(&current, sb);
        let mut on_disk = vec![0u8; packed.len()];
        stored(*offset, &mut on_disk)?;
        if packed != on_disk {
            if level == 0 {
                let (per_block, hash_block) = (sb.per_block() as usize, sb.hash_block_size as usize);
                let slot = |i: usize| &on_disk[i / per_block * hash_block + i % per_block * 32..][..32];
                if let Some(block) = current.iter().enumerate().position(|(i, d)| d[..] != *slot(i)) {
                    return Ok(Err(Mismatch::Data { block: block as u64 }));
                }
            }
            return Ok(Err(Mismatch::Tree));
        }
        current = packed.chunks_exact(sb.hash_block_size as usize).map(|b| sb.hash(b)).collect();
    }
    debug_assert_eq!(current.len(), 1);
    let root = current[0];
    if &root != expected_root {
        return Ok(Err(Mismatch::RootHash { found: hex(&root) }));
    }
    Ok(Ok(()))
}

pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// A root hash in hex: 64 digits (sha256), either case.
pub fn parse_root_hash(text: &str) -> Result<[u8; 32], String> {
    let text = text.trim();
    if text.len() != 64 || !text.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Err(format!("'{}' is not a sha256 root hash (64 hex digits)", text.escape_debug()));
    }
    let mut out = [0u8; 32];
    for (i, pair) in text.as_bytes().chunks(2).enumerate() {
        out[i] = u8::from_str_radix(std::str::from_utf8(pair).expect("ascii"), 16).expect("hex digits");
    }
    Ok(out)
}

/// The root hash systemd-repart encodes in the partition UUIDs: the data
/// partition's UUID is its first 128 bits, the verity partition's its last.
pub fn root_hash_from_uuids(data_uuid: &str, verity_uuid: &str) -> Option<[u8; 32]> {
    parse_root_hash(&format!("{}{}", data_uuid.replace('-', ""), verity_uuid.replace('-', ""))).ok()
}

/// The contents of a signature partition.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Signature {
    pub root_hash: [u8; 32],
    /// The PKCS#7 signature, base64 as stored (for `RootHashSignature=base64:`).
    pub signature: String,
}

/// Parses the JSON of a `root-verity-sig` partition (NUL-padded).
pub fn parse_signature(bytes: &[u8]) -> Result<Signature, String> {
    let end = bytes.iter().rposition(|&b| b != 0).map_or(0, |i| i + 1);
    let value: serde_json::Value =
        serde_json::from_slice(&bytes[..end]).map_err(|e| format!("its signature partition is not JSON: {e}"))?;
    let field = |name: &str| {
        value.get(name).and_then(|v| v.as_str()).ok_or_else(|| format!("its signature partition has no '{name}'"))
    };
    let root_hash = parse_root_hash(field("rootHash")?).map_err(|e| format!("its signature partition: {e}"))?;
    let signature = field("signature")?.to_string();
    let base64 = |b: u8| b.is_ascii_alphanumeric() || b == b'+' || b == b'/' || b == b'=';
    if signature.is_empty() || !signature.bytes().all(base64) {
        return Err("its signature partition's signature is not base64".into());
    }
    Ok(Signature { root_hash, signature })
}

/// Where a root hash was learnt.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Source {
    Given,
    Xattr,
    Sidecar(PathBuf),
    SignaturePartition,
    PartitionUuids,
}

impl std::fmt::Display for Source {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Source::Given => write!(f, "as given"),
            Source::Xattr => write!(f, "from the image's {ROOT_HASH_XATTR} xattr"),
            Source::Sidecar(path) => write!(f, "from {}", path.display()),
            Source::SignaturePartition => write!(f, "from its signature partition"),
            Source::PartitionUuids => write!(f, "from its partition UUIDs"),
        }
    }
}

/// The verity data of an image's root (or /usr) partition.
#[derive(Debug, Clone)]
pub struct Protected {
    /// `root` or `usr`.
    pub role: String,
    pub root_hash: [u8; 32],
    pub source: Source,
    /// From the signature partition, when there is one.
    pub signature: Option<Signature>,
    pub superblock: Superblock,
    data: (u64, u64),
    hash: (u64, u64),
}

impl Protected {
    pub fn root_hash_hex(&self) -> String {
        hex(&self.root_hash)
    }
}

/// The sidecar systemd reads beside an image: `foo.raw` → `foo.SUFFIX`,
/// any other name gets `.SUFFIX` appended.
pub fn sidecar(image: &Path, suffix: &str) -> PathBuf {
    let name = image.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    let stem = name.strip_suffix(".raw").unwrap_or(&name);
    image.with_file_name(format!("{stem}.{suffix}"))
}

fn invalid(image: &Path, reason: impl Into<String>) -> Error {
    Error::Verity { image: image.to_path_buf(), reason: reason.into() }
}

/// The verity data of the partition `layout` chose, if it has a verity
/// partition beside it: its superblock, and the root hash from `given`,
/// else the places systemd looks, else the partition UUIDs.
pub fn find(image: &Path, file: &Arc<File>, layout: &Layout, given: Option<&str>) -> Result<Option<Protected>> {
    let data = layout.chosen();
    let arch = data.architecture.as_deref();
    let partner = |role: String| layout.partitions.iter().find(|p| p.role == role && p.architecture.as_deref() == arch);
    let Some(verity) = partner(format!("{}-verity", data.role)) else {
        if given.is_some() {
            return Err(invalid(image, format!("a root hash was given, but it has no {}-verity partition", data.role)));
        }
        return Ok(None);
    };
    let role = data.role.clone();
    let slice = |p: &super::Partition| FileSlice::new(file.clone(), p.offset, p.size);
    let mut head = [0u8; SUPERBLOCK_LEN];
    slice(verity).read_exact_at(&mut head, 0).map_err(Error::io(image))?;
    let superblock =
        parse_superblock(&head).map_err(|why| invalid(image, format!("its {role}-verity partition: {why}")))?;
    if superblock.algorithm != "sha256" {
        return Err(invalid(
            image,
            format!("its {role}-verity partition uses {}, wharf checks sha256 trees", superblock.algorithm),
        ));
    }
    let covered = superblock.data_blocks.checked_mul(u64::from(superblock.data_block_size));
    if covered.is_none_or(|c| c > data.size) {
        return Err(invalid(image, format!("its {role}-verity partition covers more than its {role} partition")));
    }
    if superblock.tree_end() > verity.size {
        return Err(invalid(image, format!("its {role}-verity partition is too small for its hash tree")));
    }
    if superblock.data_blocks.saturating_mul(32) > MAX_TREE_BYTES {
        return Err(invalid(image, format!("its {role} partition is too large to check")));
    }
    let signature = match partner(format!("{role}-verity-sig")) {
        Some(sig) => {
            let mut bytes = vec![0u8; sig.size.min(MAX_SIGNATURE_JSON) as usize];
            slice(sig).read_exact_at(&mut bytes, 0).map_err(Error::io(image))?;
            Some(parse_signature(&bytes).map_err(|why| invalid(image, why))?)
        }
        None => None,
    };
    let (root_hash, source) = root_hash(image, data, verity, given, signature.as_ref(), &role)?;
    Ok(Some(Protected {
        role,
        root_hash,
        source,
        signature,
        superblock,
        data: (data.offset, data.size),
        hash: (verity.offset, verity.size),
    }))
}

fn root_hash(
    image: &Path,
    data: &super::Partition,
    verity: &super::Partition,
    given: Option<&str>,
    signature: Option<&Signature>,
    role: &str,
) -> Result<([u8; 32], Source)> {
    if let Some(text) = given {
        return Ok((parse_root_hash(text).map_err(|why| invalid(image, why))?, Source::Given));
    }
    // The xattr and sidecar are systemd's names for the root partition's hash.
    let (xattr, suffix) =
        if role == "usr" { ("user.verity.usrhash", "usrhash") } else { (ROOT_HASH_XATTR, "roothash") };
    if let Ok(Some(value)) = xattr::get(image, xattr) {
        let text = String::from_utf8_lossy(&value).into_owned();
        return Ok((
            parse_root_hash(&text).map_err(|why| invalid(image, format!("its {xattr} xattr: {why}")))?,
            Source::Xattr,
        ));
    }
    let side = sidecar(image, suffix);
    // A root hash is 64 hex digits and a newline; whoever placed the image
    // placed this file too, so it is read as a small regular file only.
    match crate::fs::read_small_regular(&side, 4096) {
        Ok(Some(bytes)) => {
            let text = String::from_utf8_lossy(&bytes).into_owned();
            let hash = parse_root_hash(&text).map_err(|why| invalid(image, format!("{}: {why}", side.display())))?;
            return Ok((hash, Source::Sidecar(side)));
        }
        Ok(None) => {}
        Err(e) => return Err(invalid(image, format!("{}: {e}", side.display()))),
    }
    if let Some(signature) = signature {
        return Ok((signature.root_hash, Source::SignaturePartition));
    }
    root_hash_from_uuids(&data.uuid, &verity.uuid).map(|h| (h, Source::PartitionUuids)).ok_or_else(|| {
        invalid(image, format!("the root hash of its {role} partition is not known (give it in {})", side.display()))
    })
}

/// Checks every block of the partition against the hash tree and the tree
/// against the root hash; a mismatch is [`Error::VerityMismatch`] naming
/// the partition.
pub fn verify(image: &Path, file: &Arc<File>, protected: &Protected) -> Result<()> {
    let data = FileSlice::new(file.clone(), protected.data.0, protected.data.1);
    let hash = FileSlice::new(file.clone(), protected.hash.0, protected.hash.1);
    let result = check_tree(
        &protected.superblock,
        |at, buf| data.read_exact_at(buf, at),
        |at, buf| hash.read_exact_at(buf, at),
        &protected.root_hash,
    )
    .map_err(Error::io(image))?;
    let role = &protected.role;
    let (partition, reason) = match result {
        Ok(()) => return Ok(()),
        Err(Mismatch::Data { block }) => (role.clone(), format!("block {block} differs")),
        Err(Mismatch::Tree) => (format!("{role}-verity"), "its hash tree is not that of the data".to_string()),
        // UUIDs that do not carry the hash tree's root hash were not made
        // from it (random ones, or a tree made again after a change): the
        // root hash is not known rather than mismatched.
        Err(Mismatch::RootHash { .. }) if protected.source == Source::PartitionUuids => {
            let side = sidecar(image, if role == "usr" { "usrhash" } else { "roothash" });
            return Err(invalid(
                image,
                format!(
                    "the root hash of its {role} partition is not known: its partition UUIDs are not derived from it as systemd-repart derives them (give it in {})",
                    side.display()
                ),
            ));
        }
        Err(Mismatch::RootHash { found }) => (
            role.clone(),
            format!("its root hash is {found}, not {} ({})", protected.root_hash_hex(), protected.source),
        ),
    };
    Err(Error::VerityMismatch { image: image.to_path_buf(), partition, reason })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn superblock(data_blocks: u64, salt: &[u8], block: u32) -> Vec<u8> {
        let mut sb = vec![0u8; 512];
        sb[..8].copy_from_slice(SUPERBLOCK_MAGIC);
        sb[8..12].copy_from_slice(&1u32.to_le_bytes());
        sb[12..16].copy_from_slice(&1u32.to_le_bytes());
        sb[32..38].copy_from_slice(b"sha256");
        sb[64..68].copy_from_slice(&block.to_le_bytes());
        sb[68..72].copy_from_slice(&block.to_le_bytes());
        sb[72..80].copy_from_slice(&data_blocks.to_le_bytes());
        sb[80..82].copy_from_slice(&(salt.len() as u16).to_le_bytes());
        sb[88..88 + salt.len()].copy_from_slice(salt);
        sb
    }

    /// A hash partition for `data`, built the slow obvious way (levels
    /// bottom up, stored top down), to check the checker against.
    fn build(data: &[u8], salt: &[u8], block: u32) -> (Vec<u8>, [u8; 32]) {
        let sb = parse_superblock(&superblock((data.len() / block as usize) as u64, salt, block)).unwrap();
        let mut levels = Vec::new();
        let mut hashes: Vec<[u8; 32]> = data.chunks(block as usize).map(|b| sb.hash(b)).collect();
        for _ in 0..sb.levels() {
            let packed = pack(&hashes, &sb);
            hashes = packed.chunks(block as usize).map(|b| sb.hash(b)).collect();
            levels.push(packed);
        }
        let mut partition = superblock(sb.data_blocks, salt, block);
        partition.resize(block as usize, 0);
        for level in levels.iter().rev() {
            partition.extend_from_slice(level);
        }
        (partition, hashes[0])
    }

    fn check(data: &[u8], tree: &[u8], root: &[u8; 32]) -> Result<(), Mismatch> {
        let sb = parse_superblock(tree).unwrap();
        let read = |src: &[u8], at: u64, buf: &mut [u8]| {
            buf.copy_from_slice(&src[at as usize..at as usize + buf.len()]);
            Ok(())
        };
        check_tree(&sb, |at, buf| read(data, at, buf), |at, buf| read(tree, at, buf), root).unwrap()
    }

    #[test]
    fn levels_are_counted_as_the_kernel_counts_them() {
        let sb = |blocks| parse_superblock(&superblock(blocks, b"", 4096)).unwrap();
        assert_eq!(sb(1).levels(), 0);
        assert_eq!(sb(2).levels(), 1);
        assert_eq!(sb(128).levels(), 1);
        assert_eq!(sb(129).levels(), 2);
        assert_eq!(sb(128 * 128).levels(), 2);
        assert_eq!(sb(128 * 128 + 1).levels(), 3);
        let s = sb(300);
        assert_eq!((s.level_blocks(0), s.level_blocks(1)), (3, 1));
        assert_eq!(s.level_offsets(), [8192, 4096], "the top level first, after the superblock");
        assert_eq!(s.tree_end(), 4096 * 5);
    }

    #[test]
    fn a_tree_matches_its_data_and_a_flipped_byte_is_found() {
        let block = 512u32;
        let data: Vec<u8> = (0..300 * block as usize).map(|i| (i * 7 % 251) as u8).collect();
        let salt = [0x5a; 32];
        let (tree, root) = build(&data, &salt, block);
        assert_eq!(check(&data, &tree, &root), Ok(()));

        let mut flipped = data.clone();
        flipped[200 * block as usize + 3] ^= 1;
        assert_eq!(check(&flipped, &tree, &root), Err(Mismatch::Data { block: 200 }));

        let mut bad_tree = tree.clone();
        let top = parse_superblock(&tree).unwrap().level_offsets()[1] as usize;
        bad_tree[top + 5] ^= 1;
        assert_eq!(check(&data, &bad_tree, &root), Err(Mismatch::Tree));

        // A consistent image with another root hash than the one trusted:
        // rebuilt after the change, as a tamperer would.
        let (rebuilt, other_root) = build(&flipped, &salt, block);
        assert_eq!(check(&flipped, &rebuilt, &root), Err(Mismatch::RootHash { found: hex(&other_root) }));
        assert_eq!(check(&flipped, &rebuilt, &other_root), Ok(()));
    }

    #[test]
    fn superblocks_are_checked() {
        let good = superblock(10, b"salt", 4096);
        let sb = parse_superblock(&good).unwrap();
        assert_eq!((sb.algorithm.as_str(), sb.data_blocks, sb.salt.as_slice()), ("sha256", 10, &b"salt"[..]));
        let mut cases = Vec::new();
        let mut version = good.clone();
        version[8] = 2;
        cases.push((version, "version 2"));
        let mut size = good.clone();
        size[64..68].copy_from_slice(&1000u32.to_le_bytes());
        cases.push((size, "block size 1000"));
        let mut salt = good.clone();
        salt[80..82].copy_from_slice(&300u16.to_le_bytes());
        cases.push((salt, "salt of 300 bytes"));
        cases.push((superblock(0, b"", 4096), "covers no data"));
        cases.push((vec![0; 512], "no verity superblock"));
        for (bytes, why) in cases {
            let error = parse_superblock(&bytes).unwrap_err();
            assert!(error.contains(why), "{error:?} does not say {why:?}");
        }
    }

    #[test]
    fn root_hashes_come_from_uuids_and_signatures() {
        let hash = "0123456789abcdef0123456789abcdef00112233445566778899aabbccddeeff";
        let from_uuids =
            root_hash_from_uuids("01234567-89ab-cdef-0123-456789abcdef", "00112233-4455-6677-8899-aabbccddeeff");
        assert_eq!(hex(&from_uuids.unwrap()), hash);
        assert_eq!(root_hash_from_uuids("01234567-89ab-cdef-0123-456789abcdef", "not-a-uuid"), None);
        assert!(parse_root_hash(&hash.to_uppercase()).is_ok());
        assert!(parse_root_hash("abc").unwrap_err().contains("64 hex digits"));

        let mut json =
            format!(r#"{{"rootHash":"{hash}","signature":"MIIB+/a=","certificateFingerprint":"00"}}"#).into_bytes();
        json.resize(4096, 0);
        let sig = parse_signature(&json).unwrap();
        assert_eq!((hex(&sig.root_hash), sig.signature.as_str()), (hash.to_string(), "MIIB+/a="));
        for (bad, why) in [
            (r#"{"signature":"AA=="}"#.to_string(), "no 'rootHash'"),
            (format!(r#"{{"rootHash":"{hash}"}}"#), "no 'signature'"),
            (format!(r#"{{"rootHash":"{hash}","signature":"a\nb"}}"#), "not base64"),
            (r#"{"rootHash":"xyz","signature":"AA=="}"#.to_string(), "64 hex digits"),
            ("nonsense".to_string(), "not JSON"),
        ] {
            let error = parse_signature(bad.as_bytes()).unwrap_err();
            assert!(error.contains(why), "{error:?} does not say {why:?}");
        }
    }

    #[test]
    fn sidecars_are_named_as_systemd_names_them() {
        assert_eq!(sidecar(Path::new("/srv/foo_1.raw"), "roothash"), Path::new("/srv/foo_1.roothash"));
        assert_eq!(sidecar(Path::new("/srv/foo.img"), "roothash"), Path::new("/srv/foo.img.roothash"));
    }
}
