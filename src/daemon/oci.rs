//! Registry pulls (`PullOciImage` of `org.wharf1.Machine` and
//! `org.wharf1.Portable`): the manifest, the config and every layer
//! downloaded by `wharfd fetch` units as the other pulls are, each blob
//! written to an unnamed file (O_TMPFILE: a crash leaves nothing) and
//! checked against its digest as it streams. Only once every blob is
//! verified are the layers applied, bottom first, to a tree under a
//! temporary name, which becomes the image (a directory, or for portables
//! a squashfs) at the very end.

use std::fs::File;
use std::io::{BufReader, Read, Seek, Write};
use std::os::fd::AsFd;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use sha2::{Digest as _, Sha256};
use zbus::Connection;
use zbus::message::Header;

use super::auth::authorize;
use super::manager::progress_reporter;
use super::pull::{Fetcher, Running, pulling, stop_fetcher};
use super::{Daemon, failed};
use crate::api::{BusError, pull_flags};
use crate::audit::{Call, Kind};
use crate::machine::store::{Error as StoreError, Store};
use crate::pull::Error;
use crate::pull::fetch::{Failure, Report};
use crate::pull::oci::{self, Descriptor, Digest, Manifest, OciError, Reference};
use crate::systemd::{Deadlines, Systemd};

/// Where the image config is kept inside the image.
pub const CONFIG_IN_IMAGE: &str = "usr/lib/wharf/oci-config.json";
/// A token server's answer is small.
const TOKEN_LIMIT: u64 = 64 << 10;

#[derive(Debug, Clone)]
pub(crate) struct Request {
    pub reference: String,
    /// The image name; empty: the repository's last component.
    pub name: String,
    /// [`crate::api::pull_flags`].
    pub flags: u64,
    /// A portable service image: a squashfs, with a unit made from the
    /// config if it has none.
    pub portable: bool,
}

type Shared<T> = Arc<Mutex<T>>;
type Reporter = Box<dyn FnMut(u64, u64) + Send>;

pub(crate) async fn pull(
    daemon: &Arc<Daemon>,
    store: &Store,
    connection: &Connection,
    header: &Header<'_>,
    request: Request,
) -> Result<String, BusError> {
    let caller = authorize(connection, header, "pulling an image").await?;
    let reference = Reference::parse(&request.reference);
    let name = match (&reference, request.name.is_empty()) {
        (Ok(reference), true) => reference.local_name(),
        _ => request.name.clone(),
    };
    let audit = Call::new(Kind::Import, caller).image(&store.pool, &name).field("WHARF_URL", request.reference.clone());
    let running =
        Running::begin(daemon, store, connection, header, ("pull-oci", &name, &request.reference), request.flags).await;
    let Running { ref registration, ref store, .. } = running;
    let progress: Shared<Reporter> = Arc::new(Mutex::new(Box::new(registration.track(progress_reporter(
        connection,
        header,
        &format!("pull {name}"),
    )))));
    let result = async {
        if request.flags & !pull_flags::OCI_ALL != 0 {
            let unknown = request.flags & !pull_flags::OCI_ALL;
            return Err(BusError::InvalidArgument(format!("unknown flags {unknown:#x}")));
        }
        let reference = reference.map_err(|e| pulling(&name, Error::Argument(e.to_string())))?;
        running.check_name(daemon, &name).await?;
        let systemd = Systemd::new(connection).await.map_err(failed)?;
        let insecure = request.flags & pull_flags::INSECURE != 0;
        let mut registry = Registry {
            daemon,
            systemd: &systemd,
            base: reference.base_url(insecure),
            plain_http: reference.plain_http(insecure),
            reference: &reference,
            token: None,
            cancel: registration.cancel_flag(),
        };
        let oci_error = |what: String| {
            let name = name.clone();
            move |reason: OciError| pulling(&name, Error::Oci { what, reason: Box::new(reason) })
        };
        let (manifest_digest, config, layers) = registry.image().await.map_err(|e| pulling(&name, e))?;
        let config_bytes = registry.small_blob(&config, oci::CONFIG_LIMIT).await.map_err(|e| pulling(&name, e))?;
        let image_config = oci::parse_config(&config_bytes).map_err(oci_error(format!("config {}", config.digest)))?;
        for layer in &layers {
            oci::layer_is_tar(&layer.media_type).map_err(oci_error(format!("layer {}", layer.digest)))?;
        }
        let total: u64 = layers.iter().map(|l| l.size).sum();
        let mut blobs = Vec::new();
        let mut done = 0u64;
        for layer in &layers {
            let file = {
                let (pool, name) = (store.pool.clone(), name.clone());
                daemon.blocking(move || unnamed_file(pool.home())).await.map_err(|e| {
                    BusError::from(StoreError::Io { name: name.clone(), path: store.pool.home().to_path_buf(), source: e })
                })?
            };
            let file = registry.blob_to_file(layer, file, done, total, progress.clone()).await.map_err(|e| pulling(&name, e))?;
            done += layer.size;
            blobs.push((layer.digest.clone(), file));
        }
        let staged = {
            let (store, name, reference) = (store.clone(), name.clone(), reference.to_string());
            let portable = request.portable;
            daemon
                .blocking(move || {
                    let mut build = |root: &Path| build_tree(root, &name, &reference, &blobs, &config_bytes, &image_config, portable, &store);
                    store.stage_built(&name, portable, &mut build)
                })
                .await?
        };
        let path = {
            let name = name.clone();
            daemon.blocking(move || staged.commit()).await.map_err(|e| {
                tracing::debug!(name, "commit failed");
                BusError::from(e)
            })?
        };
        if request.flags & pull_flags::READ_ONLY != 0 {
            let (pool, name) = (store.pool.clone(), name.clone());
            daemon.blocking(move || super::portable::mark_read_only(&pool, &name, true)).await?;
        }
        tracing::info!(image = %path.display(), reference = %reference, manifest = %manifest_digest, "pulled from a registry");
        Ok::<_, BusError>(path)
    }
    .await;
    // A cancelled pull fails as cancelled, whatever its last step said.
    let result = match result {
        Err(_) if registration.cancel_flag().load(Ordering::SeqCst) => {
            Err(BusError::from(StoreError::Cancelled(name.clone())))
        }
        other => other,
    };
    tracing::debug!(id = registration.id(), name, ok = result.is_ok(), "transfer ended");
    audit.finish(&result).await;
    Ok(result?.display().to_string())
}

