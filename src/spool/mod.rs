//! The spool: queued messages as files, with every state change atomic.
//!
//! ```text
//! SPOOL/
//!   tmp/        files being written; swept at start-up
//!   data/ID     message bodies, written once, never changed
//!   incoming/ID envelopes accepted and not yet tried
//!   active/ID   envelopes being delivered right now
//!   deferred/ID envelopes waiting for their next attempt
//!   hold/ID     envelopes put on hold by an operator
//!   corrupt/ID  envelopes that could not be read, kept for inspection, and
//!               bodies no envelope refers to (body-NAME)
//!   maildrop/   `sendmail` drops, written by any local user (mode 1733)
//!   id-lease    every queue id handed out decodes below this (see `id`)
//!   posthorn.lock  locked by the daemon that owns the spool (see `lock`)
//! ```
//!
//! A message's state is the directory its envelope is in, so a state change
//! is one rename and a crash leaves every message in exactly one state. New
//! messages are committed as: body written and synced, envelope written to
//! `tmp/` and synced, then (group commit, see `commit`) body directory
//! synced, envelope renamed into `incoming/`, directory synced. The rename is
//! the commit point. Envelopes are updated the same way (write tmp, sync,
//! rename over), never in place. This module knows nothing of SMTP.
//! `space` watches the filesystem's free space (`queue.min_free`) and
//! remembers failing writes, for the door and the health check.

pub(crate) mod change;
pub(crate) mod commit;
pub mod envelope;
pub(crate) mod id;
pub(crate) mod lock;
pub(crate) mod space;

use envelope::Envelope;
use std::collections::HashSet;
use std::io::{self, Write};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::{Arc, OnceLock};

/// Bodies smaller than this are written with one system call at commit.
const BODY_BUFFER: usize = 256 * 1024;
/// Bodies up to this size are written (and read back) on the async thread.
pub(crate) const INLINE_WRITE: usize = 64 * 1024;

/// Where an envelope is; the directory of the same name.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub(crate) enum State {
    Incoming,
    Active,
    Deferred,
    Hold,
    Corrupt,
}

impl State {
    /// The state named by its directory name.
    pub(crate) fn from_dir_name(name: &str) -> Option<State> {
        State::QUEUED.into_iter().chain([State::Corrupt]).find(|s| s.dir_name() == name)
    }

    pub(crate) const QUEUED: [State; 4] = [State::Incoming, State::Active, State::Deferred, State::Hold];

    pub(crate) fn dir_name(self) -> &'static str {
        match self {
            State::Incoming => "incoming",
            State::Active => "active",
            State::Deferred => "deferred",
            State::Hold => "hold",
            State::Corrupt => "corrupt",
        }
    }
}

/// What start-up recovery found and did.
#[derive(Debug, Default)]
pub(crate) struct Recovery {
    pub(crate) tmp_removed: usize,
    pub(crate) active_requeued: usize,
    /// Bodies no envelope refers to (by file name), moved to `corrupt/body-NAME`.
    pub(crate) orphan_bodies: Vec<String>,
    pub(crate) missing_body: Vec<String>,
    /// Envelopes whose content names another message: (file name, id
    /// inside), moved to `corrupt/` under their file name.
    pub(crate) misnamed: Vec<(String, String)>,
    /// Entries recovery does not understand (a `lost+found`, a backup
    /// folder), left where they are: (path in the spool, what it is).
    pub(crate) skipped: Vec<(String, &'static str)>,
    pub(crate) newest_id: Option<String>,
}

#[derive(Debug)]
struct Inner {
    root: PathBuf,
    ids: id::IdGen,
    sync: commit::SyncMode,
    /// `batch` was asked for, and this kernel cannot report its failures.
    sync_fell_back: bool,
    committer: OnceLock<commit::Committer>,
    /// The spool's filesystem, open since the spool was: the committer's
    /// `syncfs` learns every writeback error through it (see `commit`).
    fs: Arc<std::fs::File>,
    failed_syncs: Arc<commit::FailedSyncs>,
    space: space::Space,
    moves: Arc<MoveLock>,
}

/// Held shared by every rename that moves an envelope from one queue state
/// to another, and exclusively by a listing while it reads the state
/// directories. Without it a message moving from a directory not yet read
/// to one already read (deferred -> active, say) is missed by the listing.
/// Reading the names of even 100,000 entries takes a few tens of
/// milliseconds, so movers wait at most that long.
#[derive(Debug, Default)]
pub(crate) struct MoveLock(std::sync::RwLock<()>);

impl MoveLock {
    /// Held while envelopes move; many movers at once.
    pub(crate) fn moving(&self) -> std::sync::RwLockReadGuard<'_, ()> {
        self.0.read().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Held while a listing reads the state directories; nothing moves.
    fn listing(&self) -> std::sync::RwLockWriteGuard<'_, ()> {
        self.0.write().unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

/// A handle to one spool directory; cheap to clone.
#[derive(Clone, Debug)]
pub(crate) struct Spool {
    inner: Arc<Inner>,
}

impl Spool {
    /// Opens (creating when needed) the spool at `root`. Ids handed out
    /// afterwards decode above `newest_id` and every id handed out
    /// before (the id lease).
    pub(crate) fn open(root: &Path, newest_id: Option<&str>) -> io::Result<Spool> {
        Spool::open_with(root, newest_id, commit::SyncMode::Batch)
    }

    /// `open` with an explicit way of making writes durable.
    pub(crate) fn open_with(root: &Path, newest_id: Option<&str>, sync: commit::SyncMode) -> io::Result<Spool> {
        let mut builder = std::fs::DirBuilder::new();
        builder.recursive(true).mode(0o700);
        builder.create(root)?;
        for dir in ["tmp", "data"].into_iter().chain(State::QUEUED.map(State::dir_name)).chain(["corrupt"]) {
            builder.create(root.join(dir))?;
        }
        let maildrop = root.join("maildrop");
        if !maildrop.exists() {
            builder.create(&maildrop)?;
            // Any local user may drop a message, none may read or remove
            // another's: write+search for all, sticky.
            std::fs::set_permissions(&maildrop, std::fs::Permissions::from_mode(0o1733))?;
            std::fs::set_permissions(root, std::fs::Permissions::from_mode(0o711))?;
        }
        let effective = commit::effective_mode(sync);
        Ok(Spool {
            inner: Arc::new(Inner {
                root: root.to_path_buf(),
                ids: id::IdGen::leased(newest_id, root.join("id-lease"))?,
                sync: effective,
                sync_fell_back: effective != sync,
                committer: OnceLock::new(),
                moves: Arc::default(),
                fs: Arc::new(std::fs::File::open(root)?),
                failed_syncs: Arc::default(),
                space: space::Space::new(root),
            }),
        })
    }

