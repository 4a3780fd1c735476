//! The scheduler: decides which queued message is tried when.
//!
//! One task owns the schedule; deliveries run as tasks it spawns, each
//! reporting back when done. New mail is preferred over the backlog (two
//! lines, fresh and retry, served two to one), the number of messages in
//! delivery is bounded (the active window), and retries are timed per
//! destination: when the next hop is down, every message for it waits out
//! the destination's backoff instead of each knocking on the closed door.
//! Only the envelope of a deferred message is kept in memory as
//! `(due time, id)`; envelopes are read when the message becomes active.
//!
//! The schedule follows where each message really is. When the spool fails
//! (a full disk, an I/O error), a message is never dropped from it: the
//! failure is logged with its errno and the message tried again after a
//! short backoff (`spool_backoff`), starting from where it is. An attempt
//! whose outcome cannot be written keeps that outcome in memory
//! (`Job::Unsaved`), so recipients already delivered are not sent again,
//! and writes it out as soon as the spool takes it.

pub(crate) mod attempt;
pub(crate) mod backoff;
pub(crate) mod dest;
pub(crate) mod notice;

use crate::clock::now_secs;
use crate::config::Config;
use crate::deliver::Transports;
use crate::ingress::Ingress;
use crate::message::outcome::{RcptState, Status};
use crate::metrics::{Metrics, QueueGauges};
use crate::route::router::Router;
use crate::spool::change::{Bodies, Change};
use crate::spool::envelope::AttemptRecord;
use crate::spool::envelope::Envelope;
use crate::spool::{Indexed, Recovery, Spool, State};
use dest::Destinations;
use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{mpsc, oneshot, watch};

/// Requests other parts of the daemon (the control socket) send in.
pub(crate) enum Command {
    /// Try every deferred message now and forget destination backoff
    /// (`postqueue -f`, `sendmail -q`). Answers with the number scheduled.
    Flush(oneshot::Sender<usize>),
    /// An operator action on some messages; answers one result per id.
    Act { action: QueueAction, ids: Vec<String>, reply: oneshot::Sender<Vec<ActResult>> },
    /// A reloaded configuration: deliveries started from now on use it.
    Reload { config: Arc<Config>, outbound: Arc<Outbound>, ingress: Ingress },
    /// The queue's gauges for the metrics endpoint, from the scheduler's own
    /// sets (no file is read); `oldest` adds the oldest message's arrival,
    /// a pass over the queued ids. An answer is also the health check's
    /// sign that the scheduler is alive.
    Status { oldest: bool, reply: oneshot::Sender<QueueGauges> },
}

/// What an operator can do to a queued message. Actions go through the
/// scheduler so they never race a delivery: a message in delivery has its
/// delivery stopped first, so once `Delete` has answered, the message will
/// not be delivered.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub(crate) enum QueueAction {
    Delete,
    Hold,
    Freeze,
    Release,
    Requeue,
    /// Attempt now, ignoring the retry time (`exim -M`, `postqueue -i`).
    Deliver,
    /// Give up: every pending recipient fails, the sender gets a bounce
    /// (unless the sender is `<>`), and the message is removed.
    Bounce,
}

#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub(crate) struct ActResult {
    pub(crate) id: String,
    /// The state the message was in, when it was found.
    pub(crate) found_in: Option<String>,
    pub(crate) error: Option<String>,
}

/// A message waiting for its turn, and where that turn starts from.
#[derive(Debug)]
pub(crate) enum Job {
    /// Just accepted; the envelope came from ingress.
    Fresh(Envelope),
    /// On disk in `incoming/`, `deferred/` or `active/`; read when started.
    OnDisk(String, State),
    /// Its last attempt's outcome could not be written: this envelope is
    /// the message as it is, while `active/` still holds an older one. Its
    /// turn writes it out, or makes the next attempt when that is due.
    Unsaved(Envelope),
}

impl Job {
    fn id(&self) -> &str {
        match self {
            Job::Fresh(e) | Job::Unsaved(e) => &e.id,
            Job::OnDisk(id, _) => id,
        }
    }
}

