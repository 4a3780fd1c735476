//! The one door into the queue.
//!
//! Everything that creates a message goes through here: SMTP sessions,
//! `sendmail` (through the maildrop), and later bounces and filter
//! reinjection. So the `Received:` header, the headers added to local
//! submissions, the size limit, the durable commit and the "new mail"
//! notice to the scheduler happen in one place, the same way for all.
//!
//! An `Ingress` either feeds the spool (inside the daemon) or writes to the
//! maildrop (inside `sendmail -bs`, when no daemon process is involved);
//! the SMTP session cannot tell the difference.
//!
//! The door also keeps the spool from filling up (Postfix's
//! `queue_minfree`): below `queue.min_free` of free space every door but the
//! daemon's own notices refuses new mail with `452 4.3.1`, so that what is
//! queued can still be deferred and bounced. A write that fails because the
//! disk is full gets the same reply, and its errno goes to the log.

pub(crate) mod local;
pub(crate) mod maildrop;
pub(crate) mod milters;

use crate::clock;
use crate::config::Config;
use crate::message::addrlist;
use crate::message::header::HopCounter;
use crate::message::outcome::printable;
use crate::message::seal::{self, Verdict};
use crate::metrics::{Door, Metrics};
use crate::route::router::Router;
use crate::smtp::proto::command::BodyType;
use crate::smtp::proto::reply::{Enhanced, Reply};
use crate::spool::envelope::{self, Envelope, Origin, Recipient};
use crate::spool::space::{self, NoRoom};
use crate::spool::{BodyWriter, Spool, State};
use std::io;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use tokio::sync::mpsc;

/// How the message arrived: the `with` clause of `Received:`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Protocol {
    Smtp,
    Esmtp,
    /// ESMTP over TLS, authenticated, or both (RFC 3848).
    Esmtps,
    Esmtpa,
    Esmtpsa,
    Local,
}

impl Protocol {
    fn name(self) -> &'static str {
        match self {
            Protocol::Smtp => "SMTP",
            Protocol::Esmtp => "ESMTP",
            Protocol::Esmtps => "ESMTPS",
            Protocol::Esmtpa => "ESMTPA",
            Protocol::Esmtpsa => "ESMTPSA",
            Protocol::Local => "local",
        }
    }
}

