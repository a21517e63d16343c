//! The calls wharf makes to systemd's manager (org.freedesktop.systemd1)
//! over D-Bus: reload, enable/disable, start/stop/restart with waiting for
//! the job, unit states, and transient units.
//!
//! Every call and every wait has a deadline (see [`Deadlines`]): a systemd
//! that does not answer, a job that never ends or a unit that never gets
//! to the state waited for is an error naming what was waited for, which
//! rolls the operation back like any other failure.
//!
//! Signal streams are polled for as long as they exist: zbus stops reading
//! the connection's socket when one stream's queue (64 messages) is full,
//! so a stream left unread while more signals arrive blocks every reply on
//! the connection, for every call of the daemon (issue 21).

pub mod manager;

use std::collections::{HashMap, HashSet};
use std::future::Future;
use std::num::NonZeroUsize;
use std::pin::pin;
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant};

use futures_util::StreamExt;
use futures_util::future::{Either, select};
use zbus::{Connection, OwnedObjectPath};
use zbus_systemd::systemd1::ManagerProxy;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("systemd: {what}: {source}")]
    Call {
        what: String,
        #[source]
        source: zbus::Error,
    },
    #[error("systemd did not answer {what} within {seconds} s")]
    NoAnswer { what: String, seconds: u64 },
    #[error("{unit}: {verb} job {result}")]
    JobFailed { unit: String, verb: &'static str, result: String },
    #[error("{unit}: {verb} job did not finish within {seconds} s")]
    JobTimeout { unit: String, verb: &'static str, seconds: u64 },
    #[error("{unit} did not become {wanted} within {seconds} s (it is {state})")]
    WaitTimeout { unit: String, wanted: &'static str, state: String, seconds: u64 },
    #[error("{unit} failed right after it was started (see journalctl -u {unit})")]
    FailedAfterStart { unit: String },
    #[error("{unit} is {state}, not {wanted} (see journalctl -u {unit})")]
    WrongState { unit: String, wanted: &'static str, state: String },
    #[error("systemd: the connection was lost while waiting for {0}")]
    Lost(String),
    #[error("cannot start a timer: {0}")]
    Timer(#[source] std::io::Error),
}

pub type Result<T> = std::result::Result<T, Error>;

fn call(what: impl Into<String>) -> impl FnOnce(zbus::Error) -> Error {
    let what = what.into();
    move |source| Error::Call { what, source }
}

/// Whether a zbus error is a call's own deadline (the connection's method
/// timeout) passing.
pub fn is_timeout(error: &zbus::Error) -> bool {
    matches!(error, zbus::Error::InputOutput(e) if e.kind() == std::io::ErrorKind::TimedOut)
}

/// How long wharfd waits for what, read once from its environment (a
/// systemd drop-in can shorten them, as the tests do) or the defaults.
#[derive(Debug, Clone, Copy)]
pub struct Deadlines {
    /// One call to systemd: `WHARF_CALL_TIMEOUT` seconds, default 60.
    pub call: Duration,
    /// One start/stop job, and a unit reaching a state: `WHARF_JOB_TIMEOUT`, default 90.
    pub job: Duration,
    /// One call made to undo a failed operation: `WHARF_UNDO_TIMEOUT`,
    /// default 5 × the call deadline. Longer, so that an operation that
    /// failed because the bus stopped answering is still put back once it
    /// answers again (undo steps are idempotent).
    pub undo: Duration,
    /// How long started units are watched for an early failure:
    /// `WHARF_SETTLE_MS` milliseconds, default 1000.
    pub settle: Duration,
    /// One small download (a SHA256SUMS, a signature, a registry's token,
    /// manifest or config): `WHARF_SMALL_DOWNLOAD_TIMEOUT` seconds, default
    /// 60. A server that drips bytes never stalls, so only a deadline ends it.
    pub small_download: Duration,
}

impl Deadlines {
    pub fn get() -> Deadlines {
        static DEADLINES: OnceLock<Deadlines> = OnceLock::new();
        *DEADLINES.get_or_init(|| {
            let number = |name: &str| std::env::var(name).ok().and_then(|v| v.trim().parse::<u64>().ok());
            let call = Duration::from_secs(number("WHARF_CALL_TIMEOUT").filter(|&n| n > 0).unwrap_or(60));
            Deadlines {
                call,
                job: Duration::from_secs(number("WHARF_JOB_TIMEOUT").filter(|&n| n > 0).unwrap_or(90)),
                undo: number("WHARF_UNDO_TIMEOUT").filter(|&n| n > 0).map_or(call * 5, Duration::from_secs),
                settle: Duration::from_millis(number("WHARF_SETTLE_MS").unwrap_or(1000)),
                small_download: Duration::from_secs(
                    number("WHARF_SMALL_DOWNLOAD_TIMEOUT").filter(|&n| n > 0).unwrap_or(60),
                ),
            }
        })
    }
}

fn runtime() -> Result<zruntime::SharedRuntime> {
    zruntime::SharedRuntime::current().map_err(Error::Timer)
}

/// Awaits `future` until `deadline`; `None` when it passed first.
pub async fn until<T>(deadline: Instant, future: impl Future<Output = T>) -> Result<Option<T>> {
    Ok(runtime()?.timeout_at(deadline, future).await.ok())
}

/// What a wait makes of a unit's active state.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// The unit is where it was wanted.
    Done,
    /// Not yet.
    Wait,
    /// It will not get there (it failed).
    Fail,
}

/// Conditions for [`Systemd::wait_for`].
pub mod condition {
    use super::Verdict;

    /// Up, or a oneshot that has finished; failed is a failure.
    pub fn started(state: &str) -> Verdict {
        match state {
            "active" | "inactive" => Verdict::Done,
            "failed" => Verdict::Fail,
            _ => Verdict::Wait,
        }
    }

    /// Down (failed counts: it is not running either).
    pub fn stopped(state: &str) -> Verdict {
        match state {
            "inactive" | "failed" => Verdict::Done,
            _ => Verdict::Wait,
        }
    }

    /// Out of `maintenance`, where systemd keeps a unit while it removes its
    /// directories; failed means the removal failed.
    pub fn cleaned(state: &str) -> Verdict {
        match state {
            "inactive" => Verdict::Done,
            "failed" => Verdict::Fail,
            _ => Verdict::Wait,
        }
    }

    /// Anything but failed; for watching started units for a while.
    pub fn not_failed(state: &str) -> Verdict {
        if state == "failed" { Verdict::Fail } else { Verdict::Wait }
    }
}

/// The object path systemd gives a unit: its name with every byte that is
/// not an ASCII letter or digit (and a leading digit) written as `_xx`.
pub fn unit_path(unit: &str) -> String {
    let mut path = String::from("/org/freedesktop/systemd1/unit/");
    for (i, byte) in unit.bytes().enumerate() {
        if byte.is_ascii_alphabetic() || (byte.is_ascii_digit() && i > 0) {
            path.push(byte as char);
        } else {
            path.push_str(&format!("_{byte:02x}"));
        }
    }
    path
}

/// Unit state as `systemctl` shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UnitState {
    pub name: String,
    pub load_state: String,
    pub active_state: String,
}

impl UnitState {
    /// Running, or on its way up or down: not safe to pull its files.
    pub fn is_active(&self) -> bool {
        matches!(self.active_state.as_str(), "active" | "activating" | "deactivating" | "reloading" | "refreshing")
    }
}

/// The leading number of a systemd version string; 0 if there is none.
pub fn parse_version(version: &str) -> u32 {
    let digits: String = version.trim().chars().take_while(|c| c.is_ascii_digit()).collect();
    digits.parse().unwrap_or(0)
}

/// A string property of a transient unit.
/// systemd's answer to a clean of a unit whose directories are gone already.
const NOTHING_TO_CLEAN: &str = "org.freedesktop.systemd1.NothingToClean";

pub fn text(text: &str) -> zbus::OwnedVariant {
    zbus::OwnedVariant::try_from(zbus::Variant::from(text)).expect("a string holds no descriptor")
}

/// `ExecStart` as systemd's manager takes it: a(sasb), one command.
pub fn exec_start(argv: &[String]) -> zbus::OwnedVariant {
    let entry = (argv[0].clone(), argv.to_vec(), false);
    zbus::OwnedVariant::try_from(zbus::Variant::from(vec![entry])).expect("strings hold no descriptor")
}

/// `ExecStartEx` (a(sasas), systemd 243): one command whose arguments
/// systemd takes as they are. Plain `ExecStart` expands `$VAR` and
/// `${VAR}` in them from the unit's environment (an empty word for an
/// unset one); the `no-env-expand` flag (`:` in a unit file) turns that off.
pub fn exec_start_literal(argv: &[String]) -> zbus::OwnedVariant {
    let entry = (argv[0].clone(), argv.to_vec(), vec!["no-env-expand".to_string()]);
    zbus::OwnedVariant::try_from(zbus::Variant::from(vec![entry])).expect("strings hold no descriptor")
}

/// A file descriptor property (`StandardInputFileDescriptor`...), passed
/// to systemd with the call.
pub fn descriptor(fd: zbus::OwnedFd) -> std::io::Result<zbus::OwnedVariant> {
    zbus::OwnedVariant::try_from(zbus::Variant::from(zbus::Fd::from(fd)))
        .map_err(|e| std::io::Error::other(e.to_string()))
}

/// How a start job ended within the time it was waited for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum JobOutcome {
    Done,
    Pending,
}

/// A change `EnableUnitFiles`/`DisableUnitFiles` made: (type, file, destination).
pub type InstallChange = (String, String, String);

/// A handle on systemd's manager.
#[derive(Debug, Clone)]
pub struct Systemd {
    manager: ManagerProxy<'static>,
    /// The deadline of each call made through this handle.
    call_timeout: Duration,
    /// Told of the units of every job queued through this handle.
    observer: Option<JobObserver>,
}

/// What is told of the units of the jobs a [`Systemd`] queues, before it
/// queues them.
#[derive(Clone)]
pub struct JobObserver(std::sync::Arc<Observe>);

type Observe = dyn Fn(&[String]) + Send + Sync;

impl JobObserver {
    pub fn new(observe: impl Fn(&[String]) + Send + Sync + 'static) -> JobObserver {
        JobObserver(std::sync::Arc::new(observe))
    }
}

impl std::fmt::Debug for JobObserver {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("JobObserver")
    }
}

