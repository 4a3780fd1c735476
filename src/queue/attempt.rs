//! One delivery attempt of one message: load it, route each pending
//! recipient to its next hop, deliver each group (respecting the
//! destination's connection limit and backoff), record every outcome in
//! the envelope, send the notices that are due, then either remove the
//! message (nothing left to do) or save it as deferred with its next time.
//! When the spool fails any of these steps, the message stays scheduled
//! from where it is (see the scheduler's `Next::SpoolFailed`).

use super::Outbound;
use super::dest::Destinations;
use super::notice::{self, BounceLimiter};
use super::{Done, Job, Next, backoff};
use crate::clock::now_secs;
use crate::config::{Config, Role};
use crate::deliver::{Delivery, Followup, Forward};
use crate::dsn;
use crate::ingress::{Ingress, IngressError};
use crate::message::nexthop::Hop;
use crate::message::outcome::{Attempt, ErrorClass, Outcome, RcptState, Status};
use crate::message::{Body, OutMessage, OutRecipient};
use crate::metrics::{DeferReason, DestClass, Metrics, RcptOutcome};
use crate::spool::envelope::{AttemptRecord, Envelope, Recipient};
use crate::spool::space::describe;
use crate::spool::{Spool, State};
use std::sync::Arc;

/// What the scheduler shares with every delivery.
pub(crate) struct Context {
    pub(crate) spool: Spool,
    pub(crate) outbound: Arc<Outbound>,
    pub(crate) dests: Arc<Destinations>,
    pub(crate) config: Arc<Config>,
    /// The door for notices to senders.
    pub(crate) ingress: Ingress,
    pub(crate) limiter: Arc<BounceLimiter>,
    pub(crate) metrics: Arc<Metrics>,
}

fn skipped(id: String) -> Done {
    Done { id, next: Next::Skipped, arrival: None }
}

fn gone(id: String) -> Done {
    Done { id, next: Next::Gone, arrival: None }
}

pub(crate) async fn run_from_disk(ctx: Context, id: String, state: State) -> Done {
    match ctx.spool.read_envelope(state, &id) {
        Ok(env) => run(ctx, env, state).await,
        // Deleted or held by an operator meanwhile: nothing to do.
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => skipped(id),
        Err(e) if e.kind() == std::io::ErrorKind::InvalidData => {
            tracing::error!("{id}: unreadable envelope ({e}); moved to corrupt/");
            let _ = ctx.spool.quarantine(state, &id);
            gone(id)
        }
        Err(e) => {
            tracing::error!(
                "{id}: cannot read envelope in {}/: {}; trying again shortly",
                state.dir_name(),
                describe(&e)
            );
            Done { next: Next::SpoolFailed(Job::OnDisk(id.clone(), state)), id, arrival: None }
        }
    }
}

/// The turn of a message whose last outcome is not on disk yet: its next
/// attempt starts from the envelope in memory when it is due (the one in
/// `active/` is older); before that, the outcome is written out.
pub(crate) async fn resume(ctx: Context, env: Envelope) -> Done {
    if !env.is_done() && env.next_attempt <= now_secs() {
        run(ctx, env, State::Active).await
    } else {
        finish(&ctx, env).await
    }
}

/// The result of delivering one group of recipients.
struct GroupResult {
    hop: Hop,
    indexes: Vec<usize>,
    delivery: Delivery,
    /// When the group's destination is due again, if it was down.
    down_until: Option<u64>,
    attempted: bool,
    /// When the delivery started (microseconds since the epoch) and how
    /// long it took, for the log's `delays=`.
    started_us: u64,
    took: std::time::Duration,
}

