//! Choosing queue entries: by sender, recipient, recipient domain, age,
//! state and the error class of the last attempt. Shared by `posthorn queue`
//! (`--sender RE --rcpt RE --older-than DUR --state S --error-class C`),
//! `exiqgrep` and `postqueue -s`. Works on envelopes only, never bodies.

use crate::spool::envelope::{Envelope, RcptState};
use crate::spool::{Spool, State};
use regex::Regex;

/// A queued message as the listings see it.
pub(crate) type Entry = (State, Envelope);

/// A state an operator can select; `frozen` is the part of `hold` that
/// Exim's `-Mf` put there.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub(crate) enum StateSel {
    Incoming,
    Active,
    Deferred,
    Hold,
    Frozen,
}

impl StateSel {
    pub(crate) fn matches(self, state: State, env: &Envelope) -> bool {
        match self {
            StateSel::Incoming => state == State::Incoming,
            StateSel::Active => state == State::Active,
            StateSel::Deferred => state == State::Deferred,
            StateSel::Hold => state == State::Hold,
            StateSel::Frozen => state == State::Hold && env.frozen,
        }
    }
}

/// Every criterion must hold; an empty selector takes everything.
#[derive(Debug, Default)]
pub(crate) struct Selector {
    /// Matched against the sender address (`""` for the null sender).
    pub(crate) sender: Option<Regex>,
    /// Matched against each recipient still pending; one match is enough.
    pub(crate) rcpt: Option<Regex>,
    /// A pending recipient in this domain (case-insensitive).
    pub(crate) domain: Option<String>,
    /// Arrived more than this many seconds ago.
    pub(crate) older_than: Option<u64>,
    /// Arrived less than this many seconds ago.
    pub(crate) younger_than: Option<u64>,
    /// Any of these states (empty: any state).
    pub(crate) states: Vec<StateSel>,
    /// A pending recipient whose last attempt failed with this class
    /// (`dns`, `connect`, `tls`, `timeout`, `protocol`, `4xx`, `5xx`, `local`).
    pub(crate) error_class: Option<String>,
    /// Exactly these queue ids (empty: any id).
    pub(crate) ids: Vec<String>,
}

impl Selector {
    pub(crate) fn is_empty(&self) -> bool {
        self.sender.is_none()
            && self.rcpt.is_none()
            && self.domain.is_none()
            && self.older_than.is_none()
            && self.younger_than.is_none()
            && self.states.is_empty()
            && self.error_class.is_none()
            && self.ids.is_empty()
    }

    pub(crate) fn matches(&self, state: State, env: &Envelope, now: u64) -> bool {
        let age = now.saturating_sub(env.arrival);
        let pending = || env.recipients.iter().filter(|r| r.state == RcptState::Pending);
        (self.ids.is_empty() || self.ids.contains(&env.id))
            && self.sender.as_ref().is_none_or(|re| re.is_match(&env.sender))
            && self.rcpt.as_ref().is_none_or(|re| pending().any(|r| re.is_match(&r.address)))
            && self.domain.as_ref().is_none_or(|d| pending().any(|r| domain_of(&r.address).eq_ignore_ascii_case(d)))
            && self.older_than.is_none_or(|s| age > s)
            && self.younger_than.is_none_or(|s| age < s)
            && (self.states.is_empty() || self.states.iter().any(|s| s.matches(state, env)))
            && self
                .error_class
                .as_ref()
                .is_none_or(|c| pending().any(|r| last_class(r).is_some_and(|k| k.eq_ignore_ascii_case(c))))
    }

    /// The matching entries of `queue`, in its order.
    pub(crate) fn filter(&self, queue: Vec<Entry>, now: u64) -> Vec<Entry> {
        queue.into_iter().filter(|(s, e)| self.matches(*s, e, now)).collect()
    }

    /// Reads what the selector needs from `spool`: only the named ids when
    /// ids are given, else every queued envelope.
    pub(crate) fn collect(&self, spool: &Spool) -> Vec<Entry> {
        let now = crate::clock::now_secs();
        if self.ids.is_empty() {
            return self.filter(super::mailq::collect(spool), now);
        }
        self.ids.iter().filter_map(|id| spool.find(id)).filter(|(s, e)| self.matches(*s, e, now)).collect()
    }
}

