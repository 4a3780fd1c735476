//! `posthorn check-client ADDR [HELO] [FROM]`: what the internet-facing
//! checks would say about a client, from the configuration on disk,
//! without a daemon. The DNS lists and SPF records come from the harness
//! DNS server (`deliver.dns_servers`), as for the daemon in tests/dnsbl.rs
//! and tests/verify.rs; the policy service is a small one started here.
//!
//! Scenarios:
//! 1. A client listed in zen.example: exit 1, the query name, the answer,
//!    the score and the 550 5.7.1 reply naming the list.
//! 2. A client listed there and in an allowlist: exit 0, weight -5 shown.
//! 3. A trusted client: every check skipped, exit 0.
//! 4. SPF fail for FROM: `fail` and the 550 5.7.23 action, exit 1.
//! 5. Nothing configured: every block says off, exit 0; a bad address
//!    exits 2.
//! 6. `--ask-policy`: the service is asked once at RCPT and its action
//!    shown; without the flag it is listed and not asked.
//! 7. Milters and pregreet are listed, the milters not contacted.

mod harness;

use harness::dns::{DnsRecord, DnsServer};
use harness::with_lines;
use std::io::{BufRead, BufReader, Write};
use std::net::TcpListener;
use std::process::Command;
use std::sync::{Arc, Mutex};

/// Runs `posthorn -c CONFIG check-client ARGS...` with `lines` added to a
/// hub's configuration: (exit status, stdout).
fn check(lines: &[&str], args: &[&str]) -> (i32, String) {
    let dir = tempfile::tempdir().unwrap();
    let base = format!(
        "role = \"hub\"\nhostname = \"mx.test\"\nspool = \"{}/spool\"\n\n[access]\ntrusted_networks = [\"127.0.0.5/32\"]\nlocal_domains = [\"example.org\"]\n",
        dir.path().display()
    );
    let config = dir.path().join("posthorn.toml");
    std::fs::write(&config, with_lines(&base, lines)).unwrap();
    let out =
        Command::new(harness::BIN).args(["-c", config.to_str().unwrap(), "check-client"]).args(args).output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    eprintln!("{text}{}", String::from_utf8_lossy(&out.stderr));
    (out.status.code().unwrap_or(-1), text)
}

/// As tests/dnsbl.rs: 127.0.0.2 and .4 (and .5) are in zen.example, .4
/// also in the allowlist wl.example.
fn lists() -> DnsServer {
    let ip = |s: &str| s.parse().unwrap();
    DnsServer::start(vec![
        DnsRecord::a("2.0.0.127.zen.example", ip("127.0.0.2")),
        DnsRecord::a("4.0.0.127.zen.example", ip("127.0.0.2")),
        DnsRecord::a("5.0.0.127.zen.example", ip("127.0.0.2")),
        DnsRecord::a("4.0.0.127.wl.example", ip("127.0.5.1")),
    ])
}

const SITES: &str = "screen.dnsbl_sites = [\"zen.example*3\", \"wl.example=127.0.[0..255].[0..255]*-5\"]";

#[test]
fn listed_client_is_refused_with_the_daemons_reply() {
    let dns = lists();
    let (code, out) = check(&[&dns.config_line(), SITES, "screen.dnsbl_threshold = 1"], &["127.0.0.2"]);
    assert_eq!(code, 1, "{out}");
    assert!(out.contains("zen.example*3: 2.0.0.127.zen.example -> 127.0.0.2; matched, weight 3"), "{out}");
    assert!(out.contains("2.0.0.127.wl.example -> NXDOMAIN; not matched, weight -5"), "{out}");
    assert!(out.contains("score 3 (threshold 1)"), "{out}");
    assert!(
        out.contains("refuse at RCPT: 550 5.7.1 Service unavailable; client [127.0.0.2] blocked using zen.example"),
        "{out}"
    );
    assert!(out.contains("verdict: refuse"), "{out}");
    // An unlisted client passes.
    let (code, out) = check(&[&dns.config_line(), SITES, "screen.dnsbl_threshold = 1"], &["127.0.0.3"]);
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("score 0 (threshold 1)") && out.contains("verdict: pass"), "{out}");
}

#[test]
fn allowlisted_client_passes_with_its_negative_weight() {
    let dns = lists();
    let (code, out) = check(&[&dns.config_line(), SITES, "screen.dnsbl_threshold = 1"], &["127.0.0.4"]);
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("4.0.0.127.wl.example -> 127.0.5.1; matched, weight -5"), "{out}");
    assert!(out.contains("score -2 (threshold 1)"), "{out}");
    assert!(out.contains("verdict: accept"), "{out}");
}

#[test]
fn trusted_client_skips_every_check() {
    let dns = lists();
    let (code, out) = check(&[&dns.config_line(), SITES, "screen.dnsbl_threshold = 1"], &["127.0.0.5"]);
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("trusted: yes") && out.contains("every check skipped"), "{out}");
    assert!(!out.contains("zen.example"), "no list is asked: {out}");
}

