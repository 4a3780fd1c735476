//! The session's side of the milters (`milter.servers`): one call per
//! phase from the session loop, which hands the milters what the session
//! accepted, with the macros they read, and turns their verdicts into the
//! reply the client gets.
//!
//! - connect: the conversations open when the session starts
//!   (`connect`); a refusal there answers every later command.
//! - HELO/EHLO, MAIL, RCPT, RSET: after the session accepted the command
//!   (`after_command`); a refusal replaces the session's 250 and undoes
//!   what the command did (the sender, the recipient).
//! - the message: held in memory when milters are configured (up to
//!   `smtp.max_message_size`, as Postfix's cleanup holds it in its queue
//!   file before asking them), then DATA, header, body and the end of it
//!   (`end_of_message`); their changes apply to what is written to the
//!   spool, and their reply is the client's.
//!
//! Mail through the reinjection listener (back from the content filter)
//! and `sendmail -bs` sessions are not asked: the first has been, the
//! second is for `milter.non_smtpd_milters` at the pickup.

use super::session::{Peer, Session};
use crate::ingress::MessageWriter;
use crate::ingress::milters::{self, Done};
use crate::milter::client::{Macros, Milters, Verdict};
use crate::milter::edit::Message;
use crate::milter::proto::Family;
use crate::smtp::proto::command::{BodyType, Verb};
use crate::smtp::proto::reply::Reply;

/// The name Postfix's macro `v` and Sendmail's `{daemon_name}` stand for.
const DAEMON: &str = "posthorn";

