//! Portable services: an image's units put on the host, sandboxed, so that
//! plain `systemctl start` runs them inside the image.

pub mod attachments;
pub mod dropin;

pub use attachments::{Attachment, Attachments};

use std::fmt;

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
