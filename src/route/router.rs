//! The daemon's router: the tables of the configuration opened once, and
//! the three questions asked of them.
//!
//! - At RCPT and at the door into the queue: what final recipients does
//!   this address stand for (virtual aliases, catch-all, local aliases), and
//!   are they acceptable (no loop, a known user in a local domain, nothing
//!   left in a virtual alias domain without an entry)?
//! - At delivery time: where does each final recipient go next (transport
//!   table, then local Maildir for local domains, then the smarthosts when
//!   configured, else MX)? Decided per attempt, so a changed table applies
//!   to mail already queued.
//! - At delivery time, before that: does the recipient's copy go to the
//!   after-queue content filter first ([`content_filter`])?
//! - For `posthorn route explain`: all of it, step by step, starting with
//!   what the door does first (qualification, recipient canonical maps).

use super::rewrite::{Expansion, RewriteError, Rewriter};
use super::table::{Syntax, Table, TableError, open_all};
use super::transport::{NextHop, Transport, TransportMaps};
use crate::config::{Config, Filter, Role};
use crate::message::nexthop::{FilterSpec, Hop, Target};
use std::fmt::Write;
use std::sync::Arc;

/// Where one final recipient goes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum Decision {
    /// The configured smarthosts, with their failover (`relay.smarthosts`).
    Smarthosts,
    /// A transport and next hop; `domain` is the recipient's.
    Next { hop: NextHop, domain: String },
}

/// The start-up warning for a hub that takes mail for every local part of
/// its local domains, from anyone: without `access.local_recipient_maps`
/// each new local part becomes a Maildir. Kept as it is (small sites rely
/// on it), but said.
pub(crate) fn open_local_domains(config: &Config) -> Option<String> {
    let open = config.role == Role::Hub
        && !config.access.local_domains.is_empty()
        && config.access.local_recipient_maps.is_empty()
        // local: refuses users the system does not know at RCPT.
        && config.local.local_transport == crate::config::LocalTransport::Maildir;
    open.then(|| {
        format!(
            "access.local_domains ({}) without access.local_recipient_maps: mail to any local part is accepted from anyone and makes a new Maildir; list the users in local_recipient_maps to refuse the rest at RCPT",
            config.access.local_domains.join(", ")
        )
    })
}

/// The domains whose local parts the alias files know: the local domains,
/// and on a satellite also its own names (the hostname, `localhost` and
/// `myorigin`), as Postfix's default `mydestination` has them. A satellite
/// has no local domains, so without these its `alias_maps` were never
/// consulted and `root: ops@example.org` did nothing.
fn alias_domains(config: &Config) -> Vec<String> {
    let mut domains = config.access.local_domains.clone();
    if config.role == Role::Satellite {
        domains.extend([
            config.hostname.to_ascii_lowercase(),
            "localhost".into(),
            config.myorigin.to_ascii_lowercase(),
        ]);
    }
    domains
}

/// Why a recipient is refused at RCPT (or at the door).
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Refusal {
    pub(crate) code: u16,
    pub(crate) status: (u8, u16, u16),
    pub(crate) text: String,
}

pub(crate) struct Router {
    role: Role,
    /// `relay.tls`, the smarthosts' TLS policy, for `explain`.
    relay_tls: crate::config::TlsPolicy,
    /// The outbound TLS policies (table and default level), for `explain`.
    outbound_tls: crate::deliver::tls_policy::Policies,
    /// The MTA-STS cache (`<spool>/mta-sts`) when `mta_sts.enabled`, for
    /// `explain`.
    mta_sts_cache: Option<std::path::PathBuf>,
    local_domains: Vec<String>,
    /// `rewrite.virtual_alias_domains`: every address comes from the
    /// virtual alias maps; one without an entry is unknown.
    virtual_alias_domains: Vec<String>,
    /// `myorigin`, for bare names `explain` is asked about.
    myorigin: String,
    has_smarthosts: bool,
    rewriter: Rewriter,
    /// Sender/recipient canonical maps and masquerading; `None`: none set.
    canonical: Option<super::canonical::Canonical>,
    transports: TransportMaps,
    /// Known local users; empty means any user of a local domain.
    local_recipients: Vec<Arc<Table>>,
    /// `[filter]`, for `explain`.
    filter: Filter,
    /// `[srs]`, with its secrets read; `None`: off.
    srs: Option<super::srs::Srs>,
    /// `[local]`: the local domains' transport, and mailbox paths for `explain`.
    local: crate::config::Local,
}

