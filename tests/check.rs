//! `posthorn check` as the gate before start (issue 15, item 4): what
//! systemd's `ExecStartPre` and the package's postinst run.
//!
//! 1. A healthy install passes before the first start (and check makes
//!    no spool), while the daemon runs (its own ports are no problem), and
//!    after it stopped; as root and as the spool's owner.
//! 2. `--fix` makes the spool as the daemon would (owner, modes, maildrop
//!    3733), repairs a broken mode, and a daemon then starts on it and
//!    delivers.
//! 3. Each thing `serve` would refuse fails the gate with its sentence:
//!    a missing certificate (serve refuses the same file), a key the
//!    account cannot read, missing map files, a port another program
//!    holds, a spool of another account, a Maildir root the account cannot
//!    write, a DKIM key it cannot read, a configuration it cannot read
//!    again on reload.
//! 4. Warnings do not fail it: the package's default, a satellite without
//!    smarthosts delivering local mail to Maildirs, passes and delivers.
//!
//! Every test needs root (CI runs as root): the daemon's account is
//! `nobody`, and root's check reads the files as that account.

mod harness;

use harness::*;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

const NOBODY: u32 = 65534;

fn skipped() -> bool {
    let root = rustix::process::geteuid().is_root();
    if !root {
        eprintln!("skipped: these tests check as root for the account nobody; run them as root");
    }
    !root
}

/// A configuration in a directory of its own (mode 0711, so that the
/// account reaches what is in it), never started unless a test says so.
struct Site {
    dir: tempfile::TempDir,
    config: PathBuf,
}

impl Site {
    /// `user = "nobody"`, the spool in the directory, then `body`.
    fn new(body: &str) -> Site {
        let dir = tempfile::Builder::new().prefix("posthorn-check-").tempdir().unwrap();
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o711)).unwrap();
        let config = dir.path().join("posthorn.toml");
        Site { dir, config }.write(body)
    }

    /// Rewrites the configuration with `body` after the fixed keys.
    fn write(self, body: &str) -> Site {
        let user = if body.contains("user = ") { "" } else { "user = \"nobody\"\n" };
        let text = format!(
            "{user}spool = {}\nhostname = \"check.test\"\n{body}",
            toml_str(&self.spool().display().to_string())
        );
        std::fs::write(&self.config, text).unwrap();
        self
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    fn spool(&self) -> PathBuf {
        self.path("spool")
    }

    fn run(&self, as_nobody: bool, args: &[&str]) -> Output {
        self.run_with(as_nobody, args, b"")
    }

    fn run_with(&self, as_nobody: bool, args: &[&str], stdin: &[u8]) -> Output {
        let mut cmd = if as_nobody {
            let mut cmd = Command::new("setpriv");
            cmd.args(["--reuid=65534", "--regid=65534", "--clear-groups", "--", BIN]);
            cmd
        } else {
            Command::new(BIN)
        };
        cmd.args(args).env("POSTHORN_CONFIG", &self.config).current_dir("/");
        run_with_timeout(cmd, stdin, secs(60))
    }

    /// `posthorn check ARGS` as root: the exit code and everything said.
    fn check(&self, args: &[&str]) -> (Option<i32>, String) {
        let out = self.run(false, &[&["check"], args].concat());
        (out.status.code(), text(&out))
    }

    /// `posthorn check` as the account the daemon runs as.
    fn check_as_nobody(&self) -> (Option<i32>, String) {
        let out = self.run(true, &["check"]);
        (out.status.code(), text(&out))
    }

    fn postfix(&self, command: &str) {
        let out = self.run(false, &["postfix", command]);
        let log = std::fs::read_to_string(self.spool().join("posthorn.log")).unwrap_or_default();
        assert!(out.status.success(), "postfix {command}: {}\nlog:\n{log}", text(&out));
    }
}

impl Drop for Site {
    fn drop(&mut self) {
        if self.spool().join("control.sock").exists() {
            let _ = self.run(false, &["postfix", "stop"]);
        }
    }
}

fn text(out: &Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr)
}

fn satellite(smarthost: std::net::SocketAddr, listen: std::net::SocketAddr) -> String {
    format!(
        "role = \"satellite\"\n\n[smtp]\nlisten = [\"{listen}\"]\n\n[relay]\nsmarthosts = [\"{smarthost}\"]\ntls = \"none\"\n"
    )
}

