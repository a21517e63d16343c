//! Portable services end to end in the testbed: attach, systemctl start and
//! stop, reattach, detach, with every kind of image, and side by side with
//! portablectl on the same image.
//!
//! The tests all attach the foobar image (units foobar.service and
//! foobar-hello.service, port 8080), so they run one at a time.

use std::sync::Arc;

use libtest_mimic::Trial;

use crate::testbed::{Out, Testbed, images};

/// The raw format the portable tests attach.
const RAW: &str = "squashfs";
use crate::{Shared, exclusive_trial, trial};

pub fn trials(shared: &Arc<Shared>) -> Vec<Trial> {
    vec![
        exclusive_trial(shared, "portable::attach_start_detach_a_squashfs_image", attach_squashfs),
        exclusive_trial(shared, "portable::attach_start_detach_a_directory_image", attach_directory),
        exclusive_trial(shared, "portable::attach_start_detach_an_ext4_image", attach_ext4),
        exclusive_trial(shared, "portable::attach_start_detach_an_erofs_image", attach_erofs),
        exclusive_trial(shared, "portable::attach_start_detach_a_gpt_disk_image", attach_gpt),
        exclusive_trial(shared, "portable::a_verity_image_is_checked_and_pinned_to_its_root_hash", verity_image),
        exclusive_trial(shared, "portable::attach_start_detach_a_raw_xz_image", attach_xz),
        exclusive_trial(shared, "portable::now_and_enable_start_and_stop_with_attach", now_and_enable),
        exclusive_trial(shared, "portable::reattach_restarts_running_units_on_the_new_version", reattach_running),
        exclusive_trial(shared, "portable::failed_reattach_leaves_the_old_version_running", failed_reattach),
        exclusive_trial(shared, "portable::check_plans_exactly_what_a_run_does_and_changes_nothing", check_plans),
        exclusive_trial(shared, "portable::host_units_are_not_overwritten_without_force", conflicts),
        exclusive_trial(shared, "portable::bad_requests_fail_in_one_line_and_leave_nothing", bad_requests),
        exclusive_trial(shared, "portable::profiles_sandbox_the_service", profiles),
        exclusive_trial(shared, "portable::only_root_may_attach_detach_and_remove", unprivileged),
        exclusive_trial(shared, "portable::batch_attach_reloads_once", batch_attach),
        exclusive_trial(shared, "portable::concurrent_changes_share_one_reload_and_fail_alone", group_commit),
        exclusive_trial(shared, "portable::batch_detach_of_many_images_reloads_once", batch_detach),
        exclusive_trial(shared, "portable::bad_batch_detach_fails_whole_and_changes_nothing", bad_batch_detach),
        exclusive_trial(shared, "portable::failed_batch_detach_rolls_back_every_image", failed_batch_detach),
        exclusive_trial(shared, "portable::runtime_attach_and_remove", runtime_and_remove),
        exclusive_trial(shared, "portable::same_image_side_by_side_with_portablectl", side_by_side),
        exclusive_trial(shared, "portable::portablectl_names_and_options_of_attach_and_detach", portablectl_options),
        exclusive_trial(shared, "portable::portablectl_and_wharf_see_and_spare_each_others_attachments", interop),
        exclusive_trial(shared, "portable::an_image_policy_is_checked_and_pinned", image_policy),
        trial(shared, "portable::detach_clean_removes_the_services_own_directories_only", detach_clean),
        exclusive_trial(shared, "portable::extensions_stack_on_the_image_and_bad_ones_are_refused", extensions),
    ]
}

/// Puts the testbed back to no foobar attached and an empty pool, whatever
/// an earlier (failed) test left: each test starts from the same host.
fn clean_slate(tb: &Testbed) {
    tb.ok("systemctl stop 'foobar*' alpha beta gamma 2>/dev/null; systemctl disable foobar.service 2>/dev/null; \
         rm -rf /etc/systemd/system/foobar* /run/systemd/system/foobar* /etc/systemd/system/*.wants/foobar* \
         /etc/systemd/system.attached/foobar* /run/systemd/system.attached/foobar* /etc/portables/foobar* \
         /run/portables/foobar* /var/lib/portables/* /var/lib/wharf/transactions/*; \
         systemctl daemon-reload; systemctl reset-failed; true");
}

/// Builds foobar in `format` with `version` as `/var/lib/portables/<name>`.
fn pool_image(tb: &Testbed, name: &str, format: &str, version: &str) {
    let host = tb.host_path(&format!("/var/lib/portables/{name}"));
    std::fs::create_dir_all(host.parent().unwrap()).unwrap();
    images::foobar(&host, format, version).unwrap();
}

/// Nothing of foobar is left among the host's units.
#[track_caller]
fn assert_no_foobar_units(tb: &Testbed) {
    let left = tb
        .ok("ls -d /etc/systemd/system/foobar* /run/systemd/system/foobar* /etc/systemd/system.attached/foobar* \
         /run/systemd/system.attached/foobar* /etc/portables/foobar* /run/portables/foobar* 2>/dev/null || true");
    assert_eq!(left.trim(), "", "files left behind");
}

#[track_caller]
fn show(tb: &Testbed, unit: &str, property: &str) -> String {
    tb.ok(&format!("systemctl show -p {property} --value {unit}")).trim().to_string()
}

/// The os-release the running service sees, from inside its mount namespace.
fn os_release_seen_by(tb: &Testbed, unit: &str) -> String {
    let pid = show(tb, unit, "MainPID");
    assert_ne!(pid, "0", "{unit} has no main process");
    assert!(tb.wait_exec(&pid, "busybox"), "{unit} never exec'd busybox");
    tb.ok(&format!("cat /proc/{pid}/root/usr/lib/os-release"))
}

/// Attaches, starts, checks the service runs in the image, stops, detaches.
fn attach_run_detach(tb: &Testbed, image: &str, root_property: &str, version: &str) {
    let out = tb.ok(&format!("portable attach {image}"));
    assert!(out.contains("/etc/systemd/system/foobar.service.d/20-portable.conf"), "{out}");
    let dropin = tb.ok("cat /etc/systemd/system/foobar.service.d/20-portable.conf");
    let path = tb.ok(&format!("portable is-attached --json {image}"));
    let state: serde_json::Value = serde_json::from_str(&path).unwrap();
    assert_eq!(state["state"], "attached");
    let image_path = state["image"].as_str().unwrap().to_string();
    assert!(
        dropin.starts_with(&format!("# Drop-in created by wharf for image '{image_path}', do not edit.\n")),
        "{dropin}"
    );
    assert!(dropin.contains(&format!("{root_property}={image_path}\n")), "{dropin}");

    tb.ok("systemctl start foobar.service");
    assert_eq!(show(tb, "foobar.service", "ActiveState"), "active");
    assert_eq!(show(tb, "foobar.service", root_property), image_path);
    let seen = os_release_seen_by(tb, "foobar.service");
    assert!(seen.contains(&format!("VERSION_ID={version}")), "{seen}");
    assert_eq!(tb.ok(&format!("portable is-attached {image}")).trim(), "running");

    tb.ok("systemctl stop foobar.service");
    let out = tb.ok(&format!("portable detach {image}"));
    assert!(out.contains("Removed /etc/systemd/system/foobar.service."), "{out}");
    assert_no_foobar_units(tb);
    let detached: Out = tb.sh(&format!("portable is-attached {image}"));
    assert_eq!((detached.code, detached.stdout.trim()), (Some(1), "detached"), "{detached}");
}

fn attach_squashfs(tb: &Testbed) {
    clean_slate(tb);
    pool_image(tb, "foobar.raw", "squashfs", "1");
    attach_run_detach(tb, "foobar.raw", "RootImage", "1");
}

fn attach_ext4(tb: &Testbed) {
    clean_slate(tb);
    pool_image(tb, "foobar.raw", "ext4", "5");
    attach_run_detach(tb, "foobar.raw", "RootImage", "5");
}

fn attach_erofs(tb: &Testbed) {
    clean_slate(tb);
    pool_image(tb, "foobar.raw", "erofs", "6");
    attach_run_detach(tb, "foobar.raw", "RootImage", "6");
}

fn attach_gpt(tb: &Testbed) {
    clean_slate(tb);
    pool_image(tb, "foobar.raw", "gpt", "7");
    attach_run_detach(tb, "foobar.raw", "RootImage", "7");
}

/// Whether the testbed's kernel has device-mapper, without which systemd
/// cannot open a verity-protected image for a service at all (it fails the
/// NAMESPACE step, whatever the drop-in says).
fn kernel_has_device_mapper(tb: &Testbed) -> bool {
    tb.sh("grep -qw device-mapper /proc/misc").success()
}

/// Waits for a service whose start forks and then fails in the child (a
/// simple service refused at the NAMESPACE step), and returns its exit status.
fn failed_status(tb: &Testbed, unit: &str) -> String {
    let failed = tb.sh(&format!("timeout 30 sh -c 'until systemctl is-failed -q {unit}; do sleep 0.1; done'"));
    assert!(failed.success(), "{unit} did not fail: {failed}");
    let status = show(tb, unit, "ExecMainStatus");
    tb.ok(&format!("systemctl reset-failed {unit}"));
    status
}

/// Nothing of an image is open: no loop device of it, no device-mapper
/// device at all.
#[track_caller]
fn assert_nothing_open(tb: &Testbed, image: &str) {
    assert_eq!(tb.loop_devices(image), Vec::<String>::new(), "loop devices of {image} left");
    assert_eq!(tb.ok("ls /sys/class/block | grep '^dm-'; true").trim(), "", "device-mapper devices left");
}

