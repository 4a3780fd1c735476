//! End-to-end: a satellite accepting mail from local programs (SMTP with
//! real clients, `sendmail`) and relaying all of it to its smarthosts,
//! played by Postfix's `smtp-sink`. Delivered mail is checked by reading it
//! back from the sink's capture files, never from a log line alone.
//!
//! Scenarios:
//! 1. smtplib submits; the message arrives with its envelope, headers,
//!    body, and a `Received:` header carrying the queue id.
//! 2. mail-send (a Rust client) submits; same checks.
//!    swaks (with PIPELINING) submits; same checks.
//! 3. `sendmail -t` takes the recipients from To/Cc/Bcc and drops Bcc.
//! 4. `sendmail -f SENDER RCPT...` (as `posthorn sendmail` and through a
//!    symlink named `sendmail`).
//! 5. `sendmail` while the daemon is stopped exits 0; the message is
//!    delivered once the daemon is back.
//! 6. Smarthost down: mail waits in the spool, then each message is
//!    delivered exactly once when it comes back.
//! 7. Two smarthosts, the first refusing connections: all to the second.
//! 8. Two smarthosts, the first greeting with 421: all to the second.
//! 9. `kill -9` during a stream of 500 submissions, with a slow smarthost
//!    so that a backlog is queued: every message that got 250 is delivered
//!    after the restart (duplicates counted, allowed).

mod harness;

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use harness::*;

/// A satellite relaying to `sink` only.
fn satellite(sink: &Sink) -> Posthorn {
    Posthorn::start(&satellite_config(&[sink.addr()]))
}

/// The queue id of the log line reporting delivery to `rcpt`.
fn sent_queue_id(ph: &Posthorn, rcpt: &str) -> String {
    let to = format!("to=<{rcpt}>");
    assert!(
        ph.wait_for_log_count(&[&to, "status=sent"], 1, secs(15)),
        "no `{to} ... status=sent` log line; log:\n{}",
        ph.log()
    );
    let line = ph.log_lines(&[&to, "status=sent"]).remove(0);
    queue_id_of(&line).unwrap_or_else(|| panic!("no queue id at the start of {line:?}"))
}

/// Checks posthorn's own `Received:` header (the topmost one, smtp-sink
/// adds none to the message itself) names the satellite and the queue id.
fn assert_received_by(ph: &Posthorn, got: &Dumped, queue_id: &str) {
    let received = got.headers("Received");
    let ours = received.first().unwrap_or_else(|| panic!("no Received: header in\n{}", got.text()));
    assert!(ours.contains(queue_id), "Received: {ours:?} lacks queue id {queue_id}");
    assert!(ours.contains(ph.hostname()), "Received: {ours:?} lacks hostname {}", ph.hostname());
}

fn message_ids(got: &[Dumped]) -> Vec<String> {
    got.iter().map(|d| d.header("Message-ID").unwrap_or_else(|| panic!("no Message-ID in\n{}", d.text()))).collect()
}

#[test]
fn smtplib_submission_is_relayed_with_envelope_headers_and_queue_id() {
    let sink = Sink::start();
    let ph = satellite(&sink);
    let msg = message(
        &[("From", "App <app@vm1.test>"), ("To", "ops@example.test"), ("Subject", "disk almost full")],
        "/var is at 93%.\n.a line starting with a dot\n",
    );
    let reply = smtplib_transaction(ph.smtp_addr(), "app@vm1.test", &["ops@example.test", "dev@example.test"], &msg)
        .unwrap_or_else(|e| panic!("smtplib: {e}\nlog:\n{}", ph.log()));
    assert_eq!(reply.0, 250, "{reply:?}");

    let got = sink.wait_for_parsed(1, secs(15));
    assert_eq!(got.len(), 1, "sink got {} messages; log:\n{}", got.len(), ph.log());
    let got = &got[0];
    assert_eq!(got.mail_from, "app@vm1.test");
    let mut rcpts = got.rcpt_to.clone();
    rcpts.sort();
    assert_eq!(rcpts, ["dev@example.test", "ops@example.test"]);
    assert_eq!(got.header("Subject").as_deref(), Some("disk almost full"));
    assert_eq!(got.header("From").as_deref(), Some("App <app@vm1.test>"));
    let body = String::from_utf8_lossy(&got.body()).into_owned();
    assert_eq!(body, "/var is at 93%.\n.a line starting with a dot\n");

    let queue_id = sent_queue_id(&ph, "ops@example.test");
    assert_received_by(&ph, got, &queue_id);
    eprintln!("DATA reply: {reply:?}; queue id {queue_id}");
}

