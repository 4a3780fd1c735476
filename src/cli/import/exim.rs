//! `posthorn import exim [DIR]`: Debian's `update-exim4.conf.conf` (the
//! answers to exim4-config's debconf questions, `dc_key='value'` lines)
//! and the mail name beside it (`DIR/../mailname`, that is /etc/mailname
//! for /etc/exim4) to `posthorn.toml`.
//!
//! The configuration types map to roles: `satellite` (everything to the
//! smarthost, no local mail) is a posthorn satellite; `smarthost` (local
//! mail delivered here, the rest to the smarthost) and `internet` (the rest
//! by MX) are hubs; `local` is a hub on loopback, reported, since posthorn
//! has no mode that refuses non-local mail. Exim's smarthost router looks
//! the hosts up `byname`, never by MX, so they are written `[host]:port`.

use super::{Imported, Output};
use std::path::Path;

/// One `dc_key='value'` line.
#[derive(Debug, PartialEq)]
struct Setting {
    name: String,
    value: String,
    line: usize,
}

/// Shell-style `name='value'` / `name="value"` / `name=value` lines;
/// comments and blank lines skipped.
fn parse(text: &str) -> Result<Vec<Setting>, String> {
    let mut out: Vec<Setting> = Vec::new();
    for (n, raw) in text.lines().enumerate() {
        let line = raw.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let Some((name, value)) = line.split_once('=') else {
            return Err(format!("update-exim4.conf.conf:{}: `{line}` is not name='value'", n + 1));
        };
        let value = value.trim();
        let unquoted =
            ['\'', '"'].iter().find_map(|q| value.strip_prefix(*q).and_then(|v| v.strip_suffix(*q))).unwrap_or(value);
        out.retain(|s| s.name != name.trim());
        out.push(Setting { name: name.trim().into(), value: unquoted.trim().into(), line: n + 1 });
    }
    Ok(out)
}

/// An Exim list: `:`-separated, or `;`-separated when it contains `;` or
/// starts with `<;` (the form IPv6 addresses need). `::` inside an item is
/// Exim's escaped colon (`host::port`).
fn list(value: &str) -> Vec<String> {
    let value = value.trim();
    if let Some(rest) = value.strip_prefix("<;") {
        return rest.split(';').map(str::trim).filter(|s| !s.is_empty()).map(String::from).collect();
    }
    if value.contains(';') {
        return value.split(';').map(str::trim).filter(|s| !s.is_empty()).map(String::from).collect();
    }
    let escaped = value.replace("::", "\u{0}");
    escaped.split(':').map(|s| s.trim().replace('\u{0}', "::")).filter(|s| !s.is_empty()).collect()
}

/// `host`, `host::port`, `[v6]::port` or `v6` as posthorn's `[host]:port`.
fn smarthost(item: &str) -> Result<String, String> {
    let (host, port) = match item.rsplit_once("::") {
        Some((h, p)) if !p.is_empty() && p.chars().all(|c| c.is_ascii_digit()) => (h, p),
        _ => (item, "25"),
    };
    let host = host.trim_start_matches('[').trim_end_matches(']');
    if host.is_empty() || host.contains(char::is_whitespace) {
        return Err(format!("`{item}` is not a host or host::port"));
    }
    Ok(format!("[{host}]:{port}"))
}