/// An unnamed file in `dir` (O_TMPFILE), or where the file system has
/// none, a named one removed at once: either way gone when closed.
fn unnamed_file(dir: &Path) -> std::io::Result<File> {
    std::fs::create_dir_all(dir)?;
    use rustix::fs::{Mode, OFlags};
    match rustix::fs::open(dir, OFlags::TMPFILE | OFlags::RDWR | OFlags::CLOEXEC, Mode::from_raw_mode(0o600)) {
        Ok(fd) => Ok(File::from(fd)),
        Err(rustix::io::Errno::OPNOTSUPP | rustix::io::Errno::ISDIR | rustix::io::Errno::INVAL) => {
            use std::sync::atomic::AtomicU64;
            static SERIAL: AtomicU64 = AtomicU64::new(0);
            let path = dir.join(format!(
                "{}blob-{}-{}",
                crate::machine::store::TEMP_PREFIX,
                std::process::id(),
                SERIAL.fetch_add(1, Ordering::Relaxed)
            ));
            let file = std::fs::OpenOptions::new().read(true).write(true).create_new(true).open(&path)?;
            std::fs::remove_file(&path)?;
            Ok(file)
        }
        Err(e) => Err(e.into()),
    }
}

/// The tree: every layer applied in order, the config kept, and for a
/// portable image what a portable service needs.
#[allow(clippy::too_many_arguments)]
fn build_tree(
    root: &Path,
    name: &str,
    reference: &str,
    blobs: &[(String, File)],
    config_bytes: &[u8],
    config: &oci::ImageConfig,
    portable: bool,
    store: &Store,
) -> Result<(), StoreError> {
    let layer_error = |digest: &str, reason: String| {
        pulling_store(name, Error::Oci { what: format!("layer {digest}"), reason: Box::new(OciError::Layer(reason)) })
    };
    let mut budget = crate::machine::layer::Budget::default();
    for (digest, file) in blobs {
        if store.cancel.as_deref().is_some_and(|c| c.load(Ordering::SeqCst)) {
            return Err(StoreError::Cancelled(name.to_string()));
        }
        let mut file = file;
        file.seek(std::io::SeekFrom::Start(0)).map_err(|e| layer_error(digest, e.to_string()))?;
        let (_, reader) =
            crate::compress::decoder(BufReader::new(file)).map_err(|e| layer_error(digest, e.to_string()))?;
        crate::machine::layer::apply_layer(reader, root, &mut budget)
            .map_err(|e| layer_error(digest, e.to_string()))?;
    }
    let write = |path: &str, data: &[u8]| {
        crate::machine::layer::write_file(root, path, data).map_err(|source| StoreError::Io {
            name: name.to_string(),
            path: root.join(path),
            source,
        })
    };
    write(CONFIG_IN_IMAGE, config_bytes)?;
    if portable {
        let prefix =
            crate::image::name::ImageName::new(name).map(|n| n.prefix().to_string()).unwrap_or(name.to_string());
        if !crate::machine::layer::has_units(root, &prefix) {
            let run = config.config.clone().unwrap_or_default();
            let passwd = crate::machine::layer::read_file(root, "etc/passwd");
            let group = crate::machine::layer::read_file(root, "etc/group");
            let source = oci::service::Source {
                unit: &prefix,
                reference,
                config: &run,
                passwd: passwd.as_deref(),
                group: group.as_deref(),
            };
            let unit = oci::service::unit_file(&source)
                .map_err(|e| StoreError::Invalid { name: name.to_string(), reason: e.to_string() })?;
            write(&format!("usr/lib/systemd/system/{prefix}.service"), unit.as_bytes())?;
        }
        if crate::machine::layer::read_file(root, "etc/os-release").is_none()
            && crate::machine::layer::read_file(root, "usr/lib/os-release").is_none()
        {
            write("usr/lib/os-release", oci::service::os_release(&prefix, reference).as_bytes())?;
        }
        // systemd mounts over these in a portable service's namespace; a
        // read-only image cannot get them later.
        crate::machine::layer::ensure_files(root, &["etc/machine-id", "etc/resolv.conf"])
            .map_err(|source| StoreError::Io { name: name.to_string(), path: root.to_path_buf(), source })?;
        crate::machine::layer::ensure_dirs(root, &["proc", "sys", "dev", "run", "tmp", "var/tmp", "etc"])
            .map_err(|source| StoreError::Io { name: name.to_string(), path: root.to_path_buf(), source })?;
    }
    Ok(())
}

