//! The session's side of postscreen's tests (`crate::screen`, `[screen]`,
//! issue 16): the DNS lists asked at connect and their verdict applied at
//! RCPT, and the decisions of the pregreet test, whose I/O (the partial
//! `220-` line, the wait) is `conn::greet`'s.
//!
//! Only clients of port 25 are screened (not the submission ports, not
//! the content filter's reinjection listener), and never those the hub
//! vouches for: trusted networks at connect, and a client that
//! authenticates later is no longer refused at RCPT.

use super::session::{Listener, Peer, Session};
use crate::screen::Rank;
use crate::smtp::proto::reply::{Enhanced, Reply};
use std::net::SocketAddr;
use std::time::Duration;
use tokio::task::JoinHandle;

/// The DNS lists' verdict on the client.
#[derive(Debug)]
pub(super) enum Screening {
    /// Still being asked.
    Asking(Asking),
    Done(Rank),
}

/// The task asking the lists; stopped when the session ends first.
#[derive(Debug)]
pub(super) struct Asking(JoinHandle<Rank>);

impl Drop for Asking {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// What the greeting does about the pregreet test.
#[derive(Debug)]
pub(super) enum Pregreet {
    /// No test: the greeting at once.
    Skip,
    /// The client talked too early not long ago: this reply, then close.
    Refuse(Reply),
    /// A partial greeting, then wait this long for early talk.
    Wait(Duration),
}

impl Session<'_> {
    /// The client's address when it is screened: port 25 only, not the
    /// content filter's reinjection listener, nobody vouched for.
    fn screened(&self) -> Option<SocketAddr> {
        self.security.screen.as_ref()?;
        let public = self.kind == Listener::Smtp && !self.ingress.is_reinjection();
        match self.peer {
            Peer::Tcp(addr) if public && !self.vouched_for() => Some(addr),
            _ => None,
        }
    }

    /// At connect: starts asking the DNS lists about the client, while the
    /// greeting goes on.
    pub(super) fn start_screen(&mut self) {
        let (Some(addr), Some(screen)) = (self.screened(), self.security.screen.clone()) else { return };
        if !screen.asks_lists() {
            return;
        }
        let task = tokio::spawn(async move {
            let rank = screen.rank(addr.ip()).await;
            if !rank.listed.is_empty() {
                tracing::info!(
                    client_addr = addr.ip().to_string(),
                    "DNSBL rank {} for [{}]:{} ({})",
                    rank.score,
                    addr.ip(),
                    addr.port(),
                    rank.listed.join(", ")
                );
            }
            rank
        });
        self.screening = Some(Screening::Asking(Asking(task)));
    }

    /// Whether RCPT waits for the DNS lists' verdict.
    pub(super) fn screens_rcpt(&self) -> bool {
        self.screening.is_some() && !self.vouched_for()
    }

    /// At RCPT: the refusal when the client's score reaches the threshold
    /// (postscreen's `550 5.7.1 Service unavailable; client [ADDR] blocked
    /// using LIST`).
    pub(super) async fn screen_rcpt(&mut self) -> Option<Reply> {
        if self.vouched_for() {
            return None;
        }
        let rank = match self.screening.take()? {
            Screening::Asking(mut asking) => (&mut asking.0).await.unwrap_or_default(),
            Screening::Done(rank) => rank,
        };
        let screen = self.security.screen.as_ref()?;
        let refusal = self.peer.addr().and_then(|ip| screen.refusal(&rank, ip));
        self.screening = Some(Screening::Done(rank));
        refusal
    }

    /// What the greeting does about the pregreet test.
    pub(super) fn pregreet(&self) -> Pregreet {
        let (Some(addr), Some(screen)) = (self.screened(), self.security.screen.as_ref()) else {
            return Pregreet::Skip;
        };
        if !screen.config().pregreet {
            return Pregreet::Skip;
        }
        match screen.greeted(addr.ip()) {
            Some(true) => Pregreet::Skip,
            Some(false) => {
                tracing::info!(
                    client_addr = addr.ip().to_string(),
                    "PREGREET cached for [{}]:{}",
                    addr.ip(),
                    addr.port()
                );
                Pregreet::Refuse(Reply::new(
                    521,
                    Enhanced(5, 7, 1),
                    format!("Service unavailable; client [{}] talked before the greeting", addr.ip()),
                ))
            }
            None => Pregreet::Wait(screen.config().greet_wait),
        }
    }

    /// The client waited for the whole greeting.
    pub(super) fn greet_passed(&self) {
        if let (Some(addr), Some(screen)) = (self.screened(), self.security.screen.as_ref()) {
            screen.remember_greet(addr.ip(), true);
        }
    }

