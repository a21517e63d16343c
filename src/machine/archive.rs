//! Tar archives of OS trees, as `export-tar` writes and `import-tar` reads
//! them: everything a booted tree needs survives the round trip — owners,
//! modes (set-user-ID included), times, symlinks, hard links (an OS tree
//! has many: /usr/bin/perl and perl5.36.0), device nodes and FIFOs, and
//! extended attributes: file capabilities (`security.capability`), POSIX
//! ACLs (`system.posix_acl_access`, `system.posix_acl_default`) and `user.*`.
//!
//! Written as GNU tar writes with `--xattrs --acls`-less raw attributes:
//! GNU headers (long names through its extension), each entry's extended
//! attributes in a PAX header before it as `SCHILY.xattr.NAME` records,
//! which GNU tar, libarchive and the tar crate all read. Hard links are
//! entries of type `1` naming the first path of the inode.
//!
//! The exporter walks the tree by descriptors: every entry is opened with
//! O_PATH and O_NOFOLLOW below its parent's descriptor, and its metadata,
//! contents and attributes are read from that descriptor, so a tree
//! changing underneath (a running machine swapping a file for a symlink)
//! cannot make it read a file outside the tree.
//!
//! The importer keeps everything inside the new image: the tar crate
//! refuses paths leaving it, device nodes are made with the kernel
//! resolving inside the root (RESOLVE_IN_ROOT), and of the extended
//! attributes only those listed in [`IMPORTED_XATTRS`] are set: a hostile
//! archive's `trusted.*` (overlayfs reads those) or `security.*` labels
//! never reach the host's file system.

use std::collections::HashMap;
use std::ffi::{OsStr, OsString};
use std::fs::File;
use std::io::{self, Read, Write};
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Component, Path, PathBuf};

use rustix::fs::{AtFlags, FileType, Mode, OFlags, ResolveFlags};

/// Extended attributes an import sets: file capabilities, ACLs and the
/// user namespace.
pub const IMPORTED_XATTRS: &[&str] = &["security.capability", "system.posix_acl_access", "system.posix_acl_default"];

/// Whether an import sets the extended attribute `name`.
pub fn imported_xattr(name: &[u8]) -> bool {
    name.starts_with(b"user.") || IMPORTED_XATTRS.iter().any(|allowed| allowed.as_bytes() == name)
}

/// The PAX prefix of an extended attribute record.
const PAX_XATTR: &str = "SCHILY.xattr.";

/// One PAX record: `LEN KEY=VALUE\n`, LEN counting the whole record, its
/// own digits included.
fn pax_record(key: &[u8], value: &[u8]) -> Vec<u8> {
    let body = key.len() + value.len() + 3; // ' ', '=', '\n'
    let mut len = body + 1;
    while len != body + len.to_string().len() {
        len = body + len.to_string().len();
    }
    let mut record = format!("{len} ").into_bytes();
    record.extend_from_slice(key);
    record.push(b'=');
    record.extend_from_slice(value);
    record.push(b'\n');
    record
}

/// The PAX records of these extended attributes.
fn pax_xattrs(xattrs: &[(OsString, Vec<u8>)]) -> Vec<u8> {
    let mut data = Vec::new();
    for (name, value) in xattrs {
        let mut key = PAX_XATTR.as_bytes().to_vec();
        key.extend_from_slice(name.as_bytes());
        data.extend(pax_record(&key, value));
    }
    data
}

/// `/proc/self/fd/N`: the very file a descriptor holds (O_PATH descriptors
/// cannot read attributes or contents themselves).
pub(crate) fn proc_path(fd: &OwnedFd) -> PathBuf {
    PathBuf::from(format!("/proc/self/fd/{}", fd.as_raw_fd()))
}

