//! Registry pulls, from a docker-registry on the testbed's loopback: an
//! OCI layout built here (three layers: gzip, plain and zstd; the second
//! whites out a file of the first, makes a directory opaque and writes
//! through a symlink to `/`), pushed with skopeo. `machine pull-oci` gives
//! the tree the layers mean; `portable pull-oci` a squashfs whose service,
//! made from the image config, runs the entrypoint once attached. Then
//! the attacks: a blob changed in the registry's storage, a manifest that
//! is not the one its pinned digest names, a digest the registry does not
//! have, an index without this host's architecture, a caller that is not
//! root. Each fails in one line and leaves nothing. Last, a registry that
//! wants Bearer tokens from a token server of the test's, as Docker Hub
//! does: the pull asks for the token and uses it; a token server that
//! answers junk, signs with another key, drips its answer, or a realm off
//! the loopback over plain HTTP, is refused in one line.

use std::io::Write;
use std::path::Path;
use std::sync::Arc;

use libtest_mimic::Trial;
use sha2::Digest as _;

use crate::testbed::Testbed;
use crate::{Shared, exclusive_trial};

pub fn trials(shared: &Arc<Shared>) -> Vec<Trial> {
    // Exclusive: it adds and removes images in both pools, which other
    // trials list.
    vec![exclusive_trial(shared, "oci::registry_pulls_apply_layers_verify_blobs_and_run_the_entrypoint", pulls)]
}

const REGISTRY: &str = "127.0.0.1:5000";
const STORAGE: &str = "/var/lib/docker-registry/docker/registry/v2/blobs/sha256";

fn sha256(data: &[u8]) -> String {
    sha2::Sha256::digest(data).iter().map(|b| format!("{b:02x}")).collect()
}

/// The registries' name of this host's architecture, and one it is not.
fn architectures() -> (&'static str, &'static str) {
    let ours = match std::env::consts::ARCH {
        "x86_64" => "amd64",
        "aarch64" => "arm64",
        other => other,
    };
    (ours, if ours == "s390x" { "amd64" } else { "s390x" })
}

/// A blob written into the layout; its descriptor.
fn blob(layout: &Path, media_type: &str, data: &[u8]) -> serde_json::Value {
    let hex = sha256(data);
    std::fs::write(layout.join("blobs/sha256").join(&hex), data).unwrap();
    serde_json::json!({ "mediaType": media_type, "digest": format!("sha256:{hex}"), "size": data.len() })
}

fn tar_of(build: impl FnOnce(&mut tar::Builder<Vec<u8>>)) -> Vec<u8> {
    let mut builder = tar::Builder::new(Vec::new());
    builder.mode(tar::HeaderMode::Deterministic);
    build(&mut builder);
    builder.into_inner().unwrap()
}

/// A header owned by root, of the epoch.
fn header() -> tar::Header {
    let mut header = tar::Header::new_gnu();
    header.set_uid(0);
    header.set_gid(0);
    header.set_mtime(0);
    header
}

fn add(builder: &mut tar::Builder<Vec<u8>>, path: &str, mode: u32, data: &[u8]) {
    let mut header = header();
    header.set_size(data.len() as u64);
    header.set_mode(mode);
    header.set_entry_type(tar::EntryType::Regular);
    builder.append_data(&mut header, path, data).unwrap();
}

fn dir(builder: &mut tar::Builder<Vec<u8>>, path: &str) {
    let mut header = header();
    header.set_size(0);
    header.set_mode(0o755);
    header.set_entry_type(tar::EntryType::Directory);
    builder.append_data(&mut header, path, &[][..]).unwrap();
}

fn symlink(builder: &mut tar::Builder<Vec<u8>>, path: &str, target: &str) {
    let mut header = header();
    header.set_size(0);
    header.set_mode(0o777);
    header.set_entry_type(tar::EntryType::Symlink);
    builder.append_link(&mut header, path, target).unwrap();
}

