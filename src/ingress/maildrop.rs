//! The maildrop: how `sendmail` hands a message to the daemon.
//!
//! Any local user may write a file here (the directory is mode 1733, like
//! Postfix's; 3733 with the daemon's group once it runs as its own user);
//! only the daemon reads them. A drop is one file: a JSON line
//! with the envelope as `sendmail` was told it, then the message as given.
//! The writer syncs the file and the directory before `sendmail` exits 0, so
//! a message handed to `sendmail` survives a crash whether or not the
//! daemon runs. The daemon treats every drop as untrusted input: it bounds
//! the size, parses defensively, takes the submitting user from the file's
//! owner rather than from its content, and quarantines what it cannot read
//! or whose addresses are not addresses (a newline would forge a log line,
//! a `>` or a space would add ESMTP parameters to the outgoing MAIL/RCPT).

use super::{Ingress, IngressError};
use crate::smtp::proto::address::{self, AddressError, PathKind};
use rustix::fd::OwnedFd;
use rustix::fs::Stat;
use serde::{Deserialize, Serialize};
use std::io::{self, Read, Write};
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

/// The envelope part of a drop.
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq)]
pub(crate) struct Drop {
    /// `-f`; `None` means "the submitting user".
    pub(crate) sender: Option<String>,
    pub(crate) recipients: Vec<String>,
    /// `-t`: take recipients from To/Cc/Bcc too.
    #[serde(default)]
    pub(crate) extract_recipients: bool,
    /// `-F`: the sender's full name for a generated `From:`.
    #[serde(default)]
    pub(crate) full_name: Option<String>,
    /// `-N`: the DSN NOTIFY of every recipient, as SMTP carries it
    /// (`NEVER`, `SUCCESS,DELAY`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) notify: Option<String>,
    /// `sendmail -bs`: each recipient's own NOTIFY, in the order of
    /// `recipients`; empty when `notify` applies to all.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub(crate) notifies: Vec<Option<String>>,
    /// `-R`: DSN RET, `FULL` or `HDRS`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) ret: Option<String>,
    /// `-V`: DSN ENVID, xtext-encoded.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) envid: Option<String>,
}

/// An address of a drop that the SMTP path grammar refuses. The address
/// is shown escaped (`{:?}`), so the text is one safe line.
#[derive(Debug, thiserror::Error)]
#[error("bad {role} {address:?}: {reason}")]
pub(crate) struct BadAddress {
    role: &'static str,
    address: String,
    reason: String,
}

impl Drop {
    /// Checks the sender and every recipient as `sendmail` takes them
    /// (`user`, `user@domain` or `<user@domain>`; an empty or `<>` sender is
    /// the null sender) against the crate's path grammar: what passes can
    /// be written into a log line and an SMTP command as it is.
    pub(crate) fn check(&self) -> Result<(), BadAddress> {
        if let Some(sender) = &self.sender {
            check_address(sender, PathKind::Reverse).map_err(|reason| BadAddress {
                role: "sender address",
                address: sender.clone(),
                reason: reason.to_string(),
            })?;
        }
        for rcpt in &self.recipients {
            check_address(rcpt, PathKind::Forward).map_err(|reason| BadAddress {
                role: "recipient address",
                address: rcpt.clone(),
                reason: reason.to_string(),
            })?;
        }
        self.check_dsn()
    }

    /// The DSN values go into MAIL and RCPT parameters as they are: each
    /// must be what the SMTP grammar takes, or it could add parameters.
    fn check_dsn(&self) -> Result<(), BadAddress> {
        use crate::smtp::proto::command::{is_xtext, notify_value};
        let bad =
            |role, value: &str| BadAddress { role, address: value.to_string(), reason: "not what SMTP takes".into() };
        let notify_ok = |n: &String| notify_value(n).as_ref() == Some(n);
        for n in self.notify.iter().chain(self.notifies.iter().flatten()) {
            if !notify_ok(n) {
                return Err(bad("DSN NOTIFY value", n));
            }
        }
        if !self.notifies.is_empty() && self.notifies.len() != self.recipients.len() {
            return Err(BadAddress {
                role: "DSN NOTIFY list",
                address: format!("{} values", self.notifies.len()),
                reason: format!("need one per recipient ({})", self.recipients.len()),
            });
        }
        if let Some(r) = self.ret.as_deref().filter(|r| !matches!(*r, "FULL" | "HDRS")) {
            return Err(bad("DSN RET value", r));
        }
        if let Some(e) = self.envid.as_deref().filter(|e| e.len() > 100 || !is_xtext(e, false)) {
            return Err(bad("DSN ENVID value", e));
        }
        Ok(())
    }

