//! `posthorn queue <verb>`: the native queue interface.
//!
//! - `list [--json] [selectors]`: the queue in Postfix's `mailq` layout or as
//!   JSON lines (posthorn's own fields: state, frozen, attempts, next
//!   attempt, every recipient with its state and last reason);
//! - `show ID [--json]`: the envelope, then the message;
//! - `why ID [--json]`: each recipient's state and attempt history (time,
//!   status, relay, TLS, reply or error class, detail) and the next attempt;
//! - `delete | hold | release | requeue | bounce [ID...] [selectors]`:
//!   through the daemon (with it down, all but `bounce` on the files, see
//!   `act`), with `--dry-run` to see what would be touched,
//!   `--yes` to confirm when more than `--threshold` (100) messages match,
//!   and every change appended to `SPOOL/audit.log`;
//! - `flush`: retry every deferred message now;
//! - `find KEY`: the messages whose trace id, queue id or Message-ID is KEY
//!   (a satellite's trace id finds the message on the hub as well).
//!
//! Selectors: `--sender RE`, `--rcpt RE` (case-insensitive regexes; `^$` is
//! the null sender), `--domain D`, `--older-than DUR`, `--younger-than DUR`,
//! `--state S` (repeatable), `--error-class C`. Listing and showing read
//! the spool, so they work with the daemon down (`list` as `mailq` does it).

use super::act::{self, changed};
use super::exit;
use super::select::{Entry, Selector, StateSel, regex_ci};
use crate::clock::now_secs;
use crate::config::Config;
use crate::message::header;
use crate::queue::QueueAction;
use crate::spool::envelope::{Envelope, RcptState};
use crate::spool::{State, id};
use clap::{Args, Subcommand};
use std::io::{IsTerminal, Write};
use std::path::Path;

#[derive(Subcommand)]
pub(crate) enum Verb {
    /// List queued messages (Postfix's mailq layout, or JSON lines with --json)
    List {
        /// One JSON object per message, with posthorn's own fields
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        select: SelectArgs,
    },
    /// Show one message: its envelope, then its headers and body
    Show {
        id: String,
        /// The envelope as JSON, with the message as a string
        #[arg(long)]
        json: bool,
    },
    /// Why is it still queued: every recipient's attempt history and the next attempt
    Why {
        id: String,
        /// The envelope and its history as JSON
        #[arg(long)]
        json: bool,
    },
    /// Delete messages; once this returns they are never delivered
    Delete(ActArgs),
    /// Put messages on hold: kept, not tried until released
    Hold(ActArgs),
    /// Release held or frozen messages, due now
    Release(ActArgs),
    /// Make waiting messages due now
    Requeue(ActArgs),
    /// Return messages to their senders now (needs daemon support; not yet available)
    Bounce(ActArgs),
    /// Ask the daemon to retry every deferred message now
    Flush,
    /// Find messages by trace id, queue id or Message-ID; prints queue id and state
    Find {
        /// A trace id (X-Posthorn-Trace), a queue id, or a Message-ID (with or without <>)
        key: String,
    },
}

#[derive(Args, Default)]
pub(crate) struct SelectArgs {
    /// Sender matches this regular expression (case-insensitive; '^$' is the null sender)
    #[arg(long, value_name = "RE")]
    sender: Option<String>,
    /// A pending recipient matches this regular expression (case-insensitive)
    #[arg(long, value_name = "RE")]
    rcpt: Option<String>,
    /// A pending recipient is in this domain
    #[arg(long, value_name = "DOMAIN")]
    domain: Option<String>,
    /// Arrived longer ago than this (90, 30s, 15m, 2h, 3d)
    #[arg(long, value_name = "DUR")]
    older_than: Option<String>,
    /// Arrived less long ago than this
    #[arg(long, value_name = "DUR")]
    younger_than: Option<String>,
    /// In this state (repeat for several)
    #[arg(long, value_enum, value_name = "STATE")]
    state: Vec<StateSel>,
    /// The last attempt of a pending recipient failed with this class
    #[arg(long, value_name = "CLASS", value_parser = ["dns", "connect", "tls", "timeout", "protocol", "4xx", "5xx", "local"])]
    error_class: Option<String>,
}

