//! `posthorn import postfix [DIR]`: `main.cf` and `master.cf` to
//! `posthorn.toml`.
//!
//! `main.cf` is read as Postfix reads it: a logical line starts in the
//! first column, lines starting with whitespace continue it, `#` lines are
//! comments, the last setting of a name wins, and `$name`, `${name}`,
//! `$(name)`, `${name?text}` and `${name:text}` expand with postconf's
//! defaults for the names the file does not set (`myhostname` from the
//! host, `mydomain`, `myorigin = $myhostname`, `mydestination =
//! $myhostname, localhost.$mydomain, localhost`).
//!
//! Parameters with the same meaning in both are carried through
//! `postconf`'s own table (`cli::postconf::POSTFIX_NAMES`); the rest is
//! handled by name below, or reported. `master.cf` gives the listeners
//! (`smtp`, `submission`, `submissions`/`smtps`), the content filter's
//! transport and its reinjection service (the `inet ... smtpd` service
//! with `-o content_filter=`).

use super::{Imported, Output};
use crate::cli::postconf::POSTFIX_NAMES;
use std::path::{Path, PathBuf};

/// One `name = value` of main.cf, as written, with its first line.
#[derive(Clone, Debug, PartialEq)]
struct Param {
    name: String,
    value: String,
    line: usize,
}

/// One master.cf service line (with its continuation lines).
#[derive(Clone, Debug, PartialEq)]
struct Service {
    name: String,
    kind: String,
    command: String,
    /// Command arguments other than `-o` overrides.
    args: Vec<String>,
    /// `-o name=value` overrides, in order.
    overrides: Vec<(String, String)>,
    line: usize,
}

/// Postfix's logical lines: text from the first column, joined with the
/// following lines that start with whitespace; comments and blank lines
/// dropped. Yields (first line number, joined text).
fn logical_lines(text: &str) -> Vec<(usize, String)> {
    let mut out: Vec<(usize, String)> = Vec::new();
    for (n, raw) in text.lines().enumerate() {
        let trimmed = raw.trim();
        if trimmed.is_empty() || trimmed.starts_with('#') {
            continue;
        }
        if raw.starts_with(char::is_whitespace)
            && let Some((_, last)) = out.last_mut()
        {
            last.push(' ');
            last.push_str(trimmed);
            continue;
        }
        out.push((n + 1, trimmed.to_string()));
    }
    out
}

/// main.cf's parameters; the last setting of a name replaces earlier ones.
fn parse_main(text: &str) -> Result<Vec<Param>, String> {
    let mut params: Vec<Param> = Vec::new();
    for (line, text) in logical_lines(text) {
        let Some((name, value)) = text.split_once('=') else {
            return Err(format!("main.cf:{line}: `{text}` is not `name = value`"));
        };
        let param = Param { name: name.trim().to_string(), value: value.trim().to_string(), line };
        params.retain(|p| p.name != param.name);
        params.push(param);
    }
    Ok(params)
}

/// master.cf's services: `name type private unpriv chroot wakeup maxproc
/// command args...`.
fn parse_master(text: &str) -> Result<Vec<Service>, String> {
    let mut services = Vec::new();
    for (line, text) in logical_lines(text) {
        let fields: Vec<&str> = text.split_whitespace().collect();
        if fields.len() < 8 {
            return Err(format!("master.cf:{line}: `{text}` has fewer than 8 fields"));
        }
        let (mut args, mut overrides) = (Vec::new(), Vec::new());
        let mut rest = fields[8..].iter();
        while let Some(arg) = rest.next() {
            let setting = match *arg {
                "-o" => rest.next().map(|s| s.to_string()),
                a if a.starts_with("-o") && a.contains('=') => Some(a[2..].to_string()),
                _ => None,
            };
            match setting.as_deref().and_then(|s| s.split_once('=')) {
                Some((k, v)) => overrides.push((k.trim().to_string(), v.trim().to_string())),
                None => args.push(arg.to_string()),
            }
        }
        services.push(Service {
            name: fields[0].into(),
            kind: fields[1].into(),
            command: fields[7].into(),
            args,
            overrides,
            line,
        });
    }
    Ok(services)
}

/// The settings of main.cf with postconf's defaults, expanded on demand.
struct MainCf {
    params: Vec<Param>,
    dir: PathBuf,
}

impl MainCf {
    fn raw(&self, name: &str) -> Option<&Param> {
        self.params.iter().find(|p| p.name == name)
    }

    /// The value Postfix uses when main.cf does not set `name`.
    fn default(&self, name: &str) -> String {
        match name {
            "myhostname" => crate::config::system_hostname(),
            "mydomain" => {
                let host = self.value("myhostname");
                host.split_once('.').map(|(_, d)| d.to_string()).unwrap_or_else(|| "localdomain".into())
            }
            "myorigin" => "$myhostname".into(),
            "mydestination" => "$myhostname, localhost.$mydomain, localhost".into(),
            "relay_domains" if self.compat_level() < 2 => "$mydestination".into(),
            "virtual_alias_domains" => "$virtual_alias_maps".into(),
            "inet_interfaces" | "inet_protocols" => "all".into(),
            "config_directory" => self.dir.display().to_string(),
            "queue_directory" => "/var/spool/postfix".into(),
            "data_directory" => "/var/lib/postfix".into(),
            "mail_name" => "Postfix".into(),
            _ => String::new(),
        }
    }

    fn compat_level(&self) -> u32 {
        let level = self.raw("compatibility_level").map(|p| p.value.as_str()).unwrap_or("0");
        level.split('.').next().and_then(|n| n.parse().ok()).unwrap_or(0)
    }

    /// `name`'s value, set or default, with every `$name` expanded.
    fn value(&self, name: &str) -> String {
        self.expand_name(name, 0)
    }

    fn expand_name(&self, name: &str, depth: usize) -> String {
        let raw = self.raw(name).map(|p| p.value.clone()).unwrap_or_else(|| self.default(name));
        self.expand(&raw, depth + 1)
    }

