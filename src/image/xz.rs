//! `.raw.xz` images: any raw image kind compressed with xz. They are
//! decompressed before use, either into the pool next to where portablectl
//! users expect raw images (for attaching: systemd's `RootImage=` needs the
//! raw file), or into an anonymous file that disappears when closed (for
//! inspecting, which must not write the pool).
//!
//! Into the pool, nothing half-written ever carries the final name: the
//! image is decompressed into a hidden temporary file in the same
//! directory, checked to be a raw image wharf recognises, synced, and
//! renamed into place; any error or panic removes the temporary file. The
//! result records which xz file it was made from: the path, and the sha256
//! of the compressed bytes, computed while they were decompressed (in the
//! `user.wharf.xz-source` xattr, or a hidden sidecar file where the file
//! system has no user xattrs). Content, not metadata, decides reuse: the
//! same bytes again reuse the copy; other bytes under the same path (even
//! of the same size and modification time) are decompressed anew and
//! replace it; a file of that name made from another path, or not by wharf,
//! is never overwritten.
//!
//! A digest that a caller pins (`sha256 =` of a fleet file) is compared with
//! the digest of the very bytes that are used, read once through the one
//! open descriptor: those decompressed, or, when an earlier copy is reused,
//! those whose digest matched that copy's record.

use std::fs::{File, OpenOptions};
use std::io::{self, Read, Write};
use std::os::fd::AsFd;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use rustix::fs::{MemfdFlags, Mode, OFlags, RenameFlags, XattrFlags};
use sha2::{Digest, Sha256};

use super::squashfs::{SUPERBLOCK_SIZE, check_superblock};
use super::{Error, ImageKind, Result};

/// The extended attribute that says which xz file a raw image was made from.
pub const SOURCE_XATTR: &str = "user.wharf.xz-source";

/// The most an xz image is decompressed to for inspecting it: enough for
/// any portable service image, and a bound on the memory (or disk) that a
/// small, highly compressible file can make an inspection use.
pub const MAX_INSPECT_SIZE: u64 = 1 << 30;

/// Which xz file a decompressed image was made from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SourceRecord {
    pub path: String,
    /// sha256 of the compressed bytes, in lower-case hex; empty in records
    /// of older wharf versions, which only held metadata (never reused).
    pub sha256: String,
}

impl SourceRecord {
    /// One line: `v2 SHA256 PATH` (the path last, as it may contain spaces).
    pub fn encode(&self) -> String {
        format!("v2 {} {}", self.sha256, self.path)
    }

    /// Reads a record; a `v1` record (size and mtime) keeps only its path.
    pub fn decode(text: &str) -> Option<SourceRecord> {
        let text = text.trim_end_matches('\n');
        let (version, rest) = text.split_once(' ')?;
        match version {
            "v2" => {
                let (sha256, path) = rest.split_once(' ')?;
                let valid = sha256.len() == 64 && sha256.chars().all(|c| c.is_ascii_hexdigit());
                valid.then(|| SourceRecord { path: path.to_string(), sha256: sha256.to_ascii_lowercase() })
            }
            "v1" => {
                let mut parts = rest.splitn(3, ' ');
                parts.next()?.parse::<u64>().ok()?;
                parts.next()?.split_once('.')?;
                Some(SourceRecord { path: parts.next()?.to_string(), sha256: String::new() })
            }
            _ => None,
        }
    }
}

/// The name of the raw image an xz image decompresses to: `.xz` stripped
/// (`foobar_2.raw.xz` -> `foobar_2.raw`), or `.raw` appended to a name
/// without it, so that the result never replaces its source.
pub fn target_name(image: &Path) -> Result<String> {
    let name = image.file_name().and_then(|n| n.to_str()).ok_or_else(|| Error::NotAnImage(image.to_path_buf()))?;
    Ok(match name.strip_suffix(".xz") {
        Some(stem) if !stem.is_empty() => stem.to_string(),
        _ => format!("{name}.raw"),
    })
}

fn sidecar(target: &Path) -> PathBuf {
    let name = target.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    target.with_file_name(format!(".{name}.xz-source"))
}

