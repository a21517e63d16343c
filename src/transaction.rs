//! Changes to the files systemd reads, made all together or not at all, and
//! safe against a crash at any point.
//!
//! A [`Transaction`] collects steps (make a directory, write a file, make a
//! symlink, remove a file). [`Transaction::apply`] first writes a journal
//! saying exactly what it is about to do — which paths it creates, which it
//! replaces or removes, and the hidden names (`.#wharf-…`) of the
//! temporaries and backups it uses — and only then does it. A new file is
//! written under its journaled temporary and renamed into place; a replaced
//! file is first hard-linked to its backup name, so the unit never goes
//! missing; a removed file is renamed to its backup. Backups stay until
//! [`Transaction::commit`]. Any error rolls back; a crash leaves the journal
//! behind, and [`recover`] (run by wharfd at start) rolls back every
//! transaction that was not committed, finishes every one that was, and
//! removes the temporaries left beside the units.
//!
//! A journal whose undo cannot finish is kept and remembered: every later
//! [`Transaction::apply`] retries it first and refuses to change anything
//! while it still fails, so a stale journal can never roll back work done
//! after it.

use std::fs;
use std::os::unix::fs::{PermissionsExt, symlink};
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use serde::{Deserialize, Serialize};

use crate::fs::{TEMP_PREFIX, is_temporary_name, sync_parent, write_atomic, write_new};

/// Where wharfd keeps its journals.
pub const JOURNAL_DIR: &str = "/var/lib/wharf/transactions";

/// Where journals that cannot be read are moved, kept for a person to look at.
const QUARANTINE: &str = "quarantine";

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
    #[error(
        "an interrupted change could not be put back ({}: {reason}); nothing is changed until it is",
        journal.display()
    )]
    Unrecovered { journal: PathBuf, reason: String },
    /// A step failed, and undoing the steps before it failed too: the
    /// journal is kept, and the files are not as they were.
    #[error("{error}; putting back the files changed before it failed too: {undo}")]
    NotUndone { error: Box<Error>, undo: Box<Error> },
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

impl Step {
    fn path(&self) -> &Path {
        match self {
            Step::MakeDir(path) | Step::Write { path, .. } | Step::Symlink { path, .. } | Step::Remove(path) => path,
        }
    }

    /// Whether the host is already as this step would leave it.
    fn finds_done(&self) -> bool {
        use std::os::unix::fs::PermissionsExt;
        match self {
            Step::MakeDir(path) => path.symlink_metadata().is_ok_and(|m| m.is_dir()),
            Step::Write { path, contents, mode } => {
                path.symlink_metadata().is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o7777 == *mode)
                    && std::fs::read(path).is_ok_and(|old| old == *contents)
            }
            Step::Symlink { path, target } => std::fs::read_link(path).is_ok_and(|old| old == *target),
            Step::Remove(path) => path.symlink_metadata().is_err(),
        }
    }
}

/// What a step did (or is about to do), with what undoing it needs.
#[derive(Debug, Clone, Serialize, Deserialize)]
enum Action {
    /// A directory that did not exist.
    CreateDir { path: PathBuf },
    /// A file or symlink that did not exist, written as `temp` and renamed.
    Create { path: PathBuf, temp: PathBuf },
    /// An existing file, hard-linked to `backup`, then replaced by `temp`
    /// renamed over it.
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
    #[serde(default)]
    on_rollback: UnitsOnRollback,
}

/// What a rollback of the files must also do to running units: stop those
/// the change started, restart those it stopped or restarted (they ran
/// before it). Journaled with the files, so that a recovery after a crash
/// puts back what ran as well as what was on disk.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct UnitsOnRollback {
    pub stop: Vec<String>,
    pub restart: Vec<String>,
    /// Machines a fleet apply started: terminated again.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub terminate_machines: Vec<String>,
    /// Machines a fleet apply stopped: started again.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub start_machines: Vec<String>,
}

impl UnitsOnRollback {
    pub fn is_empty(&self) -> bool {
        self.stop.is_empty()
            && self.restart.is_empty()
            && self.terminate_machines.is_empty()
            && self.start_machines.is_empty()
    }

    fn extend(&mut self, other: UnitsOnRollback) {
        self.stop.extend(other.stop);
        self.restart.extend(other.restart);
        self.terminate_machines.extend(other.terminate_machines);
        self.start_machines.extend(other.start_machines);
    }
}

/// Journals whose recovery failed, retried before any new change.
static UNRESOLVED: Mutex<Vec<PathBuf>> = Mutex::new(Vec::new());

fn unresolved() -> std::sync::MutexGuard<'static, Vec<PathBuf>> {
    UNRESOLVED.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

fn remember_unresolved(journal: &Path) {
    let mut list = unresolved();
    if !list.iter().any(|p| p == journal) {
        list.push(journal.to_path_buf());
    }
}

