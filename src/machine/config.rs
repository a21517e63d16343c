//! Per-machine settings kept in `/etc/wharf/machines/NAME.toml`, applied on
//! every start:
//!
//! ```toml
//! [limits]
//! MemoryMax = "512M"
//! CPUQuota = "50%"
//! TasksMax = 200
//!
//! [container]
//! private-users = "pick"   # pick, no, or a UID
//! network = "veth"         # host, private, veth, bridge:BR or zone:ZONE
//! port = ["tcp:8080:80"]   # [tcp:|udp:]HOST[:MACHINE], veth and zone only
//! capability = ["CAP_SYS_TIME"]         # or "CAP_A,CAP_B", or "all"
//! drop-capability = ["CAP_SYS_ADMIN"]
//! no-new-privileges = true
//! bind = ["/srv/data:/data:idmap"]      # as machine start --bind=
//! bind-ro = ["/srv/static"]             # as machine start --bind-ro=
//! ```

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::Deserialize;

use super::property::{Limit, Property, PropertyError};

/// Where machine settings live.
pub const CONFIG_DIR: &str = "/etc/wharf/machines";

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("{}: {reason}", path.display())]
    Invalid { path: PathBuf, reason: String },
    #[error("{}: {source}", path.display())]
    Limit {
        path: PathBuf,
        #[source]
        source: PropertyError,
    },
    #[error("{}: {source}", path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

/// A limit's value in TOML: `MemoryMax = "512M"` or `TasksMax = 200`.
#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
enum LimitValue {
    Text(String),
    Number(u64),
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
struct ContainerSection {
    private_users: Option<String>,
    network: Option<String>,
    port: Option<PortList>,
    capability: Option<CapabilityList>,
    drop_capability: Option<CapabilityList>,
    no_new_privileges: Option<bool>,
    #[serde(default)]
    bind: Vec<String>,
    #[serde(default)]
    bind_ro: Vec<String>,
}

/// Ports in TOML: `"tcp:8080:80"` or `["tcp:8080:80", "udp:53"]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
enum PortList {
    One(String),
    List(Vec<String>),
}

/// Capabilities in TOML: `"CAP_A,CAP_B"` or `["CAP_A", "CAP_B"]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
enum CapabilityList {
    Text(String),
    List(Vec<String>),
}

impl CapabilityList {
    /// The list as the launcher takes it, checked.
    fn checked(self, key: &str, path: &Path) -> Result<String, ConfigError> {
        let text = match self {
            CapabilityList::Text(text) => text,
            CapabilityList::List(names) => names.join(","),
        };
        super::capability::parse(&text)
            .map_err(|e| ConfigError::Invalid { path: path.to_path_buf(), reason: format!("{key}: {e}") })?;
        Ok(text)
    }
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileLayout {
    #[serde(default)]
    limits: BTreeMap<String, LimitValue>,
    #[serde(default)]
    container: ContainerSection,
}

/// A machine's settings.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct MachineConfig {
    pub limits: Vec<Property>,
    pub private_users: Option<String>,
    pub network: Option<String>,
    /// `port` of `[container]`.
    pub ports: Vec<super::network::Port>,
    /// `capability` of `[container]`, as a comma-separated list.
    pub capability: Option<String>,
    pub drop_capability: Option<String>,
    pub no_new_privileges: Option<bool>,
    /// `bind`, then `bind-ro`, of `[container]` (after a `.nspawn` file's).
    pub binds: Vec<super::files::BindSpec>,
    /// Only from a `.nspawn` file (`PrivateUsersOwnership=`).
    pub private_users_ownership: Option<String>,
    /// Only from a `.nspawn` file (`Environment=`).
    pub environment: Vec<String>,
}

impl MachineConfig {
    /// Parses settings text; `path` names the file in errors.
    pub fn parse(text: &str, path: &Path) -> Result<MachineConfig, ConfigError> {
        let layout: FileLayout = toml::from_str(text)
            .map_err(|e| ConfigError::Invalid { path: path.to_path_buf(), reason: e.message().to_string() })?;
        let mut limits = Vec::new();
        for (key, value) in layout.limits {
            let limit = Limit::from_name(&key).ok_or_else(|| ConfigError::Limit {
                path: path.to_path_buf(),
                source: PropertyError::Unknown(key.clone()),
            })?;
            let text = match value {
                LimitValue::Text(text) => text,
                LimitValue::Number(n) => n.to_string(),
            };
            let property = Property::with_value(limit, &text)
                .map_err(|source| ConfigError::Limit { path: path.to_path_buf(), source })?;
            limits.push(property);
        }
        let container = layout.container;
        let list = |value: Option<CapabilityList>, key| value.map(|v| v.checked(key, path)).transpose();
        let invalid =
            |e: super::network::SpecError| ConfigError::Invalid { path: path.to_path_buf(), reason: e.to_string() };
        if let Some(network) = &container.network {
            network.parse::<super::network::Network>().map_err(invalid)?;
        }
        let ports = match container.port {
            None => Vec::new(),
            Some(PortList::One(port)) => vec![port],
            Some(PortList::List(ports)) => ports,
        };
        let ports = ports.iter().map(|p| p.parse()).collect::<Result<Vec<_>, _>>().map_err(invalid)?;
        let mut binds = Vec::new();
        for (key, specs, read_only) in [("bind", &container.bind, false), ("bind-ro", &container.bind_ro, true)] {
            for spec in specs {
                binds.push(super::files::BindSpec::parse(spec, read_only).map_err(|reason| ConfigError::Invalid {
                    path: path.to_path_buf(),
                    reason: format!("{key}: {reason}"),
                })?);
            }
        }
        Ok(MachineConfig {
            limits,
            private_users: container.private_users,
            network: container.network,
            ports,
            capability: list(container.capability, "capability")?,
            drop_capability: list(container.drop_capability, "drop-capability")?,
            no_new_privileges: container.no_new_privileges,
            binds,
            private_users_ownership: None,
            environment: Vec::new(),
        })
    }