fn xattrs_unsupported(e: &rustix::io::Errno) -> bool {
    *e == rustix::io::Errno::NOTSUP || *e == rustix::io::Errno::OPNOTSUPP
}

/// The record of the raw image at `target`: `Ok(None)` when there is no
/// file there, `Ok(Some(None))` when there is one without a record.
fn read_record(target: &Path) -> io::Result<Option<Option<SourceRecord>>> {
    match target.symlink_metadata() {
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e),
        Ok(meta) if !meta.is_file() => return Ok(Some(None)),
        Ok(_) => {}
    }
    let mut buf = vec![0u8; 4096];
    let text = match rustix::fs::lgetxattr(target, SOURCE_XATTR, &mut buf) {
        Ok(n) => String::from_utf8_lossy(&buf[..n]).into_owned(),
        Err(e) if e == rustix::io::Errno::NODATA || xattrs_unsupported(&e) => {
            match std::fs::read_to_string(sidecar(target)) {
                Ok(text) => text,
                Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Some(None)),
                Err(e) => return Err(e),
            }
        }
        Err(e) => return Err(e.into()),
    };
    Ok(Some(SourceRecord::decode(&text)))
}

/// The record of the raw image wharf made at `target` from an xz image,
/// if there is one: which xz file, and the sha256 of its bytes.
pub fn recorded(target: &Path) -> Option<SourceRecord> {
    read_record(target).ok().flatten().flatten()
}

/// A file removed when dropped (on error or panic) unless kept.
#[derive(Debug)]
struct Removed {
    path: PathBuf,
    keep: bool,
}

impl Drop for Removed {
    fn drop(&mut self) {
        if !self.keep
            && let Err(e) = std::fs::remove_file(&self.path)
            && e.kind() != io::ErrorKind::NotFound
        {
            tracing::warn!(path = %self.path.display(), "cannot remove a temporary file: {e}");
        }
    }
}

/// Lower-case hex of a digest.
fn hex(digest: &[u8]) -> String {
    digest.iter().map(|b| format!("{b:02x}")).collect()
}

/// Reads the compressed image from its start with pread (the descriptor
/// may be shared with the client that opened it: its position is left
/// alone), hashing every byte once, in order, and reporting each step.
struct Progress<'a, F: FnMut(u64, u64)> {
    inner: &'a File,
    done: u64,
    total: u64,
    hasher: Sha256,
    report: F,
}

impl<'a, F: FnMut(u64, u64)> Progress<'a, F> {
    fn new(image: &Path, inner: &'a File, report: F) -> Result<Self> {
        let total = inner.metadata().map_err(Error::io(image))?.len();
        Ok(Progress { inner, done: 0, total, hasher: Sha256::new(), report })
    }

    /// Reads (and hashes) whatever is left after the xz stream, so that the
    /// digest is that of the whole file, as sha256sum(1) gives it.
    fn finish(mut self) -> io::Result<String> {
        let mut buffer = vec![0u8; 1 << 16];
        while self.read(&mut buffer)? != 0 {}
        Ok(hex(&self.hasher.finalize()))
    }
}

impl<F: FnMut(u64, u64)> Read for Progress<'_, F> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        use std::os::unix::fs::FileExt;
        let n = self.inner.read_at(buf, self.done)?;
        self.hasher.update(&buf[..n]);
        self.done += n as u64;
        (self.report)(self.done, self.total);
        Ok(n)
    }
}

/// A reader that fails once more than `limit` bytes came through it.
struct Capped<R: Read> {
    inner: R,
    limit: u64,
    passed: u64,
    exceeded: bool,
}

impl<R: Read> Read for Capped<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.passed += n as u64;
        if self.passed > self.limit {
            self.exceeded = true;
            return Err(io::Error::other("decompressed size limit exceeded"));
        }
        Ok(n)
    }
}

fn corrupt(image: &Path, reason: impl Into<String>) -> Error {
    Error::Corrupt { image: image.to_path_buf(), kind: ImageKind::Xz, reason: reason.into() }
}

