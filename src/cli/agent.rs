//! A polkit authentication agent on the caller's terminal, as systemctl
//! runs one: when wharfd asks polkit about a caller other than root, and
//! polkit wants a password, `pkttyagent` asks for it here.

use std::io::Read;
use std::os::fd::AsRawFd;
use std::process::{Child, Command, Stdio};

use nix::fcntl::{FcntlArg, FdFlag, OFlag, fcntl};

/// The running agent; it is stopped when this is dropped.
pub(crate) struct Agent(Child);

impl Drop for Agent {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Whether an agent is worth starting: the user lets wharf ask for a
/// password, is not root (root is never asked), and has a terminal to be
/// asked on.
fn wanted(interactive: bool, euid: u32, stdin_is_tty: bool) -> bool {
    interactive && euid != 0 && stdin_is_tty
}

/// Starts `pkttyagent` for this process when [`wanted`], and returns once
/// it is registered with polkit (or gave up). An agent that cannot start
/// (polkit not installed) is no error: wharfd then answers as polkit's
/// defaults say for a caller without an agent.
pub(crate) fn start(interactive: bool) -> Option<Agent> {
    let stdin_is_tty = rustix::termios::isatty(std::io::stdin());
    if !wanted(interactive, nix::unistd::geteuid().as_raw(), stdin_is_tty) {
        return None;
    }
    // pkttyagent closes its end of the pipe once it is registered; only
    // the write end passes to it.
    let (read, write) = nix::unistd::pipe2(OFlag::O_CLOEXEC).ok()?;
    fcntl(&write, FcntlArg::F_SETFD(FdFlag::empty())).ok()?;
    let child = Command::new("pkttyagent")
        .arg("--process")
        .arg(std::process::id().to_string())
        .arg("--notify-fd")
        .arg(write.as_raw_fd().to_string())
        .arg("--fallback")
        .stdout(Stdio::null())
        .spawn();
    drop(write);
    match child {
        Ok(child) => {
            let mut registered = Vec::new();
            let _ = std::fs::File::from(read).read_to_end(&mut registered);
            Some(Agent(child))
        }
        Err(e) => {
            tracing::debug!("no polkit agent: pkttyagent: {e}");
            None
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_agent_only_for_someone_who_may_be_asked_on_a_terminal() {
        assert!(wanted(true, 1000, true));
        assert!(!wanted(false, 1000, true), "--no-ask-password");
        assert!(!wanted(true, 0, true), "root is never asked");
        assert!(!wanted(true, 1000, false), "no terminal to ask on");
    }
}
