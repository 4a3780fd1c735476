//! Host-list SMTP delivery: every message goes to a list of hosts, tried in
//! order, over pooled SMTP sessions. The smarthosts (`relay.smarthosts`)
//! are one such list; `deliver::mx` keeps one per destination domain, fed
//! with that domain's MX hosts in the order of each attempt.
//!
//! A host's addresses are raced for the connection, IPv6 first
//! (`deliver::eyeballs`, RFC 8305); the session runs on the first to
//! connect. A host (or one of its addresses) that cannot be reached, greets
//! with 4xx, or whose session fails before the message is handed over,
//! makes us try the next one; so does a 4xx to MAIL. Once a host has answered the
//! transaction, its answers are final for this attempt (recipients it
//! deferred wait for the queue's next retry rather than going to another
//! host, which keeps each attempt predictable). When no host could even be
//! talked to, the `Delivery` says `hop_down` so the queue holds back the
//! rest of the mail for that next hop instead of knocking again.
//!
//! Sessions that ended a transaction cleanly are kept per host for
//! `idle_timeout` and reused; at most `max_connections` are open at once,
//! idle ones included. A session that has carried `max_per_connection`
//! messages (`[[deliver.shaping]]` `max_messages_per_connection`) is
//! closed with QUIT instead, and the next message gets a new one. Host names are looked up through `deliver::dns` when
//! `deliver.dns_servers` is set (tests never read /etc/resolv.conf), else
//! through the system resolver. The per-recipient status line is the
//! queue's to log (it knows the whole delay); this module logs connection
//! events at debug level, and each TLS session (version, cipher) at info.
//!
//! TLS follows each host's policy (`deliver::tls_policy`: the policy
//! table's entry for the destination, or for a smarthost's `[host]:port`,
//! else the transport's default level), looked up for every new session:
//! `none` never asks; `may` asks when STARTTLS is offered and, should the
//! handshake fail, tries that address once more in clear; `encrypt`,
//! `verify` and `secure` require it (`verify` and `secure` also check the
//! certificate against the CA and the policy's names) and defer with class
//! Tls otherwise, so the message is never sent in clear. AUTH credentials
//! (`relay.auth_file`) are sent only over TLS whose certificate was verified
//! (a `verify` or `secure` policy for that host), unless
//! `relay.auth_unverified` (any TLS) or `relay.auth_plaintext` (even none)
//! says otherwise.

use crate::auth::ClientCredentials;
use crate::config::{Config, TlsPolicy};
use crate::deliver::Delivery;
use crate::deliver::dns::Dns;
use crate::deliver::tls_policy::{HopTls, Policies, PolicyTable, hop_keys};
use crate::message::OutMessage;
use crate::message::nexthop::Target;
use crate::message::outcome::{Attempt, ErrorClass, Outcome, strerror};
use crate::smtp::client::{Client, ClientError, Phase, RcptResult, Timeouts, relay_label};
use crate::smtp::proto::reply::{Enhanced, Reply};
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, Instant};
use tokio::sync::{Notify, OwnedSemaphorePermit, Semaphore};

/// Addresses tried per host name; a name with more is misconfigured.
const MAX_ADDRESSES: usize = 8;
/// New sessions (addresses) tried for one message, over all hosts: ten MX
/// hosts with eight addresses each and a 30 s connect timeout must not hold
/// one delivery for forty minutes.
const MAX_SESSIONS: usize = 10;

/// One host of a host list: its name (for logs, and the name a TLS
/// certificate will be checked against), its port, and its addresses when
/// the caller already knows them (an MX fallback to the domain's own
/// addresses, an IP literal); `None` means look the name up.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Host {
    pub(crate) name: String,
    pub(crate) port: u16,
    pub(crate) addrs: Option<Vec<IpAddr>>,
}

impl Host {
    /// A host whose addresses are looked up when it is tried.
    pub(crate) fn named(name: &str, port: u16) -> Host {
        Host { name: name.to_string(), port, addrs: None }
    }

    /// The key pooled sessions are kept under.
    fn key(&self) -> String {
        format!("{}:{}", self.name, self.port)
    }
}

/// What a host-list transport needs besides its hosts.
#[derive(Clone, Debug)]
pub(crate) struct Settings {
    /// The TLS policies, and the client configurations they need.
    pub(crate) tls: Arc<Policies>,
    /// The policy table keys of the whole destination and its name (an MX
    /// domain, an explicit next hop); `None`: each host's own
    /// `[host]:port` (the smarthosts).
    pub(crate) tls_dest: Option<(Vec<String>, String)>,
    /// AUTH credentials, or why the file could not be read.
    pub(crate) auth: Option<Result<ClientCredentials, String>>,
    /// Send credentials without TLS.
    pub(crate) auth_plaintext: bool,
    /// Send them over TLS whose certificate was not verified.
    pub(crate) auth_unverified: bool,
    /// The name we give in EHLO.
    pub(crate) helo: String,
    pub(crate) timeouts: Timeouts,
    /// Connections open at once, idle ones included.
    pub(crate) max_connections: usize,
    /// How long a session that ended cleanly is kept for the next message.
    pub(crate) idle_timeout: Duration,
    /// Messages one session carries before it is closed; `None`: no limit.
    pub(crate) max_per_connection: Option<u32>,
    /// Where host names are looked up; the system resolver when `None`.
    pub(crate) dns: Option<Arc<Dns>>,
    /// What the hosts are called in error texts: `smarthost`, `MX host`.
    pub(crate) noun: &'static str,
    /// Take an idle session to any host of the list before walking the
    /// list in order (MX delivery, as Postfix's connection cache does per
    /// destination). Off for smarthosts: a backup is left as soon as the
    /// first host works again.
    pub(crate) reuse_any_host: bool,
    /// Where this daemon itself accepts SMTP: a host that resolves there
    /// is never connected to (`myself`).
    pub(crate) myself: Vec<SocketAddr>,
    /// `deliver.source_addresses` and `deliver.inet_protocols`.
    pub(crate) source: crate::config::Source,
    /// `deliver.connection_attempt_delay`: a host's addresses are raced
    /// (`deliver::eyeballs`), the next started after this long.
    pub(crate) attempt_delay: Duration,
}

impl Settings {
    /// The smarthost settings from `[relay]`; `deliver.dns_servers`, when
    /// set, is used for the host names too.
    #[cfg(test)]
    pub(crate) fn relay(config: &Config) -> Settings {
        Settings::relay_with(config, None)
    }

    /// The smarthost settings, with the policy table whose `[host]:port`
    /// entries override `relay.tls`.
    pub(crate) fn relay_with(config: &Config, table: Option<Arc<dyn PolicyTable>>) -> Settings {
        let relay = &config.relay;
        let client_cert = relay.tls_client_cert.clone().zip(relay.tls_client_key.clone());
        Settings {
            tls: Arc::new(Policies::new(table, relay.tls, "relay.tls", relay.tls_ca.clone(), client_cert)),
            tls_dest: None,
            auth: config
                .relay
                .auth_file
                .as_deref()
                .map(|path| ClientCredentials::load(path).map_err(|e| format!("relay.auth_file: {e}"))),
            auth_plaintext: config.relay.auth_plaintext,
            auth_unverified: config.relay.auth_unverified,
            helo: config.hostname.clone(),
            timeouts: Timeouts { connect: config.relay.connect_timeout, ..Timeouts::default() },
            max_connections: config.relay.max_connections,
            idle_timeout: config.relay.idle_timeout,
            max_per_connection: per_connection(config, "relay"),
            dns: (!config.deliver.dns_servers.is_empty())
                .then(|| Arc::new(Dns::with_servers(&config.deliver.dns_servers))),
            noun: "smarthost",
            reuse_any_host: false,
            myself: crate::deliver::myself::listeners(config),
            source: config.deliver.source.clone(),
            attempt_delay: config.deliver.connection_attempt_delay,
        }
    }
}