/// Retries the journals an earlier recovery or rollback could not finish.
/// Fails, naming the first one, while any of them still cannot be finished:
/// the host must not change on top of a change that is half put back.
pub fn retry_unresolved(journal_dir: &Path) -> Result<()> {
    let pending: Vec<PathBuf> = unresolved().iter().filter(|p| p.parent() == Some(journal_dir)).cloned().collect();
    for journal in pending {
        match recover_one(&journal) {
            Ok(units) => {
                if !units.is_empty() {
                    // Only a start of wharfd knows the units to put back
                    // (a failed undo in process did them itself).
                    tracing::warn!(journal = %journal.display(), ?units, "files put back; the units are left as they are");
                }
                tracing::info!(journal = %journal.display(), "an interrupted change is put back at last");
                unresolved().retain(|p| *p != journal);
            }
            Err(e) => {
                return Err(Error::Unrecovered { journal, reason: e.to_string() });
            }
        }
    }
    Ok(())
}

/// A set of file changes applied all-or-nothing.
#[derive(Debug)]
pub struct Transaction {
    journal_dir: PathBuf,
    id: String,
    steps: Vec<Step>,
    /// Set once applied: the actions the journal records.
    actions: Vec<Action>,
    on_rollback: UnitsOnRollback,
}

impl Transaction {
    pub fn new(journal_dir: &Path) -> Transaction {
        use std::sync::atomic::{AtomicU64, Ordering};
        static SERIAL: AtomicU64 = AtomicU64::new(0);
        let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_nanos());
        let id = format!("{nanos:x}-{}-{}", std::process::id(), SERIAL.fetch_add(1, Ordering::Relaxed));
        Transaction {
            journal_dir: journal_dir.to_path_buf(),
            id,
            steps: Vec::new(),
            actions: Vec::new(),
            on_rollback: UnitsOnRollback::default(),
        }
    }

    pub fn make_dir(&mut self, path: impl Into<PathBuf>) {
        let path = path.into();
        // Once: the units of a batch share `.wants` directories, and a
        // second creation of one would fail.
        if !self.steps.iter().any(|step| matches!(step, Step::MakeDir(made) if *made == path)) {
            self.steps.push(Step::MakeDir(path));
        }
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

    /// Records, before [`Transaction::apply`] journals anything, which
    /// units the change will start (`stop`) and which it will stop or
    /// restart (`restart`): a recovery rolling the files back does the
    /// same to the units. An in-process rollback does it itself.
    /// The first path a step would change, if any: a transaction whose
    /// every step finds the host as it would leave it changes nothing.
    pub fn first_difference(&self) -> Option<PathBuf> {
        self.first_difference_where(|_| true)
    }

    /// [`Transaction::first_difference`] among the steps on paths `which` selects.
    pub fn first_difference_where(&self, which: impl Fn(&Path) -> bool) -> Option<PathBuf> {
        self.steps.iter().find(|step| which(step.path()) && !step.finds_done()).map(|step| step.path().to_path_buf())
    }

    /// Leaves out the steps that find the host as they would leave it, so
    /// that the changes reported (and journaled) are the real ones.
    pub fn skip_unchanged(&mut self) {
        self.steps.retain(|step| !step.finds_done());
    }

    /// The changes [`Transaction::apply`] would report, in its order and
    /// words, without touching the host: a plan for `--check`.
    pub fn preview(&self) -> Vec<Change> {
        let change = |kind: &str, path: &Path, source: String| Change {
            kind: kind.to_string(),
            path: path.display().to_string(),
            source,
        };
        let mut made: Vec<&Path> = Vec::new();
        let mut changes = Vec::new();
        for step in &self.steps {
            match step {
                Step::MakeDir(path) if path.is_dir() || made.contains(&path.as_path()) => {}
                Step::MakeDir(path) => {
                    made.push(path);
                    changes.push(change("mkdir", path, String::new()));
                }
                Step::Write { path, .. } => changes.push(change("write", path, String::new())),
                Step::Symlink { path, target } => changes.push(change("symlink", path, target.display().to_string())),
                Step::Remove(path) if path.symlink_metadata().is_ok() => {
                    changes.push(change("unlink", path, String::new()))
                }
                Step::Remove(_) => {}
            }
        }
        changes
    }

    pub fn on_rollback(&mut self, units: UnitsOnRollback) {
        self.on_rollback = units;
    }

    /// Adds the steps of `other`, planned on its own (for another caller's
    /// request), after this one's, so that both apply, journal and roll
    /// back as one; neither is applied yet.
    pub fn append(&mut self, other: Transaction) {
        debug_assert!(self.actions.is_empty() && other.actions.is_empty(), "appending to an applied transaction");
        self.steps.extend(other.steps);
        self.on_rollback.extend(other.on_rollback);
    }

    fn journal_path(&self) -> PathBuf {
        self.journal_dir.join(format!("{}.json", self.id))
    }

    /// A hidden name beside `path`, unique to this transaction and step.
    fn aside(&self, path: &Path, role: &str, index: usize) -> PathBuf {
        let name = path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
        path.with_file_name(format!("{TEMP_PREFIX}{role}-{}-{index}-{name}", self.id))
    }

    /// Journals and performs every step. On error, everything done so far is
    /// undone and the journal removed before the error is returned.
    pub fn apply(&mut self) -> Result<Vec<Change>> {
        retry_unresolved(&self.journal_dir)?;
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
        let mut touched = Touched::default();
        for step in &steps {
            let Some(action) = self.actions.get(action_index).cloned() else { break };
            if !step_matches(step, &action) {
                continue;
            }
            action_index += 1;
            if let Err(e) = perform(step, &action, &mut changes, &mut touched) {
                result = Err(e);
                break;
            }
        }
        if result.is_ok() {
            result = touched.sync();
        }
        self.steps = steps;
        match result {
            Ok(()) => Ok(changes),
            Err(e) if is_simulated_crash(&e) => Err(e),
            Err(e) => {
                match undo_all(&self.actions) {
                    Ok(()) => remove_journal(&self.journal_path())?,
                    Err(undo) => {
                        // The journal stays, so that the next start (or the
                        // next change) tries again.
                        tracing::error!("rolling back after '{e}' failed too: {undo}");
                        remember_unresolved(&self.journal_path());
                        return Err(Error::NotUndone { error: Box::new(e), undo: Box::new(undo) });
                    }
                }
                Err(e)
            }
        }
    }

    /// Makes the applied changes final: backups are dropped.
    pub fn commit(self) -> Result<()> {
        if self.actions.is_empty() {
            return Ok(());
        }
        crash_point()?;
        self.write_journal(State::Committed)?;
        if let Err(e) = finish(&self.actions) {
            if is_simulated_crash(&e) {
                return Err(e);
            }
            remember_unresolved(&self.journal_path());
            return Err(e);
        }
        remove_journal(&self.journal_path())
    }

    /// Undoes the applied changes: the host is as it was before `apply`.
    pub fn rollback(self) -> Result<()> {
        if self.actions.is_empty() {
            return Ok(());
        }
        if let Err(e) = undo_all(&self.actions) {
            remember_unresolved(&self.journal_path());
            return Err(e);
        }
        remove_journal(&self.journal_path())
    }

    fn write_journal(&self, state: State) -> Result<()> {
        let journal = Journal { state, actions: self.actions.clone(), on_rollback: self.on_rollback.clone() };
        let text = serde_json::to_vec_pretty(&journal)
            .map_err(|e| Error::Journal { path: self.journal_path(), reason: e.to_string() })?;
        crash_point()?;
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
    action_path(action) == step_path
}

fn action_path(action: &Action) -> &Path {
    match action {
        Action::CreateDir { path } | Action::Create { path, .. } => path,
        Action::Replace { path, .. } | Action::Remove { path, .. } | Action::RemoveDir { path, .. } => path,
    }
}

/// The directories whose entries an apply changed, each synced once when
/// every step is done (before apply returns, so before systemd is told):
/// one sync per directory instead of one per file makes a batch of
/// hundreds of units cheap. Until then the journal, synced first, says what
/// to undo, whatever part of the renames reached the disk.
#[derive(Debug, Default)]
struct Touched(std::collections::BTreeSet<PathBuf>);

impl Touched {
    fn parent_of(&mut self, path: &Path) {
        if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
            self.0.insert(parent.to_path_buf());
        }
    }

    fn sync(&self) -> Result<()> {
        for dir in &self.0 {
            // Gone: a later step moved it away (a drop-in directory emptied,
            // then removed), and its own parent is synced instead.
            fs::File::open(dir).and_then(|d| d.sync_all()).or_else(not_found_ok).map_err(io(dir))?;
        }
        Ok(())
    }
}

