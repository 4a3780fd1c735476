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

/// Queues `n` messages with `rcpts` recipients each, over four sessions.
fn queue_many(ph: &Posthorn, n: usize, rcpts: usize) {
    let to: Vec<String> = (0..rcpts).map(|i| format!("a-rather-long-recipient-name-{i}@example.org")).collect();
    std::thread::scope(|scope| {
        for part in 0..4 {
            let to = &to;
            scope.spawn(move || {
                let to: Vec<&str> = to.iter().map(String::as_str).collect();
                let mut smtp = RawSmtp::connect(ph.smtp_addr()).unwrap();
                smtp.ehlo("load.test").unwrap();
                for i in (part..n).step_by(4) {
                    let reply = smtp.send("app@vm.test", &to, format!("Subject: {i}\n\nbody {i}\n").as_bytes());
                    assert_eq!(reply.unwrap().code, 250);
                }
                smtp.quit().unwrap();
            });
        }
    });
    assert!(ph.wait_for_queued(n, secs(60)), "{}", ph.log());
}

/// The queue ids `postqueue -j` lists, in order.
fn listed_ids(ph: &Posthorn) -> Vec<String> {
    let out = ph.run_as("postqueue", &["-j"], b"");
    assert!(out.status.success(), "postqueue -j: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).expect("a JSON line"))
        .map(|v| v["queue_id"].as_str().expect("queue_id").to_string())
        .collect()
}

/// Messages retried every second against a refusing next hop move
/// between `deferred/` and `active/` all the time; every listing must
/// still show each of them exactly once (a reading of the directories from
/// outside the daemon misses the ones that move between reads).
#[test]
fn a_listing_under_load_shows_every_message_exactly_once() {
    let ph = Posthorn::start(&with_lines(
        &satellite_config(&[free_addr()]),
        &["queue.retry_min = \"1s\"", "queue.retry_max = \"1s\""],
    ));
    queue_many(&ph, 300, 1);
    assert!(ph.wait_for_log_count(&["status=deferred"], 600, secs(60)), "not cycling: {}", ph.log());
    let mut expected: Option<Vec<String>> = None;
    for round in 0..25 {
        let mut ids = listed_ids(&ph);
        ids.sort();
        let before = ids.len();
        ids.dedup();
        assert_eq!(ids.len(), before, "round {round}: a message was listed twice");
        match &expected {
            None => expected = Some(ids),
            Some(all) => {
                let lost: Vec<&String> = all.iter().filter(|id| !ids.contains(id)).collect();
                let gained: Vec<&String> = ids.iter().filter(|id| !all.contains(id)).collect();
                assert!(lost.is_empty() && gained.is_empty(), "round {round}: lost {lost:?}, gained {gained:?}");
            }
        }
    }
    assert_eq!(expected.unwrap().len(), 300);
}

/// A local user who opens listings and never reads them holds at most four
/// of them; the fifth is refused with a reason, and neither root nor
/// another listing is blocked meanwhile.
#[test]
fn idle_listings_are_limited_per_user_and_shared() {
    assert!(rustix::process::geteuid().is_root(), "this test drops privileges and must start as root (CI does)");
    let ph = Posthorn::start(&with_lines(
        &satellite_config(&[free_addr()]),
        &["queue.retry_min = \"1h\"", "queue.retry_max = \"1h\""],
    ));
    queue_many(&ph, 200, 80);
    std::fs::set_permissions(ph.dir(), std::fs::Permissions::from_mode(0o711)).unwrap();
    let socket = ph.spool_dir().join("showq.sock");
    // As nobody: the size of a whole listing, then four idle listings and
    // what a fifth and a sixth get.
    let script = r#"
import socket, sys, time
path = sys.argv[1]
def whole():
    s = socket.socket(socket.AF_UNIX); s.connect(path); n = 0
    while True:
        b = s.recv(1 << 16)
        if not b: return n
        n += len(b)
size = whole()
idle = []
for i in range(4):
    s = socket.socket(socket.AF_UNIX); s.connect(path); idle.append(s)
time.sleep(1)
refused = []
for i in range(2):
    s = socket.socket(socket.AF_UNIX); s.connect(path); s.settimeout(10)
    refused.append(s.makefile().readline().strip())
print(size)
for r in refused: print(r)
sys.stdout.flush()
sys.stdin.read()
"#;
    let mut nobody = Command::new("setpriv")
        .args(["--reuid=65534", "--regid=65534", "--clear-groups", "--", "/usr/bin/python3", "-c", script])
        .arg(&socket)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("setpriv python3");
    let mut lines = std::io::BufRead::lines(std::io::BufReader::new(nobody.stdout.take().unwrap()));
    let size: usize = lines.next().unwrap().unwrap().parse().unwrap();
    // Bigger than both sockets' buffers, or an idle listing would not be
    // held by the daemon at all.
    assert!(size > 1 << 20, "the listing is only {size} bytes: queue more for this test to mean anything");
    for _ in 0..2 {
        let refused = lines.next().unwrap().unwrap();
        assert!(refused.contains("\"error\"") && refused.contains("this user"), "{refused}");
    }
    // Root still lists the queue, through the daemon, in full.
    let ids = listed_ids(&ph);
    assert_eq!(ids.len(), 200);
    drop(nobody.stdin.take());
    let _ = nobody.wait();
}
