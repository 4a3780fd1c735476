//! The I/O loop of a session: the only code that touches the stream.
//!
//! `serve` runs a session from connect to close: the greeting, the command
//! loop (`drive`), the switch to TLS after STARTTLS, and the end (`finish`):
//! the closing reply, the shutdown of the stream and the disconnect log
//! line with its per-verb counts (`Stats`). The octets of DATA and BDAT are
//! read by `data` through `Conn`.
//!
//! Replies are collected in one buffer and written when no complete command
//! is left in the input (RFC 2920): a pipelining client sending fifty
//! commands in one packet gets fifty replies in one packet, which is what
//! makes PIPELINING pay off.
//!
//! Every wait has a deadline, not only a limit per read, so that a client
//! sending a byte now and then cannot keep its slot for ever (issue 12):
//! - a command line must be complete within `smtp.command_timeout` of the
//!   moment the loop starts waiting for it, however it is dribbled in;
//! - the text of a message must be complete within `smtp.data_deadline`:
//!   from the 354 to the final dot, or from the first BDAT chunk to the end
//!   of the LAST one (the command lines between chunks included); inside
//!   it each read also waits at most `smtp.data_timeout`, so a client that
//!   stalls is cut early;
//! - the TLS handshake (STARTTLS, or the start of a submissions session)
//!   must end within `smtp.tls_handshake_timeout`;
//! - writing the replies of one flush to a client that does not read them
//!   must end within `smtp.command_timeout`.
//!
//! All of them end the session with `421 4.4.2` (`End::Timeout`) where a
//! reply can still be sent. On shutdown a session waiting for a command
//! gets `421 4.3.2` at once; a session inside DATA is left to finish its
//! message.

use super::anvil::Pass;
use super::auth::verify;
use super::data::{read_chunk, receive_bdat, receive_data};
use super::screen::Pregreet;
use super::session::{Listener, Peer, Security, Session, Step};
use super::tls::handshake;
use crate::config::Config;
use crate::ingress::Ingress;
use crate::smtp::proto::command::Verb;
use crate::smtp::proto::line::{Line, LineReader};
use crate::smtp::proto::reply::{Enhanced, Reply};
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::sync::watch;
use tokio::time::Instant;

/// Bytes read from the client at once. Small enough that hundreds of idle
/// sessions cost little, large enough that DATA is a few reads per message.
pub(super) const READ_SIZE: usize = 16 * 1024;

/// Why a session ended.
#[derive(Debug)]
pub(super) enum End {
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
pub(super) struct Conn<S> {
    stream: S,
    pub(super) reader: LineReader,
    pub(super) buf: Vec<u8>,
    out: Vec<u8>,
    write_timeout: Duration,
    /// When the message being received must be complete
    /// (`smtp.data_deadline`); every read waits until it at most.
    message_deadline: Option<Instant>,
}

impl<S: AsyncRead + AsyncWrite + Unpin> Conn<S> {
    fn new(stream: S, config: &Config) -> Conn<S> {
        Conn {
            stream,
            reader: LineReader::new(config.smtp.max_line_length),
            buf: vec![0; READ_SIZE],
            out: Vec::with_capacity(1024),
            write_timeout: config.smtp.command_timeout,
            message_deadline: None,
        }
    }

    pub(super) fn queue(&mut self, reply: &Reply) {
        self.out.extend_from_slice(&reply.to_wire());
    }

