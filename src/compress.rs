//! Compressed streams as images and archives come: xz, gzip, zstd, bzip2 or none,
//! recognised by their magic bytes (never by file name) when reading, and
//! chosen by file name suffix when writing an export.

use std::io::{self, BufRead, BufReader, Read, Write};

/// How a stream is compressed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Compression {
    None,
    Xz,
    Gzip,
    Zstd,
    Bzip2,
}

const XZ_MAGIC: &[u8] = &[0xfd, b'7', b'z', b'X', b'Z', 0x00];
const GZIP_MAGIC: &[u8] = &[0x1f, 0x8b];
const ZSTD_MAGIC: &[u8] = &[0x28, 0xb5, 0x2f, 0xfd];
/// `BZh` and the block size digit, 1 to 9: the three letters alone begin
/// plain text too often to be taken for a stream.
const BZIP2_MAGIC: &[u8] = b"BZh";

impl Compression {
    /// Recognises a compressed stream from its first bytes.
    pub fn from_magic(head: &[u8]) -> Compression {
        if head.starts_with(XZ_MAGIC) {
            Compression::Xz
        } else if head.starts_with(GZIP_MAGIC) {
            Compression::Gzip
        } else if head.starts_with(ZSTD_MAGIC) {
            Compression::Zstd
        } else if head.starts_with(BZIP2_MAGIC) && matches!(head.get(3), Some(b'1'..=b'9')) {
            Compression::Bzip2
        } else {
            Compression::None
        }
    }

    /// The compression an export to `file_name` gets: `.xz`, `.gz`, `.zst`, `.bz2`, else none.
    pub fn from_suffix(file_name: &str) -> Compression {
        if file_name.ends_with(".xz") {
            Compression::Xz
        } else if file_name.ends_with(".gz") || file_name.ends_with(".tgz") {
            Compression::Gzip
        } else if file_name.ends_with(".zst") || file_name.ends_with(".zstd") {
            Compression::Zstd
        } else if file_name.ends_with(".bz2") || file_name.ends_with(".tbz2") {
            Compression::Bzip2
        } else {
            Compression::None
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Compression::None => "none",
            Compression::Xz => "xz",
            Compression::Gzip => "gzip",
            Compression::Zstd => "zstd",
            Compression::Bzip2 => "bzip2",
        }
    }
}

/// Opens a decompressing reader over `input`, whose compression is found
/// from its first bytes. xz streams are decoded with liblzma's multithreaded
/// decoder, which uses every core when the stream has several blocks (as
/// `xz -T0` writes them).
pub fn decoder<'a, R: Read + Send + 'a>(input: R) -> io::Result<(Compression, Box<dyn Read + Send + 'a>)> {
    let mut buffered = BufReader::with_capacity(1 << 20, input);
    let kind = Compression::from_magic(buffered.fill_buf()?);
    let reader: Box<dyn Read + Send + 'a> = match kind {
        Compression::None => Box::new(buffered),
        Compression::Xz => Box::new(liblzma::bufread::XzDecoder::new_stream(buffered, xz_stream_decoder()?)),
        Compression::Gzip => Box::new(flate2::bufread::MultiGzDecoder::new(buffered)),
        Compression::Zstd => Box::new(zstd::stream::read::Decoder::with_buffer(buffered)?),
        // Every stream of a concatenation, as pbzip2 and `cat a.bz2 b.bz2` make.
        Compression::Bzip2 => Box::new(bzip2::bufread::MultiBzDecoder::new(buffered)),
    };
    Ok((kind, reader))
}

/// Memory the xz decoder may use before it runs on fewer threads (liblzma's
/// default of 0 would mean one thread).
const XZ_MEMLIMIT_THREADING: u64 = 256 << 20;
/// Memory no xz stream may make the decoder use (`xz -9` needs 65 MiB).
const XZ_MEMLIMIT_STOP: u64 = 1 << 30;

