//! The ground everything stands on: the testbed runs a real systemd, wharf
//! is installed in it as a package would be, and wharfd is activated over
//! D-Bus by a call from the CLI and answers.

use std::sync::Arc;
use std::time::{Duration, Instant};

use libtest_mimic::Trial;

use crate::testbed::{Testbed, images};
use crate::{Shared, exclusive_trial, trial};

pub fn trials(shared: &Arc<Shared>) -> Vec<Trial> {
    vec![
        trial(shared, "foundation::testbed_runs_systemd_and_the_reference_tools", testbed_runs_systemd),
        exclusive_trial(shared, "foundation::wharfd_is_activated_by_a_call_and_answers", wharfd_is_activated),
        trial(shared, "foundation::portable_list_shows_images_in_the_search_path", list_shows_images),
        trial(shared, "foundation::unprivileged_callers_may_look_but_not_change", unprivileged_callers),
        exclusive_trial(shared, "foundation::wharfd_exits_when_idle", wharfd_exits_when_idle),
        trial(shared, "foundation::introspection_matches_the_documented_interface", introspection_matches),
    ]
}

fn testbed_runs_systemd(tb: &Testbed) {
    assert_eq!(tb.ok("systemctl is-system-running").trim(), "running");
    assert_eq!(tb.ok("cat /proc/1/comm").trim(), "systemd");
    let version = tb.ok("systemctl --version | head -1");
    let expected = match tb.release {
        crate::testbed::Release::Bookworm => "systemd 252",
        crate::testbed::Release::Trixie => "systemd 257",
    };
    assert!(version.starts_with(expected), "unexpected systemd: {version}");
    tb.ok("command -v portablectl && command -v machinectl && machinectl list");
    for installed in ["/usr/bin/portable", "/usr/bin/machine", "/usr/lib/wharf/wharfd"] {
        tb.ok(&format!("test -x {installed}"));
    }
}

fn wharfd_is_activated(tb: &Testbed) {
    tb.ok("systemctl stop wharfd.service");
    assert_eq!(tb.sh("systemctl is-active wharfd.service").stdout.trim(), "inactive");
    let since = tb.ok("date +%s.%N").trim().to_string();
    tb.ok("portable list");
    assert_eq!(tb.ok("systemctl is-active wharfd.service").trim(), "active");
    let version = tb.ok("busctl get-property org.wharf1 /org/wharf1 org.wharf1.Manager Version");
    assert_eq!(version.trim(), format!("s \"{}\"", env!("CARGO_PKG_VERSION")));
    // It logs to the journal, through tracing.
    let journal = tb.ok(&format!("journalctl -q -u wharfd.service --since @{since} -o cat"));
    assert!(journal.contains("serving org.wharf1"), "journal: {journal}");
}

fn list_shows_images(tb: &Testbed) {
    let pool = tb.host_path("/var/lib/portables");
    std::fs::create_dir_all(&pool).unwrap();
    images::foobar(&pool.join("listed_1.raw"), "squashfs", "1").unwrap();
    images::foobar(&pool.join("listed-dir"), "dir", "1").unwrap();

    let json = tb.ok("portable list --json");
    let list: serde_json::Value = serde_json::from_str(&json).unwrap();
    let entry = |name: &str| {
        list.as_array()
            .unwrap()
            .iter()
            .find(|e| e["name"] == name)
            .unwrap_or_else(|| panic!("{name} not listed in {json}"))
            .clone()
    };
    let raw = entry("listed_1.raw");
    assert_eq!(raw["kind"], "squashfs");
    assert_eq!(raw["state"], "detached");
    assert_eq!(raw["path"], "/var/lib/portables/listed_1.raw");
    assert!(raw["size"].as_u64().unwrap() > 0);
    assert_eq!(entry("listed-dir")["kind"], "directory");

    let table = tb.ok("portable list");
    assert!(table.starts_with("NAME"), "{table}");
    assert!(table.lines().any(|l| l.starts_with("listed_1.raw ") && l.contains("squashfs")), "{table}");
}

