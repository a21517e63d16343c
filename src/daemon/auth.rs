//! Who is calling. Only root may change state; anyone may look.

use zbus::message::Header;
use zbus::{Connection, fdo};

use crate::api::BusError;

/// The Unix user behind the sender of a call, as the bus daemon knows it.
pub(crate) async fn caller_uid(connection: &Connection, header: &Header<'_>) -> Result<u32, BusError> {
    let sender = header.sender().ok_or_else(|| BusError::AccessDenied("call without a sender".into()))?;
    let dbus = fdo::DBusProxy::new(connection).await?;
    let uid = dbus
        .get_connection_unix_user(sender.clone().into())
        .await
        .map_err(|e| BusError::AccessDenied(format!("cannot identify the caller: {e}")))?;
    Ok(uid)
}

/// Refuses the call unless it comes from root. `what` says what was refused.
pub(crate) async fn require_root(connection: &Connection, header: &Header<'_>, what: &str) -> Result<(), BusError> {
    let uid = caller_uid(connection, header).await?;
    if uid == 0 {
        Ok(())
    } else {
        tracing::info!(uid, "refused {what}");
        Err(BusError::AccessDenied(format!("access denied: {what} needs root (caller is uid {uid})")))
    }
}
