//! wharfd, the privileged half of wharf, started by D-Bus activation.
//!
//! `wharfd launch ...` (hidden) is the container launcher a machine's unit
//! runs as its main process; see `wharf::machine::launcher`.

use std::process::ExitCode;
use std::time::Duration;

use clap::Parser;
use wharf::cli::wharfd::{Args, Command};

fn main() -> ExitCode {
    let args = Args::parse();
    match args.command {
        Some(Command::Launch(launch)) => return wharf::machine::launcher::main(launch),
        Some(Command::Enter(enter)) => return wharf::machine::enter::main(enter),
        Some(Command::NetworkCleanup { machine }) => return wharf::machine::network::host::cleanup_main(&machine),
        Some(Command::Files(files)) => return wharf::machine::files::main(files),
        Some(Command::Fetch(fetch)) => return wharf::pull::fetch::main(fetch),
        None => {}
    }
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
