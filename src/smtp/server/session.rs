//! One SMTP session, from greeting to close.
//!
//! Split in two on purpose. `Session` holds the protocol state and has one
//! small function per verb that returns a `Reply`; it never touches the
//! stream. `serve` is the only code that reads and writes: it feeds client
//! bytes to the line reader, hands complete commands to `Session`, queues
//! the replies, and streams DATA into the ingress.
//!
//! Replies are collected in one buffer and written when no complete command
//! is left in the input (RFC 2920): a pipelining client sending fifty
//! commands in one packet gets fifty replies in one packet, which is what
//! makes PIPELINING pay off.
//!
//! Every wait is bounded: `smtp.command_timeout` for a command (and for
//! writing replies to a client that does not read), `smtp.data_timeout`
//! between reads in DATA. On shutdown a session waiting for a command gets
//! `421 4.3.2` at once; a session inside DATA is left to finish its message,
//! because cutting it off would throw away work the client has already done.
//!
//! CHUNKING (RFC 3030, offered after EHLO, without BINARYMIME): `BDAT size
//! [LAST]` is followed by exactly `size` octets, which the loop always
//! reads, also when it refuses the command (no MAIL, over the size limit,
//! a failed transaction), so the next command is found where the client
//! put it, pipelined or not. The octets are streamed into the same ingress
//! writer and checked by the same decoder as DATA (size, line length, bare
//! CR/LF; no dot-stuffing), so both commands queue the same message the
//! same way. A refused chunk fails the transaction; the chunks the client
//! pipelined behind it are read and refused as BDAT without MAIL. Each
//! read inside a chunk waits at most `smtp.data_timeout`, and a message
//! arriving in chunks is left to finish on shutdown, like DATA.
//!
//! STARTTLS (RFC 3207): after `220 Ready to start TLS` the loop hands the
//! stream to rustls and runs again on the encrypted stream with the session
//! reset to its state after the greeting. Anything the client pipelined
//! behind STARTTLS is thrown away unread: it arrived in clear and must not
//! be taken as if it came over TLS (the STARTTLS command injection attack).
//!
//! The listener kind (`Listener`) changes two things: on a submission port
//! (587, RFC 6409) MAIL needs AUTH first (530); on a submissions port (465,
//! RFC 8314) the TLS handshake comes before the greeting. With
//! `tls.client_ca` or `access.trusted_fingerprints` the handshake asks for a
//! client certificate; a trusted one lets the client relay, limited to the
//! senders `access.client_cert_senders` gives its names (553 otherwise).
//!
//! AUTH (RFC 4954) is a small exchange inside the loop: the session answers
//! 334 and takes the next line as the client's response; the password check
//! runs off the async threads, and a failure is answered only after
//! `auth.failure_delay`.

use super::access;
use crate::auth::{self, Limiter, Users};
use crate::config::Config;
use crate::ingress::{self, Ingress, MessageWriter, Origin, Protocol, RcptIn, Transaction};
use crate::metrics::Metrics;
use crate::smtp::proto::command::{BodyType, Command, CommandError, MailFrom, RcptTo, Verb};
use crate::smtp::proto::data::DataDecoder;
use crate::smtp::proto::line::{Line, LineReader};
use crate::smtp::proto::reply::{Enhanced, Reply};
use crate::tls::ClientTrust;
use std::fmt;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::sync::watch;

/// Bytes read from the client at once. Small enough that hundreds of idle
/// sessions cost little, large enough that DATA is a few reads per message.
const READ_SIZE: usize = 16 * 1024;

/// Who is on the other end.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Peer {
    /// A TCP client.
    Tcp(SocketAddr),
    /// `sendmail -bs` over stdin/stdout, run by this local user.
    Local { user: String },
}

impl fmt::Display for Peer {
    /// Postfix's `host[ip]`; posthorn does no reverse lookups, so the host
    /// is always `unknown`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Peer::Tcp(addr) => write!(f, "unknown[{}]", addr.ip()),
            Peer::Local { user } => write!(f, "local[{user}]"),
        }
    }
}

/// What a listener gives its sessions besides the configuration: the TLS
/// server configuration (STARTTLS is offered when present), the AUTH users
/// (AUTH is offered when present) and the failure counts they share; and
/// the daemon's counters, which the sessions add their refusals to.
#[derive(Clone, Debug)]
pub struct Security {
    pub tls: Option<Arc<rustls::ServerConfig>>,
    pub users: Option<Arc<Users>>,
    pub limiter: Arc<Limiter>,
    /// Which client certificates may relay; the server asks for one only
    /// when this is set.
    pub client_trust: Option<Arc<ClientTrust>>,
    /// Counts the 4xx and 5xx replies (`posthorn_smtp_rejections_total`);
    /// a counter of its own, read by nobody, unless `counting` was called.
    pub metrics: Arc<Metrics>,
}

impl Security {
    /// No TLS, no AUTH.
    pub fn none() -> Security {
        Security {
            tls: None,
            users: None,
            limiter: Arc::new(Limiter::new(0, Duration::ZERO)),
            client_trust: None,
            metrics: Arc::default(),
        }
    }

    /// The same, counting refusals into `metrics`.
    pub fn counting(self, metrics: Arc<Metrics>) -> Security {
        Security { metrics, ..self }
    }

    /// Reads the certificate, key and users file named in `config`; errors
    /// name the file.
    pub fn load(config: &Config) -> anyhow::Result<Security> {
        let client_trust =
            ClientTrust::from_config(config.tls.client_ca.as_deref(), &config.access.trusted_fingerprints)?;
        let tls = crate::tls::server_requesting(&config.tls, client_trust.is_some())?;
        let client_trust = client_trust.map(Arc::new);
        let users = match &config.auth.users {
            Some(path) => Some(Arc::new(Users::load(path)?)),
            None => None,
        };
        let limiter = Arc::new(Limiter::new(config.auth.max_failures, config.auth.failure_window));
        Ok(Security { tls, users, limiter, client_trust, metrics: Arc::default() })
    }

    /// The same files, keeping `self`'s failure counts (a reload must not
    /// hand an attacker a fresh set of tries) and counters.
    pub fn reloaded(&self, config: &Config) -> anyhow::Result<Security> {
        Ok(Security { limiter: self.limiter.clone(), metrics: self.metrics.clone(), ..Security::load(config)? })
    }
}

/// Runs one session until QUIT, an error limit, a timeout or a lost
/// connection.
pub async fn run_session<S>(stream: S, peer: Peer, config: &Config, ingress: &Ingress)
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    serve(stream, peer, Listener::Smtp, config, ingress, &Security::none(), None).await
}

/// Like `run_session`, but ends with `421 4.3.2` when `shutdown` turns true
/// while the session waits for a command.
pub async fn run_session_until<S>(
    stream: S,
    peer: Peer,
    config: &Config,
    ingress: &Ingress,
    shutdown: watch::Receiver<bool>,
) where
    S: AsyncRead + AsyncWrite + Unpin,
{
    serve(stream, peer, Listener::Smtp, config, ingress, &Security::none(), Some(shutdown)).await
}

/// A session offering what `security` holds (STARTTLS, AUTH).
pub async fn run_secure_session<S>(
    stream: S,
    peer: Peer,
    config: &Config,
    ingress: &Ingress,
    security: &Security,
    shutdown: Option<watch::Receiver<bool>>,
) where
    S: AsyncRead + AsyncWrite + Unpin,
{
    serve(stream, peer, Listener::Smtp, config, ingress, security, shutdown).await
}

/// What kind of port a session came in on.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Listener {
    /// Port 25: relay rules by address, AUTH optional.
    Smtp,
    /// Port 587 (RFC 6409): STARTTLS offered, AUTH required before MAIL.
    Submission,
    /// Port 465 (RFC 8314): TLS from the first byte, AUTH required before MAIL.
    Submissions,
}

impl Listener {
    /// The name printed in `listening NAME=ADDR`.
    pub fn name(self) -> &'static str {
        match self {
            Listener::Smtp => "smtp",
            Listener::Submission => "submission",
            Listener::Submissions => "submissions",
        }
    }
}

/// A session on a listener of kind `kind`.
pub async fn run_listener_session<S>(
    stream: S,
    peer: Peer,
    kind: Listener,
    config: &Config,
    ingress: &Ingress,
    security: &Security,
    shutdown: Option<watch::Receiver<bool>>,
) where
    S: AsyncRead + AsyncWrite + Unpin,
{
    serve(stream, peer, kind, config, ingress, security, shutdown).await
}

// ---------------------------------------------------------------------------
// Protocol state: one function per verb, no I/O.

/// A trusted client certificate: it lets the client relay.
#[derive(Debug)]
struct ClientCert {
    fingerprint: String,
    /// The sender patterns `access.client_cert_senders` gives the names in
    /// the certificate; `None`: any sender.
    senders: Option<Vec<String>>,
}

impl ClientCert {
    /// Whether MAIL FROM `sender` is one this certificate may use. The null
    /// sender always is: bounces from the client must get through.
    fn may_send_as(&self, sender: &str) -> bool {
        let Some(patterns) = &self.senders else {
            return true;
        };
        sender.is_empty()
            || patterns.iter().any(|p| match p.strip_prefix("*@") {
                Some(domain) => sender.rsplit_once('@').is_some_and(|(_, d)| d.eq_ignore_ascii_case(domain)),
                None => p == "*" || p.eq_ignore_ascii_case(sender),
            })
    }
}

/// What the loop does after a command.
#[derive(Debug)]
enum Step {
    Reply(Reply),
    /// DATA was accepted in principle: open the message, send 354.
    Data(Transaction),
    /// Send the reply, then close.
    Close(Reply),
    /// Send the reply (220), then start the TLS handshake.
    StartTls(Reply),
    /// Check these credentials, then answer.
    Verify(Credentials),
    /// BDAT: read the chunk's `size` octets, then answer.
    Bdat {
        size: u64,
        last: bool,
    },
    /// A BDAT refused before its chunk was read: read and drop the `size`
    /// octets the client sends anyway, then send the reply.
    Skip {
        size: u64,
        reply: Reply,
    },
}

/// An AUTH exchange waiting for the client's next line.
#[derive(Debug)]
enum Pending {
    PlainResponse,
    LoginUser,
    LoginPassword { user: String },
}

/// Credentials to check, and the mechanism they came with.
struct Credentials {
    mechanism: &'static str,
    user: String,
    password: Vec<u8>,
}

impl fmt::Debug for Credentials {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Credentials").field("mechanism", &self.mechanism).field("user", &self.user).finish()
    }
}

struct Session<'a> {
    config: &'a Config,
    /// Asked about recipients at RCPT (aliases, known local users).
    ingress: &'a Ingress,
    peer: Peer,
    helo: Option<String>,
    esmtp: bool,
    mail: Option<MailFrom>,
    rcpts: Vec<RcptTo>,
    /// RCPT commands tried in this transaction, accepted or not: tells
    /// "need RCPT" from "no valid recipients" at DATA.
    rcpt_tried: usize,
    /// Error replies sent (5xx), for `smtp.max_errors`.
    errors: u32,
    stats: Stats,
    last_verb: Option<Verb>,
    security: &'a Security,
    kind: Listener,
    /// The TLS session's description, once the connection is encrypted.
    tls: Option<String>,
    /// The authenticated user.
    user: Option<String>,
    /// A trusted client certificate presented in the TLS handshake.
    client_cert: Option<ClientCert>,
    /// An AUTH exchange in progress.
    pending: Option<Pending>,
    /// The message of a BDAT transaction, between its chunks (boxed: it is
    /// big, and most sessions never have one).
    chunks: Option<Box<Chunks>>,
}

/// A message arriving in BDAT chunks: what the chunks so far made of it.
struct Chunks {
    id: String,
    incoming: Incoming,
}

/// Where the octets of the next BDAT chunk go.
enum NextChunk {
    /// The first chunk: the message is still to be opened.
    First(Box<Transaction>),
    /// A later chunk of the message already open.
    More(Box<Chunks>),
}

