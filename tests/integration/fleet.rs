//! Fleet apply in the testbed: plan and check mode, idempotence, upgrades,
//! all-or-nothing rollback, and what apply may detach.

use std::sync::Arc;

use libtest_mimic::Trial;

use crate::testbed::{Testbed, images};
use crate::{Shared, exclusive_trial};

pub fn trials(shared: &Arc<Shared>) -> Vec<Trial> {
    vec![
        exclusive_trial(shared, "fleet::apply_plans_checks_and_is_idempotent", apply_and_reapply),
        exclusive_trial(shared, "fleet::an_upgrade_that_fails_is_rolled_back", failed_upgrade),
        exclusive_trial(shared, "fleet::a_failed_apply_leaves_no_enablement_link", failed_enable),
        exclusive_trial(shared, "fleet::apply_detaches_only_its_own_images_unless_pruning", removal),
        exclusive_trial(shared, "fleet::bad_fleet_files_change_nothing", bad_files),
        exclusive_trial(shared, "fleet::check_mode_writes_no_decompressed_image", xz_check),
        exclusive_trial(shared, "fleet::machines_are_imported_started_limited_and_health_gated", machines),
        exclusive_trial(shared, "fleet::a_killed_apply_is_put_back_with_its_units_and_machines", killed_apply),
    ]
}

fn reset(tb: &Testbed) {
    tb.ok("systemctl stop 'foobar*' 2>/dev/null; systemctl disable foobar.service 2>/dev/null; \
         rm -rf /etc/systemd/system.attached/foobar* /run/systemd/system.attached/foobar* /etc/portables/foobar* /run/portables/foobar* /etc/systemd/system/foobar* /run/systemd/system/foobar* /etc/systemd/system/*.wants/foobar* \
         /var/lib/portables/* /var/lib/wharf/fleet.json /srv/fleet; mkdir -p /srv/fleet; systemctl daemon-reload; \
         systemctl reset-failed; true");
}

fn image(tb: &Testbed, name: &str, version: &str) {
    images::foobar(&tb.host_path(&format!("/srv/fleet/{name}")), "squashfs", version).unwrap();
}

fn fleet_file(tb: &Testbed, body: &str) {
    std::fs::write(tb.host_path("/srv/fleet/host.toml"), body).unwrap();
}

fn foobar(image: &str) -> String {
    format!(
        "[[portable]]\nimage = \"{image}\"\nenabled = true\nrunning = true\n[portable.properties]\nMemoryMax = \"256M\"\n"
    )
}

fn show(tb: &Testbed, property: &str) -> String {
    tb.ok(&format!("systemctl show -p {property} --value foobar.service")).trim().to_string()
}

