//! End-to-end: a full disk and failing writes (issue 12, items 7, 8, 12, 14).
//!
//! The spool is a loop-mounted ext4 image of its own, filled with a
//! `fallocate`d ballast file:
//! 1. a real client gets `452 4.3.1` while the disk is full, the daemon
//!    restarts on the full disk, the next message after the ballast is
//!    removed gets 250 without a restart, and mail deferred meanwhile
//!    drains once its next hop is back;
//! 2. a deferral that cannot be saved (the disk fills while the next hop of
//!    one recipient defers) is retried and delivered once space is back,
//!    and the recipient delivered before is not delivered twice;
//! 3. a backlog that becomes due while the disk is full drains, no message
//!    left behind, and `/health` says what is wrong meanwhile;
//! 4. a body whose writeback fails (device-mapper `error` target, or where
//!    there is no device-mapper a loop device over a full tmpfs) never gets
//!    250.
//!
//! Mounting needs root and loop devices: without them each test prints why
//! it is skipped and passes. Every mount is undone by a guard's drop, also
//! when the test fails.

mod harness;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use harness::*;

/// `queue.min_free` in these tests: small beside the 48 MiB image.
const MIN_FREE: &str = "queue.min_free = \"4M\"";

/// Runs a system tool; `Err` with its output when it fails.
fn run(program: &str, args: &[&str]) -> Result<String, String> {
    let out = Command::new(program).args(args).output().map_err(|e| format!("{program}: {e}"))?;
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
    } else {
        Err(format!("{program} {}: {}", args.join(" "), String::from_utf8_lossy(&out.stderr).trim()))
    }
}

/// Why these tests cannot mount a filesystem here, if they cannot.
fn cannot_mount() -> Option<String> {
    if !rustix::process::geteuid().is_root() {
        return Some("not root: mounting a loop device needs root".into());
    }
    if !Path::new("/dev/loop-control").exists() {
        return Some("no /dev/loop-control: no loop devices".into());
    }
    run("mkfs.ext4", &["-V"]).err().map(|e| format!("no mkfs.ext4: {e}"))
}

/// Bytes available on the filesystem holding `path`.
fn available(path: &Path) -> u64 {
    let vfs = rustix::fs::statvfs(path).expect("statvfs");
    vfs.f_bavail * vfs.f_frsize
}

/// An ext4 image loop-mounted at a directory, with a ballast file to fill
/// it. Dropping it unmounts (lazily: a daemon still running keeps it busy)
/// and removes the image.
struct LoopFs {
    _image: tempfile::TempDir,
    at: PathBuf,
}

impl LoopFs {
    /// A fresh `mib` MiB ext4 (no blocks reserved for root, so root's
    /// writes meet a full disk too) mounted at `at`.
    fn mount(at: &Path, mib: u64) -> Result<LoopFs, String> {
        let image =
            tempfile::Builder::new().prefix("posthorn-disk-").tempdir_in("/var/tmp").map_err(|e| e.to_string())?;
        let file = image.path().join("spool.img");
        std::fs::File::create(&file).and_then(|f| f.set_len(mib << 20)).map_err(|e| e.to_string())?;
        run("mkfs.ext4", &["-q", "-F", "-m", "0", &file.display().to_string()])?;
        std::fs::create_dir_all(at).map_err(|e| e.to_string())?;
        run("mount", &["-o", "loop", &file.display().to_string(), &at.display().to_string()])?;
        Ok(LoopFs { _image: image, at: at.to_path_buf() })
    }

    fn ballast(&self) -> PathBuf {
        self.at.join("ballast")
    }

    /// Takes every free block (less `leave` bytes): `fallocate` in
    /// shrinking pieces (the filesystem needs some blocks for the extent
    /// tree itself), then what is left a block at a time.
    fn fill(&self, leave: u64) {
        let mut file = std::fs::OpenOptions::new().create(true).append(true).open(self.ballast()).expect("ballast");
        let mut piece = available(&self.at).saturating_sub(leave);
        while piece >= 64 * 1024 && available(&self.at) > leave {
            let end = file.metadata().expect("ballast size").len();
            let flags = rustix::fs::FallocateFlags::empty();
            match rustix::fs::fallocate(&file, flags, end, piece.min(available(&self.at).saturating_sub(leave))) {
                Ok(()) => {}
                Err(_) => piece /= 2,
            }
        }
        let block = vec![0u8; 1024];
        while available(&self.at) > leave && file.write_all(&block).and_then(|()| file.sync_data()).is_ok() {}
    }

