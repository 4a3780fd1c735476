//! The spool lock: one daemon per spool.
//!
//! A second `posthorn serve` on a live spool would run crash recovery under
//! the running daemon's feet, deleting bodies it is still writing. So the
//! daemon takes an exclusive `flock` on `SPOOL/posthorn.lock` before
//! anything else touches the spool and holds it for its life; the kernel
//! drops it when the process dies, so a crash never leaves a stale lock.
//!
//! With the daemon down, the queue-changing commands (`postsuper -d`,
//! `exim -Mrm`, ...) take the same lock for as long as they act on the
//! files. The file says who holds it, `PID ROLE` (`4242 daemon`,
//! `4343 postsuper`), so that a daemon starting meanwhile waits for the
//! command (`acquire_waiting`) instead of refusing to start, and a command
//! that finds a daemon starting asks that daemon instead of touching files.
//! A holder empties the file before it lets go.

use rustix::fs::{FileType, FlockOperation, Mode, OFlags};
use std::fs::File;
use std::io::{self, Read, Seek, Write};
use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// The lock file's name inside the spool.
pub(crate) const LOCK_FILE: &str = "posthorn.lock";

/// The role the daemon writes into the lock file; commands write their name.
pub(crate) const DAEMON: &str = "daemon";

/// How long a starting daemon waits for a command holding the spool.
pub(crate) const COMMAND_WAIT: Duration = Duration::from_secs(60);

/// Who holds the spool, as the lock file says.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Holder {
    /// The pid as text; `unknown` when the file does not say (yet).
    pub(crate) pid: String,
    /// `daemon`, or the command's name; a file written by an older
    /// release (a pid alone) is a daemon's.
    pub(crate) role: String,
}

impl Holder {
    pub(crate) fn is_daemon(&self) -> bool {
        self.role == DAEMON
    }
}

