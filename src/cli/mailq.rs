//! `mailq`, `sendmail -bp`, `posthorn queue list`: the queue in Postfix's
//! layout, so scripts written for `postqueue -p` parse it unchanged, or as
//! JSON lines with `postqueue -j`'s field names.
//!
//! As Postfix's `postqueue` does: the listing comes from the running
//! daemon's public `showq.sock`, for every user, which reads the spool with
//! nothing moving. With the daemon down, root and the spool's owner read the
//! spool directly (envelopes only, never bodies) and the maildrop too (mail
//! `sendmail` dropped, waiting for pickup: listed first, without a mark), after
//! Postfix's warning `postqueue: warning: Mail system is down -- accessing
//! queue directly`; anyone else gets Postfix's `Queue report unavailable -
//! mail system is down` (exit 69). A spool that does not exist is no empty
//! queue: it fails (exit 69) naming the spool, so that a monitor such as
//! `check_mailq` on a machine without an MTA does not report OK.

use super::exit;
use crate::clock;
use crate::control::ControlError;
use crate::ingress::maildrop;
use crate::spool::envelope::{Envelope, RcptState};
use crate::spool::{Spool, State};
use std::io::Write;
use std::path::Path;

/// sysexits(3) EX_UNAVAILABLE, Postfix's status for "mail system is down".
const UNAVAILABLE: u8 = 69;

/// Every queued message with its state, oldest first, each exactly once:
/// from the running daemon when it answers, since a reading of the spool
/// from outside can miss messages the daemon moves meanwhile; else from the
/// spool itself, where nothing moves.
pub(crate) fn collect(spool: &Spool) -> Vec<(State, Envelope)> {
    crate::control::showq::read(spool.root()).unwrap_or_else(|_| spool.collect())
}

/// What a listing shows: mail waiting in the maildrop (read only with the
/// daemon down; a running daemon picks it up at once), then the queue.
#[derive(Default)]
pub(crate) struct Listing {
    pub(crate) maildrop: Vec<Envelope>,
    pub(crate) queue: Vec<(State, Envelope)>,
}

/// The listing for the configuration's spool (see the module comment for
/// who gets what). Errors are reported on stderr; the value is the exit code.
pub(crate) fn load(explicit: Option<&Path>, prog: &str) -> Result<Listing, u8> {
    let config = super::load_config(explicit, prog)?;
    listing(&config, explicit.is_some(), prog)
}

/// `load` for a configuration already read (`named`: from a `-c` option).
pub(crate) fn listing(config: &crate::config::Config, named: bool, prog: &str) -> Result<Listing, u8> {
    let spool = &config.spool;
    match crate::control::showq::read(spool) {
        Ok(queue) => return Ok(Listing { maildrop: Vec::new(), queue }),
        Err(ControlError::NotRunning(_)) => {}
        Err(e) => {
            eprintln!("postqueue: fatal: the posthorn daemon's queue listing failed: {e}");
            return Err(exit::TEMPFAIL);
        }
    }
    if !spool.join("incoming").is_dir() {
        eprintln!(
            "postqueue: fatal: no mail queue: the spool {} does not exist (no posthorn has run with this \
             configuration{})",
            spool.display(),
            if std::env::var_os("POSTHORN_CONFIG").is_none()
                && !named
                && !Path::new(crate::config::DEFAULT_PATH).exists()
            {
                ", and there is no configuration file: see `posthorn --help`"
            } else {
                ""
            }
        );
        return Err(UNAVAILABLE);
    }
    if std::fs::read_dir(spool.join("incoming")).is_err() {
        eprintln!("postqueue: fatal: Queue report unavailable - mail system is down");
        return Err(UNAVAILABLE);
    }
    eprintln!("postqueue: warning: Mail system is down -- accessing queue directly");
    let Some(opened) = super::act::spool(config, prog)? else { return Ok(Listing::default()) };
    let maildrop = maildrop::waiting(&opened.maildrop_dir()).unwrap_or_default();
    Ok(Listing { maildrop: maildrop.into_iter().filter_map(as_envelope).collect(), queue: opened.collect() })
}

/// A drop as an envelope, so that it is listed like queued mail; its name
/// stands where the queue id goes (it gets one at pickup).
fn as_envelope(drop: maildrop::Waiting) -> Option<Envelope> {
    let rcpts: Vec<_> = drop.recipients.iter().map(|r| serde_json::json!({"address": r, "state": "pending"})).collect();
    let v = serde_json::json!({
        "v": 1, "id": drop.name, "arrival": drop.arrival, "sender": drop.sender, "size": drop.size,
        "origin": {"protocol": "local"}, "recipients": rcpts,
    });
    serde_json::from_value(v).ok()
}

pub(crate) fn main(explicit: Option<&Path>) -> u8 {
    let listing = match load(explicit, "mailq") {
        Ok(l) => l,
        Err(code) => return code,
    };
    let mut out = std::io::stdout().lock();
    let _ = out.write_all(render_all(&listing.maildrop, &listing.queue).as_bytes());
    exit::OK
}

/// `mailq [-c PATH] [-v]`, the name on its own.
pub(crate) fn main_args(args: &[String]) -> u8 {
    let (opts, rest) = match super::getopt(args, "c:v") {
        Ok(parsed) => parsed,
        Err(e) => return usage(&e),
    };
    if let Some(extra) = rest.first() {
        return usage(&format!("unexpected argument {extra}"));
    }
    let config = opts.iter().find(|(c, _)| *c == 'c').and_then(|(_, v)| v.as_deref()).map(super::config_arg);
    main(config.as_deref())
}

