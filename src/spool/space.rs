//! Room on the spool's filesystem, and whether the spool's writes fail.
//!
//! Postfix's `queue_minfree` is the model: new mail is refused while the
//! filesystem has less than `queue.min_free` available, so that the mail
//! already queued can still be deferred (envelopes rewritten through `tmp/`)
//! and bounced (notices are new messages): a disk filled to the last block
//! by new mail would stall everything queued. The free space is asked with
//! `statvfs` at most once a second, however many sessions ask, and the
//! moments the spool runs low and recovers are logged once each, not once
//! per refused message.
//!
//! Writes that fail (no space, an I/O error, a filesystem remounted
//! read-only) are remembered until one succeeds, and for at most
//! `FAILURE_MEMORY`: `/health` reports both conditions, so an operator sees
//! a stalled spool instead of `200 ok`.

use std::io;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

/// `queue.min_free` when not configured: 100 MiB ...
pub(crate) const DEFAULT_MIN_FREE: u64 = 100 << 20;
/// ... but never more than this share of the filesystem (1/20: 5%), so that
/// a small spool filesystem is not refused mail while nearly empty.
const DEFAULT_SHARE: u64 = 20;
/// How long one `statvfs` answer is used.
const FRESH: Duration = Duration::from_secs(1);
/// How long a failed write keeps the spool reported unhealthy when no
/// write succeeds after it (and none is tried).
const FAILURE_MEMORY: Duration = Duration::from_secs(60);

/// Space on the spool's filesystem, in bytes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Free {
    /// Available to an unprivileged writer (`f_bavail`): root's reserve is
    /// not counted, so the check holds whichever account the daemon runs as.
    pub(crate) available: u64,
    pub(crate) total: u64,
}

/// Why new mail is refused for lack of room.
#[derive(Debug, thiserror::Error)]
#[error("{} available on the spool's filesystem, below queue.min_free ({})", mib(*available), mib(*min_free))]
pub(crate) struct NoRoom {
    pub(crate) available: u64,
    pub(crate) min_free: u64,
}

/// The threshold in force: the configured `min_free`, or the default for a
/// filesystem of `total` bytes.
pub(crate) fn threshold(min_free: Option<u64>, total: u64) -> u64 {
    min_free.unwrap_or_else(|| DEFAULT_MIN_FREE.min(total / DEFAULT_SHARE))
}

/// The spool's view of its filesystem; one per spool.
#[derive(Debug)]
pub(crate) struct Space {
    root: PathBuf,
    checked: Mutex<Option<(Instant, Free)>>,
    /// Whether the last check found too little room (for logging the change).
    low: AtomicBool,
    /// The last failed write, until a write succeeds.
    failure: Mutex<Option<(Instant, String)>>,
}

impl Space {
    pub(crate) fn new(root: &Path) -> Space {
        Space {
            root: root.to_path_buf(),
            checked: Mutex::new(None),
            low: AtomicBool::new(false),
            failure: Mutex::new(None),
        }
    }

    /// The filesystem's space, asked at most once a second.
    pub(crate) fn free(&self) -> io::Result<Free> {
        let mut checked = self.checked.lock().unwrap_or_else(|e| e.into_inner());
        if let Some((at, free)) = *checked
            && at.elapsed() < FRESH
        {
            return Ok(free);
        }
        let vfs = rustix::fs::statvfs(&self.root)?;
        let free = Free { available: vfs.f_bavail * vfs.f_frsize, total: vfs.f_blocks * vfs.f_frsize };
        *checked = Some((Instant::now(), free));
        Ok(free)
    }

    /// Whether new mail may come in: at least the threshold of `min_free`
    /// available. When the space cannot be learned the answer is yes: the
    /// commit itself will tell.
    pub(crate) fn room(&self, min_free: Option<u64>) -> Result<(), NoRoom> {
        let free = match self.free() {
            Ok(free) => free,
            Err(e) => {
                tracing::warn!("cannot learn the free space of the spool {}: {e}", self.root.display());
                return Ok(());
            }
        };
        let min_free = threshold(min_free, free.total);
        let low = free.available < min_free;
        if self.low.swap(low, Ordering::Relaxed) != low {
            if low {
                tracing::error!(
                    "spool {}: {} available, below queue.min_free ({}): new mail is refused with 452 4.3.1 \
                     and the maildrop waits until space is freed",
                    self.root.display(),
                    mib(free.available),
                    mib(min_free)
                );
            } else {
                tracing::info!(
                    "spool {}: {} available again: new mail is accepted",
                    self.root.display(),
                    mib(free.available)
                );
            }
        }
        if low { Err(NoRoom { available: free.available, min_free }) } else { Ok(()) }
    }

