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
//! 4. Happy Eyeballs: an MX host whose AAAA address (`::1`, a listener
//!    whose accept queue is full, so SYNs go unanswered) never connects
//!    and whose A address is a sink: the IPv6 attempt starts first, the
//!    IPv4 one 250 ms later wins, and the mail is delivered long before
//!    the 20 s connect timeout; the log names the IPv6 address given up on.
//! 5. The same with nothing listening on the AAAA address: the refusal is
//!    logged and the IPv4 address takes the mail at once.

mod harness;

use std::fs;
use std::net::{IpAddr, Ipv6Addr, SocketAddr, TcpListener, TcpStream};
use std::path::Path;
use std::time::{Duration, Instant};

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

/// A listener on `addr` that completes no handshake: its accept queue
/// (backlog 0) is filled with connections that are never accepted, so the
/// kernel drops every further SYN. Kept alive with the held connections.
fn blackhole(addr: SocketAddr) -> std::io::Result<(TcpListener, Vec<TcpStream>)> {
    let rt = tokio::runtime::Builder::new_current_thread().enable_io().build()?;
    let listener = rt.block_on(async {
        let socket = tokio::net::TcpSocket::new_v6()?;
        socket.bind(addr)?;
        socket.listen(0)?.into_std()
    })?;
    let mut held = Vec::new();
    for _ in 0..16 {
        match TcpStream::connect_timeout(&addr, Duration::from_millis(300)) {
            Ok(stream) => held.push(stream),
            Err(_) => return Ok((listener, held)),
        }
    }
    Err(std::io::Error::other("the accept queue never filled"))
}

/// A sink on 127.0.0.x and the same port on `::1`, where `v6` is bound
/// (a fresh sink when the port is taken there).
fn sink_with_v6<T>(v6: impl Fn(SocketAddr) -> std::io::Result<T>) -> (Sink, T, SocketAddr) {
    for _ in 0..10 {
        let sink = Sink::start();
        let addr6 = SocketAddr::new(IpAddr::V6(Ipv6Addr::LOCALHOST), sink.addr().port());
        if let Ok(held) = v6(addr6) {
            return (sink, held, addr6);
        }
    }
    panic!("no port free on both 127.0.0.x and ::1");
}

fn eyeballs_hub(sink: &Sink) -> (Posthorn, DnsServer) {
    let IpAddr::V4(ip) = sink.addr().ip() else { unreachable!() };
    let dns = DnsServer::start(vec![
        DnsRecord::mx("both.example", 10, "mx.both.example"),
        DnsRecord::aaaa("mx.both.example", Ipv6Addr::LOCALHOST),
        DnsRecord::a("mx.both.example", ip),
    ]);
    let hub = hub(&dns, sink.addr().port(), &["relay.connect_timeout = \"20s\""]);
    (hub, dns)
}

#[test]
fn happy_eyeballs_gives_up_on_an_ipv6_address_that_never_answers() {
    let (sink, _blackhole, addr6) = sink_with_v6(blackhole);
    let (hub, _dns) = eyeballs_hub(&sink);
    let sent = Instant::now();
    send(&hub, "carol@both.example");
    let got = sink.wait_for_parsed(1, secs(20));
    let took = sent.elapsed();
    assert_eq!(got.len(), 1, "{}", hub.log());
    assert!(took < Duration::from_secs(8), "took {took:?}, not raced past the 20 s connect timeout:\n{}", hub.log());
    let v4 = format!("mx.both.example[{}]:{}", sink.addr().ip(), sink.addr().port());
    let given_up = format!(
        "connect to mx.both.example[::1]:{}: given up after 250ms: {v4} connected first (Happy Eyeballs)",
        addr6.port()
    );
    assert!(hub.wait_for_log(&given_up, secs(5)), "{given_up}\n{}", hub.log());
    let line = hub.log_lines(&["to=<carol@both.example>", "status=sent"]).remove(0);
    assert!(line.contains(&format!("relay={v4}")), "{line}");
}

#[test]
fn happy_eyeballs_fails_over_at_once_from_a_refusing_ipv6_address() {
    // Nothing listens on [::1]:port (binding it proves it was free).
    let (sink, (), addr6) = sink_with_v6(|a| TcpListener::bind(a).map(drop));
    let (hub, _dns) = eyeballs_hub(&sink);
    send(&hub, "dave@both.example");
    assert_eq!(sink.wait_for_parsed(1, secs(20)).len(), 1, "{}", hub.log());
    let refused = format!("connect to mx.both.example[::1]:{}: ", addr6.port());
    assert!(hub.wait_for_log(&refused, secs(5)), "{}", hub.log());
    let line = hub.log_lines(&[&refused]).remove(0);
    assert!(line.to_ascii_lowercase().contains("refused"), "{line}");
    assert!(!hub.log().contains("given up after"), "a refusal is no race to give up: {}", hub.log());
    assert!(hub.log().contains("status=sent"), "{}", hub.log());
}
