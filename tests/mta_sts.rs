//! MTA-STS (RFC 8461) and TLS reporting (RFC 8460) end to end: a posthorn
//! hub delivers by MX (the test DNS server serves MX, A and `_mta-sts` TXT
//! records) to another posthorn hub with a certificate from a test CA; a
//! Python HTTPS server on `127.0.0.N:443`, certificate from the same CA,
//! serves the policies of `mta-sts.DOMAIN` by the Host header.
//!
//! 1. `enforce`: an MX host outside the policy is skipped for one that is
//!    in it (verified TLS); a domain whose only MX is outside is deferred,
//!    naming MTA-STS; `route explain` and `posthorn tls report` show both.
//! 2. `enforce` towards a certificate for another name: deferred, never
//!    sent in clear, reported as `certificate-host-mismatch`.
//! 3. `testing`: delivered to an MX outside the policy, and the failure is
//!    in the report.
//! 4. The cache: with the HTTPS server gone and posthorn restarted, the
//!    cached policy still refuses the MX outside it.
//! 5. A changed TXT id makes posthorn fetch again; a fetch that then fails
//!    falls back to the cached policy and is reported.
//! 6. A policy server whose certificate is not trusted, or that redirects,
//!    gives no policy (delivered as without MTA-STS), and is reported.

mod harness;

use harness::*;
use std::fs;
use std::io::{BufRead, BufReader};
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};

const MESSAGE: &str = "Subject: mta-sts test\n\nunder the domain's policy\n";

/// The policy server: Python's http.server with ssl, on `ip:443`, serving
/// `<root>/<host>` for `/.well-known/mta-sts.txt` and logging each request
/// as `host path` in `<root>/requests`.
struct PolicyServer {
    child: Child,
    root: tempfile::TempDir,
}

const SERVER: &str = r#"
import http.server, os, ssl, sys
ip, cert, key, root = sys.argv[1:5]
class Handler(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        host = (self.headers.get("Host") or "").split(":")[0]
        with open(os.path.join(root, "requests"), "a") as f:
            f.write(host + " " + self.path + "\n")
        path = os.path.join(root, "policies", host)
        if self.path != "/.well-known/mta-sts.txt" or not os.path.exists(path):
            self.send_response(404)
            self.end_headers()
            return
        body = open(path, "rb").read()
        if body.startswith(b"REDIRECT "):
            self.send_response(301)
            self.send_header("Location", body[9:].decode().strip())
            self.end_headers()
            return
        self.send_response(200)
        self.send_header("Content-Type", "text/plain")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)
    def log_message(self, *args):
        pass
server = http.server.ThreadingHTTPServer((ip, 443), Handler)
context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
context.load_cert_chain(cert, key)
server.socket = context.wrap_socket(server.socket, server_side=True)
print("ready", flush=True)
server.serve_forever()
"#;

impl PolicyServer {
    /// Serves with a certificate from `ca` for `mta-sts.DOMAIN` of each of
    /// `domains`.
    fn start(ip: Ipv4Addr, ca: &TestCa, domains: &[&str]) -> PolicyServer {
        let names: Vec<String> = domains.iter().map(|d| format!("mta-sts.{d}")).collect();
        let names: Vec<&str> = names.iter().map(String::as_str).collect();
        let cert = ca.issue(&format!("https-{ip}"), &names);
        let root = tempfile::tempdir().unwrap();
        fs::create_dir_all(root.path().join("policies")).unwrap();
        let mut cmd = Command::new("python3");
        cmd.args(["-c", SERVER, &ip.to_string()])
            .arg(&cert.cert)
            .arg(&cert.key)
            .arg(root.path())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit());
        die_with_parent(&mut cmd);
        let mut child = cmd.spawn().expect("python3 runs");
        let mut line = String::new();
        BufReader::new(child.stdout.take().unwrap()).read_line(&mut line).unwrap();
        assert_eq!(line.trim(), "ready", "the HTTPS policy server did not start on {ip}:443");
        PolicyServer { child, root }
    }

    /// Serves `policy` for `domain`.
    fn set(&self, domain: &str, policy: &str) {
        fs::write(self.root.path().join("policies").join(format!("mta-sts.{domain}")), policy).unwrap();
    }

    /// The requests for `domain`'s policy so far.
    fn fetches(&self, domain: &str) -> usize {
        let log = fs::read_to_string(self.root.path().join("requests")).unwrap_or_default();
        log.lines().filter(|l| *l == format!("mta-sts.{domain} /.well-known/mta-sts.txt")).count()
    }

    fn stop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for PolicyServer {
    fn drop(&mut self) {
        self.stop();
    }
}

