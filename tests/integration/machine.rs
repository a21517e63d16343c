//! wharf's container launcher (`wharfd launch`) in the testbed, started by
//! `machine start` (through wharfd, as the main process of a transient unit
//! in machine.slice with Delegate=yes, Type=notify, KillMode=mixed), and
//! the `machine` commands around it.
//!
//! The tests all boot the f28 image as machine f28, so they run one at a time.

use std::sync::Arc;

use libtest_mimic::Trial;

use crate::testbed::{Testbed, images};
use crate::{Shared, exclusive_trial};

pub fn trials(shared: &Arc<Shared>) -> Vec<Trial> {
    vec![
        exclusive_trial(shared, "machine::boots_registers_runs_commands_and_stops_cleanly", boot_and_stop),
        exclusive_trial(shared, "machine::poweroff_inside_ends_the_unit_and_reboot_restarts_it", poweroff_and_reboot),
        exclusive_trial(shared, "machine::stop_during_boot_halts_the_container", stop_during_boot),
        exclusive_trial(shared, "machine::private_network_has_only_loopback", private_network),
        exclusive_trial(shared, "machine::chown_fallback_shifts_the_image_once", chown_fallback),
        exclusive_trial(shared, "machine::raw_squashfs_and_ext4_images_boot_and_detach", raw_images),
        exclusive_trial(shared, "machine::a_verity_gpt_image_boots_checked_and_a_tampered_one_does_not", verity_image),
        exclusive_trial(shared, "machine::bad_input_fails_in_one_line_and_leaves_nothing", bad_input),
        exclusive_trial(shared, "machine::start_shell_limits_and_poweroff_through_wharfd", machine_cli),
        exclusive_trial(shared, "machine::imported_tar_xz_and_raw_xz_images_start", imported_images_start),
        exclusive_trial(shared, "machine::bad_starts_fail_in_one_line_and_leave_nothing", bad_starts),
        exclusive_trial(shared, "machine::enable_starts_the_machine_with_machines_target", enable_at_boot),
        exclusive_trial(shared, "machine::login_and_an_interactive_shell_on_a_terminal", login_and_terminal_shell),
        exclusive_trial(shared, "machine::shell_on_a_terminal_takes_signals_and_leaves_with_escapes", shell_on_tmux),
        exclusive_trial(shared, "machine::shell_ends_with_its_client_and_counts_toward_the_machine", shell_lifetime),
        exclusive_trial(shared, "machine::shell_environment_is_literal_and_bad_input_is_refused", shell_environment),
        exclusive_trial(shared, "machine::a_running_machine_holds_the_image_lock_nspawn_and_machined_take", image_lock),
        exclusive_trial(shared, "machine::show_and_set_property_of_an_nspawn_machine", nspawn_machine),
        exclusive_trial(shared, "machine::bind_at_start_maps_owners_and_bind_ro_refuses_writes", bind_at_start),
        exclusive_trial(shared, "machine::bind_into_a_running_machine", bind_into_running),
        exclusive_trial(shared, "machine::copy_to_and_from_keep_bytes_mode_and_mapped_owner", copy_to_and_from),
        exclusive_trial(
            shared,
            "machine::machinectl_show_list_and_image_command_lines_run_unchanged",
            machinectl_lines,
        ),
        exclusive_trial(shared, "machine::nspawn_settings_file_runs_as_under_machinectl", nspawn_settings_file),
        crate::trial(shared, "machine::list_and_cancel_transfers_as_machinectl_leaving_nothing", transfers),
    ]
}

const IMAGE: &str = "/var/lib/machines/f28";
const UNIT: &str = "wharf-f28";

/// The unit properties the launcher relies on (what `machine start` sets),
/// for the test of input `machine start` refuses before the launcher would
/// see it.
const UNIT_PROPERTIES: &str = "--slice=machine.slice -p Delegate=yes -p Type=notify -p KillMode=mixed";

/// `machine start`: wharfd makes the unit and starts the launcher in it;
/// returns when the container reported ready.
pub(crate) fn start(tb: &Testbed, machine: &str, options: &str) {
    let out = tb.ok(&format!("machine start {machine} {options}"));
    assert_eq!(out.trim(), format!("Machine {machine} is running (wharf-{machine}.service); its init reported ready."));
}

/// Puts the f28 image at /var/lib/machines/f28 (once) and makes sure no
/// earlier test left its unit behind.
pub(crate) fn prepare(tb: &Testbed) {
    if !tb.host_path(&format!("{IMAGE}/etc/os-release")).exists() {
        let tarball = images::f28_tarball().expect("the f28 image");
        let dir = tb.host_path(IMAGE);
        std::fs::create_dir_all(&dir).unwrap();
        let status = std::process::Command::new("tar").arg("-C").arg(&dir).arg("-xf").arg(&tarball).status().unwrap();
        assert!(status.success(), "unpacking {}", tarball.display());
    }
    tb.ok(
        "for u in wharf-f28 wharf-f28c wharf-f28s wharf-f28e; do systemctl stop $u; systemctl reset-failed $u; done \
           2>/dev/null; true",
    );
}

pub(crate) fn leader(tb: &Testbed, machine: &str) -> String {
    let pid = tb.ok(&format!("machinectl show {machine} -p Leader --value")).trim().to_string();
    assert!(pid.parse::<u32>().is_ok_and(|p| p > 1), "leader of {machine}: {pid:?}");
    pid
}

/// `systemctl is-system-running` inside; on anything but `running`, the
/// failed units and the container's console are in the panic message.
#[track_caller]
pub(crate) fn assert_running_inside(tb: &Testbed, leader: &str, unit: &str) {
    let state = tb.sh(&format!("nsenter -t {leader} -a systemctl is-system-running")).stdout.trim().to_string();
    if state != "running" {
        let failed = tb.sh(&format!("nsenter -t {leader} -a systemctl --failed --no-legend --plain")).stdout;
        let console = tb.sh(&format!("journalctl -u {unit} --no-pager | tail -40")).stdout;
        panic!("the container is '{state}', not running; failed units:\n{failed}\nconsole:\n{console}");
    }
}

fn show(tb: &Testbed, unit: &str, property: &str) -> String {
    tb.ok(&format!("systemctl show -p {property} --value {unit}")).trim().to_string()
}

/// The testbed's mounts, one per line, without the mount IDs (which change).
fn mounts(tb: &Testbed) -> Vec<String> {
    let mut lines: Vec<String> = tb
        .ok("cat /proc/self/mountinfo")
        .lines()
        .map(|line| line.split_whitespace().skip(3).collect::<Vec<_>>().join(" "))
        .collect();
    lines.sort();
    lines
}

/// Nothing of a machine is left in the testbed: no mount of or in the
/// image, no loop device, no machine, no process in the user namespace, no
/// range lock.
#[track_caller]
fn assert_nothing_left(tb: &Testbed, image: &str, machine: &str, user_namespace: Option<&str>) {
    let left: Vec<String> = mounts(tb).into_iter().filter(|m| m.contains(image)).collect();
    assert!(left.is_empty(), "mounts left: {left:#?}");
    let loops = tb.loop_devices(image);
    assert!(loops.is_empty(), "loop devices left: {loops:?}");
    let machines = tb.ok("machinectl list --no-legend");
    assert!(!machines.contains(machine), "machine left: {machines}");
    if let Some(ns) = user_namespace {
        let holders =
            tb.ok(&format!("for p in /proc/[0-9]*; do [ \"$(readlink $p/ns/user)\" = '{ns}' ] && echo $p; done; true"));
        assert_eq!(holders.trim(), "", "processes still in {ns}");
    }
    // No range is held any more (a launcher that could not remove its lock
    // file leaves it unlocked, and the next one takes it).
    let held = tb.ok(
        "for f in /run/wharf/uid-ranges/*; do [ -e \"$f\" ] && ! flock -n -x \"$f\" true && echo \"$f\"; done; true",
    );
    assert_eq!(held.trim(), "", "range locks still held");
}

fn boot_and_stop(tb: &Testbed) {
    prepare(tb);
    let before = mounts(tb);
    start(tb, "f28", "");
    // machine start returned: the start job is done, so readiness came.
    assert_eq!(show(tb, UNIT, "ActiveState"), "active");
    assert!(show(tb, UNIT, "StatusText").starts_with("Container running"), "{}", show(tb, UNIT, "StatusText"));

    let list = tb.ok("machinectl list --no-legend");
    let row: Vec<&str> = list.lines().find(|l| l.starts_with("f28 ")).expect("f28 listed").split_whitespace().collect();
    assert_eq!(&row[..3], ["f28", "container", "wharf"], "{list}");
    let status = tb.ok("machinectl status f28 --no-pager");
    assert!(
        status.contains("Service: wharf; class container") && status.contains("Unit: wharf-f28.service"),
        "{status}"
    );
    assert!(status.contains(&format!("Root: {IMAGE}")), "{status}");

    let leader = leader(tb, "f28");
    assert_running_inside(tb, &leader, UNIT);
    // A command's exit status comes back through nsenter.
    let out = tb.sh(&format!("nsenter -t {leader} -a sh -c 'exit 7'"));
    assert_eq!(out.code, Some(7), "{out}");
    tb.ok(&format!("nsenter -t {leader} -a grep -qzx container=wharf /proc/1/environ"));
    // The init runs as PID 1 of its own PID namespace, named after the machine.
    assert_eq!(
        tb.ok(&format!("nsenter -t {leader} -a sh -c 'readlink /proc/1/exe; hostname'")),
        "/usr/lib/systemd/systemd\nf28\n"
    );

    // Its own user namespace, mapping container root to a private range.
    let uid_map = tb.ok(&format!("cat /proc/{leader}/uid_map"));
    let fields: Vec<u64> = uid_map.split_whitespace().map(|f| f.parse().unwrap()).collect();
    assert_eq!(fields.len(), 3, "{uid_map}");
    assert_eq!(fields[0], 0, "{uid_map}");
    assert!(fields[1] >= 0x80000 && fields[1].is_multiple_of(65536), "{uid_map}");
    assert_eq!(fields[2], 65536, "{uid_map}");
    let ns = tb.ok(&format!("readlink /proc/{leader}/ns/user")).trim().to_string();
    assert_ne!(ns, tb.ok("readlink /proc/self/ns/user").trim());
    // The image's files are root's inside, and untouched on disk (idmapped).
    assert_eq!(tb.ok(&format!("nsenter -t {leader} -a stat -c %u:%g /etc/os-release")).trim(), "0:0");
    assert_eq!(tb.ok(&format!("stat -c %u {IMAGE}")).trim(), "0");
    // The container's cgroup root is the payload cgroup of the unit.
    let cgroup = tb.ok(&format!("cat /proc/{leader}/cgroup"));
    assert!(cgroup.contains("0::/machine.slice/wharf-f28.service/payload/init.scope"), "{cgroup}");

    tb.ok(&format!("systemctl stop {UNIT}"));
    assert_eq!(show(tb, UNIT, "ActiveState"), "inactive");
    assert_nothing_left(tb, IMAGE, "f28", Some(&ns));
    assert_eq!(mounts(tb), before, "the testbed's mounts changed");
    let journal = tb.ok(&format!("journalctl -u {UNIT} --no-pager"));
    assert!(journal.contains("Reached target") && journal.contains("Halting system"), "console not in the journal");
}

fn poweroff_and_reboot(tb: &Testbed) {
    prepare(tb);
    start(tb, "f28", "");
    let first = leader(tb, "f28");
    // Reboot from inside: the launcher exits 133 and the unit is restarted.
    tb.sh(&format!("nsenter -t {first} -a systemctl reboot"));
    tb.ok(&format!(
        "for i in $(seq 100); do [ \"$(systemctl show -p NRestarts --value {UNIT})\" = 1 ] && \
         [ \"$(systemctl show -p ActiveState --value {UNIT})\" = active ] && exit 0; sleep 0.1; done; exit 1"
    ));
    let second = leader(tb, "f28");
    assert_ne!(first, second, "a new container after the reboot");
    assert_running_inside(tb, &second, UNIT);
    // Power off from inside: the unit ends successfully, with nothing left.
    tb.sh(&format!("nsenter -t {second} -a systemctl poweroff"));
    tb.ok(&format!(
        "for i in $(seq 100); do [ \"$(systemctl show -p ActiveState --value {UNIT})\" = inactive ] && exit 0; \
         sleep 0.1; done; exit 1"
    ));
    assert_eq!(show(tb, UNIT, "Result"), "success");
    assert_eq!(show(tb, UNIT, "ExecMainStatus"), "0");
    assert_nothing_left(tb, IMAGE, "f28", None);
}