/// What a finished delivery task reports.
#[derive(Debug)]
pub(crate) struct Done {
    pub(crate) id: String,
    pub(crate) next: Next,
    /// The message's arrival from its envelope, when the delivery read it.
    pub(crate) arrival: Option<u64>,
}

/// What becomes of a message after its turn.
#[derive(Debug)]
pub(crate) enum Next {
    /// Removed, or set aside in `corrupt/`: it leaves the schedule.
    Gone,
    /// The message was gone or elsewhere when its turn came (a stale entry
    /// after an operator action); nothing was done.
    Skipped,
    /// Still queued: due again at this time, starting from the job.
    At(u64, Job),
    /// The spool failed it (logged already): tried again from the job after
    /// a short backoff.
    SpoolFailed(Job),
}

/// A message's arrival (Unix seconds) as its id tells it, for one whose
/// envelope the scheduler has not read yet. An id can run ahead of the
/// clock (the generator is floored at its lease after a restart), so it
/// is taken as now at the latest; the envelope's arrival replaces it after
/// the message's next delivery attempt.
fn id_arrival(id: &str) -> u64 {
    let now = now_secs();
    crate::spool::id::decode(id).map_or(now, |us| (us / 1_000_000).min(now))
}

/// A test hook (tests/startup.rs): with `POSTHORN_INDEX_PAUSE=SECS` the
/// background index waits that long before it reads anything, so a test
/// can act on the daemon between `ready` and `loaded`.
fn index_pause() -> Option<Duration> {
    std::env::var("POSTHORN_INDEX_PAUSE").ok()?.parse().ok().map(Duration::from_secs_f64)
}

/// Why an operator action is refused while the queue found at start is
/// being indexed.
pub(crate) const STILL_LOADING: &str =
    "the daemon is still loading the queue it found at start (see `queue loaded` in the log); try again shortly";

/// The next message from the background index; never, once it is done.
async fn next_loaded(index: &mut Option<mpsc::Receiver<Loaded>>) -> Option<Loaded> {
    match index {
        Some(rx) => rx.recv().await,
        None => std::future::pending().await,
    }
}

/// The wait before trying again a message the spool failed: 1 s, doubling
/// up to 30 s, so that a freed disk is used within seconds, while a disk
/// that stays full costs one log line per message per half minute.
fn spool_backoff(failures: u32) -> u64 {
    1u64.checked_shl(failures.saturating_sub(1)).unwrap_or(u64::MAX).min(30)
}

/// Fresh mail kept in memory; beyond this, only ids are kept and the
/// envelope is read again from disk when its turn comes.
const FRESH_IN_MEMORY: usize = 10_000;

/// One configuration's way out: the router that picks each recipient's
/// next hop at delivery time, and the transports that carry it there.
pub(crate) struct Outbound {
    pub(crate) router: Arc<Router>,
    pub(crate) transports: Transports,
}

pub(crate) struct Scheduler {
    config: Arc<Config>,
    spool: Spool,
    outbound: Arc<Outbound>,
    dests: Arc<Destinations>,
    ingress: Ingress,
    limiter: Arc<notice::BounceLimiter>,
    fresh: VecDeque<Job>,
    retry: VecDeque<Job>,
    /// Messages waiting for their time, by (due time, id).
    waiting: BTreeMap<(u64, String), Job>,
    /// Spool failures in a row, by message, for `spool_backoff`.
    spool_failures: HashMap<String, u32>,
    /// Ids queued in `fresh`/`retry`/`waiting` or in delivery, so a message
    /// is never scheduled twice (a rescan can meet one already known), with
    /// each one's arrival for the oldest-message gauge: the envelope's when
    /// the scheduler has seen it, else what the id says (`id_arrival`).
    known: HashMap<String, u64>,
    /// Deliveries running, by message id, so an operator action can stop one.
    running: HashMap<String, tokio::task::JoinHandle<()>>,
    turn: u32,
    /// Messages in `hold/`: counted at load, then kept up by `act`.
    held: u64,
    metrics: Arc<Metrics>,
    /// The queue found at start, while the background index reads it.
    loading: Option<Loading>,
    /// A flush came in while `loading`: the old deferred messages are due
    /// now when the index ends.
    flush_on_load: bool,
}

