//! End-to-end: the Debian package and the service manager's protocol.
//!
//! 1. `pkg/build-deb.sh` packs the test binary; `lintian` reports no error
//!    and no warning; every compatibility name has its man page.
//! 2. A real `dpkg -i` in a throwaway root: the host's own system seen
//!    through an overlay in private mount, network and pid namespaces, so
//!    nothing reaches the host, its port 25 or its processes, and the
//!    namespace's end kills every daemon started in it. There:
//!    - the package refuses to install beside Postfix (both are a
//!      mail-transport-agent); with Postfix purged it installs;
//!    - files, compatibility links, the account, the spool's modes, the
//!      unit (`systemd-analyze verify`) and its enablement, the sysvinit
//!      links; postinst started the daemon through invoke-rc.d;
//!    - a mail to root through /usr/sbin/sendmail is in root's Maildir;
//!    - an upgrade (same version + 1) with one message deferred in the
//!      queue and one in the maildrop while the daemon was stopped: the
//!      edited conffile is kept, the deferred message keeps its queue id,
//!      the dropped one is delivered by the restarted daemon;
//!    - the daemon runs and delivers with exactly the unit's capability
//!      bounding set and no new privileges (setpriv);
//!    - `remove` stops the daemon and keeps the account and the spool;
//!      `purge` removes both, and keeps delivered mail.
//! 3. `NOTIFY_SOCKET`: READY after the port accepts, RELOADING and READY on
//!    SIGHUP, STOPPING on SIGTERM, WATCHDOG pings at half WATCHDOG_USEC.
//!
//! Needs root (namespaces, dpkg), dpkg-dev, lintian and systemd (for
//! systemd-analyze), which .ci/run installs.

mod harness;

use harness::*;
use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::net::UnixDatagram;
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

const VERSION_1: &str = "0.1.0";
const VERSION_2: &str = "0.1.1";

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// Builds the package around the test binary; the .deb's path.
fn build_deb(out: &Path, version: &str) -> PathBuf {
    let mut cmd = Command::new(repo().join("pkg/build-deb.sh"));
    cmd.arg("--binary").arg(env!("CARGO_BIN_EXE_posthorn")).arg("--version").arg(version).arg(out);
    let output = run_with_timeout(cmd, b"", secs(180));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "build-deb.sh failed: {stderr}");
    let deb = PathBuf::from(String::from_utf8_lossy(&output.stdout).trim());
    assert!(deb.is_file(), "build-deb.sh printed {deb:?}, not a file; stderr: {stderr}");
    deb
}

fn require_root() {
    assert!(rustix::process::geteuid().is_root(), "tests/package.rs installs packages: run it as root (CI does)");
}

#[test]
fn lintian_reports_no_errors_and_the_binary_is_stripped() {
    let out = tempfile::tempdir().unwrap();
    let deb = build_deb(out.path(), VERSION_1);
    let output = run_with_timeout(
        {
            let mut c = Command::new("lintian");
            c.arg("--tag-display-limit").arg("0").arg(&deb);
            c
        },
        b"",
        secs(120),
    );
    let report = String::from_utf8_lossy(&output.stdout);
    // Neither errors nor warnings (no overrides either): a page for every
    // program in the PATH, compatibility names included, among them.
    let findings: Vec<&str> = report.lines().filter(|l| l.starts_with("E:") || l.starts_with("W:")).collect();
    assert!(findings.is_empty(), "lintian errors and warnings:\n{}", findings.join("\n"));
    // lintian exits 2 when it cannot run at all (no E: lines then either).
    assert_ne!(output.status.code(), Some(2), "lintian did not run: {}", String::from_utf8_lossy(&output.stderr));

    let tree = out.path().join("tree");
    let status = Command::new("dpkg-deb").arg("-x").arg(&deb).arg(&tree).status().unwrap();
    assert!(status.success());
    for name in ["sendmail", "mailq", "newaliases", "exim4", "postconf"] {
        let page = tree.join(format!("usr/share/man/man1/{name}.1.gz"));
        assert!(page.is_file(), "no man page reached by {}", page.display());
    }
    let file = Command::new("file").arg(tree.join("usr/sbin/posthorn")).output();
    // `file` is not everywhere; readelf (binutils, which strip needs) is.
    let sections = Command::new("readelf").arg("-S").arg(tree.join("usr/sbin/posthorn")).output().unwrap();
    let sections = String::from_utf8_lossy(&sections.stdout);
    assert!(!sections.contains(".debug_info") && !sections.contains(".symtab"), "not stripped: {sections}");
    if let Ok(file) = file {
        assert!(String::from_utf8_lossy(&file.stdout).contains("stripped"));
    }
}