    pub(crate) fn root(&self) -> &Path {
        &self.inner.root
    }
    pub(crate) fn dir(&self, state: State) -> PathBuf {
        self.inner.root.join(state.dir_name())
    }
    pub(crate) fn maildrop_dir(&self) -> PathBuf {
        self.inner.root.join("maildrop")
    }
    pub(crate) fn envelope_path(&self, state: State, id: &str) -> PathBuf {
        self.dir(state).join(id)
    }
    pub(crate) fn body_path(&self, id: &str) -> PathBuf {
        self.inner.root.join("data").join(id)
    }
    fn tmp_path(&self, id: &str) -> PathBuf {
        self.inner.root.join("tmp").join(format!("{id}.{}", fastrand::u32(..)))
    }
    fn committer(&self) -> &commit::Committer {
        self.inner.committer.get_or_init(|| {
            if self.inner.sync_fell_back {
                tracing::warn!(
                    "queue.sync = batch needs Linux 5.8 or later, where syncfs reports failed writes: using per-file"
                );
            }
            commit::Committer::start(
                self.inner.sync,
                self.inner.fs.clone(),
                self.inner.failed_syncs.clone(),
                self.inner.moves.clone(),
                self.inner.root.join("tmp"),
            )
        })
    }

    /// Whether new mail may come in: at least `min_free` (`queue.min_free`;
    /// `None`: the default) available on the spool's filesystem.
    pub(crate) fn room(&self, min_free: Option<u64>) -> Result<(), space::NoRoom> {
        self.inner.space.room(min_free)
    }

    /// Why the spool's writes are failing, while they are.
    pub(crate) fn failing(&self) -> Option<String> {
        self.inner.space.failing()
    }

    /// Notes how a write ended for `failing`, and hands the result on.
    fn noted<T>(&self, result: io::Result<T>) -> io::Result<T> {
        self.inner.space.wrote(&result);
        result
    }

    pub(crate) fn new_id(&self) -> String {
        self.inner.ids.next()
    }

    /// Starts writing the body of message `id`.
    pub(crate) fn body_writer(&self, id: &str) -> BodyWriter {
        BodyWriter {
            path: self.body_path(id),
            buf: Vec::new(),
            file: None,
            size: 0,
            committed: false,
            written_at: self.inner.failed_syncs.count(),
        }
    }

    /// Makes a new message durable: the body's remaining bytes and the
    /// envelope are written and synced, then the envelope is renamed into
    /// `state` by the group committer: `incoming/`, or `hold/` for a
    /// message quarantined before it was accepted (a milter's or DMARC's
    /// verdict), which is thus never in `incoming/`, not even between a
    /// crash and a recovery. When this returns `Ok` the message survives a
    /// crash.
    pub(crate) async fn commit_new(&self, env: &Envelope, mut body: BodyWriter, state: State) -> io::Result<()> {
        let tmp = self.tmp_path(&env.id);
        let json = env.to_json();
        let (file, buf, path) = (body.file.take(), std::mem::take(&mut body.buf), body.path.clone());
        let tmp_for_write = tmp.clone();
        let per_file = self.inner.sync == commit::SyncMode::PerFile;
        let write = move || -> io::Result<()> {
            let mut file = match file {
                Some(f) => f,
                None => create_file(&path)?,
            };
            file.write_all(&buf)?;
            let mut env_file = create_file(&tmp_for_write)?;
            env_file.write_all(&json)?;
            if per_file {
                file.sync_data()?;
                env_file.sync_data()?;
            }
            Ok(())
        };
        // A small message that only waits for a batched sync is written
        // right here: two small writes into the page cache cost less than
        // handing them to another thread and back. Anything that may block
        // longer (a big body, a per-file sync) goes to the blocking pool.
        let written = if !per_file && body.file.is_none() && body.size <= INLINE_WRITE as u64 {
            write()
        } else {
            tokio::task::spawn_blocking(write).await.map_err(io::Error::other).and_then(|r| r)
        };
        if let Err(e) = written {
            let _ = std::fs::remove_file(&tmp);
            return self.noted(Err(e));
        }
        commit::crash_point("commit-written");
        let to = self.envelope_path(state, &env.id);
        let data_dir = self.inner.root.join("data");
        let renames = vec![commit::Rename { from: tmp.clone(), to }];
        match self.noted(self.committer().commit(renames, Some(data_dir), body.written_at).await) {
            Ok(()) => {
                body.committed = true;
                Ok(())
            }
            Err(e) => {
                let _ = std::fs::remove_file(&tmp);
                Err(e)
            }
        }
    }

    /// Reads one envelope.
    pub(crate) fn read_envelope(&self, state: State, id: &str) -> io::Result<Envelope> {
        let data = std::fs::read(self.envelope_path(state, id))?;
        Envelope::from_json(&data).map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))
    }

    /// Finds a message's envelope in whichever queue state it is.
    pub(crate) fn find(&self, id: &str) -> Option<(State, Envelope)> {
        if !id::is_valid(id) {
            return None;
        }
        State::QUEUED.into_iter().find_map(|s| self.read_envelope(s, id).ok().map(|e| (s, e)))
    }

    pub(crate) fn read_body(&self, id: &str) -> io::Result<Vec<u8>> {
        std::fs::read(self.body_path(id))
    }

