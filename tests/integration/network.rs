//! Machine networks in the testbed (`--network=veth|bridge:BR|zone:ZONE`,
//! `--port`), started through wharfd as the machine tests do. The testbed
//! runs in a network namespace of its own (nspawn --private-network), so
//! its links, routes and nftables rules are its own; a second namespace,
//! `outside`, on a veth pair (198.51.100.0/24) stands for the world
//! beyond the host, to show forwarding and masquerading.
//!
//! The f28 image has bash but no HTTP server: servers "in the machine"
//! are the testbed's python3 run in the machine's network namespace.

use std::sync::Arc;

use libtest_mimic::Trial;

use crate::machine::{assert_gone, assert_running_inside, leader, prepare, start};
use crate::testbed::Testbed;
use crate::{Shared, exclusive_trial};

pub fn trials(shared: &Arc<Shared>) -> Vec<Trial> {
    vec![
        exclusive_trial(shared, "network::veth_reaches_the_host_and_beyond_and_ports_reach_the_machine", veth),
        exclusive_trial(shared, "network::zone_machines_reach_each_other_and_a_bridge_joins_its_lan", zone_and_bridge),
        exclusive_trial(
            shared,
            "network::bad_networks_and_hostile_names_fail_in_one_line_and_leave_nothing",
            bad_input,
        ),
    ]
}

const UNIT: &str = "wharf-f28";
const HELPER_UNITS: &str = "wt-host-http wt-outside-http wt-machine-http wt-zone-http";

/// The `outside` namespace: 198.51.100.2, reached from the testbed through
/// wt-out (198.51.100.1). Made once per test; `teardown` removes it.
fn make_outside(tb: &Testbed) {
    tb.ok(&format!("for u in {HELPER_UNITS}; do systemctl stop $u; systemctl reset-failed $u; done 2>/dev/null; true"));
    tb.ok("ip netns delete outside 2>/dev/null; ip link delete wt-out 2>/dev/null; true");
    tb.ok("set -e; ip link set lo up; ip netns add outside; \
           ip link add wt-out type veth peer name eth0 netns outside; \
           ip addr add 198.51.100.1/24 dev wt-out; ip link set wt-out up; \
           ip -n outside link set lo up; ip -n outside addr add 198.51.100.2/24 dev eth0; \
           ip -n outside link set eth0 up");
}

fn teardown(tb: &Testbed) {
    tb.ok(&format!("for u in {HELPER_UNITS}; do systemctl stop $u; systemctl reset-failed $u; done 2>/dev/null; true"));
    tb.ok("ip netns delete outside 2>/dev/null; ip link delete wt-out 2>/dev/null; \
           ip link delete wt-br 2>/dev/null; ip route flush 10.247.0.0/24 2>/dev/null; true");
}

/// An HTTP server on port `port` answering `text`, as unit `unit`, in the
/// network namespace `netns` (a path) or the testbed's; returns once it listens.
pub(crate) fn serve(tb: &Testbed, unit: &str, netns: Option<&str>, port: u16, text: &str) {
    let dir = format!("/srv/{unit}");
    let enter = netns.map(|ns| format!("nsenter --net={ns} ")).unwrap_or_default();
    tb.ok(&format!(
        "set -e; mkdir -p {dir}; echo '{text}' > {dir}/index.html; \
         systemd-run --quiet --unit={unit} {enter}python3 -m http.server {port} --bind 0.0.0.0 --directory {dir}"
    ));
    tb.ok(&format!(
        "for i in $(seq 100); do {enter}ss -Hltn 'sport = :{port}' | grep -q . && exit 0; sleep 0.1; done; \
         echo 'the server never listened' >&2; exit 1"
    ));
}

/// GET / from inside the machine whose leader is `leader`, with bash's /dev/tcp.
fn get_inside(tb: &Testbed, leader: &str, address: &str, port: u16) -> crate::testbed::Out {
    tb.sh(&format!(
        "nsenter -t {leader} -a timeout 10 bash -c 'exec 3<>/dev/tcp/{address}/{port} && \
         printf \"GET / HTTP/1.0\\r\\n\\r\\n\" >&3 && cat <&3'"
    ))
}

