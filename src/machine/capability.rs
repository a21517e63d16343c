//! The capabilities a machine's root keeps: systemd-nspawn's default set,
//! changed by `--capability=` and `--drop-capability=` as nspawn users
//! know them (`CAP_SYS_ADMIN,CAP_NET_ADMIN`, or `all`).

use rustix::thread::CapabilitySet;

/// Names of the capabilities, by number (linux/capability.h).
const NAMES: &[&str] = &[
    "CAP_CHOWN",
    "CAP_DAC_OVERRIDE",
    "CAP_DAC_READ_SEARCH",
    "CAP_FOWNER",
    "CAP_FSETID",
    "CAP_KILL",
    "CAP_SETGID",
    "CAP_SETUID",
    "CAP_SETPCAP",
    "CAP_LINUX_IMMUTABLE",
    "CAP_NET_BIND_SERVICE",
    "CAP_NET_BROADCAST",
    "CAP_NET_ADMIN",
    "CAP_NET_RAW",
    "CAP_IPC_LOCK",
    "CAP_IPC_OWNER",
    "CAP_SYS_MODULE",
    "CAP_SYS_RAWIO",
    "CAP_SYS_CHROOT",
    "CAP_SYS_PTRACE",
    "CAP_SYS_PACCT",
    "CAP_SYS_ADMIN",
    "CAP_SYS_BOOT",
    "CAP_SYS_NICE",
    "CAP_SYS_RESOURCE",
    "CAP_SYS_TIME",
    "CAP_SYS_TTY_CONFIG",
    "CAP_MKNOD",
    "CAP_LEASE",
    "CAP_AUDIT_WRITE",
    "CAP_AUDIT_CONTROL",
    "CAP_SETFCAP",
    "CAP_MAC_OVERRIDE",
    "CAP_MAC_ADMIN",
    "CAP_SYSLOG",
    "CAP_WAKE_ALARM",
    "CAP_BLOCK_SUSPEND",
    "CAP_AUDIT_READ",
    "CAP_PERFMON",
    "CAP_BPF",
    "CAP_CHECKPOINT_RESTORE",
];

/// The capabilities the container's root keeps in its bounding set by
/// default: those systemd-nspawn keeps. Its systemd skips the units whose
/// `ConditionCapability=` then fails (debugfs, tracefs: a user namespace
/// may not mount them) instead of failing them.
pub const DEFAULT: CapabilitySet = CapabilitySet::AUDIT_CONTROL
    .union(CapabilitySet::AUDIT_WRITE)
    .union(CapabilitySet::CHOWN)
    .union(CapabilitySet::DAC_OVERRIDE)
    .union(CapabilitySet::DAC_READ_SEARCH)
    .union(CapabilitySet::FOWNER)
    .union(CapabilitySet::FSETID)
    .union(CapabilitySet::IPC_OWNER)
    .union(CapabilitySet::KILL)
    .union(CapabilitySet::LEASE)
    .union(CapabilitySet::LINUX_IMMUTABLE)
    .union(CapabilitySet::MKNOD)
    .union(CapabilitySet::NET_BIND_SERVICE)
    .union(CapabilitySet::NET_BROADCAST)
    .union(CapabilitySet::NET_RAW)
    .union(CapabilitySet::SETFCAP)
    .union(CapabilitySet::SETGID)
    .union(CapabilitySet::SETPCAP)
    .union(CapabilitySet::SETUID)
    .union(CapabilitySet::SYS_ADMIN)
    .union(CapabilitySet::SYS_BOOT)
    .union(CapabilitySet::SYS_CHROOT)
    .union(CapabilitySet::SYS_NICE)
    .union(CapabilitySet::SYS_PTRACE)
    .union(CapabilitySet::SYS_RESOURCE)
    .union(CapabilitySet::SYS_TTY_CONFIG);

/// A capability list that is not one.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("'{0}' is not a capability (CAP_SYS_ADMIN, ... or all)")]
pub struct CapabilityError(pub String);

