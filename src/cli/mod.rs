//! Command-line front ends: the native `posthorn <noun> <verb>` interface,
//! and the names operators already type (`sendmail`, `mailq`, `postqueue`,
//! `postsuper`, `postcat`, `postconf`, `postfix`, `postmap`, `exim`, `exiqgrep`).
//! Front ends are thin: they parse arguments, then ask the daemon over the
//! control socket (every change to the queue) or, for read-only listings,
//! read the spool, and format what comes back.
//!
//! - `mod.rs`: dispatch on the invoked name, the native clap interface,
//!   and a small POSIX `getopt` for the compatibility names.
//! - `select`: choosing queue entries (sender, recipient, age, state, ...).
//! - `act`: operator actions through the daemon, or on the files under the
//!   spool lock when it is down, and the audit log.
//! - `queue`: `posthorn queue list|show|why|delete|hold|release|requeue|bounce|flush`.
//! - `dkim`: `posthorn dkim keygen DOMAIN SELECTOR`.
//! - `import`: `posthorn import postfix|exim [DIR]`, a posthorn.toml from
//!   another MTA's configuration.
//! - `check_client`: `posthorn check-client ADDR [HELO] [FROM]`, what the
//!   internet-facing checks would say about a client.
//! - `check`: `posthorn check`; `postfix`: the daemon's life cycle, and
//!   `posthorn reload`.
//! - one file per compatibility name; `install` makes their symlinks
//!   (`posthorn install-links DIR`).
//! - `manpages`: the manual pages and shell completions the package
//!   installs (`posthorn manpages DIR`, hidden).

pub(crate) mod act;
pub(crate) mod auth;
pub(crate) mod check;
pub(crate) mod check_client;
pub(crate) mod dkim;
pub(crate) mod exim;
pub(crate) mod exiqgrep;
pub(crate) mod import;
pub(crate) mod install;
pub(crate) mod mailq;
pub(crate) mod manpages;
pub(crate) mod postcat;
pub(crate) mod postconf;
pub(crate) mod postfix;
pub(crate) mod postmap;
pub(crate) mod postqueue;
pub(crate) mod postsuper;
pub(crate) mod queue;
pub(crate) mod select;
pub(crate) mod sendmail;
pub(crate) mod tls;
pub(crate) mod verify;

use crate::config::Config;
use clap::{Parser, Subcommand, ValueEnum};
use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

/// sysexits(3) codes, which `sendmail` callers (cron, mail(1)) understand.
pub(crate) mod exit {
    pub(crate) const OK: u8 = 0;
    pub(crate) const USAGE: u8 = 64;
    pub(crate) const DATAERR: u8 = 65;
    pub(crate) const SOFTWARE: u8 = 70;
    pub(crate) const CANTCREAT: u8 = 73;
    pub(crate) const NOPERM: u8 = 77;
    pub(crate) const TEMPFAIL: u8 = 75;
    pub(crate) const CONFIG: u8 = 78;
}

/// The names `posthorn` answers to besides its own; `install-links` makes
/// one symlink for each.
pub(crate) const COMPAT_NAMES: [&str; 12] = [
    "sendmail",
    "mailq",
    "postqueue",
    "postsuper",
    "postcat",
    "postconf",
    "postfix",
    "postmap",
    "exim",
    "exiqgrep",
    "exim4",
    "newaliases",
];

#[derive(Parser)]
#[command(name = "posthorn", version, about = "A mail transfer agent for satellites and hubs")]
#[command(after_help = "Also answers, by the name it is called with or as `posthorn NAME ARGS`, to: \
sendmail, mailq, postqueue, postsuper, postcat, postconf, postfix, postmap, exim, exim4, exiqgrep, newaliases.")]
struct Cli {
    /// Configuration file (default: $POSTHORN_CONFIG, then /etc/posthorn/posthorn.toml,
    /// then a built-in satellite configuration on 127.0.0.1:2525)
    #[arg(short = 'c', long = "config", global = true)]
    config: Option<PathBuf>,
    #[command(subcommand)]
    command: Native,
}

