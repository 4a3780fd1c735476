//! End-to-end: the metrics and health endpoint (`[metrics] listen`).
//!
//! A hub with a transport table sends `ok.test` to a good `smtp-sink`,
//! `bad.test` to one that refuses every RCPT with 5xx, and `dead.test` to
//! an address nobody listens on. Mail goes in with Python's smtplib; the
//! endpoint is read with Python's urllib and parsed with the Prometheus
//! project's own parser (`prometheus_client`), never by string matching.
//!
//! Scenarios:
//! 1. Counters after known traffic: messages accepted by door (smtp,
//!    local through `sendmail`, and a notice for the bounce), recipients delivered / deferred / bounced
//!    (delivered mail read back from the sink), SMTP sessions, open
//!    connections back to 0, commands refused with 5xx (RCPT before MAIL,
//!    an unknown verb), queue gauges by state, and the hold gauge
//!    following `postsuper -h` and `postsuper -d`.
//! 2. HTTP: `/health` 200 `ok`; an unknown path 404; POST 405; a garbage
//!    request line 400, a silent client does not block others, and the
//!    daemon keeps serving (HTTP and SMTP) afterwards.
//! 3. `/health` turns 503 naming the spool when a file cannot be created
//!    there, and 200 again once it can.
//! 4. No `[metrics]`: no endpoint, no `listening metrics=` line.
//! 5. Failed AUTH attempts over STARTTLS (smtplib, PLAIN and LOGIN):
//!    `posthorn_auth_failures_total` rises by exactly the number of wrong
//!    passwords, by mechanism, and a client refused by the failure limit
//!    is counted apart; a successful AUTH is not counted.
//! 6. After a restart (so the queue id generator runs up to an hour ahead
//!    of the clock, floored at its lease): mail delivered through the
//!    transport table, by MX (a real DNS server) and to a Maildir shows in
//!    `posthorn_delivery_delay_seconds` under `relay`, `mx` and `maildir`,
//!    with a delay above zero; mail a sink refuses with 4xx, mail to a
//!    dead port and mail to that port while it is known down show in
//!    `posthorn_deferrals_total` as `4xx`, `connect` and
//!    `destination_down`; and the oldest-message age grows while that
//!    mail waits.

mod harness;

use harness::*;
use std::collections::BTreeMap;
use std::fs;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::process::Command;

/// A hub routing the three test domains by a transport table, with the
/// endpoint on a port the kernel picks. Retries are a minute apart, so a
/// deferred recipient is tried exactly once during a test.
fn hub(dir: &std::path::Path, good: SocketAddr, bad: SocketAddr, dead: SocketAddr) -> Posthorn {
    let table = dir.join("transport");
    let hop = |a: SocketAddr| format!("relay:[{}]:{}", a.ip(), a.port());
    let text = format!("ok.test {}\nbad.test {}\ndead.test {}\n", hop(good), hop(bad), hop(dead));
    fs::write(&table, text).unwrap();
    let base =
        "role = \"hub\"\n\n[smtp]\nlisten = [\"127.0.0.1:0\"]\n\n[relay]\ntls = \"none\"\nconnect_timeout = \"5s\"\n";
    Posthorn::start(&with_lines(
        base,
        &[
            &format!("deliver.transport_maps = [{}]", toml_str(&format!("hash:{}", table.display()))),
            "queue.retry_min = \"60s\"",
            "queue.retry_max = \"60s\"",
            "metrics.listen = \"127.0.0.1:0\"",
        ],
    ))
}

/// The address of the `listening metrics=ADDR` line the daemon printed
/// last (the log runs on across restarts).
fn metrics_addr(ph: &Posthorn) -> SocketAddr {
    let log = ph.log();
    let line = log.lines().filter_map(|l| l.split("listening metrics=").nth(1)).next_back();
    line.unwrap_or_else(|| panic!("no `listening metrics=` line:\n{log}")).trim().parse().unwrap()
}

