//! The audit trail in the testbed: every change wharfd makes is one
//! journal entry with its MESSAGE_ID, the caller (uid, command line), the
//! image digest, the files changed and the result; refusals are notices;
//! `history --json` returns them in order. And the attack: a caller whose
//! command line holds newlines, control characters and a very long string
//! cannot forge fields or break its entry.
//!
//! Its images and units are its own (audita, auditb, auditf), so it shares
//! the testbed with the other tests.

use std::sync::Arc;
use std::time::{Duration, Instant};

use libtest_mimic::Trial;
use serde_json::Value;

use crate::testbed::{Testbed, images};
use crate::{Shared, trial};

pub fn trials(shared: &Arc<Shared>) -> Vec<Trial> {
    vec![
        trial(shared, "audit::portable_changes_are_attributed_and_in_history", portable_changes),
        trial(shared, "audit::machine_image_changes_and_fleet_applies_are_in_history", machine_and_fleet),
    ]
}

/// The MESSAGE_IDs of wharfd(8), spelled out: they must never change.
const ATTACH: &str = "8575d8955c7087513ce98705246239a1";
const REFUSED: &str = "e78c0e6452bf408eb615c0ec53bfbb08";

/// Builds a squashfs portable image at `out` whose one unit is `name`.service.
fn unit_image(tb: &Testbed, name: &str, out: &str, broken: bool) {
    let tree = tb.host_path(&format!("/tmp/audit-tree-{name}"));
    let _ = std::fs::remove_dir_all(&tree);
    images::foobar_as(&tree, name, "foobar.service").unwrap();
    if broken {
        let unit = tree.join(format!("usr/lib/systemd/system/{name}.service"));
        let text =
            std::fs::read_to_string(&unit).unwrap().replace("ExecStart=/usr/bin/busybox", "ExecStart=/usr/bin/missing");
        std::fs::write(&unit, text).unwrap();
    }
    let out = tb.host_path(out);
    std::fs::create_dir_all(out.parent().unwrap()).unwrap();
    images::squashfs(&tree, &out).unwrap();
    std::fs::remove_dir_all(&tree).unwrap();
}

/// `history --json` until it has `count` entries (journald takes the
/// datagrams in its own time), at most 20 s.
pub fn history(tb: &Testbed, command: &str, count: usize) -> Vec<Value> {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let out = tb.ok(command);
        let entries: Vec<Value> = serde_json::from_str(&out).unwrap_or_else(|e| panic!("{command}: {e}: {out}"));
        if entries.len() >= count || Instant::now() > deadline {
            if entries.len() != count {
                let journal =
                    tb.sh("journalctl -o json -n 8 _UID=0 SYSLOG_IDENTIFIER=wharfd; journalctl -u wharfd -n 20");
                panic!("{command}: {} entries, not {count}: {out}\n{journal}", entries.len());
            }
            return entries;
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

fn field<'a>(entry: &'a Value, name: &str) -> &'a str {
    entry["fields"][name][0].as_str().unwrap_or_else(|| panic!("no {name} in {entry}"))
}

pub fn values(entry: &Value, name: &str) -> Vec<String> {
    entry["fields"][name]
        .as_array()
        .map(|v| v.iter().map(|s| s.as_str().unwrap().to_string()).collect())
        .unwrap_or_default()
}

pub fn kinds(entries: &[Value]) -> Vec<String> {
    entries.iter().map(|e| format!("{}:{}", e["kind"].as_str().unwrap(), e["result"].as_str().unwrap())).collect()
}