/// A stop that comes while the container is still booting (its systemd may
/// not handle signals yet) still halts it, quickly and cleanly. The stop
/// comes at set moments after `machine start --no-block` returned (the
/// delays are the test's input, not waits).
fn stop_during_boot(tb: &Testbed) {
    prepare(tb);
    for delay in ["0.01", "0.03", "0.1"] {
        let out = tb.ok(&format!("machine start --no-block f28; sleep {delay}; timeout 20 systemctl stop {UNIT}"));
        assert_eq!(out.trim(), format!("Machine f28 is starting ({UNIT}.service)."));
        assert_eq!(show(tb, UNIT, "Result"), "success", "stopped {delay} s after the start");
        assert_nothing_left(tb, IMAGE, "f28", None);
    }
}

fn private_network(tb: &Testbed) {
    prepare(tb);
    start(tb, "f28", "--network=private");
    let leader = leader(tb, "f28");
    assert_running_inside(tb, &leader, UNIT);
    let links = tb.ok(&format!("nsenter -t {leader} -a ip -br link"));
    let names: Vec<&str> = links.lines().filter_map(|l| l.split_whitespace().next()).collect();
    assert_eq!(names, ["lo"], "{links}");
    assert!(links.contains("UP"), "the container's systemd brings lo up: {links}");
    tb.ok(&format!("systemctl stop {UNIT}"));
    assert_nothing_left(tb, IMAGE, "f28", None);
}

/// The fallback for file systems without idmapped mounts: the image is
/// shifted with chown once, recorded in its root's owner, and started again
/// without a second walk.
fn chown_fallback(tb: &Testbed) {
    prepare(tb);
    let copy = "/var/lib/machines/f28c";
    tb.ok(&format!("rm -rf {copy}; cp -a {IMAGE} {copy}"));
    let options = "--private-users-ownership=chown";
    start(tb, "f28c", options);
    let leader = leader(tb, "f28c");
    assert_running_inside(tb, &leader, "wharf-f28c");
    let base = tb.ok(&format!("awk '{{print $2}}' /proc/{leader}/uid_map")).trim().to_string();
    assert_eq!(tb.ok(&format!("stat -c %u {copy}")).trim(), base, "the root records the range");
    assert_eq!(tb.ok(&format!("nsenter -t {leader} -a stat -c %u:%g /etc/shadow")).trim(), "0:42");
    tb.ok("systemctl stop wharf-f28c");
    assert_nothing_left(tb, copy, "f28c", None);

    start(tb, "f28c", options);
    let journal = tb.ok("journalctl -u wharf-f28c --no-pager -o cat");
    assert_eq!(journal.matches(" files of ").count(), 1, "walked once:\n{journal}");
    assert!(journal.contains("is shifted to UID range"), "{journal}");
    assert_eq!(tb.ok("machinectl show f28c -p Leader --value >/dev/null; awk '{print $2}' /proc/$(machinectl show f28c -p Leader --value)/uid_map").trim(), base);
    tb.ok("systemctl stop wharf-f28c");
    assert_nothing_left(tb, copy, "f28c", None);
    tb.ok(&format!("rm -rf {copy}"));
}

/// An uncompressed squashfs of `tree` at `out` (quick to build, and what
/// the loop device then reads as is), made on the host.
fn squashfs_of(tree: &std::path::Path, out: &std::path::Path) {
    let built = std::process::Command::new("mksquashfs")
        .arg(tree)
        .arg(out)
        .args(["-noappend", "-quiet", "-no-progress", "-noI", "-noId", "-noD", "-noF", "-noX", "-no-xattrs"])
        .stdout(std::process::Stdio::null())
        .status()
        .unwrap();
    assert!(built.success(), "mksquashfs of {}", tree.display());
}

/// squashfs (read-only) and ext4 (writable) file system images of f28,
/// through a loop device that is gone when the unit has stopped.
fn raw_images(tb: &Testbed) {
    prepare(tb);
    let tree = tb.host_path(IMAGE);
    let squashfs = tb.host_path("/var/lib/machines/f28s.raw");
    let ext4 = tb.host_path("/var/lib/machines/f28e.raw");
    squashfs_of(&tree, &squashfs);
    let file = std::fs::File::create(&ext4).unwrap();
    file.set_len(1 << 30).unwrap();
    let built =
        std::process::Command::new("mkfs.ext4").args(["-q", "-F", "-d"]).arg(&tree).arg(&ext4).status().unwrap();
    assert!(built.success(), "mkfs.ext4");
    let gpt = tb.host_path("/var/lib/machines/f28g.raw");
    gpt_disk(&squashfs, &gpt, "root");

    for (machine, fstype, mode) in [("f28s", "squashfs", "ro"), ("f28e", "ext4", "rw"), ("f28g", "squashfs", "ro")] {
        let unit = format!("wharf-{machine}");
        let image = format!("/var/lib/machines/{machine}.raw");
        start(tb, machine, "");
        let leader = leader(tb, machine);
        assert_running_inside(tb, &leader, &unit);
        let root = tb.ok(&format!("nsenter -t {leader} -a findmnt -n -o FSTYPE,OPTIONS /"));
        assert!(root.starts_with(fstype) && root.contains(&format!(" {mode},")), "{root}");
        assert_eq!(tb.loop_devices(&image).len(), 1, "the image's loop device");
        assert!(tb.ok(&format!("machinectl status {machine} --no-pager")).contains(&format!("Root: {image}")));
        tb.ok(&format!("systemctl stop {unit}"));
        assert_nothing_left(tb, &image, machine, None);
        assert_eq!(tb.ok("ls /run/wharf/machines 2>/dev/null; true").trim(), "", "mount points left");
    }
    std::fs::remove_file(&squashfs).unwrap();
    std::fs::remove_file(&ext4).unwrap();
    std::fs::remove_file(&gpt).unwrap();
}

/// A GPT disk whose root partition has a root-verity partition beside it:
/// every block of the root partition is checked against the hash tree, and
/// the tree against the root hash (from the partition UUIDs, as
/// systemd-repart writes them), by `machine start` before any unit exists
/// and by the launcher again through the descriptor it attaches the loop
/// device with; it then boots read-only. `--image-policy=` is checked
/// against the image first. One flipped byte of the root partition is
/// refused in one line naming the partition, by both, leaving nothing.
fn verity_image(tb: &Testbed) {
    use super::images::{flip_byte, verity_disk};
    prepare(tb);
    let tree = tb.host_path(IMAGE);
    let squashfs = tb.host_path("/var/tmp/f28v.squashfs");
    squashfs_of(&tree, &squashfs);
    let disk = tb.host_path("/var/lib/machines/f28v.raw");
    let (_, data_at) = verity_disk(&squashfs, &disk, true);
    let image = "/var/lib/machines/f28v.raw";
    let before = mounts(tb);

    for policy in ["", "--image-policy=root=verity:=absent", "--image-policy=root=verity+signed+unprotected"] {
        start(tb, "f28v", policy);
        let leader = leader(tb, "f28v");
        assert_running_inside(tb, &leader, "wharf-f28v");
        let root = tb.ok(&format!("nsenter -t {leader} -a findmnt -n -o FSTYPE,OPTIONS /"));
        assert!(root.starts_with("squashfs") && root.contains(" ro,"), "{root}");
        let logged = tb.ok("journalctl -u wharf-f28v --no-pager");
        assert!(logged.contains("the root partition matches its verity hash"), "{logged}");
        tb.ok("systemctl stop wharf-f28v");
        assert_nothing_left(tb, image, "f28v", None);
    }

    let refused = |command: &str, reason: &str| {
        let out = tb.fails(command);
        assert_eq!(out.stderr.trim_end().lines().count(), 1, "{command}: {out}");
        assert!(out.stderr.starts_with(reason), "{command}: wanted {reason:?}: {out}");
        assert_gone(tb, "f28v");
        assert_nothing_left(tb, image, "f28v", None);
        assert_eq!(mounts(tb), before, "{command}: the testbed's mounts changed");
    };
    refused(
        "machine start f28v --image-policy=root=signed",
        "machine: machine 'f28v': the image does not satisfy the image policy 'root=signed': its root partition is verity, the policy allows signed",
    );
    refused(
        "machine start f28v --image-policy=root=bogus",
        "machine: machine 'f28v': image policy 'root=bogus': 'bogus' is not a partition policy flag",
    );
    refused(
        "machine start f28 --image-policy=root=verity",
        "machine: machine 'f28': an image policy applies to image files",
    );

    flip_byte(&disk, data_at + 40 * 4096 + 1);
    refused(
        "machine start f28v",
        &format!("machine: root partition of image '{image}' does not match its verity hash: block 40 differs"),
    );
    // The launcher itself refuses it too (had it changed after the check).
    let out = tb.sh(&format!("/usr/lib/wharf/wharfd launch --machine f28v --image {image}"));
    assert_eq!(out.code, Some(1), "{out}");
    assert_eq!(
        out.stderr.trim_end(),
        format!(
            "wharfd launch: machine 'f28v': root partition of image '{image}' does not match its verity hash: block 40 differs"
        )
    );
    assert_nothing_left(tb, image, "f28v", None);
    assert_eq!(tb.ok("ls /sys/class/block | grep '^dm-'; true").trim(), "", "device-mapper devices left");

    // An unprotected GPT disk of the same tree, where verity is required.
    gpt_disk(&squashfs, &disk, "root");
    refused(
        "machine start f28v --image-policy=root=verity",
        "machine: machine 'f28v': the image does not satisfy the image policy 'root=verity': its root partition is unprotected, the policy allows verity",
    );
    std::fs::remove_file(&disk).unwrap();
    std::fs::remove_file(&squashfs).unwrap();
}

/// Writes a GPT disk image `disk` holding the file system image `part` as
/// its one partition, typed as this architecture's `role` ("root" or "usr")
/// partition of the Discoverable Partitions Specification.
fn gpt_disk(part: &std::path::Path, disk: &std::path::Path, role: &str) {
    let type_guid = match (std::env::consts::ARCH, role) {
        ("x86_64", "root") => "4f68bce3-e8cd-4db1-96e7-fbcaf984b709",
        ("x86_64", "usr") => "8484680c-9521-48c6-9c11-b0720656f69e",
        ("aarch64", "root") => "b921b045-1df0-41c3-af44-4c6f280d3fae",
        ("aarch64", "usr") => "b0e01050-ee5f-4390-949a-9101b17104e9",
        other => panic!("no partition type known for {other:?}"),
    };
    let script = format!(
        "sectors=$(( ($(stat -c %s {part}) + 511) / 512 )) && rm -f {disk} && \
         truncate -s $(( (2048 + sectors + 2048) * 512 )) {disk} && \
         printf 'label: gpt\\nstart=2048, size=%s, type={type_guid}\\n' $sectors | sfdisk -q {disk} >/dev/null && \
         dd if={part} of={disk} bs=512 seek=2048 conv=notrunc status=none",
        part = part.display(),
        disk = disk.display(),
    );
    crate::testbed::run_host(std::process::Command::new("sh").arg("-c").arg(script), "making a GPT disk").unwrap();
}

fn bad_input(tb: &Testbed) {
    prepare(tb);
    tb.ok("rm -rf /srv/noinit && mkdir -p /srv/noinit/etc /srv/noinit/usr/lib/systemd && chmod 755 /srv/noinit && \
           printf '#!/bin/sh\\n' > /srv/noinit/usr/lib/systemd/systemd");
    let before = mounts(tb);
    for (options, machine, reason) in [
        (
            "--machine f29 --directory /var/lib/machines/missing",
            "f29",
            "image directory /var/lib/machines/missing does not exist",
        ),
        ("--machine f29 --directory /srv/noinit", "f29", "no init in /srv/noinit"),
        ("--machine 'no/slash' --directory /var/lib/machines/f28", "no/slash", "contains '/'"),
        (&format!("--machine {} --directory {IMAGE}", "x".repeat(65)), &"x".repeat(65), "longer than 64"),
        ("--machine f29 --directory /etc/hostname", "f29", "/etc/hostname is not a directory"),
        ("--machine f29 --image /etc/hostname", "f29", "not an image"),
        ("--machine f29 --image /var/lib/machines/missing.raw", "f29", "No such file or directory"),
    ] {
        let out = tb.sh(&format!("/usr/lib/wharf/wharfd launch {options}"));
        assert_eq!(out.code, Some(1), "{out}");
        let stderr = out.stderr.trim_end();
        assert_eq!(stderr.lines().count(), 1, "one line: {out}");
        assert!(stderr.starts_with(&format!("wharfd launch: machine '{machine}': ")), "{out}");
        assert!(stderr.contains(reason), "{out}");
        assert_eq!(out.stdout, "", "{out}");
    }
    // The same through a unit: it fails, with the reason as its status. Made
    // by hand, because `machine start` refuses an image without an init
    // before it starts the launcher (bad_starts tests that refusal).
    let out = tb.sh(&format!(
        "systemd-run --quiet --unit=wharf-f29 {UNIT_PROPERTIES} /usr/lib/wharf/wharfd launch --machine f29 --directory /srv/noinit"
    ));
    assert!(!out.success(), "{out}");
    assert!(show(tb, "wharf-f29", "StatusText").contains("no init in /srv/noinit"));
    tb.ok("systemctl reset-failed wharf-f29");
    assert_eq!(mounts(tb), before, "the testbed's mounts changed");
    assert_nothing_left(tb, "/srv/noinit", "f29", None);
    tb.ok("rm -rf /srv/noinit");
}