/// The content filter a message's recipient goes to before its route, if
/// any: a filter is configured, the message has not come back from it
/// (`filtered`), and the recipient's domain is in `filter.domains` (when
/// set). Delivery and `posthorn route explain` both ask this one function.
pub(crate) fn content_filter<'a>(filter: &'a Filter, filtered: bool, rcpt: &str) -> Option<&'a FilterSpec> {
    let spec = filter.content_filter.as_ref()?;
    let domain = rcpt.rsplit_once('@').map(|(_, d)| d.trim_end_matches('.').to_ascii_lowercase());
    let listed = filter.domains.is_empty() || domain.is_some_and(|d| filter.domains.contains(&d));
    (!filtered && listed).then_some(spec)
}

/// The transport hop a routing decision names.
pub(crate) fn hop_of(decision: Decision) -> Hop {
    match decision {
        Decision::Smarthosts => Hop::Relay,
        Decision::Next { hop, .. } if hop.lmtp_target().is_some() => {
            Hop::Lmtp(hop.lmtp_target().expect("checked by the guard"))
        }
        Decision::Next { hop, domain } => match (hop.transport, hop.host, hop.port) {
            (Transport::Maildir, _, _) => Hop::Maildir,
            (Transport::Local, _, _) => Hop::Local,
            (_, None, None) => Hop::Mx(domain),
            (_, host, port) => Hop::Smtp(Target { host: host.unwrap_or(domain), port, mx: hop.mx_lookup }),
        },
    }
}

/// The MTA-STS policy cached for `domain` (`explain` asks no DNS and
/// fetches nothing: the daemon does that at delivery time).
fn explain_mta_sts(dir: &std::path::Path, domain: &str) -> String {
    use crate::deliver::mta_sts::{Applied, Source, read_cache};
    let Some(cached) = read_cache(dir, domain) else {
        return "none cached (looked up at delivery)".into();
    };
    let now = crate::clock::now_secs();
    let expires = cached.expires();
    let state = if expires > now { "expires" } else { "expired" };
    let applied = Applied { id: cached.id.clone(), policy: cached.policy.clone(), source: Source::Cache };
    let when = crate::clock::timestamp(expires).strftime("%Y-%m-%dT%H:%M:%SZ");
    let verify = if cached.policy.mode == crate::deliver::mta_sts::Mode::Enforce { ", tls=verify" } else { "" };
    format!(
        "{} mx={}{verify}, {state} {when} ({})",
        applied.describe(),
        cached.policy.mx.join(","),
        dir.join(domain).display()
    )
}

impl Router {
    /// The TLS level a next hop gets, and where that comes from.
    fn explain_tls(&self, hop: &NextHop, domain: &str) -> String {
        use crate::deliver::tls_policy::{domain_keys, hop_keys};
        let dest = hop.destination(domain);
        let keys = match (&hop.host, hop.port) {
            (None, None) => domain_keys(dest),
            _ => hop_keys(dest, hop.port, hop.mx_lookup),
        };
        let tls = match self.outbound_tls.for_hop(&keys, dest) {
            Ok(tls) => format!("{} ({})", tls.level.name(), tls.source),
            Err(e) => format!("unusable policy: {e}"),
        };
        match &self.mta_sts_cache {
            Some(dir) if hop.host.is_none() && hop.port.is_none() && !self.outbound_tls.in_table(&keys) => {
                format!("{tls}; mta-sts={}", explain_mta_sts(dir, dest))
            }
            _ => tls,
        }
    }

