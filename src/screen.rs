//! postscreen's tests for the SMTP server (issue 16, `[screen]`): the DNS
//! lists and their weights, and the per-client memory of the results.
//! The session runs them through `smtp::server::screen`: the lists are
//! asked at connect, in parallel and under one deadline, while the
//! greeting (and its pregreet wait) goes on; the score is needed only at
//! the first RCPT.
//!
//! A client's score is the sum of the weights of the entries whose list
//! answered with an address its filter admits; at `dnsbl_threshold` or
//! above it is refused, and the reply names the list that weighed most.
//! Allowlists have negative weights and pull the score down. A list that
//! does not answer in time, or answers with an error, counts as not
//! listing the client (postscreen does the same), and the score is then
//! not remembered, so that the next connection asks again.

use crate::config::{Config, DnsblSite, ScreenConfig};
use crate::deliver::dns::Dns;
use crate::smtp::proto::reply::{Enhanced, Reply};
use std::collections::HashMap;
use std::net::{IpAddr, Ipv4Addr};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::time::Instant;

/// Client addresses remembered at most, per cache: past it the expired
/// entries go, and if that is not enough, all of them.
const CACHE_LIMIT: usize = 100_000;

/// What the DNS lists said about one client.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Rank {
    /// The sum of the weights of the entries that matched.
    pub score: i64,
    /// The entries that matched, as written in `dnsbl_sites`.
    pub listed: Vec<String>,
    /// The domain of the blocklist that weighed most (first among
    /// equals); `None` when no blocklist matched.
    pub worst: Option<String>,
    /// Every list answered.
    pub complete: bool,
}

/// The DNS lists, the threshold and the memory of past clients.
#[derive(Debug)]
pub struct Screen {
    config: ScreenConfig,
    dns: Option<Arc<Dns>>,
    /// Pregreet results: `true` passed, `false` talked too early. Kept
    /// across reloads.
    greets: Arc<Cache<bool>>,
    ranks: Cache<Rank>,
}

impl Screen {
    /// The tests of `config.screen`; `None` when none is on. Fails only
    /// when the lists need the system's resolver and it cannot be read.
    pub fn from_config(config: &Config) -> anyhow::Result<Option<Screen>> {
        if !config.screen.is_on() {
            return Ok(None);
        }
        let dns = match config.screen.dnsbl_sites.is_empty() {
            true => None,
            false => Some(Arc::new(Dns::from_config(config)?)),
        };
        Ok(Some(Screen::new(config.screen.clone(), dns)))
    }

    fn new(config: ScreenConfig, dns: Option<Arc<Dns>>) -> Screen {
        let ttl = config.cache_ttl;
        Screen { config, dns, greets: Arc::new(Cache::new(ttl)), ranks: Cache::new(ttl) }
    }

    /// The same for a new configuration, keeping the pregreet results
    /// (the lists may have changed, so their scores are asked again).
    pub fn reloaded(&self, config: &Config) -> anyhow::Result<Option<Screen>> {
        Ok(Screen::from_config(config)?.map(|new| Screen { greets: self.greets.clone(), ..new }))
    }

    pub(crate) fn config(&self) -> &ScreenConfig {
        &self.config
    }

    /// Whether the lists are asked at all.
    pub fn asks_lists(&self) -> bool {
        self.dns.is_some()
    }

    /// The pregreet result remembered for `ip`: `Some(true)` passed,
    /// `Some(false)` talked before the greeting.
    pub fn greeted(&self, ip: IpAddr) -> Option<bool> {
        self.greets.get(ip)
    }

    pub fn remember_greet(&self, ip: IpAddr, passed: bool) {
        self.greets.put(ip, passed);
    }

