//! Portable service benchmarks, in the testbed, as ratios to portablectl in
//! the same run (the machines are noisy: medians of alternating runs),
//! printed as one table:
//!
//! - attach + detach of one raw image: target ≤ 1.0x portablectl;
//! - attaching 50 images: one batched `portable attach --batch` against 50
//!   `portablectl attach` calls: target ≤ 0.1x;
//! - detaching 300 images with one `portable detach --batch` against
//!   detaching one image: target ≤ 2x (the cost is the one reload);
//! - `portable list` with 250 and with 2,000 images in the pool: targets
//!   ≤ 0.5x and ≤ 0.3x;
//! - wharfd's resident memory when idle: target < 10 MiB.
//!
//! Run: `cargo bench --bench portable` (as root).

#[path = "../tests/testbed/mod.rs"]
mod testbed;

use std::path::Path;
use std::process::ExitCode;
use std::time::Duration;

use testbed::bench::{Table, Timed, alternate, runs};
use testbed::images;

fn main() -> ExitCode {
    let mut table = Table::new("portable benchmarks (medians of alternating runs in one testbed)");
    let outcome = run(&mut table);
    testbed::bench::exit_status(&table, outcome)
}

fn run(table: &mut Table) -> Result<(), String> {
    let tb = testbed::bench::boot()?;
    let pool = tb.host_path("/var/lib/portables");
    std::fs::create_dir_all(&pool).map_err(|e| e.to_string())?;
    images::foobar(&pool.join("foobar.raw"), "squashfs", "1").map_err(|e| e.to_string())?;

    // Warm both daemons and the page cache.
    tb.ok("portable list >/dev/null; portablectl list >/dev/null; portable inspect foobar.raw >/dev/null");

    let runs = runs(15);
    let image = "/var/lib/portables/foobar.raw";
    let ours = format!("portable attach {image} >/dev/null && portable detach {image} >/dev/null");
    let theirs = format!("portablectl attach {image} >/dev/null && portablectl detach {image} >/dev/null");
    let (wharf, reference) = alternate(&tb, runs, Timed::alone(&ours), Timed::alone(&theirs));
    table.ratio("attach + detach of one squashfs image", "portablectl", wharf, reference, 1.0);

    // 50 images with distinct units.
    let names: Vec<String> = (0..50).map(|i| format!("svc{i:02}")).collect();
    let template = tb.host_path("/srv/bench/template");
    images::foobar(&template, "dir", "1").map_err(|e| e.to_string())?;
    for name in &names {
        make_renamed_image(&template, &pool.join(format!("{name}.raw")), name)?;
    }
    let list = names.iter().map(|n| format!("/var/lib/portables/{n}.raw")).collect::<Vec<_>>().join(" ");
    let batch_attach = format!("portable attach --batch {list} >/dev/null");
    let batch_detach = format!("portable detach --batch {list} >/dev/null");
    let each_attach = format!("for n in {list}; do portablectl attach $n >/dev/null; done");
    let each_detach = format!("for n in {list}; do portablectl detach $n >/dev/null; done");
    let (wharf, reference) =
        alternate(&tb, runs.min(5), Timed::new(&batch_attach, &batch_detach), Timed::new(&each_attach, &each_detach));
    table.ratio("attaching 50 images (one batch vs 50 calls)", "portablectl", wharf, reference, 0.1);

    // 300 directory images with distinct units, detached in one batch,
    // against detaching one of them alone.
    let many: Vec<String> = (0..300).map(|i| format!("det{i:03}")).collect();
    for name in &many {
        images::foobar_as(&pool.join(name), name, "foobar-hello.service").map_err(|e| e.to_string())?;
    }
    let many_list = many.join(" ");
    let attach_many = format!("portable attach --batch {many_list} >/dev/null");
    let detach_many = format!("portable detach --batch {many_list} >/dev/null");
    // Warm: everything attached at the start of each timed run.
    tb.ok(&attach_many);
    tb.ok(&detach_many);
    tb.ok(&attach_many);
    let (batch, one) = alternate(
        &tb,
        runs.min(5),
        Timed::new(&detach_many, &attach_many),
        Timed::new("portable detach det000 >/dev/null", "portable attach det000 >/dev/null"),
    );
    table.ratio("detaching 300 images in one batch vs one image", "portable detach of one", batch, one, 2.0);
    tb.ok(&detach_many);
    tb.ok(&format!("cd /var/lib/portables && rm -rf {many_list}"));

    // 200 images in the pool (links to foobar.raw under other names), then 1,950.
    for (count, target) in [(200, 0.5), (1950, 0.3)] {
        for i in 0..count {
            let copy = pool.join(format!("copy{i:04}.raw"));
            if !copy.exists() {
                std::fs::hard_link(pool.join("foobar.raw"), copy).map_err(|e| e.to_string())?;
            }
        }
        // wharfd trusts what it learnt of an image only once the image's
        // inode has not changed for 2 s (see image::pool); the images of a
        // real pool are older than that, these were linked just now.
        std::thread::sleep(Duration::from_millis(2500));
        let total = count + 50;
        let ours = Timed::alone("portable list >/dev/null");
        let theirs = Timed::alone("portablectl list >/dev/null");
        tb.ok("portable list >/dev/null; portablectl list >/dev/null");
        let (wharf, reference) = alternate(&tb, runs, ours, theirs);
        table.ratio(&format!("list with {total} images in the pool"), "portablectl", wharf, reference, target);
    }

    // Idle memory: after the work above, let wharfd settle.
    std::thread::sleep(Duration::from_secs(2));
    let rss = tb.ok("grep VmRSS /proc/$(systemctl show -p MainPID --value wharfd.service)/status");
    let kib: u64 = rss.split_whitespace().nth(1).and_then(|v| v.parse().ok()).ok_or(format!("cannot read {rss}"))?;
    table.limit(
        "wharfd resident memory when idle",
        format!("{:.1} MiB", kib as f64 / 1024.0),
        kib < 10 * 1024,
        "< 10 MiB",
    );

    tb.poweroff().map_err(|e| e.to_string())?;
    Ok(())
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
