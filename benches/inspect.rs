//! `portable inspect` against the reference `portablectl inspect`, side by
//! side in one testbed, on the same image files: foobar as a bare squashfs
//! and as a GPT disk image. Both daemons are warmed first (each command goes
//! through its D-Bus activated daemon), then the two commands alternate,
//! RUNS times each, timed inside the testbed with bash's $EPOCHREALTIME (no
//! process is started to read the clock). Prints the medians and the ratio
//! wharf/portablectl per kind; the target is at most 0.3.
//!
//! Run as root: `cargo bench --bench inspect` (WHARF_BENCH_RUNS=N to change
//! the number of runs). It boots a testbed, like the integration tests.

#[path = "../tests/testbed/mod.rs"]
mod testbed;

use std::path::Path;
use std::process::ExitCode;

use testbed::{BootOptions, Release, Testbed, images};

const DEFAULT_RUNS: usize = 30;
const WARMUP_RUNS: usize = 3;
const TARGET_RATIO: f64 = 0.3;

fn main() -> ExitCode {
    // libtest-style flags (`--bench`) that cargo passes are not ours.
    match run() {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => {
            eprintln!("bench: a ratio is above the target of {TARGET_RATIO}");
            ExitCode::FAILURE
        }
        Err(e) => {
            eprintln!("bench failed: {e}");
            ExitCode::FAILURE
        }
    }
}

fn run() -> Result<bool, String> {
    let runs = match std::env::var("WHARF_BENCH_RUNS") {
        Ok(n) => n.parse().map_err(|_| format!("WHARF_BENCH_RUNS={n:?} is not a number"))?,
        Err(_) => DEFAULT_RUNS,
    };
    let bin_dir = Path::new(env!("CARGO_BIN_EXE_wharfd")).parent().expect("binary has a directory").to_path_buf();
    let release = Release::from_env().map_err(|e| e.to_string())?;
    testbed::note(&format!("booting a {} testbed for the benchmark", release.name()));
    let tb = Testbed::boot(&BootOptions { release, bin_dir, label: "bench".into() }).map_err(|e| e.to_string())?;

    let mut all_within = true;
    println!("portable inspect vs portablectl inspect, {runs} alternating runs each, medians");
    println!("{:<10} {:>12} {:>15} {:>8}", "kind", "wharf (ms)", "portablectl (ms)", "ratio");
    for format in ["squashfs", "gpt"] {
        let inner = format!("/srv/bench/foobar_{format}.raw");
        let host = tb.host_path(&inner);
        std::fs::create_dir_all(host.parent().expect("has a parent")).map_err(|e| e.to_string())?;
        images::foobar(&host, format, "1").map_err(|e| e.to_string())?;
        let (wharf, reference) = measure(&tb, &inner, runs)?;
        let ratio = wharf / reference;
        all_within &= ratio <= TARGET_RATIO;
        println!("{format:<10} {wharf:>12.2} {reference:>15.2} {ratio:>8.3}");
    }
    tb.poweroff().map_err(|e| e.to_string())?;
    Ok(all_within)
}

/// Medians, in milliseconds, of `portable inspect` and `portablectl inspect`
/// on `image`, alternating.
fn measure(tb: &Testbed, image: &str, runs: usize) -> Result<(f64, f64), String> {
    let script = format!(
        r#"set -e
time_one() {{ local s=$EPOCHREALTIME; "$@" >/dev/null; local e=$EPOCHREALTIME; echo "$1 ${{s/./}} ${{e/./}}"; }}
for i in $(seq {WARMUP_RUNS}); do portable inspect {image} >/dev/null; portablectl inspect {image} >/dev/null 2>&1; done
for i in $(seq {runs}); do
  time_one portable inspect {image}
  time_one portablectl inspect {image} 2>/dev/null
done"#
    );
    let out = tb.sh(&format!("bash -c '{}'", script.replace('\'', r"'\''")));
    if !out.success() {
        return Err(format!("timing {image}: {out}"));
    }
    let mut wharf = Vec::new();
    let mut reference = Vec::new();
    for line in out.stdout.lines() {
        let fields: Vec<&str> = line.split_whitespace().collect();
        let [tool, start, end] = fields[..] else {
            return Err(format!("unexpected line {line:?}"));
        };
        let micros = |s: &str| s.parse::<u64>().map_err(|_| format!("unexpected time {s:?}"));
        let elapsed_ms = (micros(end)? - micros(start)?) as f64 / 1000.0;
        match tool {
            "portable" => wharf.push(elapsed_ms),
            "portablectl" => reference.push(elapsed_ms),
            other => return Err(format!("unexpected tool {other:?}")),
        }
    }
    Ok((median(&mut wharf)?, median(&mut reference)?))
}

fn median(samples: &mut [f64]) -> Result<f64, String> {
    if samples.is_empty() {
        return Err("no samples".into());
    }
    samples.sort_by(f64::total_cmp);
    let mid = samples.len() / 2;
    Ok(if samples.len().is_multiple_of(2) { (samples[mid - 1] + samples[mid]) / 2.0 } else { samples[mid] })
}
