//! The calls to systemd's manager that the portable operations make, as a
//! narrow trait: [`Systemd`] is the real one over D-Bus, and tests give the
//! operations an in-memory fake that can fail any call, so that every
//! rollback path has a fast unit test.

use std::collections::HashMap;
use std::time::Duration;

use super::{Result, Systemd, UnitState, Verdict};
use crate::fleet::health::Health;

// The futures are only awaited where the implementation is known (the
// daemon passes `Systemd`, tests the fake), so no `Send` bound is needed.
#[allow(async_fn_in_trait)]
pub trait UnitManager {
    /// The manager as an undo step uses it: with the longer deadlines that
    /// let a rollback wait out a bus that has stopped answering for a while.
    type Undoing<'a>: UnitManager
    where
        Self: 'a;
    fn undoing(&self) -> Self::Undoing<'_>;
    async fn version(&self) -> Result<u32>;
    async fn reload(&self) -> Result<()>;
    async fn unit_file_states(&self, units: &[String]) -> Result<HashMap<String, String>>;
    async fn unit_states(&self, units: &[String]) -> Result<Vec<UnitState>>;
    async fn start(&self, units: &[String], wait: bool) -> Result<()>;
    async fn stop(&self, units: &[String], wait: bool) -> Result<()>;
    async fn restart(&self, units: &[String], wait: bool) -> Result<()>;
    /// A service's directories (see [`Systemd::service_directories`]).
    async fn service_directories(&self, unit: &str) -> Result<Vec<(&'static str, String)>>;
    /// Removes stopped units' directories (see [`Systemd::clean`]).
    async fn clean(&self, units: &[String]) -> Result<()>;
    /// Keeps units loaded (see [`Systemd::pin`]) until `unpin`.
    async fn pin(&self, units: &[String]) -> Result<()>;
    async fn unpin(&self, units: &[String]) -> Result<()>;
    /// Waits until every unit's active state satisfies `condition`, for at
    /// most `timeout` (see [`Systemd::wait_for`]).
    async fn wait_for(
        &self,
        units: &[String],
        condition: fn(&str) -> Verdict,
        wanted: &'static str,
        timeout: Duration,
    ) -> Result<()>;
    /// Runs a fleet entry's health command in the sandbox of a running
    /// service until it succeeds or its timeout passes (see
    /// `fleet::health`); the error says why it never did.
    async fn check_health(&self, unit: &str, health: &Health) -> std::result::Result<(), String>;
}

impl UnitManager for Systemd {
    type Undoing<'a> = Systemd;
    fn undoing(&self) -> Systemd {
        Systemd::undoing(self)
    }
    async fn version(&self) -> Result<u32> {
        Systemd::version(self).await
    }
    async fn reload(&self) -> Result<()> {
        Systemd::reload(self).await
    }
    async fn unit_file_states(&self, units: &[String]) -> Result<HashMap<String, String>> {
        Systemd::unit_file_states(self, units).await
    }
    async fn unit_states(&self, units: &[String]) -> Result<Vec<UnitState>> {
        Systemd::unit_states(self, units).await
    }
    async fn start(&self, units: &[String], wait: bool) -> Result<()> {
        Systemd::start(self, units, wait).await
    }
    async fn stop(&self, units: &[String], wait: bool) -> Result<()> {
        Systemd::stop(self, units, wait).await
    }
    async fn restart(&self, units: &[String], wait: bool) -> Result<()> {
        Systemd::restart(self, units, wait).await
    }
    async fn service_directories(&self, unit: &str) -> Result<Vec<(&'static str, String)>> {
        Systemd::service_directories(self, unit).await
    }
    async fn clean(&self, units: &[String]) -> Result<()> {
        Systemd::clean(self, units).await
    }
    async fn pin(&self, units: &[String]) -> Result<()> {
        Systemd::pin(self, units).await
    }
    async fn unpin(&self, units: &[String]) -> Result<()> {
        Systemd::unpin(self, units).await
    }
    async fn wait_for(
        &self,
        units: &[String],
        condition: fn(&str) -> Verdict,
        wanted: &'static str,
        timeout: Duration,
    ) -> Result<()> {
        Systemd::wait_for(self, units, condition, wanted, timeout).await
    }
    async fn check_health(&self, unit: &str, health: &Health) -> std::result::Result<(), String> {
        crate::fleet::health::check(self, crate::fleet::health::Target::Service(unit), health).await
    }
}

/// A borrowed manager is one too (an undo step borrows the fake).
impl<T: UnitManager> UnitManager for &T {
    type Undoing<'a>
        = T::Undoing<'a>
    where
        Self: 'a;
    fn undoing(&self) -> Self::Undoing<'_> {
        (**self).undoing()
    }
    async fn version(&self) -> Result<u32> {
        (**self).version().await
    }
    async fn reload(&self) -> Result<()> {
        (**self).reload().await
    }
    async fn unit_file_states(&self, units: &[String]) -> Result<HashMap<String, String>> {
        (**self).unit_file_states(units).await
    }
    async fn unit_states(&self, units: &[String]) -> Result<Vec<UnitState>> {
        (**self).unit_states(units).await
    }
    async fn start(&self, units: &[String], wait: bool) -> Result<()> {
        (**self).start(units, wait).await
    }
    async fn stop(&self, units: &[String], wait: bool) -> Result<()> {
        (**self).stop(units, wait).await
    }
    async fn restart(&self, units: &[String], wait: bool) -> Result<()> {
        (**self).restart(units, wait).await
    }
    async fn service_directories(&self, unit: &str) -> Result<Vec<(&'static str, String)>> {
        (**self).service_directories(unit).await
    }
    async fn clean(&self, units: &[String]) -> Result<()> {
        (**self).clean(units).await
    }
    async fn pin(&self, units: &[String]) -> Result<()> {
        (**self).pin(units).await
    }
    async fn unpin(&self, units: &[String]) -> Result<()> {
        (**self).unpin(units).await
    }
    async fn wait_for(
        &self,
        units: &[String],
        condition: fn(&str) -> Verdict,
        wanted: &'static str,
        timeout: Duration,
    ) -> Result<()> {
        (**self).wait_for(units, condition, wanted, timeout).await
    }
    async fn check_health(&self, unit: &str, health: &Health) -> std::result::Result<(), String> {
        (**self).check_health(unit, health).await
    }
}

