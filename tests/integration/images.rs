//! Reading images: `portable inspect` on every kind, by root and by an
//! unprivileged user, and every kind of bad input refused with one line
//! that names the image and the reason, leaving nothing behind.

use std::collections::BTreeMap;
use std::os::unix::fs::symlink;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;

use libtest_mimic::Trial;

use crate::testbed::{Testbed, images, run_host};
use crate::{Shared, exclusive_trial, trial};

pub fn trials(shared: &Arc<Shared>) -> Vec<Trial> {
    vec![
        trial(shared, "images::inspect_a_directory_image", inspect_directory),
        trial(shared, "images::inspect_raw_kinds_as_portablectl_does", inspect_like_portablectl),
        exclusive_trial(shared, "images::inspect_xz_without_writing_anything", inspect_xz),
        trial(shared, "images::gpt_partitions_are_reported", gpt_partitions),
        trial(shared, "images::nobody_inspects_squashfs_without_a_loop_device", nobody_inspects_squashfs),
        trial(shared, "images::erofs_mounts_leave_nothing_behind", erofs_leaves_nothing_behind),
        // Alone: it checks that nothing is left in the pool and no mount of
        // wharfd's is in flight, which another trial's erofs read would be.
        exclusive_trial(shared, "images::bad_images_are_refused_in_one_line", bad_images),
    ]
}

/// Builds foobar in `format` at `inner` (a path inside the testbed).
pub fn build(tb: &Testbed, inner: &str, format: &str, version: &str) {
    let host = tb.host_path(inner);
    std::fs::create_dir_all(host.parent().unwrap()).unwrap();
    images::foobar(&host, format, version).unwrap();
}

fn json(text: &str) -> serde_json::Value {
    serde_json::from_str(text).unwrap_or_else(|e| panic!("not JSON ({e}): {text}"))
}

fn unit_names(info: &serde_json::Value) -> Vec<String> {
    info["units"].as_array().unwrap().iter().map(|u| u["name"].as_str().unwrap().to_string()).collect()
}

fn inspect_directory(tb: &Testbed) {
    build(tb, "/srv/images/inspect-dir/foobar", "dir", "3");
    let info = json(&tb.ok("portable inspect --json /srv/images/inspect-dir/foobar"));
    assert_eq!(info["kind"], "directory");
    assert_eq!(info["os_release"]["VERSION_ID"], "3");
    assert_eq!(info["prefixes"], serde_json::json!(["foobar"]));
    assert_eq!(unit_names(&info), ["foobar-hello.service", "foobar.service"]);

    let text = tb.ok("cd /srv/images/inspect-dir && portable inspect --cat ./foobar");
    assert!(text.contains("foobar 3 (a wharf sample portable service)"), "{text}");
    assert!(text.contains("ExecStart=/usr/bin/busybox httpd"), "{text}");

    // An unprivileged user may inspect what they can read.
    let out = tb.sh_nobody("portable inspect /srv/images/inspect-dir/foobar");
    assert!(out.success(), "{out}");
}

/// What `portablectl inspect` and `portablectl inspect --cat` say about an
/// image: its unit files, its os-release fields and the units' texts.
struct Reference {
    units: Vec<String>,
    os_release: BTreeMap<String, String>,
    texts: BTreeMap<String, String>,
}

fn reference(tb: &Testbed, image: &str) -> Reference {
    let listing = tb.ok(&format!("portablectl inspect {image}"));
    let units: Vec<String> = listing
        .lines()
        .skip_while(|line| *line != "Unit files:")
        .skip(1)
        .take_while(|line| line.starts_with('\t'))
        .map(|line| line.trim().to_string())
        .collect();
    let cat = tb.ok(&format!("portablectl inspect --cat {image}"));
    let mut os_release = BTreeMap::new();
    let mut texts: BTreeMap<String, String> = BTreeMap::new();
    let mut section: Option<String> = None;
    for line in cat.lines() {
        if line == "-- OS Release: --" {
            section = Some(String::new());
        } else if let Some(unit) = line.strip_prefix("-- Unit file: ").and_then(|l| l.strip_suffix(" --")) {
            section = Some(unit.to_string());
            texts.insert(unit.to_string(), String::new());
        } else if let Some(unit) = &section {
            if unit.is_empty() {
                if let Some((key, value)) = line.split_once('=') {
                    os_release.insert(key.to_string(), value.trim_matches('"').to_string());
                }
            } else {
                let text = texts.get_mut(unit).unwrap();
                text.push_str(line);
                text.push('\n');
            }
        }
    }
    Reference { units, os_release, texts }
}

