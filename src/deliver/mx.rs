//! Delivery to the internet: a domain's mail goes to its MX hosts (RFC 5321
//! 5.1), or to an explicit next hop from the transport table.
//!
//! The MX list is ordered by preference, randomly among equal preferences,
//! afresh for every attempt (the resolver caches the answer for its TTL).
//! A domain without MX records is its own host (its A/AAAA records); a null
//! MX (RFC 7505) and a domain that does not exist bounce at once; a DNS
//! failure that may pass (SERVFAIL, timeout) defers with `hop_down` and
//! never bounces. Trying the hosts in turn, failing over on connect errors,
//! 4xx greetings and 4xx to MAIL, is `relay::Relay`'s work: each
//! destination (domain, or explicit next hop) gets one, whose pool keeps
//! sessions for the next message and holds at most
//! `deliver.destination_concurrency` connections.
//!
//! TLS follows `outbound_tls.level`, or the policy table's entry for the
//! domain (or its parents) or the explicit next hop (`deliver::tls_policy`);
//! `dane` and `dane-only` look up TLSA records per host (`deliver::dane`).
//! A domain no table names may have an MTA-STS policy (`deliver::mta_sts`,
//! `[mta_sts]`): under `enforce` only the MX hosts it lists are tried, over
//! their own transport whose TLS is `verify` (the MX host's name); each
//! delivery's TLS result goes to `deliver::tls_report` when recorded.
//!
//! Failures found here, before any server is reached, carry a reply made up
//! locally (no `relay`): its enhanced status code (5.1.10 null MX, 5.1.2 no
//! such domain, 4.4.3 DNS trouble) is what the bounce or the delay warning
//! reports.

use crate::config::Config;
use crate::deliver::Delivery;
use crate::deliver::dns::{Dns, DnsError, MxAnswer, MxHost};
use crate::deliver::mta_sts::{Applied, Lookup, Mode, MtaSts};
use crate::deliver::relay::{Host, Relay, Settings};
use crate::deliver::tls_policy::{Policies, PolicyTable, domain_keys, hop_keys};
use crate::deliver::tls_report::{self, Recorder};
use crate::message::OutMessage;
use crate::message::nexthop::Target;
use crate::message::outcome::{Attempt, ErrorClass, Outcome};
use crate::smtp::client::Timeouts;
use crate::smtp::proto::reply::{Enhanced, Reply};
use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// How often the destination map is swept for transports nobody uses.
const SWEEP_EVERY: Duration = Duration::from_secs(30);

/// The MX transport; one per daemon, shared by every delivery.
pub struct Mx {
    dns: Arc<Dns>,
    port: u16,
    /// Our own name: an MX list naming it is cut there (RFC 5321 5.1).
    hostname: String,
    settings: Settings,
    /// `[[deliver.shaping]]`: each destination's messages per connection.
    shaping: Vec<crate::config::Shaping>,
    dests: Mutex<Dests>,
    /// `[mta_sts]`; `None` when off.
    sts: Option<MtaSts>,
    /// The TLS of MX hosts under an `enforce` policy: `verify`, the name
    /// being the MX host's, against `outbound_tls.ca` or the system roots.
    sts_tls: Arc<Policies>,
    /// `[tls_report]`; `None` when off.
    report: Option<Recorder>,
}

/// The transport per destination, made on first use and dropped once it
/// has been unused for a while.
#[derive(Default)]
struct Dests {
    map: HashMap<String, (Arc<Relay>, Instant)>,
    swept: Option<Instant>,
}

/// Where one delivery goes, or why it goes nowhere.
enum Route {
    Hosts(Vec<Host>),
    Fail(Delivery),
}

impl Mx {
    pub fn new(config: &Config, dns: Arc<Dns>) -> Mx {
        Mx::with_table(config, dns, None)
    }