    /// Expands `$name`, `${name}`, `$(name)`, `${name?text}` (text when
    /// name is not empty), `${name:text}` (text when it is) and `$$`.
    fn expand(&self, text: &str, depth: usize) -> String {
        if depth > 20 {
            return text.to_string(); // a loop; Postfix stops too
        }
        let mut out = String::new();
        let mut rest = text;
        while let Some(at) = rest.find('$') {
            out.push_str(&rest[..at]);
            let after = &rest[at + 1..];
            let (inner, tail) = match after.chars().next() {
                Some('$') => {
                    out.push('$');
                    rest = &after[1..];
                    continue;
                }
                Some(open @ ('{' | '(')) => {
                    let close = if open == '{' { '}' } else { ')' };
                    match after.find(close) {
                        Some(end) => (&after[1..end], &after[end + 1..]),
                        None => (&after[1..], ""),
                    }
                }
                _ => {
                    let end = after.find(|c: char| !(c.is_ascii_alphanumeric() || c == '_')).unwrap_or(after.len());
                    (&after[..end], &after[end..])
                }
            };
            let value = match inner.find(['?', ':']) {
                Some(i) => {
                    let set = !self.expand_name(&inner[..i], depth).is_empty();
                    let wanted = if inner.as_bytes()[i] == b'?' { set } else { !set };
                    if wanted { self.expand(&inner[i + 1..], depth + 1) } else { String::new() }
                }
                None => self.expand_name(inner, depth),
            };
            out.push_str(&value);
            rest = tail;
        }
        out.push_str(rest);
        out
    }

    /// Where `name` came from, for comments and notes.
    fn origin(&self, name: &str) -> String {
        match self.raw(name) {
            Some(p) => format!("main.cf:{}: {name} = {}", p.line, p.value),
            None => format!("main.cf: {name} not set; Postfix's default {}", self.default(name)),
        }
    }

    fn at(&self, name: &str) -> String {
        match self.raw(name) {
            Some(p) => format!("main.cf:{}: {name}", p.line),
            None => format!("main.cf: {name}"),
        }
    }
}

/// Postfix's list syntax: items separated by commas and/or whitespace.
fn items(value: &str) -> Vec<String> {
    value.split([',', ' ', '\t']).filter(|s| !s.is_empty()).map(String::from).collect()
}

/// Collects what an import says: the output, and the notes for stderr.
struct Importer {
    main: MainCf,
    services: Vec<Service>,
    out: Output,
    notes: Vec<String>,
    /// Settings read that need nothing in posthorn, listed in the output.
    same: Vec<String>,
    handled: Vec<String>,
    /// The master.cf service the content filter's mail goes through.
    filter_service: Option<String>,
}

impl Importer {
    /// The domain names of list parameter `name`, lowercased, once each;
    /// tables and files in it are reported, not carried.
    fn domain_list(&mut self, name: &str) -> Vec<String> {
        let mut domains = Vec::new();
        for item in items(&self.main.value(name)) {
            if item.contains(':') || item.starts_with('/') {
                let at = self.main.at(name);
                self.not_carried(at, format!("{item}: posthorn takes domain names here, not tables or files"));
            } else if !domains.contains(&item.to_ascii_lowercase()) {
                domains.push(item.to_ascii_lowercase());
            }
        }
        domains
    }

    fn not_carried(&mut self, at: String, why: impl std::fmt::Display) {
        let note = format!("{at}: not carried over: {why}");
        self.out.say(format!("NOT carried over: {note}"));
        self.notes.push(note);
    }

    /// A setting carried with a changed meaning: written, and said.
    fn changed(&mut self, at: String, why: impl std::fmt::Display) {
        let note = format!("{at}: carried over with a difference: {why}");
        self.out.say(format!("Note: {note}"));
        self.notes.push(note);
    }

    fn same(&mut self, name: &str, why: &str) {
        if let Some(p) = self.main.raw(name) {
            self.same.push(format!("main.cf:{}: {name} = {} ({why})", p.line, p.value));
        }
    }

    fn handle(&mut self, name: &str) {
        self.handled.push(name.to_string());
    }
}

pub(super) fn import(dir: &Path) -> Result<Imported, String> {
    let main_path = dir.join("main.cf");
    let params = parse_main(&super::read(&main_path)?).map_err(|e| format!("{}/{e}", dir.display()))?;
    let master_path = dir.join("master.cf");
    let services = match master_path.exists() {
        true => parse_master(&super::read(&master_path)?).map_err(|e| format!("{}/{e}", dir.display()))?,
        false => Vec::new(),
    };
    let main = MainCf { params, dir: dir.to_path_buf() };
    let mut im = Importer {
        main,
        services,
        out: Output::default(),
        notes: Vec::new(),
        same: Vec::new(),
        handled: Vec::new(),
        filter_service: None,
    };
    im.out.say(format!("posthorn.toml imported from Postfix's {} and {}", main_path.display(), master_path.display()));
    im.out.say("by `posthorn import postfix`; each key names the line it came from.");
    let role = role(&mut im);
    names(&mut im, role);
    relay(&mut im);
    tables(&mut im);
    server_tls(&mut im);
    relay_tls(&mut im);
    filter(&mut im);
    listeners(&mut im);
    generic(&mut im);
    if !im.same.is_empty() {
        im.out.say("Read, and the same in posthorn (nothing to write):");
        for line in std::mem::take(&mut im.same) {
            im.out.say(format!("  {line}"));
        }
    }
    Ok(Imported { output: im.out, notes: im.notes })
}

/// Whether `domain` is one of this host's own names, which a Postfix
/// satellite keeps in `mydestination` (Debian's "Satellite system").
fn is_own_name(main: &MainCf, domain: &str) -> bool {
    let host = main.value("myhostname").to_ascii_lowercase();
    let system = crate::config::system_hostname().to_ascii_lowercase();
    let short = |h: &str| h.split('.').next().unwrap_or("").to_string();
    domain == "localhost"
        || domain.starts_with("localhost.")
        || [&host, &system].iter().any(|h| domain == h.as_str() || domain == short(h))
}

