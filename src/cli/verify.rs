//! Address verification and alias checks as the classic commands give
//! them: `sendmail -bv`, `exim -bt`, `exim -bv`, and `newaliases`
//! (`sendmail -bi`, `sendmail -I`).
//!
//! Routing comes from the one router the daemon and `posthorn route
//! explain` use (`Router::routes`), read from the tables as they are now;
//! only the wording here is the old programs'.
//!
//! `newaliases` rebuilds nothing: posthorn reads alias files in their text
//! form, and the running daemon picks a changed file up by itself within a
//! second (a file with a bad line is refused and the previous version kept).
//! So it checks each file of `rewrite.alias_maps` and says which lines are
//! bad, file and line; silent and 0 when all is well, as Postfix's is. A
//! fresh install has no alias file, and Debian's maintainer scripts still
//! call `newaliases`: none configured, or a configured one missing, is not
//! an error (the latter is a warning).

use super::exit;
use crate::config::Config;
use crate::route::router::{Decision, Refusal, Router};
use crate::route::table::{Syntax, Table, TableError};
use crate::route::transport::{NextHop, Transport};

/// sendmail's exit status when an address cannot be delivered (EX_NOUSER).
const NOUSER: u8 = 67;

/// Which program's words to use.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Style {
    /// `sendmail -bv`: `ADDR... deliverable: mailer M, host H, user U`.
    Sendmail,
    /// `exim -bt`: the address, then its router, transport and hosts.
    EximTest,
    /// `exim -bv`: `ADDR verified` or `ADDR failed to verify: WHY`.
    EximVerify,
}

/// `sendmail -bv ADDR...`.
pub(crate) fn sendmail_bv(config: &Config, addresses: &[String]) -> u8 {
    verify(config, addresses, Style::Sendmail, "sendmail")
}

/// Routes every address and prints the report in `style`; the exit
/// status is non-zero when any address fails (Exim's 2, sendmail's 67).
pub(crate) fn verify(config: &Config, addresses: &[String], style: Style, prog: &str) -> u8 {
    if addresses.is_empty() {
        eprintln!("{prog}: fatal: no addresses given to verify");
        return exit::USAGE;
    }
    let router = match Router::from_config(config) {
        Ok(r) => r,
        Err(e) => {
            eprintln!("{prog}: fatal: {e}");
            return exit::CONFIG;
        }
    };
    let mut failed = false;
    for address in addresses {
        let qualified = qualify(address, &config.hostname);
        let result = router.routes(&qualified);
        failed |= result.is_err();
        print!("{}", report(config, address, &qualified, &result, style));
    }
    match (failed, style) {
        (false, _) => exit::OK,
        (true, Style::Sendmail) => NOUSER,
        (true, _) => 2,
    }
}

/// A bare local name gets `@hostname`, as a submission would.
fn qualify(address: &str, hostname: &str) -> String {
    let bare = address.trim().trim_start_matches('<').trim_end_matches('>');
    if bare.contains('@') { bare.to_string() } else { format!("{bare}@{hostname}") }
}

/// The lines for one address in `style`.
pub(crate) fn report(
    config: &Config,
    given: &str,
    qualified: &str,
    result: &Result<Vec<(String, Decision)>, Refusal>,
    style: Style,
) -> String {
    let routes = match result {
        Err(r) => {
            let why = format!("{} {}.{}.{} {}", r.code, r.status.0, r.status.1, r.status.2, r.text);
            return match style {
                Style::Sendmail => format!("{given}... {why}\n"),
                Style::EximTest => format!("{qualified} is undeliverable: {why}\n"),
                Style::EximVerify => format!("{qualified} failed to verify: {why}\n"),
            };
        }
        Ok(routes) => routes,
    };
    let mut out = String::new();
    if style == Style::EximVerify {
        out.push_str(&format!("{qualified} verified\n"));
        return out;
    }
    for (rcpt, decision) in routes {
        let hop = Hop::of(config, rcpt, decision);
        match style {
            Style::Sendmail => {
                let user = if hop.mailer == "local" { rcpt.split('@').next().unwrap_or(rcpt) } else { rcpt };
                let host = hop.hosts.first().map(|h| format!(", host {h}")).unwrap_or_default();
                out.push_str(&format!("{rcpt}... deliverable: mailer {}{host}, user {user}\n", hop.mailer));
            }
            _ => {
                out.push_str(&format!("{rcpt}\n"));
                if !rcpt.eq_ignore_ascii_case(qualified) {
                    out.push_str(&format!("    <-- {qualified}\n"));
                }
                out.push_str(&format!("  router = {}, transport = {}\n", hop.router, hop.transport));
                for host in &hop.hosts {
                    out.push_str(&format!("  host {host}\n"));
                }
            }
        }
    }
    out
}

