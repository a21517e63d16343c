//! A machine's init, PID 1 of the container: where it is looked for in an
//! image (before a start, and by the launcher), and how wharf speaks to it —
//! systemd's signals for halt, poweroff and reboot, and the exit status with
//! which the launcher says the container rebooted.

use crate::image::tree::{EntryType, Tree, TreeError, resolve};

/// Where an image's init may be, in the order they are tried (as nspawn
/// tries them).
pub const INITS: &[&str] = &["/usr/lib/systemd/systemd", "/lib/systemd/systemd", "/sbin/init"];

/// The launcher's exit status when the container rebooted (nspawn's value),
/// so that a unit with `RestartForceExitStatus=` and `SuccessExitStatus=` of
/// it starts the machine again.
pub const EXIT_REBOOT: u8 = 133;

/// systemd's reboot request (as for ctrl-alt-del).
pub const REBOOT_SIGNAL: i32 = nix::libc::SIGINT;

/// systemd's halt request: SIGRTMIN+3.
pub fn halt_signal() -> i32 {
    super::sys::sigrtmin_plus(3)
}

/// systemd's poweroff request: SIGRTMIN+4.
pub fn poweroff_signal() -> i32 {
    super::sys::sigrtmin_plus(4)
}

/// The first of [`INITS`] that resolves, with the image as root (Debian's
/// /sbin/init is an absolute link that must not be followed on the host),
/// to a regular file that `executable` accepts; `executable` gets the
/// resolved path. A candidate that cannot be resolved is passed over; when
/// none is found, the first such error is returned, else `None`.
pub fn find(
    tree: &mut dyn Tree,
    mut executable: impl FnMut(&str) -> std::io::Result<bool>,
) -> Result<Option<&'static str>, FindError> {
    let mut first_error = None;
    for candidate in INITS {
        let found = match resolve(tree, candidate) {
            Ok(Some((path, EntryType::File))) => executable(&path).map_err(|e| FindError::Io(candidate, e)),
            Ok(_) => Ok(false),
            Err(e) => Err(FindError::Tree(candidate, e)),
        };
        match found {
            Ok(true) => return Ok(Some(candidate)),
            Ok(false) => {}
            Err(e) => {
                first_error.get_or_insert(e);
            }
        }
    }
    first_error.map_or(Ok(None), Err)
}

/// Why an init candidate could not be checked.
#[derive(Debug, thiserror::Error)]
pub enum FindError {
    #[error("resolving {0} in the image: {1}")]
    Tree(&'static str, #[source] TreeError),
    #[error("reading {0} in the image: {1}")]
    Io(&'static str, #[source] std::io::Error),
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::image::dir::DirTree;

    fn image(name: &str) -> std::path::PathBuf {
        let root = std::env::temp_dir().join(format!("wharf-init-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&root);
        std::fs::create_dir_all(root.join("usr/lib/systemd")).unwrap();
        std::fs::create_dir_all(root.join("sbin")).unwrap();
        root
    }

    #[test]
    fn inits_are_tried_in_order_inside_the_image() {
        let root = image("order");
        // An absolute link, resolved in the image, not on the host.
        std::os::unix::fs::symlink("/usr/lib/systemd/systemd", root.join("sbin/init")).unwrap();
        let mut tree = DirTree::open(&root).unwrap();
        assert_eq!(find(&mut tree, |_| Ok(true)).unwrap(), None);
        std::fs::write(root.join("usr/lib/systemd/systemd"), "").unwrap();
        let mut tree = DirTree::open(&root).unwrap();
        assert_eq!(find(&mut tree, |_| Ok(true)).unwrap(), Some("/usr/lib/systemd/systemd"));
        let mut seen = Vec::new();
        let refused = find(&mut tree, |path| {
            seen.push(path.to_string());
            Ok(false)
        });
        assert_eq!(refused.unwrap(), None);
        assert_eq!(seen, ["/usr/lib/systemd/systemd", "/usr/lib/systemd/systemd"]);
        std::fs::remove_dir_all(&root).unwrap();
    }

    #[test]
    fn a_failing_candidate_does_not_hide_a_later_one() {
        let root = image("error");
        std::fs::write(root.join("usr/lib/systemd/systemd"), "").unwrap();
        std::fs::write(root.join("sbin/init"), "").unwrap();
        let mut tree = DirTree::open(&root).unwrap();
        let found =
            find(
                &mut tree,
                |path| {
                    if path == "/sbin/init" { Ok(true) } else { Err(std::io::Error::other("unreadable")) }
                },
            );
        assert_eq!(found.unwrap(), Some("/sbin/init"));
        let error = find(&mut tree, |_| Err(std::io::Error::other("unreadable"))).unwrap_err();
        assert_eq!(error.to_string(), "reading /usr/lib/systemd/systemd in the image: unreadable");
        std::fs::remove_dir_all(&root).unwrap();
    }

    #[test]
    fn signals_are_systemds() {
        assert_eq!(halt_signal(), nix::libc::SIGRTMIN() + 3);
        assert_eq!(poweroff_signal(), nix::libc::SIGRTMIN() + 4);
        assert_eq!(REBOOT_SIGNAL, 2);
    }
}
