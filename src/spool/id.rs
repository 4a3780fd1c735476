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

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

pub const LEN: usize = 10;
const ALPHABET: &[u8; 36] = b"0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZ";

/// Hands out strictly increasing ids.
#[derive(Debug)]
pub struct IdGen {
    last: AtomicU64,
}

impl IdGen {
    /// A generator whose ids all sort after `floor` (an existing id, or none).
    pub fn new(floor: Option<&str>) -> IdGen {
        IdGen { last: AtomicU64::new(floor.and_then(decode).unwrap_or(0)) }
    }

    pub fn next(&self) -> String {
        let now = SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_micros() as u64).unwrap_or(0);
        let mut prev = self.last.load(Ordering::Relaxed);
        loop {
            let next = now.max(prev + 1);
            match self.last.compare_exchange_weak(prev, next, Ordering::Relaxed, Ordering::Relaxed) {
                Ok(_) => return encode(next),
                Err(actual) => prev = actual,
            }
        }
    }
}

pub fn encode(mut v: u64) -> String {
    let mut out = [b'0'; LEN];
    for slot in out.iter_mut().rev() {
        *slot = ALPHABET[(v % 36) as usize];
        v /= 36;
    }
    String::from_utf8(out.to_vec()).expect("ascii")
}

pub fn decode(id: &str) -> Option<u64> {
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
pub fn is_valid(id: &str) -> bool {
    id.len() == LEN && id.bytes().all(|b| b.is_ascii_digit() || b.is_ascii_uppercase())
}

/// Arrival time (seconds since the epoch) encoded in an id.
pub fn arrival_secs(id: &str) -> Option<u64> {
    decode(id).map(|us| us / 1_000_000)
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
    fn validity() {
        for (id, ok) in
            [("0ABCDEFGHI", true), ("0abcdefghi", false), ("../../etc/", false), ("0ABCDEFGH", false), ("", false)]
        {
            assert_eq!(is_valid(id), ok, "{id}");
        }
    }
}