    /// Writes `env` durably as the envelope in state `to`, replacing the one
    /// in state `from` (the same state for an update in place). Crash-safe:
    /// the new content lands in `from` first, then moves, each one rename.
    pub(crate) async fn save(&self, env: &Envelope, from: State, to: State) -> io::Result<()> {
        let tmp = self.tmp_path(&env.id);
        let json = env.to_json();
        let tmp_w = tmp.clone();
        let per_file = self.inner.sync == commit::SyncMode::PerFile;
        let written_at = self.inner.failed_syncs.count();
        let written = tokio::task::spawn_blocking(move || {
            let mut f = create_file(&tmp_w)?;
            f.write_all(&json)?;
            if per_file { f.sync_data() } else { Ok(()) }
        })
        .await
        .map_err(io::Error::other)
        .and_then(|r| r);
        if let Err(e) = written {
            // A short write on a full disk leaves a partial file behind.
            let _ = std::fs::remove_file(&tmp);
            return self.noted(Err(e));
        }
        let at_from = self.envelope_path(from, &env.id);
        let mut renames = vec![commit::Rename { from: tmp.clone(), to: at_from.clone() }];
        if from != to {
            renames.push(commit::Rename { from: at_from, to: self.envelope_path(to, &env.id) });
        }
        // Under `Batch` the new content is synced with the batch; under
        // `PerFile` it was synced above.
        let sync_first = (!per_file).then(|| self.inner.root.join("tmp"));
        let result = self.noted(self.committer().commit(renames, sync_first, written_at).await);
        if result.is_err() {
            let _ = std::fs::remove_file(&tmp);
        }
        result
    }

    /// A rename that need not be durable before the caller goes on: used
    /// for incoming -> active, which recovery undoes anyway.
    pub(crate) fn move_now(&self, id: &str, from: State, to: State) -> io::Result<()> {
        let _moving = self.inner.moves.moving();
        self.noted(std::fs::rename(self.envelope_path(from, id), self.envelope_path(to, id)))
    }

    /// Removes a finished message: the envelope at once (the point of
    /// "done"), made durable by the committer's next batch without the
    /// caller waiting for it (a crash before brings the message back, to
    /// be delivered again like any delivery cut off: docs/spool.md), then
    /// the body, by the reaper once the removal is durable. A crash
    /// between leaves an orphan body, which recovery moves to `corrupt/`.
    pub(crate) async fn remove(&self, state: State, id: &str) -> io::Result<()> {
        let envelope = self.envelope_path(state, id);
        {
            let _moving = self.inner.moves.moving();
            self.noted(std::fs::remove_file(envelope))?;
        }
        commit::crash_point("remove-unlinked");
        self.committer().forget(self.dir(state), self.body_path(id), self.inner.failed_syncs.count());
        Ok(())
    }

    /// Returns once every change queued before is durable and the bodies
    /// of removed messages are unlinked: a clean stop leaves no orphan.
    pub(crate) async fn settle(&self) -> io::Result<()> {
        self.committer().settle(self.inner.failed_syncs.count()).await
    }

    /// Ids of the envelopes in one state, unsorted; no envelope is read.
    pub(crate) fn list(&self, state: State) -> io::Result<Vec<String>> {
        let mut ids = Vec::new();
        for entry in std::fs::read_dir(self.dir(state))? {
            let name = entry?.file_name();
            if let Some(name) = name.to_str().filter(|n| id::is_valid(n)) {
                ids.push(name.to_string());
            }
        }
        Ok(ids)
    }

    /// Every queued message with its state, oldest first, each exactly
    /// once. The state directories are read with every move held off (see
    /// `MoveLock`), so each queued message's name is seen; an envelope that
    /// moves before it is read is looked for again in the other states, and
    /// one that left the queue meanwhile is not listed. Envelopes are read
    /// on a few threads: with a big queue the time goes into opening files,
    /// which the kernel does in parallel. Bodies are never read.
    pub(crate) fn collect(&self) -> Vec<(State, Envelope)> {
        let dirs: Vec<(State, rustix::fd::OwnedFd)> = State::QUEUED
            .into_iter()
            .filter_map(|s| {
                let flags = rustix::fs::OFlags::RDONLY | rustix::fs::OFlags::DIRECTORY | rustix::fs::OFlags::CLOEXEC;
                rustix::fs::open(self.dir(s), flags, rustix::fs::Mode::empty()).ok().map(|fd| (s, fd))
            })
            .collect();
        let mut files = self.names_at_once();
        // Ids sort in arrival order, so reading the files in id order gives
        // the listing in order: each thread takes a contiguous run.
        files.sort_unstable_by(|a, b| (id::arrival_key(&a.0), a.1).cmp(&(id::arrival_key(&b.0), b.1)));
        // A name in two states at once (not something a rename leaves, but
        // a copy made by hand) is listed once, in the earlier state.
        files.dedup_by(|a, b| a.0 == b.0);
        let threads = std::thread::available_parallelism().map_or(1, |n| n.get()).clamp(1, 8);
        let chunk = files.len().div_ceil(threads).max(256);
        // Each name is read where it was listed, else in the other states
        // (it moved since); `None` marks one not found anywhere.
        let read = |part: &[(String, State)]| -> Vec<Option<(State, Envelope)>> {
            let mut buf = Vec::with_capacity(16 * 1024);
            let moved = |state: State| State::QUEUED.into_iter().filter(move |s| *s != state);
            part.iter()
                .map(|(id, state)| {
                    std::iter::once(*state).chain(moved(*state)).find_map(|s| read_in(&dirs, s, id, &mut buf))
                })
                .collect()
        };
        let mut found: Vec<Option<(State, Envelope)>> = Vec::with_capacity(files.len());
        std::thread::scope(|scope| {
            let workers: Vec<_> = files.chunks(chunk).map(|part| scope.spawn(move || read(part))).collect();
            for worker in workers {
                found.append(&mut worker.join().unwrap_or_default());
            }
        });
        // A message missed everywhere may have moved again between the
        // looks: one last look for all of them, with nothing moving. Not
        // found then, it has left the queue.
        if found.iter().any(Option::is_none) {
            let _still = self.inner.moves.listing();
            let mut buf = Vec::new();
            for ((id, _), slot) in files.iter().zip(&mut found).filter(|(_, slot)| slot.is_none()) {
                *slot = State::QUEUED.into_iter().find_map(|s| read_in(&dirs, s, id, &mut buf));
            }
        }
        found.into_iter().flatten().collect()
    }

