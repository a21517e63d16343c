//! The transfers wharfd runs (imports, exports, pulls), as `machine
//! list-transfers` lists them and `cancel-transfer` stops them. A transfer
//! is registered for as long as its call runs, with the unique bus name of
//! its caller: an interrupted client cancels its own (`CancelOwnTransfers`),
//! and one that leaves the bus takes its transfers with it.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use crate::api::{BusError, TransferEntry};

#[derive(Debug)]
struct Transfer {
    kind: String,
    local: String,
    remote: String,
    /// The unique bus name of the caller; empty when it had none.
    caller: String,
    done: AtomicU64,
    total: AtomicU64,
    cancel: Arc<AtomicBool>,
}

/// The registry, shared by every interface of the daemon.
#[derive(Debug, Default)]
pub(crate) struct Transfers {
    next: AtomicU32,
    running: Arc<Mutex<BTreeMap<u32, Arc<Transfer>>>>,
}

/// A registered transfer; dropping it (its call returned) unregisters it.
#[derive(Debug)]
pub(crate) struct Registration {
    id: u32,
    transfer: Arc<Transfer>,
    running: Arc<Mutex<BTreeMap<u32, Arc<Transfer>>>>,
}

impl Transfers {
    /// Registers a transfer of `kind` between `local` (the image) and
    /// `remote` (a file or URL), for `caller` (a unique bus name).
    pub(crate) fn register(&self, kind: &str, local: &str, remote: &str, caller: &str) -> Registration {
        // Ids start at 1 and are not reused while wharfd runs.
        let id = self.next.fetch_add(1, Ordering::SeqCst).wrapping_add(1);
        let transfer = Arc::new(Transfer {
            kind: kind.to_string(),
            local: local.to_string(),
            remote: remote.to_string(),
            caller: caller.to_string(),
            done: AtomicU64::new(0),
            total: AtomicU64::new(0),
            cancel: Arc::new(AtomicBool::new(false)),
        });
        self.lock().insert(id, transfer.clone());
        tracing::debug!(id, kind, local, remote, caller, "transfer registered");
        Registration { id, transfer, running: self.running.clone() }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, BTreeMap<u32, Arc<Transfer>>> {
        self.running.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// The transfers in flight, by id.
    pub(crate) fn list(&self) -> Vec<TransferEntry> {
        self.lock()
            .iter()
            .map(|(id, t)| {
                let (done, total) = (t.done.load(Ordering::Relaxed), t.total.load(Ordering::Relaxed));
                TransferEntry {
                    id: *id,
                    kind: t.kind.clone(),
                    local: t.local.clone(),
                    remote: t.remote.clone(),
                    progress: if total > 0 { (done.min(total) as f64) / (total as f64) } else { -1.0 },
                }
            })
            .collect()
    }

    /// Asks a transfer to stop; its call then fails and removes what it built.
    pub(crate) fn cancel(&self, id: u32) -> Result<(), BusError> {
        let transfers = self.lock();
        let transfer = transfers.get(&id).ok_or_else(|| BusError::NoSuchImage(format!("no transfer with id {id}")))?;
        transfer.cancel.store(true, Ordering::SeqCst);
        tracing::info!(id, kind = transfer.kind, local = transfer.local, "transfer cancelled");
        Ok(())
    }

    /// Asks every transfer `caller` started to stop; returns their ids
    /// (none for a caller with no unique name, or with no transfer).
    pub(crate) fn cancel_started_by(&self, caller: &str) -> Vec<u32> {
        if caller.is_empty() {
            return Vec::new();
        }
        let transfers = self.lock();
        let mine: Vec<u32> = transfers.iter().filter(|(_, t)| t.caller == caller).map(|(id, _)| *id).collect();
        for id in &mine {
            let transfer = &transfers[id];
            transfer.cancel.store(true, Ordering::SeqCst);
            tracing::info!(
                id,
                kind = transfer.kind,
                local = transfer.local,
                caller,
                "transfer cancelled by its caller"
            );
        }
        mine
    }
}

impl Registration {
    pub(crate) fn id(&self) -> u32 {
        self.id
    }

    /// The flag the transfer's work watches.
    pub(crate) fn cancel_flag(&self) -> Arc<AtomicBool> {
        self.transfer.cancel.clone()
    }

    /// Wraps a progress reporter so that the registry sees the numbers too.
    pub(crate) fn track(
        &self,
        mut report: impl FnMut(u64, u64) + Send + 'static,
    ) -> impl FnMut(u64, u64) + Send + 'static {
        let transfer = self.transfer.clone();
        move |done, total| {
            transfer.done.store(done, Ordering::Relaxed);
            transfer.total.store(total, Ordering::Relaxed);
            report(done, total);
        }
    }
}

/// The unique bus name of the caller of `header`'s call; empty if none.
pub(crate) fn caller_of(header: &zbus::message::Header<'_>) -> String {
    header.sender().map(|sender| sender.to_string()).unwrap_or_default()
}

/// Cancels a transfer once its caller leaves the bus (its client was
/// killed, or died): nobody would get the image's name, so what it built
/// goes. Watches until the returned task is dropped. Must be called on the
/// executor.
pub(crate) async fn cancel_when_caller_leaves(
    connection: &zbus::Connection,
    registration: &Registration,
) -> Option<zruntime::Task<(), zruntime::Shared>> {
    use futures_util::StreamExt;
    let caller = zbus::names::UniqueName::try_from(registration.transfer.caller.clone()).ok()?;
    let dbus = zbus::fdo::DBusProxy::new(connection).await.ok()?;
    // Subscribed first, so that a caller leaving before the check is seen.
    let mut changes = dbus.receive_name_owner_changed_with_args(&[(0, caller.as_str())]).await.ok()?;
    let cancel = registration.cancel_flag();
    let (id, local) = (registration.id, registration.transfer.local.clone());
    let still_there = dbus.name_has_owner(caller.clone().into()).await.unwrap_or(true);
    Some(zruntime::spawn(async move {
        if still_there {
            while let Some(change) = changes.next().await {
                if change.args().is_ok_and(|args| args.new_owner().is_none()) {
                    break;
                }
            }
        }
        tracing::info!(id, local, %caller, "the caller of a transfer left; cancelling it");
        cancel.store(true, Ordering::SeqCst);
    }))
}

impl Drop for Registration {
    fn drop(&mut self) {
        self.running.lock().unwrap_or_else(|poisoned| poisoned.into_inner()).remove(&self.id);
    }
}

/// What a descriptor a caller passed is, for the REMOTE column: the path
/// the kernel names it by (a pipe is `pipe:[N]`).
pub(crate) fn describe_fd(fd: &impl std::os::fd::AsRawFd) -> String {
    std::fs::read_link(format!("/proc/self/fd/{}", fd.as_raw_fd()))
        .map(|path| path.display().to_string())
        .ok()
        .filter(|path| !path.is_empty())
        .unwrap_or_else(|| "-".to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn transfers_are_listed_while_registered_and_cancelled_by_id() {
        let transfers = Transfers::default();
        let first = transfers.register("import-tar", "f28", "/srv/f28.tar.xz", ":1.7");
        let second = transfers.register("export-raw", "disk", "/srv/disk.raw", ":1.8");
        assert_eq!((first.id(), second.id()), (1, 2));
        let mut progress = second.track(|_, _| {});
        progress(25, 100);
        let listed = transfers.list();
        assert_eq!(
            listed.iter().map(|t| (t.id, t.kind.as_str(), t.progress)).collect::<Vec<_>>(),
            [(1, "import-tar", -1.0), (2, "export-raw", 0.25)]
        );
        assert!(!first.cancel_flag().load(Ordering::SeqCst));
        transfers.cancel(1).unwrap();
        assert!(first.cancel_flag().load(Ordering::SeqCst));
        let error = transfers.cancel(7).unwrap_err().to_string();
        assert!(error.contains("no transfer with id 7"), "{error}");
        drop(first);
        assert_eq!(transfers.list().len(), 1);
        drop(second);
        assert!(transfers.list().is_empty());
        // Ids are not reused.
        assert_eq!(transfers.register("import-raw", "x", "", ":1.9").id(), 3);
    }

    #[test]
    fn a_caller_cancels_only_the_transfers_it_started() {
        let transfers = Transfers::default();
        let mine = transfers.register("import-raw", "a", "pipe:[1]", ":1.40");
        let other = transfers.register("pull-raw", "b", "http://x/b.raw", ":1.41");
        let also_mine = transfers.register("export-tar", "c", "/srv/c.tar", ":1.40");
        let anonymous = transfers.register("import-tar", "d", "", "");
        assert_eq!(transfers.cancel_started_by(":1.40"), [mine.id(), also_mine.id()]);
        assert!(mine.cancel_flag().load(Ordering::SeqCst) && also_mine.cancel_flag().load(Ordering::SeqCst));
        assert!(!other.cancel_flag().load(Ordering::SeqCst) && !anonymous.cancel_flag().load(Ordering::SeqCst));
        // Nobody is the caller of a transfer whose caller had no name.
        assert!(transfers.cancel_started_by("").is_empty());
        assert!(transfers.cancel_started_by(":1.99").is_empty());
        drop((mine, also_mine));
        assert!(transfers.cancel_started_by(":1.40").is_empty());
    }
}