fn usage(problem: &str) -> u8 {
    eprintln!("mailq: {problem}");
    eprintln!("usage: mailq [-c config] [-v]");
    exit::USAGE
}

/// The Postfix `showq` layout.
pub(crate) fn render(queue: &[(State, Envelope)]) -> String {
    render_all(&[], queue)
}

/// The Postfix `showq` layout, the maildrop first (as showq scans it).
pub(crate) fn render_all(maildrop: &[Envelope], queue: &[(State, Envelope)]) -> String {
    use std::fmt::Write as _;
    let n = maildrop.len() + queue.len();
    if n == 0 {
        return "Mail queue is empty\n".into();
    }
    let mut s = String::with_capacity(64 + n * 160);
    s.push_str("-Queue ID-  --Size-- ----Arrival Time---- -Sender/Recipient-------\n");
    let mut total = 0u64;
    let entries = maildrop.iter().map(|env| (None, env)).chain(queue.iter().map(|(state, env)| (Some(*state), env)));
    for (state, env) in entries {
        let mark = match state {
            Some(State::Active) => "*",
            Some(State::Hold) => "!",
            _ => "",
        };
        let sender = if env.sender.is_empty() { "MAILER-DAEMON" } else { &env.sender };
        // The id and its mark share one 11-column field.
        s.push_str(&env.id);
        s.push_str(mark);
        let pad = 11usize.saturating_sub(env.id.len() + mark.len());
        let _ = writeln!(s, "{:pad$} {:>8} {:<20} {sender}", "", env.size, clock::mailq(env.arrival));
        let mut last_reason: Option<&str> = None;
        for r in env.recipients.iter().filter(|r| r.state == RcptState::Pending) {
            let reason = r.history.last().map(|a| a.detail.as_str());
            if let Some(text) = reason.filter(|_| reason != last_reason) {
                let _ = writeln!(s, "({text})");
            }
            last_reason = reason;
            let _ = writeln!(s, "{:41} {}", "", r.address);
        }
        s.push('\n');
        total += env.size;
    }
    let _ = writeln!(s, "-- {} Kbytes in {n} Request{}.", total.div_ceil(1024), if n == 1 { "" } else { "s" });
    s
}

/// `postqueue -j`: one JSON object per message.
pub(crate) fn json(explicit: Option<&Path>) -> u8 {
    let listing = match load(explicit, "postqueue") {
        Ok(l) => l,
        Err(code) => return code,
    };
    let mut text = String::new();
    for env in &listing.maildrop {
        text.push_str(&json_named("maildrop", env));
        text.push('\n');
    }
    for (state, env) in &listing.queue {
        text.push_str(&json_line(*state, env));
        text.push('\n');
    }
    let _ = std::io::stdout().lock().write_all(text.as_bytes());
    exit::OK
}

/// One message with Postfix's `postqueue -j` field names, in its order.
#[derive(serde::Serialize)]
struct JsonMessage<'a> {
    queue_name: &'a str,
    queue_id: &'a str,
    arrival_time: u64,
    message_size: u64,
    forced_expire: bool,
    sender: &'a str,
    recipients: Vec<JsonRecipient<'a>>,
}

#[derive(serde::Serialize)]
struct JsonRecipient<'a> {
    address: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    delay_reason: Option<&'a str>,
}

pub(crate) fn json_line(state: State, env: &Envelope) -> String {
    json_named(state.dir_name(), env)
}

fn json_named(queue_name: &str, env: &Envelope) -> String {
    let recipients = env
        .recipients
        .iter()
        .filter(|r| r.state == RcptState::Pending)
        .map(|r| JsonRecipient { address: &r.address, delay_reason: r.history.last().map(|a| a.detail.as_str()) })
        .collect();
    let m = JsonMessage {
        queue_name,
        queue_id: &env.id,
        arrival_time: env.arrival,
        message_size: env.size,
        forced_expire: false,
        sender: &env.sender,
        recipients,
    };
    serde_json::to_string(&m).unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::message::outcome::Status;
    use crate::spool::envelope::{AttemptRecord, Recipient};

    #[test]
    fn postfix_layout() {
        let mut rcpt = Recipient::new("ops@example.org".into(), None, None);
        rcpt.record(AttemptRecord::local(0, Status::Deferred, "connect to 127.0.0.1:25: Connection refused".into()));
        let mut env = crate::cli::select::sample("0KAB12CD34", "", &[], 1_795_613_746);
        env.size = 1234;
        env.attempts = 1;
        env.recipients = vec![rcpt, Recipient::new("b@example.org".into(), None, None)];
        let got = render(&[(State::Active, env)]);
        let expected = "\
-Queue ID-  --Size-- ----Arrival Time---- -Sender/Recipient-------
0KAB12CD34*     1234 Wed Nov 25 13:35:46  MAILER-DAEMON
(connect to 127.0.0.1:25: Connection refused)
                                          ops@example.org
                                          b@example.org

-- 2 Kbytes in 1 Request.
";
        assert_eq!(got, expected);
        assert_eq!(render(&[]), "Mail queue is empty\n");
    }
}
