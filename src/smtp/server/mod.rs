//! The SMTP server: the listener and the per-connection sessions.
//!
//! - `Server::run` (here) accepts connections, turns away those over the
//!   limits `anvil` keeps (`smtp.max_connections` with its share reserved
//!   for trusted networks, the per-client count and rate) and stops on
//!   shutdown. It holds the TLS
//!   certificate and AUTH users of the generation in force (`Security`),
//!   read again when a reload publishes a new one; should the new files be
//!   unusable, the old ones stay.
//! - `session`: one SMTP conversation: its state, its entry points and the
//!   dispatch of commands to one function per verb, which live with their
//!   phase: `greeting` (banner, EHLO/HELO), `mail` (MAIL, RCPT), `data`
//!   (DATA, BDAT), `auth` (AUTH), `tls` (STARTTLS, client certificates).
//! - `conn`: the session's I/O loop, the only code that touches the stream.
//! - `milters`: the session's side of the before-queue milters, one call
//!   per phase.
//! - `access`: the relay rule (who may send to which domains).
//! - `anvil`: per-client accounting: connection slots, counts and rates,
//!   and the log lines that repeat for a client.
//! - `defence`: the defences of a hub facing the internet, called once
//!   per phase: the policy services at MAIL, RCPT and DATA.
//! - `verify`: the SPF, DKIM and DMARC checks (`crate::verify`): SPF at
//!   MAIL, the rest on the whole message at the end of DATA, whose
//!   Authentication-Results header goes on top of the message.
//! - `screen`: postscreen's tests (`crate::screen`): the DNS lists asked
//!   at connect and applied at RCPT, the pregreet decisions (`conn::greet`
//!   sends the partial greeting and waits).
//!
//! Everything a session accepts goes through the `Ingress`; the server
//! never touches the spool itself.

pub(crate) mod access;
mod anvil;
mod auth;
mod conn;
mod data;
mod defence;
mod greeting;
mod mail;
mod milters;
mod screen;
pub(crate) mod session;
#[cfg(test)]
mod test_support;
mod tls;
mod verify;

use crate::config::Config;
use crate::ingress::Ingress;
use crate::metrics::{Door, Metrics};
use crate::smtp::proto::reply::{Enhanced, Reply};
use anvil::{Anvil, Limits, Refusal, RepeatLog, Topic};
pub(crate) use session::Listener;
use session::{Peer, Security};
use std::io::Write;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio::task::JoinSet;

/// How long `run` waits after shutdown for sessions still inside DATA.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(30);

/// One listening socket's server.
pub(crate) struct Server {
    current: watch::Receiver<Generation>,
    kind: Listener,
    /// The content filter's reinjection listener: loopback and trusted
    /// networks only, and what it accepts is never filtered again.
    reinject: bool,
    metrics: Arc<Metrics>,
}

/// The configuration and the door in force. A reload publishes a new
/// generation: connections accepted afterwards use it, sessions already
/// running finish with the one they started with.
pub(crate) type Generation = (Arc<Config>, Ingress);

impl Server {
    #[cfg(test)]
    pub(crate) fn new(config: Arc<Config>, ingress: Ingress) -> Server {
        Server::following(watch::channel((config, ingress)).1)
    }

    /// A server that picks up every generation published on `current`.
    pub(crate) fn following(current: watch::Receiver<Generation>) -> Server {
        Server { current, kind: Listener::Smtp, reinject: false, metrics: Arc::default() }
    }

    /// The same server, counting sessions, connections, messages and
    /// refused commands into `metrics`.
    pub(crate) fn metrics(self, metrics: Arc<Metrics>) -> Server {
        Server { metrics, ..self }
    }

    /// The same server as the listener on `filter.reinject_listen`.
    pub(crate) fn reinjection(self) -> Server {
        Server { reinject: true, ..self }
    }

    /// The same server on a submission (587) or submissions (465) port.
    pub(crate) fn kind(self, kind: Listener) -> Server {
        Server { kind, ..self }
    }

