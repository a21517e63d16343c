//! Waiting for wharfd: every call has a deadline, and long ones are kept
//! alive by the `Progress` signals wharfd sends to the caller (with the
//! numbers of a long copy, or as a heartbeat while a change runs); those
//! also drive a progress bar on the terminal.
//!
//! A transfer (import, export, pull) is also stopped with the client: ^C
//! (SIGINT) or SIGTERM while its call runs asks wharfd to cancel it, waits
//! for the call to end (wharfd removes what it built first), and the
//! client then says so in one line and exits as killed by the signal.

use std::future::Future;
use std::io::IsTerminal;
use std::pin::pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicI32, Ordering};
use std::time::Duration;

use futures_util::StreamExt;
use futures_util::future::{Either, select};
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};

use super::CliError;
use crate::api::{BusError, ManagerProxy};

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

/// What a transfer call does, for the line that ends an interrupted one:
/// `machine: import of 'foo' cancelled; nothing was left`.
#[derive(Debug, Clone)]
pub struct Transfer {
    /// The tool, as errors are prefixed (`machine`, `portable`).
    pub tool: &'static str,
    /// `import`, `export` or `pull`.
    pub verb: &'static str,
    /// The image.
    pub name: String,
    /// A file of the client's own that a client leaving at once (a second
    /// signal) removes: the partial file of an export.
    pub scratch: Option<std::path::PathBuf>,
}

/// Awaits a transfer call as [`with_progress`] does, and stops it with the
/// client: on SIGINT or SIGTERM wharfd is asked to cancel the caller's
/// transfers, the call is awaited (wharfd answers once what it built is
/// gone), and [`CliError::Interrupted`] says so. A second signal exits at
/// once; wharfd then cancels the transfer because its caller left the bus.
pub async fn transfer<T>(
    bus: &zbus::Connection,
    show: bool,
    what: Transfer,
    call: impl Future<Output = zbus::Result<T>>,
) -> Result<T, CliError> {
    let interrupts = Interrupts::catch(what.clone()).map_err(CliError::Output)?;
    let result = wait(bus, show, call, Some(&interrupts)).await;
    match (result, interrupts.caught()) {
        (Err(CliError::Daemon(BusError::Cancelled(_))), Some(signal)) => {
            Err(CliError::Interrupted { verb: what.verb, name: what.name, signal })
        }
        (result, _) => result,
    }
}

/// SIGINT and SIGTERM, caught while a transfer's call runs (the client
/// ends soon after it).
struct Interrupts {
    caught: Arc<Caught>,
    handle: signal_hook::iterator::Handle,
    thread: Option<std::thread::JoinHandle<()>>,
}

#[derive(Default)]
struct Caught {
    /// The first signal caught; 0 while none was.
    signal: AtomicI32,
    event: zruntime::Event,
}

impl Interrupts {
    fn catch(what: Transfer) -> std::io::Result<Interrupts> {
        use signal_hook::consts::{SIGINT, SIGTERM};
        // A signal this process was started ignoring stays ignored, as
        // POSIX shells start background jobs of a script (SIGINT): ^C of
        // the script is not meant for them.
        let ignored = std::fs::read_to_string("/proc/self/status").map(|s| ignored_signals(&s)).unwrap_or(0);
        let wanted = [SIGINT, SIGTERM].into_iter().filter(|&signal| ignored & (1 << (signal - 1)) == 0);
        let mut signals = signal_hook::iterator::Signals::new(wanted)?;
        let handle = signals.handle();
        let caught = Arc::new(Caught::default());
        let seen = caught.clone();
        let thread = std::thread::Builder::new().name("signals".into()).spawn(move || {
            for signal in signals.forever() {
                if seen.signal.compare_exchange(0, signal, Ordering::SeqCst, Ordering::SeqCst).is_err() {
                    // The second: the user will not wait. wharfd cancels the
                    // transfer of a caller that left the bus all the same.
                    let Transfer { tool, verb, name, scratch } = &what;
                    if let Some(scratch) = scratch {
                        let _ = std::fs::remove_file(scratch);
                    }
                    eprintln!("{tool}: {verb} of '{name}' abandoned; wharfd cancels it and removes what it built");
                    std::process::exit(i32::from(super::exit_status_for_signal(signal)));
                }
                seen.event.notify(usize::MAX);
            }
        })?;
        Ok(Interrupts { caught, handle, thread: Some(thread) })
    }

    /// The first signal caught, if any.
    fn caught(&self) -> Option<i32> {
        Some(self.caught.signal.load(Ordering::SeqCst)).filter(|&s| s != 0)
    }

