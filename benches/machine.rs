//! Machine benchmarks, in the testbed, as ratios to the reference tools in
//! the same run (medians of alternating runs):
//!
//! - `machine start f28` until the container's systemd reports running,
//!   against `machinectl start f28` (systemd-nspawn) of the same directory:
//!   target ≤ 0.5x (issue 15). Both are measured from the start command until machined
//!   says `running` and `systemctl -M f28 is-system-running` says `running`,
//!   polled every 20 ms: `machine start` returns when the container's
//!   systemd has sent READY=1, `machinectl start` as soon as nspawn has
//!   started the init, so polling for the booted state makes them
//!   comparable. (nspawn's unit also sets up a veth pair; wharf's default is
//!   the host's network.)
//! - `machine import-raw` of a 1 GiB `.raw.xz` (written by `xz -T0`, so its
//!   blocks can be decoded in parallel) against `machinectl import-raw` of
//!   the same file (target ≤ 0.45x, issue 15) and against
//!   `xz -dc -T0 > file`, the practical limit (target ≤ 1.05x).
//!
//! - `machine pull-raw --verify=no` of that image from a web server on the
//!   testbed's loopback, against `machinectl pull-raw --verify=no`
//!   (target ≤ 0.6x) and `curl | xz -dc -T0 > file` (target ≤ 1.2x).
//!
//! Run: `cargo bench --bench machine` (as root).

#[path = "../tests/testbed/mod.rs"]
mod testbed;

use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode};

use testbed::bench::{Table, Timed, alternate, runs};
use testbed::{BootOptions, Release, Testbed, images, run_host};

/// Waits (up to 30 s) until the machine is running and booted; fails otherwise.
const WAIT_BOOTED: &str = "for i in $(seq 1500); do \
    [ \"$(machinectl show f28 -p State --value 2>/dev/null)\" = running ] && \
    [ \"$(systemctl -M f28 is-system-running 2>/dev/null)\" = running ] && exit 0; sleep 0.02; done; exit 1";
/// Waits until machined has forgotten f28 and nspawn has ended (machined
/// can forget the machine while nspawn still holds the image's lock).
const WAIT_GONE: &str = "for i in $(seq 1500); do machinectl show f28 >/dev/null 2>&1 || \
    { systemctl is-active -q systemd-nspawn@f28.service || exit 0; }; sleep 0.02; done; exit 1";

fn main() -> ExitCode {
    let mut table = Table::new("machine benchmarks (medians of alternating runs in one testbed)");
    let outcome = run(&mut table);
    testbed::bench::exit_status(&table, outcome)
}