/// GET `url` from the testbed, or from the network namespace `netns`.
pub(crate) fn get(tb: &Testbed, netns: Option<&str>, url: &str) -> crate::testbed::Out {
    let enter = netns.map(|ns| format!("nsenter --net={ns} ")).unwrap_or_default();
    tb.sh(&format!(
        "{enter}python3 -c 'import sys, urllib.request; \
         print(urllib.request.urlopen(sys.argv[1], timeout=5).read().decode(), end=\"\")' {url}"
    ))
}

/// Nothing of wharf's network is left: no link of its prefixes, no
/// address of its pool, no nftables table, no record, forwarding as it
/// was. Waited for (a network namespace is torn down asynchronously).
#[track_caller]
pub(crate) fn assert_no_network_left(tb: &Testbed, when: &str) {
    let check = "ip -br link | grep -E '^(ve-|vb-|vz-)'; ip -br addr | grep ' 10\\.247\\.'; \
                 nft list ruleset | grep -i wharf; ls /run/wharf/network/machines /run/wharf/network/zones 2>/dev/null | grep -v ':$' | grep .; \
                 [ \"$(cat /proc/sys/net/ipv4/ip_forward)\" = 0 ] || echo ip_forward on";
    let out =
        tb.sh(&format!("for i in $(seq 100); do [ -z \"$({check})\" ] && exit 0; sleep 0.1; done; {check}; exit 1"));
    assert!(out.success(), "{when}: wharf's network left traces: {out}");
}