pub(crate) async fn run(ctx: Context, mut env: Envelope, from: State) -> Done {
    let id = env.id.clone();
    // From `active/` to itself (a resumed message) this only checks that
    // the envelope is still there.
    match ctx.spool.move_now(&id, from, State::Active) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            tracing::debug!("{id}: not in {} any more ({e}); skipped", from.dir_name());
            return skipped(id);
        }
        Err(e) => {
            tracing::error!(
                "{id}: cannot move from {}/ to active/: {}; trying again shortly",
                from.dir_name(),
                describe(&e)
            );
            let arrival = Some(env.arrival);
            let job = if from == State::Active { Job::Unsaved(env) } else { Job::OnDisk(id.clone(), from) };
            return Done { id, next: Next::SpoolFailed(job), arrival };
        }
    }
    let before: Vec<RcptState> = env.recipients.iter().map(|r| r.state).collect();
    let mut groups: Vec<(Hop, Vec<usize>)> = Vec::new();
    for (i, r) in env.pending() {
        let hop = ctx.outbound.router.hop(env.filtered, &r.address);
        match groups.iter_mut().find(|(h, _)| *h == hop) {
            Some((_, members)) => members.push(i),
            None => groups.push((hop, vec![i])),
        }
    }
    let mut body: Option<Body> = None;
    let mut results = Vec::with_capacity(groups.len());
    for (hop, indexes) in groups {
        match deliver_group(&ctx, &env, &hop, indexes, &mut body).await {
            Ok(group) => results.push(group),
            // The first group that needs the body loads it, before any
            // delivery: nothing of a damaged message has gone out.
            Err(damage) => return quarantine_damaged(&ctx, id, &damage),
        }
    }
    let now = now_secs();
    let mut success = vec![None; env.recipients.len()];
    let first = env.attempts == 0;
    for group in &results {
        record(&mut env, group, now, first, &ctx.metrics);
        let action = match group.hop {
            // An LMTP server is the mail store: its 250 is final delivery.
            Hop::Maildir | Hop::Local | Hop::Lmtp(_) => Some(dsn::DsnAction::Delivered),
            // The filter reinjects the message; notices come from there on.
            Hop::Filter(_) => None,
            _ if group.delivery.remote_dsn => None,
            _ => Some(dsn::DsnAction::Relayed),
        };
        for &i in &group.indexes {
            success[i] = action;
        }
    }
    if results.iter().any(|g| g.attempted) {
        env.attempts += 1;
    }
    expire_if_too_old(&mut env, &ctx.config, now, &ctx.metrics);
    let delay_warning = ctx.config.queue.delay_warning.map(|d| d.as_secs());
    for items in notice::due(&mut env, &before, &success, delay_warning, now) {
        notice::send(&ctx.ingress, &ctx.spool, &ctx.limiter, &env, items, now).await;
    }
    if !env.is_done() {
        env.next_attempt = next_attempt(&ctx.config, &env, &results, now);
    }
    finish(&ctx, env).await
}

/// Writes an attempt's outcome: removes a finished message, or saves it as
/// deferred, due at its `next_attempt`. When the spool fails, the message
/// stays in `active/` (with the envelope from before the attempt) and its
/// outcome in memory, to be written again shortly: a restart meanwhile
/// would repeat the attempt, never lose the message.
async fn finish(ctx: &Context, env: Envelope) -> Done {
    let id = env.id.clone();
    if env.is_done() {
        return match ctx.spool.remove(State::Active, &id).await {
            Ok(()) => {
                tracing::info!("{id}: removed");
                gone(id)
            }
            // An earlier try removed the envelope and failed on the body.
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => gone(id),
            Err(e) => {
                tracing::error!("{id}: cannot remove finished message: {}; trying again shortly", describe(&e));
                Done { id, arrival: Some(env.arrival), next: Next::SpoolFailed(Job::Unsaved(env)) }
            }
        };
    }
    match ctx.spool.save(&env, State::Active, State::Deferred).await {
        Ok(()) => Done {
            next: Next::At(env.next_attempt, Job::OnDisk(id.clone(), State::Deferred)),
            id,
            arrival: Some(env.arrival),
        },
        Err(e) => {
            tracing::error!(
                "{id}: cannot save deferred envelope: {}; kept in active/, its outcome in memory, trying again shortly",
                describe(&e)
            );
            Done { id, arrival: Some(env.arrival), next: Next::SpoolFailed(Job::Unsaved(env)) }
        }
    }
}

/// A body whose length is not the size its envelope recorded: truncated
/// or damaged on disk, never to be delivered as if whole.
#[derive(Debug, thiserror::Error)]
#[error("body is {found} bytes, its envelope says {expected}")]
struct Damaged {
    expected: u64,
    found: u64,
}

