//! Attacks on what wharf reads and runs for others, tried in the testbed as
//! issue 10 found them, each shown blocked: a local user reading root's
//! files through inspect, an xz bomb filling /var, erofs mounted for
//! anyone, a stale pool copy attached after its source changed, the
//! caller's terminal handed into a machine, and a socket unit's commands
//! run on the host.

use std::process::Command;
use std::sync::Arc;

use libtest_mimic::Trial;

use crate::testbed::{Testbed, images, run_host};
use crate::{Shared, exclusive_trial, trial};

pub fn trials(shared: &Arc<Shared>) -> Vec<Trial> {
    vec![
        trial(shared, "security::nobody_never_reads_root_files_through_inspect", inspect_reads_as_the_caller),
        trial(shared, "security::xz_inspection_is_capped_and_writes_nothing", xz_bomb),
        trial(shared, "security::erofs_is_refused_for_non_root", erofs_for_non_root),
        exclusive_trial(shared, "security::a_changed_xz_source_is_decompressed_anew", stale_pool_copy),
        exclusive_trial(shared, "security::host_commands_of_socket_units_need_trusted", socket_exec),
        exclusive_trial(shared, "security::machine_shell_never_passes_host_descriptors", shell_descriptors),
    ]
}

/// What only root may read: a unit with a password, and a line of /etc/shadow.
const SECRET: &str = "hunter2-wharf-secret";

/// A small D-Bus client that passes a descriptor (busctl cannot), in the testbed.
const INSPECT_CALL: &str = "/usr/local/bin/wharf-inspect-call";

fn install_inspect_call(tb: &Testbed) {
    let path = tb.host_path(INSPECT_CALL);
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    std::fs::write(&path, concat!(include_str!("bus_wire.py"), "\n\n", include_str!("inspect_call.py"))).unwrap();
    run_host(Command::new("chmod").arg("755").arg(&path), "chmod").unwrap();
}

/// `Portable.InspectImage` called directly with descriptor `fd` (a number,
/// or `opath:PATH`) as the image, one prefix, and the contents asked for.
fn inspect_call(image: &str, fd: &str, prefix: &str) -> String {
    format!("{INSPECT_CALL} {image} {fd} {prefix}")
}

#[track_caller]
fn assert_denied_without_leak(out: &crate::testbed::Out, leak: &str) {
    assert!(!out.success(), "{out}");
    assert!(!out.stdout.contains(leak) && !out.stderr.contains(leak), "a root-only byte came back: {out}");
}

