//! The ports: every address the configuration names is bound and closed
//! again (`daemon::listeners::probe`). One that is in use fails the gate,
//! unless the running daemon of this spool is what holds it: a check run
//! while the daemon runs (before a reload, by a monitor) must not call
//! its own ports taken.

use super::Report;
use crate::config::Config;
use rustix::process::Pid;
use std::collections::HashSet;
use std::io::ErrorKind;
use std::net::{IpAddr, SocketAddr};

pub(super) fn check(config: &Config, report: &mut Report) {
    let unavailable = crate::daemon::listeners::probe(config);
    if unavailable.is_empty() {
        return;
    }
    let daemon = running_daemon(config);
    let root = rustix::process::geteuid().is_root();
    for u in unavailable {
        match u.kind {
            ErrorKind::AddrInUse if daemon.is_some_and(|pid| holds(pid, u.addr)) => {}
            // The daemon binds as root; this user cannot say more.
            ErrorKind::PermissionDenied if !root && u.addr.port() < 1024 => report
                .warnings
                .push(format!("{}: not tried: run posthorn check as root, which binds ports below 1024", u.addr)),
            _ => report.problems.push(format!("{:#}", u.why)),
        }
    }
}

/// The running daemon of this spool: its pid file or control socket,
/// checked (`postfix::pid`); else whatever answers on the control socket,
/// which only the spool's owner and root can reach (the spool's owner
/// cannot look into a daemon that switched to it from root).
fn running_daemon(config: &Config) -> Option<Pid> {
    use crate::control::{Request, request_blocking};
    super::super::postfix::pid(config).or_else(|| match request_blocking(&config.control_socket(), &Request::Ping) {
        Ok(r) if r.ok => r.pid.and_then(|p| Pid::from_raw(i32::try_from(p).ok()?)),
        _ => None,
    })
}

/// Whether the daemon `pid` is what listens on `addr`: every listening
/// socket on that port (on that address or a wildcard) is one of its
/// descriptors. When its descriptors cannot be read (a daemon that
/// switched accounts hides them from all but root), a running daemon of
/// this spool holds the addresses it was configured with: taken as its.
fn holds(pid: Pid, addr: SocketAddr) -> bool {
    let Some(own) = socket_inodes(pid) else { return true };
    let listening = listening_inodes(addr);
    listening.iter().all(|inode| own.contains(inode))
}

/// The inodes of the sockets the process `pid` has open.
fn socket_inodes(pid: Pid) -> Option<HashSet<u64>> {
    let fds = std::fs::read_dir(format!("/proc/{}/fd", pid.as_raw_nonzero())).ok()?;
    Some(
        fds.filter_map(|e| std::fs::read_link(e.ok()?.path()).ok())
            .filter_map(|target| target.to_str()?.strip_prefix("socket:[")?.strip_suffix(']')?.parse().ok())
            .collect(),
    )
}

/// The inodes of the listening TCP sockets that keep `addr` from being
/// bound, from `/proc/net/tcp` and `tcp6`.
fn listening_inodes(addr: SocketAddr) -> Vec<u64> {
    let mut out = Vec::new();
    for table in ["/proc/net/tcp", "/proc/net/tcp6"] {
        let Ok(text) = std::fs::read_to_string(table) else { continue };
        for line in text.lines().skip(1) {
            let fields: Vec<&str> = line.split_whitespace().collect();
            // sl local rem st tx:rx tr:when retr uid timeout inode
            let (Some(local), Some(&"0A"), Some(inode)) = (fields.get(1), fields.get(3), fields.get(9)) else {
                continue;
            };
            let Some(bound) = parse_local(local) else { continue };
            let overlaps = bound.ip() == addr.ip() || bound.ip().is_unspecified() || addr.ip().is_unspecified();
            if bound.port() == addr.port() && overlaps {
                out.extend(inode.parse::<u64>().ok());
            }
        }
    }
    out
}

/// `0100007F:0019` (IPv4) or 32 hex digits and a port (IPv6): each
/// 32-bit word as the kernel holds it, in this host's byte order.
fn parse_local(text: &str) -> Option<SocketAddr> {
    let (ip, port) = text.split_once(':')?;
    let port = u16::from_str_radix(port, 16).ok()?;
    let mut bytes = Vec::with_capacity(16);
    for i in (0..ip.len()).step_by(8) {
        let word = u32::from_str_radix(ip.get(i..i + 8)?, 16).ok()?;
        bytes.extend_from_slice(&word.to_ne_bytes());
    }
    let ip = match bytes.len() {
        4 => IpAddr::from(<[u8; 4]>::try_from(bytes).ok()?),
        16 => IpAddr::from(<[u8; 16]>::try_from(bytes).ok()?),
        _ => return None,
    };
    Some(SocketAddr::new(ip, port))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn proc_net_tcp_addresses() {
        if cfg!(target_endian = "little") {
            assert_eq!(parse_local("0100007F:0019"), Some("127.0.0.1:25".parse().unwrap()));
            assert_eq!(parse_local("00000000000000000000000001000000:024B"), Some("[::1]:587".parse().unwrap()));
        }
        assert_eq!(parse_local("00000000:0000"), Some("0.0.0.0:0".parse().unwrap()));
        assert_eq!(parse_local("zz"), None);
    }

    #[test]
    fn a_port_this_process_listens_on_is_its_own() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let me = Pid::from_raw(std::process::id() as i32).unwrap();
        assert!(!listening_inodes(addr).is_empty(), "{addr} not found in /proc/net/tcp");
        assert!(holds(me, addr));
        let mut other = std::process::Command::new("sleep").arg("30").spawn().unwrap();
        let pid = Pid::from_raw(other.id() as i32).unwrap();
        let held = holds(pid, addr);
        other.kill().unwrap();
        other.wait().unwrap();
        assert!(!held, "a process without the socket does not hold {addr}");
    }
}