fn veth(tb: &Testbed) {
    prepare(tb);
    make_outside(tb);
    assert_no_network_left(tb, "before the test");
    // A route of the host into the pool's first /24: wharf must skip it.
    tb.ok("ip route add 10.247.0.0/24 dev wt-out");
    serve(tb, "wt-host-http", None, 8000, "hello from the testbed");
    serve(tb, "wt-outside-http", Some("/run/netns/outside"), 8000, "hello from outside");
    tb.ok("ip -n outside route add default via 198.51.100.1");

    start(tb, "f28", "--network=veth --port=tcp:8080:80 --port=udp:5353");
    let leader = leader(tb, "f28");
    assert_running_inside(tb, &leader, UNIT);
    // ve-f28 on the host, host0 inside, a /30 that overlaps no route.
    let host_end = tb.ok("ip -br addr show dev ve-f28");
    assert!(host_end.contains(" UP ") && host_end.contains("10.247.1.1/30"), "{host_end}");
    let inside = tb.ok(&format!("nsenter -t {leader} -n ip -br addr"));
    assert!(inside.lines().any(|l| l.starts_with("host0@") && l.contains("10.247.1.2/30")), "{inside}");
    let routes = tb.ok(&format!("nsenter -t {leader} -n ip route"));
    assert!(routes.contains("default via 10.247.1.1 dev host0"), "{routes}");

    // From inside: the host, and beyond it, masqueraded as the host.
    let out = get_inside(tb, &leader, "10.247.1.1", 8000);
    assert!(out.success() && out.stdout.contains("hello from the testbed"), "{out}");
    let out = get_inside(tb, &leader, "198.51.100.2", 8000);
    assert!(out.success() && out.stdout.contains("hello from outside"), "{out}");
    let log = tb.ok("journalctl -u wt-outside-http --no-pager -o cat");
    assert!(log.contains("198.51.100.1 - -") && !log.contains("10.247."), "not masqueraded: {log}");
    assert_eq!(tb.ok("cat /proc/sys/net/ipv4/ip_forward").trim(), "1");

    // DNS as nspawn's --resolv-conf=auto: the host's servers, loopback ones left out.
    let servers = |text: &str| -> Vec<String> {
        text.lines().filter(|l| l.starts_with("nameserver") && !l.contains(" 127.")).map(str::to_string).collect()
    };
    let host = tb.ok("cat /run/systemd/resolve/resolv.conf 2>/dev/null || cat /etc/resolv.conf");
    let machine = tb.ok(&format!("nsenter -t {leader} -a cat /etc/resolv.conf"));
    assert_eq!(servers(&machine), servers(&host), "machine:\n{machine}\nhost:\n{host}");
    assert!(tb.ok(&format!("nsenter -t {leader} -a findmnt -n /etc/resolv.conf")).contains("/etc/resolv.conf"));

    // --port: from the host's loopback, its own address, and from outside.
    serve(tb, "wt-machine-http", Some(&format!("/proc/{leader}/ns/net")), 80, "hello from the machine");
    for (netns, url) in [
        (None, "http://127.0.0.1:8080/"),
        (None, "http://198.51.100.1:8080/"),
        (Some("/run/netns/outside"), "http://198.51.100.1:8080/"),
    ] {
        let out = get(tb, netns, url);
        assert!(out.success() && out.stdout.contains("hello from the machine"), "{url} from {netns:?}: {out}");
    }
    let rules = tb.ok("nft list table ip wharf");
    assert!(rules.contains("dnat to 10.247.1.2:80") && rules.contains("udp dport 5353"), "{rules}");
    tb.ok("systemctl stop wt-machine-http");

    // Each way of stopping leaves nothing: poweroff...
    tb.ok("machine poweroff f28");
    assert_gone(tb, "f28");
    assert_no_network_left(tb, "after poweroff");
    // ... terminate ...
    start(tb, "f28", "--network=veth --port=8080:80");
    assert!(tb.ok("nft list table ip wharf").contains("dnat to 10.247.1.2:80"));
    tb.ok("machine terminate f28");
    assert_gone(tb, "f28");
    assert_no_network_left(tb, "after terminate");
    // ... and SIGKILL of the launcher (the unit's ExecStopPost= cleans up).
    start(tb, "f28", "--network=veth --port=8080:80");
    tb.ok(&format!("systemctl kill -s KILL --kill-whom=main {UNIT}"));
    tb.ok(&format!(
        "for i in $(seq 300); do systemctl is-active -q {UNIT} || machinectl show f28 >/dev/null 2>&1 || exit 0; \
         sleep 0.1; done; exit 1"
    ));
    tb.ok(&format!("systemctl reset-failed {UNIT} 2>/dev/null; true"));
    assert_gone(tb, "f28");
    assert_no_network_left(tb, "after SIGKILL of the launcher");

    // host and private keep their behaviour: no link, no rule.
    start(tb, "f28", "--network=private");
    let leader = self::leader(tb, "f28");
    let links = tb.ok(&format!("nsenter -t {leader} -n ip -br link"));
    assert_eq!(links.lines().filter_map(|l| l.split_whitespace().next()).collect::<Vec<_>>(), ["lo"], "{links}");
    assert_no_network_left(tb, "with a private network");
    tb.ok("machine poweroff f28");
    start(tb, "f28", "");
    let leader = self::leader(tb, "f28");
    assert_eq!(tb.ok(&format!("readlink /proc/{leader}/ns/net")), tb.ok("readlink /proc/self/ns/net"));
    assert_no_network_left(tb, "with the host's network");
    tb.ok("machine poweroff f28");
    assert_gone(tb, "f28");
    teardown(tb);
}

/// The second machine of the zone (a name no `wharf-f28*` glob matches).
const SECOND: &str = "/var/lib/machines/g28";

