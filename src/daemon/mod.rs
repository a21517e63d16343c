//! wharfd: the D-Bus activated system service that does all of wharf's
//! privileged work. It serves `org.wharf1` on the system bus and exits once it
//! has been idle for a while; the bus starts it again on the next call.

pub(crate) mod auth;
mod commit;
mod fleet;
mod machine;
mod manager;
mod oci;
mod portable;
mod pull;
mod snapshot;
mod transfer;
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
    /// Attaches and detaches waiting for that lock, applied together.
    pub(crate) commits: commit::Commits,
    /// What reads answer from while a change holds that lock.
    pub(crate) snapshot: snapshot::Snapshot,
    /// Imports and exports in flight (`machine list-transfers`).
    pub(crate) transfers: transfer::Transfers,
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
    /// 600); reads never take it (see [`snapshot`]).
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
    // Everywhere a transaction writes: the unit directories, portabled's
    // (the mirrors portablectl reads) and the search path's links.
    let unit_dirs = [
        "/etc/systemd/system",
        "/run/systemd/system",
        "/etc/systemd/system.attached",
        "/run/systemd/system.attached",
        "/etc/portables",
        "/run/portables",
    ]
    .map(std::path::PathBuf::from);
    let recovered = zruntime::unblock(move || {
        let recovered = crate::transaction::recover(journal, &unit_dirs);
        crate::machine::store::Store::machines().remove_leftovers();
        crate::machine::store::Store::portables().remove_leftovers();
        let partial = crate::image::xz::remove_partial(crate::image::Pool::portables().home());
        if partial > 0 {
            tracing::warn!("removed {partial} partial decompression(s) left by a crash");
        }
        recovered
    })
    .await;
    match recovered {
        Ok(report) => {
            if report.recovered > 0 {
                tracing::warn!("recovered {} interrupted operation(s)", report.recovered);
                if let Err(e) = settle_recovery(&report.units).await {
                    tracing::error!("after recovery, the units could not all be put back: {e}");
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
    // The builder starts serving the interfaces before it asks for the
    // name: a call that arrives as soon as the name is ours (the one that
    // activated wharfd) is dispatched, where an object server set up on an
    // open connection may not yet listen and would lose it for good.
    let connection = bus_builder()
        .serve_at(OBJECT_PATH, manager::ManagerInterface::new(daemon.clone()))
        .serve_at(OBJECT_PATH, portable::PortableInterface::new(daemon.clone()))
        .serve_at(OBJECT_PATH, machine::MachineInterface::new(daemon.clone()))
        .serve_at(OBJECT_PATH, fleet::FleetInterface::new(daemon.clone()))
        .name(BUS_NAME)
        .build()
        .await?;
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

/// Every call wharfd makes has a deadline; this one, the longest any
/// call may take, also bounds the calls made without one of their own.
fn bus_builder() -> zbus::connection::Builder<'static> {
    zbus::connection::Builder::system().method_timeout(Deadlines::get().undo)
}

/// Puts back the units (and machines) of the changes a crash interrupted,
/// on a connection of its own: wharfd serves no call until this is done.
async fn settle_recovery(units: &crate::transaction::UnitsOnRollback) -> Result<(), String> {
    let connection = bus_builder().build().await.map_err(|e| e.to_string())?;
    let systemd = Systemd::new(&connection).await.map_err(|e| e.to_string())?;
    let mut failed = crate::portable::ops::settle_recovery(&systemd, units).await;
    if !units.terminate_machines.is_empty() || !units.start_machines.is_empty() {
        let machined = zbus_systemd::machine1::ManagerProxy::new(&connection)
            .await
            .map_err(|e| format!("machines could not be put back: {e}"))?;
        let machines = crate::machine::ops::Machines::system();
        failed.extend(
            machines.settle_recovery(&systemd, &machined, &units.terminate_machines, &units.start_machines).await,
        );
    }
    if failed.is_empty() { Ok(()) } else { Err(crate::transaction::describe_failed(&failed)) }
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
        | E::WrongDigest { .. }
        | E::NoExtensionRelease { .. }
        | E::ExtensionRelease { .. }
        | E::ExtensionMismatch { .. }
        | E::Verity { .. }
        | E::VerityMismatch { .. } => BusError::BadImage(message),
        E::DigestOfDirectory(_) => BusError::InvalidArgument(message),
        E::NeedsPrivilege { .. } => BusError::AccessDenied(message),
        E::XzTargetExists { .. } => BusError::Conflict(message),
        E::Io { .. } | E::Mount { .. } => BusError::Failed(message),
    }
}
