//! End-to-end: what happens to a queued message between acceptance and its
//! last recipient: retries, bounces, delay warnings, expiry, DSN, the
//! per-destination backoff, corrupt envelopes, hold and freeze. Each test
//! runs a real posthorn whose next hop is a real SMTP peer: the scripted
//! server of the harness (`Scripted`), which answers from a script and
//! records every transaction. Notices are read back from that peer and
//! parsed with a real MIME parser (mail-parser), never trusted from a log.
//!
//! Retry schedules are shortened in the configuration to one to five
//! seconds, so every scenario takes seconds.
//!
//! Scenarios:
//! 1. The next hop answers 451 to the end of DATA three times, then 250:
//!    delivered exactly once; the log and the envelope's attempt history
//!    show three deferrals (reply, class, relay).
//! 2. 550 to one of three recipients: the other two are delivered in one
//!    transaction, the sender gets an RFC 3464 bounce through the same next
//!    hop (multipart/report, Final-Recipient, Action, Status,
//!    Diagnostic-Code, the original attached); with RET=HDRS, ENVID and
//!    ORCPT, only the headers come back and the DSN fields carry them.
//! 3. Lifetime expiry on a hub whose next hop keeps answering 451: one
//!    delay warning (Action: delayed), then a bounce (Status 4.4.7). On a
//!    satellite the same when the smarthost answered 4xx; but a satellite
//!    whose smarthost never answered keeps the mail and sends nothing.
//! 4. A bounce that itself fails (the sender's address is refused): logged,
//!    never bounced again. Bounces to one sender beyond
//!    `queue.bounce_rate_limit` per hour are suppressed and logged.
//! 5. 1,000 messages for a destination that is down: each retry round costs
//!    at most `deliver.destination_concurrency` connection attempts.
//! 6. NOTIFY=SUCCESS: a "relayed" notice when the next hop has no DSN;
//!    NOTIFY, ORCPT, RET and ENVID passed on (and no notice) when it has;
//!    NOTIFY=NEVER and a 550: no bounce at all.
//! 7. Bad input: DSN parameters that do not parse (empty values too) get
//!    501 naming the parameter and the session goes on; corrupt envelopes
//!    are moved to `corrupt/`, named by `posthorn check` (a warning), and the rest of
//!    the queue flows.
//! 8. Hold (`posthorn queue hold`) and freeze (the control socket): not
//!    attempted while held or frozen; released (`posthorn queue release`,
//!    `exim -Mt`) they are delivered.
//!
//! And one test of the scripted server itself: pipelined groups answered
//! in order, dot-unstuffing, the record, hang-up mode.

mod harness;

use std::fs;
use std::io::{BufRead, BufReader, Write};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread;
use std::time::{Duration, Instant};

use harness::*;
use mail_parser::{MessageParser, MimeHeaders};

const SENDER: &str = "alice@vm1.test";

/// A satellite relaying to `next`, with `lines` added (see `with_lines`).
fn satellite_via(next: SocketAddr, lines: &[&str]) -> Posthorn {
    Posthorn::start(&with_lines(&satellite_config(&[next]), lines))
}

/// A hub whose next hop for everything is `next` (its smarthost), retrying
/// every second, with `lines` added.
fn hub_via(next: SocketAddr, lines: &[&str]) -> Posthorn {
    let hub = with_lines(&satellite_config(&[next]), &["role = \"hub\"", "queue.retry_max = \"1s\""]);
    Posthorn::start(&with_lines(&hub, lines))
}

/// A small message from [`SENDER`] with `subject`.
fn note(subject: &str, body: &str) -> String {
    message(&[("From", SENDER), ("To", "ops@example.test"), ("Subject", subject)], body)
}

/// One SMTP transaction on a new connection with exactly the MAIL and RCPT
/// command lines given (parameters and all); every one must get 250. Returns
/// the queue id from the reply to the final dot.
fn submit_lines(ph: &Posthorn, mail: &str, rcpts: &[&str], message: &str) -> String {
    let mut c = RawSmtp::connect(ph.smtp_addr()).expect("connect to posthorn");
    c.ehlo("client.test").expect("EHLO");
    let r = c.cmd(mail).unwrap();
    assert_eq!(r.code, 250, "{mail} -> {r}");
    for rcpt in rcpts {
        let r = c.cmd(rcpt).unwrap();
        assert_eq!(r.code, 250, "{rcpt} -> {r}");
    }
    let r = c.cmd("DATA").unwrap();
    assert_eq!(r.code, 354, "DATA -> {r}");
    c.send_raw(&dot_stuff(message.as_bytes())).unwrap();
    c.send_raw(b".\r\n").unwrap();
    let r = c.read().unwrap();
    assert_eq!(r.code, 250, "end of DATA -> {r}");
    c.quit().unwrap();
    queued_as(&r)
}

/// [`submit_lines`] without parameters.
fn submit(ph: &Posthorn, from: &str, to: &[&str], message: &str) -> String {
    let rcpts: Vec<String> = to.iter().map(|t| format!("RCPT TO:<{t}>")).collect();
    let rcpts: Vec<&str> = rcpts.iter().map(String::as_str).collect();
    submit_lines(ph, &format!("MAIL FROM:<{from}>"), &rcpts, message)
}

/// The id in `250 2.0.0 Ok: queued as ID`.
fn queued_as(reply: &Reply) -> String {
    let id = reply.text.rsplit(' ').next().unwrap_or("").to_string();
    assert!(id.len() == 11 && id.chars().all(|c| c.is_ascii_alphanumeric()), "no queue id in {reply}");
    id
}

/// Log lines of message `id` containing every one of `patterns`.
fn id_lines(ph: &Posthorn, id: &str, patterns: &[&str]) -> Vec<String> {
    let prefix = format!("{id}: ");
    let mut all = vec![prefix.as_str()];
    all.extend_from_slice(patterns);
    ph.log_lines(&all)
}

/// Waits for a log line containing every one of `patterns`; panics with the
/// log when none comes within `timeout`.
fn expect_log(ph: &Posthorn, patterns: &[&str], timeout: Duration) -> String {
    assert!(ph.wait_for_log_count(patterns, 1, timeout), "no log line with {patterns:?}; log:\n{}", ph.log());
    ph.log_lines(patterns).remove(0)
}

/// The queue id a notice was queued under, from `ID: sender WHAT notification: NEWID`.
fn notice_id(line: &str) -> String {
    line.rsplit(' ').next().unwrap_or("").trim().to_string()
}