/// The extended attributes of the file behind `fd`, sorted by name.
fn read_xattrs(fd: &OwnedFd) -> io::Result<Vec<(OsString, Vec<u8>)>> {
    let path = proc_path(fd);
    let mut xattrs = Vec::new();
    let names = match xattr::list_deref(&path) {
        Ok(names) => names,
        Err(e) if e.raw_os_error() == Some(nix::libc::EOPNOTSUPP) => return Ok(xattrs),
        Err(e) => return Err(e),
    };
    for name in names {
        if let Some(value) = xattr::get_deref(&path, &name)? {
            xattrs.push((name, value));
        }
    }
    xattrs.sort();
    Ok(xattrs)
}

/// Writes the tree at `root` into `builder` as `./...`, in a stable order;
/// `progress` hears the content bytes written so far.
pub fn write_tree<W: Write>(
    builder: &mut tar::Builder<W>,
    root: &Path,
    progress: &mut dyn FnMut(u64),
) -> io::Result<()> {
    let root_fd = rustix::fs::open(root, OFlags::PATH | OFlags::DIRECTORY | OFlags::CLOEXEC, Mode::empty())?;
    let mut writer = TreeWriter { builder, links: HashMap::new(), done: 0, progress };
    writer.directory(root_fd, Path::new("."))
}

struct TreeWriter<'a, W: Write> {
    builder: &'a mut tar::Builder<W>,
    /// Inodes with several links written already: their first name.
    links: HashMap<(u64, u64), PathBuf>,
    done: u64,
    progress: &'a mut dyn FnMut(u64),
}

/// Reads exactly `left` bytes, failing if the file ends sooner (it shrank
/// while being archived: the header already promised its old size).
struct Exactly<R> {
    inner: R,
    left: u64,
}

impl<R: Read> Read for Exactly<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if self.left == 0 {
            return Ok(0);
        }
        let want = buf.len().min(usize::try_from(self.left).unwrap_or(usize::MAX));
        let n = self.inner.read(&mut buf[..want])?;
        if n == 0 {
            return Err(io::Error::new(io::ErrorKind::UnexpectedEof, "the file shrank while it was archived"));
        }
        self.left -= n as u64;
        Ok(n)
    }
}

impl<W: Write> TreeWriter<'_, W> {
    fn pax(&mut self, xattrs: &[(OsString, Vec<u8>)]) -> io::Result<()> {
        if xattrs.is_empty() {
            return Ok(());
        }
        let data = pax_xattrs(xattrs);
        let mut header = tar::Header::new_ustar();
        header.set_path("././@PaxHeader")?;
        header.set_entry_type(tar::EntryType::XHeader);
        header.set_mode(0o644);
        header.set_size(data.len() as u64);
        header.set_cksum();
        self.builder.append(&header, data.as_slice())
    }

    /// A header filled from the file behind `fd` (an O_PATH descriptor).
    fn header(fd: &OwnedFd) -> io::Result<(tar::Header, std::fs::Metadata)> {
        let meta = File::from(fd.try_clone()?).metadata()?;
        let mut header = tar::Header::new_gnu();
        header.set_metadata_in_mode(&meta, tar::HeaderMode::Complete);
        Ok((header, meta))
    }

    fn entry(&mut self, parent: &OwnedFd, file_name: &OsStr, name: &Path) -> io::Result<()> {
        let fd =
            rustix::fs::openat(parent, file_name, OFlags::PATH | OFlags::NOFOLLOW | OFlags::CLOEXEC, Mode::empty())?;
        let stat = rustix::fs::fstat(&fd)?;
        let kind = FileType::from_raw_mode(stat.st_mode);
        if kind == FileType::Directory {
            return self.directory(fd, name);
        }
        if kind == FileType::Socket || kind == FileType::Unknown {
            // Sockets belong to running programs; an archive of one means nothing.
            return Ok(());
        }
        let (mut header, meta) = Self::header(&fd)?;
        if stat.st_nlink > 1 && kind != FileType::Symlink {
            if let Some(first) = self.links.get(&(stat.st_dev, stat.st_ino)) {
                let first = first.clone();
                header.set_entry_type(tar::EntryType::Link);
                header.set_size(0);
                return self.builder.append_link(&mut header, name, first);
            }
            self.links.insert((stat.st_dev, stat.st_ino), name.to_path_buf());
        }
        match kind {
            FileType::Symlink => {
                let target = rustix::fs::readlinkat(&fd, "", Vec::new())?;
                let target = PathBuf::from(OsStr::from_bytes(target.as_bytes()));
                self.builder.append_link(&mut header, name, target)
            }
            FileType::RegularFile => {
                self.pax(&read_xattrs(&fd)?)?;
                // Reopened through /proc: the same inode, now readable.
                let file = File::open(proc_path(&fd))?;
                let size = meta.len();
                self.builder.append_data(&mut header, name, Exactly { inner: file, left: size })?;
                self.done += size;
                (self.progress)(self.done);
                Ok(())
            }
            FileType::CharacterDevice | FileType::BlockDevice | FileType::Fifo => {
                self.pax(&read_xattrs(&fd)?)?;
                if kind != FileType::Fifo {
                    header.set_device_major(rustix::fs::major(stat.st_rdev))?;
                    header.set_device_minor(rustix::fs::minor(stat.st_rdev))?;
                }
                header.set_size(0);
                self.builder.append_data(&mut header, name, io::empty())
            }
            _ => Ok(()),
        }
    }

    fn directory(&mut self, fd: OwnedFd, name: &Path) -> io::Result<()> {
        let (mut header, _) = Self::header(&fd)?;
        self.pax(&read_xattrs(&fd)?)?;
        self.builder.append_data(&mut header, name, io::empty())?;
        let listing =
            rustix::fs::openat(&fd, ".", OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC, Mode::empty())?;
        let mut names = Vec::new();
        for entry in rustix::fs::Dir::read_from(&listing)? {
            let entry = entry?;
            let file_name = entry.file_name().to_bytes();
            if file_name != b"." && file_name != b".." {
                names.push(OsStr::from_bytes(file_name).to_owned());
            }
        }
        names.sort();
        for file_name in names {
            self.entry(&fd, &file_name, &name.join(&file_name))?;
        }
        Ok(())
    }
}

