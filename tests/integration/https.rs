//! Pulls over real HTTPS, and bzip2 images and archives.
//!
//! A throwaway certificate authority, made in the test, signs a certificate
//! for 127.0.0.1 and localhost; python serves the images over TLS with it.
//! With the authority in the testbed's system CA store a pull checked by
//! signature works, which also shows that the fetcher's sandbox reads the
//! store; with it gone again, and from a server whose certificate is for
//! another host, the pull fails in one line saying the certificate could not
//! be verified and naming the host, and leaves nothing.
//!
//! bzip2 (told by its content, as xz, gzip and zstd are): a `.tar.bz2`
//! pulled with pull-tar, a `.raw.bz2` pulled into the portable pool and
//! imported with import-raw, each the image it was made from; truncated
//! ones fail in one line and leave nothing.

use std::io::Write;
use std::sync::Arc;

use libtest_mimic::Trial;

use crate::pull::{make_key, nothing_left, refused, sign, wait_no_fetcher};
use crate::testbed::{Testbed, images};
use crate::{Shared, exclusive_trial};

pub fn trials(shared: &Arc<Shared>) -> Vec<Trial> {
    // Both add and remove images in /var/lib/machines and
    // /var/lib/portables, and change the system CA store and the import
    // keyring: nothing else may run meanwhile.
    vec![
        exclusive_trial(shared, "pull::https::a_certificate_the_ca_store_does_not_vouch_for_is_refused", https),
        exclusive_trial(
            shared,
            "pull::bzip2::archives_and_images_are_told_by_content_and_truncated_ones_refused",
            bzip2,
        ),
    ]
}

/// The server whose certificate is for 127.0.0.1 and localhost.
const SERVER: &str = "https://127.0.0.1:8645";
/// The server whose certificate (from the same authority) is for another host only.
const OTHER_HOST: &str = "https://127.0.0.1:8646";
const CA_IN_STORE: &str = "/usr/local/share/ca-certificates/wharf-test-ca.crt";
const KEYRING: &str = "/etc/wharf/import-pubring.pgp";

/// Serves the directory `$4` over HTTPS on 127.0.0.1 port `$1` with the
/// certificate `$2` and its key `$3`.
const HTTPS_SERVER_PY: &str = r#"
import functools, http.server, ssl, sys
port, cert, key, root = int(sys.argv[1]), sys.argv[2], sys.argv[3], sys.argv[4]
handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=root)
server = http.server.ThreadingHTTPServer(("127.0.0.1", port), handler)
context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
context.load_cert_chain(cert, key)
server.socket = context.wrap_socket(server.socket, server_side=True)
server.serve_forever()
"#;

/// A certificate authority in /srv/tls (`ca.crt`, `ca.key`), and two
/// server certificates it signed: `good` for 127.0.0.1 and localhost,
/// `other` for other.wharf.test only.
fn make_certificates(tb: &Testbed) {
    tb.ok("rm -rf /srv/tls && mkdir -p -m 700 /srv/tls && cd /srv/tls \
           && openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -days 2 \
              -keyout ca.key -out ca.crt -subj '/CN=wharf test CA' \
              -addext basicConstraints=critical,CA:TRUE -addext keyUsage=critical,keyCertSign,cRLSign 2>/dev/null \
           && for which in good other; do \
                case $which in good) san='DNS:localhost,IP:127.0.0.1';; other) san='DNS:other.wharf.test';; esac; \
                openssl req -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes \
                  -keyout $which.key -out $which.csr -subj \"/CN=$which\" 2>/dev/null \
                && printf 'subjectAltName=%s\\nbasicConstraints=CA:FALSE\\nextendedKeyUsage=serverAuth\\n' \"$san\" > $which.ext \
                && openssl x509 -req -in $which.csr -CA ca.crt -CAkey ca.key -CAcreateserial -days 2 \
                  -extfile $which.ext -out $which.crt 2>/dev/null || exit 1; \
              done");
}

