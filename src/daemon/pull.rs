//! Pulls, for both `org.wharf1.Machine` and `org.wharf1.Portable`: the
//! fetcher units that download, the checks of `SHA256SUMS` and its
//! signature, and the pipe through which the image streams into the store.

use std::fs::File;
use std::io::{BufRead, BufReader, Read, Write};
use std::os::fd::AsFd;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use sha2::{Digest, Sha256};
use zbus::Connection;
use zbus::message::Header;

use super::auth::authorize;
use super::manager::{heartbeat, progress_reporter};
use super::{Daemon, failed};
use crate::api::{BusError, pull_flags};
use crate::audit::{Call, Kind};
use crate::machine::store::{Error as StoreError, Progress, Staged, Store};
use crate::pull::fetch::{Failure, Report};
use crate::pull::{Error, Source, Verify, signature, sums};
use crate::systemd::{Deadlines, Systemd};

/// A `SHA256SUMS` or a signature is small; a server that sends more is
/// not sending one.
const SMALL_FILE_LIMIT: u64 = 1 << 20;
/// More than a fetcher's reports (a few short lines) ever take.
const REPORTS_LIMIT: u64 = 64 << 10;
/// Where gpgv gets a private directory for the files it checks.
const SCRATCH: &str = "/run/wharf";

/// What the data is to become.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Format {
    /// A raw disk or file system image (`pull-raw`).
    Raw,
    /// A tar archive, unpacked into a directory image (`pull-tar`).
    Tar,
    /// Whichever of the two the data is (`portable pull`).
    Any,
}

#[derive(Debug, Clone)]
pub(crate) struct Request {
    pub url: String,
    /// The image name; empty: from the URL's file name.
    pub name: String,
    pub format: Format,
    pub verify: String,
    /// [`crate::api::pull_flags`].
    pub flags: u64,
    /// `pull-raw`, `pull-tar` or `pull`, as list-transfers shows it.
    pub kind: &'static str,
}

/// Runs a pull for a root caller: checked, downloaded, verified and given
/// its name, or refused with nothing left behind. Returns the image's path.
pub(crate) async fn pull(
    daemon: &Arc<Daemon>,
    store: &Store,
    connection: &Connection,
    header: &Header<'_>,
    request: Request,
) -> Result<String, BusError> {
    let caller = authorize(connection, header, "pulling an image").await?;
    let source = Source::parse(&request.url);
    let name = match (&source, request.name.is_empty()) {
        (Ok(source), true) => source.local_name(),
        _ => request.name.clone(),
    };
    let audit = Call::new(Kind::Import, caller).image(&store.pool, &name).field("WHARF_URL", request.url.clone());
    let running =
        Running::begin(daemon, store, connection, header, (request.kind, &name, &request.url), request.flags).await;
    let Running { ref registration, ref store, .. } = running;
    let mut progress = registration.track(progress_reporter(connection, header, &format!("pull {name}")));
    let result = async {
        if request.flags & !pull_flags::ALL != 0 {
            return Err(BusError::InvalidArgument(format!("unknown flags {:#x}", request.flags & !pull_flags::ALL)));
        }
        let source = source.map_err(|e| pulling(&name, e))?;
        let verify: Verify = request.verify.parse().map_err(|e| pulling(&name, e))?;
        running.check_name(daemon, &name).await?;
        let systemd = Systemd::new(connection).await.map_err(failed)?;
        let expected = expected_digest(daemon, &systemd, &source, verify).await.map_err(|e| pulling(&name, e))?;
        let fetcher = Fetcher::start(&systemd, source.url()).await.map_err(|e| pulling(&name, e))?;
        let unit = fetcher.unit.clone();
        let received = {
            let (store, name, url, format) = (store.clone(), name.clone(), request.url.clone(), request.format);
            daemon.blocking(move || receive(&store, fetcher, &name, &url, format, expected, &mut progress)).await
        };
        stop_fetcher(&systemd, &unit).await;
        let path = received?;
        if request.flags & pull_flags::READ_ONLY != 0 {
            let (pool, name) = (store.pool.clone(), name.clone());
            daemon.blocking(move || super::portable::mark_read_only(&pool, &name, true)).await?;
        }
        tracing::info!(image = %path.display(), url = request.url, %verify, "pulled");
        Ok::<PathBuf, BusError>(path)
    }
    .await;
    tracing::debug!(id = registration.id(), name, ok = result.is_ok(), "transfer ended");
    audit.finish(&result).await;
    Ok(result?.display().to_string())
}