    fn empty(&self) {
        std::fs::remove_file(self.ballast()).expect("remove the ballast");
    }
}

impl Drop for LoopFs {
    fn drop(&mut self) {
        if let Err(e) = run("umount", &["-l", &self.at.display().to_string()]) {
            eprintln!("cleanup: {e}");
        }
        // The image goes with `_image`; the loop device, detached
        // automatically, keeps it open until the last user is gone.
    }
}

/// A daemon whose spool is a fresh loop-mounted filesystem: started once to
/// learn its directory, stopped, the filesystem mounted over its spool,
/// started again (the spool is created anew on the mount). `None` (and why
/// printed) where mounting is not possible.
fn on_own_filesystem(config: &str) -> Option<(Posthorn, LoopFs)> {
    if let Some(why) = cannot_mount() {
        eprintln!("skipped: {why}");
        return None;
    }
    let mut ph = Posthorn::start(config);
    ph.stop();
    let fs = match LoopFs::mount(&ph.spool_dir(), 48) {
        Ok(fs) => fs,
        Err(why) => {
            eprintln!("skipped: cannot mount a loop device: {why}");
            return None;
        }
    };
    ph.restart();
    Some((ph, fs))
}

/// The reply to one message over a fresh smtplib session: `250 ...`, or
/// smtplib's error (which carries the refusal's code and text).
fn submit(ph: &Posthorn, to: &[&str], subject: &str) -> String {
    let msg = message(&[("From", "app@vm.test"), ("Subject", subject)], "disk full test\n");
    match smtplib_transaction(ph.smtp_addr(), "app@vm.test", to, &msg) {
        Ok((code, text)) => format!("{code} {text}"),
        Err(e) => e,
    }
}

