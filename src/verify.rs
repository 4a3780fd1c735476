//! SPF, DKIM, DMARC and ARC checks of incoming mail (`[verify]`, issue
//! 16), through `mail-auth`, and the Authentication-Results header (RFC
//! 8601) that records them.
//!
//! The SMTP session calls `spf` at MAIL FROM (both the MAIL FROM and the
//! HELO identity, RFC 7208 2.3 and 2.4) and `message` at the end of DATA
//! (DKIM on the whole message, then DMARC from the SPF and DKIM results,
//! then the ARC chain when `arc` is on).
//! Lookups go to `deliver.dns_servers` when set, else to the system's
//! resolvers, as every other lookup of posthorn does.
//!
//! What a result does:
//! - SPF `fail` with `spf_fail_action = "reject"`: 550 5.7.23 at MAIL
//!   (RFC 7372 3.2); `temperror` then gets 451 4.7.24 (RFC 7208 8.6 lets
//!   the server defer, RFC 7372 names the code), so a domain whose
//!   servers are down is tried again rather than let through unchecked.
//!   Every other result is accepted and only recorded.
//! - DMARC `fail` for a domain with `p=reject` or `p=quarantine`: as
//!   `dmarc_reject_action` says (refused with 550 5.7.1, put on hold, or
//!   only recorded).
//! - ARC (RFC 8617) is recorded as `arc=pass`, `arc=fail` (with
//!   mail-auth's reason) or `arc=none` (the message carries no ARC set),
//!   the three results RFC 8617 4.4 defines. Nothing is refused for it.
//!   A chain that passes and was last sealed by a domain in
//!   `arc_trusted_sealers` (empty by default) lets a DMARC failure be
//!   accepted instead of refused or held (RFC 8617 7.2, local policy):
//!   the log says `dmarc.override=arc (domain)`, the header is unchanged.

use crate::config::{Config, DmarcAction, SpfFailAction, VerifyConfig};
use crate::smtp::proto::reply::{Enhanced, Reply};
use hickory_resolver::config::{ResolveHosts, ResolverConfig, ResolverOpts};
use mail_auth::common::headers::HeaderWriter;
use mail_auth::dmarc::Policy;
use mail_auth::dmarc::verify::DmarcParameters;
use mail_auth::spf::verify::SpfParameters;
use mail_auth::{
    ArcOutput, AuthenticatedMessage, AuthenticationResults, DkimOutput, DkimResult, DmarcResult, MessageAuthenticator,
    SpfOutput, SpfResult,
};
use std::net::IpAddr;
use std::time::Duration;

/// Time allowed for one query to one server.
const QUERY_TIMEOUT: Duration = Duration::from_secs(3);

/// The checks of one configuration generation.
pub(crate) struct Verifier {
    auth: MessageAuthenticator,
    config: VerifyConfig,
}

/// The SPF results of one transaction, kept from MAIL to the end of DATA.
#[derive(Clone, Debug)]
pub(crate) struct SpfChecks {
    pub(crate) helo: SpfOutput,
    pub(crate) mail: SpfOutput,
    /// The MAIL FROM address (empty for the null sender) and the HELO name.
    sender: String,
    helo_name: String,
    ip: IpAddr,
}

/// What the end of DATA does with a message.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Action {
    Accept,
    Hold(String),
    Refuse(Reply),
}

/// The outcome of the checks at the end of DATA.
#[derive(Debug)]
pub(crate) struct Verdict {
    /// `Authentication-Results: ...\r\n`, to prepend.
    pub(crate) header: String,
    /// `spf=pass (example.org) dkim=pass (example.org) dmarc=pass (example.org)`,
    /// logged and kept on the envelope for `queue show`.
    pub(crate) log: String,
    pub(crate) action: Action,
}

impl std::fmt::Debug for Verifier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Verifier").field("config", &self.config).finish_non_exhaustive()
    }
}

