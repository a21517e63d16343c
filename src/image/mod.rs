//! Images: where they are found, what kind they are, and (in the submodules)
//! how their contents are read without trusting them.

pub mod dir;
pub mod ext4;
pub mod extension;
pub mod gpt;
pub mod inspect;
pub mod kind;
pub mod loop_device;
pub mod mount;
pub mod name;
pub mod os_release;
pub mod policy;
pub mod pool;
pub mod readonly;
mod served;
pub mod slice;
pub mod squashfs;
pub mod tree;
pub mod units;
pub mod verity;
pub mod xz;

pub use inspect::{Inspection, Opened, Partition, inspect};
pub use kind::ImageKind;
pub use name::{ImageName, NameError};
pub use os_release::OsRelease;
pub use pool::{Pool, PoolEntry};

use std::path::PathBuf;

/// Errors about finding and recognising images. Every variant names the image.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("image '{0}' not found in {1}")]
    NotFound(String, String),
    #[error("image '{}': {source}", path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("image '{}': not an image (neither a directory nor a squashfs, ext4, erofs, GPT or xz file)", .0.display())]
    NotAnImage(PathBuf),
    #[error(transparent)]
    Name(#[from] NameError),
    #[error("image '{}': {kind} images cannot be read", image.display())]
    Unsupported { image: PathBuf, kind: ImageKind },
    #[error("image '{}': {source}", image.display())]
    Read {
        image: PathBuf,
        #[source]
        source: tree::TreeError,
    },
    #[error("image '{}': corrupt {kind} image: {reason}", image.display())]
    Corrupt { image: PathBuf, kind: ImageKind, reason: String },
    #[error("image '{}': no os-release (looked for /etc/os-release and /usr/lib/os-release)", .0.display())]
    NoOsRelease(PathBuf),
    #[error("image '{}': {source}", image.display())]
    Unit {
        image: PathBuf,
        #[source]
        source: units::UnitError,
    },
    #[error("image '{}': prefix '{prefix}' is not among the image's PORTABLE_PREFIXES ({allowed})", image.display())]
    PrefixNotAllowed { image: PathBuf, prefix: String, allowed: String },
    #[error("image '{}': no root or usr partition for {architecture} in its GPT partition table (found: {found})", image.display())]
    NoRootPartition { image: PathBuf, architecture: String, found: String },
    #[error("image '{}': {kind} file systems are read through a loop device and a mount, which needs root", image.display())]
    NeedsPrivilege { image: PathBuf, kind: ImageKind },
    #[error("image '{}': cannot mount its {kind} file system: {step}: {source}", image.display())]
    Mount {
        image: PathBuf,
        kind: ImageKind,
        step: &'static str,
        #[source]
        source: std::io::Error,
    },
    #[error("image '{}': decompresses to more than {}, the most wharf decompresses to inspect an image; decompress it (xz -dk) and inspect the raw file", image.display(), human_size(*limit))]
    TooLarge { image: PathBuf, limit: u64 },
    #[error("image '{}' has sha256 {found}, not the pinned {wanted}", image.display())]
    WrongDigest { image: PathBuf, found: String, wanted: String },
    #[error("image '{}': a sha256 can only be checked for image files, not directories", .0.display())]
    DigestOfDirectory(PathBuf),
    #[error("extension '{}': no {wanted} ({found})", extension.display())]
    NoExtensionRelease { extension: PathBuf, wanted: String, found: String },
    #[error("extension '{}': {source}", extension.display())]
    ExtensionRelease {
        extension: PathBuf,
        #[source]
        source: tree::TreeError,
    },
    #[error("extension '{}' does not match image '{}': {reason}", extension.display(), image.display())]
    ExtensionMismatch { extension: PathBuf, image: PathBuf, reason: Box<extension::Mismatch> },
    #[error("image '{}': verity: {reason}", image.display())]
    Verity { image: PathBuf, reason: String },
    #[error("{partition} partition of image '{}' does not match its verity hash: {reason}", image.display())]
    VerityMismatch { image: PathBuf, partition: String, reason: String },
    #[error("image '{}': '{}' already exists and was not decompressed from this image; remove or rename one of them", image.display(), target.display())]
    XzTargetExists { image: PathBuf, target: PathBuf },
}

impl Error {
    pub(crate) fn io(path: impl Into<PathBuf>) -> impl FnOnce(std::io::Error) -> Error {
        let path = path.into();
        move |source| Error::Io { path, source }
    }

    pub(crate) fn read(image: impl Into<PathBuf>) -> impl FnOnce(tree::TreeError) -> Error {
        let image = image.into();
        move |source| Error::Read { image, source }
    }
}

/// A size for people: whole GiB, MiB or KiB where it is one, else bytes.
fn human_size(bytes: u64) -> String {
    for (unit, size) in [("GiB", 1u64 << 30), ("MiB", 1 << 20), ("KiB", 1 << 10)] {
        if bytes >= size && bytes.is_multiple_of(size) {
            return format!("{} {unit}", bytes / size);
        }
    }
    format!("{bytes} bytes")
}

pub type Result<T, E = Error> = std::result::Result<T, E>;
