//! `postconf`: the effective configuration as `key = value` lines, and
//! edits of the file (`-e`, `-X`, `-#`; see `edit`).
//!
//! Keys are the TOML dotted names (`smtp.max_message_size = 52428800`).
//! `postconf` prints every key posthorn has, set or not, each rendered one
//! way from the resolved configuration; the list of keys comes from the
//! configuration's own field names (`config::keys`), so a new key cannot
//! be left out. `postconf -n` prints only the keys that differ from the
//! defaults (`role` against `satellite`, the others against the role's
//! defaults), `postconf -d` the defaults of the file's role, `postconf
//! KEY...` the named ones; `-h` prints values only, `-H` names only. An
//! unknown name gets Postfix's `warning: NAME: unknown parameter`, and the
//! exit status stays 0, as Postfix's does. Lists print comma-separated,
//! durations in their largest exact unit (`5m`), sizes in bytes, as
//! Postfix does; unset paths and addresses print empty.
//!
//! The Postfix parameters posthorn implements with the same meaning answer
//! under their Postfix name (`postconf -h relayhost`), with the value in
//! Postfix's syntax (`yes`/`no` for booleans), and `postconf -e` takes
//! them too; `mail_version` is posthorn's version. See [`POSTFIX_NAMES`].
//! Not mapped, because the meaning differs: `inet_interfaces` (addresses
//! without ports; `smtp.listen` holds `address:port`), `smtpd_timeout` (a
//! timeout per read or write; `smtp.command_timeout` is a deadline per
//! command line and `smtp.data_timeout` the one between reads in DATA),
//! `smtpd_hard_error_limit`/`smtpd_soft_error_limit`/`smtpd_error_sleep_time`
//! (Postfix counts errors its own way, with a soft limit and sleeps;
//! `smtp.max_errors` counts every 4xx and 5xx reply), `masquerade_domains`
//! (Postfix strips subdomains; posthorn's names the domains whose senders
//! become `rewrite.masquerade_as`), `smtp_sasl_password_maps` (a table by
//! next hop; `relay.auth_file` is one `user:password`),
//! `virtual_mailbox_base` (`deliver.maildir_root` is a template), and
//! `smtp_dns_support_level` (Postfix trusts its resolver's AD bit; posthorn
//! validates DNSSEC itself whenever a TLS level says `dane`, from
//! `deliver.dnssec_trust_anchor`). `smtp_tls_security_level` is
//! `relay.tls`, which refuses `dane`: DANE is `outbound_tls.level`'s.

mod edit;

use super::exit;
use crate::config::{BareNewline, Config, Role, SyncMode, TlsPolicy};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

const USAGE: &str = "usage: postconf [-c config] [-d (defaults)] [-n (non-defaults)] [-h (values only)] [-H (names only)] [name...]\n       postconf [-c config] -e 'name = value'... | -X name... | -# name...";

