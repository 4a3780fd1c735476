//! TLS reporting (RFC 8460), the sending side's record (`[tls_report]`):
//! each MX delivery's TLS result per recipient domain is appended as one
//! JSON line to `<spool>/tls-report/YYYY-MM-DD` (UTC), and
//! `posthorn tls report` folds a day's lines into the aggregate report.
//!
//! The lines are written without fsync: a crash may lose the last few
//! counts, which a statistical report can afford, and a delivery never
//! waits for the disk because of it. A policy's text is written once per
//! day and process (a `policy` line); each session is a `session` line.

use crate::deliver::Delivery;
use crate::deliver::mta_sts::{Applied, Failure};
use crate::message::outcome::{ErrorClass, Outcome};
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, HashSet};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

/// RFC 8460 4.3's result types that posthorn reports.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub(crate) enum ResultType {
    StarttlsNotSupported,
    CertificateHostMismatch,
    CertificateExpired,
    CertificateNotTrusted,
    ValidationFailure,
    StsPolicyFetchError,
    StsPolicyInvalid,
    StsWebpkiInvalid,
}

/// RFC 8460 4.3's policy types (DANE's `tlsa` belongs here when it comes).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub(crate) enum PolicyType {
    Sts,
    NoPolicyFound,
}

/// One line of a day's file.
#[derive(Debug, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "kebab-case")]
enum Line {
    /// An MTA-STS policy that applied that day.
    Policy {
        domain: String,
        id: String,
        lines: Vec<String>,
        mx: Vec<String>,
    },
    Session(Session),
}

/// One delivery attempt's TLS result.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct Session {
    pub(crate) domain: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) policy: Option<PolicyType>,
    /// The MTA-STS policy's id.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) id: Option<String>,
    /// `None`: a TLS session was established as the policy wants.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) result: Option<ResultType>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) mx: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) ip: Option<String>,
    /// `sending-mta-ip`: ours towards `ip`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) src: Option<String>,
    /// `failure-reason-code`: what went wrong, in posthorn's words.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) reason: Option<String>,
}

/// The day files' directory in `spool`.
pub(crate) fn report_dir(spool: &Path) -> PathBuf {
    spool.join("tls-report")
}

/// The MX transport's recorder; one per daemon.
pub(crate) struct Recorder {
    dir: PathBuf,
    /// `deliver.source_addresses`, for `sending-mta-ip`.
    source: crate::config::Source,
    /// (day, domain, id) whose policy line is written.
    seen: Mutex<HashSet<(String, String, String)>>,
}

impl Recorder {
    /// `None` unless `tls_report.enabled`.
    pub(crate) fn from_config(config: &crate::config::Config) -> Option<Recorder> {
        config.tls_report.enabled.then(|| Recorder {
            dir: report_dir(&config.spool),
            source: config.deliver.source.clone(),
            seen: Mutex::default(),
        })
    }

    /// Records one session's result, and the policy's text the first time
    /// it is seen that day.
    pub(crate) fn record(&self, mut session: Session, applied: Option<&Applied>) {
        let day = day_of(crate::clock::now_secs());
        if let Some(ip) = session.ip.as_deref().and_then(|ip| ip.parse().ok()) {
            session.src = sending_ip(&self.source, ip).map(|ip| ip.to_string());
        }
        let mut out = String::new();
        if let Some(a) = applied {
            let key = (day.clone(), session.domain.clone(), a.id.clone());
            if self.seen.lock().unwrap_or_else(|e| e.into_inner()).insert(key) {
                let policy = Line::Policy {
                    domain: session.domain.clone(),
                    id: a.id.clone(),
                    lines: a.policy.lines.clone(),
                    mx: a.policy.mx.clone(),
                };
                out.push_str(&serde_json::to_string(&policy).unwrap_or_default());
                out.push('\n');
            }
        }
        out.push_str(&serde_json::to_string(&Line::Session(session)).unwrap_or_default());
        out.push('\n');
        let written = std::fs::create_dir_all(&self.dir).and_then(|()| {
            // One write of whole lines to a file opened for appending:
            // concurrent deliveries' lines never interleave.
            std::fs::OpenOptions::new().create(true).append(true).open(self.dir.join(&day))?.write_all(out.as_bytes())
        });
        if let Err(e) = written {
            tracing::warn!("TLS report: cannot write {}: {e}", self.dir.join(&day).display());
        }
    }
}

/// The address we send to `peer` from: the configured source address of
/// its family, else the one the kernel's routes pick (a UDP socket
/// "connected" to it sends nothing).
fn sending_ip(source: &crate::config::Source, peer: std::net::IpAddr) -> Option<std::net::IpAddr> {
    use std::net::IpAddr;
    let configured = match peer {
        IpAddr::V4(_) => source.v4.map(IpAddr::V4),
        IpAddr::V6(_) => source.v6.map(IpAddr::V6),
    };
    configured.or_else(|| {
        let any: IpAddr = if peer.is_ipv4() { [0, 0, 0, 0].into() } else { std::net::Ipv6Addr::UNSPECIFIED.into() };
        let socket = std::net::UdpSocket::bind((any, 0)).ok()?;
        socket.connect((peer, 25)).ok()?;
        socket.local_addr().ok().map(|a| a.ip())
    })
}

