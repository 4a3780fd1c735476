//! End-to-end for the delivery transports, driven as a library: MX lookups
//! over the wire against the harness's DNS server, SMTP to Postfix's
//! `smtp-sink`, Maildir files read back from disk.
//!
//! Every MX host of a test listens on its own random loopback address and
//! one port shared by all of them (`deliver.mx_port` is one number, as port
//! 25 is on the internet). A [`Door`] is that listening side: a plain TCP
//! forwarder to a sink, which also counts the connections it accepted.
//!
//! Scenarios:
//! 1. The DNS server answers MX, A, AAAA, TXT, NODATA, NXDOMAIN and
//!    SERVFAIL, over UDP and over TCP.
//! 2. Two MX hosts: the lower preference gets the mail.
//! 3. The first MX refuses connections: the second gets the mail.
//! 4. The first MX has no address (NXDOMAIN): the second gets the mail.
//! 5. Every MX refuses: transient, destination down.
//! 6. No MX records: the domain's own A record.
//! 7. Null MX: permanent, 5.1.10, no connection.
//! 8. No such domain: permanent, 5.1.2.
//! 9. SERVFAIL: transient, class DNS, destination down, never permanent.
//! 10. Two messages to one domain share one connection.
//! 11. Equal preferences: the mail is spread over both hosts.
//! 12. Explicit next hops: `[host]:port` skips the MX records, `host` uses
//!     them.
//! 13. Smarthost names are looked up through `deliver.dns_servers`.
//! 14. An MX host with only an IPv6 address (skipped without IPv6).
//! 15. Maildir: the message is a file in `new/` with `Return-Path:` and
//!     `Delivered-To:`.

mod harness;

use std::io;
use std::net::{IpAddr, Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::thread;
use std::time::Duration;

use harness::*;
use posthorn::config::Config;
use posthorn::deliver::Delivery;
use posthorn::deliver::dns::{Dns, DnsError, MxAnswer, MxHost};
use posthorn::deliver::maildir::Maildir;
use posthorn::deliver::mx::Mx;
use posthorn::deliver::relay::Relay;
use posthorn::message::OutMessage;
use posthorn::message::nexthop::Target;
use posthorn::message::outcome::{ErrorClass, Outcome};

/// One runtime per test: pooled sessions and the resolver's sockets belong
/// to the runtime they were made on, so every `block_on` of a test uses it.
fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap()
}

/// A listening address on a random loopback IP and a fixed port that
/// forwards every connection to `target` and counts them.
struct Door {
    addr: SocketAddr,
    accepted: Arc<AtomicUsize>,
    stop: Arc<AtomicBool>,
    thread: Option<thread::JoinHandle<()>>,
}

impl Door {
    /// A door on `port` of some free 127.x.y.z, to `target`.
    fn open(port: u16, target: SocketAddr) -> Door {
        for _ in 0..100 {
            if let Ok(listener) = TcpListener::bind((random_loopback(), port)) {
                return Door::serve(listener, target);
            }
        }
        panic!("no loopback address had port {port} free");
    }

    fn serve(listener: TcpListener, target: SocketAddr) -> Door {
        let addr = listener.local_addr().unwrap();
        let accepted = Arc::new(AtomicUsize::new(0));
        let stop = Arc::new(AtomicBool::new(false));
        let (count, stopped) = (accepted.clone(), stop.clone());
        let thread = thread::spawn(move || {
            for client in listener.incoming() {
                if stopped.load(Ordering::SeqCst) {
                    return;
                }
                let Ok(client) = client else { continue };
                count.fetch_add(1, Ordering::SeqCst);
                let Ok(server) = TcpStream::connect(target) else { continue };
                pipe(client.try_clone().unwrap(), server.try_clone().unwrap());
                pipe(server, client);
            }
        });
        Door { addr, accepted, stop, thread: Some(thread) }
    }

    fn ip(&self) -> Ipv4Addr {
        match self.addr.ip() {
            IpAddr::V4(ip) => ip,
            IpAddr::V6(_) => panic!("not an IPv4 door"),
        }
    }

    fn connections(&self) -> usize {
        self.accepted.load(Ordering::SeqCst)
    }
}