impl<'a> Session<'a> {
    fn new(config: &'a Config, ingress: &'a Ingress, peer: Peer, security: &'a Security) -> Session<'a> {
        Session {
            config,
            ingress,
            security,
            kind: Listener::Smtp,
            client_cert: None,
            tls: None,
            user: None,
            pending: None,
            chunks: None,
            peer,
            helo: None,
            esmtp: false,
            mail: None,
            rcpts: Vec::new(),
            rcpt_tried: 0,
            errors: 0,
            stats: Stats::default(),
            last_verb: None,
        }
    }

    fn hostname(&self) -> &str {
        &self.config.hostname
    }

    fn greeting(&self) -> Reply {
        Reply::plain(220, format!("{} ESMTP posthorn", self.hostname()))
    }

    /// Parses and runs one command line.
    fn command(&mut self, line: &[u8]) -> Step {
        let cmd = match Command::parse(line) {
            Ok(cmd) => cmd,
            Err(e) => {
                let reply = e.reply();
                if let Some(verb @ (Verb::Mail | Verb::Rcpt)) = e.verb {
                    self.log_reject(verb, &reply, None);
                }
                self.stats.record(e.verb, false);
                self.last_verb = e.verb;
                return match (e.verb, e.error) {
                    (Some(Verb::Bdat), CommandError::ChunkSyntax { size }) => {
                        self.reset();
                        Step::Skip { size, reply }
                    }
                    (Some(Verb::Bdat), _) => self.bdat_unknown_size(reply),
                    _ => Step::Reply(reply),
                };
            }
        };
        let verb = cmd.verb();
        self.last_verb = Some(verb);
        let step = match cmd {
            Command::Ehlo(name) => Step::Reply(self.ehlo(name)),
            Command::Helo(name) => Step::Reply(self.helo(name)),
            Command::Mail(mail) => Step::Reply(self.mail(mail)),
            Command::Rcpt(rcpt) => Step::Reply(self.rcpt(rcpt)),
            Command::Data => match self.data() {
                Ok(tx) => return Step::Data(tx),
                Err(reply) => Step::Reply(reply),
            },
            Command::Rset => Step::Reply(self.rset()),
            Command::Noop => Step::Reply(Reply::new(250, Enhanced(2, 0, 0), "Ok")),
            Command::Quit => Step::Close(Reply::new(221, Enhanced(2, 0, 0), "Bye")),
            Command::Vrfy(_) => Step::Reply(vrfy()),
            Command::Help(_) => Step::Reply(help()),
            Command::StartTls => self.starttls(),
            Command::Auth { mechanism, initial_response } => self.auth(&mechanism, initial_response),
            Command::Expn(_) => Step::Reply(not_implemented()),
            // Counted when its chunk is read and answered.
            Command::Bdat { size, last } => return Step::Bdat { size, last },
        };
        let ok = match &step {
            Step::Reply(r) | Step::Close(r) | Step::StartTls(r) | Step::Skip { reply: r, .. } => r.is_positive(),
            Step::Data(_) | Step::Verify(_) | Step::Bdat { .. } => true,
        };
        self.stats.record(Some(verb), ok);
        step
    }

    fn ehlo(&mut self, name: String) -> Reply {
        self.reset();
        self.helo = Some(name);
        self.esmtp = true;
        let mut lines = vec![
            self.hostname().to_string(),
            "PIPELINING".into(),
            format!("SIZE {}", self.config.smtp.max_message_size),
            "8BITMIME".into(),
            "SMTPUTF8".into(),
            "ENHANCEDSTATUSCODES".into(),
            "DSN".into(),
            "CHUNKING".into(),
            // posthorn's own: the previous hop may pass its trace id (TRACE=).
            "XPOSTHORN-TRACE".into(),
        ];
        if self.starttls_offered() {
            lines.push("STARTTLS".into());
        }
        if self.auth_offered() {
            lines.push("AUTH PLAIN LOGIN".into());
        }
        Reply::multi(250, lines)
    }

    /// STARTTLS is offered on TCP when a certificate is loaded, until TLS
    /// is up.
    fn starttls_offered(&self) -> bool {
        self.security.tls.is_some() && self.tls.is_none() && matches!(self.peer, Peer::Tcp(_))
    }

    /// AUTH is offered when users are configured, over TLS unless
    /// `auth.allow_plaintext`, and not once authenticated.
    fn auth_offered(&self) -> bool {
        self.security.users.is_some() && self.user.is_none() && (self.tls.is_some() || self.config.auth.allow_plaintext)
    }

    fn starttls(&mut self) -> Step {
        if self.tls.is_some() {
            return Step::Reply(Reply::new(503, Enhanced(5, 5, 1), "Error: TLS already active"));
        }
        if !self.starttls_offered() {
            return Step::Reply(not_implemented());
        }
        Step::StartTls(Reply::new(220, Enhanced(2, 0, 0), "Ready to start TLS"))
    }

    /// The handshake succeeded: back to the state after the greeting
    /// (RFC 3207 4.2), the client must say EHLO again.
    fn tls_started(&mut self, description: String) {
        self.reset();
        self.helo = None;
        self.esmtp = false;
        self.tls = Some(description);
    }

    /// Records a client certificate if `trust` trusts it; returns the word
    /// for the log (Postfix's `Trusted`/`Untrusted`).
    fn client_cert_presented(
        &mut self,
        trust: &ClientTrust,
        chain: &[rustls::pki_types::CertificateDer<'_>],
    ) -> &'static str {
        let fingerprint = crate::tls::fingerprint(&chain[0]);
        if !trust.trusts(chain) {
            tracing::info!("{}: untrusted client certificate sha256={fingerprint}", self.peer);
            return "Untrusted";
        }
        let mut matched = false;
        let mut senders = Vec::new();
        for (name, patterns) in &self.config.access.client_cert_senders {
            if crate::tls::cert_has_name(&chain[0], name) {
                matched = true;
                senders.extend(patterns.iter().cloned());
            }
        }
        tracing::info!("{}: trusted client certificate sha256={fingerprint}", self.peer);
        self.client_cert = Some(ClientCert { fingerprint, senders: matched.then_some(senders) });
        "Trusted"
    }

    /// AUTH: the checks RFC 4954 asks for, then the mechanism's first step.
    fn auth(&mut self, mechanism: &str, initial: Option<String>) -> Step {
        let reply = |code, e, text: &str| Step::Reply(Reply::new(code, e, text));
        if self.security.users.is_none() {
            return Step::Reply(not_implemented());
        }
        if !self.esmtp {
            return reply(503, Enhanced(5, 5, 1), "Error: send EHLO first");
        }
        if self.user.is_some() {
            return reply(503, Enhanced(5, 5, 1), "Error: already authenticated");
        }
        if self.mail.is_some() {
            return reply(503, Enhanced(5, 5, 1), "Error: MAIL transaction in progress");
        }
        if self.tls.is_none() && !self.config.auth.allow_plaintext {
            return reply(538, Enhanced(5, 7, 11), "Encryption required for requested authentication mechanism");
        }
        if let Peer::Tcp(addr) = &self.peer
            && self.security.limiter.is_blocked(addr.ip())
        {
            tracing::warn!("{}: too many failed AUTH attempts; AUTH refused", self.peer);
            return reply(454, Enhanced(4, 7, 0), "Too many failed authentication attempts, try again later");
        }
        match (mechanism, initial) {
            ("PLAIN", None) => {
                self.pending = Some(Pending::PlainResponse);
                Step::Reply(Reply::plain(334, ""))
            }
            ("PLAIN", Some(initial)) => self.auth_response(Pending::PlainResponse, initial.as_bytes()),
            ("LOGIN", None) => {
                self.pending = Some(Pending::LoginUser);
                Step::Reply(Reply::plain(334, "VXNlcm5hbWU6"))
            }
            ("LOGIN", Some(initial)) => self.auth_response(Pending::LoginUser, initial.as_bytes()),
            _ => reply(504, Enhanced(5, 5, 4), "Unrecognized authentication type"),
        }
    }

    /// A line of an AUTH exchange (the session is waiting for one).
    fn auth_line(&mut self, line: &[u8]) -> Step {
        match self.pending.take() {
            Some(pending) => self.auth_response(pending, line),
            None => self.command(line),
        }
    }

    /// The client's base64 response at step `pending`. `=` is the empty
    /// initial response (RFC 4954 4), `*` cancels.
    fn auth_response(&mut self, pending: Pending, response: &[u8]) -> Step {
        let malformed = |text: &str| Step::Reply(Reply::new(501, Enhanced(5, 5, 2), text));
        if response == b"*" {
            return Step::Reply(Reply::new(501, Enhanced(5, 7, 0), "Authentication aborted"));
        }
        let decoded = if response == b"=" { Some(Vec::new()) } else { auth::decode_base64(response) };
        let Some(decoded) = decoded else {
            return malformed("Cannot decode response");
        };
        match pending {
            Pending::PlainResponse => match auth::decode_plain(&decoded) {
                Ok((user, password)) => Step::Verify(Credentials { mechanism: "PLAIN", user, password }),
                Err(_) => malformed("Invalid PLAIN authentication message"),
            },
            Pending::LoginUser => match String::from_utf8(decoded) {
                Ok(user) if auth::check_login_field(user.as_bytes(), auth::MAX_USER_LEN) => {
                    self.pending = Some(Pending::LoginPassword { user });
                    Step::Reply(Reply::plain(334, "UGFzc3dvcmQ6"))
                }
                _ => malformed("Invalid user name"),
            },
            Pending::LoginPassword { user } => {
                if !auth::check_login_field(&decoded, auth::MAX_PASSWORD_LEN) {
                    return malformed("Invalid password");
                }
                Step::Verify(Credentials { mechanism: "LOGIN", user, password: decoded })
            }
        }
    }

    /// The verdict on checked credentials.
    fn auth_verified(&mut self, mechanism: &str, user: String, ok: bool) -> Reply {
        let ip = match &self.peer {
            Peer::Tcp(addr) => Some(addr.ip()),
            Peer::Local { .. } => None,
        };
        if ok {
            tracing::info!("{}: sasl_method={mechanism}, sasl_username={user}", self.peer);
            if let Some(ip) = ip {
                self.security.limiter.succeeded(ip);
            }
            self.user = Some(user);
            Reply::new(235, Enhanced(2, 7, 0), "Authentication successful")
        } else {
            tracing::warn!("{}: SASL {mechanism} authentication failed for user {user:?}", self.peer);
            if let Some(ip) = ip {
                self.security.limiter.failed(ip);
            }
            Reply::new(535, Enhanced(5, 7, 8), "Authentication credentials invalid")
        }
    }

    fn helo(&mut self, name: String) -> Reply {
        self.reset();
        self.helo = Some(name);
        self.esmtp = false;
        Reply::plain(250, self.hostname())
    }

    fn mail(&mut self, mail: MailFrom) -> Reply {
        let reply = self.check_mail(&mail);
        match reply {
            Some(reply) => {
                self.log_reject(Verb::Mail, &reply, Some((&mail.sender, None)));
                reply
            }
            None => {
                self.mail = Some(mail);
                Reply::new(250, Enhanced(2, 1, 0), "Ok")
            }
        }
    }

    /// Why MAIL is refused, if it is.
    fn check_mail(&self, mail: &MailFrom) -> Option<Reply> {
        if self.helo.is_none() {
            return Some(Reply::new(503, Enhanced(5, 5, 1), "Error: send HELO/EHLO first"));
        }
        if self.mail.is_some() {
            return Some(Reply::new(503, Enhanced(5, 5, 1), "Error: nested MAIL command"));
        }
        if !self.esmtp && mail.has_parameters() {
            return Some(Reply::new(555, Enhanced(5, 5, 4), "Error: MAIL parameters need EHLO"));
        }
        if mail.body == Some(BodyType::BinaryMime) {
            // RFC 3030's BINARYMIME is not offered (CHUNKING is): binary
            // content could not be passed on to a next hop without it.
            return Some(Reply::new(555, Enhanced(5, 5, 4), "Error: BODY=BINARYMIME is not supported"));
        }
        if self.kind != Listener::Smtp && self.user.is_none() {
            // RFC 6409 4.3: submission needs an authenticated client.
            return Some(Reply::new(530, Enhanced(5, 7, 0), "Authentication required"));
        }
        if let Some(cert) = self.client_cert.as_ref().filter(|_| self.user.is_none())
            && !cert.may_send_as(&mail.sender)
        {
            return Some(Reply::new(553, Enhanced(5, 7, 1), "Sender address rejected: not owned by certificate"));
        }
        if mail.size.is_some_and(|s| s > self.config.smtp.max_message_size) {
            return Some(Reply::new(552, Enhanced(5, 3, 4), "Message size exceeds fixed limit"));
        }
        None
    }

    fn rcpt(&mut self, rcpt: RcptTo) -> Reply {
        let Some(mail) = &self.mail else {
            return Reply::new(503, Enhanced(5, 5, 1), "Error: need MAIL command");
        };
        if self.chunks.is_some() {
            // The message is already arriving; its envelope is fixed.
            return Reply::new(503, Enhanced(5, 5, 1), "Error: RCPT after BDAT");
        }
        self.rcpt_tried += 1;
        let refused = if !self.esmtp && rcpt.has_parameters() {
            Some(Reply::new(555, Enhanced(5, 5, 4), "Error: RCPT parameters need EHLO"))
        } else if rcpt.needs_smtputf8() && !mail.smtputf8 {
            Some(Reply::new(553, Enhanced(5, 6, 7), "Non-ASCII address requires SMTPUTF8"))
        } else if self.rcpts.len() >= self.config.smtp.max_recipients {
            Some(Reply::new(452, Enhanced(4, 5, 3), "Error: too many recipients"))
        } else {
            // A trusted client certificate counts as an authenticated identity.
            let identity = self.user.as_deref().or(self.client_cert.as_ref().map(|c| c.fingerprint.as_str()));
            access::check_relay(&self.config.access, &self.peer, identity, &rcpt.address)
                .and_then(|()| self.ingress.check_recipient(&rcpt.address))
                .err()
        };
        if let Some(reply) = refused {
            let from = mail.sender.clone();
            self.log_reject(Verb::Rcpt, &reply, Some((&from, Some(&rcpt.address))));
            return reply;
        }
        let mut rcpt = rcpt;
        if rcpt.address == "postmaster" {
            // The bare postmaster (RFC 5321 4.5.1) is this host's.
            rcpt.address = format!("postmaster@{}", self.hostname());
        }
        // A repeated recipient is accepted but kept once: one copy is enough.
        if !self.rcpts.iter().any(|r| r.address == rcpt.address) {
            self.rcpts.push(rcpt);
        }
        Reply::new(250, Enhanced(2, 1, 5), "Ok")
    }

    /// DATA, before any message byte: the transaction to open, or why not.
    fn data(&mut self) -> Result<Transaction, Reply> {
        if self.chunks.is_some() {
            // RFC 3030 3: one transaction, one way of sending the message.
            return Err(Reply::new(503, Enhanced(5, 5, 1), "Error: DATA after BDAT"));
        }
        self.transaction()
    }

    /// The transaction MAIL and RCPT built, ready for its message, or why
    /// it is not ready.
    fn transaction(&self) -> Result<Transaction, Reply> {
        let Some(mail) = &self.mail else {
            return Err(Reply::new(503, Enhanced(5, 5, 1), "Error: need MAIL command"));
        };
        if self.rcpts.is_empty() {
            return Err(if self.rcpt_tried > 0 {
                Reply::new(554, Enhanced(5, 5, 1), "Error: no valid recipients")
            } else {
                Reply::new(503, Enhanced(5, 5, 1), "Error: need RCPT command")
            });
        }
        let protocol = match (&self.peer, self.esmtp, self.tls.is_some(), self.user.is_some()) {
            (Peer::Local { .. }, ..) => Protocol::Local,
            (Peer::Tcp(_), true, false, false) => Protocol::Esmtp,
            (Peer::Tcp(_), true, true, false) => Protocol::Esmtps,
            (Peer::Tcp(_), true, false, true) => Protocol::Esmtpa,
            (Peer::Tcp(_), true, true, true) => Protocol::Esmtpsa,
            (Peer::Tcp(_), false, ..) => Protocol::Smtp,
        };
        let (client, local_user) = match &self.peer {
            Peer::Tcp(addr) => (Some(*addr), None),
            Peer::Local { user } => (None, Some(user.clone())),
        };
        Ok(Transaction {
            sender: mail.sender.clone(),
            recipients: self
                .rcpts
                .iter()
                .map(|r| RcptIn { address: r.address.clone(), notify: r.notify.clone(), orcpt: r.orcpt.clone() })
                .collect(),
            body: match mail.body {
                None | Some(BodyType::SevenBit) => ingress::BodyType::SevenBit,
                Some(BodyType::EightBitMime) => ingress::BodyType::EightBitMime,
                Some(BodyType::BinaryMime) => ingress::BodyType::BinaryMime,
            },
            smtputf8: mail.smtputf8,
            ret: mail.ret.clone(),
            envid: mail.envid.clone(),
            trace_id: mail.trace.clone(),
            origin: Origin {
                protocol,
                helo: self.helo.clone(),
                client,
                local_user,
                auth_user: self.user.clone().filter(|_| self.config.tls.received_auth_user),
            },
        })
    }

    /// The reply at the end of the message (DATA's final dot, BDAT LAST);
    /// the transaction is over either way.
    fn message_end(&mut self, verb: Verb, id: &str, result: Result<String, Reply>) -> Reply {
        let reply = match result {
            Ok(id) => Reply::new(250, Enhanced(2, 0, 0), format!("Ok: queued as {id}")),
            Err(reply) => {
                let from = self.mail.as_ref().map(|m| m.sender.clone()).unwrap_or_default();
                tracing::info!(
                    "{id}: reject: END-OF-MESSAGE from {}: {reply}; from=<{from}> proto={} helo=<{}>",
                    self.peer,
                    self.proto(),
                    self.helo.as_deref().unwrap_or("")
                );
                reply
            }
        };
        self.stats.record(Some(verb), reply.is_positive());
        self.reset();
        reply
    }

    /// BDAT, before its octets are read: where they go, or the refusal.
    /// The size is checked against the limit before any octet is stored,
    /// so an absurd size is refused without being buffered.
    fn bdat(&mut self, size: u64) -> Result<NextChunk, Reply> {
        if !self.esmtp {
            // CHUNKING is an extension: offered after EHLO only.
            return Err(Reply::new(503, Enhanced(5, 5, 1), "Error: send EHLO first"));
        }
        let so_far = self.chunks.as_ref().map_or(0, |c| c.incoming.decoder.size());
        let next = match self.chunks.take() {
            Some(chunks) => NextChunk::More(chunks),
            None => NextChunk::First(Box::new(self.transaction()?)),
        };
        if so_far.saturating_add(size) > self.config.smtp.max_message_size {
            return Err(Reply::new(552, Enhanced(5, 3, 4), "Message size exceeds fixed limit"));
        }
        Ok(next)
    }

    /// A refused BDAT (its chunk read and dropped): the transaction has
    /// failed (RFC 3030 3), so later chunks of it are refused too, as
    /// BDAT without MAIL, until the client starts again.
    fn bdat_refused(&mut self, reply: Reply) -> Reply {
        let from = self.mail.as_ref().map(|m| m.sender.clone());
        self.log_reject(Verb::Bdat, &reply, from.as_deref().map(|f| (f, None)));
        self.stats.record(Some(Verb::Bdat), false);
        self.reset();
        reply
    }

    /// A chunk other than the last was stored.
    fn chunk_received(&mut self, chunks: Box<Chunks>, size: u64) -> Reply {
        self.chunks = Some(chunks);
        self.stats.record(Some(Verb::Bdat), true);
        Reply::new(250, Enhanced(2, 0, 0), format!("{size} octets received"))
    }

    /// A BDAT whose size cannot be read: the chunk's octets follow, but
    /// how many is unknown, so nothing after this line can be told apart
    /// from message content. Reading on would run message text as
    /// commands, the injection the smuggling and STARTTLS defences are
    /// there to stop, so the session ends after the 501. (Postfix answers
    /// 501 and reads on.) No working client sends such a size, and a 5xx,
    /// unlike a 421, tells a broken one to give the message up rather than
    /// retry it forever.
    fn bdat_unknown_size(&mut self, reply: Reply) -> Step {
        tracing::warn!("{}: malformed BDAT command, chunk size unknown; closing", self.peer);
        self.reset();
        Step::Close(reply)
    }

    fn rset(&mut self) -> Reply {
        self.reset();
        Reply::new(250, Enhanced(2, 0, 0), "Ok")
    }

    fn line_too_long(&mut self) -> Reply {
        self.stats.record(None, false);
        if self.pending.take().is_some() {
            return Reply::new(501, Enhanced(5, 5, 2), "Error: authentication response too long");
        }
        Reply::new(500, Enhanced(5, 5, 2), "Error: line too long")
    }

    /// Ends the transaction; a message arriving in BDAT chunks is dropped.
    fn reset(&mut self) {
        self.chunks = None;
        self.mail = None;
        self.rcpts.clear();
        self.rcpt_tried = 0;
    }

    /// Counts a reply to a command or a message: in the metrics if it is a
    /// refusal, and against the error limit; true when the limit is
    /// reached (0 means no limit). The 421 a session ends with (timeout,
    /// shutdown, too many errors) answers no command and is not counted.
    fn replied(&mut self, reply: &Reply) -> bool {
        self.security.metrics.smtp_reply(reply.code);
        if reply.code >= 500 {
            self.errors += 1;
        }
        self.config.smtp.max_errors > 0 && self.errors >= self.config.smtp.max_errors
    }

    fn proto(&self) -> &'static str {
        match (self.esmtp, self.tls.is_some()) {
            (true, true) => "ESMTPS",
            (true, false) => "ESMTP",
            (false, _) => "SMTP",
        }
    }

