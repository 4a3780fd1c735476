//! Giving up root: a daemon started as root binds its ports, hands the
//! spool to its own account and switches to it for good, as
//! docs/security.md describes (Postfix's `mail_owner`). Also how root's
//! commands act in the spool: as its owner (`AsOwner`).
//!
//! The switch uses glibc's `setgroups`/`setgid`/`setuid`, which change the
//! credentials of every thread of the process (the kernel's calls change
//! only the calling thread's, and the runtime's threads already exist).
//! Afterwards the process checks that root cannot be taken back.
//!
//! The account can write the spool, so root never resolves a path inside
//! it: the hand-over walks the spool through directory fds opened
//! `O_NOFOLLOW`, changes each entry through an fd of its own, and never
//! follows or changes a symbolic link or a file with a second link. What
//! needs no root (creating directories, recovery, the sockets, the
//! maildrop's mode) happens after the switch.
//!
//! The spool's ownership after the switch:
//! ```text
//! SPOOL/            user:group 0711  (others reach the sockets and maildrop)
//!   queue dirs      user:group 0700  and every file in them user:group
//!   maildrop/       user:group 3733  setgid: every drop gets the group, and
//!                                    `sendmail` makes it 0640, so the daemon
//!                                    reads drops it does not own
//!   control.sock    user:group 0600  root and the user only
//! ```

use crate::account::{Account, lookup};
use anyhow::{Context, bail};
use rustix::fs::{AtFlags, CWD, FileType, Gid, Mode, OFlags, Stat, Uid};
use std::ffi::CStr;
use std::fs::File;
use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};
use std::path::{Path, PathBuf};

/// The maildrop's mode once the spool belongs to the daemon's account.
pub(crate) const MAILDROP_MODE: u32 = 0o3733;

/// The account a daemon started with `user` switches to: `None` when
/// nothing is switched (not root, no `user` in the built-in configuration,
/// or `user = "root"`).
pub(crate) fn account_for(user: Option<&str>) -> anyhow::Result<Option<Account>> {
    if !rustix::process::geteuid().is_root() {
        return Ok(None);
    }
    let Some(name) = user.filter(|name| *name != "root") else { return Ok(None) };
    let Some(account) = lookup(name)? else {
        bail!(
            "user {name:?} (the `user` key, default posthorn) does not exist: create it \
             (useradd --system --no-create-home --shell /usr/sbin/nologin {name}) or set `user` to an existing account"
        );
    };
    if account.uid == 0 {
        bail!("user {name:?} has uid 0: that is root under another name; set `user` to an unprivileged account");
    }
    Ok(Some(account))
}

/// Switches to the configured account when running as root (see
/// `account_for`); `None` when nothing was switched. Call it once, after
/// every privileged port is bound and before anything else is started.
pub(crate) fn drop_root(user: Option<&str>, spool: &Path) -> anyhow::Result<Option<Account>> {
    if user == Some("root") && rustix::process::geteuid().is_root() {
        tracing::warn!("running as root: `user = \"root\"` is set");
    }
    let Some(account) = account_for(user)? else { return Ok(None) };
    hand_over(spool, &account).with_context(|| format!("giving the spool {} to {}", spool.display(), account.name))?;
    switch(&account)?;
    Ok(Some(account))
}

/// Opens the spool's top directory. Its own path comes from root's
/// configuration, in directories root owns, so a link there (an operator's
/// `/var/spool/posthorn -> /srv/spool`) is followed; names inside the spool
/// are the account's and never are (`open_dir`).
pub(crate) fn open_spool(spool: &Path) -> io::Result<OwnedFd> {
    let flags = OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC;
    Ok(rustix::fs::openat(CWD, spool, flags, Mode::empty())?)
}

/// Opens the directory `name` under `dir` without following a symbolic link.
fn open_dir(dir: impl AsFd, name: impl rustix::path::Arg) -> io::Result<OwnedFd> {
    let flags = OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC;
    Ok(rustix::fs::openat(dir, name, flags, Mode::empty())?)
}

/// Gives the spool to `account` (see the module comment for the layout).
/// Entries already right are left alone, so a restart costs one `stat` per
/// queued file. `posthorn check --fix` calls it too.
pub(crate) fn hand_over(spool: &Path, account: &Account) -> io::Result<()> {
    let top = open_spool(spool)?;
    give(&top, account)?;
    for name in names(&top)? {
        if name.to_bytes() == b"maildrop" {
            continue;
        }
        if give_entry(&top, &name, account)? != Some(FileType::Directory) {
            continue;
        }
        if let Some(dir) = real_dir(&top, name.as_c_str())? {
            for inner in names(&dir)? {
                give_entry(&dir, &inner, account)?;
            }
        }
    }
    match real_dir(&top, "maildrop")? {
        Some(maildrop) => claim_maildrop(&top, &maildrop, account),
        None => Ok(()),
    }
}

