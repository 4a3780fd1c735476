//! `sendmail`: the submission command every Unix program calls.
//!
//! The message goes into the spool's maildrop (synced before we exit 0)
//! and the daemon is poked to pick it up; if no daemon runs, it picks the
//! message up when it starts. So a program that got exit status 0 can
//! forget the message: nothing is lost whether the daemon is up or not.
//!
//! The option syntax is sendmail's, parsed by hand because it is not
//! getopt's (`-oi`, `-bs`, `-fADDR` glued or `-f ADDR` apart, `-q30m`).
//!
//! Honoured: `-t`, `-i`/`-oi`, `-f`/`-r` (`-f '<>'` is the null sender),
//! `-F`, `-N` (DSN NOTIFY of every recipient), `-R` (DSN RET), `-V` (DSN
//! ENVID), `-bm`, `-bs`, `-bp`, `-q`, `-bv` (verify and route addresses),
//! `-bi`/`-I` (check the alias files, as `newaliases`), `-C PATH` and
//! `-c PATH` (the configuration). Accepted and ignored, as Postfix does, so
//! existing callers keep working: `-B type` (cron's `-B8BITMIME`), `-h N`,
//! `-L tag`, `-O opt=value`, `-X file`, `-G`, `-Am`/`-Ac`, `-U`, `-n`, `-x`,
//! `-v`, `-m`, `-e…`, `-d…` and every other `-o…` (`-oem`, `-odb`).

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
    /// `-N`: DSN NOTIFY for every recipient (`never`, `success,delay`...).
    pub(crate) notify: Option<String>,
    /// `-R`: DSN RET (`full` or `hdrs`).
    pub(crate) ret: Option<String>,
    /// `-V`: DSN ENVID.
    pub(crate) envid: Option<String>,
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
    /// Verify and route the recipients (`-bv`).
    Verify,
    /// Check the alias files (`-bi`, `-I`, the name `newaliases`).
    Aliases,
}

/// Whether the argument after `-c` names a configuration rather than being
/// a recipient after Sendmail 8's value-less `-c`.
fn looks_like_config(arg: &str) -> bool {
    Path::new(arg).exists() || arg.contains('/') || arg.ends_with(".toml")
}

/// `-N`: `never`, or a list of `success`, `delay`, `failure` (RFC 3461
/// NOTIFY) in any case; kept upper-case, as SMTP's NOTIFY is.
fn dsn_notify(value: &str) -> Result<String, String> {
    crate::smtp::proto::command::notify_value(value)
        .ok_or_else(|| format!("-N {value}: need never, or a list of success, delay and failure"))
}

/// `-R`: `full` or `hdrs` (RFC 3461 RET).
fn dsn_ret(value: &str) -> Result<String, String> {
    match value.to_ascii_uppercase().as_str() {
        r @ ("FULL" | "HDRS") => Ok(r.to_string()),
        _ => Err(format!("-R {value}: need full or hdrs")),
    }
}

/// `-V`: the envelope id as plain text, kept xtext-encoded as ENVID is.
fn dsn_envid(value: &str) -> Result<String, String> {
    let xtext = crate::smtp::proto::command::xtext_encode(value);
    if xtext.is_empty() || xtext.len() > 100 {
        return Err(format!("-V: the envelope id must be 1 to 100 characters (encoded), not {}", xtext.len()));
    }
    Ok(xtext)
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
            "-bv" => o.mode = Mode::Verify,
            "-bi" | "-I" => o.mode = Mode::Aliases,
            // Sendmail 8's obsolete `-c` (HoldExpensive) takes no value: a
            // configuration follows only if it looks like a path (a missing
            // one is then an error, never a recipient).
            "-c" => {
                if let Some(path) = args.get(i + 1).filter(|p| looks_like_config(p)) {
                    o.config = Some(super::config_arg(path));
                    i += 1;
                }
            }
            a if a.starts_with("-c") => o.config = Some(super::config_arg(&a[2..])),
            a if a.starts_with("-q") => o.mode = Mode::Flush,
            a if a.starts_with("-f") || a.starts_with("-r") => o.sender = Some(value(&mut i, a, &a[..2])?),
            a if a.starts_with("-F") => o.full_name = Some(value(&mut i, a, "-F")?),
            a if a.starts_with("-C") => o.config = Some(PathBuf::from(value(&mut i, a, "-C")?)),
            a if a.starts_with("-N") => o.notify = Some(dsn_notify(&value(&mut i, a, "-N")?)?),
            a if a.starts_with("-R") => o.ret = Some(dsn_ret(&value(&mut i, a, "-R")?)?),
            a if a.starts_with("-V") => o.envid = Some(dsn_envid(&value(&mut i, a, "-V")?)?),
            // Accepted for compatibility, with a value we do not use.
            a if a.starts_with("-X")
                || a.starts_with("-B")
                || a.starts_with("-h")
                || a.starts_with("-L")
                || a.starts_with("-O")
                || a.starts_with("-A") =>
            {
                let flag = &a[..2];
                value(&mut i, a, flag)?;
            }
            a if a.starts_with("-o")
                || a.starts_with("-v")
                || a.starts_with("-m")
                || a.starts_with("-e")
                || a.starts_with("-d")
                || a.starts_with("-U")
                || a == "-G"
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
        Mode::Verify => super::verify::sendmail_bv(&config, &opts.recipients),
        Mode::Aliases => super::verify::newaliases(&config, "newaliases"),
        Mode::Submit => submit(&config, opts),
    }
}

