//! [`Sink`]: Postfix's `smtp-sink` as the receiving peer, capturing every
//! message it accepts to a file that the tests read back.
//!
//! `smtp-sink -d DIR/` writes one file per mail transaction (`DIR/` plus
//! eight random hex digits). The file is opened at MAIL FROM, written while
//! the transaction runs, and closed right after the final `.` is read,
//! before the reply to it is sent; an aborted transaction (RSET, EHLO,
//! lost connection) unlinks its file. So a file that `smtp-sink` no longer
//! holds open is a finished message; the harness tells them apart by
//! looking at `/proc/PID/fd` and only ever returns finished ones.
//!
//! Caveat from the same design: with `-r .` or `-f .` (reject the end of
//! DATA) the message is still captured, although the client was told 4xx
//! or 5xx. Reject `DATA` or `RCPT` instead when nothing must be captured.
//!
//! A dump file holds, one line each (LF line ends, CRs dropped):
//! ```text
//! X-Client-Addr: 127.0.0.1
//! X-Client-Proto: ESMTP
//! X-Helo-Args: <EHLO argument>            (only after HELO/EHLO)
//! X-Mail-Args: <sender@x> SIZE=123 ...    (MAIL FROM argument + parameters)
//! X-Rcpt-Args: <rcpt@y> NOTIFY=...        (one line per accepted RCPT)
//! Received: from helo ([127.0.0.1])
//! <TAB>by smtp-sink (smtp-sink) with ESMTP id 1a2b3c4d;
//! <TAB><date>
//! <the message as received: headers, empty line, body; dot-unstuffed>
//! <one extra empty line>
//! ```
//! [`Sink::messages`] returns these files raw; [`parse_dump`] splits one into
//! envelope and message.
//!
//! As root `smtp-sink` insists on `-u USER` (it switches to that user after
//! binding); the harness passes `-u root` then, so the dump directory needs
//! no extra permissions, and nothing as an ordinary user.

use std::collections::HashSet;
use std::fs;
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Mutex;
use std::thread;
use std::time::{Duration, Instant, SystemTime};

use rustix::process::Signal;

use super::{die_with_parent, free_addr, new_tempdir, signal, wait_timeout};

/// Where Debian installs it; `smtp-sink` on PATH otherwise.
pub fn smtp_sink_path() -> PathBuf {
    let sbin = PathBuf::from("/usr/sbin/smtp-sink");
    if sbin.exists() { sbin } else { PathBuf::from("smtp-sink") }
}

/// One `smtp-sink` on its own loopback address, capturing to a tempdir.
/// Dropping it kills the process and removes the directory.
pub struct Sink {
    dir: tempfile::TempDir,
    addr: SocketAddr,
    options: Vec<String>,
    child: Option<Child>,
    captured: Mutex<Captured>,
}

#[derive(Default)]
struct Captured {
    /// Finished messages in the order they were found.
    messages: Vec<Vec<u8>>,
}

impl Sink {
    /// A sink that accepts everything.
    pub fn start() -> Sink {
        Sink::start_with(&[])
    }

    /// A sink with extra `smtp-sink` options, e.g. `&["-r", "RCPT"]` (4xx
    /// to every RCPT), `&["-f", "DATA"]` (5xx to DATA), `&["-Q", "CONNECT"]`
    /// (421 greeting), `&["-q", "MAIL"]` (drop the connection at MAIL),
    /// `&["-w", "3"]` (wait 3 s before answering DATA). The harness adds
    /// `-d`, `-u` and the address.
    pub fn start_with(options: &[&str]) -> Sink {
        let dir = new_tempdir("posthorn-sink-");
        fs::create_dir(dir.path().join("dump")).expect("create dump dir");
        fs::create_dir(dir.path().join("done")).expect("create done dir");
        let mut sink = Sink {
            dir,
            addr: free_addr(),
            options: options.iter().map(|s| s.to_string()).collect(),
            child: None,
            captured: Mutex::new(Captured::default()),
        };
        // A fresh address each time the (unlikely) bind race is lost.
        let mut last = String::new();
        for _ in 0..5 {
            match sink.spawn() {
                Ok(()) => return sink,
                Err(e) => {
                    last = e;
                    sink.addr = free_addr();
                }
            }
        }
        panic!("smtp-sink did not start: {last}");
    }

    /// A sink's address with nothing listening yet: connections are
    /// refused until [`Sink::restart`]. For "smarthost down" tests.
    pub fn start_stopped() -> Sink {
        let mut sink = Sink::start();
        sink.stop();
        sink
    }