/// Unpacks an OS tree into `root` (an empty directory). The tar crate
/// writes device nodes and FIFOs as empty regular files, which would leave
/// a booted container without its /dev/console or /dev/null placeholders,
/// so those are made with mknod here; files, symlinks and hard links are
/// the crate's, which keeps entries inside `root`. Directories come last,
/// as in `Archive::unpack`, so that a read-only directory does not stop its
/// own contents from being written, deepest first so that their times stay.
pub fn unpack(mut reader: impl Read, root: &Path) -> io::Result<()> {
    // Data that is no archive at all is said to be so: the tar reader's
    // own words for it quote the bytes of its first block ("numeric field
    // did not have utf-8 text: ...").
    let mut first = [0u8; 512];
    let filled = read_up_to(&mut reader, &mut first)?;
    if filled == first.len() && !is_header(&first) {
        return Err(io::Error::new(io::ErrorKind::InvalidData, "the data is not a tar archive"));
    }
    let reader = io::Cursor::new(first[..filled].to_vec()).chain(reader);
    let mut archive = tar::Archive::new(reader);
    archive.set_preserve_permissions(true);
    archive.set_preserve_ownerships(true);
    archive.set_preserve_mtime(true);
    // Set below, after the owner (chown clears file capabilities) and only
    // those an image may carry.
    archive.set_unpack_xattrs(false);
    archive.set_overwrite(false);
    let root_fd = rustix::fs::open(root, OFlags::DIRECTORY | OFlags::CLOEXEC, Mode::empty())?;
    let mut directories = Vec::new();
    for entry in archive.entries()? {
        let mut entry = entry?;
        let kind = entry.header().entry_type();
        let xattrs = entry_xattrs(&mut entry)?;
        if kind.is_dir() {
            let path = entry.path()?.into_owned();
            let mtime = entry.header().mtime().ok();
            directories.push((entry.path_bytes().into_owned(), path, mtime, xattrs, entry));
            continue;
        }
        if kind.is_character_special() || kind.is_block_special() || kind.is_fifo() {
            make_node(&root_fd, &entry)?;
        } else if !entry.unpack_in(root)? {
            continue;
        }
        if !kind.is_hard_link() && !kind.is_symlink() && !xattrs.is_empty() {
            let path = entry.path()?.into_owned();
            finish(&root_fd, &path, &xattrs, None)?;
        }
    }
    directories.sort_by(|a, b| b.0.cmp(&a.0));
    for (_, path, mtime, xattrs, mut directory) in directories {
        directory.unpack_in(root)?;
        finish(&root_fd, &path, &xattrs, mtime)?;
    }
    Ok(())
}

