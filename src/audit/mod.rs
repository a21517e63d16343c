//! The audit trail: one structured journal entry per change wharfd makes,
//! saying who asked (uid, user, pid, command line, bus name), with which
//! image bytes (path, kind, size, sha256) and profile, what changed (the
//! executor's file changes, the units), how it ended (done, failed, rolled
//! back, partially rolled back with the undo steps that failed) and how
//! long it took; and one entry per refusal, rate-limited per caller.
//!
//! Each kind of entry has a fixed `MESSAGE_ID` ([`Kind::message_id`],
//! listed in wharfd(8)): `journalctl MESSAGE_ID=… -o json` finds them, and
//! `portable history` / `machine history` ([`history`]) read them back.
//! Entries are sent with the journal's native protocol ([`native`]), whose
//! binary-safe encoding keeps whatever a caller controls (its command
//! line, an image name) inside its own field.

pub mod caller;
pub mod history;
pub mod limit;
pub mod native;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{LazyLock, Mutex};
use std::time::{Duration, Instant};

pub use caller::Caller;

use crate::api::BusError;
use crate::image::{ImageKind, Pool};
use crate::transaction::FailedUndo;

/// What an entry records. The names are the `WHARF_KIND` field.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Kind {
    Attach,
    Detach,
    Reattach,
    /// A portable image deleted.
    Remove,
    /// An image (portable or machine) marked read-only or writable.
    ReadOnly,
    MachineStart,
    /// A signal to a machine's init: poweroff, reboot, halt.
    MachinePoweroff,
    /// A machine's unit stopped.
    MachineTerminate,
    MachineKill,
    SetProperty,
    Import,
    Export,
    Clone,
    Rename,
    /// A machine image deleted.
    ImageRemove,
    FleetApply,
    /// One step of a fleet apply, after the apply's own entry.
    FleetStep,
    /// A call refused: access denied or bad input.
    Refused,
}

/// Which history a kind belongs to (`WHARF_DOMAIN`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Domain {
    Portable,
    Machine,
    Fleet,
}

impl Domain {
    pub fn as_str(self) -> &'static str {
        match self {
            Domain::Portable => "portable",
            Domain::Machine => "machine",
            Domain::Fleet => "fleet",
        }
    }
}

