//! Deadlines (issue 21): wharfd never waits forever. A 100-portable fleet
//! applied and detached again and again never hangs; a bus that stops
//! answering turns into a deadline error and a rolled-back host; a wedged
//! wharfd is restarted by the watchdog and recovers its journal.

use std::sync::Arc;
use std::time::{Duration, Instant};

use libtest_mimic::Trial;

use crate::testbed::{Testbed, images};
use crate::{Shared, exclusive_trial, heavy_trial};

pub fn trials(shared: &Arc<Shared>) -> Vec<Trial> {
    vec![
        exclusive_trial(shared, "deadline::a_100_portable_fleet_applies_and_detaches_without_hanging", stress),
        heavy_trial(shared, "deadline::a_fleet_of_8_machines_starts_and_stops_without_hanging", machine_stress),
        exclusive_trial(shared, "deadline::a_frozen_bus_fails_the_call_and_the_host_is_rolled_back", frozen_bus),
        exclusive_trial(shared, "deadline::a_wedged_wharfd_is_restarted_by_the_watchdog_and_recovers", watchdog),
    ]
}

/// How many portables the stress fleet has.
const FLEET_SIZE: usize = 100;

/// What the client may take for one apply of the whole fleet before the
/// test calls it a hang (a healthy run takes a few seconds).
const APPLY_DEADLINE: Duration = Duration::from_secs(120);

/// What a read may take while the fleet runs or changes.
const READ_DEADLINE: Duration = Duration::from_secs(10);

/// Runs of the stress test: WHARF_STRESS_RUNS (20 is worth doing locally).
fn stress_runs() -> usize {
    std::env::var("WHARF_STRESS_RUNS").ok().and_then(|v| v.parse().ok()).unwrap_or(2)
}

fn stress_name(i: usize) -> String {
    format!("st{i:03}")
}

fn stress_reset(tb: &Testbed) {
    tb.ok("systemctl stop 'st[0-9]*' 2>/dev/null; rm -rf /etc/systemd/system.attached/st[0-9]* /run/systemd/system.attached/st[0-9]* /etc/portables/st[0-9]* /run/portables/st[0-9]* /etc/systemd/system/st[0-9]* /srv/stress \
         /var/lib/wharf/fleet.json; systemctl daemon-reload; systemctl reset-failed; mkdir -p /srv/stress; true");
}

/// 100 squashfs images, each with one long-running service of its own
/// prefix (stNNN.service), made from the foobar tree.
fn stress_images(tb: &Testbed) {
    let template = tb.host_path("/srv/stress/template");
    images::foobar(&template, "dir", "1").unwrap();
    let units = template.join("usr/lib/systemd/system");
    for entry in std::fs::read_dir(&units).unwrap() {
        std::fs::remove_file(entry.unwrap().path()).unwrap();
    }
    let os_release = std::fs::read_to_string(template.join("usr/lib/os-release")).unwrap();
    for i in 0..FLEET_SIZE {
        let name = stress_name(i);
        std::fs::write(
            units.join(format!("{name}.service")),
            format!("[Unit]\nDescription=stress {name}\n\n[Service]\nExecStart=/usr/bin/busybox sleep 3600\n"),
        )
        .unwrap();
        std::fs::write(
            template.join("usr/lib/os-release"),
            os_release.replace("PORTABLE_PREFIXES=foobar", &format!("PORTABLE_PREFIXES={name}")),
        )
        .unwrap();
        let image = tb.host_path(&format!("/srv/stress/{name}.raw"));
        images::squashfs(&template, &image).unwrap();
        std::fs::remove_file(units.join(format!("{name}.service"))).unwrap();
    }
    std::fs::remove_dir_all(&template).unwrap();
}

/// Runs `portable apply FILE` with the client under a deadline; a hang
/// fails the test with what wharfd was doing.
fn timed_apply(tb: &Testbed, file: &str, what: &str) -> Duration {
    timed_call(
        tb,
        &format!("portable apply --quiet {file}"),
        APPLY_DEADLINE,
        what,
        "echo $(systemctl list-units --no-legend --state=active 'st[0-9]*.service' | wc -l) services active",
    )
}

