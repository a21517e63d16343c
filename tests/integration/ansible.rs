//! The Ansible collection of contrib/ansible (wharf.wharf) for real: three
//! testbeds of their own ("host1".."host3"), driven by `ansible-playbook` on
//! this machine through the collection's nsenter connection, so no network
//! is involved. ansible-core comes from PyPI into a virtualenv cached beside
//! the testbed root, so only the first run pays for pip.
//!
//! The three hosts are booted by the first of these tests that runs and
//! serve them one at a time; each test puts back what it uses first. They
//! are powered off when the last test holding them is done.

use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::{Arc, Mutex, OnceLock};

use libtest_mimic::{Failed, Trial};
use serde_json::Value;

use crate::testbed::install::repo_dir;
use crate::testbed::{self, BootOptions, Release, Testbed, images};
use crate::{Shared, bin_dir};

/// The ansible-core the tests install: 2.18 runs on the Python 3.11 of a
/// Debian 12 controller and manages Python 3.11 (bookworm) to 3.13 (trixie)
/// targets, the two testbed releases.
const ANSIBLE_CORE: &str = "2.18.19";

pub fn trials(_shared: &Arc<Shared>) -> Vec<Trial> {
    let fleet = Arc::new(Fleet::default());
    vec![
        fleet_trial(&fleet, "ansible::portable_module_rolls_out_one_host_at_a_time", portable_rollout),
        fleet_trial(&fleet, "ansible::apply_module_checks_diffs_and_stops_a_failed_rollout", apply_rollout),
        fleet_trial(&fleet, "ansible::machine_module_imports_starts_with_limits_and_stops", machine_module),
        fleet_trial(&fleet, "ansible::check_mode_asks_wharf_for_plans_and_refusals", wharf_decides),
    ]
}

/// The three hosts and the Ansible that drives them, made on first use.
#[derive(Debug, Default)]
struct Fleet {
    rig: OnceLock<Result<Rig, String>>,
    /// One test at a time: they all use the same hosts and the same images.
    turn: Mutex<()>,
}

#[derive(Debug)]
struct Rig {
    hosts: Vec<Testbed>,
    ansible: Ansible,
}

fn fleet_trial(fleet: &Arc<Fleet>, name: &str, test: fn(&Rig)) -> Trial {
    let fleet = fleet.clone();
    Trial::test(name, move || {
        let _turn = fleet.turn.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        let rig = fleet.rig.get_or_init(Rig::set_up).as_ref().map_err(|e| Failed::from(e.as_str()))?;
        test(rig);
        Ok(())
    })
}

impl Rig {
    fn set_up() -> Result<Rig, String> {
        let release = Release::from_env().map_err(|e| e.to_string())?;
        let mut hosts = Vec::new();
        // One after another: three containers booting at once would only
        // slow each other down, and a failed boot stops the rest.
        for n in 1..=3 {
            let label = format!("host{n}");
            testbed::note(&format!("booting {label}, a {} testbed for the Ansible tests", release.name()));
            let options = BootOptions { release, bin_dir: bin_dir(), label };
            hosts.push(Testbed::boot(&options).map_err(|e| e.to_string())?);
        }
        let ansible = Ansible::new(&hosts)?;
        place_images(&ansible.work.join("images"), &hosts)?;
        Ok(Rig { hosts, ansible })
    }

    fn host(&self, name: &str) -> &Testbed {
        let index: usize = name.trim_start_matches("host").parse().expect("hosts are host1..host3");
        &self.hosts[index - 1]
    }

    /// No foobar attached, enabled or recorded by apply on any host.
    fn reset_foobar(&self) {
        for tb in &self.hosts {
            tb.ok("systemctl stop 'foobar*' 2>/dev/null; systemctl disable foobar.service 2>/dev/null; \
                 rm -rf /etc/systemd/system.attached/foobar* /run/systemd/system.attached/foobar* /etc/portables/foobar* /run/portables/foobar* /etc/systemd/system/foobar* /run/systemd/system/foobar* /etc/systemd/system/*.wants/foobar* \
                 /var/lib/wharf/fleet.json; systemctl daemon-reload; systemctl reset-failed; true");
        }
    }
}

