//! The outbound TLS policy table (`outbound_tls.policy_maps`, Postfix's
//! `smtp_tls_policy_maps`) end to end: a posthorn hub delivers by MX (the
//! test DNS server) or to a transport-table next hop, and another posthorn
//! hub with a certificate from a test CA receives into a Maildir.
//!
//! 1. `secure match=.dest.test:mx.other.test` and `verify` (the MX host
//!    name): delivered over verified TLS.
//! 2. `secure` with its default names (the domain and below) towards a
//!    certificate for another name: deferred, nothing received;
//!    `posthorn route explain` names the policy and its table line.
//! 3. `encrypt` for a `[host]:port` next hop without STARTTLS: deferred
//!    (4.7-class TLS failure), never sent in clear.
//! 4. `none`: STARTTLS is offered but not used.
//! 5. A smarthost's `[host]:port` entry overrides `relay.tls`, and AUTH
//!    credentials follow it: over unverified TLS they are not sent (the
//!    mail waits), under the entry's `verify` they are.
//! 6. A bad line in the table refuses the start, naming file and line.

mod harness;

use harness::*;
use std::fs;
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};

/// The receiving hub: `dest.test` into Maildirs under `mail`, with `tls`
/// (a `[tls]` section, or nothing for no STARTTLS).
fn receiver(mail: &Path, tls: &str) -> Posthorn {
    Posthorn::start(&format!(
        "role = \"hub\"\n[smtp]\nlisten = [\"127.0.0.1:0\"]\n[access]\nlocal_domains = [\"dest.test\"]\n[deliver]\nmaildir_root = {}\n{tls}",
        toml_str(&format!("{}/{{domain}}/{{user}}", mail.display()))
    ))
}

/// The sending hub: MX lookups through `dns`, MX port `port`, the policy
/// table `policy` (written next to its config), trusting `ca`.
fn sender(dns: &DnsServer, port: u16, policy: &str, ca: &Path, extra: &str) -> (Posthorn, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let table = dir.path().join("tls_policy");
    fs::write(&table, policy).unwrap();
    let hub = Posthorn::start(&format!(
        "role = \"hub\"\n[smtp]\nlisten = [\"127.0.0.1:0\"]\n[deliver]\ndns_servers = [\"{}\"]\nmx_port = {port}\n{extra}\n[queue]\nretry_min = \"1s\"\nretry_max = \"2s\"\n[outbound_tls]\npolicy_maps = [{}]\nca = {}\n",
        dns.addr(),
        toml_str(&format!("texthash:{}", table.display())),
        toml_str(&ca.display().to_string())
    ));
    (hub, dir)
}

const MESSAGE: &str = "Subject: tls policy test\n\nover the policy's TLS\n";

fn dns() -> DnsServer {
    DnsServer::start(vec![
        DnsRecord::mx("dest.test", 10, "mx.dest.test"),
        DnsRecord::a("mx.dest.test", Ipv4Addr::new(127, 0, 0, 1)),
    ])
}

fn maildir(mail: &Path, user: &str) -> Vec<Vec<u8>> {
    let new = mail.join("dest.test").join(user).join("new");
    let mut names: Vec<PathBuf> =
        fs::read_dir(&new).map(|d| d.flatten().map(|e| e.path()).collect()).unwrap_or_default();
    names.sort();
    names.iter().map(|p| fs::read(p).unwrap()).collect()
}

fn delivered(mail: &Path, user: &str) -> Vec<u8> {
    assert!(wait_until(secs(20), || !maildir(mail, user).is_empty()), "nothing delivered to {user}");
    maildir(mail, user).remove(0)
}

