//! Configuration: one TOML file parsed into a typed `Config`.
//!
//! `role` picks the defaults (satellite or hub); every key can be set
//! explicitly. Errors name the file, the line and the key, because an operator
//! reading "invalid type" without them has to guess. Durations are written
//! `30s`, `5m`, `1h`, `5d`; sizes `50M`, `512k`, or plain numbers.

mod local;
mod milter;
mod mta_sts;
mod outbound_tls;
mod policy;
mod screen;
mod shaping;
mod source;
mod srs;
mod verify;

pub(crate) use local::{HomeMailbox, Local, LocalTransport, home_mailbox_text, local_transport_name, split_extension};
pub(crate) use mta_sts::{MtaSts, TlsReport};
pub(crate) use outbound_tls::OutboundTls;

use crate::message::nexthop::{FilterSpec, Target};
use ipnet::IpNet;
pub(crate) use milter::{DefaultAction, Milter, MilterAddr};
pub(crate) use policy::{PolicyConfig, PolicyStage, PolicyTarget};
pub(crate) use screen::{DnsblSite, ScreenConfig};
use serde::Deserialize;
pub(crate) use shaping::Shaping;
pub(crate) use source::{Protocols, Source};
pub(crate) use srs::Srs;
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::time::Duration;
pub(crate) use verify::{DmarcAction, SpfFailAction, VerifyConfig};

/// Where commands look when neither `-c` nor `POSTHORN_CONFIG` is given.
pub(crate) const DEFAULT_PATH: &str = "/etc/posthorn/posthorn.toml";

#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub(crate) enum Role {
    Satellite,
    Hub,
}

/// TLS policy towards a next hop.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub(crate) enum TlsPolicy {
    None,
    May,
    Encrypt,
    Verify,
    /// `verify` with the certificate checked against names not taken from
    /// DNS (the policy table's `match=`; by default the next hop and its
    /// subdomains), as Postfix's `secure`.
    Secure,
    /// DANE (RFC 7672) when the MX host has secure, usable TLSA records,
    /// else `may`.
    Dane,
    /// DANE required: without secure, usable TLSA records mail waits.
    #[serde(rename = "dane-only")]
    DaneOnly,
}

impl TlsPolicy {
    /// TLS is required: never in clear. (`dane` requires it only once
    /// usable TLSA records are found; `deliver::dane` decides.)
    pub(crate) fn requires_tls(self) -> bool {
        matches!(self, TlsPolicy::Encrypt | TlsPolicy::Verify | TlsPolicy::Secure | TlsPolicy::DaneOnly)
    }

    /// The level looks up TLSA records.
    pub(crate) fn is_dane(self) -> bool {
        matches!(self, TlsPolicy::Dane | TlsPolicy::DaneOnly)
    }

    /// The certificate is checked against trusted CAs and names.
    pub(crate) fn verifies(self) -> bool {
        matches!(self, TlsPolicy::Verify | TlsPolicy::Secure)
    }

    /// The name used in configuration and the policy table.
    pub(crate) fn name(self) -> &'static str {
        match self {
            TlsPolicy::None => "none",
            TlsPolicy::May => "may",
            TlsPolicy::Encrypt => "encrypt",
            TlsPolicy::Verify => "verify",
            TlsPolicy::Secure => "secure",
            TlsPolicy::Dane => "dane",
            TlsPolicy::DaneOnly => "dane-only",
        }
    }
}

/// `smtp.bare_newline`: a message line ending in LF alone.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub(crate) enum BareNewline {
    /// From trusted networks, local submission and the filter's
    /// reinjection: stored as CRLF. From anyone else: refused (550 5.5.2),
    /// since a bare LF is how SMTP smuggling starts.
    Normalize,
    /// Refused from every client.
    Reject,
}

/// The effective configuration, role defaults applied.
#[derive(Clone, Debug)]
pub struct Config {
    /// The file this came from; `None` for the built-in default.
    pub(crate) source: Option<PathBuf>,
    pub(crate) role: Role,
    pub(crate) hostname: String,
    /// The domain unqualified addresses of local submissions get (Postfix's
    /// `myorigin`, Exim's `qualify_domain`); default: the hostname.
    pub(crate) myorigin: String,
    pub(crate) spool: PathBuf,
    /// The account the daemon switches to after binding its ports when it
    /// is started as root (`user`, default `posthorn`; `"root"` keeps root).
    /// `None` (the built-in configuration only): whoever started it.
    pub(crate) user: Option<String>,
    pub(crate) smtp: Smtp,
    pub(crate) access: Access,
    pub(crate) relay: RelayConfig,
    pub(crate) queue: Queue,
    pub(crate) deliver: Deliver,
    pub(crate) outbound_tls: OutboundTls,
    /// `[mta_sts]`: MTA-STS policies for MX delivery (`config/mta_sts.rs`).
    pub(crate) mta_sts: MtaSts,
    /// `[tls_report]`: the record of outbound TLS results (RFC 8460).
    pub(crate) tls_report: TlsReport,
    /// `[local]`: mbox and home mailbox delivery as the user.
    pub(crate) local: Local,
    pub(crate) rewrite: Rewrite,
    pub(crate) tls: Tls,
    pub(crate) auth: Auth,
    pub(crate) filter: Filter,
    pub(crate) milter: Milter,
    pub(crate) dkim: Dkim,
    pub(crate) metrics: MetricsConfig,
    /// `[policy]`: policy delegation (`config/policy.rs`).
    pub(crate) policy: PolicyConfig,
    /// `[screen]`: DNS lists and the pregreet test (`config/screen.rs`).
    pub(crate) screen: ScreenConfig,
    /// `[verify]`: SPF, DKIM and DMARC of incoming mail (`config/verify.rs`).
    pub(crate) verify: VerifyConfig,
    /// `[log]`: where log lines go and how they are written.
    pub(crate) log: crate::logging::Settings,
    /// `[srs]`: sender rewriting for forwarded mail; `None`: off.
    pub(crate) srs: Option<Srs>,
}

/// The metrics and health endpoint (`[metrics]`): Prometheus text format on
/// `/metrics`, `200 ok` on `/health`. Meant for a loopback address.
#[derive(Clone, Debug, Default)]
pub(crate) struct MetricsConfig {
    /// `listen = "127.0.0.1:9325"`; unset (the default): no endpoint.
    /// Read at start only: a change needs a restart.
    pub(crate) listen: Option<SocketAddr>,
}

/// DKIM signing (`[dkim]`): one key per signing domain, and the headers
/// signed (empty: `deliver::dkim::DEFAULT_HEADERS`). Key files are read when
/// the daemon builds a generation, so a bad one refuses the start.
#[derive(Clone, Debug, Default)]
pub(crate) struct Dkim {
    pub(crate) keys: Vec<DkimKeyConfig>,
    pub(crate) headers: Vec<String>,
}

/// `[[dkim.keys]]`: `domain`, `selector`, `key` (PEM file), `algorithm`.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct DkimKeyConfig {
    pub(crate) domain: String,
    pub(crate) selector: String,
    pub(crate) key: PathBuf,
    /// Default: taken from the key file.
    #[serde(default)]
    pub(crate) algorithm: Option<DkimAlgorithm>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize)]
pub(crate) enum DkimAlgorithm {
    #[serde(rename = "rsa-sha256")]
    RsaSha256,
    #[serde(rename = "ed25519-sha256")]
    Ed25519Sha256,
}

/// The after-queue content filter (`[filter]`, Postfix's FILTER_README).
#[derive(Clone, Debug)]
pub(crate) struct Filter {
    /// Where unfiltered mail goes first; `None`: no filter.
    pub(crate) content_filter: Option<FilterSpec>,
    /// The listener the filter sends mail back to; mail arriving there is
    /// marked filtered and never filtered again.
    pub(crate) reinject_listen: Option<SocketAddr>,
    /// How long a pipe filter may run before it is killed (and the message
    /// deferred).
    pub(crate) pipe_timeout: Duration,
    /// Recipient domains whose mail is filtered; empty: all.
    pub(crate) domains: Vec<String>,
}

/// The server's certificate (`[tls]`). Both paths set, or neither: with
/// neither, STARTTLS is not offered. The files are read by the listener
/// (and checked at start and on reload), not here, so that commands run by
/// users who cannot read the key still load the configuration.
#[derive(Clone, Debug, Default)]
pub(crate) struct Tls {
    pub(crate) cert: Option<PathBuf>,
    pub(crate) key: Option<PathBuf>,
    /// CA certificates (PEM): with it the server asks clients for a
    /// certificate, and one issued by these CAs may relay.
    pub(crate) client_ca: Option<PathBuf>,
    /// Name the AUTH user in `Received:` (off: the header would tell every
    /// recipient which account sent the message).
    pub(crate) received_auth_user: bool,
}

impl Tls {
    /// Whether a certificate is configured.
    pub(crate) fn is_configured(&self) -> bool {
        self.cert.is_some()
    }
}