impl Kind {
    pub const ALL: [Kind; 18] = [
        Kind::Attach,
        Kind::Detach,
        Kind::Reattach,
        Kind::Remove,
        Kind::ReadOnly,
        Kind::MachineStart,
        Kind::MachinePoweroff,
        Kind::MachineTerminate,
        Kind::MachineKill,
        Kind::SetProperty,
        Kind::Import,
        Kind::Export,
        Kind::Clone,
        Kind::Rename,
        Kind::ImageRemove,
        Kind::FleetApply,
        Kind::FleetStep,
        Kind::Refused,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Kind::Attach => "attach",
            Kind::Detach => "detach",
            Kind::Reattach => "reattach",
            Kind::Remove => "remove",
            Kind::ReadOnly => "read-only",
            Kind::MachineStart => "machine-start",
            Kind::MachinePoweroff => "machine-poweroff",
            Kind::MachineTerminate => "machine-terminate",
            Kind::MachineKill => "machine-kill",
            Kind::SetProperty => "set-property",
            Kind::Import => "import",
            Kind::Export => "export",
            Kind::Clone => "clone",
            Kind::Rename => "rename",
            Kind::ImageRemove => "image-remove",
            Kind::FleetApply => "fleet-apply",
            Kind::FleetStep => "fleet-step",
            Kind::Refused => "refused",
        }
    }

    /// The entry's `MESSAGE_ID`: generated once, never to change (scripts
    /// and journal catalogs match on it).
    pub fn message_id(self) -> &'static str {
        match self {
            Kind::Attach => "8575d8955c7087513ce98705246239a1",
            Kind::Detach => "fbe6f7a8557cfa30dc4e97d310edd74c",
            Kind::Reattach => "c53828aa88f98f89d0698003050c8299",
            Kind::Remove => "4803a2f93642aecb330dcd10cceae78d",
            Kind::ReadOnly => "e6c3dd57b8d32ef83bd988c3fc2b82c3",
            Kind::MachineStart => "f693e18f086c2cc6431292d8b5f8d629",
            Kind::MachinePoweroff => "e3f31bd3491d6e58b16f7d8e0943e14f",
            Kind::MachineTerminate => "73694b3574d7b171eb9d90a0eda4551b",
            Kind::MachineKill => "60c1993a6e4f0f83fde66a22f0bc43e7",
            Kind::SetProperty => "48ea41689f7e51ee7a2811cc35a285da",
            Kind::Import => "8eb4ecf398e2b4d6aeff36e29f2cda02",
            Kind::Export => "f432d4f6decf8bc539fc012b9e476403",
            Kind::Clone => "29bb97f5f8b88a4f7701b851a9171286",
            Kind::Rename => "3e35dc0f688a39b4542e5acdb1297b43",
            Kind::ImageRemove => "044b9c97688953edbc4fcd4fa7367e40",
            Kind::FleetApply => "c94e953089d5f00c1d0c258c14f89c45",
            Kind::FleetStep => "27dad425b05e50c26534c5dad9c58405",
            Kind::Refused => "e78c0e6452bf408eb615c0ec53bfbb08",
        }
    }

    pub fn from_message_id(id: &str) -> Option<Kind> {
        Kind::ALL.into_iter().find(|k| k.message_id() == id)
    }

    /// The domain of a change; a refusal's is that of what was refused.
    pub fn domain(self) -> Domain {
        match self {
            Kind::Attach | Kind::Detach | Kind::Reattach | Kind::Remove | Kind::ReadOnly | Kind::Refused => {
                Domain::Portable
            }
            Kind::FleetApply | Kind::FleetStep => Domain::Fleet,
            _ => Domain::Machine,
        }
    }

    /// The verb of the human MESSAGE.
    fn verb(self) -> &'static str {
        match self {
            Kind::Attach => "attached",
            Kind::Detach => "detached",
            Kind::Reattach => "reattached",
            Kind::Remove | Kind::ImageRemove => "removed image",
            Kind::ReadOnly => "changed read-only of",
            Kind::MachineStart => "started machine",
            Kind::MachinePoweroff => "signalled the init of machine",
            Kind::MachineTerminate => "terminated machine",
            Kind::MachineKill => "killed machine",
            Kind::SetProperty => "set properties of machine",
            Kind::Import => "imported",
            Kind::Export => "exported",
            Kind::Clone => "cloned",
            Kind::Rename => "renamed",
            Kind::FleetApply => "applied fleet file",
            Kind::FleetStep => "fleet step",
            Kind::Refused => "refused",
        }
    }
}

/// How a change ended (`WHARF_RESULT`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    Done,
    /// Failed before changing anything.
    Failed,
    /// Failed, and every step done was undone.
    RolledBack,
    /// Failed, and these undo steps failed too.
    PartiallyRolledBack(Vec<FailedUndo>),
}

impl Outcome {
    pub fn as_str(&self) -> &'static str {
        match self {
            Outcome::Done => "done",
            Outcome::Failed => "failed",
            Outcome::RolledBack => "rolled-back",
            Outcome::PartiallyRolledBack(_) => "partially-rolled-back",
        }
    }

    /// syslog priority: info, warning, error.
    fn priority(&self) -> u8 {
        match self {
            Outcome::Done => 6,
            Outcome::Failed | Outcome::RolledBack => 4,
            Outcome::PartiallyRolledBack(_) => 3,
        }
    }
}

/// An error as the audit sees it: how far the change got, and whether it
/// was refused as bad input (a refusal entry instead of a change entry).
pub trait Failure: std::fmt::Display {
    fn outcome(&self) -> Outcome {
        Outcome::Failed
    }
    fn bad_input(&self) -> bool {
        false
    }
}

impl Failure for BusError {
    fn bad_input(&self) -> bool {
        matches!(self, BusError::InvalidArgument(_) | BusError::AccessDenied(_))
    }
}