    /// Writes the queued replies in one go.
    pub(super) async fn flush(&mut self) -> Result<(), End> {
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

    /// Reads what is available into `buf`, waiting at most `limit` (and
    /// never past the message's deadline); returns the count (never 0).
    pub(super) async fn read(&mut self, limit: Duration) -> Result<usize, End> {
        self.read_by(Instant::now() + limit).await
    }

    /// Reads what is available into `buf` by `deadline` (or the message's,
    /// if sooner); returns the count (never 0).
    async fn read_by(&mut self, deadline: Instant) -> Result<usize, End> {
        let deadline = self.message_deadline.map_or(deadline, |m| m.min(deadline));
        match tokio::time::timeout_at(deadline, self.stream.read(&mut self.buf)).await {
            Ok(Ok(0)) => Err(End::Lost),
            Ok(Ok(n)) => Ok(n),
            Ok(Err(e)) => Err(End::Io(e)),
            Err(_) => Err(End::Timeout),
        }
    }
}

/// Runs a session on a listener of kind `kind` from connect to close,
/// holding no connection slot: `session::run_session` for `sendmail -bs`,
/// and the session tests.
pub(super) async fn serve<S>(
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
    serve_in_slot(stream, peer, None, kind, config, ingress, security, shutdown, None).await
}

/// Runs a session from connect to close, as the listener does for every
/// connection to its address `local`: `slot` (its hold on
/// `smtp.max_connections`) is given back as soon as the session is over,
/// before the farewell and the close, so that the next connection waiting
/// in the listen backlog is accepted without waiting for a slow client's
/// FIN.
#[allow(clippy::too_many_arguments)]
pub(super) async fn serve_in_slot<S>(
    stream: S,
    peer: Peer,
    local: Option<std::net::SocketAddr>,
    kind: Listener,
    config: &Config,
    ingress: &Ingress,
    security: &Security,
    mut shutdown: Option<watch::Receiver<bool>>,
    slot: Option<Pass>,
) where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let mut session = Session::new(config, ingress, peer, security);
    session.kind = kind;
    session.local_addr = local;
    tracing::info!(client_addr = session.peer.addr(), event = "connect", "connect from {}", session.peer);
    session.start_screen();
    session.milters_connect().await;
    if kind == Listener::Submissions {
        return serve_implicit_tls(session, stream, &mut shutdown, slot).await;
    }
    let mut conn = Conn::new(stream, config);
    if let Err(end) = greet(&mut session, &mut conn).await {
        return finish(&mut session, conn, end, slot).await;
    }
    let end = match drive(&mut session, &mut conn, ingress, &mut shutdown).await {
        Ok(end) | Err(end) => end,
    };
    let Some(acceptor) = security.tls.clone().filter(|_| matches!(end, End::StartTls)) else {
        return finish(&mut session, conn, end, slot).await;
    };
    // RFC 3207 5: whatever came in clear behind STARTTLS is dropped.
    let injected = conn.reader.take_buffered();
    if !injected.is_empty() {
        tracing::warn!("{}: {} byte(s) pipelined after STARTTLS discarded", session.peer, injected.len());
    }
    let Some(tls) = handshake(&mut session, acceptor, conn.stream, handshake_deadline(config)).await else {
        return log_end(&session, &End::Lost);
    };
    let mut conn = Conn {
        stream: tls,
        reader: conn.reader,
        buf: conn.buf,
        out: conn.out,
        write_timeout: conn.write_timeout,
        message_deadline: None,
    };
    let end = match drive(&mut session, &mut conn, ingress, &mut shutdown).await {
        Ok(end) | Err(end) => end,
    };
    finish(&mut session, conn, end, slot).await
}

/// Queues the greeting: at once, or for the pregreet test (`[screen]`,
/// postscreen's) a partial `220-` line, sent now, and the rest after
/// `screen.greet_wait` unless the client talks first. A client that talks
/// before the end of a multi-line reply breaks RFC 5321 (4.2.1); spam
/// engines that do not wait for the greeting are caught this way, where
/// only looking for input already buffered would catch almost none.
async fn greet<S>(session: &mut Session<'_>, conn: &mut Conn<S>) -> Result<(), End>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let greeting = session.greeting();
    let wait = match session.pregreet() {
        Pregreet::Skip => {
            conn.queue(&greeting);
            return Ok(());
        }
        Pregreet::Refuse(reply) => {
            conn.queue(&reply);
            conn.flush().await?;
            return Err(End::Quit);
        }
        Pregreet::Wait(wait) => wait,
    };
    let mut partial = greeting.to_wire();
    partial[3] = b'-';
    conn.out.extend_from_slice(&partial);
    conn.flush().await?;
    let started = Instant::now();
    match conn.read(wait).await {
        Err(End::Timeout) => {
            session.greet_passed();
            conn.queue(&greeting);
            Ok(())
        }
        Err(end) => Err(end),
        Ok(n) => {
            let reply = session.pregreeted(&conn.buf[..n], started.elapsed());
            conn.queue(&reply);
            conn.flush().await?;
            Err(End::Quit)
        }
    }
}

/// A session on a submissions port (RFC 8314): the handshake comes first,
/// the greeting is the first thing sent over TLS.
async fn serve_implicit_tls<S>(
    mut session: Session<'_>,
    stream: S,
    shutdown: &mut Option<watch::Receiver<bool>>,
    slot: Option<Pass>,
) where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let Some(acceptor) = session.security.tls.clone() else {
        tracing::error!("{}: submissions listener without a TLS certificate (tls.cert)", session.peer);
        return log_end(&session, &End::Lost);
    };
    // The deadline runs from the connect: a client that never speaks TLS
    // holds the slot no longer than one that fails the handshake.
    let deadline = handshake_deadline(session.config);
    let Some(tls) = handshake(&mut session, acceptor, stream, deadline).await else {
        return log_end(&session, &End::Lost);
    };
    let config = session.config;
    let ingress = session.ingress;
    let mut conn = Conn::new(tls, config);
    conn.queue(&session.greeting());
    let end = match drive(&mut session, &mut conn, ingress, shutdown).await {
        Ok(end) | Err(end) => end,
    };
    finish(&mut session, conn, end, slot).await
}

