//! AUTH (RFC 4954, PLAIN and LOGIN): the checks before the exchange, its
//! steps, the verification of the credentials and the failure limits.
//!
//! The exchange is small and runs inside the loop: the session answers 334
//! and takes the next line as the client's response. The password check
//! runs off the async threads, and a failure is answered only after
//! `auth.failure_delay`. Each attempt is counted against the client (IPv6
//! by /64) and the user before its check, and given back on success; a
//! client or user with too many is refused (454) for a while
//! (`auth.max_failures`, `auth.failure_window`). Both kinds of failure,
//! a wrong password and a refusal by the limit, are counted in
//! `posthorn_auth_failures_total`.

use super::session::{Peer, Session, Step, not_implemented};
use crate::auth;
use crate::message::outcome::printable;
use crate::metrics::{AuthFailure, AuthMechanism};
use crate::smtp::proto::command::Verb;
use crate::smtp::proto::reply::{Enhanced, Reply};
use std::fmt;

/// An AUTH exchange waiting for the client's next line.
#[derive(Debug)]
pub(super) enum Pending {
    PlainResponse,
    LoginUser,
    LoginPassword { user: String },
}

/// Credentials to check, and the mechanism they came with.
pub(super) struct Credentials {
    mechanism: &'static str,
    user: String,
    password: Vec<u8>,
}

impl fmt::Debug for Credentials {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Credentials").field("mechanism", &self.mechanism).field("user", &self.user).finish()
    }
}

impl Session<'_> {
    /// AUTH is offered when users are configured, over TLS unless
    /// `auth.allow_plaintext`, and not once authenticated.
    pub(super) fn auth_offered(&self) -> bool {
        self.security.users.is_some() && self.user.is_none() && (self.tls.is_some() || self.config.auth.allow_plaintext)
    }

    /// AUTH: the checks RFC 4954 asks for, then the mechanism's first step.
    pub(super) fn auth(&mut self, mechanism: &str, initial: Option<String>) -> Step {
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
            self.security.metrics.auth_failed(AuthMechanism::named(mechanism), AuthFailure::Limited);
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
    pub(super) fn auth_line(&mut self, line: &[u8]) -> Step {
        match self.pending.take() {
            Some(pending) => {
                let step = self.auth_response(pending, line);
                if let Step::Reply(reply) = &step
                    && !exchange_goes_on(&step)
                {
                    self.stats.record(Some(Verb::Auth), reply.is_positive());
                }
                step
            }
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

    /// The client's address, which AUTH failures are counted against.
    fn client_ip(&self) -> Option<std::net::IpAddr> {
        match &self.peer {
            Peer::Tcp(addr) => Some(addr.ip()),
            Peer::Local { .. } => None,
        }
    }

    /// Counts the attempt before its check (`AuthLimiter::reserve`); the
    /// refusal to send when the client or the user has no attempts left.
    fn auth_reserve(&self, mechanism: &str, user: &str) -> Option<Reply> {
        if self.security.limiter.reserve(self.client_ip(), Some(user)) {
            return None;
        }
        tracing::warn!("{}: too many failed AUTH attempts (client or user {user:?}); AUTH refused", self.peer);
        self.security.metrics.auth_failed(AuthMechanism::named(mechanism), AuthFailure::Limited);
        Some(Reply::new(454, Enhanced(4, 7, 0), "Too many failed authentication attempts, try again later"))
    }

    /// The verdict on checked credentials. A failure was counted already,
    /// when the attempt was reserved; a success gives it back.
    fn auth_verified(&mut self, mechanism: &'static str, user: String, ok: bool) -> Reply {
        if ok {
            self.security.limiter.release(self.client_ip(), Some(&user));
            self.user = Some(user);
            self.sasl_method = Some(mechanism);
            Reply::new(235, Enhanced(2, 7, 0), "Authentication successful")
        } else {
            // Postfix's words, which fail2ban's postfix-sasl filter and the
            // Postfix exporter match (`SASL PLAIN authentication failed:`).
            let shown = printable(&user);
            tracing::warn!(
                sasl_username = shown.as_str(),
                client_addr = self.peer.addr(),
                event = "auth_failed",
                "{}: SASL {mechanism} authentication failed: authentication failure, sasl_username={shown}",
                self.peer
            );
            self.security.metrics.auth_failed(AuthMechanism::named(mechanism), AuthFailure::Credentials);
            Reply::new(535, Enhanced(5, 7, 8), "Authentication credentials invalid")
        }
    }
}

/// Checks credentials off the async threads; a failure is answered only
/// after `auth.failure_delay`, which slows password guessing down.
pub(super) async fn verify(session: &mut Session<'_>, credentials: Credentials) -> Reply {
    let Credentials { mechanism, user, password } = credentials;
    if let Some(refused) = session.auth_reserve(mechanism, &user) {
        session.stats.record(Some(Verb::Auth), false);
        return refused;
    }
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
    let reply = session.auth_verified(mechanism, user, ok);
    session.stats.record(Some(Verb::Auth), reply.is_positive());
    reply
}

/// An AUTH step that leaves the exchange open (a 334 challenge, or
/// credentials about to be checked): the command is counted, as Postfix
/// counts it (`auth=0/1`), only once the exchange has an outcome.
pub(super) fn exchange_goes_on(step: &Step) -> bool {
    match step {
        Step::Verify(_) => true,
        Step::Reply(reply) => reply.code == 334,
        _ => false,
    }
}