/// A host-list transport: the smarthosts (`Relay::new`), or one
/// destination's MX hosts (`Relay::for_hosts`, used by `deliver::mx`).
/// Shared by every delivery to it.
pub struct Relay {
    /// The hosts `deliver` tries, in order. Smarthosts are checked when the
    /// configuration loads; an entry that still fails here is reported at
    /// delivery.
    hosts: Vec<Result<Host, String>>,
    settings: Settings,
    pool: Arc<Pool>,
}

/// What one host made of the message.
enum HostTry {
    /// The host answered the transaction; these outcomes are final. The
    /// flag says whether the host offered DSN; the duration is how long
    /// the session took to set up.
    Done(Vec<Outcome>, bool, Duration),
    /// No session, or it broke before the message was handed over.
    Unreachable(Attempt),
    /// The session worked but MAIL got 4xx: try the next host.
    Deferred(Attempt),
    /// Every address of the host is this daemon: a loop.
    Myself(Attempt),
}

impl Relay {
    /// The smarthost transport for `relay.smarthosts`.
    pub fn new(config: &Config) -> Relay {
        Relay::with_table(config, None)
    }

    /// The smarthost transport, with the TLS policy table.
    pub(crate) fn with_table(config: &Config, table: Option<Arc<dyn PolicyTable>>) -> Relay {
        let hosts = config
            .relay
            .smarthosts
            .iter()
            .map(|h| Target::host_port(h, 25).map(|(name, port)| Host::named(&name, port)))
            .collect();
        Relay::build(hosts, Settings::relay_with(config, table))
    }

    /// A transport for `hosts`, tried in order by `deliver`; `deliver_via`
    /// takes another order per message and shares the same pool.
    pub(crate) fn for_hosts(hosts: Vec<Host>, settings: Settings) -> Relay {
        Relay::build(hosts.into_iter().map(Ok).collect(), settings)
    }

    fn build(hosts: Vec<Result<Host, String>>, settings: Settings) -> Relay {
        let pool = Arc::new(Pool::new(settings.max_connections, settings.idle_timeout));
        Relay { hosts, settings, pool }
    }

    /// Replaces the per-phase timeouts (tests; the connect timeout comes from
    /// the configuration otherwise).
    #[cfg(test)]
    pub(crate) fn with_timeouts(mut self, timeouts: Timeouts) -> Relay {
        self.settings.timeouts = timeouts;
        self
    }

    /// Looks host names up through `dns` (shared with the other transports)
    /// instead of the system resolver.
    pub(crate) fn with_dns(mut self, dns: Arc<Dns>) -> Relay {
        self.settings.dns = Some(dns);
        self
    }

    /// Delivers `msg` to its recipients; one outcome per recipient, in order.
    pub async fn deliver(&self, msg: &OutMessage) -> Delivery {
        if self.hosts.is_empty() && !msg.recipients.is_empty() {
            let attempt =
                Attempt::failed(ErrorClass::Local, format!("no {} configured (relay.smarthosts)", self.settings.noun));
            let n = msg.recipients.len();
            return Delivery {
                outcomes: vec![Outcome::Transient(attempt); n],
                hop_down: true,
                remote_dsn: false,
                setup: None,
                followups: Vec::new(),
            };
        }
        self.deliver_list(self.hosts.iter().map(|h| h.as_ref().map_err(String::as_str)), msg).await
    }

    /// Delivers `msg` to `hosts` in this order (an MX list shuffled for this
    /// message), over this transport's pool.
    pub(crate) async fn deliver_via(&self, hosts: &[Host], msg: &OutMessage) -> Delivery {
        self.deliver_list(hosts.iter().map(Ok), msg).await
    }

