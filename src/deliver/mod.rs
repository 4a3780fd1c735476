//! Delivery transports. Each transport takes one message that the queue has
//! loaded into memory and reports an `Outcome` per recipient; transports never
//! touch queue files (the queue records outcomes and moves files).
//!
//! - `relay`: every message to a list of hosts (the smarthosts, or one
//!   destination's MX hosts), in order, over pooled sessions.
//! - `mx`: to a domain by its MX records, or to an explicit next hop.
//! - `maildir`: into local Maildirs.
//! - `lmtp`: to an LMTP server (a mail store such as Dovecot), a reply per
//!   recipient.
//! - `local`: as the local user, into an mbox or a home mailbox (`local:`),
//!   through `local_agent` (the part that keeps root) for other accounts;
//!   `mbox` appends to an mbox file with its locks; `local_command` runs
//!   an alias's `|command` and appends to its `/file`; `forward` reads
//!   and carries out a user's `.forward`.
//! - `dns`: MX and address lookups for them.
//! - `eyeballs`: Happy Eyeballs (RFC 8305), the race between a host's
//!   addresses for the TCP connection.
//! - `myself`: whether a next hop's address is this daemon (a mail loop).
//! - `dkim`: DKIM signing, applied here just before each SMTP transmission
//!   (8-bit mail in its 7-bit form, so no hop breaks the signature).
//! - `filter`: the after-queue content filter's pipe variant (its SMTP
//!   variant is an explicit next hop through `mx`).
//! - `tls_policy`: the TLS level and certificate names of each SMTP next
//!   hop (the policy table's values; `route::tls_policy` reads the table).
//! - `mta_sts`: MTA-STS policies (RFC 8461) of MX-delivered domains,
//!   fetched over HTTPS and cached in the spool; `mx` applies them.
//! - `tls_report`: each MX delivery's TLS result per domain, recorded in
//!   the spool, and the RFC 8460 report made of a day's record.

pub(crate) mod dane;
pub(crate) mod dkim;
pub mod dns;
pub(crate) mod eyeballs;
pub(crate) mod filter;
pub mod forward;
pub(crate) mod lmtp;
pub(crate) mod local;
pub(crate) mod local_agent;
pub(crate) mod local_command;
pub mod maildir;
pub(crate) mod mbox;
pub mod mta_sts;
pub mod mx;
pub(crate) mod myself;
pub mod relay;
pub(crate) mod tls_policy;
pub(crate) mod tls_report;

use crate::message::OutMessage;
use crate::message::nexthop::{FilterSpec, Hop};
use crate::message::outcome::Outcome;
use crate::message::seal;
use std::sync::Arc;

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
    pub(crate) remote_dsn: bool,
    /// How long the session took to become ready to send (connection,
    /// greeting, EHLO, TLS, AUTH): `delays=` c in the log. Zero on a
    /// reused connection; `None` where there is no session to set up.
    pub(crate) setup: Option<std::time::Duration>,
    /// What `local` leaves to the queue besides the outcomes.
    pub(crate) followups: Vec<Followup>,
}

/// Work for the queue after a `local` delivery.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum Followup {
    /// A recipient's `.forward` sends the message on: the queue commits
    /// the new copy before it counts the recipient delivered.
    Forward(Forward),
    /// The commands and files of an alias (`|cmd`, `/path`) that took the
    /// message before another one failed: the recipient's next attempt
    /// skips them (`OutRecipient::done`).
    Done { outcome: usize, parts: Vec<String> },
}

/// Addresses a recipient's `.forward` names, for a new message.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Forward {
    /// The recipient's position in `outcomes`.
    pub(crate) outcome: usize,
    /// The recipient whose `.forward` it is: the copy's `Delivered-To:`.
    pub(crate) from: String,
    pub(crate) to: Vec<String>,
}

