//! `org.wharf1.Machine`: machine images and containers.

use std::collections::HashSet;
use std::fs::File;
use std::path::PathBuf;
use std::sync::Arc;

use zbus::Connection;
use zbus::message::Header;

use super::auth::require_root;
use super::manager::progress_reporter;
use super::portable::mark_read_only;
use super::{Daemon, failed};
use crate::api::{BusError, ImageEntry};
use crate::compress::Compression;
use crate::image::Pool;
use crate::machine::name::from_image_name;
use crate::machine::store::{Error, Store};

#[derive(Debug)]
pub(crate) struct MachineInterface {
    daemon: Arc<Daemon>,
    store: Store,
}

impl MachineInterface {
    pub(crate) fn new(daemon: Arc<Daemon>) -> Self {
        MachineInterface { daemon, store: Store::machines() }
    }

    /// Refuses to change an image whose machine is running.
    async fn require_stopped(&self, connection: &Connection, machine: &str, what: &str) -> Result<(), BusError> {
        if running_machines(connection).await?.contains(machine) {
            return Err(BusError::Busy(format!("machine '{machine}' is running; stop it before {what}")));
        }
        Ok(())
    }
}

fn file_from(fd: zbus::OwnedFd) -> File {
    File::from(std::os::fd::OwnedFd::from(fd))
}

fn compression(word: &str) -> Result<Compression, BusError> {
    match word {
        "" | "none" => Ok(Compression::None),
        "xz" => Ok(Compression::Xz),
        "gzip" => Ok(Compression::Gzip),
        "zstd" => Ok(Compression::Zstd),
        other => Err(BusError::InvalidArgument(format!("unknown compression '{other}' (none, xz, gzip, zstd)"))),
    }
}