/// The directory `name` under `dir`; `None` when it is missing, or is not
/// a directory (a link the account put there): left alone here, and named
/// by `check_layout` after the switch.
fn real_dir(dir: &OwnedFd, name: impl rustix::path::Arg) -> io::Result<Option<OwnedFd>> {
    match open_dir(dir, name) {
        Ok(fd) => Ok(Some(fd)),
        Err(e) if matches!(e.raw_os_error(), Some(libc::ENOENT | libc::ELOOP | libc::ENOTDIR)) => Ok(None),
        Err(e) => Err(e),
    }
}

/// The maildrop becomes the account's, `MAILDROP_MODE`, and each drop
/// already in it gets the account's group (`maildrop::claim`), reached
/// through `/proc/self/fd` so that no name the account controls is resolved.
fn claim_maildrop(top: &OwnedFd, maildrop: &OwnedFd, account: &Account) -> io::Result<()> {
    give(maildrop, account)?;
    rustix::fs::fchmod(maildrop, Mode::from_raw_mode(MAILDROP_MODE))?;
    let Some(quarantine) = real_dir(top, "corrupt")? else {
        // No name the account controls is handed to `claim` in its place.
        tracing::warn!("maildrop: corrupt/ is not a directory; drops already there keep their group");
        return Ok(());
    };
    let via_fd = |fd: BorrowedFd<'_>| PathBuf::from(format!("/proc/self/fd/{}", fd.as_raw_fd()));
    crate::ingress::maildrop::claim(&via_fd(maildrop.as_fd()), account.gid, &via_fd(quarantine.as_fd()))
}

/// The names in the directory `dir`, without `.` and `..`.
fn names(dir: &OwnedFd) -> io::Result<Vec<std::ffi::CString>> {
    let mut out = Vec::new();
    for entry in rustix::fs::Dir::read_from(dir)? {
        let name = entry?.file_name().to_owned();
        if name.to_bytes() != b"." && name.to_bytes() != b".." {
            out.push(name);
        }
    }
    Ok(out)
}

fn owned_by(stat: &Stat, account: &Account) -> bool {
    stat.st_uid == account.uid && stat.st_gid == account.gid
}

/// Gives the open file or directory `fd` to `account`.
fn give(fd: &OwnedFd, account: &Account) -> io::Result<()> {
    if !owned_by(&rustix::fs::fstat(fd)?, account) {
        rustix::fs::fchown(fd, Some(Uid::from_raw(account.uid)), Some(Gid::from_raw(account.gid)))?;
    }
    Ok(())
}

/// Gives the entry `name` of `dir` to `account` and says what it is. A
/// symbolic link, or anything but a directory with a second link (a hard
/// link the account made to another file), is left alone: its owner is
/// not the spool's to change. The entry is pinned by an `O_PATH` fd
/// between the check and the change, so it cannot be swapped in between.
fn give_entry(dir: &OwnedFd, name: &CStr, account: &Account) -> io::Result<Option<FileType>> {
    let stat = match rustix::fs::statat(dir, name, AtFlags::SYMLINK_NOFOLLOW) {
        Ok(stat) => stat,
        // Gone meanwhile (a stale socket removed, a drop picked up).
        Err(rustix::io::Errno::NOENT) => return Ok(None),
        Err(e) => return Err(e.into()),
    };
    let kind = FileType::from_raw_mode(stat.st_mode);
    if owned_by(&stat, account) || kind == FileType::Symlink {
        return Ok(Some(kind));
    }
    let fd = rustix::fs::openat(dir, name, OFlags::PATH | OFlags::NOFOLLOW | OFlags::CLOEXEC, Mode::empty())?;
    let stat = rustix::fs::fstat(&fd)?;
    let kind = FileType::from_raw_mode(stat.st_mode);
    if kind == FileType::Symlink || (kind != FileType::Directory && stat.st_nlink != 1) {
        tracing::warn!(
            "spool entry {}: {} link(s), not handed to {}; left alone",
            name.to_string_lossy(),
            stat.st_nlink,
            account.name
        );
        return Ok(Some(kind));
    }
    let (uid, gid) = (Some(Uid::from_raw(account.uid)), Some(Gid::from_raw(account.gid)));
    rustix::fs::chownat(&fd, "", uid, gid, AtFlags::EMPTY_PATH)?;
    Ok(Some(kind))
}

