//! Logging for the binaries: the daemon logs to the journal when there is one,
//! the CLIs log to stderr. `WHARF_LOG` takes tracing's target syntax
//! (`debug`, `wharf=trace,zbus=info`) and overrides the default level.

use tracing::level_filters::LevelFilter;
use tracing_subscriber::filter::Targets;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;

const JOURNAL_SOCKET: &str = "/run/systemd/journal/socket";

fn filter(default: LevelFilter) -> Targets {
    match std::env::var("WHARF_LOG") {
        Ok(spec) => spec.parse().unwrap_or_else(|e| {
            eprintln!("warning: ignoring WHARF_LOG={spec:?}: {e}");
            Targets::new().with_default(default)
        }),
        Err(_) => Targets::new().with_default(default),
    }
}

/// stderr logging for a command-line tool; `verbose` raises warnings to debug.
pub fn init_cli(verbose: bool) {
    let default = if verbose { LevelFilter::DEBUG } else { LevelFilter::WARN };
    let stderr = tracing_subscriber::fmt::layer().with_writer(std::io::stderr).with_target(false).without_time();
    let _ = tracing_subscriber::registry().with(stderr).with(filter(default)).try_init();
}

/// The daemon's logging: to the journal (with the fields tracing gives) when
/// started by systemd, else to stderr.
pub fn init_daemon() {
    let journald = std::path::Path::new(JOURNAL_SOCKET).exists().then(|| tracing_journald::layer().ok()).flatten();
    let registry = tracing_subscriber::registry().with(filter(LevelFilter::INFO));
    let result = match journald {
        Some(journald) => registry.with(journald.with_syslog_identifier("wharfd".into())).try_init(),
        None => {
            registry.with(tracing_subscriber::fmt::layer().with_writer(std::io::stderr).with_target(false)).try_init()
        }
    };
    if let Err(e) = result {
        eprintln!("warning: logging not set up: {e}");
    }
}
