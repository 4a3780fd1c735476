//! Appending one message to an mbox file as Postfix's local(8) does: a
//! `From sender date` line, `Return-Path:`, `X-Original-To:` and
//! `Delivered-To:`, the message with LF line ends and `From ` at the start
//! of a line quoted as `>From `, and an empty line after it.
//!
//! The mailbox is locked both ways mail readers lock it: a dotlock
//! (`PATH.lock`, made with `O_EXCL`; one older than [`STALE_LOCK`] is
//! taken for a crashed writer's and removed) and an `fcntl` write lock on
//! the file. A write that fails (full disk, quota) truncates the file
//! back to the size it had, so a reader never sees half a message.
//!
//! These functions run as the mailbox's user (in the local delivery
//! agent's child, or in the daemon for its own account): they never
//! change owners, and they refuse a mailbox that is a link, is not a
//! regular file, has a second name, or belongs to someone else.

use std::fs::{File, OpenOptions};
use std::io::{self, Write};
use std::os::fd::AsRawFd;
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

/// How many times a lock is tried, [`LOCK_DELAY`] apart (Postfix's
/// `deliver_lock_attempts` and `deliver_lock_delay`).
pub(crate) const LOCK_ATTEMPTS: u32 = 20;
pub(crate) const LOCK_DELAY: Duration = Duration::from_secs(1);
/// A dotlock older than this belongs to a writer that is gone (Postfix's
/// `stale_lock_time`).
pub(crate) const STALE_LOCK: Duration = Duration::from_secs(500);

/// The message as it goes into an mbox: the `From ` line, the delivery
/// headers, the message quoted, and the empty line that ends it.
pub(crate) fn format(sender: &str, recipient: &str, original: &str, message: &[u8], when: &str) -> Vec<u8> {
    let envelope = if sender.is_empty() { "MAILER-DAEMON" } else { sender };
    let mut out = Vec::with_capacity(message.len() + 256);
    out.extend_from_slice(format!("From {}  {when}\n", one_line(envelope)).as_bytes());
    out.extend_from_slice(format!("Return-Path: <{}>\n", one_line(sender)).as_bytes());
    if !original.eq_ignore_ascii_case(recipient) {
        out.extend_from_slice(format!("X-Original-To: {}\n", one_line(original)).as_bytes());
    }
    out.extend_from_slice(format!("Delivered-To: {}\n", one_line(recipient)).as_bytes());
    for line in message.split_inclusive(|&b| b == b'\n') {
        let line = line.strip_suffix(b"\n").unwrap_or(line);
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        if line.starts_with(b"From ") {
            out.push(b'>');
        }
        out.extend_from_slice(line);
        out.push(b'\n');
    }
    out.push(b'\n');
    out
}

/// The date of a `From ` line: asctime's layout, local time.
pub(crate) fn from_line_date(now: &jiff::ZonedDateTime) -> String {
    now.strftime("%a %b %e %H:%M:%S %Y").to_string()
}

/// `text` without anything that could end a header line.
fn one_line(text: &str) -> String {
    text.chars().filter(|c| !c.is_control()).collect()
}

/// Appends `entry` to the mbox at `path`, made (mode 0600) if missing;
/// the mailbox must belong to `uid`. Every error is worth a retry.
pub(crate) fn append(path: &Path, entry: &[u8], uid: u32) -> Result<(), String> {
    let shown = path.display();
    let file = open_mailbox(path).map_err(|e| format!("cannot open mailbox {shown}: {e}"))?;
    check_file(&file, uid).map_err(|e| format!("mailbox {shown}: {e}"))?;
    let _dotlock = DotLock::acquire(path).map_err(|e| format!("cannot lock mailbox {shown}: {e}"))?;
    lock_fcntl(&file).map_err(|e| format!("cannot lock mailbox {shown}: {e}"))?;
    let size = file.metadata().map_err(|e| format!("mailbox {shown}: {e}"))?.len();
    let written = (&file).write_all(entry).and_then(|()| file.sync_data());
    if let Err(e) = written {
        // Back to where it was: no half message for a reader to trip on.
        let _ = file.set_len(size);
        let _ = file.sync_data();
        return Err(format!("cannot append to mailbox {shown}: {e}"));
    }
    Ok(())
}

/// Opens for appending without following a link, making the file if it
/// is missing.
fn open_mailbox(path: &Path) -> io::Result<File> {
    OpenOptions::new()
        .append(true)
        .create(true)
        .mode(0o600)
        .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK | libc::O_CLOEXEC)
        .open(path)
}

/// A mailbox is a regular file with one name, owned by its user.
fn check_file(file: &File, uid: u32) -> Result<(), String> {
    let meta = file.metadata().map_err(|e| e.to_string())?;
    if !meta.file_type().is_file() {
        return Err("is not a regular file".into());
    }
    if meta.nlink() != 1 {
        return Err(format!("has {} names (hard links); refusing it", meta.nlink()));
    }
    if meta.uid() != uid {
        return Err(format!("belongs to uid {}, not to its user (uid {uid})", meta.uid()));
    }
    Ok(())
}

/// `PATH.lock`, removed when dropped.
struct DotLock {
    path: PathBuf,
}

