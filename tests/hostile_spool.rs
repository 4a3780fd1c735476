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

/// Queue ids whose envelopes are in `state`, sorted.
fn ids_in(ph: &Posthorn, state: &str) -> Vec<String> {
    let mut ids: Vec<String> = ph.spool_files(state).iter().map(|p| file_name(p)).collect();
    ids.sort();
    ids
}

fn file_name(path: &Path) -> String {
    path.file_name().unwrap().to_string_lossy().into_owned()
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

#[test]
fn directories_in_tmp_and_data_do_not_stop_the_start() {
    let sink = Sink::start();
    let mut ph = Posthorn::start(&satellite_config(&[sink.addr()]));
    ph.stop();
    let spool = ph.spool_dir();
    std::fs::create_dir(spool.join("tmp/lost+found")).unwrap();
    std::fs::create_dir(spool.join("data/backup")).unwrap();
    std::fs::write(spool.join("data/backup/old"), "kept").unwrap();
    drop_while_down(&ph, "past the directories");

    ph.restart();
    for path in ["tmp/lost+found", "data/backup"] {
        let line = format!("recovery: {path} is a directory, not a spool file; left alone");
        assert!(ph.log().contains(&line), "no line {line:?}:\n{}", ph.log());
    }
    assert_eq!(std::fs::read_to_string(spool.join("data/backup/old")).unwrap(), "kept");
    assert_eq!(subjects(&sink, 1), ["past the directories"], "{}", ph.log());
    // And again: what recovery left alone stays harmless.
    ph.restart();
    assert!(spool.join("tmp/lost+found").is_dir());
}

#[test]
fn orphan_bodies_and_misnamed_envelopes_are_quarantined_with_a_line() {
    let mut sink = Sink::start_stopped();
    let mut ph = Posthorn::start(&satellite_config(&[sink.addr()]));
    for subject in ["renamed away", "misnamed", "normal"] {
        let text = format!("Subject: {subject}\r\n\r\nhello\r\n");
        smtplib_send(ph.smtp_addr(), "app@vm.test", &["ops@example.org"], &text).unwrap();
    }
    assert!(wait_until(secs(20), || ids_in(&ph, "deferred").len() == 3), "{}", ph.log());
    ph.stop();
    let ids = ids_in(&ph, "deferred");
    let (renamed, misnamed, normal) = (&ids[0], &ids[1], &ids[2]);
    let (deferred, data) = (ph.spool_dir().join("deferred"), ph.spool_dir().join("data"));
    // An operator's backup copy: its body is now an orphan.
    std::fs::rename(deferred.join(renamed), deferred.join(format!("{renamed}.bak"))).unwrap();
    // An envelope filed under another message's name, with a body there.
    let mut other = misnamed.clone();
    other.replace_range(other.len() - 1.., if misnamed.ends_with('Z') { "Y" } else { "Z" });
    assert!(!ids.contains(&other));
    std::fs::rename(deferred.join(misnamed), deferred.join(&other)).unwrap();
    std::fs::copy(data.join(misnamed), data.join(&other)).unwrap();

    sink.restart();
    ph.restart();
    let corrupt = ph.spool_dir().join("corrupt");
    for orphan in [renamed, misnamed] {
        let line = format!("{orphan}: body without an envelope; moved to corrupt/body-{orphan}");
        assert!(ph.log().contains(&line), "no line {line:?}:\n{}", ph.log());
        assert!(corrupt.join(format!("body-{orphan}")).is_file(), "the body of {orphan} is gone");
    }
    let line = format!("{other}: envelope file names another message ({misnamed}); moved to corrupt/");
    assert!(ph.log().contains(&line), "no line {line:?}:\n{}", ph.log());
    assert!(corrupt.join(&other).is_file());
    let listing = ph.run_as("mailq", &[], b"");
    assert!(!String::from_utf8_lossy(&listing.stdout).contains(&other), "{}", String::from_utf8_lossy(&listing.stdout));
    assert_eq!(subjects(&sink, 1), ["normal"], "{}", ph.log());
    // Only the operator's copy is left, where the operator put it.
    let bak = vec![format!("{renamed}.bak")];
    assert!(wait_until(secs(10), || ids_in(&ph, "deferred") == bak), "{}", ph.log());
    assert!(!ph.log().contains(&format!("{normal}: body")), "{}", ph.log());
}