    fn spawn(&mut self) -> Result<(), String> {
        let log = self.dir.path().join("smtp-sink.log");
        let stderr = fs::OpenOptions::new().create(true).append(true).open(&log).expect("open smtp-sink.log");
        let mut cmd = Command::new(smtp_sink_path());
        if rustix::process::geteuid().is_root() {
            cmd.args(["-u", "root"]);
        }
        // The trailing "/" makes file names the random part alone.
        cmd.arg("-d").arg(format!("{}/", self.dump_dir().display()));
        cmd.args(&self.options);
        cmd.arg(self.addr.to_string()).arg("64");
        cmd.stdin(Stdio::null()).stdout(Stdio::null()).stderr(stderr);
        die_with_parent(&mut cmd);
        let mut child = cmd.spawn().map_err(|e| format!("spawn {}: {e}", smtp_sink_path().display()))?;
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if let Ok(Some(status)) = child.try_wait() {
                let text = fs::read_to_string(&log).unwrap_or_default();
                return Err(format!("smtp-sink on {} exited with {status}: {text}", self.addr));
            }
            // Any connection proves it listens; without MAIL FROM it
            // captures nothing.
            if TcpStream::connect_timeout(&self.addr, Duration::from_millis(200)).is_ok() {
                self.child = Some(child);
                return Ok(());
            }
            if Instant::now() >= deadline {
                let _ = child.kill();
                let _ = child.wait();
                return Err(format!("smtp-sink on {} not listening after 10 s", self.addr));
            }
            thread::sleep(Duration::from_millis(20));
        }
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    pub fn dump_dir(&self) -> PathBuf {
        self.dir.path().join("dump")
    }

    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    pub fn is_running(&self) -> bool {
        self.child.is_some()
    }

    /// Stops the sink: freezes it, keeps every finished message, drops the
    /// files of transactions still open, then kills it. Its address then
    /// refuses connections until [`Sink::restart`].
    pub fn stop(&mut self) {
        let Some(mut child) = self.child.take() else { return };
        signal(&child, Signal::STOP);
        let open = open_files(child.id());
        self.harvest(Some(&open));
        // What is still open is an unfinished transaction: not a message.
        for path in open {
            if path.parent() == Some(self.dump_dir().as_path()) {
                let _ = fs::remove_file(&path);
            }
        }
        let _ = child.kill();
        let _ = child.wait();
    }

    /// Starts it again on the same address with the same options; the
    /// messages captured so far stay.
    pub fn restart(&mut self) {
        self.restart_with_options(None);
    }

    /// Restarts with other `smtp-sink` options (same address, same dump).
    pub fn restart_with(&mut self, options: &[&str]) {
        self.restart_with_options(Some(options.iter().map(|s| s.to_string()).collect()));
    }

    fn restart_with_options(&mut self, options: Option<Vec<String>>) {
        self.stop();
        if let Some(options) = options {
            self.options = options;
        }
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            match self.spawn() {
                Ok(()) => return,
                Err(e) if Instant::now() >= deadline => panic!("smtp-sink restart: {e}"),
                Err(_) => thread::sleep(Duration::from_millis(100)),
            }
        }
    }

    /// Takes newly finished dump files: reads each into `captured` and
    /// moves it to `done/` (numbered in arrival order), so the dump
    /// directory only ever holds files not yet taken. (Moving matters:
    /// smtp-sink's random file names repeat after a restart.) `open`: the
    /// files the process holds (read from /proc when `None`).
    fn harvest(&self, open: Option<&HashSet<PathBuf>>) {
        let dump = self.dump_dir();
        let mut captured = self.captured.lock().unwrap();
        // List first, then see what is open: a file listed and not open
        // has been closed, i.e. finished (or unlinked: then reading fails).
        let mut names: Vec<(SystemTime, String)> = Vec::new();
        for entry in fs::read_dir(&dump).expect("read dump dir").flatten() {
            let name = entry.file_name().to_string_lossy().into_owned();
            let mtime = entry.metadata().and_then(|m| m.modified()).unwrap_or(SystemTime::UNIX_EPOCH);
            names.push((mtime, name));
        }
        let fetched;
        let open = match open {
            Some(open) => open,
            None => {
                fetched = self.child.as_ref().map(|c| open_files(c.id())).unwrap_or_default();
                &fetched
            }
        };
        names.sort();
        for (_, name) in names {
            let path = dump.join(&name);
            if open.contains(&path) {
                continue;
            }
            if let Ok(data) = fs::read(&path) {
                let done = self.dir.path().join("done").join(format!("{:06}-{name}", captured.messages.len()));
                fs::rename(&path, &done).expect("move dump file to done/");
                captured.messages.push(data);
            }
        }
    }

    /// Every finished message so far, raw dump format (see module doc).
    pub fn messages(&self) -> Vec<Vec<u8>> {
        self.harvest(None);
        self.captured.lock().unwrap().messages.clone()
    }

    /// [`Sink::messages`], parsed.
    pub fn parsed(&self) -> Vec<Dumped> {
        self.messages().iter().map(|m| parse_dump(m)).collect()
    }

    /// Waits until at least `n` messages arrived (or `timeout` passed) and
    /// returns all of them; the caller checks the count.
    pub fn wait_for_messages(&self, n: usize, timeout: Duration) -> Vec<Vec<u8>> {
        let deadline = Instant::now() + timeout;
        loop {
            let got = self.messages();
            if got.len() >= n || Instant::now() >= deadline {
                return got;
            }
            thread::sleep(Duration::from_millis(50));
        }
    }

    /// [`Sink::wait_for_messages`], parsed.
    pub fn wait_for_parsed(&self, n: usize, timeout: Duration) -> Vec<Dumped> {
        self.wait_for_messages(n, timeout).iter().map(|m| parse_dump(m)).collect()
    }

    /// What `smtp-sink` wrote on stderr (its warnings and fatal errors).
    pub fn log(&self) -> String {
        fs::read_to_string(self.dir.path().join("smtp-sink.log")).unwrap_or_default()
    }
}

