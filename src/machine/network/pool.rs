//! wharf's address pool: subnets for machines (a /30 each on `veth`) and
//! zones (a /24 each), taken first-fit from the pool and never one that
//! overlaps a route the host has (its own addresses, its LAN, a VPN) or a
//! subnet another machine or zone holds.

use std::fmt;
use std::net::Ipv4Addr;
use std::str::FromStr;

/// The subnet of one machine on `veth`: the host end, the machine.
pub const MACHINE_PREFIX: u8 = 30;
/// The subnet of one zone: its bridge and up to 253 machines.
pub const ZONE_PREFIX: u8 = 24;

/// An IPv4 network: its first address and prefix length.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Subnet {
    pub addr: Ipv4Addr,
    pub len: u8,
}

impl Subnet {
    fn mask(len: u8) -> u32 {
        if len == 0 { 0 } else { u32::MAX << (32 - u32::from(len)) }
    }

    fn first(&self) -> u32 {
        u32::from(self.addr) & Self::mask(self.len)
    }

    fn last(&self) -> u32 {
        self.first() | !Self::mask(self.len)
    }

    /// Whether the two share any address.
    pub fn overlaps(&self, other: &Subnet) -> bool {
        self.first() <= other.last() && other.first() <= self.last()
    }

    /// The `n`th address of the subnet (0 is the network's own).
    pub fn host(&self, n: u32) -> Ipv4Addr {
        Ipv4Addr::from(self.first() + n)
    }

    /// How many addresses machines and bridges can have (no network or
    /// broadcast address).
    pub fn hosts(&self) -> u32 {
        (self.last() - self.first()).saturating_sub(1)
    }

    /// Whether `addr` is in the subnet.
    pub fn contains(&self, addr: Ipv4Addr) -> bool {
        (self.first()..=self.last()).contains(&u32::from(addr))
    }
}

impl FromStr for Subnet {
    type Err = String;

    fn from_str(text: &str) -> Result<Subnet, String> {
        let bad = || format!("'{text}' is not an IPv4 subnet (A.B.C.D/LEN)");
        let (addr, len) = text.split_once('/').ok_or_else(bad)?;
        let addr: Ipv4Addr = addr.parse().map_err(|_| bad())?;
        let len: u8 = len.parse().ok().filter(|l| *l <= 32).ok_or_else(bad)?;
        let subnet = Subnet { addr, len };
        if u32::from(addr) != subnet.first() {
            return Err(format!("'{text}' has host bits set"));
        }
        Ok(subnet)
    }
}

impl fmt::Display for Subnet {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.addr, self.len)
    }
}

/// The first /`len` of `pool` that overlaps nothing in `taken`.
pub fn allocate(pool: Subnet, len: u8, taken: &[Subnet]) -> Option<Subnet> {
    if len < pool.len || len > 32 {
        return None;
    }
    let step = 1u64 << (32 - u32::from(len));
    let mut start = u64::from(pool.first());
    while start + step - 1 <= u64::from(pool.last()) {
        let candidate = Subnet { addr: Ipv4Addr::from(start as u32), len };
        match taken.iter().filter(|t| t.overlaps(&candidate)).map(|t| u64::from(t.last())).max() {
            None => return Some(candidate),
            // Past what is in the way, aligned to the next candidate.
            Some(last) => start = (last + 1).div_ceil(step) * step,
        }
    }
    None
}