/// Postfix parameter names and the posthorn keys that mean the same.
/// Where Postfix and posthorn defaults differ, posthorn's apply.
pub(crate) const POSTFIX_NAMES: &[(&str, &str)] = &[
    ("myhostname", "hostname"),
    ("myorigin", "myorigin"),
    ("mail_spool_directory", "local.mail_spool_directory"),
    ("home_mailbox", "local.home_mailbox"),
    ("recipient_delimiter", "local.recipient_delimiter"),
    ("default_privs", "local.default_privs"),
    ("command_time_limit", "local.command_time_limit"),
    ("allow_mail_to_commands", "local.allow_mail_to_commands"),
    ("allow_mail_to_files", "local.allow_mail_to_files"),
    ("forward_path", "local.forward_path"),
    ("queue_directory", "spool"),
    ("mail_owner", "user"),
    ("message_size_limit", "smtp.max_message_size"),
    ("smtpd_recipient_limit", "smtp.max_recipients"),
    ("smtpd_client_connection_count_limit", "smtp.client_connection_limit"),
    ("smtpd_client_connection_rate_limit", "smtp.client_connection_rate_limit"),
    ("hopcount_limit", "smtp.hopcount_limit"),
    // normalize | reject; Postfix's `yes` is an alias of normalize, and its
    // `no` (bare LF accepted from anyone) posthorn does not offer.
    ("smtpd_forbid_bare_newline", "smtp.bare_newline"),
    ("mynetworks", "access.trusted_networks"),
    ("relay_domains", "access.relay_domains"),
    ("mydestination", "access.local_domains"),
    ("local_recipient_maps", "access.local_recipient_maps"),
    ("relayhost", "relay.smarthosts"),
    ("smtp_tls_security_level", "relay.tls"),
    ("smtp_tls_CAfile", "relay.tls_ca"),
    ("smtp_tls_cert_file", "relay.tls_client_cert"),
    ("smtp_tls_key_file", "relay.tls_client_key"),
    ("smtp_connect_timeout", "relay.connect_timeout"),
    ("smtp_connection_cache_time_limit", "relay.idle_timeout"),
    ("minimal_backoff_time", "queue.retry_min"),
    ("maximal_backoff_time", "queue.retry_max"),
    ("maximal_queue_lifetime", "queue.max_lifetime"),
    ("delay_warning_time", "queue.delay_warning"),
    ("qmgr_message_active_limit", "queue.active_limit"),
    ("queue_minfree", "queue.min_free"),
    ("virtual_alias_maps", "rewrite.virtual_alias_maps"),
    ("virtual_alias_domains", "rewrite.virtual_alias_domains"),
    ("alias_maps", "rewrite.alias_maps"),
    ("sender_canonical_maps", "rewrite.sender_canonical_maps"),
    ("recipient_canonical_maps", "rewrite.recipient_canonical_maps"),
    ("transport_maps", "deliver.transport_maps"),
    ("smtp_tls_policy_maps", "outbound_tls.policy_maps"),
    ("default_destination_concurrency_limit", "deliver.destination_concurrency"),
    ("inet_protocols", "deliver.inet_protocols"),
    ("smtpd_tls_cert_file", "tls.cert"),
    ("smtpd_tls_key_file", "tls.key"),
    ("smtpd_tls_CAfile", "tls.client_ca"),
    ("smtpd_sasl_authenticated_header", "tls.received_auth_user"),
    ("content_filter", "filter.content_filter"),
    ("smtpd_milters", "milter.servers"),
    ("non_smtpd_milters", "milter.non_smtpd_milters"),
    ("milter_default_action", "milter.default_action"),
    ("milter_connect_timeout", "milter.connect_timeout"),
    ("milter_command_timeout", "milter.command_timeout"),
    ("milter_content_timeout", "milter.content_timeout"),
    ("smtpd_policy_service_timeout", "policy.timeout"),
    ("smtpd_policy_service_max_idle", "policy.max_idle"),
    ("smtpd_policy_service_default_action", "policy.default_action"),
    ("postscreen_dnsbl_sites", "screen.dnsbl_sites"),
    ("postscreen_dnsbl_threshold", "screen.dnsbl_threshold"),
    ("postscreen_dnsbl_timeout", "screen.dnsbl_timeout"),
    ("postscreen_greet_wait", "screen.greet_wait"),
    ("syslog_name", "log.syslog_name"),
    ("syslog_facility", "log.syslog_facility"),
];

/// Not a key: answered with posthorn's version, as Postfix answers its own.
const MAIL_VERSION: &str = "mail_version";

pub(crate) fn main(args: &[String]) -> u8 {
    let (opts, names) = match super::getopt(args, "c:dehHnvX#") {
        Ok(parsed) => parsed,
        Err(e) => {
            eprintln!("postconf: {e}");
            eprintln!("postconf: fatal: {USAGE}");
            return exit::USAGE;
        }
    };
    let has = |c: char| opts.iter().any(|(o, _)| *o == c);
    let config_path = opts.iter().find(|(c, _)| *c == 'c').and_then(|(_, v)| v.as_deref()).map(super::config_arg);
    let modes = [('e', edit::Mode::Set), ('X', edit::Mode::Remove), ('#', edit::Mode::CommentOut)];
    let mut edits: Vec<edit::Mode> = modes.into_iter().filter(|(c, _)| has(*c)).map(|(_, m)| m).collect();
    if let Some(mode) = edits.pop() {
        if !edits.is_empty() || names.is_empty() {
            eprintln!("postconf: fatal: {USAGE}");
            return exit::USAGE;
        }
        return edit::main(config_path.as_deref(), mode, &names);
    }
    let config = match super::load_config(config_path.as_deref(), "postconf") {
        Ok(c) => c,
        Err(code) => return code,
    };
    let lines = match show(&config, has('d'), has('n'), &names) {
        Some(lines) => lines,
        None => return exit::OK,
    };
    for (k, v) in lines {
        if has('h') {
            println!("{v}");
        } else if has('H') {
            println!("{k}");
        } else if v.is_empty() {
            println!("{k} =");
        } else {
            println!("{k} = {v}");
        }
    }
    exit::OK
}

