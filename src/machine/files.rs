//! Files between the host and a machine: bind mounts given at start
//! (`--bind=SRC[:DST[:OPTIONS]]`, `--bind-ro=`, as systemd-nspawn(1) takes
//! them), and `wharfd files`, the helper wharfd runs in a transient unit of
//! its own for `machine bind`, `copy-to` and `copy-from`.
//!
//! The helper is a process of its own because joining a mount namespace
//! needs a single-threaded process (wharfd is not) and because wharfd's
//! sandbox (a read-only view of the host, no CAP_SYS_CHROOT) must not shape
//! what the caller binds or copies. It opens what it needs on the host
//! first, then joins the machine's mount namespace: from then on its root
//! is the machine's root, so no path inside the machine, whatever its
//! symlinks say or however the machine changes them meanwhile, can reach a
//! host file. The host side is reached through a directory descriptor
//! opened before the join (relative paths from the working directory).
//! Paths inside the machine whose symlinks are absolute or climb above its
//! root are refused (checked with `openat2(RESOLVE_BENEATH)`), so that a
//! path never means one thing to a caller thinking of the host and another
//! to the machine.

use std::ffi::OsStr;
use std::fs::File;
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::fs::MetadataExt;
use std::path::{Component, Path, PathBuf};
use std::process::ExitCode;

use rustix::fs::{Mode, OFlags, ResolveFlags};
use rustix::mount::{MoveMountFlags, OpenTreeFlags};

use super::ownership::shifted;
use super::uid_range::RANGE_SIZE;

/// How a bind mount's owners are seen inside a machine with a user namespace.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IdMapping {
    /// As they are: a host ID outside the machine's range is nobody
    /// inside, and what the machine writes is owned by its range's IDs.
    None,
    /// An idmapped mount: host UID N is UID N inside, both ways (root
    /// inside writes root-owned files on the host).
    Identity,
    /// Only the owner of the source's top directory is root inside; other
    /// owners are nobody.
    Root,
}

/// One `--bind=`/`--bind-ro=`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BindSpec {
    /// On the host, absolute.
    pub source: PathBuf,
    /// Inside the machine, absolute.
    pub destination: PathBuf,
    pub read_only: bool,
    /// rbind (the default): mounts below the source come along.
    pub recursive: bool,
    pub idmap: IdMapping,
}

/// Splits at `:` not escaped by a backslash; `\:` and `\\` are unescaped.
fn split_escaped(text: &str) -> Vec<String> {
    let mut parts = vec![String::new()];
    let mut chars = text.chars();
    while let Some(c) = chars.next() {
        match c {
            '\\' => match chars.next() {
                Some(next @ (':' | '\\')) => parts.last_mut().expect("one part").push(next),
                Some(other) => {
                    let part = parts.last_mut().expect("one part");
                    part.push('\\');
                    part.push(other);
                }
                None => parts.last_mut().expect("one part").push('\\'),
            },
            ':' => parts.push(String::new()),
            other => parts.last_mut().expect("one part").push(other),
        }
    }
    parts
}

fn escape(path: &Path) -> String {
    path.to_string_lossy().replace('\\', "\\\\").replace(':', "\\:")
}

/// Options nspawn documents for `--bind=`.
pub const BIND_OPTIONS: &str = "rbind, norbind, idmap, noidmap, rootidmap";

/// A path inside a machine, as `machine bind` and copies take it: absolute,
/// without `..` (which would mean a different place on the host and inside).
pub fn machine_path(text: &str) -> Result<PathBuf, String> {
    let path = Path::new(text);
    if !path.is_absolute() {
        return Err(format!("'{text}' is not an absolute path"));
    }
    if path.components().any(|c| c == Component::ParentDir) {
        return Err(format!("'{text}' contains '..'"));
    }
    Ok(path.to_path_buf())
}

