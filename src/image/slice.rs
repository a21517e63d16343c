//! A window onto an image file: the whole file, or one partition of a GPT
//! disk. Readers (backhand, ext4-view) see a file that starts at the window's
//! start and ends at its end, so a corrupt file system in one partition can
//! never make them read another partition or past the disk.

use std::fs::File;
use std::io::{self, Read, Seek, SeekFrom};
use std::os::unix::fs::FileExt;
use std::sync::Arc;

/// `len` bytes of `file` from `offset`, read with pread(2): the file
/// position is never used, so slices over one file can be read side by side.
#[derive(Debug, Clone)]
pub struct FileSlice {
    file: Arc<File>,
    offset: u64,
    len: u64,
    /// Position for [`Read`] and [`Seek`], relative to `offset`.
    pos: u64,
}

impl FileSlice {
    /// The whole of `file` (a regular file or a block device).
    pub fn whole(file: File) -> io::Result<FileSlice> {
        let file = Arc::new(file);
        let len = file_len(&file)?;
        Ok(FileSlice::new(file, 0, len))
    }

    /// `len` bytes of `file` from `offset`. The caller checks that the range is
    /// inside the file; reads past the file's real end come back short.
    pub fn new(file: Arc<File>, offset: u64, len: u64) -> FileSlice {
        FileSlice { file, offset, len, pos: 0 }
    }

    pub fn len(&self) -> u64 {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Where the window starts in the file.
    pub fn offset(&self) -> u64 {
        self.offset
    }

    pub fn file(&self) -> &Arc<File> {
        &self.file
    }

    /// Reads up to `buf.len()` bytes at `pos` (relative to the window);
    /// 0 at or past its end.
    pub fn read_at(&self, buf: &mut [u8], pos: u64) -> io::Result<usize> {
        let available = self.len.saturating_sub(pos);
        let n = usize::try_from(available).unwrap_or(usize::MAX).min(buf.len());
        if n == 0 {
            return Ok(0);
        }
        let at = self
            .offset
            .checked_add(pos)
            .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "offset overflows a 64-bit position"))?;
        loop {
            match self.file.read_at(&mut buf[..n], at) {
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                result => return result,
            }
        }
    }

    /// Fills `buf` from `pos`, or fails with `UnexpectedEof` when the window
    /// (or the file) ends first.
    pub fn read_exact_at(&self, mut buf: &mut [u8], mut pos: u64) -> io::Result<()> {
        while !buf.is_empty() {
            match self.read_at(buf, pos)? {
                0 => {
                    return Err(io::Error::new(
                        io::ErrorKind::UnexpectedEof,
                        format!("the image ends before byte {}", pos + buf.len() as u64),
                    ));
                }
                n => {
                    buf = &mut buf[n..];
                    pos += n as u64;
                }
            }
        }
        Ok(())
    }
}

/// The size of a regular file or block device (whose metadata says 0).
pub fn file_len(file: &File) -> io::Result<u64> {
    let meta = file.metadata()?;
    if meta.is_file() {
        return Ok(meta.len());
    }
    // lseek on a shared &File moves the shared position, but nothing here
    // reads through it: every read is a pread.
    let mut file = file;
    file.seek(SeekFrom::End(0))
}

impl Read for FileSlice {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.read_at(buf, self.pos)?;
        self.pos += n as u64;
        Ok(n)
    }
}

impl Seek for FileSlice {
    fn seek(&mut self, pos: SeekFrom) -> io::Result<u64> {
        let target = match pos {
            SeekFrom::Start(n) => Some(n),
            SeekFrom::End(delta) => self.len.checked_add_signed(delta),
            SeekFrom::Current(delta) => self.pos.checked_add_signed(delta),
        };
        match target {
            Some(target) => {
                self.pos = target;
                Ok(target)
            }
            None => Err(io::Error::new(io::ErrorKind::InvalidInput, "seek before the start or past 2^64")),
        }
    }
}

impl ext4_view::Ext4Read for FileSlice {
    fn read(&mut self, start_byte: u64, dst: &mut [u8]) -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
        self.read_exact_at(dst, start_byte).map_err(Into::into)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn scratch_file(bytes: &[u8]) -> Arc<File> {
        let path = std::env::temp_dir().join(format!("wharf-slice-{}-{}", std::process::id(), bytes.len()));
        std::fs::write(&path, bytes).unwrap();
        let file = File::open(&path).unwrap();
        std::fs::remove_file(&path).unwrap();
        Arc::new(file)
    }

    #[test]
    fn reads_stay_inside_the_window() {
        let file = scratch_file(b"0123456789");
        let mut slice = FileSlice::new(file.clone(), 2, 5);
        let mut all = Vec::new();
        slice.read_to_end(&mut all).unwrap();
        assert_eq!(all, b"23456");

        let mut buf = [0u8; 4];
        assert_eq!(slice.read_at(&mut buf, 3).unwrap(), 2);
        assert_eq!(&buf[..2], b"56");
        assert_eq!(slice.read_at(&mut buf, 5).unwrap(), 0);
        assert_eq!(slice.read_at(&mut buf, u64::MAX).unwrap(), 0);
        assert_eq!(slice.read_exact_at(&mut buf, 2).unwrap_err().kind(), io::ErrorKind::UnexpectedEof);
        slice.read_exact_at(&mut buf, 1).unwrap();
        assert_eq!(&buf, b"3456");

        assert_eq!(slice.seek(SeekFrom::End(-1)).unwrap(), 4);
        assert_eq!(slice.read(&mut buf).unwrap(), 1);
        assert_eq!(buf[0], b'6');
        assert!(slice.seek(SeekFrom::Current(-10)).is_err());
        assert_eq!(slice.seek(SeekFrom::Start(100)).unwrap(), 100);
        assert_eq!(slice.read(&mut buf).unwrap(), 0);
    }

    #[test]
    fn a_window_past_the_file_reads_short_and_never_wraps() {
        let file = scratch_file(b"abc");
        let slice = FileSlice::new(file.clone(), 2, 10);
        let mut buf = [0u8; 8];
        assert_eq!(slice.read_at(&mut buf, 0).unwrap(), 1);
        assert!(slice.read_exact_at(&mut buf, 0).is_err());
        let far = FileSlice::new(file, u64::MAX - 1, 10);
        assert_eq!(far.read_at(&mut buf, 5).unwrap_err().kind(), io::ErrorKind::InvalidInput);
        let whole = FileSlice::whole(File::open("/proc/self/exe").unwrap()).unwrap();
        assert!(!whole.is_empty());
    }
}