fn zone_and_bridge(tb: &Testbed) {
    prepare(tb);
    make_outside(tb);
    tb.ok(&format!("test -d {SECOND} || cp -a /var/lib/machines/f28 {SECOND}"));
    tb.ok("systemctl stop wharf-g28 2>/dev/null; systemctl reset-failed wharf-g28 2>/dev/null; true");
    serve(tb, "wt-host-http", None, 8000, "hello from the testbed");

    start(tb, "f28", "--network=zone:lab");
    start(tb, "g28", "--network=zone:lab --port=8080:80");
    let (a, b) = (leader(tb, "f28"), leader(tb, "g28"));
    assert_running_inside(tb, &b, "wharf-g28");
    let bridge = tb.ok("ip -br addr show dev vz-lab");
    assert!(bridge.contains("10.247.0.1/24"), "{bridge}");
    for link in ["vb-f28", "vb-g28"] {
        assert!(tb.ok("ip -br link show master vz-lab").contains(link), "{link} is not on vz-lab");
    }
    let address = |leader: &str| {
        let out = tb.ok(&format!("nsenter -t {leader} -n ip -4 -br addr show dev host0"));
        out.split_whitespace().nth(2).and_then(|a| a.split('/').next()).expect("an address").to_string()
    };
    let (address_a, address_b) = (address(&a), address(&b));
    assert_ne!(address_a, address_b);
    // Machine to machine, and machine to host.
    serve(tb, "wt-zone-http", Some(&format!("/proc/{b}/ns/net")), 80, "hello from the zone");
    let out = get_inside(tb, &a, &address_b, 80);
    assert!(out.success() && out.stdout.contains("hello from the zone"), "{out}");
    let out = get_inside(tb, &b, "10.247.0.1", 8000);
    assert!(out.success() && out.stdout.contains("hello from the testbed"), "{out}");
    let out = get(tb, None, "http://127.0.0.1:8080/");
    assert!(out.success() && out.stdout.contains("hello from the zone"), "{out}");
    tb.ok("systemctl stop wt-zone-http");

    // The zone's bridge stays with its last machine, and goes with it.
    tb.ok("machine poweroff f28");
    assert_gone(tb, "f28");
    assert!(tb.sh("ip link show dev vz-lab").success(), "vz-lab went before its last machine");
    assert!(tb.ok("nft list table ip wharf").contains("dnat to"), "g28's port went with f28");
    tb.ok("machine terminate g28");
    assert_gone(tb, "g28");
    assert_no_network_left(tb, "after the zone's last machine");

    // bridge:BR: the host end joins the bridge; host0's address is the LAN's
    // business (here set by hand), and the host answers on the bridge.
    tb.ok("set -e; ip link add wt-br type bridge; ip addr add 192.0.2.1/24 dev wt-br; ip link set wt-br up");
    start(tb, "f28", "--network=bridge:wt-br");
    let a = leader(tb, "f28");
    assert!(tb.ok("ip -br link show master wt-br").contains("vb-f28"));
    let unaddressed = tb.ok(&format!("nsenter -t {a} -n ip -4 addr show dev host0"));
    assert!(!unaddressed.contains("inet "), "wharf addressed host0 on a bridge: {unaddressed}");
    tb.ok(&format!("nsenter -t {a} -n sh -c 'ip addr add 192.0.2.2/24 dev host0 && ip link set host0 up'"));
    let out = get_inside(tb, &a, "192.0.2.1", 8000);
    assert!(out.success() && out.stdout.contains("hello from the testbed"), "{out}");
    tb.ok("machine poweroff f28");
    assert_gone(tb, "f28");
    assert!(tb.sh("ip link show dev wt-br").success(), "wharf removed a bridge it did not make");
    assert_no_network_left(tb, "after a bridged machine");
    teardown(tb);
}

/// `machine start` must fail with exactly one line on stderr containing `reason`.
#[track_caller]
fn refused(tb: &Testbed, command: &str, reason: &str) {
    let out = tb.fails(command);
    let stderr = out.stderr.trim_end();
    assert_eq!(stderr.lines().count(), 1, "one line: {out}");
    assert!(stderr.contains(reason), "{out}");
}