impl Session<'_> {
    /// Opens the session's milter conversations and tells them of the
    /// client; nothing when none are configured.
    pub(super) async fn milters_connect(&mut self) {
        let settings = &self.config.milter;
        let Peer::Tcp(addr) = &self.peer else { return };
        if settings.servers.is_empty() || self.ingress.is_reinjection() {
            return;
        }
        let macros = self.macros(&[]);
        let family = Family::Inet(*addr);
        self.milters = Some(Box::new(Milters::connect(settings, &settings.servers, "unknown", family, &macros).await));
    }

    /// Asks the milters about the command just answered with `reply`
    /// (when the session accepted it); `had_mail` and `rcpts` are the
    /// session's state before it. Returns the reply to send.
    pub(super) async fn milters_after(&mut self, had_mail: bool, rcpts: usize, reply: Reply) -> Reply {
        let Some(verb) = self.last_verb else { return reply };
        if self.milters.is_none() || !reply.is_positive() {
            return reply;
        }
        let verdict = match verb {
            Verb::Helo | Verb::Ehlo => {
                let name = self.helo.clone().unwrap_or_default();
                let macros = self.macros(&[]);
                self.milters_mut().helo(&name, &macros).await
            }
            Verb::Mail if !had_mail && self.mail.is_some() => {
                let args = self.mail_args();
                let macros = self.macros(&[("{mail_addr}", self.sender())]);
                self.milters_mut().mail(&args, &macros).await
            }
            Verb::Rcpt if self.rcpts.len() > rcpts => {
                let address = self.rcpts.last().map(|r| r.address.clone()).unwrap_or_default();
                let macros = self.macros(&[("{mail_addr}", self.sender()), ("{rcpt_addr}", address.clone())]);
                self.milters_mut().rcpt(&[format!("<{address}>")], &macros).await
            }
            Verb::Rset if had_mail => {
                self.milters_mut().abort().await;
                Verdict::Continue
            }
            _ => Verdict::Continue,
        };
        match verdict {
            Verdict::Continue => reply,
            Verdict::Discard => {
                self.milter_discard = true;
                reply
            }
            Verdict::Refuse(refusal) => self.milter_refused(verb, refusal).await,
        }
    }

    /// Undoes the command a milter refused, logs it, and gives its reply.
    async fn milter_refused(&mut self, verb: Verb, reply: Reply) -> Reply {
        let from = self.sender();
        match verb {
            Verb::Mail => {
                self.log_milter_reject(verb, &reply, Some((&from, None)));
                self.mail = None;
                self.milters_mut().abort().await;
            }
            Verb::Rcpt => {
                let to = self.rcpts.pop().map(|r| r.address).unwrap_or_default();
                self.log_milter_reject(verb, &reply, Some((&from, Some(&to))));
            }
            Verb::Helo | Verb::Ehlo => {
                self.log_milter_reject(verb, &reply, None);
                // As if the greeting had not been given: MAIL needs another.
                self.helo = None;
            }
            _ => self.log_milter_reject(verb, &reply, None),
        }
        reply
    }

    /// Whether the message about to be received is to be held for the
    /// milters.
    pub(super) fn milters_want_message(&self) -> bool {
        self.milters.is_some()
    }

    /// The end of a message held for the milters: asks them, applies
    /// their changes, writes it and commits it (or not). Returns what
    /// `ReceivingMessage::finish` would: the queue id or the refusal.
    pub(super) async fn milters_end_of_message(
        &mut self,
        writer: MessageWriter,
        text: Vec<u8>,
    ) -> Result<String, Reply> {
        let id = writer.id().to_string();
        let message = Message::parse(&text);
        drop(text);
        let macros = self.macros(&[("i", id)]);
        let outcome = self.milters_mut().message(&macros, &message.fields, &message.body, &macros).await;
        let discard = std::mem::take(&mut self.milter_discard);
        let client = self.peer.to_string();
        match milters::finish(writer, message, outcome, discard, &client).await {
            Ok(Done::Queued(id) | Done::Discarded(id)) => Ok(id),
            Ok(Done::Refused(reply)) => Err(reply),
            Err(e) => Err(e.reply()),
        }
    }

    /// Ends the conversations with QUIT.
    pub(super) async fn milters_quit(&mut self) {
        if let Some(milters) = self.milters.take() {
            milters.quit().await;
        }
    }

    fn milters_mut(&mut self) -> &mut Milters {
        self.milters.as_mut().expect("milters configured")
    }

    fn sender(&self) -> String {
        self.mail.as_ref().map(|m| m.sender.clone()).unwrap_or_default()
    }

    /// MAIL's arguments as the milter sees them: `<sender>`, then the
    /// ESMTP parameters.
    fn mail_args(&self) -> Vec<String> {
        let Some(mail) = &self.mail else { return Vec::new() };
        let mut args = vec![format!("<{}>", mail.sender)];
        if let Some(size) = mail.size {
            args.push(format!("SIZE={size}"));
        }
        match mail.body {
            Some(BodyType::SevenBit) => args.push("BODY=7BIT".into()),
            Some(BodyType::EightBitMime) => args.push("BODY=8BITMIME".into()),
            Some(BodyType::BinaryMime) => args.push("BODY=BINARYMIME".into()),
            None => {}
        }
        if mail.smtputf8 {
            args.push("SMTPUTF8".into());
        }
        if let Some(ret) = &mail.ret {
            args.push(format!("RET={ret}"));
        }
        if let Some(envid) = &mail.envid {
            args.push(format!("ENVID={envid}"));
        }
        args
    }

    /// The macros of every stage (the milter picks those it wants, or
    /// gets them all), and `extra` for this one.
    fn macros(&self, extra: &[(&str, String)]) -> Macros {
        let mut m: Macros = vec![
            ("j".into(), self.config.hostname.clone()),
            ("{daemon_name}".into(), DAEMON.into()),
            ("v".into(), format!("{DAEMON} {}", env!("CARGO_PKG_VERSION"))),
        ];
        if let Peer::Tcp(addr) = &self.peer {
            let ip = addr.ip().to_canonical().to_string();
            m.push(("_".into(), format!("unknown [{ip}]")));
            m.push(("{client_addr}".into(), ip));
            m.push(("{client_port}".into(), addr.port().to_string()));
            m.push(("{client_name}".into(), "unknown".into()));
            m.push(("{client_ptr}".into(), "unknown".into()));
        }
        if let Some(addr) = self.local_addr {
            m.push(("{if_addr}".into(), addr.ip().to_canonical().to_string()));
            m.push(("{daemon_addr}".into(), addr.ip().to_canonical().to_string()));
            m.push(("{daemon_port}".into(), addr.port().to_string()));
        }
        if let Some(helo) = &self.helo {
            m.push(("s".into(), helo.clone()));
        }
        if let Some(tls) = &self.tls {
            let version = tls.split_whitespace().next().unwrap_or("").to_string();
            m.push(("{tls_version}".into(), version));
        }
        if let Some(user) = &self.user {
            m.push(("{auth_authen}".into(), user.clone()));
            m.push(("{auth_type}".into(), self.sasl_method.unwrap_or("").to_string()));
        }
        m.extend(extra.iter().map(|(n, v)| (n.to_string(), v.clone())));
        m
    }

    /// Postfix's line for a milter's refusal of a command.
    fn log_milter_reject(&self, verb: Verb, reply: &Reply, envelope: Option<(&str, Option<&str>)>) {
        self.log_refusal("milter-reject", verb, reply, envelope);
    }
}