/// No unit, scope or machine of `machine` is left.
#[track_caller]
pub(crate) fn assert_gone(tb: &Testbed, machine: &str) {
    let units = tb.ok(&format!("systemctl list-units --all --no-legend --plain 'wharf-{machine}*' | wc -l"));
    assert_eq!(units.trim(), "0", "units of {machine} left");
    let machines = tb.ok("machinectl list --no-legend");
    assert!(!machines.contains(machine), "machined still has {machine}: {machines}");
}

fn machine_cli(tb: &Testbed) {
    prepare(tb);
    let before = mounts(tb);
    let since = tb.ok("date +%s.%N").trim().to_string();
    let out = tb.ok("machine start f28 --property=MemoryMax=512M --property=TasksMax=200 --property=CPUQuota=50%");
    assert_eq!(out.trim(), "Machine f28 is running (wharf-f28.service); its init reported ready.");
    let listed = tb.ok("machinectl list --no-legend");
    assert!(
        listed.lines().any(|l| l.split_whitespace().collect::<Vec<_>>()[..3] == ["f28", "container", "wharf"]),
        "{listed}"
    );
    assert!(tb.ok("machinectl status f28").contains("wharf-f28.service"));
    assert!(tb.ok("machine list --json").contains(r#""name":"f28","class":"container","service":"wharf""#));

    // Commands run inside, with their exit status and their output.
    assert_eq!(tb.ok("machine shell f28 systemctl is-system-running").trim(), "running");
    assert_eq!(tb.sh("machine shell f28 sh -c 'exit 7'").code, Some(7));
    assert_eq!(tb.sh("machine shell f28 /no/such/command").code, Some(127));
    assert_eq!(tb.ok("machine shell f28 nobody@ id -u").trim(), "65534");
    assert_eq!(tb.ok("machine shell root@f28 -- cat /etc/hostname").trim(), "f28");
    assert_eq!(tb.ok("echo piped | machine shell f28 cat").trim(), "piped");
    // The command runs in a unit of its own, free of wharfd's sandbox
    // (wharfd.service sets NoNewPrivileges= and bounds its capabilities),
    // and the unit is gone once the command is.
    let status = tb.ok("machine shell f28 grep -E '^(NoNewPrivs|CapBnd)' /proc/self/status");
    assert!(status.contains("NoNewPrivs:\t0"), "{status}");
    let init = tb.ok("machine shell f28 grep -E '^CapBnd' /proc/1/status");
    assert!(status.contains(init.trim()), "the shell's capabilities are not the machine's: {status} vs {init}");
    let unit = tb.ok("machine shell f28 cat /proc/self/cgroup");
    assert!(unit.contains("/wharf-shell-f28-"), "{unit}");
    assert_eq!(tb.ok("systemctl list-units --all --no-legend 'wharf-shell-*' | wc -l").trim(), "0");

    // Limits set at start: on the unit, and in the container's cgroups.
    assert_eq!(show(tb, "wharf-f28.service", "MemoryMax"), "536870912");
    assert_eq!(show(tb, "wharf-f28.service", "TasksMax"), "200");
    assert_eq!(show(tb, "wharf-f28.service", "CPUQuotaPerSecUSec"), "500ms");
    let cgroup = "/sys/fs/cgroup/memory/machine.slice/wharf-f28.service";
    assert_eq!(tb.ok(&format!("cat {cgroup}/memory.limit_in_bytes")).trim(), "536870912");
    assert_eq!(tb.ok("cat /sys/fs/cgroup/pids/machine.slice/wharf-f28.service/pids.max").trim(), "200");
    assert_eq!(tb.ok("machine shell f28 cat /sys/fs/cgroup/memory/memory.limit_in_bytes").trim(), "536870912");
    let shown = tb.ok("machine show f28");
    assert!(shown.contains("MemoryMax=536870912\n") && shown.contains("CPUQuota=50%\n"), "{shown}");

    // Changed live.
    tb.ok("machine set-property f28 MemoryMax=256M TasksMax=100");
    assert_eq!(show(tb, "wharf-f28.service", "MemoryMax"), "268435456");
    assert_eq!(tb.ok(&format!("cat {cgroup}/memory.limit_in_bytes")).trim(), "268435456");
    assert_eq!(tb.ok("cat /sys/fs/cgroup/pids/machine.slice/wharf-f28.service/pids.max").trim(), "100");
    assert_eq!(tb.ok("machine shell f28 cat /sys/fs/cgroup/memory/memory.limit_in_bytes").trim(), "268435456");

    let status = tb.ok("machine status f28");
    assert!(status.contains("Unit: wharf-f28.service") && status.contains("MemoryMax=268435456"), "{status}");
    // What machinectl status shows: since, leader, OS, and the unit's
    // processes as a tree (the container's init below payload/).
    let reference = tb.ok("machinectl status f28 --no-pager");
    let os = reference.lines().find_map(|l| l.trim().strip_prefix("OS: ")).expect("machinectl shows the OS");
    assert!(status.contains(&format!("OS: {os}\n")), "{status}\nmachinectl:\n{reference}");
    assert!(status.contains("Since: ") && status.contains(" UTC; "), "{status}");
    let leader = leader(tb, "f28");
    assert!(status.contains(&format!("Leader: {leader} (systemd)")), "{status}");
    assert!(status.contains("├─payload") || status.contains("└─payload"), "{status}");
    assert!(
        status.contains(&format!("─{leader} /usr/lib/systemd/systemd"))
            || status.contains(&format!("─{leader} /sbin/init")),
        "{status}"
    );
    let json = tb.ok("machine status f28 --json");
    assert!(json.contains(&format!("\"os\":\"{os}\"")) && json.contains("\"cgroup\":[\""), "{json}");
    // As systemctl start of an active unit: said, and a success.
    assert_eq!(tb.ok("machine start f28").trim(), "Machine f28 is running already (wharf-f28.service).");
    let refused = tb.fails("machine remove f28");
    assert_eq!(refused.stderr.trim(), "machine: machine 'f28' is running; stop it before removing its image");

    // A signal its systemd only answers with a dump to its journal. Sent to
    // "all", it reaches the launcher too (machined of systemd 252 signals
    // the whole unit), which must keep it pending, blocked, not die of it.
    let launcher = tb.ok("systemctl show -p MainPID --value wharf-f28.service").trim().to_string();
    tb.ok("machine kill --signal=SIGUSR2 f28");
    let status = tb.ok(&format!("cat /proc/{launcher}/status"));
    let mask = |field: &str| {
        let hex = status.lines().find_map(|l| l.strip_prefix(field)).unwrap_or_default().trim().to_string();
        u64::from_str_radix(&hex, 16).unwrap_or_else(|e| panic!("{field} {hex}: {e}\n{status}"))
    };
    let usr2 = 1u64 << (12 - 1);
    assert!(mask("SigBlk:") & usr2 != 0 && mask("ShdPnd:") & usr2 != 0, "SIGUSR2 not held by the launcher: {status}");
    assert_eq!(tb.ok("machine shell f28 true"), "", "the machine did not survive SIGUSR2 to all");

    // Poweroff: SIGRTMIN+4 to its init, and waits until nothing is left.
    tb.ok("machine poweroff f28");
    assert_gone(tb, "f28");
    assert_eq!(mounts(tb), before, "mounts left behind");
    let loops = tb.loop_devices("/var/lib/machines/");
    assert!(loops.is_empty(), "loop devices left: {loops:?}");
    let refused = tb.fails("machine poweroff f28");
    assert_eq!(refused.stderr.trim(), "machine: machine 'f28' is not running");
    tb.fails("machine terminate f28");

    // Each change is in the audit trail (see audit.rs), in order.
    let entries = crate::audit::history(tb, &format!("machine history --json --since=@{since} f28"), 7);
    assert_eq!(
        crate::audit::kinds(&entries),
        [
            "machine-start:done",
            "set-property:done",
            "image-remove:failed",
            "machine-kill:done",
            "machine-poweroff:done",
            "machine-poweroff:failed",
            "machine-terminate:failed"
        ]
    );
    assert_eq!(crate::audit::values(&entries[3], "SIGNAL"), [rustix::process::Signal::USR2.as_raw().to_string()]);
    assert_eq!(crate::audit::values(&entries[0], "UNIT"), ["wharf-f28.service"]);
    assert_eq!(crate::audit::values(&entries[1], "PROPERTY"), ["MemoryMax=256M", "TasksMax=100"]);
    assert_eq!(entries[4]["cmdline"], serde_json::json!(["machine", "poweroff", "f28"]));
}

fn imported_images_start(tb: &Testbed) {
    prepare(tb);
    // The f28 tree as .tar.xz, and a raw squashfs of it as .raw.xz.
    let (tar_xz, raw_xz) = images::f28_import_files().expect("the f28 import files");
    let work = tb.host_path("/srv/import");
    std::fs::create_dir_all(&work).unwrap();
    std::fs::copy(&tar_xz, work.join("f28x.tar.xz")).unwrap();
    std::fs::copy(&raw_xz, work.join("f28q.raw.xz")).unwrap();
    assert_eq!(tb.ok("machine import-tar /srv/import/f28x.tar.xz").trim(), "Imported /var/lib/machines/f28x.");
    assert_eq!(tb.ok("machine import-raw /srv/import/f28q.raw.xz").trim(), "Imported /var/lib/machines/f28q.raw.");
    for name in ["f28x", "f28q"] {
        tb.ok(&format!("machine start {name}"));
        assert_eq!(tb.ok(&format!("machine shell {name} systemctl is-system-running")).trim(), "running", "{name}");
        tb.ok(&format!("machine poweroff {name}"));
        assert_gone(tb, name);
    }
    tb.ok("machine remove f28x f28q; rm -rf /srv/import");
}

fn bad_starts(tb: &Testbed) {
    prepare(tb);
    tb.ok("mkdir -p /var/lib/machines/noinit/etc && echo ID=x > /var/lib/machines/noinit/etc/os-release");
    // A GPT disk with only a /usr partition (holding an init): nothing to boot.
    let usr_tree = tb.host_path("/srv/f28u-usr");
    std::fs::create_dir_all(usr_tree.join("lib/systemd")).unwrap();
    std::fs::copy(tb.host_path(&format!("{IMAGE}/usr/lib/systemd/systemd")), usr_tree.join("lib/systemd/systemd"))
        .unwrap();
    let usr_part = tb.host_path("/srv/f28u.squashfs");
    let built = std::process::Command::new("mksquashfs")
        .arg(&usr_tree)
        .arg(&usr_part)
        .args(["-noappend", "-quiet", "-no-progress"])
        .stdout(std::process::Stdio::null())
        .status()
        .unwrap();
    assert!(built.success(), "mksquashfs");
    gpt_disk(&usr_part, &tb.host_path("/var/lib/machines/f28u.raw"), "usr");
    let architecture = if std::env::consts::ARCH == "aarch64" { "arm64" } else { "x86-64" };
    let usr_only = format!(
        "machine: machine 'f28u': the GPT disk has no root partition for {architecture} (a /usr partition alone does not boot)"
    );
    let cases = [
        ("machine start nosuch", "machine: image 'nosuch' not found in the search path"),
        (
            "machine start noinit",
            "machine: machine 'noinit': the image has no init (/usr/lib/systemd/systemd, /lib/systemd/systemd, /sbin/init)",
        ),
        ("machine start 'bad name'", "machine: machine name 'bad name' contains ' '"),
        ("machine start f28 --property=Nice=5", "machine: unknown property 'Nice' (supported: MemoryMax"),
        ("machine start f28 --property=MemoryMax=lots", "machine: MemoryMax: 'lots' is not a size"),
        (
            "machine start f28 --network=bridge",
            "machine: machine 'f28': 'bridge' is not a valid --network value (host, private, veth, bridge:BRIDGE or zone:ZONE)",
        ),
        (
            "machine start f28 --private-users=some",
            "machine: machine 'f28': 'some' is not a valid --private-users value (pick, no or a UID)",
        ),
        (
            "machine start f28 --private-users-ownership=map",
            "machine: machine 'f28': 'map' is not a valid --private-users-ownership value (auto, idmap or chown)",
        ),
        ("machine shell nosuch true", "machine: machine 'nosuch' is not running"),
        ("machine start f28u", &usr_only),
    ];
    for (command, expected) in cases {
        let out = tb.fails(command);
        assert!(out.stderr.starts_with(expected), "{command}: {out}");
        assert_eq!(out.stderr.lines().count(), 1, "{command}: {out}");
        for machine in ["nosuch", "noinit", "f28", "f28u"] {
            assert_gone(tb, machine);
        }
    }
    tb.ok("rm -rf /var/lib/machines/noinit /var/lib/machines/f28u.raw /srv/f28u-usr /srv/f28u.squashfs");
    let out = tb.sh_nobody("machine start f28");
    assert_eq!(
        out.stderr.trim(),
        "machine: access denied: starting a machine needs authorization for org.wharf1.machine.manage (caller is uid 65534)"
    );
}

fn enable_at_boot(tb: &Testbed) {
    prepare(tb);
    tb.ok("machine enable f28");
    assert_eq!(tb.ok("systemctl is-enabled wharf-machine@f28.service").trim(), "enabled");
    assert!(tb.ok("ls /etc/systemd/system/machines.target.wants/").contains("wharf-machine@f28.service"));
    // What boot does: machines.target pulls the machine in.
    tb.ok("systemctl start machines.target");
    assert_eq!(tb.ok("machine shell f28 systemctl is-system-running").trim(), "running");
    tb.ok("systemctl stop wharf-machine@f28.service");
    assert_gone(tb, "f28");
    tb.ok("machine disable f28");
    assert_eq!(tb.sh("systemctl is-enabled wharf-machine@f28.service").stdout.trim(), "disabled");
}

/// Drives a program on a pseudo-terminal: argv is the command, then pairs
/// of (text to wait for, keys to type once it showed); then reads to the end.
/// Each wait has a deadline; a timeout prints what the terminal showed.
const EXPECT_PY: &str = r#"
import os, pty, select, sys, time
command, steps = sys.argv[1], sys.argv[2:]
pid, fd = pty.fork()
if pid == 0:
    os.execvp("sh", ["sh", "-c", command])
seen, mark = b"", 0
def more(deadline):
    global seen
    left = deadline - time.monotonic()
    if left <= 0 or not select.select([fd], [], [], left)[0]:
        return False
    try:
        data = os.read(fd, 4096)
    except OSError:
        data = b""
    if not data:
        raise EOFError
    seen += data
    return True
def show():
    sys.stdout.write(seen.decode(errors="replace").replace("\r", ""))
try:
    for wanted, keys in zip(steps[0::2], steps[1::2]):
        wanted, deadline = wanted.encode(), time.monotonic() + 60
        while seen.find(wanted, mark) < 0:
            if not more(deadline):
                show(); print(f"\nno {wanted!r} on the terminal within 60 s"); sys.exit(3)
        mark = seen.find(wanted, mark) + len(wanted)
        os.write(fd, keys.encode().decode("unicode_escape").encode())
    deadline = time.monotonic() + 60
    while more(deadline):
        pass
    show(); print("\nthe program did not end within 60 s"); sys.exit(3)
except EOFError:
    pass
show()
sys.exit(os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1]))
"#;

