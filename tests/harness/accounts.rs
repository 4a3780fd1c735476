//! Login accounts for the local delivery tests (`useradd`, removed with
//! their homes when dropped), and a mail tree shaped like Debian's
//! /var/mail. The tests that use them run as root, as CI does.

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

/// A login account made for one test, removed (with its home) when dropped.
pub struct TestUser {
    pub name: String,
    pub uid: u32,
    pub home: PathBuf,
}

impl TestUser {
    pub fn new(base: &Path) -> TestUser {
        // Short and unique: login names are at most 32 characters.
        let name = format!("phl{}x{}", std::process::id(), fastrand::u32(..100_000));
        let home = base.join(&name);
        let mut made = false;
        for _ in 0..20 {
            // useradd fails while another test holds /etc/passwd's lock.
            let status = Command::new("useradd")
                .args(["--create-home", "--home-dir"])
                .arg(&home)
                .args(["--shell", "/bin/sh", "--user-group", &name])
                .stderr(Stdio::null())
                .status()
                .expect("run useradd");
            if status.success() {
                made = true;
                break;
            }
            std::thread::sleep(std::time::Duration::from_millis(300));
        }
        assert!(made, "useradd {name} failed");
        let out = Command::new("id").args(["-u", &name]).output().expect("id -u");
        let uid = String::from_utf8_lossy(&out.stdout).trim().parse().expect("a uid");
        TestUser { name, uid, home }
    }

    pub fn address(&self) -> String {
        format!("{}@example.org", self.name)
    }
}

impl Drop for TestUser {
    fn drop(&mut self) {
        for _ in 0..20 {
            let ok = Command::new("userdel").args(["--remove", &self.name]).stderr(Stdio::null()).status();
            if ok.is_ok_and(|s| s.success()) {
                return;
            }
            std::thread::sleep(std::time::Duration::from_millis(300));
        }
    }
}

/// A temporary tree others may walk into (a user's child needs to reach
/// its spool directory and home), with `mail/` as Debian makes /var/mail:
/// root:mail, mode 2775.
pub fn mail_tree() -> (tempfile::TempDir, PathBuf) {
    let dir = tempfile::Builder::new().prefix("posthorn-local-").tempdir().expect("tempdir");
    fs::set_permissions(dir.path(), fs::Permissions::from_mode(0o755)).unwrap();
    let spool = dir.path().join("mail");
    fs::create_dir(&spool).unwrap();
    let status = Command::new("chgrp").arg("mail").arg(&spool).status().expect("chgrp");
    assert!(status.success());
    fs::set_permissions(&spool, fs::Permissions::from_mode(0o2775)).unwrap();
    (dir, spool)
}
