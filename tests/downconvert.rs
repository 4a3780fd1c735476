//! End-to-end: 8-bit mail relayed by a satellite to a smarthost that does
//! not offer 8BITMIME (RFC 6152 3).
//!
//! Scenarios:
//! 1. Python's smtplib submits a multipart message with BODY=8BITMIME; it
//!    arrives with only 7-bit octets, its text part quoted-printable, and
//!    Python's email package decodes the original text and data from it.
//! 2. A message with an 8-bit Subject cannot be converted: it is never
//!    sent, the recipient fails with 5.6.3, and the bounce (headers only,
//!    converted) reaches the sender through the same host.
//!
//! The smarthost is the harness's `SevenBitHost`, because its scripted
//! server and sink always offer 8BITMIME.

mod harness;

use std::process::Command;

use harness::*;

/// Each leaf part's content type and payload, as Python's email package
/// decodes them from `message`.
fn python_parts(message: &[u8]) -> Vec<(String, Vec<u8>)> {
    let script = "import email, sys\n\
        m = email.message_from_bytes(sys.stdin.buffer.read())\n\
        for p in m.walk():\n\
        \x20   if not p.is_multipart():\n\
        \x20       print(p.get_content_type(), p.get_payload(decode=True).hex())\n";
    let mut cmd = Command::new("python3");
    cmd.args(["-c", script]);
    let out = run_with_timeout(cmd, message, secs(30));
    assert!(out.status.success(), "python: {}", String::from_utf8_lossy(&out.stderr));
    let hex = |h: &str| (0..h.len()).step_by(2).map(|i| u8::from_str_radix(&h[i..i + 2], 16).unwrap()).collect();
    String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .map(|l| l.split_once(' ').map(|(t, h)| (t.into(), hex(h))).unwrap())
        .collect()
}

#[test]
fn eight_bit_message_is_converted_for_a_smarthost_without_8bitmime() {
    let host = SevenBitHost::start();
    let ph = Posthorn::start(&satellite_config(&[host.addr]));
    let text = format!("Grüße aus Köln.\r\n.a line with a dot\r\n{}\r\ntrailing space \r\n", "ä".repeat(50));
    // 8BITMIME carries no NUL and no bare CR or LF (RFC 6152 2).
    let data: Vec<u8> = (1..=255u8).filter(|b| *b != b'\r' && *b != b'\n').collect();
    let mut message = b"From: app@vm1.test\r\nTo: ops@example.test\r\nSubject: report\r\nMIME-Version: 1.0\r\n\
        Content-Type: multipart/mixed; boundary=\"sep\"\r\n\r\npreamble\r\n--sep\r\n\
        Content-Type: text/plain; charset=utf-8\r\nContent-Transfer-Encoding: 8bit\r\n\r\n"
        .to_vec();
    message.extend_from_slice(text.as_bytes());
    message.extend_from_slice(b"\r\n--sep\r\nContent-Type: text/plain\r\n\r\nseven bit\r\n--sep\r\n");
    message.extend_from_slice(b"Content-Type: application/octet-stream\r\nContent-Transfer-Encoding: binary\r\n\r\n");
    message.extend_from_slice(&data);
    message.extend_from_slice(b"\r\n--sep--\r\n");
    submit_8bitmime(ph.smtp_addr(), "app@vm1.test", "ops@example.test", &message);

    let (mail, got) =
        host.wait_from("app@vm1.test", secs(20)).unwrap_or_else(|| panic!("not relayed; log:\n{}", ph.log()));
    assert!(!mail.to_ascii_uppercase().contains("BODY=8BITMIME"), "{mail}");
    assert!(got.iter().all(|b| *b < 0x80), "{}", String::from_utf8_lossy(&got));
    let shown = String::from_utf8(got.clone()).unwrap();
    assert!(shown.contains("Content-Transfer-Encoding: quoted-printable\r\n"), "{shown}");
    assert!(shown.contains("\r\n\r\npreamble\r\n--sep\r\n"), "{shown}");
    assert!(shown.contains("\r\n--sep\r\nContent-Type: text/plain\r\n\r\nseven bit\r\n--sep\r\n"), "{shown}");
    let parts = python_parts(&got);
    assert_eq!(parts.len(), 3, "{parts:?}");
    assert_eq!(parts[0].0, "text/plain");
    assert_eq!(String::from_utf8_lossy(&parts[0].1), text);
    assert_eq!(parts[1], ("text/plain".to_string(), b"seven bit".to_vec()));
    assert_eq!(parts[2], ("application/octet-stream".to_string(), data));
    assert!(ph.wait_for_log("converted to 7 bit for", secs(5)), "{}", ph.log());
}

#[test]
fn eight_bit_header_fails_with_5_6_3() {
    let host = SevenBitHost::start();
    let ph = Posthorn::start(&satellite_config(&[host.addr]));
    let message = "From: app@vm1.test\r\nTo: ops@example.test\r\nSubject: Grüße\r\n\r\nKöln\r\n";
    submit_8bitmime(ph.smtp_addr(), "app@vm1.test", "ops@example.test", message.as_bytes());
    assert!(ph.wait_for_log("status=bounced", secs(20)), "{}", ph.log());
    let line = ph.log_lines(&["to=<ops@example.test>", "status=bounced"]).join("\n");
    assert!(line.contains("5.6.3 Conversion required but not supported"), "{line}");
    assert!(line.contains("dsn=5.6.3,"), "the log names the refusal's code: {line}");
    assert!(host.wait_from("app@vm1.test", secs(1)).is_none());
    // The bounce reaches the sender through the same 7-bit host: it returns
    // the headers alone, converted, since the whole message could not be.
    let (_, bounce) = host.wait_from("", secs(20)).unwrap_or_else(|| panic!("no bounce: {}", ph.log()));
    assert!(bounce.is_ascii(), "only 7-bit octets go to this host");
    let text = String::from_utf8_lossy(&bounce);
    assert!(text.contains("Status: 5.6.3"), "{text}");
    assert!(text.contains("Content-Type: text/rfc822-headers"), "{text}");
    assert!(!text.contains("message/rfc822"), "{text}");
}
