//! `portable`: attach, detach and inspect portable service images, as
//! portablectl(1) does, through wharfd.

use std::process::ExitCode;

use clap::{Parser, Subcommand};

use super::output::{Format, JsonStyle, images_table};
use super::{CliError, ReadOnlyResult, current_dir, parse_bool, system_bus};
use std::os::fd::AsFd;

use crate::api::{ImageInfo, PartitionInfo, PortableProxy, UnitInfo};
use crate::image::Pool;

/// Attach, detach and inspect portable service images.
#[derive(Debug, Parser)]
#[command(name = "portable", version, about, long_about = None)]
pub struct Cli {
    /// Print results as one JSON document.
    #[arg(long, global = true, value_name = "STYLE", num_args = 0..=1, require_equals = true, default_missing_value = "short")]
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
    /// Show an image's kind, os-release and the unit files matching its prefixes.
    Inspect {
        image: String,
        /// Match unit files against these prefixes instead of the image's own.
        prefixes: Vec<String>,
        /// Print the unit files' contents too.
        #[arg(long)]
        cat: bool,
    },
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
        Command::Inspect { image, prefixes, cat } => {
            let (path, file) = open_image(&Pool::portables(), &image)?;
            let info = portable.inspect_image(&path, file.as_fd().into(), &prefixes, cat).await?;
            format.emit(&InspectView::from(&info), |_| inspect_text(&info, cat))?;
        }
        Command::ReadOnly { image, read_only } => {
            let image = Pool::portables().argument_for_daemon(&image, &current_dir()?);
            portable.mark_read_only(&image, read_only).await?;
            format.emit(&ReadOnlyResult { image, read_only }, |_| String::new())?;
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// Finds an image as the user named it and opens it with the user's rights,
/// so that wharfd only reads images the caller may read.
fn open_image(pool: &Pool, arg: &str) -> Result<(String, std::fs::File), CliError> {
    let path = pool.locate(arg, Some(&current_dir()?)).map_err(|e| CliError::Usage(e.to_string()))?;
    let file = std::fs::File::open(&path).map_err(|e| CliError::Usage(format!("image '{}': {e}", path.display())))?;
    Ok((path.display().to_string(), file))
}

/// `inspect --json`: the record, with os-release as an object.
#[derive(Debug, serde::Serialize)]
struct InspectView<'a> {
    name: &'a str,
    path: &'a str,
    kind: &'a str,
    access: &'a str,
    os_release: serde_json::Map<String, serde_json::Value>,
    prefixes: &'a [String],
    units: &'a [UnitInfo],
    partitions: &'a [PartitionInfo],
}

impl<'a> From<&'a ImageInfo> for InspectView<'a> {
    fn from(info: &'a ImageInfo) -> Self {
        InspectView {
            name: &info.name,
            path: &info.path,
            kind: &info.kind,
            access: &info.access,
            os_release: info.os_release.iter().map(|(k, v)| (k.clone(), v.clone().into())).collect(),
            prefixes: &info.prefixes,
            units: &info.units,
            partitions: &info.partitions,
        }
    }
}

fn inspect_text(info: &ImageInfo, cat: bool) -> String {
    let os = crate::image::OsRelease(info.os_release.clone());
    let mut out = format!("Image:\n    {}\nKind:\n    {}\n", info.path, info.kind);
    if let Some(pretty) = os.pretty_name() {
        out.push_str(&format!("Portable Service:\n    {pretty}\n"));
    }
    if !info.partitions.is_empty() {
        out.push_str("Partitions:\n");
        for p in &info.partitions {
            let arch = if p.architecture.is_empty() { String::new() } else { format!(" ({})", p.architecture) };
            let used = if p.used { ", used" } else { "" };
            out.push_str(&format!("    {}{arch}: {} bytes at {}{used}\n", p.role, p.size, p.offset));
        }
    }
    if cat {
        out.push_str("os-release:\n");
        for (key, value) in &info.os_release {
            out.push_str(&format!("    {key}={value:?}\n"));
        }
    }
    out.push_str(&format!("Unit files (prefixes: {}):\n", info.prefixes.join(", ")));
    if info.units.is_empty() {
        out.push_str("    (none)\n");
    }
    for unit in &info.units {
        out.push_str(&format!("    {}\n", unit.name));
    }
    if cat {
        for unit in &info.units {
            out.push_str(&format!("\n# {} ({})\n{}", unit.name, unit.path, unit.contents));
        }
    }
    out
}