impl BindSpec {
    /// `SRC[:DST[:OPTIONS]]`, as `--bind=` (or, `read_only`, `--bind-ro=`) takes it.
    pub fn parse(text: &str, read_only: bool) -> Result<BindSpec, String> {
        let parts = split_escaped(text);
        if parts.len() > 3 {
            return Err(format!("'{text}' is not SRC[:DST[:OPTIONS]] (escape a ':' in a path as '\\:')"));
        }
        let source = PathBuf::from(&parts[0]);
        if !source.is_absolute() {
            return Err(format!("bind source '{}' is not an absolute path", parts[0]));
        }
        let destination = match parts.get(1).filter(|d| !d.is_empty()) {
            Some(dst) => machine_path(dst).map_err(|e| format!("bind destination {e}"))?,
            None => source.clone(),
        };
        machine_path(&destination.to_string_lossy()).map_err(|e| format!("bind destination {e}"))?;
        let mut spec = BindSpec { source, destination, read_only, recursive: true, idmap: IdMapping::None };
        let options = parts.get(2).map(String::as_str).unwrap_or("");
        for option in options.split(',').filter(|o| !o.is_empty()) {
            match option {
                "rbind" => spec.recursive = true,
                "norbind" => spec.recursive = false,
                "idmap" => spec.idmap = IdMapping::Identity,
                "noidmap" => spec.idmap = IdMapping::None,
                "rootidmap" => spec.idmap = IdMapping::Root,
                other => return Err(format!("unknown bind option '{other}' ({BIND_OPTIONS})")),
            }
        }
        Ok(spec)
    }

    /// The spec as [`BindSpec::parse`] reads it back, every option spelled out.
    pub fn spec(&self) -> String {
        let idmap = match self.idmap {
            IdMapping::None => "noidmap",
            IdMapping::Identity => "idmap",
            IdMapping::Root => "rootidmap",
        };
        let rbind = if self.recursive { "rbind" } else { "norbind" };
        format!("{}:{}:{rbind},{idmap}", escape(&self.source), escape(&self.destination))
    }

    /// How the launcher's command line carries it: `ro:SPEC` or `rw:SPEC`.
    pub fn launch_value(&self) -> String {
        format!("{}:{}", if self.read_only { "ro" } else { "rw" }, self.spec())
    }

    /// Reads [`BindSpec::launch_value`] back.
    pub fn parse_launch(text: &str) -> Result<BindSpec, String> {
        match text.split_once(':') {
            Some(("ro", spec)) => BindSpec::parse(spec, true),
            Some(("rw", spec)) => BindSpec::parse(spec, false),
            _ => Err(format!("'{text}' is not ro:SPEC or rw:SPEC")),
        }
    }
}

/// `MOUNT_ATTR_RDONLY` from linux/mount.h.
pub(crate) const MOUNT_ATTR_RDONLY: u64 = 0x0000_0001;

/// A detached clone of `source` (its submounts too when `recursive`),
/// private, read-only when asked, idmapped with `userns` when given.
pub(crate) fn clone_tree(
    source: &Path,
    recursive: bool,
    read_only: bool,
    userns: Option<&File>,
) -> std::io::Result<OwnedFd> {
    let mut flags = OpenTreeFlags::OPEN_TREE_CLONE | OpenTreeFlags::OPEN_TREE_CLOEXEC;
    if recursive {
        flags |= OpenTreeFlags::AT_RECURSIVE;
    }
    let tree = rustix::mount::open_tree(rustix::fs::CWD, source, flags)?;
    let attrs = if read_only { MOUNT_ATTR_RDONLY } else { 0 };
    super::sys::set_tree_attributes(&tree, attrs, userns.map(|f| f.as_fd()))?;
    Ok(tree)
}

/// The UID/GID map line of a throwaway user namespace that idmaps a bind
/// source for a machine whose range starts at `base`, or `None` when the
/// mapping is none. `owner`: the owner of the source's top directory.
pub(crate) fn idmap_line(mapping: IdMapping, base: u32, owner: u32) -> Option<String> {
    match mapping {
        IdMapping::None => None,
        IdMapping::Identity => Some(format!("0 {base} {RANGE_SIZE}\n")),
        IdMapping::Root => Some(format!("{owner} {base} 1\n")),
    }
}