    /// Postfix-style reject line, so existing log tooling finds it.
    fn log_reject(&self, verb: Verb, reply: &Reply, envelope: Option<(&str, Option<&str>)>) {
        let mut line = format!("NOQUEUE: reject: {} from {}: {reply};", verb.name().to_ascii_uppercase(), self.peer);
        if let Some((from, to)) = envelope {
            line.push_str(&format!(" from=<{from}>"));
            if let Some(to) = to {
                line.push_str(&format!(" to=<{to}>"));
            }
        }
        line.push_str(&format!(" proto={} helo=<{}>", self.proto(), self.helo.as_deref().unwrap_or("")));
        tracing::info!("{line}");
    }
}

fn vrfy() -> Reply {
    Reply::new(252, Enhanced(2, 5, 2), "Cannot VRFY user; try RCPT to attempt delivery")
}

fn help() -> Reply {
    Reply::new(214, Enhanced(2, 0, 0), "Commands: EHLO HELO MAIL RCPT DATA BDAT RSET NOOP QUIT VRFY HELP")
}

fn not_implemented() -> Reply {
    Reply::new(502, Enhanced(5, 5, 1), "Error: command not implemented")
}

/// Per-verb counts for the disconnect line: `mail=1 rcpt=0/1 commands=2/3`.
#[derive(Default)]
struct Stats {
    /// (accepted, total) per verb, indexed by `Verb as usize`.
    verbs: [(u32, u32); Verb::ALL.len()],
    unknown: (u32, u32),
    commands: (u32, u32),
}

impl Stats {
    /// Postfix's order, so the line reads the same as its.
    const ORDER: [Verb; 14] = [
        Verb::Helo,
        Verb::Ehlo,
        Verb::StartTls,
        Verb::Auth,
        Verb::Mail,
        Verb::Rcpt,
        Verb::Data,
        Verb::Bdat,
        Verb::Rset,
        Verb::Noop,
        Verb::Vrfy,
        Verb::Expn,
        Verb::Help,
        Verb::Quit,
    ];

    fn record(&mut self, verb: Option<Verb>, ok: bool) {
        let slot = match verb {
            Some(v) => &mut self.verbs[v as usize],
            None => &mut self.unknown,
        };
        for (accepted, total) in [slot, &mut self.commands] {
            *total += 1;
            *accepted += u32::from(ok);
        }
    }

    fn summary(&self) -> String {
        let one = |name: &str, (ok, total): (u32, u32)| match (ok, total) {
            (_, 0) => None,
            (ok, total) if ok == total => Some(format!("{name}={total}")),
            (ok, total) => Some(format!("{name}={ok}/{total}")),
        };
        let verbs = Stats::ORDER.iter().filter_map(|v| one(v.name(), self.verbs[*v as usize]));
        let rest = [one("unknown", self.unknown), Some(one("commands", self.commands).unwrap_or("commands=0".into()))];
        verbs.chain(rest.into_iter().flatten()).collect::<Vec<_>>().join(" ")
    }
}

// ---------------------------------------------------------------------------
// The loop: the only code that touches the stream.

/// Why a session ended.
#[derive(Debug)]
enum End {
    Quit,
    Lost,
    Timeout,
    /// The client stopped reading our replies; nothing more can be sent.
    Stalled,
    Shutdown,
    TooManyErrors,
    Io(std::io::Error),
    /// STARTTLS was accepted: the caller runs the handshake.
    StartTls,
}

/// The stream with its input and output buffers.
struct Conn<S> {
    stream: S,
    reader: LineReader,
    buf: Vec<u8>,
    out: Vec<u8>,
    write_timeout: Duration,
}

impl<S: AsyncRead + AsyncWrite + Unpin> Conn<S> {
    fn queue(&mut self, reply: &Reply) {
        self.out.extend_from_slice(&reply.to_wire());
    }

    /// Writes the queued replies in one go.
    async fn flush(&mut self) -> Result<(), End> {
        if self.out.is_empty() {
            return Ok(());
        }
        let write = async {
            self.stream.write_all(&self.out).await?;
            self.stream.flush().await
        };
        match tokio::time::timeout(self.write_timeout, write).await {
            Ok(Ok(())) => {
                self.out.clear();
                Ok(())
            }
            Ok(Err(e)) => Err(End::Io(e)),
            Err(_) => Err(End::Stalled),
        }
    }

    /// Reads what is available into `buf`; returns the count (never 0).
    async fn read(&mut self, limit: Duration) -> Result<usize, End> {
        match tokio::time::timeout(limit, self.stream.read(&mut self.buf)).await {
            Ok(Ok(0)) => Err(End::Lost),
            Ok(Ok(n)) => Ok(n),
            Ok(Err(e)) => Err(End::Io(e)),
            Err(_) => Err(End::Timeout),
        }
    }
}

