//! SMTP clients for the tests: Python's smtplib (a real, independent
//! client) and a small raw-TCP client for dialogs and load loops.

use std::io::{self, BufRead, BufReader, Write};
use std::net::{SocketAddr, TcpStream};
use std::process::Command;
use std::time::Duration;

use super::{COMMAND_TIMEOUT, run_with_timeout};

/// The Python program behind [`smtplib_send`]. It reads one JSON job on
/// stdin, so no address or text ever passes through a shell or argv
/// parsing, and prints the DATA reply as JSON on success.
const SMTPLIB_SCRIPT: &str = r#"
import json, re, smtplib, sys
job = json.load(sys.stdin)
# smtplib fixes line ends only for str messages; send bytes with CRLF.
body = re.sub(rb"\r\n|\r|\n", b"\r\n", job["body"].encode("utf-8"))
try:
    s = smtplib.SMTP(job["host"], job["port"], local_hostname="smtplib.test", timeout=30)
    s.ehlo()
    code, msg = s.mail(job["from"])
    if code != 250:
        raise Exception("MAIL %d %s" % (code, msg.decode(errors="replace")))
    ok = 0
    for rcpt in job["to"]:
        code, msg = s.rcpt(rcpt)
        if code in (250, 251):
            ok += 1
        else:
            print("RCPT %s: %d %s" % (rcpt, code, msg.decode(errors="replace")), file=sys.stderr)
    if ok == 0:
        raise Exception("no recipient accepted")
    code, msg = s.data(body)
    if code != 250:
        raise Exception("DATA %d %s" % (code, msg.decode(errors="replace")))
    s.quit()
    print(json.dumps({"code": code, "text": msg.decode(errors="replace")}))
except Exception as e:
    print("%s: %s" % (type(e).__name__, e), file=sys.stderr)
    sys.exit(1)
"#;

/// Submits `body` (a whole RFC 5322 message, LF or CRLF line ends; sent
/// with CRLF and dot-stuffed) with Python's smtplib. `Err` holds smtplib's error.
pub fn smtplib_send(addr: SocketAddr, from: &str, to: &[&str], body: &str) -> Result<(), String> {
    smtplib_transaction(addr, from, to, body).map(|_| ())
}

/// [`smtplib_send`] returning the server's reply to the end of DATA
/// (code and text, e.g. `(250, "2.0.0 Ok: queued as ...")`).
pub fn smtplib_transaction(addr: SocketAddr, from: &str, to: &[&str], body: &str) -> Result<(u16, String), String> {
    let job = serde_json::json!({
        "host": addr.ip().to_string(),
        "port": addr.port(),
        "from": from,
        "to": to,
        "body": body,
    });
    let mut cmd = Command::new("python3");
    cmd.arg("-c").arg(SMTPLIB_SCRIPT);
    let out = run_with_timeout(cmd, job.to_string().as_bytes(), COMMAND_TIMEOUT);
    if !out.status.success() {
        return Err(String::from_utf8_lossy(&out.stderr).trim().to_string());
    }
    let reply: serde_json::Value =
        serde_json::from_slice(&out.stdout).map_err(|e| format!("smtplib output: {e}: {:?}", out.stdout))?;
    Ok((reply["code"].as_u64().unwrap_or(0) as u16, reply["text"].as_str().unwrap_or("").to_string()))
}

/// Runs swaks against `addr` with extra `args` (`--from`, `--to`,
/// `--header`, `--body`, `--pipeline`, ...); quiet unless it fails.
/// Arguments go to swaks as argv, never through a shell.
pub fn swaks(addr: SocketAddr, args: &[&str]) -> std::process::Output {
    let mut cmd = Command::new("swaks");
    cmd.arg("--server").arg(addr.ip().to_string()).arg("--port").arg(addr.port().to_string());
    cmd.args(["--helo", "swaks.test", "--timeout", "30"]).args(args);
    run_with_timeout(cmd, b"", COMMAND_TIMEOUT)
}

/// A reply: code and the text of all its lines joined by "\n".
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reply {
    pub code: u16,
    pub text: String,
}

impl Reply {
    pub fn is_positive(&self) -> bool {
        (200..400).contains(&self.code)
    }
}

impl std::fmt::Display for Reply {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} {}", self.code, self.text)
    }
}

/// A plain SMTP client over TCP, one command at a time, for tests that
/// need exact control (dialogs, load loops, crash tests).
pub struct RawSmtp {
    reader: BufReader<TcpStream>,
    writer: TcpStream,
    /// The greeting.
    pub banner: Reply,
}

