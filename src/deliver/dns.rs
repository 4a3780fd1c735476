//! DNS for delivery: MX and address lookups through hickory-resolver, with
//! answers reduced to what an MTA decides on.
//!
//! An MX lookup ends in one of five ways, and each leads somewhere else:
//! a list of hosts (deliver there, best preference first), a null MX
//! (RFC 7505: the domain takes no mail, bounce), no MX records at all
//! (RFC 5321 5.1: the domain itself is the host, via its A/AAAA records),
//! `NotFound` (NXDOMAIN: the domain does not exist, bounce) and `Temporary`
//! (SERVFAIL, REFUSED, timeout, no server reachable: defer, never bounce).
//!
//! With `deliver.dns_servers` set, exactly those servers are asked (UDP,
//! TCP on truncation), with no search domains, no hosts file and no look at
//! /etc/resolv.conf; tests point it at a server on loopback. Without it the
//! system configuration is read once, at construction. Every name is made
//! fully qualified before the query, so search domains never apply.

use crate::config::Config;
use hickory_resolver::config::{
    ConnectionConfig, LookupIpStrategy, NameServerConfig, ResolveHosts, ResolverConfig, ResolverOpts,
};
use hickory_resolver::net::runtime::TokioRuntimeProvider;
use hickory_resolver::net::{DnsError as WireError, NetError};
use hickory_resolver::proto::op::ResponseCode;
use hickory_resolver::proto::rr::{Name, RData, RecordType};
use hickory_resolver::{Resolver, TokioResolver};
use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

/// Time allowed for one query to one server before it is retried.
const QUERY_TIMEOUT: Duration = Duration::from_secs(3);
/// Time allowed for a whole lookup, retries included: a resolver that hangs
/// must not hold a delivery.
const LOOKUP_TIMEOUT: Duration = Duration::from_secs(15);
/// Responses kept in the resolver's cache (each for its TTL).
const CACHE_SIZE: u64 = 1024;
/// MX hosts kept from one answer; more is a hostile or broken zone.
const MAX_MX_HOSTS: usize = 16;
/// Addresses kept per host name.
const MAX_ADDRESSES: usize = 8;

/// Why a lookup gave no usable answer.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum DnsError {
    /// NXDOMAIN: the name does not exist. Permanent.
    #[error("{0}: no such domain (NXDOMAIN)")]
    NotFound(String),
    /// The name cannot be a DNS name (empty label, label over 63 octets,
    /// bad IDNA). Permanent.
    #[error("{0}: not a valid domain name")]
    Invalid(String),
    /// SERVFAIL, REFUSED, a timeout or no server reachable. Transient: the
    /// mail waits, it is never bounced for this.
    #[error("{name}: temporary DNS failure: {detail}")]
    Temporary { name: String, detail: String },
}

impl DnsError {
    #[cfg(test)]
    pub(crate) fn is_permanent(&self) -> bool {
        !matches!(self, DnsError::Temporary { .. })
    }
}

/// One MX record: its preference and the host it names (lowercase ASCII,
/// no trailing dot).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MxHost {
    pub preference: u16,
    pub host: String,
}

/// What an MX lookup of an existing domain said.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum MxAnswer {
    /// Hosts by preference, lowest first, in random order among equal
    /// preferences (RFC 5321 5.1), each host once.
    Hosts(Vec<MxHost>),
    /// RFC 7505 null MX (`MX 0 .`): the domain accepts no mail.
    Null,
    /// The domain exists but has no MX records (NODATA): deliver to the
    /// domain's own addresses (RFC 5321 5.1 implicit MX).
    NoRecords,
}

/// The resolver used by every transport; cheap to share behind an `Arc`.
pub struct Dns {
    resolver: TokioResolver,
}

impl std::fmt::Debug for Dns {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Dns")
    }
}

impl Dns {
    /// The resolver for `deliver.dns_servers`, or the system's
    /// (/etc/resolv.conf) when that list is empty; the latter fails when the
    /// system configuration cannot be read.
    pub fn from_config(config: &Config) -> anyhow::Result<Dns> {
        if !config.deliver.dns_servers.is_empty() {
            return Ok(Dns::with_servers(&config.deliver.dns_servers));
        }
        use anyhow::Context;
        let mut builder =
            TokioResolver::builder_tokio().context("reading the system resolver configuration (/etc/resolv.conf)")?;
        let opts = builder.options_mut();
        opts.timeout = opts.timeout.min(Duration::from_secs(5));
        tune(opts);
        Ok(Dns { resolver: builder.build().context("building the DNS resolver")? })
    }

