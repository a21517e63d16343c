//! Image policies in systemd's syntax (systemd.image-policy(7)): which
//! partitions of an image may be used, and with what protection and file
//! system. `portable attach --image-policy=` checks the image against one
//! before anything is written, and pins the attachment to it
//! (`RootImagePolicy=`), so that systemd refuses a file swapped in later
//! that does not satisfy it.
//!
//! Without `--image-policy=`, an attachment is pinned to a policy derived
//! from the image as it is when attached ([`DerivedPolicy`]), as systemd
//! 260's portabled pins: each partition the image has, with the protection
//! (and, where systemd reads them, the file system) it has, and every other
//! partition absent.

use std::collections::{BTreeMap, BTreeSet};

use serde::{Deserialize, Serialize};

/// The partition designators systemd defines, architecture-agnostic.
pub const DESIGNATORS: &[&str] = &[
    "root",
    "usr",
    "home",
    "srv",
    "esp",
    "xbootldr",
    "swap",
    "root-verity",
    "root-verity-sig",
    "usr-verity",
    "usr-verity-sig",
    "tmp",
    "var",
];

/// How a partition is used and protected.
const USE_FLAGS: &[&str] = &["unprotected", "verity", "signed", "encrypted", "unused", "absent"];
/// Other flags: read-only and growfs requirements, and file systems.
const OTHER_FLAGS: &[&str] = &[
    "read-only-on",
    "read-only-off",
    "growfs-on",
    "growfs-off",
    "btrfs",
    "erofs",
    "ext4",
    "f2fs",
    "squashfs",
    "vfat",
    "xfs",
];
const FILE_SYSTEMS: &[&str] = &["btrfs", "erofs", "ext4", "f2fs", "squashfs", "vfat", "xfs"];

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Error {
    #[error("image policy '{policy}': {why}")]
    Invalid { policy: String, why: String },
}

/// A parsed policy: the flags of each designator, and of the rest.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ImagePolicy {
    text: String,
    rules: BTreeMap<String, Vec<String>>,
    default: Vec<String>,
}

impl ImagePolicy {
    /// Parses `text`: rules `DESIGNATOR=FLAG+FLAG` separated by `:`, an
    /// empty designator for the rest, or one of the shorthands `*` (all
    /// allowed), `-` (none used) and `~` (all absent).
    pub fn parse(text: &str) -> Result<ImagePolicy, Error> {
        let invalid = |why: String| Error::Invalid { policy: text.to_string(), why };
        let all = USE_FLAGS.iter().map(|f| f.to_string()).collect::<Vec<_>>();
        let shorthand = match text {
            "*" => Some(all.clone()),
            "-" => Some(vec!["unused".to_string(), "absent".to_string()]),
            "~" => Some(vec!["absent".to_string()]),
            _ => None,
        };
        if let Some(default) = shorthand {
            return Ok(ImagePolicy { text: text.to_string(), rules: BTreeMap::new(), default });
        }
        if text.is_empty() {
            return Err(invalid("it is empty".into()));
        }
        let mut rules = BTreeMap::new();
        let mut default = None;
        for rule in text.split(':') {
            let (designator, flags) =
                rule.split_once('=').ok_or_else(|| invalid(format!("'{rule}' is not DESIGNATOR=FLAGS")))?;
            if !designator.is_empty() && !DESIGNATORS.contains(&designator) {
                return Err(invalid(format!("'{designator}' is not a partition designator")));
            }
            let flags: Vec<String> = match flags {
                "*" => all.clone(),
                "-" => vec!["unused".into(), "absent".into()],
                "~" => vec!["absent".into()],
                _ => flags.split('+').map(str::to_string).collect(),
            };
            for flag in &flags {
                if !USE_FLAGS.contains(&flag.as_str()) && !OTHER_FLAGS.contains(&flag.as_str()) {
                    return Err(invalid(format!("'{flag}' is not a partition policy flag")));
                }
            }
            let seen = if designator.is_empty() {
                default.replace(flags).is_some()
            } else {
                rules.insert(designator.to_string(), flags).is_some()
            };
            if seen {
                return Err(invalid(format!("'{designator}' has two rules")));
            }
        }
        // Partitions the policy does not name are, as systemd reads it, to
        // be left alone: unused or absent.
        let default = default.unwrap_or_else(|| vec!["unused".into(), "absent".into()]);
        Ok(ImagePolicy { text: text.to_string(), rules, default })
    }