/// The status line and body of `GET /health`.
fn health(addr: SocketAddr) -> String {
    let mut s = TcpStream::connect(addr).expect("connect to the metrics port");
    s.set_read_timeout(Some(secs(10))).unwrap();
    s.write_all(b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n").unwrap();
    let mut answer = String::new();
    let _ = s.read_to_string(&mut answer);
    let status = answer.lines().next().unwrap_or("").to_string();
    let body = answer.split("\r\n\r\n").nth(1).unwrap_or("").trim().to_string();
    format!("{status} {body}")
}

fn metrics_addr(ph: &Posthorn) -> SocketAddr {
    let log = ph.log();
    let start = log.rfind("--- harness: start #").unwrap_or(0);
    let line = log[start..].lines().find_map(|l| l.split("listening metrics=").nth(1));
    line.unwrap_or_else(|| panic!("no `listening metrics=` line:\n{log}")).trim().parse().unwrap()
}

#[test]
fn a_full_spool_refuses_with_452_restarts_and_drains_once_space_is_back() {
    let mut sink = Sink::start_stopped();
    let config = with_lines(&satellite_config(&[sink.addr()]), &[MIN_FREE]);
    let Some((mut ph, fs)) = on_own_filesystem(&config) else { return };

    // Queued while the next hop is down.
    for i in 0..3 {
        let reply = submit(&ph, &["ops@example.net"], &format!("queued-{i}"));
        assert!(reply.starts_with("250 "), "{reply}");
    }
    assert!(wait_until(secs(20), || ph.spool_files("deferred").len() == 3), "log:\n{}", ph.log());

    fs.fill(0);
    let reply = submit(&ph, &["ops@example.net"], "while full");
    assert!(reply.contains("452") && reply.contains("4.3.1"), "{reply}\nlog:\n{}", ph.log());
    // Refused by the free-space check, or (its answer being up to a second
    // old) by the failed write itself, whose errno is logged.
    let why = |ph: &Posthorn| ph.log().contains("below queue.min_free") || ph.log().contains("ENOSPC");
    assert!(wait_until(secs(5), || why(&ph)), "{}", ph.log());

    // The daemon starts on the full disk, and still refuses politely.
    ph.restart();
    let reply = submit(&ph, &["ops@example.net"], "after restart, full");
    assert!(reply.contains("452") && reply.contains("4.3.1"), "{reply}\nlog:\n{}", ph.log());
    assert!(ph.wait_for_log("below queue.min_free", secs(5)), "{}", ph.log());

    let freed = Instant::now();
    fs.empty();
    let mut replies = Vec::new();
    let first_250 = loop {
        let reply = submit(&ph, &["ops@example.net"], "space is back");
        if reply.starts_with("250 ") {
            break freed.elapsed();
        }
        replies.push(reply);
        assert!(freed.elapsed() < secs(20), "no 250 within 20 s of freeing space: {replies:?}\n{}", ph.log());
        std::thread::sleep(Duration::from_millis(200));
    };
    eprintln!("first 250 {first_250:?} after space was freed (refused before: {replies:?})");

    sink.restart();
    let got = sink.wait_for_parsed(4, secs(30));
    let mut subjects: Vec<String> = got.iter().filter_map(|d| d.header("Subject")).collect();
    subjects.sort();
    assert_eq!(subjects, ["queued-0", "queued-1", "queued-2", "space is back"], "log:\n{}", ph.log());
    assert!(ph.wait_for_queued(0, secs(10)), "log:\n{}", ph.log());
}

#[test]
fn a_deferral_that_cannot_be_saved_is_retried_and_never_delivered_twice() {
    let now = Sink::start();
    let mut later = Sink::start_stopped();
    let routes = tempfile::tempdir().unwrap();
    let transport = routes.path().join("transport");
    let hop = |a: SocketAddr| format!("relay:[{}]:{}", a.ip(), a.port());
    std::fs::write(&transport, format!("now.test   {}\nlater.test   {}\n", hop(now.addr()), hop(later.addr())))
        .unwrap();
    let config = with_lines(
        "role = \"hub\"\n\n[smtp]\nlisten = [\"127.0.0.1:0\"]\n\n[relay]\ntls = \"none\"\nconnect_timeout = \"5s\"\n\n[queue]\nretry_min = \"1s\"\nretry_max = \"2s\"\n",
        &[
            MIN_FREE,
            &format!("deliver.transport_maps = [{}]", toml_str(&format!("hash:{}", transport.display()))),
            "metrics.listen = \"127.0.0.1:0\"",
        ],
    );
    let Some((ph, fs)) = on_own_filesystem(&config) else { return };
    let metrics = metrics_addr(&ph);
    assert!(health(metrics).starts_with("HTTP/1.1 200"), "{}", health(metrics));

    // The first attempt takes place with the disk full: one recipient is
    // delivered, the other deferred, and the deferral cannot be saved.
    let mark = ph.log_mark();
    let reply = submit(&ph, &["a@now.test", "b@later.test"], "partly delivered");
    assert!(reply.starts_with("250 "), "{reply}");
    // Filled right after the 250, before the attempt ends, is a race; a
    // full disk meets every later save instead: the retries keep failing.
    fs.fill(0);
    assert!(
        ph.wait_for_log_since(mark, "cannot save deferred envelope", secs(20)),
        "no failed save logged:\n{}",
        ph.log()
    );
    let line = ph.log_lines(&["cannot save deferred envelope"]).pop().unwrap();
    assert!(line.contains("ENOSPC"), "the errno is named: {line}");
    let status = health(metrics);
    assert!(status.starts_with("HTTP/1.1 503"), "/health while the disk is full: {status}");

    // Retries while full deliver nothing twice.
    std::thread::sleep(secs(3));
    assert_eq!(now.parsed().len(), 1, "a@now.test delivered once, log:\n{}", ph.log());

    fs.empty();
    later.restart();
    let got = later.wait_for_parsed(1, secs(30));
    assert_eq!(got.len(), 1, "b@later.test delivered once space was back, log:\n{}", ph.log());
    assert!(ph.wait_for_queued(0, secs(10)), "log:\n{}", ph.log());
    assert_eq!(now.parsed().len(), 1, "a@now.test is never delivered twice, log:\n{}", ph.log());
    assert!(wait_until(secs(10), || health(metrics).starts_with("HTTP/1.1 200")), "{}", health(metrics));
}

#[test]
fn a_backlog_due_on_a_full_disk_drains_without_a_restart() {
    const N: usize = 120;
    let mut sink = Sink::start_stopped();
    let config = with_lines(&satellite_config(&[sink.addr()]), &[MIN_FREE]);
    let Some((mut ph, fs)) = on_own_filesystem(&config) else { return };
    let mut client = RawSmtp::connect(ph.smtp_addr()).unwrap();
    client.ehlo("client.test").unwrap();
    for i in 0..N {
        let msg = message(&[("Subject", &format!("backlog-{i}"))], "x\n");
        let reply = client.send("app@vm.test", &["ops@example.net"], msg.as_bytes()).unwrap();
        assert_eq!(reply.code, 250, "{reply}");
    }
    let _ = client.quit();
    assert!(wait_until(secs(30), || ph.spool_files("deferred").len() == N), "log:\n{}", ph.log());

    // The hop comes back while the disk is full: every move out of
    // deferred/ that needs a new directory block fails, and is retried.
    // active/ grew while the mail came in; a fresh one has one block
    // (about 50 names), as on a spool whose backlog built up slowly. The
    // daemon crashes, and starts again on the full disk.
    ph.kill9();
    let active = ph.spool_dir().join("active");
    std::fs::remove_dir(&active).unwrap();
    std::fs::create_dir(&active).unwrap();
    fs.fill(0);
    ph.restart();
    sink.restart();
    let got = sink.wait_for_parsed(N, secs(90));
    let failed_moves = ph.log_lines(&["cannot move from deferred/ to active/"]).len();
    eprintln!("{} of {N} delivered; {failed_moves} failed move(s) retried", got.len());
    assert_eq!(got.len(), N, "log:\n{}", ph.log());
    assert!(failed_moves > 0, "the full disk failed no move; the test proves nothing:\n{}", ph.log());
    assert!(ph.wait_for_queued(0, secs(10)), "log:\n{}", ph.log());
}

/// A filesystem under the spool whose writes can be made to fail:
/// device-mapper's `error` target swapped in under a mounted ext4 where
/// there is device-mapper, else a loop device whose backing file lives on
/// a tmpfs that is then filled (the loop device's writes fail with EIO).
/// Dropping it unmounts and removes what it set up.
struct Faulty {
    at: PathBuf,
    how: Backing,
    _dir: tempfile::TempDir,
}

enum Backing {
    Mapper { name: String, loop_dev: String },
    FullTmpfs { tmpfs: PathBuf },
}

/// The faulty device's size: 64 MiB in 512-byte sectors.
const SECTORS: u64 = 64 * 2048;

impl Faulty {
    fn mount(at: &Path) -> Result<Faulty, String> {
        let dir =
            tempfile::Builder::new().prefix("posthorn-faulty-").tempdir_in("/var/tmp").map_err(|e| e.to_string())?;
        let path = |p: &Path| p.display().to_string();
        if Path::new("/dev/mapper/control").exists() && run("dmsetup", &["version"]).is_ok() {
            let image = dir.path().join("disk.img");
            std::fs::File::create(&image).and_then(|f| f.set_len(SECTORS * 512)).map_err(|e| e.to_string())?;
            let loop_dev = run("losetup", &["-f", "--show", &path(&image)])?;
            let name = unique_name("posthorn-spool");
            let table = format!("0 {SECTORS} linear {loop_dev} 0");
            if let Err(e) = run("dmsetup", &["create", &name, "--table", &table]) {
                let _ = run("losetup", &["-d", &loop_dev]);
                return Err(e);
            }
            let device = format!("/dev/mapper/{name}");
            let faulty = Faulty { at: at.into(), how: Backing::Mapper { name, loop_dev }, _dir: dir };
            run("mkfs.ext4", &["-q", "-F", "-m", "0", &device])?;
            run("mount", &[&device, &path(at)])?;
            return Ok(faulty);
        }
        let tmpfs = dir.path().join("tmpfs");
        std::fs::create_dir(&tmpfs).map_err(|e| e.to_string())?;
        run("mount", &["-t", "tmpfs", "-o", "size=16m", "tmpfs", &path(&tmpfs)])?;
        let image = tmpfs.join("disk.img");
        let faulty = Faulty { at: at.into(), how: Backing::FullTmpfs { tmpfs }, _dir: dir };
        // Sparse: the image takes tmpfs pages only as its blocks are written.
        std::fs::File::create(&image).and_then(|f| f.set_len(SECTORS * 512)).map_err(|e| e.to_string())?;
        run("mkfs.ext4", &["-q", "-F", "-m", "0", "-E", "nodiscard", &path(&image)])?;
        run("mount", &["-o", "loop", &path(&image), &path(at)])?;
        Ok(faulty)
    }

    /// From now on writes to the device fail.
    fn break_writes(&self) {
        match &self.how {
            Backing::Mapper { name, .. } => {
                run("dmsetup", &["suspend", "--noflush", name]).unwrap();
                run("dmsetup", &["reload", name, "--table", &format!("0 {SECTORS} error")]).unwrap();
                run("dmsetup", &["resume", name]).unwrap();
            }
            Backing::FullTmpfs { tmpfs } => {
                let ballast = std::fs::File::create(tmpfs.join("ballast")).unwrap();
                let _ = rustix::fs::fallocate(&ballast, rustix::fs::FallocateFlags::empty(), 0, available(tmpfs));
            }
        }
    }

    fn how(&self) -> &'static str {
        match self.how {
            Backing::Mapper { .. } => "device-mapper error target",
            Backing::FullTmpfs { .. } => "loop device over a full tmpfs (no device-mapper here)",
        }
    }
}

