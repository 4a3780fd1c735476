//! Local submissions (`sendmail`, maildrop pickup): the message as a
//! program wrote it, made into proper mail.
//!
//! Line ends are made CRLF; with `-t` recipients come from To/Cc/Bcc; Bcc
//! headers are removed; `From:`, `Date:` and `Message-ID:` are added when
//! missing (RFC 5322 requires From and Date; RFC 6409 8.3 lets a submission
//! server add Message-ID; the null sender's `From:` is `MAILER-DAEMON`, as
//! Postfix's cleanup writes it); unqualified envelope addresses get
//! `@myorigin` (the hostname unless set), and so do those in address
//! headers (at the door, `Ingress::open`). The DSN options of `sendmail
//! -N/-R/-V` become each recipient's NOTIFY and the message's RET and
//! ENVID, as over SMTP; the message is dated from its drop.

use super::milters::Done;
use super::{Arrival, Ingress, IngressError, RcptIn, Transaction};
use crate::clock;
use crate::dsn::{self, DsnAction, Item, Returned};
use crate::ingress::maildrop::Drop;
use crate::message::header;
use crate::smtp::proto::reply::Reply;

/// Queues one local submission and returns its queue id.
/// `submitted` is when the drop was written (its file's time), which dates
/// the message.
pub(crate) async fn submit(
    ingress: &Ingress,
    drop: Drop,
    message: Vec<u8>,
    user: &str,
    submitted: Option<u64>,
) -> Result<String, IngressError> {
    let hostname = ingress.hostname().to_string();
    let origin = ingress.myorigin().to_string();
    let message = crlf(&message);
    let header::Split { head: headers, body, .. } = header::split(&message);
    // Each recipient with its DSN NOTIFY (`-N`, or its own from `-bs`).
    let mut recipients: Vec<(String, Option<String>)> =
        drop.recipients.iter().enumerate().map(|(i, r)| (qualify(r, &origin), drop.notify_of(i))).collect();
    if drop.extract_recipients {
        let extracted = header::recipients(headers).into_iter().map(|r| (qualify(&r, &origin), drop.notify.clone()));
        recipients.extend(extracted);
    }
    let mut seen = std::collections::HashSet::new();
    recipients.retain(|(r, _)| !r.is_empty() && seen.insert(r.to_ascii_lowercase()));
    let sender = match &drop.sender {
        Some(s) if s.is_empty() || s == "<>" => String::new(),
        Some(s) => qualify(s, &origin),
        None => qualify(user, &origin),
    };
    // A recipient the tables refuse (unknown local user, alias loop) must
    // not take the others down with it, nor vanish: `sendmail` exited 0
    // long ago, so the sender learns of it by a bounce, as from Postfix.
    let (recipients, refused): (Vec<_>, Vec<_>) =
        recipients.into_iter().partition(|(r, _)| ingress.check_recipient(r).is_ok());
    if !refused.is_empty() {
        // A refused recipient that asked for no notice (`-N never`) gets none.
        let notify: Vec<String> =
            refused.into_iter().filter(|(_, n)| crate::dsn::wants(n.as_deref(), "FAILURE")).map(|(r, _)| r).collect();
        if !notify.is_empty() {
            bounce_refused(ingress, &sender, &notify, headers).await;
        }
        if recipients.is_empty() {
            // Nothing left to queue; the drop has been answered.
            return Ok("NOQUEUE".into());
        }
    }
    let queued: Vec<String> = recipients.iter().map(|(r, _)| r.clone()).collect();
    let tx = Transaction {
        sender: sender.clone(),
        recipients: recipients.into_iter().map(|(address, notify)| RcptIn { address, notify, orcpt: None }).collect(),
        body: if message.iter().any(|b| *b >= 0x80) {
            super::BodyType::EightBitMime
        } else {
            super::BodyType::SevenBit
        },
        smtputf8: false,
        ret: drop.ret.clone(),
        envid: drop.envid.clone(),
        trace_id: None,
        forwarded_by: None,
        origin: Arrival::local(user),
    };
    let mut writer = ingress.open(tx).await?;
    if let Some(t) = submitted {
        writer.set_arrival(t);
    }
    let mut head = header::remove(headers, "bcc");
    let has = |name: &str| header::has(headers, name);
    if !has("from") {
        // The null sender has no address to show: Postfix's cleanup
        // writes MAILER-DAEMON, qualified like any local name.
        let shown = if sender.is_empty() { qualify("MAILER-DAEMON", &hostname) } else { sender.clone() };
        let from = match drop.full_name.as_deref().map(|n| n.replace(['"', '\\', '\r', '\n'], "")) {
            Some(name) if !name.is_empty() => format!("From: \"{name}\" <{shown}>\r\n"),
            _ => format!("From: {shown}\r\n"),
        };
        head.extend_from_slice(from.as_bytes());
    }
    if !has("date") {
        head.extend_from_slice(format!("Date: {}\r\n", clock::rfc5322(clock::now_secs())).as_bytes());
    }
    if !has("message-id") {
        head.extend_from_slice(format!("Message-ID: <{}@{hostname}>\r\n", writer.id()).as_bytes());
    }
    head.extend_from_slice(b"\r\n");
    if let Some(settings) = ingress.non_smtpd_milters() {
        let text = [&head[..], body].concat();
        return match super::milters::submit(settings, writer, &hostname, &sender, &queued, &text).await {
            Ok(Done::Queued(id) | Done::Discarded(id)) => Ok(id),
            // `sendmail` exited 0 long ago: the sender learns of it by a
            // bounce, as of a loop.
            Ok(Done::Refused(reply)) => {
                tracing::info!("NOQUEUE: milter-reject: local submission from {user}: {reply}; from=<{sender}>");
                bounce_all(ingress, &sender, &queued, &reply, headers).await;
                Ok("NOQUEUE".into())
            }
            Err(e @ IngressError::TooManyHops(_)) => {
                bounce_all(ingress, &sender, &queued, &e.reply(), headers).await;
                Ok("NOQUEUE".into())
            }
            Err(e) => Err(e),
        };
    }
    writer.write(&head).await?;
    writer.write(body).await?;
    match writer.commit().await {
        // `sendmail` exited 0 long ago: the sender learns of the loop by a
        // bounce, and the drop is done with.
        Err(e @ IngressError::TooManyHops(_)) => {
            bounce_all(ingress, &sender, &queued, &e.reply(), headers).await;
            Ok("NOQUEUE".into())
        }
        committed => committed,
    }
}

