//! The fleet file: what a host should run, as TOML (see wharf-fleet(5)).
//!
//! ```toml
//! [[portable]]
//! image = "/srv/images/foobar_2.raw"   # a path (relative: to this file's directory),
//!                                      # or a name in the search path or beside this file
//! version = "2"                        # refuse any other version
//! profile = "strict"
//! enabled = true
//! running = true
//! [portable.properties]                # set on the image's services
//! MemoryMax = "256M"
//!
//! [[machine]]
//! name = "f28"
//! source = "/srv/images/f28.tar.xz"    # imported when the image is missing
//! started = true
//! network = "zone:lab"                # kept in its settings file, with
//! port = ["tcp:8080:80"]               # the limits (wharf-machine.toml(5))
//! [machine.limits]
//! MemoryMax = "512M"
//! ```

use std::collections::BTreeMap;
use std::time::Duration;

use serde::Deserialize;

use super::health::Health;
use crate::image::name::validate_prefix;
use crate::machine::property::{Limit, Property};

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{file}: {reason}")]
pub struct FileError {
    pub file: String,
    pub reason: String,
}

/// A value given as a string or a number (`TasksMax = 50`, `MemoryMax = "1G"`).
#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
enum Scalar {
    Text(String),
    Number(u64),
    Flag(bool),
}

