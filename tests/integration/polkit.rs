//! polkit in the testbed: a user of a group a rules file grants the wharf
//! actions to attaches and detaches without being root; anyone else is
//! refused with the action named and nothing changed; with polkit gone
//! from the bus, only root is let in again.
//!
//! Its image and unit are its own (polka), but both trials run alone: one
//! changes polkit's rules, the other stops polkit, which every other
//! trial's refusals come from.

use std::sync::Arc;
use std::time::{Duration, Instant};

use libtest_mimic::Trial;

use crate::testbed::{Out, Testbed, images};
use crate::{Shared, exclusive_trial};

pub fn trials(shared: &Arc<Shared>) -> Vec<Trial> {
    vec![
        exclusive_trial(shared, "polkit::a_granted_group_attaches_and_others_are_refused", granted_and_refused),
        exclusive_trial(shared, "polkit::without_polkit_only_root_changes_state", without_polkit),
    ]
}

const IMAGE: &str = "/srv/images/polkit/polka";
const RULES: &str = "/etc/polkit-1/rules.d/50-wharf-test.rules";
const RULE: &str = r#"polkit.addRule(function(action, subject) {
    if (action.id.indexOf("org.wharf1.") == 0 && subject.isInGroup("wharfadm")) {
        return polkit.Result.YES;
    }
});
"#;
const ATTACH_ACTION: &str = "org.wharf1.portable.attach";
const MANAGE_ACTION: &str = "org.wharf1.machine.manage";

/// The image, the users (`polkadmin` in wharfadm, `polkplain` not), the
/// rule, and nothing of polka attached; polkit running with the rule read.
fn set_up(tb: &Testbed) {
    clean_up(tb);
    let tree = tb.host_path(IMAGE);
    images::foobar_as(&tree, "polka", "foobar.service").unwrap();
    tb.ok("getent group wharfadm || groupadd wharfadm; \
         id polkadmin || useradd -M -N -g wharfadm polkadmin; id polkplain || useradd -M -N -g users polkplain");
    std::fs::write(tb.host_path(RULES), RULE).unwrap();
    tb.ok("systemctl unmask polkit.service && systemctl restart polkit.service");
    wait_for_verdict(tb, "polkadmin", true);
}

/// Nothing of this test is left: units, rule, polkit as it was.
fn clean_up(tb: &Testbed) {
    tb.ok(&format!(
        "systemctl unmask polkit.service; portable detach {IMAGE} >/dev/null 2>&1; \
         rm -rf /etc/systemd/system/polka* /etc/systemd/system.attached/polka* {RULES} {IMAGE}; \
         systemctl daemon-reload; true"
    ));
}

/// Runs `command` as `user` (with its groups), as a plain process of no
/// session, as a cron job or a script would.
fn as_user(tb: &Testbed, user: &str, command: &str) -> Out {
    let quoted = command.replace('\'', r"'\''");
    let group = tb.ok(&format!("id -gn {user}")).trim().to_string();
    let mut out = tb.sh(&format!("setpriv --reuid={user} --regid={group} --init-groups sh -c '{quoted}'"));
    out.command = format!("(as {user}) {command}");
    out
}

