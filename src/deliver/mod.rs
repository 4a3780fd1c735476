//! Delivery transports. Each transport takes one message that the queue has
//! loaded into memory and reports an `Outcome` per recipient; transports never
//! touch queue files (the queue records outcomes and moves files).
//!
//! - `relay`: every message to a list of hosts (the smarthosts, or one
//!   destination's MX hosts), in order, over pooled sessions.
//! - `mx`: to a domain by its MX records, or to an explicit next hop.
//! - `maildir`: into local Maildirs.
//! - `dns`: MX and address lookups for them.
//! - `dkim`: DKIM signing, applied here just before each SMTP transmission
//!   (8-bit mail in its 7-bit form, so no hop breaks the signature).
//! - `downconvert`: 8-bit MIME to 7 bit, for next hops without 8BITMIME
//!   (used by the SMTP client and before DKIM signing).
//! - `filter`: the after-queue content filter's pipe variant (its SMTP
//!   variant is an explicit next hop through `mx`).

pub mod dkim;
pub mod dns;
pub mod downconvert;
pub mod filter;
pub mod maildir;
pub mod mx;
pub mod relay;

use crate::route::router::{Decision, Router};
use crate::route::transport::Transport;
use crate::smtp::proto::reply::Reply;
use std::sync::Arc;

/// The envelope parameters a transport needs for one recipient.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct OutRecipient {
    /// Index of this recipient in the queued envelope; outcomes refer to it.
    pub index: usize,
    pub address: String,
    /// RFC 3461 NOTIFY value as received (`SUCCESS,FAILURE`), passed on when
    /// the next hop offers DSN.
    pub notify: Option<String>,
    /// RFC 3461 ORCPT value as received (`rfc822;user@example.org`).
    pub orcpt: Option<String>,
}

/// One message handed to a transport.
#[derive(Clone, Debug)]
pub struct OutMessage {
    /// Queue id, for logs.
    pub id: String,
    /// Reverse path without angle brackets; empty for the null sender.
    pub sender: String,
    pub recipients: Vec<OutRecipient>,
    /// The message exactly as stored: CRLF line ends, not dot-stuffed.
    pub body: Arc<[u8]>,
    /// The message contains 8-bit data (BODY=8BITMIME was given on intake).
    pub eight_bit: bool,
    /// SMTPUTF8 was given on intake.
    pub smtputf8: bool,
    /// RFC 3461 RET and ENVID, when given on intake.
    pub ret: Option<String>,
    pub envid: Option<String>,
    /// The trace id, passed on as `TRACE=` when the next hop is posthorn.
    pub trace_id: Option<String>,
}

impl OutMessage {
    /// A plain message to `recipients` (indexes in order, no DSN
    /// parameters), as transports' tests and tools need one.
    pub fn simple(id: &str, sender: &str, recipients: &[&str], body: &[u8]) -> OutMessage {
        OutMessage {
            id: id.to_string(),
            sender: sender.to_string(),
            recipients: recipients
                .iter()
                .enumerate()
                .map(|(index, a)| OutRecipient { index, address: a.to_string(), notify: None, orcpt: None })
                .collect(),
            body: Arc::from(body),
            eight_bit: body.iter().any(|b| *b >= 0x80),
            smtputf8: false,
            ret: None,
            envid: None,
            trace_id: None,
        }
    }
}

/// What went wrong when no reply was available, for logs and `queue why`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ErrorClass {
    Dns,
    Connect,
    Tls,
    Timeout,
    Protocol,
    /// The remote server answered 4xx.
    #[serde(rename = "4xx")]
    Reply4xx,
    /// The remote server answered 5xx.
    #[serde(rename = "5xx")]
    Reply5xx,
    /// Local trouble (reading the message, configuration).
    Local,
}

/// The result for one recipient: the type that carries transient vs
/// permanent from the SMTP client all the way to the bounce.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Outcome {
    Delivered(Attempt),
    Transient(Attempt),
    Permanent(Attempt),
}

/// Where and how one recipient was tried, and what came back.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Attempt {
    /// `host[ip]:port` of the server that gave the answer, when one was reached.
    pub relay: Option<String>,
    /// Whether the connection was encrypted.
    pub tls: bool,
    /// The remote reply when there was one.
    pub reply: Option<Reply>,
    /// The error class when there was no usable reply (or the reply's class).
    pub class: Option<ErrorClass>,
    /// Human-readable reason, safe to log and to put in a bounce.
    pub detail: String,
}

impl Outcome {
    pub fn attempt(&self) -> &Attempt {
        match self {
            Outcome::Delivered(a) | Outcome::Transient(a) | Outcome::Permanent(a) => a,
        }
    }
}

/// What a transport reports for one message.
#[derive(Clone, Debug)]
pub struct Delivery {
    /// One outcome per recipient handed in, in the same order.
    pub outcomes: Vec<Outcome>,
    /// The next hop as a whole could not be reached (every host refused,
    /// timed out or failed DNS): the queue then holds back every message for
    /// that destination until its retry time, instead of knocking again.
    pub hop_down: bool,
    /// The server that took the message offered DSN, so NOTIFY went on with
    /// it and success notices are its job (RFC 3461 5.2.2); otherwise a
    /// NOTIFY=SUCCESS recipient gets a "relayed" notice from us.
    pub remote_dsn: bool,
}