    /// Whether a rule names file systems, which only systemd 258 and later
    /// read (an older one ignores the whole setting).
    pub fn names_file_systems(&self) -> bool {
        self.rules.values().chain([&self.default]).flatten().any(|f| FILE_SYSTEMS.contains(&f.as_str()))
    }

    /// The policy as given, for `RootImagePolicy=`.
    pub fn as_str(&self) -> &str {
        &self.text
    }

    fn flags_of(&self, designator: &str) -> &[String] {
        self.rules.get(designator).unwrap_or(&self.default)
    }

    /// Why a partition `designator` with `protection` (`unprotected`,
    /// `verity`, `signed` or `encrypted`) and file system `fs` (if known)
    /// would not be used under this policy, or `None` if it would.
    pub fn refuses(&self, designator: &str, protection: &str, fs: Option<&str>) -> Option<String> {
        let flags = self.flags_of(designator);
        if !flags.iter().any(|f| f == protection) {
            let allowed: Vec<&str> =
                flags.iter().map(String::as_str).filter(|f| USE_FLAGS.contains(f)).collect::<Vec<_>>();
            return Some(format!(
                "its {designator} partition is {protection}, the policy allows {}",
                if allowed.is_empty() { "nothing".to_string() } else { allowed.join("+") }
            ));
        }
        let listed: Vec<&str> =
            flags.iter().map(String::as_str).filter(|f| FILE_SYSTEMS.contains(f)).collect::<Vec<_>>();
        match fs {
            Some(fs) if !listed.is_empty() && !listed.contains(&fs) => {
                Some(format!("its {designator} partition is {fs}, the policy allows only {}", listed.join("+")))
            }
            _ => None,
        }
    }

    /// Whether a designator the image lacks may be missing.
    pub fn refuses_absence(&self, designator: &str) -> Option<String> {
        let flags = self.flags_of(designator);
        let may_lack = flags.iter().any(|f| f == "absent" || f == "unused");
        (!may_lack).then(|| format!("it has no {designator} partition, which the policy requires"))
    }
}

/// The protection a partition `role` of an image with partitions `roles`
/// has as systemd counts it: `signed` with a verity and a signature
/// partition beside it, `verity` with a verity partition, else
/// `unprotected`. `signatures_checked`: whoever opens the image checks the
/// signature (systemd does); where nobody does, a signed partition counts
/// only as `verity`.
pub fn protection(roles: &[&str], role: &str, signatures_checked: bool) -> &'static str {
    let has = |suffix: &str| roles.contains(&format!("{role}{suffix}").as_str());
    match (has("-verity"), has("-verity-sig")) {
        (true, true) if signatures_checked => "signed",
        (true, _) => "verity",
        _ => "unprotected",
    }
}

impl ImagePolicy {
    /// Why the policy refuses a partitioned image with partitions `roles`
    /// (verity and signature partitions follow their data partition), or
    /// `None` if it allows every one.
    pub fn refuses_partitions(&self, roles: &[&str], signatures_checked: bool) -> Option<String> {
        roles
            .iter()
            .filter(|role| DESIGNATORS.contains(role) && !role.ends_with("-verity") && !role.ends_with("-verity-sig"))
            // A partition the policy leaves unused is no obstacle where it
            // is present (systemd ignores it), but a root or /usr one is
            // what the image is used for.
            .filter(|role| matches!(**role, "root" | "usr") || !self.flags_of(role).iter().any(|f| f == "unused"))
            .find_map(|role| self.refuses(role, protection(roles, role, signatures_checked), None))
    }
}

