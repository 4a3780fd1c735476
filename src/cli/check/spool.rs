//! The spool as the daemon will find it: its owner, its directories, its
//! modes and what is in it (`inspect`, which changes nothing), and
//! `--fix`, which makes and repairs it with the daemon's own start-up code
//! (`privilege::make_spool_top`, `hand_over`, then, as the account,
//! `Spool::open_with`, `settle_maildrop`).

use super::Report;
use crate::account::{Account, user_name};
use crate::config::Config;
use crate::daemon::privilege::{self, MAILDROP_MODE};
use crate::spool::lock::{LockError, SpoolLock};
use crate::spool::{Spool, State, id};
use std::os::unix::fs::MetadataExt;
use std::path::Path;

/// Looks at the spool; a missing one is no problem (`serve` makes it).
pub(super) fn inspect(config: &Config, account: Option<&Account>, report: &mut Report) {
    let spool = &config.spool;
    let meta = match std::fs::metadata(spool) {
        Ok(meta) => meta,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            report.notes.push(format!(
                "the spool {} does not exist yet: serve creates it at first start (posthorn check --fix creates it now)",
                spool.display()
            ));
            return;
        }
        Err(e) => {
            report.problems.push(format!("spool {}: {e}", spool.display()));
            return;
        }
    };
    match account {
        Some(account) => {
            report.problems.extend(to_hand_over(spool, meta.uid(), account));
            report.problems.extend(run_dir());
        }
        // The daemon runs as this user throughout: what it checks at start.
        None => {
            if let Err(e) = privilege::check_layout(spool, &crate::daemon::spool_dirs()) {
                report.problems.push(format!("{e:#}"));
            }
        }
    }
    let mode = meta.mode() & 0o7777;
    if mode & 0o044 != 0 {
        report.problems.push(format!(
            "spool {}: readable by others (mode {mode:o}): posthorn check --fix makes it 711",
            spool.display()
        ));
    }
    if let Ok(meta) = std::fs::symlink_metadata(spool.join("maildrop"))
        && meta.is_dir()
    {
        report.problems.extend(maildrop_mode(meta.mode() & 0o7777));
    }
    report.warnings.extend(contents(spool));
}

/// What a daemon started as root would meet in a spool it hands to
/// `account`: entries of root (not handed over yet) or of the account are
/// in order; another account's spool is not this daemon's; a link in place
/// of a directory refuses the start (`check_layout`, after the switch).
fn to_hand_over(spool: &Path, top_uid: u32, account: &Account) -> Vec<String> {
    let mut out = Vec::new();
    let foreign = |path: &Path, uid: u32| {
        format!(
            "{} belongs to {} (uid {uid}), not to {}, the account the daemon runs as: \
             posthorn check --fix gives the spool to {}",
            path.display(),
            user_name(uid),
            account.name,
            account.name
        )
    };
    if top_uid != 0 && top_uid != account.uid {
        out.push(foreign(spool, top_uid));
    }
    for name in crate::daemon::spool_dirs() {
        let path = spool.join(name);
        let Ok(meta) = std::fs::symlink_metadata(&path) else { continue };
        if meta.file_type().is_symlink() {
            out.push(format!(
                "{} is a symbolic link, not a directory: posthorn does not follow links in its spool; \
                 remove it (it is created again at start)",
                path.display()
            ));
        } else if !meta.is_dir() {
            out.push(format!("{} is not a directory: move it away", path.display()));
        } else if meta.uid() != 0 && meta.uid() != account.uid {
            out.push(foreign(&path, meta.uid()));
        }
    }
    out
}

/// The directory of the pid files of daemons that switch accounts: the
/// daemon refuses one that is not root's alone (`pidfile::checked_dir`).
fn run_dir() -> Option<String> {
    let dir = crate::daemon::pidfile::RUN_DIR;
    let meta = std::fs::symlink_metadata(dir).ok()?;
    let safe = meta.is_dir() && meta.uid() == 0 && meta.mode() & 0o022 == 0;
    (!safe).then(|| {
        format!(
            "{dir} (uid {}, mode {:o}) is not a directory that root alone can write: the daemon will not write \
             its pid file there; remove it (it is made again at start)",
            meta.uid(),
            meta.mode() & 0o7777
        )
    })
}

/// The maildrop is 1733 as a spool is made, and 3733 (setgid, so drops get
/// the daemon's group) once a daemon started as root has handed the spool
/// to its account (`daemon::privilege`): both are healthy.
fn maildrop_mode(mode: u32) -> Option<String> {
    (mode != 0o1733 && mode != MAILDROP_MODE).then(|| {
        format!(
            "maildrop: mode {mode:o}, expected 1733 (or {MAILDROP_MODE:o} once a daemon started as root ran): \
             posthorn check --fix sets it"
        )
    })
}