#[test]
fn spf_fail_shows_the_refusal() {
    let dns = DnsServer::start(vec![
        DnsRecord::txt("good.test", "v=spf1 ip4:127.0.0.3 -all"),
        DnsRecord::txt("client.test", "v=spf1 ip4:127.0.0.0/24 -all"),
    ]);
    let lines = [dns.config_line(), "verify.spf = true".into(), "verify.authserv_id = \"mx.test\"".into()];
    let lines: Vec<&str> = lines.iter().map(String::as_str).collect();
    let (code, out) = check(&lines, &["127.0.0.4", "client.test", "a@good.test"]);
    assert_eq!(code, 1, "{out}");
    assert!(out.contains("MAIL FROM <a@good.test>: fail (good.test)"), "{out}");
    assert!(out.contains("HELO client.test: pass (client.test)"), "{out}");
    assert!(out.contains("refuse at MAIL: 550 5.7.23 SPF validation failed"), "{out}");
    let (code, out) = check(&lines, &["127.0.0.3", "client.test", "a@good.test"]);
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("MAIL FROM <a@good.test>: pass (good.test)"), "{out}");
}

#[test]
fn nothing_configured_says_off_everywhere() {
    let (code, out) = check(&[], &["192.0.2.1", "client.test", "a@example.net"]);
    assert_eq!(code, 0, "{out}");
    for block in ["screen: off", "verify spf: off", "policy: off", "milters: off", "pregreet: off"] {
        assert!(out.contains(block), "{block}: {out}");
    }
    assert!(out.contains("trusted: no"), "{out}");
    let (code, _) = check(&[], &["not-an-address"]);
    assert_eq!(code, 2);
    let (code, _) = check(&[], &["192.0.2.1", "--no-such-option"]);
    assert_eq!(code, 2);
}

/// A policy service answering every request with `action`, recording the
/// requests.
fn policy_service(action: &'static str) -> (std::net::SocketAddr, Arc<Mutex<Vec<String>>>) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let seen = Arc::new(Mutex::new(Vec::new()));
    let record = seen.clone();
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(mut stream) = stream else { return };
            let mut reader = BufReader::new(stream.try_clone().unwrap());
            let mut request = String::new();
            loop {
                let mut line = String::new();
                if reader.read_line(&mut line).unwrap_or(0) == 0 {
                    break;
                }
                if line == "\n" {
                    record.lock().unwrap().push(std::mem::take(&mut request));
                    let _ = stream.write_all(format!("action={action}\n\n").as_bytes());
                } else {
                    request.push_str(&line);
                }
            }
        }
    });
    (addr, seen)
}

#[test]
fn ask_policy_sends_one_rcpt_request_and_shows_the_action() {
    let (addr, seen) = policy_service("REJECT go away");
    let line = format!("policy.services = [\"inet:{addr}\"]");
    let args = ["192.0.2.7", "client.test", "a@example.net"];
    let (code, out) = check(&[&line], &args);
    assert_eq!(code, 0, "{out}");
    assert!(out.contains(&format!("inet:{addr}")) && out.contains("not asked"), "{out}");
    assert!(seen.lock().unwrap().is_empty(), "asked without --ask-policy");

    let (code, out) = check(&[&line], &[&args[..], &["--ask-policy"]].concat());
    assert_eq!(code, 1, "{out}");
    assert!(out.contains("RCPT <postmaster@example.org>: refuse: 5"), "{out}");
    assert!(out.contains("go away"), "{out}");
    let requests = seen.lock().unwrap().clone();
    assert_eq!(requests.len(), 1, "{requests:?}");
    for attr in [
        "protocol_state=RCPT",
        "client_address=192.0.2.7",
        "helo_name=client.test",
        "sender=a@example.net",
        "recipient=postmaster@example.org",
    ] {
        assert!(requests[0].lines().any(|l| l == attr), "{attr}: {}", requests[0]);
    }

    let (ok, _) = policy_service("DUNNO");
    let line = format!("policy.services = [\"inet:{ok}\"]");
    let (code, out) = check(&[&line], &[&args[..], &["--ask-policy", "--rcpt", "bob@example.org"]].concat());
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("RCPT <bob@example.org>: accept"), "{out}");
}

#[test]
fn milters_and_pregreet_are_listed_not_contacted() {
    // Nothing listens on port 9: listing must not try to connect.
    let lines = ["milter.servers = [\"inet:127.0.0.1:9\"]", "screen.pregreet = true", "screen.greet_wait = \"3s\""];
    let (code, out) = check(&lines, &["192.0.2.1"]);
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("milters: not contacted") && out.contains("  inet:127.0.0.1:9"), "{out}");
    assert!(out.contains("pregreet: on, greet_wait 3s"), "{out}");
    assert!(out.contains("screen: off"), "pregreet alone asks no list: {out}");
}
