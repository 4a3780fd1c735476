//! One outbound SMTP session: greeting, EHLO (HELO as a fallback), and
//! MAIL/RCPT/DATA transactions that report a result per recipient.
//!
//! Existing Rust clients abort the whole transaction when one recipient is
//! refused, do not pipeline and give no per-recipient result, so this one is
//! ours. A `Client` owns one connection; `send` runs one transaction on it.
//! Choosing hosts, pooling sessions and turning results into queue outcomes
//! belong to the transports (`deliver::relay`).
//!
//! Everything is bounded: each phase has its RFC 5321 4.5.3.2 timeout
//! (callers may shorten them), a reply may not exceed `MAX_REPLY_LINES` lines
//! or `MAX_REPLY_BYTES` bytes, and a pipelined group holds at most
//! `PIPELINE_WINDOW` commands, so neither side can fill the other's socket
//! buffers while nobody reads.
//!
//! The connection is a `Stream` enum rather than a bare `TcpStream` so that
//! STARTTLS (`starttls`) replaces the plain stream with a TLS one in place.
//! Whether to ask for TLS, and what to do when it fails, is the transport's
//! policy (`deliver::relay`); this module only carries it out. `auth` logs
//! in with PLAIN or LOGIN (RFC 4954).
//!
//! The same session speaks LMTP (RFC 2033) when opened with
//! [`Client::connect_lmtp`], over TCP or a Unix socket: LHLO instead of
//! EHLO (no HELO fallback), and after the final dot one reply per accepted
//! recipient, in RCPT order, instead of one for the whole message.

use crate::message::outcome::{self, ErrorClass};
use crate::message::{Body, OutMessage, OutRecipient};
use crate::smtp::proto::reply::{Enhanced, Reply};
use std::fmt;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::net::{TcpStream, UnixStream};

/// Most lines accepted in one reply; an EHLO list is about fifteen.
const MAX_REPLY_LINES: usize = 100;
/// Most bytes accepted in one reply, line ends included.
const MAX_REPLY_BYTES: usize = 64 * 1024;
/// Commands written before their replies are read when pipelining. A hundred
/// commands and their replies are a few kilobytes each way, well inside any
/// socket buffer, so a server that answers before reading on cannot
/// deadlock against us.
const PIPELINE_WINDOW: usize = 100;
/// Size of the writes that carry the message body: large for throughput,
/// bounded so a 50 MB message is never copied whole.
const BODY_CHUNK: usize = 64 * 1024;
/// AUTH mechanisms remembered from EHLO; more is a hostile server.
const MAX_AUTH_MECHANISMS: usize = 16;

/// A step of the session, for timeouts and error messages.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub(crate) enum Phase {
    Connect,
    Greeting,
    Ehlo,
    Helo,
    /// LMTP's hello (RFC 2033 4.1).
    Lhlo,
    Mail,
    Rcpt,
    /// The DATA command itself, up to its 354.
    DataInit,
    /// Writing the message body.
    DataBlock,
    /// Waiting for the reply to the final dot.
    DataEnd,
    Rset,
    Quit,
    StartTls,
    Auth,
}

impl fmt::Display for Phase {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Phase::Connect => "connect",
            Phase::Greeting => "greeting",
            Phase::Ehlo => "EHLO",
            Phase::Helo => "HELO",
            Phase::Lhlo => "LHLO",
            Phase::Mail => "MAIL FROM",
            Phase::Rcpt => "RCPT TO",
            Phase::DataInit => "DATA",
            Phase::DataBlock => "message body",
            Phase::DataEnd => "end of DATA",
            Phase::Rset => "RSET",
            Phase::Quit => "QUIT",
            Phase::StartTls => "STARTTLS",
            Phase::Auth => "AUTH",
        })
    }
}

/// Time allowed for each phase. The defaults are RFC 5321 4.5.3.2's minimums
/// (which a client should not undercut towards arbitrary servers); RSET and
/// QUIT have none in the RFC and get Postfix's 20 s.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Timeouts {
    pub(crate) connect: Duration,
    pub(crate) greeting: Duration,
    pub(crate) helo: Duration,
    pub(crate) mail: Duration,
    pub(crate) rcpt: Duration,
    pub(crate) data_init: Duration,
    /// Each write of the body.
    pub(crate) data_block: Duration,
    pub(crate) data_end: Duration,
    pub(crate) rset: Duration,
    pub(crate) quit: Duration,
}

impl Default for Timeouts {
    fn default() -> Timeouts {
        let min = |m: u64| Duration::from_secs(60 * m);
        Timeouts {
            connect: Duration::from_secs(30),
            greeting: min(5),
            helo: min(5),
            mail: min(5),
            rcpt: min(5),
            data_init: min(2),
            data_block: min(3),
            data_end: min(10),
            rset: Duration::from_secs(20),
            quit: Duration::from_secs(20),
        }
    }
}

impl Timeouts {
    /// Every phase limited to at most `max` (tests, impatient callers).
    #[cfg(test)]
    pub(crate) fn capped(self, max: Duration) -> Timeouts {
        let c = |d: Duration| d.min(max);
        Timeouts {
            connect: c(self.connect),
            greeting: c(self.greeting),
            helo: c(self.helo),
            mail: c(self.mail),
            rcpt: c(self.rcpt),
            data_init: c(self.data_init),
            data_block: c(self.data_block),
            data_end: c(self.data_end),
            rset: c(self.rset),
            quit: c(self.quit),
        }
    }

    fn for_phase(&self, phase: Phase) -> Duration {
        match phase {
            Phase::Connect => self.connect,
            Phase::Greeting => self.greeting,
            Phase::Ehlo | Phase::Helo | Phase::Lhlo | Phase::StartTls | Phase::Auth => self.helo,
            Phase::Mail => self.mail,
            Phase::Rcpt => self.rcpt,
            Phase::DataInit => self.data_init,
            Phase::DataBlock => self.data_block,
            Phase::DataEnd => self.data_end,
            Phase::Rset => self.rset,
            Phase::Quit => self.quit,
        }
    }
}

/// What the server offered in its EHLO reply.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub(crate) struct Capabilities {
    pub(crate) pipelining: bool,
    /// SIZE was offered; the number is the server's limit, 0 when none given.
    pub(crate) size: Option<u64>,
    pub(crate) eight_bit_mime: bool,
    pub(crate) smtputf8: bool,
    pub(crate) dsn: bool,
    pub(crate) enhanced_status_codes: bool,
    pub(crate) starttls: bool,
    pub(crate) chunking: bool,
    /// The server is posthorn and takes our trace id (`TRACE=`).
    pub(crate) trace: bool,
    /// AUTH mechanisms, upper case, in the server's order.
    pub(crate) auth: Vec<String>,
}

impl Capabilities {
    /// Reads the keyword lines of an EHLO reply (every line after the first).
    pub(crate) fn parse<S: AsRef<str>>(lines: &[S]) -> Capabilities {
        let mut caps = Capabilities::default();
        for line in lines {
            let mut words = line.as_ref().split_ascii_whitespace();
            let Some(first) = words.next() else { continue };
            let first = first.to_ascii_uppercase();
            // Some old servers still announce `AUTH=LOGIN PLAIN`.
            let (keyword, inline) = match first.split_once('=') {
                Some((k, v)) => (k, Some(v)),
                None => (first.as_str(), None),
            };
            match keyword {
                "PIPELINING" => caps.pipelining = true,
                "SIZE" => caps.size = Some(words.next().and_then(|n| n.parse().ok()).unwrap_or(0)),
                "8BITMIME" => caps.eight_bit_mime = true,
                "SMTPUTF8" => caps.smtputf8 = true,
                "DSN" => caps.dsn = true,
                "ENHANCEDSTATUSCODES" => caps.enhanced_status_codes = true,
                "STARTTLS" => caps.starttls = true,
                "CHUNKING" => caps.chunking = true,
                "XPOSTHORN-TRACE" => caps.trace = true,
                "AUTH" => {
                    for mech in inline.into_iter().chain(words) {
                        let mech = mech.to_ascii_uppercase();
                        if !mech.is_empty() && !caps.auth.contains(&mech) && caps.auth.len() < MAX_AUTH_MECHANISMS {
                            caps.auth.push(mech);
                        }
                    }
                }
                _ => {}
            }
        }
        caps
    }
}

/// Why a session could not go on. Each maps to an `ErrorClass`; none of the
/// texts include anything the server sent except a reply, so all are safe to
/// log and to put in a bounce.
#[derive(Debug, thiserror::Error)]
pub(crate) enum ClientError {
    #[error("connect failed: {}", crate::message::outcome::strerror(.0))]
    Connect(#[source] io::Error),
    #[error("timed out during {0}")]
    Timeout(Phase),
    #[error("protocol error during {phase}: {what}")]
    Protocol { phase: Phase, what: String },
    /// The server refused the session (greeting, EHLO/HELO).
    #[error("{reply} (in reply to {phase})")]
    Reply { phase: Phase, reply: Reply },
    #[error("lost connection during {phase}: {}", crate::message::outcome::strerror(.source))]
    Io {
        phase: Phase,
        #[source]
        source: io::Error,
    },
    /// TLS could not be had: not offered, refused, or a failed handshake.
    #[error("TLS failed: {0}")]
    Tls(String),
}

impl ClientError {
    pub(crate) fn class(&self) -> ErrorClass {
        match self {
            ClientError::Connect(_) | ClientError::Io { .. } => ErrorClass::Connect,
            ClientError::Timeout(_) => ErrorClass::Timeout,
            ClientError::Protocol { .. } => ErrorClass::Protocol,
            ClientError::Tls(_) => ErrorClass::Tls,
            ClientError::Reply { reply, .. } if reply.is_permanent() => ErrorClass::Reply5xx,
            ClientError::Reply { .. } => ErrorClass::Reply4xx,
        }
    }

    /// The phase the session was in when it failed.
    pub(crate) fn phase(&self) -> Phase {
        match self {
            ClientError::Connect(_) => Phase::Connect,
            ClientError::Tls(_) => Phase::StartTls,
            ClientError::Timeout(p) => *p,
            ClientError::Protocol { phase, .. } | ClientError::Reply { phase, .. } | ClientError::Io { phase, .. } => {
                *phase
            }
        }
    }