impl Failure for crate::portable::Error {
    fn outcome(&self) -> Outcome {
        use crate::portable::Error as E;
        match self {
            E::RolledBack(_) => Outcome::RolledBack,
            E::PartiallyRolledBack { failed_steps, .. } => Outcome::PartiallyRolledBack(failed_steps.clone()),
            _ => Outcome::Failed,
        }
    }
    fn bad_input(&self) -> bool {
        use crate::portable::Error as E;
        matches!(self, E::Profile(_) | E::InvalidCopyMode(_) | E::InvalidImagePath(_))
    }
}

impl Failure for crate::fleet::apply::Error {
    fn outcome(&self) -> Outcome {
        use crate::fleet::apply::Error as E;
        match self {
            E::RolledBack(_) => Outcome::RolledBack,
            E::PartiallyRolledBack { failed_steps, .. } => Outcome::PartiallyRolledBack(failed_steps.clone()),
            _ => Outcome::Failed,
        }
    }
    fn bad_input(&self) -> bool {
        matches!(self, crate::fleet::apply::Error::File(_))
    }
}

/// What a successful call did, as entry fields.
pub trait Effects {
    fn effects(&self, _fields: &mut Fields) {}
    /// The image a call made (import, clone, rename), when it names one.
    fn made_image(&self) -> Option<&Path> {
        None
    }
}

impl Effects for () {}

impl Effects for PathBuf {
    fn made_image(&self) -> Option<&Path> {
        Some(self)
    }
}

impl Effects for crate::portable::ops::Outcome {
    fn effects(&self, fields: &mut Fields) {
        add_changes(fields, self.changes.iter().map(|c| (c.kind.as_str(), c.path.as_str(), c.source.as_str())));
        fields.many("WHARF_UNIT", self.units.iter().cloned());
        fields.many("WHARF_UNIT_STARTED", self.restarted.iter().cloned());
    }
}

impl Effects for crate::machine::ops::Started {
    fn effects(&self, fields: &mut Fields) {
        fields.push("WHARF_UNIT", self.unit.clone());
    }
}

impl Effects for crate::fleet::apply::Outcome {
    fn effects(&self, fields: &mut Fields) {
        fields.push("WHARF_APPLIED", if self.applied { "yes" } else { "no" });
        fields.push("WHARF_STEPS", self.plan.steps.len().to_string());
    }
}

/// At most this many file changes are listed in one entry (the rest are
/// counted in `WHARF_CHANGES_OMITTED`): an entry stays one datagram.
pub const MAX_CHANGES: usize = 1000;

fn add_changes<'a>(fields: &mut Fields, changes: impl Iterator<Item = (&'a str, &'a str, &'a str)>) {
    let mut omitted = 0usize;
    for (i, (kind, path, source)) in changes.enumerate() {
        if i >= MAX_CHANGES {
            omitted += 1;
            continue;
        }
        let text = if source.is_empty() { format!("{kind} {path}") } else { format!("{kind} {path} -> {source}") };
        fields.push("WHARF_CHANGE", text);
    }
    if omitted > 0 {
        fields.push("WHARF_CHANGES_OMITTED", omitted.to_string());
    }
}

/// The fields of one entry, in order; a name may repeat.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Fields(pub Vec<(&'static str, String)>);

impl Fields {
    pub fn push(&mut self, name: &'static str, value: impl Into<String>) {
        self.0.push((name, value.into()));
    }
    pub fn many(&mut self, name: &'static str, values: impl IntoIterator<Item = String>) {
        self.0.extend(values.into_iter().map(|v| (name, v)));
    }
    pub fn get(&self, name: &str) -> Option<&str> {
        self.0.iter().find(|(n, _)| *n == name).map(|(_, v)| v.as_str())
    }
}

/// What is known of an image used: `WHARF_IMAGE_*`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ImageFacts {
    pub path: PathBuf,
    pub kind: ImageKind,
    pub size: u64,
    /// None for a directory image (its bytes have no one digest).
    pub sha256: Option<String>,
}

