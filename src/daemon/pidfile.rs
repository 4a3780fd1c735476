//! The daemon's pid file, for `postfix status` and for `postfix stop` when
//! the control socket does not answer.
//!
//! Where it lives depends on who could write there:
//! - a daemon started as root that switches to its account writes
//!   `/run/posthorn/SPOOL.pid`, the spool's path with `/` as `-`
//!   (`/run/posthorn/var-spool-posthorn.pid`): root's directory, which the
//!   account cannot change, one name per spool so instances do not meet;
//! - a daemon that runs as the spool's owner throughout (started by an
//!   ordinary user, or by root with `user = "root"`) writes
//!   `SPOOL/posthorn.pid`: no one else can write the spool's top directory.
//!
//! The file is created exclusively (`O_CREAT|O_EXCL|O_NOFOLLOW`) relative to
//! a checked directory fd, under the spool lock: one that already exists
//! was left by a daemon that died, and is replaced. A daemon that switched
//! cannot remove its file from root's directory at exit; readers therefore
//! trust a pid only for a live process running this program as `serve`
//! under the spool owner's uid (`daemon_pid`).

use rustix::fs::{AtFlags, CWD, Mode, OFlags};
use rustix::process::Pid;
use std::io::{self, Write};
use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};

/// Root's directory for the pid files of daemons that switch accounts.
pub(crate) const RUN_DIR: &str = "/run/posthorn";
/// The pid file's name in the spool, for a daemon that does not switch.
const IN_SPOOL: &str = "posthorn.pid";

/// Where the pid file of the daemon on `spool` is; `switches` says whether
/// that daemon starts as root and switches to an account.
pub(crate) fn path(spool: &Path, switches: bool) -> PathBuf {
    if switches { Path::new(RUN_DIR).join(run_name(spool)) } else { spool.join(IN_SPOOL) }
}

/// `/var/spool/posthorn` → `var-spool-posthorn.pid`; `-` and `\` in the
/// path are escaped, so that two spools never share a name.
fn run_name(spool: &Path) -> String {
    let text = spool.to_string_lossy();
    let mut name = String::with_capacity(text.len() + 4);
    for c in text.trim_matches('/').chars() {
        match c {
            '/' => name.push('-'),
            '-' | '\\' => name.push_str(&format!("\\x{:02x}", c as u32)),
            c => name.push(c),
        }
    }
    name.push_str(".pid");
    name
}

/// The daemon's pid file while it runs; removed when dropped (where the
/// daemon still may: not from root's directory after the switch).
#[derive(Debug)]
pub(crate) struct PidFile {
    dir: OwnedFd,
    name: String,
}

impl PidFile {
    /// Writes this process's pid to `path(spool, switches)`. Call it with
    /// the spool lock held.
    pub(crate) fn create(spool: &Path, switches: bool) -> io::Result<PidFile> {
        let path = path(spool, switches);
        let (Some(parent), Some(name)) = (path.parent(), path.file_name()) else {
            return Err(io::Error::other("a pid file path names no file"));
        };
        let dir = checked_dir(parent, switches).map_err(|e| named(parent, e))?;
        let name = name.to_string_lossy().into_owned();
        let mut file = create_excl(&dir, &name).map_err(|e| named(&path, e))?;
        writeln!(file, "{}", std::process::id()).map_err(|e| named(&path, e))?;
        Ok(PidFile { dir, name })
    }
}

impl Drop for PidFile {
    fn drop(&mut self) {
        let _ = rustix::fs::unlinkat(&self.dir, self.name.as_str(), AtFlags::empty());
    }
}

fn named(path: &Path, e: io::Error) -> io::Error {
    io::Error::new(e.kind(), format!("pid file {}: {e}", path.display()))
}

/// Opens the pid file's directory: root's (mode 0755, created when
/// missing, not through a link) must be root's and writable by root only;
/// the spool (`privilege::open_spool`) must be this process's.
fn checked_dir(dir: &Path, in_run: bool) -> io::Result<OwnedFd> {
    let fd = if in_run {
        match rustix::fs::mkdir(dir, Mode::from_raw_mode(0o755)) {
            Ok(()) | Err(rustix::io::Errno::EXIST) => {}
            Err(e) => return Err(e.into()),
        }
        let flags = OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC;
        rustix::fs::openat(CWD, dir, flags, Mode::empty())?
    } else {
        super::privilege::open_spool(dir)?
    };
    let stat = rustix::fs::fstat(&fd)?;
    let me = rustix::process::geteuid().as_raw();
    if stat.st_uid != me || (in_run && stat.st_mode & 0o022 != 0) {
        return Err(io::Error::new(
            io::ErrorKind::PermissionDenied,
            format!(
                "the directory belongs to uid {} (mode {:o}): not a safe place",
                stat.st_uid,
                stat.st_mode & 0o7777
            ),
        ));
    }
    Ok(fd)
}

