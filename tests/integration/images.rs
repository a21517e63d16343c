//! Reading images: `portable inspect` on every kind, by root and by an
//! unprivileged user, and every kind of bad input refused with one line
//! that names the image and the reason, leaving nothing behind.

use std::sync::Arc;

use libtest_mimic::Trial;

use crate::testbed::{Testbed, images};
use crate::{Shared, trial};

pub fn trials(shared: &Arc<Shared>) -> Vec<Trial> {
    vec![trial(shared, "images::inspect_a_directory_image", inspect_directory)]
}

/// Builds foobar in `format` at `inner` (a path inside the testbed).
pub fn build(tb: &Testbed, inner: &str, format: &str, version: &str) {
    let host = tb.host_path(inner);
    std::fs::create_dir_all(host.parent().unwrap()).unwrap();
    images::foobar(&host, format, version).unwrap();
}

fn inspect_directory(tb: &Testbed) {
    build(tb, "/srv/images/inspect-dir/foobar", "dir", "3");
    let json = tb.ok("portable inspect --json /srv/images/inspect-dir/foobar");
    let info: serde_json::Value = serde_json::from_str(&json).unwrap();
    assert_eq!(info["kind"], "directory");
    assert_eq!(info["os_release"]["VERSION_ID"], "3");
    assert_eq!(info["prefixes"], serde_json::json!(["foobar"]));
    let units: Vec<&str> = info["units"].as_array().unwrap().iter().map(|u| u["name"].as_str().unwrap()).collect();
    assert_eq!(units, ["foobar-hello.service", "foobar.service"]);

    let text = tb.ok("cd /srv/images/inspect-dir && portable inspect --cat ./foobar");
    assert!(text.contains("foobar 3 (a wharf sample portable service)"), "{text}");
    assert!(text.contains("ExecStart=/usr/bin/busybox httpd"), "{text}");

    // An unprivileged user may inspect what they can read.
    let out = tb.sh_nobody("portable inspect /srv/images/inspect-dir/foobar");
    assert!(out.success(), "{out}");
}
