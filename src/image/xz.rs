//! `.raw.xz` images: any raw image kind compressed with xz. They are
//! decompressed before use, either into the pool next to where portablectl
//! users expect raw images (for attaching: systemd's `RootImage=` needs the
//! raw file), or into an anonymous file that disappears when closed (for
//! inspecting, which must not write the pool).
//!
//! Into the pool, nothing half-written ever carries the final name: the
//! image is decompressed into a hidden temporary file in the same
//! directory, checked to be a raw image wharf recognises, synced, and
//! renamed (without replacing) into place; any error or panic removes the
//! temporary file. The result records which xz file it was made from
//! (path, size and modification time, in the `user.wharf.xz-source` xattr,
//! or a hidden sidecar file where the file system has no user xattrs):
//! decompressing the same source again reuses it, and a file of that name
//! made from anything else is never overwritten.

use std::fs::{File, Metadata, OpenOptions};
use std::io::{self, Read, Write};
use std::os::fd::AsFd;
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use rustix::fs::{MemfdFlags, Mode, OFlags, RenameFlags, XattrFlags};

use super::squashfs::{SUPERBLOCK_SIZE, check_superblock};
use super::{Error, ImageKind, Result};

/// The extended attribute that says which xz file a raw image was made from.
pub const SOURCE_XATTR: &str = "user.wharf.xz-source";

/// Which xz file a decompressed image was made from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SourceRecord {
    pub path: String,
    pub size: u64,
    pub mtime_sec: i64,
    pub mtime_nsec: i64,
}

impl SourceRecord {
    pub fn of(path: &Path, meta: &Metadata) -> SourceRecord {
        SourceRecord {
            path: path.display().to_string(),
            size: meta.len(),
            mtime_sec: meta.mtime(),
            mtime_nsec: meta.mtime_nsec(),
        }
    }

    /// One line: `v1 SIZE MTIME_SEC.MTIME_NSEC PATH` (the path last, as it
    /// may contain spaces).
    pub fn encode(&self) -> String {
        format!("v1 {} {}.{:09} {}", self.size, self.mtime_sec, self.mtime_nsec, self.path)
    }

    pub fn decode(text: &str) -> Option<SourceRecord> {
        let mut parts = text.trim_end_matches('\n').splitn(4, ' ');
        if parts.next()? != "v1" {
            return None;
        }
        let size = parts.next()?.parse().ok()?;
        let (sec, nsec) = parts.next()?.split_once('.')?;
        let path = parts.next()?.to_string();
        Some(SourceRecord { path, size, mtime_sec: sec.parse().ok()?, mtime_nsec: nsec.parse().ok()? })
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

/// Reads the compressed image from its start with pread (the descriptor
/// may be shared with the client that opened it: its position is left
/// alone), reporting each step.
struct Progress<'a, F: FnMut(u64, u64)> {
    inner: &'a File,
    done: u64,
    total: u64,
    report: F,
}

impl<F: FnMut(u64, u64)> Read for Progress<'_, F> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        use std::os::unix::fs::FileExt;
        let n = self.inner.read_at(buf, self.done)?;
        self.done += n as u64;
        (self.report)(self.done, self.total);
        Ok(n)
    }
}

fn corrupt(image: &Path, reason: impl Into<String>) -> Error {
    Error::Corrupt { image: image.to_path_buf(), kind: ImageKind::Xz, reason: reason.into() }
}

