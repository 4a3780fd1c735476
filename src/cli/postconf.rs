//! `postconf`: the effective configuration as `key = value` lines.
//!
//! Keys are the TOML dotted names (`smtp.max_message_size = 52428800`).
//! `postconf` prints every setting, `postconf -n` only those that differ
//! from the role's defaults, `postconf -d` the defaults, `postconf KEY...`
//! the named ones; `-h` prints values only, `-H` names only. The few
//! Postfix parameters that map obviously are accepted as names too and
//! printed under the name asked for (`postconf -h myhostname`):
//!
//! | Postfix | posthorn |
//! |---|---|
//! | myhostname | hostname |
//! | myorigin | myorigin |
//! | queue_directory | spool |
//! | message_size_limit | smtp.max_message_size |
//! | smtpd_recipient_limit | smtp.max_recipients |
//! | relayhost | relay.smarthosts |
//! | smtp_tls_security_level | relay.tls |
//! | smtp_connect_timeout | relay.connect_timeout |
//! | mynetworks | access.trusted_networks |
//! | relay_domains | access.relay_domains |
//! | mydestination | access.local_domains |
//! | minimal_backoff_time | queue.retry_min |
//! | maximal_backoff_time | queue.retry_max |
//! | maximal_queue_lifetime | queue.max_lifetime |
//! | delay_warning_time | queue.delay_warning |
//! | qmgr_message_active_limit | queue.active_limit |
//! | virtual_alias_maps | rewrite.virtual_alias_maps |
//! | virtual_alias_domains | rewrite.virtual_alias_domains |
//! | alias_maps | rewrite.alias_maps |
//! | sender_canonical_maps | rewrite.sender_canonical_maps |
//! | recipient_canonical_maps | rewrite.recipient_canonical_maps |
//!
//! Keys of sections that the typed configuration does not cover yet
//! (`[rewrite]`, `[deliver]`, `[tls]`, `[filter]`, ...) are printed as
//! written in the file. Lists print comma-separated, durations in their
//! largest exact unit (`5m`), sizes in bytes, as Postfix does.

use super::exit;
use crate::config::{Config, Role, TlsPolicy};
use std::path::Path;
use std::time::Duration;

const USAGE: &str =
    "usage: postconf [-c config] [-d (defaults)] [-n (non-defaults)] [-h (values only)] [-H (names only)] [name...]";

/// Postfix parameter names and the posthorn keys they stand for.
pub(crate) const POSTFIX_NAMES: [(&str, &str); 22] = [
    ("myhostname", "hostname"),
    ("myorigin", "myorigin"),
    ("queue_directory", "spool"),
    ("mail_owner", "user"),
    ("message_size_limit", "smtp.max_message_size"),
    ("smtpd_recipient_limit", "smtp.max_recipients"),
    ("relayhost", "relay.smarthosts"),
    ("smtp_tls_security_level", "relay.tls"),
    ("smtp_connect_timeout", "relay.connect_timeout"),
    ("mynetworks", "access.trusted_networks"),
    ("relay_domains", "access.relay_domains"),
    ("mydestination", "access.local_domains"),
    ("minimal_backoff_time", "queue.retry_min"),
    ("maximal_backoff_time", "queue.retry_max"),
    ("maximal_queue_lifetime", "queue.max_lifetime"),
    ("delay_warning_time", "queue.delay_warning"),
    ("qmgr_message_active_limit", "queue.active_limit"),
    ("virtual_alias_maps", "rewrite.virtual_alias_maps"),
    ("virtual_alias_domains", "rewrite.virtual_alias_domains"),
    ("alias_maps", "rewrite.alias_maps"),
    ("sender_canonical_maps", "rewrite.sender_canonical_maps"),
    ("recipient_canonical_maps", "rewrite.recipient_canonical_maps"),
];