async fn serve<S>(
    stream: S,
    peer: Peer,
    kind: Listener,
    config: &Config,
    ingress: &Ingress,
    security: &Security,
    mut shutdown: Option<watch::Receiver<bool>>,
) where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let mut session = Session::new(config, ingress, peer, security);
    session.kind = kind;
    tracing::info!("connect from {}", session.peer);
    if kind == Listener::Submissions {
        return serve_implicit_tls(session, stream, &mut shutdown).await;
    }
    let mut conn = Conn {
        stream,
        reader: LineReader::new(config.smtp.max_line_length),
        buf: vec![0; READ_SIZE],
        out: Vec::with_capacity(1024),
        write_timeout: config.smtp.command_timeout,
    };
    conn.queue(&session.greeting());
    let end = match drive(&mut session, &mut conn, ingress, &mut shutdown).await {
        Ok(end) | Err(end) => end,
    };
    let Some(acceptor) = security.tls.clone().filter(|_| matches!(end, End::StartTls)) else {
        return finish(&mut session, conn, end).await;
    };
    // RFC 3207 5: whatever came in clear behind STARTTLS is dropped.
    let injected = conn.reader.take_buffered();
    if !injected.is_empty() {
        tracing::warn!("{}: {} byte(s) pipelined after STARTTLS discarded", session.peer, injected.len());
    }
    let Some(tls) = handshake(&mut session, acceptor, conn.stream).await else {
        return log_end(&session, &End::Lost);
    };
    let mut conn =
        Conn { stream: tls, reader: conn.reader, buf: conn.buf, out: conn.out, write_timeout: conn.write_timeout };
    let end = match drive(&mut session, &mut conn, ingress, &mut shutdown).await {
        Ok(end) | Err(end) => end,
    };
    finish(&mut session, conn, end).await
}

/// A session on a submissions port (RFC 8314): the handshake comes first,
/// the greeting is the first thing sent over TLS.
async fn serve_implicit_tls<S>(mut session: Session<'_>, stream: S, shutdown: &mut Option<watch::Receiver<bool>>)
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let Some(acceptor) = session.security.tls.clone() else {
        tracing::error!("{}: submissions listener without a TLS certificate (tls.cert)", session.peer);
        return log_end(&session, &End::Lost);
    };
    let Some(tls) = handshake(&mut session, acceptor, stream).await else {
        return log_end(&session, &End::Lost);
    };
    let config = session.config;
    let ingress = session.ingress;
    let mut conn = Conn {
        stream: tls,
        reader: LineReader::new(config.smtp.max_line_length),
        buf: vec![0; READ_SIZE],
        out: Vec::with_capacity(1024),
        write_timeout: config.smtp.command_timeout,
    };
    conn.queue(&session.greeting());
    let end = match drive(&mut session, &mut conn, ingress, shutdown).await {
        Ok(end) | Err(end) => end,
    };
    finish(&mut session, conn, end).await
}

/// The TLS handshake, bounded by `smtp.command_timeout`; `None` (logged)
/// when it fails. On success the session is marked encrypted.
async fn handshake<S>(
    session: &mut Session<'_>,
    acceptor: Arc<rustls::ServerConfig>,
    stream: S,
) -> Option<tokio_rustls::server::TlsStream<S>>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let accept = tokio_rustls::TlsAcceptor::from(acceptor).accept(stream);
    let tls = match tokio::time::timeout(session.config.smtp.command_timeout, accept).await {
        Ok(Ok(tls)) => tls,
        Ok(Err(e)) => {
            tracing::info!("SSL_accept error from {}: {e}", session.peer);
            return None;
        }
        Err(_) => {
            tracing::info!("SSL_accept timeout from {}", session.peer);
            return None;
        }
    };
    let description = crate::tls::describe(tls.get_ref().1);
    session.tls_started(description.clone());
    let chain = tls.get_ref().1.peer_certificates().unwrap_or_default();
    let trust = match (&session.security.client_trust, chain.first()) {
        (Some(trust), Some(_)) => session.client_cert_presented(trust, chain),
        _ => "Anonymous",
    };
    tracing::info!("{trust} TLS connection established from {}: {description}", session.peer);
    Some(tls)
}

/// Sends the closing reply the end calls for, closes, and logs.
async fn finish<S>(session: &mut Session<'_>, mut conn: Conn<S>, end: End)
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let hostname = &session.config.hostname;
    let farewell = match &end {
        End::Timeout => Some(Reply::new(421, Enhanced(4, 4, 2), format!("{hostname} Error: timeout exceeded"))),
        End::Shutdown => Some(Reply::new(421, Enhanced(4, 3, 2), format!("{hostname} Service shutting down"))),
        End::TooManyErrors => Some(Reply::new(421, Enhanced(4, 7, 0), format!("{hostname} Error: too many errors"))),
        // Only reachable on an already encrypted stream, which never
        // offers STARTTLS again.
        End::StartTls => None,
        End::Quit | End::Lost | End::Stalled | End::Io(_) => None,
    };
    if let Some(reply) = farewell {
        conn.queue(&reply);
        let _ = conn.flush().await;
    }
    let _ = tokio::time::timeout(Duration::from_secs(1), conn.stream.shutdown()).await;
    log_end(session, &end);
}

fn log_end(session: &Session<'_>, end: &End) {
    let after = session.last_verb.map_or("CONNECT".to_string(), |v| v.name().to_ascii_uppercase());
    match end {
        End::Lost => tracing::info!("lost connection after {after} from {}", session.peer),
        End::Timeout => tracing::info!("timeout after {after} from {}", session.peer),
        End::Stalled => tracing::info!("client stopped reading after {after} from {}", session.peer),
        End::Io(e) => tracing::info!("connection error after {after} from {}: {e}", session.peer),
        End::TooManyErrors => tracing::info!("too many errors after {after} from {}", session.peer),
        End::Quit | End::Shutdown | End::StartTls => {}
    }
    tracing::info!("disconnect from {} {}", session.peer, session.stats.summary());
}

/// The command loop. Returns (or fails with) the reason the session ends;
/// a closing reply, if any, is the caller's to send.
async fn drive<S>(
    session: &mut Session<'_>,
    conn: &mut Conn<S>,
    ingress: &Ingress,
    shutdown: &mut Option<watch::Receiver<bool>>,
) -> Result<End, End>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    loop {
        // Handle every complete command already read, then flush once.
        loop {
            // A message arriving in BDAT chunks is left to finish, as in DATA.
            if session.chunks.is_none() && shutdown.as_ref().is_some_and(|s| *s.borrow()) {
                conn.flush().await?;
                return Ok(End::Shutdown);
            }
            let step = match conn.reader.next_line() {
                None => break,
                Some(Line::TooLong) => Step::Reply(session.line_too_long()),
                Some(Line::Command(line)) => session.auth_line(line),
            };
            // The reply, and whether the session ends after it.
            let (reply, then) = match step {
                Step::Reply(reply) => (reply, None),
                Step::Close(reply) => (reply, Some(End::Quit)),
                Step::StartTls(reply) => (reply, Some(End::StartTls)),
                Step::Verify(credentials) => (verify(session, credentials).await, None),
                Step::Data(tx) => (data(session, conn, ingress, tx).await?, None),
                Step::Bdat { size, last } => (bdat(session, conn, ingress, size, last).await?, None),
                Step::Skip { size, reply } => {
                    read_chunk(conn, size, session.config.smtp.data_timeout, None).await?;
                    (reply, None)
                }
            };
            // Every reply to a command or a message passes here.
            conn.queue(&reply);
            let too_many = session.replied(&reply);
            if let Some(end) = then.or(too_many.then_some(End::TooManyErrors)) {
                conn.flush().await?;
                return Ok(end);
            }
        }
        conn.flush().await?;
        let n = tokio::select! {
            n = conn.read(session.config.smtp.command_timeout) => n?,
            () = shutdown_signal(shutdown), if session.chunks.is_none() => return Ok(End::Shutdown),
        };
        conn.reader.push(&conn.buf[..n]);
    }
}

/// Checks credentials off the async threads; a failure is answered only
/// after `auth.failure_delay`, which slows password guessing down.
async fn verify(session: &mut Session<'_>, credentials: Credentials) -> Reply {
    let Credentials { mechanism, user, password } = credentials;
    let ok = match session.security.users.clone() {
        Some(users) => {
            let name = user.clone();
            tokio::task::spawn_blocking(move || users.verify(&name, &password)).await.unwrap_or(false)
        }
        None => false,
    };
    if !ok {
        tokio::time::sleep(session.config.auth.failure_delay).await;
    }
    session.auth_verified(mechanism, user, ok)
}

/// Resolves when shutdown is requested; never when there is no signal or
/// its sender is gone.
async fn shutdown_signal(shutdown: &mut Option<watch::Receiver<bool>>) {
    if let Some(rx) = shutdown
        && rx.wait_for(|v| *v).await.is_ok()
    {
        return;
    }
    std::future::pending().await
}

/// DATA after the checks passed: opens the message, sends 354, receives the
/// text, and returns the final reply. Fails only when the session must end.
async fn data<S>(
    session: &mut Session<'_>,
    conn: &mut Conn<S>,
    ingress: &Ingress,
    tx: Transaction,
) -> Result<Reply, End>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let writer = match ingress.open(tx).await {
        Ok(w) => w,
        Err(e) => {
            // The transaction stays: the client may retry DATA or RSET.
            session.stats.record(Some(Verb::Data), false);
            return Ok(e.reply());
        }
    };
    let id = writer.id().to_string();
    conn.queue(&Reply::plain(354, "End data with <CR><LF>.<CR><LF>"));
    conn.flush().await?;
    let config = session.config;
    let limits = &config.smtp;
    let mut incoming = Incoming::new(writer, limits.max_message_size, limits.max_data_line_length);
    // What the client sent after DATA in the same packet is message text.
    let early = conn.reader.take_buffered();
    let used = incoming.take(&early).await;
    if incoming.decoder.is_done() {
        conn.reader.push(&early[used..]);
    } else {
        loop {
            let n = conn.read(limits.data_timeout).await?;
            let used = incoming.take(&conn.buf[..n]).await;
            if incoming.decoder.is_done() {
                conn.reader.push(&conn.buf[used..n]);
                break;
            }
        }
    }
    let result = incoming.finish().await;
    Ok(session.message_end(Verb::Data, &id, result))
}

/// BDAT after its command line: reads the chunk into the message, or drops
/// it when the command is refused (RFC 3030 3: the octets follow the
/// command whatever the server thinks of it), and returns the reply. Fails
/// only when the session must end.
///
/// Bare CR and bare LF: BDAT has no end-of-data sequence, so they cannot
/// smuggle a command here, and Postfix accepts them and normalises the
/// line ends. posthorn refuses the message (550 5.5.2) all the same, as
/// DATA does: one content policy whichever command carries the message,
/// no way around the DATA check by switching to BDAT, and the spool holds
/// exactly what was sent, never a rewritten copy nor a bare LF that the
/// next hop, reached with DATA, might take as the end of the data.
async fn bdat<S>(
    session: &mut Session<'_>,
    conn: &mut Conn<S>,
    ingress: &Ingress,
    size: u64,
    last: bool,
) -> Result<Reply, End>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let limits = &session.config.smtp;
    let opened = match session.bdat(size) {
        Ok(NextChunk::More(chunks)) => Ok(chunks),
        Ok(NextChunk::First(tx)) => match ingress.open(*tx).await {
            Ok(writer) => {
                let id = writer.id().to_string();
                let incoming = Incoming::chunks(writer, limits.max_message_size, limits.max_data_line_length);
                Ok(Box::new(Chunks { id, incoming }))
            }
            Err(e) => Err(e.reply()),
        },
        Err(reply) => Err(reply),
    };
    let mut chunks = match opened {
        Ok(chunks) => chunks,
        Err(reply) => {
            read_chunk(conn, size, limits.data_timeout, None).await?;
            return Ok(session.bdat_refused(reply));
        }
    };
    read_chunk(conn, size, limits.data_timeout, Some(&mut chunks.incoming)).await?;
    if last {
        chunks.incoming.end_of_data();
        let result = chunks.incoming.finish().await;
        return Ok(session.message_end(Verb::Bdat, &chunks.id, result));
    }
    match chunks.incoming.failure() {
        Some(reply) => Ok(session.message_end(Verb::Bdat, &chunks.id, Err(reply))),
        None => Ok(session.chunk_received(chunks, size)),
    }
}

/// Reads exactly `size` octets, the ones already buffered behind the
/// command line first, into `incoming` (or nowhere), a read at a time:
/// a chunk is never held whole in memory. Each read waits at most
/// `timeout`, as in DATA. What a read brings beyond the chunk goes back
/// to the line reader: pipelined commands after it.
async fn read_chunk<S>(
    conn: &mut Conn<S>,
    size: u64,
    timeout: Duration,
    mut incoming: Option<&mut Incoming>,
) -> Result<(), End>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let early = conn.reader.take_up_to(size);
    let mut left = size - early.len() as u64;
    if let Some(incoming) = incoming.as_deref_mut() {
        incoming.take(early).await;
    }
    while left > 0 {
        // RFC 2920: replies to earlier commands go out before waiting.
        conn.flush().await?;
        let n = conn.read(timeout).await?;
        let used = n.min(usize::try_from(left).unwrap_or(usize::MAX));
        if let Some(incoming) = incoming.as_deref_mut() {
            incoming.take(&conn.buf[..used]).await;
        }
        conn.reader.push(&conn.buf[used..n]);
        left -= used as u64;
    }
    Ok(())
}

/// One message being received: the decoder, and the writer until the
/// message is known to be refused (dropping the writer discards it).
struct Incoming {
    decoder: DataDecoder,
    writer: Option<MessageWriter>,
    decoded: Vec<u8>,
    max_size: u64,
    /// The ingress refused a write (disk trouble); the message is lost.
    write_failure: Option<Reply>,
}

impl Incoming {
    fn new(writer: MessageWriter, max_size: u64, max_line: usize) -> Incoming {
        Incoming::with(DataDecoder::new(max_line), writer, max_size)
    }