    /// The names in every queue state, read while nothing moves, so each
    /// queued message appears exactly once.
    fn names_at_once(&self) -> Vec<(String, State)> {
        let _listing = self.inner.moves.listing();
        self.names()
    }

    /// The names in every queue state, one directory after another, while
    /// messages may move: for `check`, whose messages do not move.
    fn names(&self) -> Vec<(String, State)> {
        let mut files = Vec::new();
        for state in State::QUEUED {
            let Ok(ids) = self.list(state) else { continue };
            files.extend(ids.into_iter().map(|id| (id, state)));
        }
        files
    }

    /// Moves an envelope that cannot be read to `corrupt/`; its body stays
    /// in `data/` (recovery keeps bodies of quarantined envelopes) for
    /// inspection.
    pub(crate) fn quarantine(&self, state: State, id: &str) -> io::Result<()> {
        std::fs::rename(self.envelope_path(state, id), self.envelope_path(State::Corrupt, id))
    }

    /// Returns once every rename queued before this call is durable.
    pub(crate) async fn barrier(&self) -> io::Result<()> {
        self.committer().commit(Vec::new(), None, self.inner.failed_syncs.count()).await
    }

    /// Operator actions (see `change`), run on a blocking thread. Each
    /// returns the state the message was found in (`None`: no such
    /// message). Directory syncs are left to `sync_states`, once per batch.
    ///
    /// `delete_envelope` for many messages at once, on several threads.
    pub(crate) fn delete_envelopes(&self, ids: &[String]) -> Vec<io::Result<Option<State>>> {
        on_threads(ids, |id| self.delete_envelope(id))
    }

    /// Unlinks the bodies of `ids` in the background, after their envelopes
    /// are gone; a crash before the end leaves orphan bodies, which recovery
    /// moves to `corrupt/`.
    pub(crate) fn remove_bodies(&self, ids: Vec<String>) {
        let spool = self.clone();
        std::thread::spawn(move || on_threads(&ids, |id| std::fs::remove_file(spool.body_path(id))));
    }

    /// Removes a message's envelope, whichever state it is in, and returns
    /// that state; the body is left for the caller (or recovery) to remove.
    /// Tries each directory's unlink directly: no separate lookup.
    pub(crate) fn delete_envelope(&self, id: &str) -> io::Result<Option<State>> {
        if !id::is_valid(id) {
            return Ok(None);
        }
        for state in [State::Deferred, State::Incoming, State::Hold, State::Active] {
            match std::fs::remove_file(self.envelope_path(state, id)) {
                Ok(()) => return Ok(Some(state)),
                Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
                Err(e) => return Err(e),
            }
        }
        Ok(None)
    }

    /// Puts a message on hold (`frozen`: Exim's freeze). A message already
    /// held is left where it is, with the frozen mark updated.
    pub(crate) fn hold(&self, id: &str, frozen: bool) -> io::Result<Option<State>> {
        let Some(state) = self.locate(id) else { return Ok(None) };
        self.rewrite_into(id, state, State::Hold, |env| env.frozen = frozen)?;
        Ok(Some(state))
    }

    /// Releases a held or frozen message to `incoming/`, due now.
    pub(crate) fn release(&self, id: &str) -> io::Result<Option<State>> {
        match self.locate(id) {
            Some(State::Hold) => {
                self.rewrite_into(id, State::Hold, State::Incoming, |env| env.frozen = false)?;
                Ok(Some(State::Hold))
            }
            other => Ok(other),
        }
    }

    /// Makes a waiting message due now (`postsuper -r`, `exim -M`).
    pub(crate) fn requeue(&self, id: &str) -> io::Result<Option<State>> {
        match self.locate(id) {
            Some(state @ (State::Deferred | State::Active)) => {
                self.move_now(id, state, State::Incoming)?;
                Ok(Some(state))
            }
            other => Ok(other),
        }
    }

    fn locate(&self, id: &str) -> Option<State> {
        if !id::is_valid(id) {
            return None;
        }
        State::QUEUED.into_iter().find(|s| self.envelope_path(*s, id).exists())
    }

    /// Rewrites an envelope with `change` and moves it from `from` to `to`,
    /// crash-safe (the new content lands in `from` first).
    fn rewrite_into(&self, id: &str, from: State, to: State, change: impl FnOnce(&mut Envelope)) -> io::Result<()> {
        let mut env = self.read_envelope(from, id)?;
        change(&mut env);
        let tmp = self.tmp_path(id);
        let mut f = self.noted(create_file(&tmp))?;
        let written = f.write_all(&env.to_json()).and_then(|()| {
            f.sync_data()?;
            std::fs::rename(&tmp, self.envelope_path(from, id))
        });
        if let Err(e) = written {
            // Nothing is left behind in tmp/ until the next start.
            let _ = std::fs::remove_file(&tmp);
            return self.noted(Err(e));
        }
        if from != to {
            self.move_now(id, from, to)?;
        }
        Ok(())
    }

    /// Syncs the queue directories after a batch of operator actions.
    pub(crate) fn sync_states(&self) -> io::Result<()> {
        for state in State::QUEUED {
            commit::sync_dir(&self.dir(state))?;
        }
        commit::sync_dir(&self.inner.root.join("data"))
    }

    /// Start-up recovery, whole, before anything else touches the spool:
    /// [`recover_quick`](Spool::recover_quick), then
    /// [`check`](Spool::check) of every queued message. The daemon runs
    /// the two halves apart (the check in the background, on what was
    /// queued before it started; see `docs/spool.md`); tests and a spool
    /// without an id lease run them together.
    pub(crate) fn recover(&self) -> io::Result<Recovery> {
        let mut report = self.recover_quick()?;
        let checked = self.check(None, |_| {})?;
        report.orphan_bodies = checked.orphan_bodies;
        report.missing_body = checked.missing_body;
        report.misnamed = checked.misnamed;
        report.skipped.extend(checked.skipped);
        report.newest_id = checked.newest_id;
        Ok(report)
    }

