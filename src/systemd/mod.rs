//! The calls wharf makes to systemd's manager (org.freedesktop.systemd1)
//! over D-Bus: reload, enable/disable, start/stop/restart with waiting for
//! the job, unit states, and transient units.

pub mod manager;

use std::collections::HashMap;
use std::time::Duration;

use futures_util::StreamExt;
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
    #[error("{unit}: {verb} job {result}")]
    JobFailed { unit: String, verb: &'static str, result: String },
    #[error("{unit}: {verb} job did not finish within {seconds} s")]
    JobTimeout { unit: String, verb: &'static str, seconds: u64 },
    #[error("{unit} failed right after it was started (see journalctl -u {unit})")]
    FailedAfterStart { unit: String },
}

pub type Result<T> = std::result::Result<T, Error>;

fn call(what: impl Into<String>) -> impl FnOnce(zbus::Error) -> Error {
    let what = what.into();
    move |source| Error::Call { what, source }
}

/// How long wharf waits for a start/stop job before calling it failed.
pub const JOB_TIMEOUT: Duration = Duration::from_secs(90);

/// After a start, units are watched this many times this far apart for an
/// early failure.
const SETTLE_CHECKS: u32 = 4;
const SETTLE_INTERVAL: Duration = Duration::from_millis(100);

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
pub fn text(text: &str) -> zbus::OwnedVariant {
    zbus::OwnedVariant::try_from(zbus::Variant::from(text)).expect("a string holds no descriptor")
}

/// `ExecStart` as systemd's manager takes it: a(sasb), one command.
pub fn exec_start(argv: &[String]) -> zbus::OwnedVariant {
    let entry = (argv[0].clone(), argv.to_vec(), false);
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

impl Systemd {
    pub async fn new(connection: &Connection) -> Result<Systemd> {
        let manager = ManagerProxy::new(connection).await.map_err(call("connecting to the manager"))?;
        Ok(Systemd { manager })
    }

    /// The manager's version number (252 for "252.39-1~deb12u2").
    pub async fn version(&self) -> Result<u32> {
        let version = self.manager.version().await.map_err(call("reading its version"))?;
        Ok(parse_version(&version))
    }

    /// `daemon-reload`; returns once systemd has reloaded.
    pub async fn reload(&self) -> Result<()> {
        self.manager.reload().await.map_err(call("reload"))
    }

    pub async fn enable(&self, units: &[String], runtime: bool) -> Result<Vec<InstallChange>> {
        if units.is_empty() {
            return Ok(Vec::new());
        }
        let (_, changes) = self
            .manager
            .enable_unit_files(units.to_vec(), runtime, false)
            .await
            .map_err(call(format!("enabling {}", units.join(" "))))?;
        Ok(changes)
    }

    pub async fn disable(&self, units: &[String], runtime: bool) -> Result<Vec<InstallChange>> {
        if units.is_empty() {
            return Ok(Vec::new());
        }
        self.manager
            .disable_unit_files(units.to_vec(), runtime)
            .await
            .map_err(call(format!("disabling {}", units.join(" "))))
    }

    /// Unit file states (`enabled`, `static`, ...) of several units in one
    /// call, by unit name; units without a file are left out.
    pub async fn unit_file_states(&self, units: &[String]) -> Result<HashMap<String, String>> {
        if units.is_empty() {
            return Ok(HashMap::new());
        }
        let files = self
            .manager
            .list_unit_files_by_patterns(Vec::new(), units.to_vec())
            .await
            .map_err(call("listing unit files"))?;
        Ok(files
            .into_iter()
            .filter_map(|(path, state)| {
                let name = path.rsplit('/').next()?.to_string();
                Some((name, state))
            })
            .collect())
    }

    /// Load and active states of several units in one call.
    pub async fn unit_states(&self, units: &[String]) -> Result<Vec<UnitState>> {
        if units.is_empty() {
            return Ok(Vec::new());
        }
        let listed = self.manager.list_units_by_names(units.to_vec()).await.map_err(call("listing units"))?;
        Ok(listed
            .into_iter()
            .map(|(name, _description, load_state, active_state, ..)| UnitState { name, load_state, active_state })
            .collect())
    }

    pub async fn start(&self, units: &[String], wait: bool) -> Result<()> {
        self.jobs(JobVerb::Start, units, wait).await?;
        if wait { self.settle(units).await } else { Ok(()) }
    }

    pub async fn stop(&self, units: &[String], wait: bool) -> Result<()> {
        self.jobs(JobVerb::Stop, units, wait).await
    }

    pub async fn restart(&self, units: &[String], wait: bool) -> Result<()> {
        self.jobs(JobVerb::Restart, units, wait).await?;
        if wait { self.settle(units).await } else { Ok(()) }
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
        match self.manager.subscribe().await {
            Err(zbus::Error::MethodError(name, ..))
                if name.as_str() == "org.freedesktop.systemd1.AlreadySubscribed" => {}
            other => other.map_err(call("subscribing to jobs"))?,
        }
        let mut removed = self.manager.receive_job_removed().await.map_err(call("watching jobs"))?;
        let job = self
            .manager
            .start_transient_unit(unit.to_string(), "fail".to_string(), properties, Vec::new())
            .await
            .map_err(call(format!("starting {unit}")))?;
        let runtime = zruntime::SharedRuntime::current()
            .map_err(|e| Error::Call { what: "timer".into(), source: zbus::Error::InputOutput(e.into()) })?;
        let finished = runtime
            .timeout(wait, async {
                while let Some(signal) = removed.next().await {
                    let Ok(args) = signal.args() else { continue };
                    if args.job == job {
                        return Some(args.result);
                    }
                }
                None
            })
            .await;
        match finished {
            Ok(Some(result)) if result == "done" => Ok(JobOutcome::Done),
            Ok(Some(result)) => Err(Error::JobFailed { unit: unit.to_string(), verb: "start", result }),
            Ok(None) => Err(Error::JobFailed { unit: unit.to_string(), verb: "start", result: "lost".into() }),
            Err(_) => Ok(JobOutcome::Pending),
        }
    }

    /// Runs a transient service to its end and says how its main process
    /// ended, as a shell would: its exit status, or 128 + the signal that
    /// killed it. The unit is referenced (AddRef) so that it stays loaded,
    /// with its result, until it has been read here.
    pub async fn run_transient(&self, unit: &str, mut properties: Vec<(String, zbus::OwnedVariant)>) -> Result<i32> {
        properties.push(("AddRef".into(), zbus::OwnedVariant::from(true)));
        self.start_transient(unit, properties, JOB_TIMEOUT).await?;
        let ended = self.wait_until_ended(unit).await;
        let released = self.manager.unref_unit(unit.to_string()).await.map_err(call(format!("releasing {unit}")));
        let (code, status) = ended?;
        released?;
        // ExecMainCode is a CLD_* code: CLD_EXITED is 1, then KILLED, DUMPED.
        Ok(if code == 1 { status } else { 128 + status })
    }

    /// Waits until a unit is inactive or failed; its main process's
    /// (ExecMainCode, ExecMainStatus) then.
    async fn wait_until_ended(&self, unit: &str) -> Result<(i32, i32)> {
        let connection = self.manager.inner().connection();
        let path = self.manager.get_unit(unit.to_string()).await.map_err(call(format!("finding {unit}")))?;
        let watched =
            zbus::Proxy::new(connection, "org.freedesktop.systemd1", path.clone(), "org.freedesktop.systemd1.Unit")
                .await
                .map_err(call(format!("watching {unit}")))?;
        // The stream gives the state at once, then each change.
        let mut states = watched.receive_property_changed::<String>("ActiveState").await;
        loop {
            let Some(change) = states.next().await else {
                return Err(Error::JobFailed { unit: unit.to_string(), verb: "watch", result: "lost".into() });
            };
            let state = change.get().await.map_err(call(format!("reading the state of {unit}")))?;
            if state == "inactive" || state == "failed" {
                break;
            }
        }
        let service = zbus::proxy::Builder::<zbus::Proxy<'_>>::new(connection)
            .destination("org.freedesktop.systemd1")
            .path(path)
            .interface("org.freedesktop.systemd1.Service")
            .cache_properties(zbus::proxy::CacheProperties::No)
            .build()
            .await
            .map_err(call(format!("reading {unit}")))?;
        let code = service.get_property::<i32>("ExecMainCode").await.map_err(call(format!("reading {unit}")))?;
        let status = service.get_property::<i32>("ExecMainStatus").await.map_err(call(format!("reading {unit}")))?;
        Ok((code, status))
    }

    /// Changes properties of a loaded unit, live (`runtime`: not persisted).
    pub async fn set_properties(
        &self,
        unit: &str,
        runtime: bool,
        properties: Vec<(String, zbus::OwnedVariant)>,
    ) -> Result<()> {
        self.manager
            .set_unit_properties(unit.to_string(), runtime, properties)
            .await
            .map_err(call(format!("setting properties of {unit}")))
    }

    /// Sends a signal to a unit's main process (`main`) or all its processes (`all`).
    pub async fn kill(&self, unit: &str, whom: &str, signal: i32) -> Result<()> {
        self.manager
            .kill_unit(unit.to_string(), whom.to_string(), signal)
            .await
            .map_err(call(format!("signalling {unit}")))
    }

    /// A property of a loaded unit, read through its object on the bus.
    pub async fn unit_property(&self, unit: &str, interface: &str, property: &str) -> Result<zbus::OwnedVariant> {
        let path = self.manager.get_unit(unit.to_string()).await.map_err(call(format!("finding {unit}")))?;
        let proxy = zbus::Proxy::new(
            self.manager.inner().connection(),
            "org.freedesktop.systemd1",
            path,
            interface.to_string(),
        )
        .await
        .map_err(call(format!("reading {unit}")))?;
        proxy.get_property::<zbus::OwnedVariant>(property).await.map_err(call(format!("reading {property} of {unit}")))
    }

    /// A start job of a simple service is done once systemd has forked, so
    /// a service whose binary is missing or that dies at once still starts
    /// "successfully". Watch the units for a moment and call any that
    /// failed a failure. (A oneshot that finished is inactive, not failed.)
    async fn settle(&self, units: &[String]) -> Result<()> {
        let runtime = zruntime::SharedRuntime::current()
            .map_err(|e| Error::Call { what: "timer".into(), source: zbus::Error::InputOutput(e.into()) })?;
        for _ in 0..SETTLE_CHECKS {
            if let Some(failed) = self.unit_states(units).await?.into_iter().find(|s| s.active_state == "failed") {
                return Err(Error::FailedAfterStart { unit: failed.name });
            }
            runtime.sleep(SETTLE_INTERVAL).await;
        }
        Ok(())
    }

    /// Queues one job per unit and, when `wait`, waits for all of them and
    /// fails with the first that did not end in `done`.
    async fn jobs(&self, verb: JobVerb, units: &[String], wait: bool) -> Result<()> {
        if units.is_empty() {
            return Ok(());
        }
        // Subscribe to JobRemoved before queueing, or a quick job's signal is missed.
        let mut removed = if wait {
            match self.manager.subscribe().await {
                // One subscription per connection; the daemon's stays for its life.
                Err(zbus::Error::MethodError(name, ..))
                    if name.as_str() == "org.freedesktop.systemd1.AlreadySubscribed" => {}
                other => other.map_err(call("subscribing to jobs"))?,
            }
            Some(self.manager.receive_job_removed().await.map_err(call("watching jobs"))?)
        } else {
            None
        };
        let mut pending: HashMap<OwnedObjectPath, String> = HashMap::new();
        for unit in units {
            let name = unit.clone();
            let mode = "replace".to_string();
            let job = match verb {
                JobVerb::Start => self.manager.start_unit(name, mode).await,
                JobVerb::Stop => self.manager.stop_unit(name, mode).await,
                JobVerb::Restart => self.manager.restart_unit(name, mode).await,
            }
            .map_err(call(format!("{} {unit}", verb.as_str())))?;
            pending.insert(job, unit.clone());
        }
        let Some(removed) = removed.as_mut() else {
            return Ok(());
        };
        let runtime = zruntime::SharedRuntime::current()
            .map_err(|e| Error::Call { what: "timer".into(), source: zbus::Error::InputOutput(e.into()) })?;
        let mut failure = None;
        let waited = runtime
            .timeout(JOB_TIMEOUT, async {
                while !pending.is_empty() {
                    let Some(signal) = removed.next().await else { break };
                    let Ok(args) = signal.args() else { continue };
                    if let Some(unit) = pending.remove(&args.job)
                        && args.result != "done"
                        && failure.is_none()
                    {
                        failure = Some(Error::JobFailed { unit, verb: verb.as_str(), result: args.result });
                    }
                }
            })
            .await;
        if waited.is_err() {
            let unit = pending.values().next().cloned().unwrap_or_default();
            return Err(Error::JobTimeout { unit, verb: verb.as_str(), seconds: JOB_TIMEOUT.as_secs() });
        }
        failure.map_or(Ok(()), Err)
    }
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
}
