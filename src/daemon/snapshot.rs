//! Reads that never wait for a change: `list` and `is-attached` while a
//! change of attachments is in flight.
//!
//! A change holds the change lock while it writes files and reloads
//! systemd, and PID 1 answers no call while it reloads: a read that asked
//! it then waited for the reload (hundreds of milliseconds under load), and
//! a read of the unit directories could see a change half written. So a
//! change, as soon as it holds the lock and before it touches anything,
//! reads the host ([`HostView`]: attachments and the states of their units);
//! until it lets the lock go, reads answer from that view, which is the
//! host as the changes that returned already left it. Without a change in
//! flight, reads read the host themselves, as before (a change that begins
//! meanwhile makes them take its view instead: a generation, odd while a
//! change is in flight, tells).
//!
//! The one thing that moves under a change and that a read must show is a
//! unit started or stopped by someone else (`systemctl start`): PID 1's
//! PropertiesChanged signals of the attached units update the view. Only
//! signals from PID 1 itself count (any peer can send a signal that names
//! any path, to wharfd directly), and only for units the change in flight
//! queues no job for: what the change does to its own units shows once it
//! is done, all at once. Signals received before a read's call are applied
//! before the read answers (the read drains the queue itself), so a read
//! made after `systemctl start` returned sees the unit running.

use std::collections::{HashMap, HashSet};
use std::future::poll_fn;
use std::pin::{Pin, pin};
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll, Waker};

use futures_util::Stream;
use futures_util::future::{Either, select};
use zbus::{Connection, MessageStream};

use crate::api::BusError;
use crate::portable::ops::Host;
use crate::portable::view::HostView;
use crate::systemd::{JobObserver, Systemd, unit_path};

/// Room for PID 1's signals between two drains; a full queue would stall
/// wharfd's connection (see `Systemd::jobs`), so the watcher drains it as
/// they come.
const SIGNAL_QUEUE: usize = 4096;

#[derive(Debug, Default)]
struct Shared {
    /// Odd while a change of attachments is in flight.
    generation: u64,
    /// The host as the change in flight found it; `None` when it could not
    /// be read (reads then read the host themselves).
    view: Option<Arc<HostView>>,
    /// The object paths of the view's units, to their names.
    paths: HashMap<String, String>,
    /// Units the change in flight queued jobs for.
    muted: HashSet<String>,
    /// PID 1's unique name on the bus, as the view was read.
    systemd: Option<String>,
}

struct Signals {
    stream: MessageStream,
    /// The watcher task's waker, handed to the stream by a drain so that
    /// the watcher still hears of the next signal.
    waker: Option<Waker>,
}

/// See the module documentation.
#[derive(Default)]
pub(crate) struct Snapshot {
    shared: Arc<Mutex<Shared>>,
    signals: Arc<Mutex<Option<Signals>>>,
    started: zruntime::lock::Mutex<bool>,
    /// Notified when a change has published its view.
    began: zruntime::Event,
}

impl std::fmt::Debug for Snapshot {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Snapshot").field("generation", &lock(&self.shared).generation).finish()
    }
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// A change in flight, from the moment it holds the change lock: reads
/// answer from the view it read until this is dropped.
pub(crate) struct InFlight {
    shared: Arc<Mutex<Shared>>,
}

impl Drop for InFlight {
    fn drop(&mut self) {
        let mut shared = lock(&self.shared);
        shared.generation += 1;
        shared.view = None;
        shared.muted.clear();
    }
}

impl Snapshot {
    /// What `systemd` tells of the jobs a change queues: their units'
    /// state changes are the change's own, not news for the view.
    pub(crate) fn observer(&self) -> JobObserver {
        let shared = self.shared.clone();
        JobObserver::new(move |units: &[String]| {
            let mut shared = lock(&shared);
            if !shared.generation.is_multiple_of(2) {
                shared.muted.extend(units.iter().cloned());
            }
        })
    }

    /// Called by a change that holds the change lock, before it touches the
    /// host: reads the host, and makes reads answer from it.
    pub(crate) async fn begin(&self, host: &Host, connection: &Connection, systemd: &Systemd) -> InFlight {
        if let Err(e) = self.watch(connection, systemd).await {
            tracing::warn!("units started or stopped during a change show only after it: {e}");
        }
        let owner = systemd_owner(connection).await;
        let view = match HostView::read(host, systemd).await {
            Ok(view) => Some(Arc::new(view)),
            Err(e) => {
                tracing::warn!("reads during this change read the host themselves: {e}");
                None
            }
        };
        {
            let mut shared = lock(&self.shared);
            debug_assert!(shared.generation.is_multiple_of(2), "two changes in flight");
            shared.generation += 1;
            shared.paths = view.iter().flat_map(|v| v.unit_names()).map(|unit| (unit_path(&unit), unit)).collect();
            shared.view = view;
            shared.muted.clear();
            shared.systemd = owner;
        }
        // Signals queued while the view was read, applied in order: the
        // last one of a unit is as new as the view, or newer.
        self.drain();
        self.began.notify(usize::MAX);
        InFlight { shared: self.shared.clone() }
    }