    pub(crate) fn reply(&self) -> Option<&Reply> {
        match self {
            ClientError::Reply { reply, .. } => Some(reply),
            _ => None,
        }
    }
}

/// What became of one recipient in a transaction.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum RcptResult {
    /// The server took the message for this recipient (2xx to the final dot).
    Accepted(Reply),
    /// The server said no. `stage` is the command whose reply decided: a
    /// refused MAIL, DATA or final dot applies to every recipient it reaches.
    /// 5xx is permanent; anything else is transient.
    Refused { stage: Phase, reply: Reply },
    /// Decided here without sending, always permanent, in the form of the
    /// reply a server would give: the message needs an extension the server
    /// lacks (SMTPUTF8, 8BITMIME for a message that cannot be converted),
    /// or an address cannot be written on the wire.
    NotSent(Reply),
}

impl RcptResult {
    #[cfg(test)]
    pub(crate) fn is_accepted(&self) -> bool {
        matches!(self, RcptResult::Accepted(_))
    }

    #[cfg(test)]
    pub(crate) fn is_permanent(&self) -> bool {
        match self {
            RcptResult::Accepted(_) => false,
            RcptResult::Refused { reply, .. } => reply.is_permanent(),
            RcptResult::NotSent(_) => true,
        }
    }

    #[cfg(test)]
    pub(crate) fn reply(&self) -> Option<&Reply> {
        match self {
            RcptResult::Accepted(r) | RcptResult::Refused { reply: r, .. } => Some(r),
            RcptResult::NotSent(_) => None,
        }
    }
}

/// `host[ip]:port`, the way logs and attempt records name a server.
pub(crate) fn relay_label(host: &str, addr: SocketAddr) -> String {
    format!("{host}[{}]:{}", addr.ip(), addr.port())
}

/// The byte stream under a session; STARTTLS swaps `Plain` for `Tls` in
/// place, callers never see the difference. `Gone` is the moment in
/// between (and what a failed handshake leaves).
#[derive(Debug)]
enum Stream {
    Plain(TcpStream),
    Tls(Box<tokio_rustls::client::TlsStream<TcpStream>>),
    /// LMTP over a Unix socket (`lmtp:unix:/path`); never TLS.
    Unix(UnixStream),
    Gone,
}

fn gone() -> io::Error {
    io::Error::new(io::ErrorKind::NotConnected, "connection closed after a failed TLS handshake")
}

impl AsyncRead for Stream {
    fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_read(cx, buf),
            Stream::Tls(s) => Pin::new(s).poll_read(cx, buf),
            Stream::Unix(s) => Pin::new(s).poll_read(cx, buf),
            Stream::Gone => Poll::Ready(Err(gone())),
        }
    }
}

impl AsyncWrite for Stream {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_write(cx, buf),
            Stream::Tls(s) => Pin::new(s).poll_write(cx, buf),
            Stream::Unix(s) => Pin::new(s).poll_write(cx, buf),
            Stream::Gone => Poll::Ready(Err(gone())),
        }
    }
    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_flush(cx),
            Stream::Tls(s) => Pin::new(s).poll_flush(cx),
            Stream::Unix(s) => Pin::new(s).poll_flush(cx),
            Stream::Gone => Poll::Ready(Ok(())),
        }
    }
    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_shutdown(cx),
            Stream::Tls(s) => Pin::new(s).poll_shutdown(cx),
            Stream::Unix(s) => Pin::new(s).poll_shutdown(cx),
            Stream::Gone => Poll::Ready(Ok(())),
        }
    }
}

/// One command of a transaction, before it is written.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Cmd {
    Mail,
    /// Index into the recipients handed to `send`.
    Rcpt(usize),
    Data,
}

impl Cmd {
    fn phase(self) -> Phase {
        match self {
            Cmd::Mail => Phase::Mail,
            Cmd::Rcpt(_) => Phase::Rcpt,
            Cmd::Data => Phase::DataInit,
        }
    }
}

/// The replies gathered during the command part of one transaction.
#[derive(Default)]
struct Replies {
    mail: Option<Reply>,
    /// Recipients whose RCPT was accepted, in order.
    accepted: Vec<usize>,
    data: Option<Reply>,
    /// A 421 and the phase it arrived in: the server is closing the session.
    closing: Option<(Phase, Reply)>,
}

impl Replies {
    fn mail_ok(&self) -> bool {
        self.mail.as_ref().is_some_and(|r| r.code / 100 == 2)
    }
    fn mail_refused(&self) -> bool {
        self.mail.is_some() && !self.mail_ok()
    }
}

/// One open SMTP session.
pub(crate) struct Client {
    stream: Stream,
    /// Bytes received and not yet consumed as reply lines.
    rbuf: Vec<u8>,
    label: String,
    greeting: Reply,
    caps: Capabilities,
    timeouts: Timeouts,
    /// Cleared by any error, timeout or 421: the session's state is unknown
    /// or over, so it must not carry another transaction.
    usable: bool,
    /// The TLS session's description once STARTTLS succeeded.
    tls: Option<String>,
    /// Our EHLO name, said again after STARTTLS.
    helo: String,
    /// LMTP (RFC 2033): LHLO, and a reply per recipient after the dot.
    lmtp: bool,
}

impl fmt::Debug for Client {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Client").field("relay", &self.label).field("usable", &self.usable).finish_non_exhaustive()
    }
}

/// Where an LMTP server listens: a Unix socket, or a TCP address (with
/// the host name it was found under, for logs).
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum LmtpEndpoint {
    Unix(std::path::PathBuf),
    Tcp { host: String, addr: SocketAddr },
}

/// The verdict of a reply to the final dot for one recipient.
fn data_end_result(reply: &Reply) -> RcptResult {
    if reply.code / 100 == 2 {
        RcptResult::Accepted(reply.clone())
    } else {
        RcptResult::Refused { stage: Phase::DataEnd, reply: reply.clone() }
    }
}

/// Our HELO name must be one word of printable characters.
fn check_helo(helo: &str) -> Result<(), ClientError> {
    if helo.is_empty() || helo.bytes().any(|b| b <= b' ' || b == 0x7f) {
        return Err(ClientError::Protocol { phase: Phase::Ehlo, what: "our HELO name is empty or has spaces".into() });
    }
    Ok(())
}

/// A connection attempt bounded by the connect timeout.
async fn connect_within<S>(
    limit: Duration,
    connect: impl std::future::Future<Output = io::Result<S>>,
) -> Result<S, ClientError> {
    match tokio::time::timeout(limit, connect).await {
        Err(_) => Err(ClientError::Timeout(Phase::Connect)),
        Ok(Err(e)) => Err(ClientError::Connect(e)),
        Ok(Ok(s)) => Ok(s),
    }
}

/// A TCP connection to `addr`, from `bind` when given.
async fn tcp_connect(addr: SocketAddr, bind: Option<std::net::IpAddr>) -> std::io::Result<TcpStream> {
    let Some(ip) = bind else { return TcpStream::connect(addr).await };
    let socket = if addr.is_ipv4() { tokio::net::TcpSocket::new_v4()? } else { tokio::net::TcpSocket::new_v6()? };
    socket.bind(SocketAddr::new(ip, 0))?;
    socket.connect(addr).await
}

impl Client {
    /// A client on a connection just made, before the greeting is read.
    fn fresh(stream: Stream, label: String, helo: &str, timeouts: Timeouts, lmtp: bool) -> Client {
        Client {
            stream,
            rbuf: Vec::with_capacity(1024),
            label,
            greeting: Reply::plain(220, ""),
            caps: Capabilities::default(),
            timeouts,
            usable: true,
            tls: None,
            helo: helo.to_string(),
            lmtp,
        }
    }

    /// Connects, reads the greeting and says EHLO (HELO if EHLO is refused
    /// with 5xx). `host_label` is the name the address was found under, for
    /// logs; `helo` is our own host name.
    // Every transport connects from a source address now; kept for the
    // tests and callers that have none.
    #[allow(dead_code)]
    pub(crate) async fn connect(
        addr: SocketAddr,
        host_label: &str,
        helo: &str,
        timeouts: Timeouts,
    ) -> Result<Client, ClientError> {
        Client::connect_from(addr, None, host_label, helo, timeouts).await
    }

    /// [`Client::connect`] from the local address `bind` (the family of
    /// `addr`; `deliver.source_addresses`) when one is given.
    pub(crate) async fn connect_from(
        addr: SocketAddr,
        bind: Option<std::net::IpAddr>,
        host_label: &str,
        helo: &str,
        timeouts: Timeouts,
    ) -> Result<Client, ClientError> {
        check_helo(helo)?;
        let tcp = Client::tcp(addr, bind, timeouts.connect).await?;
        Client::over(tcp, addr, host_label, helo, timeouts).await
    }

    /// A TCP connection to `addr` (from `bind` when given), bounded by
    /// `limit`: the first step of [`Client::connect_from`], for callers
    /// that race several addresses (`deliver::eyeballs`).
    pub(crate) async fn tcp(
        addr: SocketAddr,
        bind: Option<std::net::IpAddr>,
        limit: Duration,
    ) -> Result<TcpStream, ClientError> {
        connect_within(limit, tcp_connect(addr, bind)).await
    }

    /// The session over `tcp`, already connected to `addr`: greeting and
    /// EHLO, as [`Client::connect_from`] after its connect.
    pub(crate) async fn over(
        tcp: TcpStream,
        addr: SocketAddr,
        host_label: &str,
        helo: &str,
        timeouts: Timeouts,
    ) -> Result<Client, ClientError> {
        check_helo(helo)?;
        // Commands go out whole (a pipelined group is one write), so Nagle
        // would only add a round trip of delay in lock-step mode.
        let _ = tcp.set_nodelay(true);
        Client::fresh(Stream::Plain(tcp), relay_label(host_label, addr), helo, timeouts, false).open(helo).await
    }

    /// An LMTP session (RFC 2033) with the server at `endpoint`, greeted
    /// with LHLO. No TLS and no AUTH: LMTP servers listen on loopback or a
    /// Unix socket, as Postfix's lmtp(8) assumes by default.
    pub(crate) async fn connect_lmtp(
        endpoint: &LmtpEndpoint,
        helo: &str,
        timeouts: Timeouts,
    ) -> Result<Client, ClientError> {
        check_helo(helo)?;
        let (stream, label) = match endpoint {
            LmtpEndpoint::Unix(path) => {
                let unix = connect_within(timeouts.connect, UnixStream::connect(path)).await?;
                (Stream::Unix(unix), format!("unix:{}", path.display()))
            }
            LmtpEndpoint::Tcp { host, addr } => {
                let tcp = connect_within(timeouts.connect, TcpStream::connect(*addr)).await?;
                let _ = tcp.set_nodelay(true);
                (Stream::Plain(tcp), relay_label(host, *addr))
            }
        };
        let client = Client::fresh(stream, label, helo, timeouts, true);
        client.open(helo).await
    }

