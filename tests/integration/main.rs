//! wharf's integration tests: everything that touches systemd, D-Bus,
//! mounts, loop devices or cgroups, run for real in one shared testbed
//! (tests/testbed) booted on first use and powered off at the end.
//!
//! Run as root: `cargo test --release --test integration`. The testbed is
//! never skipped: if it cannot boot, every test that needs it fails and says why.

#[path = "../testbed/mod.rs"]
mod testbed;

mod ansible;
mod audit;
mod confinement;
mod crash;
mod deadline;
mod fleet;
mod foundation;
mod https;
mod images;
mod interrupt;
mod machine;
mod many;
mod network;
mod oci;
mod packaging;
mod polkit;
mod portable;
mod portablectl;
mod pull;
mod schema;
mod security;
mod store;

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::{Arc, OnceLock, RwLock};

use libtest_mimic::{Arguments, Failed, Trial};
use testbed::{BootOptions, Release, Testbed};

/// The testbed all tests share, booted by the first test that asks for it.
#[derive(Debug, Default)]
pub struct Shared {
    testbed: OnceLock<Result<Testbed, String>>,
    /// Tests share it for reading; a test that restarts or reconfigures
    /// something all tests use takes it for writing and runs alone.
    exclusive: RwLock<()>,
}

impl Shared {
    pub fn testbed(&self) -> Result<&Testbed, Failed> {
        let booted = self.testbed.get_or_init(|| {
            let options = BootOptions {
                release: Release::from_env().map_err(|e| e.to_string())?,
                bin_dir: bin_dir(),
                label: "it".to_string(),
            };
            testbed::note(&format!("booting a {} testbed", options.release.name()));
            Testbed::boot(&options).map_err(|e| e.to_string())
        });
        booted.as_ref().map_err(|e| Failed::from(e.as_str()))
    }

    fn shut_down(self) -> Result<(), String> {
        match self.testbed.into_inner() {
            Some(Ok(testbed)) => testbed.poweroff().map_err(|e| e.to_string()),
            _ => Ok(()),
        }
    }
}

/// Where cargo put the binaries under test.
pub fn bin_dir() -> PathBuf {
    Path::new(env!("CARGO_BIN_EXE_wharfd")).parent().expect("binary has a directory").to_path_buf()
}

/// A test that runs against the shared testbed; panics are failures.
pub fn trial(shared: &Arc<Shared>, name: &str, test: fn(&Testbed)) -> Trial {
    let shared = shared.clone();
    let label = name.to_string();
    Trial::test(name, move || {
        let testbed = shared.testbed()?;
        let _shared = shared.exclusive.read().unwrap_or_else(|poisoned| poisoned.into_inner());
        timed(&label, || test(testbed));
        Ok(())
    })
}

/// Runs `test` and says how long it took, so that what makes the suite
/// long (CI has a time budget) can be seen in any run's log.
fn timed(name: &str, test: impl FnOnce()) {
    let start = std::time::Instant::now();
    test();
    testbed::note(&format!("{name} took {:.1} s", start.elapsed().as_secs_f64()));
}

/// A test that must not run alongside others (it restarts or reconfigures
/// something all tests use).
pub fn exclusive_trial(shared: &Arc<Shared>, name: &str, test: fn(&Testbed)) -> Trial {
    let shared = shared.clone();
    let label = name.to_string();
    Trial::test(name, move || {
        let testbed = shared.testbed()?;
        let _alone = shared.exclusive.write().unwrap_or_else(|poisoned| poisoned.into_inner());
        timed(&label, || test(testbed));
        Ok(())
    })
}

/// A trial that loads the whole machine (many machines booting at once,
/// the SIGKILL loop): it runs alone in its suite, and never at the same
/// time as another suite's heavy trial (contrib/test runs the releases side
/// by side), so that readiness deadlines stay a test of wharf, not of two
/// cores shared by two such trials.
pub fn heavy_trial(shared: &Arc<Shared>, name: &str, test: fn(&Testbed)) -> Trial {
    let shared = shared.clone();
    let label = name.to_string();
    Trial::test(name, move || {
        let testbed = shared.testbed()?;
        let _alone = shared.exclusive.write().unwrap_or_else(|poisoned| poisoned.into_inner());
        let _host_wide = host_wide_lock().map_err(|e| Failed::from(format!("{label}: {e}")))?;
        timed(&label, || test(testbed));
        Ok(())
    })
}