/// The OCI layout at /srv/oci/layout: `v1` (the image), `pinned` (the same
/// with an annotation: another manifest digest) and `multi` (an index
/// naming only another architecture).
fn build_layout(tb: &Testbed) {
    // The testbed's own /bin/sh and what it loads, resolved inside it.
    tb.ok("rm -rf /srv/oci && mkdir -p /srv/oci/rootfs && \
           for f in /bin/sh /etc/ld.so.cache $(ldd /bin/sh | grep -o '/[^ ]*'); do \
             mkdir -p /srv/oci/rootfs$(dirname $f) && cp -L $f /srv/oci/rootfs$f || exit 1; done");
    let files = tb.ok("cd /srv/oci/rootfs && find . -type f | sort");
    let rootfs = tb.host_path("/srv/oci/rootfs");
    let lower = tar_of(|b| {
        for file in files.lines() {
            let data = std::fs::read(rootfs.join(file)).unwrap();
            add(b, file.trim_start_matches("./"), 0o755, &data);
        }
        dir(b, "etc");
        add(b, "etc/motd", 0o644, b"whited out by the second layer\n");
        add(b, "etc/hostname", 0o644, b"oci\n");
        dir(b, "data");
        add(b, "data/old", 0o644, b"emptied by the opaque marker\n");
        dir(b, "data/sub");
        add(b, "data/sub/old", 0o644, b"also\n");
        // A symlink out of the image, which the next layer writes through.
        symlink(b, "escape", "/");
    });
    let middle = tar_of(|b| {
        dir(b, "etc");
        add(b, "etc/.wh.motd", 0o644, b"");
        dir(b, "data");
        add(b, "data/.wh..wh..opq", 0o644, b"");
        add(b, "data/new", 0o644, b"the third layer's\n");
        add(b, "escape/tmp/oci-escaped", 0o644, b"inside the image, never on the host\n");
    });
    let upper = tar_of(|b| add(b, "usr/share/oci/zstd-layer", 0o644, b"zstd\n"));
    let layout = tb.host_path("/srv/oci/layout");
    std::fs::create_dir_all(layout.join("blobs/sha256")).unwrap();
    std::fs::write(layout.join("oci-layout"), br#"{"imageLayoutVersion":"1.0.0"}"#).unwrap();
    let mut gzip = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    gzip.write_all(&lower).unwrap();
    let gzip = gzip.finish().unwrap();
    let zstd = zstd::encode_all(&upper[..], 3).unwrap();
    let layers = [
        blob(&layout, "application/vnd.oci.image.layer.v1.tar+gzip", &gzip),
        blob(&layout, "application/vnd.oci.image.layer.v1.tar", &middle),
        blob(&layout, "application/vnd.oci.image.layer.v1.tar+zstd", &zstd),
    ];
    let (ours, other) = architectures();
    let diff_ids: Vec<String> = [&lower, &middle, &upper].iter().map(|l| format!("sha256:{}", sha256(l))).collect();
    let config = serde_json::json!({
        "architecture": ours,
        "os": "linux",
        "config": {
            "Entrypoint": ["/bin/sh", "-c"],
            "Cmd": ["echo \"oci entrypoint ran: $GREETING in $PWD\""],
            "Env": ["GREETING=hello from the config", "PATH=/bin"],
            "WorkingDir": "/data",
            "ExposedPorts": { "8080/tcp": {} },
        },
        "rootfs": {
            "type": "layers",
            "diff_ids": diff_ids,
        },
    });
    let config = blob(&layout, "application/vnd.oci.image.config.v1+json", config.to_string().as_bytes());
    let manifest = |annotations: serde_json::Value| {
        serde_json::json!({
            "schemaVersion": 2,
            "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "config": config,
            "layers": layers,
            "annotations": annotations,
        })
        .to_string()
    };
    let manifest_type = "application/vnd.oci.image.manifest.v1+json";
    let image = blob(&layout, manifest_type, manifest(serde_json::json!({})).as_bytes());
    let pinned = blob(&layout, manifest_type, manifest(serde_json::json!({ "wharf.test": "pinned" })).as_bytes());
    let mut foreign = image.clone();
    foreign["platform"] = serde_json::json!({ "architecture": other, "os": "linux" });
    let index = serde_json::json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.index.v1+json",
        "manifests": [foreign],
    });
    let index = blob(&layout, "application/vnd.oci.image.index.v1+json", index.to_string().as_bytes());
    let named = |mut descriptor: serde_json::Value, name: &str| {
        descriptor["annotations"] = serde_json::json!({ "org.opencontainers.image.ref.name": name });
        descriptor
    };
    let top = serde_json::json!({
        "schemaVersion": 2,
        "manifests": [named(image, "v1"), named(pinned.clone(), "pinned"), named(index, "multi")],
    });
    std::fs::write(layout.join("index.json"), top.to_string()).unwrap();
}