/// polkit reads rules files in its own time: waits (at most 20 s) until
/// it says `expected` for `user` and the attach action.
fn wait_for_verdict(tb: &Testbed, user: &str, expected: bool) {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let out = as_user(tb, user, &format!("pkcheck --action-id {ATTACH_ACTION} --process $$"));
        if out.success() == expected {
            return;
        }
        assert!(Instant::now() < deadline, "polkit never said {expected} for {user}: {out}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn attached_state(tb: &Testbed) -> String {
    tb.sh(&format!("portable is-attached {IMAGE}")).stdout.trim().to_string()
}

fn granted_and_refused(tb: &Testbed) {
    set_up(tb);
    let since = tb.ok("date +%s.%N").trim().to_string();

    // (a) The group's user attaches: the unit appears, and the audit entry
    // names the user and the action that let it in.
    let out = as_user(tb, "polkadmin", &format!("portable attach {IMAGE}"));
    assert!(out.success(), "{out}");
    assert!(out.stdout.contains("/etc/systemd/system/polka.service"), "{out}");
    assert_eq!(attached_state(tb), "attached");
    tb.ok("systemctl cat polka.service");
    let uid = tb.ok("id -u polkadmin").trim().to_string();
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let entries = tb.ok(&format!(
            "journalctl -q -o json --since @{since} SYSLOG_IDENTIFIER=wharfd WHARF_POLKIT_ACTION={ATTACH_ACTION}"
        ));
        if let Some(entry) = entries.lines().next() {
            let entry: serde_json::Value = serde_json::from_str(entry).unwrap();
            assert_eq!(entry["WHARF_CALLER_UID"], uid.as_str(), "{entry}");
            assert_eq!(entry["WHARF_KIND"], "attach", "{entry}");
            break;
        }
        assert!(Instant::now() < deadline, "no audit entry with the polkit action");
        std::thread::sleep(Duration::from_millis(100));
    }

    // (b) The attack: nobody, and a user outside the group, with and
    // without --no-ask-password (no agent: polkit's default is a password
    // nobody can give here). One line naming the action; nothing changed.
    let files = tb.unit_files("polka*");
    let plain = tb.ok("id -u polkplain").trim().to_string();
    for (user, uid) in [("nobody", "65534"), ("polkplain", plain.as_str())] {
        for (command, what) in [
            (format!("portable detach {IMAGE}"), "detaching an image"),
            (format!("portable detach --no-ask-password {IMAGE}"), "detaching an image"),
            (format!("portable --no-ask-password reattach {IMAGE}"), "reattaching an image"),
            ("portable read-only polka-nothere".to_string(), "marking an image read-only"),
        ] {
            let out = as_user(tb, user, &command);
            assert_eq!(out.code, Some(1), "{out}");
            assert_eq!(
                out.stderr.trim(),
                format!(
                    "portable: access denied: {what} needs authorization for {ATTACH_ACTION} (caller is uid {uid})"
                ),
                "{out}"
            );
        }
        let out = as_user(tb, user, "machine --no-ask-password terminate polka-none");
        let what = "terminating a machine";
        assert_eq!(
            out.stderr.trim(),
            format!("machine: access denied: {what} needs authorization for {MANAGE_ACTION} (caller is uid {uid})"),
            "{out}"
        );
    }
    assert_eq!(tb.unit_files("polka*"), files);
    assert_eq!(attached_state(tb), "attached");

    // The group's user detaches, with --no-ask-password too: its rule needs
    // no password.
    let out = as_user(tb, "polkadmin", &format!("portable detach --no-ask-password {IMAGE}"));
    assert!(out.success(), "{out}");
    assert_eq!(attached_state(tb), "detached");
    assert_eq!(tb.unit_files("polka*").trim(), "");
    clean_up(tb);
}

fn without_polkit(tb: &Testbed) {
    set_up(tb);
    tb.ok("systemctl mask --now polkit.service");
    assert_ne!(tb.sh("systemctl is-active polkit.service").stdout.trim(), "active");
    let uid = tb.ok("id -u polkadmin").trim().to_string();
    // The rule is there, but no polkit to read it: root's rule holds.
    let out = as_user(tb, "polkadmin", &format!("portable attach {IMAGE}"));
    assert_eq!(out.code, Some(1), "{out}");
    assert_eq!(
        out.stderr.trim(),
        format!("portable: access denied: attaching an image needs root (caller is uid {uid})"),
        "{out}"
    );
    assert_eq!(attached_state(tb), "detached");
    assert_eq!(tb.unit_files("polka*").trim(), "");
    // Root is never asked about.
    tb.ok(&format!("portable attach {IMAGE} && portable detach {IMAGE}"));

    // polkit back: the group's user is let in again.
    tb.ok("systemctl unmask polkit.service");
    wait_for_verdict(tb, "polkadmin", true);

    // A polkitd that stops answering: the call is refused when its time is
    // up (WHARF_CALL_TIMEOUT, 3 s here), not held for good, and root's
    // calls never wait for it.
    tb.ok("mkdir -p /run/systemd/system/wharfd.service.d && \
         printf '[Service]\\nEnvironment=WHARF_CALL_TIMEOUT=3\\n' > /run/systemd/system/wharfd.service.d/50-polkit-test.conf && \
         systemctl daemon-reload && systemctl stop wharfd.service");
    tb.ok("kill -STOP $(systemctl show -P MainPID polkit.service)");
    let out = as_user(tb, "polkadmin", &format!("timeout 30 portable --no-ask-password attach {IMAGE}"));
    tb.ok(&format!("timeout 30 portable attach {IMAGE} && timeout 30 portable detach {IMAGE}"));
    tb.ok("kill -CONT $(systemctl show -P MainPID polkit.service)");
    tb.ok("rm -rf /run/systemd/system/wharfd.service.d/50-polkit-test.conf && systemctl daemon-reload && \
         systemctl stop wharfd.service");
    assert_eq!(out.code, Some(1), "{out}");
    assert!(out.stderr.contains("needs authorization for org.wharf1.portable.attach"), "{out}");
    assert!(out.stderr.trim_end().ends_with("polkit: it did not answer within 3 s"), "{out}");
    assert_eq!(attached_state(tb), "detached");
    let out = as_user(tb, "polkadmin", &format!("portable attach {IMAGE}"));
    assert!(out.success(), "{out}");
    assert_eq!(attached_state(tb), "attached");
    clean_up(tb);
}
