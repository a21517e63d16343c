//! The unit a portable service pulled from a registry gets when its image
//! brings none: what the image config says a container runs (Entrypoint
//! and Cmd, Env, WorkingDir, User) as a `NAME.service`, and the os-release
//! a portable image needs. Every value from the config is quoted for the
//! unit file's syntax, so that none can add a line, a directive, a
//! specifier or a variable expansion of its own.

use super::RunConfig;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ServiceError {
    #[error("the image has no unit for '{0}' and its config names no command (Entrypoint, Cmd) to make one of")]
    NoCommand(String),
    #[error("the image config's {what} '{value}' cannot be put in a unit: {reason}")]
    Value { what: &'static str, value: String, reason: &'static str },
    #[error("the image config's user '{0}' is not in the image's /etc/passwd (systemd would look it up on the host)")]
    UnknownUser(String),
    #[error("the image config's group '{0}' is not in the image's /etc/group")]
    UnknownGroup(String),
}

/// What the unit is made from.
#[derive(Debug, Clone, Copy)]
pub struct Source<'a> {
    /// The unit's name without `.service`.
    pub unit: &'a str,
    /// The reference pulled, for the description.
    pub reference: &'a str,
    pub config: &'a RunConfig,
    /// The image's /etc/passwd and /etc/group, to turn names into numbers.
    pub passwd: Option<&'a str>,
    pub group: Option<&'a str>,
}

/// A word of a command line, in double quotes: `\`, `"`, control
/// characters escaped as C escapes, `%` doubled (no specifier), `$`
/// doubled (no variable expansion).
pub fn quote_word(word: &str) -> String {
    let mut out = String::from("\"");
    escape_into(&mut out, word, true);
    out.push('"');
    out
}

fn escape_into(out: &mut String, text: &str, dollars: bool) {
    for c in text.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '"' => out.push_str("\\\""),
            '%' => out.push_str("%%"),
            '$' if dollars => out.push_str("$$"),
            '\n' => out.push_str("\\n"),
            '\t' => out.push_str("\\t"),
            c if c.is_control() => {
                let mut buffer = [0u8; 4];
                for byte in c.encode_utf8(&mut buffer).bytes() {
                    out.push_str(&format!("\\x{byte:02x}"));
                }
            }
            c => out.push(c),
        }
    }
}

/// Text for a comment line: nothing that ends the line.
fn comment(text: &str) -> String {
    text.chars().flat_map(char::escape_debug).take(500).collect()
}

fn valid_env_name(name: &str) -> bool {
    !name.is_empty()
        && !name.starts_with(|c: char| c.is_ascii_digit())
        && name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_')
}

/// The numeric id of `name` in a passwd or group file (field 3), and for
/// passwd the primary group (field 4).
fn lookup(file: &str, name: &str) -> Option<(u32, Option<u32>)> {
    file.lines().find_map(|line| {
        let fields: Vec<&str> = line.split(':').collect();
        if fields.len() < 3 || fields[0] != name {
            return None;
        }
        let id = fields[2].parse().ok()?;
        Some((id, fields.get(3).and_then(|g| g.parse().ok())))
    })
}

/// `User=` and `Group=` for the config's `USER[:GROUP]`; none for root.
/// Numbers are written as numbers, names as the numbers the image's own
/// files give them (systemd would resolve a name on the host). A user
/// without a group gets their primary group from the image, else the group
/// of their own number: never root's group by default.
fn user_and_group(source: &Source<'_>) -> Result<Option<(u32, u32)>, ServiceError> {
    let Some(spec) = source.config.user.as_deref().filter(|u| !u.is_empty()) else { return Ok(None) };
    let (user, group) = match spec.split_once(':') {
        Some((user, group)) => (user, Some(group)),
        None => (spec, None),
    };
    let (uid, primary) = match user.parse::<u32>() {
        Ok(uid) => (uid, source.passwd.and_then(|p| p.lines().find_map(|l| primary_of(l, uid)))),
        Err(_) => {
            source.passwd.and_then(|p| lookup(p, user)).ok_or_else(|| ServiceError::UnknownUser(comment(user)))?
        }
    };
    let gid = match group.filter(|g| !g.is_empty()) {
        Some(group) => match group.parse::<u32>() {
            Ok(gid) => gid,
            Err(_) => {
                source.group.and_then(|g| lookup(g, group)).ok_or_else(|| ServiceError::UnknownGroup(comment(group)))?.0
            }
        },
        None => primary.unwrap_or(uid),
    };
    if uid == 0 && gid == 0 {
        return Ok(None);
    }
    Ok(Some((uid, gid)))
}

