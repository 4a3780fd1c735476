//! One SMTP session: its state, its entry points, and the dispatch of each
//! command line to the function of its verb.
//!
//! Split in two on purpose. `Session` holds the protocol state and has one
//! small function per verb that returns a `Reply`; it never touches the
//! stream. The loop in `conn` is the only code that reads and writes: it
//! feeds client bytes to the line reader, hands complete commands to
//! `Session::command`, queues the replies, and has `data` stream a
//! message's octets into the ingress.
//!
//! The verbs live with their phase: `greeting` (banner, EHLO, HELO), `mail`
//! (MAIL, RCPT), `data` (DATA, BDAT), `auth` (AUTH), `tls` (STARTTLS and
//! client certificates). The small ones (RSET, NOOP, QUIT, VRFY, HELP,
//! EXPN) are here, with what every phase shares: the transaction reset, the
//! error count and the reject log line.
//!
//! The listener kind (`Listener`) changes two things: on a submission port
//! (587, RFC 6409) MAIL needs AUTH first (530); on a submissions port (465,
//! RFC 8314) the TLS handshake comes before the greeting.

use super::anvil::{RepeatLog, Topic};
use super::auth::{Credentials, Pending};
use super::conn::{Stats, serve};
use super::data::Chunks;
use super::defence::{Ask, Defence};
use super::screen::Screening;
use super::tls::ClientCert;
use crate::auth::{AuthLimiter, Users};
use crate::config::Config;
use crate::ingress::{Ingress, Transaction};
use crate::metrics::Metrics;
use crate::smtp::proto::command::{Command, CommandError, MailFrom, RcptTo, Verb};
use crate::smtp::proto::reply::{Enhanced, Reply};
use crate::tls::ClientTrust;
use std::fmt;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncWrite};

/// Who is on the other end.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum Peer {
    /// A TCP client.
    Tcp(SocketAddr),
    /// `sendmail -bs` over stdin/stdout, run by this local user.
    Local { user: String },
}

impl Peer {
    /// The client's IP address, for the log's `client_addr` field.
    pub(crate) fn addr(&self) -> Option<String> {
        match self {
            Peer::Tcp(addr) => Some(addr.ip().to_string()),
            Peer::Local { .. } => None,
        }
    }
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
pub(crate) struct Security {
    pub(super) tls: Option<Arc<rustls::ServerConfig>>,
    pub(super) users: Option<Arc<Users>>,
    pub(super) limiter: Arc<AuthLimiter>,
    /// Which client certificates may relay; the server asks for one only
    /// when this is set.
    pub(super) client_trust: Option<Arc<ClientTrust>>,
    /// Counts the 4xx and 5xx replies (`posthorn_smtp_rejections_total`);
    /// a counter of its own, read by nobody, unless `counting` was called.
    pub(super) metrics: Arc<Metrics>,
    /// Log lines that repeat per client, shared with the listener, which
    /// writes their summaries (`repeating`); without a listener nobody
    /// does, and the repeats are only counted.
    pub(super) repeats: Arc<RepeatLog>,
    /// The policy services (`[policy]`), when any are configured.
    pub(super) policy: Option<Arc<crate::policy::Services>>,
    /// postscreen's tests (`[screen]`), when any is on.
    pub(super) screen: Option<Arc<crate::screen::Screen>>,
    /// SPF, DKIM and DMARC (`[verify]`), when any is on.
    pub(super) verify: Option<Arc<crate::verify::Verifier>>,
}

impl Security {
    /// No TLS, no AUTH.
    pub(super) fn none() -> Security {
        Security {
            tls: None,
            users: None,
            limiter: Arc::new(AuthLimiter::new(0, Duration::ZERO)),
            client_trust: None,
            metrics: Arc::default(),
            repeats: Arc::new(RepeatLog::new(Duration::ZERO)),
            policy: None,
            screen: None,
            verify: None,
        }
    }

    /// The same, counting refusals into `metrics`.
    pub(super) fn counting(self, metrics: Arc<Metrics>) -> Security {
        Security { metrics, ..self }
    }

    /// The same, keeping repeated log lines down with `repeats`.
    pub(super) fn repeating(self, repeats: Arc<RepeatLog>) -> Security {
        Security { repeats, ..self }
    }