/// What the background index (`Spool::check`) sends the scheduler.
pub(crate) enum Loaded {
    Batch(Vec<Indexed>),
    Done(std::io::Result<Recovery>),
}

/// The messages queued before the daemon started, gathered from the
/// background index. None of them is scheduled, moved or acted on until
/// the index is complete (`Spool::check` relies on it): operator actions
/// are refused meanwhile, with a reply that says why, and a flush applies
/// to them when the index ends. Mail accepted since is scheduled as usual.
struct Loading {
    rx: Option<mpsc::Receiver<Loaded>>,
    /// In `incoming/` or `active/`, due now: (id, state, arrival).
    due: Vec<(String, State, Option<u64>)>,
    /// In `deferred/`: (id, (next attempt, arrival) from the envelope).
    deferred: Vec<(String, Option<(u64, u64)>)>,
    held: u64,
    started: std::time::Instant,
}

impl Scheduler {
    pub(crate) fn new(config: Arc<Config>, spool: Spool, outbound: Arc<Outbound>, ingress: Ingress) -> Scheduler {
        Scheduler {
            limiter: Arc::new(notice::BounceLimiter::new(config.queue.bounce_rate_limit)),
            dests: Arc::new(Destinations::shaped(
                config.deliver.destination_concurrency,
                config.deliver.shaping.clone(),
            )),
            config,
            spool,
            outbound,
            ingress,
            fresh: VecDeque::new(),
            retry: VecDeque::new(),
            waiting: BTreeMap::new(),
            spool_failures: HashMap::new(),
            known: HashMap::new(),
            running: HashMap::new(),
            turn: 0,
            held: 0,
            metrics: Arc::default(),
            loading: None,
            flush_on_load: false,
        }
    }

    /// The same scheduler, counting delivery outcomes into `metrics`.
    pub(crate) fn with_metrics(self, metrics: Arc<Metrics>) -> Scheduler {
        Scheduler { metrics, ..self }
    }

    /// Starts indexing what is on disk, in the background: `incoming/` is
    /// due now, `deferred/` at the time its envelope says, and what
    /// recovery could not move out of `active/` (a full disk) is due now,
    /// from there. The index is also the rest of crash recovery
    /// (`Spool::check`) for every message at or below `floor`, the id
    /// floor the spool opened with; unreadable envelopes are quarantined.
    /// Until it is done the daemon accepts and delivers new mail, and holds
    /// back the old and the operator's actions on the queue.
    pub(crate) fn index(&mut self, floor: u64) {
        let (tx, rx) = mpsc::channel(4);
        let spool = self.spool.clone();
        tokio::task::spawn_blocking(move || {
            if let Some(pause) = index_pause() {
                std::thread::sleep(pause);
            }
            let result = spool.check(Some(floor), |batch| {
                let _ = tx.blocking_send(Loaded::Batch(batch));
            });
            let _ = tx.blocking_send(Loaded::Done(result));
        });
        self.loading = Some(Loading {
            rx: Some(rx),
            due: Vec::new(),
            deferred: Vec::new(),
            held: 0,
            started: std::time::Instant::now(),
        });
    }

