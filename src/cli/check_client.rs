//! `posthorn check-client ADDR [HELO] [FROM]`: what each internet-facing
//! check of the SMTP server would say about a client, without a daemon
//! and without sending mail. One block per check, in the order the
//! server applies them: trusted networks, the DNS lists (`[screen]`),
//! SPF (`[verify]`), the policy services (`[policy]`, asked only with
//! `--ask-policy`: they have side effects), the milters (listed, never
//! contacted) and the pregreet test.
//!
//! The lookups use the daemon's code (`screen::Screen::ask`,
//! `verify::Verifier::spf`, `policy::Services::decide`) and its resolver
//! (`deliver.dns_servers`). Exit status: 0 the client would be accepted,
//! 1 a check would refuse it, 2 a usage or configuration error.

use crate::config::{Config, PolicyStage};
use crate::policy::{Query, Services, Verdict};
use crate::screen::{Screen, query_name, score};
use crate::verify::Verifier;
use std::collections::HashMap;
use std::fmt::Write as _;
use std::net::{IpAddr, Ipv4Addr};
use std::path::Path;

/// The client would be accepted.
pub(crate) const ACCEPTED: u8 = 0;
/// A check would refuse it.
pub(crate) const REFUSED: u8 = 1;
/// Usage or configuration error.
pub(crate) const ERROR: u8 = 2;

/// What the command was given.
pub(crate) struct Options {
    pub(crate) addr: String,
    pub(crate) helo: Option<String>,
    pub(crate) from: Option<String>,
    pub(crate) ask_policy: bool,
    pub(crate) rcpt: Option<String>,
}

pub(crate) fn main(explicit: Option<&Path>, opts: Options) -> u8 {
    const PROG: &str = "posthorn check-client";
    let Ok(ip) = opts.addr.trim_start_matches('[').trim_end_matches(']').parse::<IpAddr>() else {
        eprintln!("{PROG}: `{}` is not an IP address", opts.addr);
        return ERROR;
    };
    let config = match super::load_config(explicit, PROG) {
        Ok(c) => c,
        Err(_) => return ERROR,
    };
    let rt = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("{PROG}: fatal: {e}");
            return ERROR;
        }
    };
    match rt.block_on(report(&config, ip.to_canonical(), &opts)) {
        Ok((text, refused)) => {
            print!("{text}");
            if refused { REFUSED } else { ACCEPTED }
        }
        Err(e) => {
            eprintln!("{PROG}: fatal: {e:#}");
            ERROR
        }
    }
}

