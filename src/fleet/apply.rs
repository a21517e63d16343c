//! Carrying out an apply: resolve what the file wants, take a snapshot of
//! the host, plan, and then either stop there (check mode) or make every
//! file change in one transaction with one systemd reload, start what must
//! run, and put everything back as it was if any step fails.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use super::file::MachineWant;
use super::file::{FleetFile, PortableWant};
use super::plan::{
    AttachedImage, MachineState, Plan, Record, RecordedPortable, ResolvedPortable, Snapshot, Step, plan_machines,
    plan_portables,
};
use crate::image::ImageName;
use crate::machine::config::MachineConfig;
use crate::machine::ops::{Machines, StartRequest, boot_unit, is_running, running_machines, settings_with_limits};
use crate::portable::Attachments;
use crate::portable::dropin::{SETTINGS_DROPIN, settings_dropin};
use crate::portable::ops::{Host, ImageRequest, ProgressFn, preview_source, read_pinned_source, read_source};
use crate::portable::plan::{
    AttachOptions, CopyMode, Source, add_detach_steps, plan_attach, plan_detach_unit, unit_dir,
};
use crate::portable::profile::Profile;
use crate::systemd::{Systemd, condition};
use crate::transaction::{Transaction, Undo};
use zbus_systemd::machine1::ManagerProxy as Machined;