/// `role`: a satellite when a relayhost is set and mydestination holds
/// only the host's own names; a hub otherwise. Said at the top, with why.
fn role(im: &mut Importer) -> crate::config::Role {
    use crate::config::Role;
    let relayhost = im.main.value("relayhost");
    let dest: Vec<String> = items(&im.main.value("mydestination")).iter().map(|d| d.to_ascii_lowercase()).collect();
    let foreign: Vec<&String> = dest.iter().filter(|d| !is_own_name(&im.main, d)).collect();
    let (role, why) = if relayhost.is_empty() {
        (Role::Hub, "no relayhost is set, so this Postfix delivered mail itself".to_string())
    } else if !foreign.is_empty() {
        let list = foreign.iter().map(|d| d.as_str()).collect::<Vec<_>>().join(", ");
        (Role::Hub, format!("relayhost is {relayhost} but mydestination also holds {list}, mail this host receives"))
    } else {
        (Role::Satellite, format!("relayhost is {relayhost} and mydestination holds only this host's own names"))
    };
    let name = if role == Role::Hub { "hub" } else { "satellite" };
    im.out.say(format!("Role: {name}: {why}."));
    im.out.say("");
    im.out.set("role", name, format!("{name}: {why}"));
    role
}

/// myhostname, myorigin, mydomain, mydestination.
fn names(im: &mut Importer, role: crate::config::Role) {
    let host = im.main.value("myhostname");
    im.out.set("hostname", host.as_str(), im.main.origin("myhostname"));
    let mut origin = im.main.value("myorigin");
    // Debian's `myorigin = /etc/mailname`: the file's first line.
    if origin.starts_with('/') {
        match std::fs::read_to_string(&origin) {
            Ok(text) => origin = text.lines().next().unwrap_or("").trim().to_string(),
            Err(e) => {
                let why = format!("cannot read {origin}: {}", crate::message::outcome::strerror(&e));
                im.not_carried(im.main.at("myorigin"), why);
                origin.clear();
            }
        }
    }
    if !origin.is_empty() {
        im.out.set("myorigin", origin.as_str(), im.main.origin("myorigin"));
    }
    im.same("mydomain", "used to expand the settings above");
    let local = im.domain_list("mydestination");
    if role == crate::config::Role::Satellite {
        im.changed(
            im.main.at("mydestination"),
            format!(
                "Postfix delivered mail for {} on this host; a posthorn satellite sends it to the smarthost too",
                local.join(", ")
            ),
        );
    } else {
        im.out.extend("access.local_domains", &local, im.main.origin("mydestination"));
        let why = "local mail is delivered to Maildirs under deliver.maildir_root (/var/mail/{domain}/{user}); \
                   for local(8)'s mbox files (/var/mail/USER) or home_mailbox set local.local_transport = \"local\"; \
                   .forward files are not read";
        im.changed(im.main.at("mydestination"), why);
    }
    im.handle("myhostname");
    im.handle("myorigin");
    im.handle("mydomain");
    im.handle("mydestination");
}

/// relayhost, mynetworks, relay_domains, message_size_limit and the
/// restrictions that say what posthorn's relay rule says.
fn relay(im: &mut Importer) {
    let mut hosts = Vec::new();
    for host in items(&im.main.value("relayhost")) {
        if !host.starts_with('[') {
            let why = format!(
                "{host}: Postfix looked up the MX records of an unbracketed relayhost; posthorn connects to \
                 the smarthost's own address (A/AAAA), as Postfix does for [{host}]"
            );
            im.changed(im.main.at("relayhost"), why);
        }
        hosts.push(host);
    }
    if !hosts.is_empty() {
        im.out.extend("relay.smarthosts", &hosts, im.main.origin("relayhost"));
    }
    im.handle("relayhost");
    if im.main.raw("mynetworks").is_some() {
        let mut nets = Vec::new();
        for item in items(&im.main.value("mynetworks")) {
            // Postfix writes IPv6 networks in brackets: [::1]/128.
            let plain = item.replacen('[', "", 1).replacen(']', "", 1);
            if plain.parse::<ipnet::IpNet>().is_ok() || plain.parse::<std::net::IpAddr>().is_ok() {
                nets.push(plain);
            } else {
                im.not_carried(
                    im.main.at("mynetworks"),
                    format!("{item}: posthorn takes IP networks here, not host names, files or tables"),
                );
            }
        }
        im.out.extend("access.trusted_networks", &nets, im.main.origin("mynetworks"));
    } else if im.main.raw("mynetworks_style").is_some_and(|p| p.value != "host") {
        im.not_carried(
            im.main.at("mynetworks_style"),
            "posthorn trusts 127.0.0.0/8 and ::1 unless access.trusted_networks lists more",
        );
    }
    im.handle("mynetworks");
    im.handle("mynetworks_style");
    let mut domains = im.domain_list("relay_domains");
    // Domains already local need no relay entry.
    let local: Vec<String> = match im.out.get("access.local_domains") {
        Some(toml::Value::Array(a)) => a.iter().filter_map(|v| v.as_str().map(String::from)).collect(),
        _ => Vec::new(),
    };
    domains.retain(|d| !local.contains(d));
    if !domains.is_empty() {
        im.out.extend("access.relay_domains", &domains, im.main.origin("relay_domains"));
    }
    im.handle("relay_domains");
    for name in ["smtpd_relay_restrictions", "smtpd_recipient_restrictions"] {
        let value = im.main.value(name);
        let words: Vec<String> = items(&value);
        // What posthorn's relay rule does: trusted networks, AUTH users,
        // and mail for our own and relay domains.
        const RULE: [&str; 5] = [
            "permit_mynetworks",
            "permit_sasl_authenticated",
            "defer_unauth_destination",
            "reject_unauth_destination",
            "reject_unlisted_recipient",
        ];
        if im.main.raw(name).is_none() {
            continue;
        }
        if words.iter().all(|w| RULE.contains(&w.as_str())) && words.iter().any(|w| w.ends_with("_unauth_destination"))
        {
            im.same(name, "posthorn's relay rule: trusted networks, authenticated clients, its own and relay domains");
        } else {
            let extra: Vec<&String> = words.iter().filter(|w| !RULE.contains(&w.as_str())).collect();
            let list = extra.iter().map(|s| s.as_str()).collect::<Vec<_>>().join(" ");
            im.not_carried(im.main.at(name), format!("posthorn applies its fixed relay rule; not carried: {list}"));
        }
        im.handle(name);
    }
    if let Some(p) = im.main.raw("message_size_limit").cloned() {
        match im.main.value("message_size_limit").parse::<u64>() {
            Ok(0) => im.not_carried(
                im.main.at("message_size_limit"),
                "0 (no limit): posthorn always has one; its default 50M applies",
            ),
            Ok(n) => im.out.set("smtp.max_message_size", n as i64, im.main.origin(&p.name)),
            Err(_) => {
                im.not_carried(im.main.at("message_size_limit"), format!("`{}` is not a number of bytes", p.value))
            }
        }
    }
    im.handle("message_size_limit");
}

