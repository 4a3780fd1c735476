//! `mailq`, `sendmail -bp`, `posthorn queue list`: the queue in Postfix's
//! layout, so scripts written for `postqueue -p` parse it unchanged, or as
//! JSON lines with `postqueue -j`'s field names. The listing comes from the
//! running daemon's `showq.sock`, which reads the spool with nothing moving;
//! with the daemon down it is read straight from the spool (envelopes only,
//! never bodies).

use super::exit;
use crate::clock;
use crate::spool::envelope::{Envelope, RcptState};
use crate::spool::{Spool, State};
use std::io::Write;
use std::path::Path;

/// Every queued message with its state, oldest first, each exactly once:
/// from the running daemon when it answers, since a reading of the spool
/// from outside can miss messages the daemon moves meanwhile; else from the
/// spool itself, where nothing moves.
pub(crate) fn collect(spool: &Spool) -> Vec<(State, Envelope)> {
    crate::control::showq::read(spool.root()).unwrap_or_else(|_| spool.collect())
}

/// Every queued message of the spool the configuration names, for the
/// listing commands; an empty queue when the spool was never created.
/// A user who may not read the spool gets the listing from the running
/// daemon's public `showq.sock` instead, as Postfix's showq service does.
pub(crate) fn load(explicit: Option<&Path>, prog: &str) -> Result<Vec<(State, Envelope)>, u8> {
    let config = super::load_config(explicit, prog)?;
    match super::act::spool(&config, prog) {
        Ok(spool) => Ok(spool.map(|spool| collect(&spool)).unwrap_or_default()),
        Err(exit::NOPERM) => crate::control::showq::read(&config.spool).map_err(|e| {
            eprintln!("{prog}: fatal: and the daemon's public listing is not available either: {e}");
            exit::NOPERM
        }),
        Err(code) => Err(code),
    }
}

pub(crate) fn main(explicit: Option<&Path>) -> u8 {
    let queue = match load(explicit, "mailq") {
        Ok(q) => q,
        Err(code) => return code,
    };
    let mut out = std::io::stdout().lock();
    let _ = out.write_all(render(&queue).as_bytes());
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
    use std::fmt::Write as _;
    if queue.is_empty() {
        return "Mail queue is empty\n".into();
    }
    let mut s = String::with_capacity(64 + queue.len() * 160);
    s.push_str("-Queue ID-  --Size-- ----Arrival Time---- -Sender/Recipient-------\n");
    let mut total = 0u64;
    for (state, env) in queue {
        let mark = match state {
            State::Active => "*",
            State::Hold => "!",
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
    let n = queue.len();
    let _ = writeln!(s, "-- {} Kbytes in {n} Request{}.", total.div_ceil(1024), if n == 1 { "" } else { "s" });
    s
}

/// `postqueue -j`: one JSON object per message.
pub(crate) fn json(explicit: Option<&Path>) -> u8 {
    let queue = match load(explicit, "postqueue") {
        Ok(q) => q,
        Err(code) => return code,
    };
    let mut text = String::new();
    for (state, env) in &queue {
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
    let recipients = env
        .recipients
        .iter()
        .filter(|r| r.state == RcptState::Pending)
        .map(|r| JsonRecipient { address: &r.address, delay_reason: r.history.last().map(|a| a.detail.as_str()) })
        .collect();
    let m = JsonMessage {
        queue_name: state.dir_name(),
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