impl Verifier {
    /// `None` when no check is on.
    pub(crate) fn from_config(config: &Config) -> anyhow::Result<Option<Verifier>> {
        if !config.verify.is_on() {
            return Ok(None);
        }
        let auth = if config.deliver.dns_servers.is_empty() {
            use anyhow::Context;
            MessageAuthenticator::new_system_conf()
                .context("reading the system resolver configuration (/etc/resolv.conf) for [verify]")?
        } else {
            let servers = crate::deliver::dns::name_servers(&config.deliver.dns_servers);
            let mut opts = ResolverOpts::default();
            opts.timeout = QUERY_TIMEOUT;
            opts.attempts = 2;
            opts.use_hosts_file = ResolveHosts::Never;
            opts.ndots = 0;
            MessageAuthenticator::new(ResolverConfig::from_parts(None, Vec::new(), servers), opts)
                .map_err(|e| anyhow::anyhow!("building the [verify] resolver: {e}"))?
        };
        Ok(Some(Verifier { auth, config: config.verify.clone() }))
    }

    /// Whether SPF is checked at MAIL.
    pub(crate) fn checks_spf(&self) -> bool {
        self.config.spf
    }

    /// SPF for the HELO and MAIL FROM identities of a client at `ip`;
    /// `Err` is the refusal `spf_fail_action` calls for.
    pub(crate) async fn spf(
        &self,
        ip: IpAddr,
        helo_name: &str,
        sender: &str,
        hostname: &str,
    ) -> (SpfChecks, Option<Reply>) {
        let helo = self.auth.verify_spf(SpfParameters::verify_ehlo(ip, helo_name, hostname)).await;
        let mail = if sender.is_empty() {
            // RFC 7208 2.4: the null sender is checked as postmaster@HELO.
            helo.clone()
        } else {
            self.auth.verify_spf(SpfParameters::verify_mail_from(ip, helo_name, hostname, sender)).await
        };
        let refusal = match (self.config.spf_fail_action, mail.result()) {
            (SpfFailAction::Reject, SpfResult::Fail) => Some(Reply::new(
                550,
                Enhanced(5, 7, 23),
                format!("SPF validation failed: {} does not designate {ip} as permitted sender", mail.domain()),
            )),
            (SpfFailAction::Reject, SpfResult::TempError) => Some(Reply::new(
                451,
                Enhanced(4, 7, 24),
                format!("SPF validation error: temporary DNS failure for {}", mail.domain()),
            )),
            _ => None,
        };
        let checks = SpfChecks { helo, mail, sender: sender.to_string(), helo_name: helo_name.to_string(), ip };
        (checks, refusal)
    }

    /// DKIM, DMARC and ARC of the message `text` from a client at `ip`,
    /// with the SPF results of MAIL (when SPF is on).
    pub(crate) async fn message(&self, text: &[u8], spf: Option<&SpfChecks>, ip: IpAddr) -> Verdict {
        let Some(message) = AuthenticatedMessage::parse(text) else {
            let header = AuthenticationResults::new(&self.config.authserv_id).to_header();
            return Verdict { header, log: "unparsable message".into(), action: Action::Accept };
        };
        let from_domain = message.from().rsplit_once('@').map(|(_, d)| d.to_ascii_lowercase()).unwrap_or_default();
        let dkim = if self.config.dkim { self.auth.verify_dkim(&message).await } else { Vec::new() };
        let dmarc = match spf {
            Some(spf) if self.config.dmarc => {
                let mail_domain = spf.mail.domain().to_string();
                Some(self.auth.verify_dmarc(DmarcParameters::new(&message, &dkim, &mail_domain, &spf.mail)).await)
            }
            _ => None,
        };
        let arc = if self.config.arc { Some(arc_result(&self.auth.verify_arc(&message).await)) } else { None };
        let mut results = AuthenticationResults::new(&self.config.authserv_id);
        let mut log = Vec::new();
        if let Some(spf) = spf {
            results = results.with_spf_mailfrom_result(&spf.mail, spf.ip, &spf.sender, &spf.helo_name);
            results = results.with_spf_ehlo_result(&spf.helo, spf.ip, &spf.helo_name);
            log.push(format!("spf={} ({})", spf_name(spf.mail.result()), spf.mail.domain()));
            log.push(format!("spf.helo={} ({})", spf_name(spf.helo.result()), spf.helo.domain()));
        }
        if self.config.dkim {
            if dkim.is_empty() {
                log.push("dkim=none".into());
            }
            for output in &dkim {
                results.set_dkim_result(output, message.from());
                let domain = output.signature().map(|s| s.d.as_str()).unwrap_or("");
                log.push(format!("dkim={} ({domain})", dkim_name(output)));
            }
        }
        let mut action = Action::Accept;
        if let Some(dmarc) = &dmarc {
            results = results.with_dmarc_result(dmarc);
            let result = dmarc_name(&dmarc.dkim_result().clone(), &dmarc.spf_result().clone());
            log.push(format!("dmarc={result} ({from_domain})"));
            if result == "fail" {
                action = self.dmarc_action(dmarc.policy(), &from_domain);
            }
        }
        if let Some((result, sealer)) = arc {
            log.push(match &sealer {
                Some(d) => format!("arc={} ({d})", arc_name(&result)),
                None => format!("arc={}", arc_name(&result)),
            });
            // RFC 8617 7.2: the list that broke the alignment vouches,
            // through a chain that holds, for what it saw.
            let trusted = sealer.filter(|d| self.config.arc_trusted_sealers.contains(d));
            if let (false, DkimResult::Pass, Some(d)) = (action == Action::Accept, &result, trusted) {
                log.push(format!("dmarc.override=arc ({d})"));
                action = Action::Accept;
            }
            results = results.with_arc_result(&ArcOutput::default().with_result(result), ip);
        }
        let mut header = with_dkim_none(results.to_header(), self.config.dkim && dkim.is_empty());
        if !header.ends_with("\r\n") {
            header.push_str("\r\n");
        }
        Verdict { header, log: log.join(" "), action }
    }