fn perform(step: &Step, action: &Action, changes: &mut Vec<Change>, touched: &mut Touched) -> Result<()> {
    let record = |changes: &mut Vec<Change>, kind: &str, path: &Path, source: &str| {
        changes.push(Change { kind: kind.into(), path: path.display().to_string(), source: source.into() })
    };
    // Errors name the file being changed: the temporaries are wharf's business.
    match (step, action) {
        (Step::MakeDir(path), Action::CreateDir { .. }) => {
            crash_point()?;
            fs::create_dir(path).map_err(io(path))?;
            fs::set_permissions(path, fs::Permissions::from_mode(0o755)).map_err(io(path))?;
            touched.parent_of(path);
            record(changes, "mkdir", path, "");
        }
        (Step::Write { path, contents, mode }, Action::Create { temp, .. } | Action::Replace { temp, .. }) => {
            crash_point()?;
            write_new(temp, contents, *mode).map_err(io(path))?;
            put_in_place(action, path, temp)?;
            touched.parent_of(path);
            record(changes, "write", path, "");
        }
        (Step::Symlink { path, target }, Action::Create { temp, .. } | Action::Replace { temp, .. }) => {
            crash_point()?;
            remove_if_there(temp)?;
            symlink(target, temp).map_err(io(path))?;
            put_in_place(action, path, temp)?;
            touched.parent_of(path);
            record(changes, "symlink", path, &target.display().to_string());
        }
        (Step::Remove(path), Action::Remove { backup, .. } | Action::RemoveDir { backup, .. }) => {
            crash_point()?;
            fs::rename(path, backup).map_err(io(path))?;
            touched.parent_of(path);
            record(changes, "unlink", path, "");
        }
        _ => unreachable!("actions are planned from their steps"),
    }
    Ok(())
}

