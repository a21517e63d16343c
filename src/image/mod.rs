//! Images: where they are found, what kind they are, and (in the submodules)
//! how their contents are read without trusting them.

pub mod kind;
pub mod name;
pub mod pool;
pub mod readonly;

pub use kind::ImageKind;
pub use name::{ImageName, NameError};
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
}

impl Error {
    pub(crate) fn io(path: impl Into<PathBuf>) -> impl FnOnce(std::io::Error) -> Error {
        let path = path.into();
        move |source| Error::Io { path, source }
    }
}

pub type Result<T, E = Error> = std::result::Result<T, E>;