fn pulling_store(name: &str, source: Error) -> StoreError {
    StoreError::Pull { name: name.to_string(), source }
}

/// One registry conversation: its base URL and the token it gave.
struct Registry<'a> {
    daemon: &'a Arc<Daemon>,
    systemd: &'a Systemd,
    reference: &'a Reference,
    base: String,
    plain_http: oci::PlainHttp,
    token: Option<String>,
    cancel: Arc<AtomicBool>,
}

/// What a fetch brought.
struct Fetched {
    data: Vec<u8>,
    digest: Digest,
    bytes: u64,
    headers: Vec<(String, String)>,
}

impl Registry<'_> {
    /// The image manifest for this host (through an index if there is
    /// one), verified: its digest, its config and its layers.
    async fn image(&mut self) -> Result<(Digest, Descriptor, Vec<Descriptor>), Error> {
        let what = format!("manifest of {}", self.reference);
        let fail = |reason| Error::Oci { what: what.clone(), reason: Box::new(reason) };
        let fetched = self.manifest(&self.reference.manifest_ref()).await?;
        if let Some(pinned) = self.reference.digest
            && fetched.digest != pinned
        {
            return Err(fail(OciError::Digest {
                expected: pinned.to_string(),
                got: fetched.digest.to_string(),
                named_by: "the reference".into(),
            }));
        }
        let content_type = header(&fetched.headers, "content-type");
        match oci::parse_manifest(content_type, &fetched.data).map_err(fail)? {
            Manifest::Image { config, layers } => Ok((fetched.digest, config, layers)),
            Manifest::Index(manifests) => {
                let chosen = oci::select_platform(&manifests, &oci::host_platform()).map_err(fail)?.clone();
                let digest = Digest::parse(&chosen.digest).ok_or_else(|| {
                    fail(OciError::Manifest(format!(
                        "the index names '{}', not a sha256 digest",
                        oci::printable(&chosen.digest)
                    )))
                })?;
                let child = self.manifest(&digest.to_string()).await?;
                let what = format!("manifest {digest} of {}", self.reference);
                let fail = |reason| Error::Oci { what: what.clone(), reason: Box::new(reason) };
                if child.digest != digest {
                    return Err(fail(OciError::Digest {
                        expected: digest.to_string(),
                        got: child.digest.to_string(),
                        named_by: "the index".into(),
                    }));
                }
                match oci::parse_manifest(header(&child.headers, "content-type"), &child.data).map_err(fail)? {
                    Manifest::Image { config, layers } => Ok((digest, config, layers)),
                    Manifest::Index(_) => Err(fail(OciError::Manifest("an index in an index".into()))),
                }
            }
        }
    }

    async fn manifest(&mut self, reference: &str) -> Result<Fetched, Error> {
        let url = format!("{}/manifests/{reference}", self.base);
        let accept = format!("Accept: {}", oci::MANIFEST_TYPES.join(", "));
        self.get(&url, Some(&accept), Sink::Memory(oci::MANIFEST_LIMIT)).await
    }

    /// A small blob (the config), verified.
    async fn small_blob(&mut self, blob: &Descriptor, limit: u64) -> Result<Vec<u8>, Error> {
        let fetched = self.blob(blob, Sink::Memory(limit.min(blob.size.max(1)))).await?;
        Ok(fetched.data)
    }

    /// A layer into `file`, verified as it streams; `file` is returned
    /// only when every byte of it is the blob's.
    async fn blob_to_file(
        &mut self,
        blob: &Descriptor,
        file: File,
        done: u64,
        total: u64,
        progress: Shared<Reporter>,
    ) -> Result<File, Error> {
        let file = Arc::new(file);
        self.blob(blob, Sink::File { file: file.clone(), limit: blob.size, done, total, progress }).await?;
        Arc::try_unwrap(file).map_err(|_| Error::Setup("a layer's file is still in use".into()))
    }

    async fn blob(&mut self, blob: &Descriptor, sink: Sink) -> Result<Fetched, Error> {
        let what = format!("blob {}", blob.digest);
        let fail = |reason| Error::Oci { what: what.clone(), reason: Box::new(reason) };
        let expected = Digest::parse(&blob.digest)
            .ok_or_else(|| fail(OciError::Manifest("its digest is not sha256: and 64 hex digits".into())))?;
        let url = format!("{}/blobs/{expected}", self.base);
        let fetched = match self.get(&url, None, sink.bounded(blob.size)).await {
            Err(Error::Fetch { reason: Failure::TooLarge(_), .. }) => {
                return Err(fail(OciError::Size { expected: blob.size, got: blob.size + 1 }));
            }
            other => other?,
        };
        if fetched.bytes != blob.size {
            return Err(fail(OciError::Size { expected: blob.size, got: fetched.bytes }));
        }
        if fetched.digest != expected {
            return Err(fail(OciError::Digest {
                expected: expected.to_string(),
                got: fetched.digest.to_string(),
                named_by: "the manifest".into(),
            }));
        }
        Ok(fetched)
    }

    /// A GET with the token if there is one; a 401 with a Bearer challenge
    /// gets a token and is tried once more.
    async fn get(&mut self, url: &str, accept: Option<&str>, sink: Sink) -> Result<Fetched, Error> {
        let mut retried = false;
        loop {
            let mut headers: Vec<String> = accept.map(str::to_string).into_iter().collect();
            if let Some(token) = &self.token {
                headers.push(format!("Authorization: Bearer {token}"));
            }
            // Manifests and configs are small: a deadline ends a drip-fed one.
            let max_time = matches!(sink, Sink::Memory(_)).then(|| Deadlines::get().small_download);
            let fetcher = Fetcher::start_with(self.systemd, url, Some(&headers), max_time).await?;
            let unit = fetcher.unit.clone();
            let cancel = self.cancel.clone();
            let sink_now = sink.clone();
            let received = self.daemon.blocking(move || receive(fetcher, sink_now, &cancel)).await;
            stop_fetcher(self.systemd, &unit).await;
            if self.cancel.load(Ordering::SeqCst) {
                return Err(Error::Setup("the transfer was cancelled".into()));
            }
            match received {
                Ok(fetched) => return Ok(fetched),
                Err((Failure::Http(401), headers)) if !retried => {
                    let challenge = header(&headers, "www-authenticate");
                    let challenge = oci::Challenge::parse(challenge).ok_or_else(|| Error::Oci {
                        what: url.to_string(),
                        reason: Box::new(OciError::Auth(
                            "the registry wants credentials and says not how (HTTP 401)".into(),
                        )),
                    })?;
                    let token_url = challenge
                        .token_url(&self.reference.repository, self.plain_http)
                        .map_err(|reason| Error::Oci { what: url.to_string(), reason: Box::new(reason) })?;
                    let answer = super::pull::fetch_small_limited(self.daemon, self.systemd, &token_url, TOKEN_LIMIT)
                        .await
                        .map_err(|reason| Error::Fetch { url: token_url.clone(), reason })?;
                    let token = oci::parse_token(&answer)
                        .map_err(|reason| Error::Oci { what: token_url.clone(), reason: Box::new(reason) })?;
                    self.token = Some(token);
                    retried = true;
                }
                Err((Failure::Http(401), _)) => {
                    return Err(Error::Oci {
                        what: url.to_string(),
                        reason: Box::new(OciError::Auth(
                            "the registry refused its own token (HTTP 401): pulls are anonymous".into(),
                        )),
                    });
                }
                Err((reason, _)) => return Err(Error::Fetch { url: url.to_string(), reason }),
            }
        }
    }
}

