//! [`Postfix`]: a private, real Postfix instance as the peer of posthorn
//! in the interop tests (upstream client or downstream server).
//!
//! Each instance lives in its own temporary directory and never touches
//! the system's Postfix (`/etc/postfix`, `/var/spool/postfix`):
//! ```text
//! DIR/etc/main.cf, master.cf    config (`postfix -c DIR/etc ...`)
//! DIR/queue/                    queue_directory (root-owned; Postfix makes the rest)
//! DIR/data/                     data_directory (owned by `postfix`)
//! DIR/maillog                   maillog_file: every daemon's log lines
//! ```
//! The SMTP server listens on a random loopback address and port (from
//! [`free_addr`]), named in `master.cf`. `inet_interfaces` stays
//! `127.0.0.1`: Postfix refuses an address that is not on an interface,
//! and only 127.0.0.1 is, although Linux lets anyone bind all of 127/8.
//!
//! A private instance needs root (the master starts its daemons as the
//! `postfix` user); [`Postfix::usable`] says whether the tests can run.
//! `postfix start` daemonizes, so the instance does not die with the test
//! process: dropping a [`Postfix`] stops it (`postfix stop`, then SIGKILL
//! to the master if it is still there).
//!
//! Postfix's commands write their errors to syslog, or to stderr only when
//! that is a terminal; when `postfix start` fails, the harness runs
//! `postfix check` again under a pseudo-terminal to show why.

use std::fs;
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::thread;
use std::time::Duration;

use super::{COMMAND_TIMEOUT, free_addr, keep_dirs, new_tempdir, run_with_timeout, secs, unique_name, wait_until};

/// Where Debian installs the `postfix` control command.
pub const POSTFIX: &str = "/usr/sbin/postfix";
/// Postfix's `sendmail` (Debian: `/usr/sbin/sendmail`, from the postfix package).
pub const POSTFIX_SENDMAIL: &str = "/usr/sbin/sendmail";

/// The daemons of Debian's `master.cf`, without chroot (each instance has
/// a private queue); the SMTP listener line comes before them.
const SERVICES: &str = "\
pickup    unix  n       -       n       60      1       pickup
cleanup   unix  n       -       n       -       0       cleanup
qmgr      unix  n       -       n       300     1       qmgr
tlsmgr    unix  -       -       n       1000?   1       tlsmgr
rewrite   unix  -       -       n       -       -       trivial-rewrite
bounce    unix  -       -       n       -       0       bounce
defer     unix  -       -       n       -       0       bounce
trace     unix  -       -       n       -       0       bounce
verify    unix  -       -       n       -       1       verify
flush     unix  n       -       n       1000?   0       flush
proxymap  unix  -       -       n       -       -       proxymap
proxywrite unix -       -       n       -       1       proxymap
smtp      unix  -       -       n       -       -       smtp
relay     unix  -       -       n       -       -       smtp
showq     unix  n       -       n       -       -       showq
error     unix  -       -       n       -       -       error
retry     unix  -       -       n       -       -       error
discard   unix  -       -       n       -       -       discard
anvil     unix  -       -       n       -       1       anvil
scache    unix  -       -       n       -       1       scache
postlog   unix-dgram n  -       n       -       1       postlogd
";

/// Whether a private Postfix can run here. A missing Postfix is a failure
/// (CI installs it); not being root is the one reason to skip, and this
/// prints a line saying so.
pub fn postfix_usable(test: &str) -> bool {
    assert!(Path::new(POSTFIX).exists(), "{POSTFIX} is missing: apt-get install postfix");
    if !rustix::process::geteuid().is_root() {
        eprintln!("{test}: skipped: a private Postfix instance needs root");
        return false;
    }
    true
}

/// One private Postfix instance. Dropping it stops Postfix and removes
/// the directory.
pub struct Postfix {
    dir: tempfile::TempDir,
    addr: SocketAddr,
    hostname: String,
    /// `main.cf` settings, in order; later [`Postfix::reconfigure`] calls
    /// replace values by key.
    settings: Vec<(String, String)>,
    running: bool,
}

impl Postfix {
    /// Starts an instance with the base settings (see [`Postfix::base`])
    /// changed or extended by `settings` (`("relayhost", "[127.0.0.1]:25")`),
    /// and waits until its SMTP listener accepts connections.
    pub fn start(settings: &[(&str, &str)]) -> Postfix {
        Postfix::start_with_files(settings, &[])
    }