#[derive(Subcommand)]
enum Native {
    /// Run the daemon in the foreground
    Serve {
        /// Log line format on stderr or a log file (overrides `log.format`)
        #[arg(long, value_enum)]
        log_format: Option<LogFormat>,
        /// Where logs go when `log.to` is not set: `stderr` (the default in
        /// the foreground); `postfix start` passes `syslog`
        #[arg(long, hide = true)]
        default_log: Option<String>,
    },
    /// Validate the configuration, its files, the ports and the spool as `serve`
    /// would; exit 1 on anything it would refuse (warnings do not fail)
    Check {
        /// Create the spool and repair its owners and modes, as the daemon
        /// would at start; without it, check changes nothing
        #[arg(long)]
        fix: bool,
    },
    /// Show what the internet-facing checks would say about a client
    ///
    /// Trusted networks, each DNS list (query, answer, weight, score and
    /// the reply), SPF for FROM and HELO, the policy services (asked only
    /// with --ask-policy), milters (not contacted) and pregreet, from the
    /// configuration on disk, without a daemon. Exit status: 0 the client
    /// would be accepted, 1 a check would refuse it, 2 a usage or
    /// configuration error.
    CheckClient {
        /// The client's IP address
        addr: String,
        /// The name it gives in HELO/EHLO
        helo: Option<String>,
        /// Its MAIL FROM address (empty for the null sender)
        from: Option<String>,
        /// Send one RCPT-stage request to the policy services (they may
        /// record it, e.g. postgrey's triplets)
        #[arg(long)]
        ask_policy: bool,
        /// The recipient of that request (default postmaster@ the first
        /// local domain)
        #[arg(long, value_name = "ADDR")]
        rcpt: Option<String>,
    },
    /// Submit a message the way sendmail(1) does (all sendmail options apply)
    Sendmail {
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<OsString>,
    },
    /// Inspect and act on the queue
    Queue {
        #[command(subcommand)]
        verb: queue::Verb,
    },
    /// Make the running daemon read its configuration and tables again (as SIGHUP)
    Reload,
    /// Show how addresses are routed
    Route {
        #[command(subcommand)]
        verb: RouteVerb,
    },
    /// Outbound TLS: the RFC 8460 report of MX deliveries' TLS results
    Tls {
        #[command(subcommand)]
        verb: tls::Verb,
    },
    /// Manage the SMTP AUTH users file
    Auth {
        #[command(subcommand)]
        verb: auth::Verb,
    },
    /// DKIM signing keys
    Dkim {
        #[command(subcommand)]
        verb: dkim::Verb,
    },
    /// Write a posthorn.toml from a Postfix (main.cf, master.cf) or Debian
    /// Exim (update-exim4.conf.conf) configuration; what cannot be carried
    /// over is listed on stderr with file and line
    Import(import::Options),
    /// Create the compatibility symlinks (sendmail, mailq, postqueue, ...) in DIR
    InstallLinks {
        /// Directory for the links, e.g. /usr/local/sbin
        dir: PathBuf,
        /// Replace existing files of the same names
        #[arg(long)]
        force: bool,
    },
    /// The local delivery agent, started by the daemon as root (see
    /// deliver::local_agent); not for people
    #[command(hide = true)]
    LocalAgent {
        /// The agent's settings (JSON), from the daemon's configuration
        settings: String,
    },
    /// Write the manual pages (DIR/man1, man5, man8) and the bash and zsh
    /// completions (DIR/completions), as the package installs them
    #[command(hide = true)]
    Manpages {
        /// Where to write them; created if missing
        dir: PathBuf,
    },
}

