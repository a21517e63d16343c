//! Machine names: what systemd-machined accepts, which is what a host name
//! may be.

use std::fmt;

/// The longest machine name (a host name's limit).
pub const MAX_LEN: usize = 64;

/// Why a machine name was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NameError {
    #[error("the machine name is empty")]
    Empty,
    #[error("machine name '{0}' is longer than {MAX_LEN} characters")]
    TooLong(String),
    #[error("machine name '{name}' contains '{bad}' (allowed: ASCII letters, digits, '-', '_' and '.')")]
    BadCharacter { name: String, bad: char },
    #[error("machine name '{0}' must not start or end with '.' or contain '..'")]
    BadDots(String),
    #[error("machine name '{0}' must not start with '-' (it would read as an option)")]
    LeadingDash(String),
}

/// A valid machine name.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct MachineName(String);

impl MachineName {
    /// Host name rules, as machined applies them: 1 to 64 characters from
    /// `a-zA-Z0-9-_.`, dots only between labels.
    pub fn new(name: &str) -> Result<MachineName, NameError> {
        if name.is_empty() {
            return Err(NameError::Empty);
        }
        // Host name rules forbid it too; wharf refuses it because a name is
        // handed to other programs (the launcher, systemctl, machinectl)
        // where it would be taken for an option.
        if name.starts_with('-') {
            return Err(NameError::LeadingDash(name.to_string()));
        }
        if let Some(bad) = name.chars().find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))) {
            return Err(NameError::BadCharacter { name: name.to_string(), bad });
        }
        if name.len() > MAX_LEN {
            return Err(NameError::TooLong(name.to_string()));
        }
        if name.starts_with('.') || name.ends_with('.') || name.contains("..") {
            return Err(NameError::BadDots(name.to_string()));
        }
        Ok(MachineName(name.to_string()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for MachineName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::str::FromStr for MachineName {
    type Err = NameError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        MachineName::new(s)
    }
}

/// Checks a machine name, returning it unchanged when valid.
pub fn validate(name: &str) -> Result<&str, NameError> {
    MachineName::new(name).map(|_| name)
}

/// The machine name of an image file or directory name: `f28.raw` -> `f28`.
pub fn from_image_name(image: &str) -> &str {
    image.strip_suffix(".raw").unwrap_or(image)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_host_names() {
        for name in ["f28", "a", "web-1.example_org", "F28", &"x".repeat(64)] {
            assert_eq!(MachineName::new(name).unwrap().as_str(), name);
        }
    }

    #[test]
    fn refuses_what_machined_refuses() {
        assert_eq!(MachineName::new(""), Err(NameError::Empty));
        assert!(matches!(MachineName::new(&"x".repeat(65)), Err(NameError::TooLong(_))));
        for (name, bad) in [("a b", ' '), ("a/b", '/'), ("café", 'é'), ("../etc", '/'), ("x\n", '\n')] {
            assert_eq!(MachineName::new(name), Err(NameError::BadCharacter { name: name.into(), bad }));
        }
        for name in [".", "..", ".hidden", "trailing.", "a..b"] {
            assert!(matches!(MachineName::new(name), Err(NameError::BadDots(_))), "{name}");
        }
    }

    #[test]
    fn refuses_a_leading_dash_in_one_line() {
        for name in ["-", "-x", "--help", "--directory=/"] {
            let error = MachineName::new(name).unwrap_err();
            assert_eq!(error, NameError::LeadingDash(name.into()));
            assert!(!error.to_string().contains('\n'));
        }
        // A dash elsewhere is fine.
        assert!(MachineName::new("a-").is_ok() && MachineName::new("a--b").is_ok());
    }

    #[test]
    fn the_error_names_the_machine() {
        let message = MachineName::new("my machine").unwrap_err().to_string();
        assert!(message.contains("'my machine'") && message.contains("' '"), "{message}");
    }
}
