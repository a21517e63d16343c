//! The D-Bus contract between `wharfd` and its clients.
//!
//! Everything that crosses the bus is declared here once: the bus name and
//! object path, the records exchanged (each is both a D-Bus struct and, through
//! serde, the `--json` output of the CLI), the operation flags, and the client
//! proxies. `dbus/org.wharf1.xml` documents the same interfaces for people and
//! is checked against the live daemon by the integration tests.

use std::sync::atomic::{AtomicBool, Ordering};

use serde::{Deserialize, Serialize};
use zbus::Type;

/// Well-known name wharfd owns on the system bus.
pub const BUS_NAME: &str = "org.wharf1";
/// The one object wharfd serves; each domain is an interface on it.
pub const OBJECT_PATH: &str = "/org/wharf1";

/// One image in a portable or machine image pool, as `list` shows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Type)]
pub struct ImageEntry {
    /// File or directory name, e.g. `foobar_1.2.raw`.
    pub name: String,
    /// Absolute path on the host.
    pub path: String,
    /// What the image is: see [`crate::image::ImageKind`].
    pub kind: String,
    /// Attachment state (portables) or run state (machines).
    pub state: String,
    pub read_only: bool,
    /// Bytes on disk (0 for directories, which are not summed).
    pub size: u64,
    /// Last modification, microseconds since the epoch.
    pub modified_usec: u64,
}

/// One image in the portable search path (or attached from elsewhere), as
/// `portable list` shows it: an [`ImageEntry`] and who attached it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Type)]
pub struct PortableImageEntry {
    pub name: String,
    pub path: String,
    pub kind: String,
    pub state: String,
    /// `wharf` or `portablectl` (systemd-portabled) when attached, else empty.
    pub attached_by: String,
    pub read_only: bool,
    pub size: u64,
    pub modified_usec: u64,
}

impl PortableImageEntry {
    /// The columns it shares with machine images.
    pub fn entry(&self) -> ImageEntry {
        ImageEntry {
            name: self.name.clone(),
            path: self.path.clone(),
            kind: self.kind.clone(),
            state: self.state.clone(),
            read_only: self.read_only,
            size: self.size,
            modified_usec: self.modified_usec,
        }
    }
}

/// What `inspect` reports about an image.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Type)]
pub struct ImageInfo {
    pub name: String,
    pub path: String,
    pub kind: String,
    /// How the daemon read it: a user-space reader or a mount.
    pub access: String,
    /// os-release fields in file order.
    pub os_release: Vec<(String, String)>,
    /// The prefixes unit files were matched against.
    pub prefixes: Vec<String>,
    pub units: Vec<UnitInfo>,
    pub partitions: Vec<PartitionInfo>,
}

/// A unit file of an image.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Type)]
pub struct UnitInfo {
    pub name: String,
    /// Where it is inside the image.
    pub path: String,
    /// Its text, when asked for (`--cat`); else empty.
    pub contents: String,
}

/// A partition of a GPT disk image.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Type)]
pub struct PartitionInfo {
    /// `root`, `usr`, `root-verity`, `root-verity-sig`, ..., or `other`.
    pub role: String,
    /// Architecture of the partition type; empty when it has none.
    pub architecture: String,
    pub type_uuid: String,
    pub uuid: String,
    pub label: String,
    pub offset: u64,
    pub size: u64,
    /// Whether this is the partition wharf reads the tree from.
    pub used: bool,
}

impl ImageInfo {
    /// The record for an inspection; unit texts only when `cat`.
    pub fn from_inspection(inspection: crate::image::Inspection, cat: bool) -> ImageInfo {
        ImageInfo {
            name: inspection.name,
            path: inspection.path.display().to_string(),
            kind: inspection.kind.to_string(),
            access: inspection.access,
            os_release: inspection.os_release.0,
            prefixes: inspection.prefixes,
            units: inspection
                .units
                .into_iter()
                .map(|unit| UnitInfo {
                    name: unit.name,
                    path: unit.path,
                    contents: if cat { unit.contents } else { String::new() },
                })
                .collect(),
            partitions: inspection
                .partitions
                .into_iter()
                .map(|p| PartitionInfo {
                    role: p.role,
                    architecture: p.architecture.unwrap_or_default(),
                    type_uuid: p.type_uuid,
                    uuid: p.uuid,
                    label: p.label,
                    offset: p.offset,
                    size: p.size,
                    used: p.used,
                })
                .collect(),
        }
    }
}

