//! The machine image store in the testbed: import (tar, raw, fs; plain and
//! compressed), export, clone, rename, remove, read-only, and what is left
//! when an import fails or is interrupted (nothing under the final name).

use std::sync::Arc;

use libtest_mimic::Trial;

use crate::testbed::{Testbed, images, run_host};
use crate::{Shared, exclusive_trial, trial};

pub fn trials(shared: &Arc<Shared>) -> Vec<Trial> {
    vec![
        trial(shared, "store::import_export_clone_rename_remove", import_export_cycle),
        trial(shared, "store::raw_imports_are_recognised_by_content", raw_imports),
        trial(shared, "store::bad_imports_fail_in_one_line_and_leave_nothing", bad_imports),
        trial(shared, "store::device_nodes_in_an_archive_stay_inside_the_image", nodes_stay_inside),
        trial(shared, "store::export_import_of_an_os_tree_keeps_links_nodes_xattrs_acls_and_caps", os_tree_round_trip),
        trial(shared, "store::image_locks_refuse_remove_rename_and_import", store_locks),
        exclusive_trial(shared, "store::an_interrupted_import_leaves_nothing_under_its_name", interrupted_import),
    ]
}

/// A small OS-like tree (foobar's) as `/srv/store/<name>.tar.xz` in the testbed.
fn tree_archive(tb: &Testbed, name: &str) -> String {
    let stage = tb.host_path(&format!("/srv/store/{name}-tree"));
    std::fs::create_dir_all(stage.parent().unwrap()).unwrap();
    images::foobar(&stage, "dir", "1").unwrap();
    let archive = format!("/srv/store/{name}.tar.xz");
    run_host(
        std::process::Command::new("sh").arg("-c").arg(format!(
            "tar --numeric-owner -C {} -cf - . | xz -T0 > {}",
            stage.display(),
            tb.host_path(&archive).display()
        )),
        "making a tar.xz",
    )
    .unwrap();
    archive
}

/// No temporary of an import of these names is left in /var/lib/machines.
/// (Other tests import at the same time, so only their own names count.)
#[track_caller]
fn no_leftovers(tb: &Testbed, names: &[&str]) {
    for name in names {
        let left = tb.ok(&format!("ls -A /var/lib/machines | grep '^\\.#wharf-import-{name}-' || true"));
        assert_eq!(left.trim(), "", "temporaries of {name} left in /var/lib/machines");
    }
}