#[derive(Subcommand)]
enum RouteVerb {
    /// Every step for ADDRESS: alias expansions, catch-all, final
    /// recipients, and each one's transport and next hop
    Explain {
        /// The recipient address, as a client would give it
        address: String,
    },
}

#[derive(Clone, Copy, ValueEnum)]
enum LogFormat {
    Text,
    Json,
}

/// Entry point: dispatch on the invoked name, then on arguments.
pub fn main(argv: Vec<OsString>) -> ExitCode {
    let name = invoked_name(&argv);
    let rest: Vec<OsString> = argv.iter().skip(1).cloned().collect();
    let code = match compat(&name, &rest) {
        Some(code) => code,
        // `posthorn postqueue -p` is `postqueue -p`.
        None => match rest.first().and_then(|a| a.to_str()).filter(|a| *a != "sendmail") {
            Some(sub) if COMPAT_NAMES.contains(&sub) => compat(sub, &rest[1..]).unwrap_or(exit::SOFTWARE),
            _ => native(argv),
        },
    };
    ExitCode::from(code)
}

fn invoked_name(argv: &[OsString]) -> String {
    argv.first().and_then(|a| Path::new(a).file_name()).and_then(|n| n.to_str()).unwrap_or("posthorn").to_string()
}

/// Runs the compatibility command `name`, or `None` when `name` is not one.
fn compat(name: &str, args: &[OsString]) -> Option<u8> {
    let strings = || args.iter().map(|a| a.to_string_lossy().into_owned()).collect::<Vec<_>>();
    Some(match name {
        "sendmail" => sendmail::main(args, None),
        "mailq" => mailq::main_args(&strings()),
        "postqueue" => postqueue::main(&strings()),
        "postsuper" => postsuper::main(&strings()),
        "postcat" => postcat::main(&strings()),
        "postconf" => postconf::main(&strings()),
        "postfix" => postfix::main(&strings()),
        "postmap" => postmap::main(args),
        "exim" | "exim4" => exim::main(args),
        "newaliases" => sendmail::newaliases_main(&strings()),
        "exiqgrep" => exiqgrep::main(&strings()),
        _ => return None,
    })
}

fn native(argv: Vec<OsString>) -> u8 {
    let cli = match Cli::try_parse_from(&argv) {
        Ok(c) => c,
        Err(e) => {
            let _ = e.print();
            // check-client documents 2 for a usage error (1 is a refusal).
            let check_client = argv.iter().skip(1).any(|a| a == "check-client");
            return match (e.use_stderr(), check_client) {
                (false, _) => exit::OK,
                (true, true) => check_client::ERROR,
                (true, false) => exit::USAGE,
            };
        }
    };
    let explicit = cli.config.as_deref();
    match cli.command {
        Native::Serve { log_format, default_log } => serve(explicit, log_format, default_log.as_deref()),
        Native::Check { fix } => check::main(explicit, fix),
        Native::CheckClient { addr, helo, from, ask_policy, rcpt } => {
            check_client::main(explicit, check_client::Options { addr, helo, from, ask_policy, rcpt })
        }
        Native::Sendmail { args } => sendmail::main(&args, explicit),
        Native::Queue { verb } => queue::main(explicit, verb),
        Native::Reload => match load_config(explicit, "posthorn") {
            Ok(config) => postfix::reload(&config),
            Err(code) => code,
        },
        Native::InstallLinks { dir, force } => install::main(&dir, force),
        Native::Manpages { dir } => manpages::main(&dir),
        Native::LocalAgent { settings } => {
            crate::deliver::local_agent::main(&settings, crate::route::aliases::owners_listing)
        }
        Native::Route { verb: RouteVerb::Explain { address } } => route_explain(explicit, &address),
        Native::Tls { verb } => tls::main(explicit, verb),
        Native::Auth { verb } => auth::main(explicit, verb),
        Native::Dkim { verb } => dkim::main(verb),
        Native::Import(opts) => import::main(explicit, opts),
    }
}

