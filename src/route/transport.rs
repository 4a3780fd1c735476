//! The next hop for a recipient: Postfix's transport(5) table, read from
//! its text source, and the `transport:nexthop` values it holds.
//!
//! Keys, tried in this order for `user@sub.example.org`:
//! 1. the full address `user@sub.example.org`;
//! 2. the domain `sub.example.org`;
//! 3. each parent domain in its leading-dot form: `.example.org`, `.org`
//!    (a plain `example.org` key matches that domain only, as Postfix's
//!    default `parent_domain_matches_subdomains` has it for transport maps);
//! 4. `*`.
//!
//! With several tables, each key is tried in every table before the next
//! key. The first match wins, and its empty fields are filled the way
//! Postfix does: an empty nexthop (`smtp:`) means the recipient's domain; an
//! empty transport (`:[host]`) keeps the default transport and changes only
//! the nexthop; `:` alone changes nothing.
//!
//! Values: `smtp:`, `smtp:host` (MX lookup of host), `smtp:host:port`,
//! `smtp:[host]` and `smtp:[host]:port` (no MX lookup), the same with
//! `relay:`, `maildir:` for delivery to `deliver.maildir_root` (`virtual:`
//! is taken as `maildir:` so Postfix tables keep working), and `local:`
//! for delivery as the user, the way Postfix's local(8) does it
//! (`deliver::local`). `lmtp:unix:/path`, `lmtp:[host]:port` and
//! `lmtp:host:port` hand the mail to an LMTP server such as Dovecot's
//! (`deliver::lmtp`); the nexthop is required there, and never looked up
//! by MX.

use super::table::{Table, fold};
use crate::message::nexthop::{HostSpec, LMTP_PORT, LmtpTarget};
use std::fmt;
use std::str::FromStr;
use std::sync::Arc;

/// How a recipient is delivered.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub(crate) enum Transport {
    /// SMTP to the domain's (or the nexthop's) MX hosts.
    Smtp,
    /// SMTP to a relay: the same client, a separate destination for backoff.
    Relay,
    /// Local delivery to a Maildir.
    Maildir,
    /// Delivery as the local user: mbox in the spool or a home mailbox.
    Local,
    /// LMTP to a mail store (RFC 2033).
    Lmtp,
}

impl Transport {
    pub(crate) fn name(self) -> &'static str {
        match self {
            Transport::Smtp => "smtp",
            Transport::Relay => "relay",
            Transport::Maildir => "maildir",
            Transport::Local => "local",
            Transport::Lmtp => "lmtp",
        }
    }

    /// Maildir and local delivery: no host, no port, no MX.
    pub(crate) fn is_local(self) -> bool {
        matches!(self, Transport::Maildir | Transport::Local)
    }

    fn parse(s: &str) -> Result<Transport, String> {
        match s.to_ascii_lowercase().as_str() {
            "smtp" => Ok(Transport::Smtp),
            "relay" => Ok(Transport::Relay),
            "maildir" | "virtual" => Ok(Transport::Maildir),
            "local" => Ok(Transport::Local),
            "lmtp" => Ok(Transport::Lmtp),
            _ => Err(format!("unsupported transport {s:?} (posthorn knows smtp, relay, lmtp, maildir and local)")),
        }
    }
}

/// Where and how to deliver one recipient.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub(crate) struct NextHop {
    pub(crate) transport: Transport,
    /// `None`: the recipient's domain.
    pub(crate) host: Option<String>,
    /// `None`: the transport's default port.
    pub(crate) port: Option<u16>,
    /// Look up the MX records of the host (or the recipient's domain);
    /// false for `[host]` and for Maildir.
    pub(crate) mx_lookup: bool,
}

impl NextHop {
    /// SMTP to the recipient's domain by MX: what the hub does by default.
    pub(crate) fn mx() -> NextHop {
        NextHop { transport: Transport::Smtp, host: None, port: None, mx_lookup: true }
    }

    /// Local delivery.
    pub(crate) fn maildir() -> NextHop {
        NextHop { transport: Transport::Maildir, host: None, port: None, mx_lookup: false }
    }

    /// Delivery as the local user (`local:`).
    pub(crate) fn local() -> NextHop {
        NextHop { transport: Transport::Local, host: None, port: None, mx_lookup: false }
    }

    /// LMTP to `target`, in the form `lmtp_target` reads back.
    pub(crate) fn lmtp(target: &LmtpTarget) -> NextHop {
        let (host, port) = match target {
            LmtpTarget::Unix(path) => (format!("unix:{path}"), None),
            LmtpTarget::Inet { host, port } => (host.clone(), Some(*port)),
        };
        NextHop { transport: Transport::Lmtp, host: Some(host), port, mx_lookup: false }
    }

