//! DANE for SMTP (RFC 7672): whether an MX host's TLS is authenticated by
//! TLSA records, decided per connection for the levels `dane` and
//! `dane-only` (`outbound_tls.level` or the policy table).
//!
//! DNSSEC is validated here, by hickory-resolver itself (its `dnssec-ring`
//! validator), not by trusting the AD bit of some resolver: the chain of
//! trust starts at the root zone's keys built into hickory, or at the
//! DNSKEY records in `deliver.dnssec_trust_anchor`. This resolver is a
//! second one, asking the same servers as the ordinary one, built on the
//! first DANE lookup: without DANE configured nothing here runs and the
//! ordinary lookups are unchanged. Only the lookups DANE decides on are
//! validated (RFC 7672 2.2):
//!
//! 1. the destination's MX RRset, which must be secure and name the host
//!    (else the host name is not trustworthy: no DANE); skipped when the
//!    host is the destination itself (implicit MX, `[host]` next hop);
//! 2. the host's address records, which must be secure (else no DANE);
//! 3. the TLSA RRset at `_port._tcp.host`: secure with at least one usable
//!    record (DANE-TA or DANE-EE, `tls::dane`) means DANE applies.
//!
//! Unsigned answers mean "no DANE" (`dane` then acts as `may`, `dane-only`
//! defers). A bogus answer, or a lookup that fails, once the answers so
//! far were secure, defers: the zone is signed, and an attacker who can
//! break DNS must not be able to strip TLS that way (RFC 7672 2.2.1).

use crate::config::Config;
use crate::tls::dane::Tlsa;
use hickory_resolver::config::{ResolveHosts, ResolverConfig};
use hickory_resolver::net::runtime::TokioRuntimeProvider;
use hickory_resolver::net::{DnsError as WireError, NetError};
use hickory_resolver::proto::dnssec::{Proof, TrustAnchors};
use hickory_resolver::proto::rr::{Name, RData, RecordType};
use hickory_resolver::{Resolver, TokioResolver};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

/// Time allowed for one validated lookup: validation adds the DNSKEY and
/// DS queries up the chain.
const LOOKUP_TIMEOUT: Duration = Duration::from_secs(20);

/// What DANE says about one MX host.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum Verdict {
    /// Secure, usable TLSA records: TLS is required and the certificate
    /// must match one of them.
    Usable(Vec<Tlsa>),
    /// DANE does not apply, and why (`dane` falls back to `may`).
    NotDane(String),
    /// DNSSEC says the answer is forged, or a lookup in a signed zone
    /// failed: the host must not get mail now.
    Defer(String),
}

/// The validating resolver, built on first use.
pub(crate) struct Dane {
    servers: Vec<SocketAddr>,
    anchor: Option<PathBuf>,
    resolver: OnceLock<Result<TokioResolver, String>>,
}

impl std::fmt::Debug for Dane {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Dane").field("anchor", &self.anchor).finish_non_exhaustive()
    }
}

/// One validated RRset, reduced to what DANE decides on.
enum RrSet {
    Secure(Vec<RData>),
    /// Not signed (or not under any trust anchor).
    Insecure,
    /// The name or the type does not exist (denial secure or not).
    Absent,
    /// Failed validation, or the lookup failed.
    Failed(String),
}

impl Dane {
    pub(crate) fn new(config: &Config) -> Arc<Dane> {
        Arc::new(Dane {
            servers: config.deliver.dns_servers.clone(),
            anchor: config.deliver.dnssec_trust_anchor.clone(),
            resolver: OnceLock::new(),
        })
    }

    fn resolver(&self) -> Result<&TokioResolver, String> {
        self.resolver.get_or_init(|| self.build()).as_ref().map_err(Clone::clone)
    }

    fn build(&self) -> Result<TokioResolver, String> {
        let mut builder = if self.servers.is_empty() {
            TokioResolver::builder_tokio().map_err(|e| format!("reading /etc/resolv.conf: {e}"))?
        } else {
            let config = ResolverConfig::from_parts(None, Vec::new(), super::dns::name_servers(&self.servers));
            Resolver::builder_with_config(config, TokioRuntimeProvider::default())
        };
        let anchors = match &self.anchor {
            Some(path) => TrustAnchors::from_file(path).map_err(|e| format!("{}: {e}", path.display()))?,
            None => TrustAnchors::default(),
        };
        builder = builder.with_trust_anchor(Arc::new(anchors));
        let opts = builder.options_mut();
        opts.validate = true;
        opts.timeout = Duration::from_secs(3);
        opts.attempts = 2;
        opts.use_hosts_file = ResolveHosts::Never;
        opts.try_tcp_on_error = true;
        opts.cache_size = 1024;
        builder.build().map_err(|e| format!("building the DNSSEC resolver: {e}"))
    }