fn primary_of(line: &str, uid: u32) -> Option<u32> {
    let fields: Vec<&str> = line.split(':').collect();
    if fields.len() >= 4 && fields[2].parse::<u32>().ok() == Some(uid) { fields[3].parse().ok() } else { None }
}

/// The unit file.
pub fn unit_file(source: &Source<'_>) -> Result<String, ServiceError> {
    let config = source.config;
    let command: Vec<&String> =
        config.entrypoint.iter().flatten().chain(config.cmd.iter().flatten()).collect::<Vec<_>>();
    if command.is_empty() || command[0].is_empty() {
        return Err(ServiceError::NoCommand(source.unit.to_string()));
    }
    let mut unit = String::new();
    unit.push_str(&format!("# Written by wharf from the OCI image config of {}.\n", comment(source.reference)));
    if let Some(ports) = &config.exposed_ports
        && !ports.is_empty()
    {
        let ports: Vec<String> = ports.keys().map(|p| comment(p)).collect();
        unit.push_str(&format!("# ExposedPorts: {}\n", ports.join(" ")));
    }
    unit.push_str("[Unit]\n");
    let mut description = String::new();
    escape_into(&mut description, &format!("{} (OCI image {})", source.unit, source.reference), false);
    unit.push_str(&format!("Description={description}\n\n[Service]\nType=exec\n"));
    let words: Vec<String> = command.iter().map(|w| quote_word(w)).collect();
    unit.push_str(&format!("ExecStart={}\n", words.join(" ")));
    for variable in config.env.iter().flatten() {
        let Some((name, _)) = variable.split_once('=') else { continue };
        if !valid_env_name(name) {
            unit.push_str(&format!("# Not a variable name, left out: {}\n", comment(name)));
            continue;
        }
        let mut value = String::from("\"");
        escape_into(&mut value, variable, false);
        value.push('"');
        unit.push_str(&format!("Environment={value}\n"));
    }
    if let Some(dir) = config.working_dir.as_deref().filter(|d| !d.is_empty()) {
        let bad = |reason| ServiceError::Value { what: "WorkingDir", value: comment(dir), reason };
        if !dir.starts_with('/') {
            return Err(bad("it is not an absolute path"));
        }
        if dir.chars().any(|c| c.is_control()) || dir.trim() != dir || dir.contains("\\") {
            return Err(bad("it holds control characters, a backslash or blanks at its ends"));
        }
        unit.push_str(&format!("WorkingDirectory={}\n", dir.replace('%', "%%")));
    }
    if let Some((uid, gid)) = user_and_group(source)? {
        unit.push_str(&format!("User={uid}\nGroup={gid}\n"));
    }
    unit.push_str("\n[Install]\nWantedBy=multi-user.target\n");
    Ok(unit)
}