    /// Accepts connections until `shutdown` turns true (or its sender is
    /// dropped), then waits up to `SHUTDOWN_GRACE` for the sessions: idle
    /// ones close at once with 421, one receiving a message finishes it.
    pub(crate) async fn run(self, listener: TcpListener, mut shutdown: watch::Receiver<bool>) {
        // The slots, the trusted reserve and the log summaries are fixed
        // for the listener's life; a reload changes everything else, the
        // per-client limits included.
        let (mut secured, _) = self.current.borrow().clone();
        let anvil = Anvil::new(secured.smtp.max_connections, secured.smtp.trusted_reserve, Instant::now());
        let repeats = Arc::new(RepeatLog::new(secured.smtp.repeat_log_interval));
        let security = Security::load(&secured).unwrap_or_else(|e| {
            tracing::error!("TLS and AUTH disabled: {e:#}");
            Security::none()
        });
        // Reloads keep the counters (`Security::reloaded`).
        let mut security = Arc::new(security.counting(self.metrics.clone()).repeating(repeats.clone()));
        let mut summaries = tokio::time::interval(repeats.interval().max(Duration::from_secs(1)));
        summaries.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut sessions = JoinSet::new();
        loop {
            // At the cap, the loop stops accepting: the connections beyond
            // it wait in the listen backlog (`smtp.listen_backlog`) until a
            // session ends, rather than get 421 and come back later.
            let full = anvil.full();
            let accepted = tokio::select! {
                accepted = listener.accept(), if !full => accepted,
                () = anvil.slot_freed(), if full => continue,
                _ = shutdown.wait_for(|v| *v) => break,
                Some(done) = sessions.join_next(), if !sessions.is_empty() => {
                    if let Err(e) = done {
                        tracing::error!("SMTP session ended abnormally: {e}");
                    }
                    continue;
                }
                _ = summaries.tick() => {
                    repeats.summarise(Instant::now());
                    continue;
                }
            };
            let (stream, addr) = match accepted {
                Ok(pair) => pair,
                Err(e) => {
                    // Usually EMFILE/ENFILE: pause instead of spinning, the
                    // way mini-redis backs off.
                    tracing::warn!("accept failed: {e}");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            };
            let (config, mut ingress) = self.current.borrow().clone();
            if self.reinject && !may_reinject(&config, addr) {
                self.metrics.connection_refused();
                refuse_reinjection(stream, addr, &config.hostname);
                continue;
            }
            let pass = match anvil.admit(addr.ip(), self.limits(&config, addr), Instant::now()) {
                Ok(pass) => pass,
                Err(refusal) => {
                    self.metrics.connection_refused();
                    refuse(stream, addr, &config.hostname, refusal, &repeats);
                    continue;
                }
            };
            // Replies are batched by the session; Nagle would only delay them.
            let _ = stream.set_nodelay(true);
            ingress = match (self.reinject, self.kind) {
                (true, _) => ingress.reinjection(),
                (false, Listener::Smtp) => ingress.counted_as(Door::Smtp),
                (false, Listener::Submission | Listener::Submissions) => ingress.counted_as(Door::Submission),
            }
            .with_metrics(self.metrics.clone());
            if !Arc::ptr_eq(&config, &secured) {
                match security.reloaded(&config) {
                    Ok(fresh) => security = Arc::new(fresh),
                    Err(e) => tracing::error!("keeping the previous TLS certificate and AUTH users: {e:#}"),
                }
                secured = config.clone();
            }
            let shutdown = Some(shutdown.clone());
            let security = security.clone();
            let kind = self.kind;
            let connection = self.metrics.session_started();
            sessions.spawn(async move {
                let peer = Peer::Tcp(addr);
                let local = stream.local_addr().ok();
                conn::serve_in_slot(stream, peer, local, kind, &config, &ingress, &security, shutdown, Some(pass))
                    .await;
                drop(connection);
            });
        }
        drop(listener);
        let drain = async { while sessions.join_next().await.is_some() {} };
        if tokio::time::timeout(SHUTDOWN_GRACE, drain).await.is_err() {
            tracing::warn!("{} SMTP session(s) still open after {SHUTDOWN_GRACE:?}; closing them", sessions.len());
        }
        // Dropping the set aborts what is left; their messages were never
        // acknowledged, so the clients will send them again.
    }

    /// The per-client limits for a connection from `addr`: none for a
    /// trusted network (and on the reinjection listener, which admits
    /// nothing else).
    fn limits(&self, config: &Config, addr: SocketAddr) -> Option<Limits> {
        let smtp = &config.smtp;
        let trusted = self.reinject || config.access.trusts(addr.ip());
        (!trusted).then_some(Limits { count: smtp.client_connection_limit, rate: smtp.client_connection_rate_limit })
    }
}

/// Turns away a connection: over the listener's slots, or over the
/// client's own limits. The write is a non-blocking attempt on a fresh
/// socket (whose send buffer is empty, so it succeeds in practice): no
/// task, no waiting, so a flood cannot pile up work here; nor log lines,
/// which `repeats` keeps to one per client and interval.
fn refuse(stream: TcpStream, addr: SocketAddr, hostname: &str, refusal: Refusal, repeats: &RepeatLog) {
    if repeats.first(addr.ip(), Topic::Refused, Instant::now()) {
        tracing::warn!("connect from {}: {}", Peer::Tcp(addr), refusal.describe());
    }
    let text = if refusal.is_per_client() {
        format!("{hostname} Error: too many connections from {}", addr.ip().to_canonical())
    } else {
        format!("{hostname} Too many connections, try again later")
    };
    let reply = Reply::new(421, Enhanced(4, 7, 0), text);
    if let Ok(mut std) = stream.into_std() {
        let _ = std.write(&reply.to_wire());
    }
}

/// Only the filter may reinject: loopback or `access.trusted_networks`.
fn may_reinject(config: &Config, addr: SocketAddr) -> bool {
    let ip = addr.ip().to_canonical();
    ip.is_loopback() || config.access.trusts(ip)
}

fn refuse_reinjection(stream: TcpStream, addr: SocketAddr, hostname: &str) {
    tracing::warn!("connect from {} to the reinjection listener refused: not a trusted network", Peer::Tcp(addr));
    let reply = Reply::new(554, Enhanced(5, 7, 1), format!("{hostname} Access denied"));
    if let Ok(mut std) = stream.into_std() {
        let _ = std.write(&reply.to_wire());
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ingress::test_support::queue_ingress;
    use std::path::Path;
    use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};

    fn config(max_connections: usize) -> Arc<Config> {
        let text = format!("hostname = \"mx.test\"\n[smtp]\nmax_connections = {max_connections}\n");
        Arc::new(Config::parse(&text, Path::new("test.toml")).unwrap())
    }

    /// Reads one reply line from a fresh connection (empty at end of stream).
    async fn line(stream: &mut BufReader<TcpStream>) -> String {
        let mut line = String::new();
        tokio::time::timeout(Duration::from_secs(10), stream.read_line(&mut line))
            .await
            .expect("reply in time")
            .unwrap();
        line
    }

    async fn connect(addr: SocketAddr) -> BufReader<TcpStream> {
        BufReader::new(TcpStream::connect(addr).await.unwrap())
    }

    #[test]
    fn reinjection_only_from_loopback_and_trusted_networks() {
        let text = "[access]\ntrusted_networks = [\"10.0.0.0/8\"]\n";
        let config = Config::parse(text, Path::new("test.toml")).unwrap();
        let cases = [
            ("127.0.0.1:1", true),
            ("127.0.0.9:1", true),
            ("[::1]:1", true),
            ("10.1.2.3:1", true),
            ("[::ffff:10.0.0.1]:1", true),
            ("192.0.2.1:1", false),
            ("[::ffff:192.0.2.1]:1", false),
            ("[2001:db8::1]:1", false),
        ];
        for (addr, expected) in cases {
            assert_eq!(may_reinject(&config, addr.parse().unwrap()), expected, "{addr}");
        }
    }

    #[tokio::test]
    async fn connection_limit_and_shutdown() {
        let dir = tempfile::tempdir().unwrap();
        let config = config(2);
        let (ingress, _spool) = queue_ingress(dir.path(), &config);
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (stop, stopped) = watch::channel(false);
        let server = tokio::spawn(Server::new(config, ingress).run(listener, stopped));

        let mut first = connect(addr).await;
        assert_eq!(line(&mut first).await, "220 mx.test ESMTP posthorn\r\n");
        let mut second = connect(addr).await;
        assert_eq!(line(&mut second).await, "220 mx.test ESMTP posthorn\r\n");
        // The third waits in the backlog, unanswered, rather than get 421.
        let mut third = connect(addr).await;
        let mut early = String::new();
        let waited = tokio::time::timeout(Duration::from_millis(300), third.read_line(&mut early)).await;
        assert!(waited.is_err(), "no reply while every slot is taken, got {early:?}");

        // A slot frees when a session ends, and the waiting one gets it.
        first.get_mut().write_all(b"QUIT\r\n").await.unwrap();
        assert_eq!(line(&mut first).await, "221 2.0.0 Bye\r\n");
        assert_eq!(line(&mut third).await, "220 mx.test ESMTP posthorn\r\n");

        // Shutdown: idle sessions get 421 4.3.2, the server stops.
        stop.send(true).unwrap();
        assert_eq!(line(&mut second).await, "421 4.3.2 mx.test Service shutting down\r\n");
        assert_eq!(line(&mut third).await, "421 4.3.2 mx.test Service shutting down\r\n");
        tokio::time::timeout(Duration::from_secs(10), server).await.expect("server stops").unwrap();
        assert!(TcpStream::connect(addr).await.is_err(), "listener closed");
    }
}
