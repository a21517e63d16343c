//! Errors as a person sees them, and transfers that end with their client.
//!
//! A missing file is reported in words by `portable` and `machine`, from
//! the client and from wharfd alike, never with Rust's "(os error N)"; the
//! bytes of a junk file never reach the terminal. ^C (SIGINT) or SIGTERM of
//! an import or pull whose input stalls cancels it in wharfd: one line,
//! exit status 128 + the signal, nothing left. A second ^C leaves at once,
//! and a client killed outright (SIGKILL) takes its transfer with it too.

use std::sync::Arc;

use libtest_mimic::Trial;

use crate::testbed::{Testbed, images};
use crate::{Shared, exclusive_trial};

pub fn trials(shared: &Arc<Shared>) -> Vec<Trial> {
    vec![
        // Alone: its failed imports pass through /var/lib/machines, which
        // other trials list to see that nothing was left there.
        exclusive_trial(shared, "interrupt::errors_say_the_words_and_never_print_a_files_bytes", errors_in_words),
        // Exclusive: it stops wharfd for a moment.
        exclusive_trial(
            shared,
            "interrupt::a_transfer_ends_with_its_client_leaving_nothing",
            transfers_end_with_their_client,
        ),
    ]
}

/// A server on the testbed's loopback whose downloads stall (pull.rs's).
const STALLED_PORT: u16 = 8645;

/// `out` failed with exit status 1 and one line on stderr, from `tool`.
#[track_caller]
fn one_line_from(out: &crate::testbed::Out, tool: &str) -> String {
    assert_eq!(out.code, Some(1), "{out}");
    let line = out.stderr.strip_suffix('\n').unwrap_or(&out.stderr);
    assert!(!line.contains('\n') && line.starts_with(&format!("{tool}: ")), "not one line from {tool}: {out}");
    // Nothing a terminal would act on: no control character at all.
    assert!(!line.chars().any(char::is_control), "a control character reached the terminal: {line:?}");
    line.to_string()
}

fn errors_in_words(tb: &Testbed) {
    // A missing file, as the client finds it (inspect and import open it
    // themselves) and as wharfd does (attach and read-only are looked up
    // there): the system's words, no error number.
    for (tool, command) in [
        ("portable", "portable inspect /srv/no-such-image.raw"),
        ("portable", "portable attach /srv/no-such-image.raw"),
        ("machine", "machine import-raw /srv/no-such-image.raw nosuch"),
        ("machine", "machine read-only /srv/no-such-image.raw"),
    ] {
        let line = one_line_from(&tb.fails(command), tool);
        assert!(line.contains("No such file or directory") && !line.contains("(os error"), "{command}: {line}");
    }
    // The same line in the JSON error.
    let out = tb.fails("machine read-only --json /srv/no-such-image.raw");
    let document: serde_json::Value = serde_json::from_str(out.stdout.trim()).expect("a JSON error");
    let message = document["error"]["message"].as_str().unwrap_or_default();
    assert!(message.contains("No such file or directory") && !message.contains("(os error"), "{out}");
    // And wharfd's reply itself, to any D-Bus client.
    let out =
        tb.fails("busctl call org.wharf1 /org/wharf1 org.wharf1.Machine MarkReadOnly sb /srv/no-such-image.raw true");
    assert!(out.stderr.contains("No such file or directory") && !out.stderr.contains("(os error"), "{out}");

    // A file that is not an archive, imported as one: a raw image, and
    // junk whose header fields (the name, the checksum) hold terminal
    // escapes. One line, with the escapes shown, not sent.
    images::foobar(&tb.host_path("/srv/errors/foobar_1.raw"), "squashfs", "1").unwrap();
    let mut junk = vec![0u8; 1024];
    let name = b"\x1b]0;pwned\x07\x1b[2J\x1b[31mjunk";
    junk[..name.len()].copy_from_slice(name);
    junk[148..156].copy_from_slice(b"\x1b[5m\x9b\xff\x00 ");
    std::fs::write(tb.host_path("/srv/errors/junk.tar"), &junk).unwrap();
    for file in ["foobar_1.raw", "junk.tar"] {
        let command = format!("cd /srv/errors && machine import-tar {file} junk");
        let line = one_line_from(&tb.fails(&command), "machine");
        assert_eq!(line, "machine: machine image 'junk': cannot unpack the archive: the data is not a tar archive");
    }
    // Escaped where a file's bytes are quoted all the same: an archive
    // whose entry, named with terminal escapes, has no owner, so that its
    // unpacking fails naming it.
    let mut header = [0u8; 512];
    let name = b"\x1b]0;pwned\x07\x1b[2Jfile";
    header[..name.len()].copy_from_slice(name);
    header[100..108].copy_from_slice(b"0000644\0");
    header[124..136].copy_from_slice(b"00000000000\0");
    header[136..148].copy_from_slice(b"00000000000\0");
    header[156] = b'0';
    header[148..156].copy_from_slice(b"        ");
    let sum: u32 = header.iter().map(|&b| u32::from(b)).sum();
    header[148..156].copy_from_slice(format!("{sum:06o}\0 ").as_bytes());
    let mut archive = header.to_vec();
    archive.extend_from_slice(&[0u8; 1024]);
    std::fs::write(tb.host_path("/srv/errors/escapes.tar"), &archive).unwrap();
    let line = one_line_from(&tb.fails("machine import-tar /srv/errors/escapes.tar junk"), "machine");
    assert!(line.contains("/\\x1b]0;pwned\\x07\\x1b[2Jfile"), "{line}");
    assert!(tb.ok("ls -A /var/lib/machines | grep -e '^junk' -e '^\\.#wharf-import-junk-' || true").trim().is_empty());
}