/// Runs a client `command` under `deadline`; a hang fails the test with
/// what wharfd and systemd were doing, and `state` (a shell snippet that
/// tells how far the host got).
fn timed_call(tb: &Testbed, command: &str, deadline: Duration, what: &str, state: &str) -> Duration {
    let started = Instant::now();
    let out = tb.sh(&format!("timeout {} {command}", deadline.as_secs()));
    let took = started.elapsed();
    if out.code == Some(124) {
        let journal = tb.sh("journalctl -q -u wharfd.service -o cat | tail -20").stdout;
        let jobs = tb.sh("systemctl list-jobs --no-legend | head").stdout;
        let state = tb.sh(state).stdout;
        panic!("{what}: `{command}` hung for {deadline:?}\n{}; jobs: {jobs}\nwharfd said:\n{journal}", state.trim());
    }
    assert!(out.success(), "{what}: {out}");
    took
}

fn stress(tb: &Testbed) {
    stress_reset(tb);
    stress_images(tb);
    let mut fleet = String::new();
    for i in 0..FLEET_SIZE {
        fleet.push_str(&format!("[[portable]]\nimage = \"{}.raw\"\nrunning = true\n", stress_name(i)));
    }
    std::fs::write(tb.host_path("/srv/stress/fleet.toml"), fleet).unwrap();
    std::fs::write(tb.host_path("/srv/stress/empty.toml"), "# nothing\n").unwrap();
    let runs = stress_runs();
    let mut times = Vec::new();
    // Reads answer while a change runs: the first apply goes on in the
    // background while `list`, `is-attached` and `inspect` are asked.
    tb.ok(&format!(
        "rm -f /tmp/apply.status; (timeout {} portable apply --quiet /srv/stress/fleet.toml; \
         echo $? >/tmp/apply.status) </dev/null >/dev/null 2>&1 &",
        APPLY_DEADLINE.as_secs()
    ));
    let started = Instant::now();
    tb.ok("timeout 10 portable list >/dev/null && timeout 10 portable inspect /srv/stress/st042.raw >/dev/null \
         && { timeout 10 portable is-attached /srv/stress/st042.raw; [ $? -le 1 ]; }");
    let reads = started.elapsed();
    tb.ok(&format!(
        "for i in $(seq {}); do [ -s /tmp/apply.status ] && break; sleep 0.1; done",
        APPLY_DEADLINE.as_secs() * 10 + 50
    ));
    assert_eq!(tb.ok("cat /tmp/apply.status").trim(), "0", "the apply in the background");
    timed_apply(tb, "/srv/stress/empty.toml", "the first detach");
    for run in 1..=runs {
        let applied = timed_apply(tb, "/srv/stress/fleet.toml", &format!("run {run}/{runs}, apply"));
        let active = tb.ok("systemctl list-units --no-legend --state=active 'st[0-9]*.service' | wc -l");
        assert_eq!(active.trim(), FLEET_SIZE.to_string(), "run {run}: services running after the apply");
        // While the fleet runs, a read answers at once.
        timed_call(
            tb,
            "portable list",
            READ_DEADLINE,
            &format!("run {run}/{runs}, list"),
            "systemctl status wharfd.service",
        );
        let detached = timed_apply(tb, "/srv/stress/empty.toml", &format!("run {run}/{runs}, detach"));
        let left = tb.ok("ls /etc/systemd/system | grep -c '^st[0-9]' || true");
        assert_eq!(left.trim(), "0", "run {run}: units left after the detach");
        times.push((applied, detached));
    }
    crate::testbed::note(&format!(
        "stress: {runs} runs of {FLEET_SIZE} portables, (apply, detach) took {times:?}; reads during an apply {reads:?}"
    ));
    stress_reset(tb);
}

/// How many machines the machine stress fleet has.
const MACHINES: usize = 8;

/// What the client may take for one apply that boots or powers off the
/// 8 machines (wharfd itself gives each machine 90 s to be ready or gone;
/// a healthy run takes seconds).
const MACHINE_APPLY_DEADLINE: Duration = Duration::from_secs(150);

fn machine_stress_name(i: usize) -> String {
    format!("stm{i}")
}