impl ImageFacts {
    fn add(&self, fields: &mut Fields) {
        fields.push("WHARF_IMAGE_PATH", self.path.display().to_string());
        fields.push("WHARF_IMAGE_KIND", self.kind.as_str());
        fields.push("WHARF_IMAGE_SIZE", self.size.to_string());
        // Empty for a directory: each image of a batch has all four fields,
        // so that the n-th values belong together.
        fields.push("WHARF_IMAGE_SHA256", self.sha256.clone().unwrap_or_default());
    }
}

/// Digests already computed, by file identity and change times: an image
/// attached, detached and reattached is read once per version, not per call.
type DigestKey = (u64, u64, u64, i64, i64, i64, i64);
static DIGESTS: LazyLock<Mutex<HashMap<DigestKey, String>>> = LazyLock::new(|| Mutex::new(HashMap::new()));

/// The identity of a file's contents as [`DIGESTS`] keys it.
fn digest_key(meta: &std::fs::Metadata) -> DigestKey {
    use std::os::unix::fs::MetadataExt;
    (meta.dev(), meta.ino(), meta.size(), meta.mtime(), meta.mtime_nsec(), meta.ctime(), meta.ctime_nsec())
}

/// Records the digest of an image wharf has just written (and hashed on
/// the way), so that its audit entry does not read it all again.
pub fn remember_digest(path: &Path, sha256: String) {
    let Ok(meta) = std::fs::symlink_metadata(path) else { return };
    if let Ok(mut digests) = DIGESTS.lock() {
        digests.insert(digest_key(&meta), sha256);
    }
}

/// The facts of the image at `path`, read now (blocking: may hash it). An
/// xz image's digest is the one its pool copy records, when that copy was
/// made from this path (attach has just checked the bytes against it).
pub fn image_facts(pool: &Pool, path: &Path) -> Option<ImageFacts> {
    let path = std::path::absolute(path).ok()?;
    let file = std::fs::File::open(&path).ok()?;
    let kind = ImageKind::detect_open(&file, &path).ok()?;
    let meta = file.metadata().ok()?;
    let sha256 = match kind {
        ImageKind::Directory => None,
        _ => {
            let recorded = (kind == ImageKind::Xz)
                .then(|| crate::image::xz::target_name(&path).ok())
                .flatten()
                .and_then(|target| crate::image::xz::source_of(&pool.home().join(target)))
                .filter(|r| r.path == path.display().to_string() && !r.sha256.is_empty())
                .map(|r| r.sha256);
            let key = digest_key(&meta);
            match recorded {
                Some(sha256) => Some(sha256),
                None => {
                    let cached = DIGESTS.lock().ok().and_then(|d| d.get(&key).cloned());
                    match cached {
                        Some(sha256) => Some(sha256),
                        None => {
                            let sha256 = crate::image::xz::sha256_of(&path, &file).ok()?;
                            if let Ok(mut digests) = DIGESTS.lock() {
                                digests.insert(key, sha256.clone());
                            }
                            Some(sha256)
                        }
                    }
                }
            }
        }
    };
    Some(ImageFacts { path, kind, size: meta.len(), sha256 })
}

/// The caller's fields, shared by every entry of a call.
fn caller_fields(caller: &Caller, fields: &mut Fields) {
    fields.push("WHARF_CALLER_UID", caller.uid.to_string());
    if let Some(user) = &caller.user {
        fields.push("WHARF_CALLER_USER", user.clone());
    }
    if let Some(pid) = caller.pid {
        fields.push("WHARF_CALLER_PID", pid.to_string());
    }
    // As a JSON array: arguments stay apart, and control characters and
    // newlines become escapes, so the field is one printable line.
    fields.push("WHARF_CALLER_CMDLINE", serde_json::to_string(&caller.cmdline).expect("strings serialise"));
    fields.push("WHARF_CALLER_PID_CHECK", caller.pid_check);
    fields.push("WHARF_BUS_NAME", caller.bus_name.clone());
    if let Some(action) = caller.authorized_by {
        fields.push("WHARF_POLKIT_ACTION", action);
    }
}