/// Fetches `url` with urllib and parses the body with prometheus_client.
const SCRAPE_SCRIPT: &str = r#"
import json, sys, urllib.request
from prometheus_client.parser import text_string_to_metric_families
with urllib.request.urlopen(sys.argv[1], timeout=10) as r:
    out = {"status": r.status, "content_type": r.headers.get("Content-Type"), "types": {}, "samples": []}
    text = r.read().decode("utf-8")
for family in text_string_to_metric_families(text):
    out["types"][family.name] = family.type
    for s in family.samples:
        out["samples"].append([s.name, s.labels, s.value])
print(json.dumps(out))
"#;

struct Scrape {
    /// Family name (without `_total` for counters, as the parser has it) -> type.
    types: BTreeMap<String, String>,
    samples: Vec<(String, BTreeMap<String, String>, f64)>,
}

impl Scrape {
    /// The value of the sample `name` with exactly `labels`.
    fn get(&self, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
        let want: BTreeMap<String, String> = labels.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
        self.samples.iter().find(|(n, l, _)| n == name && *l == want).map(|(_, _, v)| *v)
    }

    fn value(&self, name: &str, labels: &[(&str, &str)]) -> f64 {
        self.get(name, labels).unwrap_or_else(|| panic!("no sample {name}{labels:?} in {:#?}", self.samples))
    }
}

fn scrape(addr: SocketAddr) -> Scrape {
    let mut cmd = Command::new("python3");
    cmd.arg("-c").arg(SCRAPE_SCRIPT).arg(format!("http://{addr}/metrics"));
    let out = run_with_timeout(cmd, b"", COMMAND_TIMEOUT);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "scrape failed (is the Python package prometheus_client installed?):\n{stderr}");
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["status"], 200);
    assert_eq!(v["content_type"], "text/plain; version=0.0.4; charset=utf-8");
    let types = v["types"].as_object().unwrap().iter().map(|(k, t)| (k.clone(), t.as_str().unwrap().into())).collect();
    let samples = v["samples"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| {
            let labels = s[1].as_object().unwrap().iter().map(|(k, l)| (k.clone(), l.as_str().unwrap().into()));
            (s[0].as_str().unwrap().to_string(), labels.collect(), s[2].as_f64().unwrap())
        })
        .collect();
    Scrape { types, samples }
}

/// One request with curl: the status code and the body.
fn curl(args: &[&str], url: &str) -> (u16, String) {
    let mut cmd = Command::new("curl");
    cmd.args(["-s", "--max-time", "10", "-o", "-", "-w", "\n%{http_code}"]).args(args).arg(url);
    let out = run_with_timeout(cmd, b"", COMMAND_TIMEOUT);
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let (body, code) = text.rsplit_once('\n').unwrap_or(("", &text));
    (code.trim().parse().unwrap_or_else(|_| panic!("curl {url}: {out:?}")), body.to_string())
}

/// Sends `request` on a raw connection and returns everything answered.
fn raw_http(addr: SocketAddr, request: &[u8]) -> String {
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(secs(10))).unwrap();
    s.write_all(request).unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).unwrap();
    out
}

fn send(ph: &Posthorn, to: &[&str], subject: &str) {
    let msg = message(&[("From", "app@ok.test"), ("Subject", subject)], "hello\n");
    smtplib_send(ph.smtp_addr(), "app@ok.test", to, &msg).unwrap_or_else(|e| panic!("{to:?}: {e}"));
}