    /// Returns once a signal was caught.
    async fn first(&self) -> i32 {
        loop {
            // Listening first: a signal between the check and the wait is not lost.
            let listener = self.caught.event.listen();
            if let Some(signal) = self.caught() {
                return signal;
            }
            listener.await;
        }
    }
}

impl Drop for Interrupts {
    fn drop(&mut self) {
        self.handle.close();
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// The signals a process ignores, from its `/proc/PID/status` (`SigIgn:`,
/// a hex mask, bit N-1 for signal N).
fn ignored_signals(status: &str) -> u64 {
    status
        .lines()
        .find_map(|line| line.strip_prefix("SigIgn:"))
        .and_then(|mask| u64::from_str_radix(mask.trim(), 16).ok())
        .unwrap_or(0)
}

/// How often an interrupted client asks again while wharfd has not yet
/// registered its transfer (the signal came as the call was sent), and
/// for how long at most.
const CANCEL_RETRY: Duration = Duration::from_millis(100);
const CANCEL_RETRIES: u32 = 50;

/// Where an interrupted transfer is in being cancelled.
#[derive(Clone, Copy, PartialEq)]
enum Cancel {
    /// No signal yet.
    NotAsked,
    /// Asked this many times; wharfd had no transfer of ours yet.
    Retrying(u32),
    /// wharfd cancelled it (or cannot be asked): the call's end is awaited.
    Asked,
}

/// Awaits `call` until it returns, or until wharfd has given no sign of
/// life (no answer, no `Progress` signal) for [`client_timeout`]; shows
/// its progress on stderr when `show` and stderr is a terminal.
pub async fn with_progress<T>(
    bus: &zbus::Connection,
    show: bool,
    call: impl Future<Output = zbus::Result<T>>,
) -> Result<T, CliError> {
    wait(bus, show, call, None).await
}

/// [`with_progress`], and for a transfer the cancellation `interrupts` ask for.
async fn wait<T>(
    bus: &zbus::Connection,
    show: bool,
    call: impl Future<Output = zbus::Result<T>>,
    interrupts: Option<&Interrupts>,
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
    let mut cancel = Cancel::NotAsked;
    let result = loop {
        let next = pin!(async { if signals_open { signals.next().await } else { std::future::pending().await } });
        let (state, runtime_ref) = (cancel, &runtime);
        let interrupted = pin!(async move {
            match (interrupts, state) {
                (Some(interrupts), Cancel::NotAsked) => drop(interrupts.first().await),
                (Some(_), Cancel::Retrying(_)) => runtime_ref.sleep(CANCEL_RETRY).await,
                _ => std::future::pending().await,
            }
        });
        let events = select(next, interrupted);
        match runtime.timeout(timeout, select(call.as_mut(), events)).await {
            Err(_) => break Err(CliError::Timeout(timeout.as_secs())),
            Ok(Either::Left((result, _))) => break result.map_err(CliError::from),
            Ok(Either::Right((Either::Right(((), _)), _))) => {
                if let Some(bar) = &bar {
                    bar.set_message("cancelling");
                }
                cancel = match within(manager.cancel_own_transfers()).await {
                    Ok(ids) if !ids.is_empty() => {
                        tracing::debug!(?ids, "wharfd cancels the transfer");
                        Cancel::Asked
                    }
                    Ok(_) => match cancel {
                        Cancel::NotAsked => Cancel::Retrying(1),
                        Cancel::Retrying(n) if n < CANCEL_RETRIES => Cancel::Retrying(n + 1),
                        _ => Cancel::Asked,
                    },
                    // An older wharfd, or none: the call's end (or the
                    // client's deadline) still tells what happened.
                    Err(e) => {
                        tracing::debug!("cannot ask wharfd to cancel: {e}");
                        Cancel::Asked
                    }
                };
            }
            Ok(Either::Right((Either::Left((None, _)), _))) => signals_open = false,
            Ok(Either::Right((Either::Left((Some(signal), _)), _))) => {
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ignored_signals_are_read_from_the_status_mask() {
        let status = "Name:\tmachine\nSigBlk:\t0000000000000000\nSigIgn:\t0000000000000006\nSigCgt:\t0\n";
        let ignored = ignored_signals(status);
        assert_ne!(ignored & (1 << (nix::libc::SIGINT - 1)), 0);
        assert_eq!(ignored & (1 << (nix::libc::SIGTERM - 1)), 0);
        assert_eq!(ignored_signals("Name:\tx\n"), 0);
        assert_eq!(ignored_signals("SigIgn:\tjunk\n"), 0);
    }
}
