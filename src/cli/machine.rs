//! `machine`: machine images and containers, as machinectl(1) knows them,
//! through wharfd.

use std::os::fd::AsFd;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::{Parser, Subcommand};

use std::io::Write;

use super::output::{Format, OutputArgs, ReadOnlyView, human_size, images_table, per_name_record, table};
use super::progress::{Transfer, bounded, transfer, with_progress, within};
use super::properties;
use super::{CliError, current_dir, parse_bool, system_bus};
use crate::api::MachineProxy;
use crate::compress::Compression;
use crate::image::Pool;

/// Manage machine images and the containers booted from them.
#[derive(Debug, Parser)]
#[command(name = "machine", version)]
pub struct Cli {
    #[command(flatten)]
    pub output: OutputArgs,
    /// Before the command, as machinectl takes it (`machine -a clean`):
    /// the command's own --all.
    #[arg(short = 'a', long = "all")]
    pub all: bool,
    #[command(subcommand)]
    pub command: Command,
}

impl Cli {
    /// Moves an --all given before the command into the command.
    fn move_all_into_command(&mut self) {
        if self.all {
            match &mut self.command {
                Command::ListImages { all } | Command::Clean { all } | Command::List { all } => *all = true,
                Command::ShowImage { select, .. } | Command::Show { select, .. } => select.all = true,
                _ => {}
            }
        }
    }
}

