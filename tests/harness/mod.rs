//! Shared end-to-end harness: real `posthorn` processes, a real SMTP peer
//! (Postfix's `smtp-sink`), and real clients (raw TCP, Python's smtplib).
//!
//! Every test file uses it with `mod harness;`. Nothing here uses a fixed
//! port or a shared directory, so tests run in parallel:
//! - a daemon listens on whatever the test's config says (normally
//!   `127.0.0.1:0`) and the harness learns its addresses from the
//!   `listening smtp=ADDR` lines it prints before `ready`;
//! - each [`Sink`] listens on a random loopback address (`127.x.y.z`) and a
//!   port the kernel picked for it, so two sinks practically never meet;
//! - each instance lives in its own temporary directory (kept for
//!   inspection when `POSTHORN_KEEP_TEST_DIRS` is set).
//!
//! When a test panics while a [`Posthorn`] is alive, its drop prints the
//! directory and the tail of the daemon's log into the test's output.
#![allow(dead_code, unused_imports)]

pub mod accounts;
pub mod client;
pub mod dns;
pub mod dovecot;
pub mod filter;
pub mod milter;
pub mod policy;
pub mod postfix;
pub mod postsrsd;
pub mod scripted;
pub mod sevenbit;
pub mod sink;
pub mod tls;

pub use accounts::*;
pub use client::*;
pub use dns::*;
pub use filter::*;
pub use milter::*;
pub use scripted::*;
pub use sevenbit::*;
pub use sink::*;
pub use tls::*;

use std::collections::HashSet;
use std::fs;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::SocketAddr;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStderr, Command, ExitStatus, Output, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use rustix::process::{Pid, Signal};

/// The binary under test, built by cargo for this test run.
pub const BIN: &str = env!("CARGO_BIN_EXE_posthorn");

/// How long `posthorn serve` may take to print `ready`.
pub const READY_TIMEOUT: Duration = Duration::from_secs(20);

/// How long a one-shot command (`sendmail`, `postqueue`, ...) may run.
pub const COMMAND_TIMEOUT: Duration = Duration::from_secs(60);

/// The spool subdirectories that hold committed envelopes, one file each.
pub const QUEUE_STATES: [&str; 3] = ["incoming", "active", "deferred"];

/// Shorthand for a number of seconds.
pub fn secs(n: u64) -> Duration {
    Duration::from_secs(n)
}

/// Config body for a satellite relaying to `smarthosts` in that order:
/// SMTP on `127.0.0.1:0`, retries every 1-2 s. Append more with
/// [`with_lines`] (top-level keys) or by adding whole `[sections]`.
pub fn satellite_config(smarthosts: &[SocketAddr]) -> String {
    let hosts: Vec<String> = smarthosts.iter().map(|a| toml_str(&a.to_string())).collect();
    format!(
        "role = \"satellite\"\n\n[smtp]\nlisten = [\"127.0.0.1:0\"]\n\n[relay]\nsmarthosts = [{}]\ntls = \"none\"\nconnect_timeout = \"5s\"\n\n[queue]\nretry_min = \"1s\"\nretry_max = \"2s\"\n",
        hosts.join(", ")
    )
}