fn apply_and_reapply(tb: &Testbed) {
    reset(tb);
    image(tb, "foobar_1.raw", "1");
    fleet_file(tb, &foobar("foobar_1.raw"));

    let check = tb.sh("portable apply --check /srv/fleet/host.toml");
    assert_eq!(check.code, Some(2), "{check}");
    assert_eq!(
        check.stdout,
        "  1. attach /srv/fleet/foobar_1.raw (profile default)\n  2. enable foobar.service\n  3. start foobar.service\n(check: nothing was changed)\n"
    );
    assert_eq!(tb.sh("systemctl is-active foobar.service").stdout.trim(), "inactive");

    let json = tb.ok("portable apply --json /srv/fleet/host.toml");
    let result: serde_json::Value = serde_json::from_str(&json).unwrap();
    assert_eq!((result["changed"].as_bool(), result["applied"].as_bool()), (Some(true), Some(true)));
    assert_eq!(result["plan"]["steps"][0]["action"], "attach");
    assert_eq!(show(tb, "ActiveState"), "active");
    assert_eq!(show(tb, "MemoryMax"), "268435456");
    assert_eq!(tb.ok("systemctl is-enabled foobar.service").trim(), "enabled");

    // Again: nothing to do, and check mode says so with exit status 0.
    assert_eq!(tb.ok("portable apply /srv/fleet/host.toml").trim(), "No changes: the host is as the fleet file says.");
    assert_eq!(tb.sh("portable apply --check /srv/fleet/host.toml").code, Some(0));

    // A new version: reattached, restarted on it.
    image(tb, "foobar_2.raw", "2");
    fleet_file(tb, &foobar("foobar_2.raw"));
    let out = tb.ok("portable apply /srv/fleet/host.toml");
    assert!(out.contains("reattach /srv/fleet/foobar_1.raw -> /srv/fleet/foobar_2.raw"), "{out}");
    assert!(out.contains("restart foobar.service"), "{out}");
    assert_eq!(show(tb, "RootImage"), "/srv/fleet/foobar_2.raw");
    assert_eq!(tb.sh("portable apply --check /srv/fleet/host.toml").code, Some(0));

    // Other prefixes: the units they leave out are stopped, disabled and
    // detached; the image stays attached with the units they select.
    let tree = tb.host_path("/srv/fleet/foobar_5");
    images::foobar(&tree, "dir", "5").unwrap();
    let os = tree.join("usr/lib/os-release");
    let text = std::fs::read_to_string(&os)
        .unwrap()
        .replace("PORTABLE_PREFIXES=foobar", "PORTABLE_PREFIXES=\"foobar foobar-hello\"");
    std::fs::write(&os, text).unwrap();
    fleet_file(tb, &foobar("foobar_5"));
    tb.ok("portable apply /srv/fleet/host.toml");
    fleet_file(tb, "[[portable]]\nimage = \"foobar_5\"\nprefixes = [\"foobar-hello\"]\n");
    let out = tb.ok("portable apply /srv/fleet/host.toml");
    assert_eq!(
        out,
        "  1. stop foobar.service\n  2. disable foobar.service\n  3. refresh /srv/fleet/foobar_5 (profile default) (settings changed)\nApplied.\n"
    );
    tb.fails("test -e /etc/systemd/system/foobar.service");
    tb.ok("test -e /etc/systemd/system/foobar-hello.service");
    assert_eq!(tb.sh("systemctl is-active foobar.service").stdout.trim(), "inactive");
    assert_eq!(tb.sh("portable apply --check /srv/fleet/host.toml").code, Some(0));
    reset(tb);
}

fn failed_upgrade(tb: &Testbed) {
    reset(tb);
    image(tb, "foobar_1.raw", "1");
    fleet_file(tb, &foobar("foobar_1.raw"));
    tb.ok("portable apply /srv/fleet/host.toml");
    // The links too: apply makes and removes them in its transaction.
    let listing = || tb.unit_files("foobar* multi-user.target.wants/foobar*") + &tb.ok("cat /var/lib/wharf/fleet.json");
    let before = listing();
    assert!(
        before.lines().any(|l| l.contains(" multi-user.target.wants/foobar.service ")
            && l.ends_with(" /etc/systemd/system/foobar.service")),
        "{before}"
    );

    // Version 3's service cannot start.
    let broken = tb.host_path("/srv/fleet/foobar_3");
    images::foobar(&broken, "dir", "3").unwrap();
    let unit = broken.join("usr/lib/systemd/system/foobar.service");
    let text = std::fs::read_to_string(&unit).unwrap().replace("/usr/bin/busybox httpd", "/usr/bin/missing httpd");
    std::fs::write(&unit, text).unwrap();
    fleet_file(tb, &foobar("foobar_3"));
    let out = tb.fails("portable apply /srv/fleet/host.toml");
    assert!(out.stderr.contains("foobar.service"), "{out}");
    assert!(out.stderr.ends_with("everything this apply changed was put back\n"), "{out}");
    assert_eq!(out.stderr.lines().count(), 1, "{out}");
    let after = listing();
    assert_eq!(after, before);
    assert_eq!(tb.ok("ls -A /var/lib/wharf/transactions").trim(), "", "a journal was left");
    assert_eq!(show(tb, "ActiveState"), "active");
    assert_eq!(show(tb, "RootImage"), "/srv/fleet/foobar_1.raw");
    assert_ne!(show(tb, "MainPID"), "0");
    reset(tb);
}

