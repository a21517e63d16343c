//! Changes to the files systemd reads, made all together or not at all, and
//! safe against a crash at any point.
//!
//! A [`Transaction`] collects steps (make a directory, write a file, make a
//! symlink, remove a file). [`Transaction::apply`] first writes a journal
//! saying exactly what it is about to do — which paths it creates, which it
//! replaces or removes and under which hidden backup name the old content is
//! kept — and only then does it. Replaced and removed files are renamed to
//! their backup name, never deleted, until [`Transaction::commit`]. Any error
//! rolls back; a crash leaves the journal behind, and [`recover`] (run by
//! wharfd at start) rolls back every transaction that was not committed and
//! finishes every one that was.

use std::fs;
use std::os::unix::fs::{PermissionsExt, symlink};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::fs::{sync_parent, write_atomic};

/// Where wharfd keeps its journals.
pub const JOURNAL_DIR: &str = "/var/lib/wharf/transactions";

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{}: {source}", path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("transaction journal {}: {reason}", path.display())]
    Journal { path: PathBuf, reason: String },
}

pub type Result<T> = std::result::Result<T, Error>;

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> Error + '_ {
    move |source| Error::Io { path: path.to_path_buf(), source }
}

/// One change made to the host, as reported to clients: (type, path, source).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Change {
    /// `mkdir`, `write`, `symlink`, `unlink`.
    pub kind: String,
    pub path: String,
    /// For a symlink, its target; else empty.
    pub source: String,
}

#[derive(Debug, Clone)]
enum Step {
    MakeDir(PathBuf),
    Write { path: PathBuf, contents: Vec<u8>, mode: u32 },
    Symlink { path: PathBuf, target: PathBuf },
    Remove(PathBuf),
}

/// What a step did (or is about to do), with what undoing it needs.
#[derive(Debug, Clone, Serialize, Deserialize)]
enum Action {
    /// A directory that did not exist.
    CreateDir { path: PathBuf },
    /// A file or symlink that did not exist, written through `temp`.
    Create { path: PathBuf, temp: PathBuf },
    /// An existing file moved to `backup`, then a new one written through `temp`.
    Replace { path: PathBuf, backup: PathBuf, temp: PathBuf },
    /// An existing file moved to `backup`.
    Remove { path: PathBuf, backup: PathBuf },
    /// An existing directory moved to `backup` (with the backups of the
    /// files removed from it before).
    RemoveDir { path: PathBuf, backup: PathBuf },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
enum State {
    Prepared,
    Committed,
}

#[derive(Debug, Serialize, Deserialize)]
struct Journal {
    state: State,
    actions: Vec<Action>,
}

/// A set of file changes applied all-or-nothing.
#[derive(Debug)]
pub struct Transaction {
    journal_dir: PathBuf,
    id: String,
    steps: Vec<Step>,
    /// Set once applied: the actions the journal records.
    actions: Vec<Action>,
}

impl Transaction {
    pub fn new(journal_dir: &Path) -> Transaction {
        use std::sync::atomic::{AtomicU64, Ordering};
        static SERIAL: AtomicU64 = AtomicU64::new(0);
        let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_nanos());
        let id = format!("{nanos:x}-{}-{}", std::process::id(), SERIAL.fetch_add(1, Ordering::Relaxed));
        Transaction { journal_dir: journal_dir.to_path_buf(), id, steps: Vec::new(), actions: Vec::new() }
    }

    pub fn make_dir(&mut self, path: impl Into<PathBuf>) {
        self.steps.push(Step::MakeDir(path.into()));
    }

    pub fn write(&mut self, path: impl Into<PathBuf>, contents: impl Into<Vec<u8>>, mode: u32) {
        self.steps.push(Step::Write { path: path.into(), contents: contents.into(), mode });
    }

    pub fn symlink(&mut self, path: impl Into<PathBuf>, target: impl Into<PathBuf>) {
        self.steps.push(Step::Symlink { path: path.into(), target: target.into() });
    }

    pub fn remove(&mut self, path: impl Into<PathBuf>) {
        self.steps.push(Step::Remove(path.into()));
    }