fn inspect_reads_as_the_caller(tb: &Testbed) {
    install_inspect_call(tb);
    // A root-only unit on the host, with a password in it.
    tb.ok(&format!(
        "umask 077; printf '[Service]\\nExecStart=/bin/true\\nEnvironment=PASSWORD={SECRET}\\n' \
         >/etc/systemd/system/secsvc.service; ln -sfn / /tmp/sec-root"
    ));
    // 1. `/` as the image, prefix secsvc. Through the CLI, nobody reads
    // with its own rights and gets the kernel's answer.
    let out = tb.sh_nobody("portable inspect --cat /tmp/sec-root secsvc");
    assert_denied_without_leak(&out, SECRET);
    assert_eq!(out.stderr.lines().count(), 1, "{out}");
    assert!(out.stderr.contains("Permission denied"), "{out}");
    // Directly on the bus: wharfd reads for root only.
    let out = tb.sh_nobody(&format!("{} 3</", inspect_call("x", "3", "secsvc")));
    assert_denied_without_leak(&out, SECRET);
    assert!(out.stderr.contains("AccessDenied"), "{out}");
    assert!(out.stderr.contains("needs root (caller is uid 65534)"), "{out}");
    // Root still inspects the same thing, through wharfd or not.
    assert!(tb.ok("portable inspect --cat /tmp/sec-root secsvc").contains(SECRET));
    let out = tb.ok(&format!("{} 3</", inspect_call("x", "3", "secsvc")));
    assert!(out.contains(SECRET), "{out}");

    // 2. A directory image with /etc/shadow bind-mounted over one of its
    // unit files, in a user and mount namespace of nobody's own.
    let image = "/srv/images/sec-shadow/foobar";
    crate::images::build(tb, image, "dir", "1");
    let shadow_line = tb.ok("head -n1 /etc/shadow");
    let shadow_line = shadow_line.trim();
    assert!(shadow_line.starts_with("root:"), "{shadow_line}");
    let unit = format!("{image}/usr/lib/systemd/system/foobar.service");
    let out = tb
        .sh_nobody(&format!("unshare -Urm sh -c 'mount --bind /etc/shadow {unit} && portable inspect --cat {image}'"));
    assert_denied_without_leak(&out, shadow_line);
    assert!(out.stderr.contains("Permission denied"), "{out}");
    // The directory opened inside that namespace, passed to wharfd from
    // outside it (through /proc/PID/fd, as the same user may).
    let script = format!(
        "rm -f /tmp/sec-ns-ready; \
         unshare -Urm sh -c 'mount --bind /etc/shadow {unit} && exec 3<{image} && touch /tmp/sec-ns-ready && exec sleep 120' & \
         holder=$!; \
         for i in $(seq 200); do [ -e /tmp/sec-ns-ready ] && break; sleep 0.05; done; \
         {call} 3</proc/$holder/fd/3; status=$?; kill $holder; exit $status",
        call = inspect_call("foobar", "3", "foobar")
    );
    let out = tb.sh_nobody(&script);
    assert_denied_without_leak(&out, shadow_line);
    assert!(out.stderr.contains("needs root"), "{out}");

    // 3. An O_PATH descriptor of /root (0700): nobody can make one, but not
    // open anything below it, and wharfd no longer reads below it for them.
    tb.ok(&format!(
        "mkdir -p /root/usr/lib/systemd/system; printf 'ID=sec\\n' >/root/usr/lib/os-release; \
         printf '[Service]\\nExecStart=/bin/true\\n# {SECRET}\\n' >/root/usr/lib/systemd/system/rootsec.service"
    ));
    let opath = inspect_call("root", "opath:/root", "rootsec");
    let out = tb.sh_nobody(&opath);
    assert_denied_without_leak(&out, SECRET);
    assert!(out.stderr.contains("needs root"), "{out}");
    let out = tb.sh_nobody("portable inspect --cat /root rootsec");
    assert_denied_without_leak(&out, SECRET);
    assert!(out.stderr.contains("Permission denied"), "{out}");
    // (Root's own request through the same descriptor kind still works.)
    assert!(tb.ok(&opath).contains(SECRET));

    tb.ok("rm -rf /etc/systemd/system/secsvc.service /tmp/sec-root /tmp/sec-ns-ready /root/usr /srv/images/sec-shadow");
}