/// A shell in a throwaway root: the host's `/` under an overlay whose
/// writes go to a tmpfs, in new mount, network and pid namespaces.
struct Root {
    child: Child,
    stdin: ChildStdin,
    lines: mpsc::Receiver<String>,
    _dir: tempfile::TempDir,
}

const SETUP: &str = r#"
set -e
T=$1; DEBS=$2
mount -t tmpfs tmpfs "$T"
mkdir -p "$T/u" "$T/w" "$T/m"
mount -t overlay overlay -o "lowerdir=/,upperdir=$T/u,workdir=$T/w" "$T/m"
mount -t proc proc "$T/m/proc"
mount --rbind /dev "$T/m/dev"
mount --rbind /sys "$T/m/sys"
mkdir -p "$T/m/debs"
mount --bind "$DEBS" "$T/m/debs"
ip link set lo up
exec chroot "$T/m" /bin/sh
"#;

impl Root {
    fn new(debs: &Path) -> Root {
        let dir = tempfile::tempdir().unwrap();
        let mut cmd = Command::new("unshare");
        cmd.args(["--mount", "--net", "--pid", "--fork", "--propagation", "private", "sh", "-c", SETUP, "setup"])
            .arg(dir.path())
            .arg(debs)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit());
        die_with_parent(&mut cmd);
        let mut child = cmd.spawn().expect("unshare (util-linux)");
        let stdin = child.stdin.take().unwrap();
        let stdout = child.stdout.take().unwrap();
        let (tx, lines) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                if tx.send(line.unwrap_or_default()).is_err() {
                    break;
                }
            }
        });
        let mut root = Root { child, stdin, lines, _dir: dir };
        let (code, out) = root.run("cd / && test -e /debs && echo inside");
        assert!(code == 0 && out.contains("inside"), "the throwaway root did not come up: {out}");
        root
    }

    /// Runs `script` in the root's shell: its exit code and its output
    /// (stdout and stderr).
    fn run(&mut self, script: &str) -> (i32, String) {
        const END: &str = "__posthorn_test_rc=";
        writeln!(self.stdin, "( {script}\n) </dev/null 2>&1; rc=$?; echo; echo \"{END}$rc\"").unwrap();
        self.stdin.flush().unwrap();
        let deadline = Instant::now() + secs(120);
        let mut out = String::new();
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(line) => match line.strip_prefix(END) {
                    Some(code) => return (code.trim().parse().unwrap_or(-1), out),
                    None => {
                        out.push_str(&line);
                        out.push('\n');
                    }
                },
                Err(_) => panic!("{script}: no end within 120 s; output so far:\n{out}"),
            }
        }
    }

    /// `run`, asserting exit 0.
    fn ok(&mut self, script: &str) -> String {
        let (code, out) = self.run(script);
        assert_eq!(code, 0, "{script} exited {code}:\n{out}");
        out
    }

    /// Waits until `script` exits 0.
    fn until(&mut self, script: &str, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        while Instant::now() < deadline {
            if self.run(script).0 == 0 {
                return true;
            }
            std::thread::sleep(Duration::from_millis(200));
        }
        false
    }
}