fn portable_changes(tb: &Testbed) {
    tb.ok("systemctl stop audita.service auditb.service 2>/dev/null; rm -rf /etc/systemd/system.attached/audit[ab]* /run/systemd/system.attached/audit[ab]* /etc/portables/audit[ab]* /run/portables/audit[ab]* /etc/systemd/system/audit[ab]* \
         /var/lib/portables/audit[ab]*; systemctl daemon-reload; true");
    unit_image(tb, "audita", "/var/lib/portables/audita.raw", false);
    unit_image(tb, "auditb", "/var/lib/portables/auditb.raw", true);
    let sha256 = tb.ok("sha256sum /var/lib/portables/audita.raw | cut -d' ' -f1").trim().to_string();
    let since = tb.ok("date +%s.%N").trim().to_string();

    // Root, straight; then root from a shell whose argv[0] is hostile:
    // newlines that look like fields, control characters, 5000 bytes.
    tb.ok("portable attach audita.raw");
    let hostile = "portable\nMESSAGE_ID=00000000000000000000000000000000\nWHARF_CALLER_UID=4242\n\u{1}\u{1b}[31m";
    let long = "x".repeat(5000);
    tb.ok(&format!(
        "bash -c 'exec -a \"$(printf \"{}{long}\")\" portable reattach --profile nonetwork audita.raw' >/dev/null",
        hostile.replace('\n', "\\n").replace('\u{1}', "\\001").replace('\u{1b}', "\\033"),
    ));
    tb.ok("sh -c 'portable read-only audita.raw && portable read-only audita.raw no'");
    // Refused: nobody may not detach.
    let refused = tb.sh_nobody("portable detach audita.raw");
    assert_eq!(refused.code, Some(1), "{refused}");
    tb.ok("portable detach /var/lib/portables/audita.raw");
    // Rolled back: the unit cannot start.
    let failed = tb.fails("portable attach --now auditb.raw");
    assert!(failed.stderr.contains("the host was left as it was"), "{failed}");
    tb.ok("portable remove auditb.raw");

    let entries = history(tb, &format!("portable history --json --since=@{since} audita"), 5);
    assert_eq!(kinds(&entries), ["attach:done", "reattach:done", "read-only:done", "read-only:done", "detach:done"]);
    let times: Vec<u64> = entries.iter().map(|e| e["time_usec"].as_u64().unwrap()).collect();
    assert!(times.windows(2).all(|w| w[0] <= w[1]), "newest last: {times:?}");

    let attach = &entries[0];
    assert_eq!(attach["message_id"], ATTACH);
    assert_eq!(attach["uid"], 0);
    assert_eq!(attach["user"], "root");
    assert_eq!(attach["cmdline"], serde_json::json!(["portable", "attach", "audita.raw"]));
    assert_eq!(field(attach, "IMAGE_SHA256"), sha256);
    assert_eq!(field(attach, "IMAGE_KIND"), "squashfs");
    assert_eq!(field(attach, "IMAGE_PATH"), "/var/lib/portables/audita.raw");
    assert_eq!(field(attach, "PROFILE"), "default");
    assert!(values(attach, "CHANGE").contains(&"write /etc/systemd/system/audita.service".to_string()), "{attach}");
    assert_eq!(values(attach, "UNIT"), ["audita.service"]);
    assert!(field(attach, "DURATION_USEC").parse::<u64>().unwrap() > 0);

    // The hostile caller: its argv is in one field, none forged.
    let reattach = &entries[1];
    let cmdline: Vec<String> = serde_json::from_value(reattach["cmdline"].clone()).unwrap();
    assert!(cmdline[0].starts_with(hostile), "{cmdline:?}");
    assert!(cmdline[0].ends_with("xxx..."), "cut: {cmdline:?}");
    assert_eq!(cmdline[0].len(), 1024 + 3);
    assert_eq!(cmdline[1..], ["reattach", "--profile", "nonetwork", "audita.raw"]);
    assert_eq!(reattach["uid"], 0);
    assert_eq!(values(reattach, "CALLER_UID"), ["0"]);
    assert_eq!(field(reattach, "PROFILE"), "nonetwork");
    let raw = tb.ok(&format!(
        "journalctl -o json --since=@{since} _UID=0 MESSAGE_ID=c53828aa88f98f89d0698003050c8299 WHARF_IMAGE=audita.raw"
    ));
    assert_eq!(raw.lines().count(), 1, "{raw}");
    assert!(!raw.contains("00000000000000000000000000000000\""), "a forged MESSAGE_ID: {raw}");
    let forged = tb.ok("journalctl -o json MESSAGE_ID=00000000000000000000000000000000 | wc -l");
    assert_eq!(forged.trim(), "0");

    assert_eq!(values(&entries[2], "READ_ONLY"), ["yes"]);
    assert_eq!(entries[2]["cmdline"][0], "portable", "{}", entries[2]);
    let refused = history(tb, &format!("portable history --json --since=@{since} --user nobody"), 1);
    let refusal = &refused[0];
    assert_eq!(refusal["message_id"], REFUSED);
    assert_eq!(refusal["uid"], 65534);
    assert_eq!(refusal["cmdline"], serde_json::json!(["portable", "detach", "audita.raw"]));
    assert!(field(refusal, "REASON").contains("needs authorization for org.wharf1.portable.attach"), "{refusal}");
    let detach = &entries[4];
    assert_eq!(detach["cmdline"], serde_json::json!(["portable", "detach", "/var/lib/portables/audita.raw"]));
    assert!(values(detach, "CHANGE").contains(&"unlink /etc/systemd/system/audita.service".to_string()), "{detach}");
    assert_eq!(field(detach, "IMAGE_SHA256"), sha256);

    let b = history(tb, &format!("portable history --json --since=@{since} auditb.raw"), 2);
    assert_eq!(kinds(&b), ["attach:rolled-back", "remove:done"]);
    assert!(field(&b[0], "ERROR").contains("auditb.service"), "names the failed step: {}", b[0]);
    assert!(field(&b[0], "ERROR").contains("left as it was"), "{}", b[0]);

    // Who may not read the system journal is told so, in one line.
    let denied = tb.sh_nobody("portable history");
    assert_eq!(denied.code, Some(1), "{denied}");
    assert_eq!(
        denied.stderr.trim(),
        "portable: history needs to read the system journal: run it as root, or as a member of the adm or systemd-journal group"
    );
    // The bad-input case.
    let bad = tb.fails("portable history --since=yesterday-ish");
    assert_eq!(bad.stderr.lines().count(), 1, "{bad}");
    assert!(bad.stderr.starts_with("portable: journalctl failed: "), "{bad}");
    tb.ok("rm -f /var/lib/portables/audita.raw");
}

