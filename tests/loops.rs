//! End-to-end: mail loops are stopped, never run on (issue 12, item 3).
//!
//! Scenarios:
//! 1. A message that already carries 51 `Received:` fields is refused at
//!    the end of DATA with 554 5.4.6; one with 50 is accepted.
//! 2. A hub whose smarthost is its own listening address: the message is
//!    never sent to itself ("loops back to myself", logged), and its sender
//!    gets a 5.4.6 bounce in her Maildir.
//! 3. The case from issue 12: `MAIL FROM:<x@[127.0.0.1]>` with a local
//!    recipient and `NOTIFY=SUCCESS`. From an untrusted client it is
//!    refused at MAIL (553 5.1.7); from a trusted one, the success notice
//!    to the hub's own address is not sent to itself.
//! 4. A domain whose MX (the harness's DNS server) resolves to the hub's
//!    own listening address: bounced with 5.4.6, never sent.

mod harness;

use std::fs;
use std::path::{Path, PathBuf};

use harness::*;

/// A message with `hops` `Received:` fields on top.
fn with_received(hops: usize) -> String {
    let trace = "Received: from a.test by b.test; Fri, 4 Dec 2026 17:00:00 +0000\r\n".repeat(hops);
    format!("{trace}{}", message(&[("Subject", "hops")], "loop?\r\n"))
}

/// The messages in the Maildir `root/domain/user/new`.
fn maildir(root: &Path, domain: &str, user: &str) -> Vec<Vec<u8>> {
    let new = root.join(domain).join(user).join("new");
    let names: Vec<PathBuf> = fs::read_dir(&new).map(|d| d.flatten().map(|e| e.path()).collect()).unwrap_or_default();
    names.iter().map(|p| fs::read(p).unwrap()).collect()
}

fn hub_lines(listen: &str, root: &Path) -> Vec<String> {
    vec![
        "role = \"hub\"".into(),
        format!("smtp.listen = [{}]", toml_str(listen)),
        "access.local_domains = [\"hub.test\"]".into(),
        format!("deliver.maildir_root = {}", toml_str(&format!("{}/{{domain}}/{{user}}", root.display()))),
        "queue.retry_min = \"1s\"".into(),
        "queue.retry_max = \"2s\"".into(),
        "relay.tls = \"none\"".into(),
        "relay.connect_timeout = \"5s\"".into(),
    ]
}

fn config(lines: &[String]) -> String {
    let lines: Vec<&str> = lines.iter().map(String::as_str).collect();
    with_lines("", &lines)
}

/// Sends a message from alice@hub.test to `to` and returns the bounce
/// alice gets (the first message in her Maildir).
fn bounce_to_alice(hub: &Posthorn, mail: &Path, to: &str) -> String {
    let mut c = RawSmtp::connect(hub.smtp_addr()).expect("connect");
    c.ehlo("client.test").unwrap();
    let reply = c.send("alice@hub.test", &[to], message(&[("Subject", "x")], "x\r\n").as_bytes());
    assert_eq!(reply.unwrap().code, 250);
    c.quit().unwrap();
    assert!(
        wait_until(secs(60), || !maildir(mail, "hub.test", "alice").is_empty()),
        "no bounce for alice; log:\n{}",
        hub.log()
    );
    String::from_utf8_lossy(&maildir(mail, "hub.test", "alice")[0]).into_owned()
}

#[test]
fn more_than_fifty_received_fields_is_refused_with_5_4_6() {
    let mail = tempfile::tempdir().unwrap();
    let hub = Posthorn::start(&config(&hub_lines("127.0.0.1:0", mail.path())));
    let mut c = RawSmtp::connect(hub.smtp_addr()).expect("connect");
    c.ehlo("client.test").unwrap();
    let refused = c.send("alice@client.test", &["bob@hub.test"], with_received(51).as_bytes()).unwrap();
    assert_eq!((refused.code, refused.text.starts_with("5.4.6")), (554, true), "51 hops: {refused}");
    let accepted = c.send("alice@client.test", &["bob@hub.test"], with_received(50).as_bytes()).unwrap();
    assert_eq!(accepted.code, 250, "50 hops: {accepted}");
    c.quit().unwrap();
    assert!(hub.wait_for_log("more than smtp.hopcount_limit 50: mail loop", secs(5)), "{}", hub.log());
    assert!(wait_until(secs(15), || !maildir(mail.path(), "hub.test", "bob").is_empty()), "{}", hub.log());
    assert_eq!(maildir(mail.path(), "hub.test", "bob").len(), 1);
}

#[test]
fn a_hub_that_is_its_own_smarthost_stops_the_loop_and_bounces() {
    let mail = tempfile::tempdir().unwrap();
    let me = free_addr();
    let mut lines = hub_lines(&me.to_string(), mail.path());
    lines.push(format!("relay.smarthosts = [{}]", toml_str(&format!("[{}]:{}", me.ip(), me.port()))));
    lines.push("smtp.hopcount_limit = 10".into());
    let hub = Posthorn::start(&config(&lines));
    let bounce = bounce_to_alice(&hub, mail.path(), "bob@elsewhere.test");
    assert!(bounce.contains("5.4.6"), "{bounce}");
    assert!(wait_until(secs(30), || hub.queued_count() == 0), "the queue never emptied; log:\n{}", hub.log());
    assert!(hub.log().contains("is this host's own SMTP listener: mail loop"), "{}", hub.log());
    // The message and its bounce, neither sent round.
    let accepted = count_lines(&hub.log(), &["(queue active)"]);
    assert_eq!(accepted, 2, "log:\n{}", hub.log());
}