/// foobar versions 1 and 2 as squashfs images, and a version 3 (a
/// directory) whose foobar.service cannot start, in /srv/images of each
/// host.
fn place_images(dir: &Path, hosts: &[Testbed]) -> Result<(), String> {
    images::foobar(&dir.join("foobar_1.raw"), "squashfs", "1").map_err(|e| e.to_string())?;
    images::foobar(&dir.join("foobar_2.raw"), "squashfs", "2").map_err(|e| e.to_string())?;
    let broken = dir.join("foobar_3");
    images::foobar(&broken, "dir", "3").map_err(|e| e.to_string())?;
    let unit = broken.join("usr/lib/systemd/system/foobar.service");
    let text = std::fs::read_to_string(&unit).map_err(|e| e.to_string())?;
    std::fs::write(&unit, text.replace("/usr/bin/busybox httpd", "/usr/bin/missing httpd"))
        .map_err(|e| e.to_string())?;
    // A unit whose [Install] has only Also=: enabling it enables
    // alsoer.service, and it stays "indirect" itself.
    let alsoer = dir.join("alsoer");
    images::foobar_as(&alsoer, "alsoer", "foobar.service").map_err(|e| e.to_string())?;
    std::fs::write(
        alsoer.join("usr/lib/systemd/system/alsoer-group.service"),
        "[Unit]\nDescription=alsoer and friends\n[Service]\nType=oneshot\nRemainAfterExit=yes\n\
         ExecStart=/usr/bin/busybox true\n[Install]\nAlso=alsoer.service\n",
    )
    .map_err(|e| e.to_string())?;
    for tb in hosts {
        let target = tb.host_path("/srv/images");
        std::fs::create_dir_all(&target).map_err(|e| e.to_string())?;
        testbed::run_host(
            Command::new("cp").arg("-a").arg(format!("{}/.", dir.display())).arg(&target),
            "putting the foobar images on a host",
        )
        .map_err(|e| e.to_string())?;
    }
    Ok(())
}

/// ansible-playbook from the cached virtualenv, with an inventory of the
/// three hosts reached through wharf.wharf.nsenter, in a work directory of
/// its own (removed when dropped).
#[derive(Debug)]
struct Ansible {
    python: PathBuf,
    work: PathBuf,
}

impl Ansible {
    fn new(hosts: &[Testbed]) -> Result<Ansible, String> {
        let python = virtualenv()?.join("bin/python3");
        let work = std::env::temp_dir().join(format!("wharf-ansible-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&work);
        std::fs::create_dir_all(work.join("files")).map_err(|e| format!("cannot create {}: {e}", work.display()))?;
        let ansible = Ansible { python, work };
        let mut inventory = String::from("all:\n  children:\n    fleet:\n      hosts:\n");
        for (n, tb) in hosts.iter().enumerate() {
            inventory.push_str(&format!("        host{}: {{wharf_nsenter_pid: {}}}\n", n + 1, tb.pid1()));
        }
        inventory.push_str(
            "  vars:\n    ansible_connection: wharf.wharf.nsenter\n    ansible_python_interpreter: /usr/bin/python3\n",
        );
        std::fs::write(ansible.work.join("inventory.yml"), inventory).map_err(|e| e.to_string())?;
        Ok(ansible)
    }

    /// Writes a file into the work directory (`files/...` is where `src:` looks).
    fn write(&self, name: &str, text: &str) {
        std::fs::write(self.work.join(name), text).unwrap();
    }

    /// Runs a playbook (written as `<name>.yml`) with more arguments.
    fn playbook(&self, name: &str, playbook: &str, args: &[&str]) -> Run {
        let file = format!("{name}.yml");
        self.write(&file, playbook);
        let contrib = repo_dir().join("contrib/ansible");
        let output = Command::new(&self.python)
            .args(["-m", "ansible.cli.playbook", "-i", "inventory.yml", &file])
            .args(args)
            .current_dir(&self.work)
            .env_clear()
            .env("PATH", std::env::var_os("PATH").unwrap_or_default())
            .env("LC_ALL", "C.UTF-8")
            .env("HOME", &self.work)
            .env("ANSIBLE_HOME", self.work.join("ansible-home"))
            .env("ANSIBLE_LOCAL_TEMP", self.work.join("ansible-tmp"))
            .env("ANSIBLE_COLLECTIONS_PATH", &contrib)
            .env("ANSIBLE_COLLECTIONS_SCAN_SYS_PATH", "false")
            .env("ANSIBLE_CALLBACK_PLUGINS", contrib.join("test-support/callback_plugins"))
            .env("ANSIBLE_STDOUT_CALLBACK", "results")
            .env("ANSIBLE_PIPELINING", "true")
            .env("ANSIBLE_NOCOLOR", "1")
            .env("ANSIBLE_RETRY_FILES_ENABLED", "false")
            // Loading the collection must not leave __pycache__ in the checkout.
            .env("PYTHONDONTWRITEBYTECODE", "1")
            .output()
            .expect("running ansible-playbook");
        let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
        let stderr = String::from_utf8_lossy(&output.stderr).into_owned();
        let doc = serde_json::from_str(stdout.trim()).unwrap_or_else(|e| {
            panic!("ansible-playbook {name} printed no results ({e}), exit {:?}:\n{stdout}\n{stderr}", output.status)
        });
        Run { name: name.to_string(), code: output.status.code(), doc, stderr }
    }
}

impl Drop for Ansible {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.work);
    }
}