/// Why a body could not be had for delivery.
#[derive(Debug, thiserror::Error)]
enum BodyError {
    #[error("cannot read message body: {0}")]
    Io(#[from] std::io::Error),
    #[error(transparent)]
    Damaged(#[from] Damaged),
}

/// Moves a message with a damaged body to `corrupt/` (the body stays in
/// `data/` for inspection), logging both sizes; it is not tried again.
fn quarantine_damaged(ctx: &Context, id: String, damage: &Damaged) -> Done {
    match ctx.spool.quarantine(State::Active, &id) {
        Ok(()) => tracing::error!("{id}: damaged message: {damage}; moved to corrupt/, not delivered"),
        Err(e) => tracing::error!("{id}: damaged message: {damage}; not delivered, cannot move it to corrupt/: {e}"),
    }
    gone(id)
}

/// Delivers the recipients `indexes` of `env` to `hop`, unless the
/// destination is down, in which case they are deferred without a
/// connection attempt. The body is read once, on first need; a damaged
/// one is the error, and nothing is delivered.
async fn deliver_group(
    ctx: &Context,
    env: &Envelope,
    hop: &Hop,
    indexes: Vec<usize>,
    body: &mut Option<Body>,
) -> Result<GroupResult, Damaged> {
    let dest = ctx.dests.get(&hop.key());
    let suspended = |until: u64, reason: String, indexes: Vec<usize>| GroupResult {
        hop: hop.clone(),
        delivery: all_transient(
            indexes.len(),
            ErrorClass::Connect,
            format!("delivery temporarily suspended: {reason}"),
            false,
        ),
        indexes,
        down_until: Some(until),
        attempted: false,
        started_us: now_us(),
        took: std::time::Duration::ZERO,
    };
    if let Some((until, reason)) = dest.down() {
        return Ok(suspended(until, reason, indexes));
    }
    let _slot = dest.slot().await;
    // The destination may have gone down while this delivery waited.
    if let Some((until, reason)) = dest.down() {
        return Ok(suspended(until, reason, indexes));
    }
    if let Err((until, reason)) = dest.admit() {
        return Ok(suspended(until, reason, indexes));
    }
    let data = match body {
        Some(b) => b.clone(),
        None => match load_body(&ctx.spool, &env.id, env.size).await {
            Ok(b) => body.insert(b).clone(),
            Err(BodyError::Damaged(damage)) => return Err(damage),
            Err(e @ BodyError::Io(_)) => {
                let detail = e.to_string();
                tracing::error!("{}: {detail}", env.id);
                let delivery = all_transient(indexes.len(), ErrorClass::Local, detail, false);
                return Ok(GroupResult {
                    hop: hop.clone(),
                    indexes,
                    delivery,
                    down_until: None,
                    attempted: false,
                    started_us: now_us(),
                    took: std::time::Duration::ZERO,
                });
            }
        },
    };
    let started_us = now_us();
    let clock = std::time::Instant::now();
    let mut msg = out_message(env, &indexes, data);
    if *hop == Hop::Local {
        // The route says what an alias's commands and files are now.
        for r in &mut msg.recipients {
            r.alias_deliveries = ctx.outbound.router.alias_deliveries(&r.address);
        }
    }
    let mut delivery = ctx.outbound.transports.deliver(hop, &msg).await;
    let forwards: Vec<Forward> = delivery
        .followups
        .iter()
        .filter_map(|f| match f {
            Followup::Forward(forward) => Some(forward.clone()),
            Followup::Done { .. } => None,
        })
        .collect();
    for forward in &forwards {
        forward_copy(ctx, env, &msg, forward, &mut delivery.outcomes).await;
    }
    let took = clock.elapsed();
    let down_until = if delivery.hop_down {
        let reason = delivery.outcomes.first().map(|o| o.attempt().detail.clone()).unwrap_or_default();
        Some(dest.failed(&reason, ctx.config.queue.retry_min, ctx.config.queue.retry_max))
    } else {
        dest.up();
        None
    };
    Ok(GroupResult { hop: hop.clone(), indexes, delivery, down_until, attempted: true, started_us, took })
}

/// Commits the new message a recipient's `.forward` asks for (the same
/// message, `Delivered-To:` the recipient prepended, the same envelope
/// sender, the `.forward`'s addresses as recipients) through the one door
/// into the queue, where it is routed like any other. Only once it is
/// durable is the recipient delivered; if it cannot be committed, the
/// recipient is deferred.
async fn forward_copy(ctx: &Context, env: &Envelope, msg: &OutMessage, forward: &Forward, outcomes: &mut [Outcome]) {
    let Some(Outcome::Delivered(done)) = outcomes.get(forward.outcome) else { return };
    let notify = msg.recipients.get(forward.outcome).and_then(|r| r.notify.clone());
    let user = forward.from.rsplit_once('@').map_or(forward.from.as_str(), |(l, _)| l);
    let mut origin = crate::ingress::Arrival::local(user);
    origin.trusted = env.trusted.unwrap_or(false);
    let tx = crate::ingress::Transaction {
        sender: env.sender.clone(),
        recipients: forward
            .to
            .iter()
            .map(|a| crate::ingress::RcptIn { address: a.clone(), notify: notify.clone(), orcpt: None })
            .collect(),
        body: if env.eight_bit {
            crate::smtp::proto::command::BodyType::EightBitMime
        } else {
            crate::smtp::proto::command::BodyType::SevenBit
        },
        smtputf8: env.smtputf8,
        ret: env.ret.clone(),
        envid: env.envid.clone(),
        trace_id: env.trace_id.clone(),
        forwarded_by: Some(forward.from.clone()),
        origin,
    };
    let delivered_to: String = forward.from.chars().filter(|c| !c.is_control()).collect();
    let committed = async {
        let mut writer = ctx.ingress.open(tx).await?;
        writer.write(format!("Delivered-To: {delivered_to}\r\n").as_bytes()).await?;
        writer.write(&msg.body).await?;
        writer.commit().await
    };
    let detail = match committed.await {
        Ok(id) => match done.detail.is_empty() {
            true => format!("forwarded as {id}"),
            false => format!("{}, forwarded as {id}", done.detail),
        },
        // A refused address, a message too big or gone round too often
        // bounce (as the same message sent to those addresses would); the
        // spool's trouble defers.
        Err(e @ (IngressError::Rejected(_) | IngressError::TooBig(_) | IngressError::TooManyHops(_))) => {
            let detail = format!("forwarding as {}'s .forward asks: {e}", forward.from);
            let attempt = Attempt { reply: Some(e.reply()), ..Attempt::failed(ErrorClass::Local, detail) };
            outcomes[forward.outcome] = Outcome::Permanent(attempt);
            return;
        }
        Err(e) => {
            let why = format!("cannot queue the forwarded copy ({}'s .forward): {e}", forward.from);
            tracing::error!("{}: {why}", env.id);
            outcomes[forward.outcome] = Outcome::Transient(Attempt::failed(ErrorClass::Local, why));
            return;
        }
    };
    if let Outcome::Delivered(a) = &mut outcomes[forward.outcome] {
        a.detail = detail;
    }
}

/// Applies a group's outcomes to the envelope and logs each.
fn record(env: &mut Envelope, group: &GroupResult, now: u64, first: bool, metrics: &Metrics) {
    let arrived_us = arrival_us(env);
    for (index, outcome) in group.indexes.iter().zip(&group.delivery.outcomes) {
        let rcpt = &mut env.recipients[*index];
        let (state, status) = outcome.status();
        metrics.recipient(match outcome {
            Outcome::Delivered(_) => RcptOutcome::Delivered,
            Outcome::Transient(_) => RcptOutcome::Deferred,
            Outcome::Permanent(_) => RcptOutcome::Bounced,
        });
        observe(metrics, arrived_us, group, outcome);
        let a = outcome.attempt();
        let arrival = Arrival { us: arrived_us, first };
        log_outcome(&env.id, env.trace_id.as_deref(), rcpt, group, arrival, a, status);
        rcpt.state = state;
        rcpt.record(AttemptRecord::of(now, status, a));
    }
    // An alias's commands and files that took the message are not run
    // again at the next attempt.
    for followup in &group.delivery.followups {
        if let Followup::Done { outcome, parts } = followup
            && let Some(rcpt) = group.indexes.get(*outcome).and_then(|&i| env.recipients.get_mut(i))
        {
            for part in parts {
                if !rcpt.done.contains(part) {
                    rcpt.done.push(part.clone());
                }
            }
        }
    }
}

/// An outcome's share of the metrics besides `posthorn_recipients_total`:
/// a delivery's delay by destination class, a deferral's reason.
fn observe(metrics: &Metrics, arrived_us: u64, group: &GroupResult, outcome: &Outcome) {
    match outcome {
        Outcome::Delivered(_) => metrics.delivered(dest_class(&group.hop), now_us().saturating_sub(arrived_us)),
        Outcome::Transient(_) if group.down_until.is_some() && !group.attempted => {
            metrics.deferred(DeferReason::DestinationDown)
        }
        Outcome::Transient(a) => metrics.deferred(defer_reason(a)),
        Outcome::Permanent(_) => {}
    }
}

/// The class a hop is counted under: an explicit next hop from the
/// transport table is relaying, like the smarthosts.
fn dest_class(hop: &Hop) -> DestClass {
    match hop {
        Hop::Relay | Hop::Smtp(_) => DestClass::Relay,
        Hop::Mx(_) => DestClass::Mx,
        Hop::Maildir | Hop::Local | Hop::Lmtp(_) => DestClass::Maildir,
        Hop::Filter(_) => DestClass::Filter,
    }
}

/// A temporary failure's error class; one without a class, and without a
/// reply to take one from, is trouble here.
fn defer_reason(a: &Attempt) -> DeferReason {
    let class = a.class.or_else(|| a.reply.as_ref().map(|_| ErrorClass::Reply4xx));
    match class {
        Some(ErrorClass::Dns) => DeferReason::Dns,
        Some(ErrorClass::Connect) => DeferReason::Connect,
        Some(ErrorClass::Tls) => DeferReason::Tls,
        Some(ErrorClass::Timeout) => DeferReason::Timeout,
        Some(ErrorClass::Protocol) => DeferReason::Protocol,
        Some(ErrorClass::Reply4xx) => DeferReason::Reply4xx,
        Some(ErrorClass::Reply5xx) => DeferReason::Reply5xx,
        Some(ErrorClass::Local) | None => DeferReason::Local,
    }
}

fn now_us() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_micros() as u64)
}

