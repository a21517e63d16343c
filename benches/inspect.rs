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

use testbed::bench::{Table, Timed, alternate, runs};
use testbed::{BootOptions, Release, Testbed, images};

const DEFAULT_RUNS: usize = 30;
const WARMUP_RUNS: usize = 3;
const TARGET_RATIO: f64 = 0.3;

fn main() -> ExitCode {
    let runs = runs(DEFAULT_RUNS);
    let mut table =
        Table::new(format!("portable inspect vs portablectl inspect, {runs} alternating runs each, medians"));
    let outcome = run(&mut table, runs);
    testbed::bench::exit_status(&table, outcome)
}

fn run(table: &mut Table, runs: usize) -> Result<(), String> {
    let bin_dir = Path::new(env!("CARGO_BIN_EXE_wharfd")).parent().expect("binary has a directory").to_path_buf();
    let release = Release::from_env().map_err(|e| e.to_string())?;
    testbed::note(&format!("booting a {} testbed for the benchmark", release.name()));
    let tb = Testbed::boot(&BootOptions { release, bin_dir, label: "bench".into() }).map_err(|e| e.to_string())?;

    for format in ["squashfs", "gpt"] {
        let inner = format!("/srv/bench/foobar_{format}.raw");
        images::foobar(&tb.host_path(&inner), format, "1").map_err(|e| e.to_string())?;
        let ours = format!("portable inspect {inner} >/dev/null");
        let theirs = format!("portablectl inspect {inner} >/dev/null 2>&1");
        for _ in 0..WARMUP_RUNS {
            tb.time(&ours, ":");
            tb.time(&theirs, ":");
        }
        let (wharf, reference) = alternate(&tb, runs, Timed::alone(&ours), Timed::alone(&theirs));
        table.ratio(&format!("inspect of a {format} image"), "portablectl", wharf, reference, TARGET_RATIO);
    }
    tb.poweroff().map_err(|e| e.to_string())?;
    Ok(())
}
