//! Operator actions on queued messages, for every front end (`postsuper`,
//! `exim -Mrm`, `posthorn queue delete`, ...).
//!
//! With the daemon running, the request goes to it over the control socket:
//! its scheduler stops a delivery in flight first, so a message reported
//! removed is never delivered. With the daemon down (the spam drill: `postfix
//! stop`, `postsuper -d ALL`, `postfix start`), the command changes the
//! files itself (`Spool::apply`, the same code the daemon runs), as the
//! spool's owner (root becomes that account for the rest of the command) and
//! holding the spool lock, which names the command (`postsuper (pid N)`):
//! a daemon started meanwhile waits for it, and a command that finds the lock
//! held by a daemon that does not answer yet (starting up) asks it again for
//! a few seconds instead of touching files; a daemon that answers but is
//! still loading the queue it found at start is asked again until it has.
//! A bounce and "deliver now" need
//! the daemon (it writes the notice, it delivers): those still exit 75.
//!
//! Each change is appended to `SPOOL/audit.log` (time, user, action, ids;
//! `daemon=down` when the command changed the files itself), as the spool's
//! owner even when root runs the command.
//!
//! Also the read side the front ends share: opening the spool for listing
//! (which works with the daemon down) and ISO dates for logs.

use super::exit;
use crate::clock;
use crate::config::Config;
use crate::control::{self, ControlError, Request};
use crate::daemon::privilege::{self, AsOwner};
use crate::queue::{ActResult, QueueAction};
use crate::route::table::strerror;
use crate::spool::change::Bodies;
use crate::spool::lock::{COMMAND_WAIT, LockError, SpoolLock};
use crate::spool::{Spool, State};
use std::io::Write;
use std::time::{Duration, Instant};

/// The audit log's name in the spool (mode 0640: it names senders and
/// recipients).
const AUDIT_LOG: &str = "audit.log";

/// Ids sent per control request: keeps each request well inside the
/// control protocol's time limit even for a queue of a million.
const BATCH: usize = 20_000;

/// How long a command asks again a daemon that holds the spool lock but
/// does not answer yet: one that is starting (recovery, loading the queue).
const DAEMON_STARTING: Duration = Duration::from_secs(10);

/// How long a command waits for a daemon that answers but is still loading
/// the queue it found at start (it refuses actions until then): the
/// background index of a million messages from a cold disk takes a minute
/// or two.
const QUEUE_LOADING: Duration = Duration::from_secs(600);

/// Whether the daemon refused the request because it is still loading its
/// queue (`queue::STILL_LOADING`, the same for every id).
fn still_loading(results: &[ActResult]) -> bool {
    results.first().and_then(|r| r.error.as_deref()) == Some(crate::queue::STILL_LOADING)
}

/// Applies `action` to `ids`, through the daemon or, with it down, on the
/// files; one result per id, in order. Errors are already reported on
/// stderr as `prog: fatal: ...`; the value is the exit code.
pub(crate) fn act(config: &Config, prog: &str, action: QueueAction, ids: &[String]) -> Result<Vec<ActResult>, u8> {
    let mut results = Vec::with_capacity(ids.len());
    let mut rest = ids;
    let started = Instant::now();
    let mut told = false;
    // Before root becomes the spool's owner: the audit names who ran it.
    let invoker = rustix::process::getuid().as_raw();
    while !rest.is_empty() {
        let chunk = &rest[..rest.len().min(BATCH)];
        let request = Request::Act { action, ids: chunk.to_vec() };
        match control::request_blocking(&config.control_socket(), &request) {
            Ok(r) if r.ok && still_loading(&r.results) && started.elapsed() < QUEUE_LOADING => {
                if !std::mem::replace(&mut told, true) {
                    eprintln!("{prog}: waiting for the daemon to load the queue it found at start");
                }
                std::thread::sleep(Duration::from_millis(200));
                continue;
            }
            Ok(r) if r.ok => {
                audit(config, invoker, prog, action, &r.results, false);
                results.extend(r.results);
                rest = &rest[chunk.len()..];
                continue;
            }
            Ok(r) => {
                eprintln!("{prog}: fatal: the posthorn daemon refused the request: {}", r.message);
                return Err(exit::SOFTWARE);
            }
            Err(ControlError::NotRunning(_)) => {}
            Err(e) => {
                report_unreachable(prog, config, &e);
                return Err(exit::TEMPFAIL);
            }
        }
        // Nobody answers: the files themselves, unless a daemon is starting.
        if action.on_files().is_none() || action == QueueAction::Deliver {
            return Err(needs_daemon(prog, config, action));
        }
        match take_spool(config, prog, started, &mut told)? {
            Some(lock) => {
                results.extend(directly(config, invoker, prog, action, rest, lock));
                break;
            }
            None => std::thread::sleep(Duration::from_millis(100)),
        }
    }
    Ok(results)
}

