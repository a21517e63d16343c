//! A machine's network: what `--network` and `--port` say, the names of
//! the links wharf makes for it, and (in [`host`]) making and removing them.
//!
//! - `host`: the host's network namespace; `private`: a namespace with
//!   loopback only. wharf adds nothing on the host for either.
//! - `veth`: a veth pair, `ve-NAME` on the host and `host0` inside, with a
//!   /30 of wharf's address pool ([`pool`]): the host end gets its first
//!   address, host0 the second, and the default route through the host
//!   end; the host masquerades the subnet (nftables, table `ip wharf`).
//! - `bridge:BR`: a veth pair whose host end, `vb-NAME`, joins the existing
//!   bridge BR. wharf gives host0 no address: the bridge's network (its
//!   DHCP server, the image's own network manager) does.
//! - `zone:ZONE`: as a bridge, but the bridge is `vz-ZONE`, which wharf
//!   creates with the first machine of the zone (with a /24 of the pool,
//!   masqueraded) and removes with its last; each machine gets an address
//!   of the /24 and the bridge's as its default route.
//!
//! Link names follow nspawn: the prefix and the name, and when that is
//! longer than the kernel allows (15 bytes), the prefix, the name's first
//! 8 bytes and 4 hex digits of a hash of the whole name ([`link_name`]).

pub mod host;
pub mod nft;
pub mod pool;

use std::fmt;
use std::net::Ipv4Addr;
use std::str::FromStr;

use serde::Deserialize;

pub use pool::Subnet;

/// The longest interface name the kernel takes (IFNAMSIZ less the NUL).
pub const IFNAME_MAX: usize = 15;

/// Where wharf's own network settings live (the address pool).
pub const SETTINGS_FILE: &str = "/etc/wharf/wharf.toml";

/// The address pool when wharf.toml names none.
pub const DEFAULT_POOL: Subnet = Subnet { addr: Ipv4Addr::new(10, 247, 0, 0), len: 16 };

/// The values `--network` takes, for error messages.
pub const NETWORK_VALUES: &str = "host, private, veth, bridge:BRIDGE or zone:ZONE";

/// The container's network.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum Network {
    /// The host's network namespace.
    #[default]
    Host,
    /// A new network namespace with only a loopback device.
    Private,
    /// A veth pair to the host, addressed and masqueraded by wharf.
    Veth,
    /// A veth pair whose host end joins an existing bridge.
    Bridge(String),
    /// A veth pair on the zone's bridge, which wharf manages.
    Zone(String),
}

/// A `--network` or `--port` value that is not one.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SpecError {
    #[error("'{0}' is not a valid --network value ({NETWORK_VALUES})")]
    Network(String),
    #[error("'{0}' is not a valid bridge name (1 to {IFNAME_MAX} bytes, no '/', ':' or blanks)")]
    Bridge(String),
    #[error("'{0}' is not a valid zone name (1 to 64 of a-z A-Z 0-9 - _)")]
    Zone(String),
    #[error("'{0}' is not a valid --port value ([tcp:|udp:]HOST[:MACHINE], ports 1 to 65535)")]
    Port(String),
}

impl Network {
    /// Whether the container gets a network namespace of its own.
    pub fn private(&self) -> bool {
        !matches!(self, Network::Host)
    }

    /// Whether wharf makes a veth pair for it.
    pub fn has_link(&self) -> bool {
        matches!(self, Network::Veth | Network::Bridge(_) | Network::Zone(_))
    }

    /// Whether wharf addresses host0 (and so can forward ports to it).
    pub fn addressed(&self) -> bool {
        matches!(self, Network::Veth | Network::Zone(_))
    }

    /// The host end's name for machine `machine`.
    pub fn host_link(&self, machine: &str) -> Option<String> {
        match self {
            Network::Veth => Some(link_name("ve-", machine)),
            Network::Bridge(_) | Network::Zone(_) => Some(link_name("vb-", machine)),
            Network::Host | Network::Private => None,
        }
    }
}

impl FromStr for Network {
    type Err = SpecError;

    fn from_str(value: &str) -> Result<Network, SpecError> {
        match value {
            "host" => return Ok(Network::Host),
            "private" => return Ok(Network::Private),
            "veth" => return Ok(Network::Veth),
            _ => {}
        }
        if let Some(bridge) = value.strip_prefix("bridge:") {
            return if valid_ifname(bridge) {
                Ok(Network::Bridge(bridge.to_string()))
            } else {
                Err(SpecError::Bridge(bridge.to_string()))
            };
        }
        if let Some(zone) = value.strip_prefix("zone:") {
            let valid = !zone.is_empty()
                && zone.len() <= 64
                && zone.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_'));
            return if valid { Ok(Network::Zone(zone.to_string())) } else { Err(SpecError::Zone(zone.to_string())) };
        }
        Err(SpecError::Network(value.to_string()))
    }
}

impl fmt::Display for Network {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Network::Host => f.write_str("host"),
            Network::Private => f.write_str("private"),
            Network::Veth => f.write_str("veth"),
            Network::Bridge(bridge) => write!(f, "bridge:{bridge}"),
            Network::Zone(zone) => write!(f, "zone:{zone}"),
        }
    }
}