    /// Reads the greeting and says hello; QUIT after a refusal.
    async fn open(mut self, helo: &str) -> Result<Client, ClientError> {
        let greeting = self.read_reply(Phase::Greeting).await?;
        if greeting.code / 100 != 2 {
            // RFC 5321 3.1: after a refusing greeting the client still
            // says QUIT (unless it was a 421, which closes by itself).
            self.quit().await;
            return Err(ClientError::Reply { phase: Phase::Greeting, reply: greeting });
        }
        self.greeting = greeting;
        match self.hello(helo).await {
            Ok(()) => Ok(self),
            Err(e @ ClientError::Reply { .. }) => {
                self.quit().await;
                Err(e)
            }
            Err(e) => Err(e),
        }
    }

    /// EHLO, or HELO when the server does not know EHLO (RFC 5321 3.2).
    async fn hello(&mut self, helo: &str) -> Result<(), ClientError> {
        if self.lmtp {
            // RFC 2033 4.1: LHLO only; there is no HELO to fall back to.
            let reply = self.command(Phase::Lhlo, format!("LHLO {helo}\r\n").as_bytes()).await?;
            if reply.code / 100 != 2 {
                return Err(ClientError::Reply { phase: Phase::Lhlo, reply });
            }
            self.caps = Capabilities::parse(&reply.lines[1..]);
            return Ok(());
        }
        let reply = self.command(Phase::Ehlo, format!("EHLO {helo}\r\n").as_bytes()).await?;
        if reply.code / 100 == 2 {
            self.caps = Capabilities::parse(&reply.lines[1..]);
            return Ok(());
        }
        if !reply.is_permanent() {
            return Err(ClientError::Reply { phase: Phase::Ehlo, reply });
        }
        let reply = self.command(Phase::Helo, format!("HELO {helo}\r\n").as_bytes()).await?;
        if reply.code / 100 != 2 {
            return Err(ClientError::Reply { phase: Phase::Helo, reply });
        }
        Ok(())
    }

    /// STARTTLS and the handshake, verifying as `config` says against
    /// `name`, then EHLO again (RFC 3207 4.2). A refusal of STARTTLS itself
    /// leaves the session usable in clear (`Reply` error, the caller's
    /// policy decides); a failed handshake leaves nothing usable.
    pub(crate) async fn starttls(
        &mut self,
        config: Arc<rustls::ClientConfig>,
        name: rustls::pki_types::ServerName<'static>,
    ) -> Result<(), ClientError> {
        if self.tls.is_some() {
            return Ok(());
        }
        let reply = self.command(Phase::StartTls, b"STARTTLS\r\n").await?;
        if reply.code != 220 {
            return Err(ClientError::Reply { phase: Phase::StartTls, reply });
        }
        if !self.rbuf.is_empty() {
            // Bytes after the 220 arrived in clear: a server (or a man in
            // the middle) injecting replies. Nothing here can be trusted.
            self.usable = false;
            return Err(ClientError::Tls("data received in clear after the STARTTLS reply".into()));
        }
        let Stream::Plain(tcp) = std::mem::replace(&mut self.stream, Stream::Gone) else {
            self.usable = false;
            return Err(ClientError::Tls("the connection is not a plain TCP stream".into()));
        };
        let handshake = tokio_rustls::TlsConnector::from(config).connect(name, tcp);
        let tls = match tokio::time::timeout(self.timeouts.helo, handshake).await {
            Ok(Ok(tls)) => tls,
            Ok(Err(e)) => {
                self.usable = false;
                return Err(ClientError::Tls(format!("handshake failed: {e}")));
            }
            Err(_) => {
                self.usable = false;
                return Err(ClientError::Tls("handshake timed out".into()));
            }
        };
        self.tls = Some(crate::tls::describe(tls.get_ref().1));
        self.stream = Stream::Tls(Box::new(tls));
        self.caps = Capabilities::default();
        let helo = self.helo.clone();
        self.hello(&helo).await
    }

    /// The TLS session (`TLSv1.3 with cipher ...`), when encrypted.
    pub(crate) fn tls(&self) -> Option<&str> {
        self.tls.as_deref()
    }

    /// Logs in with PLAIN when offered, else LOGIN. A server that offers
    /// neither gets an `Auth` protocol error.
    pub(crate) async fn auth(&mut self, user: &str, password: &str) -> Result<(), ClientError> {
        use data_encoding::BASE64;
        let refused = |reply| ClientError::Reply { phase: Phase::Auth, reply };
        let offered = |m: &str| self.caps.auth.iter().any(|a| a == m);
        let reply = if offered("PLAIN") {
            let message = BASE64.encode(format!("\0{user}\0{password}").as_bytes());
            self.command(Phase::Auth, format!("AUTH PLAIN {message}\r\n").as_bytes()).await?
        } else if offered("LOGIN") {
            let reply = self.command(Phase::Auth, b"AUTH LOGIN\r\n").await?;
            if reply.code != 334 {
                return Err(refused(reply));
            }
            let reply = self.command(Phase::Auth, format!("{}\r\n", BASE64.encode(user.as_bytes())).as_bytes()).await?;
            if reply.code != 334 {
                return Err(refused(reply));
            }
            self.command(Phase::Auth, format!("{}\r\n", BASE64.encode(password.as_bytes())).as_bytes()).await?
        } else {
            return Err(ClientError::Protocol {
                phase: Phase::Auth,
                what: "server offers neither AUTH PLAIN nor LOGIN".into(),
            });
        };
        if reply.code != 235 {
            // The exchange may be half-way; the session is no longer known.
            self.usable = reply.code / 100 == 5 || reply.code / 100 == 4;
            return Err(refused(reply));
        }
        Ok(())
    }

    /// `host[ip]:port` of the server.
    pub(crate) fn relay_label(&self) -> &str {
        &self.label
    }

    #[cfg(test)]
    pub(crate) fn greeting(&self) -> &Reply {
        &self.greeting
    }

    pub(crate) fn capabilities(&self) -> &Capabilities {
        &self.caps
    }

    /// Whether the session may carry another transaction: the last one ended
    /// cleanly (final reply read, or RSET accepted) and nothing failed.
    pub(crate) fn is_usable(&self) -> bool {
        self.usable
    }

    /// For a session that has sat idle: true when it is still open and the
    /// server has sent nothing unasked (an idle-timeout 421, or EOF). Does
    /// not wait.
    pub(crate) fn still_open(&mut self) -> bool {
        if !self.usable || !self.rbuf.is_empty() {
            self.usable = false;
            return false;
        }
        let mut probe = [0u8; 512];
        let mut would_block =
            |tcp: &TcpStream| matches!(tcp.try_read(&mut probe), Err(e) if e.kind() == io::ErrorKind::WouldBlock);
        // Under TLS a probe that finds data consumes raw TLS bytes; that is
        // harmless here, because finding data means the session is dropped.
        let open = match &self.stream {
            Stream::Plain(tcp) => would_block(tcp),
            Stream::Tls(tls) => would_block(tls.get_ref().0),
            Stream::Unix(unix) => {
                matches!(unix.try_read(&mut probe), Err(e) if e.kind() == io::ErrorKind::WouldBlock)
            }
            Stream::Gone => false,
        };
        self.usable = open;
        open
    }

    /// Runs one transaction for `rcpts` and returns one result per
    /// recipient, in order. An `Err` means the session broke before every
    /// recipient was decided; the caller treats them all as transient (one
    /// that was refused will be refused again at the next try).
    pub(crate) async fn send(
        &mut self,
        msg: &OutMessage,
        rcpts: &[OutRecipient],
    ) -> Result<Vec<RcptResult>, ClientError> {
        if !self.usable {
            return Err(ClientError::Protocol { phase: Phase::Mail, what: "the session is no longer usable".into() });
        }
        if let Some(refusal) = self.refuse_message(msg, rcpts) {
            return Ok(vec![RcptResult::NotSent(refusal); rcpts.len()]);
        }
        // RFC 6152 3: an 8-bit message is never sent as is to a server
        // without 8BITMIME; it is converted to 7 bit, or fails for good.
        // DKIM-signed mail comes here already converted when it can be
        // (`deliver::dkim::Signer::sign_message`): converting after signing
        // would break the signature.
        let converted;
        let msg = match msg.eight_bit && !self.caps.eight_bit_mime {
            false => msg,
            true => match crate::message::downconvert::to_seven_bit(&msg.body) {
                Ok(std::borrow::Cow::Borrowed(_)) => msg,
                Ok(std::borrow::Cow::Owned(body)) => {
                    tracing::info!("{}: converted to 7 bit for {} (no 8BITMIME)", msg.id, self.label);
                    converted = OutMessage { body: Body::from(body), eight_bit: false, ..msg.clone() };
                    &converted
                }
                Err(why) => {
                    let text =
                        format!("Conversion required but not supported: {why}; {} does not offer 8BITMIME", self.label);
                    return Ok(vec![RcptResult::NotSent(Reply::new(554, Enhanced(5, 6, 3), text)); rcpts.len()]);
                }
            },
        };
        // The header block without the trace header, for a hop outside
        // the fleet: written in place of the message's own, the body after
        // it is sent from where it is, never copied.
        let head = match self.caps.trace || msg.to_filter {
            true => None,
            false => strip_trace_header(&msg.body),
        };
        let mut results: Vec<Option<RcptResult>> = vec![None; rcpts.len()];
        let mut cmds = Vec::with_capacity(rcpts.len() + 2);
        cmds.push(Cmd::Mail);
        for (i, rcpt) in rcpts.iter().enumerate() {
            if wire_safe_address(&rcpt.address) {
                cmds.push(Cmd::Rcpt(i));
            } else {
                results[i] = Some(RcptResult::NotSent(Reply::new(
                    553,
                    Enhanced(5, 1, 3),
                    "recipient address contains a control character",
                )));
            }
        }
        if cmds.len() > 1 {
            cmds.push(Cmd::Data);
            let replies = self.commands(msg, rcpts, &cmds, &mut results).await?;
            self.finish(msg, head.as_ref(), replies, &mut results).await?;
        }
        // Every recipient is decided by now; should one not be, saying so
        // as a (transient) error beats inventing a verdict.
        results.into_iter().collect::<Option<Vec<_>>>().ok_or_else(|| ClientError::Protocol {
            phase: Phase::DataInit,
            what: "a recipient was left without a reply".into(),
        })
    }