/// An in-memory manager: units are running or not, every call is logged,
/// and a call can be made to fail.
#[cfg(test)]
pub mod fake {
    use std::collections::{BTreeSet, HashMap};
    use std::path::PathBuf;
    use std::sync::Mutex;
    use std::time::Duration;

    use super::super::{Error, Result, UnitState, Verdict};

    #[derive(Debug, Default)]
    pub struct FakeManager {
        pub calls: Mutex<Vec<String>>,
        pub running: Mutex<BTreeSet<String>>,
        /// Calls that fail ("reload", "start", "stop", "restart", "wait"),
        /// each the given number of times (then they work again).
        pub failing: Mutex<HashMap<&'static str, u32>>,
        /// Calls that time out instead, the given number of times.
        pub timing_out: Mutex<HashMap<&'static str, u32>>,
        /// The host root whose enablement links make a unit "enabled", as
        /// systemd reads them; without one, no unit is enabled.
        pub root: Option<PathBuf>,
        /// A journal directory to look into at each call: the calls made
        /// while it held a journal are kept in `journaled`.
        pub journal_dir: Mutex<Option<PathBuf>>,
        pub journaled: Mutex<Vec<String>>,
        /// What `service_directories` answers, by unit.
        pub directories: Mutex<HashMap<String, Vec<(&'static str, String)>>>,
    }

    impl FakeManager {
        /// A manager of the host under `root`.
        pub fn of(root: &std::path::Path) -> FakeManager {
            FakeManager { root: Some(root.to_path_buf()), ..FakeManager::default() }
        }

        pub fn fail(&self, call: &'static str, times: u32) {
            self.failing.lock().unwrap().insert(call, times);
        }

        pub fn time_out(&self, call: &'static str, times: u32) {
            self.timing_out.lock().unwrap().insert(call, times);
        }

        /// Takes one from the count of `verb` in `counts`: whether it is to fail.
        fn take(counts: &Mutex<HashMap<&'static str, u32>>, verb: &str) -> bool {
            match counts.lock().unwrap().get_mut(verb) {
                Some(left) if *left > 0 => {
                    *left -= 1;
                    true
                }
                _ => false,
            }
        }

        pub fn calls(&self) -> Vec<String> {
            self.calls.lock().unwrap().clone()
        }

        pub fn running(&self) -> Vec<String> {
            self.running.lock().unwrap().iter().cloned().collect()
        }

        /// Keeps, from now on, which calls are made while `dir` holds a journal.
        pub fn watch_journal(&self, dir: &std::path::Path) {
            *self.journal_dir.lock().unwrap() = Some(dir.to_path_buf());
        }

        pub fn journaled(&self) -> Vec<String> {
            self.journaled.lock().unwrap().clone()
        }

        fn call(&self, verb: &'static str, units: &[String]) -> Result<()> {
            let call = if units.is_empty() { verb.to_string() } else { format!("{verb} {}", units.join(" ")) };
            if let Some(dir) = self.journal_dir.lock().unwrap().as_ref()
                && std::fs::read_dir(dir).is_ok_and(|mut entries| entries.next().is_some())
            {
                self.journaled.lock().unwrap().push(call.clone());
            }
            self.calls.lock().unwrap().push(call);
            // A call on no unit (reload) fails as the manager's.
            let unit = units.first().cloned().unwrap_or_else(|| "systemd".into());
            if Self::take(&self.timing_out, verb) {
                return Err(match verb {
                    "reload" => Error::NoAnswer { what: verb.into(), seconds: 25 },
                    _ => Error::JobTimeout { unit, verb, seconds: 90 },
                });
            }
            if Self::take(&self.failing, verb) {
                return Err(match verb {
                    "start" => Error::FailedAfterStart { unit },
                    _ => Error::JobFailed { unit, verb, result: "failed".into() },
                });
            }
            Ok(())
        }
    }

