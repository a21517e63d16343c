//! `machine`: machine images and containers, as machinectl(1) knows them,
//! through wharfd.

use std::os::fd::AsFd;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::{Parser, Subcommand};

use super::output::{Format, JsonStyle, images_table};
use super::progress::with_progress;
use super::{CliError, ReadOnlyResult, current_dir, parse_bool, system_bus};
use crate::api::MachineProxy;
use crate::compress::Compression;
use crate::image::Pool;

/// Manage machine images and the containers booted from them.
#[derive(Debug, Parser)]
#[command(name = "machine", version)]
pub struct Cli {
    /// Print results as one JSON document.
    #[arg(long, global = true, value_name = "STYLE", num_args = 0..=1, require_equals = true, default_missing_value = "short")]
    pub json: Option<JsonStyle>,
    /// Log what is done, to stderr.
    #[arg(short, long, global = true)]
    pub verbose: bool,
    /// Print nothing but errors (and no progress bars).
    #[arg(short, long, global = true)]
    pub quiet: bool,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// List machine images in /var/lib/machines and the rest of the search path.
    ListImages,
    /// Mark an image read-only (the default) or writable.
    ReadOnly {
        /// The image: a machine name in the search path, or a path.
        image: String,
        /// yes (or true, on, 1) to make it read-only; no (or false, off, 0) to make it writable.
        #[arg(value_parser = parse_bool, default_value = "yes", action = clap::ArgAction::Set)]
        read_only: bool,
    },
    /// Copy an image under a new name.
    Clone {
        /// The image to copy.
        name: String,
        /// The copy's name; it goes to /var/lib/machines.
        new_name: String,
        /// Make the copy read-only.
        #[arg(long)]
        read_only: bool,
    },
    /// Rename an image (refused while its machine runs).
    Rename {
        /// The image to rename.
        name: String,
        /// The new name; the image stays in the directory it is in.
        new_name: String,
    },
    /// Delete images (refused while their machine runs or when read-only).
    Remove {
        /// Machine names in the search path.
        #[arg(required = true, value_name = "NAME")]
        names: Vec<String>,
    },
    /// Import a tar archive (plain, xz, gzip or zstd) as a directory image.
    ImportTar {
        /// The archive.
        file: PathBuf,
        /// Image name; by default the file name without its suffixes.
        name: Option<String>,
    },
    /// Import a raw disk or file system image (plain, xz, gzip or zstd).
    ImportRaw {
        /// The image: squashfs, ext4, erofs or GPT.
        file: PathBuf,
        /// Image name; by default the file name without its suffixes.
        name: Option<String>,
    },
    /// Import a directory tree as a directory image.
    ImportFs {
        /// The tree, copied with its owners, modes, times and extended attributes.
        directory: PathBuf,
        /// Image name; by default the directory's name.
        name: Option<String>,
    },
    /// Export a directory image as a tar archive (.xz, .gz, .zst compress it).
    ExportTar {
        /// The directory image to export.
        name: String,
        /// The archive to write; a file of that name is replaced once the export is complete.
        file: PathBuf,
    },
    /// Export a raw image (.xz, .gz, .zst compress it).
    ExportRaw {
        /// The raw image to export.
        name: String,
        /// The file to write; a file of that name is replaced once the export is complete.
        file: PathBuf,
    },
}

/// The image name an imported file gets when none is given.
fn default_name(file: &Path) -> String {
    let name = file.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    const SUFFIXES: &[&str] = &[
        ".tar.xz", ".tar.gz", ".tar.zst", ".tgz", ".tar", ".raw.xz", ".raw.gz", ".raw.zst", ".raw", ".xz", ".gz",
        ".zst",
    ];
    SUFFIXES.iter().find_map(|suffix| name.strip_suffix(suffix)).unwrap_or(&name).to_string()
}

fn open_input(path: &Path) -> Result<std::fs::File, CliError> {
    std::fs::File::open(path).map_err(|e| CliError::Usage(format!("{}: {e}", path.display())))
}

/// An export target written under a temporary name next to it and renamed
/// only when the export is complete.
struct ExportTarget {
    temp: PathBuf,
    target: PathBuf,
    file: std::fs::File,
}

