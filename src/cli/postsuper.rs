//! `postsuper`: Postfix's queue superintendent, on posthorn's queue.
//!
//! `-d ID` deletes, `-h ID` puts on hold, `-H ID` releases from hold, `-r ID`
//! requeues (retry now); each may be repeated; `ALL` means every message
//! (narrowed by queue names given as operands: `postsuper -d ALL deferred`),
//! `-` reads ids from standard input, one per line. Messages go as
//! Postfix prints them on stderr: `postsuper: ID: removed` per message
//! named, then `postsuper: Deleted: N messages`. An invalid or unknown id
//! gets a warning naming it and the others are still done.
//!
//! Every change goes through the daemon (`act`), which stops a delivery in
//! flight first: when `postsuper -d ID` has returned, ID is not delivered.
//! With the daemon down, the command changes the files itself, holding the
//! spool lock (`postfix stop; postsuper -d ALL; postfix start`).

use super::act::{self, changed};
use super::exit;
use crate::config::Config;
use crate::queue::{ActResult, QueueAction};
use crate::spool::{Spool, State, id};
use std::io::BufRead;

const USAGE: &str = "usage: postsuper [-c config_dir] [-d queue_id (delete)] [-h queue_id (hold)] \
[-H queue_id (un-hold)] [-p (purge temporary files)] [-r queue_id (requeue)] [-s (structure fix)] [-v (verbose)] [queue...]";

/// The four operations, in the order Postfix reports them.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Op {
    Requeue,
    Delete,
    Hold,
    Release,
}

impl Op {
    fn done(self) -> &'static str {
        match self {
            Op::Requeue => "requeued",
            Op::Delete => "removed",
            Op::Hold => "placed on hold",
            Op::Release => "released from hold",
        }
    }
    fn summary(self) -> &'static str {
        match self {
            Op::Requeue => "Requeued",
            Op::Delete => "Deleted",
            Op::Hold => "Placed on hold",
            Op::Release => "Released from hold",
        }
    }
    /// The queues an operation looks in unless operands name others.
    fn default_states(self) -> &'static [State] {
        match self {
            Op::Delete | Op::Requeue => &State::QUEUED,
            Op::Hold => &[State::Incoming, State::Active, State::Deferred],
            Op::Release => &[State::Hold],
        }
    }
}

pub(crate) fn main(args: &[String]) -> u8 {
    let (opts, operands) = match super::getopt(args, "c:d:h:H:pr:sv") {
        Ok(parsed) => parsed,
        Err(e) => {
            eprintln!("postsuper: {e}");
            eprintln!("postsuper: fatal: {USAGE}");
            return exit::USAGE;
        }
    };
    let mut config_path = None;
    let mut names: Vec<(Op, String)> = Vec::new();
    for (c, value) in opts {
        let op = match c {
            'c' => {
                config_path = value.as_deref().map(super::config_arg);
                continue;
            }
            // Structure checks and temporary-file purges are the daemon's
            // start-up recovery here; accepted and nothing to do.
            'p' | 's' | 'v' => continue,
            'd' => Op::Delete,
            'h' => Op::Hold,
            'H' => Op::Release,
            'r' => Op::Requeue,
            _ => unreachable!("getopt only returns letters of the spec"),
        };
        names.push((op, value.unwrap_or_default()));
    }
    let mut queues = Vec::new();
    for name in &operands {
        match State::QUEUED.into_iter().find(|s| s.dir_name() == name) {
            Some(state) => queues.push(state),
            // Postfix's other queue directories hold no messages here.
            None if ["maildrop", "bounce", "defer", "trace", "flush", "saved", "corrupt"].contains(&name.as_str()) => {}
            None => {
                eprintln!("postsuper: fatal: invalid directory name: {name}");
                return exit::USAGE;
            }
        }
    }
    let config = match super::load_config(config_path.as_deref(), "postsuper") {
        Ok(c) => c,
        Err(code) => return code,
    };
    let spool = match act::spool(&config, "postsuper") {
        Ok(s) => s,
        Err(code) => return code,
    };
    let mut stdin_read = false;
    let mut counts = [0usize; 4];
    for op in [Op::Delete, Op::Requeue, Op::Hold, Op::Release] {
        let mine: Vec<&String> = names.iter().filter(|(o, _)| *o == op).map(|(_, n)| n).collect();
        if mine.is_empty() {
            continue;
        }
        let states: Vec<State> = if queues.is_empty() { op.default_states().to_vec() } else { queues.clone() };
        let all = mine.iter().any(|n| *n == "ALL");
        if all && mine.len() > 1 {
            eprintln!("postsuper: warning: option \"-{} ALL\" will ignore other command line queue IDs", letter(op));
        }
        let result = match &spool {
            None if all => Ok(0),
            // No spool yet: nothing is queued, and every name is unknown.
            None => {
                for queue_id in named_ids(&mine, &mut stdin_read).iter().filter(|i| !i.is_empty()) {
                    if id::is_valid(queue_id) {
                        eprintln!("postsuper: warning: {queue_id}: no such message in the mail queue");
                    } else {
                        eprintln!("postsuper: warning: invalid mail queue id: {queue_id}");
                    }
                }
                Ok(0)
            }
            Some(spool) if all => run_all(&config, spool, op, &states),
            Some(spool) => {
                let ids = named_ids(&mine, &mut stdin_read);
                run_named(&config, spool, op, &states, &ids)
            }
        };
        match result {
            Ok(n) => counts[op as usize] = n,
            Err(code) => return code,
        }
    }
    for op in [Op::Requeue, Op::Delete, Op::Hold, Op::Release] {
        let n = counts[op as usize];
        if n > 0 {
            eprintln!("postsuper: {}: {n} message{}", op.summary(), if n > 1 { "s" } else { "" });
        }
    }
    exit::OK
}