/// A delivery status notification, parsed with mail-parser.
#[derive(Debug)]
struct Report {
    subject: String,
    /// `type/subtype` of the whole message, lower case.
    content_type: String,
    report_type: Option<String>,
    /// The human-readable part.
    human: String,
    /// The message/delivery-status part: its per-message fields, then one
    /// group per recipient, names in lower case.
    groups: Vec<Vec<(String, String)>>,
    /// `type/subtype` of the part carrying the original, and that part as
    /// text (a whole message for message/rfc822).
    original: Option<(String, String)>,
    /// For message/rfc822: the attached message's subject and body.
    original_subject: Option<String>,
    original_body: Option<String>,
}

impl Report {
    fn parse(raw: &[u8]) -> Report {
        let msg = MessageParser::default().parse(raw).unwrap_or_else(|| panic!("not a MIME message:\n{}", text(raw)));
        let ct = msg.content_type().unwrap_or_else(|| panic!("no Content-Type in\n{}", text(raw)));
        let mut report = Report {
            subject: msg.subject().unwrap_or("").to_string(),
            content_type: mime_type(ct),
            report_type: ct.attribute("report-type").map(str::to_ascii_lowercase),
            human: String::new(),
            groups: Vec::new(),
            original: None,
            original_subject: None,
            original_body: None,
        };
        for part in msg.parts.iter().skip(1) {
            let Some(ct) = part.content_type() else { continue };
            let kind = mime_type(ct);
            match kind.as_str() {
                "text/plain" if report.human.is_empty() => report.human = text(part.contents()),
                "message/delivery-status" => report.groups = field_groups(&text(part.contents())),
                "message/rfc822" => {
                    let inner = part.message().expect("message/rfc822 parses as a message");
                    report.original_subject = inner.subject().map(str::to_string);
                    report.original_body = inner.body_text(0).map(|b| b.into_owned());
                    report.original = Some((kind, text(part.contents())));
                }
                "text/rfc822-headers" => report.original = Some((kind, text(part.contents()))),
                _ => {}
            }
        }
        report
    }

    /// The group of `recipient` (by Final-Recipient).
    fn recipient(&self, recipient: &str) -> &[(String, String)] {
        self.groups
            .iter()
            .skip(1)
            .find(|g| field(g, "final-recipient").is_some_and(|v| v.ends_with(recipient)))
            .unwrap_or_else(|| panic!("no Final-Recipient {recipient} in {:#?}", self.groups))
    }

    /// A per-message field (Reporting-MTA, Original-Envelope-Id, ...).
    fn message_field(&self, name: &str) -> Option<&str> {
        self.groups.first().and_then(|g| field(g, name))
    }

    fn recipients(&self) -> Vec<String> {
        self.groups.iter().skip(1).filter_map(|g| field(g, "final-recipient").map(str::to_string)).collect()
    }
}

fn mime_type(ct: &mail_parser::ContentType<'_>) -> String {
    format!("{}/{}", ct.ctype(), ct.subtype().unwrap_or("")).to_ascii_lowercase()
}

fn field<'a>(group: &'a [(String, String)], name: &str) -> Option<&'a str> {
    group.iter().find(|(n, _)| n == name).map(|(_, v)| v.as_str())
}