    /// Writes MAIL, the RCPTs and DATA, in pipelined groups when the server
    /// offers PIPELINING (RFC 2920) and one at a time otherwise, and collects
    /// the replies. Refused RCPTs are recorded in `results` as they come.
    async fn commands(
        &mut self,
        msg: &OutMessage,
        rcpts: &[OutRecipient],
        cmds: &[Cmd],
        results: &mut [Option<RcptResult>],
    ) -> Result<Replies, ClientError> {
        let window = if self.caps.pipelining { PIPELINE_WINDOW } else { 1 };
        let mut got = Replies::default();
        let mut next = 0;
        while next < cmds.len() && !got.mail_refused() && got.closing.is_none() {
            let end = (next + window).min(cmds.len());
            let group = &cmds[next..end];
            // DATA goes out only while some recipient is, or may yet be,
            // accepted; pipelined, it travels with the last RCPTs unseen.
            if group == [Cmd::Data] && got.accepted.is_empty() {
                break;
            }
            let mut wire = Vec::with_capacity(64 * group.len());
            for cmd in group {
                self.write_command(*cmd, msg, rcpts, &mut wire);
            }
            self.write(group[0].phase(), &wire).await?;
            for cmd in group {
                let reply = self.read_reply(cmd.phase()).await?;
                if reply.code == 421 {
                    got.closing = Some((cmd.phase(), reply));
                    break;
                }
                match *cmd {
                    Cmd::Mail => got.mail = Some(reply),
                    // After a refused MAIL the server answers RCPTs with 503;
                    // the MAIL reply is what counts then.
                    Cmd::Rcpt(_) if !got.mail_ok() => {}
                    Cmd::Rcpt(i) if reply.code / 100 == 2 => got.accepted.push(i),
                    Cmd::Rcpt(i) => results[i] = Some(RcptResult::Refused { stage: Phase::Rcpt, reply }),
                    Cmd::Data => got.data = Some(reply),
                }
            }
            next = end;
        }
        Ok(got)
    }

    /// Sends the body when DATA was accepted and decides every recipient
    /// still open; otherwise resets the session for the next transaction.
    async fn finish(
        &mut self,
        msg: &OutMessage,
        head: Option<&NewHead>,
        got: Replies,
        results: &mut [Option<RcptResult>],
    ) -> Result<(), ClientError> {
        let undecided = |results: &mut [Option<RcptResult>], stage: Phase, reply: &Reply| {
            for r in results.iter_mut().filter(|r| r.is_none()) {
                *r = Some(RcptResult::Refused { stage, reply: reply.clone() });
            }
        };
        if let Some((stage, reply)) = &got.closing {
            // 421: the server is going away; no RSET, no reuse.
            self.usable = false;
            undecided(results, *stage, reply);
            return Ok(());
        }
        if let Some(mail) = got.mail.as_ref().filter(|_| got.mail_refused()) {
            undecided(results, Phase::Mail, mail);
        }
        let go_ahead = got.data.as_ref().is_some_and(|r| r.code / 100 == 3);
        if go_ahead && !got.accepted.is_empty() {
            self.write_body(&msg.body, head).await?;
            // SMTP: one reply for every accepted recipient. LMTP: one
            // each, in the order their RCPTs were accepted (RFC 2033 4.2).
            let mut end = None;
            for &i in &got.accepted {
                let reply = match (&end, self.lmtp) {
                    (Some(reply), false) => Reply::clone(reply),
                    _ => self.read_reply(Phase::DataEnd).await?,
                };
                results[i] = Some(data_end_result(&reply));
                end = Some(reply);
            }
            return Ok(());
        }
        if go_ahead {
            // A pipelined DATA was accepted although no recipient was: send
            // an empty message to get back to command mode (RFC 2920 3.1),
            // its reply means nothing.
            self.write(Phase::DataBlock, b".\r\n").await?;
            self.read_reply(Phase::DataEnd).await?;
        } else if let Some(data) = &got.data {
            undecided(results, Phase::DataInit, data);
        }
        self.reset_quietly().await;
        Ok(())
    }

    /// Local reasons not to send the message to this server at all.
    fn refuse_message(&self, msg: &OutMessage, rcpts: &[OutRecipient]) -> Option<Reply> {
        if self.needs_smtputf8(msg, rcpts) && !self.caps.smtputf8 {
            // RFC 6531 3.4: without SMTPUTF8 on the next hop the message
            // cannot be delivered as it is.
            let text = format!("SMTPUTF8 is required, but was not offered by {}", self.label);
            return Some(Reply::new(553, Enhanced(5, 6, 7), text));
        }
        if !wire_safe_address(&msg.sender) {
            return Some(Reply::new(553, Enhanced(5, 1, 7), "sender address contains a control character"));
        }
        None
    }

    /// Whether the message really needs SMTPUTF8: the flag was given *and*
    /// an address or a header line is not ASCII. A client that sets the
    /// flag on a plain ASCII message must not get it bounced by a next hop
    /// without SMTPUTF8 (Postfix decides the same way).
    fn needs_smtputf8(&self, msg: &OutMessage, rcpts: &[OutRecipient]) -> bool {
        msg.smtputf8
            && (!msg.sender.is_ascii()
                || rcpts.iter().any(|r| !r.address.is_ascii())
                || !crate::message::header::block(&msg.body).is_ascii())
    }

    /// Appends the command line for `cmd`, with the ESMTP parameters the
    /// server offers, to `out`.
    fn write_command(&self, cmd: Cmd, msg: &OutMessage, rcpts: &[OutRecipient], out: &mut Vec<u8>) {
        let mut line = String::with_capacity(80);
        match cmd {
            Cmd::Mail => {
                line.push_str(&format!("MAIL FROM:<{}>", msg.sender));
                if self.caps.size.is_some() {
                    line.push_str(&format!(" SIZE={}", msg.body.len()));
                }
                if msg.eight_bit && self.caps.eight_bit_mime {
                    line.push_str(" BODY=8BITMIME");
                }
                if msg.smtputf8 && (self.caps.smtputf8 || self.needs_smtputf8(msg, rcpts)) {
                    line.push_str(" SMTPUTF8");
                }
                if self.caps.dsn {
                    push_param(&mut line, "RET", msg.ret.as_deref());
                    push_param(&mut line, "ENVID", msg.envid.as_deref());
                }
                if self.caps.trace {
                    push_param(&mut line, "TRACE", msg.trace_id.as_deref());
                }
            }
            Cmd::Rcpt(i) => {
                let rcpt = &rcpts[i];
                line.push_str(&format!("RCPT TO:<{}>", rcpt.address));
                if self.caps.dsn {
                    push_param(&mut line, "NOTIFY", rcpt.notify.as_deref());
                    push_param(&mut line, "ORCPT", rcpt.orcpt.as_deref());
                }
            }
            Cmd::Data => line.push_str("DATA"),
        }
        line.push_str("\r\n");
        out.extend_from_slice(line.as_bytes());
    }

    /// Writes the dot-stuffed message and the final dot in `BODY_CHUNK`
    /// writes: `head.bytes` in place of the first `head.replaces` bytes of
    /// `body` when given, then the rest of `body`. The pages of a mapped
    /// body are given back as they are sent, so a large message costs a
    /// chunk of memory, not its size.
    async fn write_body(&mut self, body: &Body, head: Option<&NewHead>) -> Result<(), ClientError> {
        let (first, from): (&[u8], usize) = match head {
            Some(h) => (&h.bytes, h.replaces),
            None => (&[], 0),
        };
        let rest = &body[from..];
        let mut chunk = Vec::with_capacity(BODY_CHUNK + 1024);
        // The replaced header block ends at a line end (or is all there
        // is), so the rest starts a line, as dot-stuffing wants.
        let mut pos = 0;
        while pos < first.len() {
            stuff_part(first, &mut pos, &mut chunk, BODY_CHUNK);
            if chunk.len() >= BODY_CHUNK {
                self.write(Phase::DataBlock, &chunk).await?;
                chunk.clear();
            }
        }
        let mut pos = 0;
        loop {
            stuff_part(rest, &mut pos, &mut chunk, BODY_CHUNK);
            let done = pos >= rest.len();
            if done {
                let last = if rest.is_empty() { first } else { rest };
                end_data(last, &mut chunk);
            }
            self.write(Phase::DataBlock, &chunk).await?;
            chunk.clear();
            body.release(from + pos);
            if done {
                return Ok(());
            }
        }
    }

    /// Aborts any transaction in progress so the session can be reused.
    pub(crate) async fn rset(&mut self) -> Result<Reply, ClientError> {
        let reply = self.command(Phase::Rset, b"RSET\r\n").await?;
        if reply.code / 100 != 2 {
            self.usable = false;
        }
        Ok(reply)
    }

    /// RSET after a transaction that sent no message; the results are
    /// already known, so a failure here only makes the session unusable.
    async fn reset_quietly(&mut self) {
        if self.usable {
            let _ = self.rset().await;
        }
    }

    /// Says goodbye and closes. Errors do not matter any more.
    pub(crate) async fn quit(mut self) {
        if self.usable {
            let _ = self.command(Phase::Quit, b"QUIT\r\n").await;
        }
        let _ = tokio::time::timeout(self.timeouts.quit, self.stream.shutdown()).await;
    }

    async fn command(&mut self, phase: Phase, line: &[u8]) -> Result<Reply, ClientError> {
        self.write(phase, line).await?;
        self.read_reply(phase).await
    }

    async fn write(&mut self, phase: Phase, bytes: &[u8]) -> Result<(), ClientError> {
        let limit = self.timeouts.for_phase(phase);
        let stream = &mut self.stream;
        let result = tokio::time::timeout(limit, async {
            stream.write_all(bytes).await?;
            stream.flush().await
        })
        .await;
        match result {
            Ok(Ok(())) => Ok(()),
            Ok(Err(source)) => {
                self.usable = false;
                Err(ClientError::Io { phase, source })
            }
            Err(_) => {
                self.usable = false;
                Err(ClientError::Timeout(phase))
            }
        }
    }