    /// A resolver asking exactly `servers` (UDP, and TCP for truncated
    /// answers), nothing else: no search list, no hosts file.
    pub fn with_servers(servers: &[SocketAddr]) -> Dns {
        let config = ResolverConfig::from_parts(None, Vec::new(), name_servers(servers));
        let mut builder = Resolver::builder_with_config(config, TokioRuntimeProvider::default());
        let opts = builder.options_mut();
        opts.timeout = QUERY_TIMEOUT;
        opts.attempts = 2;
        opts.use_hosts_file = ResolveHosts::Never;
        tune(opts);
        // Only fails for DNSSEC/TLS settings, none of which are used here.
        let resolver = builder.build().expect("a plain UDP/TCP resolver always builds");
        Dns { resolver }
    }

    /// The MX records of `domain`.
    pub async fn mx(&self, domain: &str) -> Result<MxAnswer, DnsError> {
        let name = fqdn(domain)?;
        let lookup = match self.lookup(domain, name, RecordType::MX).await {
            Ok(Some(lookup)) => lookup,
            Ok(None) => return Ok(MxAnswer::NoRecords),
            Err(e) => return Err(e),
        };
        let records: Vec<(u16, String)> = lookup
            .answers()
            .iter()
            .filter_map(|r| match &r.data {
                RData::MX(mx) => Some((mx.preference, display(&mx.exchange))),
                _ => None,
            })
            .collect();
        Ok(mx_answer(records, &mut fastrand::Rng::new()))
    }

    /// The IPv4 then IPv6 addresses of `host`, at most `MAX_ADDRESSES`; an
    /// IP address in text is returned as it is. An empty list means the
    /// name exists but has neither A nor AAAA records.
    pub async fn addresses(&self, host: &str) -> Result<Vec<IpAddr>, DnsError> {
        let bare = host.strip_prefix('[').and_then(|h| h.strip_suffix(']')).unwrap_or(host);
        if let Ok(ip) = bare.parse::<IpAddr>() {
            return Ok(vec![ip]);
        }
        let name = fqdn(host)?;
        let (v4, v6) =
            tokio::join!(self.lookup(host, name.clone(), RecordType::A), self.lookup(host, name, RecordType::AAAA));
        let mut addrs = Vec::new();
        for lookup in [&v4, &v6].into_iter().flatten().flatten() {
            for record in lookup.answers() {
                match &record.data {
                    RData::A(a) => addrs.push(IpAddr::V4(a.0)),
                    RData::AAAA(a) => addrs.push(IpAddr::V6(a.0)),
                    _ => {}
                }
            }
        }
        addrs.dedup();
        addrs.truncate(MAX_ADDRESSES);
        if !addrs.is_empty() {
            return Ok(addrs);
        }
        // Nothing usable: a temporary failure on either side may hide the
        // addresses, so it outweighs NXDOMAIN and NODATA.
        match (v4, v6) {
            (Err(e @ DnsError::Temporary { .. }), _) | (_, Err(e @ DnsError::Temporary { .. })) => Err(e),
            (Err(e), _) | (_, Err(e)) => Err(e),
            _ => Ok(Vec::new()),
        }
    }

    /// The A records of `name`, as a DNS list answers: empty for NXDOMAIN
    /// and NODATA (not listed).
    pub async fn ipv4(&self, name: &str) -> Result<Vec<std::net::Ipv4Addr>, DnsError> {
        let fqdn = fqdn(name)?;
        match self.lookup(name, fqdn, RecordType::A).await {
            Ok(Some(lookup)) => Ok(lookup
                .answers()
                .iter()
                .filter_map(|r| match &r.data {
                    RData::A(a) => Some(a.0),
                    _ => None,
                })
                .collect()),
            Ok(None) | Err(DnsError::NotFound(_)) => Ok(Vec::new()),
            Err(e) => Err(e),
        }
    }

    /// The TXT records of `name`, each one's strings joined; empty for
    /// NXDOMAIN and NODATA (MTA-STS's `_mta-sts` records).
    pub(crate) async fn txt(&self, name: &str) -> Result<Vec<String>, DnsError> {
        let fqdn = fqdn(name)?;
        match self.lookup(name, fqdn, RecordType::TXT).await {
            Ok(Some(lookup)) => Ok(lookup
                .answers()
                .iter()
                .filter_map(|r| match &r.data {
                    RData::TXT(txt) => {
                        Some(txt.txt_data.iter().map(|s| String::from_utf8_lossy(s)).collect::<String>())
                    }
                    _ => None,
                })
                .collect()),
            Ok(None) | Err(DnsError::NotFound(_)) => Ok(Vec::new()),
            Err(e) => Err(e),
        }
    }

