//! Pulls over HTTP, from a server on the testbed's loopback: `machine
//! pull-tar` and `pull-raw`, `portable pull`, each verified against a
//! SHA256SUMS signed in the test by a throwaway key. Then the attacks: a
//! changed image, a changed SHA256SUMS, a signature by another key, a
//! truncated download, a missing file, an unreachable server, a URL that is
//! not a web one, a caller that is not root. Each fails in one line and
//! leaves nothing: no image, no temporary, no fetcher unit.

use std::sync::Arc;

use libtest_mimic::Trial;

use crate::testbed::{Testbed, images, run_host};
use crate::{Shared, trial};

pub fn trials(shared: &Arc<Shared>) -> Vec<Trial> {
    vec![trial(shared, "pull::verified_pulls_boot_and_every_tampering_is_refused_leaving_nothing", pulls)]
}

const SERVER: &str = "http://127.0.0.1:8642";
const SHORT_SERVER: &str = "http://127.0.0.1:8643";
const STALLED_SERVER: &str = "http://127.0.0.1:8644";

/// A key pair in its own GnuPG home, made without a passphrase.
pub(crate) fn make_key(tb: &Testbed, home: &str, who: &str) {
    tb.ok(&format!(
        "mkdir -p -m 700 {home} && GNUPGHOME={home} gpg --batch --quiet --pinentry-mode loopback --passphrase '' \
         --quick-gen-key '{who} <{who}@wharf.test>' ed25519 sign never"
    ));
}

/// Signs `file` (detached, binary) with the key in `home`, as `file.gpg`.
pub(crate) fn sign(tb: &Testbed, home: &str, file: &str) {
    tb.ok(&format!(
        "GNUPGHOME={home} gpg --batch --quiet --yes --pinentry-mode loopback --passphrase '' \
         --detach-sign --output {file}.gpg {file}"
    ));
}

/// Nothing of a pull of `name` is left: no image, no temporary, no scratch
/// directory of a signature check, no fetcher unit.
#[track_caller]
pub(crate) fn nothing_left(tb: &Testbed, name: &str) {
    let left = tb.ok(&format!(
        "ls -A /var/lib/machines /var/lib/portables 2>/dev/null | grep -e '^{name}$' -e '^{name}.raw$' -e '^\\.#wharf-import-{name}-' || true"
    ));
    assert_eq!(left.trim(), "", "{name} left in a pool");
    assert_eq!(tb.ok("ls -A /run/wharf | grep '^\\.#wharf-verify-' || true").trim(), "", "a scratch directory left");
    wait_no_fetcher(tb);
}

/// A pull refused in one line containing `reason`, which left the image
/// there was before as it was.
#[track_caller]
fn refused_keeping(tb: &Testbed, command: &str, reason: &str) {
    let before = tb.ok("sha256sum /var/lib/machines/pulled.raw");
    let out = tb.fails(command);
    assert_eq!(out.stderr.trim_end().lines().count(), 1, "{command}: {out}");
    assert!(out.stderr.contains(reason), "{command}: wanted {reason:?}: {out}");
    assert_eq!(tb.ok("sha256sum /var/lib/machines/pulled.raw"), before, "{command} changed the image");
    wait_no_fetcher(tb);
}

/// /var/lib/machines/pulled.raw is the testbed's `served` decompressed
/// (compared on the host: the testbed has no xz).
#[track_caller]
fn assert_pulled_is(tb: &Testbed, served: &str) {
    run_host(
        std::process::Command::new("sh").arg("-c").arg(format!(
            "xz -dc {} | cmp - {}",
            tb.host_path(served).display(),
            tb.host_path("/var/lib/machines/pulled.raw").display()
        )),
        "comparing the pulled image with what was served",
    )
    .unwrap();
}