/// Every transport the daemon has, built once per configuration. Which
/// one a recipient needs is `route`'s decision, made before this is asked.
pub(crate) struct Transports {
    relay: relay::Relay,
    mx: mx::Mx,
    maildir: maildir::Maildir,
    local: local::Local,
    lmtp: lmtp::Lmtp,
    /// How long a pipe filter may run.
    pipe_timeout: std::time::Duration,
    /// DKIM keys; `None` when none is configured.
    dkim: Option<dkim::Signer>,
}

impl Transports {
    /// The transports of `config`; `tls_table` holds the TLS policy table
    /// entries (`route::tls_policy`), `None` when none is configured.
    pub(crate) fn new(
        config: &crate::config::Config,
        tls_table: Option<Arc<dyn tls_policy::PolicyTable>>,
    ) -> anyhow::Result<Transports> {
        let dns = Arc::new(dns::Dns::from_config(config)?);
        Ok(Transports {
            relay: relay::Relay::with_table(config, tls_table.clone()).with_dns(dns.clone()),
            mx: mx::Mx::with_table(config, dns, tls_table),
            maildir: maildir::Maildir::new(config),
            local: local::Local::new(config),
            lmtp: lmtp::Lmtp::new(config),
            pipe_timeout: config.filter.pipe_timeout,
            dkim: dkim::Signer::new(&config.dkim.keys, &config.dkim.headers)?,
        })
    }

    pub(crate) async fn deliver(&self, hop: &Hop, msg: &OutMessage) -> Delivery {
        // A body declared 7BIT (no BODY=8BITMIME) may still hold 8-bit
        // octets: it is taken for what it is, so that it is converted for a
        // hop without 8BITMIME (or fails with 5.6.3), never sent raw, and
        // signed in that converted form.
        let labelled;
        let msg = if !msg.eight_bit && msg.body.has_8bit() {
            labelled = OutMessage { eight_bit: true, ..msg.clone() };
            &labelled
        } else {
            msg
        };
        // Signed last, after the filter and just before an SMTP
        // transmission; never for Maildir nor on the way to the filter,
        // and only mail whose source we vouch for (`OutMessage::trusted`):
        // anyone else's `From:` is not ours to sign.
        // 8-bit mail is signed and sent in its 7-bit form, which no hop
        // converts again (`dkim::Signer::sign_message`, RFC 6376 5.3).
        let signed;
        let msg = match (&self.dkim, hop) {
            (Some(signer), Hop::Relay | Hop::Mx(_) | Hop::Smtp(_)) if msg.trusted => match signer.sign_message(msg) {
                Some(m) => {
                    signed = m;
                    &signed
                }
                None => msg,
            },
            _ => msg,
        };
        // On the way to the filter: the seal says whether we vouch for it
        // when it comes back (`message::seal`).
        let sealed;
        let msg = match hop {
            Hop::Filter(_) => {
                let field = seal::field(&msg.id, &msg.sender, msg.trusted);
                let body = [field.as_bytes(), &msg.body].concat().into();
                sealed = OutMessage { body, to_filter: true, ..msg.clone() };
                &sealed
            }
            _ => msg,
        };
        match hop {
            Hop::Relay => self.relay.deliver(msg).await,
            Hop::Mx(domain) => self.mx.deliver(domain, msg).await,
            Hop::Smtp(target) => self.mx.deliver_to(target, msg).await,
            Hop::Maildir => self.maildir.deliver(msg).await,
            Hop::Local => self.local.deliver(msg).await,
            Hop::Lmtp(target) => self.lmtp.deliver(target, msg).await,
            Hop::Filter(FilterSpec::Smtp(target)) => self.mx.deliver_to(target, msg).await,
            Hop::Filter(FilterSpec::Pipe(argv)) => filter::run_pipe(argv, self.pipe_timeout, msg).await,
        }
    }

    /// Closes idle pooled connections politely (shutdown, reload).
    pub(crate) async fn close_idle(&self) {
        self.relay.close_idle().await;
        self.mx.close_idle().await;
    }
}
