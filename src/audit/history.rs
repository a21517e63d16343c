//! Reading the audit trail back: `portable history` and `machine history`.
//! They run in the client, with the caller's own right to read the system
//! journal (root, or the `adm` or `systemd-journal` group): wharfd need
//! not grant anything, and a user who may not read the journal is told so.
//! Entries come from `journalctl -o json` (its exit status checked, its
//! JSON parsed), restricted to wharf's MESSAGE_IDs and to entries journald
//! attributes to root (`_UID=0`): anyone may write to the journal socket,
//! and an entry a user forged with one of our MESSAGE_IDs carries their uid.

use std::collections::BTreeMap;

use serde::Serialize;
use serde_json::Value;

use super::{Domain, Kind};

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("cannot run journalctl: {0}")]
    Spawn(#[source] std::io::Error),
    #[error("journalctl failed: {0}")]
    Journalctl(String),
    #[error(
        "history needs to read the system journal: run it as root, or as a member of the adm or systemd-journal group"
    )]
    NoAccess,
    #[error("journalctl gave an entry that is not JSON: {0}")]
    Parse(#[source] serde_json::Error),
}

/// What to list.
#[derive(Debug, Clone, Default)]
pub struct Query {
    /// portable (with fleet) or machine (with fleet).
    pub domain: Option<Domain>,
    /// An image (portable) or machine name, as the user names it.
    pub subject: Option<String>,
    /// journalctl's own time syntax.
    pub since: Option<String>,
    pub until: Option<String>,
    /// A user name or uid.
    pub user: Option<String>,
}

impl Query {
    /// The arguments of journalctl.
    pub fn journalctl_args(&self) -> Vec<String> {
        let mut args: Vec<String> = ["-o", "json", "--no-pager", "-q"].map(String::from).to_vec();
        if let Some(since) = &self.since {
            args.push(format!("--since={since}"));
        }
        if let Some(until) = &self.until {
            args.push(format!("--until={until}"));
        }
        args.push("_UID=0".into());
        args.extend(Kind::ALL.iter().map(|k| format!("MESSAGE_ID={}", k.message_id())));
        args
    }

    /// Whether `entry` is one this query lists.
    pub fn matches(&self, entry: &Entry) -> bool {
        let domain_ok = match self.domain {
            None => true,
            Some(domain) => entry.domain == domain.as_str() || entry.domain == Domain::Fleet.as_str(),
        };
        let user_ok = match &self.user {
            None => true,
            Some(user) => {
                entry.uid.map(|u| u.to_string()).as_deref() == Some(user) || entry.user.as_deref() == Some(user)
            }
        };
        let subject_ok = match &self.subject {
            None => true,
            Some(subject) => {
                let names = ["IMAGE", "IMAGE_PATH", "MACHINE", "NEW_NAME", "FROM_IMAGE"];
                names.iter().flat_map(|n| entry.fields.get(*n).into_iter().flatten()).any(|v| names_same(v, subject))
            }
        };
        domain_ok && user_ok && subject_ok
    }
}

/// Whether an image named `value` in an entry is the one the user means by
/// `asked`: the same path or name, or the same name without the `.raw` /
/// `.raw.xz` suffix and directory.
pub fn names_same(value: &str, asked: &str) -> bool {
    fn stem(s: &str) -> &str {
        let base = s.rsplit('/').next().unwrap_or(s);
        let base = base.strip_suffix(".xz").unwrap_or(base);
        base.strip_suffix(".raw").unwrap_or(base)
    }
    value == asked || stem(value) == stem(asked)
}

/// One audit entry, as history prints it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Entry {
    /// When journald received it, in µs since the epoch.
    pub time_usec: u64,
    pub kind: String,
    pub domain: String,
    pub message_id: String,
    pub message: String,
    pub result: String,
    pub uid: Option<u32>,
    pub user: Option<String>,
    pub pid: Option<u32>,
    pub cmdline: Vec<String>,
    /// Every `WHARF_*` field (without the prefix's `WHARF_`), each with all
    /// its values in order.
    pub fields: BTreeMap<String, Vec<String>>,
}