/// SMTP AUTH on the server side (`[auth]`, RFC 4954).
#[derive(Clone, Debug)]
pub(crate) struct Auth {
    /// `user:hash` lines (Argon2id, or SHA-512-crypt from older files); AUTH is offered only when set.
    pub(crate) users: Option<PathBuf>,
    /// Offer AUTH on connections without TLS too.
    pub(crate) allow_plaintext: bool,
    /// Failed attempts from one client address within `failure_window`
    /// after which AUTH from that address is refused until the window ends.
    pub(crate) max_failures: u32,
    pub(crate) failure_window: Duration,
    /// Pause before answering a failed attempt.
    pub(crate) failure_delay: Duration,
}

/// Recipient rewriting tables (Postfix formats).
#[derive(Clone, Debug, Default)]
pub(crate) struct Rewrite {
    /// virtual(5) tables: `hash:/etc/postfix/virtual`.
    pub(crate) virtual_alias_maps: Vec<String>,
    /// aliases(5) files for local names: `/etc/aliases`.
    pub(crate) alias_maps: Vec<String>,
    /// canonical(5) tables for envelope senders (and `From:`), recipients.
    pub(crate) sender_canonical_maps: Vec<String>,
    pub(crate) recipient_canonical_maps: Vec<String>,
    /// Local senders become `user@masquerade_as` (a domain) or exactly
    /// `masquerade_as` (an address); see `route::canonical`.
    pub(crate) masquerade_as: Option<String>,
    /// The domains whose senders are masqueraded; empty: the hostname and
    /// `localhost`.
    pub(crate) masquerade_domains: Vec<String>,
    /// Domains whose every address comes from `virtual_alias_maps`
    /// (Postfix's `virtual_alias_domains`): ours, and an address without
    /// an entry is refused at RCPT.
    pub(crate) virtual_alias_domains: Vec<String>,
}

#[derive(Clone, Debug)]
pub(crate) struct Deliver {
    /// Transport tables (`hash:/etc/posthorn/transport`), searched in order.
    pub(crate) transport_maps: Vec<String>,
    /// Where local mail goes; `{domain}` and `{user}` are replaced.
    pub(crate) maildir_root: String,
    /// DNS servers (`ip:port`) for MX and address lookups; empty means
    /// the system's /etc/resolv.conf.
    pub(crate) dns_servers: Vec<SocketAddr>,
    /// DNSKEY or DS records (zone-file syntax) that DNSSEC validation for
    /// DANE starts from; unset: the root zone's keys built into hickory.
    pub(crate) dnssec_trust_anchor: Option<PathBuf>,
    /// The port MX hosts are contacted on (25; tests change it).
    pub(crate) mx_port: u16,
    /// Connections open at once to one destination (domain or relay host).
    pub(crate) destination_concurrency: usize,
    /// `source_addresses` and `inet_protocols`.
    pub(crate) source: Source,
    /// RFC 8305's "connection attempt delay": how long one address of an
    /// MX host gets to connect before the next is tried alongside it.
    pub(crate) connection_attempt_delay: Duration,
    /// `[[deliver.shaping]]`: per-destination limits.
    pub(crate) shaping: Vec<Shaping>,
}

#[derive(Clone, Debug)]
pub(crate) struct Smtp {
    pub(crate) listen: Vec<SocketAddr>,
    /// Submission listeners (RFC 6409, port 587): STARTTLS offered, AUTH
    /// required before MAIL.
    pub(crate) submission: Vec<SocketAddr>,
    /// Implicit-TLS submission listeners (RFC 8314, port 465): TLS from the
    /// first byte, AUTH required before MAIL.
    pub(crate) submissions: Vec<SocketAddr>,
    pub(crate) max_message_size: u64,
    pub(crate) max_recipients: usize,
    pub(crate) max_connections: usize,
    /// Connections the kernel holds for each listener while all
    /// `max_connections` slots are taken (the `listen(2)` backlog, capped
    /// by `net.core.somaxconn`): they wait there, unanswered, until a
    /// session ends, instead of getting 421.
    pub(crate) listen_backlog: u32,
    /// Longest command line accepted, CRLF included (RFC 5321 4.5.3.1.4 says
    /// 512 at least; ESMTP parameters need more).
    pub(crate) max_line_length: usize,
    /// Longest text line inside DATA, CRLF included (RFC 5321: 1000 at least).
    pub(crate) max_data_line_length: usize,
    /// Connections one client (an IPv4 address, an IPv6 /64) may have open
    /// at once on a listener (Postfix `smtpd_client_connection_count_limit`);
    /// 0: no limit. Clients in `access.trusted_networks` are exempt.
    pub(crate) client_connection_limit: u32,
    /// New connections one client may open per minute on a listener
    /// (Postfix `smtpd_client_connection_rate_limit`), refused ones
    /// included; 0: no limit. The default, 600 (ten a second), is far above
    /// what a mail client needs and only stops a connection flood. Trusted
    /// networks are exempt.
    pub(crate) client_connection_rate_limit: u32,
    /// Of `max_connections`, the slots only clients in
    /// `access.trusted_networks` may take: others are admitted only while
    /// more than this many are free, so that untrusted clients, from
    /// however many addresses, can never lock a trusted satellite out.
    /// Default: a tenth of `max_connections`; must be less than it.
    pub(crate) trusted_reserve: usize,
    /// Deadline for one command line, however it is dribbled in (and for
    /// writing the replies to a client that does not read them).
    pub(crate) command_timeout: Duration,
    /// Time allowed between two reads during DATA and BDAT.
    pub(crate) data_timeout: Duration,
    /// Deadline for the text of one message: from the 354 to the final dot,
    /// or from the first BDAT chunk to the end of the LAST one. A separate
    /// key rather than a rescaled `data_timeout`, so that the idle limit
    /// keeps its meaning and cuts a stalled client early. Default 30
    /// minutes: a message of the default 50M size limit needs 30 kB/s,
    /// while a client sending a byte per `data_timeout` gets nowhere near.
    /// Raise it with `max_message_size` for slow links.
    pub(crate) data_deadline: Duration,
    /// Deadline for a TLS handshake (STARTTLS, or the first bytes on a
    /// submissions port). Default 10 s: a real client takes milliseconds.
    pub(crate) tls_handshake_timeout: Duration,
    /// Lines that repeat for one client (refused connections, RCPTs over
    /// `max_recipients`) are logged once per this interval, then
    /// summarised ("N more suppressed").
    pub(crate) repeat_log_interval: Duration,
    /// Error replies (4xx and 5xx) after which the session is closed with 421.
    pub(crate) max_errors: u32,
    /// `Received:` fields a message may carry in; one more is a mail loop
    /// (Postfix `hopcount_limit`).
    pub(crate) hopcount_limit: usize,
    /// What a bare LF in message text gets (Postfix
    /// `smtpd_forbid_bare_newline`, whose 3.9 default this follows).
    pub(crate) bare_newline: BareNewline,
}

#[derive(Clone, Debug)]
pub(crate) struct Access {
    pub(crate) trusted_networks: Vec<IpNet>,
    pub(crate) relay_domains: Vec<String>,
    pub(crate) local_domains: Vec<String>,
    /// Tables of known local users; empty: any user of a local domain.
    pub(crate) local_recipient_maps: Vec<String>,
    /// SHA-256 fingerprints (hex, colons allowed) of client certificates
    /// that may relay, besides those issued by `tls.client_ca`.
    pub(crate) trusted_fingerprints: Vec<String>,
    /// Certificate DNS name -> the sender patterns (`*@domain`, or an
    /// address) a client presenting it may use in MAIL FROM.
    pub(crate) client_cert_senders: Vec<(String, Vec<String>)>,
    /// `rewrite.virtual_alias_domains`, copied here so that the relay rule
    /// takes mail for them from anyone, as for relay and local domains.
    pub(crate) virtual_alias_domains: Vec<String>,
}

impl Access {
    /// Whether `ip` is in `trusted_networks`. An IPv4-mapped IPv6 address
    /// (an IPv4 client as a dual-stack listener sees it) counts as the IPv4
    /// address, so `10.0.0.0/8` covers `::ffff:10.1.2.3`.
    pub(crate) fn trusts(&self, ip: IpAddr) -> bool {
        let ip = ip.to_canonical();
        self.trusted_networks.iter().any(|net| net.contains(&ip))
    }
}

#[derive(Clone, Debug)]
pub(crate) struct RelayConfig {
    /// `host:port` strings in priority order; `[host]` brackets allowed.
    pub(crate) smarthosts: Vec<String>,
    pub(crate) tls: TlsPolicy,
    /// CA certificates (PEM) that `verify` checks the smarthost against,
    /// instead of the system roots.
    pub(crate) tls_ca: Option<PathBuf>,
    /// Certificate chain and key (PEM) presented to the smarthosts when
    /// they ask for one (client-certificate trust on the hub).
    pub(crate) tls_client_cert: Option<PathBuf>,
    pub(crate) tls_client_key: Option<PathBuf>,
    /// `user:password` for AUTH towards the smarthosts.
    pub(crate) auth_file: Option<PathBuf>,
    /// Send the credentials on a connection without TLS.
    pub(crate) auth_plaintext: bool,
    /// Send the credentials over TLS whose certificate was not verified
    /// (`tls = "may"` or `"encrypt"`): anyone in the path could present a
    /// certificate of its own and collect them.
    pub(crate) auth_unverified: bool,
    pub(crate) connect_timeout: Duration,
    /// Connections open at once to the smarthosts.
    pub(crate) max_connections: usize,
    /// How long an idle connection is kept for reuse.
    pub(crate) idle_timeout: Duration,
}