/// Puts the test authority into the system CA store (or takes it out).
fn trust_ca(tb: &Testbed, trusted: bool) {
    if trusted {
        tb.ok(&format!("cp /srv/tls/ca.crt {CA_IN_STORE} && update-ca-certificates >/dev/null"));
        tb.ok("grep -qF \"$(sed -n 2p /srv/tls/ca.crt)\" /etc/ssl/certs/ca-certificates.crt");
    } else {
        tb.ok(&format!("rm -f {CA_IN_STORE} && update-ca-certificates --fresh >/dev/null"));
        tb.ok("! grep -qF \"$(sed -n 2p /srv/tls/ca.crt)\" /etc/ssl/certs/ca-certificates.crt");
    }
}

/// Starts the two HTTPS servers on `root` and waits until they listen.
fn serve(tb: &Testbed, root: &str) {
    std::fs::write(tb.host_path("/srv/tls/https_server.py"), HTTPS_SERVER_PY).unwrap();
    for (unit, port, cert) in [("wharf-test-https", 8645, "good"), ("wharf-test-https-other", 8646, "other")] {
        tb.ok(&format!(
            "systemd-run --unit={unit} python3 /srv/tls/https_server.py {port} /srv/tls/{cert}.crt /srv/tls/{cert}.key {root}"
        ));
        tb.ok(&format!(
            "for i in $(seq 300); do python3 -c 'import socket, sys; socket.create_connection((\"127.0.0.1\", int(sys.argv[1])), 1)' {port} \
             2>/dev/null && exit 0; sleep 0.1; done; exit 1"
        ));
    }
}

fn stop_serving(tb: &Testbed) {
    tb.ok("systemctl stop wharf-test-https wharf-test-https-other");
}

/// The import keyring of the trial's own key, and what was there before
/// (put back by [`restore_keyring`]).
fn use_own_keyring(tb: &Testbed, home: &str) {
    tb.ok(&format!("[ ! -e {KEYRING} ] || cp -a {KEYRING} {home}/keyring.before"));
    tb.ok(&format!("mkdir -p /etc/wharf && GNUPGHOME={home} gpg --batch --export > {KEYRING}"));
}

fn restore_keyring(tb: &Testbed, home: &str) {
    tb.ok(&format!(
        "if [ -e {home}/keyring.before ]; then mv {home}/keyring.before {KEYRING}; else rm -f {KEYRING}; fi; \
         GNUPGHOME={home} gpgconf --kill all"
    ));
}

/// Nothing new in the testbed's temporary directories since `marker` was made.
#[track_caller]
fn no_new_temporaries(tb: &Testbed, marker: &str) {
    let new = tb.ok(&format!("find /tmp /var/tmp -mindepth 1 -maxdepth 1 -newer {marker}"));
    assert_eq!(new.trim(), "", "temporaries left");
}

/// A pull refused with one line that says the certificate could not be
/// verified, names `host` and gives `why`, in plain words; nothing left.
#[track_caller]
fn certificate_refused(tb: &Testbed, command: &str, name: &str, host: &str, why: &str) {
    let out = tb.fails(command);
    let message = out.stderr.trim_end();
    assert_eq!(message.lines().count(), 1, "{command}: {out}");
    assert!(message.starts_with("machine: ") || message.starts_with("portable: "), "{command}: {out}");
    let wanted = format!("the TLS certificate of {host} could not be verified: {why}");
    assert!(message.contains(&wanted), "{command}: wanted {wanted:?}: {out}");
    // libcurl's and OpenSSL's internals stay out of it.
    for internal in ["curl", "error 60", "(60)", "SSL certificate problem"] {
        assert!(!message.contains(internal), "{command}: {out}");
    }
    nothing_left(tb, name);
}

/// A listing of a tree: each file's digest, each symbolic link's target.
fn tree_listing(tb: &Testbed, dir: &str) -> String {
    tb.ok(&format!(
        "cd {dir} && {{ find . -type f -exec sha256sum {{}} + ; find . -type l -printf '%p -> %l\\n'; \
         find . -type d -printf '%p/\\n'; }} | sort"
    ))
}