/// Runs `command` on a terminal, and for each (text, keys) of `steps` types
/// the keys once the text has shown; returns what the terminal showed.
fn on_a_terminal(tb: &Testbed, command: &str, steps: &[(&str, &str)]) -> crate::testbed::Out {
    std::fs::write(tb.host_path("/srv/expect.py"), EXPECT_PY).unwrap();
    let args: String = steps.iter().map(|(wanted, keys)| format!(" '{wanted}' '{keys}'")).collect();
    tb.sh(&format!("python3 /srv/expect.py '{command}'{args}"))
}

fn login_and_terminal_shell(tb: &Testbed) {
    prepare(tb);
    tb.ok("machine start f28");
    // A getty on a new terminal; root has no password in f28. ^] three times leaves.
    let login = on_a_terminal(
        tb,
        "machine login f28",
        &[("f28 login:", "root\\r"), ("root@f28:", "echo LOGIN$((40+2))\\r"), ("LOGIN42", "\\x1d\\x1d\\x1d")],
    );
    assert!(login.success(), "{login}");
    assert!(login.stdout.contains("Connection closed."), "{login}");
    // An interactive shell gets a terminal in the machine, and its exit status comes back.
    let shell = on_a_terminal(
        tb,
        "machine shell f28; echo status=$?",
        &[("root@f28:", "tty; test -t 0 && echo TERM\"\"INAL\\r"), ("TERMINAL", "exit 5\\r")],
    );
    assert!(shell.success(), "{shell}");
    assert!(shell.stdout.contains("/dev/pts/"), "{shell}");
    assert!(shell.stdout.contains("status=5"), "{shell}");
    tb.ok("machine poweroff f28");
    assert_gone(tb, "f28");
}

/// systemd-nspawn running the f28 tree (no user namespace, so that the
/// image's ownership stays as it is) as machine `machine`, in unit
/// `nspawn-MACHINE.service`; returns once machined has it.
fn start_nspawn(tb: &Testbed, machine: &str) {
    tb.ok(&format!(
        "systemd-run --quiet --unit=nspawn-{machine} --slice=machine.slice -p Delegate=yes -p KillMode=mixed \
         systemd-nspawn --quiet --keep-unit -D {IMAGE} -M {machine} sleep infinity"
    ));
    tb.ok(&format!(
        "for i in $(seq 100); do machinectl show {machine} >/dev/null 2>&1 && exit 0; sleep 0.1; done; \
         journalctl -u nspawn-{machine} --no-pager | tail >&2; exit 1"
    ));
}

fn stop_nspawn(tb: &Testbed, machine: &str) {
    tb.ok(&format!("systemctl stop nspawn-{machine}; systemctl reset-failed nspawn-{machine} 2>/dev/null; true"));
    tb.ok(&format!(
        "for i in $(seq 100); do machinectl show {machine} >/dev/null 2>&1 || exit 0; sleep 0.1; done; exit 1"
    ));
}

/// A running wharf machine holds the lock nspawn and machined take: they
/// refuse to run, remove or rename its image, and it keeps running; the
/// other way round, wharf refuses to start, remove or rename an image
/// nspawn runs. The lock goes with the launcher, even when it is killed.
/// A symlink or a foreign file planted as the lock is refused and left.
fn image_lock(tb: &Testbed) {
    prepare(tb);
    let lock = "/var/lib/machines/.#f28.lck";
    start(tb, "f28", "");
    let leader = leader(tb, "f28");
    tb.ok(&format!("test -f '{lock}'"));

    let out = tb.fails("machinectl remove f28");
    assert!(out.stderr.contains("busy"), "{out}");
    let out = tb.fails("machinectl rename f28 f28-renamed");
    assert!(out.stderr.contains("busy"), "{out}");
    let out = tb.fails(&format!("systemd-nspawn --quiet -D {IMAGE} -M f28n true"));
    assert!(out.stderr.contains("is currently busy"), "{out}");
    // Another wharf machine on the same tree.
    let out = tb.sh(&format!("/usr/lib/wharf/wharfd launch --machine=f28b --directory={IMAGE}"));
    assert_eq!(
        out.stderr.trim(),
        format!("wharfd launch: machine 'f28b': image {IMAGE} is in use by a running machine (lock {lock} is held)")
    );
    tb.ok(&format!("test -f {IMAGE}/etc/os-release"));
    assert_eq!(leader, self::leader(tb, "f28"), "the machine kept running");
    assert_eq!(tb.ok("machine shell f28 systemctl is-system-running").trim(), "running");

    // SIGKILL of the launcher: the lock goes with it.
    tb.ok(&format!("systemctl kill -s KILL --kill-whom=main {UNIT}"));
    tb.ok(&format!(
        "for i in $(seq 200); do systemctl is-active -q {UNIT} || machinectl show f28 >/dev/null 2>&1 || exit 0; \
         sleep 0.1; done; exit 1"
    ));
    tb.ok(&format!("systemctl reset-failed {UNIT} 2>/dev/null; true"));
    assert_gone(tb, "f28");
    tb.ok(&format!("systemd-nspawn --quiet -D {IMAGE} -M f28n true"));
    // nspawn removed its lock file as it let go.
    tb.ok(&format!("test ! -e '{lock}'"));

    // An image nspawn runs (under another machine name): wharf refuses.
    start_nspawn(tb, "n28");
    let busy = format!("image {IMAGE} is in use by a running machine (lock {lock} is held)");
    let out = tb.fails("machine start f28");
    assert_eq!(out.stderr.trim(), format!("machine: machine 'f28': {busy}"));
    assert_gone(tb, "f28");
    for command in ["machine remove f28", "machine rename f28 f28-renamed"] {
        let out = tb.fails(command);
        assert_eq!(out.stderr.trim(), format!("machine: machine image 'f28': {busy}"), "{command}");
    }
    tb.ok(&format!("test -f {IMAGE}/etc/os-release && test ! -e /var/lib/machines/f28-renamed"));
    stop_nspawn(tb, "n28");

    // A symlink planted as the lock: refused, and nothing made through it.
    tb.ok(&format!("rm -f /srv/lock-target; ln -s /srv/lock-target '{lock}'"));
    let out = tb.fails("machine start f28");
    assert_eq!(
        out.stderr.trim(),
        format!("machine: machine 'f28': lock file {lock} is a symbolic link; refusing to use it")
    );
    tb.fails("test -e /srv/lock-target");
    assert_gone(tb, "f28");
    // Through the launcher itself too (a unit made by hand).
    let out = tb.sh(&format!("/usr/lib/wharf/wharfd launch --machine=f28 --directory={IMAGE}"));
    assert!(out.stderr.contains("is a symbolic link; refusing to use it"), "{out}");
    tb.fails("test -e /srv/lock-target");
    // A lock file a local user owns (and could keep locked): refused, left as it is.
    tb.ok(&format!("rm '{lock}'; : > '{lock}'; chmod 600 '{lock}'; chown nobody '{lock}'"));
    let out = tb.fails("machine start f28");
    assert_eq!(
        out.stderr.trim(),
        format!("machine: machine 'f28': lock file {lock} is owned by UID 65534, not root; refusing to use it")
    );
    tb.ok(&format!("test \"$(stat -c %U '{lock}')\" = nobody && rm '{lock}'"));
    assert_gone(tb, "f28");

    // And a normal start and poweroff leave no lock file.
    start(tb, "f28", "");
    tb.ok("machine poweroff f28");
    assert_gone(tb, "f28");
    tb.ok(&format!("test ! -e '{lock}'"));
}

/// `machine show`, `status` and `set-property` of a machine nspawn runs: they
/// work on its unit; `--save` (wharf's own settings) says in one line why not.
fn nspawn_machine(tb: &Testbed) {
    prepare(tb);
    start_nspawn(tb, "n28");
    let shown = tb.ok("machine show n28");
    assert!(shown.contains("TasksMax=") && shown.contains("MemoryMax="), "{shown}");
    tb.ok("machine set-property n28 TasksMax=321 MemoryMax=300M");
    assert_eq!(show(tb, "nspawn-n28", "TasksMax"), "321");
    assert_eq!(show(tb, "nspawn-n28", "MemoryMax"), "314572800");
    let shown = tb.ok("machine show n28");
    assert!(shown.contains("TasksMax=321\n") && shown.contains("MemoryMax=314572800\n"), "{shown}");
    let status = tb.ok("machine status n28");
    assert!(status.contains("Unit: nspawn-n28.service") && status.contains("TasksMax=321"), "{status}");
    let out = tb.fails("machine set-property --save n28 TasksMax=100");
    assert_eq!(
        out.stderr.trim(),
        "machine: machine 'n28' was not started by wharf (it runs in nspawn-n28.service): \
         --save keeps limits for wharf's own starts only"
    );
    assert_eq!(show(tb, "nspawn-n28", "TasksMax"), "321", "nothing changed");
    tb.fails("test -e /etc/wharf/machines/n28.toml");
    // Its name is taken: start says so, and succeeds, as systemctl start would.
    assert_eq!(tb.ok("machine start n28").trim(), "Machine n28 is running already (nspawn-n28.service).");
    // machinectl's other verbs on it: status --output, shell --uid, and
    // clean refused while it runs off an image (whatever its name).
    let status = tb.ok("machine status n28 -n 3 -o cat");
    assert!(status.contains("Unit: nspawn-n28.service"), "{status}");
    assert_eq!(tb.ok("machine shell --uid=nobody n28 /usr/bin/id -u").trim(), "65534");
    let out = tb.fails("machine clean --all");
    assert!(
        out.stderr.contains("/var/lib/machines/f28 is in use") && out.stderr.contains("nothing was removed"),
        "{out}"
    );
    tb.ok("test -d /var/lib/machines/f28");
    stop_nspawn(tb, "n28");
    let out = tb.fails("machine show n28");
    assert_eq!(out.stderr.trim(), "machine: machine 'n28' is not running");
    let out = tb.fails("machine set-property n28 TasksMax=100");
    assert_eq!(out.stderr.trim(), "machine: machine 'n28' is not running");
}

