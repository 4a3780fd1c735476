//! LMTP delivery (RFC 2033), the `lmtp:` transport: every recipient of a
//! group goes to one LMTP server, such as Dovecot's `lmtp` service, over a
//! Unix socket (`lmtp:unix:/run/dovecot/lmtp`) or TCP
//! (`lmtp:[127.0.0.1]:24`). The dialogue is `smtp::client`'s in its LMTP
//! mode: LHLO, and after the final dot one reply per accepted recipient,
//! so the server can take the message for one mailbox and refuse it for
//! another. 2xx is delivered, 4xx deferred, 5xx bounced, per recipient.
//!
//! No TLS and no AUTH (the server is on loopback or a socket, as Postfix's
//! lmtp(8) assumes by default), and no pooling: a session per delivery.
//! Host names go to the system resolver, never to MX lookups. A server that
//! cannot be reached defers the whole group and marks the hop down.

use super::Delivery;
use super::relay::{outcome, session_error};
use crate::message::OutMessage;
use crate::message::nexthop::LmtpTarget;
use crate::message::outcome::{Attempt, ErrorClass, Outcome};
use crate::smtp::client::{Client, LmtpEndpoint, Timeouts};
use std::net::SocketAddr;
use std::time::Instant;

/// Addresses tried for one host name.
const MAX_ADDRESSES: usize = 8;

/// The LMTP transport; stateless apart from its settings.
pub(crate) struct Lmtp {
    helo: String,
    timeouts: Timeouts,
}

impl Lmtp {
    /// Our LHLO name is `hostname`; connecting is bounded by
    /// `relay.connect_timeout`, like every other client session.
    pub(crate) fn new(config: &crate::config::Config) -> Lmtp {
        Lmtp {
            helo: config.hostname.clone(),
            timeouts: Timeouts { connect: config.relay.connect_timeout, ..Timeouts::default() },
        }
    }

    #[cfg(test)]
    fn with_timeouts(helo: &str, timeouts: Timeouts) -> Lmtp {
        Lmtp { helo: helo.into(), timeouts }
    }

    /// Delivers `msg` to all its recipients at `target`.
    pub(crate) async fn deliver(&self, target: &LmtpTarget, msg: &OutMessage) -> Delivery {
        let n = msg.recipients.len();
        let started = Instant::now();
        let mut client = match self.connect(target).await {
            Ok(client) => client,
            Err(attempt) => {
                return Delivery {
                    outcomes: vec![Outcome::Transient(attempt); n],
                    hop_down: true,
                    remote_dsn: false,
                    setup: None,
                    followups: Vec::new(),
                };
            }
        };
        let setup = started.elapsed();
        let label = client.relay_label().to_string();
        let outcomes = match client.send(msg, &msg.recipients).await {
            Ok(results) => results.iter().map(|r| outcome(&label, r)).collect(),
            // Broken before every recipient had its reply: all wait for the
            // next try (one delivered already may then arrive twice, the
            // price of never losing one).
            Err(e) => vec![Outcome::Transient(session_error(&label, &e)); n],
        };
        client.quit().await;
        Delivery { outcomes, hop_down: false, remote_dsn: false, setup: Some(setup), followups: Vec::new() }
    }