/// Renames the written temporary over `path`; a file it replaces is first
/// hard-linked to its backup name, so `path` exists at every moment.
fn put_in_place(action: &Action, path: &Path, temp: &Path) -> Result<()> {
    if let Action::Replace { backup, .. } = action {
        crash_point()?;
        remove_if_there(backup)?;
        fs::hard_link(path, backup).map_err(io(path))?;
    }
    crash_point()?;
    fs::rename(temp, path).map_err(io(path))
}

/// Removes a file if it is there; a parent that is not a directory means
/// it is not there either.
fn remove_if_there(path: &Path) -> Result<()> {
    match fs::remove_file(path) {
        Err(e) if !matches!(e.kind(), std::io::ErrorKind::NotFound | std::io::ErrorKind::NotADirectory) => {
            Err(io(path)(e))
        }
        _ => Ok(()),
    }
}

/// Undoes actions in reverse order; each undo is safe whether or not its
/// action had happened (or half happened) before a crash, and whether or
/// not it was undone before. Every undo is tried; the first error is returned.
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
    match action {
        Action::CreateDir { path } => remove_created_dir(path),
        Action::Create { path, temp } => {
            remove_if_there(temp)?;
            remove_if_there(path)?;
            sync_parent(path).or_else(not_found_ok).map_err(io(path))
        }
        Action::Replace { path, backup, temp } => {
            remove_if_there(temp)?;
            // No backup means the old file was never linked away: it is still in place.
            if backup.symlink_metadata().is_ok() {
                fs::rename(backup, path).map_err(io(path))?;
                // A rename between two links of one file does nothing.
                remove_if_there(backup)?;
            }
            sync_parent(path).or_else(not_found_ok).map_err(io(path))
        }
        Action::Remove { path, backup } | Action::RemoveDir { path, backup } => {
            if backup.symlink_metadata().is_ok() {
                fs::rename(backup, path).map_err(io(path))?;
                sync_parent(path).map_err(io(path))?;
            }
            Ok(())
        }
    }
}

fn not_found_ok(e: std::io::Error) -> std::io::Result<()> {
    if e.kind() == std::io::ErrorKind::NotFound { Ok(()) } else { Err(e) }
}

/// Removes a directory the transaction made. wharf's own temporaries in it
/// go first; a file someone else put there since is kept, and so is the
/// directory holding it (removing it would lose their file, and a drop-in
/// directory without the unit is harmless).
fn remove_created_dir(path: &Path) -> Result<()> {
    // Not a directory: the step failed before making it (something else has the name).
    if !path.symlink_metadata().is_ok_and(|m| m.is_dir()) {
        return Ok(());
    }
    if let Ok(entries) = fs::read_dir(path) {
        for entry in entries.flatten() {
            if is_temporary_name(&entry.file_name()) {
                remove_any(&entry.path())?;
            }
        }
    }
    match fs::remove_dir(path) {
        Ok(()) => sync_parent(path).map_err(io(path)),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::DirectoryNotEmpty => {
            tracing::warn!(path = %path.display(), "kept: it holds files wharf did not write");
            Ok(())
        }
        Err(e) => Err(io(path)(e)),
    }
}

fn remove_any(path: &Path) -> Result<()> {
    let is_dir = path.symlink_metadata().is_ok_and(|m| m.is_dir());
    let removed = if is_dir { fs::remove_dir_all(path) } else { fs::remove_file(path) };
    removed.or_else(not_found_ok).map_err(io(path))
}

/// Drops the backups of committed actions (and any leftover temporary).
fn finish(actions: &[Action]) -> Result<()> {
    for action in actions {
        crash_point()?;
        match action {
            Action::Replace { backup, temp, .. } => {
                remove_if_there(backup)?;
                remove_if_there(temp)?;
            }
            Action::Remove { backup, .. } => remove_if_there(backup)?,
            Action::Create { temp, .. } => remove_if_there(temp)?,
            Action::CreateDir { .. } => {}
            Action::RemoveDir { backup, .. } => remove_any(backup)?,
        }
    }
    Ok(())
}

fn remove_journal(path: &Path) -> Result<()> {
    crash_point()?;
    fs::remove_file(path).map_err(io(path))?;
    sync_parent(path).map_err(io(path))
}