/// `<cache>/ansible-core-<version>-<python>`: a virtualenv with ansible-core,
/// built under a temporary name and renamed when complete. Its scripts'
/// shebangs name the temporary path, so it is always run as `python3 -m`.
fn virtualenv() -> Result<PathBuf, String> {
    let version = Command::new("python3").arg("--version").output().map_err(|e| format!("python3: {e}"))?;
    let python = String::from_utf8_lossy(&version.stdout).trim().replace("Python ", "python");
    let cache = testbed::cache::cache_dir();
    let venv = cache.join(format!("ansible-core-{ANSIBLE_CORE}-{python}"));
    if venv.join("bin/python3").exists() {
        return Ok(venv);
    }
    std::fs::create_dir_all(&cache).map_err(|e| format!("cannot create {}: {e}", cache.display()))?;
    let partial = cache.join(format!(".ansible-core-{ANSIBLE_CORE}-{python}.{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&partial);
    testbed::note(&format!(
        "installing ansible-core {ANSIBLE_CORE} from PyPI into {} (first run only)",
        venv.display()
    ));
    let built = (|| {
        testbed::run_host(
            Command::new("python3").args(["-m", "venv"]).arg(&partial),
            "making a virtualenv (Debian: apt-get install python3-venv)",
        )?;
        testbed::run_host(
            Command::new(partial.join("bin/python3"))
                .args(["-m", "pip", "install", "--quiet", "--disable-pip-version-check", "--no-input"])
                .arg(format!("ansible-core=={ANSIBLE_CORE}")),
            &format!("pip install ansible-core=={ANSIBLE_CORE} (is PyPI reachable?)"),
        )?;
        Ok::<_, testbed::Error>(())
    })();
    if let Err(e) = built {
        let _ = std::fs::remove_dir_all(&partial);
        return Err(e.to_string());
    }
    if let Err(e) = std::fs::rename(&partial, &venv) {
        let _ = std::fs::remove_dir_all(&partial);
        // Another run may have finished one first; that one is as good.
        if !venv.join("bin/python3").exists() {
            return Err(format!("cannot store {}: {e}", venv.display()));
        }
    }
    Ok(venv)
}

/// One ansible-playbook run: its exit status and what the results callback
/// (contrib/ansible/test-support) printed.
struct Run {
    name: String,
    code: Option<i32>,
    doc: Value,
    stderr: String,
}

impl fmt::Display for Run {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let doc = serde_json::to_string_pretty(&self.doc).unwrap_or_default();
        write!(f, "ansible-playbook {} exited with {:?}\n{doc}\n--- stderr ---\n{}", self.name, self.code, self.stderr)
    }
}

impl Run {
    #[track_caller]
    fn succeeded(&self) -> &Run {
        assert_eq!(self.code, Some(0), "{self}");
        self
    }

    /// The recap's counters of each host that took part.
    fn stats(&self) -> BTreeMap<String, (u64, u64)> {
        let stats = self.doc["stats"].as_object().expect("stats");
        stats
            .iter()
            .map(|(host, s)| (host.clone(), (s["changed"].as_u64().unwrap(), s["failures"].as_u64().unwrap())))
            .collect()
    }

    /// Each host's `changed` count; every host of the inventory must have run.
    #[track_caller]
    fn changed(&self) -> Vec<u64> {
        let stats = self.stats();
        assert_eq!(stats.keys().collect::<Vec<_>>(), ["host1", "host2", "host3"], "{self}");
        stats.values().map(|(changed, _)| *changed).collect()
    }

    /// (host, status, result) of each run of a task, in the order they ran.
    fn task(&self, task: &str) -> Vec<(&str, &str, &Value)> {
        self.doc["results"]
            .as_array()
            .expect("results")
            .iter()
            .filter(|r| r["task"] == task)
            .map(|r| (r["host"].as_str().unwrap(), r["status"].as_str().unwrap(), &r["result"]))
            .collect()
    }

    /// The hosts of the results in the order they ran (one entry per task).
    fn order(&self) -> Vec<String> {
        let results = self.doc["results"].as_array().expect("results");
        results.iter().map(|r| r["host"].as_str().unwrap().to_string()).collect()
    }
}

/// foobar.service on a host: its image, state, main PID, and the
/// VERSION_ID of the image it runs from (read through its root).
#[derive(Debug, Clone, PartialEq, Eq)]
struct Foobar {
    image: String,
    state: String,
    pid: String,
    version: String,
}

fn foobar(tb: &Testbed) -> Foobar {
    let show =
        |property: &str| tb.ok(&format!("systemctl show -p {property} --value foobar.service")).trim().to_string();
    let (image, state, pid) = (show("RootImage"), show("ActiveState"), show("MainPID"));
    let version = if pid != "0" && tb.wait_exec(&pid, "busybox") {
        tb.ok(&format!(". /proc/{pid}/root/usr/lib/os-release && echo $VERSION_ID || true")).trim().to_string()
    } else {
        String::new()
    };
    Foobar { image, state, pid, version }
}

#[track_caller]
fn assert_runs(tb: &Testbed, version: &str) -> Foobar {
    let now = foobar(tb);
    assert_eq!(
        (now.image.as_str(), now.state.as_str(), now.version.as_str()),
        (format!("/srv/images/foobar_{version}.raw").as_str(), "active", version),
        "{now:?}"
    );
    now
}

/// Each testbed has a network namespace of its own, so every foobar
/// serves 127.0.0.1:8080 with the default profile.
const ROLLOUT: &str = r#"
- name: Roll out foobar
  hosts: fleet
  serial: 1
  max_fail_percentage: 0
  gather_facts: false
  tasks:
    - name: foobar runs the image
      wharf.wharf.portable:
        image: "{{ image }}"
        runtime: "{{ runtime | default(false) }}"
        profile: "{{ profile | default('default') }}"
        state: running
        enabled: true
"#;

fn rollout_vars(version: &str) -> String {
    let image =
        if version == "3" { "/srv/images/foobar_3".to_string() } else { format!("/srv/images/foobar_{version}.raw") };
    serde_json::json!({ "image": image }).to_string()
}

/// The order the hosts ran in with `serial: 1`.
const SERIAL: [&str; 3] = ["host1", "host2", "host3"];

fn portable_rollout(rig: &Rig) {
    rig.reset_foobar();
    let ansible = &rig.ansible;
    let rollout = |version: &str, args: &[&str]| {
        let vars = rollout_vars(version);
        let mut all = vec!["-e", vars.as_str()];
        all.extend_from_slice(args);
        ansible.playbook(&format!("rollout-{version}"), ROLLOUT, &all)
    };

    let first = rollout("1", &[]);
    assert_eq!(first.succeeded().changed(), [1, 1, 1], "{first}");
    assert_eq!(first.order(), SERIAL, "one host after the other: {first}");
    for (host, _, result) in first.task("foobar runs the image") {
        assert_eq!(result["action"], "attach", "{host}: {first}");
        assert_eq!(rig.host(host).ok("systemctl is-enabled foobar.service").trim(), "enabled");
        assert_runs(rig.host(host), "1");
    }

    let again = rollout("1", &[]);
    assert_eq!(again.succeeded().changed(), [0, 0, 0], "a second run changes nothing: {again}");

    // Check mode with diff: says what would change, changes nothing.
    let before: Vec<Foobar> = rig.hosts.iter().map(foobar).collect();
    let check = rollout("2", &["--check", "--diff"]);
    assert_eq!(check.succeeded().changed(), [1, 1, 1], "{check}");
    for (host, _, result) in check.task("foobar runs the image") {
        let diff = &result["diff"];
        assert_eq!(diff["before"]["attached_image"], "/srv/images/foobar_1.raw", "{host}: {check}");
        assert_eq!(diff["after"]["attached_image"], "/srv/images/foobar_2.raw", "{host}: {check}");
        // wharf's own plan (reattach --check), in the kinds a real run reports.
        let changes = diff["after"]["changes"].as_array().expect("changes in the diff");
        assert!(
            changes.iter().any(|c| c["kind"] == "write" && c["path"] == "/etc/systemd/system/foobar.service"),
            "{host}: {check}"
        );
        assert_eq!(result["action"], "reattach", "{host}: {check}");
        assert_eq!(result["replaced"], "/srv/images/foobar_1.raw", "{host}: {check}");
    }
    let after: Vec<Foobar> = rig.hosts.iter().map(foobar).collect();
    assert_eq!(after, before, "check mode changed a host");

    let upgrade = rollout("2", &["--diff"]);
    assert_eq!(upgrade.succeeded().changed(), [1, 1, 1], "{upgrade}");
    assert_eq!(upgrade.order(), SERIAL, "{upgrade}");
    for (host, _, result) in upgrade.task("foobar runs the image") {
        assert_eq!(
            (&result["action"], &result["replaced"]),
            (&Value::from("reattach"), &Value::from("/srv/images/foobar_1.raw")),
            "{host}: {upgrade}"
        );
        let written: Vec<&str> =
            result["changes"].as_array().unwrap().iter().filter_map(|c| c["path"].as_str()).collect();
        assert!(written.contains(&"/etc/systemd/system/foobar.service.d/20-portable.conf"), "{host}: {upgrade}");
    }
    assert_eq!(rollout("2", &[]).succeeded().changed(), [0, 0, 0]);

    // Another profile for the attached image: changed, and foobar.service
    // runs again, now with the trusted profile; then nothing more to do.
    let host2 = rig.host("host2");
    let pid = foobar(host2).pid;
    let trusted = rollout("2", &["--limit", "host2", "-e", "profile=trusted"]);
    assert_eq!(trusted.succeeded().stats()["host2"], (1, 0), "{trusted}");
    let (_, _, result) = trusted.task("foobar runs the image")[0];
    assert_eq!(result["action"], "refresh", "{trusted}");
    let dropins = host2.ok("systemctl show -p DropInPaths --value foobar.service");
    let profile = host2.ok("readlink -f /etc/systemd/system/foobar.service.d/10-profile.conf");
    assert!(profile.trim().ends_with("/profiles/trusted/service.conf"), "{profile} ({dropins})");
    let now = assert_runs(host2, "2");
    assert_ne!(now.pid, pid, "foobar.service was not restarted in its new sandbox");
    let status: Value = serde_json::from_str(&host2.ok("portable is-attached --json foobar_2.raw")).unwrap();
    assert_eq!(status["profile"], "trusted", "{status}");
    let again = rollout("2", &["--limit", "host2", "-e", "profile=trusted"]);
    assert_eq!(again.succeeded().stats()["host2"], (0, 0), "{again}");
    let back = rollout("2", &["--limit", "host2"]);
    assert_eq!(back.succeeded().stats()["host2"], (1, 0), "{back}");
    assert_runs(host2, "2");

    // Moved below /run on host1 (a detach and an attach), running on.
    let moved = rollout("2", &["--limit", "host1", "-e", "runtime=true"]);
    assert_eq!(moved.succeeded().stats()["host1"], (1, 0), "{moved}");
    let host1 = rig.host("host1");
    assert_eq!(host1.ok("ls /run/systemd/system | grep -c '^foobar' || true").trim(), "4", "{moved}");
    assert_eq!(host1.ok("ls /etc/systemd/system | grep -c '^foobar' || true").trim(), "0", "{moved}");
    let again = rollout("2", &["--limit", "host1", "-e", "runtime=true"]);
    assert_eq!(again.succeeded().stats()["host1"], (0, 0), "{again}");
    let upgraded: Vec<Foobar> = rig.hosts.iter().map(|tb| assert_runs(tb, "2")).collect();

    // Version 3 cannot start: wharf puts host1 back on version 2 (below
    // /run, where it was), the task fails, and the rollout stops before
    // host2 and host3.
    let broken = rollout("3", &[]);
    assert_ne!(broken.code, Some(0), "{broken}");
    assert_eq!(broken.stats().keys().collect::<Vec<_>>(), ["host1"], "only host1 was tried: {broken}");
    let tried = broken.task("foobar runs the image");
    assert_eq!(tried.len(), 1, "{broken}");
    let (_, status, result) = tried[0];
    assert_eq!(status, "failed", "{broken}");
    let message = result["msg"].as_str().unwrap_or_default();
    assert!(message.contains("foobar.service failed right after it was started"), "{broken}");
    assert!(message.ends_with("the host was left as it was"), "{broken}");
    assert_runs(rig.host("host1"), "2");
    for (n, tb) in rig.hosts.iter().enumerate().skip(1) {
        assert_eq!(foobar(tb), upgraded[n], "host{} was touched", n + 1);
    }
    rig.reset_foobar();
}

const APPLY: &str = r#"
- name: Apply the fleet file
  hosts: fleet
  serial: 1
  any_errors_fatal: true
  gather_facts: false
  tasks:
    - name: the host is as the fleet file says
      wharf.wharf.apply:
        src: "fleet-{{ version }}.toml"
"#;

/// The same, with a fleet file already on the hosts.
const APPLY_PATH: &str = r#"
- name: Apply the fleet file on the hosts
  hosts: fleet
  gather_facts: false
  tasks:
    - name: the host is as the fleet file says
      wharf.wharf.apply:
        path: /srv/images/fleet-1.toml
"#;

fn fleet_file(image: &str) -> String {
    format!(
        "[[portable]]\nimage = \"{image}\"\nenabled = true\nrunning = true\n\
         [portable.properties]\nMemoryMax = \"256M\"\n"
    )
}

fn apply_rollout(rig: &Rig) {
    rig.reset_foobar();
    let ansible = &rig.ansible;
    ansible.write("files/fleet-1.toml", &fleet_file("/srv/images/foobar_1.raw"));
    ansible.write("files/fleet-2.toml", &fleet_file("/srv/images/foobar_2.raw"));
    ansible.write("files/fleet-3.toml", &fleet_file("/srv/images/foobar_3"));
    let apply = |version: &str, args: &[&str]| {
        let vars = format!("version={version}");
        let mut all = vec!["-e", vars.as_str()];
        all.extend_from_slice(args);
        ansible.playbook(&format!("apply-{version}"), APPLY, &all)
    };

    let first = apply("1", &[]);
    assert_eq!(first.succeeded().changed(), [1, 1, 1], "{first}");
    for (host, _, result) in first.task("the host is as the fleet file says") {
        assert_eq!(result["applied"], true, "{host}: {first}");
        assert_eq!(result["plan"]["steps"][0]["action"], "attach", "{host}: {first}");
        let tb = rig.host(host);
        assert_runs(tb, "1");
        assert_eq!(tb.ok("systemctl show -p MemoryMax --value foobar.service").trim(), "268435456");
    }

    // The same file on the hosts, naming its image relative to itself.
    for tb in &rig.hosts {
        std::fs::write(tb.host_path("/srv/images/fleet-1.toml"), fleet_file("foobar_1.raw")).unwrap();
    }
    let again = ansible.playbook("apply-path", APPLY_PATH, &[]);
    assert_eq!(again.succeeded().changed(), [0, 0, 0], "{again}");
    for (host, _, result) in again.task("the host is as the fleet file says") {
        assert_eq!(
            (&result["applied"], &result["plan"]["steps"]),
            (&Value::from(false), &serde_json::json!([])),
            "{host}"
        );
    }

    // A changed file in check mode: changed, with the plan as the diff, and
    // nothing done (apply --check).
    let before: Vec<Foobar> = rig.hosts.iter().map(foobar).collect();
    let check = apply("2", &["--check", "--diff"]);
    assert_eq!(check.succeeded().changed(), [1, 1, 1], "{check}");
    for (host, _, result) in check.task("the host is as the fleet file says") {
        let plan = result["diff"]["prepared"].as_str().unwrap_or_default();
        assert!(plan.starts_with("wharf plan for fleet-2.toml:\n"), "{host}: {check}");
        assert!(plan.contains("  1. reattach /srv/images/foobar_1.raw -> /srv/images/foobar_2.raw"), "{host}: {check}");
        assert!(plan.contains(". restart foobar.service\n"), "{host}: {check}");
        assert_eq!(result["applied"], false, "{host}: {check}");
    }
    let after: Vec<Foobar> = rig.hosts.iter().map(foobar).collect();
    assert_eq!(after, before, "check mode changed a host");

    let upgrade = apply("2", &[]);
    assert_eq!(upgrade.succeeded().changed(), [1, 1, 1], "{upgrade}");
    assert_eq!(upgrade.order(), SERIAL, "one host after the other: {upgrade}");
    let upgraded: Vec<Foobar> = rig.hosts.iter().map(|tb| assert_runs(tb, "2")).collect();

    // Version 3 cannot start: apply puts host1 back, the play stops there.
    let broken = apply("3", &[]);
    assert_ne!(broken.code, Some(0), "{broken}");
    assert_eq!(broken.stats().keys().collect::<Vec<_>>(), ["host1"], "only host1 was tried: {broken}");
    let (_, status, result) = broken.task("the host is as the fleet file says")[0];
    assert_eq!(status, "failed", "{broken}");
    let message = result["msg"].as_str().unwrap_or_default();
    assert!(message.contains("foobar.service"), "{broken}");
    assert!(message.ends_with("everything this apply changed was put back"), "{broken}");
    assert_runs(rig.host("host1"), "2");
    for (n, tb) in rig.hosts.iter().enumerate().skip(1) {
        assert_eq!(foobar(tb), upgraded[n], "host{} was touched", n + 1);
    }
    rig.reset_foobar();
}

const MACHINE: &str = r#"
- name: The f28 machine
  hosts: host1
  gather_facts: false
  tasks:
    - name: f28 runs with its limits
      wharf.wharf.machine:
        name: f28
        source: /srv/images/f28.tar
        state: started
        enabled: true
        limits: "{{ limits }}"
"#;

const MACHINE_STOP: &str = r#"
- name: The f28 machine
  hosts: host1
  gather_facts: false
  tasks:
    - name: f28 stops
      wharf.wharf.machine: {name: f28, state: stopped}
    - name: f28 stays stopped
      wharf.wharf.machine: {name: f28, state: stopped}
    - name: f28 is gone
      wharf.wharf.machine: {name: f28, state: absent}
    - name: a raw image is imported
      wharf.wharf.machine: {name: tiny, source: /srv/images/foobar_1.raw}
    - name: a raw image is there
      wharf.wharf.machine: {name: tiny, source: /srv/images/foobar_1.raw}
    - name: a raw image is gone
      wharf.wharf.machine: {name: tiny, state: absent}
"#;

fn machine_module(rig: &Rig) {
    let tb = rig.host("host1");
    let reset = "machine poweroff f28 2>/dev/null; machine disable f28 2>/dev/null; \
                 machine remove f28 2>/dev/null; machine remove tiny 2>/dev/null; \
                 rm -f /etc/wharf/machines/f28.toml /srv/images/f28.tar; true";
    tb.ok(reset);
    let tarball = images::f28_tarball().expect("the f28 image");
    std::fs::copy(&tarball, tb.host_path("/srv/images/f28.tar")).unwrap();
    let ansible = &rig.ansible;
    let start = |limits: Value, args: &[&str]| {
        let vars = serde_json::json!({ "limits": limits }).to_string();
        let mut all = vec!["-e", vars.as_str()];
        all.extend_from_slice(args);
        ansible.playbook("machine", MACHINE, &all)
    };
    let limits = serde_json::json!({ "MemoryMax": "512M", "TasksMax": 200 });

    let first = start(limits.clone(), &[]);
    assert_eq!(first.succeeded().stats()["host1"], (1, 0), "{first}");
    let (_, _, result) = first.task("f28 runs with its limits")[0];
    assert_eq!((&result["imported"], &result["source_type"]), (&Value::from(true), &Value::from("tar")), "{first}");
    assert_eq!((&result["state"], &result["ready"]), (&Value::from("running"), &Value::from(true)), "{first}");
    let shown: Value = serde_json::from_str(&tb.ok("machine show --json f28")).unwrap();
    assert_eq!((&shown["MemoryMax"], &shown["TasksMax"]), (&Value::from("536870912"), &Value::from("200")));
    assert_eq!(tb.ok("systemctl is-enabled wharf-machine@f28.service").trim(), "enabled");
    let saved = tb.ok("cat /etc/wharf/machines/f28.toml");
    assert!(saved.contains("MemoryMax = \"536870912\"") && saved.contains("TasksMax = \"200\""), "{saved}");

    let again = start(limits, &[]);
    assert_eq!(again.succeeded().stats()["host1"], (0, 0), "a second run changes nothing: {again}");

    // A new limit in check mode: changed, shown in the diff, not applied.
    let check = start(serde_json::json!({ "MemoryMax": "256M" }), &["--check", "--diff"]);
    assert_eq!(check.succeeded().stats()["host1"], (1, 0), "{check}");
    let (_, _, result) = check.task("f28 runs with its limits")[0];
    assert_eq!(result["diff"]["before"]["live_limits"]["MemoryMax"], "536870912", "{check}");
    assert_eq!(result["diff"]["after"]["live_limits"]["MemoryMax"], "268435456", "{check}");
    let shown: Value = serde_json::from_str(&tb.ok("machine show --json f28")).unwrap();
    assert_eq!(shown["MemoryMax"], "536870912", "check mode changed the limit");

    let stop = ansible.playbook("machine-stop", MACHINE_STOP, &[]);
    assert_eq!(stop.succeeded().stats()["host1"], (4, 0), "{stop}");
    let changed: Vec<&Value> =
        stop.doc["results"].as_array().unwrap().iter().map(|r| &r["result"]["changed"]).collect();
    assert_eq!(
        changed,
        [true, false, true, true, false, true],
        "stop, stay stopped, remove; the same for tiny: {stop}"
    );
    // A raw image (a squashfs file system will do) is listed as tiny.raw, and still found.
    let (_, _, tiny) = stop.task("a raw image is imported")[0];
    assert_eq!(
        (&tiny["source_type"], &tiny["image"]),
        (&Value::from("raw"), &Value::from("/var/lib/machines/tiny.raw"))
    );
    assert!(!tb.ok("machine list --json").contains("\"f28\""), "f28 still runs");
    assert_eq!(tb.ok("machine list-images --json").trim(), "[]", "the image is still there");
    assert_eq!(tb.sh("systemctl is-enabled wharf-machine@f28.service").stdout.trim(), "disabled");
    tb.ok(reset);
}

const ALSO: &str = r#"
- name: alsoer
  hosts: host1
  gather_facts: false
  tasks:
    - name: alsoer is attached and enabled
      wharf.wharf.portable: {image: /srv/images/alsoer, state: attached, enabled: true}
"#;

/// A fleet file with a machine, planned in check mode.
const FLEET_MACHINE: &str = "[[machine]]\nname = \"f28\"\nsource = \"/srv/images/f28.tar\"\nstarted = true\n\
                             enabled = true\n[machine.limits]\nMemoryMax = \"512M\"\n";

const BAD_LIMIT: &str = r#"
- name: The f28 machine
  hosts: host1
  gather_facts: false
  tasks:
    - name: f28 with a weight wharf refuses
      wharf.wharf.machine: {name: f28, state: present, limits: {CPUWeight: 0}}
"#;

/// What the modules used to work out themselves, wharf now answers: an
/// Also=-only unit is not one to enable (so `enabled: true` is idempotent),
/// a fleet file's machine steps come with wharf's words, and a limit wharf
/// refuses fails in check mode with wharf's message.
fn wharf_decides(rig: &Rig) {
    let tb = rig.host("host1");
    let ansible = &rig.ansible;
    let reset = "portable detach --now alsoer 2>/dev/null; machine remove f28 2>/dev/null; \
                 rm -f /etc/wharf/machines/f28.toml /srv/images/f28.tar; true";
    tb.ok(reset);
    let tarball = images::f28_tarball().expect("the f28 image");
    std::fs::copy(&tarball, tb.host_path("/srv/images/f28.tar")).unwrap();

    let first = ansible.playbook("also", ALSO, &[]);
    assert_eq!(first.succeeded().stats()["host1"], (1, 0), "{first}");
    assert_eq!(tb.ok("systemctl is-enabled alsoer.service").trim(), "enabled", "{first}");
    let status: Value = serde_json::from_str(&tb.ok("portable is-attached --json alsoer")).unwrap();
    let group = status["units"].as_array().unwrap().iter().find(|u| u["name"] == "alsoer-group.service").cloned();
    assert_eq!(group.as_ref().map(|u| &u["installable"]), Some(&Value::from(false)), "{status}");
    let again = ansible.playbook("also", ALSO, &[]);
    assert_eq!(again.succeeded().stats()["host1"], (0, 0), "a second run changes nothing: {again}");

    // Plan lines and the diff of a machine entry are wharf's own.
    ansible.write("files/fleet-machine.toml", FLEET_MACHINE);
    let vars = "version=machine";
    let check = ansible.playbook("apply-machine", APPLY, &["-e", vars, "--limit", "host1", "--check", "--diff"]);
    assert_eq!(check.succeeded().stats()["host1"], (1, 0), "{check}");
    let (_, _, result) = check.task("the host is as the fleet file says")[0];
    let lines: Vec<&str> = result["plan_lines"].as_array().unwrap().iter().filter_map(Value::as_str).collect();
    assert_eq!(
        lines,
        [
            "import machine f28 from /srv/images/f28.tar",
            "enable machine f28",
            "set limits of machine f28: MemoryMax=536870912",
            "start machine f28"
        ],
        "{check}"
    );
    let prepared = result["diff"]["prepared"].as_str().unwrap_or_default();
    assert!(prepared.contains("  1. import machine f28 from /srv/images/f28.tar\n"), "{check}");
    assert!(!prepared.contains('{'), "a step printed as a dictionary: {check}");
    assert_eq!(tb.ok("machine list-images --json").trim(), "[]", "check mode imported the machine");

    // A limit wharf refuses fails in check mode already, in wharf's words.
    let bad = ansible.playbook("bad-limit", BAD_LIMIT, &["--check"]);
    assert_ne!(bad.code, Some(0), "{bad}");
    let (_, status, result) = bad.task("f28 with a weight wharf refuses")[0];
    assert_eq!(status, "failed", "{bad}");
    let message = result["msg"].as_str().unwrap_or_default();
    assert!(message.contains("CPUWeight: '0' is not a weight from 1 to 10000"), "{bad}");
    tb.ok(reset);
}