fn policy(mode: &str, mx: &[&str]) -> String {
    let mut text = format!("version: STSv1\r\nmode: {mode}\r\n");
    for m in mx {
        text.push_str(&format!("mx: {m}\r\n"));
    }
    text.push_str("max_age: 86400\r\n");
    text
}

/// The DNS records of `domain`: its MX hosts (all on 127.0.0.1), its
/// `_mta-sts` TXT record with `id`, and `mta-sts.DOMAIN` on `https`.
fn zone(domain: &str, mx: &[&str], id: &str, https: Ipv4Addr) -> Vec<DnsRecord> {
    let mut records = vec![
        DnsRecord::txt(&format!("_mta-sts.{domain}"), &format!("v=STSv1; id={id}")),
        DnsRecord::a(&format!("mta-sts.{domain}"), https),
    ];
    for (i, host) in mx.iter().enumerate() {
        records.push(DnsRecord::mx(domain, 10 * (i as u16 + 1), host));
        records.push(DnsRecord::a(host, Ipv4Addr::new(127, 0, 0, 1)));
    }
    records
}

/// The receiving hub: `domains` into Maildirs under `mail`, STARTTLS with
/// a certificate for `names`.
fn receiver(mail: &Path, ca: &TestCa, names: &[&str], domains: &[&str]) -> Posthorn {
    let cert = ca.issue(&format!("mx-{}", names[0]), names);
    let list: Vec<String> = domains.iter().map(|d| format!("\"{d}\"")).collect();
    Posthorn::start(&format!(
        "role = \"hub\"\n[smtp]\nlisten = [\"127.0.0.1:0\"]\n[access]\nlocal_domains = [{}]\n[deliver]\nmaildir_root = {}\n{}",
        list.join(", "),
        toml_str(&format!("{}/{{domain}}/{{user}}", mail.display())),
        cert.tls_section()
    ))
}

/// The sending hub: MX lookups through `dns`, MX port `port`, trusting
/// `ca`, MTA-STS and TLS reporting on.
fn sender(dns: &DnsServer, port: u16, ca: &TestCa) -> Posthorn {
    Posthorn::start(&format!(
        "role = \"hub\"\n[smtp]\nlisten = [\"127.0.0.1:0\"]\n[deliver]\ndns_servers = [\"{}\"]\nmx_port = {port}\n[queue]\nretry_min = \"1s\"\nretry_max = \"2s\"\n[outbound_tls]\nca = {}\n[mta_sts]\nenabled = true\n[tls_report]\nenabled = true\n",
        dns.addr(),
        toml_str(&ca.ca_path().display().to_string())
    ))
}

fn maildir(mail: &Path, domain: &str, user: &str) -> Vec<PathBuf> {
    let new = mail.join(domain).join(user).join("new");
    fs::read_dir(&new).map(|d| d.flatten().map(|e| e.path()).collect()).unwrap_or_default()
}

/// `posthorn tls report` of the day the sender recorded, parsed.
fn report(tx: &Posthorn, domain: &str) -> serde_json::Value {
    let days: Vec<String> = fs::read_dir(tx.spool_dir().join("tls-report"))
        .map(|d| d.flatten().map(|e| e.file_name().to_string_lossy().into_owned()).collect())
        .unwrap_or_default();
    let day = days.iter().max().expect("a day file in tls-report/").clone();
    let out = tx.command(&["tls", "report", "--date", &day, "--domain", domain], b"");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    serde_json::from_slice(&out.stdout).unwrap_or_else(|e| panic!("{e}: {}", String::from_utf8_lossy(&out.stdout)))
}

