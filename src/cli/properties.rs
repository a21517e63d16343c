//! `machine show` and `machine show-image`: properties of machined's
//! objects printed as machinectl prints them (`Name=value` lines, or only
//! the values with `--value`), selected with `-p/--property` and with
//! empty ones shown only when asked for (`-a/--all`, or by name).

use zbus::{OwnedVariant, Variant};

/// A property value, as read from the bus.
#[derive(Debug, Clone, PartialEq)]
pub enum PropValue {
    Str(String),
    Bool(bool),
    U32(u32),
    I32(i32),
    U64(u64),
    Bytes(Vec<u8>),
    Ints(Vec<i64>),
    Strs(Vec<String>),
    /// A type `show` does not print (machinectl prints nothing for it either).
    Other,
}

impl From<&Variant<'_>> for PropValue {
    fn from(value: &Variant<'_>) -> PropValue {
        match value {
            Variant::Str(s) => PropValue::Str(s.to_string()),
            Variant::ObjectPath(p) => PropValue::Str(p.to_string()),
            Variant::Bool(b) => PropValue::Bool(*b),
            Variant::U32(n) => PropValue::U32(*n),
            Variant::I32(n) => PropValue::I32(*n),
            Variant::U64(n) => PropValue::U64(*n),
            Variant::Array(array) => {
                let items: Vec<&Variant<'_>> = array.inner().iter().collect();
                if array.element_signature().to_string() == "y" {
                    PropValue::Bytes(
                        items.iter().filter_map(|v| if let Variant::U8(b) = v { Some(*b) } else { None }).collect(),
                    )
                } else if let Some(strings) =
                    items.iter().map(|v| if let Variant::Str(s) = v { Some(s.to_string()) } else { None }).collect()
                {
                    PropValue::Strs(strings)
                } else if let Some(ints) = items
                    .iter()
                    .map(|v| match v {
                        Variant::I32(n) => Some(i64::from(*n)),
                        Variant::U32(n) => Some(i64::from(*n)),
                        _ => None,
                    })
                    .collect()
                {
                    PropValue::Ints(ints)
                } else {
                    PropValue::Other
                }
            }
            _ => PropValue::Other,
        }
    }
}

impl From<&OwnedVariant> for PropValue {
    fn from(value: &OwnedVariant) -> PropValue {
        PropValue::from(&**value)
    }
}

/// A value as text, as machinectl prints it; `None` when it is empty
/// (an empty string or list, a zero or unset timestamp), which is printed
/// only with `--all` or when asked for by name.
pub fn format_value(name: &str, value: &PropValue) -> Option<String> {
    let text = match value {
        PropValue::Str(s) => s.clone(),
        PropValue::Bool(b) => if *b { "yes" } else { "no" }.to_string(),
        PropValue::U32(n) => n.to_string(),
        PropValue::I32(n) => n.to_string(),
        PropValue::U64(n) if name.ends_with("Timestamp") => {
            if *n == 0 || *n == u64::MAX {
                return None;
            }
            format_timestamp(*n)
        }
        // No limit, as machinectl prints it (an unknown usage stays a number).
        PropValue::U64(u64::MAX) if name.contains("Limit") || name.ends_with("Max") => "infinity".to_string(),
        PropValue::U64(n) => n.to_string(),
        // A 128-bit ID (a machine's Id) as machinectl prints it: hex; all
        // zeros is none.
        PropValue::Bytes(bytes) if bytes.len() == 16 => {
            if bytes.iter().all(|b| *b == 0) {
                return None;
            }
            bytes.iter().map(|b| format!("{b:02x}")).collect()
        }
        PropValue::Bytes(bytes) => String::from_utf8_lossy(bytes).into_owned(),
        PropValue::Ints(ints) => ints.iter().map(i64::to_string).collect::<Vec<_>>().join(" "),
        PropValue::Strs(strings) => strings.join(" "),
        PropValue::Other => return None,
    };
    (!text.is_empty()).then_some(text)
}

/// A time in µs since the epoch as machinectl prints timestamps (in UTC):
/// `Wed 2026-12-02 15:05:00 UTC`.
pub fn format_timestamp(usec: u64) -> String {
    const DAYS: [&str; 7] = ["Sun", "Mon", "Tue", "Wed", "Thu", "Fri", "Sat"];
    let (date_time, weekday) = crate::machine::status::utc_civil(usec / 1_000_000);
    format!("{} {date_time} UTC", DAYS[weekday])
}

/// The names `-p/--property` gave: each may be a comma-separated list, as
/// machinectl and systemctl take them.
pub fn property_names(args: &[String]) -> Vec<String> {
    args.iter().flat_map(|arg| arg.split(',')).filter(|name| !name.is_empty()).map(str::to_string).collect()
}

/// What `show` prints of the properties it read.
#[derive(Debug, Clone, Default)]
pub struct Selection {
    /// The properties asked for, in any order; empty: all.
    pub names: Vec<String>,
    /// `--value`: only the values.
    pub value_only: bool,
    /// `-a/--all`: empty properties too.
    pub all: bool,
}