    async fn deliver_list<'a>(
        &self,
        hosts: impl Iterator<Item = Result<&'a Host, &'a str>> + Clone,
        msg: &OutMessage,
    ) -> Delivery {
        let n = msg.recipients.len();
        if n == 0 {
            return Delivery {
                outcomes: Vec::new(),
                hop_down: false,
                remote_dsn: false,
                setup: None,
                followups: Vec::new(),
            };
        }
        let local_trouble = match &self.settings.auth {
            Some(Err(e)) => Some(Attempt::failed(ErrorClass::Local, e.clone())),
            _ => None,
        };
        if let Some(attempt) = local_trouble {
            return Delivery {
                outcomes: vec![Outcome::Transient(attempt); n],
                hop_down: true,
                remote_dsn: false,
                setup: None,
                followups: Vec::new(),
            };
        }
        let mut last = None;
        let mut hop_down = true;
        if self.settings.reuse_any_host {
            let keys: Vec<String> = hosts.clone().filter_map(|h| h.ok().map(Host::key)).collect();
            if let Some((key, conn)) = self.pool.take_any(&keys) {
                match self.try_pooled(&key, conn, msg).await {
                    Ok(HostTry::Done(outcomes, remote_dsn, setup)) => {
                        return Delivery {
                            outcomes,
                            hop_down: false,
                            remote_dsn,
                            setup: Some(setup),
                            followups: Vec::new(),
                        };
                    }
                    Ok(HostTry::Deferred(attempt)) => {
                        last = Some(attempt);
                        hop_down = false;
                    }
                    // (A pooled session is never one to ourselves.)
                    Ok(HostTry::Unreachable(attempt) | HostTry::Myself(attempt)) => last = Some(attempt),
                    // Gone stale: the list below opens a new session.
                    Err(_permit) => {}
                }
            }
        }
        let mut budget = MAX_SESSIONS;
        let mut any = false;
        let mut looped = None;
        for host in hosts {
            any = true;
            if budget == 0 {
                break;
            }
            let host = match host {
                Ok(host) => host,
                Err(m) => {
                    last = Some(Attempt::failed(ErrorClass::Local, format!("relay.smarthosts: {m}")));
                    continue;
                }
            };
            match self.try_host(host, msg, &mut budget).await {
                HostTry::Done(outcomes, remote_dsn, setup) => {
                    return Delivery {
                        outcomes,
                        hop_down: false,
                        remote_dsn,
                        setup: Some(setup),
                        followups: Vec::new(),
                    };
                }
                HostTry::Unreachable(attempt) => last = Some(attempt),
                HostTry::Deferred(attempt) => {
                    last = Some(attempt);
                    hop_down = false;
                }
                HostTry::Myself(attempt) => looped = Some(attempt),
            }
        }
        if let (Some(attempt), None) = (looped, &last) {
            // Nowhere to go but back to ourselves: waiting will not change
            // that, so it bounces, as in Postfix.
            return Delivery {
                outcomes: vec![Outcome::Permanent(attempt); n],
                hop_down: false,
                remote_dsn: false,
                setup: None,
                followups: Vec::new(),
            };
        }
        let why = if any { "could be tried" } else { "to try" };
        let attempt =
            last.unwrap_or_else(|| Attempt::failed(ErrorClass::Local, format!("no {} {why}", self.settings.noun)));
        Delivery {
            outcomes: vec![Outcome::Transient(attempt); n],
            hop_down,
            remote_dsn: false,
            setup: None,
            followups: Vec::new(),
        }
    }

    /// QUITs every idle session (daemon shutdown).
    pub(crate) async fn close_idle(&self) {
        let idle = self.pool.drain_all();
        for entry in idle {
            entry.conn.client.quit().await;
        }
    }

    /// Whether the pool holds no session, idle or busy (the transport may
    /// be dropped without cutting anyone off).
    pub(crate) fn is_unused(&self) -> bool {
        self.pool.slots.available_permits() == self.settings.max_connections.max(1)
    }

    /// A pooled session for `key`: the transaction's verdict, or the slot
    /// back when the session had gone stale.
    async fn try_pooled(
        &self,
        key: &str,
        conn: Conn,
        msg: &OutMessage,
    ) -> Result<HostTry, Option<OwnedSemaphorePermit>> {
        let (label, result, freed, dsn) = self.transact(key, conn, msg).await;
        if !stale(&result) {
            return Ok(judge(&label, msg.recipients.len(), result, dsn));
        }
        // Servers close idle sessions on their own schedule; that is not
        // the host failing, so a new session goes in transparently.
        tracing::debug!("{}: reused session to {} had gone stale; reconnecting", msg.id, label.relay);
        Err(freed)
    }

    /// One host: a pooled session if there is a live one, else a new
    /// session to its addresses, raced for the connection (Happy
    /// Eyeballs, `deliver::eyeballs`), until one takes the message or
    /// `budget` connection attempts have been made.
    async fn try_host(&self, host: &Host, msg: &OutMessage, budget: &mut usize) -> HostTry {
        let key = host.key();
        let started = Instant::now();
        let mut permit = match self.pool.checkout(Some(&key)).await {
            Checkout::Slot(permit) => Some(permit),
            Checkout::Reused(conn) => match self.try_pooled(&key, *conn, msg).await {
                Ok(verdict) => return verdict,
                Err(freed) => freed,
            },
        };
        let addrs = match self.resolve(host).await {
            Ok(addrs) => addrs,
            Err(attempt) => return HostTry::Unreachable(attempt),
        };
        let addrs: Vec<SocketAddr> = addrs.into_iter().filter(|a| self.settings.source.allows(*a)).collect();
        let addrs = match self.not_myself(host, addrs, msg) {
            Ok(addrs) => addrs,
            Err(attempt) => return HostTry::Myself(attempt),
        };
        let mut last = None;
        let mut up = false;
        let mut addrs = crate::deliver::eyeballs::interleave(addrs);
        while !addrs.is_empty() && *budget > 0 {
            let slot = match permit.take() {
                Some(permit) => permit,
                None => self.pool.slot().await,
            };
            let (source, limit) = (self.settings.source.clone(), self.settings.timeouts.connect);
            let race =
                crate::deliver::eyeballs::race(&addrs[..addrs.len().min(*budget)], self.settings.attempt_delay, |a| {
                    Client::tcp(a, source.bind_for(a), limit)
                })
                .await;
            *budget = budget.saturating_sub(race.started());
            for (addr, e) in &race.failed {
                let attempt = session_error(&relay_label(&host.name, *addr), e);
                // Postfix's line for each address given up on, before
                // the next is tried (failover shows in the log).
                tracing::info!("{}", attempt.detail);
                last = Some(attempt);
            }
            addrs.retain(|a| !race.failed.iter().any(|(f, _)| f == a));
            let Some((addr, tcp)) = race.winner else {
                permit = Some(slot);
                continue;
            };
            addrs.retain(|a| *a != addr);
            for given_up in &race.abandoned {
                tracing::info!(
                    "{}: connect to {}: given up after {}ms: {} connected first (Happy Eyeballs)",
                    msg.id,
                    relay_label(&host.name, *given_up),
                    self.settings.attempt_delay.as_millis(),
                    relay_label(&host.name, addr)
                );
            }
            let client = match self.open(addr, tcp, host, msg).await {
                Ok(client) => client,
                Err(e) => {
                    let attempt = session_error(&relay_label(&host.name, addr), &e);
                    // Postfix's line for each address given up on, before
                    // the next is tried (failover shows in the log).
                    tracing::info!("{}", attempt.detail);
                    last = Some(attempt);
                    permit = Some(slot);
                    continue;
                }
            };
            tracing::debug!("{}: connected to {}", msg.id, client.relay_label());
            let setup = started.elapsed();
            let (label, result, freed, dsn) = self.transact(&key, Conn { client, permit: slot, sent: 0 }, msg).await;
            permit = freed;
            // An address that greets with 4xx or defers MAIL may be one
            // busy machine of several behind the name: try the next.
            match judge(&label, msg.recipients.len(), result, dsn) {
                HostTry::Done(outcomes, dsn, _) => return HostTry::Done(outcomes, dsn, setup),
                HostTry::Unreachable(attempt) | HostTry::Myself(attempt) => {
                    tracing::info!("{}: {}", msg.id, attempt.detail);
                    last = Some(attempt);
                }
                HostTry::Deferred(attempt) => {
                    tracing::info!("{}: {}", msg.id, attempt.detail);
                    last = Some(attempt);
                    up = true;
                }
            }
        }
        let last = last.unwrap_or_else(|| dns_error(self.settings.noun, &host.name, "no address"));
        if up { HostTry::Deferred(last) } else { HostTry::Unreachable(last) }
    }

    /// The addresses of `host` that are not this daemon's own listeners;
    /// when there are none, the attempt that says the mail loops.
    fn not_myself(&self, host: &Host, addrs: Vec<SocketAddr>, msg: &OutMessage) -> Result<Vec<SocketAddr>, Attempt> {
        let (mine, others): (Vec<SocketAddr>, Vec<SocketAddr>) =
            addrs.into_iter().partition(|a| crate::deliver::myself::is_myself(*a, &self.settings.myself));
        if let Some(addr) = mine.first() {
            tracing::warn!(
                "{}: {} {} [{addr}] is this host's own SMTP listener: mail loop",
                msg.id,
                self.settings.noun,
                host.name
            );
        }
        if !others.is_empty() || mine.is_empty() {
            return Ok(others);
        }
        let text = format!("mail for {} loops back to myself", host.name);
        let reply = Reply::new(554, Enhanced(5, 4, 6), text);
        Err(Attempt {
            relay: None,
            tls: false,
            detail: reply.to_string(),
            reply: Some(reply),
            class: Some(ErrorClass::Local),
        })
    }

    /// A new session to `addr`, secured as the policy asks, and logged in
    /// when credentials are configured.
    async fn open(
        &self,
        addr: SocketAddr,
        tcp: tokio::net::TcpStream,
        host: &Host,
        msg: &OutMessage,
    ) -> Result<Client, ClientError> {
        let tls = self.hop_tls(host).map_err(|e| ClientError::Tls(format!("TLS policy: {e}")))?;
        let nexthop = self.settings.tls_dest.as_ref().map_or(host.name.as_str(), |(_, n)| n.as_str());
        let tls = self.settings.tls.apply_dane(tls, nexthop, &host.name, host.port).await.map_err(ClientError::Tls)?;
        let bind = self.settings.source.bind_for(addr);
        let connect = || Client::connect_from(addr, bind, &host.name, &self.settings.helo, self.settings.timeouts);
        let mut client = Client::over(tcp, addr, &host.name, &self.settings.helo, self.settings.timeouts).await?;
        if let Err(e) = self.secure(&mut client, host, &tls, msg).await {
            let clear_retry = tls.level == TlsPolicy::May && matches!(e, ClientError::Tls(_));
            client.quit().await;
            if !clear_retry {
                return Err(e);
            }
            // Opportunistic TLS that fails must not make the host
            // unreachable: the same address once more, in clear.
            tracing::info!("{}: {e}; trying {} again without TLS", msg.id, relay_label(&host.name, addr));
            client = connect().await?;
        }
        if let Err(e) = self.login(&mut client, &tls).await {
            client.quit().await;
            return Err(e);
        }
        Ok(client)
    }

    /// The TLS policy for a new session to `host`.
    fn hop_tls(&self, host: &Host) -> Result<HopTls, String> {
        match &self.settings.tls_dest {
            Some((keys, nexthop)) => self.settings.tls.for_hop(keys, nexthop),
            None => self.settings.tls.for_hop(&hop_keys(&host.name, Some(host.port), false), &host.name),
        }
    }

    /// STARTTLS as the policy asks; `Err` means this session must not carry
    /// mail.
    async fn secure(
        &self,
        client: &mut Client,
        host: &Host,
        tls: &HopTls,
        msg: &OutMessage,
    ) -> Result<(), ClientError> {
        let policy = tls.level;
        // Usable TLSA records: no downgrade, whatever the level says.
        let required = policy.requires_tls() || tls.dane.is_some();
        if policy == TlsPolicy::None {
            return Ok(());
        }
        if !client.capabilities().starttls {
            if required {
                return Err(ClientError::Tls("required by policy, but STARTTLS is not offered".into()));
            }
            return Ok(());
        }
        let config =
            self.settings.tls.client_config(tls).map_err(|e| {
                ClientError::Tls(if required { format!("TLS required but not available: {e}") } else { e })
            })?;
        let name = crate::tls::server_name(&host.name).map_err(|e| ClientError::Tls(e.to_string()))?;
        match client.starttls(config, name).await {
            Ok(()) => {
                let verified = policy.verifies() || tls.dane.is_some();
                let trust = if verified { "Verified" } else { "Untrusted" };
                let dane = if tls.dane.is_some() { " (DANE)" } else { "" };
                // Postfix's words and shape: no queue id in front (the
                // session may carry several messages).
                tracing::info!(
                    queue_id = msg.id.as_str(),
                    event = "tls",
                    "{trust} TLS connection established to {}: {}{dane}",
                    client.relay_label(),
                    client.tls().unwrap_or("TLS")
                );
                Ok(())
            }
            // STARTTLS itself refused: clear text is acceptable only when
            // TLS is merely opportunistic.
            Err(ClientError::Reply { reply, .. }) if required => {
                Err(ClientError::Tls(format!("required by policy, but STARTTLS was refused: {reply}")))
            }
            Err(ClientError::Reply { reply, .. }) => {
                tracing::info!("{}: {} refused STARTTLS ({reply}); continuing in clear", msg.id, client.relay_label());
                Ok(())
            }
            Err(e) => Err(e),
        }
    }

    /// AUTH with the configured credentials: only to a peer whose
    /// certificate was verified, unless the configuration allows less.
    async fn login(&self, client: &mut Client, tls: &HopTls) -> Result<(), ClientError> {
        let Some(Ok(creds)) = &self.settings.auth else { return Ok(()) };
        let encrypted = client.tls().is_some();
        // Under `verify` and `secure` a session exists only once the
        // certificate passed.
        let verified = encrypted && (tls.level.verifies() || tls.dane.is_some());
        if !encrypted && !self.settings.auth_plaintext {
            return Err(ClientError::Tls(
                "not sending AUTH credentials without TLS (relay.auth_plaintext is off)".into(),
            ));
        }
        if encrypted && !verified && !self.settings.auth_unverified && !self.settings.auth_plaintext {
            return Err(ClientError::Tls(
                "not sending AUTH credentials over TLS whose certificate was not verified \
                 (a verify or secure policy for this host, or relay.auth_unverified = true)"
                    .into(),
            ));
        }
        if client.capabilities().auth.is_empty() {
            // Nothing to log in to; the server decides whether we may relay.
            return Ok(());
        }
        client.auth(&creds.user, &creds.password).await
    }

    /// Runs the transaction and puts the session back in the pool when it
    /// ended cleanly. A broken session is dropped (there is nobody left to
    /// say QUIT to) and its connection slot handed back. A session in which
    /// the server refused every recipient is closed with QUIT rather than
    /// kept: servers count those refusals against the session (Postfix
    /// slows down and then drops it), and a retry on a fresh session meets
    /// whatever the server decides by then.
    async fn transact(
        &self,
        key: &str,
        mut conn: Conn,
        msg: &OutMessage,
    ) -> (Label, Result<Vec<RcptResult>, ClientError>, Option<OwnedSemaphorePermit>, bool) {
        let result = conn.client.send(msg, &msg.recipients).await;
        conn.sent = conn.sent.saturating_add(1);
        let used_up = self.settings.max_per_connection.is_some_and(|max| conn.sent >= max);
        let label = Label { relay: conn.client.relay_label().to_string(), tls: conn.client.tls().is_some() };
        let dsn = conn.client.capabilities().dsn;
        let refused_all = matches!(&result, Ok(rs) if rs.iter().any(|r| matches!(r, RcptResult::Refused { .. }))
            && !rs.iter().any(|r| matches!(r, RcptResult::Accepted(_))));
        if conn.client.is_usable() && !refused_all && !used_up {
            self.pool.put(key, conn);
            (label, result, None, dsn)
        } else {
            if used_up && conn.client.is_usable() {
                tracing::debug!(
                    "{}: closing session to {} after {} messages (max_messages_per_connection)",
                    msg.id,
                    label.relay,
                    conn.sent
                );
            }
            let Conn { client, permit, .. } = conn;
            client.quit().await;
            (label, result, Some(permit), dsn)
        }
    }

    /// The addresses of a host, at most `MAX_ADDRESSES`: given ones, an IP
    /// literal, or a lookup (through `Dns` when configured, else the system
    /// resolver). A lookup gets the connect timeout: a resolver that hangs
    /// must not hold the delivery forever.
    async fn resolve(&self, host: &Host) -> Result<Vec<SocketAddr>, Attempt> {
        let (name, port, noun) = (host.name.as_str(), host.port, self.settings.noun);
        let with_port = |ips: &[IpAddr]| ips.iter().take(MAX_ADDRESSES).map(|ip| SocketAddr::new(*ip, port)).collect();
        if let Some(ips) = &host.addrs {
            return if ips.is_empty() { Err(dns_error(noun, name, "no address")) } else { Ok(with_port(ips)) };
        }
        if let Ok(ip) = name.parse::<IpAddr>() {
            return Ok(vec![SocketAddr::new(ip, port)]);
        }
        if let Some(dns) = &self.settings.dns {
            return match tokio::time::timeout(self.settings.timeouts.connect, dns.addresses(name)).await {
                Err(_) => Err(dns_error(noun, name, "lookup timed out")),
                Ok(Err(e)) => Err(dns_error(noun, name, &e.to_string())),
                Ok(Ok(ips)) if ips.is_empty() => Err(dns_error(noun, name, "no A or AAAA record")),
                Ok(Ok(ips)) => Ok(with_port(&ips)),
            };
        }
        match tokio::time::timeout(self.settings.timeouts.connect, tokio::net::lookup_host((name, port))).await {
            Err(_) => Err(dns_error(noun, name, "lookup timed out")),
            Ok(Err(e)) => Err(dns_error(noun, name, &e.to_string())),
            Ok(Ok(addrs)) => {
                let addrs: Vec<SocketAddr> = addrs.take(MAX_ADDRESSES).collect();
                if addrs.is_empty() { Err(dns_error(noun, name, "no address")) } else { Ok(addrs) }
            }
        }
    }
}