    /// The part of recovery that must be done before a session may write:
    /// sweeps half-written files out of `tmp/` and returns messages that
    /// were in delivery to `incoming/`. Its cost grows with what was in
    /// flight, never with the size of the queue.
    ///
    /// A full or failing disk does not stop it: a move that fails (a
    /// directory that would need a new block on a full filesystem) is
    /// logged with its errno and the entry left where it is. A message left
    /// in `active/` is loaded from there by the scheduler, and the rest is
    /// retried at the next start: starting, and delivering what is queued,
    /// is what frees the space.
    pub(crate) fn recover_quick(&self) -> io::Result<Recovery> {
        let mut report = Recovery::default();
        self.sweep_tmp(&mut report)?;
        for id in self.list(State::Active)? {
            match self.move_now(&id, State::Active, State::Incoming) {
                Ok(()) => report.active_requeued += 1,
                Err(e) => recovery_failed(&format!("{id}: cannot move from active/ to incoming/"), &e),
            }
        }
        if report.active_requeued > 0
            && let Err(e) = commit::sync_dir(&self.inner.root.join("incoming"))
        {
            recovery_failed("cannot sync incoming/", &e);
        }
        Ok(report)
    }

    /// The rest of recovery, and the index of the queue: reads every
    /// queued envelope whose id is at most `floor` (every one, for `None`),
    /// quarantines envelopes whose body is missing or whose content names
    /// another id, sets aside bodies that no envelope refers to, and hands
    /// each sound message to `found`, a batch at a time, with its next
    /// attempt and arrival. Messages above `floor` (mail accepted since
    /// the daemon started, whose files may be half written) are neither
    /// read nor judged: they are handed over without times. What it does
    /// not understand (a directory in `data/`) it leaves alone and reports.
    ///
    /// Nothing queued at or below `floor` may move while it runs: the
    /// daemon holds their deliveries and the operator's actions on the
    /// queue until it has finished (`queue::Scheduler`).
    pub(crate) fn check(&self, floor: Option<u64>, mut found: impl FnMut(Vec<Indexed>)) -> io::Result<Recovery> {
        let old = |id: &str| floor.is_none_or(|f| id::decode(id).is_some_and(|v| v <= f));
        let mut report = Recovery::default();
        // Without the move lock: nothing at or below the floor moves while
        // this runs, and what is above it is not judged. Holding the lock
        // would stall every commit for as long as a big queue takes to list
        // (seconds for a million names on a cold cache).
        let mut names = self.names();
        names.extend(self.list(State::Corrupt)?.into_iter().map(|id| (id, State::Corrupt)));
        report.newest_id = names.iter().map(|(id, _)| id).max_by_key(|id| id::decode(id)).cloned();
        if let Some(newest) = &report.newest_id {
            self.raise_id_floor(newest);
        }
        for state in State::QUEUED {
            let ids: Vec<String> = names.iter().filter(|(_, s)| *s == state).map(|(id, _)| id.clone()).collect();
            let (judged, newer): (Vec<String>, Vec<String>) = ids.into_iter().partition(|id| old(id));
            found(newer.into_iter().map(|id| Indexed { id, state, times: None }).collect());
            for part in judged.chunks(INDEX_BATCH) {
                let mut batch = Vec::with_capacity(part.len());
                for (id, head) in part.iter().zip(self.heads(state, part)) {
                    let (why, inside) = match head {
                        Some(head) if head.id != *id => ("misnamed", Some(head.id)),
                        _ if !self.body_path(id).exists() => ("body missing", None),
                        head => {
                            let times = head.map(|h| (h.next_attempt, h.arrival));
                            batch.push(Indexed { id: id.clone(), state, times });
                            continue;
                        }
                    };
                    if let Err(e) = self.quarantine(state, id) {
                        recovery_failed(&format!("{id}: {why}, cannot move it to corrupt/"), &e);
                        continue;
                    }
                    match inside {
                        Some(inside) => report.misnamed.push((id.clone(), inside)),
                        None => report.missing_body.push(id.clone()),
                    }
                }
                found(batch);
            }
        }
        let known: HashSet<String> = names.into_iter().map(|(id, _)| id).collect();
        self.set_aside_orphans(&known, &old, &mut report)?;
        for dir in ["data", State::Corrupt.dir_name()] {
            if let Err(e) = commit::sync_dir(&self.inner.root.join(dir)) {
                recovery_failed(&format!("cannot sync {dir}/"), &e);
            }
        }
        Ok(report)
    }

    /// Raises the id generator's floor to `id`: the newest id found in the
    /// spool once `check` has read it (a queue copied in from another
    /// spool may hold ids above this one's lease).
    pub(crate) fn raise_id_floor(&self, id: &str) {
        self.inner.ids.raise_floor(id);
    }

    /// The value every id handed out by this spool handle is above: what
    /// was queued before it was opened is at or below it.
    pub(crate) fn id_floor(&self) -> u64 {
        self.inner.ids.start()
    }

    /// Whether the spool keeps an id lease: without one (a spool from a
    /// release before leases, or a new one) the newest queued id is the
    /// only floor, and recovery must read the names before any id is given.
    pub(crate) fn has_id_lease(&self) -> bool {
        self.inner.root.join("id-lease").exists()
    }

    /// Removes the files and symlinks (never their targets) in `tmp/`: all
    /// are writes that never committed. Anything else is reported.
    fn sweep_tmp(&self, report: &mut Recovery) -> io::Result<()> {
        for entry in std::fs::read_dir(self.inner.root.join("tmp"))? {
            let entry = entry?;
            // `file_type` does not follow a symlink.
            let kind = entry.file_type()?;
            if kind.is_file() || kind.is_symlink() {
                std::fs::remove_file(entry.path())?;
                report.tmp_removed += 1;
            } else {
                report.skipped.push((format!("tmp/{}", entry.file_name().to_string_lossy()), describe(kind)));
            }
        }
        Ok(())
    }

