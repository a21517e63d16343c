//! wharfd, the privileged half of wharf, started by D-Bus activation.

use std::process::ExitCode;
use std::time::Duration;

use clap::Parser;
use wharf::cli::wharfd::Args;

fn main() -> ExitCode {
    let args = Args::parse();
    wharf::logging::init_daemon();
    let options = wharf::daemon::Options {
        idle_timeout: (args.idle_timeout > 0).then(|| Duration::from_secs(args.idle_timeout)),
    };
    match wharf::daemon::run(options) {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            tracing::error!("{error}");
            eprintln!("wharfd: {error}");
            ExitCode::FAILURE
        }
    }
}
