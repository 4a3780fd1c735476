//! Root never acts through a path the mail account can write (issue 12,
//! item 1, and the Low items on log modes, sockets and accept loops).
//!
//! As root, the daemon's account (`nobody`) plants links in its spool —
//! `audit.log`, `posthorn.pid`, `posthorn.log` pointing at files under
//! `/etc` made by the test, `tmp/` pointing at a directory of them — and
//! writes a fake pid. Then `postsuper -d`, `serve`, `postfix start` and
//! `postfix stop` run as root: the victims keep their content, mode and
//! owner, the fake pid's process survives, and each command does its work
//! or refuses, naming the path. Last, a daemon out of file descriptors
//! waits instead of spinning, and serves again once they are back.
//!
//! Every test needs root (CI runs as root) and skips itself, saying why,
//! without it.

mod harness;

use harness::*;
use std::io::{BufRead, BufReader, Read};
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};

const NOBODY: u32 = 65534;

fn skipped() -> bool {
    let root = rustix::process::geteuid().is_root();
    if !root {
        eprintln!("skipped: this test plants links as another account and runs commands as root; run it as root");
    }
    !root
}

/// Runs `script` with `sh -c` as `nobody`, the daemon's account.
fn as_account(script: &str) {
    let mut cmd = Command::new("setpriv");
    cmd.args(["--reuid=65534", "--regid=65534", "--clear-groups", "--", "sh", "-c", script]).current_dir("/");
    let out = run_with_timeout(cmd, b"", secs(30));
    assert!(out.status.success(), "as nobody: {script}: {}", String::from_utf8_lossy(&out.stderr));
}

/// Files under `/etc` that only root may change, each remembered as made.
struct Victims {
    dir: PathBuf,
    made: Vec<(PathBuf, String, u32)>,
}

impl Victims {
    fn new(names: &[&str]) -> Victims {
        let dir = PathBuf::from("/etc").join(unique_name("posthorn-test-victims"));
        std::fs::create_dir(&dir).unwrap();
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o755)).unwrap();
        let mut made = Vec::new();
        for (i, name) in names.iter().enumerate() {
            let path = dir.join(name);
            let content = format!("root's file {name}\n");
            let mode = [0o600, 0o644][i % 2];
            std::fs::write(&path, &content).unwrap();
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode)).unwrap();
            made.push((path, content, mode));
        }
        Victims { dir, made }
    }

    fn path(&self, name: &str) -> String {
        self.dir.join(name).display().to_string()
    }

    fn assert_untouched(&self, after: &str) {
        for (path, content, mode) in &self.made {
            let meta = std::fs::symlink_metadata(path).unwrap_or_else(|e| panic!("{after}: {}: {e}", path.display()));
            assert_eq!(std::fs::read_to_string(path).unwrap(), *content, "{after}: {} was written", path.display());
            assert_eq!(meta.mode() & 0o7777, *mode, "{after}: {} changed mode", path.display());
            assert_eq!((meta.uid(), meta.gid()), (0, 0), "{after}: {} changed owner", path.display());
        }
    }
}

impl Drop for Victims {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn stderr(out: &std::process::Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

#[test]
fn postsuper_and_serve_never_follow_the_accounts_links() {
    if skipped() {
        return;
    }
    let victims = Victims::new(&["audit", "pid", "queued-a", "queued-b"]);
    let mut sink = Sink::start_stopped();
    let mut ph = Posthorn::start(&with_lines(&satellite_config(&[sink.addr()]), &["user = \"nobody\""]));
    let spool = ph.spool_dir();
    let sp = spool.display().to_string();
    // The maildrop as the daemon left it (3733) is what `check` expects.
    let out = ph.command(&["check"], b"");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stdout));

    // The audit log a root command appends to.
    as_account(&format!("ln -s {} {sp}/audit.log", victims.path("audit")));
    smtplib_send(ph.smtp_addr(), "app@vm.test", &["ops@example.org"], "Subject: stays\r\n\r\nx\r\n").unwrap();
    assert!(wait_until(secs(20), || ph.spool_files("deferred").len() == 1), "{}", ph.log());
    let out = ph.command(&["postsuper", "-d", "ALL"], b"");
    assert!(stderr(&out).contains("Deleted: 1 message"), "{out:?}");
    assert!(ph.spool_files("deferred").is_empty(), "the delete was not done");
    let warning = format!("cannot append to {sp}/audit.log: a symbolic link, not followed");
    assert!(stderr(&out).contains(&warning), "no {warning:?} in:\n{}", stderr(&out));
    victims.assert_untouched("postsuper -d");

