//! End-to-end: before-queue milters (`[milter]`), with the real
//! `posthorn` daemon and real milters.
//!
//! 1. The scripted milter (Python, tests/harness/milter.rs): its reply
//!    codes reach the client verbatim at RCPT and at the end of DATA; a
//!    plain reject; every change at the end of the message shows in the
//!    delivered mail and the envelope; quarantine puts the message on
//!    hold (`postqueue -p` shows it with `!`); discard drops it after a
//!    250; the macros it reads arrive (`{client_addr}`, `j`, `i`, ...).
//! 2. A milter that hangs: `milter.default_action` (tempfail) after
//!    `content_timeout`, with Postfix's warning; one that closes the
//!    connection: the default action again, and with `accept` the mail
//!    goes through without it.
//! 3. Twenty sessions at once, each waiting a second on the milter, end
//!    together: the conversations run side by side, and a hanging one
//!    blocks nobody else.
//! 4. rspamd: GTUBE refused with rspamd's reply; a clean message delivered
//!    with rspamd's headers (its queue id header is posthorn's, passed as
//!    the `i` macro); a spammy one gets the `add header` action's header.
//! 5. OpenDKIM in verify mode, its DNS the test's server: a message signed
//!    with posthorn's own `dkim keygen` key gets `dkim=pass`.
//! 6. `milter.non_smtpd_milters`: mail from `sendmail` is changed and
//!    refused by the milter at the pickup.

mod harness;

use std::fs;
use std::path::{Path, PathBuf};
use std::time::Instant;

use harness::*;

/// A hub on 127.0.0.1 delivering `example.org` to Maildirs under `dir`,
/// asking `milters`, with `lines` more.
fn hub(dir: &Path, milters: &[String], lines: &[&str]) -> Posthorn {
    let root = format!("{}/mail/{{domain}}/{{user}}", dir.display());
    let base = "role = \"hub\"\n\n[smtp]\nlisten = [\"127.0.0.1:0\"]\n\n[relay]\ntls = \"none\"\nconnect_timeout = \"5s\"\n\n[queue]\nretry_min = \"1s\"\nretry_max = \"2s\"\n";
    let servers: Vec<String> = milters.iter().map(|m| toml_str(m)).collect();
    let mut all = vec![
        "access.local_domains = [\"example.org\"]".to_string(),
        format!("deliver.maildir_root = {}", toml_str(&root)),
        format!("milter.servers = [{}]", servers.join(", ")),
    ];
    all.extend(lines.iter().map(|l| l.to_string()));
    let refs: Vec<&str> = all.iter().map(String::as_str).collect();
    Posthorn::start(&with_lines(base, &refs))
}

fn maildir(dir: &Path, user: &str) -> Vec<Vec<u8>> {
    let new = dir.join("mail").join("example.org").join(user).join("new");
    let mut files: Vec<PathBuf> = fs::read_dir(new).into_iter().flatten().flatten().map(|e| e.path()).collect();
    files.sort();
    files.iter().filter_map(|p| fs::read(p).ok()).collect()
}

fn wait_maildir(dir: &Path, user: &str, n: usize) -> Vec<Vec<u8>> {
    wait_until(secs(30), || maildir(dir, user).len() >= n);
    maildir(dir, user)
}

fn text(subject: &str, body: &str) -> Vec<u8> {
    message(&[("From", "sender@example.net"), ("To", "user@example.org"), ("Subject", subject)], body).into_bytes()
}

/// One session: EHLO, one transaction, QUIT; the reply to the final dot.
fn send(hub: &Posthorn, to: &[&str], message: &[u8]) -> Reply {
    let mut c = RawSmtp::connect(hub.smtp_addr()).unwrap();
    c.ehlo("client.example").unwrap();
    let reply = c.send("sender@example.net", to, message).unwrap();
    let _ = c.quit();
    reply
}