/// Reads `DIR/update-exim4.conf.conf` and `DIR/../mailname`.
pub(super) fn import(dir: &Path) -> Result<Imported, String> {
    let path = dir.join("update-exim4.conf.conf");
    let settings = parse(&super::read(&path)?).map_err(|e| format!("{}/{e}", dir.display()))?;
    let file = "update-exim4.conf.conf";
    let get = |name: &str| settings.iter().find(|s| s.name == name);
    let value = |name: &str| get(name).map(|s| s.value.clone()).unwrap_or_default();
    let origin = |name: &str| match get(name) {
        Some(s) => format!("{file}:{}: {name}='{}'", s.line, s.value),
        None => format!("{file}: {name} not set"),
    };
    let at = |name: &str| match get(name) {
        Some(s) => format!("{file}:{}: {name}", s.line),
        None => format!("{file}: {name}"),
    };
    let mut out = Output::default();
    let mut notes = Vec::new();
    out.say(format!("posthorn.toml imported from Exim's {}", path.display()));
    out.say("by `posthorn import exim`; each key names the line it came from.");

    let kind = value("dc_eximconfig_configtype");
    let (role, why) = match kind.as_str() {
        "satellite" => ("satellite", "mail is sent by smarthost and none is delivered here"),
        "smarthost" => ("hub", "local mail is delivered here, the rest sent by smarthost"),
        "internet" => ("hub", "local mail is delivered here, the rest sent by MX"),
        "local" => ("hub", "local delivery only"),
        "" => return Err(format!("{}: dc_eximconfig_configtype is not set", path.display())),
        other => {
            return Err(format!(
                "{}: dc_eximconfig_configtype: `{other}` is not satellite, smarthost, internet or local",
                at("dc_eximconfig_configtype")
            ));
        }
    };
    out.say(format!("Role: {role}: configuration type {kind}: {why}."));
    out.set("role", role, origin("dc_eximconfig_configtype"));

    let hostname = crate::config::system_hostname();
    out.set("hostname", hostname.as_str(), "the system's host name (Exim's primary_hostname)");
    let mailname_path = dir.parent().unwrap_or(Path::new("/")).join("mailname");
    let mut mailname = None;
    match std::fs::read_to_string(&mailname_path) {
        Ok(text) => {
            let name = text.lines().next().unwrap_or("").trim().to_string();
            if !name.is_empty() {
                mailname = Some(name.to_ascii_lowercase());
                out.set(
                    "myorigin",
                    name.as_str(),
                    format!("{}:1: {name} (Exim's qualify_domain)", mailname_path.display()),
                );
            }
        }
        Err(e) => not_carried(
            &mut out,
            &mut notes,
            mailname_path.display().to_string(),
            &format!("cannot read it ({}); myorigin stays the hostname", crate::message::outcome::strerror(&e)),
        ),
    }

    // Where mail goes out.
    let hosts = list(&value("dc_smarthost"));
    let mut smarthosts = Vec::new();
    for item in &hosts {
        match smarthost(item) {
            Ok(h) => smarthosts.push(h),
            Err(e) => not_carried(&mut out, &mut notes, at("dc_smarthost"), &e),
        }
    }
    match kind.as_str() {
        "satellite" | "smarthost" if smarthosts.is_empty() => {
            return Err(format!("{}: type {kind} needs dc_smarthost", at("dc_smarthost")));
        }
        "satellite" | "smarthost" => out.extend("relay.smarthosts", &smarthosts, origin("dc_smarthost")),
        _ if !smarthosts.is_empty() => not_carried(
            &mut out,
            &mut notes,
            at("dc_smarthost"),
            "configuration type is not satellite or smarthost, so Exim did not use it",
        ),
        _ => {}
    }
    if kind == "local" {
        not_carried(
            &mut out,
            &mut notes,
            at("dc_eximconfig_configtype"),
            "local: posthorn has no local-only mode; mail for other domains is delivered by MX instead of refused",
        );
    }

    // What is delivered here: Exim's local_domains = @ : localhost : dc_other_hostnames.
    let others = list(&value("dc_other_hostnames"));
    if role == "hub" {
        let mut local = vec![hostname.to_ascii_lowercase(), "localhost".to_string()];
        for d in others.iter().map(|d| d.to_ascii_lowercase()) {
            if !local.contains(&d) {
                local.push(d);
            }
        }
        out.extend(
            "access.local_domains",
            &local,
            format!("the hostname and localhost (Exim's @ and localhost), and {}", origin("dc_other_hostnames")),
        );
        let note = format!(
            "{}: carried over with a difference: local mail is delivered to Maildirs under deliver.maildir_root (/var/mail/{{domain}}/{{user}}); Exim's dc_localdelivery={} is not",
            at("dc_other_hostnames"),
            value("dc_localdelivery")
        );
        out.say(format!("Note: {note}"));
        notes.push(note);
    } else if !others.is_empty() {
        let note = format!(
            "{}: carried over with a difference: a posthorn satellite sends mail for {} to the smarthost too",
            at("dc_other_hostnames"),
            others.join(", ")
        );
        out.say(format!("Note: {note}"));
        notes.push(note);
    }

    // Who may relay, and for which domains.
    let nets = list(&value("dc_relay_nets"));
    if !nets.is_empty() {
        let mut all = vec!["127.0.0.0/8".to_string(), "::1".to_string()];
        for net in nets {
            let plain = net.trim_start_matches('[').replace(']', "");
            if plain.parse::<ipnet::IpNet>().is_ok() || plain.parse::<std::net::IpAddr>().is_ok() {
                all.push(plain);
            } else {
                not_carried(
                    &mut out,
                    &mut notes,
                    at("dc_relay_nets"),
                    &format!("{net}: posthorn takes IP networks here, not host names"),
                );
            }
        }
        out.extend(
            "access.trusted_networks",
            &all,
            format!("loopback, as Exim's relay_from_hosts has it, and {}", origin("dc_relay_nets")),
        );
    }
    let relay_domains: Vec<String> = list(&value("dc_relay_domains")).iter().map(|d| d.to_ascii_lowercase()).collect();
    if !relay_domains.is_empty() {
        out.extend("access.relay_domains", &relay_domains, origin("dc_relay_domains"));
    }

    // dc_readhost: the domain local senders get in outgoing mail
    // (Debian's rewrite `*@+local_domains $1@DCreadhost`).
    // Debian's rules rewrite `*@+local_domains` and `*@mailname`.
    let readhost = value("dc_readhost");
    if !readhost.is_empty() {
        out.set("rewrite.masquerade_as", readhost.as_str(), origin("dc_readhost"));
        let mut own = vec![hostname.to_ascii_lowercase(), "localhost".to_string()];
        own.extend(others.iter().map(|d| d.to_ascii_lowercase()));
        own.extend(mailname.iter().cloned());
        own.dedup();
        let from = format!(
            "the hostname, localhost, dc_other_hostnames and the mail name, as Debian's rewrite rules for {}",
            at("dc_readhost")
        );
        out.extend("rewrite.masquerade_domains", &own, from);
    }
    if value("dc_hide_mailname") == "true" && readhost.is_empty() {
        not_carried(
            &mut out,
            &mut notes,
            at("dc_hide_mailname"),
            "without dc_readhost there is no name to hide it behind",
        );
    }

    // Where it listens.
    let ifaces = list(&value("dc_local_interfaces"));
    let mut listen = Vec::new();
    for iface in &ifaces {
        // Exim writes `addr.port` for a port other than 25.
        let (addr, port) = match iface.rsplit_once('.') {
            Some((a, p)) if a.parse::<std::net::IpAddr>().is_ok() && p.parse::<u16>().is_ok() => {
                (a.to_string(), p.parse().unwrap_or(25))
            }
            _ => (iface.trim_start_matches('[').trim_end_matches(']').to_string(), 25),
        };
        match addr.parse::<std::net::IpAddr>() {
            Ok(ip) => listen.push(std::net::SocketAddr::new(ip, port).to_string()),
            Err(_) => {
                not_carried(&mut out, &mut notes, at("dc_local_interfaces"), &format!("{iface}: not an IP address"))
            }
        }
    }
    if get("dc_local_interfaces").is_some() {
        let listen = if ifaces.is_empty() { vec!["0.0.0.0:25".to_string()] } else { listen };
        out.extend("smtp.listen", &listen, origin("dc_local_interfaces"));
    }

    // The rest: read, and either the same in posthorn or reported.
    for s in &settings {
        let same = matches!(
            (s.name.as_str(), s.value.as_str()),
            (
                "dc_eximconfig_configtype"
                    | "dc_smarthost"
                    | "dc_other_hostnames"
                    | "dc_relay_nets"
                    | "dc_relay_domains"
                    | "dc_readhost"
                    | "dc_hide_mailname"
                    | "dc_local_interfaces"
                    | "dc_localdelivery",
                _,
            ) | (_, "")
                | ("dc_minimaldns", "false")
                | ("dc_use_split_config", _)
                | ("CFILEMODE", _)
                | ("dc_mailname_in_oh", "true")
        );
        if !same {
            not_carried(
                &mut out,
                &mut notes,
                format!("{file}:{}: {}", s.line, s.name),
                "posthorn has no equivalent setting",
            );
        }
    }
    // Smarthost credentials live in passwd.client.
    let passwd = dir.join("passwd.client");
    if let Ok(text) = std::fs::read_to_string(&passwd) {
        for (n, line) in text.lines().enumerate() {
            let line = line.trim();
            if !line.is_empty() && !line.starts_with('#') {
                not_carried(
                    &mut out,
                    &mut notes,
                    format!("{}:{}", passwd.display(), n + 1),
                    "write the smarthost's user:password into a file of its own and set relay.auth_file",
                );
            }
        }
    }
    Ok(Imported { output: out, notes })
}