/// No machine, image or settings file of the machine stress test is left.
fn machine_stress_reset(tb: &Testbed) {
    let names: Vec<String> = (0..MACHINES).map(machine_stress_name).collect();
    let names = names.join(" ");
    tb.ok(&format!(
        "for m in {names}; do timeout 120 machine poweroff $m 2>/dev/null; systemctl stop wharf-$m.service \
           2>/dev/null; systemctl reset-failed wharf-$m.service 2>/dev/null; timeout 120 machine remove $m \
           2>/dev/null; rm -rf /var/lib/machines/$m /etc/wharf/machines/$m.toml; done; \
         rm -rf /srv/stress-machines /var/lib/wharf/fleet.json; true"
    ));
}

/// The stress machines that run, as `machine list --json` tells.
fn running_stress_machines(tb: &Testbed) -> Vec<String> {
    let json = tb.ok("timeout 10 machine list --json");
    let listed: serde_json::Value = serde_json::from_str(&json).unwrap_or_else(|e| panic!("{e}: {json}"));
    let mut names: Vec<String> = listed
        .as_array()
        .unwrap_or_else(|| panic!("not a list: {json}"))
        .iter()
        .filter_map(|m| m["name"].as_str())
        .filter(|name| name.starts_with("stm"))
        .map(str::to_string)
        .collect();
    names.sort();
    names
}

fn machine_fleet(started: bool) -> String {
    (0..MACHINES)
        .map(|i| {
            format!(
                "[[machine]]\nname = \"{}\"\nstarted = {started}\n[machine.limits]\nMemoryMax = \"256M\"\nTasksMax = 300\n",
                machine_stress_name(i)
            )
        })
        .collect()
}

/// A fleet of 8 machines (clones of the f28 image, with limits) booted by
/// one apply and powered off by the next (the same entries with
/// `started = false`: an unlisted machine is left alone), again and again,
/// every call under a deadline.
fn machine_stress(tb: &Testbed) {
    machine_stress_reset(tb);
    let setup = Instant::now();
    let tarball = images::f28_tarball().unwrap();
    std::fs::create_dir_all(tb.host_path("/srv/stress-machines")).unwrap();
    std::fs::copy(&tarball, tb.host_path("/srv/stress-machines/stm0.tar")).unwrap();
    tb.ok("timeout 300 machine import-tar /srv/stress-machines/stm0.tar stm0 >/dev/null");
    for i in 1..MACHINES {
        tb.ok(&format!("timeout 300 machine clone stm0 {} >/dev/null", machine_stress_name(i)));
    }
    std::fs::write(tb.host_path("/srv/stress-machines/up.toml"), machine_fleet(true)).unwrap();
    std::fs::write(tb.host_path("/srv/stress-machines/down.toml"), machine_fleet(false)).unwrap();
    let setup = setup.elapsed();
    let all: Vec<String> = (0..MACHINES).map(machine_stress_name).collect();
    let state = "machinectl list --no-legend | grep -c '^stm' | sed 's/$/ machines running/'";
    let runs = stress_runs();
    let (mut ups, mut downs) = (Vec::new(), Vec::new());
    for run in 1..=runs {
        let what = format!("run {run}/{runs}, start");
        ups.push(timed_call(
            tb,
            "machine apply --quiet /srv/stress-machines/up.toml",
            MACHINE_APPLY_DEADLINE,
            &what,
            state,
        ));
        assert_eq!(running_stress_machines(tb), all, "{what}: machines running after the apply");
        // The limits are those of the file, on every machine's unit.
        for name in &all {
            let limits = tb.ok(&format!("systemctl show -p MemoryMax -p TasksMax wharf-{name}.service"));
            let mut limits: Vec<&str> = limits.lines().collect();
            limits.sort_unstable();
            assert_eq!(limits, ["MemoryMax=268435456", "TasksMax=300"], "{what}: {name}");
        }
        let again = tb.sh("timeout 60 machine apply --check /srv/stress-machines/up.toml");
        assert_eq!(again.code, Some(0), "{what}: the host is not as the file says: {again}");
        let what = format!("run {run}/{runs}, poweroff");
        downs.push(timed_call(
            tb,
            "machine apply --quiet /srv/stress-machines/down.toml",
            MACHINE_APPLY_DEADLINE,
            &what,
            state,
        ));
        assert_eq!(running_stress_machines(tb), Vec::<String>::new(), "{what}: machines running after the apply");
        let units = tb.ok("systemctl list-units --all --no-legend --plain 'wharf-stm*' | wc -l");
        assert_eq!(units.trim(), "0", "{what}: units left");
    }
    crate::testbed::note(&format!(
        "machine stress: {runs} runs of {MACHINES} machines (import and clones took {setup:?}); start took {ups:?} \
         (median {:?}), poweroff took {downs:?} (median {:?})",
        crate::testbed::bench::median(ups.clone()),
        crate::testbed::bench::median(downs.clone())
    ));
    let cleanup = Instant::now();
    machine_stress_reset(tb);
    let left = tb.ok("ls -A /var/lib/machines /etc/wharf/machines 2>/dev/null | grep '^stm' || true");
    assert_eq!(left.trim(), "", "machine images or settings left");
    assert_eq!(running_stress_machines(tb), Vec::<String>::new(), "machines left");
    crate::testbed::note(&format!("machine stress: removing the 8 images took {:?}", cleanup.elapsed()));
}