/// What the kernel takes as an interface name (dev_valid_name).
pub fn valid_ifname(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= IFNAME_MAX
        && name != "."
        && name != ".."
        && !name.bytes().any(|b| b == b'/' || b == b':' || b.is_ascii_whitespace() || b.is_ascii_control())
}

/// `prefix` + `name` when it fits in [`IFNAME_MAX`] bytes; else `prefix`,
/// the first bytes of `name` and 4 hex digits of a hash of all of it, so
/// that two long names that start alike get different links.
pub fn link_name(prefix: &str, name: &str) -> String {
    if prefix.len() + name.len() <= IFNAME_MAX {
        return format!("{prefix}{name}");
    }
    let mut hash: u32 = 0x811c_9dc5;
    for byte in name.bytes() {
        hash ^= u32::from(byte);
        hash = hash.wrapping_mul(0x0100_0193);
    }
    let folded = (hash >> 16) ^ (hash & 0xffff);
    let keep = IFNAME_MAX - prefix.len() - 4;
    // Names are ASCII (machine and zone names), so any byte is a boundary.
    format!("{prefix}{}{folded:04x}", &name[..keep])
}

/// The zone's bridge.
pub fn zone_bridge(zone: &str) -> String {
    link_name("vz-", zone)
}

/// A port's protocol.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Protocol {
    Tcp,
    Udp,
}

impl Protocol {
    pub fn as_str(self) -> &'static str {
        match self {
            Protocol::Tcp => "tcp",
            Protocol::Udp => "udp",
        }
    }
}

/// `--port=[tcp:|udp:]HOST[:MACHINE]`: connections to the host's port HOST
/// go to the machine's port MACHINE (HOST by default).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Port {
    pub protocol: Protocol,
    pub host: u16,
    pub machine: u16,
}

impl FromStr for Port {
    type Err = SpecError;

    fn from_str(value: &str) -> Result<Port, SpecError> {
        let bad = || SpecError::Port(value.to_string());
        let (protocol, rest) = match value.split_once(':') {
            Some(("tcp", rest)) => (Protocol::Tcp, rest),
            Some(("udp", rest)) => (Protocol::Udp, rest),
            _ => (Protocol::Tcp, value),
        };
        let number = |text: &str| text.parse::<u16>().ok().filter(|&n| n > 0 && !text.starts_with('+'));
        let (host, machine) = match rest.split_once(':') {
            Some((host, machine)) => (number(host).ok_or_else(bad)?, number(machine).ok_or_else(bad)?),
            None => {
                let port = number(rest).ok_or_else(bad)?;
                (port, port)
            }
        };
        Ok(Port { protocol, host, machine })
    }
}

impl fmt::Display for Port {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}:{}", self.protocol.as_str(), self.host, self.machine)
    }
}

/// Ports as one comma-separated word (how they cross the bus and the
/// launcher's command line).
pub fn format_ports(ports: &[Port]) -> String {
    ports.iter().map(Port::to_string).collect::<Vec<_>>().join(",")
}