/// liblzma's multithreaded xz decoder, one thread per core: it decodes the
/// blocks of a stream in parallel where their headers give their sizes
/// (what `xz -T` writes), and falls back to one thread on its own otherwise.
pub fn xz_stream_decoder() -> io::Result<liblzma::stream::Stream> {
    let threads = std::thread::available_parallelism().map_or(1, |n| n.get()).min(16) as u32;
    liblzma::stream::MtStreamBuilder::new()
        .threads(threads)
        .memlimit_threading(XZ_MEMLIMIT_THREADING)
        .memlimit_stop(XZ_MEMLIMIT_STOP)
        .decoder()
        .map_err(io::Error::other)
}

/// A compressing writer that must be finished to write its trailer.
pub trait Finish: Write + Send {
    fn finish(self: Box<Self>) -> io::Result<()>;
}

struct Plain<W: Write + Send>(W);

impl<W: Write + Send> Write for Plain<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.0.write(buf)
    }
    fn flush(&mut self) -> io::Result<()> {
        self.0.flush()
    }
}

impl<W: Write + Send> Finish for Plain<W> {
    fn finish(mut self: Box<Self>) -> io::Result<()> {
        self.0.flush()
    }
}

impl<W: Write + Send> Finish for liblzma::write::XzEncoder<W> {
    fn finish(self: Box<Self>) -> io::Result<()> {
        (*self).finish()?.flush()
    }
}

impl<W: Write + Send> Finish for flate2::write::GzEncoder<W> {
    fn finish(self: Box<Self>) -> io::Result<()> {
        (*self).finish()?.flush()
    }
}

impl<W: Write + Send> Finish for bzip2::write::BzEncoder<W> {
    fn finish(self: Box<Self>) -> io::Result<()> {
        (*self).finish()?.flush()
    }
}

impl<W: Write + Send> Finish for zstd::stream::write::Encoder<'static, W> {
    fn finish(self: Box<Self>) -> io::Result<()> {
        (*self).finish()?.flush()
    }
}

/// Opens a compressing writer of the given kind over `output`.
pub fn encoder<W: Write + Send + 'static>(kind: Compression, output: W) -> io::Result<Box<dyn Finish>> {
    Ok(match kind {
        Compression::None => Box::new(Plain(output)),
        Compression::Xz => {
            let threads = std::thread::available_parallelism().map_or(1, |n| n.get() as u32);
            let stream = liblzma::stream::MtStreamBuilder::new()
                .threads(threads)
                .preset(6)
                .check(liblzma::stream::Check::Crc64)
                .encoder()
                .map_err(io::Error::other)?;
            Box::new(liblzma::write::XzEncoder::new_stream(output, stream))
        }
        Compression::Gzip => Box::new(flate2::write::GzEncoder::new(output, flate2::Compression::default())),
        Compression::Zstd => Box::new(zstd::stream::write::Encoder::new(output, 3)?),
        Compression::Bzip2 => Box::new(bzip2::write::BzEncoder::new(output, bzip2::Compression::best())),
    })
}

/// A reader that reports how many bytes went through it.
pub struct Counting<R, F> {
    inner: R,
    count: u64,
    report: F,
}

impl<R, F> std::fmt::Debug for Counting<R, F> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Counting").field("count", &self.count).finish()
    }
}

impl<R: Read, F: FnMut(u64)> Counting<R, F> {
    pub fn new(inner: R, report: F) -> Self {
        Counting { inner, count: 0, report }
    }
}

