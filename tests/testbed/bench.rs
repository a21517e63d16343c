//! Timing commands inside a testbed, side by side with the reference tools:
//! alternating runs, timed by the testbed's own bash ($EPOCHREALTIME, so no
//! process is started to read the clock, and entering the container is not
//! counted), medians, and the ratio wharf/reference against a target.

use std::time::Duration;

use super::{BootOptions, Release, Testbed};

/// The testbed a benchmark runs in: the release `WHARF_TESTBED_RELEASE`
/// names, with the binaries cargo built for the benchmark.
pub fn boot() -> Result<Testbed, String> {
    // Set for benchmarks (and tests), not for the examples that share this file.
    let wharfd = option_env!("CARGO_BIN_EXE_wharfd").ok_or("not built as a benchmark: no wharfd binary")?;
    let bin_dir = std::path::Path::new(wharfd).parent().ok_or("no binary directory")?;
    let release = Release::from_env().map_err(|e| e.to_string())?;
    Testbed::boot(&BootOptions { release, bin_dir: bin_dir.to_path_buf(), label: "bench".into() })
        .map_err(|e| e.to_string())
}

/// A benchmark's exit status, after printing its table: 0 when every
/// target was met, 1 when one was missed or the benchmark could not run
/// (which it says).
pub fn exit_status(table: &Table, outcome: Result<(), String>) -> std::process::ExitCode {
    table.print();
    if let Err(e) = outcome {
        eprintln!("benchmark failed: {e}");
        return std::process::ExitCode::FAILURE;
    }
    if table.all_met() {
        std::process::ExitCode::SUCCESS
    } else {
        eprintln!("some targets were missed");
        std::process::ExitCode::FAILURE
    }
}

/// How many alternating runs each comparison makes, unless `WHARF_BENCH_RUNS` says.
pub fn runs(default: usize) -> usize {
    std::env::var("WHARF_BENCH_RUNS").ok().and_then(|n| n.parse().ok()).unwrap_or(default)
}

impl Testbed {
    /// Times `command` inside the testbed, then runs `reset` untimed. Panics
    /// if either fails.
    #[track_caller]
    pub fn time(&self, command: &str, reset: &str) -> Duration {
        let script = format!(
            "s=$EPOCHREALTIME; {{ {command} ; }} || exit 97; e=$EPOCHREALTIME; {{ {reset} ; }} || exit 98; echo ${{s/./}} ${{e/./}}"
        );
        let out = self.ok(&format!("bash -c '{}'", script.replace('\'', r"'\''")));
        let micros: Vec<u64> = out.split_whitespace().filter_map(|n| n.parse().ok()).collect();
        let [start, end] = micros[..] else { panic!("unexpected timing output {out:?}") };
        Duration::from_micros(end - start)
    }
}

/// One command pair to compare: what is timed, and what undoes it untimed.
#[derive(Debug, Clone, Copy)]
pub struct Timed<'a> {
    pub command: &'a str,
    pub reset: &'a str,
}

impl<'a> Timed<'a> {
    pub fn new(command: &'a str, reset: &'a str) -> Timed<'a> {
        Timed { command, reset }
    }

    pub fn alone(command: &'a str) -> Timed<'a> {
        Timed { command, reset: ":" }
    }
}

/// Medians of `runs` alternating runs of wharf's and the reference's command.
pub fn alternate(tb: &Testbed, runs: usize, wharf: Timed<'_>, reference: Timed<'_>) -> (Duration, Duration) {
    let mut ours = Vec::new();
    let mut theirs = Vec::new();
    for _ in 0..runs {
        ours.push(tb.time(wharf.command, wharf.reset));
        theirs.push(tb.time(reference.command, reference.reset));
    }
    (median(ours), median(theirs))
}

pub fn median(mut samples: Vec<Duration>) -> Duration {
    samples.sort();
    let mid = samples.len() / 2;
    if samples.len().is_multiple_of(2) { (samples[mid - 1] + samples[mid]) / 2 } else { samples[mid] }
}

pub fn verdict(ok: bool) -> &'static str {
    if ok { "ok" } else { "MISSED" }
}

/// A benchmark's figures, printed as one table when it ends: one row per
/// figure, with what was measured, the reference, their ratio, the target
/// and whether it was met.
#[derive(Debug, Default)]
pub struct Table {
    title: String,
    rows: Vec<[String; 6]>,
    missed: bool,
}

fn ms(d: Duration) -> String {
    format!("{:.2} ms", d.as_secs_f64() * 1e3)
}

impl Table {
    pub fn new(title: impl Into<String>) -> Table {
        Table { title: title.into(), ..Table::default() }
    }

    /// A ratio wharf/reference that must be at most `target`; returns whether it is.
    pub fn ratio(
        &mut self,
        what: &str,
        reference_name: &str,
        wharf: Duration,
        reference: Duration,
        target: f64,
    ) -> bool {
        let ratio = wharf.as_secs_f64() / reference.as_secs_f64();
        let ok = ratio <= target;
        self.row([
            what.to_string(),
            ms(wharf),
            format!("{reference_name} {}", ms(reference)),
            format!("{ratio:.3}"),
            format!("<= {target}"),
            verdict(ok).to_string(),
        ]);
        // Also as it is measured, for whoever watches a long run.
        eprintln!("{what}: {} vs {reference_name} {}, ratio {ratio:.3}", ms(wharf), ms(reference));
        self.missed |= !ok;
        ok
    }

    /// An absolute figure (`shown` as measured) that must be below a limit.
    pub fn limit(&mut self, what: &str, shown: String, ok: bool, target: &str) -> bool {
        self.row([what.to_string(), shown, "-".into(), "-".into(), target.to_string(), verdict(ok).to_string()]);
        self.missed |= !ok;
        ok
    }

    fn row(&mut self, row: [String; 6]) {
        self.rows.push(row);
    }

    pub fn all_met(&self) -> bool {
        !self.missed
    }

    pub fn print(&self) {
        let header = ["figure", "measured", "reference", "ratio", "target", "verdict"].map(String::from);
        let mut widths = [0usize; 6];
        for row in std::iter::once(&header).chain(&self.rows) {
            for (width, cell) in widths.iter_mut().zip(row) {
                *width = (*width).max(cell.chars().count());
            }
        }
        let line = |row: &[String; 6]| {
            let cells: Vec<String> = row.iter().zip(widths).map(|(c, w)| format!("{c:<w$}")).collect();
            format!("| {} |", cells.join(" | "))
        };
        println!("\n{}", self.title);
        println!("{}", line(&header));
        println!("|{}|", widths.iter().map(|w| "-".repeat(w + 2)).collect::<Vec<_>>().join("|"));
        for row in &self.rows {
            println!("{}", line(row));
        }
    }
}
