//! A large message goes out from a mapped body (issue 18, item 4): a
//! 3 MB message, with lines that start with a dot and a trace header the
//! smarthost (smtp-sink, no `TRACE=`) must not see, arrives byte for byte,
//! dot-stuffing undone by the receiver, the trace header taken out.

mod harness;

use harness::*;

#[test]
fn a_large_message_arrives_whole_without_the_trace_header() {
    let sink = Sink::start();
    let ph = Posthorn::start(&satellite_config(&[sink.addr()]));
    let mut text = String::new();
    for n in 0..60_000 {
        // Every seventh line starts with a dot, to be stuffed on the way.
        let lead = if n % 7 == 0 { "." } else { "" };
        text.push_str(&format!("{lead}line {n:06} of a large message, long enough to fill a few pages\n"));
    }
    let message = message(&[("Subject", "big one")], &text);
    assert!(message.len() > 3_000_000);
    let mut smtp = RawSmtp::connect(ph.smtp_addr()).unwrap();
    smtp.ehlo("vm1.test").unwrap();
    let reply = smtp.send("cron@vm1.test", &["ops@example.org"], message.as_bytes()).unwrap();
    assert_eq!(reply.code, 250, "{reply}");
    smtp.quit().unwrap();
    let got = sink.wait_for_parsed(1, secs(30));
    assert_eq!(got.len(), 1, "log:\n{}", ph.log());
    assert_eq!(got[0].header("Subject").as_deref(), Some("big one"));
    assert!(got[0].header("X-Posthorn-Trace").is_none(), "the trace header left the fleet");
    assert!(ph.log().contains("status=sent"), "log:\n{}", ph.log());
    assert_eq!(String::from_utf8_lossy(&got[0].body()), text, "the body arrives byte for byte");
}
