//! Making and removing what a machine's network needs on the host: links
//! (with the `ip` tool, run in the container's network namespace for its
//! side, so the image needs none), addresses from the pool, zone bridges,
//! nftables rules (the `nft` tool's JSON input) and IPv4 forwarding.
//!
//! What wharf made is recorded under [`STATE_DIR`] (gone at reboot, like
//! the links and rules themselves) before it is made, so that
//! [`cleanup`] can remove it whoever calls it: the launcher as it exits,
//! and, for a launcher that was killed, `wharfd network-cleanup` from the
//! unit's `ExecStopPost=`. A link is only deleted if it is still the one
//! wharf made (same interface index), so a cleanup can never remove a link
//! of the host's that took the name later.

use std::io::Write;
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use serde::{Deserialize, Serialize};

use super::pool::{self, MACHINE_PREFIX, ZONE_PREFIX};
use super::{Network, Port, Subnet, nft};

/// wharf's records of what it made, one file per machine and zone.
pub const STATE_DIR: &str = "/run/wharf/network";

/// Why a machine's network could not be made (or removed).
#[derive(Debug, thiserror::Error)]
pub enum NetError {
    #[error("--port needs --network=veth or --network=zone:ZONE (the networks whose addresses wharf manages)")]
    PortsNeedAddress,
    #[error("{protocol} port {port} is given twice")]
    PortTwice { protocol: &'static str, port: u16 },
    #[error("{protocol} port {port} is forwarded to machine '{machine}' already")]
    PortTaken { protocol: &'static str, port: u16, machine: String },
    #[error("bridge '{0}' does not exist")]
    NoBridge(String),
    #[error("'{0}' is not a bridge")]
    NotABridge(String),
    #[error("a network interface named '{0}' exists already; wharf does not take over links it did not make")]
    LinkExists(String),
    #[error("the address pool {0} has no free /{1} (all taken, or overlapping the host's routes)")]
    PoolFull(Subnet, u8),
    #[error("zone '{0}' has no free address")]
    ZoneFull(String),
    #[error("{SETTINGS}: {0}", SETTINGS = super::SETTINGS_FILE)]
    Settings(String),
    #[error("'{0}' is not installed (it is needed for the machine's network)")]
    Missing(&'static str),
    #[error("{what}: {reason}")]
    Command { what: String, reason: String },
    #[error("{}: {source}", path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

type Result<T> = std::result::Result<T, NetError>;

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> NetError + '_ {
    move |source| NetError::Io { path: path.to_path_buf(), source }
}

/// What wharf made for a machine.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
struct MachineState {
    network: String,
    link: String,
    /// The host end's interface index, once it exists.
    ifindex: Option<u32>,
    /// Its own subnet (`veth`), masqueraded for it alone.
    subnet: Option<String>,
    /// The machine's address.
    address: Option<String>,
    zone: Option<String>,
    ports: Vec<String>,
}

/// A zone wharf made a bridge for.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
struct ZoneState {
    bridge: String,
    ifindex: u32,
    subnet: String,
}

fn machines_dir() -> PathBuf {
    Path::new(STATE_DIR).join("machines")
}

fn zones_dir() -> PathBuf {
    Path::new(STATE_DIR).join("zones")
}

/// Where IPv4 forwarding's value before wharf turned it on is kept.
fn forwarding_record() -> PathBuf {
    Path::new(STATE_DIR).join("ip_forward")
}

const IP_FORWARD: &str = "/proc/sys/net/ipv4/ip_forward";

fn read_json<T: for<'de> Deserialize<'de>>(path: &Path) -> Result<Option<T>> {
    match std::fs::read(path) {
        Ok(bytes) => serde_json::from_slice(&bytes).map(Some).map_err(|e| NetError::Io {
            path: path.to_path_buf(),
            source: std::io::Error::new(std::io::ErrorKind::InvalidData, e),
        }),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(source) => Err(NetError::Io { path: path.to_path_buf(), source }),
    }
}

fn write_json<T: Serialize>(path: &Path, value: &T) -> Result<()> {
    let bytes = serde_json::to_vec(value).expect("plain records serialize");
    crate::fs::write_atomic(path, &bytes, 0o644).map_err(io(path))
}

/// Every machine's record but `except`'s.
fn other_machines(except: &str) -> Result<Vec<(String, MachineState)>> {
    let dir = machines_dir();
    let mut states = Vec::new();
    let entries = match std::fs::read_dir(&dir) {
        Ok(entries) => entries,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(states),
        Err(source) => return Err(NetError::Io { path: dir, source }),
    };
    for entry in entries {
        let path = entry.map_err(io(&dir))?.path();
        let Some(name) = path.file_name().and_then(|n| n.to_str()).and_then(|n| n.strip_suffix(".json")) else {
            continue;
        };
        if name == except {
            continue;
        }
        if let Some(state) = read_json::<MachineState>(&path)? {
            states.push((name.to_string(), state));
        }
    }
    Ok(states)
}

fn zone_states() -> Result<Vec<ZoneState>> {
    let dir = zones_dir();
    let entries = match std::fs::read_dir(&dir) {
        Ok(entries) => entries,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(source) => return Err(NetError::Io { path: dir, source }),
    };
    let mut zones = Vec::new();
    for entry in entries {
        let path = entry.map_err(io(&dir))?.path();
        if path.extension().is_some_and(|e| e == "json")
            && let Some(zone) = read_json::<ZoneState>(&path)?
        {
            zones.push(zone);
        }
    }
    Ok(zones)
}

/// The lock every change to wharf's network state is made under: two
/// starts must not take the same subnet, and a cleanup must not remove a
/// zone's bridge while a machine joins it.
fn lock() -> Result<std::fs::File> {
    for dir in [machines_dir(), zones_dir()] {
        std::fs::create_dir_all(&dir).map_err(io(&dir))?;
    }
    let path = Path::new(STATE_DIR).join("lock");
    let file = std::fs::OpenOptions::new().create(true).truncate(false).write(true).open(&path).map_err(io(&path))?;
    rustix::fs::flock(&file, rustix::fs::FlockOperation::LockExclusive)
        .map_err(|e| NetError::Io { path, source: e.into() })?;
    Ok(file)
}

/// Runs a tool, with `input` on its stdin; its stdout, or its complaint.
fn run(program: &'static str, args: &[&str], input: Option<&str>, what: impl Into<String>) -> Result<String> {
    let mut command = Command::new(program);
    command.args(args).stdin(if input.is_some() { Stdio::piped() } else { Stdio::null() });
    command.stdout(Stdio::piped()).stderr(Stdio::piped());
    let mut child = command.spawn().map_err(|e| match e.kind() {
        std::io::ErrorKind::NotFound => NetError::Missing(program),
        _ => NetError::Command { what: format!("running {program}"), reason: e.to_string() },
    })?;
    if let (Some(input), Some(mut stdin)) = (input, child.stdin.take()) {
        // A tool that exits early closes the pipe; its status says why.
        let _ = stdin.write_all(input.as_bytes());
    }
    let output = child
        .wait_with_output()
        .map_err(|e| NetError::Command { what: format!("running {program}"), reason: e.to_string() })?;
    if output.status.success() {
        return Ok(String::from_utf8_lossy(&output.stdout).into_owned());
    }
    let stderr = String::from_utf8_lossy(&output.stderr);
    let reason = stderr.lines().map(str::trim).find(|l| !l.is_empty()).unwrap_or("failed").to_string();
    Err(NetError::Command { what: what.into(), reason: format!("{reason} ({program} {})", output.status) })
}

fn ip(args: &[&str]) -> Result<()> {
    run("ip", args, None, format!("ip {}", args.join(" "))).map(drop)
}

/// `ip` in the network namespace of process `pid` (the host's `ip`: the
/// image may have none).
fn ip_in(pid: i32, args: &[&str]) -> Result<()> {
    let pid = pid.to_string();
    let mut argv = vec!["-t", pid.as_str(), "-n", "--", "ip"];
    argv.extend_from_slice(args);
    run("nsenter", &argv, None, format!("in the container: ip {}", args.join(" "))).map(drop)
}

fn nft_apply(document: &serde_json::Value, what: &str) -> Result<()> {
    run("nft", &["-j", "-f", "-"], Some(&document.to_string()), what).map(drop)
}

/// The rules of wharf's table; none when there is no table (or no nft,
/// which then cannot have added any).
fn nft_rules() -> Result<Option<Vec<nft::ListedRule>>> {
    match run("nft", &["-j", "list", "table", nft::FAMILY, nft::TABLE], None, "listing nftables table ip wharf") {
        Ok(json) => nft::parse_listing(&json)
            .map(Some)
            .map_err(|reason| NetError::Command { what: "listing nftables table ip wharf".into(), reason }),
        Err(NetError::Missing(_)) => Ok(None),
        Err(NetError::Command { reason, .. }) if reason.contains("No such file or directory") => Ok(None),
        Err(e) => Err(e),
    }
}

/// The interface index of the host's link `name`, if there is one.
fn ifindex(name: &str) -> Option<u32> {
    std::fs::read_to_string(Path::new("/sys/class/net").join(name).join("ifindex")).ok()?.trim().parse().ok()
}

/// Deletes link `name` if it is still the one with `index`.
fn delete_link(name: &str, index: u32) -> Result<()> {
    if ifindex(name) != Some(index) {
        return Ok(());
    }
    match ip(&["link", "delete", "dev", name]) {
        // Gone meanwhile: with its network namespace, for a veth.
        Err(_) if ifindex(name) != Some(index) => Ok(()),
        other => other,
    }
}

fn host_routes() -> Result<Vec<Subnet>> {
    let json = run("ip", &["-j", "-4", "route", "show", "table", "all"], None, "listing the host's routes")?;
    pool::parse_routes(&json).map_err(|reason| NetError::Command { what: "listing the host's routes".into(), reason })
}

fn load_pool() -> Result<Subnet> {
    match std::fs::read_to_string(super::SETTINGS_FILE) {
        Ok(text) => super::parse_pool(&text).map_err(NetError::Settings),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(super::DEFAULT_POOL),
        Err(e) => Err(NetError::Settings(e.to_string())),
    }
}

/// Turns IPv4 forwarding on, noting that it was off so the last
/// machine's cleanup turns it off again.
fn enable_forwarding() -> Result<()> {
    let current = std::fs::read_to_string(IP_FORWARD).map_err(io(Path::new(IP_FORWARD)))?;
    if current.trim() == "1" {
        return Ok(());
    }
    let record = forwarding_record();
    if !record.exists() {
        crate::fs::write_atomic(&record, current.trim().as_bytes(), 0o644).map_err(io(&record))?;
    }
    std::fs::write(IP_FORWARD, "1").map_err(io(Path::new(IP_FORWARD)))
}

fn restore_forwarding() -> Result<()> {
    let record = forwarding_record();
    let Ok(value) = std::fs::read_to_string(&record) else {
        return Ok(());
    };
    std::fs::write(IP_FORWARD, value.trim()).map_err(io(Path::new(IP_FORWARD)))?;
    std::fs::remove_file(&record).map_err(io(&record))
}

/// A machine's network, decided and recorded; [`attach`] makes its link.
#[derive(Debug, Clone)]
pub struct Prepared {
    machine: String,
    network: Network,
    /// The host end.
    pub link: String,
    /// The bridge the host end joins (`bridge:`, `zone:`).
    master: Option<String>,
    /// The host end's address (`veth`).
    host_address: Option<(Ipv4Addr, u8)>,
    /// The machine's address, prefix length and default route.
    pub inside: Option<(Ipv4Addr, u8, Ipv4Addr)>,
    /// The machine's own subnet (`veth`).
    subnet: Option<Subnet>,
    ports: Vec<Port>,
}

/// Checks a machine's network and takes what it needs: its subnet or
/// zone address, its ports; a zone's bridge is made with its first
/// machine. `None` for `host` and `private`, which need nothing on the
/// host. On an error, [`cleanup`] removes whatever was taken.
pub fn prepare(machine: &str, network: &Network, ports: &[Port]) -> Result<Option<Prepared>> {
    check_ports(network, ports)?;
    let Some(link) = network.host_link(machine) else {
        return Ok(None);
    };
    let _lock = lock()?;
    // A record of an earlier start whose cleanup never ran (a launcher
    // started by hand and killed): its leftovers go first.
    cleanup_locked(machine)?;
    let others = other_machines(machine)?;
    check_host(&link, network, ports, &others)?;
    let mut state = MachineState {
        network: network.to_string(),
        link: link.clone(),
        ports: ports.iter().map(Port::to_string).collect(),
        zone: match network {
            Network::Zone(zone) => Some(zone.clone()),
            _ => None,
        },
        ..MachineState::default()
    };
    let state_path = machines_dir().join(format!("{machine}.json"));
    // Recorded before anything is made, so a cleanup finds what follows.
    write_json(&state_path, &state)?;
    let mut prepared = Prepared {
        machine: machine.to_string(),
        network: network.clone(),
        link,
        master: None,
        host_address: None,
        inside: None,
        subnet: None,
        ports: ports.to_vec(),
    };
    match network {
        Network::Veth => {
            let pool = load_pool()?;
            let subnet = pool::allocate(pool, MACHINE_PREFIX, &taken_subnets(&others)?)
                .ok_or(NetError::PoolFull(pool, MACHINE_PREFIX))?;
            state.subnet = Some(subnet.to_string());
            state.address = Some(subnet.host(2).to_string());
            prepared.subnet = Some(subnet);
            prepared.host_address = Some((subnet.host(1), subnet.len));
            prepared.inside = Some((subnet.host(2), subnet.len, subnet.host(1)));
        }
        Network::Zone(zone) => {
            let (bridge, subnet) = ensure_zone(zone, &others)?;
            let used: Vec<String> = others
                .iter()
                .filter(|(_, s)| s.zone.as_deref() == Some(zone))
                .filter_map(|(_, s)| s.address.clone())
                .collect();
            let address = (2..=subnet.hosts())
                .map(|n| subnet.host(n))
                .find(|a| !used.contains(&a.to_string()))
                .ok_or_else(|| NetError::ZoneFull(zone.clone()))?;
            state.address = Some(address.to_string());
            prepared.inside = Some((address, subnet.len, subnet.host(1)));
            prepared.master = Some(bridge);
        }
        Network::Bridge(bridge) => prepared.master = Some(bridge.clone()),
        Network::Host | Network::Private => {}
    }
    write_json(&state_path, &state)?;
    Ok(Some(prepared))
}

/// What can be refused before a machine's unit exists (wharfd calls it,
/// so that `machine start` says why in one line): the ports, the host
/// link's name, the bridge. The launcher checks again, under the lock.
pub fn precheck(machine: &str, network: &Network, ports: &[Port]) -> Result<()> {
    check_ports(network, ports)?;
    if network.has_link() {
        for tool in ["ip", "nsenter"] {
            require_tool(tool)?;
        }
    }
    if network.addressed() {
        require_tool("nft")?;
    }
    let Some(link) = network.host_link(machine) else {
        return Ok(());
    };
    let own: Option<MachineState> = read_json(&machines_dir().join(format!("{machine}.json")))?;
    // The link of this machine's own stale record goes before the start.
    let stale = own.as_ref().and_then(|state| state.ifindex).is_some_and(|index| ifindex(&link) == Some(index));
    if stale {
        return Ok(());
    }
    check_host(&link, network, ports, &other_machines(machine)?)
}

/// Refuses a network whose tool is missing on the host, before the
/// launcher would find out half way.
fn require_tool(tool: &'static str) -> Result<()> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    let found = std::env::split_paths(&path)
        .chain(["/usr/sbin", "/usr/bin", "/sbin", "/bin"].map(PathBuf::from))
        .any(|dir| dir.join(tool).is_file());
    if found { Ok(()) } else { Err(NetError::Missing(tool)) }
}

fn check_ports(network: &Network, ports: &[Port]) -> Result<()> {
    if !ports.is_empty() && !network.addressed() {
        return Err(NetError::PortsNeedAddress);
    }
    for (i, port) in ports.iter().enumerate() {
        if ports[..i].iter().any(|p| p.protocol == port.protocol && p.host == port.host) {
            return Err(NetError::PortTwice { protocol: port.protocol.as_str(), port: port.host });
        }
    }
    Ok(())
}

fn check_host(link: &str, network: &Network, ports: &[Port], others: &[(String, MachineState)]) -> Result<()> {
    if ifindex(link).is_some() {
        return Err(NetError::LinkExists(link.to_string()));
    }
    if let Network::Zone(zone) = network {
        // The zone's bridge is wharf's own, or no link of that name exists.
        let bridge = super::zone_bridge(zone);
        let recorded: Option<ZoneState> = read_json(&zones_dir().join(format!("{zone}.json")))?;
        let ours = recorded.is_some_and(|state| state.bridge == bridge && ifindex(&bridge) == Some(state.ifindex));
        if !ours && ifindex(&bridge).is_some() {
            return Err(NetError::LinkExists(bridge));
        }
    }
    if let Network::Bridge(bridge) = network {
        if ifindex(bridge).is_none() {
            return Err(NetError::NoBridge(bridge.clone()));
        }
        if !Path::new("/sys/class/net").join(bridge).join("bridge").exists() {
            return Err(NetError::NotABridge(bridge.clone()));
        }
    }
    for port in ports {
        let same = |p: &String| {
            p.parse::<Port>().is_ok_and(|other| other.protocol == port.protocol && other.host == port.host)
        };
        if let Some((owner, _)) = others.iter().find(|(_, state)| state.ports.iter().any(same)) {
            return Err(NetError::PortTaken {
                protocol: port.protocol.as_str(),
                port: port.host,
                machine: owner.clone(),
            });
        }
    }
    Ok(())
}

/// Subnets a new one must not overlap: the host's routes, the other
/// machines' and the zones'.
fn taken_subnets(others: &[(String, MachineState)]) -> Result<Vec<Subnet>> {
    let mut taken = host_routes()?;
    taken.extend(others.iter().filter_map(|(_, s)| s.subnet.as_deref()?.parse::<Subnet>().ok()));
    taken.extend(zone_states()?.iter().filter_map(|z| z.subnet.parse::<Subnet>().ok()));
    Ok(taken)
}

/// The zone's bridge and subnet, made if it has none yet.
fn ensure_zone(zone: &str, others: &[(String, MachineState)]) -> Result<(String, Subnet)> {
    let bridge = super::zone_bridge(zone);
    let path = zones_dir().join(format!("{zone}.json"));
    if let Some(state) = read_json::<ZoneState>(&path)? {
        if ifindex(&state.bridge) == Some(state.ifindex)
            && let Ok(subnet) = state.subnet.parse()
        {
            return Ok((state.bridge, subnet));
        }
        // The record of a bridge that is gone (or was replaced).
        remove_zone(zone)?;
    }
    if ifindex(&bridge).is_some() {
        return Err(NetError::LinkExists(bridge));
    }
    let pool = load_pool()?;
    let subnet =
        pool::allocate(pool, ZONE_PREFIX, &taken_subnets(others)?).ok_or(NetError::PoolFull(pool, ZONE_PREFIX))?;
    ip(&["link", "add", &bridge, "type", "bridge"])?;
    let index = ifindex(&bridge)
        .ok_or_else(|| NetError::Command { what: format!("creating bridge {bridge}"), reason: "it vanished".into() })?;
    let state = ZoneState { bridge: bridge.clone(), ifindex: index, subnet: subnet.to_string() };
    if let Err(e) = write_json(&path, &state) {
        let _ = delete_link(&bridge, index);
        return Err(e);
    }
    let address = format!("{}/{}", subnet.host(1), subnet.len);
    ip(&["address", "add", &address, "dev", &bridge])?;
    ip(&["link", "set", "dev", &bridge, "up"])?;
    nft_apply(&nft::zone_rules(zone, subnet), &format!("adding zone {zone}'s nftables rules"))?;
    enable_forwarding()?;
    Ok((bridge, subnet))
}

/// Makes the veth pair with its container end (`host0`) in the network
/// namespace of process `pid`, addresses both ends and adds the
/// machine's nftables rules.
pub fn attach(prepared: &Prepared, pid: i32) -> Result<()> {
    let _lock = lock()?;
    let link = prepared.link.as_str();
    let pid_text = pid.to_string();
    ip(&["link", "add", link, "type", "veth", "peer", "name", "host0", "netns", &pid_text])?;
    let index = ifindex(link)
        .ok_or_else(|| NetError::Command { what: format!("creating link {link}"), reason: "it vanished".into() })?;
    let state_path = machines_dir().join(format!("{}.json", prepared.machine));
    let mut state: MachineState = read_json(&state_path)?.unwrap_or_default();
    state.ifindex = Some(index);
    write_json(&state_path, &state)?;

    if let Some(master) = &prepared.master {
        ip(&["link", "set", "dev", link, "master", master])?;
    }
    if let Some((address, len)) = prepared.host_address {
        ip(&["address", "add", &format!("{address}/{len}"), "dev", link])?;
    }
    ip(&["link", "set", "dev", link, "up"])?;
    ip_in(pid, &["link", "set", "dev", "lo", "up"])?;
    let Some((address, len, gateway)) = prepared.inside else {
        // bridge: the bridge's network addresses host0 (DHCP and the
        // image's own network manager).
        return Ok(());
    };
    ip_in(pid, &["address", "add", &format!("{address}/{len}"), "dev", "host0"])?;
    ip_in(pid, &["link", "set", "dev", "host0", "up"])?;
    ip_in(pid, &["route", "add", "default", "via", &gateway.to_string()])?;
    if !prepared.ports.is_empty() {
        // Connections the host makes from 127.0.0.1 to a forwarded port
        // leave through this device after DNAT: the kernel routes such
        // sources only where route_localnet allows it. The setting is the
        // device's own and goes with it.
        let out = prepared.master.as_deref().unwrap_or(link);
        let path = format!("/proc/sys/net/ipv4/conf/{out}/route_localnet");
        std::fs::write(&path, "1").map_err(io(Path::new(&path)))?;
    }
    let out = prepared.master.as_deref().unwrap_or(link);
    let rules = nft::machine_rules(&prepared.machine, prepared.subnet, address, out, &prepared.ports);
    nft_apply(&rules, &format!("adding machine {}'s nftables rules", prepared.machine))?;
    enable_forwarding()
}

/// The addresses a prepared network gives, for the launcher's log.
impl std::fmt::Display for Prepared {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} on {}", self.network, self.link)?;
        if let Some((address, len, gateway)) = self.inside {
            write!(f, ", host0 {address}/{len} via {gateway}")?;
        }
        Ok(())
    }
}

/// Removes everything wharf made for `machine`'s network: its nftables
/// rules, its host link, its zone's bridge when it was the zone's last
/// machine, and, after the last machine, wharf's table and the forwarding
/// it turned on. Without a record there is nothing to do (and no tool is
/// run), so it is harmless for machines on `host` or `private`.
pub fn cleanup(machine: &str) -> Result<()> {
    if !machines_dir().join(format!("{machine}.json")).exists() {
        return Ok(());
    }
    let _lock = lock()?;
    cleanup_locked(machine)
}

fn cleanup_locked(machine: &str) -> Result<()> {
    let path = machines_dir().join(format!("{machine}.json"));
    let Some(state) = read_json::<MachineState>(&path)? else {
        return Ok(());
    };
    // Each part is tried, whatever became of the others; the first error is told.
    let mut errors: Vec<NetError> = Vec::new();
    let keep = |result: Result<()>, errors: &mut Vec<NetError>| {
        if let Err(e) = result {
            errors.push(e);
        }
    };
    keep(delete_rules(&nft::machine_comment(machine)), &mut errors);
    if let Some(index) = state.ifindex {
        keep(delete_link(&state.link, index), &mut errors);
    }
    if let Some(zone) = &state.zone {
        match other_machines(machine) {
            Ok(others) if !others.iter().any(|(_, s)| s.zone.as_ref() == Some(zone)) => {
                keep(remove_zone(zone), &mut errors)
            }
            Ok(_) => {}
            Err(e) => errors.push(e),
        }
    }
    if errors.is_empty() {
        // The record goes last: while anything of it may be left, a later
        // cleanup must find it.
        keep(std::fs::remove_file(&path).map_err(io(&path)), &mut errors);
    }
    if errors.is_empty() {
        match other_machines(machine) {
            Ok(others) if others.is_empty() => {
                keep(restore_forwarding(), &mut errors);
                keep(delete_table_if_empty(), &mut errors);
            }
            Ok(_) => {}
            Err(e) => errors.push(e),
        }
    }
    match errors.into_iter().next() {
        None => Ok(()),
        Some(e) => Err(e),
    }
}

fn delete_rules(comment: &str) -> Result<()> {
    let Some(rules) = nft_rules()? else {
        return Ok(());
    };
    match nft::delete_rules(&rules, comment) {
        Some(document) => nft_apply(&document, &format!("deleting nftables rules '{comment}'")),
        None => Ok(()),
    }
}

fn delete_table_if_empty() -> Result<()> {
    match nft_rules()? {
        Some(rules) if rules.is_empty() => nft_apply(&nft::delete_table(), "deleting nftables table ip wharf"),
        _ => Ok(()),
    }
}

fn remove_zone(zone: &str) -> Result<()> {
    let path = zones_dir().join(format!("{zone}.json"));
    let Some(state) = read_json::<ZoneState>(&path)? else {
        return Ok(());
    };
    delete_rules(&nft::zone_comment(zone))?;
    delete_link(&state.bridge, state.ifindex)?;
    std::fs::remove_file(&path).map_err(io(&path))
}

/// `wharfd network-cleanup --machine=NAME`: [`cleanup`], with a one-line
/// error naming the machine.
pub fn cleanup_main(machine: &str) -> std::process::ExitCode {
    let result = crate::machine::name::MachineName::new(machine)
        .map_err(|e| e.to_string())
        .and_then(|name| cleanup(name.as_str()).map_err(|e| e.to_string()));
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(reason) => {
            eprintln!("wharfd network-cleanup: machine '{machine}': {reason}");
            std::process::ExitCode::FAILURE
        }
    }
}