/// A terminal on the host (a tmux session on a server of its own) whose
/// program runs in the testbed, as a user at a terminal would run it.
/// Everything is waited for by looking at the screen, with a deadline.
struct Tmux {
    socket: String,
    session: &'static str,
}

/// How long anything on a terminal is waited for.
const TERMINAL_DEADLINE: std::time::Duration = std::time::Duration::from_secs(60);

impl Tmux {
    /// Runs `machine ARGS` in the testbed on a new 160x50 terminal whose
    /// TERM is `screen`; when it exits, the terminal shows `EXIT=status` and
    /// `TTY=icanon` (or `TTY=-icanon`, a terminal left in raw mode).
    fn machine(tb: &Testbed, session: &'static str, args: &str) -> Tmux {
        let script = format!(
            "nsenter -t {pid1} -a -- env -i PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin \
             LANG=C.UTF-8 HOME=/root TERM=screen machine {args}\n\
             echo \"EXIT=$?\"\necho \"TTY=$(stty -a | grep -o -- '-\\?icanon')\"\nexec sleep 600\n",
            pid1 = tb.pid1()
        );
        let path = tb.host_path(&format!("/srv/tmux-{session}.sh"));
        std::fs::write(&path, script).unwrap();
        // A server per session: a server whose last session was just killed
        // is still exiting, and a new session sent to its socket is lost
        // ("server exited unexpectedly").
        let tmux = Tmux { socket: format!("wharf-{}-{session}", tb.pid1()), session };
        tmux.run(&["new-session", "-d", "-s", session, "-x", "160", "-y", "50", &format!("sh {}", path.display())]);
        tmux
    }

    fn run(&self, args: &[&str]) -> String {
        let out = std::process::Command::new("tmux").args(["-L", &self.socket]).args(args).output().expect("tmux");
        assert!(out.status.success(), "tmux {args:?}: {}", String::from_utf8_lossy(&out.stderr));
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// Types `text`, then Enter.
    fn line(&self, text: &str) {
        self.run(&["send-keys", "-t", self.session, "-l", text]);
        self.run(&["send-keys", "-t", self.session, "Enter"]);
    }

    /// Presses keys by tmux's names (C-c, C-]).
    fn keys(&self, keys: &[&str]) {
        let mut args = vec!["send-keys", "-t", self.session];
        args.extend(keys);
        self.run(&args);
    }

    fn screen(&self) -> String {
        self.run(&["capture-pane", "-p", "-J", "-S", "-200", "-t", self.session])
    }

    /// Waits until the screen shows `text`; returns the screen.
    #[track_caller]
    fn wait_for(&self, text: &str) -> String {
        let deadline = std::time::Instant::now() + TERMINAL_DEADLINE;
        loop {
            let screen = self.screen();
            if screen.contains(text) {
                return screen;
            }
            assert!(std::time::Instant::now() < deadline, "no {text:?} on the terminal within 60 s:\n{screen}");
            std::thread::sleep(std::time::Duration::from_millis(100));
        }
    }

    /// Waits (with a deadline) until `script` succeeds in the testbed; a
    /// timeout shows the screen.
    #[track_caller]
    fn until(&self, tb: &Testbed, what: &str, script: &str) {
        let out =
            tb.sh(&format!("for i in $(seq 300); do ( {script} ) >/dev/null 2>&1 && exit 0; sleep 0.1; done; exit 1"));
        if !out.success() {
            let ps = tb.sh("for p in /proc/[0-9]*; do echo \"${p#/proc/} $(tr '\\0' ' ' <$p/cmdline)\"; done 2>/dev/null | grep -v ' $' | tail -40").stdout;
            panic!("{what} (30 s): {out}\nthe terminal:\n{}\nprocesses:\n{ps}", self.screen());
        }
    }

    /// The host PID of the `machine` client running on the terminal.
    fn client_pid(&self) -> u32 {
        let pane: u32 = self.run(&["display-message", "-p", "-t", self.session, "#{pane_pid}"]).trim().parse().unwrap();
        let mut todo = vec![pane];
        while let Some(pid) = todo.pop() {
            if std::fs::read_to_string(format!("/proc/{pid}/comm")).is_ok_and(|comm| comm.trim() == "machine") {
                return pid;
            }
            let children = std::fs::read_to_string(format!("/proc/{pid}/task/{pid}/children")).unwrap_or_default();
            todo.extend(children.split_whitespace().filter_map(|c| c.parse::<u32>().ok()));
        }
        panic!("no machine client on the terminal:\n{}", self.screen());
    }
}

impl Drop for Tmux {
    fn drop(&mut self) {
        let _ = std::process::Command::new("tmux").args(["-L", &self.socket, "kill-server"]).output();
    }
}

/// A script that prints the PIDs (in the testbed) of the processes whose
/// command line is `command` (words joined by blanks); the testbed has no
/// procps.
fn processes(command: &str) -> String {
    format!(
        "for p in /proc/[0-9]*; do [ \"$(tr '\\0' ' ' <$p/cmdline 2>/dev/null)\" = '{command} ' ] && echo ${{p#/proc/}}; done; true"
    )
}

/// A script that succeeds while a process runs `command`.
fn running(command: &str) -> String {
    format!("[ -n \"$({})\" ]", processes(command))
}

/// A script that succeeds once no process runs `command`.
fn gone(command: &str) -> String {
    format!("[ -z \"$({})\" ]", processes(command))
}

/// Waits (with a deadline) until `script` succeeds in the testbed.
#[track_caller]
fn wait_until(tb: &Testbed, what: &str, script: &str) {
    let out =
        tb.sh(&format!("for i in $(seq 300); do ( {script} ) >/dev/null 2>&1 && exit 0; sleep 0.1; done; exit 1"));
    assert!(out.success(), "{what} (30 s): {out}");
}

/// Until no shell unit of wharf is left, nor a cgroup of one below the machine's.
#[track_caller]
fn wait_no_shell_left(tb: &Testbed) {
    wait_until(
        tb,
        "a wharf-shell unit is left",
        "[ \"$(systemctl list-units --all --no-legend 'wharf-shell-*' | wc -l)\" = 0 ]",
    );
    let left = tb.ok(&format!("ls -d /sys/fs/cgroup/*/machine.slice/{UNIT}.service/wharf-shell-* 2>/dev/null; true"));
    assert_eq!(left, "", "shell cgroups left below the machine's");
}

/// `machine shell` on a terminal: raw mode, so ^C and ^Z are the shell's
/// in the machine (the client lives on); TERM and --setenv come in; ^]
/// three times leaves, restores the terminal, and the shell unit is gone.
fn shell_on_tmux(tb: &Testbed) {
    prepare(tb);
    start(tb, "f28", "");
    let tmux = Tmux::machine(tb, "escape", "shell -E 'X=$HOME a' f28");
    tmux.wait_for("root@f28:");
    tmux.line("echo \"T[$TERM] X[$X]\"");
    tmux.wait_for("T[screen] X[$HOME a]");

    // ^C interrupts the command in the machine; the shell goes on.
    tmux.line("sleep 100");
    tmux.until(tb, "sleep 100 did not start in the machine", &running("sleep 100"));
    tmux.keys(&["C-c"]);
    tmux.until(tb, "^C did not end sleep 100", &gone("sleep 100"));
    tmux.line("echo \"N$((2+3))N\"");
    tmux.wait_for("N5N");
    // ^Z stops it, as job control in the machine's terminal does.
    tmux.line("sleep 101");
    tmux.until(tb, "sleep 101 did not start in the machine", &running("sleep 101"));
    tmux.keys(&["C-z"]);
    tmux.wait_for("Stopped");
    tmux.line("kill -9 %1; echo \"K$((1+6))K\"");
    tmux.wait_for("K7K");
    assert_eq!(tb.ok("systemctl list-units --no-legend 'wharf-shell-*' | wc -l").trim(), "1");

    // ^] three times within a second: the client leaves and says so.
    tmux.keys(&["C-]", "C-]", "C-]"]);
    let screen = tmux.wait_for("TTY=");
    assert!(screen.contains("Connection closed."), "{screen}");
    assert!(screen.contains("EXIT=0"), "{screen}");
    assert!(screen.contains("TTY=icanon"), "the terminal was left in raw mode:\n{screen}");
    wait_no_shell_left(tb);
    drop(tmux);
    tb.ok("machine poweroff f28");
    assert_gone(tb, "f28");
}

/// The shell's processes run in a cgroup below the machine's, so its
/// TasksMax limits them; they are all stopped when the command ends, and
/// when the client is killed or its terminal goes away.
fn shell_lifetime(tb: &Testbed) {
    prepare(tb);
    start(tb, "f28", "");
    let pids = format!("/sys/fs/cgroup/pids/machine.slice/{UNIT}.service");

    // A process of an interactive shell, seen from the host: below the
    // machine's unit in every hierarchy that has it.
    let tmux = Tmux::machine(tb, "killed", "shell f28");
    tmux.wait_for("root@f28:");
    tmux.line("sleep 4243");
    tmux.until(tb, "sleep 4243 did not start in the machine", &running("sleep 4243"));
    let sleeper = tb.ok(&processes("sleep 4243")).trim().to_string();
    let cgroups = tb.ok(&format!("cat /proc/{sleeper}/cgroup"));
    for hierarchy in ["pids", "memory", "name=systemd"] {
        let line = cgroups.lines().find(|l| l.split(':').nth(1) == Some(hierarchy)).expect(hierarchy);
        assert!(line.contains(&format!(":/machine.slice/{UNIT}.service")), "{hierarchy} of the shell: {cgroups}");
    }
    let unified = cgroups.lines().find(|l| l.starts_with("0::")).unwrap();
    assert!(unified.starts_with(&format!("0::/machine.slice/{UNIT}.service/wharf-shell-f28-")), "{cgroups}");
    // The client killed: the unit and every process it started go.
    let client = tmux.client_pid();
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(client as i32), nix::sys::signal::SIGKILL).unwrap();
    tmux.wait_for("EXIT=");
    tmux.until(tb, "sleep 4243 outlived its killed client", &gone("sleep 4243"));
    wait_no_shell_left(tb);
    drop(tmux);

    // The terminal closed under the client: the same.
    let tmux = Tmux::machine(tb, "closed", "shell f28");
    tmux.wait_for("root@f28:");
    tmux.line("sleep 4244");
    tmux.until(tb, "sleep 4244 did not start in the machine", &running("sleep 4244"));
    drop(tmux);
    wait_until(tb, "sleep 4244 outlived its terminal", &gone("sleep 4244"));
    wait_no_shell_left(tb);

    // The machine's TasksMax holds for a shell: room for a few more tasks
    // than the machine has, and a shell that starts twenty is stopped short.
    let current: u64 = tb.ok(&format!("cat {pids}/pids.current")).trim().parse().unwrap();
    tb.ok(&format!("machine set-property f28 TasksMax={}", current + 6));
    let out = tb.sh("machine shell f28 sh -c 'for i in $(seq 20); do sleep 4245 & done; wait'");
    assert!(!out.success() && out.stderr.contains("fork"), "twenty processes despite TasksMax: {out}");
    tb.ok("machine set-property f28 TasksMax=infinity");
    // What the command left running ended with it.
    assert_eq!(tb.sh(&processes("sleep 4245")).stdout, "");
    wait_no_shell_left(tb);
    // Background processes of a command that exits at once, too.
    tb.ok("machine shell f28 sh -c 'sleep 4246 >/dev/null 2>&1 & echo started'");
    assert_eq!(tb.sh(&processes("sleep 4246")).stdout, "");
    wait_no_shell_left(tb);
    tb.ok("machine poweroff f28");
    assert_gone(tb, "f28");
}