fn inspect_like_portablectl(tb: &Testbed) {
    for (format, access) in [
        ("squashfs", "squashfs, user-space reader"),
        ("ext4", "ext4, user-space reader"),
        ("erofs", "erofs, kernel mount"),
        ("gpt", "squashfs, user-space reader"),
    ] {
        let image = format!("/srv/images/kinds/foobar_{format}.raw");
        build(tb, &image, format, "2");
        let info = json(&tb.ok(&format!("portable inspect --json --cat {image}")));
        assert_eq!(info["kind"], format, "{image}");
        assert!(info["access"].as_str().unwrap().starts_with(access), "{image}: {}", info["access"]);
        assert_eq!(info["os_release"]["VERSION_ID"], "2", "{image}");

        let reference = reference(tb, &image);
        assert_eq!(unit_names(&info), reference.units, "{image}: units differ from portablectl's");
        let os_release: BTreeMap<String, String> = info["os_release"]
            .as_object()
            .unwrap()
            .iter()
            .map(|(k, v)| (k.clone(), v.as_str().unwrap().to_string()))
            .collect();
        assert_eq!(os_release, reference.os_release, "{image}: os-release differs from portablectl's");
        for unit in info["units"].as_array().unwrap() {
            let name = unit["name"].as_str().unwrap();
            // portablectl separates the texts with an empty line.
            assert_eq!(
                unit["contents"].as_str().unwrap().trim_end(),
                reference.texts[name].trim_end(),
                "{image}: {name} differs from portablectl's"
            );
        }

        let text = tb.ok(&format!("portable inspect --cat {image}"));
        assert!(text.contains(&format!("Kind:\n    {format}\n")), "{text}");
        assert!(text.contains("ExecStart=/usr/bin/busybox httpd"), "{text}");
    }
}

/// Everything below `dir` (not into other mounts), sorted: the test runs
/// alone, so any entry that differs afterwards is one it made.
fn files_in(tb: &Testbed, dir: &str) -> String {
    tb.ok(&format!("mkdir -p {dir} && find {dir} -xdev | sort"))
}

fn inspect_xz(tb: &Testbed) {
    let image = "/srv/images/xz/foobar_4.raw.xz";
    build(tb, image, "xz", "4");
    let watched = ["/srv/images/xz", "/var/lib/portables", "/var/lib/wharf", "/run/wharf"];
    let before: Vec<String> = watched.iter().map(|dir| files_in(tb, dir)).collect();

    let info = json(&tb.ok(&format!("portable inspect --json {image}")));
    assert_eq!(info["kind"], "xz");
    assert!(info["access"].as_str().unwrap().starts_with("xz, decompressed to an anonymous file: squashfs"), "{info}");
    assert_eq!(info["os_release"]["VERSION_ID"], "4");
    assert_eq!(unit_names(&info), ["foobar-hello.service", "foobar.service"]);
    // Also by name, from the pool, and by an unprivileged user.
    tb.ok(&format!("cp {image} /var/lib/portables/xzpool_4.raw.xz"));
    let pool_with_copy = files_in(tb, "/var/lib/portables");
    let pooled = json(&tb.ok("portable inspect --json xzpool_4"));
    assert_eq!(pooled["path"], "/var/lib/portables/xzpool_4.raw.xz");
    let out = tb.sh_nobody(&format!("portable inspect {image}"));
    assert!(out.success() && out.stdout.contains("foobar.service"), "{out}");
    // Inspecting from the pool decompressed nothing into it: no xzpool_4.raw.
    assert_eq!(files_in(tb, "/var/lib/portables"), pool_with_copy, "inspecting from the pool wrote into it");
    tb.ok("rm /var/lib/portables/xzpool_4.raw.xz");

    let after: Vec<String> = watched.iter().map(|dir| files_in(tb, dir)).collect();
    assert_eq!(before, after, "inspecting an xz image wrote into {watched:?}");
    // The reference tool does not read xz images at all.
    let out = tb.sh(&format!("portablectl inspect {image}"));
    assert!(!out.success(), "{out}");
}