#[derive(Debug, Clone, Copy)]
enum JobVerb {
    Start,
    Stop,
    Restart,
}

impl JobVerb {
    fn as_str(self) -> &'static str {
        match self {
            JobVerb::Start => "start",
            JobVerb::Stop => "stop",
            JobVerb::Restart => "restart",
        }
    }
}

/// Room in the queue of the stream of unit state changes: every unit of
/// the host sends them, not only the ones waited for.
const STATE_QUEUE: NonZeroUsize = NonZeroUsize::new(1024).expect("not zero");

impl Systemd {
    pub async fn new(connection: &Connection) -> Result<Systemd> {
        let call_timeout = Deadlines::get().call;
        let manager = bounded(call_timeout, "connecting to the manager", ManagerProxy::new(connection)).await?;
        Ok(Systemd { manager, call_timeout, observer: None })
    }

    /// The same manager, telling `observer` of the units of its jobs.
    pub fn observed(self, observer: JobObserver) -> Systemd {
        Systemd { observer: Some(observer), ..self }
    }

    /// Asks PID 1 to send its signals (units' PropertiesChanged among them).
    pub async fn subscribe_signals(&self) -> Result<()> {
        self.subscribe().await
    }

    /// The same manager, with the patience of undoing: calls wait up to
    /// [`Deadlines::undo`], so that a rollback goes through once a bus that
    /// stopped answering answers again.
    pub fn undoing(&self) -> Systemd {
        Systemd { manager: self.manager.clone(), call_timeout: Deadlines::get().undo, observer: self.observer.clone() }
    }