    // The old pid file's place, and tmp/ that recovery sweeps.
    ph.stop();
    as_account(&format!(
        "ln -s {pid} {sp}/posthorn.pid && mv {sp}/tmp {sp}/tmp.away && ln -s {dir} {sp}/tmp",
        pid = victims.path("pid"),
        dir = victims.dir.display()
    ));
    // A second link to root's file, as the account can make without
    // `protected_hardlinks`: never handed over.
    std::fs::hard_link(victims.dir.join("queued-a"), spool.join("data").join("linked")).unwrap();
    let mut serve = Command::new(BIN);
    serve.arg("serve").arg("-c").arg(ph.config_path()).current_dir(ph.dir());
    let out = run_with_timeout(serve, b"", secs(30));
    assert!(!out.status.success(), "serve started on a linked tmp/:\n{}", stderr(&out));
    let refusal = format!("{sp}/tmp is a symbolic link, not a directory");
    assert!(stderr(&out).contains(&refusal), "no {refusal:?} in:\n{}", stderr(&out));
    victims.assert_untouched("serve with tmp/ a link");

    as_account(&format!("rm {sp}/tmp && mv {sp}/tmp.away {sp}/tmp"));
    sink.restart();
    ph.restart();
    smtplib_send(ph.smtp_addr(), "app@vm.test", &["ops@example.org"], "Subject: after\r\n\r\nx\r\n").unwrap();
    assert_eq!(sink.wait_for_parsed(1, secs(20)).len(), 1, "{}", ph.log());
    ph.stop();
    victims.assert_untouched("serve");
    // The link is the account's own business; root left it as it was.
    assert!(std::fs::symlink_metadata(spool.join("posthorn.pid")).unwrap().file_type().is_symlink());
}

/// Kills the daemon `postfix start` started, found by the spool lock it
/// holds, however the test ends.
struct KillOnDrop(PathBuf);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        if let Some(pid) = lock_holder(&self.0) {
            let _ = Command::new("kill").arg("-9").arg(pid.to_string()).status();
        }
    }
}

/// The pid of the daemon holding the spool, when one runs (a zombie that
/// nobody reaps, its parent `postfix start` gone, does not count).
fn lock_holder(spool: &Path) -> Option<u32> {
    // `PID daemon`; the file is emptied when the daemon lets go.
    let text = std::fs::read_to_string(spool.join("posthorn.lock")).ok()?;
    let pid: u32 = text.split_whitespace().next()?.parse().ok()?;
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let state = stat.rsplit_once(')')?.1.trim_start().chars().next()?;
    (state != 'Z' && state != 'X').then_some(pid)
}

/// The file in /run/posthorn that names `pid`.
fn run_pid_file(pid: u32) -> Option<PathBuf> {
    std::fs::read_dir("/run/posthorn")
        .ok()?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .find(|p| std::fs::read_to_string(p).is_ok_and(|t| t.trim() == pid.to_string()))
}

fn alive(child: &mut Child) -> bool {
    matches!(child.try_wait(), Ok(None))
}