/// Adds `lines` to `config` where TOML wants them:
/// - `"section.key = value"` sets `key` in `[section]` (replacing an
///   existing `key` there, creating the section when missing);
/// - `"key = value"` sets a top-level key (before the first section);
/// - anything else (a whole `[section]` block, a comment) is appended.
///
/// `with_lines(&satellite_config(&[a]), &["queue.retry_max = \"5s\"", "smtp.max_recipients = 3"])`
pub fn with_lines(config: &str, lines: &[&str]) -> String {
    let mut all: Vec<String> = config.lines().map(str::to_string).collect();
    for line in lines {
        let assignment = line.split_once('=').filter(|_| !line.trim_start().starts_with('[') && !line.contains('\n'));
        let Some((key, value)) = assignment else {
            all.push(line.to_string());
            continue;
        };
        let (key, value) = (key.trim(), value.trim());
        let simple = |s: &str| !s.is_empty() && s.chars().all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-');
        let (section, key) = match key.split_once('.') {
            Some((section, k)) if simple(section) && simple(k) => (Some(section), k),
            _ => (None, key),
        };
        let entry = format!("{key} = {value}");
        // The section's lines: from after its header to the next header.
        let (from, to) = match section {
            None => (0, all.iter().position(|l| l.trim_start().starts_with('[')).unwrap_or(all.len())),
            Some(section) => {
                let header = format!("[{section}]");
                match all.iter().position(|l| l.trim() == header) {
                    Some(h) => {
                        let next = all[h + 1..].iter().position(|l| l.trim_start().starts_with('['));
                        (h + 1, next.map_or(all.len(), |n| h + 1 + n))
                    }
                    None => {
                        all.push(String::new());
                        all.push(header);
                        (all.len(), all.len())
                    }
                }
            }
        };
        let existing = all[from..to]
            .iter()
            .position(|l| l.split_once('=').is_some_and(|(k, _)| k.trim() == key) && !l.trim_start().starts_with('#'));
        match existing {
            Some(i) => all[from + i] = entry,
            None => {
                // After the section's last non-blank line.
                let mut at = to;
                while at > from && all[at - 1].trim().is_empty() {
                    at -= 1;
                }
                all.insert(at, entry);
            }
        }
    }
    all.join("\n") + "\n"
}

