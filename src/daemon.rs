//! `posthorn serve`: recover the spool, bind the listeners, start the
//! scheduler, the maildrop pickup, the control socket and the SMTP servers,
//! print the readiness lines, and run until SIGTERM or SIGINT. The pid is
//! written to `SPOOL/posthorn.pid` for `postfix stop` and `postfix status`.
//!
//! Start-up order matters: recovery runs before anything touches the spool,
//! the scheduler loads the queue before the first new message can arrive,
//! and `ready` is printed only when every listener accepts connections.

use crate::config::Config;
use crate::control::{self, Request};
use crate::deliver::Transports;
use crate::ingress::{Ingress, maildrop};
use crate::queue::{Command, Scheduler};
use crate::route::router::Router;
use crate::smtp::server::Server;
use crate::spool::{Spool, State};
use anyhow::Context;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpListener;
use tokio::signal::unix::{SignalKind, signal};
use tokio::sync::{Notify, mpsc, oneshot, watch};

pub async fn serve(config: Config) -> anyhow::Result<()> {
    let config = Arc::new(config);
    let root = config.spool.clone();
    let spool = Spool::open(&root, None).with_context(|| format!("cannot open the spool {}", root.display()))?;
    let recovery = spool.recover().with_context(|| format!("recovering the spool {}", root.display()))?;
    if recovery.tmp_removed + recovery.active_requeued + recovery.orphan_bodies_removed > 0 {
        tracing::info!(
            "recovery: {} half-written file(s) removed, {} message(s) in delivery requeued, {} orphan bodies removed",
            recovery.tmp_removed,
            recovery.active_requeued,
            recovery.orphan_bodies_removed
        );
    }
    for id in &recovery.missing_body {
        tracing::error!("{id}: body missing; envelope moved to corrupt/");
    }
    let spool = Spool::open(&root, recovery.newest_id.as_deref())?;

    let mut listeners = Vec::new();
    for addr in &config.smtp.listen {
        let l = TcpListener::bind(addr).await.with_context(|| format!("cannot listen on {addr}"))?;
        listeners.push(l);
    }
    let control_listener = control::bind(&config.control_socket(), 0o600)
        .with_context(|| format!("control socket {}", config.control_socket().display()))?;
    let pickup_listener = control::bind(&root.join("pickup.sock"), 0o666).context("pickup socket")?;
    let pid_file = root.join("posthorn.pid");
    std::fs::write(&pid_file, format!("{}\n", std::process::id())).context("writing the pid file")?;

    let (shutdown_tx, shutdown_rx) = watch::channel(false);
    let (new_tx, new_rx) = mpsc::unbounded_channel();
    let (cmd_tx, cmd_rx) = mpsc::channel::<Command>(64);
    let transports = Arc::new(Transports::new(&config));
    let router = Arc::new(Router::from_config(&config).map_err(|e| anyhow::anyhow!("{e}"))?);
    let ingress = Ingress::to_queue(&config, spool.clone(), Some(new_tx), Some(router.clone()));
    let mut scheduler = Scheduler::new(config.clone(), spool.clone(), transports.clone(), ingress.clone());
    scheduler.load().context("loading the queue")?;
    let scheduler = tokio::spawn(scheduler.run(new_rx, cmd_rx, shutdown_rx.clone()));

    let pickup_now = Arc::new(Notify::new());
    tokio::spawn(pickup_loop(ingress.clone(), spool.clone(), config.clone(), pickup_now.clone(), shutdown_rx.clone()));
    tokio::spawn(wake_on_connect(pickup_listener, pickup_now.clone()));
    let (ctl_tx, ctl_rx) = mpsc::channel(64);
    tokio::spawn(control::serve(control_listener, ctl_tx));
    tokio::spawn(handle_control(ctl_rx, cmd_tx, pickup_now));

    // Signal handlers go in before `ready`: a SIGTERM right after it must
    // mean a clean shutdown, not the default action.
    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    let mut hup = signal(SignalKind::hangup())?;
    let mut servers = Vec::new();
    for listener in listeners {
        eprintln!("listening smtp={}", listener.local_addr()?);
        let server = Server::new(config.clone(), ingress.clone());
        servers.push(tokio::spawn(server.run(listener, shutdown_rx.clone())));
    }
    tracing::info!("posthorn {} started as {:?} for {}", env!("CARGO_PKG_VERSION"), config.role, config.hostname);
    eprintln!("ready");

    loop {
        tokio::select! {
            _ = term.recv() => break,
            _ = int.recv() => break,
            _ = hup.recv() => tracing::warn!("SIGHUP: live reload is not available in this version; restart posthorn to apply changes"),
        }
    }
    tracing::info!("shutting down");
    let _ = shutdown_tx.send(true);
    // Sessions in the middle of DATA finish their message (the server
    // bounds that wait); then deliveries in flight get a few seconds.
    for server in servers {
        let _ = server.await;
    }
    let _ = tokio::time::timeout(Duration::from_secs(10), scheduler).await;
    transports.close_idle().await;
    let _ = std::fs::remove_file(config.control_socket());
    let _ = std::fs::remove_file(root.join("pickup.sock"));
    let _ = std::fs::remove_file(pid_file);
    Ok(())
}

/// Takes maildrop files into the queue: at start, when poked, and every
/// `queue.pickup_interval` in case a poke was missed.
async fn pickup_loop(
    ingress: Ingress,
    spool: Spool,
    config: Arc<Config>,
    now: Arc<Notify>,
    mut shutdown: watch::Receiver<bool>,
) {
    let quarantine = spool.dir(State::Corrupt);
    loop {
        maildrop::pickup(&ingress, &spool.maildrop_dir(), &quarantine).await;
        tokio::select! {
            _ = now.notified() => {}
            _ = tokio::time::sleep(config.queue.pickup_interval) => {}
            _ = shutdown.changed() => return,
        }
    }
}

async fn wake_on_connect(listener: tokio::net::UnixListener, now: Arc<Notify>) {
    while let Ok((_stream, _)) = listener.accept().await {
        now.notify_one();
    }
}

async fn handle_control(
    mut rx: mpsc::Receiver<control::Incoming>,
    scheduler: mpsc::Sender<Command>,
    pickup: Arc<Notify>,
) {
    while let Some((req, answer)) = rx.recv().await {
        let response = match req {
            Request::Ping => control::success("pong", None),
            Request::Pickup => {
                pickup.notify_one();
                control::success("pickup scheduled", None)
            }
            Request::Act { action, ids } => {
                let (tx, rx) = oneshot::channel();
                match scheduler.send(Command::Act { action, ids, reply: tx }).await {
                    Ok(()) => match rx.await {
                        Ok(results) => {
                            let mut r = control::success(action.past_tense(), Some(results.len()));
                            r.results = results;
                            r
                        }
                        Err(_) => control::failure("the scheduler has stopped"),
                    },
                    Err(_) => control::failure("the scheduler has stopped"),
                }
            }
            Request::Flush => {
                let (tx, rx) = oneshot::channel();
                match scheduler.send(Command::Flush(tx)).await {
                    Ok(()) => match rx.await {
                        Ok(n) => control::success(format!("{n} deferred message(s) scheduled for delivery"), Some(n)),
                        Err(_) => control::failure("the scheduler has stopped"),
                    },
                    Err(_) => control::failure("the scheduler has stopped"),
                }
            }
        };
        let _ = answer.send(response);
    }
}
