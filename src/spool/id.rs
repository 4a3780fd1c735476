//! Queue ids: short, alphanumeric, unique, never reused, sortable by age.
//!
//! An id is the arrival time in microseconds since the Unix epoch, written
//! in base 31 over eleven characters, with the digits and the upper-case
//! consonants: `0123456789BCDFGHJKLMNPQRSTVWXYZ` (ASCII order, so a string
//! sort is a numeric sort), e.g. `25XB4Y9V5QX`. No vowels, because the log
//! tools that read Postfix logs (mailgraph, logwatch, exporters) accept a
//! queue id only if it is Postfix's short hex id or uses its vowel-free
//! long-id alphabet `[0-9B-DF-HJ-NP-TV-Zb-df-hj-np-tv-z]`; one case, because
//! `ls` and `sort` in en_US order mixed case differently from C. Eleven
//! base-31 characters last until the year 2775; fixed width keeps `ls` and
//! `sort` in arrival order. Valid in both worlds: no `-` (Exim's separator),
//! no `*` or `!` (Postfix's active and hold markers).
//!
//! Releases before this one wrote ten characters of base 36 (digits and
//! upper-case letters, `HOHQ7MHK1C`), which run out in 2085 and whose vowels
//! the log tools ignore. Such ids stay valid: a spool, a lease or a command
//! line may still hold them, and `decode` reads both forms into the same
//! microseconds. The lengths differ, so no string is an id in both forms.
//! Every new id is handed out after (and decodes greater than) every old
//! one, so arrival order is: old ids first, then by string (`arrival_key`).
//!
//! The generator never hands out the same value twice: it takes the larger
//! of the clock and the last value plus one, and at start-up it is floored
//! at the newest id already in the spool, so a restart (or a clock stepped
//! back) cannot reuse an id that a queued message still carries.
//!
//! The newest queued id is not enough once the queue is empty: a clock
//! stepped back across a restart would hand out ids that earlier, delivered
//! or deleted messages carried in logs and audit lines. So a spool's
//! generator keeps a lease (`SPOOL/id-lease`): every id it has handed out is
//! below the value stored there, durably, and start-up floors the generator
//! at it. The lease reaches an hour of clock time ahead, so keeping it
//! costs one synced write per hour, not per message. It is written in the
//! current form; one an earlier release wrote is read as it is.

use std::io::{self, Write};
use std::path::PathBuf;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

/// The width of the ids handed out.
pub(crate) const LEN: usize = 11;
/// Digits and upper-case consonants, in ASCII order.
const ALPHABET: &[u8; 31] = b"0123456789BCDFGHJKLMNPQRSTVWXYZ";
const BASE: u64 = ALPHABET.len() as u64;
/// The width of the ids of earlier releases: base 36, digits and upper-case letters.
const OLD_LEN: usize = 10;

/// How far past the newest id handed out a lease reaches.
const LEASE_AHEAD_US: u64 = 3600 * 1_000_000;

/// Hands out strictly increasing ids.
#[derive(Debug)]
pub(crate) struct IdGen {
    last: AtomicU64,
    /// The floor it started from: every id it hands out is above it.
    start: u64,
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
    /// A generator whose ids all decode above `floor` (an existing id, or
    /// none), with no lease: for tests and tools that never keep ids.
    #[cfg(test)]
    pub(crate) fn new(floor: Option<&str>) -> IdGen {
        let floor = floor.and_then(decode).unwrap_or(0);
        IdGen { last: AtomicU64::new(floor), start: floor, lease: None }
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
        Ok(IdGen { last: AtomicU64::new(floor), start: floor, lease: Some(lease) })
    }

    /// The floor it started from: every id it has handed out, or will,
    /// decodes above it.
    pub(crate) fn start(&self) -> u64 {
        self.start
    }

