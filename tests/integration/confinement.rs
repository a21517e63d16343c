//! What root inside a machine can reach, tried as an attacker would, and
//! compared with systemd-nspawn on the same image in the same testbed.
//!
//! The image is the f28 tree with two device nodes of the image's author
//! added under /attack: `loop`, a block node `b 7 N` naming a loop device of
//! the testbed (backed by a file the test watches), and `kmsg`, `c 1 11`,
//! the kernel's log. Before machines were confined, root inside wrote
//! through both: the image tree was bound without nodev, its superblock is
//! the host's, and the unit had no device policy.

use std::sync::Arc;

use libtest_mimic::Trial;

use crate::testbed::{Testbed, images};
use crate::{Shared, exclusive_trial};

pub fn trials(shared: &Arc<Shared>) -> Vec<Trial> {
    vec![
        exclusive_trial(shared, "confinement::device_nodes_of_the_image_do_not_reach_host_devices", device_nodes),
        exclusive_trial(shared, "confinement::without_a_user_namespace_the_device_policy_and_filter_hold", no_userns),
        exclusive_trial(shared, "confinement::capability_and_no_new_privileges_options_reach_the_init", options),
        exclusive_trial(shared, "confinement::names_beginning_with_a_dash_are_refused", dash_names),
        exclusive_trial(shared, "confinement::side_by_side_with_systemd_nspawn", side_by_side),
    ]
}

/// Where the test's files live inside the testbed.
const WORK: &str = "/srv/confinement";

/// Runs its commands in the testbed when dropped, so that a failing test
/// leaves no machine, loop device or image behind for the next one.
struct Cleanup<'a> {
    tb: &'a Testbed,
    commands: Vec<String>,
}

impl<'a> Cleanup<'a> {
    fn new(tb: &'a Testbed) -> Cleanup<'a> {
        Cleanup { tb, commands: Vec::new() }
    }

    fn then(&mut self, command: impl Into<String>) {
        self.commands.push(command.into());
    }
}

impl Drop for Cleanup<'_> {
    fn drop(&mut self) {
        for command in self.commands.iter().rev() {
            let _ = self.tb.sh(&format!("{command} >/dev/null 2>&1; true"));
        }
    }
}

/// The attack: a loop device of the testbed backed by `victim.img` (all
/// zeros), and `attack.tar`, the f28 tree plus /attack/loop (`b 7 N`, that
/// loop device) and /attack/kmsg (`c 1 11`). Returns the loop device.
fn attack_image(tb: &Testbed, cleanup: &mut Cleanup<'_>) -> String {
    tb.ok(&format!("mkdir -p {WORK} && truncate -s 1M {WORK}/victim.img"));
    let device = tb.ok(&format!("losetup -f --show {WORK}/victim.img")).trim().to_string();
    cleanup.then(format!("losetup -d {device}"));
    cleanup.then(format!("rm -rf {WORK}"));
    let minor: u32 = device.trim_start_matches("/dev/loop").parse().expect("a loop device");
    let work = tb.host_path(WORK);
    let tarball = images::f28_tarball().expect("the f28 image");
    let script = format!(
        "set -e; cp {tarball} {work}/attack.tar; mkdir -p {work}/nodes/attack; \
         mknod -m 0666 {work}/nodes/attack/loop b 7 {minor}; mknod -m 0666 {work}/nodes/attack/kmsg c 1 11; \
         tar --numeric-owner -C {work}/nodes -rf {work}/attack.tar ./attack; rm -rf {work}/nodes",
        tarball = tarball.display(),
        work = work.display()
    );
    crate::testbed::run_host(std::process::Command::new("sh").args(["-c", &script]), "making the attack image")
        .unwrap();
    device
}

