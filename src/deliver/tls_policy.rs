//! The TLS policy of one SMTP next hop, as Postfix's `smtp_tls_policy_maps`
//! decides it: a table entry for the destination, else the default level
//! (`outbound_tls.level` for MX delivery, transport-table next hops and the
//! content filter; `relay.tls` for the smarthosts).
//!
//! Lookup keys, first match wins (tables are read by `route::tls_policy`,
//! which implements [`PolicyTable`]; this module only parses values):
//! - a domain delivered by MX (`example.com`): the domain, then each parent
//!   in its leading-dot form (`.com`), as transport(5) does;
//! - an explicit next hop: as written (`[mx.example.org]:2525`,
//!   `relay.example.org`), and with or without `:25` when the port is 25;
//! - a smarthost: `[host]:port`, and `[host]` for port 25.
//!
//! Values: a level (`none`, `may`, `encrypt`, `verify`, `secure`, `dane`,
//! `dane-only`), then `match=` patterns separated by `:` for `verify` and
//! `secure`: a name, `.domain` (any name below it), `hostname` (the MX
//! host's own name, as DNS gave it), `nexthop` and `dot-nexthop` (the
//! destination and names below it). Defaults as in Postfix: `verify`
//! matches `hostname`, `secure` matches `nexthop:dot-nexthop`, so an
//! attacker who forges MX records cannot name a host of its own. `dane`
//! and `dane-only` ask `deliver::dane` per host, once the MX transport gave
//! these policies its validating resolver ([`Policies::with_dane`]): secure,
//! usable TLSA records make TLS required and checked against them (never
//! in clear, no fallback); without them `dane` is `may` and `dane-only`
//! defers. `fingerprint` and any other attribute are refused, rather than
//! ignored, so a policy never reads weaker than it was written.

use crate::config::TlsPolicy;
use crate::tls::matching::CertName;
use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

/// Where policy table entries come from (`route::tls_policy`).
pub(crate) trait PolicyTable: Send + Sync {
    /// The value of the first key of `keys` that any table holds, and where
    /// it was found (`texthash:/etc/posthorn/tls_policy:3`).
    fn find(&self, keys: &[String]) -> Option<(String, String)>;
}

/// A policy table entry's value, parsed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Entry {
    pub(crate) level: TlsPolicy,
    /// The `match=` patterns as written; `None`: the level's default.
    pub(crate) matches: Option<Vec<String>>,
}

/// Parses a table value: `secure match=.example.com:mx.example.net`.
pub(crate) fn parse_value(value: &str) -> Result<Entry, String> {
    let mut words = value.split_whitespace();
    let level = match words.next().map(str::to_ascii_lowercase).as_deref() {
        Some("none") => TlsPolicy::None,
        Some("may") => TlsPolicy::May,
        Some("encrypt") => TlsPolicy::Encrypt,
        Some("verify") => TlsPolicy::Verify,
        Some("secure") => TlsPolicy::Secure,
        Some("dane") => TlsPolicy::Dane,
        Some("dane-only") => TlsPolicy::DaneOnly,
        Some(l @ "fingerprint") => {
            return Err(format!(
                "level `{l}` is not supported (posthorn knows none, may, encrypt, verify, secure, dane, dane-only)"
            ));
        }
        Some(other) => {
            return Err(format!("unknown TLS level `{other}` (none, may, encrypt, verify, secure, dane or dane-only)"));
        }
        None => return Err("no TLS level".into()),
    };
    let mut matches: Option<Vec<String>> = None;
    for word in words {
        let (name, arg) = word.split_once('=').unwrap_or((word, ""));
        if !name.eq_ignore_ascii_case("match") {
            return Err(format!("attribute `{name}` is not supported (posthorn knows match=)"));
        }
        if !level.verifies() {
            return Err(format!("match= applies to verify and secure, not to {}", level.name()));
        }
        let patterns: Vec<String> =
            arg.split(':').filter(|p| !p.is_empty()).map(|p| p.trim_end_matches('.').to_ascii_lowercase()).collect();
        if patterns.is_empty() {
            return Err("match= names nothing".into());
        }
        matches.get_or_insert_with(Vec::new).extend(patterns);
    }
    Ok(Entry { level, matches })
}

