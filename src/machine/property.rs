//! Resource limits as `systemctl set-property` spells them (`MemoryMax=512M`,
//! `CPUQuota=50%`, `TasksMax=200`, ...), turned into the typed properties
//! systemd's manager takes over D-Bus, and back into words for `show`.

use std::fmt;

use zbus::OwnedVariant;

/// A limit understood by wharf: its word, the D-Bus property it becomes,
/// and how its value is written.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Limit {
    MemoryMax,
    MemoryHigh,
    MemoryLow,
    MemorySwapMax,
    CpuQuota,
    CpuWeight,
    TasksMax,
    IoWeight,
    AllowedCpus,
}

pub const LIMITS: &[Limit] = &[
    Limit::MemoryMax,
    Limit::MemoryHigh,
    Limit::MemoryLow,
    Limit::MemorySwapMax,
    Limit::CpuQuota,
    Limit::CpuWeight,
    Limit::TasksMax,
    Limit::IoWeight,
    Limit::AllowedCpus,
];

impl Limit {
    /// The word of `systemctl set-property` and unit files.
    pub fn name(self) -> &'static str {
        match self {
            Limit::MemoryMax => "MemoryMax",
            Limit::MemoryHigh => "MemoryHigh",
            Limit::MemoryLow => "MemoryLow",
            Limit::MemorySwapMax => "MemorySwapMax",
            Limit::CpuQuota => "CPUQuota",
            Limit::CpuWeight => "CPUWeight",
            Limit::TasksMax => "TasksMax",
            Limit::IoWeight => "IOWeight",
            Limit::AllowedCpus => "AllowedCPUs",
        }
    }

    /// The D-Bus property of org.freedesktop.systemd1 that carries it.
    pub fn bus_property(self) -> &'static str {
        match self {
            Limit::CpuQuota => "CPUQuotaPerSecUSec",
            other => other.name(),
        }
    }

    pub fn from_name(word: &str) -> Option<Limit> {
        LIMITS.iter().copied().find(|limit| limit.name().eq_ignore_ascii_case(word))
    }
}

/// A limit with its value, parsed and checked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Property {
    pub limit: Limit,
    pub value: Value,
}

/// The value of a limit, in the unit systemd takes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Value {
    /// Bytes, tasks, weight, or microseconds of CPU per second; `u64::MAX` is infinity.
    Number(u64),
    /// A CPU set as systemd's bit mask (byte 0, bit 0 is CPU 0).
    CpuMask(Vec<u8>),
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PropertyError {
    #[error("'{0}' is not Key=Value")]
    NotAnAssignment(String),
    #[error("unknown property '{0}' (supported: {list})", list = supported())]
    Unknown(String),
    #[error("{name}: '{value}' is not {expected}")]
    BadValue { name: &'static str, value: String, expected: &'static str },
}

fn supported() -> String {
    LIMITS.iter().map(|l| l.name()).collect::<Vec<_>>().join(", ")
}

pub const INFINITY: u64 = u64::MAX;

impl Property {
    /// Parses `Key=Value`.
    pub fn parse(assignment: &str) -> Result<Property, PropertyError> {
        let (key, value) =
            assignment.split_once('=').ok_or_else(|| PropertyError::NotAnAssignment(assignment.to_string()))?;
        let limit = Limit::from_name(key.trim()).ok_or_else(|| PropertyError::Unknown(key.trim().to_string()))?;
        Property::with_value(limit, value.trim())
    }

    /// Parses the value of a known limit.
    pub fn with_value(limit: Limit, value: &str) -> Result<Property, PropertyError> {
        let bad = |expected| PropertyError::BadValue { name: limit.name(), value: value.to_string(), expected };
        let value = match limit {
            Limit::MemoryMax | Limit::MemoryHigh | Limit::MemoryLow | Limit::MemorySwapMax => {
                Value::Number(parse_size(value).ok_or_else(|| bad("a size (bytes, K, M, G, T) or infinity"))?)
            }
            Limit::CpuQuota => {
                let percent = value
                    .strip_suffix('%')
                    .and_then(|p| p.trim().parse::<u64>().ok())
                    .filter(|p| *p > 0)
                    .ok_or_else(|| bad("a percentage above 0% (100% is one CPU)"))?;
                Value::Number(percent * 10_000)
            }
            Limit::CpuWeight | Limit::IoWeight => Value::Number(
                value
                    .parse::<u64>()
                    .ok()
                    .filter(|w| (1..=10_000).contains(w))
                    .ok_or_else(|| bad("a weight from 1 to 10000"))?,
            ),
            Limit::TasksMax => Value::Number(if value == "infinity" {
                INFINITY
            } else {
                value
                    .parse::<u64>()
                    .ok()
                    .filter(|n| *n > 0)
                    .ok_or_else(|| bad("a number of tasks above 0 or infinity"))?
            }),
            Limit::AllowedCpus => Value::CpuMask(parse_cpu_set(value).ok_or_else(|| bad("a CPU list like 0-1,3"))?),
        };
        Ok(Property { limit, value })
    }

    /// The (name, value) pair for StartTransientUnit/SetUnitProperties.
    pub fn to_bus(&self) -> (String, OwnedVariant) {
        let value = match &self.value {
            Value::Number(n) => OwnedVariant::from(*n),
            Value::CpuMask(mask) => {
                OwnedVariant::try_from(zbus::Variant::from(mask.clone())).expect("a byte array holds no descriptor")
            }
        };
        (self.limit.bus_property().to_string(), value)
    }
}

impl Property {
    /// The value as `show` prints it and the settings file keeps it.
    pub fn value_text(&self) -> String {
        format_value(self.limit, &self.value)
    }
}

