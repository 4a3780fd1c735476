//! End-to-end: queue surgery with the daemon down, and an honest `mailq`
//! (issue 14, items 1, 2 and two of 11). Everything runs through the
//! compatibility names (`install-links`) in a real shell, the daemon started
//! and stopped with `postfix start` / `postfix stop` as the runbook does.
//! Effects are checked in the spool, the audit log and the receiving sink.
//!
//! Scenarios:
//! 1. The runbook (`postfix stop`, `postsuper -d ALL`, `postfix start`), with
//!    `postsuper -h/-H/-r/-d`, `exim -Mrm` and `posthorn queue delete`
//!    through the daemon and with it down; audit lines; maildrop mail listed
//!    by `mailq` with Postfix's warning; only mail not deleted is delivered.
//! 2. A daemon started during a long `postsuper -d ALL` waits for it, says
//!    whom it waits for, then delivers nothing deleted and all the rest.
//!    A command that meets a daemon's lock without an answering control
//!    socket (a daemon starting) asks again, then gives up touching nothing.
//! 3. Another local account (`nobody`) can change nothing, daemon up or
//!    down; its `mailq` is the bare listing (daemon up) or Postfix's fatal
//!    (daemon down); its `postqueue -f` reaches the daemon.
//! 4. No configuration and no spool: `mailq` fails; `check_mailq` (the
//!    monitoring plugin, unchanged) reports WARNING/CRITICAL for mail
//!    waiting with the daemon down, and CRITICAL with no MTA at all.
//! 5. `queue why` shows a remote reply once; `postqueue -f` right after
//!    `exim -Mrm` counts the messages that are left.

mod harness;

use harness::*;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

/// A satellite of its own, run with `postfix start`/`stop`, whose
/// configuration names one smarthost (changed between starts).
struct Node {
    dir: tempfile::TempDir,
    config: PathBuf,
    spool: PathBuf,
    links: PathBuf,
}

impl Node {
    fn new(smarthost: std::net::SocketAddr) -> Node {
        let dir = tempfile::Builder::new().prefix("posthorn-surgery-").tempdir().unwrap();
        let node = Node {
            config: dir.path().join("posthorn.toml"),
            spool: dir.path().join("spool"),
            links: dir.path().join("links"),
            dir,
        };
        node.relay_to(smarthost);
        let out = Command::new(BIN).args(["install-links", node.links.to_str().unwrap()]).output().unwrap();
        assert!(out.status.success(), "install-links: {}", text(&out.stderr));
        node
    }

    /// Rewrites the configuration to relay to `smarthost`, retrying hourly.
    fn relay_to(&self, smarthost: std::net::SocketAddr) {
        // `postfix start` logs to syslog unless told otherwise; with no
        // syslog at this socket the daemon's own file gets the lines.
        let no_syslog = format!("log.syslog_socket = {}", toml_str(&self.path("no-syslog")));
        let body = with_lines(
            &satellite_config(&[smarthost]),
            &["queue.retry_min = \"1h\"", "queue.retry_max = \"1h\"", &no_syslog],
        );
        // Started as root in CI: stays root (see tests/privilege.rs).
        let head = format!("user = \"root\"\nspool = {}\nhostname = \"vm7.test\"\n", toml_str(&self.path("spool")));
        std::fs::write(&self.config, head + &body).unwrap();
    }

    fn path(&self, name: &str) -> String {
        self.dir.path().join(name).display().to_string()
    }

    /// `script` in `sh -c`, the links first on PATH, POSTHORN_CONFIG set.
    fn sh_in(&self, script: &str, stdin: &[u8]) -> Output {
        let bin_dir = Path::new(BIN).parent().unwrap();
        let path = format!("{}:{}:{}", self.links.display(), bin_dir.display(), std::env::var("PATH").unwrap());
        let mut cmd = Command::new("sh");
        cmd.arg("-c").arg(script).env("PATH", path).env("POSTHORN_CONFIG", &self.config).current_dir(self.dir.path());
        run_with_timeout(cmd, stdin, COMMAND_TIMEOUT)
    }