    /// Removes the Authentication-Results fields of `text` that claim this
    /// host's authserv-id: they come from outside and would be taken for
    /// its own results (RFC 8601 5). Returns how many were removed.
    pub(crate) fn remove_forged(&self, text: &mut Vec<u8>) -> usize {
        remove_forged(text, &self.config.authserv_id)
    }

    fn dmarc_action(&self, policy: Policy, domain: &str) -> Action {
        let refuse = || {
            Action::Refuse(Reply::new(
                550,
                Enhanced(5, 7, 1),
                format!("Message rejected: DMARC policy of {domain} is reject"),
            ))
        };
        let hold = || Action::Hold(format!("DMARC policy of {domain}"));
        match (self.config.dmarc_reject_action, policy) {
            (DmarcAction::Tag, _) | (_, Policy::None | Policy::Unspecified) => Action::Accept,
            (DmarcAction::Reject, Policy::Reject) => refuse(),
            (DmarcAction::Reject | DmarcAction::Quarantine, _) => hold(),
        }
    }
}

fn remove_forged(text: &mut Vec<u8>, authserv_id: &str) -> usize {
    use crate::message::header;
    let claims = |f: &header::Field<'_>| {
        let value = header::unfold(f.value());
        let value = String::from_utf8_lossy(&value);
        f.is("Authentication-Results")
            && value
                .split(';')
                .next()
                .and_then(|id| id.split_whitespace().next())
                .is_some_and(|id| id.eq_ignore_ascii_case(authserv_id))
    };
    let head = header::block(text);
    let forged = header::fields(head).filter(|f| claims(f)).count();
    if forged > 0 {
        let kept: Vec<u8> = header::fields(head).filter(|f| !claims(f)).flat_map(|f| f.raw()).copied().collect();
        let cut = head.len();
        text.splice(..cut, kept);
    }
    forged
}

/// `dkim=none` when the message has no signature (RFC 8601 2.7.1), which
/// mail-auth writes nothing for.
fn with_dkim_none(header: String, unsigned: bool) -> String {
    if !unsigned {
        return header;
    }
    match header.find(";\r\n\tdmarc=") {
        Some(at) => format!("{};\r\n\tdkim=none{}", &header[..at], &header[at..]),
        None => match header.strip_suffix("\r\n") {
            Some(head) if !head.ends_with("; none") => format!("{head};\r\n\tdkim=none\r\n"),
            _ => header.replace("; none\r\n", ";\r\n\tdkim=none\r\n"),
        },
    }
}

/// The chain's result in RFC 8617's three words (a DNS or syntax error
/// is a `fail` with its reason), and the domain of the newest seal.
fn arc_result(arc: &ArcOutput<'_>) -> (DkimResult, Option<String>) {
    let sealer = arc.sets().last().map(|set| set.seal.header.d.to_ascii_lowercase());
    let result = match arc.result() {
        DkimResult::Pass => DkimResult::Pass,
        DkimResult::None => DkimResult::None,
        DkimResult::Neutral(e) | DkimResult::Fail(e) | DkimResult::PermError(e) | DkimResult::TempError(e) => {
            DkimResult::Fail(e.clone())
        }
    };
    (result, sealer)
}

