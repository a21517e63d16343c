//! `org.wharf1.Manager`: facts about the daemon itself, and the progress
//! of long operations.

use std::time::{Duration, Instant};

use zbus::Connection;
use zbus::message::Header;
use zbus::object_server::SignalEmitter;

use crate::api::OBJECT_PATH;

#[derive(Debug)]
pub(crate) struct ManagerInterface;

#[zbus::interface(name = "org.wharf1.Manager")]
impl ManagerInterface {
    /// wharfd's version.
    #[zbus(property)]
    fn version(&self) -> String {
        env!("CARGO_PKG_VERSION").to_string()
    }

    /// Progress of a long operation (decompression, import, export, clone),
    /// sent only to the caller that asked for it: what, bytes done, bytes in
    /// all (0 when unknown).
    #[zbus(signal)]
    pub(crate) async fn progress(emitter: &SignalEmitter<'_>, what: &str, done: u64, total: u64) -> zbus::Result<()>;
}

/// How often progress is reported at most.
const PROGRESS_INTERVAL: Duration = Duration::from_millis(200);

/// A progress callback for blocking work, sending `Progress` signals to the
/// caller of `header`'s call, at most every [`PROGRESS_INTERVAL`] and at the end.
pub(crate) fn progress_reporter(
    connection: &Connection,
    header: &Header<'_>,
    what: &str,
) -> impl FnMut(u64, u64) + Send + 'static {
    let emitter = SignalEmitter::new(connection, OBJECT_PATH).ok().and_then(|emitter| {
        let sender = header.sender()?.to_owned();
        Some(emitter.set_destination(sender.into()).into_owned())
    });
    let what = what.to_string();
    let mut last = Instant::now() - PROGRESS_INTERVAL;
    move |done, total| {
        let finished = total > 0 && done >= total;
        if !finished && last.elapsed() < PROGRESS_INTERVAL {
            return;
        }
        last = Instant::now();
        if let Some(emitter) = &emitter {
            // Runs on a blocking worker thread, not on the runtime's.
            if let Err(e) = zbus::block_on(ManagerInterface::progress(emitter, &what, done, total)) {
                tracing::debug!("progress signal not sent: {e}");
            }
        }
    }
}