/// Reads until `buffer` is full or the data ends; returns how much came.
pub(crate) fn read_up_to(reader: &mut impl Read, buffer: &mut [u8]) -> io::Result<usize> {
    let mut filled = 0;
    while filled < buffer.len() {
        match reader.read(&mut buffer[filled..]) {
            Ok(0) => break,
            Ok(n) => filled += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        }
    }
    Ok(filled)
}

/// Whether a 512-byte block is a tar header as the tar reader checks one:
/// its checksum field (octal, up to a NUL, blanks around) is the sum of
/// its bytes with that field taken as blanks. An all-zero block (the end
/// of an empty archive) passes too.
pub(crate) fn is_header(block: &[u8; 512]) -> bool {
    if block.iter().all(|&b| b == 0) {
        return true;
    }
    let sum: u32 = block[..148].iter().chain(&block[156..]).map(|&b| u32::from(b)).sum::<u32>() + 8 * 32;
    let field = &block[148..156];
    let field = &field[..field.iter().position(|&b| b == 0).unwrap_or(field.len())];
    std::str::from_utf8(field).ok().and_then(|text| u32::from_str_radix(text.trim(), 8).ok()) == Some(sum)
}

/// The extended attributes an entry's PAX header carries that an import sets.
pub(crate) fn entry_xattrs<R: Read>(entry: &mut tar::Entry<'_, R>) -> io::Result<Vec<(OsString, Vec<u8>)>> {
    let mut xattrs = Vec::new();
    let Some(extensions) = entry.pax_extensions()? else { return Ok(xattrs) };
    for extension in extensions {
        let extension = extension?;
        if let Some(name) = extension.key_bytes().strip_prefix(PAX_XATTR.as_bytes()) {
            if imported_xattr(name) {
                xattrs.push((OsStr::from_bytes(name).to_owned(), extension.value_bytes().to_vec()));
            } else {
                tracing::debug!(name = %String::from_utf8_lossy(name), "extended attribute not imported");
            }
        }
    }
    Ok(xattrs)
}

/// The normal components of an archive path (`.` and a leading `/` go; the
/// tar crate skips entries with `..`).
fn inside(path: &Path) -> Option<PathBuf> {
    let mut relative = PathBuf::new();
    for component in path.components() {
        match component {
            Component::Normal(part) => relative.push(part),
            Component::ParentDir => return None,
            _ => {}
        }
    }
    Some(relative)
}

/// Sets an unpacked entry's extended attributes (and a directory's time),
/// on the entry itself, found by the kernel inside `root`.
fn finish(root: &OwnedFd, path: &Path, xattrs: &[(OsString, Vec<u8>)], mtime: Option<u64>) -> io::Result<()> {
    let Some(relative) = inside(path) else { return Ok(()) };
    let relative = if relative.as_os_str().is_empty() { PathBuf::from(".") } else { relative };
    let fd = rustix::fs::openat2(
        root,
        &relative,
        OFlags::PATH | OFlags::NOFOLLOW | OFlags::CLOEXEC,
        Mode::empty(),
        ResolveFlags::IN_ROOT | ResolveFlags::NO_MAGICLINKS,
    )?;
    if FileType::from_raw_mode(rustix::fs::fstat(&fd)?.st_mode) == FileType::Symlink {
        return Ok(());
    }
    let at = proc_path(&fd);
    for (name, value) in xattrs {
        xattr::set_deref(&at, name, value).map_err(|e| {
            io::Error::new(e.kind(), format!("{}: setting {}: {e}", path.display(), name.to_string_lossy()))
        })?;
    }
    if let Some(mtime) = mtime {
        let time = rustix::fs::Timespec { tv_sec: mtime as i64, tv_nsec: 0 };
        rustix::fs::utimensat(
            rustix::fs::CWD,
            &at,
            &rustix::fs::Timestamps { last_access: time, last_modification: time },
            AtFlags::empty(),
        )?;
    }
    Ok(())
}