/// A TOML basic string holding `s`.
pub fn toml_str(s: &str) -> String {
    let mut out = String::from("\"");
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

/// A name unique in this machine's running tests: pid plus a counter.
pub fn unique_name(prefix: &str) -> String {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    format!("{prefix}-{}-{}", std::process::id(), COUNTER.fetch_add(1, Ordering::Relaxed))
}

fn keep_dirs() -> bool {
    std::env::var_os("POSTHORN_KEEP_TEST_DIRS").is_some()
}

fn new_tempdir(prefix: &str) -> tempfile::TempDir {
    let mut dir = tempfile::Builder::new().prefix(prefix).tempdir().expect("create temporary directory");
    if keep_dirs() {
        dir.disable_cleanup(true);
    }
    dir
}

/// Sends a signal, ignoring "no such process" (it has exited already).
pub fn signal(child: &Child, sig: Signal) {
    if let Some(pid) = Pid::from_raw(child.id() as i32) {
        let _ = rustix::process::kill_process(pid, sig);
    }
}

/// Waits for `child` up to `timeout`; `None` if it is still running.
pub fn wait_timeout(child: &mut Child, timeout: Duration) -> Option<ExitStatus> {
    let deadline = Instant::now() + timeout;
    loop {
        match child.try_wait() {
            Ok(Some(status)) => return Some(status),
            Ok(None) if Instant::now() >= deadline => return None,
            Ok(None) => thread::sleep(Duration::from_millis(10)),
            Err(e) => panic!("waiting for child {}: {e}", child.id()),
        }
    }
}

/// Makes `cmd`'s child die with the test process (SIGKILL when the thread
/// that spawned it exits), so an interrupted `cargo test` leaves no daemon
/// or sink behind. Spawn from the test's own thread, as everything here does.
pub fn die_with_parent(cmd: &mut Command) {
    use std::os::unix::process::CommandExt;
    // SAFETY: prctl is async-signal-safe and touches no memory of the parent.
    unsafe {
        cmd.pre_exec(|| {
            rustix::process::set_parent_process_death_signal(Some(Signal::KILL))?;
            Ok(())
        });
    }
}

/// Runs `cmd` with `stdin` as its standard input and collects its output,
/// killing it and panicking when it runs past `timeout`.
pub fn run_with_timeout(mut cmd: Command, stdin: &[u8], timeout: Duration) -> Output {
    let what = format!("{cmd:?}");
    cmd.stdin(Stdio::piped()).stdout(Stdio::piped()).stderr(Stdio::piped());
    let mut child = cmd.spawn().unwrap_or_else(|e| panic!("spawn {what}: {e}"));
    let mut input = child.stdin.take().unwrap();
    let data = stdin.to_vec();
    // A command that exits without reading its input is not our failure.
    let writer = thread::spawn(move || {
        let _ = input.write_all(&data);
    });
    let mut out = child.stdout.take().unwrap();
    let mut err = child.stderr.take().unwrap();
    let out_reader = thread::spawn(move || {
        let mut v = Vec::new();
        let _ = out.read_to_end(&mut v);
        v
    });
    let err_reader = thread::spawn(move || {
        let mut v = Vec::new();
        let _ = err.read_to_end(&mut v);
        v
    });
    let status = match wait_timeout(&mut child, timeout) {
        Some(status) => status,
        None => {
            let _ = child.kill();
            let _ = child.wait();
            let stderr = err_reader.join().unwrap_or_default();
            panic!("{what} still running after {timeout:?}; stderr:\n{}", String::from_utf8_lossy(&stderr));
        }
    };
    let _ = writer.join();
    Output { status, stdout: out_reader.join().unwrap(), stderr: err_reader.join().unwrap() }
}

/// The daemon's stderr as it arrives, shared with the reader thread.
struct LogShared {
    inner: Mutex<LogInner>,
    changed: Condvar,
}

#[derive(Default)]
struct LogInner {
    text: String,
    /// Which start of the daemon the fields below describe.
    run: u64,
    addrs: Vec<SocketAddr>,
    /// `listening submission=` and `listening submissions=` addresses.
    submission: Vec<SocketAddr>,
    submissions: Vec<SocketAddr>,
    /// `listening reinject=` addresses (`filter.reinject_listen`).
    reinject: Vec<SocketAddr>,
    /// `ready` was printed: the daemon accepts mail.
    announced: bool,
    /// `loaded` was printed.
    loaded: bool,
    /// Both `ready` and `loaded`: the daemon accepts mail, and the queue
    /// it found at start is indexed and checked, so a test sees the
    /// daemon as tests did before the queue was loaded in the background.
    ready: bool,
    eof: bool,
}

impl LogShared {
    /// Waits until `done` holds for the log or `timeout` passes.
    fn wait(&self, timeout: Duration, mut done: impl FnMut(&LogInner) -> bool) -> bool {
        let deadline = Instant::now() + timeout;
        let mut inner = self.inner.lock().unwrap();
        loop {
            if done(&inner) {
                return true;
            }
            let now = Instant::now();
            if now >= deadline {
                return false;
            }
            inner = self.changed.wait_timeout(inner, deadline - now).unwrap().0;
        }
    }
}

/// Reads the daemon's stderr line by line into the shared log and the log
/// file, noting `listening smtp=` addresses and `ready` for run `run`.
fn drain_stderr(stderr: ChildStderr, shared: Arc<LogShared>, mut file: fs::File, run: u64) {
    let mut reader = BufReader::new(stderr);
    let mut buf = Vec::new();
    loop {
        buf.clear();
        let n = reader.read_until(b'\n', &mut buf).unwrap_or(0);
        let mut inner = shared.inner.lock().unwrap();
        if n == 0 {
            if inner.run == run {
                inner.eof = true;
            }
            shared.changed.notify_all();
            return;
        }
        let line = String::from_utf8_lossy(&buf).into_owned();
        let _ = file.write_all(line.as_bytes());
        if !line.ends_with('\n') {
            let _ = file.write_all(b"\n");
        }
        if inner.run == run {
            let trimmed = line.trim();
            // `listening KIND=ADDR` and `ready`, or with `--log-format json`
            // the same as `{"event":"listening","listener":KIND,"address":ADDR}`
            // and `{"event":"ready"}`.
            let json: Option<serde_json::Value> =
                trimmed.starts_with('{').then(|| serde_json::from_str(trimmed).ok()).flatten();
            let event = json.as_ref().and_then(|j| j["event"].as_str());
            let announced = |kind: &str| {
                if let Some(j) = &json {
                    return (event == Some("listening") && j["listener"] == kind)
                        .then(|| j["address"].as_str()?.parse::<SocketAddr>().ok())
                        .flatten();
                }
                let rest = trimmed.split(&format!("listening {kind}=")).nth(1)?;
                rest.split(|c: char| c.is_whitespace() || c == ',').next()?.parse::<SocketAddr>().ok()
            };
            if let Some(addr) = announced("smtp") {
                inner.addrs.push(addr);
            }
            if let Some(addr) = announced("submission") {
                inner.submission.push(addr);
            }
            if let Some(addr) = announced("submissions") {
                inner.submissions.push(addr);
            }
            if let Some(addr) = announced("reinject") {
                inner.reinject.push(addr);
            }
            if trimmed == "ready" || event == Some("ready") {
                inner.announced = true;
            }
            if trimmed == "loaded" || event == Some("loaded") {
                inner.loaded = true;
            }
            inner.ready = inner.announced && inner.loaded;
        }
        inner.text.push_str(&line);
        if !line.ends_with('\n') {
            inner.text.push('\n');
        }
        shared.changed.notify_all();
    }
}

/// One `posthorn serve` instance in its own directory. Dropping it kills
/// the daemon (SIGKILL) and removes the directory.
pub struct Posthorn {
    dir: tempfile::TempDir,
    config: PathBuf,
    hostname: String,
    child: Option<Child>,
    log: Arc<LogShared>,
    run: u64,
    /// Environment variables the daemon gets besides the test's own.
    env: Vec<(String, String)>,
}

impl Posthorn {
    /// Like [`Posthorn::start`], with `env` set for the daemon (and kept
    /// across restarts): `TZ` for the tests of local time.
    pub fn start_with_env(toml_body: &str, env: &[(&str, &str)]) -> Posthorn {
        let env = env.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
        Posthorn::try_start_in(toml_body, env).unwrap_or_else(|e| panic!("{e}"))
    }

    /// Writes `posthorn.toml` (`spool` and `hostname` chosen here, then
    /// `toml_body`, which must not set those two keys), starts the daemon
    /// and waits for `ready`. Panics with the daemon's stderr on failure.
    pub fn start(toml_body: &str) -> Posthorn {
        Posthorn::try_start(toml_body).unwrap_or_else(|e| panic!("{e}"))
    }

    /// Like [`Posthorn::start`], but a daemon that exits or stays silent
    /// comes back as `Err` with its stderr (for tests of refused configs).
    pub fn try_start(toml_body: &str) -> Result<Posthorn, String> {
        Posthorn::try_start_in(toml_body, Vec::new())
    }

    fn try_start_in(toml_body: &str, env: Vec<(String, String)>) -> Result<Posthorn, String> {
        let dir = new_tempdir("posthorn-test-");
        let hostname = format!("{}.test", unique_name("ph"));
        let spool = dir.path().join("spool");
        let config = dir.path().join("posthorn.toml");
        // Tests run as root in CI: the daemons stay root (the switch to an
        // account of its own has its own test, tests/privilege.rs) unless
        // the body names a user.
        let user =
            if toml_body.contains("\nuser = ") || toml_body.starts_with("user = ") { "" } else { "user = \"root\"\n" };
        let text = format!(
            "{user}spool = {}\nhostname = {}\n{}",
            toml_str(&spool.display().to_string()),
            toml_str(&hostname),
            toml_body
        );
        fs::write(&config, text).expect("write posthorn.toml");
        if user.is_empty() {
            // The daemon's own account must reach its spool and config.
            fs::set_permissions(dir.path(), fs::Permissions::from_mode(0o711)).expect("chmod the test directory");
        }
        let log = Arc::new(LogShared { inner: Mutex::new(LogInner::default()), changed: Condvar::new() });
        let mut ph = Posthorn { dir, config, hostname, child: None, log, run: 0, env };
        ph.spawn()?;
        Ok(ph)
    }

    /// Starts the daemon on the existing config and waits for `ready` and
    /// `loaded`.
    fn spawn(&mut self) -> Result<(), String> {
        self.spawn_waiting(true)
    }

    /// Starts the daemon on the existing config and waits for `ready`, and
    /// with `loaded` also for the queue found at start to be loaded.
    fn spawn_waiting(&mut self, loaded: bool) -> Result<(), String> {
        assert!(self.child.is_none(), "posthorn is already running");
        self.run += 1;
        let run = self.run;
        {
            let mut inner = self.log.inner.lock().unwrap();
            inner.run = run;
            inner.addrs.clear();
            inner.submission.clear();
            inner.submissions.clear();
            inner.reinject.clear();
            inner.announced = false;
            inner.loaded = false;
            inner.ready = false;
            inner.eof = false;
            if run > 1 {
                inner.text.push_str(&format!("--- harness: start #{run} ---\n"));
            }
        }
        let log_path = self.dir.path().join("posthorn.log");
        let file = fs::OpenOptions::new().create(true).append(true).open(&log_path).expect("open posthorn.log");
        let stdout = fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.path().join("posthorn.stdout"))
            .expect("open posthorn.stdout");
        let mut cmd = Command::new(BIN);
        cmd.arg("serve")
            .arg("-c")
            .arg(&self.config)
            .current_dir(self.dir.path())
            .env_remove("POSTHORN_CONFIG")
            .env("RUST_BACKTRACE", "1")
            .envs(self.env.iter().map(|(k, v)| (k, v)))
            .stdin(Stdio::null())
            .stdout(stdout)
            .stderr(Stdio::piped());
        die_with_parent(&mut cmd);
        let mut child = cmd.spawn().map_err(|e| format!("spawn {BIN}: {e}"))?;
        let stderr = child.stderr.take().unwrap();
        let shared = self.log.clone();
        thread::spawn(move || drain_stderr(stderr, shared, file, run));
        self.child = Some(child);

        let done = |i: &LogInner| if loaded { i.ready } else { i.announced };
        let ok = self.log.wait(READY_TIMEOUT, |i| done(i) || i.eof);
        let (ready, text) = {
            let inner = self.log.inner.lock().unwrap();
            (done(&inner), inner.text.clone())
        };
        if ready {
            return Ok(());
        }
        let mut child = self.child.take().unwrap();
        let status = if ok { wait_timeout(&mut child, secs(5)) } else { None };
        let _ = child.kill();
        let _ = child.wait();
        let why = match status {
            Some(s) => format!("exited with {s} before `ready`"),
            None => format!("printed no `ready` within {READY_TIMEOUT:?}"),
        };
        Err(format!("posthorn serve -c {} {why}; stderr:\n{text}", self.config.display()))
    }

    /// The first SMTP listener's address.
    pub fn smtp_addr(&self) -> SocketAddr {
        *self.smtp_addrs().first().expect("posthorn announced no `listening smtp=` address")
    }

    /// Every `listening smtp=` address of the current run, in print order.
    pub fn smtp_addrs(&self) -> Vec<SocketAddr> {
        self.log.inner.lock().unwrap().addrs.clone()
    }

    /// The first `listening submission=` (port 587 style) address.
    pub fn submission_addr(&self) -> SocketAddr {
        *self.log.inner.lock().unwrap().submission.first().expect("posthorn announced no `listening submission=`")
    }

    /// The first `listening submissions=` (implicit TLS) address.
    pub fn submissions_addr(&self) -> SocketAddr {
        *self.log.inner.lock().unwrap().submissions.first().expect("posthorn announced no `listening submissions=`")
    }

    /// The `listening reinject=` address (`filter.reinject_listen`).
    pub fn reinject_addr(&self) -> SocketAddr {
        *self.log.inner.lock().unwrap().reinject.first().expect("posthorn announced no `listening reinject=`")
    }

    pub fn config_path(&self) -> &Path {
        &self.config
    }

    pub fn spool_dir(&self) -> PathBuf {
        self.dir.path().join("spool")
    }

    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// The `hostname` written into the config (unique per instance).
    pub fn hostname(&self) -> &str {
        &self.hostname
    }

    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    pub fn is_running(&mut self) -> bool {
        match self.child.as_mut() {
            Some(c) => matches!(c.try_wait(), Ok(None)),
            None => false,
        }
    }

    /// Everything the daemon wrote on stderr, over all its runs.
    pub fn log(&self) -> String {
        self.log.inner.lock().unwrap().text.clone()
    }

    /// A position in the log, for [`Posthorn::wait_for_log_since`].
    pub fn log_mark(&self) -> usize {
        self.log.inner.lock().unwrap().text.len()
    }

    /// Waits until some log line contains `pattern` (plain substring).
    pub fn wait_for_log(&self, pattern: &str, timeout: Duration) -> bool {
        self.log.wait(timeout, |i| i.text.contains(pattern))
    }

    /// Waits until the log after `mark` contains `pattern`.
    pub fn wait_for_log_since(&self, mark: usize, pattern: &str, timeout: Duration) -> bool {
        self.log.wait(timeout, |i| i.text.get(mark..).is_some_and(|t| t.contains(pattern)))
    }

    /// Waits until at least `n` log lines contain every one of `patterns`.
    pub fn wait_for_log_count(&self, patterns: &[&str], n: usize, timeout: Duration) -> bool {
        self.log.wait(timeout, |i| count_lines(&i.text, patterns) >= n)
    }

    /// Log lines containing every one of `patterns`.
    pub fn log_lines(&self, patterns: &[&str]) -> Vec<String> {
        let text = self.log();
        text.lines().filter(|l| patterns.iter().all(|p| l.contains(p))).map(str::to_string).collect()
    }

    /// SIGKILL and wait: a crash at an arbitrary instant.
    pub fn kill9(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Replaces the environment variables the daemon gets at its next
    /// (re)start, e.g. to drop a crash hook (`POSTHORN_CRASH_AT`).
    pub fn set_env(&mut self, env: &[(&str, &str)]) {
        self.env = env.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
    }

    /// Waits (up to `timeout`) for the daemon to exit by itself; true if it did.
    pub fn wait_exit(&mut self, timeout: Duration) -> bool {
        let Some(child) = self.child.as_mut() else { return true };
        if wait_timeout(child, timeout).is_some() {
            self.child = None;
            return true;
        }
        false
    }

    /// SIGTERM and wait for a clean exit (up to 20 s; panics otherwise).
    pub fn stop(&mut self) -> ExitStatus {
        let mut child = self.child.take().expect("posthorn is not running");
        signal(&child, Signal::TERM);
        match wait_timeout(&mut child, secs(20)) {
            Some(status) => status,
            None => {
                let _ = child.kill();
                let _ = child.wait();
                panic!("posthorn did not exit within 20 s of SIGTERM; log:\n{}", self.log());
            }
        }
    }

    /// Starts the daemon again on the same config and spool (stopping it
    /// first with SIGTERM if it runs). With port 0 the addresses change.
    pub fn restart(&mut self) {
        if self.child.is_some() {
            let status = self.stop();
            assert!(status.success(), "posthorn exited with {status} on SIGTERM; log:\n{}", self.log());
        }
        self.spawn().unwrap_or_else(|e| panic!("{e}"));
    }

    /// [`Posthorn::restart`] that returns at `ready`, before the daemon
    /// has loaded the queue it found (`loaded`).
    pub fn restart_until_ready(&mut self) {
        if self.child.is_some() {
            let status = self.stop();
            assert!(status.success(), "posthorn exited with {status} on SIGTERM; log:\n{}", self.log());
        }
        self.spawn_waiting(false).unwrap_or_else(|e| panic!("{e}"));
    }

    /// Whether the daemon has printed `loaded` in its current run.
    pub fn loaded(&self) -> bool {
        self.log.inner.lock().unwrap().loaded
    }

    /// `posthorn sendmail ARGS` with `POSTHORN_CONFIG` pointing here.
    pub fn sendmail(&self, args: &[&str], stdin: &[u8]) -> Output {
        let mut all = vec!["sendmail"];
        all.extend_from_slice(args);
        self.command(&all, stdin)
    }

    /// `posthorn ARGS` (any subcommand) with `POSTHORN_CONFIG` pointing
    /// here and `stdin` as input; killed and a panic after 60 s.
    pub fn command(&self, args: &[&str], stdin: &[u8]) -> Output {
        let mut cmd = Command::new(BIN);
        cmd.args(args).env("POSTHORN_CONFIG", &self.config).current_dir(self.dir.path());
        run_with_timeout(cmd, stdin, COMMAND_TIMEOUT)
    }

    /// A symlink `NAME -> posthorn` in this instance's `bin/` (made once),
    /// for the compatibility names (`sendmail`, `mailq`, `postqueue`, ...).
    pub fn link(&self, name: &str) -> PathBuf {
        let bin = self.dir.path().join("bin");
        fs::create_dir_all(&bin).expect("create bin/");
        let path = bin.join(name);
        if fs::symlink_metadata(&path).is_err() {
            std::os::unix::fs::symlink(BIN, &path).expect("symlink");
        }
        path
    }

    /// Runs the binary under the name `name` (through [`Posthorn::link`]),
    /// with `POSTHORN_CONFIG` pointing here.
    pub fn run_as(&self, name: &str, args: &[&str], stdin: &[u8]) -> Output {
        let mut cmd = Command::new(self.link(name));
        cmd.args(args).env("POSTHORN_CONFIG", &self.config).current_dir(self.dir.path());
        run_with_timeout(cmd, stdin, COMMAND_TIMEOUT)
    }

    /// [`Posthorn::run_as`] started in the background (no stdin, output
    /// piped): for a command that waits for the daemon.
    pub fn spawn_as(&self, name: &str, args: &[&str]) -> Child {
        let mut cmd = Command::new(self.link(name));
        cmd.args(args).env("POSTHORN_CONFIG", &self.config).current_dir(self.dir.path());
        cmd.stdin(Stdio::null()).stdout(Stdio::piped()).stderr(Stdio::piped());
        cmd.spawn().unwrap_or_else(|e| panic!("spawn {name}: {e}"))
    }

    /// Regular files under `spool/<state>` (recursively), e.g. `"deferred"`.
    pub fn spool_files(&self, state: &str) -> Vec<PathBuf> {
        let mut out = Vec::new();
        walk_files(&self.spool_dir().join(state), &mut out);
        out
    }

    /// Committed envelopes: files in `incoming/`, `active/`, `deferred/`.
    pub fn queued_count(&self) -> usize {
        QUEUE_STATES.iter().map(|s| self.spool_files(s).len()).sum()
    }

    /// Waits until [`Posthorn::queued_count`] equals `n`.
    pub fn wait_for_queued(&self, n: usize, timeout: Duration) -> bool {
        wait_until(timeout, || self.queued_count() == n)
    }
}

impl Drop for Posthorn {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
        if thread::panicking() {
            let text = self.log();
            let lines: Vec<&str> = text.lines().collect();
            let tail = &lines[lines.len().saturating_sub(200)..];
            eprintln!(
                "--- posthorn {} (dir {}{}), last {} log lines:\n{}",
                self.hostname,
                self.dir.path().display(),
                if keep_dirs() { ", kept" } else { "; set POSTHORN_KEEP_TEST_DIRS=1 to keep it" },
                tail.len(),
                tail.join("\n")
            );
        }
    }
}