/// What one next hop gets: the level, the names its certificate must
/// carry (for `verify` and `secure`), and where the policy came from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct HopTls {
    pub(crate) level: TlsPolicy,
    pub(crate) names: Vec<CertName>,
    /// `texthash:/etc/posthorn/tls_policy:3`, or the default's key.
    pub(crate) source: String,
    /// Secure, usable TLSA records found for the host (`dane`,
    /// `dane-only`): the certificate is checked against them alone.
    pub(crate) dane: Option<DaneHop>,
}

/// What a DANE-authenticated session checks: the TLSA records, and the
/// names a DANE-TA certificate may carry (the MX host, the next hop).
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct DaneHop {
    pub(crate) records: Vec<crate::tls::dane::Tlsa>,
    pub(crate) names: Vec<String>,
}

/// The names a `verify`/`secure` certificate must carry for `nexthop`.
fn cert_names(level: TlsPolicy, patterns: Option<&[String]>, nexthop: &str) -> Vec<CertName> {
    let default: &[&str] = if level == TlsPolicy::Secure { &["nexthop", "dot-nexthop"] } else { &["hostname"] };
    let owned: Vec<String>;
    let patterns: Vec<&str> = match patterns {
        Some(p) => {
            owned = p.to_vec();
            owned.iter().map(String::as_str).collect()
        }
        None => default.to_vec(),
    };
    let nexthop = nexthop.trim_start_matches('[').trim_end_matches(']').trim_end_matches('.').to_ascii_lowercase();
    let mut names = Vec::new();
    for p in patterns {
        let name = match p {
            "hostname" => CertName::Dialled,
            "nexthop" => CertName::Exact(nexthop.clone()),
            "dot-nexthop" => CertName::Below(format!(".{nexthop}")),
            p if p.starts_with('.') => CertName::Below(p.to_string()),
            p => CertName::Exact(p.to_string()),
        };
        if !names.contains(&name) {
            names.push(name);
        }
    }
    names
}

/// The keys a domain delivered by MX is looked up under.
pub(crate) fn domain_keys(domain: &str) -> Vec<String> {
    let domain = domain.trim_end_matches('.').to_ascii_lowercase();
    let mut keys = vec![domain.clone()];
    let mut rest = domain.as_str();
    while let Some((_, parent)) = rest.split_once('.') {
        keys.push(format!(".{parent}"));
        rest = parent;
    }
    keys
}

/// The keys of an explicit next hop: `host`, `host:port`, `[host]`,
/// `[host]:port`; with port 25 (or none) both forms.
pub(crate) fn hop_keys(host: &str, port: Option<u16>, mx: bool) -> Vec<String> {
    let host = host.trim_end_matches('.').to_ascii_lowercase();
    let bare = if mx { host.clone() } else { format!("[{host}]") };
    match port {
        Some(p) if p != 25 => vec![format!("{bare}:{p}")],
        Some(_) => vec![format!("{bare}:25"), bare],
        None => vec![bare.clone(), format!("{bare}:25")],
    }
}

/// What a client configuration depends on: verifying or not, and the names.
type ConfigKey = (bool, Vec<CertName>);

/// The policies of one transport: its default level and CA, the shared
/// tables, and the client configurations built so far (one per distinct
/// level and names; building one reads the CA file).
pub(crate) struct Policies {
    table: Option<Arc<dyn PolicyTable>>,
    default: TlsPolicy,
    /// The configuration key the default comes from, for logs.
    default_key: &'static str,
    ca: Option<PathBuf>,
    client_cert: Option<(PathBuf, PathBuf)>,
    configs: Mutex<HashMap<ConfigKey, Result<Arc<rustls::ClientConfig>, String>>>,
    /// The validating resolver for `dane` and `dane-only` (MX delivery).
    dane: Option<Arc<crate::deliver::dane::Dane>>,
}

impl std::fmt::Debug for Policies {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Policies").field("default", &self.default).field("ca", &self.ca).finish_non_exhaustive()
    }
}

impl Policies {
    pub(crate) fn new(
        table: Option<Arc<dyn PolicyTable>>,
        default: TlsPolicy,
        default_key: &'static str,
        ca: Option<PathBuf>,
        client_cert: Option<(PathBuf, PathBuf)>,
    ) -> Policies {
        Policies { table, default, default_key, ca, client_cert, configs: Mutex::new(HashMap::new()), dane: None }
    }

    /// These policies, with the resolver that `dane` and `dane-only` ask.
    pub(crate) fn with_dane(mut self, dane: Arc<crate::deliver::dane::Dane>) -> Policies {
        self.dane = Some(dane);
        self
    }