/// Decompresses `source` (an xz file, read from its start) into `out`,
/// reporting progress as (compressed bytes read, compressed size), and
/// refusing to produce more than `limit` bytes. Returns the size written
/// and the sha256 of the compressed bytes.
fn decompress(
    image: &Path,
    source: &File,
    out: &mut File,
    limit: Option<u64>,
    progress: impl FnMut(u64, u64),
) -> Result<(u64, String)> {
    let stream = crate::compress::xz_stream_decoder()
        .map_err(|e| corrupt(image, format!("cannot start the xz decoder: {e}")))?;
    let counting = Progress::new(image, source, progress)?;
    let decoder = liblzma::read::XzDecoder::new_stream(counting, stream);
    let mut capped = Capped { inner: decoder, limit: limit.unwrap_or(u64::MAX), passed: 0, exceeded: false };
    let size = crate::fs::copy_sparse(&mut capped, out).map_err(|e| match e {
        _ if capped.exceeded => Error::TooLarge { image: image.to_path_buf(), limit: capped.limit },
        crate::fs::CopyError::Read(e) => corrupt(image, e.to_string()),
        crate::fs::CopyError::Write(e) => Error::Io { path: image.to_path_buf(), source: e },
    })?;
    let digest = capped.inner.into_inner().finish().map_err(Error::io(image))?;
    Ok((size, digest))
}

/// Checks that a decompressed image is a raw image wharf can use, and for
/// squashfs that the file system fits in the file. Returns its kind.
pub fn verify(image: &Path, out: &File) -> Result<ImageKind> {
    use std::os::unix::fs::FileExt;
    let kind = ImageKind::detect_open(out, image)
        .map_err(|_| corrupt(image, "it does not decompress to a squashfs, ext4, erofs or GPT image".to_string()))?;
    match kind {
        ImageKind::Squashfs => {
            let mut head = [0u8; SUPERBLOCK_SIZE];
            out.read_exact_at(&mut head, 0).map_err(|e| corrupt(image, e.to_string()))?;
            let len = out.metadata().map_err(Error::io(image))?.len();
            check_superblock(&head, len)
                .map_err(|reason| corrupt(image, format!("decompressed squashfs: {reason}")))?;
        }
        ImageKind::Xz | ImageKind::Directory => {
            return Err(corrupt(image, format!("it decompresses to {kind}, not to a raw image")));
        }
        ImageKind::Ext4 | ImageKind::Erofs | ImageKind::Gpt => {}
    }
    Ok(kind)
}

/// The sha256 of a whole open file, read with pread from its start (the
/// descriptor's position is left alone), as sha256sum(1) gives it.
pub fn sha256_of(image: &Path, file: &File) -> Result<String> {
    Progress::new(image, file, |_, _| {})?.finish().map_err(Error::io(image))
}

/// Refuses `found` unless it is the digest `wanted` (when one is pinned).
pub fn check_pin(image: &Path, found: &str, wanted: Option<&str>) -> Result<()> {
    match wanted {
        Some(wanted) if !found.eq_ignore_ascii_case(wanted) => Err(Error::WrongDigest {
            image: image.to_path_buf(),
            found: found.to_string(),
            wanted: wanted.to_ascii_lowercase(),
        }),
        _ => Ok(()),
    }
}

/// A raw image made from an xz image, and the sha256 of the xz bytes it was
/// made from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Pooled {
    pub path: PathBuf,
    pub sha256: String,
}

/// What is at the pool's name for an xz image, for bytes of digest `sha256`.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Existing {
    /// Nothing.
    Missing,
    /// A copy made from these bytes: reuse it.
    Current,
    /// A copy wharf made from this path when it held other bytes: replace it.
    Stale,
}

fn existing(image: &Path, target: &Path, sha256: Option<&str>) -> Result<Existing> {
    let path = image.display().to_string();
    match read_record(target).map_err(Error::io(target))? {
        None => Ok(Existing::Missing),
        Some(Some(record)) if sha256.is_some_and(|d| !record.sha256.is_empty() && record.sha256 == d) => {
            Ok(Existing::Current)
        }
        Some(Some(record)) if record.path == path => Ok(Existing::Stale),
        Some(_) => Err(Error::XzTargetExists { image: image.to_path_buf(), target: target.to_path_buf() }),
    }
}