    /// Opens every table the configuration names. An error names the key
    /// and the table's problem (file and line).
    pub(crate) fn from_config(config: &Config) -> Result<Router, String> {
        let open = |key: &str, specs: &[String], syntax| {
            open_all(specs, syntax).map_err(|e: TableError| format!("{key}: {e}"))
        };
        let local: Vec<String> = config.access.local_domains.clone();
        let is_local = {
            let local = alias_domains(config);
            move |d: &str| local.iter().any(|l| l.eq_ignore_ascii_case(d.trim_end_matches('.')))
        };
        let rewriter = Rewriter::new(&config.myorigin, is_local)
            .with_virtual_maps(open("rewrite.virtual_alias_maps", &config.rewrite.virtual_alias_maps, Syntax::Map)?)
            .with_alias_maps(open("rewrite.alias_maps", &config.rewrite.alias_maps, Syntax::Aliases)?)
            .with_recipient_delimiter(&config.local.recipient_delimiter)
            .with_allowed(
                config.local.allow_mail_to_commands.iter().any(|s| s == "alias"),
                config.local.allow_mail_to_files.iter().any(|s| s == "alias"),
            );
        Ok(Router {
            role: config.role,
            relay_tls: config.relay.tls,
            outbound_tls: crate::deliver::tls_policy::Policies::new(
                super::tls_policy::PolicyTables::open(config)?,
                config.outbound_tls.level,
                "outbound_tls.level",
                None,
                None,
            ),
            mta_sts_cache: config.mta_sts.enabled.then(|| crate::deliver::mta_sts::cache_dir(&config.spool)),
            local_domains: local,
            virtual_alias_domains: config.rewrite.virtual_alias_domains.clone(),
            myorigin: config.myorigin.clone(),
            has_smarthosts: !config.relay.smarthosts.is_empty(),
            rewriter,
            canonical: super::canonical::Canonical::from_config(config)?,
            transports: TransportMaps::new(open(
                "deliver.transport_maps",
                &config.deliver.transport_maps,
                Syntax::Transport,
            )?),
            local_recipients: open("access.local_recipient_maps", &config.access.local_recipient_maps, Syntax::Map)?,
            filter: config.filter.clone(),
            srs: super::srs::Srs::from_config(config)?,
            local: config.local.clone(),
        })
    }

    /// The Sender Rewriting Scheme, when `[srs]` is configured.
    pub(crate) fn srs(&self) -> Option<&super::srs::Srs> {
        self.srs.as_ref()
    }

    /// Canonical maps and masquerading, when configured.
    pub(crate) fn canonical(&self) -> Option<&super::canonical::Canonical> {
        self.canonical.as_ref()
    }

    pub(crate) fn is_local_domain(&self, domain: &str) -> bool {
        let domain = domain.trim_end_matches('.');
        self.local_domains.iter().any(|l| l.eq_ignore_ascii_case(domain))
    }

    /// The final recipients `address` stands for.
    pub(crate) fn expand(&self, address: &str) -> Result<Expansion, RewriteError> {
        self.rewriter.expand(address)
    }

    /// Expands `address` and checks every final recipient; the refusal
    /// says why not, with the reply code a client should get.
    pub(crate) fn check(&self, address: &str) -> Result<Vec<String>, Refusal> {
        // A bounce to a sender this hub rewrote goes to the original one.
        if let Some(reversed) = self.srs.as_ref().and_then(|s| s.reverse(address, super::srs::today())) {
            return match reversed {
                Ok(original) => self.check(&original),
                Err(e) => Err(Refusal {
                    code: 550,
                    status: (5, 1, 1),
                    text: format!("<{address}>: Recipient address rejected: {e}"),
                }),
            };
        }
        let expansion = self.expand(address).map_err(|e| match e {
            RewriteError::Loop { .. } => Refusal { code: 550, status: (5, 4, 6), text: format!("<{address}>: {e}") },
            RewriteError::IncludeRefused { .. } | RewriteError::NotAllowed { .. } => {
                Refusal { code: 550, status: (5, 7, 1), text: format!("<{address}>: {e}") }
            }
            _ => Refusal { code: 451, status: (4, 3, 0), text: format!("<{address}>: {e}") },
        })?;
        for rcpt in &expansion.recipients {
            if self.is_virtual_alias_domain(rcpt) {
                // Postfix's words for `virtual_alias_domains`.
                return Err(Refusal {
                    code: 550,
                    status: (5, 1, 1),
                    text: format!("<{address}>: Recipient address rejected: User unknown in virtual alias table"),
                });
            }
            if !self.rewriter.deliveries(rcpt).is_empty() {
                // An alias's command or file: known, and local:'s.
                if hop_of(self.decide(rcpt)) != Hop::Local {
                    let text = format!(
                        "<{address}>: Recipient address rejected: its alias ends in a command or file, which only the local: transport delivers to (local.local_transport = \"local\")"
                    );
                    return Err(Refusal { code: 550, status: (5, 3, 5), text });
                }
                continue;
            }
            if !self.known_local(rcpt) {
                return Err(Refusal {
                    code: 550,
                    status: (5, 1, 1),
                    text: format!("<{address}>: Recipient address rejected: User unknown in local recipient table"),
                });
            }
            // Refused now rather than bounced after acceptance (backscatter).
            if let Err((detail, why)) = self.maildir_check(rcpt) {
                let text = format!("<{address}>: Recipient address rejected: {why}");
                return Err(Refusal { code: 550, status: (5, 1, detail), text });
            }
        }
        Ok(expansion.recipients)
    }

