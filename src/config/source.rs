//! `deliver.source_addresses` and `deliver.inet_protocols`: the local
//! addresses outbound SMTP connects from (Postfix's `smtp_bind_address` and
//! `smtp_bind_address6`) and the address families it uses.

use super::KeyError;
use crate::config::ConfigError;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

/// Which address families outbound connections use.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Protocols {
    All,
    Ipv4,
    Ipv6,
}

/// Where outbound connections come from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Source {
    pub(crate) v4: Option<Ipv4Addr>,
    pub(crate) v6: Option<Ipv6Addr>,
    pub(crate) protocols: Protocols,
}

impl Default for Source {
    fn default() -> Source {
        Source { v4: None, v6: None, protocols: Protocols::All }
    }
}

impl Source {
    /// The address to bind before connecting to `peer`; `None`: the
    /// kernel's choice.
    pub(crate) fn bind_for(&self, peer: SocketAddr) -> Option<IpAddr> {
        match peer.ip() {
            IpAddr::V4(_) => self.v4.map(IpAddr::V4),
            IpAddr::V6(_) => self.v6.map(IpAddr::V6),
        }
    }

    /// Whether `peer`'s family is in use.
    pub(crate) fn allows(&self, peer: SocketAddr) -> bool {
        match self.protocols {
            Protocols::All => true,
            Protocols::Ipv4 => peer.is_ipv4(),
            Protocols::Ipv6 => peer.is_ipv6(),
        }
    }
}

pub(super) fn resolve_source(
    addresses: Option<Vec<String>>,
    protocols: Option<String>,
    err: &KeyError,
) -> Result<Source, ConfigError> {
    let protocols = match protocols.as_deref() {
        None | Some("all") => Protocols::All,
        Some("ipv4") => Protocols::Ipv4,
        Some("ipv6") => Protocols::Ipv6,
        Some(other) => return Err(err("deliver.inet_protocols", format!("`{other}` is not all, ipv4 or ipv6"))),
    };
    let mut source = Source { protocols, ..Source::default() };
    for s in addresses.unwrap_or_default() {
        let key = "deliver.source_addresses";
        match s.parse::<IpAddr>() {
            Ok(IpAddr::V4(a)) if source.v4.is_none() => source.v4 = Some(a),
            Ok(IpAddr::V6(a)) if source.v6.is_none() => source.v6 = Some(a),
            Ok(_) => return Err(err(key, format!("`{s}`: one address per family (IPv4, IPv6)"))),
            Err(_) => return Err(err(key, format!("`{s}` is not an IP address"))),
        }
    }
    Ok(source)
}

#[cfg(test)]
mod tests {
    use crate::config::Config;
    use std::path::Path;

    fn c_delay(parse: &dyn Fn(&str) -> Result<Config, String>, delay: Option<&str>) -> std::time::Duration {
        let text = delay.map(|d| format!("[deliver]\nconnection_attempt_delay = \"{d}\"\n")).unwrap_or_default();
        parse(&text).unwrap().deliver.connection_attempt_delay
    }

    #[test]
    fn source_addresses_and_protocols() {
        let parse = |t: &str| Config::parse(t, Path::new("p.toml")).map_err(|e| e.0);
        let c = parse("[deliver]\nsource_addresses = [\"127.0.0.5\", \"::1\"]\ninet_protocols = \"ipv6\"\n").unwrap();
        let s = c.deliver.source;
        assert_eq!(s.bind_for("10.0.0.1:25".parse().unwrap()), Some("127.0.0.5".parse().unwrap()));
        assert_eq!(s.bind_for("[2001:db8::1]:25".parse().unwrap()), Some("::1".parse().unwrap()));
        assert!(!s.allows("10.0.0.1:25".parse().unwrap()));
        assert!(s.allows("[2001:db8::1]:25".parse().unwrap()));
        let e = parse("[deliver]\nsource_addresses = [\"127.0.0.5\", \"127.0.0.6\"]\n").unwrap_err();
        assert!(e.contains("deliver.source_addresses: `127.0.0.6`: one address per family"), "{e}");
        let e = parse("[deliver]\ninet_protocols = \"ipx\"\n").unwrap_err();
        assert!(e.contains("p.toml:2: deliver.inet_protocols: `ipx` is not all, ipv4 or ipv6"), "{e}");
        assert_eq!(c_delay(&parse, None), std::time::Duration::from_millis(250));
        assert_eq!(c_delay(&parse, Some("100ms")), std::time::Duration::from_millis(100));
        let e = parse("[deliver]\nconnection_attempt_delay = \"5ms\"\n").unwrap_err();
        assert!(e.contains("p.toml:2: deliver.connection_attempt_delay: must be at least 10ms"), "{e}");
    }
}