#[test]
fn counters_follow_the_traffic() {
    let dir = tempfile::tempdir().unwrap();
    let good = Sink::start();
    let bad = Sink::start_with(&["-f", "RCPT"]);
    let ph = hub(dir.path(), good.addr(), bad.addr(), free_addr());
    let addr = metrics_addr(&ph);

    let before = scrape(addr);
    assert_eq!(before.value("posthorn_up", &[]), 1.0);
    let info = [("version", env!("CARGO_PKG_VERSION")), ("role", "hub")];
    assert_eq!(before.value("posthorn_build_info", &info), 1.0);
    assert_eq!(before.value("posthorn_messages_accepted_total", &[("door", "smtp")]), 0.0);
    assert_eq!(before.types["posthorn_messages_accepted"], "counter");
    assert_eq!(before.types["posthorn_queue_messages"], "gauge");
    assert_eq!(before.types["posthorn_smtp_rejections"], "counter");

    // Two commands refused with 5xx; the transactions below are all accepted.
    let mut client = RawSmtp::connect(ph.smtp_addr()).unwrap();
    client.ehlo("raw.test").unwrap();
    assert_eq!(client.cmd("RCPT TO:<a@ok.test>").unwrap().code, 503, "RCPT before MAIL");
    assert_eq!(client.cmd("XYZZY").unwrap().code, 500, "unknown command");
    assert_eq!(client.cmd("NOOP").unwrap().code, 250);
    client.quit().unwrap();

    send(&ph, &["a@ok.test"], "one");
    send(&ph, &["b@ok.test", "c@dead.test"], "two");
    send(&ph, &["d@dead.test"], "three");
    send(&ph, &["x@bad.test"], "four");
    let out = ph.sendmail(&["-i", "-f", "app@ok.test", "e@ok.test"], b"Subject: five\n\nby sendmail\n");
    assert!(out.status.success(), "sendmail: {out:?}");

    // a, b, e, and the bounce for x (to app@ok.test) reach the good sink.
    let got = good.wait_for_parsed(4, secs(30));
    let mut rcpts: Vec<String> = got.iter().flat_map(|d| d.rcpt_to.clone()).collect();
    rcpts.sort();
    assert_eq!(rcpts, ["a@ok.test", "app@ok.test", "b@ok.test", "e@ok.test"], "log:\n{}", ph.log());

    let rcpt = |s: &Scrape, outcome| s.value("posthorn_recipients_total", &[("outcome", outcome)]);
    let mut now = scrape(addr);
    let settled = wait_until(secs(30), || {
        now = scrape(addr);
        rcpt(&now, "delivered") == 4.0
            && rcpt(&now, "deferred") == 2.0
            && now.value("posthorn_smtp_connections", &[]) == 0.0
            && now.value("posthorn_queue_messages", &[("state", "active")]) == 0.0
    });
    assert!(settled, "never settled: {:#?}\nlog:\n{}", now.samples, ph.log());
    assert_eq!(rcpt(&now, "bounced"), 1.0);
    assert_eq!(rcpt(&now, "expired"), 0.0);
    assert_eq!(now.value("posthorn_messages_accepted_total", &[("door", "smtp")]), 4.0);
    assert_eq!(now.value("posthorn_messages_accepted_total", &[("door", "local")]), 1.0);
    assert_eq!(now.value("posthorn_messages_accepted_total", &[("door", "notice")]), 1.0);
    for door in ["submission", "reinject"] {
        assert_eq!(now.value("posthorn_messages_accepted_total", &[("door", door)]), 0.0, "{door}");
    }
    assert_eq!(now.value("posthorn_smtp_sessions_total", &[]), 5.0);
    assert_eq!(now.value("posthorn_smtp_connections_refused_total", &[]), 0.0);
    assert_eq!(now.value("posthorn_smtp_rejections_total", &[("class", "5xx")]), 2.0);
    assert_eq!(now.value("posthorn_smtp_rejections_total", &[("class", "4xx")]), 0.0);
    assert_eq!(now.value("posthorn_scheduler_up", &[]), 1.0);
    let queue = |s: &Scrape, state| s.value("posthorn_queue_messages", &[("state", state)]);
    assert_eq!([queue(&now, "incoming"), queue(&now, "deferred"), queue(&now, "hold")], [0.0, 2.0, 0.0]);
    assert_eq!(ph.queued_count(), 2, "the spool agrees");
    let age = now.value("posthorn_queue_oldest_message_age_seconds", &[]);
    assert!((0.0..120.0).contains(&age), "{age}");

    // Hold one deferred message, then delete it from hold.
    let line = ph.log_lines(&["to=<d@dead.test>", "status=deferred"]).remove(0);
    let id = queue_id_of(&line).unwrap();
    let out = ph.run_as("postsuper", &["-h", &id], b"");
    assert!(out.status.success(), "postsuper -h: {out:?}");
    let held = scrape(addr);
    assert_eq!([queue(&held, "deferred"), queue(&held, "hold")], [1.0, 1.0], "{:#?}", held.samples);
    let out = ph.run_as("postsuper", &["-d", &id], b"");
    assert!(out.status.success(), "postsuper -d: {out:?}");
    let gone = scrape(addr);
    assert_eq!([queue(&gone, "deferred"), queue(&gone, "hold")], [1.0, 0.0], "{:#?}", gone.samples);
}