/// The raw image in `dir` that an earlier [`decompress_to_pool`] made from
/// the bytes `image` (open as `source`) holds now; `None` when there is none
/// (it would have to be made). The bytes are hashed to tell, and the digest
/// is checked against `pin`. Another file under its name is an error, as
/// for [`decompress_to_pool`].
pub fn pooled(image: &Path, source: &File, dir: &Path, pin: Option<&str>) -> Result<Option<Pooled>> {
    let target = dir.join(target_name(image)?);
    if existing(image, &target, None)? == Existing::Missing {
        return Ok(None);
    }
    let sha256 = sha256_of(image, source)?;
    check_pin(image, &sha256, pin)?;
    Ok((existing(image, &target, Some(&sha256))? == Existing::Current).then_some(Pooled { path: target, sha256 }))
}

/// Decompresses the xz image `image` (open as `source`) into `dir` under
/// [`target_name`], or reuses what an earlier call made from the same
/// bytes; see the module documentation. `pin`, when given, is the sha256
/// the compressed bytes must have.
pub fn decompress_to_pool(
    image: &Path,
    source: &File,
    dir: &Path,
    pin: Option<&str>,
    progress: impl FnMut(u64, u64),
) -> Result<Pooled> {
    if let Some(pooled) = pooled(image, source, dir, pin)? {
        tracing::debug!(image = %image.display(), target = %pooled.path.display(), "reusing the decompressed image");
        return Ok(pooled);
    }
    let target = dir.join(target_name(image)?);

    static SERIAL: AtomicU64 = AtomicU64::new(0);
    let temp_path = dir.join(format!(
        ".{}.{}-{}.part",
        target.file_name().unwrap_or_default().to_string_lossy(),
        std::process::id(),
        SERIAL.fetch_add(1, Ordering::Relaxed)
    ));
    let mut out = OpenOptions::new()
        .read(true)
        .write(true)
        .create_new(true)
        .mode(0o644)
        .custom_flags(nix::libc::O_CLOEXEC | nix::libc::O_NOFOLLOW)
        .open(&temp_path)
        .map_err(Error::io(&temp_path))?;
    let mut temp = Removed { path: temp_path.clone(), keep: false };
    tracing::debug!(image = %image.display(), temp = %temp_path.display(), "decompressing into the pool");

    let (size, sha256) = decompress(image, source, &mut out, None, progress)?;
    // The digest of the bytes just decompressed, not of an earlier read:
    // the file may have been rewritten in place since.
    check_pin(image, &sha256, pin)?;
    verify(image, &out)?;
    out.sync_all().map_err(Error::io(&temp_path))?;
    let record = SourceRecord { path: image.display().to_string(), sha256: sha256.clone() };
    let encoded = record.encode();
    let mut side = None;
    match rustix::fs::fsetxattr(out.as_fd(), SOURCE_XATTR, encoded.as_bytes(), XattrFlags::empty()) {
        Ok(()) => {}
        Err(e) if xattrs_unsupported(&e) => {
            // Written beside the target under its final name only once the
            // image is in place (below): a sidecar never describes a file
            // it was not made for.
            side = Some(encoded.clone());
        }
        Err(e) => return Err(Error::io(&temp_path)(e.into())),
    }
    let rename = |flags| rustix::fs::renameat_with(rustix::fs::CWD, &temp_path, rustix::fs::CWD, &target, flags);
    match rename(RenameFlags::NOREPLACE) {
        Ok(()) => {}
        Err(rustix::io::Errno::EXIST) => match existing(image, &target, Some(&sha256))? {
            // Someone else finished first with the same bytes: theirs is as good as ours.
            Existing::Current => return Ok(Pooled { path: target, sha256 }),
            // A stale copy of this source: the new bytes replace it (units
            // running from it keep the old file open until they restart).
            Existing::Stale | Existing::Missing => {
                rename(RenameFlags::empty()).map_err(|e| Error::io(&target)(e.into()))?;
                tracing::info!(image = %image.display(), target = %target.display(), "replacing a stale decompressed image");
            }
        },
        Err(e) => return Err(Error::io(&target)(e.into())),
    }
    temp.keep = true;
    if let Some(encoded) = side {
        let path = sidecar(&target);
        write_synced(&path, encoded.as_bytes()).map_err(Error::io(&path))?;
    }
    if let Ok(dir) = File::open(dir) {
        let _ = dir.sync_all();
    }
    tracing::info!(image = %image.display(), target = %target.display(), size, "decompressed");
    Ok(Pooled { path: target, sha256 })
}