    pub(crate) fn connection(&self) -> &Connection {
        self.manager.inner().connection()
    }

    async fn bounded<T>(&self, what: impl Into<String>, call: impl Future<Output = zbus::Result<T>>) -> Result<T> {
        bounded(self.call_timeout, what, call).await
    }

    /// The manager's version number (252 for "252.39-1~deb12u2").
    pub async fn version(&self) -> Result<u32> {
        let version = self.bounded("reading its version", self.manager.version()).await?;
        Ok(parse_version(&version))
    }

    /// `daemon-reload`; returns once systemd has reloaded.
    pub async fn reload(&self) -> Result<()> {
        self.bounded("reload", self.manager.reload()).await
    }

    pub async fn enable(&self, units: &[String], runtime: bool) -> Result<Vec<InstallChange>> {
        if units.is_empty() {
            return Ok(Vec::new());
        }
        let (_, changes) = self
            .bounded(
                format!("enabling {}", units.join(" ")),
                self.manager.enable_unit_files(units.to_vec(), runtime, false),
            )
            .await?;
        Ok(changes)
    }

    pub async fn disable(&self, units: &[String], runtime: bool) -> Result<Vec<InstallChange>> {
        if units.is_empty() {
            return Ok(Vec::new());
        }
        self.bounded(format!("disabling {}", units.join(" ")), self.manager.disable_unit_files(units.to_vec(), runtime))
            .await
    }

    /// Unit file states (`enabled`, `static`, ...) of several units in one
    /// call, by unit name; units without a file are left out.
    pub async fn unit_file_states(&self, units: &[String]) -> Result<HashMap<String, String>> {
        if units.is_empty() {
            return Ok(HashMap::new());
        }
        let files = self
            .bounded("listing unit files", self.manager.list_unit_files_by_patterns(Vec::new(), units.to_vec()))
            .await?;
        Ok(files
            .into_iter()
            .filter_map(|(path, state)| {
                let name = path.rsplit('/').next()?.to_string();
                Some((name, state))
            })
            .collect())
    }

