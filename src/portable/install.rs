//! Enablement of attached units, made by wharf itself as steps of the
//! attach, detach or reattach transaction instead of systemd's
//! EnableUnitFiles/DisableUnitFiles: the links are journaled with the unit
//! files, so a crash never leaves a link to a unit that recovery removed,
//! nor a unit whose links systemd removed before anything was journaled.
//!
//! Only what portable units use is supported: `WantedBy=`, `RequiredBy=`
//! and `UpheldBy=` of the `[Install]` section, each a link in the host's
//! `TARGET.wants/`, `.requires/` or `.upholds/` directory beside the unit.
//! `Alias=` and `Also=` are not followed (a warning says so).

use std::path::{Path, PathBuf};

use crate::transaction::Transaction;

/// The directories of enablement links, by the `[Install]` key that makes them.
const LINK_KINDS: [(&str, &str); 3] = [("WantedBy", "wants"), ("RequiredBy", "requires"), ("UpheldBy", "upholds")];

/// Suffixes of the units a link directory can belong to.
const TARGET_SUFFIXES: [&str; 11] = [
    ".target",
    ".service",
    ".socket",
    ".timer",
    ".path",
    ".mount",
    ".automount",
    ".swap",
    ".slice",
    ".scope",
    ".device",
];

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("unit {unit}: {key}={value} is not a unit name wharf can enable it for")]
    BadTarget { unit: String, key: &'static str, value: String },
}

/// The links the `[Install]` section of a unit asks for: (directory suffix, unit).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Install {
    pub links: Vec<(&'static str, String)>,
    /// Keys wharf does not follow that the section has.
    pub ignored: Vec<String>,
}

/// Reads the `[Install]` section of a unit file: its list keys, with
/// continuation lines, comments and the empty assignment that resets a list.
pub fn parse(unit: &str, text: &str) -> Result<Install, Error> {
    let mut install = Install::default();
    let mut in_install = false;
    let mut logical = String::new();
    let mut lines: Vec<String> = Vec::new();
    for raw in text.lines() {
        if let Some(head) = raw.strip_suffix('\\') {
            logical.push_str(head);
            logical.push(' ');
            continue;
        }
        logical.push_str(raw);
        lines.push(std::mem::take(&mut logical));
    }
    if !logical.is_empty() {
        lines.push(logical);
    }
    for line in lines {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') || line.starts_with(';') {
            continue;
        }
        if line.starts_with('[') {
            in_install = line == "[Install]";
            continue;
        }
        if !in_install {
            continue;
        }
        let Some((key, value)) = line.split_once('=') else { continue };
        let (key, value) = (key.trim(), value.trim());
        match LINK_KINDS.iter().find(|(k, _)| *k == key) {
            Some((key, kind)) => {
                if value.is_empty() {
                    install.links.retain(|(k, _)| k != kind);
                }
                for target in value.split_whitespace() {
                    if !is_target_name(target) {
                        return Err(Error::BadTarget { unit: unit.to_string(), key, value: target.to_string() });
                    }
                    let link = (*kind, target.to_string());
                    if !install.links.contains(&link) {
                        install.links.push(link);
                    }
                }
            }
            None => {
                if !value.is_empty() && !install.ignored.iter().any(|k| k == key) {
                    install.ignored.push(key.to_string());
                }
            }
        }
    }
    Ok(install)
}

/// A unit name a link directory may be named after: no path, no specifier,
/// a unit type's suffix.
fn is_target_name(name: &str) -> bool {
    name.len() <= 255
        && !name.starts_with('.')
        && TARGET_SUFFIXES.iter().any(|s| name.len() > s.len() && name.ends_with(s))
        && name.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, ':' | '-' | '_' | '.' | '\\' | '@'))
}

/// Adds to `tx` the links that enable `unit` (attached in `unit_dir`, with
/// the unit file `contents`), and returns their paths.
pub fn add_enable_steps(
    unit_dir: &Path,
    unit: &str,
    contents: &str,
    tx: &mut Transaction,
) -> Result<Vec<PathBuf>, Error> {
    add_links_to(unit_dir, unit, &unit_dir.join(unit), contents, tx)
}