/// `newaliases [-c PATH | -C PATH] [-oA…] [-v]`: the alias check of
/// `sendmail -bi`.
pub(crate) fn newaliases_main(args: &[String]) -> u8 {
    let mut config = None;
    let mut i = 0;
    while i < args.len() {
        match args[i].as_str() {
            "-c" | "-C" => {
                i += 1;
                match args.get(i) {
                    Some(path) => config = Some(super::config_arg(path)),
                    None => return newaliases_usage(&format!("option {} requires an argument", args[i - 1])),
                }
            }
            a if a.starts_with("-oA") || a == "-v" => {}
            a => return newaliases_usage(&format!("unknown option {a}")),
        }
        i += 1;
    }
    match super::load_config(config.as_deref(), "newaliases") {
        Ok(config) => super::verify::newaliases(&config, "newaliases"),
        Err(code) => code,
    }
}

fn newaliases_usage(problem: &str) -> u8 {
    eprintln!("newaliases: {problem}");
    eprintln!("usage: newaliases [-c config]");
    exit::USAGE
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
        notify: opts.notify,
        ret: opts.ret,
        envid: opts.envid,
        ..Drop::default()
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
/// maildrop, exactly as a message given on stdin would; a running daemon
/// takes each at once and the client is told its queue id.
///
/// Programs and here-documents write bare LF line ends, which an SMTP
/// server must not take as line ends from the network: they are made CRLF
/// on the way in ([`CrlfReader`]), since this client is local and sendmail
/// has always read text. The exit status follows what the client was told
/// ([`ReplyWatch`]): non-zero when a message was refused or the input ended
/// inside one, so a lost message never exits 0.
fn smtp_on_stdio(config: &crate::config::Config) -> u8 {
    let rt = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("sendmail: fatal: cannot start: {e}");
            return exit::SOFTWARE;
        }
    };
    let user = crate::account::user_name(rustix::process::getuid().as_raw());
    let ingress = crate::ingress::Ingress::to_maildrop(config, config.spool.join("maildrop"));
    let watch = std::sync::Arc::new(std::sync::Mutex::new(Replies::default()));
    rt.block_on(async {
        let input = CrlfReader::new(tokio::io::stdin());
        let output = ReplyWatch { inner: tokio::io::stdout(), replies: watch.clone() };
        crate::smtp::server::session::run_session(
            tokio::io::join(input, output),
            crate::smtp::server::session::Peer::Local { user },
            config,
            &ingress,
        )
        .await;
    });
    crate::control::wake_pickup(&config.spool);
    let replies = watch.lock().map(|r| r.clone()).unwrap_or_default();
    if replies.in_data {
        eprintln!("sendmail: fatal: the input ended inside a message (no line with a lone \".\"); it was not queued");
        return exit::TEMPFAIL;
    }
    if replies.refused > 0 {
        eprintln!("sendmail: fatal: {} message(s) refused (see the replies above); not queued", replies.refused);
        return exit::TEMPFAIL;
    }
    exit::OK
}

/// Turns bare LF into CRLF in what it reads; a CR already before the LF
/// (even at the end of the previous read) is kept as it is.
struct CrlfReader<R> {
    inner: R,
    /// Converted bytes the caller's buffer had no room for.
    pending: Vec<u8>,
    last_was_cr: bool,
}

impl<R> CrlfReader<R> {
    fn new(inner: R) -> Self {
        CrlfReader { inner, pending: Vec::new(), last_was_cr: false }
    }

    fn convert(&mut self, data: &[u8]) {
        for &b in data {
            if b == b'\n' && !self.last_was_cr {
                self.pending.push(b'\r');
            }
            self.pending.push(b);
            self.last_was_cr = b == b'\r';
        }
    }
}

impl<R: tokio::io::AsyncRead + Unpin> tokio::io::AsyncRead for CrlfReader<R> {
    fn poll_read(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        use std::task::Poll;
        if self.pending.is_empty() {
            let mut raw = [0u8; 8192];
            let mut raw_buf = tokio::io::ReadBuf::new(&mut raw);
            match std::pin::Pin::new(&mut self.inner).poll_read(cx, &mut raw_buf) {
                Poll::Ready(Ok(())) => {}
                other => return other,
            }
            let filled = raw_buf.filled().to_vec();
            if filled.is_empty() {
                return Poll::Ready(Ok(()));
            }
            self.convert(&filled);
        }
        let n = self.pending.len().min(buf.remaining());
        buf.put_slice(&self.pending[..n]);
        self.pending.drain(..n);
        Poll::Ready(Ok(()))
    }
}