/// Nothing of transfer `name` is left: no image, no temporary, no entry
/// in list-transfers.
#[track_caller]
fn nothing_left(tb: &Testbed, name: &str) {
    let left = tb.ok(&format!(
        "ls -A /var/lib/machines /var/lib/portables | grep -F -e '{name}' || true; \
         machine list-transfers --no-legend | grep -F -e '{name}' || true"
    ));
    assert_eq!(left.trim(), "", "{name} left behind");
}

/// Starts `command` (an import or pull that stalls) in the background with
/// SIGINT and SIGTERM at their defaults (a script's background job starts
/// with SIGINT ignored), waits until wharfd lists its transfer of `name`,
/// sends it `signal`, and returns its exit status and what it printed.
/// After SIGKILL it waits until wharfd's transfer is gone.
fn interrupted(tb: &Testbed, command: &str, name: &str, signal: &str) -> String {
    tb.ok(&format!(
        "set -e; d=$(mktemp -d); mkfifo $d/in; sleep 600 > $d/in & writer=$!; \
         env --default-signal=INT,TERM {command} < $d/in > $d/out 2> $d/err & client=$!; \
         listed=no; for i in $(seq 300); do \
           machine list-transfers --no-legend | grep -qF ' {name} ' && listed=yes && break; sleep 0.1; done; \
         kill -{signal} $client; status=0; wait $client || status=$?; \
         if [ {signal} = KILL ]; then \
           for i in $(seq 300); do machine list-transfers --no-legend | grep -qF ' {name} ' || break; sleep 0.1; done; \
         fi; \
         kill $writer; echo \"listed $listed, exit $status\"; cat $d/out $d/err; rm -r $d"
    ))
}