    /// The NOTIFY of the `i`th recipient.
    pub(crate) fn notify_of(&self, i: usize) -> Option<String> {
        self.notifies.get(i).cloned().flatten().or_else(|| self.notify.clone())
    }
}

/// One address of a drop, with or without angle brackets; an unqualified
/// one is checked as if qualified, since pickup adds `@hostname` to it.
fn check_address(addr: &str, kind: PathKind) -> Result<(), AddressError> {
    let trimmed = addr.trim();
    let bare = trimmed.strip_prefix('<').and_then(|a| a.strip_suffix('>')).unwrap_or(trimmed);
    let path = if bare.is_empty() || bare.contains('@') { format!("<{bare}>") } else { format!("<{bare}@localhost>") };
    match address::parse_path(&path, kind)? {
        (_, "") => Ok(()),
        // Something after the closing bracket: not one address.
        _ => Err(AddressError::BadDomain),
    }
}

/// A fresh drop name: time and randomness, alphanumeric.
pub(crate) fn new_name() -> String {
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_micros()).unwrap_or(0);
    format!("{now:x}{:08x}", fastrand::u32(..))
}

/// Writes a drop durably and returns its name.
pub(crate) fn write(dir: &Path, drop: &Drop, message: &[u8]) -> io::Result<String> {
    let name = new_name();
    write_named(dir, &name, drop, message)?;
    Ok(name)
}

/// Writes a drop under `name`: a dot-file first (pickup skips those), synced,
/// then renamed into place and the directory synced.
pub(crate) fn write_named(dir: &Path, name: &str, drop: &Drop, message: &[u8]) -> io::Result<()> {
    let tmp = dir.join(format!(".{name}"));
    let mut file = std::fs::OpenOptions::new().write(true).create_new(true).mode(0o600).open(&tmp)?;
    // Readable by the directory's group, whatever the umask: a daemon that
    // dropped root reads drops through its group (the directory is setgid,
    // see `daemon::privilege`); no other user can read them.
    file.set_permissions(std::fs::Permissions::from_mode(0o640))?;
    let mut head = serde_json::to_vec(drop).map_err(io::Error::other)?;
    head.push(b'\n');
    let result = file.write_all(&head).and_then(|_| file.write_all(message)).and_then(|_| file.sync_all());
    if let Err(e) = result.and_then(|_| std::fs::rename(&tmp, dir.join(name))) {
        let _ = std::fs::remove_file(&tmp);
        return Err(e);
    }
    match crate::spool::commit::sync_dir(dir) {
        // An ordinary user may write into the maildrop but not open it
        // (mode 1733): the rename is made durable by syncing the whole
        // filesystem through the file instead.
        Err(e) if e.kind() == io::ErrorKind::PermissionDenied => rustix::fs::syncfs(&file).map_err(io::Error::from),
        other => other,
    }
}

/// How long reading one drop may take: a drop on a stalled filesystem must
/// not hold up the pickup of every other one.
const READ_DEADLINE: std::time::Duration = std::time::Duration::from_secs(30);