/// A token server as distribution's token auth expects one: for
/// `GET /token?service=S&scope=repository:NAME:ACTIONS` it answers a JWT
/// (RS256, its certificate in `x5c`) granting those actions, signed by
/// `token.key`. What it does is read from `mode` at each request: `good`,
/// `junk` (no token), `otherkey` (signed by a key the registry does not
/// trust) or `drip` (a byte a second). It logs each request's path.
const TOKEN_SERVER: &str = r#"
import base64, json, subprocess, time, urllib.parse
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
DIR = "/srv/oci-token"
def b64url(data):
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()
def certificate():
    return "".join(l for l in open(DIR + "/token.crt").read().splitlines() if "-----" not in l)
def token(key, scope, service):
    _, name, actions = scope.split(":")
    now = int(time.time())
    header = {"typ": "JWT", "alg": "RS256", "x5c": [certificate()]}
    claims = {"iss": "wharf-test-issuer", "sub": "", "aud": service, "exp": now + 300, "nbf": now - 60,
              "iat": now, "jti": str(time.time_ns()),
              "access": [{"type": "repository", "name": name, "actions": actions.split(",")}]}
    signing = b64url(json.dumps(header).encode()) + "." + b64url(json.dumps(claims).encode())
    signature = subprocess.run(["openssl", "dgst", "-sha256", "-sign", key], input=signing.encode(),
                               capture_output=True, check=True).stdout
    return signing + "." + b64url(signature)
class Handler(BaseHTTPRequestHandler):
    def do_GET(self):
        with open(DIR + "/requests", "a") as log:
            log.write(self.path + "\n")
        mode = open(DIR + "/mode").read().strip()
        if mode == "drip":
            self.send_response(200)
            self.send_header("Content-Length", "1000")
            self.end_headers()
            for _ in range(1000):
                self.wfile.write(b" ")
                self.wfile.flush()
                time.sleep(1)
            return
        if mode == "junk":
            body = b"<html>no token here</html>"
        else:
            query = urllib.parse.parse_qs(urllib.parse.urlparse(self.path).query)
            key = DIR + ("/other.key" if mode == "otherkey" else "/token.key")
            body = json.dumps({"token": token(key, query["scope"][0], query["service"][0]), "expires_in": 300}).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)
ThreadingHTTPServer(("127.0.0.1", 5003), Handler).serve_forever()
"#;

/// Waits until something answers HTTP at `url` (any status).
#[track_caller]
fn wait_for_http(tb: &Testbed, url: &str, unit: &str) {
    tb.ok(&format!(
        "for i in $(seq 300); do python3 -c 'import urllib.request, urllib.error\ntry: urllib.request.urlopen(\"{url}\")\nexcept urllib.error.HTTPError: pass' \
         >/dev/null 2>&1 && exit 0; sleep 0.1; done; journalctl -u {unit}; exit 1"
    ));
}