/// Imports the attack image as `name` and checks the nodes made it in
/// (else the attack would prove nothing).
fn import(tb: &Testbed, cleanup: &mut Cleanup<'_>, name: &str, minor_of: &str) {
    assert_eq!(
        tb.ok(&format!("machine import-tar {WORK}/attack.tar {name}")).trim(),
        format!("Imported /var/lib/machines/{name}.")
    );
    cleanup.then(format!("machine remove {name}"));
    let nodes =
        tb.ok(&format!("stat -c '%F %t:%T' /var/lib/machines/{name}/attack/loop /var/lib/machines/{name}/attack/kmsg"));
    let minor = format!("{:x}", minor_of.trim_start_matches("/dev/loop").parse::<u32>().unwrap());
    assert_eq!(
        nodes,
        format!("block special file 7:{minor}\ncharacter special file 1:b\n"),
        "the importer changed the nodes"
    );
}

fn start(tb: &Testbed, cleanup: &mut Cleanup<'_>, name: &str, options: &str) {
    cleanup.then(format!("machine terminate {name}"));
    let out = tb.sh(&format!("machine start {name} {options}"));
    if !out.success() || !out.stdout.contains("its init reported ready") {
        let journal = tb.sh(&format!("journalctl -u wharf-{name}.service --no-pager | tail -40")).stdout;
        panic!("{out}\njournal of wharf-{name}.service:\n{journal}");
    }
}

fn leader(tb: &Testbed, machine: &str) -> String {
    let pid = tb.ok(&format!("machinectl show {machine} -p Leader --value")).trim().to_string();
    assert!(pid.parse::<u32>().is_ok_and(|p| p > 1), "leader of {machine}: {pid:?}");
    pid
}

/// A field of /proc/PID/status, as the testbed sees it.
fn status_field(tb: &Testbed, pid: &str, field: &str) -> String {
    let status = tb.ok(&format!("cat /proc/{pid}/status"));
    status
        .lines()
        .find_map(|line| line.strip_prefix(&format!("{field}:")))
        .unwrap_or_else(|| panic!("no {field} in {status}"))
        .trim()
        .to_string()
}

/// The victim loop device's file is still all zeros.
#[track_caller]
fn assert_victim_untouched(tb: &Testbed) {
    let nonzero = tb.ok(&format!("tr -d '\\000' < {WORK}/victim.img | wc -c"));
    assert_eq!(nonzero.trim(), "0", "something was written into the host's loop device");
}

/// Root inside writes through the image's nodes: refused (nodev), and the
/// host's loop device is untouched. Checked without the fix (nodev on the
/// image, the device policy of the machine's and the shell's units taken
/// out): `machine shell` exited 0 and PWNED reached the loop device, so the
/// first assertion below failed. With only nodev taken out, the shell
/// unit's device policy still refuses the write, but with EPERM, and the
/// "Permission denied" assertion fails.
fn device_nodes(tb: &Testbed) {
    let mut cleanup = Cleanup::new(tb);
    let device = attack_image(tb, &mut cleanup);
    import(tb, &mut cleanup, "f28dev", &device);
    start(tb, &mut cleanup, "f28dev", "");
    // Confined, the image still boots fully (the filter lets systemd do its work).
    let state = tb.sh("machine shell f28dev systemctl is-system-running --wait");
    assert_eq!(state.stdout.trim(), "running", "{state}");

    let loop_write = tb.sh("machine shell f28dev sh -c 'printf PWNED > /attack/loop'");
    assert_ne!(loop_write.code, Some(0), "root inside wrote to the host's loop device: {loop_write}");
    assert!(loop_write.stderr.contains("Permission denied"), "{loop_write}");
    assert_victim_untouched(tb);
    let kmsg_write = tb.sh("machine shell f28dev sh -c 'echo wharf-confinement-test > /attack/kmsg'");
    assert_ne!(kmsg_write.code, Some(0), "root inside wrote to the host's kmsg: {kmsg_write}");
    assert!(kmsg_write.stderr.contains("Permission denied"), "{kmsg_write}");
    // Reading is refused the same way (the open fails, whatever the mode).
    let read = tb.sh("machine shell f28dev head -c1 /attack/loop");
    assert_ne!(read.code, Some(0), "{read}");

    // What the unit asks of systemd: no device beyond the allow-list.
    assert_eq!(tb.ok("systemctl show -p DevicePolicy --value wharf-f28dev.service").trim(), "closed");
    let allowed = tb.ok("systemctl show -p DeviceAllow --value wharf-f28dev.service");
    assert!(allowed.contains("char-pts rw") && allowed.contains("/dev/null rw"), "{allowed}");
    assert!(!allowed.contains("loop"), "a directory image needs no loop device: {allowed}");
    // The image is mounted nodev inside; the launcher's /dev holds only its own nodes.
    let root = tb.ok("machine shell f28dev findmnt -no OPTIONS /");
    assert!(root.split(',').any(|o| o.trim() == "nodev"), "the image is not nodev: {root}");
    let dev = tb.ok("machine shell f28dev sh -c 'ls /dev | sort | tr \"\\n\" \" \"'");
    for node in ["console", "full", "null", "ptmx", "random", "tty", "urandom", "zero"] {
        assert!(dev.split_whitespace().any(|n| n == node), "/dev has no {node}: {dev}");
    }

    tb.ok("machine poweroff f28dev");
    assert_victim_untouched(tb);
}