impl<R: Read, F: FnMut(u64)> Read for Counting<R, F> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.count += n as u64;
        (self.report)(self.count);
        Ok(n)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_every_kind() {
        let data: Vec<u8> = (0..200_000u32).flat_map(|i| (i % 251).to_le_bytes()).collect();
        for kind in [Compression::None, Compression::Xz, Compression::Gzip, Compression::Zstd, Compression::Bzip2] {
            let buffer = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
            struct Shared(std::sync::Arc<std::sync::Mutex<Vec<u8>>>);
            impl Write for Shared {
                fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
                    self.0.lock().unwrap().extend_from_slice(buf);
                    Ok(buf.len())
                }
                fn flush(&mut self) -> io::Result<()> {
                    Ok(())
                }
            }
            let mut writer = encoder(kind, Shared(buffer.clone())).unwrap();
            writer.write_all(&data).unwrap();
            writer.finish().unwrap();
            let compressed = buffer.lock().unwrap().clone();
            let (found, mut reader) = decoder(&compressed[..]).unwrap();
            assert_eq!(found, kind);
            let mut back = Vec::new();
            reader.read_to_end(&mut back).unwrap();
            assert_eq!(back, data, "{kind:?}");
        }
    }

    #[test]
    fn suffixes_choose_the_export_compression() {
        assert_eq!(Compression::from_suffix("f28.tar.xz"), Compression::Xz);
        assert_eq!(Compression::from_suffix("f28.tgz"), Compression::Gzip);
        assert_eq!(Compression::from_suffix("f28.raw.zst"), Compression::Zstd);
        assert_eq!(Compression::from_suffix("f28.tar.bz2"), Compression::Bzip2);
        assert_eq!(Compression::from_suffix("f28.tar"), Compression::None);
    }

    #[test]
    fn corrupt_streams_are_errors() {
        let mut bad = XZ_MAGIC.to_vec();
        bad.extend_from_slice(&[0u8; 64]);
        let (_, mut reader) = decoder(&bad[..]).unwrap();
        assert!(reader.read_to_end(&mut Vec::new()).is_err());
    }

    fn bzip2_of(data: &[u8]) -> Vec<u8> {
        let mut writer = bzip2::write::BzEncoder::new(Vec::new(), bzip2::Compression::fast());
        writer.write_all(data).unwrap();
        writer.finish().unwrap()
    }

    #[test]
    fn bzip2_is_told_by_its_magic_and_block_size() {
        let stream = bzip2_of(b"an image");
        assert!(stream.starts_with(b"BZh"));
        assert_eq!(Compression::from_magic(&stream), Compression::Bzip2);
        for size in b'1'..=b'9' {
            assert_eq!(Compression::from_magic(&[b'B', b'Z', b'h', size, 0x31]), Compression::Bzip2);
        }
        // Text that begins with the letters is no stream, nor is a head too
        // short to hold the block size.
        assert_eq!(Compression::from_magic(b"BZh is not a stream"), Compression::None);
        assert_eq!(Compression::from_magic(b"BZh0"), Compression::None);
        assert_eq!(Compression::from_magic(b"BZh"), Compression::None);
    }

    #[test]
    fn bzip2_decodes_concatenated_streams() {
        let mut both = bzip2_of(b"first ");
        both.extend(bzip2_of(b"second"));
        let (kind, mut reader) = decoder(&both[..]).unwrap();
        assert_eq!(kind, Compression::Bzip2);
        let mut back = Vec::new();
        reader.read_to_end(&mut back).unwrap();
        assert_eq!(back, b"first second");
    }

    #[test]
    fn truncated_and_corrupt_bzip2_are_errors() {
        let data: Vec<u8> = (0..100_000u32).flat_map(|i| (i.wrapping_mul(2_654_435_761)).to_le_bytes()).collect();
        let stream = bzip2_of(&data);
        // Cut short: the end of stream marker and its CRC never come.
        let (_, mut reader) = decoder(&stream[..stream.len() / 2]).unwrap();
        assert!(reader.read_to_end(&mut Vec::new()).is_err());
        // A changed byte in the middle of a block.
        let mut changed = stream.clone();
        let middle = changed.len() / 2;
        changed[middle] ^= 0x55;
        let (_, mut reader) = decoder(&changed[..]).unwrap();
        assert!(reader.read_to_end(&mut Vec::new()).is_err());
    }
}