/// The lookup tables: their specs carried as they are, the map files left
/// where they are.
fn tables(im: &mut Importer) {
    let lists: [(&str, &[&str]); 6] = [
        ("virtual_alias_maps", &["rewrite.virtual_alias_maps"]),
        ("transport_maps", &["deliver.transport_maps"]),
        ("alias_maps", &["rewrite.alias_maps"]),
        ("canonical_maps", &["rewrite.sender_canonical_maps", "rewrite.recipient_canonical_maps"]),
        ("sender_canonical_maps", &["rewrite.sender_canonical_maps"]),
        ("recipient_canonical_maps", &["rewrite.recipient_canonical_maps"]),
    ];
    for (name, keys) in lists {
        im.handle(name);
        if im.main.raw(name).is_none() {
            continue;
        }
        let specs = table_specs(im, name);
        for key in keys {
            if !specs.is_empty() {
                im.out.extend(key, &specs, im.main.origin(name));
            }
        }
    }
    if im.main.raw("alias_database").is_some() {
        im.same("alias_database", "posthorn reads the alias source files of alias_maps itself; no newaliases database");
        im.handle("alias_database");
    }
    virtual_alias_domains(im);
    masquerade(im);
}

/// `name`'s tables as posthorn specs; other table types are reported.
fn table_specs(im: &mut Importer, name: &str) -> Vec<String> {
    let mut specs = Vec::new();
    for item in items(&im.main.value(name)) {
        let bare = item.strip_prefix("proxy:").unwrap_or(&item);
        let (kind, path) = bare.split_once(':').unwrap_or(("", bare));
        match kind {
            "hash" | "texthash" => specs.push(format!("{kind}:{path}")),
            // Built by postmap from the same text source posthorn reads.
            "btree" | "lmdb" | "cdb" | "dbm" | "sdbm" => specs.push(format!("hash:{path}")),
            _ => im.not_carried(
                im.main.at(name),
                format!(
                    "{item}: posthorn reads only the text source of hash-like tables (hash, btree, lmdb, cdb, texthash)"
                ),
            ),
        }
    }
    specs
}

/// virtual_alias_domains; Postfix's default (`$virtual_alias_maps`) means
/// the domains written as keys of the virtual alias tables.
fn virtual_alias_domains(im: &mut Importer) {
    im.handle("virtual_alias_domains");
    let mut domains = Vec::new();
    for item in items(&im.main.value("virtual_alias_domains")) {
        if item.contains(':') || item.starts_with('/') {
            let path = item.split_once(':').map_or(item.as_str(), |(_, p)| p).to_string();
            match std::fs::read_to_string(&path) {
                Ok(text) => domains.extend(domain_keys(&text)),
                Err(e) => im.not_carried(
                    im.main.at("virtual_alias_domains"),
                    format!("{item}: cannot read {path}: {}", crate::message::outcome::strerror(&e)),
                ),
            }
        } else {
            domains.push(item.to_ascii_lowercase());
        }
    }
    domains.dedup();
    if !domains.is_empty() {
        im.out.extend("rewrite.virtual_alias_domains", &domains, im.main.origin("virtual_alias_domains"));
    }
}

/// The keys of a virtual(5) source that are bare domains (`example.com
/// anything`): what Postfix's default virtual_alias_domains takes from it.
fn domain_keys(text: &str) -> Vec<String> {
    let mut out = Vec::new();
    for (_, line) in logical_lines(text) {
        let key = line.split_whitespace().next().unwrap_or("").to_ascii_lowercase();
        if !key.contains('@') && key.contains('.') && !out.contains(&key) {
            out.push(key);
        }
    }
    out
}

/// masquerade_domains: Postfix strips a sender's subdomains down to the
/// listed domain; posthorn rewrites the senders of named domains to
/// `masquerade_as`. Carried when one domain is listed, with the host's own
/// names as the masqueraded ones.
fn masquerade(im: &mut Importer) {
    im.handle("masquerade_domains");
    if im.main.raw("masquerade_domains").is_none() {
        return;
    }
    let list = items(&im.main.value("masquerade_domains"));
    let [domain] = list.as_slice() else {
        im.not_carried(
            im.main.at("masquerade_domains"),
            "posthorn masquerades to one domain (rewrite.masquerade_as); list one",
        );
        return;
    };
    if domain.starts_with('!') {
        im.not_carried(im.main.at("masquerade_domains"), "exceptions (!domain) have no posthorn equivalent");
        return;
    }
    let domain = domain.to_ascii_lowercase();
    let host = im.main.value("myhostname").to_ascii_lowercase();
    let mut own: Vec<String> = vec![host.clone()];
    if let Some(toml::Value::Array(local)) = im.out.get("access.local_domains") {
        own.extend(local.iter().filter_map(|v| v.as_str().map(String::from)));
    }
    own.retain(|d| d.ends_with(&format!(".{domain}")));
    own.dedup();
    im.out.set("rewrite.masquerade_as", domain.as_str(), im.main.origin("masquerade_domains"));
    im.out.extend("rewrite.masquerade_domains", &own, "the host's own names under that domain");
    im.changed(
        im.main.at("masquerade_domains"),
        format!(
            "senders @{} become @{domain}; other subdomains of {domain} are not rewritten, as Postfix did",
            own.join(", @")
        ),
    );
}