    /// One query. `Ok(None)` is NODATA (the name exists, not this type).
    async fn lookup(
        &self,
        shown: &str,
        name: Name,
        rtype: RecordType,
    ) -> Result<Option<hickory_resolver::lookup::Lookup>, DnsError> {
        let shown = shown.trim_end_matches('.').to_string();
        match tokio::time::timeout(LOOKUP_TIMEOUT, self.resolver.lookup(name, rtype)).await {
            Err(_) => Err(DnsError::Temporary { name: shown, detail: format!("{rtype} lookup timed out") }),
            Ok(Ok(lookup)) if lookup.answers().iter().any(|r| r.record_type() == rtype) => Ok(Some(lookup)),
            // Only a CNAME chain without the final record: as NODATA.
            Ok(Ok(_)) => Ok(None),
            Ok(Err(e)) => classify(shown, rtype, &e),
        }
    }
}

/// Options every resolver here shares.
fn tune(opts: &mut ResolverOpts) {
    opts.cache_size = CACHE_SIZE;
    opts.ip_strategy = LookupIpStrategy::Ipv4AndIpv6;
    opts.try_tcp_on_error = true;
    // Answers are filtered by type here; CNAMEs need not be kept apart.
    opts.preserve_intermediates = true;
}

/// Sorts an error into NXDOMAIN, NODATA and the rest (temporary).
fn classify(
    name: String,
    rtype: RecordType,
    e: &NetError,
) -> Result<Option<hickory_resolver::lookup::Lookup>, DnsError> {
    match e {
        NetError::Dns(WireError::NoRecordsFound(no)) if no.response_code == ResponseCode::NXDomain => {
            Err(DnsError::NotFound(name))
        }
        NetError::Dns(WireError::NoRecordsFound(no)) if no.response_code == ResponseCode::NoError => Ok(None),
        NetError::Dns(WireError::ResponseCode(code)) => {
            Err(DnsError::Temporary { name, detail: format!("{rtype} lookup: server answered {}", rcode(*code)) })
        }
        NetError::Timeout => Err(DnsError::Temporary { name, detail: format!("{rtype} lookup timed out") }),
        other => Err(DnsError::Temporary { name, detail: format!("{rtype} lookup: {other}") }),
    }
}

/// A response code as written in RFCs and `dig` output.
fn rcode(code: ResponseCode) -> String {
    match code {
        ResponseCode::ServFail => "SERVFAIL".into(),
        ResponseCode::Refused => "REFUSED".into(),
        ResponseCode::FormErr => "FORMERR".into(),
        ResponseCode::NotImp => "NOTIMP".into(),
        other => other.to_string(),
    }
}

/// `domain` as an absolute DNS name (IDNA applied to UTF-8 labels).
fn fqdn(domain: &str) -> Result<Name, DnsError> {
    let trimmed = domain.trim_end_matches('.');
    let invalid = || DnsError::Invalid(trimmed.to_string());
    if trimmed.is_empty() || trimmed.split('.').any(str::is_empty) {
        return Err(invalid());
    }
    let mut name = Name::from_utf8(trimmed).map_err(|_| invalid())?;
    name.set_fqdn(true);
    Ok(name)
}

/// A name for logs and host lists: lowercase ASCII, no trailing dot; the
/// root is `.`.
fn display(name: &Name) -> String {
    if name.is_root() {
        return ".".into();
    }
    name.to_ascii().trim_end_matches('.').to_ascii_lowercase()
}

/// Reduces MX records to an answer: null MX detection, duplicates removed
/// (the best preference kept), sorted by preference with equal
/// preferences shuffled by `rng`.
pub(crate) fn mx_answer(records: Vec<(u16, String)>, rng: &mut fastrand::Rng) -> MxAnswer {
    let is_root = |h: &str| h == "." || h.is_empty();
    if records.is_empty() {
        return MxAnswer::NoRecords;
    }
    // RFC 7505 3: a null MX is the only MX record. Should a zone also list
    // real hosts, the root target is meaningless there and is skipped.
    if records.iter().all(|(_, h)| is_root(h)) {
        return MxAnswer::Null;
    }
    let mut hosts: Vec<MxHost> = Vec::new();
    let mut sorted = records;
    sorted.sort_by_key(|(pref, _)| *pref);
    for (preference, host) in sorted {
        let host = host.trim_end_matches('.').to_ascii_lowercase();
        if is_root(&host) || hosts.iter().any(|h| h.host == host) {
            continue;
        }
        hosts.push(MxHost { preference, host });
    }
    hosts.truncate(MAX_MX_HOSTS);
    for group in hosts.chunk_by_mut(|a, b| a.preference == b.preference) {
        rng.shuffle(group);
    }
    MxAnswer::Hosts(hosts)
}

