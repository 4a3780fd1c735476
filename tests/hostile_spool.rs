//! Hostile and odd entries in the spool (issue 12, items 2, 6, 13 and 16):
//! whatever a local user plants in the maildrop, or an operator or the
//! filesystem leaves in the queue directories, the daemon starts, logs the
//! entry by name, touches nothing outside the spool, and delivers the rest.

mod harness;

use harness::*;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::time::Instant;

/// A FIFO at `path`, as any local user can make in the maildrop.
fn mkfifo(path: &Path) {
    let mode = rustix::fs::Mode::from_raw_mode(0o644);
    rustix::fs::mknodat(rustix::fs::CWD, path, rustix::fs::FileType::Fifo, mode, 0).expect("mkfifo");
}

/// `sendmail` with the daemon down: the message waits in the maildrop.
fn drop_while_down(ph: &Posthorn, subject: &str) {
    let out = ph.sendmail(&["ops@example.org"], format!("Subject: {subject}\n\nhello\n").as_bytes());
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
}

fn subjects(sink: &Sink, n: usize) -> Vec<String> {
    let mut got: Vec<String> = sink.wait_for_parsed(n, secs(20)).iter().filter_map(|m| m.header("Subject")).collect();
    got.sort();
    got
}

#[test]
fn links_in_the_maildrop_are_removed_and_never_followed() {
    assert!(rustix::process::geteuid().is_root(), "this test starts the daemon as root (CI runs as root)");
    let sink = Sink::start();
    // As its own account, the start hands each drop to the daemon's group.
    let mut ph = Posthorn::start(&with_lines(&satellite_config(&[sink.addr()]), &["user = \"nobody\""]));
    ph.stop();
    let maildrop = ph.spool_dir().join("maildrop");
    let outside: PathBuf = ph.dir().join("outside.txt");
    std::fs::write(&outside, "not the daemon's\n").unwrap();
    std::fs::set_permissions(&outside, std::fs::Permissions::from_mode(0o600)).unwrap();
    std::os::unix::fs::symlink("/nonexistent/posthorn-test", maildrop.join("dangling")).unwrap();
    std::os::unix::fs::symlink(&outside, maildrop.join("pointer")).unwrap();
    drop_while_down(&ph, "beside the links");

    ph.restart();
    let mode = std::fs::metadata(&outside).unwrap().permissions().mode() & 0o7777;
    assert_eq!(mode, 0o600, "a file outside the spool changed mode");
    assert_eq!(std::fs::read_to_string(&outside).unwrap(), "not the daemon's\n");
    for name in ["dangling", "pointer"] {
        let line = format!("maildrop {name}: refused: a symbolic link; removed");
        assert!(ph.wait_for_log(&line, secs(5)), "no line {line:?}:\n{}", ph.log());
        assert!(std::fs::symlink_metadata(maildrop.join(name)).is_err(), "{name} is still in the maildrop");
    }
    assert_eq!(subjects(&sink, 1), ["beside the links"], "{}", ph.log());
}

#[test]
fn a_fifo_in_the_maildrop_blocks_neither_pickup_nor_shutdown() {
    let sink = Sink::start();
    let mut ph = Posthorn::start(&satellite_config(&[sink.addr()]));
    ph.stop();
    let maildrop = ph.spool_dir().join("maildrop");
    // Drop names are hex timestamps: these sort before the real drop.
    mkfifo(&maildrop.join("0fifo"));
    std::fs::create_dir(maildrop.join("0dir")).unwrap();
    drop_while_down(&ph, "after the fifo");

    ph.restart();
    smtplib_send(ph.smtp_addr(), "app@vm.test", &["ops@example.org"], "Subject: by smtp\r\n\r\nhello\r\n").unwrap();
    assert_eq!(subjects(&sink, 2), ["after the fifo", "by smtp"], "{}", ph.log());
    for (name, what) in [("0fifo", "a FIFO"), ("0dir", "a directory")] {
        let line = format!("maildrop {name}: refused: not a regular file but {what}; moved to");
        assert!(ph.wait_for_log(&line, secs(5)), "no line {line:?}:\n{}", ph.log());
        assert!(ph.spool_dir().join("corrupt").join(format!("maildrop-{name}")).exists());
    }

    let asked = Instant::now();
    assert!(ph.stop().success(), "{}", ph.log());
    assert!(asked.elapsed() < secs(5), "SIGTERM took {:?}", asked.elapsed());
}
