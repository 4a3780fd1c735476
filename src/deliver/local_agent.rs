//! The local delivery agent: the one part of posthorn that keeps root
//! after the daemon gives it up, so that mail for local users is written
//! as those users (docs/security.md, "The local delivery agent").
//!
//! A daemon started as root, with a `[local]` key set, starts it before
//! it drops root: the same binary run again as `posthorn local-agent
//! SETTINGS`, whose standard input and output are one end of a socket
//! pair; the daemon keeps the other. The settings (spool directory, home
//! mailbox, whether root may get mail) come from root's configuration on
//! the command line, once; requests never name a path.
//!
//! Each request is a length-prefixed JSON [`Request`] (user name,
//! envelope, message length) followed by the message; the reply is a
//! length-prefixed JSON result. The agent takes everything it reads as
//! hostile: the daemon runs as an account that anyone who breaks into it
//! controls. It checks the user name's form, looks it up through NSS,
//! refuses uid 0 unless `local.deliver_to_root` was configured, bounds
//! every length, and then forks a child per delivery that takes the
//! user's groups (plus the spool directory's group when that directory is
//! group-writable, as Debian's setgid-mail `dotlockfile` has it), the
//! user's gid and uid, and writes the mailbox with those rights only.
//! The child is not dumpable, so the user cannot attach to it while it
//! holds the spool's group. The agent keeps root's uid but only the
//! `CAP_SETUID` and `CAP_SETGID` capabilities. The agent itself runs one thread and does
//! one delivery at a time; it ends when the daemon closes the socket.
//!
//! A request may name a command or file of an alias instead of the
//! user's mailbox ([`Target`]). The agent then runs or writes it only if
//! one of the alias files of root's configuration lists it and the
//! account is that file's owner (`local.default_privs` for root's files),
//! never as root: a daemon that was broken into cannot make the agent run
//! anything an administrator did not write.
//!
//! A request for a user's mailbox first has the user's `.forward` read
//! and carried out (`forward`) in a child that takes the user's own groups
//! only, never the spool directory's, since the `.forward` may run
//! commands; then, when it keeps a copy (or there is none), the mailbox
//! is written in a second child as above. The addresses it names go back
//! to the daemon in the reply ([`Done`]), for the queue to commit.

use super::local::{self, Done, Failure, Request, Settings, Target};
use crate::account;
use anyhow::Context;
use std::io::{self, Read, Write};
use std::os::fd::OwnedFd;
use std::os::unix::fs::MetadataExt;
use std::os::unix::net::UnixStream;
use std::os::unix::process::CommandExt;
use std::sync::{Mutex, OnceLock};
use std::time::Duration;

/// Largest request header (JSON).
const MAX_HEADER: u32 = 64 * 1024;
/// Largest message the agent takes.
const MAX_MESSAGE: u64 = 1 << 30;
/// How long the daemon waits for one delivery: the locks are tried for
/// 2 x 20 s, writing a large message takes its time.
const DELIVERY_DEADLINE: Duration = Duration::from_secs(300);

/// The agent of this daemon, once started (at most once per process: it is
/// started before root is given up, and root is not had again).
static AGENT: OnceLock<Agent> = OnceLock::new();

/// The daemon's end of the agent.
pub(crate) struct Agent {
    /// `None` once a delivery broke the conversation (a timeout, a short
    /// read): later ones are deferred rather than misread.
    conn: Mutex<Option<UnixStream>>,
    pid: u32,
    /// How long a `.forward`'s commands may run: `local.command_time_limit`
    /// when `.forward` files are read.
    forward_limit: Duration,
}

/// The running agent, if this daemon started one.
pub(crate) fn running() -> Option<&'static Agent> {
    AGENT.get()
}

/// Starts the agent when the daemon runs as root and `[local]` is
/// configured; call it before root is given up.
pub(crate) fn start_if_needed(config: &crate::config::Config) -> anyhow::Result<()> {
    if !rustix::process::geteuid().is_root() || !config.local.configured || AGENT.get().is_some() {
        return Ok(());
    }
    let settings = serde_json::to_string(&Settings::from_config(config))?;
    let (ours, theirs) = UnixStream::pair().context("socket pair for the local delivery agent")?;
    let theirs: OwnedFd = theirs.into();
    let exe = std::env::current_exe().context("finding the posthorn binary for the local delivery agent")?;
    let child = std::process::Command::new(&exe)
        .arg0("posthorn")
        .arg("local-agent")
        .arg(settings)
        .env_clear()
        .env("PATH", "/usr/sbin:/usr/bin:/sbin:/bin")
        .stdin(theirs.try_clone()?)
        .stdout(theirs)
        .spawn()
        .with_context(|| format!("starting the local delivery agent {}", exe.display()))?;
    ours.set_read_timeout(Some(DELIVERY_DEADLINE))?;
    ours.set_write_timeout(Some(DELIVERY_DEADLINE))?;
    tracing::info!("local delivery agent started (pid {})", child.id());
    let forward_limit = match config.local.forward_path.is_empty() {
        true => Duration::ZERO,
        false => config.local.command_time_limit,
    };
    let _ = AGENT.set(Agent { conn: Mutex::new(Some(ours)), pid: child.id(), forward_limit });
    Ok(())
}

