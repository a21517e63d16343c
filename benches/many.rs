//! Many at once (issue 18), in the testbed, printed as one table:
//!
//! - 8 machines (copies of f28) booted by one `machine start w1 … w8`
//!   until all 8 run, against `machinectl start` of each (which returns at
//!   once) and then waiting for all 8: target ≤ 0.6x. Both are measured
//!   until machined says `running` and `systemctl -M wN is-system-running`
//!   says `running` for every one, polled every 20 ms.
//! - a fleet of 100 running portables (squashfs images) and the 8 machines
//!   applied again with nothing to do: target ≤ 0.3 s, and ≤ 0.1x the
//!   first apply of the same file (which attaches and starts the 100 and
//!   boots the 8).
//!
//! Run: `cargo bench --bench many` (as root).

#[path = "../tests/testbed/mod.rs"]
mod testbed;

use std::process::{Command, ExitCode};
use std::time::Duration;

use testbed::bench::{Table, Timed, alternate, median, runs};
use testbed::{Testbed, images, run_host};

const MACHINES: usize = 8;
const PORTABLES: usize = 100;

fn main() -> ExitCode {
    let mut table = Table::new("many-at-once benchmarks (medians of alternating runs in one testbed)");
    let outcome = run(&mut table);
    testbed::bench::exit_status(&table, outcome)
}

fn names() -> Vec<String> {
    (1..=MACHINES).map(|i| format!("w{i}")).collect()
}

/// Waits (up to 60 s) until every machine runs and is booted; fails otherwise.
fn wait_booted(names: &[String]) -> String {
    let list = names.join(" ");
    format!(
        "for i in $(seq 3000); do ok=1; for m in {list}; do \
           [ \"$(machinectl show $m -p State --value 2>/dev/null)\" = running ] && \
           [ \"$(systemctl -M $m is-system-running 2>/dev/null)\" = running ] || {{ ok=0; break; }}; done; \
         [ $ok = 1 ] && exit 0; sleep 0.02; done; exit 1"
    )
}

/// Waits until machined has forgotten every machine.
fn wait_gone(names: &[String]) -> String {
    let list = names.join(" ");
    format!(
        "for i in $(seq 3000); do ok=1; for m in {list}; do machinectl show $m >/dev/null 2>&1 && {{ ok=0; break; }}; done; \
         [ $ok = 1 ] && exit 0; sleep 0.02; done; exit 1"
    )
}