/// Reports a setting that is not carried, on stderr and in the file.
fn not_carried(out: &mut Output, notes: &mut Vec<String>, at: String, why: &str) {
    let note = format!("{at}: not carried over: {why}");
    out.say(format!("NOT carried over: {note}"));
    notes.push(note);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exim_lists_and_smarthosts() {
        assert_eq!(list("a.example : b.example::587"), ["a.example", "b.example::587"]);
        assert_eq!(list("<; 127.0.0.1 ; ::1"), ["127.0.0.1", "::1"]);
        assert_eq!(list("127.0.0.1 ; ::1"), ["127.0.0.1", "::1"]);
        assert_eq!(list(""), Vec::<String>::new());
        let cases = [
            ("mail.example.org", "[mail.example.org]:25"),
            ("mail.example.org::587", "[mail.example.org]:587"),
            ("[2001:db8::1]::2525", "[2001:db8::1]:2525"),
            ("192.0.2.1", "[192.0.2.1]:25"),
        ];
        for (item, expected) in cases {
            assert_eq!(smarthost(item).as_deref(), Ok(expected), "{item}");
        }
    }

    #[test]
    fn settings_are_shell_assignments() {
        let s = parse("# x\ndc_smarthost='a::587'\ndc_readhost=\"example.org\"\nCFILEMODE=644\n").unwrap();
        assert_eq!(s[0], Setting { name: "dc_smarthost".into(), value: "a::587".into(), line: 2 });
        assert_eq!((s[1].value.as_str(), s[2].value.as_str()), ("example.org", "644"));
        assert!(parse("nonsense\n").unwrap_err().contains(":1:"));
    }
}