#[derive(Args)]
pub(crate) struct ActArgs {
    /// Queue ids (combined with the selectors, if any)
    ids: Vec<String>,
    #[command(flatten)]
    select: SelectArgs,
    /// Every queued message (needed when no id or selector is given)
    #[arg(long)]
    all: bool,
    /// Show what would be touched, change nothing
    #[arg(long)]
    dry_run: bool,
    /// Confirm an action on more than --threshold messages
    #[arg(long)]
    yes: bool,
    /// Above this many messages, --yes (or an answer at the terminal) is needed
    #[arg(long, value_name = "N", default_value_t = 100)]
    threshold: usize,
}

impl SelectArgs {
    fn selector(&self) -> Result<Selector, String> {
        Ok(Selector {
            sender: self.sender.as_deref().map(regex_ci).transpose()?,
            rcpt: self.rcpt.as_deref().map(regex_ci).transpose()?,
            domain: self.domain.clone(),
            older_than: self.older_than.as_deref().map(super::select::parse_age).transpose()?,
            younger_than: self.younger_than.as_deref().map(super::select::parse_age).transpose()?,
            states: self.state.clone(),
            error_class: self.error_class.clone(),
            ids: Vec::new(),
        })
    }
}

const PROG: &str = "posthorn queue";

pub(crate) fn main(explicit: Option<&Path>, verb: Verb) -> u8 {
    if let Verb::Flush = verb {
        return super::flush(explicit);
    }
    let config = match super::load_config(explicit, PROG) {
        Ok(c) => c,
        Err(code) => return code,
    };
    match verb {
        Verb::List { json, select } => list(&config, json, &select),
        Verb::Show { id, json } => show(&config, &id, json),
        Verb::Why { id, json } => why(&config, &id, json),
        Verb::Find { key } => find_key(&config, &key),
        Verb::Delete(a) => change(&config, QueueAction::Delete, "delete", a),
        Verb::Hold(a) => change(&config, QueueAction::Hold, "hold", a),
        Verb::Release(a) => change(&config, QueueAction::Release, "release", a),
        Verb::Requeue(a) => change(&config, QueueAction::Requeue, "requeue", a),
        Verb::Bounce(a) => change(&config, QueueAction::Bounce, "bounce", a),
        Verb::Flush => unreachable!("handled above"),
    }
}

fn usage(verb: &str, problem: &str) -> u8 {
    eprintln!("{PROG} {verb}: {problem}");
    eprintln!("Try 'posthorn queue {verb} --help'.");
    exit::USAGE
}

fn load(config: &Config, selector: &Selector) -> Result<Vec<Entry>, u8> {
    Ok(act::spool(config, PROG)?.map(|s| selector.collect(&s)).unwrap_or_default())
}

fn list(config: &Config, json: bool, select: &SelectArgs) -> u8 {
    let selector = match select.selector() {
        Ok(s) => s,
        Err(e) => return usage("list", &e),
    };
    if selector.is_empty() && !json {
        // The whole queue: `mailq`'s listing, maildrop and warnings included.
        return match super::mailq::listing(config, true, PROG) {
            Ok(l) => {
                let _ = std::io::stdout().lock().write_all(super::mailq::render_all(&l.maildrop, &l.queue).as_bytes());
                exit::OK
            }
            Err(code) => code,
        };
    }
    let queue = match load(config, &selector) {
        Ok(q) => q,
        Err(code) => return code,
    };
    let mut out = std::io::stdout().lock();
    if json {
        let mut text = String::new();
        for (state, env) in &queue {
            text.push_str(&native_json(*state, env));
            text.push('\n');
        }
        let _ = out.write_all(text.as_bytes());
    } else {
        let _ = out.write_all(super::mailq::render(&queue).as_bytes());
    }
    exit::OK
}

/// One message for scripts: Postfix's `-j` fields plus posthorn's own.
#[derive(serde::Serialize)]
struct NativeMessage<'a> {
    queue_name: &'a str,
    queue_id: &'a str,
    arrival_time: u64,
    message_size: u64,
    sender: &'a str,
    frozen: bool,
    attempts: u32,
    next_attempt: u64,
    recipients: Vec<NativeRecipient<'a>>,
}