#[tokio::test]
async fn mail_send_submission_is_relayed() {
    use mail_send::SmtpClientBuilder;
    use mail_send::smtp::message::Message;

    let sink = Sink::start();
    let ph = satellite(&sink);
    let addr = ph.smtp_addr();
    let body = message(
        &[("From", "billing@vm2.test"), ("To", "finance@example.test"), ("Subject", "invoice run")],
        "42 invoices sent.\n",
    )
    .replace('\n', "\r\n");
    // mail-send always appends "\r\n.\r\n": hand it the message without its
    // final line end, or the message grows an empty last line.
    let body = body.strip_suffix("\r\n").unwrap_or(&body).to_string();
    let mut client = SmtpClientBuilder::new(addr.ip().to_string(), addr.port())
        .expect("client builder")
        .implicit_tls(false)
        .helo_host("mailsend.test")
        .timeout(Duration::from_secs(30))
        .connect_plain()
        .await
        .unwrap_or_else(|e| panic!("connect: {e}"));
    let reply = client
        .send(Message::new("billing@vm2.test", ["finance@example.test"], body.as_bytes()))
        .await
        .unwrap_or_else(|e| panic!("send: {e}\nlog:\n{}", ph.log()));
    assert_eq!(reply.code, 250);
    client.quit().await.ok();

    let got = sink.wait_for_parsed(1, secs(15));
    assert_eq!(got.len(), 1, "log:\n{}", ph.log());
    assert_eq!(got[0].mail_from, "billing@vm2.test");
    assert_eq!(got[0].rcpt_to, ["finance@example.test"]);
    assert_eq!(got[0].header("Subject").as_deref(), Some("invoice run"));
    assert_eq!(String::from_utf8_lossy(&got[0].body()), "42 invoices sent.\n");
    let queue_id = sent_queue_id(&ph, "finance@example.test");
    assert_received_by(&ph, &got[0], &queue_id);
}

#[test]
fn swaks_pipelined_submission_is_relayed() {
    let sink = Sink::start();
    let ph = satellite(&sink);
    let out = swaks(
        ph.smtp_addr(),
        &[
            "--pipeline",
            "--from",
            "monitor@vm9.test",
            "--to",
            "a@example.test,b@example.test",
            "--header",
            "Subject: load average",
            "--header",
            "Message-Id: <swaks-1@vm9.test>",
            "--body",
            "load is 0.42",
        ],
    );
    let transcript = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "swaks: {:?}\n{transcript}\nlog:\n{}", out.status, ph.log());
    assert!(transcript.contains("PIPELINING"), "EHLO reply lacks PIPELINING:\n{transcript}");

    let got = sink.wait_for_parsed(1, secs(15));
    assert_eq!(got.len(), 1, "log:\n{}", ph.log());
    assert_eq!(got[0].mail_from, "monitor@vm9.test");
    let mut rcpts = got[0].rcpt_to.clone();
    rcpts.sort();
    assert_eq!(rcpts, ["a@example.test", "b@example.test"]);
    assert_eq!(got[0].header("Subject").as_deref(), Some("load average"));
    assert_eq!(got[0].header("Message-ID").as_deref(), Some("<swaks-1@vm9.test>"));
    assert!(String::from_utf8_lossy(&got[0].body()).starts_with("load is 0.42"));
}