/// With no daemon answering: the spool lock, taken as the spool's owner;
/// `None` while it is worth waiting (a daemon starting, another command
/// at work), an exit code once it is not (or the lock cannot be had).
fn take_spool(config: &Config, prog: &str, started: Instant, told: &mut bool) -> Result<Option<SpoolLock>, u8> {
    if let Err(e) = privilege::become_owner(&config.spool) {
        eprintln!("{prog}: fatal: cannot act as the owner of the spool {}: {}", config.spool.display(), strerror(&e));
        return Err(exit::NOPERM);
    }
    match SpoolLock::acquire_as(&config.spool, prog) {
        Ok(lock) => Ok(Some(lock)),
        Err(LockError::Held { holder, .. }) if holder.is_daemon() && started.elapsed() < DAEMON_STARTING => Ok(None),
        Err(LockError::Held { holder, .. }) if !holder.is_daemon() && started.elapsed() < COMMAND_WAIT => {
            if !std::mem::replace(told, true) {
                eprintln!("{prog}: waiting for {holder}, which is changing the queue");
            }
            Ok(None)
        }
        Err(LockError::Held { holder, spool } | LockError::StillHeld { holder, spool }) => {
            eprintln!(
                "{prog}: fatal: the spool {} is held by {holder}, which does not answer on {}; try again later",
                spool.display(),
                config.control_socket().display()
            );
            Err(exit::TEMPFAIL)
        }
        Err(LockError::Io { source, .. }) => {
            eprintln!(
                "{prog}: fatal: queue changes are reserved for root and the owner of the spool {} \
                 (the daemon does not answer, and its lock cannot be taken: {})",
                config.spool.display(),
                strerror(&source)
            );
            Err(exit::NOPERM)
        }
    }
}

/// With the daemon down: `ids` changed on the files, the spool lock held
/// until the changes are durable and the audit line written.
fn directly(
    config: &Config,
    invoker: u32,
    prog: &str,
    action: QueueAction,
    ids: &[String],
    lock: SpoolLock,
) -> Vec<ActResult> {
    let change = action.on_files().expect("checked by the caller");
    let results = match Spool::open(&config.spool, None) {
        Ok(spool) => {
            let applied = spool.apply(change, ids, Bodies::Now);
            if let Err(e) = applied.synced {
                eprintln!(
                    "{prog}: warning: the changes may not survive a crash: syncing the queue directories: {}",
                    strerror(&e)
                );
            }
            applied.results
        }
        Err(e) => ids.iter().map(|_| Err(std::io::Error::new(e.kind(), strerror(&e)))).collect(),
    };
    let results: Vec<ActResult> = ids
        .iter()
        .zip(results)
        .map(|(id, r)| match r {
            Ok(found) => {
                ActResult { id: id.clone(), found_in: found.map(|s: State| s.dir_name().to_string()), error: None }
            }
            Err(e) => ActResult { id: id.clone(), found_in: None, error: Some(strerror(&e)) },
        })
        .collect();
    audit(config, invoker, prog, action, &results, true);
    drop(lock);
    results
}

/// Refuses, with the reason, an action that only the daemon can carry out.
fn needs_daemon(prog: &str, config: &Config, action: QueueAction) -> u8 {
    let why = match action {
        QueueAction::Bounce => "returning mail to its senders needs it (it writes the notices)",
        _ => "delivering needs it",
    };
    eprintln!(
        "{prog}: fatal: the posthorn daemon is not running (no answer on {}), and {why}: \
         start it with `postfix start` or `posthorn serve`",
        config.control_socket().display()
    );
    exit::TEMPFAIL
}