#[derive(serde::Serialize)]
struct NativeRecipient<'a> {
    address: &'a str,
    state: RcptState,
    delay_reason: Option<&'a str>,
    error_class: Option<String>,
    last_attempt: Option<u64>,
}

pub(crate) fn native_json(state: State, env: &Envelope) -> String {
    let recipients = env
        .recipients
        .iter()
        .map(|r| {
            let last = r.history.last();
            NativeRecipient {
                address: &r.address,
                state: r.state,
                delay_reason: last.map(|a| a.detail.as_str()),
                error_class: super::select::last_class(r),
                last_attempt: last.map(|a| a.at),
            }
        })
        .collect();
    let m = NativeMessage {
        queue_name: state.dir_name(),
        queue_id: &env.id,
        arrival_time: env.arrival,
        message_size: env.size,
        sender: &env.sender,
        frozen: env.frozen,
        attempts: env.attempts,
        next_attempt: env.next_attempt,
        recipients,
    };
    serde_json::to_string(&m).unwrap_or_default()
}

fn find(config: &Config, verb: &str, queue_id: &str) -> Result<(State, Envelope, Vec<u8>), u8> {
    if !id::is_valid(queue_id) {
        return Err(usage(
            verb,
            &format!(
                "{queue_id:?} is not a queue id (eleven characters, 0-9 and upper-case consonants; or ten, 0-9 and A-Z, from earlier releases)"
            ),
        ));
    }
    let spool = act::spool(config, PROG)?;
    super::postcat::find(&spool, queue_id).ok_or_else(|| {
        eprintln!("{PROG} {verb}: {queue_id}: no such message in the queue");
        1
    })
}

/// `queue find`: envelopes first (trace id, queue id); the Message-ID needs
/// each message's header block, read only when the key could be one.
fn find_key(config: &Config, key: &str) -> u8 {
    let key = key.trim();
    let bare = key.trim_start_matches('<').trim_end_matches('>');
    let spool = match act::spool(config, PROG) {
        Ok(Some(s)) => s,
        Ok(None) => return 1,
        Err(code) => return code,
    };
    let mut found = 0;
    let mut out = String::new();
    for (state, env) in super::mailq::collect(&spool) {
        let by_envelope = env.trace_id.as_deref() == Some(key) || env.id == key;
        let message_id = if by_envelope || bare.contains('@') {
            spool.read_body(&env.id).ok().and_then(|b| message_id(&b))
        } else {
            None
        };
        if by_envelope || message_id.as_deref().is_some_and(|m| m.eq_ignore_ascii_case(bare)) {
            found += 1;
            out.push_str(&format!("{} {}", env.id, state_name(state, &env)));
            if let Some(t) = &env.trace_id {
                out.push_str(&format!(" trace={t}"));
            }
            if let Some(m) = &message_id {
                out.push_str(&format!(" message-id=<{m}>"));
            }
            out.push('\n');
        }
    }
    let _ = std::io::stdout().lock().write_all(out.as_bytes());
    if found == 0 {
        eprintln!("{PROG} find: {key}: no such message in the queue");
        return 1;
    }
    exit::OK
}

/// The Message-ID header's value without `<>`, unfolded.
fn message_id(message: &[u8]) -> Option<String> {
    let field = header::find(header::block(message), "message-id")?;
    let value = String::from_utf8_lossy(&header::unfold(field.value())).into_owned();
    let v = value.trim().trim_start_matches('<').trim_end_matches('>').trim();
    (!v.is_empty()).then(|| v.to_string())
}

fn state_name(state: State, env: &Envelope) -> &'static str {
    if env.frozen { "frozen" } else { state.dir_name() }
}