#[derive(Clone, Debug)]
pub(crate) struct Queue {
    pub(crate) retry_min: Duration,
    pub(crate) retry_max: Duration,
    pub(crate) max_lifetime: Duration,
    pub(crate) delay_warning: Option<Duration>,
    /// Messages in delivery at once; the rest waits on disk.
    pub(crate) active_limit: usize,
    /// How often the maildrop is scanned even without a wake-up.
    pub(crate) pickup_interval: Duration,
    /// Delivery status notifications per sender per hour, at most.
    pub(crate) bounce_rate_limit: usize,
    /// How accepted mail is made durable: `batch` (one syncfs per group
    /// commit) or `per-file` (fdatasync of every file, as Postfix does).
    pub(crate) sync: SyncMode,
    /// Free space the spool keeps for deferrals and bounces (Postfix's
    /// `queue_minfree`): below it new mail is refused with `452 4.3.1` and
    /// the maildrop waits. `None`: the default, 100 MiB but never more than
    /// 5% of the spool's filesystem (see `spool::space`).
    pub(crate) min_free: Option<u64>,
}

/// How the spool makes file contents durable (`queue.sync`): one `syncfs`
/// per group commit (`batch`), or an `fdatasync` of every file
/// (`per-file`); `spool::commit` carries it out.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub(crate) enum SyncMode {
    Batch,
    PerFile,
}

/// A network as written in the configuration: CIDR notation, or a bare
/// address for that one host (/32, /128).
fn parse_network(s: &str) -> Result<IpNet, String> {
    if let Ok(net) = s.parse::<IpNet>() {
        return Ok(net);
    }
    match s.split_once('/') {
        None => s.parse::<IpAddr>().map(IpNet::from).map_err(|_| format!("`{s}` is not an IP network")),
        Some((addr, _)) if addr.parse::<IpAddr>().is_ok() => Err(format!("`{s}`: bad prefix length")),
        Some(_) => Err(format!("`{s}` is not an IP network")),
    }
}

/// A configuration error, already formatted as `file:line: key: message`.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct ConfigError(pub String);

impl Config {
    /// Finds and loads the configuration: `-c PATH`, then `POSTHORN_CONFIG`,
    /// then the default path; with none of them present, the built-in
    /// default (satellite on 127.0.0.1:2525, spool in ./posthorn-spool).
    pub(crate) fn discover(explicit: Option<&Path>) -> Result<Config, ConfigError> {
        match Config::locate(explicit) {
            Some(p) => Config::load(&p),
            None => Ok(Config::builtin()),
        }
    }

    /// The file `discover` reads; `None`: the built-in configuration.
    pub(crate) fn locate(explicit: Option<&Path>) -> Option<PathBuf> {
        if let Some(p) = explicit {
            return Some(p.to_path_buf());
        }
        if let Some(p) = std::env::var_os("POSTHORN_CONFIG").filter(|p| !p.is_empty()) {
            return Some(PathBuf::from(p));
        }
        Some(PathBuf::from(DEFAULT_PATH)).filter(|p| p.exists())
    }

    /// The configuration used when no file exists: works on loopback, no root.
    pub(crate) fn builtin() -> Config {
        let raw = Raw {
            spool: Some(PathBuf::from("posthorn-spool")),
            smtp: RawSmtp { listen: Some(vec!["127.0.0.1:2525".into()]), ..RawSmtp::default() },
            ..Raw::default()
        };
        Config::resolve(raw, None).expect("the built-in configuration is valid")
    }

    pub(crate) fn load(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|e| {
            ConfigError(format!("{}: cannot read: {}", path.display(), crate::message::outcome::strerror(&e)))
        })?;
        Config::parse(&text, path)
    }

    /// Parses `text` as if read from `path` (used in error messages).
    pub fn parse(text: &str, path: &Path) -> Result<Config, ConfigError> {
        let de = toml::Deserializer::parse(text).map_err(|e| located(path, text, None, &e))?;
        let raw: Raw = serde_path_to_error::deserialize(de).map_err(|e| {
            let key = e.path().to_string();
            located(path, text, Some(key), e.inner())
        })?;
        let mut config = Config::resolve(raw, Some((path, text)))?;
        // Relative spool paths are relative to the working directory, as
        // every other MTA treats them; nothing to do here.
        config.source = Some(path.to_path_buf());
        Ok(config)
    }

    /// Applies the defaults to the file as written and checks what the
    /// types alone cannot. Each section has its own function, which holds
    /// its keys' defaults; the role is passed to those whose defaults differ.
    fn resolve(raw: Raw, file: Option<(&Path, &str)>) -> Result<Config, ConfigError> {
        let path = file.map(|(p, _)| p);
        let err = |key: &str, msg: String| match file {
            Some((path, text)) => match line_of(text, key) {
                Some(line) => ConfigError(format!("{}:{line}: {key}: {msg}", path.display())),
                None => ConfigError(format!("{}: {key}: {msg}", path.display())),
            },
            None => ConfigError(format!("built-in configuration: {key}: {msg}")),
        };
        let role = raw.role.unwrap_or(Role::Satellite);
        let hostname = raw.hostname.unwrap_or_else(system_hostname);
        let myorigin = match raw.myorigin.map(|o| o.trim().trim_end_matches('.').to_string()) {
            Some(o) if o.is_empty() || o.contains(['@', ' ']) => {
                return Err(err("myorigin", format!("`{o}` is not a domain")));
            }
            Some(o) => o,
            None => hostname.clone(),
        };
        let rewrite = resolve_rewrite(raw.rewrite);
        let mut access = resolve_access(raw.access, role, &hostname, &err)?;
        access.virtual_alias_domains = rewrite.virtual_alias_domains.clone();
        let srs = srs::resolve_srs(raw.srs, &access, &err)?;
        Ok(Config {
            source: path.map(Path::to_path_buf),
            role,
            myorigin,
            hostname: hostname.clone(),
            spool: raw.spool.unwrap_or_else(|| PathBuf::from("/var/spool/posthorn")),
            user: resolve_user(raw.user, path.is_none(), &err)?,
            smtp: resolve_smtp(raw.smtp, role, &err)?,
            access,
            relay: resolve_relay(raw.relay, &err)?,
            queue: resolve_queue(raw.queue, &err)?,
            deliver: resolve_deliver(raw.deliver, &err)?,
            outbound_tls: outbound_tls::resolve(raw.outbound_tls, &err)?,
            mta_sts: mta_sts::resolve_mta_sts(raw.mta_sts, &err)?,
            tls_report: mta_sts::resolve_tls_report(raw.tls_report, &err)?,
            local: local::resolve_local(raw.local, &err)?,
            rewrite,
            tls: resolve_tls(raw.tls, &err)?,
            auth: resolve_auth(raw.auth),
            filter: resolve_filter(raw.filter, &err)?,
            milter: milter::resolve_milter(raw.milter, &err)?,
            dkim: resolve_dkim(raw.dkim),
            metrics: resolve_metrics(raw.metrics, &err)?,
            policy: policy::resolve_policy(raw.policy, &err)?,
            screen: screen::resolve_screen(raw.screen, &err)?,
            verify: verify::resolve_verify(raw.verify, &hostname, &err)?,
            log: resolve_log(raw.log, &err)?,
            srs,
        })
    }

    /// The control socket the commands use to reach the daemon.
    pub(crate) fn control_socket(&self) -> PathBuf {
        self.spool.join("control.sock")
    }
}

fn lower(list: Vec<String>) -> Vec<String> {
    list.into_iter().map(|d| d.trim_end_matches('.').to_ascii_lowercase()).collect()
}

/// The system's host name, as `uname` reports it.
pub(crate) fn system_hostname() -> String {
    let uts = rustix::system::uname();
    let name = uts.nodename().to_string_lossy().into_owned();
    if name.is_empty() { "localhost".into() } else { name }
}

/// The line (from 1) where `text` sets the dotted `key`: under its
/// `[section]` header, or written dotted in full. For errors found after
/// parsing, when the parser's position is gone.
fn line_of(text: &str, key: &str) -> Option<usize> {
    let mut table = String::new();
    for (n, line) in text.lines().enumerate() {
        let line = line.trim();
        if let Some(header) = line.strip_prefix('[') {
            table = header.trim_start_matches('[').split(']').next().unwrap_or("").trim().to_string();
            continue;
        }
        let Some((name, _)) = line.split_once('=') else { continue };
        let name: String = name.split('.').map(|p| p.trim().trim_matches('"')).collect::<Vec<_>>().join(".");
        let full = if table.is_empty() { name } else { format!("{table}.{name}") };
        if full == key {
            return Some(n + 1);
        }
    }
    None
}

