//! `sendmail`: the submission command every Unix program calls.
//!
//! The message goes into the spool's maildrop (synced before we exit 0)
//! and the daemon is poked to pick it up; if no daemon runs, it picks the
//! message up when it starts. So a program that got exit status 0 can
//! forget the message: nothing is lost whether the daemon is up or not.
//!
//! The option syntax is sendmail's, parsed by hand because it is not
//! getopt's (`-oi`, `-bs`, `-fADDR` glued or `-f ADDR` apart, `-q30m`).
//! Options that make no sense here (`-v`, `-oem`, `-N`, `-X`…) are accepted
//! and ignored, as Postfix and Exim do, so existing callers keep working.

use super::exit;
use crate::ingress::maildrop::{self, Drop};
use std::ffi::OsString;
use std::io::Read;
use std::path::{Path, PathBuf};

#[derive(Debug, Default, PartialEq)]
pub(crate) struct Options {
    pub(crate) mode: Mode,
    pub(crate) sender: Option<String>,
    pub(crate) full_name: Option<String>,
    pub(crate) extract: bool,
    /// `-i`/`-oi`: a line with a lone dot does not end the message.
    pub(crate) ignore_dots: bool,
    pub(crate) recipients: Vec<String>,
    pub(crate) config: Option<PathBuf>,
}

#[derive(Debug, Default, PartialEq, Eq)]
pub(crate) enum Mode {
    /// Deliver a message read from stdin (`-bm`, the default).
    #[default]
    Submit,
    /// SMTP on stdin/stdout (`-bs`).
    Smtp,
    /// List the queue (`-bp`).
    List,
    /// Flush the queue (`-q`).
    Flush,
}

/// Parses sendmail's arguments; an error is the usage message.
pub(crate) fn parse(args: &[String]) -> Result<Options, String> {
    let mut o = Options::default();
    let mut i = 0;
    // Options whose value may be glued (`-fx`) or the next argument (`-f x`).
    let value = |i: &mut usize, arg: &str, flag: &str| -> Result<String, String> {
        let glued = &arg[flag.len()..];
        if !glued.is_empty() {
            return Ok(glued.to_string());
        }
        *i += 1;
        args.get(*i).cloned().ok_or_else(|| format!("option {flag} requires an argument"))
    };
    while i < args.len() {
        let arg = args[i].as_str();
        if arg == "--" {
            o.recipients.extend(args[i + 1..].iter().cloned());
            break;
        }
        if !arg.starts_with('-') || arg == "-" {
            o.recipients.push(arg.to_string());
            i += 1;
            continue;
        }
        match arg {
            "-t" => o.extract = true,
            "-i" | "-oi" => o.ignore_dots = true,
            "-bm" => o.mode = Mode::Submit,
            "-bs" => o.mode = Mode::Smtp,
            "-bp" => o.mode = Mode::List,
            a if a.starts_with("-q") => o.mode = Mode::Flush,
            a if a.starts_with("-f") || a.starts_with("-r") => o.sender = Some(value(&mut i, a, &a[..2])?),
            a if a.starts_with("-F") => o.full_name = Some(value(&mut i, a, "-F")?),
            a if a.starts_with("-C") => o.config = Some(PathBuf::from(value(&mut i, a, "-C")?)),
            // Accepted for compatibility, with a value we do not use.
            a if a.starts_with("-N")
                || a.starts_with("-R")
                || a.starts_with("-V")
                || a.starts_with("-X")
                || a.starts_with("-B") =>
            {
                let flag = &a[..2];
                value(&mut i, a, flag)?;
            }
            a if a.starts_with("-o")
                || a.starts_with("-v")
                || a.starts_with("-m")
                || a.starts_with("-e")
                || a.starts_with("-d")
                || a.starts_with("-L")
                || a.starts_with("-U")
                || a == "-n"
                || a == "-x" => {}
            a if a.starts_with("-b") => return Err(format!("unsupported mode {a}")),
            a => return Err(format!("unknown option {a}")),
        }
        i += 1;
    }
    Ok(o)
}

pub(crate) fn main(args: &[OsString], explicit_config: Option<&Path>) -> u8 {
    let args: Vec<String> = args.iter().map(|a| a.to_string_lossy().into_owned()).collect();
    let opts = match parse(&args) {
        Ok(o) => o,
        Err(e) => {
            eprintln!("sendmail: {e}");
            eprintln!("usage: sendmail [-t] [-i] [-f sender] [-F name] [-bs|-bp|-q] [recipient ...]");
            return exit::USAGE;
        }
    };
    let explicit = opts.config.as_deref().or(explicit_config);
    let config = match super::load_config(explicit, "sendmail") {
        Ok(c) => c,
        Err(code) => return code,
    };
    match opts.mode {
        Mode::List => super::mailq::main(explicit),
        Mode::Flush => super::flush(explicit),
        Mode::Smtp => smtp_on_stdio(&config),
        Mode::Submit => submit(&config, opts),
    }
}

