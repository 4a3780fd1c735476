//! A small SMTP content filter in Python, the kind an admin plugs in
//! after the queue (amavisd-new's role): the filter tests and the trace
//! tests run it between a hub and its reinjection listener.

use std::fs;
use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};

use super::die_with_parent;

/// A small SMTP content filter: one message per connection or several,
/// `X-Filtered: yes` prepended, sent on with smtplib to the reinjection
/// address; 250 only once the hub took it back. Recipients named
/// `tempfail@...` get 451 at the end of DATA, `reject@...` 554.
pub const SMTP_FILTER: &str = r#"
import smtplib, socketserver, sys

listen = (sys.argv[1], int(sys.argv[2]))
reinject = (sys.argv[3], int(sys.argv[4]))

def path(cmd):
    return cmd[cmd.index("<") + 1:cmd.index(">")]

class Handler(socketserver.StreamRequestHandler):
    def reply(self, line):
        self.wfile.write((line + "\r\n").encode())
        self.wfile.flush()

    def handle(self):
        self.reply("220 filter.test ESMTP test filter")
        sender, rcpts = "", []
        while True:
            line = self.rfile.readline()
            if not line:
                return
            cmd = line.decode("utf-8", "replace").rstrip("\r\n")
            verb = cmd[:4].upper()
            if verb in ("EHLO", "HELO"):
                self.reply("250 filter.test")
            elif verb == "MAIL":
                sender, rcpts = path(cmd), []
                self.reply("250 2.1.0 Ok")
            elif verb == "RCPT":
                rcpts.append(path(cmd))
                self.reply("250 2.1.5 Ok")
            elif verb == "DATA":
                self.reply("354 End data with <CR><LF>.<CR><LF>")
                lines = []
                while True:
                    l = self.rfile.readline()
                    if not l or l == b".\r\n":
                        break
                    if l.startswith(b"."):
                        l = l[1:]
                    lines.append(l)
                if any(r.startswith("tempfail@") for r in rcpts):
                    self.reply("451 4.3.0 filter busy")
                    continue
                if any(r.startswith("reject@") for r in rcpts):
                    self.reply("554 5.7.1 rejected by content filter")
                    continue
                msg = b"X-Filtered: yes\r\n" + b"".join(lines)
                try:
                    with smtplib.SMTP(reinject[0], reinject[1], timeout=30) as s:
                        s.sendmail(sender, rcpts, msg)
                    self.reply("250 2.0.0 Ok: filtered")
                except Exception as e:
                    print("reinjection failed: %s" % e, file=sys.stderr, flush=True)
                    self.reply("451 4.3.0 reinjection failed")
            elif verb == "RSET":
                sender, rcpts = "", []
                self.reply("250 2.0.0 Ok")
            elif verb == "NOOP":
                self.reply("250 2.0.0 Ok")
            elif verb == "QUIT":
                self.reply("221 2.0.0 Bye")
                return
            else:
                self.reply("502 5.5.2 Unknown command")

class Server(socketserver.ThreadingTCPServer):
    allow_reuse_address = True
    daemon_threads = True

with Server(listen, Handler) as server:
    print("ready", flush=True)
    server.serve_forever()
"#;

/// The SMTP filter process, listening on a fixed address so that it can
/// be stopped and started again where the hub expects it.
pub struct SmtpFilter {
    script: PathBuf,
    addr: SocketAddr,
    reinject: SocketAddr,
    child: Option<Child>,
}

impl SmtpFilter {
    pub fn new(dir: &Path, addr: SocketAddr, reinject: SocketAddr) -> SmtpFilter {
        let script = dir.join("filter.py");
        fs::write(&script, SMTP_FILTER).unwrap();
        SmtpFilter { script, addr, reinject, child: None }
    }

    pub fn start(&mut self) {
        let mut cmd = Command::new("python3");
        cmd.arg(&self.script)
            .args([self.addr.ip().to_string(), self.addr.port().to_string()])
            .args([self.reinject.ip().to_string(), self.reinject.port().to_string()])
            .stdin(Stdio::null())
            .stdout(Stdio::piped());
        die_with_parent(&mut cmd);
        let mut child = cmd.spawn().expect("python3 runs");
        let mut line = String::new();
        BufReader::new(child.stdout.take().unwrap()).read_line(&mut line).unwrap();
        assert_eq!(line.trim(), "ready", "the filter did not start");
        self.child = Some(child);
    }

    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl Drop for SmtpFilter {
    fn drop(&mut self) {
        self.stop();
    }
}
