//! The seal that carries "we vouch for this message" through the content
//! filter and back.
//!
//! Only mail from a source we vouch for is DKIM-signed (`OutMessage::trusted`).
//! A message sent to an after-queue content filter comes back as a new
//! message, through the reinjection listener (SMTP filters) or `sendmail`
//! (pipe filters), and the door it comes back through says nothing about
//! where it first came from: judged by the filter's loopback address, every
//! forgery would leave signed; judged by nothing, no filtered mail would.
//!
//! So every message handed to a filter gets one `X-Posthorn-Seal:` field
//! first in its header: `ID MAC` for mail we vouch for, where MAC is an
//! HMAC-SHA256 of the queue id and the envelope sender under a key that
//! lives only in this process, or `none`. Every door strips every seal
//! field from what it receives; the first one decides:
//! - back through the reinjection listener, the message is vouched for only
//!   with a valid seal (`Verdict::Vouched`);
//! - back through `sendmail`, a local submission is vouched for as always,
//!   unless its seal is `none` or invalid (`Verdict::Disowned`).
//!
//! A seal made before a restart no longer verifies: such a message leaves
//! unsigned, which is delivered; a forged signature would not be taken back.

use ring::hmac;
use std::sync::OnceLock;

/// The header field's name.
pub(crate) const HEADER: &str = "X-Posthorn-Seal";

/// What the seal of a message that came back says.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Verdict {
    /// No seal: the message did not come from our filter.
    Absent,
    /// A seal this process made for mail it vouched for.
    Vouched,
    /// A seal that says `none`, or one this process did not make.
    Disowned,
}

/// The process's key, made on first use.
fn key() -> &'static hmac::Key {
    static KEY: OnceLock<hmac::Key> = OnceLock::new();
    KEY.get_or_init(|| {
        let rng = ring::rand::SystemRandom::new();
        hmac::Key::generate(hmac::HMAC_SHA256, &rng).expect("the system's random generator works")
    })
}

/// What the MAC covers: the queue id and the envelope sender.
fn sealed_text(id: &str, sender: &str) -> Vec<u8> {
    [id.as_bytes(), b"\0", sender.as_bytes()].concat()
}

/// The seal field (CRLF included) for message `id` from `sender`, handed to
/// a content filter; `vouched` says whether we vouch for it.
pub(crate) fn field(id: &str, sender: &str, vouched: bool) -> String {
    if !vouched {
        return format!("{HEADER}: none\r\n");
    }
    let tag = data_encoding::HEXLOWER.encode(hmac::sign(key(), &sealed_text(id, sender)).as_ref());
    format!("{HEADER}: {id} {tag}\r\n")
}

/// What the first seal field of header block `head` says about a message
/// from `sender`, and the block without any seal field.
pub(crate) fn take(head: &[u8], sender: &str) -> (Verdict, Option<Vec<u8>>) {
    let Some(first) = super::header::find(head, HEADER) else { return (Verdict::Absent, None) };
    let value = String::from_utf8_lossy(&super::header::unfold(first.value())).trim().to_string();
    let verdict = match value.split_once(' ') {
        Some((id, tag)) if check(id, sender, tag.trim()) => Verdict::Vouched,
        _ => Verdict::Disowned,
    };
    (verdict, Some(super::header::remove(head, HEADER)))
}

fn check(id: &str, sender: &str, tag: &str) -> bool {
    let Ok(tag) = data_encoding::HEXLOWER_PERMISSIVE.decode(tag.as_bytes()) else { return false };
    hmac::verify(key(), &sealed_text(id, sender), &tag).is_ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_seal_verifies_only_for_its_message_and_sender() {
        let head = |field: String| format!("{field}Subject: x\r\nX-Posthorn-Seal: none\r\n").into_bytes();
        let (verdict, rest) = take(&head(field("HORV1", "a@example.org", true)), "a@example.org");
        assert_eq!(verdict, Verdict::Vouched);
        assert_eq!(rest.unwrap(), b"Subject: x\r\n");
        assert_eq!(take(&head(field("HORV1", "a@example.org", true)), "b@example.org").0, Verdict::Disowned);
        assert_eq!(take(&head(field("HORV1", "a@example.org", false)), "a@example.org").0, Verdict::Disowned);
        let forged = head(format!("{HEADER}: HORV1 {}\r\n", "00".repeat(32)));
        assert_eq!(take(&forged, "a@example.org").0, Verdict::Disowned);
        assert_eq!(take(b"Subject: x\r\n", "a@example.org"), (Verdict::Absent, None));
    }
}
