//! `mailq`, `sendmail -bp`, `posthorn queue list`: the queue in Postfix's
//! layout, so scripts written for `postqueue -p` parse it unchanged, or as
//! JSON lines with `postqueue -j`'s field names. Reads envelopes only (never
//! bodies) straight from the spool, so it works with the daemon down.

use super::exit;
use crate::spool::envelope::{Envelope, RcptState};
use crate::spool::{Spool, State};
use crate::timefmt;
use std::io::Write;
use std::path::Path;

/// Every queued message with its state, oldest first. Envelopes are read
/// on a few threads: with a big queue the time goes into opening files,
/// which the kernel does in parallel.
pub fn collect(spool: &Spool) -> Vec<(State, Envelope)> {
    let mut files = Vec::new();
    for state in State::QUEUED {
        let Ok(ids) = spool.list(state) else { continue };
        files.extend(ids.into_iter().map(|id| (state, spool.envelope_path(state, &id))));
    }
    let threads = std::thread::available_parallelism().map_or(1, |n| n.get()).clamp(1, 8);
    let chunk = files.len().div_ceil(threads).max(256);
    let read = |part: &[(State, std::path::PathBuf)]| -> Vec<(State, Envelope)> {
        // A message can move or vanish between listing and reading.
        part.iter()
            .filter_map(|(state, path)| {
                let data = std::fs::read(path).ok()?;
                Envelope::from_json(&data).ok().map(|env| (*state, env))
            })
            .collect()
    };
    let mut out: Vec<(State, Envelope)> = std::thread::scope(|scope| {
        let workers: Vec<_> = files.chunks(chunk).map(|part| scope.spawn(move || read(part))).collect();
        workers.into_iter().flat_map(|w| w.join().unwrap_or_default()).collect()
    });
    out.sort_by(|a, b| a.1.id.cmp(&b.1.id));
    // A message moving between states while the directories are read
    // (incoming -> active) can be seen twice: once is right.
    out.dedup_by(|a, b| a.1.id == b.1.id);
    out
}

/// Every queued message of the spool the configuration names, for the
/// listing commands; an empty queue when the spool was never created.
pub fn load(explicit: Option<&Path>, prog: &str) -> Result<Vec<(State, Envelope)>, u8> {
    let config = super::load_config(explicit, prog)?;
    Ok(super::act::spool(&config, prog)?.map(|spool| collect(&spool)).unwrap_or_default())
}

pub fn main(explicit: Option<&Path>) -> u8 {
    let queue = match load(explicit, "mailq") {
        Ok(q) => q,
        Err(code) => return code,
    };
    let mut out = std::io::stdout().lock();
    let _ = out.write_all(render(&queue).as_bytes());
    exit::OK
}

/// `mailq [-c PATH] [-v]`, the name on its own.
pub fn main_args(args: &[String]) -> u8 {
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
pub fn render(queue: &[(State, Envelope)]) -> String {
    if queue.is_empty() {
        return "Mail queue is empty\n".into();
    }
    let mut s = String::from("-Queue ID-  --Size-- ----Arrival Time---- -Sender/Recipient-------\n");
    let mut total = 0u64;
    for (state, env) in queue {
        let mark = match state {
            State::Active => "*",
            State::Hold => "!",
            _ => "",
        };
        let sender = if env.sender.is_empty() { "MAILER-DAEMON" } else { &env.sender };
        let id = format!("{}{mark}", env.id);
        s.push_str(&format!("{id:<11} {:>8} {:<20} {sender}\n", env.size, timefmt::mailq(env.arrival)));
        let mut last_reason: Option<&str> = None;
        for r in env.recipients.iter().filter(|r| r.state == RcptState::Pending) {
            let reason = r.history.last().map(|a| a.detail.as_str());
            if reason.is_some() && reason != last_reason {
                s.push_str(&format!("({})\n", reason.unwrap_or_default()));
            }
            last_reason = reason;
            s.push_str(&format!("{:41} {}\n", "", r.address));
        }
        s.push('\n');
        total += env.size;
    }
    let n = queue.len();
    s.push_str(&format!("-- {} Kbytes in {n} Request{}.\n", total.div_ceil(1024), if n == 1 { "" } else { "s" }));
    s
}

/// `postqueue -j`: one JSON object per message.
pub fn json(explicit: Option<&Path>) -> u8 {
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

pub fn json_line(state: State, env: &Envelope) -> String {
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
    use crate::spool::envelope::{AttemptRecord, Recipient};

    #[test]
    fn postfix_layout() {
        let mut rcpt = Recipient::new("ops@example.org".into(), None, None);
        rcpt.record(AttemptRecord {
            at: 0,
            status: "deferred".into(),
            relay: None,
            tls: false,
            reply: None,
            class: None,
            detail: "connect to 127.0.0.1:25: Connection refused".into(),
        });
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
