//! The image search path: where an image given by name is looked for, and what
//! `list` shows. Earlier directories shadow later ones, as in systemd.

use std::collections::{HashMap, HashSet};
use std::ffi::{CStr, CString, OsStr};
use std::os::fd::OwnedFd;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

use rustix::fs::{AtFlags, Dir, Mode, OFlags, Statx, StatxFlags, open, statx};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use super::{Error, ImageKind, ImageName, Result};

/// An ordered set of directories holding images of one sort.
#[derive(Debug, Clone)]
pub struct Pool {
    dirs: Vec<PathBuf>,
    /// Where wharf puts images it creates (decompressed `.raw.xz`, imports).
    home: PathBuf,
    /// What the last [`Pool::list`] of each directory learnt by reading
    /// images, shared by the clones of this pool (a daemon lists the same
    /// pool again and again).
    cache: Arc<Mutex<HashMap<PathBuf, DirCache>>>,
}

/// An image's kind and read-only mark, known from a read of it while its
/// inode was as `key` says, by file name within one directory.
type DirCache = HashMap<CString, (InodeKey, ImageKind, bool)>;

/// An inode changed less than this long before it was read is not cached:
/// a change in the same (coarse) timestamp tick as the read would leave
/// the ctime as it was.
const SETTLED: Duration = Duration::from_secs(2);

/// What identifies one version of an inode's contents and marks. The
/// ctime is what makes it safe to trust: the kernel sets it on every write,
/// `chmod`, `chattr` and `utimes`, and nobody but the clock's owner (root)
/// can set it back, so the owner of an image cannot change it behind the
/// cache by restoring its mtime.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct InodeKey {
    dev: (u32, u32),
    ino: u64,
    mode: u16,
    size: u64,
    mtime: (i64, u32),
    ctime: (i64, u32),
}

impl InodeKey {
    fn of(stat: &Statx) -> InodeKey {
        InodeKey {
            dev: (stat.stx_dev_major, stat.stx_dev_minor),
            ino: stat.stx_ino,
            mode: stat.stx_mode,
            size: stat.stx_size,
            mtime: (stat.stx_mtime.tv_sec, stat.stx_mtime.tv_nsec),
            ctime: (stat.stx_ctime.tv_sec, stat.stx_ctime.tv_nsec),
        }
    }

    /// The key of an open file.
    fn of_open(file: &std::fs::File, path: &Path) -> Result<InodeKey> {
        let stat =
            statx(file, "", AtFlags::EMPTY_PATH, StatxFlags::BASIC_STATS).map_err(|e| Error::io(path)(e.into()))?;
        Ok(InodeKey::of(&stat))
    }

    /// The key of `name` in the directory `dir`, following a symlink as
    /// opening it would (an image may be one).
    fn of_entry(dir: &OwnedFd, name: &CStr) -> Option<InodeKey> {
        statx(dir, name, AtFlags::empty(), StatxFlags::BASIC_STATS).ok().map(|stat| InodeKey::of(&stat))
    }

    /// Whether the inode was last changed at least [`SETTLED`] before `now`.
    fn settled(&self, now: SystemTime) -> bool {
        let now = now.duration_since(SystemTime::UNIX_EPOCH).map_or(0, |d| d.as_secs());
        let changed = u64::try_from(self.ctime.0).unwrap_or(u64::MAX);
        changed.saturating_add(SETTLED.as_secs()) < now
    }
}

/// One image found in a pool.
#[derive(Debug, Clone)]
pub struct PoolEntry {
    pub name: ImageName,
    pub path: PathBuf,
    pub kind: ImageKind,
    pub read_only: bool,
    pub size: u64,
    pub modified_usec: u64,
}

impl Pool {
    /// The portable service search path of portablectl(1).
    pub fn portables() -> Pool {
        Pool::under(Path::new("/"), "portables")
    }

    /// The machine image search path of machinectl(1).
    pub fn machines() -> Pool {
        Pool::under(Path::new("/"), "machines")
    }

    /// The search path for `sort` ("portables" or "machines") below `root`.
    pub fn under(root: &Path, sort: &str) -> Pool {
        let dirs: Vec<PathBuf> = ["etc", "run", "var/lib", "usr/local/lib", "usr/lib"]
            .iter()
            .map(|base| root.join(base).join(sort))
            .collect();
        let home = dirs[2].clone();
        Pool { dirs, home, cache: Arc::default() }
    }