fn submit(config: &crate::config::Config, opts: Options) -> u8 {
    if opts.recipients.is_empty() && !opts.extract {
        eprintln!("sendmail: fatal: no recipients specified (give addresses or -t)");
        return exit::USAGE;
    }
    let drop = Drop {
        sender: opts.sender,
        recipients: opts.recipients,
        extract_recipients: opts.extract,
        full_name: opts.full_name,
    };
    // Refused here with a clear word rather than quarantined at pickup
    // after this command exited 0 (pickup checks again: a drop may be
    // written without this command).
    if let Err(bad) = drop.check() {
        eprintln!("sendmail: fatal: {bad}");
        return exit::USAGE;
    }
    let limit = config.smtp.max_message_size;
    let mut input = Vec::new();
    if let Err(e) = std::io::stdin().lock().take(limit + 1).read_to_end(&mut input) {
        eprintln!("sendmail: fatal: reading the message: {e}");
        return exit::DATAERR;
    }
    if input.len() as u64 > limit {
        eprintln!("sendmail: fatal: message larger than the limit of {limit} bytes");
        return exit::DATAERR;
    }
    if !opts.ignore_dots {
        truncate_at_dot(&mut input);
    }
    let dir = config.spool.join("maildrop");
    if let Err(e) = maildrop::write(&dir, &drop, &input) {
        eprintln!("sendmail: fatal: cannot queue the message in {}: {e}", dir.display());
        return exit::CANTCREAT;
    }
    crate::control::wake_pickup(&config.spool);
    exit::OK
}

/// Without `-i`, a line holding only `.` ends the message (sendmail's
/// traditional behaviour, which `mail(1)` users rely on).
fn truncate_at_dot(input: &mut Vec<u8>) {
    let mut start = 0;
    while start < input.len() {
        let end = input[start..].iter().position(|&b| b == b'\n').map(|p| start + p + 1).unwrap_or(input.len());
        let line = &input[start..end];
        let trimmed = line.strip_suffix(b"\n").unwrap_or(line);
        let trimmed = trimmed.strip_suffix(b"\r").unwrap_or(trimmed);
        if trimmed == b"." {
            input.truncate(start);
            return;
        }
        start = end;
    }
}

/// `sendmail -bs`: an SMTP session on stdin/stdout whose messages go to the
/// maildrop, exactly as a message given on stdin would.
fn smtp_on_stdio(config: &crate::config::Config) -> u8 {
    let rt = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("sendmail: fatal: {e}");
            return exit::SOFTWARE;
        }
    };
    let user = crate::account::user_name(rustix::process::getuid().as_raw());
    let ingress = crate::ingress::Ingress::to_maildrop(config, config.spool.join("maildrop"));
    rt.block_on(async {
        let stdio = tokio::io::join(tokio::io::stdin(), tokio::io::stdout());
        crate::smtp::server::session::run_session(
            stdio,
            crate::smtp::server::session::Peer::Local { user },
            config,
            &ingress,
        )
        .await;
    });
    crate::control::wake_pickup(&config.spool);
    exit::OK
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(args: &[&str]) -> Result<Options, String> {
        parse(&args.iter().map(|s| s.to_string()).collect::<Vec<_>>())
    }

    #[test]
    fn option_table() {
        let o = p(&["-t", "-oi", "-f", "root@x", "-FCron Daemon", "a@b", "c@d"]).unwrap();
        assert_eq!(
            o,
            Options {
                extract: true,
                ignore_dots: true,
                sender: Some("root@x".into()),
                full_name: Some("Cron Daemon".into()),
                recipients: vec!["a@b".into(), "c@d".into()],
                ..Options::default()
            }
        );
        assert_eq!(p(&["-fme@x", "-i", "u"]).unwrap().sender.as_deref(), Some("me@x"));
        assert_eq!(p(&["-bs"]).unwrap().mode, Mode::Smtp);
        assert_eq!(p(&["-bp"]).unwrap().mode, Mode::List);
        assert_eq!(p(&["-q"]).unwrap().mode, Mode::Flush);
        assert_eq!(p(&["-q30m"]).unwrap().mode, Mode::Flush);
        assert_eq!(p(&["-oem", "-v", "-odb", "-N", "never", "u"]).unwrap().recipients, vec!["u"]);
        assert_eq!(p(&["--", "-odd@x"]).unwrap().recipients, vec!["-odd@x"]);
        assert_eq!(p(&["-C", "/x.toml", "u"]).unwrap().config, Some(PathBuf::from("/x.toml")));
        assert!(p(&["-f"]).unwrap_err().contains("requires an argument"));
        assert!(p(&["-Z"]).unwrap_err().contains("unknown option -Z"));
        assert!(p(&["-bd"]).unwrap_err().contains("unsupported mode"));
    }

    #[test]
    fn lone_dot_ends_input() {
        let cases: [(&[u8], &[u8]); 4] =
            [(b"a\n.\nb\n", b"a\n"), (b"a\r\n.\r\nb", b"a\r\n"), (b"a\n..\nb\n", b"a\n..\nb\n"), (b".\n", b"")];
        for (input, expected) in cases {
            let mut v = input.to_vec();
            truncate_at_dot(&mut v);
            assert_eq!(v, expected);
        }
    }
}
