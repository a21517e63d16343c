//! Image names as portablectl users know them: `foobar_1.2.raw` is version
//! `1.2` of `foobar`, whose units are those whose names start with the prefix
//! `foobar` followed by `-`, `.`, `@` or nothing.

use std::fmt;

/// Suffixes that are not part of an image's prefix, longest first.
const IMAGE_SUFFIXES: &[&str] = &[".raw.xz", ".raw"];

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NameError {
    #[error("'{0}' is not a valid image name: {1}")]
    Invalid(String, &'static str),
    #[error("'{0}' is not a valid unit name prefix: {1}")]
    InvalidPrefix(String, &'static str),
}

/// A validated image file name (no directory part).
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ImageName(String);

impl ImageName {
    pub fn new(name: &str) -> Result<ImageName, NameError> {
        let invalid = |why| Err(NameError::Invalid(name.to_string(), why));
        if name.is_empty() {
            return invalid("it is empty");
        }
        if name.len() > 255 {
            return invalid("it is longer than 255 bytes");
        }
        if name == "." || name == ".." {
            return invalid("it is a relative directory reference");
        }
        if name.starts_with('.') {
            return invalid("it starts with a dot (hidden and temporary files are not images)");
        }
        if name.starts_with('-') {
            return invalid("it starts with '-' (it would read as an option)");
        }
        if name.contains('/') {
            return invalid("it contains '/'");
        }
        if name.chars().any(|c| c.is_control()) {
            return invalid("it contains a control character");
        }
        Ok(ImageName(name.to_string()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The name without `.raw` or `.raw.xz`: `foobar_1.2.raw` -> `foobar_1.2`.
    pub fn stem(&self) -> &str {
        IMAGE_SUFFIXES
            .iter()
            .find_map(|suffix| self.0.strip_suffix(suffix))
            .filter(|stem| !stem.is_empty())
            .unwrap_or(&self.0)
    }

    /// The default unit prefix: the stem up to the first `_`.
    pub fn prefix(&self) -> &str {
        let stem = self.stem();
        match stem.split_once('_') {
            Some((prefix, _)) if !prefix.is_empty() => prefix,
            _ => stem,
        }
    }

    /// The version after the first `_`, if the name carries one.
    pub fn version(&self) -> Option<&str> {
        self.stem().split_once('_').map(|(_, version)| version).filter(|v| !v.is_empty())
    }
}

impl fmt::Display for ImageName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// Checks a prefix given on the command line: it must be a plausible start of a
/// unit name, so that it cannot select files by accident.
pub fn validate_prefix(prefix: &str) -> Result<(), NameError> {
    let invalid = |why| Err(NameError::InvalidPrefix(prefix.to_string(), why));
    if prefix.is_empty() {
        return invalid("it is empty");
    }
    if prefix.len() > 200 {
        return invalid("it is longer than 200 bytes");
    }
    if !prefix.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, ':' | '-' | '_' | '.' | '\\')) {
        return invalid("unit names only hold ASCII letters, digits and ':-_.\\'");
    }
    Ok(())
}

/// Whether unit name `unit` (e.g. `foobar-web.service`) belongs to `prefix`.
pub fn unit_matches_prefix(unit: &str, prefix: &str) -> bool {
    match unit.strip_prefix(prefix) {
        Some(rest) => rest.is_empty() || rest.starts_with(['-', '.', '@']),
        None => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prefix_and_version_come_from_the_file_name() {
        let cases = [
            ("foobar.raw", "foobar", None),
            ("foobar_1.2.raw", "foobar", Some("1.2")),
            ("foobar_1.2.raw.xz", "foobar", Some("1.2")),
            ("foobar", "foobar", None),
            ("foo-bar_7", "foo-bar", Some("7")),
            ("_odd.raw", "_odd", Some("odd")),
            (".raw", ".raw", None),
        ];
        for (file, prefix, version) in cases {
            let name = ImageName(file.to_string());
            assert_eq!(name.prefix(), prefix, "prefix of {file}");
            assert_eq!(name.version(), version, "version of {file}");
        }
    }

    #[test]
    fn names_that_are_not_plain_file_names_are_refused() {
        for bad in ["", ".", "..", "a/b", "/abs", ".hidden.raw", "tab\there"] {
            assert!(ImageName::new(bad).is_err(), "{bad:?} accepted");
        }
        assert!(ImageName::new(&"x".repeat(256)).is_err());
        assert!(ImageName::new("foobar_1.2.raw").is_ok());
    }

    #[test]
    fn a_leading_dash_is_refused_in_one_line() {
        for bad in ["-", "-foo.raw", "--help", "--profile=trusted"] {
            let error = ImageName::new(bad).unwrap_err().to_string();
            assert_eq!(
                error,
                format!("'{bad}' is not a valid image name: it starts with '-' (it would read as an option)")
            );
        }
        assert!(ImageName::new("foo-.raw").is_ok());
    }

    #[test]
    fn unit_prefix_matching_needs_a_separator() {
        assert!(unit_matches_prefix("foobar.service", "foobar"));
        assert!(unit_matches_prefix("foobar-web.service", "foobar"));
        assert!(unit_matches_prefix("foobar@.service", "foobar"));
        assert!(unit_matches_prefix("foobar", "foobar"));
        assert!(!unit_matches_prefix("foobarbaz.service", "foobar"));
        assert!(!unit_matches_prefix("xfoobar.service", "foobar"));
        assert!(!unit_matches_prefix("foo.service", "foobar"));
    }

    #[test]
    fn prefixes_are_checked() {
        assert!(validate_prefix("foobar").is_ok());
        assert!(validate_prefix("foo-bar_1.x").is_ok());
        for bad in ["", "foo bar", "../etc", "foo/bar", "é"] {
            assert!(validate_prefix(bad).is_err(), "{bad:?} accepted");
        }
    }
}
