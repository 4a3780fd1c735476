//! End-to-end: outbound address families and source addresses. A hub on
//! 127.0.0.3 delivers by MX through the harness's DNS server.
//!
//! Scenarios:
//! 1. An MX host with only an AAAA record (`::1`): the mail reaches the MX
//!    target, a second posthorn listening on `[::1]`, which saw an IPv6
//!    client; with `deliver.source_addresses` the IPv6 source is the one
//!    configured.
//! 2. `deliver.source_addresses = ["127.0.0.5", "::1"]`: an IPv4 MX (a
//!    sink) sees the connection come from 127.0.0.5.
//! 3. `deliver.inet_protocols = "ipv4"` with the AAAA-only MX: deferred,
//!    never sent, never bounced.

mod harness;

use std::fs;
use std::net::{IpAddr, Ipv6Addr};
use std::path::Path;

use harness::*;

const HUB_IP: &str = "127.0.0.3";

fn hub(dns: &DnsServer, mx_port: u16, lines: &[&str]) -> Posthorn {
    let base = format!(
        "role = \"hub\"\n\n[smtp]\nlisten = [\"{HUB_IP}:0\"]\n\n[relay]\ntls = \"none\"\n\n[queue]\nretry_min = \"1s\"\nretry_max = \"2s\"\n"
    );
    let mut all = vec![dns.config_line(), format!("deliver.mx_port = {mx_port}")];
    all.extend(lines.iter().map(|s| s.to_string()));
    let refs: Vec<&str> = all.iter().map(String::as_str).collect();
    Posthorn::start(&with_lines(&base, &refs))
}

fn send(hub: &Posthorn, to: &str) {
    let msg = message(&[("From", "ops@hub.example"), ("To", to), ("Subject", "six")], "over IPv6\n");
    let mut c = RawSmtp::connect(hub.smtp_addr()).unwrap();
    c.ehlo("client.test").unwrap();
    let reply = c.send("ops@hub.example", &[to], msg.as_bytes()).unwrap();
    assert_eq!(reply.code, 250, "{reply}");
}

fn maildir_count(root: &Path) -> usize {
    fs::read_dir(root.join("v6.example/alice/new")).map(|d| d.count()).unwrap_or(0)
}

/// The MX target: posthorn on `[::1]:0`, delivering v6.example to Maildirs.
fn v6_target(root: &Path) -> Posthorn {
    let maildirs = format!("{}/{{domain}}/{{user}}", root.display());
    Posthorn::start(&format!(
        "role = \"hub\"\n[smtp]\nlisten = [\"[::1]:0\"]\n[access]\nlocal_domains = [\"v6.example\"]\n[deliver]\nmaildir_root = {}\n",
        toml_str(&maildirs)
    ))
}

#[test]
fn an_mx_with_only_an_aaaa_record_gets_the_mail_over_ipv6() {
    let dir = tempfile::tempdir().unwrap();
    let target = v6_target(dir.path());
    let dns = DnsServer::start(vec![
        DnsRecord::mx("v6.example", 10, "mx.v6.example"),
        DnsRecord::aaaa("mx.v6.example", Ipv6Addr::LOCALHOST),
    ]);
    let hub = hub(&dns, target.smtp_addr().port(), &["deliver.source_addresses = [\"127.0.0.5\", \"::1\"]"]);
    send(&hub, "alice@v6.example");
    assert!(wait_until(secs(20), || maildir_count(dir.path()) == 1), "hub:\n{}\ntarget:\n{}", hub.log(), target.log());
    assert!(target.wait_for_log("connect from unknown[::1]", secs(5)), "{}", target.log());
    let line = hub.log_lines(&["to=<alice@v6.example>", "status=sent"]).remove(0);
    assert!(line.contains("relay=mx.v6.example[::1]"), "{line}");
}

#[test]
fn the_ipv4_source_address_is_the_configured_one() {
    let sink = Sink::start();
    let IpAddr::V4(ip) = sink.addr().ip() else { unreachable!() };
    let dns =
        DnsServer::start(vec![DnsRecord::mx("v4.example", 10, "mx.v4.example"), DnsRecord::a("mx.v4.example", ip)]);
    let hub = hub(&dns, sink.addr().port(), &["deliver.source_addresses = [\"127.0.0.5\", \"::1\"]"]);
    send(&hub, "bob@v4.example");
    let got = sink.wait_for_parsed(1, secs(20));
    assert_eq!(got.len(), 1, "{}", hub.log());
    assert!(got[0].client_addr.contains("127.0.0.5"), "the sink saw {}", got[0].client_addr);

    // Without it the kernel picks 127.0.0.1 for loopback: the setting is
    // what made the difference.
    let plain = self::hub(&dns, sink.addr().port(), &[]);
    send(&plain, "bob@v4.example");
    let got = sink.wait_for_parsed(2, secs(20));
    assert!(!got[1].client_addr.contains("127.0.0.5"), "{}", got[1].client_addr);
}

#[test]
fn ipv4_only_never_uses_an_aaaa_only_mx() {
    let dir = tempfile::tempdir().unwrap();
    let target = v6_target(dir.path());
    let dns = DnsServer::start(vec![
        DnsRecord::mx("v6.example", 10, "mx.v6.example"),
        DnsRecord::aaaa("mx.v6.example", Ipv6Addr::LOCALHOST),
    ]);
    let hub = hub(&dns, target.smtp_addr().port(), &["deliver.inet_protocols = \"ipv4\""]);
    send(&hub, "alice@v6.example");
    assert!(hub.wait_for_log("status=deferred", secs(20)), "{}", hub.log());
    assert_eq!(maildir_count(dir.path()), 0);
    assert!(!hub.log().contains("status=bounced"), "{}", hub.log());
    assert_eq!(hub.queued_count(), 1);
}
