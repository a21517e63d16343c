//! systemd-nspawn's settings files (`NAME.nspawn`, systemd.nspawn(5)), read
//! by `machine start` so that machines moved from nspawn keep their
//! settings. Only the keys with a wharf meaning are taken; any other key
//! or section is refused (all of them named in one line) rather than
//! silently dropped.
//!
//! As nspawn does, a file in /etc/systemd/nspawn or /run/systemd/nspawn is
//! trusted; one beside the image (which whoever provided the image
//! controls) is not, and its keys that grant access to the host
//! (`Capability=`, `PrivateUsers=`, `PrivateUsersOwnership=`, `Bind=`,
//! `BindReadOnly=` and all of `[Network]`) are ignored.

use std::path::{Path, PathBuf};

use super::files::BindSpec;
use super::network::Port;

/// The trusted places, in the order searched; then the image's directory.
pub const TRUSTED_DIRS: [&str; 2] = ["/etc/systemd/nspawn", "/run/systemd/nspawn"];

#[derive(Debug, thiserror::Error)]
pub enum NspawnError {
    #[error("{}: line {line}: {reason}", path.display())]
    Syntax { path: PathBuf, line: usize, reason: String },
    #[error("{}: [{section}] {key}=: {reason}", path.display())]
    Value { path: PathBuf, section: String, key: String, reason: String },
    #[error("{}: not supported by wharf: {}", path.display(), keys.join(", "))]
    Unsupported { path: PathBuf, keys: Vec<String> },
    #[error("{}: {source}", path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

/// The settings of one `.nspawn` file that wharf applies.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct NspawnSettings {
    /// `VAR=VALUE` for the init, in file order.
    pub environment: Vec<String>,
    /// As `--private-users=` takes it (pick, no or a UID).
    pub private_users: Option<String>,
    /// As `--private-users-ownership=` takes it (auto, idmap or chown).
    pub private_users_ownership: Option<String>,
    /// Comma-separated, as `--capability=` takes it.
    pub capability: Option<String>,
    pub drop_capability: Option<String>,
    pub no_new_privileges: Option<bool>,
    pub binds: Vec<BindSpec>,
    /// As `--network=` takes it (veth, zone:Z, bridge:B or private).
    pub network: Option<String>,
    pub ports: Vec<Port>,
    /// Privileged keys of an untrusted file, ignored (`[Section] Key=`).
    pub ignored: Vec<String>,
}

/// Whether a file's privileged keys count.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Trust {
    Trusted,
    Untrusted,
}

#[derive(Default)]
struct NetworkKeys {
    virtual_ethernet: Option<bool>,
    private: Option<bool>,
    zone: Option<String>,
    bridge: Option<String>,
}