/// `--private-users=no`: the container's root is the host's root, so nodev
/// on the image can be undone by a new mount; what still holds is the
/// unit's device policy (a node made in a fresh tmpfs does not open) and
/// the system call filter.
fn no_userns(tb: &Testbed) {
    let mut cleanup = Cleanup::new(tb);
    let device = attack_image(tb, &mut cleanup);
    import(tb, &mut cleanup, "f28devn", &device);
    start(tb, &mut cleanup, "f28devn", "--private-users=no");
    let pid = leader(tb, "f28devn");
    assert_eq!(status_field(tb, &pid, "Seccomp"), "2", "no system call filter without a user namespace");

    let image_node = tb.sh("machine shell f28devn sh -c 'printf PWNED > /attack/loop'");
    assert_ne!(image_node.code, Some(0), "{image_node}");
    assert!(image_node.stderr.contains("Permission denied"), "{image_node}");
    // A node made by the container's root where devices are allowed: the
    // device policy refuses kmsg (EPERM from the device cgroup).
    let made = tb.sh("machine shell f28devn sh -c 'mkdir -p /run/devtest && mount -t tmpfs tmpfs /run/devtest && \
         mknod /run/devtest/kmsg c 1 11 && echo wharf-confinement-test > /run/devtest/kmsg'");
    let cgroups = tb.sh(&format!(
        "cat /proc/{pid}/cgroup; ls /sys/fs/cgroup; cat /sys/fs/cgroup/devices/machine.slice/wharf-f28devn.service/devices.list;          systemctl show -p DevicePolicy -p DeviceAllow wharf-f28devn.service; ls /sys/fs/cgroup/unified/machine.slice/wharf-f28devn.service;          bpftool cgroup tree 2>&1 | head; journalctl -b --no-pager | grep -i -E 'bpf|device' | tail -5"
    ));
    assert_ne!(made.code, Some(0), "a kmsg node made inside was writable: {made}\n{cgroups}");
    assert!(made.stderr.contains("Operation not permitted"), "{made}");
    // Known calls that are not allowed fail with EPERM even for the host's
    // root: swapoff(2) is in no allowed group. (util-linux words EPERM as
    // "Not superuser"; without the filter the call would fail with EINVAL,
    // the node not being a swap area.)
    let swapoff = tb.sh("machine shell f28devn swapoff /attack/loop");
    assert_ne!(swapoff.code, Some(0), "{swapoff}");
    assert!(swapoff.stderr.contains("Not superuser"), "{swapoff}");
    assert_victim_untouched(tb);
    tb.ok("machine poweroff f28devn");
}

