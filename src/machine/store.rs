//! The machine image store: /var/lib/machines and the rest of the machine
//! search path. Clone, rename, remove, import and export, each of which
//! builds its result under a hidden temporary name and renames it only once
//! complete, so that an interrupted operation never leaves an image under
//! the final name.

use std::fs::{self, File};
use std::io::{self, Read, Write};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use super::copy::copy_tree;
use super::lock::{self, LockError, LockMode};
use super::name::{self, NameError};
use crate::compress::{self, Compression, Counting};
use crate::image::{ImageKind, Pool, readonly};

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(transparent)]
    Name(#[from] NameError),
    #[error(transparent)]
    Image(#[from] crate::image::Error),
    #[error("machine image '{name}' exists already ({})", path.display())]
    Exists { name: String, path: PathBuf },
    #[error("machine image '{name}': {}: {source}", path.display())]
    Io {
        name: String,
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("machine image '{0}' is read-only")]
    ReadOnly(String),
    #[error("machine image '{name}': {reason}")]
    Invalid { name: String, reason: String },
    #[error("machine image '{0}': the transfer was cancelled")]
    Cancelled(String),
    #[error("{0}")]
    Busy(String),
    #[error("{what}: {source}")]
    Limit {
        what: String,
        #[source]
        source: super::quota::Error,
    },
    #[error("cannot pull '{name}': {source}")]
    Pull {
        name: String,
        #[source]
        source: crate::pull::Error,
    },
    #[error("machine image '{name}': {source}")]
    Locked {
        name: String,
        #[source]
        source: LockError,
    },
}

pub type Result<T> = std::result::Result<T, Error>;

/// Progress of a long operation: (bytes done, bytes in all; 0 if unknown).
pub type Progress<'a> = &'a mut (dyn FnMut(u64, u64) + Send);

/// Prefix of the temporary names imports and clones are built under.
pub const TEMP_PREFIX: &str = ".#wharf-import-";
/// Prefix of the name an image a forced import replaces has while the new
/// one is put in its place: `PREFIX-PID-SERIAL-FILENAME`.
pub const ASIDE_PREFIX: &str = ".#wharf-replaced-";

fn aside_path(image: &Path) -> PathBuf {
    use std::sync::atomic::AtomicU64;
    static SERIAL: AtomicU64 = AtomicU64::new(0);
    let serial = SERIAL.fetch_add(1, Ordering::Relaxed);
    let file_name = image.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    image.with_file_name(format!("{ASIDE_PREFIX}{}-{serial}-{file_name}", std::process::id()))
}

/// The file name an aside had: what follows its PID and serial.
fn aside_origin(aside_name: &str) -> Option<&str> {
    let rest = aside_name.strip_prefix(ASIDE_PREFIX)?;
    let mut parts = rest.splitn(3, '-');
    let (_pid, _serial) = (parts.next()?, parts.next()?);
    parts.next().filter(|name| !name.is_empty() && !name.contains('/'))
}

/// Moves images set aside back to their names (a replacement failed).
fn put_back(asides: &[(PathBuf, PathBuf)]) {
    for (old, aside) in asides.iter().rev() {
        if let Err(e) = fs::rename(aside, old) {
            tracing::error!(image = %old.display(), aside = %aside.display(), "cannot put a replaced image back: {e}");
        }
    }
}

#[derive(Debug, Clone)]
pub struct Store {
    pub pool: Pool,
    /// Set to stop the transfer (import or export) this store runs
    /// (`machine cancel-transfer`): its next read or write fails, and what
    /// it built is removed.
    pub cancel: Option<Arc<AtomicBool>>,
    /// An import may replace an image of its name in the pool's home
    /// (`--force`), once it is complete.
    pub replace: bool,
}

/// A reader or writer of a transfer that fails once it is cancelled. A
/// reader waits for data at most [`CANCEL_POLL`] at a time, so that an
/// import from a pipe that never delivers is cancelled too.
struct Cancellable<T> {
    inner: T,
    cancel: Option<Arc<AtomicBool>>,
}

const CANCEL_POLL: std::time::Duration = std::time::Duration::from_millis(200);

impl<T> Cancellable<T> {
    fn check(&self) -> io::Result<()> {
        match &self.cancel {
            Some(flag) if flag.load(Ordering::SeqCst) => Err(io::Error::other("the transfer was cancelled")),
            _ => Ok(()),
        }
    }
}

impl<T: Read + std::os::fd::AsFd> Read for Cancellable<T> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        loop {
            self.check()?;
            if self.cancel.is_none() {
                break;
            }
            let mut fds = [nix::poll::PollFd::new(self.inner.as_fd(), nix::poll::PollFlags::POLLIN)];
            match nix::poll::poll(&mut fds, nix::poll::PollTimeout::from(CANCEL_POLL.as_millis() as u16)) {
                Ok(0) | Err(nix::errno::Errno::EINTR) => continue,
                // Readable, at its end, or in error: the read says which.
                _ => break,
            }
        }
        self.inner.read(buf)
    }
}

impl<T: Write> Write for Cancellable<T> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.check()?;
        self.inner.write(buf)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

fn io_error(name: &str, path: &Path) -> impl FnOnce(io::Error) -> Error {
    let (name, path) = (name.to_string(), path.to_path_buf());
    move |source| Error::Io { name, path, source }
}

fn locked(name: &str) -> impl FnOnce(LockError) -> Error {
    let name = name.to_string();
    move |source| Error::Locked { name, source }
}

/// What systemd's image operations hold for a new image: its name, and the
/// locks beside where it may go (held by a machine still running off a
/// deleted image of that name).
#[derive(Debug)]
struct NewImageLocks {
    _name: Option<lock::LockFile>,
    _images: Vec<lock::ImageLock>,
}

