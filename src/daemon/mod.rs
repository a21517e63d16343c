//! wharfd: the D-Bus activated system service that does all of wharf's
//! privileged work. It serves `org.wharf1` on the system bus and exits once it
//! has been idle for a while; the bus starts it again on the next call.

mod auth;
mod fleet;
mod machine;
mod manager;
mod portable;
pub(crate) mod watchdog;

use std::pin::pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use futures_util::future::{Either, select};

use std::path::Path;

use crate::api::{BUS_NAME, BusError, OBJECT_PATH};
use crate::systemd::{Deadlines, Systemd};

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("cannot serve {BUS_NAME} on the system bus: {0}")]
    Bus(#[from] zbus::Error),
    #[error("cannot start the async runtime: {0}")]
    Runtime(#[source] std::io::Error),
}

#[derive(Debug, Clone)]
pub struct Options {
    /// Exit after this long without a call; `None` runs until killed.
    pub idle_timeout: Option<Duration>,
}

/// State shared by all interfaces of the daemon.
#[derive(Debug, Default)]
pub(crate) struct Daemon {
    /// Calls in progress; the daemon never exits while one runs.
    busy: AtomicUsize,
    /// Held by every operation that changes portable attachments: they
    /// plan against the host as it is, so they must not interleave.
    pub(crate) portable_lock: zruntime::lock::Mutex<()>,
}

/// Marks the daemon busy for as long as it lives.
pub(crate) struct BusyGuard(Arc<Daemon>);

impl Drop for BusyGuard {
    fn drop(&mut self) {
        self.0.busy.fetch_sub(1, Ordering::SeqCst);
    }
}

impl Daemon {
    pub(crate) fn busy(self: &Arc<Self>) -> BusyGuard {
        self.busy.fetch_add(1, Ordering::SeqCst);
        BusyGuard(self.clone())
    }

    /// Runs blocking work (file system walks, image reads, writes) on a
    /// thread pool, keeping the bus responsive and the daemon marked busy.
    pub(crate) async fn blocking<T, F>(self: &Arc<Self>, work: F) -> T
    where
        F: FnOnce() -> T + Send + 'static,
        T: Send + 'static,
    {
        let _busy = self.busy();
        zruntime::unblock(work).await
    }

    /// Takes the lock every change of portable attachments holds, waiting
    /// behind another change at most `WHARF_LOCK_TIMEOUT` seconds (default
    /// 600); reads never take it.
    pub(crate) async fn change_lock(&self, what: &str) -> Result<zruntime::lock::MutexGuard<'_, ()>, BusError> {
        let seconds = std::env::var("WHARF_LOCK_TIMEOUT").ok().and_then(|v| v.trim().parse::<u64>().ok());
        let timeout = Duration::from_secs(seconds.filter(|&s| s > 0).unwrap_or(600));
        let runtime = zruntime::SharedRuntime::current().map_err(failed)?;
        runtime.timeout(timeout, self.portable_lock.lock()).await.map_err(|_| {
            BusError::Busy(format!(
                "{what}: another change of portable services has been running for over {} s (see journalctl -u wharfd)",
                timeout.as_secs()
            ))
        })
    }
}

/// Serves the bus until idle (or forever without an idle timeout).
pub fn run(options: Options) -> Result<(), Error> {
    zbus::block_on(serve(options))
}