fn switch(account: &Account) -> anyhow::Result<()> {
    let gid: libc::gid_t = account.gid;
    // SAFETY: plain system calls on integers and a one-element array; glibc
    // applies each to every thread of the process.
    let failed =
        unsafe { libc::setgroups(1, &gid) != 0 || libc::setgid(account.gid) != 0 || libc::setuid(account.uid) != 0 };
    if failed {
        bail!("cannot switch to user {} (uid {}): {}", account.name, account.uid, std::io::Error::last_os_error());
    }
    // SAFETY: as above; this call must fail now.
    let back = unsafe { libc::setuid(0) } == 0;
    if back || rustix::process::getuid().as_raw() != account.uid || rustix::process::geteuid().as_raw() != account.uid {
        bail!("switching to user {} did not drop root", account.name);
    }
    Ok(())
}

/// Checks, as the account that now runs the daemon, that the spool's
/// directories are directories of its own, before recovery and the
/// scheduler work in them: a symbolic link in their place (to files
/// somewhere else) refuses the start, naming it, rather than being followed.
pub(crate) fn check_layout(spool: &Path, dirs: &[&str]) -> anyhow::Result<()> {
    let me = rustix::process::geteuid().as_raw();
    let top = open_spool(spool).with_context(|| format!("opening the spool {}", spool.display()))?;
    check_own(&rustix::fs::fstat(&top)?, me, spool)?;
    for name in dirs {
        let path = spool.join(name);
        let stat = match rustix::fs::statat(&top, *name, AtFlags::SYMLINK_NOFOLLOW) {
            Ok(stat) => stat,
            // Created next, by the account.
            Err(rustix::io::Errno::NOENT) => continue,
            Err(e) => return Err(e).with_context(|| format!("checking {}", path.display())),
        };
        match FileType::from_raw_mode(stat.st_mode) {
            FileType::Directory => check_own(&stat, me, &path)?,
            FileType::Symlink => bail!(
                "{} is a symbolic link, not a directory: posthorn does not follow links in its spool; \
                 remove it (it is created again at start)",
                path.display()
            ),
            other => bail!("{} is not a directory but a {other:?}: move it away and start again", path.display()),
        }
    }
    Ok(())
}

fn check_own(stat: &Stat, me: u32, path: &Path) -> anyhow::Result<()> {
    if stat.st_uid != me {
        bail!(
            "{} belongs to uid {}, not to the daemon's account (uid {me}): chown it, or start as root \
             so that the spool is handed over",
            path.display(),
            stat.st_uid
        );
    }
    Ok(())
}

/// Creates the spool's top directory (mode 0700, its parents as needed) and
/// gives it to `account`, as root may: the directory is new and its parent
/// root's. The daemon makes everything inside.
pub(crate) fn make_spool_top(spool: &Path, account: Option<&Account>) -> io::Result<()> {
    use std::os::unix::fs::DirBuilderExt;
    std::fs::DirBuilder::new().recursive(true).mode(0o700).create(spool)?;
    match account {
        Some(account) => give(&open_spool(spool)?, account),
        None => Ok(()),
    }
}

/// After the switch: the maildrop a new spool was given by its account
/// gets `MAILDROP_MODE`, through its fd.
pub(crate) fn settle_maildrop(spool: &Path) -> io::Result<()> {
    let maildrop = open_dir(open_spool(spool)?, "maildrop")?;
    if rustix::fs::fstat(&maildrop)?.st_mode & 0o7777 != MAILDROP_MODE {
        rustix::fs::fchmod(&maildrop, Mode::from_raw_mode(MAILDROP_MODE))?;
    }
    Ok(())
}

