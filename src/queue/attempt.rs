//! One delivery attempt of one message: load, deliver the pending
//! recipients, record every outcome in the envelope, then either remove the
//! message (nothing left to do) or save it as deferred with its next time.

use super::notice::{self, Limiter};
use super::{Done, backoff};
use crate::config::{Config, Role};
use crate::deliver::relay::Relay;
use crate::deliver::{Attempt, Delivery, ErrorClass, OutMessage, OutRecipient, Outcome};
use crate::ingress::Ingress;
use crate::spool::envelope::{AttemptRecord, Envelope, RcptState};
use crate::spool::{Spool, State};
use crate::timefmt::now_secs;
use std::sync::Arc;

/// What the scheduler knows that a delivery needs.
pub struct Context {
    pub spool: Spool,
    pub relay: Arc<Relay>,
    pub config: Arc<Config>,
    /// Consecutive failures of the destination before this attempt.
    pub dest_failures: u32,
    /// The destination is down: record a deferral without connecting.
    pub suspended: Option<String>,
    pub down_until: Option<u64>,
    /// The door for notices to senders.
    pub ingress: Ingress,
    pub limiter: Arc<Limiter>,
}

pub async fn run_from_disk(ctx: Context, id: String, state: State) -> Done {
    match ctx.spool.read_envelope(state, &id) {
        Ok(env) => run(ctx, env, state).await,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            // Deleted or held by an operator meanwhile: nothing to do.
            Done { id, hop_down: false, hop_up: false, next_attempt: None, reason: None, skipped: true }
        }
        Err(e) => {
            tracing::error!("{id}: unreadable envelope ({e}); moved to corrupt/");
            let _ = ctx.spool.quarantine(state, &id);
            Done { id, hop_down: false, hop_up: false, next_attempt: None, reason: None, skipped: false }
        }
    }
}

pub async fn run(ctx: Context, mut env: Envelope, from: State) -> Done {
    let id = env.id.clone();
    if let Err(e) = ctx.spool.move_now(&id, from, State::Active) {
        tracing::debug!("{id}: not in {} any more ({e}); skipped", from.dir_name());
        return Done { id, hop_down: false, hop_up: false, next_attempt: None, reason: None, skipped: true };
    }
    let delivery = match &ctx.suspended {
        Some(reason) => suspended(&env, reason),
        None => match load_body(&ctx.spool, &id).await {
            Ok(body) => ctx.relay.deliver(&out_message(&env, body)).await,
            Err(e) => local_trouble(&env, format!("cannot read message body: {e}")),
        },
    };
    let pending: Vec<usize> = env.pending().map(|(i, _)| i).collect();
    let before: Vec<RcptState> = env.recipients.iter().map(|r| r.state).collect();
    let now = now_secs();
    let mut reason = None;
    for (index, outcome) in pending.iter().zip(&delivery.outcomes) {
        let rcpt = &mut env.recipients[*index];
        let (status, state) = match outcome {
            Outcome::Delivered(_) => ("sent", RcptState::Delivered),
            Outcome::Transient(_) => ("deferred", RcptState::Pending),
            Outcome::Permanent(_) => ("bounced", RcptState::Failed),
        };
        let a = outcome.attempt();
        log_outcome(&id, &rcpt.address, a, status, env.arrival);
        reason.get_or_insert_with(|| a.detail.clone());
        rcpt.state = state;
        rcpt.record(AttemptRecord {
            at: now,
            status: status.into(),
            relay: a.relay.clone(),
            tls: a.tls,
            reply: a.reply.as_ref().map(|r| r.to_string()),
            class: a.class,
            detail: a.detail.clone(),
        });
    }
    if ctx.suspended.is_none() {
        env.attempts += 1;
    }
    expire_if_too_old(&mut env, &ctx.config, now);
    let delay_warning = ctx.config.queue.delay_warning.map(|d| d.as_secs());
    for items in notice::due(&mut env, &before, delivery.remote_dsn, delay_warning, now) {
        notice::send(&ctx.ingress, &ctx.spool, &ctx.limiter, &env, items, now).await;
    }
    let hop_up = ctx.suspended.is_none() && !delivery.hop_down;
    let hop_down = ctx.suspended.is_none() && delivery.hop_down;
    if env.is_done() {
        if let Err(e) = ctx.spool.remove(State::Active, &id) {
            tracing::error!("{id}: cannot remove finished message: {e}");
        } else {
            tracing::info!("{id}: removed");
        }
        return Done { id, hop_down, hop_up, next_attempt: None, reason, skipped: false };
    }
    env.next_attempt = next_attempt(&ctx, &env, hop_down, now);
    if let Err(e) = ctx.spool.save(&env, State::Active, State::Deferred).await {
        // Left in active/: recovery requeues it at the next start; until
        // then, retry from memory at the computed time.
        tracing::error!("{id}: cannot save deferred envelope: {e}");
    }
    Done { id, hop_down, hop_up, next_attempt: Some(env.next_attempt), reason, skipped: false }
}

