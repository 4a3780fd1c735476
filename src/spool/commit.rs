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
//!
//! A failed sync must fail every request whose writes it may have lost,
//! not only the batch it ran for. The kernel reports a writeback error once
//! per open file (errseq): `syncfs` through one long-lived descriptor, open
//! since before the first write, sees every error once, where a fresh
//! descriptor per batch would miss those already reported elsewhere. And the
//! pages that failed may belong to a writer whose request is still to come
//! (it wrote while the failing sync ran): so each writer notes the count of
//! failed syncs (`FailedSyncs`) before it writes, and a request is refused
//! when a sync failed since. Linux reports writeback errors through
//! `syncfs` only from 5.8 on; on older kernels `batch` falls back to
//! `per-file`, with a warning (`effective_mode`).

pub(crate) use crate::config::SyncMode;
use std::collections::BTreeSet;
use std::fs::File;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
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
    /// A name removed after the renames (a finished message's envelope).
    unlink: Option<PathBuf>,
    /// Before the renames, these files' contents and this directory's
    /// entries must be durable: the directory to sync under `PerFile`; any
    /// value means "syncfs first" under `Batch`.
    sync_first: Option<PathBuf>,
    /// `FailedSyncs::count` from before the request's files were written.
    written_at: u64,
    done: oneshot::Sender<io::Result<()>>,
}

/// How many syncs of the spool have failed in this process; see the module
/// comment. A writer reads `count` before it writes and hands it to `commit`.
#[derive(Debug, Default)]
pub(crate) struct FailedSyncs(AtomicU64);

impl FailedSyncs {
    pub(crate) fn count(&self) -> u64 {
        self.0.load(Ordering::Acquire)
    }
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
    /// Starts the committer thread. `fs` is a descriptor on the spool's
    /// filesystem, open since before any write the committer makes durable
    /// (for `syncfs`); `failed` is shared with the writers. Its renames hold
    /// `moves` shared, so a listing never reads the state directories
    /// half-way through a batch.
    pub(crate) fn start(
        mode: SyncMode,
        fs: Arc<File>,
        failed: Arc<FailedSyncs>,
        moves: Arc<super::MoveLock>,
    ) -> Committer {
        let (tx, rx) = mpsc::channel::<Request>();
        let state = State { mode, fs, failed, moves, last_error: None };
        std::thread::Builder::new()
            .name("posthorn-commit".into())
            .spawn(move || run(rx, state))
            .expect("spawning the committer thread");
        Committer { tx }
    }

    /// Performs `renames` in order and returns once they are durable.
    /// `sync_first` names the directory of files just written whose
    /// contents and names must be durable before any rename (the body
    /// directory, for new messages); see `Request`. `written_at` is
    /// `FailedSyncs::count` from before those files were written.
    pub(crate) async fn commit(
        &self,
        renames: Vec<Rename>,
        sync_first: Option<PathBuf>,
        written_at: u64,
    ) -> io::Result<()> {
        let (done, wait) = oneshot::channel();
        self.tx
            .send(Request { renames, unlink: None, sync_first, written_at, done })
            .map_err(|_| io::Error::other("the spool committer has stopped"))?;
        wait.await.map_err(|_| io::Error::other("the spool committer has stopped"))?
    }

    /// Removes `path` and returns once the removal is durable: its
    /// directory is synced with the batch's others, so a finished message
    /// cannot come back after a crash to be delivered again.
    pub(crate) async fn unlink(&self, path: PathBuf, written_at: u64) -> io::Result<()> {
        let (done, wait) = oneshot::channel();
        self.tx
            .send(Request { renames: Vec::new(), unlink: Some(path), sync_first: None, written_at, done })
            .map_err(|_| io::Error::other("the spool committer has stopped"))?;
        wait.await.map_err(|_| io::Error::other("the spool committer has stopped"))?
    }
}

/// What the committer thread keeps between batches.
struct State {
    mode: SyncMode,
    fs: Arc<File>,
    failed: Arc<FailedSyncs>,
    moves: Arc<super::MoveLock>,
    /// The last sync failure, for the requests it dooms later.
    last_error: Option<(io::ErrorKind, String)>,
}

impl State {
    fn sync_failed(&mut self, e: &io::Error) {
        self.failed.0.fetch_add(1, Ordering::AcqRel);
        self.last_error = Some((e.kind(), e.to_string()));
    }

    /// Refuses a request written before a sync that failed: its pages may
    /// be the ones that were lost.
    fn doomed(&self, req: &Request) -> Option<io::Error> {
        if req.written_at == self.failed.count() {
            return None;
        }
        let (kind, text) = self.last_error.clone().unwrap_or((io::ErrorKind::Other, "unknown error".into()));
        Some(io::Error::new(kind, format!("a sync of the spool failed after this was written: {text}")))
    }
}

fn run(rx: mpsc::Receiver<Request>, mut state: State) {
    while let Ok(first) = rx.recv() {
        let mut batch = vec![first];
        while let Ok(more) = rx.try_recv() {
            batch.push(more);
        }
        commit_batch(batch, &mut state);
    }
}