/// Waits until no fetcher unit is loaded (one that was stopped goes a
/// moment after its pull returned).
#[track_caller]
pub(crate) fn wait_no_fetcher(tb: &Testbed) {
    tb.ok("for i in $(seq 300); do [ -z \"$(systemctl list-units --all --no-legend --plain 'wharf-fetch-*')\" ] && exit 0; sleep 0.1; done; exit 1");
}

/// A pull that fails with one line containing `reason`, and leaves nothing.
#[track_caller]
pub(crate) fn refused(tb: &Testbed, command: &str, name: &str, reason: &str) {
    let out = tb.fails(command);
    let message = out.stderr.trim_end();
    assert_eq!(message.lines().count(), 1, "{command}: {out}");
    assert!(message.starts_with("machine: ") || message.starts_with("portable: "), "{command}: {out}");
    assert!(message.contains(reason), "{command}: wanted {reason:?}: {out}");
    nothing_left(tb, name);
}

fn pulls(tb: &Testbed) {
    // What is served: f28 as a tar.xz, foobar as a raw.xz, each listed in a
    // SHA256SUMS signed by the key the import keyring holds.
    let www = tb.host_path("/srv/www");
    std::fs::create_dir_all(&www).unwrap();
    std::fs::copy(images::f28_tarball().unwrap(), www.join("pf28.tar.xz")).unwrap();
    images::foobar(&www.join("pulled.raw.xz"), "xz", "3").unwrap();
    std::fs::create_dir_all(www.join("v4")).unwrap();
    images::foobar(&www.join("v4/pulled.raw.xz"), "xz", "4").unwrap();
    make_key(tb, "/srv/gpg-good", "good");
    make_key(tb, "/srv/gpg-other", "other");
    tb.ok("mkdir -p /etc/wharf && GNUPGHOME=/srv/gpg-good gpg --batch --export > /etc/wharf/import-pubring.pgp");
    tb.ok("cd /srv/www && sha256sum pf28.tar.xz pulled.raw.xz > SHA256SUMS");
    sign(tb, "/srv/gpg-good", "/srv/www/SHA256SUMS");
    // The attacks, each in a directory of its own:
    // the image changed after signing (one byte),
    tb.ok("mkdir -p /srv/www/changed && cd /srv/www/changed && cp ../SHA256SUMS ../SHA256SUMS.gpg ../pulled.raw.xz . \
           && printf 'X' | dd of=pulled.raw.xz bs=1 seek=2000 conv=notrunc status=none");
    // SHA256SUMS changed after signing (to list the changed image),
    tb.ok("mkdir -p /srv/www/resummed && cd /srv/www/resummed && cp ../changed/pulled.raw.xz ../SHA256SUMS.gpg . \
           && sha256sum pulled.raw.xz > SHA256SUMS");
    // signed by a key the keyring does not hold,
    tb.ok("mkdir -p /srv/www/stranger && cd /srv/www/stranger && cp ../pulled.raw.xz ../SHA256SUMS .");
    sign(tb, "/srv/gpg-other", "/srv/www/stranger/SHA256SUMS");
    // with no SHA256SUMS at all, but a FILE.sha256 holding the digest alone.
    tb.ok("mkdir -p /srv/www/single && cd /srv/www/single && cp ../pulled.raw.xz . \
           && sha256sum pulled.raw.xz | cut -d' ' -f1 > pulled.raw.xz.sha256");
    tb.ok("GNUPGHOME=/srv/gpg-good gpgconf --kill all; GNUPGHOME=/srv/gpg-other gpgconf --kill all");
    std::fs::write(tb.host_path("/srv/short_server.py"), SHORT_SERVER_PY).unwrap();
    tb.ok(
        "systemd-run --unit=wharf-test-httpd -p WorkingDirectory=/srv/www python3 -m http.server --bind 127.0.0.1 8642",
    );
    tb.ok("systemd-run --unit=wharf-test-short python3 /srv/short_server.py 8643 short");
    tb.ok("systemd-run --unit=wharf-test-stalled python3 /srv/short_server.py 8644 stall");
    for url in [SERVER, SHORT_SERVER, STALLED_SERVER] {
        tb.ok(&format!(
            "for i in $(seq 300); do python3 -c 'import urllib.request, sys; urllib.request.urlopen(sys.argv[1] + \"/SHA256SUMS\")' {url} \
             >/dev/null 2>&1 && exit 0; sleep 0.1; done; exit 1"
        ));
    }

    // A tree, verified by signature (the default), boots.
    let out = tb.ok(&format!("machine pull-tar {SERVER}/pf28.tar.xz"));
    assert_eq!(out.trim(), "Pulled /var/lib/machines/pf28.");
    // Its audit entry says where it came from.
    tb.ok(&format!(
        "for i in $(seq 100); do machine history --json pf28 | grep -qF '\"URL\":[\"{SERVER}/pf28.tar.xz\"]' && exit 0; sleep 0.1; done; exit 1"
    ));
    tb.ok("machine start pf28");
    tb.ok("for i in $(seq 300); do [ \"$(systemctl -M pf28 is-system-running 2>/dev/null)\" = running ] && exit 0; sleep 0.1; done; exit 1");
    tb.ok("machine poweroff pf28");
    tb.ok("for i in $(seq 300); do machinectl show pf28 >/dev/null 2>&1 || exit 0; sleep 0.1; done; exit 1");
    tb.ok("machine remove pf28");

    // A raw image: the bytes the server has, decompressed; --read-only holds.
    let out = tb.ok(&format!("machine pull-raw --read-only --json {SERVER}/pulled.raw.xz"));
    assert_eq!(out.trim(), r#"{"path":"/var/lib/machines/pulled.raw"}"#);
    assert_pulled_is(tb, "/srv/www/pulled.raw.xz");
    // The digest its audit entry records is the image's, hashed as it was written.
    let digest = tb.ok("sha256sum /var/lib/machines/pulled.raw | cut -d' ' -f1");
    tb.ok(&format!(
        "for i in $(seq 100); do machine history --json pulled | grep -qF '\"IMAGE_SHA256\":[\"{}\"]' && exit 0; sleep 0.1; done; \
         machine history --json pulled; exit 1",
        digest.trim()
    ));
    assert!(tb.ok("machine list-images --json").contains(r#""name":"pulled.raw","path":"/var/lib/machines/pulled.raw","kind":"squashfs","state":"stopped","read_only":true"#));
    let out = tb.fails(&format!("machine pull-raw --verify=no {SERVER}/pulled.raw.xz"));
    assert!(out.stderr.contains("exists already"), "{out}");
    // --force replaces it once the new one is complete, but never a
    // read-only one.
    let newer = format!("{SERVER}/v4/pulled.raw.xz");
    refused_keeping(tb, &format!("machine pull-raw --verify=no --force {newer}"), "is read-only");
    tb.ok("machine read-only pulled no");
    let out = tb.ok(&format!("machine pull-raw --verify=no --force {newer}"));
    assert_eq!(out.trim(), "Pulled /var/lib/machines/pulled.raw.");
    assert_pulled_is(tb, "/srv/www/v4/pulled.raw.xz");
    assert_eq!(tb.ok("ls -A /var/lib/machines | grep -c '^\\.#wharf-' || true").trim(), "0", "asides left");
    tb.ok("machine remove pulled");

    // Into the portable pool, by checksum from a FILE.sha256.
    let out = tb.ok(&format!("portable pull --verify=checksum {SERVER}/single/pulled.raw.xz pullp_1"));
    assert_eq!(out.trim(), "Pulled /var/lib/portables/pullp_1.raw.");
    assert!(tb.ok("portable list --json").contains(r#""name":"pullp_1.raw""#));
    tb.ok("portable remove pullp_1");
    nothing_left(tb, "pullp_1");
    // Signature checks need a SHA256SUMS.gpg next to the sums it signs.
    refused(
        tb,
        &format!("portable pull {SERVER}/single/pulled.raw.xz pullp_2"),
        "pullp_2",
        "the server has no signature of it (neither http://127.0.0.1:8642/single/pulled.raw.xz.sha256.gpg nor ",
    );

    // The attacks.
    refused(
        tb,
        &format!("machine pull-raw {SERVER}/changed/pulled.raw.xz attacked"),
        "attacked",
        "its SHA-256 digest is",
    );
    refused(
        tb,
        &format!("machine pull-raw {SERVER}/resummed/pulled.raw.xz attacked"),
        "attacked",
        "SHA256SUMS.gpg: the signature does not match the file",
    );
    refused(
        tb,
        &format!("machine pull-raw {SERVER}/stranger/pulled.raw.xz attacked"),
        "attacked",
        "which /etc/wharf/import-pubring.pgp does not hold",
    );
    refused(
        tb,
        &format!("machine pull-raw --verify=no {SHORT_SERVER}/short.raw.xz attacked"),
        "attacked",
        "short.raw.xz: ",
    );
    refused(
        tb,
        &format!("machine pull-raw --verify=no {SERVER}/missing.raw.xz attacked"),
        "attacked",
        "the server has no such file (HTTP 404)",
    );
    refused(
        tb,
        &format!("machine pull-tar --verify=checksum {SERVER}/missing/f.tar.xz attacked"),
        "attacked",
        "the server has no list of digests (neither http://127.0.0.1:8642/missing/SHA256SUMS nor http://127.0.0.1:8642/missing/f.tar.xz.sha256)",
    );
    refused(tb, "machine pull-raw --verify=no http://127.0.0.1:9/x.raw attacked", "attacked", "127.0.0.1");
    refused(tb, "machine pull-raw file:///etc/shadow attacked", "attacked", "only http:// and https:// URLs");
    refused(tb, &format!("machine pull-raw --verify=no {SERVER}/pulled.raw.xz ../attacked"), "attacked", "'/'");
    // Data that is neither image nor archive: refused as what it is.
    refused(tb, &format!("machine pull-raw --verify=no {SERVER}/SHA256SUMS attacked"), "attacked", "not a raw image");
    // Only root pulls.
    let out = tb.fails(&format!(
        "setpriv --reuid=nobody --regid=nogroup --clear-groups machine pull-raw {SERVER}/pulled.raw.xz attacked"
    ));
    assert!(out.stderr.contains("pulling an image") && out.stderr.lines().count() == 1, "{out}");
    nothing_left(tb, "attacked");
    // Without a keyring a signed pull is refused before anything is fetched.
    tb.ok("mv /etc/wharf/import-pubring.pgp /srv/keyring.pgp");
    refused(tb, &format!("machine pull-raw {SERVER}/pulled.raw.xz attacked"), "attacked", "no import keyring");
    tb.ok("mv /srv/keyring.pgp /etc/wharf/import-pubring.pgp");

    // A pull from a server that stalls: listed as a transfer while its
    // fetcher runs as a user of its own with no capabilities, and
    // cancelled, with nothing left.
    tb.ok(&format!(
        "systemd-run --unit=wharf-test-pull-stalled machine pull-raw --verify=no {STALLED_SERVER}/stalled.raw.xz stalled"
    ));
    tb.ok("for i in $(seq 300); do machine list-transfers | grep -q 'pull-raw.*stalled' && exit 0; sleep 0.1; done; exit 1");
    let fetcher = tb.ok("systemctl list-units --no-legend --plain 'wharf-fetch-*' | cut -d' ' -f1");
    // Active (Type=exec): past the exec, running as what it will run as.
    tb.ok(&format!(
        "for i in $(seq 300); do systemctl is-active -q {} && exit 0; sleep 0.1; done; exit 1",
        fetcher.trim()
    ));
    let pid = tb.ok(&format!("systemctl show -p MainPID --value {}", fetcher.trim()));
    let status = tb.ok(&format!("cat /proc/{}/status", pid.trim()));
    let field = |name: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .unwrap_or_default()
            .split_whitespace()
            .next()
            .unwrap_or_default()
            .to_string()
    };
    assert_ne!(field("Uid:"), "0", "the fetcher runs as root:\n{status}");
    assert_eq!(field("CapEff:"), "0000000000000000", "{status}");
    assert_eq!(field("CapBnd:"), "0000000000000000", "{status}");
    assert_eq!(field("NoNewPrivs:"), "1", "{status}");
    let transfers: serde_json::Value = serde_json::from_str(&tb.ok("machine list-transfers --json")).unwrap();
    let id =
        transfers.as_array().unwrap().iter().find(|t| t["local"] == "stalled").expect("the stalled pull")["id"].clone();
    tb.ok(&format!("machine cancel-transfer {id}"));
    tb.ok("for i in $(seq 300); do systemctl is-active -q wharf-test-pull-stalled || exit 0; sleep 0.1; done; exit 1");
    assert_ne!(tb.ok("systemctl show -p ExecMainStatus --value wharf-test-pull-stalled").trim(), "0");
    let said = tb.ok("journalctl -q -o cat -u wharf-test-pull-stalled");
    assert!(said.contains("the transfer was cancelled"), "{said}");
    tb.sh("systemctl reset-failed wharf-test-pull-stalled");
    wait_no_fetcher(tb);
    nothing_left(tb, "stalled");

    // A client interrupted (^C) takes its transfer with it: a pull, and an
    // import from a pipe that never ends.
    for (unit, command, listed, name) in [
        (
            "wharf-test-pull-interrupted",
            format!("machine pull-raw --verify=no {STALLED_SERVER}/stalled.raw.xz stalled"),
            "pull-raw.*stalled",
            "stalled",
        ),
        (
            "wharf-test-import-interrupted",
            "sh -c 'sleep 600 | machine import-raw - never'".to_string(),
            "import-raw.*never",
            "never",
        ),
    ] {
        tb.ok(&format!("systemd-run --unit={unit} {command}"));
        tb.ok(&format!(
            "for i in $(seq 300); do machine list-transfers | grep -q '{listed}' && exit 0; sleep 0.1; done; exit 1"
        ));
        tb.ok(&format!("systemctl kill -s INT {unit}"));
        tb.ok(&format!(
            "for i in $(seq 300); do machine list-transfers | grep -q '{listed}' || exit 0; sleep 0.1; done; exit 1"
        ));
        wait_no_fetcher(tb);
        tb.sh(&format!("systemctl stop {unit}; systemctl reset-failed {unit}"));
        nothing_left(tb, name);
    }

    // Imports read standard input when the file is -.
    let out = tb.ok("cat /srv/www/pulled.raw.xz | machine import-raw - stdinimg");
    assert_eq!(out.trim(), "Imported /var/lib/machines/stdinimg.raw.");
    tb.ok("machine remove stdinimg");
    let out = tb.fails("machine import-raw - < /srv/www/pulled.raw.xz");
    assert!(out.stderr.contains("needs an image name"), "{out}");

    tb.ok("systemctl stop wharf-test-httpd wharf-test-short wharf-test-stalled");
}

/// A server (`PORT short|stall`) that promises 100000 bytes and sends 10,
/// then closes (short) or sends nothing more (stall).
pub const SHORT_SERVER_PY: &str = r#"
import http.server, sys, time
port, how = int(sys.argv[1]), sys.argv[2]
class Short(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        self.send_response(200)
        self.send_header("Content-Length", "100000")
        self.end_headers()
        self.wfile.write(b"0123456789")
        self.wfile.flush()
        if how == "stall" and not self.path.endswith("/SHA256SUMS"):
            time.sleep(600)
        self.close_connection = True
http.server.ThreadingHTTPServer(("127.0.0.1", port), Short).serve_forever()
"#;