/// A temporary path in `dir` that is removed when dropped unless kept.
#[derive(Debug)]
struct Temp {
    path: PathBuf,
    keep: bool,
    /// Held until the image is under its name (or gone).
    _locks: Option<NewImageLocks>,
    /// Images of the name the commit replaces.
    replacing: Vec<PathBuf>,
}

impl Temp {
    fn new(dir: &Path, name: &str) -> Temp {
        use std::sync::atomic::{AtomicU64, Ordering};
        static SERIAL: AtomicU64 = AtomicU64::new(0);
        let serial = SERIAL.fetch_add(1, Ordering::Relaxed);
        let path = dir.join(format!("{TEMP_PREFIX}{name}-{}-{serial}", std::process::id()));
        Temp { path, keep: false, _locks: None, replacing: Vec::new() }
    }

    fn holding(mut self, locks: NewImageLocks) -> Temp {
        self._locks = Some(locks);
        self
    }

    /// Renames the temporary to `target`; from then on it is no longer
    /// removed. The images it replaces are moved aside first and removed
    /// once it is in place: a crash in between leaves an aside that
    /// [`Store::remove_leftovers`] puts back, or removes if the new image
    /// made it.
    fn commit(mut self, target: &Path, name: &str) -> Result<()> {
        let mut asides = Vec::new();
        for old in std::mem::take(&mut self.replacing) {
            let aside = aside_path(&old);
            if let Err(e) = fs::rename(&old, &aside) {
                put_back(&asides);
                return Err(io_error(name, &old)(e));
            }
            asides.push((old, aside));
        }
        if let Some((_, aside)) = asides.first() {
            crate::fs::sync_parent(aside).map_err(io_error(name, aside))?;
        }
        if let Err(e) = fs::rename(&self.path, target) {
            put_back(&asides);
            return Err(io_error(name, target)(e));
        }
        crate::fs::sync_parent(target).map_err(io_error(name, target))?;
        self.keep = true;
        for (old, aside) in asides {
            let removed = if aside.is_dir() { fs::remove_dir_all(&aside) } else { fs::remove_file(&aside) };
            match removed {
                Ok(()) => tracing::info!(image = %old.display(), "replaced"),
                Err(e) => tracing::error!(path = %aside.display(), "cannot remove a replaced image: {e}"),
            }
        }
        Ok(())
    }
}

impl Drop for Temp {
    fn drop(&mut self) {
        if self.keep {
            return;
        }
        let removed = if self.path.is_dir() { fs::remove_dir_all(&self.path) } else { fs::remove_file(&self.path) };
        if let Err(e) = removed
            && e.kind() != io::ErrorKind::NotFound
        {
            tracing::error!(path = %self.path.display(), "cannot remove a temporary image: {e}");
        }
    }
}

/// An image built under a temporary name (and holding its name's locks),
/// not yet under its own: dropped, it is removed.
#[derive(Debug)]
pub struct Staged {
    temp: Temp,
    target: PathBuf,
    name: String,
    /// SHA-256 of a raw image's bytes, as written.
    digest: Option<String>,
}

impl Staged {
    /// What the image is (a directory, or the kind of a raw image).
    pub fn kind(&self) -> Result<ImageKind> {
        Ok(ImageKind::detect(&self.temp.path)?)
    }

    /// Gives the image its name; returns its path.
    pub fn commit(self) -> Result<PathBuf> {
        self.temp.commit(&self.target, &self.name)?;
        if let Some(digest) = self.digest {
            crate::audit::remember_digest(&self.target, digest);
        }
        Ok(self.target)
    }
}

impl Store {
    pub fn machines() -> Store {
        Store { pool: Pool::machines(), cancel: None, replace: false }
    }

    /// The portable image pool, as `portable pull` fills it.
    pub fn portables() -> Store {
        Store { pool: Pool::portables(), cancel: None, replace: false }
    }

    /// This store, for imports that replace an image of their name.
    pub fn replacing(mut self) -> Store {
        self.replace = true;
        self
    }

    /// This store, for one transfer that `cancel` stops.
    pub fn with_cancel(mut self, cancel: Arc<AtomicBool>) -> Store {
        self.cancel = Some(cancel);
        self
    }

    /// Refuses to finish a transfer that was cancelled (its temporary goes).
    fn check_cancel(&self, machine: &str) -> Result<()> {
        match &self.cancel {
            Some(flag) if flag.load(Ordering::SeqCst) => Err(Error::Cancelled(machine.to_string())),
            _ => Ok(()),
        }
    }

    /// A failure of a cancelled transfer is its cancellation.
    fn or_cancelled<T>(&self, machine: &str, result: Result<T>) -> Result<T> {
        match result {
            Err(_) if self.check_cancel(machine).is_err() => Err(Error::Cancelled(machine.to_string())),
            other => other,
        }
    }

    /// The image of a machine name: `NAME` or `NAME.raw` in the search path.
    pub fn locate(&self, machine: &str) -> Result<PathBuf> {
        name::validate(machine)?;
        Ok(self.pool.locate(machine, None)?)
    }

    /// Refuses a new name that is invalid or taken anywhere in the search path.
    pub fn check_free(&self, machine: &str) -> Result<()> {
        name::validate(machine)?;
        for dir in self.pool.dirs() {
            for candidate in [dir.join(machine), dir.join(format!("{machine}.raw"))] {
                if candidate.symlink_metadata().is_ok() {
                    return Err(Error::Exists { name: machine.to_string(), path: candidate });
                }
            }
        }
        Ok(())
    }