    /// A message arriving in BDAT chunks: no dot-stuffing, no end of data.
    fn chunks(writer: MessageWriter, max_size: u64, max_line: usize) -> Incoming {
        Incoming::with(DataDecoder::chunks(max_line), writer, max_size)
    }

    fn with(decoder: DataDecoder, writer: MessageWriter, max_size: u64) -> Incoming {
        Incoming {
            decoder,
            writer: Some(writer),
            decoded: Vec::with_capacity(READ_SIZE + 64),
            max_size,
            write_failure: None,
        }
    }

    /// Decodes a chunk and stores what belongs to the message; returns the
    /// bytes of `chunk` used. Once the message is known to be refused, the
    /// rest is still read (the client only listens again after the final
    /// dot) but no longer stored.
    async fn take(&mut self, chunk: &[u8]) -> usize {
        self.decoded.clear();
        let used = self.decoder.feed(chunk, &mut self.decoded);
        if self.refusal().is_some() {
            self.writer = None;
        }
        if let Some(writer) = self.writer.as_mut()
            && !self.decoded.is_empty()
            && let Err(e) = writer.write(&self.decoded).await
        {
            self.write_failure = Some(e.reply());
            self.writer = None;
        }
        used
    }

    /// The refusal the decoder's findings call for, most serious first:
    /// smuggling before size, so a message both too big and carrying a bare
    /// LF is reported as what it is most likely to be.
    fn refusal(&self) -> Option<Reply> {
        let d = &self.decoder;
        if d.saw_bare_line_ending() {
            Some(Reply::new(550, Enhanced(5, 5, 2), "Message contains bare CR or LF"))
        } else if d.size() > self.max_size {
            Some(Reply::new(552, Enhanced(5, 3, 4), "Message size exceeds fixed limit"))
        } else if d.saw_long_line() {
            Some(Reply::new(550, Enhanced(5, 6, 0), "Message contains a line that is too long"))
        } else {
            None
        }
    }

    /// Why the message can no longer be accepted, if it cannot: checked
    /// after each BDAT chunk, so a doomed message fails at once.
    fn failure(&self) -> Option<Reply> {
        self.refusal().or_else(|| self.write_failure.clone())
    }

    /// After the LAST chunk: a CR at the very end is a bare CR. Nothing is
    /// written: such a message is refused.
    fn end_of_data(&mut self) {
        self.decoded.clear();
        self.decoder.end(&mut self.decoded);
        if self.refusal().is_some() {
            self.writer = None;
        }
    }

