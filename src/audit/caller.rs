//! Who made a call: the bus's word for the uid and pid, and the command
//! line of that process, read while the call is in flight (the caller
//! waits for the reply, so its pid is still its own).

use std::os::fd::AsRawFd;

use zbus::message::Header;
use zbus::{Connection, fdo};

use crate::api::BusError;

/// At most this many arguments of a command line are kept, each cut to
/// [`MAX_ARG`] bytes: a caller cannot make its entry arbitrarily large.
pub const MAX_ARGS: usize = 64;
pub const MAX_ARG: usize = 1024;

/// The process behind a call.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Caller {
    pub uid: u32,
    /// The uid's name, when it has one.
    pub user: Option<String>,
    pub pid: Option<u32>,
    /// The arguments of the caller's command line (empty when unknown).
    pub cmdline: Vec<String>,
    /// How the pid was tied to the caller: `pidfd` (the bus pinned the
    /// process; it was alive after its command line was read), `bus` (the
    /// bus still had the caller's connection after the read), or `none`.
    pub pid_check: &'static str,
    /// The caller's unique name on the bus (`:1.42`).
    pub bus_name: String,
    /// The polkit action that authorized a caller other than root.
    pub authorized_by: Option<&'static str>,
}

impl Caller {
    /// The caller of the call with this `header`.
    pub async fn of(connection: &Connection, header: &Header<'_>) -> Result<Caller, BusError> {
        let sender = header.sender().ok_or_else(|| BusError::AccessDenied("call without a sender".into()))?;
        let dbus = fdo::DBusProxy::new(connection).await?;
        let credentials = dbus
            .get_connection_credentials(sender.clone().into())
            .await
            .map_err(|e| BusError::AccessDenied(format!("cannot identify the caller: {e}")))?;
        let uid = credentials
            .unix_user_id()
            .ok_or_else(|| BusError::AccessDenied("cannot identify the caller: the bus gave no uid".into()))?;
        let pid = credentials.process_id();
        let (mut cmdline, mut pid_check) = (Vec::new(), "none");
        if let Some(pid) = pid {
            if let Ok(raw) = std::fs::read(format!("/proc/{pid}/cmdline")) {
                cmdline = parse_cmdline(&raw);
            }
            pid_check = match credentials.process_fd() {
                Some(pidfd) if pidfd_pid(pidfd.as_raw_fd()) == Some(pid) => "pidfd",
                Some(_) => "none",
                // No pidfd from this bus: the caller's connection outliving
                // the read says the process is still there (or that it left
                // its connection to a child, which reads as its own).
                None => match dbus.get_connection_unix_process_id(sender.clone().into()).await {
                    Ok(again) if again == pid => "bus",
                    _ => "none",
                },
            };
            if pid_check == "none" {
                cmdline.clear();
            }
        }
        let user = nix::unistd::User::from_uid(nix::unistd::Uid::from_raw(uid)).ok().flatten().map(|u| u.name);
        Ok(Caller { uid, user, pid, cmdline, pid_check, bus_name: sender.to_string(), authorized_by: None })
    }
}

/// The pid a pidfd refers to, from its fdinfo: `None` once the process
/// has been reaped (the kernel then says -1).
fn pidfd_pid(fd: i32) -> Option<u32> {
    let info = std::fs::read_to_string(format!("/proc/self/fdinfo/{fd}")).ok()?;
    info.lines()
        .find_map(|l| l.strip_prefix("Pid:"))
        .and_then(|v| v.trim().parse::<i64>().ok())
        .and_then(|p| u32::try_from(p).ok())
}

/// /proc/PID/cmdline (arguments ended by NUL) as strings, cut to
/// [`MAX_ARGS`] arguments of [`MAX_ARG`] bytes; bytes that are not UTF-8
/// become U+FFFD. Control characters are kept: the entry holds them as
/// JSON escapes (see [`super::Record`]), never as raw bytes.
pub fn parse_cmdline(raw: &[u8]) -> Vec<String> {
    let raw = raw.strip_suffix(b"\0").unwrap_or(raw);
    if raw.is_empty() {
        return Vec::new();
    }
    let mut args: Vec<String> = raw
        .split(|&b| b == 0)
        .take(MAX_ARGS)
        .map(|arg| {
            let cut = &arg[..arg.len().min(MAX_ARG)];
            let mut text = String::from_utf8_lossy(cut).into_owned();
            if arg.len() > MAX_ARG {
                text.push_str("...");
            }
            text
        })
        .collect();
    if raw.split(|&b| b == 0).count() > MAX_ARGS {
        args.push("...".into());
    }
    args
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cmdline_arguments() {
        assert_eq!(parse_cmdline(b"sh\0-c\0portable attach a\0"), ["sh", "-c", "portable attach a"]);
        assert_eq!(parse_cmdline(b""), Vec::<String>::new());
        // A process that rewrote its argv may leave no final NUL.
        assert_eq!(parse_cmdline(b"a\0b"), ["a", "b"]);
        assert_eq!(parse_cmdline(b"a\0\xff\0"), ["a", "\u{fffd}"]);
    }

    #[test]
    fn long_cmdlines_are_cut() {
        let long = vec![b'x'; MAX_ARG * 10];
        let args = parse_cmdline(&long);
        assert_eq!(args.len(), 1);
        assert_eq!(args[0].len(), MAX_ARG + 3);
        let many = "a\0".repeat(MAX_ARGS * 2);
        let args = parse_cmdline(many.as_bytes());
        assert_eq!(args.len(), MAX_ARGS + 1);
        assert_eq!(args.last().unwrap(), "...");
    }
}
