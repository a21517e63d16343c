//! Reading an untrusted image's file tree. Every kind of image (directory,
//! squashfs, ext4, GPT partition, mounted erofs) offers the same few
//! primitives through [`Tree`]; [`resolve`] walks paths over them with the
//! image as root: `..` stops at the top and absolute symlinks start again at
//! the image's own root, so no path inside an image ever reaches a host file.

use std::collections::VecDeque;

/// What a directory entry is, without following it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EntryType {
    File,
    Dir,
    Symlink,
    /// Devices, sockets, fifos: never read.
    Other,
}

/// Why a path inside an image could not be read.
#[derive(Debug, thiserror::Error)]
pub enum TreeError {
    #[error("{path}: {source}")]
    Io {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("{path}: {reason}")]
    Corrupt { path: String, reason: String },
    #[error("{0}: too many levels of symbolic links")]
    Loop(String),
    #[error("{0}: not a regular file")]
    NotAFile(String),
    #[error("{path}: larger than {limit} bytes")]
    TooLarge { path: String, limit: u64 },
}

/// The primitives an image reader provides. Paths given to them are
/// absolute, `/`-separated, and have no symlink in any but the last
/// component ([`resolve`] guarantees it); the last is never followed.
pub trait Tree: Send {
    /// The type of the entry at `path`, or `None` when there is none.
    fn entry_type(&mut self, path: &str) -> Result<Option<EntryType>, TreeError>;
    /// The target of the symlink at `path`, as stored.
    fn read_link(&mut self, path: &str) -> Result<String, TreeError>;
    /// The contents of the regular file at `path`, refusing more than `limit` bytes.
    fn read_file(&mut self, path: &str, limit: u64) -> Result<Vec<u8>, TreeError>;
    /// The entries of the directory at `path` (names that are not UTF-8 are left out).
    fn read_dir(&mut self, path: &str) -> Result<Vec<(String, EntryType)>, TreeError>;
    /// How this tree is read, for debug logs ("user-space squashfs reader", "mount").
    fn access(&self) -> &'static str;
}

/// Symlinks followed in one resolution before giving up, as the kernel does.
const MAX_SYMLINK_HOPS: usize = 40;

/// Resolves `path` inside the image, following symlinks with the image as
/// root. Returns the canonical path and what is there, or `None` when some
/// component does not exist (or is not a directory).
pub fn resolve(tree: &mut dyn Tree, path: &str) -> Result<Option<(String, EntryType)>, TreeError> {
    let mut pending: VecDeque<String> = components(path).map(str::to_string).collect();
    let mut current: Vec<String> = Vec::new();
    let mut current_type = EntryType::Dir;
    let mut hops = 0;
    while let Some(component) = pending.pop_front() {
        if current_type != EntryType::Dir {
            return Ok(None);
        }
        if component == ".." {
            current.pop();
            continue;
        }
        let candidate = join(&current, &component);
        match tree.entry_type(&candidate)? {
            None => return Ok(None),
            Some(EntryType::Symlink) => {
                hops += 1;
                if hops > MAX_SYMLINK_HOPS {
                    return Err(TreeError::Loop(path.to_string()));
                }
                let target = tree.read_link(&candidate)?;
                if target.starts_with('/') {
                    current.clear();
                }
                for part in components(&target).rev() {
                    pending.push_front(part.to_string());
                }
                current_type = EntryType::Dir;
            }
            Some(kind) => {
                current.push(component);
                current_type = kind;
            }
        }
    }
    Ok(Some((join_all(&current), current_type)))
}

/// Reads a regular file at `path`, resolved inside the image.
/// `Ok(None)` when nothing is there.
pub fn read_file(tree: &mut dyn Tree, path: &str, limit: u64) -> Result<Option<Vec<u8>>, TreeError> {
    match resolve(tree, path)? {
        None => Ok(None),
        Some((canonical, EntryType::File)) => tree.read_file(&canonical, limit).map(Some),
        Some(_) => Err(TreeError::NotAFile(path.to_string())),
    }
}

/// Whether a symlink stored at `link` with `target` points out of the image
/// when read as a host path would: an absolute target, or one that climbs
/// above the image's root with `..`.
pub fn link_leaves_image(link: &str, target: &str) -> bool {
    if target.starts_with('/') {
        return true;
    }
    let mut depth = components(link).count().saturating_sub(1) as isize;
    for part in components(target) {
        depth += if part == ".." { -1 } else { 1 };
        if depth < 0 {
            return true;
        }
    }
    false
}

/// The non-empty components of a path, `.` removed.
fn components(path: &str) -> impl DoubleEndedIterator<Item = &str> {
    path.split('/').filter(|part| !part.is_empty() && *part != ".")
}

fn join(parents: &[String], last: &str) -> String {
    let mut path = join_all(parents);
    if !path.ends_with('/') {
        path.push('/');
    }
    path.push_str(last);
    path
}

fn join_all(parts: &[String]) -> String {
    if parts.is_empty() { "/".to_string() } else { format!("/{}", parts.join("/")) }
}

/// An in-memory tree, for tests of everything built on [`Tree`].
#[cfg(test)]
pub(crate) mod memory {
    use std::collections::BTreeMap;

    use super::*;