/// Decompresses `source` (an xz file, read from its start) into `out`,
/// reporting progress as (compressed bytes read, compressed size).
fn decompress(image: &Path, source: &File, out: &mut File, progress: impl FnMut(u64, u64)) -> Result<u64> {
    let total = source.metadata().map_err(Error::io(image))?.len();
    let stream = crate::compress::xz_stream_decoder()
        .map_err(|e| corrupt(image, format!("cannot start the xz decoder: {e}")))?;
    let counting = Progress { inner: source, done: 0, total, report: progress };
    let mut decoder = liblzma::read::XzDecoder::new_stream(counting, stream);
    crate::fs::copy_sparse(&mut decoder, out).map_err(|e| match e {
        crate::fs::CopyError::Read(e) => corrupt(image, e.to_string()),
        crate::fs::CopyError::Write(e) => Error::Io { path: image.to_path_buf(), source: e },
    })
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

/// The raw image in `dir` that an earlier [`decompress_to_pool`] made from
/// `image` as it is now; `None` when there is none yet (it would have to be
/// made). Another file under its name is an error, as for
/// [`decompress_to_pool`].
pub fn pooled(image: &Path, source: &File, dir: &Path) -> Result<Option<PathBuf>> {
    let target = dir.join(target_name(image)?);
    let record = SourceRecord::of(image, &source.metadata().map_err(Error::io(image))?);
    match read_record(&target).map_err(Error::io(&target))? {
        None => Ok(None),
        Some(Some(existing)) if existing == record => Ok(Some(target)),
        Some(_) => Err(Error::XzTargetExists { image: image.to_path_buf(), target }),
    }
}

/// Decompresses the xz image `image` (open as `source`) into `dir` under
/// [`target_name`], or reuses what an earlier call made from the same
/// source; see the module documentation. Returns the raw image's path.
pub fn decompress_to_pool(image: &Path, source: &File, dir: &Path, progress: impl FnMut(u64, u64)) -> Result<PathBuf> {
    if let Some(target) = pooled(image, source, dir)? {
        tracing::debug!(image = %image.display(), target = %target.display(), "reusing the decompressed image");
        return Ok(target);
    }
    let target = dir.join(target_name(image)?);
    let record = SourceRecord::of(image, &source.metadata().map_err(Error::io(image))?);
    let exists = || Error::XzTargetExists { image: image.to_path_buf(), target: target.clone() };

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

    let size = decompress(image, source, &mut out, progress)?;
    verify(image, &out)?;
    out.sync_all().map_err(Error::io(&temp_path))?;
    let encoded = record.encode();
    let mut side = None;
    match rustix::fs::fsetxattr(out.as_fd(), SOURCE_XATTR, encoded.as_bytes(), XattrFlags::empty()) {
        Ok(()) => {}
        Err(e) if xattrs_unsupported(&e) => {
            let path = sidecar(&target);
            let guard = Removed { path: path.clone(), keep: false };
            write_synced(&path, encoded.as_bytes()).map_err(Error::io(&path))?;
            side = Some(guard);
        }
        Err(e) => return Err(Error::io(&temp_path)(e.into())),
    }
    match rustix::fs::renameat_with(rustix::fs::CWD, &temp_path, rustix::fs::CWD, &target, RenameFlags::NOREPLACE) {
        Ok(()) => {
            temp.keep = true;
            if let Some(side) = side.as_mut() {
                side.keep = true;
            }
        }
        // Someone else finished first: theirs is as good as ours if it was
        // made from the same source.
        Err(rustix::io::Errno::EXIST) => {
            return match read_record(&target).map_err(Error::io(&target))? {
                Some(Some(existing)) if existing == record => Ok(target),
                _ => Err(exists()),
            };
        }
        Err(e) => return Err(Error::io(&target)(e.into())),
    }
    if let Ok(dir) = File::open(dir) {
        let _ = dir.sync_all();
    }
    tracing::info!(image = %image.display(), target = %target.display(), size, "decompressed");
    Ok(target)
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

/// Decompresses the xz image `image` (open as `source`) into a file that has
/// no name (`O_TMPFILE` in the first of `dirs` that allows it, else a
/// memfd): nothing is left behind when it is closed. Returns the raw image
/// and its kind.
pub fn decompress_anonymous(
    image: &Path,
    source: &File,
    dirs: &[PathBuf],
    progress: impl FnMut(u64, u64),
) -> Result<(File, ImageKind)> {
    let mut out = anonymous_file(dirs).map_err(Error::io(image))?;
    decompress(image, source, &mut out, progress)?;
    let kind = verify(image, &out)?;
    Ok((out, kind))
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
        let record =
            SourceRecord { path: "/srv/a b/foo.raw.xz".into(), size: 42, mtime_sec: 1700000000, mtime_nsec: 5 };
        assert_eq!(record.encode(), "v1 42 1700000000.000000005 /srv/a b/foo.raw.xz");
        assert_eq!(SourceRecord::decode(&record.encode()), Some(record));
        assert_eq!(SourceRecord::decode("v2 42 1.0 /x"), None);
        assert_eq!(SourceRecord::decode("v1 x 1.0 /x"), None);
        assert_eq!(SourceRecord::decode(""), None);
    }

    #[test]
    fn target_names_strip_xz() {
        assert_eq!(target_name(Path::new("/p/foobar_2.raw.xz")).unwrap(), "foobar_2.raw");
        assert_eq!(target_name(Path::new("/p/foo")).unwrap(), "foo.raw");
        assert_eq!(target_name(Path::new("/p/.xz")).unwrap(), ".xz.raw");
    }

    #[test]
    fn decompresses_into_the_pool_once_and_reuses_it() {
        let dir = scratch("pool");
        let source_path = dir.join("img_1.raw.xz");
        let raw = ext4_like(3 << 20);
        xz_of(&raw, &source_path);
        let source = File::open(&source_path).unwrap();
        let mut calls = Vec::new();
        let target = decompress_to_pool(&source_path, &source, &dir, |done, total| calls.push((done, total))).unwrap();
        assert_eq!(target, dir.join("img_1.raw"));
        assert_eq!(std::fs::read(&target).unwrap(), raw);
        let total = source.metadata().unwrap().len();
        assert_eq!(calls.last().map(|c| c.0), Some(total), "progress reaches the compressed size");
        assert!(calls.iter().all(|c| c.1 == total) && calls.windows(2).all(|w| w[0].0 <= w[1].0));
        // Only the image (and its sidecar where there are no user xattrs).
        let listed = names(&dir);
        assert!(listed == ["img_1.raw", "img_1.raw.xz"] || listed.len() == 3, "{listed:?}");

        // The same source again: reused, not decompressed.
        let modified = std::fs::metadata(&target).unwrap().modified().unwrap();
        let again = decompress_to_pool(&source_path, &source, &dir, |_, _| panic!("no decompression")).unwrap();
        assert_eq!(again, target);
        assert_eq!(std::fs::metadata(&target).unwrap().modified().unwrap(), modified);

        // A changed source with the same name is refused, naming the file.
        xz_of(&ext4_like(2 << 20), &source_path);
        let source = File::open(&source_path).unwrap();
        let error = decompress_to_pool(&source_path, &source, &dir, |_, _| {}).unwrap_err().to_string();
        assert!(error.contains("img_1.raw' already exists and was not decompressed from this image"), "{error}");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn a_file_of_the_target_name_is_never_replaced() {
        let dir = scratch("foreign");
        let source_path = dir.join("img.raw.xz");
        xz_of(&ext4_like(1 << 20), &source_path);
        std::fs::write(dir.join("img.raw"), b"precious").unwrap();
        let source = File::open(&source_path).unwrap();
        let error = decompress_to_pool(&source_path, &source, &dir, |_, _| {}).unwrap_err();
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
        let error =
            decompress_to_pool(&not_image, &File::open(&not_image).unwrap(), &dir, |_, _| {}).unwrap_err().to_string();
        assert!(error.contains("does not decompress to a squashfs, ext4, erofs or GPT image"), "{error}");
        // A truncated stream.
        let whole = dir.join("whole.xz");
        xz_of(&ext4_like(1 << 20), &whole);
        let bytes = std::fs::read(&whole).unwrap();
        std::fs::remove_file(&whole).unwrap();
        let cut = dir.join("cut.raw.xz");
        std::fs::write(&cut, &bytes[..bytes.len() / 2]).unwrap();
        let error = decompress_to_pool(&cut, &File::open(&cut).unwrap(), &dir, |_, _| {}).unwrap_err().to_string();
        assert!(error.starts_with(&format!("image '{}': corrupt xz image:", cut.display())), "{error}");
        // A squashfs whose superblock claims more than the file holds.
        let mut squash = vec![0u8; 8192];
        squash[..4].copy_from_slice(b"hsqs");
        let short = dir.join("short.raw.xz");
        xz_of(&squash, &short);
        let error = decompress_to_pool(&short, &File::open(&short).unwrap(), &dir, |_, _| {}).unwrap_err().to_string();
        assert!(error.contains("decompressed squashfs"), "{error}");
        // A panic in the progress callback.
        let fine = dir.join("fine.raw.xz");
        xz_of(&ext4_like(1 << 20), &fine);
        let source = File::open(&fine).unwrap();
        let panicked = std::panic::catch_unwind(|| decompress_to_pool(&fine, &source, &dir, |_, _| panic!("progress")));
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
            let (out, kind) = decompress_anonymous(&source_path, &source, &dirs, |_, _| {}).unwrap();
            assert_eq!(kind, ImageKind::Ext4);
            assert_eq!(out.metadata().unwrap().len(), raw.len() as u64);
            assert_eq!(names(&dir), ["a.raw.xz"]);
        }
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