    pub fn is_empty(&self) -> bool {
        self.steps.is_empty()
    }

    fn journal_path(&self) -> PathBuf {
        self.journal_dir.join(format!("{}.json", self.id))
    }

    /// A hidden name beside `path`, unique to this transaction and step.
    fn aside(&self, path: &Path, role: &str, index: usize) -> PathBuf {
        let name = path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
        path.with_file_name(format!(".#wharf-{role}-{}-{index}-{name}", self.id))
    }

    /// Journals and performs every step. On error, everything done so far is
    /// undone and the journal removed before the error is returned.
    pub fn apply(&mut self) -> Result<Vec<Change>> {
        let mut actions = Vec::new();
        for (index, step) in self.steps.iter().enumerate() {
            let exists = |path: &Path| path.symlink_metadata().is_ok();
            match step {
                Step::MakeDir(path) if path.is_dir() => {}
                Step::MakeDir(path) => actions.push(Action::CreateDir { path: path.clone() }),
                Step::Write { path, .. } | Step::Symlink { path, .. } => {
                    let temp = self.aside(path, "new", index);
                    actions.push(if exists(path) {
                        Action::Replace { path: path.clone(), backup: self.aside(path, "old", index), temp }
                    } else {
                        Action::Create { path: path.clone(), temp }
                    });
                }
                Step::Remove(path) if path.symlink_metadata().is_ok_and(|m| m.is_dir()) => {
                    actions.push(Action::RemoveDir { path: path.clone(), backup: self.aside(path, "old", index) })
                }
                Step::Remove(path) if exists(path) => {
                    actions.push(Action::Remove { path: path.clone(), backup: self.aside(path, "old", index) })
                }
                Step::Remove(_) => {}
            }
        }
        self.actions = actions;
        if self.actions.is_empty() {
            return Ok(Vec::new());
        }
        fs::create_dir_all(&self.journal_dir).map_err(io(&self.journal_dir))?;
        self.write_journal(State::Prepared)?;

        let steps = std::mem::take(&mut self.steps);
        let mut changes = Vec::new();
        let mut result = Ok(());
        let mut action_index = 0;
        for step in &steps {
            let Some(action) = self.actions.get(action_index).cloned() else { break };
            if !step_matches(step, &action) {
                continue;
            }
            action_index += 1;
            if let Err(e) = perform(step, &action, &mut changes) {
                result = Err(e);
                break;
            }
        }
        self.steps = steps;
        match result {
            Ok(()) => Ok(changes),
            Err(e) => {
                if let Err(undo) = undo_all(&self.actions) {
                    tracing::error!("rolling back after '{e}' failed too: {undo}");
                }
                let _ = fs::remove_file(self.journal_path());
                Err(e)
            }
        }
    }

    /// Makes the applied changes final: backups are dropped.
    pub fn commit(self) -> Result<()> {
        if self.actions.is_empty() {
            return Ok(());
        }
        self.write_journal(State::Committed)?;
        finish(&self.actions)?;
        remove_journal(&self.journal_path())
    }

    /// Undoes the applied changes: the host is as it was before `apply`.
    pub fn rollback(self) -> Result<()> {
        if self.actions.is_empty() {
            return Ok(());
        }
        undo_all(&self.actions)?;
        remove_journal(&self.journal_path())
    }

    fn write_journal(&self, state: State) -> Result<()> {
        let journal = Journal { state, actions: self.actions.clone() };
        let text = serde_json::to_vec_pretty(&journal)
            .map_err(|e| Error::Journal { path: self.journal_path(), reason: e.to_string() })?;
        write_atomic(&self.journal_path(), &text, 0o600).map_err(io(&self.journal_path()))
    }
}

/// Whether `action` is the one planned for `step` (steps with nothing to do
/// have no action).
fn step_matches(step: &Step, action: &Action) -> bool {
    let step_path = match step {
        Step::MakeDir(path) | Step::Remove(path) => path,
        Step::Write { path, .. } | Step::Symlink { path, .. } => path,
    };
    let action_path = match action {
        Action::CreateDir { path } | Action::Create { path, .. } => path,
        Action::Replace { path, .. } | Action::Remove { path, .. } | Action::RemoveDir { path, .. } => path,
    };
    step_path == action_path
}

