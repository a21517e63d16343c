//! `portable`: attach, detach and inspect portable service images, as
//! portablectl(1) does, through wharfd.

use std::process::ExitCode;

use clap::{Parser, Subcommand};

use super::output::{Format, JsonStyle, images_table};
use super::{CliError, ReadOnlyResult, current_dir, parse_bool, system_bus};
use crate::api::PortableProxy;
use crate::image::Pool;

/// Attach, detach and inspect portable service images.
#[derive(Debug, Parser)]
#[command(name = "portable", version, about, long_about = None)]
pub struct Cli {
    /// Print results as one JSON document.
    #[arg(long, global = true, value_name = "STYLE", num_args = 0..=1, default_missing_value = "short")]
    pub json: Option<JsonStyle>,
    /// Log what is done, to stderr.
    #[arg(short, long, global = true)]
    pub verbose: bool,
    #[command(subcommand)]
    pub command: Option<Command>,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// List images in the portable search path and their state (the default).
    List,
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
    super::run_tool("portable", run(cli))
}

async fn run(cli: Cli) -> Result<ExitCode, CliError> {
    let format = Format::new(cli.json);
    let bus = system_bus().await?;
    let portable = PortableProxy::new(&bus).await?;
    match cli.command.unwrap_or(Command::List) {
        Command::List => {
            let images = portable.list_images().await?;
            format.emit(&images, |images| images_table(images, true))?;
        }
        Command::ReadOnly { image, read_only } => {
            let image = Pool::portables().argument_for_daemon(&image, &current_dir()?);
            portable.mark_read_only(&image, read_only).await?;
            format.emit(&ReadOnlyResult { image, read_only }, |_| String::new())?;
        }
    }
    Ok(ExitCode::SUCCESS)
}