/// Tells the sender of a local submission that no recipient got it.
async fn bounce_all(ingress: &Ingress, sender: &str, recipients: &[String], reply: &Reply, headers: &[u8]) {
    let now = clock::now_secs();
    let items = recipients
        .iter()
        .map(|r| Item {
            recipient: r.clone(),
            orcpt: None,
            action: DsnAction::Failed,
            status: reply.enhanced.map(|e| e.to_string()).unwrap_or_else(|| "5.0.0".into()),
            diagnostic: Some(format!("X-Posthorn; {reply}")),
            remote_mta: None,
            last_attempt: now,
        })
        .collect();
    notify_sender(ingress, sender, items, headers).await;
}

/// Tells the sender of a local submission which recipients were refused.
async fn bounce_refused(ingress: &Ingress, sender: &str, refused: &[String], headers: &[u8]) {
    let now = clock::now_secs();
    let items: Vec<Item> = refused
        .iter()
        .map(|r| {
            let reply = ingress.check_recipient(r).err();
            tracing::info!(
                "NOQUEUE: local submission from <{sender}>: to=<{r}> refused: {}",
                reply.as_ref().map(|x| x.to_string()).unwrap_or_default()
            );
            Item {
                recipient: r.clone(),
                orcpt: None,
                action: DsnAction::Failed,
                status: reply
                    .as_ref()
                    .and_then(|x| x.enhanced)
                    .map(|e| e.to_string())
                    .unwrap_or_else(|| "5.0.0".into()),
                diagnostic: reply.map(|x| format!("X-Posthorn; {x}")),
                remote_mta: None,
                last_attempt: now,
            }
        })
        .collect();
    notify_sender(ingress, sender, items, headers).await;
}

/// Queues a non-delivery notification of `items` to `sender`, unless the
/// sender is null.
async fn notify_sender(ingress: &Ingress, sender: &str, items: Vec<Item>, headers: &[u8]) {
    let now = clock::now_secs();
    if sender.is_empty() {
        tracing::info!("local submission from <>: {} refused recipient(s); no bounce to the null sender", items.len());
        return;
    }
    let about = crate::spool::envelope::Envelope {
        v: crate::spool::envelope::VERSION,
        id: "NOQUEUE".into(),
        arrival: now,
        sender: sender.to_string(),
        size: 0,
        eight_bit: false,
        smtputf8: false,
        ret: None,
        envid: None,
        origin: Default::default(),
        recipients: Vec::new(),
        attempts: 0,
        next_attempt: now,
        frozen: false,
        delay_warned: false,
        filtered: false,
        trace_id: None,
        trusted: None,
        auth_results: None,
    };
    let message = dsn::build(ingress.hostname(), &about, &items, Returned::Headers(headers), now);
    let tx = Transaction::notice_to(sender, false);
    match ingress.submit(tx, &message).await {
        Ok(id) => {
            tracing::info!("{id}: non-delivery notification to <{sender}> for {} refused recipient(s)", items.len())
        }
        Err(e) => tracing::error!("cannot queue the non-delivery notification to <{sender}>: {e}"),
    }
}

