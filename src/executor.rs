//! The one way wharf changes the host around a transaction of file
//! changes: units stopped, the files (unit files, drop-ins, enablement
//! links) changed in one journaled [`Transaction`], systemd reloaded, units
//! started or restarted; and, when a step fails, every step done so far
//! undone in reverse order. attach, detach, reattach and fleet apply all
//! run their changes through an [`Executor`], so the sequence and its undo
//! exist once, and every rollback path has a unit test against the fake
//! manager.
//!
//! Each step records its undo *before* it touches the host: a stop or start
//! that fails half-way (some units done, one not) is undone too. The undo
//! of a stop or a restart runs once the old files are back, so that the
//! units run the old version again; a stop may come after the files are
//! changed (systemd sees them only at the reload), so that the journal,
//! which says what recovery must restart, is written before any unit stops.

use std::future::Future;
use std::pin::Pin;

use crate::systemd::manager::UnitManager;
use crate::transaction::{self, Change, Transaction, Undo};

/// The undo of a step the executor does not carry out itself (a machine
/// imported, stopped or started by a fleet apply): run in its place in the
/// one undo stack, so that every step of a change is undone in reverse.
/// Made into a future only when the undo runs (the executor is shared
/// across awaits, so what it holds must be `Sync`; a future need not be).
type ForeignUndo<'a> =
    Box<dyn FnOnce() -> Pin<Box<dyn Future<Output = Result<(), String>> + Send + 'a>> + Send + Sync + 'a>;

/// What putting back one step takes.
enum Inverse<'a> {
    /// Units the change stopped: started again.
    Start(Vec<String>),
    /// Units it started: stopped again.
    Stop(Vec<String>),
    /// Units it restarted on the new files: restarted on the old ones.
    Restart(Vec<String>),
    /// Its files: the transaction rolled back, then systemd reloaded.
    Files,
    /// A step done outside the executor, described by `what`.
    Foreign { what: &'static str, undo: ForeignUndo<'a> },
}

impl std::fmt::Debug for Inverse<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Inverse::Start(units) => f.debug_tuple("Start").field(units).finish(),
            Inverse::Stop(units) => f.debug_tuple("Stop").field(units).finish(),
            Inverse::Restart(units) => f.debug_tuple("Restart").field(units).finish(),
            Inverse::Files => f.write_str("Files"),
            Inverse::Foreign { what, .. } => f.debug_struct("Foreign").field("what", what).finish_non_exhaustive(),
        }
    }
}

/// A change in progress: what it did, and how to undo it.
#[derive(Debug)]
pub struct Executor<'a, M: UnitManager> {
    systemd: &'a M,
    /// The inverses of the steps done, the last one last.
    done: Vec<Inverse<'a>>,
    /// The applied transaction, committed or rolled back at the end.
    tx: Option<Transaction>,
    /// Why a transaction that failed could not put back its own files.
    files_not_restored: Option<String>,
}

async fn blocking<T: Send + 'static>(work: impl FnOnce() -> T + Send + 'static) -> T {
    zruntime::unblock(work).await
}

impl<'a, M: UnitManager> Executor<'a, M> {
    pub fn new(systemd: &'a M) -> Self {
        Executor { systemd, done: Vec::new(), tx: None, files_not_restored: None }
    }

    /// Stops units (waiting until they are down); undone by starting them.
    pub async fn stop(&mut self, units: &[String]) -> crate::systemd::Result<()> {
        if units.is_empty() {
            return Ok(());
        }
        self.push_after_files(Inverse::Start(units.to_vec()));
        self.systemd.stop(units, true).await
    }

    /// Journals and applies the file changes of `tx`; undone by rolling it
    /// back and reloading. A transaction that fails puts its own files
    /// back; when that fails too, the error is the step's, and the files it
    /// could not put back are a failed undo step of [`Executor::roll_back`].
    pub async fn apply(&mut self, mut tx: Transaction) -> transaction::Result<Vec<Change>> {
        let (tx, applied) = blocking(move || {
            let applied = tx.apply();
            (tx, applied)
        })
        .await;
        let changes = match applied {
            Ok(changes) => changes,
            Err(transaction::Error::NotUndone { error, undo }) => {
                self.files_not_restored = Some(undo.to_string());
                return Err(*error);
            }
            Err(error) => return Err(error),
        };
        self.tx = Some(tx);
        self.done.push(Inverse::Files);
        Ok(changes)
    }

    /// `daemon-reload`. Its undo is the reload after the files are put back.
    pub async fn reload(&self) -> crate::systemd::Result<()> {
        self.systemd.reload().await
    }