/// What start-up recovery will deal with (quarantined files, strays):
/// worth an operator's look, never a reason to keep the daemon down.
fn contents(spool: &Path) -> Vec<String> {
    let mut out = Vec::new();
    if let Ok(entries) = std::fs::read_dir(spool.join("corrupt")) {
        let names: Vec<String> =
            entries.filter_map(|e| e.ok()).map(|e| e.file_name().to_string_lossy().into_owned()).collect();
        if !names.is_empty() {
            out.push(format!(
                "{} unreadable file(s) quarantined in {}/corrupt: {}",
                names.len(),
                spool.display(),
                names.join(" ")
            ));
        }
    }
    for state in State::QUEUED {
        let Ok(entries) = std::fs::read_dir(spool.join(state.dir_name())) else { continue };
        for entry in entries.filter_map(|e| e.ok()) {
            let name = entry.file_name().to_string_lossy().into_owned();
            if !id::is_valid(&name) {
                out.push(format!("{}/{name}: not a queue file", state.dir_name()));
            } else if !spool.join("data").join(&name).exists() {
                out.push(format!("{}/{name}: message body missing (recovery moves it to corrupt/)", state.dir_name()));
            }
        }
    }
    out
}

/// `--fix`: makes the spool and sets its owners and modes as a daemon
/// started by this user would at start, under the spool lock; a spool a
/// daemon holds is left alone (that daemon set it up).
pub(super) fn fix(config: &Config, account: Option<&Account>, report: &mut Report) {
    let spool = &config.spool;
    if !spool.exists() {
        if let Err(e) = privilege::make_spool_top(spool, account) {
            report.problems.push(format!("cannot create the spool {}: {e}", spool.display()));
            return;
        }
        report.notes.push(format!("fixed: created the spool {}", spool.display()));
    }
    let _lock = match SpoolLock::acquire_as(spool, "check") {
        Ok(lock) => lock,
        Err(LockError::Held { holder, .. }) => {
            report.notes.push(format!("the spool {} is in use by {holder}: --fix leaves it alone", spool.display()));
            return;
        }
        Err(e) => {
            report.problems.push(e.to_string());
            return;
        }
    };
    let Some(account) = account else {
        untag(make_and_repair(config, false), report);
        return;
    };
    let owner = std::fs::metadata(spool).map(|m| m.uid()).unwrap_or(account.uid);
    // The hand-over sets the maildrop's mode itself: said here.
    let maildrop = |m: std::fs::Metadata| m.is_dir().then_some(m.mode() & 0o7777);
    let drop_mode = std::fs::symlink_metadata(spool.join("maildrop")).ok().and_then(maildrop);
    if let Some(mode) = drop_mode.filter(|m| maildrop_mode(*m).is_some()) {
        report.notes.push(format!("fixed: maildrop: mode {mode:o} -> {MAILDROP_MODE:o}"));
    }
    if let Err(e) = privilege::hand_over(spool, account) {
        report.problems.push(format!("cannot give the spool {} to {}: {e}", spool.display(), account.name));
        return;
    }
    if owner != account.uid {
        report.notes.push(format!("fixed: gave the spool {} to {}", spool.display(), account.name));
    }
    match privilege::run_as(account, || make_and_repair(config, true)) {
        Ok(lines) => untag(lines, report),
        Err(e) => report.problems.push(format!("{e:#}")),
    }
}

/// As the spool's owner: the daemon's layout check, its directories made
/// by the daemon's own `Spool::open_with`, then the modes. Lines tagged
/// `P ` (a problem) or `N ` (a note), for `untag`.
fn make_and_repair(config: &Config, switched: bool) -> Vec<String> {
    let spool = &config.spool;
    let dirs = crate::daemon::spool_dirs();
    if let Err(e) = privilege::check_layout(spool, &dirs) {
        return vec![format!("P {e:#}")];
    }
    let missing: Vec<&str> = dirs.iter().copied().filter(|d| !spool.join(d).exists()).collect();
    if let Err(e) = Spool::open_with(spool, None, config.queue.sync) {
        return vec![format!("P cannot make the spool's directories in {}: {e}", spool.display())];
    }
    let mut out = Vec::new();
    if !missing.is_empty() {
        out.push(format!("N fixed: made {} in {}", missing.join(", "), spool.display()));
    }
    match privilege::repair_modes(spool, &dirs, if switched { MAILDROP_MODE } else { 0o1733 }) {
        Ok(changed) => out.extend(changed.into_iter().map(|c| format!("N fixed: {c}"))),
        Err(e) => out.push(format!("P repairing the modes in {}: {e}", spool.display())),
    }
    // What the daemon does after its switch: a new maildrop becomes 3733.
    if switched && let Err(e) = privilege::settle_maildrop(spool) {
        out.push(format!("P setting the maildrop's mode: {e}"));
    }
    out
}

fn untag(lines: Vec<String>, report: &mut Report) {
    for line in lines {
        match line.split_once(' ') {
            Some(("N", note)) => report.notes.push(note.to_string()),
            Some((_, problem)) => report.problems.push(problem.to_string()),
            None => report.problems.push(line),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_maildrop_modes_the_daemon_sets_are_in_order() {
        assert_eq!(maildrop_mode(0o1733), None);
        assert_eq!(maildrop_mode(0o3733), None, "as a daemon started as root leaves it");
        assert!(maildrop_mode(0o777).is_some_and(|p| p.contains("mode 777, expected 1733")));
    }
}
