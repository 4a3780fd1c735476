//! `exim`: Exim's queue options on posthorn's queue. Queue ids are
//! posthorn's (eleven characters, ten from earlier releases); they are
//! what `exim -bp` prints and what `-Mrm` takes.
//!
//! - `-bp` (`-bpa`, `-bpr`, `-bpu`): the queue in Exim's layout: age, size,
//!   id, `<sender>`, ` *** frozen ***`, then the recipients indented (`D`
//!   before those already done; `-bpu` leaves them out); `-bpc` the count;
//! - `-Mvb ID` body, `-Mvh ID` header file, `-Mvl ID` the message's log
//!   (from its attempt history), `-Mvc ID` the whole message;
//! - `-Mrm ID...` remove, `-Mf ID...` freeze, `-Mt ID...` thaw, `-M ID...`
//!   deliver now, through the daemon (with it down, all but `-M` change the
//!   files themselves, see `act`); `-q`, `-qf`, `-qff` retry
//!   everything now, `-qR DOMAIN` the messages for one domain;
//! - `-bV` the version; anything else (`-t`, `-i`, `-f`, `-bs`, recipients)
//!   is a submission, handled as `sendmail` does.
//!
//! `-C PATH` (or `-c PATH`) and `POSTHORN_CONFIG` choose the configuration.

use super::act::{self, changed};
use super::exit;
use super::postcat;
use crate::config::Config;
use crate::message::header;
use crate::message::outcome::Status;
use crate::queue::QueueAction;
use crate::spool::envelope::{Envelope, RcptState};
use crate::spool::{State, id};
use std::ffi::OsString;
use std::io::Write;
use std::path::PathBuf;