/// The only policy entry of a report, for `domain`.
fn entry(report: &serde_json::Value, domain: &str) -> serde_json::Value {
    let policies = report["policies"].as_array().expect("policies[]");
    assert_eq!(policies.len(), 1, "{report:#}");
    assert_eq!(policies[0]["policy"]["policy-domain"], domain, "{report:#}");
    policies[0].clone()
}

#[test]
fn enforce_uses_only_the_policys_mx_hosts() {
    let https = Ipv4Addr::new(127, 0, 0, 161);
    let ca = TestCa::new("posthorn test CA");
    let web = PolicyServer::start(https, &ca, &["a.test", "b.test"]);
    web.set("a.test", &policy("enforce", &["mx.good.test"]));
    web.set("b.test", &policy("enforce", &["*.good.test"]));
    let mail = tempfile::tempdir().unwrap();
    // The certificate is valid for both names: only the policy keeps the
    // better-preference mx.evil.test out.
    let rx = receiver(mail.path(), &ca, &["mx.good.test", "mx.evil.test"], &["a.test", "b.test"]);
    let mut records = zone("a.test", &["mx.evil.test", "mx.good.test"], "1", https);
    // (mx.evil.test's A record is in a.test's part already.)
    records.extend([
        DnsRecord::txt("_mta-sts.b.test", "v=STSv1; id=1"),
        DnsRecord::a("mta-sts.b.test", https),
        DnsRecord::mx("b.test", 10, "mx.evil.test"),
    ]);
    let dns = DnsServer::start(records);
    let tx = sender(&dns, rx.smtp_addr().port(), &ca);

    smtplib_send(tx.smtp_addr(), "cron@hub.test", &["user@a.test"], MESSAGE).unwrap();
    assert!(wait_until(secs(20), || !maildir(mail.path(), "a.test", "user").is_empty()), "{}", tx.log());
    let sent = tx.log_lines(&["to=<user@a.test>", "status=sent"]);
    assert!(sent.len() == 1 && sent[0].contains("relay=mx.good.test[127.0.0.1]"), "{}", tx.log());
    assert!(tx.log().contains("Verified TLS connection established to mx.good.test"), "{}", tx.log());
    assert!(tx.log().contains("MX host mx.evil.test of a.test is not in its MTA-STS policy"), "{}", tx.log());

    smtplib_send(tx.smtp_addr(), "cron@hub.test", &["user@b.test"], MESSAGE).unwrap();
    assert!(tx.wait_for_log("to=<user@b.test>", secs(15)), "{}", tx.log());
    let line = tx.log_lines(&["to=<user@b.test>", "status=deferred"]).remove(0);
    assert!(line.contains("MTA-STS policy of b.test (enforce (id 1, fetched)) allows none of its MX hosts"), "{line}");
    assert!(tx.wait_for_queued(1, secs(5)), "the message waits");
    assert!(maildir(mail.path(), "b.test", "user").is_empty());

    let out = tx.command(&["route", "explain", "user@a.test"], b"");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("mta-sts=enforce (id 1, cached) mx=mx.good.test, tls=verify"), "{text}");

    let a = entry(&report(&tx, "a.test"), "a.test");
    assert_eq!(a["policy"]["policy-type"], "sts");
    assert_eq!(a["policy"]["mx-host"][0], "mx.good.test");
    assert_eq!(a["policy"]["policy-string"][1], "mode: enforce");
    assert_eq!(a["summary"]["total-successful-session-count"], 1, "{a:#}");
    assert_eq!(a["summary"]["total-failure-session-count"], 0, "{a:#}");
    let b = entry(&report(&tx, "b.test"), "b.test");
    assert!(b["summary"]["total-failure-session-count"].as_u64().unwrap() >= 1, "{b:#}");
    assert_eq!(b["failure-details"][0]["result-type"], "validation-failure", "{b:#}");
    assert_eq!(b["failure-details"][0]["receiving-mx-hostname"], "mx.evil.test", "{b:#}");
}

