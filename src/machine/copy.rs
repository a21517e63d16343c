//! Copying an OS tree as it is: ownership, modes, timestamps, extended
//! attributes (file capabilities live there), symlinks, device nodes and
//! hard links. Used by `clone` and `import-fs`. File contents are reflinked
//! where the file system can, and copied in the kernel otherwise.

use std::collections::HashMap;
use std::fs::{self, File};
use std::io;
use std::os::unix::fs::{FileTypeExt, MetadataExt, PermissionsExt, lchown, symlink};
use std::path::Path;

use rustix::fs::{AtFlags, CWD, FileType, Mode, Timespec, Timestamps, ioctl_ficlone, mknodat, utimensat};

/// Copies `from` (a directory) to `to`, which must not exist. `progress`
/// is told the number of content bytes copied so far.
pub fn copy_tree(from: &Path, to: &Path, progress: &mut dyn FnMut(u64)) -> io::Result<()> {
    copy_tree_with(from, to, &CopyOptions::AS_IS, progress)
}

/// What a copy changes on its way: for copies between a machine and the
/// host (`machine copy-to`, `copy-from`).
pub struct CopyOptions<'a> {
    /// The UID (or GID) a copy gets for the original's.
    pub owner: &'a dyn Fn(u32) -> u32,
    /// Drop set-user-ID and set-group-ID bits (and file capabilities).
    pub strip_set_id: bool,
    /// Copy device nodes; otherwise one is an error.
    pub devices: bool,
}

impl std::fmt::Debug for CopyOptions<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CopyOptions").field("strip_set_id", &self.strip_set_id).field("devices", &self.devices).finish()
    }
}

impl CopyOptions<'static> {
    /// Everything as it is.
    pub const AS_IS: CopyOptions<'static> = CopyOptions { owner: &|id| id, strip_set_id: false, devices: true };
}

/// [`copy_tree`], with `options`; `from` may also be a single file or symlink.
pub fn copy_tree_with(
    from: &Path,
    to: &Path,
    options: &CopyOptions<'_>,
    progress: &mut dyn FnMut(u64),
) -> io::Result<()> {
    let mut state = Copier { links: HashMap::new(), copied: 0, progress, options };
    state.copy(from, to)
}

struct Copier<'a, 'o> {
    /// Files with several links already copied, by (device, inode).
    links: HashMap<(u64, u64), std::path::PathBuf>,
    copied: u64,
    progress: &'a mut dyn FnMut(u64),
    options: &'a CopyOptions<'o>,
}

impl Copier<'_, '_> {
    fn copy(&mut self, from: &Path, to: &Path) -> io::Result<()> {
        let meta = fs::symlink_metadata(from)?;
        let kind = meta.file_type();
        if kind.is_dir() {
            fs::create_dir(to)?;
            let mut entries: Vec<_> = fs::read_dir(from)?.collect::<Result<_, _>>()?;
            entries.sort_by_key(|e| e.file_name());
            for entry in entries {
                self.copy(&entry.path(), &to.join(entry.file_name()))?;
            }
        } else if kind.is_file() {
            if meta.nlink() > 1 {
                if let Some(first) = self.links.get(&(meta.dev(), meta.ino())) {
                    return fs::hard_link(first, to);
                }
                self.links.insert((meta.dev(), meta.ino()), to.to_path_buf());
            }
            let source = File::open(from)?;
            let mut target = fs::OpenOptions::new().write(true).create_new(true).open(to)?;
            if ioctl_ficlone(&target, &source).is_err() {
                io::copy(&mut &source, &mut target)?;
            }
            self.copied += meta.len();
            (self.progress)(self.copied);
        } else if kind.is_symlink() {
            symlink(fs::read_link(from)?, to)?;
        } else if (kind.is_char_device() || kind.is_block_device()) && !self.options.devices {
            return Err(io::Error::other(format!("{} is a device node, which is not copied", from.display())));
        } else if kind.is_char_device() || kind.is_block_device() || kind.is_fifo() {
            let file_type = if kind.is_char_device() {
                FileType::CharacterDevice
            } else if kind.is_block_device() {
                FileType::BlockDevice
            } else {
                FileType::Fifo
            };
            mknodat(CWD, to, file_type, Mode::from_raw_mode(meta.mode() & 0o7777), meta.rdev())?;
        } else {
            // Sockets belong to running programs; a copy of one means nothing.
            return Ok(());
        }
        self.copy_metadata(from, to, &meta)
    }

    fn copy_metadata(&mut self, from: &Path, to: &Path, meta: &fs::Metadata) -> io::Result<()> {
        lchown(to, Some((self.options.owner)(meta.uid())), Some((self.options.owner)(meta.gid())))?;
        for name in xattr::list(from)? {
            if self.options.strip_set_id && name == "security.capability" {
                continue;
            }
            if let Some(value) = xattr::get(from, &name)? {
                xattr::set(to, &name, &value)?;
            }
        }
        if !meta.file_type().is_symlink() {
            // After chown, which clears set-user-ID bits.
            let mask = if self.options.strip_set_id { 0o1777 } else { 0o7777 };
            fs::set_permissions(to, fs::Permissions::from_mode(meta.mode() & mask))?;
        }
        let times = Timestamps {
            last_access: Timespec { tv_sec: meta.atime(), tv_nsec: meta.atime_nsec() as _ },
            last_modification: Timespec { tv_sec: meta.mtime(), tv_nsec: meta.mtime_nsec() as _ },
        };
        utimensat(CWD, to, &times, AtFlags::SYMLINK_NOFOLLOW)?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn copies_links_modes_and_times() {
        let root = std::env::temp_dir().join(format!("wharf-copy-{}", std::process::id()));
        let _ = fs::remove_dir_all(&root);
        let from = root.join("from");
        fs::create_dir_all(from.join("usr/bin")).unwrap();
        fs::write(from.join("usr/bin/tool"), b"#!/bin/sh\n").unwrap();
        fs::set_permissions(from.join("usr/bin/tool"), fs::Permissions::from_mode(0o4755)).unwrap();
        fs::hard_link(from.join("usr/bin/tool"), from.join("usr/bin/alias")).unwrap();
        symlink("usr/bin", from.join("bin")).unwrap();
        rustix::fs::mknodat(CWD, from.join("fifo"), FileType::Fifo, Mode::from_raw_mode(0o600), 0).unwrap();
        let old = Timestamps {
            last_access: Timespec { tv_sec: 1000, tv_nsec: 0 },
            last_modification: Timespec { tv_sec: 2000, tv_nsec: 5 },
        };
        utimensat(CWD, from.join("usr/bin/tool"), &old, AtFlags::empty()).unwrap();

        let mut seen = 0;
        copy_tree(&from, &root.join("to"), &mut |n| seen = n).unwrap();
        let to = root.join("to");
        let tool = fs::metadata(to.join("usr/bin/tool")).unwrap();
        assert_eq!(tool.mode() & 0o7777, 0o4755);
        assert_eq!(tool.mtime(), 2000);
        assert_eq!(tool.ino(), fs::metadata(to.join("usr/bin/alias")).unwrap().ino(), "hard link kept");
        assert_eq!(fs::read_link(to.join("bin")).unwrap(), Path::new("usr/bin"));
        assert!(fs::symlink_metadata(to.join("fifo")).unwrap().file_type().is_fifo());
        assert_eq!(seen, 10);
        fs::remove_dir_all(&root).unwrap();
    }
}