#[derive(Debug, PartialEq, Eq)]
enum Mode {
    List {
        undelivered_only: bool,
    },
    Count,
    Show(Show),
    Act(QueueAction),
    Flush,
    Domain(String),
    Version,
    /// `-bt` (address testing) or `-bv` (verification): addresses in `ids`.
    Verify(super::verify::Style),
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Show {
    Body,
    Header,
    Log,
    Copy,
}

struct Parsed {
    mode: Mode,
    ids: Vec<String>,
    config: Option<PathBuf>,
}

pub(crate) fn main(args: &[OsString]) -> u8 {
    let strings: Vec<String> = args.iter().map(|a| a.to_string_lossy().into_owned()).collect();
    let parsed = match parse(&strings) {
        Ok(Some(p)) => p,
        // Not a queue option: a submission, the way Exim is called as sendmail.
        Ok(None) => return super::sendmail::main(args, None),
        Err(e) => {
            eprintln!("exim: {e}");
            eprintln!(
                "exim: usage: exim -bp | -bpc | -bpu | -M ID... | -Mrm ID... | -Mf ID... | -Mt ID... | -Mvb ID | -Mvh ID | -Mvl ID | -q | -qf"
            );
            return exit::USAGE;
        }
    };
    let config = match super::load_config(parsed.config.as_deref(), "exim") {
        Ok(c) => c,
        Err(code) => return code,
    };
    match parsed.mode {
        Mode::Version => {
            println!("Exim-compatible interface of posthorn {}", env!("CARGO_PKG_VERSION"));
            exit::OK
        }
        Mode::List { undelivered_only } => list(&config, undelivered_only),
        Mode::Count => count(&config),
        Mode::Show(what) => show(&config, what, &parsed.ids[0]),
        Mode::Act(action) => act_on(&config, action, &parsed.ids),
        Mode::Flush => super::flush_as(config.source.as_deref(), "exim"),
        Mode::Domain(domain) => super::postqueue::main(&with_config(&config, &["-s", &domain])),
        Mode::Verify(style) => super::verify::verify(&config, &parsed.ids, style, "exim"),
    }
}

fn with_config(config: &Config, args: &[&str]) -> Vec<String> {
    let mut v: Vec<String> = Vec::new();
    if let Some(source) = &config.source {
        v.push("-c".into());
        v.push(source.display().to_string());
    }
    v.extend(args.iter().map(|s| s.to_string()));
    v
}

/// `Ok(None)`: no queue option, hand the arguments to `sendmail`.
fn parse(args: &[String]) -> Result<Option<Parsed>, String> {
    let mut mode = None;
    let mut ids = Vec::new();
    let mut config = None;
    let mut i = 0;
    while i < args.len() {
        let arg = args[i].as_str();
        let next = match arg {
            "-C" | "-c" => {
                i += 1;
                config = Some(super::config_arg(args.get(i).ok_or(format!("{arg} needs a file name"))?));
                i += 1;
                continue;
            }
            "-v" | "-odf" | "-odi" | "-odb" | "-odq" => {
                i += 1;
                continue;
            }
            "-bp" | "-bpa" | "-bpr" | "-bpra" => Mode::List { undelivered_only: false },
            "-bpu" | "-bpru" => Mode::List { undelivered_only: true },
            "-bpc" => Mode::Count,
            "-bV" => Mode::Version,
            "-bt" => Mode::Verify(super::verify::Style::EximTest),
            "-bv" => Mode::Verify(super::verify::Style::EximVerify),
            "-M" => Mode::Act(QueueAction::Deliver),
            "-Mrm" => Mode::Act(QueueAction::Delete),
            "-Mf" => Mode::Act(QueueAction::Freeze),
            "-Mt" => Mode::Act(QueueAction::Release),
            "-Mvb" => Mode::Show(Show::Body),
            "-Mvh" => Mode::Show(Show::Header),
            "-Mvl" => Mode::Show(Show::Log),
            "-Mvc" => Mode::Show(Show::Copy),
            "-q" | "-qf" | "-qff" | "-qq" | "-qqf" | "-qqff" => Mode::Flush,
            "-qR" | "-qRf" | "-qRff" | "-R" => {
                i += 1;
                Mode::Domain(args.get(i).ok_or(format!("{arg} needs a domain"))?.clone())
            }
            // `-q30m` starts a queue runner in Exim; posthorn's daemon
            // always runs its own, so this is a flush.
            a if a.starts_with("-q") && a[2..].chars().all(|c| c.is_ascii_alphanumeric()) => Mode::Flush,
            a if a.starts_with("-M") || a.starts_with("-bp") => {
                return Err(format!("unknown, malformed, or incomplete option {a}"));
            }
            a if mode.is_some() && !a.starts_with('-') => {
                ids.push(a.to_string());
                i += 1;
                continue;
            }
            _ if mode.is_none() => return Ok(None),
            a => return Err(format!("unknown, malformed, or incomplete option {a}")),
        };
        if mode.replace(next).is_some() {
            return Err(format!("{arg}: only one queue option at a time"));
        }
        i += 1;
    }
    let Some(mode) = mode else { return Ok(None) };
    let option = args.iter().find(|a| a.starts_with("-M")).map(String::as_str).unwrap_or("-M");
    match &mode {
        Mode::Act(_) | Mode::Show(_) if ids.is_empty() => {
            return Err(format!("no message ids given after {option} option"));
        }
        Mode::Show(_) if ids.len() > 1 => return Err("*** Only one message can be listed at once".into()),
        Mode::Act(_) | Mode::Show(_) => {
            if let Some(bad) = ids.iter().find(|i| !id::is_valid(i)) {
                return Err(format!("malformed message id {bad} after {option} option"));
            }
        }
        Mode::Verify(_) if ids.is_empty() => return Err("no addresses given to verify".into()),
        Mode::Verify(_) => {}
        _ if !ids.is_empty() => return Err(format!("unexpected argument {}", ids[0])),
        _ => {}
    }
    Ok(Some(Parsed { mode, ids, config }))
}

fn load(config: &Config) -> Result<Vec<(State, Envelope)>, u8> {
    Ok(act::spool(config, "exim")?.map(|s| super::mailq::collect(&s)).unwrap_or_default())
}

fn list(config: &Config, undelivered_only: bool) -> u8 {
    let queue = match load(config) {
        Ok(q) => q,
        Err(code) => return code,
    };
    let now = crate::clock::now_secs();
    let mut out = String::new();
    for (_, env) in &queue {
        out.push_str(&render(env, now, undelivered_only));
    }
    let _ = std::io::stdout().lock().write_all(out.as_bytes());
    exit::OK
}

fn count(config: &Config) -> u8 {
    match load(config) {
        Ok(q) => {
            println!("{}", q.len());
            exit::OK
        }
        Err(code) => code,
    }
}

/// One message in `exim -bp`'s layout.
pub(crate) fn render(env: &Envelope, now: u64, undelivered_only: bool) -> String {
    let mut s = format!("{} {} {} <{}>", age(now.saturating_sub(env.arrival)), size(env.size), env.id, env.sender);
    if env.frozen {
        s.push_str(" *** frozen ***");
    }
    s.push('\n');
    for r in &env.recipients {
        let done = r.state != RcptState::Pending;
        if done && undelivered_only {
            continue;
        }
        s.push_str(&format!("        {} {}\n", if done { "D" } else { " " }, r.address));
    }
    s.push('\n');
    s
}

/// Exim's age column: minutes up to 90, then hours up to 72, then days.
pub(crate) fn age(secs: u64) -> String {
    let minutes = secs / 60;
    if minutes <= 90 {
        return format!("{minutes:>2}m");
    }
    let hours = (minutes + 30) / 60;
    if hours > 72 { format!("{:>2}d", (hours + 12) / 24) } else { format!("{hours:>2}h") }
}

/// Exim's size column, five characters: `  812`, ` 2.9K`, `  14K`, ` 1.2M`.
pub(crate) fn size(bytes: u64) -> String {
    let b = bytes as f64;
    match bytes {
        0 => "     ".into(),
        n if n < 1024 => format!("{n:>5}"),
        n if n < 10 * 1024 => format!("{:>4.1}K", b / 1024.0),
        n if n < 1024 * 1024 => format!("{:>4}K", (n + 512) / 1024),
        n if n < 10 * 1024 * 1024 => format!("{:>4.1}M", b / (1024.0 * 1024.0)),
        n => format!("{:>4}M", (n + 512 * 1024) / (1024 * 1024)),
    }
}

fn show(config: &Config, what: Show, queue_id: &str) -> u8 {
    let spool = match act::spool(config, "exim") {
        Ok(s) => s,
        Err(code) => return code,
    };
    let Some((_, env, body)) = postcat::find(&spool, queue_id) else {
        let (dir, suffix) = match what {
            Show::Body => ("input", "-D"),
            Show::Header | Show::Copy => ("input", "-H"),
            Show::Log => ("msglog", ""),
        };
        println!("Failed to open {dir} file for {queue_id}{suffix}: No such file or directory");
        return 1;
    };
    // The blank line after the header section belongs to neither part, as
    // in Exim's spool files.
    let split = header::split(&body);
    let out = match what {
        Show::Body => format!("{queue_id}-D\n{}", String::from_utf8_lossy(&lf(split.body))),
        Show::Header => header_file(&env, split.head),
        Show::Log => message_log(&env),
        Show::Copy => String::from_utf8_lossy(&lf(&body)).into_owned(),
    };
    let _ = std::io::stdout().lock().write_all(out.as_bytes());
    exit::OK
}

/// `bytes` with LF line ends, as in Exim's spool files.
fn lf(bytes: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(bytes.len());
    for line in bytes.split_inclusive(|&b| b == b'\n') {
        match line.strip_suffix(b"\r\n") {
            Some(text) => {
                out.extend_from_slice(text);
                out.push(b'\n');
            }
            None => out.extend_from_slice(line),
        }
    }
    out
}

/// Something shaped like Exim's `-H` spool file: the envelope, then each
/// header with its length and flag letter.
fn header_file(env: &Envelope, head: &[u8]) -> String {
    let mut s = format!("{}-H\n", env.id);
    s.push_str(&format!("{}\n", env.origin.user.as_deref().unwrap_or("posthorn")));
    s.push_str(&format!("<{}>\n", env.sender));
    s.push_str(&format!("{} 0\n", env.arrival));
    if env.frozen {
        s.push_str("-frozen 0\n");
    }
    s.push_str(&format!("-posthorn_attempts {}\n", env.attempts));
    if let Some(results) = &env.auth_results {
        s.push_str(&format!("-posthorn_auth_results {results}\n"));
    }
    s.push_str("XX\n");
    s.push_str(&format!("{}\n", env.recipients.len()));
    for r in &env.recipients {
        s.push_str(&format!("{}\n", r.address));
    }
    s.push('\n');
    for field in header::fields(head) {
        // The length counts bytes, as Exim's does.
        let raw = lf(field.raw());
        let name = String::from_utf8_lossy(field.name()).to_ascii_lowercase();
        let flag = match name.as_str() {
            "received" => 'P',
            "from" => 'F',
            "to" => 'T',
            "cc" => 'C',
            "bcc" => 'B',
            "message-id" => 'I',
            "reply-to" => 'R',
            "sender" => 'S',
            _ => ' ',
        };
        s.push_str(&format!("{:03}{flag} {}", raw.len(), String::from_utf8_lossy(&raw)));
    }
    s
}

/// The message's log, built from its envelope and attempt history in
/// Exim's message-log style: `<=` arrival, `=>` delivered, `**` failed,
/// `==` deferred.
pub(crate) fn message_log(env: &Envelope) -> String {
    let mut lines: Vec<(u64, String)> = Vec::new();
    let from = if env.sender.is_empty() { "<>".to_string() } else { env.sender.clone() };
    let mut arrival = format!("<= {from} P={} S={}", env.origin.protocol, env.size);
    if let Some(user) = &env.origin.user {
        arrival.push_str(&format!(" U={user}"));
    }
    if let Some(client) = &env.origin.client {
        arrival.push_str(&format!(" H=[{client}]"));
    }
    lines.push((env.arrival, arrival));
    for r in &env.recipients {
        for a in &r.history {
            let mark = match a.status {
                Status::Sent => "=>",
                Status::Deferred => "==",
                Status::Bounced | Status::Expired => "**",
            };
            let mut line = format!("{mark} {}", r.address);
            if let Some(relay) = &a.relay {
                line.push_str(&format!(" H={relay}"));
            }
            if a.tls {
                line.push_str(" X=TLS");
            }
            if mark != "=>" {
                line.push_str(&format!(": {}", a.detail));
            } else if let Some(reply) = &a.reply {
                line.push_str(&format!(" C=\"{reply}\""));
            }
            lines.push((a.at, line));
        }
    }
    lines.sort_by_key(|(at, _)| *at);
    let mut s: String = lines.into_iter().map(|(at, l)| format!("{} {l}\n", act::log_time(at))).collect();
    if env.next_attempt > 0 && !env.is_done() {
        s.push_str(&format!("{} next attempt\n", act::log_time(env.next_attempt)));
    }
    s
}

fn act_on(config: &Config, action: QueueAction, ids: &[String]) -> u8 {
    let spool = match act::spool(config, "exim") {
        Ok(s) => s,
        Err(code) => return code,
    };
    // Freeze and thaw depend on the current mark: read it first.
    let mut targets = Vec::new();
    let mut ok = true;
    for queue_id in ids {
        let found = spool.as_ref().and_then(|s| s.find(queue_id));
        match (action, found) {
            (QueueAction::Delete, None) => {
                println!("Spool data file for {queue_id} does not exist");
                println!("Message {queue_id} has been removed or did not exist");
                ok = false;
            }
            (_, None) => {
                println!("Spool data file for {queue_id} does not exist");
                ok = false;
            }
            (QueueAction::Freeze, Some((_, env))) if env.frozen => {
                println!("Message {queue_id} is already frozen");
                ok = false;
            }
            (QueueAction::Release, Some((state, env))) if !(env.frozen || state == State::Hold) => {
                println!("Message {queue_id} is not frozen");
                ok = false;
            }
            _ => targets.push(queue_id.clone()),
        }
    }
    let results = match act::act(config, "exim", action, &targets) {
        Ok(r) => r,
        Err(code) => return code,
    };
    for r in &results {
        let id = &r.id;
        if !changed(r) {
            ok = false;
            match (&r.error, action) {
                (Some(e), _) => println!("Message {id} could not be changed: {e}"),
                (None, QueueAction::Delete) => println!("Message {id} has been removed or did not exist"),
                (None, _) => println!("Spool data file for {id} does not exist"),
            }
            continue;
        }
        match action {
            QueueAction::Delete => println!("Message {id} has been removed"),
            QueueAction::Freeze => println!("Message {id} is now frozen"),
            QueueAction::Release => println!("Message {id} is no longer frozen"),
            // Exim's -M shows the delivery itself; the daemon does it now.
            _ => {}
        }
    }
    if ok { exit::OK } else { 1 }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(args: &[&str]) -> Result<Option<Mode>, String> {
        parse(&args.iter().map(|s| s.to_string()).collect::<Vec<_>>()).map(|o| o.map(|p| p.mode))
    }

    #[test]
    fn options() {
        assert_eq!(p(&["-bp"]), Ok(Some(Mode::List { undelivered_only: false })));
        assert_eq!(p(&["-bpc"]), Ok(Some(Mode::Count)));
        assert_eq!(p(&["-Mrm", "0KAB12CD34", "0KAB12CD35"]), Ok(Some(Mode::Act(QueueAction::Delete))));
        assert_eq!(p(&["-C", "/x.toml", "-qff"]), Ok(Some(Mode::Flush)));
        assert_eq!(p(&["-q30m"]), Ok(Some(Mode::Flush)));
        assert_eq!(p(&["-t", "-i"]), Ok(None));
        assert_eq!(p(&["root@example.org"]), Ok(None));
        assert!(p(&["-Mrm"]).unwrap_err().contains("no message ids given after -Mrm option"));
        assert!(p(&["-Mrm", "1RBuSi-0004UY-Lx"]).unwrap_err().contains("malformed message id 1RBuSi-0004UY-Lx"));
        assert!(p(&["-Mvb", "0KAB12CD34", "0KAB12CD35"]).unwrap_err().contains("Only one message"));
        assert!(p(&["-Mxx", "0KAB12CD34"]).is_err());
    }

    #[test]
    fn layout() {
        assert_eq!(
            [age(0), age(25 * 60), age(91 * 60), age(72 * 3600), age(80 * 3600)],
            [" 0m", "25m", " 2h", "72h", " 3d"]
        );
        assert_eq!(
            [size(812), size(2970), size(14_000), size(1_250_000), size(50 << 20)],
            ["  812", " 2.9K", "  14K", " 1.2M", "  50M"]
        );
        let mut env = crate::cli::select::sample("0KAB12CD34", "root@vm1", &["a@x", "b@x"], 1000);
        env.size = 2970;
        env.frozen = true;
        env.recipients[1].state = RcptState::Delivered;
        let expected = "25m  2.9K 0KAB12CD34 <root@vm1> *** frozen ***\n          a@x\n        D b@x\n\n";
        assert_eq!(render(&env, 1000 + 25 * 60, false), expected);
        assert_eq!(
            render(&env, 1000 + 25 * 60, true),
            "25m  2.9K 0KAB12CD34 <root@vm1> *** frozen ***\n          a@x\n\n"
        );
    }
}
