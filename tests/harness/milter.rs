//! Milters for the milter tests: a scripted one in Python (stdlib only),
//! and wrappers that start the real rspamd and OpenDKIM with private
//! configurations on loopback ports the test chose.
//!
//! The scripted milter speaks the Sendmail milter protocol (version 6)
//! and decides from what it is told, so one instance serves many cases:
//! - a recipient starting `refuse@` gets SMFIR_REPLYCODE
//!   `550 5.7.1 refuse: recipient refused by the test milter`;
//!   `die@` makes it close the connection at RCPT;
//! - at the end of the message, by the `Subject:`: `tempfail` gets
//!   `451 4.7.1 tempfail: try again later (test milter)`, `reject` plain
//!   SMFIR_REJECT, `quarantine` SMFIR_QUARANTINE, `discard` SMFIR_DISCARD,
//!   `modify` every change (a header added, one inserted at the top, the
//!   subject changed, `X-Drop:` deleted, a recipient added and one
//!   removed, the sender changed, the body replaced), `hang` no answer at
//!   all, `slow` an accept after one second;
//! - it writes what it saw, one line per command with its macros, to its
//!   record file (`Milter::record`).

use std::fs;
use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use super::{die_with_parent, free_addr, wait_until};

const SCRIPTED: &str = r#"
import socket, socketserver, struct, sys, threading, time

record = open(sys.argv[2], "a", buffering=1)
lock = threading.Lock()

def note(line):
    with lock:
        record.write(line + "\n")

def cstrings(data):
    return [s.decode("utf-8", "replace") for s in data.split(b"\0")[:-1]]

class Milter(socketserver.BaseRequestHandler):
    def send(self, code, data=b""):
        self.request.sendall(struct.pack(">I", len(data) + 1) + code + data)

    def read(self, n):
        buf = b""
        while len(buf) < n:
            chunk = self.request.recv(n - len(buf))
            if not chunk:
                raise EOFError
            buf += chunk
        return buf

    def handle(self):
        subject, macros = "", {}
        try:
            while True:
                (length,) = struct.unpack(">I", self.read(4))
                packet = self.read(length)
                cmd, data = packet[:1], packet[1:]
                if cmd == b"O":
                    self.send(b"O", struct.pack(">III", 6, 0x1ff, 0))
                elif cmd == b"D":
                    fields = cstrings(data[1:])
                    macros = dict(zip(fields[0::2], fields[1::2]))
                    note("macros %s %s" % (data[:1].decode(), " ".join("%s=%s" % kv for kv in sorted(macros.items()))))
                elif cmd == b"R":
                    rcpt = cstrings(data)[0]
                    note("rcpt " + rcpt)
                    if rcpt.startswith("<die@"):
                        return
                    if rcpt.startswith("<refuse@"):
                        self.send(b"y", b"550 5.7.1 refuse: recipient refused by the test milter\0")
                    else:
                        self.send(b"c")
                elif cmd == b"L":
                    name, value = cstrings(data)
                    note("header %s: %s" % (name, value))
                    if name.lower() == "subject":
                        subject = value.strip()
                    self.send(b"c")
                elif cmd == b"E":
                    note("eom " + subject)
                    self.end(subject)
                elif cmd in (b"A",):
                    note("abort")
                elif cmd == b"Q":
                    return
                else:
                    note("command " + cmd.decode() + " " + " ".join(cstrings(data)) if data.endswith(b"\0") else "command " + cmd.decode())
                    self.send(b"c")
        except EOFError:
            return

    def end(self, subject):
        if subject == "tempfail":
            self.send(b"y", b"451 4.7.1 tempfail: try again later (test milter)\0")
        elif subject == "reject":
            self.send(b"r")
        elif subject == "discard":
            self.send(b"d")
        elif subject == "quarantine":
            self.send(b"q", b"held by the test milter\0")
            self.send(b"a")
        elif subject == "modify":
            self.send(b"h", b"X-Milter\0added\0")
            self.send(b"i", struct.pack(">I", 0) + b"X-First\0top\0")
            self.send(b"m", struct.pack(">I", 1) + b"Subject\0modified by milter\0")
            self.send(b"m", struct.pack(">I", 1) + b"X-Drop\0\0")
            self.send(b"+", b"<added@example.org>\0")
            self.send(b"-", b"<removed@example.org>\0")
            self.send(b"e", b"<changed@example.net>\0")
            self.send(b"b", b"replaced body\r\n")
            self.send(b"c")
        elif subject == "hang":
            time.sleep(3600)
        elif subject == "slow":
            time.sleep(1)
            self.send(b"a")
        else:
            self.send(b"c")