    /// The images of `machine` a forced import replaces: those in the
    /// pool's home. One elsewhere in the search path is refused (it would
    /// hide the new image, or be hidden by it), as is a read-only one.
    pub fn replaceable(&self, machine: &str) -> Result<Vec<PathBuf>> {
        name::validate(machine)?;
        let mut replacing = Vec::new();
        for dir in self.pool.dirs() {
            for candidate in [dir.join(machine), dir.join(format!("{machine}.raw"))] {
                let Ok(meta) = candidate.symlink_metadata() else { continue };
                if dir.as_path() != self.pool.home() {
                    return Err(Error::Exists { name: machine.to_string(), path: candidate });
                }
                if readonly::is_read_only(&candidate, &meta) {
                    return Err(Error::ReadOnly(machine.to_string()));
                }
                replacing.push(candidate);
            }
        }
        Ok(replacing)
    }

    /// Locks a new name as machined does, and the places an image of that
    /// name may go.
    fn lock_new(&self, machine: &str) -> Result<NewImageLocks> {
        self.home(machine)?;
        let name = lock::lock_name(machine).map_err(locked(machine))?;
        let mut images = Vec::new();
        for kind in [ImageKind::Directory, ImageKind::Squashfs] {
            images.push(lock::lock_image(&self.target(machine, kind), LockMode::Exclusive).map_err(locked(machine))?);
        }
        Ok(NewImageLocks { _name: name, _images: images })
    }

    /// Where a new image of this name and kind goes.
    fn target(&self, machine: &str, kind: ImageKind) -> PathBuf {
        let file_name = if kind.is_file() { format!("{machine}.raw") } else { machine.to_string() };
        self.pool.home().join(file_name)
    }

    fn home(&self, machine: &str) -> Result<&Path> {
        let home = self.pool.home();
        fs::create_dir_all(home).map_err(io_error(machine, home))?;
        Ok(home)
    }

    /// Copies an image under a new name, optionally read-only.
    pub fn clone_image(&self, machine: &str, new: &str, read_only: bool, progress: Progress<'_>) -> Result<PathBuf> {
        let source = self.locate(machine)?;
        self.check_free(new)?;
        let kind = ImageKind::detect(&source)?;
        let total = if kind.is_file() { fs::metadata(&source).map(|m| m.len()).unwrap_or(0) } else { 0 };
        let locks = self.lock_new(new)?;
        let temp = Temp::new(self.home(new)?, new).holding(locks);
        if kind.is_file() {
            copy_file(&source, &temp.path, &mut |done| progress(done, total)).map_err(io_error(new, &temp.path))?;
        } else {
            copy_tree(&source, &temp.path, &mut |done| progress(done, total)).map_err(io_error(new, &temp.path))?;
        }
        let target = self.target(new, kind);
        temp.commit(&target, new)?;
        // An immutable directory cannot be renamed: mark it once in place,
        // and take the clone back if that fails.
        if read_only && let Err(e) = readonly::set_read_only(&target, true) {
            let _ = if target.is_dir() { fs::remove_dir_all(&target) } else { fs::remove_file(&target) };
            return Err(e.into());
        }
        tracing::info!(from = %source.display(), to = %target.display(), "cloned");
        Ok(target)
    }

    /// Renames an image in place (it stays in the directory it is in).
    pub fn rename(&self, machine: &str, new: &str) -> Result<PathBuf> {
        let source = self.locate(machine)?;
        self.check_free(new)?;
        let kind = ImageKind::detect(&source)?;
        let file_name = if kind.is_file() { format!("{new}.raw") } else { new.to_string() };
        let target = source.with_file_name(file_name);
        // Refused while nspawn, machined or a wharf machine holds it.
        let _held = lock::lock_image(&source, LockMode::Exclusive).map_err(locked(machine))?;
        let _locks = self.lock_new(new)?;
        fs::rename(&source, &target).map_err(io_error(machine, &source))?;
        tracing::info!(from = %source.display(), to = %target.display(), "renamed");
        Ok(target)
    }

    /// Deletes an image; refused when it is read-only.
    pub fn remove(&self, machine: &str) -> Result<PathBuf> {
        let path = self.locate(machine)?;
        let meta = fs::symlink_metadata(&path).map_err(io_error(machine, &path))?;
        if readonly::is_read_only(&path, &meta) {
            return Err(Error::ReadOnly(machine.to_string()));
        }
        let _held = lock::lock_image(&path, LockMode::Exclusive).map_err(locked(machine))?;
        let removed = if meta.is_dir() { fs::remove_dir_all(&path) } else { fs::remove_file(&path) };
        removed.map_err(io_error(machine, &path))?;
        tracing::info!(image = %path.display(), "removed");
        Ok(path)
    }

    /// Sets the size limit of an image, or with `None` of the pool's
    /// writable directory (all its images together); `limit` `None`
    /// lifts it. Returns the path limited.
    pub fn set_limit(&self, machine: Option<&str>, limit: Option<u64>) -> Result<PathBuf> {
        // The same store serves `portable set-limit`.
        let noun = if self.pool.home().ends_with("portables") { "portable" } else { "machine" };
        let (what, path) = match machine {
            Some(machine) => {
                let path = self.locate(machine)?;
                let meta = fs::symlink_metadata(&path).map_err(io_error(machine, &path))?;
                if readonly::is_read_only(&path, &meta) {
                    return Err(Error::ReadOnly(machine.to_string()));
                }
                (format!("{noun} image '{machine}'"), path)
            }
            None => (format!("the {noun} image pool"), self.pool.home().to_path_buf()),
        };
        super::quota::set_limit(&path, limit).map_err(|source| Error::Limit { what, source })?;
        tracing::info!(path = %path.display(), ?limit, "size limit set");
        Ok(path)
    }