impl DotLock {
    fn acquire(mailbox: &Path) -> io::Result<DotLock> {
        let mut name = mailbox.as_os_str().to_owned();
        name.push(".lock");
        let path = PathBuf::from(name);
        for attempt in 1..=LOCK_ATTEMPTS {
            let made = OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(0o600)
                .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
                .open(&path);
            match made {
                Ok(_) => return Ok(DotLock { path }),
                Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {
                    if is_stale(&path) {
                        let _ = std::fs::remove_file(&path);
                        continue;
                    }
                }
                Err(e) => return Err(e),
            }
            if attempt < LOCK_ATTEMPTS {
                std::thread::sleep(LOCK_DELAY);
            }
        }
        Err(io::Error::other(format!("{} is held by another program", path.display())))
    }
}

impl Drop for DotLock {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

fn is_stale(lock: &Path) -> bool {
    let age = std::fs::symlink_metadata(lock).and_then(|m| m.modified()).map(|t| SystemTime::now().duration_since(t));
    matches!(age, Ok(Ok(age)) if age > STALE_LOCK)
}

/// An `fcntl` write lock on the whole file, tried like the dotlock;
/// released when the file is closed.
fn lock_fcntl(file: &File) -> io::Result<()> {
    for attempt in 1..=LOCK_ATTEMPTS {
        // SAFETY: an all-zero flock is valid; the fields that matter are set.
        let mut lock: libc::flock = unsafe { std::mem::zeroed() };
        lock.l_type = libc::F_WRLCK as libc::c_short;
        lock.l_whence = libc::SEEK_SET as libc::c_short;
        // SAFETY: `file` is an open descriptor and `lock` lives across the call.
        if unsafe { libc::fcntl(file.as_raw_fd(), libc::F_SETLK, &lock) } == 0 {
            return Ok(());
        }
        let e = io::Error::last_os_error();
        if !matches!(e.raw_os_error(), Some(libc::EAGAIN | libc::EACCES)) {
            return Err(e);
        }
        if attempt < LOCK_ATTEMPTS {
            std::thread::sleep(LOCK_DELAY);
        }
    }
    Err(io::Error::other("the file is locked (fcntl) by another program"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    fn me() -> u32 {
        rustix::process::geteuid().as_raw()
    }

    #[test]
    fn format_quotes_from_and_adds_the_delivery_headers() {
        let msg = b"Subject: hi\r\n\r\nFrom here on\r\n>From there\r\nbody\r\n";
        let out = format("a@example.org", "bob@example.org", "Bob@example.org", msg, "Sat Dec  5 14:04:48 2026");
        let want = "From a@example.org  Sat Dec  5 14:04:48 2026\nReturn-Path: <a@example.org>\n\
                    Delivered-To: bob@example.org\nSubject: hi\n\n>From here on\n>From there\nbody\n\n";
        assert_eq!(String::from_utf8(out).unwrap(), want);
        let bounce = format("", "bob@h", "alias@h", b"x", "D");
        let text = String::from_utf8(bounce).unwrap();
        assert!(text.starts_with("From MAILER-DAEMON  D\nReturn-Path: <>\nX-Original-To: alias@h\n"), "{text}");
        assert!(text.ends_with("x\n\n"), "{text}");
        let sneaky = format("a@b\nX-Evil: 1", "bob@h", "bob@h", b"x", "D");
        assert!(!String::from_utf8(sneaky).unwrap().contains("\nX-Evil"));
    }

    #[test]
    fn from_line_date_is_asctime() {
        let t = crate::clock::timestamp(1_796_479_488).to_zoned_datetime(jiff::tz::TimeZone::UTC);
        assert_eq!(from_line_date(&t), "Sat Dec  5 14:04:48 2026");
    }

    #[test]
    fn appends_locks_and_refuses_what_is_not_a_mailbox() {
        let dir = std::env::temp_dir().join(format!("posthorn-mbox-{}-{}", std::process::id(), fastrand::u32(..)));
        std::fs::create_dir(&dir).unwrap();
        let path = dir.join("alice");
        append(&path, b"one\n\n", me()).unwrap();
        append(&path, b"two\n\n", me()).unwrap();
        assert_eq!(std::fs::read(&path).unwrap(), b"one\n\ntwo\n\n");
        assert_eq!(std::fs::metadata(&path).unwrap().permissions().mode() & 0o777, 0o600);
        assert!(!dir.join("alice.lock").exists(), "the dotlock is removed");
        // Someone else's file, a link, a second name: refused.
        let e = append(&path, b"x", me() + 1).unwrap_err();
        assert!(e.contains("belongs to uid"), "{e}");
        std::os::unix::fs::symlink(&path, dir.join("link")).unwrap();
        assert!(append(&dir.join("link"), b"x", me()).is_err());
        std::fs::hard_link(&path, dir.join("second")).unwrap();
        assert!(append(&path, b"x", me()).unwrap_err().contains("names"));
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn a_stale_dotlock_is_taken_over() {
        let dir =
            std::env::temp_dir().join(format!("posthorn-mbox-stale-{}-{}", std::process::id(), fastrand::u32(..)));
        std::fs::create_dir(&dir).unwrap();
        let lock = File::create(dir.join("bob.lock")).unwrap();
        lock.set_modified(SystemTime::now() - STALE_LOCK - Duration::from_secs(5)).unwrap();
        append(&dir.join("bob"), b"m\n\n", me()).unwrap();
        assert_eq!(std::fs::read(dir.join("bob")).unwrap(), b"m\n\n");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