/// The lines to print: every key, or the `names` asked for (under the name
/// asked, unknown ones warned about); `None` when there is nothing to print.
fn show(config: &Config, defaults_only: bool, non_default: bool, names: &[String]) -> Option<Vec<(String, String)>> {
    let defaults = defaults(config.role, &config.hostname);
    let mut rows = settings(if defaults_only { &defaults } else { config });
    if non_default {
        let mut base = settings(&defaults);
        // The role's own default is satellite: a hub's file says so.
        if let Some(role) = base.iter_mut().find(|(k, _)| k == "role") {
            role.1 = role_name(Role::Satellite).into();
        }
        rows.retain(|(k, v)| base.iter().find(|(bk, _)| bk == k).is_none_or(|(_, bv)| bv != v));
    }
    if names.is_empty() {
        return Some(rows);
    }
    let known = crate::config::keys();
    let mut lines = Vec::new();
    for name in names {
        if name == MAIL_VERSION {
            if !non_default {
                lines.push((name.clone(), env!("CARGO_PKG_VERSION").to_string()));
            }
            continue;
        }
        let (key, postfix) = match POSTFIX_NAMES.iter().find(|(p, _)| p == name) {
            Some((_, key)) => (*key, true),
            None => (name.as_str(), false),
        };
        match rows.iter().find(|(k, _)| k == key) {
            Some((_, v)) if postfix => lines.push((name.clone(), postfix_value(v))),
            Some((_, v)) => lines.push((name.clone(), v.clone())),
            None if known.iter().any(|k| k == key) => {} // -n, and at its default
            None => eprintln!("postconf: warning: {name}: unknown parameter"),
        }
    }
    Some(lines).filter(|l| !l.is_empty())
}

/// A value as Postfix writes it: booleans are `yes` and `no`.
fn postfix_value(v: &str) -> String {
    match v {
        "true" => "yes".into(),
        "false" => "no".into(),
        other => other.into(),
    }
}

/// The role's defaults for a host of this name (some defaults, like a
/// hub's local domains, derive from the hostname).
fn defaults(role: Role, hostname: &str) -> Config {
    let text = format!("role = \"{}\"\nhostname = {}\n", role_name(role), toml::Value::from(hostname));
    let mut c = Config::parse(&text, Path::new("(defaults)")).expect("role defaults parse");
    c.hostname = crate::config::system_hostname();
    c
}

fn role_name(role: Role) -> &'static str {
    match role {
        Role::Hub => "hub",
        Role::Satellite => "satellite",
    }
}

