//! What one entry of a layer's tar does to the tree the layers below made:
//! an entry put in place, a whiteout (`.wh.NAME` removes NAME), or an
//! opaque directory (`.wh..wh..opq` empties its directory of what lower
//! layers put there). Paths are taken apart into plain components here, so
//! that the code that applies them never sees `..` or an absolute path.

use std::ffi::{OsStr, OsString};
use std::os::unix::ffi::OsStrExt;
use std::path::{Component, Path};

pub const WHITEOUT_PREFIX: &str = ".wh.";
pub const OPAQUE: &str = ".wh..wh..opq";

/// What an entry does, its path as the plain components below the root.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    /// Put the entry at this path (empty: the root itself).
    Entry(Vec<OsString>),
    /// Remove what lower layers have at this path.
    Whiteout(Vec<OsString>),
    /// Remove what lower layers have in this directory (empty: the root).
    Opaque(Vec<OsString>),
    /// Nothing (AUFS's own `.wh..wh.*` metadata, which means nothing to
    /// a tree).
    Skip,
}

/// Why an entry's path is refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PathError {
    #[error("'{0}': a path leaving the image ('..')")]
    Parent(String),
    #[error("'{0}': a whiteout of nothing")]
    EmptyWhiteout(String),
}

/// The action of an entry at `path` (leading `/` and `.` components are
/// dropped, as tar does; `..` anywhere is refused).
pub fn classify(path: &Path) -> Result<Action, PathError> {
    let shown = || path.to_string_lossy().chars().flat_map(char::escape_debug).take(200).collect::<String>();
    let mut parts = Vec::new();
    for component in path.components() {
        match component {
            Component::Normal(part) => parts.push(part.to_owned()),
            Component::ParentDir => return Err(PathError::Parent(shown())),
            Component::RootDir | Component::CurDir | Component::Prefix(_) => {}
        }
    }
    let Some(last) = parts.last() else { return Ok(Action::Entry(parts)) };
    let last = last.as_bytes();
    if last == OPAQUE.as_bytes() {
        parts.pop();
        return Ok(Action::Opaque(parts));
    }
    if last.starts_with(b".wh..wh.") {
        return Ok(Action::Skip);
    }
    if let Some(name) = last.strip_prefix(WHITEOUT_PREFIX.as_bytes()) {
        if name.is_empty() || name == b"." || name == b".." {
            return Err(PathError::EmptyWhiteout(shown()));
        }
        let name = OsStr::from_bytes(name).to_owned();
        parts.pop();
        parts.push(name);
        return Ok(Action::Whiteout(parts));
    }
    Ok(Action::Entry(parts))
}

/// Whether a whiteout or an opaque directory removes `path`: only what
/// lower layers made, never what this layer itself put there (`own`: the
/// paths this layer wrote so far).
pub fn lower_only(path: &[OsString], own: &std::collections::HashSet<Vec<OsString>>) -> bool {
    !own.contains(path)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashSet;

    fn parts(text: &str) -> Vec<OsString> {
        text.split('/').filter(|p| !p.is_empty()).map(OsString::from).collect()
    }

    #[test]
    fn entries_whiteouts_and_opaque_directories() {
        assert_eq!(classify(Path::new("usr/bin/sh")), Ok(Action::Entry(parts("usr/bin/sh"))));
        assert_eq!(classify(Path::new("./etc/")), Ok(Action::Entry(parts("etc"))));
        assert_eq!(classify(Path::new("./")), Ok(Action::Entry(vec![])));
        // Absolute paths are below the root, as tar takes them.
        assert_eq!(classify(Path::new("/etc/passwd")), Ok(Action::Entry(parts("etc/passwd"))));
        assert_eq!(classify(Path::new("etc/.wh.motd")), Ok(Action::Whiteout(parts("etc/motd"))));
        assert_eq!(classify(Path::new(".wh.opt")), Ok(Action::Whiteout(parts("opt"))));
        assert_eq!(classify(Path::new("var/cache/.wh..wh..opq")), Ok(Action::Opaque(parts("var/cache"))));
        assert_eq!(classify(Path::new(".wh..wh..opq")), Ok(Action::Opaque(vec![])));
        assert_eq!(classify(Path::new("x/.wh..wh.plnk/1")), Ok(Action::Entry(parts("x/.wh..wh.plnk/1"))));
        assert_eq!(classify(Path::new("x/.wh..wh.aufs")), Ok(Action::Skip));
        // A name merely containing .wh. is a name.
        assert_eq!(classify(Path::new("a/b.wh.c")), Ok(Action::Entry(parts("a/b.wh.c"))));
    }

    #[test]
    fn paths_leaving_the_root_are_refused() {
        for path in ["../etc/passwd", "a/../../b", "a/.wh...", "/../x", "a/.wh..", "a/.wh."] {
            let refused = classify(Path::new(path));
            assert!(refused.is_err(), "{path}: {refused:?}");
            assert!(!refused.unwrap_err().to_string().contains('\n'));
        }
        // A whiteout of a parent would remove the directory holding it.
        assert!(matches!(classify(Path::new("a/.wh...")), Err(PathError::EmptyWhiteout(_))));
    }

    #[test]
    fn whiteouts_remove_only_what_lower_layers_made() {
        let mut own = HashSet::new();
        own.insert(parts("etc/new"));
        assert!(!lower_only(&parts("etc/new"), &own));
        assert!(lower_only(&parts("etc/old"), &own));
        // A directory this layer repeats still holds lower entries.
        own.insert(parts("etc"));
        assert!(lower_only(&parts("etc/old"), &own));
    }
}