#[test]
fn http_answers_strictly_and_keeps_serving() {
    let dir = tempfile::tempdir().unwrap();
    let good = Sink::start();
    let ph = hub(dir.path(), good.addr(), free_addr(), free_addr());
    let addr = metrics_addr(&ph);
    let url = |path: &str| format!("http://{addr}{path}");

    assert_eq!(curl(&[], &url("/health")), (200, "ok\n".into()));
    assert_eq!(curl(&[], &url("/nope")).0, 404);
    assert_eq!(curl(&["-X", "POST"], &url("/metrics")).0, 405);
    let head = raw_http(addr, b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n");
    assert!(head.contains("\r\nConnection: close\r\n"), "{head}");

    // A client that says nothing holds its own connection only.
    let silent = TcpStream::connect(addr).unwrap();
    let garbage = raw_http(addr, b"HELO there, this is not HTTP\r\n\r\n");
    assert!(garbage.starts_with("HTTP/1.1 400 "), "{garbage}");
    let binary = raw_http(addr, b"\x16\x03\x01\x00\xa5\x01\x00\x00\xa1\x03\x03");
    assert!(binary.starts_with("HTTP/1.1 400 "), "{binary}");

    assert_eq!(curl(&[], &url("/health")), (200, "ok\n".into()));
    send(&ph, &["a@ok.test"], "still serving");
    good.wait_for_parsed(1, secs(30));
    let s = scrape(addr);
    assert_eq!(s.value("posthorn_messages_accepted_total", &[("door", "smtp")]), 1.0);
    drop(silent);
}

#[test]
fn health_names_an_unwritable_spool() {
    let dir = tempfile::tempdir().unwrap();
    let ph = hub(dir.path(), free_addr(), free_addr(), free_addr());
    let addr = metrics_addr(&ph);
    let url = format!("http://{addr}/health");
    assert_eq!(curl(&[], &url), (200, "ok\n".into()));

    // A file where the spool's tmp/ directory was: nothing can be created
    // there, even by root (permissions would not stop root).
    let tmp = ph.spool_dir().join("tmp");
    fs::rename(&tmp, ph.spool_dir().join("tmp.away")).unwrap();
    fs::write(&tmp, b"").unwrap();
    let (code, body) = curl(&[], &url);
    assert_eq!(code, 503, "{body}");
    assert!(body.starts_with("spool not writable: "), "{body}");

    fs::remove_file(&tmp).unwrap();
    fs::rename(ph.spool_dir().join("tmp.away"), &tmp).unwrap();
    assert_eq!(curl(&[], &url), (200, "ok\n".into()));
}

#[test]
fn no_endpoint_unless_configured() {
    let ph = Posthorn::start(&satellite_config(&[free_addr()]));
    assert!(!ph.log().contains("listening metrics="), "{}", ph.log());
}

#[test]
fn failed_auth_attempts_are_counted() {
    let ca = TestCa::new("posthorn test CA");
    let cert = ca.issue("hub", &["127.0.0.1"]);
    let dir = tempfile::tempdir().unwrap();
    let users = dir.path().join("users");
    posthorn::auth::set_password(&users, "alice", b"wonderland").unwrap();
    let base = "role = \"hub\"\n\n[smtp]\nlisten = [\"127.0.0.1:0\"]\n";
    let ph = Posthorn::start(&with_lines(
        &format!("{base}{}", cert.tls_section()),
        &[
            &format!("auth.users = {}", toml_str(&users.display().to_string())),
            "auth.failure_delay = \"0s\"",
            "auth.max_failures = 2",
            "metrics.listen = \"127.0.0.1:0\"",
        ],
    ));
    let addr = metrics_addr(&ph);
    let failures = |s: &Scrape, mechanism, reason| {
        s.value("posthorn_auth_failures_total", &[("mechanism", mechanism), ("reason", reason)])
    };
    let before = scrape(addr);
    assert_eq!(before.types["posthorn_auth_failures"], "counter");
    assert_eq!(failures(&before, "PLAIN", "credentials"), 0.0);

    // A wrong password, then the right one (which clears the client's
    // failures for the limit, not the count).
    let codes = |steps: &[(String, u16, String)]| steps.iter().map(|(s, c, _)| format!("{s}:{c}")).collect::<Vec<_>>();
    let steps = smtplib_steps(
        ph.smtp_addr(),
        &ca.ca_path(),
        &[TlsStep::StartTls, TlsStep::Plain("alice", "one"), TlsStep::Plain("alice", "wonderland")],
    );
    assert_eq!(codes(&steps)[3..], ["auth:535", "auth:235"], "{steps:?}");
    // A wrong password by LOGIN, step by step, and another by PLAIN.
    let steps = smtplib_steps(
        ph.smtp_addr(),
        &ca.ca_path(),
        &[
            TlsStep::StartTls,
            TlsStep::Cmd("AUTH LOGIN"),
            TlsStep::Cmd("YWxpY2U="),
            TlsStep::Cmd("bm9wZQ=="),
            TlsStep::Plain("alice", "two"),
        ],
    );
    assert_eq!(codes(&steps)[3..], ["AUTH LOGIN:334", "YWxpY2U=:334", "bm9wZQ==:535", "auth:535"], "{steps:?}");
    let s = scrape(addr);
    assert_eq!(failures(&s, "PLAIN", "credentials"), 2.0, "{:#?}", s.samples);
    assert_eq!(failures(&s, "LOGIN", "credentials"), 1.0);
    assert_eq!(failures(&s, "PLAIN", "limited"), 0.0);

    // Two failures in a row from this address: now even the right password
    // is refused.
    let steps =
        smtplib_steps(ph.smtp_addr(), &ca.ca_path(), &[TlsStep::StartTls, TlsStep::Plain("alice", "wonderland")]);
    assert_eq!(codes(&steps)[3..], ["auth:454"], "{steps:?}");
    let s = scrape(addr);
    assert_eq!(failures(&s, "PLAIN", "credentials"), 2.0);
    assert_eq!(failures(&s, "LOGIN", "credentials"), 1.0);
    assert_eq!(failures(&s, "PLAIN", "limited"), 1.0);
    assert_eq!(failures(&s, "LOGIN", "limited"), 0.0);
    assert_eq!(ph.log_lines(&["SASL", "authentication failed"]).len(), 3, "{}", ph.log());
}

#[test]
fn delivery_delays_by_class_deferrals_by_reason_and_the_oldest_age() {
    let dir = tempfile::tempdir().unwrap();
    let good = Sink::start();
    let soft = Sink::start_with(&["-r", "RCPT"]);
    let dead = free_addr();
    let dns = DnsServer::start(vec![
        DnsRecord::mx("mx.test", 10, "mx1.mx.test"),
        DnsRecord::a(
            "mx1.mx.test",
            match good.addr().ip() {
                std::net::IpAddr::V4(ip) => ip,
                other => panic!("the sink is on {other}"),
            },
        ),
    ]);
    let table = dir.path().join("transport");
    let hop = |a: SocketAddr| format!("relay:[{}]:{}", a.ip(), a.port());
    let text = format!("ok.test {}\nsoft.test {}\ndead.test {}\n", hop(good.addr()), hop(soft.addr()), hop(dead));
    fs::write(&table, text).unwrap();
    let mail = dir.path().join("mail");
    let base =
        "role = \"hub\"\n\n[smtp]\nlisten = [\"127.0.0.1:0\"]\n\n[relay]\ntls = \"none\"\nconnect_timeout = \"5s\"\n";
    let mut ph = Posthorn::start(&with_lines(
        base,
        &[
            &format!("deliver.transport_maps = [{}]", toml_str(&format!("hash:{}", table.display()))),
            &dns.config_line(),
            &format!("deliver.mx_port = {}", good.addr().port()),
            "access.local_domains = [\"local.test\"]",
            &format!("deliver.maildir_root = {}", toml_str(&format!("{}/{{domain}}/{{user}}", mail.display()))),
            "queue.retry_min = \"60s\"",
            "queue.retry_max = \"60s\"",
            "metrics.listen = \"127.0.0.1:0\"",
        ],
    ));
    // One message before a restart: its id leases ids an hour ahead, and
    // the restarted daemon's ids start there, ahead of the clock.
    send(&ph, &["first@ok.test"], "before the restart");
    good.wait_for_parsed(1, secs(30));
    ph.restart();
    let addr = metrics_addr(&ph);

    send(&ph, &["a@ok.test"], "relay");
    send(&ph, &["b@mx.test"], "mx");
    send(&ph, &["c@local.test"], "maildir");
    send(&ph, &["d@soft.test"], "4xx");
    send(&ph, &["e@dead.test"], "connect");
    let defer = |s: &Scrape, reason| s.value("posthorn_deferrals_total", &[("reason", reason)]);
    let count = |s: &Scrape, class| s.value("posthorn_delivery_delay_seconds_count", &[("class", class)]);
    let mut now = scrape(addr);
    let settled = wait_until(secs(30), || {
        now = scrape(addr);
        defer(&now, "connect") == 1.0 && defer(&now, "4xx") == 1.0 && count(&now, "maildir") == 1.0
    });
    assert!(settled, "never settled: {:#?}\nlog:\n{}", now.samples, ph.log());
    // The destination is down now: the next message for it is not tried.
    send(&ph, &["f@dead.test"], "destination down");
    let settled = wait_until(secs(30), || {
        now = scrape(addr);
        defer(&now, "destination_down") == 1.0
            && now.value("posthorn_recipients_total", &[("outcome", "delivered")]) == 3.0
    });
    assert!(settled, "never settled: {:#?}\nlog:\n{}", now.samples, ph.log());

    // Delivered mail is where the histogram says: two at the sink (one by
    // the transport table, one by MX), one in the Maildir.
    let got = good.wait_for_parsed(3, secs(30));
    let mut rcpts: Vec<String> = got.iter().flat_map(|d| d.rcpt_to.clone()).collect();
    rcpts.sort();
    assert_eq!(rcpts, ["a@ok.test", "b@mx.test", "first@ok.test"]);
    assert!(wait_until(secs(10), || fs::read_dir(mail.join("local.test/c/new")).is_ok_and(|d| d.count() == 1)));
    assert_eq!(now.types["posthorn_delivery_delay_seconds"], "histogram");
    for (class, n) in [("relay", 1.0), ("mx", 1.0), ("maildir", 1.0), ("filter", 0.0)] {
        assert_eq!(count(&now, class), n, "{class}: {:#?}", now.samples);
        let all = now.value("posthorn_delivery_delay_seconds_bucket", &[("class", class), ("le", "+Inf")]);
        assert_eq!(all, n, "{class}");
        let sum = now.value("posthorn_delivery_delay_seconds_sum", &[("class", class)]);
        // Above zero although the ids are an hour ahead; far below a minute.
        assert!(n == 0.0 || (sum > 0.0 && sum < 60.0), "{class}: sum {sum}");
        let day = now.value("posthorn_delivery_delay_seconds_bucket", &[("class", class), ("le", "86400")]);
        assert_eq!(day, n, "{class}");
    }
    for (reason, n) in [("4xx", 1.0), ("connect", 1.0), ("destination_down", 1.0), ("dns", 0.0), ("local", 0.0)] {
        assert_eq!(defer(&now, reason), n, "{reason}: {:#?}", now.samples);
    }
    assert_eq!(now.value("posthorn_recipients_total", &[("outcome", "deferred")]), 3.0);

    // The deferred mail ages while it waits (whole seconds).
    assert!(wait_until(secs(10), || {
        now = scrape(addr);
        now.value("posthorn_queue_oldest_message_age_seconds", &[]) >= 2.0
    }));
    let age = now.value("posthorn_queue_oldest_message_age_seconds", &[]);
    assert!(age < 60.0, "{age}");
    assert_eq!(now.value("posthorn_queue_messages", &[("state", "deferred")]), 3.0);
}
