//! The session's side of the defences a hub facing the internet runs
//! (issue 16): the policy services (`crate::policy`) asked at MAIL, RCPT
//! and DATA. The session calls here once per phase; what the services
//! are and what their answers mean lives in `policy`.
//!
//! Clients the hub vouches for (trusted networks, authenticated, a trusted
//! client certificate) are never asked about, as with Postfix's usual
//! `permit_mynetworks, permit_sasl_authenticated` before
//! `check_policy_service`.

use super::session::{Peer, Session, Step};
use crate::ingress::MessageWriter;
use crate::policy::{Query, Stage, Verdict, split_tls};
use crate::smtp::proto::command::{MailFrom, RcptTo, Verb};
use crate::smtp::proto::reply::{Enhanced, Reply};
use std::sync::atomic::{AtomicU64, Ordering};

/// Numbers the transactions of this process for `instance=`.
static TRANSACTIONS: AtomicU64 = AtomicU64::new(0);

/// What the defences keep for one transaction.
#[derive(Debug, Default)]
pub(super) struct Defence {
    /// `instance=`, fixed at the first question of the transaction.
    instance: Option<String>,
    /// Headers the policy services asked for (`PREPEND`).
    prepend: Vec<String>,
    /// The SPF results of MAIL (`[verify]`), for the end of DATA.
    pub(super) spf: Option<crate::verify::SpfChecks>,
}

/// A command whose answer waits for a policy service.
#[derive(Debug)]
pub(super) enum Ask {
    Mail(MailFrom),
    Rcpt(RcptTo),
}

impl Session<'_> {
    /// Whether the policy services are asked about this client at `stage`.
    fn asks_policy(&self, stage: Stage) -> bool {
        self.security.policy.is_some() && self.config.policy.asks_at(stage) && !self.vouched_for()
    }

    /// MAIL: answered now, or after the policy services (`Step::Ask`).
    pub(super) fn mail_step(&mut self, mail: MailFrom) -> Step {
        if self.asks_policy(Stage::Mail) || self.verifier().is_some_and(|v| v.checks_spf()) {
            Step::Ask(Ask::Mail(mail))
        } else {
            Step::Reply(self.mail(mail))
        }
    }

    /// RCPT: answered now, or after the policy services (`Step::Ask`).
    pub(super) fn rcpt_step(&mut self, rcpt: RcptTo) -> Step {
        if self.asks_policy(Stage::Rcpt) || self.screens_rcpt() {
            Step::Ask(Ask::Rcpt(rcpt))
        } else {
            Step::Reply(self.rcpt(rcpt))
        }
    }

    /// The request's attributes as this session knows them.
    fn policy_query(&mut self, stage: Stage, sender: &str, recipient: &str) -> Query {
        let instance = self
            .defence
            .instance
            .get_or_insert_with(|| {
                format!("{:x}.{:x}", std::process::id(), TRANSACTIONS.fetch_add(1, Ordering::Relaxed))
            })
            .clone();
        let (encryption_protocol, encryption_cipher, encryption_keysize) =
            self.tls.as_deref().map(split_tls).unwrap_or_default();
        let (client_address, client_port) = match &self.peer {
            Peer::Tcp(addr) => (Some(addr.ip()), Some(addr.port())),
            Peer::Local { .. } => (None, None),
        };
        Query {
            stage: Some(stage),
            protocol_name: if self.esmtp { "ESMTP" } else { "SMTP" }.into(),
            helo_name: self.helo.clone().unwrap_or_default(),
            queue_id: String::new(),
            sender: sender.to_string(),
            recipient: recipient.to_string(),
            recipient_count: self.rcpts.len(),
            client_address,
            client_port,
            server_address: None,
            server_port: None,
            instance,
            sasl_method: self.sasl_method.unwrap_or_default().to_string(),
            sasl_username: self.user.clone().unwrap_or_default(),
            ccert_fingerprint: self.client_cert.as_ref().map(|c| c.fingerprint.clone()).unwrap_or_default(),
            encryption_protocol,
            encryption_cipher,
            encryption_keysize,
            size: self.mail.as_ref().and_then(|m| m.size).unwrap_or(0),
            hostname: self.config.hostname.clone(),
        }
    }

    /// Asks the policy services; `Err` is the refusal to send.
    async fn ask_policy(&mut self, stage: Stage, sender: &str, recipient: &str, subject: &str) -> Result<(), Reply> {
        let Some(services) = self.security.policy.clone() else { return Ok(()) };
        let query = self.policy_query(stage, sender, recipient);
        match services.decide(&query, subject).await {
            Verdict::Accept { prepend } => {
                self.defence.prepend.extend(prepend);
                Ok(())
            }
            Verdict::Refuse(reply) => Err(reply),
        }
    }

    /// The DATA command once the transaction is ready: the policy
    /// services' last word (`policy.stages` with `data`).
    pub(super) async fn screen_data(&mut self) -> Result<(), Reply> {
        if !self.asks_policy(Stage::Data) {
            return Ok(());
        }
        let sender = self.mail.as_ref().map(|m| m.sender.clone()).unwrap_or_default();
        let refused = self.ask_policy(Stage::Data, &sender, "", "DATA").await;
        if let Err(reply) = &refused {
            self.log_reject(Verb::Data, reply, Some((&sender, None)));
        }
        refused
    }

    /// Writes the headers the policy services asked for at the top of a
    /// message just opened.
    pub(super) async fn write_prepended(&mut self, writer: &mut MessageWriter) -> Result<(), Reply> {
        for header in std::mem::take(&mut self.defence.prepend) {
            let line: String = header.chars().filter(|c| !c.is_control()).collect();
            writer
                .write(format!("{line}\r\n").as_bytes())
                .await
                .map_err(|_| Reply::new(451, Enhanced(4, 3, 0), "Error: queue file write error"))?;
        }
        Ok(())
    }

    /// Forgets the transaction's state (called by `reset`).
    pub(super) fn reset_defence(&mut self) {
        self.defence = Defence::default();
    }
}