fn mode(path: &Path) -> (u32, u32) {
    let meta = std::fs::metadata(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    (meta.uid(), meta.mode() & 0o7777)
}

fn chown(path: &Path, uid: u32) {
    std::os::unix::fs::chown(path, Some(uid), Some(uid)).unwrap();
}

/// `sendmail -f app@check.test RCPT` as root, a short message on stdin.
fn send(site: &Site, rcpt: &str) {
    let message = format!("From: app@check.test\nTo: {rcpt}\nSubject: through the gate\n\nbody\n");
    let out = site.run_with(false, &["sendmail", "-f", "app@check.test", rcpt], message.as_bytes());
    assert!(out.status.success(), "sendmail: {}", text(&out));
}

// 1 ------------------------------------------------------------------------

#[test]
fn a_healthy_install_passes_before_the_first_start_while_running_and_after() {
    if skipped() {
        return;
    }
    let sink = Sink::start();
    let site = Site::new(&satellite(sink.addr(), free_addr()));
    let (code, said) = site.check(&[]);
    assert_eq!(code, Some(0), "{said}");
    assert!(said.contains("does not exist yet: serve creates it at first start"), "{said}");
    assert!(!site.spool().exists(), "check made the spool without --fix");
    let (code, said) = site.check_as_nobody();
    assert_eq!(code, Some(0), "as the account: {said}");
    assert!(!site.spool().exists(), "check made the spool without --fix");

    site.postfix("start");
    for (who, (code, said)) in [("root", site.check(&[])), ("nobody", site.check_as_nobody())] {
        assert_eq!(code, Some(0), "{who}, daemon running (its own port): {said}");
        assert!(said.contains("are in order") && !said.contains("in use"), "{who}: {said}");
    }
    // --fix leaves the running daemon's spool to it.
    let (code, said) = site.check(&["--fix"]);
    assert_eq!(code, Some(0), "{said}");
    assert!(said.contains("is in use by another posthorn") && !said.contains("fixed:"), "{said}");
    site.postfix("stop");
    for (who, (code, said)) in [("root", site.check(&[])), ("nobody", site.check_as_nobody())] {
        assert_eq!(code, Some(0), "{who}, after the stop: {said}");
    }
}

// 2 ------------------------------------------------------------------------

#[test]
fn fix_makes_the_spool_the_daemon_would_and_a_daemon_starts_on_it() {
    if skipped() {
        return;
    }
    let sink = Sink::start();
    let site = Site::new(&satellite(sink.addr(), free_addr()));
    let spool = site.spool();
    let (code, said) = site.check(&["--fix"]);
    assert_eq!(code, Some(0), "{said}");
    assert!(said.contains(&format!("fixed: created the spool {}", spool.display())), "{said}");
    assert_eq!(mode(&spool), (NOBODY, 0o711));
    assert_eq!(mode(&spool.join("maildrop")), (NOBODY, 0o3733), "setgid, as the daemon leaves it");
    for dir in ["tmp", "data", "incoming", "active", "deferred", "hold", "corrupt"] {
        assert_eq!(mode(&spool.join(dir)), (NOBODY, 0o700), "{dir}");
    }
    let (code, said) = site.check(&["--fix"]);
    assert_eq!(code, Some(0), "{said}");
    assert!(!said.contains("fixed:"), "a second --fix changed something: {said}");

    std::fs::set_permissions(spool.join("maildrop"), std::fs::Permissions::from_mode(0o777)).unwrap();
    let (code, said) = site.check(&[]);
    assert_eq!(code, Some(1), "{said}");
    assert!(said.contains("maildrop: mode 777, expected 1733"), "{said}");
    assert_eq!(mode(&spool.join("maildrop")).1, 0o777, "check without --fix changed the mode");
    let (code, said) = site.check(&["--fix"]);
    assert_eq!(code, Some(0), "{said}");
    assert!(said.contains("fixed: maildrop: mode 777 -> 3733"), "{said}");

    // `postfix set-permissions` is the same repair, under Postfix's name.
    std::fs::set_permissions(&spool, std::fs::Permissions::from_mode(0o755)).unwrap();
    let out = site.run(false, &["postfix", "set-permissions"]);
    assert!(out.status.success() && text(&out).contains("mode 755 -> 711"), "{}", text(&out));

    site.postfix("start");
    send(&site, "ops@example.test");
    let got = sink.wait_for_messages(1, secs(20));
    assert_eq!(got.len(), 1, "nothing delivered from the fixed spool");
    site.postfix("stop");
}

// 3 ------------------------------------------------------------------------

#[test]
fn a_certificate_or_key_serve_would_refuse_fails_the_gate() {
    if skipped() {
        return;
    }
    let sink = Sink::start();
    let base = satellite(sink.addr(), free_addr());
    let site = Site::new(&base);
    let (cert_path, key_path) = (site.path("cert.pem"), site.path("key.pem"));
    let tls = format!(
        "\n[tls]\ncert = {}\nkey = {}\n",
        toml_str(&cert_path.display().to_string()),
        toml_str(&key_path.display().to_string())
    );
    let site = site.write(&(base.clone() + &tls));
    let (code, said) = site.check(&[]);
    assert_eq!(code, Some(1), "{said}");
    assert!(said.contains(&format!("{}: cannot read: No such file", cert_path.display())), "{said}");
    // serve refuses the same configuration, for the same file.
    let refused = Posthorn::try_start(&format!("user = \"nobody\"\n{base}{tls}")).err().unwrap_or_default();
    assert!(refused.contains(&cert_path.display().to_string()), "serve started with a missing certificate: {refused}");

    let ca = TestCa::new("check CA");
    let issued = ca.issue("server", &["check.test"]);
    std::fs::copy(&issued.cert, &cert_path).unwrap();
    std::fs::copy(&issued.key, &key_path).unwrap();
    std::fs::set_permissions(&key_path, std::fs::Permissions::from_mode(0o600)).unwrap();
    // Root reads it; the daemon reads it as nobody, after the switch.
    let (code, said) = site.check(&[]);
    assert_eq!(code, Some(1), "{said}");
    assert!(said.contains(&format!("{}: cannot read: Permission denied", key_path.display())), "{said}");
    chown(&key_path, NOBODY);
    let (code, said) = site.check(&[]);
    assert_eq!(code, Some(0), "{said}");
}

#[test]
fn missing_map_files_fail_the_gate() {
    if skipped() {
        return;
    }
    let sink = Sink::start();
    let site = Site::new("");
    let (virtual_map, transport) = (site.path("virtual"), site.path("transport"));
    let site = site.write(&with_lines(
        &satellite(sink.addr(), free_addr()),
        &[
            &format!("rewrite.virtual_alias_maps = [\"hash:{}\"]", virtual_map.display()),
            &format!("deliver.transport_maps = [\"hash:{}\"]", transport.display()),
        ],
    ));
    let (code, said) = site.check(&[]);
    assert_eq!(code, Some(1), "{said}");
    assert!(said.contains(&format!("rewrite.virtual_alias_maps: open {}", virtual_map.display())), "{said}");
    std::fs::write(&virtual_map, "root ops@example.test\n").unwrap();
    let (code, said) = site.check(&[]);
    assert_eq!(code, Some(1), "{said}");
    assert!(said.contains(&format!("deliver.transport_maps: open {}", transport.display())), "{said}");
    std::fs::write(&transport, "example.test relay:\n").unwrap();
    let (code, said) = site.check(&[]);
    assert_eq!(code, Some(0), "{said}");
}

#[test]
fn a_port_another_program_holds_fails_the_gate() {
    if skipped() {
        return;
    }
    let sink = Sink::start();
    let taken = std::net::TcpListener::bind(free_addr()).unwrap();
    let addr = taken.local_addr().unwrap();
    let site = Site::new(&satellite(sink.addr(), addr));
    let (code, said) = site.check(&[]);
    assert_eq!(code, Some(1), "{said}");
    assert!(said.contains(&format!("smtp.listen: cannot listen on {addr}: the address is in use")), "{said}");
    drop(taken);
    let (code, said) = site.check(&[]);
    assert_eq!(code, Some(0), "{said}");
}

#[test]
fn a_spool_of_another_account_fails_the_gate() {
    if skipped() {
        return;
    }
    let sink = Sink::start();
    let base = satellite(sink.addr(), free_addr());
    let site = Site::new(&base);
    let spool = site.spool();
    assert_eq!(site.check(&["--fix"]).0, Some(0));
    // uid 1 (`daemon`): another account's spool.
    let out = Command::new("chown").args(["-R", "1:1"]).arg(&spool).output().unwrap();
    assert!(out.status.success());
    let (code, said) = site.check(&[]);
    assert_eq!(code, Some(1), "{said}");
    let expected =
        format!("{} belongs to daemon (uid 1), not to nobody, the account the daemon runs as", spool.display());
    assert!(said.contains(&expected), "{said}");
    let (code, said) = site.check(&["--fix"]);
    assert_eq!(code, Some(0), "{said}");
    assert!(said.contains(&format!("fixed: gave the spool {} to nobody", spool.display())), "{said}");
    assert_eq!(mode(&spool.join("deferred")).0, NOBODY);

    // A daemon that stays root refuses a spool it does not own.
    let site = site.write(&format!("user = \"root\"\n{base}"));
    let (code, said) = site.check(&[]);
    assert_eq!(code, Some(1), "{said}");
    assert!(
        said.contains(&format!("{} belongs to uid {NOBODY}, not to the daemon's account (uid 0)", spool.display())),
        "{said}"
    );
}

#[test]
fn a_dkim_key_the_account_cannot_read_fails_the_gate() {
    if skipped() {
        return;
    }
    let sink = Sink::start();
    let site = Site::new("");
    let key = site.path("dkim.key");
    let out = Command::new(BIN).args(["dkim", "keygen", "example.test", "s1", "--out"]).arg(&key).output().unwrap();
    assert!(out.status.success(), "{}", text(&out));
    std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o600)).unwrap();
    chown(&key, 0);
    let dkim = format!(
        "\n[[dkim.keys]]\ndomain = \"example.test\"\nselector = \"s1\"\nkey = {}\n",
        toml_str(&key.display().to_string())
    );
    let site = site.write(&(satellite(sink.addr(), free_addr()) + &dkim));
    let (code, said) = site.check(&[]);
    assert_eq!(code, Some(1), "{said}");
    assert!(said.contains(&key.display().to_string()) && said.contains("Permission denied"), "{said}");
    chown(&key, NOBODY);
    let (code, said) = site.check(&[]);
    assert_eq!(code, Some(0), "{said}");

    // A reload reads the configuration again, as the account.
    std::fs::set_permissions(&site.config, std::fs::Permissions::from_mode(0o600)).unwrap();
    let (code, said) = site.check(&[]);
    assert_eq!(code, Some(1), "{said}");
    assert!(said.contains("user nobody cannot load the configuration: a reload would refuse"), "{said}");
}