/// What a pull holds while it runs: its entry in list-transfers, the
/// client's heartbeat, the watch that cancels it when the caller leaves,
/// and the store it writes to (cancelled with it; replacing with `--force`).
pub(super) struct Running {
    pub(super) registration: super::transfer::Registration,
    pub(super) store: Store,
    pub(super) force: bool,
    _heartbeat: Option<zruntime::Task<(), zruntime::Shared>>,
    _watch: Option<zruntime::Task<(), zruntime::Shared>>,
}

impl Running {
    /// Registers the pull (`kind`, local name, remote) of `flags`.
    pub(super) async fn begin(
        daemon: &Daemon,
        store: &Store,
        connection: &Connection,
        header: &Header<'_>,
        (kind, name, remote): (&'static str, &str, &str),
        flags: u64,
    ) -> Running {
        let registration = daemon.transfers.register(kind, name, remote, &super::transfer::caller_of(header));
        let heartbeat = heartbeat(connection, header);
        let watch = super::transfer::cancel_when_caller_leaves(connection, &registration).await;
        let force = flags & pull_flags::FORCE != 0;
        let store = store.clone().with_cancel(registration.cancel_flag());
        let store = if force { store.replacing() } else { store };
        Running { registration, store, force, _heartbeat: heartbeat, _watch: watch }
    }

    /// Before anything is downloaded: the name must be free, or (forced)
    /// hold only what may be replaced.
    pub(super) async fn check_name(&self, daemon: &Arc<Daemon>, name: &str) -> Result<(), BusError> {
        let (store, name, force) = (self.store.clone(), name.to_string(), self.force);
        daemon
            .blocking(move || if force { store.replaceable(&name).map(drop) } else { store.check_free(&name) })
            .await?;
        Ok(())
    }
}

pub(super) fn pulling(name: &str, source: Error) -> BusError {
    BusError::from(StoreError::Pull { name: name.to_string(), source })
}

/// The digest the image must have, and the file that says so; `None` for
/// `--verify=no`. With `--verify=signature`, that file's signature is
/// checked first.
async fn expected_digest(
    daemon: &Arc<Daemon>,
    systemd: &Systemd,
    source: &Source,
    verify: Verify,
) -> Result<Option<([u8; 32], String)>, Error> {
    if verify == Verify::No {
        return Ok(None);
    }
    // Before anything is downloaded: a host without a keyring cannot check.
    let keyring = match verify {
        Verify::Signature => {
            Some(signature::keyring().map_err(|reason| Error::Signature { url: source.url().into(), reason })?)
        }
        _ => None,
    };
    let candidates = [source.beside("SHA256SUMS"), source.with_suffix(".sha256")];
    let (sums_url, sums) = first_found(daemon, systemd, "no list of digests", &candidates).await?;
    if let Some(keyring) = keyring {
        let signatures = [format!("{sums_url}.gpg"), format!("{sums_url}.asc")];
        let (signature_url, signature) = first_found(daemon, systemd, "no signature of it", &signatures).await?;
        let data = sums.clone();
        let checked = daemon
            .blocking(move || signature::verify(&keyring, &data, &signature, std::path::Path::new(SCRATCH)))
            .await;
        checked.map_err(|reason| Error::Signature { url: signature_url, reason })?;
    }
    let digest = if sums_url.ends_with(".sha256") {
        sums::digest_in_sha256_file(&sums, source.file_name())
    } else {
        sums::digest_of(&sums, source.file_name())
    };
    let digest = digest.map_err(|reason| Error::Sums { url: sums_url.clone(), reason })?;
    Ok(Some((digest, sums_url)))
}

/// The first of `urls` the server has, with its contents; else the error
/// says the server has `missing`.
async fn first_found(
    daemon: &Arc<Daemon>,
    systemd: &Systemd,
    missing: &str,
    urls: &[String],
) -> Result<(String, Vec<u8>), Error> {
    for url in urls {
        match fetch_small(daemon, systemd, url).await {
            Ok(data) => return Ok((url.clone(), data)),
            Err(reason) if reason.is_not_found() => continue,
            Err(reason) => return Err(Error::Fetch { url: url.clone(), reason }),
        }
    }
    Err(Error::Setup(format!("the server has {missing} (neither {})", urls.join(" nor "))))
}

async fn fetch_small(daemon: &Arc<Daemon>, systemd: &Systemd, url: &str) -> Result<Vec<u8>, Failure> {
    fetch_small_limited(daemon, systemd, url, SMALL_FILE_LIMIT).await
}

/// A whole file of at most `limit` bytes.
pub(super) async fn fetch_small_limited(
    daemon: &Arc<Daemon>,
    systemd: &Systemd,
    url: &str,
    limit: u64,
) -> Result<Vec<u8>, Failure> {
    let deadline = Some(Deadlines::get().small_download);
    let fetcher = Fetcher::start_with(systemd, url, None, deadline).await.map_err(|e| match e {
        Error::Fetch { reason, .. } => reason,
        other => Failure::Start(other.to_string()),
    })?;
    let unit = fetcher.unit.clone();
    let read = daemon.blocking(move || fetcher.read_all(limit)).await;
    stop_fetcher(systemd, &unit).await;
    read
}

/// Stops a fetcher's unit: gone already when its download ended, still
/// running when the pull stopped reading first.
pub(super) async fn stop_fetcher(systemd: &Systemd, unit: &str) {
    if let Err(e) = systemd.stop(&[unit.to_string()], false).await {
        tracing::debug!(unit, "the fetcher was gone: {e}");
    }
}

/// A `wharfd fetch` in a transient unit of its own, its output on a pipe.
pub(super) struct Fetcher {
    pub(super) unit: String,
    pub(super) body: File,
    /// Its reports, read to their end (the fetcher's) by a thread.
    pub(super) reports: std::thread::JoinHandle<Vec<Report>>,
    pub(super) size: Arc<AtomicU64>,
}

impl Fetcher {
    async fn start(systemd: &Systemd, url: &str) -> Result<Fetcher, Error> {
        Fetcher::start_with(systemd, url, None, None).await
    }