    /// Whether `rcpt` is in a virtual alias domain: left there after
    /// expansion, it has no entry of its own (a catch-all would have
    /// taken it elsewhere).
    fn is_virtual_alias_domain(&self, rcpt: &str) -> bool {
        let Some((_, domain)) = rcpt.rsplit_once('@') else { return false };
        let domain = domain.trim_end_matches('.');
        self.virtual_alias_domains.iter().any(|d| d.eq_ignore_ascii_case(domain))
    }

    /// For a recipient its route takes to a Maildir: whether it can name
    /// one; for one it takes to a local user: whether that user exists.
    /// The error has the status's detail (X.1.detail) and the reason.
    fn maildir_check(&self, rcpt: &str) -> Result<(), (u16, String)> {
        match hop_of(self.decide(rcpt)) {
            Hop::Maildir => crate::deliver::maildir::check_address(rcpt).map_err(|why| (3, why)),
            Hop::Local => crate::deliver::local::check_address(rcpt, &self.local.recipient_delimiter),
            _ => Ok(()),
        }
    }

    /// A recipient outside the local domains is always "known"; inside,
    /// it must be in `access.local_recipient_maps` when that is set (as
    /// `user@domain` or `user`). `postmaster` always exists (RFC 5321 4.5.1).
    fn known_local(&self, rcpt: &str) -> bool {
        let Some((user, domain)) = rcpt.rsplit_once('@') else { return true };
        if !self.is_local_domain(domain) || self.local_recipients.is_empty() || user.eq_ignore_ascii_case("postmaster")
        {
            return true;
        }
        let listed = |rcpt: &str, user: &str| {
            self.local_recipients.iter().any(|t| t.lookup(rcpt).is_some() || t.lookup(user).is_some())
        };
        match self.local.split_extension(user) {
            (base, Some(_)) => listed(rcpt, user) || listed(&format!("{base}@{domain}"), base),
            (_, None) => listed(rcpt, user),
        }
    }

    /// The commands and files `rcpt`'s alias entry lists, for `local:`.
    pub(crate) fn alias_deliveries(&self, rcpt: &str) -> Vec<crate::message::AliasDelivery> {
        use super::aliases::Target;
        use crate::message::{AliasDelivery, AliasTarget};
        self.rewriter
            .deliveries(rcpt)
            .into_iter()
            .filter_map(|(target, owner, source)| {
                let target = match target {
                    Target::Command(c) => AliasTarget::Command(c),
                    Target::File(f) => AliasTarget::File(f),
                    _ => return None,
                };
                Some(AliasDelivery { target, owner, source })
            })
            .collect()
    }

    /// Where a final recipient goes next.
    pub(crate) fn decide(&self, rcpt: &str) -> Decision {
        let domain = rcpt.rsplit_once('@').map(|(_, d)| d).unwrap_or("").trim_end_matches('.').to_ascii_lowercase();
        let default = self.default_hop(&domain);
        let route = self.transports.route(rcpt, default.as_ref().unwrap_or(&NextHop::mx()));
        match (route.matched, default) {
            (None, None) => Decision::Smarthosts,
            (_, _) => Decision::Next { hop: route.next_hop, domain },
        }
    }