/// The fields every entry starts with.
fn head(kind: Kind, domain: Domain, message: String, priority: u8) -> Fields {
    let mut fields = Fields::default();
    fields.push("MESSAGE_ID", kind.message_id());
    fields.push("MESSAGE", message);
    fields.push("PRIORITY", priority.to_string());
    fields.push("SYSLOG_IDENTIFIER", "wharfd");
    fields.push("WHARF_KIND", kind.as_str());
    fields.push("WHARF_DOMAIN", domain.as_str());
    fields
}

/// Writes an entry; a journal that cannot take it is logged through
/// tracing (stderr or what remains of the journal), never silently lost.
fn write(fields: &Fields) {
    if let Err(e) = native::send(&fields.0) {
        let message = fields.get("MESSAGE").unwrap_or_default();
        tracing::error!("cannot write the audit entry '{message}' to the journal: {e}");
    }
}

/// A change being made for a caller; [`Call::finish`] writes its entry.
#[derive(Debug)]
pub struct Call {
    kind: Kind,
    domain: Domain,
    caller: Caller,
    started: Instant,
    /// The images as asked for, and the pool to find them in.
    images: Vec<(Pool, String)>,
    /// Their facts, once read; `None` before.
    facts: Option<Vec<ImageFacts>>,
    /// What the message names (image or machine).
    subject: String,
    fields: Fields,
}

impl Call {
    pub fn new(kind: Kind, caller: Caller) -> Call {
        Call {
            kind,
            domain: kind.domain(),
            caller,
            started: Instant::now(),
            images: Vec::new(),
            facts: None,
            subject: String::new(),
            fields: Fields::default(),
        }
    }

    /// For a kind shared by both pools (read-only): whose history it is.
    pub fn domain(mut self, domain: Domain) -> Call {
        self.domain = domain;
        self
    }

    pub fn field(mut self, name: &'static str, value: impl Into<String>) -> Call {
        self.fields.push(name, value);
        self
    }

    /// The image the call uses, as asked for; its facts are read when the
    /// call finishes (after attach, an xz image's pool copy is current).
    pub fn image(mut self, pool: &Pool, image: &str) -> Call {
        if self.subject.is_empty() {
            self.subject = image.to_string();
        }
        self.fields.push("WHARF_IMAGE", image);
        self.images.push((pool.clone(), image.to_string()));
        self
    }

    /// [`Call::image`], with its facts read now: for a call that removes it.
    pub async fn image_now(mut self, pool: &Pool, image: &str) -> Call {
        self = self.image(pool, image);
        let (pool, image) = (pool.clone(), image.to_string());
        let facts = zruntime::unblock(move || image_facts(&pool, &pool.locate(&image, None).ok()?)).await;
        self.facts = Some(facts.into_iter().collect());
        self
    }

    pub fn machine(mut self, machine: &str) -> Call {
        if self.subject.is_empty() {
            self.subject = machine.to_string();
        }
        self.fields.push("WHARF_MACHINE", machine);
        self
    }

    pub fn profile(self, profile: &str) -> Call {
        self.field("WHARF_PROFILE", profile)
    }

    /// Passes `result` through; an error is logged as a refusal of this call.
    pub fn check<T>(&self, result: Result<T, BusError>) -> Result<T, BusError> {
        if let Err(e) = &result {
            refused(&self.caller, self.kind.as_str(), self.domain, &e.to_string());
        }
        result
    }

    /// Writes the entry of the call, which ended with `result`: a refusal
    /// entry for bad input, else the change's (and, for a fleet apply, one
    /// per step: see [`Call::finish_fleet`]).
    pub async fn finish<T: Effects, E: Failure>(mut self, result: &Result<T, E>) {
        if let Err(e) = result
            && e.bad_input()
        {
            refused(&self.caller, self.kind.as_str(), self.domain, &e.to_string());
            return;
        }
        let made = result.as_ref().ok().and_then(|v| v.made_image()).map(Path::to_path_buf);
        if self.facts.is_none() {
            let images = self.images.clone();
            let facts = zruntime::unblock(move || match made {
                Some(path) => {
                    let pool = images.first().map(|(pool, _)| pool.clone()).unwrap_or_else(Pool::machines);
                    image_facts(&pool, &path).into_iter().collect()
                }
                None => images
                    .iter()
                    .filter_map(|(pool, image)| image_facts(pool, &pool.locate(image, None).ok()?))
                    .collect(),
            })
            .await;
            self.facts = Some(facts);
        }
        let entry = self.entry(result);
        write(&entry);
    }