    /// A unit file's enablement (`enabled`, `disabled`, `static`, ...), as
    /// `systemctl is-enabled` says; it knows instances of templates too,
    /// which listing unit files by name does not.
    pub async fn unit_file_state(&self, unit: &str) -> Result<String> {
        self.bounded(format!("reading the enablement of {unit}"), self.manager.get_unit_file_state(unit.to_string()))
            .await
    }

    /// Load and active states of several units in one call.
    pub async fn unit_states(&self, units: &[String]) -> Result<Vec<UnitState>> {
        if units.is_empty() {
            return Ok(Vec::new());
        }
        let listed = self.bounded("listing units", self.manager.list_units_by_names(units.to_vec())).await?;
        Ok(listed
            .into_iter()
            .map(|(name, _description, load_state, active_state, ..)| UnitState { name, load_state, active_state })
            .collect())
    }

    /// The directories a service's unit names in `StateDirectory=`,
    /// `CacheDirectory=`, `LogsDirectory=`, `ConfigurationDirectory=` and
    /// `RuntimeDirectory=`, as systemd loaded them (drop-ins included):
    /// (setting, directory) pairs.
    pub async fn service_directories(&self, unit: &str) -> Result<Vec<(&'static str, String)>> {
        let what = format!("reading the directories of {unit}");
        let service = zbus_systemd::systemd1::ServiceProxy::builder(self.connection())
            .path(unit_path(unit))
            .cache_properties(zbus::proxy::CacheProperties::No)
            .build()
            .await
            .map_err(call(what.clone()))?;
        let mut found = Vec::new();
        let settings = [
            ("StateDirectory", self.bounded(what.clone(), service.state_directory()).await?),
            ("CacheDirectory", self.bounded(what.clone(), service.cache_directory()).await?),
            ("LogsDirectory", self.bounded(what.clone(), service.logs_directory()).await?),
            ("ConfigurationDirectory", self.bounded(what.clone(), service.configuration_directory()).await?),
            ("RuntimeDirectory", self.bounded(what, service.runtime_directory()).await?),
        ];
        for (setting, directories) in settings {
            found.extend(directories.into_iter().map(|d| (setting, d)));
        }
        Ok(found)
    }

    /// Keeps units loaded, as they are now, until [`Systemd::unpin`]: a
    /// stopped unit whose file is gone stays loaded with its old settings
    /// (systemd drops such a reference when wharfd leaves the bus).
    pub async fn pin(&self, units: &[String]) -> Result<()> {
        for (done, unit) in units.iter().enumerate() {
            if let Err(e) = self.bounded(format!("keeping {unit} loaded"), self.manager.ref_unit(unit.clone())).await {
                // All or none: the ones already pinned are released.
                if let Err(release) = self.unpin(&units[..done]).await {
                    tracing::warn!("cannot release units kept loaded: {release}");
                }
                return Err(e);
            }
        }
        Ok(())
    }

    pub async fn unpin(&self, units: &[String]) -> Result<()> {
        for unit in units {
            self.bounded(format!("releasing {unit}"), self.manager.unref_unit(unit.clone())).await?;
        }
        Ok(())
    }

    /// Removes the directories of stopped units (`systemctl clean
    /// --what=all`) and waits until systemd has done so.
    /// A unit with nothing left to clean is clean: systemd says so with an
    /// error of its own, which is no failure.
    pub async fn clean(&self, units: &[String]) -> Result<()> {
        let mut cleaning = Vec::new();
        for unit in units {
            let call = async {
                match self.manager.clean_unit(unit.clone(), vec!["all".into()]).await {
                    Err(zbus::Error::MethodError(name, ..)) if name.as_str() == NOTHING_TO_CLEAN => Ok(false),
                    other => other.map(|()| true),
                }
            };
            if self.bounded(format!("cleaning {unit}"), call).await? {
                cleaning.push(unit.clone());
            }
        }
        self.wait_for(&cleaning, condition::cleaned, "cleaned", Deadlines::get().job).await
    }

    /// Starts units; when `wait`, until their jobs are done and then for
    /// [`Deadlines::settle`] more, so that a service that dies right after
    /// its start (which a simple service's start job does not see) is a
    /// failed start.
    pub async fn start(&self, units: &[String], wait: bool) -> Result<()> {
        self.jobs(JobVerb::Start, units, wait).await?;
        if wait { self.settle(units).await } else { Ok(()) }
    }

    /// Stops units; when `wait`, until they are down.
    pub async fn stop(&self, units: &[String], wait: bool) -> Result<()> {
        self.jobs(JobVerb::Stop, units, wait).await?;
        if wait {
            self.wait_for(units, condition::stopped, "stopped", Deadlines::get().job).await?;
        }
        Ok(())
    }

