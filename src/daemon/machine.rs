//! `org.wharf1.Machine`: machine images and containers.

use std::collections::HashSet;
use std::fs::File;
use std::path::PathBuf;
use std::sync::Arc;

use futures_util::StreamExt;
use zbus::Connection;
use zbus::message::Header;
use zbus_systemd::machine1::ManagerProxy as Machined;

use super::auth::authorize;
use super::manager::{heartbeat, progress_reporter};
use super::portable::mark_read_only;
use super::transfer;
use super::{Daemon, failed};
use crate::api::{BusError, ImageEntry, MachineInfo};
use crate::audit::{Call, Domain, Effects, Kind};
use crate::compress::Compression;
use crate::image::Pool;
use crate::machine::files::{FilesArgs, Operation};
use crate::machine::name::from_image_name;
use crate::machine::ops::{self, Machines, StartRequest};
use crate::machine::property::Property;
use crate::machine::status;
use crate::machine::store::{Error, Progress, Store};
use crate::systemd::Systemd;

#[derive(Debug)]
pub(crate) struct MachineInterface {
    daemon: Arc<Daemon>,
    store: Store,
    machines: Machines,
}

impl MachineInterface {
    pub(crate) fn new(daemon: Arc<Daemon>) -> Self {
        MachineInterface { daemon, store: Store::machines(), machines: Machines::system() }
    }

