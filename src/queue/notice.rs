//! Which delivery status notifications a delivery attempt calls for, and
//! sending them: failures (bounces), delays (once per message), and
//! "relayed" notices for NOTIFY=SUCCESS when the next hop could not take
//! the request over. Never a notice to the null sender (that would answer
//! a bounce with a bounce), and at most `queue.bounce_rate_limit` notices
//! per sender per hour, so one broken list cannot start a bounce storm.

use crate::dsn::{self, DsnAction, Item, Returned};
use crate::ingress::{Ingress, Transaction};
use crate::message::header;
use crate::message::outcome::Status;
use crate::spool::Spool;
use crate::spool::envelope::{Envelope, RcptState, Recipient};
use std::collections::{HashMap, VecDeque};
use std::sync::Mutex;

/// Messages larger than this come back with their headers only.
const RETURN_FULL_LIMIT: u64 = 100 * 1024;

/// Per-sender notice counts over the last hour.
#[derive(Debug)]
pub(crate) struct BounceLimiter {
    per_hour: usize,
    sent: Mutex<HashMap<String, VecDeque<u64>>>,
}

impl BounceLimiter {
    pub(crate) fn new(per_hour: usize) -> BounceLimiter {
        BounceLimiter { per_hour, sent: Mutex::new(HashMap::new()) }
    }

    /// Counts one notice to `sender` at `now` if the limit allows it.
    pub(crate) fn allow(&self, sender: &str, now: u64) -> bool {
        let mut sent = self.sent.lock().unwrap_or_else(|e| e.into_inner());
        if sent.len() > 100_000 {
            sent.retain(|_, times| times.back().is_some_and(|t| now.saturating_sub(*t) < 3600));
        }
        let times = sent.entry(sender.to_ascii_lowercase()).or_default();
        while times.front().is_some_and(|t| now.saturating_sub(*t) >= 3600) {
            times.pop_front();
        }
        if times.len() >= self.per_hour {
            return false;
        }
        times.push_back(now);
        true
    }
}

/// The status for a recipient's report, from its last attempt.
fn status_of(r: &Recipient, action: DsnAction) -> (String, Option<String>, Option<String>, u64) {
    let last = r.history.last();
    // The code of the reply that decided (a remote one, or a refusal made
    // here in its form, `554 5.6.3 Conversion required ...`), else by action.
    let status = last
        .and_then(|a| a.reply.as_ref()?.enhanced)
        .unwrap_or_else(|| match (action, last.map(|a| a.status)) {
            (DsnAction::Failed, Some(Status::Expired)) => Status::Expired.default_code(),
            (DsnAction::Failed, _) => Status::Bounced.default_code(),
            (DsnAction::Delayed, _) => Status::Deferred.default_code(),
            _ => Status::Sent.default_code(),
        })
        .to_string();
    let diagnostic = last.map(|a| match &a.reply {
        Some(reply) => format!("smtp; {reply}"),
        None => format!("X-Posthorn; {}", a.detail),
    });
    let (mta, at) = match last {
        Some(a) => (a.relay.clone(), a.at),
        None => (None, 0),
    };
    (status, diagnostic, mta, at)
}

fn item(r: &Recipient, action: DsnAction) -> Item {
    let (status, diagnostic, remote_mta, last_attempt) = status_of(r, action);
    Item { recipient: r.address.clone(), orcpt: r.orcpt.clone(), action, status, diagnostic, remote_mta, last_attempt }
}

/// Notices due after an attempt. `before` is each recipient's state before
/// the attempt; only changes made by this attempt are reported. `success`
/// says, per recipient, what a NOTIFY=SUCCESS notice would report: `None`
/// when the next hop took the DSN request over, `Delivered` for final
/// (local) delivery, `Relayed` for a next hop without DSN.
pub(crate) fn due(
    env: &mut Envelope,
    before: &[RcptState],
    success: &[Option<DsnAction>],
    delay_warning: Option<u64>,
    now: u64,
) -> Vec<Vec<Item>> {
    let changed = |i: usize, to: RcptState| before.get(i) == Some(&RcptState::Pending) && env.recipients[i].state == to;
    let mut failed = Vec::new();
    let mut relayed = Vec::new();
    for (i, r) in env.recipients.iter().enumerate() {
        if changed(i, RcptState::Failed) && dsn::wants(r.notify.as_deref(), "FAILURE") {
            failed.push(item(r, DsnAction::Failed));
        }
        if let Some(action) = success.get(i).copied().flatten()
            && changed(i, RcptState::Delivered)
            && dsn::wants(r.notify.as_deref(), "SUCCESS")
        {
            relayed.push(item(r, action));
        }
    }
    let mut delayed = Vec::new();
    if let Some(after) = delay_warning.filter(|_| !env.delay_warned)
        && now.saturating_sub(env.arrival) >= after
    {
        delayed = env
            .pending()
            .filter(|(_, r)| dsn::wants(r.notify.as_deref(), "DELAY") && !r.history.is_empty())
            .map(|(_, r)| item(r, DsnAction::Delayed))
            .collect();
        if !delayed.is_empty() {
            env.delay_warned = true;
        }
    }
    [failed, delayed, relayed].into_iter().filter(|v| !v.is_empty()).collect()
}

/// Builds and queues one notice about `env` to its sender.
pub(crate) async fn send(
    ingress: &Ingress,
    spool: &Spool,
    limiter: &BounceLimiter,
    env: &Envelope,
    items: Vec<Item>,
    now: u64,
) {
    let what = match items[0].action {
        DsnAction::Failed => "non-delivery",
        DsnAction::Delayed => "delay",
        _ => "success",
    };
    if env.sender.is_empty() {
        tracing::info!("{}: no {what} notification: the sender is <> (never a bounce to a bounce)", env.id);
        return;
    }
    if !limiter.allow(&env.sender, now) {
        tracing::warn!("{}: {what} notification to <{}> suppressed: rate limit reached", env.id, env.sender);
        return;
    }
    let body = if items[0].action == DsnAction::Failed { spool.read_body(&env.id).ok() } else { None };
    // 8-bit header fields outside SMTPUTF8 cannot be converted for a next
    // hop without 8BITMIME (often the very reason for the bounce), and a
    // bounce that cannot be sent is lost: return the headers alone then, as
    // text/rfc822-headers, which converts to quoted-printable.
    let raw_headers = |b: &[u8]| !env.smtputf8 && !header::block(b).is_ascii();
    let original = match &body {
        Some(b) if env.ret.as_deref() != Some("HDRS") && (b.len() as u64) <= RETURN_FULL_LIMIT && !raw_headers(b) => {
            Returned::Full(b)
        }
        Some(b) => Returned::Headers(header::block(b)),
        None => Returned::Nothing,
    };
    let message = dsn::build(ingress.hostname(), env, &items, original, now);
    let tx = Transaction::notice_to(&env.sender, env.smtputf8);
    match ingress.counted_as(crate::metrics::Door::Notice).submit(tx, &message).await {
        Ok(id) => tracing::info!("{}: sender {what} notification: {id}", env.id),
        Err(e) => tracing::error!("{}: cannot queue the {what} notification: {e}", env.id),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn limiter_counts_per_sender_per_hour() {
        let l = BounceLimiter::new(2);
        assert!(l.allow("a@x", 100));
        assert!(l.allow("A@X", 200));
        assert!(!l.allow("a@x", 300));
        assert!(l.allow("b@x", 300));
        assert!(l.allow("a@x", 3700));
    }
}
