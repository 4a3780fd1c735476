//! A private Dovecot as an LMTP server (Debian's dovecot-lmtpd): its own
//! configuration in a temporary directory (nothing read from
//! /etc/dovecot), run in the foreground, listening for LMTP on a random
//! loopback address and on a Unix socket, storing mail in
//! `DIR/mail/USER/Maildir`. Its users are a passwd-file; anyone else is
//! refused at RCPT with 550 5.1.1. Users made "full" get a one-byte
//! quota, so Dovecot takes the message for the others and refuses it for
//! them after the final dot (552 5.2.2): a real per-recipient reply.
//!
//! Dovecot refuses to store mail as uid 0: run as root, it writes as
//! `nobody` (65534), which owns the mail directory; run as anyone else, it
//! writes as that user.

use std::fs;
use std::io::Read;
use std::net::{SocketAddr, TcpStream};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use super::{die_with_parent, free_addr, new_tempdir, signal, wait_timeout};

const DOVECOT: &str = "/usr/sbin/dovecot";
/// The account mail is stored as when the test runs as root.
const NOBODY: u32 = 65534;

/// One Dovecot master process and its children; dropping it stops them.
pub struct Dovecot {
    dir: tempfile::TempDir,
    child: Child,
    addr: SocketAddr,
}

impl Dovecot {
    /// Dovecot knowing `users` (full addresses), `full` ones over quota.
    pub fn start(users: &[&str], full: &[&str]) -> Dovecot {
        let dir = new_tempdir("posthorn-dovecot-");
        // Dovecot's processes (the mail user among them) walk into it.
        fs::set_permissions(dir.path(), fs::Permissions::from_mode(0o755)).unwrap();
        let base = dir.path();
        let mail = base.join("mail");
        fs::create_dir(&mail).unwrap();
        let euid = rustix::process::geteuid();
        // Dovecot's own processes run as the internal user and group; as
        // anyone but root, that must be the test's own account.
        let (uid, gid, user, group) = if euid.is_root() {
            std::os::unix::fs::chown(&mail, Some(NOBODY), Some(NOBODY)).expect("chown the mail directory");
            (NOBODY, NOBODY, "root".to_string(), "root".to_string())
        } else {
            (euid.as_raw(), rustix::process::getegid().as_raw(), id("-un"), id("-gn"))
        };
        let mut passwd = String::new();
        for user in users {
            passwd.push_str(&format!("{user}:::::::\n"));
        }
        for user in full {
            passwd.push_str(&format!("{user}:::::::userdb_quota_rule=*:storage=1B\n"));
        }
        fs::write(base.join("users"), passwd).unwrap();
        let addr = free_addr();
        let b = base.display();
        let conf = format!(
            "base_dir = {b}/run\n\
             state_dir = {b}/state\n\
             log_path = {b}/dovecot.log\n\
             instance_name = posthorn-test-{port}\n\
             protocols = lmtp\n\
             listen = {ip}\n\
             ssl = no\n\
             default_internal_user = {user}\n\
             default_internal_group = {group}\n\
             default_login_user = {user}\n\
             first_valid_uid = 1\n\
             mail_location = maildir:{b}/mail/%n/Maildir\n\
             mail_plugins = quota\n\
             plugin {{\n  quota = maildir:User quota\n}}\n\
             passdb {{\n  driver = passwd-file\n  args = {b}/users\n}}\n\
             userdb {{\n  driver = passwd-file\n  args = {b}/users\n  \
               default_fields = uid={uid} gid={gid} home={b}/mail/%n\n}}\n\
             service lmtp {{\n  \
               inet_listener lmtp {{\n    address = {ip}\n    port = {port}\n  }}\n  \
               unix_listener lmtp {{\n    path = {b}/lmtp\n    mode = 0666\n  }}\n}}\n",
            ip = addr.ip(),
            port = addr.port(),
        );
        let conf_path = base.join("dovecot.conf");
        fs::write(&conf_path, conf).unwrap();
        let mut cmd = Command::new(DOVECOT);
        cmd.arg("-F").arg("-c").arg(&conf_path).stdin(Stdio::null()).stdout(Stdio::null()).stderr(Stdio::piped());
        die_with_parent(&mut cmd);
        let child = cmd.spawn().expect("start /usr/sbin/dovecot (package dovecot-lmtpd)");
        let mut d = Dovecot { dir, child, addr };
        let deadline = Instant::now() + Duration::from_secs(20);
        while TcpStream::connect(addr).is_err() || !d.socket().exists() {
            if let Ok(Some(status)) = d.child.try_wait() {
                let mut err = String::new();
                let _ = d.child.stderr.take().map(|mut e| e.read_to_string(&mut err));
                panic!("dovecot exited at start: {status}: {err}{}", d.log());
            }
            assert!(Instant::now() < deadline, "dovecot not listening on {addr}: {}", d.log());
            std::thread::sleep(Duration::from_millis(20));
        }
        d
    }

    /// The LMTP listener on loopback.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The LMTP Unix socket.
    pub fn socket(&self) -> PathBuf {
        self.dir.path().join("lmtp")
    }

    /// Dovecot's own log.
    pub fn log(&self) -> String {
        fs::read_to_string(self.dir.path().join("dovecot.log")).unwrap_or_default()
    }

    /// Every message in the INBOX of `user` (the local part), as Dovecot
    /// wrote them (`new/` and `cur/`), in no particular order.
    pub fn messages(&self, user: &str) -> Vec<Vec<u8>> {
        let maildir = self.dir.path().join("mail").join(user).join("Maildir");
        ["new", "cur"].iter().flat_map(|sub| files_in(&maildir.join(sub))).filter_map(|p| fs::read(p).ok()).collect()
    }

    /// Waits up to `timeout` for `user` to hold `n` messages, then returns
    /// what is there.
    pub fn wait_messages(&self, user: &str, n: usize, timeout: Duration) -> Vec<Vec<u8>> {
        super::wait_until(timeout, || self.messages(user).len() >= n);
        self.messages(user)
    }
}

impl Drop for Dovecot {
    fn drop(&mut self) {
        // SIGTERM lets the master stop its children; SIGKILL if it hangs.
        signal(&self.child, rustix::process::Signal::TERM);
        if wait_timeout(&mut self.child, Duration::from_secs(5)).is_none() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

fn files_in(dir: &Path) -> Vec<PathBuf> {
    fs::read_dir(dir).map(|rd| rd.filter_map(|e| e.ok()).map(|e| e.path()).collect()).unwrap_or_default()
}

/// The test's own user (`-un`) or group (`-gn`) name, for Dovecot's
/// internal user.
fn id(flag: &str) -> String {
    let out = Command::new("id").arg(flag).output().expect("run id");
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}
