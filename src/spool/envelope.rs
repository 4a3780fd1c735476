//! The envelope: everything about a queued message except its body.
//!
//! Stored as one small JSON document per message, so listing and selecting
//! over a large queue reads envelopes only. It carries per-recipient state
//! and attempt history, which is what `queue why` prints.

pub(crate) use crate::message::outcome::RcptState;
use crate::message::outcome::{Attempt, ErrorClass, Status};
use crate::smtp::proto::reply::Reply;
use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// Version written into every envelope; readers refuse newer ones.
pub(crate) const VERSION: u32 = 1;
/// Attempts remembered per recipient; older ones are dropped first.
pub(crate) const HISTORY_LIMIT: usize = 20;

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct Envelope {
    pub(crate) v: u32,
    pub(crate) id: String,
    /// Arrival, seconds since the epoch.
    pub(crate) arrival: u64,
    /// Reverse path without angle brackets; empty for the null sender.
    pub(crate) sender: String,
    /// Body size in bytes as stored.
    pub(crate) size: u64,
    #[serde(default)]
    pub(crate) eight_bit: bool,
    #[serde(default)]
    pub(crate) smtputf8: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) ret: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) envid: Option<String>,
    pub(crate) origin: Origin,
    pub(crate) recipients: Vec<Recipient>,
    /// Delivery attempts made on this message.
    #[serde(default)]
    pub(crate) attempts: u32,
    /// Earliest time of the next attempt, seconds since the epoch.
    #[serde(default)]
    pub(crate) next_attempt: u64,
    /// Frozen (Exim `-Mf`): kept in `hold/`, shown as frozen, not tried
    /// until thawed. A plain hold (Postfix `postsuper -h`) leaves it false.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub(crate) frozen: bool,
    /// A delay warning went to the sender already (sent once per message).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub(crate) delay_warned: bool,
    /// The message came back from the content filter (it arrived on
    /// `filter.reinject_listen`): it is never filtered again.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub(crate) filtered: bool,
    /// The trace id: stamped by the first posthorn the message entered
    /// (its queue id there), passed on with `TRACE=` to the next.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) trace_id: Option<String>,
    /// The message came from a source we vouch for (a local submission,
    /// the daemon itself, a trusted network, an authenticated user or a
    /// trusted client certificate), so it may leave DKIM-signed. `None` in
    /// envelopes written before this was recorded: see `may_sign`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) trusted: Option<bool>,
    /// The `[verify]` results of the hop that accepted it, in short
    /// (`spf=pass (example.org) dkim=none dmarc=pass (example.org) arc=none`),
    /// for `queue show`; `None` when nothing was checked.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) auth_results: Option<String>,
}

/// How the message reached us, for the `Received:` header and logs.
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq)]
pub(crate) struct Origin {
    /// `SMTP`, `ESMTP`, `local`.
    pub(crate) protocol: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) helo: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) client: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) user: Option<String>,
}

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub(crate) struct Recipient {
    pub(crate) address: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) notify: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) orcpt: Option<String>,
    pub(crate) state: RcptState,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub(crate) history: Vec<AttemptRecord>,
    /// An alias's commands and files (`|cmd`, `/path`) that took the
    /// message at an attempt where another failed: later attempts skip
    /// them, so a deferral does not run them twice.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub(crate) done: Vec<String>,
}

/// One delivery attempt for one recipient.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub(crate) struct AttemptRecord {
    /// Seconds since the epoch.
    pub(crate) at: u64,
    pub(crate) status: Status,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) relay: Option<String>,
    #[serde(default)]
    pub(crate) tls: bool,
    /// The reply that decided, stored as its one-line text
    /// (`550 5.1.1 text`), as envelopes have always held it.
    #[serde(default, skip_serializing_if = "Option::is_none", with = "reply_text")]
    pub(crate) reply: Option<Reply>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) class: Option<ErrorClass>,
    pub(crate) detail: String,
}

