//! Crash safety under fire: the real wharfd is killed with SIGKILL at random
//! moments of attach, attach --enable, detach, reattach and batch attach of
//! directory, raw and xz images, and after every kill the next command must
//! succeed and the host must be consistent (each image fully attached or
//! fully detached, no temporaries, no dangling enablement links, no journal
//! left once wharfd answered again).
//!
//! The kill moments are spread over each operation's measured duration and
//! drawn from a seed that is printed; `WHARF_KILL_SEED=N` replays a run and
//! `WHARF_KILL_RUNS=N` sets the number of kills (default 100).

use std::fmt::Write as _;
use std::sync::Arc;
use std::time::Instant;

use libtest_mimic::Trial;

use crate::testbed::Testbed;
use crate::{Shared, exclusive_trial, testbed};

pub fn trials(shared: &Arc<Shared>) -> Vec<Trial> {
    vec![
        exclusive_trial(shared, "crash::sigkill_at_random_moments_leaves_the_host_consistent", kill_at_random),
        exclusive_trial(shared, "crash::a_fresh_install_works_before_tmpfiles_ran", fresh_install),
        exclusive_trial(shared, "crash::enablement_links_are_what_systemd_would_make", enablement),
    ]
}

const UNIT_DIRS: [&str; 2] = ["/etc/systemd/system", "/run/systemd/system"];
const POOL: &str = "/var/lib/portables";

/// The units of each image family, attached together or not at all.
const FOOBAR_UNITS: [&str; 2] = ["foobar-hello.service", "foobar.service"];
const BATCH_UNITS: [&str; 3] = ["alpha.service", "beta.service", "gamma.service"];

/// One operation to kill: what must hold before it, and the command.
struct Scenario {
    name: &'static str,
    /// Run (and must succeed) on a host with nothing attached.
    setup: &'static str,
    command: &'static str,
    /// The image (marker path) each family has once the command succeeded;
    /// the image before it is the one `setup` attached (or none).
    after: &'static [&'static str],
    before: &'static [&'static str],
}

const SCENARIOS: &[Scenario] = &[
    Scenario {
        name: "attach dir",
        setup: "",
        command: "portable attach foobar_1",
        after: &["/var/lib/portables/foobar_1"],
        before: &[],
    },
    Scenario {
        name: "attach raw",
        setup: "",
        command: "portable attach foobar_1.raw",
        after: &["/var/lib/portables/foobar_1.raw"],
        before: &[],
    },
    Scenario {
        name: "attach xz",
        // Decompressed into the pool afresh each time, so that kills land in it too.
        setup: "rm -f /var/lib/portables/foobar_3.raw",
        command: "portable attach /srv/crash/foobar_3.raw.xz",
        after: &["/var/lib/portables/foobar_3.raw"],
        before: &[],
    },
    Scenario {
        name: "attach --enable dir",
        setup: "",
        command: "portable attach --enable foobar_1",
        after: &["/var/lib/portables/foobar_1"],
        before: &[],
    },
    Scenario {
        name: "attach --enable --now raw",
        setup: "",
        command: "portable attach --enable --now foobar_1.raw",
        after: &["/var/lib/portables/foobar_1.raw"],
        before: &[],
    },
    Scenario {
        name: "detach enabled dir",
        setup: "portable attach --enable --now foobar_1 >/dev/null",
        command: "portable detach --now foobar_1",
        after: &[],
        before: &["/var/lib/portables/foobar_1"],
    },
    Scenario {
        name: "detach enabled raw",
        setup: "portable attach --enable --now foobar_1.raw >/dev/null",
        command: "portable detach --now foobar_1.raw",
        after: &[],
        before: &["/var/lib/portables/foobar_1.raw"],
    },
    Scenario {
        name: "reattach dir",
        setup: "portable attach --enable --now foobar_1 >/dev/null",
        command: "portable reattach --enable foobar_2",
        after: &["/var/lib/portables/foobar_2"],
        before: &["/var/lib/portables/foobar_1"],
    },
    Scenario {
        name: "reattach raw",
        setup: "portable attach --now foobar_1.raw >/dev/null",
        command: "portable reattach --now foobar_2.raw",
        after: &["/var/lib/portables/foobar_2.raw"],
        before: &["/var/lib/portables/foobar_1.raw"],
    },
    Scenario {
        name: "batch attach dir+raw+xz",
        setup: "rm -f /var/lib/portables/gamma.raw",
        command: "portable attach --batch alpha beta.raw /srv/crash/gamma.raw.xz",
        after: &["/var/lib/portables/alpha", "/var/lib/portables/beta.raw", "/var/lib/portables/gamma.raw"],
        before: &[],
    },
];