fn perform(step: &Step, action: &Action, changes: &mut Vec<Change>) -> Result<()> {
    let record = |changes: &mut Vec<Change>, kind: &str, path: &Path, source: &str| {
        changes.push(Change { kind: kind.into(), path: path.display().to_string(), source: source.into() })
    };
    match (step, action) {
        (Step::MakeDir(path), Action::CreateDir { .. }) => {
            fs::create_dir(path).map_err(io(path))?;
            fs::set_permissions(path, fs::Permissions::from_mode(0o755)).map_err(io(path))?;
            sync_parent(path).map_err(io(path))?;
            record(changes, "mkdir", path, "");
        }
        (Step::Write { path, contents, mode }, Action::Create { temp, .. } | Action::Replace { temp, .. }) => {
            if let Action::Replace { backup, .. } = action {
                fs::rename(path, backup).map_err(io(path))?;
            }
            let _ = fs::remove_file(temp);
            write_atomic(temp, contents, *mode).map_err(io(temp))?;
            fs::rename(temp, path).map_err(io(path))?;
            sync_parent(path).map_err(io(path))?;
            record(changes, "write", path, "");
        }
        (Step::Symlink { path, target }, Action::Create { temp, .. } | Action::Replace { temp, .. }) => {
            if let Action::Replace { backup, .. } = action {
                fs::rename(path, backup).map_err(io(path))?;
            }
            let _ = fs::remove_file(temp);
            symlink(target, temp).map_err(io(temp))?;
            fs::rename(temp, path).map_err(io(path))?;
            sync_parent(path).map_err(io(path))?;
            record(changes, "symlink", path, &target.display().to_string());
        }
        (Step::Remove(path), Action::Remove { backup, .. }) => {
            fs::rename(path, backup).map_err(io(path))?;
            sync_parent(path).map_err(io(path))?;
            record(changes, "unlink", path, "");
        }
        (Step::Remove(path), Action::RemoveDir { backup, .. }) => {
            fs::rename(path, backup).map_err(io(path))?;
            sync_parent(path).map_err(io(path))?;
            record(changes, "unlink", path, "");
        }
        _ => unreachable!("actions are planned from their steps"),
    }
    Ok(())
}

/// Undoes actions in reverse order; each undo is safe whether or not its
/// action had happened (or half happened) before a crash.
fn undo_all(actions: &[Action]) -> Result<()> {
    let mut first_error = None;
    for action in actions.iter().rev() {
        if let Err(e) = undo(action) {
            tracing::error!("undo: {e}");
            first_error.get_or_insert(e);
        }
    }
    first_error.map_or(Ok(()), Err)
}

fn undo(action: &Action) -> Result<()> {
    let remove_if_there = |path: &Path| match fs::remove_file(path) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(io(path)(e)),
        _ => Ok(()),
    };
    match action {
        Action::CreateDir { path } => match fs::remove_dir(path) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(io(path)(e)),
            _ => Ok(()),
        },
        Action::Create { path, temp } => {
            remove_if_there(temp)?;
            remove_if_there(path)
        }
        Action::Replace { path, backup, temp } => {
            remove_if_there(temp)?;
            // No backup means the old file was never moved: it is still in place.
            if backup.symlink_metadata().is_ok() {
                fs::rename(backup, path).map_err(io(path))?;
            }
            Ok(())
        }
        Action::Remove { path, backup } => {
            if backup.symlink_metadata().is_ok() {
                fs::rename(backup, path).map_err(io(path))?;
            }
            Ok(())
        }
        Action::RemoveDir { path, backup } => {
            if backup.symlink_metadata().is_ok() {
                fs::rename(backup, path).map_err(io(path))?;
            }
            Ok(())
        }
    }
}