/// `YYYY-MM-DD` (UTC) of `secs`.
pub(crate) fn day_of(secs: u64) -> String {
    crate::clock::timestamp(secs).strftime("%Y-%m-%d").to_string()
}

/// The TLS result of one MX delivery to `domain` under `applied` (`None`:
/// no policy), from its first recipient's attempt; `None` when no server
/// was reached (DNS, connection failures: not a TLS matter).
pub(crate) fn session_of(domain: &str, applied: Option<&Applied>, delivery: &Delivery) -> Option<Session> {
    let attempt = delivery.outcomes.first()?.attempt();
    let relay = attempt.relay.as_deref();
    let (mx, ip) = match relay.and_then(|r| r.split_once('[')) {
        Some((host, rest)) => (Some(host.to_string()), rest.split_once(']').map(|(ip, _)| ip.to_string())),
        None => (None, None),
    };
    let (result, reason) = if attempt.tls {
        match applied {
            // Testing mode delivers to any MX; one outside the policy is a
            // failure the domain wants to hear about.
            Some(a) if mx.as_deref().is_some_and(|m| !a.policy.allows(m)) => {
                (Some(ResultType::ValidationFailure), Some("mx-not-in-policy".to_string()))
            }
            _ => (None, None),
        }
    } else if relay.is_none() {
        // Nothing reached (DNS, connections, or a policy that left no MX
        // host, which `refused` records): not a TLS session.
        return None;
    } else if attempt.class == Some(ErrorClass::Tls) {
        (Some(classify(&attempt.detail)), Some(attempt.detail.clone()))
    } else if matches!(delivery.outcomes[0], Outcome::Delivered(_)) {
        (Some(ResultType::StarttlsNotSupported), Some("delivered without TLS".to_string()))
    } else {
        return None;
    };
    Some(Session {
        domain: domain.to_string(),
        policy: Some(if applied.is_some() { PolicyType::Sts } else { PolicyType::NoPolicyFound }),
        id: applied.map(|a| a.id.clone()),
        result,
        mx,
        ip,
        src: None,
        reason,
    })
}

/// An MTA-STS `enforce` policy that left no MX host to try.
pub(crate) fn refused(domain: &str, applied: &Applied, mx: &str) -> Session {
    Session {
        domain: domain.to_string(),
        policy: Some(PolicyType::Sts),
        id: Some(applied.id.clone()),
        result: Some(ResultType::ValidationFailure),
        mx: Some(mx.to_string()),
        reason: Some("mx-not-in-policy".into()),
        ..Session::default()
    }
}

/// A policy fetch that failed.
pub(crate) fn fetch_failed(domain: &str, applied: Option<&Applied>, kind: Failure, detail: &str) -> Session {
    let kind = match kind {
        Failure::Fetch => ResultType::StsPolicyFetchError,
        Failure::Invalid => ResultType::StsPolicyInvalid,
        Failure::Webpki => ResultType::StsWebpkiInvalid,
    };
    Session {
        domain: domain.to_string(),
        policy: Some(PolicyType::Sts),
        id: applied.map(|a| a.id.clone()),
        result: Some(kind),
        reason: Some(detail.to_string()),
        ..Session::default()
    }
}

/// The result type of a TLS failure, from the error's text (rustls's
/// certificate errors and the SMTP client's STARTTLS words).
fn classify(detail: &str) -> ResultType {
    let d = detail.to_ascii_lowercase();
    if d.contains("starttls is not offered") || d.contains("starttls was refused") {
        ResultType::StarttlsNotSupported
    } else if d.contains("notvalidforname") || d.contains("not valid for") {
        ResultType::CertificateHostMismatch
    } else if d.contains("expired") {
        ResultType::CertificateExpired
    } else if d.contains("unknownissuer") || d.contains("unknown issuer") || d.contains("not trusted") {
        ResultType::CertificateNotTrusted
    } else {
        ResultType::ValidationFailure
    }
}