    /// After the final dot or the LAST chunk: commits the message, or says
    /// why not.
    async fn finish(self) -> Result<String, Reply> {
        if let Some(reply) = self.failure() {
            return Err(reply);
        }
        match self.writer {
            Some(writer) => writer.commit().await.map_err(|e| e.reply()),
            None => Err(Reply::new(451, Enhanced(4, 3, 0), "Local error in processing, try again later")),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ingress::test_support::queue_ingress;
    use crate::spool::Spool;
    use std::path::Path;
    use std::pin::Pin;
    use std::sync::Arc;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::task::{Context, Poll};
    use tokio::io::{AsyncBufReadExt, BufReader, DuplexStream, ReadHalf, WriteHalf};

    const TRUSTED: &str = "10.0.0.5:40000";
    const STRANGER: &str = "192.0.2.9:40000";

    /// The test configuration; `smtp` lines go into `[smtp]`, replacing
    /// the defaults of the same key.
    fn config(smtp: &str) -> Config {
        let defaults =
            ["max_recipients = 3", "max_message_size = 5000", "max_data_line_length = 1000", "max_errors = 50"];
        let given: Vec<&str> = smtp.lines().filter(|l| !l.trim().is_empty()).collect();
        let key = |l: &str| l.split('=').next().unwrap_or("").trim().to_string();
        let mut section: Vec<&str> = defaults.into_iter().filter(|d| !given.iter().any(|g| key(g) == key(d))).collect();
        section.extend(given);
        let text = format!(
            "hostname = \"mx.test\"\n[smtp]\n{}\n[access]\ntrusted_networks = [\"10.0.0.0/8\"]\nrelay_domains = [\"example.org\"]\n",
            section.join("\n")
        );
        Config::parse(&text, Path::new("test.toml")).expect("test config")
    }

    fn tcp(addr: &str) -> Peer {
        Peer::Tcp(addr.parse().unwrap())
    }

    /// Command lines joined with CRLF, CRLF-terminated.
    fn lines(lines: &[&str]) -> Vec<u8> {
        lines.iter().flat_map(|l| [l.as_bytes(), b"\r\n"]).flatten().copied().collect()
    }

    /// `250 2.1.0` for a reply with an enhanced code, `250` without.
    fn short(r: &Reply) -> String {
        match r.enhanced {
            Some(e) => format!("{} {e}", r.code),
            None => r.code.to_string(),
        }
    }

    /// Splits what the server wrote into replies.
    fn replies(output: &str) -> Vec<Reply> {
        let mut out = Vec::new();
        let mut pending = Vec::new();
        for line in output.split("\r\n").filter(|l| !l.is_empty()) {
            pending.push(line);
            if line.as_bytes().get(3) != Some(&b'-') {
                out.push(Reply::from_lines(&pending).unwrap_or_else(|| panic!("bad reply {pending:?}")));
                pending.clear();
            }
        }
        assert!(pending.is_empty(), "unterminated reply {pending:?}");
        out
    }

    /// Sends `input` in one write, closes the sending side, and returns
    /// every reply until the server closed, with the spool it used.
    async fn converse(config: &Config, peer: Peer, input: &[u8]) -> (Vec<Reply>, Spool, tempfile::TempDir) {
        let dir = tempfile::tempdir().unwrap();
        let (ingress, spool) = queue_ingress(dir.path(), config);
        let (client, server) = tokio::io::duplex(1 << 20);
        let client = async move {
            let (mut r, mut w) = tokio::io::split(client);
            w.write_all(input).await.unwrap();
            w.shutdown().await.unwrap();
            let mut out = String::new();
            r.read_to_string(&mut out).await.unwrap();
            out
        };
        let ((), output) = tokio::join!(run_session(server, peer, config, &ingress), client);
        (replies(&output), spool, dir)
    }

    fn message(size: usize, line: usize) -> String {
        let mut m = String::from("Subject: test\r\n\r\n");
        while m.len() < size {
            m.push_str(&"x".repeat(line.min(size - m.len()).max(1)));
            m.push_str("\r\n");
        }
        m
    }

    #[tokio::test]
    async fn dialog_table() {
        let ehlo = "EHLO client.example";
        let mail = "MAIL FROM:<sender@example.net>";
        let rcpt = "RCPT TO:<user@example.org>";
        let long_command = format!("NOOP {}", "x".repeat(3000));
        let big = message(6000, 100);
        let long_line = format!("Subject: x\r\n\r\n{}\r\n", "x".repeat(1100));
        // `n` octets of 100-octet lines, for BDAT chunks.
        let text = |n: usize| format!("{}\r\n", "x".repeat(98)).repeat(n / 100);
        // (name, peer, input, expected replies after the greeting)
        let cases: Vec<(&str, &str, Vec<u8>, Vec<&str>)> = vec![
            (
                "good transaction",
                TRUSTED,
                lines(&[ehlo, mail, rcpt, "DATA", "Subject: hi", "", "body", ".", "QUIT"]),
                vec!["250", "250 2.1.0", "250 2.1.5", "354", "250 2.0.0", "221 2.0.0"],
            ),
            (
                "plain HELO",
                TRUSTED,
                lines(&["HELO client", mail, rcpt, "DATA", "x", ".", "QUIT"]),
                vec!["250", "250 2.1.0", "250 2.1.5", "354", "250 2.0.0", "221 2.0.0"],
            ),
            (
                "HELO takes no ESMTP parameters",
                TRUSTED,
                lines(&[
                    "HELO client",
                    "MAIL FROM:<a@example.net> SIZE=10",
                    mail,
                    "RCPT TO:<u@example.org> NOTIFY=NEVER",
                ]),
                vec!["250", "555 5.5.4", "250 2.1.0", "555 5.5.4"],
            ),
            (
                "null sender",
                TRUSTED,
                lines(&[ehlo, "MAIL FROM:<>", rcpt, "DATA", "bounce", ".", "QUIT"]),
                vec!["250", "250 2.1.0", "250 2.1.5", "354", "250 2.0.0", "221 2.0.0"],
            ),
            (
                "out of order",
                TRUSTED,
                lines(&[mail, ehlo, rcpt, "DATA", mail, mail, "DATA", rcpt, "QUIT"]),
                vec![
                    "503 5.5.1",
                    "250",
                    "503 5.5.1",
                    "503 5.5.1",
                    "250 2.1.0",
                    "503 5.5.1",
                    "503 5.5.1",
                    "250 2.1.5",
                    "221 2.0.0",
                ],
            ),
            (
                "no valid recipients",
                TRUSTED,
                lines(&[ehlo, mail, "RCPT TO:<jø@example.org>", "DATA", "QUIT"]),
                vec!["250", "250 2.1.0", "553 5.6.7", "554 5.5.1", "221 2.0.0"],
            ),
            (
                "EHLO resets the transaction",
                TRUSTED,
                lines(&[ehlo, mail, ehlo, rcpt]),
                vec!["250", "250 2.1.0", "250", "503 5.5.1"],
            ),
            (
                "RSET mid-transaction",
                TRUSTED,
                lines(&[ehlo, mail, rcpt, "RSET", "DATA", mail, rcpt, "DATA", "x", ".", "QUIT"]),
                vec![
                    "250",
                    "250 2.1.0",
                    "250 2.1.5",
                    "250 2.0.0",
                    "503 5.5.1",
                    "250 2.1.0",
                    "250 2.1.5",
                    "354",
                    "250 2.0.0",
                    "221 2.0.0",
                ],
            ),
            (
                "unknown command, then a good transaction",
                TRUSTED,
                lines(&["FOO bar", ehlo, "XYZZY", mail, rcpt, "DATA", "x", ".", "QUIT"]),
                vec!["500 5.5.2", "250", "500 5.5.2", "250 2.1.0", "250 2.1.5", "354", "250 2.0.0", "221 2.0.0"],
            ),
            (
                "bad syntax",
                TRUSTED,
                lines(&[
                    "EHLO",
                    ehlo,
                    "MAIL FROM:sender@example.net",
                    "MAIL TO:<a@example.net>",
                    "MAIL FROM:<> FOO=1",
                    "MAIL FROM:<> SIZE=abc",
                    "MAIL FROM:<> BODY=BINARYMIME",
                    mail,
                    "RCPT TO:<a b@example.org>",
                    "RCPT TO:<>",
                    "RCPT TO:<u@example.org> SIZE=1",
                    "DATA now",
                    "RSET all",
                ]),
                vec![
                    "501 5.5.4",
                    "250",
                    "501 5.1.7",
                    "501 5.5.4",
                    "555 5.5.4",
                    "501 5.5.4",
                    "555 5.5.4",
                    "250 2.1.0",
                    "501 5.1.3",
                    "501 5.1.3",
                    "555 5.5.4",
                    "501 5.5.4",
                    "501 5.5.4",
                ],
            ),
            (
                "SIZE against the limit",
                TRUSTED,
                lines(&[ehlo, "MAIL FROM:<> SIZE=5001", "MAIL FROM:<> SIZE=5000"]),
                vec!["250", "552 5.3.4", "250 2.1.0"],
            ),
            (
                "too many recipients",
                TRUSTED,
                lines(&[
                    ehlo,
                    mail,
                    "RCPT TO:<a@example.org>",
                    "RCPT TO:<b@example.org>",
                    "RCPT TO:<c@example.org>",
                    "RCPT TO:<d@example.org>",
                    "DATA",
                    "x",
                    ".",
                ]),
                vec!["250", "250 2.1.0", "250 2.1.5", "250 2.1.5", "250 2.1.5", "452 4.5.3", "354", "250 2.0.0"],
            ),
            (
                "message too big, session goes on",
                TRUSTED,
                [lines(&[ehlo, mail, rcpt, "DATA"]), big.clone().into_bytes(), lines(&[".", "NOOP", "QUIT"])].concat(),
                vec!["250", "250 2.1.0", "250 2.1.5", "354", "552 5.3.4", "250 2.0.0", "221 2.0.0"],
            ),
            (
                "data line too long",
                TRUSTED,
                [lines(&[ehlo, mail, rcpt, "DATA"]), long_line.into_bytes(), lines(&[".", "QUIT"])].concat(),
                vec!["250", "250 2.1.0", "250 2.1.5", "354", "550 5.6.0", "221 2.0.0"],
            ),
            (
                "bare LF in DATA",
                TRUSTED,
                [lines(&[ehlo, mail, rcpt, "DATA"]), b"Subject: x\n\nbody\r\n".to_vec(), lines(&[".", "NOOP"])]
                    .concat(),
                vec!["250", "250 2.1.0", "250 2.1.5", "354", "550 5.5.2", "250 2.0.0"],
            ),
            (
                "bare CR in DATA",
                TRUSTED,
                [lines(&[ehlo, mail, rcpt, "DATA"]), b"a\rb\r\n".to_vec(), lines(&[".", "NOOP"])].concat(),
                vec!["250", "250 2.1.0", "250 2.1.5", "354", "550 5.5.2", "250 2.0.0"],
            ),
            (
                // The smuggled transaction must be message text, not commands.
                "smuggling attempt",
                TRUSTED,
                [
                    lines(&[ehlo, mail, rcpt, "DATA"]),
                    b"one\n.\r\nMAIL FROM:<ceo@example.org>\r\nRCPT TO:<victim@example.org>\r\nDATA\r\nsmuggled\r\n"
                        .to_vec(),
                    lines(&[".", "QUIT"]),
                ]
                .concat(),
                vec!["250", "250 2.1.0", "250 2.1.5", "354", "550 5.5.2", "221 2.0.0"],
            ),
            (
                "command line too long",
                TRUSTED,
                lines(&[ehlo, &long_command, "NOOP"]),
                vec!["250", "500 5.5.2", "250 2.0.0"],
            ),
            (
                "the small verbs",
                TRUSTED,
                lines(&["VRFY root", "HELP", "NOOP", "NOOP hello", "EXPN staff", "STARTTLS", "AUTH PLAIN", "QUIT"]),
                vec![
                    "252 2.5.2",
                    "214 2.0.0",
                    "250 2.0.0",
                    "250 2.0.0",
                    "502 5.5.1",
                    "502 5.5.1",
                    "502 5.5.1",
                    "221 2.0.0",
                ],
            ),
            (
                "SMTPUTF8",
                TRUSTED,
                lines(&[
                    ehlo,
                    "MAIL FROM:<jø@example.net>",
                    "MAIL FROM:<jø@example.net> SMTPUTF8",
                    "RCPT TO:<ü@bücher.example.org>",
                    "RSET",
                    mail,
                    "RCPT TO:<ü@example.org>",
                ]),
                vec!["250", "553 5.6.7", "250 2.1.0", "250 2.1.5", "250 2.0.0", "250 2.1.0", "553 5.6.7"],
            ),
            (
                "relay access from a stranger",
                STRANGER,
                lines(&[
                    ehlo,
                    mail,
                    "RCPT TO:<someone@elsewhere.example>",
                    rcpt,
                    "RCPT TO:<Postmaster>",
                    "DATA",
                    "x",
                    ".",
                ]),
                vec!["250", "250 2.1.0", "554 5.7.1", "250 2.1.5", "250 2.1.5", "354", "250 2.0.0"],
            ),
            (
                "relay access from a trusted network",
                TRUSTED,
                lines(&[ehlo, mail, "RCPT TO:<someone@elsewhere.example>"]),
                vec!["250", "250 2.1.0", "250 2.1.5"],
            ),
            ("commands ending in bare LF", TRUSTED, b"EHLO x\nNOOP\n".to_vec(), vec!["250", "250 2.0.0"]),
            (
                "empty message",
                TRUSTED,
                lines(&[ehlo, mail, rcpt, "DATA", "."]),
                vec!["250", "250 2.1.0", "250 2.1.5", "354", "250 2.0.0"],
            ),
            (
                "BDAT in three chunks, pipelined",
                TRUSTED,
                [
                    lines(&[ehlo, mail, rcpt]),
                    b"BDAT 5\r\nab\r\ncBDAT 3\r\nd\r\nBDAT 0 LAST\r\n".to_vec(),
                    lines(&["QUIT"]),
                ]
                .concat(),
                vec!["250", "250 2.1.0", "250 2.1.5", "250 2.0.0", "250 2.0.0", "250 2.0.0", "221 2.0.0"],
            ),
            (
                // The octets of a refused chunk are read, not taken as commands.
                "BDAT before MAIL",
                TRUSTED,
                [lines(&[ehlo]), b"BDAT 6\r\nQUIT\r\n".to_vec(), lines(&["NOOP"])].concat(),
                vec!["250", "503 5.5.1", "250 2.0.0"],
            ),
            (
                "BDAT after HELO",
                TRUSTED,
                [lines(&["HELO c", mail, rcpt]), b"BDAT 6 LAST\r\nQUIT\r\n".to_vec(), lines(&["NOOP"])].concat(),
                vec!["250", "250 2.1.0", "250 2.1.5", "503 5.5.1", "250 2.0.0"],
            ),
            (
                // 5000 is the limit: the second chunk goes over, the third
                // belongs to a failed transaction.
                "BDAT over the size limit",
                TRUSTED,
                [
                    lines(&[ehlo, mail, rcpt]),
                    format!("BDAT 3000\r\n{}", text(3000)).into_bytes(),
                    format!("BDAT 3000\r\n{}", text(3000)).into_bytes(),
                    b"BDAT 4 LAST\r\nNOOP".to_vec(),
                    lines(&["RSET", mail, rcpt]),
                    b"BDAT 5000 LAST\r\n".to_vec(),
                    text(5000).into_bytes(),
                ]
                .concat(),
                vec![
                    "250",
                    "250 2.1.0",
                    "250 2.1.5",
                    "250 2.0.0",
                    "552 5.3.4",
                    "503 5.5.1",
                    "250 2.0.0",
                    "250 2.1.0",
                    "250 2.1.5",
                    "250 2.0.0",
                ],
            ),
            (
                // Refused before a byte is stored, but read all the same.
                "one BDAT chunk over the size limit",
                TRUSTED,
                [
                    lines(&[ehlo, mail, rcpt]),
                    format!("BDAT 6000 LAST\r\n{}", text(6000)).into_bytes(),
                    lines(&["NOOP"]),
                ]
                .concat(),
                vec!["250", "250 2.1.0", "250 2.1.5", "552 5.3.4", "250 2.0.0"],
            ),
            (
                "DATA, RCPT and MAIL after BDAT",
                TRUSTED,
                [
                    lines(&[ehlo, mail, rcpt]),
                    b"BDAT 3\r\nabc".to_vec(),
                    lines(&["DATA", rcpt, mail]),
                    b"BDAT 2 LAST\r\n\r\n".to_vec(),
                ]
                .concat(),
                vec!["250", "250 2.1.0", "250 2.1.5", "250 2.0.0", "503 5.5.1", "503 5.5.1", "503 5.5.1", "250 2.0.0"],
            ),
            (
                "RSET between chunks drops the message",
                TRUSTED,
                [lines(&[ehlo, mail, rcpt]), b"BDAT 3\r\nabc".to_vec(), lines(&["RSET"]), b"BDAT 0 LAST\r\n".to_vec()]
                    .concat(),
                vec!["250", "250 2.1.0", "250 2.1.5", "250 2.0.0", "250 2.0.0", "503 5.5.1"],
            ),
            (
                "BDAT size unreadable: 501, then the session ends",
                TRUSTED,
                [lines(&[ehlo, mail, rcpt]), b"BDAT 12x\r\nNOOP\r\n".to_vec()].concat(),
                vec!["250", "250 2.1.0", "250 2.1.5", "501 5.5.4"],
            ),
            (
                "BDAT with a bad end marker: its chunk is read",
                TRUSTED,
                [lines(&[ehlo, mail, rcpt]), b"BDAT 6 MORE\r\nQUIT\r\n".to_vec(), lines(&["MAIL FROM:<>"])].concat(),
                vec!["250", "250 2.1.0", "250 2.1.5", "501 5.5.4", "250 2.1.0"],
            ),
            (
                "bare LF in BDAT",
                TRUSTED,
                [lines(&[ehlo, mail, rcpt]), b"BDAT 3\r\na\nbBDAT 0 LAST\r\n".to_vec(), lines(&["NOOP"])].concat(),
                vec!["250", "250 2.1.0", "250 2.1.5", "550 5.5.2", "503 5.5.1", "250 2.0.0"],
            ),
            (
                "bare CR at the end of the last chunk",
                TRUSTED,
                [lines(&[ehlo, mail, rcpt]), b"BDAT 2\r\na\rBDAT 0 LAST\r\n".to_vec(), lines(&["NOOP"])].concat(),
                vec!["250", "250 2.1.0", "250 2.1.5", "250 2.0.0", "550 5.5.2", "250 2.0.0"],
            ),
            (
                "BDAT data line too long",
                TRUSTED,
                [lines(&[ehlo, mail, rcpt]), format!("BDAT 1200 LAST\r\n{}", "z".repeat(1200)).into_bytes()].concat(),
                vec!["250", "250 2.1.0", "250 2.1.5", "550 5.6.0"],
            ),
            (
                "client leaves in the middle of a chunk",
                TRUSTED,
                [lines(&[ehlo, mail, rcpt]), b"BDAT 100\r\npartial".to_vec()].concat(),
                vec!["250", "250 2.1.0", "250 2.1.5"],
            ),
            (
                "client leaves in the middle of DATA",
                TRUSTED,
                [lines(&[ehlo, mail, rcpt, "DATA"]), b"partial".to_vec()].concat(),
                vec!["250", "250 2.1.0", "250 2.1.5", "354"],
            ),
        ];
        let config = config("");
        for (name, peer, input, expected) in cases {
            let (got, _spool, _dir) = converse(&config, tcp(peer), &input).await;
            let got: Vec<String> = got.iter().map(short).collect();
            assert_eq!(got[0], "220", "{name}: greeting");
            assert_eq!(got[1..], expected, "{name}");
        }
    }

    #[tokio::test]
    async fn pipelined_transactions_in_one_write() {
        let config = config("");
        let mut input = Vec::new();
        for i in 0..3 {
            input.extend(lines(&[
                "MAIL FROM:<s@example.net>",
                &format!("RCPT TO:<r{i}@example.org>"),
                "DATA",
                &format!("Subject: {i}"),
                "",
                "..dot",
                ".",
            ]));
        }
        let input = [lines(&["EHLO c"]), input, lines(&["QUIT"])].concat();
        let (got, spool, _dir) = converse(&config, tcp(TRUSTED), &input).await;
        let codes: Vec<u16> = got.iter().map(|r| r.code).collect();
        assert_eq!(codes, [220, 250, 250, 250, 354, 250, 250, 250, 354, 250, 250, 250, 354, 250, 221]);
        for (i, reply) in got.iter().filter(|r| r.lines[0].starts_with("Ok: queued as ")).enumerate() {
            let id = reply.lines[0].trim_start_matches("Ok: queued as ");
            let (_, env) = spool.find(id).expect("queued");
            assert_eq!(env.recipients[0].address, format!("r{i}@example.org"));
            let body = spool.read_body(id).unwrap();
            assert!(body.starts_with(b"Received: "), "{}", String::from_utf8_lossy(&body));
            let text = format!("Subject: {i}\r\n\r\n.dot\r\n");
            assert!(body.ends_with(text.as_bytes()), "{}", String::from_utf8_lossy(&body));
        }
    }

    #[tokio::test]
    async fn envelope_carries_the_transaction() {
        let config = config("");
        let input = lines(&[
            "EHLO client.example",
            "MAIL FROM:<s@example.net> BODY=8BITMIME RET=HDRS ENVID=abc+2Bdef SMTPUTF8",
            "RCPT TO:<a@example.org> NOTIFY=SUCCESS,FAILURE ORCPT=rfc822;a@example.org",
            "RCPT TO:<a@example.org>",
            "RCPT TO:<postmaster>",
            "DATA",
            "Subject: x",
            "",
            "b\u{f8}dy",
            ".",
        ]);
        let (got, spool, _dir) = converse(&config, tcp(TRUSTED), &input).await;
        let last = got.last().unwrap();
        assert_eq!(short(last), "250 2.0.0", "{got:?}");
        let id = last.lines[0].trim_start_matches("Ok: queued as ");
        let (_, env) = spool.find(id).unwrap();
        assert_eq!(env.sender, "s@example.net");
        assert!(env.eight_bit && env.smtputf8);
        assert_eq!(env.ret.as_deref(), Some("HDRS"));
        assert_eq!(env.envid.as_deref(), Some("abc+2Bdef"));
        let rcpts: Vec<_> =
            env.recipients.iter().map(|r| (r.address.as_str(), r.notify.as_deref(), r.orcpt.as_deref())).collect();
        assert_eq!(
            rcpts,
            [
                ("a@example.org", Some("SUCCESS,FAILURE"), Some("rfc822;a@example.org")),
                ("postmaster@mx.test", None, None),
            ]
        );
        assert_eq!(env.origin.protocol, "ESMTP");
        assert_eq!(env.origin.helo.as_deref(), Some("client.example"));
        assert_eq!(env.origin.client.as_deref(), Some("10.0.0.5"));
        assert!(spool.read_body(id).unwrap().ends_with("Subject: x\r\n\r\nbødy\r\n".as_bytes()));
    }

    #[tokio::test]
    async fn refused_messages_leave_nothing_queued() {
        let config = config("");
        let input = [
            lines(&["EHLO c", "MAIL FROM:<>", "RCPT TO:<a@example.org>", "DATA"]),
            message(6000, 100).into_bytes(),
            lines(&[".", "MAIL FROM:<>", "RCPT TO:<a@example.org>", "DATA", "bare\nLF", "."]),
        ]
        .concat();
        let (got, spool, _dir) = converse(&config, tcp(TRUSTED), &input).await;
        assert_eq!(got.iter().filter(|r| r.code == 354).count(), 2);
        assert_eq!(spool.list(crate::spool::State::Incoming).unwrap(), Vec::<String>::new());
        assert_eq!(std::fs::read_dir(spool.root().join("data")).unwrap().count(), 0);
    }

    /// A message in BDAT chunks lands exactly as sent, behind the same
    /// Received header and with the same envelope flags as DATA gives it:
    /// dots are text, a CRLF may be split between chunks, 8-bit octets and
    /// a last line without CRLF pass through.
    #[tokio::test]
    async fn bdat_message_lands_as_sent() {
        let config = config("");
        let message: &[u8] = b"Subject: chunks\r\n\r\n.\r\n..two dots\r\nb\xc3\xb8dy\r\nno line end";
        let (one, rest) = message.split_at(21);
        let (two, three) = rest.split_at(13);
        assert!(one.ends_with(b"\r") && two.starts_with(b"\n"), "a CRLF split between chunks");
        let input = [
            lines(&[
                "EHLO client.example",
                "MAIL FROM:<s@example.net> BODY=8BITMIME SMTPUTF8",
                "RCPT TO:<a@example.org>",
            ]),
            format!("BDAT {}\r\n", one.len()).into_bytes(),
            one.to_vec(),
            format!("BDAT {}\r\n", two.len()).into_bytes(),
            two.to_vec(),
            format!("bdat {} last\r\n", three.len()).into_bytes(),
            three.to_vec(),
            lines(&["QUIT"]),
        ]
        .concat();
        let (got, spool, _dir) = converse(&config, tcp(TRUSTED), &input).await;
        let texts: Vec<String> = got.iter().map(|r| format!("{} {}", short(r), r.lines[0])).collect();
        assert_eq!(texts[4], "250 2.0.0 21 octets received", "{texts:?}");
        assert_eq!(texts[5], "250 2.0.0 13 octets received", "{texts:?}");
        let id = got[6].lines[0].strip_prefix("Ok: queued as ").unwrap_or_else(|| panic!("{texts:?}"));
        assert_eq!(short(&got[7]), "221 2.0.0");
        let (_, env) = spool.find(id).unwrap();
        assert!(env.eight_bit && env.smtputf8);
        assert_eq!(env.recipients[0].address, "a@example.org");
        let body = spool.read_body(id).unwrap();
        assert!(body.starts_with(b"Received: from client.example ([10.0.0.5])"), "{}", String::from_utf8_lossy(&body));
        assert!(body.ends_with(message), "{}", String::from_utf8_lossy(&body));
        assert_eq!(body.windows(message.len()).filter(|w| *w == message).count(), 1);
    }

    /// `BDAT 0 LAST` alone is a message: the empty one.
    #[tokio::test]
    async fn bdat_zero_last_is_an_empty_message() {
        let config = config("");
        let input = lines(&["EHLO c", "MAIL FROM:<>", "RCPT TO:<a@example.org>", "BDAT 0 LAST", "NOOP"]);
        let (got, spool, _dir) = converse(&config, tcp(TRUSTED), &input).await;
        let id = got[4].lines[0].strip_prefix("Ok: queued as ").expect("queued");
        assert_eq!(short(&got[5]), "250 2.0.0");
        let body = spool.read_body(id).unwrap();
        assert!(body.starts_with(b"Received: ") && body.ends_with(b"\r\n"), "{}", String::from_utf8_lossy(&body));
    }

    #[tokio::test]
    async fn local_peer_relays_anywhere() {
        let config = config("");
        let input = lines(&[
            "HELO localhost",
            "MAIL FROM:<cron@vm1>",
            "RCPT TO:<ops@elsewhere.example>",
            "DATA",
            "x",
            ".",
            "QUIT",
        ]);
        let (got, spool, _dir) = converse(&config, Peer::Local { user: "cron".into() }, &input).await;
        let codes: Vec<String> = got.iter().map(short).collect();
        assert_eq!(codes, ["220", "250", "250 2.1.0", "250 2.1.5", "354", "250 2.0.0", "221 2.0.0"]);
        let id = got[5].lines[0].trim_start_matches("Ok: queued as ");
        let (_, env) = spool.find(id).unwrap();
        assert_eq!(env.origin.protocol, "local");
        assert_eq!(env.origin.user.as_deref(), Some("cron"));
    }

    #[tokio::test]
    async fn greeting_and_ehlo_text() {
        let config = config("");
        let (got, _, _dir) = converse(&config, tcp(TRUSTED), &lines(&["EHLO c", "HELO c"])).await;
        assert_eq!(got[0].to_wire(), b"220 mx.test ESMTP posthorn\r\n");
        assert_eq!(
            String::from_utf8(got[1].to_wire()).unwrap(),
            "250-mx.test\r\n250-PIPELINING\r\n250-SIZE 5000\r\n250-8BITMIME\r\n250-SMTPUTF8\r\n250-ENHANCEDSTATUSCODES\r\n250-DSN\r\n250-CHUNKING\r\n250 XPOSTHORN-TRACE\r\n"
        );
        assert_eq!(got[2].to_wire(), b"250 mx.test\r\n");
    }

    #[tokio::test]
    async fn too_many_errors_closes() {
        let config = config("max_errors = 3");
        let input = lines(&["EHLO c", "FOO", "BAR", "NOOP", "MAIL FROM:<x", "NOOP", "NOOP"]);
        let (got, _, _dir) = converse(&config, tcp(TRUSTED), &input).await;
        let codes: Vec<String> = got.iter().map(short).collect();
        assert_eq!(codes, ["220", "250", "500 5.5.2", "500 5.5.2", "250 2.0.0", "501 5.1.7", "421 4.7.0"]);
        assert_eq!(got[6].lines[0], "mx.test Error: too many errors");
    }

    /// A client that talks step by step.
    struct Client {
        r: BufReader<ReadHalf<DuplexStream>>,
        w: WriteHalf<DuplexStream>,
    }

    impl Client {
        fn new(stream: DuplexStream) -> Client {
            let (r, w) = tokio::io::split(stream);
            Client { r: BufReader::new(r), w }
        }

        async fn send(&mut self, bytes: &[u8]) {
            self.w.write_all(bytes).await.unwrap();
        }

        /// The next reply, or `None` at end of stream.
        async fn reply(&mut self) -> Option<Reply> {
            let mut raw = Vec::new();
            loop {
                let mut line = String::new();
                if self.r.read_line(&mut line).await.unwrap() == 0 {
                    assert!(raw.is_empty(), "stream ended inside a reply");
                    return None;
                }
                let line = line.trim_end_matches("\r\n").to_string();
                let last = line.as_bytes().get(3) != Some(&b'-');
                raw.push(line);
                if last {
                    return Some(Reply::from_lines(&raw).expect("a reply"));
                }
            }
        }

        async fn expect(&mut self, expected: &str) -> Reply {
            let reply = self.reply().await.unwrap_or_else(|| panic!("closed, expected {expected}"));
            assert_eq!(short(&reply), expected, "{reply}");
            reply
        }
    }

    #[tokio::test]
    async fn step_by_step_data_split_across_writes() {
        let config = config("");
        let dir = tempfile::tempdir().unwrap();
        let (ingress, spool) = queue_ingress(dir.path(), &config);
        let (client, server) = tokio::io::duplex(4096);
        let talk = async move {
            let mut c = Client::new(client);
            c.expect("220").await;
            c.send(b"EHLO c\r\n").await;
            c.expect("250").await;
            c.send(b"MAIL FROM:<a@example.net>\r\nRCPT TO:<b@example.org>\r\nDATA\r\n").await;
            c.expect("250 2.1.0").await;
            c.expect("250 2.1.5").await;
            c.expect("354").await;
            // The terminator arrives in pieces, with the next command glued on.
            for piece in [&b"line one\r\n"[..], b"line two\r", b"\n.", b"\r", b"\nNO", b"OP\r\n"] {
                c.send(piece).await;
                tokio::task::yield_now().await;
            }
            let queued = c.expect("250 2.0.0").await;
            c.expect("250 2.0.0").await;
            c.send(b"QUIT\r\n").await;
            c.expect("221 2.0.0").await;
            assert!(c.reply().await.is_none(), "closed after QUIT");
            queued.lines[0].trim_start_matches("Ok: queued as ").to_string()
        };
        let ((), id) = tokio::join!(run_session(server, tcp(TRUSTED), &config, &ingress), talk);
        assert!(spool.read_body(&id).unwrap().ends_with(b"\r\nline one\r\nline two\r\n"));
    }

    /// Counts the writes that reach the stream.
    struct CountingWrites<S> {
        inner: S,
        writes: Arc<AtomicUsize>,
    }

    impl<S: AsyncRead + Unpin> AsyncRead for CountingWrites<S> {
        fn poll_read(
            mut self: Pin<&mut Self>,
            cx: &mut Context<'_>,
            buf: &mut tokio::io::ReadBuf<'_>,
        ) -> Poll<std::io::Result<()>> {
            Pin::new(&mut self.inner).poll_read(cx, buf)
        }
    }

    impl<S: AsyncWrite + Unpin> AsyncWrite for CountingWrites<S> {
        fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<std::io::Result<usize>> {
            self.writes.fetch_add(1, Ordering::SeqCst);
            Pin::new(&mut self.inner).poll_write(cx, buf)
        }
        fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
            Pin::new(&mut self.inner).poll_flush(cx)
        }
        fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
            Pin::new(&mut self.inner).poll_shutdown(cx)
        }
    }