/// serde's words for a value's type, in an operator's: "expected usize"
/// means nothing to someone who writes a configuration file.
fn plain_words(message: &str) -> String {
    let mut out = message.to_string();
    for (rust, plain) in [
        ("expected usize", "expected a whole number"),
        ("expected u64", "expected a whole number"),
        ("expected u32", "expected a whole number"),
        ("expected u16", "expected a whole number from 0 to 65535"),
        ("expected u8", "expected a whole number from 0 to 255"),
        ("expected i64", "expected a number"),
        ("expected a sequence", "expected a list ([...])"),
        ("expected a map", "expected a table"),
    ] {
        out = out.replace(rust, plain);
    }
    out
}

/// Formats a TOML or value error as `file:line: key: message`.
fn located(path: &Path, text: &str, key: Option<String>, e: &toml::de::Error) -> ConfigError {
    let line = e.span().map(|s| text[..s.start.min(text.len())].matches('\n').count() + 1);
    let mut out = path.display().to_string();
    if let Some(line) = line {
        out.push_str(&format!(":{line}"));
    }
    if let Some(key) = key.filter(|k| k != ".") {
        out.push_str(&format!(": {key}"));
    }
    out.push_str(": ");
    out.push_str(&plain_words(e.message().trim()));
    ConfigError(out)
}

/// A duration written `30s`, `5m`, `1h`, `2d`, `1w`, or a number of seconds.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Dur(pub Duration);

impl std::str::FromStr for Dur {
    type Err = String;
    fn from_str(s: &str) -> Result<Dur, String> {
        let s = s.trim();
        let split = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
        let (num, unit) = s.split_at(split);
        let n: u64 = num.parse().map_err(|_| format!("`{s}` is not a duration (like 30s, 5m, 1h, 5d)"))?;
        let mult = match unit {
            "" | "s" => 1,
            "m" => 60,
            "h" => 3600,
            "d" => 86400,
            "w" => 7 * 86400,
            "ms" => return Ok(Dur(Duration::from_millis(n))),
            _ => return Err(format!("`{s}` is not a duration (like 30s, 5m, 1h, 5d)")),
        };
        Ok(Dur(Duration::from_secs(n.saturating_mul(mult))))
    }
}

/// A byte size written `50M`, `512k`, `1G`, or a number of bytes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Size(pub u64);

impl std::str::FromStr for Size {
    type Err = String;
    fn from_str(s: &str) -> Result<Size, String> {
        let s = s.trim();
        let split = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
        let (num, unit) = s.split_at(split);
        let n: u64 = num.parse().map_err(|_| format!("`{s}` is not a size (like 50M, 512k)"))?;
        let mult = match unit.to_ascii_lowercase().as_str() {
            "" | "b" => 1,
            "k" | "kb" => 1 << 10,
            "m" | "mb" => 1 << 20,
            "g" | "gb" => 1 << 30,
            _ => return Err(format!("`{s}` is not a size (like 50M, 512k)")),
        };
        Ok(Size(n.saturating_mul(mult)))
    }
}

/// Accepts a string (`"5m"`) or an integer (seconds / bytes).
macro_rules! string_or_number {
    ($t:ty) => {
        impl<'de> Deserialize<'de> for $t {
            fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<$t, D::Error> {
                #[derive(Deserialize)]
                #[serde(untagged)]
                enum Either {
                    S(String),
                    N(u64),
                }
                match Either::deserialize(d)? {
                    Either::S(s) => s.parse().map_err(serde::de::Error::custom),
                    Either::N(n) => n.to_string().parse().map_err(serde::de::Error::custom),
                }
            }
        }
    };
}
string_or_number!(Dur);
string_or_number!(Size);

// The file as written, and how it becomes a `Config`: each section's keys
// (`RawX`: every key optional, unknown keys refused), then `resolve_x`,
// which holds that section's defaults and the checks the types cannot make.

/// Makes the `file: key: message` error for a value that parsed but is not
/// valid; past parsing, the line is no longer known.
type KeyError<'a> = dyn Fn(&str, String) -> ConfigError + 'a;

fn socket_addr(s: &str, key: &str, err: &KeyError) -> Result<SocketAddr, ConfigError> {
    s.parse::<SocketAddr>().map_err(|_| err(key, format!("`{s}` is not an address:port")))
}

fn socket_addrs(list: Vec<String>, key: &str, err: &KeyError) -> Result<Vec<SocketAddr>, ConfigError> {
    list.iter().map(|s| socket_addr(s, key, err)).collect()
}

#[derive(Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct Raw {
    role: Option<Role>,
    hostname: Option<String>,
    myorigin: Option<String>,
    spool: Option<PathBuf>,
    user: Option<String>,
    #[serde(default)]
    smtp: RawSmtp,
    #[serde(default)]
    access: RawAccess,
    #[serde(default)]
    relay: RawRelay,
    #[serde(default)]
    queue: RawQueue,
    #[serde(default)]
    rewrite: RawRewrite,
    #[serde(default)]
    deliver: RawDeliver,
    #[serde(default)]
    outbound_tls: outbound_tls::RawOutboundTls,
    #[serde(default)]
    mta_sts: mta_sts::RawMtaSts,
    #[serde(default)]
    tls_report: mta_sts::RawTlsReport,
    #[serde(default)]
    local: local::RawLocal,
    #[serde(default)]
    tls: RawTls,
    #[serde(default)]
    auth: RawAuth,
    #[serde(default)]
    filter: RawFilter,
    #[serde(default)]
    milter: milter::RawMilter,
    #[serde(default)]
    dkim: RawDkim,
    #[serde(default)]
    metrics: RawMetrics,
    #[serde(default)]
    policy: policy::RawPolicy,
    #[serde(default)]
    screen: screen::RawScreen,
    #[serde(default)]
    verify: verify::RawVerify,
    #[serde(default)]
    log: RawLog,
    #[serde(default)]
    srs: srs::RawSrs,
}

/// `user`: the daemon's account.
fn resolve_user(raw: Option<String>, builtin: bool, err: &KeyError) -> Result<Option<String>, ConfigError> {
    match raw {
        Some(name) if name.is_empty() || name.contains(['/', ':', '\n']) => {
            Err(err("user", format!("`{name}` is not a user name")))
        }
        Some(name) => Ok(Some(name)),
        // The built-in configuration is for trying posthorn out as
        // whoever runs it; a configuration file means an install.
        None if builtin => Ok(None),
        None => Ok(Some("posthorn".into())),
    }
}

#[derive(Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawMetrics {
    listen: Option<String>,
}

fn resolve_metrics(raw: RawMetrics, err: &KeyError) -> Result<MetricsConfig, ConfigError> {
    Ok(MetricsConfig { listen: raw.listen.map(|s| socket_addr(&s, "metrics.listen", err)).transpose()? })
}

#[derive(Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawLog {
    to: Option<String>,
    format: Option<String>,
    syslog_name: Option<String>,
    syslog_facility: Option<String>,
    syslog_format: Option<String>,
    syslog_socket: Option<PathBuf>,
    journald_socket: Option<PathBuf>,
}

fn resolve_log(raw: RawLog, err: &KeyError) -> Result<crate::logging::Settings, ConfigError> {
    use crate::logging::{Facility, Format, Settings};
    let mut log = Settings::default();
    if let Some(to) = raw.to {
        log.to = Some(to.parse().map_err(|e| err("log.to", e))?);
    }
    log.format = match raw.format.as_deref() {
        None | Some("text") => Format::Text,
        Some("json") => Format::Json,
        Some(other) => return Err(err("log.format", format!("`{other}` is not text or json"))),
    };
    if let Some(name) = raw.syslog_name {
        let ok = !name.is_empty()
            && name.len() <= 32
            && name.bytes().all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b));
        if !ok {
            return Err(err("log.syslog_name", format!("`{name}` is not a syslog name (letters, digits, - _ .)")));
        }
        log.syslog_name = name;
    }
    if let Some(name) = raw.syslog_facility {
        log.facility = Facility::from_name(&name).ok_or_else(|| {
            err("log.syslog_facility", format!("`{name}` is not mail, daemon, user or local0..local7"))
        })?;
    }
    log.rfc5424 = match raw.syslog_format.as_deref() {
        None | Some("rfc3164") => false,
        Some("rfc5424") => true,
        Some(other) => return Err(err("log.syslog_format", format!("`{other}` is not rfc3164 or rfc5424"))),
    };
    if let Some(p) = raw.syslog_socket {
        log.syslog_socket = p;
    }
    if let Some(p) = raw.journald_socket {
        log.journald_socket = p;
    }
    Ok(log)
}

#[derive(Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawDkim {
    keys: Option<Vec<DkimKeyConfig>>,
    headers: Option<Vec<String>>,
}

fn resolve_dkim(raw: RawDkim) -> Dkim {
    Dkim { keys: raw.keys.unwrap_or_default(), headers: raw.headers.unwrap_or_default() }
}

#[derive(Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawFilter {
    content_filter: Option<String>,
    reinject_listen: Option<String>,
    pipe_timeout: Option<Dur>,
    domains: Option<Vec<String>>,
}