/// Runs `work` in a child process that has switched to `account` the way
/// the daemon switches (`switch`), and returns the lines `work` produced:
/// `posthorn check` reads the daemon's files as the daemon will read
/// them, and `--fix` makes the spool's directories as the daemon makes
/// them, without this process giving up root. A child, not a thread:
/// the switch is for the whole process. Refused in a process that runs
/// more than one thread, where a forked child could inherit a lock some
/// other thread held.
pub(crate) fn run_as(account: &Account, work: impl FnOnce() -> Vec<String>) -> anyhow::Result<Vec<String>> {
    use std::io::{Read, Write};
    if threads() != Some(1) {
        bail!("cannot act as user {}: this process runs more than one thread", account.name);
    }
    let (mut parent, mut child) = std::os::unix::net::UnixStream::pair()?;
    // SAFETY: the process has one thread (checked above), so the child
    // inherits no lock held elsewhere; it leaves through `_exit`, never
    // returning into the caller's stack or running its destructors.
    match unsafe { libc::fork() } {
        -1 => bail!("cannot fork to act as user {}: {}", account.name, io::Error::last_os_error()),
        0 => {
            drop(parent);
            let code = match switch(account) {
                Err(e) => {
                    let _ = child.write_all(format!("{e:#}").as_bytes());
                    2
                }
                Ok(()) => match std::panic::catch_unwind(std::panic::AssertUnwindSafe(work)) {
                    Ok(lines) => {
                        let text: Vec<String> = lines.iter().map(|l| l.replace('\n', " ")).collect();
                        let _ = child.write_all(text.join("\n").as_bytes());
                        0
                    }
                    Err(_) => 3,
                },
            };
            drop(child);
            // SAFETY: ends the child at once, as `fork`'s children should.
            unsafe { libc::_exit(code) }
        }
        pid => {
            drop(child);
            let mut text = String::new();
            let read = parent.read_to_string(&mut text);
            let mut status = 0;
            // SAFETY: waits for the child forked above; `status` is ours.
            unsafe { libc::waitpid(pid, &mut status, 0) };
            read?;
            match (libc::WIFEXITED(status), libc::WEXITSTATUS(status)) {
                (true, 0) => Ok(text.lines().map(str::to_string).filter(|l| !l.is_empty()).collect()),
                (true, 2) => bail!("{text}"),
                _ => bail!("the check as user {} failed (wait status {status:#x})", account.name),
            }
        }
    }
}

/// How many threads this process runs, from `/proc/self/status`.
fn threads() -> Option<usize> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    status.lines().find_map(|l| l.strip_prefix("Threads:")).and_then(|n| n.trim().parse().ok())
}

/// Sets the modes the daemon gives its spool where they differ (the top
/// 0711, the queue directories 0700, the maildrop `maildrop`), through
/// directory fds opened without following links, and says what it
/// changed. Run by the spool's owner (`posthorn check --fix`).
pub(crate) fn repair_modes(spool: &Path, dirs: &[&str], maildrop: u32) -> io::Result<Vec<String>> {
    let top = open_spool(spool)?;
    let mut changed = Vec::new();
    let mut set = |fd: &OwnedFd, name: &str, want: u32, wrong: bool| -> io::Result<()> {
        let mode = rustix::fs::fstat(fd)?.st_mode & 0o7777;
        if wrong && mode != want {
            rustix::fs::fchmod(fd, Mode::from_raw_mode(want))?;
            changed.push(format!("{name}: mode {mode:o} -> {want:o}"));
        }
        Ok(())
    };
    let top_mode = rustix::fs::fstat(&top)?.st_mode & 0o7777;
    set(&top, &spool.display().to_string(), 0o711, top_mode & 0o066 != 0)?;
    for name in dirs {
        let Some(dir) = real_dir(&top, *name)? else { continue };
        let mode = rustix::fs::fstat(&dir)?.st_mode & 0o7777;
        if *name == "maildrop" {
            set(&dir, "maildrop", maildrop, mode != 0o1733 && mode != MAILDROP_MODE)?;
        } else {
            set(&dir, name, 0o700, mode & 0o077 != 0)?;
        }
    }
    Ok(changed)
}

/// A command run by root that is about to change the spool's files (the
/// daemon being down) becomes the spool's owner for the rest of its life,
/// every thread of it, so that nothing in the account's spool is touched
/// with root's rights (the unlinks run on several threads, where
/// `AsOwner`'s per-thread identity would not reach). Changes nothing for
/// anyone else, or for a spool that belongs to root.
pub(crate) fn become_owner(spool: &Path) -> io::Result<()> {
    if !rustix::process::geteuid().is_root() {
        return Ok(());
    }
    let stat = rustix::fs::fstat(open_spool(spool)?)?;
    if stat.st_uid == 0 {
        return Ok(());
    }
    let account = Account { name: crate::account::user_name(stat.st_uid), uid: stat.st_uid, gid: stat.st_gid };
    switch(&account).map_err(|e| io::Error::other(format!("{e:#}")))
}

/// Root acting in the spool as the spool's owner: while this lives, the
/// calling thread's file-system identity (`setfsuid`/`setfsgid`) is the
/// owner's, so every file it opens or creates is checked and owned as if
/// the owner did it. For a process run by the owner itself (or a spool
/// that belongs to root) nothing changes. Single-threaded command-line use
/// only: the identity is the calling thread's.
pub(crate) struct AsOwner {
    dir: OwnedFd,
    owner: u32,
    /// The file-system ids to restore.
    restore: Option<(u32, u32)>,
}