/// When a message arrived, in microseconds. Its id says so to the
/// microsecond, but only while the id generator follows the clock: after
/// a restart it is floored at its lease, up to an hour ahead (`spool::id`),
/// and a clock stepped back does the same. So the id is taken only when it
/// agrees with the envelope's arrival (read just after the id was drawn,
/// to the second); otherwise the envelope's second is.
pub(crate) fn arrival_us(env: &Envelope) -> u64 {
    match crate::spool::id::decode(&env.id) {
        Some(us) if (us / 1_000_000..=us / 1_000_000 + 1).contains(&env.arrival) => us,
        _ => env.arrival.saturating_mul(1_000_000),
    }
}

/// The earliest time any still-pending group is due: a destination that
/// was down is due when its backoff ends; a recipient that got a
/// temporary refusal backs off with the message's attempt count.
fn next_attempt(config: &Config, env: &Envelope, results: &[GroupResult], now: u64) -> u64 {
    let q = &config.queue;
    let own = now + backoff::next(env.attempts.max(1), q.retry_min, q.retry_max).as_secs().max(1);
    results
        .iter()
        .filter(|g| g.indexes.iter().any(|i| env.recipients[*i].state == RcptState::Pending))
        .map(|g| g.down_until.map(|t| t.max(now + 1)).unwrap_or(own))
        .min()
        .unwrap_or(own)
}

