//! `org.wharf1.Fleet`: declarative apply of a fleet file.

use std::path::Path;
use std::sync::Arc;

use zbus::Connection;
use zbus::message::Header;

use super::auth::authorize;
use super::manager::{heartbeat, progress_reporter};
use super::{Daemon, failed};
use crate::api::{BusError, PlanStep, fleet_flags};
use crate::audit::{Call, Kind};
use crate::fleet::FleetFile;
use crate::fleet::apply::{self, Error, MachineContext, Options};
use crate::machine::ops::Machines;
use crate::portable::ops::Host;
use crate::systemd::Systemd;

#[derive(Debug)]
pub(crate) struct FleetInterface {
    daemon: Arc<Daemon>,
    host: Host,
    machines: Machines,
}

impl FleetInterface {
    pub(crate) fn new(daemon: Arc<Daemon>) -> Self {
        FleetInterface { daemon, host: Host::system(), machines: Machines::system() }
    }
}

#[zbus::interface(name = "org.wharf1.Fleet")]
impl FleetInterface {
    /// Plans and (unless CHECK) applies a fleet file, all or nothing, with
    /// one systemd reload. Root or polkit's `org.wharf1.fleet.apply`, also for CHECK: the plan reveals the
    /// host's state and reads the images.
    async fn apply(
        &self,
        text: String,
        file: String,
        flags: u64,
        #[zbus(connection)] connection: &Connection,
        #[zbus(header)] header: Header<'_>,
    ) -> Result<(bool, Vec<PlanStep>), BusError> {
        let caller = authorize(connection, &header, "applying a fleet file").await?;
        let audit = Call::new(Kind::FleetApply, caller)
            .field("WHARF_FLEET_FILE", &file)
            .field("WHARF_FLEET_SHA256", crate::audit::sha256_hex(text.as_bytes()))
            .field("WHARF_APPLY_ID", crate::audit::new_apply_id());
        if flags & !fleet_flags::ALL != 0 {
            let unknown = format!("unknown flags {:#x}", flags & !fleet_flags::ALL);
            return audit.check(Err(BusError::InvalidArgument(unknown)));
        }
        let options = Options { check: flags & fleet_flags::CHECK != 0, prune: flags & fleet_flags::PRUNE != 0 };
        let audit = audit.field("WHARF_CHECK", if options.check { "yes" } else { "no" });
        let fleet =
            audit.check(FleetFile::parse(&text, &file).map_err(|e| BusError::InvalidArgument(e.to_string())))?;
        let base = Path::new(&file).parent().unwrap_or(Path::new("/")).to_path_buf();
        let _busy = self.daemon.busy();
        let _heartbeat = heartbeat(connection, &header);
        let _exclusive = self.daemon.change_lock("applying a fleet file").await?;
        let systemd = Systemd::new(connection).await.map_err(failed)?.observed(self.daemon.snapshot.observer());
        let _in_flight = self.daemon.snapshot.begin(&crate::portable::ops::Host::system(), connection, &systemd).await;
        let progress = Box::new(progress_reporter(connection, &header, "decompress"));
        let machined = zbus_systemd::machine1::ManagerProxy::new(connection).await?;
        let machines = MachineContext { machines: &self.machines, machined: &machined, systemd: &systemd };
        let result = apply::apply(&self.host, Some(machines), &systemd, fleet, base, options, progress).await;
        audit.finish_fleet(&result).await;
        let outcome = result?;
        Ok((outcome.applied, outcome.plan.steps.iter().map(PlanStep::from).collect()))
    }
}

impl From<Error> for BusError {
    fn from(error: Error) -> Self {
        let message = error.to_string();
        fleet_bus_error(&error, message)
    }
}

fn fleet_bus_error(error: &Error, message: String) -> BusError {
    match error {
        Error::RolledBack(inner) => fleet_bus_error(inner, message),
        // The host is not as it was: see portable_bus_error.
        Error::PartiallyRolledBack { .. } => BusError::Failed(message),
        Error::Portable(portable) => super::portable::portable_bus_error(portable, message),
        Error::Image(image) => super::image_bus_error(image, message),
        Error::File(_) | Error::Machine(_) => BusError::InvalidArgument(message),
        Error::Machines(machines) => super::machine::machine_bus_error(machines, message),
        Error::MachineNotReady(..) | Error::Unhealthy(_) => BusError::Failed(message),
        Error::WrongVersion { .. } | Error::WrongHash { .. } | Error::HashOfDirectory(_) => BusError::BadImage(message),
        Error::Systemd(_) | Error::Transaction(_) | Error::Io { .. } | Error::NotActive(..) => {
            BusError::Failed(message)
        }
    }
}
