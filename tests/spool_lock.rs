//! End-to-end: one daemon per spool (issue 12, item 5).
//!
//! A daemon relays a steady stream of mail to a sink while a second
//! `posthorn serve` is started on the same configuration. The second one
//! must exit non-zero at once, naming the spool and the pid that holds it,
//! and touch nothing: every message the first answered 250 reaches the sink.
//! `postfix start` on a spool whose lock another process holds says the
//! same and starts nothing.

mod harness;

use std::collections::HashSet;
use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread;

use harness::*;

/// Sends messages one after another until `stop`, over fresh sessions, and
/// returns the subjects of those answered 250.
fn send_until(addr: std::net::SocketAddr, stop: Arc<AtomicBool>) -> Vec<String> {
    let mut accepted = Vec::new();
    let mut n = 0;
    while !stop.load(Ordering::Relaxed) {
        let Ok(mut c) = RawSmtp::connect(addr) else { continue };
        if c.ehlo("client.test").is_err() {
            continue;
        }
        for _ in 0..10 {
            n += 1;
            let subject = format!("stream-{n}");
            let body = message(&[("Subject", &subject)], &"0123456789abcdef\r\n".repeat(200));
            match c.send("alice@client.test", &["bob@example.net"], body.as_bytes()) {
                Ok(reply) if reply.code == 250 => accepted.push(subject),
                _ => {}
            }
        }
        let _ = c.quit();
    }
    accepted
}

#[test]
fn a_second_serve_on_a_live_spool_exits_and_loses_nothing() {
    let sink = Sink::start();
    let first = Posthorn::start(&satellite_config(&[sink.addr()]));
    let pid = first.pid().expect("the first daemon's pid").to_string();

    let stop = Arc::new(AtomicBool::new(false));
    let senders: Vec<_> = (0..2)
        .map(|_| {
            let (addr, stop) = (first.smtp_addr(), stop.clone());
            thread::spawn(move || send_until(addr, stop))
        })
        .collect();
    thread::sleep(secs(1));

    let mut second = Command::new(BIN);
    second.arg("serve").arg("-c").arg(first.config_path()).current_dir(first.dir());
    let out = run_with_timeout(second, b"", secs(30));
    thread::sleep(secs(1));
    stop.store(true, Ordering::Relaxed);
    let accepted: Vec<String> = senders.into_iter().flat_map(|s| s.join().unwrap()).collect();

    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "the second serve succeeded; stderr:\n{stderr}");
    let spool = first.spool_dir().display().to_string();
    assert!(stderr.contains(&spool) && stderr.contains(&format!("pid {pid}")), "stderr:\n{stderr}");
    assert!(!stderr.contains("recover"), "the second serve touched the spool; stderr:\n{stderr}");

    assert!(accepted.len() > 10, "only {} messages were accepted", accepted.len());
    let delivered = sink.wait_for_parsed(accepted.len(), secs(60));
    let got: HashSet<String> = delivered.iter().filter_map(|m| m.header("Subject")).collect();
    let lost: Vec<&String> = accepted.iter().filter(|s| !got.contains(*s)).collect();
    assert!(lost.is_empty(), "{} of {} accepted messages lost: {lost:?}", lost.len(), accepted.len());
}

#[test]
fn postfix_start_and_serve_name_the_holder_of_a_locked_spool_and_touch_nothing() {
    let sink = Sink::start();
    let mut ph = Posthorn::start(&satellite_config(&[sink.addr()]));
    ph.stop();
    let spool = ph.spool_dir();
    // Another process's lock, as a running daemon holds it.
    let lock = std::fs::OpenOptions::new().read(true).write(true).open(spool.join("posthorn.lock")).unwrap();
    rustix::fs::flock(&lock, rustix::fs::FlockOperation::NonBlockingLockExclusive).unwrap();
    std::fs::write(spool.join("posthorn.lock"), "4242\n").unwrap();
    // Recovery would sweep this.
    let planted = spool.join("tmp").join("half-written");
    std::fs::write(&planted, "x").unwrap();

    let mut serve = Command::new(BIN);
    serve.arg("serve").arg("-c").arg(ph.config_path()).current_dir(ph.dir());
    let outputs =
        [("serve", run_with_timeout(serve, b"", secs(30))), ("postfix start", ph.command(&["postfix", "start"], b""))];
    for (what, out) in outputs {
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{what} succeeded; stderr:\n{stderr}");
        let expected = format!("the spool {} is in use by another posthorn (pid 4242)", spool.display());
        assert!(stderr.contains(&expected), "{what}: stderr:\n{stderr}");
    }
    assert!(planted.exists(), "the spool was touched");
    assert!(!spool.join("posthorn.pid").exists(), "a pid file was written");
}
