//! `machine`: machine images and containers, as machinectl(1) knows them,
//! through wharfd.

use std::process::ExitCode;

use clap::{Parser, Subcommand};

use super::output::{Format, JsonStyle, images_table};
use super::{CliError, ReadOnlyResult, current_dir, parse_bool, system_bus};
use crate::api::MachineProxy;
use crate::image::Pool;

/// Manage machine images and the containers booted from them.
#[derive(Debug, Parser)]
#[command(name = "machine", version, about, long_about = None)]
pub struct Cli {
    /// Print results as one JSON document.
    #[arg(long, global = true, value_name = "STYLE", num_args = 0..=1, require_equals = true, default_missing_value = "short")]
    pub json: Option<JsonStyle>,
    /// Log what is done, to stderr.
    #[arg(short, long, global = true)]
    pub verbose: bool,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// List machine images in /var/lib/machines and the rest of the search path.
    ListImages,
    /// Mark an image read-only (the default) or writable.
    ReadOnly {
        image: String,
        #[arg(value_parser = parse_bool, default_value = "yes", action = clap::ArgAction::Set)]
        read_only: bool,
    },
}

pub fn main() -> ExitCode {
    let cli = Cli::parse();
    crate::logging::init_cli(cli.verbose);
    super::run_tool("machine", run(cli))
}

async fn run(cli: Cli) -> Result<ExitCode, CliError> {
    let format = Format::new(cli.json);
    let bus = system_bus().await?;
    let machine = MachineProxy::new(&bus).await?;
    match cli.command {
        Command::ListImages => {
            let images = machine.list_images().await?;
            format.emit(&images, |images| images_table(images, false))?;
        }
        Command::ReadOnly { image, read_only } => {
            let image = Pool::machines().argument_for_daemon(&image, &current_dir()?);
            machine.mark_read_only(&image, read_only).await?;
            format.emit(&ReadOnlyResult { image, read_only }, |_| String::new())?;
        }
    }
    Ok(ExitCode::SUCCESS)
}