    pub async fn restart(&self, units: &[String], wait: bool) -> Result<()> {
        self.jobs(JobVerb::Restart, units, wait).await?;
        if wait { self.settle(units).await } else { Ok(()) }
    }

    /// Watches started units for [`Deadlines::settle`]: one that fails in
    /// that time failed to start.
    async fn settle(&self, units: &[String]) -> Result<()> {
        let settle = Deadlines::get().settle;
        match self.watch(units, condition::not_failed, settle).await? {
            Watched::Failed(unit, _) => Err(Error::FailedAfterStart { unit }),
            Watched::Done | Watched::TimedOut(..) => Ok(()),
        }
    }

    /// Waits until every unit's active state satisfies `condition` (see
    /// [`condition`]), for at most `timeout`. A unit that fails the
    /// condition is an error naming its state; the deadline passing is an
    /// error naming the unit and the state it was left in. Driven by the
    /// units' PropertiesChanged signals, not by polling.
    pub async fn wait_for(
        &self,
        units: &[String],
        condition: fn(&str) -> Verdict,
        wanted: &'static str,
        timeout: Duration,
    ) -> Result<()> {
        match self.watch(units, condition, timeout).await? {
            Watched::Done => Ok(()),
            Watched::Failed(unit, state) => Err(Error::WrongState { unit, wanted, state }),
            Watched::TimedOut(unit, state) => {
                Err(Error::WaitTimeout { unit, wanted, state, seconds: timeout.as_secs() })
            }
        }
    }

    /// Watches units' active states until each satisfies `condition`, one
    /// fails it, or `timeout` passes.
    async fn watch(&self, units: &[String], condition: fn(&str) -> Verdict, timeout: Duration) -> Result<Watched> {
        if units.is_empty() {
            return Ok(Watched::Done);
        }
        let deadline = Instant::now() + timeout;
        self.subscribe().await?;
        // Subscribed first, then the states read: a change between the two is not missed.
        let rule = unit_changes_rule().map_err(call("watching units"))?;
        let mut changes = self
            .bounded("watching units", zbus::MessageStream::for_match_rule(rule, self.connection(), Some(STATE_QUEUE)))
            .await?;
        let by_path: HashMap<String, &String> = units.iter().map(|u| (unit_path(u), u)).collect();
        let mut states: HashMap<&String, String> = HashMap::new();
        let mut pending: HashSet<&String> = units.iter().collect();
        // The stream is read while the states are asked for, so that it never fills up.
        let initial = {
            let ask = pin!(self.unit_states(units));
            let early = Mutex::new(Vec::new());
            let drain = pin!(async {
                while let Some(message) = changes.next().await {
                    if let Some(change) = message.ok().and_then(|m| state_change(&m)) {
                        early.lock().unwrap_or_else(|p| p.into_inner()).push(change);
                    }
                }
            });
            let asked = match select(ask, drain).await {
                Either::Left((asked, _)) => asked?,
                Either::Right(_) => return Err(Error::Lost("unit states".into())),
            };
            let early = early.into_inner().unwrap_or_else(|p| p.into_inner());
            (asked, early)
        };
        let (asked, early) = initial;
        // systemd sends in order: changes that came before the answer are
        // older than it. They still count as a failure.
        for (path, state) in early {
            if let Some(unit) = by_path.get(&path)
                && condition(&state) == Verdict::Fail
            {
                return Ok(Watched::Failed((*unit).clone(), state));
            }
        }
        for state in asked {
            if let Some(unit) = units.iter().find(|u| **u == state.name) {
                states.insert(unit, state.active_state);
            }
        }
        loop {
            for unit in pending.clone() {
                let state = states.get(unit).map_or("unknown", String::as_str);
                match condition(state) {
                    Verdict::Done => {
                        pending.remove(unit);
                    }
                    Verdict::Fail => return Ok(Watched::Failed(unit.clone(), state.to_string())),
                    Verdict::Wait => {}
                }
            }
            let Some(&first) = pending.iter().next() else { return Ok(Watched::Done) };
            let next = until(deadline, changes.next()).await?;
            match next {
                None => {
                    let state = states.get(first).cloned().unwrap_or_else(|| "unknown".into());
                    return Ok(Watched::TimedOut(first.clone(), state));
                }
                Some(None) => return Err(Error::Lost(format!("the state of {first}"))),
                Some(Some(message)) => {
                    if let Some((path, state)) = message.ok().and_then(|m| state_change(&m))
                        && let Some(unit) = by_path.get(&path)
                    {
                        states.insert(unit, state);
                    }
                }
            }
        }
    }

