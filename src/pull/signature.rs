//! Checking the signature of a `SHA256SUMS` against the import keyring,
//! with GnuPG's `gpgv` (what systemd-importd runs too): a verifier only,
//! with no trust database or agent, given exactly one keyring.

use std::fmt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

/// Where the import keyring is looked for, first found wins (as
/// systemd-importd looks for its import-pubring.gpg).
pub const KEYRINGS: &[&str] = &["/etc/wharf/import-pubring.pgp", "/usr/lib/wharf/import-pubring.pgp"];

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SignatureError {
    /// No keyring to check against.
    NoKeyring,
    /// gpgv is not installed.
    NoVerifier,
    /// The signature is by a key the keyring does not hold.
    UnknownKey {
        keyring: PathBuf,
        key: String,
    },
    /// The signed data is not what was signed.
    Bad,
    /// The key expired or was revoked.
    KeyUnusable(&'static str),
    /// The file is not a signature.
    NotSignature,
    Failed(String),
}

impl fmt::Display for SignatureError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SignatureError::NoKeyring => {
                write!(
                    f,
                    "no import keyring to check it against ({}); or pull with --verify=checksum",
                    KEYRINGS.join(" or ")
                )
            }
            SignatureError::NoVerifier => {
                f.write_str("gpgv is not installed: install gnupg's gpgv to check signatures")
            }
            SignatureError::UnknownKey { keyring, key } => {
                write!(f, "is signed by key {key}, which {} does not hold", keyring.display())
            }
            SignatureError::Bad => f.write_str("the signature does not match the file: it was changed after signing"),
            SignatureError::KeyUnusable(why) => write!(f, "is signed by a key that {why}"),
            SignatureError::NotSignature => f.write_str("is not an OpenPGP signature"),
            SignatureError::Failed(why) => write!(f, "cannot be checked: {why}"),
        }
    }
}

impl std::error::Error for SignatureError {}

/// The import keyring in use.
pub fn keyring() -> Result<PathBuf, SignatureError> {
    KEYRINGS.iter().map(PathBuf::from).find(|path| path.is_file()).ok_or(SignatureError::NoKeyring)
}

/// Checks that `signature` (binary or ASCII-armoured, detached) signs
/// `data` with a key of `keyring`. `scratch` is a directory of root's where
/// a private directory for the files is made and removed again.
pub fn verify(keyring: &Path, data: &[u8], signature: &[u8], scratch: &Path) -> Result<(), SignatureError> {
    let dir = Scratch::new(scratch).map_err(|e| SignatureError::Failed(format!("{}: {e}", scratch.display())))?;
    let (data_path, signature_path) = (dir.0.join("data"), dir.0.join("signature"));
    let written = std::fs::write(&data_path, data).and_then(|()| std::fs::write(&signature_path, signature));
    written.map_err(|e| SignatureError::Failed(format!("{}: {e}", dir.0.display())))?;
    let output = Command::new("gpgv")
        .arg("--homedir")
        .arg(&dir.0)
        .args(["--status-fd", "1", "--keyring"])
        .arg(keyring)
        .arg(&signature_path)
        .arg(&data_path)
        .stdin(Stdio::null())
        .output()
        .map_err(|e| match e.kind() {
            std::io::ErrorKind::NotFound => SignatureError::NoVerifier,
            _ => SignatureError::Failed(format!("cannot run gpgv: {e}")),
        })?;
    let status = String::from_utf8_lossy(&output.stdout);
    match verdict(&status, keyring) {
        Ok(()) if output.status.success() => Ok(()),
        Ok(()) => Err(SignatureError::Failed(format!(
            "gpgv ended with {}: {}",
            output.status,
            String::from_utf8_lossy(&output.stderr).lines().last().unwrap_or_default()
        ))),
        Err(e) => Err(e),
    }
}