/// Recipients still pending after `queue.max_lifetime` fail for good,
/// except on a satellite whose smarthosts could not be reached: the
/// fleet's mail waits for its hub however long that takes, because the
/// sender can do nothing about it and a bounce would only add noise.
fn expire_if_too_old(env: &mut Envelope, config: &Config, now: u64, metrics: &Metrics) {
    if now.saturating_sub(env.arrival) < config.queue.max_lifetime.as_secs() {
        return;
    }
    let mut expired = 0;
    for rcpt in env.recipients.iter_mut().filter(|r| r.state == RcptState::Pending) {
        let hub_answered = rcpt.history.last().is_some_and(|a| a.reply.is_some());
        if config.role == Role::Satellite && !hub_answered {
            continue;
        }
        let last = rcpt.history.last().map(|a| a.detail.clone()).unwrap_or_default();
        expired += 1;
        rcpt.state = RcptState::Failed;
        metrics.recipient(RcptOutcome::Expired);
        let detail = format!("message expired after {}s in the queue: {last}", config.queue.max_lifetime.as_secs());
        rcpt.record(AttemptRecord::local(now, Status::Expired, detail));
    }
    if expired > 0 {
        // qmgr's line, once per message, as Postfix writes it.
        tracing::info!(
            queue_id = env.id.as_str(),
            event = "expired",
            from = env.sender.as_str(),
            status = "expired",
            "{}: from=<{}>, status=expired, returned to sender",
            env.id,
            env.sender
        );
    }
}