    /// The LMTP server of an `lmtp:` hop (whose nexthop the table's
    /// parser made sure of); `None` for other transports.
    pub(crate) fn lmtp_target(&self) -> Option<LmtpTarget> {
        if self.transport != Transport::Lmtp {
            return None;
        }
        let host = self.host.as_deref()?;
        Some(match host.strip_prefix("unix:") {
            Some(path) => LmtpTarget::Unix(path.to_string()),
            None => LmtpTarget::Inet { host: host.to_string(), port: self.port.unwrap_or(LMTP_PORT) },
        })
    }

    /// The host to connect to or look up: the nexthop, or `domain`.
    pub(crate) fn destination<'a>(&'a self, domain: &'a str) -> &'a str {
        self.host.as_deref().unwrap_or(domain)
    }
}

/// Postfix's notation: `smtp:`, `relay:[10.0.0.1]:2525`, `smtp:example.net`.
impl fmt::Display for NextHop {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:", self.transport.name())?;
        if let Some(target) = self.lmtp_target() {
            return write!(f, "{target}");
        }
        write_nexthop(f, self.host.as_deref(), self.port, self.mx_lookup)
    }
}

fn write_nexthop(f: &mut fmt::Formatter<'_>, host: Option<&str>, port: Option<u16>, mx: bool) -> fmt::Result {
    match host {
        Some(h) if mx => write!(f, "{h}")?,
        Some(h) => write!(f, "[{h}]")?,
        None => {}
    }
    match port {
        Some(p) => write!(f, ":{p}"),
        None => Ok(()),
    }
}

/// `smtp:[host]:port` and friends, e.g. a content filter or relay setting.
impl FromStr for NextHop {
    type Err = String;

    fn from_str(s: &str) -> Result<NextHop, String> {
        let v = TransportValue::parse(s)?;
        let Some(transport) = v.transport else { return Err(format!("{s:?}: missing transport name")) };
        Ok(v.apply(&NextHop { transport, host: None, port: None, mx_lookup: true }))
    }
}

/// A transport table value as written: either field may be empty.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct TransportValue {
    /// `None`: keep the default transport.
    pub(crate) transport: Option<Transport>,
    /// `None`: no nexthop written.
    pub(crate) host: Option<String>,
    pub(crate) port: Option<u16>,
    pub(crate) mx_lookup: bool,
}

impl TransportValue {
    /// Parses `transport:nexthop` (either side may be empty; a value
    /// without a colon is all transport).
    pub(crate) fn parse(value: &str) -> Result<TransportValue, String> {
        let value = value.trim();
        let (transport, nexthop) = value.split_once(':').unwrap_or((value, ""));
        let transport = match transport {
            "" => None,
            t => Some(Transport::parse(t)?),
        };
        // Local delivery has no nexthop to speak of (Postfix's local(8)
        // ignores it too, so `local:$myhostname` is fine).
        if transport.is_some_and(Transport::is_local) {
            return Ok(TransportValue { transport, host: None, port: None, mx_lookup: false });
        }
        if transport == Some(Transport::Lmtp) {
            // The socket path rides in the host field (`unix:/path`),
            // which `NextHop::lmtp_target` reads back.
            let target = LmtpTarget::parse(nexthop).map_err(|e| format!("{value}: {e}"))?;
            let NextHop { host, port, .. } = NextHop::lmtp(&target);
            return Ok(TransportValue { transport, host, port, mx_lookup: false });
        }
        let spec = HostSpec::parse(nexthop).map_err(|e| format!("{value}: {e}"))?;
        Ok(TransportValue { transport, host: spec.host, port: spec.port, mx_lookup: spec.mx })
    }

    /// Fills in this value over `default`, the way Postfix's transport
    /// lookup does.
    pub(crate) fn apply(&self, default: &NextHop) -> NextHop {
        let mut hop = default.clone();
        if let Some(t) = self.transport {
            let mx_lookup = !t.is_local() && t != Transport::Lmtp;
            hop = NextHop { transport: t, host: None, port: None, mx_lookup };
        }
        if self.host.is_some() || self.port.is_some() {
            hop.host = self.host.clone();
            hop.port = self.port;
            hop.mx_lookup = self.mx_lookup && !hop.transport.is_local();
        }
        hop
    }
}