#[test]
fn secure_with_match_and_verify_deliver_over_verified_tls() {
    let ca = TestCa::new("posthorn test CA");
    let cert = ca.issue("mx", &["mx.dest.test"]);
    let mail = tempfile::tempdir().unwrap();
    let rx = receiver(mail.path(), &cert.tls_section());
    let dns = dns();
    for (user, policy) in [("a", "dest.test secure match=.dest.test:mx.other.test\n"), ("b", ".test verify\n")] {
        let (tx, _dir) = sender(&dns, rx.smtp_addr().port(), policy, &ca.ca_path(), "");
        smtplib_send(tx.smtp_addr(), "cron@hub.test", &[&format!("{user}@dest.test")], MESSAGE).unwrap();
        let got = delivered(mail.path(), user);
        assert!(header(&got, "Received").unwrap().contains("with ESMTPS"), "{}", String::from_utf8_lossy(&got));
        assert!(
            tx.wait_for_log("Verified TLS connection established to mx.dest.test[127.0.0.1]", secs(5)),
            "{}",
            tx.log()
        );
    }
}

#[test]
fn secure_defers_a_certificate_for_another_name() {
    let ca = TestCa::new("posthorn test CA");
    // Trusted CA, valid for the MX host's DNS name, but `secure` does not
    // take names from (forgeable) MX records: it wants dest.test or below.
    let cert = ca.issue("mx", &["mx.elsewhere.test"]);
    let mail = tempfile::tempdir().unwrap();
    let rx = receiver(mail.path(), &cert.tls_section());
    let dns = dns();
    let (tx, _dir) = sender(&dns, rx.smtp_addr().port(), "dest.test secure\n", &ca.ca_path(), "");
    smtplib_send(tx.smtp_addr(), "cron@hub.test", &["user@dest.test"], MESSAGE).unwrap();
    assert!(tx.wait_for_log("status=deferred", secs(15)), "{}", tx.log());
    let line = tx.log_lines(&["status=deferred"]).remove(0);
    assert!(
        line.contains("TLS failed") && line.contains("certificate not valid for any of: dest.test, *.dest.test"),
        "{line}"
    );
    assert_eq!(tx.queued_count(), 1, "the message waits");
    assert!(!rx.log().contains("mail="), "nothing sent:\n{}", rx.log());
    assert!(maildir(mail.path(), "user").is_empty());
    // `route explain` names the policy and the table line it came from.
    let out = tx.command(&["route", "explain", "user@dest.test"], b"");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("tls=secure (texthash:") && text.contains("tls_policy:1)"), "{text}");
}

#[test]
fn encrypt_to_a_next_hop_without_starttls_defers() {
    let ca = TestCa::new("posthorn test CA");
    let mail = tempfile::tempdir().unwrap();
    let rx = receiver(mail.path(), "");
    let port = rx.smtp_addr().port();
    let dir = tempfile::tempdir().unwrap();
    let transport = dir.path().join("transport");
    fs::write(&transport, format!("dest.test smtp:[127.0.0.1]:{port}\n")).unwrap();
    let extra = format!("transport_maps = [{}]", toml_str(&transport.display().to_string()));
    let dns = dns();
    let (tx, _t) = sender(&dns, 25, &format!("[127.0.0.1]:{port} encrypt\n"), &ca.ca_path(), &extra);
    smtplib_send(tx.smtp_addr(), "cron@hub.test", &["user@dest.test"], MESSAGE).unwrap();
    assert!(tx.wait_for_log("status=deferred", secs(15)), "{}", tx.log());
    let line = tx.log_lines(&["status=deferred"]).remove(0);
    assert!(line.contains("required by policy, but STARTTLS is not offered"), "{line}");
    assert!(!rx.log().contains("mail="), "never sent in clear:\n{}", rx.log());
    assert!(maildir(mail.path(), "user").is_empty());
}

#[test]
fn none_does_not_use_starttls_even_when_offered() {
    let ca = TestCa::new("posthorn test CA");
    let cert = ca.issue("mx", &["mx.dest.test"]);
    let mail = tempfile::tempdir().unwrap();
    let rx = receiver(mail.path(), &cert.tls_section());
    let dns = dns();
    let (tx, _dir) = sender(&dns, rx.smtp_addr().port(), ".dest.test verify\ndest.test none\n", &ca.ca_path(), "");
    smtplib_send(tx.smtp_addr(), "cron@hub.test", &["user@dest.test"], MESSAGE).unwrap();
    let got = delivered(mail.path(), "user");
    let received = header(&got, "Received").unwrap();
    assert!(received.contains("with ESMTP") && !received.contains("ESMTPS"), "{received}");
    assert!(!tx.log().contains("TLS connection established"), "{}", tx.log());
}

