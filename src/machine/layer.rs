//! Applying an OCI image's layers, bottom first, to a tree: each layer's
//! tar put over what the layers below made, with its whiteouts removing
//! what they name (see [`crate::pull::oci::layer`]).
//!
//! Unlike `import-tar`, where the tar crate places entries and refuses
//! symlinked parents that point out of the tree, a layer is applied the
//! way a container sees it: every path is resolved by the kernel inside
//! the root (RESOLVE_IN_ROOT), so a symlink `var/run -> /run` of a lower
//! layer leads to the image's `/run`, and no symlink, absolute or full of
//! `..`, leads out of it. Entries are created below their parent's
//! descriptor with O_EXCL|O_NOFOLLOW; owners, modes (set-ID bits
//! included), times and the extended attributes `import-tar` keeps
//! ([`super::archive::IMPORTED_XATTRS`]) are set on the entry's own
//! descriptor. Device nodes are made as `import-tar` makes them.

use std::collections::HashSet;
use std::ffi::{OsStr, OsString};
use std::fs::File;
use std::io::{self, Read};
use std::os::fd::AsRawFd;
use std::path::Path;

use rustix::fd::OwnedFd;
use rustix::fs::{AtFlags, FileType, Mode, OFlags, ResolveFlags, Timespec, Timestamps};

use super::archive;
use crate::pull::oci::layer::{Action, classify, lower_only};

/// The content all layers of one pull may unpack to, together.
pub const MAX_TREE_BYTES: u64 = 256 << 30;
/// And the entries they may hold.
pub const MAX_ENTRIES: u64 = 4_000_000;

/// What the layers still to be applied may add.
#[derive(Debug, Clone)]
pub struct Budget {
    pub bytes: u64,
    pub entries: u64,
}

impl Default for Budget {
    fn default() -> Budget {
        Budget { bytes: MAX_TREE_BYTES, entries: MAX_ENTRIES }
    }
}

fn invalid(message: String) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, message)
}

fn shown(parts: &[OsString]) -> String {
    let path: Vec<String> = parts.iter().map(|p| p.to_string_lossy().into_owned()).collect();
    path.join("/").chars().flat_map(char::escape_debug).take(200).collect()
}

/// Owner, mode and time of an entry, from its header.
#[derive(Debug, Clone, Copy)]
struct Meta {
    uid: u32,
    gid: u32,
    mode: u32,
    mtime: i64,
}

impl Meta {
    fn of(header: &tar::Header) -> io::Result<Meta> {
        let id = |value: u64| u32::try_from(value).map_err(|_| invalid(format!("an owner {value} out of range")));
        Ok(Meta {
            uid: id(header.uid()?)?,
            gid: id(header.gid()?)?,
            mode: header.mode()? & 0o7777,
            mtime: i64::try_from(header.mtime()?).unwrap_or(0),
        })
    }

    /// Owner first (chown clears set-ID bits and capabilities), then the
    /// mode, the attributes, the time.
    fn apply(&self, fd: &OwnedFd, xattrs: &[(OsString, Vec<u8>)]) -> io::Result<()> {
        rustix::fs::fchown(fd, Some(rustix::fs::Uid::from_raw(self.uid)), Some(rustix::fs::Gid::from_raw(self.gid)))?;
        rustix::fs::fchmod(fd, Mode::from_raw_mode(self.mode))?;
        let at = format!("/proc/self/fd/{}", fd.as_raw_fd());
        for (name, value) in xattrs {
            xattr::set_deref(&at, name, value)?;
        }
        let time = Timespec { tv_sec: self.mtime, tv_nsec: 0 };
        rustix::fs::futimens(fd, &Timestamps { last_access: time, last_modification: time })?;
        Ok(())
    }
}