    /// DANE's verdict on `host`, reached as an MX host of `nexthop` (or as
    /// `nexthop` itself), on `port`.
    pub(crate) async fn check(&self, nexthop: &str, host: &str, port: u16) -> Verdict {
        let nexthop = nexthop.trim_start_matches('[').trim_end_matches(']').trim_end_matches('.').to_ascii_lowercase();
        let host = host.trim_end_matches('.').to_ascii_lowercase();
        if host != nexthop {
            match self.rrset(&nexthop, RecordType::MX).await {
                RrSet::Secure(mx) => {
                    let named = mx.iter().any(|r| matches!(r, RData::MX(m) if display(&m.exchange) == host));
                    if !named {
                        return Verdict::NotDane(format!("{host} is not in the MX records of {nexthop}"));
                    }
                }
                RrSet::Insecure | RrSet::Absent => {
                    return Verdict::NotDane(format!("the MX records of {nexthop} are not DNSSEC-signed"));
                }
                RrSet::Failed(e) => return Verdict::Defer(format!("MX lookup of {nexthop}: {e}")),
            }
        }
        let mut addresses = self.rrset(&host, RecordType::A).await;
        if matches!(addresses, RrSet::Absent) {
            addresses = self.rrset(&host, RecordType::AAAA).await;
        }
        match addresses {
            RrSet::Secure(_) => {}
            RrSet::Insecure | RrSet::Absent => {
                return Verdict::NotDane(format!("the address records of {host} are not DNSSEC-signed"));
            }
            RrSet::Failed(e) => return Verdict::Defer(format!("address lookup of {host}: {e}")),
        }
        let base = format!("_{port}._tcp.{host}");
        match self.rrset(&base, RecordType::TLSA).await {
            RrSet::Secure(records) => {
                let usable: Vec<Tlsa> = records.iter().filter_map(tlsa).filter(Tlsa::usable).collect();
                if usable.is_empty() {
                    Verdict::NotDane(format!("no usable TLSA records at {base}"))
                } else {
                    Verdict::Usable(usable)
                }
            }
            RrSet::Absent => Verdict::NotDane(format!("no TLSA records at {base}")),
            RrSet::Insecure => Verdict::NotDane(format!("the TLSA records at {base} are not DNSSEC-signed")),
            RrSet::Failed(e) => Verdict::Defer(format!("TLSA lookup of {base}: {e}")),
        }
    }

    /// One validated lookup.
    async fn rrset(&self, name: &str, rtype: RecordType) -> RrSet {
        let resolver = match self.resolver() {
            Ok(r) => r,
            Err(e) => return RrSet::Failed(e),
        };
        let Ok(mut fqdn) = Name::from_utf8(name) else { return RrSet::Failed(format!("{name}: not a DNS name")) };
        fqdn.set_fqdn(true);
        let lookup = match tokio::time::timeout(LOOKUP_TIMEOUT, resolver.lookup(fqdn, rtype)).await {
            Err(_) => return RrSet::Failed("timed out".into()),
            Ok(Ok(lookup)) => lookup,
            Ok(Err(NetError::Dns(WireError::NoRecordsFound(_)))) => return RrSet::Absent,
            Ok(Err(NetError::Dns(WireError::Nsec { proof, .. }))) if proof != Proof::Bogus => return RrSet::Absent,
            Ok(Err(NetError::Dns(WireError::Nsec { .. } | WireError::DnssecBogus))) => {
                return RrSet::Failed("DNSSEC validation failed (bogus)".into());
            }
            Ok(Err(e)) => return RrSet::Failed(e.to_string()),
        };
        let records: Vec<_> = lookup.answers().iter().filter(|r| r.record_type() == rtype).collect();
        if records.is_empty() {
            return RrSet::Absent;
        }
        if records.iter().any(|r| r.proof == Proof::Bogus) {
            return RrSet::Failed("DNSSEC validation failed (bogus)".into());
        }
        if records.iter().all(|r| r.proof == Proof::Secure) {
            RrSet::Secure(records.into_iter().map(|r| r.data.clone()).collect())
        } else {
            RrSet::Insecure
        }
    }
}

/// `posthorn route explain`: for each of `domains` (MX delivery under
/// `dane` or `dane-only`), each MX host and what DANE says about it.
pub(crate) async fn explain(config: &Config, domains: &[String]) -> String {
    use super::dns::{Dns, MxAnswer};
    use std::fmt::Write;
    let mut out = String::new();
    let dns = match Dns::from_config(config) {
        Ok(d) => d,
        Err(e) => return format!("DANE: no resolver: {e:#}\n"),
    };
    let dane = Dane::new(config);
    for domain in domains {
        let hosts = match dns.mx(domain).await {
            Ok(MxAnswer::Hosts(hosts)) => hosts.into_iter().map(|h| h.host).collect(),
            Ok(MxAnswer::NoRecords) => vec![domain.clone()],
            Ok(MxAnswer::Null) => Vec::new(),
            Err(e) => {
                let _ = writeln!(out, "{domain}: DANE: MX lookup failed: {e}");
                continue;
            }
        };
        for host in hosts {
            let said = match dane.check(domain, &host, config.deliver.mx_port).await {
                Verdict::Usable(records) => {
                    let list: Vec<String> = records.iter().map(ToString::to_string).collect();
                    format!("applies: secure TLSA records {}", list.join(", "))
                }
                Verdict::NotDane(why) => format!("does not apply: {why}"),
                Verdict::Defer(why) => format!("lookup failed, delivery waits: {why}"),
            };
            let _ = writeln!(out, "{domain}: MX host {host}: DANE {said}");
        }
    }
    out
}

/// A TLSA record's fields.
fn tlsa(data: &RData) -> Option<Tlsa> {
    let RData::TLSA(t) = data else { return None };
    Some(Tlsa {
        usage: t.cert_usage.into(),
        selector: t.selector.into(),
        matching: t.matching.into(),
        data: t.cert_data.clone(),
    })
}

fn display(name: &Name) -> String {
    name.to_ascii().trim_end_matches('.').to_ascii_lowercase()
}
