//! MAIL FROM and RCPT TO, one function per verb returning a `Reply`, and
//! the transaction they build for DATA or BDAT to open.
//!
//! MAIL checks the order of commands, the parameters, the size declared and
//! who may send: on a submission port only an authenticated client, with a
//! client certificate only the senders it was given. RCPT asks the relay
//! rule (`access`) and the ingress (aliases, known local users). Refusals
//! are logged the way Postfix logs them (`NOQUEUE: reject:`).

use super::access;
use super::anvil::Topic;
use super::session::{Listener, Peer, Session};
use crate::ingress::{Arrival, Protocol, RcptIn, Transaction};
use crate::smtp::proto::command::{BodyType, MailFrom, RcptTo, Verb};
use crate::smtp::proto::reply::{Enhanced, Reply};

impl Session<'_> {
    pub(super) fn mail(&mut self, mail: MailFrom) -> Reply {
        let reply = self.check_mail(&mail);
        self.mail_checked(mail, reply)
    }

    /// MAIL once checked: refused (and logged) with `reply`, or accepted.
    pub(super) fn mail_checked(&mut self, mail: MailFrom, reply: Option<Reply>) -> Reply {
        match reply {
            Some(reply) => {
                self.log_reject(Verb::Mail, &reply, Some((&mail.sender, None)));
                reply
            }
            None => {
                self.mail = Some(mail);
                Reply::new(250, Enhanced(2, 1, 0), "Ok")
            }
        }
    }

    /// Why MAIL is refused, if it is.
    pub(super) fn check_mail(&self, mail: &MailFrom) -> Option<Reply> {
        if self.helo.is_none() {
            return Some(Reply::new(503, Enhanced(5, 5, 1), "Error: send HELO/EHLO first"));
        }
        if self.mail.is_some() {
            return Some(Reply::new(503, Enhanced(5, 5, 1), "Error: nested MAIL command"));
        }
        if !self.esmtp && mail.has_parameters() {
            return Some(Reply::new(555, Enhanced(5, 5, 4), "Error: MAIL parameters need EHLO"));
        }
        if mail.body == Some(BodyType::BinaryMime) {
            // RFC 3030's BINARYMIME is not offered (CHUNKING is): binary
            // content could not be passed on to a next hop without it.
            return Some(Reply::new(555, Enhanced(5, 5, 4), "Error: BODY=BINARYMIME is not supported"));
        }
        if self.kind != Listener::Smtp && self.user.is_none() {
            // RFC 6409 4.3: submission needs an authenticated client.
            return Some(Reply::new(530, Enhanced(5, 7, 0), "Authentication required"));
        }
        if let Some(cert) = self.client_cert.as_ref().filter(|_| self.user.is_none())
            && !cert.may_send_as(&mail.sender)
        {
            return Some(Reply::new(553, Enhanced(5, 7, 1), "Sender address rejected: not owned by certificate"));
        }
        if mail.trace.is_some() && !self.vouched_for() {
            // A stranger's trace id would tie its mail to another message's
            // history in our logs and `queue find`.
            return Some(Reply::new(555, Enhanced(5, 5, 4), "Error: TRACE is accepted from trusted clients only"));
        }
        if mail.size.is_some_and(|s| s > self.config.smtp.max_message_size) {
            return Some(Reply::new(552, Enhanced(5, 3, 4), "Message size exceeds fixed limit"));
        }
        if let Err(low) = self.ingress.room() {
            // Below `queue.min_free` (Postfix refuses at MAIL too): the
            // client keeps the message instead of sending it for nothing.
            return Some(low.reply());
        }
        // A trusted client certificate counts as an authenticated identity.
        let identity = self.user.as_deref().or(self.client_cert.as_ref().map(|c| c.fingerprint.as_str()));
        access::check_sender_literal(&self.config.access, &self.peer, identity, &mail.sender).err()
    }

    pub(super) fn rcpt(&mut self, rcpt: RcptTo) -> Reply {
        match self.check_rcpt(&rcpt) {
            Err(reply) => reply,
            Ok(()) => self.add_rcpt(rcpt),
        }
    }

    /// Why RCPT is refused, if it is; a refusal is logged.
    pub(super) fn check_rcpt(&mut self, rcpt: &RcptTo) -> Result<(), Reply> {
        let Some(mail) = &self.mail else {
            return Err(Reply::new(503, Enhanced(5, 5, 1), "Error: need MAIL command"));
        };
        if self.chunks.is_some() {
            // The message is already arriving; its envelope is fixed.
            return Err(Reply::new(503, Enhanced(5, 5, 1), "Error: RCPT after BDAT"));
        }
        self.rcpt_tried += 1;
        let over_limit = self.rcpts.len() >= self.config.smtp.max_recipients;
        let refused = if !self.esmtp && rcpt.has_parameters() {
            Some(Reply::new(555, Enhanced(5, 5, 4), "Error: RCPT parameters need EHLO"))
        } else if rcpt.needs_smtputf8() && !mail.smtputf8 {
            Some(Reply::new(553, Enhanced(5, 6, 7), "Non-ASCII address requires SMTPUTF8"))
        } else if over_limit {
            Some(Reply::new(452, Enhanced(4, 5, 3), "Error: too many recipients"))
        } else {
            // A trusted client certificate counts as an authenticated identity.
            let identity = self.user.as_deref().or(self.client_cert.as_ref().map(|c| c.fingerprint.as_str()));
            access::check_relay(&self.config.access, &self.peer, identity, &rcpt.address)
                .and_then(|()| self.ingress.check_recipient(&rcpt.address))
                .err()
        };
        if let Some(reply) = refused {
            // One line per client for a flood of recipients over the limit,
            // then a summary (issue 12: 2.36 M lines in 8 minutes).
            let repeated = reply.code == 452 && over_limit && self.repeats(Topic::TooManyRecipients);
            if !repeated {
                let from = mail.sender.clone();
                self.log_reject(Verb::Rcpt, &reply, Some((&from, Some(&rcpt.address))));
            }
            return Err(reply);
        }
        Ok(())
    }

    /// Adds a recipient that passed every check.
    pub(super) fn add_rcpt(&mut self, rcpt: RcptTo) -> Reply {
        let mut rcpt = rcpt;
        if rcpt.address == "postmaster" {
            // The bare postmaster (RFC 5321 4.5.1) is this host's.
            rcpt.address = format!("postmaster@{}", self.hostname());
        }
        // A repeated recipient is accepted but kept once: one copy is enough.
        if !self.rcpts.iter().any(|r| r.address == rcpt.address) {
            self.rcpts.push(rcpt);
        }
        Reply::new(250, Enhanced(2, 1, 5), "Ok")
    }

    /// The transaction MAIL and RCPT built, ready for its message, or why
    /// it is not ready.
    pub(super) fn transaction(&self) -> Result<Transaction, Reply> {
        let Some(mail) = &self.mail else {
            return Err(Reply::new(503, Enhanced(5, 5, 1), "Error: need MAIL command"));
        };
        if self.rcpts.is_empty() {
            return Err(if self.rcpt_tried > 0 {
                Reply::new(554, Enhanced(5, 5, 1), "Error: no valid recipients")
            } else {
                Reply::new(503, Enhanced(5, 5, 1), "Error: need RCPT command")
            });
        }
        let protocol = match (&self.peer, self.esmtp, self.tls.is_some(), self.user.is_some()) {
            (Peer::Local { .. }, ..) => Protocol::Local,
            (Peer::Tcp(_), true, false, false) => Protocol::Esmtp,
            (Peer::Tcp(_), true, true, false) => Protocol::Esmtps,
            (Peer::Tcp(_), true, false, true) => Protocol::Esmtpa,
            (Peer::Tcp(_), true, true, true) => Protocol::Esmtpsa,
            (Peer::Tcp(_), false, ..) => Protocol::Smtp,
        };
        let (client, local_user) = match &self.peer {
            Peer::Tcp(addr) => (Some(*addr), None),
            Peer::Local { user } => (None, Some(user.clone())),
        };
        Ok(Transaction {
            sender: mail.sender.clone(),
            recipients: self
                .rcpts
                .iter()
                .map(|r| RcptIn { address: r.address.clone(), notify: r.notify.clone(), orcpt: r.orcpt.clone() })
                .collect(),
            body: mail.body.unwrap_or(BodyType::SevenBit),
            smtputf8: mail.smtputf8,
            ret: mail.ret.clone(),
            envid: mail.envid.clone(),
            trace_id: mail.trace.clone(),
            forwarded_by: None,
            origin: Arrival {
                protocol,
                helo: self.helo.clone(),
                client,
                local_user,
                auth_user: self.user.clone().filter(|_| self.config.tls.received_auth_user),
                sasl: self.sasl_method.zip(self.user.clone()),
                trusted: self.vouched_for(),
            },
        })
    }

    /// The client is one we vouch for: authenticated, with a trusted client
    /// certificate, or in a trusted network.
    pub(super) fn vouched_for(&self) -> bool {
        self.user.is_some() || self.client_cert.is_some() || access::is_trusted(&self.config.access, &self.peer)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ingress::test_support::queue_ingress;
    use crate::smtp::server::conn::serve;
    use crate::smtp::server::session::Security;
    use crate::smtp::server::test_support::{
        STRANGER, TRUSTED, check_dialogs, config, converse, lines, replies, short, talk, tcp,
    };

    /// The order of commands, MAIL and RCPT parameters, limits and relaying.
    #[tokio::test]
    async fn mail_dialogs() {
        let ehlo = "EHLO client.example";
        let mail = "MAIL FROM:<sender@example.net>";
        let rcpt = "RCPT TO:<user@example.org>";
        check_dialogs(vec![
            (
                "HELO takes no ESMTP parameters",
                TRUSTED,
                lines(&[
                    "HELO client",
                    "MAIL FROM:<a@example.net> SIZE=10",
                    mail,
                    "RCPT TO:<u@example.org> NOTIFY=NEVER",
                ]),
                vec!["250", "555 5.5.4", "250 2.1.0", "555 5.5.4"],
            ),
            (
                "null sender",
                TRUSTED,
                lines(&[ehlo, "MAIL FROM:<>", rcpt, "DATA", "bounce", ".", "QUIT"]),
                vec!["250", "250 2.1.0", "250 2.1.5", "354", "250 2.0.0", "221 2.0.0"],
            ),
            (
                "out of order",
                TRUSTED,
                lines(&[mail, ehlo, rcpt, "DATA", mail, mail, "DATA", rcpt, "QUIT"]),
                vec![
                    "503 5.5.1",
                    "250",
                    "503 5.5.1",
                    "503 5.5.1",
                    "250 2.1.0",
                    "503 5.5.1",
                    "503 5.5.1",
                    "250 2.1.5",
                    "221 2.0.0",
                ],
            ),
            (
                "no valid recipients",
                TRUSTED,
                lines(&[ehlo, mail, "RCPT TO:<jø@example.org>", "DATA", "QUIT"]),
                vec!["250", "250 2.1.0", "553 5.6.7", "554 5.5.1", "221 2.0.0"],
            ),
            (
                "SIZE against the limit",
                TRUSTED,
                lines(&[ehlo, "MAIL FROM:<> SIZE=5001", "MAIL FROM:<> SIZE=5000"]),
                vec!["250", "552 5.3.4", "250 2.1.0"],
            ),
            (
                "too many recipients",
                TRUSTED,
                lines(&[
                    ehlo,
                    mail,
                    "RCPT TO:<a@example.org>",
                    "RCPT TO:<b@example.org>",
                    "RCPT TO:<c@example.org>",
                    "RCPT TO:<d@example.org>",
                    "DATA",
                    "x",
                    ".",
                ]),
                vec!["250", "250 2.1.0", "250 2.1.5", "250 2.1.5", "250 2.1.5", "452 4.5.3", "354", "250 2.0.0"],
            ),
            (
                "SMTPUTF8",
                TRUSTED,
                lines(&[
                    ehlo,
                    "MAIL FROM:<jø@example.net>",
                    "MAIL FROM:<jø@example.net> SMTPUTF8",
                    "RCPT TO:<ü@bücher.example.org>",
                    "RSET",
                    mail,
                    "RCPT TO:<ü@example.org>",
                ]),
                vec!["250", "553 5.6.7", "250 2.1.0", "250 2.1.5", "250 2.0.0", "250 2.1.0", "553 5.6.7"],
            ),
            (
                "relay access from a stranger",
                STRANGER,
                lines(&[
                    ehlo,
                    mail,
                    "RCPT TO:<someone@elsewhere.example>",
                    rcpt,
                    "RCPT TO:<Postmaster>",
                    "DATA",
                    "x",
                    ".",
                ]),
                vec!["250", "250 2.1.0", "554 5.7.1", "250 2.1.5", "250 2.1.5", "354", "250 2.0.0"],
            ),
            (
                "relay access from a trusted network",
                TRUSTED,
                lines(&[ehlo, mail, "RCPT TO:<someone@elsewhere.example>"]),
                vec!["250", "250 2.1.0", "250 2.1.5"],
            ),
        ])
        .await;
    }

    #[tokio::test]
    async fn envelope_carries_the_transaction() {
        let config = config("");
        let input = lines(&[
            "EHLO client.example",
            "MAIL FROM:<s@example.net> BODY=8BITMIME RET=HDRS ENVID=abc+2Bdef SMTPUTF8",
            "RCPT TO:<a@example.org> NOTIFY=SUCCESS,FAILURE ORCPT=rfc822;a@example.org",
            "RCPT TO:<a@example.org>",
            "RCPT TO:<postmaster>",
            "DATA",
            "Subject: x",
            "",
            "b\u{f8}dy",
            ".",
        ]);
        let (got, spool, _dir) = converse(&config, tcp(TRUSTED), &input).await;
        let last = got.last().unwrap();
        assert_eq!(short(last), "250 2.0.0", "{got:?}");
        let id = last.lines[0].trim_start_matches("Ok: queued as ");
        let (_, env) = spool.find(id).unwrap();
        assert_eq!(env.sender, "s@example.net");
        assert!(env.eight_bit && env.smtputf8);
        assert_eq!(env.ret.as_deref(), Some("HDRS"));
        assert_eq!(env.envid.as_deref(), Some("abc+2Bdef"));
        let rcpts: Vec<_> =
            env.recipients.iter().map(|r| (r.address.as_str(), r.notify.as_deref(), r.orcpt.as_deref())).collect();
        assert_eq!(
            rcpts,
            [
                ("a@example.org", Some("SUCCESS,FAILURE"), Some("rfc822;a@example.org")),
                ("postmaster@mx.test", None, None),
            ]
        );
        assert_eq!(env.origin.protocol, "ESMTP");
        assert_eq!(env.origin.helo.as_deref(), Some("client.example"));
        assert_eq!(env.origin.client.as_deref(), Some("10.0.0.5"));
        assert!(spool.read_body(id).unwrap().ends_with("Subject: x\r\n\r\nbødy\r\n".as_bytes()));
    }

    #[tokio::test]
    async fn local_peer_relays_anywhere() {
        let config = config("");
        let input = lines(&[
            "HELO localhost",
            "MAIL FROM:<cron@vm1>",
            "RCPT TO:<ops@elsewhere.example>",
            "DATA",
            "x",
            ".",
            "QUIT",
        ]);
        let (got, spool, _dir) = converse(&config, Peer::Local { user: "cron".into() }, &input).await;
        let codes: Vec<String> = got.iter().map(short).collect();
        assert_eq!(codes, ["220", "250", "250 2.1.0", "250 2.1.5", "354", "250 2.0.0", "221 2.0.0"]);
        let id = got[5].lines[0].trim_start_matches("Ok: queued as ");
        let (_, env) = spool.find(id).unwrap();
        assert_eq!(env.origin.protocol, "local");
        assert_eq!(env.origin.user.as_deref(), Some("cron"));
    }

    #[tokio::test]
    async fn submission_wants_auth_before_mail() {
        let config = config("");
        let dir = tempfile::tempdir().unwrap();
        let (ingress, _spool) = queue_ingress(dir.path(), &config);
        let (client, server) = tokio::io::duplex(1 << 16);
        let input = lines(&["EHLO c.example", "MAIL FROM:<a@c.example>", "QUIT"]);
        let security = Security::none();
        let session = serve(server, tcp("10.1.2.3:4"), Listener::Submission, &config, &ingress, &security, None);
        let ((), output) = tokio::join!(session, talk(client, &input, false));
        let got: Vec<String> = replies(&output).iter().map(short).collect();
        // Even from a trusted network: submission means AUTH (RFC 6409 4.3).
        assert_eq!(got, ["220", "250", "530 5.7.0", "221 2.0.0"], "{output}");
    }
}
