//! `org.wharf1.Machine`: machine images and containers.

use std::collections::HashSet;
use std::sync::Arc;

use zbus::Connection;
use zbus::message::Header;

use super::auth::require_root;
use super::portable::mark_read_only;
use super::{Daemon, failed};
use crate::api::{BusError, ImageEntry};
use crate::image::Pool;

#[derive(Debug)]
pub(crate) struct MachineInterface {
    daemon: Arc<Daemon>,
}

impl MachineInterface {
    pub(crate) fn new(daemon: Arc<Daemon>) -> Self {
        MachineInterface { daemon }
    }
}

#[zbus::interface(name = "org.wharf1.Machine")]
impl MachineInterface {
    /// Every image in the machine search path; `running` when machined has a
    /// machine of the image's name.
    async fn list_images(&self, #[zbus(connection)] connection: &Connection) -> Result<Vec<ImageEntry>, BusError> {
        let running = running_machines(connection).await?;
        let entries = self.daemon.blocking(|| Pool::machines().list()).await.map_err(failed)?;
        Ok(entries
            .into_iter()
            .map(|entry| ImageEntry {
                state: if running.contains(entry.name.stem()) { "running" } else { "stopped" }.to_string(),
                name: entry.name.to_string(),
                path: entry.path.display().to_string(),
                kind: entry.kind.to_string(),
                read_only: entry.read_only,
                size: entry.size,
                modified_usec: entry.modified_usec,
            })
            .collect())
    }

    /// Marks a machine image read-only (or writable again). Root only.
    async fn mark_read_only(
        &self,
        image: String,
        read_only: bool,
        #[zbus(connection)] connection: &Connection,
        #[zbus(header)] header: Header<'_>,
    ) -> Result<(), BusError> {
        require_root(connection, &header, "marking an image read-only").await?;
        self.daemon.blocking(move || mark_read_only(&Pool::machines(), &image, read_only)).await
    }
}

/// Names of the machines systemd-machined knows, whoever started them.
async fn running_machines(connection: &Connection) -> Result<HashSet<String>, BusError> {
    let machined = zbus_systemd::machine1::ManagerProxy::new(connection).await?;
    let machines = machined.list_machines().await.map_err(|e| failed(format!("cannot list machines: {e}")))?;
    Ok(machines.into_iter().map(|(name, ..)| name).collect())
}