impl Drop for Root {
    fn drop(&mut self) {
        let _ = writeln!(self.stdin, "exit 0");
        if wait_timeout(&mut self.child, secs(10)).is_none() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

const MAILDIR: &str = "/var/mail/posthorn/root/new";

#[test]
fn dpkg_installs_upgrades_removes_and_purges_in_a_throwaway_root() {
    require_root();
    let debs = tempfile::tempdir().unwrap();
    let v1 = build_deb(debs.path(), VERSION_1);
    let v2 = build_deb(debs.path(), VERSION_2);
    let (v1, v2) = (format!("/debs/{}", name(&v1)), format!("/debs/{}", name(&v2)));
    let mut root = Root::new(debs.path());

    // Postfix (installed for the other tests) is a mail-transport-agent too.
    if root.run("dpkg -s postfix | grep -q '^Status: install ok installed'").0 == 0 {
        let (code, out) = root.run(&format!("dpkg -i {v1}"));
        assert_ne!(code, 0, "installed beside postfix:\n{out}");
        assert!(out.contains("mail-transport-agent"), "{out}");
        root.ok("dpkg --purge --force-depends postfix >/dev/null");
    }
    // In here services may start: the network is this namespace's own.
    root.ok("printf '#!/bin/sh\\nexit 0\\n' >/usr/sbin/policy-rc.d && chmod 755 /usr/sbin/policy-rc.d");
    root.ok(&format!("dpkg -i {v1}"));

    // Files, links, account, unit.
    for (link, target) in [
        ("/usr/sbin/sendmail", "posthorn"),
        ("/usr/bin/mailq", "../sbin/posthorn"),
        ("/usr/bin/newaliases", "../sbin/posthorn"),
        ("/usr/sbin/postqueue", "posthorn"),
        ("/usr/sbin/postsuper", "posthorn"),
        ("/usr/sbin/exiqgrep", "posthorn"),
        ("/usr/lib/sendmail", "../sbin/sendmail"),
    ] {
        assert_eq!(root.ok(&format!("readlink {link}")).trim(), target, "{link}");
    }
    root.ok("test -x /usr/sbin/posthorn && test -x /etc/init.d/posthorn && test -f /etc/posthorn/posthorn.toml");
    root.ok("dpkg-query -W -f='${Conffiles}' posthorn | grep -q /etc/posthorn/posthorn.toml");
    let account = root.ok("getent passwd posthorn");
    let fields: Vec<&str> = account.trim().split(':').collect();
    assert!(fields[2].parse::<u32>().unwrap() < 1000, "not a system account: {account}");
    assert_eq!(fields[6], "/usr/sbin/nologin", "{account}");
    root.ok("getent group posthorn");
    root.ok("systemd-analyze verify --man=no /lib/systemd/system/posthorn.service");
    root.ok("test -L /etc/systemd/system/multi-user.target.wants/posthorn.service");
    root.ok("ls /etc/rc2.d | grep -q '^S..posthorn$'");
    root.ok("grep -q '^localhost maildir:' /etc/posthorn/transport && grep -q \"^$(uname -n) maildir:\" /etc/posthorn/transport");

    // postinst started it (invoke-rc.d, the init script, `postfix start`).
    root.ok("posthorn postfix status");
    let spool =
        root.ok("stat -c '%U:%G %a' /var/spool/posthorn /var/spool/posthorn/maildrop /var/spool/posthorn/deferred");
    assert_eq!(
        spool.split_whitespace().collect::<Vec<_>>().join(" "),
        "posthorn:posthorn 711 posthorn:posthorn 3733 posthorn:posthorn 700"
    );

    // A mail to root is delivered, here.
    root.ok("printf 'Subject: first\\n\\nto root\\n' | /usr/sbin/sendmail root");
    assert!(root.until(&format!("grep -l 'Subject: first' {MAILDIR}/*"), secs(20)), "no mail to root");

    // The upgrade: one message deferred (no smarthost for example.net),
    // an edit in the conffile, one message dropped while stopped.
    root.ok("printf 'Subject: waits\\n\\nfor a smarthost\\n' | sendmail ops@example.net");
    assert!(root.until("mailq | grep -q ops@example.net", secs(20)), "the message did not queue");
    let queued = root.ok("mailq | awk '/ops@example.net/ {print prev} {prev=$1}' | tr -d '*!'");
    root.ok("echo '# edited by the administrator' >>/etc/posthorn/posthorn.toml");
    root.ok("/etc/init.d/posthorn stop");
    root.ok("! posthorn postfix status");
    root.ok("printf 'Subject: dropped\\n\\nwhile stopped\\n' | sendmail root");
    root.ok(&format!("dpkg -i {v2}"));
    root.ok(&format!("dpkg-query -W -f='${{Version}}' posthorn | grep -qx {VERSION_2}"));
    root.ok("tail -1 /etc/posthorn/posthorn.toml | grep -qx '# edited by the administrator'");
    root.ok("! ls /etc/posthorn/ | grep -q dpkg");
    root.ok("posthorn postfix status");
    assert!(root.until(&format!("grep -l 'Subject: dropped' {MAILDIR}/*"), secs(20)), "the drop was lost");
    let after = root.ok("mailq");
    assert!(after.contains(queued.trim()) && after.contains("ops@example.net"), "{queued} lost:\n{after}");

    // The unit's capability bounding set and NoNewPrivileges are enough:
    // the daemon runs with exactly those (setpriv) and delivers.
    root.ok("/etc/init.d/posthorn stop");
    let caps = root.ok("sed -n 's/^CapabilityBoundingSet=//p' /lib/systemd/system/posthorn.service \
         | tr ' ' '\\n' | sed 's/^CAP_/+/' | tr 'A-Z' 'a-z' | paste -sd,");
    assert!(caps.contains("+net_bind_service"), "{caps}");
    root.ok(&format!(
        "setpriv --bounding-set -all,{} --inh-caps=-all --no-new-privs posthorn serve --default-log stderr \
         >/tmp/confined.log 2>&1 & echo $! >/tmp/confined.pid",
        caps.trim()
    ));
    assert!(root.until("grep -qx ready /tmp/confined.log", secs(20)), "{}", root.ok("cat /tmp/confined.log"));
    root.ok("printf 'Subject: confined\\n\\nx\\n' | sendmail root");
    assert!(root.until(&format!("grep -l 'Subject: confined' {MAILDIR}/*"), secs(20)), "not delivered when confined");
    root.ok("kill $(cat /tmp/confined.pid)");
    assert!(root.until("! posthorn postfix status", secs(20)), "the confined daemon did not stop");
    root.ok("/etc/init.d/posthorn start");

    // Remove: stopped, account and spool kept.
    // The host's mail clients (bsd-mailx, mutt) depend on some MTA.
    root.ok("dpkg -r --force-depends posthorn");
    root.ok("! test -e /usr/sbin/posthorn && ! test -e /usr/sbin/sendmail");
    root.ok("! pgrep -x posthorn");
    root.ok("getent passwd posthorn && test -d /var/spool/posthorn && test -f /etc/posthorn/posthorn.toml");
    root.ok(&format!("grep -rl 'Subject: waits' /var/spool/posthorn/data/ && test -n \"$(ls {MAILDIR})\""));

    // Purge: account and spool gone, delivered mail kept.
    root.ok("dpkg -P --force-depends posthorn");
    root.ok("! getent passwd posthorn && ! getent group posthorn");
    root.ok("! test -e /var/spool/posthorn && ! test -e /etc/posthorn");
    root.ok(&format!("test -n \"$(ls {MAILDIR})\""));
    root.ok("test ! -e /etc/init.d/posthorn && ! ls /etc/rc2.d | grep -q posthorn");
}

fn name(path: &Path) -> String {
    path.file_name().unwrap().to_string_lossy().into_owned()
}

/// Reads notifications until one satisfies `want`, counting the watchdog
/// pings on the way.
fn next_state(socket: &UnixDatagram, want: &str, pings: &mut usize) -> String {
    let deadline = Instant::now() + secs(20);
    let mut buf = [0u8; 1024];
    loop {
        socket
            .set_read_timeout(Some(deadline.saturating_duration_since(Instant::now()).max(Duration::from_millis(1))))
            .unwrap();
        let n = socket.recv(&mut buf).unwrap_or_else(|e| panic!("no {want} notification: {e}"));
        let text = String::from_utf8_lossy(&buf[..n]).into_owned();
        if text == "WATCHDOG=1\n" {
            *pings += 1;
        } else if text.lines().any(|l| l == want) {
            return text;
        } else {
            panic!("expected {want}, got {text:?}");
        }
    }
}

#[test]
fn the_daemon_speaks_sd_notify() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("notify");
    let socket = UnixDatagram::bind(&path).unwrap();
    let mut ph = Posthorn::start_with_env(
        "[smtp]\nlisten = [\"127.0.0.1:0\"]\n[relay]\nsmarthosts = [\"127.0.0.1:9\"]\n",
        &[("NOTIFY_SOCKET", path.to_str().unwrap()), ("WATCHDOG_USEC", "400000")],
    );
    let mut pings = 0;
    next_state(&socket, "READY=1", &mut pings);
    // Ready means accepting: the greeting comes at once.
    let mut conn = std::net::TcpStream::connect(ph.smtp_addr()).unwrap();
    conn.set_read_timeout(Some(secs(5))).unwrap();
    let mut greeting = [0u8; 3];
    conn.read_exact(&mut greeting).unwrap();
    assert_eq!(&greeting, b"220");
    drop(conn);

    let pid = rustix::process::Pid::from_raw(ph.pid().unwrap() as i32).unwrap();
    rustix::process::kill_process(pid, rustix::process::Signal::HUP).unwrap();
    let reloading = next_state(&socket, "RELOADING=1", &mut pings);
    assert!(reloading.contains("MONOTONIC_USEC="), "{reloading}");
    next_state(&socket, "READY=1", &mut pings);

    // 400 ms watchdog: a ping every 200 ms from the main loop.
    std::thread::sleep(Duration::from_millis(900));
    rustix::process::kill_process(pid, rustix::process::Signal::TERM).unwrap();
    next_state(&socket, "STOPPING=1", &mut pings);
    assert!(pings >= 3, "{pings} watchdog pings in about a second");
    ph.stop();
}