/// Creates a device node or FIFO entry below `root`; its parent directory is
/// resolved by the kernel inside `root` (RESOLVE_IN_ROOT), so a symlink
/// unpacked earlier cannot send the node onto the host.
pub(crate) fn make_node<R: Read>(root: &rustix::fd::OwnedFd, entry: &tar::Entry<'_, R>) -> io::Result<()> {
    use rustix::fs::{AtFlags, FileType, Mode, Timespec, Timestamps};
    let path = entry.path()?.into_owned();
    let mut parts = Vec::new();
    for component in path.components() {
        match component {
            std::path::Component::Normal(part) => parts.push(part.to_owned()),
            std::path::Component::ParentDir => {
                return Err(io::Error::other(format!("{}: a path leaving the tree", path.display())));
            }
            _ => {}
        }
    }
    let Some(name) = parts.pop() else { return Ok(()) };
    let dir = open_in_root_creating(root, &parts)?;
    let header = entry.header();
    // A FIFO's device fields may be blank (Python's tarfile leaves them so).
    let device = |header: &tar::Header| -> io::Result<u64> {
        Ok(rustix::fs::makedev(header.device_major()?.unwrap_or(0), header.device_minor()?.unwrap_or(0)))
    };
    let (file_type, device) = match header.entry_type() {
        tar::EntryType::Char => (FileType::CharacterDevice, device(header)?),
        tar::EntryType::Block => (FileType::BlockDevice, device(header)?),
        _ => (FileType::Fifo, 0),
    };
    let mode = Mode::from_raw_mode(header.mode()? & 0o7777);
    rustix::fs::mknodat(&dir, &name, file_type, mode, device)
        .map_err(|e| io::Error::other(format!("{}: mknod: {e}", path.display())))?;
    rustix::fs::chownat(
        &dir,
        &name,
        Some(rustix::fs::Uid::from_raw(header.uid()? as u32)),
        Some(rustix::fs::Gid::from_raw(header.gid()? as u32)),
        AtFlags::SYMLINK_NOFOLLOW,
    )?;
    // mknod's mode is cut by the umask; set it exactly, as for files.
    rustix::fs::chmodat(&dir, &name, mode, AtFlags::empty())?;
    let mtime = Timespec { tv_sec: header.mtime()? as i64, tv_nsec: 0 };
    rustix::fs::utimensat(
        &dir,
        &name,
        &Timestamps { last_access: mtime, last_modification: mtime },
        AtFlags::SYMLINK_NOFOLLOW,
    )?;
    Ok(())
}