/// One file change an operation made: (kind, path, source), kind being
/// `mkdir`, `write`, `symlink` or `unlink`, source a symlink's target.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Type)]
pub struct ChangeRecord {
    pub kind: String,
    pub path: String,
    pub source: String,
}

/// What attach, detach and reattach did.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Type)]
pub struct OperationResult {
    pub changes: Vec<ChangeRecord>,
    /// Units attached (attach, reattach) or detached (detach).
    pub units: Vec<String>,
    /// Units started (attach --now), stopped (detach --now), or restarted
    /// (and, with --now, started) by reattach.
    pub restarted: Vec<String>,
    /// The other images reattach replaced (the old versions); empty otherwise.
    pub replaced: Vec<String>,
}

impl From<crate::portable::ops::Outcome> for OperationResult {
    fn from(outcome: crate::portable::ops::Outcome) -> Self {
        OperationResult {
            changes: outcome
                .changes
                .into_iter()
                .map(|c| ChangeRecord { kind: c.kind, path: c.path, source: c.source })
                .collect(),
            units: outcome.units,
            restarted: outcome.restarted,
            replaced: outcome.replaced,
        }
    }
}

/// Flags of the state-changing portable calls, as one `t` on the bus.
pub mod flags {
    /// Attach below /run (gone at reboot) instead of /etc.
    pub const RUNTIME: u64 = 1 << 0;
    /// Overwrite host units that wharf did not write for this image.
    pub const FORCE: u64 = 1 << 1;
    /// Enable the units (attach) or disable them (detach).
    pub const ENABLE: u64 = 1 << 2;
    /// Start the units after attach, or stop them before detach.
    pub const NOW: u64 = 1 << 3;
    /// Do not wait for start/stop jobs to finish.
    pub const NO_BLOCK: u64 = 1 << 4;
    /// Leave systemd's reload to the caller (portablectl's --no-reload).
    pub const NO_RELOAD: u64 = 1 << 5;
    /// Detach: remove the services' state, cache, logs, configuration and
    /// runtime directories too (portablectl's --clean).
    pub const CLEAN: u64 = 1 << 6;
    /// Plan only: check everything a real run checks, report the file
    /// changes and the units it would start, stop or restart, change nothing.
    pub const CHECK: u64 = 1 << 7;
    /// Every flag this version understands; others are refused.
    pub const ALL: u64 = RUNTIME | FORCE | ENABLE | NOW | NO_BLOCK | NO_RELOAD | CLEAN | CHECK;
}

/// Client side of `org.wharf1.Manager`: the daemon itself.
#[zbus::proxy(interface = "org.wharf1.Manager", default_service = "org.wharf1", default_path = "/org/wharf1")]
pub trait Manager {
    /// wharfd's version, so a client can tell it talks to the daemon it was built with.
    #[zbus(property)]
    fn version(&self) -> zbus::Result<String>;
    /// Progress of the caller's long operation: what, bytes done, bytes in all (0: unknown).
    #[zbus(signal)]
    fn progress(&self, what: String, done: u64, total: u64) -> zbus::Result<()>;
    /// Cancels the transfers (imports, exports, pulls) the caller started
    /// and that still run; returns their ids. Their calls then fail with
    /// `Cancelled`, with nothing left behind.
    fn cancel_own_transfers(&self) -> zbus::Result<Vec<u32>>;
}

/// Whether the calls that change state say the caller waits for an
/// interactive authorization (`ALLOW_INTERACTIVE_AUTHORIZATION`): then
/// polkit may have the caller's agent ask for a password. Off until a
/// client turns it on, as `portable` and `machine` do without
/// `--no-ask-password`; one setting for the process, as systemd's tools
/// have it for their bus.
static INTERACTIVE_AUTHORIZATION: AtomicBool = AtomicBool::new(false);

pub fn allow_interactive_authorization(allow: bool) {
    INTERACTIVE_AUTHORIZATION.store(allow, Ordering::Relaxed);
}

/// The flags of a call that changes state.
fn change_flags() -> zbus::proxy::MethodFlags {
    if INTERACTIVE_AUTHORIZATION.load(Ordering::Relaxed) {
        zbus::proxy::MethodFlags::ALLOW_INTERACTIVE_AUTH
    } else {
        zbus::proxy::MethodFlags::empty()
    }
}

async fn change<B, R>(proxy: &zbus::Proxy<'_>, member: &'static str, body: &B) -> zbus::Result<R>
where
    B: serde::Serialize + zbus::DynamicType,
    R: for<'d> zbus::wire::DynamicDeserialize<'d>,
{
    // Without NO_REPLY_EXPECTED the reply is always there.
    proxy
        .call_with_flags(member, change_flags(), body)
        .await?
        .ok_or_else(|| zbus::Error::Failure(format!("{member}: no reply")))
}

