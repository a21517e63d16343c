//! The container's init reports its state (sd_notify protocol) on a socket
//! the launcher passes in as `NOTIFY_SOCKET=/run/host/notify`; the launcher
//! relays what the unit's manager needs: readiness, stopping, status.

/// What one notification datagram says that the launcher acts on.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Notification {
    pub ready: bool,
    pub stopping: bool,
    pub status: Option<String>,
}

/// Parses a datagram: newline-separated `KEY=VALUE` assignments; unknown
/// keys and malformed lines are ignored, as systemd does.
pub fn parse(datagram: &[u8]) -> Notification {
    let mut notification = Notification::default();
    for line in String::from_utf8_lossy(datagram).lines() {
        match line.split_once('=') {
            Some(("READY", "1")) => notification.ready = true,
            Some(("STOPPING", "1")) => notification.stopping = true,
            Some(("STATUS", status)) => notification.status = Some(status.to_string()),
            _ => {}
        }
    }
    notification
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_what_systemd_sends_at_the_end_of_boot() {
        let n = parse(b"READY=1\nSTATUS=Startup finished in 412ms.");
        assert!(n.ready && !n.stopping);
        assert_eq!(n.status.as_deref(), Some("Startup finished in 412ms."));
    }

    #[test]
    fn ignores_what_it_does_not_know() {
        assert_eq!(parse(b"X_SYSTEMD_UNIT_ACTIVE=basic.target\nREADY=0\ngarbage"), Notification::default());
        assert!(parse(b"STOPPING=1\n").stopping);
    }
}