    /// Removes the hidden images (whose name starts with a dot), or with
    /// `all` every image, of the writable directories of the search path
    /// (not those below /usr), as machinectl clean; read-only images are
    /// kept. When one of them is an image of a machine in `running`,
    /// nothing is removed. Returns each image removed, with the bytes it
    /// took when known (0 otherwise).
    pub fn clean(&self, all: bool, running: &std::collections::HashSet<String>) -> Result<Vec<(String, u64)>> {
        let mut doomed = Vec::new();
        for dir in self.pool.dirs().iter().filter(|dir| !dir.components().any(|c| c.as_os_str() == "usr")) {
            let Ok(entries) = fs::read_dir(dir) else { continue };
            for entry in entries.flatten() {
                let Some(file_name) = entry.file_name().to_str().map(str::to_string) else { continue };
                // Temporaries of transfers in flight and lock files are no images.
                if file_name.starts_with(".#") || (!all && !file_name.starts_with('.')) {
                    continue;
                }
                let path = entry.path();
                let Ok(meta) = fs::symlink_metadata(&path) else { continue };
                let image = match file_name.strip_suffix(".raw") {
                    Some(base) if meta.is_file() => base.to_string(),
                    _ if meta.is_dir() => file_name.clone(),
                    // Settings files, symlinks and anything else are left alone.
                    _ => continue,
                };
                // Only names machined would list: a hostile name is no image.
                if name::validate(image.strip_prefix('.').unwrap_or(&image)).is_err() {
                    tracing::debug!(path = %path.display(), "not an image name; clean leaves it");
                    continue;
                }
                if readonly::is_read_only(&path, &meta) {
                    continue;
                }
                if running.contains(&image) {
                    return Err(Error::Busy(format!(
                        "machine '{image}' is running off {}; stop it before cleaning (nothing was removed)",
                        path.display()
                    )));
                }
                doomed.push((image, path, meta));
            }
        }
        // Every lock first: an image a machine runs off (whatever the
        // machine's name) is refused before anything is removed.
        let mut held = Vec::new();
        for (image, path, _) in &doomed {
            let lock = lock::lock_image(path, LockMode::Exclusive).map_err(|e| {
                tracing::debug!(image, "not cleaned: {e}");
                Error::Busy(format!("{e}; stop its machine before cleaning (nothing was removed)"))
            })?;
            held.push(lock);
        }
        let mut removed = Vec::new();
        for (image, path, meta) in doomed {
            let done = if meta.is_dir() { fs::remove_dir_all(&path) } else { fs::remove_file(&path) };
            done.map_err(io_error(&image, &path))?;
            tracing::info!(image = %path.display(), "removed by clean");
            removed.push((image, if meta.is_file() { meta.len() } else { 0 }));
        }
        drop(held);
        Ok(removed)
    }

