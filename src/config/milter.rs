//! The `[milter]` section: the before-queue milters (Sendmail milter
//! protocol) every SMTP session, and optionally every local submission,
//! talks to; what to do when one fails; how long to wait for each.

use super::{ConfigError, Dur, KeyError};
use serde::Deserialize;
use std::fmt;
use std::path::PathBuf;
use std::time::Duration;

/// The milters and their timeouts (Postfix `smtpd_milters`,
/// `non_smtpd_milters`, `milter_*`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Milter {
    /// Asked, in order, about every message arriving over SMTP.
    pub(crate) servers: Vec<MilterAddr>,
    /// Asked about mail from `sendmail` and the maildrop pickup.
    pub(crate) non_smtpd_milters: Vec<MilterAddr>,
    /// What a milter that cannot be reached, times out or breaks the
    /// protocol amounts to.
    pub(crate) default_action: DefaultAction,
    /// Connecting and the option negotiation.
    pub(crate) connect_timeout: Duration,
    /// Each answer to connect, HELO, MAIL, RCPT and DATA.
    pub(crate) command_timeout: Duration,
    /// Each answer to a header, a body chunk and the end of the message.
    pub(crate) content_timeout: Duration,
}

/// Postfix's `milter_default_action` (minus `quarantine`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub(crate) enum DefaultAction {
    /// The failed milter is skipped for the rest of the session.
    Accept,
    /// 451 4.7.1: the client tries again later.
    Tempfail,
    /// 550 5.7.1.
    Reject,
}

impl DefaultAction {
    pub(crate) fn name(self) -> &'static str {
        match self {
            DefaultAction::Accept => "accept",
            DefaultAction::Tempfail => "tempfail",
            DefaultAction::Reject => "reject",
        }
    }
}

/// Where a milter listens: `inet:host:port` or `unix:/path`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum MilterAddr {
    Inet { host: String, port: u16 },
    Unix(PathBuf),
}

impl std::str::FromStr for MilterAddr {
    type Err = String;
    fn from_str(s: &str) -> Result<MilterAddr, String> {
        let bad = || format!("`{s}` is not a milter address (inet:HOST:PORT or unix:/PATH)");
        if let Some(path) = s.strip_prefix("unix:") {
            return if path.starts_with('/') { Ok(MilterAddr::Unix(PathBuf::from(path))) } else { Err(bad()) };
        }
        let rest = s.strip_prefix("inet:").ok_or_else(bad)?;
        let (host, port) = rest.rsplit_once(':').ok_or_else(bad)?;
        let host = host.trim_start_matches('[').trim_end_matches(']');
        let port: u16 = port.parse().map_err(|_| bad())?;
        if host.is_empty() || port == 0 {
            return Err(bad());
        }
        Ok(MilterAddr::Inet { host: host.to_string(), port })
    }
}

impl fmt::Display for MilterAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            MilterAddr::Inet { host, port } if host.contains(':') => write!(f, "inet:[{host}]:{port}"),
            MilterAddr::Inet { host, port } => write!(f, "inet:{host}:{port}"),
            MilterAddr::Unix(path) => write!(f, "unix:{}", path.display()),
        }
    }
}

#[derive(Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawMilter {
    servers: Option<Vec<String>>,
    non_smtpd_milters: Option<Vec<String>>,
    default_action: Option<DefaultAction>,
    connect_timeout: Option<Dur>,
    command_timeout: Option<Dur>,
    content_timeout: Option<Dur>,
}

/// Off by default on both roles: no milters. The timeouts are Postfix's.
pub(super) fn resolve_milter(raw: RawMilter, err: &KeyError) -> Result<Milter, ConfigError> {
    let addrs = |list: Option<Vec<String>>, key: &str| -> Result<Vec<MilterAddr>, ConfigError> {
        list.unwrap_or_default().iter().map(|s| s.trim().parse().map_err(|m| err(key, m))).collect()
    };
    Ok(Milter {
        servers: addrs(raw.servers, "milter.servers")?,
        non_smtpd_milters: addrs(raw.non_smtpd_milters, "milter.non_smtpd_milters")?,
        default_action: raw.default_action.unwrap_or(DefaultAction::Tempfail),
        connect_timeout: raw.connect_timeout.map(|d| d.0).unwrap_or(Duration::from_secs(30)),
        command_timeout: raw.command_timeout.map(|d| d.0).unwrap_or(Duration::from_secs(30)),
        content_timeout: raw.content_timeout.map(|d| d.0).unwrap_or(Duration::from_secs(300)),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Config;
    use std::path::Path;

    #[test]
    fn addresses() {
        let cases = [
            ("inet:127.0.0.1:11332", Ok(MilterAddr::Inet { host: "127.0.0.1".into(), port: 11332 })),
            ("inet:[::1]:8891", Ok(MilterAddr::Inet { host: "::1".into(), port: 8891 })),
            ("inet:localhost:8891", Ok(MilterAddr::Inet { host: "localhost".into(), port: 8891 })),
            ("unix:/run/opendkim/opendkim.sock", Ok(MilterAddr::Unix("/run/opendkim/opendkim.sock".into()))),
            ("unix:relative.sock", Err(())),
            ("inet:127.0.0.1", Err(())),
            ("inet:127.0.0.1:0", Err(())),
            ("127.0.0.1:11332", Err(())),
        ];
        for (text, expected) in cases {
            let got: Result<MilterAddr, String> = text.parse();
            assert_eq!(got.clone().map_err(|_| ()), expected, "{text}");
            if let Ok(addr) = got {
                assert_eq!(addr.to_string(), text, "written back as given");
            }
        }
    }

    #[test]
    fn defaults_and_errors() {
        let config = Config::parse("", Path::new("t.toml")).unwrap();
        assert!(config.milter.servers.is_empty() && config.milter.non_smtpd_milters.is_empty());
        assert_eq!(config.milter.default_action, DefaultAction::Tempfail);
        let text = "[milter]\nservers = [\"inet:127.0.0.1:11332\"]\ndefault_action = \"accept\"\n";
        let config = Config::parse(text, Path::new("t.toml")).unwrap();
        assert_eq!(config.milter.default_action, DefaultAction::Accept);
        let text = "[milter]\nservers = [\n  \"inet:127.0.0.1:11332\",\n  \"tcp:x\",\n]\n";
        let e = Config::parse(text, Path::new("t.toml")).unwrap_err().to_string();
        assert!(e.starts_with("t.toml:2: milter.servers: `tcp:x` is not a milter address"), "{e}");
    }
}
