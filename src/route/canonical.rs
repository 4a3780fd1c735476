//! Sender and recipient rewriting at the door into the queue: Postfix's
//! canonical(5) tables (`rewrite.sender_canonical_maps`,
//! `rewrite.recipient_canonical_maps`) and masquerading of local senders
//! (`rewrite.masquerade_as`, `rewrite.masquerade_domains`).
//!
//! Canonical lookups, first match wins: `user@domain`, then `user` (only
//! when the domain is this host's or a local domain), then `@domain`. A
//! value `@other` keeps the user part; a value without `@` is qualified
//! with the original domain.
//!
//! Masquerading (after the canonical maps): a sender that is unqualified or
//! in one of `masquerade_domains` (default: the hostname and `localhost`)
//! becomes `user@MASQUERADE_AS`, or exactly `MASQUERADE_AS` when that is a
//! whole address. It applies to local submissions (`sendmail`) on any
//! role, and to all mail on a satellite.

use super::table::{Syntax, Table, TableError, open_all};
use crate::config::{Config, Role};
use crate::message::{addrlist, header};
use std::sync::Arc;

pub(crate) struct Canonical {
    sender_maps: Vec<Arc<Table>>,
    recipient_maps: Vec<Arc<Table>>,
    masquerade_as: Option<String>,
    masquerade_domains: Vec<String>,
    satellite: bool,
    /// Domains whose users `user` keys may match: the hostname and the
    /// local domains.
    own_domains: Vec<String>,
}

impl Canonical {
    /// `None` when nothing is configured. Errors name the key and the file.
    pub(crate) fn from_config(config: &Config) -> Result<Option<Canonical>, String> {
        let open =
            |key: &str, specs: &[String]| open_all(specs, Syntax::Map).map_err(|e: TableError| format!("{key}: {e}"));
        let r = &config.rewrite;
        let c = Canonical {
            sender_maps: open("rewrite.sender_canonical_maps", &r.sender_canonical_maps)?,
            recipient_maps: open("rewrite.recipient_canonical_maps", &r.recipient_canonical_maps)?,
            masquerade_as: r.masquerade_as.clone().filter(|m| !m.trim().is_empty()),
            masquerade_domains: if r.masquerade_domains.is_empty() {
                vec![config.hostname.to_ascii_lowercase(), "localhost".into()]
            } else {
                r.masquerade_domains.iter().map(|d| d.to_ascii_lowercase()).collect()
            },
            satellite: config.role == Role::Satellite,
            own_domains: std::iter::once(config.hostname.to_ascii_lowercase())
                .chain(config.access.local_domains.iter().cloned())
                .collect(),
        };
        let idle = c.sender_maps.is_empty() && c.recipient_maps.is_empty() && c.masquerade_as.is_none();
        Ok((!idle).then_some(c))
    }

    /// The sender as it goes into the queue (envelope and `From:`).
    pub(crate) fn sender(&self, address: &str, local_submission: bool) -> String {
        self.sender_traced(address, local_submission).0
    }

    /// The sender as it goes into the queue, and each step that changed
    /// it (for `posthorn route explain`).
    pub(crate) fn sender_traced(&self, address: &str, local_submission: bool) -> (String, Vec<String>) {
        let mut steps = Vec::new();
        if address.is_empty() {
            return (String::new(), steps);
        }
        let address = match lookup(&self.sender_maps, address, &self.own_domains) {
            Some(hit) => {
                steps.push(format!("{address}: sender canonical {hit}"));
                hit.to
            }
            None => address.to_string(),
        };
        let masqueraded = match &self.masquerade_as {
            Some(to) if (local_submission || self.satellite) && self.is_masqueraded(&address) => {
                if to.contains('@') {
                    to.clone()
                } else {
                    let user = address.rsplit_once('@').map_or(address.as_str(), |(u, _)| u);
                    format!("{user}@{to}")
                }
            }
            _ => return (address, steps),
        };
        steps.push(format!("{address}: masqueraded (rewrite.masquerade_as) -> {masqueraded}"));
        (masqueraded, steps)
    }

    /// A recipient as it goes into the queue (before alias expansion).
    pub(crate) fn recipient(&self, address: &str) -> String {
        self.recipient_traced(address).map_or_else(|| address.to_string(), |hit| hit.to)
    }

    /// The `recipient_canonical_maps` entry that rewrites `address`, if
    /// any (for `posthorn route explain`, and the door).
    pub(crate) fn recipient_traced(&self, address: &str) -> Option<Hit> {
        lookup(&self.recipient_maps, address, &self.own_domains)
    }

    /// Whether `From:` needs looking at: something may change senders.
    pub(crate) fn rewrites_senders(&self, local_submission: bool) -> bool {
        !self.sender_maps.is_empty() || (self.masquerade_as.is_some() && (local_submission || self.satellite))
    }

    fn is_masqueraded(&self, address: &str) -> bool {
        match address.rsplit_once('@') {
            None => true,
            Some((_, domain)) => {
                let domain = domain.trim_end_matches('.').to_ascii_lowercase();
                self.masquerade_domains.contains(&domain)
            }
        }
    }

    /// Rewrites every address in a `From:` (or `Sender:`) header value.
    pub(crate) fn header_value(&self, value: &[u8], local_submission: bool) -> Vec<u8> {
        rewrite_addresses(value, |a| self.sender(a, local_submission))
    }
}

/// A canonical table entry that matched, and the address it gives.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Hit {
    pub(crate) table: String,
    pub(crate) line: usize,
    pub(crate) key: String,
    pub(crate) to: String,
}

impl std::fmt::Display for Hit {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "({} line {}, key \"{}\") -> {}", self.table, self.line, self.key, self.to)
    }
}