/// What the session told the client, as far as the exit status cares.
#[derive(Clone, Debug, Default, PartialEq)]
struct Replies {
    /// A 354 was sent and the end of the message not yet answered.
    in_data: bool,
    /// Messages answered with 4xx or 5xx at their end.
    refused: usize,
    line: Vec<u8>,
}

impl Replies {
    fn feed(&mut self, bytes: &[u8]) {
        for &b in bytes {
            if b != b'\n' {
                self.line.push(b);
                continue;
            }
            let line = std::mem::take(&mut self.line);
            // Only the last line of a reply (`250 ...`, not `250-...`) counts.
            let code = match line.get(..4) {
                Some([a, b, c, b' ' | b'\r']) if [a, b, c].iter().all(|d| d.is_ascii_digit()) => {
                    (a - b'0') as u16 * 100 + (b - b'0') as u16 * 10 + (c - b'0') as u16
                }
                _ => continue,
            };
            if code == 354 {
                self.in_data = true;
            } else if std::mem::take(&mut self.in_data) && code >= 400 {
                self.refused += 1;
            }
        }
    }
}

/// Passes the session's replies on to stdout, noting them in [`Replies`].
struct ReplyWatch<W> {
    inner: W,
    replies: std::sync::Arc<std::sync::Mutex<Replies>>,
}

impl<W: tokio::io::AsyncWrite + Unpin> tokio::io::AsyncWrite for ReplyWatch<W> {
    fn poll_write(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &[u8],
    ) -> std::task::Poll<std::io::Result<usize>> {
        let result = std::pin::Pin::new(&mut self.inner).poll_write(cx, buf);
        if let (std::task::Poll::Ready(Ok(n)), Ok(mut replies)) = (&result, self.replies.lock()) {
            replies.feed(&buf[..*n]);
        }
        result
    }

    fn poll_flush(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.inner).poll_shutdown(cx)
    }
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
    fn new_options_table() {
        let o = p(&["-FCronDaemon", "-i", "-B8BITMIME", "-oem", "-oi", "-t"]).unwrap();
        assert!(o.extract && o.ignore_dots && o.recipients.is_empty());
        let o = p(&["-h", "5", "-O", "Timeout=1", "-G", "-Am", "-L", "tag", "-Bbinarymime", "u@x"]).unwrap();
        assert_eq!(o.recipients, vec!["u@x"]);
        let o = p(&["-N", "success,delay", "-R", "hdrs", "-V", "id 1+x", "u@x"]).unwrap();
        assert_eq!(
            (o.notify.as_deref(), o.ret.as_deref(), o.envid.as_deref()),
            (Some("SUCCESS,DELAY"), Some("HDRS"), Some("id+201+2Bx"))
        );
        assert_eq!(p(&["-Nnever", "u"]).unwrap().notify.as_deref(), Some("NEVER"));
        assert!(p(&["-N", "sometimes", "u"]).unwrap_err().contains("-N sometimes"));
        assert!(p(&["-R", "body", "u"]).unwrap_err().contains("full or hdrs"));
        assert_eq!(p(&["-bv", "a@b"]).unwrap().mode, Mode::Verify);
        assert_eq!(p(&["-bi"]).unwrap().mode, Mode::Aliases);
        assert_eq!(p(&["-I"]).unwrap().mode, Mode::Aliases);
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("p.toml");
        std::fs::write(&file, "").unwrap();
        let f = file.to_str().unwrap();
        assert_eq!(p(&["-c", f, "u"]).unwrap().config, Some(file.clone()));
        assert_eq!(p(&[&format!("-c{f}"), "u"]).unwrap().config, Some(file.clone()));
        // Sendmail 8's `-c` takes no value: a recipient after it stays one.
        let o = p(&["-c", "root"]).unwrap();
        assert_eq!((o.config, o.recipients), (None, vec!["root".to_string()]));
        // A path that is not there is still a path, refused at loading.
        assert_eq!(p(&["-c", "/etc/nope.toml", "u"]).unwrap().config, Some(PathBuf::from("/etc/nope.toml")));
    }

    #[test]
    fn bare_lf_becomes_crlf_across_reads() {
        let mut r = CrlfReader::new(&b""[..]);
        r.convert(b"a\nb\r");
        r.convert(b"\nc\n");
        assert_eq!(r.pending, b"a\r\nb\r\nc\r\n");
    }

    #[test]
    fn replies_tell_a_refused_or_unfinished_message() {
        let mut r = Replies::default();
        r.feed(b"220 x\r\n250-x\r\n250 OK\r\n354 go\r\n250 2.0.0 Ok: queued as X\r\n");
        assert_eq!((r.in_data, r.refused), (false, 0));
        r.feed(b"354 go\r\n451 4.3.0 no\r\n354 go\r\n");
        assert_eq!((r.in_data, r.refused), (true, 1));
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