fn unprivileged_callers(tb: &Testbed) {
    let pool = tb.host_path("/var/lib/portables");
    std::fs::create_dir_all(&pool).unwrap();
    images::foobar(&pool.join("guarded.raw"), "squashfs", "1").unwrap();

    let listed = tb.sh_nobody("portable list --json");
    assert!(listed.success(), "{listed}");
    assert!(listed.stdout.contains("guarded.raw"), "{listed}");

    let refused = tb.sh_nobody("portable read-only guarded.raw");
    assert_eq!(refused.code, Some(1), "{refused}");
    assert_eq!(
        refused.stderr.trim(),
        "portable: access denied: marking an image read-only needs authorization for org.wharf1.portable.attach (caller is uid 65534)"
    );
    assert_eq!(tb.ok("stat -c %a /var/lib/portables/guarded.raw").trim(), "644");

    tb.ok("portable read-only guarded.raw");
    assert_eq!(tb.ok("stat -c %a /var/lib/portables/guarded.raw").trim(), "444");
    assert!(tb.ok("portable list --json").contains(r#""name":"guarded.raw","path":"/var/lib/portables/guarded.raw","kind":"squashfs","state":"detached","attached_by":"","read_only":true"#));
    tb.ok("portable read-only guarded.raw no");
    assert_eq!(tb.ok("stat -c %a /var/lib/portables/guarded.raw").trim(), "644");

    let missing = tb.fails("portable read-only no-such-image");
    assert!(missing.stderr.starts_with("portable: image 'no-such-image' not found in the search path ("), "{missing}");
    assert_eq!(missing.stderr.lines().count(), 1, "{missing}");
}

fn wharfd_exits_when_idle(tb: &Testbed) {
    tb.ok(
        "mkdir -p /run/systemd/system/wharfd.service.d && printf '[Service]\\nExecStart=\\nExecStart=/usr/lib/wharf/wharfd --idle-timeout=1\\n' \
         > /run/systemd/system/wharfd.service.d/50-idle.conf && systemctl daemon-reload && systemctl stop wharfd",
    );
    tb.ok("portable list >/dev/null");
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut state = String::new();
    while Instant::now() < deadline {
        state = tb.sh("systemctl is-active wharfd.service").stdout.trim().to_string();
        if state == "inactive" {
            break;
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    let result = tb.sh("systemctl show -p Result --value wharfd.service").stdout;
    tb.ok("rm -r /run/systemd/system/wharfd.service.d && systemctl daemon-reload");
    assert_eq!(state, "inactive", "wharfd still {state} 10 s after its last call");
    assert_eq!(result.trim(), "success", "wharfd did not exit cleanly");
    // And the next call activates it again.
    tb.ok("portable list >/dev/null");
}

/// dbus/org.wharf1.xml documents exactly what the live daemon exports:
/// the same interfaces, members and signatures.
fn introspection_matches(tb: &Testbed) {
    let live = tb.ok("busctl introspect --xml-interface org.wharf1 /org/wharf1");
    let documented = std::fs::read_to_string(crate::testbed::install::repo_dir().join("dbus/org.wharf1.xml")).unwrap();
    assert_eq!(interface_shape(&documented), interface_shape(&live), "dbus/org.wharf1.xml differs from wharfd");
}

/// Each org.wharf1 member as one comparable line.
fn interface_shape(xml: &str) -> Vec<String> {
    let options = roxmltree::ParsingOptions { allow_dtd: true, ..Default::default() };
    let doc = roxmltree::Document::parse_with_options(xml, options).expect("introspection XML parses");
    let mut shape = Vec::new();
    for iface in doc.descendants().filter(|n| n.has_tag_name("interface")) {
        let iface_name = iface.attribute("name").unwrap_or_default();
        if !iface_name.starts_with("org.wharf1.") {
            continue;
        }
        for member in iface.children().filter(|n| n.is_element()) {
            let args: Vec<String> = member
                .children()
                .filter(|n| n.has_tag_name("arg"))
                .map(|arg| {
                    format!("{}:{}", arg.attribute("direction").unwrap_or("in"), arg.attribute("type").unwrap_or(""))
                })
                .collect();
            let extra = match member.tag_name().name() {
                "property" => {
                    format!("{} {}", member.attribute("type").unwrap_or(""), member.attribute("access").unwrap_or(""))
                }
                _ => args.join(","),
            };
            let kind = member.tag_name().name();
            let name = member.attribute("name").unwrap_or_default();
            shape.push(format!("{iface_name} {kind} {name}({extra})"));
        }
    }
    shape.sort();
    shape
}