    /// Notes how a spool write ended: a failure is remembered (and the
    /// cached free space forgotten, it is likely to have changed), a
    /// success clears it. A missing file is no failure of the disk.
    pub(crate) fn wrote<T>(&self, result: &io::Result<T>) {
        let mut failure = self.failure.lock().unwrap_or_else(|e| e.into_inner());
        match result {
            Ok(_) => *failure = None,
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => {
                *failure = Some((Instant::now(), describe(e)));
                *self.checked.lock().unwrap_or_else(|e| e.into_inner()) = None;
            }
        }
    }

    /// The last write's failure, while no write has succeeded since and it
    /// is recent.
    pub(crate) fn failing(&self) -> Option<String> {
        let failure = self.failure.lock().unwrap_or_else(|e| e.into_inner());
        failure.as_ref().filter(|(at, _)| at.elapsed() < FAILURE_MEMORY).map(|(_, why)| why.clone())
    }
}

/// An I/O error for a log line: its text and the errno's name, which is
/// what an operator searches for (`ENOSPC`, `EIO`).
pub(crate) fn describe(e: &io::Error) -> String {
    match e.raw_os_error() {
        Some(code) => format!("{e}, {}", errno_name(code)),
        None => e.to_string(),
    }
}

/// Whether `e` says the filesystem (or the account's quota) is full.
pub(crate) fn is_full(e: &io::Error) -> bool {
    matches!(e.raw_os_error(), Some(libc::ENOSPC | libc::EDQUOT))
}

fn errno_name(code: i32) -> String {
    let name = match code {
        libc::ENOSPC => "ENOSPC",
        libc::EDQUOT => "EDQUOT",
        libc::EIO => "EIO",
        libc::EROFS => "EROFS",
        libc::EACCES => "EACCES",
        libc::EPERM => "EPERM",
        libc::ENOENT => "ENOENT",
        libc::EMFILE => "EMFILE",
        libc::ENFILE => "ENFILE",
        libc::EFBIG => "EFBIG",
        libc::EUCLEAN => "EUCLEAN",
        _ => return format!("errno {code}"),
    };
    name.to_string()
}

/// Bytes for a log line, in MiB with one decimal.
fn mib(bytes: u64) -> String {
    format!("{:.1} MiB", bytes as f64 / (1 << 20) as f64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_default_threshold_is_100_mib_or_5_percent() {
        let cases = [
            (None, 100 << 30, 100 << 20),
            (None, 1 << 30, (1 << 30) / 20),
            (None, 32 << 20, (32 << 20) / 20),
            (Some(0), 100 << 30, 0),
            (Some(7 << 20), 1 << 20, 7 << 20),
        ];
        for (min_free, total, expected) in cases {
            assert_eq!(threshold(min_free, total), expected, "{min_free:?} of {total}");
        }
    }

    #[test]
    fn room_and_failures() {
        let dir = tempfile::tempdir().unwrap();
        let space = Space::new(dir.path());
        let free = space.free().unwrap();
        assert!(free.total >= free.available && free.total > 0, "{free:?}");
        assert!(space.room(Some(0)).is_ok());
        let refused = space.room(Some(u64::MAX)).unwrap_err();
        assert_eq!(refused.min_free, u64::MAX);
        assert!(refused.to_string().contains("below queue.min_free"), "{refused}");

        assert_eq!(space.failing(), None);
        space.wrote::<()>(&Err(io::Error::from_raw_os_error(libc::ENOSPC)));
        let why = space.failing().unwrap();
        assert!(why.contains("ENOSPC") && why.contains("os error 28"), "{why}");
        space.wrote::<()>(&Err(io::ErrorKind::NotFound.into()));
        assert!(space.failing().is_some(), "a missing file says nothing about the disk");
        space.wrote(&Ok(()));
        assert_eq!(space.failing(), None);
    }

    #[test]
    fn errors_name_their_errno() {
        assert!(describe(&io::Error::from_raw_os_error(libc::EIO)).ends_with(", EIO"));
        assert!(describe(&io::Error::from_raw_os_error(4095)).ends_with(", errno 4095"));
        assert_eq!(describe(&io::Error::other("x")), "x");
        assert!(is_full(&io::Error::from_raw_os_error(libc::ENOSPC)));
        assert!(!is_full(&io::Error::from_raw_os_error(libc::EIO)));
    }
}
