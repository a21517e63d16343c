//! Extension images (systemd.exec(5) `ExtensionImages=`, portablectl's
//! `--extension`): file systems stacked on a portable image's `/usr`. systemd
//! merges one only when its `usr/lib/extension-release.d/extension-release.NAME`
//! says it is made for the image below it; wharf checks the same before it
//! attaches, so that a mismatch is refused at attach time, in one line,
//! rather than when the service first starts.

use std::fs::File;
use std::path::Path;

use super::inspect::{Reading, image_name, open_with};
use super::os_release::OsRelease;
use super::tree::{EntryType, Tree, read_file, resolve};
use super::units::{UnitFile, find_units};
use super::{Error, ImageKind, ImageName, Result};

/// Where an extension says what it is made for.
pub const EXTENSION_RELEASE_DIR: &str = "/usr/lib/extension-release.d";

/// An extension-release larger than this is not one.
const MAX_EXTENSION_RELEASE_SIZE: u64 = 64 * 1024;

/// The `ID=` of an extension made for any OS.
pub const ANY_ID: &str = "_any";

/// The scope portable services merge extensions in (`SYSEXT_SCOPE=`).
pub const PORTABLE_SCOPE: &str = "portable";

/// Entries of the extension-release directory named in an error, at most.
const LISTED_MAX: usize = 8;

/// The name an extension's release file is named after: the image's file
/// name without `.raw` (or `.raw.xz`), as systemd names images.
pub fn extension_name(name: &ImageName) -> &str {
    name.stem()
}

/// The path, inside the extension, of its release file.
pub fn extension_release_path(name: &str) -> String {
    format!("{EXTENSION_RELEASE_DIR}/extension-release.{name}")
}

/// Why an extension is not for the image below it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Mismatch {
    #[error("its extension-release has no ID= (the image's is ID={0})")]
    NoId(String),
    #[error("its extension-release says ID={found}, the image's os-release ID={wanted}")]
    Id { found: String, wanted: String },
    #[error("the image's os-release has no ID=, so no extension but one for ID=_any matches it")]
    BaseHasNoId,
    #[error("its extension-release says SYSEXT_LEVEL={found}, the image's os-release SYSEXT_LEVEL={wanted}")]
    SysextLevel { found: String, wanted: String },
    #[error("its extension-release has no VERSION_ID= (the image's os-release VERSION_ID={0})")]
    NoVersionId(String),
    #[error("its extension-release says VERSION_ID={found}, the image's os-release VERSION_ID={wanted}")]
    VersionId { found: String, wanted: String },
    #[error("its extension-release says SYSEXT_SCOPE={0}, which does not include 'portable'")]
    Scope(String),
    #[error("its extension-release says ARCHITECTURE={found}, not this host's {wanted}")]
    Architecture { found: String, wanted: String },
}

/// Whether an extension whose extension-release is `extension` may be
/// stacked on an image whose os-release is `base`, by the rules systemd
/// applies before merging one (systemd-sysext(8), systemd.exec(5)):
///
/// - `ID=` must be the image's, or `_any` (which also skips the version
///   rules: an extension for any OS cannot name a version of one);
/// - when the image has neither `VERSION_ID=` nor `SYSEXT_LEVEL=` (a rolling
///   release), the ID is enough;
/// - when both set `SYSEXT_LEVEL=`, they must be equal; otherwise, when the
///   image sets `VERSION_ID=`, the extension must set the same;
/// - `SYSEXT_SCOPE=`, when set, must include `portable`;
/// - `ARCHITECTURE=`, when set and not `_any`, must be this host's.
pub fn check_match(base: &OsRelease, extension: &OsRelease, architecture: &str) -> Result<(), Mismatch> {
    let set = |os: &OsRelease, key: &str| os.get(key).filter(|v| !v.is_empty()).map(str::to_string);
    if let Some(scope) = set(extension, "SYSEXT_SCOPE")
        && !scope.split_whitespace().any(|s| s == PORTABLE_SCOPE)
    {
        return Err(Mismatch::Scope(scope));
    }
    if let Some(found) = set(extension, "ARCHITECTURE")
        && found != ANY_ID
        && found != architecture
    {
        return Err(Mismatch::Architecture { found, wanted: architecture.to_string() });
    }
    let found_id = set(extension, "ID");
    if found_id.as_deref() == Some(ANY_ID) {
        return Ok(());
    }
    let Some(wanted_id) = set(base, "ID") else {
        return Err(Mismatch::BaseHasNoId);
    };
    match found_id {
        None => return Err(Mismatch::NoId(wanted_id)),
        Some(found) if found != wanted_id => return Err(Mismatch::Id { found, wanted: wanted_id }),
        Some(_) => {}
    }
    let (base_level, base_version) = (set(base, "SYSEXT_LEVEL"), set(base, "VERSION_ID"));
    if let (Some(wanted), Some(found)) = (&base_level, set(extension, "SYSEXT_LEVEL")) {
        if found != *wanted {
            return Err(Mismatch::SysextLevel { found, wanted: wanted.clone() });
        }
    } else if let Some(wanted) = base_version {
        match set(extension, "VERSION_ID") {
            None => return Err(Mismatch::NoVersionId(wanted)),
            Some(found) if found != wanted => return Err(Mismatch::VersionId { found, wanted }),
            Some(_) => {}
        }
    }
    Ok(())
}