/// Why an entry of the maildrop is not a drop. Any local user can put
/// anything here; only a regular file with one link is ever read or changed.
#[derive(Debug, thiserror::Error)]
pub(crate) enum Odd {
    #[error("a symbolic link")]
    Symlink,
    #[error("not a regular file but {0}")]
    NotRegular(&'static str),
    #[error("a file with {0} links")]
    Linked(u64),
}

/// What opening an entry of the maildrop gave instead of a drop.
#[derive(Debug, thiserror::Error)]
pub(crate) enum Refusal {
    #[error("{0}")]
    Odd(Odd),
    #[error("cannot open: {}", crate::message::outcome::strerror(.0))]
    Io(io::Error),
}

/// Opens the entry at `path` without following a symlink and without
/// blocking on a FIFO, and checks through the fd (so a swap after the check
/// changes nothing) that it is a regular file with one link. Anything else
/// is not opened at all when `lstat` already tells: a device is never opened.
fn open_drop(path: &Path) -> Result<(OwnedFd, Stat), Refusal> {
    use rustix::fs::OFlags;
    check_type(&rustix::fs::lstat(path).map_err(|e| Refusal::Io(e.into()))?)?;
    let flags = OFlags::RDONLY | OFlags::NOFOLLOW | OFlags::NONBLOCK | OFlags::NOCTTY | OFlags::CLOEXEC;
    let fd = match rustix::fs::open(path, flags, rustix::fs::Mode::empty()) {
        Ok(fd) => fd,
        Err(rustix::io::Errno::LOOP) => return Err(Refusal::Odd(Odd::Symlink)),
        Err(e) => return Err(Refusal::Io(e.into())),
    };
    let stat = rustix::fs::fstat(&fd).map_err(|e| Refusal::Io(e.into()))?;
    check_type(&stat)?;
    Ok((fd, stat))
}

/// Refuses every kind of entry but a regular file with one link. A second
/// link may name a file elsewhere that the daemon must not read or change.
fn check_type(stat: &Stat) -> Result<(), Refusal> {
    use rustix::fs::FileType;
    let odd = match FileType::from_raw_mode(stat.st_mode) {
        FileType::RegularFile if stat.st_nlink == 1 => return Ok(()),
        FileType::RegularFile => Odd::Linked(stat.st_nlink),
        FileType::Symlink => Odd::Symlink,
        FileType::Directory => Odd::NotRegular("a directory"),
        FileType::Fifo => Odd::NotRegular("a FIFO"),
        FileType::Socket => Odd::NotRegular("a socket"),
        FileType::CharacterDevice | FileType::BlockDevice => Odd::NotRegular("a device"),
        FileType::Unknown => Odd::NotRegular("of an unknown type"),
    };
    Err(Refusal::Odd(odd))
}

/// Reads a drop, refusing anything larger than `max` bytes of message and
/// anything that is not a regular file with one link.
#[cfg(test)]
pub(crate) fn read(path: &Path, max: u64) -> Result<(Drop, Vec<u8>, u32), String> {
    let (fd, stat) = open_drop(path).map_err(|e| e.to_string())?;
    read_open(fd, &stat, max, READ_DEADLINE)
}

/// Reads an opened drop: bounded in size, and given up past `deadline`.
fn read_open(
    fd: OwnedFd,
    stat: &Stat,
    max: u64,
    deadline: std::time::Duration,
) -> Result<(Drop, Vec<u8>, u32), String> {
    let started = std::time::Instant::now();
    // One line of envelope (bounded) plus the message.
    let mut file = std::fs::File::from(fd).take(max + 1024 * 1024);
    let mut data = Vec::new();
    let mut chunk = vec![0; 64 * 1024];
    loop {
        if started.elapsed() > deadline {
            return Err(format!("not read within {deadline:?}"));
        }
        match file.read(&mut chunk) {
            Ok(0) => break,
            Ok(n) => data.extend_from_slice(&chunk[..n]),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(format!("cannot read: {e}")),
        }
    }
    let nl = data.iter().position(|&b| b == b'\n').ok_or("no envelope line")?;
    let drop: Drop = serde_json::from_slice(&data[..nl]).map_err(|e| format!("bad envelope line: {e}"))?;
    let message = data.split_off(nl + 1);
    if message.len() as u64 > max {
        return Err(format!("message larger than the limit of {max} bytes"));
    }
    if drop.recipients.len() > 10_000 {
        return Err("too many recipients".into());
    }
    Ok((drop, message, stat.st_uid))
}

/// Puts an entry that is not a drop out of the way, with a log line naming
/// it: a symlink or an extra link is removed (the name only: its target or
/// the file's other name is never touched, and nothing of a drop is lost),
/// anything else is moved to `quarantine` (the spool's `corrupt/`) as
/// `maildrop-NAME`.
pub fn set_aside(path: &Path, odd: &Odd, quarantine: &Path) {
    let name = path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    let result = match odd {
        Odd::Symlink | Odd::Linked(_) => {
            std::fs::remove_file(path).map(|_| "removed (the name, not its target)".into())
        }
        Odd::NotRegular(_) => {
            let to = quarantine.join(format!("maildrop-{name}"));
            // Named as the operator finds it: `quarantine` may be reached
            // through a descriptor (`/proc/self/fd/N`) while root works.
            std::fs::rename(path, &to).map(|_| format!("moved to corrupt/maildrop-{name}"))
        }
    };
    match result {
        Ok(done) => tracing::warn!("maildrop {name}: refused: {odd}; {done}"),
        Err(e) => tracing::error!("maildrop {name}: refused: {odd}; cannot set it aside: {e}"),
    }
}

/// Makes every drop in `dir` readable by the daemon's group `gid` (0640),
/// run as root before the switch to the daemon's account. Only regular files
/// with one link are changed, through their fds; anything else is set aside.
/// No entry fails the start: each one that cannot be handled is logged.
pub fn claim(dir: &Path, gid: u32, quarantine: &Path) -> io::Result<()> {
    for entry in std::fs::read_dir(dir)? {
        let path = entry?.path();
        let name = path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
        match open_drop(&path) {
            Ok((fd, stat)) => {
                let group = (stat.st_gid != gid).then(|| rustix::fs::Gid::from_raw(gid));
                let result = rustix::fs::fchown(&fd, None, group)
                    .and_then(|_| rustix::fs::fchmod(&fd, rustix::fs::Mode::from_raw_mode(0o640)));
                if let Err(e) = result {
                    tracing::error!("maildrop {name}: cannot give it to the daemon's group: {e}");
                }
            }
            Err(Refusal::Odd(odd)) => set_aside(&path, &odd, quarantine),
            // Taken by pickup or its writer meanwhile: nothing to do.
            Err(Refusal::Io(e)) if e.kind() == io::ErrorKind::NotFound => {}
            Err(Refusal::Io(e)) => tracing::error!("maildrop {name}: {e}; left as it is"),
        }
    }
    Ok(())
}

/// A drop as `mailq` lists it while the daemon is down: what `sendmail`
/// was told, without reading the message.
#[derive(Debug, PartialEq)]
pub(crate) struct Waiting {
    /// The file name, which stands in for a queue id until pickup.
    pub(crate) name: String,
    /// `-f`, or the submitting user's name (the file's owner).
    pub(crate) sender: String,
    pub(crate) recipients: Vec<String>,
    /// The message's size as given (the file less its envelope line).
    pub(crate) size: u64,
    /// When it was dropped (the file's modification time).
    pub(crate) arrival: u64,
}

/// Every drop waiting in `dir`, oldest name first. Entries that are not
/// drops (links, FIFOs, unreadable envelopes) are skipped: pickup
/// quarantines them, and a listing changes nothing.
pub(crate) fn waiting(dir: &Path) -> io::Result<Vec<Waiting>> {
    use std::io::BufRead;
    let mut out = Vec::new();
    for path in pending(dir)? {
        let Ok((fd, stat)) = open_drop(&path) else { continue };
        let mut line = Vec::new();
        let mut reader = io::BufReader::new(std::fs::File::from(fd).take(1024 * 1024));
        if reader.read_until(b'\n', &mut line).is_err() {
            continue;
        }
        let Ok(drop) = serde_json::from_slice::<Drop>(&line) else { continue };
        let sender = drop.sender.unwrap_or_else(|| crate::account::user_name(stat.st_uid));
        out.push(Waiting {
            name: path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default(),
            sender,
            recipients: drop.recipients,
            size: (stat.st_size as u64).saturating_sub(line.len() as u64),
            arrival: stat.st_mtime.max(0) as u64,
        });
    }
    Ok(out)
}

/// Drops ready for pickup, oldest name first.
pub(crate) fn pending(dir: &Path) -> io::Result<Vec<PathBuf>> {
    let mut out: Vec<PathBuf> = std::fs::read_dir(dir)?
        .filter_map(|e| e.ok())
        .filter(|e| e.file_name().to_str().is_some_and(|n| !n.starts_with('.')))
        .map(|e| e.path())
        .collect();
    out.sort();
    Ok(out)
}

/// Takes every pending drop into the queue through `ingress`. A drop is
/// removed only after its message is committed; one that cannot be read is
/// moved to `quarantine` with a log line, never silently deleted.
pub(crate) async fn pickup(ingress: &Ingress, dir: &Path, quarantine: &Path, taken: &Taken) -> usize {
    // Below `queue.min_free` the drops wait where they are: their senders
    // were answered already, and the space left is for what is queued.
    if ingress.room().is_err() {
        return 0;
    }
    let files = match pending(dir) {
        Ok(f) => f,
        Err(e) => {
            tracing::error!("maildrop {}: cannot list: {e}", dir.display());
            return 0;
        }
    };
    let mut count = 0;
    for path in files {
        let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("?").to_string();
        let Some(read) = read_for_pickup(&path, ingress.max_size(), quarantine).await else { continue };
        let (drop, message, uid) = match read {
            Ok(r) => r,
            Err(reason) => {
                refuse(&path, &name, &reason, quarantine);
                continue;
            }
        };
        // The drop's content is the writer's word, and any local user may
        // write one without `sendmail`: its addresses are checked again.
        if let Err(bad) = drop.check() {
            refuse(&path, &name, &bad, quarantine);
            continue;
        }
        let user = crate::account::user_name(uid);
        let submitted = std::fs::metadata(&path).ok().and_then(|m| m.modified().ok());
        let submitted = submitted.and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok()).map(|d| d.as_secs());
        match super::local::submit(ingress, drop, message, &user, submitted).await {
            Ok(id) => {
                tracing::debug!("{id}: maildrop={name}, uid={uid}");
                // "NOQUEUE": every recipient refused, the sender notified.
                let outcome = if id == "NOQUEUE" {
                    Err("no recipient accepted; the sender gets a notice".into())
                } else {
                    Ok(id.clone())
                };
                taken.record(&name, outcome);
                if let Err(e) = std::fs::remove_file(&path) {
                    tracing::error!("maildrop {name}: cannot remove after queueing as {id}: {e}");
                }
                count += 1;
            }
            Err(e @ (IngressError::Io(_) | IngressError::NoRoom(_))) => {
                // The spool is in trouble; leave the drop for the next scan.
                tracing::error!("maildrop {name}: cannot queue now: {e}");
                break;
            }
            Err(e) => {
                taken.record(&name, Err(e.to_string()));
                refuse(&path, &name, &e, quarantine)
            }
        }
    }
    count
}

