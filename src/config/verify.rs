//! `[verify]`: SPF, DKIM, DMARC and ARC checks of incoming mail (issue 16,
//! `crate::verify` does them). Off on both roles unless `spf`, `dkim`,
//! `dmarc` or `arc` is set; never applied to clients the hub vouches for.

use super::{ConfigError, KeyError};
use serde::Deserialize;

/// What an SPF `fail` at MAIL FROM does.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum SpfFailAction {
    /// 550 5.7.23 (RFC 7372); a `temperror` gets 451 4.7.24.
    Reject,
    /// Only the Authentication-Results header says so.
    Tag,
}

/// What a failed DMARC check of a domain with `p=reject` or
/// `p=quarantine` does.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum DmarcAction {
    /// The domain's policy: `p=reject` refused with 550 5.7.1 at the end
    /// of DATA, `p=quarantine` put on hold.
    Reject,
    /// Both put on hold.
    Quarantine,
    /// Only the Authentication-Results header says so.
    Tag,
}

#[derive(Clone, Debug)]
pub(crate) struct VerifyConfig {
    pub(crate) spf: bool,
    pub(crate) dkim: bool,
    pub(crate) dmarc: bool,
    /// ARC chain validation (RFC 8617), recorded as `arc=`.
    pub(crate) arc: bool,
    /// Domains whose seal, on a chain that passes, lets a DMARC failure
    /// through (RFC 8617 7.2, a local policy override): mailing lists and
    /// forwarders that break the author's alignment. Lower case; empty by
    /// default.
    pub(crate) arc_trusted_sealers: Vec<String>,
    /// The authserv-id of the Authentication-Results header (RFC 8601).
    pub(crate) authserv_id: String,
    pub(crate) spf_fail_action: SpfFailAction,
    pub(crate) dmarc_reject_action: DmarcAction,
}

impl VerifyConfig {
    /// Whether any check runs.
    pub(crate) fn is_on(&self) -> bool {
        self.spf || self.dkim || self.dmarc || self.arc
    }
}

impl SpfFailAction {
    pub(crate) fn name(self) -> &'static str {
        match self {
            SpfFailAction::Reject => "reject",
            SpfFailAction::Tag => "tag",
        }
    }
}

impl DmarcAction {
    pub(crate) fn name(self) -> &'static str {
        match self {
            DmarcAction::Reject => "reject",
            DmarcAction::Quarantine => "quarantine",
            DmarcAction::Tag => "tag",
        }
    }
}

#[derive(Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawVerify {
    spf: Option<bool>,
    dkim: Option<bool>,
    dmarc: Option<bool>,
    arc: Option<bool>,
    arc_trusted_sealers: Option<Vec<String>>,
    authserv_id: Option<String>,
    spf_fail_action: Option<String>,
    dmarc_reject_action: Option<String>,
}

pub(super) fn resolve_verify(raw: RawVerify, hostname: &str, err: &KeyError) -> Result<VerifyConfig, ConfigError> {
    let authserv_id = match raw.authserv_id.map(|s| s.trim().to_string()) {
        None => hostname.to_string(),
        Some(s) if s.is_empty() || s.chars().any(|c| c.is_whitespace() || c.is_control() || c == ';') => {
            return Err(err("verify.authserv_id", format!("`{s}` is not a host name")));
        }
        Some(s) => s,
    };
    let spf_fail_action = match raw.spf_fail_action.as_deref() {
        None | Some("reject") => SpfFailAction::Reject,
        Some("tag") => SpfFailAction::Tag,
        Some(s) => return Err(err("verify.spf_fail_action", format!("`{s}` is not `reject` or `tag`"))),
    };
    let dmarc_reject_action = match raw.dmarc_reject_action.as_deref() {
        None | Some("reject") => DmarcAction::Reject,
        Some("quarantine") => DmarcAction::Quarantine,
        Some("tag") => DmarcAction::Tag,
        Some(s) => {
            return Err(err("verify.dmarc_reject_action", format!("`{s}` is not `reject`, `quarantine` or `tag`")));
        }
    };
    let dmarc = raw.dmarc.unwrap_or(false);
    let (spf, dkim) = (raw.spf.unwrap_or(false), raw.dkim.unwrap_or(false));
    if dmarc && !(spf && dkim) {
        // DMARC is the alignment of the SPF and DKIM results.
        return Err(err("verify.dmarc", "needs verify.spf and verify.dkim on".into()));
    }
    let arc = raw.arc.unwrap_or(false);
    let mut arc_trusted_sealers = Vec::new();
    for d in raw.arc_trusted_sealers.unwrap_or_default() {
        let d = d.trim().trim_end_matches('.').to_ascii_lowercase();
        if !d.contains('.') || d.chars().any(|c| !(c.is_ascii_alphanumeric() || c == '-' || c == '.')) {
            return Err(err("verify.arc_trusted_sealers", format!("`{d}` is not a domain")));
        }
        arc_trusted_sealers.push(d);
    }
    if !(arc_trusted_sealers.is_empty() || arc && dmarc) {
        // The override is of a DMARC result, vouched for by an ARC chain.
        return Err(err("verify.arc_trusted_sealers", "needs verify.arc and verify.dmarc on".into()));
    }
    Ok(VerifyConfig { spf, dkim, dmarc, arc, arc_trusted_sealers, authserv_id, spf_fail_action, dmarc_reject_action })
}
