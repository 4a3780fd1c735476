//! Peers for forwarded mail: [`Postsrsd`], Debian's postsrsd run in the
//! foreground with a private secret file and its two Postfix TCP tables
//! (forward and reverse) on loopback ports the test chose; and [`spf`],
//! an SPF verdict from python3-spf asked of the test DNS server.

use std::io::{BufRead, BufReader, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use super::{die_with_parent, free_addr, run_with_timeout};

/// One postsrsd process; dropping it kills it.
pub struct Postsrsd {
    child: Child,
    forward: SocketAddr,
    reverse: SocketAddr,
}

impl Postsrsd {
    /// postsrsd for `domain`, signing with the secrets in `secret`.
    pub fn start(domain: &str, secret: &Path) -> Postsrsd {
        let forward = free_addr();
        let reverse = SocketAddr::new(forward.ip(), free_addr().port());
        let mut cmd = Command::new("/usr/sbin/postsrsd");
        cmd.arg(format!("-s{}", secret.display()))
            .arg(format!("-d{domain}"))
            .arg(format!("-l{}", forward.ip()))
            .arg(format!("-f{}", forward.port()))
            .arg(format!("-r{}", reverse.port()))
            .arg("-4")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        die_with_parent(&mut cmd);
        let child = cmd.spawn().expect("start /usr/sbin/postsrsd (package postsrsd)");
        let mut p = Postsrsd { child, forward, reverse };
        let deadline = Instant::now() + Duration::from_secs(10);
        while TcpStream::connect(p.reverse).is_err() || TcpStream::connect(p.forward).is_err() {
            if let Ok(Some(status)) = p.child.try_wait() {
                panic!("postsrsd exited at start: {status}");
            }
            assert!(Instant::now() < deadline, "postsrsd not listening on {} and {}", p.forward, p.reverse);
            std::thread::sleep(Duration::from_millis(20));
        }
        p
    }

    /// postsrsd's forward table: the rewritten sender, or its error reply.
    pub fn forward(&self, address: &str) -> Result<String, String> {
        table_get(self.forward, address)
    }

    /// postsrsd's reverse table: the original address, or its error reply.
    pub fn reverse(&self, address: &str) -> Result<String, String> {
        table_get(self.reverse, address)
    }
}

impl Drop for Postsrsd {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// One Postfix tcp_table(5) lookup: `get KEY` answered `200 VALUE` or an
/// error code; both sides %-encode what is not printable.
fn table_get(addr: SocketAddr, key: &str) -> Result<String, String> {
    let mut s = TcpStream::connect(addr).map_err(|e| format!("connect {addr}: {e}"))?;
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    s.write_all(format!("get {}\n", percent_encode(key)).as_bytes()).map_err(|e| e.to_string())?;
    let mut line = String::new();
    BufReader::new(s).read_line(&mut line).map_err(|e| e.to_string())?;
    let line = line.trim_end();
    match line.split_once(' ') {
        Some(("200", value)) => Ok(percent_decode(value)),
        _ => Err(line.to_string()),
    }
}

fn percent_encode(s: &str) -> String {
    s.bytes()
        .map(|b| if b.is_ascii_graphic() && b != b'%' { (b as char).to_string() } else { format!("%{b:02X}") })
        .collect()
}

fn percent_decode(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::new();
    let mut i = 0;
    while i < b.len() {
        let hex = (b[i] == b'%' && i + 2 < b.len()).then(|| u8::from_str_radix(&s[i + 1..i + 3], 16).ok()).flatten();
        if let Some(v) = hex {
            out.push(v);
            i += 3;
            continue;
        }
        out.push(b[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// python3-spf's verdict (`pass`, `fail`, `softfail`, ...) for mail from
/// `sender` sent by `ip` after `helo`, with every query sent to `dns`.
pub fn spf(dns: SocketAddr, ip: &str, sender: &str, helo: &str) -> String {
    let script = "import sys, DNS, spf\n\
                  DNS.defaults['server'] = [sys.argv[1]]\n\
                  DNS.defaults['port'] = int(sys.argv[2])\n\
                  print(spf.check2(i=sys.argv[3], s=sys.argv[4], h=sys.argv[5])[0])\n";
    let mut cmd = Command::new("/usr/bin/python3");
    cmd.args(["-c", script, &dns.ip().to_string(), &dns.port().to_string(), ip, sender, helo]);
    let out = run_with_timeout(cmd, b"", Duration::from_secs(30));
    assert!(out.status.success(), "python3-spf (package python3-spf): {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}
