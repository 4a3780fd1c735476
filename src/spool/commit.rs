//! Group commit: one thread makes many sessions' renames durable together.
//!
//! A message is accepted when its envelope's rename into `incoming/` is on
//! disk. Callers queue their renames here; the committer takes everything
//! queued as one batch, makes the batch's file contents durable, performs
//! the renames, syncs each touched directory once (not `tmp/`, whose names
//! leaving need not be durable), and answers every caller. Under load one
//! batch covers dozens of messages, which is what lets one process accept
//! many hundreds of messages a second with `250` meaning "on disk"; a
//! commit alone is never kept waiting for others.
//!
//! Removals of finished messages (`forget`) are not waited for: their
//! directories are synced with the next batch (a batch of them alone
//! waits up to `LAZY_WINDOW` for new mail to share the sync), and then the
//! reaper thread unlinks their bodies.
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
use std::time::Duration;
use tokio::sync::oneshot;

/// How long a batch of removals alone waits for new mail to share its
/// sync with: nobody waits for a removal (`Committer::forget`), while a
/// session waits for its commit, so removals ride along with commits and
/// cost no journal flush of their own under load. A crash inside the
/// window can bring back messages finished in it, which are then
/// delivered again, like any delivery cut off.
const LAZY_WINDOW: Duration = Duration::from_millis(20);

/// A test hook for the crash tests (tests/crash_points.rs): when the
/// daemon runs with `POSTHORN_CRASH_AT=NAME:N`, the Nth time it reaches the
/// point `NAME` of the commit or removal path it kills itself with SIGKILL,
/// as `kill -9` would, so a test can stop it between any two steps. The
/// points, in order: `commit-written` (body and envelope written, nothing
/// synced), `commit-synced` (contents durable, no rename), `commit-renamed`
/// (renamed, directory not synced), `commit-durable` (synced, not yet
/// answered); `remove-unlinked` (a delivered message's envelope unlinked,
/// not synced), `remove-synced` (its removal durable, body still there).
pub(crate) fn crash_point(name: &str) {
    static AT: std::sync::OnceLock<Option<(String, u64)>> = std::sync::OnceLock::new();
    static REACHED: AtomicU64 = AtomicU64::new(0);
    let at = AT.get_or_init(|| {
        let value = std::env::var("POSTHORN_CRASH_AT").ok()?;
        let (point, nth) = value.split_once(':').unwrap_or((&value, "1"));
        Some((point.to_string(), nth.parse().unwrap_or(1)))
    });
    if let Some((point, nth)) = at
        && point == name
        && REACHED.fetch_add(1, Ordering::AcqRel) + 1 == *nth
    {
        let _ = rustix::process::kill_process(rustix::process::getpid(), rustix::process::Signal::KILL);
    }
}

/// One durable rename.
#[derive(Debug)]
pub(crate) struct Rename {
    pub(crate) from: PathBuf,
    pub(crate) to: PathBuf,
}

struct Request {
    renames: Vec<Rename>,
    /// A finished message whose envelope the caller has unlinked: its
    /// directory is synced with the batch, then the body is unlinked.
    forget: Option<Forget>,
    /// Answered only once every body handed to the reaper before it is
    /// unlinked (`Committer::settle`).
    settle: bool,
    /// Before the renames, these files' contents and this directory's
    /// entries must be durable: the directory to sync under `PerFile`; any
    /// value means "syncfs first" under `Batch`.
    sync_first: Option<PathBuf>,
    /// `FailedSyncs::count` from before the request's files were written.
    written_at: u64,
    done: oneshot::Sender<io::Result<()>>,
}

/// A finished message: the directory its envelope was unlinked from, and
/// its body.
#[derive(Debug)]
struct Forget {
    dir: PathBuf,
    body: PathBuf,
}