/// Where apply records what it attached.
pub const RECORD_FILE: &str = "var/lib/wharf/fleet.json";

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(transparent)]
    File(#[from] super::file::FileError),
    #[error(transparent)]
    Portable(#[from] crate::portable::Error),
    #[error(transparent)]
    Image(#[from] crate::image::Error),
    #[error(transparent)]
    Systemd(#[from] crate::systemd::Error),
    #[error(transparent)]
    Transaction(#[from] crate::transaction::Error),
    #[error("image '{image}' is version {found}, the fleet file wants {wanted}")]
    WrongVersion { image: String, found: String, wanted: String },
    #[error("image '{image}' has sha256 {found}, the fleet file wants {wanted}")]
    WrongHash { image: String, found: String, wanted: String },
    #[error("image '{0}': sha256 can only be checked for image files, not directories")]
    HashOfDirectory(String),
    #[error("{}: {source}", path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{0} did not become active within {1:?}")]
    NotActive(String, Duration),
    #[error(transparent)]
    Machines(#[from] crate::machine::ops::Error),
    #[error("{0}")]
    Machine(String),
    #[error("machine '{0}' did not report ready within {1:?}")]
    MachineNotReady(String, Duration),
    /// Failed, and every undo step worked.
    #[error("{0}; everything this apply changed was put back")]
    RolledBack(Box<Error>),
    /// Failed, and some undo steps failed too: the host is not as it was.
    #[error(
        "{error}; this apply's changes were put back only in part, these undo steps failed: {}",
        crate::transaction::describe_failed(failed_steps)
    )]
    PartiallyRolledBack { error: Box<Error>, failed_steps: Vec<crate::transaction::FailedUndo> },
}

impl Error {
    /// The error of an apply that failed with `error` and was undone by
    /// `undo`: rolled back only if every undo step worked.
    fn rolled_back(error: Error, undo: Undo) -> Error {
        let failed_steps = undo.finish();
        if failed_steps.is_empty() {
            Error::RolledBack(Box::new(error))
        } else {
            Error::PartiallyRolledBack { error: Box::new(error), failed_steps }
        }
    }
}

pub type Result<T> = std::result::Result<T, Error>;

/// How to apply.
#[derive(Debug, Clone, Copy, Default)]
pub struct Options {
    /// Plan only; change nothing.
    pub check: bool,
    /// Also detach images attached by hand that the file does not list.
    pub prune: bool,
}

/// What an apply found to do, and whether it did it.
#[derive(Debug, Clone)]
pub struct Outcome {
    pub plan: Plan,
    /// False in check mode (and when there was nothing to do).
    pub applied: bool,
}

async fn blocking<T: Send + 'static>(work: impl FnOnce() -> T + Send + 'static) -> T {
    zruntime::unblock(work).await
}

/// What apply works on beyond the portable host: machines, through machined.
#[derive(Debug)]
pub struct MachineContext<'a> {
    pub machines: &'a Machines,
    pub machined: &'a Machined<'a>,
}

/// Applies a fleet file. `base` is the directory relative image paths in
/// the file are taken from (the file's own directory).
pub async fn apply(
    host: &Host,
    machines: MachineContext<'_>,
    systemd: &Systemd,
    fleet: FleetFile,
    base: PathBuf,
    options: Options,
    progress: ProgressFn,
) -> Result<Outcome> {
    let resolve_host = host.clone();
    let wants = fleet.portables.clone();
    let resolve_base = base.clone();
    let check = options.check;
    let (resolved, sources) = blocking(move || resolve(&resolve_host, &wants, &resolve_base, check, progress)).await?;
    let snapshot = snapshot(host, systemd).await?;
    let machine_states = machine_states(&machines, systemd, &fleet.machines).await?;
    let mut plan = plan_portables(&resolved, &snapshot, options.prune);
    let machine_steps = plan_machines(&fleet.machines, &machine_states).map_err(Error::Machine)?;
    plan.steps.extend(machine_steps);
    tracing::info!(steps = plan.steps.len(), check = options.check, "fleet plan");
    if options.check || plan.is_empty() {
        return Ok(Outcome { plan, applied: false });
    }
    let wanted_machines = MachineWants { wants: fleet.machines, base };
    execute(host, &machines, systemd, &plan, &resolved, sources, &snapshot, &wanted_machines).await?;
    Ok(Outcome { plan, applied: true })
}

/// The machines of the file, and where their sources are.
struct MachineWants {
    wants: Vec<MachineWant>,
    base: PathBuf,
}

/// How each machine the file lists is now: machined and the manager are
/// asked once for all of them.
async fn machine_states(
    machines: &MachineContext<'_>,
    systemd: &Systemd,
    wants: &[MachineWant],
) -> Result<Vec<MachineState>> {
    if wants.is_empty() {
        return Ok(Vec::new());
    }
    let running = running_machines(machines.machined).await.map_err(|source| {
        let names: Vec<&str> = wants.iter().map(|want| want.name.as_str()).collect();
        crate::machine::ops::Error::Machined { machine: names.join(", "), source }
    })?;
    let boot_units: Vec<String> = wants.iter().map(|want| boot_unit(&want.name)).collect();
    let unit_files = systemd.unit_file_states(&boot_units).await?;
    let mut states = Vec::new();
    for (want, boot) in wants.iter().zip(&boot_units) {
        let (store, config_dir, name) =
            (machines.machines.store.clone(), machines.machines.config_dir.clone(), want.name.clone());
        let (image_present, saved_limits) = blocking(move || -> Result<_> {
            let present = store.locate(&name).is_ok();
            let config = MachineConfig::load(&config_dir, &name).map_err(crate::machine::ops::Error::from)?;
            let mut limits: Vec<String> = config.limits.iter().map(|p| p.to_string()).collect();
            limits.sort();
            Ok((present, limits))
        })
        .await?;
        states.push(MachineState {
            name: want.name.clone(),
            image_present,
            running: running.contains(&want.name),
            enabled: unit_files.get(boot).is_some_and(|s| s.starts_with("enabled")),
            saved_limits,
        });
    }
    Ok(states)
}

/// Reads every wanted image (checking version and hash) before anything is
/// changed, so that a bad image stops the apply at once.
fn resolve(
    host: &Host,
    wants: &[PortableWant],
    base: &Path,
    check: bool,
    mut progress: ProgressFn,
) -> Result<(Vec<ResolvedPortable>, Vec<Source>)> {
    let mut resolved = Vec::new();
    let mut sources = Vec::new();
    for want in wants {
        // A name is looked for in the search path, then beside the fleet file.
        let located = host.pool.locate(&want.image, Some(base))?;
        // A misspelt profile fails here, before anything is stopped.
        Profile::find(&host.root, &want.profile).map_err(crate::portable::Error::from)?;
        let request = ImageRequest { image: located.display().to_string(), prefixes: want.prefixes.clone() };
        // Check mode writes nothing, not even a decompressed xz image.
        let source = match &want.sha256 {
            // The file as shipped (an xz image compressed), as sha256sum
            // sees it, hashed as it is read for use.
            Some(pin) => read_pinned_source(host, &request, pin, check, &mut progress).map_err(pin_error)?,
            None if check => preview_source(host, &request, &mut progress)?,
            None => read_source(host, &request, &mut progress)?,
        };
        let path = source.image_str();
        let name =
            ImageName::new(&source.image.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default())
                .map_err(crate::image::Error::from)?;
        if let Some(wanted) = &want.version {
            let found = name.version().map(str::to_string).unwrap_or_else(|| "unversioned".into());
            if &found != wanted {
                return Err(Error::WrongVersion { image: path, found, wanted: wanted.clone() });
            }
        }
        let units: Vec<String> = source.units.iter().map(|u| u.name.clone()).collect();
        if let Some((other, unit)) =
            resolved.iter().find_map(|r: &ResolvedPortable| r.units.iter().find(|u| units.contains(u)).map(|u| (r, u)))
        {
            return Err(crate::portable::Error::DuplicateUnit {
                unit: unit.clone(),
                first: other.image.clone(),
                second: path,
            }
            .into());
        }
        resolved.push(ResolvedPortable {
            want: want.clone(),
            image: path,
            prefix: name.prefix().to_string(),
            installable: source
                .units
                .iter()
                .filter(|u| !u.name.contains("@.") && u.contents.contains("[Install]"))
                .map(|u| u.name.clone())
                .collect(),
            services: source
                .units
                .iter()
                .filter(|u| u.is_service() && !u.name.contains("@.") && stays_up(&u.contents))
                .map(|u| u.name.clone())
                .collect(),
            units,
        });
        sources.push(source);
    }
    Ok((resolved, sources))
}

/// Whether a service keeps running once started: not a oneshot that
/// finishes (those are tasks, started by timers or other units, and would
/// be "not running" after every apply).
fn stays_up(unit: &str) -> bool {
    let setting = |key: &str| {
        unit.lines().rev().find_map(|line| line.trim().strip_prefix(key).map(|v| v.trim().to_ascii_lowercase()))
    };
    let oneshot = setting("Type=").is_some_and(|t| t == "oneshot");
    let remains = setting("RemainAfterExit=").is_some_and(|v| matches!(v.as_str(), "yes" | "true" | "1" | "on"));
    !oneshot || remains
}

/// A pin's refusal in the fleet's words.
fn pin_error(error: crate::portable::Error) -> Error {
    use crate::image::Error as ImageError;
    match error {
        crate::portable::Error::Image(ImageError::WrongDigest { image, found, wanted }) => {
            Error::WrongHash { image: image.display().to_string(), found, wanted }
        }
        crate::portable::Error::Image(ImageError::DigestOfDirectory(image)) => {
            Error::HashOfDirectory(image.display().to_string())
        }
        other => other.into(),
    }
}

/// The host as apply needs it: attachments with their units' states, and
/// what earlier applies recorded.
async fn snapshot(host: &Host, systemd: &Systemd) -> Result<Snapshot> {
    let scan_host = host.clone();
    let (attachments, record) = blocking(move || -> Result<(Attachments, Record)> {
        let attachments =
            Attachments::scan(&scan_host.root).map_err(|source| Error::Io { path: scan_host.root.clone(), source })?;
        Ok((attachments, read_record(&scan_host.root)?))
    })
    .await?;
    let units: Vec<String> = attachments.0.iter().map(|a| a.unit.clone()).collect();
    let active: Vec<String> =
        systemd.unit_states(&units).await?.into_iter().filter(|s| s.is_active()).map(|s| s.name).collect();
    let file_states = systemd.unit_file_states(&units).await?;
    let mut attached: Vec<AttachedImage> = Vec::new();
    for attachment in &attachments.0 {
        let index = match attached.iter().position(|a| a.image == attachment.image) {
            Some(index) => index,
            None => {
                let prefix = Path::new(&attachment.image)
                    .file_name()
                    .and_then(|n| ImageName::new(&n.to_string_lossy()).ok())
                    .map(|n| n.prefix().to_string())
                    .unwrap_or_default();
                attached.push(AttachedImage {
                    image: attachment.image.clone(),
                    prefix,
                    units: Vec::new(),
                    runtime: attachment.runtime,
                    enabled: Vec::new(),
                    active: Vec::new(),
                });
                attached.len() - 1
            }
        };
        let entry = &mut attached[index];
        entry.units.push(attachment.unit.clone());
        if active.contains(&attachment.unit) {
            entry.active.push(attachment.unit.clone());
        }
        if file_states.get(&attachment.unit).is_some_and(|s| s.starts_with("enabled")) {
            entry.enabled.push(attachment.unit.clone());
        }
    }
    Ok(Snapshot { attached, record })
}

fn read_record(root: &Path) -> Result<Record> {
    let path = root.join(RECORD_FILE);
    match std::fs::read(&path) {
        Ok(bytes) => serde_json::from_slice(&bytes)
            .map_err(|e| Error::Io { path, source: std::io::Error::new(std::io::ErrorKind::InvalidData, e) }),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Record::default()),
        Err(source) => Err(Error::Io { path, source }),
    }
}

