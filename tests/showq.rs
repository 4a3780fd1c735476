//! `mailq` for everyone: a user who may not read the spool gets the queue
//! listing from the daemon's public `showq.sock` (as Postfix's showq
//! service gives it), while queue changes stay refused.

mod harness;

use harness::*;
use std::os::unix::fs::PermissionsExt;
use std::process::Command;

/// Runs the binary as `nobody` (needs root, which CI has).
fn as_nobody(args: &[&str]) -> std::process::Output {
    Command::new("setpriv")
        .args(["--reuid=65534", "--regid=65534", "--clear-groups", "--"])
        .arg(BIN)
        .args(args)
        .output()
        .expect("setpriv")
}

#[test]
fn unprivileged_mailq_lists_through_the_daemon_and_cannot_change_anything() {
    assert!(rustix::process::geteuid().is_root(), "this test drops privileges and must start as root (CI does)");
    let ph = Posthorn::start(&with_lines(
        &satellite_config(&[free_addr()]),
        &["queue.retry_min = \"1h\"", "queue.retry_max = \"1h\""],
    ));
    let out = ph.sendmail(&["-f", "app@vm.test", "ops@example.org"], b"Subject: x\n\nsecret body\n");
    assert!(out.status.success());
    assert!(wait_until(secs(20), || ph.spool_files("deferred").len() == 1), "{}", ph.log());
    let id = ph.spool_files("deferred")[0].file_name().unwrap().to_string_lossy().into_owned();

    // nobody may reach the sockets (the spool is 0711) but read nothing else.
    std::fs::set_permissions(ph.dir(), std::fs::Permissions::from_mode(0o711)).unwrap();
    let public_config = tempfile::NamedTempFile::new().unwrap();
    std::fs::copy(ph.config_path(), public_config.path()).unwrap();
    std::fs::set_permissions(public_config.path(), std::fs::Permissions::from_mode(0o644)).unwrap();
    let config = public_config.path().to_str().unwrap();
    assert!(std::fs::read_dir(ph.spool_dir().join("deferred")).is_ok());

    let out = as_nobody(&["mailq", "-c", config]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "mailq as nobody: {}", String::from_utf8_lossy(&out.stderr));
    assert!(text.starts_with("-Queue ID-"), "{text}");
    assert!(text.contains(&id) && text.contains("app@vm.test") && text.contains("ops@example.org"), "{text}");
    assert!(!text.contains("secret body"));

    let out = as_nobody(&["postsuper", "-c", config, "-d", &id]);
    assert!(!out.status.success(), "nobody must not delete: {}", String::from_utf8_lossy(&out.stdout));
    assert_eq!(ph.spool_files("deferred").len(), 1, "the message is still queued");
}