/// Every capability this table names.
pub fn all() -> CapabilitySet {
    CapabilitySet::from_bits_retain((1u64 << NAMES.len()) - 1)
}

/// Parses `CAP_A,CAP_B` (case-insensitive, `CAP_` optional) or `all`; an
/// empty list is the empty set.
pub fn parse(list: &str) -> Result<CapabilitySet, CapabilityError> {
    let mut set = CapabilitySet::empty();
    for word in list.split(',').map(str::trim).filter(|w| !w.is_empty()) {
        if word.eq_ignore_ascii_case("all") {
            set |= all();
            continue;
        }
        let upper = word.to_ascii_uppercase();
        let name = if upper.starts_with("CAP_") { upper } else { format!("CAP_{upper}") };
        let number = NAMES.iter().position(|n| *n == name).ok_or_else(|| CapabilityError(word.to_string()))?;
        set |= CapabilitySet::from_bits_retain(1 << number);
    }
    Ok(set)
}

/// The set as a comma-separated list of names, in number order.
pub fn format(set: CapabilitySet) -> String {
    NAMES
        .iter()
        .enumerate()
        .filter(|(n, _)| set.contains(CapabilitySet::from_bits_retain(1 << n)))
        .map(|(_, name)| *name)
        .collect::<Vec<_>>()
        .join(",")
}

/// The bounding set of a container: nspawn's default, CAP_NET_ADMIN when
/// the network is the container's own, then what was added and dropped
/// (a capability both added and dropped is dropped, as in nspawn).
pub fn bounding_set(private_network: bool, added: CapabilitySet, dropped: CapabilitySet) -> CapabilitySet {
    let mut keep = DEFAULT;
    if private_network {
        keep |= CapabilitySet::NET_ADMIN;
    }
    (keep | added) - dropped
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_parse_as_nspawn_takes_them() {
        assert_eq!(parse("CAP_SYS_ADMIN").unwrap(), CapabilitySet::SYS_ADMIN);
        assert_eq!(parse("cap_net_admin, sys_time").unwrap(), CapabilitySet::NET_ADMIN | CapabilitySet::SYS_TIME);
        assert_eq!(parse("").unwrap(), CapabilitySet::empty());
        assert_eq!(parse("all").unwrap(), all());
        assert!(all().contains(CapabilitySet::CHECKPOINT_RESTORE));
        assert_eq!(
            parse("CAP_NOPE").unwrap_err().to_string(),
            "'CAP_NOPE' is not a capability (CAP_SYS_ADMIN, ... or all)"
        );
    }

    #[test]
    fn the_table_matches_the_kernel_numbers() {
        assert_eq!(parse("CAP_SYS_ADMIN").unwrap().bits(), 1 << 21);
        assert_eq!(parse("CAP_CHECKPOINT_RESTORE").unwrap().bits(), 1 << 40);
        assert_eq!(format(CapabilitySet::CHOWN | CapabilitySet::SYS_BOOT), "CAP_CHOWN,CAP_SYS_BOOT");
    }

    #[test]
    fn the_bounding_set_is_nspawns_with_changes() {
        // The 26 of nspawn's list.
        assert_eq!(DEFAULT.bits().count_ones(), 26);
        assert!(!DEFAULT.contains(CapabilitySet::NET_ADMIN));
        assert!(bounding_set(true, CapabilitySet::empty(), CapabilitySet::empty()).contains(CapabilitySet::NET_ADMIN));
        let set = bounding_set(false, CapabilitySet::SYS_TIME, CapabilitySet::SYS_ADMIN);
        assert!(set.contains(CapabilitySet::SYS_TIME) && !set.contains(CapabilitySet::SYS_ADMIN));
        assert!(
            !bounding_set(false, CapabilitySet::SYS_TIME, CapabilitySet::SYS_TIME).contains(CapabilitySet::SYS_TIME)
        );
    }
}