#[test]
fn a_bad_policy_line_refuses_the_start() {
    let dir = tempfile::tempdir().unwrap();
    let table = dir.path().join("tls_policy");
    fs::write(&table, "example.com secure\n[mx.example.org]:25 fingerprint\n").unwrap();
    let config = format!(
        "role = \"hub\"\n[smtp]\nlisten = [\"127.0.0.1:0\"]\n[outbound_tls]\npolicy_maps = [{}]\n",
        toml_str(&table.display().to_string())
    );
    let err = Posthorn::try_start(&config).err().expect("the start is refused");
    assert!(err.contains("tls_policy") && err.contains('2') && err.contains("`fingerprint` is not supported"), "{err}");
}

#[test]
fn a_smarthost_entry_overrides_relay_tls_and_governs_auth() {
    let ca = TestCa::new("posthorn test CA");
    let cert = ca.issue("mx", &["127.0.0.1"]);
    let mail = tempfile::tempdir().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let users = dir.path().join("users");
    posthorn::auth::set_password(&users, "vm12", b"fleet-secret").unwrap();
    // The hub trusts no network: only AUTH lets the satellite relay.
    let hub = {
        let text = format!(
            "role = \"hub\"\n[smtp]\nlisten = [\"127.0.0.1:0\"]\n[access]\ntrusted_networks = []\nlocal_domains = [\"dest.test\"]\n[deliver]\nmaildir_root = {}\n{}\n[auth]\nusers = {}\n",
            toml_str(&format!("{}/{{domain}}/{{user}}", mail.path().display())),
            cert.tls_section(),
            toml_str(&users.display().to_string())
        );
        Posthorn::start(&text)
    };
    let creds = dir.path().join("relay-auth");
    fs::write(&creds, "vm12:fleet-secret\n").unwrap();
    let table = dir.path().join("tls_policy");
    let satellite = |policy: &str| {
        fs::write(&table, policy).unwrap();
        Posthorn::start(&with_lines(
            &satellite_config(&[hub.smtp_addr()]),
            &[
                "relay.tls = \"may\"",
                &format!("relay.tls_ca = {}", toml_str(&ca.ca_path().display().to_string())),
                &format!("relay.auth_file = {}", toml_str(&creds.display().to_string())),
                &format!("outbound_tls.policy_maps = [{}]", toml_str(&table.display().to_string())),
            ],
        ))
    };
    let port = hub.smtp_addr().port();
    // relay.tls = "may" alone: TLS, but unverified, so no credentials.
    let sat = satellite("[other.test]:25 verify\n");
    smtplib_send(sat.smtp_addr(), "cron@vm.test", &["user@dest.test"], MESSAGE).unwrap();
    assert!(sat.wait_for_log("status=deferred", secs(15)), "{}", sat.log());
    assert!(sat.log_lines(&["status=deferred"])[0].contains("was not verified"), "{}", sat.log());
    assert!(!hub.log().contains("sasl_username"), "{}", hub.log());
    // The table's entry for the smarthost makes it `verify`: credentials go.
    let sat = satellite(&format!("[127.0.0.1]:{port} verify\n"));
    smtplib_send(sat.smtp_addr(), "cron@vm.test", &["user@dest.test"], MESSAGE).unwrap();
    let got = delivered(mail.path(), "user");
    assert!(header(&got, "Received").unwrap().contains("with ESMTPSA"), "{:?}", header(&got, "Received"));
    assert!(sat.wait_for_log("Verified TLS connection established to 127.0.0.1[127.0.0.1]", secs(5)), "{}", sat.log());
}