/// Runs `work` with the file system IDs of the machine's root (host UID
/// `base`) and every capability this process is permitted: files created
/// in an idmapped image must get an owner the mount can map (host root
/// cannot be written there), and changing the file system UID away from 0
/// clears the effective capabilities, which are raised again.
pub(crate) fn as_machine_root<T>(base: Option<u32>, work: impl FnOnce() -> T) -> std::io::Result<T> {
    let Some(base) = base else { return Ok(work()) };
    let restore = |uid: u32| {
        nix::unistd::setfsuid(nix::unistd::Uid::from_raw(uid));
        nix::unistd::setfsgid(nix::unistd::Gid::from_raw(uid));
    };
    let before = rustix::thread::capabilities(None)?;
    restore(base);
    let raised = rustix::thread::CapabilitySets { effective: before.permitted, ..before };
    if let Err(e) = rustix::thread::set_capabilities(None, raised) {
        restore(0);
        return Err(e.into());
    }
    let result = work();
    restore(0);
    rustix::thread::set_capabilities(None, before)?;
    Ok(result)
}

/// The relative form of an absolute path inside a root.
fn relative(path: &Path) -> &Path {
    path.strip_prefix("/").unwrap_or(path)
}

/// Opens `path` (absolute, inside the tree `root`) refusing symlinks that
/// are absolute or climb above `root`.
fn open_beneath(root: &impl AsFd, path: &Path, flags: OFlags) -> Result<OwnedFd, FilesError> {
    let rel = relative(path);
    let rel = if rel.as_os_str().is_empty() { Path::new(".") } else { rel };
    rustix::fs::openat2(
        root,
        rel,
        flags | OFlags::CLOEXEC,
        Mode::empty(),
        ResolveFlags::BENEATH | ResolveFlags::NO_MAGICLINKS,
    )
    .map_err(|e| match e {
        rustix::io::Errno::XDEV => FilesError::Escapes(path.to_path_buf()),
        e => FilesError::Io { what: format!("{} in the machine", path.display()), source: e.into() },
    })
}

/// Makes the mount point `path` inside `root` as a directory (or an empty
/// file when `directory` is false), with its missing parents, as the
/// machine's root. Returns it opened `O_PATH`.
pub(crate) fn make_mount_point(
    root: &impl AsFd,
    path: &Path,
    directory: bool,
    base: Option<u32>,
) -> Result<OwnedFd, FilesError> {
    let names: Vec<&OsStr> = relative(path).iter().collect();
    let mut sofar = PathBuf::from("/");
    for (i, name) in names.iter().enumerate() {
        let last = i + 1 == names.len();
        let parent = open_beneath(root, &sofar, OFlags::PATH | OFlags::DIRECTORY)?;
        sofar.push(name);
        match rustix::fs::statat(&parent, *name, rustix::fs::AtFlags::SYMLINK_NOFOLLOW) {
            Ok(_) => continue,
            Err(rustix::io::Errno::NOENT) => {}
            Err(e) => {
                return Err(FilesError::Io { what: format!("{} in the machine", sofar.display()), source: e.into() });
            }
        }
        let parent = open_beneath(root, sofar.parent().unwrap_or(Path::new("/")), OFlags::DIRECTORY)?;
        let made = as_machine_root(base, || {
            if last && !directory {
                rustix::fs::openat(
                    &parent,
                    *name,
                    OFlags::CREATE | OFlags::EXCL | OFlags::WRONLY | OFlags::CLOEXEC,
                    Mode::from_raw_mode(0o644),
                )
                .map(drop)
            } else {
                rustix::fs::mkdirat(&parent, *name, Mode::from_raw_mode(0o755))
            }
        });
        match made {
            Ok(Ok(())) | Ok(Err(rustix::io::Errno::EXIST)) => {}
            Ok(Err(e)) => {
                return Err(FilesError::Io {
                    what: format!("creating {} in the machine", sofar.display()),
                    source: e.into(),
                });
            }
            Err(source) => return Err(FilesError::Io { what: "taking the machine root's IDs".into(), source }),
        }
    }
    open_beneath(root, path, OFlags::PATH)
}

