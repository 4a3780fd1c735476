//! End-to-end: per-destination traffic shaping (`[[deliver.shaping]]`).
//! A hub on 127.0.0.3 delivers by MX (the harness's DNS server) to one
//! `smtp-sink`.
//!
//! Scenario: with `max_messages_per_minute = 3` in a 4 s window, eight
//! messages for rate.example reach the sink at most three per window;
//! the rest are deferred with "delivery temporarily suspended: rate limit
//! ...", never bounced, and the destination is never marked down. Another
//! domain on the same sink is not held back.
//!
//! Scenario: with `max_messages_per_connection = 2`, five messages for one
//! domain take three sessions at the receiver (2 + 2 + 1); a domain shaped
//! without it carries its five over one reused session.

mod harness;

use std::net::IpAddr;
use std::time::Instant;

use harness::*;

#[test]
fn a_message_rate_limit_holds_mail_back_without_failing_it() {
    let sink = Sink::start();
    let IpAddr::V4(ip) = sink.addr().ip() else { unreachable!() };
    let dns = DnsServer::start(vec![
        DnsRecord::mx("rate.example", 10, "mx.sink.example"),
        DnsRecord::mx("free.example", 10, "mx.sink.example"),
        DnsRecord::a("mx.sink.example", ip),
    ]);
    let base = "role = \"hub\"\n\n[smtp]\nlisten = [\"127.0.0.3:0\"]\n\n[relay]\ntls = \"none\"\n\n[queue]\nretry_min = \"1s\"\nretry_max = \"2s\"\n";
    let hub = Posthorn::start(&with_lines(
        base,
        &[
            &dns.config_line(),
            &format!("deliver.mx_port = {}", sink.addr().port()),
            "[[deliver.shaping]]\ndestination = \"rate.example\"\nmax_messages_per_minute = 3\nper = \"4s\"\nmax_connections = 2",
        ],
    ));
    let mut c = RawSmtp::connect(hub.smtp_addr()).unwrap();
    c.ehlo("client.test").unwrap();
    for n in 0..8 {
        let msg = message(&[("From", "ops@hub.example"), ("Subject", &format!("rated {n}"))], "x\n");
        assert_eq!(c.send("ops@hub.example", &["user@rate.example"], msg.as_bytes()).unwrap().code, 250);
    }
    let msg = message(&[("From", "ops@hub.example"), ("Subject", "free")], "x\n");
    assert_eq!(c.send("ops@hub.example", &["user@free.example"], msg.as_bytes()).unwrap().code, 250);

    // The first window: from the first delivery, 3.5 s of watching.
    assert!(wait_until(secs(20), || !sink.parsed().is_empty()), "{}", hub.log());
    let start = Instant::now();
    let mut most = 0;
    while start.elapsed() < std::time::Duration::from_millis(3500) {
        let rated = sink.parsed().iter().filter(|d| d.rcpt_to == ["user@rate.example"]).count();
        most = most.max(rated);
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    assert!(most <= 3, "{most} messages in the first 4 s window; log:\n{}", hub.log());
    assert!(sink.parsed().iter().any(|d| d.rcpt_to == ["user@free.example"]), "another domain is not held back");

    // All arrive in the end, in later windows.
    let all = sink.wait_for_parsed(9, secs(40));
    assert_eq!(all.len(), 9, "log:\n{}", hub.log());
    let log = hub.log();
    assert!(
        log.contains("status=deferred (delivery temporarily suspended: rate limit of 3 messages per 4s reached)"),
        "{log}"
    );
    assert!(!log.contains("status=bounced"), "{log}");
    assert!(!log.contains("destination mx:rate.example: down"), "throttling is not an outage: {log}");
}

#[test]
fn sessions_are_closed_after_max_messages_per_connection() {
    let server = Scripted::start(Script::new());
    let IpAddr::V4(ip) = server.addr().ip() else { unreachable!() };
    let dns = DnsServer::start(vec![
        DnsRecord::mx("capped.example", 10, "mx.server.example"),
        DnsRecord::mx("reused.example", 10, "mx.server.example"),
        DnsRecord::a("mx.server.example", ip),
    ]);
    let base = "role = \"hub\"\n\n[smtp]\nlisten = [\"127.0.0.3:0\"]\n\n[relay]\ntls = \"none\"\n";
    let hub = Posthorn::start(&with_lines(
        base,
        &[
            &dns.config_line(),
            &format!("deliver.mx_port = {}", server.addr().port()),
            // One session at a time, so every message could reuse it.
            "[[deliver.shaping]]\ndestination = \"capped.example\"\nmax_connections = 1\nmax_messages_per_connection = 2",
            "[[deliver.shaping]]\ndestination = \"reused.example\"\nmax_connections = 1",
        ],
    ));
    let send_five = |domain: &str| {
        let mut c = RawSmtp::connect(hub.smtp_addr()).unwrap();
        c.ehlo("client.test").unwrap();
        for n in 0..5 {
            let msg = message(&[("From", "ops@hub.example"), ("Subject", &format!("{domain} {n}"))], "x\n");
            let rcpt = format!("user@{domain}");
            assert_eq!(c.send("ops@hub.example", &[rcpt.as_str()], msg.as_bytes()).unwrap().code, 250);
        }
    };

    send_five("reused.example");
    assert_eq!(server.wait_for_accepted(5, secs(20)).len(), 5, "{}", hub.log());
    assert_eq!(server.connections(), 1, "one session carried all five: {}", hub.log());

    send_five("capped.example");
    assert_eq!(server.wait_for_accepted(10, secs(20)).len(), 10, "{}", hub.log());
    // 2 + 2 + 1 messages, each group on a new session (the reused.example
    // session stays idle on its own).
    assert_eq!(server.connections() - 1, 3, "{}", hub.log());
    let quits = server.commands().iter().filter(|c| c.eq_ignore_ascii_case("QUIT")).count();
    assert!(quits >= 2, "full sessions are closed with QUIT: {:?}", server.commands());
    assert!(!hub.log().contains("status=deferred"), "{}", hub.log());
}

/// A reload (SIGHUP) that lifts a destination's rate limit applies to the
/// next attempts: mail held back by the old window goes at a flush (under
/// the old limit it would be held back again), not an hour later.
#[test]
fn a_reload_applies_new_limits_to_mail_already_held_back() {
    let sink = Sink::start();
    let IpAddr::V4(ip) = sink.addr().ip() else { unreachable!() };
    let dns = DnsServer::start(vec![
        DnsRecord::mx("rate.example", 10, "mx.sink.example"),
        DnsRecord::a("mx.sink.example", ip),
    ]);
    let base = "role = \"hub\"\n\n[smtp]\nlisten = [\"127.0.0.3:0\"]\n\n[relay]\ntls = \"none\"\n\n[queue]\nretry_min = \"1s\"\nretry_max = \"2s\"\n";
    let lines = [dns.config_line(), format!("deliver.mx_port = {}", sink.addr().port())];
    let shaping = |max: u32| {
        format!("[[deliver.shaping]]\ndestination = \"rate.example\"\nmax_messages_per_minute = {max}\nper = \"1h\"")
    };
    let hub = Posthorn::start(&with_lines(base, &[&lines[0], &lines[1], &shaping(1)]));
    let mut c = RawSmtp::connect(hub.smtp_addr()).unwrap();
    c.ehlo("client.test").unwrap();
    for n in 0..3 {
        let msg = message(&[("From", "ops@hub.example"), ("Subject", &format!("rated {n}"))], "x\n");
        assert_eq!(c.send("ops@hub.example", &["user@rate.example"], msg.as_bytes()).unwrap().code, 250);
    }
    let _ = c.quit();
    assert!(hub.wait_for_log("rate limit of 1 messages per 3600s reached", secs(20)), "{}", hub.log());
    std::thread::sleep(std::time::Duration::from_secs(2));
    assert_eq!(sink.parsed().len(), 1, "one an hour: {}", hub.log());

    let text = std::fs::read_to_string(hub.config_path()).unwrap();
    let raised = text.replace("max_messages_per_minute = 1\n", "max_messages_per_minute = 100\n");
    assert_ne!(raised, text);
    std::fs::write(hub.config_path(), raised).unwrap();
    let pid = rustix::process::Pid::from_raw(hub.pid().expect("running") as i32).unwrap();
    rustix::process::kill_process(pid, rustix::process::Signal::HUP).unwrap();
    assert!(hub.wait_for_log("reload: destination limits", secs(10)), "{}", hub.log());
    let out = hub.command(&["queue", "flush"], b"");
    assert!(out.status.success(), "queue flush: {out:?}");
    let all = sink.wait_for_parsed(3, secs(20));
    assert_eq!(all.len(), 3, "the new limit lets the rest go: {}", hub.log());
}
