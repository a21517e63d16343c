//! The image search path: where an image given by name is looked for, and what
//! `list` shows. Earlier directories shadow later ones, as in systemd.

use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use super::{Error, ImageKind, ImageName, Result};

/// An ordered set of directories holding images of one sort.
#[derive(Debug, Clone)]
pub struct Pool {
    dirs: Vec<PathBuf>,
    /// Where wharf puts images it creates (decompressed `.raw.xz`, imports).
    home: PathBuf,
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
        Pool { dirs, home }
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
            let path = cwd.unwrap_or(Path::new("/")).join(arg);
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
    pub fn list(&self) -> Result<Vec<PoolEntry>> {
        let mut entries: Vec<PoolEntry> = Vec::new();
        for dir in &self.dirs {
            let read = match std::fs::read_dir(dir) {
                Ok(read) => read,
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
                Err(e) => return Err(Error::io(dir)(e)),
            };
            for dirent in read {
                let dirent = dirent.map_err(Error::io(dir))?;
                let Some(file_name) = dirent.file_name().to_str().map(str::to_owned) else {
                    continue;
                };
                let Ok(name) = ImageName::new(&file_name) else {
                    continue;
                };
                if entries.iter().any(|e| e.name == name) {
                    continue;
                }
                match PoolEntry::read(name, dirent.path()) {
                    Ok(entry) => entries.push(entry),
                    Err(e) => tracing::debug!("skipping {}: {e}", dirent.path().display()),
                }
            }
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
        let file = std::fs::File::open(&path).map_err(Error::io(&path))?;
        let meta = file.metadata().map_err(Error::io(&path))?;
        let kind = ImageKind::detect_with(&file, &meta, &path)?;
        let modified_usec = u64::try_from(meta.mtime()).unwrap_or(0) * 1_000_000
            + u64::try_from(meta.mtime_nsec()).unwrap_or(0) / 1_000;
        Ok(PoolEntry {
            name,
            kind,
            read_only: super::readonly::is_read_only(&path, &meta),
            size: if kind.is_file() { meta.len() } else { 0 },
            modified_usec,
            path,
        })
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
}
