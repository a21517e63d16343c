//! Portable service benchmarks, in the testbed, as ratios to portablectl in
//! the same run (the machines are noisy: medians of alternating runs).
//!
//! - attach + detach of one raw image: target ≤ 1.0x portablectl;
//! - attaching 50 images: one batched `portable attach --batch` against 50
//!   `portablectl attach` calls: target ≤ 0.1x;
//! - `portable list` with 200 images in the pool: target ≤ 0.5x;
//! - wharfd's resident memory when idle: target < 10 MiB.
//!
//! Run: `cargo bench --bench portable` (as root).

#[path = "../tests/testbed/mod.rs"]
mod testbed;

use std::path::Path;
use std::process::ExitCode;
use std::time::Duration;

use testbed::{BootOptions, Release, Testbed, images};

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

fn run() -> Result<bool, String> {
    let bin_dir = Path::new(env!("CARGO_BIN_EXE_wharfd")).parent().ok_or("no binary directory")?.to_path_buf();
    let release = Release::from_env().map_err(|e| e.to_string())?;
    let tb = Testbed::boot(&BootOptions { release, bin_dir, label: "bench".into() }).map_err(|e| e.to_string())?;
    let pool = tb.host_path("/var/lib/portables");
    std::fs::create_dir_all(&pool).map_err(|e| e.to_string())?;
    images::foobar(&pool.join("foobar.raw"), "squashfs", "1").map_err(|e| e.to_string())?;
    let mut met = true;

    // Warm both daemons and the page cache.
    tb.ok("portable list >/dev/null; portablectl list >/dev/null; portable inspect foobar.raw >/dev/null");

    let runs = 15;
    let (wharf, reference) = alternate(
        &tb,
        runs,
        ("portable attach foobar.raw >/dev/null", "portable detach foobar.raw >/dev/null"),
        ("portablectl attach foobar.raw >/dev/null", "portablectl detach foobar.raw >/dev/null"),
    );
    met &= report("attach + detach of one squashfs image", wharf, reference, 1.0);

    // 50 images with distinct units.
    let names: Vec<String> = (0..50).map(|i| format!("svc{i:02}")).collect();
    let template = tb.host_path("/srv/bench/template");
    images::foobar(&template, "dir", "1").map_err(|e| e.to_string())?;
    for name in &names {
        make_renamed_image(&template, &pool.join(format!("{name}.raw")), name)?;
    }
    let list = names.iter().map(|n| format!("{n}.raw")).collect::<Vec<_>>().join(" ");
    let batch_attach = format!("portable attach --batch {list} >/dev/null");
    let batch_detach = format!("for n in {list}; do portable detach $n >/dev/null; done");
    let each_attach = format!("for n in {list}; do portablectl attach $n >/dev/null; done");
    let each_detach = format!("for n in {list}; do portablectl detach $n >/dev/null; done");
    let (wharf, reference) = alternate(&tb, 5, (&batch_attach, &batch_detach), (&each_attach, &each_detach));
    met &= report("attaching 50 images (one batch vs 50 calls)", wharf, reference, 0.1);

    // 200 images in the pool (copies of foobar.raw under other names).
    for i in 0..200 {
        std::fs::copy(pool.join("foobar.raw"), pool.join(format!("copy{i:03}.raw"))).map_err(|e| e.to_string())?;
    }
    let (wharf, reference) =
        alternate(&tb, 15, ("portable list >/dev/null", ":"), ("portablectl list >/dev/null", ":"));
    met &= report("list with 250 images in the pool", wharf, reference, 0.5);

    // Idle memory: after the work above, let wharfd settle.
    std::thread::sleep(Duration::from_secs(2));
    let rss = tb.ok("grep VmRSS /proc/$(systemctl show -p MainPID --value wharfd.service)/status");
    let kib: u64 = rss.split_whitespace().nth(1).and_then(|v| v.parse().ok()).ok_or(format!("cannot read {rss}"))?;
    let ok = kib < 10 * 1024;
    met &= ok;
    println!("wharfd resident memory when idle: {:.1} MiB (target < 10 MiB) {}", kib as f64 / 1024.0, verdict(ok));

    tb.poweroff().map_err(|e| e.to_string())?;
    Ok(met)
}

/// A copy of the directory image `template` whose unit is named `name`,
/// packed as squashfs at `out`.
fn make_renamed_image(template: &Path, out: &Path, name: &str) -> Result<(), String> {
    let stage = out.with_extension("stage");
    let status =
        std::process::Command::new("cp").arg("-a").arg(template).arg(&stage).status().map_err(|e| e.to_string())?;
    if !status.success() {
        return Err(format!("copying {}", template.display()));
    }
    let units = stage.join("usr/lib/systemd/system");
    std::fs::rename(units.join("foobar-hello.service"), units.join(format!("{name}.service")))
        .map_err(|e| e.to_string())?;
    std::fs::remove_file(units.join("foobar.service")).map_err(|e| e.to_string())?;
    let os = stage.join("usr/lib/os-release");
    let text = std::fs::read_to_string(&os).map_err(|e| e.to_string())?;
    std::fs::write(&os, text.replace("PORTABLE_PREFIXES=foobar", &format!("PORTABLE_PREFIXES={name}")))
        .map_err(|e| e.to_string())?;
    let status = std::process::Command::new("mksquashfs")
        .arg(&stage)
        .arg(out)
        .args(["-noappend", "-quiet", "-all-root", "-no-progress"])
        .stdout(std::process::Stdio::null())
        .status()
        .map_err(|e| e.to_string())?;
    let _ = std::fs::remove_dir_all(&stage);
    if status.success() { Ok(()) } else { Err(format!("mksquashfs {}", out.display())) }
}

/// Times `timed` commands of wharf and the reference, alternating, each
/// followed by its untimed `reset`; returns the median times.
fn alternate(tb: &Testbed, runs: usize, wharf: (&str, &str), reference: (&str, &str)) -> (Duration, Duration) {
    let mut ours = Vec::new();
    let mut theirs = Vec::new();
    for _ in 0..runs {
        ours.push(tb.time(wharf.0, wharf.1));
        theirs.push(tb.time(reference.0, reference.1));
    }
    (median(ours), median(theirs))
}

fn median(mut samples: Vec<Duration>) -> Duration {
    samples.sort();
    samples[samples.len() / 2]
}

fn verdict(ok: bool) -> &'static str {
    if ok { "ok" } else { "MISSED" }
}

fn report(what: &str, wharf: Duration, reference: Duration, target: f64) -> bool {
    let ratio = wharf.as_secs_f64() / reference.as_secs_f64();
    let ok = ratio <= target;
    println!(
        "{what}: wharf {:.1} ms, portablectl {:.1} ms, ratio {ratio:.2} (target <= {target}) {}",
        wharf.as_secs_f64() * 1e3,
        reference.as_secs_f64() * 1e3,
        verdict(ok)
    );
    ok
}