    fn sh(&self, script: &str) -> Output {
        self.sh_in(script, b"")
    }

    /// Runs `script`, which must succeed; its stdout.
    fn ok(&self, script: &str) -> String {
        let out = self.sh(script);
        assert!(out.status.success(), "`{script}` exited {}; stderr:\n{}", out.status, text(&out.stderr));
        text(&out.stdout)
    }

    /// Queue ids in `state`, sorted.
    fn ids(&self, state: &str) -> Vec<String> {
        let mut ids: Vec<String> = std::fs::read_dir(self.spool.join(state))
            .map(|d| d.map(|e| e.unwrap().file_name().to_string_lossy().into_owned()).collect())
            .unwrap_or_default();
        ids.sort();
        ids
    }

    fn audit(&self) -> Vec<String> {
        std::fs::read_to_string(self.spool.join("audit.log")).unwrap_or_default().lines().map(str::to_string).collect()
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.spool.join("posthorn.log")).unwrap_or_default()
    }

    /// Submits one message per subject with `sendmail` (daemon running) and
    /// waits until all are deferred; their ids in submission order.
    fn fill(&self, subjects: &[&str]) -> Vec<String> {
        let mut ids = Vec::new();
        for subject in subjects {
            let before = self.ids("deferred");
            let message = format!("Subject: {subject}\n\n{subject}\n");
            let out = self.sh_in("sendmail -f app@vm7.test ops@example.org", message.as_bytes());
            assert!(out.status.success(), "sendmail: {}", text(&out.stderr));
            let mut new = Vec::new();
            let appeared = wait_until(secs(20), || {
                new = self.ids("deferred").into_iter().filter(|i| !before.contains(i)).collect();
                new.len() == 1
            });
            assert!(appeared, "{subject} not deferred; log:\n{}", self.log());
            ids.extend(new);
        }
        ids
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        if let Ok(pid) = std::fs::read_to_string(self.spool.join("posthorn.pid")) {
            let _ = Command::new("kill").arg("-9").arg(pid.trim()).status();
        }
    }
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

/// The subjects of what the sink received.
fn subjects(sink: &Sink) -> Vec<String> {
    let mut s: Vec<String> = sink.parsed().iter().filter_map(|m| header(&m.message, "Subject")).collect();
    s.sort();
    s
}