    /// Takes in what the background index sends; at its end, schedules
    /// the old queue.
    fn loaded(&mut self, loaded: Loaded) {
        let Some(loading) = self.loading.as_mut() else { return };
        let result = match loaded {
            Loaded::Batch(batch) => {
                for found in batch {
                    match found.state {
                        State::Hold => loading.held += 1,
                        State::Incoming | State::Active => {
                            loading.due.push((found.id, found.state, found.times.map(|(_, arrival)| arrival)))
                        }
                        State::Deferred => loading.deferred.push((found.id, found.times)),
                        State::Corrupt => {}
                    }
                }
                return;
            }
            Loaded::Done(result) => result,
        };
        let Some(mut loading) = self.loading.take() else { return };
        match result {
            Ok(report) => crate::spool::log_set_aside(&report),
            Err(e) => tracing::error!(
                "queue: indexing the spool failed ({e}); what it did not reach is scheduled at the next start"
            ),
        }
        let (due, deferred, held) = (loading.due.len(), loading.deferred.len(), loading.held);
        loading
            .due
            .sort_unstable_by(|a, b| crate::spool::id::arrival_key(&a.0).cmp(&crate::spool::id::arrival_key(&b.0)));
        for (id, state, arrival) in loading.due {
            if self.known.contains_key(&id) {
                continue;
            }
            self.known.insert(id.clone(), arrival.unwrap_or_else(|| id_arrival(&id)));
            self.fresh.push_back(Job::OnDisk(id, state));
        }
        for (id, times) in loading.deferred {
            if self.known.contains_key(&id) {
                continue;
            }
            let (next, arrival) = match times {
                Some(times) => times,
                None => match self.spool.read_envelope(State::Deferred, &id) {
                    Ok(env) => (env.next_attempt, env.arrival),
                    // Delivered or acted on since it was listed: mail
                    // accepted after the start.
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
                    Err(e) => {
                        tracing::error!("{id}: unreadable envelope ({e}); moved to corrupt/");
                        let _ = self.spool.quarantine(State::Deferred, &id);
                        continue;
                    }
                },
            };
            self.known.insert(id.clone(), arrival);
            self.waiting.insert((next, id.clone()), Job::OnDisk(id, State::Deferred));
        }
        self.held += held;
        // Postfix's qmgr logs no such line; under master, log readers that
        // know qmgr's lines are not confused by it.
        tracing::info!(
            service = "master",
            "queue loaded: {} messages ({due} due, {deferred} deferred, {held} held) in {:.2} s",
            due + deferred + held as usize,
            loading.started.elapsed().as_secs_f64()
        );
        if std::mem::take(&mut self.flush_on_load) {
            let n = self.flush_waiting();
            tracing::info!("flush: {n} deferred message(s) scheduled now");
        }
        crate::logging::announce(crate::logging::Announcement::Loaded);
    }

    pub(crate) async fn run(
        mut self,
        mut new_mail: mpsc::UnboundedReceiver<Envelope>,
        mut commands: mpsc::Receiver<Command>,
        mut shutdown: watch::Receiver<bool>,
    ) {
        let (done_tx, mut done_rx) = mpsc::unbounded_channel::<Done>();
        let mut index = self.loading.as_mut().and_then(|l| l.rx.take());
        loop {
            self.promote_due();
            self.dispatch(&done_tx);
            let sleep = self.next_wakeup();
            tokio::select! {
                Some(env) = new_mail.recv() => self.add_fresh(env),
                Some(done) = done_rx.recv() => self.finished(done),
                Some(loaded) = next_loaded(&mut index) => self.loaded(loaded),
                Some(cmd) = commands.recv() => self.command(cmd).await,
                _ = tokio::time::sleep(sleep) => {}
                _ = shutdown.changed() => break,
            }
        }
        // Deliveries in flight finish or are cut off with the process;
        // recovery returns anything left in active/ to the queue.
        let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
        while !self.running.is_empty() {
            match tokio::time::timeout_at(deadline, done_rx.recv()).await {
                Ok(Some(done)) => self.finished(done),
                _ => break,
            }
        }
    }

    fn add_fresh(&mut self, env: Envelope) {
        if self.known.contains_key(&env.id) {
            return;
        }
        self.known.insert(env.id.clone(), env.arrival);
        if self.fresh.len() < FRESH_IN_MEMORY {
            self.fresh.push_back(Job::Fresh(env));
        } else {
            self.fresh.push_back(Job::OnDisk(env.id, State::Incoming));
        }
    }

