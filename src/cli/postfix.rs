//! `postfix check|start|stop|reload|status|flush`: the daemon's life cycle
//! the way Postfix operators drive it.
//!
//! - `start` runs `posthorn serve` in the background (its own session,
//!   stdout and stderr appended to `SPOOL/posthorn.log`) and returns once
//!   the daemon answers on the control socket;
//! - `stop` sends SIGTERM to the pid in `SPOOL/posthorn.pid` and waits;
//! - `status` asks the daemon (exit 0 running, 1 not);
//! - `reload` asks the daemon to load its configuration again (refused,
//!   with the reason, when it does not load); `flush` retries deferred
//!   mail; `check` is `posthorn check`.
//!
//! Messages go to stderr, worded like Postfix's `postfix-script`.

use super::exit;
use crate::config::Config;
use crate::control::{self, Request};
use rustix::process::{Pid, Signal};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

const USAGE: &str = "usage: postfix [-c config] [-Dv] command (check, start, stop, reload, status, flush)";
const PREFIX: &str = "postfix/postfix-script";

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
    if !["check", "start", "stop", "reload", "status", "flush", "abort"].contains(&command.as_str()) {
        return usage(&format!("unknown command: '{command}'"));
    }
    if command == "check" {
        return super::check::main(explicit);
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

/// The daemon's pid from `SPOOL/posthorn.pid`, when that process exists.
fn pid(config: &Config) -> Option<Pid> {
    let text = std::fs::read_to_string(config.spool.join("posthorn.pid")).ok()?;
    let pid = Pid::from_raw(text.trim().parse().ok()?)?;
    rustix::process::test_kill_process(pid).ok().map(|()| pid)
}

fn start(config: &Config) -> u8 {
    if running(config) {
        eprintln!("{PREFIX}: fatal: the posthorn mail system is already running");
        return 1;
    }
    if let Some(pid) = crate::spool::lock::SpoolLock::holder(&config.spool) {
        eprintln!("{PREFIX}: fatal: the spool {} is in use by another posthorn (pid {pid})", config.spool.display());
        return 1;
    }
    // Creates the spool with its modes, so the log can go there.
    if let Err(e) = crate::spool::Spool::open(&config.spool, None) {
        eprintln!("{PREFIX}: fatal: cannot create the spool {}: {e}", config.spool.display());
        return exit::CANTCREAT;
    }
    let log_path = config.spool.join("posthorn.log");
    let log = match std::fs::OpenOptions::new().create(true).append(true).open(&log_path) {
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
    cmd.arg("serve");
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

fn stop(config: &Config, signal: Signal) -> u8 {
    let Some(pid) = pid(config) else {
        eprintln!("{PREFIX}: fatal: the posthorn mail system is not running");
        return 1;
    };
    eprintln!("{PREFIX}: stopping the posthorn mail system");
    if let Err(e) = rustix::process::kill_process(pid, signal) {
        eprintln!("{PREFIX}: fatal: cannot signal process {}: {e}", pid.as_raw_nonzero());
        return 1;
    }
    let deadline = Instant::now() + Duration::from_secs(30);
    while Instant::now() < deadline {
        if rustix::process::test_kill_process(pid).is_err() || !config.spool.join("posthorn.pid").exists() {
            return exit::OK;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    eprintln!("{PREFIX}: fatal: process {} still running after 30 s", pid.as_raw_nonzero());
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
