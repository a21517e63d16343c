//! What is attached on this host right now, read back from the unit
//! directories: a unit belongs to an image when its `20-portable.conf`
//! drop-in carries wharf's marker for that image.

use std::path::{Path, PathBuf};

use super::State;
use super::dropin::{PORTABLE_DROPIN, parse_marker};

/// Persistent attachments live here...
pub const PERSISTENT_UNIT_DIR: &str = "etc/systemd/system";
/// ...and runtime ones (`--runtime`) here.
pub const RUNTIME_UNIT_DIR: &str = "run/systemd/system";

/// One unit attached from an image.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Attachment {
    /// Absolute path of the image, as written in the marker.
    pub image: String,
    /// Unit name, e.g. `foobar.service`.
    pub unit: String,
    /// Below /run rather than /etc.
    pub runtime: bool,
}

/// Every wharf attachment found under a root directory.
#[derive(Debug, Clone, Default)]
pub struct Attachments(pub Vec<Attachment>);

impl Attachments {
    /// Scans `root`'s persistent and runtime unit directories. Unreadable or
    /// missing directories hold no attachments; a drop-in that cannot be read
    /// is an error, since skipping it could hide an attachment.
    pub fn scan(root: &Path) -> std::io::Result<Attachments> {
        let mut found = Vec::new();
        for (dir, runtime) in [(PERSISTENT_UNIT_DIR, false), (RUNTIME_UNIT_DIR, true)] {
            let dir = root.join(dir);
            let entries = match std::fs::read_dir(&dir) {
                Ok(entries) => entries,
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
                Err(e) => return Err(e),
            };
            for entry in entries {
                let entry = entry?;
                let name = entry.file_name();
                let Some(unit) = name.to_str().and_then(|n| n.strip_suffix(".d")) else {
                    continue;
                };
                let dropin: PathBuf = entry.path().join(PORTABLE_DROPIN);
                let contents = match std::fs::read_to_string(&dropin) {
                    Ok(contents) => contents,
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
                    Err(e) => return Err(e),
                };
                if let Some(image) = parse_marker(&contents) {
                    found.push(Attachment { image: image.to_string(), unit: unit.to_string(), runtime });
                }
            }
        }
        found.sort_by(|a, b| (&a.image, &a.unit).cmp(&(&b.image, &b.unit)));
        Ok(Attachments(found))
    }

    /// The units attached from `image` (its absolute path).
    pub fn of<'a>(&'a self, image: &'a str) -> impl Iterator<Item = &'a Attachment> + 'a {
        self.0.iter().filter(move |a| a.image == image)
    }

    /// Attached or not, from the files alone; enabled and running states need systemd.
    pub fn file_state(&self, image: &str) -> State {
        let mut units = self.of(image).peekable();
        match units.peek() {
            None => State::Detached,
            Some(first) if first.runtime => State::AttachedRuntime,
            Some(_) => State::Attached,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::dropin::marker;
    use super::*;

    #[test]
    fn scan_finds_units_by_marker_only() {
        let root = std::env::temp_dir().join(format!("wharf-attachments-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&root);
        let write = |rel: &str, contents: &str| {
            let path = root.join(rel);
            std::fs::create_dir_all(path.parent().unwrap()).unwrap();
            std::fs::write(path, contents).unwrap();
        };
        write("etc/systemd/system/foobar.service.d/20-portable.conf", &format!("{}\n", marker("/p/foobar.raw")));
        write("etc/systemd/system/foobar-web.socket.d/20-portable.conf", &format!("{}\n", marker("/p/foobar.raw")));
        write("run/systemd/system/baz.service.d/20-portable.conf", &format!("{}\n", marker("/p/baz")));
        write(
            "etc/systemd/system/hand.service.d/20-portable.conf",
            "# Drop-in created for image '/p/hand.raw', do not edit.\n",
        );
        write("etc/systemd/system/other.service.d/override.conf", &marker("/p/foobar.raw"));

        let found = Attachments::scan(&root).unwrap();
        let units: Vec<&str> = found.of("/p/foobar.raw").map(|a| a.unit.as_str()).collect();
        assert_eq!(units, ["foobar-web.socket", "foobar.service"]);
        assert_eq!(found.file_state("/p/foobar.raw"), State::Attached);
        assert_eq!(found.file_state("/p/baz"), State::AttachedRuntime);
        assert_eq!(found.file_state("/p/hand.raw"), State::Detached);
        std::fs::remove_dir_all(&root).unwrap();
    }
}