fn summary(state: State, env: &Envelope, now: u64) -> String {
    let sender = if env.sender.is_empty() { "<> (null sender)".to_string() } else { format!("<{}>", env.sender) };
    let mut s = format!(
        "{}: {}, from {sender}, {} bytes, arrived {} ({} ago)\n",
        env.id,
        state_name(state, env),
        env.size,
        act::iso(env.arrival),
        act::short_duration(now.saturating_sub(env.arrival))
    );
    let next = match state {
        State::Hold => "none while held".to_string(),
        State::Active => "now (in delivery)".to_string(),
        _ if env.next_attempt <= now => "now".to_string(),
        _ => format!("{} (in {})", act::iso(env.next_attempt), act::short_duration(env.next_attempt - now)),
    };
    s.push_str(&format!("  attempts: {}, next attempt: {next}\n", env.attempts));
    s
}

fn show(config: &Config, queue_id: &str, json: bool) -> u8 {
    let (state, env, body) = match find(config, "show", queue_id) {
        Ok(found) => found,
        Err(code) => return code,
    };
    let text = String::from_utf8_lossy(&body).replace("\r\n", "\n");
    if json {
        let mut v = serde_json::to_value(&env).unwrap_or_default();
        v["state"] = state.dir_name().into();
        v["message"] = text.into();
        println!("{v}");
        return exit::OK;
    }
    let mut s = summary(state, &env, now_secs());
    for r in &env.recipients {
        s.push_str(&format!("  to <{}>: {}\n", r.address, rcpt_state(r.state)));
    }
    if let Some(results) = &env.auth_results {
        s.push_str(&format!("  verify: {results}\n"));
    }
    s.push('\n');
    s.push_str(&text);
    let _ = std::io::stdout().lock().write_all(s.as_bytes());
    exit::OK
}

fn rcpt_state(state: RcptState) -> &'static str {
    match state {
        RcptState::Pending => "pending",
        RcptState::Delivered => "delivered",
        RcptState::Failed => "failed",
    }
}

fn why(config: &Config, queue_id: &str, json: bool) -> u8 {
    let (state, env, _) = match find(config, "why", queue_id) {
        Ok(found) => found,
        Err(code) => return code,
    };
    if json {
        let mut v = serde_json::to_value(&env).unwrap_or_default();
        v["state"] = state.dir_name().into();
        println!("{v}");
        return exit::OK;
    }
    let _ = std::io::stdout().lock().write_all(explain(state, &env, now_secs()).as_bytes());
    exit::OK
}

/// The `queue why` text.
pub(crate) fn explain(state: State, env: &Envelope, now: u64) -> String {
    let mut s = summary(state, env, now);
    for r in &env.recipients {
        s.push_str(&format!("<{}>: {}\n", r.address, rcpt_state(r.state)));
        if r.history.is_empty() {
            s.push_str("    not tried yet\n");
        }
        for a in &r.history {
            let mut line = format!("    {} {}", act::iso(a.at), a.status);
            line.push_str(&format!(" relay={}", a.relay.as_deref().unwrap_or("none")));
            line.push_str(if a.tls { " tls=yes" } else { " tls=no" });
            match (&a.reply, a.class) {
                // The detail quotes the reply already ("host X said: ...").
                (Some(reply), _) if a.detail.contains(&reply.to_string()) => {}
                (Some(reply), _) => line.push_str(&format!(" reply=\"{reply}\"")),
                (None, Some(class)) => {
                    let class = serde_json::to_value(class).ok().and_then(|v| v.as_str().map(str::to_string));
                    line.push_str(&format!(" class={}", class.unwrap_or_default()));
                }
                (None, None) => {}
            }
            line.push_str(&format!(": {}\n", a.detail));
            s.push_str(&line);
        }
    }
    s
}

