//! A daemon started as root binds its ports and then runs as its own
//! account (`user`), with the spool handed to that account: it still
//! accepts, queues, picks up `sendmail` drops from other users and
//! delivers; root cannot be taken back. A missing account refuses the start.

mod harness;

use harness::*;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::process::Command;

const NOBODY: u32 = 65534;

/// A line of `/proc/PID/status` for every thread of the process (each
/// thread has credentials of its own), without its key.
fn status_lines(pid: u32, key: &str) -> Vec<String> {
    let tasks = std::fs::read_dir(format!("/proc/{pid}/task")).expect("read /proc/PID/task");
    tasks
        .map(|task| {
            let status = std::fs::read_to_string(task.unwrap().path().join("status")).expect("read the task status");
            let line = status.lines().find(|l| l.starts_with(key)).unwrap_or_default();
            line.split_whitespace().skip(1).collect::<Vec<_>>().join(" ")
        })
        .collect()
}

/// `posthorn ARGS` as the user `daemon` (uid 1), a local user who is
/// neither root nor the daemon's account.
fn as_daemon_user(ph: &Posthorn, args: &[&str], stdin: &[u8]) -> std::process::Output {
    let mut cmd = Command::new("setpriv");
    cmd.args(["--reuid=1", "--regid=1", "--clear-groups", "--"])
        .arg(BIN)
        .args(args)
        .env("POSTHORN_CONFIG", ph.config_path())
        .current_dir("/");
    run_with_timeout(cmd, stdin, secs(30))
}

#[test]
fn started_as_root_it_runs_as_its_user_and_still_delivers() {
    assert!(rustix::process::geteuid().is_root(), "this test starts the daemon as root (CI runs as root)");
    let mut sink = Sink::start();
    let mut ph = Posthorn::start(&with_lines(&satellite_config(&[sink.addr()]), &["user = \"nobody\""]));
    let pid = ph.pid().expect("running");
    // Every thread, including the runtime's, which existed before the switch.
    let threads = status_lines(pid, "Uid:").len();
    assert!(threads > 1, "the daemon runs several threads");
    let all = format!("{NOBODY} {NOBODY} {NOBODY} {NOBODY}");
    for (key, expected) in [("Uid:", all.clone()), ("Gid:", all), ("Groups:", NOBODY.to_string())] {
        assert_eq!(status_lines(pid, key), vec![expected; threads], "{key}");
    }
    assert!(ph.wait_for_log("running as user nobody (uid 65534, gid 65534)", secs(5)), "{}", ph.log());

    let spool = ph.spool_dir();
    for path in [spool.clone(), spool.join("deferred"), spool.join("data"), spool.join("control.sock")] {
        assert_eq!(std::fs::metadata(&path).unwrap().uid(), NOBODY, "{} is not the daemon's", path.display());
    }
    let maildrop = std::fs::metadata(spool.join("maildrop")).unwrap();
    assert_eq!((maildrop.uid(), maildrop.gid(), maildrop.permissions().mode() & 0o7777), (NOBODY, NOBODY, 0o3733));

    // Mail by SMTP is queued (files written as nobody) and relayed.
    smtplib_send(ph.smtp_addr(), "app@vm.test", &["ops@example.org"], "Subject: by smtp\r\n\r\nhello\r\n").unwrap();
    // A drop by another local user, while the daemon runs: owned by that
    // user, readable through the maildrop's group.
    let out = as_daemon_user(&ph, &["sendmail", "ops@example.org"], b"Subject: by sendmail\n\nhello\n");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let got = sink.wait_for_parsed(2, secs(20));
    assert_eq!(got.len(), 2, "{}", ph.log());
    let subjects: Vec<_> = got.iter().filter_map(|m| m.header("Subject")).collect();
    assert!(subjects.contains(&"by smtp".to_string()) && subjects.contains(&"by sendmail".to_string()), "{subjects:?}");
    // The drop's owner, not the daemon's account, is the submitting user.
    let from_drop = got.iter().find(|m| m.header("Subject").as_deref() == Some("by sendmail")).unwrap();
    assert!(from_drop.text().contains("daemon@"), "{}", from_drop.text());

    // Drops written while it is down are picked up by the next start; root
    // still reaches the control socket, and a reload reads the
    // configuration as the daemon's account.
    ph.stop();
    let out = as_daemon_user(&ph, &["sendmail", "ops@example.org"], b"Subject: while down\n\nhello\n");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    ph.restart();
    assert_eq!(sink.wait_for_parsed(3, secs(20)).len(), 3, "{}", ph.log());
    let mark = ph.log_mark();
    let out = ph.command(&["reload"], b"");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(!ph.log()[mark..].contains("reload refused"), "{}", ph.log());

    // Root's queue changes go through the control socket; the audit log
    // root creates belongs to the account too, which appends to it later.
    sink.stop();
    smtplib_send(ph.smtp_addr(), "app@vm.test", &["ops@example.org"], "Subject: stays\r\n\r\nx\r\n").unwrap();
    assert!(wait_until(secs(20), || ph.spool_files("deferred").len() == 1), "{}", ph.log());
    let out = ph.command(&["postsuper", "-d", "ALL"], b"");
    assert!(String::from_utf8_lossy(&out.stderr).contains("Deleted: 1 message"), "{out:?}");
    let audit = std::fs::metadata(spool.join("audit.log")).expect("the audit log");
    assert_eq!((audit.uid(), audit.gid()), (NOBODY, NOBODY));
}

#[test]
fn a_missing_account_refuses_the_start() {
    assert!(rustix::process::geteuid().is_root(), "this test starts the daemon as root (CI runs as root)");
    let err =
        Posthorn::try_start(&with_lines(&satellite_config(&[free_addr()]), &["user = \"no-such-posthorn-user\""]))
            .map(|_| ())
            .expect_err("started without its account");
    assert!(err.contains("user \"no-such-posthorn-user\"") && err.contains("does not exist"), "{err}");
    assert!(err.contains("useradd"), "the error says how to fix it: {err}");
}