// Parsed once per run and matched at once: the size of `Start` costs nothing.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Subcommand)]
pub enum Command {
    /// List machine images in /var/lib/machines and the rest of the search path.
    ListImages {
        /// Also hidden images (those whose name starts with '.').
        #[arg(short, long)]
        all: bool,
    },
    /// Show an image's properties as machinectl show-image prints them
    /// (Name, Path, Type, ReadOnly, CreationTimestamp, ModificationTimestamp,
    /// Usage, Limit, ...), as machined reports them.
    ShowImage {
        /// An image in the search path.
        name: String,
        #[command(flatten)]
        select: ShowArgs,
    },
    /// Show a summary of images, as machinectl image-status does.
    ImageStatus {
        /// Images in the search path.
        #[arg(required = true, value_name = "NAME")]
        names: Vec<String>,
    },
    /// Bring the host to what a fleet file says, all or nothing (see wharf-fleet(5)).
    Apply(super::fleet::ApplyArgs),
    /// Who changed what and when: wharfd's audit entries in the journal, oldest first.
    History(super::history::HistoryArgs),
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
    /// Set the size limit of an image, or without NAME of all images
    /// together, where the file system allows it (btrfs quota groups, as
    /// machinectl set-limit).
    SetLimit {
        /// [NAME] BYTES: the image (none: the pool), then bytes with an
        /// optional K, M, G, T, P or E (1.5G), or '-' for no limit.
        #[arg(num_args = 1..=2, required = true, value_name = "[NAME] BYTES", allow_hyphen_values = true)]
        args: Vec<String>,
    },
    /// Remove hidden images (whose names start with a dot), or with --all
    /// every image; read-only images are kept, and nothing is removed
    /// while a machine runs off one of them.
    Clean {
        /// Every image, not only hidden ones.
        #[arg(short, long)]
        all: bool,
    },
    /// List the imports and exports in progress.
    ListTransfers,
    /// Stop imports or exports in progress; what they built is removed.
    CancelTransfer {
        /// Transfer ids, as list-transfers shows them.
        #[arg(required = true, value_name = "ID")]
        ids: Vec<String>,
    },
    /// Import a tar archive (plain, xz, gzip, zstd or bzip2) as a directory image.
    ImportTar {
        /// The archive; - reads standard input.
        file: PathBuf,
        /// Image name; by default the file name without its suffixes.
        name: Option<String>,
    },
    /// Import a raw disk or file system image (plain, xz, gzip, zstd or bzip2).
    ImportRaw {
        /// The image: squashfs, ext4, erofs or GPT; - reads standard input.
        file: PathBuf,
        /// Image name; by default the file name without its suffixes.
        name: Option<String>,
    },
    /// Import a tar archive or a raw image, told apart by their contents
    /// (plain, xz, gzip, zstd or bzip2): what import-tar or import-raw would do.
    Import {
        /// The archive or image; - reads standard input.
        file: PathBuf,
        /// Image name; by default the file name without its suffixes.
        name: Option<String>,
    },
    /// Download a raw image (plain, xz, gzip, zstd or bzip2) and verify it.
    PullRaw(super::pull::PullArgs),
    /// Download a tar archive (plain, xz, gzip, zstd or bzip2) as a directory image, and verify it.
    PullTar(super::pull::PullArgs),
    /// Pull an image from an OCI (Docker) registry as a directory image:
    /// every blob verified by its digest, the layers applied with their
    /// whiteouts, the image config kept in the image.
    PullOci(super::pull::OciPullArgs),
    /// Import a directory tree as a directory image.
    ImportFs {
        /// The tree, copied with its owners, modes, times and extended attributes.
        directory: PathBuf,
        /// Image name; by default the directory's name.
        name: Option<String>,
    },
    /// Export a directory image as a tar archive (.xz, .gz, .zst, .bz2 compress it).
    ExportTar {
        /// The directory image to export.
        name: String,
        /// The archive to write; a file of that name is replaced once the export is complete.
        file: PathBuf,
    },
    /// Export a raw image (.xz, .gz, .zst, .bz2 compress it).
    ExportRaw {
        /// The raw image to export.
        name: String,
        /// The file to write; a file of that name is replaced once the export is complete.
        file: PathBuf,
    },
    /// Boot machines from their images, in transient units with their
    /// limits: several boot side by side; each that fails is reported and
    /// the others still start.
    Start {
        /// Machines (images in the search path) to boot.
        #[arg(required = true, value_name = "NAME")]
        names: Vec<String>,
        /// A resource limit, as systemctl set-property takes it (MemoryMax=512M,
        /// CPUQuota=50%, TasksMax=200, ...); repeatable.
        #[arg(short, long = "property", value_name = "KEY=VALUE")]
        properties: Vec<String>,
        /// User namespace: pick (a free range; the default), no, or the first UID of the range.
        #[arg(long, value_name = "pick|no|UID")]
        private_users: Option<String>,
        /// How the image's files get the user namespace's owners: auto (an
        /// idmapped mount where the file system allows, else chown; the
        /// default), idmap (or fail), or chown (shift the image once).
        #[arg(long, value_name = "auto|idmap|chown")]
        private_users_ownership: Option<String>,
        /// An image policy in systemd's syntax (systemd.image-policy(7)),
        /// e.g. root=verity:=absent, that the image is checked against
        /// before it boots.
        #[arg(long, value_name = "POLICY")]
        image_policy: Option<String>,
        /// Network: host (the default: the host's), private (only
        /// loopback), veth (a veth pair ve-NAME/host0, addressed from
        /// wharf's pool, masqueraded), bridge:BRIDGE (the host end joins
        /// an existing bridge) or zone:ZONE (a bridge vz-ZONE that wharf
        /// manages, shared by the zone's machines).
        #[arg(long, value_name = "NETWORK")]
        network: Option<String>,
        /// Forward a host port to the machine: [tcp:|udp:]HOST[:MACHINE]
        /// (with --network=veth or zone:ZONE); repeatable.
        #[arg(long = "port", value_name = "PORT")]
        ports: Vec<String>,
        /// Capabilities kept beyond nspawn's default set (CAP_A,CAP_B or all).
        #[arg(long, value_name = "CAP[,CAP...]")]
        capability: Option<String>,
        /// Capabilities dropped from the bounding set (CAP_A,CAP_B or all).
        #[arg(long, value_name = "CAP[,CAP...]")]
        drop_capability: Option<String>,
        /// Run the machine's init with no_new_privs set (no setuid gains).
        #[arg(long, value_name = "yes|no")]
        no_new_privileges: Option<String>,
        /// Bind a host directory or file into the machine, as systemd-nspawn
        /// --bind= (OPTIONS: rbind, norbind, idmap, noidmap, rootidmap);
        /// repeatable.
        #[arg(long = "bind", value_name = "SRC[:DST[:OPTIONS]]")]
        binds: Vec<String>,
        /// As --bind=, read-only.
        #[arg(long = "bind-ro", value_name = "SRC[:DST[:OPTIONS]]")]
        binds_ro: Vec<String>,
        /// An environment variable for the machine's init; repeatable.
        #[arg(short = 'E', long = "setenv", value_name = "VAR=VALUE")]
        setenv: Vec<String>,
        /// Seconds to wait for the machine's init to report ready.
        #[arg(long, default_value_t = 60, value_name = "SECONDS")]
        timeout: u32,
        /// Do not wait for the machine's init to report ready: return once
        /// its unit is being started.
        #[arg(long, conflicts_with = "timeout")]
        no_block: bool,
    },
    /// Power machines off (SIGRTMIN+4 to their inits), all at once, and wait until they are gone.
    Poweroff {
        /// Running machines.
        #[arg(required = true, value_name = "NAME")]
        names: Vec<String>,
        /// Do not wait.
        #[arg(long)]
        no_block: bool,
    },
    /// Reboot a machine (SIGINT to its init).
    Reboot {
        /// Running machines.
        #[arg(required = true, value_name = "NAME")]
        names: Vec<String>,
    },
    /// Stop a machine's unit at once.
    Terminate {
        /// Running machines.
        #[arg(required = true, value_name = "NAME")]
        names: Vec<String>,
    },
    /// Send a signal to a machine's processes.
    Kill {
        /// Running machines.
        #[arg(required = true, value_name = "NAME")]
        names: Vec<String>,
        /// The signal (name or number); SIGTERM by default.
        #[arg(short, long, default_value = "SIGTERM")]
        signal: String,
        /// leader (its init) or all (every process).
        #[arg(long, default_value = "all", value_name = "leader|all")]
        kill_whom: String,
    },
    /// List running machines.
    List {
        /// Also the host itself (.host), as machinectl list --all.
        #[arg(short, long)]
        all: bool,
    },
    /// Show a running machine as machinectl status does (since, leader,
    /// service, root, addresses, OS, its unit's processes, its last journal
    /// lines), with its limits.
    Status {
        /// A running machine.
        name: String,
        /// How many journal lines to show (0: none).
        #[arg(short = 'n', long, default_value_t = JOURNAL_LINES, value_name = "N")]
        lines: usize,
        /// Accepted as machinectl accepts it: wharf never shortens lines.
        #[arg(short = 'l', long)]
        full: bool,
        /// Show at most N addresses (then "..." when there are more).
        #[arg(long, value_name = "N")]
        max_addresses: Option<usize>,
        /// How the journal lines are shown, as journalctl --output= takes it.
        #[arg(short, long, value_name = "MODE", default_value = "short", value_parser = clap::builder::PossibleValuesParser::new(JOURNAL_MODES))]
        output: String,
    },
    /// Show a running machine's properties as machinectl show prints them
    /// (Name, Id, Timestamp, TimestampMonotonic, Service, Unit, Leader, Class,
    /// RootDirectory, NetworkInterfaces, State), then its unit's resource
    /// limits (whoever started it).
    Show {
        /// A running machine.
        name: String,
        #[command(flatten)]
        select: ShowArgs,
    },
    /// Change resource limits of a running machine, live (also of one nspawn runs).
    SetProperty {
        /// A running machine.
        name: String,
        /// Resource limits, as systemctl set-property takes them (MemoryMax=512M, CPUQuota=50%, ...).
        #[arg(required = true, value_name = "KEY=VALUE")]
        properties: Vec<String>,
        /// Also keep them in /etc/wharf/machines/NAME.toml, for every start
        /// (only for machines wharf starts).
        #[arg(long)]
        save: bool,
        /// Change nothing: check the limits as a real run would and print
        /// them as wharf keeps them (MemoryMax=512M as 536870912).
        #[arg(long)]
        check: bool,
    },
    /// Start machines at boot (through machines.target).
    Enable {
        /// Machines (images in the search path).
        #[arg(required = true, value_name = "NAME")]
        names: Vec<String>,
    },
    /// Do not start machines at boot.
    Disable {
        /// Machines (images in the search path).
        #[arg(required = true, value_name = "NAME")]
        names: Vec<String>,
    },
    /// Bind a host directory or file into a running machine (idmapped when
    /// the machine has a user namespace, so owners are the host's).
    Bind {
        /// A running machine.
        name: String,
        /// The host path.
        source: PathBuf,
        /// Where in the machine (absolute); SOURCE by default.
        destination: Option<String>,
        /// Mount it read-only.
        #[arg(long)]
        read_only: bool,
        /// Create the mount point (and its parents) when missing.
        #[arg(long)]
        mkdir: bool,
    },
    /// Copy a host file or directory into a running machine, owners mapped
    /// into its UID range.
    CopyTo {
        /// A running machine.
        name: String,
        /// The host path.
        source: PathBuf,
        /// Where in the machine (absolute; must not exist); SOURCE by default.
        destination: Option<String>,
    },
    /// Copy a file or directory of a running machine to the host, owners
    /// mapped out of its UID range.
    CopyFrom {
        /// A running machine.
        name: String,
        /// The path in the machine (absolute).
        source: String,
        /// Where on the host (must not exist); SOURCE by default.
        destination: Option<PathBuf>,
    },
    /// Open a login prompt in a machine (^] three times within 1s leaves).
    Login {
        /// A running machine.
        name: String,
    },
    /// Run a command (or a shell) in a machine; exits with its exit status.
    /// NAME may be USER@NAME, or USER@ may follow NAME. The command runs
    /// with the capabilities of the machine's init, started by a transient
    /// unit of its own (wharf-shell-NAME-*.service in machine.slice), in a
    /// cgroup below the machine's, so that the machine's limits count its
    /// processes. On a terminal it gets a terminal of the machine's own
    /// (this one in raw mode: ^C, ^Z and ^\ reach the command; ^] three
    /// times within 1s leaves); otherwise pipes, which wharf relays: never
    /// this command's own descriptors. It gets this terminal's TERM. When
    /// the command ends, when this client leaves or is killed, every
    /// process it started in the machine is stopped.
    Shell {
        /// Set an environment variable of the command (repeatable), taken
        /// literally: no $VAR in VALUE is expanded.
        #[arg(short = 'E', long = "setenv", value_name = "VAR=VALUE")]
        setenv: Vec<String>,
        /// The user to run as when neither USER@NAME nor USER@ names one.
        #[arg(long, value_name = "USER")]
        uid: Option<String>,
        /// A running machine, or USER@NAME.
        name: String,
        /// The user to run as (USER@; root by default), then the command and its
        /// arguments (the user's shell by default).
        #[arg(trailing_var_arg = true, allow_hyphen_values = true, value_name = "[USER@] [COMMAND]")]
        command: Vec<String>,
    },
}

/// The options of `show` and `show-image`, as machinectl takes them.
#[derive(Debug, Clone, clap::Args)]
pub struct ShowArgs {
    /// Show only this property (repeatable; or a comma-separated list).
    #[arg(short = 'p', long = "property", value_name = "NAME")]
    property: Vec<String>,
    /// Print only the values, not the names.
    #[arg(long)]
    value: bool,
    /// Print empty properties too.
    #[arg(short, long)]
    all: bool,
}

impl ShowArgs {
    fn selection(&self) -> properties::Selection {
        properties::Selection {
            names: properties::property_names(&self.property),
            value_only: self.value,
            all: self.all,
        }
    }
}