    /// [`Call::finish`] of a fleet apply, then one entry per step applied,
    /// each with the fleet file and the apply's id.
    pub async fn finish_fleet<E: Failure>(self, result: &Result<crate::fleet::apply::Outcome, E>) {
        let steps: Vec<crate::api::PlanStep> = match result {
            Ok(outcome) if outcome.applied => outcome.plan.steps.iter().map(crate::api::PlanStep::from).collect(),
            _ => Vec::new(),
        };
        let caller = self.caller.clone();
        let shared: Vec<(&'static str, String)> = self
            .fields
            .0
            .iter()
            .filter(|(n, _)| n.starts_with("WHARF_FLEET_") || *n == "WHARF_APPLY_ID")
            .cloned()
            .collect();
        self.finish(result).await;
        for step in steps {
            let mut fields = head(Kind::FleetStep, Domain::Fleet, step_message(&step), 6);
            caller_fields(&caller, &mut fields);
            fields.0.extend(shared.iter().cloned());
            step_fields(&step, &mut fields);
            fields.push("WHARF_RESULT", Outcome::Done.as_str());
            write(&fields);
        }
    }

    /// The entry's fields (pure, for the tests).
    pub fn entry<T: Effects, E: Failure>(&self, result: &Result<T, E>) -> Fields {
        let outcome = match result {
            Ok(_) => Outcome::Done,
            Err(e) => e.outcome(),
        };
        let subject = if self.subject.is_empty() { String::new() } else { format!(" {}", self.subject) };
        let message = match result {
            Ok(_) => format!("{}{subject}", self.kind.verb()),
            Err(e) => format!("{}{subject} failed ({}): {e}", self.kind.as_str(), outcome.as_str()),
        };
        let mut fields = head(self.kind, self.domain, message, outcome.priority());
        caller_fields(&self.caller, &mut fields);
        fields.0.extend(self.fields.0.iter().cloned());
        for facts in self.facts.iter().flatten() {
            facts.add(&mut fields);
        }
        match result {
            Ok(value) => value.effects(&mut fields),
            Err(e) => fields.push("WHARF_ERROR", e.to_string()),
        }
        fields.push("WHARF_RESULT", outcome.as_str());
        if let Outcome::PartiallyRolledBack(failed) = &outcome {
            fields.many("WHARF_FAILED_STEP", failed.iter().map(ToString::to_string));
        }
        fields.push("WHARF_DURATION_USEC", duration_usec(self.started.elapsed()).to_string());
        fields
    }
}

fn duration_usec(d: Duration) -> u64 {
    u64::try_from(d.as_micros()).unwrap_or(u64::MAX)
}

fn step_message(step: &crate::api::PlanStep) -> String {
    let what = [step.image.as_str(), step.machine.as_str()].into_iter().find(|s| !s.is_empty()).unwrap_or_default();
    let units = step.units.join(" ");
    format!("fleet step {} {what}{}{units}", step.action, if units.is_empty() || what.is_empty() { "" } else { " " })
        .trim_end()
        .to_string()
}

fn step_fields(step: &crate::api::PlanStep, fields: &mut Fields) {
    fields.push("WHARF_STEP", step.action.clone());
    fields.many("WHARF_UNIT", step.units.iter().cloned());
    for (name, value) in [
        ("WHARF_IMAGE", &step.image),
        ("WHARF_FROM_IMAGE", &step.from),
        ("WHARF_PROFILE", &step.profile),
        ("WHARF_MACHINE", &step.machine),
    ] {
        if !value.is_empty() {
            fields.push(name, value.clone());
        }
    }
}

/// The sha256 of `bytes`, in lower-case hex.
pub fn sha256_hex(bytes: &[u8]) -> String {
    use sha2::Digest;
    sha2::Sha256::digest(bytes).iter().map(|b| format!("{b:02x}")).collect()
}

/// A random id tying a fleet apply's entries together.
pub fn new_apply_id() -> String {
    use std::io::Read;
    let mut bytes = [0u8; 16];
    match std::fs::File::open("/dev/urandom").and_then(|mut f| f.read_exact(&mut bytes)) {
        Ok(()) => bytes.iter().map(|b| format!("{b:02x}")).collect(),
        // Unique enough within one host's journal.
        Err(_) => {
            format!("{:x}{:x}", std::process::id(), duration_usec(std::time::UNIX_EPOCH.elapsed().unwrap_or_default()))
        }
    }
}

/// The domain of a call, from its interface (for refusals).
pub fn domain_of(interface: Option<&str>) -> Domain {
    match interface {
        Some("org.wharf1.Machine") => Domain::Machine,
        Some("org.wharf1.Fleet") => Domain::Fleet,
        _ => Domain::Portable,
    }
}

/// Refusals per caller uid: 10 at once, then one every 6 s.
static REFUSALS: LazyLock<Mutex<limit::RateLimiter<u32>>> =
    LazyLock::new(|| Mutex::new(limit::RateLimiter::new(10, Duration::from_secs(6))));

/// Logs a refused call at notice, unless this caller was refused too often
/// lately (then it is counted, and the count given in its next entry).
pub fn refused(caller: &Caller, action: &str, domain: Domain, reason: &str) {
    let verdict = match REFUSALS.lock() {
        Ok(mut limiter) => limiter.check(&caller.uid, Instant::now()),
        Err(_) => limit::Verdict::Write { suppressed_before: 0 },
    };
    let limit::Verdict::Write { suppressed_before } = verdict else { return };
    write(&refusal_entry(caller, action, domain, reason, suppressed_before));
}

/// The fields of a refusal (pure, for the tests).
pub fn refusal_entry(caller: &Caller, action: &str, domain: Domain, reason: &str, suppressed: u64) -> Fields {
    let message = format!("refused {action} for uid {}: {reason}", caller.uid);
    let mut fields = head(Kind::Refused, domain, message, 5);
    caller_fields(caller, &mut fields);
    fields.push("WHARF_ACTION", action);
    fields.push("WHARF_REASON", reason);
    fields.push("WHARF_RESULT", "refused");
    if suppressed > 0 {
        fields.push("WHARF_SUPPRESSED", suppressed.to_string());
    }
    fields
}

#[cfg(test)]
mod tests {
    use super::*;