#[test]
fn enforce_defers_a_certificate_for_another_name() {
    let https = Ipv4Addr::new(127, 0, 0, 162);
    let ca = TestCa::new("posthorn test CA");
    let web = PolicyServer::start(https, &ca, &["c.test"]);
    web.set("c.test", &policy("enforce", &["mx.c.test"]));
    let mail = tempfile::tempdir().unwrap();
    let rx = receiver(mail.path(), &ca, &["mx.elsewhere.test"], &["c.test"]);
    let dns = DnsServer::start(zone("c.test", &["mx.c.test"], "7", https));
    let tx = sender(&dns, rx.smtp_addr().port(), &ca);
    smtplib_send(tx.smtp_addr(), "cron@hub.test", &["user@c.test"], MESSAGE).unwrap();
    assert!(tx.wait_for_log("status=deferred", secs(15)), "{}", tx.log());
    let line = tx.log_lines(&["status=deferred"]).remove(0);
    assert!(line.contains("TLS") && line.contains("mx.c.test"), "{line}");
    assert!(tx.wait_for_queued(1, secs(5)), "the message waits");
    assert!(!rx.log().contains("mail="), "nothing sent, in clear or not:\n{}", rx.log());
    assert!(maildir(mail.path(), "c.test", "user").is_empty());
    let c = entry(&report(&tx, "c.test"), "c.test");
    assert_eq!(c["summary"]["total-successful-session-count"], 0, "{c:#}");
    assert_eq!(c["failure-details"][0]["result-type"], "certificate-host-mismatch", "{c:#}");
    assert_eq!(c["failure-details"][0]["receiving-mx-hostname"], "mx.c.test", "{c:#}");
    assert_eq!(c["failure-details"][0]["receiving-ip"], "127.0.0.1", "{c:#}");
    assert_eq!(c["failure-details"][0]["sending-mta-ip"], "127.0.0.1", "{c:#}");
}

#[test]
fn testing_delivers_and_reports_the_failure() {
    let https = Ipv4Addr::new(127, 0, 0, 163);
    let ca = TestCa::new("posthorn test CA");
    let web = PolicyServer::start(https, &ca, &["d.test"]);
    web.set("d.test", &policy("testing", &["mx.good.test"]));
    let mail = tempfile::tempdir().unwrap();
    let rx = receiver(mail.path(), &ca, &["mx.evil.test"], &["d.test"]);
    let dns = DnsServer::start(zone("d.test", &["mx.evil.test"], "3", https));
    let tx = sender(&dns, rx.smtp_addr().port(), &ca);
    smtplib_send(tx.smtp_addr(), "cron@hub.test", &["user@d.test"], MESSAGE).unwrap();
    assert!(wait_until(secs(20), || !maildir(mail.path(), "d.test", "user").is_empty()), "{}", tx.log());
    assert_eq!(web.fetches("d.test"), 1);
    let d = entry(&report(&tx, "d.test"), "d.test");
    assert_eq!(d["policy"]["policy-type"], "sts");
    assert_eq!(d["policy"]["policy-string"][1], "mode: testing");
    assert_eq!(d["summary"]["total-successful-session-count"], 0, "{d:#}");
    assert_eq!(d["summary"]["total-failure-session-count"], 1, "{d:#}");
    assert_eq!(d["failure-details"][0]["result-type"], "validation-failure", "{d:#}");
    assert_eq!(d["failure-details"][0]["receiving-mx-hostname"], "mx.evil.test", "{d:#}");
    assert_eq!(d["failure-details"][0]["failure-reason-code"], "mx-not-in-policy", "{d:#}");
}