impl Drop for Faulty {
    fn drop(&mut self) {
        if let Err(e) = run("umount", &["-l", &self.at.display().to_string()]) {
            eprintln!("cleanup: {e}");
        }
        match &self.how {
            Backing::Mapper { name, loop_dev } => {
                let _ = run("dmsetup", &["remove", "--force", "--retry", name]);
                let _ = run("losetup", &["-d", loop_dev]);
            }
            Backing::FullTmpfs { tmpfs } => {
                let _ = run("umount", &["-l", &tmpfs.display().to_string()]);
            }
        }
    }
}

#[test]
fn a_body_whose_writeback_fails_never_gets_250() {
    if let Some(why) = cannot_mount() {
        eprintln!("skipped: {why}");
        return;
    }
    let sink = Sink::start_stopped();
    let mut ph = Posthorn::start(&with_lines(&satellite_config(&[sink.addr()]), &["queue.sync = \"batch\""]));
    ph.stop();
    let faulty = match Faulty::mount(&ph.spool_dir()) {
        Ok(f) => f,
        Err(why) => {
            eprintln!("skipped: cannot set up a failing disk: {why}");
            return;
        }
    };
    ph.restart();
    let reply = submit(&ph, &["ops@example.net"], "before");
    assert!(reply.starts_with("250 "), "{reply}");

    faulty.break_writes();
    let big = "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef\n".repeat(16 * 1024);
    let msg = message(&[("From", "app@vm.test"), ("Subject", "lost in writeback")], &big);
    let reply = match smtplib_transaction(ph.smtp_addr(), "app@vm.test", &["ops@example.net"], &msg) {
        Ok((code, text)) => format!("{code} {text}"),
        Err(e) => e,
    };
    eprintln!("with the {}: {reply}", faulty.how());
    assert!(!reply.starts_with("250"), "a body whose writeback failed got {reply}\nlog:\n{}", ph.log());
    drop(ph);
    drop(faulty);
}