#[test]
fn the_runbook_with_the_daemon_up_and_down() {
    let sink = Sink::start();
    let node = Node::new(free_addr());
    node.ok("postfix start");
    let ids = node.fill(&["m0", "m1", "m2", "m3", "m4", "m5"]);

    // Through the daemon.
    node.ok(&format!("postsuper -h {}", ids[0]));
    node.ok(&format!("postsuper -d {}", ids[5]));
    assert_eq!(node.ids("hold"), [ids[0].clone()]);
    let audit = node.audit();
    assert!(audit[0].ends_with(&format!("via=postsuper action=hold count=1 ids={}", ids[0])), "{audit:?}");
    assert!(audit[1].ends_with(&format!("action=delete count=1 ids={}", ids[5])), "{audit:?}");

    // The daemon down: every change on the files, audited the same way.
    node.ok("postfix stop");
    assert!(!node.spool.join("control.sock").exists());
    let out = node.sh(&format!("postsuper -H {}", ids[0]));
    assert!(out.status.success() && text(&out.stderr).contains(&format!("{}: released from hold", ids[0])));
    node.ok(&format!("postsuper -h {}", ids[1]));
    node.ok(&format!("postsuper -r {}", ids[2]));
    assert_eq!(node.ok(&format!("exim -Mrm {}", ids[3])), format!("Message {} has been removed\n", ids[3]));
    assert!(node.ok(&format!("posthorn queue delete {}", ids[4])).contains(&format!("{}: removed", ids[4])));
    assert_eq!(node.ids("incoming"), sorted(vec![ids[0].clone(), ids[2].clone()]));
    assert_eq!(node.ids("hold"), [ids[1].clone()]);
    assert!(node.ids("deferred").is_empty());
    for gone in [&ids[3], &ids[4], &ids[5]] {
        assert!(!node.spool.join("data").join(gone).exists(), "{gone}: body left behind");
    }
    let audit = node.audit();
    let down = &audit[2..];
    let expected = [
        format!("via=postsuper action=release count=1 ids={} daemon=down", ids[0]),
        format!("via=postsuper action=hold count=1 ids={} daemon=down", ids[1]),
        format!("via=postsuper action=requeue count=1 ids={} daemon=down", ids[2]),
        format!("via=exim action=delete count=1 ids={} daemon=down", ids[3]),
        format!("via=posthorn action=delete count=1 ids={} daemon=down", ids[4]),
    ];
    assert_eq!(down.len(), expected.len(), "{audit:?}");
    for (line, want) in down.iter().zip(&expected) {
        assert!(line.contains(" user=root uid=0 ") && line.ends_with(want.as_str()), "{line:?} is not {want:?}");
    }
    // What needs the daemon says so.
    let out = node.sh(&format!("posthorn queue bounce --yes {}", ids[1]));
    assert_eq!(out.status.code(), Some(75), "{}", text(&out.stderr));
    assert!(text(&out.stderr).contains("daemon is not running"), "{}", text(&out.stderr));

    // Mail dropped while the daemon is down is listed, with Postfix's warning.
    let out = node.sh_in("sendmail -f late@vm7.test ops@example.org", b"Subject: late\n\nlate\n");
    assert!(out.status.success(), "{}", text(&out.stderr));
    let drops = node.ids("maildrop");
    assert_eq!(drops.len(), 1);
    for listing in ["mailq", "postqueue -p", "sendmail -bp", "posthorn queue list"] {
        let out = node.sh(listing);
        assert!(out.status.success(), "{listing}: {}", text(&out.stderr));
        assert_eq!(
            text(&out.stderr),
            "postqueue: warning: Mail system is down -- accessing queue directly\n",
            "{listing}"
        );
        let stdout = text(&out.stdout);
        assert!(stdout.contains(&format!("\n{} ", drops[0])) && stdout.contains(" late@vm7.test\n"), "{stdout}");
        assert!(stdout.ends_with("in 4 Requests.\n"), "{listing}: {stdout}");
    }
    let json = node.ok("postqueue -j");
    assert!(json.lines().next().unwrap().starts_with("{\"queue_name\":\"maildrop\""), "{json}");

    // The runbook's three lines, verbatim (the daemon is down already, so
    // `postfix stop` says so and fails, as Postfix's does).
    let out = node.sh("postfix stop");
    assert_eq!(out.status.code(), Some(1), "{}", text(&out.stderr));
    let out = node.sh("postsuper -d ALL");
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert_eq!(text(&out.stderr), "postsuper: Deleted: 3 messages\n");
    node.relay_to(sink.addr());
    node.ok("postfix start");
    // Only the message dropped after the purge is delivered.
    sink.wait_for_parsed(1, secs(20));
    std::thread::sleep(secs(2));
    assert_eq!(subjects(&sink), ["late"]);
    assert!(node.audit().last().unwrap().contains("action=delete count=3 "), "{:?}", node.audit());
    node.ok("postfix stop");
}

fn sorted(mut v: Vec<String>) -> Vec<String> {
    v.sort();
    v
}

/// `n` copies of the envelope and body of `template` (in `hold/`) under new
/// queue ids in `deferred/`: a big queue in seconds, each entry a real
/// message's files with its own id.
fn clone_into_deferred(spool: &Path, template: &str, n: usize) -> Vec<String> {
    const ALPHABET: &[u8] = b"0123456789BCDFGHJKLMNPQRSTVWXYZ";
    let envelope = std::fs::read_to_string(spool.join("hold").join(template)).unwrap();
    let body = std::fs::read(spool.join("data").join(template)).unwrap();
    let mut ids = Vec::with_capacity(n);
    for i in 0..n {
        // "1" and then ten digits of base 31: valid, unique, and older than
        // anything the daemon hands out today.
        let mut id = vec![b'1'];
        let mut v = i;
        for _ in 0..10 {
            id.push(ALPHABET[v % 31]);
            v /= 31;
        }
        let id = String::from_utf8(id).unwrap();
        std::fs::write(spool.join("deferred").join(&id), envelope.replace(template, &id)).unwrap();
        std::fs::write(spool.join("data").join(&id), &body).unwrap();
        ids.push(id);
    }
    ids
}

