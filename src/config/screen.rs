//! `[screen]`: postscreen's tests before a client may send mail (issue
//! 16): DNS blocklists and allowlists with weights (`dnsbl_sites`,
//! Postfix's `postscreen_dnsbl_sites`) and the pregreet test (a client
//! that talks before the greeting). Off on both roles unless `dnsbl_sites`
//! names a list or `pregreet = true`.
//!
//! The site syntax is postscreen's, parsed here without I/O:
//! `domain[=filter][*weight]`, where the filter is an IPv4 address whose
//! octets may each be a number or `[...]` holding `;`-separated numbers
//! and `a..b` ranges (`127.0.0.[2;4..7]`), and the weight an integer,
//! negative for an allowlist (`list.dnswl.org=127.0.[0..255].[0..255]*-2`).

use super::{ConfigError, Dur, KeyError};
use serde::Deserialize;
use std::fmt;
use std::net::Ipv4Addr;
use std::time::Duration;

/// One octet of a filter: the values it admits, as inclusive ranges.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Octet(Vec<(u8, u8)>);

impl Octet {
    fn admits(&self, value: u8) -> bool {
        self.0.iter().any(|&(lo, hi)| (lo..=hi).contains(&value))
    }

    fn parse(s: &str) -> Result<Octet, String> {
        let number = |t: &str| -> Result<u8, String> {
            t.parse::<u8>().map_err(|_| format!("`{t}` is not a number from 0 to 255"))
        };
        let Some(inner) = s.strip_prefix('[').and_then(|r| r.strip_suffix(']')) else {
            let n = number(s)?;
            return Ok(Octet(vec![(n, n)]));
        };
        let mut ranges = Vec::new();
        for part in inner.split(';') {
            let range = match part.split_once("..") {
                Some((lo, hi)) => (number(lo)?, number(hi)?),
                None => (number(part)?, number(part)?),
            };
            if range.0 > range.1 {
                return Err(format!("`{part}` is an empty range"));
            }
            ranges.push(range);
        }
        Ok(Octet(ranges))
    }
}

impl fmt::Display for Octet {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if let [(lo, hi)] = self.0[..]
            && lo == hi
        {
            return write!(f, "{lo}");
        }
        let parts: Vec<String> =
            self.0.iter().map(|&(lo, hi)| if lo == hi { lo.to_string() } else { format!("{lo}..{hi}") }).collect();
        write!(f, "[{}]", parts.join(";"))
    }
}

/// One entry of `dnsbl_sites`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct DnsblSite {
    /// The list's domain, lowercase, no trailing dot.
    pub(crate) domain: String,
    /// The answers that count; `None`: any A record.
    pub(crate) filter: Option<[Octet; 4]>,
    /// Added to the client's score when the list answers; negative for
    /// an allowlist.
    pub(crate) weight: i64,
}

impl DnsblSite {
    /// Whether `answer` (one A record of the list) counts.
    pub(crate) fn matches(&self, answer: Ipv4Addr) -> bool {
        match &self.filter {
            None => true,
            Some(octets) => octets.iter().zip(answer.octets()).all(|(o, v)| o.admits(v)),
        }
    }
}

impl fmt::Display for DnsblSite {
    /// The entry as postscreen writes it.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.domain)?;
        if let Some([a, b, c, d]) = &self.filter {
            write!(f, "={a}.{b}.{c}.{d}")?;
        }
        if self.weight != 1 {
            write!(f, "*{}", self.weight)?;
        }
        Ok(())
    }
}

impl std::str::FromStr for DnsblSite {
    type Err = String;
    fn from_str(s: &str) -> Result<DnsblSite, String> {
        let entry = s.trim();
        let bad = |why: String| format!("`{entry}`: {why}");
        let (rest, weight) = match entry.rsplit_once('*') {
            Some((rest, w)) => (rest, w.trim().parse::<i64>().map_err(|_| bad(format!("`{w}` is not a weight")))?),
            None => (entry, 1),
        };
        let (domain, filter) = match rest.split_once('=') {
            Some((domain, filter)) => {
                let octets = split_octets(filter);
                let [a, b, c, d] = octets[..] else {
                    return Err(bad(format!("`{filter}` is not an address pattern d.d.d.d")));
                };
                let parse = |o: &str| Octet::parse(o).map_err(&bad);
                (domain, Some([parse(a)?, parse(b)?, parse(c)?, parse(d)?]))
            }
            None => (rest, None),
        };
        let domain = domain.trim().trim_end_matches('.').to_ascii_lowercase();
        let label_ok = |l: &str| {
            !l.is_empty() && l.len() <= 63 && l.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        };
        if !domain.contains('.') || !domain.split('.').all(label_ok) {
            return Err(bad(format!("`{domain}` is not a DNS list's domain")));
        }
        if weight == 0 {
            return Err(bad("a weight of 0 would never count".into()));
        }
        Ok(DnsblSite { domain, filter, weight })
    }
}

/// The octets of an address pattern: split at the dots outside `[...]`
/// (inside, `..` writes a range).
fn split_octets(pattern: &str) -> Vec<&str> {
    let mut octets = Vec::new();
    let (mut start, mut inside) = (0, false);
    for (i, c) in pattern.char_indices() {
        match c {
            '[' => inside = true,
            ']' => inside = false,
            '.' if !inside => {
                octets.push(&pattern[start..i]);
                start = i + 1;
            }
            _ => {}
        }
    }
    octets.push(&pattern[start..]);
    octets
}