fn arc_name(result: &DkimResult) -> &'static str {
    match result {
        DkimResult::Pass => "pass",
        DkimResult::None => "none",
        _ => "fail",
    }
}

pub(crate) fn spf_name(result: SpfResult) -> &'static str {
    match result {
        SpfResult::Pass => "pass",
        SpfResult::Fail => "fail",
        SpfResult::SoftFail => "softfail",
        SpfResult::Neutral => "neutral",
        SpfResult::TempError => "temperror",
        SpfResult::PermError => "permerror",
        SpfResult::None => "none",
    }
}

fn dkim_name(output: &DkimOutput) -> &'static str {
    match output.result() {
        DkimResult::Pass => "pass",
        DkimResult::Neutral(_) => "neutral",
        DkimResult::Fail(_) => "fail",
        DkimResult::PermError(_) => "permerror",
        DkimResult::TempError(_) => "temperror",
        DkimResult::None => "none",
    }
}

/// DMARC passes when either aligned mechanism passes (RFC 7489 4.2).
fn dmarc_name(dkim: &DmarcResult, spf: &DmarcResult) -> &'static str {
    let name = |r: &DmarcResult| match r {
        DmarcResult::Pass => "pass",
        DmarcResult::Fail(_) => "fail",
        DmarcResult::TempError(_) => "temperror",
        DmarcResult::PermError(_) => "permerror",
        DmarcResult::None => "none",
    };
    match (name(dkim), name(spf)) {
        ("pass", _) | (_, "pass") => "pass",
        ("fail", _) | (_, "fail") => "fail",
        ("temperror", _) | (_, "temperror") => "temperror",
        ("permerror", _) | (_, "permerror") => "permerror",
        _ => "none",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dkim_none_goes_before_dmarc() {
        let table = [
            (
                "Authentication-Results: mx.test;\r\n\tspf=pass smtp.mailfrom=a@b;\r\n\tdmarc=pass header.from=b\r\n",
                "Authentication-Results: mx.test;\r\n\tspf=pass smtp.mailfrom=a@b;\r\n\tdkim=none;\r\n\tdmarc=pass header.from=b\r\n",
            ),
            (
                "Authentication-Results: mx.test;\r\n\tspf=pass smtp.mailfrom=a@b\r\n",
                "Authentication-Results: mx.test;\r\n\tspf=pass smtp.mailfrom=a@b;\r\n\tdkim=none\r\n",
            ),
            ("Authentication-Results: mx.test; none\r\n", "Authentication-Results: mx.test;\r\n\tdkim=none\r\n"),
        ];
        for (from, to) in table {
            assert_eq!(with_dkim_none(from.into(), true), to);
            assert_eq!(with_dkim_none(from.into(), false), from);
        }
    }

    #[test]
    fn only_fields_claiming_this_host_are_removed() {
        let mut text = b"Authentication-Results: MX.test;\r\n\tspf=pass\r\nSubject: x\r\nAuthentication-Results: mx.test.example; dkim=pass\r\nAuthentication-Results: mx.test (comment); none\r\n\r\nAuthentication-Results: mx.test; body\r\n".to_vec();
        assert_eq!(remove_forged(&mut text, "mx.test"), 2);
        assert_eq!(
            String::from_utf8(text).unwrap(),
            "Subject: x\r\nAuthentication-Results: mx.test.example; dkim=pass\r\n\r\nAuthentication-Results: mx.test; body\r\n"
        );
    }

    #[test]
    fn dmarc_passes_on_either_mechanism() {
        let fail = || DmarcResult::Fail(mail_auth::Error::NotAligned);
        assert_eq!(dmarc_name(&DmarcResult::Pass, &fail()), "pass");
        assert_eq!(dmarc_name(&fail(), &DmarcResult::Pass), "pass");
        assert_eq!(dmarc_name(&fail(), &DmarcResult::None), "fail");
        assert_eq!(dmarc_name(&DmarcResult::None, &DmarcResult::None), "none");
    }
}