impl Drop for Door {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        let _ = TcpStream::connect_timeout(&self.addr, Duration::from_secs(1));
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// Copies `from` to `to` until EOF, then half-closes `to`.
fn pipe(mut from: TcpStream, mut to: TcpStream) {
    thread::spawn(move || {
        let _ = io::copy(&mut from, &mut to);
        let _ = to.shutdown(std::net::Shutdown::Write);
    });
}

fn random_loopback() -> Ipv4Addr {
    Ipv4Addr::new(127, fastrand::u8(1..=254), fastrand::u8(..), fastrand::u8(1..=254))
}

/// A loopback IP where nothing listens on `port`: connections are refused.
fn dead_ip(port: u16) -> Ipv4Addr {
    loop {
        let ip = random_loopback();
        if TcpListener::bind((ip, port)).is_ok() {
            return ip;
        }
    }
}

/// One test's network: a port for every MX host, sinks behind doors.
struct Net {
    port: u16,
}

impl Net {
    fn new() -> Net {
        Net { port: free_addr().port() }
    }

    /// A sink and a door to it on this network's port.
    fn host(&self) -> (Sink, Door) {
        let sink = Sink::start();
        let door = Door::open(self.port, sink.addr());
        (sink, door)
    }

    fn config(&self, dns: &DnsServer, extra: &str) -> Config {
        let text = format!(
            "hostname = \"hub.test\"\n\n[deliver]\ndns_servers = [\"{}\"]\nmx_port = {}\n\n[relay]\nconnect_timeout = \"3s\"\n{extra}",
            dns.addr(),
            self.port
        );
        Config::parse(&text, Path::new("transports.toml")).unwrap()
    }

