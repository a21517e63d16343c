//! File operations systemd can never observe half done: a file is written
//! under a hidden temporary name in its final directory, synced, and renamed
//! over its final name, and the directory is synced so the rename survives a
//! crash.

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

/// A temporary name next to `path`, hidden (systemd ignores dot files) and
/// unique to this process and call.
pub fn temp_sibling(path: &Path) -> PathBuf {
    use std::sync::atomic::{AtomicU64, Ordering};
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    let name = path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    path.with_file_name(format!("{TEMP_PREFIX}{}-{n}-{name}", std::process::id()))
}

/// Writes `contents` to `path` atomically with the given mode.
pub fn write_atomic(path: &Path, contents: &[u8], mode: u32) -> std::io::Result<()> {
    let temp = temp_sibling(path);
    let result = (|| {
        let mut file = OpenOptions::new().write(true).create_new(true).mode(mode).open(&temp)?;
        file.write_all(contents)?;
        file.sync_all()?;
        std::fs::rename(&temp, path)?;
        sync_parent(path)
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&temp);
    }
    result
}

/// Writes `contents` to `path`, a name that must not exist yet (a stale
/// file of that name is replaced), and syncs it; the caller renames it into
/// place. For writes whose temporary is already recorded in a journal, so
/// that a crash leaves only names the journal knows.
pub fn write_new(path: &Path, contents: &[u8], mode: u32) -> std::io::Result<()> {
    match std::fs::remove_file(path) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => return Err(e),
        _ => {}
    }
    let mut file = OpenOptions::new().write(true).create_new(true).mode(mode).open(path)?;
    file.write_all(contents)?;
    file.sync_all()
}

/// Whether a file name is one of wharf's hidden temporaries or backups.
pub fn is_temporary_name(name: &std::ffi::OsStr) -> bool {
    name.as_encoded_bytes().starts_with(TEMP_PREFIX.as_bytes())
}

/// How every hidden temporary and backup wharf makes beside a file begins.
pub const TEMP_PREFIX: &str = ".#wharf-";

/// Syncs the directory holding `path`, making a rename or unlink in it durable.
pub fn sync_parent(path: &Path) -> std::io::Result<()> {
    match path.parent() {
        Some(parent) if !parent.as_os_str().is_empty() => File::open(parent)?.sync_all(),
        _ => Ok(()),
    }
}

/// Size of the runs of zeros [`copy_sparse`] leaves as holes.
const HOLE_BLOCK: usize = 64 * 1024;

/// Copies `reader` into `file` from its current position, leaving runs of
/// zero bytes as holes (disk images are mostly empty space), and returns the
/// number of bytes copied. The file is extended to its full length even when
/// it ends in a hole.
pub fn copy_sparse(reader: &mut dyn std::io::Read, file: &mut File) -> Result<u64, CopyError> {
    use std::io::{Seek, SeekFrom};
    let mut buffer = vec![0u8; 1 << 20];
    let mut copied: u64 = 0;
    loop {
        let mut filled = 0;
        // Fill whole buffers, so that holes line up with whole blocks.
        while filled < buffer.len() {
            match reader.read(&mut buffer[filled..]) {
                Ok(0) => break,
                Ok(n) => filled += n,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(CopyError::Read(e)),
            }
        }
        if filled == 0 {
            break;
        }
        for block in buffer[..filled].chunks(HOLE_BLOCK) {
            if block.iter().all(|b| *b == 0) {
                file.seek(SeekFrom::Current(block.len() as i64)).map_err(CopyError::Write)?;
            } else {
                file.write_all(block).map_err(CopyError::Write)?;
            }
        }
        copied += filled as u64;
        if filled < buffer.len() {
            break;
        }
    }
    let end = file.stream_position().map_err(CopyError::Write)?;
    file.set_len(end).map_err(CopyError::Write)?;
    Ok(copied)
}

/// Which side of a copy failed: reading (a corrupt stream) or writing (a full disk).
#[derive(Debug, thiserror::Error)]
pub enum CopyError {
    #[error("{0}")]
    Read(#[source] std::io::Error),
    #[error("{0}")]
    Write(#[source] std::io::Error),
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn write_atomic_replaces_and_leaves_no_temporary() {
        let dir = std::env::temp_dir().join(format!("wharf-fs-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let target = dir.join("unit.service");
        write_atomic(&target, b"one", 0o644).unwrap();
        write_atomic(&target, b"two", 0o644).unwrap();
        assert_eq!(std::fs::read(&target).unwrap(), b"two");
        let names: Vec<_> = std::fs::read_dir(&dir).unwrap().map(|e| e.unwrap().file_name()).collect();
        assert_eq!(names, ["unit.service"]);
        assert!(write_atomic(&dir.join("missing/x"), b"", 0o644).is_err());
        std::fs::remove_dir_all(&dir).unwrap();
    }
}

#[cfg(test)]
mod sparse_tests {
    use super::*;
    use std::os::unix::fs::MetadataExt;

    #[test]
    fn zeros_become_holes_and_the_length_is_kept() {
        let path = std::env::temp_dir().join(format!("wharf-sparse-{}", std::process::id()));
        let mut data = vec![0u8; 8 << 20];
        data[100] = 1;
        data[5 << 20] = 2;
        let mut file = File::create(&path).unwrap();
        let copied = copy_sparse(&mut &data[..], &mut file).unwrap();
        assert_eq!(copied, data.len() as u64);
        assert_eq!(std::fs::read(&path).unwrap(), data);
        // Two 64 KiB blocks of data; the rest is holes.
        assert!(std::fs::metadata(&path).unwrap().blocks() * 512 <= 4 * HOLE_BLOCK as u64);
        std::fs::remove_file(&path).unwrap();
    }
}