    /// Moves every body in `data/` that no envelope in `known` refers to
    /// into `corrupt/body-NAME`: an envelope renamed by hand or lost leaves
    /// its body there for inspection instead of destroying it.
    /// Only bodies `old` accepts are judged: a newer one may belong to a
    /// message whose envelope is being committed right now.
    fn set_aside_orphans(
        &self,
        known: &HashSet<String>,
        old: &dyn Fn(&str) -> bool,
        report: &mut Recovery,
    ) -> io::Result<()> {
        for entry in std::fs::read_dir(self.inner.root.join("data"))? {
            let entry = entry?;
            let name = entry.file_name();
            if name.to_str().is_some_and(|n| known.contains(n) || (id::is_valid(n) && !old(n))) {
                continue;
            }
            let name = name.to_string_lossy().into_owned();
            let kind = entry.file_type()?;
            if !kind.is_file() {
                report.skipped.push((format!("data/{name}"), describe(kind)));
                continue;
            }
            match std::fs::rename(entry.path(), self.dir(State::Corrupt).join(format!("body-{name}"))) {
                Ok(()) => report.orphan_bodies.push(name),
                Err(e) => {
                    recovery_failed(&format!("data/{name}: no envelope names it, cannot move it to corrupt/"), &e)
                }
            }
        }
        Ok(())
    }

    /// What `check` needs of each envelope of `ids` in `state`, in order;
    /// `None` where the envelope cannot be read (the scheduler quarantines
    /// those when it loads them). Read on several threads, as `collect` does.
    fn heads(&self, state: State, ids: &[String]) -> Vec<Option<Head>> {
        let flags = rustix::fs::OFlags::RDONLY | rustix::fs::OFlags::DIRECTORY | rustix::fs::OFlags::CLOEXEC;
        let Ok(dir) = rustix::fs::open(self.dir(state), flags, rustix::fs::Mode::empty()) else {
            return vec![None; ids.len()];
        };
        on_threads(ids, |id| {
            let mut buf = Vec::new();
            read_small(&dir, id, &mut buf).ok()?;
            Envelope::from_json(&buf).ok().map(|env| Head {
                id: env.id,
                next_attempt: env.next_attempt,
                arrival: env.arrival,
            })
        })
    }
}

/// The fields of an envelope that the index keeps.
#[derive(Clone, Debug)]
struct Head {
    id: String,
    next_attempt: u64,
    arrival: u64,
}

/// One queued message `Spool::check` found sound (or, above its floor,
/// did not judge).
#[derive(Debug)]
pub(crate) struct Indexed {
    pub(crate) id: String,
    pub(crate) state: State,
    /// From its envelope: (next attempt, arrival); `None` when it was not
    /// read (above the floor) or could not be.
    pub(crate) times: Option<(u64, u64)>,
}

/// Envelopes `check` reads and hands over at a time: its memory stays
/// bounded, whatever the size of the queue.
const INDEX_BATCH: usize = 16 * 1024;

/// One log line for each entry recovery quarantined or left alone.
pub(crate) fn log_set_aside(recovery: &crate::spool::Recovery) {
    for id in &recovery.missing_body {
        tracing::error!("{id}: body missing; envelope moved to corrupt/");
    }
    for id in &recovery.orphan_bodies {
        tracing::warn!("{id}: body without an envelope; moved to corrupt/body-{id}");
    }
    for (name, inside) in &recovery.misnamed {
        tracing::error!("{name}: envelope file names another message ({inside}); moved to corrupt/");
    }
    for (path, what) in &recovery.skipped {
        tracing::warn!("recovery: {path} is {what}, not a spool file; left alone");
    }
}

/// Logs a step of recovery that failed and is left for the next start.
fn recovery_failed(what: &str, e: &io::Error) {
    tracing::error!("recovery: {what}: {}; left where it is", space::describe(e));
}

/// What a directory entry is, for a log line.
fn describe(kind: std::fs::FileType) -> &'static str {
    use std::os::unix::fs::FileTypeExt;
    if kind.is_dir() {
        "a directory"
    } else if kind.is_symlink() {
        "a symbolic link"
    } else if kind.is_fifo() {
        "a FIFO"
    } else if kind.is_socket() {
        "a socket"
    } else {
        "not a regular file"
    }
}

/// Threads `on_threads` unlinks with. On a filesystem mounted with
/// `discard` an unlink waits for the device to trim the freed block (about
/// 80 µs on the machines posthorn is benchmarked on, against 20 µs of CPU),
/// and the waits of many threads overlap: 100,000 envelopes go in 2.5 s
/// instead of 8. Elsewhere the extra threads only queue for the CPU.
const UNLINK_THREADS: usize = 16;

/// `f` over `items` on up to `UNLINK_THREADS` threads; results in order.
fn on_threads<T: Send>(items: &[String], f: impl Fn(&str) -> T + Sync) -> Vec<T> {
    let chunk = items.len().div_ceil(UNLINK_THREADS).max(64);
    let f = &f;
    std::thread::scope(|scope| {
        let workers: Vec<_> = items
            .chunks(chunk)
            .map(|part| scope.spawn(move || part.iter().map(|i| f(i)).collect::<Vec<T>>()))
            .collect();
        workers.into_iter().flat_map(|w| w.join().expect("an unlink worker does not panic")).collect()
    })
}

fn create_file(path: &Path) -> io::Result<std::fs::File> {
    std::fs::OpenOptions::new().write(true).create_new(true).mode(0o600).open(path)
}

/// The envelope `id` in state `state` (one of `dirs`), if it is there and
/// names itself: an envelope whose content names another id is not that
/// message (recovery quarantines it) and is never listed under the wrong id.
fn read_in(
    dirs: &[(State, rustix::fd::OwnedFd)],
    state: State,
    id: &str,
    buf: &mut Vec<u8>,
) -> Option<(State, Envelope)> {
    let (_, dir) = dirs.iter().find(|(d, _)| *d == state)?;
    read_small(dir, id, buf).ok()?;
    Envelope::from_json(buf).ok().filter(|env| env.id == id).map(|env| (state, env))
}

/// Reads the whole of the small file `name` in the directory `dir` into
/// `buf` with three system calls (open, read, close) where `fs::read` takes
/// five: on a queue of 100,000 envelopes that is most of a listing's time.
/// A short read ends it: spool files are complete when they appear (they are
/// renamed into place), and a regular file reads short only at its end.
fn read_small(dir: &rustix::fd::OwnedFd, name: &str, buf: &mut Vec<u8>) -> io::Result<()> {
    let flags = rustix::fs::OFlags::RDONLY | rustix::fs::OFlags::CLOEXEC;
    let fd = rustix::fs::openat(dir, name, flags, rustix::fs::Mode::empty())?;
    buf.clear();
    loop {
        if buf.spare_capacity_mut().is_empty() {
            buf.reserve(buf.capacity().max(4096));
        }
        let spare = buf.capacity() - buf.len();
        let n = rustix::io::read(&fd, rustix::buffer::spare_capacity(buf))?;
        if n < spare {
            return Ok(());
        }
    }
}