/// Which entry decided the route, for `route explain`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Matched {
    pub(crate) table: String,
    pub(crate) key: String,
    pub(crate) line: usize,
    pub(crate) value: String,
}

/// The route for one recipient: the next hop, and the entry behind it (or
/// `None` when the default applied).
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Route {
    pub(crate) next_hop: NextHop,
    pub(crate) matched: Option<Matched>,
}

impl fmt::Display for Route {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.matched {
            Some(m) => write!(
                f,
                "transport {}: {} (line {}, key \"{}\", value \"{}\")",
                m.table, self.next_hop, m.line, m.key, m.value
            ),
            None => write!(f, "transport default: {}", self.next_hop),
        }
    }
}

/// One or more transport tables, searched in Postfix's order.
#[derive(Clone, Debug, Default)]
pub(crate) struct TransportMaps {
    maps: Vec<Arc<Table>>,
}

impl TransportMaps {
    /// Tables opened with [`Syntax::Transport`](super::table::Syntax), so
    /// every value is known to parse.
    pub(crate) fn new(maps: Vec<Arc<Table>>) -> TransportMaps {
        TransportMaps { maps }
    }

    /// Whether some entry sends mail to a Maildir (`posthorn check` then
    /// looks at `deliver.maildir_root`).
    pub(crate) fn names_maildir(&self) -> bool {
        self.maps.iter().any(|table| {
            table
                .contents()
                .entries()
                .iter()
                .any(|e| TransportValue::parse(&e.value).is_ok_and(|v| v.transport == Some(Transport::Maildir)))
        })
    }

    /// The route for `recipient` (`user@domain`, or a bare domain):
    /// the first matching entry applied over `default`.
    pub(crate) fn route(&self, recipient: &str, default: &NextHop) -> Route {
        for key in lookup_keys(recipient) {
            for table in &self.maps {
                let Some(entry) = table.find(&key) else { continue };
                match TransportValue::parse(&entry.value) {
                    Ok(v) => {
                        let matched = Matched { table: table.name().into(), key, line: entry.line, value: entry.value };
                        return Route { next_hop: v.apply(default), matched: Some(matched) };
                    }
                    // Cannot happen for tables opened with Syntax::Transport.
                    Err(e) => tracing::error!("table {} line {}: {e}", table.name(), entry.line),
                }
            }
        }
        Route { next_hop: default.clone(), matched: None }
    }
}