/// `servers` as the resolver asks them: UDP, and TCP for truncated
/// answers, on each address's own port (`deliver.dns_servers`).
pub(crate) fn name_servers(servers: &[SocketAddr]) -> Vec<NameServerConfig> {
    servers
        .iter()
        .map(|addr| {
            let mut udp = ConnectionConfig::udp();
            udp.port = addr.port();
            let mut tcp = ConnectionConfig::tcp();
            tcp.port = addr.port();
            NameServerConfig::new(addr.ip(), true, vec![udp, tcp])
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn recs(list: &[(u16, &str)]) -> Vec<(u16, String)> {
        list.iter().map(|(p, h)| (*p, h.to_string())).collect()
    }

    fn hosts(answer: &MxAnswer) -> Vec<(u16, &str)> {
        match answer {
            MxAnswer::Hosts(h) => h.iter().map(|h| (h.preference, h.host.as_str())).collect(),
            other => panic!("expected hosts, got {other:?}"),
        }
    }

    #[test]
    fn answers_table() {
        let mut rng = fastrand::Rng::with_seed(7);
        let cases: &[(&[(u16, &str)], MxAnswer)] = &[
            (&[], MxAnswer::NoRecords),
            (&[(0, ".")], MxAnswer::Null),
            // Preference other than 0 with a root target: still no mail.
            (&[(10, ".")], MxAnswer::Null),
            (&[(0, "")], MxAnswer::Null),
            (
                &[(0, "."), (10, "mx.example.org")],
                MxAnswer::Hosts(vec![MxHost { preference: 10, host: "mx.example.org".into() }]),
            ),
        ];
        for (input, want) in cases {
            assert_eq!(&mx_answer(recs(input), &mut rng), want, "{input:?}");
        }
    }

    #[test]
    fn sorted_by_preference_and_cleaned() {
        let mut rng = fastrand::Rng::with_seed(1);
        let answer = mx_answer(
            recs(&[
                (20, "MX2.Example.org."),
                (5, "mx0.example.org"),
                (10, "mx1.example.org."),
                (30, "mx1.example.org"),
            ]),
            &mut rng,
        );
        assert_eq!(hosts(&answer), vec![(5, "mx0.example.org"), (10, "mx1.example.org"), (20, "mx2.example.org")]);
    }

    #[test]
    fn equal_preferences_are_shuffled_not_mixed() {
        let input = recs(&[(10, "b"), (20, "z"), (10, "a"), (10, "c"), (5, "first")]);
        let mut seen = std::collections::HashSet::new();
        let mut rng = fastrand::Rng::with_seed(42);
        for _ in 0..200 {
            let answer = mx_answer(input.clone(), &mut rng);
            let order = hosts(&answer);
            assert_eq!(order[0], (5, "first"));
            assert_eq!(order[4], (20, "z"));
            assert!(order[1..4].iter().all(|(p, _)| *p == 10));
            seen.insert(order[1..4].iter().map(|(_, h)| *h).collect::<String>());
        }
        // All six orders of a, b, c show up.
        assert_eq!(seen.len(), 6, "{seen:?}");
    }

    #[test]
    fn too_many_hosts_are_cut() {
        let many: Vec<(u16, String)> = (0..40).map(|i| (i, format!("mx{i}.example.org"))).collect();
        let answer = mx_answer(many, &mut fastrand::Rng::with_seed(3));
        assert_eq!(hosts(&answer).len(), MAX_MX_HOSTS);
        assert_eq!(hosts(&answer)[0], (0, "mx0.example.org"));
    }

    #[test]
    fn names_are_made_absolute() {
        assert_eq!(fqdn("example.org").unwrap().to_ascii(), "example.org.");
        assert_eq!(fqdn("example.org.").unwrap().to_ascii(), "example.org.");
        assert_eq!(fqdn("bücher.example").unwrap().to_ascii(), "xn--bcher-kva.example.");
        for bad in ["", ".", "a..b", &format!("{}.org", "x".repeat(64))] {
            assert!(matches!(fqdn(bad), Err(DnsError::Invalid(_))), "{bad}");
        }
        assert_eq!(display(&Name::root()), ".");
        assert_eq!(display(&Name::from_ascii("MX.Example.ORG.").unwrap()), "mx.example.org");
    }

    #[test]
    fn permanence() {
        assert!(DnsError::NotFound("x".into()).is_permanent());
        assert!(DnsError::Invalid("x".into()).is_permanent());
        assert!(!DnsError::Temporary { name: "x".into(), detail: "SERVFAIL".into() }.is_permanent());
    }

    #[tokio::test]
    async fn literal_addresses_need_no_server() {
        // A server nobody answers on: never asked for a literal.
        let dns = Dns::with_servers(&["127.0.0.1:9".parse().unwrap()]);
        assert_eq!(dns.addresses("192.0.2.7").await, Ok(vec!["192.0.2.7".parse().unwrap()]));
        assert_eq!(dns.addresses("[2001:db8::1]").await, Ok(vec!["2001:db8::1".parse().unwrap()]));
        assert_eq!(dns.mx("a..b").await, Err(DnsError::Invalid("a..b".into())));
    }
}