/// When a TLS handshake starting now must be over.
fn handshake_deadline(config: &Config) -> Instant {
    Instant::now() + config.smtp.tls_handshake_timeout
}

/// Gives the slot back, sends the closing reply the end calls for, closes,
/// and logs.
async fn finish<S>(session: &mut Session<'_>, mut conn: Conn<S>, end: End, slot: Option<Pass>)
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    drop(slot);
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
    session.milters_quit().await;
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
    tracing::info!(
        client_addr = session.peer.addr(),
        event = "disconnect",
        "disconnect from {} {}",
        session.peer,
        session.stats.summary()
    );
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
    // When the command line being waited for must be complete; set when
    // the wait for it starts, cleared when it has been handled.
    let mut line_deadline = None;
    loop {
        // Handle every complete command already read, then flush once.
        loop {
            // A message arriving in BDAT chunks is left to finish, as in DATA.
            if session.chunks.is_none() && shutdown.as_ref().is_some_and(|s| *s.borrow()) {
                conn.flush().await?;
                return Ok(End::Shutdown);
            }
            // The transaction before the command, for the milters.
            let (had_mail, rcpts) = (session.mail.is_some(), session.rcpts.len());
            let step = match conn.reader.next_line() {
                None => break,
                Some(Line::TooLong) => Step::Reply(session.line_too_long()),
                Some(Line::Command(line)) => session.auth_line(line),
            };
            line_deadline = None;
            // The reply, and whether the session ends after it.
            let (reply, then) = run_step(session, conn, ingress, step).await?;
            let reply = session.milters_after(had_mail, rcpts, reply).await;
            // Every reply to a command or a message passes here.
            conn.queue(&reply);
            let too_many = session.replied(&reply);
            if let Some(end) = then.or(too_many.then_some(End::TooManyErrors)) {
                conn.flush().await?;
                return Ok(end);
            }
        }
        conn.flush().await?;
        let deadline = *line_deadline.get_or_insert_with(|| Instant::now() + session.config.smtp.command_timeout);
        let n = tokio::select! {
            n = conn.read_by(deadline) => n?,
            () = shutdown_signal(shutdown), if session.chunks.is_none() => return Ok(End::Shutdown),
        };
        conn.reader.push(&conn.buf[..n]);
    }
}

/// Runs one step of the session: the reply to send, and the end that
/// follows it, if the session ends. A message's transfer (DATA, the BDAT
/// chunks of one message) runs under `smtp.data_deadline`, set when it
/// starts and dropped once the session holds no message any more.
async fn run_step<S>(
    session: &mut Session<'_>,
    conn: &mut Conn<S>,
    ingress: &Ingress,
    step: Step,
) -> Result<(Reply, Option<End>), End>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    if matches!(step, Step::Data(_) | Step::Bdat { .. } | Step::Skip { .. }) && conn.message_deadline.is_none() {
        conn.message_deadline = Some(Instant::now() + session.config.smtp.data_deadline);
    }
    let done = match step {
        Step::Reply(reply) => (reply, None),
        Step::Close(reply) => (reply, Some(End::Quit)),
        Step::StartTls(reply) => (reply, Some(End::StartTls)),
        Step::Verify(credentials) => (verify(session, credentials).await, None),
        Step::Ask(ask) => (super::defence::answer(session, ask).await, None),
        Step::Data(tx) => (receive_data(session, conn, ingress, tx).await?, None),
        Step::Bdat { size, last } => (receive_bdat(session, conn, ingress, size, last).await?, None),
        Step::Skip { size, reply } => {
            read_chunk(conn, size, session.config.smtp.data_timeout, None).await?;
            (reply, None)
        }
    };
    if session.chunks.is_none() {
        conn.message_deadline = None;
    }
    Ok(done)
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

/// Per-verb counts for the disconnect line: `mail=1 rcpt=0/1 commands=2/3`.
#[derive(Default)]
pub(super) struct Stats {
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

