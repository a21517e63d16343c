//! What an image holds: its kind, os-release and the unit files matching
//! its prefixes. The basis of `portable inspect` and of attaching.

use std::fs::File;
use std::path::{Path, PathBuf};

use serde::Serialize;

use super::dir::DirTree;
use super::name::validate_prefix;
use super::os_release::{OS_RELEASE_PATHS, OsRelease};
use super::slice::FileSlice;
use super::squashfs::SquashfsTree;
use super::tree::{Tree, read_file};
use super::units::{UnitFile, find_units};
use super::xz;
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
    /// How the tree is read, for people: the reader, and for an xz image
    /// how it was decompressed.
    pub access: String,
}

impl std::fmt::Debug for Opened {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Opened").field("access", &self.access).field("partitions", &self.partitions).finish()
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

/// How an image may be read: what the reader may do, and at what cost.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reading {
    /// Whether what wharf cannot read in user space (erofs) may be mounted:
    /// only wharfd does, for root.
    pub mount: bool,
    /// Where an xz image is decompressed: the first of these directories
    /// that takes an `O_TMPFILE`, else memory.
    pub xz_dirs: Vec<PathBuf>,
    /// The most an xz image may decompress to.
    pub xz_limit: Option<u64>,
}

impl Reading {
    /// wharfd reading for root (attaching, previews, machines): mounts
    /// allowed, xz decompressed to its state directory.
    pub fn privileged() -> Reading {
        Reading { mount: true, xz_dirs: xz::anonymous_dirs(), xz_limit: None }
    }

    /// wharfd inspecting for root: as [`Reading::privileged`], with the
    /// decompressed size capped.
    pub fn inspect_privileged() -> Reading {
        Reading { xz_limit: Some(xz::MAX_INSPECT_SIZE), ..Reading::privileged() }
    }

    /// A user's own process: no mounts, xz decompressed into memory (never
    /// onto a disk) up to the cap.
    pub fn unprivileged() -> Reading {
        Reading { mount: false, xz_dirs: Vec::new(), xz_limit: Some(xz::MAX_INSPECT_SIZE) }
    }
}

/// Opens an image's file tree for reading, the way its kind allows. `file`
/// is the image opened read-only (a directory or a file); `path` names it in
/// errors and logs.
///
/// squashfs and ext4 (bare or in a GPT partition) are read in user space,
/// with no privilege; erofs is mounted (root only, see [`super::mount`]).
/// An xz image is decompressed into an anonymous file, never into the pool:
/// attaching, which needs the raw file, uses [`super::xz::decompress_to_pool`].
pub fn open(path: &Path, file: File, kind: ImageKind) -> Result<Opened> {
    open_with(path, file, kind, &Reading::privileged())
}

/// [`open`], reading as `reading` allows.
pub fn open_with(path: &Path, file: File, kind: ImageKind, reading: &Reading) -> Result<Opened> {
    let whole = |file: File| FileSlice::whole(file).map_err(Error::io(path));
    let needs_mount = || Error::NeedsPrivilege { image: path.to_path_buf(), kind: ImageKind::Erofs };
    let (tree, partitions): (Box<dyn Tree>, Vec<Partition>) = match kind {
        ImageKind::Directory => (Box::new(DirTree::from_fd(file.into())), Vec::new()),
        ImageKind::Squashfs => (Box::new(SquashfsTree::open(path, whole(file)?)?), Vec::new()),
        ImageKind::Ext4 => (super::ext4::open(path, whole(file)?)?, Vec::new()),
        ImageKind::Erofs if !reading.mount => return Err(needs_mount()),
        ImageKind::Erofs => (super::mount::open(path, ImageKind::Erofs, whole(file)?)?, Vec::new()),
        ImageKind::Gpt => super::gpt::open_with(path, file, reading.mount)?,
        ImageKind::Xz => {
            let raw = xz::decompress_anonymous(path, &file, &reading.xz_dirs, reading.xz_limit, |_, _| {})?;
            let inner = raw.kind;
            let opened = open_with(path, raw.file, inner, reading)?;
            let access = format!("xz, decompressed to an anonymous file: {inner}: {}", opened.access);
            tracing::debug!(image = %path.display(), %access, "opened image");
            return Ok(Opened { access, ..opened });
        }
    };
    let access = tree.access().to_string();
    tracing::debug!(image = %path.display(), %access, "opened image");
    Ok(Opened { tree, partitions, access })
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
    inspect_with(path, file, requested, &Reading::inspect_privileged())
}

