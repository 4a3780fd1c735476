//! The daemon's TCP listeners, each tied to the configuration key that
//! names it: `smtp.listen`, `smtp.submission`, `smtp.submissions`,
//! `filter.reinject_listen`, `metrics.listen`.
//!
//! A reload applies them like any other key (issue 14): an address the new
//! configuration adds is bound, one it drops is closed (sessions in
//! progress finish, as at shutdown), one it keeps is left alone, its
//! connections untouched. Binding is all or nothing and comes first: when
//! one new address cannot be bound (taken, or a port below 1024 after root
//! was given up), nothing changes, and the reload is refused naming the key
//! and the address, so an operator never runs a configuration half applied
//! (a content filter turned on whose reinjection listener is missing
//! defers all filtered mail).

use super::Probe;
use crate::config::Config;
use crate::metrics::Metrics;
use crate::smtp::server::{Generation, Listener, Server};
use anyhow::Context as _;
use std::net::SocketAddr;
use std::sync::Arc;
use tokio::net::{TcpListener, TcpSocket};
use tokio::sync::watch;
use tokio::task::JoinHandle;

/// What a listener serves.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Service {
    Smtp(Listener),
    Reinject,
    Metrics,
}

impl Service {
    /// The configuration key that lists this service's addresses.
    fn key(self) -> &'static str {
        match self {
            Service::Smtp(Listener::Smtp) => "smtp.listen",
            Service::Smtp(Listener::Submission) => "smtp.submission",
            Service::Smtp(Listener::Submissions) => "smtp.submissions",
            Service::Reinject => "filter.reinject_listen",
            Service::Metrics => "metrics.listen",
        }
    }

    /// The name in the `listening NAME=ADDR` line.
    fn name(self) -> &'static str {
        match self {
            Service::Smtp(kind) => kind.name(),
            Service::Reinject => "reinject",
            Service::Metrics => "metrics",
        }
    }
}

/// Every (service, address) a configuration asks for, as written: a port 0
/// stays 0, so an unchanged entry is recognised across a reload.
fn wanted(config: &Config) -> Vec<(Service, SocketAddr)> {
    let smtp = [
        (Listener::Smtp, &config.smtp.listen),
        (Listener::Submission, &config.smtp.submission),
        (Listener::Submissions, &config.smtp.submissions),
    ];
    let mut out: Vec<(Service, SocketAddr)> =
        smtp.into_iter().flat_map(|(kind, addrs)| addrs.iter().map(move |a| (Service::Smtp(kind), *a))).collect();
    out.extend(config.filter.reinject_listen.map(|a| (Service::Reinject, a)));
    out.extend(config.metrics.listen.map(|a| (Service::Metrics, a)));
    out
}

/// A socket bound but not yet served.
pub(super) struct Bound {
    service: Service,
    configured: SocketAddr,
    listener: TcpListener,
}

impl Bound {
    /// The address an SMTP listener got (the kernel's port for a port 0).
    pub(super) fn smtp_address(&self) -> Option<SocketAddr> {
        matches!(self.service, Service::Smtp(_)).then(|| self.listener.local_addr().ok()).flatten()
    }
}

/// Binds every address `config` names that `except` does not already
/// have; the first failure is the error, naming the key, and drops
/// whatever was bound before it.
async fn bind_missing(config: &Config, except: &[(Service, SocketAddr)]) -> anyhow::Result<Vec<Bound>> {
    let mut bound = Vec::new();
    for (service, addr) in wanted(config) {
        if except.contains(&(service, addr)) {
            continue;
        }
        let listener = listen(addr, config.smtp.listen_backlog).map_err(|e| bind_error(service, addr, e))?;
        bound.push(Bound { service, configured: addr, listener });
    }
    Ok(bound)
}

/// A listening socket on `addr` whose kernel queue holds `backlog`
/// connections: those beyond `smtp.max_connections` wait there. Like
/// `TcpListener::bind`, it sets `SO_REUSEADDR`, so a restart does not
/// wait for the old connections' TIME_WAIT.
fn listen(addr: SocketAddr, backlog: u32) -> std::io::Result<TcpListener> {
    let socket = if addr.is_ipv4() { TcpSocket::new_v4()? } else { TcpSocket::new_v6()? };
    socket.set_reuseaddr(true)?;
    socket.bind(addr)?;
    socket.listen(backlog)
}

fn bind_error(service: Service, addr: SocketAddr, e: std::io::Error) -> anyhow::Error {
    let why = match e.kind() {
        std::io::ErrorKind::AddrInUse => "the address is in use".to_string(),
        std::io::ErrorKind::AddrNotAvailable => "no interface has this address".to_string(),
        std::io::ErrorKind::PermissionDenied if addr.port() < 1024 => {
            "permission denied (a port below 1024 needs root, which the daemon gives up after start: restart it)"
                .to_string()
        }
        std::io::ErrorKind::PermissionDenied => "permission denied".to_string(),
        _ => crate::message::outcome::strerror(&e),
    };
    anyhow::anyhow!("{}: cannot listen on {addr}: {why}", service.key())
}

/// An address `config` names that cannot be bound now.
pub(crate) struct Unavailable {
    pub(crate) addr: SocketAddr,
    pub(crate) kind: std::io::ErrorKind,
    /// The sentence `serve` would refuse with, naming the key.
    pub(crate) why: anyhow::Error,
}