    /// [`Postfix::start`] with `files` (name, contents) written into the
    /// config directory first, where the daemons can read them; settings
    /// name them as `$config_directory/NAME`.
    pub fn start_with_files(settings: &[(&str, &str)], files: &[(&str, &[u8])]) -> Postfix {
        let dir = new_tempdir("posthorn-postfix-");
        let root = dir.path().to_path_buf();
        // The daemons run as `postfix` and must reach their files.
        set_mode(&root, 0o755);
        for sub in ["etc", "queue", "data"] {
            fs::create_dir(root.join(sub)).unwrap_or_else(|e| panic!("create {sub}/: {e}"));
        }
        let mut chown = Command::new("chown");
        chown.arg("postfix").arg(root.join("data"));
        let chown = run_with_timeout(chown, b"", COMMAND_TIMEOUT);
        assert!(chown.status.success(), "chown postfix data/: {}", String::from_utf8_lossy(&chown.stderr));
        let hostname = format!("{}.test", unique_name("pf"));
        let mut pf = Postfix { dir, addr: free_addr(), hostname, settings: Vec::new(), running: false };
        pf.settings = pf.base();
        pf.merge(settings);
        for (name, contents) in files {
            pf.write_file(name, contents);
        }
        pf.write_config();
        pf.launch();
        pf
    }

    /// The settings every instance starts from: its own directories and
    /// log, no local delivery, relaying for 127.0.0.0/8, no TLS, quick
    /// retries, and nothing that reads files outside the directory.
    fn base(&self) -> Vec<(String, String)> {
        let root = self.dir.path().display().to_string();
        let pairs = [
            ("compatibility_level", "3.6".to_string()),
            ("queue_directory", format!("{root}/queue")),
            ("data_directory", format!("{root}/data")),
            ("mail_owner", "postfix".into()),
            ("setgid_group", "postdrop".into()),
            ("myhostname", self.hostname.clone()),
            ("mydomain", "test".into()),
            ("myorigin", "$myhostname".into()),
            ("inet_interfaces", "127.0.0.1".into()),
            ("inet_protocols", "ipv4".into()),
            ("mydestination", String::new()),
            ("local_recipient_maps", String::new()),
            ("alias_maps", String::new()),
            ("alias_database", String::new()),
            ("mynetworks", "127.0.0.0/8".into()),
            ("smtpd_relay_restrictions", "permit_mynetworks, reject".into()),
            ("smtpd_tls_security_level", "none".into()),
            ("smtp_tls_security_level", "none".into()),
            ("maillog_file", format!("{root}/maillog")),
            ("maillog_file_prefixes", root.clone()),
            ("syslog_name", format!("postfix-{}", self.hostname)),
            ("queue_run_delay", "1s".into()),
            ("minimal_backoff_time", "1s".into()),
            ("maximal_backoff_time", "2s".into()),
            ("delay_warning_time", "0".into()),
            ("biff", "no".into()),
        ];
        pairs.into_iter().map(|(k, v)| (k.to_string(), v)).collect()
    }

    fn merge(&mut self, settings: &[(&str, &str)]) {
        for (key, value) in settings {
            match self.settings.iter_mut().find(|(k, _)| k == key) {
                Some(entry) => entry.1 = value.to_string(),
                None => self.settings.push((key.to_string(), value.to_string())),
            }
        }
    }

    fn write_config(&self) {
        let etc = self.config_dir();
        let main: String = self.settings.iter().map(|(k, v)| format!("{k} = {v}\n")).collect();
        fs::write(etc.join("main.cf"), format!("# private instance for posthorn's interop tests\n{main}"))
            .expect("write main.cf");
        let master = format!("{} inet n - n - - smtpd\n{SERVICES}", self.addr);
        fs::write(etc.join("master.cf"), master).expect("write master.cf");
    }