fn next_attempt(ctx: &Context, env: &Envelope, hop_down: bool, now: u64) -> u64 {
    let q = &ctx.config.queue;
    if let Some(until) = ctx.down_until.filter(|_| ctx.suspended.is_some()) {
        return until.max(now + 1);
    }
    let failures = if hop_down { ctx.dest_failures + 1 } else { env.attempts };
    now + backoff::next(failures, q.retry_min, q.retry_max).as_secs().max(1)
}

/// Recipients still pending after `queue.max_lifetime` fail for good,
/// except on a satellite whose smarthosts could not be reached: the
/// fleet's mail waits for its hub however long that takes, because the
/// sender can do nothing about it and a bounce would only add noise.
fn expire_if_too_old(env: &mut Envelope, config: &Config, now: u64) {
    if now.saturating_sub(env.arrival) < config.queue.max_lifetime.as_secs() {
        return;
    }
    for rcpt in env.recipients.iter_mut().filter(|r| r.state == RcptState::Pending) {
        let hub_answered = rcpt.history.last().is_some_and(|a| a.reply.is_some());
        if config.role == Role::Satellite && !hub_answered {
            continue;
        }
        let last = rcpt.history.last().map(|a| a.detail.clone()).unwrap_or_default();
        tracing::info!("{}: to=<{}>, status=expired, returned to sender ({last})", env.id, rcpt.address);
        rcpt.state = RcptState::Failed;
        rcpt.record(AttemptRecord {
            at: now,
            status: "expired".into(),
            relay: None,
            tls: false,
            reply: None,
            class: None,
            detail: format!("message expired after {}s in the queue: {last}", config.queue.max_lifetime.as_secs()),
        });
    }
}

async fn load_body(spool: &Spool, id: &str) -> std::io::Result<Arc<[u8]>> {
    let path = spool.body_path(id);
    let data = tokio::task::spawn_blocking(move || std::fs::read(path)).await.map_err(std::io::Error::other)??;
    Ok(data.into())
}

fn out_message(env: &Envelope, body: Arc<[u8]>) -> OutMessage {
    OutMessage {
        id: env.id.clone(),
        sender: env.sender.clone(),
        recipients: env
            .pending()
            .map(|(index, r)| OutRecipient {
                index,
                address: r.address.clone(),
                notify: r.notify.clone(),
                orcpt: r.orcpt.clone(),
            })
            .collect(),
        body,
        eight_bit: env.eight_bit,
        smtputf8: env.smtputf8,
        ret: env.ret.clone(),
        envid: env.envid.clone(),
    }
}

fn all_transient(env: &Envelope, class: ErrorClass, detail: String, hop_down: bool) -> Delivery {
    let attempt = Attempt { relay: None, tls: false, reply: None, class: Some(class), detail };
    Delivery {
        outcomes: env.pending().map(|_| Outcome::Transient(attempt.clone())).collect(),
        hop_down,
        remote_dsn: false,
    }
}

fn suspended(env: &Envelope, reason: &str) -> Delivery {
    all_transient(env, ErrorClass::Connect, format!("delivery temporarily suspended: {reason}"), false)
}

fn local_trouble(env: &Envelope, detail: String) -> Delivery {
    tracing::error!("{}: {detail}", env.id);
    all_transient(env, ErrorClass::Local, detail, false)
}

/// The Postfix-style result line an operator greps for.
fn log_outcome(id: &str, rcpt: &str, a: &Attempt, status: &str, arrival: u64) {
    // The id carries the arrival to the microsecond; the envelope to the second.
    let arrived_us = crate::spool::id::decode(id).unwrap_or(arrival * 1_000_000);
    let now_us =
        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_micros() as u64).unwrap_or(0);
    let delay = now_us.saturating_sub(arrived_us) as f64 / 1e6;
    let relay = a.relay.as_deref().unwrap_or("none");
    let dsn = match (&a.reply, status) {
        (Some(r), _) if r.enhanced.is_some() => r.enhanced.unwrap().to_string(),
        (_, "sent") => "2.0.0".into(),
        (_, "bounced") => "5.0.0".into(),
        _ => "4.0.0".into(),
    };
    tracing::info!("{id}: to=<{rcpt}>, relay={relay}, delay={delay:.2}, dsn={dsn}, status={status} ({})", a.detail);
}