/// A drop-in for wharfd.service, in place for the next start of wharfd.
pub(crate) fn configure_wharfd(tb: &Testbed, dropin: &str) {
    // /run is the container's own tmpfs, out of the host's sight: written from inside.
    tb.ok(&format!(
        "mkdir -p /run/systemd/system/wharfd.service.d && cat >/run/systemd/system/wharfd.service.d/50-test.conf <<'EOF'\n{dropin}EOF"
    ));
    tb.ok("systemctl daemon-reload && systemctl stop wharfd.service && systemctl reset-failed wharfd.service; true");
}

pub(crate) fn unconfigure_wharfd(tb: &Testbed) {
    tb.ok("rm -rf /run/systemd/system/wharfd.service.d; systemctl daemon-reload; systemctl stop wharfd.service; \
         systemctl reset-failed wharfd.service; true");
}

fn foobar_reset(tb: &Testbed) {
    tb.ok("systemctl stop 'foobar*' 2>/dev/null; rm -rf /etc/systemd/system.attached/foobar* /run/systemd/system.attached/foobar* /etc/portables/foobar* /run/portables/foobar* /etc/systemd/system/foobar* /var/lib/portables/* \
         /var/lib/wharf/transactions/*; systemctl daemon-reload; systemctl reset-failed; true");
}

/// foobar whose service takes `seconds` to come up (an ExecStartPre sleep),
/// as /var/lib/portables/foobar.raw.
fn slow_foobar(tb: &Testbed, seconds: u32) {
    let tree = tb.host_path("/var/lib/portables/foobar-tree");
    images::foobar(&tree, "dir", "1").unwrap();
    let unit = tree.join("usr/lib/systemd/system/foobar.service");
    let text = std::fs::read_to_string(&unit)
        .unwrap()
        .replace("[Service]\n", &format!("[Service]\nExecStartPre=/usr/bin/busybox sleep {seconds}\n"));
    std::fs::write(&unit, text).unwrap();
    let image = tb.host_path("/var/lib/portables/foobar.raw");
    images::squashfs(&tree, &image).unwrap();
    std::fs::remove_dir_all(&tree).unwrap();
}

#[track_caller]
fn assert_no_foobar(tb: &Testbed) {
    let left = tb.ok("ls -d /etc/systemd/system/foobar* 2>/dev/null || true");
    assert_eq!(left.trim(), "", "files left behind");
    assert_eq!(tb.ok("ls -A /var/lib/wharf/transactions").trim(), "", "journal left behind");
    let state = tb.sh("systemctl show -p LoadState,ActiveState --value foobar.service").stdout;
    assert_eq!(state.split_whitespace().collect::<Vec<_>>(), ["not-found", "inactive"], "{state}");
}