fn xz_bomb(tb: &Testbed) {
    // 1.1 GiB of text that xz squeezes to a few hundred KiB: past the 1 GiB cap.
    let bomb = "/srv/images/sec-bomb/bomb_1.raw.xz";
    let host = tb.host_path(bomb);
    std::fs::create_dir_all(host.parent().unwrap()).unwrap();
    run_host(
        Command::new("sh")
            .arg("-c")
            .arg(format!("yes wharf-wharf-wharf | head -c 1180M | xz -0 -T2 >{}", host.display())),
        "making an xz bomb",
    )
    .unwrap();
    assert!(std::fs::metadata(&host).unwrap().len() < 8 << 20, "the bomb is not small");
    let watched = "ls -A /var/lib/wharf /var/lib/portables /var/tmp /tmp 2>/dev/null | grep bomb; true";
    let listed_before = tb.ok(watched);
    // What each inspection wrote to storage, counted by the kernel for the
    // process (a reaped child's I/O is added to its parent's): the disk is
    // shared with other testbeds, so its used space would say nothing.
    let script = format!(
        "sh -c 'setpriv --reuid=nobody --regid=nogroup --clear-groups portable inspect {bomb}; echo \"nobody=$?\" >&2; \
           sed -n \"s/^write_bytes: //p\" /proc/$$/io'; \
         sh -c 'portable inspect {bomb}; echo \"root=$?\" >&2; sed -n \"s/^write_bytes: //p\" /proc/$$/io'"
    );
    let out = tb.sh(&script);
    let expected = format!(
        "portable: image '{bomb}': decompresses to more than 1 GiB, the most wharf decompresses to inspect an image"
    );
    let lines: Vec<&str> = out.stderr.lines().collect();
    assert_eq!(lines.len(), 4, "{out}");
    assert!(lines[0].starts_with(&expected) && lines[1] == "nobody=1", "{out}");
    assert!(lines[2].starts_with(&expected) && lines[3] == "root=1", "{out}");
    let written: Vec<u64> = out.stdout.lines().map(|l| l.trim().parse().expect("write_bytes")).collect();
    assert_eq!(written.len(), 2, "{out}");
    for (who, bytes) in ["nobody", "root"].iter().zip(&written) {
        assert!(*bytes < 16 << 20, "inspecting as {who} wrote {bytes} bytes to storage");
    }
    assert_eq!(tb.ok(watched), listed_before, "inspecting the bomb left files behind");
    std::fs::remove_dir_all(host.parent().unwrap()).unwrap();
}

/// Loop devices attached to files below `dir`.
fn loops_below(tb: &Testbed, dir: &str) -> String {
    tb.ok(&format!("cat /sys/block/loop*/loop/backing_file 2>/dev/null | grep -F '{dir}' || true"))
}

fn erofs_for_non_root(tb: &Testbed) {
    let dir = "/srv/images/sec-erofs";
    let image = format!("{dir}/foobar_9.raw");
    crate::images::build(tb, &image, "erofs", "9");
    let out = tb.sh_nobody(&format!("portable inspect {image}"));
    assert!(!out.success() && out.stdout.is_empty(), "{out}");
    assert_eq!(
        out.stderr,
        format!(
            "portable: image '{image}': erofs file systems are read through a loop device and a mount, which needs root\n"
        )
    );
    // Nor through the bus.
    install_inspect_call(tb);
    let out = tb.sh_nobody(&format!("{} 3<{image}", inspect_call("foobar_9.raw", "3", "foobar")));
    assert!(!out.success() && out.stderr.contains("needs root"), "{out}");
    assert_eq!(loops_below(tb, dir), "");
    // Root inspects it through wharfd, which mounts it.
    let info: serde_json::Value = serde_json::from_str(&tb.ok(&format!("portable inspect --json {image}"))).unwrap();
    assert!(info["access"].as_str().unwrap().starts_with("erofs, kernel mount"), "{info}");
    assert_eq!(info["os_release"]["VERSION_ID"], "9");
    assert_eq!(loops_below(tb, dir), "");
    tb.ok(&format!("rm -rf {dir}"));
}

/// Two xz images of foobar (versions `a` and `b`) of exactly the same size:
/// zeros after the xz stream (stream padding) make up the difference.
fn same_size_xz(tb: &Testbed, a: &str, b: &str) -> (Vec<u8>, Vec<u8>) {
    let scratch = tb.host_path("/var/tmp/sec-xz");
    std::fs::create_dir_all(&scratch).unwrap();
    let build = |version: &str| {
        let path = scratch.join(format!("{version}.raw.xz"));
        images::foobar(&path, "xz", version).unwrap();
        std::fs::read(&path).unwrap()
    };
    let (mut first, mut second) = (build(a), build(b));
    std::fs::remove_dir_all(&scratch).unwrap();
    let len = first.len().max(second.len()).next_multiple_of(4) + 4;
    first.resize(len, 0);
    second.resize(len, 0);
    (first, second)
}