/// systemd's name for the architecture wharf runs on, as `ARCHITECTURE=`
/// in an extension-release spells it (os-release(5)).
pub fn host_architecture() -> &'static str {
    match std::env::consts::ARCH {
        "x86_64" => "x86-64",
        "x86" => "x86",
        "aarch64" => "arm64",
        "arm" => "arm",
        "riscv64" => "riscv64",
        "powerpc64" if cfg!(target_endian = "little") => "ppc64-le",
        "powerpc64" => "ppc64",
        "s390x" => "s390x",
        "loongarch64" => "loongarch64",
        other => other,
    }
}

/// Reads the extension-release of the extension `extension` (its path on
/// the host; `name` as [`extension_name`] gives it) through `tree`, and
/// checks it against `base`, the os-release of `image`, the image it is
/// stacked on. Read with the image module's resolver: a release file that
/// is a symlink is followed inside the extension only, a FIFO or device is
/// never opened, and a large one is refused.
pub fn check_extension(
    image: &Path,
    base: &OsRelease,
    extension: &Path,
    name: &str,
    tree: &mut dyn Tree,
) -> Result<OsRelease> {
    let path = extension_release_path(name);
    let read = |source| Error::ExtensionRelease { extension: extension.to_path_buf(), source };
    let bytes = match read_file(tree, &path, MAX_EXTENSION_RELEASE_SIZE).map_err(read)? {
        Some(bytes) => bytes,
        None => {
            let found = release_files(tree, &path).map_err(read)?;
            return Err(Error::NoExtensionRelease {
                extension: extension.to_path_buf(),
                wanted: path.trim_start_matches('/').to_string(),
                found,
            });
        }
    };
    let release = OsRelease::parse(&String::from_utf8_lossy(&bytes));
    check_match(base, &release, host_architecture()).map_err(|reason| Error::ExtensionMismatch {
        extension: extension.to_path_buf(),
        image: image.to_path_buf(),
        reason: Box::new(reason),
    })?;
    Ok(release)
}

/// Reads an extension opened as `file` (of `kind`; `extension` is its path)
/// for stacking on `image`, whose os-release is `base`: checks it as systemd
/// would before merging it, and returns its unit files matching `prefixes`.
/// The extension is read as `reading` allows and closed again (a mounted
/// one unmounted) before this returns.
pub fn read_extension(
    image: &Path,
    base: &OsRelease,
    prefixes: &[String],
    extension: &Path,
    file: File,
    kind: ImageKind,
    reading: &Reading,
) -> Result<Vec<UnitFile>> {
    let name = image_name(extension)?;
    let mut opened = open_with(extension, file, kind, reading)?;
    check_extension(image, base, extension, extension_name(&name), opened.tree.as_mut())?;
    find_units(opened.tree.as_mut(), prefixes).map_err(|source| Error::Unit { image: extension.to_path_buf(), source })
}

/// Adds to `units` those of `extra` whose names it has not got yet, as
/// portabled does (the image's own unit, then the first extension's, wins),
/// and returns the names added, in `units`' (name) order.
pub fn merge_units(units: &mut Vec<UnitFile>, extra: Vec<UnitFile>) -> Vec<String> {
    let mut added = Vec::new();
    for unit in extra {
        if !units.iter().any(|u| u.name == unit.name) {
            added.push(unit.name.clone());
            units.push(unit);
        }
    }
    units.sort_by(|a, b| a.name.cmp(&b.name));
    added.sort();
    added
}