impl Agent {
    /// Has the agent deliver one message; blocking.
    pub(crate) fn deliver(&self, request: &Request, message: &[u8]) -> Result<Done, Failure> {
        let mut guard = self.conn.lock().unwrap_or_else(|e| e.into_inner());
        let Some(conn) = guard.as_mut() else {
            return Err(Failure::transient(format!("the local delivery agent (pid {}) is not usable", self.pid)));
        };
        // A command may run for local.command_time_limit.
        let limit = match &request.target {
            Some(Target::Command { time_limit_secs, .. }) => Duration::from_secs(*time_limit_secs + 60),
            // A mailbox: the user's `.forward` may run commands first.
            // (together at most local.command_time_limit), then the mailbox.
            None if !self.forward_limit.is_zero() => self.forward_limit + DELIVERY_DEADLINE,
            _ => Duration::ZERO,
        };
        let _ = conn.set_read_timeout(Some(DELIVERY_DEADLINE.max(limit)));
        match exchange(conn, request, message) {
            Ok(result) => result,
            Err(e) => {
                *guard = None;
                Err(Failure::transient(format!("the local delivery agent (pid {}) failed: {e}", self.pid)))
            }
        }
    }
}

fn exchange(conn: &mut UnixStream, request: &Request, message: &[u8]) -> io::Result<Result<Done, Failure>> {
    write_frame(conn, &serde_json::to_vec(request)?)?;
    conn.write_all(message)?;
    let reply = read_frame(conn, MAX_HEADER)?;
    serde_json::from_slice(&reply).map_err(io::Error::other)
}

fn write_frame(out: &mut impl Write, bytes: &[u8]) -> io::Result<()> {
    out.write_all(&(bytes.len() as u32).to_be_bytes())?;
    out.write_all(bytes)
}

fn read_frame(input: &mut impl Read, max: u32) -> io::Result<Vec<u8>> {
    let mut len = [0u8; 4];
    input.read_exact(&mut len)?;
    let len = u32::from_be_bytes(len);
    if len > max {
        return Err(io::Error::other(format!("a frame of {len} bytes is over the limit of {max}")));
    }
    let mut buf = vec![0u8; len as usize];
    input.read_exact(&mut buf)?;
    Ok(buf)
}

/// `posthorn local-agent SETTINGS`: the agent process. Serves requests on
/// standard input, replies on standard output, until end of input.
pub fn main(settings: &str, owners: Owners) -> u8 {
    let settings: Settings = match serde_json::from_str(settings) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("posthorn local-agent: bad settings: {e}");
            return 2;
        }
    };
    if !rustix::process::geteuid().is_root() {
        eprintln!("posthorn local-agent: must be started by the daemon as root");
        return 2;
    }
    if let Err(e) = keep_only_setid_capabilities() {
        eprintln!("posthorn local-agent: cannot give up capabilities: {e}");
        return 2;
    }
    let mut input = io::stdin().lock();
    let mut output = io::stdout().lock();
    loop {
        let header = match read_frame(&mut input, MAX_HEADER) {
            Ok(h) => h,
            Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => return 0,
            Err(e) => {
                eprintln!("posthorn local-agent: reading a request: {e}");
                return 1;
            }
        };
        let result = match serve_one(&settings, owners, &header, &mut input) {
            Ok(result) => result,
            Err(e) => {
                // The conversation is out of step: nothing more can be trusted.
                eprintln!("posthorn local-agent: {e}");
                return 1;
            }
        };
        let reply = serde_json::to_vec(&result).unwrap_or_default();
        if write_frame(&mut output, &reply).and_then(|()| output.flush()).is_err() {
            return 1;
        }
    }
}

