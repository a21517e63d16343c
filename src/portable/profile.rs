//! Sandbox profiles: drop-ins wharf puts next to each attached unit.
//! A profile is a directory named after it holding `<unit type>.conf` files
//! (`service.conf`, `socket.conf`, ...). wharf ships them in
//! /usr/lib/wharf/profiles; a directory of the same name under /etc or /run
//! replaces a shipped one as a whole.

use std::path::{Path, PathBuf};

/// Profile directories, earlier ones overriding later ones.
pub const PROFILE_DIRS: &[&str] = &["etc/wharf/profiles", "run/wharf/profiles", "usr/lib/wharf/profiles"];

pub const DEFAULT_PROFILE: &str = "default";

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("unknown profile '{name}' (known: {known})")]
    Unknown { name: String, known: String },
    #[error("'{0}' is not a valid profile name")]
    InvalidName(String),
    #[error("profile '{name}': {}: {source}", path.display())]
    Io {
        name: String,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

/// A profile found on the host.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Profile {
    pub name: String,
    /// The directory it was found in.
    pub dir: PathBuf,
}

impl Profile {
    /// Finds a profile by name below `root` (`/` on a real host).
    pub fn find(root: &Path, name: &str) -> Result<Profile, Error> {
        if name.is_empty()
            || name.starts_with('.')
            || !name.chars().all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c))
        {
            return Err(Error::InvalidName(name.to_string()));
        }
        PROFILE_DIRS
            .iter()
            .map(|dir| root.join(dir).join(name))
            .find(|dir| dir.is_dir())
            .map(|dir| Profile { name: name.to_string(), dir })
            .ok_or_else(|| Error::Unknown { name: name.to_string(), known: known(root).join(", ") })
    }

    /// The drop-in file for a unit of this type (`service` for
    /// `foo.service`), if the profile has one.
    pub fn file_for(&self, unit: &str) -> Option<PathBuf> {
        let unit_type = unit.rsplit_once('.')?.1;
        Some(self.dir.join(format!("{unit_type}.conf"))).filter(|path| path.is_file())
    }

    /// The contents of the drop-in for `unit`, if the profile has one.
    pub fn contents_for(&self, unit: &str) -> Result<Option<(PathBuf, String)>, Error> {
        let Some(path) = self.file_for(unit) else { return Ok(None) };
        let contents = std::fs::read_to_string(&path).map_err(|source| Error::Io {
            name: self.name.clone(),
            path: path.clone(),
            source,
        })?;
        Ok(Some((path, contents)))
    }
}

/// Names of every profile on the host, sorted.
pub fn known(root: &Path) -> Vec<String> {
    let mut names: Vec<String> = PROFILE_DIRS
        .iter()
        .filter_map(|dir| std::fs::read_dir(root.join(dir)).ok())
        .flatten()
        .flatten()
        .filter(|entry| entry.path().is_dir())
        .filter_map(|entry| entry.file_name().to_str().map(str::to_string))
        .collect();
    names.sort();
    names.dedup();
    names
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn etc_overrides_usr_and_unknown_names_are_errors() {
        let root = std::env::temp_dir().join(format!("wharf-profile-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&root);
        for (dir, text) in [
            ("usr/lib/wharf/profiles/default", "usr"),
            ("usr/lib/wharf/profiles/strict", "usr"),
            ("etc/wharf/profiles/strict", "etc"),
        ] {
            std::fs::create_dir_all(root.join(dir)).unwrap();
            std::fs::write(root.join(dir).join("service.conf"), text).unwrap();
        }
        let strict = Profile::find(&root, "strict").unwrap();
        assert_eq!(strict.dir, root.join("etc/wharf/profiles/strict"));
        assert_eq!(strict.contents_for("foo.service").unwrap().unwrap().1, "etc");
        assert_eq!(strict.contents_for("foo.socket").unwrap(), None);
        let unknown = Profile::find(&root, "nope").unwrap_err().to_string();
        assert_eq!(unknown, "unknown profile 'nope' (known: default, strict)");
        assert!(matches!(Profile::find(&root, "../etc"), Err(Error::InvalidName(_))));
        std::fs::remove_dir_all(&root).unwrap();
    }
}