    /// A fetcher that sends `headers` (given on its standard input, not on
    /// its command line) and reports the response headers a registry
    /// pull needs; it ends after `max_time` if that is given.
    pub(super) async fn start_with(
        systemd: &Systemd,
        url: &str,
        headers: Option<&[String]>,
        max_time: Option<std::time::Duration>,
    ) -> Result<Fetcher, Error> {
        use std::sync::atomic::AtomicU32;
        static SERIAL: AtomicU32 = AtomicU32::new(0);
        let start_failed = |reason: String| Error::Fetch { url: url.to_string(), reason: Failure::Start(reason) };
        let unit = format!("wharf-fetch-{}-{}.service", std::process::id(), SERIAL.fetch_add(1, Ordering::Relaxed));
        let (body, body_end) = pipe().map_err(|e| start_failed(e.to_string()))?;
        let (reports, reports_end) = pipe().map_err(|e| start_failed(e.to_string()))?;
        let exe = std::env::current_exe().map_err(|e| start_failed(e.to_string()))?;
        let mut argv = vec![exe.to_string_lossy().into_owned(), "fetch".into()];
        if headers.is_some() {
            argv.push("--headers".into());
        }
        if let Some(max_time) = max_time {
            argv.push(format!("--max-time={}", max_time.as_secs().max(1)));
        }
        argv.extend(["--".into(), url.to_string()]);
        let descriptor = |fd: File| crate::systemd::descriptor(std::os::fd::OwnedFd::from(fd).into());
        let mut properties = vec![
            ("Description".into(), crate::systemd::text(&format!("wharf download of {url}"))),
            ("Type".into(), crate::systemd::text("exec")),
            ("CollectMode".into(), crate::systemd::text("inactive-or-failed")),
            ("ExecStartEx".into(), crate::systemd::exec_start_literal(&argv)),
            ("StandardOutputFileDescriptor".into(), descriptor(body_end).map_err(|e| start_failed(e.to_string()))?),
            ("StandardErrorFileDescriptor".into(), descriptor(reports_end).map_err(|e| start_failed(e.to_string()))?),
        ];
        if let Some(headers) = headers {
            // A few short lines: they fit in the pipe before anyone reads.
            let (input, mut input_end) = pipe().map_err(|e| start_failed(e.to_string()))?;
            let text: String = headers.iter().map(|h| format!("{h}\n")).collect();
            input_end.write_all(text.as_bytes()).map_err(|e| start_failed(e.to_string()))?;
            drop(input_end);
            properties.push((
                "StandardInputFileDescriptor".into(),
                descriptor(input).map_err(|e| start_failed(e.to_string()))?,
            ));
        }
        properties.extend(sandbox());
        systemd
            .start_transient(&unit, properties, Deadlines::get().job)
            .await
            .map_err(|e| start_failed(e.to_string()))?;
        let size = Arc::new(AtomicU64::new(0));
        let told = size.clone();
        let reports = std::thread::spawn(move || read_reports(reports, &told));
        Ok(Fetcher { unit, body, reports, size })
    }

