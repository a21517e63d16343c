//! The command line of `wharfd`. It lives in the library, not in the binary,
//! so that the man page generator (contrib/gen.rs) documents exactly what
//! wharfd parses.

use clap::{Parser, Subcommand};

/// The wharf daemon: serves org.wharf1 on the system bus.
#[derive(Debug, Parser)]
#[command(name = "wharfd", version)]
pub struct Args {
    /// Exit after this many seconds without a call (0: never).
    #[arg(long, default_value_t = 30, value_name = "SECONDS")]
    pub idle_timeout: u64,
    #[command(subcommand)]
    pub command: Option<Command>,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Boot an OS image as a container (the main process of a machine's unit).
    #[command(hide = true)]
    Launch(crate::machine::launcher::LaunchArgs),
    /// Run a command inside a running container (for `machine shell`).
    #[command(hide = true)]
    Enter(crate::machine::enter::EnterArgs),
    /// Remove what a machine's network left on the host (its unit's ExecStopPost=).
    #[command(hide = true)]
    NetworkCleanup {
        /// The machine.
        #[arg(long, value_name = "NAME")]
        machine: String,
    },
    /// Bind or copy files between the host and a running container (for
    /// `machine bind`, `copy-to`, `copy-from`).
    #[command(hide = true)]
    Files(crate::machine::files::FilesArgs),
    /// Download one URL to standard output (the sandboxed half of a pull).
    #[command(hide = true)]
    Fetch(crate::pull::fetch::FetchArgs),
}