    /// `hop` for `host` (reached for `nexthop`) once DANE has had its say:
    /// unchanged for other levels; with usable TLSA records, `dane` set;
    /// without, `dane` becomes `may` and `dane-only` an error (the mail
    /// waits), as does a bogus or failed lookup for either.
    pub(crate) async fn apply_dane(&self, hop: HopTls, nexthop: &str, host: &str, port: u16) -> Result<HopTls, String> {
        use crate::deliver::dane::Verdict;
        if !hop.level.is_dane() {
            return Ok(hop);
        }
        let verdict = match &self.dane {
            Some(dane) => dane.check(nexthop, host, port).await,
            None => Verdict::NotDane("DANE applies to MX delivery only".into()),
        };
        match verdict {
            Verdict::Usable(records) => {
                let mut names = vec![host.trim_end_matches('.').to_ascii_lowercase()];
                let nexthop = nexthop.trim_start_matches('[').trim_end_matches(']').trim_end_matches('.');
                if !names.iter().any(|n| n.eq_ignore_ascii_case(nexthop)) {
                    names.push(nexthop.to_ascii_lowercase());
                }
                Ok(HopTls { dane: Some(DaneHop { records, names }), ..hop })
            }
            Verdict::NotDane(why) if hop.level == TlsPolicy::Dane => {
                tracing::debug!("no DANE for {host}: {why}; TLS as with may");
                Ok(HopTls { level: TlsPolicy::May, ..hop })
            }
            Verdict::NotDane(why) => Err(format!("dane-only ({}), but {why}", hop.source)),
            Verdict::Defer(why) => Err(format!("DANE ({}): {why}", hop.source)),
        }
    }

    /// The policy for a next hop looked up under `keys`, whose names are
    /// `nexthop`'s. A table entry that does not parse (the file changed
    /// since it was checked) is an error: the hop waits rather than
    /// getting a weaker policy than was meant.
    pub(crate) fn for_hop(&self, keys: &[String], nexthop: &str) -> Result<HopTls, String> {
        let found = self.table.as_ref().and_then(|t| t.find(keys));
        let (entry, source) = match found {
            Some((value, source)) => (parse_value(&value).map_err(|e| format!("{source}: {e}"))?, source),
            None => (Entry { level: self.default, matches: None }, self.default_key.to_string()),
        };
        let names = if entry.level.verifies() {
            cert_names(entry.level, entry.matches.as_deref(), nexthop)
        } else {
            Vec::new()
        };
        Ok(HopTls { level: entry.level, names, source, dane: None })
    }

    /// Whether a policy table names one of `keys` (such an entry wins over
    /// MTA-STS).
    pub(crate) fn in_table(&self, keys: &[String]) -> bool {
        self.table.as_ref().is_some_and(|t| t.find(keys).is_some())
    }

