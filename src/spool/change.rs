//! Operator changes to queued messages, on the files: delete, hold,
//! freeze, release, requeue. One implementation for both callers: the
//! daemon's scheduler (after it has stopped the message's delivery) and the
//! queue commands acting on the spool directly while the daemon is down
//! (holding the spool lock, so that no daemon starts under them).
//!
//! Each message is one envelope change (an unlink, or a rewrite and a
//! rename, see `Spool::hold`), done on several threads; the directories are
//! fsynced once per batch, not once per message, and only then is the
//! batch reported done. Deleted messages lose their envelope first and
//! their body afterwards, so a crash in between leaves orphan bodies, which
//! start-up recovery sets aside in `corrupt/` (docs/spool.md).

use super::{Spool, State, on_threads};
use std::io;

/// What an operator does to a message, on the files.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Change {
    Delete,
    Hold,
    /// Exim's freeze: on hold, marked frozen.
    Freeze,
    Release,
    /// Due now.
    Requeue,
}

/// When the bodies of deleted messages are unlinked.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Bodies {
    /// On a thread of their own, after the answer: the daemon's way, so the
    /// operator's command does not wait for them.
    Background,
    /// Before returning: a command about to exit.
    Now,
}

/// What a batch did: per message, the state it was found in (`None`: no
/// such message) or why it failed; and whether the directories' fsync,
/// which makes the batch durable, succeeded.
#[derive(Debug)]
pub(crate) struct Applied {
    pub(crate) results: Vec<io::Result<Option<State>>>,
    pub(crate) synced: io::Result<()>,
}

impl Spool {
    /// Applies `change` to every message of `ids`; results in order.
    pub(crate) fn apply(&self, change: Change, ids: &[String], bodies: Bodies) -> Applied {
        let results = match change {
            Change::Delete => self.delete_envelopes(ids),
            Change::Hold => on_threads(ids, |id| self.hold(id, false)),
            Change::Freeze => on_threads(ids, |id| self.hold(id, true)),
            Change::Release => on_threads(ids, |id| self.release(id)),
            Change::Requeue => on_threads(ids, |id| self.requeue(id)),
        };
        let synced = self.sync_states();
        if change == Change::Delete {
            let gone = ids.iter().zip(&results).filter(|(_, r)| matches!(r, Ok(Some(_)))).map(|(id, _)| id.clone());
            let gone: Vec<String> = gone.collect();
            match bodies {
                Bodies::Background => self.remove_bodies(gone),
                Bodies::Now => {
                    on_threads(&gone, |id| std::fs::remove_file(self.body_path(id)));
                }
            }
        }
        Applied { results, synced }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn delete_and_hold_report_where_each_message_was() {
        let dir = tempfile::tempdir().unwrap();
        let spool = Spool::open(dir.path(), None).unwrap();
        let mut ids = Vec::new();
        for _ in 0..3 {
            let env = super::super::tests::envelope(&spool);
            spool.commit_new(&env, spool.body_writer(&env.id), crate::spool::State::Incoming).await.unwrap();
            ids.push(env.id);
        }
        let held = spool.apply(Change::Hold, &ids[..1], Bodies::Now);
        assert!(matches!(held.results[..], [Ok(Some(State::Incoming))]), "{held:?}");
        let missing = "2ZZZZZZZZZZ".to_string();
        let all = [ids.clone(), vec![missing]].concat();
        let deleted = spool.apply(Change::Delete, &all, Bodies::Now);
        let found: Vec<Option<State>> = deleted.results.into_iter().map(Result::unwrap).collect();
        assert_eq!(found, [Some(State::Hold), Some(State::Incoming), Some(State::Incoming), None]);
        assert!(deleted.synced.is_ok());
        for id in &ids {
            assert!(!spool.body_path(id).exists(), "{id}: body left behind");
        }
    }
}