    #[derive(Debug, Clone)]
    pub(crate) enum Node {
        File(Vec<u8>),
        Dir,
        Link(String),
    }

    #[derive(Debug, Default)]
    pub(crate) struct MemoryTree(pub BTreeMap<String, Node>);

    impl MemoryTree {
        pub(crate) fn with(entries: &[(&str, Node)]) -> MemoryTree {
            let mut tree = MemoryTree::default();
            tree.0.insert("/".into(), Node::Dir);
            for (path, node) in entries {
                let mut parent = String::new();
                for part in path.split('/').filter(|p| !p.is_empty()).collect::<Vec<_>>().split_last().unwrap().1 {
                    parent.push('/');
                    parent.push_str(part);
                    tree.0.entry(parent.clone()).or_insert(Node::Dir);
                }
                tree.0.insert(path.to_string(), node.clone());
            }
            tree
        }
    }

    impl Tree for MemoryTree {
        fn entry_type(&mut self, path: &str) -> Result<Option<EntryType>, TreeError> {
            Ok(self.0.get(path).map(|node| match node {
                Node::File(_) => EntryType::File,
                Node::Dir => EntryType::Dir,
                Node::Link(_) => EntryType::Symlink,
            }))
        }
        fn read_link(&mut self, path: &str) -> Result<String, TreeError> {
            match self.0.get(path) {
                Some(Node::Link(target)) => Ok(target.clone()),
                _ => Err(TreeError::Corrupt { path: path.into(), reason: "not a link".into() }),
            }
        }
        fn read_file(&mut self, path: &str, limit: u64) -> Result<Vec<u8>, TreeError> {
            match self.0.get(path) {
                Some(Node::File(data)) if data.len() as u64 > limit => {
                    Err(TreeError::TooLarge { path: path.into(), limit })
                }
                Some(Node::File(data)) => Ok(data.clone()),
                _ => Err(TreeError::NotAFile(path.into())),
            }
        }
        fn read_dir(&mut self, path: &str) -> Result<Vec<(String, EntryType)>, TreeError> {
            let prefix = if path == "/" { "/".to_string() } else { format!("{path}/") };
            let names: Vec<String> = self
                .0
                .keys()
                .filter_map(|key| key.strip_prefix(&prefix))
                .filter(|rest| !rest.is_empty() && !rest.contains('/'))
                .map(str::to_string)
                .collect();
            names
                .into_iter()
                .map(|name| {
                    let kind = self.entry_type(&format!("{prefix}{name}"))?.unwrap();
                    Ok((name, kind))
                })
                .collect()
        }
        fn access(&self) -> &'static str {
            "memory"
        }
    }
}

#[cfg(test)]
mod tests {
    use super::memory::{MemoryTree, Node};
    use super::*;

    fn tree() -> MemoryTree {
        MemoryTree::with(&[
            ("/usr/lib/os-release", Node::File(b"ID=x\n".to_vec())),
            ("/etc/os-release", Node::Link("../usr/lib/os-release".into())),
            ("/etc/abs", Node::Link("/usr/lib/os-release".into())),
            ("/etc/climb", Node::Link("../../../../usr/lib/os-release".into())),
            ("/etc/passwd-link", Node::Link("/etc/passwd".into())),
            ("/lib", Node::Link("usr/lib".into())),
            ("/loop", Node::Link("loop".into())),
            ("/file-as-dir", Node::File(vec![])),
        ])
    }

    #[test]
    fn symlinks_resolve_inside_the_image() {
        let mut t = tree();
        for path in [
            "/etc/os-release",
            "/etc/abs",
            "/etc/climb",
            "/lib/os-release",
            "/usr/./lib//os-release",
            "/../usr/lib/os-release",
        ] {
            assert_eq!(
                resolve(&mut t, path).unwrap(),
                Some(("/usr/lib/os-release".to_string(), EntryType::File)),
                "{path}"
            );
        }
        // The host's /etc/passwd is never consulted: the image has none.
        assert_eq!(resolve(&mut t, "/etc/passwd-link").unwrap(), None);
        assert_eq!(resolve(&mut t, "/file-as-dir/x").unwrap(), None);
        assert!(matches!(resolve(&mut t, "/loop"), Err(TreeError::Loop(_))));
        assert_eq!(read_file(&mut t, "/etc/os-release", 100).unwrap(), Some(b"ID=x\n".to_vec()));
        assert!(matches!(read_file(&mut t, "/etc/os-release", 2), Err(TreeError::TooLarge { .. })));
        assert!(matches!(read_file(&mut t, "/usr", 2), Err(TreeError::NotAFile(_))));
    }

    #[test]
    fn links_that_leave_the_image_are_recognised() {
        assert!(link_leaves_image("/usr/lib/systemd/system/a.service", "/etc/passwd"));
        assert!(link_leaves_image("/usr/lib/systemd/system/a.service", "../../../../../etc/passwd"));
        assert!(!link_leaves_image("/usr/lib/systemd/system/a.service", "b.service"));
        assert!(!link_leaves_image("/usr/lib/systemd/system/a.service", "../../../../etc/x"));
        assert!(!link_leaves_image("/etc/os-release", "../usr/lib/os-release"));
        assert!(link_leaves_image("/etc/os-release", "../../usr/lib/os-release"));
    }
}