/// `root` -> `root@myorigin`; `<a@b>` -> `a@b`.
fn qualify(addr: &str, origin: &str) -> String {
    let a = addr.trim().trim_start_matches('<').trim_end_matches('>').trim();
    if a.is_empty() || a.contains('@') { a.to_string() } else { format!("{a}@{origin}") }
}

/// Any of CRLF, LF or a lone CR ends a line; the result uses CRLF only.
pub(crate) fn crlf(data: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(data.len() + data.len() / 32);
    let mut i = 0;
    while i < data.len() {
        match data[i] {
            b'\r' => {
                out.extend_from_slice(b"\r\n");
                if data.get(i + 1) == Some(&b'\n') {
                    i += 1;
                }
            }
            b'\n' => out.extend_from_slice(b"\r\n"),
            b => out.push(b),
        }
        i += 1;
    }
    if !out.is_empty() && !out.ends_with(b"\r\n") {
        out.extend_from_slice(b"\r\n");
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Config;

    #[test]
    fn line_ends() {
        let cases: [(&[u8], &[u8]); 5] = [
            (b"a\nb\n", b"a\r\nb\r\n"),
            (b"a\r\nb", b"a\r\nb\r\n"),
            (b"a\rb\r\n", b"a\r\nb\r\n"),
            (b"", b""),
            (b"\n\n", b"\r\n\r\n"),
        ];
        for (input, expected) in cases {
            assert_eq!(crlf(input), expected, "{input:?}");
        }
    }

    #[tokio::test]
    async fn submit_adds_missing_headers() {
        let dir = tempfile::tempdir().unwrap();
        let mut config = Config::builtin();
        config.hostname = "vm1.example.org".into();
        config.myorigin = "vm1.example.org".into();
        let (ingress, spool) = super::super::test_support::queue_ingress(dir.path(), &config);
        let drop = Drop { extract_recipients: true, full_name: Some("Cron Daemon".into()), ..Drop::default() };
        let id =
            submit(&ingress, drop, b"To: root\nBcc: ops@example.org\nSubject: hi\n\nbody\n".to_vec(), "cron", None)
                .await
                .unwrap();
        let (_, env) = spool.find(&id).unwrap();
        assert_eq!(env.sender, "cron@vm1.example.org");
        let rcpts: Vec<_> = env.recipients.iter().map(|r| r.address.as_str()).collect();
        assert_eq!(rcpts, ["root@vm1.example.org", "ops@example.org"]);
        let body = String::from_utf8(spool.read_body(&id).unwrap()).unwrap();
        assert!(body.starts_with("Received: (from cron)\r\n\tby vm1.example.org (posthorn) with local id "), "{body}");
        assert!(body.contains("\r\nFrom: \"Cron Daemon\" <cron@vm1.example.org>\r\n"), "{body}");
        assert!(body.contains(&format!("\r\nMessage-ID: <{id}@vm1.example.org>\r\n")), "{body}");
        assert!(body.contains("\r\nDate: "), "{body}");
        assert!(!body.contains("Bcc"), "{body}");
        assert!(body.ends_with("\r\n\r\nbody\r\n"), "{body}");
    }

    #[tokio::test]
    async fn a_looping_submission_is_bounced_to_its_sender() {
        let dir = tempfile::tempdir().unwrap();
        let mut config = Config::builtin();
        config.hostname = "vm1.example.org".into();
        config.myorigin = "vm1.example.org".into();
        let (ingress, spool) = super::super::test_support::queue_ingress(dir.path(), &config);
        let drop = Drop { recipients: vec!["ops@example.org".into()], ..Drop::default() };
        let message = format!("{}Subject: loop\n\nbody\n", "Received: from a by b; now\n".repeat(51));
        assert_eq!(submit(&ingress, drop, message.into_bytes(), "cron", None).await.unwrap(), "NOQUEUE");
        let ids = spool.list(crate::spool::State::Incoming).unwrap();
        let [id] = ids.as_slice() else { panic!("queued: {ids:?}") };
        let (_, env) = spool.find(id).unwrap();
        assert_eq!((env.sender.as_str(), env.recipients[0].address.as_str()), ("", "cron@vm1.example.org"));
        let bounce = String::from_utf8(spool.read_body(id).unwrap()).unwrap();
        assert!(bounce.contains("5.4.6") && bounce.contains("Too many hops"), "{bounce}");
    }
}