/// The canonical entry for `address`, if a table has one.
fn lookup(tables: &[Arc<Table>], address: &str, own_domains: &[String]) -> Option<Hit> {
    if tables.is_empty() {
        return None;
    }
    let (user, domain) = address.rsplit_once('@').unwrap_or((address, ""));
    let own = domain.is_empty() || own_domains.iter().any(|d| d.eq_ignore_ascii_case(domain.trim_end_matches('.')));
    let mut keys = vec![address.to_string()];
    if own {
        keys.push(user.to_string());
    }
    if !domain.is_empty() {
        keys.push(format!("@{domain}"));
    }
    for key in &keys {
        if let Some((table, entry)) = tables.iter().find_map(|t| t.find(key).map(|e| (t.name().to_string(), e))) {
            let value = entry.value.split(',').next().unwrap_or("").trim().to_string();
            if value.is_empty() {
                continue;
            }
            let to = match value.strip_prefix('@') {
                Some(d) => format!("{user}@{d}"),
                None if value.contains('@') || domain.is_empty() => value,
                None => format!("{value}@{domain}"),
            };
            return Some(Hit { table, line: entry.line, key: entry.key, to });
        }
    }
    None
}

/// Applies `f` to every address in a header value (`message::addrlist`).
/// An address that is not UTF-8 (no table key can match it) stays as it
/// was.
fn rewrite_addresses(value: &[u8], f: impl Fn(&str) -> String) -> Vec<u8> {
    addrlist::map_addresses(value, |addr| std::str::from_utf8(addr).ok().map(|a| f(a).into_bytes()))
}

/// Rewrites the addresses in the `From:` and `Sender:` fields of a header
/// block. Every other byte stays as it was, 8-bit ones included, so an
/// upstream DKIM signature over the other fields still verifies.
pub(crate) fn rewrite_header_block(head: &[u8], canonical: &Canonical, local_submission: bool) -> Vec<u8> {
    header::rewrite(head, |field| {
        (field.is("from") || field.is("sender")).then(|| canonical.header_value(field.value(), local_submission))
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;

    fn canonical(extra: &str, files: &[(&str, &str)], dir: &Path) -> Canonical {
        for (name, text) in files {
            std::fs::write(dir.join(name), text).unwrap();
        }
        let text = format!("hostname = \"vm12.internal\"\n[rewrite]\n{extra}\n");
        let config = Config::parse(&text, Path::new("t.toml")).unwrap();
        Canonical::from_config(&config).unwrap().unwrap()
    }

    #[test]
    fn masquerading() {
        let dir = tempfile::tempdir().unwrap();
        let c = canonical("masquerade_as = \"vm12.example.org\"", &[], dir.path());
        for (from, want) in [
            ("root@vm12.internal", "root@vm12.example.org"),
            ("root@localhost", "root@vm12.example.org"),
            ("root", "root@vm12.example.org"),
            ("alice@example.net", "alice@example.net"),
            ("", ""),
        ] {
            assert_eq!(c.sender(from, false), want, "{from}");
        }
        let c = canonical("masquerade_as = \"noreply@example.org\"", &[], dir.path());
        assert_eq!(c.sender("cron@vm12.internal", false), "noreply@example.org");
    }

    #[test]
    fn canonical_lookup_order() {
        let dir = tempfile::tempdir().unwrap();
        let map = "root@vm12.internal admin@example.org\nwww webmaster@example.org\n\
                   @legacy.example @example.org\n";
        let spec = dir.path().join("canonical");
        let c = canonical(
            &format!("sender_canonical_maps = [\"hash:{}\"]", spec.display()),
            &[("canonical", map)],
            dir.path(),
        );
        for (from, want) in [
            ("root@vm12.internal", "admin@example.org"),
            ("www@vm12.internal", "webmaster@example.org"),
            ("www@elsewhere.example", "www@elsewhere.example"),
            ("bob@legacy.example", "bob@example.org"),
            ("bob@other.example", "bob@other.example"),
        ] {
            assert_eq!(c.sender(from, false), want, "{from}");
        }
        assert_eq!(c.recipient("root@vm12.internal"), "root@vm12.internal");
    }

    #[test]
    fn header_addresses() {
        let dir = tempfile::tempdir().unwrap();
        let c = canonical("masquerade_as = \"vm12.example.org\"", &[], dir.path());
        let head = b"From: \"Cron Daemon\" <root@vm12.internal>\r\nTo: root@vm12.internal\r\n\
                     Sender: root (cron)\r\nSubject: x\r\n";
        let got = String::from_utf8(rewrite_header_block(head, &c, true)).unwrap();
        assert_eq!(
            got,
            "From: \"Cron Daemon\" <root@vm12.example.org>\r\nTo: root@vm12.internal\r\n\
             Sender: root@vm12.example.org (cron)\r\nSubject: x\r\n"
        );
    }

    #[test]
    fn fields_not_rewritten_keep_their_bytes() {
        let dir = tempfile::tempdir().unwrap();
        let c = canonical("masquerade_as = \"vm12.example.org\"", &[], dir.path());
        // Latin-1, as 8-bit mail from old programs has it: not UTF-8.
        let head = b"Subject: caf\xe9\r\nFrom: \"Andr\xe9\" <root@vm12.internal>\r\nX-Raw: \xff\xfe\r\n \xe9t\xe9\r\n\
                     Sender: root, \xe9@vm12.internal\r\n";
        assert_eq!(
            rewrite_header_block(head, &c, true),
            b"Subject: caf\xe9\r\nFrom: \"Andr\xe9\" <root@vm12.example.org>\r\nX-Raw: \xff\xfe\r\n \xe9t\xe9\r\n\
              Sender: root@vm12.example.org, \xe9@vm12.internal\r\n"
        );
    }
}
