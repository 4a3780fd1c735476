//! Real policy services (Postfix's SMTPD_POLICY_README protocol) for the
//! end-to-end tests, each started by the test on a loopback port it chose,
//! with private state and configuration, never the system's:
//!
//! - [`Postgrey`]: the Debian `postgrey` daemon, its database in a
//!   temporary directory, a short `--delay`, no whitelists;
//! - [`PolicydSpf`]: `policyd-spf` (postfix-policyd-spf-python), which
//!   reads one client's requests on stdin, run once per connection behind
//!   a small Python listener, the way Postfix's spawn(8) runs it. Its DNS
//!   library (pydns, `DNS.defaults`) is pointed at the test's DNS server
//!   before the engine starts, so /etc/resolv.conf is never read for it.

use super::{die_with_parent, free_addr, wait_until};
use std::fs;
use std::net::{SocketAddr, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

/// Whether `program` is installed; tests skip (with a line saying so)
/// when it is not, as the Postfix tests do.
pub fn have(program: &str, test: &str) -> bool {
    let found =
        std::env::var_os("PATH").map(|p| std::env::split_paths(&p).any(|d| d.join(program).is_file())).unwrap_or(false)
            || ["/usr/sbin", "/usr/bin"].iter().any(|d| std::path::Path::new(d).join(program).is_file());
    if !found {
        eprintln!("{test}: skipped, {program} is not installed (.ci/run installs it)");
    }
    found
}

fn wait_listening(addr: SocketAddr, child: &mut Child, what: &str) {
    let up = wait_until(Duration::from_secs(20), || {
        TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_ok()
            || child.try_wait().ok().flatten().is_some()
    });
    assert!(up && child.try_wait().ok().flatten().is_none(), "{what} did not start listening on {addr}");
}

/// A `postgrey` process on its own port and database.
pub struct Postgrey {
    child: Child,
    addr: SocketAddr,
    _dir: tempfile::TempDir,
}

impl Postgrey {
    /// Greylists for `delay` seconds; every client and recipient is
    /// subject to it (empty whitelists), and the auto-whitelist is off.
    pub fn start(delay: u32) -> Postgrey {
        let dir = tempfile::tempdir().expect("temporary directory");
        let addr = free_addr();
        let empty = dir.path().join("empty");
        fs::write(&empty, "").unwrap();
        let mut cmd = Command::new("postgrey");
        cmd.arg(format!("--inet={addr}"))
            .arg(format!("--dbdir={}", dir.path().display()))
            .arg(format!("--pidfile={}", dir.path().join("postgrey.pid").display()))
            .arg(format!("--delay={delay}"))
            .arg(format!("--whitelist-clients={}", empty.display()))
            .arg(format!("--whitelist-recipients={}", empty.display()))
            .arg("--auto-whitelist-clients=0")
            .arg("--user=root")
            .arg("--group=root")
            .arg("--hostname=grey.test")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        die_with_parent(&mut cmd);
        let mut child = cmd.spawn().expect("spawn postgrey");
        wait_listening(addr, &mut child, "postgrey");
        Postgrey { child, addr, _dir: dir }
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }
}

impl Drop for Postgrey {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The listener that runs `policyd-spf` once per connection.
const SPAWNER: &str = r#"
import os, signal, socket, sys
host, port, dns_host, dns_port, conf = sys.argv[1], int(sys.argv[2]), sys.argv[3], int(sys.argv[4]), sys.argv[5]
signal.signal(signal.SIGCHLD, signal.SIG_IGN)
listener = socket.socket()
listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
listener.bind((host, port))
listener.listen(64)
while True:
    conn, _ = listener.accept()
    if os.fork() == 0:
        listener.close()
        os.dup2(conn.fileno(), 0)
        os.dup2(conn.fileno(), 1)
        conn.close()
        import spf, DNS
        DNS.defaults['server'] = [dns_host]
        DNS.defaults['port'] = dns_port
        DNS.defaults['timeout'] = 5
        sys.argv = ['policyd-spf', conf]
        from spf_engine.policyd_spf import main
        try:
            main()
        finally:
            os._exit(0)
    conn.close()
"#;

/// `policyd-spf` behind a spawn-per-connection listener.
pub struct PolicydSpf {
    child: Child,
    addr: SocketAddr,
    _dir: tempfile::TempDir,
}

impl PolicydSpf {
    /// Resolves through `dns`; rejects SPF `fail` for MAIL FROM and HELO
    /// and checks every client, loopback included (the shipped
    /// configuration skips 127.0.0.0/8, where the tests live).
    pub fn start(dns: SocketAddr) -> PolicydSpf {
        let dir = tempfile::tempdir().expect("temporary directory");
        let conf: PathBuf = dir.path().join("policyd-spf.conf");
        fs::write(
            &conf,
            "debugLevel = 1\nTestOnly = 1\nHELO_reject = Fail\nMail_From_reject = Fail\n\
             PermError_reject = False\nTempError_Defer = False\nskip_addresses = 192.0.2.255/32\n",
        )
        .unwrap();
        let addr = free_addr();
        let mut cmd = Command::new("/usr/bin/python3");
        cmd.arg("-c")
            .arg(SPAWNER)
            .arg(addr.ip().to_string())
            .arg(addr.port().to_string())
            .arg(dns.ip().to_string())
            .arg(dns.port().to_string())
            .arg(&conf)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        die_with_parent(&mut cmd);
        let mut child = cmd.spawn().expect("spawn the policyd-spf listener");
        wait_listening(addr, &mut child, "policyd-spf");
        PolicydSpf { child, addr, _dir: dir }
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }
}

impl Drop for PolicydSpf {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