/// smtpd_tls_*: the server certificate.
fn server_tls(im: &mut Importer) {
    for name in [
        "smtpd_tls_cert_file",
        "smtpd_tls_key_file",
        "smtpd_tls_security_level",
        "smtpd_tls_CAfile",
        "smtpd_use_tls",
        "smtpd_enforce_tls",
    ] {
        im.handle(name);
    }
    let level = match im.main.raw("smtpd_tls_security_level") {
        Some(_) => im.main.value("smtpd_tls_security_level"),
        None if im.main.value("smtpd_enforce_tls") == "yes" => "encrypt".into(),
        None if im.main.value("smtpd_use_tls") == "yes" => "may".into(),
        None => String::new(),
    };
    let (cert, key) = (im.main.value("smtpd_tls_cert_file"), im.main.value("smtpd_tls_key_file"));
    if level == "none" || (level.is_empty() && !cert.is_empty()) {
        if !cert.is_empty() {
            im.not_carried(
                im.main.at("smtpd_tls_cert_file"),
                format!(
                    "smtpd_tls_security_level is {}: Postfix offered no STARTTLS, so no [tls] is written",
                    if level.is_empty() { "not set" } else { "none" }
                ),
            );
        }
        return;
    }
    if cert.is_empty() || key.is_empty() {
        if !level.is_empty() {
            im.not_carried(
                im.main.at("smtpd_tls_security_level"),
                "no certificate and key set: posthorn offers STARTTLS only with tls.cert and tls.key",
            );
        }
        return;
    }
    im.out.set("tls.cert", cert.as_str(), im.main.origin("smtpd_tls_cert_file"));
    im.out.set("tls.key", key.as_str(), im.main.origin("smtpd_tls_key_file"));
    if level == "encrypt" {
        im.not_carried(
            im.main.at("smtpd_tls_security_level"),
            "encrypt: posthorn offers STARTTLS on port 25 but does not require it (submission ports always do)",
        );
    }
    if im.main.raw("smtpd_tls_CAfile").is_some() {
        let all_certs =
            items(&im.main.value("smtpd_relay_restrictions")).iter().any(|w| w == "permit_tls_all_clientcerts");
        if all_certs {
            im.out.set("tls.client_ca", im.main.value("smtpd_tls_CAfile").as_str(), im.main.origin("smtpd_tls_CAfile"));
        } else {
            im.not_carried(
                im.main.at("smtpd_tls_CAfile"),
                "posthorn lets every client with a certificate from tls.client_ca relay; Postfix did not (no permit_tls_all_clientcerts)",
            );
        }
    }
}

/// smtp_tls_*: TLS towards the relayhost.
fn relay_tls(im: &mut Importer) {
    im.handle("smtp_tls_security_level");
    im.handle("smtp_tls_CApath");
    let level = im.main.value("smtp_tls_security_level");
    let origin = im.main.origin("smtp_tls_security_level");
    match level.as_str() {
        "" => {}
        "none" | "may" | "encrypt" | "verify" => im.out.set("relay.tls", level.as_str(), origin),
        "secure" => {
            im.out.set("relay.tls", "verify", origin);
            im.changed(
                im.main.at("smtp_tls_security_level"),
                "secure as posthorn's verify: the certificate is checked against the host name it connects to",
            );
        }
        other => im.not_carried(
            im.main.at("smtp_tls_security_level"),
            format!("{other}: posthorn knows none, may, encrypt and verify"),
        ),
    }
    if im.main.raw("smtp_tls_CApath").is_some() {
        let path = im.main.value("smtp_tls_CApath");
        if path.trim_end_matches('/') == "/etc/ssl/certs" {
            im.same("smtp_tls_CApath", "the system's CA certificates, which posthorn uses unless relay.tls_ca is set");
        } else {
            im.not_carried(im.main.at("smtp_tls_CApath"), "posthorn takes one CA file (relay.tls_ca), not a directory");
        }
    }
}

/// content_filter (in main.cf or as `-o` on the smtp service) and its
/// transport service in master.cf.
fn filter(im: &mut Importer) {
    im.handle("content_filter");
    let on_smtp = im
        .services
        .iter()
        .find(|s| s.kind == "inet" && s.command == "smtpd" && service_port(&s.name) == Some(25))
        .and_then(|s| s.overrides.iter().find(|(k, _)| k == "content_filter").map(|(_, v)| (s.line, v.clone())));
    let (value, origin, at) = match (im.main.raw("content_filter"), on_smtp) {
        (_, Some((line, v))) if !v.is_empty() => (
            v.clone(),
            format!("master.cf:{line}: smtp ... -o content_filter={v}"),
            format!("master.cf:{line}: content_filter"),
        ),
        (Some(_), _) => {
            (im.main.value("content_filter"), im.main.origin("content_filter"), im.main.at("content_filter"))
        }
        _ => return,
    };
    if value.is_empty() {
        return;
    }
    let Some((transport, nexthop)) = value.split_once(':') else {
        im.not_carried(at, format!("`{value}` is not transport:nexthop"));
        return;
    };
    let service = im.services.iter().find(|s| s.name == transport && s.kind == "unix").cloned();
    im.filter_service = Some(transport.to_string());
    let command = match (&service, transport) {
        (Some(s), _) => s.command.clone(),
        (None, "smtp" | "relay") => "smtp".into(),
        (None, _) => {
            im.not_carried(at, format!("transport {transport} is not a service of master.cf"));
            return;
        }
    };
    let spec = match command.as_str() {
        "smtp" => {
            let hop = if nexthop.starts_with('[') { nexthop.to_string() } else { bracket(nexthop) };
            format!("smtp:{hop}")
        }
        "pipe" => {
            let args = service.as_ref().map(|s| s.args.join(" ")).unwrap_or_default();
            match args.split_once("argv=") {
                Some((_, argv)) => {
                    if args.contains("user=") {
                        im.changed(at.clone(), "the pipe command runs as posthorn's account, not the service's user=");
                    }
                    let other = argv.split("${").skip(1).map(|m| m.split('}').next().unwrap_or(""));
                    if let Some(m) = other.into_iter().find(|m| !["sender", "recipient"].contains(m)) {
                        im.not_carried(
                            at,
                            format!(
                                "the pipe command uses ${{{m}}}; posthorn fills in only ${{sender}} and ${{recipient}}"
                            ),
                        );
                        return;
                    }
                    format!("pipe:{argv}")
                }
                None => {
                    im.not_carried(at, format!("the pipe service {transport} has no argv="));
                    return;
                }
            }
        }
        other => {
            im.not_carried(
                at,
                format!(
                    "the filter's service {transport} runs {other}; posthorn hands mail to an SMTP or a pipe filter"
                ),
            );
            return;
        }
    };
    let origin = match &service {
        Some(s) => format!("{origin}\nmaster.cf:{}: {} {} ... {}", s.line, s.name, s.kind, s.command),
        None => origin,
    };
    im.out.set("filter.content_filter", spec.as_str(), origin);
}

