//! What apply read from each image file, kept by the file's identity, so
//! that a pass over a host that is as its fleet file says reads no image:
//! no xz image is hashed or decompressed again, no file system is walked
//! for its units, no pinned file is hashed again.
//!
//! An entry is used only while the file at the wanted path is the very one
//! it was made from: the same device and inode, size, modification time
//! and change time (which no one can set back: writing, truncating,
//! renaming over or touching the file changes it), with the same prefixes
//! asked for, and, for a `sha256` pin, the digest the file had when it was
//! read. An xz image's entry also holds the identity of its decompressed
//! copy in the pool. Directories are never kept: their files change
//! without changing the directory. Anything that does not match is read as
//! before, and the entry replaced. The cache is only a cache: a missing or
//! unreadable one is an empty one.

use std::collections::BTreeMap;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::image::ImageKind;
use crate::image::units::UnitFile;
use crate::portable::plan::Source;

/// Where it is kept, under the host root.
pub const CACHE_FILE: &str = "var/lib/wharf/image-cache.json";

/// How long a file must have been left alone before what it holds is kept.
const SETTLE: std::time::Duration = std::time::Duration::from_secs(2);

/// What tells one file from another, or from itself changed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Identity {
    pub dev: u64,
    pub ino: u64,
    pub size: u64,
    pub mtime_ns: i128,
    pub ctime_ns: i128,
}

impl Identity {
    pub fn of(metadata: &std::fs::Metadata) -> Identity {
        let ns = |s: i64, n: i64| i128::from(s) * 1_000_000_000 + i128::from(n);
        Identity {
            dev: metadata.dev(),
            ino: metadata.ino(),
            size: metadata.size(),
            mtime_ns: ns(metadata.mtime(), metadata.mtime_nsec()),
            ctime_ns: ns(metadata.ctime(), metadata.ctime_nsec()),
        }
    }

