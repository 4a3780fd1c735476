//! DANE for MX delivery (RFC 7672) end to end: the test DNS server serves
//! a DNSSEC-signed zone (MX, A and TLSA records), posthorn validates it
//! from the zone's key given as `deliver.dnssec_trust_anchor`, and another
//! posthorn hub with a certificate from a test CA receives into a Maildir.
//!
//! 1. DANE-EE `3 1 1` of the receiver's key: delivered, logged as
//!    Verified TLS (DANE).
//! 2. DANE-EE that does not match: deferred, nothing sent, never in clear.
//! 3. DANE-TA `2 0 1` of the test CA: a certificate for the MX host name is
//!    delivered to; one for another name is not.
//! 4. Usable TLSA records, but the server offers no STARTTLS: deferred.
//! 5. No TLSA records (secure denial): `dane` delivers as `may` would;
//!    `dane-only` defers.
//! 6. The same for a zone left unsigned below the signed `test.` (an
//!    insecure delegation), even with TLSA records that would match.
//! 7. A zone whose signatures do not validate (another key as the trust
//!    anchor): deferred, even under `dane`.
//!
//! `route explain` names the level and, per MX host, whether DANE applies
//! (1, 5, 6).

mod harness;

use harness::*;
use std::fs;
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};

const MESSAGE: &str = "Subject: dane test\n\nover DANE\n";

/// The receiving hub: `example.test` into Maildirs under `mail`, with
/// `tls` (a `[tls]` section, or nothing for no STARTTLS).
fn receiver(mail: &Path, tls: &str) -> Posthorn {
    Posthorn::start(&format!(
        "role = \"hub\"\n[smtp]\nlisten = [\"127.0.0.1:0\"]\n[access]\nlocal_domains = [\"example.test\"]\n[deliver]\nmaildir_root = {}\n{tls}",
        toml_str(&format!("{}/{{domain}}/{{user}}", mail.display()))
    ))
}

/// The sending hub: lookups through `dns`, `anchor` as the trust anchor
/// (written next to its config), MX port `port`, `outbound_tls.level`.
fn sender(dns: &DnsServer, anchor: &str, port: u16, level: &str) -> (Posthorn, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("trust-anchor");
    fs::write(&path, anchor).unwrap();
    let hub = Posthorn::start(&format!(
        "role = \"hub\"\n[smtp]\nlisten = [\"127.0.0.1:0\"]\n[deliver]\ndns_servers = [\"{}\"]\ndnssec_trust_anchor = {}\nmx_port = {port}\n[queue]\nretry_min = \"1s\"\nretry_max = \"2s\"\n[outbound_tls]\nlevel = \"{level}\"\n",
        dns.addr(),
        toml_str(&path.display().to_string()),
    ));
    (hub, dir)
}

/// The zone: `example.test` by MX to `mx.example.test` (127.0.0.1), with
/// `tlsa` at `_port._tcp.mx.example.test`.
fn records(port: u16, tlsa: &[(u8, u8, u8, Vec<u8>)]) -> Vec<DnsRecord> {
    let mut records = vec![
        DnsRecord::mx("example.test", 10, "mx.example.test"),
        DnsRecord::a("mx.example.test", Ipv4Addr::new(127, 0, 0, 1)),
    ];
    for (u, s, m, data) in tlsa {
        records.push(DnsRecord::tlsa(&format!("_{port}._tcp.mx.example.test"), *u, *s, *m, data));
    }
    records
}

fn sha256(data: &[u8]) -> Vec<u8> {
    ring::digest::digest(&ring::digest::SHA256, data).as_ref().to_vec()
}

fn maildir(mail: &Path, user: &str) -> Vec<Vec<u8>> {
    let new = mail.join("example.test").join(user).join("new");
    let mut names: Vec<PathBuf> =
        fs::read_dir(&new).map(|d| d.flatten().map(|e| e.path()).collect()).unwrap_or_default();
    names.sort();
    names.iter().map(|p| fs::read(p).unwrap()).collect()
}

fn delivered(mail: &Path, user: &str) -> Vec<u8> {
    assert!(wait_until(secs(20), || !maildir(mail, user).is_empty()), "nothing delivered to {user}");
    maildir(mail, user).remove(0)
}

/// The message to `user@example.test` waits, with a deferral naming
/// `reason`, and the receiver never saw a transaction.
fn deferred(tx: &Posthorn, rx: &Posthorn, mail: &Path, reason: &str) {
    assert!(tx.wait_for_log("status=deferred", secs(30)), "{}", tx.log());
    let line = tx.log_lines(&["status=deferred"]).remove(0);
    assert!(line.contains(reason), "{line}");
    // The log line can come while the envelope moves from active/ to
    // deferred/, when a walk of the directories may see it in both.
    assert!(wait_until(secs(5), || tx.queued_count() == 1), "the message waits:\n{}", tx.log());
    assert!(!rx.log().contains("mail="), "nothing sent:\n{}", rx.log());
    assert!(maildir(mail, "user").is_empty());
}