/// Binds every address `config` names the way `bind_all` does (std's
/// listener sets `SO_REUSEADDR` as tokio's does) and closes it again at
/// once: `posthorn check`'s look at the ports, without a runtime.
pub(crate) fn probe(config: &Config) -> Vec<Unavailable> {
    wanted(config)
        .into_iter()
        .filter_map(|(service, addr)| {
            let e = std::net::TcpListener::bind(addr).err()?;
            Some(Unavailable { addr, kind: e.kind(), why: bind_error(service, addr, e) })
        })
        .collect()
}

/// The sockets `config` names, bound at start (as root, before the switch).
pub(super) async fn bind_all(config: &Config) -> anyhow::Result<Vec<Bound>> {
    bind_missing(config, &[]).await
}

/// The shared things each server needs, besides its socket.
pub(super) struct Shared {
    pub(super) generation: watch::Receiver<Generation>,
    pub(super) metrics: Arc<Metrics>,
    pub(super) probe: Arc<Probe>,
}

struct Running {
    service: Service,
    configured: SocketAddr,
    bound: SocketAddr,
    stop: watch::Sender<bool>,
    task: JoinHandle<()>,
}

/// The listeners being served.
pub(super) struct Listeners {
    running: Vec<Running>,
    /// Listeners a reload closed, whose sessions may still be finishing.
    closing: Vec<JoinHandle<()>>,
    context: Shared,
}

/// New sockets for a reload, bound and waiting for `Listeners::commit`.
pub(super) struct Change {
    new: Vec<Bound>,
    gone: Vec<(Service, SocketAddr)>,
}

impl Listeners {
    pub(super) fn new(context: Shared) -> Listeners {
        Listeners { running: Vec::new(), closing: Vec::new(), context }
    }

    /// The SMTP addresses as bound (the kernel's port where the
    /// configuration says 0), once `change` is committed: the transports
    /// never deliver to them.
    pub(super) fn smtp_addresses(&self, change: Option<&Change>) -> Vec<SocketAddr> {
        let gone = |r: &Running| change.is_some_and(|c| c.gone.contains(&(r.service, r.configured)));
        let kept = self.running.iter().filter(|r| !gone(r)).map(|r| (r.service, r.bound));
        let new =
            change.into_iter().flat_map(|c| &c.new).filter_map(|b| Some((b.service, b.listener.local_addr().ok()?)));
        kept.chain(new).filter(|(s, _)| matches!(s, Service::Smtp(_))).map(|(_, a)| a).collect()
    }

    /// Binds what `config` adds to the running set; refuses (changing
    /// nothing) when any of it cannot be bound.
    pub(super) async fn prepare(&self, config: &Config) -> anyhow::Result<Change> {
        let have: Vec<(Service, SocketAddr)> = self.running.iter().map(|r| (r.service, r.configured)).collect();
        let new = bind_missing(config, &have).await?;
        let want = wanted(config);
        let gone = have.into_iter().filter(|h| !want.contains(h)).collect();
        Ok(Change { new, gone })
    }

    /// Serves the new sockets and closes the ones the configuration
    /// dropped; their sessions in progress finish.
    pub(super) fn commit(&mut self, change: Change) -> anyhow::Result<()> {
        for (service, addr) in &change.gone {
            if let Some(at) = self.running.iter().position(|r| (r.service, r.configured) == (*service, *addr)) {
                let r = self.running.remove(at);
                let _ = r.stop.send(true);
                self.closing.push(r.task);
                tracing::info!("reload: {} {} closed", service.key(), r.bound);
            }
        }
        self.serve(change.new)
    }

    /// Starts serving `bound`, announcing each (`listening NAME=ADDR`).
    pub(super) fn serve(&mut self, bound: Vec<Bound>) -> anyhow::Result<()> {
        for Bound { service, configured, listener } in bound {
            let addr = listener.local_addr().with_context(|| format!("{}: {configured}", service.key()))?;
            crate::logging::announce(crate::logging::Announcement::Listening {
                kind: service.name(),
                addr: &addr.to_string(),
            });
            let (stop, stopped) = watch::channel(false);
            let c = &self.context;
            let task = match service {
                Service::Smtp(kind) => {
                    let server = Server::following(c.generation.clone()).kind(kind).metrics(c.metrics.clone());
                    tokio::spawn(server.run(listener, stopped))
                }
                Service::Reinject => {
                    let server = Server::following(c.generation.clone()).reinjection().metrics(c.metrics.clone());
                    tokio::spawn(server.run(listener, stopped))
                }
                Service::Metrics => {
                    if !addr.ip().is_loopback() {
                        tracing::warn!(
                            "metrics.listen {addr} is not a loopback address: anyone who reaches it can read the metrics"
                        );
                    }
                    tokio::spawn(crate::metrics::serve(listener, c.metrics.clone(), c.probe.clone(), stopped))
                }
            };
            self.running.push(Running { service, configured, bound: addr, stop, task });
        }
        Ok(())
    }

    /// Stops every listener and waits for its sessions to finish.
    pub(super) async fn shut_down(self) {
        for r in &self.running {
            let _ = r.stop.send(true);
        }
        for task in self.running.into_iter().map(|r| r.task).chain(self.closing) {
            let _ = task.await;
        }
    }
}