/// `--drop-capability=`, `--capability=`, `--no-new-privileges=` on the
/// command line and as `[container]` keys show in the init's status.
fn options(tb: &Testbed) {
    let mut cleanup = Cleanup::new(tb);
    const SYS_ADMIN: u64 = 1 << 21;
    const SYS_TIME: u64 = 1 << 25;
    let capabilities = |pid: &str| u64::from_str_radix(&status_field(tb, pid, "CapBnd"), 16).unwrap();

    // A systemd without CAP_SYS_ADMIN cannot mount its API file systems
    // and exits (under nspawn too), so CAP_SYS_ADMIN is dropped for an
    // image whose "init" is a shell that waits.
    let work = tb.host_path(WORK);
    let script = format!(
        "set -e; d={work}/waiter; mkdir -p $d/bin $d/etc $d/usr/lib/systemd $d/proc $d/sys $d/dev $d/run $d/tmp; chmod 0755 $d; cp /bin/busybox $d/bin/; \
         echo ID=waiter > $d/etc/os-release; \
         printf '#!/bin/busybox sh\\nexec /bin/busybox sleep 600\\n' > $d/usr/lib/systemd/systemd; \
         chmod 0755 $d/usr/lib/systemd/systemd; tar --numeric-owner -C $d -cf {work}/waiter.tar .",
        work = work.display()
    );
    cleanup.then(format!("rm -rf {WORK}"));
    crate::testbed::run_host(std::process::Command::new("sh").args(["-c", &script]), "making the waiter image")
        .unwrap();
    tb.ok(&format!("machine import-tar {WORK}/waiter.tar capwait"));
    cleanup.then("machine remove capwait");
    cleanup.then("machine terminate capwait");
    // It never reports ready: the start returns after its timeout, running.
    let out = tb.sh("machine start capwait --drop-capability=CAP_SYS_ADMIN --no-new-privileges=yes --timeout=2");
    let journal = || tb.sh("journalctl -u wharf-capwait.service --no-pager | tail -20").stdout;
    assert!(out.success() && out.stdout.contains("did not report ready"), "{out}\n{}", journal());
    let pid = leader(tb, "capwait");
    assert_eq!(capabilities(&pid) & SYS_ADMIN, 0, "CAP_SYS_ADMIN is still in the bounding set");
    assert_eq!(status_field(tb, &pid, "NoNewPrivs"), "1");
    assert_eq!(status_field(tb, &pid, "Seccomp"), "2");
    tb.ok("machine kill capwait --signal=SIGKILL");
    tb.ok("for i in $(seq 100); do machinectl show capwait >/dev/null 2>&1 || exit 0; sleep 0.1; done; exit 1");

    // The same through the settings file, on a booting f28.
    let device = attack_image(tb, &mut cleanup);
    import(tb, &mut cleanup, "f28opt", &device);
    tb.ok(
        "mkdir -p /etc/wharf/machines && printf '[container]\\ncapability = [\"CAP_SYS_TIME\"]\\nno-new-privileges = true\\n' \
         > /etc/wharf/machines/f28opt.toml",
    );
    cleanup.then("rm -f /etc/wharf/machines/f28opt.toml");
    start(tb, &mut cleanup, "f28opt", "");
    let pid = leader(tb, "f28opt");
    assert_ne!(capabilities(&pid) & SYS_TIME, 0, "CAP_SYS_TIME was not added: {:x}", capabilities(&pid));
    assert_ne!(capabilities(&pid) & SYS_ADMIN, 0);
    assert_eq!(status_field(tb, &pid, "NoNewPrivs"), "1");
    tb.ok("machine poweroff f28opt");
    // The command line wins over the file.
    start(tb, &mut cleanup, "f28opt", "--no-new-privileges=no");
    assert_eq!(status_field(tb, &leader(tb, "f28opt"), "NoNewPrivs"), "0");
    tb.ok("machine poweroff f28opt");

    let bad = tb.fails("machine start f28opt --capability=CAP_NOPE");
    assert_eq!(bad.stderr.trim(), "machine: machine 'f28opt': 'CAP_NOPE' is not a valid --capability value");
}

/// A name that begins with `-` would reach other programs as an option:
/// refused in one line, with nothing left in the store.
fn dash_names(tb: &Testbed) {
    let mut cleanup = Cleanup::new(tb);
    tb.ok(&format!(
        "mkdir -p {WORK}/t/etc && echo ID=x > {WORK}/t/etc/os-release && tar -C {WORK}/t -cf {WORK}/t.tar ."
    ));
    cleanup.then(format!("rm -rf {WORK}"));
    let before = tb.ok("ls -a /var/lib/machines");
    let refused = tb.fails(&format!("machine import-tar {WORK}/t.tar -- -evil"));
    assert_eq!(
        refused.stderr.trim(),
        "machine: machine name '-evil' must not start with '-' (it would read as an option)"
    );
    assert_eq!(tb.ok("ls -a /var/lib/machines"), before, "the refused import left something");

    tb.ok(&format!("machine import-tar {WORK}/t.tar dashsrc"));
    cleanup.then("machine remove dashsrc");
    let before = tb.ok("ls -a /var/lib/machines");
    for command in ["rename dashsrc -- --help", "clone dashsrc -- -x"] {
        let refused = tb.fails(&format!("machine {command}"));
        assert_eq!(refused.stderr.lines().count(), 1, "{refused}");
        assert!(refused.stderr.contains("must not start with '-'"), "{refused}");
    }
    assert_eq!(tb.ok("ls -a /var/lib/machines"), before, "a refused rename or clone left something");
}