/// Applies one layer (an uncompressed tar stream) to the tree at `root`.
pub fn apply_layer(mut reader: impl Read, root: &Path, budget: &mut Budget) -> io::Result<()> {
    let mut first = [0u8; 512];
    let filled = archive::read_up_to(&mut reader, &mut first)?;
    if filled == 0 {
        return Ok(());
    }
    if filled < first.len() || !archive::is_header(&first) {
        return Err(invalid("the layer is not a tar archive".into()));
    }
    let reader = io::Cursor::new(first.to_vec()).chain(reader);
    let mut tar = tar::Archive::new(reader);
    let root_fd = rustix::fs::open(root, OFlags::DIRECTORY | OFlags::CLOEXEC, Mode::empty())?;
    // What this layer wrote: its whiteouts do not remove it.
    let mut own: HashSet<Vec<OsString>> = HashSet::new();
    let mut directories = Vec::new();
    for entry in tar.entries()? {
        let mut entry = entry?;
        budget.entries =
            budget.entries.checked_sub(1).ok_or_else(|| invalid(format!("more than {MAX_ENTRIES} entries")))?;
        let size = entry.header().entry_size()?.max(entry.header().size()?);
        budget.bytes = budget
            .bytes
            .checked_sub(size)
            .ok_or_else(|| invalid(format!("more than {MAX_TREE_BYTES} bytes unpacked")))?;
        let path = entry.path()?.into_owned();
        let kind = entry.header().entry_type();
        if kind.is_pax_global_extensions() {
            continue;
        }
        match classify(&path).map_err(|e| invalid(e.to_string()))? {
            Action::Skip => {}
            Action::Whiteout(parts) => {
                if lower_only(&parts, &own) {
                    remove(&root_fd, &parts)?;
                }
            }
            Action::Opaque(parts) => empty(&root_fd, &parts, &own)?,
            Action::Entry(parts) => {
                let xattrs = archive::entry_xattrs(&mut entry)?;
                let meta = Meta::of(entry.header())?;
                let placed = place(&root_fd, &parts, &mut entry, meta, &xattrs);
                placed.map_err(|e| io::Error::new(e.kind(), format!("{}: {e}", shown(&parts))))?;
                if kind.is_dir() {
                    directories.push((parts.clone(), meta, xattrs));
                }
                own.insert(parts);
            }
        }
    }
    // Directories last, deepest first: a read-only one still took its
    // entries, and their creation did not change its time.
    directories.sort_by(|a, b| b.0.cmp(&a.0));
    for (parts, meta, xattrs) in directories {
        match open_in_root(&root_fd, &parts, OFlags::DIRECTORY | OFlags::NOFOLLOW) {
            Ok(fd) => meta.apply(&fd, &xattrs)?,
            // Replaced by a later entry of the layer.
            Err(e) if e.raw_os_error() == Some(rustix::io::Errno::NOTDIR.raw_os_error()) => {}
            Err(e) if e.raw_os_error() == Some(rustix::io::Errno::LOOP.raw_os_error()) => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

/// Puts one entry at `parts`, replacing what lower layers had there.
fn place<R: Read>(
    root: &OwnedFd,
    parts: &[OsString],
    entry: &mut tar::Entry<'_, R>,
    meta: Meta,
    xattrs: &[(OsString, Vec<u8>)],
) -> io::Result<()> {
    let kind = entry.header().entry_type();
    if kind.is_dir() {
        if let Some((name, dir_parts)) = parts.split_last() {
            let dir = archive::open_in_root_creating(root, dir_parts)?;
            match stat_at(&dir, name)? {
                Some(FileType::Directory) => {}
                Some(_) => {
                    clear(&dir, name)?;
                    rustix::fs::mkdirat(&dir, name.as_os_str(), Mode::from_raw_mode(0o755))?;
                }
                None => rustix::fs::mkdirat(&dir, name.as_os_str(), Mode::from_raw_mode(0o755))?,
            }
        }
        return Ok(());
    }
    let Some((name, dir_parts)) = parts.split_last() else {
        return Err(invalid("the root of the image is not a directory".into()));
    };
    let dir = archive::open_in_root_creating(root, dir_parts)?;
    clear(&dir, name)?;
    if kind.is_file() || kind == tar::EntryType::Continuous || kind.is_gnu_sparse() {
        let fd = rustix::fs::openat(
            &dir,
            name.as_os_str(),
            OFlags::CREATE | OFlags::EXCL | OFlags::WRONLY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
            Mode::from_raw_mode(0o600),
        )?;
        let mut file = File::from(fd);
        io::copy(entry, &mut file)?;
        meta.apply(&OwnedFd::from(file), xattrs)
    } else if kind.is_symlink() {
        let target = entry.link_name()?.ok_or_else(|| invalid("a symlink to nothing".into()))?.into_owned();
        rustix::fs::symlinkat(target.as_os_str(), &dir, name.as_os_str())?;
        rustix::fs::chownat(
            &dir,
            name.as_os_str(),
            Some(rustix::fs::Uid::from_raw(meta.uid)),
            Some(rustix::fs::Gid::from_raw(meta.gid)),
            AtFlags::SYMLINK_NOFOLLOW,
        )?;
        let time = Timespec { tv_sec: meta.mtime, tv_nsec: 0 };
        rustix::fs::utimensat(
            &dir,
            name.as_os_str(),
            &Timestamps { last_access: time, last_modification: time },
            AtFlags::SYMLINK_NOFOLLOW,
        )?;
        Ok(())
    } else if kind.is_hard_link() {
        let target = entry.link_name()?.ok_or_else(|| invalid("a hard link to nothing".into()))?.into_owned();
        let Ok(Action::Entry(source)) = classify(&target) else {
            return Err(invalid(format!("a hard link to '{}'", target.display())));
        };
        let Some((source_name, source_dir)) = source.split_last() else {
            return Err(invalid("a hard link to the root".into()));
        };
        let source_dir = open_in_root(root, source_dir, OFlags::DIRECTORY)?;
        rustix::fs::linkat(&source_dir, source_name.as_os_str(), &dir, name.as_os_str(), AtFlags::empty())?;
        Ok(())
    } else if kind.is_character_special() || kind.is_block_special() || kind.is_fifo() {
        archive::make_node(root, entry)
    } else {
        tracing::debug!(path = %shown(parts), "a layer entry of type {kind:?} left out");
        Ok(())
    }
}

/// Opens `parts` below `root`, resolved by the kernel inside it.
fn open_in_root(root: &OwnedFd, parts: &[OsString], flags: OFlags) -> io::Result<OwnedFd> {
    let path: std::path::PathBuf = if parts.is_empty() { ".".into() } else { parts.iter().collect() };
    Ok(rustix::fs::openat2(
        root,
        &path,
        flags | OFlags::CLOEXEC,
        Mode::empty(),
        ResolveFlags::IN_ROOT | ResolveFlags::NO_MAGICLINKS,
    )?)
}

/// The type of `name` in `dir` (not following a symlink), if it exists.
fn stat_at(dir: &OwnedFd, name: &OsStr) -> io::Result<Option<FileType>> {
    match rustix::fs::statat(dir, name, AtFlags::SYMLINK_NOFOLLOW) {
        Ok(stat) => Ok(Some(FileType::from_raw_mode(stat.st_mode))),
        Err(rustix::io::Errno::NOENT) => Ok(None),
        Err(e) => Err(e.into()),
    }
}

/// Removes `name` from `dir`, a whole tree if it is a directory (never
/// following a symlink: std's removal opens each level O_NOFOLLOW).
fn clear(dir: &OwnedFd, name: &OsStr) -> io::Result<()> {
    match stat_at(dir, name)? {
        None => Ok(()),
        Some(FileType::Directory) => {
            std::fs::remove_dir_all(Path::new(&format!("/proc/self/fd/{}", dir.as_raw_fd())).join(name))
        }
        Some(_) => Ok(rustix::fs::unlinkat(dir, name, AtFlags::empty())?),
    }
}

/// A whiteout: what lower layers have at `parts` goes.
fn remove(root: &OwnedFd, parts: &[OsString]) -> io::Result<()> {
    let Some((name, dir_parts)) = parts.split_last() else { return Ok(()) };
    match open_in_root(root, dir_parts, OFlags::DIRECTORY) {
        Ok(dir) => clear(&dir, name),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(e) if e.raw_os_error() == Some(rustix::io::Errno::NOTDIR.raw_os_error()) => Ok(()),
        Err(e) => Err(e),
    }
}

/// An opaque directory: what lower layers put in it goes.
fn empty(root: &OwnedFd, parts: &[OsString], own: &HashSet<Vec<OsString>>) -> io::Result<()> {
    let dir = match open_in_root(root, parts, OFlags::DIRECTORY | OFlags::NOFOLLOW) {
        Ok(dir) => dir,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(e),
    };
    let mut names = Vec::new();
    for entry in rustix::fs::Dir::read_from(&dir)? {
        let entry = entry?;
        let name = <OsStr as std::os::unix::ffi::OsStrExt>::from_bytes(entry.file_name().to_bytes());
        if name != "." && name != ".." {
            names.push(name.to_owned());
        }
    }
    for name in names {
        let mut child = parts.to_vec();
        child.push(name.clone());
        if lower_only(&child, own) {
            clear(&dir, &name)?;
        }
    }
    Ok(())
}

fn parts_of(path: &str) -> Vec<OsString> {
    path.split('/').filter(|p| !p.is_empty()).map(OsString::from).collect()
}

/// Writes a file of wharf's own into the tree (root's, mode 0644),
/// replacing what is there; its parents are resolved inside the root, so
/// a symlinked `usr/lib/systemd` of a hostile image cannot send it out.
pub fn write_file(root: &Path, path: &str, data: &[u8]) -> io::Result<()> {
    let root_fd = rustix::fs::open(root, OFlags::DIRECTORY | OFlags::CLOEXEC, Mode::empty())?;
    let parts = parts_of(path);
    let Some((name, dir_parts)) = parts.split_last() else { return Err(invalid("no file name".into())) };
    let dir = archive::open_in_root_creating(&root_fd, dir_parts)?;
    clear(&dir, name)?;
    let fd = rustix::fs::openat(
        &dir,
        name.as_os_str(),
        OFlags::CREATE | OFlags::EXCL | OFlags::WRONLY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
        Mode::from_raw_mode(0o644),
    )?;
    let mut file = File::from(fd);
    io::Write::write_all(&mut file, data)?;
    rustix::fs::fchown(&file, Some(rustix::fs::Uid::ROOT), Some(rustix::fs::Gid::ROOT))?;
    rustix::fs::fchmod(&file, Mode::from_raw_mode(0o644))?;
    Ok(())
}

/// A text file of the tree (its symlinks followed inside it), if there is
/// one of at most 1 MiB.
pub fn read_file(root: &Path, path: &str) -> Option<String> {
    let root_fd = rustix::fs::open(root, OFlags::DIRECTORY | OFlags::CLOEXEC, Mode::empty()).ok()?;
    let fd = open_in_root(&root_fd, &parts_of(path), OFlags::RDONLY).ok()?;
    let file = File::from(fd);
    if !file.metadata().ok()?.is_file() {
        return None;
    }
    let mut text = String::new();
    file.take(1 << 20).read_to_string(&mut text).ok()?;
    Some(text)
}

/// Whether the tree has a unit file of `prefix` where portable services
/// look for them.
pub fn has_units(root: &Path, prefix: &str) -> bool {
    let Ok(root_fd) = rustix::fs::open(root, OFlags::DIRECTORY | OFlags::CLOEXEC, Mode::empty()) else { return false };
    ["etc/systemd/system", "usr/lib/systemd/system", "lib/systemd/system"].iter().any(|dir| {
        let Ok(fd) = open_in_root(&root_fd, &parts_of(dir), OFlags::DIRECTORY) else { return false };
        let Ok(entries) = rustix::fs::Dir::read_from(&fd) else { return false };
        entries.flatten().any(|entry| {
            let name = entry.file_name().to_string_lossy().into_owned();
            let unit = [".service", ".socket", ".timer", ".path", ".target"].iter().any(|s| name.ends_with(s));
            unit && crate::image::name::unit_matches_prefix(&name, prefix)
        })
    })
}

/// Makes empty files (root's, 0644) at `paths` where the tree has
/// nothing: the mount points of the files a profile binds in
/// (`/etc/machine-id`, `/etc/resolv.conf`), which a read-only image
/// cannot get later. A symlink there is left as it is.
pub fn ensure_files(root: &Path, paths: &[&str]) -> io::Result<()> {
    let root_fd = rustix::fs::open(root, OFlags::DIRECTORY | OFlags::CLOEXEC, Mode::empty())?;
    for path in paths {
        let parts = parts_of(path);
        let Some((name, dir_parts)) = parts.split_last() else { continue };
        let dir = archive::open_in_root_creating(&root_fd, dir_parts)?;
        if stat_at(&dir, name)?.is_none() {
            write_file(root, path, b"")?;
        }
    }
    Ok(())
}

/// Makes the directories `paths` where the tree lacks them (`tmp` and
/// `var/tmp` sticky and world-writable, as they are).
pub fn ensure_dirs(root: &Path, paths: &[&str]) -> io::Result<()> {
    let root_fd = rustix::fs::open(root, OFlags::DIRECTORY | OFlags::CLOEXEC, Mode::empty())?;
    for path in paths {
        let parts = parts_of(path);
        let Some((name, dir_parts)) = parts.split_last() else { continue };
        let dir = archive::open_in_root_creating(&root_fd, dir_parts)?;
        if stat_at(&dir, name)?.is_none() {
            let mode = if path.ends_with("tmp") { 0o1777 } else { 0o755 };
            rustix::fs::mkdirat(&dir, name.as_os_str(), Mode::from_raw_mode(mode))?;
            rustix::fs::chmodat(&dir, name.as_os_str(), Mode::from_raw_mode(mode), AtFlags::empty())?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn layer(build: impl FnOnce(&mut tar::Builder<Vec<u8>>)) -> Vec<u8> {
        let mut builder = tar::Builder::new(Vec::new());
        build(&mut builder);
        builder.into_inner().unwrap()
    }

    fn file(builder: &mut tar::Builder<Vec<u8>>, path: &str, data: &[u8]) {
        let mut header = tar::Header::new_gnu();
        header.set_size(data.len() as u64);
        header.set_mode(0o644);
        header.set_entry_type(tar::EntryType::Regular);
        header.set_uid(nix::unistd::getuid().as_raw().into());
        header.set_gid(nix::unistd::getgid().as_raw().into());
        builder.append_data(&mut header, path, data).unwrap();
    }

    fn entry(builder: &mut tar::Builder<Vec<u8>>, path: &str, kind: tar::EntryType, link: Option<&str>) {
        let mut header = tar::Header::new_gnu();
        header.set_size(0);
        header.set_mode(if kind.is_dir() { 0o755 } else { 0o777 });
        header.set_entry_type(kind);
        header.set_uid(nix::unistd::getuid().as_raw().into());
        header.set_gid(nix::unistd::getgid().as_raw().into());
        match link {
            Some(target) => builder.append_link(&mut header, path, target).unwrap(),
            None => builder.append_data(&mut header, path, &[][..]).unwrap(),
        }
    }

    /// A raw header with any name, which tar's builder would refuse.
    fn raw_file(builder: &mut tar::Builder<Vec<u8>>, path: &[u8], data: &[u8]) {
        let mut header = tar::Header::new_old();
        header.as_old_mut().name[..path.len()].copy_from_slice(path);
        header.set_size(data.len() as u64);
        header.set_mode(0o644);
        header.set_uid(nix::unistd::getuid().as_raw().into());
        header.set_gid(nix::unistd::getgid().as_raw().into());
        header.set_cksum();
        builder.append(&header, data).unwrap();
    }

    fn listing(root: &Path) -> Vec<String> {
        let mut all = Vec::new();
        fn walk(dir: &Path, prefix: &str, all: &mut Vec<String>) {
            let mut entries: Vec<_> = std::fs::read_dir(dir).unwrap().flatten().collect();
            entries.sort_by_key(|e| e.file_name());
            for e in entries {
                let name = format!("{prefix}{}", e.file_name().to_string_lossy());
                let kind = e.file_type().unwrap();
                if kind.is_dir() {
                    all.push(format!("{name}/"));
                    walk(&e.path(), &format!("{name}/"), all);
                } else if kind.is_symlink() {
                    all.push(format!("{name} -> {}", std::fs::read_link(e.path()).unwrap().display()));
                } else {
                    all.push(name);
                }
            }
        }
        walk(root, "", &mut all);
        all
    }

    fn scratch(name: &str) -> std::path::PathBuf {
        let dir = std::env::temp_dir().join(format!("wharf-layer-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(dir.join("root")).unwrap();
        dir
    }

    #[test]
    fn layers_stack_with_whiteouts_and_opaque_directories() {
        let dir = scratch("stack");
        let root = dir.join("root");
        let mut budget = Budget::default();
        let lower = layer(|b| {
            entry(b, "etc", tar::EntryType::Directory, None);
            file(b, "etc/motd", b"hello");
            file(b, "etc/keep", b"keep");
            entry(b, "cache", tar::EntryType::Directory, None);
            file(b, "cache/old", b"old");
            entry(b, "cache/sub", tar::EntryType::Directory, None);
            file(b, "cache/sub/deep", b"deep");
            file(b, "bin", b"a file, to become a directory");
            entry(b, "lib", tar::EntryType::Directory, None);
            file(b, "lib/x", b"x");
        });
        apply_layer(&lower[..], &root, &mut budget).unwrap();
        let upper = layer(|b| {
            entry(b, "etc", tar::EntryType::Directory, None);
            file(b, "etc/.wh.motd", b"");
            entry(b, "cache", tar::EntryType::Directory, None);
            file(b, "cache/.wh..wh..opq", b"");
            file(b, "cache/new", b"new");
            // A whiteout of what this very layer wrote does nothing.
            file(b, "cache/.wh.new", b"");
            entry(b, "bin", tar::EntryType::Directory, None);
            file(b, "bin/sh", b"#!");
            // A file where a directory was, and a link to a lower file.
            file(b, "lib", b"now a file");
            entry(b, "etc/keep2", tar::EntryType::Link, Some("etc/keep"));
            file(b, ".wh.nothing-there", b"");
        });
        apply_layer(&upper[..], &root, &mut budget).unwrap();
        assert_eq!(listing(&root), ["bin/", "bin/sh", "cache/", "cache/new", "etc/", "etc/keep", "etc/keep2", "lib"],);
        assert_eq!(std::fs::read(root.join("etc/keep2")).unwrap(), b"keep");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn nothing_lands_outside_the_root() {
        let dir = scratch("escape");
        let root = dir.join("root");
        std::fs::create_dir_all(dir.join("outside")).unwrap();
        std::fs::write(dir.join("outside/victim"), b"intact").unwrap();
        let mut budget = Budget::default();
        let outside = dir.join("outside");
        let outside = outside.to_str().unwrap();
        let lower = layer(|b| {
            // Symlinks out of the tree, absolute and climbing, and one to
            // a directory inside it, absolute too.
            entry(b, "abs", tar::EntryType::Symlink, Some(outside));
            entry(b, "up", tar::EntryType::Symlink, Some("../outside"));
            entry(b, "inside", tar::EntryType::Directory, None);
            entry(b, "run", tar::EntryType::Symlink, Some("/inside"));
        });
        apply_layer(&lower[..], &root, &mut budget).unwrap();
        for attack in [
            layer(|b| file(b, "abs/victim", b"through an absolute symlink")),
            layer(|b| file(b, "up/victim", b"through a climbing symlink")),
            layer(|b| file(b, "abs/.wh.victim", b"")),
            layer(|b| file(b, "up/.wh.victim", b"")),
            layer(|b| file(b, "abs/.wh..wh..opq", b"")),
        ] {
            // Refused (what the symlink means inside does not exist) or
            // applied inside: never outside.
            let _ = apply_layer(&attack[..], &root, &mut budget);
            assert_eq!(std::fs::read(dir.join("outside/victim")).unwrap(), b"intact");
        }
        // An absolute symlink means what it means in the container.
        apply_layer(&layer(|b| file(b, "run/pid", b"1"))[..], &root, &mut budget).unwrap();
        assert_eq!(std::fs::read(root.join("inside/pid")).unwrap(), b"1");
        // `..` is refused outright, as is a hard link out of the tree.
        for bad in [
            layer(|b| raw_file(b, b"../victim", b"x")),
            layer(|b| raw_file(b, b"a/../../victim", b"x")),
            layer(|b| {
                let mut header = tar::Header::new_old();
                header.as_old_mut().name[..4].copy_from_slice(b"link");
                header.as_old_mut().linkname[..9].copy_from_slice(b"../victim");
                header.set_entry_type(tar::EntryType::Link);
                header.set_size(0);
                header.set_mode(0o644);
                header.set_uid(0);
                header.set_gid(0);
                header.set_mtime(0);
                header.set_cksum();
                b.append(&header, &[][..]).unwrap();
            }),
        ] {
            let error = apply_layer(&bad[..], &root, &mut budget).unwrap_err().to_string();
            assert!(error.contains("leaving the image") || error.contains("a hard link to"), "{error}");
        }
        assert_eq!(std::fs::read(dir.join("outside/victim")).unwrap(), b"intact");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn wharfs_own_files_stay_inside_a_hostile_tree() {
        let dir = scratch("write");
        let root = dir.join("root");
        std::fs::create_dir_all(dir.join("outside")).unwrap();
        std::fs::create_dir_all(root.join("usr/lib")).unwrap();
        std::os::unix::fs::symlink(dir.join("outside"), root.join("usr/lib/systemd")).unwrap();
        // The symlink means the image's own path of that name, which it
        // has not: refused, and nothing written outside.
        assert!(write_file(&root, "usr/lib/systemd/system/app.service", b"[Service]\n").is_err());
        assert!(std::fs::read_dir(dir.join("outside")).unwrap().next().is_none(), "written outside");
        // Where it has it, the file goes there.
        std::fs::remove_file(root.join("usr/lib/systemd")).unwrap();
        std::fs::create_dir_all(root.join("opt/sd")).unwrap();
        std::os::unix::fs::symlink("/opt/sd", root.join("usr/lib/systemd")).unwrap();
        write_file(&root, "usr/lib/systemd/system/app.service", b"[Service]\n").unwrap();
        assert!(root.join("opt/sd/system/app.service").is_file());
        assert!(has_units(&root, "app"));
        assert!(!has_units(&root, "other"));
        assert_eq!(read_file(&root, "usr/lib/systemd/system/app.service").as_deref(), Some("[Service]\n"));
        assert_eq!(read_file(&root, "etc/os-release"), None);
        ensure_dirs(&root, &["tmp", "var/tmp", "proc"]).unwrap();
        ensure_files(&root, &["etc/machine-id"]).unwrap();
        assert_eq!(std::fs::read(root.join("etc/machine-id")).unwrap(), b"");
        use std::os::unix::fs::PermissionsExt;
        assert_eq!(std::fs::metadata(root.join("var/tmp")).unwrap().permissions().mode() & 0o7777, 0o1777);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn layers_are_bounded_and_must_be_tar() {
        let dir = scratch("bounds");
        let root = dir.join("root");
        let big = layer(|b| file(b, "f", &[0u8; 4096]));
        let mut budget = Budget { bytes: 1000, entries: 10 };
        assert!(apply_layer(&big[..], &root, &mut budget).unwrap_err().to_string().contains("bytes unpacked"));
        let many = layer(|b| (0..5).for_each(|i| file(b, &format!("f{i}"), b"")));
        let mut budget = Budget { bytes: 1000, entries: 3 };
        assert!(apply_layer(&many[..], &root, &mut budget).unwrap_err().to_string().contains("entries"));
        let error = apply_layer(&[7u8; 1024][..], &root, &mut Budget::default()).unwrap_err();
        assert_eq!(error.to_string(), "the layer is not a tar archive");
        apply_layer(&[][..], &root, &mut Budget::default()).unwrap();
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
