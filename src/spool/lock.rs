//! The spool lock: one daemon per spool.
//!
//! A second `posthorn serve` on a live spool would run crash recovery under
//! the running daemon's feet, deleting bodies it is still writing. So the
//! daemon takes an exclusive `flock` on `SPOOL/posthorn.lock` before
//! anything else touches the spool and holds it for its life; the kernel
//! drops it when the process dies, so a crash never leaves a stale lock.
//! The file holds the owner's pid, for the message the loser prints.

use rustix::fs::{FileType, FlockOperation, Mode, OFlags};
use std::fs::File;
use std::io::{self, Read, Seek, Write};
use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};

/// The lock file's name inside the spool.
pub(crate) const LOCK_FILE: &str = "posthorn.lock";

#[derive(Debug, thiserror::Error)]
pub(crate) enum LockError {
    #[error("the spool {} is in use by another posthorn (pid {pid})", spool.display())]
    Held { spool: PathBuf, pid: String },
    #[error("cannot lock the spool {}: {}", spool.display(), crate::message::outcome::strerror(source))]
    Io { spool: PathBuf, source: io::Error },
}

/// Held while the daemon runs; dropping it (or dying) releases the spool.
#[derive(Debug)]
pub(crate) struct SpoolLock {
    _file: File,
}

impl SpoolLock {
    /// Takes the spool at `root` or says who has it. Creates `root` when
    /// missing, and nothing else.
    pub(crate) fn acquire(root: &Path) -> Result<SpoolLock, LockError> {
        let io_err = |source| LockError::Io { spool: root.to_path_buf(), source };
        std::fs::create_dir_all(root).map_err(io_err)?;
        let mut file = open(root, OFlags::CREATE).map_err(io_err)?;
        if !try_lock(&file).map_err(io_err)? {
            return Err(LockError::Held { spool: root.to_path_buf(), pid: owner(&mut file) });
        }
        file.set_len(0).and_then(|()| file.rewind()).map_err(io_err)?;
        writeln!(file, "{}", std::process::id()).map_err(io_err)?;
        Ok(SpoolLock { _file: file })
    }

    /// The pid of the process holding the spool at `root`, if one does
    /// (`postfix start` asks before it starts a daemon). Changes nothing.
    pub(crate) fn holder(root: &Path) -> Option<String> {
        let mut file = open(root, OFlags::empty()).ok()?;
        // Locked for a moment by us, released when `file` closes.
        (!try_lock(&file).ok()?).then(|| owner(&mut file))
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

/// The pid the holder wrote, as text; `unknown` when unreadable.
fn owner(file: &mut File) -> String {
    let mut text = String::new();
    let _ = file.take(32).read_to_string(&mut text);
    let pid = text.trim();
    if !pid.is_empty() && pid.bytes().all(|b| b.is_ascii_digit()) { pid.to_string() } else { "unknown".into() }
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
            Err(LockError::Held { pid, .. }) => assert_eq!(pid, me),
            other => panic!("a second lock: {other:?}"),
        }
        assert_eq!(SpoolLock::holder(&root), Some(me));
        drop(lock);
        assert_eq!(SpoolLock::holder(&root), None);
        SpoolLock::acquire(&root).unwrap();
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
