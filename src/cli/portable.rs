//! `portable`: attach, detach and inspect portable service images, as
//! portablectl(1) does, through wharfd.

use std::os::fd::AsFd;
use std::process::ExitCode;

use clap::{Args, Parser, Subcommand, ValueEnum};

use super::output::{Format, OutputArgs, ReadOnlyView, images_table_by};
use super::progress::{bounded, with_progress, within};
use super::{CliError, current_dir, parse_bool, system_bus};
use crate::api::{ImageInfo, OperationResult, PartitionInfo, PortableProxy, UnitInfo, flags};
use crate::image::Pool;
use crate::portable::ops::Host;

/// Attach, detach and inspect portable service images.
#[derive(Debug, Parser)]
#[command(name = "portable", version)]
pub struct Cli {
    #[command(flatten)]
    pub output: OutputArgs,
    #[command(subcommand)]
    pub command: Option<Command>,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum Copy {
    /// Copies of the unit files and profile drop-ins.
    Copy,
    /// Symlinks: units into a directory image (a file image's are copied), drop-ins to the profile.
    Symlink,
    /// Symlinked profile drop-ins; units copied from file images, linked from directory images.
    Auto,
    /// Symlinked profile drop-ins; units always copied.
    Mixed,
}

impl Copy {
    fn as_str(self) -> &'static str {
        match self {
            Copy::Copy => "copy",
            Copy::Symlink => "symlink",
            Copy::Auto => "auto",
            Copy::Mixed => "mixed",
        }
    }
}

/// Options shared by attach and reattach.
#[derive(Debug, Args)]
pub struct AttachArgs {
    /// The image (a name in the search path, or a path), then unit name
    /// prefixes to attach instead of the image's own.
    #[arg(required = true, value_name = "IMAGE [PREFIX]...")]
    pub args: Vec<String>,
    /// Sandbox profile: default, nonetwork, strict, trusted, or one under /etc/wharf/profiles.
    #[arg(short, long, default_value = "default")]
    pub profile: String,
    /// How unit files and drop-ins are placed.
    #[arg(long, value_enum, default_value = "auto")]
    pub copy: Copy,
    /// Attach below /run: gone at the next boot.
    #[arg(long)]
    pub runtime: bool,
    /// Enable the units too.
    #[arg(long)]
    pub enable: bool,
    /// Start the units too.
    #[arg(long)]
    pub now: bool,
    /// Do not wait for the units to start.
    #[arg(long)]
    pub no_block: bool,
    /// Attach over units that exist on the host and were not attached by wharf.
    #[arg(long)]
    pub force: bool,
    /// Write the files only: do not reload systemd (not with --now).
    #[arg(long)]
    pub no_reload: bool,
    /// Change nothing: check as a real run would, and print the files it
    /// would change and the units it would start or restart.
    #[arg(long)]
    pub check: bool,
    /// An extension image (a name in the search path, or a path) to stack on
    /// the image, as systemd's ExtensionImages= does; repeatable, in order.
    #[arg(long = "extension", value_name = "IMAGE")]
    pub extensions: Vec<String>,
    /// The image policy (systemd.image-policy(7)) the image must satisfy:
    /// checked now, and written as RootImagePolicy= so that systemd checks it
    /// at every start (a file swapped in later that does not satisfy it is
    /// refused). File images only; systemd 254 or later.
    #[arg(long, value_name = "POLICY")]
    pub image_policy: Option<String>,
    /// Accepted as portablectl accepts it anywhere; it changes only what
    /// inspect prints.
    #[arg(long)]
    pub cat: bool,
}

impl AttachArgs {
    /// The options of the calls that take them, or `None` when there are
    /// none: the plain calls are the ones every wharfd knows.
    fn options(
        &self,
        extensions: &[String],
    ) -> Option<std::collections::HashMap<&'static str, zbus::Variant<'static>>> {
        let mut options = std::collections::HashMap::new();
        if !extensions.is_empty() {
            options.insert("extensions", zbus::Variant::from(extensions.to_vec()));
        }
        if let Some(policy) = &self.image_policy {
            options.insert("image-policy", zbus::Variant::from(policy.clone()));
        }
        (!options.is_empty()).then_some(options)
    }

