//! Next-hop syntax, the one parser for it: Postfix's `host`, `host:port`,
//! `[host]`, `[host]:port`, `[IPv6:addr]:port` (and a bare IPv6 address),
//! as smarthosts, transport-table values and the content filter write it;
//! the [`Target`] it names; the `Hop` the queue hands to a transport; and
//! the content filter's `smtp:`/`pipe:` specification; an LMTP server's
//! `unix:/path` or `[host]:port`.
//!
//! Brackets mean "no MX lookup", as in Postfix; an IP address is never
//! looked up either. Ports may be numbers or the service names Postfix
//! accepts (`smtp`, `submission`, `submissions`/`smtps`, `lmtp`).

use std::fmt;
use std::net::{IpAddr, Ipv6Addr};

/// A parsed next hop as written; the host may be empty (`smtp:` in a
/// transport table means "the recipient's domain").
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub(crate) struct HostSpec {
    /// `None`: no host written.
    pub(crate) host: Option<String>,
    /// `None`: no port written.
    pub(crate) port: Option<u16>,
    /// Look up the host's MX records (not bracketed, not an IP address).
    pub(crate) mx: bool,
}

impl HostSpec {
    /// Parses a next hop; errors name what was written.
    pub(crate) fn parse(written: &str) -> Result<HostSpec, String> {
        parse_spec(written.trim()).map_err(|e| format!("`{}`: {e}", written.trim()))
    }
}

fn parse_spec(s: &str) -> Result<HostSpec, String> {
    if s.is_empty() {
        return Ok(HostSpec { host: None, port: None, mx: true });
    }
    let (host, port, bracketed) = if let Some(rest) = s.strip_prefix('[') {
        let (inside, after) = rest.split_once(']').ok_or("missing `]`")?;
        let port = match after {
            "" => None,
            p => Some(p.strip_prefix(':').ok_or("expected `:port` after `]`")?),
        };
        (strip_ipv6_tag(inside)?, port, true)
    } else if s.parse::<Ipv6Addr>().is_ok() {
        (s, None, true)
    } else if s.matches(':').count() > 1 {
        return Err("write IPv6 addresses in brackets, like [::1]:25".into());
    } else {
        match s.split_once(':') {
            Some((h, p)) => (h, Some(p), false),
            None => (s, None, false),
        }
    };
    let port = port.map(parse_port).transpose()?;
    if host.is_empty() {
        // `:2525` is the recipient's domain on another port.
        return match (bracketed, port) {
            (false, Some(_)) => Ok(HostSpec { host: None, port, mx: true }),
            _ => Err("empty host".into()),
        };
    }
    let literal = host.parse::<IpAddr>().is_ok();
    if !literal && !valid_host_name(host) {
        return Err(format!("`{host}` is not a host name or address"));
    }
    Ok(HostSpec { host: Some(host.to_string()), port, mx: !bracketed && !literal })
}

/// `IPv6:2001:db8::1` (RFC 5321's address-literal tag) to the address.
fn strip_ipv6_tag(s: &str) -> Result<&str, String> {
    match s.get(..5) {
        Some(tag) if tag.eq_ignore_ascii_case("IPv6:") => match s[5..].parse::<Ipv6Addr>() {
            Ok(_) => Ok(&s[5..]),
            Err(_) => Err(format!("`{}` is not an IPv6 address", &s[5..])),
        },
        _ => Ok(s),
    }
}

fn parse_port(p: &str) -> Result<u16, String> {
    let port = match p {
        "smtp" => 25,
        "submission" => 587,
        "submissions" | "smtps" => 465,
        "lmtp" => 24,
        _ => p.parse::<u16>().unwrap_or(0),
    };
    if port == 0 { Err(format!("bad port `{p}`")) } else { Ok(port) }
}

/// LDH labels (and `_`, which internal names use), at most 63 and 253
/// octets, a trailing root dot allowed. International names are written as
/// A-labels, as in DNS.
fn valid_host_name(host: &str) -> bool {
    let name = host.strip_suffix('.').unwrap_or(host);
    !name.is_empty()
        && name.len() <= 253
        && name.split('.').all(|label| {
            !label.is_empty()
                && label.len() <= 63
                && label.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
                && !label.starts_with('-')
                && !label.ends_with('-')
        })
}

/// An explicit next hop: one host (by MX or by address), maybe a port.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Target {
    /// Lower case; an IP address without brackets.
    pub host: String,
    /// `None`: `deliver.mx_port`.
    pub port: Option<u16>,
    /// Look up the MX records of `host` first.
    pub mx: bool,
}