    /// The whole file, at most `limit` bytes of it.
    fn read_all(self, limit: u64) -> Result<Vec<u8>, Failure> {
        let mut data = Vec::new();
        let read = (&self.body).take(limit + 1).read_to_end(&mut data);
        drop(self.body);
        let reports = self.reports.join().unwrap_or_default();
        crate::pull::fetch::outcome(&reports, data.len() as u64)?;
        read.map_err(|e| Failure::Transfer(format!("cannot read the download: {e}")))?;
        if data.len() as u64 > limit {
            return Err(Failure::TooLarge(limit));
        }
        Ok(data)
    }
}

/// What the fetcher's unit may do: reach the network and write to its
/// pipes, as a user of its own with no capabilities; nothing on the host
/// is writable to it and no device is there.
fn sandbox() -> Vec<(String, zbus::OwnedVariant)> {
    let variant =
        |value: zbus::Variant<'_>| zbus::OwnedVariant::try_from(value).expect("plain values hold no descriptor");
    let yes = |name: &str| (name.to_string(), variant(true.into()));
    let families: Vec<String> = ["AF_INET", "AF_INET6", "AF_UNIX", "AF_NETLINK"].map(String::from).into();
    vec![
        yes("DynamicUser"),
        yes("NoNewPrivileges"),
        yes("PrivateTmp"),
        yes("PrivateDevices"),
        yes("LockPersonality"),
        yes("RestrictRealtime"),
        yes("MemoryDenyWriteExecute"),
        ("ProtectSystem".into(), crate::systemd::text("strict")),
        ("ProtectHome".into(), crate::systemd::text("yes")),
        ("CapabilityBoundingSet".into(), variant(0u64.into())),
        // (allow-list, families)
        ("RestrictAddressFamilies".into(), variant((true, families).into())),
        ("MemoryMax".into(), variant((512u64 << 20).into())),
    ]
}

/// A fetcher's reports, read to their end (the fetcher's); the size it
/// tells goes to `size` as soon as it comes. The fetcher talks to a server
/// wharf does not trust: what it says is read only up to what a real
/// fetcher ever says, so that one subverted cannot fill wharfd's memory or
/// journal.
pub(super) fn read_reports(reports: impl Read, size: &AtomicU64) -> Vec<Report> {
    let mut all = Vec::new();
    for line in BufReader::new(reports.take(REPORTS_LIMIT)).lines() {
        let Ok(line) = line else { break };
        match Report::parse(&line) {
            Some(report) => {
                if let Report::Size(told) = report {
                    size.store(told, Ordering::Relaxed);
                }
                all.push(report);
            }
            None => tracing::warn!("the fetcher said: {line}"),
        }
    }
    all
}

pub(super) fn pipe() -> std::io::Result<(File, File)> {
    let (read, write) = nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC).map_err(std::io::Error::from)?;
    Ok((File::from(read), File::from(write)))
}

