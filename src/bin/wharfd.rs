//! wharfd, the privileged half of wharf, started by D-Bus activation.
//!
//! `wharfd launch ...` (hidden) is the container launcher a machine's unit
//! runs as its main process; see `wharf::machine::launcher`.

use std::process::ExitCode;
use std::time::Duration;

use clap::{Parser, Subcommand};

/// The wharf daemon: serves org.wharf1 on the system bus.
#[derive(Debug, Parser)]
#[command(name = "wharfd", version, about)]
struct Args {
    /// Exit after this many seconds without a call (0: never).
    #[arg(long, default_value_t = 30, value_name = "SECONDS")]
    idle_timeout: u64,
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Boot an OS image as a container (the main process of a machine's unit).
    #[command(hide = true)]
    Launch(wharf::machine::launcher::LaunchArgs),
    /// Run a command inside a running container (for `machine shell`).
    #[command(hide = true)]
    Enter(wharf::machine::enter::EnterArgs),
}

fn main() -> ExitCode {
    let args = Args::parse();
    match args.command {
        Some(Command::Launch(launch)) => return wharf::machine::launcher::main(launch),
        Some(Command::Enter(enter)) => return wharf::machine::enter::main(enter),
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