/// Keeps root's uid but only `CAP_SETUID` and `CAP_SETGID`: the agent
/// needs nothing else (its children open the mailboxes as the users), so
/// it cannot read or write files by being root (no `CAP_DAC_OVERRIDE`),
/// chown, bind ports or load modules.
fn keep_only_setid_capabilities() -> io::Result<()> {
    #[repr(C)]
    struct Header {
        version: u32,
        pid: libc::c_int,
    }
    #[repr(C)]
    #[derive(Clone, Copy)]
    struct Data {
        effective: u32,
        permitted: u32,
        inheritable: u32,
    }
    const LINUX_CAPABILITY_VERSION_3: u32 = 0x2008_0522;
    // linux/capability.h: CAP_SETGID 6, CAP_SETUID 7.
    let keep = (1u32 << 6) | (1u32 << 7);
    let header = Header { version: LINUX_CAPABILITY_VERSION_3, pid: 0 };
    let data = [
        Data { effective: keep, permitted: keep, inheritable: 0 },
        Data { effective: 0, permitted: 0, inheritable: 0 },
    ];
    // SAFETY: capset reads one header and two data structs, laid out as
    // the kernel's v3 ABI has them.
    let rc = unsafe { libc::syscall(libc::SYS_capset, &header, data.as_ptr()) };
    if rc == 0 { Ok(()) } else { Err(io::Error::last_os_error()) }
}

/// One request: checked, then delivered in a child as the user. `Err`:
/// the stream cannot go on.
fn serve_one(
    settings: &Settings,
    owners: Owners,
    header: &[u8],
    input: &mut impl Read,
) -> io::Result<Result<Done, Failure>> {
    let request: Request = serde_json::from_slice(header).map_err(|e| io::Error::other(format!("bad request: {e}")))?;
    if request.length > MAX_MESSAGE {
        return Err(io::Error::other(format!("a message of {} bytes is over the limit", request.length)));
    }
    let mut message = vec![0u8; request.length as usize];
    input.read_exact(&mut message)?;
    Ok(check(settings, owners, &request)
        .and_then(|(entry, groups)| deliver(settings, &entry, &groups, &request, &message)))
}

/// A checked request, in children that are the user: an alias's command
/// or file in one; else the user's `.forward` in one with the user's own
/// groups (its commands must not get the spool's group), then, when it
/// wants a copy there, the mailbox in one with `groups`.
fn deliver(
    settings: &Settings,
    entry: &account::Entry,
    groups: &[u32],
    request: &Request,
    message: &[u8],
) -> Result<Done, Failure> {
    if request.target.is_some() {
        return in_child(entry, groups, || local::alias_target(entry, request, message)).map(Done::at);
    }
    let applied = if settings.forward_path.is_empty() {
        super::forward::Applied { mailbox: true, ..Default::default() }
    } else {
        let own = group_list(&entry.account).map_err(|e| Failure::transient(e.to_string()))?;
        in_child(entry, &own, || super::forward::apply(settings, entry, request, message))?
    };
    let mailbox = match applied.mailbox {
        true => Some(in_child(entry, groups, || local::write_mailbox(settings, entry, request, message))?),
        false => None,
    };
    Ok(Done::forwarded(applied, mailbox))
}

/// What the daemon may not be trusted with: the user's form and existence,
/// root, the envelope's length and characters. The user's account and the
/// groups its child takes.
fn check(settings: &Settings, owners: Owners, request: &Request) -> Result<(account::Entry, Vec<u32>), Failure> {
    let permanent = |status, text: String| Failure { permanent: true, status, text };
    local::valid_user(&request.user).map_err(|why| permanent((5, 1, 3), why))?;
    for (what, value) in
        [("sender", &request.sender), ("recipient", &request.recipient), ("original", &request.original)]
    {
        if value.len() > 1024 || value.chars().any(char::is_control) {
            return Err(permanent((5, 1, 3), format!("the {what} is not an address a mailbox can record")));
        }
    }
    let entry = match account::lookup_entry(&request.user) {
        Ok(Some(entry)) => entry,
        Ok(None) => return Err(permanent((5, 1, 1), format!("unknown user: \"{}\"", request.user))),
        Err(e) => return Err(Failure::transient(e.to_string())),
    };
    if entry.account.uid == 0 && (!settings.deliver_to_root || request.target.is_some()) {
        return Err(permanent((5, 7, 1), format!("user {} is root: not delivered as root", request.user)));
    }
    if let Some(target) = &request.target {
        listed(settings, owners, &entry.account, target)?;
        let groups = group_list(&entry.account).map_err(|e| Failure::transient(e.to_string()))?;
        return Ok((entry, groups));
    }
    let mut groups = group_list(&entry.account).map_err(|e| Failure::transient(e.to_string()))?;
    if let local::Mailbox::Mbox(path) = settings.mailbox(&entry)
        && path.parent() == Some(settings.spool_dir.as_path())
        && let Some(gid) = spool_group(&settings.spool_dir)
        && !groups.contains(&gid)
    {
        groups.push(gid);
    }
    Ok((entry, groups))
}

