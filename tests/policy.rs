//! End-to-end: policy delegation (`[policy]`, Postfix's SMTPD_POLICY_README
//! protocol) with the real services admins attach: postgrey and
//! policyd-spf, each started here on its own loopback port with private
//! state. The hub delivers to Maildirs, read back to see the headers the
//! services asked for.
//!
//! Scenarios:
//! 1. postgrey: the first attempt gets 450 "Greylisted" at RCPT and nothing
//!    is queued; the same triplet after the delay is accepted and arrives
//!    with postgrey's `X-Greylist:` header (PREPEND). A client in
//!    `access.trusted_networks` is never asked about.
//! 2. policyd-spf against SPF records served by the test DNS server: a
//!    sender whose domain publishes `-all` is refused with policyd-spf's
//!    own 550 5.7.23; one whose record lists the client is accepted and
//!    arrives with `Received-SPF: Pass`.
//! 3. A service that is down: `policy.default_action` applies (451 4.3.5
//!    by default; DUNNO lets mail through).

mod harness;

use harness::policy::{PolicydSpf, Postgrey, have};
use harness::*;
use std::fs;
use std::path::{Path, PathBuf};

/// A hub on 127.0.0.1 that trusts only 10.99/16 (so the tests' loopback
/// clients are strangers), delivering example.org to Maildirs under `mail`.
fn hub(mail: &Path, lines: &[&str]) -> Posthorn {
    let base = format!(
        "role = \"hub\"\n\n[smtp]\nlisten = [\"127.0.0.1:0\"]\n\n[access]\ntrusted_networks = [\"10.99.0.0/16\"]\nlocal_domains = [\"example.org\"]\n\n[deliver]\nmaildir_root = {}\n",
        toml_str(&format!("{}/{{domain}}/{{user}}", mail.display()))
    );
    Posthorn::start(&with_lines(&base, lines))
}

fn maildir(mail: &Path, user: &str, n: usize) -> Vec<String> {
    let new: PathBuf = mail.join("example.org").join(user).join("new");
    let read = || -> Vec<String> {
        let mut names: Vec<PathBuf> =
            fs::read_dir(&new).map(|d| d.flatten().map(|e| e.path()).collect()).unwrap_or_default();
        names.sort();
        names.iter().map(|p| String::from_utf8_lossy(&fs::read(p).unwrap()).into_owned()).collect()
    };
    wait_until(secs(15), || read().len() >= n);
    read()
}

const MESSAGE: &[u8] = b"From: a@sender.test\r\nTo: u@example.org\r\nSubject: policy\r\n\r\nhello\r\n";

#[test]
fn postgrey_greylists_then_accepts() {
    if !have("postgrey", "postgrey_greylists_then_accepts") {
        return;
    }
    let grey = Postgrey::start(2);
    let mail = tempfile::tempdir().unwrap();
    let line = format!("policy.services = [\"inet:{}\"]", grey.addr());
    let ph = hub(mail.path(), &[&line]);

    let mut c = RawSmtp::connect(ph.smtp_addr()).unwrap();
    c.ehlo("client.sender.test").unwrap();
    assert_eq!(c.cmd("MAIL FROM:<a@sender.test>").unwrap().code, 250);
    let first = c.cmd("RCPT TO:<u@example.org>").unwrap();
    assert_eq!(first.code, 450, "{first}");
    // postgrey's text carries its own enhanced code (4.2.0), kept as sent.
    assert!(first.to_string().contains("4.2.0 <u@example.org>: Recipient address rejected: Greylisted"), "{first}");
    assert_eq!(c.cmd("DATA").unwrap().code, 554, "no recipient, no message");
    c.quit().unwrap();
    assert!(ph.wait_for_log("NOQUEUE: reject: RCPT from unknown[127.0.0.1]: 450 4.2.0", secs(5)), "{}", ph.log());
    assert_eq!(ph.queued_count(), 0);

    // After the delay the same triplet passes, and postgrey's header
    // comes with the message.
    std::thread::sleep(secs(3));
    let mut c = RawSmtp::connect(ph.smtp_addr()).unwrap();
    c.ehlo("client.sender.test").unwrap();
    let reply = c.send("a@sender.test", &["u@example.org"], MESSAGE).unwrap();
    assert_eq!(reply.code, 250, "{reply}");
    c.quit().unwrap();
    let got = maildir(mail.path(), "u", 1);
    assert_eq!(got.len(), 1);
    let greylist = header(got[0].as_bytes(), "X-Greylist").unwrap_or_else(|| panic!("no X-Greylist in\n{}", got[0]));
    assert!(greylist.starts_with("delayed "), "{greylist}");
    assert!(greylist.contains("by postgrey"), "{greylist}");
}

