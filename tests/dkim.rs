//! End-to-end: DKIM signing of outbound mail, checked by an independent
//! verifier (Python's dkimpy) that fetches the public key from the test DNS
//! server.
//!
//! Scenarios:
//! 1. `posthorn dkim keygen` (RSA and Ed25519) writes a key and prints its
//!    TXT record; with that key configured, a message relayed to a sink
//!    carries a DKIM-Signature that dkimpy verifies; with its body altered
//!    it no longer verifies.
//! 2. Mail from a domain without a key goes out unsigned.
//! 3. A bad key file refuses the start and the error names the file.
//! 4. An 8-bit message (submitted with BODY=8BITMIME) relayed to a
//!    smarthost without 8BITMIME arrives 7-bit and its signature verifies:
//!    the signer signs the converted form (RFC 6376 5.3).
//! 5. The same message to a smarthost with 8BITMIME verifies too.
//! 6. A client outside the trusted networks, relaying to a relay domain
//!    with `From: ceo@example.org`, gets its mail through unsigned; the
//!    same message from a trusted network leaves signed.

mod harness;

use harness::*;
use std::process::Command;

/// Verifies `message` with dkimpy, resolving TXT records at `dns`; prints
/// `True` or `False`.
const VERIFY: &str = r#"
import sys, dkim, dns.resolver
server, port = sys.argv[1].rsplit(":", 1)
r = dns.resolver.Resolver(configure=False)
r.nameservers = [server]
r.port = int(port)
def dnsfunc(name, timeout=5):
    name = name.decode() if isinstance(name, bytes) else name
    try:
        answer = r.resolve(name.rstrip("."), "TXT", lifetime=timeout)
    except Exception:
        return b""
    return b"".join(b"".join(rr.strings) for rr in answer)
print(dkim.verify(sys.stdin.buffer.read(), dnsfunc=dnsfunc))
"#;

fn dkim_verifies(dns: &DnsServer, message: &[u8]) -> bool {
    let mut cmd = Command::new("python3");
    cmd.args(["-c", VERIFY, &dns.addr().to_string()]);
    let out = run_with_timeout(cmd, message, secs(30));
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "dkimpy failed: {}", String::from_utf8_lossy(&out.stderr));
    stdout.trim() == "True"
}

/// Runs `posthorn dkim keygen`, returns the TXT record's value (the quoted
/// strings joined).
fn keygen(dir: &std::path::Path, selector: &str, algorithm: &str) -> (std::path::PathBuf, String) {
    let key = dir.join(format!("{selector}.pem"));
    let mut cmd = Command::new(BIN);
    cmd.args(["dkim", "keygen", "example.org", selector, "--algorithm", algorithm, "--out"]).arg(&key);
    let out = run_with_timeout(cmd, b"", secs(60));
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(out.status.success(), "keygen: {stdout} {}", String::from_utf8_lossy(&out.stderr));
    let prefix = format!("{selector}._domainkey.example.org. IN TXT ");
    let rest = stdout.trim().strip_prefix(&prefix).unwrap_or_else(|| panic!("unexpected record: {stdout}"));
    let value: String = rest.split('"').skip(1).step_by(2).collect();
    assert!(value.starts_with("v=DKIM1; k="), "{value}");
    (key, value)
}

/// The message as it was sent: CRLF line ends (the sink stores LF).
fn crlf(message: &[u8]) -> Vec<u8> {
    String::from_utf8_lossy(message).replace('\n', "\r\n").into_bytes()
}