/// The uids owning the alias files of `alias_maps` that list a command or
/// file as written. The agent is given `route::aliases::owners_listing`
/// by its caller: reading alias files is the router's, and `deliver`
/// never imports `route`.
pub(crate) type Owners = fn(alias_maps: &[String], target: &Target) -> Vec<u32>;

/// Whether an alias file of `settings` that `account` may act for lists
/// `target`: one it owns, or one root owns when it is `default_privs`.
fn listed(settings: &Settings, owners: Owners, account: &account::Account, target: &Target) -> Result<(), Failure> {
    let allowed = match target {
        Target::Command { .. } => settings.commands_allowed,
        Target::File { .. } => settings.files_allowed,
    };
    if !allowed {
        let why = "local.allow_mail_to_commands or allow_mail_to_files has no alias".to_string();
        return Err(Failure { permanent: true, status: (5, 7, 1), text: why });
    }
    let acts = |owner: u32| if owner == 0 { account.name == settings.default_privs } else { account.uid == owner };
    if owners(&settings.alias_maps, target).into_iter().any(acts) {
        return Ok(());
    }
    Err(Failure {
        permanent: true,
        status: (5, 7, 1),
        text: format!("no alias file that user {} acts for lists this command or file", account.name),
    })
}

/// The spool directory's group when the directory is group-writable and
/// not world-writable (root:mail 2775): the user needs it to make its
/// mailbox and the dotlock there.
fn spool_group(dir: &std::path::Path) -> Option<u32> {
    let meta = std::fs::metadata(dir).ok()?;
    (meta.mode() & 0o020 != 0 && meta.mode() & 0o002 == 0 && meta.uid() == 0).then_some(meta.gid())
}

/// The user's groups, as `initgroups` would set them.
fn group_list(account: &account::Account) -> io::Result<Vec<u32>> {
    let name = std::ffi::CString::new(account.name.as_str()).map_err(io::Error::other)?;
    let mut count: libc::c_int = 64;
    loop {
        let mut groups = vec![0 as libc::gid_t; count as usize];
        let before = count;
        // SAFETY: `groups` has room for `count` ids; `count` is updated.
        let got = unsafe { libc::getgrouplist(name.as_ptr(), account.gid, groups.as_mut_ptr(), &mut count) };
        if got >= 0 {
            groups.truncate(count as usize);
            return Ok(groups);
        }
        if count <= before {
            count = before * 2;
        }
        if count > 65536 {
            return Err(io::Error::other(format!("user {} is in too many groups", account.name)));
        }
    }
}

/// Forks a child that becomes the user and does `work`; its result comes
/// back over a socket pair. The agent has one thread, so the child
/// inherits no lock another thread held.
fn in_child<T: serde::Serialize + serde::de::DeserializeOwned>(
    entry: &account::Entry,
    groups: &[u32],
    work: impl FnOnce() -> Result<T, Failure>,
) -> Result<T, Failure> {
    let (mut parent, mut child) = UnixStream::pair().map_err(|e| Failure::transient(e.to_string()))?;
    // SAFETY: one thread (the agent never starts another); the child
    // leaves through `_exit` without returning into the caller.
    match unsafe { libc::fork() } {
        -1 => Err(Failure::transient(format!("cannot fork: {}", io::Error::last_os_error()))),
        0 => {
            drop(parent);
            let result = become_user(&entry.account, groups)
                .map_err(|e| Failure::transient(format!("cannot become user {}: {e}", entry.account.name)))
                .and_then(|()| work());
            let _ = child.write_all(&serde_json::to_vec(&result).unwrap_or_default());
            drop(child);
            // SAFETY: ends the child at once.
            unsafe { libc::_exit(0) }
        }
        pid => {
            drop(child);
            let mut out = Vec::new();
            let read = parent.read_to_end(&mut out);
            let mut status = 0;
            // SAFETY: waits for the child forked above.
            unsafe { libc::waitpid(pid, &mut status, 0) };
            match (read, serde_json::from_slice::<Result<T, Failure>>(&out)) {
                (Ok(_), Ok(result)) => result,
                _ => Err(Failure::transient(format!(
                    "the delivery as user {} ended without a result (wait status {status:#x})",
                    entry.account.name
                ))),
            }
        }
    }
}

