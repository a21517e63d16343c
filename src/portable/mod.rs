//! Portable services: an image's units put on the host, sandboxed, so that
//! plain `systemctl start` runs them inside the image.

pub mod attachments;
pub mod dropin;
pub mod install;
pub mod ops;
pub mod plan;
pub mod portabled;
pub mod profile;
pub mod status;
pub mod view;

pub use attachments::{Attachment, Attachments};

use std::fmt;
use std::path::PathBuf;

use serde::Serialize;

/// Where an image stands on this host, from least to most involved.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum State {
    Detached,
    Attached,
    AttachedRuntime,
    Enabled,
    EnabledRuntime,
    Running,
    RunningRuntime,
}

impl State {
    pub fn as_str(self) -> &'static str {
        match self {
            State::Detached => "detached",
            State::Attached => "attached",
            State::AttachedRuntime => "attached-runtime",
            State::Enabled => "enabled",
            State::EnabledRuntime => "enabled-runtime",
            State::Running => "running",
            State::RunningRuntime => "running-runtime",
        }
    }
}

impl fmt::Display for State {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Why a portable operation was refused or failed. Each names the image or
/// unit and the reason, in one line.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(transparent)]
    Image(#[from] crate::image::Error),
    #[error(transparent)]
    Profile(#[from] profile::Error),
    #[error(transparent)]
    Systemd(#[from] crate::systemd::Error),
    #[error(transparent)]
    Transaction(#[from] crate::transaction::Error),
    #[error(transparent)]
    Install(#[from] install::Error),
    #[error("{}: {source}", path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("'{0}' is not a copy mode (copy, symlink, auto, mixed)")]
    InvalidCopyMode(String),
    #[error("image '{0}': cannot be attached from this path (it must be absolute, without quotes or newlines)")]
    InvalidImagePath(String),
    #[error(
        "image '{image}': extension path '{path}' cannot be written into ExtensionImages= (it must be absolute, without whitespace, ':', '%', quotes or '\\')"
    )]
    InvalidExtensionPath { image: String, path: String },
    #[error("image '{image}': extension '{extension}' is given twice, or is the image itself")]
    DuplicateExtension { image: String, extension: String },
    #[error("extension directory '{0}' needs systemd {min} or later (ExtensionDirectories=); this host runs systemd {1}", min = plan::SYSTEMD_EXTENSION_DIRECTORIES)]
    ExtensionDirectoriesUnsupported(String, u32),
    #[error("image '{image}' is attached with extensions {attached}, not {wanted}")]
    OtherExtensions { image: String, attached: String, wanted: String },
    #[error("image '{0}': no unit files match its prefixes")]
    NoUnits(String),
    #[error("unit '{unit}' is in both '{first}' and '{second}'")]
    DuplicateUnit { unit: String, first: String, second: String },
    #[error("unit '{unit}' exists on the host already ({}); use --force to attach over it", path.display())]
    UnitExists { unit: String, path: PathBuf },
    #[error("unit '{unit}' in {} takes precedence over a runtime attachment", path.display())]
    Shadowed { unit: String, path: PathBuf },
    #[error("unit '{unit}' is already attached from image '{image}'; use reattach to replace it")]
    AttachedFrom { unit: String, image: String },
    #[error(
        "unit '{unit}' is attached by portablectl from image '{image}' ({}); detach it with portablectl first",
        path.display()
    )]
    AttachedByPortabled { unit: String, image: String, path: PathBuf },
    #[error("image '{0}' was attached by portablectl, not by wharf; detach or reattach it with portablectl")]
    PortabledAttachment(String),
    #[error(transparent)]
    ImagePolicy(#[from] crate::image::policy::Error),
    #[error("image '{0}': an image policy applies to file images; a directory image has no partitions")]
    ImagePolicyOnDirectory(String),
    #[error("image '{image}' does not satisfy the image policy '{policy}': {why}")]
    ImagePolicyRefuses { image: String, policy: String, why: String },
    #[error("--image-policy needs systemd 254 or later (RootImagePolicy=); this is systemd {0}")]
    ImagePolicyUnsupported(u32),
    #[error(
        "image policy '{policy}' names file systems, which systemd reads only from 258 on; this is systemd {version}, which would ignore the policy"
    )]
    ImagePolicyFileSystems { policy: String, version: u32 },
    #[error("unit '{unit}' of image '{image}' is already attached {how}")]
    AttachedOtherwise { unit: String, image: String, how: &'static str },
    #[error("image '{0}' is not attached")]
    NotAttached(String),
    #[error(
        "image '{image}': no attached unit matches the prefixes {prefixes} (to detach several images, use --batch)"
    )]
    NoUnitsMatch { image: String, prefixes: String },
    #[error(
        "image '{image}' is attached already, otherwise ({} would change); use reattach to change a running attachment",
        differs.display()
    )]
    AlreadyAttached { image: String, differs: PathBuf },
    #[error("--no-reload cannot be combined with --now: systemd starts only units it has loaded")]
    NoReloadWithNow,
    #[error("image '{0}' is attached; detach it first")]
    Attached(String),
    #[error("image '{extension}' is attached as an extension of image '{image}'; detach that first")]
    AttachedAsExtension { extension: String, image: String },
    #[error("unit '{unit}' of image '{image}' is {state}; stop it first or use --now")]
    Running { unit: String, image: String, state: String },
    #[error(
        "not cleaning '{unit}' of image '{image}': its {setting}={directory} is not the image's (it must be named after the image or the unit)"
    )]
    ForeignDirectory { unit: String, image: String, setting: &'static str, directory: String },
    #[error("image '{0}' is read-only")]
    ReadOnly(String),
    #[error(
        "unit '{unit}' of image '{image}' runs '{line}' on the host, outside the image; only the trusted profile attaches such units"
    )]
    HostExec { unit: String, image: String, line: String },
    /// Failed, and every undo step worked.
    #[error("{0}; the host was left as it was")]
    RolledBack(Box<Error>),
    /// Failed, and some undo steps failed too: the host is not as it was.
    #[error(
        "{error}; the host was put back only in part, these undo steps failed: {}",
        crate::transaction::describe_failed(failed_steps)
    )]
    PartiallyRolledBack { error: Box<Error>, failed_steps: Vec<crate::transaction::FailedUndo> },
}

impl Error {
    /// The error of an operation that failed with `error` and was undone by
    /// `undo`: rolled back only if every undo step worked.
    pub fn rolled_back(error: Error, undo: crate::transaction::Undo) -> Error {
        let failed_steps = undo.finish();
        if failed_steps.is_empty() {
            Error::RolledBack(Box::new(error))
        } else {
            Error::PartiallyRolledBack { error: Box::new(error), failed_steps }
        }
    }
}
