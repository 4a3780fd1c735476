//! Local delivery into Maildirs (`deliver.maildir_root`, with `{domain}` and
//! `{user}` replaced by the recipient's lowercased domain and local part).
//!
//! Each recipient gets its own file, committed the Maildir way: written in
//! `tmp/` under a name unique on this host, fsynced, renamed into `new/`,
//! and `new/` fsynced, so a crash leaves either no message or a whole one.
//! The file starts with `Return-Path:`, `X-Original-To:` (the recipient
//! before canonical maps and aliases rewrote it, as Postfix's local and
//! virtual write it: a catch-all's mail says which address it was sent to)
//! and `Delivered-To:`, and has LF line
//! ends, as mail readers expect on disk. The Maildir and its `tmp/`,
//! `new/`, `cur/` are made (mode 0700) on first delivery.
//!
//! A local part or domain that could step out of the root (`/`, `..`, a
//! leading `.`, NUL or control characters) is refused permanently; disk
//! trouble, full disks and quotas included, defers.

use crate::config::Config;
use crate::deliver::Delivery;
use crate::message::outcome::{Attempt, ErrorClass, Outcome};
use crate::message::{OutMessage, OutRecipient};
use crate::smtp::proto::reply::{Enhanced, Reply};
use std::fs::{self, File, OpenOptions};
use std::io::{self, BufWriter, Write};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

/// Makes file names unique among deliveries of this process in one
/// microsecond.
static COUNTER: AtomicU64 = AtomicU64::new(0);

/// The Maildir transport; cheap, stateless apart from the configuration.
pub struct Maildir {
    root: String,
    /// The host part of file names, `/` and `:` escaped.
    host: String,
}

impl Maildir {
    pub fn new(config: &Config) -> Maildir {
        Maildir { root: config.deliver.maildir_root.clone(), host: escape_host(&config.hostname) }
    }

    /// Delivers `msg` to every recipient's Maildir; one outcome each.
    pub async fn deliver(&self, msg: &OutMessage) -> Delivery {
        let mut outcomes = Vec::with_capacity(msg.recipients.len());
        for rcpt in &msg.recipients {
            outcomes.push(self.deliver_one(msg, rcpt).await);
        }
        Delivery { outcomes, hop_down: false, remote_dsn: false, setup: None, followups: Vec::new() }
    }

    async fn deliver_one(&self, msg: &OutMessage, rcpt: &OutRecipient) -> Outcome {
        let dir = match self.path_for(&rcpt.address) {
            Ok(dir) => dir,
            Err(why) => {
                let reply = Reply::new(550, Enhanced(5, 1, 3), format!("<{}>: {why}", rcpt.address));
                return Outcome::Permanent(failure(reply, ErrorClass::Local));
            }
        };
        let header = format!(
            "Return-Path: <{}>\nX-Original-To: {}\nDelivered-To: {}\n",
            clean(&msg.sender),
            rcpt.original(),
            rcpt.address
        );
        let body = msg.body.clone();
        let name = self.unique_name();
        let target = dir.clone();
        let result = tokio::task::spawn_blocking(move || write_message(&target, &name, header.as_bytes(), &body)).await;
        match result {
            Ok(Ok(())) => Outcome::Delivered(Attempt {
                relay: Some("maildir".into()),
                tls: false,
                reply: None,
                class: None,
                detail: "delivered to maildir".into(),
            }),
            Ok(Err(e)) => {
                tracing::warn!("{}: maildir {}: {e}", msg.id, dir.display());
                Outcome::Transient(failure(io_reply(&dir, &e), ErrorClass::Local))
            }
            Err(e) => {
                let reply = Reply::new(451, Enhanced(4, 3, 0), format!("maildir delivery failed: {e}"));
                Outcome::Transient(failure(reply, ErrorClass::Local))
            }
        }
    }

    /// The Maildir of `address`, from the root template.
    pub(crate) fn path_for(&self, address: &str) -> Result<PathBuf, String> {
        let (user, domain) = safe_parts(address)?;
        Ok(PathBuf::from(self.root.replace("{domain}", &domain).replace("{user}", &user)))
    }

    fn unique_name(&self) -> String {
        unique_name(&self.host)
    }
}