/// Drops the backups of committed actions (and any leftover temporary).
fn finish(actions: &[Action]) -> Result<()> {
    for action in actions {
        let leftovers: Vec<&PathBuf> = match action {
            Action::Replace { backup, temp, .. } => vec![backup, temp],
            Action::Remove { backup, .. } => vec![backup],
            Action::Create { temp, .. } => vec![temp],
            Action::CreateDir { .. } => vec![],
            Action::RemoveDir { backup, .. } => {
                match fs::remove_dir_all(backup) {
                    Err(e) if e.kind() != std::io::ErrorKind::NotFound => return Err(io(backup)(e)),
                    _ => {}
                }
                vec![]
            }
        };
        for path in leftovers {
            match fs::remove_file(path) {
                Err(e) if e.kind() != std::io::ErrorKind::NotFound => return Err(io(path)(e)),
                _ => {}
            }
        }
    }
    Ok(())
}

fn remove_journal(path: &Path) -> Result<()> {
    fs::remove_file(path).map_err(io(path))?;
    sync_parent(path).map_err(io(path))
}

/// Finishes what a crash interrupted: every journal in `journal_dir` is
/// rolled back (prepared) or completed (committed). Returns how many
/// transactions it found, so the caller knows whether systemd must reload.
pub fn recover(journal_dir: &Path) -> Result<usize> {
    let entries = match fs::read_dir(journal_dir) {
        Ok(entries) => entries,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(0),
        Err(e) => return Err(io(journal_dir)(e)),
    };
    let mut found = 0;
    for entry in entries {
        let path = entry.map_err(io(journal_dir))?.path();
        if path.extension().is_none_or(|ext| ext != "json") {
            // An interrupted journal write leaves a hidden temporary.
            if path.file_name().is_some_and(|n| n.to_string_lossy().starts_with(".#wharf-")) {
                let _ = fs::remove_file(&path);
            }
            continue;
        }
        let text = fs::read(&path).map_err(io(&path))?;
        let journal: Journal =
            serde_json::from_slice(&text).map_err(|e| Error::Journal { path: path.clone(), reason: e.to_string() })?;
        match journal.state {
            State::Prepared => {
                tracing::warn!(journal = %path.display(), "rolling back an interrupted change");
                undo_all(&journal.actions)?;
            }
            State::Committed => {
                tracing::info!(journal = %path.display(), "finishing an interrupted commit");
                finish(&journal.actions)?;
            }
        }
        remove_journal(&path)?;
        found += 1;
    }
    Ok(found)
}