/// The inverse of [`format_ports`]; an empty word is no port.
pub fn parse_ports(list: &str) -> Result<Vec<Port>, SpecError> {
    list.split(',').map(str::trim).filter(|p| !p.is_empty()).map(str::parse).collect()
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct SettingsLayout {
    #[serde(default)]
    network: NetworkSection,
    /// Read by `machine::settings`; its keys are checked there.
    #[serde(default)]
    #[allow(dead_code)]
    machines: toml::Table,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct NetworkSection {
    pool: Option<String>,
}

/// The address pool wharf.toml sets (`[network] pool = "10.247.0.0/16"`),
/// else [`DEFAULT_POOL`]. The pool must be a private (RFC 1918) range of
/// /8 to /24.
pub fn parse_pool(settings: &str) -> Result<Subnet, String> {
    let layout: SettingsLayout = toml::from_str(settings).map_err(|e| e.message().to_string())?;
    let Some(text) = layout.network.pool else {
        return Ok(DEFAULT_POOL);
    };
    let pool: Subnet = text.parse().map_err(|e| format!("pool: {e}"))?;
    if !(8..=24).contains(&pool.len) || !pool.addr.is_private() {
        return Err(format!("pool: '{text}' is not a private IPv4 range of /8 to /24"));
    }
    Ok(pool)
}

/// The resolv.conf a machine with a network of its own gets, as nspawn's
/// `--resolv-conf=auto` picks it: the host's, unless that points at a
/// resolver on the host's loopback (systemd-resolved's stub, 127.0.0.53),
/// which the machine cannot reach; then the upstream servers resolved
/// lists (`upstream`, /run/systemd/resolve/resolv.conf). Loopback
/// name servers are left out either way.
pub fn resolv_conf(host: &str, upstream: Option<&str>) -> String {
    let loopback_server = |line: &str| {
        line.trim()
            .strip_prefix("nameserver")
            .map(str::trim)
            .and_then(|addr| addr.parse::<std::net::IpAddr>().ok())
            .is_some_and(|addr| addr.is_loopback())
    };
    let source = match upstream {
        Some(upstream) if host.lines().any(loopback_server) => upstream,
        _ => host,
    };
    let mut text: String =
        source.lines().filter(|line| !loopback_server(line)).map(|line| format!("{line}\n")).collect();
    if text.is_empty() {
        text.push('\n');
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn network_values_parse_and_print_back() {
        for value in ["host", "private", "veth", "bridge:br0", "zone:lab", "zone:a_b-1"] {
            assert_eq!(value.parse::<Network>().unwrap().to_string(), value);
        }
        assert_eq!("bridge:br0".parse::<Network>().unwrap(), Network::Bridge("br0".into()));
        let error = "vth".parse::<Network>().unwrap_err().to_string();
        assert_eq!(error, "'vth' is not a valid --network value (host, private, veth, bridge:BRIDGE or zone:ZONE)");
        assert!(matches!("bridge:".parse::<Network>(), Err(SpecError::Bridge(_))));
        assert!(matches!("bridge:a/b".parse::<Network>(), Err(SpecError::Bridge(_))));
        assert!(matches!("bridge:0123456789abcdef".parse::<Network>(), Err(SpecError::Bridge(_))));
        assert!(matches!("zone:a.b".parse::<Network>(), Err(SpecError::Zone(_))));
        assert!(matches!("zone:".parse::<Network>(), Err(SpecError::Zone(_))));
    }

    #[test]
    fn link_names_fit_the_kernel_and_differ() {
        assert_eq!(link_name("ve-", "f28"), "ve-f28");
        assert_eq!(link_name("ve-", "abcdefghijkl"), "ve-abcdefghijkl");
        let long = link_name("ve-", "abcdefghijklm");
        assert_eq!(long.len(), IFNAME_MAX);
        assert!(long.starts_with("ve-abcdefgh"), "{long}");
        assert_ne!(link_name("ve-", "abcdefghijklmno"), link_name("ve-", "abcdefghijklmnp"));
        assert_eq!(link_name("ve-", &"x".repeat(64)).len(), IFNAME_MAX);
        assert!(valid_ifname(&link_name("vb-", &"x".repeat(64))));
        assert_eq!(zone_bridge("lab"), "vz-lab");
        assert_eq!(Network::Veth.host_link("f28").as_deref(), Some("ve-f28"));
        assert_eq!(Network::Zone("lab".into()).host_link("f28").as_deref(), Some("vb-f28"));
        assert_eq!(Network::Private.host_link("f28"), None);
    }

    #[test]
    fn ports_parse_as_nspawn_takes_them() {
        let port = |s: &str| s.parse::<Port>();
        assert_eq!(port("8080").unwrap(), Port { protocol: Protocol::Tcp, host: 8080, machine: 8080 });
        assert_eq!(port("tcp:8080:80").unwrap(), Port { protocol: Protocol::Tcp, host: 8080, machine: 80 });
        assert_eq!(port("udp:53").unwrap(), Port { protocol: Protocol::Udp, host: 53, machine: 53 });
        assert_eq!(port("8080:80").unwrap().machine, 80);
        for bad in ["", "0", "65536", "tcp:", "sctp:80", "80:", ":80", "a", "+80", "1:2:3", "tcp:1:2:3"] {
            assert_eq!(port(bad).unwrap_err(), SpecError::Port(bad.into()), "{bad:?}");
        }
        let ports = parse_ports("tcp:8080:80, udp:53").unwrap();
        assert_eq!(format_ports(&ports), "tcp:8080:80,udp:53:53");
        assert_eq!(parse_ports(&format_ports(&ports)).unwrap(), ports);
        assert!(parse_ports("").unwrap().is_empty());
    }

    #[test]
    fn the_pool_comes_from_wharf_toml() {
        assert_eq!(parse_pool("").unwrap(), DEFAULT_POOL);
        assert_eq!(parse_pool("[network]\npool = \"192.168.64.0/18\"\n").unwrap().to_string(), "192.168.64.0/18");
        assert!(parse_pool("[network]\npool = \"8.8.0.0/16\"\n").unwrap_err().contains("not a private"));
        assert!(parse_pool("[network]\npool = \"10.0.0.0/30\"\n").is_err());
        assert!(parse_pool("[network]\npool = \"10.0.0.0\"\n").is_err());
        assert!(parse_pool("[network]\nrange = 1\n").is_err());
    }

    #[test]
    fn resolv_conf_skips_the_stub() {
        let stub = "# stub\nnameserver 127.0.0.53\noptions edns0 trust-ad\nsearch lan\n";
        let upstream = "nameserver 192.0.2.1\nnameserver 192.0.2.2\nsearch lan\n";
        assert_eq!(resolv_conf(stub, Some(upstream)), upstream);
        let plain = "nameserver 192.0.2.9\n";
        assert_eq!(resolv_conf(plain, Some(upstream)), plain);
        assert_eq!(resolv_conf(stub, None), "# stub\noptions edns0 trust-ad\nsearch lan\n");
        assert_eq!(resolv_conf("", None), "\n");
    }
}