/// An image whose service cannot start, applied enabled and running: the
/// apply fails, and no unit, link, record or journal is left, nor does
/// systemd see the unit enabled.
fn failed_enable(tb: &Testbed) {
    reset(tb);
    let broken = tb.host_path("/srv/fleet/foobar_4");
    images::foobar(&broken, "dir", "4").unwrap();
    let unit = broken.join("usr/lib/systemd/system/foobar.service");
    let text = std::fs::read_to_string(&unit).unwrap().replace("/usr/bin/busybox httpd", "/usr/bin/missing httpd");
    std::fs::write(&unit, text).unwrap();
    fleet_file(tb, &foobar("foobar_4"));
    let check = tb.sh("portable apply --check /srv/fleet/host.toml");
    assert_eq!(
        check.stdout,
        "  1. attach /srv/fleet/foobar_4 (profile default)\n  2. enable foobar.service\n  3. start foobar.service\n(check: nothing was changed)\n",
        "{check}"
    );
    let out = tb.fails("portable apply /srv/fleet/host.toml");
    assert!(out.stderr.contains("foobar.service"), "{out}");
    assert!(out.stderr.ends_with("everything this apply changed was put back\n"), "{out}");
    assert_eq!(out.stderr.lines().count(), 1, "{out}");
    assert_eq!(tb.ok("find /etc/systemd/system /run/systemd/system -name 'foobar*' | sort"), "");
    assert_eq!(tb.ok("ls -A /var/lib/wharf/transactions").trim(), "", "a journal was left");
    tb.fails("test -e /var/lib/wharf/fleet.json");
    let enabled = tb.sh("systemctl is-enabled foobar.service");
    assert_ne!(enabled.code, Some(0), "{enabled}");
    reset(tb);
}

fn removal(tb: &Testbed) {
    reset(tb);
    image(tb, "foobar_1.raw", "1");
    fleet_file(tb, &foobar("foobar_1.raw"));
    tb.ok("portable apply /srv/fleet/host.toml");
    // An image attached by hand, with other units.
    let hand = tb.host_path("/srv/fleet/byhand");
    images::foobar(&hand, "dir", "1").unwrap();
    let units = hand.join("usr/lib/systemd/system");
    std::fs::rename(units.join("foobar-hello.service"), units.join("byhand.service")).unwrap();
    std::fs::remove_file(units.join("foobar.service")).unwrap();
    let os = hand.join("usr/lib/os-release");
    std::fs::write(
        &os,
        std::fs::read_to_string(&os).unwrap().replace("PORTABLE_PREFIXES=foobar", "PORTABLE_PREFIXES=byhand"),
    )
    .unwrap();
    tb.ok("portable attach /srv/fleet/byhand");

    fleet_file(tb, "# nothing\n");
    let out = tb.ok("portable apply /srv/fleet/host.toml");
    assert_eq!(
        out,
        "  1. stop foobar.service\n  2. disable foobar.service\n  3. detach /srv/fleet/foobar_1.raw\nApplied.\n"
    );
    assert_eq!(tb.ok("portable is-attached /srv/fleet/byhand").trim(), "attached");
    let out = tb.ok("portable apply --prune /srv/fleet/host.toml");
    assert!(out.contains("detach /srv/fleet/byhand"), "{out}");
    assert_eq!(tb.sh("portable is-attached /srv/fleet/byhand").stdout.trim(), "detached");
    reset(tb);
}

fn bad_files(tb: &Testbed) {
    reset(tb);
    image(tb, "foobar_1.raw", "1");
    for (body, expected) in [
        (
            "[[portable]]\nimage = \"foobar_1.raw\"\nversion = \"9\"\n",
            "portable: image '/srv/fleet/foobar_1.raw' is version 1, the fleet file wants 9",
        ),
        ("[[portable]]\nimage = \"missing.raw\"\n", "portable: image 'missing.raw' not found in the search path"),
        ("[[portable]]\nimage = \"foobar_1.raw\"\nrunning = perhaps\n", "portable: /srv/fleet/host.toml: line 3:"),
        (
            "[[portable]]\nimage = \"foobar_1.raw\"\nsha256 = \"0000000000000000000000000000000000000000000000000000000000000000\"\n",
            "portable: image '/srv/fleet/foobar_1.raw' has sha256 ",
        ),
        (
            "[[portable]]\nimage = \"foobar_1.raw\"\nprofile = \"strcit\"\n",
            "portable: unknown profile 'strcit' (known: default, nonetwork, strict, trusted)",
        ),
    ] {
        fleet_file(tb, body);
        let out = tb.fails("portable apply /srv/fleet/host.toml");
        assert!(out.stderr.starts_with(expected), "{body}: {out}");
        assert_eq!(out.stderr.lines().count(), 1, "{out}");
        assert_eq!(tb.ok("ls /etc/systemd/system | grep -c foobar || true").trim(), "0");
        tb.fails("test -e /var/lib/wharf/fleet.json");
    }
    let out = tb.sh_nobody("portable apply --check /srv/fleet/host.toml");
    assert!(
        out.stderr.contains("access denied: applying a fleet file needs authorization for org.wharf1.fleet.apply"),
        "{out}"
    );
}

