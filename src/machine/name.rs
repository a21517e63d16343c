//! Machine names: what systemd-machined accepts, which is a valid host name
//! (ASCII letters, digits, `-`, `_`, `.`; at most 64 characters).

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("'{name}' is not a valid machine name: {reason}")]
pub struct NameError {
    pub name: String,
    pub reason: &'static str,
}

/// Checks a machine name, returning it unchanged when valid.
pub fn validate(name: &str) -> Result<&str, NameError> {
    let invalid = |reason| Err(NameError { name: name.to_string(), reason });
    if name.is_empty() {
        return invalid("it is empty");
    }
    if name.len() > 64 {
        return invalid("it is longer than 64 characters");
    }
    if !name.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.')) {
        return invalid("only ASCII letters, digits, '-', '_' and '.' are allowed");
    }
    if name.starts_with(['.', '-']) || name.ends_with(['.', '-']) {
        return invalid("it may not start or end with '.' or '-'");
    }
    if name.contains("..") {
        return invalid("it may not contain '..'");
    }
    Ok(name)
}

/// The machine name of an image file or directory name: `f28.raw` -> `f28`.
pub fn from_image_name(image: &str) -> &str {
    image.strip_suffix(".raw").unwrap_or(image)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_follow_hostname_rules() {
        for good in ["f28", "web-1", "a.b_c", &"x".repeat(64)] {
            assert_eq!(validate(good), Ok(good));
        }
        for bad in ["", "a b", "ünicode", "-x", "x.", "a..b", "../etc", &"x".repeat(65), "a/b"] {
            assert!(validate(bad).is_err(), "{bad:?} accepted");
        }
        assert_eq!(
            validate("a b").unwrap_err().to_string(),
            "'a b' is not a valid machine name: only ASCII letters, digits, '-', '_' and '.' are allowed"
        );
        assert_eq!(from_image_name("f28.raw"), "f28");
        assert_eq!(from_image_name("f28"), "f28");
    }
}
