//! Private UID/GID ranges for containers: each container's user namespace
//! maps its UIDs and GIDs 0..65536 to a range of 65536 host IDs that no one
//! else uses.
//!
//! How `--private-users=pick` picks (as systemd-nspawn does, with a check
//! of its own added): candidate bases are multiples of 65536 between
//! 0x00080000 and 0x6FFF0000; the first candidate is derived from a hash of
//! the machine name, so a machine gets the same range each time it starts
//! when that range is free, then the following ones are tried in turn.
//!
//! A candidate is *free* when
//! 1. no other wharf launcher holds it: each launcher holds an exclusive
//!    `flock` on `/run/wharf/uid-ranges/BASE` for its lifetime (the kernel
//!    drops it if the launcher dies; the launcher removes the file when it
//!    exits); taking this lock first makes two launchers that start at the
//!    same time pick different ranges;
//! 2. no user namespace on the host maps any ID of the range: the UID and
//!    GID maps of every process's user namespace in `/proc` are read (this
//!    covers systemd-nspawn containers, other runtimes and anything else);
//! 3. no user or group of `/etc/passwd` or `/etc/group` has an ID in it.
//!
//! An image whose files were shifted by `chown` (when idmapped mounts are
//! not available) records its range in the owner of its root directory;
//! `pick` then takes that range, which must be free by 1 and 2.

use std::fs::{File, OpenOptions};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use nix::fcntl::{Flock, FlockArg};

/// IDs in one container's range.
pub const RANGE_SIZE: u32 = 0x10000;
/// Lowest base `pick` chooses (as nspawn: above the IDs of normal users).
pub const BASE_MIN: u32 = 0x0008_0000;
/// Highest base `pick` chooses (as nspawn: below 0x70000000, which systemd
/// keeps for other uses).
pub const BASE_MAX: u32 = 0x6FFF_0000;

/// Where the launchers' range locks live.
pub const LOCK_DIR: &str = "/run/wharf/uid-ranges";

/// The `--private-users=` setting.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PrivateUsers {
    /// A free range, picked as the module documentation says.
    Pick,
    /// No user namespace: container root is host root.
    No,
    /// This base (container UID 0 is host UID `base`), 65536 IDs.
    Base(u32),
}

impl std::str::FromStr for PrivateUsers {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "pick" | "yes" => Ok(PrivateUsers::Pick),
            "no" => Ok(PrivateUsers::No),
            _ => {
                let base: u32 = s
                    .parse()
                    .map_err(|_| format!("'{s}' is neither 'pick', 'no' nor a UID (the range's first UID)"))?;
                if base == 0 || base.checked_add(RANGE_SIZE - 1).is_none() {
                    return Err(format!("UID {base} cannot start a range of {RANGE_SIZE} UIDs"));
                }
                Ok(PrivateUsers::Base(base))
            }
        }
    }
}

/// As [`FromStr`](std::str::FromStr) reads it back.
impl std::fmt::Display for PrivateUsers {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            PrivateUsers::Pick => f.write_str("pick"),
            PrivateUsers::No => f.write_str("no"),
            PrivateUsers::Base(base) => write!(f, "{base}"),
        }
    }
}

/// One line of `/proc/PID/uid_map` or `gid_map`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct IdMapping {
    pub inner: u32,
    pub outer: u32,
    pub count: u32,
}

impl IdMapping {
    /// True when some ID of `[base, base + RANGE_SIZE)` is an outer ID here.
    pub fn overlaps(&self, base: u32) -> bool {
        let start = u64::from(self.outer);
        let end = start + u64::from(self.count);
        let range_end = u64::from(base) + u64::from(RANGE_SIZE);
        start < range_end && u64::from(base) < end
    }

    /// The identity mapping of the initial user namespace.
    pub fn is_identity(&self) -> bool {
        self.inner == 0 && self.outer == 0 && self.count == u32::MAX
    }
}

/// Parses the text of a `uid_map`/`gid_map` file; malformed lines are skipped.
pub fn parse_id_map(text: &str) -> Vec<IdMapping> {
    text.lines()
        .filter_map(|line| {
            let mut fields = line.split_whitespace().map(str::parse::<u32>);
            match (fields.next(), fields.next(), fields.next()) {
                (Some(Ok(inner)), Some(Ok(outer)), Some(Ok(count))) => Some(IdMapping { inner, outer, count }),
                _ => None,
            }
        })
        .collect()
}

/// The numeric IDs (third field) of an `/etc/passwd` or `/etc/group` text.
pub fn parse_db_ids(text: &str) -> Vec<u32> {
    text.lines().filter(|line| !line.starts_with('#')).filter_map(|line| line.split(':').nth(2)?.parse().ok()).collect()
}

/// The bases `pick` tries for `name`, in order: every candidate once,
/// starting at the one the name hashes to.
pub fn candidates(name: &str) -> impl Iterator<Item = u32> {
    let slots = (BASE_MAX - BASE_MIN) / RANGE_SIZE + 1;
    let mut hash: u32 = 0x811c_9dc5;
    for byte in name.bytes() {
        hash ^= u32::from(byte);
        hash = hash.wrapping_mul(0x0100_0193);
    }
    let first = hash % slots;
    (0..slots).map(move |i| BASE_MIN + ((first + i) % slots) * RANGE_SIZE)
}