/// Opens the directory `parts` below `root`, creating missing levels (a tar
/// need not list a node's parent before the node), each step resolved by
/// the kernel inside `root`.
pub(crate) fn open_in_root_creating(
    root: &rustix::fd::OwnedFd,
    parts: &[std::ffi::OsString],
) -> io::Result<rustix::fd::OwnedFd> {
    use rustix::fs::{Mode, OFlags, ResolveFlags};
    let open = |path: &Path| {
        let path = if path.as_os_str().is_empty() { Path::new(".") } else { path };
        rustix::fs::openat2(
            root,
            path,
            OFlags::DIRECTORY | OFlags::CLOEXEC,
            Mode::empty(),
            ResolveFlags::IN_ROOT | ResolveFlags::NO_MAGICLINKS,
        )
    };
    let mut path = PathBuf::new();
    let mut dir = open(&path)?;
    for part in parts {
        match rustix::fs::mkdirat(&dir, part.as_os_str(), Mode::from_raw_mode(0o755)) {
            Ok(()) | Err(rustix::io::Errno::EXIST) => {}
            Err(e) => return Err(e.into()),
        }
        path.push(part);
        dir = open(&path)?;
    }
    Ok(dir)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::{MetadataExt, PermissionsExt};

    #[test]
    fn pax_records_count_their_own_length() {
        assert_eq!(pax_record(b"a", b"b"), b"6 a=b\n");
        // 10 + 1 digit would be 11, which has 2 digits: 12.
        assert_eq!(pax_record(b"abc", b"defg"), b"12 abc=defg\n");
        let long = pax_record(b"SCHILY.xattr.user.x", &[0u8; 200]);
        let len: usize =
            std::str::from_utf8(&long[..long.iter().position(|&b| b == b' ').unwrap()]).unwrap().parse().unwrap();
        assert_eq!(len, long.len());
    }

    #[test]
    fn only_image_attributes_are_imported() {
        assert!(imported_xattr(b"user.comment"));
        assert!(imported_xattr(b"security.capability"));
        assert!(imported_xattr(b"system.posix_acl_default"));
        assert!(!imported_xattr(b"trusted.overlay.redirect"));
        assert!(!imported_xattr(b"security.selinux"));
    }

    /// `path mode uid:gid links kind size target xattrs` for every entry, sorted.
    fn listing(root: &Path) -> Vec<String> {
        let mut lines = Vec::new();
        let mut stack = vec![PathBuf::new()];
        while let Some(relative) = stack.pop() {
            let path = root.join(&relative);
            let meta = std::fs::symlink_metadata(&path).unwrap();
            let kind = meta.file_type();
            let target = if kind.is_symlink() {
                std::fs::read_link(&path).unwrap().display().to_string()
            } else {
                String::new()
            };
            let xattrs: Vec<String> = if kind.is_symlink() {
                Vec::new()
            } else {
                xattr::list(&path)
                    .unwrap()
                    .map(|n| format!("{}={:?}", n.to_string_lossy(), xattr::get(&path, &n).unwrap()))
                    .collect()
            };
            let size = if kind.is_dir() { 0 } else { meta.len() };
            lines.push(format!(
                "{} {:o} {}:{} {} {:?} {size} {} {target} {xattrs:?}",
                relative.display(),
                meta.mode(),
                meta.uid(),
                meta.gid(),
                meta.nlink(),
                meta.rdev(),
                meta.mtime()
            ));
            if kind.is_dir() {
                for entry in std::fs::read_dir(&path).unwrap() {
                    stack.push(relative.join(entry.unwrap().file_name()));
                }
            }
        }
        lines.sort();
        lines
    }

    #[test]
    fn data_that_is_no_archive_is_said_to_be_so_without_its_bytes() {
        let mut archive = Vec::new();
        {
            let mut builder = tar::Builder::new(&mut archive);
            let mut header = tar::Header::new_gnu();
            header.set_size(2);
            header.set_mode(0o644);
            header.set_uid(0);
            header.set_gid(0);
            header.set_mtime(0);
            header.set_cksum();
            builder.append_data(&mut header, "a", &b"hi"[..]).unwrap();
            builder.finish().unwrap();
        }
        assert!(is_header(archive[..512].try_into().unwrap()));
        assert!(is_header(&[0u8; 512]));
        // A squashfs superblock, and a block whose name and checksum hold
        // terminal escapes.
        let mut junk = [0u8; 512];
        junk[..4].copy_from_slice(b"hsqs");
        junk[148..156].copy_from_slice(b"\x1b[5m\x9b\xff\x00 ");
        assert!(!is_header(&junk));
        let mut changed = archive.clone();
        changed[0] ^= 1;
        assert!(!is_header(changed[..512].try_into().unwrap()));
        let root = std::env::temp_dir().join(format!("wharf-archive-junk-{}", std::process::id()));
        std::fs::create_dir_all(&root).unwrap();
        let error = unpack(&junk[..], &root).unwrap_err().to_string();
        assert_eq!(error, "the data is not a tar archive");
        // Shorter than a block: the tar reader's say.
        assert!(unpack(&b"short"[..], &root).is_err());
        unpack(archive.as_slice(), &root).unwrap();
        assert_eq!(std::fs::read(root.join("a")).unwrap(), b"hi");
        std::fs::remove_dir_all(&root).unwrap();
    }

    #[test]
    fn a_tree_survives_export_and_import() {
        let base = std::env::temp_dir().join(format!("wharf-archive-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&base);
        let tree = base.join("tree");
        let deep = tree.join("usr/share/a-directory-with-a-rather-long-name/and-another-one-below-it-that-is-long-too");
        std::fs::create_dir_all(&deep).unwrap();
        std::fs::create_dir_all(tree.join("usr/bin")).unwrap();
        std::fs::create_dir_all(tree.join("dev")).unwrap();
        std::fs::write(deep.join("a-file-whose-whole-path-is-longer-than-a-hundred-bytes.txt"), b"deep\n").unwrap();
        std::fs::write(tree.join("usr/bin/perl"), b"#!perl\n").unwrap();
        std::fs::set_permissions(tree.join("usr/bin/perl"), std::fs::Permissions::from_mode(0o4755)).unwrap();
        std::fs::hard_link(tree.join("usr/bin/perl"), tree.join("usr/bin/perl5.36.0")).unwrap();
        std::os::unix::fs::symlink("/usr/bin/perl", tree.join("usr/bin/perl-link")).unwrap();
        std::os::unix::fs::symlink(format!("/{}", "x".repeat(150)), tree.join("usr/long-link")).unwrap();
        let dev = rustix::fs::open(tree.join("dev"), OFlags::DIRECTORY, Mode::empty()).unwrap();
        rustix::fs::mknodat(
            &dev,
            "null",
            FileType::CharacterDevice,
            Mode::from_raw_mode(0o666),
            rustix::fs::makedev(1, 3),
        )
        .unwrap();
        rustix::fs::mknodat(&dev, "fifo", FileType::Fifo, Mode::from_raw_mode(0o600), 0).unwrap();
        std::os::unix::fs::lchown(tree.join("dev/fifo"), Some(5), Some(6)).unwrap();
        xattr::set(tree.join("usr/bin/perl"), "user.comment", b"a camel").unwrap();
        // A file capability (v2: cap_net_raw, permitted and effective).
        let cap = [0x01, 0x00, 0x00, 0x02, 0x00, 0x20, 0x00, 0x00, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0];
        std::fs::write(tree.join("usr/bin/ping"), b"ping").unwrap();
        xattr::set(tree.join("usr/bin/ping"), "security.capability", &cap).unwrap();
        xattr::set(tree.join("usr/share"), "user.dir", b"on a directory").unwrap();
        xattr::set(tree.join("usr/share"), "trusted.overlay.opaque", b"y").unwrap();

        let mut archive = Vec::new();
        {
            let mut builder = tar::Builder::new(&mut archive);
            let mut seen = 0;
            write_tree(&mut builder, &tree, &mut |done| seen = done).unwrap();
            builder.finish().unwrap();
            assert_eq!(seen, 5 + 7 + 4, "content bytes, a hard link counted once");
        }
        let back = base.join("back");
        std::fs::create_dir(&back).unwrap();
        unpack(archive.as_slice(), &back).unwrap();

        let expected: Vec<String> =
            listing(&tree).into_iter().map(|l| l.replace(", \"trusted.overlay.opaque=Some([121])\"", "")).collect();
        assert_eq!(listing(&back), expected);
        assert_eq!(
            std::fs::metadata(back.join("usr/bin/perl")).unwrap().ino(),
            std::fs::metadata(back.join("usr/bin/perl5.36.0")).unwrap().ino()
        );
        assert_eq!(xattr::get(back.join("usr/share"), "trusted.overlay.opaque").unwrap(), None);
        std::fs::remove_dir_all(&base).unwrap();
    }
}