fn resolve_filter(raw: RawFilter, err: &KeyError) -> Result<Filter, ConfigError> {
    Ok(Filter {
        content_filter: match &raw.content_filter {
            Some(s) if !s.trim().is_empty() => Some(s.parse().map_err(|m| err("filter.content_filter", m))?),
            _ => None,
        },
        reinject_listen: raw.reinject_listen.map(|s| socket_addr(&s, "filter.reinject_listen", err)).transpose()?,
        pipe_timeout: raw.pipe_timeout.map(|d| d.0).unwrap_or(Duration::from_secs(300)),
        domains: lower(raw.domains.unwrap_or_default()),
    })
}

#[derive(Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawSmtp {
    listen: Option<Vec<String>>,
    submission: Option<Vec<String>>,
    submissions: Option<Vec<String>>,
    max_message_size: Option<Size>,
    max_recipients: Option<usize>,
    max_connections: Option<usize>,
    listen_backlog: Option<u32>,
    max_line_length: Option<usize>,
    max_data_line_length: Option<usize>,
    client_connection_limit: Option<u32>,
    client_connection_rate_limit: Option<u32>,
    trusted_reserve: Option<usize>,
    command_timeout: Option<Dur>,
    data_timeout: Option<Dur>,
    data_deadline: Option<Dur>,
    tls_handshake_timeout: Option<Dur>,
    repeat_log_interval: Option<Dur>,
    max_errors: Option<u32>,
    hopcount_limit: Option<usize>,
    bare_newline: Option<BareNewline>,
}

fn resolve_smtp(raw: RawSmtp, role: Role, err: &KeyError) -> Result<Smtp, ConfigError> {
    let max_connections = raw
        .max_connections
        .unwrap_or(match role {
            Role::Hub => 500,
            Role::Satellite => 100,
        })
        .max(1);
    let trusted_reserve = raw.trusted_reserve.unwrap_or(max_connections / 10);
    if trusted_reserve >= max_connections {
        let why =
            format!("{trusted_reserve} leaves no slot of smtp.max_connections ({max_connections}) to anyone else");
        return Err(err("smtp.trusted_reserve", why));
    }
    Ok(Smtp {
        listen: match raw.listen {
            Some(list) => socket_addrs(list, "smtp.listen", err)?,
            // A satellite serves its own machine only.
            None => match role {
                Role::Hub => vec![SocketAddr::from(([0, 0, 0, 0], 25))],
                Role::Satellite => vec![SocketAddr::from(([127, 0, 0, 1], 25))],
            },
        },
        submission: socket_addrs(raw.submission.unwrap_or_default(), "smtp.submission", err)?,
        submissions: socket_addrs(raw.submissions.unwrap_or_default(), "smtp.submissions", err)?,
        max_message_size: raw.max_message_size.map(|s| s.0).unwrap_or(50 << 20),
        max_recipients: raw.max_recipients.unwrap_or(1000).max(1),
        max_connections,
        listen_backlog: raw.listen_backlog.unwrap_or(1024).max(1),
        client_connection_limit: raw.client_connection_limit.unwrap_or(50),
        client_connection_rate_limit: raw.client_connection_rate_limit.unwrap_or(600),
        trusted_reserve,
        max_line_length: raw.max_line_length.unwrap_or(2048).max(512),
        max_data_line_length: raw.max_data_line_length.unwrap_or(8192).max(1000),
        command_timeout: raw.command_timeout.map(|d| d.0).unwrap_or(Duration::from_secs(300)),
        data_timeout: raw.data_timeout.map(|d| d.0).unwrap_or(Duration::from_secs(600)),
        data_deadline: raw.data_deadline.map(|d| d.0).unwrap_or(Duration::from_secs(1800)),
        tls_handshake_timeout: raw.tls_handshake_timeout.map(|d| d.0).unwrap_or(Duration::from_secs(10)),
        repeat_log_interval: raw.repeat_log_interval.map(|d| d.0).unwrap_or(Duration::from_secs(60)),
        max_errors: raw.max_errors.unwrap_or(20),
        hopcount_limit: raw.hopcount_limit.unwrap_or(50),
        bare_newline: raw.bare_newline.unwrap_or(BareNewline::Normalize),
    })
}

#[derive(Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawAccess {
    trusted_networks: Option<Vec<String>>,
    relay_domains: Option<Vec<String>>,
    local_domains: Option<Vec<String>>,
    local_recipient_maps: Option<Vec<String>>,
    trusted_fingerprints: Option<Vec<String>>,
    client_cert_senders: Option<std::collections::BTreeMap<String, Vec<String>>>,
}

fn resolve_access(raw: RawAccess, role: Role, hostname: &str, err: &KeyError) -> Result<Access, ConfigError> {
    let trusted_networks = match raw.trusted_networks {
        Some(list) => list
            .iter()
            .map(|s| parse_network(s).map_err(|m| err("access.trusted_networks", m)))
            .collect::<Result<Vec<_>, _>>()?,
        None => vec!["127.0.0.0/8".parse().unwrap(), "::1/128".parse().unwrap()],
    };
    Ok(Access {
        trusted_networks,
        relay_domains: lower(raw.relay_domains.unwrap_or_default()),
        // A hub is the final destination for its own name, as Postfix's
        // default `mydestination` has it; a satellite relays even those to
        // its hub.
        local_domains: lower(raw.local_domains.unwrap_or_else(|| match role {
            Role::Hub => vec![hostname.to_string(), "localhost".into()],
            Role::Satellite => Vec::new(),
        })),
        local_recipient_maps: raw.local_recipient_maps.unwrap_or_default(),
        trusted_fingerprints: raw.trusted_fingerprints.unwrap_or_default(),
        client_cert_senders: raw
            .client_cert_senders
            .unwrap_or_default()
            .into_iter()
            .map(|(name, senders)| (name.trim_end_matches('.').to_ascii_lowercase(), senders))
            .collect(),
        virtual_alias_domains: Vec::new(),
    })
}

#[derive(Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRelay {
    smarthosts: Option<Vec<String>>,
    tls: Option<TlsPolicy>,
    tls_ca: Option<PathBuf>,
    tls_client_cert: Option<PathBuf>,
    tls_client_key: Option<PathBuf>,
    auth_file: Option<PathBuf>,
    auth_plaintext: Option<bool>,
    auth_unverified: Option<bool>,
    connect_timeout: Option<Dur>,
    max_connections: Option<usize>,
    idle_timeout: Option<Dur>,
}

fn resolve_relay(raw: RawRelay, err: &KeyError) -> Result<RelayConfig, ConfigError> {
    if raw.tls_client_cert.is_some() != raw.tls_client_key.is_some() {
        let (set, missing) = if raw.tls_client_cert.is_some() {
            ("tls_client_cert", "relay.tls_client_key")
        } else {
            ("tls_client_key", "relay.tls_client_cert")
        };
        return Err(err(missing, format!("must be set together with relay.{set}")));
    }
    for host in raw.smarthosts.iter().flatten() {
        Target::host_port(host, 25).map_err(|m| err("relay.smarthosts", m))?;
    }
    Ok(RelayConfig {
        smarthosts: raw.smarthosts.unwrap_or_default(),
        tls: match raw.tls {
            // A smarthost is not found through MX records, so DANE's chain
            // of trust does not reach it; the policy table may still name
            // one per host.
            Some(l) if l.is_dane() => {
                return Err(err("relay.tls", format!("`{}` applies to MX delivery (outbound_tls.level)", l.name())));
            }
            l => l.unwrap_or(TlsPolicy::May),
        },
        tls_ca: raw.tls_ca,
        tls_client_cert: raw.tls_client_cert,
        tls_client_key: raw.tls_client_key,
        auth_file: raw.auth_file,
        auth_plaintext: raw.auth_plaintext.unwrap_or(false),
        auth_unverified: raw.auth_unverified.unwrap_or(false),
        connect_timeout: raw.connect_timeout.map(|d| d.0).unwrap_or(Duration::from_secs(30)),
        max_connections: raw.max_connections.unwrap_or(20).max(1),
        idle_timeout: raw.idle_timeout.map(|d| d.0).unwrap_or(Duration::from_secs(10)),
    })
}

#[derive(Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawTls {
    cert: Option<PathBuf>,
    key: Option<PathBuf>,
    received_auth_user: Option<bool>,
    client_ca: Option<PathBuf>,
}

fn resolve_tls(raw: RawTls, err: &KeyError) -> Result<Tls, ConfigError> {
    if raw.cert.is_some() != raw.key.is_some() {
        let (set, missing) = if raw.cert.is_some() { ("cert", "tls.key") } else { ("key", "tls.cert") };
        return Err(err(missing, format!("must be set together with tls.{set}")));
    }
    Ok(Tls {
        cert: raw.cert,
        key: raw.key,
        received_auth_user: raw.received_auth_user.unwrap_or(false),
        client_ca: raw.client_ca,
    })
}

#[derive(Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawAuth {
    users: Option<PathBuf>,
    allow_plaintext: Option<bool>,
    max_failures: Option<u32>,
    failure_window: Option<Dur>,
    failure_delay: Option<Dur>,
}