fn signed_and_verified(algorithm: &str, config_algorithm: &str) {
    let keys = tempfile::tempdir().unwrap();
    let (key, record) = keygen(keys.path(), "s1", algorithm);
    let dns = DnsServer::start(vec![DnsRecord::txt("s1._domainkey.example.org", &record)]);
    let sink = Sink::start();
    let config = format!(
        "{}\n[[dkim.keys]]\ndomain = \"example.org\"\nselector = \"s1\"\nkey = {}\nalgorithm = \"{config_algorithm}\"\n",
        satellite_config(&[sink.addr()]),
        toml_str(&key.display().to_string()),
    );
    let ph = Posthorn::start(&config);
    let body = "From: Root <root@example.org>\nTo: ops@example.net\nSubject: disk full\n\
        Date: Wed, 25 Nov 2026 10:00:00 +0000\nMessage-ID: <dkim-1@example.org>\n\n/var is 99% full.\n";
    smtplib_send(ph.smtp_addr(), "root@example.org", &["ops@example.net"], body).unwrap();
    let got = sink.wait_for_parsed(1, secs(20));
    assert_eq!(got.len(), 1, "log:\n{}", ph.log());
    let signature = got[0].header("DKIM-Signature").unwrap_or_else(|| panic!("unsigned:\n{}", got[0].text()));
    assert!(signature.contains("d=example.org"), "{signature}");
    assert!(signature.contains(&format!("a={config_algorithm}")), "{signature}");
    let message = crlf(&got[0].message);
    assert!(dkim_verifies(&dns, &message), "dkimpy refused:\n{}", got[0].text());
    let altered = String::from_utf8_lossy(&message).replace("99%", "98%").into_bytes();
    assert!(!dkim_verifies(&dns, &altered), "an altered body still verifies");
}

#[test]
fn rsa_signature_verifies_and_breaks_when_altered() {
    signed_and_verified("rsa", "rsa-sha256");
}

#[test]
fn ed25519_signature_verifies_and_breaks_when_altered() {
    signed_and_verified("ed25519", "ed25519-sha256");
}

#[test]
fn other_domains_go_unsigned() {
    let keys = tempfile::tempdir().unwrap();
    let (key, _) = keygen(keys.path(), "s1", "ed25519");
    let sink = Sink::start();
    let config = format!(
        "{}\n[[dkim.keys]]\ndomain = \"example.org\"\nselector = \"s1\"\nkey = {}\n",
        satellite_config(&[sink.addr()]),
        toml_str(&key.display().to_string()),
    );
    let ph = Posthorn::start(&config);
    let body = "From: someone@example.com\nTo: ops@example.net\nSubject: hi\n\nhello\n";
    smtplib_send(ph.smtp_addr(), "someone@example.com", &["ops@example.net"], body).unwrap();
    let got = sink.wait_for_parsed(1, secs(20));
    assert_eq!(got.len(), 1, "log:\n{}", ph.log());
    assert_eq!(got[0].header("DKIM-Signature"), None);
}

#[test]
fn a_bad_key_file_refuses_the_start_and_is_named() {
    let keys = tempfile::tempdir().unwrap();
    let key = keys.path().join("broken-key.pem");
    std::fs::write(&key, "-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n").unwrap();
    let config = format!(
        "{}\n[[dkim.keys]]\ndomain = \"example.org\"\nselector = \"s1\"\nkey = {}\n",
        satellite_config(&["127.0.0.1:9".parse().unwrap()]),
        toml_str(&key.display().to_string()),
    );
    let err = Posthorn::try_start(&config).err().expect("a daemon with a bad DKIM key started");
    assert!(err.contains("broken-key.pem"), "the error does not name the file:\n{err}");
}

/// An 8-bit message from example.org: a text part labelled 8bit, with a
/// long line, trailing white space and a leading dot, and a 7-bit part.
fn eight_bit_message() -> Vec<u8> {
    let text = format!("Grüße aus Köln.\r\n.dot\r\n{}\r\ntrailing space \r\n", "ä".repeat(50));
    let mut message = b"From: Root <root@example.org>\r\nTo: ops@example.net\r\nSubject: report\r\n\
        Date: Wed, 25 Nov 2026 10:00:00 +0000\r\nMessage-ID: <dkim-8bit@example.org>\r\nMIME-Version: 1.0\r\n\
        Content-Type: multipart/mixed; boundary=\"sep\"\r\n\r\n--sep\r\n\
        Content-Type: text/plain; charset=utf-8\r\nContent-Transfer-Encoding: 8bit\r\n\r\n"
        .to_vec();
    message.extend_from_slice(text.as_bytes());
    message.extend_from_slice(b"\r\n--sep\r\nContent-Type: text/plain\r\n\r\nseven bit\r\n--sep--\r\n");
    message
}

