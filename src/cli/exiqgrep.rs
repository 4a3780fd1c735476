//! `exiqgrep`: Exim's queue selection tool, reading posthorn's spool
//! (envelopes only) instead of parsing `exim -bpu`.
//!
//! Selection: `-f RE` sender (matched against `<sender>`, angle brackets
//! included, as exiqgrep does), `-r RE` any undelivered recipient, `-s RE`
//! the size column, `-o SECS` older than, `-y SECS` younger than, `-z`
//! frozen only, `-x` not frozen. Display: `-i` ids only, `-b` brief, `-c`
//! `N matches out of M messages`, `-R` newest first, default the long
//! (`exim -bp`) layout. Regexes are case-sensitive, as in Perl's `/RE/`.

use super::exit;
use crate::spool::envelope::{Envelope, RcptState};
use regex::Regex;
use std::io::Write;

const USAGE: &str = "usage: exiqgrep [-hcibRaxz] [-f sender-regex] [-r recipient-regex] [-s size-regex] [-o seconds] [-y seconds] [-C config]";

#[derive(Default)]
struct Query {
    sender: Option<Regex>,
    rcpt: Option<Regex>,
    size: Option<Regex>,
    older: Option<u64>,
    younger: Option<u64>,
    frozen_only: bool,
    unfrozen_only: bool,
}

impl Query {
    fn matches(&self, env: &Envelope, now: u64) -> bool {
        let age = now.saturating_sub(env.arrival);
        self.sender.as_ref().is_none_or(|re| re.is_match(&format!("<{}>", env.sender)))
            && self.rcpt.as_ref().is_none_or(|re| {
                env.recipients.iter().filter(|r| r.state == RcptState::Pending).any(|r| re.is_match(&r.address))
            })
            && self.size.as_ref().is_none_or(|re| re.is_match(super::exim::size(env.size).trim()))
            && self.older.is_none_or(|s| age > s)
            && self.younger.is_none_or(|s| age < s)
            && (!self.frozen_only || env.frozen)
            && (!self.unfrozen_only || !env.frozen)
    }
}

pub(crate) fn main(args: &[String]) -> u8 {
    let (opts, rest) = match super::getopt(args, "hf:r:y:o:s:zxlibRcaC:G:") {
        Ok(parsed) => parsed,
        Err(e) => return usage(&e),
    };
    if let Some(extra) = rest.first() {
        return usage(&format!("unexpected argument {extra}"));
    }
    let has = |c: char| opts.iter().any(|(o, _)| *o == c);
    if has('h') {
        println!("{USAGE}");
        return exit::OK;
    }
    let mut q = Query { frozen_only: has('z'), unfrozen_only: has('x'), ..Query::default() };
    let mut config_path = None;
    for (c, value) in &opts {
        let v = value.as_deref().unwrap_or_default();
        let result = match c {
            'f' => Regex::new(v).map(|re| q.sender = Some(re)).map_err(|e| e.to_string()),
            'r' => Regex::new(v).map(|re| q.rcpt = Some(re)).map_err(|e| e.to_string()),
            's' => Regex::new(v).map(|re| q.size = Some(re)).map_err(|e| e.to_string()),
            'o' => v.parse().map(|s| q.older = Some(s)).map_err(|_| format!("-o wants seconds, not {v:?}")),
            'y' => v.parse().map(|s| q.younger = Some(s)).map_err(|_| format!("-y wants seconds, not {v:?}")),
            'C' => {
                config_path = Some(super::config_arg(v));
                Ok(())
            }
            _ => Ok(()),
        };
        if let Err(e) = result {
            return usage(&e);
        }
    }
    let config = match super::load_config(config_path.as_deref(), "exiqgrep") {
        Ok(c) => c,
        Err(code) => return code,
    };
    let queue = match super::act::spool(&config, "exiqgrep") {
        Ok(spool) => spool.map(|s| super::mailq::collect(&s)).unwrap_or_default(),
        Err(code) => return code,
    };
    let now = crate::clock::now_secs();
    let total = queue.len();
    let mut matched: Vec<&Envelope> = queue.iter().map(|(_, e)| e).filter(|e| q.matches(e, now)).collect();
    let mut out = String::new();
    if has('c') {
        out.push_str(&format!("{} matches out of {total} messages\n", matched.len()));
    } else {
        if has('R') {
            matched.reverse();
        }
        for env in matched {
            if has('i') {
                out.push_str(&env.id);
                out.push('\n');
            } else if has('b') {
                let rcpts: Vec<&str> = env
                    .recipients
                    .iter()
                    .filter(|r| r.state == RcptState::Pending)
                    .map(|r| r.address.as_str())
                    .collect();
                out.push_str(&format!("{} From: <{}> To: {}\n", env.id, env.sender, rcpts.join(";")));
            } else {
                out.push_str(&super::exim::render(env, now, !has('a')));
            }
        }
    }
    let _ = std::io::stdout().lock().write_all(out.as_bytes());
    exit::OK
}

fn usage(problem: &str) -> u8 {
    eprintln!("exiqgrep: {problem}");
    eprintln!("{USAGE}");
    exit::USAGE
}
