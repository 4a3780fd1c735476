//! Queue ids: short, alphanumeric, unique, never reused, sortable by age.
//!
//! An id is the arrival time in microseconds since the Unix epoch, written
//! in base 36 (digits and upper-case letters) over ten characters. The
//! generator never hands out the same value twice: it takes the larger of
//! the clock and the last value plus one, and at start-up it is floored at the
//! newest id already in the spool, so a restart (or a clock stepped back)
//! cannot reuse an id that a queued message still carries. Ten base-36
//! characters last until the year 2084; fixed width keeps `ls` and `sort`
//! in arrival order. Valid in both worlds: no `-` (Exim's separator), no `*`
//! or `!` (Postfix's active and hold markers).
//!
//! The newest queued id is not enough once the queue is empty: a clock
//! stepped back across a restart would hand out ids that earlier, delivered
//! or deleted messages carried in logs and audit lines. So a spool's
//! generator keeps a lease (`SPOOL/id-lease`): every id it has handed out is
//! below the value stored there, durably, and start-up floors the generator
//! at it. The lease reaches an hour of clock time ahead, so keeping it
//! costs one synced write per hour, not per message.

use std::io::{self, Write};
use std::path::PathBuf;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

pub(crate) const LEN: usize = 10;
const ALPHABET: &[u8; 36] = b"0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZ";

/// How far past the newest id handed out a lease reaches.
const LEASE_AHEAD_US: u64 = 3600 * 1_000_000;

/// Hands out strictly increasing ids.
#[derive(Debug)]
pub(crate) struct IdGen {
    last: AtomicU64,
    lease: Option<Lease>,
}

/// The durable bound on the ids handed out (see the module comment).
#[derive(Debug)]
struct Lease {
    path: PathBuf,
    /// Every id handed out is below this; 0 until the first one.
    until: AtomicU64,
    writing: Mutex<()>,
}

impl IdGen {
    /// A generator whose ids all sort after `floor` (an existing id, or
    /// none), with no lease: for tests and tools that never keep ids.
    #[cfg(test)]
    pub(crate) fn new(floor: Option<&str>) -> IdGen {
        IdGen { last: AtomicU64::new(floor.and_then(decode).unwrap_or(0)), lease: None }
    }

    /// A generator floored at `floor` and at the lease stored at `path`,
    /// keeping that lease from its first id on. Reads only: opening a spool
    /// to list it writes nothing.
    pub(crate) fn leased(floor: Option<&str>, path: PathBuf) -> io::Result<IdGen> {
        let stored = match std::fs::read_to_string(&path) {
            Ok(text) => decode(text.trim()).ok_or_else(|| {
                io::Error::new(io::ErrorKind::InvalidData, format!("{}: not a queue id: {text:?}", path.display()))
            })?,
            Err(e) if e.kind() == io::ErrorKind::NotFound => 0,
            Err(e) => return Err(e),
        };
        let floor = floor.and_then(decode).unwrap_or(0).max(stored);
        let lease = Lease { path, until: AtomicU64::new(0), writing: Mutex::new(()) };
        Ok(IdGen { last: AtomicU64::new(floor), lease: Some(lease) })
    }

    pub(crate) fn next(&self) -> String {
        let now = SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_micros() as u64).unwrap_or(0);
        let mut prev = self.last.load(Ordering::Relaxed);
        let next = loop {
            let next = now.max(prev + 1);
            match self.last.compare_exchange_weak(prev, next, Ordering::Relaxed, Ordering::Relaxed) {
                Ok(_) => break next,
                Err(actual) => prev = actual,
            }
        };
        if let Some(lease) = &self.lease {
            lease.cover(next);
        }
        encode(next)
    }
}

impl Lease {
    /// Returns once `id` is below the stored lease, extending it first when
    /// needed (once an hour). Every caller past the old lease waits here, so
    /// no id at or past it leaves before the new one is durable. A lease
    /// that cannot be written is logged and the id used anyway: refusing
    /// mail would be worse than the small chance of a reused id after a
    /// crash, a clock stepped back and an empty queue all at once.
    fn cover(&self, id: u64) {
        if id < self.until.load(Ordering::Acquire) {
            return;
        }
        let _one_writer = self.writing.lock().unwrap_or_else(|e| e.into_inner());
        if id < self.until.load(Ordering::Acquire) {
            return;
        }
        let until = id.saturating_add(LEASE_AHEAD_US);
        match self.store(until) {
            Ok(()) => self.until.store(until, Ordering::Release),
            Err(e) => tracing::error!("cannot keep the queue id lease in {}: {e}", self.path.display()),
        }
    }