#[test]
fn scripted_milter_replies_changes_and_macros() {
    let dir = tempfile::tempdir().unwrap();
    let milter = Milter::start();
    let hub = hub(dir.path(), &[milter.spec()], &[]);

    // A reply code of the milter's own at RCPT, verbatim; the session goes on.
    let mut c = RawSmtp::connect(hub.smtp_addr()).unwrap();
    c.ehlo("client.example").unwrap();
    assert_eq!(c.cmd("MAIL FROM:<sender@example.net>").unwrap().code, 250);
    let refused = c.cmd("RCPT TO:<refuse@example.org>").unwrap();
    assert_eq!(refused.to_string(), "550 5.7.1 refuse: recipient refused by the test milter");
    assert_eq!(c.cmd("RCPT TO:<user@example.org>").unwrap().code, 250);
    assert_eq!(c.cmd("DATA").unwrap().code, 354);
    c.send_raw(&dot_stuff(&text("tempfail", "body\n"))).unwrap();
    c.send_raw(b".\r\n").unwrap();
    let tempfail = c.read().unwrap();
    assert_eq!(tempfail.to_string(), "451 4.7.1 tempfail: try again later (test milter)");
    // The next transaction: a plain SMFIR_REJECT.
    let reject = c.send("sender@example.net", &["user@example.org"], &text("reject", "body\n")).unwrap();
    assert_eq!(reject.to_string(), "550 5.7.1 Command rejected");
    // A transaction given up with RSET: the milter is told to forget it.
    assert_eq!(c.cmd("MAIL FROM:<sender@example.net>").unwrap().code, 250);
    assert_eq!(c.cmd("RCPT TO:<user@example.org>").unwrap().code, 250);
    assert_eq!(c.cmd("RSET").unwrap().code, 250);
    let _ = c.quit();
    assert!(wait_until(secs(5), || milter.record().lines().any(|l| l == "abort")), "{}", milter.record());
    assert!(hub.wait_for_log("milter-reject: RCPT from unknown[127.0.0.1]: 550 5.7.1 refuse", secs(10)));

    // Every change at the end of the message.
    let mut modify = text("modify", "original body\n");
    modify.splice(0..0, b"X-Drop: this goes\r\n".iter().copied());
    let reply = send(&hub, &["user@example.org", "removed@example.org"], &modify);
    assert_eq!(reply.code, 250, "{reply}");
    let got = wait_maildir(dir.path(), "added", 1);
    assert_eq!(got.len(), 1, "the added recipient got it; log:\n{}", hub.log());
    let m = &got[0];
    assert_eq!(header(m, "X-Milter").as_deref(), Some("added"));
    assert_eq!(header(m, "Subject").as_deref(), Some("modified by milter"));
    assert_eq!(header(m, "X-Drop"), None);
    assert_eq!(String::from_utf8_lossy(&body(m)).trim_end(), "replaced body");
    assert_eq!(header(m, "Return-Path").as_deref(), Some("<changed@example.net>"));
    let at = |name: &str| String::from_utf8_lossy(m).find(&format!("\n{name}:")).unwrap();
    assert!(at("X-First") < at("From"), "X-First inserted at the top of the original fields");
    assert_eq!(wait_maildir(dir.path(), "user", 1).len(), 1);
    assert!(maildir(dir.path(), "removed").is_empty(), "the removed recipient got nothing");

    // Quarantine: accepted, then on hold, shown held by postqueue -p.
    let reply = send(&hub, &["user@example.org"], &text("quarantine", "body\n"));
    assert_eq!(reply.code, 250, "{reply}");
    let id = reply.text.rsplit(' ').next().unwrap().to_string();
    assert!(hub.wait_for_log(&format!("{id}: hold: END-OF-MESSAGE"), secs(10)), "{}", hub.log());
    assert_eq!(hub.spool_files("hold").len(), 1);
    let listing = hub.command(&["postqueue", "-p"], b"");
    let listing = String::from_utf8_lossy(&listing.stdout);
    assert!(listing.contains(&format!("{id}!")), "{listing}");

    // Discard: a 250, and nothing queued or delivered.
    let reply = send(&hub, &["user@example.org"], &text("discard", "body\n"));
    assert_eq!(reply.code, 250, "{reply}");
    assert!(hub.wait_for_log("milter triggers DISCARD action", secs(10)));

    // The macros rspamd and OpenDKIM read.
    let record = milter.record();
    for wanted in ["macros C ", "{client_addr}=127.0.0.1", "{daemon_name}=posthorn", "j=", "{if_addr}=127.0.0.1"] {
        assert!(record.contains(wanted), "no {wanted:?} in:\n{record}");
    }
    assert!(record.lines().any(|l| l.starts_with("macros M ") && l.contains("{mail_addr}=sender@example.net")));
    assert!(record.lines().any(|l| l.starts_with("macros R ") && l.contains("{rcpt_addr}=user@example.org")));
    assert!(record.lines().any(|l| l.starts_with("macros E ") && l.contains(&format!("i={id}"))), "{record}");
    assert!(record.contains("header Subject: quarantine"), "{record}");
}