    fn flags(&self) -> u64 {
        [
            (self.runtime, flags::RUNTIME),
            (self.enable, flags::ENABLE),
            (self.now, flags::NOW),
            (self.no_block, flags::NO_BLOCK),
            (self.force, flags::FORCE),
            (self.no_reload, flags::NO_RELOAD),
            (self.check, flags::CHECK),
        ]
        .iter()
        .filter(|(set, _)| *set)
        .fold(0, |all, (_, flag)| all | flag)
    }
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// List images in the portable search path and their state (the default).
    List,
    /// Show an image's kind, os-release and the unit files matching its prefixes.
    Inspect {
        /// The image: a name in the search path, or a path.
        image: String,
        /// Match unit files against these prefixes instead of the image's own.
        #[arg(value_name = "PREFIX")]
        prefixes: Vec<String>,
        /// Print the unit files' contents too.
        #[arg(long)]
        cat: bool,
        /// An extension image stacked on the image: checked as systemd checks
        /// it, its matching units listed too; repeatable, in order.
        #[arg(long = "extension", value_name = "IMAGE")]
        extensions: Vec<String>,
    },
    /// Attach an image's units to the host, with a sandbox profile.
    Attach {
        #[command(flatten)]
        attach: AttachArgs,
        /// Every argument is an image: attach them all with one reload, all or none.
        #[arg(long)]
        batch: bool,
    },
    /// Detach an image: remove exactly the files wharf wrote for it.
    Detach {
        /// The image, as it was attached (a name in the search path, or a
        /// path), then unit name prefixes to detach only those units; with
        /// --batch, several images.
        #[arg(required = true, value_name = "IMAGE [PREFIX]...")]
        images: Vec<String>,
        /// Every argument is an image: detach them all with one reload, all or none.
        #[arg(long)]
        batch: bool,
        /// Stop its units first.
        #[arg(long)]
        now: bool,
        /// Detach even while its units run; they go on running without their files until they stop.
        #[arg(long)]
        force: bool,
        /// Remove the files only: do not reload systemd (not with --now).
        #[arg(long)]
        no_reload: bool,
        /// Remove the services' state, cache, logs, configuration and runtime
        /// directories too; only directories named after the image or the unit.
        #[arg(long)]
        clean: bool,
        /// Change nothing: check as a real run would, and print the files it
        /// would remove and the units it would stop.
        #[arg(long)]
        check: bool,
        /// Accepted as portablectl does: wharf finds a runtime attachment wherever it is.
        #[arg(long)]
        runtime: bool,
        /// Accepted as portablectl does: the units' enablement links always go with them.
        #[arg(long)]
        enable: bool,
        /// Only the attachment of the image with exactly these extension
        /// images, in order (without: whatever extensions it has).
        #[arg(long = "extension", value_name = "IMAGE")]
        extensions: Vec<String>,
    },
    /// Replace the attached version of an image by this one, restarting what ran.
    Reattach {
        #[command(flatten)]
        attach: AttachArgs,
    },
    /// Tell whether an image is attached: exit status 0 if it is, 1 if not.
    IsAttached {
        /// The image: a name in the search path, or a path.
        image: String,
        /// Attached with exactly these extension images, in order (without:
        /// with whatever extensions).
        #[arg(long = "extension", value_name = "IMAGE")]
        extensions: Vec<String>,
    },
    /// Delete images from the pool (refused while attached or read-only).
    Remove {
        /// Images in the search path, or paths.
        #[arg(required = true, value_name = "IMAGE")]
        images: Vec<String>,
    },
    /// Bring the host to what a fleet file says, all or nothing (see wharf-fleet(5)).
    Apply(super::fleet::ApplyArgs),
    /// Who changed what and when: wharfd's audit entries in the journal, oldest first.
    History(super::history::HistoryArgs),
    /// Download an image (raw, or a tar archive of a tree) into /var/lib/portables, and verify it.
    Pull(super::pull::PullArgs),
    /// Pull an image from an OCI (Docker) registry into /var/lib/portables
    /// as a squashfs NAME.raw, every blob verified by its digest; an image
    /// without units for NAME gets NAME.service made from its config.
    PullOci(super::pull::OciPullArgs),
    /// Set the size limit of an image, or without IMAGE of all images in
    /// /var/lib/portables together, where the file system allows it (btrfs
    /// quota groups, as portablectl set-limit).
    SetLimit {
        /// [IMAGE] BYTES: the image (none: the pool), then bytes with an
        /// optional K, M, G, T, P or E (1.5G), or '-' for no limit.
        #[arg(num_args = 1..=2, required = true, value_name = "[IMAGE] BYTES", allow_hyphen_values = true)]
        args: Vec<String>,
    },
    /// Mark an image read-only (the default) or writable.
    ReadOnly {
        /// The image: a name in the search path, or a path.
        image: String,
        /// yes (or true, on, 1) to make it read-only; no (or false, off, 0) to make it writable.
        #[arg(value_parser = parse_bool, default_value = "yes", action = clap::ArgAction::Set)]
        read_only: bool,
    },
}

