//! Living beside systemd-portabled on one host.
//!
//! portabled keeps its attachments in `/etc/systemd/system.attached` (and
//! `/run/systemd/system.attached` for runtime ones) and knows them by the
//! first line of each unit's `20-portable.conf`, which names the image (then
//! its extensions, `:`-separated). wharf reads those to list them and to
//! refuse to attach over them or detach them.
//!
//! The other way round, wharf writes a *mirror* there for each unit it
//! attaches, so that `portablectl list` and `is-attached` see wharf's
//! attachments: a unit file and a drop-in of comments only, the drop-in's
//! first line portabled's marker. The unit's real files stay in
//! `/etc/systemd/system`, which systemd reads first, and wharf's drop-in of
//! the same name there hides the mirror's: systemd runs exactly what it ran
//! without the mirror. An image attached by path from outside the search
//! path also gets the link portabled makes for such images, in
//! `/etc/portables` (or `/run/portables`), so that `portablectl list` finds it.

use std::path::{Path, PathBuf};

use super::Attachment;
use super::dropin::{PORTABLE_DROPIN, read_dropin};
use crate::transaction::Transaction;

/// portabled's persistent attachments...
pub const PERSISTENT_DIR: &str = "etc/systemd/system.attached";
/// ...and its runtime ones.
pub const RUNTIME_DIR: &str = "run/systemd/system.attached";

const MARKER_HEAD: &str = "# Drop-in created for image '";
const MARKER_TAIL: &str = "', do not edit.";
/// The second line of a mirror: what tells wharf's mirror from portabled's own entry.
const MIRROR_NOTE: &str = "# A mirror written by wharf, which attached this unit in ";

/// The directory of portabled's attachments below `root`.
pub fn attached_dir(root: &Path, runtime: bool) -> PathBuf {
    root.join(if runtime { RUNTIME_DIR } else { PERSISTENT_DIR })
}

/// The image (then the extensions) a portabled drop-in names, if its first
/// line is portabled's marker.
pub fn parse_marker(contents: &str) -> Option<Vec<String>> {
    let images = contents.lines().next()?.strip_prefix(MARKER_HEAD)?.strip_suffix(MARKER_TAIL)?;
    let images: Vec<String> = images.split(':').filter(|i| !i.is_empty()).map(str::to_string).collect();
    (!images.is_empty()).then_some(images)
}

/// The drop-in of the mirror of a unit wharf attached from `image` in `unit_dir`.
pub fn mirror_dropin(image: &str, unit_dir: &Path) -> String {
    format!(
        "{MARKER_HEAD}{image}{MARKER_TAIL}\n{MIRROR_NOTE}{}, so that portablectl sees it.\n\
         # The unit's settings are there; systemd reads that directory first.\n",
        unit_dir.display()
    )
}

fn is_mirror(contents: &str) -> bool {
    contents.lines().nth(1).is_some_and(|line| line.starts_with(MIRROR_NOTE))
}

/// Who holds a unit name in portabled's directories.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Holder {
    /// portabled attached it from this image.
    Portabled { image: String, path: PathBuf },
    /// wharf's own mirror.
    Mirror { runtime: bool },
    /// A unit file there without portabled's marker.
    Other { path: PathBuf },
}

/// What holds `unit` in portabled's directories, persistent ones first.
pub fn holder(root: &Path, unit: &str) -> std::io::Result<Option<Holder>> {
    for runtime in [false, true] {
        let dir = attached_dir(root, runtime);
        let path = dir.join(unit);
        if path.symlink_metadata().is_err() {
            continue;
        }
        let dropin = read_dropin(&dir.join(format!("{unit}.d")).join(PORTABLE_DROPIN))?;
        let holder = match dropin.as_deref() {
            Some(text) if is_mirror(text) => Holder::Mirror { runtime },
            Some(text) => match parse_marker(text) {
                Some(images) => Holder::Portabled { image: images[0].clone(), path },
                None => Holder::Other { path },
            },
            None => Holder::Other { path },
        };
        return Ok(Some(holder));
    }
    Ok(None)
}