#[test]
fn trusted_clients_are_not_asked() {
    if !have("postgrey", "trusted_clients_are_not_asked") {
        return;
    }
    let grey = Postgrey::start(300);
    let mail = tempfile::tempdir().unwrap();
    let line = format!("policy.services = [\"inet:{}\"]", grey.addr());
    let ph = hub(mail.path(), &[&line, "access.trusted_networks = [\"127.0.0.0/8\"]"]);
    let mut c = RawSmtp::connect(ph.smtp_addr()).unwrap();
    c.ehlo("client.sender.test").unwrap();
    assert_eq!(c.send("a@sender.test", &["u@example.org"], MESSAGE).unwrap().code, 250);
    c.quit().unwrap();
    let got = maildir(mail.path(), "u", 1);
    assert!(header(got[0].as_bytes(), "X-Greylist").is_none(), "{}", got[0]);
}

#[test]
fn policyd_spf_refuses_fail_and_stamps_pass() {
    if !have("policyd-spf", "policyd_spf_refuses_fail_and_stamps_pass") {
        return;
    }
    let dns = DnsServer::start(vec![
        DnsRecord::txt("fail.spf.test", "v=spf1 ip4:192.0.2.1 -all"),
        DnsRecord::txt("pass.spf.test", "v=spf1 ip4:127.0.0.1 -all"),
        DnsRecord::a("client.spf.test", "127.0.0.1".parse().unwrap()),
    ]);
    let spf = PolicydSpf::start(dns.addr());
    let mail = tempfile::tempdir().unwrap();
    let line = format!("policy.services = [\"inet:{}\"]", spf.addr());
    let ph = hub(mail.path(), &[&line, "policy.timeout = \"20s\""]);

    let mut c = RawSmtp::connect(ph.smtp_addr()).unwrap();
    c.ehlo("client.spf.test").unwrap();
    assert_eq!(c.cmd("MAIL FROM:<a@fail.spf.test>").unwrap().code, 250);
    let refused = c.cmd("RCPT TO:<u@example.org>").unwrap();
    assert_eq!(refused.code, 550, "{refused}");
    let text = refused.to_string();
    assert!(text.contains("5.7.23") && text.contains("SPF"), "{text}");
    assert!(text.contains("fail.spf.test"), "{text}");
    assert_eq!(c.cmd("RSET").unwrap().code, 250);
    // The same connection to the service answers the next transaction.
    let reply = c.send("a@pass.spf.test", &["u@example.org"], MESSAGE).unwrap();
    assert_eq!(reply.code, 250, "{reply}");
    c.quit().unwrap();
    let got = maildir(mail.path(), "u", 1);
    let received_spf =
        header(got[0].as_bytes(), "Received-SPF").unwrap_or_else(|| panic!("no Received-SPF in\n{}", got[0]));
    assert!(received_spf.starts_with("Pass"), "{received_spf}");
    assert!(received_spf.contains("pass.spf.test"), "{received_spf}");
}

#[test]
fn unreachable_service_gets_the_default_action() {
    let dead = free_addr();
    let mail = tempfile::tempdir().unwrap();
    let line = format!("policy.services = [\"inet:{dead}\"]");
    let ph = hub(mail.path(), &[&line]);
    let mut c = RawSmtp::connect(ph.smtp_addr()).unwrap();
    c.ehlo("client.sender.test").unwrap();
    assert_eq!(c.cmd("MAIL FROM:<a@sender.test>").unwrap().code, 250);
    let reply = c.cmd("RCPT TO:<u@example.org>").unwrap();
    assert_eq!(reply.code, 451, "{reply}");
    assert!(reply.to_string().contains("4.3.5"), "{reply}");
    c.quit().unwrap();
    assert!(ph.wait_for_log(&format!("policy service inet:{dead}: cannot connect"), secs(5)), "{}", ph.log());

    let line = format!("policy.services = [\"inet:{dead}\"]");
    let ph = hub(
        mail.path(),
        &[&line, "policy.default_action = \"DUNNO\"", "policy.stages = [\"mail\", \"rcpt\", \"data\"]"],
    );
    let mut c = RawSmtp::connect(ph.smtp_addr()).unwrap();
    c.ehlo("client.sender.test").unwrap();
    assert_eq!(c.send("a@sender.test", &["u@example.org"], MESSAGE).unwrap().code, 250);
    c.quit().unwrap();
}

#[test]
fn bad_policy_settings_are_refused() {
    for (line, expected) in [
        ("policy.services = [\"tcp:1.2.3.4\"]", "policy.services: `tcp:1.2.3.4` is not inet:host:port or unix:/path"),
        ("policy.stages = [\"helo\"]", "policy.stages: `helo` is not a stage"),
        ("policy.default_action = \"MAYBE\"", "policy.default_action: `MAYBE` is not an action"),
    ] {
        let err =
            match Posthorn::try_start(&with_lines("role = \"hub\"\n[smtp]\nlisten = [\"127.0.0.1:0\"]\n", &[line])) {
                Ok(_) => panic!("{line} accepted"),
                Err(e) => e,
            };
        assert!(err.contains(expected), "{line}: {err}");
        assert!(err.contains("posthorn.toml:"), "names the file: {err}");
    }
}