#[test]
fn a_milter_that_hangs_or_dies_gets_the_default_action() {
    let dir = tempfile::tempdir().unwrap();
    let milter = Milter::start();
    let lines = ["milter.command_timeout = \"3s\"", "milter.content_timeout = \"3s\""];
    let tempfail = hub(dir.path(), &[milter.spec()], &lines);

    let start = Instant::now();
    let reply = send(&tempfail, &["user@example.org"], &text("hang", "body\n"));
    let waited = start.elapsed();
    assert_eq!(reply.to_string(), "451 4.7.1 Service unavailable - try again later");
    assert!(waited >= secs(3) && waited < secs(20), "{waited:?}");
    let warning = format!("warning: milter {}: timeout", milter.spec());
    assert!(tempfail.wait_for_log(&warning, secs(5)), "{}", tempfail.log());

    // Dying at RCPT: the recipient gets the default action.
    let mut c = RawSmtp::connect(tempfail.smtp_addr()).unwrap();
    c.ehlo("client.example").unwrap();
    assert_eq!(c.cmd("MAIL FROM:<sender@example.net>").unwrap().code, 250);
    let died = c.cmd("RCPT TO:<die@example.org>").unwrap();
    assert_eq!(died.to_string(), "451 4.7.1 Service unavailable - try again later");
    let _ = c.quit();
    let warning = format!("warning: milter {}: connection closed by the milter", milter.spec());
    assert!(tempfail.wait_for_log(&warning, secs(5)), "{}", tempfail.log());

    // With `accept` the mail goes through without the milter.
    let dir2 = tempfile::tempdir().unwrap();
    let accept = hub(dir2.path(), &[milter.spec()], &["milter.default_action = \"accept\""]);
    let reply = send(&accept, &["die@example.org"], &text("after the milter died", "body\n"));
    assert_eq!(reply.code, 250, "{reply}");
    assert_eq!(wait_maildir(dir2.path(), "die", 1).len(), 1);

    // A milter that is not there at all.
    let dir3 = tempfile::tempdir().unwrap();
    let nobody = format!("inet:{}", free_addr());
    let down = hub(dir3.path(), std::slice::from_ref(&nobody), &["milter.default_action = \"reject\""]);
    let mut c = RawSmtp::connect(down.smtp_addr()).unwrap();
    let refused = c.cmd("EHLO client.example").unwrap();
    assert_eq!(refused.to_string(), "550 5.7.1 Command rejected");
    assert!(down.wait_for_log(&format!("warning: milter {nobody}: connect:"), secs(5)), "{}", down.log());
}

#[test]
fn twenty_sessions_talk_to_their_milters_at_once() {
    let dir = tempfile::tempdir().unwrap();
    let milter = Milter::start();
    let hub = hub(dir.path(), &[milter.spec()], &["milter.content_timeout = \"30s\"", "smtp.max_connections = 50"]);
    // One session hangs on its milter for the whole test.
    let addr = hub.smtp_addr();
    let hanging = std::thread::spawn(move || {
        let mut c = RawSmtp::connect(addr).unwrap();
        c.ehlo("hang.example").unwrap();
        c.send("sender@example.net", &["user@example.org"], &text("hang", "body\n")).map(|r| r.code)
    });
    std::thread::sleep(secs(1));
    let start = Instant::now();
    let sessions: Vec<_> = (0..20)
        .map(|n| {
            std::thread::spawn(move || {
                let mut c = RawSmtp::connect(addr).unwrap();
                c.ehlo("client.example").unwrap();
                let reply = c.send("sender@example.net", &["user@example.org"], &text("slow", &format!("n {n}\n")));
                reply.map(|r| r.code).unwrap_or(0)
            })
        })
        .collect();
    let codes: Vec<u16> = sessions.into_iter().map(|s| s.join().unwrap()).collect();
    let took = start.elapsed();
    assert_eq!(codes, vec![250; 20]);
    // Each waited a second on its milter; one after another would be 20 s.
    assert!(took < secs(10), "20 sessions of 1 s each took {took:?}");
    assert_eq!(wait_maildir(dir.path(), "user", 20).len(), 20);
    drop(milter);
    let _ = hanging.join();
}

#[test]
fn rspamd_as_a_milter() {
    assert!(have("rspamd"), "rspamd is not installed (.ci/run installs it)");
    let dir = tempfile::tempdir().unwrap();
    let rspamd = Rspamd::start();
    let hub = hub(dir.path(), &[rspamd.spec()], &["milter.content_timeout = \"60s\""]);

    let gtube = "XJS*C4JDBQADN1.NSBN3*2IDNEN*GTUBE-STANDARD-ANTI-UBE-TEST-EMAIL*C.34X\n";
    let reply = send(&hub, &["user@example.org"], &text("gtube", gtube));
    // rspamd's own reply (its SMFIR_REPLYCODE), as the client gets it.
    assert_eq!(reply.to_string(), "554 5.7.1 Gtube pattern", "rspamd log:\n{}", rspamd.log());
    assert!(hub.wait_for_log("reject: END-OF-MESSAGE", secs(5)));

    let reply = send(&hub, &["user@example.org"], &text("a clean message", "Hello, this is a clean message.\n"));
    assert_eq!(reply.code, 250, "{reply}\nrspamd log:\n{}", rspamd.log());
    let id = reply.text.rsplit(' ').next().unwrap().to_string();
    let got = wait_maildir(dir.path(), "user", 1);
    assert_eq!(got.len(), 1, "{}", hub.log());
    let m = &got[0];
    assert!(header(m, "X-Spamd-Result").is_some(), "{}", String::from_utf8_lossy(m));
    assert_eq!(header(m, "X-Rspamd-Queue-Id").as_deref(), Some(id.as_str()), "{}", String::from_utf8_lossy(m));

    let reply = send(&hub, &["user@example.org"], &text("spammy offer", "Buy now.\n"));
    assert_eq!(reply.code, 250, "{reply}");
    let got = wait_maildir(dir.path(), "user", 2);
    let m = got.iter().find(|m| header(m, "Subject").as_deref() == Some("spammy offer")).expect("delivered");
    assert_eq!(header(m, "X-Spam").as_deref(), Some("Yes"), "{}", String::from_utf8_lossy(m));
}