/// `host:port` as `[host]:port`: a filter is one host, never an MX lookup.
fn bracket(hop: &str) -> String {
    match hop.rsplit_once(':') {
        Some((host, port)) if port.chars().all(|c| c.is_ascii_digit()) => format!("[{host}]:{port}"),
        _ => format!("[{hop}]"),
    }
}

/// The port of a master.cf inet service name: `smtp`, `submission`,
/// `submissions`/`smtps`, a number, or `host:port`.
fn service_port(name: &str) -> Option<u16> {
    let port = name.rsplit_once(':').map_or(name, |(_, p)| p);
    match port {
        "smtp" => Some(25),
        "submission" => Some(587),
        "submissions" | "smtps" => Some(465),
        p => p.parse().ok(),
    }
}

/// The addresses an inet service listens on: its own host, or
/// inet_interfaces.
fn service_addrs(im: &mut Importer, service: &Service) -> Vec<String> {
    let Some(port) = service_port(&service.name) else {
        im.not_carried(format!("master.cf:{}: {}", service.line, service.name), "not a port posthorn can listen on");
        return Vec::new();
    };
    if let Some((host, _)) = service.name.rsplit_once(':') {
        let host = host.trim_start_matches('[').trim_end_matches(']');
        return vec![std::net::SocketAddr::new(host.parse().unwrap_or([127, 0, 0, 1].into()), port).to_string()];
    }
    let mut addrs = Vec::new();
    for iface in items(&im.main.value("inet_interfaces")) {
        let ip: Option<std::net::IpAddr> = match iface.as_str() {
            "all" => Some([0, 0, 0, 0].into()),
            "loopback-only" | "localhost" => Some([127, 0, 0, 1].into()),
            other => other.trim_start_matches('[').trim_end_matches(']').parse().ok(),
        };
        match ip {
            Some(ip) => addrs.push(std::net::SocketAddr::new(ip, port).to_string()),
            None => im.not_carried(
                im.main.at("inet_interfaces"),
                format!("{iface}: posthorn listens on addresses, not names"),
            ),
        }
    }
    addrs
}

/// Overrides of a listener that say what posthorn does there anyway.
const SAME_ON_LISTENERS: [&str; 14] = [
    "syslog_name",
    "smtpd_tls_security_level",
    "smtpd_sasl_auth_enable",
    "smtpd_tls_auth_only",
    "smtpd_tls_wrappermode",
    "smtpd_reject_unlisted_recipient",
    "smtpd_client_restrictions",
    "smtpd_helo_restrictions",
    "smtpd_sender_restrictions",
    "smtpd_relay_restrictions",
    "smtpd_recipient_restrictions",
    "milter_macro_daemon_name",
    "smtpd_sasl_type",
    "smtpd_sasl_path",
];

/// What FILTER_README sets on the reinjection service; posthorn's
/// reinjection listener does all of it by itself.
const SAME_ON_REINJECTION: [&str; 14] = [
    "content_filter",
    "local_recipient_maps",
    "relay_recipient_maps",
    "smtpd_restriction_classes",
    "smtpd_delay_reject",
    "smtpd_client_restrictions",
    "smtpd_helo_restrictions",
    "smtpd_sender_restrictions",
    "smtpd_recipient_restrictions",
    "smtpd_relay_restrictions",
    "smtpd_data_restrictions",
    "mynetworks",
    "strict_rfc821_envelopes",
    "receive_override_options",
];

/// The services Postfix's own master.cf defines for its internal work.
const POSTFIX_SERVICES: [&str; 32] = [
    "pickup",
    "cleanup",
    "qmgr",
    "oqmgr",
    "tlsmgr",
    "rewrite",
    "bounce",
    "defer",
    "trace",
    "verify",
    "flush",
    "proxymap",
    "proxywrite",
    "smtp",
    "relay",
    "showq",
    "error",
    "retry",
    "discard",
    "local",
    "virtual",
    "lmtp",
    "anvil",
    "scache",
    "postlog",
    "maildrop",
    "uucp",
    "ifmail",
    "bsmtp",
    "scalemail-backend",
    "mailman",
    "lmtp",
];

/// master.cf's inet services: listeners and the reinjection service.
fn listeners(im: &mut Importer) {
    im.handle("inet_interfaces");
    im.handle("inet_protocols");
    for service in im.services.clone() {
        let at = format!("master.cf:{}: {}", service.line, service.name);
        let origin = format!("master.cf:{}: {} {} ... {}", service.line, service.name, service.kind, service.command);
        if service.kind != "inet" {
            let used = im.filter_service.as_ref() == Some(&service.name);
            if !POSTFIX_SERVICES.contains(&service.name.as_str()) && !used {
                im.not_carried(
                    at,
                    format!("a {} service running {}, which posthorn does not run", service.kind, service.command),
                );
            }
            continue;
        }
        if service.command != "smtpd" {
            // postscreen's DNS lists come over with main.cf (`[screen]`);
            // its pregreet test is a choice made again.
            let why = if service.command == "postscreen" {
                ", with postscreen's DNS lists (postscreen_dnsbl_sites) in [screen] and its pregreet test as screen.pregreet = true"
            } else {
                " (the service is not carried)"
            };
            im.not_carried(at, format!("runs {}; posthorn's listeners speak SMTP themselves{why}", service.command));
            continue;
        }
        let reinjection = service.overrides.iter().any(|(k, v)| k == "content_filter" && v.is_empty());
        let addrs = service_addrs(im, &service);
        if reinjection {
            for (k, _) in service.overrides.iter().filter(|(k, _)| !SAME_ON_REINJECTION.contains(&k.as_str())) {
                im.not_carried(format!("{at}: -o {k}"), "not an option of posthorn's reinjection listener");
            }
            if let Some(addr) = addrs.first() {
                im.out.set("filter.reinject_listen", addr.as_str(), origin);
            }
            continue;
        }
        let wrapper = service.overrides.iter().any(|(k, v)| k == "smtpd_tls_wrappermode" && v == "yes");
        let key = match service_port(&service.name) {
            _ if wrapper => "smtp.submissions",
            Some(465) => "smtp.submissions",
            Some(587) => "smtp.submission",
            _ => "smtp.listen",
        };
        for (k, v) in &service.overrides {
            if !SAME_ON_LISTENERS.contains(&k.as_str()) && k != "content_filter" {
                im.not_carried(format!("{at}: -o {k}={v}"), "no per-listener setting in posthorn");
            }
        }
        if key != "smtp.listen" {
            im.changed(
                at.clone(),
                "posthorn requires AUTH there, from its own users file (auth.users, `posthorn auth add`); Postfix's SASL backend (Dovecot, Cyrus) is not carried over",
            );
        }
        im.out.extend(key, &addrs, origin);
    }
}

