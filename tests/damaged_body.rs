//! End-to-end: a queued message whose body file was damaged on disk
//! (issue 12 item 15) is never delivered as if whole.
//!
//! Three messages wait for a smarthost that is down; with the daemon
//! stopped, one body is truncated and one emptied. After a restart and a
//! flush, only the intact message reaches the smarthost, each damaged one
//! is named in the log with both sizes, and its envelope is in `corrupt/`.

mod harness;

use harness::*;
use std::path::Path;

fn file_name(path: &Path) -> String {
    path.file_name().unwrap().to_string_lossy().into_owned()
}

/// Queues a message with `subject`; returns its queue id once deferred.
fn queue_deferred(ph: &Posthorn, subject: &str) -> String {
    let before: Vec<String> = ph.spool_files("deferred").iter().map(|p| file_name(p)).collect();
    let body = format!("From: root@example.org\nTo: ops@example.net\nSubject: {subject}\n\nhello\n");
    smtplib_send(ph.smtp_addr(), "root@example.org", &["ops@example.net"], &body).unwrap();
    let mut id = None;
    let found = wait_until(secs(20), || {
        id = ph.spool_files("deferred").iter().map(|p| file_name(p)).find(|n| !before.contains(n));
        id.is_some()
    });
    assert!(found, "{subject} was not deferred; log:\n{}", ph.log());
    id.unwrap()
}

#[test]
fn truncated_and_empty_bodies_are_quarantined_not_delivered() {
    let mut sink = Sink::start_stopped();
    let mut ph = Posthorn::start(&satellite_config(&[sink.addr()]));
    let truncated = queue_deferred(&ph, "truncated");
    let emptied = queue_deferred(&ph, "emptied");
    let _whole = queue_deferred(&ph, "whole");
    ph.stop();

    let data = ph.spool_dir().join("data");
    let size = |id: &str| std::fs::metadata(data.join(id)).unwrap().len();
    let (truncated_size, emptied_size) = (size(&truncated), size(&emptied));
    std::fs::OpenOptions::new().write(true).open(data.join(&truncated)).unwrap().set_len(20).unwrap();
    std::fs::OpenOptions::new().write(true).open(data.join(&emptied)).unwrap().set_len(0).unwrap();

    sink.restart();
    ph.restart();
    let out = ph.command(&["queue", "flush"], b"");
    assert!(out.status.success(), "queue flush: {out:?}");
    let got = sink.wait_for_parsed(1, secs(20));
    assert_eq!(got.len(), 1, "log:\n{}", ph.log());
    assert_eq!(got[0].header("Subject").as_deref(), Some("whole"));

    for (id, found, expected) in [(&truncated, 20, truncated_size), (&emptied, 0, emptied_size)] {
        let line = format!("{id}: damaged message: body is {found} bytes, its envelope says {expected}");
        assert!(ph.wait_for_log(&line, secs(10)), "no line {line:?}:\n{}", ph.log());
        let corrupt: Vec<String> = ph.spool_files("corrupt").iter().map(|p| file_name(p)).collect();
        assert!(corrupt.contains(id), "{id} is not in corrupt/: {corrupt:?}");
        let sent = ph.log_lines(&[id.as_str(), "status=sent"]);
        assert!(sent.is_empty(), "a damaged message was logged sent: {sent:?}");
    }
    // A moment for anything else the flush might have sent.
    std::thread::sleep(std::time::Duration::from_millis(500));
    assert_eq!(sink.messages().len(), 1, "a damaged message reached the smarthost; log:\n{}", ph.log());
}