fn clean_foobar(tb: &Testbed) {
    tb.ok("systemctl stop 'foobar*' 2>/dev/null; rm -rf /etc/systemd/system.attached/foobar* /run/systemd/system.attached/foobar* /etc/portables/foobar* /run/portables/foobar* /etc/systemd/system/foobar* /run/systemd/system/foobar* \
         /var/lib/portables/foobar*; systemctl daemon-reload; systemctl reset-failed; true");
}

fn version_served(tb: &Testbed) -> String {
    tb.ok("systemctl start foobar.service");
    let pid = tb.ok("systemctl show -P MainPID foobar.service").trim().to_string();
    assert!(tb.wait_exec(&pid, "busybox"), "foobar.service never exec'd busybox");
    let os = tb.ok(&format!("cat /proc/{pid}/root/usr/lib/os-release"));
    tb.ok("systemctl stop foobar.service");
    os.lines().find_map(|l| l.strip_prefix("VERSION_ID=")).unwrap_or_default().to_string()
}

/// The names in the pool, sorted.
fn pool_entries(tb: &Testbed) -> Vec<String> {
    let mut names: Vec<String> = tb.ok("ls -A /var/lib/portables").lines().map(str::to_string).collect();
    names.sort();
    names
}

fn stale_pool_copy(tb: &Testbed) {
    clean_foobar(tb);
    tb.ok("mkdir -p /var/lib/portables");
    let pool_before = pool_entries(tb);
    let (first, second) = same_size_xz(tb, "3", "4");
    let source = tb.host_path("/var/lib/portables/foobar_3.raw.xz");
    std::fs::create_dir_all(source.parent().unwrap()).unwrap();
    std::fs::write(&source, &first).unwrap();
    tb.ok("portable attach foobar_3.raw.xz");
    assert_eq!(version_served(tb), "3");
    tb.ok("portable detach foobar_3.raw");

    // Other bytes, same size, the modification time put back.
    let mtime = std::fs::metadata(&source).unwrap().modified().unwrap();
    std::fs::write(&source, &second).unwrap();
    std::fs::File::options()
        .write(true)
        .open(&source)
        .unwrap()
        .set_times(std::fs::FileTimes::new().set_modified(mtime))
        .unwrap();
    let meta = std::fs::metadata(&source).unwrap();
    assert_eq!((meta.len(), meta.modified().unwrap()), (first.len() as u64, mtime));
    tb.ok("portable attach foobar_3.raw.xz");
    assert_eq!(version_served(tb), "4", "the stale decompressed copy was attached");
    tb.ok("portable detach foobar_3.raw");
    // The source and its one decompressed copy are all this test added: no
    // temporary and no second copy beside the first.
    let mut expected = pool_before;
    expected.extend(["foobar_3.raw".to_string(), "foobar_3.raw.xz".to_string()]);
    expected.sort();
    assert_eq!(pool_entries(tb), expected, "the pool after attaching two versions of an xz image");
    clean_foobar(tb);
}