/// The methods of a proxy that change state, written here rather than in
/// its `#[zbus::proxy]` trait: the macro fixes a method's flags when it
/// is compiled, and whether a call may ask for a password is the user's
/// choice (`--no-ask-password`), made when it runs.
macro_rules! changes {
    ($proxy:ident {
        $( $(#[$doc:meta])* fn $name:ident($member:literal $(, $arg:ident: $ty:ty)* $(,)?) -> $ret:ty; )*
    }) => {
        impl $proxy<'_> {
            /// The D-Bus names of these methods, for the tests.
            #[cfg(test)]
            const CHANGES: &'static [&'static str] = &[$($member),*];

            $(
                $(#[$doc])*
                #[allow(clippy::too_many_arguments)]
                pub async fn $name(&self $(, $arg: $ty)*) -> zbus::Result<$ret> {
                    change(self.inner(), $member, &($($arg,)*)).await
                }
            )*
        }
    };
}

/// Client side of `org.wharf1.Portable`.
#[zbus::proxy(interface = "org.wharf1.Portable", default_service = "org.wharf1", default_path = "/org/wharf1")]
pub trait Portable {
    /// Every image in the portable search path, with its attachment state
    /// and who attached it, and every image attached from elsewhere.
    fn list_images(&self) -> zbus::Result<Vec<PortableImageEntry>>;
    /// Inspects an image the caller opened and passes as `fd`; `image` is its
    /// path, for messages. Unit texts are included when `cat` is true.
    fn inspect_image(&self, image: &str, fd: zbus::Fd<'_>, prefixes: &[String], cat: bool) -> zbus::Result<ImageInfo>;
    /// The image's path and state (detached, attached, running, ...).
    fn get_image_state(&self, image: &str) -> zbus::Result<(String, String)>;
    /// The image's path and state as attached with exactly these extensions.
    fn get_image_state_with_extensions(&self, image: &str, extensions: &[String]) -> zbus::Result<(String, String)>;
    /// The image's path and state, whether it is attached below /run, and
    /// its attached units: (name, ActiveState, UnitFileState).
    #[allow(clippy::type_complexity)] // the D-Bus signature
    fn get_image_units(
        &self,
        image: &str,
        extensions: &[String],
    ) -> zbus::Result<(String, String, bool, Vec<(String, String, String)>)>;
}

changes! {
    PortableProxy {
        /// Sets the size limit of an image, or with an empty name of the pool
        /// (`u64::MAX`: no limit); btrfs only.
        fn set_image_limit("SetImageLimit", image: &str, limit: u64) -> ();
        /// Marks an image read-only, or writable again.
        fn mark_read_only("MarkReadOnly", image: &str, read_only: bool) -> ();
        /// Downloads an image into the portable pool; returns its path.
        fn pull_image("PullImage", url: &str, name: &str, verify: &str, flags: u64) -> String;
        /// Pulls an image from an OCI registry into the portable pool (a
        /// squashfs with a unit made from its config if it has none); returns its path.
        fn pull_oci_image("PullOciImage", reference: &str, name: &str, flags: u64) -> String;
        /// Attaches an image's units (those matching `prefixes`, or its own).
        fn attach_image(
            "AttachImage",
            image: &str,
            prefixes: &[String],
            profile: &str,
            copy_mode: &str,
            flags: u64,
        ) -> OperationResult;
        /// [`Self::attach_image`] with options: `extensions` (`as`, images
        /// stacked on it, in order) and `image-policy` (`s`, systemd's syntax).
        fn attach_image_with_options(
            "AttachImageWithOptions",
            image: &str,
            prefixes: &[String],
            profile: &str,
            copy_mode: &str,
            flags: u64,
            options: &std::collections::HashMap<&str,
            zbus::Variant<'_>>,
        ) -> OperationResult;
        /// Attaches several images, each with its own prefixes, in one transaction and one reload.
        fn attach_images(
            "AttachImages",
            images: &[String],
            profile: &str,
            copy_mode: &str,
            flags: u64,
        ) -> OperationResult;
        /// Detaches an image.
        fn detach_image("DetachImage", image: &str, prefixes: &[String], flags: u64) -> OperationResult;
        /// Detaches an image attached with exactly these extensions.
        fn detach_image_with_extensions(
            "DetachImageWithExtensions",
            image: &str,
            prefixes: &[String],
            extensions: &[String],
            flags: u64,
        ) -> OperationResult;
        /// Detaches several images in one transaction and one reload.
        fn detach_images("DetachImages", images: &[String], flags: u64) -> OperationResult;
        /// Replaces the attached version of an image by this one.
        fn reattach_image(
            "ReattachImage",
            image: &str,
            prefixes: &[String],
            profile: &str,
            copy_mode: &str,
            flags: u64,
        ) -> OperationResult;
        /// [`Self::reattach_image`] with the options of [`Self::attach_image_with_options`].
        fn reattach_image_with_options(
            "ReattachImageWithOptions",
            image: &str,
            prefixes: &[String],
            profile: &str,
            copy_mode: &str,
            flags: u64,
            options: &std::collections::HashMap<&str,
            zbus::Variant<'_>>,
        ) -> OperationResult;
        /// Deletes an image from the pool; refused while attached or read-only.
        fn remove_image("RemoveImage", image: &str) -> String;
    }
}

/// Errors wharfd returns, as `org.wharf1.Error.*`. The description is always
/// one line that names the object and the reason; clients print it as is.
#[derive(Debug)]
pub enum BusError {
    ZBus(zbus::Error),
    /// The caller may not do this (root, or whom polkit authorizes, may change state).
    AccessDenied(String),
    /// No image by that name or path.
    NoSuchImage(String),
    /// The image exists but cannot be used: unreadable, corrupt, incomplete.
    BadImage(String),
    /// An argument is malformed (profile, prefix, flag, name).
    InvalidArgument(String),
    /// The operation would clobber something wharf does not own.
    Conflict(String),
    /// The object is in use (running unit, attached image).
    Busy(String),
    /// A transfer was cancelled (`CancelTransfer`, `CancelOwnTransfers`, or
    /// its caller left the bus); what it built was removed.
    Cancelled(String),
    /// Anything else, with its reason.
    Failed(String),
}

/// Prefix of the names of wharfd's own errors.
const ERROR_PREFIX: &str = "org.wharf1.Error.";

impl BusError {
    fn message(&self) -> Option<&str> {
        match self {
            BusError::ZBus(_) => None,
            BusError::AccessDenied(m)
            | BusError::NoSuchImage(m)
            | BusError::BadImage(m)
            | BusError::InvalidArgument(m)
            | BusError::Conflict(m)
            | BusError::Busy(m)
            | BusError::Cancelled(m)
            | BusError::Failed(m) => Some(m),
        }
    }
}

// By hand rather than derived: the reply is the one place where every
// message wharfd sends a caller passes, so the text rules
// ([`user_text`]) are applied there once, whatever built the message.
impl zbus::DBusError for BusError {
    fn name(&self) -> zbus::names::ErrorName<'_> {
        zbus::names::ErrorName::from_static_str_unchecked(match self {
            BusError::ZBus(_) => "org.freedesktop.zbus.Error",
            BusError::AccessDenied(_) => "org.wharf1.Error.AccessDenied",
            BusError::NoSuchImage(_) => "org.wharf1.Error.NoSuchImage",
            BusError::BadImage(_) => "org.wharf1.Error.BadImage",
            BusError::InvalidArgument(_) => "org.wharf1.Error.InvalidArgument",
            BusError::Conflict(_) => "org.wharf1.Error.Conflict",
            BusError::Busy(_) => "org.wharf1.Error.Busy",
            BusError::Cancelled(_) => "org.wharf1.Error.Cancelled",
            BusError::Failed(_) => "org.wharf1.Error.Failed",
        })
    }

    fn description(&self) -> Option<&str> {
        match self {
            BusError::ZBus(zbus::Error::MethodError(_, description, _)) => description.as_deref(),
            BusError::ZBus(_) => None,
            other => other.message(),
        }
    }

    fn create_reply(&self, call: &zbus::message::Header<'_>) -> zbus::Result<zbus::message::Message> {
        let text = match self {
            BusError::ZBus(e) => {
                zbus::DBusError::description(self).map(str::to_string).unwrap_or_else(|| e.to_string())
            }
            other => other.message().unwrap_or_default().to_string(),
        };
        zbus::message::Message::error(call, self.name()).build(&(user_text(&text),))
    }
}

impl From<zbus::Error> for BusError {
    fn from(error: zbus::Error) -> Self {
        let (name, description) = match &error {
            zbus::Error::MethodError(name, description, _) => (name.as_str(), description.clone()),
            _ => return BusError::ZBus(error),
        };
        let message = description.unwrap_or_default();
        match name.strip_prefix(ERROR_PREFIX) {
            Some("AccessDenied") => BusError::AccessDenied(message),
            Some("NoSuchImage") => BusError::NoSuchImage(message),
            Some("BadImage") => BusError::BadImage(message),
            Some("InvalidArgument") => BusError::InvalidArgument(message),
            Some("Conflict") => BusError::Conflict(message),
            Some("Busy") => BusError::Busy(message),
            Some("Cancelled") => BusError::Cancelled(message),
            Some("Failed") => BusError::Failed(message),
            _ => BusError::ZBus(error),
        }
    }
}

impl std::error::Error for BusError {}

impl std::fmt::Display for BusError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            BusError::ZBus(e) => write!(f, "{e}"),
            other => f.write_str(other.message().unwrap_or("unknown error")),
        }
    }
}