    pub fn dirs(&self) -> &[PathBuf] {
        &self.dirs
    }

    /// The writable directory of the pool (`/var/lib/portables`, ...).
    pub fn home(&self) -> &Path {
        &self.home
    }

    /// Finds the image an argument names. An argument with a `/` is a path
    /// (relative to `cwd`); anything else is a name looked up in the search
    /// path, also with `.raw` and `.raw.xz` appended, and only then, if no
    /// pool has it and a `cwd` is given, as a file in `cwd`.
    pub fn locate(&self, arg: &str, cwd: Option<&Path>) -> Result<PathBuf> {
        if arg.contains('/') {
            // Without `.` components: the path is written into unit files and shown.
            let path: PathBuf = cwd.unwrap_or(Path::new("/")).join(arg).components().collect();
            std::fs::symlink_metadata(&path).map_err(Error::io(&path))?;
            return Ok(path);
        }
        ImageName::new(arg)?;
        let found = self.dirs.iter().find_map(|dir| {
            ["", ".raw", ".raw.xz"]
                .iter()
                .map(|suffix| dir.join(format!("{arg}{suffix}")))
                .find(|candidate| candidate.symlink_metadata().is_ok())
        });
        if let Some(path) = found {
            return Ok(path);
        }
        if let Some(local) = cwd.map(|cwd| cwd.join(arg)).filter(|p| p.symlink_metadata().is_ok()) {
            tracing::debug!(image = arg, "not in the search path, using the file in the working directory");
            return Ok(local);
        }
        Err(Error::NotFound(arg.to_string(), self.describe()))
    }

    /// [`Pool::locate`], and where that finds a link in a directory of the
    /// search path, the image it links to: portabled links images attached
    /// from elsewhere into /etc/portables, and so does wharf, and the
    /// attachment is the image's, under its own path. (Not for removing:
    /// `remove` of a link removes the link.)
    pub fn locate_image(&self, arg: &str, cwd: Option<&Path>) -> Result<PathBuf> {
        let path = self.locate(arg, cwd)?;
        let linked = path.parent().is_some_and(|dir| self.dirs.iter().any(|d| d == dir)) && path.is_symlink();
        if linked {
            return std::fs::canonicalize(&path).map_err(Error::io(&path));
        }
        Ok(path)
    }

    /// What a client sends the daemon for an image argument typed in `cwd`:
    /// the argument itself when it is a name the daemon will find in the
    /// search path, else an absolute path (the daemon's working directory is `/`).
    pub fn argument_for_daemon(&self, arg: &str, cwd: &Path) -> String {
        let in_pool = !arg.contains('/') && self.locate(arg, None).is_ok();
        if in_pool {
            return arg.to_string();
        }
        match self.locate(arg, Some(cwd)) {
            Ok(path) => path.display().to_string(),
            // Let the daemon report the error, with the name as the user typed it.
            Err(_) if !arg.contains('/') => arg.to_string(),
            Err(_) => cwd.join(arg).display().to_string(),
        }
    }

    /// Every image in the pool, first occurrence of each name only, sorted by name.
    /// Entries that are not images (and hidden temporary files) are left out.
    ///
    /// An image whose inode is unchanged since the last list costs one
    /// `stat`: its kind and read-only mark are taken from then (see
    /// [`InodeKey`]); any other is opened and its first bytes read.
    pub fn list(&self) -> Result<Vec<PoolEntry>> {
        self.list_at(SystemTime::now())
    }