    /// What every import starts with: the name must be free, the input is
    /// decompressed as its magic says while its progress is counted, and
    /// the result is built under a temporary name in the pool.
    fn begin_import<'a>(
        &self,
        input: File,
        machine: &str,
        progress: Progress<'a>,
        what: &str,
    ) -> Result<(Box<dyn Read + Send + 'a>, Temp)> {
        let replacing =
            if self.replace { self.replaceable(machine)? } else { self.check_free(machine).map(|()| Vec::new())? };
        let total = input.metadata().map(|m| m.len()).unwrap_or(0);
        let input = Cancellable { inner: input, cancel: self.cancel.clone() };
        let counted = Counting::new(input, move |done| progress(done, total));
        let (compression, reader) = compress::decoder(counted).map_err(io_error(machine, Path::new("input")))?;
        tracing::debug!(compression = compression.as_str(), "importing {what}");
        let locks = self.lock_new(machine)?;
        let mut temp = Temp::new(self.home(machine)?, machine).holding(locks);
        temp.replacing = replacing;
        Ok((reader, temp))
    }

    /// Imports a (possibly compressed) tar archive of an OS tree as a
    /// directory image.
    pub fn import_tar(&self, input: File, machine: &str, progress: Progress<'_>) -> Result<PathBuf> {
        let result = self.import_tar_cancellable(input, machine, progress);
        self.or_cancelled(machine, result)
    }

    fn import_tar_cancellable(&self, input: File, machine: &str, progress: Progress<'_>) -> Result<PathBuf> {
        let target = self.stage_tar(input, machine, progress)?.commit()?;
        tracing::info!(image = %target.display(), "imported a tar archive");
        Ok(target)
    }

    /// Unpacks a (possibly compressed) tar archive under a temporary name;
    /// the image gets its name when the result is committed. The input is
    /// closed when this returns.
    pub fn stage_tar(&self, input: File, machine: &str, progress: Progress<'_>) -> Result<Staged> {
        let (reader, temp) = self.begin_import(input, machine, progress, "a tar archive")?;
        self.unpack_staged(reader, temp, machine)
    }

    fn unpack_staged(&self, reader: Box<dyn Read + Send + '_>, temp: Temp, machine: &str) -> Result<Staged> {
        fs::create_dir(&temp.path).map_err(io_error(machine, &temp.path))?;
        super::archive::unpack(reader, &temp.path).map_err(|e| Error::Invalid {
            name: machine.to_string(),
            reason: format!("cannot unpack the archive: {e}"),
        })?;
        fix_root_mode(machine, &temp.path)?;
        let target = self.target(machine, ImageKind::Directory);
        self.check_cancel(machine)?;
        Ok(Staged { temp, target, name: machine.to_string(), digest: None })
    }

    /// Imports a (possibly compressed) raw disk or file system image.
    pub fn import_raw(&self, input: File, machine: &str, progress: Progress<'_>) -> Result<PathBuf> {
        let result = self.import_raw_cancellable(input, machine, progress);
        self.or_cancelled(machine, result)
    }

    fn import_raw_cancellable(&self, input: File, machine: &str, progress: Progress<'_>) -> Result<PathBuf> {
        let staged = self.stage_raw(input, machine, progress)?;
        let kind = staged.kind()?;
        let target = staged.commit()?;
        tracing::info!(image = %target.display(), %kind, "imported a raw image");
        Ok(target)
    }

    /// Decompresses a raw image under a temporary name, as [`Self::stage_tar`].
    pub fn stage_raw(&self, input: File, machine: &str, progress: Progress<'_>) -> Result<Staged> {
        let (reader, temp) = self.begin_import(input, machine, progress, "a raw image")?;
        self.write_staged(reader, temp, machine)
    }

    /// A tar archive or a raw image, whichever the data is, as
    /// [`Self::stage_tar`]; read once, so the input may be a pipe.
    pub fn stage_any(&self, input: File, machine: &str, progress: Progress<'_>) -> Result<Staged> {
        let (mut reader, temp) = self.begin_import(input, machine, progress, "an image")?;
        let mut head = Vec::with_capacity(512);
        (&mut reader).take(512).read_to_end(&mut head).map_err(|e| Error::Invalid {
            name: machine.to_string(),
            reason: format!("cannot decompress the image: {e}"),
        })?;
        let is_tar = is_tar_header(&head);
        let reader: Box<dyn Read + Send + '_> = Box::new(io::Cursor::new(head).chain(reader));
        if is_tar { self.unpack_staged(reader, temp, machine) } else { self.write_staged(reader, temp, machine) }
    }

    fn write_staged(&self, reader: Box<dyn Read + Send + '_>, temp: Temp, machine: &str) -> Result<Staged> {
        let mut file = File::create_new(&temp.path).map_err(io_error(machine, &temp.path))?;
        // Hashed on the way: the audit entry of the import records the
        // image's digest, which reading 1 GiB again would cost seconds.
        let mut reader = reader;
        let (_, digest) = crate::fs::copy_sparse_hashed(&mut reader, &mut file).map_err(|e| match e {
            crate::fs::CopyError::Read(e) => {
                Error::Invalid { name: machine.to_string(), reason: format!("cannot decompress the image: {e}") }
            }
            crate::fs::CopyError::Write(e) => io_error(machine, &temp.path)(e),
        })?;
        file.sync_all().map_err(io_error(machine, &temp.path))?;
        drop(file);
        let kind = ImageKind::detect(&temp.path).map_err(|_| Error::Invalid {
            name: machine.to_string(),
            reason: "the data is not a raw image (squashfs, ext4, erofs or GPT)".into(),
        })?;
        if !kind.is_file() || kind == ImageKind::Xz {
            return Err(Error::Invalid {
                name: machine.to_string(),
                reason: format!("a {kind} image cannot be imported as raw"),
            });
        }
        let target = self.target(machine, kind);
        self.check_cancel(machine)?;
        let digest = crate::pull::hex(&digest);
        Ok(Staged { temp, target, name: machine.to_string(), digest: Some(digest) })
    }

    /// Imports a tar archive or a raw image (plain or compressed), whichever
    /// the data is: a tar archive has `ustar` at byte 257.
    pub fn import_any(&self, input: File, machine: &str, progress: Progress<'_>) -> Result<PathBuf> {
        use std::io::Seek;
        let mut head = [0u8; 512];
        let mut filled = 0;
        {
            let (_, mut reader) = compress::decoder(&input).map_err(io_error(machine, Path::new("input")))?;
            while filled < head.len() {
                match reader.read(&mut head[filled..]) {
                    Ok(0) | Err(_) => break,
                    Ok(n) => filled += n,
                }
            }
        }
        (&input).seek(std::io::SeekFrom::Start(0)).map_err(io_error(machine, Path::new("input")))?;
        if is_tar_header(&head[..filled]) {
            self.import_tar(input, machine, progress)
        } else {
            self.import_raw(input, machine, progress)
        }
    }

    /// Builds an image with `build` in a new directory under a temporary
    /// name (`build` gets its path); the image gets its name when the result
    /// is committed. With `squash`, the tree becomes a squashfs `NAME.raw`
    /// made by mksquashfs (the tree is then removed), or stays a directory
    /// where squashfs-tools is not installed, as the log says.
    pub fn stage_built(
        &self,
        machine: &str,
        squash: bool,
        build: &mut dyn FnMut(&Path) -> Result<()>,
    ) -> Result<Staged> {
        let result = self.stage_built_cancellable(machine, squash, build);
        self.or_cancelled(machine, result)
    }

    fn stage_built_cancellable(
        &self,
        machine: &str,
        squash: bool,
        build: &mut dyn FnMut(&Path) -> Result<()>,
    ) -> Result<Staged> {
        let replacing =
            if self.replace { self.replaceable(machine)? } else { self.check_free(machine).map(|()| Vec::new())? };
        let locks = self.lock_new(machine)?;
        let home = self.home(machine)?;
        let mut tree = Temp::new(home, machine);
        fs::create_dir(&tree.path).map_err(io_error(machine, &tree.path))?;
        fs::set_permissions(&tree.path, fs::Permissions::from_mode(0o755)).map_err(io_error(machine, &tree.path))?;
        build(&tree.path)?;
        fix_root_mode(machine, &tree.path)?;
        self.check_cancel(machine)?;
        if squash {
            let mut raw = Temp::new(home, machine).holding(locks);
            raw.replacing = replacing;
            match mksquashfs(&tree.path, &raw.path) {
                Ok(()) => {
                    drop(tree);
                    self.check_cancel(machine)?;
                    let target = self.target(machine, ImageKind::Squashfs);
                    return Ok(Staged { temp: raw, target, name: machine.to_string(), digest: None });
                }
                Err(e) if e.kind() == io::ErrorKind::NotFound => {
                    tracing::warn!(
                        machine,
                        "mksquashfs is not installed (squashfs-tools): the image stays a directory"
                    );
                    drop(raw);
                    tree._locks = None;
                    return self.finish_tree(tree, machine, replacing_of(self, machine)?);
                }
                Err(e) => {
                    return Err(Error::Invalid { name: machine.to_string(), reason: format!("mksquashfs: {e}") });
                }
            }
        }
        let mut tree = tree.holding(locks);
        tree.replacing = replacing;
        let target = self.target(machine, ImageKind::Directory);
        Ok(Staged { temp: tree, target, name: machine.to_string(), digest: None })
    }

    /// A built tree that stays a directory, holding its name's locks.
    fn finish_tree(&self, tree: Temp, machine: &str, replacing: Vec<PathBuf>) -> Result<Staged> {
        let mut tree = tree.holding(self.lock_new(machine)?);
        tree.replacing = replacing;
        let target = self.target(machine, ImageKind::Directory);
        Ok(Staged { temp: tree, target, name: machine.to_string(), digest: None })
    }

    /// Imports a directory tree as it is.
    pub fn import_fs(&self, source: &Path, machine: &str, progress: Progress<'_>) -> Result<PathBuf> {
        self.check_free(machine)?;
        if !source.is_dir() {
            return Err(Error::Invalid {
                name: machine.to_string(),
                reason: format!("{} is not a directory", source.display()),
            });
        }
        let locks = self.lock_new(machine)?;
        let temp = Temp::new(self.home(machine)?, machine).holding(locks);
        copy_tree(source, &temp.path, &mut |done| progress(done, 0)).map_err(io_error(machine, &temp.path))?;
        fix_root_mode(machine, &temp.path)?;
        let target = self.target(machine, ImageKind::Directory);
        // A copy of a tree is cancelled once it is made (and then removed).
        self.check_cancel(machine)?;
        temp.commit(&target, machine)?;
        Ok(target)
    }

    /// Writes a directory image as a tar archive to `output`.
    pub fn export_tar<W: Write + Send + 'static>(
        &self,
        machine: &str,
        output: W,
        compression: Compression,
        progress: Progress<'_>,
    ) -> Result<()> {
        let source = self.locate(machine)?;
        if ImageKind::detect(&source)? != ImageKind::Directory {
            return Err(Error::Invalid { name: machine.to_string(), reason: "is a raw image; use export-raw".into() });
        }
        let output = Cancellable { inner: output, cancel: self.cancel.clone() };
        let result = (|| {
            let encoder = compress::encoder(compression, output).map_err(io_error(machine, &source))?;
            let mut builder = tar::Builder::new(encoder);
            super::archive::write_tree(&mut builder, &source, &mut |done| progress(done, 0))
                .map_err(io_error(machine, &source))?;
            let encoder = builder.into_inner().map_err(io_error(machine, &source))?;
            encoder.finish().map_err(io_error(machine, &source))?;
            self.check_cancel(machine)
        })();
        self.or_cancelled(machine, result)
    }

    /// Writes a raw image to `output`.
    pub fn export_raw<W: Write + Send + 'static>(
        &self,
        machine: &str,
        output: W,
        compression: Compression,
        progress: Progress<'_>,
    ) -> Result<()> {
        let source = self.locate(machine)?;
        if !ImageKind::detect(&source)?.is_file() {
            return Err(Error::Invalid {
                name: machine.to_string(),
                reason: "is a directory image; use export-tar".into(),
            });
        }
        let input = File::open(&source).map_err(io_error(machine, &source))?;
        let total = input.metadata().map(|m| m.len()).unwrap_or(0);
        let output = Cancellable { inner: output, cancel: self.cancel.clone() };
        let result = (|| {
            let mut counted = Counting::new(input, |done| progress(done, total));
            let mut encoder = compress::encoder(compression, output).map_err(io_error(machine, &source))?;
            io::copy(&mut counted, &mut encoder).map_err(io_error(machine, &source))?;
            encoder.finish().map_err(io_error(machine, &source))?;
            self.check_cancel(machine)
        })();
        self.or_cancelled(machine, result)
    }

    /// Removes what interrupted imports left (their hidden temporaries).
    pub fn remove_leftovers(&self) {
        let Ok(entries) = fs::read_dir(self.pool.home()) else { return };
        let mut asides = Vec::new();
        for entry in entries.flatten() {
            let file_name = entry.file_name().to_string_lossy().into_owned();
            if let Some(origin) = aside_origin(&file_name) {
                asides.push((entry.path(), self.pool.home().join(origin)));
                continue;
            }
            if file_name.starts_with(TEMP_PREFIX) {
                let path = entry.path();
                tracing::warn!(path = %path.display(), "removing what an interrupted import left");
                let _ = if path.is_dir() { fs::remove_dir_all(&path) } else { fs::remove_file(&path) };
            }
        }
        // An image set aside by a forced import: the new image made it if
        // one of its name is there (then the old one goes), else the old
        // one is put back. Decided for all before any is moved.
        let made = |origin: &Path| {
            let name = origin.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
            let name = name.strip_suffix(".raw").unwrap_or(&name).to_string();
            let home = self.pool.home();
            home.join(&name).symlink_metadata().is_ok() || home.join(format!("{name}.raw")).symlink_metadata().is_ok()
        };
        let decided: Vec<_> = asides.into_iter().map(|(aside, origin)| (made(&origin), aside, origin)).collect();
        for (made, aside, origin) in decided {
            if made {
                tracing::warn!(path = %aside.display(), "removing an image a forced import replaced");
                let _ = if aside.is_dir() { fs::remove_dir_all(&aside) } else { fs::remove_file(&aside) };
            } else {
                tracing::warn!(image = %origin.display(), "putting back an image an interrupted forced import set aside");
                if let Err(e) = fs::rename(&aside, &origin) {
                    tracing::error!(path = %aside.display(), "cannot put an image back: {e}");
                }
            }
        }
    }
}

