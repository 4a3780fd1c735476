//! `posthorn check` (and later `postfix check`): validate the configuration
//! and the spool without starting anything. Prints one line per problem
//! and exits 1 when there is any, 0 otherwise.

use super::exit;
use crate::config::Role;
use crate::spool::{State, id};
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::Path;

pub(crate) fn main(explicit: Option<&Path>) -> u8 {
    let config = match super::load_config(explicit, "posthorn check") {
        Ok(c) => c,
        Err(code) => return code,
    };
    let problems = problems(&config);
    for p in &problems {
        println!("posthorn check: {p}");
    }
    if problems.is_empty() {
        let source = config.source.as_ref().map(|p| p.display().to_string()).unwrap_or_else(|| "built-in".into());
        println!("posthorn check: configuration {source} and spool {} are in order", config.spool.display());
        exit::OK
    } else {
        1
    }
}

/// Everything wrong with `config` and its spool, as sentences.
pub(crate) fn problems(config: &crate::config::Config) -> Vec<String> {
    let mut out = Vec::new();
    if config.role == Role::Satellite && config.relay.smarthosts.is_empty() {
        out.push("relay.smarthosts is empty: a satellite has nowhere to send mail".into());
    }
    if let Err(e) = crate::route::router::Router::from_config(config) {
        out.push(e);
    }
    if let Err(e) = crate::deliver::dkim::Signer::new(&config.dkim.keys, &config.dkim.headers) {
        out.push(format!("{e:#}"));
    }
    if let (Some(filter), None) = (&config.filter.content_filter, config.filter.reinject_listen) {
        out.push(format!(
            "filter.content_filter is {filter} but filter.reinject_listen is not set: what the filter sends back \
             arrives as new mail and is filtered again, in a loop"
        ));
    }
    // Only a daemon started as root switches to its account.
    let user = config.user.as_deref().filter(|u| *u != "root" && rustix::process::geteuid().is_root());
    match user.map(crate::account::lookup) {
        Some(Ok(None)) => out.push(format!(
            "user {:?} does not exist: the daemon, started as root, would refuse to start (create it or set `user`)",
            user.unwrap_or_default()
        )),
        Some(Err(e)) => out.push(format!("{e:#}")),
        _ => {}
    }
    let spool = &config.spool;
    match std::fs::metadata(spool) {
        Err(e) => out.push(format!("spool {}: {e} (it is created at first start)", spool.display())),
        Ok(meta) => {
            let me = rustix::process::geteuid().as_raw();
            if me != 0 && meta.uid() != me {
                out.push(format!("spool {}: owned by uid {}, not by this user ({me})", spool.display(), meta.uid()));
            }
            if meta.permissions().mode() & 0o044 != 0 {
                out.push(format!(
                    "spool {}: readable by others (mode {:o})",
                    spool.display(),
                    meta.permissions().mode() & 0o7777
                ));
            }
            for dir in
                ["tmp", "data"].into_iter().chain(State::QUEUED.map(State::dir_name)).chain(["corrupt", "maildrop"])
            {
                if !spool.join(dir).is_dir() {
                    out.push(format!("spool {}: missing directory {dir}/", spool.display()));
                }
            }
            if let Ok(meta) = std::fs::metadata(spool.join("maildrop")) {
                out.extend(maildrop_mode(meta.permissions().mode() & 0o7777));
            }
            out.extend(spool_contents(spool));
        }
    }
    out
}

/// The maildrop is 1733 as a spool is made, and 3733 (setgid, so drops get
/// the daemon's group) once a daemon started as root has handed the spool
/// to its account (`daemon::privilege`): both are healthy.
fn maildrop_mode(mode: u32) -> Option<String> {
    let handed_over = crate::daemon::privilege::MAILDROP_MODE;
    (mode != 0o1733 && mode != handed_over).then(|| {
        format!("maildrop: mode {mode:o}, expected 1733 (or {handed_over:o} once a daemon started as root ran)")
    })
}

fn spool_contents(spool: &Path) -> Vec<String> {
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
                out.push(format!("{}/{name}: message body missing", state.dir_name()));
            }
        }
    }
    out
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