/// What recent drops became: a queue id, or the reply that refused them.
/// `sendmail -bs` names its drop on `pickup.sock` and waits for this, so it
/// can answer `250 ... queued as ID` with the id the message keeps.
#[derive(Debug, Default)]
pub(crate) struct Taken {
    recent: std::sync::Mutex<std::collections::VecDeque<(String, Result<String, String>)>>,
    changed: tokio::sync::Notify,
}

/// How many outcomes `Taken` remembers; a waiter asks within seconds.
const TAKEN_KEPT: usize = 1024;

impl Taken {
    fn record(&self, name: &str, outcome: Result<String, String>) {
        let mut recent = self.recent.lock().unwrap_or_else(|e| e.into_inner());
        if recent.len() >= TAKEN_KEPT {
            recent.pop_front();
        }
        recent.push_back((name.to_string(), outcome));
        drop(recent);
        self.changed.notify_waiters();
    }

    fn find(&self, name: &str) -> Option<Result<String, String>> {
        let recent = self.recent.lock().unwrap_or_else(|e| e.into_inner());
        recent.iter().rev().find(|(n, _)| n == name).map(|(_, o)| o.clone())
    }

    /// What the drop `name` became, once the pickup has taken it; `None`
    /// if that takes longer than `timeout`.
    pub(crate) async fn wait_for(&self, name: &str, timeout: std::time::Duration) -> Option<Result<String, String>> {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let changed = self.changed.notified();
            tokio::pin!(changed);
            changed.as_mut().enable();
            if let Some(outcome) = self.find(name) {
                return Some(outcome);
            }
            tokio::time::timeout_at(deadline, changed).await.ok()?;
        }
    }
}