/// `<secs>.M<usecs>P<pid>Q<counter>.<host>`, the Maildir convention;
/// `host` as [`escape_host`] gives it.
pub(crate) fn unique_name(host: &str) -> String {
    let now = SystemTime::now().duration_since(UNIX_EPOCH).unwrap_or_default();
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    format!("{}.M{}P{}Q{n}.{host}", now.as_secs(), now.subsec_micros(), std::process::id())
}

/// The directory every Maildir of `template` (`deliver.maildir_root`) is
/// made in or under: the template up to the last `/` before its first `{`
/// (`/var/mail/{domain}/{user}` -> `/var/mail`), or the one Maildir a
/// template without `{` names.
pub(crate) fn fixed_root(template: &str) -> PathBuf {
    let Some((fixed, _)) = template.split_once('{') else { return PathBuf::from(template) };
    match fixed.rfind('/') {
        Some(0) => PathBuf::from("/"),
        Some(i) => PathBuf::from(&fixed[..i]),
        None => PathBuf::from("."),
    }
}

/// Whether `address` can name a Maildir: why not, if not. Asked at RCPT
/// for recipients bound for a Maildir (`route::router`), so that such an
/// address is refused there rather than bounced after it was accepted.
pub(crate) fn check_address(address: &str) -> Result<(), String> {
    safe_parts(address).map(|_| ())
}

/// The local part and domain of `address` as they go into a Maildir path,
/// lowercased and checked.
fn safe_parts(address: &str) -> Result<(String, String), String> {
    let (user, domain) = address.rsplit_once('@').ok_or("address has no domain")?;
    let user = user.to_lowercase();
    let domain = domain.trim_end_matches('.').to_lowercase();
    check_part("local part", &user)?;
    check_part("domain", &domain)?;
    Ok((user, domain))
}

/// Refuses what could leave the root or confuse a mail reader.
fn check_part(what: &str, part: &str) -> Result<(), String> {
    if part.is_empty() {
        return Err(format!("empty {what}"));
    }
    if part.contains('/') || part.contains("..") || part.starts_with('.') {
        return Err(format!("{what} `{}` is not allowed in a maildir path", part.escape_default()));
    }
    if part.chars().any(char::is_control) {
        return Err(format!("{what} contains control characters"));
    }
    Ok(())
}

/// `/` and `:` in the host name as Maildir writers escape them.
pub(crate) fn escape_host(host: &str) -> String {
    host.replace('/', "\\057").replace(':', "\\072")
}

/// The sender for `Return-Path:`, without anything that could end the line.
fn clean(sender: &str) -> String {
    sender.chars().filter(|c| !c.is_control()).collect()
}

fn failure(reply: Reply, class: ErrorClass) -> Attempt {
    Attempt { relay: None, tls: false, detail: reply.to_string(), reply: Some(reply), class: Some(class) }
}

/// A transient reply naming the disk trouble; quota and full disk get
/// their own status codes (RFC 3463 4.2.2, 4.3.1).
fn io_reply(dir: &Path, e: &io::Error) -> Reply {
    let (code, status) = match e.raw_os_error() {
        Some(c) if c == rustix::io::Errno::DQUOT.raw_os_error() => (452, Enhanced(4, 2, 2)),
        Some(c) if c == rustix::io::Errno::NOSPC.raw_os_error() => (452, Enhanced(4, 3, 1)),
        _ => (451, Enhanced(4, 3, 0)),
    };
    Reply::new(code, status, format!("maildir {}: {e}", dir.display()))
}

/// The blocking part: make the Maildir if needed, write `tmp/name`, sync,
/// rename into `new/`, sync `new/`.
pub(crate) fn write_message(dir: &Path, name: &str, header: &[u8], body: &[u8]) -> io::Result<()> {
    let new = dir.join("new");
    if !new.is_dir() {
        create_maildir(dir)?;
    }
    let tmp = dir.join("tmp").join(name);
    let written = (|| {
        let file = OpenOptions::new().write(true).create_new(true).mode(0o600).open(&tmp)?;
        let mut out = BufWriter::with_capacity(64 * 1024, file);
        out.write_all(header)?;
        write_lf(&mut out, body)?;
        let file = out.into_inner().map_err(|e| e.into_error())?;
        file.sync_all()
    })();
    if let Err(e) = written.and_then(|()| fs::rename(&tmp, new.join(name))) {
        let _ = fs::remove_file(&tmp);
        return Err(e);
    }
    File::open(&new)?.sync_all()
}