/// How the message arrived: protocol, peer and user, for `Received:`.
#[derive(Clone, Debug)]
pub(crate) struct Arrival {
    pub(crate) protocol: Protocol,
    pub(crate) helo: Option<String>,
    pub(crate) client: Option<SocketAddr>,
    pub(crate) local_user: Option<String>,
    /// The SMTP AUTH user, set only when `Received:` is to name it
    /// (`tls.received_auth_user`).
    pub(crate) auth_user: Option<String>,
    /// The SASL mechanism and user of an authenticated client, for the
    /// log line (`sasl_method=`, `sasl_username=`), whatever `Received:` says.
    pub(crate) sasl: Option<(&'static str, String)>,
    /// The client is one whose mail we vouch for (local, trusted network,
    /// authenticated, trusted certificate): only its mail is DKIM-signed.
    pub(crate) trusted: bool,
}

#[derive(Clone, Debug)]
pub(crate) struct RcptIn {
    pub(crate) address: String,
    pub(crate) notify: Option<String>,
    pub(crate) orcpt: Option<String>,
}

/// One message's envelope as the client gave it.
#[derive(Clone, Debug)]
pub(crate) struct Transaction {
    /// Reverse path without angle brackets; empty for the null sender.
    pub(crate) sender: String,
    pub(crate) recipients: Vec<RcptIn>,
    pub(crate) body: BodyType,
    pub(crate) smtputf8: bool,
    pub(crate) ret: Option<String>,
    pub(crate) envid: Option<String>,
    /// The trace id the previous hop passed with `TRACE=`.
    pub(crate) trace_id: Option<String>,
    /// The local recipient whose `.forward` names these recipients: a
    /// copy that leaves the hub's domains is forwarded (SRS applies).
    pub(crate) forwarded_by: Option<String>,
    pub(crate) origin: Arrival,
}

impl Arrival {
    /// A local submission by `user` (sendmail, maildrop pickup, notices).
    pub(crate) fn local(user: &str) -> Arrival {
        Arrival {
            protocol: Protocol::Local,
            helo: None,
            client: None,
            local_user: Some(user.to_string()),
            auth_user: None,
            sasl: None,
            trusted: true,
        }
    }
}

impl Transaction {
    /// A delivery status notification to `recipient`: from the null
    /// sender (RFC 3461 6.2), so it is never answered with another.
    pub(crate) fn notice_to(recipient: &str, smtputf8: bool) -> Transaction {
        Transaction {
            sender: String::new(),
            recipients: vec![RcptIn { address: recipient.to_string(), notify: None, orcpt: None }],
            body: BodyType::EightBitMime,
            smtputf8,
            ret: None,
            envid: None,
            trace_id: None,
            forwarded_by: None,
            origin: Arrival::local("MAILER-DAEMON"),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub(crate) enum IngressError {
    #[error("message exceeds the size limit of {0} bytes")]
    TooBig(u64),
    #[error("no recipients")]
    NoRecipients,
    #[error("spool I/O: {}", crate::message::outcome::strerror(.0))]
    Io(#[from] io::Error),
    /// Less free space than `queue.min_free`: new mail waits.
    #[error("insufficient spool space: {0}")]
    NoRoom(#[from] NoRoom),
    /// A recipient the routing tables refuse (alias loop, unknown user).
    #[error("{0}")]
    Rejected(Reply),
    /// More `Received:` fields than `smtp.hopcount_limit`: a mail loop.
    #[error("too many hops: {0} Received: header fields")]
    TooManyHops(usize),
}

impl IngressError {
    /// The reply an SMTP client gets; never exposes local paths.
    pub(crate) fn reply(&self) -> Reply {
        match self {
            IngressError::TooBig(_) => Reply::new(552, Enhanced(5, 3, 4), "Message size exceeds fixed limit"),
            IngressError::NoRecipients => Reply::new(554, Enhanced(5, 5, 1), "No valid recipients"),
            IngressError::Io(e) if space::is_full(e) => insufficient_storage(),
            IngressError::NoRoom(_) => insufficient_storage(),
            IngressError::Io(_) => Reply::new(451, Enhanced(4, 3, 0), "Local error in processing, try again later"),
            IngressError::Rejected(reply) => reply.clone(),
            IngressError::TooManyHops(_) => Reply::new(554, Enhanced(5, 4, 6), "Too many hops"),
        }
    }
}

/// RFC 3463 4.3.1, the reply for a full disk (Postfix's wording).
fn insufficient_storage() -> Reply {
    Reply::new(452, Enhanced(4, 3, 1), "Insufficient system storage")
}

pub(crate) use crate::message::TRACE_HEADER;

enum Sink {
    /// Inside the daemon: commit to the spool, tell the scheduler.
    Queue { spool: Spool, scheduler: Option<mpsc::UnboundedSender<Envelope>> },
    /// Inside `sendmail -bs`: each message becomes a maildrop file.
    Maildrop { dir: PathBuf },
}

struct Inner {
    hostname: String,
    /// The domain of unqualified addresses (`myorigin`).
    myorigin: String,
    max_size: u64,
    sink: Sink,
    /// Virtual aliases and local recipient checks; none on a plain satellite.
    router: Option<Arc<Router>>,
    /// A satellite stamps a trace id (its queue id) on mail that has none.
    stamp_trace: bool,
    hopcount_limit: usize,
    /// `queue.min_free`; `None`: the spool's default.
    min_free: Option<u64>,
    /// `milter.non_smtpd_milters`, when there are any: local submissions
    /// go through them (`local::submit`).
    non_smtpd_milters: Option<crate::config::Milter>,
}

/// Cheap to clone; every session holds one.
#[derive(Clone)]
pub(crate) struct Ingress {
    inner: Arc<Inner>,
    /// Mail through this door came back from the content filter.
    filtered: bool,
    /// Which door `posthorn_messages_accepted_total` counts a commit under;
    /// the SMTP listeners and the notices set theirs, the rest is local.
    door: Door,
    metrics: Arc<Metrics>,
}

impl Ingress {
    /// The daemon's door: messages go to `spool`, and their envelopes to the
    /// scheduler once durable.
    pub(crate) fn to_queue(
        config: &Config,
        spool: Spool,
        scheduler: Option<mpsc::UnboundedSender<Envelope>>,
        router: Option<Arc<Router>>,
    ) -> Ingress {
        Ingress::new(config, Sink::Queue { spool, scheduler }, router)
    }

    /// `sendmail -bs`'s door: messages become maildrop files for the daemon.
    pub(crate) fn to_maildrop(config: &Config, dir: PathBuf) -> Ingress {
        Ingress::new(config, Sink::Maildrop { dir }, None)
    }

    fn new(config: &Config, sink: Sink, router: Option<Arc<Router>>) -> Ingress {
        Ingress {
            inner: Arc::new(Inner {
                hostname: config.hostname.clone(),
                myorigin: config.myorigin.clone(),
                max_size: config.smtp.max_message_size,
                sink,
                router,
                stamp_trace: config.role == crate::config::Role::Satellite,
                hopcount_limit: config.smtp.hopcount_limit,
                min_free: config.queue.min_free,
                non_smtpd_milters: (!config.milter.non_smtpd_milters.is_empty()).then(|| config.milter.clone()),
            }),
            filtered: false,
            door: Door::Local,
            metrics: Arc::default(),
        }
    }

    /// The same door, counting what it commits into `metrics`.
    pub(crate) fn with_metrics(self, metrics: Arc<Metrics>) -> Ingress {
        Ingress { metrics, ..self }
    }

    /// The same door, its commits counted as arriving through `door`.
    pub(crate) fn counted_as(&self, door: Door) -> Ingress {
        Ingress { door, ..self.clone() }
    }

    /// The same door for the filter's reinjection listener: what enters
    /// through it is marked filtered, so it is never filtered again.
    pub(crate) fn reinjection(&self) -> Ingress {
        Ingress { filtered: true, door: Door::Reinject, ..self.clone() }
    }

    /// Whether this is the content filter's reinjection door.
    pub(crate) fn is_reinjection(&self) -> bool {
        self.door == Door::Reinject
    }

    /// Whether `address` is acceptable as a recipient: it expands without
    /// a loop, and its final recipients in local domains exist. Asked at
    /// RCPT so that unknown users are refused, not bounced later.
    pub(crate) fn check_recipient(&self, address: &str) -> Result<(), Reply> {
        match &self.inner.router {
            None => Ok(()),
            Some(router) => router
                .check(address)
                .map(|_| ())
                .map_err(|r| Reply::new(r.code, Enhanced(r.status.0, r.status.1, r.status.2), r.text)),
        }
    }

    /// Replaces each recipient by its final recipients (virtual aliases,
    /// catch-all, local aliases), remembering the original in ORCPT, and
    /// drops duplicates. This is the one place aliases are applied.
    /// The flag says whether an alias forwards the message out of the
    /// hub's domains (what SRS is for).
    fn expand(&self, recipients: Vec<RcptIn>, forwarded_by: Option<&str>) -> Result<(Vec<RcptIn>, bool), IngressError> {
        let Some(router) = &self.inner.router else { return Ok((recipients, false)) };
        let mut forwarded = false;
        let mut out: Vec<RcptIn> = Vec::with_capacity(recipients.len());
        let mut seen = std::collections::HashSet::new();
        for r in recipients {
            let finals = router.check(&r.address).map_err(|refusal| {
                IngressError::Rejected(Reply::new(
                    refusal.code,
                    Enhanced(refusal.status.0, refusal.status.1, refusal.status.2),
                    refusal.text,
                ))
            })?;
            for address in finals {
                if !seen.insert(address.to_ascii_lowercase()) {
                    continue;
                }
                let original = forwarded_by.unwrap_or(&r.address);
                forwarded |= router.srs().is_some_and(|srs| srs.forwards(original, &address));
                let orcpt = r.orcpt.clone().or_else(|| (address != r.address).then(|| format!("rfc822;{}", r.address)));
                out.push(RcptIn { address, notify: r.notify.clone(), orcpt });
            }
        }
        Ok((out, forwarded))
    }

    pub(crate) fn hostname(&self) -> &str {
        &self.inner.hostname
    }

    /// The milters local submissions go through, if any.
    pub(crate) fn non_smtpd_milters(&self) -> Option<&crate::config::Milter> {
        self.inner.non_smtpd_milters.as_ref()
    }

    /// The domain unqualified addresses get (`myorigin`).
    pub(crate) fn myorigin(&self) -> &str {
        &self.inner.myorigin
    }

    pub(crate) fn max_size(&self) -> u64 {
        self.inner.max_size
    }

    /// Whether the queue takes new mail now: the spool has `queue.min_free`
    /// of free space (asked at most once a second). The daemon's own
    /// notices pass regardless: the space kept free is for them.
    pub(crate) fn room(&self) -> Result<(), IngressError> {
        match &self.inner.sink {
            Sink::Queue { spool, .. } if self.door != Door::Notice => Ok(spool.room(self.inner.min_free)?),
            _ => Ok(()),
        }
    }

    /// Why the queue cannot take mail as it should (too little free space,
    /// failing writes), for the health check; `None` when it can.
    pub(crate) fn storage_trouble(&self) -> Option<String> {
        let Sink::Queue { spool, .. } = &self.inner.sink else { return None };
        match spool.room(self.inner.min_free) {
            Err(low) => Some(low.to_string()),
            Ok(()) => spool.failing().map(|why| format!("spool writes failing: {why}")),
        }
    }

    /// Starts a message: allocates its queue id and writes the `Received:`
    /// header. The caller streams the message with `write` and ends with
    /// `commit`; dropping the writer discards the message.
    pub(crate) async fn open(&self, mut tx: Transaction) -> Result<MessageWriter, IngressError> {
        let local = tx.origin.protocol == Protocol::Local;
        let canonical = self.inner.router.as_ref().and_then(|r| r.canonical());
        if let Some(c) = canonical {
            tx.sender = c.sender(&tx.sender, local);
            for r in &mut tx.recipients {
                let rewritten = c.recipient(&r.address);
                if rewritten != r.address && r.orcpt.is_none() {
                    // The original recipient is the one before any rewriting.
                    r.orcpt = Some(format!("rfc822;{}", r.address));
                }
                r.address = rewritten;
            }
        }
        // The header block is held back until it is complete: seal fields
        // are taken out of it (`message::seal`), and `From:` is rewritten
        // (queue only: a maildrop file is handled when the daemon picks it
        // up).
        let rewrite = canonical.is_some_and(|c| c.rewrites_senders(local));
        let qualify = local || tx.origin.client.is_some_and(|c| c.ip().is_loopback());
        let head = matches!(self.inner.sink, Sink::Queue { .. }).then(|| HeldHead {
            buf: Vec::new(),
            local,
            rewrite,
            qualify,
        });
        let forwarded;
        (tx.recipients, forwarded) = self.expand(std::mem::take(&mut tx.recipients), tx.forwarded_by.as_deref())?;
        if tx.recipients.is_empty() {
            return Err(IngressError::NoRecipients);
        }
        let srs_from = match self.inner.router.as_ref().and_then(|r| r.srs()) {
            Some(srs) if forwarded => srs.rewrite_sender(&mut tx.sender),
            _ => None,
        };
        self.room()?;
        match &self.inner.sink {
            Sink::Queue { spool, .. } => {
                let id = spool.new_id();
                let mut body = spool.body_writer(&id);
                body.write(self.received(&tx, &id).as_bytes()).await?;
                if tx.trace_id.is_none() && self.inner.stamp_trace && !self.filtered {
                    body.write(format!("{TRACE_HEADER}: {id}\r\n").as_bytes()).await?;
                    tx.trace_id = Some(id.clone());
                }
                if let Some(original) = srs_from {
                    tracing::info!("{id}: sender=<{original}> rewritten by SRS to <{}>", tx.sender);
                }
                let mut env = self.envelope(&tx, &id);
                if self.door == Door::Reinject {
                    // The filter's address says nothing of the message's
                    // first source: only a seal of ours vouches for it.
                    env.trusted = Some(false);
                }
                Ok(MessageWriter {
                    ingress: self.clone(),
                    env,
                    out: Out::Queue(body),
                    written: 0,
                    head,
                    hops: Default::default(),
                    sasl: tx.origin.sasl.clone(),
                    message_id: None,
                    hold: false,
                })
            }
            Sink::Maildrop { .. } => {
                let id = maildrop::new_name();
                let env = self.envelope(&tx, &id);
                Ok(MessageWriter {
                    ingress: self.clone(),
                    env,
                    out: Out::Maildrop(Vec::new()),
                    written: 0,
                    head: None,
                    hops: Default::default(),
                    sasl: None,
                    message_id: None,
                    hold: false,
                })
            }
        }
    }

    /// Queues a complete message generated inside the daemon (delivery
    /// status notifications); returns its queue id once durable.
    pub(crate) async fn submit(&self, tx: Transaction, message: &[u8]) -> Result<String, IngressError> {
        let mut writer = self.open(tx).await?;
        writer.write(message).await?;
        writer.commit().await
    }

    fn envelope(&self, tx: &Transaction, id: &str) -> Envelope {
        let now = clock::now_secs();
        Envelope {
            v: envelope::VERSION,
            id: id.to_string(),
            arrival: now,
            sender: tx.sender.clone(),
            size: 0,
            eight_bit: tx.body != BodyType::SevenBit,
            smtputf8: tx.smtputf8,
            ret: tx.ret.clone(),
            envid: tx.envid.clone(),
            trace_id: tx.trace_id.clone(),
            origin: Origin {
                protocol: tx.origin.protocol.name().to_string(),
                helo: tx.origin.helo.clone(),
                client: tx.origin.client.map(|c| c.ip().to_string()),
                user: tx.origin.local_user.clone(),
            },
            recipients: tx
                .recipients
                .iter()
                .map(|r| Recipient::new(r.address.clone(), r.notify.clone(), r.orcpt.clone()))
                .collect(),
            attempts: 0,
            next_attempt: now,
            frozen: false,
            delay_warned: false,
            filtered: self.filtered,
            trusted: Some(tx.origin.trusted),
            auth_results: None,
        }
    }

    /// The trace header (RFC 5321 4.4). `for` names the recipient only when
    /// there is exactly one, so a Bcc list is never disclosed.
    fn received(&self, tx: &Transaction, id: &str) -> String {
        let mut h = String::from("Received: ");
        match (&tx.origin.helo, tx.origin.client) {
            (helo, Some(client)) => {
                let helo = helo.as_deref().map(sanitize).unwrap_or_else(|| "unknown".into());
                h.push_str(&format!("from {helo} ([{}])\r\n\t", client.ip()));
                if let Some(user) = &tx.origin.auth_user {
                    h.push_str(&format!("(Authenticated sender: {})\r\n\t", sanitize(user)));
                }
            }
            (_, None) => {
                if let Some(user) = &tx.origin.local_user {
                    h.push_str(&format!("(from {})\r\n\t", sanitize(user)));
                }
            }
        }
        h.push_str(&format!("by {} (posthorn) with {} id {id}", self.inner.hostname, tx.origin.protocol.name()));
        if let [only] = tx.recipients.as_slice() {
            h.push_str(&format!("\r\n\tfor <{}>", sanitize(&only.address)));
        }
        h.push_str(&format!("; {}\r\n", clock::rfc5322(clock::now_secs())));
        h
    }
}

/// Keeps client-supplied text from breaking a header: no CR, LF or
/// control characters, bounded length.
fn sanitize(s: &str) -> String {
    s.chars().filter(|c| !c.is_control()).take(255).collect()
}

enum Out {
    Queue(BodyWriter),
    Maildrop(Vec<u8>),
}

/// A message being received; see `Ingress::open`.
pub(crate) struct MessageWriter {
    ingress: Ingress,
    env: Envelope,
    out: Out,
    written: u64,
    /// The header block held back until it is complete (queue only).
    head: Option<HeldHead>,
    /// The `Received:` fields the message came with (ours is not counted).
    hops: HopCounter,
    /// For the log: the client's SASL mechanism and user, and the
    /// `Message-ID:` once the header block has gone by.
    sasl: Option<(&'static str, String)>,
    message_id: Option<String>,
    /// A milter quarantined the message: it is committed on hold.
    hold: bool,
}

struct HeldHead {
    buf: Vec<u8>,
    local: bool,
    /// Senders are rewritten (`From:`, `Sender:`).
    rewrite: bool,
    /// Addresses without a domain in address fields get `@myorigin`:
    /// local submissions and clients on this host (Postfix's
    /// `local_header_rewrite_clients` default, `permit_inet_interfaces`).
    qualify: bool,
}

/// A header block longer than this is passed on unchanged.
const HEAD_LIMIT: usize = 256 * 1024;

impl MessageWriter {
    pub(crate) fn id(&self) -> &str {
        &self.env.id
    }

    /// Dates the message from its submission (a maildrop file's time), not
    /// from now: `delay=` and the queue lifetime count from there, as
    /// Postfix's pickup keeps postdrop's time. Never later than now.
    pub(crate) fn set_arrival(&mut self, submitted: u64) {
        self.env.arrival = submitted.min(self.env.arrival);
    }

    /// A milter's SMFIR_CHGFROM: the envelope sender becomes `sender`.
    pub(crate) fn change_sender(&mut self, sender: String) {
        self.env.sender = sender;
    }

    /// A milter's SMFIR_ADDRCPT; a recipient already there is not doubled.
    pub(crate) fn add_recipient(&mut self, address: String) {
        if !self.env.recipients.iter().any(|r| r.address.eq_ignore_ascii_case(&address)) {
            self.env.recipients.push(Recipient::new(address, None, None));
        }
    }

    /// A milter's SMFIR_DELRCPT.
    pub(crate) fn remove_recipient(&mut self, address: &str) {
        self.env.recipients.retain(|r| !r.address.eq_ignore_ascii_case(address));
    }

    /// The `[verify]` results in short, kept on the envelope for
    /// `queue show`.
    pub(crate) fn set_auth_results(&mut self, results: String) {
        self.env.auth_results = Some(results);
    }

    /// A milter's SMFIR_QUARANTINE: the message goes to the hold queue
    /// instead of being delivered, until an operator releases it.
    pub(crate) fn hold(&mut self) {
        self.hold = true;
    }

    /// Appends decoded message bytes (CRLF line ends, not dot-stuffed).
    pub(crate) async fn write(&mut self, chunk: &[u8]) -> Result<(), IngressError> {
        self.written += chunk.len() as u64;
        if self.written > self.ingress.inner.max_size {
            return Err(IngressError::TooBig(self.ingress.inner.max_size));
        }
        self.hops.feed(chunk);
        if let Some(head) = &mut self.head {
            // Only the new bytes (and the three before them) can complete
            // the blank line, so a long header block is scanned once.
            let from = head.buf.len().saturating_sub(3);
            head.buf.extend_from_slice(chunk);
            let end = if head.buf.starts_with(b"\r\n") {
                Some(0)
            } else {
                head.buf[from..].windows(4).position(|w| w == b"\r\n\r\n").map(|p| from + p + 2)
            };
            if end.is_some() || head.buf.len() > HEAD_LIMIT {
                self.flush_head(end).await?;
            }
            return Ok(());
        }
        self.emit(chunk).await
    }

    async fn emit(&mut self, chunk: &[u8]) -> Result<(), IngressError> {
        match &mut self.out {
            Out::Queue(body) => {
                if let Err(e) = body.write(chunk).await {
                    return Err(store_failed(&self.env.id, e));
                }
            }
            Out::Maildrop(buf) => buf.extend_from_slice(chunk),
        }
        Ok(())
    }

    /// Writes the held-back header block, unsealed and rewritten when it
    /// ends at `end` (unchanged when it was too long to be a header block).
    async fn flush_head(&mut self, end: Option<usize>) -> Result<(), IngressError> {
        let Some(head) = self.head.take() else { return Ok(()) };
        let Some(end) = end else { return self.emit(&head.buf).await };
        let (verdict, unsealed) = self.unseal(&head.buf[..end]);
        let block = unsealed.as_deref().unwrap_or(&head.buf[..end]);
        self.recover_trace(block, verdict);
        self.message_id = crate::message::header::find(block, "message-id").map(|f| {
            let value = crate::message::header::unfold(f.value());
            printable(String::from_utf8_lossy(&value).trim())
        });
        let qualified = head.qualify.then(|| qualify_header_block(block, &self.ingress.inner.myorigin));
        let block = qualified.as_deref().unwrap_or(block);
        let canonical = self.ingress.inner.router.as_ref().and_then(|r| r.canonical()).filter(|_| head.rewrite);
        match canonical {
            Some(c) => self.emit(&crate::route::canonical::rewrite_header_block(block, c, head.local)).await?,
            None => self.emit(block).await?,
        }
        self.emit(&head.buf[end..]).await
    }

    /// Takes every seal field out of the header block `block` (any door:
    /// nobody may pass one on), and lets the first decide whether we vouch
    /// for a message back from the content filter; `None` when there was
    /// none.
    fn unseal(&mut self, block: &[u8]) -> (Verdict, Option<Vec<u8>>) {
        let (verdict, unsealed) = seal::take(block, &self.env.sender);
        match (self.ingress.door, verdict) {
            (_, Verdict::Absent) => {}
            (Door::Reinject, verdict) => self.env.trusted = Some(verdict == Verdict::Vouched),
            (Door::Local, Verdict::Disowned) => self.env.trusted = Some(false),
            _ => {}
        }
        (verdict, unsealed)
    }

    /// A message back from the content filter comes without `TRACE=` (a
    /// filter does not speak it), but with the trace header the satellite
    /// stamped: the id is taken from it, so `queue find` follows the
    /// message through the filter. Only from the filter: through the
    /// reinjection door, which only it reaches, or with our seal (a pipe
    /// filter reinjecting with `sendmail`); anyone else's header names
    /// nothing.
    fn recover_trace(&mut self, block: &[u8], verdict: Verdict) {
        let from_filter = self.ingress.door == Door::Reinject || verdict == Verdict::Vouched;
        if !from_filter || self.env.trace_id.is_some() {
            return;
        }
        let value = crate::message::header::find(block, TRACE_HEADER)
            .map(|f| String::from_utf8_lossy(f.value()).trim().to_string())
            .filter(|v| crate::smtp::proto::command::is_trace_id(v));
        self.env.trace_id = value;
    }

    /// Makes the message durable and returns its id. For the spool this is
    /// the moment a `250` may be sent.
    pub(crate) async fn commit(mut self) -> Result<String, IngressError> {
        // A message without a body: all of it is header.
        let all = self.head.as_ref().map(|h| h.buf.len());
        self.flush_head(all).await?;
        self.check_hops()?;
        let MessageWriter { ingress, mut env, out, sasl, message_id, hold, .. } = self;
        if env.recipients.is_empty() {
            // A milter removed every recipient.
            return Err(IngressError::NoRecipients);
        }
        match (out, &ingress.inner.sink) {
            (Out::Queue(body), Sink::Queue { spool, scheduler }) => {
                env.size = body.size();
                // A quarantined message is committed straight into hold/:
                // never told to the scheduler, it waits for an operator.
                let state = if hold { State::Hold } else { State::Incoming };
                if let Err(e) = spool.commit_new(&env, body, state).await {
                    return Err(store_failed(&env.id, e));
                }
                ingress.metrics.accepted(ingress.door);
                log_accepted(&env, ingress.door, sasl.as_ref(), message_id.as_deref());
                if hold {
                    return Ok(env.id);
                }
                if let Some(tx) = scheduler {
                    let _ = tx.send(env.clone());
                }
                Ok(env.id)
            }
            (Out::Maildrop(message), Sink::Maildrop { dir }) => {
                let drop = maildrop::Drop {
                    sender: Some(env.sender.clone()),
                    recipients: env.recipients.iter().map(|r| r.address.clone()).collect(),
                    notifies: env.recipients.iter().map(|r| r.notify.clone()).collect(),
                    ret: env.ret.clone(),
                    envid: env.envid.clone(),
                    ..maildrop::Drop::default()
                };
                let dir = dir.clone();
                let name = env.id.clone();
                // Written durably first; then a running daemon takes it at
                // once and says its queue id, which the client is given.
                let asked = tokio::task::spawn_blocking(move || {
                    maildrop::write_named(&dir, &name, &drop, &message)?;
                    let spool = dir.parent().unwrap_or(&dir);
                    io::Result::Ok(maildrop::ask_pickup(spool, &name))
                })
                .await
                .map_err(io::Error::other)??;
                match asked {
                    Some(Ok(id)) => Ok(id),
                    Some(Err(why)) => Err(IngressError::Rejected(Reply::new(554, Enhanced(5, 0, 0), why))),
                    // No daemon: the drop waits for it, safe.
                    None => Ok(env.id),
                }
            }
            _ => unreachable!("a writer's output always matches its ingress"),
        }
    }
}

impl MessageWriter {
    /// Refuses a message that has passed more hosts than any real route
    /// needs: it is going round a loop (RFC 5321 6.3).
    fn check_hops(&self) -> Result<(), IngressError> {
        let hops = self.hops.hops();
        if hops <= self.ingress.inner.hopcount_limit {
            return Ok(());
        }
        tracing::warn!(
            "{}: reject: {hops} Received: header fields, more than smtp.hopcount_limit {}: mail loop; from=<{}>",
            self.env.id,
            self.ingress.inner.hopcount_limit,
            self.env.sender
        );
        Err(IngressError::TooManyHops(hops))
    }
}

/// The address fields Postfix's cleanup qualifies (its sender and
/// recipient header classes).
const ADDRESS_FIELDS: [&str; 15] = [
    "from",
    "sender",
    "reply-to",
    "errors-to",
    "return-receipt-to",
    "resent-from",
    "resent-sender",
    "resent-reply-to",
    "to",
    "cc",
    "bcc",
    "apparently-to",
    "resent-to",
    "resent-cc",
    "resent-bcc",
];

/// `root` becomes `root@MYORIGIN` in every address field of a header
/// block (Postfix's `append_at_myorigin` on header addresses); every other
/// byte stays as it was.
fn qualify_header_block(head: &[u8], myorigin: &str) -> Vec<u8> {
    crate::message::header::rewrite(head, |field| {
        ADDRESS_FIELDS.iter().any(|name| field.is(name)).then(|| addrlist::qualify(field.value(), myorigin))
    })
}

/// Logs a message the spool could not store, with the errno, and gives
/// the error its reply (`452 4.3.1` for a full disk, else `451 4.3.0`).
fn store_failed(id: &str, e: io::Error) -> IngressError {
    tracing::error!("{id}: cannot store the message: {}", space::describe(&e));
    IngressError::Io(e)
}

/// The lines Postfix writes for a message entering the queue, in its
/// order and each under its service, so that log tools count it as
/// received: smtpd's `client=` (with `sasl_method=`/`sasl_username=` for an
/// authenticated client, and `orig_queue_id=` when the previous hop's trace
/// id came with it) or pickup's `uid=`, cleanup's `message-id=`, then
/// qmgr's `from=<...>, size=N, nrcpt=N (queue active)`.
fn log_accepted(env: &Envelope, door: Door, sasl: Option<&(&'static str, String)>, message_id: Option<&str>) {
    let id = env.id.as_str();
    let trace = env.trace_id.as_deref().filter(|t| *t != id);
    match (&env.origin.client, &env.origin.user) {
        (Some(ip), _) => {
            let mut line = format!("{id}: client=unknown[{ip}]");
            if let Some((method, user)) = sasl {
                line.push_str(&format!(", sasl_method={method}, sasl_username={}", printable(user)));
            }
            if let Some(trace) = trace {
                line.push_str(&format!(", orig_queue_id={trace}"));
            }
            let user = sasl.map(|(_, u)| u.as_str());
            tracing::info!(
                service = "smtpd",
                queue_id = id,
                client_addr = ip.as_str(),
                sasl_username = user,
                trace_id = trace,
                "{line}"
            );
        }
        (None, Some(user)) if door == Door::Local => {
            tracing::info!(
                service = "pickup",
                queue_id = id,
                uid = user.as_str(),
                "{id}: uid={user} from=<{}>",
                env.sender
            );
        }
        _ => {}
    }
    if let Some(mid) = message_id {
        tracing::info!(service = "cleanup", queue_id = id, message_id = mid, "{id}: message-id={mid}");
    }
    tracing::info!(
        service = "qmgr",
        queue_id = id,
        trace_id = env.trace_id.as_deref(),
        event = "queued",
        from = env.sender.as_str(),
        size = env.size,
        nrcpt = env.recipients.len() as u64,
        "{id}: from=<{}>, size={}, nrcpt={} (queue active)",
        env.sender,
        env.size,
        env.recipients.len()
    );
}

#[cfg(test)]
pub(crate) mod test_support {
    use super::*;

    /// A daemon-side ingress on a fresh spool under `dir`.
    pub(crate) fn queue_ingress(dir: &std::path::Path, config: &Config) -> (Ingress, Spool) {
        let spool = Spool::open(dir, None).expect("spool");
        (Ingress::to_queue(config, spool.clone(), None, None), spool)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn satellite(dir: &std::path::Path, rewrite: &str) -> (Ingress, Spool) {
        let text = format!("hostname = \"vm12.internal\"\n[rewrite]\n{rewrite}\n");
        let config = Config::parse(&text, std::path::Path::new("t.toml")).unwrap();
        let spool = Spool::open(dir, None).expect("spool");
        let router = Arc::new(Router::from_config(&config).unwrap());
        (Ingress::to_queue(&config, spool.clone(), None, Some(router)), spool)
    }

    fn local(sender: &str, rcpt: &str, trace_id: Option<&str>) -> Transaction {
        Transaction {
            sender: sender.into(),
            recipients: vec![RcptIn { address: rcpt.into(), notify: None, orcpt: None }],
            body: BodyType::SevenBit,
            smtputf8: false,
            ret: None,
            envid: None,
            trace_id: trace_id.map(str::to_string),
            forwarded_by: None,
            origin: Arrival {
                protocol: Protocol::Local,
                helo: None,
                client: None,
                local_user: Some("root".into()),
                auth_user: None,
                sasl: None,
                trusted: true,
            },
        }
    }

    #[tokio::test]
    async fn rewrites_sender_and_from_across_chunk_boundaries_and_stamps_the_trace_id() {
        let dir = tempfile::tempdir().unwrap();
        let (ingress, spool) = satellite(dir.path(), "masquerade_as = \"vm12.example.org\"");
        let mut w = ingress.open(local("root@vm12.internal", "ops@example.net", None)).await.unwrap();
        // One byte at a time: the blank line may straddle any two writes.
        for b in b"Subject: x\r\nFrom: Cron <root@vm12.internal>\r\n\r\nFrom: root@vm12.internal\r\n" {
            w.write(&[*b]).await.unwrap();
        }
        let id = w.commit().await.unwrap();
        let (_, env) = spool.find(&id).unwrap();
        assert_eq!(env.sender, "root@vm12.example.org");
        assert_eq!(env.trace_id.as_deref(), Some(id.as_str()));
        let body = String::from_utf8(spool.read_body(&id).unwrap()).unwrap();
        assert!(body.contains(&format!("\r\n{TRACE_HEADER}: {id}\r\n")), "{body}");
        assert!(
            body.ends_with("Subject: x\r\nFrom: Cron <root@vm12.example.org>\r\n\r\nFrom: root@vm12.internal\r\n"),
            "{body}"
        );
    }

    #[tokio::test]
    async fn a_trace_id_from_the_previous_hop_is_kept_and_not_stamped_again() {
        let dir = tempfile::tempdir().unwrap();
        let (ingress, spool) = satellite(dir.path(), "");
        let mut w = ingress.open(local("a@example.org", "b@example.net", Some("T0123"))).await.unwrap();
        w.write(b"Subject: y\r\n").await.unwrap();
        let id = w.commit().await.unwrap();
        assert_eq!(spool.find(&id).unwrap().1.trace_id.as_deref(), Some("T0123"));
        let body = String::from_utf8(spool.read_body(&id).unwrap()).unwrap();
        assert!(!body.contains(TRACE_HEADER), "{body}");
    }

    #[tokio::test]
    async fn more_received_fields_than_the_hopcount_limit_is_a_loop() {
        let dir = tempfile::tempdir().unwrap();
        let (ingress, spool) = satellite(dir.path(), "");
        for (hops, accepted) in [(50, true), (51, false)] {
            let mut w = ingress.open(local("a@example.org", "b@example.net", None)).await.unwrap();
            w.write("Received: from x by y; now\r\n".repeat(hops).as_bytes()).await.unwrap();
            w.write(b"Subject: loop\r\n\r\nReceived: in the body\r\n").await.unwrap();
            match w.commit().await {
                Ok(id) => assert!(accepted && spool.find(&id).is_some(), "{hops} hops"),
                Err(e) => {
                    assert!(!accepted && matches!(e, IngressError::TooManyHops(51)), "{hops} hops: {e}");
                    assert_eq!(e.reply().to_string(), "554 5.4.6 Too many hops");
                }
            }
        }
    }

    #[tokio::test]
    async fn a_full_disk_is_insufficient_system_storage() {
        let full = IngressError::Io(io::Error::from_raw_os_error(libc::ENOSPC));
        assert_eq!(full.reply().to_string(), "452 4.3.1 Insufficient system storage");
        let broken = IngressError::Io(io::Error::from_raw_os_error(libc::EIO));
        assert_eq!(broken.reply().to_string(), "451 4.3.0 Local error in processing, try again later");

        // Below queue.min_free: refused at the door, except the notices.
        let dir = tempfile::tempdir().unwrap();
        let text = "hostname = \"vm\"\n[queue]\nmin_free = \"1000000G\"\n";
        let config = Config::parse(text, std::path::Path::new("t.toml")).unwrap();
        let spool = Spool::open(dir.path(), None).expect("spool");
        let low = Ingress::to_queue(&config, spool.clone(), None, None);
        let Err(e) = low.open(local("a@example.org", "b@example.net", None)).await else { panic!("accepted") };
        assert!(matches!(e, IngressError::NoRoom(_)), "{e}");
        assert_eq!(e.reply().to_string(), "452 4.3.1 Insufficient system storage");
        assert!(
            low.storage_trouble().is_some_and(|why| why.contains("below queue.min_free")),
            "{:?}",
            low.storage_trouble()
        );
        let notice = low.counted_as(Door::Notice);
        let bounce = b"Subject: bounce\r\n\r\n";
        let id = notice.submit(Transaction::notice_to("a@example.org", false), bounce).await.unwrap();
        assert!(spool.find(&id).is_some());
    }
}