/// Rolls back (prepared) or completes (committed) one journal, then
/// removes it. Returns what must be done to units after a rollback.
fn recover_one(path: &Path) -> Result<UnitsOnRollback> {
    let text = match fs::read(path) {
        Ok(text) => text,
        // Resolved meanwhile (by another retry).
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(UnitsOnRollback::default()),
        Err(e) => return Err(io(path)(e)),
    };
    let journal: Journal = serde_json::from_slice(&text)
        .map_err(|e| Error::Journal { path: path.to_path_buf(), reason: e.to_string() })?;
    let units = match journal.state {
        State::Prepared => {
            tracing::warn!(journal = %path.display(), "rolling back an interrupted change");
            undo_all(&journal.actions)?;
            journal.on_rollback
        }
        State::Committed => {
            tracing::info!(journal = %path.display(), "finishing an interrupted commit");
            finish(&journal.actions)?;
            UnitsOnRollback::default()
        }
    };
    remove_journal(path)?;
    Ok(units)
}

/// What [`recover`] did.
#[derive(Debug, Default)]
pub struct Recovery {
    /// Journals rolled back or finished: systemd must reload if any.
    pub recovered: usize,
    /// Journals that could not be read, moved aside.
    pub quarantined: Vec<PathBuf>,
    /// Journals whose undo failed: kept, and retried before any new change.
    pub unresolved: Vec<(PathBuf, String)>,
    /// Temporaries left by a crash beside the units, removed.
    pub temporaries: usize,
    /// What the rolled-back changes had done to units, to be put back by
    /// the caller (which has systemd): stop these, reload, restart those.
    pub units: UnitsOnRollback,
}

/// Finishes what a crash interrupted: every journal in `journal_dir` is
/// rolled back (prepared) or completed (committed); one that cannot be read
/// is quarantined and the others are still recovered; then every wharf
/// temporary left in `unit_dirs` (and the directories in them) is removed.
/// Runs before wharfd takes any call, so no change is in progress.
pub fn recover(journal_dir: &Path, unit_dirs: &[PathBuf]) -> Result<Recovery> {
    let mut report = Recovery::default();
    let entries = match fs::read_dir(journal_dir) {
        Ok(entries) => entries.collect::<std::io::Result<Vec<_>>>().map_err(io(journal_dir))?,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Vec::new(),
        Err(e) => return Err(io(journal_dir)(e)),
    };
    let mut journals: Vec<PathBuf> = Vec::new();
    for entry in entries {
        let path = entry.path();
        if is_temporary_name(&entry.file_name()) {
            // A journal write that was interrupted: the change it was about
            // to describe had not begun.
            remove_any(&path)?;
        } else if path.extension().is_some_and(|ext| ext == "json") && !path.is_dir() {
            journals.push(path);
        }
    }
    // Oldest first: a later change may build on an earlier one.
    journals.sort();
    for path in journals {
        match recover_one(&path) {
            Ok(units) => {
                report.recovered += 1;
                report.units.extend(units);
            }
            Err(Error::Journal { reason, .. }) => {
                let quarantine = journal_dir.join(QUARANTINE);
                let moved = fs::create_dir_all(&quarantine)
                    .and_then(|()| fs::rename(&path, quarantine.join(path.file_name().unwrap_or_default())));
                tracing::error!(journal = %path.display(), "unreadable journal quarantined in {}: {reason}", quarantine.display());
                moved.map_err(io(&path))?;
                report.quarantined.push(path);
            }
            Err(e) => {
                tracing::error!(journal = %path.display(), "an interrupted change could not be put back: {e}");
                remember_unresolved(&path);
                report.unresolved.push((path, e.to_string()));
            }
        }
    }
    if report.unresolved.is_empty() {
        report.temporaries = remove_temporaries(unit_dirs)?;
    }
    Ok(report)
}

/// Removes wharf's temporaries and backups from `dirs` and the directories
/// directly in them (drop-in and enablement directories): once every
/// journal is resolved, none of them is part of any change.
fn remove_temporaries(dirs: &[PathBuf]) -> Result<usize> {
    let mut removed = 0;
    let mut sweep = |dir: &Path| -> Result<Vec<PathBuf>> {
        let mut subdirs = Vec::new();
        let Ok(entries) = fs::read_dir(dir) else { return Ok(subdirs) };
        for entry in entries.flatten() {
            let path = entry.path();
            if is_temporary_name(&entry.file_name()) {
                tracing::warn!(path = %path.display(), "removing a temporary left by a crash");
                remove_any(&path)?;
                removed += 1;
            } else if entry.file_type().is_ok_and(|t| t.is_dir()) {
                subdirs.push(path);
            }
        }
        Ok(subdirs)
    };
    for dir in dirs {
        for subdir in sweep(dir)? {
            sweep(&subdir)?;
        }
    }
    Ok(removed)
}

// Where tests stop the work as a crash would: the Nth call fails, and the
// failure is not undone (the process is dead).
#[cfg(test)]
thread_local! {
    static CRASH_AT: std::cell::Cell<Option<usize>> = const { std::cell::Cell::new(None) };
}

#[cfg(test)]
const SIMULATED_CRASH: &str = "simulated crash";

fn crash_point() -> Result<()> {
    #[cfg(test)]
    {
        let left = CRASH_AT.get();
        if let Some(left) = left {
            if left == 0 {
                return Err(Error::Journal { path: PathBuf::new(), reason: SIMULATED_CRASH.into() });
            }
            CRASH_AT.set(Some(left - 1));
        }
    }
    Ok(())
}