    fn caller() -> Caller {
        Caller {
            uid: 0,
            user: Some("root".into()),
            pid: Some(42),
            cmdline: vec!["sh".into(), "-c".into(), "portable attach a\nMESSAGE_ID=forged".into()],
            pid_check: "pidfd",
            bus_name: ":1.7".into(),
            authorized_by: None,
        }
    }

    #[test]
    fn message_ids_are_distinct_128_bit_hex() {
        let mut seen = std::collections::HashSet::new();
        for kind in Kind::ALL {
            let id = kind.message_id();
            assert_eq!(id.len(), 32);
            assert!(id.bytes().all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase()));
            assert!(seen.insert(id), "{kind:?}");
            assert_eq!(Kind::from_message_id(id), Some(kind));
        }
    }

    #[test]
    fn a_done_attach() {
        let call = Call::new(Kind::Attach, caller()).image(&Pool::portables(), "app").profile("default");
        let outcome = crate::portable::ops::Outcome {
            changes: vec![crate::transaction::Change {
                kind: "write".into(),
                path: "/etc/systemd/system/app.service".into(),
                source: String::new(),
            }],
            units: vec!["app.service".into()],
            restarted: vec![],
            replaced: vec![],
        };
        let fields = call.entry::<_, BusError>(&Ok(outcome));
        assert_eq!(fields.get("MESSAGE_ID"), Some(Kind::Attach.message_id()));
        assert_eq!(fields.get("MESSAGE"), Some("attached app"));
        assert_eq!(fields.get("PRIORITY"), Some("6"));
        assert_eq!(fields.get("WHARF_RESULT"), Some("done"));
        assert_eq!(fields.get("WHARF_CHANGE"), Some("write /etc/systemd/system/app.service"));
        assert_eq!(fields.get("WHARF_PROFILE"), Some("default"));
        assert_eq!(fields.get("WHARF_DOMAIN"), Some("portable"));
        // The command line is one JSON line, whatever it holds.
        let cmdline = fields.get("WHARF_CALLER_CMDLINE").unwrap();
        assert!(!cmdline.contains('\n'));
        let args: Vec<String> = serde_json::from_str(cmdline).unwrap();
        assert_eq!(args, caller().cmdline);
        // Encoded, the entry has exactly its fields: none forged.
        let decoded = native::decode(&native::encode(&fields.0)).unwrap();
        assert_eq!(decoded.len(), fields.0.len());
        assert_eq!(decoded.iter().filter(|(n, _)| n == "MESSAGE_ID").count(), 1);
    }