/// Removes the partial decompressions (`.NAME.PID-N.part`) a killed wharfd
/// left in the pool `dir`; returns how many. Only for wharfd's start, when
/// no decompression of its own is under way.
pub fn remove_partial(dir: &Path) -> usize {
    let Ok(entries) = std::fs::read_dir(dir) else { return 0 };
    let mut removed = 0;
    for entry in entries.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        if name.starts_with('.') && name.ends_with(".part") && entry.file_type().is_ok_and(|t| t.is_file()) {
            match std::fs::remove_file(entry.path()) {
                Ok(()) => removed += 1,
                Err(e) => tracing::warn!(path = %entry.path().display(), "cannot remove a partial decompression: {e}"),
            }
        }
    }
    removed
}

fn write_synced(path: &Path, bytes: &[u8]) -> io::Result<()> {
    let mut file = OpenOptions::new().write(true).create(true).truncate(true).mode(0o644).open(path)?;
    file.write_all(bytes)?;
    file.sync_all()
}

/// Where anonymous decompressed images go, first usable first: wharfd's
/// state directory (on disk, and writable under its sandbox), then the
/// temporary directory; memory when neither takes an `O_TMPFILE`.
pub fn anonymous_dirs() -> Vec<PathBuf> {
    vec![PathBuf::from("/var/lib/wharf"), std::env::temp_dir()]
}

/// An xz image decompressed into a file without a name.
#[derive(Debug)]
pub struct Anonymous {
    pub file: File,
    pub kind: ImageKind,
    /// sha256 of the compressed bytes it was made from.
    pub sha256: String,
}

/// Decompresses the xz image `image` (open as `source`) into a file that has
/// no name (`O_TMPFILE` in the first of `dirs` that allows it, else a
/// memfd): nothing is left behind when it is closed. More than `limit`
/// bytes decompressed is an error ([`Error::TooLarge`]).
pub fn decompress_anonymous(
    image: &Path,
    source: &File,
    dirs: &[PathBuf],
    limit: Option<u64>,
    progress: impl FnMut(u64, u64),
) -> Result<Anonymous> {
    let mut out = anonymous_file(dirs).map_err(Error::io(image))?;
    let (_, sha256) = decompress(image, source, &mut out, limit, progress)?;
    let kind = verify(image, &out)?;
    Ok(Anonymous { file: out, kind, sha256 })
}

fn anonymous_file(dirs: &[PathBuf]) -> io::Result<File> {
    for dir in dirs {
        let flags = OFlags::TMPFILE | OFlags::RDWR | OFlags::CLOEXEC;
        match rustix::fs::open(dir, flags, Mode::from_raw_mode(0o600)) {
            Ok(fd) => {
                tracing::debug!(dir = %dir.display(), "decompressing into an anonymous file");
                return Ok(File::from(fd));
            }
            Err(e) => tracing::debug!(dir = %dir.display(), "no O_TMPFILE there: {e}"),
        }
    }
    tracing::debug!("decompressing into a memfd");
    Ok(File::from(rustix::fs::memfd_create("wharf-xz", MemfdFlags::CLOEXEC)?))
}

#[cfg(test)]
mod tests {
    use std::process::{Command, Stdio};

    use super::*;