fn resolve_auth(raw: RawAuth) -> Auth {
    Auth {
        users: raw.users,
        allow_plaintext: raw.allow_plaintext.unwrap_or(false),
        max_failures: raw.max_failures.unwrap_or(5),
        failure_window: raw.failure_window.map(|d| d.0).unwrap_or(Duration::from_secs(600)),
        failure_delay: raw.failure_delay.map(|d| d.0).unwrap_or(Duration::from_secs(2)),
    }
}

#[derive(Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRewrite {
    virtual_alias_maps: Option<Vec<String>>,
    alias_maps: Option<Vec<String>>,
    sender_canonical_maps: Option<Vec<String>>,
    recipient_canonical_maps: Option<Vec<String>>,
    masquerade_as: Option<String>,
    masquerade_domains: Option<Vec<String>>,
    virtual_alias_domains: Option<Vec<String>>,
}

fn resolve_rewrite(raw: RawRewrite) -> Rewrite {
    Rewrite {
        virtual_alias_maps: raw.virtual_alias_maps.unwrap_or_default(),
        alias_maps: raw.alias_maps.unwrap_or_default(),
        sender_canonical_maps: raw.sender_canonical_maps.unwrap_or_default(),
        recipient_canonical_maps: raw.recipient_canonical_maps.unwrap_or_default(),
        masquerade_as: raw.masquerade_as,
        masquerade_domains: lower(raw.masquerade_domains.unwrap_or_default()),
        virtual_alias_domains: lower(raw.virtual_alias_domains.unwrap_or_default()),
    }
}

#[derive(Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawDeliver {
    transport_maps: Option<Vec<String>>,
    maildir_root: Option<String>,
    dns_servers: Option<Vec<String>>,
    dnssec_trust_anchor: Option<PathBuf>,
    mx_port: Option<u16>,
    destination_concurrency: Option<usize>,
    source_addresses: Option<Vec<String>>,
    inet_protocols: Option<String>,
    connection_attempt_delay: Option<Dur>,
    shaping: Option<Vec<shaping::RawShaping>>,
}

fn resolve_deliver(raw: RawDeliver, err: &KeyError) -> Result<Deliver, ConfigError> {
    Ok(Deliver {
        transport_maps: raw.transport_maps.unwrap_or_default(),
        maildir_root: raw.maildir_root.unwrap_or_else(|| "/var/mail/{domain}/{user}".into()),
        dns_servers: raw
            .dns_servers
            .unwrap_or_default()
            .iter()
            .map(|s| {
                s.parse::<SocketAddr>()
                    .or_else(|_| s.parse::<IpAddr>().map(|ip| SocketAddr::new(ip, 53)))
                    .map_err(|_| err("deliver.dns_servers", format!("`{s}` is not an address or address:port")))
            })
            .collect::<Result<Vec<_>, _>>()?,
        dnssec_trust_anchor: match raw.dnssec_trust_anchor {
            Some(path) => {
                let bad = |m: String| err("deliver.dnssec_trust_anchor", format!("{}: {m}", path.display()));
                let text = std::fs::read_to_string(&path).map_err(|e| bad(e.to_string()))?;
                text.parse::<hickory_resolver::proto::dnssec::TrustAnchors>().map_err(|e| bad(e.to_string()))?;
                // An empty file would make every signed answer bogus.
                if !text.lines().any(|l| l.split_whitespace().any(|w| w.eq_ignore_ascii_case("DNSKEY"))) {
                    return Err(bad("holds no DNSKEY record".into()));
                }
                Some(path)
            }
            None => None,
        },
        mx_port: raw.mx_port.unwrap_or(25),
        destination_concurrency: raw.destination_concurrency.unwrap_or(20).max(1),
        source: source::resolve_source(raw.source_addresses, raw.inet_protocols, err)?,
        connection_attempt_delay: match raw.connection_attempt_delay.map(|d| d.0) {
            None => Duration::from_millis(250),
            // RFC 8305 5: at least 10 ms, so a race never floods the peer.
            Some(d) if d < Duration::from_millis(10) => {
                return Err(err("deliver.connection_attempt_delay", "must be at least 10ms (RFC 8305)".into()));
            }
            Some(d) => d,
        },
        shaping: shaping::resolve_shaping(raw.shaping, err)?,
    })
}

#[derive(Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawQueue {
    retry_min: Option<Dur>,
    retry_max: Option<Dur>,
    max_lifetime: Option<Dur>,
    delay_warning: Option<Dur>,
    active_limit: Option<usize>,
    pickup_interval: Option<Dur>,
    bounce_rate_limit: Option<usize>,
    sync: Option<SyncMode>,
    min_free: Option<Size>,
}

fn resolve_queue(raw: RawQueue, err: &KeyError) -> Result<Queue, ConfigError> {
    let queue = Queue {
        retry_min: raw.retry_min.map(|d| d.0).unwrap_or(Duration::from_secs(300)),
        retry_max: raw.retry_max.map(|d| d.0).unwrap_or(Duration::from_secs(3600)),
        max_lifetime: raw.max_lifetime.map(|d| d.0).unwrap_or(Duration::from_secs(5 * 86400)),
        // `0` turns delay warnings off.
        delay_warning: match raw.delay_warning {
            Some(d) if d.0.is_zero() => None,
            Some(d) => Some(d.0),
            None => Some(Duration::from_secs(4 * 3600)),
        },
        active_limit: raw.active_limit.unwrap_or(2000).max(1),
        pickup_interval: raw.pickup_interval.map(|d| d.0).unwrap_or(Duration::from_secs(60)),
        bounce_rate_limit: raw.bounce_rate_limit.unwrap_or(20),
        sync: raw.sync.unwrap_or(SyncMode::Batch),
        min_free: raw.min_free.map(|s| s.0),
    };
    if queue.retry_min > queue.retry_max {
        return Err(err("queue.retry_min", "is larger than queue.retry_max".into()));
    }
    Ok(queue)
}

/// Every key the file may hold, as dotted names (`smtp.listen`), in the
/// order of the `Raw` structs. Read from the field lists serde's derive
/// hands to `deserialize_struct`, so that a key added to a `Raw` struct is
/// listed (by `postconf`, and checked by its tests) without anyone having
/// to remember it.
pub(crate) fn keys() -> Vec<String> {
    let mut keys = Vec::new();
    // Fails only for a key that is neither an Option nor a section, which
    // the unit test `every_key_is_recorded` reports.
    let _ = Raw::deserialize(KeyRecorder { prefix: String::new(), keys: &mut keys });
    keys
}

/// Whether `value` has the type `key` takes (`smtp.listen`: a list of
/// strings), the checks of `resolve_*` aside: `postconf -e` uses it to
/// read the text an admin typed as the TOML the key expects.
pub(crate) fn accepts(key: &str, value: toml::Value) -> Result<(), String> {
    let mut doc = value;
    for part in key.rsplit('.') {
        let mut table = toml::Table::new();
        table.insert(part.to_string(), doc);
        doc = toml::Value::Table(table);
    }
    doc.try_into::<Raw>().map(|_| ()).map_err(|e| e.message().trim().to_string())
}

/// A serde Deserializer that answers nothing but records the field names
/// it is asked for: every `Raw` key is an `Option` (recorded, then `None`)
/// or a section struct (recursed into with its name as prefix).
struct KeyRecorder<'a> {
    prefix: String,
    keys: &'a mut Vec<String>,
}

impl<'de> serde::Deserializer<'de> for KeyRecorder<'_> {
    type Error = serde::de::value::Error;

    fn deserialize_any<V: serde::de::Visitor<'de>>(self, _: V) -> Result<V::Value, Self::Error> {
        Err(serde::de::Error::custom(format!("{}: neither an Option nor a section", self.prefix)))
    }

    fn deserialize_option<V: serde::de::Visitor<'de>>(self, visitor: V) -> Result<V::Value, Self::Error> {
        self.keys.push(self.prefix);
        visitor.visit_none()
    }

    fn deserialize_struct<V: serde::de::Visitor<'de>>(
        self,
        _name: &'static str,
        fields: &'static [&'static str],
        visitor: V,
    ) -> Result<V::Value, Self::Error> {
        visitor.visit_map(FieldNames { prefix: self.prefix, fields: fields.iter(), current: "", keys: self.keys })
    }

    serde::forward_to_deserialize_any! {
        bool i8 i16 i32 i64 i128 u8 u16 u32 u64 u128 f32 f64 char str string
        bytes byte_buf unit unit_struct newtype_struct seq tuple
        tuple_struct map enum identifier ignored_any
    }
}

/// A struct's fields, handed out as map keys, each value a `KeyRecorder`.
struct FieldNames<'a> {
    prefix: String,
    fields: std::slice::Iter<'static, &'static str>,
    current: &'static str,
    keys: &'a mut Vec<String>,
}