/// --setenv values and arguments reach the command literally (no $VAR or
/// %specifier of systemd's is expanded); bad variables and callers that are
/// not root are refused in one line, and nothing is started.
fn shell_environment(tb: &Testbed) {
    prepare(tb);
    start(tb, "f28", "");
    let out = tb.ok("machine shell --setenv='X=$HOME a' -E 'P=%n ${PATH}' f28 printenv X P");
    assert_eq!(out, "$HOME a\n%n ${PATH}\n");
    assert_eq!(tb.ok("machine shell f28 echo '$HOME' '${TERM}' '%n'"), "$HOME ${TERM} %n\n");
    // TERM comes from the client; --setenv wins over it.
    assert_eq!(tb.sh_env("machine shell f28 printenv TERM", &[("TERM", "xterm-256color")]).stdout, "xterm-256color\n");
    assert_eq!(tb.ok("machine shell -E TERM=linux f28 printenv TERM"), "linux\n");
    for bad in ["--setenv=NOEQUALS", "-E 1X=a", "-E 'A B=c'", "--setenv==v"] {
        let out = tb.fails(&format!("machine shell {bad} f28 true"));
        assert_eq!(out.stderr.trim_end().lines().count(), 1, "{bad}: {out}");
        assert!(out.stderr.contains("environment variable"), "{bad}: {out}");
    }
    // Past the client, wharfd checks them too, and runs nothing.
    std::fs::write(
        tb.host_path("/srv/shell_call.py"),
        concat!(include_str!("bus_wire.py"), "\n\n", include_str!("shell_call.py")),
    )
    .unwrap();
    assert_eq!(tb.ok("python3 /srv/shell_call.py f28 'X=$HOME'"), "0\n", "a good call");
    for bad in ["NOEQUALS", "1X=a", "=v"] {
        let out = tb.fails(&format!("python3 /srv/shell_call.py f28 'A=1' '{bad}'"));
        assert!(out.stderr.starts_with("org.wharf1.Error.InvalidArgument: "), "{bad}: {out}");
        assert!(out.stderr.contains("environment variable"), "{bad}: {out}");
    }
    let out = tb.sh_nobody("machine shell f28 true");
    assert!(!out.success(), "{out}");
    assert_eq!(
        out.stderr.trim(),
        "machine: access denied: running a command in a machine needs authorization for org.wharf1.machine.shell (caller is uid 65534)"
    );
    assert_eq!(tb.ok("systemctl list-units --all --no-legend 'wharf-shell-*' | wc -l").trim(), "0");
    tb.ok("machine poweroff f28");
    assert_gone(tb, "f28");
}
/// A command that must fail with one line on stderr holding `reason`.
#[track_caller]
fn fails_in_one_line(tb: &Testbed, command: &str, reason: &str) {
    let out = tb.fails(command);
    let stderr = out.stderr.trim_end();
    assert_eq!(stderr.lines().count(), 1, "one line: {out}");
    assert!(stderr.contains(reason), "'{reason}' expected: {out}");
}

/// What a process of the machine sees (in all its namespaces).
fn inside(tb: &Testbed, leader: &str, script: &str) -> crate::testbed::Out {
    let quoted = script.replace('\'', r"'\''");
    tb.sh(&format!("nsenter -t {leader} -a sh -c '{quoted}'"))
}

/// --bind with idmap: what root writes inside is root's on the host (and
/// a host user's file is that user's inside); plain --bind: the machine's
/// range owns what it writes; --bind-ro: writes refused. The mounts are
/// gone with the machine.
fn bind_at_start(tb: &Testbed) {
    prepare(tb);
    tb.ok("rm -rf /srv/bind && mkdir -p /srv/bind/share /srv/bind/plain /srv/bind/ro && chmod 777 /srv/bind/plain \
           && echo host > /srv/bind/ro/file && echo mine > /srv/bind/share/alice && chown 1000:1000 /srv/bind/share/alice \
           && rm -rf /var/lib/machines/f28/mnt/share /var/lib/machines/f28/mnt/plain /var/lib/machines/f28/srv/bind");
    let before = mounts(tb);
    start(
        tb,
        "f28",
        "--bind=/srv/bind/share:/mnt/share:idmap --bind=/srv/bind/plain:/mnt/plain --bind-ro=/srv/bind/ro",
    );
    let leader = leader(tb, "f28");
    assert_running_inside(tb, &leader, UNIT);
    let base = tb.ok(&format!("awk '{{print $2}}' /proc/{leader}/uid_map")).trim().to_string();
    assert_ne!(base, "0", "the machine has a user namespace");

    let out = inside(tb, &leader, "echo inside > /mnt/share/root-file && stat -c %u:%g /mnt/share/alice");
    assert!(out.success(), "{out}");
    assert_eq!(out.stdout.trim(), "1000:1000", "a host user's file is that user's inside");
    assert_eq!(tb.ok("stat -c %u:%g /srv/bind/share/root-file").trim(), "0:0", "root inside writes root's files");
    assert_eq!(tb.ok("cat /srv/bind/share/root-file").trim(), "inside");

    let out = inside(tb, &leader, "touch /mnt/plain/x");
    assert!(out.success(), "{out}");
    assert_eq!(tb.ok("stat -c %u /srv/bind/plain/x").trim(), base, "noidmap: the machine's range owns it");

    let out = inside(tb, &leader, "cat /srv/bind/ro/file && touch /srv/bind/ro/new");
    assert!(!out.success() && out.stdout.trim() == "host", "{out}");
    assert!(out.stderr.contains("Read-only file system"), "{out}");
    assert!(!tb.host_path("/srv/bind/ro/new").exists());

    tb.ok(&format!("systemctl stop {UNIT}"));
    assert_nothing_left(tb, IMAGE, "f28", None);
    assert_eq!(mounts(tb), before, "the testbed's mounts changed");

    // A source that does not exist, or a spec nspawn would not take: one
    // line, and no unit is left.
    fails_in_one_line(
        tb,
        "machine start f28 --bind=/srv/bind/missing:/mnt/x",
        "bind source /srv/bind/missing does not exist",
    );
    assert_gone(tb, "f28");
    fails_in_one_line(tb, "machine start f28 --bind=/srv/bind/share:/mnt/x:bogus", "unknown bind option 'bogus'");
    fails_in_one_line(tb, "machine start f28 --bind=/srv/bind/share:mnt", "is not an absolute path");
    assert_gone(tb, "f28");
    // A symlink in the image that leads out of it is not followed to the host.
    tb.ok("ln -sfn /etc /var/lib/machines/f28/srv/evil");
    fails_in_one_line(tb, "machine start f28 --bind=/srv/bind/share:/srv/evil/share", "leads out of the machine");
    assert!(!tb.host_path("/etc/share").exists());
    tb.ok("rm /var/lib/machines/f28/srv/evil");
    assert_gone(tb, "f28");
    assert_eq!(mounts(tb), before, "the testbed's mounts changed");
    tb.ok("rm -rf /srv/bind");
}

/// machine bind into a running machine: visible inside, idmapped, read-only
/// with --read-only; bad input and escaping mount points refused in one
/// line, without a mount left on the host; nobody refused.
fn bind_into_running(tb: &Testbed) {
    prepare(tb);
    tb.ok("rm -rf /srv/live /srv/live-ro && mkdir -p /srv/live /srv/live-ro && echo live > /srv/live/file \
           && echo ro > /srv/live-ro/file && rm -rf /var/lib/machines/f28/mnt/live /var/lib/machines/f28/mnt/live-ro");
    start(tb, "f28", "");
    let leader = leader(tb, "f28");
    assert_running_inside(tb, &leader, UNIT);
    let before = mounts(tb);

    let out = tb.ok("machine bind f28 /srv/live /mnt/live --mkdir");
    assert_eq!(out.trim(), "Bound /srv/live to /mnt/live in machine f28.");
    let out = inside(tb, &leader, "cat /mnt/live/file && echo new > /mnt/live/new");
    assert!(out.success() && out.stdout.trim() == "live", "{out}");
    assert_eq!(tb.ok("stat -c %u:%g /srv/live/new").trim(), "0:0", "idmapped: root inside is root on the host");

    tb.ok("machine bind f28 /srv/live-ro /mnt/live-ro --mkdir --read-only");
    let out = inside(tb, &leader, "cat /mnt/live-ro/file && touch /mnt/live-ro/new");
    assert!(!out.success() && out.stdout.trim() == "ro" && out.stderr.contains("Read-only file system"), "{out}");
    // machine status as machinectl status: OS, since, the cgroup tree, the
    // unit's last journal lines.
    let journal = tb.ok("journalctl -u wharf-f28.service --no-pager -n 1 -o short");
    let status = tb.ok("machine status f28");
    for part in ["Since:", "OS:", "Unit: wharf-f28.service", "systemd", "wharfd", journal.trim()] {
        assert!(status.contains(part), "{part} in:\n{status}");
    }
    // Services of the machine (in mount namespaces of their own) see it too.
    let out = tb.ok("machine shell f28 /bin/cat /mnt/live/file");
    assert_eq!(out.trim(), "live");

    inside(tb, &leader, "ln -sfn /etc /tmp/evil; ln -sfn ../../../../../../.. /tmp/up");
    for (command, reason) in [
        ("machine bind f28 /srv/missing /mnt/x --mkdir", "/srv/missing does not exist"),
        ("machine bind f28 /srv/live mnt/x", "is not an absolute path"),
        ("machine bind f28 /srv/live /mnt/nothere", "/mnt/nothere does not exist in the machine"),
        ("machine bind f29 /srv/live /mnt/live", "machine 'f29' is not running"),
        ("machine bind f28 /srv/live /tmp/evil/x --mkdir", "leads out of the machine"),
        ("machine bind f28 /srv/live /tmp/up/etc", "leads out of the machine"),
    ] {
        fails_in_one_line(tb, command, reason);
    }
    assert!(!tb.host_path("/etc/x").exists());
    let out = tb.sh_nobody("machine bind f28 /srv/live /mnt/x --mkdir");
    assert!(!out.success() && out.stderr.trim().lines().count() == 1, "{out}");
    assert!(out.stderr.contains("needs authorization for org.wharf1.machine.manage"), "{out}");
    let after = mounts(tb);
    assert_eq!(after, before, "a bind or refusal changed the host's mounts");
    assert!(!tb.ok("findmnt -rn -o TARGET").contains("/mnt/x"));
    tb.ok(&format!("systemctl stop {UNIT}"));
    assert_nothing_left(tb, IMAGE, "f28", None);
    tb.ok("rm -rf /srv/live /srv/live-ro");
}

/// copy-to then copy-from: the same bytes, mode and owner (host UID 1000 is
/// UID 1000 inside, and back); symlinks of the machine that lead out are
/// refused both ways and no host file is touched; bad input in one line;
/// nobody refused.
fn copy_to_and_from(tb: &Testbed) {
    prepare(tb);
    tb.ok("rm -rf /srv/cp && mkdir -p /srv/cp/tree/sub && head -c 100000 /dev/urandom > /srv/cp/data \
           && chown 1000:1000 /srv/cp/data && chmod 640 /srv/cp/data && echo leaf > /srv/cp/tree/sub/leaf \
           && chown -R 1001:1002 /srv/cp/tree && chmod 750 /srv/cp/tree/sub \
           && rm -rf /var/lib/machines/f28/root/data /var/lib/machines/f28/opt/tree");
    start(tb, "f28", "");
    let leader = leader(tb, "f28");
    assert_running_inside(tb, &leader, UNIT);
    let before = mounts(tb);

    let out = tb.ok("machine copy-to f28 /srv/cp/data /root/data");
    assert_eq!(out.trim(), "Copied /srv/cp/data to /root/data in machine f28.");
    let sum = tb.ok("sha256sum < /srv/cp/data");
    let seen = inside(tb, &leader, "stat -c %u:%g:%a /root/data && sha256sum < /root/data");
    assert_eq!(seen.stdout, format!("1000:1000:640\n{sum}"), "{seen}");
    tb.ok("machine copy-to f28 /srv/cp/tree /opt/tree");
    let seen = inside(tb, &leader, "stat -c %u:%g:%a /opt/tree/sub /opt/tree/sub/leaf && cat /opt/tree/sub/leaf");
    assert!(seen.stdout.starts_with("1001:1002:750\n1001:1002:"), "{seen}");
    assert!(seen.stdout.ends_with("leaf\n"), "{seen}");

    tb.ok("machine copy-from f28 /root/data /srv/cp/back");
    assert_eq!(tb.ok("stat -c %u:%g:%a /srv/cp/back && sha256sum < /srv/cp/back"), format!("1000:1000:640\n{sum}"));
    tb.ok("machine copy-from f28 /opt/tree /srv/cp/tree-back");
    assert_eq!(tb.ok("stat -c %u:%g:%a /srv/cp/tree-back/sub").trim(), "1001:1002:750");
    assert_eq!(tb.ok("cat /srv/cp/tree-back/sub/leaf").trim(), "leaf");
    // A set-user-ID file of the machine's root is not one of the host's.
    inside(tb, &leader, "cp /bin/true /root/suid && chmod 4755 /root/suid");
    tb.ok("machine copy-from f28 /root/suid /srv/cp/suid");
    assert_eq!(tb.ok("stat -c %u:%a /srv/cp/suid").trim(), "0:755");

    // The attack: symlinks in the machine that a root process reading
    // paths on the host would follow to the host's /etc.
    let host_etc = tb.ok("ls -la /etc | sha256sum");
    let passwd = tb.ok("sha256sum /etc/passwd");
    inside(
        tb,
        &leader,
        "ln -sfn /etc /tmp/evil; ln -sfn ../../../../../../../../etc /tmp/up; ln -sfn /etc/passwd /tmp/link",
    );
    for command in [
        "machine copy-to f28 /srv/cp/data /tmp/evil/pwned",
        "machine copy-to f28 /srv/cp/data /tmp/up/pwned",
        "machine copy-to f28 /srv/cp/tree /tmp/evil/pwned-tree",
        "machine copy-from f28 /tmp/evil/passwd /srv/cp/leak",
        "machine copy-from f28 /tmp/up/passwd /srv/cp/leak",
    ] {
        fails_in_one_line(tb, command, "leads out of the machine");
    }
    fails_in_one_line(tb, "machine copy-to f28 /srv/cp/data /tmp/link", "/tmp/link exists already in the machine");
    assert_eq!(tb.ok("ls -la /etc | sha256sum"), host_etc, "the host's /etc changed");
    assert_eq!(tb.ok("sha256sum /etc/passwd"), passwd);
    assert!(!tb.host_path("/srv/cp/leak").exists());
    let out = inside(tb, &leader, "ls /etc/pwned /etc/pwned-tree 2>&1; true");
    assert!(out.stdout.contains("No such file"), "nothing written in the machine's /etc either: {out}");

    for (command, reason) in [
        ("machine copy-to f28 /srv/cp/missing /root/x", "/srv/cp/missing does not exist"),
        ("machine copy-to f28 /srv/cp/data root/x", "is not an absolute path"),
        ("machine copy-to f28 /srv/cp/data /nonexistent/dir/x", "/nonexistent/dir does not exist in the machine"),
        ("machine copy-to f29 /srv/cp/data /root/x", "machine 'f29' is not running"),
        ("machine copy-from f28 /root/missing /srv/cp/x", "/root/missing does not exist in the machine"),
        ("machine copy-from f28 /root/data /srv/cp/back", "/srv/cp/back exists already"),
    ] {
        fails_in_one_line(tb, command, reason);
    }
    assert!(!tb.host_path("/srv/cp/x").exists());
    let out = tb.sh_nobody("machine copy-to f28 /srv/cp/data /root/nobody");
    assert!(
        !out.success() && out.stderr.trim().lines().count() == 1 && out.stderr.contains("org.wharf1.machine.manage"),
        "{out}"
    );
    let out = tb.sh_nobody("machine copy-from f28 /etc/shadow /tmp/shadow");
    assert!(!out.success() && !tb.host_path("/tmp/shadow").exists(), "{out}");
    assert!(!inside(tb, &leader, "test -e /root/nobody").success());
    assert_eq!(mounts(tb), before, "copies changed the host's mounts");
    let helpers = tb.ok("systemctl list-units --all --no-legend --plain 'wharf-files-*' | wc -l");
    assert_eq!(helpers.trim(), "0", "helper units left");

    tb.ok(&format!("systemctl stop {UNIT}"));
    assert_nothing_left(tb, IMAGE, "f28", None);
    tb.ok("rm -rf /srv/cp");
}

