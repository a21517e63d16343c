//! Image policies in systemd's syntax (systemd.image-policy(7)): which
//! partitions of an image may be used, and with what protection and file
//! system. `portable attach --image-policy=` checks the image against one
//! before anything is written, and pins the attachment to it
//! (`RootImagePolicy=`), so that systemd refuses a file swapped in later
//! that does not satisfy it.

use std::collections::BTreeMap;

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
}