/// The body of a message being received. Small bodies stay in memory until
/// commit; large ones spill to their file as they arrive. Dropped without
/// commit, it removes what it wrote.
#[derive(Debug)]
pub(crate) struct BodyWriter {
    path: PathBuf,
    buf: Vec<u8>,
    file: Option<std::fs::File>,
    size: u64,
    committed: bool,
    /// The spool's count of failed syncs when the first byte was written:
    /// a sync failing after it fails the commit (see `commit`).
    written_at: u64,
}

impl BodyWriter {
    pub(crate) fn size(&self) -> u64 {
        self.size
    }

    pub(crate) async fn write(&mut self, data: &[u8]) -> io::Result<()> {
        self.buf.extend_from_slice(data);
        self.size += data.len() as u64;
        if self.buf.len() >= BODY_BUFFER {
            self.spill().await?;
        }
        Ok(())
    }

    async fn spill(&mut self) -> io::Result<()> {
        let (file, buf, path) = (self.file.take(), std::mem::take(&mut self.buf), self.path.clone());
        let (file, mut buf) = tokio::task::spawn_blocking(move || -> io::Result<_> {
            let mut file = match file {
                Some(f) => f,
                None => create_file(&path)?,
            };
            file.write_all(&buf)?;
            Ok((file, buf))
        })
        .await
        .map_err(io::Error::other)??;
        buf.clear();
        self.file = Some(file);
        self.buf = buf;
        Ok(())
    }
}