/// What the extension-release directory holds, for an error that says why
/// the one wanted is not there: `(none)`, or the names found.
fn release_files(tree: &mut dyn Tree, wanted: &str) -> Result<String, super::tree::TreeError> {
    let Some((dir, EntryType::Dir)) = resolve(tree, EXTENSION_RELEASE_DIR)? else {
        return Ok(format!("no {} in it", EXTENSION_RELEASE_DIR.trim_start_matches('/')));
    };
    // Read with the extension as root, a link to a host file leads nowhere.
    if tree.entry_type(&format!("{dir}/{}", wanted.rsplit('/').next().unwrap_or_default()))? == Some(EntryType::Symlink)
    {
        return Ok("it is a symlink that leads nowhere inside the extension".to_string());
    }
    let mut names: Vec<String> = tree.read_dir(&dir)?.into_iter().map(|(name, _)| name).collect();
    names.sort();
    if names.is_empty() {
        return Ok(format!("{} is empty", EXTENSION_RELEASE_DIR.trim_start_matches('/')));
    }
    let more = names.len().saturating_sub(LISTED_MAX);
    let mut listed: Vec<String> = names.into_iter().take(LISTED_MAX).map(|n| printable(&n)).collect();
    if more > 0 {
        listed.push(format!("and {more} more"));
    }
    Ok(format!("it has {}", listed.join(", ")))
}

/// A name from an image, safe to print on one line.
fn printable(name: &str) -> String {
    name.chars().map(|c| if c.is_control() { '?' } else { c }).collect()
}

/// Whether a path can be written into `ExtensionImages=` or
/// `ExtensionDirectories=` as it is: absolute, and free of what those
/// settings (or unit files) read specially — whitespace separates entries,
/// `:` starts mount options, `%` starts a specifier, quotes and `\` quote.
pub fn valid_setting_path(path: &Path) -> bool {
    let Some(text) = path.to_str() else { return false };
    path.is_absolute()
        && !text.chars().any(|c| c.is_whitespace() || c.is_control() || matches!(c, ':' | '%' | '"' | '\'' | '\\'))
}

#[cfg(test)]
mod tests {
    use super::super::tree::memory::{MemoryTree, Node};
    use super::*;

    fn os(text: &str) -> OsRelease {
        OsRelease::parse(text)
    }

    const BASE: &str = "ID=foobar\nVERSION_ID=2\n";

    #[test]
    fn id_must_match_or_be_any() {
        assert_eq!(check_match(&os(BASE), &os("ID=foobar\nVERSION_ID=2\n"), "x86-64"), Ok(()));
        assert_eq!(check_match(&os(BASE), &os("ID=_any\n"), "x86-64"), Ok(()));
        assert_eq!(
            check_match(&os(BASE), &os("ID=debian\nVERSION_ID=2\n"), "x86-64"),
            Err(Mismatch::Id { found: "debian".into(), wanted: "foobar".into() })
        );
        assert_eq!(check_match(&os(BASE), &os("VERSION_ID=2\n"), "x86-64"), Err(Mismatch::NoId("foobar".into())));
        assert_eq!(check_match(&os("VERSION_ID=2\n"), &os("ID=foobar\n"), "x86-64"), Err(Mismatch::BaseHasNoId));
        assert_eq!(check_match(&os("VERSION_ID=2\n"), &os("ID=_any\n"), "x86-64"), Ok(()));
    }

    #[test]
    fn sysext_level_wins_over_version_id_when_both_set_it() {
        let base = os("ID=foobar\nVERSION_ID=2\nSYSEXT_LEVEL=1.0\n");
        assert_eq!(check_match(&base, &os("ID=foobar\nSYSEXT_LEVEL=1.0\nVERSION_ID=9\n"), "x86-64"), Ok(()));
        assert_eq!(
            check_match(&base, &os("ID=foobar\nSYSEXT_LEVEL=2.0\nVERSION_ID=2\n"), "x86-64"),
            Err(Mismatch::SysextLevel { found: "2.0".into(), wanted: "1.0".into() })
        );
        // The extension names no level: the versions are compared.
        assert_eq!(check_match(&base, &os("ID=foobar\nVERSION_ID=2\n"), "x86-64"), Ok(()));
        assert_eq!(
            check_match(&base, &os("ID=foobar\nVERSION_ID=3\n"), "x86-64"),
            Err(Mismatch::VersionId { found: "3".into(), wanted: "2".into() })
        );
        // Only the extension names a level: the image's VERSION_ID still decides.
        assert_eq!(
            check_match(&os(BASE), &os("ID=foobar\nSYSEXT_LEVEL=1\n"), "x86-64"),
            Err(Mismatch::NoVersionId("2".into()))
        );
        // A rolling release (no version, no level): the ID is enough.
        assert_eq!(check_match(&os("ID=foobar\n"), &os("ID=foobar\nVERSION_ID=7\n"), "x86-64"), Ok(()));
        // Empty values count as unset.
        assert_eq!(check_match(&os("ID=foobar\nVERSION_ID=\n"), &os("ID=foobar\n"), "x86-64"), Ok(()));
    }