    /// Reads the certificate, key and users file named in `config`; errors
    /// name the file.
    pub(crate) fn load(config: &Config) -> anyhow::Result<Security> {
        let client_trust =
            ClientTrust::from_config(config.tls.client_ca.as_deref(), &config.access.trusted_fingerprints)?;
        let tls = crate::tls::server_requesting(&config.tls, client_trust.is_some())?;
        let client_trust = client_trust.map(Arc::new);
        let users = match &config.auth.users {
            Some(path) => Some(Arc::new(Users::load(path)?)),
            None => None,
        };
        let limiter = Arc::new(AuthLimiter::new(config.auth.max_failures, config.auth.failure_window));
        let repeats = Arc::new(RepeatLog::new(Duration::ZERO));
        let policy =
            (!config.policy.services.is_empty()).then(|| Arc::new(crate::policy::Services::new(&config.policy)));
        let screen = crate::screen::Screen::from_config(config)?.map(Arc::new);
        let verify = crate::verify::Verifier::from_config(config)?.map(Arc::new);
        Ok(Security { tls, users, limiter, client_trust, metrics: Arc::default(), repeats, policy, screen, verify })
    }

    /// The same files, keeping `self`'s failure counts (a reload must not
    /// hand an attacker a fresh set of tries), counters, repeated lines and
    /// pregreet results.
    pub(super) fn reloaded(&self, config: &Config) -> anyhow::Result<Security> {
        let loaded = Security::load(config)?;
        let screen = match &self.screen {
            Some(old) => old.reloaded(config)?.map(Arc::new),
            None => loaded.screen.clone(),
        };
        Ok(Security {
            limiter: self.limiter.clone(),
            metrics: self.metrics.clone(),
            repeats: self.repeats.clone(),
            screen,
            ..loaded
        })
    }
}

/// What kind of port a session came in on.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Listener {
    /// Port 25: relay rules by address, AUTH optional.
    Smtp,
    /// Port 587 (RFC 6409): STARTTLS offered, AUTH required before MAIL.
    Submission,
    /// Port 465 (RFC 8314): TLS from the first byte, AUTH required before MAIL.
    Submissions,
}

impl Listener {
    /// The name printed in `listening NAME=ADDR`.
    pub(crate) fn name(self) -> &'static str {
        match self {
            Listener::Smtp => "smtp",
            Listener::Submission => "submission",
            Listener::Submissions => "submissions",
        }
    }
}

/// Runs one session until QUIT, an error limit, a timeout or a lost
/// connection.
pub(crate) async fn run_session<S>(stream: S, peer: Peer, config: &Config, ingress: &Ingress)
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    serve(stream, peer, Listener::Smtp, config, ingress, &Security::none(), None).await
}

/// What the loop does after a command.
#[derive(Debug)]
pub(super) enum Step {
    Reply(Reply),
    /// DATA was accepted in principle: open the message, send 354.
    Data(Transaction),
    /// Send the reply, then close.
    Close(Reply),
    /// Send the reply (220), then start the TLS handshake.
    StartTls(Reply),
    /// Check these credentials, then answer.
    Verify(Credentials),
    /// Ask the policy services, then answer (`defence`).
    Ask(Ask),
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

/// The state of one session: who the client is, how far it got, and the
/// transaction it is building.
pub(super) struct Session<'a> {
    pub(super) config: &'a Config,
    /// Asked about recipients at RCPT (aliases, known local users).
    pub(super) ingress: &'a Ingress,
    pub(super) peer: Peer,
    pub(super) helo: Option<String>,
    pub(super) esmtp: bool,
    pub(super) mail: Option<MailFrom>,
    pub(super) rcpts: Vec<RcptTo>,
    /// RCPT commands tried in this transaction, accepted or not: tells
    /// "need RCPT" from "no valid recipients" at DATA.
    pub(super) rcpt_tried: usize,
    /// Error replies sent (4xx and 5xx), for `smtp.max_errors`.
    errors: u32,
    pub(super) stats: Stats,
    pub(super) last_verb: Option<Verb>,
    pub(super) security: &'a Security,
    pub(super) kind: Listener,
    /// The TLS session's description, once the connection is encrypted.
    pub(super) tls: Option<String>,
    /// The authenticated user.
    pub(super) user: Option<String>,
    /// The SASL mechanism the user authenticated with (`sasl_method=`).
    pub(super) sasl_method: Option<&'static str>,
    /// A trusted client certificate presented in the TLS handshake.
    pub(super) client_cert: Option<ClientCert>,
    /// An AUTH exchange in progress.
    pub(super) pending: Option<Pending>,
    /// The message of a BDAT transaction, between its chunks (boxed: it is
    /// big, and most sessions never have one).
    pub(super) chunks: Option<Box<Chunks>>,
    /// The milters' conversations (`milters`), when configured.
    pub(super) milters: Option<Box<crate::milter::client::Milters>>,
    /// A milter discarded the message at MAIL or RCPT.
    pub(super) milter_discard: bool,
    /// The listener's address the client connected to (`{if_addr}`).
    pub(super) local_addr: Option<SocketAddr>,
    /// What the defences (policy services) keep for the transaction.
    pub(super) defence: Defence,
    /// The DNS lists' verdict on the client (`screen`), when asked.
    pub(super) screening: Option<Screening>,
}