/// [`inspect_open`], reading as `reading` allows.
pub fn inspect_with(path: &Path, file: File, requested: &[String], reading: &Reading) -> Result<Inspection> {
    let name = image_name(path)?;
    let kind = ImageKind::detect_open(&file, path)?;
    let mut opened = open_with(path, file, kind, reading)?;
    let os_release = read_os_release(path, opened.tree.as_mut())?;
    // Looking is not attaching: as portablectl's inspect, any prefix shows
    // what it matches; only attach holds it to PORTABLE_PREFIXES=.
    let prefixes = if requested.is_empty() {
        choose_prefixes(path, &name, requested, &os_release)?
    } else {
        let valid = |prefix: &String| -> Result<String> {
            validate_prefix(prefix)?;
            Ok(prefix.clone())
        };
        requested.iter().map(valid).collect::<Result<Vec<_>>>()?
    };
    let units = find_units(opened.tree.as_mut(), &prefixes)
        .map_err(|source| Error::Unit { image: path.to_path_buf(), source })?;
    Ok(Inspection {
        name: name.to_string(),
        path: path.to_path_buf(),
        kind,
        access: opened.access,
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

/// Every user-space reader on the real sample image, built with the Debian
/// tools as images/foobar/build does (no root, no loop device: erofs, which
/// needs both, is tested in the integration suite).
#[cfg(test)]
mod tests {
    use std::path::PathBuf;
    use std::sync::OnceLock;

    use super::*;

    /// foobar (version 2) built once per test run in every format.
    fn samples() -> &'static PathBuf {
        static DIR: OnceLock<PathBuf> = OnceLock::new();
        DIR.get_or_init(|| {
            let dir = std::env::temp_dir().join(format!("wharf-samples-{}", std::process::id()));
            let _ = std::fs::remove_dir_all(&dir);
            std::fs::create_dir_all(&dir).unwrap();
            let recipe = Path::new(env!("CARGO_MANIFEST_DIR")).join("images/foobar/build");
            for (name, format) in [
                ("foobar_2.raw", "squashfs"),
                ("foobar-ext4_2.raw", "ext4"),
                ("foobar-gpt_2.raw", "gpt"),
                ("foobar-xz_2.raw.xz", "xz"),
            ] {
                let status =
                    std::process::Command::new(&recipe).arg(dir.join(name)).args([format, "2"]).status().unwrap();
                assert!(status.success(), "building {name}");
            }
            dir
        })
    }

    fn unit_names(inspection: &Inspection) -> Vec<&str> {
        inspection.units.iter().map(|u| u.name.as_str()).collect()
    }

    #[test]
    fn every_user_space_kind_is_inspected() {
        let foobar = ["foobar".to_string()];
        for (name, kind, access) in [
            ("foobar_2.raw", ImageKind::Squashfs, "squashfs, user-space reader"),
            ("foobar-ext4_2.raw", ImageKind::Ext4, "ext4, user-space reader"),
            ("foobar-gpt_2.raw", ImageKind::Gpt, "squashfs, user-space reader"),
            ("foobar-xz_2.raw.xz", ImageKind::Xz, "xz, decompressed to an anonymous file: squashfs: squashfs"),
        ] {
            let inspection = inspect(&samples().join(name), &foobar).unwrap();
            assert_eq!(inspection.kind, kind, "{name}");
            assert!(inspection.access.starts_with(access), "{name}: {}", inspection.access);
            assert_eq!(inspection.os_release.get("VERSION_ID"), Some("2"), "{name}");
            assert_eq!(unit_names(&inspection), ["foobar-hello.service", "foobar.service"], "{name}");
            assert!(inspection.units[1].contents.contains("ExecStart=/usr/bin/busybox httpd"), "{name}");
        }
        let gpt = inspect(&samples().join("foobar-gpt_2.raw"), &[]).unwrap();
        assert_eq!(gpt.partitions.len(), 1);
        let root = &gpt.partitions[0];
        assert_eq!(
            (root.role.as_str(), root.architecture.as_deref()),
            ("root", Some(super::super::gpt::host_architecture()))
        );
        assert_eq!((root.offset, root.used), (2048 * 512, true));
        assert_eq!(root.label, format!("root-{}", std::env::consts::ARCH));
        // Nothing of the anonymous decompression is left in the directory.
        let names: Vec<_> = std::fs::read_dir(samples()).unwrap().map(|e| e.unwrap().file_name()).collect();
        assert_eq!(names.len(), 4, "{names:?}");
    }

    #[test]
    fn unprivileged_reading_never_mounts_and_caps_xz() {
        let dir = std::env::temp_dir().join(format!("wharf-unpriv-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        // Anything with erofs's magic is refused before any mount is tried.
        let mut erofs = vec![0u8; 8192];
        erofs[1024..1028].copy_from_slice(&[0xe2, 0xe1, 0xf5, 0xe0]);
        let path = dir.join("e.raw");
        std::fs::write(&path, &erofs).unwrap();
        let error = inspect_with(&path, File::open(&path).unwrap(), &[], &Reading::unprivileged()).unwrap_err();
        assert!(matches!(error, Error::NeedsPrivilege { kind: ImageKind::Erofs, .. }), "{error}");
        assert!(
            error
                .to_string()
                .ends_with("erofs file systems are read through a loop device and a mount, which needs root")
        );
        // An xz image is read from memory, and only up to the cap.
        let xz = samples().join("foobar-xz_2.raw.xz");
        let reading = Reading::unprivileged();
        assert!(reading.xz_dirs.is_empty() && !reading.mount);
        let inspection = inspect_with(&xz, File::open(&xz).unwrap(), &[], &reading).unwrap();
        assert_eq!(inspection.os_release.get("VERSION_ID"), Some("2"));
        let tight = Reading { xz_limit: Some(4096), ..Reading::unprivileged() };
        let error = inspect_with(&xz, File::open(&xz).unwrap(), &[], &tight).unwrap_err();
        assert!(matches!(error, Error::TooLarge { limit: 4096, .. }), "{error}");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    /// A deterministic stream of pseudo-random bytes (xorshift64).
    fn noise(seed: u64, len: usize) -> Vec<u8> {
        let mut state = seed | 1;
        (0..len)
            .map(|_| {
                state ^= state << 13;
                state ^= state >> 7;
                state ^= state << 17;
                state as u8
            })
            .collect()
    }

    /// Opens `bytes` as an image; a panic inside a reader is a test failure
    /// (the guards turn it into an error that says "reader failed").
    fn open_bytes(tag: &str, bytes: &[u8]) -> Result<Inspection> {
        let path = std::env::temp_dir().join(format!("wharf-fuzz-{}-{tag}.raw", std::process::id()));
        std::fs::write(&path, bytes).unwrap();
        let result = inspect(&path, &[]);
        std::fs::remove_file(&path).unwrap();
        if let Err(e) = &result {
            assert!(!e.to_string().contains("reader failed"), "{tag}: a reader panicked: {e}");
            assert!(!e.to_string().contains('\n'), "{tag}: {e}");
        }
        result
    }

    #[test]
    fn truncated_and_garbled_squashfs_images_are_refused_cleanly() {
        let image = std::fs::read(samples().join("foobar_2.raw")).unwrap();
        for len in [0, 4, 95, 96, 4096, image.len() / 2, image.len() - 4097] {
            let error = open_bytes(&format!("cut{len}"), &image[..len]).unwrap_err().to_string();
            assert!(
                error.contains("corrupt squashfs image: truncated") || error.contains("not an image"),
                "cut at {len}: {error}"
            );
        }
        // Random bytes after a valid magic, and after a valid superblock.
        for seed in 0..64u64 {
            let mut forged = b"hsqs".to_vec();
            forged.extend(noise(seed, 64 * 1024));
            open_bytes(&format!("magic{seed}"), &forged).unwrap_err();
            let mut forged = image[..96].to_vec();
            forged.extend(noise(seed, image.len() - 96));
            open_bytes(&format!("superblock{seed}"), &forged).unwrap_err();
        }
        // Bytes flipped all over the metadata at the end of the image (the
        // tables) and anywhere: an error or a tree, never a panic.
        for seed in 0..200u64 {
            let mut flipped = image.clone();
            let spots = noise(seed, 16);
            for pair in spots.chunks(4) {
                let at = u32::from_le_bytes(pair.try_into().unwrap()) as usize;
                let at = if seed % 2 == 0 { image.len() - 1 - at % 8192 } else { at % image.len() };
                flipped[at] ^= pair[0] | 1;
            }
            let _ = open_bytes(&format!("flip{seed}"), &flipped);
        }
    }

    #[test]
    fn truncated_ext4_and_gpt_images_are_refused_cleanly() {
        for name in ["foobar-ext4_2.raw", "foobar-gpt_2.raw"] {
            let image = std::fs::read(samples().join(name)).unwrap();
            // (The GPT sample has 1 MiB after its partition: cut into the partition.)
            for len in [2048, 8192, image.len() / 3, image.len() - (1 << 20) - 4096] {
                let error = open_bytes(&format!("{name}-{len}"), &image[..len]).unwrap_err().to_string();
                assert!(
                    error.contains("truncated")
                        || error.contains("extends past the end")
                        || error.contains("not an image"),
                    "{name} cut at {len}: {error}"
                );
            }
        }
    }
}
