//! The terminal side of `machine login` and `machine shell`: raw mode for
//! as long as a session runs, and for login, copying between the terminal
//! and the machine's pty until the session ends or `^]` is pressed three
//! times within a second.

use std::io::{IsTerminal, Read, Write};
use std::os::fd::{AsFd, OwnedFd};
use std::time::{Duration, Instant};

use crate::machine::pty::EscapeCounter;

use nix::poll::{PollFd, PollFlags, PollTimeout, poll};
use rustix::termios::{OptionalActions, Termios, tcgetattr, tcsetattr};

/// Puts the terminal on stdin in raw mode, and back when dropped.
#[derive(Debug)]
pub struct RawMode {
    saved: Option<Termios>,
}

impl RawMode {
    /// Raw mode if stdin is a terminal; otherwise nothing to do.
    pub fn enter() -> RawMode {
        let stdin = std::io::stdin();
        if !stdin.is_terminal() {
            return RawMode { saved: None };
        }
        let Ok(saved) = tcgetattr(&stdin) else { return RawMode { saved: None } };
        let mut raw = saved.clone();
        raw.make_raw();
        let _ = tcsetattr(&stdin, OptionalActions::Now, &raw);
        RawMode { saved: Some(saved) }
    }
}

impl Drop for RawMode {
    fn drop(&mut self) {
        if let Some(saved) = &self.saved {
            let _ = tcsetattr(std::io::stdin(), OptionalActions::Now, saved);
        }
    }
}

/// The terminal's size as ROWSxCOLUMNS, if stdout is one.
pub fn size() -> Option<String> {
    let stdout = std::io::stdout();
    if !stdout.is_terminal() {
        return None;
    }
    rustix::termios::tcgetwinsize(&stdout).ok().map(|w| format!("{}x{}", w.ws_row, w.ws_col))
}

/// Copies between this terminal and `master` until the other side hangs up
/// or `^]` is pressed three times within a second.
pub fn relay(master: OwnedFd) -> std::io::Result<()> {
    let _raw = RawMode::enter();
    let stdin = std::io::stdin();
    let mut stdout = std::io::stdout();
    let mut buffer = [0u8; 8192];
    let mut escape = EscapeCounter::default();
    // The far side opens the terminal a moment after it is handed over (a
    // getty being started): until it has, reading gives EIO, which is not
    // the end of the session.
    let mut opened = false;
    eprint!("Connected. Press ^] three times within 1s to leave.\r\n");
    loop {
        let mut fds = [PollFd::new(master.as_fd(), PollFlags::POLLIN), PollFd::new(stdin.as_fd(), PollFlags::POLLIN)];
        match poll(&mut fds, PollTimeout::NONE) {
            Err(nix::errno::Errno::EINTR) => continue,
            Err(e) => return Err(e.into()),
            Ok(_) => {}
        }
        let from_machine = fds[0].revents().unwrap_or(PollFlags::empty());
        let from_user = fds[1].revents().unwrap_or(PollFlags::empty());
        if from_machine.intersects(PollFlags::POLLIN | PollFlags::POLLHUP | PollFlags::POLLERR) {
            match nix::unistd::read(&master, &mut buffer) {
                // EIO once it was open: the session's last process closed the terminal.
                Ok(0) | Err(nix::errno::Errno::EIO) if opened => break,
                Ok(0) | Err(nix::errno::Errno::EIO) => std::thread::sleep(Duration::from_millis(50)),
                Ok(n) => {
                    opened = true;
                    stdout.write_all(&buffer[..n])?;
                    stdout.flush()?;
                }
                Err(e) => return Err(e.into()),
            }
        }
        if from_user.intersects(PollFlags::POLLIN | PollFlags::POLLHUP) {
            let n = stdin.lock().read(&mut buffer)?;
            if n == 0 || escape.feed(&buffer[..n], Instant::now()) {
                break;
            }
            nix::unistd::write(&master, &buffer[..n])?;
        }
    }
    eprint!("\r\nConnection closed.\r\n");
    Ok(())
}