#[test]
fn the_cached_policy_outlives_its_server_and_a_restart() {
    let https = Ipv4Addr::new(127, 0, 0, 164);
    let ca = TestCa::new("posthorn test CA");
    let mut web = PolicyServer::start(https, &ca, &["e.test"]);
    web.set("e.test", &policy("enforce", &["mx.good.test"]));
    let mail = tempfile::tempdir().unwrap();
    let rx = receiver(mail.path(), &ca, &["mx.evil.test"], &["e.test"]);
    let dns = DnsServer::start(zone("e.test", &["mx.evil.test"], "1", https));
    let mut tx = sender(&dns, rx.smtp_addr().port(), &ca);
    smtplib_send(tx.smtp_addr(), "cron@hub.test", &["first@e.test"], MESSAGE).unwrap();
    assert!(tx.wait_for_log("MTA-STS policy of e.test", secs(15)), "{}", tx.log());
    assert_eq!(web.fetches("e.test"), 1);
    assert!(tx.spool_dir().join("mta-sts").join("e.test").exists());

    web.stop();
    tx.restart();
    let mark = tx.log_mark();
    smtplib_send(tx.smtp_addr(), "cron@hub.test", &["second@e.test"], MESSAGE).unwrap();
    assert!(tx.wait_for_log_since(mark, "to=<second@e.test>", secs(15)), "{}", tx.log());
    let line = tx.log_lines(&["to=<second@e.test>", "status=deferred"]).remove(0);
    assert!(line.contains("MTA-STS policy of e.test (enforce (id 1, cached)) allows none"), "{line}");
    assert!(maildir(mail.path(), "e.test", "second").is_empty() && maildir(mail.path(), "e.test", "first").is_empty());
    assert!(!rx.log().contains("mail="), "{}", rx.log());
}

#[test]
fn a_new_id_is_fetched_and_a_failed_fetch_falls_back_to_the_cache() {
    let https = Ipv4Addr::new(127, 0, 0, 165);
    let ca = TestCa::new("posthorn test CA");
    let mut web = PolicyServer::start(https, &ca, &["f.test"]);
    web.set("f.test", &policy("testing", &["mx.good.test"]));
    let mail = tempfile::tempdir().unwrap();
    let rx = receiver(mail.path(), &ca, &["mx.evil.test"], &["f.test"]);
    let dns = DnsServer::start(zone("f.test", &["mx.evil.test"], "1", https));
    let mut tx = sender(&dns, rx.smtp_addr().port(), &ca);
    smtplib_send(tx.smtp_addr(), "cron@hub.test", &["one@f.test"], MESSAGE).unwrap();
    assert!(wait_until(secs(20), || !maildir(mail.path(), "f.test", "one").is_empty()), "{}", tx.log());
    assert_eq!(web.fetches("f.test"), 1);

    // The domain publishes a new policy under a new id: enforce, and
    // mx.evil.test is out. (A new DNS server; posthorn restarted onto it.)
    web.set("f.test", &policy("enforce", &["mx.good.test"]));
    let dns2 = DnsServer::start(zone("f.test", &["mx.evil.test"], "2", https));
    let restart_on = |tx: &mut Posthorn, from: &DnsServer, to: &DnsServer| {
        let text = fs::read_to_string(tx.config_path()).unwrap();
        fs::write(tx.config_path(), text.replace(&from.addr().to_string(), &to.addr().to_string())).unwrap();
        tx.restart();
    };
    restart_on(&mut tx, &dns, &dns2);
    let mark = tx.log_mark();
    smtplib_send(tx.smtp_addr(), "cron@hub.test", &["two@f.test"], MESSAGE).unwrap();
    assert!(tx.wait_for_log_since(mark, "to=<two@f.test>", secs(15)), "{}", tx.log());
    let line = tx.log_lines(&["to=<two@f.test>", "status=deferred"]).remove(0);
    assert!(line.contains("MTA-STS policy of f.test (enforce (id 2, fetched))"), "{line}");
    assert_eq!(web.fetches("f.test"), 2, "the new id was fetched");

    // id 3, but the server is gone: the cached id 2 policy still holds.
    web.stop();
    let dns3 = DnsServer::start(zone("f.test", &["mx.evil.test"], "3", https));
    restart_on(&mut tx, &dns2, &dns3);
    let mark = tx.log_mark();
    smtplib_send(tx.smtp_addr(), "cron@hub.test", &["three@f.test"], MESSAGE).unwrap();
    assert!(tx.wait_for_log_since(mark, "to=<three@f.test>", secs(20)), "{}", tx.log());
    let line = tx.log_lines(&["to=<three@f.test>", "status=deferred"]).remove(0);
    assert!(line.contains("MTA-STS policy of f.test (enforce (id 2, cached))"), "{line}");
    assert!(tx.log().contains("using the cached policy"), "{}", tx.log());
    assert!(maildir(mail.path(), "f.test", "three").is_empty());
    // One entry per policy id seen that day; the failed fetch is under 2.
    let f = report(&tx, "f.test");
    let fetch_failed = f["policies"].as_array().unwrap().iter().any(|p| {
        p["policy"]["policy-domain"] == "f.test"
            && p["failure-details"].as_array().unwrap().iter().any(|d| d["result-type"] == "sts-policy-fetch-error")
    });
    assert!(fetch_failed, "{f:#}");
}

