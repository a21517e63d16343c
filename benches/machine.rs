//! Machine benchmark, in the testbed: booting the f28 image with wharf's
//! launcher against `machinectl start f28` (systemd-nspawn@f28.service) on
//! the same directory, as a ratio of medians of alternating runs.
//!
//! Both are measured the same way: from the start command until machined
//! reports the machine `running` *and* the container's systemd says
//! `running` (`systemctl -M f28 is-system-running`), polled every 20 ms.
//! The start commands differ in when they return: `systemd-run` of the
//! launcher's Type=notify unit returns when the container's systemd has sent
//! READY=1 (boot finished), `machinectl start` as soon as nspawn has started
//! the init (nspawn's default `--notify-ready=no`); polling for the booted
//! state after both makes the two comparable.
//!
//! nspawn's unit also sets up a veth pair (`--network-veth`); the launcher
//! is measured with the host's network (its default) and with
//! `--network=private` (a new network namespace with only loopback).
//!
//! Target: ≤ 1.0x. Run: `cargo bench --bench machine` (as root).

#[path = "../tests/testbed/mod.rs"]
mod testbed;

use std::path::Path;
use std::process::ExitCode;
use std::time::Duration;

use testbed::{BootOptions, Release, Testbed, images};

const RUNS: usize = 7;

/// Waits (up to 30 s) until the machine is running and booted; fails otherwise.
const WAIT_BOOTED: &str = "for i in $(seq 1500); do \
    [ \"$(machinectl show f28 -p State --value 2>/dev/null)\" = running ] && \
    [ \"$(systemctl -M f28 is-system-running 2>/dev/null)\" = running ] && exit 0; sleep 0.02; done; exit 1";

/// Waits until machined has forgotten f28.
const WAIT_GONE: &str =
    "for i in $(seq 1500); do machinectl show f28 >/dev/null 2>&1 || exit 0; sleep 0.02; done; exit 1";

fn main() -> ExitCode {
    match run() {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => {
            eprintln!("some targets were missed");
            ExitCode::FAILURE
        }
        Err(e) => {
            eprintln!("benchmark failed: {e}");
            ExitCode::FAILURE
        }
    }
}

fn launch(options: &str) -> String {
    format!(
        "systemd-run --quiet --unit=wharf-f28 --slice=machine.slice -p Delegate=yes -p Type=notify -p KillMode=mixed \
         /usr/lib/wharf/wharfd launch --machine f28 --directory /var/lib/machines/f28 {options} && ( {WAIT_BOOTED} )"
    )
}

fn run() -> Result<bool, String> {
    let bin_dir = Path::new(env!("CARGO_BIN_EXE_wharfd")).parent().ok_or("no binary directory")?.to_path_buf();
    let release = Release::from_env().map_err(|e| e.to_string())?;
    let tb = Testbed::boot(&BootOptions { release, bin_dir, label: "bench".into() }).map_err(|e| e.to_string())?;
    let tarball = images::f28_tarball().map_err(|e| e.to_string())?;
    let image = tb.host_path("/var/lib/machines/f28");
    std::fs::create_dir_all(&image).map_err(|e| e.to_string())?;
    let status = std::process::Command::new("tar")
        .arg("-C")
        .arg(&image)
        .arg("-xf")
        .arg(&tarball)
        .status()
        .map_err(|e| e.to_string())?;
    if !status.success() {
        return Err(format!("unpacking {}", tarball.display()));
    }

    let wharf_host = (launch(""), "systemctl stop wharf-f28".to_string());
    let wharf_private = (launch("--network=private"), "systemctl stop wharf-f28".to_string());
    let nspawn =
        (format!("machinectl start f28 && ( {WAIT_BOOTED} )"), format!("machinectl poweroff f28; ( {WAIT_GONE} )"));
    let readiness = (
        "systemd-run --quiet --unit=wharf-f28 --slice=machine.slice -p Delegate=yes -p Type=notify \
                      -p KillMode=mixed /usr/lib/wharf/wharfd launch --machine f28 --directory /var/lib/machines/f28",
        "systemctl stop wharf-f28",
    );

    // Warm the page cache, machined and both start paths.
    for (start, stop) in [&wharf_host, &nspawn] {
        time(&tb, start, stop)?;
    }

    let mut ours = Vec::new();
    let mut ours_private = Vec::new();
    let mut theirs = Vec::new();
    let mut ready = Vec::new();
    for _ in 0..RUNS {
        ours.push(time(&tb, &wharf_host.0, &wharf_host.1)?);
        theirs.push(time(&tb, &nspawn.0, &nspawn.1)?);
        ours_private.push(time(&tb, &wharf_private.0, &wharf_private.1)?);
        ready.push(time(&tb, readiness.0, readiness.1)?);
    }
    let (ours, ours_private, theirs, ready) = (median(ours), median(ours_private), median(theirs), median(ready));
    let mut met = true;
    met &= report("boot of f28 to running (launcher, host network)", ours, theirs, 1.0);
    met &= report("boot of f28 to running (launcher, private network)", ours_private, theirs, 1.0);
    println!(
        "launcher unit start job (systemd-run returns on the container's READY=1): {:.1} ms",
        ready.as_secs_f64() * 1e3
    );
    tb.poweroff().map_err(|e| e.to_string())?;
    Ok(met)
}

/// Times `command` with the testbed shell's clock, then runs `reset`
/// untimed; a failure says what the commands printed.
fn time(tb: &Testbed, command: &str, reset: &str) -> Result<Duration, String> {
    let script = format!(
        "s=$(date +%s%N); {{ {command} ; }} || exit 97; e=$(date +%s%N); {{ {reset} ; }} || exit 98; echo $((e - s))"
    );
    let out = tb.sh(&script);
    out.stdout
        .trim()
        .lines()
        .last()
        .and_then(|line| line.parse().ok())
        .filter(|_| out.success())
        .map(Duration::from_nanos)
        .ok_or_else(|| format!("timing failed: {out}"))
}

fn median(mut samples: Vec<Duration>) -> Duration {
    samples.sort();
    samples[samples.len() / 2]
}

fn report(what: &str, wharf: Duration, reference: Duration, target: f64) -> bool {
    let ratio = wharf.as_secs_f64() / reference.as_secs_f64();
    let ok = ratio <= target;
    println!(
        "{what}: wharf {:.1} ms, machinectl start (nspawn) {:.1} ms, ratio {ratio:.2} (target <= {target}) {}",
        wharf.as_secs_f64() * 1e3,
        reference.as_secs_f64() * 1e3,
        if ok { "ok" } else { "MISSED" }
    );
    ok
}