/// Parses a settings file's text; `path` names it in errors.
pub fn parse(text: &str, path: &Path, trust: Trust) -> Result<NspawnSettings, NspawnError> {
    let mut settings = NspawnSettings::default();
    let mut network = NetworkKeys::default();
    let mut unsupported = Vec::new();
    let mut section: Option<String> = None;
    for (line_number, line) in logical_lines(text) {
        let syntax = |reason: String| NspawnError::Syntax { path: path.to_path_buf(), line: line_number, reason };
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') || line.starts_with(';') {
            continue;
        }
        if let Some(rest) = line.strip_prefix('[') {
            let name = rest.strip_suffix(']').ok_or_else(|| syntax(format!("'{line}' is not a [Section] header")))?;
            if !matches!(name, "Exec" | "Files" | "Network") {
                unsupported.push(format!("[{name}]"));
            }
            section = Some(name.to_string());
            continue;
        }
        let (key, value) = line.split_once('=').ok_or_else(|| syntax(format!("'{line}' is not KEY=VALUE")))?;
        let (key, value) = (key.trim(), value.trim());
        let Some(section) = section.as_deref() else {
            return Err(syntax(format!("{key}= is outside of any section")));
        };
        let bad = |reason: String| NspawnError::Value {
            path: path.to_path_buf(),
            section: section.to_string(),
            key: key.to_string(),
            reason,
        };
        let privileged = matches!(
            (section, key),
            ("Exec", "Capability" | "PrivateUsers")
                | ("Files", "Bind" | "BindReadOnly" | "PrivateUsersOwnership")
                | ("Network", _)
        );
        let known = matches!(
            (section, key),
            ("Exec", "Environment" | "PrivateUsers" | "Capability" | "DropCapability" | "NoNewPrivileges" | "Boot")
                | ("Files", "Bind" | "BindReadOnly" | "PrivateUsersOwnership")
                | ("Network", "VirtualEthernet" | "Zone" | "Bridge" | "Port" | "Private")
        );
        if !known {
            if matches!(section, "Exec" | "Files" | "Network") {
                unsupported.push(format!("[{section}] {key}="));
            }
            continue;
        }
        if privileged && trust == Trust::Untrusted {
            settings.ignored.push(format!("[{section}] {key}="));
            continue;
        }
        match key {
            "Environment" => {
                if value.is_empty() {
                    settings.environment.clear();
                }
                for word in split_words(value).map_err(bad)? {
                    settings.environment.push(super::launcher::parse_assignment(&word).map_err(bad)?);
                }
            }
            "PrivateUsers" => settings.private_users = Some(private_users(value).map_err(bad)?),
            "PrivateUsersOwnership" => {
                settings.private_users_ownership = Some(
                    match value {
                        "auto" => "auto",
                        "map" => "idmap",
                        "chown" => "chown",
                        other => return Err(bad(format!("'{other}' is not one wharf takes (auto, map or chown)"))),
                    }
                    .to_string(),
                )
            }
            "Capability" | "DropCapability" => {
                let list = split_words(value).map_err(bad)?.join(",");
                let slot = if key == "Capability" { &mut settings.capability } else { &mut settings.drop_capability };
                if list.is_empty() {
                    *slot = None;
                    continue;
                }
                super::capability::parse(&list).map_err(|e| bad(e.to_string()))?;
                // Repeats add up, as in nspawn.
                *slot = Some(match slot.take() {
                    Some(before) => format!("{before},{list}"),
                    None => list,
                });
            }
            "NoNewPrivileges" => settings.no_new_privileges = Some(boolean(value).map_err(bad)?),
            "Boot" => {
                if !boolean(value).map_err(bad)? {
                    return Err(bad("wharf only boots the image's init (Boot=yes)".into()));
                }
            }
            "Bind" | "BindReadOnly" => {
                if value.is_empty() {
                    settings.binds.retain(|_| false);
                    continue;
                }
                settings.binds.push(BindSpec::parse(value, key == "BindReadOnly").map_err(bad)?);
            }
            "VirtualEthernet" => network.virtual_ethernet = Some(boolean(value).map_err(bad)?),
            "Private" => network.private = Some(boolean(value).map_err(bad)?),
            "Zone" | "Bridge" => {
                let name = (!value.is_empty()).then(|| value.to_string());
                let spec = format!("{}:{value}", key.to_lowercase());
                if name.is_some() {
                    spec.parse::<super::network::Network>().map_err(|e| bad(e.to_string()))?;
                }
                if key == "Zone" { network.zone = name } else { network.bridge = name }
            }
            "Port" => {
                if value.is_empty() {
                    settings.ports.clear();
                    continue;
                }
                settings.ports.push(value.parse().map_err(|e: super::network::SpecError| bad(e.to_string()))?);
            }
            _ => unreachable!("every known key is handled"),
        }
    }
    if !unsupported.is_empty() {
        return Err(NspawnError::Unsupported { path: path.to_path_buf(), keys: unsupported });
    }
    settings.network = match network {
        NetworkKeys { zone: Some(_), bridge: Some(_), .. } => {
            return Err(NspawnError::Value {
                path: path.to_path_buf(),
                section: "Network".into(),
                key: "Zone".into(),
                reason: "Zone= and Bridge= exclude each other".into(),
            });
        }
        NetworkKeys { zone: Some(zone), .. } => Some(format!("zone:{zone}")),
        NetworkKeys { bridge: Some(bridge), .. } => Some(format!("bridge:{bridge}")),
        NetworkKeys { virtual_ethernet: Some(true), .. } => Some("veth".into()),
        NetworkKeys { private: Some(true), .. } => Some("private".into()),
        _ => None,
    };
    Ok(settings)
}