    /// Hands out only ids above `id` from now on (an id found in the spool
    /// after start-up). An id that does not decode changes nothing.
    pub(crate) fn raise_floor(&self, id: &str) {
        if let Some(value) = decode(id) {
            self.last.fetch_max(value, Ordering::Relaxed);
        }
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

/// `v` in the current form. Values from the year 2775 on (31^11
/// microseconds) no longer fit eleven characters and wrap.
pub(crate) fn encode(mut v: u64) -> String {
    let mut out = [b'0'; LEN];
    for slot in out.iter_mut().rev() {
        *slot = ALPHABET[(v % BASE) as usize];
        v /= BASE;
    }
    String::from_utf8(out.to_vec()).expect("ascii")
}

/// The microseconds an id of either form stands for; `None` for a string
/// that is not an id.
pub(crate) fn decode(id: &str) -> Option<u64> {
    if !is_valid(id) {
        return None;
    }
    let (base, digit): (u64, fn(u8) -> Option<u8>) = match id.len() {
        LEN => (BASE, |b| ALPHABET.iter().position(|a| *a == b).map(|p| p as u8)),
        _ => (36, |b| match b {
            b'0'..=b'9' => Some(b - b'0'),
            b'A'..=b'Z' => Some(b - b'A' + 10),
            _ => None,
        }),
    };
    id.bytes().try_fold(0u64, |acc, b| acc.checked_mul(base)?.checked_add(u64::from(digit(b)?)))
}

/// True for strings that can be queue ids, of either form; commands check
/// ids with this before they touch a path, so `../x` can never name a file.
pub(crate) fn is_valid(id: &str) -> bool {
    match id.len() {
        LEN => id.bytes().all(|b| ALPHABET.contains(&b)),
        OLD_LEN => id.bytes().all(|b| b.is_ascii_digit() || b.is_ascii_uppercase()),
        _ => false,
    }
}

/// Sorts valid ids in arrival order without decoding them: old-form ids
/// first (each was handed out before any new-form one, see the module
/// comment), then by string, which within one form is numeric order.
pub(crate) fn arrival_key(id: &str) -> (usize, &str) {
    (id.len(), id)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The pattern mailgraph (and logwatch) take a queue id from.
    const MAILGRAPH: &str = r"^(?:[\dA-F]+|[\dB-DF-HJ-NP-TV-Zb-df-hj-np-tv-z]+): client=";

    #[test]
    fn roundtrip_and_order() {
        let last = BASE.pow(LEN as u32) - 1;
        for (v, id) in [
            (0u64, "00000000000"),
            (1, "00000000001"),
            (30, "0000000000Z"),
            (31, "00000000010"),
            (1_795_615_149_306_288, "25XB4Y9V5QX"),
            (last, "ZZZZZZZZZZZ"),
        ] {
            assert_eq!(encode(v), id, "{v}");
            assert_eq!(decode(id), Some(v), "{id}");
        }
        // 31^11 microseconds reach past the year 2775.
        assert!(last / 1_000_000 > (2775 - 1970) * 365 * 86_400, "{last}");
        let g = IdGen::new(None);
        let ids: Vec<String> = (0..1000).map(|_| g.next()).collect();
        let mut sorted = ids.clone();
        sorted.sort();
        sorted.dedup();
        assert_eq!(ids, sorted, "ids are unique and increasing");
        let values: Vec<u64> = ids.iter().map(|i| decode(i).unwrap()).collect();
        assert!(values.windows(2).all(|w| w[0] < w[1]), "decoded values increase too");
        assert!(ids.iter().all(|i| i.len() == LEN && is_valid(i)));
    }

    #[test]
    fn the_alphabet_has_no_vowels_and_log_tools_take_every_id() {
        let mailgraph = regex::Regex::new(MAILGRAPH).unwrap();
        assert!(ALPHABET.windows(2).all(|w| w[0] < w[1]), "ASCII order: a string sort is a numeric sort");
        // Each symbol in every position (`dddddddddddd`), and an id of today.
        let ones = (BASE.pow(LEN as u32) - 1) / (BASE - 1);
        let g = IdGen::new(None);
        let ids = (0..BASE).map(|d| encode(d * ones)).chain([g.next()]);
        for id in ids {
            assert!(!id.bytes().any(|b| b"AEIOUaeiou".contains(&b)), "{id}");
            assert!(mailgraph.is_match(&format!("{id}: client=unknown[127.0.0.1]")), "{id}");
        }
        assert_eq!(encode(ones), "11111111111");
        // The ids earlier releases issued: mailgraph skips them.
        assert!(!mailgraph.is_match("HOHQ7MHK1C: client=unknown[127.0.0.1]"));
    }

    #[test]
    fn old_ids_decode_to_the_same_microseconds() {
        for (id, v) in [
            ("0000000001", 1u64),
            ("0000000010", 36),
            ("HOHQ7MHK1C", 1_795_615_149_306_288),
            ("ZZZZZZZZZZ", 36u64.pow(10) - 1),
        ] {
            assert!(is_valid(id), "{id}");
            assert_eq!(decode(id), Some(v), "{id}");
        }
        assert_eq!(decode("HOHQ7MHK1C"), decode("25XB4Y9V5QX"), "the same moment in both forms");
        // New ids are handed out after the old ones in the spool: arrival
        // order puts old ids first, where a string sort puts them last.
        let newest_old = decode("HORTZ59IUL").unwrap();
        let (a, b) = (encode(newest_old + 1), encode(newest_old + 2));
        let mut mixed = vec![b.as_str(), "HOHQ7MHK1C", a.as_str(), "0000000010", "HORTZ59IUL"];
        mixed.sort_by_key(|i| arrival_key(i));
        let values: Vec<u64> = mixed.iter().map(|i| decode(i).unwrap()).collect();
        assert!(values.windows(2).all(|w| w[0] < w[1]), "{mixed:?}");
    }

    #[test]
    fn floor_is_respected() {
        let future = encode(u64::MAX / 1_000_000);
        let g = IdGen::new(Some(&future));
        assert!(g.next() > future);
    }

    #[test]
    fn an_old_floor_holds_new_ids_above_it() {
        // An old-form id far in the future (2085): as a string it sorts
        // after every new id of this century, as a value it floors them.
        let g = IdGen::new(Some("ZZZZZZZZZZ"));
        let next = g.next();
        assert_eq!(next.len(), LEN);
        assert!(decode(&next).unwrap() > 36u64.pow(10) - 1, "{next}");
    }

    #[test]
    fn the_lease_outlives_the_queue_and_a_clock_stepped_back() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("id-lease");
        let first = IdGen::leased(None, path.clone()).unwrap();
        assert!(!path.exists(), "opening writes nothing");
        let id = first.next();
        let text = std::fs::read_to_string(&path).unwrap();
        assert_eq!(text.trim().len(), LEN, "the lease is written in the current form: {text:?}");
        let stored = decode(text.trim()).unwrap();
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
    fn mixed_floor_an_old_lease_and_a_new_spool_id() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("id-lease");
        // An earlier release's lease, a day ahead of its newest id; the
        // spool's newest id is a new-form one from before it.
        let old_lease = 1_796_406_985_418_925 + 86_400 * 1_000_000;
        let text = "HOSXO1LDIL";
        assert_eq!(decode(text), Some(old_lease));
        std::fs::write(&path, format!("{text}\n")).unwrap();
        let g = IdGen::leased(Some("25XB4Y9V5QX"), path.clone()).unwrap();
        let next = g.next();
        assert!(decode(&next).unwrap() > old_lease, "{next}");
        let stored = std::fs::read_to_string(&path).unwrap();
        assert_eq!(stored.trim().len(), LEN, "rewritten in the current form: {stored:?}");
        assert!(decode(stored.trim()).unwrap() > decode(&next).unwrap());
        // And the other way round: an old newest id above a new lease.
        std::fs::write(&path, "25XB4Y9V5QX\n").unwrap();
        let g = IdGen::leased(Some("ZZZZZZZZZZ"), path).unwrap();
        assert!(decode(&g.next()).unwrap() > 36u64.pow(10) - 1);
    }

    #[test]
    fn validity() {
        for (id, ok) in [
            ("25XB4Y9V5QX", true),
            ("ZZZZZZZZZZZ", true),
            ("25XB4Y9V5QA", false),
            ("25xb4y9v5qx", false),
            ("25XB4Y9V5QX0", false),
            ("0ABCDEFGHI", true),
            ("HOHQ7MHK1C", true),
            ("0abcdefghi", false),
            ("../../etc/", false),
            ("../../etc/x", false),
            ("0ABCDEFGH", false),
            ("", false),
        ] {
            assert_eq!(is_valid(id), ok, "{id}");
            assert_eq!(decode(id).is_some(), ok, "{id}");
        }
    }
}