fn transfers_end_with_their_client(tb: &Testbed) {
    std::fs::write(tb.host_path("/srv/interrupt_server.py"), crate::pull::SHORT_SERVER_PY).unwrap();
    tb.ok(&format!(
        "systemd-run --unit=wharf-test-interrupt-stalled python3 /srv/interrupt_server.py {STALLED_PORT} stall"
    ));
    let stalled = format!("http://127.0.0.1:{STALLED_PORT}");
    tb.ok(&format!(
        "for i in $(seq 300); do python3 -c 'import urllib.request, sys; urllib.request.urlopen(sys.argv[1] + \"/SHA256SUMS\")' {stalled} \
         >/dev/null 2>&1 && exit 0; sleep 0.1; done; exit 1"
    ));

    // ^C (and SIGTERM) of an import from a pipe that never delivers, and of
    // a pull from a server that stalls: wharfd cancels it, the client
    // waits for that, says so in one line and exits as the signal would.
    for (command, name, signal, said) in [
        (
            "machine import-raw - intrint",
            "intrint",
            "INT",
            "exit 130\nmachine: import of 'intrint' cancelled; nothing was left\n",
        ),
        (
            "machine import-tar - intrterm",
            "intrterm",
            "TERM",
            "exit 143\nmachine: import of 'intrterm' cancelled; nothing was left\n",
        ),
        (
            &format!("portable pull --verify=no {stalled}/stalled.raw.xz intrpull"),
            "intrpull",
            "INT",
            "exit 130\nportable: pull of 'intrpull' cancelled; nothing was left\n",
        ),
        (
            &format!("machine pull-raw --verify=no {stalled}/intrpullm.raw.xz"),
            "intrpullm",
            "INT",
            "exit 130\nmachine: pull of 'intrpullm' cancelled; nothing was left\n",
        ),
    ] {
        let out = interrupted(tb, command, name, signal);
        assert_eq!(out, format!("listed yes, {said}"), "{command} on SIG{signal}");
        // Said only once it was so: nothing to wait for.
        nothing_left(tb, name);
    }

    // A client killed outright leaves the bus; wharfd cancels its transfer.
    let out = interrupted(tb, "machine import-raw - intrkill", "intrkill", "KILL");
    assert_eq!(out, "listed yes, exit 137\n", "SIGKILL");
    tb.ok("for i in $(seq 300); do ls -A /var/lib/machines | grep -qF intrkill || exit 0; sleep 0.1; done; exit 1");
    nothing_left(tb, "intrkill");

    // A second ^C does not wait for wharfd: with wharfd stopped (SIGSTOP)
    // once the client asked it to cancel, the client leaves at once, and
    // wharfd, let go on, cancels the transfer of the caller that left.
    let out = tb.ok(
        "set -e; d=$(mktemp -d); mkfifo $d/in; sleep 600 > $d/in & writer=$!; \
         busctl monitor --match \"type='method_call',member='CancelOwnTransfers'\" > $d/monitor 2>&1 & monitor=$!; \
         env --default-signal=INT,TERM machine import-raw - intrtwice < $d/in > $d/out 2> $d/err & client=$!; \
         for i in $(seq 300); do machine list-transfers --no-legend | grep -qF ' intrtwice ' && break; sleep 0.1; done; \
         wharfd=$(systemctl show -p MainPID --value wharfd); kill -STOP $wharfd; \
         kill -INT $client; asked=no; \
         for i in $(seq 300); do grep -q CancelOwnTransfers $d/monitor && asked=yes && break; sleep 0.1; done; \
         kill -INT $client; status=0; wait $client || status=$?; kill -CONT $wharfd; kill $monitor; \
         for i in $(seq 300); do machine list-transfers --no-legend | grep -qF ' intrtwice ' || break; sleep 0.1; done; \
         kill $writer; echo \"asked $asked, exit $status\"; cat $d/out $d/err; rm -r $d",
    );
    assert_eq!(
        out,
        "asked yes, exit 130\nmachine: import of 'intrtwice' abandoned; wharfd cancels it and removes what it built\n",
        "a second ^C"
    );
    tb.ok("for i in $(seq 300); do ls -A /var/lib/machines | grep -qF intrtwice || exit 0; sleep 0.1; done; exit 1");
    nothing_left(tb, "intrtwice");

    tb.ok("systemctl stop wharf-test-interrupt-stalled");
}