    impl super::UnitManager for FakeManager {
        // The fake has no deadlines to lengthen.
        type Undoing<'a> = &'a FakeManager;
        fn undoing(&self) -> &FakeManager {
            self
        }
        async fn version(&self) -> Result<u32> {
            Ok(257)
        }
        async fn reload(&self) -> Result<()> {
            self.call("reload", &[])
        }
        async fn unit_file_states(&self, units: &[String]) -> Result<HashMap<String, String>> {
            let dirs = self.root.as_ref().map(|root| {
                [crate::portable::plan::unit_dir(root, false), crate::portable::plan::unit_dir(root, true)]
            });
            Ok(units
                .iter()
                .map(|u| {
                    let enabled = dirs.as_ref().is_some_and(|d| !crate::portable::install::links_of(d, u).is_empty());
                    (u.clone(), if enabled { "enabled" } else { "linked" }.to_string())
                })
                .collect())
        }
        async fn unit_states(&self, units: &[String]) -> Result<Vec<UnitState>> {
            let running = self.running.lock().unwrap();
            Ok(units
                .iter()
                .map(|u| UnitState {
                    name: u.clone(),
                    load_state: "loaded".into(),
                    active_state: if running.contains(u) { "active" } else { "inactive" }.into(),
                })
                .collect())
        }
        async fn start(&self, units: &[String], _wait: bool) -> Result<()> {
            if units.is_empty() {
                return Ok(());
            }
            // A unit that fails after its start was started all the same.
            self.running.lock().unwrap().extend(units.iter().cloned());
            self.call("start", units)
        }
        async fn stop(&self, units: &[String], _wait: bool) -> Result<()> {
            if units.is_empty() {
                return Ok(());
            }
            self.call("stop", units)?;
            let mut running = self.running.lock().unwrap();
            units.iter().for_each(|u| {
                running.remove(u);
            });
            Ok(())
        }
        async fn restart(&self, units: &[String], _wait: bool) -> Result<()> {
            if units.is_empty() {
                return Ok(());
            }
            self.running.lock().unwrap().extend(units.iter().cloned());
            self.call("restart", units)
        }
        async fn service_directories(&self, unit: &str) -> Result<Vec<(&'static str, String)>> {
            Ok(self.directories.lock().unwrap().get(unit).cloned().unwrap_or_default())
        }
        async fn clean(&self, units: &[String]) -> Result<()> {
            if units.is_empty() {
                return Ok(());
            }
            self.call("clean", units)
        }
        async fn pin(&self, units: &[String]) -> Result<()> {
            if units.is_empty() {
                return Ok(());
            }
            self.call("pin", units)
        }
        async fn unpin(&self, units: &[String]) -> Result<()> {
            if units.is_empty() {
                return Ok(());
            }
            self.call("unpin", units)
        }
        /// A unit made to fail "wait" has failed; the others are as they run.
        async fn wait_for(
            &self,
            units: &[String],
            condition: fn(&str) -> Verdict,
            wanted: &'static str,
            timeout: Duration,
        ) -> Result<()> {
            if units.is_empty() {
                return Ok(());
            }
            self.calls.lock().unwrap().push(format!("wait {wanted} {}", units.join(" ")));
            let running = self.running.lock().unwrap();
            for unit in units {
                let state = if running.contains(unit) { "active" } else { "inactive" };
                if Self::take(&self.failing, "wait") {
                    return Err(Error::WrongState { unit: unit.clone(), wanted, state: "failed".into() });
                }
                match condition(state) {
                    Verdict::Done => {}
                    Verdict::Fail => return Err(Error::WrongState { unit: unit.clone(), wanted, state: state.into() }),
                    Verdict::Wait => {
                        return Err(Error::WaitTimeout {
                            unit: unit.clone(),
                            wanted,
                            state: state.into(),
                            seconds: timeout.as_secs(),
                        });
                    }
                }
            }
            Ok(())
        }
        /// A unit made to fail "health" is unhealthy; the others are healthy.
        async fn check_health(
            &self,
            unit: &str,
            health: &crate::fleet::health::Health,
        ) -> std::result::Result<(), String> {
            self.call("health", &[unit.to_string()]).map_err(|_| {
                format!("{unit}: its health command did not succeed within {} s (status 1)", health.timeout.as_secs())
            })
        }
    }
}