    #[test]
    fn scope_and_architecture_are_checked_when_set() {
        let ext = |extra: &str| os(&format!("ID=foobar\nVERSION_ID=2\n{extra}"));
        assert_eq!(check_match(&os(BASE), &ext("SYSEXT_SCOPE=system portable\n"), "x86-64"), Ok(()));
        assert_eq!(
            check_match(&os(BASE), &ext("SYSEXT_SCOPE=system initrd\n"), "x86-64"),
            Err(Mismatch::Scope("system initrd".into()))
        );
        assert_eq!(check_match(&os(BASE), &ext("ARCHITECTURE=x86-64\n"), "x86-64"), Ok(()));
        assert_eq!(check_match(&os(BASE), &ext("ARCHITECTURE=_any\n"), "arm64"), Ok(()));
        assert_eq!(
            check_match(&os(BASE), &ext("ARCHITECTURE=arm64\n"), "x86-64"),
            Err(Mismatch::Architecture { found: "arm64".into(), wanted: "x86-64".into() })
        );
    }

    fn release(text: &str) -> Node {
        Node::File(text.as_bytes().to_vec())
    }

    #[test]
    fn the_release_file_is_read_inside_the_extension_only() {
        let (image, ext) = (Path::new("/p/foobar.raw"), Path::new("/p/foobar-ext.raw"));
        let base = os(BASE);
        let at = "/usr/lib/extension-release.d/extension-release.foobar-ext";
        let mut good = MemoryTree::with(&[(at, release("ID=foobar\nVERSION_ID=2\n"))]);
        assert!(check_extension(image, &base, ext, "foobar-ext", &mut good).is_ok());

        let error = |tree: &mut MemoryTree| check_extension(image, &base, ext, "foobar-ext", tree).unwrap_err();
        let mut wrong_id = MemoryTree::with(&[(at, release("ID=debian\nVERSION_ID=2\n"))]);
        assert_eq!(
            error(&mut wrong_id).to_string(),
            "extension '/p/foobar-ext.raw' does not match image '/p/foobar.raw': its extension-release says \
             ID=debian, the image's os-release ID=foobar"
        );
        let mut missing = MemoryTree::with(&[("/usr/lib/systemd/system/foobar-x.service", release("[Service]\n"))]);
        assert_eq!(
            error(&mut missing).to_string(),
            "extension '/p/foobar-ext.raw': no usr/lib/extension-release.d/extension-release.foobar-ext \
             (no usr/lib/extension-release.d in it)"
        );
        let mut other = MemoryTree::with(&[(
            "/usr/lib/extension-release.d/extension-release.other",
            release("ID=foobar\nVERSION_ID=2\n"),
        )]);
        assert_eq!(
            error(&mut other).to_string(),
            "extension '/p/foobar-ext.raw': no usr/lib/extension-release.d/extension-release.foobar-ext \
             (it has extension-release.other)"
        );
        // A symlink to the host's file is resolved in the extension, where there is none.
        let mut outward = MemoryTree::with(&[(at, Node::Link("/etc/os-release".into()))]);
        assert_eq!(
            error(&mut outward).to_string(),
            "extension '/p/foobar-ext.raw': no usr/lib/extension-release.d/extension-release.foobar-ext \
             (it is a symlink that leads nowhere inside the extension)"
        );
        let mut climbing = MemoryTree::with(&[(at, Node::Link("../../../../../../etc/os-release".into()))]);
        assert!(matches!(error(&mut climbing), Error::NoExtensionRelease { .. }));
        // Inside the extension, a link is followed.
        let mut inward = MemoryTree::with(&[
            (at, Node::Link("../os-release".into())),
            ("/usr/lib/os-release", release("ID=foobar\nVERSION_ID=2\n")),
        ]);
        assert!(check_extension(image, &base, ext, "foobar-ext", &mut inward).is_ok());
        let mut huge = MemoryTree::with(&[(at, Node::File(vec![b'#'; 1 << 20]))]);
        assert!(error(&mut huge).to_string().contains("larger than 65536 bytes"), "{}", error(&mut huge));
        let mut dir = MemoryTree::with(&[(at, Node::Dir)]);
        assert!(error(&mut dir).to_string().contains("not a regular file"));
    }

    #[test]
    fn setting_paths_are_plain_absolute_paths() {
        assert!(valid_setting_path(Path::new("/var/lib/portables/foobar-ext.raw")));
        for bad in ["rel.raw", "/a b.raw", "/a:ro", "/a%n", "/a\"", "/a'", "/a\\x", "/a\n"] {
            assert!(!valid_setting_path(Path::new(bad)), "{bad:?}");
        }
    }
}