impl fmt::Display for Property {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}={}", self.limit.name(), format_value(self.limit, &self.value))
    }
}

/// A limit's value as `systemctl show` would put it.
pub fn format_value(limit: Limit, value: &Value) -> String {
    match (limit, value) {
        // Weights have no infinity: the maximum means "not set", as systemctl says.
        (Limit::CpuWeight | Limit::IoWeight, Value::Number(INFINITY)) => "[not set]".to_string(),
        (_, Value::Number(INFINITY)) => "infinity".to_string(),
        (Limit::CpuQuota, Value::Number(usec)) => format!("{}%", usec / 10_000),
        (_, Value::Number(n)) => n.to_string(),
        (_, Value::CpuMask(mask)) => format_cpu_set(mask),
    }
}

/// Sizes as systemd reads them: a number with an optional K, M, G, T (powers
/// of 1024) suffix, or `infinity`.
pub fn parse_size(text: &str) -> Option<u64> {
    if text == "infinity" {
        return Some(INFINITY);
    }
    let (digits, shift) = match text.char_indices().last()? {
        (i, 'K' | 'k') => (&text[..i], 10),
        (i, 'M' | 'm') => (&text[..i], 20),
        (i, 'G' | 'g') => (&text[..i], 30),
        (i, 'T' | 't') => (&text[..i], 40),
        (i, 'B') => (&text[..i], 0),
        _ => (text, 0),
    };
    digits.trim().parse::<u64>().ok()?.checked_mul(1u64 << shift)
}

/// `0-2,5` -> the bit mask with bits 0, 1, 2 and 5 set.
pub fn parse_cpu_set(text: &str) -> Option<Vec<u8>> {
    let mut mask = Vec::new();
    for part in text.split([',', ' ']).filter(|p| !p.is_empty()) {
        let (low, high) = match part.split_once('-') {
            Some((low, high)) => (low.parse::<usize>().ok()?, high.parse::<usize>().ok()?),
            None => {
                let cpu = part.parse::<usize>().ok()?;
                (cpu, cpu)
            }
        };
        if low > high || high >= 8192 {
            return None;
        }
        for cpu in low..=high {
            if mask.len() <= cpu / 8 {
                mask.resize(cpu / 8 + 1, 0);
            }
            mask[cpu / 8] |= 1 << (cpu % 8);
        }
    }
    (!mask.is_empty()).then_some(mask)
}

pub fn format_cpu_set(mask: &[u8]) -> String {
    let cpus: Vec<usize> = (0..mask.len() * 8).filter(|cpu| mask[cpu / 8] & (1 << (cpu % 8)) != 0).collect();
    let mut ranges: Vec<String> = Vec::new();
    let mut i = 0;
    while i < cpus.len() {
        let start = cpus[i];
        while i + 1 < cpus.len() && cpus[i + 1] == cpus[i] + 1 {
            i += 1;
        }
        ranges.push(if cpus[i] == start { start.to_string() } else { format!("{start}-{}", cpus[i]) });
        i += 1;
    }
    ranges.join(",")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn limits_parse_like_systemctl_set_property() {
        let parse = |s: &str| Property::parse(s).unwrap();
        assert_eq!(parse("MemoryMax=512M").value, Value::Number(512 << 20));
        assert_eq!(parse("memorymax=1G").limit, Limit::MemoryMax);
        assert_eq!(parse("MemoryHigh=infinity").value, Value::Number(INFINITY));
        assert_eq!(parse("CPUQuota=50%").value, Value::Number(500_000));
        assert_eq!(parse("CPUQuota=250%").value, Value::Number(2_500_000));
        assert_eq!(parse("TasksMax=200").value, Value::Number(200));
        assert_eq!(parse("CPUWeight=100").value, Value::Number(100));
        assert_eq!(parse("IOWeight=10000").value, Value::Number(10_000));
        assert_eq!(parse("AllowedCPUs=0-1,3").value, Value::CpuMask(vec![0b1011]));
        assert_eq!(parse("CPUQuota=50%").limit.bus_property(), "CPUQuotaPerSecUSec");
        assert_eq!(parse("MemoryMax=512M").to_string(), "MemoryMax=536870912");
        assert_eq!(parse("CPUQuota=50%").to_string(), "CPUQuota=50%");
        assert_eq!(parse("AllowedCPUs=0-1,3").to_string(), "AllowedCPUs=0-1,3");
    }

    #[test]
    fn bad_limits_say_why() {
        let error = |s: &str| Property::parse(s).unwrap_err().to_string();
        assert_eq!(error("MemoryMax=12X"), "MemoryMax: '12X' is not a size (bytes, K, M, G, T) or infinity");
        assert_eq!(error("CPUQuota=0%"), "CPUQuota: '0%' is not a percentage above 0% (100% is one CPU)");
        assert_eq!(error("CPUWeight=0"), "CPUWeight: '0' is not a weight from 1 to 10000");
        assert_eq!(error("TasksMax=-1"), "TasksMax: '-1' is not a number of tasks above 0 or infinity");
        assert_eq!(error("AllowedCPUs=3-1"), "AllowedCPUs: '3-1' is not a CPU list like 0-1,3");
        assert!(error("Nice=5").starts_with("unknown property 'Nice' (supported: MemoryMax, MemoryHigh"));
        assert_eq!(error("MemoryMax"), "'MemoryMax' is not Key=Value");
        assert!(Property::parse("MemoryMax=99999999999T").is_err(), "overflow");
    }

    #[test]
    fn cpu_sets_round_trip() {
        for text in ["0", "0-3", "1,3,5-7", "0-1,64"] {
            assert_eq!(format_cpu_set(&parse_cpu_set(text).unwrap()), text);
        }
        assert_eq!(parse_cpu_set(""), None);
    }
}
