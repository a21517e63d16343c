//! A tree that lives on a thread of its own and answers over a channel.
//!
//! Two readers need it: ext4-view's file system handle is `Rc`-based and so
//! cannot move between threads, while [`Tree`] must be `Send` (the daemon
//! reads images on a blocking thread pool); and a mounted erofs image lives
//! in a private mount namespace that belongs to one thread. The thread owns
//! the reader from its construction to its end, so whatever the reader holds
//! (mount, loop device, temporary directory) is released on that thread, and
//! dropping the [`ServedTree`] waits until it has been.

use std::any::Any;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::path::Path;
use std::sync::mpsc;
use std::thread::JoinHandle;

use super::tree::{EntryType, Tree, TreeError};
use super::{Error, ImageKind, Result};

/// [`Tree`]'s primitives without the `Send` bound, for readers that stay on
/// the serving thread.
pub(crate) trait LocalTree {
    fn entry_type(&mut self, path: &str) -> Result<Option<EntryType>, TreeError>;
    fn read_link(&mut self, path: &str) -> Result<String, TreeError>;
    fn read_file(&mut self, path: &str, limit: u64) -> Result<Vec<u8>, TreeError>;
    fn read_dir(&mut self, path: &str) -> Result<Vec<(String, EntryType)>, TreeError>;
}

type Job = Box<dyn FnOnce(&mut dyn LocalTree) + Send>;

/// A [`LocalTree`] served by its own thread; see the module documentation.
pub(crate) struct ServedTree {
    jobs: Option<mpsc::Sender<Job>>,
    thread: Option<JoinHandle<()>>,
    access: &'static str,
}

impl std::fmt::Debug for ServedTree {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ServedTree").field("access", &self.access).finish()
    }
}

/// The text of a caught panic, for an error message.
pub(crate) fn panic_message(panic: &(dyn Any + Send)) -> String {
    if let Some(text) = panic.downcast_ref::<&str>() {
        text.to_string()
    } else if let Some(text) = panic.downcast_ref::<String>() {
        text.clone()
    } else {
        "panic".to_string()
    }
}

impl ServedTree {
    /// Starts a thread that builds a tree with `make` and then serves it.
    /// Returns once `make` is done: its error is this function's error.
    pub(crate) fn spawn<T, F>(image: &Path, kind: ImageKind, access: &'static str, make: F) -> Result<ServedTree>
    where
        T: LocalTree + 'static,
        F: FnOnce() -> Result<T> + Send + 'static,
    {
        let (ready_tx, ready_rx) = mpsc::sync_channel::<Result<()>>(1);
        let (jobs_tx, jobs_rx) = mpsc::channel::<Job>();
        let failed = {
            let image = image.to_path_buf();
            move |panic: Box<dyn Any + Send>| Error::Corrupt {
                image,
                kind,
                reason: format!("the {kind} reader failed: {}", panic_message(&*panic)),
            }
        };
        let thread = std::thread::Builder::new()
            .name(format!("wharf-{kind}"))
            .spawn(move || {
                let mut tree = match catch_unwind(AssertUnwindSafe(make)) {
                    Ok(Ok(tree)) => tree,
                    Ok(Err(e)) => {
                        let _ = ready_tx.send(Err(e));
                        return;
                    }
                    Err(panic) => {
                        let _ = ready_tx.send(Err(failed(panic)));
                        return;
                    }
                };
                let _ = ready_tx.send(Ok(()));
                // Ends when the ServedTree drops its sender; `tree` is dropped
                // (unmounted, detached) right after, on this thread.
                for job in jobs_rx {
                    job(&mut tree);
                }
            })
            .map_err(Error::io(image))?;
        let ready = ready_rx.recv();
        let mut served = ServedTree { jobs: Some(jobs_tx), thread: Some(thread), access };
        match ready {
            Ok(Ok(())) => Ok(served),
            Ok(Err(e)) => Err(e),
            Err(_) => {
                served.stop();
                Err(Error::Corrupt { image: image.to_path_buf(), kind, reason: format!("the {kind} reader stopped") })
            }
        }
    }

    /// Runs `op` on the serving thread and waits for its answer. A panic in
    /// the reader becomes an error about `path`.
    fn call<R, F>(&mut self, path: &str, op: F) -> Result<R, TreeError>
    where
        R: Send + 'static,
        F: FnOnce(&mut dyn LocalTree) -> Result<R, TreeError> + Send + 'static,
    {
        let gone =
            |path: &str| TreeError::Corrupt { path: path.to_string(), reason: "the image reader stopped".into() };
        let (answer_tx, answer_rx) = mpsc::sync_channel(1);
        let owned_path = path.to_string();
        let job: Job = Box::new(move |tree| {
            let answer = catch_unwind(AssertUnwindSafe(|| op(tree))).unwrap_or_else(|panic| {
                Err(TreeError::Corrupt {
                    path: owned_path,
                    reason: format!("the image reader failed: {}", panic_message(&*panic)),
                })
            });
            let _ = answer_tx.send(answer);
        });
        let jobs = self.jobs.as_ref().ok_or_else(|| gone(path))?;
        jobs.send(job).map_err(|_| gone(path))?;
        answer_rx.recv().map_err(|_| gone(path))?
    }

    /// Ends the serving thread and waits until it has released the tree.
    fn stop(&mut self) {
        self.jobs.take();
        if let Some(thread) = self.thread.take() {
            // A panic while dropping the tree has been reported by the panic
            // hook already; there is nobody left to tell.
            let _ = thread.join();
        }
    }
}

impl Drop for ServedTree {
    fn drop(&mut self) {
        self.stop();
    }
}

impl Tree for ServedTree {
    fn entry_type(&mut self, path: &str) -> Result<Option<EntryType>, TreeError> {
        let owned = path.to_string();
        self.call(path, move |tree| tree.entry_type(&owned))
    }