    /// The host's attachments and unit states for a read: the view of the
    /// change in flight, or read now.
    pub(crate) async fn read(&self, host: &Host, systemd: &Systemd) -> Result<Arc<HostView>, BusError> {
        // A change that began while the host was read may have changed it
        // under the read: then its view is the answer, at once (the read's
        // calls to PID 1 may come after the change's reload). Three tries at
        // most; the last read stands, as a read did before there were views.
        for _ in 0..3 {
            self.drain();
            let began = self.began.listen();
            let (generation, view) = {
                let shared = lock(&self.shared);
                (shared.generation, shared.view.clone())
            };
            if !generation.is_multiple_of(2)
                && let Some(view) = view
            {
                return Ok(view);
            }
            let fresh = HostView::read(host, systemd);
            let Either::Left((fresh, _)) = select(pin!(fresh), began).await else { continue };
            let fresh = fresh?;
            if lock(&self.shared).generation == generation {
                return Ok(Arc::new(fresh));
            }
        }
        Ok(Arc::new(HostView::read(host, systemd).await?))
    }

    /// Subscribes, once, to PID 1's announcements of units' state changes
    /// and starts the task that applies them.
    async fn watch(&self, connection: &Connection, systemd: &Systemd) -> Result<(), String> {
        let mut started = self.started.lock().await;
        if *started {
            return Ok(());
        }
        let rule = crate::systemd::unit_changes_rule().map_err(|e| e.to_string())?;
        let stream = MessageStream::for_match_rule(rule, connection, std::num::NonZeroUsize::new(SIGNAL_QUEUE))
            .await
            .map_err(|e| e.to_string())?;
        systemd.subscribe_signals().await.map_err(|e| e.to_string())?;
        *lock(&self.signals) = Some(Signals { stream, waker: None });
        let (signals, shared) = (self.signals.clone(), self.shared.clone());
        zruntime::spawn(async move {
            poll_fn(|cx| {
                let mut signals = lock(&signals);
                let Some(signals) = signals.as_mut() else { return Poll::Ready(()) };
                signals.waker = Some(cx.waker().clone());
                drain_stream(&mut signals.stream, cx, &shared)
            })
            .await;
            tracing::warn!("PID 1's signals ended: units started or stopped during a change show only after it");
        })
        .detach();
        *started = true;
        Ok(())
    }

    /// Applies the signals received so far.
    fn drain(&self) {
        let mut signals = lock(&self.signals);
        let Some(signals) = signals.as_mut() else { return };
        // The watcher's own waker: polled with it, the stream still wakes
        // the watcher when the next signal comes.
        let waker = signals.waker.clone().unwrap_or_else(|| Waker::noop().clone());
        let mut cx = Context::from_waker(&waker);
        let _ = drain_stream(&mut signals.stream, &mut cx, &self.shared);
    }
}

/// Applies every signal `stream` holds; ready when it has ended.
fn drain_stream(stream: &mut MessageStream, cx: &mut Context<'_>, shared: &Mutex<Shared>) -> Poll<()> {
    loop {
        match Pin::new(&mut *stream).poll_next(cx) {
            Poll::Ready(Some(Ok(message))) => apply(&message, shared),
            Poll::Ready(Some(Err(e))) => tracing::debug!("a signal could not be read: {e}"),
            Poll::Ready(None) => return Poll::Ready(()),
            Poll::Pending => return Poll::Pending,
        }
    }
}

/// Takes an ActiveState a PropertiesChanged signal announces into the
/// view, when PID 1 sent it about an attached unit that the change in
/// flight does not handle itself.
fn apply(message: &zbus::Message, shared: &Mutex<Shared>) {
    let header = message.header();
    let (Some(sender), Some(path)) = (header.sender(), header.path()) else { return };
    let Ok((interface, changed, _)) =
        message.body().deserialize::<(String, HashMap<String, zbus::OwnedVariant>, Vec<String>)>()
    else {
        return;
    };
    if interface != "org.freedesktop.systemd1.Unit" {
        return;
    }
    let Some(active_state) = changed.get("ActiveState").and_then(|v| String::try_from(v.clone()).ok()) else {
        return;
    };
    let mut shared = lock(shared);
    if shared.systemd.as_deref() != Some(sender.as_str()) {
        return;
    }
    let Some(unit) = shared.paths.get(path.as_str()).cloned() else { return };
    if shared.muted.contains(&unit) {
        return;
    }
    if let Some(view) = shared.view.as_mut() {
        Arc::make_mut(view).set_active_state(&unit, &active_state);
    }
}

/// The unique name PID 1 has on the bus, which its signals carry as sender.
async fn systemd_owner(connection: &Connection) -> Option<String> {
    let dbus = zbus::fdo::DBusProxy::new(connection).await.ok()?;
    let name = zbus::names::BusName::try_from("org.freedesktop.systemd1").ok()?;
    dbus.get_name_owner(name).await.ok().map(|owner| owner.to_string())
}