/// The keys to try for a recipient, most specific first.
pub(crate) fn lookup_keys(recipient: &str) -> Vec<String> {
    let recipient = fold(recipient);
    let (address, domain) = match recipient.rsplit_once('@') {
        Some((_, d)) => (Some(recipient.as_str()), d),
        None => (None, recipient.as_str()),
    };
    let domain = domain.strip_suffix('.').unwrap_or(domain);
    let mut keys = Vec::new();
    if let Some(a) = address {
        keys.push(a.to_string());
    }
    if !domain.is_empty() {
        keys.push(domain.to_string());
        // An address literal has no parent domains.
        if !domain.starts_with('[') {
            let mut rest = domain;
            while let Some((_, parent)) = rest.split_once('.') {
                keys.push(format!(".{parent}"));
                rest = parent;
            }
        }
    }
    keys.push("*".to_string());
    keys
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::route::table::Syntax;

    fn hop(t: Transport, host: Option<&str>, port: Option<u16>, mx: bool) -> NextHop {
        NextHop { transport: t, host: host.map(String::from), port, mx_lookup: mx }
    }

    #[test]
    fn parses_values() {
        use Transport::*;
        let v = |t, h: Option<&str>, p, mx| TransportValue {
            transport: t,
            host: h.map(String::from),
            port: p,
            mx_lookup: mx,
        };
        let cases: &[(&str, TransportValue)] = &[
            ("smtp:", v(Some(Smtp), None, None, true)),
            ("smtp", v(Some(Smtp), None, None, true)),
            ("SMTP:", v(Some(Smtp), None, None, true)),
            ("smtp:mx.example.net", v(Some(Smtp), Some("mx.example.net"), None, true)),
            ("smtp:mx.example.net:2525", v(Some(Smtp), Some("mx.example.net"), Some(2525), true)),
            ("smtp:[mx.example.net]", v(Some(Smtp), Some("mx.example.net"), None, false)),
            ("smtp:[10.0.0.1]:2525", v(Some(Smtp), Some("10.0.0.1"), Some(2525), false)),
            ("smtp:[2001:db8::1]:25", v(Some(Smtp), Some("2001:db8::1"), Some(25), false)),
            ("smtp:[ipv6:2001:db8::1]", v(Some(Smtp), Some("2001:db8::1"), None, false)),
            ("smtp:[relay.example]:submission", v(Some(Smtp), Some("relay.example"), Some(587), false)),
            ("smtp::2525", v(Some(Smtp), None, Some(2525), true)),
            ("relay:[hub.example.org]:25", v(Some(Relay), Some("hub.example.org"), Some(25), false)),
            ("relay:", v(Some(Relay), None, None, true)),
            ("maildir:", v(Some(Maildir), None, None, false)),
            ("local:", v(Some(Local), None, None, false)),
            ("local:$myhostname", v(Some(Local), None, None, false)),
            ("virtual:", v(Some(Maildir), None, None, false)),
            ("lmtp:unix:/run/dovecot/lmtp", v(Some(Lmtp), Some("unix:/run/dovecot/lmtp"), None, false)),
            ("lmtp:[127.0.0.1]:2424", v(Some(Lmtp), Some("127.0.0.1"), Some(2424), false)),
            ("lmtp:store.lan", v(Some(Lmtp), Some("store.lan"), Some(24), false)),
            (":[gw.example]", v(None, Some("gw.example"), None, false)),
            (":", v(None, None, None, true)),
        ];
        for (s, want) in cases {
            assert_eq!(&TransportValue::parse(s).unwrap(), want, "{s:?}");
        }
    }

    #[test]
    fn refuses_bad_values() {
        let cases: &[(&str, &str)] = &[
            ("lmtp:", "write lmtp:unix:/path or lmtp:[host]:port"),
            ("lmtp:unix:relative", "absolute path"),
            ("lmtp:[h]x", "expected `:port` after `]`"),
            ("error:no mail here", "unsupported transport \"error\""),
            ("smtp:[unclosed", "missing `]`"),
            ("smtp:[h]x", "expected `:port` after `]`"),
            ("smtp:[h]:", "bad port"),
            ("smtp:h:99999", "bad port"),
            ("smtp:h:0", "bad port"),
            ("smtp:bad host", "is not a host name"),
            ("smtp:[]", "empty host"),
            ("smtp:-x.example", "is not a host name"),
            ("smtp:a..b", "is not a host name"),
            ("smtp:[a],[b]", "expected `:port`"),
        ];
        for (s, want) in cases {
            match TransportValue::parse(s) {
                Ok(v) => panic!("{s:?} accepted as {v:?}"),
                Err(e) => assert!(e.contains(want), "{s:?}: {e}"),
            }
        }
    }

    #[test]
    fn applies_over_the_default() {
        let relay = hop(Transport::Relay, Some("hub"), Some(25), false);
        let cases: &[(&str, NextHop)] = &[
            // Transport and nexthop: both replaced.
            ("smtp:[10.0.0.1]:2525", hop(Transport::Smtp, Some("10.0.0.1"), Some(2525), false)),
            // Transport only: nexthop reset to the recipient's domain.
            ("smtp:", NextHop::mx()),
            ("maildir:", NextHop::maildir()),
            // Nexthop only: the default transport kept.
            (":[gw]", hop(Transport::Relay, Some("gw"), None, false)),
            (":gw:26", hop(Transport::Relay, Some("gw"), Some(26), true)),
            // Neither: the default as it is.
            (":", relay.clone()),
        ];
        for (s, want) in cases {
            assert_eq!(&TransportValue::parse(s).unwrap().apply(&relay), want, "{s:?}");
        }
    }

    #[test]
    fn next_hops_print_and_parse_back() {
        for s in [
            "smtp:",
            "smtp:mx.example.net",
            "smtp:[10.0.0.1]:2525",
            "relay:[hub]:25",
            "maildir:",
            "smtp::2525",
            "lmtp:unix:/run/dovecot/lmtp",
            "lmtp:[127.0.0.1]:24",
        ] {
            let hop: NextHop = s.parse().unwrap();
            assert_eq!(hop.to_string(), s);
        }
        let lmtp: NextHop = "lmtp:unix:/run/dovecot/lmtp".parse().unwrap();
        assert_eq!(lmtp.lmtp_target(), Some(LmtpTarget::Unix("/run/dovecot/lmtp".into())));
        assert_eq!("smtp:[h]:24".parse::<NextHop>().unwrap().lmtp_target(), None);
        assert_eq!(":[x]".parse::<NextHop>().unwrap_err(), "\":[x]\": missing transport name");
        assert_eq!(NextHop::mx().destination("example.org"), "example.org");
        assert_eq!("smtp:[gw]".parse::<NextHop>().unwrap().destination("example.org"), "gw");
    }

    #[test]
    fn keys_in_postfix_order() {
        let cases: &[(&str, &[&str])] = &[
            (
                "User@Mail.Sub.Example.ORG",
                &["user@mail.sub.example.org", "mail.sub.example.org", ".sub.example.org", ".example.org", ".org", "*"],
            ),
            ("example.org", &["example.org", ".org", "*"]),
            ("a@example.org.", &["a@example.org.", "example.org", ".org", "*"]),
            ("a@[192.0.2.1]", &["a@[192.0.2.1]", "[192.0.2.1]", "*"]),
            ("localhost", &["localhost", "*"]),
        ];
        for (rcpt, want) in cases {
            assert_eq!(lookup_keys(rcpt), *want, "{rcpt}");
        }
    }

    fn maps(texts: &[&str]) -> TransportMaps {
        TransportMaps::new(
            texts
                .iter()
                .enumerate()
                .map(|(i, t)| Arc::new(Table::from_text(&format!("t{i}"), t, Syntax::Transport).unwrap()))
                .collect(),
        )
    }

    #[test]
    fn routes_in_lookup_order() {
        let m = maps(&["\
            example.org          maildir:\n\
            .example.org         relay:[inner.example.org]:2525\n\
            special@example.net  smtp:[special-gw]\n\
            example.net          smtp:gw.example.net\n\
            .net                 smtp:[net-gw]\n\
            *                    smtp:\n"]);
        let default = hop(Transport::Relay, Some("smarthost"), Some(25), false);
        let cases: &[(&str, NextHop, Option<&str>)] = &[
            ("a@example.org", NextHop::maildir(), Some("example.org")),
            ("a@EXAMPLE.org", NextHop::maildir(), Some("example.org")),
            (
                "a@sub.example.org",
                hop(Transport::Relay, Some("inner.example.org"), Some(2525), false),
                Some(".example.org"),
            ),
            (
                "a@x.sub.example.org",
                hop(Transport::Relay, Some("inner.example.org"), Some(2525), false),
                Some(".example.org"),
            ),
            ("special@example.net", hop(Transport::Smtp, Some("special-gw"), None, false), Some("special@example.net")),
            ("other@example.net", hop(Transport::Smtp, Some("gw.example.net"), None, true), Some("example.net")),
            ("a@sub.example.net", hop(Transport::Smtp, Some("net-gw"), None, false), Some(".net")),
            ("a@elsewhere.com", NextHop::mx(), Some("*")),
        ];
        for (rcpt, want, key) in cases {
            let r = m.route(rcpt, &default);
            assert_eq!(&r.next_hop, want, "{rcpt}");
            assert_eq!(r.matched.as_ref().map(|m| m.key.as_str()), *key, "{rcpt}");
        }
    }

    #[test]
    fn without_a_match_the_default_applies() {
        let m = maps(&["example.org maildir:\n"]);
        let default = hop(Transport::Relay, Some("smarthost"), Some(25), false);
        let r = m.route("a@elsewhere.com", &default);
        assert_eq!(r, Route { next_hop: default.clone(), matched: None });
        assert_eq!(r.to_string(), "transport default: relay:[smarthost]:25");
        assert_eq!(TransportMaps::default().route("a@b", &NextHop::mx()).next_hop, NextHop::mx());
    }

    #[test]
    fn several_tables_each_key_in_every_table_first() {
        // The second table's exact domain beats the first table's `*`.
        let m = maps(&["* smtp:[first-default]\n", "example.org maildir:\n"]);
        let r = m.route("a@example.org", &NextHop::mx());
        assert_eq!(r.next_hop, NextHop::maildir());
        assert_eq!(r.matched.as_ref().unwrap().table, "t1");
        let r = m.route("a@example.com", &NextHop::mx());
        assert_eq!(r.next_hop, hop(Transport::Smtp, Some("first-default"), None, false));
        assert_eq!(
            r.to_string(),
            "transport t0: smtp:[first-default] (line 1, key \"*\", value \"smtp:[first-default]\")"
        );
    }

    #[test]
    fn bad_transport_values_are_bad_lines() {
        let e = Table::from_text(
            "/etc/posthorn/transport",
            "example.org maildir:\nexample.net pipe:x\n",
            Syntax::Transport,
        )
        .unwrap_err();
        assert_eq!(
            e.to_string(),
            "/etc/posthorn/transport:2: unsupported transport \"pipe\" (posthorn knows smtp, relay, lmtp, maildir and local)"
        );
    }
}
