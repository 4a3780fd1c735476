//! The milters' part at the door: their verdict and changes at the end of
//! a message applied to what is committed (the SMTP session's milters and
//! `milter.non_smtpd_milters` alike), and the whole conversation for a
//! local submission (`sendmail`, the maildrop pickup), which has no
//! session to hold it.

use super::{IngressError, MessageWriter};
use crate::config::Milter;
use crate::milter::client::{Macros, Milters, Outcome, Verdict};
use crate::milter::edit::Message;
use crate::milter::proto::Family;
use crate::smtp::proto::reply::Reply;

/// What became of a message the milters saw.
#[derive(Debug)]
pub(crate) enum Done {
    /// Committed with this queue id (perhaps on hold).
    Queued(String),
    /// Refused, with the reply the client gets.
    Refused(Reply),
    /// Thrown away at a milter's word; the client is told it was queued.
    Discarded(String),
}

/// Applies the milters' `outcome` to `message` and the envelope in
/// `writer`, then writes and commits it; `discard` is a discard asked
/// before the end of the message. `client` names the source for the log.
pub(crate) async fn finish(
    mut writer: MessageWriter,
    mut message: Message,
    outcome: Outcome,
    discard: bool,
    client: &str,
) -> Result<Done, IngressError> {
    let id = writer.id().to_string();
    match outcome.verdict {
        Some(Verdict::Refuse(reply)) => return Ok(Done::Refused(reply)),
        Some(Verdict::Discard) => return Ok(discarded(id, client)),
        Some(Verdict::Continue) | None if discard => return Ok(discarded(id, client)),
        Some(Verdict::Continue) | None => {}
    }
    let envelope = message.apply(&outcome.changes);
    if let Some(sender) = envelope.sender {
        writer.change_sender(sender);
    }
    for address in &envelope.removed {
        writer.remove_recipient(address);
    }
    for address in envelope.added {
        writer.add_recipient(address);
    }
    if let Some(reason) = outcome.quarantine {
        tracing::info!("{id}: hold: END-OF-MESSAGE from {client}: milter triggers HOLD action: {reason}");
        writer.hold();
    }
    writer.write(&message.to_bytes()).await?;
    writer.commit().await.map(Done::Queued)
}

fn discarded(id: String, client: &str) -> Done {
    tracing::info!("{id}: discard: END-OF-MESSAGE from {client}: milter triggers DISCARD action");
    Done::Discarded(id)
}

/// A local submission through `milter.non_smtpd_milters`: a whole
/// conversation (connect as `localhost` without an address, MAIL, each
/// RCPT, the message) for the message `text` from `sender` to
/// `recipients`, then the commit. A refusal at any step refuses the
/// message.
pub(crate) async fn submit(
    settings: &Milter,
    writer: MessageWriter,
    hostname: &str,
    sender: &str,
    recipients: &[String],
    text: &[u8],
) -> Result<Done, IngressError> {
    let id = writer.id().to_string();
    let base: Macros = vec![
        ("j".into(), hostname.to_string()),
        ("{daemon_name}".into(), "posthorn".into()),
        ("v".into(), format!("posthorn {}", env!("CARGO_PKG_VERSION"))),
        ("i".into(), id),
        ("{mail_addr}".into(), sender.to_string()),
    ];
    let mut milters =
        Milters::connect(settings, &settings.non_smtpd_milters, "localhost", Family::Unknown, &base).await;
    let mut verdict = milters.helo("localhost", &base).await;
    if verdict == Verdict::Continue {
        verdict = milters.mail(&[format!("<{sender}>")], &base).await;
    }
    for rcpt in recipients {
        if verdict != Verdict::Continue {
            break;
        }
        let mut macros = base.clone();
        macros.push(("{rcpt_addr}".into(), rcpt.clone()));
        verdict = milters.rcpt(&[format!("<{rcpt}>")], &macros).await;
    }
    let message = Message::parse(text);
    let (outcome, discard) = match verdict {
        Verdict::Continue => (milters.message(&base, &message.fields, &message.body, &base).await, false),
        Verdict::Discard => (milters.message(&base, &message.fields, &message.body, &base).await, true),
        refused => (Outcome { verdict: Some(refused), ..Outcome::default() }, false),
    };
    milters.quit().await;
    finish(writer, message, outcome, discard, "local").await
}
