//! Per-client accounting for one listener, after Postfix's anvil: the
//! slots of `smtp.max_connections` with the share kept for trusted
//! networks (`smtp.trusted_reserve`), the connections each client has open
//! (`smtp.client_connection_limit`) and opened this minute
//! (`smtp.client_connection_rate_limit`), and the log lines that repeat for
//! a client, written once and then summarised (`smtp.repeat_log_interval`).
//!
//! A client is an IPv4 address or an IPv6 /64 (`auth::client_key`, the key
//! of the AUTH failure limit too). Clients in `access.trusted_networks` are
//! not counted: the per-client limits are there to keep strangers from
//! taking the hub from the fleet. The reserve is what makes that hold
//! against many addresses at once: eight addresses dripping one byte each
//! on 400 connections stay inside every per-client limit and would still
//! take every slot.
//!
//! Everything here is decided without I/O; the listener (`Server::run`)
//! writes the refusal and the log lines.

use crate::auth::client_key;
use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

/// The window `smtp.client_connection_rate_limit` counts in.
const RATE_WINDOW: Duration = Duration::from_secs(60);

/// Clients remembered beyond those with a connection open (which
/// `max_connections` bounds): past it, the rate counts of idle clients are
/// forgotten first, so a flood of addresses cannot exhaust memory.
const MAX_TRACKED: usize = 10_000;

/// The per-client limits in force for a connection; `None` for a trusted
/// client, which has none.
#[derive(Clone, Copy, Debug)]
pub(super) struct Limits {
    /// Connections open at once; 0: no limit.
    pub(super) count: u32,
    /// New connections per minute; 0: no limit.
    pub(super) rate: u32,
}

/// Why a connection is turned away.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Refusal {
    /// Every slot is taken.
    Full,
    /// The slots left (this many) are reserved for trusted networks.
    Reserved(usize),
    /// The client has this many connections open, its limit.
    Count(u32),
    /// The client opened more than this many connections this minute.
    Rate(u32),
}

impl Refusal {
    /// What the log line says after `connect from unknown[IP]: `.
    pub(super) fn describe(self) -> String {
        match self {
            Refusal::Full => "too many connections".into(),
            Refusal::Reserved(n) => format!("too many connections (the {n} left are reserved for trusted networks)"),
            Refusal::Count(limit) => format!("too many connections from this client (limit {limit})"),
            Refusal::Rate(limit) => format!("too many new connections from this client (limit {limit} a minute)"),
        }
    }

    /// Whether the client itself is over a limit (rather than the listener).
    pub(super) fn is_per_client(self) -> bool {
        matches!(self, Refusal::Count(_) | Refusal::Rate(_))
    }
}

/// What is known of one client.
#[derive(Debug)]
struct Client {
    open: u32,
    /// Connections opened (refused ones included) since `since`.
    opened: u32,
    since: Instant,
}

#[derive(Debug)]
struct Clients {
    map: HashMap<IpAddr, Client>,
    swept: Instant,
}

/// The slots and the per-client counts of one listener.
#[derive(Debug)]
pub(super) struct Anvil {
    slots: Arc<Semaphore>,
    reserve: usize,
    clients: Arc<Mutex<Clients>>,
}

/// A connection's hold on its slot and on its client's count; dropping it,
/// when the session ends, gives both back.
#[derive(Debug)]
pub(super) struct Pass {
    _slot: OwnedSemaphorePermit,
    counted: Option<(IpAddr, Arc<Mutex<Clients>>)>,
}

impl Drop for Pass {
    fn drop(&mut self) {
        if let Some((key, clients)) = &self.counted
            && let Some(client) = lock(clients).map.get_mut(key)
        {
            client.open -= 1;
        }
    }
}

fn lock(clients: &Mutex<Clients>) -> MutexGuard<'_, Clients> {
    clients.lock().unwrap_or_else(|e| e.into_inner())
}

impl Anvil {
    /// `max_connections` slots, `reserve` of them for trusted clients only
    /// (the configuration guarantees `reserve < max_connections`).
    pub(super) fn new(max_connections: usize, reserve: usize, now: Instant) -> Anvil {
        let clients = Clients { map: HashMap::new(), swept: now };
        Anvil { slots: Arc::new(Semaphore::new(max_connections)), reserve, clients: Arc::new(Mutex::new(clients)) }
    }