pub fn main() -> ExitCode {
    let cli = Cli::parse();
    crate::logging::init_cli(cli.output.verbose);
    let json = Format::new(&cli.output).is_json();
    super::run_tool("portable", json, run(cli))
}

async fn run(cli: Cli) -> Result<ExitCode, CliError> {
    let format = Format::new(&cli.output);
    let command = cli.command.unwrap_or(Command::List);
    // Inspect reads in this process and needs the bus only for erofs.
    if let Command::Inspect { image, prefixes, cat, extensions } = &command {
        let (info, extensions) = inspect(image, prefixes, *cat, extensions).await?;
        let view = InspectView { extensions: &extensions, ..InspectView::from(&info) };
        format.emit(&view, |_| inspect_text(&info, &extensions, *cat))?;
        return Ok(ExitCode::SUCCESS);
    }
    let bus = system_bus().await?;
    let _agent = super::authorization(&cli.output);
    let portable = within(PortableProxy::new(&bus)).await?;
    match command {
        Command::List => {
            let images = within(portable.list_images()).await?;
            format.emit(&images, |images| {
                let entries: Vec<_> = images.iter().map(|i| i.entry()).collect();
                let by: Vec<String> = images.iter().map(|i| i.attached_by.clone()).collect();
                images_table_by(&entries, Some(&by), true, format.legend())
            })?;
        }
        Command::Inspect { .. } => {} // done above
        Command::Attach { attach, batch } => {
            let pool = Pool::portables();
            let cwd = current_dir()?;
            let copy = attach.copy.as_str();
            let show = !cli.output.quiet && !format.is_json();
            let extensions: Vec<String> = attach.extensions.iter().map(|e| pool.argument_for_daemon(e, &cwd)).collect();
            let result = if batch {
                if !extensions.is_empty() {
                    return Err(CliError::Usage(
                        "--extension stacks on one image: it cannot be combined with --batch".into(),
                    ));
                }
                let images: Vec<String> = attach.args.iter().map(|a| pool.argument_for_daemon(a, &cwd)).collect();
                with_progress(&bus, show, portable.attach_images(&images, &attach.profile, copy, attach.flags()))
                    .await?
            } else {
                let (image, prefixes) = attach.args.split_first().expect("clap requires an image");
                let image = pool.argument_for_daemon(image, &cwd);
                match attach.options(&extensions) {
                    None => {
                        let call = portable.attach_image(&image, prefixes, &attach.profile, copy, attach.flags());
                        with_progress(&bus, show, call).await?
                    }
                    Some(options) => {
                        let call = portable.attach_image_with_options(
                            &image,
                            prefixes,
                            &attach.profile,
                            copy,
                            attach.flags(),
                            &options,
                        );
                        with_progress(&bus, show, call).await?
                    }
                }
            };
            emit_operation(format, cli.output.quiet, &result, Verb::Start, attach.check)?;
        }
        Command::Detach { images, batch, now, force, no_reload, clean, check, extensions, .. } => {
            let (pool, cwd) = (Pool::portables(), current_dir()?);
            let flags = [
                (now, flags::NOW),
                (force, flags::FORCE),
                (no_reload, flags::NO_RELOAD),
                (clean, flags::CLEAN),
                (check, flags::CHECK),
            ]
            .iter()
            .filter(|(set, _)| *set)
            .fold(0, |all, (_, flag)| all | flag);
            let extensions: Vec<String> = extensions.iter().map(|e| pool.argument_for_daemon(e, &cwd)).collect();
            let result = if batch {
                if !extensions.is_empty() {
                    return Err(CliError::Usage(
                        "--extension names one image's attachment: it cannot be combined with --batch".into(),
                    ));
                }
                let images: Vec<String> = images.iter().map(|i| pool.argument_for_daemon(i, &cwd)).collect();
                bounded(&bus, portable.detach_images(&images, flags)).await?
            } else {
                let (image, prefixes) = images.split_first().expect("clap requires an image");
                let image = pool.argument_for_daemon(image, &cwd);
                if extensions.is_empty() {
                    bounded(&bus, portable.detach_image(&image, prefixes, flags)).await?
                } else {
                    bounded(&bus, portable.detach_image_with_extensions(&image, prefixes, &extensions, flags)).await?
                }
            };
            emit_operation(format, cli.output.quiet, &result, Verb::Stop, check)?;
        }
        Command::Reattach { attach } => {
            let (image, prefixes) = attach.args.split_first().expect("clap requires an image");
            let (pool, cwd) = (Pool::portables(), current_dir()?);
            let image = pool.argument_for_daemon(image, &cwd);
            let extensions: Vec<String> = attach.extensions.iter().map(|e| pool.argument_for_daemon(e, &cwd)).collect();
            let show = !cli.output.quiet && !format.is_json();
            let (profile, copy, flags) = (&attach.profile, attach.copy.as_str(), attach.flags());
            let result = match attach.options(&extensions) {
                None => {
                    with_progress(&bus, show, portable.reattach_image(&image, prefixes, profile, copy, flags)).await?
                }
                Some(options) => {
                    let call = portable.reattach_image_with_options(&image, prefixes, profile, copy, flags, &options);
                    with_progress(&bus, show, call).await?
                }
            };
            emit_operation(format, cli.output.quiet, &result, Verb::Restart, attach.check)?;
        }
        Command::IsAttached { image, extensions } => {
            let (pool, cwd) = (Pool::portables(), current_dir()?);
            let image = pool.argument_for_daemon(&image, &cwd);
            let extensions: Vec<String> = extensions.iter().map(|e| pool.argument_for_daemon(e, &cwd)).collect();
            if format.is_json() {
                // The units and their states from wharfd, which answers from
                // the host as the last finished change left it; the unit
                // files and drop-ins are read here, as the caller may read them.
                let (path, state, runtime, units) = within(portable.get_image_units(&image, &extensions)).await?;
                let status = crate::portable::status::status_of(&Host::system(), &path, &state, runtime, units).await;
                let status = status.map_err(|e: crate::portable::Error| CliError::Daemon(e.into()))?;
                format.emit(&AttachedView::new(&status), |_| String::new())?;
                return Ok(if status.attached { ExitCode::SUCCESS } else { ExitCode::from(1) });
            }
            let (_, state) = if extensions.is_empty() {
                within(portable.get_image_state(&image)).await?
            } else {
                within(portable.get_image_state_with_extensions(&image, &extensions)).await?
            };
            let attached = state != "detached";
            if !cli.output.quiet {
                println!("{state}");
            }
            return Ok(if attached { ExitCode::SUCCESS } else { ExitCode::from(1) });
        }
        Command::Remove { images } => {
            let cwd = current_dir()?;
            let mut removed = Vec::new();
            for image in images {
                let image = Pool::portables().argument_for_daemon(&image, &cwd);
                removed.push(bounded(&bus, portable.remove_image(&image)).await?);
            }
            if !cli.output.quiet || format.is_json() {
                format.emit(&removed, |removed| {
                    removed.iter().map(|p| format!("Removed {p}.")).collect::<Vec<_>>().join("\n")
                })?;
            }
        }
        Command::Apply(args) => return super::fleet::apply(&bus, args, format, cli.output.quiet).await,
        Command::History(args) => super::history::run(args, crate::audit::Domain::Portable, format)?,
        Command::Pull(pull) => {
            let show = !cli.output.quiet && !format.is_json();
            let call = portable.pull_image(&pull.url, pull.name_for_daemon(), &pull.verify, pull.flags());
            let what =
                super::progress::Transfer { tool: "portable", verb: "pull", name: pull.local_name(), scratch: None };
            let path = super::progress::transfer(&bus, show, what, call).await?;
            if !cli.output.quiet || format.is_json() {
                format.emit(&serde_json::json!({ "path": path }), |_| format!("Pulled {path}."))?;
            }
        }
        Command::PullOci(pull) => {
            let show = !cli.output.quiet && !format.is_json();
            let call = portable.pull_oci_image(&pull.reference, pull.name_for_daemon(), pull.flags());
            let what =
                super::progress::Transfer { tool: "portable", verb: "pull", name: pull.local_name(), scratch: None };
            let path = super::progress::transfer(&bus, show, what, call).await?;
            if !cli.output.quiet || format.is_json() {
                format.emit(&serde_json::json!({ "path": path }), |_| format!("Pulled {path}."))?;
            }
        }
        Command::SetLimit { args } => {
            let (image, limit) = super::limit_arguments(&args)?;
            bounded(&bus, portable.set_image_limit(image.unwrap_or(""), limit.unwrap_or(u64::MAX))).await?;
            if format.is_json() {
                format.emit(&serde_json::json!({ "name": image, "limit": limit }), |_| String::new())?;
            }
        }
        Command::ReadOnly { image, read_only } => {
            let image = Pool::portables().argument_for_daemon(&image, &current_dir()?);
            bounded(&bus, portable.mark_read_only(&image, read_only)).await?;
            format.emit(&ReadOnlyView::new(&Pool::portables(), &image, read_only)?, |_| String::new())?;
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// `portable inspect`: read in this process, with the user's own rights
/// (so that nobody reads through wharf what they may not read themselves),
/// and xz decompressed into memory up to a cap. Only an image that must be
/// mounted (erofs) goes to wharfd, and only for root; anyone else is told
/// in one line why not.
///
/// Extensions are read here too, with the same rights: checked against the
/// image's os-release as systemd checks them, their units listed with the
/// image's. (wharfd's InspectImage takes no extensions: an erofs extension
/// is refused here, as an erofs image is for anyone but root.)
async fn inspect(
    image: &str,
    prefixes: &[String],
    cat: bool,
    extensions: &[String],
) -> Result<(ImageInfo, Vec<String>), CliError> {
    use crate::image::inspect::{Reading, inspect_with};
    let pool = Pool::portables();
    let (path, file) = open_image(&pool, image)?;
    let for_daemon = file.try_clone().map_err(|e| CliError::Usage(format!("image '{path}': {e}")))?;
    let mut info = match inspect_with(std::path::Path::new(&path), file, prefixes, &Reading::unprivileged()) {
        Ok(inspection) => ImageInfo::from_inspection(inspection, cat),
        Err(crate::image::Error::NeedsPrivilege { .. }) if rustix::process::geteuid().is_root() => {
            let bus = system_bus().await?;
            let portable = within(PortableProxy::new(&bus)).await?;
            bounded(&bus, portable.inspect_image(&path, for_daemon.as_fd().into(), prefixes, cat)).await?
        }
        Err(e) => return Err(image_error(&e)),
    };
    let os_release = crate::image::OsRelease(info.os_release.clone());
    let mut units: Vec<crate::image::units::UnitFile> = info
        .units
        .iter()
        .map(|u| crate::image::units::UnitFile {
            name: u.name.clone(),
            path: u.path.clone(),
            contents: u.contents.clone(),
        })
        .collect();
    let mut paths = Vec::new();
    for extension in extensions {
        let (ext_path, ext_file) = open_image(&pool, extension)?;
        let ext = std::path::Path::new(&ext_path);
        let read = || -> crate::image::Result<Vec<crate::image::units::UnitFile>> {
            let kind = crate::image::ImageKind::detect_open(&ext_file, ext)?;
            let file =
                ext_file.try_clone().map_err(|source| crate::image::Error::Io { path: ext.to_path_buf(), source })?;
            crate::image::extension::read_extension(
                std::path::Path::new(&path),
                &os_release,
                &info.prefixes,
                ext,
                file,
                kind,
                &Reading::unprivileged(),
            )
        };
        let found = read().map_err(|e| image_error(&e))?;
        crate::image::extension::merge_units(&mut units, found);
        paths.push(ext_path);
    }
    if !extensions.is_empty() {
        info.units = units
            .into_iter()
            .map(|u| UnitInfo { name: u.name, path: u.path, contents: if cat { u.contents } else { String::new() } })
            .collect();
    }
    Ok((info, paths))
}

/// An image error of the client's own reading, as wharfd would have said
/// it (the same kind in `--json`).
fn image_error(error: &crate::image::Error) -> CliError {
    CliError::Daemon(crate::daemon::image_bus_error(error, error.to_string()))
}

/// Finds an image as the user named it and opens it with the user's rights.
fn open_image(pool: &Pool, arg: &str) -> Result<(String, std::fs::File), CliError> {
    let path = pool.locate_image(arg, Some(&current_dir()?)).map_err(|e| image_error(&e))?;
    let file = std::fs::File::open(&path).map_err(|e| CliError::Usage(format!("image '{}': {e}", path.display())))?;
    Ok((path.display().to_string(), file))
}

/// `is-attached --json`: the image named as `list` and `inspect` name it
/// (`name`, `path`), then its attachment (whose `image`, the path, stays
/// for the scripts that read it).
#[derive(Debug, serde::Serialize)]
struct AttachedView<'a> {
    name: String,
    path: &'a str,
    #[serde(flatten)]
    status: &'a crate::portable::status::ImageStatus,
}

impl<'a> AttachedView<'a> {
    fn new(status: &'a crate::portable::status::ImageStatus) -> Self {
        let path = status.image.as_str();
        let name = std::path::Path::new(path).file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
        AttachedView { name, path, status }
    }
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
    #[serde(skip_serializing_if = "<[String]>::is_empty")]
    extensions: &'a [String],
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
            extensions: &[],
        }
    }
}