    /// The MX transport, with the TLS policy table.
    pub(crate) fn with_table(config: &Config, dns: Arc<Dns>, table: Option<Arc<dyn PolicyTable>>) -> Mx {
        let out = &config.outbound_tls;
        let settings = Settings {
            // `relay.tls` is the smarthosts' policy; MX hosts and next hops
            // have their own default (opportunistic unless configured:
            // requiring TLS of every MX would defer mail to half the world).
            tls: Arc::new(
                Policies::new(table, out.level, "outbound_tls.level", out.ca.clone(), None)
                    .with_dane(crate::deliver::dane::Dane::new(config)),
            ),
            tls_dest: None,
            auth: None,
            auth_plaintext: false,
            auth_unverified: false,
            helo: config.hostname.clone(),
            timeouts: Timeouts { connect: config.relay.connect_timeout, ..Timeouts::default() },
            max_connections: config.deliver.destination_concurrency,
            idle_timeout: config.relay.idle_timeout,
            // Set per destination from `shaping` (`relay_for`).
            max_per_connection: None,
            dns: Some(dns.clone()),
            noun: "MX host",
            reuse_any_host: true,
            myself: crate::deliver::myself::of_mx(config),
            source: config.deliver.source.clone(),
            attempt_delay: config.deliver.connection_attempt_delay,
        };
        let dns_for_sts = dns.clone();
        Mx {
            dns,
            port: config.deliver.mx_port,
            hostname: config.hostname.trim_end_matches('.').to_ascii_lowercase(),
            settings,
            shaping: config.deliver.shaping.clone(),
            dests: Mutex::new(Dests::default()),
            sts: MtaSts::from_config(config, dns_for_sts),
            sts_tls: Arc::new(Policies::new(
                None,
                crate::config::TlsPolicy::Verify,
                "MTA-STS enforce",
                out.ca.clone(),
                None,
            )),
            report: Recorder::from_config(config),
        }
    }

    /// Delivers `msg` to the MX hosts of `domain`; every recipient of `msg`
    /// is in `domain`. An address literal (`[192.0.2.1]`) is delivered to
    /// directly.
    pub async fn deliver(&self, domain: &str, msg: &OutMessage) -> Delivery {
        let domain = domain.trim().trim_end_matches('.').to_ascii_lowercase();
        let lookup = match (&self.sts, literal(&domain)) {
            // An explicit policy table entry wins over MTA-STS.
            (Some(sts), None) if !self.settings.tls.in_table(&domain_keys(&domain)) => sts.policy(&domain).await,
            _ => Lookup::default(),
        };
        let route = match literal(&domain) {
            Some(ip) => Route::Hosts(vec![Host { name: domain.clone(), port: self.port, addrs: Some(vec![ip]) }]),
            None => self.by_mx(&domain, self.port, msg).await,
        };
        let applied = lookup.applied.as_ref().filter(|a| a.policy.mode != Mode::None);
        if let (Some(report), Some((kind, detail))) = (&self.report, &lookup.failure) {
            report.record(tls_report::fetch_failed(&domain, applied, *kind, detail), applied);
        }
        let key = format!("mx:{domain}");
        let tls = (domain_keys(&domain), domain.clone());
        let delivery = match applied.filter(|a| a.policy.mode == Mode::Enforce) {
            Some(enforce) => {
                let route = self.sts_hosts(&domain, enforce, route, msg);
                self.send(&format!("{domain} (MTA-STS)"), &key, tls, Some(&self.sts_tls), route, msg).await
            }
            None => self.send(&domain, &key, tls, None, route, msg).await,
        };
        if let Some(report) = &self.report
            && let Some(session) = tls_report::session_of(&domain, applied, &delivery)
        {
            report.record(session, applied);
        }
        delivery
    }

    /// The MX hosts an `enforce` policy allows; none: the mail waits, with
    /// a reason naming MTA-STS (RFC 8461 5: never another host).
    fn sts_hosts(&self, domain: &str, applied: &Applied, route: Route, msg: &OutMessage) -> Route {
        let Route::Hosts(hosts) = route else { return route };
        let (kept, refused): (Vec<Host>, Vec<Host>) = hosts.into_iter().partition(|h| applied.policy.allows(&h.name));
        for host in &refused {
            tracing::info!(
                "{}: MX host {} of {domain} is not in its MTA-STS policy ({}); not used",
                msg.id,
                host.name,
                applied.describe()
            );
        }
        if !kept.is_empty() {
            return Route::Hosts(kept);
        }
        if let (Some(report), Some(first)) = (&self.report, refused.first()) {
            report.record(tls_report::refused(domain, applied, &first.name), Some(applied));
        }
        let names: Vec<&str> = refused.iter().map(|h| h.name.as_str()).collect();
        let text = format!(
            "MTA-STS policy of {domain} ({}) allows none of its MX hosts ({})",
            applied.describe(),
            names.join(", ")
        );
        let attempt = Attempt { class: Some(ErrorClass::Tls), ..local_reply(Reply::new(451, Enhanced(4, 7, 5), text)) };
        let n = msg.recipients.len();
        Route::Fail(Delivery {
            outcomes: vec![Outcome::Transient(attempt); n],
            hop_down: false,
            remote_dsn: false,
            setup: None,
            followups: Vec::new(),
        })
    }