    /// Whether every slot is taken: the listener then accepts nothing
    /// until `slot_freed`.
    pub(super) fn full(&self) -> bool {
        self.slots.available_permits() == 0
    }

    /// Returns once a slot is free. Only the accept loop takes slots, so
    /// it is still free when the loop gets to `admit`.
    pub(super) async fn slot_freed(&self) {
        // Closed never: the semaphore lives as long as the anvil.
        let _ = self.slots.acquire().await;
    }

    /// Admits a connection from `ip`: a trusted client (`limits` is `None`)
    /// to any free slot, another only within its limits and while more
    /// than the reserve is free, whoever holds the rest: so the reserve is
    /// there for trusted clients at any moment. The attempt counts toward the client's rate even when it is
    /// refused, as Postfix counts it: a client hammering a full listener
    /// stays refused.
    ///
    /// Called from the accept loop only, so no slot is taken between the
    /// check of the free slots and the taking (sessions only give back).
    pub(super) fn admit(&self, ip: IpAddr, limits: Option<Limits>, now: Instant) -> Result<Pass, Refusal> {
        let Some(limits) = limits else {
            let slot = self.slots.clone().try_acquire_owned().map_err(|_| Refusal::Full)?;
            return Ok(Pass { _slot: slot, counted: None });
        };
        let key = client_key(ip);
        let mut clients = lock(&self.clients);
        clients.sweep(now);
        let client = clients.map.entry(key).or_insert(Client { open: 0, opened: 0, since: now });
        if now.duration_since(client.since) >= RATE_WINDOW {
            client.since = now;
            client.opened = 0;
        }
        client.opened = client.opened.saturating_add(1);
        if limits.rate > 0 && client.opened > limits.rate {
            return Err(Refusal::Rate(limits.rate));
        }
        if limits.count > 0 && client.open >= limits.count {
            return Err(Refusal::Count(limits.count));
        }
        let free = self.slots.available_permits();
        if free <= self.reserve {
            return Err(if free == 0 { Refusal::Full } else { Refusal::Reserved(free) });
        }
        let slot = self.slots.clone().try_acquire_owned().map_err(|_| Refusal::Full)?;
        client.open += 1;
        Ok(Pass { _slot: slot, counted: Some((key, self.clients.clone())) })
    }
}

impl Clients {
    /// Forgets the clients with nothing open whose minute is over: once a
    /// minute, or sooner when more than `MAX_TRACKED` are remembered, and
    /// then, if still too many, every idle one.
    fn sweep(&mut self, now: Instant) {
        let due = now.duration_since(self.swept) >= RATE_WINDOW;
        if !due && self.map.len() < MAX_TRACKED {
            return;
        }
        self.swept = now;
        self.map.retain(|_, c| c.open > 0 || now.duration_since(c.since) < RATE_WINDOW);
        if self.map.len() >= MAX_TRACKED {
            self.map.retain(|_, c| c.open > 0);
        }
    }
}

/// A kind of log line that repeats for a client.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub(crate) enum Topic {
    /// A connection turned away by the listener.
    Refused,
    /// A RCPT beyond `smtp.max_recipients`.
    TooManyRecipients,
}

/// The log lines of one topic for one client since the last one written.
#[derive(Debug)]
struct Burst {
    since: Instant,
    suppressed: u64,
}

/// Repeated log lines per client: the first of a burst is written, the
/// rest are counted, and a summary ("N more suppressed") is written once
/// per interval while the burst goes on. A flood from one client thus costs
/// a line or two a minute, not one line per connection (issue 12 saw 201 k
/// lines in 7 minutes of slowloris).
#[derive(Debug)]
pub(crate) struct RepeatLog {
    interval: Duration,
    bursts: Mutex<HashMap<(IpAddr, Topic), Burst>>,
}

impl RepeatLog {
    /// Summaries every `interval`; zero writes every line.
    pub(crate) fn new(interval: Duration) -> RepeatLog {
        RepeatLog { interval, bursts: Mutex::new(HashMap::new()) }
    }

    /// How often `summarise` should run.
    pub(super) fn interval(&self) -> Duration {
        self.interval
    }