#[test]
fn dane_ee_record_matching_the_key_delivers_verified() {
    let ca = TestCa::new("posthorn test CA");
    let cert = ca.issue("mx", &["mx.example.test"]);
    let mail = tempfile::tempdir().unwrap();
    let rx = receiver(mail.path(), &cert.tls_section());
    let port = rx.smtp_addr().port();
    let dns = DnsServer::start_signed(records(port, &[(3, 1, 1, sha256(&cert.spki))]));
    let (tx, _dir) = sender(&dns, dns.trust_anchor(), port, "dane");
    smtplib_send(tx.smtp_addr(), "cron@hub.test", &["user@example.test"], MESSAGE).unwrap();
    let got = delivered(mail.path(), "user");
    assert!(header(&got, "Received").unwrap().contains("with ESMTPS"), "{}", String::from_utf8_lossy(&got));
    assert!(
        tx.wait_for_log("Verified TLS connection established to mx.example.test[127.0.0.1]", secs(5)),
        "{}",
        tx.log()
    );
    assert!(tx.log_lines(&["Verified TLS connection"]).remove(0).ends_with("(DANE)"), "{}", tx.log());
    // `route explain`: the level, then what DNS says of each MX host.
    let out = tx.command(&["route", "explain", "user@example.test"], b"");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("tls=dane (outbound_tls.level)"), "{text}");
    assert!(text.contains("example.test: MX host mx.example.test: DANE applies: secure TLSA records 3 1 1 "), "{text}");
}

#[test]
fn dane_ee_record_not_matching_defers_and_never_sends_in_clear() {
    let ca = TestCa::new("posthorn test CA");
    let cert = ca.issue("mx", &["mx.example.test"]);
    let other = ca.issue("other", &["mx.example.test"]);
    let mail = tempfile::tempdir().unwrap();
    let rx = receiver(mail.path(), &cert.tls_section());
    let port = rx.smtp_addr().port();
    // The right name and CA, the wrong key: a DANE-EE record binds the key.
    let dns = DnsServer::start_signed(records(port, &[(3, 1, 1, sha256(&other.spki))]));
    let (tx, _dir) = sender(&dns, dns.trust_anchor(), port, "dane");
    smtplib_send(tx.smtp_addr(), "cron@hub.test", &["user@example.test"], MESSAGE).unwrap();
    deferred(&tx, &rx, mail.path(), "no TLSA record matches the server certificate");
    assert!(!tx.log().contains("trying mx.example.test[127.0.0.1]:"), "no retry in clear:\n{}", tx.log());
}

/// A receiver whose certificate (for `names`) is sent with the CA after
/// it, and a zone with DANE-TA `2 0 1` of that CA.
fn dane_ta(names: &[&str]) -> (TestCa, tempfile::TempDir, Posthorn, DnsServer) {
    let ca = TestCa::new("posthorn test CA");
    let cert = ca.issue("mx", names);
    let chain = format!("{}{}", fs::read_to_string(&cert.cert).unwrap(), ca.ca_pem());
    fs::write(&cert.cert, chain).unwrap();
    let mail = tempfile::tempdir().unwrap();
    let rx = receiver(mail.path(), &cert.tls_section());
    let port = rx.smtp_addr().port();
    let dns = DnsServer::start_signed(records(port, &[(2, 0, 1, sha256(&ca.ca_der()))]));
    (ca, mail, rx, dns)
}

#[test]
fn dane_ta_record_of_the_ca_delivers_to_a_certificate_for_the_mx_name() {
    let (_ca, mail, rx, dns) = dane_ta(&["mx.example.test"]);
    let (tx, _dir) = sender(&dns, dns.trust_anchor(), rx.smtp_addr().port(), "dane-only");
    smtplib_send(tx.smtp_addr(), "cron@hub.test", &["user@example.test"], MESSAGE).unwrap();
    delivered(mail.path(), "user");
    assert!(tx.wait_for_log("Verified TLS connection established to mx.example.test", secs(5)), "{}", tx.log());
}

#[test]
fn dane_ta_record_of_the_ca_defers_a_certificate_for_another_name() {
    let (_ca, mail, rx, dns) = dane_ta(&["mx.elsewhere.test"]);
    let (tx, _dir) = sender(&dns, dns.trust_anchor(), rx.smtp_addr().port(), "dane");
    smtplib_send(tx.smtp_addr(), "cron@hub.test", &["user@example.test"], MESSAGE).unwrap();
    deferred(&tx, &rx, mail.path(), "DANE-TA trust anchor matched, but");
}