/// Check mode writes nothing, not even the decompressed copy of an xz
/// image; the apply then makes it, and plans with the same path.
/// A sha256 is that of the file as shipped.
fn xz_check(tb: &Testbed) {
    reset(tb);
    images::foobar(&tb.host_path("/srv/fleet/foobar_7.raw.xz"), "xz", "7").unwrap();
    let sum = tb.ok("sha256sum /srv/fleet/foobar_7.raw.xz | cut -d' ' -f1");
    fleet_file(
        tb,
        &format!("[[portable]]\nimage = \"foobar_7.raw.xz\"\nsha256 = \"{}\"\nrunning = true\n", sum.trim()),
    );
    let check = tb.sh("portable apply --check /srv/fleet/host.toml");
    assert_eq!(check.code, Some(2), "{check}");
    assert!(check.stdout.starts_with("  1. attach /var/lib/portables/foobar_7.raw (profile default)\n"), "{check}");
    assert_eq!(tb.ok("ls -A /var/lib/portables").trim(), "", "check mode wrote into the pool");
    let out = tb.ok("portable apply /srv/fleet/host.toml");
    assert!(out.starts_with("  1. attach /var/lib/portables/foobar_7.raw (profile default)\n"), "{out}");
    assert_eq!(show(tb, "RootImage"), "/var/lib/portables/foobar_7.raw");
    assert_eq!(tb.sh("portable apply --check /srv/fleet/host.toml").code, Some(0));
    reset(tb);
}

fn machine_entry(limit: &str, started: bool) -> String {
    format!(
        "[[machine]]\nname = \"fleetm\"\nsource = \"fleetm.tar\"\nstarted = {started}\n[machine.limits]\nMemoryMax = \"{limit}\"\n"
    )
}