/// The bulk actions: select, show or confirm, then ask the daemon.
fn change(config: &Config, action: QueueAction, verb: &str, args: ActArgs) -> u8 {
    let mut selector = match args.select.selector() {
        Ok(s) => s,
        Err(e) => return usage(verb, &e),
    };
    for queue_id in &args.ids {
        if !id::is_valid(queue_id) {
            eprintln!("{PROG} {verb}: warning: {queue_id:?} is not a queue id");
        }
    }
    selector.ids = args.ids.iter().filter(|i| id::is_valid(i)).cloned().collect();
    if selector.is_empty() && !args.all {
        if !args.ids.is_empty() {
            return 1; // every id was invalid; said so above
        }
        return usage(verb, "name queue ids, or select with --sender/--rcpt/--older-than/--state/..., or give --all");
    }
    let entries = match load(config, &selector) {
        Ok(q) => q,
        Err(code) => return code,
    };
    for queue_id in &selector.ids {
        if !entries.iter().any(|(_, e)| &e.id == queue_id) {
            eprintln!("{PROG} {verb}: warning: {queue_id}: no such message (or not selected)");
        }
    }
    // Only what the action applies to: holding what is held, or releasing
    // what is not, would change nothing.
    let targets: Vec<&Entry> = entries
        .iter()
        .filter(|(s, _)| match action {
            QueueAction::Hold => *s != State::Hold,
            QueueAction::Release => *s == State::Hold,
            _ => true,
        })
        .collect();
    if args.dry_run {
        let mut out = String::new();
        for (state, env) in &targets {
            let rcpts: Vec<&str> = env.pending().map(|(_, r)| r.address.as_str()).collect();
            out.push_str(&format!("{} {} <{}> {}\n", env.id, state_name(*state, env), env.sender, rcpts.join(" ")));
        }
        out.push_str(&format!("would {verb} {}\n", plural(targets.len())));
        let _ = std::io::stdout().lock().write_all(out.as_bytes());
        return exit::OK;
    }
    if targets.len() > args.threshold && !args.yes && !confirm(verb, targets.len(), args.threshold) {
        return 1;
    }
    let (held, others): (Vec<&&Entry>, Vec<&&Entry>) =
        targets.iter().partition(|(s, _)| action == QueueAction::Requeue && *s == State::Hold);
    let ids = |v: &[&&Entry]| v.iter().map(|(_, e)| e.id.clone()).collect::<Vec<_>>();
    let mut results = match act::act(config, "posthorn", action, &ids(&others)) {
        Ok(r) => r,
        Err(code) => return code,
    };
    // A held message is requeued by releasing it (due now).
    match act::act(config, "posthorn", QueueAction::Release, &ids(&held)) {
        Ok(r) => results.extend(r),
        Err(code) => return code,
    }
    let mut out = String::new();
    let mut done = 0;
    for r in &results {
        if changed(r) {
            done += 1;
            out.push_str(&format!("{}: {}\n", r.id, action.past_tense()));
        } else {
            eprintln!("{PROG} {verb}: warning: {}: {}", r.id, r.error.as_deref().unwrap_or("no longer in the queue"));
        }
    }
    out.push_str(&format!("{}: {}\n", action.past_tense(), plural(done)));
    let _ = std::io::stdout().lock().write_all(out.as_bytes());
    exit::OK
}

fn plural(n: usize) -> String {
    format!("{n} message{}", if n == 1 { "" } else { "s" })
}

/// Asks at the terminal; refuses without one.
fn confirm(verb: &str, n: usize, threshold: usize) -> bool {
    let stdin = std::io::stdin();
    if !stdin.is_terminal() {
        eprintln!(
            "{PROG} {verb}: {n} messages match, more than {threshold}: add --yes to confirm (or --dry-run to see them)"
        );
        return false;
    }
    eprint!("{verb} {n} messages? [y/N] ");
    let mut answer = String::new();
    let _ = stdin.read_line(&mut answer);
    matches!(answer.trim(), "y" | "Y" | "yes" | "YES")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn message_id_table() {
        let cases: &[(&[u8], Option<&str>)] = &[
            (b"Subject: x\r\nMessage-ID: <a@b>\r\n\r\nbody", Some("a@b")),
            (b"message-id:\r\n <folded@b>\r\n\r\n", Some("folded@b")),
            (b"Message-Id: bare@b\n\nbody", Some("bare@b")),
            (b"Message-ID: <>\r\n\r\n", None),
            (b"Subject: x\r\n\r\nMessage-ID: <in-body@b>\r\n", None),
            (b"Subject: caf\xe9\r\nMessage-ID: <a@b>\r\n", Some("a@b")),
        ];
        for &(message, expected) in cases {
            assert_eq!(message_id(message).as_deref(), expected, "{:?}", String::from_utf8_lossy(message));
        }
    }
}