/// Partitions a service's image may carry that systemd does not mount for
/// it (its default policy for `RootImage=` leaves them unused).
const NOT_MOUNTED_FOR_SERVICES: &[&str] = &["esp", "xbootldr", "swap"];

/// What a partition of an image holds, as far as a policy can tell.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PartitionContent<'a> {
    /// LUKS: encrypted, whatever is inside.
    Encrypted,
    /// A file system, named when it is recognised (`squashfs`, `ext4`, ...).
    FileSystem(Option<&'a str>),
}

/// How much of a derived policy the host's systemd reads, by version.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum PinLevel {
    /// No `RootImagePolicy=` (before 254): nothing is pinned.
    #[default]
    Off,
    /// Partitions and their protection (254 to 257).
    Protection,
    /// And their file systems (258 and later).
    FileSystems,
}

impl PinLevel {
    pub fn for_systemd(version: u32) -> PinLevel {
        match version {
            v if v >= FILE_SYSTEMS_SINCE => PinLevel::FileSystems,
            v if v >= ROOT_IMAGE_POLICY_SINCE => PinLevel::Protection,
            _ => PinLevel::Off,
        }
    }
}

/// The first systemd with `RootImagePolicy=`.
pub const ROOT_IMAGE_POLICY_SINCE: u32 = 254;
/// The first systemd whose image policies name file systems.
pub const FILE_SYSTEMS_SINCE: u32 = 258;

/// The policy an image satisfies exactly as it is: per designator it has,
/// the protection found (and file system), every other designator absent.
/// Verity and signature partitions are not listed: systemd derives their
/// policy from their data partition's.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DerivedPolicy {
    /// Designator → the use and protection flags allowed, and the file
    /// systems (empty: any).
    rules: BTreeMap<String, (BTreeSet<String>, BTreeSet<String>)>,
}

impl DerivedPolicy {
    /// A bare file system image: systemd takes it as the root partition.
    pub fn of_file_system(fs: &str) -> DerivedPolicy {
        let fs = FILE_SYSTEMS.contains(&fs).then(|| fs.to_string()).into_iter().collect();
        let rules = BTreeMap::from([("root".to_string(), (BTreeSet::from(["unprotected".to_string()]), fs))]);
        DerivedPolicy { rules }
    }