    /// These settings over those of a `.nspawn` file: a key set here wins,
    /// ports given here replace the file's, binds add to the file's.
    pub fn over_nspawn(self, nspawn: super::nspawn_settings::NspawnSettings) -> MachineConfig {
        MachineConfig {
            limits: self.limits,
            private_users: self.private_users.or(nspawn.private_users),
            network: self.network.or(nspawn.network),
            ports: if self.ports.is_empty() { nspawn.ports } else { self.ports },
            capability: self.capability.or(nspawn.capability),
            drop_capability: self.drop_capability.or(nspawn.drop_capability),
            no_new_privileges: self.no_new_privileges.or(nspawn.no_new_privileges),
            binds: nspawn.binds.into_iter().chain(self.binds).collect(),
            private_users_ownership: self.private_users_ownership.or(nspawn.private_users_ownership),
            environment: nspawn.environment.into_iter().chain(self.environment).collect(),
        }
    }

    /// The settings of `machine` below `dir`; none when there is no file.
    pub fn load(dir: &Path, machine: &str) -> Result<MachineConfig, ConfigError> {
        let path = dir.join(format!("{machine}.toml"));
        match std::fs::read_to_string(&path) {
            Ok(text) => MachineConfig::parse(&text, &path),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(MachineConfig::default()),
            Err(source) => Err(ConfigError::Io { path, source }),
        }
    }

