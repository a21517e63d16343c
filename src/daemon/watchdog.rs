//! systemd's watchdog (`WatchdogSec=` in wharfd.service): wharfd tells
//! systemd it is alive only while its executor runs tasks *and* its bus
//! connection delivers replies, so that a wedged wharfd (a task blocking
//! the executor, or a connection whose reader has stopped) is killed and
//! started again, and the new one rolls back what the old one left half
//! done (`transaction::recover` at start).

use std::sync::OnceLock;
use std::time::Duration;

use zbus::Connection;

/// Starts the task that pings the watchdog, if systemd asked for pings
/// (`WATCHDOG_USEC`); the pings stop when the task is dropped.
pub(crate) fn start(connection: &Connection) -> Option<zruntime::Task<(), zruntime::Shared>> {
    let period = sd_notify::watchdog_enabled()?;
    // Three chances per period: a slow round trip is not yet a wedged daemon.
    let interval = period / 3;
    let connection = connection.clone();
    tracing::info!("pinging the watchdog every {interval:?}");
    Some(zruntime::spawn(async move {
        let Ok(runtime) = zruntime::SharedRuntime::current() else { return };
        let Ok(bus) = zbus::fdo::DBusProxy::new(&connection).await else { return };
        loop {
            // A round trip on the bus: its reply comes through the same
            // socket reader as every reply wharfd waits for.
            match runtime.timeout(interval, bus.get_id()).await {
                Ok(Ok(_)) => {
                    if let Err(e) = sd_notify::notify(&[sd_notify::NotifyState::Watchdog]) {
                        tracing::warn!("cannot ping the watchdog: {e}");
                    }
                }
                Ok(Err(e)) => tracing::warn!("the bus did not answer ({e}); not pinging the watchdog"),
                Err(_) => tracing::warn!("the bus did not answer within {interval:?}; not pinging the watchdog"),
            }
            runtime.sleep(interval).await;
        }
    }))
}

/// A hidden test hook: with `WHARF_TEST_WEDGE=POINT` in wharfd's
/// environment (only root can set it: a drop-in for wharfd.service),
/// reaching POINT blocks the executor thread for good, as a bug would, so
/// that a test can see the watchdog restart wharfd. The points:
/// `after-files` (an attach has written its files, not yet committed).
pub(crate) fn test_wedge(point: &str) {
    static WEDGE: OnceLock<Option<String>> = OnceLock::new();
    if WEDGE.get_or_init(|| std::env::var("WHARF_TEST_WEDGE").ok()).as_deref() != Some(point) {
        return;
    }
    tracing::warn!("test hook: blocking the executor at {point}");
    loop {
        std::thread::sleep(Duration::from_secs(3600));
    }
}