    /// Reads one complete (possibly multi-line) reply within the phase's
    /// time. Any failure, or a 421, ends the session's usefulness.
    async fn read_reply(&mut self, phase: Phase) -> Result<Reply, ClientError> {
        let limit = self.timeouts.for_phase(phase);
        let result = match tokio::time::timeout(limit, self.read_reply_lines(phase)).await {
            Ok(r) => r,
            Err(_) => Err(ClientError::Timeout(phase)),
        };
        if result.as_ref().map_or(true, |r| r.code == 421) {
            self.usable = false;
        }
        result
    }

    async fn read_reply_lines(&mut self, phase: Phase) -> Result<Reply, ClientError> {
        let mut lines: Vec<String> = Vec::new();
        let mut used = 0;
        loop {
            let line = self.read_line(phase, MAX_REPLY_BYTES - used).await?;
            used += line.len() + 2;
            let last = match line.as_bytes().get(3) {
                None | Some(b' ') => true,
                Some(b'-') => false,
                Some(_) => return Err(malformed(phase, &line)),
            };
            // The one place remote text enters our records (logs, the
            // attempt history, `mailq`, bounces): escaped here, once.
            // The one place remote text enters our records (logs, the
            // attempt history, `mailq`, bounces): escaped here, once.
            lines.push(outcome::printable(&line));
            if last {
                break;
            }
            if lines.len() >= MAX_REPLY_LINES {
                return Err(ClientError::Protocol {
                    phase,
                    what: format!("reply longer than {MAX_REPLY_LINES} lines"),
                });
            }
        }
        Reply::from_lines(&lines).ok_or_else(|| malformed(phase, &lines[0]))
    }

    /// One line without its line end; `budget` bounds its length.
    async fn read_line(&mut self, phase: Phase, budget: usize) -> Result<String, ClientError> {
        let mut scanned = 0;
        loop {
            if let Some(at) = self.rbuf[scanned..].iter().position(|&b| b == b'\n') {
                let end = scanned + at;
                let mut line: Vec<u8> = self.rbuf.drain(..=end).collect();
                line.pop();
                if line.last() == Some(&b'\r') {
                    line.pop();
                }
                return Ok(String::from_utf8_lossy(&line).into_owned());
            }
            scanned = self.rbuf.len();
            if self.rbuf.len() >= budget {
                return Err(ClientError::Protocol {
                    phase,
                    what: format!("reply longer than {MAX_REPLY_BYTES} bytes"),
                });
            }
            self.rbuf.reserve(4096);
            match self.stream.read_buf(&mut self.rbuf).await {
                Ok(0) => {
                    let source = io::Error::new(io::ErrorKind::UnexpectedEof, "connection closed by the server");
                    return Err(ClientError::Io { phase, source });
                }
                Ok(_) => {}
                Err(source) => return Err(ClientError::Io { phase, source }),
            }
        }
    }
}

/// A protocol error quoting the start of the offending line, escaped, so the
/// text is safe in a log line.
fn malformed(phase: Phase, line: &str) -> ClientError {
    let quoted: String = line.chars().take(60).flat_map(char::escape_debug).collect();
    ClientError::Protocol { phase, what: format!("malformed reply \"{quoted}\"") }
}

/// Whether an address can go between angle brackets without breaking the
/// command line: control characters (CR, LF above all) would let it inject
/// commands.
fn wire_safe_address(address: &str) -> bool {
    !address.bytes().any(|b| b < 0x20 || b == 0x7f)
}

/// Appends ` NAME=value` when there is a value and it is printable ASCII
/// without spaces (xtext); anything else is dropped rather than sent broken.
fn push_param(line: &mut String, name: &str, value: Option<&str>) {
    if let Some(v) = value.filter(|v| !v.is_empty() && v.bytes().all(|b| (0x21..0x7f).contains(&b))) {
        line.push_str(&format!(" {name}={v}"));
    }
}

/// A header block sent in place of the message's own.
struct NewHead {
    bytes: Vec<u8>,
    /// How many bytes of the message it stands for.
    replaces: usize,
}

/// The header block without the trace header, for a hop outside the fleet
/// (one that does not speak `TRACE=`), with the blank line after it;
/// `None` when the message has no trace header. Every other byte stays: a
/// DKIM signature made before does not cover it.
fn strip_trace_header(message: &[u8]) -> Option<NewHead> {
    use crate::message::header;
    let split = header::split(message);
    header::has(split.head, crate::message::TRACE_HEADER).then(|| NewHead {
        bytes: [&header::remove(split.head, crate::message::TRACE_HEADER)[..], split.blank].concat(),
        replaces: split.head.len() + split.blank.len(),
    })
}

/// Appends the dot-stuffed body from `*pos` to `out` until `out` holds at
/// least `limit` bytes or the body ends. At the end it adds a missing final
/// CRLF and the terminating `.` line and returns true.
#[cfg(test)]
fn stuff_into(body: &[u8], pos: &mut usize, out: &mut Vec<u8>, limit: usize) -> bool {
    stuff_part(body, pos, out, limit);
    if *pos < body.len() {
        return false;
    }
    end_data(body, out);
    true
}

/// The end of the data: a missing final CRLF after `last` (the bytes
/// sent last), then the terminating `.` line.
fn end_data(last: &[u8], out: &mut Vec<u8>) {
    if !last.is_empty() && !last.ends_with(b"\r\n") {
        out.extend_from_slice(if last.ends_with(b"\r") { b"\n" } else { b"\r\n" });
    }
    out.extend_from_slice(b".\r\n");
}

/// Appends the dot-stuffed `body` from `*pos` to `out` until `out` holds
/// at least `limit` bytes or `body` ends; `body` starts a line.
fn stuff_part(body: &[u8], pos: &mut usize, out: &mut Vec<u8>, limit: usize) {
    while *pos < body.len() {
        if out.len() >= limit {
            return;
        }
        let start = *pos;
        // RFC 5321 4.5.2: a line starting with a period gets another one.
        // A bare LF counts as a line end too, so that no receiver can be
        // made to see an early end of data.
        if body[start] == b'.' && (start == 0 || body[start - 1] == b'\n') {
            out.push(b'.');
        }
        let line_end = body[start..].iter().position(|&b| b == b'\n').map_or(body.len(), |i| start + i + 1);
        let end = line_end.min(start + limit.saturating_sub(out.len()).max(1));
        out.extend_from_slice(&body[start..end]);
        *pos = end;
    }
}

/// A scripted SMTP server for tests: canned replies chosen by command
/// prefix, and a record of everything it received. Shared with the
/// transports' tests.
#[cfg(test)]
pub(crate) mod test_server {
    use std::net::SocketAddr;
    use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
    use std::sync::{Arc, Mutex};
    use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
    use tokio::net::TcpListener;

    /// Reply that drops the connection without answering.
    pub(crate) const CLOSE: &str = "CLOSE";
    /// Reply that never comes.
    pub(crate) const HANG: &str = "HANG";

    #[derive(Clone, Debug)]
    pub(crate) struct Script {
        /// The greeting as sent; lines joined with CRLF, the last one added.
        pub(crate) greeting: String,
        pub(crate) ehlo: String,
        /// `(command prefix, reply)`, first match wins, compared without
        /// case; `.` is the end of DATA. Unmatched commands get defaults.
        pub(crate) rules: Vec<(String, String)>,
        /// Hold the MAIL and RCPT replies until DATA arrives: a client that
        /// waits for them instead of pipelining times out.
        pub(crate) hold_until_data: bool,
        /// After this many MAIL commands on one connection, answer 421 and
        /// close (an idle or overloaded server).
        pub(crate) max_mail_per_conn: Option<usize>,
        /// Close the connection right after answering the final dot.
        pub(crate) close_after_message: bool,
    }

    impl Script {
        pub(crate) fn esmtp(extensions: &[&str]) -> Script {
            let mut ehlo = vec!["250-mx.test".to_string()];
            ehlo.extend(extensions.iter().map(|e| format!("250-{e}")));
            let last = ehlo.len() - 1;
            ehlo[last].replace_range(3..4, " ");
            Script {
                greeting: "220 mx.test ESMTP".into(),
                ehlo: ehlo.join("\r\n"),
                rules: Vec::new(),
                hold_until_data: false,
                max_mail_per_conn: None,
                close_after_message: false,
            }
        }

        pub(crate) fn rule(mut self, prefix: &str, reply: &str) -> Script {
            self.rules.push((prefix.to_ascii_uppercase(), reply.to_string()));
            self
        }
    }

    pub(crate) struct Server {
        pub(crate) addr: SocketAddr,
        log: Arc<Mutex<Vec<String>>>,
        connections: Arc<AtomicUsize>,
        sent_ahead: Arc<AtomicBool>,
        task: tokio::task::JoinHandle<()>,
    }

    impl Drop for Server {
        fn drop(&mut self) {
            self.task.abort();
        }
    }

    impl Server {
        /// Commands received, in order, and each message body (still
        /// dot-stuffed) as `BODY <text>`.
        pub(crate) fn log(&self) -> Vec<String> {
            self.log.lock().unwrap().clone()
        }
        pub(crate) fn connections(&self) -> usize {
            self.connections.load(Ordering::SeqCst)
        }
        /// A command arrived before the previous one was answered although
        /// the server did not offer PIPELINING.
        pub(crate) fn sent_ahead(&self) -> bool {
            self.sent_ahead.load(Ordering::SeqCst)
        }
    }