class Server(socketserver.ThreadingTCPServer):
    daemon_threads = True
    allow_reuse_address = True

host, port = sys.argv[1].rsplit(":", 1)
server = Server((host, int(port)), Milter)
print("ready", flush=True)
server.serve_forever()
"#;

/// The scripted milter, running until dropped.
pub struct Milter {
    child: Child,
    addr: SocketAddr,
    record: PathBuf,
    _dir: tempfile::TempDir,
}

impl Milter {
    /// Starts the scripted milter on a free loopback port.
    pub fn start() -> Milter {
        let dir = tempfile::tempdir().unwrap();
        let script = dir.path().join("milter.py");
        fs::write(&script, SCRIPTED).unwrap();
        let record = dir.path().join("record");
        let addr = free_addr();
        let mut cmd = Command::new("/usr/bin/python3");
        cmd.arg(&script).arg(addr.to_string()).arg(&record).stdout(Stdio::piped()).stderr(Stdio::inherit());
        die_with_parent(&mut cmd);
        let mut child = cmd.spawn().expect("python3 runs");
        let mut line = String::new();
        BufReader::new(child.stdout.take().unwrap()).read_line(&mut line).unwrap();
        assert_eq!(line.trim(), "ready", "the scripted milter did not start");
        Milter { child, addr, record, _dir: dir }
    }

    /// `inet:HOST:PORT`, for `milter.servers`.
    pub fn spec(&self) -> String {
        format!("inet:{}", self.addr)
    }

    /// What it saw so far.
    pub fn record(&self) -> String {
        fs::read_to_string(&self.record).unwrap_or_default()
    }
}

impl Drop for Milter {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// rspamd, started with a private configuration: its proxy worker in
/// milter mode (scanning itself) on a loopback port, no Redis, no
/// controller, DNS pointed at nothing, a TLD list of five names (the full
/// one takes a minute to compile), and the `milter_headers` module adding
/// `X-Spamd-Result`, `X-Rspamd-Queue-Id`, `X-Spam-Status` and
/// `X-Spam-Level` to every message. A `Subject:` starting `spammy` scores
/// enough for the `add header` action (`X-Spam: Yes`). Runs as `nobody`
/// (rspamd will not run as root).
pub struct Rspamd {
    child: Child,
    addr: SocketAddr,
    dir: tempfile::TempDir,
}

const RSPAMD_CONF: &str = r#".include "$CONFDIR/common.conf"
options {
    pidfile = "$RUNDIR/rspamd.pid";
    .include "$CONFDIR/options.inc"
    .include(try=true; priority=1,duplicate=merge) "$LOCAL_CONFDIR/local.d/options.inc"
}
logging {
    type = "file";
    filename = "$LOGDIR/rspamd.log";
    level = "info";
}
worker "rspamd_proxy" {
    bind_socket = "@PROXY@";
    milter = yes;
    timeout = 120s;
    count = 1;
    upstream "local" { default = yes; self_scan = yes; }
}
lua = "$RULESDIR/rspamd.lua"
.include "$CONFDIR/metrics.conf"
.include "$CONFDIR/actions.conf"
.include "$CONFDIR/groups.conf"
.include "$CONFDIR/composites.conf"
.include "$CONFDIR/statistic.conf"
.include "$CONFDIR/modules.conf"
.include "$CONFDIR/settings.conf"
"#;

impl Rspamd {
    pub fn start() -> Rspamd {
        let dir = tempfile::Builder::new().prefix("rspamd").tempdir().unwrap();
        let d = dir.path();
        let proxy = free_addr();
        fs::create_dir_all(d.join("db")).unwrap();
        fs::create_dir_all(d.join("local.d")).unwrap();
        fs::write(d.join("rspamd.conf"), RSPAMD_CONF.replace("@PROXY@", &proxy.to_string())).unwrap();
        fs::write(d.join("tld.dat"), "com\norg\nnet\ntest\nexample\n").unwrap();
        let options = format!(
            "dns {{ nameserver = [\"127.0.0.1:1\"]; timeout = 0.1s; retransmits = 0; }}\nurl_tld = \"{}\";\n",
            d.join("tld.dat").display()
        );
        fs::write(d.join("local.d/options.inc"), options).unwrap();
        fs::write(
            d.join("local.d/milter_headers.conf"),
            "use = [\"x-spamd-result\", \"x-rspamd-queue-id\", \"x-spam-level\", \"x-spam-status\"];\nskip_local = false;\nskip_authenticated = false;\n",
        )
        .unwrap();
        fs::write(
            d.join("local.d/multimap.conf"),
            "SPAMMY_SUBJECT {\n  type = \"header\";\n  header = \"Subject\";\n  regexp = true;\n  map = \"${LOCAL_CONFDIR}/subjects.map\";\n  score = 7.0;\n}\n",
        )
        .unwrap();
        fs::write(d.join("subjects.map"), "/^spammy/\n").unwrap();
        let chown = Command::new("chown").args(["-R", "nobody:nogroup"]).arg(d).status().unwrap();
        assert!(chown.success());
        let var = |name: &str, value: &Path| format!("{name}={}", value.display());
        let mut cmd = Command::new("rspamd");
        cmd.args(["-f", "-u", "nobody", "-g", "nogroup", "-c"])
            .arg(d.join("rspamd.conf"))
            .args(["--var", &var("LOCAL_CONFDIR", d), "--var", &var("DBDIR", &d.join("db"))])
            .args(["--var", &var("RUNDIR", d), "--var", &var("LOGDIR", d)])
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        die_with_parent(&mut cmd);
        let child = cmd.spawn().expect("rspamd runs (apt-get install rspamd)");
        let rspamd = Rspamd { child, addr: proxy, dir };
        let up = wait_until(Duration::from_secs(180), || std::net::TcpStream::connect(proxy).is_ok());
        assert!(up, "rspamd did not start; its log:\n{}", rspamd.log());
        rspamd
    }