/// Every key with its value, in the order of `config::keys`: one rendering
/// per key, whether set in the file or a default. A key of the file
/// without a row here fails the unit test `every_key_has_a_row`.
pub(crate) fn settings(c: &Config) -> Vec<(String, String)> {
    let list = |v: &[String]| v.join(", ");
    let addrs = |v: &[SocketAddr]| v.iter().map(SocketAddr::to_string).collect::<Vec<_>>().join(", ");
    let path = |p: &Option<PathBuf>| p.as_ref().map(|p| p.display().to_string()).unwrap_or_default();
    let opt_addr = |a: &Option<SocketAddr>| a.map(|a| a.to_string()).unwrap_or_default();
    let milters = |v: &[crate::config::MilterAddr]| v.iter().map(ToString::to_string).collect::<Vec<_>>().join(", ");
    let (smtp, access, relay, queue, rewrite, deliver) =
        (&c.smtp, &c.access, &c.relay, &c.queue, &c.rewrite, &c.deliver);
    let (tls, auth, filter, log) = (&c.tls, &c.auth, &c.filter, &c.log);
    let rows: Vec<(&str, String)> = vec![
        ("role", role_name(c.role).into()),
        ("hostname", c.hostname.clone()),
        ("myorigin", c.myorigin.clone()),
        ("spool", c.spool.display().to_string()),
        ("user", c.user.clone().unwrap_or_default()),
        ("smtp.listen", addrs(&smtp.listen)),
        ("smtp.submission", addrs(&smtp.submission)),
        ("smtp.submissions", addrs(&smtp.submissions)),
        ("smtp.max_message_size", smtp.max_message_size.to_string()),
        ("smtp.max_recipients", smtp.max_recipients.to_string()),
        ("smtp.max_connections", smtp.max_connections.to_string()),
        ("smtp.listen_backlog", smtp.listen_backlog.to_string()),
        ("smtp.max_line_length", smtp.max_line_length.to_string()),
        ("smtp.max_data_line_length", smtp.max_data_line_length.to_string()),
        ("smtp.client_connection_limit", smtp.client_connection_limit.to_string()),
        ("smtp.client_connection_rate_limit", smtp.client_connection_rate_limit.to_string()),
        ("smtp.trusted_reserve", smtp.trusted_reserve.to_string()),
        ("smtp.command_timeout", duration(smtp.command_timeout)),
        ("smtp.data_timeout", duration(smtp.data_timeout)),
        ("smtp.data_deadline", duration(smtp.data_deadline)),
        ("smtp.tls_handshake_timeout", duration(smtp.tls_handshake_timeout)),
        ("smtp.repeat_log_interval", duration(smtp.repeat_log_interval)),
        ("smtp.max_errors", smtp.max_errors.to_string()),
        ("smtp.hopcount_limit", smtp.hopcount_limit.to_string()),
        ("smtp.bare_newline", bare_newline(smtp.bare_newline).into()),
        (
            "access.trusted_networks",
            access.trusted_networks.iter().map(|n| n.to_string()).collect::<Vec<_>>().join(", "),
        ),
        ("access.relay_domains", list(&access.relay_domains)),
        ("access.local_domains", list(&access.local_domains)),
        ("access.local_recipient_maps", list(&access.local_recipient_maps)),
        ("access.trusted_fingerprints", list(&access.trusted_fingerprints)),
        ("access.client_cert_senders", cert_senders(&access.client_cert_senders)),
        ("relay.smarthosts", list(&relay.smarthosts)),
        ("relay.tls", tls_policy(relay.tls).into()),
        ("relay.tls_ca", path(&relay.tls_ca)),
        ("relay.tls_client_cert", path(&relay.tls_client_cert)),
        ("relay.tls_client_key", path(&relay.tls_client_key)),
        // A path, never the credentials in it.
        ("relay.auth_file", path(&relay.auth_file)),
        ("relay.auth_plaintext", relay.auth_plaintext.to_string()),
        ("relay.auth_unverified", relay.auth_unverified.to_string()),
        ("relay.connect_timeout", duration(relay.connect_timeout)),
        ("relay.max_connections", relay.max_connections.to_string()),
        ("relay.idle_timeout", duration(relay.idle_timeout)),
        ("queue.retry_min", duration(queue.retry_min)),
        ("queue.retry_max", duration(queue.retry_max)),
        ("queue.max_lifetime", duration(queue.max_lifetime)),
        ("queue.delay_warning", queue.delay_warning.map_or("0".into(), duration)),
        ("queue.active_limit", queue.active_limit.to_string()),
        ("queue.pickup_interval", duration(queue.pickup_interval)),
        ("queue.bounce_rate_limit", queue.bounce_rate_limit.to_string()),
        ("queue.sync", if queue.sync == SyncMode::Batch { "batch" } else { "per-file" }.into()),
        ("queue.min_free", min_free(queue.min_free, &c.spool).to_string()),
        ("rewrite.virtual_alias_maps", list(&rewrite.virtual_alias_maps)),
        ("rewrite.virtual_alias_domains", list(&rewrite.virtual_alias_domains)),
        ("rewrite.alias_maps", list(&rewrite.alias_maps)),
        ("rewrite.sender_canonical_maps", list(&rewrite.sender_canonical_maps)),
        ("rewrite.recipient_canonical_maps", list(&rewrite.recipient_canonical_maps)),
        ("rewrite.masquerade_as", rewrite.masquerade_as.clone().unwrap_or_default()),
        ("rewrite.masquerade_domains", list(&rewrite.masquerade_domains)),
        ("deliver.transport_maps", list(&deliver.transport_maps)),
        ("deliver.maildir_root", deliver.maildir_root.clone()),
        ("deliver.dns_servers", addrs(&deliver.dns_servers)),
        ("deliver.dnssec_trust_anchor", path(&deliver.dnssec_trust_anchor)),
        ("deliver.mx_port", deliver.mx_port.to_string()),
        ("deliver.destination_concurrency", deliver.destination_concurrency.to_string()),
        ("deliver.source_addresses", {
            let s = &deliver.source;
            let ips: Vec<String> =
                s.v4.iter().map(ToString::to_string).chain(s.v6.iter().map(ToString::to_string)).collect();
            ips.join(", ")
        }),
        ("deliver.connection_attempt_delay", duration(deliver.connection_attempt_delay)),
        ("deliver.shaping", {
            let one = |s: &crate::config::Shaping| {
                let mut parts = vec![format!("destination = {:?}", s.destination)];
                parts.extend(s.max_connections.map(|n| format!("max_connections = {n}")));
                parts.extend(s.max_messages.map(|n| format!("max_messages_per_minute = {n}")));
                parts.push(format!("per = {:?}", duration(s.per)));
                parts.extend(s.max_per_connection.map(|n| format!("max_messages_per_connection = {n}")));
                format!("{{ {} }}", parts.join(", "))
            };
            deliver.shaping.iter().map(one).collect::<Vec<_>>().join(", ")
        }),
        (
            "deliver.inet_protocols",
            match deliver.source.protocols {
                crate::config::Protocols::All => "all",
                crate::config::Protocols::Ipv4 => "ipv4",
                crate::config::Protocols::Ipv6 => "ipv6",
            }
            .into(),
        ),
        ("outbound_tls.policy_maps", list(&c.outbound_tls.policy_maps)),
        ("outbound_tls.level", tls_policy(c.outbound_tls.level).into()),
        ("outbound_tls.ca", path(&c.outbound_tls.ca)),
        ("mta_sts.enabled", c.mta_sts.enabled.to_string()),
        ("mta_sts.fetch_timeout", duration(c.mta_sts.fetch_timeout)),
        ("tls_report.enabled", c.tls_report.enabled.to_string()),
        ("tls_report.contact", c.tls_report.contact.clone().unwrap_or_default()),
        ("local.local_transport", crate::config::local_transport_name(&c.local)),
        ("local.mail_spool_directory", c.local.mail_spool_directory.display().to_string()),
        ("local.home_mailbox", crate::config::home_mailbox_text(&c.local)),
        ("local.deliver_to_root", c.local.deliver_to_root.to_string()),
        ("local.recipient_delimiter", c.local.recipient_delimiter.clone()),
        ("local.default_privs", c.local.default_privs.clone()),
        ("local.command_time_limit", duration(c.local.command_time_limit)),
        ("local.allow_mail_to_commands", list(&c.local.allow_mail_to_commands)),
        ("local.allow_mail_to_files", list(&c.local.allow_mail_to_files)),
        ("local.forward_path", list(&c.local.forward_path)),
        ("tls.cert", path(&tls.cert)),
        ("tls.key", path(&tls.key)),
        ("tls.received_auth_user", tls.received_auth_user.to_string()),
        ("tls.client_ca", path(&tls.client_ca)),
        ("auth.users", path(&auth.users)),
        ("auth.allow_plaintext", auth.allow_plaintext.to_string()),
        ("auth.max_failures", auth.max_failures.to_string()),
        ("auth.failure_window", duration(auth.failure_window)),
        ("auth.failure_delay", duration(auth.failure_delay)),
        ("filter.content_filter", filter.content_filter.as_ref().map(ToString::to_string).unwrap_or_default()),
        ("filter.reinject_listen", opt_addr(&filter.reinject_listen)),
        ("filter.pipe_timeout", duration(filter.pipe_timeout)),
        ("filter.domains", list(&filter.domains)),
        ("milter.servers", milters(&c.milter.servers)),
        ("milter.non_smtpd_milters", milters(&c.milter.non_smtpd_milters)),
        ("milter.default_action", c.milter.default_action.name().into()),
        ("milter.connect_timeout", duration(c.milter.connect_timeout)),
        ("milter.command_timeout", duration(c.milter.command_timeout)),
        ("milter.content_timeout", duration(c.milter.content_timeout)),
        ("dkim.keys", dkim_keys(&c.dkim.keys)),
        ("dkim.headers", list(&c.dkim.headers)),
        ("metrics.listen", opt_addr(&c.metrics.listen)),
        ("policy.services", c.policy.services.iter().map(ToString::to_string).collect::<Vec<_>>().join(", ")),
        ("policy.stages", c.policy.stages.iter().map(|s| s.name().to_ascii_lowercase()).collect::<Vec<_>>().join(", ")),
        ("policy.timeout", duration(c.policy.timeout)),
        ("policy.max_idle", duration(c.policy.max_idle)),
        ("policy.default_action", c.policy.default_action.clone()),
        ("screen.dnsbl_sites", c.screen.dnsbl_sites.iter().map(ToString::to_string).collect::<Vec<_>>().join(", ")),
        ("screen.dnsbl_threshold", c.screen.dnsbl_threshold.to_string()),
        ("screen.dnsbl_timeout", duration(c.screen.dnsbl_timeout)),
        ("screen.pregreet", c.screen.pregreet.to_string()),
        ("screen.greet_wait", duration(c.screen.greet_wait)),
        ("screen.cache_ttl", duration(c.screen.cache_ttl)),
        ("verify.spf", c.verify.spf.to_string()),
        ("verify.dkim", c.verify.dkim.to_string()),
        ("verify.dmarc", c.verify.dmarc.to_string()),
        ("verify.arc", c.verify.arc.to_string()),
        ("verify.arc_trusted_sealers", list(&c.verify.arc_trusted_sealers)),
        ("verify.authserv_id", c.verify.authserv_id.clone()),
        ("verify.spf_fail_action", c.verify.spf_fail_action.name().into()),
        ("verify.dmarc_reject_action", c.verify.dmarc_reject_action.name().into()),
        ("log.to", log.to.as_ref().map(log_destination).unwrap_or_default()),
        ("log.format", if log.format == crate::logging::Format::Json { "json" } else { "text" }.into()),
        ("log.syslog_name", log.syslog_name.clone()),
        ("log.syslog_facility", facility_name(log.facility).into()),
        ("log.syslog_format", if log.rfc5424 { "rfc5424" } else { "rfc3164" }.into()),
        ("log.syslog_socket", log.syslog_socket.display().to_string()),
        ("log.journald_socket", log.journald_socket.display().to_string()),
        ("srs.domain", c.srs.as_ref().map(|s| s.domain.clone()).unwrap_or_default()),
        ("srs.secret", c.srs.as_ref().map(|s| s.secret.display().to_string()).unwrap_or_default()),
        ("srs.exclude_domains", c.srs.as_ref().map(|s| list(&s.exclude_domains)).unwrap_or_default()),
        ("srs.max_age", duration(c.srs.as_ref().map_or(Duration::from_secs(21 * 86400), |s| s.max_age))),
    ];
    let order = crate::config::keys();
    let mut rows: Vec<(String, String)> = rows.into_iter().map(|(k, v)| (k.to_string(), v)).collect();
    rows.sort_by_key(|(k, _)| order.iter().position(|o| o == k).unwrap_or(usize::MAX));
    rows
}