/// setgroups, setgid, setuid (in that order, while root may still do
/// them), then checks that root cannot be had back, and makes the process
/// not dumpable.
fn become_user(account: &account::Account, groups: &[u32]) -> io::Result<()> {
    let check = |rc: libc::c_int| if rc == 0 { Ok(()) } else { Err(io::Error::last_os_error()) };
    // SAFETY: plain system calls on this (single-threaded) process.
    unsafe {
        check(libc::setgroups(groups.len(), groups.as_ptr()))?;
        check(libc::setgid(account.gid))?;
        check(libc::setuid(account.uid))?;
        check(libc::prctl(libc::PR_SET_DUMPABLE, 0, 0, 0, 0))?;
        if libc::setuid(0) == 0 || libc::geteuid() != account.uid || libc::getegid() != account.gid {
            return Err(io::Error::other("the switch did not hold"));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_round_trip_and_are_bounded() {
        let mut buf = Vec::new();
        write_frame(&mut buf, b"hello").unwrap();
        assert_eq!(read_frame(&mut buf.as_slice(), 16).unwrap(), b"hello");
        assert!(read_frame(&mut buf.as_slice(), 4).unwrap_err().to_string().contains("over the limit"));
    }

    #[test]
    fn hostile_requests_are_refused() {
        let settings = Settings::from_local(&crate::config::Local::default(), "h");
        let req = |user: &str, sender: &str| Request {
            user: user.into(),
            sender: sender.into(),
            recipient: "r@h".into(),
            original: "r@h".into(),
            length: 0,
            target: None,
        };
        let err = |r: Request| check(&settings, none, &r).unwrap_err();
        assert_eq!(err(req("../../etc/passwd", "a@b")).status, (5, 1, 3));
        assert_eq!(err(req("root", "a@b")).status, (5, 7, 1));
        assert_eq!(err(req("no-such-user-posthorn", "a@b")).status, (5, 1, 1));
        assert!(err(req("nobody", "a@b\nX: y")).text.contains("sender"));
        assert!(check(&settings, none, &req("nobody", "a@b")).is_ok());
    }

    /// An `Owners` that finds no alias file listing anything.
    fn none(_: &[String], _: &Target) -> Vec<u32> {
        Vec::new()
    }

    /// An `Owners` for which root's alias file and the file of uid 4242
    /// list `/bin/record x` and `/var/tmp/archive`, and nothing else.
    fn listing(_: &[String], target: &Target) -> Vec<u32> {
        match target {
            Target::Command { command, .. } if command == "/bin/record x" => vec![0, 4242],
            Target::File { path } if path == "/var/tmp/archive" => vec![0, 4242],
            _ => Vec::new(),
        }
    }

    #[test]
    fn commands_and_files_only_for_an_account_an_alias_file_acts_for() {
        let mut settings = Settings {
            spool_dir: "/var/mail".into(),
            home_maildir: None,
            home_mbox: None,
            deliver_to_root: true,
            hostname: "h".into(),
            default_privs: "nobody".into(),
            alias_maps: vec!["/etc/aliases".into()],
            commands_allowed: true,
            files_allowed: true,
            ..Settings::from_local(&crate::config::Local::default(), "h")
        };
        let command = |c: &str| Target::Command { command: c.into(), time_limit_secs: 1, delimiter: String::new() };
        let file = |p: &str| Target::File { path: p.into() };
        let nobody = account::lookup("nobody").unwrap().unwrap();
        let owner = account::Account { uid: 4242, ..nobody.clone() };
        let stranger = account::Account { uid: 4243, name: "stranger".into(), ..nobody.clone() };
        // default_privs acts for root's file, the owner for its own.
        for acting in [&nobody, &owner] {
            assert!(listed(&settings, listing, acting, &command("/bin/record x")).is_ok());
            assert!(listed(&settings, listing, acting, &file("/var/tmp/archive")).is_ok());
            assert!(listed(&settings, listing, acting, &command("/bin/record y")).is_err(), "not the file's text");
            assert!(listed(&settings, listing, acting, &file("/etc/passwd")).is_err());
        }
        assert!(listed(&settings, listing, &stranger, &command("/bin/record x")).is_err());
        settings.commands_allowed = false;
        assert!(listed(&settings, listing, &nobody, &command("/bin/record x")).is_err());
        settings.commands_allowed = true;
        // Root never runs a command, deliver_to_root or not.
        let req = Request {
            user: "root".into(),
            sender: "s@x".into(),
            recipient: "t@x".into(),
            original: "t@x".into(),
            length: 0,
            target: Some(command("/bin/record x")),
        };
        assert_eq!(check(&settings, listing, &req).unwrap_err().status, (5, 7, 1));
    }
}