fn machine_and_fleet(tb: &Testbed) {
    tb.ok("rm -rf /var/lib/machines/auditm* /srv/audit /tmp/auditm; mkdir -p /tmp/auditm/usr/lib /srv/audit; \
         echo ID=test > /tmp/auditm/usr/lib/os-release");
    unit_image(tb, "auditf", "/srv/audit/auditf.raw", false);
    let since = tb.ok("date +%s.%N").trim().to_string();
    tb.ok("machine import-fs /tmp/auditm auditm && sh -c 'machine clone auditm auditm2' && machine rename auditm2 auditm3 \
         && machine read-only auditm3 && machine read-only auditm3 no && machine export-tar auditm /tmp/auditm.tar \
         && machine remove auditm3 auditm && rm /tmp/auditm.tar");
    let own = history(tb, &format!("machine history --json --since=@{since} auditm"), 4);
    assert_eq!(kinds(&own), ["import:done", "clone:done", "export:done", "image-remove:done"]);
    assert_eq!(field(&own[0], "IMAGE_PATH"), "/var/lib/machines/auditm");
    let entries = history(tb, &format!("machine history --json --since=@{since} auditm3"), 4);
    assert_eq!(kinds(&entries), ["rename:done", "read-only:done", "read-only:done", "image-remove:done"]);
    assert_eq!(field(&entries[0], "NEW_NAME"), "auditm3");
    let clone = history(tb, &format!("machine history --json --since=@{since} auditm2"), 2);
    assert_eq!(kinds(&clone), ["clone:done", "rename:done"]);
    assert_eq!(clone[0]["cmdline"], serde_json::json!(["machine", "clone", "auditm", "auditm2"]));
    assert_eq!(field(&clone[0], "IMAGE_KIND"), "directory");

    // A fleet apply: its entry and one per step carry the file and its digest.
    std::fs::write(tb.host_path("/srv/audit/host.toml"), "[[portable]]\nimage = \"auditf.raw\"\n").unwrap();
    let digest = tb.ok("sha256sum /srv/audit/host.toml | cut -d' ' -f1").trim().to_string();
    tb.ok("portable apply /srv/audit/host.toml >/dev/null");
    std::fs::write(tb.host_path("/srv/audit/host.toml"), "").unwrap();
    tb.ok("portable apply /srv/audit/host.toml >/dev/null");
    let fleet = history(tb, &format!("portable history --json --since=@{since} auditf"), 2);
    assert_eq!(kinds(&fleet), ["fleet-step:done", "fleet-step:done"]);
    assert_eq!(values(&fleet[0], "STEP"), ["attach"]);
    assert_eq!(values(&fleet[1], "STEP"), ["detach"]);
    assert_eq!(field(&fleet[0], "FLEET_FILE"), "/srv/audit/host.toml");
    assert_eq!(field(&fleet[0], "FLEET_SHA256"), digest);
    let applies = tb.ok(&format!(
        "journalctl -o json --since=@{since} _UID=0 MESSAGE_ID=c94e953089d5f00c1d0c258c14f89c45 WHARF_APPLY_ID={}",
        field(&fleet[0], "APPLY_ID")
    ));
    let apply: Value = serde_json::from_str(applies.lines().next().expect("the apply's own entry")).unwrap();
    assert_eq!(apply["WHARF_FLEET_SHA256"], digest.as_str());
    assert_eq!(apply["WHARF_RESULT"], "done");
    tb.ok("rm -rf /srv/audit /tmp/auditm /var/lib/portables/auditf.raw");
}
