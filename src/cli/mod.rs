//! The command lines of `portable`, `machine` and `wharfd`: argument parsing, calls to
//! wharfd over D-Bus, and output for people (tables) or scripts (`--json`).

mod agent;
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
    /// A transfer this client started was stopped by a signal (^C): wharfd
    /// cancelled it and removed what it had built.
    #[error("{verb} of '{name}' cancelled; nothing was left")]
    Interrupted { verb: &'static str, name: String, signal: i32 },
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
            ExitCode::from(error.exit_status())
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
            CliError::Interrupted { .. } => "cancelled",
            CliError::Daemon(error) => match error {
                BusError::ZBus(_) => "bus",
                BusError::AccessDenied(_) => "access-denied",
                BusError::NoSuchImage(_) => "no-such-image",
                BusError::BadImage(_) => "bad-image",
                BusError::InvalidArgument(_) => "invalid-argument",
                BusError::Conflict(_) => "conflict",
                BusError::Busy(_) => "busy",
                BusError::Cancelled(_) => "cancelled",
                BusError::Failed(_) => "failed",
            },
        }
    }

    /// The exit status for this error: 128 + the signal for a transfer a
    /// signal cancelled (130 for ^C), as a shell reports a command the
    /// signal killed; [`EXIT_FAILURE`] otherwise.
    pub fn exit_status(&self) -> u8 {
        match self {
            CliError::Interrupted { signal, .. } => exit_status_for_signal(*signal),
            _ => EXIT_FAILURE,
        }
    }
}

/// 128 + `signal`, as a shell reports a command killed by it.
pub(crate) fn exit_status_for_signal(signal: i32) -> u8 {
    u8::try_from(128 + signal.clamp(1, 127)).unwrap_or(EXIT_FAILURE)
}

/// Errors are promised to be one line of words; a description from
/// elsewhere (a kernel message, a D-Bus peer, an older wharfd, the
/// client's own I/O) gets the same text rules wharfd's replies get: folded,
/// no `(os error N)`, control characters escaped.
pub(crate) fn one_line(message: &str) -> String {
    crate::api::user_text(message)
}

/// What `portable` and `machine` do before their calls to wharfd: unless
/// `--no-ask-password`, the calls that change state let polkit ask for a
/// password, on this terminal through an agent kept while it runs.
#[must_use = "the agent stops when dropped"]
pub(crate) fn authorization(output: &output::OutputArgs) -> Option<impl Drop> {
    let interactive = !output.no_ask_password;
    crate::api::allow_interactive_authorization(interactive);
    agent::start(interactive)
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

/// `set-limit [NAME] BYTES` as portablectl and machinectl take it: the
/// image (none: the pool) and the limit (none: `-`).
pub(crate) fn limit_arguments(args: &[String]) -> Result<(Option<&str>, Option<u64>), CliError> {
    let (name, size) = match args {
        [size] => (None, size),
        [name, size] => (Some(name.as_str()), size),
        _ => return Err(CliError::Usage("set-limit takes [NAME] BYTES".into())),
    };
    let limit = crate::machine::quota::parse_size(size).map_err(|e| CliError::Usage(e.to_string()))?;
    Ok((name, limit))
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

    #[test]
    fn client_errors_say_the_words_and_escape_junk() {
        let missing = std::io::Error::from_raw_os_error(2);
        let error = CliError::Usage(format!("cannot open 'foo\x1b[31m.raw': {missing}"));
        assert_eq!(one_line(&error.to_string()), "cannot open 'foo\\x1b[31m.raw': No such file or directory");
        assert_eq!(error.exit_status(), EXIT_FAILURE);
    }

    #[test]
    fn an_interrupted_transfer_says_what_was_left_and_exits_as_killed() {
        let error = CliError::Interrupted { verb: "import", name: "foo".into(), signal: nix::libc::SIGINT };
        assert_eq!(error.to_string(), "import of 'foo' cancelled; nothing was left");
        assert_eq!((error.kind(), error.exit_status()), ("cancelled", 130));
        let error = CliError::Interrupted { verb: "pull", name: "f28".into(), signal: nix::libc::SIGTERM };
        assert_eq!(error.exit_status(), 143);
        assert_eq!(CliError::Daemon(BusError::Cancelled("x".into())).kind(), "cancelled");
    }
}