fn bad_input(tb: &Testbed) {
    prepare(tb);
    teardown(tb);
    tb.ok(&format!("test -d {SECOND} || cp -a /var/lib/machines/f28 {SECOND}"));
    tb.ok("systemctl stop wharf-g28 2>/dev/null; systemctl reset-failed wharf-g28 2>/dev/null; true");
    refused(
        tb,
        "machine start f28 --network=vth",
        "'vth' is not a valid --network value (host, private, veth, bridge:BRIDGE or zone:ZONE)",
    );
    refused(tb, "machine start f28 --network=bridge:no/such", "'no/such' is not a valid bridge name");
    refused(tb, "machine start f28 --network=zone:a.b", "'a.b' is not a valid zone name");
    refused(tb, "machine start f28 --network=bridge:nosuch", "bridge 'nosuch' does not exist");
    refused(tb, "machine start f28 --network=bridge:lo", "'lo' is not a bridge");
    refused(tb, "machine start f28 --port=8080", "--port needs --network=veth or --network=zone:ZONE");
    refused(tb, "machine start f28 --network=veth --port=99999", "'99999' is not a valid --port value");
    refused(tb, "machine start f28 --network=veth --port=80 --port=tcp:80:81", "tcp port 80 is given twice");
    // A link whose name the machine's would take (a hostile user names a
    // machine so that its ve- link is a link of the host's): refused, and
    // the host's link is untouched.
    tb.ok("ip link add ve-f28 type bridge && ip link add vz-lab type bridge");
    let before = tb.ok("ip -o link show dev ve-f28; ip -o link show dev vz-lab");
    refused(tb, "machine start f28 --network=veth", "a network interface named 've-f28' exists already");
    refused(tb, "machine start f28 --network=zone:lab", "a network interface named 'vz-lab' exists already");
    assert_eq!(tb.ok("ip -o link show dev ve-f28; ip -o link show dev vz-lab"), before);
    // Past wharfd's checks, the launcher refuses too (a unit made by hand).
    let out = tb.sh("/usr/lib/wharf/wharfd launch --machine=f28 --directory=/var/lib/machines/f28 --network=veth");
    assert_eq!(out.code, Some(1), "{out}");
    assert_eq!(out.stderr.trim_end().lines().count(), 1, "{out}");
    assert!(out.stderr.contains("network: a network interface named 've-f28' exists already"), "{out}");
    assert_eq!(tb.ok("ip -o link show dev ve-f28; ip -o link show dev vz-lab"), before);
    tb.ok("ip link delete ve-f28 && ip link delete vz-lab");
    assert_no_network_left(tb, "after the refused starts");
    assert_gone(tb, "f28");

    // A port another machine forwards already.
    start(tb, "f28", "--network=veth --port=8080:80");
    refused(
        tb,
        "machine start g28 --network=veth --port=tcp:8080",
        "tcp port 8080 is forwarded to machine 'f28' already",
    );
    assert_gone(tb, "g28");
    // udp 8080 is another port.
    start(tb, "g28", "--network=veth --port=udp:8080");
    tb.ok("machine poweroff g28");
    tb.ok("machine poweroff f28");
    assert_gone(tb, "f28");
    assert_no_network_left(tb, "after the port conflict");
    // The settings file's keys, checked before the unit exists.
    tb.ok("mkdir -p /etc/wharf/machines && printf '[container]\\nnetwork = \"veth\"\\nport = [\"tcp:8081:80\"]\\n' > /etc/wharf/machines/g28.toml");
    start(tb, "g28", "");
    assert!(tb.ok("nft list table ip wharf").contains("tcp dport 8081 dnat to"));
    tb.ok("machine poweroff g28");
    tb.ok("printf '[container]\\nnetwork = \"vth\"\\n' > /etc/wharf/machines/g28.toml");
    refused(tb, "machine start g28", "/etc/wharf/machines/g28.toml: 'vth' is not a valid --network value");
    tb.ok("rm -f /etc/wharf/machines/g28.toml");
    assert_gone(tb, "g28");
    assert_no_network_left(tb, "after the settings file");

    // A fleet file's [[machine]] network and port: kept in the settings
    // file, used at its start; a bad one refused before anything changes.
    let fleet = |started: bool, network: &str| {
        format!(
            "mkdir -p /srv/wt-fleet && printf '[[machine]]\\nname = \"g28\"\\nstarted = {started}\\n\
             network = \"{network}\"\\nport = [\"tcp:8082:80\"]\\n' > /srv/wt-fleet/host.toml"
        )
    };
    tb.ok(&fleet(true, "veth"));
    tb.ok("machine apply /srv/wt-fleet/host.toml");
    assert!(tb.ok("nft list table ip wharf").contains("tcp dport 8082 dnat to"));
    let settings = tb.ok("cat /etc/wharf/machines/g28.toml");
    assert!(settings.contains("network = \"veth\"") && settings.contains("tcp:8082:80"), "{settings}");
    tb.ok(&fleet(false, "veth"));
    tb.ok("machine apply /srv/wt-fleet/host.toml");
    assert_gone(tb, "g28");
    assert_no_network_left(tb, "after the fleet stopped its machine");
    tb.ok(&fleet(true, "vth"));
    refused(tb, "machine apply /srv/wt-fleet/host.toml", "'vth' is not a valid --network value");
    assert_gone(tb, "g28");
    tb.ok("rm -rf /srv/wt-fleet /etc/wharf/machines/g28.toml");
}