#[test]
fn non_smtpd_milters_see_mail_from_sendmail() {
    let dir = tempfile::tempdir().unwrap();
    let milter = Milter::start();
    let spec = toml_str(&milter.spec());
    let hub = hub(dir.path(), &[], &[&format!("milter.non_smtpd_milters = [{spec}]")]);

    // Changed at the pickup: the added recipient gets the changed message.
    let out = hub.sendmail(&["-f", "sender@example.net", "user@example.org"], &text("modify", "original\n"));
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let got = wait_maildir(dir.path(), "added", 1);
    assert_eq!(got.len(), 1, "{}", hub.log());
    assert_eq!(header(&got[0], "Subject").as_deref(), Some("modified by milter"));
    assert_eq!(header(&got[0], "X-Milter").as_deref(), Some("added"));
    let record = milter.record();
    assert!(record.lines().any(|l| l.starts_with("rcpt <user@example.org>")), "{record}");

    // Refused at the pickup: nothing delivered, the refusal logged.
    let out = hub.sendmail(&["-f", "sender@example.net", "user@example.org"], &text("reject", "body\n"));
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let line = "milter-reject: local submission from root: 550 5.7.1 Command rejected; from=<sender@example.net>";
    assert!(hub.wait_for_log(line, secs(20)), "{}", hub.log());

    // SMTP sessions are not asked: only `servers` are.
    let reply = send(&hub, &["user@example.org"], &text("reject", "body\n"));
    assert_eq!(reply.code, 250, "{reply}");
}

/// `posthorn dkim keygen`: the key file and the TXT record's value.
fn keygen(dir: &Path, selector: &str) -> (PathBuf, String) {
    let key = dir.join(format!("{selector}.pem"));
    let mut cmd = std::process::Command::new(BIN);
    cmd.args(["dkim", "keygen", "example.org", selector, "--algorithm", "rsa", "--out"]).arg(&key);
    let out = run_with_timeout(cmd, b"", secs(60));
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(out.status.success(), "keygen: {stdout} {}", String::from_utf8_lossy(&out.stderr));
    let value: String = stdout.split('"').skip(1).step_by(2).collect();
    assert!(value.starts_with("v=DKIM1; k=rsa"), "{value}");
    (key, value)
}

#[test]
fn opendkim_verifies_posthorns_own_signature() {
    assert!(have("opendkim"), "opendkim is not installed (.ci/run installs it)");
    let keys = tempfile::tempdir().unwrap();
    let (key, record) = keygen(keys.path(), "s1");
    let dns = DnsServer::start(vec![DnsRecord::txt("s1._domainkey.example.org", &record)]);
    let opendkim = OpenDkim::start(dns.addr(), "mx.test");
    let dir = tempfile::tempdir().unwrap();
    let hub = hub(dir.path(), &[opendkim.spec()], &[]);
    // A satellite signs with the key and relays to the hub.
    let satellite = Posthorn::start(&format!(
        "{}\n[[dkim.keys]]\ndomain = \"example.org\"\nselector = \"s1\"\nkey = {}\n",
        satellite_config(&[hub.smtp_addr()]),
        toml_str(&key.display().to_string()),
    ));
    let body = "From: Root <root@example.org>\nTo: user@example.org\nSubject: signed\n\
        Date: Wed, 25 Nov 2026 10:00:00 +0000\nMessage-ID: <milter-dkim@example.org>\n\nSigned by posthorn.\n";
    smtplib_send(satellite.smtp_addr(), "root@example.org", &["user@example.org"], body).unwrap();
    let got = wait_maildir(dir.path(), "user", 1);
    assert_eq!(got.len(), 1, "{}", hub.log());
    let m = &got[0];
    assert!(header(m, "DKIM-Signature").is_some(), "{}", String::from_utf8_lossy(m));
    let results = headers(m, "Authentication-Results");
    assert!(
        results
            .iter()
            .any(|r| r.starts_with("mx.test;") && r.contains("dkim=pass") && r.contains("header.d=example.org")),
        "{}",
        String::from_utf8_lossy(m)
    );
}
