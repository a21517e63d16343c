//! Waiting for wharfd: every call has a deadline, and long ones are kept
//! alive by the `Progress` signals wharfd sends to the caller (with the
//! numbers of a long copy, or as a heartbeat while a change runs); those
//! also drive a progress bar on the terminal.

use std::future::Future;
use std::io::IsTerminal;
use std::pin::pin;
use std::time::Duration;

use futures_util::StreamExt;
use futures_util::future::{Either, select};
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};

use super::CliError;
use crate::api::ManagerProxy;

/// How long a client waits for an answer or a sign of life from wharfd:
/// `WHARF_CLIENT_TIMEOUT` seconds, default 90 (wharfd sends a heartbeat
/// every 10 s while it works on a change).
pub fn client_timeout() -> Duration {
    let seconds = std::env::var("WHARF_CLIENT_TIMEOUT").ok().and_then(|v| v.trim().parse::<u64>().ok());
    Duration::from_secs(seconds.filter(|&s| s > 0).unwrap_or(90))
}

/// `future` under the client's deadline: connecting, and the reads, which
/// wharfd answers at once and so need no `Progress` subscription (two more
/// round trips per call, which `portable list` would feel).
pub async fn within<T>(future: impl Future<Output = zbus::Result<T>>) -> Result<T, CliError> {
    let timeout = client_timeout();
    let runtime = zruntime::SharedRuntime::current().map_err(CliError::Output)?;
    match runtime.timeout(timeout, future).await {
        Ok(result) => result.map_err(CliError::from),
        Err(_) => Err(CliError::Timeout(timeout.as_secs())),
    }
}

/// Awaits a call to wharfd under the client's deadline.
pub async fn bounded<T>(bus: &zbus::Connection, call: impl Future<Output = zbus::Result<T>>) -> Result<T, CliError> {
    with_progress(bus, false, call).await
}

/// Awaits `call` until it returns, or until wharfd has given no sign of
/// life (no answer, no `Progress` signal) for [`client_timeout`]; shows
/// its progress on stderr when `show` and stderr is a terminal.
pub async fn with_progress<T>(
    bus: &zbus::Connection,
    show: bool,
    call: impl Future<Output = zbus::Result<T>>,
) -> Result<T, CliError> {
    let timeout = client_timeout();
    // Only its signal is used: no property cache to fill with a round trip.
    let manager = within(ManagerProxy::builder(bus).cache_properties(zbus::proxy::CacheProperties::No).build()).await?;
    // Subscribed before the call, so that no signal is missed.
    let mut signals = within(manager.receive_progress()).await?;
    let bar = (show && std::io::stderr().is_terminal()).then(|| {
        let bar = ProgressBar::with_draw_target(None, ProgressDrawTarget::stderr());
        bar.set_style(
            ProgressStyle::with_template(
                "{msg} {wide_bar} {binary_bytes}/{binary_total_bytes} {binary_bytes_per_sec} {eta}",
            )
            .unwrap_or_else(|_| ProgressStyle::default_bar()),
        );
        bar
    });
    let runtime = zruntime::SharedRuntime::current().map_err(CliError::Output)?;
    let mut call = pin!(call);
    let mut signals_open = true;
    let result = loop {
        let next = pin!(async { if signals_open { signals.next().await } else { std::future::pending().await } });
        match runtime.timeout(timeout, select(call.as_mut(), next)).await {
            Err(_) => break Err(CliError::Timeout(timeout.as_secs())),
            Ok(Either::Left((result, _))) => break result.map_err(CliError::from),
            Ok(Either::Right((None, _))) => signals_open = false,
            Ok(Either::Right((Some(signal), _))) => {
                let (Some(bar), Ok(args)) = (&bar, signal.args()) else { continue };
                // A heartbeat names nothing and moves no bar.
                if args.what.is_empty() {
                    continue;
                }
                bar.set_message(args.what.clone());
                if args.total > 0 {
                    bar.set_length(args.total);
                }
                bar.set_position(args.done);
            }
        }
    };
    if let Some(bar) = bar {
        bar.finish_and_clear();
    }
    result
}
