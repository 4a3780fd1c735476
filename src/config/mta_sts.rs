//! `[mta_sts]` and `[tls_report]`: MTA-STS (RFC 8461) for MX delivery
//! (`deliver::mta_sts` fetches, caches and applies the policies) and the
//! record of outbound TLS results that `posthorn tls report` turns into an
//! RFC 8460 aggregate report (`tls_report`). Both are off by default on
//! either role: turning MTA-STS on makes the daemon fetch HTTPS from the
//! recipients' domains, which an operator should choose knowingly.

use super::{Dur, KeyError};
use crate::config::ConfigError;
use serde::Deserialize;
use std::time::Duration;

/// `[mta_sts]`.
#[derive(Clone, Debug)]
pub(crate) struct MtaSts {
    /// Look up, fetch and apply MTA-STS policies for MX delivery.
    pub(crate) enabled: bool,
    /// The whole fetch of one policy: connection, TLS, request and body.
    pub(crate) fetch_timeout: Duration,
}

/// `[tls_report]`.
#[derive(Clone, Debug)]
pub(crate) struct TlsReport {
    /// Record each MX delivery's TLS result in `<spool>/tls-report/`.
    pub(crate) enabled: bool,
    /// The report's `contact-info`; `None`: `postmaster@HOSTNAME`.
    pub(crate) contact: Option<String>,
}

#[derive(Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawMtaSts {
    enabled: Option<bool>,
    fetch_timeout: Option<Dur>,
}

#[derive(Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawTlsReport {
    enabled: Option<bool>,
    contact: Option<String>,
}

pub(super) fn resolve_mta_sts(raw: RawMtaSts, err: &KeyError) -> Result<MtaSts, ConfigError> {
    let fetch_timeout = raw.fetch_timeout.map_or(Duration::from_secs(10), |d| d.0);
    if fetch_timeout < Duration::from_secs(1) || fetch_timeout > Duration::from_secs(120) {
        return Err(err("mta_sts.fetch_timeout", "must be between 1s and 2m".into()));
    }
    Ok(MtaSts { enabled: raw.enabled.unwrap_or(false), fetch_timeout })
}

pub(super) fn resolve_tls_report(raw: RawTlsReport, err: &KeyError) -> Result<TlsReport, ConfigError> {
    let contact = match raw.contact.map(|c| c.trim().to_string()) {
        Some(c) if c.is_empty() || c.contains(['\n', '"']) => {
            return Err(err("tls_report.contact", format!("`{c}` is not an address or URI")));
        }
        other => other,
    };
    Ok(TlsReport { enabled: raw.enabled.unwrap_or(false), contact })
}

#[cfg(test)]
mod tests {
    use crate::config::Config;
    use std::path::Path;

    #[test]
    fn defaults_and_bad_values() {
        let c = Config::parse("role = \"hub\"\n", Path::new("t.toml")).unwrap();
        assert!(!c.mta_sts.enabled && !c.tls_report.enabled);
        assert_eq!(c.mta_sts.fetch_timeout, std::time::Duration::from_secs(10));
        assert_eq!(c.tls_report.contact, None);
        let e = Config::parse("[mta_sts]\nenabled = true\nfetch_timeout = \"5m\"\n", Path::new("t.toml")).unwrap_err();
        assert!(e.to_string().contains("t.toml:3: mta_sts.fetch_timeout: must be between 1s and 2m"), "{e}");
        let e = Config::parse("[tls_report]\ncontact = \"\"\n", Path::new("t.toml")).unwrap_err();
        assert!(e.to_string().contains("t.toml:2: tls_report.contact"), "{e}");
    }
}