#[test]
fn a_daemon_started_during_a_long_purge_waits_for_it() {
    let sink = Sink::start();
    let node = Node::new(free_addr());
    node.ok("postfix start");
    let kept = node.fill(&["keep-1", "keep-2", "keep-3"]);
    node.ok("postsuper -h ALL");
    node.ok("postfix stop");
    const N: usize = 40_000;
    clone_into_deferred(&node.spool, &kept[0], N);
    node.relay_to(sink.addr());

    let bin_dir = Path::new(BIN).parent().unwrap();
    let path = format!("{}:{}:{}", node.links.display(), bin_dir.display(), std::env::var("PATH").unwrap());
    // The runbook's line, narrowed to the deferred queue: held mail stays.
    let purge = Command::new("sh")
        .args(["-c", "postsuper -d ALL deferred"])
        .env("PATH", &path)
        .env("POSTHORN_CONFIG", &node.config)
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let lock = node.spool.join("posthorn.lock");
    let held = wait_until(secs(20), || std::fs::read_to_string(&lock).is_ok_and(|s| s.ends_with(" postsuper\n")));
    assert!(held, "postsuper never held the spool lock");
    // While it deletes: the runbook's next line.
    node.ok("postfix start");
    let purged = purge.wait_with_output().unwrap();
    assert!(purged.status.success(), "{}", text(&purged.stderr));
    assert_eq!(text(&purged.stderr), format!("postsuper: Deleted: {N} messages\n"));

    let log = node.log();
    assert!(log.contains("is in use by postsuper (pid "), "the daemon did not wait for postsuper:\n{log}");
    assert!(log.contains("waiting up to 60 s"), "{log}");
    // Recovery ran after the purge: no body was left to set aside.
    assert!(node.ids("corrupt").is_empty(), "{:?}", node.ids("corrupt"));
    assert!(node.ids("deferred").is_empty());
    assert_eq!(node.ids("hold"), kept);
    assert_eq!(node.ids("data"), kept);

    // Nothing deleted is delivered, nothing kept is lost.
    node.ok("postsuper -H ALL");
    sink.wait_for_parsed(3, secs(30));
    std::thread::sleep(secs(2));
    assert_eq!(subjects(&sink), ["keep-1", "keep-2", "keep-3"]);
    let purge_line = node.audit().into_iter().find(|l| l.contains("action=delete")).unwrap();
    assert!(purge_line.contains(&format!("count={N} ")) && purge_line.ends_with(" daemon=down"), "{purge_line}");
    node.ok("postfix stop");
}

#[test]
fn a_command_that_meets_a_starting_daemon_touches_no_file() {
    let node = Node::new(free_addr());
    node.ok("postfix start");
    let ids = node.fill(&["kept"]);
    node.ok("postfix stop");
    // The lock as a daemon holds it while it recovers and loads the queue,
    // before its control socket answers.
    let lock = std::fs::OpenOptions::new().read(true).write(true).open(node.spool.join("posthorn.lock")).unwrap();
    rustix::fs::flock(&lock, rustix::fs::FlockOperation::NonBlockingLockExclusive).unwrap();
    std::fs::write(node.spool.join("posthorn.lock"), "4242 daemon\n").unwrap();
    let started = std::time::Instant::now();
    let out = node.sh(&format!("postsuper -d {}", ids[0]));
    assert!(started.elapsed() >= secs(9), "gave up after {:?}", started.elapsed());
    assert_eq!(out.status.code(), Some(75), "{}", text(&out.stderr));
    assert!(text(&out.stderr).contains("is held by another posthorn (pid 4242), which does not answer"));
    assert_eq!(node.ids("deferred"), ids);
    assert!(node.audit().iter().all(|l| !l.contains("daemon=down")));
}