    /// The DNS lists' score of `ip`: remembered, or asked now, all lists
    /// in parallel, within `dnsbl_timeout`.
    pub async fn rank(&self, ip: IpAddr) -> Rank {
        if let Some(rank) = self.ranks.get(ip) {
            return rank;
        }
        let (answers, complete) = self.ask(ip).await;
        let answers: HashMap<String, Vec<Ipv4Addr>> =
            answers.into_iter().filter_map(|(d, a)| a.ok().map(|a| (d, a))).collect();
        let rank = score(&self.config.dnsbl_sites, &answers, complete);
        if rank.complete {
            self.ranks.put(ip, rank.clone());
        }
        rank
    }

    /// Every list's answer for `ip` (the A records, or why there is
    /// none), asked in parallel within `dnsbl_timeout`, and whether all
    /// answered. Nothing is remembered: `posthorn check-client` shows
    /// these as they are.
    pub(crate) async fn ask(&self, ip: IpAddr) -> (HashMap<String, Result<Vec<Ipv4Addr>, String>>, bool) {
        let mut answers: HashMap<String, Result<Vec<Ipv4Addr>, String>> = HashMap::new();
        let Some(dns) = &self.dns else { return (answers, true) };
        let ip = canonical(ip);
        let mut domains: Vec<&str> = self.config.dnsbl_sites.iter().map(|s| s.domain.as_str()).collect();
        domains.sort_unstable();
        domains.dedup();
        let mut queries = tokio::task::JoinSet::new();
        for domain in &domains {
            let (dns, name, domain) = (dns.clone(), query_name(ip, domain), domain.to_string());
            queries.spawn(async move { (domain, dns.ipv4(&name).await) });
        }
        let deadline = Instant::now() + self.config.dnsbl_timeout;
        let mut complete = true;
        loop {
            match tokio::time::timeout_at(deadline, queries.join_next()).await {
                Ok(None) => break,
                Ok(Some(Ok((domain, Ok(addrs))))) => {
                    answers.insert(domain, Ok(addrs));
                }
                Ok(Some(Ok((domain, Err(e))))) => {
                    tracing::warn!("DNSBL {domain} for [{ip}]: {e}");
                    answers.insert(domain, Err(e.to_string()));
                    complete = false;
                }
                Ok(Some(Err(_))) => complete = false,
                Err(_) => {
                    let late: Vec<&str> = domains.iter().copied().filter(|d| !answers.contains_key(*d)).collect();
                    tracing::warn!(
                        "DNSBL for [{ip}]: no answer within {:?} from {}",
                        self.config.dnsbl_timeout,
                        late.join(", ")
                    );
                    for domain in late {
                        let why = format!("timeout: no answer within {:?}", self.config.dnsbl_timeout);
                        answers.insert(domain.to_string(), Err(why));
                    }
                    complete = false;
                    break;
                }
            }
        }
        (answers, complete)
    }

    /// The refusal's list when `rank` reaches the threshold.
    pub fn refuses<'r>(&self, rank: &'r Rank) -> Option<&'r str> {
        (rank.score >= self.config.dnsbl_threshold).then(|| rank.worst.as_deref().unwrap_or("a DNS list"))
    }

    /// The reply that refuses the client at `ip` when `rank` reaches the
    /// threshold (postscreen's `550 5.7.1 Service unavailable; client
    /// [ADDR] blocked using LIST`).
    pub(crate) fn refusal(&self, rank: &Rank, ip: impl std::fmt::Display) -> Option<Reply> {
        self.refuses(rank).map(|list| {
            Reply::new(550, Enhanced(5, 7, 1), format!("Service unavailable; client [{ip}] blocked using {list}"))
        })
    }
}

/// The score the answers make (`answers`: the A records per list domain).
pub(crate) fn score(sites: &[DnsblSite], answers: &HashMap<String, Vec<Ipv4Addr>>, complete: bool) -> Rank {
    let mut rank = Rank { complete, ..Rank::default() };
    let mut worst = 0;
    for site in sites {
        let Some(addrs) = answers.get(&site.domain) else { continue };
        if !addrs.iter().any(|a| site.matches(*a)) {
            continue;
        }
        rank.score += site.weight;
        rank.listed.push(site.to_string());
        if site.weight > worst {
            worst = site.weight;
            rank.worst = Some(site.domain.clone());
        }
    }
    rank
}