/// Reads the body of `id` and checks its length against `size`, the
/// envelope's record: a truncated or emptied file is damage, not a message.
/// A small body is read into memory; a larger one is mapped (`Body`), so
/// that a delivery's memory does not grow with the message.
async fn load_body(spool: &Spool, id: &str, size: u64) -> Result<Body, BodyError> {
    let path = spool.body_path(id);
    // A small body is in the page cache (it was just written): reading it
    // here is cheaper than a trip through the blocking pool.
    if size <= crate::spool::INLINE_WRITE as u64 {
        let data = std::fs::read(path)?;
        return match data.len() as u64 {
            found if found == size => Ok(data.into()),
            found => Err(Damaged { expected: size, found }.into()),
        };
    }
    let mapped = tokio::task::spawn_blocking(move || -> Result<Body, BodyError> {
        let file = std::fs::File::open(path)?;
        match file.metadata()?.len() {
            found if found == size => Ok(Body::map(&file, size)?),
            found => Err(Damaged { expected: size, found }.into()),
        }
    });
    mapped.await.map_err(std::io::Error::other)?
}

fn out_message(env: &Envelope, indexes: &[usize], body: Body) -> OutMessage {
    OutMessage {
        id: env.id.clone(),
        sender: env.sender.clone(),
        recipients: indexes
            .iter()
            .map(|&index| {
                let r = &env.recipients[index];
                OutRecipient {
                    index,
                    address: r.address.clone(),
                    notify: r.notify.clone(),
                    orcpt: r.orcpt.clone(),
                    alias_deliveries: Vec::new(),
                    done: r.done.clone(),
                }
            })
            .collect(),
        body,
        eight_bit: env.eight_bit,
        smtputf8: env.smtputf8,
        ret: env.ret.clone(),
        envid: env.envid.clone(),
        trace_id: env.trace_id.clone(),
        to_filter: false,
        trusted: env.may_sign(),
    }
}

fn all_transient(n: usize, class: ErrorClass, detail: String, hop_down: bool) -> Delivery {
    let attempt = Attempt::failed(class, detail);
    Delivery {
        outcomes: vec![Outcome::Transient(attempt); n],
        hop_down,
        remote_dsn: false,
        setup: None,
        followups: Vec::new(),
    }
}

/// Postfix's delivery line, word for word in its order, under the service
/// Postfix would log it from (`smtp`, `virtual`, `pipe`):
/// `to=<...>, orig_to=<...>, relay=..., delay=..., delays=a/b/c/d, dsn=...,
/// status=... (...)`. The delays, as Postfix splits them: a, from arrival
/// to the first attempt (the transfer in, the commit, the scheduling); b,
/// waiting in the queue for later attempts; c, setting up the session
/// (connection, greeting, EHLO, TLS, AUTH; 0 on a reused one); d, the
/// transfer. The trace id goes in a field of its own (JSON, journald).
/// When a message arrived (`arrival_us`: the id's microsecond when the
/// envelope agrees, else its second) and whether this is its first attempt.
struct Arrival {
    us: u64,
    first: bool,
}