/// The images of `machine` a forced build replaces (none otherwise).
fn replacing_of(store: &Store, machine: &str) -> Result<Vec<PathBuf>> {
    if store.replace { store.replaceable(machine) } else { Ok(Vec::new()) }
}

/// Makes the squashfs `raw` of the tree at `tree`, as a portable image:
/// owners, modes, extended attributes and device nodes as they are.
fn mksquashfs(tree: &Path, raw: &Path) -> io::Result<()> {
    let out = std::process::Command::new("mksquashfs")
        .arg(tree)
        .arg(raw)
        .args(["-noappend", "-no-progress", "-quiet"])
        .stdin(std::process::Stdio::null())
        .output()?;
    if out.status.success() {
        return Ok(());
    }
    let said = String::from_utf8_lossy(&out.stderr);
    let line = said.lines().rev().find(|l| !l.trim().is_empty()).unwrap_or("").trim().to_string();
    Err(io::Error::other(format!("{} ({line})", out.status)))
}

/// A tar archive has `ustar` at byte 257 of its first header.
fn is_tar_header(head: &[u8]) -> bool {
    head.len() >= 262 && &head[257..262] == b"ustar"
}

/// A tar archive of a tree made in a private temporary directory records
/// its top as 0700; a container booted from it has dbus and logind stuck.
/// Give the root of an OS tree the mode every root has, and say so.
fn fix_root_mode(machine: &str, root: &Path) -> Result<()> {
    let mode = fs::metadata(root).map_err(io_error(machine, root))?.permissions().mode() & 0o7777;
    if mode != 0o755 {
        tracing::warn!(
            machine,
            "the image's root directory had mode {mode:o}; set to 755 so that its services can read it"
        );
        fs::set_permissions(root, fs::Permissions::from_mode(0o755)).map_err(io_error(machine, root))?;
    }
    Ok(())
}

