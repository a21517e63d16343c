//! Who is calling. Only root may change state; anyone may look.

use zbus::Connection;
use zbus::message::Header;

use crate::api::BusError;
use crate::audit::{self, Caller};

/// Refuses the call unless it comes from root, logging the refusal in the
/// audit trail. `what` says what was refused. Returns the caller, read
/// while the call is in flight, for the call's audit entry.
pub(crate) async fn require_root(connection: &Connection, header: &Header<'_>, what: &str) -> Result<Caller, BusError> {
    let caller = Caller::of(connection, header).await?;
    if caller.uid == 0 {
        Ok(caller)
    } else {
        let reason = format!("access denied: {what} needs root (caller is uid {})", caller.uid);
        let interface = header.interface().map(|i| i.as_str());
        audit::refused(&caller, what, audit::domain_of(interface), &reason);
        Err(BusError::AccessDenied(reason))
    }
}