/// Lines of `text` containing every one of `patterns`.
pub fn count_lines(text: &str, patterns: &[&str]) -> usize {
    text.lines().filter(|l| patterns.iter().all(|p| l.contains(p))).count()
}

fn walk_files(dir: &Path, out: &mut Vec<PathBuf>) {
    let Ok(entries) = fs::read_dir(dir) else { return };
    for entry in entries.flatten() {
        let Ok(kind) = entry.file_type() else { continue };
        if kind.is_dir() {
            walk_files(&entry.path(), out);
        } else if kind.is_file() {
            out.push(entry.path());
        }
    }
}

/// Polls `check` every 50 ms until it holds or `timeout` passes.
pub fn wait_until(timeout: Duration, mut check: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + timeout;
    loop {
        if check() {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        thread::sleep(Duration::from_millis(50));
    }
}

/// A loopback address nobody listens on: a random `127.x.y.z` and a port
/// the kernel just handed out there. Connecting to it is refused.
///
/// The small race: the port is free when this returns, and something else
/// could bind it before the caller does. A random address in 127/8 makes
/// that practically impossible (other listeners and outgoing connections
/// use 127.0.0.1), and [`Sink`] retries on another address if it happens.
pub fn free_addr() -> SocketAddr {
    static HANDED_OUT: Mutex<Option<HashSet<SocketAddr>>> = Mutex::new(None);
    loop {
        let ip = std::net::Ipv4Addr::new(127, fastrand::u8(1..=254), fastrand::u8(..), fastrand::u8(1..=254));
        let Ok(listener) = std::net::TcpListener::bind((ip, 0)) else { continue };
        let addr = listener.local_addr().unwrap();
        drop(listener);
        let mut seen = HANDED_OUT.lock().unwrap();
        if seen.get_or_insert_with(HashSet::new).insert(addr) {
            return addr;
        }
    }
}

/// The value of the first header `name` (case-insensitive) in `message`,
/// unfolded; `None` if absent. Stops at the end of the header section.
pub fn header(message: &[u8], name: &str) -> Option<String> {
    headers(message, name).into_iter().next()
}

/// Every value of header `name` in `message`, in order, unfolded.
pub fn headers(message: &[u8], name: &str) -> Vec<String> {
    let text = String::from_utf8_lossy(message);
    let mut out = Vec::new();
    let mut current: Option<String> = None;
    for line in text.split('\n') {
        let line = line.strip_suffix('\r').unwrap_or(line);
        if line.is_empty() {
            break;
        }
        if line.starts_with(' ') || line.starts_with('\t') {
            if let Some(cur) = current.as_mut() {
                cur.push(' ');
                cur.push_str(line.trim());
            }
            continue;
        }
        if let Some(done) = current.take() {
            out.push(done);
        }
        if let Some((n, v)) = line.split_once(':')
            && n.trim().eq_ignore_ascii_case(name)
        {
            current = Some(v.trim().to_string());
        }
    }
    if let Some(done) = current {
        out.push(done);
    }
    out
}

/// The body of `message`: everything after the first empty line.
pub fn body(message: &[u8]) -> Vec<u8> {
    let text = message;
    for (i, w) in text.windows(2).enumerate() {
        if w == b"\n\n" {
            return text[i + 2..].to_vec();
        }
        if w == b"\n\r" && text.get(i + 2) == Some(&b'\n') {
            return text[i + 3..].to_vec();
        }
    }
    Vec::new()
}

/// The queue id of a Postfix-like log line (`ID: to=<...>, ...`): the
/// first word that is alphanumeric followed by a colon, so a timestamp,
/// level or module path in front (`INFO posthorn::queue: ID: ...`) is
/// skipped.
pub fn queue_id_of(line: &str) -> Option<String> {
    line.split_whitespace()
        .filter_map(|w| w.strip_suffix(':'))
        .find(|w| !w.is_empty() && w.chars().all(|c| c.is_ascii_alphanumeric()))
        .map(str::to_string)
}

/// Files that posthorn 0.1.0 wrote itself: a satellite's spool with
/// deferred, held and maildrop mail under ten-character ids (see
/// tests/upgrade.rs).
pub const SPOOL_0_1_0: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/spool-0.1.0");

/// Copies the 0.1.0 fixture's `states` directories into `spool`, with the
/// modes the daemon makes (git keeps none).
pub fn install_spool_0_1_0(spool: &Path, states: &[&str]) {
    for state in states {
        let to = spool.join(state);
        fs::create_dir_all(&to).unwrap();
        for entry in fs::read_dir(Path::new(SPOOL_0_1_0).join(state)).unwrap() {
            let entry = entry.unwrap();
            let target = to.join(entry.file_name());
            fs::copy(entry.path(), &target).unwrap();
            fs::set_permissions(&target, fs::Permissions::from_mode(0o600)).unwrap();
        }
    }
}

/// A satellite relaying to `smarthost` for the 0.1.0 fixture, whose
/// messages age with the calendar: no delay warnings (4 h by default) and
/// no expiry (5 days) while a test runs.
pub fn spool_0_1_0_config(smarthost: SocketAddr) -> String {
    with_lines(&satellite_config(&[smarthost]), &["queue.delay_warning = \"0s\"", "queue.max_lifetime = \"520w\""])
}