impl Scalar {
    fn text(&self) -> String {
        match self {
            Scalar::Text(text) => text.clone(),
            Scalar::Number(n) => n.to_string(),
            Scalar::Flag(b) => if *b { "yes" } else { "no" }.to_string(),
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
struct PortableEntry {
    image: String,
    version: Option<String>,
    sha256: Option<String>,
    #[serde(default)]
    prefixes: Vec<String>,
    profile: Option<String>,
    #[serde(default)]
    runtime: bool,
    #[serde(default)]
    enabled: bool,
    #[serde(default)]
    running: bool,
    start_timeout: Option<String>,
    health: Option<Words>,
    health_timeout: Option<String>,
    #[serde(default)]
    properties: BTreeMap<String, Scalar>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
struct MachineEntry {
    /// Also the image's name: a machine boots the image of its own name,
    /// as under machinectl.
    name: String,
    source: Option<String>,
    #[serde(default)]
    started: bool,
    #[serde(default)]
    enabled: bool,
    #[serde(default)]
    limits: BTreeMap<String, Scalar>,
    network: Option<String>,
    port: Option<Ports>,
    health: Option<Words>,
    health_timeout: Option<String>,
}

/// `health = "/usr/bin/check --quick"` (split at white space) or
/// `health = ["/usr/bin/check", "--quick"]`.
#[derive(Debug, Deserialize)]
#[serde(untagged)]
enum Words {
    One(String),
    List(Vec<String>),
}

/// The health check of an entry, checked: `health-timeout` only with
/// `health`, and a duration of at most an hour.
fn health_of(command: Option<Words>, timeout: Option<&str>) -> Result<Option<Health>, String> {
    let Some(command) = command else {
        return match timeout {
            Some(_) => Err("health-timeout is given without health".into()),
            None => Ok(None),
        };
    };
    let words = match command {
        Words::One(text) => text.split_whitespace().map(str::to_string).collect(),
        Words::List(words) => words,
    };
    let command = super::health::parse_command(words)?;
    let timeout = match timeout {
        None => super::health::DEFAULT_TIMEOUT,
        Some(text) => parse_duration(text)
            .filter(|d| *d >= Duration::from_secs(1) && *d <= super::health::MAX_TIMEOUT)
            .ok_or_else(|| format!("health-timeout '{text}' is not a duration from 1s to 1h"))?,
    };
    Ok(Some(Health { command, timeout }))
}

/// `port = "tcp:8080:80"` or `port = ["tcp:8080:80", "udp:53"]`.
#[derive(Debug, Deserialize)]
#[serde(untagged)]
enum Ports {
    One(String),
    List(Vec<String>),
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Layout {
    #[serde(default)]
    portable: Vec<PortableEntry>,
    #[serde(default)]
    machine: Vec<MachineEntry>,
}

/// A portable service image the host should have attached.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PortableWant {
    pub image: String,
    pub version: Option<String>,
    /// Lower-case hex.
    pub sha256: Option<String>,
    pub prefixes: Vec<String>,
    pub profile: String,
    pub runtime: bool,
    pub enabled: bool,
    pub running: bool,
    pub start_timeout: Duration,
    /// Run in its service once started: the step is done only when it succeeds.
    pub health: Option<Health>,
    /// `Key=Value` settings for the image's services, sorted by key.
    pub properties: Vec<(String, String)>,
}

/// A machine the host should have (and maybe run).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MachineWant {
    /// The machine's name, and its image's in the machine search path.
    pub name: String,
    pub source: Option<String>,
    pub started: bool,
    pub enabled: bool,
    pub limits: Vec<Property>,
    /// `network` of its settings file; `None`: left as the file has it.
    pub network: Option<String>,
    /// `port` of its settings file; `None`: left as the file has it.
    pub ports: Option<Vec<crate::machine::network::Port>>,
    /// Run inside the machine once it is ready: its start is done only when it succeeds.
    pub health: Option<Health>,
}

/// A parsed and checked fleet file.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct FleetFile {
    pub portables: Vec<PortableWant>,
    pub machines: Vec<MachineWant>,
}

pub const DEFAULT_START_TIMEOUT: Duration = Duration::from_secs(30);

/// Unit settings a fleet file may set on portable services: resource
/// limits and a few service knobs that make sense per host.
const SERVICE_SETTINGS: &[&str] = &[
    "MemoryMax",
    "MemoryHigh",
    "MemoryLow",
    "MemorySwapMax",
    "CPUQuota",
    "CPUWeight",
    "TasksMax",
    "IOWeight",
    "AllowedCPUs",
    "Nice",
    "LimitNOFILE",
    "Environment",
    "Restart",
    "RestartSec",
    "TimeoutStartSec",
];

impl FleetFile {
    /// Parses and checks fleet file text; `file` names it in errors.
    pub fn parse(text: &str, file: &str) -> Result<FleetFile, FileError> {
        let fail = |reason: String| FileError { file: file.to_string(), reason };
        let layout: Layout = toml::from_str(text).map_err(|e| {
            let at =
                e.span().map(|span| line_of(text, span.start)).map(|line| format!("line {line}: ")).unwrap_or_default();
            fail(format!("{at}{}", e.message()))
        })?;
        let mut portables = Vec::new();
        for (index, entry) in layout.portable.into_iter().enumerate() {
            let context = |reason: String| fail(format!("[[portable]] #{} ({}): {reason}", index + 1, entry.image));
            if entry.image.trim().is_empty() {
                return Err(context("image is empty".into()));
            }
            for prefix in &entry.prefixes {
                validate_prefix(prefix).map_err(|e| context(e.to_string()))?;
            }
            let sha256 = match entry.sha256 {
                Some(hash) if hash.len() == 64 && hash.chars().all(|c| c.is_ascii_hexdigit()) => {
                    Some(hash.to_ascii_lowercase())
                }
                Some(hash) => return Err(context(format!("sha256 '{hash}' is not 64 hex digits"))),
                None => None,
            };
            let start_timeout = match &entry.start_timeout {
                Some(text) => parse_duration(text)
                    .ok_or_else(|| context(format!("start-timeout '{text}' is not a duration like 30s or 2min")))?,
                None => DEFAULT_START_TIMEOUT,
            };
            let health = health_of(entry.health, entry.health_timeout.as_deref()).map_err(context)?;
            let mut properties = Vec::new();
            for (key, value) in &entry.properties {
                if !SERVICE_SETTINGS.contains(&key.as_str()) {
                    return Err(context(format!(
                        "property '{key}' cannot be set here (allowed: {})",
                        SERVICE_SETTINGS.join(", ")
                    )));
                }
                if let Some(limit) = Limit::from_name(key) {
                    Property::with_value(limit, &value.text()).map_err(|e| context(e.to_string()))?;
                }
                let text = value.text();
                if text.contains('\n') {
                    return Err(context(format!("property '{key}' holds a newline")));
                }
                properties.push((key.clone(), text));
            }
            if portables.iter().any(|p: &PortableWant| p.image == entry.image) {
                return Err(context("the image is listed twice".into()));
            }
            portables.push(PortableWant {
                image: entry.image,
                version: entry.version,
                sha256,
                prefixes: entry.prefixes,
                profile: entry.profile.unwrap_or_else(|| crate::portable::profile::DEFAULT_PROFILE.to_string()),
                runtime: entry.runtime,
                enabled: entry.enabled,
                running: entry.running,
                start_timeout,
                health,
                properties,
            });
        }
        let mut machines = Vec::new();
        for (index, entry) in layout.machine.into_iter().enumerate() {
            let context = |reason: String| fail(format!("[[machine]] #{} ({}): {reason}", index + 1, entry.name));
            crate::machine::name::validate(&entry.name).map_err(|e| context(e.to_string()))?;
            let mut limits = Vec::new();
            for (key, value) in &entry.limits {
                let limit = Limit::from_name(key).ok_or_else(|| {
                    context(crate::machine::property::PropertyError::Unknown(key.clone()).to_string())
                })?;
                limits.push(Property::with_value(limit, &value.text()).map_err(|e| context(e.to_string()))?);
            }
            if machines.iter().any(|m: &MachineWant| m.name == entry.name) {
                return Err(context("the machine is listed twice".into()));
            }
            if let Some(network) = &entry.network {
                network.parse::<crate::machine::network::Network>().map_err(|e| context(e.to_string()))?;
            }
            let ports = match entry.port {
                None => None,
                Some(Ports::One(port)) => Some(vec![port]),
                Some(Ports::List(ports)) => Some(ports),
            };
            let ports = ports
                .map(|ports| ports.iter().map(|p| p.parse()).collect::<Result<Vec<_>, _>>())
                .transpose()
                .map_err(|e: crate::machine::network::SpecError| context(e.to_string()))?;
            let health = health_of(entry.health, entry.health_timeout.as_deref()).map_err(context)?;
            if health.is_some() && !entry.started {
                return Err(context("health is checked when the machine starts: it needs started = true".into()));
            }
            machines.push(MachineWant {
                name: entry.name,
                source: entry.source,
                started: entry.started,
                enabled: entry.enabled,
                limits,
                network: entry.network,
                ports,
                health,
            });
        }
        Ok(FleetFile { portables, machines })
    }
}

fn line_of(text: &str, offset: usize) -> usize {
    text[..offset.min(text.len())].matches('\n').count() + 1
}

/// `30s`, `2min`, `1m30s`, `500ms`, or plain seconds.
pub fn parse_duration(text: &str) -> Option<Duration> {
    let text = text.trim();
    if let Ok(seconds) = text.parse::<u64>() {
        return Some(Duration::from_secs(seconds));
    }
    let mut total = Duration::ZERO;
    let mut rest = text;
    while !rest.is_empty() {
        let digits = rest.find(|c: char| !c.is_ascii_digit()).unwrap_or(rest.len());
        let number: u64 = rest[..digits].parse().ok()?;
        rest = &rest[digits..];
        let unit_end = rest.find(|c: char| c.is_ascii_digit()).unwrap_or(rest.len());
        let unit = rest[..unit_end].trim();
        rest = &rest[unit_end..];
        total += match unit {
            "ms" => Duration::from_millis(number),
            "s" | "sec" => Duration::from_secs(number),
            "m" | "min" => Duration::from_secs(number * 60),
            "h" => Duration::from_secs(number * 3600),
            _ => return None,
        };
    }
    (total > Duration::ZERO).then_some(total)
}

#[cfg(test)]
mod tests {
    use super::*;

    const EXAMPLE: &str = r#"
[[portable]]
image = "/srv/images/foobar_2.raw"
version = "2"
profile = "strict"
enabled = true
running = true
start-timeout = "1min"
[portable.properties]
MemoryMax = "256M"
TasksMax = 50

[[portable]]
image = "other"

[[machine]]
name = "f28"
source = "/srv/images/f28.tar.xz"
started = true
network = "zone:lab"
port = ["tcp:8080:80"]
[machine.limits]
MemoryMax = "512M"
"#;

    #[test]
    fn the_documented_example_parses() {
        let fleet = FleetFile::parse(EXAMPLE, "fleet.toml").unwrap();
        let foobar = &fleet.portables[0];
        assert_eq!(foobar.profile, "strict");
        assert_eq!(foobar.start_timeout, Duration::from_secs(60));
        assert_eq!(
            foobar.properties,
            [("MemoryMax".to_string(), "256M".to_string()), ("TasksMax".to_string(), "50".to_string())]
        );
        let other = &fleet.portables[1];
        assert_eq!(
            (other.profile.as_str(), other.running, other.start_timeout),
            ("default", false, DEFAULT_START_TIMEOUT)
        );
        assert_eq!(fleet.machines[0].limits.len(), 1);
        assert_eq!(fleet.machines[0].network.as_deref(), Some("zone:lab"));
        assert_eq!(fleet.machines[0].ports.as_ref().map(Vec::len), Some(1));
    }

    #[test]
    fn mistakes_are_named_with_their_place() {
        let error = |text: &str| FleetFile::parse(text, "fleet.toml").unwrap_err().to_string();
        assert!(error("[[portable]]\nimage = \"x\"\nrunning = maybe\n").starts_with("fleet.toml: line 3: "));
        assert!(error("[[portable]]\nimage = \"x\"\nrunnning = true\n").contains("unknown field `runnning`"));
        assert_eq!(
            error("[[portable]]\nimage = \"x\"\n[portable.properties]\nExecStart = \"/bin/sh\"\n"),
            "fleet.toml: [[portable]] #1 (x): property 'ExecStart' cannot be set here (allowed: MemoryMax, MemoryHigh, MemoryLow, MemorySwapMax, CPUQuota, CPUWeight, TasksMax, IOWeight, AllowedCPUs, Nice, LimitNOFILE, Environment, Restart, RestartSec, TimeoutStartSec)"
        );
        assert_eq!(
            error("[[portable]]\nimage = \"x\"\n[portable.properties]\nMemoryMax = \"lots\"\n"),
            "fleet.toml: [[portable]] #1 (x): MemoryMax: 'lots' is not a size (bytes, K, M, G, T) or infinity"
        );
        assert!(error("[[portable]]\nimage = \"x\"\nsha256 = \"abc\"\n").contains("is not 64 hex digits"));
        assert!(error("[[portable]]\nimage = \"x\"\n[[portable]]\nimage = \"x\"\n").contains("listed twice"));
        assert!(error("[[machine]]\nname = \"bad name\"\n").contains("machine name 'bad name' contains ' '"));
        assert_eq!(
            error("[[machine]]\nname = \"f28\"\nnetwork = \"vth\"\n"),
            "fleet.toml: [[machine]] #1 (f28): 'vth' is not a valid --network value (host, private, veth, bridge:BRIDGE or zone:ZONE)"
        );
        assert!(error("[[machine]]\nname = \"f28\"\nport = [\"0\"]\n").contains("'0' is not a valid --port value"));
        assert!(error("[[portable]]\nimage = \"x\"\nstart-timeout = \"soon\"\n").contains("is not a duration"));
    }

    #[test]
    fn health_checks_are_parsed_and_checked() {
        let fleet = FleetFile::parse(
            "[[portable]]\nimage = \"a\"\nrunning = true\nhealth = \"/usr/bin/check --quick\"\n\
             [[portable]]\nimage = \"b\"\nhealth = [\"/bin/sh\", \"-c\", \"test -e /run/ok\"]\nhealth-timeout = \"5s\"\n\
             [[machine]]\nname = \"m\"\nstarted = true\nhealth = \"/usr/bin/systemctl is-system-running\"\n",
            "fleet.toml",
        )
        .unwrap();
        let a = fleet.portables[0].health.as_ref().unwrap();
        assert_eq!(a.command, ["/usr/bin/check", "--quick"]);
        assert_eq!(a.timeout, Duration::from_secs(30));
        let b = fleet.portables[1].health.as_ref().unwrap();
        assert_eq!((b.command.len(), b.timeout), (3, Duration::from_secs(5)));
        assert_eq!(fleet.machines[0].health.as_ref().unwrap().command[1], "is-system-running");
        assert_eq!(fleet.portables[0].start_timeout, DEFAULT_START_TIMEOUT);
    }

    /// A hostile or careless entry is refused in one line naming it,
    /// before anything runs.
    #[test]
    fn bad_health_checks_are_refused() {
        let error = |body: &str| FleetFile::parse(body, "fleet.toml").unwrap_err().to_string();
        let portable = |extra: &str| error(&format!("[[portable]]\nimage = \"x\"\n{extra}"));
        assert_eq!(portable("health = \"\"\n"), "fleet.toml: [[portable]] #1 (x): health is empty");
        assert_eq!(portable("health = []\n"), "fleet.toml: [[portable]] #1 (x): health is empty");
        assert!(portable("health = \"check\"\n").contains("'check' is not an absolute path"));
        assert!(portable("health = [\"/bin/x\", \"a\\u0000b\"]\n").contains("NUL or line break"));
        assert!(portable("health = [\"/bin/x\", \"a\\nb\"]\n").contains("NUL or line break"));
        assert!(portable("health = 3\n").contains("line 3"));
        assert_eq!(
            portable("health-timeout = \"5s\"\n"),
            "fleet.toml: [[portable]] #1 (x): health-timeout is given without health"
        );
        for timeout in ["0s", "2h", "soon", "500ms"] {
            assert!(
                portable(&format!("health = \"/bin/true\"\nhealth-timeout = \"{timeout}\"\n"))
                    .ends_with(&format!("health-timeout '{timeout}' is not a duration from 1s to 1h")),
                "{timeout}"
            );
        }
        assert!(portable("helth = \"/bin/true\"\n").contains("unknown field `helth`"));
        assert_eq!(
            error("[[machine]]\nname = \"m\"\nhealth = \"/bin/true\"\n"),
            "fleet.toml: [[machine]] #1 (m): health is checked when the machine starts: it needs started = true"
        );
    }

    #[test]
    fn durations() {
        assert_eq!(parse_duration("30"), Some(Duration::from_secs(30)));
        assert_eq!(parse_duration("1m30s"), Some(Duration::from_secs(90)));
        assert_eq!(parse_duration("500ms"), Some(Duration::from_millis(500)));
        assert_eq!(parse_duration("2min"), Some(Duration::from_secs(120)));
        assert_eq!(parse_duration("0s"), None);
        assert_eq!(parse_duration("x"), None);
    }
}