/// The destinations of the host's IPv4 routes in every table, from
/// `ip -j -4 route show table all`: networks, and single addresses (the
/// host's own, in the local table). The default route is no collision.
pub fn parse_routes(json: &str) -> Result<Vec<Subnet>, String> {
    let routes: Vec<serde_json::Value> = serde_json::from_str(json).map_err(|e| format!("reading routes: {e}"))?;
    let mut subnets = Vec::new();
    for route in routes {
        let Some(dst) = route.get("dst").and_then(|d| d.as_str()) else { continue };
        if dst == "default" || dst == "0.0.0.0/0" {
            continue;
        }
        let subnet = match dst.split_once('/') {
            Some((addr, len)) => addr.parse().ok().zip(len.parse().ok()).map(|(addr, len)| {
                let loose = Subnet { addr, len };
                Subnet { addr: Ipv4Addr::from(loose.first()), len }
            }),
            None => dst.parse().ok().map(|addr| Subnet { addr, len: 32 }),
        };
        if let Some(subnet) = subnet {
            subnets.push(subnet);
        }
    }
    Ok(subnets)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn net(text: &str) -> Subnet {
        text.parse().unwrap()
    }

    #[test]
    fn subnets_parse_and_overlap() {
        assert_eq!(net("10.247.0.0/16").to_string(), "10.247.0.0/16");
        assert!("10.247.0.1/16".parse::<Subnet>().unwrap_err().contains("host bits"));
        assert!("10.247.0.0/33".parse::<Subnet>().is_err());
        assert!("10.247.0.0".parse::<Subnet>().is_err());
        assert!(net("10.0.0.0/8").overlaps(&net("10.247.3.0/24")));
        assert!(!net("10.247.0.0/30").overlaps(&net("10.247.0.4/30")));
        let machine = net("10.247.0.4/30");
        assert_eq!(
            (machine.host(1), machine.host(2), machine.hosts()),
            ("10.247.0.5".parse().unwrap(), "10.247.0.6".parse().unwrap(), 2)
        );
        assert_eq!(net("10.247.1.0/24").hosts(), 254);
        assert!(net("10.247.1.0/24").contains("10.247.1.200".parse().unwrap()));
    }

    #[test]
    fn allocation_skips_what_is_taken() {
        let pool = net("10.247.0.0/16");
        assert_eq!(allocate(pool, 30, &[]), Some(net("10.247.0.0/30")));
        assert_eq!(allocate(pool, 30, &[net("10.247.0.0/30")]), Some(net("10.247.0.4/30")));
        // A zone's /24 and a host route in the way.
        let taken = [net("10.247.0.0/24"), net("10.247.1.7/32")];
        assert_eq!(allocate(pool, 30, &taken), Some(net("10.247.1.0/30")));
        assert_eq!(allocate(pool, 30, &[net("10.247.0.0/24"), net("10.247.1.2/32")]), Some(net("10.247.1.4/30")));
        assert_eq!(allocate(pool, 24, &taken), Some(net("10.247.2.0/24")));
        // A route covering the whole pool: nothing.
        assert_eq!(allocate(pool, 30, &[net("10.0.0.0/8")]), None);
        let small = net("192.168.7.0/29");
        assert_eq!(allocate(small, 30, &[net("192.168.7.0/30")]), Some(net("192.168.7.4/30")));
        assert_eq!(allocate(small, 30, &[net("192.168.7.0/30"), net("192.168.7.4/30")]), None);
        assert_eq!(allocate(small, 24, &[]), None);
    }

    #[test]
    fn host_routes_are_read_from_ip_json() {
        let json = r#"[{"type":"unicast","dst":"default","gateway":"10.0.2.2","dev":"eth0"},
            {"dst":"10.0.2.0/24","dev":"eth0","protocol":"kernel"},
            {"type":"local","dst":"10.0.2.15","table":"local","dev":"eth0"},
            {"type":"broadcast","dst":"127.255.255.255","table":"local"},
            {"type":"local","dst":"127.0.0.0/8","table":"local","dev":"lo"}]"#;
        let routes = parse_routes(json).unwrap();
        assert_eq!(routes, [net("10.0.2.0/24"), net("10.0.2.15/32"), net("127.255.255.255/32"), net("127.0.0.0/8")]);
        assert!(parse_routes("[]").unwrap().is_empty());
        assert!(parse_routes("nope").is_err());
    }
}