    /// Writes `until` durably: a new file synced, renamed over, directory synced.
    fn store(&self, until: u64) -> io::Result<()> {
        let tmp = self.path.with_extension("new");
        let mut file = std::fs::File::create(&tmp)?;
        file.write_all(format!("{}\n", encode(until)).as_bytes())?;
        file.sync_data()?;
        std::fs::rename(&tmp, &self.path)?;
        match self.path.parent() {
            Some(dir) => super::commit::sync_dir(dir),
            None => Ok(()),
        }
    }
}

pub(crate) fn encode(mut v: u64) -> String {
    let mut out = [b'0'; LEN];
    for slot in out.iter_mut().rev() {
        *slot = ALPHABET[(v % 36) as usize];
        v /= 36;
    }
    String::from_utf8(out.to_vec()).expect("ascii")
}

pub(crate) fn decode(id: &str) -> Option<u64> {
    if !is_valid(id) {
        return None;
    }
    id.bytes().try_fold(0u64, |acc, b| {
        let digit = match b {
            b'0'..=b'9' => b - b'0',
            b'A'..=b'Z' => b - b'A' + 10,
            _ => return None,
        };
        acc.checked_mul(36)?.checked_add(u64::from(digit))
    })
}

/// True for strings that can be queue ids; commands check ids with this
/// before they touch a path, so `../x` can never name a file.
pub(crate) fn is_valid(id: &str) -> bool {
    id.len() == LEN && id.bytes().all(|b| b.is_ascii_digit() || b.is_ascii_uppercase())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn roundtrip_and_order() {
        for v in [0u64, 1, 35, 36, 1_795_613_746_000_000, 3_656_158_440_062_975] {
            assert_eq!(decode(&encode(v)), Some(v));
        }
        let g = IdGen::new(None);
        let ids: Vec<String> = (0..1000).map(|_| g.next()).collect();
        let mut sorted = ids.clone();
        sorted.sort();
        sorted.dedup();
        assert_eq!(ids, sorted, "ids are unique and increasing");
        assert!(ids.iter().all(|i| is_valid(i)));
    }

    #[test]
    fn floor_is_respected() {
        let future = encode(u64::MAX / 1_000_000);
        let g = IdGen::new(Some(&future));
        assert!(g.next() > future);
    }

    #[test]
    fn the_lease_outlives_the_queue_and_a_clock_stepped_back() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("id-lease");
        let first = IdGen::leased(None, path.clone()).unwrap();
        assert!(!path.exists(), "opening writes nothing");
        let id = first.next();
        let stored = decode(std::fs::read_to_string(&path).unwrap().trim()).unwrap();
        assert!(stored > decode(&id).unwrap(), "the lease covers the id handed out");
        let writes = || std::fs::metadata(&path).unwrap().modified().unwrap();
        let before = writes();
        for _ in 0..1000 {
            first.next();
        }
        assert_eq!(writes(), before, "ids within the lease write nothing");
        // A restart with an empty queue (no floor from the spool): every new
        // id sorts after everything the lease may have covered.
        let again = IdGen::leased(None, path.clone()).unwrap();
        assert!(decode(&again.next()).unwrap() > stored);
        std::fs::write(&path, "junk\n").unwrap();
        let e = IdGen::leased(None, path).unwrap_err();
        assert!(e.to_string().contains("id-lease") && e.to_string().contains("not a queue id"), "{e}");
    }

    #[test]
    fn validity() {
        for (id, ok) in
            [("0ABCDEFGHI", true), ("0abcdefghi", false), ("../../etc/", false), ("0ABCDEFGH", false), ("", false)]
        {
            assert_eq!(is_valid(id), ok, "{id}");
        }
    }
}
