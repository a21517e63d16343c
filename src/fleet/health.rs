//! Health-gated steps: a fleet entry's `health` command, run inside the
//! sandbox of the entry's running service (or inside its machine) until it
//! succeeds or the entry's `health-timeout` passes.
//!
//! Each attempt is a transient unit of its own, `wharf-health-*.service`,
//! whose main process is `wharfd enter`: it joins every namespace of the
//! service's main process (or the machine's init), and so its root (the
//! image's), takes no capability that process lacks, keeps its
//! no_new_privs, and runs the command as UID 0 of that namespace. A
//! service's user namespace is joined last: systemd makes some of its
//! other namespaces first, owned by the host's. The unit
//! has `RuntimeMaxSec=` of what is left of the timeout, so systemd itself
//! kills a command that hangs, with every process it started, and the unit
//! is collected whatever its end: nothing is left behind.

use std::time::{Duration, Instant};

use crate::systemd::Systemd;

/// A fleet entry's health check.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Health {
    /// The command and its arguments, run as they are (no shell); the
    /// program is an absolute path inside the image.
    pub command: Vec<String>,
    /// How long the command has to succeed, counted from the step's end.
    pub timeout: Duration,
}

/// The default `health-timeout`.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(30);
/// The longest `health-timeout` a file may ask for.
pub const MAX_TIMEOUT: Duration = Duration::from_secs(3600);
/// At most this many words, and this long each: a command, not a payload.
pub const MAX_WORDS: usize = 64;
pub const MAX_WORD_LEN: usize = 4096;

/// Pause between failed attempts.
const RETRY: Duration = Duration::from_millis(250);

/// Checks a `health` command as a fleet file gives it: a list of words, or
/// one string split at white space. Returns the reason it is refused.
pub fn parse_command(words: Vec<String>) -> Result<Vec<String>, String> {
    if words.is_empty() || words[0].trim().is_empty() {
        return Err("health is empty".into());
    }
    if words.len() > MAX_WORDS {
        return Err(format!("health has {} words (at most {MAX_WORDS})", words.len()));
    }
    if let Some(word) = words.iter().find(|w| w.len() > MAX_WORD_LEN) {
        return Err(format!("health: a word of {} bytes is too long (at most {MAX_WORD_LEN})", word.len()));
    }
    if words.iter().any(|w| w.contains(['\0', '\n', '\r'])) {
        return Err("health: a word holds a NUL or line break".into());
    }
    if !words[0].starts_with('/') {
        return Err(format!(
            "health: '{}' is not an absolute path (the command runs inside the image, with no shell)",
            words[0]
        ));
    }
    Ok(words)
}

/// Where a health command runs.
#[derive(Debug, Clone, Copy)]
pub enum Target<'a> {
    /// In the sandbox of this running service (its main process's namespaces).
    Service(&'a str),
    /// Inside the machine whose init has this host PID.
    Machine { name: &'a str, leader: u32 },
}

impl Target<'_> {
    fn label(&self) -> String {
        match self {
            Target::Service(unit) => unit.to_string(),
            Target::Machine { name, .. } => format!("machine {name}"),
        }
    }
}

/// Runs the command until it exits 0 or the timeout passes; the error is
/// the reason the last attempt failed.
pub async fn check(systemd: &Systemd, target: Target<'_>, health: &Health) -> Result<(), String> {
    let deadline = Instant::now() + health.timeout;
    let mut last = String::from("it never ran");
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            break;
        }
        match attempt(systemd, target, &health.command, left).await {
            Ok(()) => return Ok(()),
            Err(reason) => last = reason,
        }
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            break;
        }
        if crate::systemd::until(Instant::now() + RETRY.min(left), std::future::pending::<()>()).await.is_err() {
            break;
        }
    }
    Err(format!(
        "{}: its health command did not succeed within {} s ({last})",
        target.label(),
        health.timeout.as_secs_f64()
    ))
}

/// The host PID whose namespaces a check joins.
async fn leader(systemd: &Systemd, target: Target<'_>) -> Result<u32, String> {
    match target {
        Target::Machine { leader, .. } => Ok(leader),
        Target::Service(unit) => {
            let value = systemd
                .unit_property(unit, "org.freedesktop.systemd1.Service", "MainPID")
                .await
                .map_err(|e| e.to_string())?;
            match u32::try_from(value) {
                Ok(pid) if pid > 0 => Ok(pid),
                _ => Err("the service has no main process to run it beside".into()),
            }
        }
    }
}

/// A fresh unit name for one attempt.
fn unit_name(target: Target<'_>) -> String {
    static SERIAL: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let serial = SERIAL.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let what = match target {
        Target::Service(unit) => unit.strip_suffix(".service").unwrap_or(unit).replace(['@', '\\'], "_"),
        Target::Machine { name, .. } => format!("machine-{name}"),
    };
    format!("wharf-health-{what}-{}-{serial}.service", std::process::id())
}