    /// The rustls configuration for `hop`, built on first use.
    pub(crate) fn client_config(&self, hop: &HopTls) -> Result<Arc<rustls::ClientConfig>, String> {
        if let Some(dane) = &hop.dane {
            // Per host and TLSA set: not worth a cache.
            return crate::tls::dane::client_config(dane.records.clone(), dane.names.clone())
                .map_err(|e| e.to_string());
        }
        let key = (hop.level.verifies(), hop.names.clone());
        let mut configs = self.configs.lock().unwrap_or_else(|e| e.into_inner());
        configs
            .entry(key)
            .or_insert_with(|| {
                let client_cert = self.client_cert.as_ref().map(|(c, k)| (c.as_path(), k.as_path()));
                let built = if hop.level.verifies() {
                    crate::tls::matching::client_config(self.ca.as_deref(), client_cert, hop.names.clone())
                } else {
                    crate::tls::client_config_with_cert(false, None, client_cert)
                };
                built.map_err(|e| e.to_string())
            })
            .clone()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn values() {
        let ok = |v: &str, level, m: Option<&[&str]>| {
            assert_eq!(
                parse_value(v),
                Ok(Entry { level, matches: m.map(|m| m.iter().map(|s| s.to_string()).collect()) }),
                "{v}"
            )
        };
        ok("none", TlsPolicy::None, None);
        ok("MAY", TlsPolicy::May, None);
        ok("encrypt", TlsPolicy::Encrypt, None);
        ok("verify", TlsPolicy::Verify, None);
        ok("secure match=.example.com:mx.example.net.", TlsPolicy::Secure, Some(&[".example.com", "mx.example.net"]));
        ok("verify match=hostname match=nexthop", TlsPolicy::Verify, Some(&["hostname", "nexthop"]));
        let bad = |v: &str, want: &str| {
            let e = parse_value(v).unwrap_err();
            assert!(e.contains(want), "{v}: {e}");
        };
        bad("", "no TLS level");
        bad("maybe", "unknown TLS level `maybe`");
        ok("dane", TlsPolicy::Dane, None);
        ok("DANE-only", TlsPolicy::DaneOnly, None);
        bad("fingerprint", "`fingerprint` is not supported");
        bad("dane match=x", "applies to verify and secure");
        bad("may match=x", "applies to verify and secure");
        bad("secure ciphers=high", "attribute `ciphers`");
        bad("secure match=", "names nothing");
    }

    #[test]
    fn keys() {
        assert_eq!(domain_keys("Mail.Example.COM."), ["mail.example.com", ".example.com", ".com"]);
        assert_eq!(hop_keys("mx.example.org", Some(25), false), ["[mx.example.org]:25", "[mx.example.org]"]);
        assert_eq!(hop_keys("mx.example.org", None, false), ["[mx.example.org]", "[mx.example.org]:25"]);
        assert_eq!(hop_keys("relay.example", Some(2525), true), ["relay.example:2525"]);
    }

    #[test]
    fn names_by_level() {
        assert_eq!(cert_names(TlsPolicy::Verify, None, "example.com"), [CertName::Dialled]);
        assert_eq!(
            cert_names(TlsPolicy::Secure, None, "Example.com"),
            [CertName::Exact("example.com".into()), CertName::Below(".example.com".into())]
        );
        let written = ["dot-nexthop".to_string(), "mx.example.net".to_string(), ".example.org".to_string()];
        assert_eq!(
            cert_names(TlsPolicy::Secure, Some(&written), "[example.com]"),
            [
                CertName::Below(".example.com".into()),
                CertName::Exact("mx.example.net".into()),
                CertName::Below(".example.org".into())
            ]
        );
    }

    #[tokio::test]
    async fn dane_without_a_resolver_is_may_or_an_error() {
        // Policies without `with_dane` (the smarthosts'): no TLSA lookups.
        let p = Policies::new(Some(Arc::new(Fixed("[relay.test]", "dane"))), TlsPolicy::DaneOnly, "x", None, None);
        let hop = p.for_hop(&hop_keys("relay.test", None, false), "relay.test").unwrap();
        let hop = p.apply_dane(hop, "relay.test", "relay.test", 25).await.unwrap();
        assert_eq!((hop.level, hop.dane), (TlsPolicy::May, None));
        let hop = p.for_hop(&hop_keys("other.test", None, false), "other.test").unwrap();
        let e = p.apply_dane(hop, "other.test", "other.test", 25).await.unwrap_err();
        assert_eq!(e, "dane-only (x), but DANE applies to MX delivery only");
        let hop = p.for_hop(&hop_keys("relay.test", None, false), "relay.test").unwrap();
        let verify = HopTls { level: TlsPolicy::Verify, ..hop };
        assert_eq!(p.apply_dane(verify.clone(), "a", "b", 25).await.unwrap(), verify, "other levels untouched");
    }

    struct Fixed(&'static str, &'static str);
    impl PolicyTable for Fixed {
        fn find(&self, keys: &[String]) -> Option<(String, String)> {
            keys.iter().any(|k| k == self.0).then(|| (self.1.to_string(), "test:1".to_string()))
        }
    }

    #[test]
    fn table_beats_default_and_a_bad_entry_is_an_error() {
        let p = Policies::new(
            Some(Arc::new(Fixed(".example.com", "encrypt"))),
            TlsPolicy::May,
            "outbound_tls.level",
            None,
            None,
        );
        let hop = p.for_hop(&domain_keys("a.example.com"), "a.example.com").unwrap();
        assert_eq!((hop.level, hop.source.as_str()), (TlsPolicy::Encrypt, "test:1"));
        let hop = p.for_hop(&domain_keys("example.org"), "example.org").unwrap();
        assert_eq!((hop.level, hop.source.as_str()), (TlsPolicy::May, "outbound_tls.level"));
        let p = Policies::new(Some(Arc::new(Fixed("example.com", "secure bogus"))), TlsPolicy::May, "x", None, None);
        assert_eq!(
            p.for_hop(&domain_keys("example.com"), "example.com").unwrap_err(),
            "test:1: attribute `bogus` is not supported (posthorn knows match=)"
        );
    }
}
