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