    /// Whether any recipient can be routed to a Maildir: a hub's local
    /// domains, or a transport entry naming `maildir:` (`local:`, `virtual:`).
    pub(crate) fn delivers_to_maildir(&self) -> bool {
        (self.role == Role::Hub && !self.local_domains.is_empty()) || self.transports.names_maildir()
    }

    /// The hop a message's recipient takes now: the content filter first
    /// unless the message came back from it (`filtered`) or the address is
    /// outside `filter.domains`, else its route. Asked at every attempt, so
    /// a changed table applies to mail already queued.
    pub(crate) fn hop(&self, filtered: bool, rcpt: &str) -> Hop {
        match content_filter(&self.filter, filtered, rcpt) {
            Some(spec) => Hop::Filter(spec.clone()),
            None => hop_of(self.decide(rcpt)),
        }
    }

    /// The next hop without a transport entry; `None` means the smarthosts.
    fn default_hop(&self, domain: &str) -> Option<NextHop> {
        match self.role {
            Role::Satellite => None,
            Role::Hub if self.is_local_domain(domain) => Some(match &self.local.local_transport {
                crate::config::LocalTransport::Maildir => NextHop::maildir(),
                crate::config::LocalTransport::Local => NextHop::local(),
                crate::config::LocalTransport::Lmtp(target) => NextHop::lmtp(target),
            }),
            Role::Hub if self.has_smarthosts => None,
            Role::Hub => Some(NextHop::mx()),
        }
    }

    /// Each final recipient `address` stands for, with where it goes
    /// next, or why it is refused: what `sendmail -bv` and `exim -bt`
    /// print, from the same answers `explain` gives.
    pub(crate) fn routes(&self, address: &str) -> Result<Vec<(String, Decision)>, Refusal> {
        let address = self.as_the_door_takes(address);
        Ok(self
            .check(&address)?
            .into_iter()
            .map(|r| {
                let next = self.decide(&r);
                (r, next)
            })
            .collect())
    }

    /// The domains among `address`'s routes that go by MX under `dane` or
    /// `dane-only`: `route explain` looks their TLSA records up
    /// (`deliver::dane::explain`).
    pub(crate) fn dane_domains(&self, address: &str) -> Vec<String> {
        let mut out = Vec::new();
        for (_, decision) in self.routes(address).unwrap_or_default() {
            if let Hop::Mx(domain) = hop_of(decision) {
                let keys = crate::deliver::tls_policy::domain_keys(&domain);
                if self.outbound_tls.for_hop(&keys, &domain).is_ok_and(|t| t.level.is_dane()) && !out.contains(&domain)
                {
                    out.push(domain);
                }
            }
        }
        out
    }

    /// `address` as the door hands it to the tables: qualified with
    /// `myorigin`, then through the recipient canonical maps.
    fn as_the_door_takes(&self, address: &str) -> String {
        let mut address = address.trim().to_string();
        if !address.contains('@') {
            address = format!("{address}@{}", self.myorigin);
        }
        match self.canonical.as_ref().and_then(|c| c.recipient_traced(&address)) {
            Some(hit) => hit.to,
            None => address,
        }
    }

    /// `posthorn route explain ADDRESS`: what the door does to the address
    /// (qualification, recipient canonical maps, with the same code), then
    /// the expansion and the route of each final recipient; last, what the
    /// address becomes as a sender, when that differs.
    pub(crate) fn explain(&self, address: &str) -> String {
        let mut out = String::new();
        let mut address = address.trim().to_string();
        if !address.contains('@') {
            let to = format!("{address}@{}", self.myorigin);
            let _ = writeln!(out, "{address}: qualified as {to} (myorigin)");
            address = to;
        }
        let original = address.clone();
        if let Some(hit) = self.canonical.as_ref().and_then(|c| c.recipient_traced(&address)) {
            let _ = writeln!(out, "{address}: recipient canonical {hit}");
            address = hit.to;
        }
        out.push_str(&self.explain_recipient(&address));
        if let Some(c) = &self.canonical {
            for step in c.sender_traced(&original, true).1 {
                let _ = writeln!(out, "as a sender: {step}");
            }
        }
        out
    }