fn log_outcome(
    id: &str,
    trace: Option<&str>,
    rcpt: &Recipient,
    group: &GroupResult,
    arrival: Arrival,
    a: &Attempt,
    status: Status,
) {
    let Arrival { us: arrived_us, first } = arrival;
    let delay = now_us().saturating_sub(arrived_us) as f64 / 1e6;
    let waited = group.started_us.saturating_sub(arrived_us) as f64 / 1e6;
    let (before, queued) = if first { (waited, 0.0) } else { (0.0, waited) };
    let setup = group.delivery.setup.unwrap_or_default().min(group.took);
    let transfer = group.took - setup;
    let delays = format!(
        "{}/{}/{}/{}",
        seconds(before),
        seconds(queued),
        seconds(setup.as_secs_f64()),
        seconds(transfer.as_secs_f64())
    );
    let relay = a.relay.as_deref().unwrap_or("none");
    let dsn = a.enhanced().unwrap_or(status.default_code()).to_string();
    let orig_to = rcpt.orcpt.as_deref().map(|o| o.split_once(';').map_or(o, |(_, addr)| addr));
    let orig_to = orig_to.filter(|o| !o.eq_ignore_ascii_case(&rcpt.address));
    let orig = orig_to.map(|o| format!(", orig_to=<{o}>")).unwrap_or_default();
    let service = match group.hop {
        Hop::Maildir => "virtual",
        Hop::Local => "local",
        Hop::Lmtp(_) => "lmtp",
        Hop::Filter(crate::message::nexthop::FilterSpec::Pipe(_)) => "pipe",
        _ => "smtp",
    };
    tracing::info!(
        service,
        queue_id = id,
        trace_id = trace,
        event = "delivery",
        to = rcpt.address.as_str(),
        orig_to,
        relay,
        delay,
        delays = delays.as_str(),
        dsn = dsn.as_str(),
        status = status.to_string().as_str(),
        "{id}: to=<{}>{orig}, relay={relay}, delay={}, delays={delays}, dsn={dsn}, status={status} ({})",
        rcpt.address,
        seconds(delay),
        a.detail
    );
}

/// A delay as Postfix writes it: two decimals below 10 s, one below
/// 100 s, whole seconds above; trailing zeros dropped (`0`, `0.1`, `2.35`).
pub(crate) fn seconds(secs: f64) -> String {
    let text = match secs {
        s if s < 10.0 => format!("{s:.2}"),
        s if s < 100.0 => format!("{s:.1}"),
        s => return format!("{s:.0}"),
    };
    text.trim_end_matches('0').trim_end_matches('.').to_string()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cli::select::sample;
    use crate::spool::id::encode;

    #[test]
    fn arrival_from_the_id_only_when_the_envelope_agrees() {
        let us = 1_795_613_746_123_456;
        let cases = [
            // The envelope's second was read in the id's second, or the next.
            (us, 1_795_613_746, us),
            (us, 1_795_613_747, us),
            // The id ran ahead of the clock (floored at the lease after a
            // restart), or the envelope was written much later.
            (us + 1_800_000_000, 1_795_613_746, 1_795_613_746_000_000),
            (us, 1_795_613_750, 1_795_613_750_000_000),
        ];
        for (id, arrival, expected) in cases {
            assert_eq!(
                arrival_us(&sample(&encode(id), "a@b.test", &["c@d.test"], arrival)),
                expected,
                "{id} {arrival}"
            );
        }
    }

    #[test]
    fn deferral_reasons() {
        let failed = |class| Attempt::failed(class, "x");
        let cases = [
            (failed(ErrorClass::Dns), DeferReason::Dns),
            (failed(ErrorClass::Connect), DeferReason::Connect),
            (failed(ErrorClass::Tls), DeferReason::Tls),
            (failed(ErrorClass::Timeout), DeferReason::Timeout),
            (failed(ErrorClass::Protocol), DeferReason::Protocol),
            (failed(ErrorClass::Reply4xx), DeferReason::Reply4xx),
            (failed(ErrorClass::Local), DeferReason::Local),
            (Attempt { class: None, ..failed(ErrorClass::Dns) }, DeferReason::Local),
        ];
        for (attempt, expected) in cases {
            assert_eq!(defer_reason(&attempt), expected, "{attempt:?}");
        }
    }
}