/// Runs `ARGS` with machinectl and with machine in the testbed; asserts the
/// same exit status and, when `same_output`, the same standard output.
/// Returns machine's output.
#[track_caller]
fn both(tb: &Testbed, args: &str, same_output: bool) -> crate::testbed::Out {
    let reference = tb.sh(&format!("machinectl {args}"));
    let ours = tb.sh(&format!("machine {args}"));
    assert_eq!(ours.success(), reference.success(), "exit status of {args}:\nmachinectl: {reference}\nmachine: {ours}");
    if same_output {
        assert_eq!(ours.stdout, reference.stdout, "output of {args}:\nmachinectl: {reference}\nmachine: {ours}");
    }
    if !ours.success() {
        assert_eq!(ours.stderr.trim().lines().count(), 1, "one line: {ours}");
    }
    ours
}

/// The first column of a table printed with --no-legend.
fn names(text: &str) -> Vec<String> {
    let mut names: Vec<String> = text.lines().filter_map(|l| l.split_whitespace().next()).map(str::to_string).collect();
    names.sort();
    names
}

/// machinectl's command lines for show, show-image, image-status, list and
/// list-images run unchanged with machine, on the same machine and images,
/// with the same exit status and the same values; bad input fails in one
/// line as machinectl's does, and the documented difference (an unknown
/// property is refused) holds.
fn machinectl_lines(tb: &Testbed) {
    prepare(tb);
    tb.ok("rm -rf /var/lib/machines/.hidden; mkdir /var/lib/machines/.hidden");
    start(tb, "f28", "--network=veth");
    for property in [
        "Name",
        "Id",
        "Timestamp",
        "TimestampMonotonic",
        "Service",
        "Unit",
        "Leader",
        "Class",
        "RootDirectory",
        "State",
    ] {
        both(tb, &format!("show f28 --property={property} --value"), true);
        both(tb, &format!("show f28 -p {property}"), true);
    }
    // The documented difference: machinectl of systemd 252 prints
    // "[unprintable]" for the interface indices; machine prints them, as
    // machined reports them (busctl: "ai N I1 I2...").
    let indices = tb.ok("busctl get-property org.freedesktop.machine1 /org/freedesktop/machine1/machine/f28 \
         org.freedesktop.machine1.Machine NetworkInterfaces");
    let indices = indices.split_whitespace().skip(2).collect::<Vec<_>>().join(" ");
    let ours = both(tb, "show f28 --property=NetworkInterfaces --value", false).stdout;
    assert_eq!(ours, format!("{indices}\n"));
    let reference = tb.ok("machinectl show f28 --property=NetworkInterfaces --value");
    assert!(reference == ours || reference == "NetworkInterfaces=[unprintable]\n", "{reference}");
    // machine splits comma lists as systemctl does; machinectl of systemd
    // 252 takes "Name,Leader" for one name it does not know (documented).
    let ours = both(tb, "show f28 -p Name,Leader -p State --value", false).stdout;
    assert_eq!(ours, tb.ok("machinectl show f28 -p Name -p Leader -p State --value"));
    both(tb, "show f28 -p Name -p Leader -p State --value", true);
    both(tb, "show f28 --property=Name --property=Class --all", true);
    // Everything machinectl shows, machine shows too (and then the unit's limits).
    for all in ["", " --all", " -a"] {
        let reference = tb.ok(&format!("machinectl show f28{all} | grep -v '^NetworkInterfaces='"));
        let ours = both(tb, &format!("show f28{all}"), false).stdout;
        let ours: String =
            ours.lines().filter(|l| !l.starts_with("NetworkInterfaces=")).map(|l| format!("{l}\n")).collect();
        assert!(ours.starts_with(&reference), "machinectl:\n{reference}\nmachine:\n{ours}");
        assert!(ours[reference.len()..].contains("MemoryMax="), "{ours}");
    }
    for property in ["Name", "Path", "Type", "ReadOnly", "CreationTimestamp", "ModificationTimestamp", "Usage", "Limit"]
    {
        both(tb, &format!("show-image f28 --property={property} --value"), true);
        both(tb, &format!("show-image f28 -p {property}"), true);
    }
    both(tb, "show-image f28", true);
    both(tb, "show-image f28 -p ReadOnly -p Type --value", true);
    let status = both(tb, "image-status f28", false).stdout;
    assert!(status.starts_with("f28\n") && status.contains("Path: /var/lib/machines/f28\n"), "{status}");
    assert!(status.contains("Type: directory\n") && status.contains("RO: writable\n"), "{status}");
    // status with machinectl's options: -n 0 shows no journal lines.
    let status = both(tb, "status f28 -n 0 -l --max-addresses=1 --no-pager", false).stdout;
    assert!(
        status.starts_with("f28\n") && status.trim_end().lines().last().unwrap_or("").starts_with("  "),
        "{status}"
    );
    both(tb, "status f28 --lines=3 --full", false);
    // .host only with --all; hidden images only with --all.
    for args in ["list --no-legend", "list --all --no-legend", "list-images --no-legend", "list-images -a --no-legend"]
    {
        let reference = names(&tb.ok(&format!("machinectl {args}")));
        let ours = names(&both(tb, args, false).stdout);
        assert_eq!(ours, reference, "{args}");
    }
    assert!(names(&tb.ok("machine list --no-legend")) == ["f28"], "no .host by default");
    assert!(names(&tb.ok("machine list-images -a --no-legend")).contains(&".hidden".to_string()));
    assert!(!names(&tb.ok("machine list-images --no-legend")).contains(&".hidden".to_string()));
    // Bad input: both fail, machine in one line naming the thing.
    let out = both(tb, "show nope -p State --value", false);
    assert_eq!(out.stderr.trim(), "machine: machine 'nope' is not running");
    let out = both(tb, "show-image nope -p Path --value", false);
    assert_eq!(out.stderr.trim(), "machine: image 'nope' not found in the search path");
    let out = both(tb, "image-status nope", false);
    assert_eq!(out.stderr.trim(), "machine: image 'nope' not found in the search path");
    // The documented difference: machinectl prints nothing for a property
    // there is not; machine says so and fails (a typo is not an empty value).
    let reference = tb.sh("machinectl show f28 -p Nope --value");
    assert!(reference.success() && reference.stdout.trim().is_empty(), "{reference}");
    let out = tb.fails("machine show f28 -p Nope --value");
    assert_eq!(out.stderr.trim(), "machine: machine 'f28' has no property 'Nope'");
    assert!(out.stdout.is_empty());
    let out = tb.fails("machine show-image f28 --property=Nope --value");
    assert_eq!(out.stderr.trim(), "machine: image 'f28' has no property 'Nope'");
    more_machinectl_lines(tb);
    tb.ok("machine poweroff f28");
    let out = both(tb, "show f28 -p State --value", false);
    assert_eq!(out.stderr.trim(), "machine: machine 'f28' is not running");
    clean_lines(tb);
}

/// The rest of machinectl's verbs and options, with f28 running: status
/// --output, shell --uid, the global options, set-limit (which needs btrfs,
/// which the testbed is not: both refuse, and nothing changes), clean while
/// the machine runs, and bash completing verbs, options and names.
fn more_machinectl_lines(tb: &Testbed) {
    let status = both(tb, "status f28 -n 5 -o cat --no-pager", false).stdout;
    assert!(status.starts_with("f28\n"), "{status}");
    let status = tb.ok("machine status f28 -n 5 --output=short-iso");
    assert!(status.lines().any(|l| l.starts_with("20") && l.contains('T')), "short-iso journal lines: {status}");
    // A mode journalctl does not know: both refuse (machine as clap does).
    tb.fails("machinectl status f28 -o nonsense");
    let out = tb.fails("machine status f28 -o nonsense");
    assert!(out.stderr.contains("invalid value 'nonsense'") && out.stdout.is_empty(), "{out}");
    // --uid when neither USER@NAME nor USER@ names a user.
    assert_eq!(tb.ok("machine shell --uid=nobody f28 /usr/bin/id -u").trim(), "65534");
    assert_eq!(tb.ok("machine shell --uid=nobody root@f28 /usr/bin/id -u").trim(), "0");
    assert_eq!(tb.ok("machine shell --uid=nobody f28 root@ /usr/bin/id -u").trim(), "0");
    for args in ["--no-ask-password -q list --no-legend", "list --no-legend --no-ask-password --quiet"] {
        assert_eq!(names(&both(tb, args, false).stdout), ["f28"], "{args}");
    }
    assert_eq!(
        names(&tb.ok("machine --json=off list-images --no-legend")),
        names(&tb.ok("machine list-images --no-legend"))
    );
    let pretty = tb.ok("machine --json=pretty list");
    assert!(pretty.starts_with("[\n  {"), "{pretty}");
    // set-limit: machined refuses off btrfs, and so does machine, in one
    // line saying why; junk sizes and hostile names alike. Nothing changes.
    let limit = tb.ok("machinectl show-image f28 -p Limit --value");
    for args in [
        "set-limit f28 1G",
        "set-limit 1G",
        "set-limit f28 -",
        "set-limit f28 abc",
        "set-limit f28 -5",
        "set-limit f28 16E",
        "set-limit f28 '1G; touch /tmp/owned'",
        "set-limit nope 1G",
        "set-limit '../../etc' 1G",
    ] {
        let out = both(tb, args, false);
        assert!(!out.success(), "{out}");
    }
    let out = tb.fails("machine set-limit f28 1G");
    assert!(out.stderr.contains("size limits need btrfs quota groups"), "{out}");
    let out = tb.fails("machine set-limit f28 abc");
    assert!(out.stderr.contains("'abc' is not a size"), "{out}");
    assert_eq!(tb.ok("machinectl show-image f28 -p Limit --value"), limit);
    tb.fails("test -e /tmp/owned");
    tb.fails("findmnt /var/lib/machines");
    // clean --all while a machine runs off one of the images: refused in
    // one line, nothing removed.
    let before = names(&tb.ok("machine list-images -a --no-legend"));
    let out = tb.fails("machine clean --all");
    assert!(out.stderr.trim().lines().count() == 1 && out.stderr.contains("nothing was removed"), "{out}");
    assert_eq!(names(&tb.ok("machine list-images -a --no-legend")), before);
    completion(tb);
}