    #[tokio::test]
    async fn pipelined_replies_go_out_in_one_write() {
        let config = config("");
        let dir = tempfile::tempdir().unwrap();
        let (ingress, _spool) = queue_ingress(dir.path(), &config);
        let (client, server) = tokio::io::duplex(1 << 16);
        let writes = Arc::new(AtomicUsize::new(0));
        let server = CountingWrites { inner: server, writes: writes.clone() };
        let counted = writes.clone();
        let talk = async move {
            let mut c = Client::new(client);
            c.expect("220").await;
            assert_eq!(counted.load(Ordering::SeqCst), 1);
            let batch = lines(&[
                "EHLO c",
                "MAIL FROM:<a@example.net>",
                "RCPT TO:<b@example.org>",
                "RCPT TO:<c@example.org>",
                "NOOP",
            ]);
            c.send(&batch).await;
            for expected in ["250", "250 2.1.0", "250 2.1.5", "250 2.1.5", "250 2.0.0"] {
                c.expect(expected).await;
            }
            assert_eq!(counted.load(Ordering::SeqCst), 2, "five replies, one write");
        };
        tokio::join!(run_session(server, tcp(TRUSTED), &config, &ingress), talk);
    }

    #[tokio::test(start_paused = true)]
    async fn command_timeout() {
        let config = config("command_timeout = \"30s\"");
        let dir = tempfile::tempdir().unwrap();
        let (ingress, _spool) = queue_ingress(dir.path(), &config);
        let (client, server) = tokio::io::duplex(4096);
        let talk = async move {
            let mut c = Client::new(client);
            c.expect("220").await;
            let start = tokio::time::Instant::now();
            let reply = c.expect("421 4.4.2").await;
            assert_eq!(reply.lines[0], "mx.test Error: timeout exceeded");
            assert!(start.elapsed() >= Duration::from_secs(30));
            assert!(c.reply().await.is_none());
        };
        tokio::join!(run_session(server, tcp(TRUSTED), &config, &ingress), talk);
    }

    #[tokio::test(start_paused = true)]
    async fn data_timeout() {
        let config = config("command_timeout = \"1h\"\ndata_timeout = \"20s\"");
        let dir = tempfile::tempdir().unwrap();
        let (ingress, spool) = queue_ingress(dir.path(), &config);
        let (client, server) = tokio::io::duplex(4096);
        let talk = async move {
            let mut c = Client::new(client);
            c.expect("220").await;
            c.send(&lines(&["EHLO c", "MAIL FROM:<a@example.net>", "RCPT TO:<b@example.org>", "DATA"])).await;
            for expected in ["250", "250 2.1.0", "250 2.1.5", "354"] {
                c.expect(expected).await;
            }
            c.send(b"Subject: slow\r\n").await;
            let start = tokio::time::Instant::now();
            c.expect("421 4.4.2").await;
            let waited = start.elapsed();
            assert!(waited >= Duration::from_secs(20) && waited < Duration::from_secs(60), "{waited:?}");
            assert!(c.reply().await.is_none());
        };
        tokio::join!(run_session(server, tcp(TRUSTED), &config, &ingress), talk);
        assert_eq!(spool.list(crate::spool::State::Incoming).unwrap(), Vec::<String>::new());
    }