    /// [`Pool::list`] as if it were `now` (which decides what is settled).
    fn list_at(&self, now: SystemTime) -> Result<Vec<PoolEntry>> {
        let mut entries: Vec<PoolEntry> = Vec::new();
        let mut seen: HashSet<ImageName> = HashSet::new();
        for dir in &self.dirs {
            // Entries are looked at relative to the directory: no path walk per image.
            let opened = open(dir, OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC, Mode::empty())
                .and_then(|fd| Dir::read_from(&fd).map(|read| (fd, read)));
            let (fd, read) = match opened {
                Ok(opened) => opened,
                Err(rustix::io::Errno::NOENT) => {
                    self.cache.lock().unwrap_or_else(|p| p.into_inner()).remove(dir);
                    continue;
                }
                Err(e) => return Err(Error::io(dir)(e.into())),
            };
            let known = self.cache.lock().unwrap_or_else(|p| p.into_inner()).remove(dir).unwrap_or_default();
            let mut learnt = DirCache::new();
            for dirent in read {
                let dirent = dirent.map_err(|e| Error::io(dir)(e.into()))?;
                let file_name = dirent.file_name();
                let Some(name) = file_name.to_str().ok().and_then(|n| ImageName::new(n).ok()) else {
                    continue;
                };
                if seen.contains(&name) {
                    continue;
                }
                let path = dir.join(OsStr::from_bytes(file_name.to_bytes()));
                let unchanged =
                    known.get(file_name).filter(|(key, ..)| InodeKey::of_entry(&fd, file_name).as_ref() == Some(key));
                let entry = match unchanged {
                    Some(&(key, kind, read_only)) => {
                        learnt.insert(file_name.to_owned(), (key, kind, read_only));
                        Ok(PoolEntry::from_parts(&name, &path, &key, kind, read_only))
                    }
                    None => PoolEntry::read_keyed(&name, &path).map(|(entry, key)| {
                        if key.settled(now) {
                            learnt.insert(file_name.to_owned(), (key, entry.kind, entry.read_only));
                        }
                        entry
                    }),
                };
                match entry {
                    Ok(entry) => {
                        seen.insert(name);
                        entries.push(entry);
                    }
                    Err(e) => tracing::debug!("skipping {}: {e}", path.display()),
                }
            }
            self.cache.lock().unwrap_or_else(|p| p.into_inner()).insert(dir.clone(), learnt);
        }
        entries.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(entries)
    }

    fn describe(&self) -> String {
        let dirs: Vec<String> = self.dirs.iter().map(|d| d.display().to_string()).collect();
        format!("the search path ({})", dirs.join(", "))
    }
}

impl PoolEntry {
    pub fn read(name: ImageName, path: PathBuf) -> Result<PoolEntry> {
        Ok(PoolEntry::read_keyed(&name, &path)?.0)
    }

    /// [`PoolEntry::read`], with the key of the inode read.
    fn read_keyed(name: &ImageName, path: &Path) -> Result<(PoolEntry, InodeKey)> {
        let file = std::fs::File::open(path).map_err(Error::io(path))?;
        // Taken before the read: a change during it moves the ctime past the key.
        let key = InodeKey::of_open(&file, path)?;
        let meta = file.metadata().map_err(Error::io(path))?;
        let kind = ImageKind::detect_with(&file, &meta, path)?;
        let read_only = super::readonly::is_read_only(path, &meta);
        Ok((PoolEntry::from_parts(name, path, &key, kind, read_only), key))
    }