/// The lines `show` prints for `properties` (in their order), or the name
/// of a property asked for that there is not.
pub fn render(properties: &[(String, PropValue)], selection: &Selection) -> Result<Vec<String>, String> {
    if let Some(unknown) = selection.names.iter().find(|name| !properties.iter().any(|(n, _)| n == *name)) {
        return Err(unknown.clone());
    }
    let mut lines = Vec::new();
    for (name, value) in properties {
        let named = selection.names.contains(name);
        if !selection.names.is_empty() && !named {
            continue;
        }
        // A property asked for by name is printed even when empty, as machinectl does.
        let text = match format_value(name, value) {
            Some(text) => text,
            None if selection.all || named => String::new(),
            None => continue,
        };
        lines.push(if selection.value_only { text } else { format!("{name}={text}") });
    }
    Ok(lines)
}

/// Properties in the order machined declares them (which machinectl
/// prints), then any others (those of a newer machined) by name.
pub fn ordered(mut properties: Vec<(String, PropValue)>, order: &[&str]) -> Vec<(String, PropValue)> {
    properties.sort_by_key(|(name, _)| (order.iter().position(|o| o == name).unwrap_or(order.len()), name.clone()));
    properties
}

/// The properties of a machine, in machined's order.
pub const MACHINE_ORDER: &[&str] = &[
    "Name",
    "Id",
    "Timestamp",
    "TimestampMonotonic",
    "Service",
    "Unit",
    "Leader",
    "Class",
    "RootDirectory",
    "NetworkInterfaces",
    // Since systemd 256.
    "VSockCID",
    "SSHAddress",
    "SSHPrivateKeyPath",
    "State",
];

/// The properties of an image, in machined's order.
pub const IMAGE_ORDER: &[&str] = &[
    "Name",
    "Path",
    "Type",
    "ReadOnly",
    "CreationTimestamp",
    "ModificationTimestamp",
    "Usage",
    "Limit",
    "UsageExclusive",
    "LimitExclusive",
];

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Vec<(String, PropValue)> {
        vec![
            ("Name".into(), PropValue::Str("f28".into())),
            ("Id".into(), PropValue::Bytes((0..16).collect())),
            ("Timestamp".into(), PropValue::U64(1_796_223_900_000_000)),
            ("TimestampMonotonic".into(), PropValue::U64(42)),
            ("Leader".into(), PropValue::U32(1234)),
            ("RootDirectory".into(), PropValue::Str(String::new())),
            ("NetworkInterfaces".into(), PropValue::Ints(vec![3, 7])),
            ("ReadOnly".into(), PropValue::Bool(false)),
        ]
    }

    #[test]
    fn values_print_as_machinectl_prints_them() {
        assert_eq!(
            format_value("Id", &PropValue::Bytes((0..16).collect())).unwrap(),
            "000102030405060708090a0b0c0d0e0f"
        );
        assert_eq!(format_value("Id", &PropValue::Bytes(vec![0; 16])), None);
        assert_eq!(
            format_value("Timestamp", &PropValue::U64(1_796_223_900_000_000)).unwrap(),
            "Wed 2026-12-02 15:05:00 UTC"
        );
        assert_eq!(format_value("CreationTimestamp", &PropValue::U64(0)), None);
        assert_eq!(format_value("TimestampMonotonic", &PropValue::U64(42)).unwrap(), "42");
        assert_eq!(format_value("Limit", &PropValue::U64(u64::MAX)).unwrap(), "infinity");
        assert_eq!(format_value("Usage", &PropValue::U64(u64::MAX)).unwrap(), u64::MAX.to_string());
        assert_eq!(format_value("NetworkInterfaces", &PropValue::Ints(vec![3, 7])).unwrap(), "3 7");
        assert_eq!(format_value("NetworkInterfaces", &PropValue::Ints(vec![])), None);
        assert_eq!(format_value("ReadOnly", &PropValue::Bool(true)).unwrap(), "yes");
        assert_eq!(format_value("RootDirectory", &PropValue::Str(String::new())), None);
    }

    #[test]
    fn selection_filters_and_shows_empty_ones_when_asked() {
        let all = render(&sample(), &Selection::default()).unwrap();
        assert!(!all.iter().any(|l| l.starts_with("RootDirectory")), "{all:?}");
        assert_eq!(all[0], "Name=f28");
        let with_empty = render(&sample(), &Selection { all: true, ..Selection::default() }).unwrap();
        assert!(with_empty.contains(&"RootDirectory=".to_string()), "{with_empty:?}");
        let names = property_names(&["Leader,NetworkInterfaces".into(), "RootDirectory".into(), "Name".into()]);
        let values = render(&sample(), &Selection { names: names.clone(), value_only: true, all: false }).unwrap();
        // In the order of the properties, not of the arguments; empty ones named are printed.
        assert_eq!(values, ["f28", "1234", "", "3 7"]);
        let lines = render(&sample(), &Selection { names, value_only: false, all: false }).unwrap();
        assert_eq!(lines, ["Name=f28", "Leader=1234", "RootDirectory=", "NetworkInterfaces=3 7"]);
        let unknown = Selection { names: vec!["Nope".into()], value_only: true, all: false };
        assert_eq!(render(&sample(), &unknown).unwrap_err(), "Nope");
    }

    #[test]
    fn machined_order_first_then_by_name() {
        let props = ordered(
            vec![
                ("Zeta".into(), PropValue::Other),
                ("State".into(), PropValue::Other),
                ("Alpha".into(), PropValue::Other),
                ("Name".into(), PropValue::Other),
            ],
            MACHINE_ORDER,
        );
        let names: Vec<&str> = props.iter().map(|(n, _)| n.as_str()).collect();
        assert_eq!(names, ["Name", "State", "Alpha", "Zeta"]);
    }
}