#[test]
fn sendmail_t_takes_recipients_from_headers_and_drops_bcc() {
    let sink = Sink::start();
    let ph = satellite(&sink);
    let msg = message(
        &[
            ("From", "cron@vm3.test"),
            ("To", "Ops <ops@example.test>, dev@example.test"),
            ("Cc", "audit@example.test"),
            ("Bcc", "secret@example.test"),
            ("Subject", "nightly backup"),
        ],
        "backup finished\n",
    );
    let out = ph.sendmail(&["-t", "-i"], msg.as_bytes());
    assert!(out.status.success(), "sendmail -t: {:?}\nstderr: {}", out.status, String::from_utf8_lossy(&out.stderr));

    let got = sink.wait_for_parsed(1, secs(15));
    assert_eq!(got.len(), 1, "log:\n{}", ph.log());
    let mut rcpts = got[0].rcpt_to.clone();
    rcpts.sort();
    assert_eq!(rcpts, ["audit@example.test", "dev@example.test", "ops@example.test", "secret@example.test"]);
    assert_eq!(got[0].header("Bcc"), None, "Bcc must not be relayed:\n{}", got[0].text());
    assert_eq!(got[0].header("Subject").as_deref(), Some("nightly backup"));
    assert_eq!(String::from_utf8_lossy(&got[0].body()), "backup finished\n");
}

#[test]
fn sendmail_with_sender_and_recipient_arguments() {
    let sink = Sink::start();
    let ph = satellite(&sink);

    // As `posthorn sendmail`.
    let first = message(&[("Subject", "first")], "one\n");
    let out = ph.sendmail(&["-i", "-f", "cron@vm4.test", "a@example.test", "b@example.test"], first.as_bytes());
    assert!(out.status.success(), "sendmail: {:?}\nstderr: {}", out.status, String::from_utf8_lossy(&out.stderr));

    // Through a symlink named `sendmail`, `-f` glued to its value, `-oi`.
    let second = message(&[("Subject", "second")], "two\n");
    let out = ph.run_as("sendmail", &["-oi", "-fbatch@vm4.test", "c@example.test"], second.as_bytes());
    assert!(out.status.success(), "sendmail link: {:?}\nstderr: {}", out.status, String::from_utf8_lossy(&out.stderr));

    let got = sink.wait_for_parsed(2, secs(15));
    assert_eq!(got.len(), 2, "log:\n{}", ph.log());
    let by_subject: HashMap<String, &Dumped> = got.iter().map(|d| (d.header("Subject").unwrap(), d)).collect();
    let one = by_subject["first"];
    assert_eq!(one.mail_from, "cron@vm4.test");
    let mut rcpts = one.rcpt_to.clone();
    rcpts.sort();
    assert_eq!(rcpts, ["a@example.test", "b@example.test"]);
    assert_eq!(String::from_utf8_lossy(&one.body()), "one\n");
    let two = by_subject["second"];
    assert_eq!(two.mail_from, "batch@vm4.test");
    assert_eq!(two.rcpt_to, ["c@example.test"]);
}