    /// Runs image store work for a root caller on the blocking pool,
    /// reporting its progress to the caller. `what` names it for a refusal.
    async fn store_work<T, W>(
        &self,
        connection: &Connection,
        header: &Header<'_>,
        what: &str,
        subject: (Kind, &str),
        work: W,
    ) -> Result<T, BusError>
    where
        T: Send + Effects + 'static,
        W: FnOnce(&Store, Progress<'_>) -> Result<T, Error> + Send + 'static,
    {
        self.audited_work(connection, header, what, subject, None, work).await
    }

    /// An import of `fd` as the image `name` by one of the store's
    /// importers, as a transfer of `kind` (`import-tar`, ...).
    async fn import_with(
        &self,
        connection: &Connection,
        header: &Header<'_>,
        fd: zbus::OwnedFd,
        name: String,
        kind: &str,
        import: fn(&Store, std::fs::File, &str, Progress<'_>) -> Result<std::path::PathBuf, Error>,
    ) -> Result<String, BusError> {
        let input = file_from(fd);
        let (local, remote) = (name.clone(), transfer::describe_fd(&input));
        let work = move |store: &Store, progress: Progress<'_>| import(store, input, &name, progress);
        self.transfer_work(connection, header, "importing an image", (Kind::Import, kind), &local, remote, work)
            .await
            .map(|p| p.display().to_string())
    }

    /// [`Self::store_work`] for an import or export (`kind`, e.g.
    /// `import-tar`, from or to `remote`): registered while it runs, so that
    /// `list-transfers` lists it and `cancel-transfer` stops it.
    #[allow(clippy::too_many_arguments)]
    async fn transfer_work<T, W>(
        &self,
        connection: &Connection,
        header: &Header<'_>,
        what: &str,
        (audit_kind, kind): (Kind, &str),
        local: &str,
        remote: String,
        work: W,
    ) -> Result<T, BusError>
    where
        T: Send + Effects + 'static,
        W: FnOnce(&Store, Progress<'_>) -> Result<T, Error> + Send + 'static,
    {
        self.audited_work(connection, header, what, (audit_kind, local), Some((kind, remote)), work).await
    }

    async fn audited_work<T, W>(
        &self,
        connection: &Connection,
        header: &Header<'_>,
        what: &str,
        (kind, name): (Kind, &str),
        transfer: Option<(&str, String)>,
        work: W,
    ) -> Result<T, BusError>
    where
        T: Send + Effects + 'static,
        W: FnOnce(&Store, Progress<'_>) -> Result<T, Error> + Send + 'static,
    {
        let caller = authorize(connection, header, what).await?;
        let audit = Call::new(kind, caller).image(&self.store.pool, name);
        let registration = transfer
            .map(|(kind, remote)| self.daemon.transfers.register(kind, name, &remote, &transfer::caller_of(header)));
        let _heartbeat = heartbeat(connection, header);
        let _watch = match &registration {
            Some(registration) => transfer::cancel_when_caller_leaves(connection, registration).await,
            None => None,
        };
        let reporter = progress_reporter(connection, header, what);
        let (mut progress, store): (Box<dyn FnMut(u64, u64) + Send>, Store) = match &registration {
            Some(registration) => {
                (Box::new(registration.track(reporter)), self.store.clone().with_cancel(registration.cancel_flag()))
            }
            None => (Box::new(reporter), self.store.clone()),
        };
        let result = self.daemon.blocking(move || work(&store, &mut *progress)).await.map_err(BusError::from);
        if let Some(registration) = registration {
            tracing::debug!(id = registration.id(), name, ok = result.is_ok(), "transfer ended");
        }
        audit.finish(&result).await;
        result
    }

    async fn clients<'a>(connection: &'a Connection) -> Result<(Systemd, Machined<'a>), BusError> {
        let systemd = Systemd::new(connection).await.map_err(failed)?;
        let machined = Machined::new(connection).await?;
        Ok((systemd, machined))
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
        "bzip2" => Ok(Compression::Bzip2),
        other => Err(BusError::InvalidArgument(format!("unknown compression '{other}' (none, xz, gzip, zstd, bzip2)"))),
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

    /// Marks a machine image read-only (or writable again). Root, or polkit's `org.wharf1.machine.manage`.
    async fn mark_read_only(
        &self,
        image: String,
        read_only: bool,
        #[zbus(connection)] connection: &Connection,
        #[zbus(header)] header: Header<'_>,
    ) -> Result<(), BusError> {
        let caller = authorize(connection, &header, "marking an image read-only").await?;
        let audit = Call::new(Kind::ReadOnly, caller).domain(Domain::Machine).image(&Pool::machines(), &image);
        let result = self.daemon.blocking(move || mark_read_only(&Pool::machines(), &image, read_only)).await;
        audit.field("WHARF_READ_ONLY", if read_only { "yes" } else { "no" }).finish(&result).await;
        result
    }

    /// Copies an image under a new name. Root, or polkit's `org.wharf1.machine.manage`.
    async fn clone_image(
        &self,
        name: String,
        new_name: String,
        read_only: bool,
        #[zbus(connection)] connection: &Connection,
        #[zbus(header)] header: Header<'_>,
    ) -> Result<String, BusError> {
        let audit = (Kind::Clone, name.clone());
        let work =
            move |store: &Store, progress: Progress<'_>| store.clone_image(&name, &new_name, read_only, progress);
        let cloned = self.store_work(connection, &header, "cloning an image", (audit.0, &audit.1), work).await;
        cloned.map(|p| p.display().to_string())
    }

    /// Renames an image; refused while its machine runs. Root, or polkit's `org.wharf1.machine.manage`.
    async fn rename_image(
        &self,
        name: String,
        new_name: String,
        #[zbus(connection)] connection: &Connection,
        #[zbus(header)] header: Header<'_>,
    ) -> Result<String, BusError> {
        let caller = authorize(connection, &header, "renaming an image").await?;
        let audit = Call::new(Kind::Rename, caller).image(&self.store.pool, &name).field("WHARF_NEW_NAME", &new_name);
        let result = async {
            self.require_stopped(connection, &name, "renaming its image").await?;
            let store = self.store.clone();
            self.daemon.blocking(move || store.rename(&name, &new_name)).await.map_err(BusError::from)
        }
        .await;
        audit.finish(&result).await;
        Ok(result?.display().to_string())
    }

    /// Deletes an image; refused while its machine runs or when read-only. Root, or polkit's `org.wharf1.machine.manage`.
    async fn remove_image(
        &self,
        name: String,
        #[zbus(connection)] connection: &Connection,
        #[zbus(header)] header: Header<'_>,
    ) -> Result<String, BusError> {
        let caller = authorize(connection, &header, "removing an image").await?;
        let audit = Call::new(Kind::ImageRemove, caller).image_now(&self.store.pool, &name).await;
        let result = async {
            self.require_stopped(connection, &name, "removing its image").await?;
            let store = self.store.clone();
            self.daemon.blocking(move || store.remove(&name)).await.map_err(BusError::from)
        }
        .await;
        audit.finish(&result).await;
        Ok(result?.display().to_string())
    }

    /// Imports a tar archive (plain, xz, gzip or zstd) the caller opened and
    /// passes as `fd`, as the directory image `name`. Root, or polkit's `org.wharf1.machine.manage`.
    async fn import_tar(
        &self,
        fd: zbus::OwnedFd,
        name: String,
        #[zbus(connection)] connection: &Connection,
        #[zbus(header)] header: Header<'_>,
    ) -> Result<String, BusError> {
        self.import_with(connection, &header, fd, name, "import-tar", Store::import_tar).await
    }

    /// Imports a raw image (plain, xz, gzip or zstd) passed as `fd`. Root, or polkit's `org.wharf1.machine.manage`.
    async fn import_raw(
        &self,
        fd: zbus::OwnedFd,
        name: String,
        #[zbus(connection)] connection: &Connection,
        #[zbus(header)] header: Header<'_>,
    ) -> Result<String, BusError> {
        self.import_with(connection, &header, fd, name, "import-raw", Store::import_raw).await
    }

    /// Imports a tar archive or a raw image, told apart by content (plain,
    /// xz, gzip or zstd), passed as `fd`. Root, or polkit's `org.wharf1.machine.manage`.
    async fn import_image(
        &self,
        fd: zbus::OwnedFd,
        name: String,
        #[zbus(connection)] connection: &Connection,
        #[zbus(header)] header: Header<'_>,
    ) -> Result<String, BusError> {
        self.import_with(connection, &header, fd, name, "import", Store::import_any).await
    }

    /// Downloads an image from `url` (`format`: `raw` or `tar`), checked as
    /// `verify` says (`no`, `checksum`, `signature`; empty: `signature`),
    /// into the machine pool as `name` (empty: from the URL). Root, or polkit's `org.wharf1.machine.manage`.
    #[allow(clippy::too_many_arguments)] // the D-Bus signature, plus caller context
    async fn pull_image(
        &self,
        url: String,
        name: String,
        format: String,
        verify: String,
        flags: u64,
        #[zbus(connection)] connection: &Connection,
        #[zbus(header)] header: Header<'_>,
    ) -> Result<String, BusError> {
        let (format, kind) = match format.as_str() {
            "raw" => (super::pull::Format::Raw, "pull-raw"),
            "tar" => (super::pull::Format::Tar, "pull-tar"),
            other => return Err(BusError::InvalidArgument(format!("no image format '{other}' (raw or tar)"))),
        };
        let request = super::pull::Request { url, name, format, verify, flags, kind };
        super::pull::pull(&self.daemon, &self.store, connection, &header, request).await
    }

    /// Pulls `reference` (`REGISTRY/REPOSITORY[:TAG][@DIGEST]`) from an OCI
    /// registry into the machine pool as a directory image `name` (empty:
    /// the repository's last component). Root, or polkit's `org.wharf1.machine.manage`.
    async fn pull_oci_image(
        &self,
        reference: String,
        name: String,
        flags: u64,
        #[zbus(connection)] connection: &Connection,
        #[zbus(header)] header: Header<'_>,
    ) -> Result<String, BusError> {
        let request = super::oci::Request { reference, name, flags, portable: false };
        super::oci::pull(&self.daemon, &self.store, connection, &header, request).await
    }

    /// Imports the directory tree the caller opened and passes as `fd`. Root, or polkit's `org.wharf1.machine.manage`.
    async fn import_fs(
        &self,
        fd: zbus::OwnedFd,
        name: String,
        #[zbus(connection)] connection: &Connection,
        #[zbus(header)] header: Header<'_>,
    ) -> Result<String, BusError> {
        let dir = file_from(fd);
        let (local, remote) = (name.clone(), transfer::describe_fd(&dir));
        let work = move |store: &Store, progress: Progress<'_>| {
            // The tree behind the descriptor, reached through /proc so that
            // the caller's path is not looked up again.
            let source = PathBuf::from(format!("/proc/self/fd/{}/.", std::os::fd::AsRawFd::as_raw_fd(&dir)));
            store.import_fs(&source, &name, progress)
        };
        self.transfer_work(connection, &header, "importing an image", (Kind::Import, "import-fs"), &local, remote, work)
            .await
            .map(|p| p.display().to_string())
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
        let (compression, output) = (self::compression(&compression)?, file_from(fd));
        let (local, remote) = (name.clone(), transfer::describe_fd(&output));
        let work = move |store: &Store, progress: Progress<'_>| store.export_tar(&name, output, compression, progress);
        self.transfer_work(
            connection,
            &header,
            "exporting an image",
            (Kind::Export, "export-tar"),
            &local,
            remote,
            work,
        )
        .await
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
        let (compression, output) = (self::compression(&compression)?, file_from(fd));
        let (local, remote) = (name.clone(), transfer::describe_fd(&output));
        let work = move |store: &Store, progress: Progress<'_>| store.export_raw(&name, output, compression, progress);
        self.transfer_work(
            connection,
            &header,
            "exporting an image",
            (Kind::Export, "export-raw"),
            &local,
            remote,
            work,
        )
        .await
    }

    /// Sets the size limit of an image (`name` empty: of the pool) to
    /// `limit` bytes (`u64::MAX`: none), on btrfs. Root, or polkit's `org.wharf1.machine.manage`.
    async fn set_image_limit(
        &self,
        name: String,
        limit: u64,
        #[zbus(connection)] connection: &Connection,
        #[zbus(header)] header: Header<'_>,
    ) -> Result<(), BusError> {
        authorize(connection, &header, "setting a size limit").await?;
        set_store_limit(&self.daemon, self.store.clone(), name, limit).await
    }

    /// Removes the hidden images (or all) that are not read-only; refused
    /// while a machine runs off one of them. Root, or polkit's `org.wharf1.machine.manage`.
    async fn clean_images(
        &self,
        all: bool,
        #[zbus(connection)] connection: &Connection,
        #[zbus(header)] header: Header<'_>,
    ) -> Result<Vec<(String, u64)>, BusError> {
        authorize(connection, &header, "cleaning the machine images").await?;
        let running = running_machines(connection).await?;
        let store = self.store.clone();
        Ok(self.daemon.blocking(move || store.clean(all, &running)).await?)
    }

    /// The imports and exports in flight.
    async fn list_transfers(&self) -> Vec<crate::api::TransferEntry> {
        self.daemon.transfers.list()
    }

    /// Stops a transfer; its call fails and what it built is removed. Root, or polkit's `org.wharf1.machine.manage`.
    async fn cancel_transfer(
        &self,
        id: u32,
        #[zbus(connection)] connection: &Connection,
        #[zbus(header)] header: Header<'_>,
    ) -> Result<(), BusError> {
        authorize(connection, &header, "cancelling a transfer").await?;
        self.daemon.transfers.cancel(id)
    }

    /// Boots a machine with wharf's launcher in a transient unit. Root, or polkit's `org.wharf1.machine.manage`.
    #[allow(clippy::too_many_arguments)] // the D-Bus signature, plus caller context
    async fn start_machine(
        &self,
        name: String,
        properties: Vec<String>,
        private_users: String,
        network: String,
        confinement: std::collections::HashMap<String, String>,
        ready_timeout: u32,
        #[zbus(connection)] connection: &Connection,
        #[zbus(header)] header: Header<'_>,
    ) -> Result<(String, bool), BusError> {
        let audit =
            Call::new(Kind::MachineStart, authorize(connection, &header, "starting a machine").await?).machine(&name);
        let _busy = self.daemon.busy();
        let _heartbeat = heartbeat(connection, &header);
        let properties = parse_properties(&properties)?;
        let (systemd, machined) = Self::clients(connection).await?;
        let mut confinement = confinement;
        let no_new_privileges = match confinement.remove("no-new-privileges") {
            None => None,
            Some(value) => Some(crate::machine::launcher::parse_yes_no(&value).map_err(BusError::InvalidArgument)?),
        };
        let binds = match confinement.remove("bind") {
            None => Vec::new(),
            Some(json) => {
                let values: Vec<String> = serde_json::from_str(&json)
                    .map_err(|e| BusError::InvalidArgument(format!("bind: not a JSON list of strings: {e}")))?;
                values
                    .iter()
                    .map(|v| crate::machine::files::BindSpec::parse_launch(v))
                    .collect::<Result<_, _>>()
                    .map_err(|e| BusError::InvalidArgument(format!("machine '{name}': {e}")))?
            }
        };
        let environment = match confinement.remove("setenv") {
            None => Vec::new(),
            Some(json) => {
                let values: Vec<String> = serde_json::from_str(&json)
                    .map_err(|e| BusError::InvalidArgument(format!("setenv: not a JSON list of strings: {e}")))?;
                values
                    .iter()
                    .map(|v| crate::machine::launcher::parse_assignment(v))
                    .collect::<Result<_, _>>()
                    .map_err(|e| BusError::InvalidArgument(format!("machine '{name}': --setenv: {e}")))?
            }
        };
        let request = StartRequest {
            machine: name,
            properties,
            private_users: Some(private_users).filter(|s| !s.is_empty()),
            private_users_ownership: confinement.remove("private-users-ownership"),
            network: Some(network).filter(|s| !s.is_empty()),
            ports: confinement.remove("port"),
            capability: confinement.remove("capability"),
            drop_capability: confinement.remove("drop-capability"),
            no_new_privileges,
            binds,
            environment,
            // 0: queued, not waited for (machine start --no-block).
            ready_timeout: std::time::Duration::from_secs(u64::from(ready_timeout)),
            image_policy: confinement.remove("image-policy"),
        };
        if let Some(key) = confinement.keys().next() {
            return Err(BusError::InvalidArgument(format!("unknown confinement option '{key}'")));
        }
        let result = self.machines.start(&systemd, &machined, request).await.map_err(BusError::from);
        audit.finish(&result).await;
        let started = result?;
        Ok((started.unit, started.ready))
    }

    /// Signals the machine's init (SIGRTMIN+4 poweroff, SIGINT reboot,
    /// SIGRTMIN+3 halt); with `wait`, until it is gone. Root, or polkit's `org.wharf1.machine.manage`.
    async fn signal_machine(
        &self,
        name: String,
        signal: i32,
        wait: bool,
        #[zbus(connection)] connection: &Connection,
        #[zbus(header)] header: Header<'_>,
    ) -> Result<(), BusError> {
        let audit = Call::new(Kind::MachinePoweroff, authorize(connection, &header, "signalling a machine").await?)
            .machine(&name)
            .field("WHARF_SIGNAL", signal.to_string());
        let _busy = self.daemon.busy();
        let _heartbeat = heartbeat(connection, &header);
        let (systemd, machined) = Self::clients(connection).await?;
        let wait = wait.then_some(STOP_TIMEOUT);
        let result = self.machines.signal_init(&systemd, &machined, &name, signal, wait).await.map_err(BusError::from);
        audit.finish(&result).await;
        result
    }

    /// Stops the machine's unit. Root, or polkit's `org.wharf1.machine.manage`.
    async fn terminate_machine(
        &self,
        name: String,
        #[zbus(connection)] connection: &Connection,
        #[zbus(header)] header: Header<'_>,
    ) -> Result<(), BusError> {
        let audit = Call::new(Kind::MachineTerminate, authorize(connection, &header, "terminating a machine").await?)
            .machine(&name);
        let _busy = self.daemon.busy();
        let _heartbeat = heartbeat(connection, &header);
        let (systemd, machined) = Self::clients(connection).await?;
        let result = self.machines.terminate(&systemd, &machined, &name).await.map_err(BusError::from);
        audit.finish(&result).await;
        result
    }

    /// Sends a signal to the machine's init or all its processes. Root, or polkit's `org.wharf1.machine.manage`.
    async fn kill_machine(
        &self,
        name: String,
        whom: String,
        signal: i32,
        #[zbus(connection)] connection: &Connection,
        #[zbus(header)] header: Header<'_>,
    ) -> Result<(), BusError> {
        let audit = Call::new(Kind::MachineKill, authorize(connection, &header, "signalling a machine").await?)
            .machine(&name)
            .field("WHARF_SIGNAL", signal.to_string())
            .field("WHARF_KILL_WHOM", &whom);
        let (_, machined) = Self::clients(connection).await?;
        let result = self.machines.kill(&machined, &name, &whom, signal).await.map_err(BusError::from);
        audit.finish(&result).await;
        result
    }

    /// Changes limits live (`save`: also for later starts). Root, or polkit's `org.wharf1.machine.manage`.
    async fn set_machine_properties(
        &self,
        name: String,
        properties: Vec<String>,
        save: bool,
        #[zbus(connection)] connection: &Connection,
        #[zbus(header)] header: Header<'_>,
    ) -> Result<(), BusError> {
        let audit = Call::new(Kind::SetProperty, authorize(connection, &header, "changing a machine's limits").await?)
            .machine(&name)
            .field("WHARF_SAVE", if save { "yes" } else { "no" });
        let audit = properties.iter().fold(audit, |a, p| a.field("WHARF_PROPERTY", p));
        let properties = audit.check(parse_properties(&properties))?;
        let (systemd, machined) = Self::clients(connection).await?;
        let result =
            self.machines.set_properties(&systemd, &machined, &name, &properties, save).await.map_err(BusError::from);
        audit.finish(&result).await;
        result
    }

    /// Every machine machined knows.
    async fn list_machines(&self, #[zbus(connection)] connection: &Connection) -> Result<Vec<MachineInfo>, BusError> {
        let (_, machined) = Self::clients(connection).await?;
        let listed = machined.list_machines().await.map_err(|e| failed(format!("cannot list machines: {e}")))?;
        let mut machines = Vec::new();
        for (name, ..) in listed {
            // A machine may go between the list and the look-up.
            if let Ok(info) = machine_info(connection, &machined, &name).await {
                machines.push(info);
            }
        }
        Ok(machines)
    }

    /// One machine, with its unit's limits.
    async fn get_machine(
        &self,
        name: String,
        #[zbus(connection)] connection: &Connection,
    ) -> Result<MachineInfo, BusError> {
        let (systemd, machined) = Self::clients(connection).await?;
        let mut info = machine_info(connection, &machined, &name).await?;
        // Any machine's unit has the limits, whoever started it.
        info.limits = self.machines.limits(&systemd, &machined, &name).await?;
        if info.unit.ends_with(".service") {
            info.status = systemd
                .unit_property(&info.unit, "org.freedesktop.systemd1.Service", "StatusText")
                .await
                .ok()
                .and_then(|v| String::try_from(v).ok())
                .unwrap_or_default();
        }
        // What machinectl status shows besides; each part is left out when
        // it cannot be had (a machine without os-release or addresses).
        if let Ok(os) = machined.get_machine_os_release(name.clone()).await {
            info.os = os.get("PRETTY_NAME").or_else(|| os.get("NAME")).cloned().unwrap_or_default();
        }
        if let Ok(addresses) = machined.get_machine_addresses(name.clone()).await {
            info.addresses =
                addresses.iter().filter_map(|(family, bytes)| status::format_address(*family, bytes)).collect();
        }
        let interface = if info.unit.ends_with(".scope") {
            "org.freedesktop.systemd1.Scope"
        } else {
            "org.freedesktop.systemd1.Service"
        };
        if let Ok(cgroup) = systemd.unit_property(&info.unit, interface, "ControlGroup").await
            && let Ok(cgroup) = String::try_from(cgroup)
            && !cgroup.is_empty()
        {
            info.cgroup = self
                .daemon
                .blocking(move || status::read_tree(&cgroup).map(|tree| status::render(&tree)).unwrap_or_default())
                .await;
        }
        Ok(info)
    }

    /// Starts the machine at boot, or not. Root, or polkit's `org.wharf1.machine.manage`.
    async fn enable_machine(
        &self,
        name: String,
        enable: bool,
        #[zbus(connection)] connection: &Connection,
        #[zbus(header)] header: Header<'_>,
    ) -> Result<(), BusError> {
        authorize(connection, &header, "enabling a machine").await?;
        let (systemd, _) = Self::clients(connection).await?;
        Ok(self.machines.set_enabled(&systemd, &name, enable).await?)
    }

    /// Binds a host path into the running machine. Root, or polkit's `org.wharf1.machine.manage`.
    #[allow(clippy::too_many_arguments)] // the D-Bus signature, plus caller context
    async fn bind_mount_machine(
        &self,
        name: String,
        source: String,
        destination: String,
        read_only: bool,
        mkdir: bool,
        #[zbus(connection)] connection: &Connection,
        #[zbus(header)] header: Header<'_>,
    ) -> Result<(), BusError> {
        authorize(connection, &header, "binding into a machine").await?;
        self.files(connection, &header, &name, Operation::Bind, &source, &destination, read_only, mkdir).await
    }

    /// Copies a host path into the running machine. Root, or polkit's `org.wharf1.machine.manage`.
    async fn copy_to_machine(
        &self,
        name: String,
        source: String,
        destination: String,
        #[zbus(connection)] connection: &Connection,
        #[zbus(header)] header: Header<'_>,
    ) -> Result<(), BusError> {
        authorize(connection, &header, "copying into a machine").await?;
        self.files(connection, &header, &name, Operation::CopyTo, &source, &destination, false, false).await
    }

    /// Copies a path of the running machine to the host. Root, or polkit's `org.wharf1.machine.manage`.
    async fn copy_from_machine(
        &self,
        name: String,
        source: String,
        destination: String,
        #[zbus(connection)] connection: &Connection,
        #[zbus(header)] header: Header<'_>,
    ) -> Result<(), BusError> {
        authorize(connection, &header, "copying from a machine").await?;
        self.files(connection, &header, &name, Operation::CopyFrom, &destination, &source, false, false).await
    }

    /// A login prompt on a new terminal in the machine (through machined,
    /// which asks the container's systemd for a getty). Root, or polkit's `org.wharf1.machine.shell`.
    async fn open_login(
        &self,
        name: String,
        #[zbus(connection)] connection: &Connection,
        #[zbus(header)] header: Header<'_>,
    ) -> Result<(zbus::OwnedFd, String), BusError> {
        authorize(connection, &header, "logging into a machine").await?;
        let (_, machined) = Self::clients(connection).await?;
        machined
            .open_machine_login(name.clone())
            .await
            .map_err(|e| BusError::Failed(format!("machine '{name}': cannot open a login: {}", super::describe(&e))))
    }

    /// Runs a command inside the machine with the caller's descriptors and
    /// environment variables (VAR=VALUE, taken literally), and returns its
    /// exit status. The command's processes count toward the machine's
    /// limits; they are all stopped when the command ends or the caller
    /// leaves the bus. Root, or polkit's `org.wharf1.machine.shell`.
    #[allow(clippy::too_many_arguments)] // the D-Bus signature, plus caller context
    async fn shell(
        &self,
        name: String,
        user: String,
        command: Vec<String>,
        environment: Vec<String>,
        stdin: zbus::OwnedFd,
        stdout: zbus::OwnedFd,
        stderr: zbus::OwnedFd,
        pty: bool,
        size: String,
        #[zbus(connection)] connection: &Connection,
        #[zbus(header)] header: Header<'_>,
    ) -> Result<i32, BusError> {
        authorize(connection, &header, "running a command in a machine").await?;
        for variable in &environment {
            crate::machine::enter::check_variable(variable).map_err(BusError::InvalidArgument)?;
        }
        let _busy = self.daemon.busy();
        // Watched from before the unit exists, so that a caller gone at
        // any moment is seen.
        let caller = header.sender().ok_or_else(|| BusError::AccessDenied("call without a sender".into()))?.to_owned();
        let dbus = zbus::fdo::DBusProxy::new(connection).await?;
        let mut owner_changes = dbus.receive_name_owner_changed_with_args(&[(0, caller.as_str())]).await?;
        let (systemd, machined) = Self::clients(connection).await?;
        let info = machine_info(connection, &machined, &name).await?;
        let unit = shell_unit(&name);
        let cgroup = shell_cgroup(&systemd, &info.unit, &unit).await.map_err(|e| {
            failed(format!("machine '{name}': cannot find its cgroup ({e}): a shell would escape its limits"))
        })?;
        let exe = std::env::current_exe().map_err(failed)?;
        let enter = crate::machine::enter::EnterArgs {
            leader: info.leader,
            user: if user.is_empty() { "root".into() } else { user },
            pty,
            size: Some(size).filter(|size| pty && !size.is_empty()),
            setenv: environment,
            cgroup: Some(cgroup.clone()),
            user_namespace_last: false,
            command,
        };
        let argv = enter.command_line(&exe.to_string_lossy());
        // A unit of its own rather than a child of wharfd: the command must
        // not inherit wharfd's sandbox (its capability bounding set, system
        // call filter, no-new-privileges...), and shows up in systemctl.
        let descriptor = |fd: zbus::OwnedFd| crate::systemd::descriptor(fd).map_err(failed);
        let properties = vec![
            ("Description".into(), crate::systemd::text(&format!("wharf shell in machine {name}"))),
            ("Slice".into(), crate::systemd::text("machine.slice")),
            ("Type".into(), crate::systemd::text("exec")),
            ("CollectMode".into(), crate::systemd::text("inactive-or-failed")),
            // The arguments (the command, VAR=VALUE) reach wharfd enter as
            // they are: no $VAR of them is expanded.
            ("ExecStartEx".into(), crate::systemd::exec_start_literal(&argv)),
            ("StandardInputFileDescriptor".into(), descriptor(stdin)?),
            ("StandardOutputFileDescriptor".into(), descriptor(stdout)?),
            ("StandardErrorFileDescriptor".into(), descriptor(stderr)?),
        ];
        // The machine's device policy holds for its shells too.
        let mut properties = properties;
        properties.extend(ops::device_properties(false));
        if !dbus.name_has_owner(caller.clone().into()).await.unwrap_or(false) {
            return Err(BusError::Failed(format!("machine '{name}': the caller left before its command started")));
        }
        let run = std::pin::pin!(systemd.run_transient(&unit, properties));
        let left = std::pin::pin!(async {
            while let Some(change) = owner_changes.next().await {
                if change.args().is_ok_and(|args| args.new_owner().is_none()) {
                    return;
                }
            }
            // The bus connection itself is gone: so is the caller.
        });
        let ended = match futures_util::future::select(run, left).await {
            futures_util::future::Either::Left((ended, _)) => ended,
            futures_util::future::Either::Right(((), run)) => {
                tracing::info!(machine = name, unit, "the caller of a shell left; stopping it");
                if let Err(e) = systemd.stop(std::slice::from_ref(&unit), false).await {
                    tracing::warn!(unit, "cannot stop the shell of a caller that left: {e}");
                }
                run.await
            }
        };
        // wharfd enter removes the shell's cgroups as it ends; if it was
        // killed before it could, what it left goes now.
        let leader = info.leader;
        self.daemon.blocking(move || remove_shell_cgroups(leader, &cgroup)).await;
        ended.map_err(|e| failed(format!("machine '{name}': cannot run the command: {e}")))
    }
}

/// The cgroup path a shell of a machine gets: below the cgroup of the
/// machine's unit, named after the shell's unit.
async fn shell_cgroup(systemd: &Systemd, machine_unit: &str, shell_unit: &str) -> Result<String, String> {
    let interface = if machine_unit.ends_with(".scope") {
        "org.freedesktop.systemd1.Scope"
    } else {
        "org.freedesktop.systemd1.Service"
    };
    let value = systemd.unit_property(machine_unit, interface, "ControlGroup").await.map_err(|e| e.to_string())?;
    let path = String::try_from(value).map_err(|e| e.to_string())?;
    if path.is_empty() {
        return Err(format!("{machine_unit} has no cgroup"));
    }
    let leaf = shell_unit.strip_suffix(".service").unwrap_or(shell_unit);
    Ok(format!("{}/{leaf}", path.trim_end_matches('/')))
}

/// Kills what is left in a shell's cgroups and removes them (logged, not
/// failed: the command's status is what the caller waits for).
fn remove_shell_cgroups(leader: u32, cgroup: &str) {
    use crate::machine::cgroup;
    let Some((unit, leaf)) = cgroup.rsplit_once('/') else { return };
    let placed = std::fs::read_to_string(format!("/proc/{leader}/cgroup"))
        .map_err(|e| e.to_string())
        .and_then(|text| Ok((cgroup::HostCgroups::detect().map_err(|e| e.to_string())?.layout, text)))
        .and_then(|(layout, text)| cgroup::shell_cgroups(layout, &text, unit, leaf).map_err(|e| e.to_string()));
    match placed {
        // The machine is gone, and its cgroups with it.
        Err(e) => tracing::debug!(cgroup, "shell cgroups not looked at: {e}"),
        Ok(cgroups) => {
            if let Err(e) = cgroup::remove_shell_cgroups(&cgroups, std::time::Duration::from_secs(10)) {
                tracing::warn!(cgroup, "cannot remove what a shell left: {e}");
            }
        }
    }
}

impl MachineInterface {
    /// Runs `wharfd files` for a bind or a copy in a unit of its own (see
    /// `machine::files`), and returns the one line it printed on failure.
    #[allow(clippy::too_many_arguments)]
    async fn files(
        &self,
        connection: &Connection,
        header: &Header<'_>,
        name: &str,
        operation: Operation,
        host: &str,
        inside: &str,
        read_only: bool,
        mkdir: bool,
    ) -> Result<(), BusError> {
        let _busy = self.daemon.busy();
        let _heartbeat = heartbeat(connection, header);
        crate::machine::name::validate(name).map_err(|e| BusError::InvalidArgument(e.to_string()))?;
        let invalid = |what: &str, e: String| BusError::InvalidArgument(format!("machine '{name}': {what} {e}"));
        let host_path = std::path::Path::new(host);
        if !host_path.is_absolute() {
            return Err(invalid("host path", format!("'{host}' is not an absolute path")));
        }
        let inside = crate::machine::files::machine_path(inside).map_err(|e| invalid("path in the machine", e))?;
        let (systemd, machined) = Self::clients(connection).await?;
        let info = machine_info(connection, &machined, name).await?;
        let exe = std::env::current_exe().map_err(failed)?;
        let args = FilesArgs {
            leader: info.leader,
            machine: name.to_string(),
            operation,
            host: host_path.to_path_buf(),
            inside,
            read_only,
            mkdir,
        };
        let argv = args
            .command_line(&exe.to_string_lossy())
            .map_err(|e| invalid("path", format!("{} is not UTF-8", e.0.display())))?;
        // Non-blocking: systemd may hold the write end after the helper exits.
        let (read, write) =
            nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC | nix::fcntl::OFlag::O_NONBLOCK).map_err(failed)?;
        let descriptor = |fd: std::os::fd::OwnedFd| crate::systemd::descriptor(fd.into()).map_err(failed);
        let properties = vec![
            ("Description".into(), crate::systemd::text(&format!("wharf files for machine {name}"))),
            ("Type".into(), crate::systemd::text("exec")),
            ("CollectMode".into(), crate::systemd::text("inactive-or-failed")),
            // A refusal is the helper's status 1 with its line on the pipe,
            // not a failed start job (which it would be, exiting this fast).
            ("SuccessExitStatus".into(), ops::exit_statuses(&[1])),
            ("ExecStart".into(), crate::systemd::exec_start(&argv)),
            ("StandardErrorFileDescriptor".into(), descriptor(write)?),
        ];
        let unit = helper_unit("files", name);
        let status = systemd
            .run_transient(&unit, properties)
            .await
            .map_err(|e| failed(format!("machine '{name}': cannot run the helper: {e}")))?;
        if status == 0 {
            return Ok(());
        }
        // The helper has exited: what it wrote is in the pipe, and small.
        let mut bytes = vec![0u8; 4096];
        let n = nix::unistd::read(&read, &mut bytes).unwrap_or(0);
        let text = String::from_utf8_lossy(&bytes[..n]);
        let line = text.lines().find(|l| !l.trim().is_empty()).unwrap_or("").trim().to_string();
        Err(BusError::Failed(if line.is_empty() {
            format!("machine '{name}': the helper failed with status {status} (see journalctl -u {unit})")
        } else {
            line
        }))
    }
}

/// A fresh unit name for a helper of `machine`.
fn helper_unit(kind: &str, machine: &str) -> String {
    static HELPERS: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let serial = HELPERS.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    format!("wharf-{kind}-{machine}-{}-{serial}.service", std::process::id())
}

/// A fresh unit name for a shell in `machine`: shells of one machine may
/// run side by side.
fn shell_unit(machine: &str) -> String {
    static SHELLS: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let serial = SHELLS.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    format!("wharf-shell-{machine}-{}-{serial}.service", std::process::id())
}

/// How long a poweroff is waited for.
const STOP_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(90);

fn parse_properties(words: &[String]) -> Result<Vec<Property>, BusError> {
    words.iter().map(|w| Property::parse(w).map_err(|e| BusError::InvalidArgument(e.to_string()))).collect()
}

/// What machined says of a machine.
async fn machine_info(connection: &Connection, machined: &Machined<'_>, name: &str) -> Result<MachineInfo, BusError> {
    let path = machined
        .get_machine(name.to_string())
        .await
        .map_err(|_| BusError::NoSuchImage(format!("machine '{name}' is not running")))?;
    let machine = zbus_systemd::machine1::MachineProxy::builder(connection).path(path).build().await?;
    Ok(MachineInfo {
        name: name.to_string(),
        class: machine.class().await.unwrap_or_default(),
        service: machine.service().await.unwrap_or_default(),
        unit: machine.unit().await.unwrap_or_default(),
        leader: machine.leader().await.unwrap_or_default(),
        root_directory: machine.root_directory().await.unwrap_or_default(),
        state: machine.state().await.unwrap_or_default(),
        status: String::new(),
        limits: Vec::new(),
        since_usec: machine.timestamp().await.unwrap_or_default(),
        os: String::new(),
        addresses: Vec::new(),
        cgroup: Vec::new(),
    })
}

impl From<ops::Error> for BusError {
    fn from(error: ops::Error) -> Self {
        let message = error.to_string();
        machine_bus_error(&error, message)
    }
}

/// The D-Bus error for a machine error, carrying `message`.
pub(crate) fn machine_bus_error(error: &ops::Error, message: String) -> BusError {
    {
        use ops::Error as E;
        match error {
            E::Name(_)
            | E::Property(_)
            | E::Invalid { .. }
            | E::Network { .. }
            | E::NoBindSource { .. }
            | E::Bind { .. } => BusError::InvalidArgument(message),
            E::Store(store) => store_bus_error(store, message),
            E::Image(image) => super::image_bus_error(image, message),
            E::Config(_) | E::Nspawn(_) | E::Settings(_) => BusError::InvalidArgument(message),
            E::Running(_) | E::Locked { .. } | E::NotOurs { .. } => BusError::Busy(message),
            E::NetworkSetup { .. } => BusError::Conflict(message),
            E::NotRunning(_) => BusError::NoSuchImage(message),
            E::NoInit { .. }
            | E::CannotBoot { .. }
            | E::NoRootPartition { .. }
            | E::ImagePolicyRefuses { .. }
            | E::ImagePolicyOnDirectory { .. } => BusError::BadImage(message),
            E::ImagePolicy { .. } => BusError::InvalidArgument(message),
            E::Systemd { .. } | E::Machined { .. } | E::StartFailed { .. } | E::StopTimeout(..) | E::Io { .. } => {
                BusError::Failed(message)
            }
        }
    }
}

/// Names of the machines systemd-machined knows, whoever started them.
async fn running_machines(connection: &Connection) -> Result<HashSet<String>, BusError> {
    let machined = Machined::new(connection).await?;
    ops::running_machines(&machined).await.map_err(|e| failed(format!("cannot list machines: {e}")))
}

impl From<Error> for BusError {
    fn from(error: Error) -> Self {
        let message = error.to_string();
        store_bus_error(&error, message)
    }
}

/// The D-Bus error for an image store error, carrying `message`.
fn store_bus_error(error: &Error, message: String) -> BusError {
    match error {
        Error::Image(image) => super::image_bus_error(image, message),
        Error::Name(_) => BusError::InvalidArgument(message),
        Error::Exists { .. } => BusError::Conflict(message),
        Error::ReadOnly(_) | Error::Locked { .. } | Error::Busy(_) => BusError::Busy(message),
        Error::Limit { source: crate::machine::quota::Error::Size(_), .. } => BusError::InvalidArgument(message),
        Error::Cancelled(_) => BusError::Cancelled(message),
        Error::Limit { .. } => BusError::Failed(message),
        Error::Invalid { .. } => BusError::BadImage(message),
        Error::Io { .. } => BusError::Failed(message),
        Error::Pull { source, .. } => match source {
            crate::pull::Error::Argument(_) => BusError::InvalidArgument(message),
            crate::pull::Error::Sums { .. }
            | crate::pull::Error::Signature { .. }
            | crate::pull::Error::Mismatch { .. } => BusError::BadImage(message),
            crate::pull::Error::Fetch { .. } | crate::pull::Error::Setup(_) => BusError::Failed(message),
            crate::pull::Error::Oci { reason, .. } => match &**reason {
                crate::pull::oci::OciError::Reference { .. } => BusError::InvalidArgument(message),
                crate::pull::oci::OciError::Auth(_) => BusError::Failed(message),
                _ => BusError::BadImage(message),
            },
        },
    }
}

/// `SetImageLimit` of the machine and the portable interfaces: the limit of
/// image `name` in `store` (empty: of the store's pool), `u64::MAX` for none.
pub(crate) async fn set_store_limit(
    daemon: &Arc<Daemon>,
    store: crate::machine::store::Store,
    name: String,
    limit: u64,
) -> Result<(), BusError> {
    let limit = (limit != u64::MAX).then_some(limit);
    daemon.blocking(move || store.set_limit(Some(name.as_str()).filter(|n| !n.is_empty()), limit)).await?;
    Ok(())
}