/// An error message as a person is shown it: one line (blanks folded),
/// without the `(os error N)` Rust adds after the system's own words (the
/// words say it: "No such file or directory"), and with control
/// characters, which a file's bytes may have put in it, escaped (`\x1b`)
/// so that they never reach a terminal as they are.
pub fn user_text(message: &str) -> String {
    let words = without_os_error_numbers(message);
    let folded = words.split_whitespace().collect::<Vec<_>>().join(" ");
    let mut text = String::with_capacity(folded.len());
    for c in folded.chars() {
        if c.is_control() || is_bidi_control(c) {
            let code = u32::from(c);
            if code < 0x80 {
                text.push_str(&format!("\\x{code:02x}"));
            } else {
                text.push_str(&format!("\\u{{{code:x}}}"));
            }
        } else {
            text.push(c);
        }
    }
    text
}

/// Characters that reorder the text around them on a terminal, so that a
/// message could show something other than what it says.
fn is_bidi_control(c: char) -> bool {
    matches!(c, '\u{200e}' | '\u{200f}' | '\u{202a}'..='\u{202e}' | '\u{2066}'..='\u{2069}')
}

/// `message` without each ` (os error N)`, the number std's `io::Error`
/// shows after the system's description.
fn without_os_error_numbers(message: &str) -> String {
    const MARK: &str = "(os error ";
    let mut out = String::with_capacity(message.len());
    let mut rest = message;
    while let Some(at) = rest.find(MARK) {
        let after = &rest[at + MARK.len()..];
        let digits = after.strip_prefix('-').unwrap_or(after);
        let number_len = digits.bytes().take_while(u8::is_ascii_digit).count();
        let sign_len = after.len() - digits.len();
        if number_len > 0 && digits[number_len..].starts_with(')') {
            out.push_str(rest[..at].trim_end_matches(' '));
            rest = &after[sign_len + number_len + 1..];
        } else {
            out.push_str(&rest[..at + MARK.len()]);
            rest = after;
        }
    }
    out.push_str(rest);
    out
}

