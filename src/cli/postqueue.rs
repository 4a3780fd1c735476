//! `postqueue`: Postfix's unprivileged queue command.
//!
//! - `-p` lists the queue in `mailq`'s layout, `-j` as JSON lines (see
//!   `mailq` for who gets what with the daemon down);
//! - `-f` asks the daemon to retry every deferred message now (any user:
//!   through the public `flush.sock` when the control socket is not theirs);
//! - `-s DOMAIN` retries now the messages with a recipient in DOMAIN;
//! - `-i ID` retries one message now.
//!
//! `-c PATH` (a file, or a directory holding `posthorn.toml`) and
//! `POSTHORN_CONFIG` choose the configuration.

use super::exit;
use super::select::Selector;
use crate::queue::QueueAction;
use crate::spool::id;
use std::path::PathBuf;

const USAGE: &str =
    "usage: postqueue -f | postqueue -i queueid | postqueue -j | postqueue -p | postqueue -s site  [-c config] [-v]";

enum Mode {
    List,
    Json,
    Flush,
    Site(String),
    One(String),
}

pub(crate) fn main(args: &[String]) -> u8 {
    let (opts, rest) = match super::getopt(args, "c:fi:jps:v") {
        Ok(parsed) => parsed,
        Err(e) => return usage(&e),
    };
    if let Some(extra) = rest.first() {
        return usage(&format!("unexpected argument {extra}"));
    }
    let mut config: Option<PathBuf> = None;
    let mut mode = None;
    for (c, value) in opts {
        let next = match c {
            'c' => {
                config = value.as_deref().map(super::config_arg);
                continue;
            }
            'v' => continue,
            'p' => Mode::List,
            'j' => Mode::Json,
            'f' => Mode::Flush,
            's' => Mode::Site(value.unwrap_or_default()),
            'i' => Mode::One(value.unwrap_or_default()),
            _ => unreachable!("getopt only returns letters of the spec"),
        };
        if mode.replace(next).is_some() {
            return usage("specify only one of -f, -i, -j, -p, -s");
        }
    }
    let explicit = config.as_deref();
    match mode {
        None => usage("specify one of -f, -i, -j, -p, -s"),
        Some(Mode::List) => super::mailq::main(explicit),
        Some(Mode::Json) => super::mailq::json(explicit),
        Some(Mode::Flush) => super::flush_as(explicit, "postqueue"),
        Some(Mode::Site(site)) => deliver_site(explicit, &site),
        Some(Mode::One(id)) => deliver_one(explicit, &id),
    }
}

fn usage(problem: &str) -> u8 {
    eprintln!("postqueue: {problem}");
    eprintln!("postqueue: fatal: {USAGE}");
    exit::USAGE
}

/// `-s DOMAIN`: the messages with a recipient pending in DOMAIN, now.
fn deliver_site(explicit: Option<&std::path::Path>, site: &str) -> u8 {
    let site = site.trim_start_matches('[').trim_end_matches(']').trim_end_matches('.');
    if site.is_empty() || site.contains(['/', ' ', '@']) {
        eprintln!("postqueue: fatal: Cannot flush mail queue - invalid destination: \"{site}\"");
        return 1;
    }
    let config = match super::load_config(explicit, "postqueue") {
        Ok(c) => c,
        Err(code) => return code,
    };
    let spool = match super::act::spool(&config, "postqueue") {
        Ok(Some(s)) => s,
        Ok(None) => return exit::OK,
        Err(code) => return code,
    };
    let selector = Selector { domain: Some(site.to_string()), ..Selector::default() };
    let ids: Vec<String> = selector.collect(&spool).into_iter().map(|(_, e)| e.id).collect();
    match super::act::act(&config, "postqueue", QueueAction::Deliver, &ids) {
        Ok(_) => exit::OK,
        Err(code) => code,
    }
}

/// `-i ID`: one message, now.
fn deliver_one(explicit: Option<&std::path::Path>, queue_id: &str) -> u8 {
    if !id::is_valid(queue_id) {
        eprintln!("postqueue: fatal: Cannot flush queue ID - invalid name: \"{queue_id}\"");
        return 1;
    }
    let config = match super::load_config(explicit, "postqueue") {
        Ok(c) => c,
        Err(code) => return code,
    };
    match super::act::act(&config, "postqueue", QueueAction::Deliver, &[queue_id.to_string()]) {
        Ok(results) if results.iter().any(super::act::changed) => exit::OK,
        Ok(_) => {
            eprintln!("postqueue: warning: {queue_id}: no such message in the queue");
            1
        }
        Err(code) => code,
    }
}
