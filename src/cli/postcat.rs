//! `postcat -q ID`: one queued message as Postfix's `postcat` shows it:
//! envelope records, the message contents, the section markers
//! (`*** ENVELOPE RECORDS deferred/ID ***`, `*** MESSAGE CONTENTS ... ***`,
//! `*** HEADER EXTRACTED ... ***`, `*** MESSAGE FILE END ... ***`).
//! `-e` envelope only, `-h` headers only, `-b` body only; as in Postfix, the
//! markers are printed only when the envelope is. Operands without `-q` are
//! paths to envelope files (`SPOOL/deferred/ID`). Reads the spool only.
//! posthorn's own envelope fields (attempts, frozen, the `[verify]`
//! results) are `named_attribute: posthorn_*` records.

use super::exit;
use crate::message::header;
use crate::spool::envelope::{Envelope, RcptState};
use crate::spool::{Spool, State, id};
use std::io::Write;
use std::path::Path;

const USAGE: &str = "usage: postcat [-b (body text)] [-c config_dir] [-d (decimal record type)] [-e (envelope records)] [-h (header text)] [-q (access queue)] [-v] [file(s)...]";

#[derive(Clone, Copy, Default)]
pub(crate) struct Parts {
    pub(crate) envelope: bool,
    pub(crate) header: bool,
    pub(crate) body: bool,
}

pub(crate) fn main(args: &[String]) -> u8 {
    let (opts, operands) = match super::getopt(args, "bc:dehoqrs:v") {
        Ok(parsed) => parsed,
        Err(e) => {
            eprintln!("postcat: {e}");
            eprintln!("postcat: fatal: {USAGE}");
            return exit::USAGE;
        }
    };
    let mut parts = Parts::default();
    let mut by_id = false;
    let mut config_path = None;
    for (c, value) in opts {
        match c {
            'b' => parts.body = true,
            'e' => parts.envelope = true,
            'h' => parts.header = true,
            'q' => by_id = true,
            'c' => config_path = value.as_deref().map(super::config_arg),
            _ => {} // -d -o -r -s -v: record-level details with no meaning here
        }
    }
    if !(parts.envelope || parts.header || parts.body) {
        parts = Parts { envelope: true, header: true, body: true };
    }
    if operands.is_empty() {
        eprintln!("postcat: fatal: give queue ids with -q, or envelope files");
        eprintln!("postcat: fatal: {USAGE}");
        return exit::USAGE;
    }
    let config = match super::load_config(config_path.as_deref(), "postcat") {
        Ok(c) => c,
        Err(code) => return code,
    };
    let spool = match super::act::spool(&config, "postcat") {
        Ok(s) => s,
        Err(code) => return code,
    };
    let mut out = std::io::stdout().lock();
    for operand in &operands {
        let queue_id = if by_id {
            operand.as_str()
        } else {
            Path::new(operand).file_name().and_then(|n| n.to_str()).unwrap_or("")
        };
        if !id::is_valid(queue_id) {
            eprintln!("postcat: fatal: bad mail queue ID: {operand}");
            return 1;
        }
        let found = spool.as_ref().and_then(|s| s.find(queue_id).map(|(state, env)| (s, state, env)));
        let Some((spool, state, env)) = found else {
            eprintln!("postcat: fatal: open queue file {queue_id}: No such file or directory");
            return 1;
        };
        let body = match spool.read_body(queue_id) {
            Ok(b) => b,
            Err(e) => {
                eprintln!("postcat: fatal: open queue file {queue_id}: {e}");
                return 1;
            }
        };
        let _ = out.write_all(render(state, &env, &body, parts).as_bytes());
    }
    exit::OK
}

/// The whole `postcat` output for one message.
pub(crate) fn render(state: State, env: &Envelope, body: &[u8], parts: Parts) -> String {
    let name = format!("{}/{}", state.dir_name(), env.id);
    let mut s = String::new();
    if parts.envelope {
        s.push_str(&format!("*** ENVELOPE RECORDS {name} ***\n"));
        s.push_str(&envelope_records(env));
        s.push_str(&format!("*** MESSAGE CONTENTS {name} ***\n"));
    }
    // As in Postfix, the body starts at the first non-header line: the
    // blank line, shown with the body.
    let head = header::block(body);
    if parts.header {
        s.push_str(&lf_text(head));
    }
    if parts.body {
        let rest = lf_text(&body[head.len()..]);
        s.push_str(&rest);
        if !rest.is_empty() && !rest.ends_with('\n') {
            s.push('\n');
        }
    }
    if parts.envelope {
        s.push_str(&format!("*** HEADER EXTRACTED {name} ***\n"));
        s.push_str(&format!("*** MESSAGE FILE END {name} ***\n"));
    }
    s
}

