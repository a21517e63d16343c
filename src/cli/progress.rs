//! Progress bars for long calls: wharfd sends `Progress` signals to the
//! caller; while the call runs, they drive a bar on the terminal.

use std::future::Future;
use std::io::IsTerminal;
use std::pin::pin;

use futures_util::StreamExt;
use futures_util::future::{Either, select};
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};

use crate::api::ManagerProxy;

/// Awaits `call`, showing its progress on stderr when `show` and stderr is a terminal.
pub async fn with_progress<T>(
    bus: &zbus::Connection,
    show: bool,
    call: impl Future<Output = zbus::Result<T>>,
) -> zbus::Result<T> {
    if !show || !std::io::stderr().is_terminal() {
        return call.await;
    }
    let manager = ManagerProxy::new(bus).await?;
    // Subscribed before the call, so that no signal is missed.
    let mut signals = manager.receive_progress().await?;
    let bar = ProgressBar::with_draw_target(None, ProgressDrawTarget::stderr());
    bar.set_style(
        ProgressStyle::with_template(
            "{msg} {wide_bar} {binary_bytes}/{binary_total_bytes} {binary_bytes_per_sec} {eta}",
        )
        .unwrap_or_else(|_| ProgressStyle::default_bar()),
    );
    let updates = async {
        while let Some(signal) = signals.next().await {
            let Ok(args) = signal.args() else { continue };
            bar.set_message(args.what.clone());
            if args.total > 0 {
                bar.set_length(args.total);
            }
            bar.set_position(args.done);
        }
        std::future::pending::<()>().await
    };
    let result = match select(pin!(call), pin!(updates)).await {
        Either::Left((result, _)) => result,
        Either::Right(((), _)) => unreachable!("the update loop never ends"),
    };
    bar.finish_and_clear();
    result
}