/// A running machine, as `machine list` and `status` show it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Type)]
pub struct MachineInfo {
    pub name: String,
    /// `container` (or `vm`, for machines others registered).
    pub class: String,
    /// Who runs it: `wharf`, or `systemd-nspawn`, ...
    pub service: String,
    pub unit: String,
    /// PID of its init on the host.
    pub leader: u32,
    pub root_directory: String,
    /// machined's state: opening, running, closing.
    pub state: String,
    /// The unit's status text (whether the init reported ready).
    pub status: String,
    /// Resource limits of its unit, as `Key`/value pairs.
    pub limits: Vec<(String, String)>,
    /// When machined registered it (µs since the epoch; 0 unknown).
    pub since_usec: u64,
    /// The OS inside (`PRETTY_NAME` of its os-release), for `status`.
    pub os: String,
    /// Its IP addresses, for `status`.
    pub addresses: Vec<String>,
    /// The processes of its unit's cgroup, drawn as a tree, for `status`.
    pub cgroup: Vec<String>,
}

/// Flags of `PullImage` (both interfaces).
pub mod pull_flags {
    /// Mark the image read-only once pulled.
    pub const READ_ONLY: u64 = 1 << 0;
    /// Replace an image of that name in the pool's home (not one that is
    /// read-only, in use, or elsewhere in the search path).
    pub const FORCE: u64 = 1 << 1;
    pub const ALL: u64 = READ_ONLY | FORCE;
    /// `PullOciImage` only: speak plain HTTP to the registry (loopback
    /// registries always are).
    pub const INSECURE: u64 = 1 << 2;
    pub const OCI_ALL: u64 = ALL | INSECURE;
}