/// `Name: value` groups separated by empty lines, continuation lines unfolded.
fn field_groups(text: &str) -> Vec<Vec<(String, String)>> {
    let mut groups: Vec<Vec<(String, String)>> = Vec::new();
    let mut current: Vec<(String, String)> = Vec::new();
    for line in text.lines() {
        if line.trim().is_empty() {
            if !current.is_empty() {
                groups.push(std::mem::take(&mut current));
            }
        } else if line.starts_with([' ', '\t']) {
            if let Some((_, v)) = current.last_mut() {
                v.push(' ');
                v.push_str(line.trim());
            }
        } else if let Some((n, v)) = line.split_once(':') {
            current.push((n.trim().to_ascii_lowercase(), v.trim().to_string()));
        }
    }
    if !current.is_empty() {
        groups.push(current);
    }
    groups
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

/// The notices (transactions from `<>`) the next hop accepted.
fn notices(next: &Scripted) -> Vec<ScriptedTx> {
    next.accepted().into_iter().filter(|t| t.mail_from.is_empty()).collect()
}

/// Reads an envelope file as JSON; `None` while it is missing or mid-rename.
fn read_envelope(path: &std::path::Path) -> Option<serde_json::Value> {
    fs::read(path).ok().and_then(|b| serde_json::from_slice(&b).ok())
}

/// Sleeps `d`: for "nothing more happens" checks, after the event that
/// would have caused it.
fn settle(d: Duration) {
    thread::sleep(d);
}

// 1 ------------------------------------------------------------------------

#[test]
fn three_deferrals_then_delivered_exactly_once() {
    let next = Scripted::start(Script::new().data_end(&[
        "451 4.3.0 Temporary failure 1, try again",
        "451 4.3.0 Temporary failure 2, try again",
        "451 4.3.0 Temporary failure 3, try again",
    ]));
    // Two seconds between attempts leaves a window of at least one second
    // in which the deferred envelope can be read.
    let ph = satellite_via(next.addr(), &["queue.retry_min = \"2s\"", "queue.retry_max = \"2s\""]);
    let rcpt = "ops@example.test";
    let id = submit(&ph, SENDER, &[rcpt], &note("retry me", "three times 451, then 250\n"));

    // Watch the envelope while it waits: keep the copy with the longest history.
    let path = ph.spool_dir().join("deferred").join(&id);
    let done = AtomicBool::new(false);
    let (delivered, seen) = thread::scope(|s| {
        let watcher = s.spawn(|| {
            let mut best: Option<serde_json::Value> = None;
            while !done.load(Ordering::SeqCst) {
                if let Some(env) = read_envelope(&path) {
                    let len = |e: &serde_json::Value| e["recipients"][0]["history"].as_array().map_or(0, Vec::len);
                    if best.as_ref().is_none_or(|b| len(&env) > len(b)) {
                        best = Some(env);
                    }
                }
                thread::sleep(Duration::from_millis(10));
            }
            best
        });
        let delivered = next.wait_for_accepted(1, secs(20));
        done.store(true, Ordering::SeqCst);
        (delivered, watcher.join().unwrap())
    });
    assert_eq!(delivered.len(), 1, "not delivered; log:\n{}", ph.log());
    expect_log(&ph, &[&format!("{id}: removed")], secs(10));
    settle(Duration::from_millis(2500));

    // Exactly once at the next hop, after exactly three refusals.
    let record = next.record();
    assert_eq!(record.accepted().len(), 1, "delivered more than once: {:#?}", record.transactions);
    assert_eq!(record.messages, 4, "messages sent to the next hop: {:#?}", record.transactions);
    let got = &record.accepted()[0];
    assert_eq!(got.mail_from, SENDER);
    assert_eq!(got.rcpt_to(), [rcpt]);
    assert_eq!(got.header("Subject").as_deref(), Some("retry me"));
    let refused: Vec<&str> = record.transactions.iter().filter_map(|t| t.reply.as_deref()).take(3).collect();
    assert!(refused.iter().all(|r| r.starts_with("451 ")), "{refused:?}");

    // The log: three deferrals with the remote reply, then sent; no notice.
    let to = format!("to=<{rcpt}>");
    let deferred = id_lines(&ph, &id, &[&to, "status=deferred"]);
    assert_eq!(deferred.len(), 3, "deferral lines: {deferred:#?}\nlog:\n{}", ph.log());
    for (n, line) in deferred.iter().enumerate() {
        assert!(line.contains(&format!("Temporary failure {}", n + 1)), "{line}");
        assert!(line.contains("dsn=4.3.0"), "{line}");
        assert!(line.contains(&format!(":{}", next.addr().port())), "relay missing in {line}");
    }
    assert_eq!(id_lines(&ph, &id, &[&to, "status=sent"]).len(), 1);
    assert!(id_lines(&ph, &id, &["notification"]).is_empty(), "{}", ph.log());

    // The envelope's own record of the three deferrals.
    let env = seen.unwrap_or_else(|| panic!("never saw {} while deferred; log:\n{}", path.display(), ph.log()));
    let history = env["recipients"][0]["history"].as_array().expect("history").clone();
    assert_eq!(history.len(), 3, "history: {history:#?}");
    assert_eq!(env["recipients"][0]["state"], "pending");
    assert_eq!(env["attempts"], 3);
    let mut previous = 0;
    for (n, a) in history.iter().enumerate() {
        assert_eq!(a["status"], "deferred", "{a}");
        assert_eq!(a["class"], "4xx", "{a}");
        let reply = a["reply"].as_str().unwrap_or_default();
        assert!(reply.starts_with("451 4.3.0 Temporary failure") && reply.contains(&(n + 1).to_string()), "{a}");
        assert!(a["relay"].as_str().unwrap_or_default().ends_with(&format!(":{}", next.addr().port())), "{a}");
        assert_eq!(a["tls"], false, "{a}");
        let at = a["at"].as_u64().expect("at");
        assert!(at >= previous, "attempt times go backwards: {history:#?}");
        previous = at;
    }
    assert!(env["next_attempt"].as_u64().unwrap() > previous, "next attempt not after the last: {env}");
}

// 2 ------------------------------------------------------------------------

#[test]
fn refused_recipient_is_bounced_and_the_others_delivered_once() {
    let refusal = "550 5.1.1 <nobody@example.test>: Recipient address rejected: User unknown in virtual mailbox table";
    let next = Scripted::start(Script::new().rcpt("nobody@", refusal));
    let ph = satellite_via(next.addr(), &[]);
    let original = note("quarterly figures", "Revenue is up.\n.Dotted line stays.\n");
    let id = submit(&ph, SENDER, &["ann@example.test", "nobody@example.test", "carl@example.test"], &original);

    let got = next.wait_for_accepted(2, secs(20));
    assert_eq!(got.len(), 2, "expected the message and a bounce: {got:#?}\nlog:\n{}", ph.log());
    expect_log(&ph, &[&format!("{id}: removed")], secs(10));
    let line = expect_log(&ph, &[&format!("{id}: sender non-delivery notification: ")], secs(10));
    let bounce_id = notice_id(&line);
    expect_log(&ph, &[&format!("{bounce_id}: removed")], secs(10));
    settle(Duration::from_secs(1));

    // The two good recipients: one transaction, delivered once.
    let accepted = next.accepted();
    let to_them: Vec<&ScriptedTx> = accepted.iter().filter(|t| t.mail_from == SENDER).collect();
    assert_eq!(to_them.len(), 1, "{accepted:#?}");
    assert_eq!(to_them[0].rcpt_to(), ["ann@example.test", "carl@example.test"]);
    assert_eq!(to_them[0].refused.len(), 1);
    assert_eq!(to_them[0].refused[0].address, "nobody@example.test");
    assert!(to_them[0].text().contains("\r\n.Dotted line stays.\r\n"), "{}", to_them[0].text());
    assert_eq!(id_lines(&ph, &id, &["to=<nobody@example.test>", "status=bounced"]).len(), 1);
    assert_eq!(id_lines(&ph, &id, &["status=sent"]).len(), 2);

    // The bounce: from <> to the sender, through the same next hop.
    let bounces = notices(&next);
    assert_eq!(bounces.len(), 1, "{accepted:#?}");
    let bounce = &bounces[0];
    assert_eq!(bounce.rcpt_to(), [SENDER]);
    let r = Report::parse(bounce.message());
    assert_eq!(r.content_type, "multipart/report", "{r:#?}");
    assert_eq!(r.report_type.as_deref(), Some("delivery-status"));
    assert!(r.subject.contains("Undelivered"), "{r:#?}");
    assert!(r.human.contains("nobody@example.test"), "{r:#?}");
    assert_eq!(r.message_field("reporting-mta"), Some(format!("dns; {}", ph.hostname()).as_str()));
    assert!(r.message_field("arrival-date").is_some(), "{r:#?}");
    assert_eq!(r.recipients(), ["rfc822; nobody@example.test"], "only the refused recipient is reported");
    let rcpt = r.recipient("nobody@example.test");
    assert_eq!(field(rcpt, "action"), Some("failed"));
    assert_eq!(field(rcpt, "status"), Some("5.1.1"));
    let diagnostic = field(rcpt, "diagnostic-code").unwrap_or_else(|| panic!("no Diagnostic-Code: {rcpt:?}"));
    assert!(diagnostic.starts_with("smtp;"), "{diagnostic}");
    assert!(diagnostic.contains(refusal), "{diagnostic}");
    assert!(field(rcpt, "remote-mta").is_some(), "{rcpt:?}");
    // RET not given: the whole original comes back.
    let (kind, _) = r.original.as_ref().unwrap_or_else(|| panic!("original not attached: {r:#?}"));
    assert_eq!(kind, "message/rfc822");
    assert_eq!(r.original_subject.as_deref(), Some("quarterly figures"));
    assert!(r.original_body.as_deref().unwrap_or("").contains("Revenue is up."), "{r:#?}");

    // RET=HDRS, ENVID and ORCPT: headers only, and the DSN fields say so.
    let id = submit_lines(
        &ph,
        &format!("MAIL FROM:<{SENDER}> RET=HDRS ENVID=batch+2B42"),
        &["RCPT TO:<nobody@example.test> ORCPT=rfc822;Nobody@example.test"],
        &note("headers only please", "This body must not come back.\n"),
    );
    let line = expect_log(&ph, &[&format!("{id}: sender non-delivery notification: ")], secs(20));
    let bounce_id = notice_id(&line);
    expect_log(&ph, &[&format!("{bounce_id}: removed")], secs(10));
    let bounces = notices(&next);
    assert_eq!(bounces.len(), 2, "{:#?}", next.accepted());
    let r = Report::parse(bounces[1].message());
    assert_eq!(r.content_type, "multipart/report");
    assert_eq!(r.message_field("original-envelope-id"), Some("batch+2B42"), "{r:#?}");
    let rcpt = r.recipient("nobody@example.test");
    assert_eq!(field(rcpt, "original-recipient"), Some("rfc822; Nobody@example.test"), "{rcpt:?}");
    assert_eq!(field(rcpt, "action"), Some("failed"));
    let (kind, headers) = r.original.as_ref().unwrap_or_else(|| panic!("headers not attached: {r:#?}"));
    assert_eq!(kind, "text/rfc822-headers");
    assert!(headers.contains("Subject: headers only please"), "{headers}");
    assert!(!bounces[1].text().contains("This body must not come back."), "{}", bounces[1].text());
}

// 3 ------------------------------------------------------------------------

#[test]
fn lifetime_expiry_on_a_hub_warns_once_then_bounces() {
    let busy = "451 4.2.1 <slow@example.test>: Mailbox busy, try again later";
    let next = Scripted::start(Script::new().rcpt("slow@", busy));
    let ph = hub_via(next.addr(), &["queue.max_lifetime = \"3s\"", "queue.delay_warning = \"1s\""]);
    assert!(ph.log().contains("started as Hub"), "{}", ph.log());
    let id = submit(&ph, SENDER, &["slow@example.test"], &note("will expire", "patience\n"));

    let line = expect_log(&ph, &[&format!("{id}: sender non-delivery notification: ")], secs(20));
    let bounce_id = notice_id(&line);
    expect_log(&ph, &[&format!("{id}: removed")], secs(10));
    expect_log(&ph, &[&format!("{bounce_id}: removed")], secs(10));
    // Long enough for a second warning or bounce to show up, were one due.
    settle(Duration::from_secs(2));

    assert_eq!(id_lines(&ph, &id, &["status=expired"]).len(), 1, "{}", ph.log());
    assert!(id_lines(&ph, &id, &["status=deferred"]).len() >= 2, "{}", ph.log());
    assert_eq!(id_lines(&ph, &id, &["sender delay notification"]).len(), 1, "{}", ph.log());
    assert_eq!(id_lines(&ph, &id, &["sender non-delivery notification"]).len(), 1, "{}", ph.log());
    assert!(ph.wait_for_queued(0, secs(10)), "{}", ph.log());

    let got = notices(&next);
    assert_eq!(got.len(), 2, "one delay warning and one bounce: {got:#?}");
    assert!(got.iter().all(|n| n.rcpt_to() == [SENDER]), "{got:#?}");
    let warning = Report::parse(got[0].message());
    assert_eq!(warning.content_type, "multipart/report");
    assert_eq!(warning.report_type.as_deref(), Some("delivery-status"));
    assert!(warning.subject.contains("Delayed"), "{warning:#?}");
    let rcpt = warning.recipient("slow@example.test");
    assert_eq!(field(rcpt, "action"), Some("delayed"), "{rcpt:?}");
    assert_eq!(field(rcpt, "status"), Some("4.2.1"), "{rcpt:?}");
    assert!(field(rcpt, "diagnostic-code").is_some_and(|d| d.contains("Mailbox busy")), "{rcpt:?}");
    assert!(warning.original.is_none(), "a delay warning returns no content: {warning:#?}");

    let bounce = Report::parse(got[1].message());
    assert!(bounce.subject.contains("Undelivered"), "{bounce:#?}");
    let rcpt = bounce.recipient("slow@example.test");
    assert_eq!(field(rcpt, "action"), Some("failed"), "{rcpt:?}");
    assert_eq!(field(rcpt, "status"), Some("4.4.7"), "{rcpt:?}");
    let diagnostic = field(rcpt, "diagnostic-code").unwrap_or_default();
    assert!(diagnostic.contains("expired") && diagnostic.contains("Mailbox busy"), "{diagnostic}");
    assert_eq!(bounce.original_subject.as_deref(), Some("will expire"), "{bounce:#?}");
}

#[test]
fn satellite_expires_mail_its_smarthost_deferred_but_keeps_mail_it_could_not_hand_over() {
    let lines = [
        "queue.max_lifetime = \"2s\"",
        "queue.retry_min = \"1s\"",
        "queue.retry_max = \"1s\"",
        "queue.delay_warning = \"0s\"",
    ];
    // The smarthost answers, with 451: the sender hears about it at expiry.
    let next = Scripted::start(Script::new().rcpt("slow@", "451 4.3.0 <slow@example.test>: try later"));
    let answered = satellite_via(next.addr(), &lines);
    // The smarthost refuses connections: the fleet's mail waits for it.
    let down = satellite_via(free_addr(), &lines);
    let id = submit(&answered, SENDER, &["slow@example.test"], &note("answered", "x\n"));
    let kept = submit(&down, SENDER, &["slow@example.test"], &note("kept", "x\n"));
    // The lifetime is counted in whole seconds from arrival: one more
    // second, and every attempt from then on is past it.
    let past_lifetime = Instant::now() + secs(3);

    expect_log(&answered, &[&format!("{id}: sender non-delivery notification: ")], secs(20));
    let bounces = next.wait_until(secs(10), |r| r.accepted().iter().any(|t| t.mail_from.is_empty())).accepted();
    let bounce = bounces.iter().find(|t| t.mail_from.is_empty()).expect("bounce reached the smarthost");
    let r = Report::parse(bounce.message());
    assert_eq!(field(r.recipient("slow@example.test"), "status"), Some("4.4.7"), "{r:#?}");

    // Attempts past its lifetime leave it queued, and nobody is told.
    thread::sleep(past_lifetime.saturating_duration_since(Instant::now()));
    let since = down.log_mark();
    assert!(
        down.wait_for_log_since(since, &format!("{kept}: to=<slow@example.test>"), secs(5)),
        "no attempt after the lifetime; log:\n{}",
        down.log()
    );
    assert!(id_lines(&down, &kept, &["status=deferred"]).len() >= 3, "{}", down.log());
    assert!(id_lines(&down, &kept, &["expired"]).is_empty(), "{}", down.log());
    assert!(id_lines(&down, &kept, &["notification"]).is_empty(), "{}", down.log());
    assert_eq!(down.queued_count(), 1, "{}", down.log());
}

// 4 ------------------------------------------------------------------------

#[test]
fn failed_bounce_is_logged_and_never_bounced() {
    let next = Scripted::start(
        Script::new()
            .rcpt("nobody@", "550 5.1.1 <nobody@example.test>: Recipient address rejected: User unknown")
            .rcpt(SENDER, "550 5.1.1 <alice@vm1.test>: Recipient address rejected: User unknown"),
    );
    let ph = satellite_via(next.addr(), &[]);
    let id = submit(&ph, SENDER, &["nobody@example.test"], &note("doomed", "both ways\n"));

    let line = expect_log(&ph, &[&format!("{id}: sender non-delivery notification: ")], secs(20));
    let bounce_id = notice_id(&line);
    let never = expect_log(&ph, &[&format!("{bounce_id}: no non-delivery notification")], secs(20));
    assert!(never.contains("the sender is <> (never a bounce to a bounce)"), "{never}");
    expect_log(&ph, &[&format!("{bounce_id}: removed")], secs(10));
    settle(Duration::from_secs(2));

    assert_eq!(ph.log_lines(&["sender non-delivery notification"]).len(), 1, "{}", ph.log());
    assert_eq!(ph.log_lines(&["never a bounce to a bounce"]).len(), 1, "{}", ph.log());
    assert_eq!(id_lines(&ph, &bounce_id, &[&format!("to=<{SENDER}>"), "status=bounced"]).len(), 1);
    assert!(ph.wait_for_queued(0, secs(10)), "{}", ph.log());
    // The next hop saw the message and the bounce, refused both, nothing else.
    let record = next.record();
    assert_eq!(record.transactions.len(), 2, "{:#?}", record.transactions);
    assert!(record.accepted().is_empty());
    assert_eq!(record.transactions[1].mail_from, "");
    assert_eq!(record.transactions[1].refused[0].address, SENDER);
}

#[test]
fn bounces_to_one_sender_are_rate_limited() {
    let next = Scripted::start(Script::new().rcpt("nobody@", "550 5.1.1 <nobody@example.test>: User unknown"));
    let ph = satellite_via(next.addr(), &["queue.bounce_rate_limit = 2"]);
    let ids: Vec<String> =
        (0..4).map(|i| submit(&ph, SENDER, &["nobody@example.test"], &note(&format!("storm {i}"), "x\n"))).collect();
    assert!(
        ph.wait_for_log_count(&["notification to <alice@vm1.test> suppressed: rate limit reached"], 2, secs(20)),
        "{}",
        ph.log()
    );
    assert!(wait_until(secs(10), || ph.queued_count() == 0), "{}", ph.log());
    settle(Duration::from_secs(1));
    let notified: Vec<&String> =
        ids.iter().filter(|id| !id_lines(&ph, id, &["sender non-delivery notification"]).is_empty()).collect();
    assert_eq!(notified.len(), 2, "{}", ph.log());
    assert_eq!(notices(&next).len(), 2, "{:#?}", next.accepted());
}

// 5 ------------------------------------------------------------------------

/// Submits `n` messages over `connections` parallel SMTP sessions, each
/// pipelining the next MAIL, RCPT and DATA behind the previous message's
/// final dot (RFC 2920: one round trip per message).
fn submit_many(addr: SocketAddr, n: usize, connections: usize) {
    thread::scope(|s| {
        for c in 0..connections {
            s.spawn(move || {
                let count = n / connections + usize::from(c < n % connections);
                let mut smtp = RawSmtp::connect(addr).expect("connect");
                smtp.ehlo("bulk.test").expect("EHLO");
                let envelope = |i: usize| {
                    format!("MAIL FROM:<{SENDER}>\r\nRCPT TO:<user{c}.{i}@example.test>\r\nDATA\r\n").into_bytes()
                };
                smtp.send_raw(&envelope(0)).unwrap();
                for i in 0..count {
                    for what in ["MAIL", "RCPT", "DATA"] {
                        let r = smtp.read().unwrap();
                        let want = if what == "DATA" { 354 } else { 250 };
                        assert_eq!(r.code, want, "{what} of message {c}.{i}: {r}");
                    }
                    let mut chunk = dot_stuff(note(&format!("bulk {c}.{i}"), "x\n").as_bytes());
                    chunk.extend_from_slice(b".\r\n");
                    if i + 1 < count {
                        chunk.extend_from_slice(&envelope(i + 1));
                    }
                    smtp.send_raw(&chunk).unwrap();
                    let r = smtp.read().unwrap();
                    assert_eq!(r.code, 250, "end of message {c}.{i}: {r}");
                }
                smtp.quit().unwrap();
            });
        }
    });
}

#[test]
fn destination_down_costs_its_concurrency_per_retry_round_not_one_attempt_per_message() {
    const MESSAGES: usize = 1000;
    const CONCURRENCY: usize = 4;
    const SLACK: usize = 2;
    // Accepts each connection and hangs up: every attempt is counted.
    let dead = Scripted::start(Script::hang_up());
    let ph = satellite_via(
        dead.addr(),
        &[
            "queue.retry_min = \"5s\"",
            "queue.retry_max = \"5s\"",
            "queue.delay_warning = \"0s\"",
            &format!("deliver.destination_concurrency = {CONCURRENCY}"),
        ],
    );
    let started = Instant::now();
    submit_many(ph.smtp_addr(), MESSAGES, 20);
    let submitted = started.elapsed();
    assert!(
        wait_until(secs(30), || ph.spool_files("deferred").len() == MESSAGES),
        "{} of {MESSAGES} deferred after {:?}",
        ph.spool_files("deferred").len(),
        started.elapsed()
    );

    // So far: at most CONCURRENCY connections per outage the daemon noticed.
    let outages = ph.log_lines(&["destination relay: down"]).len();
    let so_far = dead.connections();
    assert!(outages >= 1, "{}", ph.log());
    assert!(
        so_far <= outages * (CONCURRENCY + SLACK),
        "{so_far} connections for {outages} outage(s) while {MESSAGES} messages arrived in {submitted:?}"
    );

    // One whole retry round, all 1000 messages due in it.
    let mark = ph.log_mark();
    let before = dead.connections();
    let round = ph.wait_for_log_since(mark, "destination relay: down", secs(10));
    assert!(round, "no retry round within 10 s; log tail:\n{}", tail(&ph.log(), 30));
    // Let the round finish: every message deferred again.
    let suspended =
        |ph: &Posthorn| count_lines(&ph.log()[mark..], &["status=deferred", "delivery temporarily suspended"]);
    wait_until(secs(15), || suspended(&ph) + (dead.connections() - before) >= MESSAGES);
    let during = dead.connections() - before;
    let skipped = suspended(&ph);
    eprintln!(
        "{MESSAGES} messages submitted in {submitted:?}; {so_far} connections over {outages} outage(s) before; \
         one round: {during} connections, {skipped} deferred without connecting"
    );
    assert!(during >= 1, "the round made no attempt at all");
    assert!(during <= CONCURRENCY + SLACK, "{during} connection attempts in one retry round");
    assert!(
        skipped + during >= MESSAGES - CONCURRENCY - SLACK,
        "only {skipped} messages deferred without connecting in the round: the round did not cover the queue"
    );
    assert!(wait_until(secs(5), || ph.queued_count() == MESSAGES), "messages lost: {}", ph.queued_count());
}

fn tail(text: &str, n: usize) -> String {
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

// 6 ------------------------------------------------------------------------

#[test]
fn notify_success_without_dsn_at_the_next_hop_gets_a_relayed_notice() {
    let next = Scripted::start(Script::new());
    let ph = satellite_via(next.addr(), &[]);
    let id = submit_lines(
        &ph,
        &format!("MAIL FROM:<{SENDER}> ENVID=q3-report"),
        &["RCPT TO:<bob@example.test> NOTIFY=SUCCESS ORCPT=rfc822;bob@example.test", "RCPT TO:<eve@example.test>"],
        &note("tell me when it is there", "x\n"),
    );
    let got = next.wait_for_accepted(2, secs(20));
    assert_eq!(got.len(), 2, "{got:#?}\nlog:\n{}", ph.log());
    expect_log(&ph, &[&format!("{id}: sender success notification: ")], secs(10));
    settle(Duration::from_secs(1));

    let original: Vec<ScriptedTx> = next.accepted().into_iter().filter(|t| t.mail_from == SENDER).collect();
    assert_eq!(original.len(), 1);
    // The next hop offers no DSN: no DSN parameters go to it.
    assert!(original[0].rcpts.iter().all(|r| r.params.is_empty()), "{:#?}", original[0].rcpts);
    assert!(original[0].mail_param("ENVID").is_none());

    let got = notices(&next);
    assert_eq!(got.len(), 1, "one success notice, none for eve: {got:#?}");
    assert_eq!(got[0].rcpt_to(), [SENDER]);
    let r = Report::parse(got[0].message());
    assert_eq!(r.content_type, "multipart/report");
    assert_eq!(r.report_type.as_deref(), Some("delivery-status"));
    assert_eq!(r.recipients(), ["rfc822; bob@example.test"], "{r:#?}");
    let rcpt = r.recipient("bob@example.test");
    assert_eq!(field(rcpt, "action"), Some("relayed"), "{rcpt:?}");
    assert!(field(rcpt, "status").is_some_and(|s| s.starts_with("2.")), "{rcpt:?}");
    assert_eq!(field(rcpt, "original-recipient"), Some("rfc822; bob@example.test"), "{rcpt:?}");
    assert_eq!(r.message_field("original-envelope-id"), Some("q3-report"), "{r:#?}");
}

#[test]
fn notify_is_passed_on_to_a_next_hop_offering_dsn_and_no_notice_is_sent() {
    let next = Scripted::start(Script::new().dsn());
    let ph = satellite_via(next.addr(), &[]);
    let id = submit_lines(
        &ph,
        &format!("MAIL FROM:<{SENDER}> RET=HDRS ENVID=q3+2Breport"),
        &["RCPT TO:<bob@example.test> NOTIFY=SUCCESS,FAILURE ORCPT=rfc822;bob@example.test"],
        &note("the next hop reports", "x\n"),
    );
    let got = next.wait_for_accepted(1, secs(20));
    assert_eq!(got.len(), 1, "{}", ph.log());
    expect_log(&ph, &[&format!("{id}: removed")], secs(10));
    settle(Duration::from_secs(2));

    let rcpt = &got[0].rcpts[0];
    assert_eq!(rcpt.param("NOTIFY"), Some("SUCCESS,FAILURE"), "{:?}", next.commands());
    assert_eq!(rcpt.param("ORCPT"), Some("rfc822;bob@example.test"), "{:?}", next.commands());
    assert_eq!(got[0].mail_param("RET"), Some("HDRS"), "{:?}", next.commands());
    assert_eq!(got[0].mail_param("ENVID"), Some("q3+2Breport"), "{:?}", next.commands());
    assert_eq!(next.accepted().len(), 1, "no notice from posthorn: {:#?}", next.accepted());
    assert!(ph.log_lines(&["notification"]).is_empty(), "{}", ph.log());
}

#[test]
fn notify_never_gets_no_bounce() {
    let next = Scripted::start(Script::new().rcpt("nobody@", "550 5.1.1 <nobody@example.test>: User unknown"));
    let ph = satellite_via(next.addr(), &[]);
    let id = submit_lines(
        &ph,
        &format!("MAIL FROM:<{SENDER}>"),
        &["RCPT TO:<nobody@example.test> NOTIFY=NEVER"],
        &note("do not tell me", "x\n"),
    );
    expect_log(&ph, &[&format!("{id}: to=<nobody@example.test>"), "status=bounced"], secs(20));
    expect_log(&ph, &[&format!("{id}: removed")], secs(10));
    settle(Duration::from_secs(2));
    assert!(ph.log_lines(&["notification"]).is_empty(), "{}", ph.log());
    let record = next.record();
    assert_eq!(record.transactions.len(), 1, "only the message itself: {:#?}", record.transactions);
    assert_eq!(ph.queued_count(), 0);
}

// 7 ------------------------------------------------------------------------

#[test]
fn unparsable_dsn_parameters_get_501_naming_them_and_the_session_goes_on() {
    let next = Scripted::start(Script::new());
    let ph = satellite_via(next.addr(), &[]);
    let mut c = RawSmtp::connect(ph.smtp_addr()).unwrap();
    c.ehlo("client.test").unwrap();
    let mail = format!("MAIL FROM:<{SENDER}>");
    let bad_mail = [
        (format!("{mail} RET=ALL"), "RET"),
        (format!("{mail} RET=FULL RET=HDRS"), "RET"),
        (format!("{mail} ENVID=a+zz"), "ENVID"),
        (format!("{mail} ENVID={}", "x".repeat(101)), "ENVID"),
    ];
    for (line, name) in &bad_mail {
        let r = c.cmd(line).unwrap();
        assert_eq!(r.code, 501, "{line} -> {r}");
        assert!(r.text.contains(name), "{line} -> {r}: parameter not named");
    }
    assert_eq!(c.cmd(&mail).unwrap().code, 250);
    let rcpt = "RCPT TO:<bob@example.test>";
    let bad_rcpt = [
        (format!("{rcpt} NOTIFY=SOMETIMES"), "NOTIFY"),
        (format!("{rcpt} NOTIFY=NEVER,SUCCESS"), "NOTIFY"),
        (format!("{rcpt} ORCPT=bob@example.test"), "ORCPT"),
        (format!("{rcpt} ORCPT=rfc822;bob+zz"), "ORCPT"),
    ];
    for (line, name) in &bad_rcpt {
        let r = c.cmd(line).unwrap();
        assert_eq!(r.code, 501, "{line} -> {r}");
        assert!(r.text.contains(name), "{line} -> {r}: parameter not named");
    }
    // The same session still works, and the refused lines left no trace.
    assert_eq!(c.cmd(&format!("{rcpt} NOTIFY=FAILURE")).unwrap().code, 250);
    assert_eq!(c.cmd("DATA").unwrap().code, 354);
    c.send_raw(&dot_stuff(note("after the errors", "x\n").as_bytes())).unwrap();
    c.send_raw(b".\r\n").unwrap();
    let r = c.read().unwrap();
    assert_eq!(r.code, 250, "{r}");
    c.quit().unwrap();
    let got = next.wait_for_accepted(1, secs(20));
    assert_eq!(got.len(), 1, "{}", ph.log());
    assert_eq!(got[0].rcpt_to(), ["bob@example.test"]);
    assert_eq!(got[0].header("Subject").as_deref(), Some("after the errors"));
}

/// A DSN keyword with an empty or otherwise malformed value is still a DSN
/// parameter that does not parse: the 501 names it, as for any other value.
#[test]
fn malformed_dsn_parameter_values_are_named_in_the_501() {
    let next = Scripted::start(Script::new());
    let ph = satellite_via(next.addr(), &[]);
    let mut c = RawSmtp::connect(ph.smtp_addr()).unwrap();
    c.ehlo("client.test").unwrap();
    let mail = format!("MAIL FROM:<{SENDER}>");
    let mut failures = Vec::new();
    for (line, name) in [(format!("{mail} RET="), "RET"), (format!("{mail} ENVID="), "ENVID")] {
        let r = c.cmd(&line).unwrap();
        if r.code != 501 || !r.text.contains(name) {
            failures.push(format!("{line} -> {r}"));
        }
    }
    assert_eq!(c.cmd(&mail).unwrap().code, 250);
    let rcpt = "RCPT TO:<bob@example.test>";
    for (line, name) in
        [(format!("{rcpt} NOTIFY="), "NOTIFY"), (format!("{rcpt} ORCPT=rfc822;a=b@example.test"), "ORCPT")]
    {
        let r = c.cmd(&line).unwrap();
        if r.code != 501 || !r.text.contains(name) {
            failures.push(format!("{line} -> {r}"));
        }
    }
    assert_eq!(c.cmd(rcpt).unwrap().code, 250, "the session goes on");
    c.quit().unwrap();
    assert!(failures.is_empty(), "501 without the parameter named:\n{}", failures.join("\n"));
}

#[test]
fn corrupt_envelopes_are_quarantined_reported_and_the_queue_keeps_flowing() {
    // The first message gets 451 so that it is waiting in deferred/ when
    // the daemon stops.
    let next = Scripted::start(Script::new().data_end(&["451 4.3.0 come back later"]));
    // Three seconds to the retry: time to stop the daemon before it.
    let mut ph = satellite_via(next.addr(), &["queue.retry_min = \"3s\"", "queue.retry_max = \"3s\""]);
    let check = ph.command(&["check"], b"");
    assert_eq!(check.status.code(), Some(0), "clean spool: {}", text(&check.stdout));
    let waiting = submit(&ph, SENDER, &["ops@example.test"], &note("was deferred", "x\n"));
    expect_log(&ph, &[&format!("{waiting}: to=<ops@example.test>"), "status=deferred"], secs(20));
    ph.stop();

    // Broken envelopes, each with a body so that only the envelope is at
    // fault: garbage and a torn copy of a real one in deferred/ (read at
    // load), garbage in incoming/ (read when its turn comes). And a good
    // envelope whose body is missing (found by start-up recovery).
    let spool = ph.spool_dir();
    let deferred = spool.join("deferred");
    let real = fs::read(deferred.join(&waiting)).expect("the deferred envelope");
    let body = fs::read(spool.join("data").join(&waiting)).expect("the deferred message's body");
    let (garbage, torn, incoming, bodyless) = ("0AAAAAAAA1", "0AAAAAAAA2", "0AAAAAAAA3", "0AAAAAAAA4");
    fs::write(deferred.join(garbage), b"\x00\x01 this is not an envelope {{{").unwrap();
    fs::write(deferred.join(torn), &real[..real.len() / 2]).unwrap();
    fs::write(spool.join("incoming").join(incoming), b"{\"v\":1,\"id\":").unwrap();
    for id in [garbage, torn, incoming] {
        fs::write(spool.join("data").join(id), &body).unwrap();
    }
    let mut good: serde_json::Value = serde_json::from_slice(&real).unwrap();
    good["id"] = bodyless.into();
    fs::write(deferred.join(bodyless), good.to_string()).unwrap();
    // And one more message, dropped by sendmail while the daemon is down.
    let out = ph.sendmail(&["-f", SENDER, "late@example.test"], note("dropped offline", "x\n").as_bytes());
    assert!(out.status.success(), "sendmail: {}", text(&out.stderr));

    ph.restart();
    let got = next.wait_for_accepted(2, secs(20));
    assert_eq!(got.len(), 2, "the queue stopped flowing: {got:#?}\nlog:\n{}", ph.log());
    let subjects: Vec<String> = got.iter().filter_map(|t| t.header("Subject")).collect();
    assert!(subjects.contains(&"was deferred".to_string()) && subjects.contains(&"dropped offline".to_string()));
    assert!(wait_until(secs(5), || ph.queued_count() == 0), "{}", ph.log());

    let corrupt = spool.join("corrupt");
    for (id, why) in [
        (garbage, "unreadable envelope"),
        (torn, "unreadable envelope"),
        (incoming, "unreadable envelope"),
        (bodyless, "body missing"),
    ] {
        assert!(corrupt.join(id).exists(), "{id} not in corrupt/; log:\n{}", ph.log());
        assert_eq!(ph.queued_count(), 0);
        assert_eq!(id_lines(&ph, id, &[why, "corrupt/"]).len(), 1, "{id}: no `{why}` line; log:\n{}", ph.log());
    }
    assert!(next.accepted().len() == 2, "a corrupt envelope was delivered: {:#?}", next.accepted());
    // Named, as a warning: quarantined files never keep the daemon from
    // starting again (`posthorn check` is the gate before start).
    let check = ph.command(&["check"], b"");
    let said = text(&check.stdout) + &text(&check.stderr);
    assert_eq!(check.status.code(), Some(0), "{said}");
    for id in [garbage, torn, incoming, bodyless] {
        assert!(
            said.lines().any(|l| l.contains("warning:") && l.contains(id)),
            "posthorn check does not name {id}:\n{said}"
        );
    }
}

// 8 ------------------------------------------------------------------------

/// One request on the daemon's control socket, the answer as JSON.
fn control(ph: &Posthorn, request: serde_json::Value) -> serde_json::Value {
    let mut stream =
        std::os::unix::net::UnixStream::connect(ph.spool_dir().join("control.sock")).expect("control.sock");
    stream.set_read_timeout(Some(secs(30))).unwrap();
    let mut line = request.to_string();
    line.push('\n');
    stream.write_all(line.as_bytes()).unwrap();
    let mut answer = String::new();
    BufReader::new(stream).read_line(&mut answer).unwrap();
    serde_json::from_str(&answer).unwrap_or_else(|e| panic!("control answer {answer:?}: {e}"))
}

#[test]
fn held_and_frozen_messages_wait_until_released() {
    // Both messages get 451 once, so they are deferred and due again soon.
    let next = Scripted::start(Script::new().data_end(&["451 4.3.0 not now", "451 4.3.0 not now"]));
    let ph = satellite_via(next.addr(), &["queue.retry_min = \"3s\"", "queue.retry_max = \"3s\""]);
    let held = submit(&ph, SENDER, &["held@example.test"], &note("held", "x\n"));
    let frozen = submit(&ph, SENDER, &["frozen@example.test"], &note("frozen", "x\n"));
    for id in [&held, &frozen] {
        expect_log(&ph, &[&format!("{id}: to=<"), "status=deferred"], secs(20));
    }

    let out = ph.command(&["queue", "hold", &held], b"");
    assert!(out.status.success(), "queue hold: {}{}", text(&out.stdout), text(&out.stderr));
    let answer = control(&ph, serde_json::json!({"v": 1, "cmd": "act", "action": "freeze", "ids": [frozen]}));
    assert_eq!(answer["ok"], true, "{answer}");
    assert_eq!(answer["results"][0]["found_in"], "deferred", "{answer}");
    let hold = ph.spool_dir().join("hold");
    assert!(hold.join(&held).exists() && hold.join(&frozen).exists(), "{}", ph.log());
    let env = read_envelope(&hold.join(&frozen)).expect("frozen envelope");
    assert_eq!(env["frozen"], true, "{env}");
    assert_eq!(read_envelope(&hold.join(&held)).expect("held envelope").get("frozen"), None);

    // Past their retry time: neither is tried.
    let mark = ph.log_mark();
    let seen = next.record().messages;
    let connections = next.connections();
    settle(Duration::from_secs(5));
    assert_eq!(next.record().messages, seen, "a held message was attempted: {:#?}", next.transactions());
    assert_eq!(next.connections(), connections);
    let while_held = &ph.log()[mark..];
    for id in [&held, &frozen] {
        assert_eq!(count_lines(while_held, &[&format!("{id}: to=<")]), 0, "{while_held}");
    }

    let out = ph.command(&["queue", "release", &held], b"");
    assert!(out.status.success(), "queue release: {}{}", text(&out.stdout), text(&out.stderr));
    let out = ph.run_as("exim", &["-Mt", &frozen], b"");
    assert!(out.status.success(), "exim -Mt: {}{}", text(&out.stdout), text(&out.stderr));
    let got = next.wait_for_accepted(2, secs(10));
    assert_eq!(got.len(), 2, "not delivered after release: {got:#?}\nlog:\n{}", ph.log());
    let mut to: Vec<String> = got.iter().flat_map(|t| t.rcpt_to()).collect();
    to.sort();
    assert_eq!(to, ["frozen@example.test", "held@example.test"]);
    assert!(wait_until(secs(5), || ph.queued_count() == 0 && ph.spool_files("hold").is_empty()));
}

// The harness's scripted server itself --------------------------------------

#[test]
fn scripted_server_answers_pipelined_commands_in_order_and_records_them() {
    let next =
        Scripted::start(Script::new().dsn().rcpt("bad@", "550 5.1.1 <bad@y.test>: no").data_end(&["451 4.3.0 later"]));
    let mut c = RawSmtp::connect(next.addr()).unwrap();
    assert_eq!(c.banner.code, 220);
    let ehlo = c.ehlo("client.test").unwrap();
    assert!(ehlo.text.contains("PIPELINING") && ehlo.text.contains("DSN"), "{ehlo}");
    let codes = |c: &mut RawSmtp, n: usize| -> Vec<u16> { (0..n).map(|_| c.read().unwrap().code).collect() };

    // A whole group in one write, then the body with the next group behind it.
    c.send_raw(
        b"MAIL FROM:<a@x.test> RET=HDRS\r\nRCPT TO:<b@y.test> NOTIFY=SUCCESS\r\nRCPT TO:<bad@y.test>\r\nDATA\r\n",
    )
    .unwrap();
    assert_eq!(codes(&mut c, 4), [250, 250, 550, 354]);
    c.send_raw(
        b"Subject: one\r\n\r\n..starts with a dot\r\n.\r\nMAIL FROM:<>\r\nRCPT TO:<bad@y.test>\r\nDATA\r\nRSET\r\n",
    )
    .unwrap();
    assert_eq!(codes(&mut c, 5), [451, 250, 550, 554, 250]);
    c.send_raw(b"MAIL FROM:<a@x.test>\r\nRCPT TO:<c@y.test>\r\nDATA\r\n").unwrap();
    assert_eq!(codes(&mut c, 3), [250, 250, 354]);
    c.send_raw(b"Subject: two\r\n\r\nbody\r\n.\r\nQUIT\r\n").unwrap();
    assert_eq!(codes(&mut c, 2), [250, 221]);

    let r = next.record();
    assert_eq!((r.connections, r.messages, r.transactions.len()), (1, 2, 3), "{r:#?}");
    let first = &r.transactions[0];
    assert_eq!(first.mail_param("RET"), Some("HDRS"));
    assert_eq!(first.rcpt_to(), ["b@y.test"]);
    assert_eq!(first.rcpts[0].param("NOTIFY"), Some("SUCCESS"));
    assert_eq!(first.refused[0].address, "bad@y.test");
    assert_eq!(first.message(), b"Subject: one\r\n\r\n.starts with a dot\r\n");
    assert!(!first.accepted() && first.reply.as_deref() == Some("451 4.3.0 later"));
    assert!(r.transactions[1].mail_from.is_empty() && r.transactions[1].message.is_none());
    assert_eq!(r.accepted().len(), 1);
    assert_eq!(r.accepted()[0].header("Subject").as_deref(), Some("two"));
    assert!(r.commands.contains(&"RCPT TO:<b@y.test> NOTIFY=SUCCESS".to_string()), "{:?}", r.commands);

    // Hang-up mode: every connection counted, none greeted.
    let dead = Scripted::start(Script::hang_up());
    for _ in 0..3 {
        assert!(RawSmtp::connect(dead.addr()).is_err());
    }
    assert_eq!(dead.wait_until(secs(5), |r| r.connections == 3).connections, 3);
}