/// A GPT image with a root-verity partition: attach checks every block of
/// its root partition against the hash tree and the tree against the root
/// hash (from the partition UUIDs, as systemd-repart writes them, or a
/// .roothash file beside the image), and pins the attachment to that root
/// hash (`RootHash=`, which systemd cannot learn from the UUIDs itself) and
/// from systemd 254 on also to `root=verity`. A tampered image is refused
/// in one line naming the partition, before anything is written; one
/// tampered or swapped under the attachment is refused by systemd at start
/// and by a reattach, until a reattach of a file that passes pins that.
fn verity_image(tb: &Testbed) {
    use super::images::{flip_byte, verity_disk};
    clean_slate(tb);
    let version: u32 = tb.ok("systemctl --version").split_whitespace().nth(1).unwrap().parse().unwrap();
    let root = tb.host_path("/var/tmp/verity-root.squashfs");
    images::foobar(&root, "squashfs", "7").unwrap();
    let pool = tb.host_path("/var/lib/portables");
    let (hash, data_at) = verity_disk(&root, &pool.join("foobar_7.raw"), true);
    let dropin = || tb.ok("cat /etc/systemd/system/foobar.service.d/20-portable.conf");
    let refused = |command: &str, reason: &str| {
        let out = tb.fails(command);
        assert_eq!(out.stderr.trim_end().lines().count(), 1, "{command}: {out}");
        assert!(out.stderr.contains(reason), "{command}: wanted {reason:?}: {out}");
        assert_no_foobar_units(tb);
    };

    // One flipped byte in the root partition: refused, naming it.
    std::fs::copy(pool.join("foobar_7.raw"), pool.join("foobar_8.raw")).unwrap();
    flip_byte(&pool.join("foobar_8.raw"), data_at + 3 * 4096 + 17);
    refused(
        "portable attach foobar_8.raw",
        "root partition of image '/var/lib/portables/foobar_8.raw' does not match its verity hash: block 3 differs",
    );
    assert_nothing_open(tb, "/var/lib/portables/foobar_8.raw");
    // Random UUIDs and nothing beside it: the root hash is not known.
    let (other_hash, _) = verity_disk(&root, &pool.join("foobar_9.raw"), false);
    refused(
        "portable attach foobar_9.raw",
        "the root hash of its root partition is not known: its partition UUIDs are not derived from it as systemd-repart derives them (give it in /var/lib/portables/foobar_9.roothash)",
    );
    // A wrong one beside it: the partition does not match it.
    std::fs::write(pool.join("foobar_9.roothash"), format!("{hash}\n")).unwrap();
    refused(
        "portable attach foobar_9.raw",
        &format!(
            "root partition of image '/var/lib/portables/foobar_9.raw' does not match its verity hash: its root hash is {other_hash}, not {hash} (from /var/lib/portables/foobar_9.roothash)"
        ),
    );
    // A FIFO or an endless device in its place: refused at once, not
    // waited on or read for ever.
    for hostile in
        ["mkfifo /var/lib/portables/foobar_9.roothash", "ln -s /dev/zero /var/lib/portables/foobar_9.roothash"]
    {
        tb.ok(&format!("rm -f /var/lib/portables/foobar_9.roothash && {hostile}"));
        let out = tb.fails("timeout 60 portable attach foobar_9.raw");
        assert_eq!(out.stderr.trim_end().lines().count(), 1, "{hostile}: {out}");
        assert!(out.stderr.contains("foobar_9.roothash: it is"), "{hostile}: {out}");
        assert_nothing_open(tb, "/var/lib/portables/foobar_9.raw");
    }
    tb.ok("rm /var/lib/portables/foobar_9.roothash");
    // The right one: attached, pinned to it.
    std::fs::write(pool.join("foobar_9.roothash"), format!("{other_hash}\n")).unwrap();
    tb.ok("portable attach foobar_9.raw");
    assert!(dropin().contains(&format!("\nRootHash={other_hash}\n")), "{}", dropin());
    tb.ok("portable detach foobar_9.raw");
    tb.ok("rm /var/lib/portables/foobar_8.raw /var/lib/portables/foobar_9.raw /var/lib/portables/foobar_9.roothash");
    // A signature partition: its root hash is used, and its signature goes
    // along for systemd to check (wharf has no key to check it with); the
    // pin is `signed`.
    let json = r#"{"rootHash":"@ROOTHASH@","signature":"MIIBdGVzdA==","certificateFingerprint":"00"}"#;
    let (signed_hash, _) = super::images::verity_disk_signed(&root, &pool.join("foobar_9.raw"), false, Some(json));
    tb.ok("portable attach foobar_9.raw");
    let text = dropin();
    assert!(text.contains(&format!("\nRootHash={signed_hash}\nRootHashSignature=base64:MIIBdGVzdA==\n")), "{text}");
    if version >= 254 {
        assert!(text.contains("\nRootImagePolicy=root=signed"), "{text}");
    }
    tb.ok("portable detach foobar_9.raw && rm /var/lib/portables/foobar_9.raw");

    // The root hash from the UUIDs, pinned; systemd takes it.
    tb.ok("portable attach foobar_7.raw");
    let text = dropin();
    assert!(text.contains(&format!("\nRootImage=/var/lib/portables/foobar_7.raw\nRootHash={hash}\n")), "{text}");
    assert!(!text.contains("RootHashSignature="), "no signature partition: {text}");
    let derived = match version {
        v if v >= 258 => Some("root=verity+squashfs:=absent"),
        v if v >= 254 => Some("root=verity:=absent"),
        _ => None,
    };
    if let Some(policy) = derived {
        assert!(text.contains(&format!("\nRootImagePolicy={policy}\n")), "{text}");
    }
    assert_eq!(show(tb, "foobar.service", "RootHash").to_lowercase(), hash);
    let runs = kernel_has_device_mapper(tb);
    tb.ok("systemctl start foobar.service");
    if runs {
        assert!(os_release_seen_by(tb, "foobar.service").contains("VERSION_ID=7"));
        tb.ok("systemctl stop foobar.service");
    } else {
        // systemd sets up dm-verity for it with the pinned root hash, and
        // cannot on a kernel without device-mapper.
        assert_eq!(failed_status(tb, "foobar.service"), "226");
    }

    // Tampered under the attachment: a reattach refuses it and keeps the
    // attachment as it was.
    flip_byte(&pool.join("foobar_7.raw"), data_at + 5 * 4096);
    let out = tb.fails("portable reattach foobar_7.raw");
    assert_eq!(out.stderr.trim_end().lines().count(), 1, "{out}");
    assert!(
        out.stderr.contains(
            "root partition of image '/var/lib/portables/foobar_7.raw' does not match its verity hash: block 5 differs"
        ),
        "{out}"
    );
    assert_eq!(dropin(), text, "a refused reattach changed the attachment");
    tb.ok("systemctl start foobar.service");
    assert_eq!(failed_status(tb, "foobar.service"), "226", "systemd ran a tampered image");
    assert_nothing_open(tb, "/var/lib/portables/foobar_7.raw");

    // Swapped for an unprotected image of the same service: systemd
    // refuses it (the root hash, and the policy from 254 on), until a
    // reattach pins the new file as it is, which then runs.
    let swapped = pool.join(".foobar_7.swap");
    super::images::gpt_disk(&swapped, &[(super::images::root_types().0, "root", Some(&root))]);
    tb.ok("mv /var/lib/portables/.foobar_7.swap /var/lib/portables/foobar_7.raw");
    tb.ok("systemctl start foobar.service");
    assert_eq!(failed_status(tb, "foobar.service"), "226", "systemd ran a swapped image past its pin");
    tb.ok("portable reattach foobar_7.raw");
    let text = dropin();
    assert!(!text.contains("RootHash="), "{text}");
    tb.ok("systemctl start foobar.service");
    assert!(os_release_seen_by(tb, "foobar.service").contains("VERSION_ID=7"));
    tb.ok("systemctl stop foobar.service");
    tb.ok("portable detach foobar_7.raw");
    assert_no_foobar_units(tb);
    assert_nothing_open(tb, "/var/lib/portables/foobar_7.raw");
    std::fs::remove_file(&root).unwrap();
    tb.ok("rm -f /var/lib/portables/foobar_7.raw");
}

/// portablectl refuses .raw.xz; wharf decompresses it into the pool once
/// and attaches the result.
fn attach_xz(tb: &Testbed) {
    clean_slate(tb);
    pool_image(tb, "foobar_8.raw.xz", "xz", "8");
    let out = tb.ok("portable attach foobar_8.raw.xz");
    assert!(out.contains("/etc/systemd/system/foobar.service.d/20-portable.conf"), "{out}");
    assert_eq!(tb.ok("portable is-attached foobar_8.raw").trim(), "attached");
    tb.ok("systemctl start foobar.service");
    assert_eq!(show(tb, "foobar.service", "RootImage"), "/var/lib/portables/foobar_8.raw");
    assert!(os_release_seen_by(tb, "foobar.service").contains("VERSION_ID=8"));
    // A second attach of the same .raw.xz reuses the decompressed image.
    let inode = tb.ok("stat -c %i /var/lib/portables/foobar_8.raw");
    tb.ok("portable detach --now foobar_8.raw && portable attach foobar_8.raw.xz");
    assert_eq!(tb.ok("stat -c %i /var/lib/portables/foobar_8.raw"), inode);
    tb.ok("portable detach foobar_8.raw");
    assert_no_foobar_units(tb);
    // The source and its one decompressed copy: no temporary, nothing else.
    assert_eq!(
        tb.ok("ls -A /var/lib/portables"),
        "foobar_8.raw\nfoobar_8.raw.xz\n",
        "the pool after attaching an xz image"
    );
}

fn attach_directory(tb: &Testbed) {
    clean_slate(tb);
    pool_image(tb, "foobar-dir", "dir", "4");
    // A directory image's units are symlinked into the image.
    attach_run_detach(tb, "foobar-dir", "RootDirectory", "4");
}