    fn lock(&self) -> MutexGuard<'_, HashMap<(IpAddr, Topic), Burst>> {
        self.bursts.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Whether the line on `topic` about client `ip` is to be written: yes
    /// for the first of a burst, otherwise it is counted for the summary.
    /// A burst whose interval is over and that `summarise` has not seen yet
    /// is summarised here.
    pub(crate) fn first(&self, ip: IpAddr, topic: Topic, now: Instant) -> bool {
        if self.interval.is_zero() {
            return true;
        }
        let key = (client_key(ip), topic);
        let mut bursts = self.lock();
        if bursts.len() >= MAX_TRACKED && !bursts.contains_key(&key) {
            // Too many clients at once to tell repeats apart: write.
            return true;
        }
        let Some(burst) = bursts.get_mut(&key) else {
            bursts.insert(key, Burst { since: now, suppressed: 0 });
            return true;
        };
        if now.duration_since(burst.since) < self.interval {
            burst.suppressed += 1;
            return false;
        }
        // The burst is over; a quiet one ends, a busy one goes on.
        let continued = burst.suppressed > 0;
        summary(key, burst.suppressed, self.interval);
        *burst = Burst { since: now, suppressed: u64::from(continued) };
        !continued
    }

    /// Writes the summary of every burst whose interval is over and
    /// forgets the clients that went quiet.
    pub(super) fn summarise(&self, now: Instant) {
        let mut bursts = self.lock();
        bursts.retain(|key, burst| {
            if now.duration_since(burst.since) < self.interval {
                return true;
            }
            if burst.suppressed == 0 {
                return false;
            }
            summary(*key, burst.suppressed, self.interval);
            *burst = Burst { since: now, suppressed: 0 };
            true
        });
    }
}