    /// Creates and starts a transient unit. Waits up to `wait` for its start
    /// job: [`JobOutcome::Done`] when it finished well (for a Type=notify
    /// service: readiness came), [`JobOutcome::Pending`] when `wait` passed
    /// first (the unit goes on starting). A failed job is an error.
    pub async fn start_transient(
        &self,
        unit: &str,
        properties: Vec<(String, zbus::OwnedVariant)>,
        wait: Duration,
    ) -> Result<JobOutcome> {
        let mut removed = self.watch_jobs().await?;
        let finished = Mutex::new(HashMap::new());
        let job = {
            let queue = pin!(self.bounded(
                format!("starting {unit}"),
                self.manager.start_transient_unit(unit.to_string(), "fail".to_string(), properties, Vec::new()),
            ));
            match select(queue, pin!(drain_jobs(&mut removed, &finished))).await {
                Either::Left((job, _)) => job?,
                Either::Right(_) => return Err(Error::Lost(format!("the start job of {unit}"))),
            }
        };
        let mut finished = finished.into_inner().unwrap_or_else(|p| p.into_inner());
        let deadline = Instant::now() + wait;
        let result = loop {
            if let Some(result) = finished.remove(&job) {
                break result;
            }
            match until(deadline, removed.next()).await? {
                None => return Ok(JobOutcome::Pending),
                Some(None) => return Err(Error::Lost(format!("the start job of {unit}"))),
                Some(Some(signal)) => {
                    if let Ok(args) = signal.args() {
                        finished.insert(args.job.clone(), args.result.clone());
                    }
                }
            }
        };
        if result == "done" {
            Ok(JobOutcome::Done)
        } else {
            Err(Error::JobFailed { unit: unit.to_string(), verb: "start", result })
        }
    }

    /// Runs a transient service to its end and says how its main process
    /// ended, as a shell would: its exit status, or 128 + the signal that
    /// killed it. The unit is referenced (AddRef) so that it stays loaded,
    /// with its result, until it has been read here.
    pub async fn run_transient(&self, unit: &str, mut properties: Vec<(String, zbus::OwnedVariant)>) -> Result<i32> {
        properties.push(("AddRef".into(), zbus::OwnedVariant::from(true)));
        if self.start_transient(unit, properties, Deadlines::get().job).await? == JobOutcome::Pending {
            return Err(Error::JobTimeout {
                unit: unit.to_string(),
                verb: "start",
                seconds: Deadlines::get().job.as_secs(),
            });
        }
        let ended = self.wait_until_ended(unit).await;
        let released = self.bounded(format!("releasing {unit}"), self.manager.unref_unit(unit.to_string())).await;
        let (code, status) = ended?;
        released?;
        // ExecMainCode is a CLD_* code: CLD_EXITED is 1, then KILLED, DUMPED.
        Ok(if code == 1 { status } else { 128 + status })
    }

    /// Waits until a unit is inactive or failed; its main process's
    /// (ExecMainCode, ExecMainStatus) then. A command in a machine runs as
    /// long as its user wants, so this wait has no deadline of its own: it
    /// ends with the unit, which the caller's disconnecting stops.
    async fn wait_until_ended(&self, unit: &str) -> Result<(i32, i32)> {
        let connection = self.connection();
        let path = self.bounded(format!("finding {unit}"), self.manager.get_unit(unit.to_string())).await?;
        let watched = self
            .bounded(
                format!("watching {unit}"),
                zbus::Proxy::new(connection, "org.freedesktop.systemd1", path.clone(), "org.freedesktop.systemd1.Unit"),
            )
            .await?;
        // The stream gives the state at once, then each change.
        let mut states = watched.receive_property_changed::<String>("ActiveState").await;
        loop {
            let Some(change) = states.next().await else {
                return Err(Error::Lost(format!("the end of {unit}")));
            };
            let state = self.bounded(format!("reading the state of {unit}"), change.get()).await?;
            if state == "inactive" || state == "failed" {
                break;
            }
        }
        let service = self
            .bounded(
                format!("reading {unit}"),
                zbus::proxy::Builder::<zbus::Proxy<'_>>::new(connection)
                    .destination("org.freedesktop.systemd1")
                    .path(path)
                    .interface("org.freedesktop.systemd1.Service")
                    .cache_properties(zbus::proxy::CacheProperties::No)
                    .build(),
            )
            .await?;
        let code = self.bounded(format!("reading {unit}"), service.get_property::<i32>("ExecMainCode")).await?;
        let status = self.bounded(format!("reading {unit}"), service.get_property::<i32>("ExecMainStatus")).await?;
        Ok((code, status))
    }

    /// Changes properties of a loaded unit, live (`runtime`: not persisted).
    pub async fn set_properties(
        &self,
        unit: &str,
        runtime: bool,
        properties: Vec<(String, zbus::OwnedVariant)>,
    ) -> Result<()> {
        self.bounded(
            format!("setting properties of {unit}"),
            self.manager.set_unit_properties(unit.to_string(), runtime, properties),
        )
        .await
    }