/// Answers a command that waited for the policy services.
pub(super) async fn answer(session: &mut Session<'_>, ask: Ask) -> Reply {
    let (verb, reply) = match ask {
        Ask::Mail(mail) => {
            let mut refusal = session.check_mail(&mail);
            if refusal.is_none() {
                refusal = session.check_spf(&mail.sender).await;
            }
            if refusal.is_none() && session.asks_policy(Stage::Mail) {
                let subject = mail.sender.clone();
                refusal = session.ask_policy(Stage::Mail, &mail.sender, "", &subject).await.err();
            }
            (Verb::Mail, session.mail_checked(mail, refusal))
        }
        Ask::Rcpt(rcpt) => {
            let reply = match session.check_rcpt(&rcpt) {
                Err(reply) => reply,
                Ok(()) => {
                    let sender = session.mail.as_ref().map(|m| m.sender.clone()).unwrap_or_default();
                    // The DNS lists (`screen`) first, as postscreen comes
                    // before smtpd's restrictions.
                    let refused = match session.screen_rcpt().await {
                        Some(reply) => Err(reply),
                        None if session.asks_policy(Stage::Rcpt) => {
                            session.ask_policy(Stage::Rcpt, &sender, &rcpt.address, &rcpt.address).await
                        }
                        None => Ok(()),
                    };
                    match refused {
                        Ok(()) => session.add_rcpt(rcpt),
                        Err(reply) => {
                            session.log_reject(Verb::Rcpt, &reply, Some((&sender, Some(&rcpt.address))));
                            reply
                        }
                    }
                }
            };
            (Verb::Rcpt, reply)
        }
    };
    session.stats.record(Some(verb), reply.is_positive());
    reply
}