impl Target {
    /// `[mail.example.org]:2525`, `[192.0.2.1]`, `[IPv6:2001:db8::1]:25`,
    /// `example.org`, `example.org:587`; the host is required.
    pub fn parse(s: &str) -> Result<Target, String> {
        let spec = HostSpec::parse(s)?;
        let host = spec.host.ok_or_else(|| format!("`{}` is not a host name or address", s.trim()))?;
        Ok(Target { host: host.to_ascii_lowercase(), port: spec.port, mx: spec.mx })
    }

    /// A smarthost-style `host[:port]`: host and port, `default_port` when
    /// none is written (brackets accepted and dropped: a smarthost is never
    /// looked up by MX anyway).
    pub(crate) fn host_port(s: &str, default_port: u16) -> Result<(String, u16), String> {
        let spec = HostSpec::parse(s)?;
        let host = spec.host.ok_or_else(|| format!("`{}` is not a host name or address", s.trim()))?;
        Ok((host, spec.port.unwrap_or(default_port)))
    }
}

/// Postfix's notation again: `[host]:port` without MX lookup.
impl fmt::Display for Target {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match (self.mx, self.port) {
            (true, None) => write!(f, "{}", self.host),
            (true, Some(p)) => write!(f, "{}:{p}", self.host),
            (false, None) => write!(f, "[{}]", self.host),
            (false, Some(p)) => write!(f, "[{}]:{p}", self.host),
        }
    }
}

/// The after-queue content filter: `smtp:[host]:port` or
/// `pipe:/path/to/cmd arg ${sender} ${recipient}`.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub(crate) enum FilterSpec {
    Smtp(Target),
    /// The argument vector, split on whitespace; `${sender}` and
    /// `${recipient}` are substituted for each delivery.
    Pipe(Vec<String>),
}

/// As written in the configuration: `smtp:[host]:port`, `pipe:/cmd args`.
impl fmt::Display for FilterSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            FilterSpec::Smtp(target) => write!(f, "smtp:{target}"),
            FilterSpec::Pipe(argv) => write!(f, "pipe:{}", argv.join(" ")),
        }
    }
}

impl std::str::FromStr for FilterSpec {
    type Err = String;
    fn from_str(s: &str) -> Result<FilterSpec, String> {
        if let Some(rest) = s.strip_prefix("smtp:") {
            let target = Target::parse(rest)?;
            if target.port.is_none() || target.mx {
                return Err(format!("`{s}`: write the filter as smtp:[host]:port"));
            }
            Ok(FilterSpec::Smtp(target))
        } else if let Some(rest) = s.strip_prefix("pipe:") {
            let argv: Vec<String> = rest.split_whitespace().map(str::to_string).collect();
            match argv.first() {
                Some(cmd) if cmd.starts_with('/') => Ok(FilterSpec::Pipe(argv)),
                _ => Err(format!("`{s}`: the pipe command must be an absolute path")),
            }
        } else {
            Err(format!("`{s}` is neither smtp:[host]:port nor pipe:/path/to/command"))
        }
    }
}

/// Where an LMTP server listens (`lmtp:unix:/run/dovecot/lmtp`,
/// `lmtp:[127.0.0.1]:24`). A host is looked up for its addresses, never
/// its MX records, as Postfix's lmtp(8) does.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub(crate) enum LmtpTarget {
    /// An absolute path to a Unix socket.
    Unix(String),
    Inet {
        host: String,
        port: u16,
    },
}

/// LMTP's own port (RFC 2033 has none; Postfix and IANA use 24).
pub(crate) const LMTP_PORT: u16 = 24;

impl LmtpTarget {
    /// `unix:/path`, `[host]:port`, `host:port` or `[host]` (port 24):
    /// what follows `lmtp:` in a transport table.
    pub(crate) fn parse(written: &str) -> Result<LmtpTarget, String> {
        let written = written.trim();
        if let Some(path) = written.strip_prefix("unix:") {
            if !path.starts_with('/') || path.bytes().any(|b| b <= b' ') {
                return Err(format!("`{written}`: the socket must be an absolute path"));
            }
            return Ok(LmtpTarget::Unix(path.to_string()));
        }
        let spec = HostSpec::parse(written.strip_prefix("inet:").unwrap_or(written))?;
        let host = spec.host.ok_or_else(|| format!("`{written}`: write lmtp:unix:/path or lmtp:[host]:port"))?;
        Ok(LmtpTarget::Inet { host: host.to_ascii_lowercase(), port: spec.port.unwrap_or(LMTP_PORT) })
    }
}

/// `unix:/path` or `[host]:port`.
impl fmt::Display for LmtpTarget {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            LmtpTarget::Unix(path) => write!(f, "unix:{path}"),
            LmtpTarget::Inet { host, port } => write!(f, "[{host}]:{port}"),
        }
    }
}