fn letter(op: Op) -> char {
    match op {
        Op::Requeue => 'r',
        Op::Delete => 'd',
        Op::Hold => 'h',
        Op::Release => 'H',
    }
}

/// The ids named on the command line, with `-` replaced by standard input
/// (read once; a second `-` finds it at its end, as in Postfix).
fn named_ids(names: &[&String], stdin_read: &mut bool) -> Vec<String> {
    let mut ids = Vec::new();
    for name in names {
        if *name != "-" {
            ids.push(name.to_string());
        } else if !*stdin_read {
            *stdin_read = true;
            ids.extend(std::io::stdin().lock().lines().map_while(Result::ok).map(|l| l.trim().to_string()));
        }
    }
    ids
}

/// `-d ALL [queue...]` and friends: every message in the queues, reported
/// by the summary line only (as Postfix does).
fn run_all(config: &Config, spool: &Spool, op: Op, states: &[State]) -> Result<usize, u8> {
    let mut targets: Vec<(String, State)> = Vec::new();
    for &state in states {
        if op == Op::Hold && state == State::Hold {
            continue;
        }
        if op == Op::Release && state != State::Hold {
            continue;
        }
        targets.extend(spool.list(state).unwrap_or_default().into_iter().map(|id| (id, state)));
    }
    let results = apply(config, op, &targets)?;
    Ok(results.iter().filter(|r| counts_as_done(op, r)).count())
}

/// Named ids: checked, found in the allowed queues, then acted on, each
/// reported as Postfix does; the rest get a warning naming them.
fn run_named(config: &Config, spool: &Spool, op: Op, states: &[State], ids: &[String]) -> Result<usize, u8> {
    let mut targets = Vec::new();
    for queue_id in ids.iter().filter(|i| !i.is_empty()) {
        if !id::is_valid(queue_id) {
            eprintln!("postsuper: warning: invalid mail queue id: {queue_id}");
            continue;
        }
        match states.iter().find(|s| spool.envelope_path(**s, queue_id).exists()) {
            Some(&state) if op == Op::Hold && state == State::Hold => {} // already on hold
            Some(&state) => targets.push((queue_id.clone(), state)),
            None => eprintln!("postsuper: warning: {queue_id}: no such message in the {} queue", queue_list(states)),
        }
    }
    let results = apply(config, op, &targets)?;
    let mut done = 0;
    for r in &results {
        if counts_as_done(op, r) {
            eprintln!("postsuper: {}: {}", r.id, op.done());
            done += 1;
        } else if let Some(e) = &r.error {
            eprintln!("postsuper: warning: {}: {e}", r.id);
        } else {
            eprintln!("postsuper: warning: {}: no such message in the queue", r.id);
        }
    }
    Ok(done)
}

fn queue_list(states: &[State]) -> String {
    if states.len() == State::QUEUED.len() {
        return "mail".into();
    }
    states.iter().map(|s| s.dir_name()).collect::<Vec<_>>().join("/")
}

/// Sends the targets to the daemon. `-r` on a held message releases it
/// (due now), which is what a requeue from `hold/` does in Postfix.
fn apply(config: &Config, op: Op, targets: &[(String, State)]) -> Result<Vec<ActResult>, u8> {
    let (held, others): (Vec<_>, Vec<_>) = targets.iter().partition(|(_, s)| op == Op::Requeue && *s == State::Hold);
    let ids = |v: &[&(String, State)]| v.iter().map(|(i, _)| i.clone()).collect::<Vec<_>>();
    let action = match op {
        Op::Delete => QueueAction::Delete,
        Op::Hold => QueueAction::Hold,
        Op::Release => QueueAction::Release,
        Op::Requeue => QueueAction::Requeue,
    };
    let mut results = act::act(config, "postsuper", action, &ids(&others))?;
    if !held.is_empty() {
        let mut released = act::act(config, "postsuper", QueueAction::Release, &ids(&held))?;
        for r in &mut released {
            // Reported as requeued, like every other -r.
            if r.found_in.is_some() {
                r.found_in = Some("deferred".into());
            }
        }
        results.extend(released);
    }
    Ok(results)
}

/// The daemon answers with where it found each message; an action that
/// does not apply there (release of a message not held) changed nothing.
fn counts_as_done(op: Op, r: &ActResult) -> bool {
    changed(r)
        && match op {
            Op::Release => r.found_in.as_deref() == Some("hold"),
            Op::Requeue => r.found_in.as_deref() != Some("hold"),
            Op::Delete | Op::Hold => true,
        }
}