/// A step of putting the host back after a failed operation (`during`):
/// its failure is logged and the rest of the undoing goes on, since the
/// operation's own error is what the caller reports.
pub fn undo_step<T, E: std::fmt::Display>(during: &str, what: &str, result: std::result::Result<T, E>) {
    if let Err(e) = result {
        tracing::error!("undoing {during}: {what}: {e}");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn scratch(tag: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("wharf-tx-{tag}-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(dir.join("units")).unwrap();
        dir
    }

    fn listing(dir: &Path) -> Vec<String> {
        let mut names: Vec<String> =
            walk(dir).into_iter().map(|p| p.strip_prefix(dir).unwrap().display().to_string()).collect();
        names.sort();
        names
    }

    fn walk(dir: &Path) -> Vec<PathBuf> {
        let mut out = Vec::new();
        for entry in fs::read_dir(dir).unwrap() {
            let path = entry.unwrap().path();
            out.push(path.clone());
            if path.is_dir() && !path.is_symlink() {
                out.extend(walk(&path));
            }
        }
        out
    }

    #[test]
    fn commit_keeps_the_new_state_and_nothing_else() {
        let root = scratch("commit");
        let units = root.join("units");
        fs::write(units.join("old.service"), "old").unwrap();
        fs::write(units.join("gone.service"), "gone").unwrap();
        let mut tx = Transaction::new(&root.join("journal"));
        tx.make_dir(units.join("a.service.d"));
        tx.write(units.join("a.service.d/20-portable.conf"), "x", 0o644);
        tx.write(units.join("old.service"), "new", 0o644);
        tx.symlink(units.join("b.service"), "/somewhere/b.service");
        tx.remove(units.join("gone.service"));
        fs::create_dir(units.join("gone.service.d")).unwrap();
        fs::write(units.join("gone.service.d/20-portable.conf"), "x").unwrap();
        tx.remove(units.join("gone.service.d/20-portable.conf"));
        tx.remove(units.join("gone.service.d"));
        let changes = tx.apply().unwrap();
        assert_eq!(
            changes.iter().map(|c| c.kind.as_str()).collect::<Vec<_>>(),
            ["mkdir", "write", "write", "symlink", "unlink", "unlink", "unlink"]
        );
        tx.commit().unwrap();
        assert_eq!(fs::read_to_string(units.join("old.service")).unwrap(), "new");
        assert_eq!(
            listing(&root),
            [
                "journal",
                "units",
                "units/a.service.d",
                "units/a.service.d/20-portable.conf",
                "units/b.service",
                "units/old.service"
            ]
        );
        fs::remove_dir_all(&root).unwrap();
    }

    #[test]
    fn rollback_and_failure_restore_the_host() {
        let root = scratch("rollback");
        let units = root.join("units");
        fs::write(units.join("old.service"), "old").unwrap();
        fs::write(units.join("gone.service"), "gone").unwrap();
        fs::create_dir(units.join("gone.service.d")).unwrap();
        fs::write(units.join("gone.service.d/x.conf"), "x").unwrap();
        // The journal directory stays, empty, once made.
        let before = [
            "journal",
            "units",
            "units/gone.service",
            "units/gone.service.d",
            "units/gone.service.d/x.conf",
            "units/old.service",
        ];

        let mut tx = Transaction::new(&root.join("journal"));
        tx.make_dir(units.join("a.service.d"));
        tx.write(units.join("a.service.d/20-portable.conf"), "x", 0o644);
        tx.write(units.join("old.service"), "new", 0o644);
        tx.remove(units.join("gone.service"));
        tx.remove(units.join("gone.service.d/x.conf"));
        tx.remove(units.join("gone.service.d"));
        tx.apply().unwrap();
        tx.rollback().unwrap();
        assert_eq!(fs::read_to_string(units.join("old.service")).unwrap(), "old");
        assert_eq!(fs::read_to_string(units.join("gone.service")).unwrap(), "gone");
        assert_eq!(listing(&root), before);

        // A step that fails half-way (its directory is missing) undoes the ones before it.
        let mut tx = Transaction::new(&root.join("journal"));
        tx.write(units.join("old.service"), "new", 0o644);
        tx.write(units.join("missing-dir/x.conf"), "x", 0o644);
        assert!(tx.apply().is_err());
        assert_eq!(fs::read_to_string(units.join("old.service")).unwrap(), "old");
        assert_eq!(listing(&root), before);
        fs::remove_dir_all(&root).unwrap();
    }

    #[test]
    fn recovery_rolls_back_prepared_and_finishes_committed() {
        let root = scratch("recover");
        let units = root.join("units");
        let journal = root.join("journal");
        fs::write(units.join("old.service"), "old").unwrap();

        // A crash after apply: the journal is all that is left of the process.
        let mut tx = Transaction::new(&journal);
        tx.write(units.join("new.service"), "new", 0o644);
        tx.write(units.join("old.service"), "replaced", 0o644);
        tx.apply().unwrap();
        std::mem::forget(tx);
        assert_eq!(recover(&journal).unwrap(), 1);
        assert!(!units.join("new.service").exists());
        assert_eq!(fs::read_to_string(units.join("old.service")).unwrap(), "old");
        assert_eq!(listing(&units), ["old.service"]);

        // A crash in the middle of a commit: the new state is kept, backups go.
        let mut tx = Transaction::new(&journal);
        tx.write(units.join("old.service"), "replaced", 0o644);
        tx.apply().unwrap();
        tx.write_journal(State::Committed).unwrap();
        std::mem::forget(tx);
        assert_eq!(recover(&journal).unwrap(), 1);
        assert_eq!(fs::read_to_string(units.join("old.service")).unwrap(), "replaced");
        assert_eq!(listing(&units), ["old.service"]);
        assert_eq!(recover(&journal).unwrap(), 0);
        fs::remove_dir_all(&root).unwrap();
    }
}