    /// The client sent `input` before the greeting was over, `after` the
    /// partial one: logged as postscreen logs it, remembered, refused.
    pub(super) fn pregreeted(&self, input: &[u8], after: Duration) -> Reply {
        if let (Some(addr), Some(screen)) = (self.screened(), self.security.screen.as_ref()) {
            screen.remember_greet(addr.ip(), false);
            let shown: String =
                input.iter().take(100).copied().flat_map(std::ascii::escape_default).map(char::from).collect();
            tracing::info!(
                client_addr = addr.ip().to_string(),
                "PREGREET {} after {:.2} from [{}]:{}: {shown}",
                input.len(),
                after.as_secs_f64(),
                addr.ip(),
                addr.port()
            );
        }
        Reply::new(521, Enhanced(5, 5, 1), "Protocol error")
    }
}

#[cfg(test)]
mod tests {
    use crate::config::Config;
    use crate::ingress::test_support::queue_ingress;
    use crate::smtp::server::conn::serve;
    use crate::smtp::server::session::{Listener, Security};
    use crate::smtp::server::test_support::{Client, STRANGER, TRUSTED, lines, tcp};
    use std::path::Path;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    fn screened() -> Config {
        let text = "hostname = \"mx.test\"\n[access]\ntrusted_networks = [\"10.0.0.0/8\"]\nrelay_domains = [\"example.org\"]\n[screen]\npregreet = true\ngreet_wait = \"5s\"\n";
        Config::parse(text, Path::new("test.toml")).unwrap()
    }

    /// One session where the client sends `input` at once, before reading:
    /// everything the server wrote.
    async fn early(config: &Config, security: &Security, peer: &str, kind: Listener, input: &[u8]) -> String {
        let dir = tempfile::tempdir().unwrap();
        let (ingress, _spool) = queue_ingress(dir.path(), config);
        let ingress = if kind == Listener::Smtp && peer.starts_with("127.") { ingress.reinjection() } else { ingress };
        let (client, server) = tokio::io::duplex(1 << 16);
        let session = serve(server, tcp(peer), kind, config, &ingress, security, None);
        let talk = async {
            // The server may close before reading a byte: a refused write
            // is part of the test, not a failure.
            let (mut r, mut w) = tokio::io::split(client);
            let _ = w.write_all(input).await;
            let _ = w.shutdown().await;
            let mut out = String::new();
            let _ = r.read_to_string(&mut out).await;
            out
        };
        let ((), out) = tokio::join!(session, talk);
        out
    }

    /// Early talk from a stranger on port 25 is refused, then remembered;
    /// trusted clients, the submission port and the reinjection listener
    /// (a `127.` peer here) are not tested.
    #[tokio::test(start_paused = true)]
    async fn pregreet_catches_early_talkers_only_where_it_applies() {
        let config = screened();
        let security = Security::load(&config).unwrap();
        let input = lines(&["EHLO early", "QUIT"]);
        let out = early(&config, &security, STRANGER, Listener::Smtp, &input).await;
        assert_eq!(out, "220-mx.test ESMTP posthorn\r\n521 5.5.1 Protocol error\r\n");
        let out = early(&config, &security, STRANGER, Listener::Smtp, &input).await;
        assert_eq!(out, "521 5.7.1 Service unavailable; client [192.0.2.9] talked before the greeting\r\n");
        for (peer, kind) in
            [(TRUSTED, Listener::Smtp), (STRANGER, Listener::Submission), ("127.0.0.9:1", Listener::Smtp)]
        {
            let out = early(&config, &security, peer, kind, &input).await;
            assert!(out.starts_with("220 mx.test ESMTP posthorn\r\n250-mx.test\r\n"), "{peer} {kind:?}: {out}");
        }
    }

    /// A client that waits gets the rest of the greeting after
    /// `greet_wait`, and no wait the next time.
    #[tokio::test(start_paused = true)]
    async fn a_patient_client_passes_and_is_remembered() {
        let config = screened();
        let security = Security::load(&config).unwrap();
        let dir = tempfile::tempdir().unwrap();
        let (ingress, _spool) = queue_ingress(dir.path(), &config);
        for wire in ["220-mx.test ESMTP posthorn\r\n220 mx.test ESMTP posthorn\r\n", "220 mx.test ESMTP posthorn\r\n"] {
            let (client, server) = tokio::io::duplex(1 << 16);
            let session = serve(server, tcp(STRANGER), Listener::Smtp, &config, &ingress, &security, None);
            let dialog = async {
                let mut c = Client::new(client);
                let started = tokio::time::Instant::now();
                let greeting = c.reply().await.unwrap();
                assert_eq!(String::from_utf8(greeting.to_wire()).unwrap(), wire);
                let waited = started.elapsed();
                assert_eq!(waited >= std::time::Duration::from_secs(5), wire.starts_with("220-"), "{waited:?}");
                c.send(b"EHLO patient\r\n").await;
                c.expect("250").await;
                c.send(b"QUIT\r\n").await;
                c.expect("221 2.0.0").await;
            };
            tokio::join!(session, dialog);
        }
    }
}