/// The image name an imported file gets when none is given.
fn default_name(file: &Path) -> String {
    let name = file.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    const SUFFIXES: &[&str] = &[
        ".tar.xz", ".tar.gz", ".tar.zst", ".tar.bz2", ".tgz", ".tar", ".raw.xz", ".raw.gz", ".raw.zst", ".raw.bz2",
        ".raw", ".xz", ".gz", ".zst", ".bz2",
    ];
    SUFFIXES.iter().find_map(|suffix| name.strip_suffix(suffix)).unwrap_or(&name).to_string()
}

/// The input of an import and the image's name: `-` is standard input,
/// for which a name must be given.
fn import_input(file: &Path, name: Option<String>) -> Result<(std::fs::File, String), CliError> {
    if file == Path::new("-") {
        let name = name.ok_or_else(|| CliError::Usage("an import from standard input needs an image name".into()))?;
        let stdin = std::io::stdin()
            .as_fd()
            .try_clone_to_owned()
            .map_err(|e| CliError::Usage(format!("standard input: {e}")))?;
        return Ok((std::fs::File::from(stdin), name));
    }
    let name = name.unwrap_or_else(|| default_name(file));
    Ok((open_input(file)?, name))
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

/// Runs `call` for every name at once, on the one bus connection; the
/// results come back in the names' order.
async fn at_once<'a, T, F, Fut>(names: &'a [String], call: F) -> Vec<Result<T, CliError>>
where
    F: Fn(&'a str) -> Fut,
    Fut: std::future::Future<Output = Result<T, CliError>> + 'a,
{
    futures_util::future::join_all(names.iter().map(|name| call(name.as_str()))).await
}

/// One line on stderr for a machine that failed, as a single failure is
/// reported (its message names the machine).
fn report_failure(error: &CliError) {
    eprintln!("machine: {}", super::one_line(&error.to_string()));
}

/// Success when every call worked; otherwise each failure reported on a
/// line of its own, and failure. The others were carried out all the same.
/// With `--json`, one document: a record per name (`done` gives what was
/// done to it), the failed ones with their error.
fn all_or_report(
    format: Format,
    names: &[String],
    results: Vec<Result<(), CliError>>,
    done: impl Fn(&str) -> serde_json::Value,
) -> Result<ExitCode, CliError> {
    let mut failed = false;
    for error in results.iter().filter_map(|r| r.as_ref().err()) {
        report_failure(error);
        failed = true;
    }
    if format.is_json() {
        let records: Vec<serde_json::Value> = names
            .iter()
            .zip(results)
            .map(|(name, result)| per_name_record(name, &result.map(|()| done(name))))
            .collect();
        format.emit(&records, |_| String::new())?;
    }
    Ok(if failed { ExitCode::from(super::EXIT_FAILURE) } else { ExitCode::SUCCESS })
}

/// A running machine with `--json` (`list`, `status`): wharfd's record, in
/// its order, its limits an object of names and values, as `show` gives
/// them (`Limits`, `SavedLimits`) and `set-property` takes them.
#[derive(serde::Serialize)]
struct MachineView<'a> {
    name: &'a str,
    class: &'a str,
    service: &'a str,
    unit: &'a str,
    leader: u32,
    root_directory: &'a str,
    state: &'a str,
    status: &'a str,
    limits: serde_json::Value,
    since_usec: u64,
    os: &'a str,
    addresses: &'a [String],
    cgroup: &'a [String],
    #[serde(skip)]
    info: &'a crate::api::MachineInfo,
}

impl<'a> MachineView<'a> {
    fn new(m: &'a crate::api::MachineInfo) -> Self {
        MachineView {
            name: &m.name,
            class: &m.class,
            service: &m.service,
            unit: &m.unit,
            leader: m.leader,
            root_directory: &m.root_directory,
            state: &m.state,
            status: &m.status,
            limits: limits_object(&m.limits),
            since_usec: m.since_usec,
            os: &m.os,
            addresses: &m.addresses,
            cgroup: &m.cgroup,
            info: m,
        }
    }
}

/// Limits as `--json` gives them everywhere: `{"MemoryMax": "536870912"}`.
fn limits_object(limits: &[(String, String)]) -> serde_json::Value {
    serde_json::Value::Object(limits.iter().map(|(k, v)| (k.clone(), v.clone().into())).collect())
}

pub fn main() -> ExitCode {
    let cli = Cli::parse();
    crate::logging::init_cli(cli.output.verbose);
    let json = Format::new(&cli.output).is_json();
    super::run_tool("machine", json, run(cli))
}