pub(crate) fn main(args: &[String]) -> u8 {
    let (opts, names) = match super::getopt(args, "c:dhHnv") {
        Ok(parsed) => parsed,
        Err(e) => {
            eprintln!("postconf: {e}");
            eprintln!("postconf: fatal: {USAGE}");
            return exit::USAGE;
        }
    };
    let has = |c: char| opts.iter().any(|(o, _)| *o == c);
    let config_path = opts.iter().find(|(c, _)| *c == 'c').and_then(|(_, v)| v.as_deref()).map(super::config_arg);
    let config = match super::load_config(config_path.as_deref(), "postconf") {
        Ok(c) => c,
        Err(code) => return code,
    };
    let defaults = defaults(config.role, &config.hostname);
    let shown = if has('d') { &defaults } else { &config };
    let mut settings = settings(shown);
    if !has('d') {
        settings.extend(unmodelled(config.source.as_deref()));
    }
    if has('n') {
        let default_settings = self::settings(&defaults);
        settings.retain(|(k, v)| default_settings.iter().find(|(dk, _)| dk == k).is_none_or(|(_, dv)| dv != v));
    }
    let mut lines = Vec::new();
    let mut code = exit::OK;
    if names.is_empty() {
        lines = settings;
    } else {
        for name in &names {
            let key = POSTFIX_NAMES.iter().find(|(p, _)| p == name).map_or(name.as_str(), |(_, k)| k);
            match settings.iter().find(|(k, _)| k == key) {
                Some((_, v)) => lines.push((name.clone(), v.clone())),
                None if self::settings(&defaults).iter().any(|(k, _)| k == key) => {} // -n and at its default
                None => {
                    eprintln!("postconf: warning: {name}: unknown parameter");
                    code = 1;
                }
            }
        }
    }
    for (k, v) in lines {
        if has('h') {
            println!("{v}");
        } else if has('H') {
            println!("{k}");
        } else {
            println!("{k} = {v}");
        }
    }
    code
}

/// The role's defaults: a file holding only `role`.
/// The role's defaults for a host of this name (some defaults, like a
/// hub's local domains, derive from the hostname).
fn defaults(role: Role, hostname: &str) -> Config {
    let name = match role {
        Role::Hub => "hub",
        Role::Satellite => "satellite",
    };
    let text = format!("role = \"{name}\"\nhostname = {}\n", toml::Value::from(hostname));
    let mut c = Config::parse(&text, Path::new("(defaults)")).expect("role defaults parse");
    c.hostname = crate::config::system_hostname();
    c
}

/// Every typed setting, in the order of the configuration file.
pub(crate) fn settings(c: &Config) -> Vec<(String, String)> {
    let list = |v: Vec<String>| v.join(", ");
    let tls = match c.relay.tls {
        TlsPolicy::None => "none",
        TlsPolicy::May => "may",
        TlsPolicy::Encrypt => "encrypt",
        TlsPolicy::Verify => "verify",
    };
    let rows: Vec<(&str, String)> = vec![
        ("role", if c.role == Role::Hub { "hub" } else { "satellite" }.into()),
        ("hostname", c.hostname.clone()),
        ("myorigin", c.myorigin.clone()),
        ("spool", c.spool.display().to_string()),
        ("user", c.user.clone().unwrap_or_default()),
        ("smtp.listen", list(c.smtp.listen.iter().map(|a| a.to_string()).collect())),
        ("smtp.max_message_size", c.smtp.max_message_size.to_string()),
        ("smtp.max_recipients", c.smtp.max_recipients.to_string()),
        ("smtp.max_connections", c.smtp.max_connections.to_string()),
        ("smtp.max_line_length", c.smtp.max_line_length.to_string()),
        ("smtp.max_data_line_length", c.smtp.max_data_line_length.to_string()),
        ("smtp.command_timeout", duration(c.smtp.command_timeout)),
        ("smtp.data_timeout", duration(c.smtp.data_timeout)),
        ("smtp.max_errors", c.smtp.max_errors.to_string()),
        ("smtp.hopcount_limit", c.smtp.hopcount_limit.to_string()),
        ("access.trusted_networks", list(c.access.trusted_networks.iter().map(|n| n.to_string()).collect())),
        ("access.relay_domains", list(c.access.relay_domains.clone())),
        ("access.local_domains", list(c.access.local_domains.clone())),
        ("relay.smarthosts", list(c.relay.smarthosts.clone())),
        ("relay.tls", tls.into()),
        ("relay.connect_timeout", duration(c.relay.connect_timeout)),
        ("relay.max_connections", c.relay.max_connections.to_string()),
        ("relay.idle_timeout", duration(c.relay.idle_timeout)),
        ("queue.retry_min", duration(c.queue.retry_min)),
        ("queue.retry_max", duration(c.queue.retry_max)),
        ("queue.max_lifetime", duration(c.queue.max_lifetime)),
        ("queue.delay_warning", c.queue.delay_warning.map_or("0".into(), duration)),
        ("queue.active_limit", c.queue.active_limit.to_string()),
        ("queue.pickup_interval", duration(c.queue.pickup_interval)),
        ("rewrite.virtual_alias_maps", list(c.rewrite.virtual_alias_maps.clone())),
        ("rewrite.virtual_alias_domains", list(c.rewrite.virtual_alias_domains.clone())),
        ("rewrite.alias_maps", list(c.rewrite.alias_maps.clone())),
        ("rewrite.sender_canonical_maps", list(c.rewrite.sender_canonical_maps.clone())),
        ("rewrite.recipient_canonical_maps", list(c.rewrite.recipient_canonical_maps.clone())),
    ];
    rows.into_iter().map(|(k, v)| (k.to_string(), v)).collect()
}