impl AsOwner {
    /// Opens the spool directory `spool` and takes its owner's identity.
    pub(crate) fn enter(spool: &Path) -> io::Result<AsOwner> {
        let dir = open_spool(spool)?;
        let stat = rustix::fs::fstat(&dir)?;
        let restore = (rustix::process::geteuid().is_root() && stat.st_uid != 0).then(|| {
            // SAFETY: plain system calls on integers. They return the
            // previous id, and cannot fail for root (CAP_SETUID/CAP_SETGID).
            unsafe { (libc::setfsgid(stat.st_gid) as u32, libc::setfsuid(stat.st_uid) as u32) }
        });
        Ok(AsOwner { dir, owner: stat.st_uid, restore })
    }

    /// Opens `name` in the spool for appending, creating it with `mode`:
    /// never through a symbolic link, and only a regular file of the owner's
    /// with one link; anything else is refused with the reason (the caller
    /// names the path).
    pub(crate) fn append(&self, name: &str, mode: u32) -> io::Result<File> {
        let flags =
            OFlags::WRONLY | OFlags::APPEND | OFlags::CREATE | OFlags::NOFOLLOW | OFlags::NONBLOCK | OFlags::CLOEXEC;
        let fd = rustix::fs::openat(&self.dir, name, flags, Mode::from_raw_mode(mode)).map_err(|e| match e {
            rustix::io::Errno::LOOP => refusal("a symbolic link, not followed".into()),
            other => io::Error::from(other),
        })?;
        let stat = rustix::fs::fstat(&fd)?;
        if FileType::from_raw_mode(stat.st_mode) != FileType::RegularFile {
            return Err(refusal("not a regular file".into()));
        }
        if stat.st_uid != self.owner || stat.st_nlink != 1 {
            return Err(refusal(format!(
                "owned by uid {} with {} link(s), not the spool owner's (uid {}) alone",
                stat.st_uid, stat.st_nlink, self.owner
            )));
        }
        // Written 0644 by earlier versions: every local user could read it.
        if stat.st_mode & 0o7777 & !mode != 0 {
            rustix::fs::fchmod(&fd, Mode::from_raw_mode(mode))?;
        }
        Ok(File::from(fd))
    }
}

fn refusal(why: String) -> io::Error {
    io::Error::new(io::ErrorKind::PermissionDenied, why)
}

impl Drop for AsOwner {
    fn drop(&mut self) {
        if let Some((gid, uid)) = self.restore {
            // SAFETY: as in `enter`; root's ids back.
            unsafe {
                libc::setfsuid(uid);
                libc::setfsgid(gid);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn append_refuses_links_and_tightens_the_mode() {
        let dir = tempfile::tempdir().unwrap();
        let victim = dir.path().join("victim");
        std::fs::write(&victim, "keep\n").unwrap();
        let spool = dir.path().join("spool");
        std::fs::create_dir(&spool).unwrap();
        std::os::unix::fs::symlink(&victim, spool.join("audit.log")).unwrap();
        std::fs::hard_link(&victim, spool.join("hard.log")).unwrap();
        std::fs::write(spool.join("old.log"), "").unwrap();
        std::fs::set_permissions(spool.join("old.log"), std::fs::Permissions::from_mode(0o644)).unwrap();

        let owner = AsOwner::enter(&spool).unwrap();
        let e = owner.append("audit.log", 0o640).unwrap_err().to_string();
        assert!(e.contains("a symbolic link"), "{e}");
        let e = owner.append("hard.log", 0o640).unwrap_err().to_string();
        assert!(e.contains("owned by") && e.contains("2 link(s)"), "{e}");
        assert_eq!(std::fs::read_to_string(&victim).unwrap(), "keep\n");

        owner.append("old.log", 0o640).unwrap().write_all(b"line\n").unwrap();
        owner.append("new.log", 0o640).unwrap();
        for name in ["old.log", "new.log"] {
            let mode = std::fs::metadata(spool.join(name)).unwrap().permissions().mode() & 0o7777;
            assert_eq!(mode, 0o640, "{name}");
        }
    }

    #[test]
    fn a_link_in_place_of_a_spool_directory_is_named() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir(dir.path().join("data")).unwrap();
        std::os::unix::fs::symlink("/etc", dir.path().join("tmp")).unwrap();
        check_layout(dir.path(), &["data", "incoming"]).unwrap();
        let e = check_layout(dir.path(), &["data", "tmp"]).unwrap_err().to_string();
        assert!(e.contains(&format!("{}/tmp is a symbolic link", dir.path().display())), "{e}");
    }
}
