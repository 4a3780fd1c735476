//! What became of a recipient: the typed result that carries transient vs
//! permanent from the SMTP client through the queue to the bounce, and the
//! per-recipient states and statuses the envelope records.

use crate::smtp::proto::reply::{Enhanced, Reply};
use serde::{Deserialize, Serialize};
use std::fmt;

/// An I/O error as strerror(3) words it ("Connection refused"), without
/// Rust's "(os error 111)": the words are for the operator, and the
/// number adds nothing to them.
pub(crate) fn strerror(e: &std::io::Error) -> String {
    let s = e.to_string();
    match s.rfind(" (os error ") {
        Some(i) if s.ends_with(')') => s[..i].to_string(),
        _ => s,
    }
}

/// Text that came from a remote peer, made safe to record: every control
/// character (C0, DEL, C1) and every character that reorders or breaks
/// lines on a terminal (bidi overrides, the Unicode line and paragraph
/// separators) is written as its escape (`\x1b`, `\u{202e}`), a tab as a
/// space; printable UTF-8 stays as it is. A reply line with an escape
/// sequence would otherwise drive the terminal of whoever reads the log,
/// `mailq` or `queue why`.
pub(crate) fn printable(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '\t' => out.push(' '),
            c if (c as u32) < 0x80 && c.is_control() => out.push_str(&format!("\\x{:02x}", c as u32)),
            c if c.is_control() || is_layout_control(c) => out.push_str(&format!("\\u{{{:x}}}", c as u32)),
            c => out.push(c),
        }
    }
    out
}

/// Invisible characters that change how the text around them is shown.
fn is_layout_control(c: char) -> bool {
    matches!(c, '\u{200e}' | '\u{200f}' | '\u{2028}' | '\u{2029}' | '\u{202a}'..='\u{202e}' | '\u{2066}'..='\u{2069}')
}

/// What went wrong when no reply was available, for logs and `queue why`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ErrorClass {
    Dns,
    Connect,
    Tls,
    Timeout,
    Protocol,
    /// The remote server answered 4xx.
    #[serde(rename = "4xx")]
    Reply4xx,
    /// The remote server answered 5xx.
    #[serde(rename = "5xx")]
    Reply5xx,
    /// Local trouble (reading the message, configuration).
    Local,
}

/// The result for one recipient of one attempt.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Outcome {
    Delivered(Attempt),
    Transient(Attempt),
    Permanent(Attempt),
}

impl Outcome {
    pub fn attempt(&self) -> &Attempt {
        match self {
            Outcome::Delivered(a) | Outcome::Transient(a) | Outcome::Permanent(a) => a,
        }
    }

    /// The recipient's state after this outcome, and the status logged.
    pub(crate) fn status(&self) -> (RcptState, Status) {
        match self {
            Outcome::Delivered(_) => (RcptState::Delivered, Status::Sent),
            Outcome::Transient(_) => (RcptState::Pending, Status::Deferred),
            Outcome::Permanent(_) => (RcptState::Failed, Status::Bounced),
        }
    }
}

/// Where and how one recipient was tried, and what came back.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Attempt {
    /// `host[ip]:port` of the server that gave the answer, when one was reached.
    pub relay: Option<String>,
    /// Whether the connection was encrypted.
    pub(crate) tls: bool,
    /// The reply that decided: the remote server's, or one made here in
    /// its form (a conversion that cannot be done, a Maildir error); `None`
    /// when nothing answered (DNS, connection, timeout).
    pub reply: Option<Reply>,
    /// The error class when there was no usable reply (or the reply's class).
    pub class: Option<ErrorClass>,
    /// Human-readable reason, safe to log and to put in a bounce.
    pub detail: String,
}

impl Attempt {
    /// A failure without any reply: nothing reached, or trouble here.
    pub(crate) fn failed(class: ErrorClass, detail: impl Into<String>) -> Attempt {
        Attempt { relay: None, tls: false, reply: None, class: Some(class), detail: detail.into() }
    }

    /// The enhanced status code of the reply that decided, if any.
    pub(crate) fn enhanced(&self) -> Option<Enhanced> {
        self.reply.as_ref().and_then(|r| r.enhanced)
    }
}

/// A recipient's delivery state in the envelope.
#[derive(Clone, Copy, Debug, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub(crate) enum RcptState {
    /// Not yet delivered; deferred when it has history.
    Pending,
    Delivered,
    Failed,
}

/// The status of one attempt for one recipient, as logged (`status=`) and
/// recorded in its history.
#[derive(Clone, Copy, Debug, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub(crate) enum Status {
    Sent,
    Deferred,
    Bounced,
    /// Still undeliverable after `queue.max_lifetime`: returned to sender.
    Expired,
}

impl Status {
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            Status::Sent => "sent",
            Status::Deferred => "deferred",
            Status::Bounced => "bounced",
            Status::Expired => "expired",
        }
    }

    /// The enhanced code a status stands for when no reply gave one.
    pub(crate) fn default_code(self) -> Enhanced {
        match self {
            Status::Sent => Enhanced(2, 0, 0),
            Status::Deferred => Enhanced(4, 0, 0),
            Status::Bounced => Enhanced(5, 0, 0),
            Status::Expired => Enhanced(4, 4, 7),
        }
    }
}

impl fmt::Display for Status {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn statuses_serialize_as_envelopes_always_wrote_them() {
        for (status, text) in [
            (Status::Sent, "sent"),
            (Status::Deferred, "deferred"),
            (Status::Bounced, "bounced"),
            (Status::Expired, "expired"),
        ] {
            assert_eq!(serde_json::to_string(&status).unwrap(), format!("\"{text}\""));
            assert_eq!(serde_json::from_str::<Status>(&format!("\"{text}\"")).unwrap(), status);
            assert_eq!(status.to_string(), text);
        }
        assert_eq!(serde_json::to_string(&ErrorClass::Reply4xx).unwrap(), "\"4xx\"");
    }

    #[test]
    fn remote_text_is_made_printable() {
        let cases = [
            ("Mailbox busy", "Mailbox busy"),
            ("Grüße, 用户 ✓", "Grüße, 用户 ✓"),
            ("\u{1b}[2J\u{1b}]0;pwned\u{7}", "\\x1b[2J\\x1b]0;pwned\\x07"),
            ("a\rb\nc\0d\u{7f}", "a\\x0db\\x0ac\\x00d\\x7f"),
            ("tab\there", "tab here"),
            ("\u{9b}31m", "\\u{9b}31m"),
            ("evil\u{202e}txt.exe\u{2028}next", "evil\\u{202e}txt.exe\\u{2028}next"),
        ];
        for (input, expected) in cases {
            assert_eq!(printable(input), expected, "{input:?}");
        }
    }

    #[test]
    fn the_code_is_the_replys() {
        let mut a = Attempt::failed(ErrorClass::Protocol, "x");
        assert_eq!(a.enhanced(), None);
        a.reply = Some(Reply::new(550, Enhanced(5, 1, 1), "no"));
        assert_eq!(a.enhanced(), Some(Enhanced(5, 1, 1)));
    }
}