/// The paths root inside may read or write, as `path r w` lines, plus
/// whether mknod works and whether the image's nodes open. Run through
/// nsenter into the container's PID 1 (no `shell` of either tool), so both
/// containers are probed the same way.
const PROBE: &str = r#"
for p in /proc/kcore /proc/keys /proc/kallsyms /proc/timer_list /proc/sysrq-trigger \
         /proc/sys/kernel/hostname /proc/sys/vm/drop_caches /proc/sys/net/ipv4/ip_forward \
         /proc/acpi /proc/bus /proc/fs /proc/irq /proc/scsi /proc/asound /proc/apm \
         /sys/kernel/uevent_helper /sys/power/state /sys/class/net; do
  [ -e "$p" ] || { echo "$p absent"; continue; }
  r=-; w=-
  if [ -d "$p" ]; then ls "$p" >/dev/null 2>&1 && r=r; else head -c1 "$p" >/dev/null 2>&1 && r=r; fi
  [ -w "$p" ] && w=w
  echo "$p $r$w"
done
if mknod /tmp/probe-null c 1 3 2>/dev/null; then echo "mknod ok"; rm -f /tmp/probe-null; else echo "mknod refused"; fi
for n in /attack/kmsg /attack/loop; do
  if (: < "$n") 2>/dev/null; then echo "$n opens"; else echo "$n refused"; fi
done
"#;