fn import_export_cycle(tb: &Testbed) {
    let archive = tree_archive(tb, "cycle");
    let out = tb.ok(&format!("machine import-tar {archive}"));
    assert_eq!(out.trim(), "Imported /var/lib/machines/cycle.");
    let listed = tb.ok("machine list-images --json");
    assert!(
        listed.contains(r#""name":"cycle","path":"/var/lib/machines/cycle","kind":"directory","state":"stopped""#),
        "{listed}"
    );
    assert_eq!(tb.ok("cat /var/lib/machines/cycle/usr/lib/os-release | grep VERSION_ID").trim(), "VERSION_ID=1");
    assert_eq!(tb.ok("stat -c %a /var/lib/machines/cycle").trim(), "755");

    tb.ok("machine clone --read-only cycle cycle-copy");
    assert!(tb.ok("machine list-images --json").contains(r#""name":"cycle-copy","path":"/var/lib/machines/cycle-copy","kind":"directory","state":"stopped","read_only":true"#));
    let refused = tb.fails("machine remove cycle-copy");
    assert_eq!(refused.stderr.trim(), "machine: machine image 'cycle-copy' is read-only");
    tb.ok("machine read-only cycle-copy no && machine rename cycle-copy cycle-renamed && machine remove cycle-renamed");

    // Export compressed by suffix, import it back: the same tree.
    // (A directory of its own: other tests export into /srv/store meanwhile.)
    tb.ok("mkdir -p /srv/store/cycle-out && machine export-tar cycle /srv/store/cycle-out/cycle.tar.zst");
    assert_eq!(tb.ok("head -c4 /srv/store/cycle-out/cycle.tar.zst | od -An -tx1").trim(), "28 b5 2f fd");
    tb.ok("machine import-tar /srv/store/cycle-out/cycle.tar.zst cycle-back");
    tb.ok("diff -r /var/lib/machines/cycle /var/lib/machines/cycle-back");
    let refused = tb.fails("machine export-raw cycle /srv/store/cycle-out/x.raw");
    assert_eq!(refused.stderr.trim(), "machine: machine image 'cycle': is a directory image; use export-tar");
    assert_eq!(tb.ok("ls -A /srv/store/cycle-out").trim(), "cycle.tar.zst", "export temporaries left");

    let refused = tb.fails(&format!("machine import-tar {archive} cycle"));
    assert_eq!(refused.stderr.trim(), "machine: machine image 'cycle' exists already (/var/lib/machines/cycle)");
    tb.ok("machine remove cycle cycle-back");
    no_leftovers(tb, &["cycle", "cycle-copy", "cycle-back"]);

    // Only root changes the store.
    let out = tb.sh_nobody(&format!("machine import-tar {archive} sneaky"));
    assert_eq!(
        out.stderr.trim(),
        "machine: access denied: importing an image needs authorization for org.wharf1.machine.manage (caller is uid 65534)"
    );
}

fn raw_imports(tb: &Testbed) {
    let dir = tb.host_path("/srv/store");
    std::fs::create_dir_all(&dir).unwrap();
    images::foobar(&dir.join("rawimg.raw.xz"), "xz", "2").unwrap();
    images::foobar(&dir.join("extimg.raw"), "ext4", "2").unwrap();
    run_host(std::process::Command::new("gzip").arg("-k").arg(dir.join("extimg.raw")), "gzip").unwrap();

    assert_eq!(tb.ok("machine import-raw /srv/store/rawimg.raw.xz").trim(), "Imported /var/lib/machines/rawimg.raw.");
    assert_eq!(tb.ok("machine import-raw /srv/store/extimg.raw.gz").trim(), "Imported /var/lib/machines/extimg.raw.");
    let listed = tb.ok("machine list-images --json");
    assert!(
        listed.contains(r#""name":"rawimg.raw","path":"/var/lib/machines/rawimg.raw","kind":"squashfs""#),
        "{listed}"
    );
    assert!(listed.contains(r#""name":"extimg.raw","path":"/var/lib/machines/extimg.raw","kind":"ext4""#), "{listed}");
    tb.ok("machine export-raw rawimg /srv/store/rawimg-out.raw.xz");
    // The testbed has no xz: compare on the host.
    run_host(
        std::process::Command::new("sh").arg("-c").arg(format!(
            "xz -dc {} | cmp - {}",
            dir.join("rawimg-out.raw.xz").display(),
            tb.host_path("/var/lib/machines/rawimg.raw").display()
        )),
        "comparing the export",
    )
    .unwrap();
    tb.ok("machine remove rawimg extimg");
    no_leftovers(tb, &["rawimg", "extimg"]);
}

fn bad_imports(tb: &Testbed) {
    let dir = tb.host_path("/srv/store");
    std::fs::create_dir_all(&dir).unwrap();
    let mut garbage = vec![0xfd, b'7', b'z', b'X', b'Z', 0x00];
    garbage.extend(std::iter::repeat_n(0x5a, 100_000));
    std::fs::write(dir.join("garbage.raw.xz"), &garbage).unwrap();
    std::fs::write(dir.join("text.tar"), "not a tar archive\n").unwrap();
    let cases = [
        (
            "machine import-raw /srv/store/garbage.raw.xz",
            "machine: machine image 'garbage': cannot decompress the image:",
        ),
        ("machine import-tar /srv/store/text.tar", "machine: machine image 'text': cannot unpack the archive:"),
        (
            "machine import-raw /srv/store/text.tar notraw",
            "machine: machine image 'notraw': the data is not a raw image",
        ),
        ("machine import-raw /srv/store/missing.raw", "machine: /srv/store/missing.raw: No such file or directory"),
        ("machine import-tar /srv/store/text.tar 'bad name'", "machine: machine name 'bad name' contains ' '"),
        ("machine clone no-such-machine x", "machine: image 'no-such-machine' not found in the search path"),
    ];
    for (command, expected) in cases {
        let out = tb.fails(command);
        assert!(out.stderr.starts_with(expected), "{command}: {out}");
        assert_eq!(out.stderr.lines().count(), 1, "{command}: {out}");
        no_leftovers(tb, &["garbage", "text", "notraw", "missing", "bad name"]);
    }
    for name in ["garbage", "text", "notraw"] {
        tb.fails(&format!("ls /var/lib/machines/{name} /var/lib/machines/{name}.raw"));
    }
}

/// A device node or FIFO behind a symlink to / in the archive is made inside
/// the image, never on the host.
fn nodes_stay_inside(tb: &Testbed) {
    tb.ok("mkdir -p /srv/store && python3 -c '
import io, tarfile
with tarfile.open(\"/srv/store/escape.tar\", \"w\") as t:
    link = tarfile.TarInfo(\"esc\"); link.type = tarfile.SYMTYPE; link.linkname = \"/\"; t.addfile(link)
    fifo = tarfile.TarInfo(\"esc/srv/store/escaped-fifo\"); fifo.type = tarfile.FIFOTYPE; fifo.mode = 0o600; t.addfile(fifo)
    null = tarfile.TarInfo(\"dev/null\"); null.type = tarfile.CHRTYPE; null.devmajor = 1; null.devminor = 3; null.mode = 0o666; t.addfile(null)
'");
    tb.ok("machine import-tar /srv/store/escape.tar");
    tb.fails("test -e /srv/store/escaped-fifo");
    assert_eq!(
        tb.ok("stat -c '%F %a' /var/lib/machines/escape/srv/store/escaped-fifo /var/lib/machines/escape/dev/null"),
        "fifo 600\ncharacter special file 666\n"
    );
    assert_eq!(tb.ok("stat -c '%t:%T' /var/lib/machines/escape/dev/null").trim(), "1:3");
    tb.ok("machine remove escape && rm /srv/store/escape.tar");
}

fn interrupted_import(tb: &Testbed) {
    // A fifo fed slowly keeps the import in the middle; wharfd is killed there.
    tb.ok("rm -f /srv/slow.raw /srv/slow.pids && mkfifo /srv/slow.raw");
    // Background processes must not hold the harness's output pipes open;
    // their PIDs are kept so that only they are ended afterwards (the
    // feeder's subshell execs its sleep, so one PID covers it).
    tb.ok(
        "(head -c 1048576 /dev/zero; exec sleep 30) >/srv/slow.raw 2>/dev/null </dev/null & echo $! >/srv/slow.pids; \
           machine import-raw /srv/slow.raw slow >/dev/null 2>&1 </dev/null & echo $! >>/srv/slow.pids",
    );
    tb.ok("for i in $(seq 100); do ls -A /var/lib/machines | grep -q '^\\.#wharf-import-slow-' && exit 0; sleep 0.1; done; exit 1");
    let wharfd = tb.ok("systemctl show -P MainPID wharfd.service").trim().to_string();
    assert!(wharfd.parse::<u32>().is_ok_and(|pid| pid > 0), "wharfd is not running: {wharfd:?}");
    tb.ok("systemctl kill -s KILL wharfd.service");
    // Killed means gone and reaped: its PID no longer in /proc and no longer
    // the unit's main process.
    tb.ok(&format!(
        "for i in $(seq 100); do [ ! -e /proc/{wharfd} ] && [ \"$(systemctl show -P MainPID wharfd.service)\" != {wharfd} ] \
         && exit 0; sleep 0.1; done; echo 'wharfd {wharfd} still there after SIGKILL' >&2; exit 1"
    ));
    tb.fails("test -e /var/lib/machines/slow.raw");
    // The client's call ended with wharfd: it exits on its own.
    let client = tb.ok("sed -n 2p /srv/slow.pids").trim().to_string();
    tb.ok(&format!(
        "for i in $(seq 100); do [ ! -e /proc/{client} ] && exit 0; sleep 0.1; done; \
         echo 'machine import-raw {client} still running after wharfd died' >&2; kill {client}; exit 1"
    ));
    // The next start of wharfd removes what the killed import left.
    tb.ok("machine list-images >/dev/null");
    no_leftovers(tb, &["slow"]);
    let feeder = tb.ok("sed -n 1p /srv/slow.pids").trim().to_string();
    tb.ok(&format!(
        "kill {feeder} 2>/dev/null; for i in $(seq 100); do [ ! -e /proc/{feeder} ] && break; sleep 0.1; done; \
         [ ! -e /proc/{feeder} ] && rm -f /srv/slow.raw /srv/slow.pids"
    ));
}

/// Every entry of a tree, as `find -printf` shows it (directory sizes left
/// out: they depend on a directory's history, not its contents).
fn find_listing(tb: &Testbed, root: &str) -> String {
    tb.ok(&format!(
        "cd {root} && find . \\( -type d -printf '%p %y %m %U %G - %n\\n' \\) -o -printf '%p %y %m %U %G %s %n %l\\n' | LC_ALL=C sort"
    ))
}

/// Every extended attribute of a tree (ACLs and file capabilities are
/// ones), read without following symlinks; `getcap`/`getfattr` are not in
/// the testbed, python is.
fn xattr_listing(tb: &Testbed, root: &str) -> String {
    tb.ok(&format!(
        "cd {root} && python3 -c '
import os
for top, dirs, files in os.walk(\".\"):
    for name in sorted([top] + [os.path.join(top, f) for f in dirs + files]):
        if name != top and os.path.isdir(name) and not os.path.islink(name):
            continue
        if os.path.islink(name):
            continue
        for key in sorted(os.listxattr(name, follow_symlinks=False)):
            print(name, key, os.getxattr(name, key, follow_symlinks=False).hex())
' | LC_ALL=C sort"
    ))
}

/// Adds to a tree what a Debian image can hold and the plain f28 lacks: a
/// hard link, device nodes and a FIFO, user xattrs on a file and a
/// directory, a file capability (v2, cap_net_raw) and POSIX ACLs (an access
/// ACL on a file, a default ACL on a directory), as raw attributes.
fn enrich(tb: &Testbed, root: &str) {
    tb.ok(&format!(
        "set -e; cd {root}; mkdir -p srv/rt; ln usr/bin/bash srv/rt/bash-hardlink; \
         mknod srv/rt/null c 1 3; mknod srv/rt/loop7 b 7 7; mkfifo -m 640 srv/rt/fifo; chown 5:6 srv/rt/fifo; \
         cp usr/bin/true srv/rt/ping; chmod 4755 usr/bin/true; \
         python3 -c '
import os, struct
os.setxattr(\"srv/rt/ping\", \"security.capability\", struct.pack(\"<IIIII\", 0x02000001, 1 << 13, 0, 0, 0))
os.setxattr(\"srv/rt/bash-hardlink\", \"user.wharf\", b\"a hard-linked file\")
os.setxattr(\"srv/rt\", \"user.wharf.dir\", b\"a directory\")
def acl(entries):
    return struct.pack(\"<I\", 2) + b\"\".join(struct.pack(\"<HHI\", *e) for e in entries)
undefined = 0xffffffff
os.setxattr(\"srv/rt/ping\", \"system.posix_acl_access\",
    acl([(1, 7, undefined), (2, 5, 1000), (4, 5, undefined), (0x10, 5, undefined), (0x20, 5, undefined)]))
os.setxattr(\"srv/rt\", \"system.posix_acl_default\",
    acl([(1, 7, undefined), (4, 5, undefined), (8, 7, 1001), (0x10, 7, undefined), (0x20, 0, undefined)]))
'"
    ));
}

/// export-tar then import-tar of the Debian f28 image (with hard links,
/// nodes, xattrs, ACLs and a file capability added) gives the same tree;
/// machinectl import-tar of wharf's archive gives it too.
fn os_tree_round_trip(tb: &Testbed) {
    let source = "/var/lib/machines/f28rt";
    tb.ok(&format!("rm -rf {source} {source}-back {source}-m /srv/store/rt"));
    let tarball = images::f28_tarball().expect("the f28 image");
    std::fs::create_dir_all(tb.host_path(source)).unwrap();
    run_host(
        std::process::Command::new("tar").arg("-C").arg(tb.host_path(source)).arg("-xf").arg(&tarball),
        "unpacking f28",
    )
    .unwrap();
    enrich(tb, source);
    let listed = find_listing(tb, source);
    assert!(listed.contains("./srv/rt/null c 644 0 0 0 1 \n"), "{listed}");
    assert!(listed.contains("./srv/rt/bash-hardlink f 755 0 0 ") && listed.contains(" 2 \n"), "hard link");
    let xattrs = xattr_listing(tb, source);
    assert!(xattrs.contains("./srv/rt/ping security.capability "), "{xattrs}");
    assert!(xattrs.contains("./srv/rt system.posix_acl_default "), "{xattrs}");

    tb.ok("mkdir -p /srv/store/rt && machine export-tar f28rt /srv/store/rt/f28rt.tar.zst");
    tb.ok("machine import-tar /srv/store/rt/f28rt.tar.zst f28rt-back");
    let back = format!("{source}-back");
    assert_eq!(find_listing(tb, &back), listed, "the tree changed in the round trip");
    assert_eq!(xattr_listing(tb, &back), xattrs, "the extended attributes changed in the round trip");
    assert_eq!(
        tb.ok(&format!("stat -c %i {back}/usr/bin/bash {back}/srv/rt/bash-hardlink | uniq | wc -l")).trim(),
        "1",
        "one inode"
    );

    // The archive is a plain tar that systemd's importer reads too.
    tb.ok("machine export-tar f28rt /srv/store/rt/f28rt.tar");
    tb.ok("machinectl import-tar /srv/store/rt/f28rt.tar f28rt-m");
    assert_eq!(find_listing(tb, &format!("{source}-m")), listed, "machinectl import-tar of wharf's archive");

    tb.ok("machine remove f28rt f28rt-back f28rt-m && rm -rf /srv/store/rt");
    no_leftovers(tb, &["f28rt", "f28rt-back"]);
}

/// A process holding an image's lock as nspawn and machined take it (an
/// open file description write lock on `.#NAME.lck`); its PID is in
/// /srv/locker.pid. The lock is taken before this returns.
fn hold_lock_like_nspawn(tb: &Testbed, image: &str) {
    tb.ok(&format!(
        "python3 -c '
import fcntl, os, struct, sys, time
path = os.path.join(os.path.dirname(\"{image}\"), \".#\" + os.path.basename(\"{image}\") + \".lck\")
fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
fcntl.fcntl(fd, fcntl.F_OFD_SETLK, struct.pack(\"hhqqi\", fcntl.F_WRLCK, 0, 0, 0, 0))
if os.fork():
    sys.exit(0)
os.setsid()
open(\"/srv/locker.pid\", \"w\").write(str(os.getpid()))
for f in (0, 1, 2):
    os.dup2(os.open(\"/dev/null\", os.O_RDWR), f)
time.sleep(600)
' && for i in $(seq 100); do [ -s /srv/locker.pid ] && exit 0; sleep 0.1; done; exit 1"
    ));
}

fn stop_locker(tb: &Testbed) {
    let pid = tb.ok("cat /srv/locker.pid").trim().to_string();
    tb.ok(&format!(
        "kill {pid}; for i in $(seq 100); do [ ! -e /proc/{pid} ] && rm /srv/locker.pid && exit 0; sleep 0.1; done; exit 1"
    ));
}

/// remove, rename, clone over and import over an image whose lock someone
/// holds (as a running nspawn does) are refused in one line, and change
/// nothing; a planted symlink or a lock file of another user is refused
/// and left as it is.
fn store_locks(tb: &Testbed) {
    let archive = tree_archive(tb, "locked");
    tb.ok(&format!("machine import-tar {archive} locked"));
    hold_lock_like_nspawn(tb, "/var/lib/machines/locked");
    let busy =
        "image /var/lib/machines/locked is in use by a running machine (lock /var/lib/machines/.#locked.lck is held)";
    for command in ["machine remove locked", "machine rename locked locked2"] {
        let out = tb.fails(command);
        assert_eq!(out.stderr.trim(), format!("machine: machine image 'locked': {busy}"), "{command}");
    }
    // machined takes the same lock: it refuses too.
    let out = tb.fails("machinectl remove locked");
    assert!(out.stderr.contains("busy"), "{out}");
    tb.ok("test -d /var/lib/machines/locked && test ! -e /var/lib/machines/locked2");
    stop_locker(tb);

    // A machine still running off a deleted image keeps its name's lock
    // held: nothing may be imported under that name meanwhile.
    tb.ok("machine remove locked");
    hold_lock_like_nspawn(tb, "/var/lib/machines/locked");
    let out = tb.fails(&format!("machine import-tar {archive} locked"));
    assert_eq!(out.stderr.trim(), format!("machine: machine image 'locked': {busy}"));
    stop_locker(tb);
    tb.fails("test -e /var/lib/machines/locked");
    no_leftovers(tb, &["locked"]);

    // A symlink planted as the lock: nothing is created or changed through it.
    tb.ok(&format!("machine import-tar {archive} locked"));
    tb.ok("rm -f /srv/lock-target; ln -s /srv/lock-target '/var/lib/machines/.#locked.lck'");
    let out = tb.fails("machine remove locked");
    assert_eq!(
        out.stderr.trim(),
        "machine: machine image 'locked': lock file /var/lib/machines/.#locked.lck is a symbolic link; refusing to use it"
    );
    tb.fails("test -e /srv/lock-target");
    tb.ok("test -d /var/lib/machines/locked && test -L '/var/lib/machines/.#locked.lck'");
    // A lock file someone else owns (who could keep it locked): refused too.
    tb.ok("rm '/var/lib/machines/.#locked.lck'; echo keep > '/var/lib/machines/.#locked.lck'; \
           chmod 600 '/var/lib/machines/.#locked.lck'; chown 65534 '/var/lib/machines/.#locked.lck'");
    let out = tb.fails("machine remove locked");
    assert_eq!(
        out.stderr.trim(),
        "machine: machine image 'locked': lock file /var/lib/machines/.#locked.lck is owned by UID 65534, not root; refusing to use it"
    );
    assert_eq!(tb.ok("cat '/var/lib/machines/.#locked.lck'").trim(), "keep", "left as it was");
    tb.ok("rm '/var/lib/machines/.#locked.lck' && machine remove locked");
    // A lock let go leaves no lock file behind.
    tb.ok("test ! -e '/var/lib/machines/.#locked.lck'");
}