fn machines(tb: &Testbed) {
    reset(tb);
    tb.ok("machine poweroff fleetm 2>/dev/null; machine remove fleetm 2>/dev/null; rm -f /etc/wharf/machines/fleetm.toml; true");
    let tarball = images::f28_tarball().unwrap();
    std::fs::copy(&tarball, tb.host_path("/srv/fleet/fleetm.tar")).unwrap();
    fleet_file(tb, &machine_entry("512M", true));

    let out = tb.ok("portable apply /srv/fleet/host.toml");
    assert_eq!(
        out,
        "  1. import machine fleetm from fleetm.tar\n  2. set limits of machine fleetm: MemoryMax=536870912\n  3. start machine fleetm\nApplied.\n"
    );
    assert_eq!(tb.ok("machine shell fleetm systemctl is-system-running").trim(), "running");
    assert_eq!(
        tb.ok("systemctl show -p MemoryMax --value wharf-fleetm.service").trim(),
        "536870912",
        "the settings file's limits apply at start"
    );
    assert_eq!(tb.sh("portable apply --check /srv/fleet/host.toml").code, Some(0), "idempotent");

    // A new limit: kept in the settings file and set live, without a restart.
    let leader = tb.ok("machinectl show fleetm -p Leader --value");
    fleet_file(tb, &machine_entry("256M", true));
    let out = tb.ok("machine apply /srv/fleet/host.toml");
    assert_eq!(out, "  1. set limits of machine fleetm: MemoryMax=268435456\nApplied.\n");
    assert_eq!(tb.ok("systemctl show -p MemoryMax --value wharf-fleetm.service").trim(), "268435456");
    assert_eq!(tb.ok("machinectl show fleetm -p Leader --value"), leader, "restarted");
    assert!(tb.ok("cat /etc/wharf/machines/fleetm.toml").contains("MemoryMax = \"268435456\""));

    fleet_file(tb, &machine_entry("256M", false));
    assert_eq!(tb.ok("portable apply /srv/fleet/host.toml"), "  1. stop machine fleetm\nApplied.\n");

    // A health-gated start: the command runs inside the machine; while it
    // fails, the start is put back (the machine is stopped again).
    let healthy = machine_entry("256M", true).replace(
        "started = true\n",
        "started = true\nhealth = [\"/bin/sh\", \"-c\", \"test -e /etc/healthy\"]\nhealth-timeout = \"3s\"\n",
    );
    fleet_file(tb, &healthy);
    let out = tb.fails("portable apply /srv/fleet/host.toml");
    // On a loaded machine the last try may still be running at the deadline.
    let said = |why: &str| {
        format!(
            "portable: machine fleetm: its health command did not succeed within 3 s ({why}); \
             everything this apply changed was put back"
        )
    };
    let reasons = [said("status 1"), said("it was still running when its time was up")];
    assert!(reasons.contains(&out.stderr.trim().to_string()), "{out}");
    assert!(!tb.ok("machinectl list --no-legend").contains("fleetm"), "the unhealthy start was put back");
    tb.ok("touch /var/lib/machines/fleetm/etc/healthy");
    assert_eq!(tb.ok("portable apply /srv/fleet/host.toml"), "  1. start machine fleetm\nApplied.\n");
    assert_eq!(tb.ok("machine shell fleetm systemctl is-system-running").trim(), "running");
    fleet_file(tb, &machine_entry("256M", false));
    assert_eq!(tb.ok("portable apply /srv/fleet/host.toml"), "  1. stop machine fleetm\nApplied.\n");
    tb.ok("rm /var/lib/machines/fleetm/etc/healthy");

    // Enabled and disabled by links in the transaction, as systemctl makes them.
    let enabled = |on: bool| {
        machine_entry("256M", false).replace("started = false\n", &format!("started = false\nenabled = {on}\n"))
    };
    fleet_file(tb, &enabled(true));
    assert_eq!(tb.ok("portable apply /srv/fleet/host.toml"), "  1. enable machine fleetm\nApplied.\n");
    assert_eq!(tb.ok("systemctl is-enabled wharf-machine@fleetm.service").trim(), "enabled");
    let link = tb.ok("readlink /etc/systemd/system/machines.target.wants/wharf-machine@fleetm.service");
    assert!(link.trim().ends_with("/wharf-machine@.service"), "{link}");
    assert_eq!(tb.sh("portable apply --check /srv/fleet/host.toml").code, Some(0), "idempotent");
    fleet_file(tb, &enabled(false));
    assert_eq!(tb.ok("portable apply /srv/fleet/host.toml"), "  1. disable machine fleetm\nApplied.\n");
    tb.fails("test -L /etc/systemd/system/machines.target.wants/wharf-machine@fleetm.service");
    assert_ne!(tb.sh("systemctl is-enabled wharf-machine@fleetm.service").stdout.trim(), "enabled");

    // A machine that cannot boot: the apply fails, and what it imported is gone again.
    tb.ok("mkdir -p /srv/fleet/noinit/etc && echo ID=x > /srv/fleet/noinit/etc/os-release && tar -C /srv/fleet/noinit -cf /srv/fleet/noinit.tar .");
    fleet_file(tb, "[[machine]]\nname = \"noinit\"\nsource = \"noinit.tar\"\nstarted = true\n");
    let out = tb.fails("portable apply /srv/fleet/host.toml");
    assert_eq!(
        out.stderr.trim(),
        "portable: machine 'noinit': the image has no init (/usr/lib/systemd/systemd, /lib/systemd/systemd, /sbin/init); everything this apply changed was put back"
    );
    tb.fails("test -e /var/lib/machines/noinit");
    assert!(!tb.ok("machinectl list --no-legend").contains("fleetm"));
    tb.ok("machine remove fleetm; rm -f /etc/wharf/machines/fleetm.toml");
    reset(tb);
}

/// Polls `condition` (a shell test) in the testbed every 0.1 s, for at most
/// 60 s; whether it came true.
fn eventually(tb: &Testbed, condition: &str) -> bool {
    tb.sh(&format!("for i in $(seq 600); do {condition} && exit 0; sleep 0.1; done; exit 1")).success()
}

