//! Destinations: the next hops mail is queued for, each with its own
//! connection limit and backoff.
//!
//! A destination is a key naming a next hop (`relay` for the smarthosts,
//! `mx:example.org`, `smtp:[10.0.0.1]:25`, `maildir`). When a delivery
//! finds the next hop unreachable, the destination is marked down until its
//! retry time, and every other message for it is deferred without a
//! connection attempt until then: a thousand messages for a dead host cost
//! at most `limit` connection attempts per retry round, not a thousand.

use super::backoff;
use crate::clock::now_secs;
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

#[derive(Clone, Debug, Default)]
struct Health {
    failures: u32,
    down_until: Option<u64>,
    reason: String,
}

/// A `[[deliver.shaping]]` message rate: at most `max` messages started
/// in each window of `per`, counted from the first message of the window.
#[derive(Debug)]
struct Rate {
    max: u32,
    per: Duration,
    window: Mutex<(std::time::Instant, u32)>,
}

/// One next hop.
#[derive(Debug)]
pub(crate) struct Dest {
    pub(crate) key: String,
    slots: Arc<Semaphore>,
    health: Mutex<Health>,
    rate: Option<Rate>,
}

impl Dest {
    /// `Some((until, reason))` while the destination is marked down.
    pub(crate) fn down(&self) -> Option<(u64, String)> {
        let h = self.health.lock().unwrap_or_else(|e| e.into_inner());
        h.down_until.filter(|t| *t > now_secs()).map(|t| (t, h.reason.clone()))
    }

    /// Waits for one of the destination's connection slots.
    pub(crate) async fn slot(&self) -> OwnedSemaphorePermit {
        self.slots.clone().acquire_owned().await.expect("destination semaphores are never closed")
    }

    /// Counts one message against the destination's rate limit; when the
    /// window is full, `Err` with the Unix time the next one opens and the
    /// reason. Local throttling, not a failure of the destination: its
    /// health and backoff are left alone.
    pub(crate) fn admit(&self) -> Result<(), (u64, String)> {
        let Some(rate) = &self.rate else { return Ok(()) };
        let now = std::time::Instant::now();
        let mut w = rate.window.lock().unwrap_or_else(|e| e.into_inner());
        if now.duration_since(w.0) >= rate.per {
            *w = (now, 0);
        }
        if w.1 < rate.max {
            w.1 += 1;
            return Ok(());
        }
        let left = rate.per.saturating_sub(now.duration_since(w.0));
        let until = now_secs() + left.as_secs_f64().ceil().max(1.0) as u64;
        Err((until, format!("rate limit of {} messages per {}s reached", rate.max, rate.per.as_secs())))
    }

    /// Consecutive failures so far.
    pub(crate) fn failures(&self) -> u32 {
        self.health.lock().unwrap_or_else(|e| e.into_inner()).failures
    }

    /// The next hop answered: forget past failures.
    pub(crate) fn up(&self) {
        let mut h = self.health.lock().unwrap_or_else(|e| e.into_inner());
        if h.failures > 0 {
            tracing::info!("destination {}: reachable again", self.key);
        }
        *h = Health::default();
    }

    /// The next hop could not be reached: mark it down for the backoff of
    /// its failure count and return the time it is due again. Deliveries
    /// running in parallel report the same outage once.
    pub(crate) fn failed(&self, reason: &str, min: Duration, max: Duration) -> u64 {
        let now = now_secs();
        let mut h = self.health.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(until) = h.down_until.filter(|t| *t > now) {
            return until;
        }
        h.failures += 1;
        let wait = backoff::next(h.failures, min, max).as_secs().max(1);
        h.down_until = Some(now + wait);
        h.reason = reason.to_string();
        tracing::info!("destination {}: down ({reason}); deliveries suspended for {wait}s", self.key);
        now + wait
    }

    /// Forget the backoff (`postqueue -f`).
    pub(crate) fn reset(&self) {
        *self.health.lock().unwrap_or_else(|e| e.into_inner()) = Health::default();
    }
}

/// All destinations seen so far.
#[derive(Debug)]
pub(crate) struct Destinations {
    limit: usize,
    /// `[[deliver.shaping]]`, the first match per destination.
    shaping: Vec<crate::config::Shaping>,
    map: Mutex<HashMap<String, Arc<Dest>>>,
}

impl Destinations {
    #[cfg(test)]
    pub(crate) fn new(limit: usize) -> Destinations {
        Destinations::shaped(limit, Vec::new())
    }

