//! `org.wharf1.Manager`: facts about the daemon itself, and the progress
//! of long operations.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use zbus::Connection;
use zbus::message::Header;
use zbus::object_server::SignalEmitter;

use crate::api::OBJECT_PATH;

#[derive(Debug)]
pub(crate) struct ManagerInterface {
    daemon: Arc<super::Daemon>,
}

impl ManagerInterface {
    pub(crate) fn new(daemon: Arc<super::Daemon>) -> Self {
        ManagerInterface { daemon }
    }
}

#[zbus::interface(name = "org.wharf1.Manager")]
impl ManagerInterface {
    /// wharfd's version.
    #[zbus(property)]
    fn version(&self) -> String {
        env!("CARGO_PKG_VERSION").to_string()
    }

    /// Progress of a long operation (decompression, import, export, clone),
    /// sent only to the caller that asked for it: what, bytes done, bytes in
    /// all (0 when unknown). Also sent with an empty `what` every
    /// [`HEARTBEAT_INTERVAL`] while a change runs, so that a client can
    /// tell a long operation from a wharfd that stopped answering.
    #[zbus(signal)]
    pub(crate) async fn progress(emitter: &SignalEmitter<'_>, what: &str, done: u64, total: u64) -> zbus::Result<()>;

    /// Cancels the transfers the caller started that still run (what an
    /// interrupted client asks); returns their ids. Anyone may call it: it
    /// reaches only the caller's own transfers, by its unique bus name.
    async fn cancel_own_transfers(&self, #[zbus(header)] header: Header<'_>) -> Vec<u32> {
        self.daemon.transfers.cancel_started_by(&super::transfer::caller_of(&header))
    }
}

/// How often progress is reported at most.
const PROGRESS_INTERVAL: Duration = Duration::from_millis(200);

/// How often a caller of a change hears that it is still going on; clients
/// give up after several of these went missing (see `cli::progress`).
pub(crate) const HEARTBEAT_INTERVAL: Duration = Duration::from_secs(10);

/// The latest progress a blocking worker reported, waiting to be sent by
/// the task on the executor.
#[derive(Debug, Default)]
struct Slot {
    latest: Mutex<Option<(u64, u64)>>,
    /// The worker dropped its callback: nothing more comes.
    closed: AtomicBool,
    changed: zruntime::Event,
}

impl Slot {
    fn lock(&self) -> std::sync::MutexGuard<'_, Option<(u64, u64)>> {
        self.latest.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

/// Ends the sending task once the callback holding it is dropped.
struct Closer(Arc<Slot>);

impl Drop for Closer {
    fn drop(&mut self) {
        self.0.closed.store(true, Ordering::SeqCst);
        self.0.changed.notify(usize::MAX);
    }
}

fn emitter_for(connection: &Connection, header: &Header<'_>) -> Option<SignalEmitter<'static>> {
    let emitter = SignalEmitter::new(connection, OBJECT_PATH).ok()?;
    let sender = header.sender()?.to_owned();
    Some(emitter.set_destination(sender.into()).into_owned())
}

/// A progress callback for blocking work, sending `Progress` signals to the
/// caller of `header`'s call, at most every [`PROGRESS_INTERVAL`] and at
/// the end.
///
/// The callback runs on a worker thread and only leaves the numbers in a
/// slot; a task on the executor sends them. (A worker that sent the signal
/// itself would need a runtime of its own, `block_on`, per signal.) Must be
/// called on the executor.
pub(crate) fn progress_reporter(
    connection: &Connection,
    header: &Header<'_>,
    what: &str,
) -> impl FnMut(u64, u64) + Send + 'static {
    let slot = Arc::new(Slot::default());
    if let Some(emitter) = emitter_for(connection, header) {
        zruntime::spawn(send_progress(emitter, what.to_string(), slot.clone())).detach();
    }
    let closer = Closer(slot);
    let mut last = Instant::now() - PROGRESS_INTERVAL;
    move |done, total| {
        let finished = total > 0 && done >= total;
        if !finished && last.elapsed() < PROGRESS_INTERVAL {
            return;
        }
        last = Instant::now();
        *closer.0.lock() = Some((done, total));
        closer.0.changed.notify(usize::MAX);
    }
}

async fn send_progress(emitter: SignalEmitter<'static>, what: String, slot: Arc<Slot>) {
    loop {
        // Listening first: a notification between the check and the wait is not lost.
        let listener = slot.changed.listen();
        let latest = slot.lock().take();
        if let Some((done, total)) = latest {
            if let Err(e) = ManagerInterface::progress(&emitter, &what, done, total).await {
                tracing::debug!("progress signal not sent: {e}");
            }
            continue;
        }
        if slot.closed.load(Ordering::SeqCst) {
            return;
        }
        listener.await;
    }
}

/// Tells the caller of `header`'s call, every [`HEARTBEAT_INTERVAL`], that
/// its call is still being worked on, until the returned task is dropped.
/// Must be called on the executor.
pub(crate) fn heartbeat(connection: &Connection, header: &Header<'_>) -> Option<zruntime::Task<(), zruntime::Shared>> {
    let emitter = emitter_for(connection, header)?;
    Some(zruntime::spawn(async move {
        let Ok(runtime) = zruntime::SharedRuntime::current() else { return };
        loop {
            runtime.sleep(HEARTBEAT_INTERVAL).await;
            if let Err(e) = ManagerInterface::progress(&emitter, "", 0, 0).await {
                tracing::debug!("heartbeat not sent: {e}");
            }
        }
    }))
}