    /// Inside a chunk the data timeout applies, not the command timeout;
    /// nothing is queued from a chunk cut short.
    #[tokio::test(start_paused = true)]
    async fn bdat_chunk_timeout() {
        let config = config("command_timeout = \"1h\"\ndata_timeout = \"20s\"");
        let dir = tempfile::tempdir().unwrap();
        let (ingress, spool) = queue_ingress(dir.path(), &config);
        let (client, server) = tokio::io::duplex(4096);
        let talk = async move {
            let mut c = Client::new(client);
            c.expect("220").await;
            c.send(&lines(&["EHLO c", "MAIL FROM:<a@example.net>", "RCPT TO:<b@example.org>", "BDAT 100 LAST"])).await;
            c.send(b"Subject: slow\r\n").await;
            // The replies before the chunk are not held back by it.
            for expected in ["250", "250 2.1.0", "250 2.1.5"] {
                c.expect(expected).await;
            }
            let start = tokio::time::Instant::now();
            c.expect("421 4.4.2").await;
            let waited = start.elapsed();
            assert!(waited >= Duration::from_secs(20) && waited < Duration::from_secs(60), "{waited:?}");
            assert!(c.reply().await.is_none());
        };
        tokio::join!(run_session(server, tcp(TRUSTED), &config, &ingress), talk);
        assert_eq!(spool.list(crate::spool::State::Incoming).unwrap(), Vec::<String>::new());
    }

    /// Chunks and commands arriving a byte at a time, or all at once, get
    /// the same replies and queue the same message.
    #[tokio::test]
    async fn bdat_split_across_writes() {
        let config = config("");
        let input = [
            lines(&["EHLO c", "MAIL FROM:<a@example.net>", "RCPT TO:<b@example.org>"]),
            b"BDAT 4\r\nSubjBDAT 11\r\nect: x\r\n\r\nbBDAT 4 LAST\r\nody\n".to_vec(),
            lines(&["NOOP", "QUIT"]),
        ]
        .concat();
        let good = String::from_utf8(input.clone()).unwrap().replace("BDAT 4 LAST\r\nody\n", "BDAT 5 LAST\r\nody\r\n");
        let codes = |got: &[Reply]| got.iter().map(short).collect::<Vec<_>>();
        let (whole, _, _dir) = converse(&config, tcp(TRUSTED), &input).await;
        assert_eq!(
            codes(&whole),
            ["220", "250", "250 2.1.0", "250 2.1.5", "250 2.0.0", "250 2.0.0", "550 5.5.2", "250 2.0.0", "221 2.0.0"]
        );
        let dir = tempfile::tempdir().unwrap();
        let (ingress, spool) = queue_ingress(dir.path(), &config);
        // Room for every reply: the client reads only after sending all.
        let (client, server) = tokio::io::duplex(1 << 16);
        let talk = async move {
            let mut c = Client::new(client);
            for byte in good.as_bytes() {
                c.send(std::slice::from_ref(byte)).await;
            }
            let mut got = Vec::new();
            while let Some(reply) = c.reply().await {
                got.push(reply);
            }
            got
        };
        let ((), got) = tokio::join!(run_session(server, tcp(TRUSTED), &config, &ingress), talk);
        assert_eq!(
            codes(&got),
            ["220", "250", "250 2.1.0", "250 2.1.5", "250 2.0.0", "250 2.0.0", "250 2.0.0", "250 2.0.0", "221 2.0.0"]
        );
        let id = got[6].lines[0].trim_start_matches("Ok: queued as ");
        assert!(spool.read_body(id).unwrap().ends_with(b"\r\nSubject: x\r\n\r\nbody\r\n"));
    }

    /// Shutdown between two chunks: the message is finished, then 421.
    #[tokio::test]
    async fn shutdown_between_chunks_lets_the_message_finish() {
        let config = config("");
        let dir = tempfile::tempdir().unwrap();
        let (ingress, spool) = queue_ingress(dir.path(), &config);
        let (client, server) = tokio::io::duplex(4096);
        let (stop, stopped) = watch::channel(false);
        let talk = async move {
            let mut c = Client::new(client);
            c.expect("220").await;
            c.send(&lines(&["EHLO c", "MAIL FROM:<a@example.net>", "RCPT TO:<b@example.org>", "BDAT 12"])).await;
            c.send(b"Subject: x\r\n").await;
            for expected in ["250", "250 2.1.0", "250 2.1.5", "250 2.0.0"] {
                c.expect(expected).await;
            }
            stop.send(true).unwrap();
            tokio::task::yield_now().await;
            c.send(b"BDAT 6 LAST\r\n\r\nbodyNOOP\r\n").await;
            let queued = c.expect("250 2.0.0").await;
            c.expect("421 4.3.2").await;
            assert!(c.reply().await.is_none());
            queued.lines[0].trim_start_matches("Ok: queued as ").to_string()
        };
        let ((), id) = tokio::join!(run_session_until(server, tcp(TRUSTED), &config, &ingress, stopped), talk);
        assert!(spool.read_body(&id).unwrap().ends_with(b"Subject: x\r\n\r\nbody"));
    }

    #[tokio::test(start_paused = true)]
    async fn a_client_that_never_reads_is_dropped() {
        let config = config("command_timeout = \"30s\"");
        let dir = tempfile::tempdir().unwrap();
        let (ingress, _spool) = queue_ingress(dir.path(), &config);
        // A tiny pipe: the replies to these NOOPs cannot all fit.
        let (client, server) = tokio::io::duplex(64);
        let (_r, mut w) = tokio::io::split(client);
        let session = run_session(server, tcp(TRUSTED), &config, &ingress);
        let start = tokio::time::Instant::now();
        let noops = b"NOOP\r\n".repeat(10);
        let ((), _) = tokio::join!(session, w.write_all(&noops));
        let waited = start.elapsed();
        assert!(waited >= Duration::from_secs(30) && waited < Duration::from_secs(60), "{waited:?}");
    }

    #[tokio::test]
    async fn shutdown_while_idle_says_421() {
        let config = config("");
        let dir = tempfile::tempdir().unwrap();
        let (ingress, _spool) = queue_ingress(dir.path(), &config);
        let (client, server) = tokio::io::duplex(4096);
        let (stop, stopped) = watch::channel(false);
        let talk = async move {
            let mut c = Client::new(client);
            c.expect("220").await;
            c.send(b"EHLO c\r\n").await;
            c.expect("250").await;
            stop.send(true).unwrap();
            let reply = c.expect("421 4.3.2").await;
            assert_eq!(reply.lines[0], "mx.test Service shutting down");
            assert!(c.reply().await.is_none());
        };
        tokio::join!(run_session_until(server, tcp(TRUSTED), &config, &ingress, stopped), talk);
    }

    #[tokio::test]
    async fn shutdown_during_data_lets_the_message_finish() {
        let config = config("");
        let dir = tempfile::tempdir().unwrap();
        let (ingress, spool) = queue_ingress(dir.path(), &config);
        let (client, server) = tokio::io::duplex(4096);
        let (stop, stopped) = watch::channel(false);
        let talk = async move {
            let mut c = Client::new(client);
            c.expect("220").await;
            c.send(&lines(&["EHLO c", "MAIL FROM:<a@example.net>", "RCPT TO:<b@example.org>", "DATA"])).await;
            for expected in ["250", "250 2.1.0", "250 2.1.5", "354"] {
                c.expect(expected).await;
            }
            c.send(b"Subject: x\r\n").await;
            stop.send(true).unwrap();
            tokio::task::yield_now().await;
            c.send(b"\r\nbody\r\n.\r\nNOOP\r\n").await;
            let queued = c.expect("250 2.0.0").await;
            c.expect("421 4.3.2").await;
            assert!(c.reply().await.is_none());
            queued.lines[0].trim_start_matches("Ok: queued as ").to_string()
        };
        let ((), id) = tokio::join!(run_session_until(server, tcp(TRUSTED), &config, &ingress, stopped), talk);
        assert!(spool.find(&id).is_some());
    }

    #[tokio::test]
    async fn submission_wants_auth_before_mail() {
        let config = config("");
        let dir = tempfile::tempdir().unwrap();
        let (ingress, _spool) = queue_ingress(dir.path(), &config);
        let (client, server) = tokio::io::duplex(1 << 16);
        let input = lines(&["EHLO c.example", "MAIL FROM:<a@c.example>", "QUIT"]);
        let security = Security::none();
        let client = async move {
            let (mut r, mut w) = tokio::io::split(client);
            w.write_all(&input).await.unwrap();
            let mut out = String::new();
            r.read_to_string(&mut out).await.unwrap();
            out
        };
        let session =
            run_listener_session(server, tcp("10.1.2.3:4"), Listener::Submission, &config, &ingress, &security, None);
        let ((), output) = tokio::join!(session, client);
        let got: Vec<String> = replies(&output).iter().map(short).collect();
        // Even from a trusted network: submission means AUTH (RFC 6409 4.3).
        assert_eq!(got, ["220", "250", "530 5.7.0", "221 2.0.0"], "{output}");
    }

    /// Every 4xx and 5xx reply to a command is counted once, the 501 that
    /// closes the session included; the greeting and positive replies are
    /// not, nor the 421 that ends a session with too many errors.
    #[tokio::test]
    async fn refusals_are_counted() {
        let rcpts: Vec<String> = (1..=4).map(|n| format!("RCPT TO:<u{n}@example.org>")).collect();
        let start = ["EHLO c", "RCPT TO:<u@example.org>", "MAIL FROM:<s@example.net>"];
        let transaction: Vec<&str> = start.into_iter().chain(rcpts.iter().map(String::as_str)).collect();
        // (max_errors, input, replies, 4xx, 5xx)
        let cases: Vec<(u32, Vec<u8>, Vec<&str>, u64, u64)> = vec![
            (
                50,
                [lines(&transaction), lines(&["XYZZY", "RSET", "BDAT x"])].concat(),
                vec![
                    "220",
                    "250",
                    "503 5.5.1",
                    "250 2.1.0",
                    "250 2.1.5",
                    "250 2.1.5",
                    "250 2.1.5",
                    "452 4.5.3",
                    "500 5.5.2",
                    "250 2.0.0",
                    "501 5.5.4",
                ],
                1,
                3,
            ),
            (
                2,
                lines(&["EHLO c", "XYZZY", "XYZZY", "NOOP"]),
                vec!["220", "250", "500 5.5.2", "500 5.5.2", "421 4.7.0"],
                0,
                2,
            ),
        ];
        for (max_errors, input, expected, temporary, permanent) in cases {
            let config = config(&format!("max_errors = {max_errors}"));
            let dir = tempfile::tempdir().unwrap();
            let (ingress, _spool) = queue_ingress(dir.path(), &config);
            let metrics = Arc::new(crate::metrics::Metrics::default());
            let security = Security::none().counting(metrics.clone());
            let (client, server) = tokio::io::duplex(1 << 20);
            let client = async move {
                let (mut r, mut w) = tokio::io::split(client);
                w.write_all(&input).await.unwrap();
                let mut out = String::new();
                r.read_to_string(&mut out).await.unwrap();
                out
            };
            let session = run_secure_session(server, tcp(TRUSTED), &config, &ingress, &security, None);
            let ((), output) = tokio::join!(session, client);
            let got: Vec<String> = replies(&output).iter().map(short).collect();
            assert_eq!(got, expected, "{output}");
            let text = crate::metrics::render(&metrics, "hub", None, 0);
            for (class, n) in [("4xx", temporary), ("5xx", permanent)] {
                let line = format!("posthorn_smtp_rejections_total{{class=\"{class}\"}} {n}");
                assert!(text.lines().any(|l| l == line), "missing {line:?} in:\n{text}");
            }
        }
    }

    #[test]
    fn client_certificate_sender_patterns() {
        let cert = |senders: Option<&[&str]>| ClientCert {
            fingerprint: "ab".into(),
            senders: senders.map(|s| s.iter().map(|p| p.to_string()).collect()),
        };
        let vm12 = cert(Some(&["*@vm12.example.org", "root@hub.example.org"]));
        let table = [
            ("cron@vm12.example.org", true),
            ("cron@VM12.Example.Org", true),
            ("root@hub.example.org", true),
            ("", true),
            ("cron@vm13.example.org", false),
            ("cron@sub.vm12.example.org", false),
            ("vm12.example.org", false),
            ("other@hub.example.org", false),
        ];
        for (sender, ok) in table {
            assert_eq!(vm12.may_send_as(sender), ok, "{sender}");
        }
        assert!(cert(None).may_send_as("anyone@anywhere.example"));
        assert!(!cert(Some(&[])).may_send_as("anyone@anywhere.example"));
        assert!(cert(Some(&["*"])).may_send_as("anyone@anywhere.example"));
    }

    #[test]
    fn disconnect_summary() {
        let mut s = Stats::default();
        assert_eq!(s.summary(), "commands=0");
        s.record(Some(Verb::Ehlo), true);
        s.record(Some(Verb::Mail), true);
        s.record(Some(Verb::Rcpt), false);
        s.record(Some(Verb::Rcpt), true);
        s.record(None, false);
        s.record(Some(Verb::Data), true);
        s.record(Some(Verb::Quit), true);
        assert_eq!(s.summary(), "ehlo=1 mail=1 rcpt=1/2 data=1 quit=1 unknown=0/1 commands=5/7");
    }

    #[test]
    fn peer_display() {
        assert_eq!(tcp("192.0.2.1:25").to_string(), "unknown[192.0.2.1]");
        assert_eq!(Peer::Tcp("[2001:db8::1]:25".parse().unwrap()).to_string(), "unknown[2001:db8::1]");
        assert_eq!(Peer::Local { user: "root".into() }.to_string(), "local[root]");
    }
}