fn tls_policy(policy: TlsPolicy) -> &'static str {
    policy.name()
}

fn bare_newline(mode: BareNewline) -> &'static str {
    match mode {
        BareNewline::Normalize => "normalize",
        BareNewline::Reject => "reject",
    }
}

/// `name: pattern pattern, name: pattern`.
fn cert_senders(map: &[(String, Vec<String>)]) -> String {
    map.iter().map(|(name, senders)| format!("{name}: {}", senders.join(" "))).collect::<Vec<_>>().join(", ")
}

/// Each key as its DNS name and file: `s1._domainkey.example.org:/etc/key.pem`,
/// then `:algorithm` when the file sets one.
fn dkim_keys(keys: &[crate::config::DkimKeyConfig]) -> String {
    use crate::config::DkimAlgorithm;
    let one = |k: &crate::config::DkimKeyConfig| {
        let mut s = format!("{}._domainkey.{}:{}", k.selector, k.domain, k.key.display());
        match k.algorithm {
            Some(DkimAlgorithm::RsaSha256) => s.push_str(":rsa-sha256"),
            Some(DkimAlgorithm::Ed25519Sha256) => s.push_str(":ed25519-sha256"),
            None => {}
        }
        s
    };
    keys.iter().map(one).collect::<Vec<_>>().join(", ")
}

