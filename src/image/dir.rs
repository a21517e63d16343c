//! Directory images (and btrfs subvolumes, which are directories too), read
//! through openat2(2) with `RESOLVE_IN_ROOT`: the kernel itself keeps every
//! lookup inside the image, whatever its symlinks say.

use std::io::Read;
use std::os::fd::OwnedFd;
use std::path::Path;

use rustix::fs::{FileType, Mode, OFlags, ResolveFlags, fstat, openat2, readlinkat};

use super::tree::{EntryType, Tree, TreeError};

#[derive(Debug)]
pub struct DirTree {
    root: OwnedFd,
}

const MAX_EAGAIN_RETRIES: usize = 64;
const RESOLVE: ResolveFlags = ResolveFlags::IN_ROOT.union(ResolveFlags::NO_MAGICLINKS);

impl DirTree {
    pub fn open(path: &Path) -> std::io::Result<DirTree> {
        let root = rustix::fs::open(path, OFlags::PATH | OFlags::DIRECTORY | OFlags::CLOEXEC, Mode::empty())?;
        Ok(DirTree { root })
    }

    /// A tree rooted at an already open directory (e.g. one a client passed).
    pub fn from_fd(root: OwnedFd) -> DirTree {
        DirTree { root }
    }

    fn open_at(&self, path: &str, flags: OFlags) -> Result<OwnedFd, TreeError> {
        let flags = flags | OFlags::CLOEXEC | OFlags::NOFOLLOW;
        let mut attempts = 0;
        loop {
            match openat2(&self.root, relative(path), flags, Mode::empty(), RESOLVE) {
                // The kernel answers EAGAIN when a rename anywhere on the
                // system raced with resolving `..`; openat2(2) says to retry.
                Err(rustix::io::Errno::AGAIN) if attempts < MAX_EAGAIN_RETRIES => attempts += 1,
                result => return result.map_err(|e| io_error(path, e)),
            }
        }
    }
}

/// openat2 with `RESOLVE_IN_ROOT` takes paths relative to the root fd.
fn relative(path: &str) -> &str {
    match path.trim_start_matches('/') {
        "" => ".",
        rest => rest,
    }
}

fn io_error(path: &str, error: rustix::io::Errno) -> TreeError {
    TreeError::Io { path: path.to_string(), source: error.into() }
}

fn entry_type(file_type: FileType) -> EntryType {
    match file_type {
        FileType::RegularFile => EntryType::File,
        FileType::Directory => EntryType::Dir,
        FileType::Symlink => EntryType::Symlink,
        _ => EntryType::Other,
    }
}

impl Tree for DirTree {
    fn entry_type(&mut self, path: &str) -> Result<Option<EntryType>, TreeError> {
        match self.open_at(path, OFlags::PATH) {
            Ok(fd) => {
                let stat = fstat(&fd).map_err(|e| io_error(path, e))?;
                Ok(Some(entry_type(FileType::from_raw_mode(stat.st_mode))))
            }
            Err(TreeError::Io { source, .. })
                if matches!(source.raw_os_error(), Some(nix::libc::ENOENT) | Some(nix::libc::ENOTDIR)) =>
            {
                Ok(None)
            }
            Err(e) => Err(e),
        }
    }

    fn read_link(&mut self, path: &str) -> Result<String, TreeError> {
        let fd = self.open_at(path, OFlags::PATH)?;
        let target = readlinkat(&fd, "", Vec::new()).map_err(|e| io_error(path, e))?;
        target
            .into_string()
            .map_err(|_| TreeError::Corrupt { path: path.to_string(), reason: "symlink target is not UTF-8".into() })
    }

    fn read_file(&mut self, path: &str, limit: u64) -> Result<Vec<u8>, TreeError> {
        // O_NONBLOCK: a fifo planted in the image must not hang the reader.
        let fd = self.open_at(path, OFlags::RDONLY | OFlags::NOCTTY | OFlags::NONBLOCK)?;
        let stat = fstat(&fd).map_err(|e| io_error(path, e))?;
        if FileType::from_raw_mode(stat.st_mode) != FileType::RegularFile {
            return Err(TreeError::NotAFile(path.to_string()));
        }
        let mut data = Vec::new();
        std::fs::File::from(fd)
            .take(limit + 1)
            .read_to_end(&mut data)
            .map_err(|source| TreeError::Io { path: path.to_string(), source })?;
        if data.len() as u64 > limit {
            return Err(TreeError::TooLarge { path: path.to_string(), limit });
        }
        Ok(data)
    }

    fn read_dir(&mut self, path: &str) -> Result<Vec<(String, EntryType)>, TreeError> {
        let fd = self.open_at(path, OFlags::RDONLY | OFlags::DIRECTORY)?;
        let dir = rustix::fs::Dir::read_from(&fd).map_err(|e| io_error(path, e))?;
        let mut entries = Vec::new();
        for entry in dir {
            let entry = entry.map_err(|e| io_error(path, e))?;
            let Ok(name) = entry.file_name().to_str() else {
                continue;
            };
            if name == "." || name == ".." {
                continue;
            }
            let kind = match entry.file_type() {
                FileType::Unknown => {
                    let child = if path == "/" { format!("/{name}") } else { format!("{path}/{name}") };
                    match self.entry_type(&child)? {
                        Some(kind) => kind,
                        None => continue,
                    }
                }
                known => entry_type(known),
            };
            entries.push((name.to_string(), kind));
        }
        Ok(entries)
    }

    fn access(&self) -> &'static str {
        "directory, openat2 with RESOLVE_IN_ROOT"
    }
}

#[cfg(test)]
mod tests {
    use super::super::tree::{read_file, resolve};
    use super::*;

    #[test]
    fn host_files_stay_out_of_reach() {
        let root = std::env::temp_dir().join(format!("wharf-dirtree-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&root);
        std::fs::create_dir_all(root.join("usr/lib")).unwrap();
        std::fs::create_dir_all(root.join("etc")).unwrap();
        std::fs::write(root.join("usr/lib/os-release"), "ID=inside\n").unwrap();
        std::os::unix::fs::symlink("../usr/lib/os-release", root.join("etc/os-release")).unwrap();
        // Absolute and climbing links to a host file that the image does not have.
        std::os::unix::fs::symlink("/etc/hostname", root.join("etc/abs")).unwrap();
        std::os::unix::fs::symlink("../../../../../../etc/hostname", root.join("etc/climb")).unwrap();

        let mut tree = DirTree::open(&root).unwrap();
        assert_eq!(read_file(&mut tree, "/etc/os-release", 100).unwrap(), Some(b"ID=inside\n".to_vec()));
        assert_eq!(resolve(&mut tree, "/etc/abs").unwrap(), None);
        assert_eq!(resolve(&mut tree, "/etc/climb").unwrap(), None);
        // Even a primitive given a climbing path stays inside.
        assert_eq!(tree.entry_type("/../../../etc/hostname").unwrap(), None);
        let mut names: Vec<String> = tree.read_dir("/etc").unwrap().into_iter().map(|(n, _)| n).collect();
        names.sort();
        assert_eq!(names, ["abs", "climb", "os-release"]);
        std::fs::remove_dir_all(&root).unwrap();
    }
}