fn now_and_enable(tb: &Testbed) {
    clean_slate(tb);
    pool_image(tb, "foobar.raw", RAW, "1");
    let out = tb.ok("portable attach --now --enable foobar.raw");
    assert!(out.contains("Started foobar.service."), "{out}");
    assert_eq!(show(tb, "foobar.service", "ActiveState"), "active");
    assert_eq!(tb.ok("systemctl is-enabled foobar.service").trim(), "enabled");
    let listed = tb.ok("portable list --json");
    let kind = if RAW == "dir" { "directory" } else { RAW };
    let expected =
        format!(r#""name":"foobar.raw","path":"/var/lib/portables/foobar.raw","kind":"{kind}","state":"running""#);
    assert!(listed.contains(&expected), "{listed}");

    let refused = tb.fails("portable detach foobar.raw");
    assert_eq!(
        refused.stderr.trim(),
        "portable: unit 'foobar.service' of image '/var/lib/portables/foobar.raw' is active; stop it first or use --now"
    );
    assert_eq!(show(tb, "foobar.service", "ActiveState"), "active", "a refused detach changes nothing");

    let out = tb.ok("portable detach --now foobar.raw");
    assert!(out.contains("Stopped foobar.service."), "{out}");
    assert_eq!(show(tb, "foobar.service", "LoadState"), "not-found");
    assert!(!tb.ok("ls /etc/systemd/system/multi-user.target.wants/").contains("foobar"), "still enabled");
    assert_no_foobar_units(tb);
}

fn reattach_running(tb: &Testbed) {
    clean_slate(tb);
    pool_image(tb, "foobar_1.raw", RAW, "1");
    pool_image(tb, "foobar_2.raw", RAW, "2");
    tb.ok("portable attach --now foobar_1.raw");
    let pid_before = show(tb, "foobar.service", "MainPID");
    assert!(os_release_seen_by(tb, "foobar.service").contains("VERSION_ID=1"));

    let out = tb.ok("portable reattach foobar_2.raw");
    assert!(out.contains("Restarted foobar.service."), "{out}");
    assert_eq!(show(tb, "foobar.service", "ActiveState"), "active");
    assert_ne!(show(tb, "foobar.service", "MainPID"), pid_before, "not restarted");
    assert_eq!(show(tb, "foobar.service", "RootImage"), "/var/lib/portables/foobar_2.raw");
    assert!(os_release_seen_by(tb, "foobar.service").contains("VERSION_ID=2"));
    assert_eq!(tb.sh("portable is-attached foobar_1.raw").stdout.trim(), "detached");
    assert_eq!(tb.ok("portable is-attached foobar_2.raw").trim(), "running");

    tb.ok("portable detach --now foobar_2.raw");
    assert_no_foobar_units(tb);
}

/// The `changes` of an operation's `--json`, as (kind, path, source).
fn changes_of(json: &str) -> Vec<(String, String, String)> {
    let doc: serde_json::Value = serde_json::from_str(json).unwrap_or_else(|e| panic!("{e}: {json}"));
    let field = |c: &serde_json::Value, k: &str| c[k].as_str().unwrap_or_default().to_string();
    doc["changes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| (field(c, "kind"), field(c, "path"), field(c, "source")))
        .collect()
}

/// `--check` of attach, reattach and detach: wharf's own plan, in the
/// words of a real run, checked as a real run checks, with nothing changed
/// (no file, no unit, no audit entry); `is-attached --json` then tells the
/// profile and each unit's states.
fn check_plans(tb: &Testbed) {
    clean_slate(tb);
    pool_image(tb, "foobar_1.raw", RAW, "1");
    pool_image(tb, "foobar_2.raw", RAW, "2");
    let before = tb.unit_files("foobar* *.wants");
    let since = tb.ok("date +%s.%N").trim().to_string();
    tb.ok("portable attach --check --profile trusted foobar_1.raw");
    let planned = tb.ok("portable attach --check --json --enable --now foobar_1.raw");
    assert_eq!(tb.unit_files("foobar* *.wants"), before, "attach --check changed files");
    assert_eq!(show(tb, "foobar.service", "ActiveState"), "inactive");
    let words = tb.ok("portable attach --check --enable --now foobar_1.raw");
    assert!(words.contains("Would write /etc/systemd/system/foobar.service.\n"), "{words}");
    assert!(words.contains("Would start foobar.service.\n(check: nothing was changed)"), "{words}");
    let done = tb.ok("portable attach --json --enable --now foobar_1.raw");
    assert_eq!(changes_of(&planned), changes_of(&done), "{planned}\n{done}");
    // Plans leave no audit entry: the first one is the real attach's
    // (journald keeps wharfd's entries in the order they were sent).
    let entries = crate::audit::history(tb, &format!("portable history --json --since=@{since} foobar_1.raw"), 1);
    assert_eq!(entries[0]["fields"]["PROFILE"][0], "default", "{entries:?}");

    let status: serde_json::Value = serde_json::from_str(&tb.ok("portable is-attached --json foobar_1.raw")).unwrap();
    assert_eq!((&status["profile"], &status["runtime"]), (&"default".into(), &false.into()), "{status}");
    let unit = status["units"].as_array().unwrap().iter().find(|u| u["name"] == "foobar.service").unwrap().clone();
    assert_eq!(
        (&unit["active_state"], &unit["installable"], &unit["stays_up"]),
        (&"active".into(), &true.into(), &true.into())
    );
    assert!(unit["unit_file_state"].as_str().unwrap().starts_with("enabled"), "{status}");

    // The same image with another profile: a reattach of itself, which
    // restarts what runs; planned, nothing moves.
    let pid = show(tb, "foobar.service", "MainPID");
    let attached = tb.unit_files("foobar* *.wants");
    let planned: serde_json::Value =
        serde_json::from_str(&tb.ok("portable reattach --check --json --profile trusted foobar_1.raw")).unwrap();
    assert_eq!(planned["restarted"], serde_json::json!(["foobar.service"]), "{planned}");
    assert_eq!(planned["replaced"], serde_json::json!([]), "{planned}");
    assert_eq!(planned["check"], true, "{planned}");
    assert_eq!(
        (tb.unit_files("foobar* *.wants"), show(tb, "foobar.service", "MainPID")),
        (attached.clone(), pid.clone())
    );
    // Another version: the plan names the one it replaces.
    let upgrade: serde_json::Value =
        serde_json::from_str(&tb.ok("portable reattach --check --json foobar_2.raw")).unwrap();
    assert_eq!(upgrade["replaced"], serde_json::json!(["/var/lib/portables/foobar_1.raw"]), "{upgrade}");
    tb.ok("portable reattach --profile trusted foobar_1.raw");
    assert_ne!(show(tb, "foobar.service", "MainPID"), pid, "not restarted in its new sandbox");
    let status: serde_json::Value = serde_json::from_str(&tb.ok("portable is-attached --json foobar_1.raw")).unwrap();
    assert_eq!(status["profile"], "trusted", "{status}");

    // A plan is refused as the run would be: running units without --now,
    // and (the attack) by anyone but root, who may not even learn the plan.
    let refused = tb.fails("portable detach --check foobar_1.raw");
    assert!(refused.stderr.contains("foobar.service' of image") && refused.stderr.contains("is active"), "{refused}");
    let out = tb.sh_nobody("portable attach --check foobar_2.raw");
    assert_eq!(out.code, Some(1), "{out}");
    assert!(out.stderr.contains("needs authorization for org.wharf1.portable.attach"), "{out}");
    let files = tb.unit_files("foobar* *.wants");
    let planned = tb.ok("portable detach --check --json --now foobar_1.raw");
    assert_eq!(tb.unit_files("foobar* *.wants"), files);
    assert_eq!(show(tb, "foobar.service", "ActiveState"), "active");
    let done = tb.ok("portable detach --json --now foobar_1.raw");
    assert_eq!(changes_of(&planned), changes_of(&done), "{planned}\n{done}");
    assert_no_foobar_units(tb);
}

fn failed_reattach(tb: &Testbed) {
    clean_slate(tb);
    pool_image(tb, "foobar_1.raw", RAW, "1");
    tb.ok("portable attach --now foobar_1.raw");
    let before = tb.unit_files("foobar*");

    // A newer version whose service cannot start: its files are put back
    // and the old version runs again.
    let broken = tb.host_path("/var/lib/portables/foobar_3.raw");
    images::foobar(&broken, "dir", "3").unwrap();
    let unit = broken.join("usr/lib/systemd/system/foobar.service");
    let text = std::fs::read_to_string(&unit)
        .unwrap()
        .replace("ExecStart=/usr/bin/busybox httpd", "ExecStart=/usr/bin/missing httpd");
    std::fs::write(&unit, text).unwrap();
    let dir_image = broken.with_file_name("foobar_3");
    std::fs::rename(&broken, &dir_image).unwrap();
    let refused = tb.fails("portable reattach foobar_3");
    assert!(refused.stderr.contains("the host was left as it was"), "{refused}");
    assert_eq!(refused.stderr.lines().count(), 1, "{refused}");
    assert_eq!(tb.unit_files("foobar*"), before);
    assert_eq!(show(tb, "foobar.service", "ActiveState"), "active");
    assert_eq!(show(tb, "foobar.service", "RootImage"), "/var/lib/portables/foobar_1.raw");

    // An image that cannot be read at all never touches the old attachment.
    std::fs::write(tb.host_path("/var/lib/portables/foobar_4.raw"), b"not an image").unwrap();
    let refused = tb.fails("portable reattach foobar_4.raw");
    assert_eq!(
        refused.stderr.trim(),
        "portable: image '/var/lib/portables/foobar_4.raw': not an image (neither a directory nor a squashfs, ext4, erofs, GPT or xz file)"
    );
    assert_eq!(tb.unit_files("foobar*"), before);
    tb.ok("portable detach --now foobar_1.raw && rm -rf /var/lib/portables/foobar_3 /var/lib/portables/foobar_4.raw");
    assert_no_foobar_units(tb);
}

fn conflicts(tb: &Testbed) {
    clean_slate(tb);
    pool_image(tb, "foobar.raw", RAW, "1");
    tb.ok("printf '[Service]\\nExecStart=/bin/true\\n' > /etc/systemd/system/foobar.service");
    let refused = tb.fails("portable attach foobar.raw");
    assert_eq!(
        refused.stderr.trim(),
        "portable: unit 'foobar.service' exists on the host already (/etc/systemd/system/foobar.service); use --force to attach over it"
    );
    assert_eq!(tb.ok("ls -d /etc/systemd/system/foobar*").trim(), "/etc/systemd/system/foobar.service");

    tb.ok("portable attach --force foobar.raw");
    assert!(tb.ok("cat /etc/systemd/system/foobar.service").contains("busybox httpd"));
    tb.ok("portable detach foobar.raw");
    assert_no_foobar_units(tb);

    // Another image bringing the same units is pointed to reattach.
    pool_image(tb, "foobar_2.raw", RAW, "2");
    tb.ok("portable attach foobar.raw");
    let refused = tb.fails("portable attach foobar_2.raw");
    assert!(
        refused.stderr.contains("is already attached from image '/var/lib/portables/foobar.raw'; use reattach"),
        "{refused}"
    );
    tb.ok("portable detach foobar.raw");
    assert_no_foobar_units(tb);
}

fn bad_requests(tb: &Testbed) {
    clean_slate(tb);
    pool_image(tb, "foobar.raw", RAW, "1");
    let cases = [
        (
            "portable attach --profile nope foobar.raw",
            "portable: unknown profile 'nope' (known: default, nonetwork, strict, trusted)",
        ),
        ("portable attach no-such-image", "portable: image 'no-such-image' not found in the search path"),
        (
            "portable attach foobar.raw nomatch",
            "portable: image '/var/lib/portables/foobar.raw': prefix 'nomatch' is not among the image's PORTABLE_PREFIXES (foobar)",
        ),
        ("portable detach foobar.raw", "portable: image '/var/lib/portables/foobar.raw' is not attached"),
        ("portable attach /etc/hostname", "portable: image '/etc/hostname': not an image"),
    ];
    for (command, expected) in cases {
        let out = tb.fails(command);
        assert!(out.stderr.starts_with(expected), "{command}: {out}");
        assert_eq!(out.stderr.lines().count(), 1, "{command}: {out}");
        assert_no_foobar_units(tb);
        assert_eq!(
            tb.ok("ls -A /var/lib/wharf/transactions 2>/dev/null || true").trim(),
            "",
            "journal left by {command}"
        );
    }
}

fn profiles(tb: &Testbed) {
    clean_slate(tb);
    pool_image(tb, "foobar.raw", RAW, "1");
    for (profile, expectations) in [
        ("default", &[("DynamicUser", "yes"), ("PrivateNetwork", "no"), ("ProtectSystem", "strict")][..]),
        ("nonetwork", &[("PrivateNetwork", "yes"), ("RestrictAddressFamilies", "AF_NETLINK AF_UNIX")][..]),
        (
            "strict",
            &[("PrivateNetwork", "yes"), ("TasksMax", "4"), ("CapabilityBoundingSet", ""), ("NoNewPrivileges", "yes")]
                [..],
        ),
        ("trusted", &[("DynamicUser", "no"), ("PrivateTmp", "yes"), ("PrivateNetwork", "no")][..]),
    ] {
        tb.ok(&format!("portable attach --profile {profile} foobar.raw"));
        for (property, value) in expectations {
            assert_eq!(show(tb, "foobar-hello.service", property), *value, "{profile}: {property}");
        }
        // The service really runs in the image under each profile.
        tb.ok("systemctl start foobar-hello.service");
        let said = tb.ok("journalctl -q -u foobar-hello.service -o cat | grep '^hello from' | tail -1");
        assert_eq!(said.trim(), "hello from foobar 1 (a wharf sample portable service)", "{profile}");
        tb.ok("portable detach foobar.raw");
    }
    assert_no_foobar_units(tb);
}

fn unprivileged(tb: &Testbed) {
    clean_slate(tb);
    pool_image(tb, "foobar.raw", RAW, "1");
    for (command, what) in [
        ("portable attach foobar.raw", "attaching an image"),
        ("portable attach --batch foobar.raw", "attaching images"),
        ("portable reattach foobar.raw", "reattaching an image"),
        ("portable detach foobar.raw", "detaching an image"),
        ("portable detach --batch foobar.raw", "detaching images"),
        ("portable remove foobar.raw", "removing an image"),
    ] {
        let out = tb.sh_nobody(command);
        assert_eq!(out.code, Some(1), "{out}");
        assert_eq!(
            out.stderr.trim(),
            format!(
                "portable: access denied: {what} needs authorization for org.wharf1.portable.attach (caller is uid 65534)"
            )
        );
    }
    // Looking is allowed.
    let out = tb.sh_nobody("portable is-attached foobar.raw");
    assert_eq!((out.code, out.stdout.trim()), (Some(1), "detached"), "{out}");
    assert_no_foobar_units(tb);
}

fn batch_attach(tb: &Testbed) {
    clean_slate(tb);
    // Three images with distinct units: build foobar and rename its units.
    for name in ["alpha", "beta", "gamma"] {
        images::foobar_as(&tb.host_path(&format!("/var/lib/portables/{name}")), name, "foobar-hello.service").unwrap();
    }
    let since = tb.ok("date +%s.%N").trim().to_string();
    let out = tb.ok("portable attach --batch alpha beta gamma");
    assert_eq!(out.matches("Written /etc/systemd/system/").count(), 3, "{out}");
    let reloads =
        tb.ok(&format!("journalctl -q --since @{since} -o cat _PID=1 | grep -c -E '^Reloading\\.+$' || true"));
    assert_eq!(reloads.trim(), "1", "one reload for the whole batch");
    for name in ["alpha", "beta", "gamma"] {
        tb.ok(&format!("systemctl start {name}.service"));
        assert!(tb.ok(&format!("journalctl -q -u {name}.service -o cat")).contains("hello from foobar 1"));
    }
    // All or nothing: a batch with one bad image attaches none.
    for name in ["alpha", "beta", "gamma"] {
        tb.ok(&format!("portable detach {name}"));
    }
    let refused = tb.fails("portable attach --batch alpha beta no-such-image");
    assert!(refused.stderr.contains("'no-such-image' not found"), "{refused}");
    assert_eq!(tb.ok("ls /etc/systemd/system | grep -c -E 'alpha|beta' || true").trim(), "0");
    tb.ok("rm -rf /var/lib/portables/alpha /var/lib/portables/beta /var/lib/portables/gamma");
}

/// Group commit: attaches that arrive while another change holds wharfd's
/// change lock are applied together, with one reload of systemd, and each
/// caller gets its own result; among detaches applied together, one that
/// cannot be done fails alone and the others are done; reads answer while
/// the lock is held. The change holding the lock is an `attach --now` of a
/// unit whose start waits for a host unit the test releases, once the
/// journal says that every request waits.
fn group_commit(tb: &Testbed) {
    let reset = "systemctl stop gate.service 'grp*.service' 2>/dev/null; systemctl reset-failed 'grp*' 2>/dev/null; \
         rm -rf /run/gate-open /var/tmp/grp /etc/systemd/system/gate.service /etc/systemd/system/grp* \
         /etc/systemd/system.attached/grp* /etc/systemd/system/*.wants/grp* /etc/portables/grp* /var/lib/portables/grp*; \
         systemctl daemon-reload; systemctl reset-failed; true";
    clean_slate(tb);
    tb.ok(reset);
    std::fs::write(
        tb.host_path("/etc/systemd/system/gate.service"),
        "[Service]\nType=oneshot\nRemainAfterExit=yes\nExecStart=/bin/sh -c 'until [ -e /run/gate-open ]; do sleep 0.1; done'\n",
    )
    .unwrap();
    let gate = tb.host_path("/var/lib/portables/grpgate");
    images::foobar_as(&gate, "grpgate", "foobar-hello.service").unwrap();
    std::fs::write(
        gate.join("usr/lib/systemd/system/grpgate.service"),
        "[Unit]\nWants=gate.service\nAfter=gate.service\n[Service]\nType=oneshot\nRemainAfterExit=yes\n\
         ExecStart=/usr/bin/busybox true\n",
    )
    .unwrap();
    let names: Vec<String> = (1..=7).map(|i| format!("grp{i}")).collect();
    for name in &names {
        let image = tb.host_path(&format!("/var/lib/portables/{name}"));
        images::foobar_as(&image, name, "foobar-hello.service").unwrap();
        // Running once started, until stopped: what reads must tell apart.
        std::fs::write(
            image.join(format!("usr/lib/systemd/system/{name}.service")),
            "[Service]\nType=oneshot\nRemainAfterExit=yes\nExecStart=/usr/bin/busybox true\n",
        )
        .unwrap();
    }
    // An image whose reattach fails in its plan: it has no units any more.
    let bad = tb.host_path("/var/lib/portables/grpbad");
    images::foobar_as(&bad, "grpbad", "foobar-hello.service").unwrap();
    std::fs::remove_file(bad.join("usr/lib/systemd/system/grpbad.service")).unwrap();
    // A hostile image whose service fails and restarts without end: a
    // storm of state changes, which must not stall wharfd nor show up in
    // the states of other images.
    let evil = tb.host_path("/var/lib/portables/grpevil");
    images::foobar_as(&evil, "grpevil", "foobar-hello.service").unwrap();
    std::fs::write(
        evil.join("usr/lib/systemd/system/grpevil.service"),
        "[Unit]\nStartLimitIntervalSec=0\n[Service]\nExecStart=/usr/bin/busybox false\nRestart=always\nRestartSec=20ms\n",
    )
    .unwrap();
    tb.ok("systemctl daemon-reload && mkdir -p /var/tmp/grp");
    // Until the journal after cursor $1 says that $2 requests wait.
    std::fs::write(
        tb.host_path("/var/tmp/grp/waiting.sh"),
        "until [ \"$(journalctl -q --after-cursor=\"$1\" -o cat | grep -c 'waiting behind another change')\" \\
         -ge \"$2\" ]; do sleep 0.1; done\n",
    )
    .unwrap();
    // Runs `verb` of each image at once behind the gate, then `during`
    // while they all wait; returns when all ended, with the time the gate
    // opened.
    let behind_the_gate_and = |verb: &str, images: &[String], during: &str| -> String {
        let calls: String = images
            .iter()
            .map(|i| {
                format!("(set +e; portable {verb} {i} > /var/tmp/grp/{i}.out 2>&1; echo $? > /var/tmp/grp/{i}.rc) & ")
            })
            .collect();
        let script = format!(
            "set -e; rm -f /run/gate-open; systemctl stop gate.service; \
             portable attach --now grpgate > /var/tmp/grp/gate.out 2>&1 & gate=$!; \
             timeout 60 sh -c 'until [ \"$(systemctl show -P ActiveState gate.service)\" = activating ]; do sleep 0.1; done' \
             || {{ echo the gate never held the lock; cat /var/tmp/grp/gate.out; exit 1; }}; \
             timeout 10 portable list > /dev/null; {{ timeout 10 portable is-attached grpgate > /dev/null || test $? = 1; }}; \
             cursor=$(journalctl -n1 --show-cursor -q -o cat | sed -n 's/^-- cursor: //p'); \
             {calls} \
             timeout 60 sh /var/tmp/grp/waiting.sh \"$cursor\" {n} \
             || {{ echo not all waited; journalctl -q --after-cursor=\"$cursor\"; tail -n +1 /var/tmp/grp/*.out; exit 1; }}; \
             {during} \
             since=$(date +%s.%N); touch /run/gate-open; wait $gate; wait; echo $since",
            n = images.len()
        );
        tb.ok(&script).trim().to_string()
    };
    let behind_the_gate = |verb: &str, images: &[String]| behind_the_gate_and(verb, images, "");
    let result = |image: &str| -> (String, String) {
        (
            tb.ok(&format!("cat /var/tmp/grp/{image}.rc")).trim().to_string(),
            tb.ok(&format!("cat /var/tmp/grp/{image}.out")),
        )
    };

    let attached = &names[..6];
    let since = behind_the_gate("attach", attached);
    for name in attached {
        let (rc, out) = result(name);
        assert_eq!(rc, "0", "{name}: {out}");
        assert!(out.contains(&format!(" /etc/systemd/system/{name}.service")), "{name}: {out}");
        let others = attached.iter().filter(|o| *o != name);
        for other in others {
            assert!(!out.contains(&format!("/{other}.service")), "{name} was told of {other}'s changes: {out}");
        }
    }
    assert_eq!(reloads_since(tb, &since), 1, "one reload for the six attaches");
    let grouped = tb.ok(&format!(
        "journalctl -q --since @{since} -o cat | grep -c 'applying changes that arrived together' || true"
    ));
    assert_eq!(grouped.trim(), "1", "applied as one group");
    for name in attached {
        tb.ok(&format!("systemctl start {name}.service"));
    }
    tb.ok("systemctl stop grpgate.service && portable detach grpgate");
    tb.ok("portable attach grpevil && systemctl start --no-block grpevil.service");

    // Reattaches that wait share one reload too; grpbad's fails alone, in
    // one line. Meanwhile (the change lock held, seven changes waiting)
    // reads answer at once, from the host as the last finished change left
    // it: the gate's attach, in flight, is not seen yet; units started and
    // stopped with plain systemctl are.
    let mut reattached = attached.to_vec();
    reattached.push("grpbad".to_string());
    let nobody = "setpriv --reuid=nobody --regid=nogroup --clear-groups";
    let read_as = |who: &str, what: &str, out: &str| {
        format!(
            "(set +e; s=$(date +%s%N); timeout 10 {who} portable {what} > /var/tmp/grp/{out} 2>&1; \
             echo $? >> /var/tmp/grp/{out}; e=$(date +%s%N); echo $(( (e - s) / 1000 )) >> /var/tmp/grp/read-us);"
        )
    };
    let read = |what: &str, out: &str| read_as("", what, out);
    let wharfd = "$(busctl call org.freedesktop.DBus /org/freedesktop/DBus org.freedesktop.DBus GetNameOwner s org.wharf1 | cut -d'\"' -f2)";
    let forged = "/org/freedesktop/systemd1/unit/grp3_2eservice org.freedesktop.DBus.Properties PropertiesChanged \
                  'sa{sv}as' org.freedesktop.systemd1.Unit 1 ActiveState s active 0";
    let during = [
        "rm -f /var/tmp/grp/read-us;".to_string(),
        read("list", "list-held"),
        read("is-attached grpgate", "gate-held"),
        read("--json is-attached grp1", "grp1-running"),
        "systemctl stop grp2.service;".to_string(),
        read("--json is-attached grp2", "grp2-stopped"),
        read("list", "list-stopped"),
        "systemctl start grp2.service;".to_string(),
        read("--json is-attached grp2", "grp2-started"),
        // A local user's forged signals, sent to wharfd and to everyone.
        "systemctl stop grp3.service;".to_string(),
        format!("{nobody} busctl emit --destination={wharfd} {forged};"),
        format!("{nobody} busctl emit {forged};"),
        read("is-attached grp3", "grp3-forged"),
        read_as(nobody, "--json is-attached grp1", "grp1-nobody"),
        "systemctl start grp3.service;".to_string(),
    ]
    .concat();
    let since = behind_the_gate_and("reattach --profile=strict", &reattached, &during);
    let held = |out: &str| -> (String, String) {
        let text = tb.ok(&format!("cat /var/tmp/grp/{out}"));
        let (body, rc) = text.trim_end().rsplit_once('\n').unwrap_or(("", text.trim()));
        (rc.to_string(), body.to_string())
    };
    let json = |out: &str| -> serde_json::Value {
        let (rc, body) = held(out);
        assert!(rc == "0" || rc == "1", "{out}: {rc} {body}");
        serde_json::from_str(&body).unwrap_or_else(|e| panic!("{out}: {e}: {body}"))
    };
    let list_state = |out: &str, image: &str| -> String {
        let (rc, body) = held(out);
        assert_eq!(rc, "0", "{out}: {body}");
        let line =
            body.lines().find(|l| l.split_whitespace().next() == Some(image)).unwrap_or_else(|| panic!("{body}"));
        line.split_whitespace()
            .find(|w| {
                w.starts_with("running")
                    || w.starts_with("attached")
                    || w.starts_with("detached")
                    || w.starts_with("enabled")
            })
            .unwrap_or_default()
            .to_string()
    };
    assert_eq!(
        held("gate-held"),
        ("1".to_string(), "detached".to_string()),
        "the change in flight showed before it ended"
    );
    assert_eq!(list_state("list-held", "grpgate"), "detached");
    assert_eq!(list_state("list-held", "grp1"), "running");
    let grp1 = json("grp1-running");
    assert_eq!(grp1["state"], "running", "{grp1}");
    assert_eq!(grp1["units"][0]["active_state"], "active", "{grp1}");
    let grp2 = json("grp2-stopped");
    assert_eq!(grp2["state"], "attached", "stopped by systemctl: {grp2}");
    assert_eq!(grp2["units"][0]["active_state"], "inactive", "{grp2}");
    assert_eq!(list_state("list-stopped", "grp2"), "attached");
    assert_eq!(json("grp2-started")["state"], "running", "started by systemctl");
    assert_eq!(held("grp3-forged"), ("0".to_string(), "attached".to_string()), "a forged signal counted");
    let theirs = json("grp1-nobody");
    assert_eq!(
        (&theirs["state"], &theirs["units"][0]["active_state"]),
        (&grp1["state"], &grp1["units"][0]["active_state"])
    );
    assert_eq!(theirs["units"][0]["unit_file_state"], grp1["units"][0]["unit_file_state"], "{theirs}");
    let slowest = tb.ok("sort -n /var/tmp/grp/read-us | tail -1").trim().parse::<u64>().unwrap();
    assert!(slowest < 5_000_000, "a read took {slowest} us with the change lock held");
    for name in attached {
        let (rc, out) = result(name);
        assert_eq!(rc, "0", "{name}: {out}");
        let status = tb.ok(&format!("portable --json is-attached {name}"));
        let status: serde_json::Value = serde_json::from_str(&status).unwrap();
        assert_eq!(status["profile"], "strict", "{name}: {status}");
        assert_eq!(status["state"], "running", "{name} runs again on its new version: {status}");
    }
    let (rc, out) = result("grpbad");
    assert_ne!(rc, "0", "{out}");
    assert_eq!(out.trim_end().lines().count(), 1, "{out}");
    assert!(out.contains("grpbad"), "{out}");
    assert_eq!(reloads_since(tb, &since), 1, "one reload for the six reattaches");
    assert_eq!(tb.ok("portable is-attached grpgate").trim(), "running", "the change shows once it is done");
    tb.ok("systemctl stop grpevil.service; portable detach grpevil");

    // grp7 is not attached: its detach fails, alone, in one line.
    tb.ok("systemctl stop 'grp[0-9].service' grpgate.service && portable detach grpgate");
    behind_the_gate("detach", &names);
    for name in attached {
        let (rc, out) = result(name);
        assert_eq!(rc, "0", "{name}: {out}");
        assert!(tb.sh(&format!("test -e /etc/systemd/system/{name}.service")).code == Some(1), "{name} is left");
    }
    let (rc, out) = result("grp7");
    assert_ne!(rc, "0", "{out}");
    assert_eq!(out.trim_end().lines().count(), 1, "{out}");
    assert!(out.contains("grp7") && out.contains("not attached"), "{out}");
    tb.ok("systemctl stop grpgate.service && portable detach grpgate");
    tb.ok(reset);
}

/// The images of the batch detach tests: `count` directory images with
/// one unit each (`bdNN.service`, foobar's web server on its own port), in
/// the pool, none attached.
fn batch_images(tb: &Testbed, count: usize) -> Vec<String> {
    tb.ok("systemctl stop 'bd*.service' 2>/dev/null; chattr -i /etc/systemd/system/bd*.service.d 2>/dev/null; \
         rm -rf /etc/systemd/system.attached/bd* /run/systemd/system.attached/bd* /etc/portables/bd* /run/portables/bd* /etc/systemd/system/bd* /etc/systemd/system/*.wants/bd* /var/lib/portables/bd*; \
         systemctl daemon-reload; true");
    let names: Vec<String> = (0..count).map(|i| format!("bd{i:02}")).collect();
    for (i, name) in names.iter().enumerate() {
        let image = tb.host_path(&format!("/var/lib/portables/{name}"));
        images::foobar_as(&image, name, "foobar.service").unwrap();
        let unit = image.join(format!("usr/lib/systemd/system/{name}.service"));
        let text = std::fs::read_to_string(&unit).unwrap();
        std::fs::write(&unit, text.replace("127.0.0.1:8080", &format!("127.0.0.1:{}", 8100 + i))).unwrap();
    }
    names
}

/// What wharf wrote for the batch images (with contents), and what is running.
fn batch_state(tb: &Testbed) -> String {
    tb.ok("cd /etc/systemd/system && find bd* *.wants/bd* -type f -o -type l 2>/dev/null | sort | \
         while read f; do echo \"== $f\"; cat \"$f\" 2>/dev/null || readlink \"$f\"; done; \
         systemctl list-units --no-legend --plain --state=active 'bd*' | cut -d' ' -f1; \
         ls -A /var/lib/wharf/transactions 2>/dev/null; true")
}

#[track_caller]
fn reloads_since(tb: &Testbed, since: &str) -> usize {
    let out = tb.ok(&format!("journalctl -q --since @{since} -o cat _PID=1 | grep -c -E '^Reloading\\.+$' || true"));
    out.trim().parse().unwrap()
}

/// 20 images, some enabled and running, detached with one call: one reload,
/// every unit stopped, its files and links gone.
fn batch_detach(tb: &Testbed) {
    clean_slate(tb);
    let names = batch_images(tb, 20);
    let all = names.join(" ");
    tb.ok(&format!("portable attach --batch --enable {all}"));
    tb.ok("systemctl start bd00.service bd07.service bd19.service");
    assert_eq!(tb.ok("ls /etc/systemd/system/multi-user.target.wants | grep -c '^bd' || true").trim(), "20");

    let since = tb.ok("date +%s.%N").trim().to_string();
    let out = tb.ok(&format!("portable detach --batch --now {all}"));
    assert_eq!(reloads_since(tb, &since), 1, "one reload for the whole batch: {out}");
    for unit in ["bd00.service", "bd07.service", "bd19.service"] {
        assert!(out.contains(&format!("Stopped {unit}.")), "{out}");
    }
    for name in &names {
        assert!(out.contains(&format!("Removed /etc/systemd/system/{name}.service.")), "{out}");
        assert!(out.contains(&format!("Removed /etc/systemd/system/multi-user.target.wants/{name}.service.")), "{out}");
    }
    assert_eq!(batch_state(tb).trim(), "", "left behind");
    for name in &names {
        assert_eq!(tb.sh(&format!("portable is-attached {name}")).stdout.trim(), "detached");
        assert_eq!(show(tb, &format!("{name}.service"), "LoadState"), "not-found");
    }
    tb.ok("rm -rf /var/lib/portables/bd*");
}

/// A batch with an image that is not attached, a name that is not one, or
/// a running unit without --now, fails whole in one line: nothing stopped,
/// nothing removed, no reload.
fn bad_batch_detach(tb: &Testbed) {
    clean_slate(tb);
    let names = batch_images(tb, 3);
    tb.ok("portable attach --batch bd00 bd01");
    tb.ok("systemctl start bd00.service");
    let before = batch_state(tb);
    let since = tb.ok("date +%s.%N").trim().to_string();
    for (command, error) in [
        ("portable detach --batch --now bd00 bd01 bd02", "portable: image '/var/lib/portables/bd02' is not attached"),
        ("portable detach --batch --now bd00 no-such-image", "portable: image 'no-such-image' is not attached"),
        (
            "portable detach --batch bd01 bd00",
            "portable: unit 'bd00.service' of image '/var/lib/portables/bd00' is active; stop it first or use --now",
        ),
        // As portablectl: the words after the image are unit name prefixes.
        (
            "portable detach bd00 bd01",
            "portable: image '/var/lib/portables/bd00': no attached unit matches the prefixes bd01 \
             (to detach several images, use --batch)",
        ),
    ] {
        let out = tb.fails(command);
        assert_eq!(out.code, Some(1), "{out}");
        assert_eq!(out.stderr.trim(), error, "{command}");
        assert_eq!(out.stdout, "", "{out}");
    }
    assert_eq!(reloads_since(tb, &since), 0, "nothing was reloaded");
    assert_eq!(batch_state(tb), before, "the host changed");
    tb.ok("portable detach --batch --now bd00 bd01");
    drop(names);
    tb.ok("rm -rf /var/lib/portables/bd*");
}

/// A batch detach that fails half way, after some images' files are gone
/// (one image's drop-in directory is immutable): every image is put back,
/// the stopped unit runs again, and the error says the host is as it was.
/// wharfd is not killed or wedged: its own undo does this.
fn failed_batch_detach(tb: &Testbed) {
    clean_slate(tb);
    let names = batch_images(tb, 3);
    tb.ok("portable attach --batch --enable bd00 bd01 bd02");
    tb.ok("systemctl start bd00.service");
    let before = batch_state(tb);
    // From the host: trixie's minimal root has no chattr.
    let immutable = |flag: &str| {
        let dir = tb.host_path("/etc/systemd/system/bd02.service.d");
        crate::testbed::run_host(std::process::Command::new("chattr").arg(flag).arg(&dir), "chattr").unwrap();
    };
    immutable("+i");
    let out = tb.sh("portable detach --batch --now bd00 bd01 bd02");
    immutable("-i");
    assert_eq!(out.code, Some(1), "{out}");
    assert_eq!(out.stderr.lines().count(), 1, "{out}");
    assert!(out.stderr.starts_with("portable: "), "{out}");
    assert!(out.stderr.contains("bd02.service.d"), "names what failed: {out}");
    assert!(out.stderr.trim_end().ends_with("the host was left as it was"), "{out}");
    assert_eq!(batch_state(tb), before, "not put back as it was");
    assert_eq!(show(tb, "bd00.service", "ActiveState"), "active");
    // And without the obstacle the same batch goes through.
    tb.ok("portable detach --batch --now bd00 bd01 bd02");
    assert_eq!(batch_state(tb).trim(), "");
    drop(names);
    tb.ok("rm -rf /var/lib/portables/bd*");
}

fn runtime_and_remove(tb: &Testbed) {
    clean_slate(tb);
    pool_image(tb, "foobar.raw", RAW, "1");
    tb.ok("portable attach --runtime foobar.raw");
    assert_eq!(tb.sh("portable is-attached foobar.raw").stdout.trim(), "attached-runtime");
    assert!(
        tb.ok("cat /run/systemd/system/foobar.service.d/20-portable.conf")
            .contains("RootImage=/var/lib/portables/foobar.raw")
    );
    let refused = tb.fails("portable remove foobar.raw");
    assert_eq!(refused.stderr.trim(), "portable: image '/var/lib/portables/foobar.raw' is attached; detach it first");
    tb.ok("portable detach foobar.raw");
    assert_no_foobar_units(tb);
    tb.ok("portable read-only foobar.raw");
    let refused = tb.fails("portable remove foobar.raw");
    assert_eq!(refused.stderr.trim(), "portable: image '/var/lib/portables/foobar.raw' is read-only");
    tb.ok("portable read-only foobar.raw no");
    assert_eq!(tb.ok("portable remove foobar.raw").trim(), "Removed /var/lib/portables/foobar.raw.");
    tb.fails("test -e /var/lib/portables/foobar.raw");
}

/// Sandbox switches that portablectl's and wharf's default profile set alike.
const SAME_SANDBOX: &[&str] = &[
    "DynamicUser",
    "PrivateUsers",
    "PrivateTmp",
    "PrivateDevices",
    "PrivateNetwork",
    "ProtectSystem",
    "ProtectHome",
    "ProtectKernelTunables",
    "ProtectKernelModules",
    "ProtectControlGroups",
    "NoNewPrivileges",
    "RestrictAddressFamilies",
    "RestrictRealtime",
    "RestrictSUIDSGID",
    "RestrictNamespaces",
    "LockPersonality",
    "SystemCallArchitectures",
    "SystemCallErrorNumber",
    "RemoveIPC",
    "MountAPIVFS",
    "SystemCallFilter",
];

/// Settings in which the two default profiles differ on purpose; see
/// `side_by_side`.
const DIFFERING_SANDBOX: &[&str] = &[
    "CapabilityBoundingSet",
    "ProtectClock",
    "ProtectKernelLogs",
    "ProtectHostname",
    "MemoryDenyWriteExecute",
    "TemporaryFileSystem",
];

/// The started service's compared properties, read with one `systemctl show`.
fn started_properties(tb: &Testbed, root_property: &str) -> std::collections::BTreeMap<String, String> {
    tb.ok("systemctl start foobar.service");
    let wanted: Vec<&str> = ["ActiveState", "Environment", "LogExtraFields", root_property]
        .into_iter()
        .chain(SAME_SANDBOX.iter().copied())
        .chain(DIFFERING_SANDBOX.iter().copied())
        .collect();
    let shown = tb.ok(&format!("systemctl show -p {} foobar.service", wanted.join(",")));
    tb.ok("systemctl stop foobar.service");
    let properties: std::collections::BTreeMap<String, String> = shown
        .lines()
        .filter_map(|line| line.split_once('='))
        .map(|(key, value)| (key.to_string(), value.to_string()))
        .collect();
    for property in wanted {
        assert!(properties.contains_key(property), "systemctl show gave no {property}:\n{shown}");
    }
    properties
}

fn side_by_side(tb: &Testbed) {
    clean_slate(tb);
    pool_image(tb, "foobar.raw", RAW, "1");
    let root_property = if RAW == "dir" { "RootDirectory" } else { "RootImage" };

    tb.ok("portablectl attach --profile default /var/lib/portables/foobar.raw");
    let reference = started_properties(tb, root_property);
    tb.ok("portablectl detach /var/lib/portables/foobar.raw");
    assert_eq!(tb.ok("ls /etc/systemd/system.attached 2>/dev/null | grep -c foobar || true").trim(), "0");

    tb.ok("portable attach --profile default foobar.raw");
    let ours = started_properties(tb, root_property);
    tb.ok("portable detach foobar.raw");
    assert_no_foobar_units(tb);

    // The same image, the same way, running in it.
    for same in [root_property, "ActiveState", "Environment"] {
        assert_eq!(ours[same], reference[same], "{same}");
    }
    // Journal fields: PORTABLE= as portablectl; wharf also sets
    // PORTABLE_NAME_AND_VERSION= as portablectl does since systemd 254.
    for fields in [&ours["LogExtraFields"], &reference["LogExtraFields"]] {
        assert!(fields.split(' ').any(|f| f == "PORTABLE=foobar.raw"), "{fields}");
    }
    assert!(
        ours["LogExtraFields"].split(' ').any(|f| f == "PORTABLE_NAME_AND_VERSION=foobar"),
        "{}",
        ours["LogExtraFields"]
    );
    assert_eq!(ours["ActiveState"], "active");
    // The sandbox of the default profile: the same switches...
    for same in SAME_SANDBOX {
        assert_eq!(ours[*same], reference[*same], "{same}");
    }
    // ...and the differences, each on purpose:
    // - wharf's default keeps 7 capabilities a daemon commonly needs
    //   (chown, dac_override, fowner, kill, net_bind_service, setgid,
    //   setuid); portablectl 252 keeps 18, among them cap_sys_admin, which
    //   undoes much of a sandbox.
    assert_eq!(
        ours["CapabilityBoundingSet"],
        "cap_chown cap_dac_override cap_fowner cap_kill cap_setgid cap_setuid cap_net_bind_service"
    );
    assert!(reference["CapabilityBoundingSet"].contains("cap_sys_admin"));
    // - wharf also protects the clock, the kernel log and the hostname,
    //   which no ordinary service needs to change or read.
    for hardened in ["ProtectClock", "ProtectKernelLogs", "ProtectHostname"] {
        assert_eq!((ours[hardened].as_str(), reference[hardened].as_str()), ("yes", "no"), "{hardened}");
    }
    // - wharf's default allows writable-executable memory, so that JIT
    //   runtimes (Java, Node.js, LuaJIT) run; its strict profile forbids it.
    assert_eq!((ours["MemoryDenyWriteExecute"].as_str(), reference["MemoryDenyWriteExecute"].as_str()), ("no", "yes"));
    // - wharf gives the service an empty /run with only the sockets it
    //   binds in, instead of the image's own /run.
    assert_eq!(ours["TemporaryFileSystem"], "/run");
    assert_eq!(reference["TemporaryFileSystem"], "");
    // Not compared: the drop-ins live in /etc/systemd/system (as asked of
    // wharf) rather than portablectl 252's /etc/systemd/system.attached,
    // and portablectl also links images attached by path into /etc/portables.
}

/// portablectl's names and options: an xz attachment answers to every name
/// of its image; an image attached by path is listed; a second attach is a
/// no-op only when it changes nothing; --no-reload, detach PREFIX and
/// detach --force do what portablectl's do.
fn portablectl_options(tb: &Testbed) {
    clean_slate(tb);
    pool_image(tb, "foobar_8.raw.xz", "xz", "8");
    tb.ok("portable attach foobar_8.raw.xz");
    for name in ["foobar_8.raw.xz", "foobar_8.raw", "foobar_8", "/var/lib/portables/foobar_8.raw.xz"] {
        assert_eq!(tb.ok(&format!("portable is-attached {name}")).trim(), "attached", "{name}");
    }
    let listed = tb.ok("portable list --no-legend");
    let xz_line = listed.lines().find(|l| l.starts_with("foobar_8.raw.xz ")).unwrap_or_default().to_string();
    assert!(xz_line.contains("attached"), "{listed}");

    // Again, the same way: nothing to do. Otherwise: refused, nothing changed.
    let files = tb.unit_files("foobar*");
    let again = tb.ok("portable attach foobar_8.raw.xz");
    assert!(again.contains("Attached already, exactly so: nothing to do"), "{again}");
    let strict = tb.sh("portable attach --profile=strict foobar_8.raw.xz");
    assert_eq!(strict.code, Some(1), "{strict}");
    assert!(
        strict.stderr.starts_with("portable: image '/var/lib/portables/foobar_8.raw' is attached already, otherwise (")
            && strict.stderr.trim_end().ends_with("use reattach to change a running attachment"),
        "{strict}"
    );
    assert_eq!(strict.stderr.lines().count(), 1, "{strict}");
    assert_eq!(tb.unit_files("foobar*"), files, "a refused attach changed files");
    tb.ok("portable detach foobar_8.raw.xz");
    assert_no_foobar_units(tb);

    // By path, from outside the search path: listed with its path.
    let outside = tb.host_path("/srv/p13/foobar_5");
    images::foobar(&outside, "dir", "5").unwrap();
    tb.ok("cd /srv/p13 && portable attach ./foobar_5");
    let listed = tb.ok("portable list --no-legend");
    assert!(listed.lines().any(|l| l.starts_with("foobar_5 ") && l.contains("attached")), "{listed}");
    assert_eq!(tb.ok("portable is-attached foobar_5").trim(), "attached");

    // detach PREFIX: only the units it matches; --force while one runs.
    tb.ok("systemctl start foobar.service");
    let running = tb.sh("portable detach /srv/p13/foobar_5 foobar");
    assert_eq!(running.code, Some(1), "{running}");
    assert!(running.stderr.contains("unit 'foobar.service' of image '/srv/p13/foobar_5' is active"), "{running}");
    tb.ok("portable detach /srv/p13/foobar_5 foobar-hello");
    assert_eq!(tb.ok("ls /etc/systemd/system | grep ^foobar"), "foobar.service\nfoobar.service.d\n");
    let none = tb.sh("portable detach foobar_5 nothing");
    assert!(!none.success() && none.stderr.contains("no attached unit matches the prefixes nothing ("), "{none}");
    tb.ok("portable detach --force foobar_5");
    assert_no_foobar_units(tb);
    assert_eq!(tb.ok("systemctl is-active foobar.service").trim(), "active", "--force leaves it running");
    tb.ok("systemctl stop foobar.service");

    // --no-reload: files only, no reload of systemd; never with --now.
    pool_image(tb, "foobar_6", "dir", "6");
    let since = tb.ok("date +%s.%N").trim().to_string();
    tb.ok("portable attach --no-reload foobar_6");
    assert!(tb.host_path("/etc/systemd/system/foobar.service.d/20-portable.conf").exists());
    let with_now = tb.sh("portable detach --no-reload --now foobar_6");
    assert_eq!(
        with_now.stderr.trim_end(),
        "portable: --no-reload cannot be combined with --now: systemd starts only units it has loaded",
        "{with_now}"
    );
    tb.ok("portable detach --no-reload foobar_6");
    assert_no_foobar_units(tb);
    // The test's own reload is the last PID 1 logs: once it is in the
    // journal, any reload wharf made before it is too.
    tb.ok("systemctl daemon-reload");
    assert_eq!(reloads_since(tb, &since), 1, "only the test's own reload");

    // A reader that went away ends the output quietly, with 128 + SIGPIPE;
    // with --json an error is also a document on standard output.
    let closed = tb.ok("python3 -c 'import os, subprocess; r, w = os.pipe(); os.close(r); \
         p = subprocess.run([\"portable\", \"inspect\", \"--cat\", \"foobar_6\"], stdout=w, stderr=subprocess.PIPE); \
         print(p.returncode, repr(p.stderr))'");
    assert_eq!(closed.trim(), "141 b''");
    for (command, kind) in [
        ("portable --json detach foobar_6", "no-such-image"),
        ("portable --json attach --no-reload --now foobar_6", "invalid-argument"),
        ("setpriv --reuid=nobody --regid=nogroup --clear-groups portable --json attach foobar_6", "access-denied"),
    ] {
        let out = tb.fails(command);
        let document: serde_json::Value = serde_json::from_str(&out.stdout).unwrap_or_else(|e| panic!("{e}: {out}"));
        assert_eq!(document["error"]["kind"], kind, "{command}: {out}");
        let message = document["error"]["message"].as_str().unwrap();
        assert_eq!(out.stderr.trim_end(), format!("portable: {message}"), "{command}");
    }
    completion(tb);
    tb.ok("rm -rf /srv/p13");
}

/// portabled and wharf on one host: each lists the other's attachments,
/// with who made them, and neither attaches over, detaches or removes the
/// other's. wharf's attachments reach portablectl through the mirrors it
/// writes where portabled looks; systemd still runs wharf's files alone.
fn interop(tb: &Testbed) {
    clean_slate(tb);
    pool_image(tb, "foobar_1.raw", RAW, "1");
    let other = tb.host_path("/var/lib/portables/other_1");
    images::foobar_as(&other, "other", "foobar.service").unwrap();
    // Its own port, beside foobar's.
    let unit = other.join("usr/lib/systemd/system/other.service");
    std::fs::write(&unit, std::fs::read_to_string(&unit).unwrap().replace(":8080", ":8083")).unwrap();

    // wharf's attachment, as portablectl sees it.
    tb.ok("portable attach --now foobar_1.raw");
    assert_eq!(tb.ok("portablectl is-attached foobar_1").trim(), "running");
    let listed = tb.ok("portablectl list --no-legend");
    assert!(listed.lines().any(|l| l.starts_with("foobar_1 ") && l.trim_end().ends_with("running")), "{listed}");
    // What systemd runs is wharf's unit with wharf's drop-ins, no more.
    assert_eq!(show(tb, "foobar.service", "FragmentPath"), "/etc/systemd/system/foobar.service");
    assert_eq!(
        show(tb, "foobar.service", "DropInPaths"),
        "/etc/systemd/system/foobar.service.d/10-profile.conf /etc/systemd/system/foobar.service.d/20-portable.conf"
    );
    // portablectl does not attach over it, nor detach it while it runs.
    let files = tb.unit_files("foobar*");
    assert!(files.contains("/etc/systemd/system.attached/foobar.service"), "{files}");
    let over = tb.fails("portablectl attach foobar_1");
    assert!(over.stderr.contains("exists on the host already"), "{over}");
    let away = tb.fails("portablectl detach foobar_1");
    assert!(away.stderr.contains("is active, can't detach"), "{away}");
    assert_eq!(tb.unit_files("foobar*"), files, "portablectl changed wharf's attachment");

    // portabled's attachment, as wharf sees it...
    tb.ok("portablectl attach --now other_1");
    let listed = tb.ok("portable list --no-legend");
    // STATE, BY and PATH, the last three columns.
    let tail = |name: &str| -> Vec<String> {
        let line = listed.lines().find(|l| l.starts_with(name)).unwrap_or_default();
        let words: Vec<&str> = line.split_whitespace().collect();
        words[words.len().saturating_sub(3)..].iter().map(|w| w.to_string()).collect()
    };
    assert_eq!(tail("other_1 "), ["running", "portablectl", "/var/lib/portables/other_1"], "{listed}");
    assert_eq!(tail("foobar_1.raw "), ["running", "wharf", "/var/lib/portables/foobar_1.raw"], "{listed}");
    let json: serde_json::Value = serde_json::from_str(&tb.ok("portable --json list")).unwrap();
    let by: Vec<(String, String)> = json
        .as_array()
        .unwrap()
        .iter()
        .map(|i| (i["name"].as_str().unwrap().to_string(), i["attached_by"].as_str().unwrap().to_string()))
        .collect();
    assert_eq!(by, [("foobar_1.raw".to_string(), "wharf".to_string()), ("other_1".into(), "portablectl".into())]);
    assert_eq!(tb.ok("portable is-attached other_1").trim(), "running");
    // ...and spares: each refusal one line naming the reason, nothing changed.
    let theirs = tb.ok("cd /etc/systemd/system.attached && find other* | sort");
    let attached_by_them = "was attached by portablectl, not by wharf; detach or reattach it with portablectl";
    let over_theirs = "unit 'other.service' is attached by portablectl from image '/var/lib/portables/other_1' \
                       (/etc/systemd/system.attached/other.service); detach it with portablectl first";
    for (command, reason) in [
        ("portable detach other_1", attached_by_them),
        ("portable detach --now --force other_1", attached_by_them),
        ("portable attach other_1", over_theirs),
        ("portable attach --force other_1", over_theirs),
        ("portable reattach other_1", over_theirs),
        // (portabled links even an image of the search path into /etc/portables, which comes first)
        ("portable remove other_1", "image '/etc/portables/other_1' is attached; detach it first"),
    ] {
        let out = tb.fails(command);
        assert_eq!(out.stderr.trim_end().lines().count(), 1, "{command}: {out}");
        assert!(out.stderr.contains(reason), "{command}: {out}");
    }
    assert_eq!(tb.ok("cd /etc/systemd/system.attached && find other* | sort"), theirs);
    assert_eq!(tb.ok("ls /etc/systemd/system | grep -c ^other || true").trim(), "0");
    assert_eq!(show(tb, "other.service", "ActiveState"), "active");

    // Each detaches its own; nothing of either is left. (wharf's first:
    // portablectl 257's detach matches every attachment in system.attached,
    // its own of other images and wharf's mirrors alike, and refuses while
    // any of them runs.)
    tb.ok("portable detach --now foobar_1.raw");
    tb.ok("portablectl detach --now other_1");
    assert_no_foobar_units(tb);
    assert_eq!(tb.ok("portablectl is-attached foobar_1").trim(), "detached");

    // By path, from outside the search path: wharf links the image into
    // /etc/portables as portabled does, and lists it once, by its path.
    let outside = tb.host_path("/srv/p13i/foobar_3.raw");
    images::foobar(&outside, RAW, "3").unwrap();
    tb.ok("portable attach /srv/p13i/foobar_3.raw");
    assert_eq!(tb.ok("readlink /etc/portables/foobar_3.raw").trim(), "/srv/p13i/foobar_3.raw");
    let listed = tb.ok("portablectl list --no-legend");
    assert!(listed.lines().any(|l| l.starts_with("foobar_3 ") && l.trim_end().ends_with("attached")), "{listed}");
    let listed = tb.ok("portable list --no-legend");
    assert_eq!(listed.matches("foobar_3.raw ").count(), 1, "{listed}");
    let line = listed.lines().find(|l| l.starts_with("foobar_3.raw ")).unwrap_or_default();
    assert!(line.split_whitespace().collect::<Vec<_>>().ends_with(&["attached", "wharf", "/srv/p13i/foobar_3.raw"]));
    tb.ok("portable detach /srv/p13i/foobar_3.raw");
    assert_no_foobar_units(tb);
    tb.ok("rm -rf /srv/p13i /var/lib/portables/other_1");
}

/// `--image-policy`: the image is checked against the policy before
/// anything is written, and the attachment is pinned to it
/// (`RootImagePolicy=`), so that an image of another kind swapped in under
/// the attachment is refused by systemd at the next start. systemd before
/// 254 has no `RootImagePolicy=`: refused in one line there. Without the
/// option, an attachment is pinned to the policy the image satisfies as it
/// is, and an unpinned one stays so until a reattach.
fn image_policy(tb: &Testbed) {
    clean_slate(tb);
    pool_image(tb, "foobar_1.raw", "squashfs", "1");
    let version: u32 = tb.ok("systemctl --version").split_whitespace().nth(1).unwrap().parse().unwrap();
    let refused = |command: &str, reason: &str| {
        let out = tb.fails(command);
        assert_eq!(out.stderr.trim_end().lines().count(), 1, "{command}: {out}");
        assert!(out.stderr.contains(reason), "{command}: wanted {reason:?}: {out}");
        assert_no_foobar_units(tb);
    };
    let dropin = || tb.ok("cat /etc/systemd/system/foobar.service.d/20-portable.conf");
    if version < 254 {
        refused(
            "portable attach --image-policy=root=unprotected foobar_1.raw",
            &format!("--image-policy needs systemd 254 or later (RootImagePolicy=); this is systemd {version}"),
        );
        // Nothing to pin to: attached unpinned, as it always was.
        tb.ok("portable attach foobar_1.raw");
        assert!(!dropin().contains("ImagePolicy"), "{}", dropin());
        tb.ok("portable detach foobar_1.raw");
        assert_no_foobar_units(tb);
        return;
    }
    refused(
        "portable attach --image-policy=root=bogus foobar_1.raw",
        "image policy 'root=bogus': 'bogus' is not a partition policy flag",
    );
    refused(
        "portable attach --image-policy=root=verity foobar_1.raw",
        "does not satisfy the image policy 'root=verity': its root partition is unprotected, the policy allows verity",
    );
    if version < 258 {
        // It would be ignored whole: refused rather than silently unpinned.
        refused(
            "portable attach --image-policy=root=unprotected+squashfs foobar_1.raw",
            "names file systems, which systemd reads only from 258 on",
        );
    } else {
        refused(
            "portable attach --image-policy=root=unprotected+ext4 foobar_1.raw",
            "its root partition is squashfs, the policy allows only ext4",
        );
    }
    pool_image(tb, "foobar_d", "dir", "2");
    refused("portable attach --image-policy=* foobar_d", "an image policy applies to file images");

    // Pinned: systemd holds the service to the policy at every start.
    let policy = "root=unprotected:=absent";
    tb.ok(&format!("portable attach --now --image-policy={policy} foobar_1.raw"));
    assert!(dropin().contains(&format!("RootImagePolicy={policy}\n")), "{}", dropin());
    let pinned = show(tb, "foobar.service", "RootImagePolicy");
    assert!(pinned.starts_with("root=unprotected") && !pinned.contains("verity"), "systemd did not take it: {pinned}");
    assert_eq!(show(tb, "foobar.service", "ActiveState"), "active");
    tb.ok("systemctl stop foobar.service");
    tb.ok("portable detach foobar_1.raw");
    assert_no_foobar_units(tb);

    // Without the option, pinned to the image as it is (as portabled 260
    // pins): its one unprotected root partition, every other one absent.
    let derived = if version >= 258 { "root=unprotected+squashfs:=absent" } else { "root=unprotected:=absent" };
    tb.ok("portable attach --now foobar_1.raw");
    assert!(dropin().contains(&format!("RootImagePolicy={derived}\n")), "{}", dropin());
    assert_eq!(show(tb, "foobar.service", "ActiveState"), "active");
    tb.ok("systemctl stop foobar.service");
    // A GPT image with an ESP beside the same root, swapped in under the
    // attachment: systemd refuses it, and so does attaching it again as it
    // is; a reattach pins the new file, which then runs.
    let root = tb.host_path("/var/tmp/pin-root.squashfs");
    images::foobar(&root, "squashfs", "1").unwrap();
    let swapped = tb.host_path("/var/lib/portables/.foobar_1.swap");
    super::images::gpt_disk(
        &swapped,
        &[(super::images::ESP, "esp", None), (super::images::root_types().0, "root", Some(&root))],
    );
    std::fs::remove_file(&root).unwrap();
    tb.ok("mv /var/lib/portables/.foobar_1.swap /var/lib/portables/foobar_1.raw");
    // A simple service fails after its fork, setting up its namespace.
    tb.ok("systemctl start foobar.service");
    let failed = tb.sh("timeout 30 sh -c 'until systemctl is-failed -q foobar.service; do sleep 0.1; done'");
    assert!(failed.success(), "systemd ran a swapped image past its pin: {failed}");
    assert_eq!(show(tb, "foobar.service", "ExecMainStatus"), "226", "refused at the NAMESPACE step");
    tb.ok("systemctl reset-failed foobar.service");
    let again = tb.fails("portable attach foobar_1.raw");
    assert!(again.stderr.contains("attached already"), "{again}");
    tb.ok("portable reattach foobar_1.raw");
    assert!(dropin().contains("RootImagePolicy=root=unprotected:esp=unused:=absent\n"), "{}", dropin());
    tb.ok("systemctl start foobar.service");
    assert_eq!(show(tb, "foobar.service", "ActiveState"), "active");
    tb.ok("systemctl stop foobar.service");
    tb.ok("portable detach foobar_1.raw");

    // An attachment an older wharf made unpinned (as this one still does
    // on systemd before 254) stays as it is when attached again as it is,
    // so that an idempotent attach is a no-op after an upgrade; a reattach
    // pins it. Made by removing the pin, which is all that differs.
    tb.ok("portable attach foobar_1.raw");
    tb.ok("sed -i '/^RootImagePolicy=/d' /etc/systemd/system/foobar*.d/20-portable.conf && systemctl daemon-reload");
    let unpinned = dropin();
    assert!(!unpinned.contains("ImagePolicy"), "{unpinned}");
    tb.ok("portable attach foobar_1.raw");
    assert_eq!(dropin(), unpinned, "attached again as it is, it changed");
    tb.ok("portable reattach foobar_1.raw");
    assert!(dropin().contains("RootImagePolicy=root=unprotected:esp=unused:=absent\n"), "{}", dropin());
    tb.ok("portable detach foobar_1.raw");
    assert_no_foobar_units(tb);
    tb.ok("rm -rf /var/lib/portables/foobar_1.raw /var/lib/portables/foobar_d");
}

/// bash, with the installed completion sourced, completes image names
/// where a verb takes an image, attached ones for detach, and profiles.
fn completion(tb: &Testbed) {
    tb.ok("portable attach --profile=trusted foobar_6");
    let script = tb.host_path("/root/complete-portable.sh");
    std::fs::write(
        &script,
        ". /usr/share/bash-completion/completions/portable\n\
         COMP_WORDS=(\"$@\"); COMP_CWORD=$((${#COMP_WORDS[@]} - 1)); COMPREPLY=()\n\
         _wharf_portable portable \"${COMP_WORDS[COMP_CWORD]}\" \"${COMP_WORDS[COMP_CWORD-1]}\"\n\
         printf '%s\\n' \"${COMPREPLY[@]}\"\n",
    )
    .unwrap();
    let complete = |words: &str| -> Vec<String> {
        let out = tb.ok(&format!("cd /tmp && bash /root/complete-portable.sh portable {words}"));
        let mut found: Vec<String> = out.lines().map(str::to_string).collect();
        found.sort();
        found
    };
    assert_eq!(complete("inspect foo"), ["foobar_6", "foobar_8.raw", "foobar_8.raw.xz"]);
    assert_eq!(complete("detach foo"), ["foobar_6"], "only attached images");
    assert_eq!(complete("attach --profile str"), ["strict"]);
    assert_eq!(complete("attach -p ''"), ["default", "nonetwork", "strict", "trusted"]);
    assert_eq!(complete("reattach --profile trusted foobar_"), ["foobar_6", "foobar_8.raw", "foobar_8.raw.xz"]);
    tb.ok("portable detach foobar_6 && rm /root/complete-portable.sh");
}

/// `detach --clean` removes the state, logs and configuration directories
/// a service names, once it is stopped; a hostile image whose service names
/// a host directory (`StateDirectory=systemd`) is refused before anything
/// changes, and /var/lib/systemd stays. Its own names (cleanme*), so it
/// shares the testbed.
fn detach_clean(tb: &Testbed) {
    let image = |name: &str, directories: &str, mount_points: &[&str]| {
        let tree = tb.host_path(&format!("/tmp/{name}-tree"));
        let _ = std::fs::remove_dir_all(&tree);
        images::foobar_as(&tree, name, "foobar-hello.service").unwrap();
        let unit = tree.join(format!("usr/lib/systemd/system/{name}.service"));
        let text = std::fs::read_to_string(&unit).unwrap().replace(
            "Type=oneshot\n",
            &format!(
                "Type=oneshot\nRemainAfterExit=yes\n{directories}ExecStartPost=/usr/bin/busybox sh -c \
                 'echo kept > /var/lib/{name}/data'\n"
            ),
        );
        std::fs::write(&unit, text).unwrap();
        // Mount points for the directories: a squashfs cannot grow them.
        for dir in mount_points {
            std::fs::create_dir_all(tree.join(dir)).unwrap();
        }
        let out = tb.host_path(&format!("/var/lib/portables/{name}.raw"));
        images::squashfs(&tree, &out).unwrap();
        std::fs::remove_dir_all(&tree).unwrap();
    };
    tb.ok("portable detach --now cleanme 2>/dev/null; portable detach --now cleanmebad 2>/dev/null; \
           rm -rf /var/lib/cleanme* /var/log/cleanme* /etc/cleanme*; true");
    image(
        "cleanme",
        "StateDirectory=cleanme\nLogsDirectory=cleanme-logs\nConfigurationDirectory=cleanme\n",
        &["var/lib/cleanme", "var/log/cleanme-logs", "etc/cleanme"],
    );
    let attached = tb.sh("portable attach --now cleanme");
    assert!(attached.success(), "{attached}\n{}", tb.sh("journalctl -u cleanme.service -n 20 --no-pager").stdout);
    assert_eq!(tb.ok("cat /var/lib/cleanme/data").trim(), "kept");
    assert!(tb.sh("test -d /var/log/cleanme-logs && test -d /etc/cleanme").success());

    // Plain detach keeps them, as portablectl's.
    tb.ok("portable detach --now cleanme && portable attach --now cleanme");
    assert_eq!(tb.ok("cat /var/lib/cleanme/data").trim(), "kept");
    // --clean without --now, while it runs: refused, nothing changed.
    let refused = tb.fails("portable detach --clean cleanme");
    assert!(refused.stderr.contains("is active; stop it first or use --now"), "{refused}");
    assert_eq!(tb.ok("systemctl is-active cleanme.service").trim(), "active");
    let since = tb.ok("date +%s.%N").trim().to_string();
    let out = tb.ok("portable detach --now --clean cleanme");
    let entries = crate::audit::history(tb, &format!("portable history --json --since=@{since} cleanme"), 1);
    assert_eq!(crate::audit::kinds(&entries), ["detach:done"]);
    assert_eq!(crate::audit::values(&entries[0], "CLEAN"), ["yes"], "the entry says what cannot be put back");
    assert!(out.contains("Removed /etc/systemd/system/cleanme.service"), "{out}");
    let left = tb.ok("ls -d /var/lib/cleanme /var/log/cleanme-logs /etc/cleanme 2>/dev/null; true");
    assert_eq!(left.trim(), "", "directories left by --clean");
    assert_eq!(tb.ok("portable is-attached cleanme; true").trim(), "detached");

    // The attack: the image's service claims a host directory.
    image("cleanmebad", "StateDirectory=systemd cleanmebad\n", &["var/lib/systemd", "var/lib/cleanmebad"]);
    tb.ok("portable attach --now cleanmebad");
    let units = tb.ok("ls /etc/systemd/system | grep cleanmebad");
    let refused = tb.fails("portable detach --now --clean cleanmebad");
    assert_eq!(
        refused.stderr.trim(),
        "portable: not cleaning 'cleanmebad.service' of image '/var/lib/portables/cleanmebad.raw': its \
         StateDirectory=systemd is not the image's (it must be named after the image or the unit)"
    );
    assert_eq!(tb.ok("systemctl is-active cleanmebad.service").trim(), "active", "refused before the stop");
    assert_eq!(tb.ok("ls /etc/systemd/system | grep cleanmebad"), units, "nothing detached");
    assert!(tb.sh("test -d /var/lib/systemd && test -d /var/lib/cleanmebad").success());
    tb.ok("portable detach --now cleanmebad");
    tb.ok("rm -rf /var/lib/cleanme* /var/lib/portables/cleanme.raw /var/lib/portables/cleanmebad.raw");
}

/// `--extension`: a squashfs and a directory extension stacked on foobar
/// (ExtensionImages=, ExtensionDirectories=), their units attached with the
/// image's and running with the extensions' files visible; found again by
/// is-attached and detach with the same extensions. Then extensions that
/// systemd would not merge, and hostile ones: each refused in one line
/// naming it, with nothing left; portablectl accepts and refuses the same.
fn extensions(tb: &Testbed) {
    use std::path::Path;
    use std::process::Command;
    const POOL: &str = "/var/lib/portables";
    const SERVICE: &str = "[Unit]\nDescription=from an extension\n[Service]\nExecStart=/usr/bin/busybox sleep 600\n";
    fn squash(dir: &Path, out: &Path) {
        let built = Command::new("mksquashfs")
            .arg(dir)
            .arg(out)
            .args(["-noappend", "-quiet", "-all-root", "-no-progress"])
            .output()
            .expect("mksquashfs");
        assert!(built.status.success(), "mksquashfs: {built:?}");
        std::fs::remove_dir_all(dir).unwrap();
    }
    /// An extension tree: its release file (named for `release_for`, if
    /// any), a greeting and one unit.
    fn stage(dir: &Path, release_for: Option<&str>, release: &str, unit: &str) {
        let _ = std::fs::remove_dir_all(dir);
        let name = dir.file_name().unwrap().to_str().unwrap();
        let releases = dir.join("usr/lib/extension-release.d");
        std::fs::create_dir_all(&releases).unwrap();
        if let Some(release_for) = release_for {
            std::fs::write(releases.join(format!("extension-release.{release_for}")), release).unwrap();
        }
        std::fs::create_dir_all(dir.join(format!("usr/share/{name}"))).unwrap();
        std::fs::write(dir.join(format!("usr/share/{name}/greeting")), format!("hello from {name}\n")).unwrap();
        std::fs::create_dir_all(dir.join("usr/lib/systemd/system")).unwrap();
        std::fs::write(dir.join(format!("usr/lib/systemd/system/{unit}")), SERVICE).unwrap();
    }
    #[track_caller]
    fn nothing_left(tb: &Testbed, what: &str) {
        assert_no_foobar_units(tb);
        let attached =
            tb.ok("ls /etc/systemd/system.attached /run/systemd/system.attached 2>/dev/null | grep foobar; true");
        assert_eq!(attached.trim(), "", "{what}: portablectl's files left");
        let mounts = tb.ok("grep -c /var/lib/portables /proc/self/mountinfo; true");
        assert_eq!(mounts.trim(), "0", "{what}: mounts left");
        // systemd lets go of a stopped service's loop devices on its own time.
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        while !tb.loop_devices(POOL).is_empty() {
            assert!(std::time::Instant::now() < deadline, "{what}: loop devices left: {:?}", tb.loop_devices(POOL));
            std::thread::sleep(std::time::Duration::from_millis(100));
        }
    }

    clean_slate(tb);
    let pool = tb.host_path(POOL);
    // The base, version 2, with a sysext level: SYSEXT_LEVEL= then decides.
    let base = pool.join("foobar_2");
    images::foobar(&base, "dir", "2").unwrap();
    let os_release = base.join("usr/lib/os-release");
    let text = std::fs::read_to_string(&os_release).unwrap();
    std::fs::write(&os_release, format!("{text}SYSEXT_LEVEL=1.0\n")).unwrap();
    squash(&base, &pool.join("foobar_2.raw"));
    let good = "ID=foobar\nSYSEXT_LEVEL=1.0\n";
    stage(&pool.join("foobar-ext"), Some("foobar-ext"), good, "foobar-ext.service");
    squash(&pool.join("foobar-ext"), &pool.join("foobar-ext.raw"));
    stage(&pool.join("foobar-extdir"), Some("foobar-extdir"), "ID=_any\n", "foobar-extdir.service");

    let both = "--extension foobar-ext.raw --extension foobar-extdir";
    let out = tb.ok(&format!("portable attach {both} foobar_2.raw"));
    for unit in ["foobar.service", "foobar-ext.service", "foobar-extdir.service"] {
        assert!(out.contains(&format!("/etc/systemd/system/{unit}.")), "{unit}: {out}");
    }
    let dropin = tb.ok("cat /etc/systemd/system/foobar-ext.service.d/20-portable.conf");
    assert!(
        dropin.starts_with(&format!(
            "# Drop-in created by wharf for image '{POOL}/foobar_2.raw:{POOL}/foobar-ext.raw:{POOL}/foobar-extdir', \
             do not edit.\n[Service]\nRootImage={POOL}/foobar_2.raw\nExtensionImages={POOL}/foobar-ext.raw\n\
             ExtensionDirectories={POOL}/foobar-extdir\n"
        )),
        "{dropin}"
    );
    // A directory extension's unit is linked into it, as a directory image's is.
    assert_eq!(
        tb.ok("readlink /etc/systemd/system/foobar-extdir.service").trim(),
        format!("{POOL}/foobar-extdir/usr/lib/systemd/system/foobar-extdir.service")
    );
    assert_eq!(tb.ok(&format!("portable is-attached {both} foobar_2.raw")).trim(), "attached");
    assert_eq!(tb.ok("portable is-attached foobar_2.raw").trim(), "attached");
    let other = tb.sh("portable is-attached --extension foobar-ext.raw foobar_2.raw");
    assert_eq!((other.code, other.stdout.trim()), (Some(1), "detached"), "{other}");
    let inspected = tb.ok(&format!("portable inspect {both} foobar_2.raw"));
    assert!(inspected.contains("Extensions:\n    /var/lib/portables/foobar-ext.raw\n"), "{inspected}");
    assert!(inspected.contains("    foobar-extdir.service\n"), "{inspected}");

    // Reattached with one extension fewer: its unit goes, the others stack only the one left.
    tb.ok("portable reattach --extension foobar-ext.raw foobar_2.raw");
    assert!(tb.sh("test -e /etc/systemd/system/foobar-extdir.service").code == Some(1), "the dropped extension's unit");
    let dropin = tb.ok("cat /etc/systemd/system/foobar.service.d/20-portable.conf");
    assert!(dropin.contains(&format!("ExtensionImages={POOL}/foobar-ext.raw\n")), "{dropin}");
    assert!(!dropin.contains("ExtensionDirectories="), "{dropin}");
    assert_eq!(tb.ok("portable is-attached --extension foobar-ext.raw foobar_2.raw").trim(), "attached");
    tb.ok(&format!("portable reattach {both} foobar_2.raw"));
    assert_eq!(tb.ok(&format!("portable is-attached {both} foobar_2.raw")).trim(), "attached");

    tb.ok("systemctl start foobar-ext.service");
    let pid = show(tb, "foobar-ext.service", "MainPID");
    assert!(tb.wait_exec(&pid, "busybox"), "foobar-ext.service never exec'd busybox");
    let seen = tb.ok(&format!(
        "cat /proc/{pid}/root/usr/share/foobar-ext/greeting /proc/{pid}/root/usr/share/foobar-extdir/greeting \
         /proc/{pid}/root/usr/lib/os-release"
    ));
    assert!(seen.starts_with("hello from foobar-ext\nhello from foobar-extdir\n"), "{seen}");
    assert!(seen.contains("VERSION_ID=2\n"), "the base image is below the extensions: {seen}");
    assert_eq!(tb.ok(&format!("portable is-attached {both} foobar_2.raw")).trim(), "running");

    // Named with other extensions, the attachment is not found.
    let refused = tb.fails("portable detach --now --extension foobar-extdir foobar_2.raw");
    assert_eq!(
        refused.stderr.trim(),
        format!(
            "portable: image '{POOL}/foobar_2.raw' is attached with extensions '{POOL}/foobar-ext.raw', \
             '{POOL}/foobar-extdir', not '{POOL}/foobar-extdir'"
        )
    );
    assert_eq!(show(tb, "foobar-ext.service", "ActiveState"), "active");
    // The extension is in use: not removed.
    let refused = tb.fails("portable remove foobar-ext.raw");
    assert!(refused.stderr.contains("is attached as an extension of image"), "{refused}");
    tb.ok(&format!("portable detach --now {both} foobar_2.raw"));
    nothing_left(tb, "detach");

    // The reference, on the same images: attached, runs, detached.
    let by_path = format!("--extension {POOL}/foobar-ext.raw --extension {POOL}/foobar-extdir");
    tb.ok(&format!("portablectl attach {by_path} {POOL}/foobar_2.raw"));
    tb.ok("systemctl start foobar-ext.service");
    let pid = show(tb, "foobar-ext.service", "MainPID");
    assert!(tb.wait_exec(&pid, "busybox"));
    assert_eq!(tb.ok(&format!("cat /proc/{pid}/root/usr/share/foobar-extdir/greeting")), "hello from foobar-extdir\n");
    tb.ok("systemctl stop foobar-ext.service");
    // Named with other extensions, portablectl does not find it either.
    let other = tb.sh(&format!("portablectl detach --extension {POOL}/foobar-extdir {POOL}/foobar_2.raw"));
    assert!(!other.success(), "portablectl detach with other extensions: {other}");
    assert!(tb.sh("test -e /etc/systemd/system.attached/foobar-ext.service").success(), "{other}");
    // Named without any, portablectl 252 finds it, as wharf does; a later
    // one (257) only when named with all of them (man portable(1)).
    let version: u32 = tb.ok("systemctl --version").split_whitespace().nth(1).unwrap().parse().unwrap();
    let unnamed = tb.sh(&format!("portablectl detach {POOL}/foobar_2.raw"));
    assert_eq!(unnamed.success(), version < 257, "portablectl {version} detach without --extension: {unnamed}");
    if !unnamed.success() {
        tb.ok(&format!("portablectl detach {by_path} {POOL}/foobar_2.raw"));
    }
    tb.ok("rm -f /etc/portables/foobar*");
    nothing_left(tb, "portablectl detach");

    // Extensions systemd would not merge: refused by both, nothing left.
    let bad_raw = pool.join("foobar-bad.raw");
    let bad_dir = pool.join("foobar-bad");
    let host_release = pool.join("matching-release");
    std::fs::write(&host_release, good).unwrap();
    // (what, the image its release file is named for, its text, what else, compared with portablectl)
    type Case<'a> = (&'a str, Option<&'a str>, &'a str, Box<dyn Fn(&Path)>, bool);
    let cases: Vec<Case> = vec![
        ("wrong ID", Some("foobar-bad"), "ID=debian\nSYSEXT_LEVEL=1.0\n", Box::new(|_| {}), true),
        ("wrong SYSEXT_LEVEL", Some("foobar-bad"), "ID=foobar\nSYSEXT_LEVEL=2.0\n", Box::new(|_| {}), true),
        ("no extension-release", None, "", Box::new(|_| {}), true),
        ("an extension-release for another image", Some("other"), good, Box::new(|_| {}), true),
        (
            "an extension-release linked to a matching host file",
            None,
            "",
            Box::new(|dir: &Path| {
                std::os::unix::fs::symlink(
                    "/var/lib/portables/matching-release",
                    dir.join("usr/lib/extension-release.d/extension-release.foobar-bad"),
                )
                .unwrap()
            }),
            true,
        ),
        (
            "a unit linked to a host file",
            Some("foobar-bad"),
            good,
            Box::new(|dir: &Path| {
                std::os::unix::fs::symlink(
                    "/etc/systemd/system/foobar-ext.service",
                    dir.join("usr/lib/systemd/system/foobar-evil.service"),
                )
                .unwrap()
            }),
            false,
        ),
    ];
    let expected = [
        "does not match image '/var/lib/portables/foobar_2.raw': its extension-release says ID=debian, the image's os-release ID=foobar",
        "does not match image '/var/lib/portables/foobar_2.raw': its extension-release says SYSEXT_LEVEL=2.0, the image's os-release SYSEXT_LEVEL=1.0",
        ": no usr/lib/extension-release.d/extension-release.foobar-bad (usr/lib/extension-release.d is empty)",
        ": no usr/lib/extension-release.d/extension-release.foobar-bad (it has extension-release.other)",
        ": no usr/lib/extension-release.d/extension-release.foobar-bad (it is a symlink that leads nowhere inside the extension)",
        ": unit file 'foobar-evil.service' is a symlink to '/etc/systemd/system/foobar-ext.service', which leaves the image",
    ];
    for ((what, release_for, release, build, compare), expected) in cases.into_iter().zip(expected) {
        stage(&bad_dir, release_for, release, "foobar-bad.service");
        build(&bad_dir);
        squash(&bad_dir, &bad_raw);
        let refused = tb.fails("portable attach --extension foobar-bad.raw foobar_2.raw");
        let line = refused.stderr.trim();
        assert_eq!(refused.stderr.lines().count(), 1, "{what}: {refused}");
        assert!(line.contains(&format!("'{POOL}/foobar-bad.raw'")), "{what}: not named: {refused}");
        assert!(line.contains(expected), "{what}: {refused}");
        nothing_left(tb, what);
        if compare {
            // portablectl 252 says "... extension-release metadata does not
            // match the root's" or "... lacks extension-release data, refusing."
            let reference =
                tb.fails(&format!("portablectl attach --extension {POOL}/foobar-bad.raw {POOL}/foobar_2.raw"));
            let said = reference.stderr.trim();
            assert!(
                said.contains("foobar-bad.raw") && said.contains("extension-release"),
                "portablectl, {what}: {said}"
            );
            tb.ok("rm -f /etc/portables/foobar*");
            nothing_left(tb, &format!("portablectl, {what}"));
        }
    }
    // A FIFO where the release file is: never opened (an open would block).
    stage(&bad_dir, None, "", "foobar-bad.service");
    let fifo = bad_dir.join("usr/lib/extension-release.d/extension-release.foobar-bad");
    assert!(Command::new("mkfifo").arg(&fifo).status().unwrap().success());
    let refused = tb.fails("portable attach --extension foobar-bad foobar_2.raw");
    assert_eq!(
        refused.stderr.trim(),
        format!(
            "portable: extension '{POOL}/foobar-bad': /usr/lib/extension-release.d/extension-release.foobar-bad: not a regular file"
        )
    );
    nothing_left(tb, "a FIFO");
    tb.ok("rm -rf /var/lib/portables/*");
}