/// Unit names of the steps of one kind.
fn units_of(plan: &Plan, pick: fn(&Step) -> Option<&Vec<String>>) -> Vec<String> {
    plan.steps.iter().filter_map(pick).flatten().cloned().collect()
}

#[allow(clippy::too_many_arguments)]
async fn execute(
    host: &Host,
    machines: &MachineContext<'_>,
    systemd: &Systemd,
    plan: &Plan,
    resolved: &[ResolvedPortable],
    sources: Vec<Source>,
    snapshot: &Snapshot,
    wanted_machines: &MachineWants,
) -> Result<()> {
    let stop = units_of(plan, |s| if let Step::Stop { units } = s { Some(units) } else { None });
    let disable = units_of(plan, |s| if let Step::Disable { units } = s { Some(units) } else { None });
    let enable = units_of(plan, |s| if let Step::Enable { units } = s { Some(units) } else { None });
    let start = units_of(plan, |s| if let Step::Start { units } = s { Some(units) } else { None });
    let restart = units_of(plan, |s| if let Step::Restart { units } = s { Some(units) } else { None });
    let was_running: Vec<String> = snapshot.attached.iter().flat_map(|a| a.active.iter().cloned()).collect();
    let runtime_of = |unit: &str| snapshot.attached.iter().any(|a| a.runtime && a.units.iter().any(|u| u == unit));
    let machines_to =
        |pick: fn(&Step) -> Option<&String>| plan.steps.iter().filter_map(pick).cloned().collect::<Vec<_>>();
    let import = plan
        .steps
        .iter()
        .filter_map(|s| {
            if let Step::ImportMachine { machine, source } = s { Some((machine.clone(), source.clone())) } else { None }
        })
        .collect::<Vec<_>>();
    let stop_machines = machines_to(|s| if let Step::StopMachine { machine } = s { Some(machine) } else { None });
    let start_machines = machines_to(|s| if let Step::StartMachine { machine } = s { Some(machine) } else { None });
    let enable_machines: Vec<String> =
        machines_to(|s| if let Step::EnableMachine { machine } = s { Some(machine) } else { None })
            .iter()
            .map(|m| boot_unit(m))
            .collect();
    let disable_machines: Vec<String> =
        machines_to(|s| if let Step::DisableMachine { machine } = s { Some(machine) } else { None })
            .iter()
            .map(|m| boot_unit(m))
            .collect();
    let limited = machines_to(|s| if let Step::SetLimits { machine, .. } = s { Some(machine) } else { None });

    // Undoing waits longer for systemd, so that an apply that failed because
    // the bus stopped answering is still put back once it answers again.
    let undo = systemd.undoing();
    let bind_os_release = crate::portable::ops::binds_os_release(systemd).await?;
    let file_host = host.clone();
    let file_plan = plan.clone();
    let file_resolved = resolved.to_vec();
    let file_snapshot = snapshot.clone();
    let config_dir = machines.machines.config_dir.clone();
    let machine_wants = wanted_machines.wants.clone();
    let prepare = move || -> Result<Transaction> {
        let mut tx =
            build_transaction(&file_host, bind_os_release, &file_plan, &file_resolved, sources, &file_snapshot)?;
        // The settings files of machines whose limits change, in the same transaction.
        for step in &file_plan.steps {
            if let Step::SetLimits { machine, .. } = step
                && let Some(want) = machine_wants.iter().find(|w| &w.name == machine)
            {
                let (path, text) = settings_with_limits(&config_dir, machine, &want.limits, true)?;
                std::fs::create_dir_all(&config_dir)
                    .map_err(|source| Error::Io { path: config_dir.clone(), source })?;
                tx.write(path, text, 0o644);
            }
        }
        Ok(tx)
    };

    // Images first: the longest step, and one that changes nothing that runs.
    let mut rollback = Undo::new("fleet apply");
    let mut imported = Vec::new();
    let mut result = import_machines(machines, &import, &wanted_machines.base, &mut imported).await;
    let mut stopped_machines = Vec::new();
    if result.is_ok() {
        result = async {
            for machine in &stop_machines {
                machines
                    .machines
                    .signal_init(
                        systemd,
                        machines.machined,
                        machine,
                        crate::machine::ops::poweroff_signal(),
                        Some(MACHINE_STOP_TIMEOUT),
                    )
                    .await?;
                stopped_machines.push(machine.clone());
            }
            systemd.stop(&stop, true).await?;
            Ok(())
        }
        .await;
    }
    let mut started_machines = Vec::new();
    if result.is_ok() {
        result = async {
            disable_units(systemd, &disable, runtime_of).await?;
            systemd.disable(&disable_machines, false).await?;
            let mut tx = blocking(prepare).await?;
            let applied = blocking(move || tx.apply().map(|_| tx)).await;
            let tx = applied?;
            let started = async {
                enable_units(systemd, resolved, &enable).await?;
                systemd.enable(&enable_machines, false).await?;
                systemd.reload().await?;
                for machine in &limited {
                    let want =
                        wanted_machines.wants.iter().find(|w| &w.name == machine).expect("planned from the file");
                    if is_running(machines.machined, machine).await? {
                        let bus = want.limits.iter().map(crate::machine::property::Property::to_bus).collect();
                        systemd.set_properties(&crate::machine::ops::unit_name(machine), true, bus).await?;
                    }
                }
                systemd.restart(&restart, true).await?;
                systemd.start(&start, true).await?;
                wait_active(systemd, resolved, &[restart.clone(), start.clone()].concat()).await?;
                for machine in &start_machines {
                    let request = StartRequest::with_settings(machine, MACHINE_READY_TIMEOUT);
                    let outcome = machines.machines.start(systemd, machines.machined, request).await?;
                    started_machines.push(machine.clone());
                    if !outcome.ready {
                        return Err(Error::MachineNotReady(machine.clone(), MACHINE_READY_TIMEOUT));
                    }
                }
                Ok::<(), Error>(())
            }
            .await;
            match started {
                Ok(()) => blocking(move || tx.commit()).await.map_err(Error::from),
                Err(error) => {
                    for machine in &started_machines {
                        rollback.step(
                            "terminating a machine it started",
                            machines.machines.terminate(&undo, machines.machined, machine).await,
                        );
                    }
                    rollback.step(
                        "stopping the units it started",
                        undo.stop(&[restart.clone(), start.clone()].concat(), true).await,
                    );
                    rollback.step("disabling the units it enabled", undo.disable(&enable, false).await);
                    rollback.step("disabling the machines it enabled", undo.disable(&enable_machines, false).await);
                    rollback.step("restoring its files", blocking(move || tx.rollback()).await);
                    Err(error)
                }
            }
        }
        .await;
    }
    if let Err(error) = result {
        // Back to the host as it was: enablement, files (done above), what ran, what was imported.
        for unit in &disable {
            rollback
                .step("enabling a unit it disabled", undo.enable(std::slice::from_ref(unit), runtime_of(unit)).await);
        }
        rollback.step("enabling the machines it disabled", undo.enable(&disable_machines, false).await);
        rollback.step("reloading systemd", undo.reload().await);
        rollback.step("starting the units that ran before", undo.start(&was_running, true).await);
        for machine in &stopped_machines {
            let request = StartRequest::with_settings(machine, MACHINE_READY_TIMEOUT);
            rollback.step(
                "starting a machine it stopped",
                machines.machines.start(&undo, machines.machined, request).await,
            );
        }
        for machine in &imported {
            let store = machines.machines.store.clone();
            let name = machine.clone();
            rollback.step("removing an image it imported", blocking(move || store.remove(&name)).await);
        }
        return Err(Error::rolled_back(error, rollback));
    }
    Ok(())
}