fn commit_batch(batch: Vec<Request>, state: &mut State) {
    let first_dirs: BTreeSet<&Path> = batch.iter().filter_map(|r| r.sync_first.as_deref()).collect();
    let mut failure = match (state.mode, first_dirs.is_empty()) {
        (_, true) => None,
        (SyncMode::Batch, false) => rustix::fs::syncfs(&*state.fs).map_err(io::Error::from).err(),
        (SyncMode::PerFile, false) => first_dirs.iter().find_map(|d| sync_dir(d).err()),
    };
    if let Some(e) = &failure {
        state.sync_failed(e);
    }
    let mut results = Vec::with_capacity(batch.len());
    let mut touched = BTreeSet::new();
    let moving = state.moves.moving();
    for req in &batch {
        let result = match (&failure, state.doomed(req)) {
            (Some(e), _) => Err(io::Error::new(e.kind(), e.to_string())),
            (None, Some(doomed)) => Err(doomed),
            (None, None) => req
                .renames
                .iter()
                .try_for_each(|r| {
                    std::fs::rename(&r.from, &r.to)?;
                    touched.extend(r.from.parent().map(Path::to_path_buf));
                    touched.extend(r.to.parent().map(Path::to_path_buf));
                    Ok(())
                })
                .and_then(|()| match &req.unlink {
                    Some(path) => {
                        std::fs::remove_file(path)?;
                        touched.extend(path.parent().map(Path::to_path_buf));
                        Ok(())
                    }
                    None => Ok(()),
                }),
        };
        results.push(result);
    }
    drop(moving);
    if failure.is_none() {
        failure = touched.iter().find_map(|d| sync_dir(d).err());
        if let Some(e) = &failure {
            state.sync_failed(e);
        }
    }
    for (req, result) in batch.into_iter().zip(results) {
        let result = match (&failure, result) {
            (Some(e), Ok(())) => Err(io::Error::new(e.kind(), format!("syncing the spool: {e}"))),
            (_, r) => r,
        };
        let _ = req.done.send(result);
    }
}

/// The way of syncing to use on this kernel: `batch` needs `syncfs` to
/// report writeback errors, which Linux does from 5.8 on. The spool warns
/// when its committer starts with the fallback.
pub(crate) fn effective_mode(mode: SyncMode) -> SyncMode {
    let release = rustix::system::uname().release().to_string_lossy().into_owned();
    match mode {
        SyncMode::Batch if !reports_writeback_errors(&release) => SyncMode::PerFile,
        _ => mode,
    }
}

/// Whether a kernel `release` (`uname -r`) is 5.8 or later; one that does
/// not parse is taken to be recent.
fn reports_writeback_errors(release: &str) -> bool {
    let mut parts = release.split(|c: char| !c.is_ascii_digit()).map(|p| p.parse::<u32>());
    match (parts.next(), parts.next()) {
        (Some(Ok(major)), Some(Ok(minor))) => (major, minor) >= (5, 8),
        _ => true,
    }
}

/// fsync of a directory, which makes the names in it durable.
pub(crate) fn sync_dir(dir: &Path) -> io::Result<()> {
    std::fs::File::open(dir)?.sync_all()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kernels_that_report_writeback_errors() {
        let cases = [
            ("6.18.44-fc-v1252", true),
            ("5.8.0", true),
            ("5.10.0-28-amd64", true),
            ("5.7.19", false),
            ("4.19.0-27-cloud-amd64", false),
            ("3.10.0-1160.el7.x86_64", false),
            ("weird", true),
        ];
        for (release, expected) in cases {
            assert_eq!(reports_writeback_errors(release), expected, "{release}");
        }
    }

    /// A request written before a sync failed is refused, also in a later
    /// batch whose own sync succeeds; one written after the failure is not.
    #[test]
    fn a_failed_sync_dooms_everything_written_before_it() {
        let dir = tempfile::tempdir().unwrap();
        let failed = Arc::new(FailedSyncs::default());
        let mut state = State {
            mode: SyncMode::Batch,
            fs: Arc::new(File::open(dir.path()).unwrap()),
            failed: failed.clone(),
            moves: Arc::default(),
            last_error: None,
        };
        let before = failed.count();
        let request = |name: &str, written_at: u64| {
            std::fs::write(dir.path().join(name), b"x").unwrap();
            let rename = Rename { from: dir.path().join(name), to: dir.path().join(format!("{name}.done")) };
            let (done, wait) = oneshot::channel();
            (
                Request { renames: vec![rename], unlink: None, sync_first: Some(dir.path().into()), written_at, done },
                wait,
            )
        };
        let (a, a_done) = request("a", before);
        commit_batch(vec![a], &mut state);
        assert!(a_done.blocking_recv().unwrap().is_ok());

        // `b` was written while a sync failed (its pages may be the lost ones).
        let (b, b_done) = request("b", before);
        state.sync_failed(&io::Error::from_raw_os_error(libc::EIO));
        let (c, c_done) = request("c", failed.count());
        commit_batch(vec![b, c], &mut state);
        let e = b_done.blocking_recv().unwrap().unwrap_err();
        assert!(e.to_string().contains("failed after this was written") && e.to_string().contains("os error 5"), "{e}");
        assert!(!dir.path().join("b.done").exists());
        assert!(c_done.blocking_recv().unwrap().is_ok());
        assert!(dir.path().join("c.done").exists());
    }

    /// An unlink is made with the batch and answered once its directory is
    /// synced; a name already gone is reported, not hidden.
    #[tokio::test]
    async fn an_unlink_is_answered_once_durable() {
        let dir = tempfile::tempdir().unwrap();
        let fs = Arc::new(File::open(dir.path()).unwrap());
        let committer = Committer::start(SyncMode::Batch, fs, Arc::default(), Arc::default());
        let path = dir.path().join("ENVELOPE");
        std::fs::write(&path, b"{}").unwrap();
        committer.unlink(path.clone(), 0).await.unwrap();
        assert!(!path.exists());
        let again = committer.unlink(path, 0).await.unwrap_err();
        assert_eq!(again.kind(), io::ErrorKind::NotFound);
    }
}