fn header<'a>(headers: &'a [(String, String)], name: &str) -> &'a str {
    headers.iter().rev().find(|(n, _)| n == name).map_or("", |(_, v)| v.as_str())
}

/// Where a body goes: memory (at most so many bytes), or a file, with the
/// pull's progress.
#[derive(Clone)]
enum Sink {
    Memory(u64),
    File { file: Arc<File>, limit: u64, done: u64, total: u64, progress: Shared<Reporter> },
}

impl Sink {
    /// A body no longer than the blob is.
    fn bounded(self, size: u64) -> Sink {
        match self {
            Sink::Memory(limit) => Sink::Memory(limit.min(size)),
            Sink::File { file, done, total, progress, .. } => Sink::File { file, limit: size, done, total, progress },
        }
    }
}

/// Reads a fetcher's body into `sink`, hashing it, and its reports to
/// their end. A body longer than a blob's size is cut there: more than
/// the manifest announced is not what it named.
fn receive(fetcher: Fetcher, sink: Sink, cancel: &AtomicBool) -> Result<Fetched, (Failure, Vec<(String, String)>)> {
    let Fetcher { mut body, reports, .. } = fetcher;
    let limit = match &sink {
        Sink::Memory(limit) | Sink::File { limit, .. } => *limit,
    };
    let mut hasher = Sha256::new();
    let mut data = Vec::new();
    let mut bytes = 0u64;
    let mut buffer = vec![0u8; 1 << 20];
    let mut failure = None;
    loop {
        if cancel.load(Ordering::SeqCst) {
            failure = Some(Failure::Transfer("the transfer was cancelled".into()));
            break;
        }
        let mut ready = [nix::poll::PollFd::new(body.as_fd(), nix::poll::PollFlags::POLLIN)];
        match nix::poll::poll(&mut ready, nix::poll::PollTimeout::from(200u16)) {
            Ok(0) | Err(nix::errno::Errno::EINTR) => continue,
            _ => {}
        }
        let n = match body.read(&mut buffer) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) => {
                failure = Some(Failure::Transfer(format!("cannot read the download: {e}")));
                break;
            }
        };
        bytes += n as u64;
        if bytes > limit {
            failure = Some(Failure::TooLarge(limit));
            break;
        }
        hasher.update(&buffer[..n]);
        match &sink {
            Sink::Memory(_) => data.extend_from_slice(&buffer[..n]),
            Sink::File { file, done, total, progress, .. } => {
                if let Err(e) = (&**file).write_all(&buffer[..n]) {
                    failure = Some(Failure::Transfer(format!("cannot keep the download: {e}")));
                    break;
                }
                if let Ok(mut report) = progress.lock() {
                    report(done + bytes, *total);
                }
            }
        }
    }
    drop(body);
    if let Some(failure) = failure {
        // Its reports end only with the fetcher, which the caller stops.
        return Err((failure, Vec::new()));
    }
    let reports = reports.join().unwrap_or_default();
    let headers: Vec<(String, String)> = reports
        .iter()
        .filter_map(|r| match r {
            Report::Header(name, value) => Some((name.clone(), value.clone())),
            _ => None,
        })
        .collect();
    if let Err(failure) = crate::pull::fetch::outcome(&reports, bytes) {
        return Err((failure, headers));
    }
    Ok(Fetched { data, digest: Digest(hasher.finalize().into()), bytes, headers })
}