/// The same image, booted by `machinectl start` (systemd-nspawn@.service:
/// `-U`, a private network) and by `machine start --network=private`, in one
/// testbed; the init of each compared. Every line of the probe must agree
/// but those listed, each with its reason.
fn side_by_side(tb: &Testbed) {
    let mut cleanup = Cleanup::new(tb);
    let device = attack_image(tb, &mut cleanup);
    import(tb, &mut cleanup, "f28w", &device);
    import(tb, &mut cleanup, "f28n", &device);

    start(tb, &mut cleanup, "f28w", "--network=private");
    tb.ok("machinectl start f28n");
    cleanup.then("machinectl terminate f28n");
    let nspawn = leader(tb, "f28n");
    let wharf = leader(tb, "f28w");
    // Both inits have booted before they are probed.
    for pid in [&nspawn, &wharf] {
        tb.ok(&format!(
            "for i in $(seq 600); do nsenter -t {pid} -m test -S /run/systemd/private && exit 0; sleep 0.1; done; exit 1"
        ));
        let state = tb.sh(&format!("timeout 60 nsenter -t {pid} -a systemctl is-system-running --wait"));
        // nspawn's container may be degraded (units it cannot start in the
        // testbed); wharf's must be running.
        let accepted: &[&str] = if pid == &wharf { &["running"] } else { &["running", "degraded"] };
        assert!(accepted.contains(&state.stdout.trim()), "{state}");
    }

    // machinectl's verbs on the machine machinectl started: status with
    // a journal output mode, shell --uid, and clean refused while it runs.
    let status = tb.ok("machine status f28n -n 2 -o cat");
    assert!(status.contains("Unit: systemd-nspawn@f28n.service"), "{status}");
    assert_eq!(tb.ok("machine shell --uid=nobody f28n /usr/bin/id -u").trim(), "65534");
    let out = tb.fails("machine clean --all");
    assert!(out.stderr.contains("nothing was removed"), "{out}");
    tb.ok("test -d /var/lib/machines/f28n && test -d /var/lib/machines/f28w");
    for field in ["CapBnd", "NoNewPrivs", "Seccomp"] {
        let (n, w) = (status_field(tb, &nspawn, field), status_field(tb, &wharf, field));
        assert_eq!(w, n, "{field}: wharf {w}, nspawn {n}");
    }
    assert_eq!(status_field(tb, &wharf, "Seccomp"), "2");
    assert_eq!(status_field(tb, &wharf, "NoNewPrivs"), "0");

    // The probe joins the container's devices cgroup first: the device
    // policy is the unit's, and a process entering from outside is not in it.
    let probe = |pid: &str| {
        tb.ok(&format!(
            "sh -c 'echo $$ > /sys/fs/cgroup/devices$(grep :devices: /proc/{pid}/cgroup | cut -d: -f3)/cgroup.procs && \
             exec nsenter -t {pid} -a sh -c \"$0\"' '{}'",
            PROBE.replace('\'', "'\\''")
        ))
    };
    let (n, w) = (probe(&nspawn), probe(&wharf));
    let lines = |text: &str| text.lines().map(str::to_string).collect::<Vec<_>>();
    let (n, w) = (lines(&n), lines(&w));
    // The differences that remain, each a choice (machine(1) lists them):
    // - /attack/loop: nspawn's unit allows block-loop (nspawn attaches
    //   --image= files itself, inside its unit) and binds the image without
    //   nodev, so a loop node of the image opens there; wharf mounts the
    //   image nodev and allows loop devices only for image files.
    // - /proc/keys, /proc/kallsyms: the testbed's nspawn (252 and 257)
    //   leaves them readable; wharf makes them inaccessible, as
    //   reference-behaviour's nspawn list says (the keys of every user, the
    //   kernel's symbols).
    // - /proc/timer_list: nspawn 257 (trixie) leaves it readable, 252 does
    //   not; wharf keeps it inaccessible (it shows every task's timers and
    //   kernel addresses).
    // - /sys/power: nspawn hides it; wharf shows it read-only (nothing there
    //   is written by a container, and the read-only /sys refuses writes).
    let mut expected_differences: Vec<(&str, &str)> =
        vec![("/proc/keys --", "/proc/keys r-"), ("/proc/kallsyms --", "/proc/kallsyms r-")];
    if tb.release == crate::testbed::Release::Trixie {
        expected_differences.push(("/proc/timer_list --", "/proc/timer_list r-"));
    }
    expected_differences
        .extend([("/sys/power/state r-", "/sys/power/state absent"), ("/attack/loop refused", "/attack/loop opens")]);
    let mut differences = Vec::new();
    for (wl, nl) in w.iter().zip(&n) {
        if wl != nl {
            differences.push((wl.as_str(), nl.as_str()));
        }
    }
    assert_eq!(w.len(), n.len(), "wharf:\n{}\nnspawn:\n{}", w.join("\n"), n.join("\n"));
    assert_eq!(differences, expected_differences, "wharf:\n{}\nnspawn:\n{}", w.join("\n"), n.join("\n"));
    // Where they agree, the agreement is the confinement itself. (The
    // testbed, itself an nspawn container, has no /proc/kcore or
    // /proc/sysrq-trigger to mask: both read "absent" on either side.)
    for line in [
        "/proc/keys --",
        "/proc/kallsyms --",
        "/proc/timer_list --",
        "/proc/sys/kernel/hostname r-",
        "/proc/sys/vm/drop_caches --",
        "/proc/bus r-",
        "/sys/class/net r-",
        "mknod refused",
        "/attack/kmsg refused",
        "/attack/loop refused",
    ] {
        assert!(w.iter().any(|l| l == line), "wharf's probe lacks '{line}':\n{}", w.join("\n"));
    }
    assert!(
        w.iter().any(|l| l == "/proc/sys/net/ipv4/ip_forward rw"),
        "a private network's sysctls are the container's"
    );

    tb.ok("machinectl poweroff f28n; machine poweroff f28w");
    tb.ok("for i in $(seq 200); do machinectl show f28n >/dev/null 2>&1 || exit 0; sleep 0.1; done; exit 1");
    assert_victim_untouched(tb);
}