/// The bus stops answering in the middle of an attach: wharfd's wait ends
/// at its deadline with an error that names what it waited for, and once
/// the bus is back the host is as it was before.
fn frozen_bus(tb: &Testbed) {
    foobar_reset(tb);
    // Short deadlines, so the test need not wait the default ones.
    configure_wharfd(tb, "[Service]\nEnvironment=WHARF_JOB_TIMEOUT=3 WHARF_CALL_TIMEOUT=3\n");
    slow_foobar(tb, 4);
    let bus = tb.ok("systemctl show -p MainPID --value dbus.service").trim().to_string();
    assert_ne!(bus, "0");
    // Started in the background; the test freezes the bus once the start job runs.
    tb.ok("rm -f /tmp/attach.out; (timeout 120 portable attach --now foobar.raw >/tmp/attach.out 2>&1; \
         echo $? >>/tmp/attach.out) </dev/null >/dev/null 2>&1 & \
         for i in $(seq 200); do [ \"$(systemctl is-active foobar.service)\" = activating ] && exit 0; sleep 0.05; done; \
         exit 1");
    tb.ok(&format!("kill -STOP {bus}"));
    // Longer than wharfd's deadline, shorter than its patience for undoing.
    std::thread::sleep(Duration::from_secs(6));
    tb.ok(&format!("kill -CONT {bus}"));
    tb.ok("for i in $(seq 600); do [ $(wc -l </tmp/attach.out) -ge 2 ] && exit 0; sleep 0.1; done; exit 1");
    let out = tb.ok("cat /tmp/attach.out");
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(lines.len(), 2, "one line of error, then the exit status: {out}");
    assert_eq!(lines[1], "1", "{out}");
    // foobar.service or foobar-hello.service: both start jobs were waited for.
    assert!(lines[0].starts_with("portable: foobar"), "{out}");
    assert!(lines[0].contains(".service: start job did not finish within 3 s"), "{out}");
    assert!(lines[0].ends_with("the host was left as it was"), "{out}");
    // The start queued before the freeze went through when the bus came
    // back; the rollback stopped it again and removed the files.
    tb.ok("for i in $(seq 100); do [ \"$(systemctl is-active foobar.service)\" != activating ] && exit 0; \
         sleep 0.1; done; exit 1");
    assert_no_foobar(tb);
    unconfigure_wharfd(tb);
    foobar_reset(tb);
}

/// wharfd blocks its executor (a hidden test hook) in the middle of an
/// attach, after the files are in place: the watchdog kills it, systemd
/// starts it again, and the new wharfd rolls the interrupted attach back.
fn watchdog(tb: &Testbed) {
    foobar_reset(tb);
    configure_wharfd(tb, "[Service]\nWatchdogSec=3s\nEnvironment=WHARF_TEST_WEDGE=after-files\n");
    images::foobar(&tb.host_path("/var/lib/portables/foobar.raw"), "squashfs", "1").unwrap();
    tb.ok("portable list >/dev/null");
    let first = tb.ok("systemctl show -p MainPID --value wharfd.service").trim().to_string();
    let restarts = |tb: &Testbed| tb.ok("systemctl show -p NRestarts --value wharfd.service").trim().to_string();
    assert_eq!(restarts(tb), "0");
    let out = tb.sh("timeout 60 portable attach foobar.raw");
    assert_ne!(out.code, Some(124), "the client hung: {out}");
    assert_eq!(out.code, Some(1), "{out}");
    assert_eq!(out.stderr.lines().count(), 1, "{out}");
    tb.ok(
        "for i in $(seq 100); do [ \"$(systemctl is-active wharfd.service)\" = active ] && exit 0; sleep 0.1; done; \
         exit 1",
    );
    assert_eq!(restarts(tb), "1");
    let second = tb.ok("systemctl show -p MainPID --value wharfd.service").trim().to_string();
    assert_ne!(first, second, "wharfd runs in a new process");
    let journal = tb.ok("journalctl -q -u wharfd.service -o cat");
    assert!(journal.contains("test hook: blocking the executor"), "{journal}");
    assert!(journal.contains("recovered 1 interrupted operation(s)"), "{journal}");
    let watchdog = tb.ok("journalctl -q -u wharfd.service -o cat _PID=1");
    assert!(watchdog.contains("Watchdog timeout"), "{watchdog}");
    assert_no_foobar(tb);
    unconfigure_wharfd(tb);
    // And it works again.
    tb.ok("portable attach foobar.raw && portable detach foobar.raw");
    foobar_reset(tb);
}