/// An exclusive lock on a file all suites on this host share; released
/// when the file is closed (also when the process dies).
fn host_wide_lock() -> Result<std::fs::File, String> {
    let path = Path::new(testbed::WORK_BASE).join("heavy-trials.lock");
    std::fs::create_dir_all(testbed::WORK_BASE).map_err(|e| format!("cannot create {}: {e}", testbed::WORK_BASE))?;
    let file = std::fs::File::create(&path).map_err(|e| format!("cannot open {}: {e}", path.display()))?;
    file.lock().map_err(|e| format!("cannot lock {}: {e}", path.display()))?;
    Ok(file)
}

fn main() -> ExitCode {
    let args = Arguments::from_args();
    let shared = Arc::new(Shared::default());
    let mut trials = Vec::new();
    trials.extend(foundation::trials(&shared));
    trials.extend(images::trials(&shared));
    trials.extend(packaging::trials(&shared));
    trials.extend(portable::trials(&shared));
    trials.extend(portablectl::trials(&shared));
    trials.extend(crash::trials(&shared));
    trials.extend(store::trials(&shared));
    trials.extend(pull::trials(&shared));
    trials.extend(https::trials(&shared));
    trials.extend(oci::trials(&shared));
    trials.extend(interrupt::trials(&shared));
    trials.extend(machine::trials(&shared));
    trials.extend(network::trials(&shared));
    trials.extend(confinement::trials(&shared));
    trials.extend(fleet::trials(&shared));
    trials.extend(many::trials(&shared));
    trials.extend(ansible::trials(&shared));
    trials.extend(audit::trials(&shared));
    trials.extend(deadline::trials(&shared));
    trials.extend(security::trials(&shared));
    trials.extend(schema::trials(&shared));
    trials.extend(polkit::trials(&shared));

    let conclusion = libtest_mimic::run(&args, trials);
    let shared = Arc::into_inner(shared).expect("all tests are done");
    let mut failed = conclusion.has_failed();
    if let Err(e) = shared.shut_down() {
        eprintln!("{e}");
        failed = true;
    }
    if let Err(leftovers) = testbed_left_nothing_behind() {
        eprintln!("the testbed left traces behind: {leftovers}");
        failed = true;
    }
    if failed { ExitCode::FAILURE } else { ExitCode::SUCCESS }
}

/// After the suite: no container process and no mount under the work or
/// cache directories.
fn testbed_left_nothing_behind() -> Result<(), String> {
    let mut problems = Vec::new();
    for dir in [PathBuf::from(testbed::WORK_BASE), testbed::cache::cache_dir()] {
        let mounts = testbed::cleanup::mounts_below(&dir);
        if !mounts.is_empty() {
            problems.push(format!("mounts under {}: {mounts:?}", dir.display()));
        }
        let loops = testbed::cleanup::loops_below(&dir);
        if !loops.is_empty() {
            problems.push(format!("loop devices backed by files under {}: {loops:?}", dir.display()));
        }
    }
    // Each testbed's cgroups are named after it, beside each other.
    let own = format!("-{}-", std::process::id());
    for dir in testbed::cleanup::testbed_cgroups("x").iter().filter_map(|d| d.parent()) {
        let left: Vec<String> = std::fs::read_dir(dir)
            .map(|entries| entries.flatten().map(|e| e.file_name().to_string_lossy().into_owned()).collect())
            .unwrap_or_default();
        let left: Vec<&String> = left.iter().filter(|n| n.starts_with("wharf-tb-") && n.contains(&own)).collect();
        if !left.is_empty() {
            problems.push(format!("cgroups left in {}: {left:?}", dir.display()));
        }
    }
    let nspawn = std::process::Command::new("pgrep").args(["-af", "systemd-nspawn.*wharf-tb-"]).output();
    if let Ok(out) = nspawn {
        let mine: Vec<String> = String::from_utf8_lossy(&out.stdout)
            .lines()
            .filter(|line| line.contains(&format!("-{}-", std::process::id())))
            .map(str::to_string)
            .collect();
        if !mine.is_empty() {
            problems.push(format!("systemd-nspawn still running: {mine:?}"));
        }
    }
    if problems.is_empty() { Ok(()) } else { Err(problems.join("; ")) }
}