    /// Sends a signal to a unit's main process (`main`) or all its processes (`all`).
    pub async fn kill(&self, unit: &str, whom: &str, signal: i32) -> Result<()> {
        self.bounded(format!("signalling {unit}"), self.manager.kill_unit(unit.to_string(), whom.to_string(), signal))
            .await
    }

    /// A property of a loaded unit, read through its object on the bus.
    pub async fn unit_property(&self, unit: &str, interface: &str, property: &str) -> Result<zbus::OwnedVariant> {
        let path = self.bounded(format!("finding {unit}"), self.manager.get_unit(unit.to_string())).await?;
        let proxy = self
            .bounded(
                format!("reading {unit}"),
                zbus::Proxy::new(self.connection(), "org.freedesktop.systemd1", path, interface.to_string()),
            )
            .await?;
        self.bounded(format!("reading {property} of {unit}"), proxy.get_property::<zbus::OwnedVariant>(property)).await
    }

    /// The stream of JobRemoved signals.
    async fn watch_jobs(&self) -> Result<zbus_systemd::systemd1::JobRemovedStream> {
        self.subscribe().await?;
        self.bounded("watching jobs", self.manager.receive_job_removed()).await
    }

    /// Asks systemd for its signals (it sends JobRemoved and units'
    /// PropertiesChanged only once some client has), once per connection:
    /// it says AlreadySubscribed after that.
    async fn subscribe(&self) -> Result<()> {
        match bounded_raw(self.call_timeout, self.manager.subscribe()).await {
            Some(Err(zbus::Error::MethodError(name, ..)))
                if name.as_str() == "org.freedesktop.systemd1.AlreadySubscribed" => {}
            Some(other) => other.map_err(call("subscribing to its signals"))?,
            None => {
                return Err(Error::NoAnswer {
                    what: "subscribing to its signals".into(),
                    seconds: self.call_timeout.as_secs(),
                });
            }
        }
        Ok(())
    }

    /// Queues one job per unit and, when `wait`, waits for all of them and
    /// fails with the first that did not end in `done`.
    ///
    /// JobRemoved is subscribed to before the first job is queued (or a
    /// quick job's end is missed) and read *while* the jobs are queued:
    /// left unread, its queue fills once 64 jobs have ended, zbus stops
    /// reading the socket, the reply to the next StartUnit never arrives,
    /// and wharfd waits forever. That was issue 21's hang: a 100-portable
    /// fleet wedged after about 50 starts, whenever systemd ran the jobs
    /// faster than wharfd queued them.
    async fn jobs(&self, verb: JobVerb, units: &[String], wait: bool) -> Result<()> {
        if units.is_empty() {
            return Ok(());
        }
        if let Some(JobObserver(observe)) = &self.observer {
            observe(units);
        }
        if !wait {
            for unit in units {
                self.queue_job(verb, unit).await?;
            }
            return Ok(());
        }
        let mut removed = self.watch_jobs().await?;
        let finished = Mutex::new(HashMap::new());
        let pending = {
            let queue = pin!(async {
                let mut pending: Vec<(OwnedObjectPath, &String)> = Vec::new();
                for unit in units {
                    pending.push((self.queue_job(verb, unit).await?, unit));
                }
                Ok::<_, Error>(pending)
            });
            match select(queue, pin!(drain_jobs(&mut removed, &finished))).await {
                Either::Left((pending, _)) => pending?,
                Either::Right(_) => return Err(Error::Lost(format!("{} jobs", verb.as_str()))),
            }
        };
        let mut finished = finished.into_inner().unwrap_or_else(|p| p.into_inner());
        let timeout = Deadlines::get().job;
        let deadline = Instant::now() + timeout;
        let mut failure = None;
        for (job, unit) in pending {
            let result = loop {
                if let Some(result) = finished.remove(&job) {
                    break result;
                }
                match until(deadline, removed.next()).await? {
                    None => {
                        return Err(Error::JobTimeout {
                            unit: unit.clone(),
                            verb: verb.as_str(),
                            seconds: timeout.as_secs(),
                        });
                    }
                    Some(None) => return Err(Error::Lost(format!("the {} job of {unit}", verb.as_str()))),
                    Some(Some(signal)) => {
                        if let Ok(args) = signal.args() {
                            finished.insert(args.job.clone(), args.result.clone());
                        }
                    }
                }
            };
            if result != "done" && failure.is_none() {
                failure = Some(Error::JobFailed { unit: unit.clone(), verb: verb.as_str(), result });
            }
        }
        failure.map_or(Ok(()), Err)
    }