/// wharfd killed with SIGKILL in the middle of an apply, after it stopped a
/// machine and while it stops a unit (whose stop waits for the test): at
/// its next start, wharfd puts the files back, starts the unit and the
/// machine again, and no journal is left.
fn killed_apply(tb: &Testbed) {
    reset(tb);
    tb.ok("machine poweroff fleetm 2>/dev/null; machine remove fleetm 2>/dev/null; rm -f /etc/wharf/machines/fleetm.toml; true");
    std::fs::copy(images::f28_tarball().unwrap(), tb.host_path("/srv/fleet/fleetm.tar")).unwrap();
    image(tb, "foobar_1.raw", "1");
    fleet_file(tb, &format!("{}{}", foobar("foobar_1.raw"), machine_entry("512M", true)));
    tb.ok("portable apply /srv/fleet/host.toml");
    let before = tb.unit_files("/etc/systemd/system/foobar*");
    // A stop that lasts until the test kills it (its control process).
    tb.ok("mkdir -p /run/systemd/system/foobar.service.d && \
         printf '[Service]\\nExecStop=/usr/bin/busybox sleep 600\\n' \
           > /run/systemd/system/foobar.service.d/50-held.conf && systemctl daemon-reload");

    fleet_file(tb, &machine_entry("512M", false));
    tb.ok("rm -f /tmp/apply.rc; setsid sh -c 'portable apply /srv/fleet/host.toml >/tmp/apply.out 2>&1; echo $? >/tmp/apply.rc' \
           </dev/null >/dev/null 2>&1 &");
    assert!(
        eventually(tb, "[ \"$(systemctl show -p ActiveState --value foobar.service)\" = deactivating ]"),
        "the apply never came to stopping foobar.service: {}",
        tb.sh("systemctl status foobar.service; cat /tmp/apply.out")
    );
    assert!(!tb.ok("machinectl list --no-legend").contains("fleetm"), "the machine is stopped first");
    tb.ok("pid=$(systemctl show -p MainPID --value wharfd.service); [ \"$pid\" -gt 0 ] && kill -KILL $pid && \
           while [ \"$(systemctl show -p MainPID --value wharfd.service)\" = \"$pid\" ]; do sleep 0.01; done; \
           systemctl reset-failed wharfd.service 2>/dev/null; systemctl kill --kill-whom=control -s KILL foobar.service");
    assert!(eventually(tb, "test -e /tmp/apply.rc"), "the client did not end");
    assert_ne!(tb.ok("cat /tmp/apply.rc").trim(), "0", "the apply was cut short");

    // The next call starts wharfd, which recovers before it answers.
    // The call that starts wharfd again, while systemd restarts it, is
    // answered (it once got lost between the name and the object server).
    let listed = tb.sh("portable list >/dev/null");
    assert!(listed.success(), "{listed}\n{}", tb.sh("journalctl -u wharfd -n 15 --no-pager"));
    assert_eq!(tb.ok("ls /var/lib/wharf/transactions"), "", "no journal is left");
    assert_eq!(tb.unit_files("/etc/systemd/system/foobar*"), before);
    assert!(
        eventually(tb, "systemctl is-active -q foobar.service"),
        "foobar.service was not started again: {}",
        tb.sh("systemctl status foobar.service; journalctl -u wharfd -n 20 --no-pager")
    );
    assert!(
        eventually(tb, "machinectl show fleetm -p State --value 2>/dev/null | grep -qx running"),
        "machine fleetm was not started again: {}",
        tb.sh("journalctl -u wharfd -n 30 --no-pager")
    );
    assert!(tb.ok("journalctl -u wharfd --no-pager").contains("recovered 1 interrupted operation(s)"));
    assert_eq!(tb.sh("portable apply --check /srv/fleet/host.toml").code, Some(2), "the stop is still to do");

    tb.ok("rm -rf /run/systemd/system/foobar.service.d && systemctl daemon-reload");
    assert_eq!(
        tb.ok("portable apply /srv/fleet/host.toml"),
        "  1. stop machine fleetm\n  2. stop foobar.service\n  3. disable foobar.service\n  4. detach /srv/fleet/foobar_1.raw\nApplied.\n"
    );
    tb.ok("machine remove fleetm; rm -f /etc/wharf/machines/fleetm.toml");
    reset(tb);
}