/// MAIL FROM `sender`, RCPT TO `rcpt` with `NOTIFY=SUCCESS`, then DATA: the
/// replies to MAIL and to the end of DATA (none when MAIL is refused).
fn notify_success(hub: &Posthorn, sender: &str, rcpt: &str) -> (Reply, Option<Reply>) {
    let mut c = RawSmtp::connect(hub.smtp_addr()).expect("connect");
    c.ehlo("client.test").unwrap();
    let mail = c.cmd(&format!("MAIL FROM:<{sender}>")).unwrap();
    if mail.code != 250 {
        return (mail, None);
    }
    assert_eq!(c.cmd(&format!("RCPT TO:<{rcpt}> NOTIFY=SUCCESS")).unwrap().code, 250);
    assert_eq!(c.cmd("DATA").unwrap().code, 354);
    c.send_raw(&dot_stuff(message(&[("Subject", "notify me")], "x\r\n").as_bytes())).unwrap();
    c.send_raw(b".\r\n").unwrap();
    let end = c.read().unwrap();
    c.quit().unwrap();
    (mail, Some(end))
}

#[test]
fn an_untrusted_client_may_not_use_a_loopback_literal_return_path() {
    let mail = tempfile::tempdir().unwrap();
    let mut lines = hub_lines("127.0.0.1:0", mail.path());
    lines.push("access.trusted_networks = []".into());
    let hub = Posthorn::start(&config(&lines));
    for sender in ["x@[127.0.0.1]", "x@[IPv6:::1]", "x@[10.1.2.3]"] {
        let (reply, _) = notify_success(&hub, sender, "bob@hub.test");
        assert_eq!((reply.code, reply.text.starts_with("5.1.7")), (553, true), "{sender}: {reply}");
    }
    let (reply, end) = notify_success(&hub, "x@[192.0.2.1]", "bob@hub.test");
    assert_eq!((reply.code, end.map(|r| r.code)), (250, Some(250)), "a public literal");
}

#[test]
fn a_success_notice_to_the_hub_itself_is_not_sent_round() {
    let mail = tempfile::tempdir().unwrap();
    let me = free_addr();
    let mut lines = hub_lines(&me.to_string(), mail.path());
    lines.push(format!("deliver.mx_port = {}", me.port()));
    lines.push("smtp.hopcount_limit = 10".into());
    let hub = Posthorn::start(&config(&lines));
    let (reply, end) = notify_success(&hub, &format!("x@[{}]", me.ip()), "bob@hub.test");
    assert_eq!((reply.code, end.map(|r| r.code)), (250, Some(250)));
    assert!(wait_until(secs(15), || !maildir(mail.path(), "hub.test", "bob").is_empty()), "{}", hub.log());
    thread_sleep_then_settle(&hub);
    assert_eq!(maildir(mail.path(), "hub.test", "bob").len(), 1);
    // The message and its success notice; the notice is not sent round.
    let accepted = count_lines(&hub.log(), &["(queue active)"]);
    assert_eq!(accepted, 2, "log:\n{}", hub.log());
}

/// Gives a loop time to show itself, then waits for an empty queue.
fn thread_sleep_then_settle(hub: &Posthorn) {
    std::thread::sleep(secs(2));
    assert!(wait_until(secs(30), || hub.queued_count() == 0), "the queue never emptied; log:\n{}", hub.log());
}

#[test]
fn an_mx_that_resolves_to_the_hub_itself_bounces_with_5_4_6() {
    let mail = tempfile::tempdir().unwrap();
    let me = free_addr();
    let std::net::IpAddr::V4(ip) = me.ip() else { unreachable!("free_addr is IPv4") };
    let dns = DnsServer::start(vec![DnsRecord::mx("loop.test", 10, "mx.loop.test"), DnsRecord::a("mx.loop.test", ip)]);
    let mut lines = hub_lines(&me.to_string(), mail.path());
    lines.push(dns.config_line());
    lines.push(format!("deliver.mx_port = {}", me.port()));
    let hub = Posthorn::start(&config(&lines));
    let bounce = bounce_to_alice(&hub, mail.path(), "bob@loop.test");
    assert!(bounce.contains("5.4.6") && bounce.contains("loops back to myself"), "{bounce}");
    let log = hub.log();
    assert!(log.contains("to=<bob@loop.test>") && log.contains("status=bounced"), "{log}");
    assert_eq!(count_lines(&log, &["(queue active)"]), 2, "{log}");
}

#[test]
fn a_domain_whose_best_mx_is_this_host_by_name_bounces_with_5_4_6() {
    let mail = tempfile::tempdir().unwrap();
    let mut hub = Posthorn::start(&config(&hub_lines("127.0.0.1:0", mail.path())));
    // Only now is the hub's name known: the zone names it the best MX of
    // other.test, and the hub starts again with that DNS server.
    let dns = DnsServer::start(vec![
        DnsRecord::mx("other.test", 10, hub.hostname()),
        DnsRecord::mx("other.test", 20, "backup.other.test"),
        DnsRecord::a("backup.other.test", std::net::Ipv4Addr::new(127, 0, 0, 1)),
    ]);
    let text = std::fs::read_to_string(hub.config_path()).unwrap();
    std::fs::write(hub.config_path(), with_lines(&text, &[&dns.config_line()])).unwrap();
    hub.restart();
    let bounce = bounce_to_alice(&hub, mail.path(), "bob@other.test");
    assert!(bounce.contains("5.4.6") && bounce.contains("is its best MX host"), "{bounce}");
    assert!(hub.log().contains("status=bounced"), "{}", hub.log());
}