/// `dir` with `tmp/`, `new/` and `cur/`, mode 0700; the directories that
/// were made are synced into their parents.
fn create_maildir(dir: &Path) -> io::Result<()> {
    let mut builder = fs::DirBuilder::new();
    builder.recursive(true).mode(0o700);
    builder.create(dir)?;
    for sub in ["tmp", "new", "cur"] {
        builder.create(dir.join(sub))?;
    }
    File::open(dir)?.sync_all()?;
    if let Some(parent) = dir.parent().filter(|p| !p.as_os_str().is_empty()) {
        File::open(parent)?.sync_all()?;
    }
    Ok(())
}

/// Writes `body` with every CRLF turned into LF.
fn write_lf(out: &mut impl Write, body: &[u8]) -> io::Result<()> {
    let mut rest = body;
    while let Some(at) = rest.windows(2).position(|w| w == b"\r\n") {
        out.write_all(&rest[..at])?;
        out.write_all(b"\n")?;
        rest = &rest[at + 2..];
    }
    out.write_all(rest)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    fn maildir(root: &Path) -> Maildir {
        let text = format!(
            "hostname = \"mail/host:1\"\n[deliver]\nmaildir_root = \"{}/{{domain}}/{{user}}\"\n",
            root.display()
        );
        Maildir::new(&Config::parse(&text, Path::new("test.toml")).unwrap())
    }

    fn message(sender: &str, rcpts: &[&str], body: &[u8]) -> OutMessage {
        let mut msg = OutMessage::simple("TESTID", sender, rcpts, body);
        msg.eight_bit = false;
        msg
    }

    fn files(dir: &Path) -> Vec<PathBuf> {
        let mut out: Vec<PathBuf> = fs::read_dir(dir).unwrap().map(|e| e.unwrap().path()).collect();
        out.sort();
        out
    }

    #[test]
    fn paths_table() {
        let m = maildir(Path::new("/srv/mail"));
        let ok = |addr: &str, want: &str| assert_eq!(m.path_for(addr), Ok(PathBuf::from(want)), "{addr}");
        ok("Alice@Example.ORG", "/srv/mail/example.org/alice");
        ok("bob@example.org.", "/srv/mail/example.org/bob");
        ok("\"a@b\"@example.org", "/srv/mail/example.org/\"a@b\"");
        ok("jörg@bücher.example", "/srv/mail/bücher.example/jörg");
        for bad in [
            "../etc@example.org",
            "a/b@example.org",
            "..@example.org",
            ".hidden@example.org",
            "user@..",
            "user@../../etc",
            "user@.example.org",
            "user@exa/mple.org",
            "us\0er@example.org",
            "user\n@example.org",
            "@example.org",
            "user@",
            "nodomain",
        ] {
            assert!(m.path_for(bad).is_err(), "{bad:?} was accepted");
        }
    }

    #[test]
    fn crlf_becomes_lf() {
        let cases: &[(&[u8], &[u8])] = &[
            (b"a\r\nb\r\n", b"a\nb\n"),
            (b"", b""),
            (b"\r\n\r\n", b"\n\n"),
            (b"bare\rcr\n", b"bare\rcr\n"),
            (b"ends with cr\r", b"ends with cr\r"),
        ];
        for (input, want) in cases {
            let mut out = Vec::new();
            write_lf(&mut out, input).unwrap();
            assert_eq!(&out, want, "{:?}", String::from_utf8_lossy(input));
        }
    }

    #[test]
    fn unique_names_follow_the_convention() {
        let m = maildir(Path::new("/srv/mail"));
        let a = m.unique_name();
        let b = m.unique_name();
        assert_ne!(a, b);
        let re = regex::Regex::new(r"^\d+\.M\d+P\d+Q\d+\.mail\\057host\\0721$").unwrap();
        assert!(re.is_match(&a), "{a}");
    }

    #[tokio::test]
    async fn delivers_with_headers_and_lf() {
        let root = tempfile::tempdir().unwrap();
        let m = maildir(root.path());
        let body = b"Subject: hi\r\n\r\nline one\r\nline two\r\n";
        let msg = message("cron@sat.test", &["Alice@Example.org", "bob@example.org", "alice@example.org"], body);
        let delivery = m.deliver(&msg).await;
        assert_eq!(delivery.outcomes.len(), 3);
        for o in &delivery.outcomes {
            let Outcome::Delivered(a) = o else { panic!("{o:?}") };
            assert_eq!(a.detail, "delivered to maildir");
        }
        let alice = root.path().join("example.org/alice");
        for sub in ["tmp", "new", "cur"] {
            let mode = fs::metadata(alice.join(sub)).unwrap().permissions().mode();
            assert_eq!(mode & 0o777, 0o700, "{sub}");
        }
        assert!(files(&alice.join("tmp")).is_empty());
        let delivered = files(&alice.join("new"));
        assert_eq!(delivered.len(), 2, "two recipients share this maildir");
        let text = fs::read_to_string(&delivered[0]).unwrap();
        assert!(text.starts_with("Return-Path: <cron@sat.test>\nX-Original-To: "), "{text}");
        assert!(text.contains("\nDelivered-To: "), "{text}");
        assert!(text.ends_with("Subject: hi\n\nline one\nline two\n"), "{text}");
        assert!(!text.contains('\r'));
        let mode = fs::metadata(&delivered[0]).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
        let both: Vec<String> = delivered.iter().map(|p| fs::read_to_string(p).unwrap()).collect();
        assert!(both.iter().any(|t| t.contains("Delivered-To: Alice@Example.org\n")));
        assert!(both.iter().any(|t| t.contains("Delivered-To: alice@example.org\n")));
        let bob = files(&root.path().join("example.org/bob/new"));
        assert_eq!(bob.len(), 1);
    }

    #[tokio::test]
    async fn null_sender_and_refused_names() {
        let root = tempfile::tempdir().unwrap();
        let m = maildir(root.path());
        let msg = message("", &["../../escape@example.org", "ok@example.org"], b"x\r\n");
        let delivery = m.deliver(&msg).await;
        let Outcome::Permanent(a) = &delivery.outcomes[0] else { panic!("{delivery:?}") };
        assert_eq!(a.class, Some(ErrorClass::Local));
        assert!(a.detail.starts_with("550 5.1.3 <../../escape@example.org>: local part"), "{}", a.detail);
        assert!(matches!(delivery.outcomes[1], Outcome::Delivered(_)));
        let file = &files(&root.path().join("example.org/ok/new"))[0];
        assert!(fs::read_to_string(file).unwrap().starts_with("Return-Path: <>\n"));
        // Nothing was made outside the domain directory.
        assert_eq!(files(root.path()), vec![root.path().join("example.org")]);
    }

    #[tokio::test]
    async fn disk_trouble_defers() {
        let root = tempfile::tempdir().unwrap();
        // A file where the domain directory should be.
        fs::write(root.path().join("example.org"), b"").unwrap();
        let m = maildir(root.path());
        let delivery = m.deliver(&message("a@b.test", &["user@example.org"], b"x\r\n")).await;
        let Outcome::Transient(a) = &delivery.outcomes[0] else { panic!("{delivery:?}") };
        assert_eq!(a.class, Some(ErrorClass::Local));
        assert!(a.detail.starts_with("451 4.3.0 maildir "), "{}", a.detail);
    }

    #[test]
    fn quota_and_full_disk_codes() {
        let dir = Path::new("/m");
        let code = |errno: rustix::io::Errno| {
            let r = io_reply(dir, &io::Error::from_raw_os_error(errno.raw_os_error()));
            (r.code, r.enhanced.unwrap().to_string())
        };
        assert_eq!(code(rustix::io::Errno::DQUOT), (452, "4.2.2".to_string()));
        assert_eq!(code(rustix::io::Errno::NOSPC), (452, "4.3.1".to_string()));
        assert_eq!(code(rustix::io::Errno::IO), (451, "4.3.0".to_string()));
    }
}
