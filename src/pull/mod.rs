//! Getting images from a web server: `machine pull-raw`, `machine
//! pull-tar` and `portable pull`.
//!
//! The download runs in a process of its own (`wharfd fetch`, see
//! [`fetch`]), a transient unit with a dynamic user, no capabilities and no
//! writable file system: the code that talks to a remote server never runs
//! with wharfd's rights, and wharfd itself keeps no network access. wharfd
//! reads the bytes from a pipe, hashes them as they stream, decompresses and
//! writes them under a temporary name, and gives the image its name only
//! once the digest matches a `SHA256SUMS` whose signature [`signature`]
//! checked against the import keyring.

pub mod fetch;
pub mod oci;
pub mod signature;
pub mod source;
pub mod sums;

use std::fmt;
use std::str::FromStr;

pub use source::Source;

/// How much of a download is checked before it becomes an image, as
/// importctl's `--verify=` says it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verify {
    /// Nothing: the image is taken as the server sends it.
    No,
    /// Its SHA-256 digest must be the one `SHA256SUMS` lists.
    Checksum,
    /// And `SHA256SUMS` must be signed by a key of the import keyring.
    Signature,
}

impl FromStr for Verify {
    type Err = Error;

    fn from_str(word: &str) -> Result<Verify, Error> {
        match word {
            "no" => Ok(Verify::No),
            "checksum" => Ok(Verify::Checksum),
            "signature" | "" => Ok(Verify::Signature),
            other => Err(Error::Argument(format!("--verify takes no, checksum or signature, not '{other}'"))),
        }
    }
}

impl fmt::Display for Verify {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Verify::No => "no",
            Verify::Checksum => "checksum",
            Verify::Signature => "signature",
        })
    }
}

/// Why a pull failed, in the words its user gets.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Error {
    #[error("{0}")]
    Argument(String),
    /// The server, the network or the download failed.
    #[error("{url}: {reason}")]
    Fetch { url: String, reason: fetch::Failure },
    #[error("{url}: {reason}")]
    Sums { url: String, reason: sums::SumsError },
    #[error("{url}: {reason}")]
    Signature { url: String, reason: signature::SignatureError },
    #[error("{url}: its SHA-256 digest is {got}, but {sums} lists {expected}: the image was not kept")]
    Mismatch { url: String, sums: String, got: String, expected: String },
    #[error("{0}")]
    Setup(String),
    /// A registry pull refused: `what` names the reference, manifest or blob.
    #[error("{what}: {reason}")]
    Oci { what: String, reason: Box<oci::OciError> },
}

/// Lower-case hex of a digest.
pub fn hex(digest: &[u8]) -> String {
    digest.iter().map(|b| format!("{b:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn verify_words_are_importctls() {
        assert_eq!("no".parse::<Verify>().unwrap(), Verify::No);
        assert_eq!("checksum".parse::<Verify>().unwrap(), Verify::Checksum);
        assert_eq!("signature".parse::<Verify>().unwrap(), Verify::Signature);
        // Unset over the bus: the default, the strictest.
        assert_eq!("".parse::<Verify>().unwrap(), Verify::Signature);
        let error = "yes".parse::<Verify>().unwrap_err().to_string();
        assert_eq!(error, "--verify takes no, checksum or signature, not 'yes'");
    }
}
