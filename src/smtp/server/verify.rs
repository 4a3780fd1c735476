//! The session's side of `[verify]` (`crate::verify`): SPF at MAIL, DKIM,
//! DMARC and ARC on the whole message at the end of DATA, and the
//! Authentication-Results header put on top of it (below this hop's
//! `Received:`, as Postfix places a milter's header). The results in
//! short go to the log and onto the envelope, for `queue show`.
//!
//! Clients the hub vouches for (trusted networks, authenticated, a
//! trusted client certificate), local submissions (`sendmail -bs`) and
//! the reinjection listener are never checked.

use super::session::{Peer, Session};
use crate::ingress::MessageWriter;
use crate::smtp::proto::reply::Reply;
use crate::verify::{Action, Verifier};
use std::sync::Arc;

impl Session<'_> {
    /// The checks this client's mail goes through, if any.
    pub(super) fn verifier(&self) -> Option<Arc<Verifier>> {
        let Peer::Tcp(_) = self.peer else { return None };
        if self.ingress.is_reinjection() || self.vouched_for() {
            return None;
        }
        self.security.verify.clone()
    }

    /// Whether the message about to be received is kept in memory until
    /// its end (for the milters or for DKIM and DMARC).
    pub(super) fn holds_message(&self) -> bool {
        self.milters_want_message() || self.verifier().is_some()
    }

    /// SPF at MAIL; the refusal `verify.spf_fail_action` calls for.
    pub(super) async fn check_spf(&mut self, sender: &str) -> Option<Reply> {
        let verifier = self.verifier().filter(|v| v.checks_spf())?;
        let Peer::Tcp(addr) = self.peer else { return None };
        let helo = self.helo.clone().unwrap_or_default();
        let (checks, refusal) = verifier.spf(addr.ip(), &helo, sender, &self.config.hostname).await;
        self.defence.spf = Some(checks);
        refusal
    }

    /// The end of a message held whole: the checks, their header added on
    /// top of `text`, and what the result does (`Err`: the refusal; a
    /// hold marks `writer`). Logs one line of results.
    pub(super) async fn verify_message(&mut self, writer: &mut MessageWriter, text: &mut Vec<u8>) -> Result<(), Reply> {
        let Some(verifier) = self.verifier() else { return Ok(()) };
        let Peer::Tcp(addr) = self.peer else { return Ok(()) };
        let spf = self.defence.spf.take();
        let verdict = verifier.message(text, spf.as_ref(), addr.ip()).await;
        let id = writer.id().to_string();
        tracing::info!("{id}: verify: {} client={}", verdict.log, self.peer);
        writer.set_auth_results(verdict.log.clone());
        match verdict.action {
            Action::Accept => {}
            Action::Refuse(reply) => return Err(reply),
            Action::Hold(reason) => {
                tracing::info!("{id}: hold: END-OF-MESSAGE from {}: {reason}", self.peer);
                writer.hold();
            }
        }
        let forged = verifier.remove_forged(text);
        if forged > 0 {
            tracing::info!("{id}: verify: removed {forged} Authentication-Results field(s) claiming to be ours");
        }
        text.splice(0..0, verdict.header.into_bytes());
        Ok(())
    }
}