    /// Limits from the file, overridden by those given on the command line.
    pub fn merged_limits(&self, given: &[Property]) -> Vec<Property> {
        let mut merged: Vec<Property> =
            self.limits.iter().filter(|p| !given.iter().any(|g| g.limit == p.limit)).cloned().collect();
        merged.extend(given.iter().cloned());
        merged
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::machine::property::Value;

    #[test]
    fn settings_parse_and_merge() {
        let text = "[limits]\nMemoryMax = \"512M\"\nTasksMax = 200\n\n[container]\nprivate-users = \"pick\"\nnetwork = \"private\"\n";
        let config = MachineConfig::parse(text, Path::new("f28.toml")).unwrap();
        assert_eq!(config.limits.len(), 2);
        assert_eq!(config.private_users.as_deref(), Some("pick"));
        let given = [Property::parse("TasksMax=50").unwrap()];
        let merged = config.merged_limits(&given);
        let tasks: Vec<&Property> = merged.iter().filter(|p| p.limit == Limit::TasksMax).collect();
        assert_eq!(tasks.len(), 1);
        assert_eq!(tasks[0].value, Value::Number(50));
    }

    #[test]
    fn container_confinement_keys_parse() {
        let text = "[container]\ncapability = [\"CAP_SYS_TIME\", \"CAP_NET_ADMIN\"]\ndrop-capability = \"CAP_SYS_ADMIN\"\nno-new-privileges = true\n";
        let config = MachineConfig::parse(text, Path::new("f28.toml")).unwrap();
        assert_eq!(config.capability.as_deref(), Some("CAP_SYS_TIME,CAP_NET_ADMIN"));
        assert_eq!(config.drop_capability.as_deref(), Some("CAP_SYS_ADMIN"));
        assert_eq!(config.no_new_privileges, Some(true));
        let error =
            MachineConfig::parse("[container]\ncapability = \"CAP_NOPE\"\n", Path::new("/etc/wharf/machines/f28.toml"))
                .unwrap_err()
                .to_string();
        assert_eq!(
            error,
            "/etc/wharf/machines/f28.toml: capability: 'CAP_NOPE' is not a capability (CAP_SYS_ADMIN, ... or all)"
        );
    }

    #[test]
    fn network_keys_parse() {
        let text = "[container]\nnetwork = \"zone:lab\"\nport = [\"tcp:8080:80\", \"udp:53\"]\n";
        let config = MachineConfig::parse(text, Path::new("f28.toml")).unwrap();
        assert_eq!(config.network.as_deref(), Some("zone:lab"));
        assert_eq!(crate::machine::network::format_ports(&config.ports), "tcp:8080:80,udp:53:53");
        let one = MachineConfig::parse("[container]\nport = \"8080\"\n", Path::new("f28.toml")).unwrap();
        assert_eq!(one.ports.len(), 1);
        let error = |text: &str| MachineConfig::parse(text, Path::new("f28.toml")).unwrap_err().to_string();
        assert_eq!(
            error("[container]\nnetwork = \"vth\"\n"),
            "f28.toml: 'vth' is not a valid --network value (host, private, veth, bridge:BRIDGE or zone:ZONE)"
        );
        assert!(error("[container]\nport = \"99999\"\n").contains("'99999' is not a valid --port value"));
    }

    #[test]
    fn bind_keys_parse() {
        let text = "[container]\nbind = [\"/srv/a:/a:idmap\"]\nbind-ro = [\"/srv/b\"]\n";
        let config = MachineConfig::parse(text, Path::new("f28.toml")).unwrap();
        assert_eq!(config.binds.len(), 2);
        assert!(!config.binds[0].read_only && config.binds[1].read_only);
        assert_eq!(config.binds[0].destination, Path::new("/a"));
        let error = MachineConfig::parse("[container]\nbind = [\"srv\"]\n", Path::new("/etc/wharf/machines/f28.toml"))
            .unwrap_err()
            .to_string();
        assert_eq!(error, "/etc/wharf/machines/f28.toml: bind: bind source 'srv' is not an absolute path");
    }

    #[test]
    fn settings_win_over_nspawn() {
        let nspawn = crate::machine::nspawn_settings::parse(
            "[Exec]\nPrivateUsers=no\nEnvironment=A=1\nNoNewPrivileges=yes\n[Files]\nBind=/srv/n\n\
             [Network]\nZone=lab\nPort=22\n",
            Path::new("/etc/systemd/nspawn/f28.nspawn"),
            crate::machine::nspawn_settings::Trust::Trusted,
        )
        .unwrap();
        let text = "[container]\nnetwork = \"veth\"\nport = \"8080:80\"\nbind = [\"/srv/t\"]\n";
        let config = MachineConfig::parse(text, Path::new("f28.toml")).unwrap().over_nspawn(nspawn);
        assert_eq!(config.network.as_deref(), Some("veth"));
        assert_eq!(crate::machine::network::format_ports(&config.ports), "tcp:8080:80");
        assert_eq!(config.private_users.as_deref(), Some("no"));
        assert_eq!(config.no_new_privileges, Some(true));
        assert_eq!(config.environment, ["A=1"]);
        let sources: Vec<&Path> = config.binds.iter().map(|b| b.source.as_path()).collect();
        assert_eq!(sources, [Path::new("/srv/n"), Path::new("/srv/t")]);
    }

    #[test]
    fn bad_settings_name_the_file() {
        let error =
            |text: &str| MachineConfig::parse(text, Path::new("/etc/wharf/machines/f28.toml")).unwrap_err().to_string();
        assert_eq!(
            error("[limits]\nMemoryMax = \"lots\"\n"),
            "/etc/wharf/machines/f28.toml: MemoryMax: 'lots' is not a size (bytes, K, M, G, T) or infinity"
        );
        assert!(error("[limits]\nNice = 5\n").starts_with("/etc/wharf/machines/f28.toml: unknown property 'Nice'"));
        assert!(error("[other]\n").starts_with("/etc/wharf/machines/f28.toml: unknown field `other`"));
        assert!(error("[container]\nprivate_users = 1\n").contains("unknown field"));
    }
}
