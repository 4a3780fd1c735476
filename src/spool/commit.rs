//! Group commit: one thread makes many sessions' renames durable together.
//!
//! A message is accepted when its envelope's rename into `incoming/` is on
//! disk. Callers queue their renames here; the committer takes everything
//! queued as one batch, makes the batch's file contents durable, performs
//! the renames, syncs each touched directory once, and answers every
//! caller. Under load one batch covers dozens of messages, which is what
//! lets one process accept many hundreds of messages a second with `250`
//! meaning "on disk".
//!
//! How contents become durable is the `SyncMode`:
//! - `Batch` (the default): writers only write; the committer calls
//!   `syncfs(2)` once per batch before any rename. One flush of the
//!   filesystem journal serves the whole batch. It also flushes whatever
//!   else is dirty on that filesystem, so a spool on a filesystem shared
//!   with heavy writers may prefer `PerFile`.
//! - `PerFile`: each writer `fdatasync`s its own files (concurrently, so the
//!   journal still merges them) and the committer syncs the body directory
//!   before the renames, as Postfix does.
//!
//! Either way no envelope can become durable before its body is.

pub(crate) use crate::config::SyncMode;
use std::collections::BTreeSet;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::{Arc, mpsc};
use tokio::sync::oneshot;

/// One durable rename.
#[derive(Debug)]
pub(crate) struct Rename {
    pub(crate) from: PathBuf,
    pub(crate) to: PathBuf,
}

struct Request {
    renames: Vec<Rename>,
    /// Before the renames, these files' contents and this directory's
    /// entries must be durable: the directory to sync under `PerFile`; any
    /// value means "syncfs first" under `Batch`.
    sync_first: Option<PathBuf>,
    done: oneshot::Sender<io::Result<()>>,
}

/// Handle to the committer thread; cheap to clone.
#[derive(Clone, Debug)]
pub(crate) struct Committer {
    tx: mpsc::Sender<Request>,
}

impl std::fmt::Debug for Request {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Request").field("renames", &self.renames).finish()
    }
}

impl Committer {
    /// Starts the committer thread; its renames hold `moves` shared, so a
    /// listing never reads the state directories half-way through a batch.
    pub(crate) fn start(mode: SyncMode, moves: Arc<super::MoveLock>) -> Committer {
        let (tx, rx) = mpsc::channel::<Request>();
        std::thread::Builder::new()
            .name("posthorn-commit".into())
            .spawn(move || run(rx, mode, &moves))
            .expect("spawning the committer thread");
        Committer { tx }
    }

    /// Performs `renames` in order and returns once they are durable.
    /// `sync_first` names the directory of files just written whose
    /// contents and names must be durable before any rename (the body
    /// directory, for new messages); see `Request`.
    pub(crate) async fn commit(&self, renames: Vec<Rename>, sync_first: Option<PathBuf>) -> io::Result<()> {
        let (done, wait) = oneshot::channel();
        self.tx
            .send(Request { renames, sync_first, done })
            .map_err(|_| io::Error::other("the spool committer has stopped"))?;
        wait.await.map_err(|_| io::Error::other("the spool committer has stopped"))?
    }
}

fn run(rx: mpsc::Receiver<Request>, mode: SyncMode, moves: &super::MoveLock) {
    while let Ok(first) = rx.recv() {
        let mut batch = vec![first];
        while let Ok(more) = rx.try_recv() {
            batch.push(more);
        }
        commit_batch(batch, mode, moves);
    }
}

fn commit_batch(batch: Vec<Request>, mode: SyncMode, moves: &super::MoveLock) {
    let first_dirs: BTreeSet<&Path> = batch.iter().filter_map(|r| r.sync_first.as_deref()).collect();
    let mut failure = match (mode, first_dirs.first()) {
        (_, None) => None,
        (SyncMode::Batch, Some(dir)) => sync_filesystem(dir).err(),
        (SyncMode::PerFile, Some(_)) => first_dirs.iter().find_map(|d| sync_dir(d).err()),
    };
    let mut results = Vec::with_capacity(batch.len());
    let mut touched = BTreeSet::new();
    let moving = moves.moving();
    for req in &batch {
        let result = match &failure {
            Some(e) => Err(io::Error::new(e.kind(), e.to_string())),
            None => req.renames.iter().try_for_each(|r| {
                std::fs::rename(&r.from, &r.to)?;
                touched.extend(r.from.parent().map(Path::to_path_buf));
                touched.extend(r.to.parent().map(Path::to_path_buf));
                Ok(())
            }),
        };
        results.push(result);
    }
    drop(moving);
    if failure.is_none() {
        failure = touched.iter().find_map(|d| sync_dir(d).err());
    }
    for (req, result) in batch.into_iter().zip(results) {
        let result = match (&failure, result) {
            (Some(e), Ok(())) => Err(io::Error::new(e.kind(), format!("syncing the spool: {e}"))),
            (_, r) => r,
        };
        let _ = req.done.send(result);
    }
}

/// syncfs(2) of the filesystem holding `dir`: every write made before the
/// call is durable when it returns, and a writeback error is reported.
fn sync_filesystem(dir: &Path) -> io::Result<()> {
    let f = std::fs::File::open(dir)?;
    rustix::fs::syncfs(&f).map_err(io::Error::from)
}

/// fsync of a directory, which makes the names in it durable.
pub(crate) fn sync_dir(dir: &Path) -> io::Result<()> {
    std::fs::File::open(dir)?.sync_all()
}