/// `posthorn route explain ADDRESS`, from the tables as they are now.
fn route_explain(explicit: Option<&Path>, address: &str) -> u8 {
    let config = match load_config(explicit, "posthorn route") {
        Ok(c) => c,
        Err(code) => return code,
    };
    match crate::route::router::Router::from_config(&config) {
        Ok(router) => {
            print!("{}", router.explain(address));
            let dane = router.dane_domains(address);
            if !dane.is_empty() {
                // TLSA records are looked up (DNSSEC-validated) as a
                // delivery would; DNS answers are not the tables' business.
                match tokio::runtime::Builder::new_current_thread().enable_all().build() {
                    Ok(rt) => print!("{}", rt.block_on(crate::deliver::dane::explain(&config, &dane))),
                    Err(e) => eprintln!("posthorn route: DANE lookups: {e}"),
                }
            }
            exit::OK
        }
        Err(e) => {
            eprintln!("posthorn route: fatal: {e}");
            exit::CONFIG
        }
    }
}

/// Loads the configuration or prints why not (file, line, key).
pub(crate) fn load_config(explicit: Option<&Path>, prog: &str) -> Result<Config, u8> {
    Config::discover(explicit).map_err(|e| {
        eprintln!("{prog}: fatal: {e}");
        exit::CONFIG
    })
}

/// The configuration file a compatibility `-c` names: Postfix's `-c` takes
/// a directory, so a directory means its `posthorn.toml`.
pub(crate) fn config_arg(value: &str) -> PathBuf {
    let path = PathBuf::from(value);
    if path.is_dir() { path.join("posthorn.toml") } else { path }
}

fn serve(explicit: Option<&Path>, format: Option<LogFormat>, default_log: Option<&str>) -> u8 {
    let mut config = match load_config(explicit, "posthorn") {
        Ok(c) => c,
        Err(code) => return code,
    };
    match format {
        Some(LogFormat::Text) => config.log.format = crate::logging::Format::Text,
        Some(LogFormat::Json) => config.log.format = crate::logging::Format::Json,
        None => {}
    }
    let default_to = match default_log.map(str::parse) {
        None => crate::logging::Destination::Stderr,
        Some(Ok(to)) => to,
        Some(Err(e)) => {
            eprintln!("posthorn: fatal: --default-log: {e}");
            return exit::USAGE;
        }
    };
    if let Some(why) = crate::logging::init(&config.log, default_to) {
        tracing::warn!(service = "master", "{why}");
    }
    let rt = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("posthorn: fatal: cannot start the runtime: {e}");
            return exit::SOFTWARE;
        }
    };
    let to_stderr =
        config.log.to.as_ref().is_none_or(|to| *to == crate::logging::Destination::Stderr) && default_log.is_none();
    match rt.block_on(crate::daemon::serve(config)) {
        Ok(()) => exit::OK,
        Err(e) => {
            tracing::error!(fatal = true, service = "master", "{e:#}");
            // Whoever started it reads stderr; the log may be elsewhere.
            if !to_stderr {
                eprintln!("posthorn: fatal: {e:#}");
            }
            exit::CONFIG
        }
    }
}

/// `postqueue -f`, `sendmail -q`, `posthorn queue flush`, `exim -q`.
pub(crate) fn flush(explicit: Option<&Path>) -> u8 {
    flush_as(explicit, "posthorn")
}

pub(crate) fn flush_as(explicit: Option<&Path>, prog: &str) -> u8 {
    let config = match load_config(explicit, prog) {
        Ok(c) => c,
        Err(code) => return code,
    };
    match crate::control::request_blocking(&config.control_socket(), &crate::control::Request::Flush) {
        Ok(r) if r.ok => exit::OK,
        Ok(r) => {
            eprintln!("{prog}: flush refused: {}", r.message);
            exit::SOFTWARE
        }
        // Not root or the spool's owner (the control socket is theirs
        // alone): the public flush socket, as Postfix lets anyone flush.
        Err(crate::control::ControlError::NotRunning(_)) => match crate::control::flush_public(&config.spool) {
            Ok(_) => exit::OK,
            Err(e) => {
                eprintln!("{prog}: fatal: cannot flush the queue: {e}");
                exit::TEMPFAIL
            }
        },
        Err(e) => {
            eprintln!("{prog}: fatal: cannot flush the queue: {e}");
            exit::TEMPFAIL
        }
    }
}