    pub fn spec(&self) -> String {
        format!("inet:{}", self.addr)
    }

    pub fn log(&self) -> String {
        fs::read_to_string(self.dir.path().join("rspamd.log")).unwrap_or_default()
    }
}

impl Drop for Rspamd {
    fn drop(&mut self) {
        // The main process takes its workers down with it.
        let _ = Command::new("kill").arg(self.child.id().to_string()).status();
        let _ = wait_until(Duration::from_secs(10), || matches!(self.child.try_wait(), Ok(Some(_))));
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Whether a program is installed.
pub fn have(program: &str) -> bool {
    Command::new("sh").args(["-c", &format!("command -v {program}")]).output().is_ok_and(|o| o.status.success())
}

/// OpenDKIM in verify mode, started with a private configuration: its
/// milter socket on a loopback port, its DNS queries sent to `dns` (the
/// test's server; `Nameservers` takes `IP@PORT` with the libunbound
/// resolver Debian builds it with), `Authentication-Results` under the
/// authserv-id `authserv`.
pub struct OpenDkim {
    child: Child,
    addr: SocketAddr,
    _dir: tempfile::TempDir,
}

impl OpenDkim {
    pub fn start(dns: SocketAddr, authserv: &str) -> OpenDkim {
        let dir = tempfile::Builder::new().prefix("opendkim").tempdir().unwrap();
        let addr = free_addr();
        let conf = format!(
            "Mode v\nSocket inet:{}@{}\nBackground no\nSyslog no\nPidFile {}/opendkim.pid\nNameservers {}@{}\n\
             AuthservID {authserv}\nAlwaysAddARHeader yes\nUMask 007\n",
            addr.port(),
            addr.ip(),
            dir.path().display(),
            dns.ip(),
            dns.port(),
        );
        let path = dir.path().join("opendkim.conf");
        fs::write(&path, conf).unwrap();
        let mut cmd = Command::new("opendkim");
        cmd.arg("-f").arg("-x").arg(&path).stdout(Stdio::null()).stderr(Stdio::inherit());
        die_with_parent(&mut cmd);
        let child = cmd.spawn().expect("opendkim runs (apt-get install opendkim)");
        let up = wait_until(Duration::from_secs(30), || std::net::TcpStream::connect(addr).is_ok());
        assert!(up, "opendkim did not start");
        OpenDkim { child, addr, _dir: dir }
    }

    pub fn spec(&self) -> String {
        format!("inet:{}", self.addr)
    }
}

impl Drop for OpenDkim {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