/// The sentence an operator sees when the daemon cannot be asked.
pub(crate) fn report_unreachable(prog: &str, config: &Config, e: &ControlError) {
    match e {
        ControlError::NotRunning(_) => eprintln!(
            "{prog}: fatal: the posthorn daemon is not running (no answer on {}); \
             queue changes go through it: start it with `postfix start` or `posthorn serve`",
            config.control_socket().display()
        ),
        other => eprintln!("{prog}: fatal: {other}"),
    }
}

/// Whether a result means the action was carried out.
pub(crate) fn changed(r: &ActResult) -> bool {
    r.found_in.is_some() && r.error.is_none()
}

/// Appends one line for the messages `results` changed:
/// `2026-11-25T13:35:46Z user=root uid=0 via=postsuper action=delete count=2 ids=A,B`,
/// with ` daemon=down` at the end when the command changed the files itself.
fn audit(config: &Config, uid: u32, prog: &str, action: QueueAction, results: &[ActResult], daemon_down: bool) {
    let ids: Vec<&str> = results.iter().filter(|r| changed(r)).map(|r| r.id.as_str()).collect();
    if ids.is_empty() {
        return;
    }
    let action = serde_json::to_value(action).ok().and_then(|v| v.as_str().map(str::to_string)).unwrap_or_default();
    let line = format!(
        "{} user={} uid={uid} via={prog} action={action} count={} ids={}{}\n",
        iso(clock::now_secs()),
        crate::account::user_name(uid),
        ids.len(),
        ids.join(","),
        if daemon_down { " daemon=down" } else { "" }
    );
    // As the spool's owner, never through a link: the account the daemon
    // runs as can write the spool, and this may run as root.
    let written = AsOwner::enter(&config.spool)
        .and_then(|owner| owner.append(AUDIT_LOG, 0o640))
        .and_then(|mut f| f.write_all(line.as_bytes()));
    if let Err(e) = written {
        eprintln!("{prog}: warning: cannot append to {}: {e}", config.spool.join(AUDIT_LOG).display());
    }
}

/// The spool for reading, or `None` when it was never created (an empty
/// queue). Never creates anything.
pub(crate) fn spool(config: &Config, prog: &str) -> Result<Option<Spool>, u8> {
    let incoming = config.spool.join("incoming");
    if !incoming.is_dir() {
        return Ok(None);
    }
    // An unreadable queue must not look like an empty one.
    if let Err(e) = std::fs::read_dir(&incoming) {
        eprintln!(
            "{prog}: fatal: cannot read the queue in {}: {e} (queue inspection needs root or the spool's owner)",
            config.spool.display()
        );
        return Err(exit::NOPERM);
    }
    // Opening makes a missing queue directory: as the spool's owner, so
    // that root never creates anything in the account's spool.
    let _owner = AsOwner::enter(&config.spool);
    Spool::open(&config.spool, None).map(Some).map_err(|e| {
        eprintln!("{prog}: fatal: cannot open the spool {}: {e}", config.spool.display());
        exit::CONFIG
    })
}

/// `2026-11-25T13:35:46Z`
pub(crate) fn iso(secs: u64) -> String {
    clock::timestamp(secs).strftime("%Y-%m-%dT%H:%M:%SZ").to_string()
}

/// `2026-11-25 13:35:46`, Exim's log time stamp, in local time as Exim
/// writes it (without `timezone` set).
pub(crate) fn log_time(secs: u64) -> String {
    clock::local(secs).strftime("%Y-%m-%d %H:%M:%S").to_string()
}

/// `Wed Nov 25 13:35:46 2026`, asctime(3) of localtime(3), as `postcat`
/// prints times.
pub(crate) fn asctime(secs: u64) -> String {
    clock::local(secs).strftime("%a %b %e %H:%M:%S %Y").to_string()
}

/// A short human duration: `45s`, `12m`, `3h`, `2d`.
pub(crate) fn short_duration(secs: u64) -> String {
    match secs {
        s if s < 120 => format!("{s}s"),
        s if s < 2 * 3600 => format!("{}m", s / 60),
        s if s < 2 * 86400 => format!("{}h", s / 3600),
        s => format!("{}d", s / 86400),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dates() {
        assert_eq!(iso(1_795_613_746), "2026-11-25T13:35:46Z");
        // log_time and asctime are local time: tests/wording.rs runs the
        // commands under a TZ of its choosing.
        assert_eq!(short_duration(59), "59s");
        assert_eq!(short_duration(3 * 3600), "3h");
    }
}