    #[test]
    fn a_partial_rollback_lists_the_failed_steps() {
        let call = Call::new(Kind::Attach, caller()).image(&Pool::portables(), "app");
        let error = crate::portable::Error::PartiallyRolledBack {
            error: Box::new(crate::portable::Error::NoUnits("app".into())),
            failed_steps: vec![FailedUndo { step: "reloading systemd".into(), reason: "timed out".into() }],
        };
        let fields = call.entry::<crate::portable::ops::Outcome, _>(&Err(error));
        assert_eq!(fields.get("WHARF_RESULT"), Some("partially-rolled-back"));
        assert_eq!(fields.get("WHARF_FAILED_STEP"), Some("reloading systemd (timed out)"));
        assert_eq!(fields.get("PRIORITY"), Some("3"));
        assert!(fields.get("WHARF_ERROR").is_some());
        let rolled = crate::portable::Error::RolledBack(Box::new(crate::portable::Error::NoUnits("app".into())));
        let fields = call.entry::<crate::portable::ops::Outcome, _>(&Err(rolled));
        assert_eq!(fields.get("WHARF_RESULT"), Some("rolled-back"));
        assert!(fields.get("MESSAGE").unwrap().starts_with("attach app failed (rolled-back): "));
    }

    #[test]
    fn a_refusal_is_a_notice_with_the_reason() {
        let nobody = Caller { uid: 65534, user: Some("nobody".into()), ..caller() };
        let fields = refusal_entry(&nobody, "detach", Domain::Portable, "needs root", 3);
        assert_eq!(fields.get("MESSAGE_ID"), Some(Kind::Refused.message_id()));
        assert_eq!(fields.get("PRIORITY"), Some("5"));
        assert_eq!(fields.get("WHARF_CALLER_UID"), Some("65534"));
        assert_eq!(fields.get("WHARF_ACTION"), Some("detach"));
        assert_eq!(fields.get("WHARF_REASON"), Some("needs root"));
        assert_eq!(fields.get("WHARF_SUPPRESSED"), Some("3"));
        assert_eq!(fields.get("WHARF_POLKIT_ACTION"), None);
    }

    #[test]
    fn a_caller_polkit_let_in_is_recorded_with_the_action() {
        let admin = Caller { uid: 1000, authorized_by: Some("org.wharf1.portable.attach"), ..caller() };
        let mut fields = Fields::default();
        caller_fields(&admin, &mut fields);
        assert_eq!(fields.get("WHARF_CALLER_UID"), Some("1000"));
        assert_eq!(fields.get("WHARF_POLKIT_ACTION"), Some("org.wharf1.portable.attach"));
    }

    #[test]
    fn fleet_step_messages() {
        let step = crate::api::PlanStep {
            action: "attach".into(),
            units: vec!["a.service".into()],
            image: "/var/lib/portables/a.raw".into(),
            ..Default::default()
        };
        assert_eq!(step_message(&step), "fleet step attach /var/lib/portables/a.raw a.service");
    }
}