/// One parsed option: its letter and, for options that take one, its value.
pub(crate) type Opt = (char, Option<String>);

/// POSIX getopt(3): `spec` lists option letters, a `:` after a letter means
/// it takes a value (glued `-dID` or apart `-d ID`). Options end at `--` or
/// at the first operand, as with Postfix's `+` getopt. An error is the
/// message getopt would print.
pub(crate) fn getopt(args: &[String], spec: &str) -> Result<(Vec<Opt>, Vec<String>), String> {
    let mut opts = Vec::new();
    let mut i = 0;
    while i < args.len() {
        let arg = &args[i];
        if arg == "--" {
            i += 1;
            break;
        }
        if !arg.starts_with('-') || arg == "-" {
            break;
        }
        let chars: Vec<char> = arg[1..].chars().collect();
        let mut j = 0;
        while j < chars.len() {
            let c = chars[j];
            let Some(pos) = spec.find(c).filter(|_| c != ':') else {
                return Err(format!("invalid option -- '{c}'"));
            };
            if spec[pos + c.len_utf8()..].starts_with(':') {
                let glued: String = chars[j + 1..].iter().collect();
                let value = if !glued.is_empty() {
                    glued
                } else {
                    i += 1;
                    args.get(i).cloned().ok_or_else(|| format!("option requires an argument -- '{c}'"))?
                };
                opts.push((c, Some(value)));
                break;
            }
            opts.push((c, None));
            j += 1;
        }
        i += 1;
    }
    Ok((opts, args[i.min(args.len())..].to_vec()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn go(args: &[&str], spec: &str) -> Result<(Vec<Opt>, Vec<String>), String> {
        getopt(&args.iter().map(|s| s.to_string()).collect::<Vec<_>>(), spec)
    }

    #[test]
    fn getopt_table() {
        let some = |s: &str| Some(s.to_string());
        type Expected<'a> = Result<(Vec<Opt>, Vec<&'a str>), &'a str>;
        let cases: Vec<(&[&str], Expected)> = vec![
            (&["-d", "ID", "deferred"], Ok((vec![('d', some("ID"))], vec!["deferred"]))),
            (&["-dID", "-v"], Ok((vec![('d', some("ID")), ('v', None)], vec![]))),
            (&["-vd", "ALL"], Ok((vec![('v', None), ('d', some("ALL"))], vec![]))),
            (&["-d", "-"], Ok((vec![('d', some("-"))], vec![]))),
            (&["x", "-v"], Ok((vec![], vec!["x", "-v"]))),
            (&["--", "-v"], Ok((vec![], vec!["-v"]))),
            (&["-Z"], Err("invalid option -- 'Z'")),
            (&["-d"], Err("option requires an argument -- 'd'")),
        ];
        for (args, expected) in cases {
            let expected =
                expected.map(|(o, r)| (o, r.into_iter().map(String::from).collect::<Vec<_>>())).map_err(String::from);
            assert_eq!(go(args, "c:d:h:H:pr:sv"), expected, "{args:?}");
        }
    }

    #[test]
    fn every_compat_name_dispatches() {
        for name in COMPAT_NAMES {
            // Help/usage paths must not touch a spool: an unknown option is
            // a usage error for every name.
            let code = compat(name, &[OsString::from("-Z-bogus")]).expect(name);
            assert_eq!(code, exit::USAGE, "{name}");
        }
    }
}
