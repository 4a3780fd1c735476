//! Local submissions (`sendmail`, maildrop pickup): the message as a
//! program wrote it, made into proper mail.
//!
//! Line ends are made CRLF; with `-t` recipients come from To/Cc/Bcc; Bcc
//! headers are removed; `From:`, `Date:` and `Message-ID:` are added when
//! missing (RFC 5322 requires From and Date; RFC 6409 8.3 lets a submission
//! server add Message-ID); unqualified addresses get `@hostname`.

use super::{Ingress, IngressError, Origin, RcptIn, Transaction};
use crate::clock;
use crate::ingress::maildrop::Drop;

/// Queues one local submission and returns its queue id.
pub async fn submit(ingress: &Ingress, drop: Drop, message: Vec<u8>, user: &str) -> Result<String, IngressError> {
    let hostname = ingress.hostname().to_string();
    let message = crlf(&message);
    let (headers, body) = split_headers(&message);
    let mut recipients: Vec<String> = drop.recipients.iter().map(|r| qualify(r, &hostname)).collect();
    if drop.extract_recipients {
        recipients.extend(header_recipients(headers).into_iter().map(|r| qualify(&r, &hostname)));
    }
    let mut seen = std::collections::HashSet::new();
    recipients.retain(|r| !r.is_empty() && seen.insert(r.to_ascii_lowercase()));
    let sender = match &drop.sender {
        Some(s) if s.is_empty() || s == "<>" => String::new(),
        Some(s) => qualify(s, &hostname),
        None => qualify(user, &hostname),
    };
    // A recipient the tables refuse (unknown local user, alias loop) must
    // not take the others down with it, nor vanish: `sendmail` exited 0
    // long ago, so the sender learns of it by a bounce, as from Postfix.
    let (recipients, refused): (Vec<String>, Vec<String>) =
        recipients.into_iter().partition(|r| ingress.check_recipient(r).is_ok());
    if !refused.is_empty() {
        bounce_refused(ingress, &sender, &refused, headers).await;
        if recipients.is_empty() {
            // Nothing left to queue; the drop has been answered.
            return Ok("NOQUEUE".into());
        }
    }
    let tx = Transaction {
        sender: sender.clone(),
        recipients: recipients.into_iter().map(|address| RcptIn { address, notify: None, orcpt: None }).collect(),
        body: if message.iter().any(|b| *b >= 0x80) {
            super::BodyType::EightBitMime
        } else {
            super::BodyType::SevenBit
        },
        smtputf8: false,
        ret: None,
        envid: None,
        trace_id: None,
        origin: Origin::local(user),
    };
    let mut writer = ingress.open(tx).await?;
    let mut head = strip_bcc(headers);
    let has = |name: &str| has_header(headers, name);
    if !has("from") {
        let from = match drop.full_name.as_deref().map(|n| n.replace(['"', '\\', '\r', '\n'], "")) {
            Some(name) if !name.is_empty() => format!("From: \"{name}\" <{sender}>\r\n"),
            _ => format!("From: {sender}\r\n"),
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
    writer.write(&head).await?;
    writer.write(body).await?;
    writer.commit().await
}

/// Tells the sender of a local submission which recipients were refused.
async fn bounce_refused(ingress: &Ingress, sender: &str, refused: &[String], headers: &[u8]) {
    use crate::dsn::{self, Action, Item, Returned};
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
                action: Action::Failed,
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

/// `root` -> `root@hostname`; `<a@b>` -> `a@b`.
fn qualify(addr: &str, hostname: &str) -> String {
    let a = addr.trim().trim_start_matches('<').trim_end_matches('>').trim();
    if a.is_empty() || a.contains('@') { a.to_string() } else { format!("{a}@{hostname}") }
}

/// Any of CRLF, LF or a lone CR ends a line; the result uses CRLF only.
pub fn crlf(data: &[u8]) -> Vec<u8> {
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

/// Splits a CRLF message into its header block (each field with its CRLF,
/// without the blank line) and the body. A first line that is not a header
/// field means there are no headers.
fn split_headers(msg: &[u8]) -> (&[u8], &[u8]) {
    let mut pos = 0;
    while pos < msg.len() {
        let end = msg[pos..].windows(2).position(|w| w == b"\r\n").map(|e| pos + e + 2).unwrap_or(msg.len());
        let line = &msg[pos..end];
        if line == b"\r\n" {
            return (&msg[..pos], &msg[end..]);
        }
        let continuation = line[0] == b' ' || line[0] == b'\t';
        if !(continuation && pos > 0) && !is_field_start(line) {
            return (&msg[..pos], &msg[pos..]);
        }
        pos = end;
    }
    (msg, &[])
}

fn is_field_start(line: &[u8]) -> bool {
    match line.iter().position(|&b| b == b':') {
        Some(colon) if colon > 0 => line[..colon].iter().all(|&b| (33..=126).contains(&b)),
        _ => false,
    }
}

/// The header fields one by one, each with its continuation lines.
fn fields(headers: &[u8]) -> Vec<&[u8]> {
    let mut out: Vec<&[u8]> = Vec::new();
    let mut start = 0;
    let mut pos = 0;
    while pos < headers.len() {
        let end = headers[pos..].windows(2).position(|w| w == b"\r\n").map(|e| pos + e + 2).unwrap_or(headers.len());
        if pos > start && headers[pos] != b' ' && headers[pos] != b'\t' {
            out.push(&headers[start..pos]);
            start = pos;
        }
        pos = end;
    }
    if start < headers.len() {
        out.push(&headers[start..]);
    }
    out
}

fn field_is(field: &[u8], name: &str) -> bool {
    field.len() > name.len() && field[name.len()] == b':' && field[..name.len()].eq_ignore_ascii_case(name.as_bytes())
}

fn has_header(headers: &[u8], name: &str) -> bool {
    fields(headers).iter().any(|f| field_is(f, name))
}

fn strip_bcc(headers: &[u8]) -> Vec<u8> {
    fields(headers).into_iter().filter(|f| !field_is(f, "bcc")).flatten().copied().collect()
}

/// Addresses in To, Cc and Bcc, parsed by a real RFC 5322 parser (groups,
/// quoted names, comments).
fn header_recipients(headers: &[u8]) -> Vec<String> {
    let mut block = headers.to_vec();
    block.extend_from_slice(b"\r\n");
    let Some(msg) = mail_parser::MessageParser::default().parse_headers(&block[..]) else {
        return Vec::new();
    };
    [msg.to(), msg.cc(), msg.bcc()]
        .into_iter()
        .flatten()
        .flat_map(|a| a.iter())
        // A bare `root` parses as a display name with no address; it is
        // the local part sendmail users mean.
        .filter_map(|a| a.address().or(a.name().filter(|n| !n.trim().contains(char::is_whitespace))))
        .map(|a| a.trim().to_string())
        .collect()
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

    #[test]
    fn header_split() {
        let cases: [(&[u8], &[u8], &[u8]); 4] = [
            (b"A: 1\r\n\r\nbody\r\n", b"A: 1\r\n", b"body\r\n"),
            (b"A: 1\r\n continued\r\nB: 2\r\n\r\n", b"A: 1\r\n continued\r\nB: 2\r\n", b""),
            (b"just text\r\n", b"", b"just text\r\n"),
            (b"A: 1\r\nnot a header\r\n", b"A: 1\r\n", b"not a header\r\n"),
        ];
        for (msg, h, b) in cases {
            assert_eq!(split_headers(msg), (h, b), "{:?}", String::from_utf8_lossy(msg));
        }
    }

    #[test]
    fn recipients_from_headers_and_bcc_removed() {
        let h = b"To: Alice <a@example.org>, b@example.org\r\nCc: undisclosed:;\r\nBcc: \"C, Esq\" <c@example.org>,\r\n x <d@example.org>\r\nSubject: s\r\n";
        assert_eq!(header_recipients(h), vec!["a@example.org", "b@example.org", "c@example.org", "d@example.org"]);
        assert_eq!(
            strip_bcc(h),
            b"To: Alice <a@example.org>, b@example.org\r\nCc: undisclosed:;\r\nSubject: s\r\n".to_vec()
        );
        assert!(has_header(h, "subject") && !has_header(h, "date"));
    }

    #[tokio::test]
    async fn submit_adds_missing_headers() {
        let dir = tempfile::tempdir().unwrap();
        let mut config = Config::builtin();
        config.hostname = "vm1.example.org".into();
        let (ingress, spool) = super::super::test_support::queue_ingress(dir.path(), &config);
        let drop = Drop { extract_recipients: true, full_name: Some("Cron Daemon".into()), ..Drop::default() };
        let id = submit(&ingress, drop, b"To: root\nBcc: ops@example.org\nSubject: hi\n\nbody\n".to_vec(), "cron")
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
}