    /// Moves deferred messages whose time has come to the retry line.
    fn promote_due(&mut self) {
        let now = now_secs();
        while let Some(((at, _), _)) = self.waiting.first_key_value() {
            if *at > now || self.retry.len() >= self.config.queue.active_limit {
                break;
            }
            let (_, job) = self.waiting.pop_first().expect("non-empty");
            self.retry.push_back(job);
        }
    }

    fn next_wakeup(&self) -> Duration {
        let idle = Duration::from_secs(3600);
        match self.waiting.first_key_value() {
            Some(((at, _), _)) => Duration::from_secs(at.saturating_sub(now_secs())).min(idle),
            None => idle,
        }
        .max(Duration::from_millis(if self.retry.is_empty() { 0 } else { 50 }))
    }

    /// Starts deliveries while the active window allows. Fresh mail gets
    /// two turns for every retry turn. Per-destination limits are applied
    /// by the deliveries themselves (see `dest`).
    fn dispatch(&mut self, done_tx: &mpsc::UnboundedSender<Done>) {
        while self.running.len() < self.config.queue.active_limit {
            self.turn = self.turn.wrapping_add(1);
            let job = if self.turn.is_multiple_of(3) {
                self.retry.pop_front().or_else(|| self.fresh.pop_front())
            } else {
                self.fresh.pop_front().or_else(|| self.retry.pop_front())
            };
            let Some(job) = job else { return };
            if self.running.contains_key(job.id()) || !self.known.contains_key(job.id()) {
                continue; // a stale duplicate, or a message an operator took away
            }
            let ctx = attempt::Context {
                spool: self.spool.clone(),
                outbound: self.outbound.clone(),
                dests: self.dests.clone(),
                config: self.config.clone(),
                ingress: self.ingress.clone(),
                limiter: self.limiter.clone(),
                metrics: self.metrics.clone(),
            };
            let done_tx = done_tx.clone();
            let id = job.id().to_string();
            let handle = tokio::spawn(async move {
                let done = match job {
                    Job::Fresh(env) => attempt::run(ctx, env, State::Incoming).await,
                    Job::OnDisk(id, state) => attempt::run_from_disk(ctx, id, state).await,
                    Job::Unsaved(env) => attempt::resume(ctx, env).await,
                };
                let _ = done_tx.send(done);
            });
            self.running.insert(id, handle);
        }
    }

    fn finished(&mut self, done: Done) {
        if self.running.remove(&done.id).is_none() {
            return; // stopped by an operator action, already accounted for
        }
        if let (Some(arrival), Some(known)) = (done.arrival, self.known.get_mut(&done.id)) {
            *known = arrival;
        }
        match done.next {
            Next::Skipped => {}
            Next::Gone => {
                self.known.remove(&done.id);
                self.spool_failures.remove(&done.id);
            }
            Next::At(at, job) => {
                self.spool_failures.remove(&done.id);
                self.waiting.insert((at, done.id), job);
            }
            Next::SpoolFailed(job) => {
                let failures = self.spool_failures.entry(done.id.clone()).or_default();
                *failures += 1;
                let at = now_secs() + spool_backoff(*failures);
                self.waiting.insert((at, done.id), job);
            }
        }
    }

    async fn command(&mut self, cmd: Command) {
        match cmd {
            Command::Act { ids, reply, .. } if self.loading.is_some() => {
                let busy = |id| ActResult { id, found_in: None, error: Some(STILL_LOADING.into()) };
                let _ = reply.send(ids.into_iter().map(busy).collect());
            }
            Command::Act { action, ids, reply } => {
                let results = self.act(action, ids).await;
                let _ = reply.send(results);
            }
            Command::Reload { config, outbound, ingress } => {
                if config.queue.bounce_rate_limit != self.config.queue.bounce_rate_limit {
                    self.limiter = Arc::new(notice::BounceLimiter::new(config.queue.bounce_rate_limit));
                }
                let (limit, shaping) = (config.deliver.destination_concurrency, &config.deliver.shaping);
                if !self.dests.shaped_as(limit, shaping) {
                    self.dests = Arc::new(self.dests.reshaped(limit, shaping.clone()));
                    tracing::info!("reload: destination limits ([[deliver.shaping]], destination_concurrency) applied");
                }
                self.config = config;
                self.outbound = outbound;
                self.ingress = ingress;
            }
            Command::Status { oldest, reply } => {
                let _ = reply.send(self.gauges(oldest));
            }
            Command::Flush(reply) => {
                self.dests.reset_all();
                let n = self.flush_waiting();
                tracing::info!("flush: {n} deferred message(s) scheduled now");
                self.flush_on_load |= self.loading.is_some();
                let _ = reply.send(n);
            }
        }
    }
}

