//! Pseudo-terminals: the container's console (a pty of the host's devpts,
//! opened by the launcher) and the terminal of `machine shell --pty` (a
//! pty of the container's devpts, opened by `wharfd enter` once it is in
//! the container's mount namespace).

use std::os::fd::OwnedFd;
use std::os::unix::ffi::OsStringExt;
use std::os::unix::fs::OpenOptionsExt;
use std::path::PathBuf;

use rustix::pty::{OpenptFlags, grantpt, openpt, ptsname, unlockpt};

/// A new pty: both ends, and the slave's path.
#[derive(Debug)]
pub struct Pty {
    pub master: OwnedFd,
    pub slave: OwnedFd,
    pub path: PathBuf,
}

/// A pty that could not be opened: the step, and why.
#[derive(Debug, thiserror::Error)]
#[error("{step}: {source}")]
pub struct PtyError {
    pub step: &'static str,
    #[source]
    pub source: std::io::Error,
}

fn step(step: &'static str) -> impl FnOnce(rustix::io::Errno) -> PtyError {
    move |errno| PtyError { step, source: errno.into() }
}

/// Opens a pty of the devpts instance `/dev/ptmx` belongs to. Both ends are
/// close-on-exec, and neither becomes this process's controlling terminal:
/// run as a service, it leads a session of its own, and the terminal must
/// stay free for the session that is to own it. With `nonblocking`, reads
/// of the master do not block.
pub fn open(nonblocking: bool) -> Result<Pty, PtyError> {
    let master =
        openpt(OpenptFlags::RDWR | OpenptFlags::NOCTTY | OpenptFlags::CLOEXEC).map_err(step("opening a pty"))?;
    if nonblocking {
        let flags = rustix::fs::fcntl_getfl(&master).map_err(step("reading the pty's flags"))?;
        rustix::fs::fcntl_setfl(&master, flags | rustix::fs::OFlags::NONBLOCK)
            .map_err(step("making the pty non-blocking"))?;
    }
    grantpt(&master).map_err(step("grantpt"))?;
    unlockpt(&master).map_err(step("unlockpt"))?;
    let name = ptsname(&master, Vec::new()).map_err(step("ptsname"))?;
    let path = PathBuf::from(std::ffi::OsString::from_vec(name.into_bytes()));
    let slave = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .custom_flags(nix::libc::O_NOCTTY)
        .open(&path)
        .map_err(|source| PtyError { step: "opening the pty's terminal", source })?;
    Ok(Pty { master, slave: slave.into(), path })
}

/// Sets the size of the terminal `fd` from ROWSxCOLUMNS; anything else is
/// left as it is.
pub fn set_size(fd: &OwnedFd, size: &str) {
    if let Some((rows, columns)) = size.split_once('x')
        && let (Ok(ws_row), Ok(ws_col)) = (rows.parse(), columns.parse())
    {
        let _ =
            rustix::termios::tcsetwinsize(fd, rustix::termios::Winsize { ws_row, ws_col, ws_xpixel: 0, ws_ypixel: 0 });
    }
}

/// ^] (GS), as in machinectl and nspawn.
pub const ESCAPE: u8 = 0x1d;

/// Counts `^]` presses on a terminal; three within a second mean "leave"
/// (`machine login`, and `machine shell` on a terminal).
#[derive(Debug, Default)]
pub struct EscapeCounter {
    presses: Vec<std::time::Instant>,
}

impl EscapeCounter {
    /// Takes what was typed at `now`; true once the third `^]` within a
    /// second came (any other key in between starts the count again).
    pub fn feed(&mut self, bytes: &[u8], now: std::time::Instant) -> bool {
        for byte in bytes {
            if *byte == ESCAPE {
                self.presses.push(now);
                self.presses.retain(|t| now.duration_since(*t) <= std::time::Duration::from_secs(1));
                if self.presses.len() >= 3 {
                    return true;
                }
            } else {
                self.presses.clear();
            }
        }
        false
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::fd::AsFd;
    use std::time::{Duration, Instant};

    #[test]
    fn three_escapes_within_a_second_leave() {
        let start = Instant::now();
        let mut counter = EscapeCounter::default();
        assert!(!counter.feed(&[ESCAPE, ESCAPE], start));
        assert!(counter.feed(&[ESCAPE], start + Duration::from_millis(500)));

        let mut slow = EscapeCounter::default();
        assert!(!slow.feed(&[ESCAPE], start));
        assert!(!slow.feed(&[ESCAPE], start + Duration::from_millis(800)));
        assert!(!slow.feed(&[ESCAPE], start + Duration::from_millis(1900)));

        let mut typed = EscapeCounter::default();
        assert!(!typed.feed(&[ESCAPE, b'a', ESCAPE, ESCAPE], start));
        assert!(EscapeCounter::default().feed(&[ESCAPE, ESCAPE, ESCAPE], start));
    }

    #[test]
    fn opens_both_ends_and_sizes_the_terminal() {
        let pty = open(true).unwrap();
        assert!(pty.path.starts_with("/dev/pts"), "{}", pty.path.display());
        let flags = rustix::fs::fcntl_getfl(&pty.master).unwrap();
        assert!(flags.contains(rustix::fs::OFlags::NONBLOCK));
        set_size(&pty.slave, "40x120");
        let size = rustix::termios::tcgetwinsize(&pty.slave).unwrap();
        assert_eq!((size.ws_row, size.ws_col), (40, 120));
        set_size(&pty.slave, "big");
        assert_eq!(rustix::termios::tcgetwinsize(&pty.slave).unwrap().ws_row, 40);
        // What is written to the terminal comes out of the master.
        rustix::io::write(&pty.slave, b"hi").unwrap();
        let mut buffer = [0u8; 8];
        let mut fds = [nix::poll::PollFd::new(pty.master.as_fd(), nix::poll::PollFlags::POLLIN)];
        assert_eq!(nix::poll::poll(&mut fds, nix::poll::PollTimeout::from(5000u16)).unwrap(), 1);
        let read = rustix::io::read(&pty.master, &mut buffer).unwrap();
        assert_eq!(&buffer[..read], b"hi");
    }
}