/// Every other main.cf setting: through postconf's table of equal names,
/// or reported.
fn generic(im: &mut Importer) {
    for p in im.main.params.clone() {
        if im.handled.contains(&p.name) {
            continue;
        }
        let value = im.main.value(&p.name);
        if let Some(why) = same_as_posthorn(&p.name, &value) {
            im.same(&p.name, why);
            continue;
        }
        match POSTFIX_NAMES.iter().find(|(name, _)| *name == p.name) {
            Some(_) if matches!(p.name.as_str(), "queue_directory" | "mail_owner") => im.not_carried(
                format!("main.cf:{}: {}", p.line, p.name),
                "posthorn keeps its own spool and account (spool, user); Postfix's are left alone",
            ),
            Some((_, key)) => match typed(key, &p.name, &value) {
                Ok(v) => im.out.set(key, v, im.main.origin(&p.name)),
                Err(e) => im.not_carried(format!("main.cf:{}: {}", p.line, p.name), e),
            },
            None => im.not_carried(format!("main.cf:{}: {}", p.line, p.name), unsupported(&p.name)),
        }
    }
}

/// Why a Postfix parameter without a posthorn key is not carried.
fn unsupported(name: &str) -> &'static str {
    match name {
        n if n.starts_with("smtp_sasl") => "write the relay's user:password into a file and set relay.auth_file",
        n if n.starts_with("smtpd_sasl") => "posthorn's AUTH uses its own users file (auth.users, `posthorn auth add`)",
        n if n.contains("milter") => "posthorn has no milters; an after-queue filter ([filter]) can do that work",
        "mailbox_command" => "posthorn delivers local mail itself (deliver.maildir_root, or [local] as local(8) does)",
        "mailbox_transport" => {
            "posthorn delivers local mail itself (deliver.maildir_root, or [local] as local(8) does); \
             for lmtp:... set local.local_transport to the same value"
        }
        "smtpd_banner" => "posthorn's greeting is fixed (its hostname and ESMTP)",
        _ => "posthorn has no equivalent setting",
    }
}

/// Settings that ask for what posthorn does anyway, and why it is the same.
fn same_as_posthorn(name: &str, value: &str) -> Option<&'static str> {
    Some(match (name, value) {
        ("biff", "no") => "posthorn never notifies biff",
        ("append_dot_mydomain", "no") => "posthorn does not append a domain to host names",
        ("readme_directory" | "html_directory" | "manpage_directory" | "sample_directory", _) => "documentation paths",
        ("compatibility_level", _) => "its defaults were applied when reading this file",
        ("mailbox_size_limit", "0") => "no mailbox size limit, as posthorn's Maildirs have none",
        ("default_transport" | "relay_transport", "smtp") => "posthorn's default transport",
        ("smtp_tls_session_cache_database" | "smtpd_tls_session_cache_database", _) => {
            "posthorn keeps TLS sessions in memory"
        }
        ("inet_protocols", "all" | "ipv4") => "the listeners above say which addresses",
        ("recipient_delimiter", "") => "no address extensions",
        _ => return None,
    })
}