fn https(tb: &Testbed) {
    tb.ok("touch /srv/tls-marker");
    make_certificates(tb);
    let www = tb.host_path("/srv/www-tls");
    std::fs::create_dir_all(&www).unwrap();
    images::foobar(&www.join("tls.raw.xz"), "xz", "3").unwrap();
    make_key(tb, "/srv/tls/gpg", "tls");
    use_own_keyring(tb, "/srv/tls/gpg");
    tb.ok("cd /srv/www-tls && sha256sum tls.raw.xz > SHA256SUMS");
    sign(tb, "/srv/tls/gpg", "/srv/www-tls/SHA256SUMS");
    serve(tb, "/srv/www-tls");

    // Trusted: a pull checked by signature works (the fetcher, a dynamic
    // user in its sandbox, read the CA store: without it the pull fails,
    // as below), and the image is the one served.
    trust_ca(tb, true);
    let out = tb.ok(&format!("machine pull-raw {SERVER}/tls.raw.xz"));
    assert_eq!(out.trim(), "Pulled /var/lib/machines/tls.raw.");
    // (python decompresses: the testbed has no xz.)
    tb.ok(
        "python3 -c 'import lzma, sys; sys.exit(lzma.open(sys.argv[1]).read() != open(sys.argv[2], \"rb\").read())' \
           /srv/www-tls/tls.raw.xz /var/lib/machines/tls.raw",
    );
    tb.ok("machine remove tls");
    // By its name, too, and into the portable pool.
    let out = tb.ok("portable pull --verify=signature https://localhost:8645/tls.raw.xz tlsp_1");
    assert_eq!(out.trim(), "Pulled /var/lib/portables/tlsp_1.raw.");
    tb.ok("portable remove tlsp_1");
    nothing_left(tb, "tlsp_1");

    // A certificate for another host, though its authority is trusted: the
    // list of digests, the first thing fetched, is refused, and so is the
    // image itself when nothing is checked.
    certificate_refused(
        tb,
        &format!("machine pull-raw {OTHER_HOST}/tls.raw.xz wronghost"),
        "wronghost",
        "127.0.0.1:8646",
        "it is for another host name",
    );
    certificate_refused(
        tb,
        &format!("machine pull-raw --verify=no {OTHER_HOST}/tls.raw.xz wronghost"),
        "wronghost",
        "127.0.0.1:8646",
        "it is for another host name",
    );

    // The authority out of the store again: refused, however it is checked.
    trust_ca(tb, false);
    let unknown = "no certificate authority in the system's CA store (/etc/ssl/certs) vouches for it";
    certificate_refused(
        tb,
        &format!("machine pull-raw {SERVER}/tls.raw.xz untrusted"),
        "untrusted",
        "127.0.0.1:8645",
        unknown,
    );
    certificate_refused(
        tb,
        &format!("machine pull-raw --verify=no {SERVER}/tls.raw.xz untrusted"),
        "untrusted",
        "127.0.0.1:8645",
        unknown,
    );
    certificate_refused(
        tb,
        "portable pull --verify=checksum https://localhost:8645/tls.raw.xz untrusted",
        "untrusted",
        "localhost:8645",
        unknown,
    );

    stop_serving(tb);
    wait_no_fetcher(tb);
    no_new_temporaries(tb, "/srv/tls-marker");
    restore_keyring(tb, "/srv/tls/gpg");
    tb.ok("rm -rf /srv/tls /srv/www-tls /srv/tls-marker");
}

/// `data` compressed with bzip2, as `bzip2 -9` would.
fn bzip2_of(data: &[u8]) -> Vec<u8> {
    let mut writer = bzip2::write::BzEncoder::new(Vec::new(), bzip2::Compression::best());
    writer.write_all(data).unwrap();
    writer.finish().unwrap()
}