#[test]
fn postfix_start_and_stop_as_root_trust_nothing_the_account_wrote() {
    if skipped() {
        return;
    }
    let victims = Victims::new(&["log"]);
    let dir = tempfile::tempdir().unwrap();
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o711)).unwrap();
    let spool = dir.path().join("spool");
    let sp = spool.display().to_string();
    let config = dir.path().join("posthorn.toml");
    let body = with_lines(&satellite_config(&[free_addr()]), &["queue.retry_min = \"1h\"", "queue.retry_max = \"1h\""]);
    let text = format!("user = \"nobody\"\nspool = {}\nhostname = \"vm7.test\"\n{body}", toml_str(&sp));
    std::fs::write(&config, text).unwrap();
    let _guard = KillOnDrop(spool.clone());
    let postfix = |arg: &str| {
        let mut cmd = Command::new(BIN);
        cmd.args(["postfix", "-c", config.to_str().unwrap(), arg]).env_remove("POSTHORN_CONFIG").current_dir("/");
        run_with_timeout(cmd, b"", COMMAND_TIMEOUT)
    };
    // A root process the account would like to see killed.
    let mut victim = Command::new("sleep").arg("600").stdin(Stdio::null()).spawn().unwrap();

    let out = postfix("start");
    assert!(out.status.success(), "start: {}", stderr(&out));
    let log = std::fs::metadata(spool.join("posthorn.log")).unwrap();
    assert_eq!((log.uid(), log.gid(), log.mode() & 0o7777), (NOBODY, NOBODY, 0o640), "posthorn.log");
    let daemon = lock_holder(&spool).expect("the daemon holds the spool");
    let out = postfix("status");
    assert!(stderr(&out).contains(&format!("is running: PID: {daemon}")), "{}", stderr(&out));
    let pid_file = run_pid_file(daemon).expect("a pid file in /run/posthorn");
    let meta = std::fs::metadata(&pid_file).unwrap();
    assert_eq!((meta.uid(), meta.mode() & 0o7777), (0, 0o644), "{}", pid_file.display());

    // A pid the account wrote where the pid file used to be: `stop` asks
    // the daemon over its socket and signals nobody.
    as_account(&format!("echo {} > {sp}/posthorn.pid", victim.id()));
    let out = postfix("stop");
    assert!(out.status.success(), "stop: {}", stderr(&out));
    assert!(lock_holder(&spool).is_none(), "the daemon still runs");
    assert!(alive(&mut victim), "postfix stop killed the account's choice of process");

    // The log the account replaced with a link: refused, named.
    as_account(&format!("rm {sp}/posthorn.log && ln -s {} {sp}/posthorn.log", victims.path("log")));
    let out = postfix("start");
    assert!(!out.status.success(), "start wrote through a link");
    let refusal = format!("cannot open {sp}/posthorn.log: a symbolic link, not followed");
    assert!(stderr(&out).contains(&refusal), "no {refusal:?} in:\n{}", stderr(&out));
    victims.assert_untouched("postfix start");
    as_account(&format!("rm {sp}/posthorn.log"));

    // A control socket that does not answer: the pid file in /run, checked.
    let out = postfix("start");
    assert!(out.status.success(), "start: {}", stderr(&out));
    let daemon = lock_holder(&spool).expect("the daemon holds the spool");
    std::fs::rename(spool.join("control.sock"), spool.join("control.away")).unwrap();
    let out = postfix("stop");
    assert!(out.status.success(), "stop through the pid file: {}", stderr(&out));
    assert!(wait_until(secs(10), || lock_holder(&spool).is_none()), "daemon {daemon} still runs");

    // A stale pid file whose pid now belongs to another process.
    let pid_file = run_pid_file(daemon).expect("the stale pid file stays: the account cannot remove it");
    std::fs::write(&pid_file, format!("{}\n", victim.id())).unwrap();
    for command in ["stop", "abort", "status"] {
        let out = postfix(command);
        assert_eq!(out.status.code(), Some(1), "{command}: {}", stderr(&out));
        assert!(stderr(&out).contains("is not running"), "{command}: {}", stderr(&out));
    }
    assert!(alive(&mut victim), "a stale pid file got another process signalled");
    let _ = std::fs::remove_file(&pid_file);
    let _ = victim.kill();
    let _ = victim.wait();
}

/// `/proc/PID/stat` user plus system time, in clock ticks.
fn cpu_ticks(pid: u32) -> u64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    let fields: Vec<&str> = stat.rsplit_once(')').unwrap().1.split_whitespace().collect();
    // Fields 14 and 15 of stat(5), counted after `pid (comm)`.
    fields[11].parse::<u64>().unwrap() + fields[12].parse::<u64>().unwrap()
}

/// The daemon's lines on stderr, collected by a thread.
fn collect(stream: impl Read + Send + 'static) -> std::sync::Arc<std::sync::Mutex<String>> {
    let text = std::sync::Arc::new(std::sync::Mutex::new(String::new()));
    let shared = text.clone();
    std::thread::spawn(move || {
        for line in BufReader::new(stream).lines().map_while(Result::ok) {
            let mut t = shared.lock().unwrap();
            t.push_str(&line);
            t.push('\n');
        }
    });
    text
}