/// The next hop for a group of recipients, as `route` decides it and a
/// transport carries it out. Recipients of one message with the same hop
/// are delivered together.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub(crate) enum Hop {
    /// The configured smarthosts (`relay.smarthosts`), with failover.
    Relay,
    /// The MX hosts of a domain.
    Mx(String),
    /// An explicit next hop from the transport table.
    Smtp(Target),
    /// Local delivery to `deliver.maildir_root`.
    Maildir,
    /// Local delivery as the user (`deliver::local`).
    Local,
    /// An LMTP server (`deliver::lmtp`), e.g. Dovecot's.
    Lmtp(LmtpTarget),
    /// The after-queue content filter, before any of the above: the whole
    /// message with all its recipients (in the filtered domains) at once.
    Filter(FilterSpec),
}

impl Hop {
    /// The destination key its backoff and connection limit are kept under.
    pub(crate) fn key(&self) -> String {
        match self {
            Hop::Relay => "relay".into(),
            Hop::Mx(domain) => format!("mx:{domain}"),
            Hop::Smtp(target) => format!("smtp:{target}"),
            Hop::Maildir => "maildir".into(),
            Hop::Local => "local".into(),
            Hop::Lmtp(target) => format!("lmtp:{target}"),
            Hop::Filter(FilterSpec::Smtp(target)) => format!("filter:smtp:{target}"),
            Hop::Filter(FilterSpec::Pipe(argv)) => format!("filter:pipe:{}", argv[0]),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn host_spec_table() {
        let spec = |host: Option<&str>, port: Option<u16>, mx: bool| HostSpec { host: host.map(Into::into), port, mx };
        let cases = [
            ("", spec(None, None, true)),
            (":2525", spec(None, Some(2525), true)),
            ("mail.example.org", spec(Some("mail.example.org"), None, true)),
            (" mail.example.org.:587 ", spec(Some("mail.example.org."), Some(587), true)),
            ("[mail.example.org]", spec(Some("mail.example.org"), None, false)),
            ("[relay.example]:submission", spec(Some("relay.example"), Some(587), false)),
            ("[127.0.0.1]:2526", spec(Some("127.0.0.1"), Some(2526), false)),
            ("127.0.0.1", spec(Some("127.0.0.1"), None, false)),
            ("[IPv6:2001:db8::1]:25", spec(Some("2001:db8::1"), Some(25), false)),
            ("[ipv6:2001:db8::1]", spec(Some("2001:db8::1"), None, false)),
            ("[2001:db8::1]:25", spec(Some("2001:db8::1"), Some(25), false)),
            ("::1", spec(Some("::1"), None, false)),
            ("relay_1.lan", spec(Some("relay_1.lan"), None, true)),
        ];
        for (input, want) in cases {
            assert_eq!(HostSpec::parse(input), Ok(want), "{input:?}");
        }
    }

    #[test]
    fn host_spec_errors_name_the_input() {
        let cases = [
            ("[::1", "missing `]`"),
            ("[::1]25", "expected `:port`"),
            ("[h]:", "bad port ``"),
            ("mail:0", "bad port `0`"),
            ("mail:70000", "bad port"),
            ("mail:smtpx", "bad port `smtpx`"),
            ("[]", "empty host"),
            ("2001:db8::1:25:x", "in brackets"),
            ("mail example", "is not a host name"),
            ("mail..example", "is not a host name"),
            ("-x.example", "is not a host name"),
            ("[a],[b]", "expected `:port`"),
        ];
        for (input, want) in cases {
            let e = HostSpec::parse(input).unwrap_err();
            assert!(e.contains(want) && e.contains(input), "{input:?}: {e}");
        }
    }

    #[test]
    fn target_table() {
        let t = |host: &str, port: Option<u16>, mx: bool| Target { host: host.into(), port, mx };
        let cases = [
            ("example.org", t("example.org", None, true)),
            ("Example.ORG:2525", t("example.org", Some(2525), true)),
            ("[mail.example.org]", t("mail.example.org", None, false)),
            ("[mail.example.org]:587", t("mail.example.org", Some(587), false)),
            ("[192.0.2.1]:25", t("192.0.2.1", Some(25), false)),
            ("[IPv6:2001:db8::1]", t("2001:db8::1", None, false)),
            ("[::1]:2525", t("::1", Some(2525), false)),
            ("192.0.2.1", t("192.0.2.1", None, false)),
        ];
        for (input, want) in cases {
            assert_eq!(Target::parse(input).as_ref(), Ok(&want), "{input}");
        }
        for bad in ["", "[host", "mail example", "host:0", "[host]x"] {
            assert!(Target::parse(bad).is_err(), "{bad}");
        }
        assert_eq!(Target::parse("[mx.example.org]:26").unwrap().to_string(), "[mx.example.org]:26");
        assert_eq!(Target::parse("example.org").unwrap().to_string(), "example.org");
    }
    #[test]
    fn host_port_table() {
        let ok = |s: &str, h: &str, p: u16| assert_eq!(Target::host_port(s, 25), Ok((h.to_string(), p)), "{s}");
        ok("mail.example.org", "mail.example.org", 25);
        ok("mail.example.org:2525", "mail.example.org", 2525);
        ok(" mail.example.org.:587 ", "mail.example.org.", 587);
        ok("[mail.example.org]", "mail.example.org", 25);
        ok("[mail.example.org]:26", "mail.example.org", 26);
        ok("[127.0.0.1]:2526", "127.0.0.1", 2526);
        ok("127.0.0.1", "127.0.0.1", 25);
        ok("[::1]:2526", "::1", 2526);
        ok("[IPv6:2001:db8::1]:25", "2001:db8::1", 25);
        ok("::1", "::1", 25);
        ok("relay_1.lan", "relay_1.lan", 25);
        let err = |s: &str, contains: &str| {
            let e = Target::host_port(s, 25).unwrap_err();
            assert!(e.contains(contains) && e.contains(s.trim()), "{s}: {e}");
        };
        err("", "is not a host name");
        err("mail:0", "bad port");
        ok("mail:smtp", "mail", 25);
        err("mail:smtpx", "bad port `smtpx`");
        err("mail:70000", "bad port");
        err("[::1", "missing `]`");
        err("[::1]25", "expected `:port`");
        err("2001:db8::1:25:x", "in brackets");
        err("mail example", "is not a host name");
        err("mail..example", "is not a host name");
        err("[IPv6:mail]:25", "not an IPv6 address");
    }

    #[test]
    fn target_needs_a_host_and_lowers_it() {
        assert_eq!(
            Target::parse("Example.ORG:2525"),
            Ok(Target { host: "example.org".into(), port: Some(2525), mx: true })
        );
        assert!(Target::parse("").unwrap_err().contains("is not a host name"));
        assert!(Target::parse(":25").is_err());
        assert_eq!(Target::host_port("[hub.example]", 25), Ok(("hub.example".into(), 25)));
        assert_eq!(Target::host_port("hub:2525", 25), Ok(("hub".into(), 2525)));
    }

    #[test]
    fn filter_spec_round_trips() {
        for s in ["smtp:[127.0.0.1]:10025", "pipe:/usr/bin/scan -f ${sender} -- ${recipient}"] {
            assert_eq!(s.parse::<FilterSpec>().unwrap().to_string(), s);
        }
        for bad in ["smtp:filter.example:10025", "smtp:[127.0.0.1]", "pipe:scan", "lmtp:x"] {
            assert!(bad.parse::<FilterSpec>().is_err(), "{bad}");
        }
    }

    #[test]
    fn hop_keys() {
        let t = Target::parse("[10.0.0.1]:2525").unwrap();
        assert_eq!(Hop::Smtp(t.clone()).key(), "smtp:[10.0.0.1]:2525");
        assert_eq!(Hop::Filter(FilterSpec::Smtp(t)).key(), "filter:smtp:[10.0.0.1]:2525");
        assert_eq!(Hop::Mx("example.org".into()).key(), "mx:example.org");
        assert_eq!(Hop::Lmtp(LmtpTarget::Unix("/run/lmtp".into())).key(), "lmtp:unix:/run/lmtp");
    }

    #[test]
    fn lmtp_target_table() {
        let inet = |host: &str, port: u16| LmtpTarget::Inet { host: host.into(), port };
        let cases = [
            ("unix:/run/dovecot/lmtp", LmtpTarget::Unix("/run/dovecot/lmtp".into()), "unix:/run/dovecot/lmtp"),
            ("[127.0.0.1]:2424", inet("127.0.0.1", 2424), "[127.0.0.1]:2424"),
            ("Mail.Example:24", inet("mail.example", 24), "[mail.example]:24"),
            ("inet:[::1]:lmtp", inet("::1", 24), "[::1]:24"),
            ("[store.lan]", inet("store.lan", 24), "[store.lan]:24"),
        ];
        for (input, want, shown) in cases {
            let got = LmtpTarget::parse(input).unwrap();
            assert_eq!(got, want, "{input}");
            assert_eq!(got.to_string(), shown, "{input}");
        }
        for bad in ["", "unix:", "unix:run/lmtp", "unix:/a b", "[::1", ":24"] {
            assert!(LmtpTarget::parse(bad).is_err(), "{bad}");
        }
    }
}