impl<'a> Session<'a> {
    pub(super) fn new(config: &'a Config, ingress: &'a Ingress, peer: Peer, security: &'a Security) -> Session<'a> {
        Session {
            config,
            ingress,
            security,
            kind: Listener::Smtp,
            client_cert: None,
            tls: None,
            user: None,
            sasl_method: None,
            pending: None,
            chunks: None,
            milters: None,
            milter_discard: false,
            local_addr: None,
            defence: Defence::default(),
            screening: None,
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

    pub(super) fn hostname(&self) -> &str {
        &self.config.hostname
    }

    /// Parses and runs one command line.
    pub(super) fn command(&mut self, line: &[u8]) -> Step {
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
            // Counted when answered, if a policy service is asked.
            Command::Mail(mail) => match self.mail_step(mail) {
                Step::Reply(reply) => Step::Reply(reply),
                ask => return ask,
            },
            Command::Rcpt(rcpt) => match self.rcpt_step(rcpt) {
                Step::Reply(reply) => Step::Reply(reply),
                ask => return ask,
            },
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
            Step::Data(_) | Step::Verify(_) | Step::Bdat { .. } | Step::Ask(_) => true,
        };
        if !(verb == Verb::Auth && super::auth::exchange_goes_on(&step)) {
            self.stats.record(Some(verb), ok);
        }
        step
    }

    fn rset(&mut self) -> Reply {
        self.reset();
        Reply::new(250, Enhanced(2, 0, 0), "Ok")
    }

    pub(super) fn line_too_long(&mut self) -> Reply {
        self.stats.record(None, false);
        if self.pending.take().is_some() {
            return Reply::new(501, Enhanced(5, 5, 2), "Error: authentication response too long");
        }
        Reply::new(500, Enhanced(5, 5, 2), "Error: line too long")
    }

    /// Ends the transaction; a message arriving in BDAT chunks is dropped.
    pub(super) fn reset(&mut self) {
        self.chunks = None;
        self.mail = None;
        self.rcpts.clear();
        self.rcpt_tried = 0;
        self.reset_defence();
    }

    /// Counts a reply to a command or a message: in the metrics if it is a
    /// refusal, and against the error limit; true when the limit is
    /// reached (0 means no limit). Temporary refusals count too, as in
    /// Postfix: a client that ignores 452 after 452 is no better than one
    /// that ignores 550s. The 421 a session ends with (timeout, shutdown,
    /// too many errors) answers no command and is not counted.
    pub(super) fn replied(&mut self, reply: &Reply) -> bool {
        self.security.metrics.smtp_reply(reply.code);
        if reply.code >= 400 {
            self.errors += 1;
        }
        self.config.smtp.max_errors > 0 && self.errors >= self.config.smtp.max_errors
    }

    pub(super) fn proto(&self) -> &'static str {
        match (self.esmtp, self.tls.is_some()) {
            (true, true) => "ESMTPS",
            (true, false) => "ESMTP",
            (false, _) => "SMTP",
        }
    }

    /// Whether a log line on `topic` repeats one written for this client a
    /// moment ago (`RepeatLog`); it is then counted for a summary instead.
    pub(super) fn repeats(&self, topic: Topic) -> bool {
        match &self.peer {
            Peer::Tcp(addr) => !self.security.repeats.first(addr.ip(), topic, std::time::Instant::now()),
            Peer::Local { .. } => false,
        }
    }

    /// Postfix-style reject line, so existing log tooling finds it.
    pub(super) fn log_reject(&self, verb: Verb, reply: &Reply, envelope: Option<(&str, Option<&str>)>) {
        self.log_refusal("reject", verb, reply, envelope);
    }

    /// `NOQUEUE: KIND: VERB from CLIENT: REPLY; from=<> to=<> proto= helo=<>`,
    /// KIND `reject` or (a milter's) `milter-reject`, as Postfix writes it.
    pub(super) fn log_refusal(&self, kind: &str, verb: Verb, reply: &Reply, envelope: Option<(&str, Option<&str>)>) {
        let mut line = format!("NOQUEUE: {kind}: {} from {}: {reply};", verb.name().to_ascii_uppercase(), self.peer);
        if let Some((from, to)) = envelope {
            line.push_str(&format!(" from=<{from}>"));
            if let Some(to) = to {
                line.push_str(&format!(" to=<{to}>"));
            }
        }
        line.push_str(&format!(" proto={} helo=<{}>", self.proto(), self.helo.as_deref().unwrap_or("")));
        tracing::info!(client_addr = self.peer.addr(), event = "reject", "{line}");
    }
}

fn vrfy() -> Reply {
    Reply::new(252, Enhanced(2, 5, 2), "Cannot VRFY user; try RCPT to attempt delivery")
}

fn help() -> Reply {
    Reply::new(214, Enhanced(2, 0, 0), "Commands: EHLO HELO MAIL RCPT DATA BDAT RSET NOOP QUIT VRFY HELP")
}

pub(super) fn not_implemented() -> Reply {
    Reply::new(502, Enhanced(5, 5, 1), "Error: command not implemented")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ingress::test_support::queue_ingress;
    use crate::smtp::server::test_support::{
        TRUSTED, check_dialogs, config, converse, lines, replies, short, talk, tcp,
    };

    /// Parsing, the small verbs and RSET.
    #[tokio::test]
    async fn command_dialogs() {
        let ehlo = "EHLO client.example";
        let mail = "MAIL FROM:<sender@example.net>";
        let rcpt = "RCPT TO:<user@example.org>";
        let long_command = format!("NOOP {}", "x".repeat(3000));
        check_dialogs(vec![
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
            ("commands ending in bare LF", TRUSTED, b"EHLO x\nNOOP\n".to_vec(), vec!["250", "250 2.0.0"]),
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
        ])
        .await;
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

    /// 452 after 452 ends the session like 5xx do: a client ignoring
    /// temporary refusals is no better than one ignoring permanent ones.
    #[tokio::test]
    async fn temporary_refusals_count_toward_max_errors() {
        let config = config("max_errors = 3\nmax_recipients = 1");
        let rcpts: Vec<String> = (1..=5).map(|n| format!("RCPT TO:<u{n}@example.org>")).collect();
        let mut input = vec!["EHLO c", "MAIL FROM:<s@example.net>"];
        input.extend(rcpts.iter().map(String::as_str));
        let (got, _, _dir) = converse(&config, tcp(TRUSTED), &lines(&input)).await;
        let codes: Vec<String> = got.iter().map(short).collect();
        assert_eq!(codes, ["220", "250", "250 2.1.0", "250 2.1.5", "452 4.5.3", "452 4.5.3", "452 4.5.3", "421 4.7.0"]);
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
        type Case<'a> = (u32, Vec<u8>, Vec<&'a str>, u64, u64);
        let cases: Vec<Case> = vec![
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
            let session = serve(server, tcp(TRUSTED), Listener::Smtp, &config, &ingress, &security, None);
            let ((), output) = tokio::join!(session, talk(client, &input, false));
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
    fn peer_display() {
        assert_eq!(tcp("192.0.2.1:25").to_string(), "unknown[192.0.2.1]");
        assert_eq!(Peer::Tcp("[2001:db8::1]:25".parse().unwrap()).to_string(), "unknown[2001:db8::1]");
        assert_eq!(Peer::Local { user: "root".into() }.to_string(), "local[root]");
    }
}