fn run(table: &mut Table) -> Result<(), String> {
    let tb = testbed::bench::boot()?;
    let names = names();
    let tarball = images::f28_tarball().map_err(|e| e.to_string())?;
    let first = tb.host_path("/var/lib/machines/w1");
    std::fs::create_dir_all(&first).map_err(|e| e.to_string())?;
    run_host(Command::new("tar").arg("-C").arg(&first).arg("-xf").arg(&tarball), "unpacking f28")
        .map_err(|e| e.to_string())?;
    for name in &names[1..] {
        run_host(
            Command::new("cp").arg("-a").arg(&first).arg(tb.host_path(&format!("/var/lib/machines/{name}"))),
            "copying f28",
        )
        .map_err(|e| e.to_string())?;
    }

    let list = names.join(" ");
    let booted = wait_booted(&names);
    let gone = wait_gone(&names);
    let ours_start = format!("machine start {list} >/dev/null && ( {booted} )");
    let ours_stop = format!("machine poweroff {list}; ( {gone} )");
    let theirs_start = format!("for m in {list}; do machinectl start $m || exit 1; done && ( {booted} )");
    let theirs_stop = format!("machinectl poweroff {list}; ( {gone} )");
    let ours = Timed::new(&ours_start, &ours_stop);
    let theirs = Timed::new(&theirs_start, &theirs_stop);
    // Warm the page cache, machined and both start paths.
    tb.time(ours.command, ours.reset);
    tb.time(theirs.command, theirs.reset);
    let (wharf, reference) = alternate(&tb, runs(3), ours, theirs);
    table.ratio(
        &format!("{MACHINES} machines started in one call until all run (bound: the CPUs)"),
        "machinectl start",
        wharf,
        reference,
        0.6,
    );
    // The same with all 8 booting at once, as nspawn boots them: wharfd
    // reads the bound when it starts.
    tb.ok(&format!(
        "mkdir -p /etc/wharf && printf '[machines]\\nmax-parallel-starts = {MACHINES}\\n' > /etc/wharf/wharf.toml \
         && systemctl stop wharfd"
    ));
    let (wharf, reference) = alternate(&tb, runs(3), ours, theirs);
    table.ratio(
        &format!("{MACHINES} machines started in one call until all run (bound: {MACHINES})"),
        "machinectl start",
        wharf,
        reference,
        0.6,
    );
    tb.ok("rm /etc/wharf/wharf.toml && systemctl stop wharfd");

    // The fleet: 100 portables and the 8 machines.
    tb.ok("mkdir -p /srv/many");
    portable_images(&tb)?;
    let mut fleet = String::new();
    for i in 0..PORTABLES {
        fleet.push_str(&format!("[[portable]]\nimage = \"/srv/many/m{i:03}.raw\"\nrunning = true\n"));
    }
    for name in &names {
        fleet.push_str(&format!("[[machine]]\nname = \"{name}\"\nstarted = true\n"));
    }
    std::fs::write(tb.host_path("/srv/many/fleet.toml"), fleet).map_err(|e| e.to_string())?;
    let mut stopped = String::from("# nothing\n");
    for name in &names {
        stopped.push_str(&format!("[[machine]]\nname = \"{name}\"\nstarted = false\n"));
    }
    std::fs::write(tb.host_path("/srv/many/empty.toml"), stopped).map_err(|e| e.to_string())?;
    // What apply learns of an image is kept once the file has been left
    // alone for 2 s (see fleet::cache); a real pool's images are older.
    std::thread::sleep(Duration::from_millis(2500));
    let apply = "portable apply --quiet /srv/many/fleet.toml";
    let undo = "portable apply --quiet /srv/many/empty.toml";
    let mut firsts = Vec::new();
    let mut noops = Vec::new();
    for _ in 0..runs(2) {
        firsts.push(tb.time(apply, ":"));
        for _ in 0..5 {
            noops.push(tb.time(apply, ":"));
        }
        tb.ok(undo);
    }
    let (first, noop) = (median(firsts), median(noops));
    let what = format!("no-op apply of {PORTABLES} portables and {MACHINES} machines");
    table.limit(&what, format!("{:.2} ms", noop.as_secs_f64() * 1e3), noop <= Duration::from_millis(300), "<= 300 ms");
    table.ratio(&what, "the first apply", noop, first, 0.1);
    tb.poweroff().map_err(|e| e.to_string())?;
    Ok(())
}

/// 100 squashfs images, each with one long-running service of its own
/// prefix (mNNN.service), made from the foobar tree.
fn portable_images(tb: &Testbed) -> Result<(), String> {
    let template = tb.host_path("/srv/many/template");
    images::foobar(&template, "dir", "1").map_err(|e| e.to_string())?;
    let units = template.join("usr/lib/systemd/system");
    for entry in std::fs::read_dir(&units).map_err(|e| e.to_string())? {
        std::fs::remove_file(entry.map_err(|e| e.to_string())?.path()).map_err(|e| e.to_string())?;
    }
    let os_release = std::fs::read_to_string(template.join("usr/lib/os-release")).map_err(|e| e.to_string())?;
    for i in 0..PORTABLES {
        let name = format!("m{i:03}");
        let unit = units.join(format!("{name}.service"));
        std::fs::write(&unit, "[Service]\nExecStart=/usr/bin/busybox sleep 3600\n").map_err(|e| e.to_string())?;
        std::fs::write(
            template.join("usr/lib/os-release"),
            os_release.replace("PORTABLE_PREFIXES=foobar", &format!("PORTABLE_PREFIXES={name}")),
        )
        .map_err(|e| e.to_string())?;
        images::squashfs(&template, &tb.host_path(&format!("/srv/many/{name}.raw"))).map_err(|e| e.to_string())?;
        std::fs::remove_file(&unit).map_err(|e| e.to_string())?;
    }
    std::fs::remove_dir_all(&template).map_err(|e| e.to_string())
}