/// The first settings file of `machine` found: in the trusted directories
/// `trusted` (in order), else `beside` (the image's directory, untrusted).
pub fn load(
    trusted: &[PathBuf],
    beside: Option<&Path>,
    machine: &str,
) -> Result<Option<(PathBuf, NspawnSettings)>, NspawnError> {
    let file = format!("{machine}.nspawn");
    let places = trusted.iter().map(|dir| (dir.join(&file), Trust::Trusted));
    for (path, trust) in places.chain(beside.map(|dir| (dir.join(&file), Trust::Untrusted))) {
        match std::fs::read_to_string(&path) {
            Ok(text) => {
                let settings = parse(&text, &path, trust)?;
                return Ok(Some((path, settings)));
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(source) => return Err(NspawnError::Io { path, source }),
        }
    }
    Ok(None)
}

/// Lines joined where one ends in a backslash, each with its first line's number.
fn logical_lines(text: &str) -> Vec<(usize, String)> {
    let mut lines = Vec::new();
    let mut pending: Option<(usize, String)> = None;
    for (index, raw) in text.lines().enumerate() {
        let (number, mut joined) = pending.take().unwrap_or((index + 1, String::new()));
        // A comment line inside a continuation is dropped, as systemd does.
        if !joined.is_empty() && matches!(raw.trim_start().chars().next(), Some('#' | ';')) {
            pending = Some((number, joined));
            continue;
        }
        match raw.strip_suffix('\\') {
            Some(head) => {
                joined.push_str(head);
                joined.push(' ');
                pending = Some((number, joined));
            }
            None => {
                joined.push_str(raw);
                lines.push((number, joined));
            }
        }
    }
    lines.extend(pending);
    lines
}

/// Words separated by blanks; "double" or 'single' quotes keep blanks in a
/// word, and a backslash takes the next character as it is.
fn split_words(value: &str) -> Result<Vec<String>, String> {
    let mut words = Vec::new();
    let mut chars = value.chars();
    let mut word: Option<String> = None;
    while let Some(c) = chars.next() {
        match c {
            ' ' | '\t' => words.extend(word.take()),
            '\\' => {
                let next = chars.next().ok_or("a trailing backslash")?;
                word.get_or_insert_with(String::new).push(next);
            }
            '"' | '\'' => {
                let current = word.get_or_insert_with(String::new);
                loop {
                    match chars.next() {
                        None => return Err(format!("an unterminated {c} quote")),
                        Some(q) if q == c => break,
                        Some('\\') if c == '"' => current.push(chars.next().ok_or("a trailing backslash")?),
                        Some(other) => current.push(other),
                    }
                }
            }
            other => word.get_or_insert_with(String::new).push(other),
        }
    }
    words.extend(word);
    Ok(words)
}

fn boolean(value: &str) -> Result<bool, String> {
    super::launcher::parse_yes_no(value)
}

/// nspawn's `PrivateUsers=` in wharf's terms: no, pick, a UID (with the
/// 65536 range wharf always gives).
fn private_users(value: &str) -> Result<String, String> {
    if let Ok(false) = boolean(value) {
        return Ok("no".into());
    }
    let (base, range) = match value.split_once(':') {
        Some((base, range)) => (base, Some(range)),
        None => (value, None),
    };
    if value == "pick" {
        return Ok("pick".into());
    }
    if base.parse::<u32>().is_ok() && range.is_none_or(|r| r == "65536") {
        return Ok(base.to_string());
    }
    Err(format!("'{value}' is not one wharf takes (no, pick, UID or UID:65536)"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn trusted(text: &str) -> NspawnSettings {
        parse(text, Path::new("/etc/systemd/nspawn/f28.nspawn"), Trust::Trusted).unwrap()
    }

    fn error(text: &str) -> String {
        parse(text, Path::new("/etc/systemd/nspawn/f28.nspawn"), Trust::Trusted).unwrap_err().to_string()
    }

    #[test]
    fn exec_keys() {
        let s = trusted(
            "# a comment\n; another\n[Exec]\nBoot=yes\nEnvironment=A=1 \"B=two words\"\nEnvironment=C='x y' D=a\\ b\n\
             PrivateUsers=pick\nCapability=CAP_NET_ADMIN CAP_SYS_TIME\nCapability=CAP_SYS_NICE\n\
             DropCapability=CAP_SYS_ADMIN\nNoNewPrivileges=yes\n",
        );
        assert_eq!(s.environment, ["A=1", "B=two words", "C=x y", "D=a b"]);
        assert_eq!(s.private_users.as_deref(), Some("pick"));
        assert_eq!(s.capability.as_deref(), Some("CAP_NET_ADMIN,CAP_SYS_TIME,CAP_SYS_NICE"));
        assert_eq!(s.drop_capability.as_deref(), Some("CAP_SYS_ADMIN"));
        assert_eq!(s.no_new_privileges, Some(true));
        assert_eq!(trusted("[Exec]\nPrivateUsers=no\n").private_users.as_deref(), Some("no"));
        assert_eq!(trusted("[Exec]\nPrivateUsers=1835008:65536\n").private_users.as_deref(), Some("1835008"));
        assert_eq!(trusted("[Exec]\nEnvironment=A=1\nEnvironment=\nEnvironment=B=2\n").environment, ["B=2"]);
        assert_eq!(trusted("[Exec]\nCapability=CAP_SYS_TIME\nCapability=\n").capability, None);
    }

    #[test]
    fn files_keys() {
        let s = trusted("[Files]\nBind=/srv/a:/a:idmap\nBindReadOnly=/srv/b\nPrivateUsersOwnership=map\n");
        assert_eq!(s.binds.len(), 2);
        assert!(!s.binds[0].read_only && s.binds[1].read_only);
        assert_eq!(s.binds[0].destination, Path::new("/a"));
        assert_eq!(s.private_users_ownership.as_deref(), Some("idmap"));
        assert!(trusted("[Files]\nBind=/srv/a\nBind=\n").binds.is_empty());
    }

    #[test]
    fn network_keys() {
        let s = trusted("[Network]\nVirtualEthernet=yes\nPort=tcp:8080:80\nPort=53\n");
        assert_eq!(s.network.as_deref(), Some("veth"));
        assert_eq!(crate::machine::network::format_ports(&s.ports), "tcp:8080:80,tcp:53:53");
        assert_eq!(trusted("[Network]\nZone=lab\n").network.as_deref(), Some("zone:lab"));
        assert_eq!(trusted("[Network]\nBridge=br0\nVirtualEthernet=yes\n").network.as_deref(), Some("bridge:br0"));
        assert_eq!(trusted("[Network]\nPrivate=yes\n").network.as_deref(), Some("private"));
        assert_eq!(trusted("[Network]\nPrivate=no\nVirtualEthernet=no\n").network, None);
        assert!(error("[Network]\nZone=a\nBridge=b\n").contains("exclude each other"));
    }

    #[test]
    fn continuation_lines_join() {
        let s = trusted("[Exec]\nEnvironment=A=1 \\\n# dropped\n  B=2\n");
        assert_eq!(s.environment, ["A=1", "B=2"]);
    }

    #[test]
    fn bad_values_name_file_section_and_key() {
        assert_eq!(
            error("[Exec]\nBoot=no\n"),
            "/etc/systemd/nspawn/f28.nspawn: [Exec] Boot=: wharf only boots the image's init (Boot=yes)"
        );
        assert!(
            error("[Exec]\nNoNewPrivileges=maybe\n")
                .starts_with("/etc/systemd/nspawn/f28.nspawn: [Exec] NoNewPrivileges=: 'maybe'")
        );
        assert!(error("[Exec]\nEnvironment=1A=x\n").contains("[Exec] Environment=:"));
        assert!(error("[Exec]\nEnvironment=A\n").contains("[Exec] Environment=:"));
        assert!(error("[Exec]\nEnvironment=\"A=x\n").contains("unterminated"));
        assert!(error("[Exec]\nEnvironment=container=evil\n").contains("[Exec] Environment=:"));
        assert!(error("[Exec]\nCapability=CAP_NOPE\n").contains("[Exec] Capability=: 'CAP_NOPE' is not a capability"));
        assert!(error("[Exec]\nPrivateUsers=identity\n").contains("[Exec] PrivateUsers=: 'identity'"));
        assert!(error("[Files]\nBind=srv\n").contains("[Files] Bind=: bind source 'srv' is not an absolute path"));
        assert!(error("[Files]\nPrivateUsersOwnership=off\n").contains("PrivateUsersOwnership=: 'off'"));
        assert!(error("[Network]\nPort=99999\n").contains("[Network] Port=:"));
        assert!(error("[Network]\nZone=\"bad zone\"\n").contains("[Network] Zone=:"));
        assert!(error("Boot=yes\n").contains("line 1: Boot= is outside of any section"));
        assert!(error("[Exec]\njunk\n").contains("line 2: 'junk' is not KEY=VALUE"));
        assert!(error("[Exec\n").contains("line 1:"));
    }

    #[test]
    fn unsupported_keys_and_sections_are_all_named() {
        assert_eq!(
            error("[Exec]\nHostname=x\nBoot=yes\n[Files]\nOverlay=/a:/b\n[Other]\nKey=1\n"),
            "/etc/systemd/nspawn/f28.nspawn: not supported by wharf: [Exec] Hostname=, [Files] Overlay=, [Other]"
        );
    }

    #[test]
    fn an_untrusted_file_grants_nothing() {
        let text = "[Exec]\nCapability=all\nPrivateUsers=no\nEnvironment=A=1\nDropCapability=CAP_SYS_TIME\n\
                    NoNewPrivileges=yes\n[Files]\nBind=/:/host\nBindReadOnly=/etc\nPrivateUsersOwnership=chown\n\
                    [Network]\nVirtualEthernet=yes\nPort=22\n";
        let s = parse(text, Path::new("/var/lib/machines/f28.nspawn"), Trust::Untrusted).unwrap();
        assert_eq!(s.capability, None);
        assert_eq!(s.private_users, None);
        assert_eq!(s.private_users_ownership, None);
        assert!(s.binds.is_empty() && s.ports.is_empty());
        assert_eq!(s.network, None);
        assert_eq!(s.environment, ["A=1"]);
        assert_eq!(s.drop_capability.as_deref(), Some("CAP_SYS_TIME"));
        assert_eq!(s.no_new_privileges, Some(true));
        assert_eq!(s.ignored.len(), 7);
        // Unknown keys are refused all the same.
        let e = parse("[Exec]\nHostname=x\n", Path::new("/var/lib/machines/f28.nspawn"), Trust::Untrusted);
        assert!(e.unwrap_err().to_string().contains("[Exec] Hostname="));
    }

    #[test]
    fn the_first_file_found_wins() {
        let root = std::env::temp_dir().join(format!("wharf-nspawn-settings-{}", std::process::id()));
        let (etc, run, images) = (root.join("etc"), root.join("run"), root.join("machines"));
        for dir in [&etc, &run, &images] {
            std::fs::create_dir_all(dir).unwrap();
        }
        let trusted = [etc.clone(), run.clone()];
        assert_eq!(load(&trusted, Some(&images), "f28").unwrap(), None);
        std::fs::write(images.join("f28.nspawn"), "[Files]\nBind=/srv\n[Exec]\nEnvironment=WHERE=image\n").unwrap();
        let (path, s) = load(&trusted, Some(&images), "f28").unwrap().unwrap();
        assert_eq!((path, s.environment, s.binds.len()), (images.join("f28.nspawn"), vec!["WHERE=image".into()], 0));
        std::fs::write(run.join("f28.nspawn"), "[Exec]\nEnvironment=WHERE=run\n[Files]\nBind=/srv\n").unwrap();
        let (path, s) = load(&trusted, Some(&images), "f28").unwrap().unwrap();
        assert_eq!((path, s.environment, s.binds.len()), (run.join("f28.nspawn"), vec!["WHERE=run".into()], 1));
        std::fs::write(etc.join("f28.nspawn"), "[Exec]\nEnvironment=WHERE=etc\n").unwrap();
        let (path, s) = load(&trusted, Some(&images), "f28").unwrap().unwrap();
        assert_eq!((path, s.environment), (etc.join("f28.nspawn"), vec!["WHERE=etc".into()]));
        std::fs::remove_dir_all(&root).unwrap();
    }
}
