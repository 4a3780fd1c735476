//! `postfix check|start|stop|reload|status|flush`: the daemon's life cycle
//! the way Postfix operators drive it.
//!
//! - `start` runs `posthorn serve` in the background (its own session,
//!   stdout and stderr appended to `SPOOL/posthorn.log`, opened as the
//!   spool's owner, mode 0640) and returns once the daemon answers on the
//!   control socket;
//! - `stop` asks the daemon to stop over the control socket and waits for
//!   it to exit; only when the socket does not answer does it signal the
//!   pid in the pid file (see `daemon::pidfile`), and only a process that
//!   really is that daemon; `abort` sends SIGKILL to that process;
//! - `status` asks the daemon (exit 0 running, 1 not);
//! - `reload` asks the daemon to load its configuration again (refused,
//!   with the reason, when it does not load); `flush` retries deferred
//!   mail; `check` is `posthorn check`, which changes nothing, and
//!   `set-permissions` is `posthorn check --fix` (Postfix's `postfix check`
//!   also creates missing directories; here the gate never changes what
//!   it inspects, and the repair is asked for by name, as Postfix's
//!   `postfix set-permissions`).
//!
//! Messages go to stderr, worded like Postfix's `postfix-script`.

use super::exit;
use crate::config::Config;
use crate::control::{self, Request};
use crate::daemon::{pidfile, privilege};
use rustix::process::{Pid, Signal};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

const USAGE: &str =
    "usage: postfix [-c config] [-Dv] command (check, set-permissions, start, stop, reload, status, flush)";
const PREFIX: &str = "postfix/postfix-script";
/// The daemon's output when `start` started it, in the spool.
const LOG: &str = "posthorn.log";

pub(crate) fn main(args: &[String]) -> u8 {
    let (opts, rest) = match super::getopt(args, "c:Dv") {
        Ok(parsed) => parsed,
        Err(e) => return usage(&e),
    };
    let config_path = opts.iter().find(|(c, _)| *c == 'c').and_then(|(_, v)| v.as_deref()).map(super::config_arg);
    let explicit = config_path.as_deref();
    let [command] = rest.as_slice() else {
        return usage("give exactly one command");
    };
    let known = ["check", "set-permissions", "start", "stop", "reload", "status", "flush", "abort"];
    if !known.contains(&command.as_str()) {
        return usage(&format!("unknown command: '{command}'"));
    }
    if command == "check" || command == "set-permissions" {
        return super::check::main(explicit, command == "set-permissions");
    }
    let config = match super::load_config(explicit, "postfix") {
        Ok(c) => c,
        Err(code) => return code,
    };
    match command.as_str() {
        "start" => start(&config),
        "stop" => stop(&config, Signal::TERM),
        "abort" => stop(&config, Signal::KILL),
        "status" => status(&config),
        "reload" => reload(&config),
        _ => super::flush_as(explicit, "postfix"),
    }
}

fn usage(problem: &str) -> u8 {
    eprintln!("postfix: {problem}");
    eprintln!("postfix: fatal: {USAGE}");
    exit::USAGE
}

fn running(config: &Config) -> bool {
    matches!(control::request_blocking(&config.control_socket(), &Request::Ping), Ok(r) if r.ok)
}

/// The uid the daemon on this spool runs as: the spool's owner, whether it
/// switched to its account or ran as its owner throughout.
fn spool_owner(config: &Config) -> Option<u32> {
    std::fs::metadata(&config.spool).ok().map(|m| std::os::unix::fs::MetadataExt::uid(&m))
}

/// Whether the daemon, started by this user, switches to an account (so
/// its pid file is in `/run/posthorn`).
fn switches(config: &Config) -> bool {
    matches!(privilege::account_for(config.user.as_deref()), Ok(Some(_)))
}

/// The daemon's pid: as it says over the control socket, or from its pid
/// file; either way only a live process that is the daemon of this spool
/// (`pidfile::is_daemon`): the control socket and, for a daemon that
/// never switched, the pid file are in the spool, which its account writes.
pub(super) fn pid(config: &Config) -> Option<Pid> {
    let owner = spool_owner(config)?;
    let told = match control::request_blocking(&config.control_socket(), &Request::Ping) {
        Ok(r) if r.ok => r.pid.and_then(|p| Pid::from_raw(i32::try_from(p).ok()?)),
        _ => None,
    };
    match told {
        Some(pid) if pidfile::is_daemon(pid, owner) => Some(pid),
        _ => pidfile::daemon_pid(&config.spool, switches(config), owner),
    }
}