/// How long a machine may take to stop, and to report ready, within an apply.
const MACHINE_STOP_TIMEOUT: Duration = Duration::from_secs(90);
const MACHINE_READY_TIMEOUT: Duration = Duration::from_secs(90);

/// Imports the missing machine images; `done` collects what was imported,
/// so that a failed apply can take it back.
async fn import_machines(
    machines: &MachineContext<'_>,
    imports: &[(String, String)],
    base: &Path,
    done: &mut Vec<String>,
) -> Result<()> {
    for (machine, source) in imports {
        let path = base.join(source);
        let (store, name) = (machines.machines.store.clone(), machine.clone());
        blocking(move || -> Result<()> {
            let file = std::fs::File::open(&path).map_err(|source| Error::Io { path: path.clone(), source })?;
            store.import_any(file, &name, &mut |_, _| {}).map_err(crate::machine::ops::Error::from)?;
            Ok(())
        })
        .await?;
        done.push(machine.clone());
    }
    Ok(())
}

async fn disable_units(systemd: &Systemd, units: &[String], runtime_of: impl Fn(&str) -> bool) -> Result<()> {
    for unit in units {
        systemd.disable(std::slice::from_ref(unit), runtime_of(unit)).await?;
    }
    Ok(())
}

async fn enable_units(systemd: &Systemd, resolved: &[ResolvedPortable], units: &[String]) -> Result<()> {
    for want in resolved {
        let mine: Vec<String> = units.iter().filter(|u| want.units.contains(u)).cloned().collect();
        systemd.enable(&mine, want.want.runtime).await?;
    }
    Ok(())
}