#[zbus::interface(name = "org.wharf1.Machine")]
impl MachineInterface {
    /// Every image in the machine search path; `running` when machined has a
    /// machine of the image's name.
    async fn list_images(&self, #[zbus(connection)] connection: &Connection) -> Result<Vec<ImageEntry>, BusError> {
        let running = running_machines(connection).await?;
        let pool = self.store.pool.clone();
        let entries = self.daemon.blocking(move || pool.list()).await?;
        Ok(entries
            .into_iter()
            .map(|entry| ImageEntry {
                state: if running.contains(from_image_name(entry.name.as_str())) { "running" } else { "stopped" }
                    .to_string(),
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

    /// Copies an image under a new name. Root only.
    async fn clone_image(
        &self,
        name: String,
        new_name: String,
        read_only: bool,
        #[zbus(connection)] connection: &Connection,
        #[zbus(header)] header: Header<'_>,
    ) -> Result<String, BusError> {
        require_root(connection, &header, "cloning an image").await?;
        let mut progress = progress_reporter(connection, &header, &format!("clone {name}"));
        let store = self.store.clone();
        let path = self.daemon.blocking(move || store.clone_image(&name, &new_name, read_only, &mut progress)).await?;
        Ok(path.display().to_string())
    }

    /// Renames an image; refused while its machine runs. Root only.
    async fn rename_image(
        &self,
        name: String,
        new_name: String,
        #[zbus(connection)] connection: &Connection,
        #[zbus(header)] header: Header<'_>,
    ) -> Result<String, BusError> {
        require_root(connection, &header, "renaming an image").await?;
        self.require_stopped(connection, &name, "renaming its image").await?;
        let store = self.store.clone();
        let path = self.daemon.blocking(move || store.rename(&name, &new_name)).await?;
        Ok(path.display().to_string())
    }

    /// Deletes an image; refused while its machine runs or when read-only. Root only.
    async fn remove_image(
        &self,
        name: String,
        #[zbus(connection)] connection: &Connection,
        #[zbus(header)] header: Header<'_>,
    ) -> Result<String, BusError> {
        require_root(connection, &header, "removing an image").await?;
        self.require_stopped(connection, &name, "removing its image").await?;
        let store = self.store.clone();
        let path = self.daemon.blocking(move || store.remove(&name)).await?;
        Ok(path.display().to_string())
    }

    /// Imports a tar archive (plain, xz, gzip or zstd) the caller opened and
    /// passes as `fd`, as the directory image `name`. Root only.
    async fn import_tar(
        &self,
        fd: zbus::OwnedFd,
        name: String,
        #[zbus(connection)] connection: &Connection,
        #[zbus(header)] header: Header<'_>,
    ) -> Result<String, BusError> {
        require_root(connection, &header, "importing an image").await?;
        let mut progress = progress_reporter(connection, &header, &format!("import {name}"));
        let (store, input) = (self.store.clone(), file_from(fd));
        let path = self.daemon.blocking(move || store.import_tar(input, &name, &mut progress)).await?;
        Ok(path.display().to_string())
    }

    /// Imports a raw image (plain, xz, gzip or zstd) passed as `fd`. Root only.
    async fn import_raw(
        &self,
        fd: zbus::OwnedFd,
        name: String,
        #[zbus(connection)] connection: &Connection,
        #[zbus(header)] header: Header<'_>,
    ) -> Result<String, BusError> {
        require_root(connection, &header, "importing an image").await?;
        let mut progress = progress_reporter(connection, &header, &format!("import {name}"));
        let (store, input) = (self.store.clone(), file_from(fd));
        let path = self.daemon.blocking(move || store.import_raw(input, &name, &mut progress)).await?;
        Ok(path.display().to_string())
    }

    /// Imports the directory tree the caller opened and passes as `fd`. Root only.
    async fn import_fs(
        &self,
        fd: zbus::OwnedFd,
        name: String,
        #[zbus(connection)] connection: &Connection,
        #[zbus(header)] header: Header<'_>,
    ) -> Result<String, BusError> {
        require_root(connection, &header, "importing an image").await?;
        let mut progress = progress_reporter(connection, &header, &format!("import {name}"));
        let (store, dir) = (self.store.clone(), file_from(fd));
        let path = self
            .daemon
            .blocking(move || {
                // The tree behind the descriptor, reached through /proc so that
                // the caller's path is not looked up again.
                let source = PathBuf::from(format!("/proc/self/fd/{}/.", std::os::fd::AsRawFd::as_raw_fd(&dir)));
                let imported = store.import_fs(&source, &name, &mut progress);
                drop(dir);
                imported
            })
            .await?;
        Ok(path.display().to_string())
    }

    /// Writes a directory image as a tar archive to the caller's `fd`.
    async fn export_tar(
        &self,
        name: String,
        fd: zbus::OwnedFd,
        compression: String,
        #[zbus(connection)] connection: &Connection,
        #[zbus(header)] header: Header<'_>,
    ) -> Result<(), BusError> {
        require_root(connection, &header, "exporting an image").await?;
        let compression = self::compression(&compression)?;
        let mut progress = progress_reporter(connection, &header, &format!("export {name}"));
        let (store, output) = (self.store.clone(), file_from(fd));
        Ok(self.daemon.blocking(move || store.export_tar(&name, output, compression, &mut progress)).await?)
    }

    /// Writes a raw image to the caller's `fd`.
    async fn export_raw(
        &self,
        name: String,
        fd: zbus::OwnedFd,
        compression: String,
        #[zbus(connection)] connection: &Connection,
        #[zbus(header)] header: Header<'_>,
    ) -> Result<(), BusError> {
        require_root(connection, &header, "exporting an image").await?;
        let compression = self::compression(&compression)?;
        let mut progress = progress_reporter(connection, &header, &format!("export {name}"));
        let (store, output) = (self.store.clone(), file_from(fd));
        Ok(self.daemon.blocking(move || store.export_raw(&name, output, compression, &mut progress)).await?)
    }
}

/// Names of the machines systemd-machined knows, whoever started them.
async fn running_machines(connection: &Connection) -> Result<HashSet<String>, BusError> {
    let machined = zbus_systemd::machine1::ManagerProxy::new(connection).await?;
    let machines = machined.list_machines().await.map_err(|e| failed(format!("cannot list machines: {e}")))?;
    Ok(machines.into_iter().map(|(name, ..)| name).collect())
}

impl From<Error> for BusError {
    fn from(error: Error) -> Self {
        let message = error.to_string();
        match &error {
            Error::Image(image) => super::image_bus_error(image, message),
            Error::Name(_) => BusError::InvalidArgument(message),
            Error::Exists { .. } => BusError::Conflict(message),
            Error::ReadOnly(_) => BusError::Busy(message),
            Error::Invalid { .. } => BusError::BadImage(message),
            Error::Io { .. } => BusError::Failed(message),
        }
    }
}
