//! The systemd notification protocol (`sd_notify(3)`), for `Type=notify`:
//! the daemon tells the service manager when it is ready (every listener
//! accepts, the spool is recovered), when it reloads, when it stops, and
//! pings the watchdog from its main loop, so a runtime that hangs stops
//! pinging and systemd restarts it.
//!
//! The protocol is one datagram of `KEY=VALUE` lines to the Unix socket
//! named by `NOTIFY_SOCKET` (a path, or an abstract name written with a
//! leading `@`). Without the variable every call does nothing, so the same
//! binary runs under systemd, under `postfix start` and in the tests. It is
//! a few lines over `UnixDatagram`; the crates that do it bring no more.

use std::io;
use std::os::unix::net::UnixDatagram;
use std::time::Duration;

/// Where notifications go: `NOTIFY_SOCKET`, read once at start.
pub(crate) struct Notifier {
    socket: Option<(UnixDatagram, std::os::unix::net::SocketAddr)>,
    watchdog: Option<Duration>,
}

impl Notifier {
    /// Reads `NOTIFY_SOCKET`, and `WATCHDOG_USEC` when `WATCHDOG_PID` is
    /// unset or names this process (a variable inherited from a parent is
    /// not ours). A socket that cannot be opened is logged and ignored:
    /// the service manager then times the start out and says why.
    pub(crate) fn from_env() -> Notifier {
        let socket = std::env::var_os("NOTIFY_SOCKET").and_then(|name| match open(&name) {
            Ok(socket) => Some(socket),
            Err(e) => {
                tracing::warn!("NOTIFY_SOCKET {}: {e}; systemd will not hear that posthorn is ready", name.display());
                None
            }
        });
        let ours = std::env::var("WATCHDOG_PID").map_or(true, |pid| pid.trim() == std::process::id().to_string());
        let usec = std::env::var("WATCHDOG_USEC").ok().and_then(|v| v.trim().parse::<u64>().ok());
        let watchdog = usec.filter(|&u| ours && u > 0).map(Duration::from_micros);
        Notifier { socket, watchdog }
    }

    /// How often to ping the watchdog (half its timeout, as systemd
    /// advises), or `None` when no watchdog is set for this process.
    pub(crate) fn watchdog_interval(&self) -> Option<Duration> {
        self.watchdog.map(|timeout| timeout / 2)
    }

    pub(crate) fn ready(&self) {
        self.send("READY=1\nSTATUS=accepting mail\n");
    }

    /// Before a reload: systemd holds `systemctl reload` until the next
    /// `ready`, and needs the monotonic time to tell this reload's answer
    /// from an earlier one.
    pub(crate) fn reloading(&self) {
        self.send(&format!("RELOADING=1\nMONOTONIC_USEC={}\n", monotonic_usec()));
    }

    pub(crate) fn stopping(&self) {
        self.send("STOPPING=1\nSTATUS=shutting down\n");
    }

    pub(crate) fn watchdog(&self) {
        self.send("WATCHDOG=1\n");
    }

    fn send(&self, state: &str) {
        if let Some((socket, addr)) = &self.socket
            && let Err(e) = socket.send_to_addr(state.as_bytes(), addr)
        {
            tracing::warn!("NOTIFY_SOCKET: {e}");
        }
    }
}

/// An unbound datagram socket and the address `name` stands for.
fn open(name: &std::ffi::OsStr) -> io::Result<(UnixDatagram, std::os::unix::net::SocketAddr)> {
    use std::os::linux::net::SocketAddrExt;
    use std::os::unix::ffi::OsStrExt;
    let bytes = name.as_bytes();
    let addr = match bytes.first() {
        Some(b'@') => std::os::unix::net::SocketAddr::from_abstract_name(&bytes[1..])?,
        Some(b'/') => std::os::unix::net::SocketAddr::from_pathname(name)?,
        _ => return Err(io::Error::new(io::ErrorKind::InvalidInput, "neither an absolute path nor an @abstract name")),
    };
    Ok((UnixDatagram::unbound()?, addr))
}

/// `CLOCK_MONOTONIC` in microseconds, the clock systemd compares.
fn monotonic_usec() -> u64 {
    let mut ts = libc::timespec { tv_sec: 0, tv_nsec: 0 };
    // SAFETY: clock_gettime writes one timespec we own.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    (ts.tv_sec as u64) * 1_000_000 + (ts.tv_nsec as u64) / 1_000
}

#[cfg(test)]
mod tests {
    use super::*;

    fn receive(socket: &UnixDatagram) -> String {
        let mut buf = [0u8; 512];
        let n = socket.recv(&mut buf).expect("a datagram");
        String::from_utf8_lossy(&buf[..n]).into_owned()
    }

    fn notifier_to(name: &str) -> Notifier {
        Notifier { socket: Some(open(std::ffi::OsStr::new(name)).unwrap()), watchdog: None }
    }

    #[test]
    fn every_state_reaches_a_path_socket() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("notify");
        let listener = UnixDatagram::bind(&path).unwrap();
        listener.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        let notifier = notifier_to(path.to_str().unwrap());
        notifier.ready();
        assert!(receive(&listener).starts_with("READY=1\n"));
        let before = monotonic_usec();
        notifier.reloading();
        let reload = receive(&listener);
        assert!(reload.starts_with("RELOADING=1\nMONOTONIC_USEC="), "{reload}");
        let usec: u64 = reload.lines().nth(1).unwrap()["MONOTONIC_USEC=".len()..].parse().unwrap();
        assert!(usec >= before && usec <= monotonic_usec());
        notifier.watchdog();
        assert_eq!(receive(&listener), "WATCHDOG=1\n");
        notifier.stopping();
        assert!(receive(&listener).starts_with("STOPPING=1\n"));
    }

    #[test]
    fn an_abstract_socket_is_written_with_an_at_sign() {
        use std::os::linux::net::SocketAddrExt;
        let name = format!("posthorn-notify-test-{}", std::process::id());
        let addr = std::os::unix::net::SocketAddr::from_abstract_name(name.as_bytes()).unwrap();
        let listener = UnixDatagram::bind_addr(&addr).unwrap();
        listener.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        notifier_to(&format!("@{name}")).ready();
        assert!(receive(&listener).starts_with("READY=1\n"));
    }

    #[test]
    fn a_relative_name_is_refused_and_no_socket_sends_nothing() {
        assert!(open(std::ffi::OsStr::new("notify")).is_err());
        let silent = Notifier { socket: None, watchdog: Some(Duration::from_secs(10)) };
        silent.ready();
        assert_eq!(silent.watchdog_interval(), Some(Duration::from_secs(5)));
    }
}