fn token_auth(tb: &Testbed) {
    tb.ok("mkdir -p /srv/oci-token && cd /srv/oci-token && \
           openssl req -x509 -newkey rsa:2048 -nodes -keyout token.key -out token.crt -days 2 -subj /CN=wharf-test-token 2>/dev/null && \
           openssl genrsa -out other.key 2048 2>/dev/null && echo junk > mode");
    std::fs::write(tb.host_path("/srv/oci-token/server.py"), TOKEN_SERVER).unwrap();
    // The anonymous registry's storage, behind token auth.
    std::fs::write(
        tb.host_path("/srv/oci-token/config.yml"),
        "version: 0.1\nstorage:\n  filesystem:\n    rootdirectory: /var/lib/docker-registry\nhttp:\n  addr: 127.0.0.1:5002\n\
         auth:\n  token:\n    realm: http://127.0.0.1:5003/token\n    service: wharf-test\n    issuer: wharf-test-issuer\n\
         \x20   rootcertbundle: /srv/oci-token/token.crt\n",
    )
    .unwrap();
    tb.ok("systemd-run --unit=wharf-test-token python3 /srv/oci-token/server.py");
    tb.ok("systemd-run --unit=wharf-test-registry-token /usr/bin/docker-registry serve /srv/oci-token/config.yml");
    // The same, but its realm is a token server elsewhere, over plain HTTP.
    tb.ok("systemd-run --unit=wharf-test-registry-elsewhere -E REGISTRY_HTTP_ADDR=127.0.0.1:5004 \
           -E REGISTRY_AUTH_TOKEN_REALM=http://192.0.2.1/token /usr/bin/docker-registry serve /srv/oci-token/config.yml");
    wait_for_http(tb, "http://127.0.0.1:5003/token", "wharf-test-token");
    for port in [5002, 5004] {
        wait_for_http(tb, &format!("http://127.0.0.1:{port}/v2/"), "wharf-test-registry-token");
    }
    // Without a token the registry refuses: what gets in used one.
    let anonymous = tb.ok(
        "python3 -c 'import urllib.request, urllib.error\ntry: urllib.request.urlopen(\"http://127.0.0.1:5002/v2/wharf/app/manifests/v1\")\n\
         except urllib.error.HTTPError as e: print(e.code, e.headers[\"WWW-Authenticate\"])'",
    );
    assert!(anonymous.starts_with("401 Bearer realm=\"http://127.0.0.1:5003/token\""), "{anonymous}");
    tb.ok("echo good > /srv/oci-token/mode && : > /srv/oci-token/requests");

    let out = tb.ok("machine pull-oci 127.0.0.1:5002/wharf/app:v1 ocitoken");
    assert_eq!(out.trim(), "Pulled /var/lib/machines/ocitoken.");
    tb.ok("grep -q 'hello from the config' /var/lib/machines/ocitoken/usr/lib/wharf/oci-config.json");
    let asked = tb.ok("cat /srv/oci-token/requests");
    assert!(
        asked
            .lines()
            .all(|line| line.contains("service=wharf-test") && line.contains("scope=repository%3Awharf%2Fapp%3Apull")),
        "the token was asked for this repository's pull: {asked}"
    );
    tb.ok("machine remove ocitoken");
    nothing_left(tb, "ocitoken");

    let pull = "machine pull-oci 127.0.0.1:5002/wharf/app:v1 ocitoken";
    tb.ok("echo junk > /srv/oci-token/mode");
    refused(tb, pull, "ocitoken", &["http://127.0.0.1:5003/token", "the token server's answer is no token"]);
    tb.ok("echo otherkey > /srv/oci-token/mode");
    refused(tb, pull, "ocitoken", &["the registry refused its own token (HTTP 401)"]);
    // A token server that drips its answer never stalls: the small
    // downloads' deadline (3 s here) ends it.
    crate::deadline::configure_wharfd(tb, "[Service]\nEnvironment=WHARF_SMALL_DOWNLOAD_TIMEOUT=3\n");
    tb.ok("echo drip > /srv/oci-token/mode");
    refused(tb, pull, "ocitoken", &["http://127.0.0.1:5003/token", "did not send it all within 3 s"]);
    crate::deadline::unconfigure_wharfd(tb);
    refused(
        tb,
        "machine pull-oci 127.0.0.1:5004/wharf/app:v1 ocitoken",
        "ocitoken",
        &["'http://192.0.2.1/token' is plain HTTP off this host"],
    );
    tb.ok("systemctl stop wharf-test-token wharf-test-registry-token wharf-test-registry-elsewhere; rm -rf /srv/oci-token");
}

/// Nothing of a pull of `name` is left in either pool, and no fetcher.
#[track_caller]
fn nothing_left(tb: &Testbed, name: &str) {
    let left = tb.ok(&format!(
        "ls -A /var/lib/machines /var/lib/portables 2>/dev/null | grep -e '^{name}$' -e '^{name}.raw$' -e '^\\.#wharf-' || true"
    ));
    assert_eq!(left.trim(), "", "{name}: left in a pool");
    tb.ok("for i in $(seq 300); do [ -z \"$(systemctl list-units --all --no-legend --plain 'wharf-fetch-*')\" ] && exit 0; sleep 0.1; done; exit 1");
}

