//! Operator actions on queued messages, for every front end (`postsuper`,
//! `exim -Mrm`, `posthorn queue delete`, ...): the request goes to the
//! running daemon over the control socket, whose scheduler stops a delivery
//! in flight first, so a message reported removed is never delivered. Each
//! change is appended to `SPOOL/audit.log` (time, user, action, ids), as
//! the spool's owner even when root runs the command. With
//! no daemon, nothing is changed: the command says so and exits 75.
//!
//! Also the read side the front ends share: opening the spool for listing
//! (which works with the daemon down) and ISO dates for logs.

use super::exit;
use crate::clock;
use crate::config::Config;
use crate::control::{self, ControlError, Request};
use crate::daemon::privilege::AsOwner;
use crate::queue::{ActResult, QueueAction};
use crate::spool::Spool;
use std::io::Write;

/// The audit log's name in the spool (mode 0640: it names senders and
/// recipients).
const AUDIT_LOG: &str = "audit.log";

/// Ids sent per control request: keeps each request well inside the
/// control protocol's time limit even for a queue of a million.
const BATCH: usize = 20_000;

/// Asks the daemon to apply `action` to `ids`; one result per id, in order.
/// Errors are already reported on stderr as `prog: fatal: ...`; the value
/// is the exit code.
pub(crate) fn act(config: &Config, prog: &str, action: QueueAction, ids: &[String]) -> Result<Vec<ActResult>, u8> {
    let mut results = Vec::with_capacity(ids.len());
    for chunk in ids.chunks(BATCH) {
        let request = Request::Act { action, ids: chunk.to_vec() };
        match control::request_blocking(&config.control_socket(), &request) {
            Ok(r) if r.ok => {
                audit(config, prog, action, &r.results);
                results.extend(r.results);
            }
            Ok(r) => {
                eprintln!("{prog}: fatal: the posthorn daemon refused the request: {}", r.message);
                return Err(exit::SOFTWARE);
            }
            Err(e) => {
                report_unreachable(prog, config, &e);
                return Err(exit::TEMPFAIL);
            }
        }
    }
    Ok(results)
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
/// `2026-11-25T13:35:46Z user=root uid=0 via=postsuper action=delete count=2 ids=A,B`.
fn audit(config: &Config, prog: &str, action: QueueAction, results: &[ActResult]) {
    let ids: Vec<&str> = results.iter().filter(|r| changed(r)).map(|r| r.id.as_str()).collect();
    if ids.is_empty() {
        return;
    }
    let uid = rustix::process::getuid().as_raw();
    let action = serde_json::to_value(action).ok().and_then(|v| v.as_str().map(str::to_string)).unwrap_or_default();
    let line = format!(
        "{} user={} uid={uid} via={prog} action={action} count={} ids={}\n",
        iso(clock::now_secs()),
        crate::account::user_name(uid),
        ids.len(),
        ids.join(",")
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