async fn serve(options: Options) -> Result<(), Error> {
    let daemon = Arc::new(Daemon::default());
    // Finish what a crash interrupted before taking any call: a half-done
    // attach or detach is rolled back (or a half-done commit completed).
    let journal = Path::new(crate::transaction::JOURNAL_DIR);
    let unit_dirs = [std::path::PathBuf::from("/etc/systemd/system"), std::path::PathBuf::from("/run/systemd/system")];
    let recovered = zruntime::unblock(move || {
        let recovered = crate::transaction::recover(journal, &unit_dirs);
        crate::machine::store::Store::machines().remove_leftovers();
        let partial = crate::image::xz::remove_partial(crate::image::Pool::portables().home());
        if partial > 0 {
            tracing::warn!("removed {partial} partial decompression(s) left by a crash");
        }
        recovered
    })
    .await;
    // Every call wharfd makes has a deadline; this one, the longest any
    // call may take, also bounds the calls made without one of their own.
    let connection = zbus::connection::Builder::system().method_timeout(Deadlines::get().undo).build().await?;
    match recovered {
        Ok(report) => {
            if report.recovered > 0 {
                tracing::warn!("recovered {} interrupted operation(s)", report.recovered);
                match Systemd::new(&connection).await {
                    Ok(systemd) => {
                        let failed = crate::portable::ops::settle_recovery(&systemd, &report.units).await;
                        if !failed.is_empty() {
                            let failed = crate::transaction::describe_failed(&failed);
                            tracing::error!("after recovery, the units could not all be put back: {failed}");
                        }
                    }
                    Err(e) => tracing::error!("reloading systemd after recovery: {e}"),
                }
            }
            // Each is logged where it failed; every change is refused
            // (and retries it) until it can be finished.
            if !report.unresolved.is_empty() {
                tracing::error!("{} interrupted operation(s) could not be put back", report.unresolved.len());
            }
        }
        Err(e) => tracing::error!("recovering interrupted operations: {e}"),
    }
    let server = connection.object_server();
    server.at(OBJECT_PATH, manager::ManagerInterface).await?;
    server.at(OBJECT_PATH, portable::PortableInterface::new(daemon.clone())).await?;
    server.at(OBJECT_PATH, machine::MachineInterface::new(daemon.clone())).await?;
    server.at(OBJECT_PATH, fleet::FleetInterface::new(daemon.clone())).await?;
    connection.request_name(BUS_NAME).await?;
    tracing::info!("serving {BUS_NAME}");
    let _watchdog = watchdog::start(&connection);

    let Some(idle_timeout) = options.idle_timeout else {
        std::future::pending::<()>().await;
        unreachable!("pending never completes");
    };
    let runtime = zruntime::SharedRuntime::current().map_err(Error::Runtime)?;
    loop {
        let activity = connection.monitor_activity();
        match select(pin!(activity), pin!(runtime.sleep(idle_timeout))).await {
            Either::Left(_) => continue,
            Either::Right(_) if daemon.busy.load(Ordering::SeqCst) > 0 => continue,
            Either::Right(_) => break,
        }
    }
    // Give the name up first, so a call arriving now activates a new wharfd
    // instead of reaching one that is leaving.
    tracing::info!("idle for {idle_timeout:?}, exiting");
    connection.release_name(BUS_NAME).await?;
    connection.graceful_shutdown().await;
    Ok(())
}

/// What a D-Bus error says, without its name: the message a peer (machined,
/// systemd) gave, for our own one-line errors.
pub(crate) fn describe(error: &zbus::Error) -> String {
    match error {
        zbus::Error::MethodError(_, Some(description), _) => description.clone(),
        other => other.to_string(),
    }
}

/// Turns a library error into the one-line D-Bus error a client prints.
pub(crate) fn failed(error: impl std::fmt::Display) -> BusError {
    BusError::Failed(error.to_string())
}

impl From<crate::image::Error> for BusError {
    fn from(error: crate::image::Error) -> Self {
        let message = error.to_string();
        image_bus_error(&error, message)
    }
}

/// The D-Bus error for an image error, carrying `message`.
pub(crate) fn image_bus_error(error: &crate::image::Error, message: String) -> BusError {
    use crate::image::Error as E;
    match error {
        E::NotFound(..) => BusError::NoSuchImage(message),
        E::Io { source, .. } if source.kind() == std::io::ErrorKind::NotFound => BusError::NoSuchImage(message),
        E::Name(_) | E::PrefixNotAllowed { .. } => BusError::InvalidArgument(message),
        E::NotAnImage(_)
        | E::Unsupported { .. }
        | E::Read { .. }
        | E::Corrupt { .. }
        | E::NoOsRelease(_)
        | E::NoRootPartition { .. }
        | E::Unit { .. }
        | E::TooLarge { .. }
        | E::WrongDigest { .. } => BusError::BadImage(message),
        E::DigestOfDirectory(_) => BusError::InvalidArgument(message),
        E::NeedsPrivilege { .. } => BusError::AccessDenied(message),
        E::XzTargetExists { .. } => BusError::Conflict(message),
        E::Io { .. } | E::Mount { .. } => BusError::Failed(message),
    }
}