/// Every attachment portabled made below `root` (wharf's mirrors left out),
/// sorted by image, then unit.
pub fn scan(root: &Path) -> std::io::Result<Vec<Attachment>> {
    let mut found = Vec::new();
    for runtime in [false, true] {
        let dir = attached_dir(root, runtime);
        let entries = match std::fs::read_dir(&dir) {
            Ok(entries) => entries,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
            Err(e) => return Err(e),
        };
        for entry in entries {
            let entry = entry?;
            let file_type = entry.file_type()?;
            let Some(unit) = entry.file_name().to_str().map(str::to_string) else { continue };
            if !(file_type.is_file() || file_type.is_symlink()) || !crate::image::units::is_portable_unit_name(&unit) {
                continue;
            }
            let Some(text) = read_dropin(&dir.join(format!("{unit}.d")).join(PORTABLE_DROPIN))? else { continue };
            if is_mirror(&text) {
                continue;
            }
            if let Some(images) = parse_marker(&text) {
                found.push(Attachment { image: images[0].clone(), unit, runtime });
            }
        }
    }
    found.sort_by(|a, b| (&a.image, &a.unit).cmp(&(&b.image, &b.unit)));
    found.dedup_by(|a, b| a.image == b.image && a.unit == b.unit);
    Ok(found)
}

/// The unit file of a mirror. Comments only, and never loaded: systemd
/// takes the unit of that name from `unit_dir`, which it reads first. Not
/// a symlink to wharf's file: systemd counts a link to a unit in its
/// runtime directories as enabling it.
pub fn mirror_unit(unit_dir: &Path) -> String {
    format!(
        "{MIRROR_NOTE}{}, so that portablectl sees it.\n\
         # systemd reads that directory first and never loads this file.\n",
        unit_dir.display()
    )
}

/// Adds the mirror of `unit`, attached from `image` in `unit_dir`, to `tx`:
/// the drop-in first, then the unit file, as the unit's own files go.
pub fn add_mirror_steps(root: &Path, runtime: bool, image: &str, unit: &str, unit_dir: &Path, tx: &mut Transaction) {
    let dir = attached_dir(root, runtime);
    tx.make_dir(&dir);
    let dropins = dir.join(format!("{unit}.d"));
    tx.make_dir(&dropins);
    tx.write(dropins.join(PORTABLE_DROPIN), mirror_dropin(image, unit_dir), 0o644);
    tx.write(dir.join(unit), mirror_unit(unit_dir), 0o644);
}

/// The files of `unit`'s mirror, to remove with the unit (the link first):
/// only if it is wharf's mirror, so that portabled's own entry of the same
/// name is never touched.
pub fn mirror_files(root: &Path, runtime: bool, unit: &str) -> std::io::Result<Vec<PathBuf>> {
    let dir = attached_dir(root, runtime);
    let dropins = dir.join(format!("{unit}.d"));
    let dropin = dropins.join(PORTABLE_DROPIN);
    if !read_dropin(&dropin)?.as_deref().is_some_and(is_mirror) {
        return Ok(Vec::new());
    }
    let mut files = Vec::new();
    let unit_file = dir.join(unit);
    if read_dropin(&unit_file)?.is_some_and(|text| text.starts_with(MIRROR_NOTE)) {
        files.push(unit_file);
    }
    files.push(dropin);
    // Its directory goes too, unless someone put more there.
    let alone = std::fs::read_dir(&dropins)?.filter_map(Result::ok).all(|e| e.file_name() == PORTABLE_DROPIN);
    if alone {
        files.push(dropins);
    }
    Ok(files)
}

/// Where portabled links an image attached from outside the search path:
/// `/etc/portables/NAME` (or `/run/portables/NAME`), unless the image is in
/// the search path already.
pub fn image_link_path(root: &Path, image: &Path, runtime: bool) -> Option<PathBuf> {
    let pool = crate::image::Pool::under(root, "portables");
    if pool.dirs().iter().any(|dir| image.parent() == Some(dir.as_path())) {
        return None;
    }
    let name = image.file_name()?;
    Some(root.join(if runtime { "run/portables" } else { "etc/portables" }).join(name))
}

/// Adds the search-path link of `image` to `tx`, where portabled would make
/// one and no entry of that name is there yet.
/// The directory is made by wharfd.service at every start (wharfd's
/// sandbox could not make it): where someone removed it since, there is
/// no link, and `portablectl list` does not show the image (`is-attached`
/// with its path still does).
pub fn add_image_link(root: &Path, image: &Path, runtime: bool, tx: &mut Transaction) {
    let Some(link) = image_link_path(root, image, runtime) else { return };
    if !link.parent().is_some_and(Path::is_dir) {
        tracing::warn!(link = %link.display(), "no search-path directory for the link portablectl lists images by");
        return;
    }
    let ours = std::fs::read_link(&link).is_ok_and(|target| target == image);
    if ours || link.symlink_metadata().is_err() {
        tx.symlink(link, image);
    }
}