/// `posthorn ARGS` as `nobody`, with `config`.
fn as_nobody(args: &[&str], config: &Path) -> Output {
    let mut cmd = Command::new("setpriv");
    cmd.args(["--reuid=65534", "--regid=65534", "--clear-groups", "--"])
        .arg(BIN)
        .args(args)
        .env("POSTHORN_CONFIG", config)
        .current_dir("/");
    run_with_timeout(cmd, b"", COMMAND_TIMEOUT)
}

#[test]
fn another_account_changes_nothing_and_gets_an_honest_mailq() {
    assert!(rustix::process::geteuid().is_root(), "this test drops privileges and must start as root (CI does)");
    let node = Node::new(free_addr());
    node.ok("postfix start");
    let ids = node.fill(&["mine"]);
    // nobody may reach the sockets and the configuration, nothing else.
    std::fs::set_permissions(node.dir.path(), std::fs::Permissions::from_mode(0o711)).unwrap();
    std::fs::set_permissions(&node.config, std::fs::Permissions::from_mode(0o644)).unwrap();
    let audit = node.audit();

    let out = as_nobody(&["mailq"], &node.config);
    assert!(out.status.success(), "mailq as nobody: {}", text(&out.stderr));
    assert_eq!(text(&out.stderr), "", "nothing but the listing");
    assert!(text(&out.stdout).starts_with("-Queue ID-") && text(&out.stdout).contains(&ids[0]));
    let mark = node.log().len();
    let out = as_nobody(&["postqueue", "-f"], &node.config);
    assert!(out.status.success(), "postqueue -f as nobody: {}", text(&out.stderr));
    assert!(wait_until(secs(5), || node.log()[mark..].contains("flush: 1 deferred message(s) scheduled now")));

    for daemon in ["up", "down"] {
        for args in [vec!["postsuper", "-d", &ids[0]], vec!["exim", "-Mrm", &ids[0]], vec!["postsuper", "-h", "ALL"]] {
            let out = as_nobody(&args, &node.config);
            assert!(!out.status.success(), "nobody ran {args:?} (daemon {daemon})");
        }
        assert_eq!(node.ids("deferred"), ids, "daemon {daemon}");
        assert_eq!(node.audit(), audit, "daemon {daemon}");
        if daemon == "up" {
            node.ok("postfix stop");
        }
    }
    let out = as_nobody(&["postsuper", "-d", &ids[0]], &node.config);
    assert_eq!(out.status.code(), Some(77), "{}", text(&out.stderr));
    assert!(text(&out.stderr).contains("root or the spool's owner"), "{}", text(&out.stderr));
    let out = as_nobody(&["mailq"], &node.config);
    assert_eq!(out.status.code(), Some(69));
    assert_eq!(text(&out.stderr), "postqueue: fatal: Queue report unavailable - mail system is down\n");
    assert_eq!(text(&out.stdout), "");
}

/// The monitoring plugin as installed, with its compiled-in mailq path
/// (`utils.pm`) pointing at `mailq`: how a host with posthorn as its MTA
/// has it (`/usr/bin/mailq` is posthorn there). The plugin itself is copied
/// unchanged.
fn check_mailq(mailq: &Path, env: &[(&str, &Path)], args: &[&str]) -> Output {
    let plugins = Path::new("/usr/lib/nagios/plugins");
    assert!(plugins.join("check_mailq").exists(), "monitoring-plugins-standard is not installed (see .ci/run)");
    let dir = tempfile::tempdir().unwrap();
    std::fs::copy(plugins.join("check_mailq"), dir.path().join("check_mailq")).unwrap();
    let utils = std::fs::read_to_string(plugins.join("utils.pm")).unwrap();
    let utils = utils.replace("\"/usr/bin/mailq\"", &format!("\"{}\"", mailq.display()));
    assert!(utils.contains(&mailq.display().to_string()), "utils.pm names no mailq");
    std::fs::write(dir.path().join("utils.pm"), utils).unwrap();
    let mut cmd = Command::new("perl");
    cmd.arg(dir.path().join("check_mailq")).args(args).env_remove("POSTHORN_CONFIG").current_dir(dir.path());
    for (k, v) in env {
        cmd.env(k, v);
    }
    run_with_timeout(cmd, b"", COMMAND_TIMEOUT)
}