fn bzip2(tb: &Testbed) {
    tb.ok("touch /srv/bz2-marker");
    make_certificates(tb);
    let www = tb.host_path("/srv/www-bz2");
    std::fs::create_dir_all(&www).unwrap();
    // A squashfs image, and a tree as a tar archive, each as .bz2 and cut short.
    images::foobar(&www.join("bzimg.raw"), "squashfs", "5").unwrap();
    images::foobar(&tb.host_path("/srv/bz2-tree"), "dir", "5").unwrap();
    tb.ok("tar --numeric-owner -C /srv/bz2-tree -cf /srv/www-bz2/bztree.tar . && rm -rf /srv/bz2-tree");
    for stem in ["bzimg.raw", "bztree.tar"] {
        let compressed = bzip2_of(&std::fs::read(www.join(stem)).unwrap());
        std::fs::write(www.join(format!("{stem}.bz2")), &compressed).unwrap();
        let cut = format!("cut{}", &stem[2..]);
        std::fs::write(www.join(format!("{cut}.bz2")), &compressed[..compressed.len() * 2 / 3]).unwrap();
    }
    make_key(tb, "/srv/bz2-gpg", "bz2");
    use_own_keyring(tb, "/srv/bz2-gpg");
    tb.ok("cd /srv/www-bz2 && sha256sum bzimg.raw.bz2 bztree.tar.bz2 > SHA256SUMS");
    sign(tb, "/srv/bz2-gpg", "/srv/www-bz2/SHA256SUMS");
    trust_ca(tb, true);
    serve(tb, "/srv/www-bz2");

    // A .tar.bz2, pulled over HTTPS with its signature checked: the tree
    // it was made from.
    let out = tb.ok(&format!("machine pull-tar {SERVER}/bztree.tar.bz2"));
    assert_eq!(out.trim(), "Pulled /var/lib/machines/bztree.");
    tb.ok("mkdir /srv/bz2-back && tar -C /srv/bz2-back -xf /srv/www-bz2/bztree.tar");
    let listing = tree_listing(tb, "/srv/bz2-back");
    assert!(listing.contains("./usr/lib/os-release"), "{listing}");
    assert_eq!(tree_listing(tb, "/var/lib/machines/bztree"), listing);
    tb.ok("rm -rf /srv/bz2-back && machine remove bztree");
    // A .raw.bz2: pulled into the portable pool, and imported as a machine.
    let out = tb.ok(&format!("portable pull {SERVER}/bzimg.raw.bz2 bzp_5"));
    assert_eq!(out.trim(), "Pulled /var/lib/portables/bzp_5.raw.");
    tb.ok("cmp /srv/www-bz2/bzimg.raw /var/lib/portables/bzp_5.raw");
    assert!(tb.ok("portable list --json").contains(r#""name":"bzp_5.raw""#));
    tb.ok("portable remove bzp_5");
    let out = tb.ok("machine import-raw /srv/www-bz2/bzimg.raw.bz2");
    assert_eq!(out.trim(), "Imported /var/lib/machines/bzimg.raw.");
    tb.ok("cmp /srv/www-bz2/bzimg.raw /var/lib/machines/bzimg.raw");
    tb.ok("machine remove bzimg");
    // And as an archive from standard input.
    let out = tb.ok("machine import-tar - bzstdin < /srv/www-bz2/bztree.tar.bz2");
    assert_eq!(out.trim(), "Imported /var/lib/machines/bzstdin.");
    tb.ok("machine remove bzstdin");

    // Cut short: refused in one line, nothing left.
    refused(tb, "machine import-raw /srv/www-bz2/cutimg.raw.bz2 cutimg", "cutimg", "cannot decompress the image");
    refused(tb, "machine import-tar /srv/www-bz2/cuttree.tar.bz2 cuttree", "cuttree", "cannot unpack the archive");
    refused(
        tb,
        &format!("machine pull-tar --verify=no {SERVER}/cuttree.tar.bz2 cuttree"),
        "cuttree",
        "cannot unpack the archive",
    );
    refused(
        tb,
        &format!("portable pull --verify=no {SERVER}/cutimg.raw.bz2 cutimg"),
        "cutimg",
        "cannot decompress the image",
    );

    stop_serving(tb);
    wait_no_fetcher(tb);
    trust_ca(tb, false);
    no_new_temporaries(tb, "/srv/bz2-marker");
    restore_keyring(tb, "/srv/bz2-gpg");
    tb.ok("rm -rf /srv/tls /srv/www-bz2 /srv/bz2-gpg /srv/bz2-marker");
}