    fn read_link(&mut self, path: &str) -> Result<String, TreeError> {
        let owned = path.to_string();
        self.call(path, move |tree| tree.read_link(&owned))
    }

    fn read_file(&mut self, path: &str, limit: u64) -> Result<Vec<u8>, TreeError> {
        let owned = path.to_string();
        self.call(path, move |tree| tree.read_file(&owned, limit))
    }

    fn read_dir(&mut self, path: &str) -> Result<Vec<(String, EntryType)>, TreeError> {
        let owned = path.to_string();
        self.call(path, move |tree| tree.read_dir(&owned))
    }

    fn access(&self) -> &'static str {
        self.access
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicBool, Ordering};

    use super::super::tree::memory::{MemoryTree, Node};
    use super::*;

    /// A non-Send tree that records when it is dropped.
    struct Local {
        inner: MemoryTree,
        dropped: Arc<AtomicBool>,
        _not_send: std::rc::Rc<()>,
    }

    impl Drop for Local {
        fn drop(&mut self) {
            self.dropped.store(true, Ordering::SeqCst);
        }
    }

    impl LocalTree for Local {
        fn entry_type(&mut self, path: &str) -> Result<Option<EntryType>, TreeError> {
            Tree::entry_type(&mut self.inner, path)
        }
        fn read_link(&mut self, path: &str) -> Result<String, TreeError> {
            Tree::read_link(&mut self.inner, path)
        }
        fn read_file(&mut self, path: &str, limit: u64) -> Result<Vec<u8>, TreeError> {
            if path == "/panic" {
                panic!("forged inode");
            }
            Tree::read_file(&mut self.inner, path, limit)
        }
        fn read_dir(&mut self, path: &str) -> Result<Vec<(String, EntryType)>, TreeError> {
            Tree::read_dir(&mut self.inner, path)
        }
    }

    #[test]
    fn serves_a_non_send_tree_and_releases_it_on_drop() {
        let dropped = Arc::new(AtomicBool::new(false));
        let flag = dropped.clone();
        let mut served = ServedTree::spawn(Path::new("x.raw"), ImageKind::Ext4, "test", move || {
            Ok(Local {
                inner: MemoryTree::with(&[("/a/b", Node::File(b"hi".to_vec())), ("/panic", Node::File(vec![]))]),
                dropped: flag,
                _not_send: std::rc::Rc::new(()),
            })
        })
        .unwrap();
        assert_eq!(served.entry_type("/a").unwrap(), Some(EntryType::Dir));
        assert_eq!(served.read_file("/a/b", 10).unwrap(), b"hi");
        let error = served.read_file("/panic", 10).unwrap_err().to_string();
        assert_eq!(error, "/panic: the image reader failed: forged inode");
        // The thread survives a panic in one call.
        assert_eq!(served.read_dir("/a").unwrap(), [("b".to_string(), EntryType::File)]);
        assert!(!dropped.load(Ordering::SeqCst));
        drop(served);
        assert!(dropped.load(Ordering::SeqCst), "dropping waits until the tree is released");
    }

    #[test]
    fn construction_errors_and_panics_are_returned() {
        let error = ServedTree::spawn::<Local, _>(Path::new("x.raw"), ImageKind::Ext4, "test", || {
            Err(Error::NotAnImage("x.raw".into()))
        })
        .unwrap_err();
        assert!(matches!(error, Error::NotAnImage(_)));
        let error =
            ServedTree::spawn::<Local, _>(Path::new("x.raw"), ImageKind::Ext4, "test", || panic!("bad superblock"))
                .unwrap_err();
        assert_eq!(error.to_string(), "image 'x.raw': corrupt ext4 image: the ext4 reader failed: bad superblock");
    }
}