fn start(config: &Config) -> u8 {
    if running(config) {
        eprintln!("{PREFIX}: fatal: the posthorn mail system is already running");
        return 1;
    }
    // A command acting on the spool (`postsuper -d ALL` with the daemon
    // down) is waited for by the daemon itself; another daemon is not.
    if let Some(holder) = crate::spool::lock::SpoolLock::holder(&config.spool).filter(|h| h.is_daemon()) {
        eprintln!("{PREFIX}: fatal: the spool {} is in use by {holder}", config.spool.display());
        return 1;
    }
    let log_path = config.spool.join(LOG);
    let log = match open_log(config) {
        Ok(f) => f,
        Err(e) => {
            eprintln!("{PREFIX}: fatal: cannot open {}: {e}", log_path.display());
            return exit::CANTCREAT;
        }
    };
    let exe = match std::env::current_exe() {
        Ok(p) => p,
        Err(e) => {
            eprintln!("{PREFIX}: fatal: cannot find the posthorn binary: {e}");
            return exit::SOFTWARE;
        }
    };
    eprintln!("{PREFIX}: starting the posthorn mail system");
    let mut cmd = Command::new(exe);
    cmd.arg("serve").arg("--default-log").arg("syslog");
    if let Some(source) = &config.source {
        cmd.arg("-c").arg(absolute(source));
    }
    let err = match log.try_clone() {
        Ok(f) => f,
        Err(e) => {
            eprintln!("{PREFIX}: fatal: {e}");
            return exit::SOFTWARE;
        }
    };
    cmd.stdin(Stdio::null()).stdout(log).stderr(err);
    detach(&mut cmd);
    let mut child = match cmd.spawn() {
        Ok(c) => c,
        Err(e) => {
            eprintln!("{PREFIX}: fatal: cannot start posthorn serve: {e}");
            return exit::SOFTWARE;
        }
    };
    let deadline = Instant::now() + Duration::from_secs(30);
    while Instant::now() < deadline {
        if running(config) {
            return exit::OK;
        }
        if let Ok(Some(status)) = child.try_wait() {
            eprintln!("{PREFIX}: fatal: posthorn serve exited with {status}; see {}", log_path.display());
            return 1;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    eprintln!("{PREFIX}: fatal: posthorn serve did not answer within 30 s; see {}", log_path.display());
    1
}

/// Opens the daemon's log for appending as the spool's owner, creating the
/// spool's top directory first when it is missing (given to the daemon's
/// account, which makes the rest when it starts).
fn open_log(config: &Config) -> std::io::Result<std::fs::File> {
    if !config.spool.exists() {
        let account = privilege::account_for(config.user.as_deref()).map_err(std::io::Error::other)?;
        privilege::make_spool_top(&config.spool, account.as_ref())?;
    }
    privilege::AsOwner::enter(&config.spool)?.append(LOG, 0o640)
}

fn absolute(path: &Path) -> std::path::PathBuf {
    std::path::absolute(path).unwrap_or_else(|_| path.to_path_buf())
}

/// Runs the child in a session of its own, so it outlives this command and
/// a terminal hang-up does not reach it.
fn detach(cmd: &mut Command) {
    use std::os::unix::process::CommandExt;
    // SAFETY: setsid is async-signal-safe and touches no memory of the parent.
    unsafe {
        cmd.pre_exec(|| {
            rustix::process::setsid()?;
            Ok(())
        });
    }
}

/// `postfix stop`: a `stop` request over the control socket; the pid file
/// and a signal only when the socket does not answer. `abort` kills.
fn stop(config: &Config, signal: Signal) -> u8 {
    if signal == Signal::TERM {
        match control::request_blocking(&config.control_socket(), &Request::Stop) {
            Ok(r) if r.ok => {
                eprintln!("{PREFIX}: stopping the posthorn mail system");
                let pid = r.pid.and_then(|p| Pid::from_raw(i32::try_from(p).ok()?));
                return wait_gone(config, pid);
            }
            Ok(r) => {
                eprintln!("{PREFIX}: fatal: the posthorn daemon refused to stop: {}", r.message);
                return 1;
            }
            // Not answering (or an older daemon): the pid file, checked.
            Err(_) => {}
        }
    }
    let Some(pid) = pid(config) else {
        eprintln!("{PREFIX}: fatal: the posthorn mail system is not running");
        return 1;
    };
    eprintln!("{PREFIX}: stopping the posthorn mail system");
    if let Err(e) = rustix::process::kill_process(pid, signal) {
        eprintln!("{PREFIX}: fatal: cannot signal process {}: {e}", pid.as_raw_nonzero());
        return 1;
    }
    wait_gone(config, Some(pid))
}

/// Waits up to 30 s for the daemon to exit: the process `pid` when it is
/// known, else the control socket going quiet.
fn wait_gone(config: &Config, pid: Option<Pid>) -> u8 {
    let deadline = Instant::now() + Duration::from_secs(30);
    while Instant::now() < deadline {
        let done = match pid {
            Some(pid) => pidfile::gone(pid),
            None => !running(config),
        };
        if done {
            return exit::OK;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let which = pid.map(|p| format!("process {}", p.as_raw_nonzero())).unwrap_or_else(|| "the daemon".into());
    eprintln!("{PREFIX}: fatal: {which} still running after 30 s");
    1
}

fn status(config: &Config) -> u8 {
    if running(config) {
        let pid = pid(config).map(|p| p.as_raw_nonzero().to_string()).unwrap_or_else(|| "unknown".into());
        eprintln!("{PREFIX}: the posthorn mail system is running: PID: {pid}");
        exit::OK
    } else {
        eprintln!("{PREFIX}: the posthorn mail system is not running");
        1
    }
}

/// Asks the daemon to read its configuration and tables again; a
/// configuration that does not load is refused and the running one stays.
pub(crate) fn reload(config: &Config) -> u8 {
    match control::request_blocking(&config.control_socket(), &Request::Reload) {
        Ok(r) if r.ok => {
            eprintln!("{PREFIX}: refreshing the posthorn mail system");
            exit::OK
        }
        Ok(r) => {
            eprintln!("{PREFIX}: fatal: {}", r.message);
            1
        }
        Err(control::ControlError::NotRunning(_)) => {
            eprintln!("{PREFIX}: fatal: the posthorn mail system is not running");
            1
        }
        Err(e) => {
            eprintln!("{PREFIX}: fatal: {e}");
            exit::TEMPFAIL
        }
    }
}
