//! `[outbound_tls]`: the TLS policy of every SMTP delivery that is not to
//! the smarthosts' default: MX delivery, transport-table next hops and the
//! content filter, plus the per-destination policy table (Postfix's
//! `smtp_tls_policy_maps`) that also overrides `relay.tls` per smarthost.
//! The tables are opened, and their lines checked, by `deliver::tls_policy`
//! when the transports are built (the daemon refuses to start on a bad line).

use super::{ConfigError, KeyError, TlsPolicy};
use serde::Deserialize;
use std::path::PathBuf;

#[derive(Clone, Debug)]
pub(crate) struct OutboundTls {
    /// Policy tables (`texthash:/etc/posthorn/tls_policy`), searched in
    /// order; the first table holding a key wins.
    pub(crate) policy_maps: Vec<String>,
    /// The level for a destination no table names (`may`: opportunistic,
    /// since requiring TLS of every MX would defer mail to half the world).
    pub(crate) level: TlsPolicy,
    /// CA certificates (PEM) that `verify` and `secure` check servers
    /// against, instead of the system roots.
    pub(crate) ca: Option<PathBuf>,
}

#[derive(Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawOutboundTls {
    policy_maps: Option<Vec<String>>,
    level: Option<TlsPolicy>,
    ca: Option<PathBuf>,
}

pub(super) fn resolve(raw: RawOutboundTls, err: &KeyError) -> Result<OutboundTls, ConfigError> {
    let policy_maps = raw.policy_maps.unwrap_or_default();
    if let Some(empty) = policy_maps.iter().find(|s| s.trim().is_empty()) {
        return Err(err("outbound_tls.policy_maps", format!("`{empty}` names no table")));
    }
    Ok(OutboundTls { policy_maps, level: raw.level.unwrap_or(TlsPolicy::May), ca: raw.ca })
}