fn is_simulated_crash(_error: &Error) -> bool {
    #[cfg(test)]
    if let Error::Journal { reason, .. } = _error {
        return reason == SIMULATED_CRASH;
    }
    false
}

/// An undo step that did not work: what it was to put back, and why not.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FailedUndo {
    /// What the step was doing, e.g. "reloading systemd".
    pub step: String,
    pub reason: String,
}

impl std::fmt::Display for FailedUndo {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} ({})", self.step, self.reason)
    }
}

/// The undoing of a failed operation (`during`): every step is tried
/// whatever became of the ones before, and each failure is logged and kept,
/// so that the error reported can say exactly what was not put back
/// instead of claiming the host is as it was.
#[derive(Debug)]
pub struct Undo {
    during: &'static str,
    failed: Vec<FailedUndo>,
}

impl Undo {
    pub fn new(during: &'static str) -> Undo {
        Undo { during, failed: Vec::new() }
    }

    /// Records the outcome of one undo step.
    pub fn step<T, E: std::fmt::Display>(&mut self, what: &str, result: std::result::Result<T, E>) {
        if let Err(e) = result {
            tracing::error!("undoing {}: {what}: {e}", self.during);
            self.failed.push(FailedUndo { step: what.to_string(), reason: e.to_string() });
        }
    }

    /// The steps that failed, in the order they were tried; empty when the
    /// host was put back completely.
    pub fn finish(self) -> Vec<FailedUndo> {
        self.failed
    }
}

