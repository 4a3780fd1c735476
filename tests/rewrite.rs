//! End-to-end: sender and recipient rewriting at the door into the queue,
//! read back at the receiving sink (envelope and headers).
//!
//! Scenarios:
//! 1. A satellite masquerades local senders (`root@vm12.internal` ->
//!    `root@vm12.example.org`) in the envelope and `From:`, for `sendmail`
//!    and for SMTP submissions; other senders and `To:` stay as they are.
//! 2. `masquerade_as` naming a whole address replaces the sender.
//! 3. canonical(5) tables: `sender_canonical_maps` on the envelope sender
//!    and `From:`, `recipient_canonical_maps` on envelope recipients
//!    (`user@domain` and `@domain` keys).

mod harness;

use harness::*;

fn satellite(sink: &Sink, lines: &[&str]) -> Posthorn {
    Posthorn::start(&with_lines(&satellite_config(&[sink.addr()]), lines))
}

#[test]
fn satellite_masquerades_local_senders_in_envelope_and_from() {
    let sink = Sink::start();
    let ph = satellite(
        &sink,
        &["rewrite.masquerade_as = \"vm12.example.org\"", "rewrite.masquerade_domains = [\"vm12.internal\"]"],
    );
    let msg = b"From: Cron Daemon <root@vm12.internal>\nTo: root@vm12.internal\nSubject: cron\n\nok\n";
    let out = ph.sendmail(&["-f", "root@vm12.internal", "ops@example.net"], msg);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let body = "From: backup@vm12.internal\nTo: ops@example.net\nSubject: smtp\n\nok\n";
    smtplib_send(ph.smtp_addr(), "backup@vm12.internal", &["ops@example.net"], body).unwrap();
    let body = "From: alice@example.net\nTo: ops@example.net\nSubject: other\n\nok\n";
    smtplib_send(ph.smtp_addr(), "alice@example.net", &["ops@example.net"], body).unwrap();

    let mut got = sink.wait_for_parsed(3, secs(20));
    assert_eq!(got.len(), 3, "log:\n{}", ph.log());
    got.sort_by_key(|d| d.header("Subject"));
    let (cron, other, smtp) = (&got[0], &got[1], &got[2]);
    assert_eq!(cron.mail_from, "root@vm12.example.org");
    assert_eq!(cron.header("From").unwrap(), "Cron Daemon <root@vm12.example.org>");
    assert_eq!(cron.header("To").unwrap(), "root@vm12.internal", "only senders are masqueraded");
    assert_eq!(smtp.mail_from, "backup@vm12.example.org");
    assert_eq!(smtp.header("From").unwrap(), "backup@vm12.example.org");
    assert_eq!(other.mail_from, "alice@example.net");
    assert_eq!(other.header("From").unwrap(), "alice@example.net");
}

#[test]
fn masquerade_as_an_address() {
    let sink = Sink::start();
    let ph = satellite(
        &sink,
        &["rewrite.masquerade_as = \"noreply@example.org\"", "rewrite.masquerade_domains = [\"vm12.internal\"]"],
    );
    let out = ph.sendmail(
        &["-f", "www-data@vm12.internal", "ops@example.net"],
        b"From: www-data@vm12.internal\nSubject: x\n\nbody\n",
    );
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let got = sink.wait_for_parsed(1, secs(20));
    assert_eq!(got.len(), 1, "log:\n{}", ph.log());
    assert_eq!(got[0].mail_from, "noreply@example.org");
    assert_eq!(got[0].header("From").unwrap(), "noreply@example.org");
    assert_eq!(got[0].body(), b"body\n");
}

#[test]
fn canonical_maps_on_envelope_and_header() {
    let sink = Sink::start();
    let dir = tempfile::tempdir().unwrap();
    let sender_map = dir.path().join("sender_canonical");
    std::fs::write(&sender_map, "root@vm12.internal  admin@example.org\n@legacy.example  @example.org\n").unwrap();
    let rcpt_map = dir.path().join("recipient_canonical");
    std::fs::write(&rcpt_map, "ops@example.net  oncall@example.net\n@old.example  @example.net\n").unwrap();
    let ph = satellite(
        &sink,
        &[
            &format!("rewrite.sender_canonical_maps = [{}]", toml_str(&format!("hash:{}", sender_map.display()))),
            &format!("rewrite.recipient_canonical_maps = [{}]", toml_str(&format!("hash:{}", rcpt_map.display()))),
        ],
    );
    let body = "From: \"Root\" <root@vm12.internal>\nTo: ops@example.net\nSubject: one\n\nok\n";
    smtplib_send(ph.smtp_addr(), "root@vm12.internal", &["ops@example.net", "bob@old.example"], body).unwrap();
    let body = "From: carol@legacy.example\nSubject: two\n\nok\n";
    smtplib_send(ph.smtp_addr(), "carol@legacy.example", &["dave@example.net"], body).unwrap();

    let mut got = sink.wait_for_parsed(2, secs(20));
    assert_eq!(got.len(), 2, "log:\n{}", ph.log());
    got.sort_by_key(|d| d.header("Subject"));
    assert_eq!(got[0].mail_from, "admin@example.org");
    assert_eq!(got[0].header("From").unwrap(), "\"Root\" <admin@example.org>");
    let mut rcpts = got[0].rcpt_to.clone();
    rcpts.sort();
    assert_eq!(rcpts, ["bob@example.net", "oncall@example.net"]);
    assert_eq!(got[0].header("To").unwrap(), "ops@example.net", "recipient maps change the envelope only");
    assert_eq!(got[1].mail_from, "carol@example.org");
    assert_eq!(got[1].header("From").unwrap(), "carol@example.org");
    assert_eq!(got[1].rcpt_to, ["dave@example.net"]);
}