/// The search-path link of `image`, if there is one and it points to it.
pub fn image_link(root: &Path, image: &Path) -> Option<PathBuf> {
    [false, true]
        .into_iter()
        .filter_map(|runtime| image_link_path(root, image, runtime))
        .find(|link| std::fs::read_link(link).is_ok_and(|target| target == image))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn markers_name_the_image_then_its_extensions() {
        let text = "# Drop-in created for image '/var/lib/portables/app.raw:/x/ext.raw', do not edit.\n[Service]\n";
        assert_eq!(parse_marker(text).unwrap(), ["/var/lib/portables/app.raw", "/x/ext.raw"]);
        assert_eq!(parse_marker("# Drop-in created by wharf for image '/p/a.raw', do not edit.\n"), None);
        assert_eq!(parse_marker("# Drop-in created for image '', do not edit.\n"), None);
    }

    #[test]
    fn a_mirror_reads_as_portabled_marker_and_is_told_apart() {
        let text = mirror_dropin("/var/lib/portables/app.raw", Path::new("/etc/systemd/system"));
        assert_eq!(parse_marker(&text).unwrap(), ["/var/lib/portables/app.raw"]);
        assert!(is_mirror(&text));
        assert!(!is_mirror("# Drop-in created for image '/p/a.raw', do not edit.\n[Service]\nRootImage=/p/a.raw\n"));
        // Only comments: were systemd ever to read it, it would set nothing.
        assert!(text.lines().all(|l| l.starts_with('#')), "{text}");
    }

    fn root(tag: &str) -> PathBuf {
        let root = std::env::temp_dir().join(format!("wharf-portabled-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&root);
        root
    }

    fn write(root: &Path, rel: &str, contents: &str) {
        let path = root.join(rel);
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(path, contents).unwrap();
    }

    #[test]
    fn scan_finds_portabled_attachments_and_skips_mirrors() {
        let root = root("scan");
        let marker = "# Drop-in created for image '/var/lib/portables/app.raw', do not edit.\n";
        write(&root, "etc/systemd/system.attached/app.service", "[Service]\n");
        write(&root, "etc/systemd/system.attached/app.service.d/20-portable.conf", marker);
        write(&root, "run/systemd/system.attached/rt.socket", "[Socket]\n");
        write(
            &root,
            "run/systemd/system.attached/rt.socket.d/20-portable.conf",
            "# Drop-in created for image '/p/rt', do not edit.\n",
        );
        write(&root, "etc/systemd/system.attached/ours.service", &mirror_unit(Path::new("/etc/systemd/system")));
        write(
            &root,
            "etc/systemd/system.attached/ours.service.d/20-portable.conf",
            &mirror_dropin("/p/ours.raw", Path::new("/etc/systemd/system")),
        );
        write(&root, "etc/systemd/system.attached/plain.service", "[Service]\n");
        let found = scan(&root).unwrap();
        let seen: Vec<(&str, &str, bool)> =
            found.iter().map(|a| (a.image.as_str(), a.unit.as_str(), a.runtime)).collect();
        assert_eq!(seen, [("/p/rt", "rt.socket", true), ("/var/lib/portables/app.raw", "app.service", false)]);
        assert_eq!(
            holder(&root, "app.service").unwrap(),
            Some(Holder::Portabled {
                image: "/var/lib/portables/app.raw".into(),
                path: root.join("etc/systemd/system.attached/app.service")
            })
        );
        assert_eq!(holder(&root, "ours.service").unwrap(), Some(Holder::Mirror { runtime: false }));
        assert!(matches!(holder(&root, "plain.service").unwrap(), Some(Holder::Other { .. })));
        assert_eq!(holder(&root, "none.service").unwrap(), None);
        assert_eq!(mirror_files(&root, false, "app.service").unwrap(), Vec::<PathBuf>::new());
        assert_eq!(mirror_files(&root, false, "ours.service").unwrap().len(), 3);
        std::fs::remove_dir_all(&root).unwrap();
    }

    #[test]
    fn images_outside_the_search_path_get_a_link() {
        let root = Path::new("/");
        assert_eq!(image_link_path(root, Path::new("/var/lib/portables/a.raw"), false), None);
        assert_eq!(image_link_path(root, Path::new("/etc/portables/a.raw"), true), None);
        assert_eq!(
            image_link_path(root, Path::new("/root/img/hdir"), false),
            Some(PathBuf::from("/etc/portables/hdir"))
        );
        assert_eq!(
            image_link_path(root, Path::new("/root/img/h.raw"), true),
            Some(PathBuf::from("/run/portables/h.raw"))
        );
    }
}
