//! The daemon killed at each step of the commit and removal paths (issue
//! 18): nothing acknowledged is lost, and nothing delivered is sent again
//! beyond the one message whose removal was in flight.
//!
//! `POSTHORN_CRASH_AT=POINT:3` makes the daemon SIGKILL itself the third
//! time it reaches POINT (src/spool/commit.rs, `crash_point`), so two
//! messages have gone the whole way before. One client sends messages one
//! at a time, each after the previous one reached the sink, until the
//! daemon dies; it is then started again without the hook, and the sink
//! must get every message that had its 250.

mod harness;

use harness::*;
use std::collections::HashMap;

/// The steps, in order: see `crash_point`.
const POINTS: [&str; 6] =
    ["commit-written", "commit-synced", "commit-renamed", "commit-durable", "remove-unlinked", "remove-synced"];

/// Sends one message; its `250` or the failure.
fn send(ph_addr: std::net::SocketAddr, subject: &str) -> Result<Reply, String> {
    let mut smtp = RawSmtp::connect(ph_addr).map_err(|e| e.to_string())?;
    smtp.ehlo("vm1.test").map_err(|e| e.to_string())?;
    let text = message(&[("Subject", subject)], "crash point test\n");
    let reply = smtp.send("cron@vm1.test", &["ops@example.org"], text.as_bytes()).map_err(|e| e.to_string())?;
    let _ = smtp.quit();
    Ok(reply)
}

/// How many times the sink got each subject.
fn delivered(sink: &Sink) -> HashMap<String, usize> {
    let mut counts = HashMap::new();
    for m in sink.parsed() {
        *counts.entry(m.header("Subject").unwrap_or_default()).or_default() += 1;
    }
    counts
}

fn crash_at(point: &str) {
    let sink = Sink::start();
    let hook = format!("{point}:3");
    let mut ph = Posthorn::start_with_env(&satellite_config(&[sink.addr()]), &[("POSTHORN_CRASH_AT", &hook)]);
    let addr = ph.smtp_addr();
    let tag = unique_name(point);
    let mut acked = Vec::new();
    let mut tried = Vec::new();
    for n in 0..10 {
        let subject = format!("{tag}-{n}");
        tried.push(subject.clone());
        match send(addr, &subject) {
            Ok(reply) if reply.code == 250 => acked.push(subject.clone()),
            _ => break,
        }
        // The next message only once this one reached the sink (or the
        // daemon died on the way): so each removal is reached in turn.
        wait_until(secs(10), || delivered(&sink).contains_key(&subject) || !ph.is_running());
        if !ph.is_running() {
            break;
        }
    }
    assert!(ph.wait_exit(secs(20)), "{point}: the daemon never reached its crash point; log:\n{}", ph.log());
    assert!(acked.len() >= 2, "{point}: {} messages acknowledged before the crash; log:\n{}", acked.len(), ph.log());

    ph.set_env(&[]);
    ph.restart();
    let all_in = wait_until(secs(30), || acked.iter().all(|s| delivered(&sink).contains_key(s)));
    assert!(all_in, "{point}: acknowledged messages lost: {acked:?} vs {:?}; log:\n{}", delivered(&sink), ph.log());
    assert!(ph.wait_for_queued(0, secs(30)), "{point}: the queue drains after the restart");
    let counts = delivered(&sink);
    for (subject, n) in &counts {
        assert!(tried.contains(subject), "{point}: delivered something never sent: {subject}");
        assert!(*n <= 2, "{point}: {subject} delivered {n} times");
    }
    let again: usize = counts.values().map(|n| n - 1).sum();
    // Only the message whose removal the crash cut can come again.
    let allowed = usize::from(point == "remove-unlinked");
    assert!(again <= allowed, "{point}: {again} message(s) delivered twice: {counts:?}");
    eprintln!("{point}: {} acknowledged, {} delivered, {again} twice", acked.len(), counts.len());
}

#[test]
fn a_crash_at_any_step_loses_nothing_acknowledged() {
    for point in POINTS {
        crash_at(point);
    }
}

/// A clean stop leaves no orphan body for the next start to set aside:
/// the removals' bodies, unlinked after their batch, are waited for.
#[test]
fn a_clean_stop_leaves_no_orphan_body() {
    let sink = Sink::start();
    let mut ph = Posthorn::start(&satellite_config(&[sink.addr()]));
    let tag = unique_name("stop");
    for n in 0..5 {
        assert_eq!(send(ph.smtp_addr(), &format!("{tag}-{n}")).unwrap().code, 250);
    }
    assert_eq!(sink.wait_for_parsed(5, secs(20)).len(), 5);
    assert!(ph.wait_for_queued(0, secs(10)));
    ph.stop();
    let bodies = std::fs::read_dir(ph.spool_dir().join("data")).unwrap().count();
    assert_eq!(bodies, 0, "bodies left in data/ after a clean stop");
}
