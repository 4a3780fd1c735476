//! Group commit: one thread makes many sessions' renames durable together.
//!
//! A message is accepted when its envelope's rename into `incoming/` is on
//! disk. The file contents are synced by their writers (concurrently, so the
//! filesystem journal merges them); what is left is the directory entries.
//! Callers queue their renames here; the committer takes everything queued,
//! syncs the body directory once (so no envelope can become durable before
//! its body's name is), performs the renames, syncs each touched directory
//! once, and answers every caller. Under load one directory sync covers
//! dozens of messages, which is what lets one process accept hundreds of
//! messages a second with `250` meaning "on disk".

use std::collections::BTreeSet;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::mpsc;
use tokio::sync::oneshot;

/// One durable rename.
#[derive(Debug)]
pub struct Rename {
    pub from: PathBuf,
    pub to: PathBuf,
}

struct Request {
    renames: Vec<Rename>,
    sync_first: Option<PathBuf>,
    done: oneshot::Sender<io::Result<()>>,
}

/// Handle to the committer thread; cheap to clone.
#[derive(Clone, Debug)]
pub struct Committer {
    tx: mpsc::Sender<Request>,
}

impl std::fmt::Debug for Request {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Request").field("renames", &self.renames).finish()
    }
}

impl Committer {
    pub fn start() -> Committer {
        let (tx, rx) = mpsc::channel::<Request>();
        std::thread::Builder::new()
            .name("posthorn-commit".into())
            .spawn(move || run(rx))
            .expect("spawning the committer thread");
        Committer { tx }
    }

    /// Performs `renames` in order and returns once they are durable.
    /// `sync_first` names a directory to sync before any rename (the body
    /// directory, for new messages).
    pub async fn commit(&self, renames: Vec<Rename>, sync_first: Option<PathBuf>) -> io::Result<()> {
        let (done, wait) = oneshot::channel();
        self.tx
            .send(Request { renames, sync_first, done })
            .map_err(|_| io::Error::other("the spool committer has stopped"))?;
        wait.await.map_err(|_| io::Error::other("the spool committer has stopped"))?
    }
}

fn run(rx: mpsc::Receiver<Request>) {
    while let Ok(first) = rx.recv() {
        let mut batch = vec![first];
        while let Ok(more) = rx.try_recv() {
            batch.push(more);
        }
        commit_batch(batch);
    }
}

fn commit_batch(batch: Vec<Request>) {
    let first_dirs: BTreeSet<&Path> = batch.iter().filter_map(|r| r.sync_first.as_deref()).collect();
    let mut failure = first_dirs.iter().find_map(|d| sync_dir(d).err());
    let mut results = Vec::with_capacity(batch.len());
    let mut touched = BTreeSet::new();
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

/// fsync of a directory, which makes the names in it durable.
pub fn sync_dir(dir: &Path) -> io::Result<()> {
    std::fs::File::open(dir)?.sync_all()
}