#[test]
fn sendmail_while_daemon_is_down_is_delivered_after_restart() {
    let sink = Sink::start();
    let mut ph = satellite(&sink);
    let status = ph.stop();
    assert!(status.success(), "SIGTERM exit: {status}; log:\n{}", ph.log());

    let msg = message(&[("Subject", "written while down")], "maildrop\n");
    let out = ph.sendmail(&["-f", "app@vm5.test", "ops@example.test"], msg.as_bytes());
    assert!(
        out.status.success(),
        "sendmail with the daemon down: {:?}\nstderr: {}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    thread::sleep(Duration::from_millis(500));
    assert!(sink.messages().is_empty(), "delivered although no daemon ran");

    ph.restart();
    let got = sink.wait_for_parsed(1, secs(30));
    assert_eq!(got.len(), 1, "not delivered after restart; log:\n{}", ph.log());
    assert_eq!(got[0].mail_from, "app@vm5.test");
    assert_eq!(got[0].rcpt_to, ["ops@example.test"]);
    assert_eq!(got[0].header("Subject").as_deref(), Some("written while down"));
}

#[test]
fn smarthost_down_mail_waits_in_spool_then_each_is_delivered_once() {
    const N: usize = 5;
    let mut sink = Sink::start_stopped();
    let ph = satellite(&sink);

    let mut sent = HashSet::new();
    let mut client = RawSmtp::connect(ph.smtp_addr()).expect("connect");
    client.ehlo("client.test").unwrap();
    for i in 0..N {
        let id = format!("<down-{i}-{}@client.test>", unique_name("m"));
        let msg = message(&[("Message-ID", &id), ("Subject", &format!("waiting {i}"))], "queued\n");
        let reply = client.send("app@vm6.test", &["ops@example.test"], msg.as_bytes()).expect("submit");
        assert_eq!(reply.code, 250, "{reply}");
        sent.insert(id);
    }
    client.quit().ok();

    // Attempts fail and are retried; the envelopes stay on disk meanwhile.
    assert!(
        ph.wait_for_log("status=deferred", secs(15)),
        "no `status=deferred` log line while the smarthost is down; log:\n{}",
        ph.log()
    );
    thread::sleep(Duration::from_secs(3));
    assert_eq!(ph.queued_count(), N, "envelopes under {}/{{incoming,active,deferred}}", ph.spool_dir().display());
    assert!(sink.messages().is_empty());

    sink.restart();
    let got = sink.wait_for_parsed(N, secs(30));
    assert_eq!(got.len(), N, "log:\n{}", ph.log());
    // Give a duplicate the time to show up.
    thread::sleep(Duration::from_secs(3));
    let got = sink.parsed();
    assert_eq!(got.len(), N, "duplicates delivered; log:\n{}", ph.log());
    let ids: HashSet<String> = message_ids(&got).into_iter().collect();
    assert_eq!(ids, sent);
    assert!(ph.wait_for_queued(0, secs(10)), "queue not empty after delivery: {} left", ph.queued_count());
}

/// Submits `n` messages over one connection; returns their Message-IDs.
fn submit_many(ph: &Posthorn, tag: &str, n: usize) -> HashSet<String> {
    let mut client = RawSmtp::connect(ph.smtp_addr()).expect("connect");
    client.ehlo("client.test").unwrap();
    let mut ids = HashSet::new();
    for i in 0..n {
        let id = format!("<{tag}-{i}-{}@client.test>", unique_name("m"));
        let msg = message(&[("Message-ID", &id), ("Subject", tag)], "hello\n");
        let reply = client.send("app@vm7.test", &["ops@example.test"], msg.as_bytes()).expect("submit");
        assert_eq!(reply.code, 250, "{reply}");
        ids.insert(id);
    }
    client.quit().ok();
    ids
}

#[test]
fn first_smarthost_refusing_connections_fails_over_to_second() {
    let refused = free_addr();
    let sink = Sink::start();
    let ph = Posthorn::start(&satellite_config(&[refused, sink.addr()]));
    let sent = submit_many(&ph, "failover", 3);
    let got = sink.wait_for_parsed(3, secs(20));
    assert_eq!(got.len(), 3, "log:\n{}", ph.log());
    let ids: HashSet<String> = message_ids(&got).into_iter().collect();
    assert_eq!(ids, sent);
}

#[test]
fn first_smarthost_greeting_421_fails_over_to_second() {
    let busy = Sink::start_with(&["-Q", "CONNECT"]);
    let sink = Sink::start();
    let ph = Posthorn::start(&satellite_config(&[busy.addr(), sink.addr()]));
    let sent = submit_many(&ph, "busy", 3);
    let got = sink.wait_for_parsed(3, secs(20));
    assert_eq!(got.len(), 3, "log:\n{}", ph.log());
    let ids: HashSet<String> = message_ids(&got).into_iter().collect();
    assert_eq!(ids, sent);
    assert!(busy.messages().is_empty());
}

#[test]
fn kill9_during_submissions_loses_no_accepted_message() {
    const CLIENTS: usize = 2;
    const PER_CLIENT: usize = 250;
    // A slow smarthost (1 s before answering DATA) keeps a backlog in the
    // queue and deliveries in flight when the satellite is killed.
    let mut sink = Sink::start_with(&["-w", "1"]);
    let mut ph = satellite(&sink);
    let addr = ph.smtp_addr();

    let accepted = Arc::new(Mutex::new(Vec::<String>::new()));
    let acked = Arc::new(AtomicUsize::new(0));
    let failed = Arc::new(AtomicUsize::new(0));
    let run = unique_name("k9");
    let clients: Vec<_> = (0..CLIENTS)
        .map(|c| {
            let (accepted, acked, failed, run) = (accepted.clone(), acked.clone(), failed.clone(), run.clone());
            thread::spawn(move || {
                let mut conn: Option<RawSmtp> = None;
                for i in 0..PER_CLIENT {
                    let id = format!("<{run}-{c}-{i}@client.test>");
                    let msg = message(&[("Message-ID", &id), ("Subject", "crash test")], "payload\n");
                    if conn.is_none() {
                        conn = RawSmtp::connect(addr).ok().and_then(|mut s| s.ehlo("client.test").ok().map(|_| s));
                    }
                    let result = match conn.as_mut() {
                        Some(s) => s.send("app@vm8.test", &["ops@example.test"], msg.as_bytes()),
                        None => Err(std::io::Error::other("not connected")),
                    };
                    match result {
                        Ok(reply) if reply.code == 250 => {
                            accepted.lock().unwrap().push(id);
                            acked.fetch_add(1, Ordering::SeqCst);
                        }
                        _ => {
                            failed.fetch_add(1, Ordering::SeqCst);
                            conn = None;
                        }
                    }
                }
            })
        })
        .collect();

    // Crash in the middle of the stream.
    let deadline = Instant::now() + secs(60);
    while acked.load(Ordering::SeqCst) < 150 && Instant::now() < deadline {
        thread::sleep(Duration::from_millis(5));
    }
    let at_kill = acked.load(Ordering::SeqCst);
    assert!(at_kill >= 150, "only {at_kill} accepted in 60 s; log:\n{}", ph.log());
    ph.kill9();
    for c in clients {
        c.join().unwrap();
    }
    let accepted: Vec<String> = accepted.lock().unwrap().clone();
    let delivered_before_restart = sink.messages().len();

    sink.restart_with(&[]);
    ph.restart();
    let want: HashSet<&String> = accepted.iter().collect();
    let all_in = wait_until(secs(90), || {
        let ids: HashSet<String> = message_ids(&sink.parsed()).into_iter().collect();
        want.iter().all(|id| ids.contains(*id))
    });
    let got = sink.parsed();
    let ids = message_ids(&got);
    let mut counts: HashMap<&str, usize> = HashMap::new();
    for id in &ids {
        *counts.entry(id.as_str()).or_default() += 1;
    }
    let missing: Vec<&&String> = want.iter().filter(|id| !counts.contains_key(id.as_str())).collect();
    let duplicates: usize = counts.values().map(|n| n - 1).sum();
    let extra = counts.keys().filter(|id| !want.iter().any(|w| w.as_str() == **id)).count();
    eprintln!(
        "kill -9 after {at_kill} accepted: {} accepted in all, {} failed, {} delivered before restart, \
         {} delivered in all, {} duplicates, {} delivered without a 250 (in flight at the kill)",
        accepted.len(),
        failed.load(Ordering::SeqCst),
        delivered_before_restart,
        ids.len(),
        duplicates,
        extra
    );
    assert!(
        all_in && missing.is_empty(),
        "{} accepted messages never delivered, e.g. {:?}; log tail:\n{}",
        missing.len(),
        missing.iter().take(5).collect::<Vec<_>>(),
        ph.log()
    );
}