    /// The expansion of a recipient as it enters the queue, and the route
    /// of each final recipient.
    fn explain_recipient(&self, address: &str) -> String {
        let mut out = String::new();
        let expansion = match self.check(address) {
            Ok(_) => self.expand(address).expect("checked above"),
            Err(r) => {
                let _ = writeln!(
                    out,
                    "{address}: refused: {} {}.{}.{} {}",
                    r.code, r.status.0, r.status.1, r.status.2, r.text
                );
                if let Ok(x) = self.expand(address) {
                    out.push_str(&x.to_string());
                }
                return out;
            }
        };
        out.push_str(&expansion.to_string());
        for rcpt in &expansion.recipients {
            if let Some(step) = self.filter_step(rcpt) {
                let _ = writeln!(out, "{rcpt}: {step}");
            }
            let line = match self.decide(rcpt) {
                Decision::Smarthosts => {
                    format!("relay to the smarthosts (relay.smarthosts), in order; tls={:?}", self.relay_tls)
                        .to_lowercase()
                }
                Decision::Next { hop, domain } => {
                    let route = self.transports.route(rcpt, &hop);
                    let how = match route.matched {
                        Some(m) => format!("transport table {}:{}: {} {}", m.table, m.line, m.key, m.value),
                        None if hop.transport.is_local() => format!("{domain} is a local domain"),
                        None if hop.transport == Transport::Lmtp => {
                            format!("{domain} is a local domain, local.local_transport")
                        }
                        None => "default: MX lookup of the recipient's domain".into(),
                    };
                    let tls = match hop.transport {
                        t if t.is_local() => "local".to_string(),
                        // Loopback or a Unix socket: never TLS, as Postfix's lmtp(8).
                        Transport::Lmtp => "none (lmtp)".to_string(),
                        _ => self.explain_tls(&hop, &domain),
                    };
                    match hop.transport {
                        Transport::Local => {
                            let place = crate::deliver::local::describe(&self.local, rcpt);
                            format!("{hop} -> {place} ({how}); tls={tls}")
                        }
                        Transport::Lmtp => format!("{hop} -> LMTP server ({how}); tls={tls}"),
                        _ => format!("{hop} -> {} ({how}); tls={tls}", hop.destination(&domain)),
                    }
                }
            };
            let _ = writeln!(out, "{rcpt}: {line}");
        }
        out
    }