impl RawSmtp {
    /// Connects (10 s), reads the greeting; 30 s per reply after that.
    pub fn connect(addr: SocketAddr) -> io::Result<RawSmtp> {
        let stream = TcpStream::connect_timeout(&addr, Duration::from_secs(10))?;
        stream.set_read_timeout(Some(Duration::from_secs(30)))?;
        stream.set_write_timeout(Some(Duration::from_secs(30)))?;
        let writer = stream.try_clone()?;
        let mut reader = BufReader::new(stream);
        let banner = read_reply(&mut reader)?;
        Ok(RawSmtp { reader, writer, banner })
    }

    /// Sends `line` (CRLF added) and reads the reply.
    pub fn cmd(&mut self, line: &str) -> io::Result<Reply> {
        self.writer.write_all(format!("{line}\r\n").as_bytes())?;
        self.read()
    }

    /// Sends raw bytes as they are (no CRLF added, no reply read).
    pub fn send_raw(&mut self, bytes: &[u8]) -> io::Result<()> {
        self.writer.write_all(bytes)
    }

    pub fn read(&mut self) -> io::Result<Reply> {
        read_reply(&mut self.reader)
    }

    /// EHLO, failing on a negative reply.
    pub fn ehlo(&mut self, name: &str) -> io::Result<Reply> {
        expect(self.cmd(&format!("EHLO {name}"))?, 250)
    }

    /// One transaction: MAIL, RCPT each, DATA, the message (LF or CRLF line
    /// ends, dot-stuffed here), and the final reply, whatever its code.
    /// Fails (io error) when MAIL, every RCPT, or DATA are refused.
    pub fn send(&mut self, from: &str, to: &[&str], message: &[u8]) -> io::Result<Reply> {
        expect(self.cmd(&format!("MAIL FROM:<{from}>"))?, 250)?;
        let mut accepted = 0;
        for rcpt in to {
            if self.cmd(&format!("RCPT TO:<{rcpt}>"))?.code / 100 == 2 {
                accepted += 1;
            }
        }
        if accepted == 0 {
            self.cmd("RSET")?;
            return Err(io::Error::other("no recipient accepted"));
        }
        expect(self.cmd("DATA")?, 354)?;
        self.writer.write_all(&dot_stuff(message))?;
        self.writer.write_all(b".\r\n")?;
        self.read()
    }

    pub fn quit(mut self) -> io::Result<()> {
        self.cmd("QUIT").map(|_| ())
    }
}

fn expect(reply: Reply, code: u16) -> io::Result<Reply> {
    if reply.code == code { Ok(reply) } else { Err(io::Error::other(format!("expected {code}, got {reply}"))) }
}

fn read_reply(reader: &mut BufReader<TcpStream>) -> io::Result<Reply> {
    let mut lines = Vec::new();
    loop {
        let mut line = String::new();
        if reader.read_line(&mut line)? == 0 {
            return Err(io::Error::new(io::ErrorKind::UnexpectedEof, "connection closed"));
        }
        let line = line.trim_end_matches(['\r', '\n']);
        if line.len() < 3 {
            return Err(io::Error::other(format!("malformed reply line {line:?}")));
        }
        let code: u16 = line[..3].parse().map_err(|_| io::Error::other(format!("malformed reply line {line:?}")))?;
        lines.push(line.get(4..).unwrap_or("").to_string());
        if line.as_bytes().get(3) != Some(&b'-') {
            return Ok(Reply { code, text: lines.join("\n") });
        }
    }
}

/// `message` with CRLF line ends, lines starting with "." doubled, and a
/// final CRLF ensured: ready to send after DATA, before ".\r\n".
pub fn dot_stuff(message: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(message.len() + 64);
    let text = message.strip_suffix(b"\n").unwrap_or(message);
    for line in text.split(|&b| b == b'\n') {
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        if line.first() == Some(&b'.') {
            out.push(b'.');
        }
        out.extend_from_slice(line);
        out.extend_from_slice(b"\r\n");
    }
    out
}

/// A small message with the given headers and body; `Date:` and
/// `Message-ID:` are added when missing. Lines end with LF.
pub fn message(headers: &[(&str, &str)], body: &str) -> String {
    let mut out = String::new();
    let has = |n: &str| headers.iter().any(|(h, _)| h.eq_ignore_ascii_case(n));
    for (h, v) in headers {
        out.push_str(&format!("{h}: {v}\n"));
    }
    if !has("Date") {
        out.push_str("Date: Wed, 25 Nov 2026 12:00:00 +0000\n");
    }
    if !has("Message-ID") {
        out.push_str(&format!("Message-ID: <{}@harness.test>\n", super::unique_name("msg")));
    }
    out.push('\n');
    out.push_str(body);
    if !body.ends_with('\n') {
        out.push('\n');
    }
    out
}