    fn from_parts(name: &ImageName, path: &Path, key: &InodeKey, kind: ImageKind, read_only: bool) -> PoolEntry {
        let (seconds, nanos) = key.mtime;
        let modified_usec = u64::try_from(seconds).unwrap_or(0) * 1_000_000 + u64::from(nanos) / 1_000;
        PoolEntry {
            name: name.clone(),
            kind,
            read_only,
            size: if kind.is_file() { key.size } else { 0 },
            modified_usec,
            path: path.to_path_buf(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn scratch(tag: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("wharf-pool-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        dir
    }

    fn squashfs_file(path: &Path) {
        let mut bytes = b"hsqs".to_vec();
        bytes.resize(8192, 0);
        std::fs::write(path, bytes).unwrap();
    }

    #[test]
    fn locate_prefers_the_search_path_in_order() {
        let root = scratch("locate");
        let pool = Pool::under(&root, "portables");
        for dir in pool.dirs() {
            std::fs::create_dir_all(dir).unwrap();
        }
        squashfs_file(&root.join("usr/lib/portables/foo.raw"));
        squashfs_file(&root.join("etc/portables/foo.raw"));
        squashfs_file(&root.join("var/lib/portables/bar.raw.xz"));
        let cwd = root.join("cwd");
        std::fs::create_dir_all(&cwd).unwrap();
        squashfs_file(&cwd.join("local.raw"));

        let here = Some(cwd.as_path());
        assert_eq!(pool.locate("foo", here).unwrap(), root.join("etc/portables/foo.raw"));
        assert_eq!(pool.locate("foo.raw", here).unwrap(), root.join("etc/portables/foo.raw"));
        assert_eq!(pool.locate("bar", here).unwrap(), root.join("var/lib/portables/bar.raw.xz"));
        assert_eq!(pool.locate("local.raw", here).unwrap(), cwd.join("local.raw"));
        assert!(pool.locate("local.raw", None).is_err());
        assert_eq!(pool.locate("./local.raw", here).unwrap(), cwd.join("./local.raw"));
        let missing = pool.locate("nope", here).unwrap_err().to_string();
        assert!(missing.starts_with("image 'nope' not found in the search path ("), "{missing}");
        assert!(pool.locate("../x", here).is_err());
        // A link in the search path leads to its image.
        std::os::unix::fs::symlink(cwd.join("local.raw"), root.join("run/portables/linked.raw")).unwrap();
        assert_eq!(pool.locate("linked", here).unwrap(), root.join("run/portables/linked.raw"));
        assert_eq!(pool.locate_image("linked", here).unwrap(), std::fs::canonicalize(cwd.join("local.raw")).unwrap());
        std::fs::remove_file(root.join("run/portables/linked.raw")).unwrap();

        assert_eq!(pool.argument_for_daemon("foo", &cwd), "foo");
        assert_eq!(pool.argument_for_daemon("local.raw", &cwd), cwd.join("local.raw").display().to_string());
        assert_eq!(pool.argument_for_daemon("nope", &cwd), "nope");
        assert_eq!(pool.argument_for_daemon("sub/x.raw", &cwd), cwd.join("sub/x.raw").display().to_string());

        let listed: Vec<String> = pool.list().unwrap().iter().map(|e| e.path.display().to_string()).collect();
        assert_eq!(
            listed,
            [
                root.join("var/lib/portables/bar.raw.xz").display().to_string(),
                root.join("etc/portables/foo.raw").display().to_string(),
            ]
        );
        std::fs::remove_dir_all(&root).unwrap();
    }

    /// An unchanged image is not read again; one whose inode changed in
    /// any way (here only its mode, its ctime with it) is.
    #[test]
    fn list_reads_again_only_what_changed() {
        use std::os::unix::fs::{MetadataExt, PermissionsExt};
        let root = scratch("cache");
        let pool = Pool::under(&root, "portables");
        std::fs::create_dir_all(pool.home()).unwrap();
        let image = pool.home().join("foo.raw");
        squashfs_file(&image);
        let later = SystemTime::now() + Duration::from_secs(60);
        let kinds = |pool: &Pool, now| pool.list_at(now).unwrap().iter().map(|e| e.kind).collect::<Vec<_>>();
        assert_eq!(kinds(&pool, later), [ImageKind::Squashfs]);
        // What the cache says is what list reports, while the inode is as it was.
        let poison = |pool: &Pool| {
            let mut cache = pool.cache.lock().unwrap();
            cache.get_mut(pool.home()).unwrap().get_mut(c"foo.raw").unwrap().1 = ImageKind::Erofs;
        };
        poison(&pool);
        assert_eq!(kinds(&pool, later), [ImageKind::Erofs]);
        // A clone shares the cache.
        assert_eq!(kinds(&pool.clone(), later), [ImageKind::Erofs]);
        // Any change to the inode moves its ctime (within a tick or a few).
        let ctime = |p: &Path| {
            let m = std::fs::metadata(p).unwrap();
            (m.ctime(), m.ctime_nsec())
        };
        let before = ctime(&image);
        for mode in (0..10_000).map(|i| if i % 2 == 0 { 0o600 } else { 0o644 }) {
            std::fs::set_permissions(&image, std::fs::Permissions::from_mode(mode)).unwrap();
            if ctime(&image) != before && mode == 0o644 {
                break;
            }
        }
        assert_ne!(ctime(&image), before);
        assert_eq!(kinds(&pool, later), [ImageKind::Squashfs]);
        // What changed just now is never cached: the same tick could hide a change.
        let fresh = Pool::under(&root, "portables");
        assert_eq!(kinds(&fresh, SystemTime::now()), [ImageKind::Squashfs]);
        assert!(fresh.cache.lock().unwrap().get(fresh.home()).unwrap().is_empty());
        std::fs::remove_dir_all(&root).unwrap();
    }
}