fn inspect_text(info: &ImageInfo, extensions: &[String], cat: bool) -> String {
    let os = crate::image::OsRelease(info.os_release.clone());
    let mut out = format!("Image:\n    {}\nKind:\n    {}\n", info.path, info.kind);
    if let Some(pretty) = os.pretty_name() {
        out.push_str(&format!("Portable Service:\n    {pretty}\n"));
    }
    if !extensions.is_empty() {
        out.push_str("Extensions:\n");
        for extension in extensions {
            out.push_str(&format!("    {extension}\n"));
        }
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

/// What an operation does to the units it reports.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Verb {
    Start,
    Stop,
    Restart,
}

/// `--json` of attach, detach and reattach: what changed (or, with
/// `--check`, what would change).
#[derive(Debug, serde::Serialize)]
struct OperationView<'a> {
    #[serde(flatten)]
    result: &'a OperationResult,
    check: bool,
}

/// Prints what an operation changed (or, planned with `--check`, would
/// change), as portablectl does, or as JSON.
fn emit_operation(
    format: Format,
    quiet: bool,
    result: &OperationResult,
    verb: Verb,
    check: bool,
) -> Result<(), CliError> {
    if quiet && !format.is_json() {
        return Ok(());
    }
    format.emit(&OperationView { result, check }, |view| {
        let result = view.result;
        let would = |done: &str, planned: &str| if check { planned.to_string() } else { done.to_string() };
        let mut lines: Vec<String> = result
            .changes
            .iter()
            .map(|change| match change.kind.as_str() {
                "mkdir" => format!("{} {}.", would("Created directory", "Would create directory"), change.path),
                "write" => format!("{} {}.", would("Written", "Would write"), change.path),
                "symlink" => format!(
                    "{} {} \u{2192} {}.",
                    would("Created symlink", "Would create symlink"),
                    change.path,
                    change.source
                ),
                "unlink" => format!("{} {}.", would("Removed", "Would remove"), change.path),
                other => format!("{other} {}.", change.path),
            })
            .collect();
        if result.changes.is_empty() && verb == Verb::Start {
            lines.push(format!("Attached already, exactly so: nothing to do ({}).", result.units.join(", ")));
        }
        let word = match (verb, check) {
            (Verb::Start, false) => "Started",
            (Verb::Stop, false) => "Stopped",
            (Verb::Restart, false) => "Restarted",
            (Verb::Start, true) => "Would start",
            (Verb::Stop, true) => "Would stop",
            (Verb::Restart, true) => "Would restart",
        };
        let units = result.restarted.iter().map(|unit| format!("{word} {unit}."));
        // Units are stopped before their files go, and started after they come.
        if verb == Verb::Stop {
            lines.splice(0..0, units);
        } else {
            lines.extend(units);
        }
        if check {
            lines.push("(check: nothing was changed)".to_string());
        }
        lines.join("\n")
    })
}
