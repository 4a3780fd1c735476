//! Delivery status notifications (RFC 3464): bounces, delay warnings and
//! success notices, built as `multipart/report` messages.
//!
//! The queue decides *when* a notice is due and who may get one; this
//! module only writes the message. Notices are sent from the null sender
//! through the same door into the queue as any other mail (RFC 3461 6.2),
//! so a notice that cannot be delivered is never answered with another.

use crate::clock;
use crate::spool::envelope::Envelope;

/// RFC 3464 2.3.3 Action values.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum DsnAction {
    Failed,
    Delayed,
    Delivered,
    Relayed,
}

impl DsnAction {
    fn as_str(self) -> &'static str {
        match self {
            DsnAction::Failed => "failed",
            DsnAction::Delayed => "delayed",
            DsnAction::Delivered => "delivered",
            DsnAction::Relayed => "relayed",
        }
    }
}

/// One recipient's part of a report.
#[derive(Clone, Debug)]
pub(crate) struct Item {
    pub(crate) recipient: String,
    /// ORCPT as received (`rfc822;user@example.org`).
    pub(crate) orcpt: Option<String>,
    pub(crate) action: DsnAction,
    /// RFC 3463 status, `5.1.1`.
    pub(crate) status: String,
    /// `smtp; 550 5.1.1 ...` or a local explanation.
    pub(crate) diagnostic: Option<String>,
    /// `host[ip]:port` of the server that answered.
    pub(crate) remote_mta: Option<String>,
    pub(crate) last_attempt: u64,
}