/// How long `sendmail -bs` waits for the daemon to take its drop.
pub(crate) const ANSWER_WAIT: std::time::Duration = std::time::Duration::from_secs(10);

/// Asks a running daemon, through `SPOOL/pickup.sock`, to take the drop
/// `name` now, and what it became: `Some(Ok(id))`, `Some(Err(reply))` when
/// it was refused, `None` when no daemon answered in time (the drop waits
/// in the maildrop, safe, for the daemon's start).
pub(crate) fn ask_pickup(spool: &Path, name: &str) -> Option<Result<String, String>> {
    use std::io::BufRead;
    let mut stream = std::os::unix::net::UnixStream::connect(spool.join("pickup.sock")).ok()?;
    stream.set_read_timeout(Some(ANSWER_WAIT + std::time::Duration::from_secs(2))).ok()?;
    stream.write_all(format!("{name}\n").as_bytes()).ok()?;
    let mut line = String::new();
    io::BufReader::new(stream.take(1024)).read_line(&mut line).ok()?;
    let line = line.trim_end();
    if let Some(id) = line.strip_prefix("queued ") {
        Some(Ok(id.to_string()))
    } else {
        line.strip_prefix("refused ").map(|why| Err(why.to_string()))
    }
}

/// The daemon's side of `ask_pickup` for one connection to `pickup.sock`:
/// the pickup is woken at once (a bare connection, as from `sendmail`,
/// asks nothing more); a drop name on the first line gets what it became.
pub(crate) async fn answer_pickup(mut stream: tokio::net::UnixStream, wake: &tokio::sync::Notify, taken: &Taken) {
    use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt};
    wake.notify_one();
    let mut line = String::new();
    let mut reader = tokio::io::BufReader::new((&mut stream).take(128));
    let read = reader.read_line(&mut line);
    if tokio::time::timeout(std::time::Duration::from_secs(2), read).await.is_err() {
        return;
    }
    drop(reader);
    let name = line.trim_end();
    // Drop names are what `new_name` makes; anything else gets no answer.
    if name.is_empty() || !name.bytes().all(|b| b.is_ascii_alphanumeric()) {
        return;
    }
    let answer = match taken.wait_for(name, ANSWER_WAIT).await {
        Some(Ok(id)) => format!("queued {id}\n"),
        Some(Err(why)) => format!("refused {}\n", why.replace(['\r', '\n'], " ")),
        None => return,
    };
    let _ = stream.write_all(answer.as_bytes()).await;
}