/// Copies one file, reflinked where possible.
fn copy_file(from: &Path, to: &Path, progress: &mut dyn FnMut(u64)) -> io::Result<()> {
    let mut source = File::open(from)?;
    let mut target = File::create_new(to)?;
    if rustix::fs::ioctl_ficlone(&target, &source).is_err() {
        let mut buffer = vec![0u8; 4 << 20];
        let mut done = 0;
        loop {
            let n = source.read(&mut buffer)?;
            if n == 0 {
                break;
            }
            target.write_all(&buffer[..n])?;
            done += n as u64;
            progress(done);
        }
    }
    fs::set_permissions(to, fs::metadata(from)?.permissions())?;
    target.sync_all()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn store(tag: &str) -> (Store, PathBuf) {
        let root = std::env::temp_dir().join(format!("wharf-store-{tag}-{}", std::process::id()));
        let _ = fs::remove_dir_all(&root);
        fs::create_dir_all(root.join("var/lib/machines")).unwrap();
        (Store { pool: Pool::under(&root, "machines"), cancel: None, replace: false }, root)
    }

    fn os_tree(dir: &Path) {
        fs::create_dir_all(dir.join("usr/lib/systemd")).unwrap();
        fs::write(dir.join("usr/lib/os-release"), "ID=test\n").unwrap();
        fs::write(dir.join("usr/lib/systemd/systemd"), "#!/bin/sh\n").unwrap();
    }

    /// What ImageKind takes for a squashfs image.
    fn squashfs_bytes() -> Vec<u8> {
        let mut bytes = vec![0u8; 8192];
        bytes[..4].copy_from_slice(b"hsqs");
        bytes
    }

    fn listing(dir: &Path) -> Vec<String> {
        let mut names: Vec<String> =
            fs::read_dir(dir).unwrap().map(|e| e.unwrap().file_name().to_string_lossy().into_owned()).collect();
        names.sort();
        names
    }

    #[test]
    fn import_export_clone_rename_remove() {
        let (store, root) = store("cycle");
        let source = root.join("tree");
        os_tree(&source);
        fs::set_permissions(&source, fs::Permissions::from_mode(0o700)).unwrap();
        let home = root.join("var/lib/machines");

        let imported = store.import_fs(&source, "one", &mut |_, _| {}).unwrap();
        assert_eq!(imported, home.join("one"));
        assert_eq!(fs::metadata(&imported).unwrap().permissions().mode() & 0o777, 0o755, "root mode fixed");

        // Export as tar.xz, import it back under another name.
        let archive = root.join("one.tar.xz");
        store.export_tar("one", File::create(&archive).unwrap(), Compression::Xz, &mut |_, _| {}).unwrap();
        let mut seen = (0, 0);
        store.import_tar(File::open(&archive).unwrap(), "two", &mut |done, total| seen = (done, total)).unwrap();
        assert_eq!(fs::read_to_string(home.join("two/usr/lib/os-release")).unwrap(), "ID=test\n");
        assert_eq!(seen.0, seen.1, "progress reached the end");

        store.clone_image("two", "three", true, &mut |_, _| {}).unwrap();
        assert!(store.remove("three").unwrap_err().to_string().contains("is read-only"));
        readonly::set_read_only(&home.join("three"), false).unwrap();
        store.rename("three", "four").unwrap();
        store.remove("four").unwrap();

        assert!(matches!(store.import_fs(&source, "one", &mut |_, _| {}), Err(Error::Exists { .. })));
        assert!(matches!(store.clone_image("one", "bad name", false, &mut |_, _| {}), Err(Error::Name(_))));
        assert_eq!(listing(&home), ["one", "two"]);
        fs::remove_dir_all(&root).unwrap();
    }

    #[test]
    fn a_forced_import_replaces_and_a_crash_in_between_is_undone() {
        let (store, root) = store("replace");
        let home = store.pool.home().to_path_buf();
        fs::create_dir_all(home.join("old")).unwrap();
        fs::write(home.join("old/version"), "1").unwrap();
        // Not forced: refused; forced: the directory becomes a raw image.
        let raw = || File::open(root.join("img.raw")).unwrap();
        fs::write(root.join("img.raw"), squashfs_bytes()).unwrap();
        assert!(matches!(store.import_raw(raw(), "old", &mut |_, _| {}), Err(Error::Exists { .. })));
        let path = store.clone().replacing().import_raw(raw(), "old", &mut |_, _| {}).unwrap();
        assert_eq!(path, home.join("old.raw"));
        assert_eq!(listing(&home), ["old.raw"]);
        // A crash after the old image went aside, before the new one came:
        // put back. After the new one came: the aside goes.
        fs::create_dir(home.join(format!("{ASIDE_PREFIX}1-0-keep"))).unwrap();
        fs::write(home.join(format!("{ASIDE_PREFIX}1-1-old")), "stale").unwrap();
        store.remove_leftovers();
        assert_eq!(listing(&home), ["keep", "old.raw"]);
        assert_eq!(aside_origin(".#wharf-replaced-12-3-my-image.raw"), Some("my-image.raw"));
        assert_eq!(aside_origin(".#wharf-replaced-12-3-"), None);
        fs::remove_dir_all(&root).unwrap();
    }

    #[test]
    fn a_failed_import_leaves_nothing() {
        let (store, root) = store("failed");
        let home = root.join("var/lib/machines");
        let garbage = root.join("garbage.tar.xz");
        let mut bytes = vec![0xfd, b'7', b'z', b'X', b'Z', 0x00];
        bytes.extend_from_slice(&[7u8; 4096]);
        fs::write(&garbage, bytes).unwrap();
        assert!(store.import_tar(File::open(&garbage).unwrap(), "x", &mut |_, _| {}).is_err());
        assert!(store.import_raw(File::open(&garbage).unwrap(), "x", &mut |_, _| {}).is_err());
        let not_raw = root.join("text");
        fs::write(&not_raw, "hello").unwrap();
        let error = store.import_raw(File::open(&not_raw).unwrap(), "x", &mut |_, _| {}).unwrap_err();
        assert_eq!(error.to_string(), "machine image 'x': the data is not a raw image (squashfs, ext4, erofs or GPT)");
        assert!(listing(&home).is_empty(), "left behind: {:?}", listing(&home));
        fs::remove_dir_all(&root).unwrap();
    }

    #[test]
    fn clean_removes_hidden_images_keeps_read_only_and_refuses_running_ones() {
        let (store, root) = store("clean");
        let home = root.join("var/lib/machines");
        for dir in [".old", ".kept", "visible", ".bad name", ".#wharf-import-x-1-0"] {
            fs::create_dir_all(home.join(dir)).unwrap();
        }
        fs::write(home.join(".disk.raw"), [0u8; 512]).unwrap();
        fs::write(home.join("visible.nspawn"), "[Exec]\n").unwrap();
        readonly::set_read_only(&home.join(".kept"), true).unwrap();
        let none = std::collections::HashSet::new();
        let running: std::collections::HashSet<String> = [".old".to_string()].into();
        let error = store.clean(false, &running).unwrap_err().to_string();
        assert!(error.contains("'.old' is running") && error.contains("nothing was removed"), "{error}");
        assert!(home.join(".disk.raw").exists(), "nothing removed when one runs");
        let mut removed = store.clean(false, &none).unwrap();
        removed.sort();
        assert_eq!(removed, [(".disk".to_string(), 512), (".old".to_string(), 0)]);
        assert_eq!(listing(&home), [".#wharf-import-x-1-0", ".bad name", ".kept", "visible", "visible.nspawn"]);
        assert_eq!(store.clean(true, &none).unwrap(), [("visible".to_string(), 0)]);
        assert_eq!(listing(&home), [".#wharf-import-x-1-0", ".bad name", ".kept", "visible.nspawn"]);
        readonly::set_read_only(&home.join(".kept"), false).unwrap();
        fs::remove_dir_all(&root).unwrap();
    }

    #[test]
    fn a_cancelled_import_or_export_stops_and_leaves_nothing() {
        let (store, root) = store("cancel");
        let home = root.join("var/lib/machines");
        let flag = Arc::new(AtomicBool::new(false));
        let store = store.with_cancel(flag.clone());
        // A pipe whose writer never writes: the import waits for data
        // until it is cancelled.
        let (read, _write) = nix::unistd::pipe().unwrap();
        let waiting = {
            let store = store.clone();
            std::thread::spawn(move || store.import_raw(File::from(read), "slow", &mut |_, _| {}))
        };
        // Whether before or while it waits: a cancellation stops it.
        flag.store(true, Ordering::SeqCst);
        let error = waiting.join().unwrap().unwrap_err();
        assert!(matches!(error, Error::Cancelled(_)), "{error}");
        assert_eq!(error.to_string(), "machine image 'slow': the transfer was cancelled");
        assert!(listing(&home).is_empty(), "left behind: {:?}", listing(&home));
        let tree = root.join("tree");
        os_tree(&tree);
        let error = store.import_fs(&tree, "tree", &mut |_, _| {}).unwrap_err();
        assert!(matches!(error, Error::Cancelled(_)), "{error}");
        flag.store(false, Ordering::SeqCst);
        store.import_fs(&tree, "tree", &mut |_, _| {}).unwrap();
        flag.store(true, Ordering::SeqCst);
        let error = store.export_tar("tree", Vec::new(), Compression::None, &mut |_, _| {}).unwrap_err();
        assert!(matches!(error, Error::Cancelled(_)), "{error}");
        assert_eq!(listing(&home), ["tree"]);
        fs::remove_dir_all(&root).unwrap();
    }
}
