//! `SHA256SUMS` files, as `sha256sum` writes them (`HEX  NAME`, `HEX *NAME`)
//! or with `--tag` (`SHA256 (NAME) = HEX`).

use std::fmt;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SumsError {
    /// The file does not list the image.
    NotListed(String),
    /// It lists it with two different digests.
    Conflicting(String),
    /// Its line for the image has no 64-digit hex digest.
    Malformed(String),
    /// The file is not text.
    NotText,
}

impl fmt::Display for SumsError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SumsError::NotListed(file) => write!(f, "lists no digest for {file}"),
            SumsError::Conflicting(file) => write!(f, "lists two different digests for {file}"),
            SumsError::Malformed(file) => write!(f, "its line for {file} has no SHA-256 digest"),
            SumsError::NotText => f.write_str("is not a text file of digests"),
        }
    }
}

impl std::error::Error for SumsError {}

/// The digest `sums` lists for `file`.
pub fn digest_of(sums: &[u8], file: &str) -> Result<[u8; 32], SumsError> {
    let text = std::str::from_utf8(sums).map_err(|_| SumsError::NotText)?;
    let mut found: Option<[u8; 32]> = None;
    for line in text.lines() {
        let Some((digest, name)) = entry(line) else { continue };
        if name != file {
            continue;
        }
        let digest = parse_hex(digest).ok_or_else(|| SumsError::Malformed(file.to_string()))?;
        match found {
            Some(earlier) if earlier != digest => return Err(SumsError::Conflicting(file.to_string())),
            _ => found = Some(digest),
        }
    }
    found.ok_or_else(|| SumsError::NotListed(file.to_string()))
}

/// The digest a `FILE.sha256` gives for `file`: a `sha256sum` line, or
/// the digest alone.
pub fn digest_in_sha256_file(text: &[u8], file: &str) -> Result<[u8; 32], SumsError> {
    match digest_of(text, file) {
        Err(SumsError::NotListed(_)) => {
            let alone = std::str::from_utf8(text).map_err(|_| SumsError::NotText)?.trim();
            parse_hex(alone).ok_or_else(|| SumsError::NotListed(file.to_string()))
        }
        other => other,
    }
}

/// (digest, file name) of one line, in either form.
fn entry(line: &str) -> Option<(&str, &str)> {
    let line = line.trim_end_matches('\r');
    if let Some(rest) = line.strip_prefix("SHA256 (") {
        let (name, digest) = rest.rsplit_once(") = ")?;
        return Some((digest.trim(), name));
    }
    let (digest, rest) = line.split_once(' ')?;
    // One blank then ' ' (text) or '*' (binary) before the name.
    let name = rest.strip_prefix(' ').or_else(|| rest.strip_prefix('*'))?;
    Some((digest, name))
}

fn parse_hex(text: &str) -> Option<[u8; 32]> {
    if text.len() != 64 || !text.bytes().all(|b| b.is_ascii_hexdigit()) {
        return None;
    }
    let mut digest = [0u8; 32];
    for (i, byte) in digest.iter_mut().enumerate() {
        *byte = u8::from_str_radix(&text[2 * i..2 * i + 2], 16).ok()?;
    }
    Some(digest)
}

#[cfg(test)]
mod tests {
    use super::*;

    const A: &str = "9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08";
    const B: &str = "60303ae22b998861bce3b28f33eec1be758a213c86c93c076dbe9f558c11c752";

    #[test]
    fn both_forms_of_sha256sum_are_read() {
        let sums = format!("{B}  other.raw\n{A}  f28.raw.xz\n");
        assert_eq!(super::super::hex(&digest_of(sums.as_bytes(), "f28.raw.xz").unwrap()), A);
        let binary = format!("{A} *f28.raw.xz\r\n");
        assert_eq!(super::super::hex(&digest_of(binary.as_bytes(), "f28.raw.xz").unwrap()), A);
        let tagged = format!("SHA256 (f28.raw.xz) = {}\n", A.to_uppercase());
        assert_eq!(super::super::hex(&digest_of(tagged.as_bytes(), "f28.raw.xz").unwrap()), A);
    }

    #[test]
    fn a_missing_conflicting_or_malformed_entry_is_refused() {
        let sums = format!("{A}  f28.raw.xz\n");
        assert_eq!(digest_of(sums.as_bytes(), "f29.raw.xz"), Err(SumsError::NotListed("f29.raw.xz".into())));
        // A name is matched whole, never as a suffix.
        assert_eq!(digest_of(sums.as_bytes(), "28.raw.xz"), Err(SumsError::NotListed("28.raw.xz".into())));
        let twice = format!("{A}  f28.raw.xz\n{B}  f28.raw.xz\n");
        assert_eq!(digest_of(twice.as_bytes(), "f28.raw.xz"), Err(SumsError::Conflicting("f28.raw.xz".into())));
        let same_twice = format!("{A}  f28.raw.xz\n{A}  f28.raw.xz\n");
        assert!(digest_of(same_twice.as_bytes(), "f28.raw.xz").is_ok());
        let short = format!("{}  f28.raw.xz\n", &A[..60]);
        assert_eq!(digest_of(short.as_bytes(), "f28.raw.xz"), Err(SumsError::Malformed("f28.raw.xz".into())));
        assert_eq!(digest_of(b"\xff\xfe", "f28.raw.xz"), Err(SumsError::NotText));
    }

    #[test]
    fn a_sha256_file_may_hold_the_digest_alone() {
        assert_eq!(super::super::hex(&digest_in_sha256_file(format!("{A}\n").as_bytes(), "f.raw").unwrap()), A);
        let line = format!("{A}  f.raw\n");
        assert_eq!(super::super::hex(&digest_in_sha256_file(line.as_bytes(), "f.raw").unwrap()), A);
        let other = format!("{A}  g.raw\n");
        assert_eq!(digest_in_sha256_file(other.as_bytes(), "f.raw"), Err(SumsError::NotListed("f.raw".into())));
    }
}