/// If a directory image's root is owned by a UID that starts a range, its
/// files were shifted to that range: the base.
pub fn base_of_shifted_image(root_uid: u32) -> Option<u32> {
    (root_uid != 0 && root_uid.is_multiple_of(RANGE_SIZE) && root_uid.checked_add(RANGE_SIZE - 1).is_some())
        .then_some(root_uid)
}

#[derive(Debug, thiserror::Error)]
pub enum RangeError {
    #[error("no free range of {RANGE_SIZE} UIDs between {BASE_MIN} and {BASE_MAX}")]
    NoneFree,
    #[error("UID range {base}..{} is in use ({why})", u64::from(*.base) + u64::from(RANGE_SIZE) - 1)]
    InUse { base: u32, why: String },
    #[error("cannot lock UID range {base} ({}): {source}", .path.display())]
    Lock {
        base: u32,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

/// A range held by this launcher until dropped.
#[derive(Debug)]
pub struct HeldRange {
    pub base: u32,
    lock: Option<Flock<File>>,
    path: PathBuf,
}

impl Drop for HeldRange {
    fn drop(&mut self) {
        // Unlink while still holding the lock: a launcher that opened the
        // old file meanwhile fails its non-blocking lock and moves on.
        let _ = std::fs::remove_file(&self.path);
        drop(self.lock.take());
    }
}

/// Takes `base` if it is free; `Ok(None)` when another launcher holds it.
fn try_lock(base: u32) -> Result<Option<HeldRange>, RangeError> {
    try_lock_in(Path::new(LOCK_DIR), base)
}

fn try_lock_in(dir: &Path, base: u32) -> Result<Option<HeldRange>, RangeError> {
    let path = dir.join(base.to_string());
    let fail = |source| RangeError::Lock { base, path: path.clone(), source };
    std::fs::create_dir_all(dir).map_err(fail)?;
    loop {
        let file = OpenOptions::new().create(true).truncate(false).write(true).open(&path).map_err(fail)?;
        let lock = match Flock::lock(file, FlockArg::LockExclusiveNonblock) {
            Ok(lock) => lock,
            Err((_, nix::errno::Errno::EWOULDBLOCK)) => return Ok(None),
            Err((_, errno)) => return Err(fail(errno.into())),
        };
        // The holder we waited for may have unlinked the file between our
        // open and our lock: a lock on that orphaned inode holds nothing,
        // since the next launcher creates a new file. Only a lock on the
        // file still at the path counts.
        if still_at(&lock, &path).map_err(fail)? {
            return Ok(Some(HeldRange { base, lock: Some(lock), path }));
        }
    }
}

/// Whether `file` is the file at `path` now.
fn still_at(file: &File, path: &Path) -> std::io::Result<bool> {
    let open = file.metadata()?;
    match std::fs::metadata(path) {
        Ok(now) => Ok(now.dev() == open.dev() && now.ino() == open.ino()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(false),
        Err(e) => Err(e),
    }
}

/// What on this host uses IDs: the maps of every other user namespace and
/// the IDs of the user and group databases.
#[derive(Debug, Default)]
pub struct HostIds {
    pub maps: Vec<IdMapping>,
    pub db: Vec<u32>,
}

impl HostIds {
    /// Reads `/proc/*/{uid,gid}_map` (once per user namespace) and
    /// `/etc/passwd`, `/etc/group`.
    pub fn scan() -> HostIds {
        let own = std::fs::read_link("/proc/self/ns/user").ok();
        let mut seen = std::collections::HashSet::new();
        let mut maps = Vec::new();
        for entry in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
            let name = entry.file_name();
            if !name.to_string_lossy().bytes().all(|b| b.is_ascii_digit()) {
                continue;
            }
            let dir = entry.path();
            // Processes come and go while we read: a vanished one is skipped.
            let Ok(ns) = std::fs::read_link(dir.join("ns/user")) else { continue };
            if Some(&ns) == own.as_ref() || !seen.insert(ns) {
                continue;
            }
            for file in ["uid_map", "gid_map"] {
                if let Ok(text) = std::fs::read_to_string(dir.join(file)) {
                    maps.extend(parse_id_map(&text).into_iter().filter(|m| !m.is_identity()));
                }
            }
        }
        let mut db = Vec::new();
        for file in ["/etc/passwd", "/etc/group"] {
            db.extend(parse_db_ids(&std::fs::read_to_string(file).unwrap_or_default()));
        }
        HostIds { maps, db }
    }

    /// Why `base` is not free, if it is not.
    pub fn conflict(&self, base: u32) -> Option<String> {
        if let Some(map) = self.maps.iter().find(|m| m.overlaps(base)) {
            return Some(format!(
                "a user namespace maps {}..{}",
                map.outer,
                u64::from(map.outer) + u64::from(map.count)
            ));
        }
        let end = u64::from(base) + u64::from(RANGE_SIZE);
        if let Some(id) = self.db.iter().find(|&&id| u64::from(id) >= u64::from(base) && u64::from(id) < end) {
            return Some(format!("user or group {id} of the host is in it"));
        }
        None
    }
}

/// Holds `base` for this launcher, failing if it is not free.
pub fn take(base: u32) -> Result<HeldRange, RangeError> {
    let held =
        try_lock(base)?.ok_or_else(|| RangeError::InUse { base, why: "another wharf launcher holds it".into() })?;
    match HostIds::scan().conflict(base) {
        Some(why) => Err(RangeError::InUse { base, why }),
        None => Ok(held),
    }
}

/// Picks and holds a free range for machine `name`.
pub fn pick(name: &str) -> Result<HeldRange, RangeError> {
    let host = HostIds::scan();
    for base in candidates(name) {
        if host.conflict(base).is_some() {
            continue;
        }
        if let Some(held) = try_lock(base)? {
            return Ok(held);
        }
    }
    Err(RangeError::NoneFree)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_range_is_held_once_and_free_again_after_its_holder() {
        let dir = std::env::temp_dir().join(format!("wharf-uid-range-test-{}", std::process::id()));
        let held = try_lock_in(&dir, 1_835_008).unwrap().expect("a free range");
        assert!(try_lock_in(&dir, 1_835_008).unwrap().is_none(), "held twice");
        // A waiter that opened the file before the holder let go locks an
        // inode no longer at the path once it is free: that holds nothing.
        let waiter = File::open(dir.join("1835008")).unwrap();
        drop(held);
        let waiter = Flock::lock(waiter, FlockArg::LockExclusiveNonblock).map_err(|(_, e)| e).unwrap();
        assert!(!still_at(&waiter, &dir.join("1835008")).unwrap(), "an unlinked file counted as the range's");
        let again = try_lock_in(&dir, 1_835_008).unwrap().expect("free after its holder");
        assert!(still_at(again.lock.as_ref().unwrap(), &again.path).unwrap());
        assert!(try_lock_in(&dir, 1_835_008).unwrap().is_none(), "held twice after a release");
        drop((waiter, again));
        std::fs::remove_dir(&dir).unwrap();
    }

    #[test]
    fn parses_private_users() {
        assert_eq!("pick".parse(), Ok(PrivateUsers::Pick));
        assert_eq!("no".parse(), Ok(PrivateUsers::No));
        assert_eq!("1835008".parse(), Ok(PrivateUsers::Base(1_835_008)));
        assert!("0".parse::<PrivateUsers>().is_err());
        assert!("4294967295".parse::<PrivateUsers>().is_err());
        assert!("maybe".parse::<PrivateUsers>().is_err());
    }

    #[test]
    fn parses_id_maps_and_finds_overlaps() {
        let maps = parse_id_map("         0  770113536      65536\n garbage\n");
        assert_eq!(maps, [IdMapping { inner: 0, outer: 770_113_536, count: 65536 }]);
        assert!(maps[0].overlaps(770_113_536));
        assert!(!maps[0].overlaps(770_113_536 + RANGE_SIZE));
        assert!(!maps[0].overlaps(770_113_536 - RANGE_SIZE));
        let partial = IdMapping { inner: 0, outer: 770_113_536 - 10, count: 11 };
        assert!(partial.overlaps(770_113_536));
        assert!(parse_id_map("0 0 4294967295")[0].is_identity());
    }

    #[test]
    fn conflicts_name_their_cause() {
        let host = HostIds {
            maps: vec![IdMapping { inner: 0, outer: BASE_MIN, count: RANGE_SIZE }],
            db: parse_db_ids("root:x:0:0::/root:/bin/sh\n# comment\nbig:x:1900000:1900000::/:/bin/sh\n"),
        };
        assert_eq!(host.db, [0, 1_900_000]);
        assert!(host.conflict(BASE_MIN).unwrap().contains("user namespace"));
        assert!(host.conflict(1_900_000 / RANGE_SIZE * RANGE_SIZE).unwrap().contains("1900000"));
        assert_eq!(host.conflict(BASE_MIN + RANGE_SIZE), None);
    }

    #[test]
    fn candidates_cover_every_base_once_from_the_name() {
        let all: Vec<u32> = candidates("f28").collect();
        assert_eq!(all.len() as u32, (BASE_MAX - BASE_MIN) / RANGE_SIZE + 1);
        assert!(all.iter().all(|b| b.is_multiple_of(RANGE_SIZE) && (BASE_MIN..=BASE_MAX).contains(b)));
        let mut sorted = all.clone();
        sorted.sort();
        sorted.dedup();
        assert_eq!(sorted.len(), all.len());
        assert_eq!(candidates("f28").next(), candidates("f28").next());
        assert_ne!(candidates("f28").next(), candidates("f29").next());
    }

    #[test]
    fn recognises_a_shifted_image_root() {
        assert_eq!(base_of_shifted_image(0), None);
        assert_eq!(base_of_shifted_image(1000), None);
        assert_eq!(base_of_shifted_image(0x1C_0000), Some(0x1C_0000));
    }
}