/// Keys in the file that the typed configuration does not hold, as written.
fn unmodelled(source: Option<&Path>) -> Vec<(String, String)> {
    let Some(text) = source.and_then(|p| std::fs::read_to_string(p).ok()) else { return Vec::new() };
    let Ok(table) = text.parse::<toml::Table>() else { return Vec::new() };
    let known: Vec<String> = settings(&Config::builtin()).into_iter().map(|(k, _)| k).collect();
    let mut out = Vec::new();
    flatten("", &toml::Value::Table(table), &mut out);
    out.retain(|(k, _)| !known.contains(k));
    out
}

fn flatten(prefix: &str, value: &toml::Value, out: &mut Vec<(String, String)>) {
    match value {
        toml::Value::Table(t) => {
            for (k, v) in t {
                let key = if prefix.is_empty() { k.clone() } else { format!("{prefix}.{k}") };
                flatten(&key, v, out);
            }
        }
        toml::Value::Array(items) => {
            let parts: Vec<String> = items.iter().map(scalar).collect();
            out.push((prefix.to_string(), parts.join(", ")));
        }
        other => out.push((prefix.to_string(), scalar(other))),
    }
}

fn scalar(v: &toml::Value) -> String {
    match v {
        toml::Value::String(s) => s.clone(),
        other => other.to_string(),
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

    #[test]
    fn values_and_non_defaults() {
        let c = Config::parse(
            "role = \"hub\"\nhostname = \"mx\"\n[smtp]\nmax_message_size = \"10M\"\n[queue]\nretry_min = \"90s\"\n",
            Path::new("/x.toml"),
        )
        .unwrap();
        let s = settings(&c);
        let get = |k: &str| s.iter().find(|(key, _)| key == k).map(|(_, v)| v.as_str());
        assert_eq!(get("smtp.max_message_size"), Some("10485760"));
        assert_eq!(get("queue.retry_min"), Some("90s"));
        assert_eq!(get("queue.max_lifetime"), Some("5d"));
        assert_eq!(get("smtp.listen"), Some("0.0.0.0:25"));
        let d = settings(&defaults(Role::Hub, &c.hostname));
        let changed: Vec<&str> = s
            .iter()
            .filter(|(k, v)| d.iter().find(|(dk, _)| dk == k).is_none_or(|(_, dv)| dv != v))
            .map(|(k, _)| k.as_str())
            .collect();
        assert_eq!(changed, ["hostname", "smtp.max_message_size", "queue.retry_min"]);
        for (_, key) in POSTFIX_NAMES {
            assert!(get(key).is_some(), "{key}");
        }
    }
}