/// What the reaper thread is asked: unlink a body whose envelope's
/// removal is durable, or answer once everything before is done.
enum Reap {
    Body(PathBuf),
    Settled(oneshot::Sender<io::Result<()>>),
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
    /// half-way through a batch. `scratch` is the spool's `tmp/`, whose
    /// names leaving need not be durable (recovery sweeps it).
    pub(crate) fn start(
        mode: SyncMode,
        fs: Arc<File>,
        failed: Arc<FailedSyncs>,
        moves: Arc<super::MoveLock>,
        scratch: PathBuf,
    ) -> Committer {
        let (tx, rx) = mpsc::channel::<Request>();
        let (reap, reaper) = mpsc::channel::<Reap>();
        std::thread::Builder::new()
            .name("posthorn-reaper".into())
            .spawn(move || run_reaper(reaper))
            .expect("spawning the reaper thread");
        let state = State { mode, fs, failed, moves, scratch, reap, last_error: None };
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
            .send(Request { renames, forget: None, settle: false, sync_first, written_at, done })
            .map_err(|_| io::Error::other("the spool committer has stopped"))?;
        wait.await.map_err(|_| io::Error::other("the spool committer has stopped"))?
    }

    /// Finishes the removal of a message whose envelope the caller has just
    /// unlinked from `dir`, without waiting: `dir` is synced with a coming
    /// batch (within `LAZY_WINDOW`), and only then is `body` unlinked, by
    /// the reaper thread, so that a body never goes before its envelope
    /// and the committer never waits for a large file's truncation.
    pub(crate) fn forget(&self, dir: PathBuf, body: PathBuf, written_at: u64) {
        let (done, _) = oneshot::channel();
        let forget = Some(Forget { dir, body });
        // A stopped committer leaves the body for recovery to set aside.
        let _ =
            self.tx.send(Request { renames: Vec::new(), forget, settle: false, sync_first: None, written_at, done });
    }

    /// Returns once every request queued before is durable and every body
    /// they handed to the reaper is unlinked: what a clean stop waits for,
    /// so that it leaves no orphan body behind.
    pub(crate) async fn settle(&self, written_at: u64) -> io::Result<()> {
        let (done, wait) = oneshot::channel();
        self.tx
            .send(Request { renames: Vec::new(), forget: None, settle: true, sync_first: None, written_at, done })
            .map_err(|_| io::Error::other("the spool committer has stopped"))?;
        wait.await.map_err(|_| io::Error::other("the spool committer has stopped"))?
    }
}

/// Unlinks the bodies of finished messages, off the committer's thread
/// (ext4 frees a large file's blocks inside `unlink`). A body already gone
/// is no error; another failure leaves it for recovery to set aside.
fn run_reaper(rx: mpsc::Receiver<Reap>) {
    while let Ok(job) = rx.recv() {
        match job {
            Reap::Body(path) => match std::fs::remove_file(&path) {
                Err(e) if e.kind() != io::ErrorKind::NotFound => {
                    tracing::warn!("cannot remove the body {}: {e}", path.display());
                }
                _ => {}
            },
            Reap::Settled(done) => {
                let _ = done.send(Ok(()));
            }
        }
    }
}