/// The failed undo steps as one clause of a one-line error.
pub fn describe_failed(failed: &[FailedUndo]) -> String {
    failed.iter().map(ToString::to_string).collect::<Vec<_>>().join("; ")
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
        assert_eq!(recover(&journal, std::slice::from_ref(&units)).unwrap().recovered, 1);
        assert!(!units.join("new.service").exists());
        assert_eq!(fs::read_to_string(units.join("old.service")).unwrap(), "old");
        assert_eq!(listing(&units), ["old.service"]);

        // A crash in the middle of a commit: the new state is kept, backups go.
        let mut tx = Transaction::new(&journal);
        tx.write(units.join("old.service"), "replaced", 0o644);
        tx.apply().unwrap();
        tx.write_journal(State::Committed).unwrap();
        std::mem::forget(tx);
        assert_eq!(recover(&journal, std::slice::from_ref(&units)).unwrap().recovered, 1);
        assert_eq!(fs::read_to_string(units.join("old.service")).unwrap(), "replaced");
        assert_eq!(listing(&units), ["old.service"]);
        assert_eq!(recover(&journal, std::slice::from_ref(&units)).unwrap().recovered, 0);
        fs::remove_dir_all(&root).unwrap();
    }

    /// What the interrupted change did to units comes back from the
    /// journal of a rollback, and nothing from one that was committed.
    #[test]
    fn recovery_reports_the_units_to_put_back() {
        let root = scratch("recover-units");
        let units = root.join("units");
        let journal = root.join("journal");
        let put_back = UnitsOnRollback {
            stop: vec!["new.service".into()],
            restart: vec!["old.service".into()],
            terminate_machines: vec!["new".into()],
            start_machines: vec!["old".into()],
        };

        let mut tx = Transaction::new(&journal);
        tx.write(units.join("new.service"), "new", 0o644);
        tx.on_rollback(put_back.clone());
        tx.apply().unwrap();
        std::mem::forget(tx);
        let report = recover(&journal, std::slice::from_ref(&units)).unwrap();
        assert_eq!((report.recovered, report.units), (1, put_back.clone()));

        let mut tx = Transaction::new(&journal);
        tx.write(units.join("new.service"), "new", 0o644);
        tx.on_rollback(put_back);
        tx.apply().unwrap();
        tx.write_journal(State::Committed).unwrap();
        std::mem::forget(tx);
        let report = recover(&journal, std::slice::from_ref(&units)).unwrap();
        assert_eq!((report.recovered, report.units), (1, UnitsOnRollback::default()));
        fs::remove_dir_all(&root).unwrap();
    }

    /// The host as a sorted list of (path, what it holds).
    fn snapshot(dir: &Path) -> Vec<(String, String)> {
        let mut out: Vec<(String, String)> = walk(dir)
            .into_iter()
            .map(|p| {
                let name = p.strip_prefix(dir).unwrap().display().to_string();
                let meta = p.symlink_metadata().unwrap();
                let what = if meta.is_symlink() {
                    format!("-> {}", fs::read_link(&p).unwrap().display())
                } else if meta.is_dir() {
                    "dir".to_string()
                } else {
                    fs::read_to_string(&p).unwrap()
                };
                (name, what)
            })
            .collect();
        out.sort();
        out
    }

    /// A host with a unit to replace, one to remove, and a transaction
    /// that adds, replaces, links and removes.
    fn crash_fixture(root: &Path) -> Transaction {
        let units = root.join("units");
        let _ = fs::remove_dir_all(&units);
        let _ = fs::remove_dir_all(root.join("journal"));
        fs::create_dir_all(units.join("gone.service.d")).unwrap();
        fs::write(units.join("old.service"), "old").unwrap();
        fs::write(units.join("gone.service"), "gone").unwrap();
        fs::write(units.join("gone.service.d/20-portable.conf"), "x").unwrap();
        std::os::unix::fs::symlink("/old/target", units.join("link.service")).unwrap();
        let mut tx = Transaction::new(&root.join("journal"));
        tx.make_dir(units.join("a.service.d"));
        tx.write(units.join("a.service.d/20-portable.conf"), "x", 0o644);
        tx.write(units.join("a.service"), "a", 0o644);
        tx.write(units.join("old.service"), "new", 0o644);
        tx.symlink(units.join("link.service"), "/new/target");
        tx.make_dir(units.join("multi-user.target.wants"));
        tx.symlink(units.join("multi-user.target.wants/a.service"), units.join("a.service"));
        tx.remove(units.join("gone.service"));
        tx.remove(units.join("gone.service.d/20-portable.conf"));
        tx.remove(units.join("gone.service.d"));
        tx
    }

    /// A crash at every point of apply: recovery puts the host back exactly
    /// as it was, with no temporary and no journal left.
    #[test]
    fn a_crash_anywhere_in_apply_is_rolled_back_completely() {
        let root = scratch("crash-apply");
        let units = root.join("units");
        crash_fixture(&root);
        let before = snapshot(&units);
        let mut points = 0;
        loop {
            let mut tx = crash_fixture(&root);
            CRASH_AT.set(Some(points));
            let result = tx.apply();
            CRASH_AT.set(None);
            std::mem::forget(tx);
            let report = recover(&root.join("journal"), std::slice::from_ref(&units)).unwrap();
            assert!(report.unresolved.is_empty() && report.quarantined.is_empty(), "{report:?}");
            assert_eq!(snapshot(&units), before, "crash at point {points}");
            assert_eq!(listing(&root.join("journal")), Vec::<String>::new(), "crash at point {points}");
            if result.is_ok() {
                break;
            }
            points += 1;
        }
        assert!(points > 10, "only {points} crash points");
        fs::remove_dir_all(&root).unwrap();
    }

    /// A crash at every point of a commit: recovery completes it.
    #[test]
    fn a_crash_anywhere_in_commit_is_completed() {
        let root = scratch("crash-commit");
        let units = root.join("units");
        crash_fixture(&root);
        let before = snapshot(&units);
        let mut tx = crash_fixture(&root);
        tx.apply().unwrap();
        tx.commit().unwrap();
        let after = snapshot(&units);
        let mut points = 0;
        loop {
            let mut tx = crash_fixture(&root);
            tx.apply().unwrap();
            CRASH_AT.set(Some(points));
            let result = tx.commit();
            CRASH_AT.set(None);
            let report = recover(&root.join("journal"), std::slice::from_ref(&units)).unwrap();
            assert!(report.unresolved.is_empty(), "{report:?}");
            // Before the commit is journaled, the change is rolled back;
            // after, it is completed.
            let now = snapshot(&units);
            // Points 0 and 1 are before the journal says committed.
            if points <= 1 {
                assert_eq!(now, before, "crash before the commit was journaled");
            } else {
                assert_eq!(now, after, "crash at commit point {points}");
            }
            assert_eq!(listing(&root.join("journal")), Vec::<String>::new(), "crash at point {points}");
            if result.is_ok() {
                break;
            }
            points += 1;
        }
        assert!(points > 5, "only {points} crash points");
        fs::remove_dir_all(&root).unwrap();
    }

    /// Between the backup link and the rename, and after, the unit exists.
    #[test]
    fn a_replaced_unit_never_goes_missing() {
        let root = scratch("replace");
        let units = root.join("units");
        fs::write(units.join("old.service"), "old").unwrap();
        let mut points = 0;
        loop {
            fs::write(units.join("old.service"), "old").unwrap();
            let mut tx = Transaction::new(&root.join("journal"));
            tx.write(units.join("old.service"), "new", 0o644);
            CRASH_AT.set(Some(points));
            let result = tx.apply();
            CRASH_AT.set(None);
            let text = fs::read_to_string(units.join("old.service")).unwrap();
            assert!(text == "old" || text == "new", "crash at point {points}: {text:?}");
            std::mem::forget(tx);
            recover(&root.join("journal"), std::slice::from_ref(&units)).unwrap();
            assert_eq!(fs::read_to_string(units.join("old.service")).unwrap(), "old");
            if result.is_ok() {
                break;
            }
            points += 1;
        }
        assert_eq!(listing(&units), ["old.service"]);
        fs::remove_dir_all(&root).unwrap();
    }

    /// An empty journal temporary (a kill while the journal was written) and
    /// a journal that does not parse do not stop the others' recovery.
    #[test]
    fn unreadable_journals_are_quarantined_and_the_rest_recovered() {
        let root = scratch("quarantine");
        let units = root.join("units");
        let journal = root.join("journal");
        let mut tx = Transaction::new(&journal);
        tx.write(units.join("new.service"), "new", 0o644);
        tx.apply().unwrap();
        std::mem::forget(tx);
        fs::write(journal.join(".#wharf-77-0-0000-77-0.json"), "").unwrap();
        fs::write(journal.join("0000-bad.json"), "{\"state\": \"Prep").unwrap();
        // A temporary whose journal is gone, beside the units and in a drop-in directory.
        fs::create_dir(units.join("x.service.d")).unwrap();
        fs::write(units.join("x.service.d/.#wharf-new-1-0-20-portable.conf"), "").unwrap();
        fs::write(units.join(".#wharf-77-0-.#wharf-new-1-0-x.service"), "").unwrap();
        fs::write(units.join("x.service.d/20-portable.conf"), "kept").unwrap();
        let report = recover(&journal, std::slice::from_ref(&units)).unwrap();
        assert_eq!(report.recovered, 1);
        assert_eq!(report.quarantined, [journal.join("0000-bad.json")]);
        assert_eq!(report.temporaries, 2);
        assert_eq!(listing(&units), ["x.service.d", "x.service.d/20-portable.conf"]);
        assert_eq!(listing(&journal), ["quarantine", "quarantine/0000-bad.json"]);
        // Quarantined journals are not read again.
        assert_eq!(recover(&journal, std::slice::from_ref(&units)).unwrap().recovered, 0);
        fs::remove_dir_all(&root).unwrap();
    }

    /// A directory the transaction made holds a leftover temporary and a
    /// file someone else wrote: the undo removes the first, keeps the second.
    #[test]
    fn undoing_a_made_directory_survives_leftovers() {
        let root = scratch("leftover");
        let units = root.join("units");
        let journal = root.join("journal");
        let mut tx = Transaction::new(&journal);
        tx.make_dir(units.join("a.service.d"));
        tx.write(units.join("a.service.d/20-portable.conf"), "x", 0o644);
        tx.make_dir(units.join("b.service.d"));
        tx.write(units.join("b.service.d/20-portable.conf"), "x", 0o644);
        tx.apply().unwrap();
        fs::write(units.join("a.service.d/.#wharf-9-9-stray"), "").unwrap();
        fs::write(units.join("b.service.d/50-admin.conf"), "mine").unwrap();
        std::mem::forget(tx);
        let report = recover(&journal, std::slice::from_ref(&units)).unwrap();
        assert!(report.unresolved.is_empty(), "{report:?}");
        assert_eq!(listing(&units), ["b.service.d", "b.service.d/50-admin.conf"]);
        assert_eq!(listing(&journal), Vec::<String>::new());
        fs::remove_dir_all(&root).unwrap();
    }

    /// An undo that cannot finish keeps its journal, refuses every new
    /// change until it can, and never undoes what came after it.
    #[test]
    fn an_unfinished_recovery_blocks_changes_until_resolved() {
        let root = scratch("unresolved");
        let units = root.join("units");
        let journal = root.join("journal");
        fs::write(units.join("old.service"), "old").unwrap();
        let mut tx = Transaction::new(&journal);
        tx.write(units.join("old.service"), "new", 0o644);
        tx.apply().unwrap();
        std::mem::forget(tx);
        // Something in the way of putting the old file back: a directory
        // where the file was.
        fs::remove_file(units.join("old.service")).unwrap();
        fs::create_dir_all(units.join("old.service/in-the-way")).unwrap();
        let report = recover(&journal, std::slice::from_ref(&units)).unwrap();
        assert_eq!(report.unresolved.len(), 1, "{report:?}");
        // Its backup is not swept away while the journal needs it.
        assert_eq!(listing(&journal).len(), 1);

        let mut later = Transaction::new(&journal);
        later.write(units.join("later.service"), "later", 0o644);
        let refused = later.apply().unwrap_err();
        assert!(matches!(refused, Error::Unrecovered { .. }), "{refused}");
        assert!(refused.to_string().contains("in-the-way") || refused.to_string().contains("old.service"), "{refused}");
        assert!(!units.join("later.service").exists());

        // Once the obstacle is gone, the next change first finishes the undo.
        fs::remove_dir_all(units.join("old.service")).unwrap();
        let mut later = Transaction::new(&journal);
        later.write(units.join("later.service"), "later", 0o644);
        later.apply().unwrap();
        later.commit().unwrap();
        assert_eq!(fs::read_to_string(units.join("old.service")).unwrap(), "old");
        assert_eq!(listing(&units), ["later.service", "old.service"]);
        assert_eq!(listing(&journal), Vec::<String>::new());
        // A restart has nothing to roll back: the later change stays.
        assert_eq!(recover(&journal, std::slice::from_ref(&units)).unwrap().recovered, 0);
        assert!(units.join("later.service").exists());
        fs::remove_dir_all(&root).unwrap();
    }
}