/// An IPv4 address inside IPv6 (`::ffff:1.2.3.4`) as the IPv4 it is.
fn canonical(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
        v4 => v4,
    }
}

/// The name asked of a list: the octets reversed (IPv4), the nibbles
/// reversed (IPv6), then the list's domain.
pub(crate) fn query_name(ip: IpAddr, domain: &str) -> String {
    match canonical(ip) {
        IpAddr::V4(v4) => {
            let [a, b, c, d] = v4.octets();
            format!("{d}.{c}.{b}.{a}.{domain}")
        }
        IpAddr::V6(v6) => {
            let mut name = String::with_capacity(64 + domain.len());
            for byte in v6.octets().iter().rev() {
                name.push_str(&format!("{:x}.{:x}.", byte & 0xf, byte >> 4));
            }
            name + domain
        }
    }
}

/// Results per client address, each for `ttl`.
#[derive(Debug)]
struct Cache<T> {
    ttl: Duration,
    entries: Mutex<HashMap<IpAddr, (Instant, T)>>,
}

impl<T: Clone> Cache<T> {
    fn new(ttl: Duration) -> Cache<T> {
        Cache { ttl, entries: Mutex::default() }
    }

    fn get(&self, ip: IpAddr) -> Option<T> {
        let entries = self.entries.lock().unwrap_or_else(|e| e.into_inner());
        entries.get(&canonical(ip)).filter(|(until, _)| *until > Instant::now()).map(|(_, v)| v.clone())
    }

    fn put(&self, ip: IpAddr, value: T) {
        if self.ttl.is_zero() {
            return;
        }
        let now = Instant::now();
        let mut entries = self.entries.lock().unwrap_or_else(|e| e.into_inner());
        if entries.len() >= CACHE_LIMIT {
            entries.retain(|_, (until, _)| *until > now);
            if entries.len() >= CACHE_LIMIT {
                entries.clear();
            }
        }
        entries.insert(canonical(ip), (now + self.ttl, value));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn query_names() {
        let ip = |s: &str| s.parse::<IpAddr>().unwrap();
        assert_eq!(query_name(ip("127.0.0.2"), "zen.example"), "2.0.0.127.zen.example");
        assert_eq!(query_name(ip("::ffff:192.0.2.1"), "zen.example"), "1.2.0.192.zen.example");
        assert_eq!(
            query_name(ip("2001:db8::1"), "zen.example"),
            "1.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.8.b.d.0.1.0.0.2.zen.example"
        );
    }

    #[test]
    fn scores() {
        let sites: Vec<DnsblSite> = ["zen.example*3", "bl.example=127.0.0.4", "wl.example=127.0.[0..255].[0..255]*-5"]
            .iter()
            .map(|s| s.parse().unwrap())
            .collect();
        let a = |s: &str| s.parse::<Ipv4Addr>().unwrap();
        let answers = |list: &[(&str, &str)]| -> HashMap<String, Vec<Ipv4Addr>> {
            list.iter().map(|(d, ip)| (d.to_string(), vec![a(ip)])).collect()
        };
        let rank = score(&sites, &answers(&[("zen.example", "127.0.0.2"), ("bl.example", "127.0.0.4")]), true);
        assert_eq!((rank.score, rank.worst.as_deref()), (4, Some("zen.example")));
        assert_eq!(rank.listed, ["zen.example*3", "bl.example=127.0.0.4"]);
        // The filter leaves 127.0.0.2 out.
        let rank = score(&sites, &answers(&[("bl.example", "127.0.0.2")]), true);
        assert_eq!((rank.score, rank.worst), (0, None));
        let rank = score(&sites, &answers(&[("zen.example", "127.0.0.2"), ("wl.example", "127.0.10.1")]), true);
        assert_eq!((rank.score, rank.worst.as_deref()), (-2, Some("zen.example")));
    }
}
