//! The ground floor: the types every stage hands on, and what they need to
//! be read and written. Depends on nothing in the crate but `smtp::proto`
//! (replies and status codes); every other stage may use it.
//!
//! - this file: [`OutMessage`] and `OutRecipient`, a queued message as a
//!   transport receives it;
//! - [`outcome`]: error classes, per-recipient outcomes, states and statuses;
//! - [`nexthop`]: next-hop syntax (`[host]:port`), targets, hops, filter specs;
//! - `header`: the header block, byte-exact: split, fields, find, remove, rewrite;
//! - `body`: a message's bytes, in memory or mapped from the spool;
//! - `alias_items`: the items of an alias's value, `:include:` and `.forward` files;
//! - `addrlist`: the addresses in an address-list field, changed one by one, byte-exact;
//! - `downconvert`: 8-bit MIME to 7 bit (RFC 6152, 6532);
//! - `seal`: whether we vouch for a message, carried through the content filter.

pub(crate) mod addrlist;
pub(crate) mod alias_items;
pub(crate) mod body;
pub(crate) mod downconvert;
pub(crate) mod header;
pub mod nexthop;
pub mod outcome;
pub(crate) mod seal;

pub(crate) use body::Body;

/// The envelope parameters a transport needs for one recipient.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct OutRecipient {
    /// Index of this recipient in the queued envelope; outcomes refer to it.
    pub(crate) index: usize,
    pub(crate) address: String,
    /// RFC 3461 NOTIFY value as received (`SUCCESS,FAILURE`), passed on when
    /// the next hop offers DSN.
    pub(crate) notify: Option<String>,
    /// RFC 3461 ORCPT value as received (`rfc822;user@example.org`).
    pub(crate) orcpt: Option<String>,
    /// For an alias that ends in commands or files (`|cmd`, `/path`):
    /// what `local:` delivers it to, as the route found it at this attempt.
    pub(crate) alias_deliveries: Vec<AliasDelivery>,
    /// Those of `alias_deliveries` that took the message at an earlier
    /// attempt ([`AliasTarget::key`]): not run again.
    pub(crate) done: Vec<String>,
}

/// One command or file a local alias delivers to.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct AliasDelivery {
    pub(crate) target: AliasTarget,
    /// The uid owning the alias file: the account it runs as (root's
    /// files run as `local.default_privs`).
    pub(crate) owner: u32,
    /// `hash:/etc/aliases line 3`, for messages.
    pub(crate) source: String,
}

/// A command line (run with `/bin/sh -c` only when it has shell
/// metacharacters) or an absolute file path.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum AliasTarget {
    Command(String),
    File(String),
}

impl AliasTarget {
    /// `|command` or the path: how the envelope remembers it was done.
    pub(crate) fn key(&self) -> String {
        match self {
            AliasTarget::Command(c) => format!("|{c}"),
            AliasTarget::File(f) => f.clone(),
        }
    }
}

/// The header a satellite stamps its trace id in. It lives among the
/// hops that use it — posthorn peers (`XPOSTHORN-TRACE`) and the content
/// filter — and is taken out before a message leaves them.
pub(crate) const TRACE_HEADER: &str = "X-Posthorn-Trace";

/// One message handed to a transport.
#[derive(Clone, Debug)]
pub struct OutMessage {
    /// Queue id, for logs.
    pub(crate) id: String,
    /// Reverse path without angle brackets; empty for the null sender.
    pub(crate) sender: String,
    pub(crate) recipients: Vec<OutRecipient>,
    /// The message exactly as stored: CRLF line ends, not dot-stuffed.
    pub(crate) body: Body,
    /// The message contains 8-bit data (BODY=8BITMIME was given on intake).
    pub(crate) eight_bit: bool,
    /// SMTPUTF8 was given on intake.
    pub(crate) smtputf8: bool,
    /// RFC 3461 RET and ENVID, when given on intake.
    pub(crate) ret: Option<String>,
    pub(crate) envid: Option<String>,
    /// The trace id, passed on as `TRACE=` when the next hop is posthorn.
    pub(crate) trace_id: Option<String>,
    /// The next hop is our content filter, which hands the message back:
    /// the trace header (`TRACE_HEADER`) goes with it although the filter
    /// does not speak `TRACE=`. Every other hop that does not speak it
    /// gets the message without the header (`smtp::client`).
    pub(crate) to_filter: bool,
    /// It came from a source we vouch for (`Envelope::may_sign`): only then
    /// is it DKIM-signed, so no stranger gets our signature on a forgery.
    pub(crate) trusted: bool,
}

impl OutMessage {
    /// A plain message to `recipients` (indexes in order, no DSN
    /// parameters), as transports' tests and tools need one.
    pub fn simple(id: &str, sender: &str, recipients: &[&str], body: &[u8]) -> OutMessage {
        OutMessage {
            id: id.to_string(),
            sender: sender.to_string(),
            recipients: recipients
                .iter()
                .enumerate()
                .map(|(index, a)| OutRecipient {
                    index,
                    address: a.to_string(),
                    notify: None,
                    orcpt: None,
                    alias_deliveries: Vec::new(),
                    done: Vec::new(),
                })
                .collect(),
            body: Body::from(body),
            eight_bit: body.iter().any(|b| *b >= 0x80),
            smtputf8: false,
            ret: None,
            envid: None,
            trace_id: None,
            to_filter: false,
            trusted: false,
        }
    }
}

impl OutRecipient {
    /// The recipient as it reached the queue, before any rewriting
    /// (`X-Original-To:`); see [`original_recipient`].
    pub(crate) fn original(&self) -> String {
        original_recipient(self.orcpt.as_deref(), &self.address)
    }
}

/// The original recipient of a queued recipient: the address of its ORCPT
/// (`rfc822;` type, xtext decoded), which the door sets to the address
/// before canonical maps and aliases rewrote it (unless the client gave
/// one); else the address itself.
pub(crate) fn original_recipient(orcpt: Option<&str>, address: &str) -> String {
    let Some((kind, value)) = orcpt.and_then(|o| o.split_once(';')) else { return address.to_string() };
    if !kind.trim().eq_ignore_ascii_case("rfc822") {
        return address.to_string();
    }
    let decoded = decode_xtext(value.trim());
    if decoded.is_empty() || decoded.chars().any(char::is_control) { address.to_string() } else { decoded }
}

/// RFC 3461 4: `+XX` is the byte XX; a bad escape is kept as written.
fn decode_xtext(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        let hex =
            b.get(i + 1..i + 3).and_then(|h| std::str::from_utf8(h).ok()).and_then(|h| u8::from_str_radix(h, 16).ok());
        match (b[i], hex) {
            (b'+', Some(byte)) => {
                out.push(byte);
                i += 3;
            }
            (other, _) => {
                out.push(other);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn original_recipients() {
        let cases = [
            (None, "a@x.example", "a@x.example"),
            (Some("rfc822;root@vm1.example.org"), "ops@example.org", "root@vm1.example.org"),
            (Some("RFC822; u+2Bext+40example.org"), "ops@example.org", "u+ext@example.org"),
            (Some("utf-8;x@y"), "ops@example.org", "ops@example.org"),
            (Some("rfc822;+0A"), "ops@example.org", "ops@example.org"),
            (Some("rfc822;a+zz@b"), "ops@example.org", "a+zz@b"),
            (Some("garbage"), "ops@example.org", "ops@example.org"),
        ];
        for (orcpt, address, want) in cases {
            assert_eq!(original_recipient(orcpt, address), want, "{orcpt:?}");
        }
    }
}
