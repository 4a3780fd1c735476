//! Happy Eyeballs (RFC 8305) for outbound SMTP: the addresses of one host
//! are raced rather than tried one after the other, so an IPv6 path that
//! swallows SYNs costs a quarter of a second, not the whole connect
//! timeout.
//!
//! The addresses are put in RFC 8305 4's order (families interleaved, IPv6
//! first, each family in the resolver's order); the first attempt starts at
//! once, and each next one when the previous has not connected within the
//! connection attempt delay (`deliver.connection_attempt_delay`), or at once
//! when it failed. The first TCP connection made wins; attempts still
//! running are dropped (their sockets closed). Each attempt keeps its own
//! connect timeout. Only TCP is raced: the SMTP greeting and EHLO happen on
//! the winner, and the caller goes on to the addresses left when that
//! session fails.

use crate::smtp::client::ClientError;
use std::future::Future;
use std::net::SocketAddr;
use std::time::Duration;
use tokio::net::TcpStream;
use tokio::task::JoinSet;

/// What one race came to.
#[derive(Debug, Default)]
pub(crate) struct Race {
    /// The first address that connected, and its connection.
    pub(crate) winner: Option<(SocketAddr, TcpStream)>,
    /// Addresses whose attempt failed, in the order they failed.
    pub(crate) failed: Vec<(SocketAddr, ClientError)>,
    /// Addresses still connecting when another won; given up on.
    pub(crate) abandoned: Vec<SocketAddr>,
}

impl Race {
    /// Attempts started (each costs the caller's session budget).
    pub(crate) fn started(&self) -> usize {
        self.failed.len() + self.abandoned.len() + usize::from(self.winner.is_some())
    }
}

/// RFC 8305 4: IPv6 first, then the families alternating, each family's
/// addresses in the order given.
pub(crate) fn interleave(addrs: Vec<SocketAddr>) -> Vec<SocketAddr> {
    let (v6, v4): (Vec<SocketAddr>, Vec<SocketAddr>) = addrs.into_iter().partition(SocketAddr::is_ipv6);
    let mut out = Vec::with_capacity(v6.len() + v4.len());
    let (mut a, mut b) = (v6.into_iter(), v4.into_iter());
    loop {
        match (a.next(), b.next()) {
            (None, None) => return out,
            (x, y) => out.extend(x.into_iter().chain(y)),
        }
    }
}

/// Races `addrs` in this order, starting one every `delay` (at once after a
/// failure); `connect` makes one attempt, bounded by its own timeout.
pub(crate) async fn race<F, Fut>(addrs: &[SocketAddr], delay: Duration, connect: F) -> Race
where
    F: Fn(SocketAddr) -> Fut,
    Fut: Future<Output = Result<TcpStream, ClientError>> + Send + 'static,
{
    let mut race = Race::default();
    let mut running: JoinSet<(SocketAddr, Result<TcpStream, ClientError>)> = JoinSet::new();
    let mut pending: Vec<SocketAddr> = Vec::new();
    let mut next = addrs.iter().copied();
    let mut upcoming = next.next();
    let mut start_at = tokio::time::Instant::now();
    loop {
        // Start the next attempt when it is due, or at once when nothing
        // is left running.
        if let Some(addr) = upcoming
            && (running.is_empty() || tokio::time::Instant::now() >= start_at)
        {
            let attempt = connect(addr);
            running.spawn(async move { (addr, attempt.await) });
            pending.push(addr);
            upcoming = next.next();
            start_at = tokio::time::Instant::now() + delay;
        }
        if running.is_empty() {
            return race;
        }
        tokio::select! {
            joined = running.join_next() => {
                let Some(Ok((addr, result))) = joined else { continue };
                pending.retain(|a| *a != addr);
                match result {
                    Ok(stream) => {
                        race.winner = Some((addr, stream));
                        race.abandoned = pending;
                        // Dropping the set aborts the others.
                        running.abort_all();
                        return race;
                    }
                    Err(e) => {
                        race.failed.push((addr, e));
                        // RFC 8305 5: a failure starts the next one now.
                        start_at = tokio::time::Instant::now();
                    }
                }
            }
            () = tokio::time::sleep_until(start_at), if upcoming.is_some() => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn a(s: &str) -> SocketAddr {
        s.parse().unwrap()
    }

    #[test]
    fn families_alternate_ipv6_first() {
        let given = vec![a("192.0.2.1:25"), a("192.0.2.2:25"), a("192.0.2.3:25"), a("[2001:db8::1]:25")];
        let want = vec![a("[2001:db8::1]:25"), a("192.0.2.1:25"), a("192.0.2.2:25"), a("192.0.2.3:25")];
        assert_eq!(interleave(given), want);
        let only4 = vec![a("192.0.2.1:25"), a("192.0.2.2:25")];
        assert_eq!(interleave(only4.clone()), only4);
    }

    #[tokio::test]
    async fn a_refusal_starts_the_next_at_once_and_the_first_connection_wins() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let up = listener.local_addr().unwrap();
        // A port nobody listens on: bound, then closed.
        let down = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap().local_addr().unwrap();
        let connect = |a| crate::smtp::client::Client::tcp(a, None, Duration::from_secs(5));
        let started = std::time::Instant::now();
        // A delay far longer than the test: only the refusal can start
        // the second attempt this soon.
        let race = race(&[down, up, down], Duration::from_secs(30), connect).await;
        assert!(started.elapsed() < Duration::from_secs(5));
        assert_eq!(race.winner.as_ref().map(|w| w.0), Some(up));
        assert_eq!(race.failed.iter().map(|f| f.0).collect::<Vec<_>>(), vec![down]);
        assert!(race.abandoned.is_empty());
        assert_eq!(race.started(), 2, "the third address was never needed");
        let race = super::race(&[down], Duration::from_millis(10), connect).await;
        assert!(race.winner.is_none() && race.failed.len() == 1);
    }
}