impl Drop for Sink {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = wait_timeout(&mut child, Duration::from_secs(5));
        }
    }
}

/// The files process `pid` holds open, by path.
fn open_files(pid: u32) -> HashSet<PathBuf> {
    let mut out = HashSet::new();
    if let Ok(entries) = fs::read_dir(format!("/proc/{pid}/fd")) {
        for entry in entries.flatten() {
            if let Ok(target) = fs::read_link(entry.path()) {
                out.insert(target);
            }
        }
    }
    out
}

/// One captured transaction, split into what `smtp-sink` recorded about
/// the envelope and the message itself.
#[derive(Clone)]
pub struct Dumped {
    pub client_addr: String,
    pub helo: Option<String>,
    /// The MAIL FROM address without angle brackets ("" for `<>`).
    pub mail_from: String,
    /// MAIL FROM parameters (`SIZE=123`, `BODY=8BITMIME`, ...).
    pub mail_params: Vec<String>,
    /// The RCPT TO addresses without angle brackets, in order.
    pub rcpt_to: Vec<String>,
    /// The message as received (LF line ends), smtp-sink's own lines and
    /// its trailing empty line removed.
    pub message: Vec<u8>,
}

impl std::fmt::Debug for Dumped {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Dumped")
            .field("client_addr", &self.client_addr)
            .field("helo", &self.helo)
            .field("mail_from", &self.mail_from)
            .field("mail_params", &self.mail_params)
            .field("rcpt_to", &self.rcpt_to)
            .field("message", &self.text())
            .finish()
    }
}

impl Dumped {
    pub fn header(&self, name: &str) -> Option<String> {
        super::header(&self.message, name)
    }

    pub fn headers(&self, name: &str) -> Vec<String> {
        super::headers(&self.message, name)
    }

    pub fn body(&self) -> Vec<u8> {
        super::body(&self.message)
    }

    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.message).into_owned()
    }
}

/// Splits a dump file (see the module doc) into envelope and message.
pub fn parse_dump(raw: &[u8]) -> Dumped {
    let mut d = Dumped {
        client_addr: String::new(),
        helo: None,
        mail_from: String::new(),
        mail_params: Vec::new(),
        rcpt_to: Vec::new(),
        message: Vec::new(),
    };
    let mut rest = raw;
    while let Some(nl) = rest.iter().position(|&b| b == b'\n') {
        let line = String::from_utf8_lossy(&rest[..nl]).into_owned();
        let after = &rest[nl + 1..];
        if let Some(v) = line.strip_prefix("X-Client-Addr: ") {
            d.client_addr = v.to_string();
        } else if line.starts_with("X-Client-Proto: ") {
        } else if let Some(v) = line.strip_prefix("X-Helo-Args: ") {
            d.helo = Some(v.to_string());
        } else if let Some(v) = line.strip_prefix("X-Mail-Args: ") {
            let (addr, params) = split_path(v);
            d.mail_from = addr;
            d.mail_params = params;
        } else if let Some(v) = line.strip_prefix("X-Rcpt-Args: ") {
            d.rcpt_to.push(split_path(v).0);
        } else if line.starts_with("Received: ") && line.contains("([") {
            // smtp-sink's three-line Received: ends its part of the file.
            let mut tail = after;
            for _ in 0..2 {
                if tail.first() == Some(&b'\t') {
                    let end = tail.iter().position(|&b| b == b'\n').map_or(tail.len(), |p| p + 1);
                    tail = &tail[end..];
                }
            }
            rest = tail;
            break;
        } else {
            break;
        }
        rest = after;
    }
    let mut message = rest.to_vec();
    // smtp-sink ends every capture with one empty line of its own.
    if message.ends_with(b"\n\n") {
        message.pop();
    }
    d.message = message;
    d
}

/// `<a@b> KEY=V ...` -> ("a@b", ["KEY=V", ...]).
fn split_path(args: &str) -> (String, Vec<String>) {
    let args = args.trim();
    if let Some(inner) = args.strip_prefix('<')
        && let Some(end) = inner.find('>')
    {
        let params = inner[end + 1..].split_whitespace().map(str::to_string).collect();
        return (inner[..end].to_string(), params);
    }
    let mut words = args.split_whitespace();
    let addr = words.next().unwrap_or("").to_string();
    (addr, words.map(str::to_string).collect())
}