/// `max_messages_per_connection` of the first `[[deliver.shaping]]` entry
/// for the queue destination `key` (`relay`, `mx:example.org`, ...).
pub(crate) fn per_connection(config: &Config, key: &str) -> Option<u32> {
    config.deliver.shaping.iter().find(|s| s.matches(key)).and_then(|s| s.max_per_connection)
}

/// A session reused from the pool that had died while idle: the error comes
/// at the very first command, or the server greets the MAIL with the 421 it
/// sends when it times idle sessions out.
fn stale(result: &Result<Vec<RcptResult>, ClientError>) -> bool {
    match result {
        Err(ClientError::Io { phase: Phase::Mail, .. }) => true,
        Ok(results) => {
            !results.is_empty()
                && results
                    .iter()
                    .all(|r| matches!(r, RcptResult::Refused { stage: Phase::Mail, reply } if reply.code == 421))
        }
        Err(_) => false,
    }
}

/// The server a transaction ran on: `host[ip]:port`, and whether over TLS.
struct Label {
    relay: String,
    tls: bool,
}

/// Turns a transaction's result for `n` recipients into the host's verdict.
fn judge(label: &Label, n: usize, result: Result<Vec<RcptResult>, ClientError>, dsn: bool) -> HostTry {
    let (tls, label) = (label.tls, label.relay.as_str());
    let with_tls = |mut a: Attempt| {
        a.tls = tls;
        a
    };
    let results = match result {
        // Once the final dot is out, the server may have the message: trying
        // another host now would risk a duplicate, so wait for the retry.
        Err(e) if e.phase() == Phase::DataEnd => {
            return HostTry::Done(
                vec![Outcome::Transient(with_tls(session_error(label, &e))); n],
                false,
                Duration::ZERO,
            );
        }
        Err(e) => return HostTry::Unreachable(with_tls(session_error(label, &e))),
        Ok(results) => results,
    };
    // A refused MAIL reaches every recipient; 4xx there is the host's
    // trouble, not the message's, so the next host may do better.
    let mail = results.iter().find_map(|r| match r {
        RcptResult::Refused { stage: Phase::Mail, reply } => Some(reply),
        _ => None,
    });
    if let Some(reply) = mail.filter(|r| !r.is_permanent()) {
        return HostTry::Deferred(with_tls(refused_attempt(label, Phase::Mail, reply)));
    }
    let outcomes = results
        .iter()
        .map(|r| match outcome(label, r) {
            Outcome::Delivered(a) => Outcome::Delivered(with_tls(a)),
            Outcome::Transient(a) => Outcome::Transient(with_tls(a)),
            Outcome::Permanent(a) => Outcome::Permanent(with_tls(a)),
        })
        .collect();
    HostTry::Done(outcomes, dsn, Duration::ZERO)
}

