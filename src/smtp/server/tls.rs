//! STARTTLS, the TLS handshake and client certificates.
//!
//! STARTTLS (RFC 3207): after `220 Ready to start TLS` the loop hands the
//! stream to rustls and runs again on the encrypted stream with the session
//! reset to its state after the greeting. Anything the client pipelined
//! behind STARTTLS is thrown away unread: it arrived in clear and must not
//! be taken as if it came over TLS (the STARTTLS command injection attack):
//! `conn::serve` drops it before the handshake. On a submissions port (465, RFC 8314) the handshake comes first.
//!
//! With `tls.client_ca` or `access.trusted_fingerprints` the handshake asks
//! for a client certificate; a trusted one lets the client relay, limited to
//! the senders `access.client_cert_senders` gives its names (553 otherwise).

use super::session::{Peer, Session, Step, not_implemented};
use crate::smtp::proto::reply::{Enhanced, Reply};
use crate::tls::ClientTrust;
use std::sync::Arc;
use tokio::io::{AsyncRead, AsyncWrite};

/// A trusted client certificate: it lets the client relay.
#[derive(Debug)]
pub(super) struct ClientCert {
    pub(super) fingerprint: String,
    /// The sender patterns `access.client_cert_senders` gives the names in
    /// the certificate; `None`: any sender.
    senders: Option<Vec<String>>,
}

impl ClientCert {
    /// Whether MAIL FROM `sender` is one this certificate may use. The null
    /// sender always is: bounces from the client must get through.
    pub(super) fn may_send_as(&self, sender: &str) -> bool {
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

impl Session<'_> {
    /// STARTTLS is offered on TCP when a certificate is loaded, until TLS
    /// is up.
    pub(super) fn starttls_offered(&self) -> bool {
        self.security.tls.is_some() && self.tls.is_none() && matches!(self.peer, Peer::Tcp(_))
    }

    pub(super) fn starttls(&mut self) -> Step {
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
}

/// The TLS handshake, over by `deadline` (the session loop sets it); `None`
/// (logged) when it fails. On success the session is marked encrypted.
pub(super) async fn handshake<S>(
    session: &mut Session<'_>,
    acceptor: Arc<rustls::ServerConfig>,
    stream: S,
    deadline: tokio::time::Instant,
) -> Option<tokio_rustls::server::TlsStream<S>>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let accept = tokio_rustls::TlsAcceptor::from(acceptor).accept(stream);
    let tls = match tokio::time::timeout_at(deadline, accept).await {
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
    tracing::info!(event = "tls", "{trust} TLS connection established from {}: {description}", session.peer);
    Some(tls)
}

#[cfg(test)]
mod tests {
    use super::*;

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
}