impl ExportTarget {
    fn create(target: &Path) -> Result<ExportTarget, CliError> {
        let name = target.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
        let temp = target.with_file_name(format!(".{name}.wharf-{}", std::process::id()));
        let file = std::fs::File::create_new(&temp).map_err(|e| CliError::Usage(format!("{}: {e}", temp.display())))?;
        Ok(ExportTarget { temp, target: target.to_path_buf(), file })
    }

    fn finish(self, result: Result<(), CliError>) -> Result<(), CliError> {
        let done = result.and_then(|()| {
            self.file.sync_all().map_err(CliError::Output)?;
            std::fs::rename(&self.temp, &self.target)
                .map_err(|e| CliError::Usage(format!("{}: {e}", self.target.display())))
        });
        if done.is_err() {
            let _ = std::fs::remove_file(&self.temp);
        }
        done
    }
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
    let show = !cli.quiet && !format.is_json();
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
        Command::Clone { name, new_name, read_only } => {
            let path = with_progress(&bus, show, machine.clone_image(&name, &new_name, read_only)).await?;
            emit_path(format, cli.quiet, "Cloned", &path)?;
        }
        Command::Rename { name, new_name } => {
            let path = machine.rename_image(&name, &new_name).await?;
            emit_path(format, cli.quiet, "Renamed to", &path)?;
        }
        Command::Remove { names } => {
            let mut removed = Vec::new();
            for name in names {
                removed.push(machine.remove_image(&name).await?);
            }
            if !cli.quiet {
                format.emit(&removed, |removed| {
                    removed.iter().map(|p| format!("Removed {p}.")).collect::<Vec<_>>().join("\n")
                })?;
            }
        }
        Command::ImportTar { file, name } => {
            let name = name.unwrap_or_else(|| default_name(&file));
            let input = open_input(&file)?;
            let path = with_progress(&bus, show, machine.import_tar(input.as_fd().into(), &name)).await?;
            emit_path(format, cli.quiet, "Imported", &path)?;
        }
        Command::ImportRaw { file, name } => {
            let name = name.unwrap_or_else(|| default_name(&file));
            let input = open_input(&file)?;
            let path = with_progress(&bus, show, machine.import_raw(input.as_fd().into(), &name)).await?;
            emit_path(format, cli.quiet, "Imported", &path)?;
        }
        Command::ImportFs { directory, name } => {
            let name = name.unwrap_or_else(|| default_name(&directory));
            let input = open_input(&directory)?;
            let path = with_progress(&bus, show, machine.import_fs(input.as_fd().into(), &name)).await?;
            emit_path(format, cli.quiet, "Imported", &path)?;
        }
        Command::ExportTar { name, file } => {
            export(&bus, &machine, show, &name, &file, false).await?;
            emit_path(format, cli.quiet, "Exported to", &file.display().to_string())?;
        }
        Command::ExportRaw { name, file } => {
            export(&bus, &machine, show, &name, &file, true).await?;
            emit_path(format, cli.quiet, "Exported to", &file.display().to_string())?;
        }
    }
    Ok(ExitCode::SUCCESS)
}

fn emit_path(format: Format, quiet: bool, verb: &str, path: &str) -> Result<(), CliError> {
    if quiet && !format.is_json() {
        return Ok(());
    }
    format.emit(&serde_json::json!({ "path": path }), |_| format!("{verb} {path}."))
}

/// Exports into a file that appears under its name only once complete.
async fn export(
    bus: &zbus::Connection,
    machine: &MachineProxy<'_>,
    show: bool,
    name: &str,
    file: &Path,
    raw: bool,
) -> Result<(), CliError> {
    let compression = Compression::from_suffix(&file.to_string_lossy()).as_str();
    let target = ExportTarget::create(file)?;
    let fd = target.file.as_fd();
    let call = async {
        if raw {
            machine.export_raw(name, fd.into(), compression).await
        } else {
            machine.export_tar(name, fd.into(), compression).await
        }
    };
    let result = with_progress(bus, show, call).await.map_err(CliError::from);
    target.finish(result)
}