/// bash, with the installed completion sourced, completes the new verbs
/// and options, running machines' names and images' names.
fn completion(tb: &Testbed) {
    let script = tb.host_path("/root/complete-machine.sh");
    std::fs::write(
        &script,
        ". /usr/share/bash-completion/completions/machine\n\
         COMP_WORDS=(\"$@\"); COMP_CWORD=$((${#COMP_WORDS[@]} - 1)); COMPREPLY=()\n\
         _wharf_machine machine \"${COMP_WORDS[COMP_CWORD]}\" \"${COMP_WORDS[COMP_CWORD-1]}\"\n\
         printf '%s\\n' \"${COMPREPLY[@]}\"\n",
    )
    .unwrap();
    let complete = |words: &str| -> Vec<String> {
        let mut found: Vec<String> =
            tb.ok(&format!("bash /root/complete-machine.sh machine {words}")).lines().map(str::to_string).collect();
        found.sort();
        found
    };
    for (words, expected) in [
        ("set-l", &["set-limit"][..]),
        ("cle", &["clean"]),
        ("list-t", &["list-transfers"]),
        ("cancel-t", &["cancel-transfer"]),
        ("clean --a", &["--all"]),
        ("shell --ui", &["--uid"]),
        ("status f28 --outp", &["--output"]),
        ("list --no-ask", &["--no-ask-password"]),
        ("status f2", &["f28"]),
        ("set-limit f2", &["f28"]),
        ("show-image f2", &["f28"]),
    ] {
        assert_eq!(complete(words), expected, "completing 'machine {words}'");
    }
    assert!(complete("shell ''").contains(&"f28".to_string()), "running machines complete");
    assert!(!complete("status ''").iter().any(|w| w.starts_with('<')), "no placeholders");
    tb.ok("rm /root/complete-machine.sh");
}

/// clean as machinectl clean: hidden images go, read-only ones and names
/// that are no image names stay, visible images stay without --all.
fn clean_lines(tb: &Testbed) {
    tb.ok("rm -rf /var/lib/machines/.junk1 && mkdir -p /var/lib/machines/.junk1/etc");
    both(tb, "clean", false);
    tb.fails("test -e /var/lib/machines/.junk1");
    tb.ok("cd /var/lib/machines && mkdir -p .junk2/etc .keep '.bad name' && head -c 4096 /dev/zero > .disk.raw \
         && machinectl read-only .keep yes");
    let out = tb.ok("machine clean");
    assert!(out.contains("Removed image '.junk2'.") && out.contains("Removed image '.disk'."), "{out}");
    assert!(out.trim_end().ends_with("images in total."), "{out}");
    tb.ok("cd /var/lib/machines && test -d .keep && test -d '.bad name' && test -d f28");
    tb.fails("test -e /var/lib/machines/.junk2 || test -e /var/lib/machines/.disk.raw");
    assert_eq!(tb.ok("machine -q clean"), "", "nothing left to clean, quietly");
    tb.ok("cd /var/lib/machines && machinectl read-only .keep no && rmdir .keep '.bad name'");
}

/// list-transfers and cancel-transfer as machinectl's: an import from a
/// pipe that never delivers is listed with machinectl's columns, and
/// cancelled, after which its client fails in one line and nothing of it
/// is left. Unknown and junk ids fail as machinectl's do.
fn transfers(tb: &Testbed) {
    let listed = both(tb, "list-transfers --no-legend", false).stdout;
    assert!(listed.trim().is_empty(), "{listed}");
    for args in ["cancel-transfer 4242", "cancel-transfer junk", "cancel-transfer -- -1"] {
        both(tb, args, false);
    }
    let out = tb.fails("machine cancel-transfer 4242");
    assert_eq!(out.stderr.trim(), "machine: no transfer with id 4242");
    // A local user who is not root may list, not cancel, clean or limit.
    assert!(tb.sh_nobody("machine list-transfers").success());
    for (args, what) in [
        ("cancel-transfer 1", "cancelling a transfer"),
        ("clean --all", "cleaning the machine images"),
        ("set-limit 1G", "setting a size limit"),
    ] {
        let out = tb.sh_nobody(&format!("machine {args}"));
        assert_eq!(out.code, Some(1), "{out}");
        assert_eq!(
            out.stderr.trim(),
            format!(
                "machine: access denied: {what} needs authorization for org.wharf1.machine.manage (caller is uid 65534)"
            )
        );
    }
    let out = tb.ok("set -e; d=$(mktemp -d); mkfifo $d/in; sleep 120 > $d/in & writer=$!; \
         machine import-raw $d/in slowimg 2> $d/err & importer=$!; \
         for i in $(seq 300); do machine list-transfers --no-legend | grep -q slowimg && break; sleep 0.1; done; \
         machine list-transfers; \
         id=$(machine list-transfers --no-legend | awk '/slowimg/ {print $1}'); \
         machine cancel-transfer \"$id\"; \
         status=0; wait $importer || status=$?; kill $writer; \
         echo \"import exit $status\"; cat $d/err; rm -r $d");
    let lines: Vec<&str> = out.lines().collect();
    assert!(
        lines.first().is_some_and(|l| l.split_whitespace().eq(["ID", "PERCENT", "TYPE", "LOCAL", "REMOTE"])),
        "{out}"
    );
    let row: Vec<&str> = lines.get(1).map(|l| l.split_whitespace().collect()).unwrap_or_default();
    assert!(row.len() == 5 && row[2] == "import-raw" && row[3] == "slowimg", "{out}");
    assert!(out.contains("import exit 1\nmachine: machine image 'slowimg': the transfer was cancelled\n"), "{out}");
    assert!(tb.ok("machine list-transfers --no-legend").trim().is_empty());
    tb.ok("! ls -a /var/lib/machines | grep -e slowimg");
}

/// The environment of a process, one `VAR=VALUE` a line, sorted.
fn environ(tb: &Testbed, pid: &str) -> Vec<String> {
    let mut vars: Vec<String> =
        tb.ok(&format!("tr '\\0' '\\n' < /proc/{pid}/environ")).lines().map(str::to_string).collect();
    vars.sort();
    vars
}

/// A machine described by /etc/systemd/nspawn/f28.nspawn (Bind=,
/// Environment=, Port= with VirtualEthernet=): `machine start` gives it
/// the same bind mount and init environment as `machinectl start`, and its
/// port answers. A key wharf does not support is refused in one line
/// naming file and key, before any unit exists. A .nspawn file beside the
/// image (the importer's) cannot bind host paths, add capabilities or
/// networks.
fn nspawn_settings_file(tb: &Testbed) {
    prepare(tb);
    let settings = "/etc/systemd/nspawn/f28.nspawn";
    let beside = "/var/lib/machines/f28.nspawn";
    tb.ok(&format!(
        "rm -f {beside}; mkdir -p /etc/systemd/nspawn /srv/nspawn-bind && echo from-the-host > /srv/nspawn-bind/file \
         && rm -rf {IMAGE}/mnt/nspawn-bind"
    ));
    // PrivateUsers=no: nspawn would otherwise shift the image's owners.
    tb.ok(&format!(
        "printf '%s\\n' '# moved from nspawn' '[Exec]' 'Boot=yes' 'PrivateUsers=no' \
         'Environment=GREETING=hello \"SPACED=two words\"' 'Environment=LEVEL=3' \
         '[Files]' 'BindReadOnly=/srv/nspawn-bind:/mnt/nspawn-bind' \
         '[Network]' 'VirtualEthernet=yes' 'Port=tcp:8090:80' > {settings}"
    ));
    let before = mounts(tb);
    let wanted = ["GREETING=hello", "LEVEL=3", "SPACED=two words"];
    let ours = |vars: &[String]| -> Vec<String> {
        vars.iter().filter(|v| wanted.iter().any(|w| v.starts_with(&w[..w.find('=').unwrap() + 1]))).cloned().collect()
    };

    // wharf.
    start(tb, "f28", "");
    let pid = leader(tb, "f28");
    assert_running_inside(tb, &pid, UNIT);
    let wharf_env = environ(tb, &pid);
    assert_eq!(ours(&wharf_env), wanted, "{wharf_env:?}");
    assert!(wharf_env.contains(&"container=wharf".to_string()), "{wharf_env:?}");
    let out = inside(tb, &pid, "cat /mnt/nspawn-bind/file; touch /mnt/nspawn-bind/new");
    assert_eq!(out.stdout.trim(), "from-the-host", "{out}");
    assert!(out.stderr.contains("Read-only file system"), "{out}");
    assert!(tb.ok("ip -br link show dev ve-f28").contains("ve-f28"));
    crate::network::serve(tb, "wt-nspawn-http", Some(&format!("/proc/{pid}/ns/net")), 80, "hello from f28");
    let out = crate::network::get(tb, None, "http://127.0.0.1:8090/");
    assert!(out.success() && out.stdout.contains("hello from f28"), "{out}");
    tb.ok("systemctl stop wt-nspawn-http");
    tb.ok("machine poweroff f28");
    assert_gone(tb, "f28");
    crate::network::assert_no_network_left(tb, "after poweroff");
    assert_eq!(mounts(tb), before, "the testbed's mounts changed");

    // nspawn, from the same file.
    tb.ok("machinectl start f28");
    tb.ok(
        "for i in $(seq 300); do machinectl show f28 -p Leader --value 2>/dev/null | grep -q . && exit 0; sleep 0.1; done; \
         journalctl -u systemd-nspawn@f28 --no-pager | tail >&2; exit 1",
    );
    let nspawn_leader = leader(tb, "f28");
    // machined knows the leader before it has executed the image's init.
    tb.ok(&format!(
        "for i in $(seq 300); do tr '\\0' '\\n' < /proc/{nspawn_leader}/environ | grep -q '^container=' && exit 0; \
         sleep 0.1; done; exit 1"
    ));
    let nspawn_env = environ(tb, &nspawn_leader);
    assert_eq!(ours(&nspawn_env), ours(&wharf_env), "nspawn: {nspawn_env:?}");
    let out = inside(tb, &nspawn_leader, "cat /mnt/nspawn-bind/file; touch /mnt/nspawn-bind/new");
    assert_eq!(out.stdout.trim(), "from-the-host", "{out}");
    assert!(out.stderr.contains("Read-only file system"), "{out}");
    assert!(tb.ok("ip -br link show dev ve-f28").contains("ve-f28"), "nspawn made the same veth pair");
    tb.ok("machinectl poweroff f28");
    tb.ok("for i in $(seq 300); do systemctl is-active -q systemd-nspawn@f28 || exit 0; sleep 0.1; done; exit 1");
    tb.ok("systemctl reset-failed systemd-nspawn@f28 2>/dev/null; true");

    // A key wharf has no meaning for: refused, naming file and keys; no unit.
    tb.ok(&format!("printf '[Exec]\\nHostname=other\\n[Files]\\nOverlay=/a:/b\\n' >> {settings}"));
    fails_in_one_line(
        tb,
        "machine start f28",
        "/etc/systemd/nspawn/f28.nspawn: not supported by wharf: [Exec] Hostname=, [Files] Overlay=",
    );
    assert_gone(tb, "f28");
    tb.ok(&format!("rm {settings}"));

    // Beside the image, the importer's file: what it grants is ignored.
    tb.ok(&format!(
        "printf '%s\\n' '[Exec]' 'Capability=all' 'Environment=FROM=image' \
         '[Files]' 'Bind=/etc:/mnt/nspawn-bind' '[Network]' 'VirtualEthernet=yes' 'Port=8091:80' > {beside}"
    ));
    start(tb, "f28", "--setenv=LEVEL=9 -E 'SPACED=a b'");
    let pid = leader(tb, "f28");
    let env = environ(tb, &pid);
    assert!(env.contains(&"FROM=image".to_string()), "an untrusted file's Environment= applies: {env:?}");
    assert!(env.contains(&"LEVEL=9".to_string()) && env.contains(&"SPACED=a b".to_string()), "--setenv: {env:?}");
    let out = inside(tb, &pid, "ls /mnt/nspawn-bind | wc -l");
    assert_eq!(out.stdout.trim(), "0", "the host's /etc is not in the machine: {out}");
    let bounding = tb.ok(&format!("grep CapBnd /proc/{pid}/status"));
    let bounding = u64::from_str_radix(bounding.split_whitespace().nth(1).unwrap(), 16).unwrap();
    assert_eq!(bounding & (1 << 16), 0, "no CAP_SYS_MODULE from an untrusted file");
    assert!(tb.sh("ip link show dev ve-f28").stdout.is_empty(), "no veth from an untrusted file");
    tb.ok("machine poweroff f28");
    assert_gone(tb, "f28");
    fails_in_one_line(
        tb,
        "machine start f28 --setenv=container=evil",
        "container= is set by wharf and cannot be changed",
    );
    assert_gone(tb, "f28");
    tb.ok(&format!("rm -f {beside}; rm -rf /srv/nspawn-bind"));
    assert_eq!(mounts(tb), before, "the testbed's mounts changed");
}