/// Checks, before a start, that the mount point `path` of a bind is
/// reached inside the image directory `root` without a symlink leading out
/// (the launcher checks again as it mounts).
pub fn check_mount_point(root: &Path, path: &Path) -> Result<(), FilesError> {
    let image = File::open(root).map_err(io(root.display().to_string()))?;
    let mut sofar = PathBuf::from("/");
    for name in relative(path).iter() {
        sofar.push(name);
        match open_beneath(&image, &sofar, OFlags::PATH) {
            Ok(_) => {}
            Err(FilesError::Io { source, .. }) if source.kind() == std::io::ErrorKind::NotFound => return Ok(()),
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

/// Attaches the detached `tree` at the mount point `target`.
pub(crate) fn attach(tree: &OwnedFd, target: &OwnedFd) -> std::io::Result<()> {
    rustix::mount::move_mount(
        tree,
        "",
        target,
        "",
        MoveMountFlags::MOVE_MOUNT_F_EMPTY_PATH | MoveMountFlags::MOVE_MOUNT_T_EMPTY_PATH,
    )?;
    Ok(())
}

/// What `wharfd files` does.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Operation {
    /// Bind the host path into the machine.
    Bind,
    /// Copy the host path into the machine.
    CopyTo,
    /// Copy the machine's path to the host.
    CopyFrom,
}

/// Options of `wharfd files`, carried in its unit's `ExecStart=`
/// ([`FilesArgs::command_line`]).
#[derive(Debug, Clone, PartialEq, Eq, clap::Args)]
pub struct FilesArgs {
    /// PID (on the host) of the machine's init.
    #[arg(long, value_name = "PID")]
    pub leader: u32,
    /// The machine's name, for messages.
    #[arg(long, value_name = "NAME")]
    pub machine: String,
    #[arg(long, value_enum)]
    pub operation: Operation,
    /// The path on the host, absolute.
    #[arg(long, value_name = "PATH")]
    pub host: PathBuf,
    /// The path inside the machine, absolute.
    #[arg(long = "inside", value_name = "PATH")]
    pub inside: PathBuf,
    /// bind: mount read-only.
    #[arg(long)]
    pub read_only: bool,
    /// bind: create the mount point (and its parents) when missing.
    #[arg(long)]
    pub mkdir: bool,
}

impl FilesArgs {
    /// `PROGRAM files --option=value...`; values joined with `=` so that
    /// none is read as an option.
    pub fn command_line(&self, program: &str) -> Result<Vec<String>, super::launcher::NotUtf8> {
        let path = |p: &Path| p.to_str().map(str::to_string).ok_or_else(|| super::launcher::NotUtf8(p.to_path_buf()));
        let operation = clap::ValueEnum::to_possible_value(&self.operation).expect("no operation is skipped");
        let mut argv = vec![
            program.to_string(),
            "files".to_string(),
            format!("--leader={}", self.leader),
            format!("--machine={}", self.machine),
            format!("--operation={}", operation.get_name()),
            format!("--host={}", path(&self.host)?),
            format!("--inside={}", path(&self.inside)?),
        ];
        if self.read_only {
            argv.push("--read-only".into());
        }
        if self.mkdir {
            argv.push("--mkdir".into());
        }
        Ok(argv)
    }
}

#[derive(Debug, thiserror::Error)]
pub enum FilesError {
    #[error("{} in the machine: a symlink on the way is absolute or leads out of the machine; refused", .0.display())]
    Escapes(PathBuf),
    #[error("{} does not exist in the machine (machine bind --mkdir creates it)", .0.display())]
    NoMountPoint(PathBuf),
    #[error("{} exists already in the machine", .0.display())]
    ExistsInside(PathBuf),
    #[error("{} exists already", .0.display())]
    ExistsOnHost(PathBuf),
    #[error("{} does not exist in the machine", .0.display())]
    MissingInside(PathBuf),
    #[error("{} does not exist", .0.display())]
    MissingOnHost(PathBuf),
    #[error("{} is a device node; device nodes are not copied out of a machine", .0.display())]
    Device(PathBuf),
    #[error("the machine's init (PID {0}) is gone: {1}")]
    Gone(u32, String),
    #[error("{what}: {source}")]
    Io {
        what: String,
        #[source]
        source: std::io::Error,
    },
}

fn io(what: impl Into<String>) -> impl FnOnce(std::io::Error) -> FilesError {
    let what = what.into();
    move |source| FilesError::Io { what, source }
}

/// The host UID the machine's root is, from its init's UID map; `None`
/// without a user namespace.
pub fn range_base(uid_map: &str) -> Option<u32> {
    let mut words = uid_map.split_whitespace();
    let (inside, outside, count) = (words.next()?, words.next()?, words.next()?);
    if inside != "0" || outside == "0" && count == "4294967295" {
        return None;
    }
    outside.parse().ok()
}

/// `wharfd files`: prints one line and exits 1 on failure.
pub fn main(args: FilesArgs) -> ExitCode {
    match run(&args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("machine '{}': {e}", args.machine);
            ExitCode::FAILURE
        }
    }
}

fn run(args: &FilesArgs) -> Result<(), FilesError> {
    // The machine's root must not read this process's memory or
    // descriptors (the host directory) through ptrace or /proc.
    rustix::process::set_dumpable_behavior(rustix::process::DumpableBehavior::NotDumpable)
        .map_err(|e| io("making this process non-dumpable")(e.into()))?;
    let leader = args.leader;
    let gone = |e: std::io::Error| FilesError::Gone(leader, e.to_string());
    let uid_map = std::fs::read_to_string(format!("/proc/{leader}/uid_map")).map_err(gone)?;
    let base = range_base(&uid_map);
    let mount_ns = File::open(format!("/proc/{leader}/ns/mnt")).map_err(gone)?;
    let host = args.host.as_path();
    match args.operation {
        Operation::Bind => {
            let meta = std::fs::metadata(host).map_err(|e| missing_on_host(host, e))?;
            let userns = match base {
                Some(_) => Some(File::open(format!("/proc/{leader}/ns/user")).map_err(gone)?),
                None => None,
            };
            let tree = clone_tree(host, true, args.read_only, userns.as_ref())
                .map_err(io(format!("cloning the mount of {}", host.display())))?;
            join(&mount_ns)?;
            let root = File::open("/").map_err(io("opening the machine's root"))?;
            let target = if args.mkdir {
                make_mount_point(&root, &args.inside, meta.is_dir(), base)?
            } else {
                match open_beneath(&root, &args.inside, OFlags::PATH) {
                    Err(FilesError::Io { source, .. }) if source.kind() == std::io::ErrorKind::NotFound => {
                        return Err(FilesError::NoMountPoint(args.inside.clone()));
                    }
                    other => other?,
                }
            };
            attach(&tree, &target).map_err(io(format!("mounting {} on {}", host.display(), args.inside.display())))
        }
        Operation::CopyTo => {
            std::fs::symlink_metadata(host).map_err(|e| missing_on_host(host, e))?;
            let (host_dir, name) = host_parent(host)?;
            join(&mount_ns)?;
            let root = File::open("/").map_err(io("opening the machine's root"))?;
            check_inside_parent(&root, &args.inside)?;
            if std::fs::symlink_metadata(&args.inside).is_ok() {
                return Err(FilesError::ExistsInside(args.inside.clone()));
            }
            rustix::process::fchdir(&host_dir).map_err(|e| io("entering the host directory")(e.into()))?;
            let options = super::copy::CopyOptions {
                owner: &|id| base.map_or(id, |base| shifted(id, base)),
                strip_set_id: false,
                devices: true,
            };
            let copied = as_machine_root(base, || {
                super::copy::copy_tree_with(Path::new(&name), &args.inside, &options, &mut |_| {})
            })
            .map_err(io("taking the machine root's IDs"))?;
            if let Err(e) = copied {
                // Nothing half copied stays in the machine (this process's
                // root is the machine's: the removal cannot reach the host).
                let _ = std::fs::remove_dir_all(&args.inside).or_else(|_| std::fs::remove_file(&args.inside));
                return Err(io(format!("copying {} to {} in the machine", host.display(), args.inside.display()))(e));
            }
            Ok(())
        }
        Operation::CopyFrom => {
            if std::fs::symlink_metadata(host).is_ok() {
                return Err(FilesError::ExistsOnHost(host.to_path_buf()));
            }
            let (host_dir, name) = host_parent(host)?;
            join(&mount_ns)?;
            let root = File::open("/").map_err(io("opening the machine's root"))?;
            check_inside_parent(&root, &args.inside)?;
            let meta = std::fs::symlink_metadata(&args.inside).map_err(|e| match e.kind() {
                std::io::ErrorKind::NotFound => FilesError::MissingInside(args.inside.clone()),
                _ => io(format!("{} in the machine", args.inside.display()))(e),
            })?;
            if meta.file_type().is_dir() {
                // Checked here too so that nothing is left half copied.
                refuse_devices(&args.inside)?;
            } else if is_device(&meta) {
                return Err(FilesError::Device(args.inside.clone()));
            }
            rustix::process::fchdir(&host_dir).map_err(|e| io("entering the host directory")(e.into()))?;
            let options = super::copy::CopyOptions {
                owner: &|id| base.map_or(id, |base| unshifted(id, base)),
                strip_set_id: true,
                devices: false,
            };
            let copied = as_machine_root(base, || {
                super::copy::copy_tree_with(&args.inside, Path::new(&name), &options, &mut |_| {})
            })
            .map_err(io("taking the machine root's IDs"))?;
            if let Err(e) = copied {
                // Nothing half copied stays on the host.
                let _ = std::fs::remove_dir_all(&name).or_else(|_| std::fs::remove_file(&name));
                return Err(io(format!("copying {} in the machine to {}", args.inside.display(), host.display()))(e));
            }
            Ok(())
        }
    }
}

fn missing_on_host(path: &Path, e: std::io::Error) -> FilesError {
    match e.kind() {
        std::io::ErrorKind::NotFound => FilesError::MissingOnHost(path.to_path_buf()),
        _ => io(path.display().to_string())(e),
    }
}

/// A host path's parent directory, open, and its last name.
fn host_parent(path: &Path) -> Result<(File, std::ffi::OsString), FilesError> {
    let (Some(parent), Some(name)) = (path.parent(), path.file_name()) else {
        return Err(io(path.display().to_string())(std::io::Error::other("has no parent directory")));
    };
    let dir = File::open(parent).map_err(|e| missing_on_host(parent, e))?;
    Ok((dir, name.to_os_string()))
}

/// The directory a path inside the machine is in must be reached without
/// a symlink leading out.
fn check_inside_parent(root: &File, inside: &Path) -> Result<(), FilesError> {
    let parent = inside.parent().unwrap_or(Path::new("/"));
    match open_beneath(root, parent, OFlags::PATH | OFlags::DIRECTORY) {
        Err(FilesError::Io { source, .. }) if source.kind() == std::io::ErrorKind::NotFound => {
            Err(FilesError::MissingInside(parent.to_path_buf()))
        }
        other => other.map(drop),
    }
}

fn join(mount_ns: &File) -> Result<(), FilesError> {
    nix::sched::setns(mount_ns, nix::sched::CloneFlags::CLONE_NEWNS)
        .map_err(|e| io("joining the machine's mount namespace")(e.into()))
}

fn is_device(meta: &std::fs::Metadata) -> bool {
    use std::os::unix::fs::FileTypeExt;
    meta.file_type().is_block_device() || meta.file_type().is_char_device()
}

fn refuse_devices(dir: &Path) -> Result<(), FilesError> {
    let top = std::fs::symlink_metadata(dir).map_err(io(dir.display().to_string()))?;
    let mut pending = vec![dir.to_path_buf()];
    while let Some(dir) = pending.pop() {
        for entry in std::fs::read_dir(&dir).map_err(io(dir.display().to_string()))? {
            let path = entry.map_err(io(dir.display().to_string()))?.path();
            let meta = std::fs::symlink_metadata(&path).map_err(io(path.display().to_string()))?;
            if is_device(&meta) {
                return Err(FilesError::Device(path));
            }
            if meta.is_dir() && meta.dev() == top.dev() {
                pending.push(path);
            }
        }
    }
    Ok(())
}

/// The owner a file of the machine (as the host sees it, `id`) gets when
/// copied out: its ID inside, or nobody when the range does not hold it.
pub fn unshifted(id: u32, base: u32) -> u32 {
    if id >= base && u64::from(id) < u64::from(base) + u64::from(RANGE_SIZE) { id - base } else { 65534 }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bind_specs_parse_as_nspawn_documents() {
        let spec = BindSpec::parse("/srv/data", false).unwrap();
        assert_eq!(spec.destination, Path::new("/srv/data"));
        assert!(spec.recursive && spec.idmap == IdMapping::None && !spec.read_only);
        let spec = BindSpec::parse("/srv/data:/data:norbind,idmap", true).unwrap();
        assert_eq!(spec.destination, Path::new("/data"));
        assert!(!spec.recursive && spec.idmap == IdMapping::Identity && spec.read_only);
        assert_eq!(BindSpec::parse("/a::rootidmap", false).unwrap().idmap, IdMapping::Root);
        assert_eq!(BindSpec::parse("/a\\:b:/c", false).unwrap().source, Path::new("/a:b"));
        for bad in ["relative", "/a:relative", "/a:/b:bogus", "/a:/b:c:d", "/a:/../etc", ""] {
            let error = BindSpec::parse(bad, false).unwrap_err();
            assert!(!error.contains('\n'), "{error}");
        }
        assert_eq!(
            BindSpec::parse("/a:/b:bogus", false).unwrap_err(),
            "unknown bind option 'bogus' (rbind, norbind, idmap, noidmap, rootidmap)"
        );
    }

    #[test]
    fn bind_specs_survive_the_launch_command_line() {
        for (text, ro) in [
            ("/srv/data", false),
            ("/a\\:b:/c\\\\d:norbind,rootidmap", true),
            ("/x y:/--bind=/etc:idmap", false),
            ("/new\nline", true),
        ] {
            let spec = BindSpec::parse(text, ro).unwrap();
            assert_eq!(BindSpec::parse_launch(&spec.launch_value()).unwrap(), spec, "{text}");
        }
    }

    #[test]
    fn machine_paths_are_absolute_without_dotdot() {
        assert!(machine_path("/etc/hosts").is_ok());
        assert!(machine_path("etc/hosts").is_err());
        assert!(machine_path("/tmp/../../etc").is_err());
    }

    #[test]
    fn reads_the_range_from_a_uid_map() {
        assert_eq!(range_base("         0    1835008      65536\n"), Some(1_835_008));
        assert_eq!(range_base("         0          0 4294967295\n"), None);
        assert_eq!(range_base(""), None);
    }

    #[test]
    fn owners_map_out_of_the_range() {
        let base = 0x1C_0000;
        assert_eq!(unshifted(base, base), 0);
        assert_eq!(unshifted(base + 1000, base), 1000);
        assert_eq!(unshifted(0, base), 65534);
        assert_eq!(unshifted(shifted(1000, base), base), 1000);
    }

    #[test]
    fn idmap_lines_follow_the_option() {
        assert_eq!(idmap_line(IdMapping::None, 65536, 0), None);
        assert_eq!(idmap_line(IdMapping::Identity, 65536, 0).unwrap(), "0 65536 65536\n");
        assert_eq!(idmap_line(IdMapping::Root, 65536, 1000).unwrap(), "1000 65536 1\n");
    }

    #[test]
    fn files_arguments_survive_the_command_line() {
        use clap::Parser;
        let args = FilesArgs {
            leader: 42,
            machine: "f28".into(),
            operation: Operation::CopyFrom,
            host: PathBuf::from("/root/--operation=bind"),
            inside: PathBuf::from("/etc/x y"),
            read_only: true,
            mkdir: false,
        };
        let argv = args.command_line("wharfd").unwrap();
        match crate::cli::wharfd::Args::try_parse_from(&argv).unwrap().command {
            Some(crate::cli::wharfd::Command::Files(parsed)) => assert_eq!(parsed, args),
            other => panic!("{other:?}"),
        }
    }
}