    /// `postfix start`, then waits for the SMTP listener.
    fn launch(&mut self) {
        let out = self.postfix(&["start"]);
        if !out.status.success() {
            panic!(
                "postfix -c {} start failed ({}): {}{}\npostfix check says:\n{}\nmaillog:\n{}",
                self.config_dir().display(),
                out.status,
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr),
                self.check_on_a_terminal(),
                self.log()
            );
        }
        self.running = true;
        let addr = self.addr;
        let listening = wait_until(secs(10), || TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_ok());
        assert!(listening, "Postfix smtpd not listening on {addr} after 10 s; maillog:\n{}", self.log());
    }

    /// `postfix check` under a pseudo-terminal, where Postfix writes its
    /// complaints to stderr (it only logs them to syslog otherwise).
    fn check_on_a_terminal(&self) -> String {
        let script = "import os, pty, sys\nst = pty.spawn(sys.argv[1:])\nsys.exit(os.waitstatus_to_exitcode(st))";
        let mut cmd = Command::new("python3");
        cmd.args(["-c", script, POSTFIX, "-c"]).arg(self.config_dir()).arg("check");
        let out = run_with_timeout(cmd, b"", COMMAND_TIMEOUT);
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// Runs `postfix -c DIR/etc ARGS`.
    fn postfix(&self, args: &[&str]) -> Output {
        let mut cmd = Command::new(POSTFIX);
        cmd.arg("-c").arg(self.config_dir()).args(args);
        run_with_timeout(cmd, b"", COMMAND_TIMEOUT)
    }

    /// Changes `main.cf` settings and runs `postfix reload`; daemons that
    /// are idle finish and the next connection gets the new settings.
    pub fn reconfigure(&mut self, settings: &[(&str, &str)]) {
        self.merge(settings);
        self.write_config();
        let out = self.postfix(&["reload"]);
        assert!(out.status.success(), "postfix reload: {out:?}\nmaillog:\n{}", self.log());
    }

    /// The address of its SMTP server (`smtpd`).
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// `myhostname`, unique per instance (it names Postfix's `Received:`).
    pub fn hostname(&self) -> &str {
        &self.hostname
    }

    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// The directory given to `postfix -c`.
    pub fn config_dir(&self) -> PathBuf {
        self.dir.path().join("etc")
    }

    /// Writes `name` into the config directory (readable by the daemons)
    /// and returns its path, for maps, CA files and the like.
    pub fn write_file(&self, name: &str, contents: &[u8]) -> PathBuf {
        let path = self.config_dir().join(name);
        fs::write(&path, contents).unwrap_or_else(|e| panic!("write {}: {e}", path.display()));
        set_mode(&path, 0o644);
        path
    }

    /// Everything in `maillog_file` so far.
    pub fn log(&self) -> String {
        fs::read_to_string(self.dir.path().join("maillog")).unwrap_or_default()
    }

    /// Log lines containing every one of `patterns`.
    pub fn log_lines(&self, patterns: &[&str]) -> Vec<String> {
        self.log().lines().filter(|l| patterns.iter().all(|p| l.contains(p))).map(str::to_string).collect()
    }

    /// Waits until at least `n` log lines contain every one of `patterns`.
    pub fn wait_for_log_count(&self, patterns: &[&str], n: usize, timeout: Duration) -> bool {
        wait_until(timeout, || self.log_lines(patterns).len() >= n)
    }

    /// Waits until some log line contains every one of `patterns`.
    pub fn wait_for_log(&self, patterns: &[&str], timeout: Duration) -> bool {
        self.wait_for_log_count(patterns, 1, timeout)
    }

    /// Postfix's own `sendmail -C DIR/etc ARGS` with `stdin` as the message
    /// (it goes through postdrop, pickup and cleanup like any local mail).
    pub fn sendmail(&self, args: &[&str], stdin: &[u8]) -> Output {
        let mut cmd = Command::new(POSTFIX_SENDMAIL);
        cmd.arg("-C").arg(self.config_dir()).args(args);
        run_with_timeout(cmd, stdin, COMMAND_TIMEOUT)
    }

    /// `postqueue -p` output (`Mail queue is empty` when it is).
    pub fn mailq(&self) -> String {
        let mut cmd = Command::new("/usr/sbin/postqueue");
        cmd.arg("-c").arg(self.config_dir()).arg("-p");
        let out = run_with_timeout(cmd, b"", COMMAND_TIMEOUT);
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// The master's pid, from `queue/pid/master.pid`.
    fn master_pid(&self) -> Option<i32> {
        let text = fs::read_to_string(self.dir.path().join("queue/pid/master.pid")).ok()?;
        text.trim().parse().ok()
    }

    /// `postfix stop`; the master gets SIGKILL if it still runs 5 s later.
    pub fn stop(&mut self) {
        if !self.running {
            return;
        }
        self.running = false;
        let master = self.master_pid();
        let _ = self.postfix(&["stop"]);
        let Some(pid) = master else { return };
        if !wait_until(secs(5), || !process_alive(pid)) {
            if let Some(pid) = rustix::process::Pid::from_raw(pid) {
                let _ = rustix::process::kill_process(pid, rustix::process::Signal::KILL);
            }
            wait_until(secs(2), || !process_alive(pid));
        }
    }
}

impl Drop for Postfix {
    fn drop(&mut self) {
        if thread::panicking() {
            let text = self.log();
            let lines: Vec<&str> = text.lines().collect();
            let tail = &lines[lines.len().saturating_sub(150)..];
            eprintln!(
                "--- postfix {} on {} (dir {}{}), last {} maillog lines:\n{}",
                self.hostname,
                self.addr,
                self.dir.path().display(),
                if keep_dirs() { ", kept" } else { "; set POSTHORN_KEEP_TEST_DIRS=1 to keep it" },
                tail.len(),
                tail.join("\n")
            );
        }
        self.stop();
    }
}

/// Whether `pid` exists and is not a zombie (a daemonized master's parent
/// may be an init that never reaps it).
fn process_alive(pid: i32) -> bool {
    let Ok(stat) = fs::read_to_string(format!("/proc/{pid}/stat")) else { return false };
    // The state follows the command name, which is in parentheses.
    let state = stat.rsplit_once(") ").and_then(|(_, rest)| rest.chars().next());
    !matches!(state, Some('Z') | Some('X') | None)
}

fn set_mode(path: &Path, mode: u32) {
    use std::os::unix::fs::PermissionsExt;
    fs::set_permissions(path, fs::Permissions::from_mode(mode))
        .unwrap_or_else(|e| panic!("chmod {mode:o} {}: {e}", path.display()));
}