/// The report, and whether a check would refuse the client.
async fn report(config: &Config, ip: IpAddr, opts: &Options) -> anyhow::Result<(String, bool)> {
    let mut out = String::new();
    let mut refused = false;
    let helo = opts.helo.as_deref().unwrap_or("");
    let from = opts.from.as_deref();
    let shown_from = from.map_or("(none)".to_string(), |f| format!("<{f}>"));
    let _ = writeln!(out, "client: [{ip}] helo={} from={shown_from}", or_none(helo));
    if config.access.trusts(ip) {
        let _ = writeln!(out, "trusted: yes ({ip} is in access.trusted_networks): every check skipped");
        let _ = writeln!(out, "verdict: accept");
        return Ok((out, false));
    }
    let _ = writeln!(out, "trusted: no");

    // The DNS lists.
    match Screen::from_config(config)?.filter(|s| s.asks_lists()) {
        None => {
            let _ = writeln!(out, "screen: off");
        }
        Some(screen) => {
            let sc = &config.screen;
            let _ =
                writeln!(out, "screen: dnsbl_threshold {}, dnsbl_timeout {:?}", sc.dnsbl_threshold, sc.dnsbl_timeout);
            let (answers, complete) = screen.ask(ip).await;
            for site in &sc.dnsbl_sites {
                let name = query_name(ip, &site.domain);
                let (answer, matched) = match answers.get(&site.domain) {
                    Some(Ok(addrs)) if addrs.is_empty() => ("NXDOMAIN".to_string(), false),
                    Some(Ok(addrs)) => {
                        let shown: Vec<String> = addrs.iter().map(Ipv4Addr::to_string).collect();
                        (shown.join(" "), addrs.iter().any(|a| site.matches(*a)))
                    }
                    Some(Err(why)) => (why.clone(), false),
                    None => ("no answer".to_string(), false),
                };
                let _ = writeln!(
                    out,
                    "  {site}: {name} -> {answer}; {}, weight {}",
                    if matched { "matched" } else { "not matched" },
                    site.weight
                );
            }
            let ok: HashMap<String, Vec<Ipv4Addr>> =
                answers.into_iter().filter_map(|(d, a)| a.ok().map(|a| (d, a))).collect();
            let rank = score(&sc.dnsbl_sites, &ok, complete);
            let _ = writeln!(out, "  score {} (threshold {})", rank.score, sc.dnsbl_threshold);
            match screen.refusal(&rank, ip) {
                Some(reply) => {
                    refused = true;
                    let _ = writeln!(out, "  verdict: refuse at RCPT: {reply}");
                }
                None => {
                    let _ = writeln!(out, "  verdict: pass");
                }
            }
        }
    }

    // SPF.
    match Verifier::from_config(config)?.filter(|v| v.checks_spf()) {
        None => {
            let _ = writeln!(out, "verify spf: off");
        }
        Some(_) if from.is_none() && helo.is_empty() => {
            let _ = writeln!(out, "verify spf: on, not checked (give HELO and FROM)");
        }
        Some(verifier) => {
            let _ = writeln!(out, "verify spf: on, spf_fail_action {}", config.verify.spf_fail_action.name());
            let sender = from.unwrap_or("");
            let (checks, refusal) = verifier.spf(ip, helo, sender, &config.hostname).await;
            let _ = writeln!(
                out,
                "  MAIL FROM <{sender}>: {} ({})",
                crate::verify::spf_name(checks.mail.result()),
                or_none(checks.mail.domain())
            );
            let _ = writeln!(
                out,
                "  HELO {}: {} ({})",
                or_none(helo),
                crate::verify::spf_name(checks.helo.result()),
                or_none(checks.helo.domain())
            );
            match refusal {
                Some(reply) => {
                    refused = true;
                    let _ = writeln!(out, "  verdict: refuse at MAIL: {reply}");
                }
                None => {
                    let _ = writeln!(out, "  verdict: accept (recorded in Authentication-Results)");
                }
            }
        }
    }

    // The policy services.
    let policy = &config.policy;
    if policy.services.is_empty() {
        let _ = writeln!(out, "policy: off");
    } else {
        let stages: Vec<&str> = policy.stages.iter().map(|s| s.name()).collect();
        let _ = writeln!(out, "policy: asked at {}", stages.join(", "));
        for service in &policy.services {
            let _ = writeln!(out, "  {service}");
        }
        if opts.ask_policy {
            let rcpt = match &opts.rcpt {
                Some(r) => r.clone(),
                None => format!("postmaster@{}", config.access.local_domains.first().map_or("localhost", |d| d)),
            };
            let query = Query {
                stage: Some(PolicyStage::Rcpt),
                protocol_name: if helo.is_empty() { "SMTP" } else { "ESMTP" }.into(),
                helo_name: helo.to_string(),
                sender: from.unwrap_or("").to_string(),
                recipient: rcpt.clone(),
                recipient_count: 0,
                client_address: Some(ip),
                instance: format!("check-client.{}", std::process::id()),
                hostname: config.hostname.clone(),
                ..Query::default()
            };
            match Services::new(policy).decide(&query, &format!("<{rcpt}>")).await {
                Verdict::Accept { prepend } => {
                    let _ = writeln!(out, "  RCPT <{rcpt}>: accept");
                    for header in prepend {
                        let _ = writeln!(out, "    prepend {header}");
                    }
                }
                Verdict::Refuse(reply) => {
                    refused = true;
                    let _ = writeln!(out, "  RCPT <{rcpt}>: refuse: {reply}");
                }
            }
        } else {
            let _ = writeln!(out, "  not asked (they may record the request; --ask-policy asks at RCPT)");
        }
    }

    // The milters.
    if config.milter.servers.is_empty() {
        let _ = writeln!(out, "milters: off");
    } else {
        let _ = writeln!(out, "milters: not contacted; default_action {}", config.milter.default_action.name());
        for milter in &config.milter.servers {
            let _ = writeln!(out, "  {milter}");
        }
    }

    // Pregreet.
    match config.screen.pregreet {
        false => {
            let _ = writeln!(out, "pregreet: off");
        }
        true => {
            let _ = writeln!(
                out,
                "pregreet: on, greet_wait {:?} (depends on the client's timing)",
                config.screen.greet_wait
            );
        }
    }
    let _ = writeln!(out, "verdict: {}", if refused { "refuse" } else { "accept" });
    Ok((out, refused))
}

fn or_none(s: &str) -> &str {
    if s.is_empty() { "(none)" } else { s }
}