impl Envelope {
    pub(crate) fn pending(&self) -> impl Iterator<Item = (usize, &Recipient)> {
        self.recipients.iter().enumerate().filter(|(_, r)| r.state == RcptState::Pending)
    }

    pub(crate) fn is_done(&self) -> bool {
        self.recipients.iter().all(|r| r.state != RcptState::Pending)
    }

    /// Whether the message may leave signed with our DKIM keys.
    ///
    /// An envelope without `trusted` was accepted under the old rule, which
    /// signed anyone's mail, so its trust was never decided. Only what its
    /// origin proves counts then: a local submission (`local`, which the
    /// daemon's own notices are too) or an authenticated session (`ESMTPA`,
    /// `ESMTPSA`). A client from a trusted network left no mark in the
    /// origin that a stranger's could not share, so such old mail leaves
    /// unsigned: an unsigned message is delivered, a forged signature is not
    /// taken back.
    pub(crate) fn may_sign(&self) -> bool {
        self.trusted.unwrap_or(matches!(self.origin.protocol.as_str(), "local" | "ESMTPA" | "ESMTPSA"))
    }

    pub fn to_json(&self) -> Vec<u8> {
        let mut out = serde_json::to_vec(self).expect("an envelope always serializes");
        out.push(b'\n');
        out
    }

    pub fn from_json(data: &[u8]) -> Result<Envelope, String> {
        let env: Envelope = serde_json::from_slice(data).map_err(|e| format!("envelope does not parse: {e}"))?;
        if env.v > VERSION {
            return Err(format!("envelope version {} is newer than this posthorn ({VERSION})", env.v));
        }
        if !super::id::is_valid(&env.id) {
            return Err(format!("envelope carries an invalid queue id {:?}", env.id));
        }
        Ok(env)
    }

    /// What any local user may see of this message (`mailq`, which Postfix
    /// lets everyone run): no origin, and of each recipient's history only
    /// the last attempt's explanation.
    pub(crate) fn redacted(&self) -> Envelope {
        let mut env = self.clone();
        env.origin = Origin::default();
        // They name the client's HELO and the domains it spoke for.
        env.auth_results = None;
        for r in &mut env.recipients {
            if let Some(last) = r.history.pop() {
                r.history = vec![AttemptRecord { relay: None, reply: None, ..last }];
            }
        }
        env
    }
}

impl AttemptRecord {
    /// The record of an attempt that a transport reported.
    pub(crate) fn of(at: u64, status: Status, a: &Attempt) -> AttemptRecord {
        AttemptRecord {
            at,
            status,
            relay: a.relay.clone(),
            tls: a.tls,
            reply: a.reply.clone(),
            class: a.class,
            detail: a.detail.clone(),
        }
    }

    /// A status decided here, with no next hop involved (expiry, an
    /// operator's bounce).
    pub(crate) fn local(at: u64, status: Status, detail: String) -> AttemptRecord {
        AttemptRecord { at, status, relay: None, tls: false, reply: None, class: None, detail }
    }
}

impl Recipient {
    pub(crate) fn new(address: String, notify: Option<String>, orcpt: Option<String>) -> Recipient {
        Recipient { address, notify, orcpt, state: RcptState::Pending, history: Vec::new(), done: Vec::new() }
    }

    pub(crate) fn record(&mut self, attempt: AttemptRecord) {
        if self.history.len() >= HISTORY_LIMIT {
            self.history.remove(0);
        }
        self.history.push(attempt);
    }
}

/// A stored reply as its one-line text; a text that does not parse as a
/// reply (never written by posthorn) is dropped rather than making the
/// whole envelope unreadable.
mod reply_text {
    use super::*;

    pub(crate) fn serialize<S: Serializer>(reply: &Option<Reply>, s: S) -> Result<S::Ok, S::Error> {
        match reply {
            Some(r) => s.serialize_str(&r.to_string()),
            None => s.serialize_none(),
        }
    }