/// What gpgv's status lines (`--status-fd`) say of a signature: good only
/// if a good signature is reported and nothing bad is.
pub fn verdict(status: &str, keyring: &Path) -> Result<(), SignatureError> {
    let mut good = false;
    let mut error = None;
    for line in status.lines() {
        let Some(line) = line.strip_prefix("[GNUPG:] ") else { continue };
        let mut words = line.split_whitespace();
        let keyword = words.next().unwrap_or_default();
        let found = match keyword {
            "GOODSIG" | "VALIDSIG" => {
                good = true;
                None
            }
            "BADSIG" => Some(SignatureError::Bad),
            "EXPKEYSIG" => Some(SignatureError::KeyUnusable("has expired")),
            "REVKEYSIG" => Some(SignatureError::KeyUnusable("was revoked")),
            "EXPSIG" => Some(SignatureError::KeyUnusable("made a signature that has expired")),
            "NO_PUBKEY" | "ERRSIG" => Some(SignatureError::UnknownKey {
                keyring: keyring.to_path_buf(),
                key: words.next().unwrap_or("?").to_string(),
            }),
            "NODATA" => Some(SignatureError::NotSignature),
            _ => None,
        };
        // The first problem is the one reported (ERRSIG and NO_PUBKEY
        // come together and say the same).
        if error.is_none() {
            error = found;
        }
    }
    match error {
        Some(error) => Err(error),
        None if good => Ok(()),
        None => Err(SignatureError::NotSignature),
    }
}

/// A private directory, removed with what it holds when dropped.
struct Scratch(PathBuf);

impl Scratch {
    fn new(parent: &Path) -> std::io::Result<Scratch> {
        use std::os::unix::fs::DirBuilderExt;
        use std::sync::atomic::{AtomicU64, Ordering};
        static SERIAL: AtomicU64 = AtomicU64::new(0);
        let serial = SERIAL.fetch_add(1, Ordering::Relaxed);
        let path = parent.join(format!(".#wharf-verify-{}-{serial}", std::process::id()));
        std::fs::DirBuilder::new().mode(0o700).create(&path)?;
        Ok(Scratch(path))
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        if let Err(e) = std::fs::remove_dir_all(&self.0) {
            tracing::warn!(path = %self.0.display(), "cannot remove a scratch directory: {e}");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const KEYRING: &str = "/etc/wharf/import-pubring.pgp";

    #[test]
    fn only_a_good_signature_and_nothing_bad_passes() {
        let keyring = Path::new(KEYRING);
        let good = "[GNUPG:] NEWSIG\n[GNUPG:] GOODSIG 0123456789ABCDEF wharf test\n[GNUPG:] VALIDSIG ABCD 2026-12-03\n";
        assert_eq!(verdict(good, keyring), Ok(()));
        let bad = "[GNUPG:] NEWSIG\n[GNUPG:] BADSIG 0123456789ABCDEF wharf test\n";
        assert_eq!(verdict(bad, keyring), Err(SignatureError::Bad));
        let other_key = "[GNUPG:] NEWSIG\n[GNUPG:] ERRSIG 89ABCDEF01234567 22 10 00 1764720000 9 -\n[GNUPG:] NO_PUBKEY 89ABCDEF01234567\n";
        assert_eq!(
            verdict(other_key, keyring),
            Err(SignatureError::UnknownKey { keyring: keyring.into(), key: "89ABCDEF01234567".into() })
        );
        // A good signature next to a bad one is not good.
        let mixed = format!("{good}{bad}");
        assert_eq!(verdict(&mixed, keyring), Err(SignatureError::Bad));
        assert_eq!(verdict("[GNUPG:] NODATA 1\n", keyring), Err(SignatureError::NotSignature));
        assert_eq!(verdict("", keyring), Err(SignatureError::NotSignature));
        let expired = "[GNUPG:] EXPKEYSIG 0123456789ABCDEF wharf test\n";
        assert_eq!(verdict(expired, keyring), Err(SignatureError::KeyUnusable("has expired")));
    }

    #[test]
    fn messages_name_the_keyring_and_the_key() {
        let error = SignatureError::UnknownKey { keyring: KEYRING.into(), key: "89ABCDEF01234567".into() };
        assert_eq!(error.to_string(), format!("is signed by key 89ABCDEF01234567, which {KEYRING} does not hold"));
        assert!(SignatureError::NoKeyring.to_string().contains("/usr/lib/wharf/import-pubring.pgp"));
    }
}
