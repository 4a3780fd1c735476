//! Start-up with a queue (issue 18, item 5): the daemon is ready, and
//! accepts and delivers new mail, before it has loaded the queue it found;
//! the old queue is checked and loaded in the background (the second half
//! of crash recovery, docs/spool.md), and nothing old moves until then.

mod harness;

use harness::*;
use std::path::Path;

/// Queue ids whose envelopes are in `state`, sorted.
fn ids_in(ph: &Posthorn, state: &str) -> Vec<String> {
    let mut ids: Vec<String> =
        ph.spool_files(state).iter().map(|p| p.file_name().unwrap().to_string_lossy().into_owned()).collect();
    ids.sort();
    ids
}

fn subjects(sink: &Sink, n: usize) -> Vec<String> {
    let mut got: Vec<String> = sink.wait_for_parsed(n, secs(20)).iter().filter_map(|m| m.header("Subject")).collect();
    got.sort();
    got
}

fn send(ph: &Posthorn, subject: &str) {
    let text = format!("Subject: {subject}\r\n\r\nhello\r\n");
    smtplib_send(ph.smtp_addr(), "app@vm.test", &["ops@example.org"], &text).unwrap();
}

/// A daemon with two deferred messages not due for an hour, stopped, and
/// the sink they are for, refusing until restarted: (daemon, sink, ids).
fn stopped_with_an_old_queue() -> (Posthorn, Sink, Vec<String>) {
    let sink = Sink::start_stopped();
    let mut ph = Posthorn::start(&satellite_config(&[sink.addr()]));
    send(&ph, "old one");
    send(&ph, "old two");
    assert!(wait_until(secs(20), || ids_in(&ph, "deferred").len() == 2), "{}", ph.log());
    ph.stop();
    let old = ids_in(&ph, "deferred");
    let in_an_hour = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs() + 3600;
    for id in &old {
        let path = ph.spool_dir().join("deferred").join(id);
        let mut envelope: serde_json::Value = serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap();
        envelope["next_attempt"] = in_an_hour.into();
        std::fs::write(&path, envelope.to_string()).unwrap();
    }
    (ph, sink, old)
}

#[test]
fn new_mail_flows_while_the_old_queue_is_loaded() {
    let (mut ph, mut sink, old) = stopped_with_an_old_queue();
    // A body no envelope names, older than every queued message: what a
    // crash between a body's write and its envelope's commit leaves.
    let data = ph.spool_dir().join("data");
    let orphan = "00000000001";
    std::fs::copy(data.join(&old[0]), data.join(orphan)).unwrap();

    sink.restart();
    ph.set_env(&[("POSTHORN_INDEX_PAUSE", "8")]);
    ph.restart_until_ready();
    assert!(!ph.loaded(), "loaded before the index began:\n{}", ph.log());

    // New mail goes through at once.
    send(&ph, "new");
    assert_eq!(subjects(&sink, 1), ["new"], "{}", ph.log());
    // Nothing old has moved, nothing has been judged, and the operator is
    // told why an action must wait.
    assert!(!ph.loaded(), "the index ran before the pause ended:\n{}", ph.log());
    assert_eq!(ids_in(&ph, "deferred"), old);
    assert!(Path::new(&data.join(orphan)).is_file());
    // An operator action waits for the index (the daemon refuses it until
    // then, and the command asks again): the message is deleted, never
    // delivered.
    let postsuper = ph.spawn_as("postsuper", &["-d", &old[1]]);
    assert!(ph.wait_for_log("queue loaded: 2 messages", secs(30)), "{}", ph.log());
    let out = postsuper.wait_with_output().unwrap();
    let said = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(out.status.success(), "postsuper: {said}");
    assert!(said.contains("waiting for the daemon to load the queue"), "postsuper said: {said}");
    assert!(
        ph.log().find("queue loaded").unwrap() < ph.log().find(&format!("{}: removed", old[1])).unwrap(),
        "{}",
        ph.log()
    );
    // Then the rest of the old queue goes, flushed.
    let out = ph.run_as("postqueue", &["-f"], b"");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(subjects(&sink, 2), ["new", "old one"], "{}", ph.log());
    let line = format!("{orphan}: body without an envelope; moved to corrupt/body-{orphan}");
    assert!(ph.log().contains(&line), "no line {line:?}:\n{}", ph.log());
    assert!(ph.spool_dir().join("corrupt").join(format!("body-{orphan}")).is_file());
    assert!(wait_until(secs(10), || ph.queued_count() == 0), "{}", ph.log());
}

#[test]
fn a_flush_asked_for_while_loading_applies_to_the_old_queue() {
    let (mut ph, mut sink, _) = stopped_with_an_old_queue();
    sink.restart();
    ph.set_env(&[("POSTHORN_INDEX_PAUSE", "4")]);
    ph.restart_until_ready();
    let out = ph.run_as("postqueue", &["-f"], b"");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(!ph.loaded(), "the index ran before the pause ended:\n{}", ph.log());
    assert!(sink.messages().is_empty(), "old mail went before the index was done");
    // Not due for an hour, and sent once the index is done.
    assert_eq!(subjects(&sink, 2), ["old one", "old two"], "{}", ph.log());
    assert!(ph.log().find("queue loaded").unwrap() < ph.log().find("status=sent").unwrap(), "{}", ph.log());
}