    fn mx(&self, dns: &DnsServer, extra: &str) -> Mx {
        let config = self.config(dns, extra);
        Mx::new(&config, Arc::new(Dns::from_config(&config).unwrap()))
    }
}

fn message(rcpts: &[&str]) -> OutMessage {
    let body = b"From: cron@sat.test\r\nSubject: transports\r\n\r\nhello\r\n";
    OutMessage::simple(&unique_name("T"), "cron@sat.test", rcpts, body)
}

/// `D`, `T` or `P` per outcome.
fn kinds(delivery: &Delivery) -> String {
    let kind = |o: &Outcome| match o {
        Outcome::Delivered(_) => 'D',
        Outcome::Transient(_) => 'T',
        Outcome::Permanent(_) => 'P',
    };
    delivery.outcomes.iter().map(kind).collect()
}

fn relay_of(delivery: &Delivery) -> String {
    delivery.outcomes[0].attempt().relay.clone().unwrap_or_default()
}

fn enhanced(delivery: &Delivery) -> String {
    let reply = delivery.outcomes[0].attempt().reply.as_ref().expect("a reply");
    reply.enhanced.map(|e| e.to_string()).unwrap_or_default()
}

// 1
#[test]
fn dns_server_answers_over_udp_and_tcp() {
    let rt = runtime();
    let dns = DnsServer::start(vec![
        DnsRecord::mx("example.test", 20, "mx2.example.test"),
        DnsRecord::mx("example.test", 10, "MX1.example.test."),
        DnsRecord::a("mx1.example.test", Ipv4Addr::new(127, 0, 0, 4)),
        DnsRecord::a("mx1.example.test", Ipv4Addr::new(127, 0, 0, 5)),
        DnsRecord::aaaa("mx1.example.test", "::1".parse().unwrap()),
        DnsRecord::txt("sel._domainkey.example.test", &"k".repeat(600)),
        DnsRecord::null_mx("null.test"),
        DnsRecord::servfail("broken.test"),
    ]);
    let d = Dns::with_servers(&[dns.addr()]);
    rt.block_on(async {
        let want = vec![
            MxHost { preference: 10, host: "mx1.example.test".into() },
            MxHost { preference: 20, host: "mx2.example.test".into() },
        ];
        assert_eq!(d.mx("example.test").await, Ok(MxAnswer::Hosts(want)));
        assert_eq!(d.mx("Example.TEST.").await.map(|a| matches!(a, MxAnswer::Hosts(_))), Ok(true));
        let mut addrs = d.addresses("mx1.example.test").await.unwrap();
        addrs.sort();
        let want: Vec<IpAddr> =
            vec!["127.0.0.4".parse().unwrap(), "127.0.0.5".parse().unwrap(), "::1".parse().unwrap()];
        assert_eq!(addrs, want);
        assert_eq!(d.mx("null.test").await, Ok(MxAnswer::Null));
        // The name exists, with other types only: NODATA.
        assert_eq!(d.mx("mx1.example.test").await, Ok(MxAnswer::NoRecords));
        assert_eq!(d.addresses("example.test").await, Ok(vec![]));
        assert_eq!(d.mx("nowhere.example.test").await, Err(DnsError::NotFound("nowhere.example.test".into())));
        assert_eq!(d.addresses("nowhere.test").await, Err(DnsError::NotFound("nowhere.test".into())));
        let failed = d.mx("broken.test").await;
        assert!(
            matches!(&failed, Err(DnsError::Temporary { detail, .. }) if detail.contains("SERVFAIL")),
            "{failed:?}"
        );
        // Outside every zone: REFUSED, which is temporary too.
        assert!(matches!(d.mx("example.org").await, Err(DnsError::Temporary { .. })));
    });

    // TCP alone, and a TXT answer too big for a plain UDP datagram.
    use hickory_resolver::config::{ConnectionConfig, NameServerConfig, ResolverConfig};
    use hickory_resolver::proto::rr::{RData, RecordType};
    let mut tcp = ConnectionConfig::tcp();
    tcp.port = dns.addr().port();
    let servers = vec![NameServerConfig::new(dns.addr().ip(), true, vec![tcp])];
    let config = ResolverConfig::from_parts(None, vec![], servers);
    let resolver = hickory_resolver::Resolver::builder_with_config(
        config,
        hickory_resolver::net::runtime::TokioRuntimeProvider::default(),
    )
    .build()
    .unwrap();
    rt.block_on(async {
        let lookup = resolver.lookup("sel._domainkey.example.test.", RecordType::TXT).await.unwrap();
        let text: String = lookup
            .answers()
            .iter()
            .filter_map(|r| match &r.data {
                RData::TXT(txt) => Some(txt.to_string()),
                _ => None,
            })
            .collect();
        assert_eq!(text, "k".repeat(600));
        let mx = resolver.lookup("example.test.", RecordType::MX).await.unwrap();
        assert_eq!(mx.answers().len(), 2);
    });
}

// 2
#[test]
fn lowest_preference_wins() {
    let rt = runtime();
    let net = Net::new();
    let (sink1, door1) = net.host();
    let (sink2, door2) = net.host();
    // The worse host listed first: the order in the zone must not matter.
    let dns = DnsServer::start(vec![
        DnsRecord::mx("example.test", 20, "mx2.example.test"),
        DnsRecord::mx("example.test", 10, "mx1.example.test"),
        DnsRecord::a("mx1.example.test", door1.ip()),
        DnsRecord::a("mx2.example.test", door2.ip()),
    ]);
    let mx = net.mx(&dns, "");
    for _ in 0..3 {
        let delivery = rt.block_on(mx.deliver("example.test", &message(&["a@example.test", "b@example.test"])));
        assert_eq!(kinds(&delivery), "DD", "{delivery:?}");
        assert!(!delivery.hop_down);
        assert_eq!(relay_of(&delivery), format!("mx1.example.test[{}]:{}", door1.ip(), net.port));
    }
    let got = sink1.parsed();
    assert_eq!(got.len(), 3);
    assert_eq!(got[0].rcpt_to, vec!["a@example.test", "b@example.test"]);
    assert_eq!(got[0].mail_from, "cron@sat.test");
    assert_eq!(got[0].header("Subject").as_deref(), Some("transports"));
    assert!(sink2.messages().is_empty());
    assert_eq!(door2.connections(), 0);
}

// 3
#[test]
fn first_mx_refusing_connections_fails_over_to_the_second() {
    let rt = runtime();
    let net = Net::new();
    let (sink, door) = net.host();
    let dns = DnsServer::start(vec![
        DnsRecord::mx("example.test", 10, "mx1.example.test"),
        DnsRecord::mx("example.test", 20, "mx2.example.test"),
        DnsRecord::a("mx1.example.test", dead_ip(net.port)),
        DnsRecord::a("mx2.example.test", door.ip()),
    ]);
    let delivery = rt.block_on(net.mx(&dns, "").deliver("example.test", &message(&["a@example.test"])));
    assert_eq!(kinds(&delivery), "D", "{delivery:?}");
    assert_eq!(relay_of(&delivery), format!("mx2.example.test[{}]:{}", door.ip(), net.port));
    assert_eq!(sink.parsed().len(), 1);
}

// 4
#[test]
fn mx_host_without_address_is_skipped() {
    let rt = runtime();
    let net = Net::new();
    let (sink, door) = net.host();
    let dns = DnsServer::start(vec![
        DnsRecord::mx("example.test", 10, "gone.example.test"),
        DnsRecord::mx("example.test", 20, "mx2.example.test"),
        DnsRecord::a("mx2.example.test", door.ip()),
    ]);
    let delivery = rt.block_on(net.mx(&dns, "").deliver("example.test", &message(&["a@example.test"])));
    assert_eq!(kinds(&delivery), "D", "{delivery:?}");
    assert_eq!(sink.parsed().len(), 1);
}

// 5
#[test]
fn every_mx_refusing_is_transient_and_hop_down() {
    let rt = runtime();
    let net = Net::new();
    let dns = DnsServer::start(vec![
        DnsRecord::mx("example.test", 10, "mx1.example.test"),
        DnsRecord::mx("example.test", 20, "mx2.example.test"),
        DnsRecord::a("mx1.example.test", dead_ip(net.port)),
        DnsRecord::a("mx2.example.test", dead_ip(net.port)),
    ]);
    let delivery =
        rt.block_on(net.mx(&dns, "").deliver("example.test", &message(&["a@example.test", "b@example.test"])));
    assert_eq!(kinds(&delivery), "TT", "{delivery:?}");
    assert!(delivery.hop_down);
    let attempt = delivery.outcomes[0].attempt();
    assert_eq!(attempt.class, Some(ErrorClass::Connect));
    assert!(attempt.detail.starts_with("connect to mx2.example.test["), "{}", attempt.detail);
}

// 6
#[test]
fn no_mx_falls_back_to_the_domain_address() {
    let rt = runtime();
    let net = Net::new();
    let (sink, door) = net.host();
    let dns = DnsServer::start(vec![
        DnsRecord::a("plain.test", door.ip()),
        // Another name with MX records must not confuse the lookup.
        DnsRecord::mx("other.test", 10, "plain.test"),
    ]);
    let delivery = rt.block_on(net.mx(&dns, "").deliver("plain.test", &message(&["root@plain.test"])));
    assert_eq!(kinds(&delivery), "D", "{delivery:?}");
    assert_eq!(relay_of(&delivery), format!("plain.test[{}]:{}", door.ip(), net.port));
    assert_eq!(sink.parsed()[0].rcpt_to, vec!["root@plain.test"]);

    // No MX and no address either: nowhere to go, for good.
    let dns = DnsServer::start(vec![DnsRecord::txt("bare.test", "v=spf1 -all")]);
    let delivery = rt.block_on(net.mx(&dns, "").deliver("bare.test", &message(&["root@bare.test"])));
    assert_eq!(kinds(&delivery), "P", "{delivery:?}");
    assert_eq!(enhanced(&delivery), "5.1.2");
}

// 7
#[test]
fn null_mx_is_permanent() {
    let rt = runtime();
    let net = Net::new();
    let (sink, door) = net.host();
    let dns = DnsServer::start(vec![DnsRecord::null_mx("null.test"), DnsRecord::a("null.test", door.ip())]);
    let delivery = rt.block_on(net.mx(&dns, "").deliver("null.test", &message(&["a@null.test", "b@null.test"])));
    assert_eq!(kinds(&delivery), "PP", "{delivery:?}");
    assert!(!delivery.hop_down);
    let attempt = delivery.outcomes[1].attempt();
    assert_eq!(enhanced(&delivery), "5.1.10");
    assert_eq!(attempt.reply.as_ref().unwrap().code, 556);
    assert_eq!(attempt.relay, None);
    assert!(attempt.detail.contains("null.test does not accept mail (null MX)"), "{}", attempt.detail);
    assert_eq!(door.connections(), 0, "the A record is not a fallback for a null MX");
    assert!(sink.messages().is_empty());
}

// 8
#[test]
fn nxdomain_is_permanent() {
    let rt = runtime();
    let net = Net::new();
    let dns = DnsServer::start(vec![DnsRecord::mx("example.test", 10, "mx1.example.test")]);
    let delivery = rt.block_on(net.mx(&dns, "").deliver("no-such-domain.test", &message(&["a@no-such-domain.test"])));
    assert_eq!(kinds(&delivery), "P", "{delivery:?}");
    assert_eq!(enhanced(&delivery), "5.1.2");
    let attempt = delivery.outcomes[0].attempt();
    assert_eq!(attempt.class, Some(ErrorClass::Dns));
    assert!(attempt.detail.contains("no-such-domain.test"), "{}", attempt.detail);
}

// 9
#[test]
fn servfail_is_transient_and_hop_down() {
    let rt = runtime();
    let net = Net::new();
    let (sink, door) = net.host();
    let dns = DnsServer::start(vec![DnsRecord::servfail("broken.test"), DnsRecord::a("mx.ok.test", door.ip())]);
    let delivery = rt.block_on(net.mx(&dns, "").deliver("broken.test", &message(&["a@broken.test", "b@broken.test"])));
    assert_eq!(kinds(&delivery), "TT", "{delivery:?}");
    assert!(delivery.hop_down);
    let attempt = delivery.outcomes[0].attempt();
    assert_eq!(attempt.class, Some(ErrorClass::Dns));
    assert_eq!(enhanced(&delivery), "4.4.3");
    assert!(attempt.detail.contains("broken.test"), "{}", attempt.detail);
    assert!(sink.messages().is_empty());
}

// 10
#[test]
fn two_messages_to_one_domain_share_a_connection() {
    let rt = runtime();
    let net = Net::new();
    let (sink, door) = net.host();
    let dns = DnsServer::start(vec![
        DnsRecord::mx("example.test", 10, "mx1.example.test"),
        DnsRecord::a("mx1.example.test", door.ip()),
    ]);
    let mx = net.mx(&dns, "idle_timeout = \"30s\"\n");
    rt.block_on(async {
        for rcpt in ["a@example.test", "b@example.test"] {
            let delivery = mx.deliver("example.test", &message(&[rcpt])).await;
            assert_eq!(kinds(&delivery), "D", "{delivery:?}");
        }
        mx.close_idle().await;
    });
    // Both captures may carry the same mtime: their order is not known.
    let mut got: Vec<Vec<String>> = sink.parsed().into_iter().map(|d| d.rcpt_to).collect();
    got.sort();
    assert_eq!(got, vec![vec!["a@example.test"], vec!["b@example.test"]]);
    assert_eq!(door.connections(), 1, "the second message went over the first session");
}

// 11
#[test]
fn equal_preferences_share_the_load() {
    let rt = runtime();
    let net = Net::new();
    let (sink1, door1) = net.host();
    let (sink2, door2) = net.host();
    let dns = DnsServer::start(vec![
        DnsRecord::mx("example.test", 10, "mx1.example.test"),
        DnsRecord::mx("example.test", 10, "mx2.example.test"),
        DnsRecord::a("mx1.example.test", door1.ip()),
        DnsRecord::a("mx2.example.test", door2.ip()),
    ]);
    // No session kept: every message picks a host afresh.
    let mx = net.mx(&dns, "idle_timeout = \"0s\"\n");
    for _ in 0..20 {
        let delivery = rt.block_on(mx.deliver("example.test", &message(&["a@example.test"])));
        assert_eq!(kinds(&delivery), "D", "{delivery:?}");
    }
    let (one, two) = (sink1.messages().len(), sink2.messages().len());
    assert_eq!(one + two, 20);
    // Both all-to-one orders together have a chance of 2^-19.
    assert!(one > 0 && two > 0, "mx1 got {one}, mx2 got {two}");
}

// 12
#[test]
fn explicit_next_hops() {
    let rt = runtime();
    let net = Net::new();
    let (sink_mx, door_mx) = net.host();
    let (sink_relay, door_relay) = net.host();
    let dns = DnsServer::start(vec![
        DnsRecord::mx("relay.example.test", 10, "mx.example.test"),
        DnsRecord::a("mx.example.test", door_mx.ip()),
        DnsRecord::a("relay.example.test", door_relay.ip()),
    ]);
    let mx = net.mx(&dns, "");
    // [host]: its own address, its MX records ignored.
    let target = Target::parse("[relay.example.test]").unwrap();
    let delivery = rt.block_on(mx.deliver_to(&target, &message(&["a@anywhere.test"])));
    assert_eq!(kinds(&delivery), "D", "{delivery:?}");
    assert_eq!(sink_relay.parsed().len(), 1);
    // host: by its MX records.
    let target = Target::parse("relay.example.test").unwrap();
    let delivery = rt.block_on(mx.deliver_to(&target, &message(&["b@anywhere.test"])));
    assert_eq!(kinds(&delivery), "D", "{delivery:?}");
    assert_eq!(sink_mx.parsed()[0].rcpt_to, vec!["b@anywhere.test"]);
    // [host]:port with the port of the sink itself, no door.
    let target = Target { host: sink_relay.addr().ip().to_string(), port: Some(sink_relay.addr().port()), mx: false };
    let delivery = rt.block_on(mx.deliver_to(&target, &message(&["c@anywhere.test"])));
    assert_eq!(kinds(&delivery), "D", "{delivery:?}");
    assert_eq!(sink_relay.parsed().len(), 2);
    // A next hop that does not resolve waits for the operator.
    let target = Target::parse("[typo.example.test]").unwrap();
    let delivery = rt.block_on(mx.deliver_to(&target, &message(&["d@anywhere.test"])));
    assert_eq!(kinds(&delivery), "T", "{delivery:?}");
    assert!(delivery.hop_down);
    assert_eq!(delivery.outcomes[0].attempt().class, Some(ErrorClass::Dns));
}

// 13
#[test]
fn smarthost_names_go_through_the_configured_dns() {
    let rt = runtime();
    let net = Net::new();
    let (sink, door) = net.host();
    let dns = DnsServer::start(vec![DnsRecord::a("smarthost.example.test", door.ip())]);
    let extra = format!("smarthosts = [\"nowhere.example.test:{0}\", \"smarthost.example.test:{0}\"]\n", net.port);
    let relay = Relay::new(&net.config(&dns, &extra));
    let delivery = rt.block_on(relay.deliver(&message(&["a@example.org"])));
    assert_eq!(kinds(&delivery), "D", "{delivery:?}");
    assert_eq!(relay_of(&delivery), format!("smarthost.example.test[{}]:{}", door.ip(), net.port));
    assert_eq!(sink.parsed().len(), 1);
}

// 14
#[test]
fn ipv6_only_mx_host() {
    let rt = runtime();
    let Ok(listener) = TcpListener::bind("[::1]:0") else {
        eprintln!("no IPv6 loopback here; skipped");
        return;
    };
    let sink = Sink::start();
    let port = listener.local_addr().unwrap().port();
    let door = Door::serve(listener, sink.addr());
    let dns = DnsServer::start(vec![
        DnsRecord::mx("six.test", 10, "mx.six.test"),
        DnsRecord::aaaa("mx.six.test", "::1".parse().unwrap()),
    ]);
    let net = Net { port };
    let delivery = rt.block_on(net.mx(&dns, "").deliver("six.test", &message(&["a@six.test"])));
    assert_eq!(kinds(&delivery), "D", "{delivery:?}");
    assert_eq!(relay_of(&delivery), format!("mx.six.test[::1]:{port}"));
    assert_eq!(door.connections(), 1);
    assert_eq!(sink.parsed().len(), 1);
}

// 15
#[test]
fn maildir_delivery_is_a_file_with_the_headers() {
    let rt = runtime();
    let root = tempfile::tempdir().unwrap();
    let text = format!(
        "hostname = \"hub.test\"\n[deliver]\nmaildir_root = \"{}/{{domain}}/{{user}}/Maildir\"\n",
        root.path().display()
    );
    let maildir = Maildir::new(&Config::parse(&text, Path::new("t.toml")).unwrap());
    let msg = message(&["Team@Example.Test", "../x@example.test"]);
    let delivery = rt.block_on(maildir.deliver(&msg));
    assert_eq!(kinds(&delivery), "DP", "{delivery:?}");
    assert_eq!(delivery.outcomes[0].attempt().detail, "delivered to maildir");
    let new = root.path().join("example.test/team/Maildir/new");
    let files: Vec<_> = std::fs::read_dir(&new).unwrap().map(|e| e.unwrap().path()).collect();
    assert_eq!(files.len(), 1);
    let name = files[0].file_name().unwrap().to_string_lossy().into_owned();
    assert!(name.ends_with(".hub.test") && name.contains(".M") && name.contains('P'), "{name}");
    let bytes = std::fs::read(&files[0]).unwrap();
    assert_eq!(header(&bytes, "Return-Path").as_deref(), Some("<cron@sat.test>"));
    assert_eq!(header(&bytes, "Delivered-To").as_deref(), Some("Team@Example.Test"));
    assert_eq!(header(&bytes, "Subject").as_deref(), Some("transports"));
    assert_eq!(body(&bytes), b"hello\n");
    assert!(!bytes.contains(&b'\r'));
    assert_eq!(std::fs::read_dir(root.path().join("example.test/team/Maildir/tmp")).unwrap().count(), 0);
}