/// A small deterministic generator (splitmix64): the kill moments must be
/// replayable from the printed seed.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }
}

fn env_number(name: &str) -> Option<u64> {
    let value = std::env::var(name).ok()?;
    Some(value.trim().parse().unwrap_or_else(|_| panic!("{name}={value:?} is not a number")))
}

fn kill_at_random(tb: &Testbed) {
    let seed = env_number("WHARF_KILL_SEED").unwrap_or_else(|| {
        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(1, |d| d.as_nanos() as u64)
    });
    let runs = env_number("WHARF_KILL_RUNS").unwrap_or(100);
    testbed::note(&format!("crash: {runs} kills, WHARF_KILL_SEED={seed}"));
    let mut rng = Rng(seed);

    force_clean(tb);
    build_images(tb);

    // Un-killed runs first: how long each operation takes, to spread the
    // kills over it, and proof that each one works when nothing kills it.
    let durations: Vec<u64> = SCENARIOS
        .iter()
        .map(|scenario| {
            let mut longest = 0;
            for _ in 0..2 {
                prepare(tb, scenario);
                let out = tb.ok(&format!(
                    "s=$(date +%s%N); {} >/dev/null; e=$(date +%s%N); echo $(( (e - s) / 1000 ))",
                    scenario.command
                ));
                longest = longest.max(out.trim().parse::<u64>().unwrap());
                let state = check(tb);
                assert!(state.problems.is_empty(), "{}: un-killed run left {:?}", scenario.name, state.problems);
                assert_eq!(state.images, sorted(scenario.after), "{}: un-killed run", scenario.name);
                detach_all(tb).unwrap();
            }
            testbed::note(&format!("crash: {} takes {} ms", scenario.name, longest / 1000));
            longest
        })
        .collect();

    let started = Instant::now();
    let mut failures: Vec<String> = Vec::new();
    let mut mid_operation = 0;
    for run in 0..runs {
        let index = rng.below(SCENARIOS.len() as u64) as usize;
        let scenario = &SCENARIOS[index];
        // A little past the measured end, so that kills just after a commit count too.
        let delay_us = rng.below(durations[index] * 11 / 10 + 1);
        let label =
            format!("kill {run} ({}, after {:.1} ms, WHARF_KILL_SEED={seed})", scenario.name, delay_us as f64 / 1000.0);

        prepare(tb, scenario);
        let killed = tb.sh(&format!(
            "portable list >/dev/null || exit 90
             pid=$(systemctl show -p MainPID --value wharfd.service)
             [ \"$pid\" -gt 0 ] || exit 91
             {cmd} >/tmp/crash.out 2>&1 &
             client=$!
             sleep {delay}
             kill -KILL $pid
             wait $client; code=$?
             # Until systemd has seen it die, a call could still reach the old name.
             while [ \"$(systemctl show -p MainPID --value wharfd.service)\" = \"$pid\" ]; do sleep 0.01; done
             systemctl reset-failed wharfd.service 2>/dev/null
             echo $code",
            cmd = scenario.command,
            delay = format_args!("{}.{:06}", delay_us / 1_000_000, delay_us % 1_000_000),
        ));
        assert!(killed.success(), "{label}: could not run the kill: {killed}");
        let client_code: i32 = killed.stdout.trim().parse().unwrap();
        if client_code != 0 {
            mid_operation += 1;
        }

        // The next call starts a fresh wharfd, which recovers before it answers.
        let next = tb.sh("portable list");
        if !next.success() {
            failures.push(format!("{label}: the next command failed: {next}"));
            force_clean(tb);
            continue;
        }
        let state = check(tb);
        let mut problems = state.problems.clone();
        let expected_after = sorted(scenario.after);
        let expected_before = sorted(scenario.before);
        if state.images != expected_after && state.images != expected_before {
            problems.push(format!(
                "attached images {:?} are neither the state before ({expected_before:?}) nor after ({expected_after:?})",
                state.images
            ));
        }
        if client_code == 0 && state.images != expected_after {
            problems.push(format!("the client was told it succeeded, yet {:?} is attached", state.images));
        }
        if !problems.is_empty() {
            let client = tb.sh("cat /tmp/crash.out").stdout;
            failures.push(format!("{label}: {}\n    client said: {}", problems.join("; "), client.trim()));
            force_clean(tb);
            continue;
        }
        if let Err(e) = detach_all(tb) {
            failures.push(format!("{label}: detaching afterwards failed: {e}"));
            force_clean(tb);
            continue;
        }
        // Every tenth kill: an attach made now survives a restart of wharfd
        // (no journal left to roll it back at the next start).
        if run % 10 == 9 {
            tb.ok("portable attach foobar_1.raw >/dev/null && systemctl restart wharfd.service");
            let state = check(tb);
            if state.images != ["/var/lib/portables/foobar_1.raw"] || !state.problems.is_empty() {
                failures.push(format!("{label}: an attach did not survive a restart: {state:?}"));
                force_clean(tb);
            } else if let Err(e) = detach_all(tb) {
                failures.push(format!("{label}: detaching after the restart failed: {e}"));
                force_clean(tb);
            }
        }
    }
    testbed::note(&format!(
        "crash: {runs} kills ({mid_operation} interrupted the client) in {:.0} s, {} inconsistent (WHARF_KILL_SEED={seed})",
        started.elapsed().as_secs_f64(),
        failures.len()
    ));
    force_clean(tb);
    tb.ok("rm -rf /srv/crash /var/lib/portables/*");
    assert!(
        failures.is_empty(),
        "{} of {runs} kills left the host inconsistent:\n{}",
        failures.len(),
        failures.join("\n")
    );
}

/// Right after `meson install` on a running host, tmpfiles has not made
/// wharf's directories yet: wharfd's unit makes them, so the first attach
/// works (under ProtectSystem=strict, wharfd could not make them itself).
fn fresh_install(tb: &Testbed) {
    force_clean(tb);
    testbed::images::foobar(&tb.host_path("/srv/fresh/foobar_1"), "dir", "1").unwrap();
    tb.ok("systemctl stop wharfd.service && rm -rf /var/lib/wharf /var/lib/portables /run/wharf");
    let out = tb.ok("portable attach /srv/fresh/foobar_1");
    assert!(out.contains("/etc/systemd/system/foobar.service"), "{out}");
    assert_eq!(
        tb.ok("stat -c '%a %U' /var/lib/wharf/transactions /var/lib/portables /run/wharf"),
        "755 root\n755 root\n755 root\n"
    );
    tb.ok("portable detach /srv/fresh/foobar_1 && rm -rf /srv/fresh");
    assert!(check(tb).problems.is_empty());
}

/// wharf writes the enablement links itself (in its transaction): systemd
/// must see them as its own, in /etc and, for a runtime attach, in /run.
fn enablement(tb: &Testbed) {
    force_clean(tb);
    testbed::images::foobar(&tb.host_path("/var/lib/portables/foobar_1.raw"), "squashfs", "1").unwrap();
    for (flags, dir, state) in [("", "/etc", "enabled"), ("--runtime", "/run", "enabled-runtime")] {
        tb.ok(&format!("portable attach --enable {flags} foobar_1.raw"));
        let link = format!("{dir}/systemd/system/multi-user.target.wants/foobar.service");
        assert_eq!(tb.ok(&format!("readlink {link}")).trim(), format!("{dir}/systemd/system/foobar.service"));
        assert_eq!(tb.ok("systemctl is-enabled foobar.service").trim(), state);
        assert_eq!(tb.ok("systemctl show -p WantedBy --value foobar.service").trim(), "multi-user.target");
        assert!(tb.ok("systemctl show -p Wants --value multi-user.target").contains("foobar.service"));
        let json: serde_json::Value = serde_json::from_str(&tb.ok("portable is-attached --json foobar_1.raw")).unwrap();
        assert_eq!(json["state"], state, "{json}");
        // foobar-hello.service has no [Install]: nothing links it.
        assert_eq!(
            tb.ok("find /etc/systemd/system /run/systemd/system -name foobar-hello.service -path '*.wants/*'"),
            ""
        );
        tb.ok("portable detach foobar_1.raw");
        assert!(!tb.sh(&format!("test -L {link}")).success(), "{link} left behind");
        assert_ne!(tb.sh("systemctl is-enabled foobar.service").stdout.trim(), state);
    }
    assert!(check(tb).problems.is_empty());
    tb.ok("rm -f /var/lib/portables/foobar_1.raw");
}

fn sorted(images: &[&str]) -> Vec<String> {
    let mut images: Vec<String> = images.iter().map(|s| s.to_string()).collect();
    images.sort();
    images
}

/// Brings the host to the state `scenario` starts from.
fn prepare(tb: &Testbed, scenario: &Scenario) {
    if !scenario.setup.is_empty() {
        tb.ok(scenario.setup);
    }
}

/// The images the test uses: foobar 1 and 2 as directory and squashfs,
/// foobar 3 as xz, and alpha (dir), beta (raw), gamma (xz) with units of
/// their own for the batch.
fn build_images(tb: &Testbed) {
    for (name, format, version) in [
        ("foobar_1", "dir", "1"),
        ("foobar_2", "dir", "2"),
        ("foobar_1.raw", "squashfs", "1"),
        ("foobar_2.raw", "squashfs", "2"),
    ] {
        testbed::images::foobar(&tb.host_path(&format!("{POOL}/{name}")), format, version).unwrap();
    }
    testbed::images::foobar(&tb.host_path("/srv/crash/foobar_3.raw.xz"), "xz", "3").unwrap();
    for name in ["alpha", "beta", "gamma"] {
        testbed::images::foobar_as(&tb.host_path(&format!("/srv/crash/{name}")), name, "foobar.service").unwrap();
    }
    // Built on the host: the testbed has no mksquashfs.
    let crash = tb.host_path("/srv/crash");
    let host = |args: &[&str]| {
        let status = std::process::Command::new(args[0]).args(&args[1..]).current_dir(&crash).status().unwrap();
        assert!(status.success(), "{args:?}: {status}");
    };
    let pool = tb.host_path(POOL);
    host(&["mv", "alpha", &pool.join("alpha").display().to_string()]);
    testbed::images::squashfs(&crash.join("beta"), &pool.join("beta.raw")).unwrap();
    testbed::images::squashfs(&crash.join("gamma"), &crash.join("gamma.raw")).unwrap();
    host(&["xz", "-T0", "gamma.raw"]);
    host(&["rm", "-rf", "beta", "gamma"]);
}

/// What the host looks like: the image each attached unit comes from, and
/// everything that is wrong.
#[derive(Debug, Clone, Default)]
struct HostState {
    /// Images with units attached, sorted.
    images: Vec<String>,
    problems: Vec<String>,
}

fn check(tb: &Testbed) -> HostState {
    let mut script = String::new();
    for dir in UNIT_DIRS {
        let _ = write!(
            script,
            "find {dir} -name '.#wharf-*' -printf 'TEMP %p\\n'
             find {dir} -mindepth 2 -maxdepth 2 \\( -path '*.wants/*' -o -path '*.requires/*' \\) -xtype l -printf 'DANGLING %p\\n'
             for u in {units}; do
               f=0; p=0; m=0; img=
               {{ [ -e {dir}/$u ] || [ -L {dir}/$u ]; }} && f=1
               [ -e {dir}/$u.d/20-portable.conf ] && p=1 && img=$(sed -n \"s/^# Drop-in created by wharf for image '\\(.*\\)', do not edit.$/\\1/p\" {dir}/$u.d/20-portable.conf)
               [ -e {dir}/$u.d/10-profile.conf ] && m=1
               [ $f$p$m = 000 ] || echo \"UNIT {dir}/$u $f$p$m $img\"
               [ -d {dir}/$u.d ] && [ $p = 0 ] && echo \"EMPTYDIR {dir}/$u.d\"
             done
            ",
            units = FOOBAR_UNITS.iter().chain(BATCH_UNITS.iter()).copied().collect::<Vec<_>>().join(" ")
        );
    }
    script.push_str(
        "find /var/lib/portables -maxdepth 1 \\( -name '.#wharf-*' -o -name '.*.part' \\) -printf 'TEMP %p\\n'
         ls -A /var/lib/wharf/transactions 2>/dev/null | sed 's/^/JOURNAL /'\n",
    );
    // A unit still running after its files were rolled back away.
    let _ = write!(
        script,
        "systemctl show -p Id -p LoadState -p ActiveState {units} | \\
           awk -F= '/^Id=/{{u=$2}} /^LoadState=/{{l=$2}} /^ActiveState=/{{a=$2}} \\
                    /^$/{{if (l == \"not-found\" && a != \"inactive\" && a != \"failed\") print \"STRAY \" u \" \" a; u=l=a=\"\"}} \\
                    END{{if (l == \"not-found\" && a != \"inactive\" && a != \"failed\") print \"STRAY \" u \" \" a}}'\n",
        units = FOOBAR_UNITS.iter().chain(BATCH_UNITS.iter()).copied().collect::<Vec<_>>().join(" ")
    );
    let out = tb.ok(&script);
    let mut state = HostState::default();
    let mut units: Vec<(String, String)> = Vec::new();
    for line in out.lines() {
        let mut words = line.splitn(2, ' ');
        let (kind, rest) = (words.next().unwrap_or(""), words.next().unwrap_or(""));
        match kind {
            "TEMP" => state.problems.push(format!("temporary left: {rest}")),
            "DANGLING" => state.problems.push(format!("dangling enablement link: {rest}")),
            "JOURNAL" => state.problems.push(format!("journal left: {rest}")),
            "EMPTYDIR" => state.problems.push(format!("drop-in directory without the attachment: {rest}")),
            "STRAY" => state.problems.push(format!("running without being attached: {rest}")),
            "UNIT" => {
                let mut parts = rest.splitn(3, ' ');
                let (path, present, image) =
                    (parts.next().unwrap_or(""), parts.next().unwrap_or(""), parts.next().unwrap_or(""));
                if present != "111" || image.is_empty() {
                    state.problems.push(format!("{path} half attached (unit, drop-in, profile: {present})"));
                }
                units.push((path.to_string(), image.to_string()));
            }
            _ => state.problems.push(format!("unexpected output: {line}")),
        }
    }
    // A family's units all come from one image.
    for family in [&FOOBAR_UNITS[..], &BATCH_UNITS[..]] {
        let of_family: Vec<&(String, String)> =
            units.iter().filter(|(path, _)| family.iter().any(|u| path.ends_with(&format!("/{u}")))).collect();
        let images: std::collections::BTreeSet<&str> = of_family.iter().map(|(_, image)| image.as_str()).collect();
        let complete = family.len() == 2 && of_family.len() == 2 || family.len() == 3 && !of_family.is_empty();
        if !of_family.is_empty() && (!complete || (family.len() == 2 && images.len() != 1)) {
            state.problems.push(format!("units attached from a mix or a part: {of_family:?}"));
        }
        state.images.extend(images.into_iter().filter(|i| !i.is_empty()).map(str::to_string));
    }
    state.images.sort();
    state.images.dedup();
    if !state.images.is_empty()
        && state.images.iter().any(|i| ["alpha", "beta.raw", "gamma.raw"].iter().any(|n| i.ends_with(&format!("/{n}"))))
        && state.images.len() != 3
    {
        state.problems.push(format!("a batch attached in part: {:?}", state.images));
    }
    state
}

/// Detaches (stopping) every image the drop-ins name: each detach must succeed.
fn detach_all(tb: &Testbed) -> Result<(), String> {
    let out = tb.sh(
        "set -e
         for img in $(sed -n \"s/^# Drop-in created by wharf for image '\\(.*\\)', do not edit.$/\\1/p\" \
                      /etc/systemd/system/*.d/20-portable.conf /run/systemd/system/*.d/20-portable.conf 2>/dev/null | sort -u); do
           portable detach --now \"$img\" >/dev/null
         done",
    );
    if out.success() { Ok(()) } else { Err(out.to_string()) }
}

/// Puts the host back by hand after an inconsistent state, so that each
/// kill is judged on its own.
fn force_clean(tb: &Testbed) {
    let units = FOOBAR_UNITS.iter().chain(BATCH_UNITS.iter()).copied().collect::<Vec<_>>().join(" ");
    let mut paths = String::new();
    for dir in UNIT_DIRS {
        for unit in FOOBAR_UNITS.iter().chain(BATCH_UNITS.iter()) {
            let _ = write!(paths, " {dir}/{unit} {dir}/{unit}.d {dir}/*.wants/{unit}");
        }
    }
    tb.ok(&format!(
        "systemctl stop {units} 2>/dev/null
         rm -rf {paths} /var/lib/wharf/transactions/*
         find /etc/systemd/system /run/systemd/system /var/lib/portables -name '.#wharf-*' -exec rm -rf {{}} +
         systemctl daemon-reload; systemctl reset-failed; true"
    ));
}