/// What the committer thread keeps between batches.
struct State {
    mode: SyncMode,
    fs: Arc<File>,
    failed: Arc<FailedSyncs>,
    moves: Arc<super::MoveLock>,
    scratch: PathBuf,
    reap: mpsc::Sender<Reap>,
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

/// Takes everything queued as one batch, at once: a commit alone is never
/// kept waiting. Only a batch of removals alone waits, up to
/// `LAZY_WINDOW`, for something to share its sync with.
fn run(rx: mpsc::Receiver<Request>, mut state: State) {
    while let Ok(first) = rx.recv() {
        let mut batch = vec![first];
        while let Ok(more) = rx.try_recv() {
            batch.push(more);
        }
        if batch.iter().all(|r| r.forget.is_some())
            && let Ok(more) = rx.recv_timeout(LAZY_WINDOW)
        {
            batch.push(more);
            while let Ok(more) = rx.try_recv() {
                batch.push(more);
            }
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
    let renaming = batch.iter().any(|r| !r.renames.is_empty());
    let forgetting = batch.iter().any(|r| r.forget.is_some());
    if renaming {
        crash_point("commit-synced");
    }
    let mut results = Vec::with_capacity(batch.len());
    let mut touched = BTreeSet::new();
    let moving = state.moves.moving();
    for req in &batch {
        let result = match (&failure, state.doomed(req)) {
            (Some(e), _) => Err(io::Error::new(e.kind(), e.to_string())),
            (None, Some(doomed)) => Err(doomed),
            (None, None) => req.renames.iter().try_for_each(|r| {
                std::fs::rename(&r.from, &r.to)?;
                // A name leaving `tmp/` need not be durable: see the
                // module comment of `spool` and docs/spool.md.
                touched.extend(r.from.parent().filter(|d| *d != state.scratch).map(Path::to_path_buf));
                touched.extend(r.to.parent().map(Path::to_path_buf));
                Ok(())
            }),
        };
        touched.extend(req.forget.as_ref().map(|f| f.dir.clone()));
        results.push(result);
    }
    drop(moving);
    if renaming {
        crash_point("commit-renamed");
    }
    if failure.is_none() {
        failure = touched.iter().find_map(|d| sync_dir(d).err());
        if let Some(e) = &failure {
            state.sync_failed(e);
        }
    }
    if renaming {
        crash_point("commit-durable");
    }
    if forgetting {
        crash_point("remove-synced");
    }
    for (req, result) in batch.into_iter().zip(results) {
        let result = match (&failure, result) {
            (Some(e), Ok(())) => Err(io::Error::new(e.kind(), format!("syncing the spool: {e}"))),
            (_, r) => r,
        };
        // A body goes only once its envelope's removal is durable; after
        // a failed sync it stays, for recovery to set aside.
        if let (Some(forget), Ok(())) = (req.forget, &result) {
            let _ = state.reap.send(Reap::Body(forget.body));
        }
        if req.settle && result.is_ok() {
            // The reaper answers once the bodies sent before are gone.
            if let Err(mpsc::SendError(Reap::Settled(done))) = state.reap.send(Reap::Settled(req.done)) {
                let _ = done.send(Err(io::Error::other("the spool reaper has stopped")));
            }
        } else {
            let _ = req.done.send(result);
        }
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
            scratch: dir.path().join("tmp"),
            reap: mpsc::channel().0,
            last_error: None,
        };
        let before = failed.count();
        let request = |name: &str, written_at: u64| {
            std::fs::write(dir.path().join(name), b"x").unwrap();
            let rename = Rename { from: dir.path().join(name), to: dir.path().join(format!("{name}.done")) };
            let (done, wait) = oneshot::channel();
            (
                Request {
                    renames: vec![rename],
                    forget: None,
                    settle: false,
                    sync_first: Some(dir.path().into()),
                    written_at,
                    done,
                },
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

    /// A forgotten message's body is unlinked only after its directory's
    /// sync, by the reaper; `settle` answers once it is gone, even inside
    /// the lazy window of a batch of removals alone.
    #[tokio::test]
    async fn a_body_goes_after_its_envelope_is_durably_gone() {
        let dir = tempfile::tempdir().unwrap();
        let fs = Arc::new(File::open(dir.path()).unwrap());
        let committer = Committer::start(SyncMode::Batch, fs, Arc::default(), Arc::default(), dir.path().join("tmp"));
        let bodies: Vec<PathBuf> = (0..3).map(|n| dir.path().join(format!("body{n}"))).collect();
        for body in &bodies {
            std::fs::write(body, b"text").unwrap();
            committer.forget(dir.path().to_path_buf(), body.clone(), 0);
        }
        committer.settle(0).await.unwrap();
        for body in &bodies {
            assert!(!body.exists(), "{} unlinked", body.display());
        }
        // A body already gone is no error.
        committer.forget(dir.path().to_path_buf(), bodies[0].clone(), 0);
        committer.settle(0).await.unwrap();
    }
}
