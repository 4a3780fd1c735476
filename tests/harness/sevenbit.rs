//! A next hop that does not offer 8BITMIME (RFC 6152), for the tests of
//! 8-bit mail that must be converted on the way; the scripted server and
//! the sink always offer it. Also a submitter that says BODY=8BITMIME.

use std::io::{BufRead, BufReader, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::process::Command;
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use super::{run_with_timeout, secs};

/// One message as the 7-bit smarthost received it: the MAIL line and the
/// message, dot-unstuffed.
pub type Received = (String, Vec<u8>);

/// A smarthost offering PIPELINING and SIZE but not 8BITMIME, accepting
/// everything.
pub struct SevenBitHost {
    pub addr: SocketAddr,
    got: Arc<Mutex<Vec<Received>>>,
}

impl SevenBitHost {
    pub fn start() -> SevenBitHost {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let got = Arc::new(Mutex::new(Vec::new()));
        let record = got.clone();
        thread::spawn(move || {
            for stream in listener.incoming().flatten() {
                let record = record.clone();
                thread::spawn(move || {
                    let _ = session(stream, &record);
                });
            }
        });
        SevenBitHost { addr, got }
    }

    /// Waits until a message from `sender` has arrived.
    pub fn wait_from(&self, sender: &str, timeout: Duration) -> Option<Received> {
        let until = Instant::now() + timeout;
        let wanted = format!("MAIL FROM:<{sender}>");
        while Instant::now() < until {
            if let Some(r) = self.got.lock().unwrap().iter().find(|(mail, _)| mail.starts_with(&wanted)) {
                return Some(r.clone());
            }
            thread::sleep(Duration::from_millis(50));
        }
        None
    }
}

fn session(stream: TcpStream, record: &Mutex<Vec<Received>>) -> std::io::Result<()> {
    stream.set_read_timeout(Some(Duration::from_secs(60)))?;
    let mut out = stream.try_clone()?;
    let mut input = BufReader::new(stream);
    out.write_all(b"220 seven.test ESMTP\r\n")?;
    let mut mail = String::new();
    loop {
        let mut line = String::new();
        if input.read_line(&mut line)? == 0 {
            return Ok(());
        }
        let upper = line.to_ascii_uppercase();
        let reply: &[u8] = match upper.get(..4).unwrap_or("") {
            "EHLO" => b"250-seven.test\r\n250-PIPELINING\r\n250 SIZE 10000000\r\n",
            "MAIL" => {
                mail = line.trim_end().to_string();
                b"250 2.1.0 Ok\r\n"
            }
            "RCPT" | "RSET" | "NOOP" => b"250 2.0.0 Ok\r\n",
            "QUIT" => {
                out.write_all(b"221 2.0.0 Bye\r\n")?;
                return Ok(());
            }
            "DATA" => {
                out.write_all(b"354 go ahead\r\n")?;
                let mut message = Vec::new();
                loop {
                    let mut line = Vec::new();
                    if input.read_until(b'\n', &mut line)? == 0 {
                        return Ok(());
                    }
                    if line == b".\r\n" {
                        break;
                    }
                    message.extend_from_slice(line.strip_prefix(b".").unwrap_or(&line));
                }
                record.lock().unwrap().push((mail.clone(), message));
                b"250 2.0.0 Ok: queued\r\n"
            }
            _ => b"502 5.5.2 not recognized\r\n",
        };
        out.write_all(reply)?;
    }
}

/// Submits `message` with smtplib and BODY=8BITMIME; panics on failure.
pub fn submit_8bitmime(addr: SocketAddr, sender: &str, rcpt: &str, message: &[u8]) {
    let script = "import smtplib, sys\n\
        host, port, sender, rcpt = sys.argv[1:5]\n\
        s = smtplib.SMTP(host, int(port), timeout=30)\n\
        s.ehlo()\n\
        s.sendmail(sender, [rcpt], sys.stdin.buffer.read(), mail_options=['BODY=8BITMIME'])\n\
        s.quit()\n";
    let mut cmd = Command::new("python3");
    cmd.args(["-c", script, &addr.ip().to_string(), &addr.port().to_string(), sender, rcpt]);
    let out = run_with_timeout(cmd, message, secs(30));
    assert!(out.status.success(), "smtplib: {}", String::from_utf8_lossy(&out.stderr));
}