/// Creates `name` in `dir` exclusively, replacing a stale one once.
fn create_excl(dir: &OwnedFd, name: &str) -> io::Result<std::fs::File> {
    let flags = OFlags::WRONLY | OFlags::CREATE | OFlags::EXCL | OFlags::NOFOLLOW | OFlags::CLOEXEC;
    let mode = Mode::from_raw_mode(0o644);
    match rustix::fs::openat(dir, name, flags, mode) {
        Err(rustix::io::Errno::EXIST) => {
            // Under the spool lock no live daemon of this spool owns it.
            rustix::fs::unlinkat(dir, name, AtFlags::empty())?;
            Ok(rustix::fs::openat(dir, name, flags, mode)?.into())
        }
        other => Ok(other?.into()),
    }
}

/// The pid of the running daemon on `spool` from its pid file: `None`
/// when there is no file, or it names no live process that is this
/// program's `serve` running as uid `owner` (the spool's owner): a pid the
/// account wrote, or a stale one since reused, is never signalled.
pub(crate) fn daemon_pid(spool: &Path, switches: bool, owner: u32) -> Option<Pid> {
    let text = std::fs::read_to_string(path(spool, switches)).ok()?;
    let pid = Pid::from_raw(text.trim().parse().ok()?)?;
    is_daemon(pid, owner).then_some(pid)
}

/// Whether `pid` is a live (not zombie) process running this program's
/// binary as `serve`, with real uid `owner`.
pub(crate) fn is_daemon(pid: Pid, owner: u32) -> bool {
    let proc = PathBuf::from(format!("/proc/{}", pid.as_raw_nonzero()));
    let Ok(status) = std::fs::read_to_string(proc.join("status")) else { return false };
    let field = |key: &str| status.lines().find_map(|l| l.strip_prefix(key)).map(str::trim).unwrap_or_default();
    let live = !field("State:").starts_with('Z') && !field("State:").starts_with('X');
    let uid_ok = field("Uid:").split_whitespace().next() == Some(owner.to_string().as_str());
    let exe =
        |p: &Path| std::fs::read_link(p).ok().map(|e| e.to_string_lossy().trim_end_matches(" (deleted)").to_string());
    let same_binary =
        matches!((exe(&proc.join("exe")), exe(Path::new("/proc/self/exe"))), (Some(a), Some(b)) if a == b);
    let serve = std::fs::read(proc.join("cmdline")).is_ok_and(|c| c.split(|b| *b == 0).any(|arg| arg == b"serve"));
    live && uid_ok && same_binary && serve
}

/// Whether the process `pid` is gone (or a zombie nobody reaped yet).
pub(crate) fn gone(pid: Pid) -> bool {
    let Ok(stat) = std::fs::read_to_string(format!("/proc/{}/stat", pid.as_raw_nonzero())) else { return true };
    // `pid (comm) S ...`: the state follows the last `)`.
    stat.rsplit_once(')').is_none_or(|(_, rest)| matches!(rest.trim_start().chars().next(), Some('Z' | 'X')))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_in_run_are_one_per_spool() {
        assert_eq!(run_name(Path::new("/var/spool/posthorn")), "var-spool-posthorn.pid");
        assert_eq!(run_name(Path::new("/srv/a-b/")), "srv-a\\x2db.pid");
        assert_ne!(run_name(Path::new("/a-b")), run_name(Path::new("/a/b")));
        assert_eq!(path(Path::new("/s"), false), Path::new("/s/posthorn.pid"));
        assert_eq!(path(Path::new("/s"), true), Path::new("/run/posthorn/s.pid"));
    }

    #[test]
    fn created_exclusively_replacing_a_stale_one_never_through_a_link() {
        let dir = tempfile::tempdir().unwrap();
        let spool = dir.path();
        std::fs::write(spool.join(IN_SPOOL), "1\n").unwrap();
        let pid = PidFile::create(spool, false).unwrap();
        let written = std::fs::read_to_string(spool.join(IN_SPOOL)).unwrap();
        assert_eq!(written, format!("{}\n", std::process::id()));
        drop(pid);
        assert!(!spool.join(IN_SPOOL).exists());

        let victim = dir.path().join("victim");
        std::fs::write(&victim, "keep\n").unwrap();
        std::os::unix::fs::symlink(&victim, spool.join(IN_SPOOL)).unwrap();
        // The stale name is replaced; the link's target is never written.
        let _pid = PidFile::create(spool, false).unwrap();
        assert_eq!(std::fs::read_to_string(&victim).unwrap(), "keep\n");
        assert!(!std::fs::symlink_metadata(spool.join(IN_SPOOL)).unwrap().file_type().is_symlink());
    }

    #[test]
    fn only_a_serve_of_this_binary_counts_as_the_daemon() {
        let me = Pid::from_raw(std::process::id() as i32).unwrap();
        let uid = rustix::process::getuid().as_raw();
        // The test binary runs as `serve`-less: not a daemon.
        assert!(!is_daemon(me, uid));
        assert!(!gone(me));
        let mut child = std::process::Command::new("sleep").arg("30").spawn().unwrap();
        let pid = Pid::from_raw(child.id() as i32).unwrap();
        assert!(!is_daemon(pid, uid));
        child.kill().unwrap();
        // A zombie until reaped: gone all the same.
        assert!((0..100).any(|_| {
            std::thread::sleep(std::time::Duration::from_millis(10));
            gone(pid)
        }));
        child.wait().unwrap();
    }
}