/// What the original message contributes (RFC 3461 RET).
pub(crate) enum Returned<'a> {
    Full(&'a [u8]),
    Headers(&'a [u8]),
    Nothing,
}

/// A MIME boundary nobody can predict: the returned message is the
/// sender's text, and a sender who knew the boundary (from the queue id and
/// the time, as it once was made) could end the report early and forge
/// parts of its own. 128 random bits; `=_` never occurs in base64 or
/// quoted-printable content.
fn boundary() -> String {
    use ring::rand::{SecureRandom, SystemRandom};
    let mut bytes = [0u8; 16];
    if SystemRandom::new().fill(&mut bytes).is_err() {
        // The system's generator failing is near impossible; a fast one
        // still beats a predictable boundary.
        bytes = fastrand::u128(..).to_le_bytes();
    }
    format!("=_posthorn_{}", data_encoding::HEXLOWER.encode(&bytes))
}

/// Builds a notice about `env` for its sender. The result is a complete
/// message with CRLF line ends, ready for the queue.
pub(crate) fn build(hostname: &str, env: &Envelope, items: &[Item], original: Returned<'_>, now: u64) -> Vec<u8> {
    let boundary = boundary();
    let kind = items.first().map(|i| i.action).unwrap_or(DsnAction::Failed);
    let subject = match kind {
        DsnAction::Failed => "Undelivered Mail Returned to Sender",
        DsnAction::Delayed => "Delayed Mail (still being retried)",
        DsnAction::Delivered | DsnAction::Relayed => "Successful Mail Delivery Report",
    };
    let mut m = String::new();
    m.push_str(&format!("From: MAILER-DAEMON@{hostname} (Mail Delivery System)\r\n"));
    m.push_str(&format!("To: {}\r\n", env.sender));
    m.push_str(&format!("Subject: {subject}\r\n"));
    m.push_str(&format!("Date: {}\r\n", clock::rfc5322(now)));
    m.push_str(&format!("Message-ID: <{}.{}.{}@{hostname}>\r\n", env.id, kind.as_str(), now));
    m.push_str("Auto-Submitted: auto-replied\r\n");
    m.push_str("MIME-Version: 1.0\r\n");
    m.push_str(&format!(
        "Content-Type: multipart/report; report-type=delivery-status;\r\n\tboundary=\"{boundary}\"\r\n\r\n"
    ));
    m.push_str("This is a MIME-encapsulated message.\r\n\r\n");

    m.push_str(&format!("--{boundary}\r\nContent-Description: Notification\r\n"));
    m.push_str("Content-Type: text/plain; charset=utf-8\r\nContent-Transfer-Encoding: 8bit\r\n\r\n");
    m.push_str(&human_part(hostname, env, items, kind));

    m.push_str(&format!("\r\n--{boundary}\r\nContent-Description: Delivery report\r\n"));
    m.push_str("Content-Type: message/delivery-status\r\n\r\n");
    m.push_str(&format!("Reporting-MTA: dns; {hostname}\r\nX-Posthorn-Queue-ID: {}\r\n", env.id));
    if let Some(envid) = &env.envid {
        m.push_str(&format!("Original-Envelope-Id: {}\r\n", one_line(envid)));
    }
    m.push_str(&format!("Arrival-Date: {}\r\n", clock::rfc5322(env.arrival)));
    for item in items {
        m.push_str("\r\n");
        m.push_str(&format!("Final-Recipient: rfc822; {}\r\n", one_line(&item.recipient)));
        if let Some(orcpt) = &item.orcpt {
            m.push_str(&format!("Original-Recipient: {}\r\n", one_line(&orcpt.replacen(';', "; ", 1))));
        }
        m.push_str(&format!("Action: {}\r\nStatus: {}\r\n", item.action.as_str(), item.status));
        if let Some(mta) = &item.remote_mta {
            let host = mta.split('[').next().unwrap_or(mta);
            m.push_str(&format!("Remote-MTA: dns; {}\r\n", one_line(host)));
        }
        if let Some(diag) = &item.diagnostic {
            m.push_str(&format!("Diagnostic-Code: {}\r\n", one_line(diag)));
        }
        if item.last_attempt > 0 {
            m.push_str(&format!("Last-Attempt-Date: {}\r\n", clock::rfc5322(item.last_attempt)));
        }
    }
    let mut out = m.into_bytes();
    match original {
        Returned::Full(body) => {
            out.extend_from_slice(
                format!("\r\n--{boundary}\r\nContent-Description: Undelivered Message\r\n").as_bytes(),
            );
            out.extend_from_slice(b"Content-Type: message/rfc822\r\n\r\n");
            out.extend_from_slice(body);
            if !body.ends_with(b"\r\n") {
                out.extend_from_slice(b"\r\n");
            }
        }
        Returned::Headers(headers) => {
            out.extend_from_slice(format!("\r\n--{boundary}\r\nContent-Description: Message Headers\r\n").as_bytes());
            out.extend_from_slice(b"Content-Type: text/rfc822-headers\r\n\r\n");
            out.extend_from_slice(headers);
        }
        Returned::Nothing => {}
    }
    out.extend_from_slice(format!("\r\n--{boundary}--\r\n").as_bytes());
    out
}

fn human_part(hostname: &str, env: &Envelope, items: &[Item], kind: DsnAction) -> String {
    let mut t = format!("This is the mail system at host {hostname}.\r\n\r\n");
    t.push_str(match kind {
        DsnAction::Failed => {
            "I'm sorry to have to inform you that your message could not\r\nbe delivered to one or more recipients. It's attached below.\r\n"
        }
        DsnAction::Delayed => {
            "Your message could not be delivered yet to one or more recipients.\r\nIt will be retried until it is too old; you need not resend it.\r\n"
        }
        _ => "Your message was successfully delivered to the destination(s)\r\nlisted below.\r\n",
    });
    t.push_str(&format!("\r\nQueue id: {}\r\n\r\n", env.id));
    for item in items {
        let why = item.diagnostic.as_deref().unwrap_or(item.action.as_str());
        t.push_str(&format!("<{}>: {}\r\n", one_line(&item.recipient), one_line(why)));
    }
    t
}

/// Keeps text from another server on one header line.
fn one_line(s: &str) -> String {
    s.chars().map(|c| if c.is_control() { ' ' } else { c }).take(900).collect()
}

/// Whether a recipient's NOTIFY (as received) asks for `kind`
/// (`SUCCESS`, `FAILURE`, `DELAY`). Without NOTIFY, failures and delays
/// are reported, successes are not (RFC 3461 4.1 leaves it to the MTA;
/// this is what every major MTA does).
pub(crate) fn wants(notify: Option<&str>, kind: &str) -> bool {
    match notify {
        None => kind != "SUCCESS",
        Some(n) => n.split(',').any(|k| k.trim().eq_ignore_ascii_case(kind)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::spool::envelope::{Origin, Recipient, VERSION};
    use mail_parser::MimeHeaders;

    fn env() -> Envelope {
        Envelope {
            v: VERSION,
            id: "0KAB12CD34".into(),
            arrival: 1_795_613_746,
            sender: "alice@example.org".into(),
            size: 10,
            eight_bit: false,
            smtputf8: false,
            ret: None,
            envid: Some("ENV-1".into()),
            origin: Origin::default(),
            recipients: vec![Recipient::new("bob@example.net".into(), None, None)],
            attempts: 1,
            next_attempt: 0,
            frozen: false,
            delay_warned: false,
            filtered: false,
            trace_id: None,
            trusted: None,
            auth_results: None,
        }
    }

    #[test]
    fn bounce_parses_as_a_delivery_report() {
        let items = vec![Item {
            recipient: "bob@example.net".into(),
            orcpt: Some("rfc822;Bob@example.net".into()),
            action: DsnAction::Failed,
            status: "5.1.1".into(),
            diagnostic: Some("smtp; 550 5.1.1 <bob@example.net>: user unknown".into()),
            remote_mta: Some("mx.example.net[192.0.2.1]:25".into()),
            last_attempt: 1_795_613_800,
        }];
        let original = b"Subject: hello\r\nFrom: alice@example.org\r\n\r\nbody\r\n";
        let raw = build("mail.example.org", &env(), &items, Returned::Full(original), 1_795_613_900);
        let msg = mail_parser::MessageParser::default().parse(&raw).unwrap();
        assert_eq!(msg.subject(), Some("Undelivered Mail Returned to Sender"));
        assert_eq!(msg.content_type().unwrap().subtype(), Some("report"));
        assert_eq!(msg.parts.len(), 4, "multipart, text, delivery-status, message");
        let report = std::str::from_utf8(msg.part(2).unwrap().contents()).unwrap();
        for field in [
            "Reporting-MTA: dns; mail.example.org",
            "Original-Envelope-Id: ENV-1",
            "Final-Recipient: rfc822; bob@example.net",
            "Original-Recipient: rfc822; Bob@example.net",
            "Action: failed",
            "Status: 5.1.1",
            "Remote-MTA: dns; mx.example.net",
            "Diagnostic-Code: smtp; 550 5.1.1 <bob@example.net>: user unknown",
        ] {
            assert!(report.contains(field), "missing {field:?} in\n{report}");
        }
        let attached = msg.part(3).unwrap().message().expect("message/rfc822 part");
        assert_eq!(attached.subject(), Some("hello"));
    }

    #[test]
    fn notify_table() {
        let cases = [
            (None, "FAILURE", true),
            (None, "DELAY", true),
            (None, "SUCCESS", false),
            (Some("NEVER"), "FAILURE", false),
            (Some("SUCCESS,FAILURE"), "SUCCESS", true),
            (Some("success"), "FAILURE", false),
            (Some("DELAY"), "DELAY", true),
        ];
        for (notify, kind, expected) in cases {
            assert_eq!(wants(notify, kind), expected, "{notify:?} {kind}");
        }
    }
}