/// The summary line of a burst, in the shape of the lines it stands for.
fn summary((key, topic): (IpAddr, Topic), suppressed: u64, interval: Duration) {
    if suppressed == 0 {
        return;
    }
    let client = match key {
        IpAddr::V4(v4) => v4.to_string(),
        IpAddr::V6(v6) => format!("{v6}/64"),
    };
    match topic {
        Topic::Refused => {
            tracing::warn!(
                "connect from unknown[{client}]: refused; {suppressed} more suppressed in the last {interval:?}"
            )
        }
        Topic::TooManyRecipients => tracing::info!(
            "RCPT from unknown[{client}]: too many recipients; {suppressed} more suppressed in the last {interval:?}"
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const NO_LIMITS: Limits = Limits { count: 0, rate: 0 };

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn per_client_count_is_given_back_when_a_session_ends() {
        let now = Instant::now();
        let anvil = Anvil::new(100, 0, now);
        let limits = Some(Limits { count: 2, rate: 0 });
        let a = anvil.admit(ip("192.0.2.1"), limits, now).unwrap();
        let _b = anvil.admit(ip("192.0.2.1"), limits, now).unwrap();
        assert_eq!(anvil.admit(ip("192.0.2.1"), limits, now).unwrap_err(), Refusal::Count(2));
        assert_eq!(anvil.admit(ip("::ffff:192.0.2.1"), limits, now).unwrap_err(), Refusal::Count(2), "IPv4-mapped");
        assert!(anvil.admit(ip("192.0.2.2"), limits, now).is_ok(), "another client");
        drop(a);
        assert!(anvil.admit(ip("192.0.2.1"), limits, now).is_ok(), "a slot given back");
    }

    #[test]
    fn ipv6_clients_are_counted_by_their_64() {
        let now = Instant::now();
        let anvil = Anvil::new(100, 0, now);
        let limits = Some(Limits { count: 1, rate: 0 });
        let _a = anvil.admit(ip("2001:db8:1:2::1"), limits, now).unwrap();
        assert_eq!(anvil.admit(ip("2001:db8:1:2:ffff::9"), limits, now).unwrap_err(), Refusal::Count(1));
        assert!(anvil.admit(ip("2001:db8:1:3::1"), limits, now).is_ok(), "another /64");
    }

    #[test]
    fn rate_counts_attempts_per_minute() {
        let start = Instant::now();
        let anvil = Anvil::new(100, 0, start);
        let limits = Some(Limits { count: 0, rate: 3 });
        for n in 0..3 {
            drop(anvil.admit(ip("192.0.2.1"), limits, start + Duration::from_secs(n)).unwrap());
        }
        assert_eq!(anvil.admit(ip("192.0.2.1"), limits, start + Duration::from_secs(5)).unwrap_err(), Refusal::Rate(3));
        assert!(anvil.admit(ip("192.0.2.2"), limits, start + Duration::from_secs(5)).is_ok());
        assert!(anvil.admit(ip("192.0.2.1"), limits, start + RATE_WINDOW).is_ok(), "a new minute");
    }

    #[test]
    fn the_reserve_is_for_trusted_clients_only() {
        let now = Instant::now();
        let anvil = Anvil::new(4, 2, now);
        let strangers: Vec<Pass> =
            (1..=2).map(|n| anvil.admit(ip(&format!("192.0.2.{n}")), Some(NO_LIMITS), now).unwrap()).collect();
        assert_eq!(anvil.admit(ip("192.0.2.9"), Some(NO_LIMITS), now).unwrap_err(), Refusal::Reserved(2));
        let trusted: Vec<Pass> = (0..2).map(|_| anvil.admit(ip("10.0.0.1"), None, now).unwrap()).collect();
        assert_eq!(anvil.admit(ip("10.0.0.1"), None, now).unwrap_err(), Refusal::Full);
        assert_eq!(anvil.admit(ip("192.0.2.9"), Some(NO_LIMITS), now).unwrap_err(), Refusal::Full);
        // The reserve is kept free whoever holds the other slots.
        drop(strangers);
        assert_eq!(anvil.admit(ip("192.0.2.9"), Some(NO_LIMITS), now).unwrap_err(), Refusal::Reserved(2));
        drop(trusted);
        assert!(anvil.admit(ip("192.0.2.9"), Some(NO_LIMITS), now).is_ok());
    }

    #[test]
    fn idle_clients_are_forgotten_after_their_minute() {
        let start = Instant::now();
        let anvil = Anvil::new(10, 0, start);
        let limits = Some(Limits { count: 5, rate: 100 });
        let held = anvil.admit(ip("192.0.2.1"), limits, start).unwrap();
        drop(anvil.admit(ip("192.0.2.2"), limits, start).unwrap());
        assert_eq!(lock(&anvil.clients).map.len(), 2);
        drop(anvil.admit(ip("192.0.2.3"), limits, start + RATE_WINDOW).unwrap());
        let remembered: Vec<IpAddr> = lock(&anvil.clients).map.keys().copied().collect();
        assert!(remembered.contains(&ip("192.0.2.1")) && !remembered.contains(&ip("192.0.2.2")), "{remembered:?}");
        drop(held);
    }

    #[test]
    fn repeated_lines_are_written_once_per_burst() {
        let start = Instant::now();
        let log = RepeatLog::new(Duration::from_secs(60));
        let at = |s: u64| start + Duration::from_secs(s);
        let a = ip("192.0.2.1");
        assert!(log.first(a, Topic::Refused, at(0)));
        assert!(!log.first(a, Topic::Refused, at(1)));
        assert!(!log.first(ip("::ffff:192.0.2.1"), Topic::Refused, at(2)));
        assert!(log.first(a, Topic::TooManyRecipients, at(2)), "another topic");
        assert!(log.first(ip("192.0.2.2"), Topic::Refused, at(2)), "another client");
        // The busy burst is summarised and goes on; the quiet ones end.
        log.summarise(at(61));
        assert!(!log.first(a, Topic::Refused, at(62)));
        assert!(log.first(ip("192.0.2.2"), Topic::Refused, at(62)));
        // Without a summary run, the next line after the interval does it.
        assert!(!log.first(a, Topic::Refused, at(130)), "still busy");
        log.summarise(at(200));
        log.summarise(at(300));
        assert!(log.first(a, Topic::Refused, at(301)), "quiet for a whole interval");
        assert_eq!(log.lock().len(), 1);
    }

    #[test]
    fn a_zero_interval_writes_every_line() {
        let log = RepeatLog::new(Duration::ZERO);
        let now = Instant::now();
        assert!((0..3).all(|_| log.first(ip("192.0.2.1"), Topic::Refused, now)));
    }
}