/// The outcome for one recipient the host answered.
pub(crate) fn outcome(label: &str, result: &RcptResult) -> Outcome {
    match result {
        RcptResult::Accepted(reply) => Outcome::Delivered(Attempt {
            relay: Some(label.to_string()),
            tls: false,
            reply: Some(reply.clone()),
            class: None,
            detail: reply.to_string(),
        }),
        RcptResult::Refused { stage, reply } if reply.is_permanent() => {
            Outcome::Permanent(refused_attempt(label, *stage, reply))
        }
        RcptResult::Refused { stage, reply } => Outcome::Transient(refused_attempt(label, *stage, reply)),
        RcptResult::NotSent(refusal) => Outcome::Permanent(Attempt {
            relay: Some(label.to_string()),
            tls: false,
            reply: Some(refusal.clone()),
            class: Some(ErrorClass::Protocol),
            detail: refusal.to_string(),
        }),
    }
}

fn refused_attempt(label: &str, stage: Phase, reply: &crate::smtp::proto::reply::Reply) -> Attempt {
    Attempt {
        relay: Some(label.to_string()),
        tls: false,
        reply: Some(reply.clone()),
        class: Some(if reply.is_permanent() { ErrorClass::Reply5xx } else { ErrorClass::Reply4xx }),
        detail: format!("host {label} said: {reply} (in reply to {stage})"),
    }
}

/// A session that failed; `label` is `host[ip]:port`.
pub(crate) fn session_error(label: &str, e: &ClientError) -> Attempt {
    let (relay, detail) = match e {
        ClientError::Connect(io) => (None, format!("connect to {label}: {}", strerror(io))),
        ClientError::Timeout(Phase::Connect) => (None, format!("connect to {label}: timed out")),
        ClientError::Reply { phase, reply } => {
            (Some(label), format!("host {label} refused to talk to us: {reply} (in reply to {phase})"))
        }
        other => (Some(label), format!("{label}: {other}")),
    };
    Attempt { relay: relay.map(str::to_string), tls: false, reply: e.reply().cloned(), class: Some(e.class()), detail }
}

fn dns_error(noun: &str, name: &str, why: &str) -> Attempt {
    Attempt::failed(ErrorClass::Dns, format!("cannot resolve {noun} {name}: {why}"))
}

/// A session and the connection slot it occupies.
struct Conn {
    client: Client,
    permit: OwnedSemaphorePermit,
    /// Messages this session has carried (transactions run, whatever
    /// their answer).
    sent: u32,
}

struct Idle {
    /// The host's key (`name:port`).
    host: String,
    conn: Conn,
    since: Instant,
}

/// Idle sessions, reusable per host, and the slots that bound how many
/// connections are open at once. A flat list: it never holds more than
/// `relay.max_connections` entries.
struct Pool {
    slots: Arc<Semaphore>,
    /// Signalled when a session comes back: a delivery waiting for a slot
    /// may be able to use it instead (an idle session keeps its slot).
    returned: Notify,
    idle_timeout: Duration,
    state: Mutex<PoolState>,
}

/// What a delivery gets from the pool.
enum Checkout {
    Reused(Box<Conn>),
    /// A free connection slot: open a new session with it.
    Slot(OwnedSemaphorePermit),
}

#[derive(Default)]
struct PoolState {
    idle: Vec<Idle>,
    /// A reaper task is running; it stops when the pool is empty.
    reaping: bool,
}