#[test]
fn out_of_file_descriptors_the_daemon_waits_and_then_serves_again() {
    if skipped() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let spool = dir.path().join("spool");
    let config = dir.path().join("posthorn.toml");
    let text = format!(
        "user = \"root\"\nspool = {}\nhostname = \"vm8.test\"\n{}",
        toml_str(&spool.display().to_string()),
        with_lines(&satellite_config(&[free_addr()]), &["queue.retry_min = \"1h\"", "queue.retry_max = \"1h\""])
    );
    std::fs::write(&config, text).unwrap();
    let mut cmd = Command::new(BIN);
    cmd.args(["serve", "-c", config.to_str().unwrap()])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    die_with_parent(&mut cmd);
    // SAFETY: setrlimit is async-signal-safe and touches no parent memory.
    unsafe {
        std::os::unix::process::CommandExt::pre_exec(&mut cmd, || {
            let limit = rustix::process::Rlimit { current: Some(64), maximum: Some(64) };
            rustix::process::setrlimit(rustix::process::Resource::Nofile, limit)?;
            Ok(())
        });
    }
    let mut daemon = cmd.spawn().unwrap();
    let log = collect(daemon.stderr.take().unwrap());
    let log_text = || log.lock().unwrap().clone();
    assert!(
        wait_until(secs(20), || log_text().contains("\nready") || log_text().starts_with("ready")),
        "{}",
        log_text()
    );
    let smtp: std::net::SocketAddr = log_text()
        .lines()
        .find_map(|l| l.strip_prefix("listening smtp="))
        .and_then(|a| a.trim().parse().ok())
        .expect("the SMTP address");
    smtplib_send(smtp, "app@vm.test", &["ops@example.org"], "Subject: listed\r\n\r\nx\r\n").unwrap();

    // Idle connections, each holding a descriptor of the daemon's for 10 s.
    let held: Vec<UnixStream> = (0..100).map(|_| UnixStream::connect(spool.join("control.sock")).unwrap()).collect();
    let pid = daemon.id();
    let open_fds = || std::fs::read_dir(format!("/proc/{pid}/fd")).map(|d| d.count()).unwrap_or(0);
    assert!(wait_until(secs(10), || open_fds() >= 63), "never out of fds ({} open):\n{}", open_fds(), log_text());
    let before = cpu_ticks(pid);
    std::thread::sleep(secs(2));
    let spent = cpu_ticks(pid) - before;
    assert!(spent < 40, "the daemon spent {spent} ticks of CPU in 2 s while out of descriptors");
    assert!(log_text().contains("Too many open files"), "no line about it:\n{}", log_text());

    drop(held);
    let listing = wait_until(secs(10), || {
        let Ok(mut showq) = UnixStream::connect(spool.join("showq.sock")) else { return false };
        let _ = showq.set_read_timeout(Some(secs(5)));
        let mut out = String::new();
        showq.read_to_string(&mut out).is_ok() && out.contains("app@vm.test")
    });
    assert!(listing, "showq does not answer after the descriptors came back:\n{}", log_text());
    // The pickup waker survived too: a drop is taken at once, not at the
    // next minute's scan.
    let mut sendmail = Command::new(BIN);
    sendmail.args(["sendmail", "ops@example.org"]).env("POSTHORN_CONFIG", &config);
    let out = run_with_timeout(sendmail, b"Subject: dropped\n\nx\n", secs(30));
    assert!(out.status.success(), "{}", stderr(&out));
    let queued = || {
        std::fs::read_dir(spool.join("deferred")).map(|d| d.count()).unwrap_or(0)
            + std::fs::read_dir(spool.join("incoming")).map(|d| d.count()).unwrap_or(0)
            + std::fs::read_dir(spool.join("active")).map(|d| d.count()).unwrap_or(0)
    };
    assert!(wait_until(secs(10), || queued() == 2), "the drop was not picked up:\n{}", log_text());
    signal(&daemon, rustix::process::Signal::TERM);
    assert!(wait_timeout(&mut daemon, secs(20)).is_some_and(|s| s.success()), "{}", log_text());
}