/// Client side of `org.wharf1.Machine`.
#[zbus::proxy(interface = "org.wharf1.Machine", default_service = "org.wharf1", default_path = "/org/wharf1")]
pub trait Machine {
    /// Every image in the machine search path, running or stopped.
    fn list_images(&self) -> zbus::Result<Vec<ImageEntry>>;
    /// Running machines (all machined knows, whoever started them).
    fn list_machines(&self) -> zbus::Result<Vec<MachineInfo>>;
    /// One running machine, with its limits.
    fn get_machine(&self, name: &str) -> zbus::Result<MachineInfo>;
    /// The imports and exports wharfd runs now.
    fn list_transfers(&self) -> zbus::Result<Vec<TransferEntry>>;
}

changes! {
    MachineProxy {
        /// Marks an image read-only, or writable again.
        fn mark_read_only("MarkReadOnly", image: &str, read_only: bool) -> ();
        /// Copies an image under a new name; returns the new image's path.
        fn clone_image("CloneImage", name: &str, new_name: &str, read_only: bool) -> String;
        /// Renames an image; returns its new path.
        fn rename_image("RenameImage", name: &str, new_name: &str) -> String;
        /// Deletes an image; returns the path it had.
        fn remove_image("RemoveImage", name: &str) -> String;
        /// Imports a tar archive read from `fd`; returns the image's path.
        fn import_tar("ImportTar", fd: zbus::Fd<'_>, name: &str) -> String;
        /// Imports a raw image read from `fd`; returns the image's path.
        fn import_raw("ImportRaw", fd: zbus::Fd<'_>, name: &str) -> String;
        /// Imports a tar archive or a raw image, told apart by content; returns the image's path.
        fn import_image("ImportImage", fd: zbus::Fd<'_>, name: &str) -> String;
        /// Imports the directory tree open as `fd`; returns the image's path.
        fn import_fs("ImportFs", fd: zbus::Fd<'_>, name: &str) -> String;
        /// Downloads an image (`format`: raw or tar) checked as `verify` says
        /// (no, checksum, signature); returns the image's path.
        fn pull_image("PullImage", url: &str, name: &str, format: &str, verify: &str, flags: u64) -> String;
        /// Pulls an image from an OCI registry as a directory image; returns its path.
        fn pull_oci_image("PullOciImage", reference: &str, name: &str, flags: u64) -> String;
        /// Writes a directory image as a tar archive to `fd`.
        fn export_tar("ExportTar", name: &str, fd: zbus::Fd<'_>, compression: &str) -> ();
        /// Writes a raw image to `fd`.
        fn export_raw("ExportRaw", name: &str, fd: zbus::Fd<'_>, compression: &str) -> ();
        /// Boots a machine; returns its unit and whether its init reported ready
        /// within `ready_timeout` seconds. `confinement`: `capability`,
        /// `drop-capability` (CAP_A,CAP_B or all), `no-new-privileges` (yes|no),
        /// `private-users-ownership` (auto|idmap|chown), `bind` (a JSON list of
        /// `ro:SPEC`/`rw:SPEC`, SPEC as `--bind=` takes it).
        fn start_machine(
            "StartMachine",
            name: &str,
            properties: &[String],
            private_users: &str,
            network: &str,
            confinement: &std::collections::HashMap<String, String>,
            ready_timeout: u32,
        ) -> (String, bool);
        /// Sends `signal` to the machine's init (poweroff, reboot, halt) and,
        /// when `wait`, waits until the machine is gone.
        fn signal_machine("SignalMachine", name: &str, signal: i32, wait: bool) -> ();
        /// Stops the machine's unit.
        fn terminate_machine("TerminateMachine", name: &str) -> ();
        /// Sends a signal to the machine's init (`leader`) or all its processes (`all`).
        fn kill_machine("KillMachine", name: &str, whom: &str, signal: i32) -> ();
        /// Changes limits live; with `save`, also in /etc/wharf/machines/NAME.toml.
        fn set_machine_properties("SetMachineProperties", name: &str, properties: &[String], save: bool) -> ();
        /// Starts the machine at boot, or not.
        fn enable_machine("EnableMachine", name: &str, enable: bool) -> ();
        /// Binds the host path `source` (absolute) at `destination` (absolute)
        /// in the running machine, idmapped when it has a user namespace;
        /// `mkdir` creates a missing mount point.
        fn bind_mount_machine(
            "BindMountMachine",
            name: &str,
            source: &str,
            destination: &str,
            read_only: bool,
            mkdir: bool,
        ) -> ();
        /// Copies the host path `source` to `destination` in the machine (both absolute).
        fn copy_to_machine("CopyToMachine", name: &str, source: &str, destination: &str) -> ();
        /// Copies `source` in the machine to the host path `destination` (both absolute).
        fn copy_from_machine("CopyFromMachine", name: &str, source: &str, destination: &str) -> ();
        /// A login prompt on a new terminal of the machine: its master side and path.
        fn open_login("OpenLogin", name: &str) -> (zbus::OwnedFd, String);
        /// Runs a command (empty: the user's shell) inside the machine with the
        /// caller's descriptors and `environment` (VAR=VALUE, taken literally),
        /// and returns its exit status. With `pty`, it gets
        /// a terminal of its own (of `size` ROWSxCOLUMNS) relayed to `stdin`/`stdout`.
        fn shell(
            "Shell",
            name: &str,
            user: &str,
            command: &[String],
            environment: &[String],
            stdin: zbus::Fd<'_>,
            stdout: zbus::Fd<'_>,
            stderr: zbus::Fd<'_>,
            pty: bool,
            size: &str,
        ) -> i32;
        /// Sets the size limit of an image (`name` empty: of the pool, all
        /// images together) to `limit` bytes (`u64::MAX`: none), where the
        /// file system has quota groups (btrfs).
        fn set_image_limit("SetImageLimit", name: &str, limit: u64) -> ();
        /// Removes the hidden images, or with `all` every image, that are not
        /// read-only; refused (nothing removed) while a machine runs off one.
        /// Returns each image removed with the bytes it took (0: unknown).
        fn clean_images("CleanImages", all: bool) -> Vec<(String, u64)>;
        /// Stops a transfer; what it built is removed.
        fn cancel_transfer("CancelTransfer", id: u32) -> ();
    }
}

/// An import or export in flight, as `machine list-transfers` shows it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Type)]
pub struct TransferEntry {
    pub id: u32,
    /// `import-tar`, `import-raw`, `import-fs`, `export-tar`, `export-raw`.
    pub kind: String,
    /// The image.
    pub local: String,
    /// The file it comes from or goes to, as wharfd sees it.
    pub remote: String,
    /// Done so far, from 0 to 1; negative when the size is unknown.
    pub progress: f64,
}

/// One step of a fleet plan, as `org.wharf1.Fleet.Apply` returns it:
/// `action` says what the step does, and the fields that step has are set
/// (the others are empty or false). The steps come in the order they run.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, Type)]
pub struct PlanStep {
    /// `stop`, `disable`, `detach`, `attach`, `reattach`, `refresh`,
    /// `enable`, `restart`, `start`, `import-machine`, `set-limits`,
    /// `enable-machine`, `disable-machine`, `stop-machine`, `start-machine`.
    pub action: String,
    /// The units of stop, disable, enable, restart and start.
    pub units: Vec<String>,
    /// The image of detach, attach, reattach (the new one) and refresh.
    pub image: String,
    /// The image reattach replaces.
    pub from: String,
    /// The profile and runtime flag of attach, reattach and refresh.
    pub profile: String,
    pub runtime: bool,
    /// The machine of the machine steps.
    pub machine: String,
    /// Where import-machine imports from.
    pub source: String,
    /// The limits of set-limits, as `Key=Value`.
    pub limits: Vec<String>,
}

/// Flags of `org.wharf1.Fleet.Apply`.
pub mod fleet_flags {
    /// Plan only; change nothing.
    pub const CHECK: u64 = 1 << 0;
    /// Also detach images attached by hand that the file does not list.
    pub const PRUNE: u64 = 1 << 1;
    pub const ALL: u64 = CHECK | PRUNE;
}

/// Client side of `org.wharf1.Fleet`.
#[zbus::proxy(interface = "org.wharf1.Fleet", default_service = "org.wharf1", default_path = "/org/wharf1")]
pub trait Fleet {}

changes! {
    FleetProxy {
        /// Applies (or with CHECK, plans) a fleet file given as text; `file` is
        /// its absolute path, against which relative image paths are taken.
        /// Returns whether the plan was carried out, and its steps in the order
        /// they run (or would run).
        fn apply("Apply", text: &str, file: &str, flags: u64) -> (bool, Vec<PlanStep>);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_change_asks_polkit_about_its_action_and_the_rest_do_not() {
        // The client's list of changes (those that may ask for a password)
        // is the daemon's list of methods with a polkit action.
        for (interface, changes) in [
            ("org.wharf1.Portable", PortableProxy::CHANGES),
            ("org.wharf1.Machine", MachineProxy::CHANGES),
            ("org.wharf1.Fleet", FleetProxy::CHANGES),
        ] {
            for member in changes {
                assert!(crate::daemon::auth::action_for(interface, member).is_some(), "{interface}.{member}");
            }
            let xml = include_str!("../dbus/org.wharf1.xml");
            let start = xml.find(&format!("<interface name=\"{interface}\"")).unwrap();
            let body = &xml[start..start + xml[start..].find("</interface>").unwrap()];
            for method in body.split("<method name=\"").skip(1).map(|rest| &rest[..rest.find('"').unwrap()]) {
                let asks = crate::daemon::auth::action_for(interface, method).is_some();
                assert_eq!(changes.contains(&method), asks, "{interface}.{method}");
            }
        }
    }

    #[test]
    fn users_see_the_words_without_the_os_error_number() {
        let io = std::io::Error::from_raw_os_error(2);
        let message = format!("cannot open /srv/x.raw: {io}");
        assert!(message.ends_with("(os error 2)"), "{message}");
        assert_eq!(user_text(&message), "cannot open /srv/x.raw: No such file or directory");
        // Wherever it is, and each of them.
        assert_eq!(
            user_text("a: Permission denied (os error 13); b: Is a directory (os error 21)"),
            "a: Permission denied; b: Is a directory"
        );
        // Only the exact form: anything else is someone's text.
        for kept in ["(os error )", "(os error x)", "(os error 2", "(os errors 2)", "(os error -)"] {
            assert_eq!(user_text(kept), kept);
        }
        assert_eq!(user_text("(os error -5)"), "");
    }

    #[test]
    fn user_text_is_one_line_with_control_characters_escaped() {
        assert_eq!(user_text("a\n  b\tc "), "a b c");
        assert_eq!(user_text("name '\x1b[2Jgone\x07' \0\x7f"), "name '\\x1b[2Jgone\\x07' \\x00\\x7f");
        assert_eq!(user_text("C1 \u{9b}31m"), "C1 \\u{9b}31m");
        assert_eq!(user_text("evil\u{202e}txt.exe"), "evil\\u{202e}txt.exe");
        // Bytes of a file that are no UTF-8 arrive as U+FFFD, printable.
        let junk = String::from_utf8_lossy(b"hsqs\xff\xfe\x1b\x00");
        assert_eq!(user_text(&junk), "hsqs\u{fffd}\u{fffd}\\x1b\\x00");
        assert!(user_text("Äpfel: 'Grüße'") == "Äpfel: 'Grüße'");
    }

    #[test]
    fn wharfd_errors_keep_their_kind_and_message_across_the_bus() {
        for (error, name) in [
            (BusError::NoSuchImage("x".into()), "org.wharf1.Error.NoSuchImage"),
            (BusError::Cancelled("x".into()), "org.wharf1.Error.Cancelled"),
            (BusError::Failed("x".into()), "org.wharf1.Error.Failed"),
        ] {
            assert_eq!(zbus::DBusError::name(&error).as_str(), name);
            let wire = zbus::Error::MethodError(
                zbus::names::OwnedErrorName::try_from(name).unwrap(),
                Some("machine image 'x': the transfer was cancelled".into()),
                zbus::message::Message::method_call("/", "M").build(&()).unwrap(),
            );
            let back = BusError::from(wire);
            assert_eq!(zbus::DBusError::name(&back).as_str(), name);
            assert_eq!(back.to_string(), "machine image 'x': the transfer was cancelled");
        }
        let foreign = zbus::Error::MethodError(
            zbus::names::OwnedErrorName::try_from("org.freedesktop.DBus.Error.ServiceUnknown").unwrap(),
            Some("no".into()),
            zbus::message::Message::method_call("/", "M").build(&()).unwrap(),
        );
        assert!(matches!(BusError::from(foreign), BusError::ZBus(_)));
    }

    #[test]
    fn what_wharfd_replies_follows_the_text_rules() {
        let call = zbus::message::Message::method_call("/org/wharf1", "ImportRaw").build(&()).unwrap();
        let io = std::io::Error::from_raw_os_error(2);
        let error = BusError::NoSuchImage(format!("cannot open '/srv/\x1b]0;x': {io}"));
        let reply = zbus::DBusError::create_reply(&error, &call.header()).unwrap();
        assert_eq!(reply.header().error_name().map(|n| n.as_str()), Some("org.wharf1.Error.NoSuchImage"));
        let text: String = reply.body().deserialize().unwrap();
        assert_eq!(text, "cannot open '/srv/\\x1b]0;x': No such file or directory");
    }
}