    /// Delivers `msg` to an explicit next hop. Address lookups of a `[host]`
    /// that fail, even with NXDOMAIN, defer: the name is the operator's,
    /// and a typo in the transport table must not bounce mail.
    pub async fn deliver_to(&self, target: &Target, msg: &OutMessage) -> Delivery {
        let port = target.port.unwrap_or(self.port);
        let route = if target.mx {
            self.by_mx(&target.host, port, msg).await
        } else {
            Route::Hosts(vec![Host::named(&target.host, port)])
        };
        let tls = (hop_keys(&target.host, target.port, target.mx), target.host.clone());
        self.send(&target.to_string(), &format!("smtp:{target}"), tls, None, route, msg).await
    }

    /// QUITs every idle session (daemon shutdown).
    pub async fn close_idle(&self) {
        let relays: Vec<Arc<Relay>> = self.lock().map.values().map(|(r, _)| r.clone()).collect();
        for relay in relays {
            relay.close_idle().await;
        }
    }

    /// Delivers over the transport of `dest` (the queue destination `key`,
    /// whose shaping applies), whose TLS policy is looked up under `tls`
    /// (keys, and the next hop's name), or given by `policies` (MTA-STS).
    async fn send(
        &self,
        dest: &str,
        key: &str,
        tls: (Vec<String>, String),
        policies: Option<&Arc<Policies>>,
        route: Route,
        msg: &OutMessage,
    ) -> Delivery {
        match route {
            Route::Fail(delivery) => delivery,
            Route::Hosts(hosts) => self.relay_for(dest, key, tls, policies).deliver_via(&hosts, msg).await,
        }
    }

    /// The hosts for `domain` by its MX records, each on `port`.
    async fn by_mx(&self, domain: &str, port: u16, msg: &OutMessage) -> Route {
        let n = msg.recipients.len();
        let answer = match self.dns.mx(domain).await {
            Ok(answer) => answer,
            Err(e) => return Route::Fail(dns_failure(n, &e, "MX")),
        };
        let hosts = match answer {
            MxAnswer::Hosts(hosts) => hosts,
            MxAnswer::Null => {
                let reply =
                    Reply::new(556, Enhanced(5, 1, 10), format!("Domain {domain} does not accept mail (null MX)"));
                return Route::Fail(every(n, Outcome::Permanent, local_reply(reply)));
            }
            MxAnswer::NoRecords => return self.implicit_mx(domain, port, n).await,
        };
        match below_self(hosts, &self.hostname) {
            Some(hosts) => Route::Hosts(hosts.iter().map(|h| Host::named(&h.host, port)).collect()),
            None => {
                // We are the best MX, yet the domain is not ours: Postfix
                // bounces this too ("loops back to myself"), since no retry
                // can deliver it until the operator changes DNS or config.
                tracing::warn!(
                    "{}: mail for {domain} loops back to myself ({} is its best MX host)",
                    msg.id,
                    self.hostname
                );
                let detail = format!("mail for {domain} loops back to myself ({} is its best MX host)", self.hostname);
                let attempt = Attempt {
                    class: Some(ErrorClass::Local),
                    ..local_reply(Reply::new(554, Enhanced(5, 4, 6), detail))
                };
                Route::Fail(every(n, Outcome::Permanent, attempt))
            }
        }
    }