fn log_destination(to: &crate::logging::Destination) -> String {
    use crate::logging::Destination;
    match to {
        Destination::Stderr => "stderr".into(),
        Destination::Syslog => "syslog".into(),
        Destination::Journald => "journald".into(),
        Destination::File(p) => format!("file:{}", p.display()),
    }
}

fn facility_name(facility: crate::logging::Facility) -> &'static str {
    const NAMES: [&str; 11] =
        ["mail", "daemon", "user", "local0", "local1", "local2", "local3", "local4", "local5", "local6", "local7"];
    use crate::logging::Facility;
    NAMES.into_iter().find(|n| Facility::from_name(n) == Some(facility)).unwrap_or("mail")
}

/// The free-space threshold in force: the configured one, or the default
/// worked out for the spool's filesystem (the nearest existing directory
/// when the spool is not made yet) as the daemon works it out.
fn min_free(configured: Option<u64>, spool: &Path) -> u64 {
    if let Some(n) = configured {
        return n;
    }
    let total = spool
        .ancestors()
        .find_map(|dir| rustix::fs::statvfs(dir).ok())
        .map(|st| st.f_blocks.saturating_mul(st.f_frsize));
    match total {
        Some(total) => crate::spool::space::threshold(None, total),
        None => crate::spool::space::DEFAULT_MIN_FREE,
    }
}