/// The next hop for a group of recipients: which transport, to where.
/// Recipients of one message with the same hop are delivered together.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum Hop {
    /// The configured smarthosts (`relay.smarthosts`), with failover.
    Relay,
    /// The MX hosts of a domain.
    Mx(String),
    /// An explicit next hop from the transport table.
    Smtp(mx::Target),
    /// Local delivery.
    Maildir,
    /// The after-queue content filter, before any of the above: the whole
    /// message with all its recipients (in the filtered domains) at once.
    Filter(crate::config::FilterSpec),
}

impl Hop {
    /// The destination key its backoff and connection limit are kept under.
    pub fn key(&self) -> String {
        match self {
            Hop::Relay => "relay".into(),
            Hop::Mx(domain) => format!("mx:{domain}"),
            Hop::Smtp(target) => format!("smtp:{target}"),
            Hop::Maildir => "maildir".into(),
            Hop::Filter(crate::config::FilterSpec::Smtp(target)) => format!("filter:smtp:{target}"),
            Hop::Filter(crate::config::FilterSpec::Pipe(argv)) => format!("filter:pipe:{}", argv[0]),
        }
    }

    /// The hop for a routing decision.
    pub fn from_decision(decision: Decision) -> Hop {
        match decision {
            Decision::Smarthosts => Hop::Relay,
            Decision::Next { hop, domain } => match (hop.transport, hop.host, hop.port) {
                (Transport::Maildir, _, _) => Hop::Maildir,
                (_, None, None) => Hop::Mx(domain),
                (_, host, port) => Hop::Smtp(mx::Target { host: host.unwrap_or(domain), port, mx: hop.mx_lookup }),
            },
        }
    }
}

/// Every transport the daemon has, built once per configuration, and the
/// router that picks among them at delivery time.
pub struct Transports {
    router: Arc<Router>,
    relay: relay::Relay,
    mx: mx::Mx,
    maildir: maildir::Maildir,
    filter: crate::config::Filter,
    /// DKIM keys; `None` when none is configured.
    dkim: Option<dkim::Signer>,
}

impl Transports {
    pub fn new(config: &crate::config::Config, router: Arc<Router>) -> anyhow::Result<Transports> {
        let dns = Arc::new(dns::Dns::from_config(config)?);
        Ok(Transports {
            router,
            relay: relay::Relay::new(config).with_dns(dns.clone()),
            mx: mx::Mx::new(config, dns),
            maildir: maildir::Maildir::new(config),
            filter: config.filter.clone(),
            dkim: dkim::Signer::new(&config.dkim.keys, &config.dkim.headers)?,
        })
    }

    /// Where `address` goes next, decided now (so a changed table applies
    /// to mail already queued).
    pub fn hop_for(&self, address: &str) -> Hop {
        Hop::from_decision(self.router.decide(address))
    }

    /// Where `address` of a message goes next: the content filter first
    /// unless the message came back from it (`filtered`) or the address is
    /// outside `filter.domains`.
    pub fn hop_for_message(&self, filtered: bool, address: &str) -> Hop {
        match crate::route::router::content_filter(&self.filter, filtered, address) {
            Some(spec) => Hop::Filter(spec.clone()),
            None => self.hop_for(address),
        }
    }

    pub async fn deliver(&self, hop: &Hop, msg: &OutMessage) -> Delivery {
        // Signed last, after the filter and just before an SMTP
        // transmission; never for Maildir nor on the way to the filter.
        // 8-bit mail is signed and sent in its 7-bit form, which no hop
        // converts again (`dkim::Signer::sign_message`, RFC 6376 5.3).
        let signed;
        let msg = match (&self.dkim, hop) {
            (Some(signer), Hop::Relay | Hop::Mx(_) | Hop::Smtp(_)) => match signer.sign_message(msg) {
                Some(m) => {
                    signed = m;
                    &signed
                }
                None => msg,
            },
            _ => msg,
        };
        match hop {
            Hop::Relay => self.relay.deliver(msg).await,
            Hop::Mx(domain) => self.mx.deliver(domain, msg).await,
            Hop::Smtp(target) => self.mx.deliver_to(target, msg).await,
            Hop::Maildir => self.maildir.deliver(msg).await,
            Hop::Filter(crate::config::FilterSpec::Smtp(target)) => self.mx.deliver_to(target, msg).await,
            Hop::Filter(crate::config::FilterSpec::Pipe(argv)) => {
                filter::run_pipe(argv, self.filter.pipe_timeout, msg).await
            }
        }
    }

    /// Closes idle pooled connections politely (shutdown, reload).
    pub async fn close_idle(&self) {
        self.relay.close_idle().await;
        self.mx.close_idle().await;
    }
}
