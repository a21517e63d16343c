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

/// A small file that comes with an image (a sidecar), read only if it is a
/// regular file of at most `limit` bytes; `None` when it does not exist.
/// Opened without blocking and checked through the open descriptor: its
/// owner may have put a FIFO there (an open or read that never returns) or
/// a link to an endless device.
pub fn read_small_regular(path: &Path, limit: u64) -> std::io::Result<Option<Vec<u8>>> {
    use std::io::Read;
    let file = match OpenOptions::new().read(true).custom_flags(rustix::fs::OFlags::NONBLOCK.bits() as i32).open(path) {
        Ok(file) => file,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e),
    };
    if !file.metadata()?.is_file() {
        return Err(std::io::Error::other("it is not a regular file"));
    }
    let mut bytes = Vec::new();
    file.take(limit + 1).read_to_end(&mut bytes)?;
    if bytes.len() as u64 > limit {
        return Err(std::io::Error::other(format!("it is larger than {limit} bytes")));
    }
    Ok(Some(bytes))
}

/// Size of the runs of zeros [`copy_sparse`] leaves as holes.
const HOLE_BLOCK: usize = 64 * 1024;

/// Copies `reader` into `file` from its current position, leaving runs of
/// zero bytes as holes (disk images are mostly empty space), and returns the
/// number of bytes copied. The file is extended to its full length even when
/// it ends in a hole.
pub fn copy_sparse(reader: &mut dyn std::io::Read, file: &mut File) -> Result<u64, CopyError> {
    copy_sparse_inner(reader, file, false).map(|(bytes, _)| bytes)
}

/// [`copy_sparse`], and the SHA-256 of every byte copied (holes included).
pub fn copy_sparse_hashed(reader: &mut dyn std::io::Read, file: &mut File) -> Result<(u64, [u8; 32]), CopyError> {
    let (bytes, digest) = copy_sparse_inner(reader, file, true)?;
    Ok((bytes, digest.unwrap_or_default()))
}

const COPY_BUFFER: usize = 1 << 20;

fn copy_sparse_inner(
    reader: &mut dyn std::io::Read,
    file: &mut File,
    hash: bool,
) -> Result<(u64, Option<[u8; 32]>), CopyError> {
    use std::io::{Seek, SeekFrom};
    use std::sync::mpsc;
    std::thread::scope(|scope| {
        // Hashing a decompressed image costs about as much CPU as
        // decompressing it: on a thread of its own it runs beside the read
        // and the write, not after each buffer of them. Buffers go to it
        // once written and come back to be filled again (at most four
        // exist: two queued, one hashed, one filled).
        let (queue, queued) = mpsc::sync_channel::<Vec<u8>>(2);
        let (give_back, given_back) = mpsc::channel::<Vec<u8>>();
        let hasher = hash.then(|| {
            scope.spawn(move || {
                use sha2::Digest as _;
                let mut hasher = sha2::Sha256::new();
                for buffer in queued {
                    hasher.update(&buffer);
                    // The copy may have ended already; the buffer is then dropped.
                    let _ = give_back.send(buffer);
                }
                <[u8; 32]>::from(hasher.finalize())
            })
        });
        let mut buffer = vec![0u8; COPY_BUFFER];
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
                if is_zero(block) {
                    file.seek(SeekFrom::Current(block.len() as i64)).map_err(CopyError::Write)?;
                } else {
                    file.write_all(block).map_err(CopyError::Write)?;
                }
            }
            copied += filled as u64;
            let last = filled < buffer.len();
            if hasher.is_some() {
                buffer.truncate(filled);
                queue.send(buffer).map_err(|_| CopyError::Read(std::io::Error::other("the hashing thread failed")))?;
                buffer = given_back.try_recv().unwrap_or_default();
                buffer.resize(COPY_BUFFER, 0);
            }
            if last {
                break;
            }
        }
        let end = file.stream_position().map_err(CopyError::Write)?;
        file.set_len(end).map_err(CopyError::Write)?;
        drop(queue);
        let digest = match hasher {
            Some(hasher) => {
                Some(hasher.join().map_err(|_| CopyError::Read(std::io::Error::other("the hashing thread failed")))?)
            }
            None => None,
        };
        Ok((copied, digest))
    })
}

/// Whether `block` is all zeros. ORing 64 bytes at a time lets the
/// compiler use vector instructions; a byte-by-byte `all` scanned a GiB
/// of zeros in about half a second, which an import spent on every image.
fn is_zero(block: &[u8]) -> bool {
    let chunks = block.chunks_exact(64);
    let rest = chunks.remainder();
    chunks.into_iter().all(|chunk| chunk.iter().fold(0u8, |all, byte| all | byte) == 0) && rest.iter().all(|b| *b == 0)
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

    #[test]
    fn a_hashed_copy_hashes_every_byte_holes_included() {
        use sha2::Digest as _;
        let path = std::env::temp_dir().join(format!("wharf-sparse-hashed-{}", std::process::id()));
        // Longer than the queue of buffers, not a multiple of one, with
        // data at the edges of blocks and buffers.
        let mut data = vec![0u8; 7 * COPY_BUFFER + 12345];
        for at in [0, HOLE_BLOCK - 1, COPY_BUFFER, 3 * COPY_BUFFER + 63, data.len() - 1] {
            data[at] = 0x5a;
        }
        let mut file = File::create(&path).unwrap();
        let (copied, digest) = copy_sparse_hashed(&mut &data[..], &mut file).unwrap();
        assert_eq!(copied, data.len() as u64);
        assert_eq!(digest, <[u8; 32]>::from(sha2::Sha256::digest(&data)));
        assert_eq!(std::fs::read(&path).unwrap(), data);
        let (_, empty) = copy_sparse_hashed(&mut &[][..], &mut File::create(&path).unwrap()).unwrap();
        assert_eq!(empty, <[u8; 32]>::from(sha2::Sha256::digest(b"")));
        std::fs::remove_file(&path).unwrap();
    }

    #[test]
    fn small_regular_files_only() {
        let dir = std::env::temp_dir().join(format!("wharf-small-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join("f");
        std::fs::write(&file, b"0123456789").unwrap();
        assert_eq!(read_small_regular(&file, 10).unwrap().unwrap(), b"0123456789");
        assert!(read_small_regular(&file, 9).unwrap_err().to_string().contains("larger than 9 bytes"));
        assert!(read_small_regular(&dir.join("missing"), 10).unwrap().is_none());
        let fifo = dir.join("fifo");
        nix::unistd::mkfifo(&fifo, nix::sys::stat::Mode::from_bits_truncate(0o600)).unwrap();
        assert!(read_small_regular(&fifo, 10).unwrap_err().to_string().contains("not a regular file"));
        let endless = dir.join("zero");
        std::os::unix::fs::symlink("/dev/zero", &endless).unwrap();
        assert!(read_small_regular(&endless, 10).is_err());
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn zero_blocks_are_told_from_blocks_with_one_byte_set() {
        let mut block = vec![0u8; HOLE_BLOCK + 7];
        assert!(is_zero(&block) && is_zero(&[]));
        for at in [0, 63, 64, HOLE_BLOCK - 1, HOLE_BLOCK + 6] {
            block[at] = 1;
            assert!(!is_zero(&block), "a byte at {at}");
            block[at] = 0;
        }
    }
}