// 4 ------------------------------------------------------------------------

#[test]
fn a_satellite_without_smarthosts_delivering_to_maildirs_passes_with_a_warning() {
    if skipped() {
        return;
    }
    // The package's default: local mail to Maildirs by a transport map,
    // no smarthost yet.
    let site = Site::new("");
    let (transport, mail) = (site.path("transport"), site.path("mail"));
    std::fs::write(&transport, "check.test maildir:\nlocalhost maildir:\n").unwrap();
    std::fs::create_dir(&mail).unwrap();
    std::fs::set_permissions(&mail, std::fs::Permissions::from_mode(0o755)).unwrap();
    let site = site.write(&format!(
        "role = \"satellite\"\n\n[smtp]\nlisten = [\"{}\"]\n\n[deliver]\ntransport_maps = [\"hash:{}\"]\nmaildir_root = \"{}/{{domain}}/{{user}}\"\n",
        free_addr(),
        transport.display(),
        mail.display()
    ));
    let (code, said) = site.check(&[]);
    assert_eq!(code, Some(1), "{said}");
    let expected = format!("user nobody cannot make Maildirs in {}: Permission denied", mail.display());
    assert!(said.contains(&expected), "{said}");

    chown(&mail, NOBODY);
    let (code, said) = site.check(&["--fix"]);
    assert_eq!(code, Some(0), "{said}");
    assert!(said.contains("posthorn check: warning: relay.smarthosts is empty"), "{said}");

    site.postfix("start");
    send(&site, "root@check.test");
    let new = mail.join("check.test/root/new");
    assert!(
        wait_until(secs(20), || std::fs::read_dir(&new).is_ok_and(|d| d.count() == 1)),
        "no Maildir delivery in {}",
        new.display()
    );
    site.postfix("stop");
}