/// A pull refused in one line containing each of `reasons`, leaving nothing.
#[track_caller]
fn refused(tb: &Testbed, command: &str, name: &str, reasons: &[&str]) {
    let out = tb.fails(command);
    let message = out.stderr.trim_end();
    assert_eq!(message.lines().count(), 1, "{command}: {out}");
    for reason in reasons {
        assert!(message.contains(reason), "{command}: wanted {reason:?}: {out}");
    }
    nothing_left(tb, name);
}

fn pulls(tb: &Testbed) {
    // The packaged registry, as a transient unit of the test, with the
    // file system storage of its default config but without the htpasswd
    // authentication Debian's default config adds.
    tb.sh("systemctl disable --now docker-registry.service");
    std::fs::create_dir_all(tb.host_path("/srv/oci-registry")).unwrap();
    std::fs::write(
        tb.host_path("/srv/oci-registry/config.yml"),
        "version: 0.1\nstorage:\n  filesystem:\n    rootdirectory: /var/lib/docker-registry\nhttp:\n  addr: 127.0.0.1:5000\n",
    )
    .unwrap();
    tb.ok("systemd-run --unit=wharf-test-registry /usr/bin/docker-registry serve /srv/oci-registry/config.yml");
    // And as Debian configures it (Basic authentication), on another port.
    tb.ok("systemd-run --unit=wharf-test-registry-basic -E REGISTRY_HTTP_ADDR=127.0.0.1:5001 \
           /usr/bin/docker-registry serve /etc/docker/registry/config.yml");
    for port in [5000, 5001] {
        wait_for_http(tb, &format!("http://127.0.0.1:{port}/v2/"), "wharf-test-registry");
    }
    build_layout(tb);
    for (tag, all) in [("v1", ""), ("pinned", ""), ("multi", "--all")] {
        tb.ok(&format!(
            "skopeo --insecure-policy copy -q {all} --dest-tls-verify=false oci:/srv/oci/layout:{tag} docker://{REGISTRY}/wharf/app:{tag}"
        ));
    }
    // skopeo writes the manifests anew: their digests (and the first
    // layer's) are what the registry has.
    let raw = |tag: &str| {
        format!("skopeo --insecure-policy inspect --raw --tls-verify=false docker://{REGISTRY}/wharf/app:{tag}")
    };
    let pinned = tb.ok(&format!("{} | sha256sum | cut -d' ' -f1", raw("pinned"))).trim().to_string();
    let lower_blob = tb
        .ok(&format!(
            "{} | python3 -c 'import json, sys; print(json.load(sys.stdin)[\"layers\"][0][\"digest\"][7:])'",
            raw("v1")
        ))
        .trim()
        .to_string();

    // A machine: the tree the three layers mean.
    let out = tb.ok(&format!("machine pull-oci {REGISTRY}/wharf/app:v1 ociapp"));
    assert_eq!(out.trim(), "Pulled /var/lib/machines/ociapp.");
    let tree = "/var/lib/machines/ociapp";
    tb.ok(&format!("test ! -e {tree}/etc/motd && grep -q oci {tree}/etc/hostname"));
    assert_eq!(tb.ok(&format!("ls -A {tree}/data")).trim(), "new", "the opaque directory kept lower entries");
    tb.ok(&format!("grep -q zstd {tree}/usr/share/oci/zstd-layer"));
    tb.ok(&format!("grep -q 'hello from the config' {tree}/usr/lib/wharf/oci-config.json"));
    // Written through the symlink to /: inside the image, not on the host.
    tb.ok(&format!("test -f {tree}/tmp/oci-escaped && test ! -e /tmp/oci-escaped"));
    // Its shell runs, with the libraries the layers brought.
    assert_eq!(tb.ok(&format!("chroot {tree} /bin/sh -c 'echo runs'")).trim(), "runs");
    // No unit is made for a machine.
    tb.ok(&format!("test ! -e {tree}/usr/lib/systemd/system/ociapp.service"));
    let out = tb.fails(&format!("machine pull-oci {REGISTRY}/wharf/app:v1 ociapp"));
    assert!(out.stderr.contains("exists already"), "{out}");
    tb.ok("machine remove ociapp");
    nothing_left(tb, "ociapp");

    // A portable service: a squashfs whose unit comes from the config.
    let out = tb.ok(&format!("portable pull-oci --json {REGISTRY}/wharf/app:v1"));
    assert_eq!(out.trim(), r#"{"path":"/var/lib/portables/app.raw"}"#);
    tb.ok("unsquashfs -s /var/lib/portables/app.raw >/dev/null");
    tb.ok("portable attach app");
    let unit = tb.ok("systemctl cat app.service");
    assert!(
        unit.contains("ExecStart=\"/bin/sh\" \"-c\" \"echo \\\"oci entrypoint ran: $$GREETING in $$PWD\\\"\""),
        "{unit}"
    );
    assert!(unit.contains("# ExposedPorts: 8080/tcp") && unit.contains("WorkingDirectory=/data"), "{unit}");
    let started = tb.sh("systemctl start app.service");
    assert!(
        started.success(),
        "{started}\n{}",
        tb.sh("journalctl -q -u app.service; systemctl cat app.service").stdout
    );
    tb.ok(
        "for i in $(seq 300); do journalctl -q -o cat -u app.service | grep -qx 'oci entrypoint ran: hello from the config in /data' \
         && exit 0; sleep 0.1; done; journalctl -u app.service; exit 1",
    );
    tb.ok("portable detach app && portable remove app");
    nothing_left(tb, "app");

    // A pinned digest the registry has not: refused by the registry.
    refused(
        tb,
        &format!("machine pull-oci {REGISTRY}/wharf/app@sha256:{} ocipin", "0".repeat(64)),
        "ocipin",
        &["HTTP 404"],
    );
    // A manifest that is not the one its pinned digest names (changed in
    // the registry's storage): refused by wharf.
    let manifest_file = format!("{STORAGE}/{}/{pinned}/data", &pinned[..2]);
    tb.ok(&format!("printf ' ' >> {manifest_file}"));
    refused(
        tb,
        &format!("machine pull-oci {REGISTRY}/wharf/app@sha256:{pinned} ocipin"),
        "ocipin",
        &[&format!("not sha256:{pinned} as the reference says")],
    );
    // An index with only another architecture says what it has.
    let (ours, other) = architectures();
    refused(
        tb,
        &format!("machine pull-oci {REGISTRY}/wharf/app:multi ocimulti"),
        "ocimulti",
        &[&format!("no manifest for linux/{ours} (it has: linux/{other})")],
    );
    // A registry that wants credentials wharf does not have.
    refused(
        tb,
        "machine pull-oci 127.0.0.1:5001/wharf/app:v1 ociauth",
        "ociauth",
        &["the registry wants Basic authentication"],
    );
    token_auth(tb);
    // Bad references, and only root pulls.
    refused(tb, "machine pull-oci wharf/app ocibad", "ocibad", &["the registry must be named first"]);
    refused(tb, "machine pull-oci http://127.0.0.1:5000/wharf/app ocibad", "ocibad", &["no scheme"]);
    refused(tb, &format!("machine pull-oci {REGISTRY}/wharf/app:v1 ../ocibad"), "ocibad", &["'/'"]);
    let out = tb.fails(&format!(
        "setpriv --reuid=nobody --regid=nogroup --clear-groups machine pull-oci {REGISTRY}/wharf/app:v1 ocibad"
    ));
    assert!(out.stderr.contains("pulling an image") && out.stderr.lines().count() == 1, "{out}");

    // A layer changed in the registry's storage (one byte, same size):
    // refused by its digest, naming the blob, with nothing left.
    let blob_file = format!("{STORAGE}/{}/{lower_blob}/data", &lower_blob[..2]);
    tb.ok(&format!(
        "cp {blob_file} /srv/oci/saved-blob && printf 'X' | dd of={blob_file} bs=1 seek=100 conv=notrunc status=none"
    ));
    for command in [
        format!("machine pull-oci {REGISTRY}/wharf/app:v1 ocicorrupt"),
        format!("portable pull-oci {REGISTRY}/wharf/app:v1 ocicorrupt"),
    ] {
        refused(
            tb,
            &command,
            "ocicorrupt",
            &[&format!("blob sha256:{lower_blob}: its SHA-256 digest is sha256:"), "nothing was kept"],
        );
    }
    tb.ok(&format!("cp /srv/oci/saved-blob {blob_file}"));
    tb.ok("systemctl stop wharf-test-registry wharf-test-registry-basic; rm -rf /srv/oci /srv/oci-registry /var/lib/docker-registry/docker");
}
