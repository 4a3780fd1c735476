//! `[policy]`: the policy services asked during the SMTP dialogue
//! (Postfix's `check_policy_service`, SMTPD_POLICY_README). Off unless
//! `services` names one, on either role.

use super::{ConfigError, Dur, KeyError};
use serde::Deserialize;
use std::fmt;
use std::path::PathBuf;
use std::time::Duration;

/// The SMTP stage a policy question is asked at (`protocol_state`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum PolicyStage {
    Mail,
    Rcpt,
    Data,
}

impl PolicyStage {
    /// The name in `protocol_state=` and in log lines.
    pub(crate) fn name(self) -> &'static str {
        match self {
            PolicyStage::Mail => "MAIL",
            PolicyStage::Rcpt => "RCPT",
            PolicyStage::Data => "DATA",
        }
    }

    fn parse(s: &str) -> Option<PolicyStage> {
        match s.to_ascii_lowercase().as_str() {
            "mail" => Some(PolicyStage::Mail),
            "rcpt" => Some(PolicyStage::Rcpt),
            "data" => Some(PolicyStage::Data),
            _ => None,
        }
    }
}

/// Where a policy service listens: `inet:host:port` or `unix:/path`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum PolicyTarget {
    Inet(String),
    Unix(PathBuf),
}

impl fmt::Display for PolicyTarget {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            PolicyTarget::Inet(addr) => write!(f, "inet:{addr}"),
            PolicyTarget::Unix(path) => write!(f, "unix:{}", path.display()),
        }
    }
}

impl std::str::FromStr for PolicyTarget {
    type Err = String;
    fn from_str(s: &str) -> Result<PolicyTarget, String> {
        let bad = || format!("`{s}` is not inet:host:port or unix:/path");
        if let Some(path) = s.strip_prefix("unix:") {
            return if path.starts_with('/') { Ok(PolicyTarget::Unix(PathBuf::from(path))) } else { Err(bad()) };
        }
        let addr = s.strip_prefix("inet:").unwrap_or(s);
        match addr.rsplit_once(':') {
            Some((host, port)) if !host.is_empty() && port.parse::<u16>().is_ok() => {
                Ok(PolicyTarget::Inet(addr.to_string()))
            }
            _ => Err(bad()),
        }
    }
}

#[derive(Clone, Debug)]
pub(crate) struct PolicyConfig {
    /// Asked in this order; empty: no policy delegation.
    pub(crate) services: Vec<PolicyTarget>,
    pub(crate) stages: Vec<PolicyStage>,
    /// The most one question may take, connecting included
    /// (`smtpd_policy_service_timeout`).
    pub(crate) timeout: Duration,
    /// An idle connection older than this is closed, not reused
    /// (`smtpd_policy_service_max_idle`).
    pub(crate) max_idle: Duration,
    /// The action taken when a service cannot answer
    /// (`smtpd_policy_service_default_action`).
    pub(crate) default_action: String,
}

impl PolicyConfig {
    /// Whether a question is asked at `stage`.
    pub(crate) fn asks_at(&self, stage: PolicyStage) -> bool {
        !self.services.is_empty() && self.stages.contains(&stage)
    }
}

#[derive(Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawPolicy {
    services: Option<Vec<String>>,
    stages: Option<Vec<String>>,
    timeout: Option<Dur>,
    max_idle: Option<Dur>,
    default_action: Option<String>,
}

pub(super) fn resolve_policy(raw: RawPolicy, err: &KeyError) -> Result<PolicyConfig, ConfigError> {
    let services = raw
        .services
        .unwrap_or_default()
        .iter()
        .map(|s| s.parse().map_err(|m| err("policy.services", m)))
        .collect::<Result<Vec<_>, _>>()?;
    let stages = match raw.stages {
        None => vec![PolicyStage::Rcpt],
        Some(list) => list
            .iter()
            .map(|s| {
                PolicyStage::parse(s)
                    .ok_or_else(|| err("policy.stages", format!("`{s}` is not a stage (mail, rcpt or data)")))
            })
            .collect::<Result<Vec<_>, _>>()?,
    };
    let default_action = raw.default_action.unwrap_or_else(|| "451 4.3.5 Server configuration problem".into());
    let word = default_action.split_whitespace().next().unwrap_or("").to_ascii_uppercase();
    let known = ["DUNNO", "OK", "REJECT", "DEFER", "DEFER_IF_PERMIT", "DEFER_IF_REJECT"];
    let numeric =
        word.len() == 3 && word.bytes().all(|b| b.is_ascii_digit()) && matches!(word.as_bytes()[0], b'4' | b'5');
    if !known.contains(&word.as_str()) && !numeric {
        return Err(err(
            "policy.default_action",
            format!("`{default_action}` is not an action (DUNNO, OK, REJECT, DEFER, 4xx or 5xx text)"),
        ));
    }
    Ok(PolicyConfig {
        services,
        stages,
        timeout: raw.timeout.map_or(Duration::from_secs(100), |d| d.0),
        max_idle: raw.max_idle.map_or(Duration::from_secs(300), |d| d.0),
        default_action,
    })
}
