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
//! Every wait is bounded: `smtp.command_timeout` for a command (and for
//! writing replies to a client that does not read), `smtp.data_timeout`
//! between reads in DATA. On shutdown a session waiting for a command gets
//! `421 4.3.2` at once; a session inside DATA is left to finish its message.

use super::auth::verify;
use super::data::{read_chunk, receive_bdat, receive_data};
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
}

impl<S: AsyncRead + AsyncWrite + Unpin> Conn<S> {
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

    /// Reads what is available into `buf`; returns the count (never 0).
    pub(super) async fn read(&mut self, limit: Duration) -> Result<usize, End> {
        match tokio::time::timeout(limit, self.stream.read(&mut self.buf)).await {
            Ok(Ok(0)) => Err(End::Lost),
            Ok(Ok(n)) => Ok(n),
            Ok(Err(e)) => Err(End::Io(e)),
            Err(_) => Err(End::Timeout),
        }
    }
}

/// Runs a session on a listener of kind `kind` from connect to close; the
/// listener calls it for every connection, `session::run_session` for
/// `sendmail -bs`.
pub(super) async fn serve<S>(
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
                Step::Data(tx) => (receive_data(session, conn, ingress, tx).await?, None),
                Step::Bdat { size, last } => (receive_bdat(session, conn, ingress, size, last).await?, None),
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
