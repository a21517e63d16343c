//! What an image holds: its kind, os-release and the unit files matching
//! its prefixes. The basis of `portable inspect` and of attaching.

use std::fs::File;
use std::path::{Path, PathBuf};

use serde::Serialize;

use super::name::validate_prefix;
use super::os_release::{OS_RELEASE_PATHS, OsRelease};
use super::tree::{Tree, read_file};
use super::units::{UnitFile, find_units};
use super::{Error, ImageKind, ImageName, Result};

/// An os-release larger than this is not an os-release.
const MAX_OS_RELEASE_SIZE: u64 = 64 * 1024;

/// A partition of a GPT disk image, as the Discoverable Partitions
/// Specification names it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Partition {
    /// `root`, `usr`, `root-verity`, `usr-verity-sig`, ... or `other`.
    pub role: String,
    /// The architecture the type GUID is for, when it is for one.
    pub architecture: Option<String>,
    pub type_uuid: String,
    pub uuid: String,
    pub label: String,
    /// Bytes from the start of the disk.
    pub offset: u64,
    pub size: u64,
    /// Whether wharf reads its file tree (the root or usr partition it chose).
    pub used: bool,
}

/// An image opened for reading.
pub struct Opened {
    pub tree: Box<dyn Tree>,
    /// The partitions of a GPT image; empty for other kinds.
    pub partitions: Vec<Partition>,
}

impl std::fmt::Debug for Opened {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Opened").field("access", &self.tree.access()).field("partitions", &self.partitions).finish()
    }
}

/// Everything `inspect` reports about an image.
#[derive(Debug, Clone, Serialize)]
pub struct Inspection {
    pub name: String,
    pub path: PathBuf,
    pub kind: ImageKind,
    /// How the tree was read: a user-space reader, or a mount.
    pub access: String,
    pub os_release: OsRelease,
    /// The prefixes units were matched against.
    pub prefixes: Vec<String>,
    pub units: Vec<UnitFile>,
    pub partitions: Vec<Partition>,
}

/// Opens an image's file tree for reading, the way its kind allows. `file`
/// is the image opened read-only (a directory or a file); `path` names it in
/// errors and logs.
pub fn open(path: &Path, file: File, kind: ImageKind) -> Result<Opened> {
    let opened = match kind {
        ImageKind::Directory => {
            Opened { tree: Box::new(super::dir::DirTree::from_fd(file.into())), partitions: Vec::new() }
        }
        kind => {
            return Err(Error::Unsupported { image: path.to_path_buf(), kind });
        }
    };
    tracing::debug!(image = %path.display(), access = opened.tree.access(), "opened image");
    Ok(opened)
}

/// Reads an image's os-release, refusing an image without one.
pub fn read_os_release(image: &Path, tree: &mut dyn Tree) -> Result<OsRelease> {
    for candidate in OS_RELEASE_PATHS {
        let bytes = read_file(tree, candidate, MAX_OS_RELEASE_SIZE).map_err(Error::read(image))?;
        if let Some(bytes) = bytes {
            return Ok(OsRelease::parse(&String::from_utf8_lossy(&bytes)));
        }
    }
    Err(Error::NoOsRelease(image.to_path_buf()))
}

/// The prefixes to match units against: those asked for (each of which must
/// be allowed by `PORTABLE_PREFIXES=` when the image sets it), else the
/// image's `PORTABLE_PREFIXES=`, else the prefix of its name.
pub fn choose_prefixes(image: &Path, name: &ImageName, requested: &[String], os: &OsRelease) -> Result<Vec<String>> {
    let allowed = os.portable_prefixes();
    if requested.is_empty() {
        return Ok(if allowed.is_empty() { vec![name.prefix().to_string()] } else { allowed });
    }
    for prefix in requested {
        validate_prefix(prefix)?;
        if !allowed.is_empty() && !allowed.contains(prefix) {
            return Err(Error::PrefixNotAllowed {
                image: image.to_path_buf(),
                prefix: prefix.clone(),
                allowed: allowed.join(" "),
            });
        }
    }
    Ok(requested.to_vec())
}

/// Inspects the image at `path`: kind, os-release, and the unit files that
/// match `requested` prefixes (or the default ones).
pub fn inspect(path: &Path, requested: &[String]) -> Result<Inspection> {
    let file = File::open(path).map_err(Error::io(path))?;
    inspect_open(path, file, requested)
}

/// [`inspect`] for an image already open (e.g. passed by a client that may
/// read it); `path` is what the image is called in the result and errors.
pub fn inspect_open(path: &Path, file: File, requested: &[String]) -> Result<Inspection> {
    let name = image_name(path)?;
    let kind = ImageKind::detect_open(&file, path)?;
    let mut opened = open(path, file, kind)?;
    let os_release = read_os_release(path, opened.tree.as_mut())?;
    let prefixes = choose_prefixes(path, &name, requested, &os_release)?;
    let units = find_units(opened.tree.as_mut(), &prefixes)
        .map_err(|source| Error::Unit { image: path.to_path_buf(), source })?;
    Ok(Inspection {
        name: name.to_string(),
        path: path.to_path_buf(),
        kind,
        access: opened.tree.access().to_string(),
        os_release,
        prefixes,
        units,
        partitions: opened.partitions,
    })
}

/// The image name of a path: its last component.
pub fn image_name(path: &Path) -> Result<ImageName> {
    let file_name = path.file_name().and_then(|n| n.to_str()).ok_or_else(|| Error::NotAnImage(path.to_path_buf()))?;
    Ok(ImageName::new(file_name)?)
}