#[test]
fn an_untrusted_or_redirecting_policy_server_gives_no_policy() {
    let https = Ipv4Addr::new(127, 0, 0, 166);
    let ca = TestCa::new("posthorn test CA");
    let other_ca = TestCa::new("someone else's CA");
    let web = PolicyServer::start(https, &other_ca, &["g.test"]);
    web.set("g.test", &policy("enforce", &["mx.good.test"]));
    let https2 = Ipv4Addr::new(127, 0, 0, 167);
    let web2 = PolicyServer::start(https2, &ca, &["h.test"]);
    web2.set("h.test", "REDIRECT https://mta-sts.h.test/elsewhere.txt");
    let mail = tempfile::tempdir().unwrap();
    let rx = receiver(mail.path(), &ca, &["mx.evil.test"], &["g.test", "h.test"]);
    let mut records = zone("g.test", &["mx.evil.test"], "1", https);
    records.extend([
        DnsRecord::txt("_mta-sts.h.test", "v=STSv1; id=1"),
        DnsRecord::a("mta-sts.h.test", https2),
        DnsRecord::mx("h.test", 10, "mx.evil.test"),
    ]);
    let dns = DnsServer::start(records);
    let tx = sender(&dns, rx.smtp_addr().port(), &ca);
    smtplib_send(tx.smtp_addr(), "cron@hub.test", &["user@g.test", "user@h.test"], MESSAGE).unwrap();
    // Without a policy, both go to mx.evil.test as outbound_tls.level says.
    assert!(
        wait_until(secs(20), || !maildir(mail.path(), "g.test", "user").is_empty()
            && !maildir(mail.path(), "h.test", "user").is_empty()),
        "{}",
        tx.log()
    );
    assert_eq!(web2.fetches("h.test"), 1, "the redirect was not followed");
    assert!(!tx.spool_dir().join("mta-sts").join("g.test").exists(), "nothing cached");
    let kinds = |domain: &str| -> Vec<String> {
        let r = report(&tx, domain);
        r["policies"]
            .as_array()
            .unwrap()
            .iter()
            .flat_map(|p| p["failure-details"].as_array().unwrap().clone())
            .map(|d| d["result-type"].as_str().unwrap().to_string())
            .collect()
    };
    assert_eq!(kinds("g.test"), ["sts-webpki-invalid"]);
    assert_eq!(kinds("h.test"), ["sts-policy-fetch-error"]);
    let g = report(&tx, "g.test");
    let found = g["policies"].as_array().unwrap().iter().any(|p| {
        p["policy"]["policy-type"] == "no-policy-found" && p["summary"]["total-successful-session-count"] == 1
    });
    assert!(found, "the delivery counts under no-policy-found: {g:#}");
}