/// A journalctl JSON value as text values: a string, a list of them, or
/// (binary data) a list of byte numbers.
fn values(value: &Value) -> Vec<String> {
    fn bytes(list: &[Value]) -> Option<String> {
        let bytes: Option<Vec<u8>> = list.iter().map(|v| v.as_u64().and_then(|n| u8::try_from(n).ok())).collect();
        bytes.map(|b| String::from_utf8_lossy(&b).into_owned())
    }
    match value {
        Value::String(s) => vec![s.clone()],
        Value::Array(list) if list.iter().all(Value::is_number) => bytes(list).into_iter().collect(),
        Value::Array(list) => list
            .iter()
            .filter_map(|v| match v {
                Value::String(s) => Some(s.clone()),
                Value::Array(inner) => bytes(inner),
                _ => None,
            })
            .collect(),
        Value::Number(n) => vec![n.to_string()],
        _ => Vec::new(),
    }
}

/// Parses one line of `journalctl -o json`; `None` for an entry that is
/// not one of wharf's audit entries.
pub fn parse_line(line: &str) -> Result<Option<Entry>, Error> {
    let object: serde_json::Map<String, Value> = serde_json::from_str(line).map_err(Error::Parse)?;
    let first = |name: &str| object.get(name).map(values).and_then(|v| v.into_iter().next());
    let Some(message_id) = first("MESSAGE_ID") else { return Ok(None) };
    if Kind::from_message_id(&message_id).is_none() {
        return Ok(None);
    }
    let mut fields = BTreeMap::new();
    for (name, value) in &object {
        if let Some(short) = name.strip_prefix("WHARF_") {
            fields.insert(short.to_string(), values(value));
        }
    }
    let field = |name: &str| fields.get(name).and_then(|v| v.first()).cloned();
    let cmdline =
        field("CALLER_CMDLINE").and_then(|c| serde_json::from_str::<Vec<String>>(&c).ok()).unwrap_or_default();
    Ok(Some(Entry {
        time_usec: first("__REALTIME_TIMESTAMP").and_then(|t| t.parse().ok()).unwrap_or(0),
        kind: field("KIND").unwrap_or_default(),
        domain: field("DOMAIN").unwrap_or_default(),
        message_id,
        message: first("MESSAGE").unwrap_or_default(),
        result: field("RESULT").unwrap_or_default(),
        uid: field("CALLER_UID").and_then(|u| u.parse().ok()),
        user: field("CALLER_USER"),
        pid: field("CALLER_PID").and_then(|p| p.parse().ok()),
        cmdline,
        fields,
    }))
}

/// Parses journalctl's output and keeps what `query` lists, oldest first.
pub fn parse(output: &str, query: &Query) -> Result<Vec<Entry>, Error> {
    let mut entries = Vec::new();
    for line in output.lines().filter(|l| !l.trim().is_empty()) {
        if let Some(entry) = parse_line(line)?
            && query.matches(&entry)
        {
            entries.push(entry);
        }
    }
    entries.sort_by_key(|e| e.time_usec);
    Ok(entries)
}

/// Whether this process may read the system journal: root, or a member of
/// `adm` or `systemd-journal` (journalctl would otherwise show the user's
/// own journal only, in which no wharfd entry can be).
pub fn may_read_system_journal() -> bool {
    use nix::unistd::{Group, getegid, geteuid, getgroups};
    if geteuid().is_root() {
        return true;
    }
    let mut groups = getgroups().unwrap_or_default();
    groups.push(getegid());
    ["adm", "systemd-journal"]
        .iter()
        .filter_map(|name| Group::from_name(name).ok().flatten())
        .any(|group| groups.contains(&group.gid))
}

/// Runs journalctl for `query`.
pub fn read(query: &Query) -> Result<Vec<Entry>, Error> {
    if !may_read_system_journal() {
        return Err(Error::NoAccess);
    }
    let output =
        std::process::Command::new("journalctl").args(query.journalctl_args()).output().map_err(Error::Spawn)?;
    if !output.status.success() {
        let stderr = String::from_utf8_lossy(&output.stderr);
        let line = stderr.lines().find(|l| !l.trim().is_empty()).unwrap_or("no reason given").trim().to_string();
        // Newer journalctl exits 1 when nothing matched.
        if output.stdout.is_empty() && line.contains("No entries") {
            return Ok(Vec::new());
        }
        return Err(Error::Journalctl(format!("{line} ({})", output.status)));
    }
    parse(&String::from_utf8_lossy(&output.stdout), query)
}