impl Scheduler {
    /// Carries out an operator action: stops deliveries of the named
    /// messages, waits until their pending renames are durable, then changes
    /// the files and the schedule.
    async fn act(&mut self, action: QueueAction, ids: Vec<String>) -> Vec<ActResult> {
        for id in &ids {
            if let Some(task) = self.running.remove(id) {
                task.abort();
                let _ = task.await;
                tracing::info!("{id}: delivery stopped by operator action {action:?}");
            }
        }
        let _ = self.spool.barrier().await;
        let outcomes = match action {
            QueueAction::Bounce => {
                let mut out = Vec::with_capacity(ids.len());
                for id in &ids {
                    out.push(self.give_up(id).await);
                }
                out
            }
            _ => self.act_on_files(action, ids.clone()).await,
        };
        let mut results = Vec::with_capacity(ids.len());
        for (id, outcome) in ids.into_iter().zip(outcomes) {
            let result = match outcome {
                Ok(found) => {
                    self.reschedule(action, &id, found);
                    self.count_held(action, found);
                    ActResult { id, found_in: found.map(|s| s.dir_name().to_string()), error: None }
                }
                Err(e) => ActResult { id, found_in: None, error: Some(e.to_string()) },
            };
            if result.found_in.is_some() && result.error.is_none() {
                // Postfix's postsuper lines (`QID: removed`, `QID: placed on hold`).
                tracing::info!(service = "postsuper", event = "operator", "{}: {}", result.id, action.past_tense());
            }
            results.push(result);
        }
        results
    }

    /// The file side of an action (`Spool::apply`), on a blocking thread.
    /// A delete answers once the envelopes are gone (the commit point of
    /// "removed"); the bodies are unlinked afterwards in the background.
    async fn act_on_files(&self, action: QueueAction, ids: Vec<String>) -> Vec<std::io::Result<Option<State>>> {
        let Some(change) = action.on_files() else {
            return ids.iter().map(|_| Err(std::io::Error::other("not a change of files"))).collect();
        };
        let spool = self.spool.clone();
        tokio::task::spawn_blocking(move || spool.apply(change, &ids, Bodies::Background).results)
            .await
            .unwrap_or_else(|e| vec![Err(std::io::Error::other(e))])
    }

    /// `QueueAction::Bounce` for one message: fail what is pending, notify the
    /// sender through the usual door, remove the message.
    async fn give_up(&self, id: &str) -> std::io::Result<Option<State>> {
        let Some((state, mut env)) = self.spool.find(id) else { return Ok(None) };
        let before: Vec<_> = env.recipients.iter().map(|r| r.state).collect();
        let now = now_secs();
        for rcpt in env.recipients.iter_mut().filter(|r| r.state == RcptState::Pending) {
            rcpt.state = RcptState::Failed;
            let detail = "returned to sender by the mail system administrator".to_string();
            rcpt.record(AttemptRecord::local(now, Status::Bounced, detail));
            tracing::info!("{id}: to=<{}>, status=bounced (returned to sender by the administrator)", rcpt.address);
        }
        for items in notice::due(&mut env, &before, &[], None, now) {
            notice::send(&self.ingress, &self.spool, &self.limiter, &env, items, now).await;
        }
        self.spool.remove(state, id).await?;
        Ok(Some(state))
    }