impl<'de> serde::de::MapAccess<'de> for FieldNames<'_> {
    type Error = serde::de::value::Error;

    fn next_key_seed<K: serde::de::DeserializeSeed<'de>>(&mut self, seed: K) -> Result<Option<K::Value>, Self::Error> {
        use serde::de::IntoDeserializer;
        let Some(field) = self.fields.next() else { return Ok(None) };
        self.current = field;
        seed.deserialize(field.into_deserializer()).map(Some)
    }

    fn next_value_seed<V: serde::de::DeserializeSeed<'de>>(&mut self, seed: V) -> Result<V::Value, Self::Error> {
        let prefix =
            if self.prefix.is_empty() { self.current.to_string() } else { format!("{}.{}", self.prefix, self.current) };
        seed.deserialize(KeyRecorder { prefix, keys: self.keys })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<Config, String> {
        Config::parse(text, Path::new("/etc/posthorn/posthorn.toml")).map_err(|e| e.0)
    }

    #[test]
    fn every_key_is_recorded() {
        let mut keys = Vec::new();
        let recorded = Raw::deserialize(KeyRecorder { prefix: String::new(), keys: &mut keys });
        assert!(recorded.is_ok(), "{:?}", recorded.err());
        for key in [
            "role",
            "smtp.listen",
            "smtp.bare_newline",
            "access.client_cert_senders",
            "dkim.keys",
            "log.journald_socket",
        ] {
            assert!(keys.iter().any(|k| k == key), "{key} not in {keys:?}");
        }
        assert!(!keys.iter().any(|k| k == "smtp" || k.starts_with("dkim.keys.")), "{keys:?}");
        assert_eq!(keys, super::keys());
    }

    #[test]
    fn accepts_checks_the_type_only() {
        let list = toml::Value::Array(vec!["10.0.0.0/8".into()]);
        assert_eq!(accepts("access.trusted_networks", list.clone()), Ok(()));
        assert!(accepts("access.trusted_networks", "10.0.0.0/8".into()).is_err());
        assert_eq!(accepts("smtp.max_message_size", toml::Value::Integer(1000)), Ok(()));
        assert_eq!(accepts("smtp.max_message_size", "10M".into()), Ok(()));
        assert_eq!(accepts("relay.auth_plaintext", toml::Value::Boolean(true)), Ok(()));
        assert!(accepts("relay.auth_plaintext", "yes".into()).is_err());
        assert!(accepts("smtp.no_such_key", "x".into()).is_err());
    }

    #[test]
    fn role_defaults() {
        let c = parse("role = \"hub\"\nhostname = \"mx\"\n").unwrap();
        assert_eq!(c.smtp.listen, vec!["0.0.0.0:25".parse::<SocketAddr>().unwrap()]);
        assert_eq!(c.smtp.max_connections, 500);
        let c = parse("hostname = \"vm\"\n").unwrap();
        assert_eq!(c.role, Role::Satellite);
        assert_eq!(c.smtp.listen, vec!["127.0.0.1:25".parse::<SocketAddr>().unwrap()]);
        assert_eq!(c.queue.retry_min, Duration::from_secs(300));
        assert_eq!(c.queue.min_free, None, "the default is worked out from the spool's filesystem");
    }

    #[test]
    fn myorigin_and_virtual_alias_domains() {
        assert_eq!(parse("hostname = \"vm7.example.org\"\n").unwrap().myorigin, "vm7.example.org");
        let c = parse("hostname = \"vm7\"\nmyorigin = \"Example.org.\"\n[rewrite]\nvirtual_alias_domains = [\"Lists.Example.org\"]\n").unwrap();
        assert_eq!(c.myorigin, "Example.org");
        assert_eq!(c.rewrite.virtual_alias_domains, ["lists.example.org"]);
        assert_eq!(c.access.virtual_alias_domains, ["lists.example.org"], "the relay rule sees them");
        for bad in ["\"\"", "\"root@example.org\""] {
            let e = parse(&format!("myorigin = {bad}\n")).unwrap_err();
            assert!(e.starts_with("/etc/posthorn/posthorn.toml:1: myorigin: ") && e.contains("is not a domain"), "{e}");
        }
    }

    #[test]
    fn per_client_limits_and_deadlines() {
        let c = parse("role = \"hub\"\n").unwrap();
        let s = &c.smtp;
        assert_eq!((s.client_connection_limit, s.client_connection_rate_limit, s.trusted_reserve), (50, 600, 50));
        assert_eq!(s.data_deadline, Duration::from_secs(1800));
        assert_eq!(s.tls_handshake_timeout, Duration::from_secs(10));
        assert_eq!(s.repeat_log_interval, Duration::from_secs(60));
        assert_eq!(parse("[smtp]\nmax_connections = 5\n").unwrap().smtp.trusted_reserve, 0);
        let text =
            "[smtp]\nmax_connections = 40\ntrusted_reserve = 8\nclient_connection_limit = 0\ndata_deadline = \"2m\"\n";
        let s = parse(text).unwrap().smtp;
        assert_eq!((s.trusted_reserve, s.client_connection_limit, s.data_deadline), (8, 0, Duration::from_secs(120)));
        let e = parse("[smtp]\nmax_connections = 20\ntrusted_reserve = 20\n").unwrap_err();
        assert!(e.starts_with("/etc/posthorn/posthorn.toml:3: smtp.trusted_reserve: 20 leaves no slot"), "{e}");
    }

    #[test]
    fn daemon_account() {
        assert_eq!(parse("hostname = \"vm\"\n").unwrap().user.as_deref(), Some("posthorn"));
        assert_eq!(parse("user = \"mail\"\n").unwrap().user.as_deref(), Some("mail"));
        assert_eq!(Config::builtin().user, None, "the built-in configuration runs as whoever starts it");
        let e = parse("user = \"\"\n").unwrap_err();
        assert!(e.contains("user") && e.contains("not a user name"), "{e}");
    }

    #[test]
    fn values() {
        let c = parse(
            "[smtp]\nmax_message_size = \"10M\"\n[queue]\nretry_min = \"2s\"\nretry_max = 60\nmin_free = \"20M\"\n[relay]\nsmarthosts = [\"[127.0.0.1]:2526\", \"mx.example:25\"]\n",
        )
        .unwrap();
        assert_eq!(c.smtp.max_message_size, 10 << 20);
        assert_eq!(c.queue.retry_min, Duration::from_secs(2));
        assert_eq!(c.queue.retry_max, Duration::from_secs(60));
        assert_eq!(c.queue.min_free, Some(20 << 20));
        assert_eq!(c.relay.smarthosts.len(), 2);
    }

    #[test]
    fn errors_name_file_line_and_key() {
        let cases = [
            ("role = \"hub\"\n[smtp]\nmax_recipients = \"many\"\n", ":3: smtp.max_recipients: "),
            ("[queue]\n\nretry_min = \"5x\"\n", ":3: queue.retry_min: `5x` is not a duration"),
            ("[smtp]\nlisten_on = [\"x\"]\n", ":2: smtp.listen_on: unknown field `listen_on`"),
            ("role = \"gateway\"\n", ":1: role: unknown variant `gateway`"),
            ("[smtp]\nlisten = [\"nowhere\"]\n", "posthorn.toml:2: smtp.listen: `nowhere` is not an address:port"),
            ("[smtp]\nsubmissions = [\"465\"]\n", "posthorn.toml:2: smtp.submissions: `465` is not an address:port"),
            (
                "[relay]\ntls_client_cert = \"/c.pem\"\n",
                "posthorn.toml: relay.tls_client_key: must be set together with relay.tls_client_cert",
            ),
            (
                "[access]\ntrusted_networks = [\"10.0.0.0/33\"]\n",
                ":2: access.trusted_networks: `10.0.0.0/33`: bad prefix",
            ),
            (
                "[smtp]\nmax_recipients = -1\n",
                ":2: smtp.max_recipients: invalid value: integer `-1`, expected a whole number",
            ),
            ("smtp.max_connections = 5\nsmtp.trusted_reserve = 5\n", ":2: smtp.trusted_reserve: 5 leaves no slot"),
            (
                "[screen]\ndnsbl_sites = [\"zen.example*3\",\n  \"wl.example=127.0.[0..256].0*-2\"]\n",
                ":2: screen.dnsbl_sites: `wl.example=127.0.[0..256].0*-2`: `256` is not a number from 0 to 255",
            ),
            ("[screen]\npregreet = true\ngreet_wait = \"0s\"\n", ":3: screen.greet_wait: must be more than 0s"),
            ("role = \n", ":1: "),
            ("[tls]\ncert = \"/c.pem\"\nkeyfile = \"/k.pem\"\n", ":3: tls.keyfile: unknown field `keyfile`"),
            ("[tls]\ncert = \"/c.pem\"\n", "posthorn.toml: tls.key: must be set together with tls.cert"),
            ("[tls]\ncert = 5\n", ":2: tls.cert: "),
            ("[auth]\nallow_plaintext = \"yes\"\n", ":2: auth.allow_plaintext: "),
            ("[relay]\ntls = \"always\"\n", ":2: relay.tls: unknown variant `always`"),
            ("[relay]\ntls = \"dane\"\n", ":2: relay.tls: `dane` applies to MX delivery (outbound_tls.level)"),
            ("[deliver]\ndnssec_trust_anchor = \"/nonexistent\"\n", ":2: deliver.dnssec_trust_anchor: /nonexistent: "),
            (
                "[deliver]\ndnssec_trust_anchor = \"/dev/null\"\n",
                ":2: deliver.dnssec_trust_anchor: /dev/null: holds no DNSKEY",
            ),
            ("[filter]\ncontent = \"x\"\n", ":2: filter.content: unknown field `content`"),
            ("[filter]\ncontent_filter = \"lmtp:x\"\n", "posthorn.toml:2: filter.content_filter: `lmtp:x` is neither"),
            (
                "[filter]\ncontent_filter = \"smtp:filter.example\"\n",
                "filter.content_filter: `smtp:filter.example`: write",
            ),
            (
                "[filter]\ncontent_filter = \"pipe:cmd x\"\n",
                "filter.content_filter: `pipe:cmd x`: the pipe command must",
            ),
            ("[filter]\nreinject_listen = \"here\"\n", "filter.reinject_listen: `here` is not an address:port"),
            ("[filter]\n\npipe_timeout = \"soon\"\n", ":3: filter.pipe_timeout: `soon` is not a duration"),
            ("[metrics]\nlisten = \"9325\"\n", "posthorn.toml:2: metrics.listen: `9325` is not an address:port"),
            ("[metrics]\nport = 9325\n", ":2: metrics.port: unknown field `port`"),
            (
                "[verify]\nspf = true\nspf_fail_action = \"drop\"\n",
                ":3: verify.spf_fail_action: `drop` is not `reject` or `tag`",
            ),
            (
                "[verify]\ndmarc_reject_action = \"bounce\"\n",
                ":2: verify.dmarc_reject_action: `bounce` is not `reject`, `quarantine` or `tag`",
            ),
            ("[verify]\nauthserv_id = \"mx test\"\n", ":2: verify.authserv_id: `mx test` is not a host name"),
            ("[verify]\nspf = true\ndmarc = true\n", ":3: verify.dmarc: needs verify.spf and verify.dkim on"),
            (
                "[verify]\narc = true\narc_trusted_sealers = [\"lists.example.org\"]\n",
                ":3: verify.arc_trusted_sealers: needs verify.arc and verify.dmarc on",
            ),
            (
                "[verify]\narc = true\n\narc_trusted_sealers = [\"lists example\"]\n",
                ":4: verify.arc_trusted_sealers: `lists example` is not a domain",
            ),
        ];
        for (text, expected) in cases {
            let err = parse(text).unwrap_err();
            assert!(err.starts_with("/etc/posthorn/posthorn.toml"), "{err}");
            assert!(err.contains(expected), "{text:?}: got {err}");
        }
    }

    #[test]
    fn dane_levels() {
        let c = parse("[outbound_tls]\nlevel = \"dane-only\"\n").unwrap();
        assert_eq!(c.outbound_tls.level, TlsPolicy::DaneOnly);
        assert!(c.outbound_tls.level.requires_tls() && !TlsPolicy::Dane.requires_tls());
        assert_eq!(parse("outbound_tls.level = \"dane\"\n").unwrap().outbound_tls.level, TlsPolicy::Dane);
        assert_eq!(c.deliver.dnssec_trust_anchor, None);
    }

    #[test]
    fn verify_section() {
        let c = parse("hostname = \"mx.example.org\"\n").unwrap();
        assert!(!c.verify.is_on());
        assert_eq!(c.verify.authserv_id, "mx.example.org");
        assert_eq!(c.verify.spf_fail_action, SpfFailAction::Reject);
        assert_eq!(c.verify.dmarc_reject_action, DmarcAction::Reject);
        let c = parse(
            "role = \"hub\"\n[verify]\nspf = true\ndkim = true\ndmarc = true\nauthserv_id = \"auth.example.org\"\nspf_fail_action = \"tag\"\ndmarc_reject_action = \"quarantine\"\n",
        )
        .unwrap();
        assert!(c.verify.spf && c.verify.dkim && c.verify.dmarc);
        assert_eq!(c.verify.authserv_id, "auth.example.org");
        assert_eq!(c.verify.spf_fail_action, SpfFailAction::Tag);
        assert_eq!(c.verify.dmarc_reject_action, DmarcAction::Quarantine);
        assert!(!c.verify.arc && c.verify.arc_trusted_sealers.is_empty());
        let c = parse(
            "[verify]\nspf = true\ndkim = true\ndmarc = true\narc = true\narc_trusted_sealers = [\"Lists.Example.org.\"]\n",
        )
        .unwrap();
        assert!(c.verify.arc);
        assert_eq!(c.verify.arc_trusted_sealers, ["lists.example.org"]);
    }

    #[test]
    fn tls_and_auth_sections() {
        let c = parse(
            "[tls]\ncert = \"/etc/posthorn/cert.pem\"\nkey = \"/etc/posthorn/key.pem\"\n[auth]\nusers = \"/etc/posthorn/users\"\n[relay]\ntls = \"verify\"\ntls_ca = \"/etc/posthorn/ca.pem\"\nauth_file = \"/etc/posthorn/relay-auth\"\n",
        )
        .unwrap();
        assert_eq!(c.tls.cert.as_deref(), Some(Path::new("/etc/posthorn/cert.pem")));
        assert!(c.tls.is_configured());
        assert_eq!(c.auth.users.as_deref(), Some(Path::new("/etc/posthorn/users")));
        assert!(!c.auth.allow_plaintext);
        assert_eq!(c.relay.tls, TlsPolicy::Verify);
        assert_eq!(c.relay.tls_ca.as_deref(), Some(Path::new("/etc/posthorn/ca.pem")));
        assert!(!c.relay.auth_plaintext);
        let c = parse("").unwrap();
        assert!(!c.tls.is_configured());
        assert!(c.auth.users.is_none());
    }

    #[test]
    fn filter_section() {
        let c = parse(
            "[filter]\ncontent_filter = \"smtp:[127.0.0.1]:10025\"\nreinject_listen = \"127.0.0.1:10026\"\ndomains = [\"Example.ORG\"]\n",
        )
        .unwrap();
        let target = Target { host: "127.0.0.1".into(), port: Some(10025), mx: false };
        assert_eq!(c.filter.content_filter, Some(FilterSpec::Smtp(target)));
        assert_eq!(c.filter.reinject_listen, Some("127.0.0.1:10026".parse().unwrap()));
        assert_eq!(c.filter.pipe_timeout, Duration::from_secs(300));
        assert_eq!(c.filter.domains, vec!["example.org".to_string()]);
        let c = parse(
            "[filter]\ncontent_filter = \"pipe:/usr/bin/f  -f ${sender} -- ${recipient}\"\npipe_timeout = \"2s\"\n",
        )
        .unwrap();
        let argv = ["/usr/bin/f", "-f", "${sender}", "--", "${recipient}"].map(String::from).to_vec();
        assert_eq!(c.filter.content_filter, Some(FilterSpec::Pipe(argv)));
        assert_eq!(c.filter.pipe_timeout, Duration::from_secs(2));
        let c = parse("").unwrap();
        assert!(c.filter.content_filter.is_none() && c.filter.reinject_listen.is_none());
    }

    #[test]
    fn metrics_section() {
        let c = parse("[metrics]\nlisten = \"127.0.0.1:9325\"\n").unwrap();
        assert_eq!(c.metrics.listen, Some("127.0.0.1:9325".parse().unwrap()));
        assert!(parse("").unwrap().metrics.listen.is_none(), "no endpoint unless asked for");
    }

    #[test]
    fn network_errors() {
        let cases = [
            ("10.0.0.0/33", "`10.0.0.0/33`: bad prefix length"),
            ("::1/129", "`::1/129`: bad prefix length"),
            ("10.0.0.0/x", "`10.0.0.0/x`: bad prefix length"),
            ("10.0.0.0/", "`10.0.0.0/`: bad prefix length"),
            ("10.0.0", "`10.0.0` is not an IP network"),
            ("example.org/8", "`example.org/8` is not an IP network"),
            ("", "`` is not an IP network"),
        ];
        for (net, expected) in cases {
            assert_eq!(parse_network(net).unwrap_err(), expected);
        }
    }

    #[test]
    fn cidr_matching() {
        let cases = [
            ("127.0.0.0/8", "127.0.0.5", true),
            ("127.0.0.1/32", "127.0.0.5", false),
            ("10.0.0.0/8", "::ffff:10.1.2.3", true),
            ("::1/128", "::1", true),
            ("2001:db8::/32", "2001:db8:1::1", true),
            ("2001:db8::/32", "10.0.0.1", false),
            ("0.0.0.0/0", "192.0.2.1", true),
            ("10.1.2.3/8", "10.9.9.9", true),
            ("192.0.2.7", "192.0.2.7", true),
            ("192.0.2.7", "192.0.2.8", false),
            ("2001:db8::7", "2001:db8::7", true),
            ("2001:db8::7", "2001:db8::8", false),
        ];
        for (net, ip, expected) in cases {
            let access = parse(&format!("[access]\ntrusted_networks = [\"{net}\"]\n")).unwrap().access;
            assert_eq!(access.trusts(ip.parse().unwrap()), expected, "{net} {ip}");
        }
    }
}