/// A satellite with an Ed25519 key for example.org relaying to
/// `smarthost`, and the DNS server publishing the key.
fn signing_satellite(keys: &std::path::Path, smarthost: std::net::SocketAddr) -> (DnsServer, Posthorn) {
    let (key, record) = keygen(keys, "s1", "ed25519");
    let dns = DnsServer::start(vec![DnsRecord::txt("s1._domainkey.example.org", &record)]);
    let config = format!(
        "{}\n[[dkim.keys]]\ndomain = \"example.org\"\nselector = \"s1\"\nkey = {}\n",
        satellite_config(&[smarthost]),
        toml_str(&key.display().to_string()),
    );
    (dns, Posthorn::start(&config))
}

#[test]
fn eight_bit_mail_converted_for_a_hop_without_8bitmime_still_verifies() {
    let keys = tempfile::tempdir().unwrap();
    let host = SevenBitHost::start();
    let (dns, ph) = signing_satellite(keys.path(), host.addr);
    submit_8bitmime(ph.smtp_addr(), "root@example.org", "ops@example.net", &eight_bit_message());
    let (mail, got) =
        host.wait_from("root@example.org", secs(20)).unwrap_or_else(|| panic!("not relayed; log:\n{}", ph.log()));
    let text = String::from_utf8_lossy(&got);
    assert!(!mail.to_ascii_uppercase().contains("BODY=8BITMIME"), "{mail}");
    assert!(got.is_ascii(), "8-bit octets sent to a hop without 8BITMIME:\n{text}");
    assert!(text.starts_with("DKIM-Signature: "), "unsigned:\n{text}");
    assert!(text.contains("Content-Transfer-Encoding: quoted-printable\r\n"), "{text}");
    assert!(dkim_verifies(&dns, &got), "dkimpy refused:\n{text}");
}

#[test]
fn eight_bit_mail_to_a_hop_with_8bitmime_verifies() {
    let keys = tempfile::tempdir().unwrap();
    let sink = Sink::start();
    let (dns, ph) = signing_satellite(keys.path(), sink.addr());
    submit_8bitmime(ph.smtp_addr(), "root@example.org", "ops@example.net", &eight_bit_message());
    let got = sink.wait_for_parsed(1, secs(20));
    assert_eq!(got.len(), 1, "log:\n{}", ph.log());
    assert!(got[0].header("DKIM-Signature").is_some(), "unsigned:\n{}", got[0].text());
    assert!(dkim_verifies(&dns, &crlf(&got[0].message)), "dkimpy refused:\n{}", got[0].text());
}

/// A satellite with a key for example.org that relays `example.net` for
/// anyone and trusts `trusted_networks`; what the sink got from it for a
/// forged `From: ceo@example.org`.
fn relayed_forgery(trusted_networks: &str) -> Dumped {
    let keys = tempfile::tempdir().unwrap();
    let (key, _) = keygen(keys.path(), "s1", "ed25519");
    let sink = Sink::start();
    let config = with_lines(
        &format!(
            "{}\n[[dkim.keys]]\ndomain = \"example.org\"\nselector = \"s1\"\nkey = {}\n",
            satellite_config(&[sink.addr()]),
            toml_str(&key.display().to_string()),
        ),
        &[&format!("access.trusted_networks = {trusted_networks}"), "access.relay_domains = [\"example.net\"]"],
    );
    let ph = Posthorn::start(&config);
    let body = "From: CEO <ceo@example.org>\nTo: cfo@example.net\nSubject: wire transfer\n\nPay at once.\n";
    smtplib_send(ph.smtp_addr(), "ceo@example.org", &["cfo@example.net"], body).unwrap();
    let mut got = sink.wait_for_parsed(1, secs(20));
    assert_eq!(got.len(), 1, "log:\n{}", ph.log());
    got.remove(0)
}

#[test]
fn mail_from_an_untrusted_client_leaves_unsigned() {
    let got = relayed_forgery("[]");
    assert_eq!(got.header("DKIM-Signature"), None, "a stranger's forgery was signed:\n{}", got.text());
}

#[test]
fn mail_from_a_trusted_network_leaves_signed() {
    let got = relayed_forgery("[\"127.0.0.0/8\"]");
    let signature = got.header("DKIM-Signature").unwrap_or_else(|| panic!("unsigned:\n{}", got.text()));
    assert!(signature.contains("d=example.org"), "{signature}");
}