    /// Destinations with the per-destination limits of `shaping`.
    pub(crate) fn shaped(limit: usize, shaping: Vec<crate::config::Shaping>) -> Destinations {
        Destinations { limit: limit.max(1), shaping, map: Mutex::new(HashMap::new()) }
    }

    /// The table under a reloaded configuration's limits: each known
    /// destination keeps its health (an outage's backoff), and starts with
    /// the new connection limit and a fresh rate window. Deliveries under
    /// way finish under the slots they hold.
    pub(crate) fn reshaped(&self, limit: usize, shaping: Vec<crate::config::Shaping>) -> Destinations {
        let fresh = Destinations::shaped(limit, shaping);
        for (key, old) in self.map.lock().unwrap_or_else(|e| e.into_inner()).iter() {
            let health = old.health.lock().unwrap_or_else(|e| e.into_inner()).clone();
            *fresh.get(key).health.lock().unwrap_or_else(|e| e.into_inner()) = health;
        }
        fresh
    }

    /// Whether a configuration with these limits needs a reshaped table.
    pub(crate) fn shaped_as(&self, limit: usize, shaping: &[crate::config::Shaping]) -> bool {
        self.limit == limit.max(1) && self.shaping == shaping
    }

    pub(crate) fn get(&self, key: &str) -> Arc<Dest> {
        let mut map = self.map.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(d) = map.get(key) {
            return d.clone();
        }
        // Healthy, idle destinations are forgotten so the table stays small.
        if map.len() > 10_000 {
            map.retain(|_, d| Arc::strong_count(d) > 1 || d.failures() > 0 || d.rate.is_some());
        }
        let shaping = self.shaping.iter().find(|s| s.matches(key));
        let rate = shaping.and_then(|s| {
            let window = Mutex::new((std::time::Instant::now(), 0));
            s.max_messages.map(|max| Rate { max, per: s.per, window })
        });
        let d = Arc::new(Dest {
            key: key.to_string(),
            slots: Arc::new(Semaphore::new(shaping.and_then(|s| s.max_connections).unwrap_or(self.limit).max(1))),
            health: Mutex::new(Health::default()),
            rate,
        });
        map.insert(key.to_string(), d.clone());
        d
    }

    pub(crate) fn reset_all(&self) {
        for d in self.map.lock().unwrap_or_else(|e| e.into_inner()).values() {
            d.reset();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_outage_counts_once_and_up_forgets_it() {
        let table = Destinations::new(2);
        let d = table.get("relay");
        assert!(d.down().is_none());
        let (min, max) = (Duration::from_secs(10), Duration::from_secs(100));
        let until = d.failed("refused", min, max);
        assert_eq!(d.failed("refused again", min, max), until, "a parallel report of the same outage");
        assert_eq!(d.failures(), 1);
        assert_eq!(d.down().map(|(_, r)| r), Some("refused".into()));
        d.up();
        assert!(d.down().is_none());
        assert!(Arc::ptr_eq(&d, &table.get("relay")));
    }

    #[tokio::test]
    async fn slots_bound_concurrency() {
        let table = Destinations::new(2);
        let d = table.get("mx:example.org");
        let a = d.slot().await;
        let _b = d.slot().await;
        assert!(tokio::time::timeout(Duration::from_millis(50), d.slot()).await.is_err());
        drop(a);
        assert!(tokio::time::timeout(Duration::from_millis(50), d.slot()).await.is_ok());
    }

    #[test]
    fn a_rate_limit_suspends_without_failing_the_destination() {
        let shaping = crate::config::Shaping {
            destination: "example.org".into(),
            max_connections: Some(1),
            max_messages: Some(2),
            per: Duration::from_secs(60),
            max_per_connection: None,
        };
        let table = Destinations::shaped(5, vec![shaping]);
        let d = table.get("mx:example.org");
        assert!(d.admit().is_ok() && d.admit().is_ok());
        let (until, why) = d.admit().unwrap_err();
        assert!(until > now_secs() && until <= now_secs() + 60, "{until}");
        assert_eq!(why, "rate limit of 2 messages per 60s reached");
        assert_eq!(d.failures(), 0);
        assert!(d.down().is_none());
        assert_eq!(d.slots.available_permits(), 1);
        assert!(table.get("mx:example.net").admit().is_ok());
        assert_eq!(table.get("mx:example.net").slots.available_permits(), 5);
    }
}
