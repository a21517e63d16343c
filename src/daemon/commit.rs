//! Group commit of attaches, detaches and reattaches.
//!
//! A change of attachments holds the change lock while it plans, writes and
//! reloads systemd; the reload of PID 1 is what costs most. Requests that
//! arrive meanwhile wait in a queue, and the first of them to get the lock
//! applies every request waiting: requests that can share a transaction
//! (attaches, and reattaches, with the same profile, copy mode and flags;
//! detaches with the same flags) are applied together, with one reload, and
//! each caller gets its own result. A group that fails is applied again one
//! request at a time, so that a failing image fails only its own request,
//! with the host put back as it was for it alone. Reattaches are planned
//! one by one before they are applied together: one whose plan fails fails
//! alone at once, without costing the others a second try.

use std::sync::Mutex;
use std::sync::mpsc::{Receiver, SyncSender, sync_channel};

use super::Daemon;
use crate::api::BusError;
use crate::portable::Error;
use crate::portable::ops::{self, Actions, Host, ImageRequest, Outcome, ProgressFn};
use crate::portable::plan::CopyMode;
use crate::systemd::Systemd;

/// What a request does, and everything a request must share with the
/// others of its group.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Operation {
    Attach { profile: String, copy: CopyMode, actions: Actions },
    Detach { actions: Actions },
    Reattach { profile: String, copy: CopyMode, actions: Actions },
}

impl Operation {
    /// Whether requests of this operation may share a transaction at all:
    /// a plan only changes nothing; `--no-reload` asks for no reload, so
    /// there is none to share; extensions and policies are the caller's own.
    fn groups(&self, request: &ImageRequest) -> bool {
        let actions = match self {
            Operation::Attach { actions, .. } | Operation::Detach { actions } | Operation::Reattach { actions, .. } => {
                actions
            }
        };
        !actions.check && !actions.no_reload && request.extensions.is_empty() && request.image_policy.is_none()
    }
}

struct Waiting {
    operation: Operation,
    request: ImageRequest,
    progress: ProgressFn,
    reply: SyncSender<Result<Outcome, Error>>,
}

/// The requests waiting for the change lock.
#[derive(Default)]
pub(crate) struct Commits {
    waiting: Mutex<Vec<(u64, Waiting)>>,
    serial: std::sync::atomic::AtomicU64,
}

impl std::fmt::Debug for Commits {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Commits").field("waiting", &self.lock().len()).finish()
    }
}

impl Commits {
    fn lock(&self) -> std::sync::MutexGuard<'_, Vec<(u64, Waiting)>> {
        self.waiting.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Applies `request`, with the others waiting when this one gets the
    /// change lock first, or as part of the group another request applies.
    pub(crate) async fn submit(
        &self,
        daemon: &Daemon,
        host: &Host,
        systemd: &Systemd,
        what: &str,
        (operation, request, progress): (Operation, ImageRequest, ProgressFn),
    ) -> Result<Result<Outcome, Error>, BusError> {
        let (reply, result) = sync_channel(1);
        let id = self.serial.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let image = request.image.clone();
        self.lock().push((id, Waiting { operation, request, progress, reply }));
        let exclusive = match daemon.portable_lock.try_lock() {
            Some(exclusive) => exclusive,
            None => {
                tracing::info!(image, "waiting behind another change of portable services");
                match daemon.change_lock(what).await {
                    Ok(exclusive) => exclusive,
                    Err(busy) => {
                        if self.withdraw(id) {
                            return Err(busy);
                        }
                        // Taken by a group that is being applied: its result
                        // comes when that group's leader lets the lock go.
                        daemon.portable_lock.lock().await
                    }
                }
            }
        };
        if let Some(done) = ready(&result) {
            return Ok(done);
        }
        let in_flight = daemon.snapshot.begin(host, systemd.connection(), systemd).await;
        let batch = self.take_all();
        apply_all(host, systemd, batch).await;
        // Reads read the host again before any caller has its result.
        drop(in_flight);
        drop(exclusive);
        ready(&result).ok_or_else(|| BusError::Failed(format!("{what}: the change applied with others gave no result")))
    }