    /// RFC 5321 5.1: no MX records, so the domain's own addresses.
    async fn implicit_mx(&self, domain: &str, port: u16, n: usize) -> Route {
        match self.dns.addresses(domain).await {
            Ok(ips) if ips.is_empty() => {
                let reply = Reply::new(
                    550,
                    Enhanced(5, 1, 2),
                    format!("Host or domain name not found: {domain} has no MX, A or AAAA record"),
                );
                Route::Fail(every(n, Outcome::Permanent, local_reply(reply)))
            }
            Ok(ips) => Route::Hosts(vec![Host { name: domain.to_string(), port, addrs: Some(ips) }]),
            Err(e) => Route::Fail(dns_failure(n, &e, "A/AAAA")),
        }
    }

    /// The transport for one destination, made on first use.
    fn relay_for(
        &self,
        dest: &str,
        key: &str,
        tls: (Vec<String>, String),
        policies: Option<&Arc<Policies>>,
    ) -> Arc<Relay> {
        let mut dests = self.lock();
        let now = Instant::now();
        if dests.swept.is_none_or(|t| now.duration_since(t) >= SWEEP_EVERY) {
            dests.swept = Some(now);
            let keep_for = self.settings.idle_timeout.max(SWEEP_EVERY);
            // Nobody holds it, no session is open (idle ones were QUIT by
            // its reaper), and it has not been used for a while.
            dests.map.retain(|_, (relay, used)| {
                Arc::strong_count(relay) > 1 || !relay.is_unused() || now.duration_since(*used) < keep_for
            });
        }
        let entry = dests.map.entry(dest.to_string()).or_insert_with(|| {
            let max_per_connection = self.shaping.iter().find(|s| s.matches(key)).and_then(|s| s.max_per_connection);
            let mut settings = Settings { tls_dest: Some(tls), max_per_connection, ..self.settings.clone() };
            if let Some(policies) = policies {
                settings.tls = policies.clone();
            }
            (Arc::new(Relay::for_hosts(Vec::new(), settings)), now)
        });
        entry.1 = now;
        entry.0.clone()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Dests> {
        self.dests.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// The IP address of an address-literal domain (`[192.0.2.1]`,
/// `[IPv6:2001:db8::1]`).
fn literal(domain: &str) -> Option<IpAddr> {
    let inner = domain.strip_prefix('[')?.strip_suffix(']')?;
    let inner = match inner.get(..5) {
        Some(tag) if tag.eq_ignore_ascii_case("ipv6:") => &inner[5..],
        _ => inner,
    };
    inner.parse().ok()
}

/// RFC 5321 5.1: when we are one of the MX hosts, only the hosts with a
/// better (lower) preference may be used; `None` when that leaves none.
fn below_self(hosts: Vec<MxHost>, me: &str) -> Option<Vec<MxHost>> {
    let mine = hosts.iter().find(|h| h.host == me).map(|h| h.preference);
    let kept: Vec<MxHost> = match mine {
        Some(pref) => hosts.into_iter().filter(|h| h.preference < pref).collect(),
        None => hosts,
    };
    (!kept.is_empty()).then_some(kept)
}

/// The outcome of a lookup that failed before any host: NXDOMAIN and bad
/// names bounce (5.1.2), anything else defers with the destination down.
fn dns_failure(n: usize, e: &DnsError, what: &str) -> Delivery {
    match e {
        DnsError::Temporary { name, detail } => {
            let text = format!("Host or domain name lookup failed for {name}: {detail}");
            let attempt = local_reply(Reply::new(451, Enhanced(4, 4, 3), text));
            Delivery {
                outcomes: vec![Outcome::Transient(attempt); n],
                hop_down: true,
                remote_dsn: false,
                setup: None,
                followups: Vec::new(),
            }
        }
        DnsError::NotFound(name) => {
            let text = format!("Host or domain name not found: {name} (NXDOMAIN for {what})");
            every(n, Outcome::Permanent, local_reply(Reply::new(550, Enhanced(5, 1, 2), text)))
        }
        DnsError::Invalid(name) => {
            let text = format!("{name} is not a valid domain name");
            every(n, Outcome::Permanent, local_reply(Reply::new(550, Enhanced(5, 1, 2), text)))
        }
    }
}

/// An attempt that reached no server, with a reply made up here.
fn local_reply(reply: Reply) -> Attempt {
    Attempt { relay: None, tls: false, detail: reply.to_string(), reply: Some(reply), class: Some(ErrorClass::Dns) }
}

fn every(n: usize, kind: fn(Attempt) -> Outcome, attempt: Attempt) -> Delivery {
    Delivery {
        outcomes: vec![kind(attempt); n],
        hop_down: false,
        remote_dsn: false,
        setup: None,
        followups: Vec::new(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::smtp::client::test_server::{Script, start};
    use std::path::Path;

    #[test]
    fn literal_domains() {
        assert_eq!(literal("[192.0.2.1]"), Some("192.0.2.1".parse().unwrap()));
        assert_eq!(literal("[ipv6:2001:db8::1]"), Some("2001:db8::1".parse().unwrap()));
        assert_eq!(literal("example.org"), None);
        assert_eq!(literal("[example.org]"), None);
    }

    #[test]
    fn mx_lists_are_cut_at_ourselves() {
        let list = |v: &[(u16, &str)]| -> Vec<MxHost> {
            v.iter().map(|(p, h)| MxHost { preference: *p, host: h.to_string() }).collect()
        };
        let all = list(&[(5, "a"), (10, "b"), (10, "me"), (20, "c")]);
        assert_eq!(below_self(all.clone(), "me"), Some(list(&[(5, "a")])));
        assert_eq!(below_self(all.clone(), "other"), Some(all));
        assert_eq!(below_self(list(&[(10, "me"), (10, "b")]), "me"), None);
    }

    #[test]
    fn dns_failures_map_to_outcomes() {
        let temp = dns_failure(2, &DnsError::Temporary { name: "x.test".into(), detail: "SERVFAIL".into() }, "MX");
        assert!(temp.hop_down);
        assert!(matches!(temp.outcomes[1], Outcome::Transient(_)));
        let a = temp.outcomes[0].attempt();
        assert_eq!(a.class, Some(ErrorClass::Dns));
        assert_eq!(a.reply.as_ref().unwrap().enhanced, Some(Enhanced(4, 4, 3)));
        assert_eq!(a.relay, None);

        let gone = dns_failure(1, &DnsError::NotFound("x.test".into()), "MX");
        assert!(!gone.hop_down);
        let Outcome::Permanent(a) = &gone.outcomes[0] else { panic!("{gone:?}") };
        assert_eq!(a.detail, "550 5.1.2 Host or domain name not found: x.test (NXDOMAIN for MX)");
    }

    fn message(rcpts: &[&str]) -> OutMessage {
        OutMessage::simple("TESTID", "cron@hub.test", rcpts, b"Subject: test\r\n\r\nbody\r\n")
    }

    fn config(port: u16) -> Config {
        // DNS is never asked in these tests: the server is a black hole.
        let text = format!(
            "hostname = \"hub.test\"\n[deliver]\nmx_port = {port}\ndns_servers = [\"127.0.0.1:9\"]\n[relay]\nconnect_timeout = \"2s\"\n"
        );
        Config::parse(&text, Path::new("test.toml")).unwrap()
    }

    #[tokio::test]
    async fn explicit_next_hop_and_address_literal() {
        let server = start(Script::esmtp(&["PIPELINING"])).await;
        let config = config(server.addr.port());
        let mx = Mx::new(&config, Arc::new(Dns::from_config(&config).unwrap()));
        let target = Target::parse("[127.0.0.1]").unwrap();
        let delivery = mx.deliver_to(&target, &message(&["a@example.test"])).await;
        assert!(matches!(delivery.outcomes[0], Outcome::Delivered(_)), "{delivery:?}");
        let delivery = mx.deliver("[127.0.0.1]", &message(&["postmaster@[127.0.0.1]"])).await;
        assert!(matches!(delivery.outcomes[0], Outcome::Delivered(_)), "{delivery:?}");
        // Two destinations, two transports: no shared session.
        assert_eq!(server.connections(), 2);
        let again = mx.deliver_to(&target, &message(&["b@example.test"])).await;
        assert!(matches!(again.outcomes[0], Outcome::Delivered(_)));
        assert_eq!(server.connections(), 2, "the session to the next hop was reused");
    }
}