async fn run(mut cli: Cli) -> Result<ExitCode, CliError> {
    cli.move_all_into_command();
    let format = Format::new(&cli.output);
    let bus = system_bus().await?;
    let _agent = super::authorization(&cli.output);
    let machine = within(MachineProxy::new(&bus)).await?;
    let show = !cli.output.quiet && !format.is_json();
    match cli.command {
        Command::ListImages { all } => {
            let mut images = within(machine.list_images()).await?;
            images.retain(|image| all || !image.name.starts_with('.'));
            if all {
                images.extend(hidden_images(&bus, &images).await?);
            }
            format.emit(&images, |images| images_table(images, false, format.legend()))?;
        }
        Command::Apply(args) => return super::fleet::apply(&bus, args, format, cli.output.quiet).await,
        Command::History(args) => super::history::run(args, crate::audit::Domain::Machine, format)?,
        Command::ReadOnly { image, read_only } => {
            let image = Pool::machines().argument_for_daemon(&image, &current_dir()?);
            bounded(&bus, machine.mark_read_only(&image, read_only)).await?;
            format.emit(&ReadOnlyView::new(&Pool::machines(), &image, read_only)?, |_| String::new())?;
        }
        Command::Clone { name, new_name, read_only } => {
            let path = with_progress(&bus, show, machine.clone_image(&name, &new_name, read_only)).await?;
            emit_path(format, cli.output.quiet, "Cloned", &path)?;
        }
        Command::Rename { name, new_name } => {
            let path = bounded(&bus, machine.rename_image(&name, &new_name)).await?;
            emit_path(format, cli.output.quiet, "Renamed to", &path)?;
        }
        Command::Remove { names } => {
            let mut removed = Vec::new();
            for name in names {
                removed.push(bounded(&bus, machine.remove_image(&name)).await?);
            }
            if !cli.output.quiet || format.is_json() {
                format.emit(&removed, |removed| {
                    removed.iter().map(|p| format!("Removed {p}.")).collect::<Vec<_>>().join("\n")
                })?;
            }
        }
        Command::ImportTar { file, name } => {
            let (input, name) = import_input(&file, name)?;
            let call = machine.import_tar(input.as_fd().into(), &name);
            let path = transfer(&bus, show, transfer_of("import", &name), call).await?;
            emit_path(format, cli.output.quiet, "Imported", &path)?;
        }
        Command::ImportRaw { file, name } => {
            let (input, name) = import_input(&file, name)?;
            let call = machine.import_raw(input.as_fd().into(), &name);
            let path = transfer(&bus, show, transfer_of("import", &name), call).await?;
            emit_path(format, cli.output.quiet, "Imported", &path)?;
        }
        Command::Import { file, name } => {
            let (input, name) = import_input(&file, name)?;
            let call = machine.import_image(input.as_fd().into(), &name);
            let path = transfer(&bus, show, transfer_of("import", &name), call).await?;
            emit_path(format, cli.output.quiet, "Imported", &path)?;
        }
        Command::PullRaw(ref pull) | Command::PullTar(ref pull) => {
            let kind = if matches!(cli.command, Command::PullTar(_)) { "tar" } else { "raw" };
            let call = machine.pull_image(&pull.url, pull.name_for_daemon(), kind, &pull.verify, pull.flags());
            let what = Transfer { tool: "machine", verb: "pull", name: pull.local_name(), scratch: None };
            let path = transfer(&bus, show, what, call).await?;
            emit_path(format, cli.output.quiet, "Pulled", &path)?;
        }
        Command::PullOci(ref pull) => {
            let call = machine.pull_oci_image(&pull.reference, pull.name_for_daemon(), pull.flags());
            let what = Transfer { tool: "machine", verb: "pull", name: pull.local_name(), scratch: None };
            let path = transfer(&bus, show, what, call).await?;
            emit_path(format, cli.output.quiet, "Pulled", &path)?;
        }
        Command::ImportFs { directory, name } => {
            let name = name.unwrap_or_else(|| default_name(&directory));
            let input = open_input(&directory)?;
            let call = machine.import_fs(input.as_fd().into(), &name);
            let path = transfer(&bus, show, transfer_of("import", &name), call).await?;
            emit_path(format, cli.output.quiet, "Imported", &path)?;
        }
        Command::Start {
            names,
            properties,
            private_users,
            private_users_ownership,
            image_policy,
            network,
            ports,
            capability,
            drop_capability,
            no_new_privileges,
            binds,
            binds_ro,
            setenv,
            timeout,
            no_block,
        } => {
            let timeout = if no_block { 0 } else { timeout };
            let ports = (!ports.is_empty()).then(|| ports.join(","));
            let mut specs = Vec::new();
            for (list, read_only) in [(binds, false), (binds_ro, true)] {
                for text in list {
                    let spec = crate::machine::files::BindSpec::parse(&text, read_only).map_err(CliError::Usage)?;
                    specs.push(spec.launch_value());
                }
            }
            let bind = (!specs.is_empty()).then(|| serde_json::to_string(&specs).expect("strings serialise"));
            for assignment in &setenv {
                crate::machine::launcher::parse_assignment(assignment)
                    .map_err(|e| CliError::Usage(format!("--setenv: {e}")))?;
            }
            let setenv = (!setenv.is_empty()).then(|| serde_json::to_string(&setenv).expect("strings serialise"));
            let confinement: std::collections::HashMap<String, String> = [
                ("port", ports),
                ("private-users-ownership", private_users_ownership),
                ("image-policy", image_policy),
                ("capability", capability),
                ("drop-capability", drop_capability),
                ("no-new-privileges", no_new_privileges),
                ("bind", bind),
                ("setenv", setenv),
            ]
            .into_iter()
            .filter_map(|(key, value)| value.map(|v| (key.to_string(), v)))
            .collect();
            let pu = private_users.unwrap_or_default();
            let net = network.unwrap_or_default();
            // All at once: wharfd boots them side by side (as many at a
            // time as its max-parallel-starts allows), and the call
            // returns when each is ready or has failed.
            let started = at_once(&names, |name| {
                let (machine, bus, properties, pu, net, confinement) =
                    (&machine, &bus, &properties, &pu, &net, &confinement);
                async move {
                    // As systemctl start of an active unit: nothing to do, and a success.
                    if let Ok(info) = within(machine.get_machine(name)).await {
                        return Ok((info.unit, true, true));
                    }
                    let (unit, ready) =
                        bounded(bus, machine.start_machine(name, properties, pu, net, confinement, timeout)).await?;
                    Ok((unit, ready, false))
                }
            })
            .await;
            let mut failed = false;
            let mut records = Vec::new();
            let mut lines = Vec::new();
            for (name, result) in names.iter().zip(started) {
                let result = result.map(|(unit, ready, already)| {
                    lines.push(if already {
                        format!("Machine {name} is running already ({unit}).")
                    } else if ready {
                        format!("Machine {name} is running ({unit}); its init reported ready.")
                    } else if no_block {
                        format!("Machine {name} is starting ({unit}).")
                    } else {
                        format!("Machine {name} is starting ({unit}); its init did not report ready within {timeout}s.")
                    });
                    serde_json::json!({ "unit": unit, "ready": ready, "already_running": already })
                });
                if let Err(e) = &result {
                    failed = true;
                    report_failure(e);
                }
                records.push(per_name_record(name, &result));
            }
            // One document for all of them, the failed ones with their error.
            if format.is_json() {
                format.emit(&records, |_| String::new())?;
            } else if !cli.output.quiet && !lines.is_empty() {
                println!("{}", lines.join("\n"));
            }
            if failed {
                return Ok(ExitCode::from(super::EXIT_FAILURE));
            }
        }
        Command::Poweroff { names, no_block } => {
            let signal = crate::machine::init::poweroff_signal();
            let done = at_once(&names, |name| bounded(&bus, machine.signal_machine(name, signal, !no_block))).await;
            return all_or_report(
                format,
                &names,
                done,
                |_| serde_json::json!({ "signal": signal, "waited": !no_block }),
            );
        }
        Command::Reboot { names } => {
            let signal = crate::machine::init::REBOOT_SIGNAL;
            let done = at_once(&names, |name| bounded(&bus, machine.signal_machine(name, signal, false))).await;
            return all_or_report(format, &names, done, |_| serde_json::json!({ "signal": signal }));
        }
        Command::Terminate { names } => {
            let done = at_once(&names, |name| bounded(&bus, machine.terminate_machine(name))).await;
            return all_or_report(format, &names, done, |_| serde_json::json!({}));
        }
        Command::Kill { names, signal, kill_whom } => {
            let signal = signal_number(&signal)?;
            for name in &names {
                bounded(&bus, machine.kill_machine(name, &kill_whom, signal)).await?;
            }
            if format.is_json() {
                let records: Vec<_> = names
                    .iter()
                    .map(|name| serde_json::json!({ "name": name, "signal": signal, "kill_whom": kill_whom }))
                    .collect();
                format.emit(&records, |_| String::new())?;
            }
        }
        Command::List { all } => {
            let mut machines = within(machine.list_machines()).await?;
            machines.retain(|m| all || m.name != ".host");
            let views: Vec<MachineView> = machines.iter().map(MachineView::new).collect();
            format.emit(&views, |_| {
                if machines.is_empty() {
                    return if format.legend() { "No machines.".to_string() } else { String::new() };
                }
                let rows: Vec<Vec<String>> = machines
                    .iter()
                    .map(|m| vec![m.name.clone(), m.class.clone(), m.service.clone(), m.state.clone(), m.unit.clone()])
                    .collect();
                table(&["MACHINE", "CLASS", "SERVICE", "STATE", "UNIT"], &rows, format.legend())
            })?;
        }
        Command::Status { name, lines, full: _, max_addresses, output } => {
            let mut info = within(machine.get_machine(&name)).await?;
            if let Some(max) = max_addresses
                && info.addresses.len() > max
            {
                info.addresses.truncate(max);
                info.addresses.push("…".to_string());
            }
            format.emit(&MachineView::new(&info), |view| status_text(view.info))?;
            if !format.is_json() && lines > 0 {
                // As machinectl status: the unit's last journal lines, read
                // with the caller's own rights (none when it may not read them).
                use std::io::Write;
                let tail = journal_tail(&info.unit, lines, &output);
                std::io::stdout().lock().write_all(tail.as_bytes()).map_err(CliError::Output)?;
            }
        }
        Command::Show { name, select } => {
            // wharfd first: it says in one line when the machine is not running.
            let info = within(machine.get_machine(&name)).await?;
            let machined = zbus_systemd::machine1::ManagerProxy::new(&bus).await?;
            let path = within(machined.get_machine(name.clone())).await?;
            let mut props = properties::ordered(
                machined_properties(&bus, path, "org.freedesktop.machine1.Machine").await?,
                properties::MACHINE_ORDER,
            );
            props.extend(info.limits.iter().map(|(k, v)| (k.clone(), properties::PropValue::Str(v.clone()))));
            let mut keeping = if format.is_json() { kept_settings(&bus, &name).await? } else { Default::default() };
            if format.is_json() {
                // Beside machinectl's flat properties, the limits in the
                // shape of SavedLimits and of status's limits.
                keeping.insert("Limits".to_string(), limits_object(&info.limits));
            }
            print_properties(format, &props, &select.selection(), &format!("machine '{name}'"), keeping)?;
        }
        Command::ShowImage { name, select } => {
            let path = machined_image(&bus, &name).await?;
            let props = properties::ordered(
                machined_properties(&bus, path, "org.freedesktop.machine1.Image").await?,
                properties::IMAGE_ORDER,
            );
            print_properties(format, &props, &select.selection(), &format!("image '{name}'"), Default::default())?;
        }
        Command::ImageStatus { names } => {
            let mut records = Vec::new();
            for name in &names {
                let path = machined_image(&bus, name).await?;
                let props = machined_properties(&bus, path, "org.freedesktop.machine1.Image").await?;
                let record: std::collections::BTreeMap<_, _> =
                    props.into_iter().filter_map(|(k, v)| properties::format_value(&k, &v).map(|v| (k, v))).collect();
                let keeping = if format.is_json() { kept_settings(&bus, name).await? } else { Default::default() };
                records.push((record, keeping));
            }
            let documents: Vec<serde_json::Map<String, serde_json::Value>> = records
                .iter()
                .map(|(record, keeping)| {
                    let mut document: serde_json::Map<_, _> =
                        record.iter().map(|(k, v)| (k.clone(), v.clone().into())).collect();
                    document.extend(keeping.clone());
                    document
                })
                .collect();
            format.emit(&documents, |_| {
                records.iter().map(|(record, _)| image_status_text(record)).collect::<Vec<_>>().join("\n")
            })?;
        }
        Command::SetProperty { name, properties, save, check } => {
            // Parsed here first: a refusal is the same with --check as without.
            let parsed = properties
                .iter()
                .map(|p| crate::machine::property::Property::parse(p))
                .collect::<Result<Vec<_>, _>>()
                .map_err(|e| CliError::Usage(format!("machine '{name}': {e}")))?;
            if check {
                if !save {
                    // Live limits need a running machine; wharfd says if it is not.
                    within(machine.get_machine(&name)).await?;
                }
            } else {
                bounded(&bus, machine.set_machine_properties(&name, &properties, save)).await?;
            }
            let limits: serde_json::Map<String, serde_json::Value> =
                parsed.iter().map(|p| (p.limit.name().to_string(), p.value_text().into())).collect();
            let record = serde_json::json!({ "name": name, "limits": limits, "save": save, "check": check });
            if format.is_json() {
                format.emit(&record, |_| String::new())?;
            } else if check && !cli.output.quiet {
                let words: Vec<String> = parsed.iter().map(ToString::to_string).collect();
                let kept = if save { ", and kept for later starts" } else { "" };
                println!("Would set {} on machine {name}{kept}.\n(check: nothing was changed)", words.join(" "));
            }
        }
        Command::Enable { ref names } | Command::Disable { ref names } => {
            let enable = matches!(cli.command, Command::Enable { .. });
            for name in names {
                bounded(&bus, machine.enable_machine(name, enable)).await?;
            }
            if format.is_json() {
                let records: Vec<_> =
                    names.iter().map(|name| serde_json::json!({ "name": name, "enabled": enable })).collect();
                format.emit(&records, |_| String::new())?;
            }
        }
        Command::Bind { name, source, destination, read_only, mkdir } => {
            let source = host_path(&source)?;
            let destination = destination.unwrap_or_else(|| source.clone());
            bounded(&bus, machine.bind_mount_machine(&name, &source, &destination, read_only, mkdir)).await?;
            let record = serde_json::json!({ "name": name, "source": source, "destination": destination, "read_only": read_only });
            if !cli.output.quiet || format.is_json() {
                format.emit(&record, |_| format!("Bound {source} to {destination} in machine {name}."))?;
            }
        }
        Command::CopyTo { name, source, destination } => {
            let source = host_path(&source)?;
            let destination = destination.unwrap_or_else(|| source.clone());
            bounded(&bus, machine.copy_to_machine(&name, &source, &destination)).await?;
            let record = serde_json::json!({ "name": name, "source": source, "destination": destination });
            if !cli.output.quiet || format.is_json() {
                format.emit(&record, |_| format!("Copied {source} to {destination} in machine {name}."))?;
            }
        }
        Command::CopyFrom { name, source, destination } => {
            let destination = host_path(destination.as_deref().unwrap_or(Path::new(&source)))?;
            bounded(&bus, machine.copy_from_machine(&name, &source, &destination)).await?;
            let record = serde_json::json!({ "name": name, "source": source, "destination": destination });
            if !cli.output.quiet || format.is_json() {
                format.emit(&record, |_| format!("Copied {source} in machine {name} to {destination}."))?;
            }
        }
        Command::Login { name } => {
            let (master, path) = bounded(&bus, machine.open_login(&name)).await?;
            tracing::debug!(path, "login terminal");
            super::terminal::relay(std::os::fd::OwnedFd::from(master)).map_err(CliError::Output)?;
        }
        Command::Shell { setenv, uid, name, command } => {
            return shell(&machine, &name, command, setenv, uid).await;
        }
        Command::SetLimit { args } => {
            let (name, limit) = super::limit_arguments(&args)?;
            bounded(&bus, machine.set_image_limit(name.unwrap_or(""), limit.unwrap_or(u64::MAX))).await?;
            if format.is_json() {
                format.emit(&serde_json::json!({ "name": name, "limit": limit }), |_| String::new())?;
            }
        }
        Command::Clean { all } => {
            let removed = bounded(&bus, machine.clean_images(all)).await?;
            if !cli.output.quiet || format.is_json() {
                let records: Vec<_> =
                    removed.iter().map(|(name, freed)| serde_json::json!({ "name": name, "freed": freed })).collect();
                format.emit(&records, |_| clean_text(&removed))?;
            }
        }
        Command::ListTransfers => {
            let transfers = within(machine.list_transfers()).await?;
            format.emit(&transfers, |transfers| transfers_table(transfers, format.legend()))?;
        }
        Command::CancelTransfer { ids } => {
            let ids = ids.iter().map(|id| parse_transfer_id(id)).collect::<Result<Vec<_>, _>>()?;
            for id in &ids {
                bounded(&bus, machine.cancel_transfer(*id)).await?;
            }
            if format.is_json() {
                let records: Vec<_> = ids.iter().map(|id| serde_json::json!({ "id": id })).collect();
                format.emit(&records, |_| String::new())?;
            }
        }
        Command::ExportTar { name, file } => {
            let written = host_path(&file)?;
            export(&bus, &machine, show, &name, &file, false).await?;
            emit_path(format, cli.output.quiet, "Exported to", &written)?;
        }
        Command::ExportRaw { name, file } => {
            let written = host_path(&file)?;
            export(&bus, &machine, show, &name, &file, true).await?;
            emit_path(format, cli.output.quiet, "Exported to", &written)?;
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// The properties of one of machined's objects (`interface` at `path`).
async fn machined_properties(
    bus: &zbus::Connection,
    path: zbus::OwnedObjectPath,
    interface: &'static str,
) -> Result<Vec<(String, properties::PropValue)>, CliError> {
    let proxy =
        zbus::fdo::PropertiesProxy::builder(bus).destination("org.freedesktop.machine1").path(path).build().await?;
    let all =
        within(async { Ok(proxy.get_all(zbus::names::InterfaceName::from_static_str_unchecked(interface)).await?) })
            .await?;
    Ok(all.iter().map(|(name, value)| (name.clone(), properties::PropValue::from(value))).collect())
}

/// The hidden images machined knows beyond `listed` (`.host`, the host's
/// own root, and images whose name starts with a dot), for `list-images
/// --all` as machinectl lists them.
async fn hidden_images(
    bus: &zbus::Connection,
    listed: &[crate::api::ImageEntry],
) -> Result<Vec<crate::api::ImageEntry>, CliError> {
    let machined = zbus_systemd::machine1::ManagerProxy::new(bus).await?;
    let mut hidden = Vec::new();
    for (name, kind, read_only, _, modified_usec, usage, object) in within(machined.list_images()).await? {
        if !name.starts_with('.') || listed.iter().any(|image| image.name == name) {
            continue;
        }
        let props = machined_properties(bus, object, "org.freedesktop.machine1.Image").await?;
        let path = props
            .iter()
            .find(|(key, _)| key == "Path")
            .and_then(|(key, value)| properties::format_value(key, value))
            .unwrap_or_default();
        let size = if usage == u64::MAX { 0 } else { usage };
        hidden.push(crate::api::ImageEntry { name, path, kind, state: "-".into(), read_only, size, modified_usec });
    }
    Ok(hidden)
}

/// machined's object of an image; one line naming it when there is none.
async fn machined_image(bus: &zbus::Connection, name: &str) -> Result<zbus::OwnedObjectPath, CliError> {
    let machined = zbus_systemd::machine1::ManagerProxy::new(bus).await?;
    match within(machined.get_image(name.to_string())).await {
        Err(CliError::Daemon(crate::api::BusError::ZBus(zbus::Error::MethodError(error, _, _))))
            if error.as_str().ends_with(".NoSuchImage") =>
        {
            Err(CliError::Daemon(crate::api::BusError::NoSuchImage(format!(
                "image '{name}' not found in the search path"
            ))))
        }
        other => other,
    }
}

/// What wharf keeps of a machine for its next starts, for `--json` of
/// `show` and `image-status`: `SavedLimits` (its settings file's limits, as
/// wharf shows them) and `Enabled` (started at boot).
async fn kept_settings(
    bus: &zbus::Connection,
    name: &str,
) -> Result<serde_json::Map<String, serde_json::Value>, CliError> {
    use crate::machine::config::{CONFIG_DIR, MachineConfig};
    let config = MachineConfig::load(Path::new(CONFIG_DIR), name)
        .map_err(|e| CliError::Usage(format!("machine '{name}': {e}")))?;
    let saved: serde_json::Map<String, serde_json::Value> =
        config.limits.iter().map(|p| (p.limit.name().to_string(), p.value_text().into())).collect();
    let boot_unit = crate::machine::ops::boot_unit(name);
    // systemd's failures are not the user's: reported as wharfd reports them.
    let failed = |e: crate::systemd::Error| CliError::Daemon(crate::api::BusError::Failed(e.to_string()));
    let systemd = crate::systemd::Systemd::new(bus).await.map_err(failed)?;
    let state = systemd.unit_file_state(&boot_unit).await.map_err(failed)?;
    let enabled = state.starts_with("enabled");
    Ok(serde_json::Map::from_iter([
        ("SavedLimits".to_string(), serde_json::Value::Object(saved)),
        ("Enabled".to_string(), enabled.into()),
    ]))
}

/// Prints what `show`/`show-image` selected of `props` (of `what`): lines,
/// or with `--json` an object of the names and values.
fn print_properties(
    format: Format,
    props: &[(String, properties::PropValue)],
    selection: &properties::Selection,
    what: &str,
    json_extra: serde_json::Map<String, serde_json::Value>,
) -> Result<(), CliError> {
    let lines = properties::render(props, selection)
        .map_err(|unknown| CliError::Usage(format!("{what} has no property '{unknown}'")))?;
    if format.is_json() {
        let names = properties::Selection { value_only: false, ..selection.clone() };
        let record: serde_json::Map<String, serde_json::Value> = properties::render(props, &names)
            .unwrap_or_default()
            .into_iter()
            .filter_map(|line| line.split_once('=').map(|(k, v)| (k.to_string(), v.to_string().into())))
            .chain(json_extra.into_iter().filter(|(k, _)| selection.names.is_empty() || selection.names.contains(k)))
            .collect();
        return format.emit(&record, |_| String::new());
    }
    let mut stdout = std::io::stdout().lock();
    for line in lines {
        writeln!(stdout, "{line}").map_err(CliError::Output)?;
    }
    Ok(())
}

/// `machine image-status` as text, as machinectl image-status lays it out.
fn image_status_text(image: &std::collections::BTreeMap<String, String>) -> String {
    let get = |key: &str| image.get(key).cloned();
    let mut text = format!("{}\n", get("Name").unwrap_or_default());
    let mut field = |label: &str, value: Option<String>| {
        if let Some(value) = value {
            text.push_str(&format!("{label:>10}: {value}\n"));
        }
    };
    field("Path", get("Path"));
    field("Type", get("Type"));
    field("RO", get("ReadOnly").map(|ro| if ro == "yes" { "read-only" } else { "writable" }.to_string()));
    field("Created", get("CreationTimestamp"));
    field("Modified", get("ModificationTimestamp"));
    let size = |key: &str| get(key).and_then(|v| v.parse::<u64>().ok()).filter(|n| *n != u64::MAX).map(human_size);
    field("Usage", size("Usage"));
    field("Limit", size("Limit"));
    text
}

/// A host path as wharfd needs it: absolute (relative to the working
/// directory, as the caller means it), UTF-8.
fn host_path(path: &Path) -> Result<String, CliError> {
    let absolute = std::path::absolute(path).map_err(|e| CliError::Usage(format!("{}: {e}", path.display())))?;
    absolute
        .to_str()
        .map(str::to_string)
        .ok_or_else(|| CliError::Usage(format!("{} is not a UTF-8 path", path.display())))
}

/// What `machine clean` says, as machinectl clean: each image removed,
/// then the count.
fn clean_text(removed: &[(String, u64)]) -> String {
    let mut text = String::new();
    let mut total = Some(0u64);
    for (name, freed) in removed {
        if *freed == 0 {
            text.push_str(&format!("Removed image '{name}'.\n"));
            total = None;
        } else {
            text.push_str(&format!("Removed image '{name}'. Freed exclusive disk space: {}.\n", human_size(*freed)));
            total = total.map(|t| t + freed);
        }
    }
    let count = removed.len();
    match total {
        Some(total) if count > 0 => text.push_str(&format!(
            "Removed {count} images in total. Total freed exclusive disk space: {}.",
            human_size(total)
        )),
        _ => text.push_str(&format!("Removed {count} images in total.")),
    }
    text
}

/// `machine list-transfers` as machinectl lays it out.
fn transfers_table(transfers: &[crate::api::TransferEntry], legend: bool) -> String {
    if transfers.is_empty() {
        return if legend { "No transfers.".to_string() } else { String::new() };
    }
    let rows: Vec<Vec<String>> = transfers
        .iter()
        .map(|t| {
            let percent =
                if t.progress < 0.0 { "n/a".to_string() } else { format!("{}%", (t.progress * 100.0).floor() as u32) };
            vec![t.id.to_string(), percent, t.kind.clone(), t.local.clone(), t.remote.clone()]
        })
        .collect();
    table(&["ID", "PERCENT", "TYPE", "LOCAL", "REMOTE"], &rows, legend)
}

/// A transfer id as list-transfers shows it.
fn parse_transfer_id(word: &str) -> Result<u32, CliError> {
    word.parse::<u32>()
        .ok()
        .filter(|id| *id > 0)
        .ok_or_else(|| CliError::Usage(format!("'{word}' is not a transfer id (see machine list-transfers)")))
}

/// The output modes of journalctl, which `status --output` passes on.
const JOURNAL_MODES: [&str; 16] = [
    "short",
    "short-full",
    "short-iso",
    "short-iso-precise",
    "short-precise",
    "short-monotonic",
    "short-delta",
    "short-unix",
    "verbose",
    "export",
    "json",
    "json-pretty",
    "json-sse",
    "json-seq",
    "cat",
    "with-unit",
];

/// How many journal lines `machine status` shows, as machinectl.
const JOURNAL_LINES: usize = 10;

/// The last `lines` journal lines of `unit`, each indented, after an empty
/// line; empty when journalctl gives nothing.
fn journal_tail(unit: &str, lines: usize, mode: &str) -> String {
    let output = std::process::Command::new("journalctl")
        .args([
            "--no-pager",
            "--quiet",
            &format!("--output={mode}"),
            &format!("--lines={lines}"),
            &format!("--unit={unit}"),
        ])
        .stdin(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .output();
    match output {
        Ok(output) if output.status.success() => indented_journal(&String::from_utf8_lossy(&output.stdout)),
        _ => String::new(),
    }
}

/// journalctl's lines as `machine status` shows them.
fn indented_journal(text: &str) -> String {
    let lines: Vec<&str> = text.lines().filter(|l| !l.trim().is_empty()).collect();
    if lines.is_empty() {
        return String::new();
    }
    let mut out = String::from("\n");
    for line in lines {
        out.push_str(line);
        out.push('\n');
    }
    out
}

/// `machine status` as text: what `machinectl status` shows, then the
/// unit's status and limits.
fn status_text(m: &crate::api::MachineInfo) -> String {
    let mut text = format!("{}\n", m.name);
    let mut field = |key: &str, values: &[String]| {
        for (i, value) in values.iter().enumerate() {
            let key = if i == 0 && !key.is_empty() { format!("{key}:") } else { String::new() };
            text.push_str(&format!("{key:>9} {value}\n"));
        }
    };
    if m.since_usec > 0 {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_micros() as u64)
            .unwrap_or(m.since_usec);
        field("Since", &[crate::machine::status::format_since(m.since_usec, now)]);
    }
    let command = std::fs::read_to_string(format!("/proc/{}/comm", m.leader)).unwrap_or_default();
    let leader =
        if command.trim().is_empty() { m.leader.to_string() } else { format!("{} ({})", m.leader, command.trim()) };
    field("Leader", &[leader]);
    field("Service", &[format!("{} ({})", m.service, m.class)]);
    field("Root", std::slice::from_ref(&m.root_directory));
    field("Address", &m.addresses);
    if !m.os.is_empty() {
        field("OS", std::slice::from_ref(&m.os));
    }
    field("State", std::slice::from_ref(&m.state));
    if !m.status.is_empty() {
        field("Status", std::slice::from_ref(&m.status));
    }
    let limits: Vec<String> = m.limits.iter().map(|(key, value)| format!("{key}={value}")).collect();
    field("Limits", &limits);
    field("Unit", std::slice::from_ref(&m.unit));
    // The tree's first line is the cgroup's path, which the unit names already.
    let tree: Vec<String> = m.cgroup.iter().skip(1).cloned().collect();
    field("", &tree);
    text
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
    let what = Transfer { tool: "machine", verb: "export", name: name.to_string(), scratch: Some(target.temp.clone()) };
    let result = transfer(bus, show, what, call).await;
    target.finish(result)
}

/// A transfer (`verb`: import, export) of `name`, as an interrupted one is reported.
fn transfer_of(verb: &'static str, name: &str) -> Transfer {
    Transfer { tool: "machine", verb, name: name.to_string(), scratch: None }
}

/// A signal by name (`SIGTERM`, `TERM`, `SIGRTMIN+4`) or number.
fn signal_number(word: &str) -> Result<i32, CliError> {
    let bad = || CliError::Usage(format!("'{word}' is not a signal"));
    if let Ok(number) = word.parse::<i32>() {
        return Ok(number);
    }
    let name = word.strip_prefix("SIG").unwrap_or(word);
    if let Some(offset) = name.strip_prefix("RTMIN") {
        let offset: i32 = if offset.is_empty() {
            0
        } else {
            offset.strip_prefix('+').and_then(|n| n.parse().ok()).ok_or_else(bad)?
        };
        let signal = nix::libc::SIGRTMIN() + offset;
        return if signal <= nix::libc::SIGRTMAX() { Ok(signal) } else { Err(bad()) };
    }
    format!("SIG{name}").parse::<nix::sys::signal::Signal>().map(|s| s as i32).map_err(|_| bad())
}

/// `machine shell NAME [USER@] [COMMAND...]` (or `USER@NAME`): runs the
/// command in the machine with this process's standard descriptors, and
/// exits with its exit status. On a terminal, the command gets a terminal of
/// its own in the machine.
async fn shell(
    machine: &MachineProxy<'_>,
    name: &str,
    command: Vec<String>,
    setenv: Vec<String>,
    uid: Option<String>,
) -> Result<ExitCode, CliError> {
    let (user, name, command) = shell_target(name, command, uid);
    use std::io::IsTerminal;
    let interactive = std::io::stdin().is_terminal() && std::io::stdout().is_terminal();
    let environment = shell_environment(std::env::var("TERM").ok(), setenv)?;
    let size = super::terminal::size().unwrap_or_default();
    let _raw = interactive.then(super::terminal::RawMode::enter);
    let (stdin, stdout, stderr) = (std::io::stdin(), std::io::stdout(), std::io::stderr());
    // No deadline: the command runs as long as its user wants it to.
    let status = machine
        .shell(
            &name,
            &user,
            &command,
            &environment,
            stdin.as_fd().into(),
            stdout.as_fd().into(),
            stderr.as_fd().into(),
            interactive,
            &size,
        )
        .await?;
    drop(_raw);
    Ok(ExitCode::from(u8::try_from(status).unwrap_or(255)))
}

/// Who a shell runs as, in which machine, running what: `USER@NAME`, or
/// `USER@` as the first word after NAME, else `--uid`, else root (empty).
fn shell_target(name: &str, mut command: Vec<String>, uid: Option<String>) -> (String, String, Vec<String>) {
    let (mut user, name) = match name.split_once('@') {
        Some((user, machine)) => (user.to_string(), machine.to_string()),
        None => (String::new(), name.to_string()),
    };
    if let Some(first) = command.first()
        && let Some(named) = first.strip_suffix('@')
    {
        user = named.to_string();
        command.remove(0);
    }
    if command.first().is_some_and(|c| c == "--") {
        command.remove(0);
    }
    if user.is_empty() {
        user = uid.unwrap_or_default();
    }
    (user, name, command)
}

/// The variables a shell gets: this terminal's type (`term`, the client's
/// TERM) unless `--setenv` names one, which comes later and wins; each
/// checked as wharfd checks it, so that a mistake is said in one line
/// before anything runs.
fn shell_environment(term: Option<String>, setenv: Vec<String>) -> Result<Vec<String>, CliError> {
    for variable in &setenv {
        crate::machine::enter::check_variable(variable).map_err(CliError::Usage)?;
    }
    let mut environment: Vec<String> =
        term.filter(|term| !term.is_empty()).map(|term| format!("TERM={term}")).into_iter().collect();
    environment.extend(setenv);
    Ok(environment)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn all_before_the_command_is_the_commands_own() {
        let parse = |args: &[&str]| {
            let mut cli = super::Cli::try_parse_from(args).unwrap();
            cli.move_all_into_command();
            cli.command
        };
        assert!(matches!(parse(&["machine", "-a", "clean"]), Command::Clean { all: true }));
        assert!(matches!(parse(&["machine", "clean"]), Command::Clean { all: false }));
        assert!(matches!(parse(&["machine", "--all", "list"]), Command::List { all: true }));
        assert!(matches!(parse(&["machine", "-a", "list-images"]), Command::ListImages { all: true }));
        assert!(matches!(
            parse(&["machine", "-a", "show", "f28"]),
            Command::Show { select: ShowArgs { all: true, .. }, .. }
        ));
    }

    #[test]
    fn shell_takes_setenv_before_and_after_the_name() {
        use clap::Parser;
        let parse = |args: &[&str]| match super::Cli::try_parse_from(args) {
            Ok(cli) => match cli.command {
                Command::Shell { setenv, name, command, .. } => Ok((setenv, name, command)),
                _ => panic!("not a shell"),
            },
            Err(e) => Err(e.kind()),
        };
        let (setenv, name, command) = parse(&["machine", "shell", "-E", "A=1", "--setenv=X=$HOME a", "f28"]).unwrap();
        assert_eq!((setenv, name, command), (vec!["A=1".into(), "X=$HOME a".into()], "f28".into(), vec![]));
        let (setenv, _, command) = parse(&["machine", "shell", "f28", "--setenv=B=2", "env", "-E", "x"]).unwrap();
        assert_eq!(setenv, ["B=2"]);
        assert_eq!(command, ["env", "-E", "x"]);
        assert_eq!(
            shell_environment(Some("screen".into()), vec!["X=$HOME".into()]).unwrap(),
            ["TERM=screen", "X=$HOME"]
        );
        assert_eq!(shell_environment(None, vec![]).unwrap(), Vec::<String>::new());
        for bad in ["NOEQUALS", "1X=a"] {
            let error = shell_environment(None, vec![bad.into()]).unwrap_err().to_string();
            assert!(error.contains("environment variable") && !error.contains('\n'), "{error}");
        }
    }

    #[test]
    fn status_takes_machinectls_options() {
        use clap::Parser;
        let cli =
            super::Cli::try_parse_from(["machine", "status", "f28", "-n", "3", "-l", "--max-addresses=1"]).unwrap();
        match cli.command {
            Command::Status { name, lines, full, max_addresses, output } => {
                assert_eq!((name.as_str(), lines, full, max_addresses), ("f28", 3, true, Some(1)));
                assert_eq!(output, "short");
            }
            _ => panic!("not status"),
        }
        let cli = super::Cli::try_parse_from(["machine", "status", "f28"]).unwrap();
        assert!(matches!(cli.command, Command::Status { lines: JOURNAL_LINES, full: false, max_addresses: None, .. }));
        let cli = super::Cli::try_parse_from([
            "machine",
            "show",
            "f28",
            "-p",
            "Name,Leader",
            "--property=State",
            "--value",
            "-a",
        ])
        .unwrap();
        match cli.command {
            Command::Show { select, .. } => {
                let selection = select.selection();
                assert_eq!(selection.names, ["Name", "Leader", "State"]);
                assert!(selection.value_only && selection.all);
            }
            _ => panic!("not show"),
        }
    }

    #[test]
    fn machinectls_other_verbs_and_options_parse() {
        use clap::Parser;
        let parse = |args: &[&str]| super::Cli::try_parse_from(args);
        let cli = parse(&["machine", "set-limit", "f28", "1.5G"]).unwrap();
        assert!(matches!(&cli.command, Command::SetLimit { args } if args == &["f28", "1.5G"]));
        let cli = parse(&["machine", "set-limit", "-"]).unwrap();
        assert!(matches!(&cli.command, Command::SetLimit { args } if args == &["-"]));
        assert!(parse(&["machine", "set-limit"]).is_err());
        assert!(parse(&["machine", "set-limit", "a", "1G", "extra"]).is_err());
        assert!(matches!(parse(&["machine", "clean", "--all"]).unwrap().command, Command::Clean { all: true }));
        assert!(matches!(parse(&["machine", "clean"]).unwrap().command, Command::Clean { all: false }));
        assert!(matches!(parse(&["machine", "list-transfers"]).unwrap().command, Command::ListTransfers));
        assert!(parse(&["machine", "cancel-transfer"]).is_err());
        assert_eq!(parse_transfer_id("12").unwrap(), 12);
        for bad in ["0", "-1", "x", "4294967296", ""] {
            let error = parse_transfer_id(bad).unwrap_err().to_string();
            assert!(error.contains("is not a transfer id") && !error.contains('\n'), "{error}");
        }
        // Global options, before or after the verb, as machinectl takes them.
        for args in [
            &["machine", "--no-ask-password", "-q", "--json=off", "list"][..],
            &["machine", "list", "--no-ask-password", "--quiet", "--json=pretty"],
        ] {
            let cli = parse(args).unwrap();
            assert!(cli.output.no_ask_password && cli.output.quiet, "{args:?}");
        }
        let off = parse(&["machine", "--json=off", "list"]).unwrap();
        assert!(!Format::new(&off.output).is_json());
        let pretty = parse(&["machine", "--json=pretty", "list"]).unwrap();
        assert!(Format::new(&pretty.output).is_json());
        assert!(parse(&["machine", "--json=loud", "list"]).is_err());
        let cli = parse(&["machine", "status", "f28", "-o", "cat"]).unwrap();
        assert!(matches!(&cli.command, Command::Status { output, .. } if output == "cat"));
        assert!(parse(&["machine", "status", "f28", "--output=nonsense"]).is_err());
        let cli = parse(&["machine", "shell", "--uid=alice", "f28", "id"]).unwrap();
        assert!(matches!(&cli.command, Command::Shell { uid: Some(u), .. } if u == "alice"));
    }

    #[test]
    fn shell_users_come_from_the_name_then_uid() {
        let target = |name: &str, command: &[&str], uid: Option<&str>| {
            shell_target(name, command.iter().map(|s| s.to_string()).collect(), uid.map(str::to_string))
        };
        assert_eq!(target("f28", &["id"], Some("alice")), ("alice".into(), "f28".into(), vec!["id".into()]));
        assert_eq!(target("bob@f28", &["id"], Some("alice")), ("bob".into(), "f28".into(), vec!["id".into()]));
        assert_eq!(
            target("f28", &["bob@", "--", "id"], Some("alice")),
            ("bob".into(), "f28".into(), vec!["id".into()])
        );
        assert_eq!(target("f28", &[], None), (String::new(), "f28".into(), vec![]));
    }

    #[test]
    fn clean_and_transfers_print_as_machinectl() {
        assert_eq!(clean_text(&[]), "Removed 0 images in total.");
        assert_eq!(
            clean_text(&[(".a".into(), 2048), (".b".into(), 1024)]),
            "Removed image '.a'. Freed exclusive disk space: 2.0K.\nRemoved image '.b'. Freed exclusive disk space: 1.0K.\nRemoved 2 images in total. Total freed exclusive disk space: 3.0K."
        );
        assert_eq!(clean_text(&[(".a".into(), 0)]), "Removed image '.a'.\nRemoved 1 images in total.");
        assert_eq!(transfers_table(&[], true), "No transfers.");
        assert_eq!(transfers_table(&[], false), "");
        let entry = |id, progress| crate::api::TransferEntry {
            id,
            kind: "import-raw".into(),
            local: "f28".into(),
            remote: "/srv/f28.raw".into(),
            progress,
        };
        assert_eq!(
            transfers_table(&[entry(1, 0.426), entry(12, -1.0)], true),
            "ID PERCENT TYPE       LOCAL REMOTE\n1  42%     import-raw f28   /srv/f28.raw\n12 n/a     import-raw f28   /srv/f28.raw"
        );
    }

    #[test]
    fn journal_lines_follow_the_status_after_an_empty_line() {
        assert_eq!(indented_journal(""), "");
        assert_eq!(indented_journal("\n"), "");
        assert_eq!(
            indented_journal("Dec 02 host a[1]: one\nDec 02 host a[1]: two\n"),
            "\nDec 02 host a[1]: one\nDec 02 host a[1]: two\n"
        );
    }

    #[test]
    fn signals_by_name_or_number() {
        assert_eq!(signal_number("SIGTERM").unwrap(), 15);
        assert_eq!(signal_number("KILL").unwrap(), 9);
        assert_eq!(signal_number("9").unwrap(), 9);
        assert_eq!(signal_number("SIGRTMIN+4").unwrap(), nix::libc::SIGRTMIN() + 4);
        assert!(signal_number("SIGNOPE").is_err());
    }

    #[test]
    fn imported_files_name_their_image() {
        assert_eq!(default_name(Path::new("/srv/f28.tar.xz")), "f28");
        assert_eq!(default_name(Path::new("debian.raw.zst")), "debian");
        assert_eq!(default_name(Path::new("debian.raw.bz2")), "debian");
        assert_eq!(default_name(Path::new("tree")), "tree");
    }
}