    pub(crate) async fn start(script: Script) -> Server {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let log = Arc::new(Mutex::new(Vec::new()));
        let connections = Arc::new(AtomicUsize::new(0));
        let sent_ahead = Arc::new(AtomicBool::new(false));
        let script = Arc::new(script);
        let (l, c, s) = (log.clone(), connections.clone(), sent_ahead.clone());
        let task = tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                c.fetch_add(1, Ordering::SeqCst);
                let (script, log, ahead) = (script.clone(), l.clone(), s.clone());
                tokio::spawn(async move {
                    let _ = session(stream, &script, &log, &ahead).await;
                });
            }
        });
        Server { addr, log, connections, sent_ahead, task }
    }

    fn wire(reply: &str) -> Vec<u8> {
        format!("{}\r\n", reply.trim_end_matches("\r\n")).into_bytes()
    }

    async fn session(
        stream: tokio::net::TcpStream,
        script: &Script,
        log: &Mutex<Vec<String>>,
        sent_ahead: &AtomicBool,
    ) -> std::io::Result<()> {
        let (rd, mut wr) = stream.into_split();
        let mut rd = BufReader::new(rd);
        wr.write_all(&wire(&script.greeting)).await?;
        if script.greeting.starts_with('4') {
            return Ok(());
        }
        // After a 554 greeting a server answers 503 to everything but QUIT.
        let refusing = script.greeting.starts_with('5');
        let pipelining = script.ehlo.contains("PIPELINING");
        let (mut mails, mut accepted, mut held) = (0, 0, Vec::new());
        loop {
            let mut line = String::new();
            if rd.read_line(&mut line).await? == 0 {
                return Ok(());
            }
            let cmd = line.trim_end_matches(['\r', '\n']).to_string();
            log.lock().unwrap().push(cmd.clone());
            if !pipelining && !rd.buffer().is_empty() {
                sent_ahead.store(true, Ordering::SeqCst);
            }
            let upper = cmd.to_ascii_uppercase();
            let verb = upper.split([' ', ':']).next().unwrap_or("").to_string();
            if verb == "MAIL" {
                mails += 1;
                if script.max_mail_per_conn.is_some_and(|max| mails > max) {
                    wr.write_all(b"421 4.4.2 mx.test closing connection\r\n").await?;
                    return Ok(());
                }
            }
            let rule = script.rules.iter().find(|(prefix, _)| upper.starts_with(prefix.as_str()));
            let reply = match (rule, verb.as_str()) {
                (_, "QUIT") if refusing => "221 2.0.0 Bye".into(),
                _ if refusing => "503 5.5.1 no service".into(),
                (Some((_, r)), _) => r.clone(),
                (None, "EHLO") => script.ehlo.clone(),
                (None, "HELO") => "250 mx.test".into(),
                (None, "MAIL") => "250 2.1.0 Ok".into(),
                (None, "RCPT") => "250 2.1.5 Ok".into(),
                (None, "DATA") if accepted > 0 => "354 End data with <CR><LF>.<CR><LF>".into(),
                (None, "DATA") => "554 5.5.1 Error: no valid recipients".into(),
                (None, "RSET") => "250 2.0.0 Ok".into(),
                (None, "QUIT") => "221 2.0.0 Bye".into(),
                (None, _) => "502 5.5.2 Error: command not recognized".into(),
            };
            match reply.as_str() {
                CLOSE => return Ok(()),
                HANG => std::future::pending::<()>().await,
                _ => {}
            }
            match verb.as_str() {
                "RCPT" if reply.starts_with('2') => accepted += 1,
                "RSET" => accepted = 0,
                _ => {}
            }
            if script.hold_until_data && (verb == "MAIL" || verb == "RCPT") {
                held.extend(wire(&reply));
                continue;
            }
            held.extend(wire(&reply));
            wr.write_all(&held).await?;
            held.clear();
            if verb == "QUIT" {
                return Ok(());
            }
            if verb == "DATA" && reply.starts_with('3') {
                accepted = 0;
                let mut body = Vec::new();
                loop {
                    let mut line = Vec::new();
                    if rd.read_until(b'\n', &mut line).await? == 0 {
                        return Ok(());
                    }
                    if line == b".\r\n" {
                        break;
                    }
                    body.extend_from_slice(&line);
                }
                log.lock().unwrap().push(format!("BODY {}", String::from_utf8_lossy(&body)));
                let end = script.rules.iter().find(|(p, _)| p == ".").map(|(_, r)| r.clone());
                let end = end.unwrap_or_else(|| "250 2.0.0 Ok: queued as TEST".into());
                match end.as_str() {
                    CLOSE => return Ok(()),
                    HANG => std::future::pending::<()>().await,
                    _ => wr.write_all(&wire(&end)).await?,
                }
                if script.close_after_message {
                    return Ok(());
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::test_server::{CLOSE, HANG, Script, Server, start};
    use super::*;

    fn message(body: &[u8]) -> OutMessage {
        OutMessage {
            id: "TESTID".into(),
            sender: "sender@sat.test".into(),
            recipients: Vec::new(),
            body: Body::from(body),
            eight_bit: false,
            smtputf8: false,
            ret: None,
            envid: None,
            trace_id: None,
            to_filter: false,
            trusted: false,
        }
    }

    fn rcpts(addresses: &[&str]) -> Vec<OutRecipient> {
        addresses
            .iter()
            .enumerate()
            .map(|(index, a)| OutRecipient {
                index,
                address: a.to_string(),
                notify: None,
                orcpt: None,
                alias_deliveries: Vec::new(),
                done: Vec::new(),
            })
            .collect()
    }

    fn quick() -> Timeouts {
        Timeouts::default().capped(Duration::from_secs(5))
    }

    async fn connect(server: &Server) -> Client {
        Client::connect(server.addr, "mx.test", "sat.test", quick()).await.unwrap()
    }

    /// The codes of the results, `A250` for accepted, `R550` for refused,
    /// `N` for not sent.
    fn codes(results: &[RcptResult]) -> Vec<String> {
        results
            .iter()
            .map(|r| match r {
                RcptResult::Accepted(r) => format!("A{}", r.code),
                RcptResult::Refused { reply, .. } => format!("R{}", reply.code),
                RcptResult::NotSent(_) => "N".into(),
            })
            .collect()
    }

    #[test]
    fn capabilities_table() {
        let caps = Capabilities::parse(&[
            "PIPELINING",
            "SIZE 10240000",
            "8BITMIME",
            "smtputf8",
            "DSN",
            "ENHANCEDSTATUSCODES",
            "STARTTLS",
            "AUTH PLAIN login",
            "AUTH=LOGIN CRAM-MD5",
            "CHUNKING",
            "XPOSTHORN-TRACE",
            "",
            "X-UNKNOWN foo",
        ]);
        assert!(caps.trace);
        assert!(caps.pipelining && caps.eight_bit_mime && caps.smtputf8 && caps.dsn);
        assert!(caps.enhanced_status_codes && caps.starttls && caps.chunking);
        assert_eq!(caps.size, Some(10_240_000));
        assert_eq!(caps.auth, ["PLAIN", "LOGIN", "CRAM-MD5"]);
        assert_eq!(Capabilities::parse(&["SIZE"]).size, Some(0));
        assert_eq!(Capabilities::parse::<&str>(&[]), Capabilities::default());
    }

    #[test]
    fn dot_stuffing_table() {
        let cases: &[(&[u8], &[u8])] = &[
            (b"", b".\r\n"),
            (b"a\r\n", b"a\r\n.\r\n"),
            (b"a", b"a\r\n.\r\n"),
            (b"a\r", b"a\r\n.\r\n"),
            (b".\r\n", b"..\r\n.\r\n"),
            (b".a\r\nb\r\n..c\r\n.", b"..a\r\nb\r\n...c\r\n..\r\n.\r\n"),
            (b"a.b\r\n x.\r\n", b"a.b\r\n x.\r\n.\r\n"),
            (b"a\n.\r\n", b"a\n..\r\n.\r\n"),
        ];
        for (body, expected) in cases {
            // Whole, and in tiny chunks so that lines are split at every place.
            for limit in [BODY_CHUNK, 1, 2, 3] {
                let (mut pos, mut out) = (0, Vec::new());
                let mut chunks = 0;
                loop {
                    let mut chunk = Vec::new();
                    let done = stuff_into(body, &mut pos, &mut chunk, limit);
                    out.extend_from_slice(&chunk);
                    chunks += 1;
                    assert!(chunks < 100, "no progress");
                    if done {
                        break;
                    }
                }
                assert_eq!(out, *expected, "{:?} limit {limit}", String::from_utf8_lossy(body));
            }
        }
    }

    #[tokio::test]
    async fn pipelined_transaction() {
        // The server answers nothing before DATA: a client waiting for the
        // MAIL reply would time out.
        let mut script = Script::esmtp(&["PIPELINING", "SIZE 1000000", "8BITMIME"]);
        script.hold_until_data = true;
        let server = start(script).await;
        let mut client = connect(&server).await;
        assert!(client.capabilities().pipelining);
        let mut msg = message(b"Subject: hi\r\n\r\nhello\r\n");
        msg.eight_bit = true;
        let results = client.send(&msg, &rcpts(&["a@hub.test", "b@hub.test"])).await.unwrap();
        assert_eq!(codes(&results), ["A250", "A250"]);
        assert!(client.is_usable());
        client.quit().await;
        let log = server.log();
        assert_eq!(log[1], format!("MAIL FROM:<sender@sat.test> SIZE={} BODY=8BITMIME", msg.body.len()));
        assert_eq!(log[2..5], ["RCPT TO:<a@hub.test>", "RCPT TO:<b@hub.test>", "DATA"]);
        assert_eq!(log[5], "BODY Subject: hi\r\n\r\nhello\r\n");
        assert_eq!(log[6], "QUIT");
    }

    /// What Python's email package decodes from `message`: each leaf
    /// part's content type and decoded payload.
    fn python_decode(message: &[u8]) -> Vec<(String, Vec<u8>)> {
        use std::io::Write;
        let script = "import email, sys\n\
            m = email.message_from_bytes(sys.stdin.buffer.read())\n\
            for p in m.walk():\n\
            \x20   if not p.is_multipart():\n\
            \x20       print(p.get_content_type(), p.get_payload(decode=True).hex())\n";
        let mut child = std::process::Command::new("python3")
            .args(["-c", script])
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .spawn()
            .expect("python3 is needed to check the conversion");
        child.stdin.take().unwrap().write_all(message).unwrap();
        let out = child.wait_with_output().unwrap();
        assert!(out.status.success());
        let hex = |h: &str| (0..h.len()).step_by(2).map(|i| u8::from_str_radix(&h[i..i + 2], 16).unwrap()).collect();
        String::from_utf8(out.stdout)
            .unwrap()
            .lines()
            .map(|l| l.split_once(' ').map(|(t, h)| (t.to_string(), hex(h))).unwrap())
            .collect()
    }

    #[tokio::test]
    async fn eight_bit_converted_for_a_server_without_8bitmime() {
        let text = format!("Grüße aus Köln.\r\n.dot line\r\n{}\r\ntrailing \r\n", "é".repeat(60));
        let binary: Vec<u8> = (0..=255u8).collect();
        let mut body = b"From: a@sat.test\r\nSubject: hi\r\nMIME-Version: 1.0\r\n\
            Content-Type: multipart/mixed; boundary=\"b1\"\r\n\r\n--b1\r\n\
            Content-Type: text/plain; charset=utf-8\r\nContent-Transfer-Encoding: 8bit\r\n\r\n"
            .to_vec();
        body.extend_from_slice(text.as_bytes());
        body.extend_from_slice(b"\r\n--b1\r\nContent-Type: application/octet-stream\r\n\r\n");
        body.extend_from_slice(&binary);
        body.extend_from_slice(b"\r\n--b1--\r\n");
        let server = start(Script::esmtp(&["PIPELINING", "SIZE 1000000"])).await;
        let mut client = connect(&server).await;
        let msg = message(&body);
        let msg = OutMessage { eight_bit: true, ..msg };
        let results = client.send(&msg, &rcpts(&["a@hub.test"])).await.unwrap();
        assert_eq!(codes(&results), ["A250"]);
        client.quit().await;
        let log = server.log();
        let sent = log.iter().find_map(|l| l.strip_prefix("BODY ")).unwrap();
        // Every octet 7-bit (the log shows any other as U+FFFD).
        assert!(sent.is_ascii(), "{sent}");
        assert!(sent.contains("Content-Transfer-Encoding: quoted-printable\r\n"));
        assert!(sent.contains("Content-Transfer-Encoding: base64\r\n"));
        let unstuffed = sent.replace("\r\n..", "\r\n.");
        assert_eq!(log[1], format!("MAIL FROM:<sender@sat.test> SIZE={}", unstuffed.len()));
        let parts = python_decode(unstuffed.as_bytes());
        assert_eq!(parts.len(), 2);
        assert_eq!(parts[0].0, "text/plain");
        assert_eq!(String::from_utf8_lossy(&parts[0].1), text);
        assert_eq!(parts[1], ("application/octet-stream".to_string(), binary));
    }

    #[tokio::test]
    async fn eight_bit_header_refused_for_a_server_without_8bitmime() {
        let server = start(Script::esmtp(&["PIPELINING"])).await;
        let mut client = connect(&server).await;
        let msg = OutMessage { eight_bit: true, ..message("Subject: Grüße\r\n\r\nü\r\n".as_bytes()) };
        let results = client.send(&msg, &rcpts(&["a@hub.test", "b@hub.test"])).await.unwrap();
        assert_eq!(codes(&results), ["N", "N"]);
        assert!(results.iter().all(RcptResult::is_permanent));
        let RcptResult::NotSent(reason) = &results[0] else { unreachable!() };
        assert!(
            reason
                .to_string()
                .starts_with("554 5.6.3 Conversion required but not supported: 8-bit octets in the Subject")
        );
        assert!(client.is_usable());
        client.quit().await;
        assert!(!server.log().iter().any(|l| l.starts_with("MAIL")));
        // With 8BITMIME the same message goes as it is.
        let server = start(Script::esmtp(&["PIPELINING", "8BITMIME"])).await;
        let mut client = connect(&server).await;
        assert_eq!(codes(&client.send(&msg, &rcpts(&["a@hub.test"])).await.unwrap()), ["A250"]);
        assert!(server.log()[1].ends_with(" BODY=8BITMIME"));
    }

    #[tokio::test]
    async fn lock_step_without_pipelining() {
        let server = start(Script::esmtp(&["8BITMIME"])).await;
        let mut client = connect(&server).await;
        let results = client.send(&message(b"x\r\n"), &rcpts(&["a@hub.test", "b@hub.test"])).await.unwrap();
        assert_eq!(codes(&results), ["A250", "A250"]);
        assert!(!server.sent_ahead(), "commands were pipelined to a server without PIPELINING");
        // 8BITMIME offered but the message is 7 bit; no SIZE offered.
        assert_eq!(server.log()[1], "MAIL FROM:<sender@sat.test>");
    }

    #[tokio::test]
    async fn one_of_three_refused() {
        for ext in [&["PIPELINING"][..], &[]] {
            let script = Script::esmtp(ext).rule("RCPT TO:<b@", "550 5.1.1 <b@hub.test>: Recipient address rejected");
            let server = start(script).await;
            let mut client = connect(&server).await;
            let results =
                client.send(&message(b"x\r\n"), &rcpts(&["a@hub.test", "b@hub.test", "c@hub.test"])).await.unwrap();
            assert_eq!(codes(&results), ["A250", "R550", "A250"], "{ext:?}");
            let RcptResult::Refused { stage, reply } = &results[1] else { unreachable!() };
            assert_eq!(*stage, Phase::Rcpt);
            assert!(results[1].is_permanent());
            assert_eq!(reply.lines[0], "<b@hub.test>: Recipient address rejected");
            assert!(server.log().iter().any(|l| l.starts_with("BODY")));
        }
    }

    #[tokio::test]
    async fn all_refused_sends_rset_and_no_body() {
        for ext in [&["PIPELINING"][..], &[]] {
            let server = start(Script::esmtp(ext).rule("RCPT", "550 5.1.1 no such user")).await;
            let mut client = connect(&server).await;
            let results = client.send(&message(b"x\r\n"), &rcpts(&["a@hub.test", "b@hub.test"])).await.unwrap();
            assert_eq!(codes(&results), ["R550", "R550"]);
            let log = server.log();
            assert!(!log.iter().any(|l| l.starts_with("BODY")), "{log:?}");
            assert_eq!(log.last().unwrap(), "RSET");
            // Pipelined, DATA went out with the RCPTs (and got 554); lock-step, never.
            assert_eq!(log.iter().any(|l| l == "DATA"), !ext.is_empty());
            assert!(client.is_usable());
        }
    }

    #[tokio::test]
    async fn pipelined_data_accepted_without_recipients() {
        // A sloppy server answers 354 although it refused every RCPT.
        let server = start(Script::esmtp(&["PIPELINING"]).rule("RCPT", "450 4.2.0 busy").rule("DATA", "354 go")).await;
        let mut client = connect(&server).await;
        let results = client.send(&message(b"x\r\n"), &rcpts(&["a@hub.test"])).await.unwrap();
        assert_eq!(codes(&results), ["R450"]);
        let log = server.log();
        assert_eq!(log[log.len() - 2], "BODY ", "an empty message closes the DATA");
        assert_eq!(log.last().unwrap(), "RSET");
    }

    #[tokio::test]
    async fn mail_refused() {
        for ext in [&["PIPELINING"][..], &[]] {
            let script = Script::esmtp(ext)
                .rule("MAIL", "553 5.7.1 <sender@sat.test>: Sender address rejected")
                .rule("RCPT", "503 5.5.1 Error: need MAIL command")
                .rule("DATA", "503 5.5.1 Error: need RCPT command");
            let server = start(script).await;
            let mut client = connect(&server).await;
            let results = client.send(&message(b"x\r\n"), &rcpts(&["a@hub.test", "b@hub.test"])).await.unwrap();
            assert_eq!(codes(&results), ["R553", "R553"]);
            assert!(results.iter().all(|r| matches!(r, RcptResult::Refused { stage: Phase::Mail, .. })));
            let log = server.log();
            assert_eq!(log.iter().filter(|l| l.starts_with("RCPT")).count(), if ext.is_empty() { 0 } else { 2 });
            assert_eq!(log.last().unwrap(), "RSET");
        }
    }

    #[tokio::test]
    async fn transient_at_end_of_data() {
        let server = start(Script::esmtp(&["PIPELINING"]).rule(".", "451 4.3.0 Error: queue file write error")).await;
        let mut client = connect(&server).await;
        let results = client.send(&message(b"x\r\n"), &rcpts(&["a@hub.test", "b@hub.test"])).await.unwrap();
        assert_eq!(codes(&results), ["R451", "R451"]);
        assert!(matches!(&results[0], RcptResult::Refused { stage: Phase::DataEnd, .. }));
        assert!(!results[0].is_permanent());
        assert!(client.is_usable(), "a refused message ends the transaction cleanly");
    }

    #[tokio::test]
    async fn data_refused() {
        let server = start(Script::esmtp(&["PIPELINING"]).rule("DATA", "452 4.3.1 Insufficient system storage")).await;
        let mut client = connect(&server).await;
        let results = client.send(&message(b"x\r\n"), &rcpts(&["a@hub.test"])).await.unwrap();
        assert!(matches!(&results[0], RcptResult::Refused { stage: Phase::DataInit, reply } if reply.code == 452));
        assert_eq!(server.log().last().unwrap(), "RSET");
    }

    #[tokio::test]
    async fn greeting_refused() {
        let mut script = Script::esmtp(&[]);
        script.greeting = "554 5.7.1 mx.test: no service for you".into();
        let server = start(script).await;
        let err = Client::connect(server.addr, "mx.test", "sat.test", quick()).await.unwrap_err();
        assert!(matches!(&err, ClientError::Reply { phase: Phase::Greeting, reply } if reply.code == 554), "{err}");
        assert_eq!(err.class(), ErrorClass::Reply5xx);
        assert_eq!(server.log(), ["QUIT"]);
    }

    #[tokio::test]
    async fn multi_line_replies() {
        let mut script = Script::esmtp(&["PIPELINING", "DSN"])
            .rule("RCPT TO:<b@", "550-5.1.1 first line\r\n550-5.1.1 second line\r\n550 5.1.1 third line");
        script.greeting = "220-mx.test ESMTP\r\n220-no UCE\r\n220 really".into();
        let server = start(script).await;
        let mut client = connect(&server).await;
        assert_eq!(client.greeting().lines, ["mx.test ESMTP", "no UCE", "really"]);
        assert!(client.capabilities().dsn);
        let results = client.send(&message(b"x\r\n"), &rcpts(&["a@hub.test", "b@hub.test"])).await.unwrap();
        let reply = results[1].reply().unwrap();
        assert_eq!(reply.lines, ["first line", "second line", "third line"]);
        assert_eq!(reply.to_string(), "550 5.1.1 first line second line third line");
        assert!(results[0].is_accepted());
    }

    #[tokio::test]
    async fn body_is_dot_stuffed() {
        let server = start(Script::esmtp(&["PIPELINING"])).await;
        let mut client = connect(&server).await;
        let body = b"Subject: dots\r\n\r\n.hidden\r\nplain\r\n..two\r\n.";
        let results = client.send(&message(body), &rcpts(&["a@hub.test"])).await.unwrap();
        assert!(results[0].is_accepted());
        let log = server.log();
        assert_eq!(
            log.iter().find(|l| l.starts_with("BODY")).unwrap(),
            "BODY Subject: dots\r\n\r\n..hidden\r\nplain\r\n...two\r\n..\r\n"
        );
    }

    #[tokio::test]
    async fn large_body_in_several_writes() {
        let server = start(Script::esmtp(&["PIPELINING"])).await;
        let mut client = connect(&server).await;
        let line = b"0123456789012345678901234567890123456789012345678901234567890123456789\r\n";
        let body: Vec<u8> = line.iter().copied().cycle().take(line.len() * 4000).collect();
        let results = client.send(&message(&body), &rcpts(&["a@hub.test"])).await.unwrap();
        assert!(results[0].is_accepted());
        let log = server.log();
        let got = log.iter().find(|l| l.starts_with("BODY")).unwrap();
        assert_eq!(got.len(), "BODY ".len() + body.len());
    }

    #[tokio::test]
    async fn dsn_and_utf8_parameters() {
        let server = start(Script::esmtp(&["PIPELINING", "DSN", "SMTPUTF8", "8BITMIME"])).await;
        let mut client = connect(&server).await;
        let mut msg = message(b"x\r\n");
        msg.smtputf8 = true;
        msg.eight_bit = true;
        msg.ret = Some("HDRS".into());
        msg.envid = Some("QQ314159".into());
        let mut list = rcpts(&["jöran@hub.test"]);
        list[0].notify = Some("SUCCESS,FAILURE".into());
        list[0].orcpt = Some("rfc822;j+C3+B6ran@hub.test".into());
        list[0].index = 7;
        let results = client.send(&msg, &list).await.unwrap();
        assert!(results[0].is_accepted());
        let log = server.log();
        assert_eq!(log[1], "MAIL FROM:<sender@sat.test> BODY=8BITMIME SMTPUTF8 RET=HDRS ENVID=QQ314159");
        assert_eq!(log[2], "RCPT TO:<jöran@hub.test> NOTIFY=SUCCESS,FAILURE ORCPT=rfc822;j+C3+B6ran@hub.test");

        // Without DSN on the server the parameters are left out.
        let server = start(Script::esmtp(&["PIPELINING"])).await;
        let mut client = connect(&server).await;
        msg.smtputf8 = false;
        client.send(&msg, &list).await.unwrap();
        assert_eq!(server.log()[1..3], ["MAIL FROM:<sender@sat.test>", "RCPT TO:<jöran@hub.test>"]);
    }

    #[tokio::test]
    async fn smtputf8_not_offered_is_permanent() {
        let server = start(Script::esmtp(&["PIPELINING", "8BITMIME"])).await;
        let mut client = connect(&server).await;
        let mut msg = message(b"x\r\n");
        msg.smtputf8 = true;
        let results = client.send(&msg, &rcpts(&["jöran@hub.test", "b@hub.test"])).await.unwrap();
        assert_eq!(codes(&results), ["N", "N"]);
        assert!(results.iter().all(RcptResult::is_permanent));
        assert!(!server.log().iter().any(|l| l.starts_with("MAIL")));
        assert!(client.is_usable());
        // The flag alone, on a message ASCII throughout, goes without it.
        let results = client.send(&msg, &rcpts(&["a@hub.test"])).await.unwrap();
        assert!(results[0].is_accepted());
        assert!(server.log().iter().any(|l| l == "MAIL FROM:<sender@sat.test>"), "{:?}", server.log());
    }

    #[tokio::test]
    async fn control_characters_never_reach_the_wire() {
        let server = start(Script::esmtp(&["PIPELINING", "DSN"])).await;
        let mut client = connect(&server).await;
        let mut list = rcpts(&["a@hub.test", "b@hub.test\r\nRSET"]);
        list[0].notify = Some("NEVER\r\nQUIT".into());
        let results = client.send(&message(b"x\r\n"), &list).await.unwrap();
        assert_eq!(codes(&results), ["A250", "N"]);
        let log = server.log();
        assert_eq!(log[2], "RCPT TO:<a@hub.test>");
        assert!(!log.iter().any(|l| l == "QUIT" || l == "RSET"), "{log:?}");
    }

    #[tokio::test]
    async fn ehlo_refused_falls_back_to_helo() {
        let server =
            start(Script::esmtp(&["PIPELINING"]).rule("EHLO", "502 5.5.2 Error: command not recognized")).await;
        let mut client = connect(&server).await;
        assert_eq!(*client.capabilities(), Capabilities::default());
        let results = client.send(&message(b"x\r\n"), &rcpts(&["a@hub.test"])).await.unwrap();
        assert!(results[0].is_accepted());
        let log = server.log();
        assert_eq!(log[..2], ["EHLO sat.test", "HELO sat.test"]);
        assert!(!server.sent_ahead());
    }

    #[tokio::test]
    async fn ehlo_transient_is_an_error() {
        let server = start(Script::esmtp(&[]).rule("EHLO", "421 4.3.2 shutting down")).await;
        let err = Client::connect(server.addr, "mx.test", "sat.test", quick()).await.unwrap_err();
        assert!(matches!(&err, ClientError::Reply { phase: Phase::Ehlo, .. }));
        assert_eq!(err.class(), ErrorClass::Reply4xx);
    }

    #[tokio::test]
    async fn connection_closed_mid_transaction() {
        for ext in [&["PIPELINING"][..], &[]] {
            let server = start(Script::esmtp(ext).rule("RCPT TO:<b@", CLOSE)).await;
            let mut client = connect(&server).await;
            let err = client.send(&message(b"x\r\n"), &rcpts(&["a@hub.test", "b@hub.test"])).await.unwrap_err();
            assert!(matches!(err, ClientError::Io { phase: Phase::Rcpt, .. }), "{err}");
            assert_eq!(err.class(), ErrorClass::Connect);
            assert!(!client.is_usable());
            assert!(client.send(&message(b"x\r\n"), &rcpts(&["a@hub.test"])).await.is_err());
        }
    }

    #[tokio::test]
    async fn reply_timeout() {
        let server = start(Script::esmtp(&["PIPELINING"]).rule(".", HANG)).await;
        let timeouts = Timeouts::default().capped(Duration::from_millis(300));
        let mut client = Client::connect(server.addr, "mx.test", "sat.test", timeouts).await.unwrap();
        let started = std::time::Instant::now();
        let err = client.send(&message(b"x\r\n"), &rcpts(&["a@hub.test"])).await.unwrap_err();
        assert!(matches!(err, ClientError::Timeout(Phase::DataEnd)), "{err}");
        assert_eq!(err.class(), ErrorClass::Timeout);
        assert!(started.elapsed() < Duration::from_secs(3));
        assert!(!client.is_usable());
    }

    #[tokio::test]
    async fn server_closing_with_421() {
        let server = start(Script::esmtp(&["PIPELINING"]).rule("RCPT TO:<b@", "421 4.7.0 mx.test closing")).await;
        let mut client = connect(&server).await;
        let results =
            client.send(&message(b"x\r\n"), &rcpts(&["a@hub.test", "b@hub.test", "c@hub.test"])).await.unwrap();
        assert_eq!(codes(&results), ["R421", "R421", "R421"]);
        assert!(!client.is_usable());
    }

    #[tokio::test]
    async fn overlong_reply_is_a_protocol_error() {
        let mut script = Script::esmtp(&[]);
        script.ehlo = (0..150).map(|i| format!("250-X{i}")).chain(["250 END".into()]).collect::<Vec<_>>().join("\r\n");
        let server = start(script).await;
        let err = Client::connect(server.addr, "mx.test", "sat.test", quick()).await.unwrap_err();
        assert!(matches!(err, ClientError::Protocol { phase: Phase::Ehlo, .. }), "{err}");

        let mut script = Script::esmtp(&[]);
        script.greeting = format!("220 {}", "x".repeat(MAX_REPLY_BYTES + 10));
        let server = start(script).await;
        let err = Client::connect(server.addr, "mx.test", "sat.test", quick()).await.unwrap_err();
        assert!(matches!(err, ClientError::Protocol { phase: Phase::Greeting, .. }), "{err}");
    }

    #[tokio::test]
    async fn garbage_reply_is_a_protocol_error() {
        let mut script = Script::esmtp(&[]);
        script.greeting = "hello there\u{7}".into();
        let server = start(script).await;
        let err = Client::connect(server.addr, "mx.test", "sat.test", quick()).await.unwrap_err();
        assert_eq!(err.to_string(), "protocol error during greeting: malformed reply \"hello there\\u{7}\"");
    }

    #[tokio::test]
    async fn session_carries_several_transactions() {
        let server = start(Script::esmtp(&["PIPELINING"]).rule("RCPT TO:<bad@", "550 5.1.1 no")).await;
        let mut client = connect(&server).await;
        for rcpt in ["a@hub.test", "bad@hub.test", "c@hub.test"] {
            client.send(&message(b"x\r\n"), &rcpts(&[rcpt])).await.unwrap();
            assert!(client.is_usable());
            assert!(client.still_open());
        }
        assert_eq!(server.connections(), 1);
        assert_eq!(server.log().iter().filter(|l| l.starts_with("BODY")).count(), 2);
    }

    #[tokio::test]
    async fn still_open_notices_a_closed_session() {
        let mut script = Script::esmtp(&["PIPELINING"]);
        script.close_after_message = true;
        let server = start(script).await;
        let mut client = connect(&server).await;
        client.send(&message(b"x\r\n"), &rcpts(&["a@hub.test"])).await.unwrap();
        tokio::time::sleep(Duration::from_millis(100)).await;
        assert!(!client.still_open());
        assert!(!client.is_usable());
    }

    #[tokio::test]
    async fn connect_refused() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        drop(listener);
        let err = Client::connect(addr, "mx.test", "sat.test", quick()).await.unwrap_err();
        assert!(matches!(err, ClientError::Connect(_)), "{err}");
        assert_eq!(err.class(), ErrorClass::Connect);
    }
}