#[derive(Clone, Debug)]
pub(crate) struct ScreenConfig {
    /// The lists asked about each client; empty: no DNS lists.
    pub(crate) dnsbl_sites: Vec<DnsblSite>,
    /// A client whose score reaches this is refused
    /// (`postscreen_dnsbl_threshold`).
    pub(crate) dnsbl_threshold: i64,
    /// The most the lists may take, from the connect; a list that has not
    /// answered by then counts as not listing the client.
    pub(crate) dnsbl_timeout: Duration,
    /// The pregreet test: a partial banner, then `greet_wait` for a client
    /// that talks too early.
    pub(crate) pregreet: bool,
    pub(crate) greet_wait: Duration,
    /// How long a client's pregreet result and DNS list score are kept.
    pub(crate) cache_ttl: Duration,
}

impl ScreenConfig {
    /// Whether any test runs.
    pub(crate) fn is_on(&self) -> bool {
        self.pregreet || !self.dnsbl_sites.is_empty()
    }
}

#[derive(Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawScreen {
    dnsbl_sites: Option<Vec<String>>,
    dnsbl_threshold: Option<i64>,
    dnsbl_timeout: Option<Dur>,
    pregreet: Option<bool>,
    greet_wait: Option<Dur>,
    cache_ttl: Option<Dur>,
}

pub(super) fn resolve_screen(raw: RawScreen, err: &KeyError) -> Result<ScreenConfig, ConfigError> {
    let dnsbl_sites = raw
        .dnsbl_sites
        .unwrap_or_default()
        .iter()
        // postscreen takes "a, b" in one string as well.
        .flat_map(|s| s.split([',', ' ']).filter(|e| !e.trim().is_empty()).map(str::to_string).collect::<Vec<_>>())
        .map(|s| s.parse().map_err(|m| err("screen.dnsbl_sites", m)))
        .collect::<Result<Vec<DnsblSite>, _>>()?;
    let dnsbl_threshold = raw.dnsbl_threshold.unwrap_or(1);
    if dnsbl_threshold < 1 {
        return Err(err(
            "screen.dnsbl_threshold",
            format!("{dnsbl_threshold} would refuse unlisted clients; use 1 or more"),
        ));
    }
    let dnsbl_timeout = raw.dnsbl_timeout.map_or(Duration::from_secs(10), |d| d.0);
    if dnsbl_timeout.is_zero() {
        return Err(err("screen.dnsbl_timeout", "must be more than 0s".into()));
    }
    let greet_wait = raw.greet_wait.map_or(Duration::from_secs(6), |d| d.0);
    let pregreet = raw.pregreet.unwrap_or(false);
    if pregreet && greet_wait.is_zero() {
        // With no wait only input already buffered could be seen: a test
        // that catches almost nobody.
        return Err(err("screen.greet_wait", "must be more than 0s when pregreet is on".into()));
    }
    Ok(ScreenConfig {
        dnsbl_sites,
        dnsbl_threshold,
        dnsbl_timeout,
        pregreet,
        greet_wait,
        cache_ttl: raw.cache_ttl.map_or(Duration::from_secs(3600), |d| d.0),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn site(s: &str) -> Result<DnsblSite, String> {
        s.parse()
    }

    #[test]
    fn site_syntax() {
        let ip = |s: &str| s.parse::<Ipv4Addr>().unwrap();
        // (entry, domain, weight, answers that count, answers that do not)
        type Case<'a> = (&'a str, &'a str, i64, &'a [&'a str], &'a [&'a str]);
        let table: &[Case] = &[
            ("zen.spamhaus.org", "zen.spamhaus.org", 1, &["127.0.0.2", "127.0.0.10"], &[]),
            ("zen.spamhaus.org*3", "zen.spamhaus.org", 3, &["127.0.0.4"], &[]),
            ("Zen.Example.", "zen.example", 1, &["127.0.0.2"], &[]),
            ("b.example=127.0.0.2", "b.example", 1, &["127.0.0.2"], &["127.0.0.3"]),
            ("b.example=127.0.0.[2..11]*2", "b.example", 2, &["127.0.0.2", "127.0.0.11"], &["127.0.0.12", "127.0.1.2"]),
            ("b.example=127.0.0.[2;4..7]", "b.example", 1, &["127.0.0.2", "127.0.0.5"], &["127.0.0.3", "127.0.0.8"]),
            (
                "list.dnswl.org=127.0.[0..255].[0..255]*-2",
                "list.dnswl.org",
                -2,
                &["127.0.10.0", "127.0.255.3"],
                &["127.1.0.0", "128.0.0.1"],
            ),
        ];
        for (entry, domain, weight, yes, no) in table {
            let s = site(entry).unwrap_or_else(|e| panic!("{entry}: {e}"));
            assert_eq!((&s.domain[..], s.weight), (*domain, *weight), "{entry}");
            for a in *yes {
                assert!(s.matches(ip(a)), "{entry} should admit {a}");
            }
            for a in *no {
                assert!(!s.matches(ip(a)), "{entry} should not admit {a}");
            }
        }
    }

    #[test]
    fn bad_sites() {
        for entry in [
            "",
            "nodot",
            "zen.example*",
            "zen.example*x",
            "zen.example*0",
            "zen.example=127.0.0",
            "zen.example=127.0.0.256",
            "zen.example=127.0.0.[5..2]",
            "zen.example=127.0.0.[2;]",
            "zen.example=127.0.0.[2",
            "bad..example",
            "bad space.example",
        ] {
            assert!(site(entry).is_err(), "{entry:?} was accepted");
        }
    }

    #[test]
    fn written_back_as_postscreen_writes_it() {
        for entry in ["zen.example*3", "list.dnswl.org=127.0.[0..255].[0..255]*-2", "b.example=127.0.0.[2;4..7]"] {
            assert_eq!(site(entry).unwrap().to_string(), entry);
        }
    }
}