/// `value` in the TOML type `key` takes, read as Postfix writes it
/// (`yes`/`no`, bare numbers, lists), checked with the loader's own types.
fn typed(key: &str, name: &str, value: &str) -> Result<toml::Value, String> {
    let mut candidates = Vec::new();
    match value {
        "yes" => candidates.push(toml::Value::Boolean(true)),
        "no" => candidates.push(toml::Value::Boolean(false)),
        _ => {}
    }
    // A duration takes `1s` but not `1x`; a string key takes both.
    let accepts = |v: &str| crate::config::accepts(key, toml::Value::String(v.into())).is_ok();
    let duration = accepts("1s") && !accepts("1x");
    if let Ok(n) = value.parse::<i64>() {
        // Postfix's time parameters take a bare number in their own unit.
        let unit = match name {
            "maximal_queue_lifetime" | "bounce_queue_lifetime" => "d",
            "delay_warning_time" => "h",
            _ => "s",
        };
        candidates.push(if duration { toml::Value::String(format!("{n}{unit}")) } else { toml::Value::Integer(n) });
    }
    candidates.push(toml::Value::String(value.to_string()));
    candidates.push(toml::Value::Array(items(value).into_iter().map(toml::Value::String).collect()));
    let mut last = String::new();
    for c in candidates {
        match crate::config::accepts(key, c.clone()) {
            Ok(()) => return Ok(c),
            Err(e) => last = e,
        }
    }
    Err(format!("`{value}` does not fit {key}: {last}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn main_cf(text: &str) -> MainCf {
        MainCf { params: parse_main(text).unwrap(), dir: PathBuf::from("/etc/postfix") }
    }

    #[test]
    fn main_cf_lines_and_expansion() {
        let m = main_cf(
            "# comment\nmyhostname = mx.example.org\nmydestination = $myhostname,\n  localhost.$mydomain\n\t# between\n  localhost\nrelayhost = [${mydomain}]:587\nx = ${relayhost?yes}${nothing?no}${nothing:empty} $$5\nmyhostname = mx2.example.org\n",
        );
        assert_eq!(m.value("mydestination"), "mx2.example.org, localhost.example.org localhost");
        assert_eq!(m.raw("mydestination").unwrap().line, 3);
        assert_eq!(m.raw("myhostname").unwrap().line, 9, "the last one wins");
        assert_eq!(m.value("relayhost"), "[example.org]:587");
        assert_eq!(m.value("x"), "yesempty $5");
        assert_eq!(m.value("myorigin"), "mx2.example.org");
        assert_eq!(items(&m.value("mydestination")), ["mx2.example.org", "localhost.example.org", "localhost"]);
        let loop_ = main_cf("a = $b\nb = $a\n");
        assert!(loop_.value("a").len() < 100, "a loop ends");
    }

    #[test]
    fn master_cf_services() {
        let s = parse_master(
            "smtp inet n - y - - smtpd\n  -o content_filter=scan:[127.0.0.1]:10024\n127.0.0.1:10025 inet n - n - - smtpd -o content_filter= -o mynetworks=127.0.0.0/8\nscan unix - - n - 10 smtp\n",
        )
        .unwrap();
        assert_eq!(s.len(), 3);
        assert_eq!(s[0].overrides, [("content_filter".into(), "scan:[127.0.0.1]:10024".into())]);
        assert_eq!(s[1].line, 3);
        assert_eq!(s[1].overrides[0], ("content_filter".into(), String::new()));
        assert_eq!(
            (service_port(&s[1].name), service_port("submission"), service_port("smtps")),
            (Some(10025), Some(587), Some(465))
        );
        assert!(parse_master("smtp inet n - y\n").unwrap_err().contains("master.cf:1"));
    }

    #[test]
    fn values_take_the_keys_types() {
        let cases = [
            ("smtp.max_message_size", "message_size_limit", "10240000", toml::Value::Integer(10240000)),
            ("queue.max_lifetime", "maximal_queue_lifetime", "3", toml::Value::String("3d".into())),
            ("queue.retry_min", "minimal_backoff_time", "300s", toml::Value::String("300s".into())),
            ("tls.received_auth_user", "smtpd_sasl_authenticated_header", "yes", toml::Value::Boolean(true)),
            (
                "access.local_recipient_maps",
                "local_recipient_maps",
                "hash:/a, hash:/b",
                toml::Value::Array(vec!["hash:/a".into(), "hash:/b".into()]),
            ),
        ];
        for (key, name, value, expected) in cases {
            assert_eq!(typed(key, name, value), Ok(expected), "{name}");
        }
        assert!(typed("smtp.max_recipients", "smtpd_recipient_limit", "many").is_err());
    }

    #[test]
    fn domain_keys_of_a_virtual_table() {
        let keys = domain_keys("example.com anything\n# c\nuser@example.com u\nlists.example.org  x\n  cont\nroot r\n");
        assert_eq!(keys, ["example.com", "lists.example.org"]);
    }

    /// Imports `main` (and `master`) from a scratch directory.
    fn run(main: &str, master: &str) -> (String, Vec<String>) {
        let dir = std::env::temp_dir().join(format!("posthorn-import-unit-{}-{}", std::process::id(), main.len()));
        std::fs::create_dir_all(&dir).unwrap();
        let main = main.replace("DIR", &dir.display().to_string());
        std::fs::write(dir.join("main.cf"), main).unwrap();
        std::fs::write(dir.join("master.cf"), master).unwrap();
        std::fs::write(dir.join("virtual"), "example.com anything\nsales@example.com a@b.example\n").unwrap();
        let im = import(&dir).unwrap();
        let _ = std::fs::remove_dir_all(&dir);
        (im.output.render(), im.notes)
    }

    #[test]
    fn decisions_that_change_meaning_are_said() {
        let smtp = "smtp inet n - y - - smtpd\n";
        let (toml, notes) = run(
            "myhostname = vm.example.org\nrelayhost = hub.example.org\nmydestination = $myhostname, localhost\n\
             smtpd_tls_cert_file = /c.pem\nsmtpd_tls_key_file = /k.pem\nsmtpd_tls_security_level = may\nsmtpd_tls_CAfile = /etc/ssl/certs/ca-certificates.crt\n\
             virtual_alias_maps = lmdb:DIR/virtual\nheader_checks = regexp:/etc/postfix/header_checks\n",
            smtp,
        );
        assert!(toml.contains("role = \"satellite\""), "{toml}");
        assert!(toml.contains("smarthosts = [\"hub.example.org\"]"), "{toml}");
        assert!(
            notes.iter().any(|n| n.starts_with(
                "main.cf:2: relayhost: carried over with a difference: hub.example.org: Postfix looked up the MX"
            )),
            "{notes:?}"
        );
        assert!(!toml.contains("client_ca = "), "a public CA bundle must not let every certificate relay: {toml}");
        assert!(notes.iter().any(|n| n.starts_with("main.cf:7: smtpd_tls_CAfile: not carried over")), "{notes:?}");
        assert!(notes.iter().any(|n| n.starts_with("main.cf:9: header_checks: not carried over")), "{notes:?}");
        assert!(
            toml.contains("virtual_alias_domains = [\"example.com\"]"),
            "Postfix's default, from the table's keys: {toml}"
        );
        assert!(toml.contains("virtual_alias_maps = [\"hash:"), "{toml}");

        let (toml, notes) = run(
            "myhostname = mx.example.org\nsmtpd_tls_cert_file = /c.pem\nsmtpd_tls_key_file = /k.pem\nsmtpd_use_tls = yes\nsmtpd_tls_CAfile = /ca.pem\n\
             smtpd_relay_restrictions = permit_mynetworks permit_tls_all_clientcerts reject_unauth_destination\n\
             maximal_queue_lifetime = 2\nmessage_size_limit = 0\n",
            smtp,
        );
        assert!(toml.contains("role = \"hub\""), "{toml}");
        assert!(toml.contains("client_ca = \"/ca.pem\""), "{toml}");
        assert!(toml.contains("max_lifetime = \"2d\""), "days, as Postfix reads a bare number there: {toml}");
        assert!(notes.iter().any(|n| n.starts_with("main.cf:8: message_size_limit: not carried over: 0")), "{notes:?}");
        assert!(
            notes.iter().any(|n| n.contains("smtpd_relay_restrictions: not carried over")
                && n.contains("permit_tls_all_clientcerts")),
            "{notes:?}"
        );
    }
}
