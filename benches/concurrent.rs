//! Many clients against one wharfd, in the testbed: 20 clients, each
//! running 50 mixed operations (attach, detach, reattach, list, inspect,
//! is-attached) on two images of its own, all at once, against the same
//! 1,000 operations issued one after another by a single client. Printed
//! as one table:
//!
//! - total wall time of the concurrent run: target ≤ 0.25x the serial one
//!   (changes that wait for the change lock are applied together, with one
//!   reload of systemd per group);
//! - read latency (list, inspect, is-attached) while changes are in
//!   flight: p99 ≤ 100 ms;
//! - every operation succeeded and the host ends as the operations imply
//!   (nothing of the clients' images attached).
//!
//! Run: `cargo bench --bench concurrent` (as root); `WHARF_BENCH_RUNS`
//! runs each side that many times (median).

#[path = "../tests/testbed/mod.rs"]
mod testbed;

use std::process::ExitCode;
use std::time::{Duration, Instant};

use testbed::bench::{Table, median, runs};
use testbed::{Testbed, images};

const CLIENTS: usize = 20;
const ROUNDS: usize = 5;

fn main() -> ExitCode {
    let mut table = Table::new("concurrent clients (one testbed; medians)");
    let outcome = run(&mut table);
    testbed::bench::exit_status(&table, outcome)
}

/// The 10 operations of one round of client `c`, on its images A and B:
/// five changes and five reads.
fn round(c: usize) -> Vec<(&'static str, String)> {
    let (a, b) = (format!("cc{c:02}a"), format!("cc{c:02}b"));
    vec![
        ("change", format!("portable attach {a}")),
        ("read", "portable list".to_string()),
        ("read", format!("portable is-attached {a}")),
        ("change", format!("portable attach {b}")),
        ("read", format!("portable inspect {a}")),
        ("change", format!("portable reattach --profile=strict {a}")),
        ("read", "portable list".to_string()),
        ("change", format!("portable detach {a}")),
        ("read", format!("portable is-attached {b}")),
        ("change", format!("portable detach {b}")),
    ]
}

/// A shell script running client `c`'s operations in order, each timed,
/// one line per operation in `log`: kind, exit status, microseconds.
fn client_script(c: usize, log: &str) -> String {
    let mut script = String::new();
    for _ in 0..ROUNDS {
        for (kind, command) in round(c) {
            script.push_str(&format!(
                "s=$EPOCHREALTIME; {command} >/dev/null 2>&1; rc=$?; e=$EPOCHREALTIME; \
                 echo \"{kind} $rc $(( ${{e/./}} - ${{s/./}} ))\" >> {log}\n"
            ));
        }
    }
    script
}

fn run(table: &mut Table) -> Result<(), String> {
    let tb = testbed::bench::boot()?;
    let pool = tb.host_path("/var/lib/portables");
    std::fs::create_dir_all(&pool).map_err(|e| e.to_string())?;
    for c in 0..CLIENTS {
        for side in ["a", "b"] {
            let name = format!("cc{c:02}{side}");
            images::foobar_as(&pool.join(&name), &name, "foobar-hello.service").map_err(|e| e.to_string())?;
        }
    }
    let scripts = tb.host_path("/var/tmp/concurrent");
    std::fs::create_dir_all(&scripts).map_err(|e| e.to_string())?;
    for c in 0..CLIENTS {
        let log = format!("/var/tmp/concurrent/c{c:02}.log");
        std::fs::write(scripts.join(format!("c{c:02}.sh")), client_script(c, &log)).map_err(|e| e.to_string())?;
    }
    let clients: Vec<String> = (0..CLIENTS).map(|c| format!("/var/tmp/concurrent/c{c:02}.sh")).collect();
    let serial = clients.iter().map(|s| format!("bash {s}")).collect::<Vec<_>>().join("; ");
    let concurrent = clients.iter().map(|s| format!("bash {s} & ")).collect::<String>() + "wait";
    // Warm wharfd and the page cache.
    tb.ok("portable list >/dev/null && portable attach cc00a >/dev/null && portable detach cc00a >/dev/null");

    let runs = runs(1);
    let (mut serial_times, mut concurrent_times, mut reads) = (Vec::new(), Vec::new(), Vec::new());
    for _ in 0..runs {
        serial_times.push(timed(&tb, &serial)?.0);
        let (took, latencies) = timed(&tb, &concurrent)?;
        concurrent_times.push(took);
        reads.extend(latencies);
    }
    let (serial, concurrent) = (median(serial_times), median(concurrent_times));
    table.ratio(
        &format!("{CLIENTS} clients x {} mixed ops at once, vs one after another", ROUNDS * 10),
        "one client",
        concurrent,
        serial,
        0.25,
    );
    reads.sort();
    let p99 = reads.get(reads.len().saturating_sub(1).min(reads.len() * 99 / 100)).copied().unwrap_or_default();
    table.limit(
        "read latency while changes are in flight, p99",
        format!("{:.1} ms (p50 {:.1} ms)", p99.as_secs_f64() * 1e3, median(reads.clone()).as_secs_f64() * 1e3),
        p99 <= Duration::from_millis(100),
        "<= 100 ms",
    );
    let left = tb.ok("ls /etc/systemd/system /etc/systemd/system.attached | grep -c '^cc' || true");
    table.limit(
        "units of the clients' images left attached at the end",
        left.trim().to_string(),
        left.trim() == "0",
        "0",
    );
    tb.poweroff().map_err(|e| e.to_string())?;
    Ok(())
}

/// Runs `script` (the clients), returns its wall time and the latencies of
/// the reads it logged; fails if any operation failed.
fn timed(tb: &Testbed, script: &str) -> Result<(Duration, Vec<Duration>), String> {
    tb.ok("rm -f /var/tmp/concurrent/*.log");
    let start = Instant::now();
    tb.ok(script);
    let took = start.elapsed();
    let logs = tb.ok("cat /var/tmp/concurrent/*.log");
    let mut reads = Vec::new();
    let mut failed = 0;
    for line in logs.lines() {
        let fields: Vec<&str> = line.split_whitespace().collect();
        let [kind, rc, micros] = fields[..] else { return Err(format!("unexpected log line {line:?}")) };
        failed += usize::from(rc != "0");
        if kind == "read" {
            reads.push(Duration::from_micros(micros.parse().map_err(|_| format!("bad time in {line:?}"))?));
        }
    }
    let wanted = CLIENTS * ROUNDS * 10;
    if logs.lines().count() != wanted || failed > 0 {
        return Err(format!("{failed} of {} operations failed (wanted {wanted} to run)", logs.lines().count()));
    }
    Ok((took, reads))
}