fn run(table: &mut Table) -> Result<(), String> {
    let bin_dir = Path::new(env!("CARGO_BIN_EXE_wharfd")).parent().ok_or("no binary directory")?.to_path_buf();
    let release = Release::from_env().map_err(|e| e.to_string())?;
    let big = big_raw_xz()?;
    let tb = Testbed::boot(&BootOptions { release, bin_dir, label: "bench".into() }).map_err(|e| e.to_string())?;
    let tarball = images::f28_tarball().map_err(|e| e.to_string())?;
    let image = tb.host_path("/var/lib/machines/f28");
    std::fs::create_dir_all(&image).map_err(|e| e.to_string())?;
    run_host(Command::new("tar").arg("-C").arg(&image).arg("-xf").arg(&tarball), "unpacking f28")
        .map_err(|e| e.to_string())?;

    let ours_start = format!("machine start f28 >/dev/null && ( {WAIT_BOOTED} )");
    let theirs_start = format!("machinectl start f28 && ( {WAIT_BOOTED} )");
    let ours = Timed::new(&ours_start, "machine poweroff f28");
    let theirs_stop = format!("machinectl poweroff f28; ( {WAIT_GONE} )");
    let theirs = Timed::new(&theirs_start, &theirs_stop);
    // Warm the page cache, machined and both start paths.
    tb.time(ours.command, ours.reset);
    tb.time(theirs.command, theirs.reset);
    let (wharf, reference) = alternate(&tb, runs(7), ours, theirs);
    table.ratio("boot of f28 until its systemd runs", "machinectl start", wharf, reference, 0.5);

    // The 1 GiB image, and xz in the testbed for the practical limit.
    std::fs::copy(&big, tb.host_path("/srv/big.raw.xz")).map_err(|e| e.to_string())?;
    std::fs::copy("/usr/bin/xz", tb.host_path("/usr/local/bin/xz")).map_err(|e| format!("copying xz: {e}"))?;
    let ours = Timed::new("machine import-raw /srv/big.raw.xz big >/dev/null", "machine remove big >/dev/null");
    let theirs = Timed::new("machinectl import-raw /srv/big.raw.xz big2 >/dev/null 2>&1", "machinectl remove big2");
    let limit =
        Timed::new("xz -dc -T0 /srv/big.raw.xz > /var/lib/machines/plain.raw", "rm /var/lib/machines/plain.raw");
    tb.time("cat /srv/big.raw.xz >/dev/null", ":");
    let import_runs = runs(3);
    let (wharf, reference) = alternate(&tb, import_runs, ours, theirs);
    table.ratio("import-raw of a 1 GiB .raw.xz", "machinectl import-raw", wharf, reference, 0.45);
    let (wharf, plain) = alternate(&tb, import_runs, ours, limit);
    table.ratio("import-raw of a 1 GiB .raw.xz", "xz -dc -T0", wharf, plain, 1.05);

    // The same image pulled over HTTP from the testbed's loopback, with no
    // verification on either side (the reference checks nothing else).
    std::fs::copy("/usr/bin/curl", tb.host_path("/usr/local/bin/curl")).map_err(|e| format!("copying curl: {e}"))?;
    tb.ok("systemd-run --unit=bench-httpd -p WorkingDirectory=/srv python3 -m http.server --bind 127.0.0.1 8650");
    tb.ok("for i in $(seq 300); do curl -sfI http://127.0.0.1:8650/big.raw.xz >/dev/null && exit 0; sleep 0.1; done; exit 1");
    let url = "http://127.0.0.1:8650/big.raw.xz";
    let ours_pull = format!("machine pull-raw --verify=no {url} bigp >/dev/null");
    // Its chatter is kept, and shown should it fail.
    let theirs_pull = format!(
        "machinectl pull-raw --verify=no {url} bigq </dev/null >/dev/null 2>/tmp/pull.err || {{ cat /tmp/pull.err >&2; false; }}"
    );
    let limit_pull = format!("curl -sf {url} | xz -dc -T0 > /var/lib/machines/plain.raw");
    let ours = Timed::new(&ours_pull, "machine remove bigp >/dev/null");
    // systemd-pull keeps what it downloaded as a hidden image
    // (.raw-URL.raw), and systemd 252 fails the next pull of that URL
    // ("File exists"): removed, so that every run is a fresh pull.
    let theirs = Timed::new(&theirs_pull, "machinectl remove bigq && rm -f /var/lib/machines/.raw-http*");
    let limit = Timed::new(&limit_pull, "rm /var/lib/machines/plain.raw");
    let (wharf, reference) = alternate(&tb, import_runs, ours, theirs);
    table.ratio("pull-raw of a 1 GiB .raw.xz over HTTP", "machinectl pull-raw", wharf, reference, 0.6);
    let (wharf, plain) = alternate(&tb, import_runs, ours, limit);
    table.ratio("pull-raw of a 1 GiB .raw.xz over HTTP", "curl | xz -dc -T0", wharf, plain, 1.2);

    tb.poweroff().map_err(|e| e.to_string())?;
    Ok(())
}

/// A 1 GiB ext4 image of the f28 tree, compressed with `xz -T0`, made once
/// and kept in the testbed cache (it takes a while on two cores).
fn big_raw_xz() -> Result<PathBuf, String> {
    let tarball = images::f28_tarball().map_err(|e| e.to_string())?;
    let cache = testbed::cache::cache_dir();
    let key = testbed::cache::key(&["bench-1g-raw-xz", &tarball.display().to_string()]);
    let target = cache.join(format!("bench-1g-{key}.raw.xz"));
    if target.is_file() {
        return Ok(target);
    }
    testbed::note("making the 1 GiB .raw.xz for the import benchmark (first run only)");
    let stage = cache.join(format!(".bench-stage-{}", std::process::id()));
    let raw = cache.join(format!(".bench-{}.raw", std::process::id()));
    let script = format!(
        "set -e; mkdir -p {stage}; tar -C {stage} -xf {tarball}; truncate -s 1G {raw}; \
         mkfs.ext4 -q -F -d {stage} {raw} >/dev/null; xz -T0 -3 {raw}; mv {raw}.xz {target}",
        stage = stage.display(),
        tarball = tarball.display(),
        raw = raw.display(),
        target = target.display()
    );
    let made = run_host(Command::new("sh").args(["-c", &script]), "making the benchmark image");
    let _ = std::fs::remove_dir_all(&stage);
    let _ = std::fs::remove_file(&raw);
    let _ = std::fs::remove_file(raw.with_extension("raw.xz"));
    made.map(|_| target).map_err(|e| e.to_string())
}