/// Envelope records with Postfix's record names, plus posthorn's own state
/// as `named_attribute`s.
fn envelope_records(env: &Envelope) -> String {
    let pending = env.recipients.iter().filter(|r| r.state == RcptState::Pending).count();
    let mut s = format!("message_size: {:>15} {:>15} {:>15}\n", env.size, 0, pending);
    s.push_str(&format!("message_arrival_time: {}\n", super::act::asctime(env.arrival)));
    s.push_str(&format!("create_time: {}\n", super::act::asctime(env.arrival)));
    let o = &env.origin;
    let attrs = [
        ("protocol_name", Some(o.protocol.clone()).filter(|p| !p.is_empty())),
        ("helo_name", o.helo.clone()),
        ("client_address", o.client.clone()),
        ("login_name", o.user.clone()),
        ("envelope_id", env.envid.clone()),
        ("dsn_ret", env.ret.clone()),
    ];
    for (name, value) in attrs {
        if let Some(v) = value {
            s.push_str(&format!("named_attribute: {name}={v}\n"));
        }
    }
    s.push_str(&format!("named_attribute: posthorn_attempts={}\n", env.attempts));
    if env.next_attempt > 0 {
        s.push_str(&format!("named_attribute: posthorn_next_attempt={}\n", super::act::iso(env.next_attempt)));
    }
    if env.frozen {
        s.push_str("named_attribute: posthorn_frozen=yes\n");
    }
    if let Some(results) = &env.auth_results {
        // The `[verify]` results; Postfix keeps none in its queue file.
        s.push_str(&format!("named_attribute: posthorn_auth_results={results}\n"));
    }
    s.push_str(&format!("sender: {}\n", env.sender));
    for r in &env.recipients {
        // Postfix's records: the address before rewriting, and the DSN
        // ORCPT as it goes on to the next hop.
        let original = crate::message::original_recipient(r.orcpt.as_deref(), &r.address);
        s.push_str(&format!("original_recipient: {original}\n"));
        if let Some(orcpt) = &r.orcpt {
            s.push_str(&format!("dsn_orig_rcpt: {orcpt}\n"));
        }
        if let Some(notify) = &r.notify {
            s.push_str(&format!("dsn_notify_flags: {notify}\n"));
        }
        let record = if r.state == RcptState::Pending { "recipient" } else { "done_recipient" };
        s.push_str(&format!("{record}: {}\n", r.address));
    }
    s
}

/// Message bytes for the terminal: LF line ends, as Postfix shows them.
fn lf_text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).replace("\r\n", "\n")
}

/// Opens the spool and finds `queue_id`: shared by `exim -Mv*` and
/// `posthorn queue show`.
pub(crate) fn find(spool: &Option<Spool>, queue_id: &str) -> Option<(State, Envelope, Vec<u8>)> {
    let spool = spool.as_ref()?;
    let (state, env) = spool.find(queue_id)?;
    let body = spool.read_body(queue_id).ok()?;
    Some((state, env, body))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sections() {
        let mut env = crate::cli::select::sample("0KAB12CD34", "root@vm1", &["ops@example.org"], 1_795_613_746);
        env.size = 40;
        env.origin.user = Some("root".into());
        env.attempts = 2;
        let body = b"Subject: hi\r\nTo: ops@example.org\r\n\r\nhello\r\n";
        let all = render(State::Deferred, &env, body, Parts { envelope: true, header: true, body: true });
        let expected = "\
*** ENVELOPE RECORDS deferred/0KAB12CD34 ***
message_size:              40               0               1
message_arrival_time: Wed Nov 25 13:35:46 2026
create_time: Wed Nov 25 13:35:46 2026
named_attribute: protocol_name=local
named_attribute: login_name=root
named_attribute: posthorn_attempts=2
sender: root@vm1
original_recipient: ops@example.org
recipient: ops@example.org
*** MESSAGE CONTENTS deferred/0KAB12CD34 ***
Subject: hi
To: ops@example.org

hello
*** HEADER EXTRACTED deferred/0KAB12CD34 ***
*** MESSAGE FILE END deferred/0KAB12CD34 ***
";
        assert_eq!(all, expected);
        let h = render(State::Deferred, &env, body, Parts { header: true, ..Parts::default() });
        assert_eq!(h, "Subject: hi\nTo: ops@example.org\n");
        let b = render(State::Deferred, &env, body, Parts { body: true, ..Parts::default() });
        assert_eq!(b, "\nhello\n");
    }
}