#[test]
fn no_mta_is_no_empty_queue_and_check_mailq_sees_waiting_mail() {
    // No configuration, no spool: a failure with the reason.
    let empty = tempfile::tempdir().unwrap();
    let node = Node::new(free_addr());
    let mailq = node.links.join("mailq");
    let mut cmd = Command::new(&mailq);
    cmd.env_remove("POSTHORN_CONFIG").current_dir(empty.path());
    let out = run_with_timeout(cmd, b"", COMMAND_TIMEOUT);
    assert_eq!(out.status.code(), Some(69), "{}", text(&out.stderr));
    assert!(text(&out.stderr).contains("no mail queue: the spool posthorn-spool does not exist"));
    assert!(!text(&out.stdout).contains("empty"));
    let out = check_mailq(&mailq, &[], &["-w", "1", "-c", "5", "-M", "postfix"]);
    assert_eq!(out.status.code(), Some(2), "no MTA: {}", text(&out.stdout));
    assert!(text(&out.stdout).starts_with("CRITICAL"), "{}", text(&out.stdout));

    // Mail waiting with the daemon down: two queued, one in the maildrop.
    node.ok("postfix start");
    node.fill(&["a", "b"]);
    node.ok("postfix stop");
    node.ok("echo 'Subject: c' | sendmail ops@example.org");
    let env = [("POSTHORN_CONFIG", node.config.as_path())];
    let out = check_mailq(&mailq, &env, &["-w", "1", "-c", "5", "-M", "postfix"]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out.stdout));
    assert!(text(&out.stdout).starts_with("WARNING: postfix mailq is 3 "), "{}", text(&out.stdout));
    let out = check_mailq(&mailq, &env, &["-w", "1", "-c", "2", "-M", "postfix"]);
    assert_eq!(out.status.code(), Some(2), "{}", text(&out.stdout));
}

#[test]
fn queue_why_shows_a_reply_once_and_flush_counts_what_is_left() {
    let reply = "450 4.2.0 <ops@example.org>: mailbox busy";
    let next = Scripted::start(Script::new().rcpt("ops@", reply));
    let ph = Posthorn::start(&with_lines(
        &satellite_config(&[next.addr()]),
        &["queue.retry_min = \"1h\"", "queue.retry_max = \"1h\""],
    ));
    for i in 0..3 {
        let out = ph.sendmail(&["-f", "app@vm.test", "ops@example.org"], format!("Subject: {i}\n\n{i}\n").as_bytes());
        assert!(out.status.success());
    }
    assert!(wait_until(secs(20), || ph.spool_files("deferred").len() == 3), "{}", ph.log());
    let mut ids: Vec<String> =
        ph.spool_files("deferred").iter().map(|p| p.file_name().unwrap().to_string_lossy().into_owned()).collect();
    ids.sort();

    let why = ph.command(&["queue", "why", &ids[0]], b"");
    let why = text(&why.stdout);
    assert_eq!(why.matches("450 4.2.0").count(), 1, "{why}");
    assert!(why.contains(&format!("said: {reply}")), "{why}");

    let out = ph.run_as("exim", &["-Mrm", &ids[0]], b"");
    assert!(out.status.success(), "{}", text(&out.stderr));
    let mark = ph.log_mark();
    let out = ph.run_as("postqueue", &["-f"], b"");
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(
        ph.wait_for_log_since(mark, "flush: 2 deferred message(s) scheduled now", secs(10)),
        "{}",
        &ph.log()[mark..]
    );
}