    pub(super) fn record(&mut self, verb: Option<Verb>, ok: bool) {
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ingress::test_support::queue_ingress;
    use crate::smtp::server::session::run_session;
    use crate::smtp::server::test_support::{Client, TRUSTED, config, lines, tcp};
    use std::pin::Pin;
    use std::sync::Arc;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::task::{Context, Poll};

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

    /// Writes `bytes` one at a time, `every` apart, until the server closes.
    async fn dribble(mut w: tokio::io::WriteHalf<tokio::io::DuplexStream>, bytes: &[u8], every: Duration) {
        for byte in bytes {
            tokio::time::sleep(every).await;
            if w.write_all(&[*byte]).await.is_err() {
                return;
            }
        }
    }

    /// A command line dribbled a byte per 20 s gets no more than the 30 s
    /// of `command_timeout` in all, though no read waits that long.
    #[tokio::test(start_paused = true)]
    async fn a_dribbled_command_line_meets_its_deadline() {
        let config = config("command_timeout = \"30s\"");
        let dir = tempfile::tempdir().unwrap();
        let (ingress, _spool) = queue_ingress(dir.path(), &config);
        let (client, server) = tokio::io::duplex(4096);
        let (r, w) = tokio::io::split(client);
        let talk = async move {
            let mut r = tokio::io::BufReader::new(r);
            let mut line = String::new();
            tokio::io::AsyncBufReadExt::read_line(&mut r, &mut line).await.unwrap();
            assert!(line.starts_with("220 "), "{line}");
            let start = tokio::time::Instant::now();
            tokio::spawn(dribble(w, b"NOOP\r\n", Duration::from_secs(20)));
            line.clear();
            tokio::io::AsyncBufReadExt::read_line(&mut r, &mut line).await.unwrap();
            assert_eq!(line, "421 4.4.2 mx.test Error: timeout exceeded\r\n");
            let waited = start.elapsed();
            assert!(waited >= Duration::from_secs(30) && waited < Duration::from_secs(40), "{waited:?}");
        };
        tokio::join!(run_session(server, tcp(TRUSTED), &config, &ingress), talk);
    }

    /// A message dribbled a byte per 10 s (within `data_timeout` each) is
    /// cut at `data_deadline`; nothing is queued.
    #[tokio::test(start_paused = true)]
    async fn a_dribbled_message_meets_the_data_deadline() {
        let config = config("command_timeout = \"1h\"\ndata_timeout = \"20s\"\ndata_deadline = \"60s\"");
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
            let start = tokio::time::Instant::now();
            let reply = loop {
                tokio::time::sleep(Duration::from_secs(10)).await;
                if start.elapsed() >= Duration::from_secs(55) {
                    break c.expect("421 4.4.2").await;
                }
                c.send(b"x").await;
            };
            assert_eq!(reply.lines[0], "mx.test Error: timeout exceeded");
            let waited = start.elapsed();
            assert!(waited >= Duration::from_secs(60) && waited < Duration::from_secs(70), "{waited:?}");
        };
        tokio::join!(run_session(server, tcp(TRUSTED), &config, &ingress), talk);
        assert_eq!(spool.list(crate::spool::State::Incoming).unwrap(), Vec::<String>::new());
    }

    /// The chunks of one BDAT message share its deadline, the command lines
    /// between them included; the deadline ends with the message.
    #[tokio::test(start_paused = true)]
    async fn bdat_chunks_share_the_message_deadline() {
        let config = config("command_timeout = \"1h\"\ndata_timeout = \"20s\"\ndata_deadline = \"60s\"");
        let dir = tempfile::tempdir().unwrap();
        let (ingress, _spool) = queue_ingress(dir.path(), &config);
        let (client, server) = tokio::io::duplex(4096);
        let talk = async move {
            let mut c = Client::new(client);
            c.expect("220").await;
            let envelope = lines(&["EHLO c", "MAIL FROM:<a@example.net>", "RCPT TO:<b@example.org>"]);
            c.send(&envelope).await;
            for expected in ["250", "250 2.1.0", "250 2.1.5"] {
                c.expect(expected).await;
            }
            // A whole message, then more than a deadline of other commands.
            c.send(b"BDAT 3 LAST\r\nx\r\n").await;
            c.expect("250 2.0.0").await;
            for _ in 0..2 {
                tokio::time::sleep(Duration::from_secs(50)).await;
                c.send(b"NOOP\r\n").await;
                c.expect("250 2.0.0").await;
            }
            // A message in one-octet chunks, each quick, never ending.
            c.send(&envelope[8..]).await;
            for expected in ["250 2.1.0", "250 2.1.5"] {
                c.expect(expected).await;
            }
            let start = tokio::time::Instant::now();
            while start.elapsed() < Duration::from_secs(58) {
                c.send(b"BDAT 1\r\nx").await;
                c.expect("250 2.0.0").await;
                tokio::time::sleep(Duration::from_secs(7)).await;
            }
            let reply = c.reply().await.expect("a reply");
            assert_eq!((reply.code, reply.lines[0].as_str()), (421, "mx.test Error: timeout exceeded"));
            let waited = start.elapsed();
            assert!(waited >= Duration::from_secs(60) && waited < Duration::from_secs(70), "{waited:?}");
        };
        tokio::join!(run_session(server, tcp(TRUSTED), &config, &ingress), talk);
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
        let security = Security::none();
        tokio::join!(serve(server, tcp(TRUSTED), Listener::Smtp, &config, &ingress, &security, Some(stopped)), talk);
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
}