    pub(crate) fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Reply>, D::Error> {
        let text: Option<String> = Option::deserialize(d)?;
        Ok(text.as_deref().and_then(Reply::from_text))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::smtp::proto::reply::Enhanced;

    /// An envelope as posthorn wrote it before `trusted` was recorded.
    fn old_envelope(origin: &str) -> Envelope {
        let json = format!(
            r#"{{"v":1,"id":"0KAB12CD34","arrival":1,"sender":"a@example.org","size":3,"origin":{origin},"recipients":[]}}"#
        );
        Envelope::from_json(json.as_bytes()).unwrap()
    }

    #[test]
    fn auth_results_are_optional_and_left_out_when_unset() {
        let mut env = old_envelope(r#"{"protocol":"ESMTP"}"#);
        assert_eq!(env.auth_results, None);
        assert!(!String::from_utf8(env.to_json()).unwrap().contains("auth_results"));
        env.auth_results = Some("spf=pass (example.org) arc=none".into());
        let back = Envelope::from_json(&env.to_json()).unwrap();
        assert_eq!(back.auth_results.as_deref(), Some("spf=pass (example.org) arc=none"));
        assert_eq!(back.v, VERSION);
        assert_eq!(env.redacted().auth_results, None);
    }

    #[test]
    fn old_envelopes_are_signed_only_when_their_origin_proves_trust() {
        let table = [
            (r#"{"protocol":"local","user":"root"}"#, true),
            (r#"{"protocol":"ESMTPA","client":"192.0.2.1"}"#, true),
            (r#"{"protocol":"ESMTPSA","client":"192.0.2.1"}"#, true),
            (r#"{"protocol":"ESMTP","client":"10.0.0.1"}"#, false),
            (r#"{"protocol":"ESMTPS","client":"192.0.2.1"}"#, false),
            (r#"{"protocol":"SMTP","client":"192.0.2.1"}"#, false),
        ];
        for (origin, signed) in table {
            let env = old_envelope(origin);
            assert_eq!(env.trusted, None);
            assert_eq!(env.may_sign(), signed, "{origin}");
        }
    }

    #[test]
    fn a_recorded_decision_wins_over_the_origin() {
        let mut env = old_envelope(r#"{"protocol":"local"}"#);
        env.trusted = Some(false);
        assert!(!Envelope::from_json(&env.to_json()).unwrap().may_sign());
        let mut env = old_envelope(r#"{"protocol":"ESMTP","client":"10.0.0.1"}"#);
        env.trusted = Some(true);
        assert!(Envelope::from_json(&env.to_json()).unwrap().may_sign());
    }

    #[test]
    fn attempt_records_keep_their_stored_form() {
        let stored = r#"{"at":1764800000,"status":"deferred","relay":"mx.example.org[192.0.2.1]:25","tls":true,"reply":"451 4.7.1 Greylisted, try later","class":"4xx","detail":"host said: 451"}"#;
        let a: AttemptRecord = serde_json::from_str(stored).unwrap();
        assert_eq!(a.status, Status::Deferred);
        assert_eq!(a.reply, Some(Reply::new(451, Enhanced(4, 7, 1), "Greylisted, try later")));
        assert_eq!(a.class, Some(ErrorClass::Reply4xx));
        assert_eq!(serde_json::to_string(&a).unwrap(), stored);
    }

    #[test]
    fn replies_round_trip_through_their_text() {
        for text in ["250 2.0.0 Ok: queued as X", "421 closing", "550 5.1.1 <a@b>: unknown"] {
            assert_eq!(Reply::from_text(text).unwrap().to_string(), text);
        }
        assert_eq!(Reply::from_text("250"), Some(Reply::plain(250, "")));
        for bad in ["", "25", "abc def", "600 x", "250x"] {
            assert_eq!(Reply::from_text(bad), None, "{bad:?}");
        }
    }
}
