//! The command lines of `portable`, `machine` and `wharfd`: argument parsing, calls to
//! wharfd over D-Bus, and output for people (tables) or scripts (`--json`).

pub mod fleet;
pub mod history;
pub mod machine;
pub mod output;
pub mod portable;
pub mod progress;
pub mod properties;
pub mod pull;
pub mod terminal;
pub mod wharfd;

use std::process::ExitCode;

use crate::api::BusError;

/// What a command-line tool can fail with; each prints as one line.
#[derive(Debug, thiserror::Error)]
pub enum CliError {
    #[error("cannot connect to the system bus: {0}")]
    Connect(#[source] zbus::Error),
    /// An error wharfd returned: its description already names the object and the reason.
    #[error("{0}")]
    Daemon(BusError),
    #[error("{0}")]
    Usage(String),
    #[error("{0}")]
    Output(#[source] std::io::Error),
    /// No answer and no sign of life from wharfd within the client's deadline.
    #[error("wharfd did not answer within {0} s; see what it is doing with: journalctl -u wharfd")]
    Timeout(u64),
}

impl From<zbus::Error> for CliError {
    fn from(error: zbus::Error) -> Self {
        CliError::Daemon(BusError::from(error))
    }
}

impl From<BusError> for CliError {
    fn from(error: BusError) -> Self {
        CliError::Daemon(error)
    }
}

/// Exit status for errors; 0 and the per-command codes are the commands' own.
pub const EXIT_FAILURE: u8 = 1;

/// Runs a tool's async body and turns its outcome into an exit status,
/// printing a failure as `tool: message`.
pub fn run_tool<F>(tool: &str, json: bool, body: F) -> ExitCode
where
    F: std::future::Future<Output = Result<ExitCode, CliError>>,
{
    match zbus::block_on(body) {
        Ok(code) => code,
        // A reader that went away (`| head`): quiet, with the status a
        // shell gives a command killed by SIGPIPE, as coreutils end.
        Err(CliError::Output(e)) if e.kind() == std::io::ErrorKind::BrokenPipe => ExitCode::from(EXIT_BROKEN_PIPE),
        Err(error) => {
            let message = one_line(&error.to_string());
            if json {
                let document = serde_json::json!({ "error": { "kind": error.kind(), "message": message } });
                println!("{document}");
            }
            eprintln!("{tool}: {message}");
            ExitCode::from(EXIT_FAILURE)
        }
    }
}

/// 128 + SIGPIPE.
pub const EXIT_BROKEN_PIPE: u8 = 141;

impl CliError {
    /// The kind of error, for `--json`: wharfd's error name without its
    /// prefix (`no-such-image`, `access-denied`, ...), or the client's own.
    pub fn kind(&self) -> &'static str {
        match self {
            CliError::Connect(_) => "connect",
            CliError::Usage(_) => "usage",
            CliError::Output(_) => "output",
            CliError::Timeout(_) => "timeout",
            CliError::Daemon(error) => match error {
                BusError::ZBus(_) => "bus",
                BusError::AccessDenied(_) => "access-denied",
                BusError::NoSuchImage(_) => "no-such-image",
                BusError::BadImage(_) => "bad-image",
                BusError::InvalidArgument(_) => "invalid-argument",
                BusError::Conflict(_) => "conflict",
                BusError::Busy(_) => "busy",
                BusError::Failed(_) => "failed",
            },
        }
    }
}

/// Errors are promised to be one line; a description from elsewhere (a
/// kernel message, a D-Bus peer) is folded to keep that promise.
pub(crate) fn one_line(message: &str) -> String {
    message.split_whitespace().collect::<Vec<_>>().join(" ")
}

pub(crate) async fn system_bus() -> Result<zbus::Connection, CliError> {
    match progress::within(zbus::Connection::system()).await {
        Err(CliError::Daemon(BusError::ZBus(error))) => Err(CliError::Connect(error)),
        other => other,
    }
}

/// The working directory, against which relative image paths are resolved.
pub(crate) fn current_dir() -> Result<std::path::PathBuf, CliError> {
    std::env::current_dir().map_err(|e| CliError::Usage(format!("cannot read the working directory: {e}")))
}

/// Booleans as systemd spells them.
pub(crate) fn parse_bool(word: &str) -> Result<bool, String> {
    match word.to_ascii_lowercase().as_str() {
        "1" | "yes" | "y" | "true" | "t" | "on" => Ok(true),
        "0" | "no" | "n" | "false" | "f" | "off" => Ok(false),
        _ => Err(format!("'{word}' is not a boolean (yes/no, true/false, on/off, 1/0)")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn booleans_parse_like_systemd() {
        for yes in ["1", "yes", "Y", "true", "on"] {
            assert_eq!(parse_bool(yes), Ok(true));
        }
        for no in ["0", "no", "false", "OFF", "n"] {
            assert_eq!(parse_bool(no), Ok(false));
        }
        assert!(parse_bool("maybe").is_err());
    }

    #[test]
    fn errors_are_folded_to_one_line() {
        assert_eq!(one_line("a\n  b\tc "), "a b c");
    }
}
