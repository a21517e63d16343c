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
    AttachedImage, MachineState, Phase, Plan, Record, RecordedPortable, ResolvedPortable, Snapshot, Step,
    plan_machines, plan_portables,
};
use crate::executor::Executor;
use crate::image::ImageName;
use crate::machine::config::MachineConfig;
use crate::machine::ops::{Machines, StartRequest, boot_unit, is_running, running_machines, settings_with_limits};
use crate::portable::Attachments;
use crate::portable::dropin::{SETTINGS_DROPIN, settings_dropin};
use crate::portable::ops::{
    Host, ImageRequest, ProgressFn, add_unlink_steps, preview_source, read_pinned_source, read_source,
};
use crate::portable::plan::{
    AttachOptions, CopyMode, Source, add_detach_steps, plan_attach, plan_detach_unit, unit_dir,
};
use crate::portable::profile::Profile;
use crate::systemd::manager::UnitManager;
use crate::systemd::{Systemd, condition};
use crate::transaction::{Transaction, Undo, UnitsOnRollback};
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
    /// A health command that never succeeded: the reason names the unit or machine.
    #[error("{0}")]
    Unhealthy(String),
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

/// What apply works on beyond the portable host: machines, through
/// machined and the manager itself (their starts are transient units).
#[derive(Debug)]
pub struct MachineContext<'a> {
    pub machines: &'a Machines,
    pub machined: &'a Machined<'a>,
    pub systemd: &'a Systemd,
}