impl Drop for BodyWriter {
    fn drop(&mut self) {
        if !self.committed && (self.file.is_some() || self.path.exists()) {
            let _ = std::fs::remove_file(&self.path);
        }
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use envelope::{Origin, Recipient};

    pub(crate) fn envelope(spool: &Spool) -> Envelope {
        Envelope {
            v: envelope::VERSION,
            id: spool.new_id(),
            arrival: 1,
            sender: "a@example.org".into(),
            size: 0,
            eight_bit: false,
            smtputf8: false,
            ret: None,
            envid: None,
            origin: Origin::default(),
            recipients: vec![Recipient::new("b@example.org".into(), None, None)],
            attempts: 0,
            next_attempt: 0,
            frozen: false,
            delay_warned: false,
            filtered: false,
            trace_id: None,
            trusted: None,
            auth_results: None,
        }
    }

    #[tokio::test]
    async fn commit_move_and_recover() {
        for mode in [commit::SyncMode::Batch, commit::SyncMode::PerFile] {
            commit_move_and_recover_with(mode).await;
        }
    }

    async fn commit_move_and_recover_with(mode: commit::SyncMode) {
        let dir = tempfile::tempdir().unwrap();
        let spool = Spool::open_with(dir.path(), None, mode).unwrap();
        let env = envelope(&spool);
        let mut body = spool.body_writer(&env.id);
        body.write(b"Subject: x\r\n\r\nhello\r\n").await.unwrap();
        spool.commit_new(&env, body, State::Incoming).await.unwrap();
        assert_eq!(spool.list(State::Incoming).unwrap(), vec![env.id.clone()]);
        assert_eq!(spool.read_body(&env.id).unwrap(), b"Subject: x\r\n\r\nhello\r\n");

        // In delivery when the process dies: recovery puts it back.
        spool.move_now(&env.id, State::Incoming, State::Active).unwrap();
        std::fs::write(dir.path().join("tmp/half-written"), b"x").unwrap();
        std::fs::write(dir.path().join("data/0000000001"), b"orphan").unwrap();
        let reopened = Spool::open(dir.path(), None).unwrap();
        let report = reopened.recover().unwrap();
        assert_eq!((report.tmp_removed, report.active_requeued, report.orphan_bodies.len()), (1, 1, 1));
        assert_eq!(report.newest_id.as_deref(), Some(env.id.as_str()));
        let (state, read) = reopened.find(&env.id).unwrap();
        assert_eq!((state, read), (State::Incoming, env));
    }

    #[tokio::test]
    async fn a_quarantined_message_is_committed_straight_into_hold() {
        let dir = tempfile::tempdir().unwrap();
        let spool = Spool::open(dir.path(), None).unwrap();
        let env = envelope(&spool);
        let mut body = spool.body_writer(&env.id);
        body.write(b"Subject: held\r\n\r\nx\r\n").await.unwrap();
        spool.commit_new(&env, body, State::Hold).await.unwrap();
        assert!(spool.list(State::Incoming).unwrap().is_empty());
        assert_eq!(spool.list(State::Hold).unwrap(), vec![env.id.clone()]);
        // A restart finds it where it was, never due for delivery.
        let reopened = Spool::open(dir.path(), None).unwrap();
        reopened.recover().unwrap();
        assert_eq!(reopened.find(&env.id).unwrap().0, State::Hold);
        assert_eq!(reopened.read_body(&env.id).unwrap(), b"Subject: held\r\n\r\nx\r\n");
    }

    #[tokio::test]
    async fn save_updates_and_moves_atomically() {
        let dir = tempfile::tempdir().unwrap();
        let spool = Spool::open(dir.path(), None).unwrap();
        let mut env = envelope(&spool);
        spool.commit_new(&env, spool.body_writer(&env.id), State::Incoming).await.unwrap();
        env.attempts = 3;
        spool.save(&env, State::Incoming, State::Deferred).await.unwrap();
        assert!(spool.list(State::Incoming).unwrap().is_empty());
        assert_eq!(spool.read_envelope(State::Deferred, &env.id).unwrap().attempts, 3);
        assert!(std::fs::read_dir(dir.path().join("tmp")).unwrap().next().is_none());
        spool.remove(State::Deferred, &env.id).await.unwrap();
        assert!(spool.find(&env.id).is_none());
        // The body goes once the envelope's removal is durable.
        spool.settle().await.unwrap();
        assert!(!spool.body_path(&env.id).exists());
    }

    #[tokio::test]
    async fn large_bodies_spill_and_abandoned_ones_vanish() {
        let dir = tempfile::tempdir().unwrap();
        let spool = Spool::open(dir.path(), None).unwrap();
        let id = spool.new_id();
        let mut body = spool.body_writer(&id);
        body.write(&vec![b'x'; BODY_BUFFER + 10]).await.unwrap();
        assert!(spool.body_path(&id).exists());
        drop(body);
        assert!(!spool.body_path(&id).exists());
    }

    #[test]
    fn collect_lists_every_state_in_arrival_order() {
        let dir = tempfile::tempdir().unwrap();
        let spool = Spool::open(dir.path(), None).unwrap();
        let states = [State::Hold, State::Deferred, State::Incoming, State::Active, State::Deferred];
        let mut written = Vec::new();
        for state in states {
            let mut env = envelope(&spool);
            if written.len() == 1 {
                // Bigger than the first read buffer: the read goes on.
                env.recipients[0].address = format!("{}@example.org", "x".repeat(40_000));
            }
            std::fs::write(spool.envelope_path(state, &env.id), env.to_json()).unwrap();
            written.push((state, env));
        }
        // Caught between two states while listed: listed once.
        let (_, moving) = &written[2];
        std::fs::write(spool.envelope_path(State::Deferred, &moving.id), moving.to_json()).unwrap();
        // Not an envelope: skipped, never fatal.
        std::fs::write(spool.envelope_path(State::Deferred, "0000000000"), b"{").unwrap();
        assert_eq!(spool.collect(), written);
    }

    #[test]
    fn an_upgraded_spool_is_ordered_and_floored_by_arrival_not_by_string() {
        let dir = tempfile::tempdir().unwrap();
        let spool = Spool::open(dir.path(), None).unwrap();
        // Two messages an earlier release queued, in its ten-character
        // form, then two in the current one: as strings `HO…` > `2…`.
        let old = ["HORSBLX12J", "HORTZ59IUL"];
        let newest_old = id::decode(old[1]).unwrap();
        let new = [id::encode(newest_old + 5), id::encode(newest_old + 9)];
        let mut written = Vec::new();
        for name in old.iter().map(|s| s.to_string()).chain(new.iter().cloned()) {
            let mut env = envelope(&spool);
            env.id = name;
            std::fs::write(spool.envelope_path(State::Deferred, &env.id), env.to_json()).unwrap();
            std::fs::write(spool.body_path(&env.id), b"x").unwrap();
            written.push((State::Deferred, env));
        }
        assert_eq!(spool.collect(), written, "old ids first");
        let report = spool.recover().unwrap();
        assert!(report.missing_body.is_empty() && report.orphan_bodies.is_empty(), "{report:?}");
        assert_eq!(report.newest_id.as_deref(), Some(new[1].as_str()));
        // The other way round, an old id dated 2085: it is the newest, and
        // new ids are floored above it.
        let mut env = envelope(&spool);
        env.id = "ZZZZZZZZZZ".into();
        std::fs::write(spool.envelope_path(State::Deferred, &env.id), env.to_json()).unwrap();
        std::fs::write(spool.body_path(&env.id), b"x").unwrap();
        let report = spool.recover().unwrap();
        assert_eq!(report.newest_id.as_deref(), Some("ZZZZZZZZZZ"));
        let reopened = Spool::open(dir.path(), report.newest_id.as_deref()).unwrap();
        let next = reopened.new_id();
        assert!(id::decode(&next).unwrap() > id::decode("ZZZZZZZZZZ").unwrap(), "{next}");
    }

    #[test]
    fn missing_body_is_quarantined() {
        let dir = tempfile::tempdir().unwrap();
        let spool = Spool::open(dir.path(), None).unwrap();
        let env = envelope(&spool);
        std::fs::write(spool.envelope_path(State::Deferred, &env.id), env.to_json()).unwrap();
        let report = spool.recover().unwrap();
        assert_eq!(report.missing_body, vec![env.id.clone()]);
        assert!(spool.envelope_path(State::Corrupt, &env.id).exists());
    }

    #[test]
    fn recovery_skips_what_it_does_not_know_and_keeps_what_it_sets_aside() {
        let dir = tempfile::tempdir().unwrap();
        let spool = Spool::open(dir.path(), None).unwrap();
        std::fs::create_dir(dir.path().join("tmp/lost+found")).unwrap();
        std::fs::create_dir(dir.path().join("data/backup")).unwrap();
        let orphan = spool.new_id();
        std::fs::write(spool.body_path(&orphan), b"orphan").unwrap();
        // An envelope copied under another message's name, with a body there.
        let env = envelope(&spool);
        let other = spool.new_id();
        std::fs::write(spool.envelope_path(State::Deferred, &other), env.to_json()).unwrap();
        std::fs::write(spool.body_path(&other), b"body").unwrap();

        let report = spool.recover().unwrap();
        let skipped: Vec<&str> = report.skipped.iter().map(|(p, _)| p.as_str()).collect();
        assert_eq!(skipped, ["tmp/lost+found", "data/backup"]);
        assert_eq!(report.orphan_bodies, vec![orphan.clone()]);
        assert_eq!(std::fs::read(spool.dir(State::Corrupt).join(format!("body-{orphan}"))).unwrap(), b"orphan");
        assert_eq!(report.misnamed, vec![(other.clone(), env.id.clone())]);
        assert!(spool.envelope_path(State::Corrupt, &other).exists() && spool.body_path(&other).exists());
        assert!(dir.path().join("tmp/lost+found").is_dir() && dir.path().join("data/backup").is_dir());
    }

    #[test]
    fn a_listing_never_shows_an_envelope_under_another_id() {
        let dir = tempfile::tempdir().unwrap();
        let spool = Spool::open(dir.path(), None).unwrap();
        let env = envelope(&spool);
        std::fs::write(spool.envelope_path(State::Deferred, &spool.new_id()), env.to_json()).unwrap();
        assert!(spool.collect().is_empty());
    }
}