    async fn queue_job(&self, verb: JobVerb, unit: &str) -> Result<OwnedObjectPath> {
        let (name, mode) = (unit.to_string(), "replace".to_string());
        let what = format!("{} {unit}", verb.as_str());
        match verb {
            JobVerb::Start => self.bounded(what, self.manager.start_unit(name, mode)).await,
            JobVerb::Stop => self.bounded(what, self.manager.stop_unit(name, mode)).await,
            JobVerb::Restart => self.bounded(what, self.manager.restart_unit(name, mode)).await,
        }
    }
}

/// How a [`Systemd::watch`] ended.
enum Watched {
    Done,
    /// A unit failed the condition, in this state.
    Failed(String, String),
    /// The deadline passed with this unit still not there, in this state.
    TimedOut(String, String),
}

/// Reads JobRemoved signals into `finished` (job path to result) until the
/// stream ends; run beside the calls that queue jobs.
async fn drain_jobs(
    removed: &mut zbus_systemd::systemd1::JobRemovedStream,
    finished: &Mutex<HashMap<OwnedObjectPath, String>>,
) {
    while let Some(signal) = removed.next().await {
        if let Ok(args) = signal.args() {
            finished.lock().unwrap_or_else(|p| p.into_inner()).insert(args.job.clone(), args.result.clone());
        }
    }
}

/// The unit path and new ActiveState a PropertiesChanged signal carries, if any.
fn state_change(message: &zbus::Message) -> Option<(String, String)> {
    let path = message.header().path()?.to_string();
    let changed = zbus::fdo::PropertiesChanged::from_message(message.clone())?;
    let args = changed.args().ok()?;
    let state = args.changed_properties().get("ActiveState")?;
    let state: String = state.try_clone().ok()?.try_into().ok()?;
    Some((path, state))
}

/// `call`, or `None` once `timeout` has passed.
async fn bounded_raw<T>(timeout: Duration, call: impl Future<Output = T>) -> Option<T> {
    match zruntime::SharedRuntime::current() {
        Ok(runtime) => runtime.timeout(timeout, call).await.ok(),
        // No runtime to time with: the connection's own method timeout still bounds the call.
        Err(_) => Some(call.await),
    }
}

/// A call to systemd under a deadline; its passing (or the connection's
/// method timeout) is [`Error::NoAnswer`].
async fn bounded<T>(
    timeout: Duration,
    what: impl Into<String>,
    call: impl Future<Output = zbus::Result<T>>,
) -> Result<T> {
    let what = what.into();
    match bounded_raw(timeout, call).await {
        Some(Ok(value)) => Ok(value),
        Some(Err(e)) if is_timeout(&e) => Err(Error::NoAnswer { what, seconds: timeout.as_secs() }),
        Some(Err(source)) => Err(Error::Call { what, source }),
        None => Err(Error::NoAnswer { what, seconds: timeout.as_secs() }),
    }
}

/// PID 1's PropertiesChanged signals of units' Unit interface (their
/// states), as a match rule.
pub fn unit_changes_rule() -> zbus::Result<zbus::MatchRule<'static>> {
    zbus::MatchRule::builder()
        .msg_type(zbus::message::Type::Signal)
        .sender("org.freedesktop.systemd1")
        .interface("org.freedesktop.DBus.Properties")
        .member("PropertiesChanged")
        .path_namespace("/org/freedesktop/systemd1/unit")
        .arg(0, "org.freedesktop.systemd1.Unit")
        .build()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn versions_are_their_leading_number() {
        assert_eq!(parse_version("252.39-1~deb12u2"), 252);
        assert_eq!(parse_version("257.13-1~deb13u1"), 257);
        assert_eq!(parse_version("259"), 259);
        assert_eq!(parse_version("unknown"), 0);
    }

    #[test]
    fn unit_paths_escape_like_systemd() {
        assert_eq!(unit_path("foobar.service"), "/org/freedesktop/systemd1/unit/foobar_2eservice");
        assert_eq!(unit_path("st001-x@1.service"), "/org/freedesktop/systemd1/unit/st001_2dx_401_2eservice");
        assert_eq!(unit_path("1a.service"), "/org/freedesktop/systemd1/unit/_31a_2eservice");
    }

    #[test]
    fn conditions() {
        assert_eq!(condition::started("activating"), Verdict::Wait);
        assert_eq!(condition::started("inactive"), Verdict::Done);
        assert_eq!(condition::started("failed"), Verdict::Fail);
        assert_eq!(condition::stopped("deactivating"), Verdict::Wait);
        assert_eq!(condition::stopped("failed"), Verdict::Done);
        assert_eq!(condition::not_failed("active"), Verdict::Wait);
    }
}
