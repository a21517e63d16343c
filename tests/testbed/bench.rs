//! Timing commands inside a testbed, side by side with the reference tools:
//! alternating runs, timed by the testbed's own bash ($EPOCHREALTIME, so no
//! process is started to read the clock, and entering the container is not
//! counted), medians, and the ratio wharf/reference against a target.

use std::time::Duration;

use super::Testbed;

/// A benchmark's exit status: 0 when every target was met, 1 when one was
/// missed or the benchmark could not run (which it says).
pub fn exit_status(outcome: Result<bool, String>) -> std::process::ExitCode {
    match outcome {
        Ok(true) => std::process::ExitCode::SUCCESS,
        Ok(false) => {
            eprintln!("some targets were missed");
            std::process::ExitCode::FAILURE
        }
        Err(e) => {
            eprintln!("benchmark failed: {e}");
            std::process::ExitCode::FAILURE
        }
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

/// Prints one comparison and whether the ratio meets `target`.
pub fn report(what: &str, reference_name: &str, wharf: Duration, reference: Duration, target: f64) -> bool {
    let ratio = wharf.as_secs_f64() / reference.as_secs_f64();
    let ok = ratio <= target;
    println!(
        "{what}: wharf {:.2} ms, {reference_name} {:.2} ms, ratio {ratio:.3} (target <= {target}) {}",
        wharf.as_secs_f64() * 1e3,
        reference.as_secs_f64() * 1e3,
        verdict(ok)
    );
    ok
}