    /// Takes request `id` out of the queue; false when a group took it.
    fn withdraw(&self, id: u64) -> bool {
        let mut waiting = self.lock();
        match waiting.iter().position(|(i, _)| *i == id) {
            Some(at) => {
                waiting.remove(at);
                true
            }
            None => false,
        }
    }

    fn take_all(&self) -> Vec<Waiting> {
        self.lock().drain(..).map(|(_, w)| w).collect()
    }
}

/// The result a group's leader sent, if it did yet.
fn ready(result: &Receiver<Result<Outcome, Error>>) -> Option<Result<Outcome, Error>> {
    result.try_recv().ok()
}

/// Applies the waiting requests in the order they came, each group of
/// those that share a transaction together.
async fn apply_all(host: &Host, systemd: &Systemd, mut batch: Vec<Waiting>) {
    while !batch.is_empty() {
        let first = batch.remove(0);
        let mut group = vec![first];
        if group[0].operation.groups(&group[0].request) {
            let mut at = 0;
            while at < batch.len() {
                if batch[at].operation == group[0].operation && batch[at].operation.groups(&batch[at].request) {
                    group.push(batch.remove(at));
                } else {
                    at += 1;
                }
            }
        }
        apply_group(host, systemd, group).await;
    }
}

async fn apply_group(host: &Host, systemd: &Systemd, mut group: Vec<Waiting>) {
    if group.len() > 1 {
        tracing::info!(requests = group.len(), "applying changes that arrived together as one transaction");
        let requests: Vec<ImageRequest> = group.iter().map(|w| w.request.clone()).collect();
        let mut progresses: Vec<ProgressFn> =
            group.iter_mut().map(|w| std::mem::replace(&mut w.progress, Box::new(|_, _| {}))).collect();
        let shared: ProgressFn = Box::new(move |done, total| progresses.iter_mut().for_each(|p| p(done, total)));
        let result = match &group[0].operation {
            Operation::Attach { profile, copy, actions } => {
                ops::attach_each(host, systemd, requests, profile, *copy, *actions, shared).await
            }
            Operation::Detach { actions } => ops::detach_each(host, systemd, requests, *actions).await,
            Operation::Reattach { profile, copy, actions } => {
                let result = ops::reattach_each(host, systemd, requests, profile, *copy, *actions, shared).await;
                match result {
                    Ok(results) => {
                        let mut alone = Vec::new();
                        for (waiting, result) in group.into_iter().zip(results) {
                            match result {
                                Some(result) => {
                                    let _ = waiting.reply.send(result);
                                }
                                // It touches what another of the group did.
                                None => alone.push(waiting),
                            }
                        }
                        group = alone;
                    }
                    Err(error) => tracing::info!("a group of reattaches failed ({error}): applying them one by one"),
                }
                return apply_alone(host, systemd, group).await;
            }
        };
        match result {
            Ok(outcomes) => {
                for (waiting, outcome) in group.into_iter().zip(outcomes) {
                    let _ = waiting.reply.send(Ok(outcome));
                }
                return;
            }
            // Nothing of the group is left: each request on its own, so
            // that only the failing ones fail.
            Err(error) => tracing::info!("a group of changes failed ({error}): applying them one by one"),
        }
    }
    apply_alone(host, systemd, group).await
}

/// Applies each request on its own transaction.
async fn apply_alone(host: &Host, systemd: &Systemd, group: Vec<Waiting>) {
    for waiting in group {
        let Waiting { operation, request, progress, reply } = waiting;
        let result = match operation {
            Operation::Attach { profile, copy, actions } => {
                ops::attach(host, systemd, vec![request], &profile, copy, actions, progress).await
            }
            Operation::Detach { actions } => ops::detach_with_extensions(host, systemd, request, actions).await,
            Operation::Reattach { profile, copy, actions } => {
                ops::reattach(host, systemd, request, &profile, copy, actions, progress).await
            }
        };
        // The caller hung up: its result has no one to go to.
        let _ = reply.send(result);
    }
}