    /// Starts units (when `wait`, until they are up); undone by stopping them.
    pub async fn start(&mut self, units: &[String], wait: bool) -> crate::systemd::Result<()> {
        if units.is_empty() {
            return Ok(());
        }
        self.done.push(Inverse::Stop(units.to_vec()));
        self.systemd.start(units, wait).await
    }

    /// Restarts units on the new files; undone by restarting them once the
    /// old files are back.
    pub async fn restart(&mut self, units: &[String], wait: bool) -> crate::systemd::Result<()> {
        if units.is_empty() {
            return Ok(());
        }
        self.push_after_files(Inverse::Restart(units.to_vec()));
        self.systemd.restart(units, wait).await
    }

    /// Records the undo of a step done outside the executor, before that
    /// step touches the host. `after_files`: the undo brings something up
    /// again, so it runs once the old files are back, as a unit's start does.
    pub fn undo_with<F>(&mut self, what: &'static str, after_files: bool, undo: impl FnOnce() -> F + Send + Sync + 'a)
    where
        F: Future<Output = Result<(), String>> + Send + 'a,
    {
        let inverse = Inverse::Foreign { what, undo: Box::new(move || Box::pin(undo())) };
        if after_files {
            self.push_after_files(inverse);
        } else {
            self.done.push(inverse);
        }
    }

    /// Records an inverse that brings units up again: it runs once the old
    /// files are back (and systemd reloaded), so they run the old version.
    fn push_after_files(&mut self, inverse: Inverse<'a>) {
        let files = self.done.iter().position(|i| matches!(i, Inverse::Files)).unwrap_or(self.done.len());
        self.done.insert(files, inverse);
    }

    /// The manager the change runs against.
    pub fn systemd(&self) -> &'a M {
        self.systemd
    }

    /// Makes the change final: the transaction's backups are dropped.
    pub async fn commit(self) -> transaction::Result<()> {
        match self.tx {
            Some(tx) => blocking(move || tx.commit()).await,
            None => Ok(()),
        }
    }

    /// Undoes every step done, the last one first, each tried whatever
    /// became of the others; `undo` collects those that failed.
    pub async fn roll_back(self, undo: &mut Undo) {
        if let Some(reason) = self.files_not_restored {
            undo.step("restoring its files", Err::<(), _>(reason));
        }
        // Undoing waits longer for systemd, so that a change that failed
        // because the bus stopped answering is still put back once it answers.
        let systemd = self.systemd.undoing();
        let mut tx = self.tx;
        for inverse in self.done.into_iter().rev() {
            match inverse {
                Inverse::Start(units) => undo.step("starting the units it stopped", systemd.start(&units, true).await),
                Inverse::Stop(units) => undo.step("stopping the units it started", systemd.stop(&units, true).await),
                Inverse::Restart(units) => {
                    undo.step("restarting the units it restarted", systemd.restart(&units, true).await)
                }
                Inverse::Files => {
                    if let Some(tx) = tx.take() {
                        undo.step("restoring its files", blocking(move || tx.rollback()).await);
                    }
                    undo.step("reloading systemd", systemd.reload().await);
                }
                Inverse::Foreign { what, undo: foreign } => undo.step(what, foreign().await),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::systemd::manager::fake::FakeManager;

    fn units(names: &[&str]) -> Vec<String> {
        names.iter().map(|n| n.to_string()).collect()
    }

    /// Stop, files, reload, restart, start: undone in reverse, the restart
    /// once the old files are back.
    #[test]
    fn steps_are_undone_in_reverse_and_restarts_after_the_files() {
        let root = std::env::temp_dir().join(format!("wharf-executor-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&root);
        std::fs::create_dir_all(&root).unwrap();
        let systemd = FakeManager::default();
        systemd.fail("start", 1);
        let mut tx = Transaction::new(&root.join("journal"));
        tx.write(root.join("a.service"), "new", 0o644);
        let mut undo = Undo::new("test");
        zbus::block_on(async {
            let mut executor = Executor::new(&systemd);
            executor.stop(&units(&["old.service"])).await.unwrap();
            executor.apply(tx).await.unwrap();
            executor.reload().await.unwrap();
            executor.restart(&units(&["b.service"]), true).await.unwrap();
            assert!(executor.start(&units(&["a.service"]), true).await.is_err());
            executor.roll_back(&mut undo).await;
        });
        assert!(undo.finish().is_empty());
        assert_eq!(
            systemd.calls(),
            [
                "stop old.service",
                "reload",
                "restart b.service",
                "start a.service",
                "stop a.service",
                "reload",
                "restart b.service",
                "start old.service"
            ]
        );
        assert!(!root.join("a.service").exists());
        std::fs::remove_dir_all(&root).unwrap();
    }
}
