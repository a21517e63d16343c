//! The unit files an image offers: those in its unit directories whose
//! type a portable service may carry and whose name matches a prefix.

use serde::Serialize;

use super::name::unit_matches_prefix;
use super::tree::{EntryType, Tree, TreeError, link_leaves_image, read_file, resolve};

/// Unit directories inside an image, earlier ones shadowing later ones.
pub const UNIT_DIRS: &[&str] =
    &["/etc/systemd/system", "/usr/local/lib/systemd/system", "/usr/lib/systemd/system", "/lib/systemd/system"];

/// Unit types a portable service image may bring.
pub const UNIT_SUFFIXES: &[&str] = &[".service", ".socket", ".target", ".timer", ".path"];

/// A unit file larger than this is not a unit file.
pub const MAX_UNIT_SIZE: u64 = 1 << 20;

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct UnitFile {
    /// Unit name, e.g. `foobar.service`.
    pub name: String,
    /// Where it is in the image.
    pub path: String,
    pub contents: String,
}

impl UnitFile {
    pub fn is_service(&self) -> bool {
        self.name.ends_with(".service")
    }
}

#[derive(Debug, thiserror::Error)]
pub enum UnitError {
    #[error("unit file '{unit}' is a symlink to '{target}', which leaves the image")]
    LeavesImage { unit: String, target: String },
    #[error("unit file '{0}' is empty")]
    Empty(String),
    #[error("unit file '{0}' is not a regular file")]
    NotAFile(String),
    #[error("unit file '{0}' is not UTF-8 text")]
    NotText(String),
    #[error("unit file '{0}' is a dangling symlink")]
    Dangling(String),
    #[error(transparent)]
    Read(#[from] TreeError),
}

/// Whether a file name is one a portable image may bring as a unit.
pub fn is_portable_unit_name(name: &str) -> bool {
    UNIT_SUFFIXES.iter().any(|suffix| name.len() > suffix.len() && name.ends_with(suffix))
        && name.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, ':' | '-' | '_' | '.' | '\\' | '@'))
}

/// The unit files of the image that match any of `prefixes`, sorted by name.
pub fn find_units(tree: &mut dyn Tree, prefixes: &[String]) -> Result<Vec<UnitFile>, UnitError> {
    let mut found: Vec<UnitFile> = Vec::new();
    let mut seen_dirs: Vec<String> = Vec::new();
    for dir in UNIT_DIRS {
        // /lib is often a symlink to /usr/lib: read each real directory once.
        let Some((real_dir, EntryType::Dir)) = resolve(tree, dir)? else {
            continue;
        };
        if seen_dirs.contains(&real_dir) {
            continue;
        }
        seen_dirs.push(real_dir.clone());
        let mut entries = tree.read_dir(&real_dir)?;
        entries.sort_by(|a, b| a.0.cmp(&b.0));
        for (name, kind) in entries {
            if !is_portable_unit_name(&name)
                || !prefixes.iter().any(|prefix| unit_matches_prefix(&name, prefix))
                || found.iter().any(|unit| unit.name == name)
            {
                continue;
            }
            let path = format!("{real_dir}/{name}");
            if kind == EntryType::Symlink {
                let target = tree.read_link(&path)?;
                if link_leaves_image(&path, &target) {
                    return Err(UnitError::LeavesImage { unit: name, target });
                }
            } else if kind != EntryType::File {
                return Err(UnitError::NotAFile(name));
            }
            let bytes = match read_file(tree, &path, MAX_UNIT_SIZE) {
                Ok(Some(bytes)) => bytes,
                Ok(None) => return Err(UnitError::Dangling(name)),
                Err(TreeError::NotAFile(_)) => return Err(UnitError::NotAFile(name)),
                Err(e) => return Err(e.into()),
            };
            let contents = String::from_utf8(bytes).map_err(|_| UnitError::NotText(name.clone()))?;
            if contents.trim().is_empty() {
                return Err(UnitError::Empty(name));
            }
            found.push(UnitFile { name, path, contents });
        }
    }
    found.sort_by(|a, b| a.name.cmp(&b.name));
    Ok(found)
}

#[cfg(test)]
mod tests {
    use super::super::tree::memory::{MemoryTree, Node};
    use super::*;

    fn unit(text: &str) -> Node {
        Node::File(text.as_bytes().to_vec())
    }

    fn prefixes(list: &[&str]) -> Vec<String> {
        list.iter().map(|p| p.to_string()).collect()
    }

    #[test]
    fn finds_matching_units_with_shadowing() {
        let mut tree = MemoryTree::with(&[
            ("/usr/lib/systemd/system/foobar.service", unit("[Service]\nExecStart=/a\n")),
            ("/usr/lib/systemd/system/foobar-web.socket", unit("[Socket]\n")),
            ("/usr/lib/systemd/system/foobar@.service", unit("[Service]\n")),
            ("/usr/lib/systemd/system/foobarbaz.service", unit("[Service]\n")),
            ("/usr/lib/systemd/system/foobar.mount", unit("[Mount]\n")),
            ("/usr/lib/systemd/system/other.service", unit("[Service]\n")),
            ("/etc/systemd/system/foobar.service", unit("[Service]\nExecStart=/etc\n")),
            ("/usr/lib/systemd/system/foobar-alias.service", Node::Link("foobar.service".into())),
            ("/lib", Node::Link("usr/lib".into())),
        ]);
        let units = find_units(&mut tree, &prefixes(&["foobar"])).unwrap();
        let names: Vec<&str> = units.iter().map(|u| u.name.as_str()).collect();
        assert_eq!(names, ["foobar-alias.service", "foobar-web.socket", "foobar.service", "foobar@.service"]);
        let main = units.iter().find(|u| u.name == "foobar.service").unwrap();
        assert_eq!(main.path, "/etc/systemd/system/foobar.service");
        assert!(main.contents.contains("/etc"));
        let alias = units.iter().find(|u| u.name == "foobar-alias.service").unwrap();
        assert!(alias.contents.contains("/a"), "the alias reads the image's foobar.service");
        assert!(find_units(&mut tree, &prefixes(&["nothing"])).unwrap().is_empty());
    }

    #[test]
    fn bad_unit_files_are_named() {
        let cases = [
            (
                Node::Link("/etc/passwd".into()),
                "unit file 'bad.service' is a symlink to '/etc/passwd', which leaves the image",
            ),
            (
                Node::Link("../../../../../etc/passwd".into()),
                "unit file 'bad.service' is a symlink to '../../../../../etc/passwd', which leaves the image",
            ),
            (unit(" \n\n"), "unit file 'bad.service' is empty"),
            (Node::Link("missing.service".into()), "unit file 'bad.service' is a dangling symlink"),
            (Node::File(vec![0xff, 0xfe, b'\n']), "unit file 'bad.service' is not UTF-8 text"),
            (Node::Dir, "unit file 'bad.service' is not a regular file"),
        ];
        for (node, message) in cases {
            let mut tree = MemoryTree::with(&[("/usr/lib/systemd/system/bad.service", node)]);
            let error = find_units(&mut tree, &prefixes(&["bad"])).unwrap_err();
            assert_eq!(error.to_string(), message);
        }
    }

    #[test]
    fn unit_names() {
        assert!(is_portable_unit_name("foobar.service"));
        assert!(is_portable_unit_name("foo@bar.timer"));
        assert!(!is_portable_unit_name(".service"));
        assert!(!is_portable_unit_name("foobar.mount"));
        assert!(!is_portable_unit_name("foo bar.service"));
    }
}