/// Moves a drop that will not be queued to `quarantine` as `maildrop-NAME`,
/// with a log line saying why.
fn refuse(path: &Path, name: &str, reason: &dyn std::fmt::Display, quarantine: &Path) {
    let to = quarantine.join(format!("maildrop-{name}"));
    match std::fs::rename(path, &to) {
        Ok(()) => tracing::error!("maildrop {name}: refused: {reason}; moved to {}", to.display()),
        Err(e) => tracing::error!("maildrop {name}: refused: {reason}; cannot move it to {}: {e}", to.display()),
    }
}

/// Reads one pending drop on a blocking thread within the read deadline.
/// `None`: the entry was no drop (set aside) or is gone, or the read did
/// not finish in time (left for the next scan).
async fn read_for_pickup(path: &Path, max: u64, quarantine: &Path) -> Option<Result<(Drop, Vec<u8>, u32), String>> {
    let p = path.to_path_buf();
    let task = tokio::task::spawn_blocking(move || {
        let (fd, stat) = open_drop(&p)?;
        Ok(read_open(fd, &stat, max, READ_DEADLINE))
    });
    // The blocking read checks its deadline between reads; this one also
    // covers a single read that hangs (a stalled network filesystem).
    let name = path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    match tokio::time::timeout(READ_DEADLINE + std::time::Duration::from_secs(5), task).await {
        Err(_) => {
            tracing::error!("maildrop {name}: not read within {READ_DEADLINE:?}; left for the next scan");
            None
        }
        Ok(Err(e)) => Some(Err(e.to_string())),
        Ok(Ok(Ok(read))) => Some(read),
        Ok(Ok(Err(Refusal::Odd(odd)))) => {
            set_aside(path, &odd, quarantine);
            None
        }
        Ok(Ok(Err(Refusal::Io(e)))) if e.kind() == io::ErrorKind::NotFound => None,
        Ok(Ok(Err(Refusal::Io(e)))) => Some(Err(format!("cannot open: {e}"))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn write_then_read() {
        let dir = tempfile::tempdir().unwrap();
        let drop = Drop { sender: Some("a@b".into()), recipients: vec!["c@d".into()], ..Drop::default() };
        let name = write(dir.path(), &drop, b"Subject: x\n\nbody\n").unwrap();
        let files = pending(dir.path()).unwrap();
        assert_eq!(files, vec![dir.path().join(&name)]);
        let (read_drop, message, _uid) = read(&files[0], 1000).unwrap();
        assert_eq!(read_drop, drop);
        assert_eq!(message, b"Subject: x\n\nbody\n");
        assert!(read(&files[0], 5).unwrap_err().contains("larger than the limit"));
    }

    #[test]
    fn addresses_table() {
        let cases: [(&str, PathKind, bool); 16] = [
            ("root", PathKind::Forward, true),
            ("ops@example.org", PathKind::Forward, true),
            ("<ops@example.org>", PathKind::Forward, true),
            (" ops@example.org ", PathKind::Forward, true),
            ("\"john doe\"@example.org", PathKind::Forward, true),
            ("postmaster", PathKind::Forward, true),
            ("", PathKind::Reverse, true),
            ("<>", PathKind::Reverse, true),
            ("", PathKind::Forward, false),
            ("a@b\nstatus=sent", PathKind::Forward, false),
            ("a@b> NOTIFY=SUCCESS", PathKind::Forward, false),
            ("<a@b> NOTIFY=SUCCESS", PathKind::Forward, false),
            ("a@b SIZE=1", PathKind::Reverse, false),
            ("a b", PathKind::Forward, false),
            ("<<a@b>>", PathKind::Forward, false),
            ("a@b\u{1b}[2J", PathKind::Forward, false),
        ];
        for (addr, kind, ok) in cases {
            assert_eq!(check_address(addr, kind).is_ok(), ok, "{addr:?} as {kind:?}");
        }
        let bad = Drop { recipients: vec!["ok@x".into(), "a@b\nx".into()], ..Drop::default() };
        assert_eq!(bad.check().unwrap_err().to_string(), "bad recipient address \"a@b\\nx\": invalid domain");
    }

    #[test]
    fn garbage_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        for (i, content) in [&b"no newline at all"[..], b"{not json}\nbody", b"[1,2]\nbody"].iter().enumerate() {
            let p = dir.path().join(format!("f{i}"));
            std::fs::write(&p, content).unwrap();
            assert!(read(&p, 1000).is_err());
        }
    }

    #[test]
    fn only_regular_files_with_one_link_are_read() {
        let dir = tempfile::tempdir().unwrap();
        let outside = tempfile::NamedTempFile::new().unwrap();
        std::fs::write(outside.path(), b"{\"recipients\":[\"c@d\"]}\nbody\n").unwrap();
        let (link, hard, fifo) = (dir.path().join("link"), dir.path().join("hard"), dir.path().join("fifo"));
        std::os::unix::fs::symlink(outside.path(), &link).unwrap();
        std::fs::hard_link(outside.path(), &hard).unwrap();
        rustix::fs::mknodat(
            rustix::fs::CWD,
            &fifo,
            rustix::fs::FileType::Fifo,
            rustix::fs::Mode::from_raw_mode(0o600),
            0,
        )
        .unwrap();
        std::fs::create_dir(dir.path().join("dir")).unwrap();
        // A FIFO would block an open without O_NONBLOCK: this returns.
        for (name, expected) in
            [("link", "a symbolic link"), ("hard", "a file with 2 links"), ("fifo", "a FIFO"), ("dir", "a directory")]
        {
            let err = read(&dir.path().join(name), 1000).unwrap_err();
            assert!(err.contains(expected), "{name}: {err}");
        }
        let quarantine = tempfile::tempdir().unwrap();
        claim(dir.path(), rustix::process::getgid().as_raw(), quarantine.path()).unwrap();
        assert!(std::fs::symlink_metadata(&link).is_err() && std::fs::symlink_metadata(&hard).is_err());
        assert!(outside.path().exists(), "the target of a link is never removed");
        assert!(quarantine.path().join("maildrop-fifo").exists() && quarantine.path().join("maildrop-dir").is_dir());
    }

    #[test]
    fn a_read_past_its_deadline_is_given_up() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("slow");
        std::fs::write(&path, b"{\"recipients\":[\"c@d\"]}\nbody\n").unwrap();
        let (fd, stat) = open_drop(&path).unwrap();
        let err = read_open(fd, &stat, 1000, std::time::Duration::ZERO).unwrap_err();
        assert!(err.contains("not read within"), "{err}");
    }
}