    /// A partitioned image: `partitions` are its (role, content) pairs, the
    /// roles as [`DESIGNATORS`] names them (others are skipped).
    pub fn of_partitions(partitions: &[(&str, PartitionContent<'_>)]) -> DerivedPolicy {
        let has = |role: &str| partitions.iter().any(|(r, _)| *r == role);
        let mut rules = BTreeMap::new();
        for &(role, content) in partitions {
            if !DESIGNATORS.contains(&role) || role.ends_with("-verity") || role.ends_with("-verity-sig") {
                continue;
            }
            let (flag, fs) = if NOT_MOUNTED_FOR_SERVICES.contains(&role) {
                ("unused", None)
            } else {
                match content {
                    PartitionContent::Encrypted => ("encrypted", None),
                    PartitionContent::FileSystem(fs) => {
                        let protection = match (has(&format!("{role}-verity")), has(&format!("{role}-verity-sig"))) {
                            (true, true) => "signed",
                            (true, false) => "verity",
                            _ => "unprotected",
                        };
                        (protection, fs.filter(|fs| FILE_SYSTEMS.contains(fs)))
                    }
                }
            };
            let rule = rules.entry(role.to_string()).or_insert_with(|| (BTreeSet::new(), BTreeSet::new()));
            rule.0.insert(flag.to_string());
            rule.1.extend(fs.map(str::to_string));
        }
        DerivedPolicy { rules }
    }

    /// A policy that each of `policies` satisfies (for extension images,
    /// which share one `ExtensionImagePolicy=`): a designator some lack may
    /// be absent, and a file system is named only where every image that
    /// has the designator names one.
    pub fn union(policies: &[DerivedPolicy]) -> Option<DerivedPolicy> {
        let (first, rest) = policies.split_first()?;
        let mut rules = first.rules.clone();
        for policy in rest {
            for (designator, (flags, fs)) in &policy.rules {
                match rules.get_mut(designator) {
                    Some(rule) => {
                        rule.0.extend(flags.iter().cloned());
                        if rule.1.is_empty() || fs.is_empty() {
                            rule.1.clear();
                        } else {
                            rule.1.extend(fs.iter().cloned());
                        }
                    }
                    None => {
                        let mut flags = flags.clone();
                        flags.insert("absent".into());
                        rules.insert(designator.clone(), (flags, fs.clone()));
                    }
                }
            }
            for (designator, rule) in rules.iter_mut() {
                if !policy.rules.contains_key(designator) {
                    rule.0.insert("absent".into());
                }
            }
        }
        Some(DerivedPolicy { rules })
    }

    /// The policy in systemd's syntax, as much of it as `level` reads;
    /// `None` at [`PinLevel::Off`].
    pub fn render(&self, level: PinLevel) -> Option<String> {
        if level == PinLevel::Off {
            return None;
        }
        let order = |flag: &String| USE_FLAGS.iter().position(|f| f == flag).unwrap_or(usize::MAX);
        let mut parts: Vec<String> = DESIGNATORS
            .iter()
            .filter_map(|designator| {
                let (flags, fs) = self.rules.get(*designator)?;
                let mut flags: Vec<&String> = flags.iter().collect();
                flags.sort_by_key(|f| order(f));
                let mut words: Vec<&str> = flags.into_iter().map(String::as_str).collect();
                if level == PinLevel::FileSystems {
                    words.extend(fs.iter().map(String::as_str));
                }
                Some(format!("{designator}={}", words.join("+")))
            })
            .collect();
        parts.push("=absent".to_string());
        Some(parts.join(":"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn policies_parse_as_systemd_writes_them() {
        let policy = ImagePolicy::parse("root=verity+signed:usr=unprotected+squashfs:=absent").unwrap();
        assert_eq!(policy.as_str(), "root=verity+signed:usr=unprotected+squashfs:=absent");
        assert_eq!(policy.refuses("root", "signed", None), None);
        assert_eq!(
            policy.refuses("root", "unprotected", Some("squashfs")).unwrap(),
            "its root partition is unprotected, the policy allows verity+signed"
        );
        assert_eq!(
            policy.refuses("usr", "unprotected", Some("ext4")).unwrap(),
            "its usr partition is ext4, the policy allows only squashfs"
        );
        assert!(policy.refuses("home", "unprotected", None).is_some(), "the rest: absent");
        assert_eq!(policy.refuses_absence("home"), None);
        assert!(policy.refuses_absence("root").is_some());
        for open in ["*", "root=*", "=unprotected+verity+signed+encrypted+unused+absent"] {
            assert_eq!(ImagePolicy::parse(open).unwrap().refuses("root", "unprotected", Some("ext4")), None, "{open}");
        }
        assert!(ImagePolicy::parse("-").unwrap().refuses("root", "unprotected", None).is_some());
        assert!(ImagePolicy::parse("~").unwrap().refuses_absence("usr").is_none());
        assert!(policy.names_file_systems());
        assert!(!ImagePolicy::parse("root=verity:=absent").unwrap().names_file_systems());
    }

    #[test]
    fn partitioned_images_are_checked_by_their_protection() {
        let roles = ["esp", "root", "root-verity", "root-verity-sig", "other"];
        assert_eq!(protection(&roles, "root", true), "signed");
        assert_eq!(protection(&roles, "root", false), "verity", "a signature nobody checks is no signature");
        assert_eq!(protection(&["root", "root-verity"], "root", true), "verity");
        assert_eq!(protection(&["root"], "root", true), "unprotected");
        let policy = ImagePolicy::parse("root=signed:esp=unused+absent").unwrap();
        assert_eq!(policy.refuses_partitions(&roles, true), None);
        assert_eq!(
            policy.refuses_partitions(&roles, false).unwrap(),
            "its root partition is verity, the policy allows signed"
        );
        assert!(policy.refuses_partitions(&["root"], true).unwrap().contains("is unprotected"));
        assert!(ImagePolicy::parse("-").unwrap().refuses_partitions(&["root"], true).is_some(), "root unused");
        let absent = ImagePolicy::parse("root=verity:esp=absent").unwrap();
        assert!(absent.refuses_partitions(&roles, false).unwrap().contains("esp partition"), "present, not absent");
    }

    #[test]
    fn bad_policies_are_refused_naming_the_part() {
        for (text, why) in [
            ("", "it is empty"),
            ("root", "'root' is not DESIGNATOR=FLAGS"),
            ("rot=verity", "'rot' is not a partition designator"),
            ("root=verity+bogus", "'bogus' is not a partition policy flag"),
            ("root=verity:root=signed", "'root' has two rules"),
            ("=absent:=unused", "'' has two rules"),
        ] {
            assert_eq!(
                ImagePolicy::parse(text).unwrap_err().to_string(),
                format!("image policy '{text}': {why}"),
                "{text}"
            );
        }
    }

    #[test]
    fn a_derived_policy_pins_what_the_image_has() {
        use PartitionContent::*;
        let squashfs = DerivedPolicy::of_file_system("squashfs");
        assert_eq!(squashfs.render(PinLevel::Off), None);
        assert_eq!(squashfs.render(PinLevel::Protection).unwrap(), "root=unprotected:=absent");
        assert_eq!(squashfs.render(PinLevel::FileSystems).unwrap(), "root=unprotected+squashfs:=absent");

        let signed = DerivedPolicy::of_partitions(&[
            ("esp", FileSystem(Some("vfat"))),
            ("root", FileSystem(Some("erofs"))),
            ("root-verity", FileSystem(None)),
            ("root-verity-sig", FileSystem(None)),
            ("home", Encrypted),
            ("other", FileSystem(Some("ext4"))),
        ]);
        assert_eq!(
            signed.render(PinLevel::FileSystems).unwrap(),
            "root=signed+erofs:home=encrypted:esp=unused:=absent",
            "verity partitions follow their data partition; the ESP stays unused"
        );
        let verity =
            DerivedPolicy::of_partitions(&[("usr", FileSystem(Some("btrfs"))), ("usr-verity", FileSystem(None))]);
        assert_eq!(verity.render(PinLevel::Protection).unwrap(), "usr=verity:=absent");

        // Each derived policy satisfies its image, as wharf checks images.
        let parsed = ImagePolicy::parse(&signed.render(PinLevel::FileSystems).unwrap()).unwrap();
        assert_eq!(parsed.refuses("root", "signed", Some("erofs")), None);
        assert!(parsed.refuses("root", "verity", Some("erofs")).is_some(), "a swapped image with less protection");
        assert!(parsed.refuses("root", "signed", Some("ext4")).is_some(), "or another file system");
        assert!(parsed.refuses("usr", "unprotected", None).is_some(), "or a partition more");
        assert!(parsed.refuses_absence("root").is_some(), "or one less");
    }

    #[test]
    fn extensions_share_a_policy_each_satisfies() {
        use PartitionContent::*;
        let squashfs = DerivedPolicy::of_file_system("squashfs");
        let erofs = DerivedPolicy::of_file_system("erofs");
        let gpt = DerivedPolicy::of_partitions(&[("usr", FileSystem(None)), ("usr-verity", FileSystem(None))]);
        assert_eq!(DerivedPolicy::union(&[]), None);
        assert_eq!(DerivedPolicy::union(std::slice::from_ref(&squashfs)).unwrap(), squashfs);
        assert_eq!(
            DerivedPolicy::union(&[squashfs.clone(), erofs]).unwrap().render(PinLevel::FileSystems).unwrap(),
            "root=unprotected+erofs+squashfs:=absent"
        );
        assert_eq!(
            DerivedPolicy::union(&[squashfs, gpt]).unwrap().render(PinLevel::FileSystems).unwrap(),
            "root=unprotected+absent+squashfs:usr=verity+absent:=absent"
        );
    }
}