/// One run of the command, bounded by `left`.
async fn attempt(systemd: &Systemd, target: Target<'_>, command: &[String], left: Duration) -> Result<(), String> {
    let leader = leader(systemd, target).await?;
    let enter = crate::machine::enter::EnterArgs {
        leader,
        // By number: an image need not have an /etc/passwd.
        user: "0".into(),
        pty: false,
        size: None,
        setenv: Vec::new(),
        cgroup: None,
        user_namespace_last: matches!(target, Target::Service(_)),
        command: command.to_vec(),
    };
    let argv = enter.command_line(crate::machine::ops::LAUNCHER);
    // Non-blocking: systemd may hold the write end after the command ends.
    let (read, write) = nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC | nix::fcntl::OFlag::O_NONBLOCK)
        .map_err(|e| format!("a pipe: {e}"))?;
    let unit = unit_name(target);
    let mut properties = vec![
        ("Description".into(), crate::systemd::text(&format!("wharf health check of {}", target.label()))),
        ("Type".into(), crate::systemd::text("exec")),
        ("CollectMode".into(), crate::systemd::text("inactive-or-failed")),
        // systemd kills the command, and all it started, when its time is up.
        ("RuntimeMaxUSec".into(), zbus::OwnedVariant::from(left.as_micros().max(1) as u64)),
        // Every status is the command's answer, not a failed start.
        ("SuccessExitStatus".into(), crate::machine::ops::exit_statuses(&(1..=255).collect::<Vec<i32>>())),
        ("ExecStartEx".into(), crate::systemd::exec_start_literal(&argv)),
        ("StandardErrorFileDescriptor".into(), crate::systemd::descriptor(write.into()).map_err(|e| e.to_string())?),
    ];
    properties.extend(crate::machine::ops::device_properties(false));
    let started = Instant::now();
    // Beyond the unit's own limit, a last bound for this wait (systemd
    // that stops answering), after which the unit is stopped.
    let bound = Instant::now() + left + Duration::from_secs(10);
    let status = match crate::systemd::until(bound, systemd.run_transient(&unit, properties)).await {
        Ok(Some(Ok(status))) => status,
        Ok(Some(Err(e))) => return Err(e.to_string()),
        Ok(None) | Err(_) => {
            if let Err(e) = systemd.stop(std::slice::from_ref(&unit), true).await {
                tracing::warn!(unit, "cannot stop a health check that overran: {e}");
            }
            return Err("it did not end".into());
        }
    };
    if status == 0 {
        return Ok(());
    }
    let mut bytes = vec![0u8; 4096];
    let n = nix::unistd::read(&read, &mut bytes).unwrap_or(0);
    let said = said(&bytes[..n]);
    let how = how_it_failed(status, started.elapsed() >= left);
    Err(if said.is_empty() { how } else { format!("{how}: {said}") })
}

/// Why an attempt failed, from its status (128 + N: killed by signal N)
/// and whether its time had run out when it ended. A command that exited
/// by itself gave its answer, however long systemd took to report it (a
/// loaded host can take longer than the whole timeout).
fn how_it_failed(status: i32, time_ran_out: bool) -> String {
    if time_ran_out && status > 128 {
        "it was still running when its time was up".to_string()
    } else {
        format!("status {status}")
    }
}

/// The first line a command wrote on its standard error, as plain
/// printable text of at most 200 characters: it comes from the image.
fn said(bytes: &[u8]) -> String {
    let text = String::from_utf8_lossy(bytes);
    let line = text.lines().find(|l| !l.trim().is_empty()).unwrap_or("");
    line.chars().filter(|c| !c.is_control()).take(200).collect::<String>().trim().to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_command_that_exited_is_its_status_even_if_reported_late() {
        assert_eq!(how_it_failed(1, true), "status 1");
        assert_eq!(how_it_failed(1, false), "status 1");
        assert_eq!(how_it_failed(143, true), "it was still running when its time was up");
        assert_eq!(how_it_failed(137, false), "status 137");
    }

    fn words(list: &[&str]) -> Vec<String> {
        list.iter().map(|w| w.to_string()).collect()
    }

    #[test]
    fn commands_are_checked() {
        assert_eq!(parse_command(words(&["/bin/check", "--quick"])).unwrap(), ["/bin/check", "--quick"]);
        assert_eq!(parse_command(vec![]).unwrap_err(), "health is empty");
        assert_eq!(parse_command(words(&[" "])).unwrap_err(), "health is empty");
        assert!(parse_command(words(&["check"])).unwrap_err().contains("'check' is not an absolute path"));
        assert!(parse_command(words(&["/bin/x", "a\0b"])).unwrap_err().contains("NUL or line break"));
        assert!(parse_command(words(&["/bin/x", "a\nb"])).unwrap_err().contains("NUL or line break"));
        assert!(parse_command(vec!["/bin/x".to_string(); 65]).unwrap_err().contains("65 words"));
        assert!(parse_command(words(&["/bin/x", &"a".repeat(5000)])).unwrap_err().contains("too long"));
    }

    #[test]
    fn what_a_command_said_is_one_printable_line() {
        assert_eq!(said(b"\n  not ready\x1b[31m yet\nmore\n"), "not ready[31m yet");
        assert_eq!(said(&[b'x'; 500]).len(), 200);
        assert_eq!(said(b""), "");
    }

    #[test]
    fn attempts_have_units_of_their_own() {
        let a = unit_name(Target::Service("foobar@x.service"));
        let b = unit_name(Target::Service("foobar@x.service"));
        assert!(a.starts_with("wharf-health-foobar_x-") && a.ends_with(".service"), "{a}");
        assert_ne!(a, b);
        assert!(unit_name(Target::Machine { name: "f28", leader: 1 }).starts_with("wharf-health-machine-f28-"));
    }
}