fn socket_exec(tb: &Testbed) {
    clean_foobar(tb);
    let image = "/srv/images/sec-socket/foobar_5";
    crate::images::build(tb, image, "dir", "5");
    std::fs::write(
        tb.host_path(&format!("{image}/usr/lib/systemd/system/foobar.socket")),
        "[Socket]\nListenStream=127.0.0.1:8097\nExecStartPre=/usr/bin/touch /run/sec-socket-ran\n",
    )
    .unwrap();
    tb.ok("rm -f /run/sec-socket-ran");
    for profile in ["default", "strict", "nonetwork"] {
        let out = tb.fails(&format!("portable attach --profile {profile} {image}"));
        assert_eq!(
            out.stderr,
            format!(
                "portable: unit 'foobar.socket' of image '{image}' runs 'ExecStartPre=/usr/bin/touch \
                 /run/sec-socket-ran' on the host, outside the image; only the trusted profile attaches such units\n"
            ),
            "{profile}"
        );
        let left = tb.ok("ls -d /etc/systemd/system/foobar* /run/systemd/system/foobar* 2>/dev/null || true");
        assert_eq!(left.trim(), "", "a refused attach wrote files");
    }
    // The trusted profile takes it, and the line does run on the host.
    tb.ok(&format!("portable attach --profile trusted {image}"));
    tb.ok("systemctl start foobar.socket");
    tb.ok("test -e /run/sec-socket-ran");
    tb.ok(&format!("systemctl stop foobar.socket; portable detach {image}; rm -f /run/sec-socket-ran"));
    tb.ok("rm -rf /srv/images/sec-socket");
    clean_foobar(tb);
}

fn shell_descriptors(tb: &Testbed) {
    const MACHINE: &str = "f28sec";
    let image = format!("/var/lib/machines/{MACHINE}");
    let dir = tb.host_path(&image);
    if !dir.join("etc/os-release").exists() {
        let tarball = images::f28_tarball().expect("the f28 image");
        std::fs::create_dir_all(&dir).unwrap();
        run_host(Command::new("tar").arg("-C").arg(&dir).arg("-xf").arg(&tarball), "unpacking f28").unwrap();
    }
    // What the command sees on its descriptors, from inside the machine.
    let probe = dir.join("usr/local/bin/fds");
    std::fs::create_dir_all(probe.parent().unwrap()).unwrap();
    std::fs::write(
        &probe,
        "#!/bin/sh\nfor f in /proc/$$/fd/*; do echo \"$f -> $(readlink $f)\"; done\n\
         test -t 0 && echo STDIN-IS-A-TERMINAL\necho out-ok\necho err-ok >&2\nexit 3\n",
    )
    .unwrap();
    run_host(Command::new("chmod").arg("755").arg(&probe), "chmod").unwrap();
    tb.ok(&format!("machine start {MACHINE}"));

    // On a terminal of the host (script(1) makes one), output into a pipe.
    let out = tb.ok(&format!(
        "script -qec '{{ machine shell {MACHINE} /usr/local/bin/fds 2>/tmp/sec-shell.err; \
         echo status=$? >>/tmp/sec-shell.err; }} | cat' /dev/null </dev/null | tr -d '\\r'; \
         cat /tmp/sec-shell.err; rm -f /tmp/sec-shell.err"
    ));
    let fds: Vec<&str> = out.lines().filter(|l| l.contains("/fd/")).collect();
    for fd in ["0", "1", "2"] {
        let line =
            fds.iter().find(|l| l.contains(&format!("/fd/{fd} -> "))).unwrap_or_else(|| panic!("fd {fd}: {out}"));
        assert!(line.contains("-> pipe:["), "fd {fd} is not a pipe of wharf's: {out}");
    }
    for line in &fds {
        assert!(
            !line.contains("pts") && !line.contains("tty") && !line.contains("console") && !line.contains("socket:"),
            "a host descriptor reached the machine: {out}"
        );
    }
    assert!(!out.contains("STDIN-IS-A-TERMINAL"), "{out}");
    assert!(out.contains("out-ok") && out.contains("err-ok") && out.contains("status=3"), "{out}");
    assert_eq!(tb.sh(&format!("machine shell {MACHINE} /usr/local/bin/fds </dev/null >/dev/null 2>&1")).code, Some(3));
    // Input still arrives, and its end.
    assert_eq!(tb.ok(&format!("printf 'a\\nb\\n' | machine shell {MACHINE} wc -l | cat")).trim(), "2");

    tb.ok(&format!("machine poweroff {MACHINE}"));
    assert!(!tb.ok("machinectl list --no-legend").contains(MACHINE), "the machine is still running");
    tb.ok(&format!("rm -rf {image}"));
}