/// One route in the old programs' terms: Sendmail's mailer, Exim's router
/// and transport (the names of Debian's exim4 configuration), and the
/// hosts known before any DNS lookup.
struct Hop {
    mailer: &'static str,
    router: &'static str,
    transport: &'static str,
    hosts: Vec<String>,
}

impl Hop {
    fn of(config: &Config, rcpt: &str, decision: &Decision) -> Hop {
        let domain = rcpt.rsplit_once('@').map_or("", |(_, d)| d);
        match decision {
            Decision::Smarthosts => Hop {
                mailer: "relay",
                router: "smarthost",
                transport: "remote_smtp_smarthost",
                hosts: config.relay.smarthosts.clone(),
            },
            Decision::Next { hop, .. } if hop.transport == Transport::Maildir => {
                Hop { mailer: "local", router: "local_user", transport: "maildir_home", hosts: Vec::new() }
            }
            Decision::Next { hop, .. } if hop.transport == Transport::Local => {
                Hop { mailer: "local", router: "localuser", transport: "local_delivery", hosts: Vec::new() }
            }
            Decision::Next { hop, .. } if hop.transport == Transport::Lmtp => Hop {
                mailer: "lmtp",
                router: "manualroute",
                transport: "lmtp",
                hosts: hop.lmtp_target().map(|t| t.to_string()).into_iter().collect(),
            },
            Decision::Next { hop, .. } if hop.host.is_none() && hop.port.is_none() => {
                Hop { mailer: "esmtp", router: "dnslookup", transport: "remote_smtp", hosts: vec![domain.to_string()] }
            }
            Decision::Next { hop, .. } => Hop {
                mailer: if hop.transport == Transport::Relay { "relay" } else { "esmtp" },
                router: "manualroute",
                transport: "remote_smtp",
                hosts: vec![host_of(hop, domain)],
            },
        }
    }
}

/// `host`, `[host]` (no MX lookup) and `:port` as Postfix writes a nexthop.
fn host_of(hop: &NextHop, domain: &str) -> String {
    let host = hop.destination(domain);
    let host = if hop.mx_lookup { host.to_string() } else { format!("[{host}]") };
    match hop.port {
        Some(port) => format!("{host}:{port}"),
        None => host,
    }
}

/// `newaliases`, `sendmail -bi`, `sendmail -I`: checks every alias file.
pub(crate) fn newaliases(config: &Config, prog: &str) -> u8 {
    let mut code = exit::OK;
    for spec in &config.rewrite.alias_maps {
        match Table::open_str(spec, Syntax::Aliases) {
            Ok(table) => {
                // The :include: files are read when mail comes: checked now.
                let name = table.path().map(|p| p.display().to_string()).unwrap_or_else(|| spec.clone());
                for entry in table.contents().entries() {
                    for item in crate::route::table::split_list(&entry.value) {
                        if let Ok(crate::route::aliases::Target::Include(path)) =
                            crate::route::aliases::parse_target(&item)
                        {
                            for problem in crate::route::rewrite::check_include(&path, 0) {
                                eprintln!("{prog}: error: {name}:{}: {problem}", entry.line);
                                code = 1;
                            }
                        }
                    }
                }
            }
            Err(TableError::Open { path, source }) if source.kind() == std::io::ErrorKind::NotFound => {
                eprintln!("{prog}: warning: {}: no such file; no aliases from it", path.display());
            }
            Err(TableError::Syntax { path, errors }) => {
                for e in &errors {
                    eprintln!("{prog}: error: {}:{}: {}", path.display(), e.line, e.message);
                }
                eprintln!(
                    "{prog}: fatal: {}: {} bad line(s); the file is not used until they are fixed (a running daemon keeps its previous version)",
                    path.display(),
                    errors.len()
                );
                code = 1;
            }
            Err(e) => {
                eprintln!("{prog}: fatal: {e}");
                code = 1;
            }
        }
    }
    code
}