/// Waits until every started unit is active (a oneshot that finished
/// counts), each within its image's start timeout; units with the same
/// timeout are waited for together.
async fn wait_active(systemd: &Systemd, resolved: &[ResolvedPortable], units: &[String]) -> Result<()> {
    let mut by_timeout: std::collections::BTreeMap<Duration, Vec<String>> = std::collections::BTreeMap::new();
    for unit in units {
        let timeout = resolved
            .iter()
            .find(|w| w.units.contains(unit))
            .map_or(super::file::DEFAULT_START_TIMEOUT, |w| w.want.start_timeout);
        by_timeout.entry(timeout).or_default().push(unit.clone());
    }
    for (timeout, units) in by_timeout {
        match systemd.wait_for(&units, condition::started, "active", timeout).await {
            Ok(()) => {}
            Err(crate::systemd::Error::WaitTimeout { unit, .. } | crate::systemd::Error::WrongState { unit, .. }) => {
                return Err(Error::NotActive(unit, timeout));
            }
            Err(other) => return Err(other.into()),
        }
    }
    Ok(())
}

/// Every file change of the plan, in one transaction: detaches, attaches
/// (with their settings drop-ins) and the record of what apply attached.
fn build_transaction(
    host: &Host,
    bind_os_release: bool,
    plan: &Plan,
    resolved: &[ResolvedPortable],
    sources: Vec<Source>,
    snapshot: &Snapshot,
) -> Result<Transaction> {
    let existing = Attachments::scan(&host.root).map_err(|source| Error::Io { path: host.root.clone(), source })?;
    let mut tx = Transaction::new(&host.journal_dir);
    let by_image: HashMap<&str, (&ResolvedPortable, &Source)> =
        resolved.iter().zip(&sources).map(|(r, s)| (r.image.as_str(), (r, s))).collect();

    for step in &plan.steps {
        match step {
            Step::Detach { image } => {
                let units = existing
                    .of(image)
                    .map(|a| plan_detach_unit(&host.root, a))
                    .collect::<std::result::Result<Vec<_>, _>>()?;
                add_detach_steps(&units, &mut tx);
            }
            Step::Attach { image, .. } | Step::Reattach { image, .. } | Step::Refresh { image, .. } => {
                let (want, source) = by_image[image.as_str()];
                let replacing: Vec<String> = match step {
                    Step::Reattach { from, .. } => vec![from.clone(), image.clone()],
                    _ => vec![image.clone()],
                };
                // Old files the new attachment does not rewrite at the same path go.
                let dest = unit_dir(&host.root, want.want.runtime);
                let dropped = existing
                    .0
                    .iter()
                    .filter(|a| replacing.contains(&a.image))
                    .filter(|a| unit_dir(&host.root, a.runtime) != dest || !want.units.contains(&a.unit))
                    .map(|a| plan_detach_unit(&host.root, a))
                    .collect::<std::result::Result<Vec<_>, _>>()?;
                add_detach_steps(&dropped, &mut tx);
                let options = AttachOptions {
                    profile: Profile::find(&host.root, &want.want.profile).map_err(crate::portable::Error::from)?,
                    copy: CopyMode::Auto,
                    runtime: want.want.runtime,
                    force: false,
                    bind_os_release,
                };
                plan_attach(&host.root, std::slice::from_ref(source), &options, &existing, &replacing, &mut tx)?;
                for service in &want.services {
                    let path = dest.join(format!("{service}.d")).join(SETTINGS_DROPIN);
                    if want.want.properties.is_empty() {
                        tx.remove(path);
                    } else {
                        tx.write(path, settings_dropin(image, &want.want.properties), 0o644);
                    }
                }
            }
            _ => {}
        }
    }

    // The record: every wanted image, and what apply attached before that it keeps.
    let detached: Vec<&str> = plan
        .steps
        .iter()
        .filter_map(|s| if let Step::Detach { image } = s { Some(image.as_str()) } else { None })
        .collect();
    let mut record = Record {
        portables: resolved
            .iter()
            .map(|r| RecordedPortable {
                image: r.image.clone(),
                profile: r.want.profile.clone(),
                runtime: r.want.runtime,
                properties: r.want.properties.clone(),
            })
            .collect(),
    };
    for old in &snapshot.record.portables {
        let replaced = plan.steps.iter().any(|s| matches!(s, Step::Reattach { from, .. } if from == &old.image));
        if !detached.contains(&old.image.as_str())
            && !replaced
            && !record.portables.iter().any(|r| r.image == old.image)
        {
            record.portables.push(old.clone());
        }
    }
    let text = serde_json::to_vec_pretty(&record)
        .map_err(|e| Error::Io { path: host.root.join(RECORD_FILE), source: std::io::Error::other(e) })?;
    let record_path = host.root.join(RECORD_FILE);
    if let Some(parent) = record_path.parent() {
        std::fs::create_dir_all(parent).map_err(|source| Error::Io { path: parent.to_path_buf(), source })?;
    }
    tx.write(record_path, text, 0o644);
    Ok(tx)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An apply's error claims everything was put back only when it was.
    #[test]
    fn rolled_back_only_when_every_undo_step_worked() {
        let failure = || Error::Machine("machine 'm': no init".into());
        let mut undo = Undo::new("fleet apply");
        undo.step("reloading systemd", Ok::<(), String>(()));
        let error = Error::rolled_back(failure(), undo);
        assert_eq!(error.to_string(), "machine 'm': no init; everything this apply changed was put back");

        let mut undo = Undo::new("fleet apply");
        undo.step("disabling the units it enabled", Err::<(), _>("a.service: disable failed"));
        undo.step("reloading systemd", Ok::<(), String>(()));
        undo.step("starting the units that ran before", Err::<(), _>("b.service: start job failed"));
        let error = Error::rolled_back(failure(), undo);
        assert!(matches!(error, Error::PartiallyRolledBack { ref failed_steps, .. } if failed_steps.len() == 2));
        assert_eq!(
            error.to_string(),
            "machine 'm': no init; this apply's changes were put back only in part, these undo steps failed: \
             disabling the units it enabled (a.service: disable failed); \
             starting the units that ran before (b.service: start job failed)"
        );
    }

    #[test]
    fn oneshots_are_tasks_unless_they_remain() {
        assert!(stays_up("[Service]\nExecStart=/x\n"));
        assert!(!stays_up("[Service]\nType=oneshot\nExecStart=/x\n"));
        assert!(stays_up("[Service]\nType=oneshot\nRemainAfterExit=yes\n"));
        assert!(stays_up("[Service]\nType=notify\n"));
    }
}