/// `300s` as `5m`, `86400s` as `1d`: the largest exact unit.
pub(crate) fn duration(d: Duration) -> String {
    let s = d.as_secs();
    if d.subsec_millis() != 0 {
        return format!("{}ms", d.as_millis());
    }
    match s {
        0 => "0s".into(),
        s if s % 86400 == 0 => format!("{}d", s / 86400),
        s if s % 3600 == 0 => format!("{}h", s / 3600),
        s if s % 60 == 0 => format!("{}m", s / 60),
        s => format!("{s}s"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Config {
        Config::parse(text, Path::new("/x.toml")).unwrap()
    }

    #[test]
    fn values_and_non_defaults() {
        let c = parse(
            "role = \"hub\"\nhostname = \"mx\"\n[smtp]\nmax_message_size = \"10M\"\n[queue]\nretry_min = \"90s\"\n",
        );
        let s = settings(&c);
        let get = |k: &str| s.iter().find(|(key, _)| key == k).map(|(_, v)| v.as_str());
        assert_eq!(get("smtp.max_message_size"), Some("10485760"));
        assert_eq!(get("queue.retry_min"), Some("90s"));
        assert_eq!(get("queue.max_lifetime"), Some("5d"));
        assert_eq!(get("smtp.listen"), Some("0.0.0.0:25"));
        assert_eq!(get("relay.auth_plaintext"), Some("false"));
        let shown = show(&c, false, true, &[]).unwrap();
        let changed: Vec<&str> = shown.iter().map(|(k, _)| k.as_str()).collect();
        assert_eq!(changed, ["role", "hostname", "smtp.max_message_size", "queue.retry_min"]);
        for (_, key) in POSTFIX_NAMES {
            assert!(get(key).is_some(), "{key}");
        }
    }

    #[test]
    fn every_key_has_a_row() {
        let rows = settings(&Config::builtin());
        let keys = crate::config::keys();
        let missing: Vec<&String> = keys.iter().filter(|k| !rows.iter().any(|(r, _)| r == *k)).collect();
        assert!(missing.is_empty(), "keys of the file that `postconf` does not show: {missing:?}");
        let extra: Vec<&String> = rows.iter().map(|(r, _)| r).filter(|r| !keys.contains(r)).collect();
        assert!(extra.is_empty(), "rows for keys the file does not have: {extra:?}");
    }

    #[test]
    fn postfix_names_in_postfix_syntax() {
        let c = parse("[tls]\nreceived_auth_user = true\n[access]\ntrusted_networks = [\"10.0.0.0/8\", \"::1\"]\n");
        let ask = |names: &[&str]| {
            let names: Vec<String> = names.iter().map(|n| n.to_string()).collect();
            show(&c, false, false, &names).unwrap_or_default()
        };
        let got = ask(&["smtpd_sasl_authenticated_header", "mynetworks", "mail_version", "smtpd_forbid_bare_newline"]);
        let expected = [
            ("smtpd_sasl_authenticated_header", "yes"),
            ("mynetworks", "10.0.0.0/8, ::1/128"),
            ("mail_version", env!("CARGO_PKG_VERSION")),
            ("smtpd_forbid_bare_newline", "normalize"),
        ];
        let got: Vec<(&str, &str)> = got.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
        assert_eq!(got, expected);
        let mut names: Vec<&str> = POSTFIX_NAMES.iter().map(|(p, _)| *p).collect();
        names.sort();
        names.dedup();
        assert_eq!(names.len(), POSTFIX_NAMES.len(), "a Postfix name listed twice");
    }
}