    fn scratch(tag: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("wharf-xz-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        dir
    }

    /// An xz file holding `raw`, made with the xz tool.
    fn xz_of(raw: &[u8], path: &Path) {
        let mut child =
            Command::new("xz").args(["-c", "-T2"]).stdin(Stdio::piped()).stdout(Stdio::piped()).spawn().unwrap();
        let mut stdin = child.stdin.take().unwrap();
        let raw = raw.to_vec();
        let writer = std::thread::spawn(move || stdin.write_all(&raw).unwrap());
        let out = child.wait_with_output().unwrap();
        writer.join().unwrap();
        std::fs::write(path, out.stdout).unwrap();
    }

    /// Bytes that look like an ext4 image to [`ImageKind::from_magic`].
    fn ext4_like(len: usize) -> Vec<u8> {
        let mut raw = vec![0u8; len];
        raw[1024 + 56] = 0x53;
        raw[1024 + 57] = 0xef;
        raw
    }

    fn names(dir: &Path) -> Vec<String> {
        let mut names: Vec<String> =
            std::fs::read_dir(dir).unwrap().map(|e| e.unwrap().file_name().to_string_lossy().into_owned()).collect();
        names.sort();
        names
    }

    #[test]
    fn source_records_round_trip() {
        let sha256 = "ab".repeat(32);
        let record = SourceRecord { path: "/srv/a b/foo.raw.xz".into(), sha256: sha256.clone() };
        assert_eq!(record.encode(), format!("v2 {sha256} /srv/a b/foo.raw.xz"));
        assert_eq!(SourceRecord::decode(&record.encode()), Some(record));
        // Records of older versions keep their path, never a digest.
        assert_eq!(
            SourceRecord::decode("v1 42 1700000000.000000005 /srv/x.raw.xz"),
            Some(SourceRecord { path: "/srv/x.raw.xz".into(), sha256: String::new() })
        );
        assert_eq!(SourceRecord::decode("v2 abc /x"), None);
        assert_eq!(SourceRecord::decode("v3 42 1.0 /x"), None);
        assert_eq!(SourceRecord::decode("v1 x 1.0 /x"), None);
        assert_eq!(SourceRecord::decode(""), None);
    }

    #[test]
    fn target_names_strip_xz() {
        assert_eq!(target_name(Path::new("/p/foobar_2.raw.xz")).unwrap(), "foobar_2.raw");
        assert_eq!(target_name(Path::new("/p/foo")).unwrap(), "foo.raw");
        assert_eq!(target_name(Path::new("/p/.xz")).unwrap(), ".xz.raw");
    }

    /// sha256sum of a file, by the tool.
    fn sha256sum(path: &Path) -> String {
        let out = Command::new("sha256sum").arg(path).output().unwrap();
        String::from_utf8_lossy(&out.stdout).split(' ').next().unwrap().to_string()
    }

    #[test]
    fn decompresses_into_the_pool_once_and_reuses_it() {
        let dir = scratch("pool");
        let source_path = dir.join("img_1.raw.xz");
        let raw = ext4_like(3 << 20);
        xz_of(&raw, &source_path);
        let source = File::open(&source_path).unwrap();
        let mut calls = Vec::new();
        let pooled =
            decompress_to_pool(&source_path, &source, &dir, None, |done, total| calls.push((done, total))).unwrap();
        let target = pooled.path.clone();
        assert_eq!(target, dir.join("img_1.raw"));
        assert_eq!(pooled.sha256, sha256sum(&source_path), "the digest is that of the file as shipped");
        assert_eq!(std::fs::read(&target).unwrap(), raw);
        let total = source.metadata().unwrap().len();
        assert_eq!(calls.last().map(|c| c.0), Some(total), "progress reaches the compressed size");
        assert!(calls.iter().all(|c| c.1 == total) && calls.windows(2).all(|w| w[0].0 <= w[1].0));
        // Only the image (and its sidecar where there are no user xattrs).
        let listed = names(&dir);
        assert!(listed == ["img_1.raw", "img_1.raw.xz"] || listed.len() == 3, "{listed:?}");

        // The same bytes again: reused, not decompressed.
        let modified = std::fs::metadata(&target).unwrap().modified().unwrap();
        let again = decompress_to_pool(&source_path, &source, &dir, None, |_, _| panic!("no decompression")).unwrap();
        assert_eq!(again, pooled);
        assert_eq!(std::fs::metadata(&target).unwrap().modified().unwrap(), modified);
        // A pin that does not match is refused, naming both digests; nothing changes.
        let wrong = "0".repeat(64);
        let error = decompress_to_pool(&source_path, &source, &dir, Some(&wrong), |_, _| {}).unwrap_err().to_string();
        assert!(error.contains(&format!("has sha256 {}", pooled.sha256)) && error.contains(&wrong), "{error}");
        assert_eq!(std::fs::read(&target).unwrap(), raw);
        let pinned = decompress_to_pool(&source_path, &source, &dir, Some(&pooled.sha256.to_uppercase()), |_, _| {});
        assert_eq!(pinned.unwrap(), pooled);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn other_bytes_of_the_same_size_and_mtime_are_decompressed_anew() {
        let dir = scratch("stale");
        let source_path = dir.join("img_1.raw.xz");
        let (first, mut second) = (ext4_like(2 << 20), ext4_like(2 << 20));
        second[4 << 10] = 1;
        // Both compressed, padded with zeros (xz stream padding) to one length.
        let other = dir.join("other.xz");
        xz_of(&first, &source_path);
        xz_of(&second, &other);
        let (mut old, mut new) = (std::fs::read(&source_path).unwrap(), std::fs::read(&other).unwrap());
        std::fs::remove_file(&other).unwrap();
        let len = old.len().max(new.len()).next_multiple_of(4) + 4;
        old.resize(len, 0);
        new.resize(len, 0);
        std::fs::write(&source_path, &old).unwrap();
        let pooled = decompress_to_pool(&source_path, &File::open(&source_path).unwrap(), &dir, None, |_, _| {});
        let pooled = pooled.unwrap();
        assert_eq!(std::fs::read(&pooled.path).unwrap(), first);
        let before = std::fs::metadata(&source_path).unwrap();

        // Other content in place, of the same length, the mtime put back.
        std::fs::write(&source_path, &new).unwrap();
        let times = std::fs::FileTimes::new().set_modified(before.modified().unwrap());
        std::fs::File::options().write(true).open(&source_path).unwrap().set_times(times).unwrap();
        let after = std::fs::metadata(&source_path).unwrap();
        assert_eq!((after.len(), after.modified().unwrap()), (before.len(), before.modified().unwrap()));

        let source = File::open(&source_path).unwrap();
        let fresh = decompress_to_pool(&source_path, &source, &dir, None, |_, _| {}).unwrap();
        assert_eq!(fresh.path, pooled.path);
        assert_ne!(fresh.sha256, pooled.sha256);
        assert_eq!(fresh.sha256, sha256sum(&source_path));
        assert_eq!(std::fs::read(&fresh.path).unwrap(), second, "the stale copy was reused");
        // A pin on the old bytes now fails.
        let error = decompress_to_pool(&source_path, &source, &dir, Some(&pooled.sha256), |_, _| {}).unwrap_err();
        assert!(matches!(error, Error::WrongDigest { .. }), "{error}");
        assert!(!names(&dir).iter().any(|n| n.ends_with(".part")), "{:?}", names(&dir));
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn a_copy_made_from_another_path_is_never_replaced() {
        let dir = scratch("otherpath");
        let sub = dir.join("sub");
        std::fs::create_dir_all(&sub).unwrap();
        xz_of(&ext4_like(1 << 20), &dir.join("img.raw.xz"));
        xz_of(&ext4_like(2 << 20), &sub.join("img.raw.xz"));
        let first = dir.join("img.raw.xz");
        decompress_to_pool(&first, &File::open(&first).unwrap(), &dir, None, |_, _| {}).unwrap();
        let second = sub.join("img.raw.xz");
        let error = decompress_to_pool(&second, &File::open(&second).unwrap(), &dir, None, |_, _| {}).unwrap_err();
        assert!(error.to_string().contains("img.raw' already exists and was not decompressed from this image"));
        assert_eq!(std::fs::metadata(dir.join("img.raw")).unwrap().len(), 1 << 20);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn a_file_of_the_target_name_is_never_replaced() {
        let dir = scratch("foreign");
        let source_path = dir.join("img.raw.xz");
        xz_of(&ext4_like(1 << 20), &source_path);
        std::fs::write(dir.join("img.raw"), b"precious").unwrap();
        let source = File::open(&source_path).unwrap();
        let error = decompress_to_pool(&source_path, &source, &dir, None, |_, _| {}).unwrap_err();
        assert!(matches!(error, Error::XzTargetExists { .. }), "{error}");
        assert_eq!(std::fs::read(dir.join("img.raw")).unwrap(), b"precious");
        assert_eq!(names(&dir), ["img.raw", "img.raw.xz"]);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn failures_and_panics_leave_nothing_behind() {
        let dir = scratch("fail");
        // Decompresses fine, but to something that is not an image.
        let not_image = dir.join("text.raw.xz");
        xz_of(b"just some text\n", &not_image);
        let error = decompress_to_pool(&not_image, &File::open(&not_image).unwrap(), &dir, None, |_, _| {})
            .unwrap_err()
            .to_string();
        assert!(error.contains("does not decompress to a squashfs, ext4, erofs or GPT image"), "{error}");
        // A truncated stream.
        let whole = dir.join("whole.xz");
        xz_of(&ext4_like(1 << 20), &whole);
        let bytes = std::fs::read(&whole).unwrap();
        std::fs::remove_file(&whole).unwrap();
        let cut = dir.join("cut.raw.xz");
        std::fs::write(&cut, &bytes[..bytes.len() / 2]).unwrap();
        let error =
            decompress_to_pool(&cut, &File::open(&cut).unwrap(), &dir, None, |_, _| {}).unwrap_err().to_string();
        assert!(error.starts_with(&format!("image '{}': corrupt xz image:", cut.display())), "{error}");
        // A squashfs whose superblock claims more than the file holds.
        let mut squash = vec![0u8; 8192];
        squash[..4].copy_from_slice(b"hsqs");
        let short = dir.join("short.raw.xz");
        xz_of(&squash, &short);
        let error =
            decompress_to_pool(&short, &File::open(&short).unwrap(), &dir, None, |_, _| {}).unwrap_err().to_string();
        assert!(error.contains("decompressed squashfs"), "{error}");
        // A panic in the progress callback.
        let fine = dir.join("fine.raw.xz");
        xz_of(&ext4_like(1 << 20), &fine);
        let source = File::open(&fine).unwrap();
        let panicked =
            std::panic::catch_unwind(|| decompress_to_pool(&fine, &source, &dir, None, |_, _| panic!("progress")));
        assert!(panicked.is_err());
        assert_eq!(names(&dir), ["cut.raw.xz", "fine.raw.xz", "short.raw.xz", "text.raw.xz"]);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn anonymous_decompression_leaves_no_name() {
        let dir = scratch("anon");
        let source_path = dir.join("a.raw.xz");
        let raw = ext4_like(1 << 20);
        xz_of(&raw, &source_path);
        let source = File::open(&source_path).unwrap();
        for dirs in [vec![dir.clone()], vec![dir.join("missing")]] {
            let anonymous = decompress_anonymous(&source_path, &source, &dirs, None, |_, _| {}).unwrap();
            assert_eq!(anonymous.kind, ImageKind::Ext4);
            assert_eq!(anonymous.file.metadata().unwrap().len(), raw.len() as u64);
            assert_eq!(anonymous.sha256, sha256sum(&source_path));
            assert_eq!(names(&dir), ["a.raw.xz"]);
        }
        // Past the limit: refused, naming the image and the limit.
        let error = decompress_anonymous(&source_path, &source, std::slice::from_ref(&dir), Some(1 << 19), |_, _| {})
            .unwrap_err();
        let text = error.to_string();
        assert!(matches!(error, Error::TooLarge { .. }), "{text}");
        assert!(text.starts_with(&format!("image '{}': decompresses to more than 512 KiB", source_path.display())));
        assert!(!text.contains('\n'), "{text}");
        let exact = decompress_anonymous(&source_path, &source, &[], Some(raw.len() as u64), |_, _| {});
        assert_eq!(exact.unwrap().kind, ImageKind::Ext4, "exactly the limit is allowed");
        assert_eq!(names(&dir), ["a.raw.xz"]);
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