impl Pool {
    fn new(max_connections: usize, idle_timeout: Duration) -> Pool {
        Pool {
            slots: Arc::new(Semaphore::new(max_connections.max(1))),
            returned: Notify::new(),
            idle_timeout,
            state: Mutex::new(PoolState::default()),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, PoolState> {
        // A panic elsewhere while holding the lock leaves a list that is
        // still consistent; keep going with it.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The most recently used live session for `host`; expired and dead
    /// ones met on the way are closed.
    fn take(&self, host: &str) -> Option<Conn> {
        self.take_any(&[host]).map(|(_, conn)| conn)
    }

    /// The most recently used live session for any of `hosts`, with its key.
    fn take_any<S: AsRef<str>>(&self, hosts: &[S]) -> Option<(String, Conn)> {
        loop {
            let entry = {
                let mut state = self.lock();
                let expired = drain_expired(&mut state.idle, self.idle_timeout);
                quit_later(expired);
                let at = state.idle.iter().rposition(|e| hosts.iter().any(|h| h.as_ref() == e.host))?;
                state.idle.remove(at)
            };
            let mut conn = entry.conn;
            if conn.client.still_open() {
                return Some((entry.host, conn));
            }
            tracing::debug!("idle session to {} was closed by the server", conn.client.relay_label());
        }
    }

    /// Keeps a session that ended its transaction cleanly.
    fn put(self: &Arc<Self>, host: &str, conn: Conn) {
        let host = host.to_string();
        if self.idle_timeout.is_zero() {
            quit_later(vec![Idle { host, conn, since: Instant::now() }]);
            return;
        }
        {
            let mut state = self.lock();
            state.idle.push(Idle { host, conn, since: Instant::now() });
            if !state.reaping {
                state.reaping = true;
                tokio::spawn(reap(Arc::downgrade(self), self.idle_timeout));
            }
        }
        self.returned.notify_one();
    }

    /// A live idle session for `reuse_for` when given, else a slot for a new
    /// connection. With every slot taken, the oldest idle session (of
    /// another host, or `take` would have returned it) is closed without
    /// QUIT, so the bound holds at every instant, and gives its slot up;
    /// with none idle, wait for a slot or a returned session.
    async fn checkout(&self, reuse_for: Option<&str>) -> Checkout {
        loop {
            let returned = self.returned.notified();
            if let Some(conn) = reuse_for.and_then(|host| self.take(host)) {
                return Checkout::Reused(Box::new(conn));
            }
            if let Ok(permit) = self.slots.clone().try_acquire_owned() {
                return Checkout::Slot(permit);
            }
            let oldest = {
                let mut state = self.lock();
                (!state.idle.is_empty()).then(|| state.idle.remove(0))
            };
            if let Some(idle) = oldest {
                return Checkout::Slot(idle.conn.permit);
            }
            tokio::select! {
                permit = self.slots.clone().acquire_owned() => {
                    return Checkout::Slot(permit.expect("the connection semaphore is never closed"));
                }
                () = returned => {}
            }
        }
    }

    /// A slot for a new connection, never a pooled session.
    async fn slot(&self) -> OwnedSemaphorePermit {
        match self.checkout(None).await {
            Checkout::Slot(permit) => permit,
            Checkout::Reused(conn) => conn.permit,
        }
    }

    fn drain_all(&self) -> Vec<Idle> {
        std::mem::take(&mut self.lock().idle)
    }
}

fn drain_expired(idle: &mut Vec<Idle>, limit: Duration) -> Vec<Idle> {
    let (expired, kept) = std::mem::take(idle).into_iter().partition(|e| e.since.elapsed() >= limit);
    *idle = kept;
    expired
}

/// QUITs sessions in the background; each keeps its slot until closed.
fn quit_later(sessions: Vec<Idle>) {
    for idle in sessions {
        tracing::debug!("closing session to {}", idle.conn.client.relay_label());
        let Conn { client, permit, .. } = idle.conn;
        tokio::spawn(async move {
            client.quit().await;
            drop(permit);
        });
    }
}

/// Closes sessions idle past the timeout even when no mail comes to take
/// them; ends when the pool is empty or gone.
async fn reap(pool: Weak<Pool>, every: Duration) {
    loop {
        tokio::time::sleep(every).await;
        let Some(pool) = pool.upgrade() else { return };
        let mut state = pool.lock();
        let expired = drain_expired(&mut state.idle, pool.idle_timeout);
        if state.idle.is_empty() {
            state.reaping = false;
        }
        let done = !state.reaping;
        drop(state);
        quit_later(expired);
        if done {
            return;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::smtp::client::test_server::{HANG, Script, Server, start};
    use std::path::Path;

    fn config(hosts: &[String], extra: &str) -> Config {
        let list: Vec<String> = hosts.iter().map(|h| format!("\"{h}\"")).collect();
        let text = format!(
            "hostname = \"sat.test\"\n[relay]\nsmarthosts = [{}]\nconnect_timeout = \"2s\"\n{extra}",
            list.join(", ")
        );
        Config::parse(&text, Path::new("test.toml")).unwrap()
    }

    fn host(server: &Server) -> String {
        format!("[127.0.0.1]:{}", server.addr.port())
    }

    /// A port on which nothing listens.
    async fn closed_port() -> String {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        drop(listener);
        format!("127.0.0.1:{port}")
    }

    fn message(rcpts: &[&str]) -> OutMessage {
        OutMessage::simple("TESTID", "cron@sat.test", rcpts, b"Subject: test\r\n\r\nbody\r\n")
    }

    /// `D`, `T` or `P` per outcome.
    fn kinds(delivery: &Delivery) -> String {
        let kind = |o: &Outcome| match o {
            Outcome::Delivered(_) => 'D',
            Outcome::Transient(_) => 'T',
            Outcome::Permanent(_) => 'P',
        };
        delivery.outcomes.iter().map(kind).collect()
    }

    fn bodies(server: &Server) -> usize {
        server.log().iter().filter(|l| l.starts_with("BODY")).count()
    }

    #[tokio::test]
    async fn refused_connection_fails_over_to_the_next_host() {
        let second = start(Script::esmtp(&["PIPELINING"])).await;
        let relay = Relay::new(&config(&[closed_port().await, host(&second)], ""));
        let delivery = relay.deliver(&message(&["a@hub.test", "b@hub.test"])).await;
        assert_eq!(kinds(&delivery), "DD");
        assert!(!delivery.hop_down);
        let attempt = delivery.outcomes[0].attempt();
        assert_eq!(attempt.relay.as_deref(), Some(format!("127.0.0.1[127.0.0.1]:{}", second.addr.port()).as_str()));
        assert_eq!(attempt.detail, "250 2.0.0 Ok: queued as TEST");
        assert!(!attempt.tls);
        assert_eq!(bodies(&second), 1);
    }

    #[tokio::test]
    async fn a_smarthost_that_is_our_own_listener_is_skipped_and_alone_bounces_5_4_6() {
        let me = start(Script::esmtp(&[])).await;
        let other = start(Script::esmtp(&[])).await;
        let own = format!("[smtp]\nlisten = [\"{}\"]\n", me.addr);
        let relay = Relay::new(&config(&[host(&me), host(&other)], &own));
        assert_eq!(kinds(&relay.deliver(&message(&["a@hub.test"])).await), "D");
        let alone = Relay::new(&config(&[host(&me)], &own));
        let delivery = alone.deliver(&message(&["a@hub.test", "b@hub.test"])).await;
        assert_eq!(kinds(&delivery), "PP");
        assert_eq!(delivery.outcomes[0].attempt().detail, "554 5.4.6 mail for 127.0.0.1 loops back to myself");
        assert_eq!((me.connections(), bodies(&other)), (0, 1));
    }

    #[tokio::test]
    async fn greeting_421_fails_over() {
        let mut busy = Script::esmtp(&[]);
        busy.greeting = "421 4.3.2 mx.test busy".into();
        let first = start(busy).await;
        let second = start(Script::esmtp(&["PIPELINING"])).await;
        let relay = Relay::new(&config(&[host(&first), host(&second)], ""));
        let delivery = relay.deliver(&message(&["a@hub.test"])).await;
        assert_eq!(kinds(&delivery), "D");
        assert_eq!(first.connections(), 1);
        assert_eq!(bodies(&second), 1);
    }

    #[tokio::test]
    async fn every_host_down_is_hop_down() {
        let mut busy = Script::esmtp(&[]);
        busy.greeting = "421 4.3.2 mx.test busy".into();
        let second = start(busy).await;
        let relay = Relay::new(&config(&[closed_port().await, host(&second)], ""));
        let delivery = relay.deliver(&message(&["a@hub.test", "b@hub.test"])).await;
        assert_eq!(kinds(&delivery), "TT");
        assert!(delivery.hop_down);
        // The last host's error is reported.
        let attempt = delivery.outcomes[1].attempt();
        assert_eq!(attempt.class, Some(ErrorClass::Reply4xx));
        assert_eq!(attempt.reply.as_ref().map(|r| r.code), Some(421));
        assert!(attempt.detail.contains("421 4.3.2 mx.test busy"), "{}", attempt.detail);

        let relay = Relay::new(&config(&[closed_port().await], ""));
        let delivery = relay.deliver(&message(&["a@hub.test"])).await;
        let attempt = delivery.outcomes[0].attempt();
        assert!(delivery.hop_down);
        assert_eq!(attempt.class, Some(ErrorClass::Connect));
        assert_eq!(attempt.relay, None);
        assert!(attempt.detail.starts_with("connect to 127.0.0.1[127.0.0.1]:"), "{}", attempt.detail);
    }

    #[tokio::test]
    async fn per_recipient_results() {
        let script = Script::esmtp(&["PIPELINING"])
            .rule("RCPT TO:<b@", "550 5.1.1 <b@hub.test>: Recipient address rejected")
            .rule("RCPT TO:<c@", "450 4.2.0 <c@hub.test>: try again");
        let first = start(script).await;
        let second = start(Script::esmtp(&["PIPELINING"])).await;
        let relay = Relay::new(&config(&[host(&first), host(&second)], ""));
        let delivery = relay.deliver(&message(&["a@hub.test", "b@hub.test", "c@hub.test"])).await;
        assert_eq!(kinds(&delivery), "DPT");
        assert!(!delivery.hop_down);
        let bounced = delivery.outcomes[1].attempt();
        assert_eq!(bounced.class, Some(ErrorClass::Reply5xx));
        assert_eq!(bounced.reply.as_ref().unwrap().code, 550);
        let label = format!("127.0.0.1[127.0.0.1]:{}", first.addr.port());
        assert_eq!(
            bounced.detail,
            format!("host {label} said: 550 5.1.1 <b@hub.test>: Recipient address rejected (in reply to RCPT TO)")
        );
        assert_eq!(delivery.outcomes[2].attempt().class, Some(ErrorClass::Reply4xx));
        // The deferred recipient waits for the next retry, not for host two.
        assert_eq!(second.connections(), 0);
    }

    #[tokio::test]
    async fn mail_refusals() {
        let first = start(Script::esmtp(&["PIPELINING"]).rule("MAIL", "451 4.3.0 try later")).await;
        let second = start(Script::esmtp(&["PIPELINING"])).await;
        let relay = Relay::new(&config(&[host(&first), host(&second)], ""));
        assert_eq!(kinds(&relay.deliver(&message(&["a@hub.test"])).await), "D");
        assert_eq!(bodies(&second), 1);

        let first = start(Script::esmtp(&["PIPELINING"]).rule("MAIL", "553 5.7.1 sender rejected")).await;
        let second = start(Script::esmtp(&["PIPELINING"])).await;
        let relay = Relay::new(&config(&[host(&first), host(&second)], ""));
        let delivery = relay.deliver(&message(&["a@hub.test", "b@hub.test"])).await;
        assert_eq!(kinds(&delivery), "PP");
        assert!(delivery.outcomes[0].attempt().detail.ends_with("(in reply to MAIL FROM)"));
        assert_eq!(second.connections(), 0);

        // MAIL 4xx everywhere: deferred, but the hosts are up.
        let first = start(Script::esmtp(&[]).rule("MAIL", "452 4.3.1 disk full")).await;
        let relay = Relay::new(&config(&[host(&first)], ""));
        let delivery = relay.deliver(&message(&["a@hub.test"])).await;
        assert_eq!(kinds(&delivery), "T");
        assert!(!delivery.hop_down);
    }

    #[tokio::test]
    async fn no_second_host_after_the_final_dot() {
        let first = start(Script::esmtp(&["PIPELINING"]).rule(".", HANG)).await;
        let second = start(Script::esmtp(&["PIPELINING"])).await;
        let relay = Relay::new(&config(&[host(&first), host(&second)], ""))
            .with_timeouts(Timeouts::default().capped(Duration::from_millis(300)));
        let delivery = relay.deliver(&message(&["a@hub.test"])).await;
        assert_eq!(kinds(&delivery), "T");
        assert_eq!(delivery.outcomes[0].attempt().class, Some(ErrorClass::Timeout));
        assert!(!delivery.hop_down);
        assert_eq!(second.connections(), 0, "the message may have arrived; no duplicate now");
    }

    #[tokio::test]
    async fn session_reused_for_the_next_message() {
        let server = start(Script::esmtp(&["PIPELINING"])).await;
        let relay = Relay::new(&config(&[host(&server)], ""));
        for _ in 0..3 {
            assert_eq!(kinds(&relay.deliver(&message(&["a@hub.test"])).await), "D");
        }
        assert_eq!(server.connections(), 1);
        assert_eq!(bodies(&server), 3);
    }

    #[tokio::test]
    async fn idle_session_past_the_timeout_is_not_reused() {
        let server = start(Script::esmtp(&["PIPELINING"])).await;
        let relay = Relay::new(&config(&[host(&server)], "idle_timeout = \"100ms\"\n"));
        assert_eq!(kinds(&relay.deliver(&message(&["a@hub.test"])).await), "D");
        tokio::time::sleep(Duration::from_millis(300)).await;
        assert_eq!(kinds(&relay.deliver(&message(&["a@hub.test"])).await), "D");
        assert_eq!(server.connections(), 2);
        // The expired session said goodbye.
        assert!(server.log().iter().any(|l| l == "QUIT"));
    }

    #[tokio::test]
    async fn stale_sessions_are_replaced_transparently() {
        // The server closes right after each message: noticed on take.
        let mut script = Script::esmtp(&["PIPELINING"]);
        script.close_after_message = true;
        let server = start(script).await;
        let relay = Relay::new(&config(&[host(&server)], ""));
        assert_eq!(kinds(&relay.deliver(&message(&["a@hub.test"])).await), "D");
        tokio::time::sleep(Duration::from_millis(100)).await;
        let delivery = relay.deliver(&message(&["a@hub.test"])).await;
        assert_eq!(kinds(&delivery), "D");
        assert_eq!(server.connections(), 2);

        // The server answers the second MAIL with 421 and closes: noticed
        // only when used, and still not a host failure.
        let mut script = Script::esmtp(&["PIPELINING"]);
        script.max_mail_per_conn = Some(1);
        let server = start(script).await;
        let relay = Relay::new(&config(&[host(&server)], ""));
        assert_eq!(kinds(&relay.deliver(&message(&["a@hub.test"])).await), "D");
        assert_eq!(kinds(&relay.deliver(&message(&["a@hub.test"])).await), "D");
        assert_eq!(server.connections(), 2);
        assert_eq!(bodies(&server), 2);
    }

    #[tokio::test]
    async fn connection_limit_holds() {
        let server = start(Script::esmtp(&["PIPELINING"])).await;
        let relay = Arc::new(Relay::new(&config(&[host(&server)], "max_connections = 1\n")));
        let deliveries: Vec<_> = (0..4)
            .map(|_| {
                let relay = relay.clone();
                tokio::spawn(async move { relay.deliver(&message(&["a@hub.test"])).await })
            })
            .collect();
        // Waiting deliveries must take the returned session, not wait for
        // it to expire.
        let all = async {
            for d in deliveries {
                assert_eq!(kinds(&d.await.unwrap()), "D");
            }
        };
        tokio::time::timeout(Duration::from_secs(5), all).await.expect("deliveries waited for an idle session");
        assert_eq!(server.connections(), 1, "one slot: every message on the same session");
    }

    #[tokio::test]
    async fn no_smarthost_configured() {
        let relay = Relay::new(&config(&[], ""));
        let delivery = relay.deliver(&message(&["a@hub.test", "b@hub.test"])).await;
        assert_eq!(kinds(&delivery), "TT");
        assert!(delivery.hop_down);
        let attempt = delivery.outcomes[0].attempt();
        assert_eq!(attempt.class, Some(ErrorClass::Local));
        assert_eq!(attempt.detail, "no smarthost configured (relay.smarthosts)");
    }

    #[tokio::test]
    async fn required_tls_never_falls_back_to_clear_text() {
        // Offered but refused, and not offered at all.
        let refusing =
            start(Script::esmtp(&["PIPELINING", "STARTTLS"]).rule("STARTTLS", "454 4.7.0 TLS not available")).await;
        let plain = start(Script::esmtp(&["PIPELINING"])).await;
        for (server, why) in [
            (&refusing, "required by policy, but STARTTLS was refused: 454 4.7.0 TLS not available"),
            (&plain, "required by policy, but STARTTLS is not offered"),
        ] {
            for policy in ["encrypt", "verify"] {
                let relay = Relay::new(&config(&[host(server)], &format!("tls = \"{policy}\"\n")));
                let delivery = relay.deliver(&message(&["a@hub.test"])).await;
                assert_eq!(kinds(&delivery), "T");
                assert!(delivery.hop_down);
                let attempt = delivery.outcomes[0].attempt();
                assert_eq!(attempt.class, Some(ErrorClass::Tls));
                assert!(attempt.detail.ends_with(&format!("TLS failed: {why}")), "{}", attempt.detail);
                assert!(!attempt.tls);
            }
            assert!(!server.log().iter().any(|l| l.starts_with("MAIL")), "nothing sent in clear: {:?}", server.log());
        }
        let server = &refusing;
        for policy in ["none", "may"] {
            let relay = Relay::new(&config(&[host(server)], &format!("tls = \"{policy}\"\n")));
            assert_eq!(kinds(&relay.deliver(&message(&["a@hub.test"])).await), "D");
        }
    }

    #[tokio::test]
    async fn close_idle_says_quit() {
        let server = start(Script::esmtp(&["PIPELINING"])).await;
        let relay = Relay::new(&config(&[host(&server)], ""));
        relay.deliver(&message(&["a@hub.test"])).await;
        relay.close_idle().await;
        assert_eq!(server.log().last().map(String::as_str), Some("QUIT"));
    }

    #[tokio::test]
    async fn host_lists_per_message_share_the_pool() {
        let host = |s: &Server| Host::named("127.0.0.1", s.addr.port());
        for reuse_any_host in [false, true] {
            let first = start(Script::esmtp(&["PIPELINING"])).await;
            let second = start(Script::esmtp(&["PIPELINING"])).await;
            let settings = Settings { reuse_any_host, noun: "MX host", ..Settings::relay(&config(&[], "")) };
            let relay = Relay::for_hosts(Vec::new(), settings);
            let delivery = relay.deliver_via(&[host(&second)], &message(&["a@hub.test"])).await;
            assert_eq!(kinds(&delivery), "D");
            // The first host is back in the list: with `reuse_any_host` the
            // open session to the second still takes the message.
            let delivery = relay.deliver_via(&[host(&first), host(&second)], &message(&["a@hub.test"])).await;
            assert_eq!(kinds(&delivery), "D");
            let want = if reuse_any_host { (0, 1) } else { (1, 1) };
            assert_eq!((first.connections(), second.connections()), want, "reuse_any_host = {reuse_any_host}");
            relay.close_idle().await;
            // An empty list: nothing to try, the destination is down.
            let delivery = relay.deliver_via(&[], &message(&["a@hub.test"])).await;
            assert_eq!(kinds(&delivery), "T");
            assert!(delivery.hop_down);
            assert_eq!(delivery.outcomes[0].attempt().detail, "no MX host to try");
        }
    }

    #[tokio::test]
    async fn given_addresses_are_used_as_they_are() {
        let server = start(Script::esmtp(&["PIPELINING"])).await;
        let settings = Settings { noun: "MX host", ..Settings::relay(&config(&[], "")) };
        let relay = Relay::for_hosts(
            vec![Host {
                name: "mx.example.test".into(),
                port: server.addr.port(),
                addrs: Some(vec![server.addr.ip()]),
            }],
            settings,
        );
        let delivery = relay.deliver(&message(&["a@hub.test"])).await;
        assert_eq!(kinds(&delivery), "D");
        let label = format!("mx.example.test[127.0.0.1]:{}", server.addr.port());
        assert_eq!(delivery.outcomes[0].attempt().relay.as_deref(), Some(label.as_str()));
        assert!(!relay.is_unused(), "the session is kept");

        let none = Relay::for_hosts(vec![Host { name: "mx.example.test".into(), port: 25, addrs: Some(vec![]) }], {
            Settings { noun: "MX host", ..Settings::relay(&config(&[], "")) }
        });
        let delivery = none.deliver(&message(&["a@hub.test"])).await;
        assert!(delivery.hop_down);
        assert_eq!(delivery.outcomes[0].attempt().detail, "cannot resolve MX host mx.example.test: no address");
    }
}