#[test]
fn usable_tlsa_and_no_starttls_defers() {
    let ca = TestCa::new("posthorn test CA");
    let cert = ca.issue("mx", &["mx.example.test"]);
    let mail = tempfile::tempdir().unwrap();
    let rx = receiver(mail.path(), "");
    let port = rx.smtp_addr().port();
    let dns = DnsServer::start_signed(records(port, &[(3, 1, 1, sha256(&cert.spki))]));
    let (tx, _dir) = sender(&dns, dns.trust_anchor(), port, "dane");
    smtplib_send(tx.smtp_addr(), "cron@hub.test", &["user@example.test"], MESSAGE).unwrap();
    deferred(&tx, &rx, mail.path(), "STARTTLS is not offered");
}

#[test]
fn without_tlsa_records_dane_is_may_and_dane_only_defers() {
    let ca = TestCa::new("posthorn test CA");
    let cert = ca.issue("mx", &["mx.example.test"]);
    let mail = tempfile::tempdir().unwrap();
    let rx = receiver(mail.path(), &cert.tls_section());
    let port = rx.smtp_addr().port();
    let dns = DnsServer::start_signed(records(port, &[]));
    let (tx, _dir) = sender(&dns, dns.trust_anchor(), port, "dane");
    smtplib_send(tx.smtp_addr(), "cron@hub.test", &["first@example.test"], MESSAGE).unwrap();
    delivered(mail.path(), "first");
    // Opportunistic TLS, the certificate unchecked.
    assert!(tx.wait_for_log("Untrusted TLS connection established to mx.example.test", secs(5)), "{}", tx.log());
    let out = tx.command(&["route", "explain", "user@example.test"], b"");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains(&format!("DANE does not apply: no TLSA records at _{port}._tcp.mx.example.test")), "{text}");

    let (tx, _dir) = sender(&dns, dns.trust_anchor(), port, "dane-only");
    smtplib_send(tx.smtp_addr(), "cron@hub.test", &["user@example.test"], MESSAGE).unwrap();
    assert!(tx.wait_for_log("status=deferred", secs(30)), "{}", tx.log());
    let line = tx.log_lines(&["status=deferred"]).remove(0);
    assert!(line.contains("dane-only (outbound_tls.level), but no TLSA records at _"), "{line}");
    assert!(maildir(mail.path(), "user").is_empty());
}

#[test]
fn a_zone_that_fails_validation_defers_even_under_dane() {
    let ca = TestCa::new("posthorn test CA");
    let cert = ca.issue("mx", &["mx.example.test"]);
    let mail = tempfile::tempdir().unwrap();
    let rx = receiver(mail.path(), &cert.tls_section());
    let port = rx.smtp_addr().port();
    let dns = DnsServer::start_signed(records(port, &[(3, 1, 1, sha256(&cert.spki))]));
    // Another zone's key as the anchor: every signature is bogus.
    let stranger = DnsServer::start_signed(records(port, &[]));
    let (tx, _dir) = sender(&dns, stranger.trust_anchor(), port, "dane");
    smtplib_send(tx.smtp_addr(), "cron@hub.test", &["user@example.test"], MESSAGE).unwrap();
    deferred(&tx, &rx, mail.path(), "DANE (outbound_tls.level): MX lookup of example.test");
}

#[test]
fn an_unsigned_zone_is_not_dane() {
    let ca = TestCa::new("posthorn test CA");
    let cert = ca.issue("mx", &["mx.example.test"]);
    let mail = tempfile::tempdir().unwrap();
    let rx = receiver(mail.path(), &cert.tls_section());
    let port = rx.smtp_addr().port();
    // TLSA records that would match, in a zone that is not signed (its
    // parent, `test.`, is, and proves the delegation insecure).
    let mut zone = records(port, &[(3, 1, 1, sha256(&cert.spki))]);
    zone.push(DnsRecord::unsigned_zone("example.test"));
    let dns = DnsServer::start_signed(zone);
    let (tx, _dir) = sender(&dns, dns.trust_anchor(), port, "dane");
    smtplib_send(tx.smtp_addr(), "cron@hub.test", &["first@example.test"], MESSAGE).unwrap();
    delivered(mail.path(), "first");
    assert!(tx.wait_for_log("Untrusted TLS connection established to mx.example.test", secs(5)), "{}", tx.log());
    let out = tx.command(&["route", "explain", "user@example.test"], b"");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("DANE does not apply: the MX records of example.test are not DNSSEC-signed"), "{text}");

    let (tx, _dir) = sender(&dns, dns.trust_anchor(), port, "dane-only");
    smtplib_send(tx.smtp_addr(), "cron@hub.test", &["user@example.test"], MESSAGE).unwrap();
    assert!(tx.wait_for_log("status=deferred", secs(30)), "{}", tx.log());
    let line = tx.log_lines(&["status=deferred"]).remove(0);
    assert!(line.contains("dane-only (outbound_tls.level), but the MX records of example.test are not"), "{line}");
    assert!(maildir(mail.path(), "user").is_empty());
}