    /// A session with the server: the socket, or the first address of the
    /// host that answers.
    async fn connect(&self, target: &LmtpTarget) -> Result<Client, Attempt> {
        let (host, port) = match target {
            LmtpTarget::Unix(path) => {
                let endpoint = LmtpEndpoint::Unix(path.into());
                return Client::connect_lmtp(&endpoint, &self.helo, self.timeouts)
                    .await
                    .map_err(|e| session_error(&format!("unix:{path}"), &e));
            }
            LmtpTarget::Inet { host, port } => (host, *port),
        };
        let addrs: Vec<SocketAddr> = match host.parse::<std::net::IpAddr>() {
            Ok(ip) => vec![SocketAddr::new(ip, port)],
            Err(_) => match tokio::net::lookup_host((host.as_str(), port)).await {
                Ok(found) => found.take(MAX_ADDRESSES).collect(),
                Err(e) => {
                    let why = format!("cannot resolve LMTP server {host}: {e}");
                    return Err(Attempt::failed(ErrorClass::Dns, why));
                }
            },
        };
        let mut last = Attempt::failed(ErrorClass::Dns, format!("LMTP server {host} has no address"));
        for addr in addrs {
            let endpoint = LmtpEndpoint::Tcp { host: host.clone(), addr };
            match Client::connect_lmtp(&endpoint, &self.helo, self.timeouts).await {
                Ok(client) => return Ok(client),
                Err(e) => last = session_error(&crate::smtp::client::relay_label(host, addr), &e),
            }
        }
        Err(last)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::smtp::client::test_server::{Script, start};

    fn kinds(delivery: &Delivery) -> String {
        let kind = |o: &Outcome| match o {
            Outcome::Delivered(_) => 'D',
            Outcome::Transient(_) => 'T',
            Outcome::Permanent(_) => 'P',
        };
        delivery.outcomes.iter().map(kind).collect()
    }

    fn lmtp() -> Lmtp {
        Lmtp::with_timeouts("hub.test", Timeouts::default().capped(std::time::Duration::from_secs(5)))
    }

    fn message(rcpts: &[&str]) -> OutMessage {
        OutMessage::simple("TESTID", "cron@sat.test", rcpts, b"Subject: test\r\n\r\nbody\r\n")
    }

    /// RFC 2033 4.2: one reply per accepted RCPT after the dot, in order;
    /// a recipient refused at RCPT gets none.
    #[tokio::test]
    async fn a_reply_per_recipient_after_the_dot() {
        let script = Script::esmtp(&["PIPELINING", "8BITMIME"])
            .rule("LHLO", "250-store.test\r\n250-PIPELINING\r\n250 8BITMIME")
            .rule("RCPT TO:<b@", "550 5.1.1 <b@hub.test> User doesn't exist")
            .rule(
                ".",
                "250 2.0.0 <a@hub.test> Saved\r\n452 4.2.2 <c@hub.test> Quota exceeded\r\n250 2.0.0 <d@hub.test> Saved",
            );
        let server = start(script).await;
        let target = LmtpTarget::Inet { host: "127.0.0.1".into(), port: server.addr.port() };
        let delivery =
            lmtp().deliver(&target, &message(&["a@hub.test", "b@hub.test", "c@hub.test", "d@hub.test"])).await;
        assert_eq!(kinds(&delivery), "DPTD");
        assert!(!delivery.hop_down);
        assert_eq!(delivery.outcomes[0].attempt().detail, "250 2.0.0 <a@hub.test> Saved");
        let deferred = delivery.outcomes[2].attempt();
        assert_eq!(deferred.class, Some(ErrorClass::Reply4xx));
        assert!(deferred.detail.contains("Quota exceeded (in reply to end of DATA)"), "{}", deferred.detail);
        let log = server.log();
        assert_eq!(log[0], "LHLO hub.test");
        assert!(!log.iter().any(|l| l.starts_with("EHLO") || l.starts_with("HELO")), "{log:?}");
    }

    #[tokio::test]
    async fn a_server_that_is_not_there_defers_and_is_down() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        drop(listener);
        let target = LmtpTarget::Inet { host: "127.0.0.1".into(), port };
        let delivery = lmtp().deliver(&target, &message(&["a@hub.test", "b@hub.test"])).await;
        assert_eq!(kinds(&delivery), "TT");
        assert!(delivery.hop_down);
        assert_eq!(delivery.outcomes[0].attempt().class, Some(ErrorClass::Connect));

        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("lmtp").display().to_string();
        let delivery = lmtp().deliver(&LmtpTarget::Unix(path.clone()), &message(&["a@hub.test"])).await;
        assert_eq!(kinds(&delivery), "T");
        assert!(delivery.outcomes[0].attempt().detail.starts_with(&format!("connect to unix:{path}")));
    }
}