    /// Moves every waiting message to the retry line and counts them.
    /// Entries an operator action left stale (a message deleted, held, or
    /// requeued already) are dropped, not counted: the count is of
    /// messages, as `postqueue -f` reports it.
    fn flush_waiting(&mut self) -> usize {
        let mut seen = std::collections::HashSet::new();
        while let Some(((_, id), job)) = self.waiting.pop_first() {
            if self.known.contains_key(&id) && !self.running.contains_key(&id) && seen.insert(id) {
                self.retry.push_back(job);
            }
        }
        seen.len()
    }

    fn reschedule(&mut self, action: QueueAction, id: &str, found: Option<State>) {
        match (action, found) {
            (_, None) => {}
            (QueueAction::Delete | QueueAction::Hold | QueueAction::Freeze | QueueAction::Bounce, _) => {
                // Entries still in the lines are skipped when their turn comes.
                self.known.remove(id);
            }
            (QueueAction::Release, Some(State::Hold))
            | (QueueAction::Requeue | QueueAction::Deliver, Some(State::Deferred | State::Active)) => {
                self.known.insert(id.to_string(), id_arrival(id));
                self.retry.push_front(Job::OnDisk(id.to_string(), State::Incoming));
            }
            _ => {}
        }
    }
}

impl Scheduler {
    /// Incoming: fresh mail waiting for a slot; active: in delivery;
    /// deferred: every other message the scheduler knows (waiting for its
    /// time, or due and in the retry line). An operator's delete leaves
    /// `known` at once, though its stale entries stay in the lines.
    ///
    /// The oldest message is the earliest arrival among all of these, held
    /// mail aside: a message on hold waits for an operator, not for
    /// delivery, and would pin the age at its own for as long as it is kept
    /// (`posthorn_queue_messages{state="hold"}` counts those).
    fn gauges(&self, oldest: bool) -> QueueGauges {
        let incoming = self.fresh.len() as u64;
        let active = self.running.len() as u64;
        let oldest_arrival = oldest.then(|| self.known.values().min().copied()).flatten();
        QueueGauges {
            incoming,
            active,
            deferred: (self.known.len() as u64).saturating_sub(incoming + active),
            hold: self.held,
            oldest_arrival,
            storage: self.ingress.storage_trouble(),
        }
    }

    /// Keeps `held` in step with what an operator action did.
    fn count_held(&mut self, action: QueueAction, found: Option<State>) {
        match (action, found) {
            (QueueAction::Hold | QueueAction::Freeze, Some(state)) if state != State::Hold => self.held += 1,
            (QueueAction::Release | QueueAction::Delete | QueueAction::Bounce, Some(State::Hold)) => {
                self.held = self.held.saturating_sub(1)
            }
            _ => {}
        }
    }
}

impl QueueAction {
    /// The change of files this action is, when it is only that; `None`
    /// for an action that needs the daemon (a bounce writes a notice).
    /// `Deliver` is a requeue on the files: the daemon also tries it now.
    pub(crate) fn on_files(self) -> Option<Change> {
        match self {
            QueueAction::Delete => Some(Change::Delete),
            QueueAction::Hold => Some(Change::Hold),
            QueueAction::Freeze => Some(Change::Freeze),
            QueueAction::Release => Some(Change::Release),
            QueueAction::Requeue | QueueAction::Deliver => Some(Change::Requeue),
            QueueAction::Bounce => None,
        }
    }

    pub(crate) fn past_tense(self) -> &'static str {
        match self {
            QueueAction::Delete => "removed",
            QueueAction::Hold => "placed on hold",
            QueueAction::Freeze => "frozen",
            QueueAction::Release => "released from hold",
            QueueAction::Requeue => "requeued",
            QueueAction::Deliver => "scheduled for delivery",
            QueueAction::Bounce => "returned to sender",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spool_failures_back_off_briefly() {
        let waits: Vec<u64> = (1..=8).map(spool_backoff).collect();
        assert_eq!(waits, [1, 2, 4, 8, 16, 30, 30, 30]);
        assert_eq!(spool_backoff(200), 30);
    }
}