    /// The identity of the regular file at `path` (through symlinks, as
    /// the image is opened).
    pub fn of_file(path: &Path) -> Option<Identity> {
        let metadata = std::fs::metadata(path).ok()?;
        metadata.is_file().then(|| Identity::of(&metadata))
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
struct CachedUnit {
    name: String,
    path: String,
    contents: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
struct Entry {
    file: Identity,
    prefixes: Vec<String>,
    /// The sha256 the file was checked to have (a pin it matched).
    sha256: Option<String>,
    /// The image attach uses: the file itself, or an xz image's pool copy.
    image: PathBuf,
    /// The identity of `image` when it is not the file (the pool copy).
    image_file: Option<Identity>,
    kind: ImageKind,
    units: Vec<CachedUnit>,
    /// The policy derived from the image as read (none for a directory).
    #[serde(default)]
    derived_policy: Option<crate::image::policy::DerivedPolicy>,
    /// The root hash a verity-protected GPT image was checked against.
    #[serde(default)]
    verity: Option<crate::portable::plan::VerityPin>,
    /// Whether `verity` was looked for (a wharf that did not look kept
    /// none for a verity image): a GPT entry without it is read again.
    #[serde(default)]
    verity_read: bool,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ImageCache {
    entries: BTreeMap<PathBuf, Entry>,
    #[serde(skip)]
    changed: bool,
}

impl ImageCache {
    /// The cache of the host under `root` (empty when there is none, or
    /// it cannot be read: it is made again).
    pub fn load(root: &Path) -> ImageCache {
        let path = root.join(CACHE_FILE);
        match std::fs::read(&path) {
            Ok(bytes) => Self::parse(&bytes).unwrap_or_else(|e| {
                tracing::warn!(file = %path.display(), "image cache unreadable, starting a new one: {e}");
                ImageCache::default()
            }),
            Err(_) => ImageCache::default(),
        }
    }

    pub fn parse(bytes: &[u8]) -> Result<ImageCache, serde_json::Error> {
        serde_json::from_slice(bytes)
    }

    /// What the file at `path` (absolute, as located) held when it was
    /// read, if it is still that file and was read for the same request.
    pub fn lookup(&self, path: &Path, prefixes: &[String], pin: Option<&str>) -> Option<Source> {
        let entry = self.entries.get(path)?;
        if entry.prefixes != prefixes {
            return None;
        }
        if let Some(pin) = pin
            && entry.sha256.as_deref() != Some(pin)
        {
            return None;
        }
        if Identity::of_file(path)? != entry.file {
            return None;
        }
        // Kept by a wharf that derived no policies: read once more.
        if entry.kind.is_file() && entry.derived_policy.is_none() {
            return None;
        }
        if entry.kind == ImageKind::Gpt && !entry.verity_read {
            return None;
        }
        if let Some(pooled) = &entry.image_file
            && Identity::of_file(&entry.image).as_ref() != Some(pooled)
        {
            return None;
        }
        Some(Source {
            image: entry.image.clone(),
            kind: entry.kind,
            units: entry
                .units
                .iter()
                .map(|u| UnitFile { name: u.name.clone(), path: u.path.clone(), contents: u.contents.clone() })
                .collect(),
            // Fleet files stack no extensions.
            extensions: Vec::new(),
            image_policy: None,
            derived_policy: entry.derived_policy.clone(),
            derived_extension_policy: None,
            verity: entry.verity.clone(),
        })
    }

    /// Keeps what `source` says of the file at `path`, whose identity was
    /// `before` it was read: only when it is still that file now (else it
    /// changed while being read, and what was read may be of either).
    pub fn remember(
        &mut self,
        path: &Path,
        before: Option<Identity>,
        prefixes: &[String],
        pin: Option<&str>,
        source: &Source,
    ) {
        self.remember_settled(path, before, prefixes, pin, source, SETTLE);
    }

    /// [`ImageCache::remember`], for a file last changed at least `settle` ago.
    fn remember_settled(
        &mut self,
        path: &Path,
        before: Option<Identity>,
        prefixes: &[String],
        pin: Option<&str>,
        source: &Source,
        settle: std::time::Duration,
    ) {
        let Some(before) = before else { return };
        if source.kind == ImageKind::Directory || Identity::of_file(path).as_ref() != Some(&before) {
            return;
        }
        // A file changed within the clock's granularity of the read could
        // change again with the same times: kept only once it has settled.
        let now =
            std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_nanos() as i128);
        if before.ctime_ns.max(before.mtime_ns) > now - settle.as_nanos() as i128 {
            return;
        }
        let image_file = if source.image == path {
            None
        } else {
            // A pool copy that is not there (a check of an xz image not
            // decompressed yet) is not kept.
            match Identity::of_file(&source.image) {
                Some(identity) => Some(identity),
                None => return,
            }
        };
        let entry = Entry {
            file: before,
            prefixes: prefixes.to_vec(),
            sha256: pin.map(str::to_string),
            image: source.image.clone(),
            image_file,
            kind: source.kind,
            units: source
                .units
                .iter()
                .map(|u| CachedUnit { name: u.name.clone(), path: u.path.clone(), contents: u.contents.clone() })
                .collect(),
            derived_policy: source.derived_policy.clone(),
            verity: source.verity.clone(),
            verity_read: true,
        };
        if self.entries.get(path) != Some(&entry) {
            self.entries.insert(path.to_path_buf(), entry);
            self.changed = true;
        }
    }

    /// Drops the entries of files not in `wanted`: the cache holds what
    /// the fleet file lists, no more.
    pub fn retain(&mut self, wanted: &[PathBuf]) {
        let before = self.entries.len();
        self.entries.retain(|path, _| wanted.contains(path));
        self.changed |= self.entries.len() != before;
    }

    /// Writes the cache when it changed (atomically: a crash leaves the
    /// old one or the new one).
    pub fn save(&self, root: &Path) -> std::io::Result<()> {
        if !self.changed {
            return Ok(());
        }
        let path = root.join(CACHE_FILE);
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir)?;
        }
        let bytes = serde_json::to_vec(self).map_err(std::io::Error::other)?;
        crate::fs::write_atomic(&path, &bytes, 0o600)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn scratch(tag: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("wharf-image-cache-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        dir
    }

    fn source(image: &Path) -> Source {
        Source {
            image: image.to_path_buf(),
            kind: ImageKind::Squashfs,
            units: vec![UnitFile {
                name: "foobar.service".into(),
                path: "/usr/lib/systemd/system/foobar.service".into(),
                contents: "[Service]\nExecStart=/x\n".into(),
            }],
            extensions: Vec::new(),
            image_policy: None,
            derived_policy: Some(crate::image::policy::DerivedPolicy::of_file_system("squashfs")),
            derived_extension_policy: None,
            verity: None,
        }
    }

    #[test]
    fn an_entry_holds_while_the_file_is_the_same() {
        let dir = scratch("same");
        let image = dir.join("foobar_1.raw");
        std::fs::write(&image, b"hsqs and more").unwrap();
        let mut cache = ImageCache::default();
        let before = Identity::of_file(&image);
        cache.remember_settled(&image, before, &[], None, &source(&image), std::time::Duration::ZERO);
        let found = cache.lookup(&image, &[], None).unwrap();
        assert_eq!((found.image, found.units.len()), (image.clone(), 1));
        // Another request of the same file is read again.
        assert!(cache.lookup(&image, &["foobar".into()], None).is_none());
        assert!(cache.lookup(&image, &[], Some("ab")).is_none());

        // Through disk and back, with a GPT image's verity pin.
        let mut gpt = source(&image);
        gpt.kind = ImageKind::Gpt;
        gpt.verity = Some(crate::portable::plan::VerityPin { root_hash: "ab".repeat(32), signature: None });
        cache.remember_settled(&image, Identity::of_file(&image), &[], None, &gpt, std::time::Duration::ZERO);
        cache.save(&dir).unwrap();
        let loaded = ImageCache::load(&dir);
        assert_eq!(loaded.lookup(&image, &[], None).unwrap().verity, gpt.verity);
        // A GPT entry of a wharf that did not look for verity is read again.
        let mut old = loaded.clone();
        old.entries.get_mut(&image).unwrap().verity_read = false;
        assert!(old.lookup(&image, &[], None).is_none());

        // Rewritten in place with the same size: its change time moves on.
        std::thread::sleep(std::time::Duration::from_millis(20));
        std::fs::write(&image, b"hsqs and mora").unwrap();
        assert!(loaded.lookup(&image, &[], None).is_none());
        // Replaced by another file.
        std::fs::write(dir.join("other"), b"x").unwrap();
        std::fs::rename(dir.join("other"), &image).unwrap();
        assert!(loaded.lookup(&image, &[], None).is_none());
        // Gone.
        std::fs::remove_file(&image).unwrap();
        assert!(loaded.lookup(&image, &[], None).is_none());
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn a_file_changed_just_now_is_not_kept_yet() {
        let dir = scratch("settle");
        let image = dir.join("foobar_1.raw");
        std::fs::write(&image, b"x").unwrap();
        let mut cache = ImageCache::default();
        cache.remember(&image, Identity::of_file(&image), &[], None, &source(&image));
        assert!(cache.lookup(&image, &[], None).is_none());
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn a_file_changed_while_read_is_not_kept() {
        let dir = scratch("changed");
        let image = dir.join("foobar_1.raw");
        std::fs::write(&image, b"one").unwrap();
        let before = Identity::of_file(&image);
        std::fs::write(dir.join("new"), b"two").unwrap();
        std::fs::rename(dir.join("new"), &image).unwrap();
        let mut cache = ImageCache::default();
        cache.remember_settled(&image, before, &[], None, &source(&image), std::time::Duration::ZERO);
        assert!(cache.lookup(&image, &[], None).is_none());
        assert!(!cache.changed);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn an_xz_entry_needs_its_pool_copy_and_a_pin_its_digest() {
        let dir = scratch("xz");
        let xz = dir.join("foobar_1.raw.xz");
        let pooled = dir.join("pool-foobar_1.raw");
        std::fs::write(&xz, b"xz bytes").unwrap();
        std::fs::write(&pooled, b"raw bytes").unwrap();
        let mut cache = ImageCache::default();
        cache.remember_settled(
            &xz,
            Identity::of_file(&xz),
            &[],
            Some("abc"),
            &source(&pooled),
            std::time::Duration::ZERO,
        );
        assert_eq!(cache.lookup(&xz, &[], Some("abc")).unwrap().image, pooled);
        assert!(cache.lookup(&xz, &[], None).is_some());
        assert!(cache.lookup(&xz, &[], Some("abd")).is_none());
        std::fs::remove_file(&pooled).unwrap();
        assert!(cache.lookup(&xz, &[], Some("abc")).is_none());
        // Not kept when the pool copy is not there (a check).
        let mut cache = ImageCache::default();
        cache.remember_settled(&xz, Identity::of_file(&xz), &[], None, &source(&pooled), std::time::Duration::ZERO);
        assert!(cache.entries.is_empty());
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn directories_and_unwanted_entries_are_not_kept() {
        let dir = scratch("dirs");
        let tree = dir.join("foobar_1");
        std::fs::create_dir(&tree).unwrap();
        let mut cache = ImageCache::default();
        let mut tree_source = source(&tree);
        tree_source.kind = ImageKind::Directory;
        cache.remember_settled(&tree, Identity::of_file(&tree), &[], None, &tree_source, std::time::Duration::ZERO);
        assert!(cache.entries.is_empty());
        let image = dir.join("foobar_2.raw");
        std::fs::write(&image, b"x").unwrap();
        cache.remember_settled(
            &image,
            Identity::of_file(&image),
            &[],
            None,
            &source(&image),
            std::time::Duration::ZERO,
        );
        cache.retain(&[]);
        assert!(cache.lookup(&image, &[], None).is_none());
        assert!(ImageCache::parse(b"not json").is_err());
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