fn domain_of(address: &str) -> &str {
    address.rsplit_once('@').map(|(_, d)| d).unwrap_or("")
}

/// The error class of a recipient's newest attempt, as spelled in the
/// envelope (`connect`, `4xx`, ...).
pub(crate) fn last_class(r: &crate::spool::envelope::Recipient) -> Option<String> {
    let class = r.history.last()?.class?;
    serde_json::to_string(&class).ok().map(|s| s.trim_matches('"').to_string())
}

/// Compiles an operator's pattern, case-insensitive (addresses are).
pub(crate) fn regex_ci(pattern: &str) -> Result<Regex, String> {
    regex::RegexBuilder::new(pattern)
        .case_insensitive(true)
        .build()
        .map_err(|e| format!("bad pattern {pattern:?}: {e}"))
}

/// Parses an age: `90` (seconds), `30s`, `15m`, `2h`, `3d`, `1w`.
pub(crate) fn parse_age(s: &str) -> Result<u64, String> {
    s.parse::<crate::config::Dur>().map(|d| d.0.as_secs())
}

/// A pending envelope for tests, built from JSON so that fields added to
/// `Envelope` later (with serde defaults) need no change here.
#[cfg(test)]
pub(crate) fn sample(id: &str, sender: &str, rcpts: &[&str], arrival: u64) -> Envelope {
    let rcpts: Vec<_> = rcpts.iter().map(|r| serde_json::json!({"address": r, "state": "pending"})).collect();
    let v = serde_json::json!({
        "v": 1, "id": id, "arrival": arrival, "sender": sender, "size": 10,
        "origin": {"protocol": "local"}, "recipients": rcpts,
    });
    Envelope::from_json(v.to_string().as_bytes()).expect("sample envelope")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::message::outcome::{Attempt, ErrorClass, Status};
    use crate::spool::envelope::AttemptRecord;

    fn env(id: &str, sender: &str, rcpts: &[&str], arrival: u64) -> Envelope {
        sample(id, sender, rcpts, arrival)
    }

    #[test]
    fn criteria_table() {
        let mut a = env("0000000001", "ubuntu@webplatform.org", &["ops@example.org"], 1000);
        a.recipients[0].record(AttemptRecord::of(
            1001,
            Status::Deferred,
            &Attempt::failed(ErrorClass::Connect, "refused"),
        ));
        let b = env("0000000002", "", &["x@Other.example"], 1900);
        let now = 2000;
        let cases: Vec<(Selector, State, &Envelope, bool)> = vec![
            (Selector::default(), State::Deferred, &a, true),
            (Selector { sender: Some(regex_ci("UBUNTU@").unwrap()), ..Default::default() }, State::Deferred, &a, true),
            (Selector { sender: Some(regex_ci("^$").unwrap()), ..Default::default() }, State::Deferred, &b, true),
            (Selector { sender: Some(regex_ci("^$").unwrap()), ..Default::default() }, State::Deferred, &a, false),
            (Selector { rcpt: Some(regex_ci("^ops@").unwrap()), ..Default::default() }, State::Deferred, &a, true),
            (Selector { domain: Some("other.EXAMPLE".into()), ..Default::default() }, State::Hold, &b, true),
            (Selector { older_than: Some(500), ..Default::default() }, State::Deferred, &a, true),
            (Selector { older_than: Some(500), ..Default::default() }, State::Deferred, &b, false),
            (Selector { younger_than: Some(500), ..Default::default() }, State::Deferred, &b, true),
            (Selector { states: vec![StateSel::Hold], ..Default::default() }, State::Deferred, &a, false),
            (Selector { states: vec![StateSel::Frozen], ..Default::default() }, State::Hold, &b, false),
            (Selector { error_class: Some("connect".into()), ..Default::default() }, State::Deferred, &a, true),
            (Selector { error_class: Some("dns".into()), ..Default::default() }, State::Deferred, &a, false),
            (Selector { ids: vec!["0000000002".into()], ..Default::default() }, State::Deferred, &a, false),
        ];
        for (i, (sel, state, e, expected)) in cases.into_iter().enumerate() {
            assert_eq!(sel.matches(state, e, now), expected, "case {i}: {sel:?}");
        }
        assert_eq!(parse_age("2h"), Ok(7200));
        assert_eq!(parse_age("90"), Ok(90));
        assert!(parse_age("soon").is_err());
    }
}