/// Applies a fleet file. `base` is the directory relative image paths in
/// the file are taken from (the file's own directory). Without `machines`,
/// a file that lists machines is refused.
pub async fn apply(
    host: &Host,
    machines: Option<MachineContext<'_>>,
    systemd: &impl UnitManager,
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
    let machine_states = machine_states(&host.root, machines.as_ref(), &fleet.machines).await?;
    let mut steps = plan_portables(&resolved, &snapshot, options.prune).steps;
    steps.extend(plan_machines(&fleet.machines, &machine_states).map_err(Error::Machine)?);
    let plan = Plan::new(steps);
    tracing::info!(steps = plan.steps.len(), check = options.check, "fleet plan");
    if options.check || plan.is_empty() {
        return Ok(Outcome { plan, applied: false });
    }
    let wanted_machines = MachineWants { wants: fleet.machines, base };
    execute(host, machines.as_ref(), systemd, &plan, &resolved, sources, &snapshot, &wanted_machines).await?;
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
    root: &Path,
    machines: Option<&MachineContext<'_>>,
    wants: &[MachineWant],
) -> Result<Vec<MachineState>> {
    if wants.is_empty() {
        return Ok(Vec::new());
    }
    let machines = machines.ok_or_else(|| Error::Machine("machines are not managed here".into()))?;
    let running = running_machines(machines.machined).await.map_err(|source| {
        let names: Vec<&str> = wants.iter().map(|want| want.name.as_str()).collect();
        crate::machine::ops::Error::Machined { machine: names.join(", "), source }
    })?;
    let boot_units: Vec<String> = wants.iter().map(|want| boot_unit(&want.name)).collect();
    // An instance is enabled by its links: systemd lists only the template's
    // unit file, whose state is not the instance's.
    let link_dirs = [unit_dir(root, false), unit_dir(root, true)];
    let mut states = Vec::new();
    for (want, boot) in wants.iter().zip(&boot_units) {
        let (store, config_dir, name) =
            (machines.machines.store.clone(), machines.machines.config_dir.clone(), want.name.clone());
        let (image_present, saved_limits) = blocking(move || -> Result<_> {
            let present = store.locate(&name).is_ok();
            let config = MachineConfig::load(&config_dir, &name).map_err(crate::machine::ops::Error::from)?;
            let mut limits: Vec<String> = config.limits.iter().map(|p| p.to_string()).collect();
            limits.sort();
            limits.extend(crate::fleet::plan::network_words(config.network.as_deref(), Some(&config.ports)));
            Ok((present, limits))
        })
        .await?;
        states.push(MachineState {
            name: want.name.clone(),
            image_present,
            running: running.contains(&want.name),
            enabled: !crate::portable::install::links_of(&link_dirs, boot).is_empty(),
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
    let mut cache = super::cache::ImageCache::load(&host.root);
    let mut profiles: Vec<String> = Vec::new();
    let mut located_paths = Vec::new();
    for want in wants {
        // A name is looked for in the search path, then beside the fleet file.
        let located = host.pool.locate(&want.image, Some(base))?;
        // A misspelt profile fails here, before anything is stopped.
        if !profiles.contains(&want.profile) {
            Profile::find(&host.root, &want.profile).map_err(crate::portable::Error::from)?;
            profiles.push(want.profile.clone());
        }
        let located = std::path::absolute(&located).map_err(|source| Error::Io { path: located.clone(), source })?;
        located_paths.push(located.clone());
        let pin = want.sha256.as_deref();
        // The file read by an earlier apply, unchanged since: nothing to read.
        let source = match cache.lookup(&located, &want.prefixes, pin) {
            Some(source) => source,
            None => {
                let before = super::cache::Identity::of_file(&located);
                let request = ImageRequest {
                    image: located.display().to_string(),
                    prefixes: want.prefixes.clone(),
                    ..Default::default()
                };
                // Check mode writes nothing, not even a decompressed xz image.
                let source = match pin {
                    // The file as shipped (an xz image compressed), as sha256sum
                    // sees it, hashed as it is read for use.
                    Some(pin) => read_pinned_source(host, &request, pin, check, &mut progress).map_err(pin_error)?,
                    None if check => preview_source(host, &request, &mut progress)?,
                    None => read_source(host, &request, &mut progress)?,
                };
                cache.remember(&located, before, &want.prefixes, pin, &source);
                source
            }
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
                .filter(|u| u.is_service() && !u.name.contains("@.") && crate::portable::status::stays_up(&u.contents))
                .map(|u| u.name.clone())
                .collect(),
            units,
        });
        sources.push(source);
    }
    // Check mode writes nothing, not even the cache.
    if !check {
        cache.retain(&located_paths);
        if let Err(e) = cache.save(&host.root) {
            tracing::warn!("cannot keep the image cache ({e}): the next apply reads the images again");
        }
    }
    Ok((resolved, sources))
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
async fn snapshot(host: &Host, systemd: &impl UnitManager) -> Result<Snapshot> {
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

/// Carries out a plan through the change executor, step by step in the
/// plan's order, with one exception: the file transaction is journaled and
/// applied before the first machine or unit stops (systemd sees the files
/// only at the reload, which comes after the stops), so that a crash at any
/// point is recovered with the units and machines as well as the files
/// put back. Any failure
/// undoes what was done, machine steps included, last step first, and the
/// error says exactly what could not be put back.
#[allow(clippy::too_many_arguments)]
async fn execute(
    host: &Host,
    machines: Option<&MachineContext<'_>>,
    systemd: &impl UnitManager,
    plan: &Plan,
    resolved: &[ResolvedPortable],
    sources: Vec<Source>,
    snapshot: &Snapshot,
    wanted_machines: &MachineWants,
) -> Result<()> {
    let bind_os_release = crate::portable::ops::binds_os_release(systemd).await?;
    let pin = crate::portable::ops::pin_level(systemd).await?;
    let (file_host, file_plan, file_resolved, file_snapshot) =
        (host.clone(), plan.clone(), resolved.to_vec(), snapshot.clone());
    let config_dir = machines.map(|m| m.machines.config_dir.clone());
    let machine_wants = wanted_machines.wants.clone();
    // Planned in full before anything changes: a step that cannot be
    // planned leaves the host untouched.
    let tx = blocking(move || {
        build_transaction(
            &file_host,
            bind_os_release,
            pin,
            &file_plan,
            &file_resolved,
            sources,
            &file_snapshot,
            config_dir.as_deref(),
            &machine_wants,
        )
    })
    .await?;

    // What a recovery after a crash must do besides the files: stop the
    // units (and machines) the apply starts, start again those it stops.
    let mut tx = tx;
    let mut put_back = UnitsOnRollback::default();
    for step in &plan.steps {
        match step {
            Step::Start { units } => put_back.stop.extend(units.iter().cloned()),
            Step::Stop { units } | Step::Restart { units } => put_back.restart.extend(units.iter().cloned()),
            Step::StartMachine { machine } => put_back.terminate_machines.push(machine.clone()),
            Step::StopMachine { machine } => put_back.start_machines.push(machine.clone()),
            _ => {}
        }
    }
    tx.on_rollback(put_back);

    let mut change = Executor::new(systemd);
    match run_steps(&mut change, tx, machines, plan, resolved, wanted_machines).await {
        Ok(()) => Ok(change.commit().await?),
        Err(error) => {
            let mut undo = Undo::new("fleet apply");
            change.roll_back(&mut undo).await;
            Err(Error::rolled_back(error, undo))
        }
    }
}

/// The steps of `plan`, in order; `change` keeps what each did and how to
/// undo it.
async fn run_steps<'a, M: UnitManager>(
    change: &mut Executor<'a, M>,
    tx: Transaction,
    machines: Option<&'a MachineContext<'a>>,
    plan: &Plan,
    resolved: &[ResolvedPortable],
    wanted_machines: &MachineWants,
) -> Result<()> {
    let mut unapplied = Some(tx);
    let mut reloaded = false;
    let mut machines_started = false;
    let mut machines_stopped = false;
    let machines_here = || machines.ok_or_else(|| Error::Machine("machines are not managed here".into()));
    for step in &plan.steps {
        // Journaled before any machine or unit stops, so that recovery
        // starts them again.
        if step.phase() >= Phase::StopMachines
            && let Some(tx) = unapplied.take()
        {
            change.apply(tx).await?;
        }
        if !reloaded && !step.changes_files() && step.phase() > Phase::Limits {
            reload_and_set_limits(change, machines, plan, wanted_machines).await?;
            reloaded = true;
        }
        match step {
            Step::ImportMachine { machine, source } => {
                let machines = machines_here()?;
                import_machine(machines, machine, source, &wanted_machines.base).await?;
                let (store, name) = (machines.machines.store.clone(), machine.clone());
                change.undo_with("removing an image it imported", false, move || async move {
                    blocking(move || store.remove(&name)).await.map(drop).map_err(|e| e.to_string())
                });
            }
            Step::StopMachine { .. } => {
                // All of them at once, as starts are.
                if !machines_stopped {
                    machines_stopped = true;
                    stop_machines(change, machines_here()?, plan).await?;
                }
            }
            Step::Stop { units } => change.stop(units).await?,
            Step::Restart { units } => {
                change.restart(units, true).await?;
                wait_active(change.systemd(), resolved, units).await?;
                check_health(change.systemd(), resolved, units).await?;
            }
            Step::Start { units } => {
                change.start(units, true).await?;
                wait_active(change.systemd(), resolved, units).await?;
                check_health(change.systemd(), resolved, units).await?;
            }
            Step::StartMachine { .. } => {
                // All of them at once (the steps of the last phase), each
                // taking a boot slot in `Machines::start`.
                if !machines_started {
                    machines_started = true;
                    start_machines(change, machines_here()?, plan, wanted_machines).await?;
                }
            }
            // In the transaction.
            Step::Disable { .. }
            | Step::DisableMachine { .. }
            | Step::Detach { .. }
            | Step::Attach { .. }
            | Step::Reattach { .. }
            | Step::Refresh { .. }
            | Step::Enable { .. }
            | Step::EnableMachine { .. }
            | Step::SetLimits { .. } => {}
        }
    }
    if let Some(tx) = unapplied.take() {
        change.apply(tx).await?;
    }
    if !reloaded {
        reload_and_set_limits(change, machines, plan, wanted_machines).await?;
    }
    Ok(())
}

/// The failures of machines handled side by side, as one error: the one,
/// or every one named.
fn one_error(mut failures: Vec<Error>) -> Result<()> {
    match failures.len() {
        0 => Ok(()),
        1 => Err(failures.remove(0)),
        _ => Err(Error::Machine(failures.iter().map(|e| e.to_string()).collect::<Vec<_>>().join("; "))),
    }
}

/// Powers off every machine the plan stops, side by side, each waited on
/// until its unit is gone. Each has its undo (a start) before it is asked
/// to stop, so that a failure or a kill midway starts it again; every one
/// that did not stop is named in the error.
async fn stop_machines<'a, M: UnitManager>(
    change: &mut Executor<'a, M>,
    machines: &'a MachineContext<'a>,
    plan: &Plan,
) -> Result<()> {
    let names: Vec<&String> = plan
        .steps
        .iter()
        .filter_map(|s| if let Step::StopMachine { machine } = s { Some(machine) } else { None })
        .collect();
    for name in &names {
        let name = name.to_string();
        change.undo_with("starting a machine it stopped", true, move || async move {
            let systemd = machines.systemd.undoing();
            let request = StartRequest::with_settings(&name, MACHINE_READY_TIMEOUT);
            machines.machines.start(&systemd, machines.machined, request).await.map(drop).map_err(|e| e.to_string())
        });
    }
    let stops = names.iter().map(|name| {
        machines.machines.signal_init(
            machines.systemd,
            machines.machined,
            name,
            crate::machine::ops::poweroff_signal(),
            Some(MACHINE_STOP_TIMEOUT),
        )
    });
    let failures: Vec<Error> =
        futures_util::future::join_all(stops).await.into_iter().filter_map(|r| r.err().map(Error::from)).collect();
    one_error(failures)
}

/// Boots every machine the plan starts, side by side, and waits until each
/// is ready and (with `health`) healthy. Each that started is terminated by
/// an undo; every one that failed is named in the error.
async fn start_machines<'a, M: UnitManager>(
    change: &mut Executor<'a, M>,
    machines: &'a MachineContext<'a>,
    plan: &Plan,
    wanted_machines: &MachineWants,
) -> Result<()> {
    let names: Vec<&String> = plan
        .steps
        .iter()
        .filter_map(|s| if let Step::StartMachine { machine } = s { Some(machine) } else { None })
        .collect();
    let boots = names.iter().map(|name| async move {
        let request = StartRequest::with_settings(name, MACHINE_READY_TIMEOUT);
        let started = machines.machines.start(machines.systemd, machines.machined, request).await;
        let checked = match &started {
            Ok(outcome) if outcome.ready => machine_health(machines, name, wanted_machines).await,
            Ok(_) => Err(Error::MachineNotReady(name.to_string(), MACHINE_READY_TIMEOUT)),
            Err(_) => Ok(()),
        };
        (started, checked)
    });
    let outcomes = futures_util::future::join_all(boots).await;
    let mut failures = Vec::new();
    for (name, (started, checked)) in names.iter().zip(outcomes) {
        match started {
            // Only once started: terminating a machine that never came up
            // would be a failed undo step that did no harm.
            Ok(_) => {
                let name = name.to_string();
                change.undo_with("terminating a machine it started", false, move || async move {
                    let systemd = machines.systemd.undoing();
                    machines.machines.terminate(&systemd, machines.machined, &name).await.map_err(|e| e.to_string())
                });
                if let Err(e) = checked {
                    failures.push(e);
                }
            }
            Err(e) => failures.push(e.into()),
        }
    }
    one_error(failures)
}

/// A started machine's health command, inside it, when its entry has one.
async fn machine_health(machines: &MachineContext<'_>, name: &str, wanted_machines: &MachineWants) -> Result<()> {
    let Some(health) = wanted_machines.wants.iter().find(|w| w.name == name).and_then(|w| w.health.as_ref()) else {
        return Ok(());
    };
    let path = machines
        .machined
        .get_machine(name.to_string())
        .await
        .map_err(|source| crate::machine::ops::Error::Machined { machine: name.to_string(), source })?;
    let proxy = zbus_systemd::machine1::MachineProxy::builder(machines.machined.inner().connection())
        .path(path)
        .build()
        .await
        .map_err(|source| crate::machine::ops::Error::Machined { machine: name.to_string(), source })?;
    let leader = proxy
        .leader()
        .await
        .map_err(|source| crate::machine::ops::Error::Machined { machine: name.to_string(), source })?;
    super::health::check(machines.systemd, super::health::Target::Machine { name, leader }, health)
        .await
        .map_err(Error::Unhealthy)
}

/// The health commands of the images whose services `units` were just
/// started (or restarted), side by side: one per image, in its main
/// service (`PREFIX.service` when it has one, else the first started).
async fn check_health(systemd: &impl UnitManager, resolved: &[ResolvedPortable], units: &[String]) -> Result<()> {
    let checks: Vec<(String, &super::health::Health)> = resolved
        .iter()
        .filter_map(|r| {
            let health = r.want.health.as_ref()?;
            let mut started: Vec<&String> = r.services.iter().filter(|s| units.contains(s)).collect();
            started.sort();
            let main = format!("{}.service", r.prefix);
            let unit = started.iter().find(|s| ***s == main).or(started.first())?;
            Some(((*unit).clone(), health))
        })
        .collect();
    let results =
        futures_util::future::join_all(checks.iter().map(|(unit, health)| systemd.check_health(unit, health))).await;
    let failed: Vec<String> = results.into_iter().filter_map(|r| r.err()).collect();
    if failed.is_empty() { Ok(()) } else { Err(Error::Unhealthy(failed.join("; "))) }
}

/// After the files: systemd reloaded, and the new limits of running
/// machines set live (those are not put back by an undo: they last until
/// the machine next starts, with its settings file's).
async fn reload_and_set_limits<M: UnitManager>(
    change: &mut Executor<'_, M>,
    machines: Option<&MachineContext<'_>>,
    plan: &Plan,
    wanted_machines: &MachineWants,
) -> Result<()> {
    change.reload().await?;
    for step in &plan.steps {
        if let Step::SetLimits { machine, .. } = step {
            let machines = machines.ok_or_else(|| Error::Machine("machines are not managed here".into()))?;
            let want = wanted_machines.wants.iter().find(|w| &w.name == machine).expect("planned from the file");
            if is_running(machines.machined, machine).await? {
                let bus = want.limits.iter().map(crate::machine::property::Property::to_bus).collect();
                machines.systemd.set_properties(&crate::machine::ops::unit_name(machine), true, bus).await?;
            }
        }
    }
    Ok(())
}

/// How long a machine may take to stop, and to report ready, within an apply.
const MACHINE_STOP_TIMEOUT: Duration = Duration::from_secs(90);
const MACHINE_READY_TIMEOUT: Duration = Duration::from_secs(90);

/// Imports a missing machine image from its source (relative to `base`).
async fn import_machine(machines: &MachineContext<'_>, machine: &str, source: &str, base: &Path) -> Result<()> {
    let path = base.join(source);
    let (store, name) = (machines.machines.store.clone(), machine.to_string());
    blocking(move || -> Result<()> {
        let file = std::fs::File::open(&path).map_err(|source| Error::Io { path: path.clone(), source })?;
        store.import_any(file, &name, &mut |_, _| {}).map_err(crate::machine::ops::Error::from)?;
        Ok(())
    })
    .await
}

/// Waits until every started unit is active (a oneshot that finished
/// counts), each within its image's start timeout; units with the same
/// timeout are waited for together.
async fn wait_active(systemd: &impl UnitManager, resolved: &[ResolvedPortable], units: &[String]) -> Result<()> {
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

/// Where the template of the machines' boot units is, in the unit search
/// path under `root`: the link that enables a machine points to it.
const MACHINE_TEMPLATE: &str = "wharf-machine@.service";
const UNIT_PATH: [&str; 5] = [
    "etc/systemd/system",
    "run/systemd/system",
    "usr/local/lib/systemd/system",
    "usr/lib/systemd/system",
    "lib/systemd/system",
];

/// Adds the links that enable a machine's boot unit to `tx`, as
/// `systemctl enable` makes them: in /etc, to the template.
fn add_machine_enable_steps(root: &Path, machine: &str, tx: &mut Transaction) -> Result<()> {
    let template = UNIT_PATH.iter().map(|dir| root.join(dir).join(MACHINE_TEMPLATE)).find(|p| p.is_file());
    let Some(template) = template else {
        return Err(Error::Machine(format!(
            "machine '{machine}': cannot be enabled: {MACHINE_TEMPLATE} is not installed"
        )));
    };
    let contents = std::fs::read_to_string(&template).map_err(|source| Error::Io { path: template.clone(), source })?;
    crate::portable::install::add_links_to(&unit_dir(root, false), &boot_unit(machine), &template, &contents, tx)
        .map_err(crate::portable::Error::from)?;
    Ok(())
}

/// Every file change of the plan, in one transaction: detaches, attaches
/// (with their settings drop-ins) and the record of what apply attached.
#[allow(clippy::too_many_arguments)]
fn build_transaction(
    host: &Host,
    bind_os_release: bool,
    pin: crate::image::policy::PinLevel,
    plan: &Plan,
    resolved: &[ResolvedPortable],
    sources: Vec<Source>,
    snapshot: &Snapshot,
    machine_config_dir: Option<&Path>,
    machine_wants: &[MachineWant],
) -> Result<Transaction> {
    let existing = Attachments::scan(&host.root).map_err(|source| Error::Io { path: host.root.clone(), source })?;
    let mut tx = Transaction::new(&host.journal_dir);
    let by_image: HashMap<&str, (&ResolvedPortable, &Source)> =
        resolved.iter().zip(&sources).map(|(r, s)| (r.image.as_str(), (r, s))).collect();

    for step in &plan.steps {
        match step {
            // Links go before their units do, and come after.
            Step::Disable { units } => add_unlink_steps(&host.root, units, &mut tx),
            Step::DisableMachine { machine } => add_unlink_steps(&host.root, &[boot_unit(machine)], &mut tx),
            Step::Enable { units } => {
                for (want, source) in resolved.iter().zip(&sources) {
                    let dest = unit_dir(&host.root, want.want.runtime);
                    for unit in source.units.iter().filter(|u| units.contains(&u.name)) {
                        crate::portable::install::add_enable_steps(&dest, &unit.name, &unit.contents, &mut tx)
                            .map_err(crate::portable::Error::from)?;
                    }
                }
            }
            Step::EnableMachine { machine } => add_machine_enable_steps(&host.root, machine, &mut tx)?,
            Step::SetLimits { machine, .. } => {
                let want = machine_wants.iter().find(|w| &w.name == machine).expect("planned from the file");
                let dir = machine_config_dir.ok_or_else(|| Error::Machine("machines are not managed here".into()))?;
                let (path, text) = settings_with_limits(dir, machine, &want.limits, true)?;
                let text =
                    crate::machine::ops::with_network(&path, &text, want.network.as_deref(), want.ports.as_deref())?;
                std::fs::create_dir_all(dir).map_err(|source| Error::Io { path: dir.to_path_buf(), source })?;
                tx.write(path, text, 0o644);
            }
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
                    // Written only where the plan has a step: a no-op pass
                    // leaves an unpinned attachment as it is.
                    pin,
                    keep_unpinned: false,
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

    use crate::image::Pool;
    use crate::systemd::manager::fake::FakeManager;

    const UNIT: &str =
        "[Unit]\nDescription=foobar\n[Service]\nExecStart=/bin/true\n[Install]\nWantedBy=multi-user.target\n";
    const WANTED: &str = "[[portable]]\nimage = \"foobar_1\"\nenabled = true\nrunning = true\n";

    /// A host under a scratch directory, with image foobar_1 in its pool.
    fn host(tag: &str) -> Host {
        let root = std::env::temp_dir().join(format!("wharf-fleet-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&root);
        for dir in ["etc/systemd/system", "run/systemd/system", "usr/lib/wharf/profiles/default"] {
            std::fs::create_dir_all(root.join(dir)).unwrap();
        }
        std::fs::write(root.join("usr/lib/wharf/profiles/default/service.conf"), "[Service]\nDynamicUser=yes\n")
            .unwrap();
        let image = root.join("var/lib/portables/foobar_1");
        std::fs::create_dir_all(image.join("usr/lib/systemd/system")).unwrap();
        std::fs::write(image.join("usr/lib/os-release"), "ID=foobar\nPORTABLE_PREFIXES=foobar\n").unwrap();
        std::fs::write(image.join("usr/lib/systemd/system/foobar.service"), UNIT).unwrap();
        Host { pool: Pool::under(&root, "portables"), journal_dir: root.join("var/lib/wharf/transactions"), root }
    }

    /// Every file apply may change: unit directories, journal and record.
    fn files(host: &Host) -> Vec<String> {
        let mut out = Vec::new();
        let mut stack: Vec<PathBuf> =
            ["etc/systemd/system", "run/systemd/system", "var/lib/wharf"].iter().map(|d| host.root.join(d)).collect();
        while let Some(dir) = stack.pop() {
            for entry in std::fs::read_dir(&dir).into_iter().flatten().flatten() {
                let path = entry.path();
                out.push(path.strip_prefix(&host.root).unwrap().display().to_string());
                if entry.file_type().unwrap().is_dir() {
                    stack.push(path);
                }
            }
        }
        out.sort();
        out
    }

    /// What is left of an apply undone: the directory of its journals.
    fn empty() -> Vec<String> {
        vec!["var/lib/wharf/transactions".to_string()]
    }

    fn apply_file(host: &Host, systemd: &FakeManager, text: &str) -> Result<Outcome> {
        let fleet = FleetFile::parse(text, "/srv/host.toml").unwrap();
        zbus::block_on(apply(
            host,
            None,
            systemd,
            fleet,
            host.root.join("srv"),
            Options::default(),
            Box::new(|_, _| {}),
        ))
    }

    const LINK: &str = "etc/systemd/system/multi-user.target.wants/foobar.service";

    #[test]
    fn an_apply_enables_through_its_transaction() {
        let host = host("works");
        let systemd = FakeManager::of(&host.root);
        let outcome = apply_file(&host, &systemd, WANTED).unwrap();
        let lines: Vec<String> = outcome.plan.steps.iter().map(|s| s.to_string()).collect();
        assert_eq!(
            lines,
            ["attach /foobar_1 (profile default)", "enable foobar.service", "start foobar.service"]
                .map(|l| l.replace("/foobar_1", &host.root.join("var/lib/portables/foobar_1").display().to_string()))
        );
        assert_eq!(
            std::fs::read_link(host.root.join(LINK)).unwrap(),
            host.root.join("etc/systemd/system/foobar.service")
        );
        assert_eq!(systemd.calls(), ["reload", "start foobar.service", "wait active foobar.service"]);
        // The same file again: the link is seen, nothing is left to do.
        assert!(apply_file(&host, &systemd, WANTED).unwrap().plan.is_empty());
        std::fs::remove_dir_all(&host.root).unwrap();
    }

    #[test]
    fn an_apply_whose_reload_fails_leaves_no_file_and_no_link() {
        let host = host("reload");
        let systemd = FakeManager::of(&host.root);
        systemd.fail("reload", 1);
        let error = apply_file(&host, &systemd, WANTED).unwrap_err();
        assert!(matches!(error, Error::RolledBack(_)), "{error}");
        assert_eq!(error.to_string(), "systemd: reload job failed; everything this apply changed was put back");
        assert_eq!(files(&host), empty());
        assert_eq!(systemd.calls(), ["reload", "reload"]);
        std::fs::remove_dir_all(&host.root).unwrap();
    }

    #[test]
    fn an_apply_whose_unit_fails_after_start_is_stopped_and_removed() {
        for failing in ["start", "wait"] {
            let host = host(&format!("start-{failing}"));
            let systemd = FakeManager::of(&host.root);
            systemd.fail(failing, 1);
            let error = apply_file(&host, &systemd, WANTED).unwrap_err();
            assert!(matches!(error, Error::RolledBack(_)), "{error}");
            assert!(error.to_string().starts_with("foobar.service "), "{error}");
            assert_eq!(files(&host), empty());
            assert!(systemd.running().is_empty());
            let mut calls = vec!["reload", "start foobar.service"];
            if failing == "wait" {
                calls.push("wait active foobar.service");
            }
            calls.extend(["stop foobar.service", "reload"]);
            assert_eq!(systemd.calls(), calls);
            std::fs::remove_dir_all(&host.root).unwrap();
        }
    }

    /// A stop that times out: the files, journaled and changed before the
    /// stop (systemd had not read them yet), are put back, and the unit is
    /// started again.
    #[test]
    fn an_apply_whose_stop_times_out_starts_the_unit_again() {
        let host = host("stop");
        let systemd = FakeManager::of(&host.root);
        apply_file(&host, &systemd, WANTED).unwrap();
        let before = files(&host);
        systemd.calls.lock().unwrap().clear();
        systemd.watch_journal(&host.root.join("var/lib/wharf/transactions"));
        systemd.time_out("stop", 1);
        let error = apply_file(&host, &systemd, "# nothing\n").unwrap_err();
        assert_eq!(
            error.to_string(),
            "foobar.service: stop job did not finish within 90 s; everything this apply changed was put back"
        );
        assert_eq!(files(&host), before);
        assert_eq!(systemd.calls(), ["stop foobar.service", "reload", "start foobar.service"]);
        // A crash during the stop is recovered: the journal was there.
        assert_eq!(systemd.journaled(), ["stop foobar.service"]);
        assert_eq!(systemd.running(), ["foobar.service"]);

        // When it works, the link goes with the unit, in the same transaction.
        let outcome = apply_file(&host, &systemd, "# nothing\n").unwrap();
        let actions: Vec<&str> = outcome.plan.steps.iter().map(Step::action).collect();
        assert_eq!(actions, ["stop", "disable", "detach"]);
        assert!(!host.root.join(LINK).exists());
        assert!(!host.root.join("etc/systemd/system/foobar.service").exists());
        std::fs::remove_dir_all(&host.root).unwrap();
    }

    /// Enabling fails (its link directory cannot be made): the unit files
    /// written before it are taken back, and systemd is never asked to change anything.
    #[test]
    fn an_apply_whose_enable_fails_leaves_nothing() {
        let host = host("enable");
        let wants = host.root.join("etc/systemd/system/multi-user.target.wants");
        std::fs::write(&wants, "in the way").unwrap();
        let systemd = FakeManager::of(&host.root);
        let error = apply_file(&host, &systemd, WANTED).unwrap_err();
        assert!(matches!(error, Error::RolledBack(_)), "{error}");
        assert!(error.to_string().contains("multi-user.target.wants"), "{error}");
        let mut left = empty();
        left.push("etc/systemd/system/multi-user.target.wants".into());
        left.sort();
        assert_eq!(files(&host), left);
        assert!(systemd.calls().is_empty(), "{:?}", systemd.calls());
        std::fs::remove_dir_all(&host.root).unwrap();
    }

    /// A failed start whose undo cannot stop the unit again: the error
    /// names that step, and only that one.
    #[test]
    fn an_apply_whose_undo_fails_says_what_was_not_put_back() {
        let host = host("undo");
        let systemd = FakeManager::of(&host.root);
        systemd.fail("start", 1);
        systemd.fail("stop", 1);
        let error = apply_file(&host, &systemd, WANTED).unwrap_err();
        let Error::PartiallyRolledBack { failed_steps, .. } = &error else {
            panic!("not partly rolled back: {error}");
        };
        assert_eq!(
            failed_steps.iter().map(|f| f.to_string()).collect::<Vec<_>>(),
            ["stopping the units it started (foobar.service: stop job failed)"]
        );
        assert!(
            error.to_string().ends_with(
                "this apply's changes were put back only in part, these undo steps failed: \
                 stopping the units it started (foobar.service: stop job failed)"
            ),
            "{error}"
        );
        assert_eq!(files(&host), empty());
        assert_eq!(systemd.running(), ["foobar.service"]);
        std::fs::remove_dir_all(&host.root).unwrap();
    }

    /// A health command that never succeeds fails the step: the unit is
    /// stopped and its files go, as for a unit that does not start.
    #[test]
    fn an_unhealthy_start_is_rolled_back() {
        let host = host("health");
        let systemd = FakeManager::of(&host.root);
        systemd.fail("health", 1);
        let text = format!("{WANTED}health = \"/usr/bin/foobar --check\"\nhealth-timeout = \"3s\"\n");
        let error = apply_file(&host, &systemd, &text).unwrap_err();
        assert!(matches!(error, Error::RolledBack(_)), "{error}");
        assert_eq!(
            error.to_string(),
            "foobar.service: its health command did not succeed within 3 s (status 1); \
             everything this apply changed was put back"
        );
        assert_eq!(files(&host), empty());
        assert!(systemd.running().is_empty());
        assert_eq!(
            systemd.calls(),
            [
                "reload",
                "start foobar.service",
                "wait active foobar.service",
                "health foobar.service",
                "stop foobar.service",
                "reload"
            ]
        );
        // Healthy: the step is done, and a second apply has nothing to do.
        let outcome = apply_file(&host, &systemd, &text).unwrap();
        assert!(systemd.calls().ends_with(&["health foobar.service".to_string()]), "{:?}", systemd.calls());
        assert_eq!(outcome.plan.steps.len(), 3);
        assert!(apply_file(&host, &systemd, &text).unwrap().plan.is_empty());
        std::fs::remove_dir_all(&host.root).unwrap();
    }

    /// A file listing machines is refused, before anything changes, where
    /// machines are not managed.
    #[test]
    fn machines_without_machined_are_refused() {
        let host = host("machines");
        let systemd = FakeManager::of(&host.root);
        let error = apply_file(&host, &systemd, "[[machine]]\nname = \"m\"\nsource = \"m.tar\"\n").unwrap_err();
        assert_eq!(error.to_string(), "machines are not managed here");
        assert!(systemd.calls().is_empty());
        std::fs::remove_dir_all(&host.root).unwrap();
    }
}