/// The aggregate report (RFC 8460 4.4) of `day` from its file's `text`,
/// limited to `domain` when given.
pub(crate) fn report(
    text: &str,
    day: &str,
    organization: &str,
    contact: &str,
    domain: Option<&str>,
) -> serde_json::Value {
    /// Policy type, domain, policy id.
    type Key = (PolicyType, String, Option<String>);
    /// Result type, receiving IP, MX host, reason, sending IP.
    type Detail = (ResultType, Option<String>, Option<String>, Option<String>, Option<String>);
    #[derive(Default)]
    struct Tally {
        ok: u64,
        failed: u64,
        details: BTreeMap<Detail, u64>,
    }
    let mut policies: BTreeMap<(String, String), (Vec<String>, Vec<String>)> = BTreeMap::new();
    let mut tallies: BTreeMap<Key, Tally> = BTreeMap::new();
    for line in text.lines() {
        // A torn last line (a crash mid-write) is skipped.
        let Ok(line) = serde_json::from_str::<Line>(line) else { continue };
        match line {
            Line::Policy { domain, id, lines, mx } => {
                policies.insert((domain, id), (lines, mx));
            }
            Line::Session(s) => {
                if domain.is_some_and(|d| !d.eq_ignore_ascii_case(&s.domain)) {
                    continue;
                }
                let key = (s.policy.unwrap_or(PolicyType::NoPolicyFound), s.domain, s.id);
                let tally = tallies.entry(key).or_default();
                match s.result {
                    None => tally.ok += 1,
                    Some(r) => {
                        tally.failed += 1;
                        *tally.details.entry((r, s.ip, s.mx, s.reason, s.src)).or_default() += 1;
                    }
                }
            }
        }
    }
    let entries: Vec<serde_json::Value> = tallies
        .into_iter()
        .map(|((kind, domain, id), tally)| {
            let mut policy = serde_json::json!({ "policy-type": kind, "policy-domain": domain });
            if let Some((lines, mx)) = id.as_ref().and_then(|id| policies.get(&(domain.clone(), id.clone()))) {
                policy["policy-string"] = serde_json::json!(lines);
                policy["mx-host"] = serde_json::json!(mx);
            }
            let details: Vec<serde_json::Value> = tally
                .details
                .into_iter()
                .map(|((result, ip, mx, reason, src), n)| {
                    let mut d = serde_json::json!({ "result-type": result, "failed-session-count": n });
                    if let Some(src) = src {
                        d["sending-mta-ip"] = src.into();
                    }
                    if let Some(ip) = ip {
                        d["receiving-ip"] = ip.into();
                    }
                    if let Some(mx) = mx {
                        d["receiving-mx-hostname"] = mx.into();
                    }
                    if let Some(reason) = reason {
                        d["failure-reason-code"] = reason.into();
                    }
                    d
                })
                .collect();
            serde_json::json!({
                "policy": policy,
                "summary": {
                    "total-successful-session-count": tally.ok,
                    "total-failure-session-count": tally.failed,
                },
                "failure-details": details,
            })
        })
        .collect();
    serde_json::json!({
        "organization-name": organization,
        "date-range": {
            "start-datetime": format!("{day}T00:00:00Z"),
            "end-datetime": format!("{day}T23:59:59Z"),
        },
        "contact-info": contact,
        "report-id": format!("{day}T00:00:00Z_{organization}"),
        "policies": entries,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn failures_are_classified() {
        for (text, want) in [
            ("TLS failed: required by policy, but STARTTLS is not offered", ResultType::StarttlsNotSupported),
            ("TLS failed: invalid peer certificate: NotValidForName", ResultType::CertificateHostMismatch),
            ("TLS failed: certificate not valid for any of: a.test", ResultType::CertificateHostMismatch),
            ("TLS failed: invalid peer certificate: Expired", ResultType::CertificateExpired),
            ("TLS failed: invalid peer certificate: UnknownIssuer", ResultType::CertificateNotTrusted),
            ("TLS failed: handshake: something else", ResultType::ValidationFailure),
        ] {
            assert_eq!(classify(text), want, "{text}");
        }
    }

    #[test]
    fn a_day_folds_into_a_report() {
        let s = |domain: &str, result: Option<ResultType>| Session {
            domain: domain.into(),
            policy: Some(PolicyType::Sts),
            id: Some("1".into()),
            result,
            mx: Some("mx.a.test".into()),
            ip: Some("192.0.2.1".into()),
            src: None,
            reason: None,
        };
        let mut text = serde_json::to_string(&Line::Policy {
            domain: "a.test".into(),
            id: "1".into(),
            lines: vec!["version: STSv1".into(), "mode: testing".into()],
            mx: vec!["mx.a.test".into()],
        })
        .unwrap();
        for session in [s("a.test", None), s("a.test", Some(ResultType::StarttlsNotSupported)), s("b.test", None)] {
            text.push('\n');
            text.push_str(&serde_json::to_string(&Line::Session(session)).unwrap());
        }
        text.push_str("\n{\"kind\":\"sess");
        let r = report(&text, "2026-12-06", "hub.test", "postmaster@hub.test", Some("a.test"));
        assert_eq!(r["date-range"]["start-datetime"], "2026-12-06T00:00:00Z");
        let p = &r["policies"].as_array().unwrap()[0];
        assert_eq!(r["policies"].as_array().unwrap().len(), 1);
        assert_eq!(p["policy"]["policy-type"], "sts");
        assert_eq!(p["policy"]["policy-string"][1], "mode: testing");
        assert_eq!(p["summary"]["total-successful-session-count"], 1);
        assert_eq!(p["summary"]["total-failure-session-count"], 1);
        assert_eq!(p["failure-details"][0]["result-type"], "starttls-not-supported");
        assert_eq!(p["failure-details"][0]["receiving-mx-hostname"], "mx.a.test");
    }
}
