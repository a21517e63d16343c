//! The calls to systemd's manager that the portable operations make, as a
//! narrow trait: [`Systemd`] is the real one over D-Bus, and tests give the
//! operations an in-memory fake that can fail any call, so that every
//! rollback path has a fast unit test.

use std::collections::HashMap;

use super::{Result, Systemd, UnitState};

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
}

/// An in-memory manager: units are running or not, every call is logged,
/// and a call can be made to fail.
#[cfg(test)]
pub mod fake {
    use std::collections::{BTreeSet, HashMap};
    use std::sync::Mutex;

    use super::super::{Error, Result, UnitState};

    #[derive(Debug, Default)]
    pub struct FakeManager {
        pub calls: Mutex<Vec<String>>,
        pub running: Mutex<BTreeSet<String>>,
        /// Calls that fail ("reload", "start", "stop", "restart"), each
        /// the given number of times (then they work again).
        pub failing: Mutex<HashMap<&'static str, u32>>,
    }

    impl FakeManager {
        pub fn fail(&self, call: &'static str, times: u32) {
            self.failing.lock().unwrap().insert(call, times);
        }

        pub fn calls(&self) -> Vec<String> {
            self.calls.lock().unwrap().clone()
        }

        pub fn running(&self) -> Vec<String> {
            self.running.lock().unwrap().iter().cloned().collect()
        }

        fn call(&self, verb: &'static str, units: &[String]) -> Result<()> {
            self.calls.lock().unwrap().push(if units.is_empty() {
                verb.to_string()
            } else {
                format!("{verb} {}", units.join(" "))
            });
            let mut failing = self.failing.lock().unwrap();
            match failing.get_mut(verb) {
                Some(left) if *left > 0 => {
                    *left -= 1;
                    // A call on no unit (reload) fails as the manager's.
                    let unit = units.first().cloned().unwrap_or_else(|| "systemd".into());
                    Err(match verb {
                        "start" => Error::FailedAfterStart { unit },
                        _ => Error::JobFailed { unit, verb, result: "failed".into() },
                    })
                }
                _ => Ok(()),
            }
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
            Ok(units.iter().map(|u| (u.clone(), "linked".to_string())).collect())
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
    }
}