    /// The content filter line of `explain` for a new message (not yet
    /// filtered); `None` when no filter is configured at all.
    fn filter_step(&self, rcpt: &str) -> Option<String> {
        self.filter.content_filter.as_ref()?;
        let Some(spec) = content_filter(&self.filter, false, rcpt) else {
            let domain = rcpt.rsplit_once('@').map_or("", |(_, d)| d);
            return Some(format!("content filter: none ({domain} is not in filter.domains)"));
        };
        let then = match self.filter.reinject_listen {
            Some(addr) => format!("then reinjected on {addr}, and routed as below"),
            // Mail back through any other door is not marked filtered.
            None => "filter.reinject_listen is not set: what the filter sends back is filtered again".into(),
        };
        Some(format!("content filter: {spec} ({then})"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;

    fn router(dir: &Path, role: &str, extra: &str) -> Router {
        std::fs::write(dir.join("virtual"), "info@example.org  alice@example.org, bob@example.net\n@staging.example.org team@example.org\nloop1@example.org loop2@example.org\nloop2@example.org loop1@example.org\n").unwrap();
        std::fs::write(dir.join("users"), "alice@example.org x\nteam x\n").unwrap();
        std::fs::write(dir.join("transport"), ".internal.example relay:[10.0.0.9]:2525\n").unwrap();
        let text = format!(
            "role = \"{role}\"\nhostname = \"mx.example.org\"\n[access]\nlocal_domains = [\"example.org\"]\nlocal_recipient_maps = [\"hash:{d}/users\"]\n[rewrite]\nvirtual_alias_maps = [\"hash:{d}/virtual\"]\n[deliver]\ntransport_maps = [\"hash:{d}/transport\"]\n{extra}",
            d = dir.display()
        );
        Router::from_config(&Config::parse(&text, Path::new("t.toml")).unwrap()).unwrap()
    }

    #[test]
    fn virtual_alias_domains_know_only_their_entries() {
        let dir = tempfile::tempdir().unwrap();
        let virtual_ = dir.path().join("virtual");
        std::fs::write(
            &virtual_,
            "team@lists.example.org alice@example.org\nloop@lists.example.org loop@lists.example.org\n@staging.example.org team@example.org\n",
        )
        .unwrap();
        let config = format!(
            "role = \"hub\"\nhostname = \"mx.example.org\"\n[access]\nlocal_domains = [\"example.org\"]\n[rewrite]\nvirtual_alias_domains = [\"lists.example.org\", \"staging.example.org\"]\nvirtual_alias_maps = [\"hash:{}\"]\n",
            virtual_.display()
        );
        let r = Router::from_config(&Config::parse(&config, Path::new("t.toml")).unwrap()).unwrap();
        // (address, accepted)
        let cases = [
            ("team@lists.example.org", true),
            ("Team@Lists.Example.ORG", true),
            ("nobody@lists.example.org", false),
            ("loop@lists.example.org", false),
            ("anyone@staging.example.org", true),
            ("anyone@example.org", true),
        ];
        for (address, accepted) in cases {
            let got = r.check(address);
            assert_eq!(got.is_ok(), accepted, "{address}: {got:?}");
            if let Err(refusal) = got {
                assert_eq!((refusal.code, refusal.status), (550, (5, 1, 1)));
                assert_eq!(
                    refusal.text,
                    format!("<{address}>: Recipient address rejected: User unknown in virtual alias table")
                );
            }
        }
    }

    #[test]
    fn recipients_are_checked_at_the_door() {
        let dir = tempfile::tempdir().unwrap();
        let r = router(dir.path(), "hub", "");
        assert_eq!(r.check("info@example.org").unwrap(), vec!["alice@example.org", "bob@example.net"]);
        assert_eq!(r.check("x@staging.example.org").unwrap(), vec!["team@example.org"]);
        assert_eq!(r.check("nobody@example.org").unwrap_err().status, (5, 1, 1));
        assert_eq!(r.check("loop1@example.org").unwrap_err().status, (5, 4, 6));
        assert_eq!(r.check("anyone@elsewhere.example").unwrap(), vec!["anyone@elsewhere.example"]);
        assert!(r.check("postmaster@example.org").is_ok());
    }

    #[test]
    fn local_parts_a_maildir_cannot_take_are_refused() {
        let text = "role = \"hub\"\nhostname = \"mx.example.org\"\n[access]\nlocal_domains = [\"example.org\"]\n";
        let config = Config::parse(text, Path::new("t.toml")).unwrap();
        let r = Router::from_config(&config).unwrap();
        assert!(r.check("alice@example.org").is_ok());
        for bad in ["\"../x\"@example.org", "a/b@example.org"] {
            let refusal = r.check(bad).unwrap_err();
            assert_eq!((refusal.code, refusal.status), (550, (5, 1, 3)), "{bad}: {refusal:?}");
        }
        // Not bound for a Maildir: not this check's business.
        assert!(r.check("a/b@elsewhere.example").is_ok());
        assert!(open_local_domains(&config).is_some_and(|w| w.contains("example.org")));
        let maps = format!("{text}local_recipient_maps = [\"texthash:/dev/null\"]\n");
        assert_eq!(open_local_domains(&Config::parse(&maps, Path::new("t.toml")).unwrap()), None);
    }

    #[test]
    fn next_hops_by_role() {
        let dir = tempfile::tempdir().unwrap();
        let hub = router(dir.path(), "hub", "");
        let next = |r: &Router, a: &str| match r.decide(a) {
            Decision::Smarthosts => "smarthosts".to_string(),
            Decision::Next { hop, domain } => format!("{hop} {domain}"),
        };
        assert_eq!(next(&hub, "alice@example.org"), "maildir: example.org");
        assert_eq!(next(&hub, "a@example.net"), "smtp: example.net");
        assert_eq!(next(&hub, "a@db.internal.example"), "relay:[10.0.0.9]:2525 db.internal.example");
        let upstream = router(dir.path(), "hub", "[relay]\nsmarthosts = [\"[10.0.0.1]:25\"]\n");
        assert_eq!(next(&upstream, "a@example.net"), "smarthosts");
        assert_eq!(next(&upstream, "alice@example.org"), "maildir: example.org");
        let sat = router(dir.path(), "satellite", "");
        assert_eq!(next(&sat, "a@example.net"), "smarthosts");
        assert_eq!(next(&sat, "a@db.internal.example"), "relay:[10.0.0.9]:2525 db.internal.example");
        let text = hub.explain("info@example.org");
        assert!(text.contains("alice@example.org: maildir:"), "{text}");
        assert!(text.contains("bob@example.net: smtp:"), "{text}");
    }

    #[test]
    fn which_recipients_go_to_the_content_filter() {
        let parse = |filter: &str| Config::parse(filter, Path::new("t.toml")).unwrap().filter;
        let smtp = "[filter]\ncontent_filter = \"smtp:[127.0.0.1]:10025\"\n";
        let none = parse("");
        let all = parse(smtp);
        let some = parse(&format!("{smtp}domains = [\"Example.ORG\"]\n"));
        // (filter, message already filtered, recipient, goes to the filter)
        let cases = [
            (&none, false, "a@example.org", false),
            (&all, false, "a@example.org", true),
            (&all, false, "a@example.net", true),
            (&all, true, "a@example.org", false),
            (&all, false, "postmaster", true),
            (&some, false, "a@example.org", true),
            (&some, false, "a@EXAMPLE.org.", true),
            (&some, false, "a@example.net", false),
            (&some, false, "a@sub.example.org", false),
            (&some, true, "a@example.org", false),
            (&some, false, "postmaster", false),
        ];
        for (filter, filtered, rcpt, want) in cases {
            let got = content_filter(filter, filtered, rcpt);
            assert_eq!(got.is_some(), want, "{filtered} {rcpt} {filter:?}");
            if want {
                assert_eq!(got, all.content_filter.as_ref());
            }
        }
    }

    #[test]
    fn explain_shows_the_content_filter_step() {
        let dir = tempfile::tempdir().unwrap();
        let filter = "[filter]\ncontent_filter = \"smtp:[127.0.0.1]:10025\"\nreinject_listen = \"127.0.0.1:10026\"\n";
        let hub = router(dir.path(), "hub", &format!("{filter}domains = [\"example.org\"]\n"));
        let want = "\
info@example.org: virtual alias (hash:DIR/virtual line 1, key \"info@example.org\") -> alice@example.org, bob@example.net
  alice@example.org: final recipient
  bob@example.net: final recipient
alice@example.org: content filter: smtp:[127.0.0.1]:10025 (then reinjected on 127.0.0.1:10026, and routed as below)
alice@example.org: maildir: -> example.org (example.org is a local domain); tls=local
bob@example.net: content filter: none (example.net is not in filter.domains)
bob@example.net: smtp: -> example.net (default: MX lookup of the recipient's domain); tls=may (outbound_tls.level)
";
        let text = hub.explain("info@example.org").replace(&dir.path().display().to_string(), "DIR");
        assert_eq!(text, want);
        // Without filter.domains every recipient is filtered; the pipe
        // filter shows its command line.
        let pipe = "[filter]\ncontent_filter = \"pipe:/usr/local/bin/scan -f ${sender} -- ${recipient}\"\n";
        let text = router(dir.path(), "hub", pipe).explain("a@example.net");
        assert!(text.contains("\na@example.net: content filter: pipe:/usr/local/bin/scan -f ${sender} -- ${recipient} (filter.reinject_listen is not set"), "{text}");
        // No filter configured: no filter line at all.
        assert!(!router(dir.path(), "hub", "").explain("a@example.net").contains("content filter"));
    }
}