/// An os-release for an image that has none (a portable image must have
/// one); its values are quoted as os-release(5) says.
pub fn os_release(name: &str, reference: &str) -> String {
    let quote = |text: &str| {
        let mut out = String::from("\"");
        for c in text.chars().filter(|c| !c.is_control()) {
            if matches!(c, '\\' | '"' | '$' | '`') {
                out.push('\\');
            }
            out.push(c);
        }
        out.push('"');
        out
    };
    format!(
        "# Written by wharf: the OCI image had no os-release.\nID=oci\nNAME={}\nPRETTY_NAME={}\nPORTABLE_PREFIXES={}\n",
        quote("OCI image"),
        quote(&format!("{name} (OCI image {reference})")),
        quote(name)
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(entrypoint: &[&str], cmd: &[&str]) -> RunConfig {
        let words = |w: &[&str]| (!w.is_empty()).then(|| w.iter().map(|s| s.to_string()).collect());
        RunConfig { entrypoint: words(entrypoint), cmd: words(cmd), ..RunConfig::default() }
    }

    fn source<'a>(config: &'a RunConfig) -> Source<'a> {
        Source { unit: "app", reference: "127.0.0.1:5000/app:1", config, passwd: None, group: None }
    }

    fn line<'a>(unit: &'a str, key: &str) -> Vec<&'a str> {
        unit.lines().filter_map(|l| l.strip_prefix(key)).collect()
    }

    #[test]
    fn the_command_is_entrypoint_then_cmd_each_word_quoted() {
        let config = config(&["/bin/sh", "-c"], &["echo \"hi\" $HOME 100% \\ ; x\ny"]);
        let unit = unit_file(&source(&config)).unwrap();
        assert_eq!(line(&unit, "ExecStart="), [r#""/bin/sh" "-c" "echo \"hi\" $$HOME 100%% \\ ; x\ny""#]);
        assert!(unit.contains("[Service]\nType=exec\n"));
        assert!(unit.ends_with("[Install]\nWantedBy=multi-user.target\n"));
        // Cmd alone, and a lone semicolon is a word (quoted), not a separator.
        let unit = unit_file(&source(&self::config(&[], &["/app", ";", "-x"]))).unwrap();
        assert_eq!(line(&unit, "ExecStart="), [r#""/app" ";" "-x""#]);
        let none = unit_file(&source(&self::config(&[], &[]))).unwrap_err();
        assert_eq!(none, ServiceError::NoCommand("app".into()));
        // A control character stays inside its word.
        assert_eq!(quote_word("a\u{1}b"), r#""a\x01b""#);
    }

    #[test]
    fn environment_working_directory_and_ports() {
        let mut config = config(&["/app"], &[]);
        config.env =
            Some(vec!["PATH=/usr/bin:/bin".into(), "Q=say \"x\" 5%".into(), "1BAD=x".into(), "NOVALUE".into()]);
        config.working_dir = Some("/srv/app".into());
        config.exposed_ports = Some([("8080/tcp".to_string(), serde_json::json!({}))].into());
        let unit = unit_file(&source(&config)).unwrap();
        assert_eq!(line(&unit, "Environment="), [r#""PATH=/usr/bin:/bin""#, r#""Q=say \"x\" 5%%""#]);
        assert_eq!(line(&unit, "WorkingDirectory="), ["/srv/app"]);
        assert_eq!(line(&unit, "# ExposedPorts: "), ["8080/tcp"]);
        assert_eq!(line(&unit, "# Not a variable name, left out: "), ["1BAD"]);
        config.working_dir = Some("srv".into());
        assert!(unit_file(&source(&config)).is_err());
        config.working_dir = Some("/srv\n[Service]".into());
        assert!(unit_file(&source(&config)).is_err());
    }

    #[test]
    fn nothing_from_the_config_makes_a_line_of_its_own() {
        let mut config = config(&["/app\nExecStartPre=/bin/evil"], &[]);
        config.env = Some(vec!["A=1\nExecStartPre=/bin/evil".into()]);
        config.exposed_ports = Some([("80/tcp\nUser=0".to_string(), serde_json::json!({}))].into());
        let unit = unit_file(&source(&config)).unwrap();
        assert!(!unit.lines().any(|l| l.starts_with("ExecStartPre") || l.starts_with("User")), "{unit}");
    }

    #[test]
    fn users_are_numbers_from_the_images_own_files() {
        let passwd = "root:x:0:0::/root:/bin/sh\nweb:x:101:102::/srv:/bin/false\n";
        let group = "root:x:0:\nweb:x:102:\nstaff:x:50:\n";
        let unit_for = |user: &str| {
            let mut config = config(&["/app"], &[]);
            config.user = Some(user.into());
            let source = Source { passwd: Some(passwd), group: Some(group), ..source(&config) };
            unit_file(&source).map(|u| (line(&u, "User=").join(","), line(&u, "Group=").join(",")))
        };
        assert_eq!(unit_for("web").unwrap(), ("101".into(), "102".into()));
        assert_eq!(unit_for("web:staff").unwrap(), ("101".into(), "50".into()));
        assert_eq!(unit_for("1000").unwrap(), ("1000".into(), "1000".into()));
        assert_eq!(unit_for("1000:7").unwrap(), ("1000".into(), "7".into()));
        assert_eq!(unit_for("root").unwrap(), (String::new(), String::new()));
        assert_eq!(unit_for("0").unwrap(), (String::new(), String::new()));
        assert!(matches!(unit_for("nobody"), Err(ServiceError::UnknownUser(_))));
        assert!(matches!(unit_for("web:wheel"), Err(ServiceError::UnknownGroup(_))));
    }

    #[test]
    fn os_release_values_are_quoted() {
        let text = os_release("app", "reg/app:1\"`$x`");
        assert!(text.contains("PORTABLE_PREFIXES=\"app\"\n"));
        assert!(text.contains(r#"PRETTY_NAME="app (OCI image reg/app:1\"\`\$x\`)""#), "{text}");
    }
}