impl std::fmt::Display for Holder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.is_daemon() {
            write!(f, "another posthorn (pid {})", self.pid)
        } else {
            write!(f, "{} (pid {})", self.role, self.pid)
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub(crate) enum LockError {
    #[error("the spool {} is in use by {holder}", spool.display())]
    Held { spool: PathBuf, holder: Holder },
    #[error("the spool {} is still in use by {holder} after waiting {} s", spool.display(), COMMAND_WAIT.as_secs())]
    StillHeld { spool: PathBuf, holder: Holder },
    #[error("cannot lock the spool {}: {}", spool.display(), crate::message::outcome::strerror(source))]
    Io { spool: PathBuf, source: io::Error },
}

/// Held while the daemon runs (or a command acts on the files); dropping
/// it (or dying) releases the spool.
#[derive(Debug)]
pub(crate) struct SpoolLock {
    file: File,
}

impl SpoolLock {
    /// Takes the spool at `root` for the daemon or says who has it.
    /// Creates `root` when missing, and nothing else.
    pub(crate) fn acquire(root: &Path) -> Result<SpoolLock, LockError> {
        std::fs::create_dir_all(root).map_err(|source| LockError::Io { spool: root.to_path_buf(), source })?;
        SpoolLock::acquire_as(root, DAEMON)
    }

    /// Takes the spool at `root` for `role` (`daemon` or a command's name),
    /// or says who has it.
    pub(crate) fn acquire_as(root: &Path, role: &str) -> Result<SpoolLock, LockError> {
        let io_err = |source| LockError::Io { spool: root.to_path_buf(), source };
        let mut file = open(root, OFlags::CREATE).map_err(io_err)?;
        if !try_lock(&file).map_err(io_err)? {
            return Err(LockError::Held { spool: root.to_path_buf(), holder: owner(&mut file) });
        }
        file.set_len(0).and_then(|()| file.rewind()).map_err(io_err)?;
        writeln!(file, "{} {role}", std::process::id()).map_err(io_err)?;
        Ok(SpoolLock { file })
    }

    /// The daemon's `acquire`, waiting up to `COMMAND_WAIT` while a command
    /// holds the spool (`postsuper -d ALL` with the daemon down): starting
    /// must neither fail nor run recovery under it. `waiting` is told once
    /// whom it waits for. Another live daemon is refused at once.
    pub(crate) fn acquire_waiting(root: &Path, waiting: impl FnOnce(&Holder)) -> Result<SpoolLock, LockError> {
        let deadline = std::time::Instant::now() + COMMAND_WAIT;
        let mut waiting = Some(waiting);
        loop {
            match SpoolLock::acquire(root) {
                // `unknown`: one that has just taken the lock, not yet written.
                Err(LockError::Held { spool, holder }) if !holder.is_daemon() => {
                    if std::time::Instant::now() >= deadline {
                        return Err(LockError::StillHeld { spool, holder });
                    }
                    if let Some(tell) = waiting.take_if(|_| holder.pid != "unknown") {
                        tell(&holder);
                    }
                    std::thread::sleep(Duration::from_millis(50));
                }
                other => return other,
            }
        }
    }

    /// Who holds the spool at `root`, if anyone does (`postfix start` asks
    /// before it starts a daemon). Changes nothing.
    pub(crate) fn holder(root: &Path) -> Option<Holder> {
        let mut file = open(root, OFlags::empty()).ok()?;
        // Locked for a moment by us, released when `file` closes.
        (!try_lock(&file).ok()?).then(|| owner(&mut file))
    }
}

impl Drop for SpoolLock {
    /// Empties the file while still holding the lock, so that it never
    /// names a holder that is gone.
    fn drop(&mut self) {
        let _ = self.file.set_len(0);
    }
}

/// Opens the lock file relative to the spool directory's fd, without
/// following a symlink planted in its place, and only when it is a regular
/// file with one link belonging to the spool's owner (or to us): the
/// daemon opens it as root, in a directory its account owns, before the
/// switch, and must not be made to open (and truncate) another file.
fn open(root: &Path, create: OFlags) -> io::Result<File> {
    let dir = rustix::fs::open(root, OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC, Mode::empty())?;
    let flags = OFlags::RDWR | OFlags::NOFOLLOW | OFlags::CLOEXEC | OFlags::NONBLOCK | create;
    let fd: OwnedFd = rustix::fs::openat(&dir, LOCK_FILE, flags, Mode::from_raw_mode(0o600)).map_err(|e| match e {
        rustix::io::Errno::LOOP => io::Error::new(
            io::ErrorKind::PermissionDenied,
            format!("{} is a symbolic link, not followed", root.join(LOCK_FILE).display()),
        ),
        other => other.into(),
    })?;
    let (file, top) = (rustix::fs::fstat(&fd)?, rustix::fs::fstat(&dir)?);
    let owner_ok = file.st_uid == top.st_uid || file.st_uid == rustix::process::geteuid().as_raw();
    if FileType::from_raw_mode(file.st_mode) != FileType::RegularFile || file.st_nlink != 1 || !owner_ok {
        return Err(io::Error::new(
            io::ErrorKind::PermissionDenied,
            format!("{} is not a regular file of the spool's owner with one link", root.join(LOCK_FILE).display()),
        ));
    }
    Ok(File::from(fd))
}

/// Takes the exclusive lock without waiting; `false` when another has it.
fn try_lock(file: &File) -> io::Result<bool> {
    match rustix::fs::flock(file, FlockOperation::NonBlockingLockExclusive) {
        Ok(()) => Ok(true),
        Err(rustix::io::Errno::WOULDBLOCK) => Ok(false),
        Err(e) => Err(e.into()),
    }
}

/// Who the holder says it is; pid `unknown` when the file does not say.
fn owner(file: &mut File) -> Holder {
    let mut text = String::new();
    let _ = file.rewind();
    let _ = file.take(64).read_to_string(&mut text);
    let mut words = text.split_whitespace();
    let pid = words.next().filter(|p| p.bytes().all(|b| b.is_ascii_digit())).unwrap_or("unknown");
    let role = words.next().filter(|r| r.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-'));
    Holder { pid: pid.to_string(), role: role.unwrap_or(if pid == "unknown" { "unknown" } else { DAEMON }).to_string() }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_second_lock_on_the_same_spool_names_the_holder() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("spool");
        assert_eq!(SpoolLock::holder(&root), None);
        let lock = SpoolLock::acquire(&root).unwrap();
        let me = std::process::id().to_string();
        match SpoolLock::acquire(&root) {
            Err(LockError::Held { holder, .. }) => assert_eq!(holder, Holder { pid: me.clone(), role: DAEMON.into() }),
            other => panic!("a second lock: {other:?}"),
        }
        assert_eq!(SpoolLock::holder(&root).map(|h| h.pid), Some(me));
        drop(lock);
        assert_eq!(SpoolLock::holder(&root), None);
        SpoolLock::acquire(&root).unwrap();
    }

    #[test]
    fn a_starting_daemon_waits_for_a_command_but_not_for_a_daemon() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().to_path_buf();
        let command = SpoolLock::acquire_as(&root, "postsuper").unwrap();
        let me = std::process::id().to_string();
        assert_eq!(SpoolLock::holder(&root), Some(Holder { pid: me.clone(), role: "postsuper".into() }));
        let releaser = std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(300));
            drop(command);
        });
        let started = std::time::Instant::now();
        let mut told = None;
        let daemon = SpoolLock::acquire_waiting(&root, |h| told = Some(h.clone())).unwrap();
        releaser.join().unwrap();
        assert!(started.elapsed() >= Duration::from_millis(250), "did not wait");
        assert_eq!(told, Some(Holder { pid: me.clone(), role: "postsuper".into() }));
        let second = SpoolLock::acquire_waiting(&root, |_| panic!("waited for a daemon"));
        assert!(matches!(second, Err(LockError::Held { holder, .. }) if holder.is_daemon()));
        drop(daemon);
        assert_eq!(std::fs::read_to_string(root.join(LOCK_FILE)).unwrap(), "", "emptied on release");
    }

    #[test]
    fn a_symlink_in_place_of_the_lock_file_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let target = dir.path().join("victim");
        std::fs::write(&target, "keep\n").unwrap();
        std::os::unix::fs::symlink(&target, dir.path().join(LOCK_FILE)).unwrap();
        assert!(matches!(SpoolLock::acquire(dir.path()), Err(LockError::Io { .. })));
        assert_eq!(std::fs::read_to_string(&target).unwrap(), "keep\n");
    }

    #[test]
    fn the_refusal_names_the_linked_lock_file() {
        let dir = tempfile::tempdir().unwrap();
        std::os::unix::fs::symlink("/etc/passwd", dir.path().join(LOCK_FILE)).unwrap();
        let e = SpoolLock::acquire(dir.path()).unwrap_err().to_string();
        let name = format!("{}/{LOCK_FILE} is a symbolic link, not followed", dir.path().display());
        assert!(e.contains(&name), "{e}");
    }

    #[test]
    fn a_hard_link_in_place_of_the_lock_file_is_neither_locked_nor_truncated() {
        let dir = tempfile::tempdir().unwrap();
        let target = dir.path().join("victim");
        std::fs::write(&target, "keep\n").unwrap();
        let spool = dir.path().join("spool");
        std::fs::create_dir(&spool).unwrap();
        std::fs::hard_link(&target, spool.join(LOCK_FILE)).unwrap();
        match SpoolLock::acquire(&spool) {
            Err(LockError::Io { source, .. }) => assert!(source.to_string().contains("one link"), "{source}"),
            other => panic!("locked a hard link: {other:?}"),
        }
        assert_eq!(std::fs::read_to_string(&target).unwrap(), "keep\n");
    }
}