/// The download streamed into the store: hashed on the way, built under a
/// temporary name, and given its name only once the fetcher said the file
/// was complete and its digest is the expected one.
fn receive(
    store: &Store,
    fetcher: Fetcher,
    name: &str,
    url: &str,
    format: Format,
    expected: Option<([u8; 32], String)>,
    progress: Progress<'_>,
) -> Result<PathBuf, BusError> {
    let (store_end, tee_end) = pipe().map_err(failed)?;
    let stop = AtomicBool::new(false);
    let Fetcher { body, reports, size, .. } = fetcher;
    let (staged, teed) = std::thread::scope(|scope| {
        let (hash, stop, size) = (expected.is_some(), &stop, &size);
        let tee = scope.spawn(move || tee(body, tee_end, hash, size, stop, store.cancel.as_deref(), progress));
        let staged = stage(store, store_end, name, format);
        // A refused stage needs no more of an unchecked download. A checked
        // one is read to its end all the same: that the file is not the
        // one its SHA256SUMS lists says more than what it failed as.
        if staged.is_err() && expected.is_none() {
            stop.store(true, Ordering::SeqCst);
        }
        (staged, tee.join().unwrap_or_else(|_| Err(std::io::Error::other("the download's reader failed"))))
    });
    let fetch_failed = |reason| pulling(name, Error::Fetch { url: url.to_string(), reason });
    let teed = match teed {
        Ok(teed) => teed,
        Err(e) => {
            return Err(staged
                .err()
                .map(BusError::from)
                .unwrap_or_else(|| fetch_failed(Failure::Transfer(e.to_string()))));
        }
    };
    if teed.abandoned {
        // Refused or cancelled: the stage says which. (The fetcher's
        // reports end only with it, and the caller stops it.)
        let cancelled = store.cancel.as_deref().is_some_and(|c| c.load(Ordering::SeqCst));
        return Err(match staged {
            Err(e) if !cancelled => e.into(),
            _ => StoreError::Cancelled(name.to_string()).into(),
        });
    }
    // The whole body came: the fetcher is ending, and its reports with it.
    let reports = reports.join().unwrap_or_default();
    // The download's own failure explains a failed stage (a 404 is an
    // empty image).
    crate::pull::fetch::outcome(&reports, teed.bytes).map_err(fetch_failed)?;
    if let Some((expected, sums)) = expected
        && teed.digest != Some(expected)
    {
        return Err(pulling(
            name,
            Error::Mismatch {
                url: url.to_string(),
                sums,
                got: crate::pull::hex(&teed.digest.unwrap_or_default()),
                expected: crate::pull::hex(&expected),
            },
        ));
    }
    Ok(staged?.commit()?)
}

fn stage(store: &Store, input: File, name: &str, format: Format) -> Result<Staged, StoreError> {
    let mut quiet = |_: u64, _: u64| {};
    match format {
        Format::Raw => store.stage_raw(input, name, &mut quiet),
        Format::Tar => store.stage_tar(input, name, &mut quiet),
        Format::Any => store.stage_any(input, name, &mut quiet),
    }
}

struct Teed {
    /// SHA-256 of the whole download, when it was asked for.
    digest: Option<[u8; 32]>,
    bytes: u64,
    /// The reading stopped before the end (the stage was refused, or the
    /// pull cancelled).
    abandoned: bool,
}

/// Copies the download to the store's pipe, hashing every byte when
/// `hash` (a pull with `--verify=no` has no digest to compare). When the
/// store stops reading early (an image ends before its file does) the rest
/// is still read and hashed: the digest is of the whole file.
fn tee(
    mut body: File,
    into: File,
    hash: bool,
    size: &AtomicU64,
    stop: &AtomicBool,
    cancel: Option<&AtomicBool>,
    progress: Progress<'_>,
) -> std::io::Result<Teed> {
    let mut hasher = hash.then(Sha256::new);
    let mut into = Some(into);
    let mut buffer = vec![0u8; 1 << 20];
    let mut bytes = 0u64;
    loop {
        if stop.load(Ordering::SeqCst) || cancel.is_some_and(|c| c.load(Ordering::SeqCst)) {
            return Ok(Teed { digest: hasher.map(|h| h.finalize().into()), bytes, abandoned: true });
        }
        // Waited for a little at a time, so that a stalled server does not
        // hold up a cancel or a refusal.
        let mut ready = [nix::poll::PollFd::new(body.as_fd(), nix::poll::PollFlags::POLLIN)];
        match nix::poll::poll(&mut ready, nix::poll::PollTimeout::from(200u16)) {
            Ok(0) | Err(nix::errno::Errno::EINTR) => continue,
            _ => {}
        }
        let n = match body.read(&mut buffer) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        };
        if let Some(hasher) = &mut hasher {
            hasher.update(&buffer[..n]);
        }
        bytes += n as u64;
        progress(bytes, size.load(Ordering::Relaxed));
        if let Some(pipe) = &mut into
            && pipe.write_all(&buffer[..n]).is_err()
        {
            into = None;
        }
    }
    Ok(Teed { digest: hasher.map(|h| h.finalize().into()), bytes, abandoned: false })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_fetchers_reports_are_read_within_their_bound() {
        let size = AtomicU64::new(0);
        let reports = read_reports(&b"size 10\nnoise\ndone 10\n"[..], &size);
        assert_eq!(reports, [Report::Size(10), Report::Done(10)]);
        assert_eq!(size.load(Ordering::Relaxed), 10);
        // A subverted fetcher that never stops talking is read no further
        // than the bound, and what it said after it does not count.
        let endless = std::io::repeat(b'x').take(REPORTS_LIMIT * 4).chain(&b"\ndone 10\n"[..]);
        assert!(read_reports(endless, &size).is_empty());
    }
}