/// One line per entry, for people.
pub fn text(entries: &[Entry]) -> String {
    entries
        .iter()
        .map(|e| {
            let when = crate::cli::properties::format_timestamp(e.time_usec);
            let who = match (&e.user, e.uid) {
                (Some(user), _) => user.clone(),
                (None, Some(uid)) => uid.to_string(),
                (None, None) => "?".into(),
            };
            let pid = e.pid.map(|p| format!("[{p}]")).unwrap_or_default();
            format!("{when} {who}{pid} {} ({}): {}", e.kind, e.result, e.message)
        })
        .collect::<Vec<_>>()
        .join("\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    const ATTACH: &str = r#"{"__REALTIME_TIMESTAMP":"1700000000000000","MESSAGE_ID":"8575d8955c7087513ce98705246239a1","MESSAGE":"attached app","WHARF_KIND":"attach","WHARF_DOMAIN":"portable","WHARF_RESULT":"done","WHARF_CALLER_UID":"0","WHARF_CALLER_USER":"root","WHARF_CALLER_PID":"77","WHARF_CALLER_CMDLINE":"[\"portable\",\"attach\",\"app\"]","WHARF_IMAGE":"app","WHARF_IMAGE_PATH":"/var/lib/portables/app.raw","WHARF_CHANGE":["write /etc/systemd/system/app.service","mkdir /etc/systemd/system/app.service.d"],"_UID":"0"}"#;
    const MACHINE: &str = r#"{"__REALTIME_TIMESTAMP":"1600000000000000","MESSAGE_ID":"f693e18f086c2cc6431292d8b5f8d629","MESSAGE":"started machine m","WHARF_KIND":"machine-start","WHARF_DOMAIN":"machine","WHARF_RESULT":"done","WHARF_CALLER_UID":"0","WHARF_MACHINE":"m","WHARF_ERROR":[104,105,10,0]}"#;
    const OTHER: &str = r#"{"MESSAGE_ID":"39f53479d3a045ac8e11786248231fbf","MESSAGE":"not ours"}"#;

    #[test]
    fn parses_entries_and_multi_valued_fields() {
        let entry = parse_line(ATTACH).unwrap().unwrap();
        assert_eq!(entry.kind, "attach");
        assert_eq!(entry.uid, Some(0));
        assert_eq!(entry.pid, Some(77));
        assert_eq!(entry.cmdline, ["portable", "attach", "app"]);
        assert_eq!(entry.fields["CHANGE"].len(), 2);
        let machine = parse_line(MACHINE).unwrap().unwrap();
        // Binary values (journalctl's byte lists) come back as text.
        assert_eq!(machine.fields["ERROR"], ["hi\n\0"]);
        assert_eq!(parse_line(OTHER).unwrap(), None);
        assert!(parse_line("not json").is_err());
    }

    #[test]
    fn filters_and_orders() {
        let output = format!("{ATTACH}\n{MACHINE}\n{OTHER}\n");
        let all = parse(&output, &Query::default()).unwrap();
        assert_eq!(all.iter().map(|e| e.kind.as_str()).collect::<Vec<_>>(), ["machine-start", "attach"]);
        let portable = Query { domain: Some(Domain::Portable), ..Query::default() };
        assert_eq!(parse(&output, &portable).unwrap().len(), 1);
        for (asked, found) in [("app", 1), ("app.raw", 1), ("/var/lib/portables/app.raw", 1), ("other", 0)] {
            let query = Query { subject: Some(asked.into()), ..portable.clone() };
            assert_eq!(parse(&output, &query).unwrap().len(), found, "{asked}");
        }
        let by_user = Query { user: Some("root".into()), ..Query::default() };
        assert_eq!(parse(&output, &by_user).unwrap().len(), 1);
        let by_uid = Query { user: Some("0".into()), ..Query::default() };
        assert_eq!(parse(&output, &by_uid).unwrap().len(), 2);
    }

    #[test]
    fn asks_journalctl_for_roots_entries_of_our_ids() {
        let query = Query { since: Some("-1h".into()), ..Query::default() };
        let args = query.journalctl_args();
        assert!(args.contains(&"--since=-1h".to_string()));
        assert!(args.contains(&"_UID=0".to_string()));
        assert_eq!(args.iter().filter(|a| a.starts_with("MESSAGE_ID=")).count(), Kind::ALL.len());
    }
}
