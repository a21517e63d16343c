//! Many at once (issue 18): several machines started and powered off in
//! one call, each failure named while the others go on; health-gated
//! fleet steps, whose failing, hanging or hostile health command puts the
//! host back as it was.

use std::sync::Arc;
use std::time::Instant;

use libtest_mimic::Trial;

use crate::testbed::{Testbed, images};
use crate::{Shared, exclusive_trial};

pub fn trials(shared: &Arc<Shared>) -> Vec<Trial> {
    vec![
        exclusive_trial(shared, "many::a_failing_or_hanging_health_check_rolls_the_upgrade_back", health),
        exclusive_trial(shared, "many::a_start_of_several_machines_names_the_broken_one_and_starts_the_rest", several),
    ]
}

fn reset(tb: &Testbed) {
    tb.ok("systemctl stop 'foobar*' 2>/dev/null; systemctl disable foobar.service 2>/dev/null; \
         rm -rf /etc/systemd/system.attached/foobar* /run/systemd/system.attached/foobar* /etc/portables/foobar* /run/portables/foobar* /etc/systemd/system/foobar* /etc/systemd/system/*.wants/foobar* /var/lib/wharf/fleet.json \
         /srv/many; mkdir -p /srv/many; systemctl daemon-reload; systemctl reset-failed; true");
}

/// The fleet file: foobar at `image`, healthy only when it is version 1
/// (the check reads the image's own os-release, inside its sandbox).
fn fleet(tb: &Testbed, image: &str, health: &str, timeout: &str) {
    let body = format!(
        "[[portable]]\nimage = \"{image}\"\nrunning = true\nhealth = {health}\nhealth-timeout = \"{timeout}\"\n"
    );
    std::fs::write(tb.host_path("/srv/many/host.toml"), body).unwrap();
}

const VERSION_1: &str = r#"["/usr/bin/busybox", "grep", "-q", "VERSION_ID=1", "/usr/lib/os-release"]"#;

/// No health check unit and no process of one is left.
fn nothing_left(tb: &Testbed) {
    let units = tb.ok("systemctl list-units --all --no-legend --plain 'wharf-health-*' | wc -l");
    assert_eq!(units.trim(), "0", "health check units left: {}", tb.sh("systemctl list-units --all 'wharf-health-*'"));
    // (The bracket keeps the pattern from matching the shell that runs pgrep.)
    tb.fails("pgrep -f 'busybox slee[p] 600'");
}

fn health(tb: &Testbed) {
    reset(tb);
    for version in ["1", "2"] {
        images::foobar(&tb.host_path(&format!("/srv/many/foobar_{version}.raw")), "squashfs", version).unwrap();
    }
    fleet(tb, "foobar_1.raw", VERSION_1, "5s");
    let out = tb.ok("portable apply /srv/many/host.toml");
    assert!(out.contains("attach /srv/many/foobar_1.raw") && out.ends_with("Applied.\n"), "{out}");
    nothing_left(tb);

    // Version 2 is unhealthy: the apply fails and version 1 runs again.
    fleet(tb, "foobar_2.raw", VERSION_1, "2s");
    let out = tb.fails("portable apply /srv/many/host.toml");
    assert_eq!(
        out.stderr.trim(),
        "portable: foobar.service: its health command did not succeed within 2 s (status 1); \
         everything this apply changed was put back"
    );
    let root = tb.ok("systemctl show -p RootImage --value foobar.service");
    assert_eq!(root.trim(), "/srv/many/foobar_1.raw");
    assert_eq!(tb.ok("systemctl is-active foobar.service").trim(), "active");
    // ...and healthy: the same check, inside its sandbox, passes.
    let pid = tb.ok("systemctl show -p MainPID --value foobar.service");
    tb.ok(&format!("nsenter -t {} -m /usr/bin/busybox grep -q VERSION_ID=1 /usr/lib/os-release", pid.trim()));
    fleet(tb, "foobar_1.raw", VERSION_1, "5s");
    assert_eq!(tb.ok("portable apply /srv/many/host.toml").trim(), "No changes: the host is as the fleet file says.");
    nothing_left(tb);

    // A check that hangs is killed when its time is up, with all it started.
    fleet(tb, "foobar_2.raw", r#"["/usr/bin/busybox", "sleep", "600"]"#, "2s");
    let started = Instant::now();
    let out = tb.fails("portable apply /srv/many/host.toml");
    let took = started.elapsed();
    assert!(
        out.stderr
            .contains("its health command did not succeed within 2 s (it was still running when its time was up)"),
        "{out}"
    );
    assert!(took.as_secs() < 20, "a 2 s check took {took:?}");
    assert_eq!(tb.ok("systemctl show -p RootImage --value foobar.service").trim(), "/srv/many/foobar_1.raw");
    nothing_left(tb);

    // Hostile entries: refused in one line before anything runs.
    let before = tb.ok("systemctl show -p MainPID --value foobar.service");
    for (health, reason) in [
        (r#""busybox true""#, "'busybox' is not an absolute path"),
        (r#"["/usr/bin/busybox", "a\u0000b"]"#, "a word holds a NUL or line break"),
        (r#""""#, "health is empty"),
    ] {
        fleet(tb, "foobar_2.raw", health, "2s");
        let out = tb.fails("portable apply /srv/many/host.toml");
        assert_eq!(out.stderr.lines().count(), 1, "{out}");
        assert!(out.stderr.starts_with("portable: /srv/many/host.toml: [[portable]] #1 (foobar_2.raw): "), "{out}");
        assert!(out.stderr.contains(reason), "{out}");
    }
    assert_eq!(tb.ok("systemctl show -p MainPID --value foobar.service"), before, "nothing was touched");
    nothing_left(tb);
    reset(tb);
}

fn several(tb: &Testbed) {
    crate::machine::prepare(tb);
    tb.ok("rm -rf /var/lib/machines/brk && mkdir -p /var/lib/machines/brk/etc && echo ID=x > /var/lib/machines/brk/etc/os-release");
    // As systemctl start of several units: each is started on its own; the
    // broken one is named, the others run.
    let out = tb.fails("machine start f28 brk");
    assert_eq!(
        out.stderr.trim(),
        "machine: machine 'brk': the image has no init (/usr/lib/systemd/systemd, /lib/systemd/systemd, /sbin/init)"
    );
    assert_eq!(out.stdout.trim(), "Machine f28 is running (wharf-f28.service); its init reported ready.");
    let leader = crate::machine::leader(tb, "f28");
    crate::machine::assert_running_inside(tb, &leader, "wharf-f28");
    tb.fails("machinectl show brk");
    tb.fails("systemctl status wharf-brk.service");

    // Powering off both: f28 goes, brk is named as not running.
    let out = tb.fails("machine poweroff f28 brk");
    assert_eq!(out.stderr.trim(), "machine: machine 'brk' is not running");
    tb.fails("machinectl show f28");
    tb.ok("rm -rf /var/lib/machines/brk");
}