/// The GPT type of a root partition for this machine, and for another one.
pub fn root_types() -> (&'static str, &'static str) {
    const X86_64: &str = "4f68bce3-e8cd-4db1-96e7-fbcaf984b709";
    const ARM64: &str = "b921b045-1df0-41c3-af44-4c6f280d3fae";
    if std::env::consts::ARCH == "aarch64" { (ARM64, X86_64) } else { (X86_64, ARM64) }
}

fn host_arch() -> &'static str {
    if std::env::consts::ARCH == "aarch64" { "arm64" } else { "x86-64" }
}

/// Partition types for this machine: (usr, root-verity, root-verity-sig).
fn dps_types() -> (&'static str, &'static str, &'static str) {
    if std::env::consts::ARCH == "aarch64" {
        (
            "b0e01050-ee5f-4390-949a-9101b17104e9",
            "df3300ce-d69f-4c92-978c-9bfb0f38d820",
            "6db69de6-29f4-4758-a7a5-962190f00ce3",
        )
    } else {
        (
            "8484680c-9521-48c6-9c11-b0720656f69e",
            "2c7357ed-ebd2-46d9-aec1-23d437ec2bf5",
            "41092b05-9fc8-4523-994f-2def0408b176",
        )
    }
}

pub const ESP: &str = "c12a7328-f81f-11d2-ba4b-00a0c93ec93b";

/// A new file of `bytes` at `out`, partitioned by sfdisk from `script`.
fn partitioned(out: &Path, bytes: u64, script: &str) {
    let _ = std::fs::remove_file(out);
    std::fs::File::create(out).unwrap().set_len(bytes).unwrap();
    let mut sfdisk = Command::new("sfdisk");
    sfdisk.args(["-q", out.to_str().unwrap()]).stdin(std::process::Stdio::piped()).stdout(std::process::Stdio::null());
    let mut child = sfdisk.spawn().unwrap();
    std::io::Write::write_all(child.stdin.as_mut().unwrap(), script.as_bytes()).unwrap();
    assert!(child.wait().unwrap().success(), "sfdisk refused {script}");
}

/// A GPT disk image at `out` with one partition per `(type, label, content)`
/// (content: a file to copy in, or `None` for 64 KiB of zeros), made with
/// sfdisk on the host.
pub fn gpt_disk(out: &Path, partitions: &[(&str, &str, Option<&Path>)]) {
    let mut script = String::from("label: gpt\n");
    let mut start = 2048u64;
    let mut layout = Vec::new();
    for (type_uuid, label, content) in partitions {
        let bytes = content.map_or(64 * 1024, |p| std::fs::metadata(p).unwrap().len());
        let sectors = bytes.div_ceil(512).max(128);
        script.push_str(&format!("start={start}, size={sectors}, type={type_uuid}, name=\"{label}\"\n"));
        layout.push((start, *content));
        start += sectors.div_ceil(2048) * 2048;
    }
    partitioned(out, (start + 2048) * 512, &script);
    for (start, content) in layout {
        if let Some(content) = content {
            run_host(
                Command::new("dd")
                    .arg(format!("if={}", content.display()))
                    .arg(format!("of={}", out.display()))
                    .args(["bs=512", &format!("seek={start}"), "conv=notrunc", "status=none"]),
                "copying a partition in",
            )
            .unwrap();
        }
    }
}