/// Adds to `tx` the links in `link_dir` that enable `unit`, pointing to
/// `file` (for an instance, its template's file) whose text is `contents`.
pub fn add_links_to(
    link_dir: &Path,
    unit: &str,
    file: &Path,
    contents: &str,
    tx: &mut Transaction,
) -> Result<Vec<PathBuf>, Error> {
    let install = parse(unit, contents)?;
    if !install.ignored.is_empty() {
        tracing::warn!(unit, keys = ?install.ignored, "[Install] keys wharf does not follow");
    }
    let mut links = Vec::new();
    for (kind, target) in &install.links {
        let dir = link_dir.join(format!("{target}.{kind}"));
        let link = dir.join(unit);
        tx.make_dir(&dir);
        tx.symlink(&link, file);
        links.push(link);
    }
    Ok(links)
}

/// The enablement links of `unit` in `unit_dirs`: every symlink named after
/// it in a `.wants/`, `.requires/` or `.upholds/` directory, whoever made it.
pub fn links_of(unit_dirs: &[PathBuf], unit: &str) -> Vec<PathBuf> {
    let mut links = Vec::new();
    for dir in unit_dirs {
        let Ok(entries) = std::fs::read_dir(dir) else { continue };
        let mut found: Vec<PathBuf> = entries
            .flatten()
            .filter(|entry| {
                let name = entry.file_name().to_string_lossy().into_owned();
                !name.starts_with('.')
                    && LINK_KINDS.iter().any(|(_, kind)| name.ends_with(&format!(".{kind}")))
                    && entry.file_type().is_ok_and(|t| t.is_dir())
            })
            .map(|entry| entry.path().join(unit))
            .filter(|link| link.symlink_metadata().is_ok_and(|m| m.file_type().is_symlink()))
            .collect();
        found.sort();
        links.extend(found);
    }
    links
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_the_install_section_only() {
        let text = "[Unit]\nWantedBy=nope.target\n[Install]\n# comment\nWantedBy=multi-user.target \\\n  \
                    sockets.target\nRequiredBy=b.service\nUpheldBy=c.target\nAlias=x.service\n[Service]\nWantedBy=z.target\n";
        let install = parse("a.service", text).unwrap();
        assert_eq!(
            install.links,
            [
                ("wants", "multi-user.target".to_string()),
                ("wants", "sockets.target".to_string()),
                ("requires", "b.service".to_string()),
                ("upholds", "c.target".to_string())
            ]
        );
        assert_eq!(install.ignored, ["Alias"]);
    }

    #[test]
    fn an_empty_assignment_resets_and_repeats_count_once() {
        let text = "[Install]\nWantedBy=a.target\nWantedBy=\nWantedBy=b.target b.target\n";
        assert_eq!(parse("u.service", text).unwrap().links, [("wants", "b.target".to_string())]);
        assert_eq!(parse("u.service", "[Unit]\nDescription=x\n").unwrap(), Install::default());
    }

    /// A hostile image cannot make wharf link outside the unit directory.
    #[test]
    fn targets_that_are_not_unit_names_are_refused() {
        for bad in ["../../etc/passwd.target", "a/b.target", ".hidden.target", "%i.target", "multi-user", "x.conf"] {
            let err = parse("u.service", &format!("[Install]\nWantedBy={bad}\n")).unwrap_err();
            assert_eq!(
                err.to_string(),
                format!("unit u.service: WantedBy={bad} is not a unit name wharf can enable it for")
            );
        }
    }

    #[test]
    fn enable_steps_link_the_unit_and_links_are_found_again() {
        let root = std::env::temp_dir().join(format!("wharf-install-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&root);
        let units = root.join("units");
        std::fs::create_dir_all(&units).unwrap();
        std::fs::write(units.join("a.service"), "x").unwrap();
        let mut tx = Transaction::new(&root.join("journal"));
        let links = add_enable_steps(
            &units,
            "a.service",
            "[Install]\nWantedBy=multi-user.target\nRequiredBy=b.service\n",
            &mut tx,
        )
        .unwrap();
        tx.apply().unwrap();
        tx.commit().unwrap();
        assert_eq!(
            links,
            [units.join("multi-user.target.wants/a.service"), units.join("b.service.requires/a.service")]
        );
        assert_eq!(std::fs::read_link(&links[0]).unwrap(), units.join("a.service"));
        let mut found = links_of(std::slice::from_ref(&units), "a.service");
        found.sort();
        let mut expected = links.clone();
        expected.sort();
        assert_eq!(found, expected);
        assert!(links_of(std::slice::from_ref(&units), "other.service").is_empty());
        std::fs::remove_dir_all(&root).unwrap();
    }
}