/// A scratch directory on the host, outside the testbed.
fn host_scratch(tb: &Testbed, tag: &str) -> PathBuf {
    let dir = tb.host_path(&format!("/var/tmp/build-{tag}"));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

fn gpt_partitions(tb: &Testbed) {
    let scratch = host_scratch(tb, "gpt");
    let root = scratch.join("root.squashfs");
    images::foobar(&root, "squashfs", "5").unwrap();
    let (usr_type, verity_type, signature_type) = dps_types();
    let (root_type, _) = root_types();

    let image = "/srv/images/gpt/foobar_5.raw";
    std::fs::create_dir_all(tb.host_path("/srv/images/gpt")).unwrap();
    gpt_disk(
        &tb.host_path(image),
        &[
            (ESP, "esp", None),
            (root_type, "root", Some(&root)),
            (verity_type, "root-verity", None),
            (signature_type, "root-verity-sig", None),
        ],
    );
    let info = json(&tb.ok(&format!("portable inspect --json {image}")));
    assert_eq!(info["kind"], "gpt");
    assert_eq!(info["os_release"]["VERSION_ID"], "5");
    let parts = info["partitions"].as_array().unwrap();
    let roles: Vec<(&str, &str, bool)> = parts
        .iter()
        .map(|p| (p["role"].as_str().unwrap(), p["architecture"].as_str().unwrap(), p["used"].as_bool().unwrap()))
        .collect();
    let arch = host_arch();
    assert_eq!(
        roles,
        [("esp", "", false), ("root", arch, true), ("root-verity", arch, false), ("root-verity-sig", arch, false)]
    );
    assert_eq!(parts[1]["label"], "root");
    assert_eq!(parts[1]["offset"].as_u64().unwrap() % 512, 0);
    let text = tb.ok(&format!("portable inspect {image}"));
    assert!(text.contains(&format!("root-verity ({arch}): ")), "{text}");
    assert!(text.contains(&format!("root ({arch}): ")) && text.contains(", used"), "{text}");

    // An image with only a /usr partition: read as mounted at /usr.
    let stage = scratch.join("stage");
    images::foobar(&stage, "dir", "6").unwrap();
    let usr = scratch.join("usr.squashfs");
    run_host(
        Command::new("mksquashfs").arg(stage.join("usr")).arg(&usr).args([
            "-noappend",
            "-quiet",
            "-all-root",
            "-no-progress",
        ]),
        "making a /usr partition",
    )
    .unwrap();
    let usr_image = "/srv/images/gpt/foobar_6.raw";
    gpt_disk(&tb.host_path(usr_image), &[(usr_type, "usr", Some(&usr))]);
    let info = json(&tb.ok(&format!("portable inspect --json {usr_image}")));
    assert_eq!(info["os_release"]["VERSION_ID"], "6");
    assert_eq!(unit_names(&info), ["foobar-hello.service", "foobar.service"]);
    assert_eq!(info["partitions"][0]["role"], "usr");

    // Root partitions holding ext4 and erofs: the loop device of the latter
    // covers only its partition, and is gone afterwards.
    for (format, access) in [("ext4", "ext4, user-space reader"), ("erofs", "erofs, kernel mount")] {
        let fs = scratch.join(format!("root.{format}"));
        images::foobar(&fs, format, "9").unwrap();
        let image = format!("/srv/images/gpt/foobar-{format}_9.raw");
        gpt_disk(&tb.host_path(&image), &[(ESP, "esp", None), (root_type, "root", Some(&fs))]);
        let info = json(&tb.ok(&format!("portable inspect --json {image}")));
        assert_eq!(info["os_release"]["VERSION_ID"], "9", "{image}");
        assert!(info["access"].as_str().unwrap().starts_with(access), "{image}: {info}");
        assert_eq!(unit_names(&info), ["foobar-hello.service", "foobar.service"], "{image}");
    }
    assert_eq!(loops_below(tb, "/srv/images/gpt"), "");
    std::fs::remove_dir_all(&scratch).unwrap();
}

/// Loop devices attached to files below `dir` (paths as the testbed sees them).
fn loops_below(tb: &Testbed, dir: &str) -> String {
    tb.loop_devices(dir).join("\n")
}

/// Mount points wharfd made and did not remove, and mounts of them in any of
/// wharfd's threads.
fn wharf_mounts(tb: &Testbed) -> String {
    tb.ok("ls -A /run/wharf | grep '^.mount-' || true; \
         pid=$(systemctl show -P MainPID wharfd.service); \
         if [ \"$pid\" != 0 ]; then cat /proc/$pid/task/*/mountinfo 2>/dev/null | grep -F '.mount-' || true; fi")
}

fn nobody_inspects_squashfs(tb: &Testbed) {
    let image = "/srv/images/nobody/foobar_7.raw";
    build(tb, image, "squashfs", "7");
    assert_eq!(loops_below(tb, "/srv/images/nobody"), "");
    // Watch the loop devices for the whole time the inspection runs.
    let script = format!(
        "(while :; do cat /sys/block/loop*/loop/backing_file 2>/dev/null; done) >/tmp/nobody-loops & watcher=$!; \
         setpriv --reuid=nobody --regid=nogroup --clear-groups portable inspect --json {image}; status=$?; \
         kill $watcher; wait $watcher 2>/dev/null; exit $status"
    );
    let info = json(&tb.ok(&script));
    assert_eq!(info["kind"], "squashfs");
    assert!(info["access"].as_str().unwrap().contains("no loop device"), "{info}");
    assert_eq!(info["os_release"]["VERSION_ID"], "7");
    let seen = tb.ok("grep -F /srv/images/nobody /tmp/nobody-loops || true; rm -f /tmp/nobody-loops");
    assert_eq!(seen, "", "a loop device was used for the squashfs image");
    assert_eq!(loops_below(tb, "/srv/images/nobody"), "");
}

fn erofs_leaves_nothing_behind(tb: &Testbed) {
    let dir = "/srv/images/erofs";
    build(tb, &format!("{dir}/foobar_8.raw"), "erofs", "8");
    let info = json(&tb.ok(&format!("portable inspect --json {dir}/foobar_8.raw")));
    assert_eq!(info["os_release"]["VERSION_ID"], "8");
    assert!(info["access"].as_str().unwrap().starts_with("erofs, kernel mount"), "{info}");
    assert_eq!(loops_below(tb, dir), "");
    assert_eq!(wharf_mounts(tb), "");

    // An erofs image the kernel refuses to mount: the loop device and the
    // mount point made for it are gone too.
    let good = std::fs::read(tb.host_path(&format!("{dir}/foobar_8.raw"))).unwrap();
    // Its superblock (at 1024) intact, the metadata after it garbage.
    let mut bad = good[..2048].to_vec();
    bad.extend((0..good.len() - 2048).map(|i| (i * 7919 % 251) as u8));
    std::fs::write(tb.host_path(&format!("{dir}/broken.raw")), bad).unwrap();
    let out = tb.fails(&format!("portable inspect {dir}/broken.raw"));
    assert_eq!(out.stderr.lines().count(), 1, "{out}");
    assert!(out.stderr.contains(&format!("image '{dir}/broken.raw'")), "{out}");
    assert!(out.stderr.contains("corrupt erofs image"), "{out}");
    assert_eq!(loops_below(tb, dir), "");
    assert_eq!(wharf_mounts(tb), "");

    // Unprivileged, nothing is mounted: wharfd mounts only for root.
    let out = tb.sh_nobody(&format!("portable inspect {dir}/foobar_8.raw"));
    assert!(!out.success() && out.stderr.contains("which needs root"), "{out}");
    assert_eq!(loops_below(tb, dir), "");
}

/// A squashfs image made from `entries` (path, file text or `@target` for a symlink).
fn squashfs_of(tb: &Testbed, inner: &str, entries: &[(&str, &str)]) {
    let stage = host_scratch(tb, &format!("stage-{}", inner.replace('/', "-")));
    for (path, content) in entries {
        let host = stage.join(path.trim_start_matches('/'));
        std::fs::create_dir_all(host.parent().unwrap()).unwrap();
        match content.strip_prefix('@') {
            Some(target) => symlink(target, &host).unwrap(),
            None => std::fs::write(&host, content).unwrap(),
        }
    }
    let out = tb.host_path(inner);
    std::fs::create_dir_all(out.parent().unwrap()).unwrap();
    crate::testbed::images::squashfs(&stage, &out).unwrap();
    std::fs::remove_dir_all(&stage).unwrap();
}

const OS_RELEASE: (&str, &str) = ("usr/lib/os-release", "ID=bad\nVERSION_ID=1\n");
const UNIT: &str = "[Service]\nExecStart=/bin/true\n";

fn bad_images(tb: &Testbed) {
    let dir = "/srv/images/bad";
    std::fs::create_dir_all(tb.host_path(dir)).unwrap();
    let host = |name: &str| tb.host_path(&format!("{dir}/{name}"));

    build(tb, &format!("{dir}/whole.raw"), "squashfs", "1");
    let whole = std::fs::read(host("whole.raw")).unwrap();
    std::fs::write(host("truncated.raw"), &whole[..whole.len() / 2]).unwrap();
    std::fs::remove_file(host("whole.raw")).unwrap();
    let noise: Vec<u8> = (0..256 * 1024u32).map(|i| (i.wrapping_mul(2654435761) >> 13) as u8).collect();
    std::fs::write(host("random.raw"), &noise).unwrap();
    let mut forged = b"hsqs".to_vec();
    forged.extend(&noise);
    std::fs::write(host("forged.raw"), &forged).unwrap();
    std::fs::write(host("notes.raw"), "just some notes, not an image\n").unwrap();

    let scratch = host_scratch(tb, "bad");
    let root = scratch.join("root.squashfs");
    images::foobar(&root, "squashfs", "1").unwrap();
    let (_, other_root) = root_types();
    gpt_disk(&host("foreign.raw"), &[(ESP, "esp", None), (other_root, "root-foreign", Some(&root))]);
    std::fs::remove_dir_all(&scratch).unwrap();

    let units = "usr/lib/systemd/system";
    squashfs_of(tb, &format!("{dir}/noos.raw"), &[(&format!("{units}/noos.service"), UNIT)]);
    squashfs_of(tb, &format!("{dir}/abs.raw"), &[OS_RELEASE, (&format!("{units}/abs.service"), "@/etc/passwd")]);
    squashfs_of(
        tb,
        &format!("{dir}/climb.raw"),
        &[OS_RELEASE, (&format!("{units}/climb.service"), "@../../../../../etc/passwd")],
    );
    squashfs_of(tb, &format!("{dir}/empty.raw"), &[OS_RELEASE, (&format!("{units}/empty.service"), "")]);

    let arch = host_arch();
    let cases: Vec<(String, String)> = vec![
        ("truncated.raw".into(), "corrupt squashfs image: truncated".into()),
        ("random.raw".into(), "not an image".into()),
        ("forged.raw".into(), "corrupt squashfs image".into()),
        ("notes.raw".into(), "not an image".into()),
        ("foreign.raw".into(), format!("no root or usr partition for {arch} in its GPT partition table")),
        ("noos.raw".into(), "no os-release".into()),
        ("abs.raw".into(), "unit file 'abs.service' is a symlink to '/etc/passwd', which leaves the image".into()),
        (
            "climb.raw".into(),
            "unit file 'climb.service' is a symlink to '../../../../../etc/passwd', which leaves the image".into(),
        ),
        ("empty.raw".into(), "unit file 'empty.service' is empty".into()),
        ("missing.raw".into(), "No such file or directory".into()),
    ];
    let pool_before = files_in(tb, "/var/lib/portables");
    for (name, reason) in &cases {
        let path = format!("{dir}/{name}");
        for (out, json) in [
            (tb.fails(&format!("portable inspect {path}")), false),
            (tb.fails(&format!("portable inspect --json {path}")), true),
        ] {
            if json {
                // The same line, as a document, on standard output.
                let document: serde_json::Value =
                    serde_json::from_str(&out.stdout).unwrap_or_else(|e| panic!("{name}: {e}: {out}"));
                let message = document["error"]["message"].as_str().unwrap_or_default();
                assert_eq!(out.stderr.trim_end(), format!("portable: {message}"), "{out}");
                let kind = if *name == "missing.raw" { "no-such-image" } else { "bad-image" };
                assert_eq!(document["error"]["kind"], kind, "{name}: {out}");
            } else {
                assert_eq!(out.stdout, "", "{out}");
            }
            let lines: Vec<&str> = out.stderr.lines().collect();
            assert_eq!(lines.len(), 1, "{name}: not one line: {out}");
            assert!(lines[0].starts_with("portable: "), "{out}");
            assert!(lines[0].contains(&format!("'{path}'")), "{name}: the image is not named: {out}");
            assert!(lines[0].contains(reason.as_str()), "{name}: the reason is not '{reason}': {out}");
        }
    }
    assert_eq!(files_in(tb, "/var/lib/portables"), pool_before, "a bad image left something in the pool");
    assert_eq!(files_in(tb, dir).lines().filter(|l| l.starts_with('.')).count(), 0, "hidden files left in {dir}");
    assert_eq!(loops_below(tb, dir), "");
    assert_eq!(wharf_mounts(tb), "");
    // Refused by the reference tool too (after the checks above: it
    // leaves its loop devices to the kernel's autoclear).
    for name in ["truncated.raw", "random.raw", "foreign.raw", "noos.raw"] {
        let out = tb.sh(&format!("portablectl inspect {dir}/{name}"));
        assert!(!out.success(), "portablectl accepted {name}: {out}");
    }
}

/// A GPT disk image at `out` whose root partition holds the file system
/// image `fs` (padded to whole 4 KiB blocks) and whose root-verity
/// partition holds its hash tree, made by `veritysetup format` (cryptsetup,
/// on the host: the same tool and on-disk format for every testbed
/// release). With `repart_uuids`, the partition UUIDs carry the root hash
/// as systemd-repart writes them (data: its first 128 bits, hash: its
/// last); else they are random. With `signature`, a root-verity-sig
/// partition holds that JSON (NUL-padded to 4 KiB), `@ROOTHASH@` replaced by
/// the root hash. Returns the root hash and the root partition's offset in
/// the disk.
pub fn verity_disk(fs: &Path, out: &Path, repart_uuids: bool) -> (String, u64) {
    verity_disk_signed(fs, out, repart_uuids, None)
}

pub fn verity_disk_signed(fs: &Path, out: &Path, repart_uuids: bool, signature: Option<&str>) -> (String, u64) {
    let data = out.with_extension("data");
    let tree = out.with_extension("tree");
    std::fs::copy(fs, &data).unwrap();
    let len = std::fs::metadata(&data).unwrap().len();
    std::fs::OpenOptions::new().write(true).open(&data).unwrap().set_len(len.next_multiple_of(4096)).unwrap();
    let _ = std::fs::remove_file(&tree);
    let formatted =
        run_host(Command::new("veritysetup").arg("format").arg(&data).arg(&tree), "veritysetup format").unwrap();
    let text = String::from_utf8_lossy(&formatted.stdout).into_owned();
    let hash = text
        .lines()
        .find_map(|l| l.strip_prefix("Root hash:"))
        .map(|h| h.trim().to_string())
        .unwrap_or_else(|| panic!("no root hash in {text}"));
    let uuid = |hex: &str| format!("{}-{}-{}-{}-{}", &hex[..8], &hex[8..12], &hex[12..16], &hex[16..20], &hex[20..]);
    let (_, verity_type, signature_type) = dps_types();
    let sig = out.with_extension("sig");
    if let Some(json) = signature {
        let mut bytes = json.replace("@ROOTHASH@", &hash).into_bytes();
        bytes.resize(4096, 0);
        std::fs::write(&sig, bytes).unwrap();
    }
    let sectors = |path: &Path| std::fs::metadata(path).unwrap().len().div_ceil(512);
    let (data_sectors, tree_sectors) = (sectors(&data), sectors(&tree));
    let tree_start = (2048 + data_sectors).next_multiple_of(2048);
    let sig_start = (tree_start + tree_sectors).next_multiple_of(2048);
    let uuids =
        |n: usize| if repart_uuids { format!(", uuid={}", uuid(&hash[n * 32..n * 32 + 32])) } else { String::new() };
    let script = format!(
        "label: gpt\nstart=2048, size={data_sectors}, type={}, name=root{}\nstart={tree_start}, size={tree_sectors}, type={verity_type}, name=root-verity{}\n",
        root_types().0,
        uuids(0),
        uuids(1),
    ) + &if signature.is_some() {
        format!("start={sig_start}, size=8, type={signature_type}, name=root-verity-sig\n")
    } else {
        String::new()
    };
    partitioned(out, (sig_start + 8 + 2048) * 512, &script);
    let mut parts = vec![(&data, 2048), (&tree, tree_start)];
    if signature.is_some() {
        parts.push((&sig, sig_start));
    }
    for (part, start) in parts {
        run_host(
            Command::new("dd").arg(format!("if={}", part.display())).arg(format!("of={}", out.display())).args([
                "bs=512",
                &format!("seek={start}"),
                "conv=notrunc",
                "status=none",
            ]),
            "copying a partition in",
        )
        .unwrap();
        std::fs::remove_file(part).unwrap();
    }
    (hash, 2048 * 512)
}

/// Flips every bit of the byte at `offset` of the file at `path`.
pub fn flip_byte(path: &Path, offset: u64) {
    use std::os::unix::fs::FileExt;
    let file = std::fs::OpenOptions::new().read(true).write(true).open(path).unwrap();
    let mut byte = [0u8];
    file.read_exact_at(&mut byte, offset).unwrap();
    file.write_all_at(&[!byte[0]], offset).unwrap();
}
