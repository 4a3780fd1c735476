//! `posthorn serve`: take the spool lock, bind the listeners, write the pid
//! file (`pidfile`), give up root (`privilege`), recover the spool, bind
//! the local sockets, start the scheduler, the maildrop pickup, the control
//! socket, the SMTP servers and the metrics endpoint, print the readiness
//! lines, and run until SIGTERM, SIGINT or a `stop` request.
//!
//! Start-up order matters: the spool lock (`spool::lock`) is taken first, so
//! a second daemon on the same spool exits touching nothing; root does only
//! what needs root (the ports, the pid file in `/run`, handing the spool
//! over through fds), and everything else in the spool — recovery, the
//! sockets, new directories — runs as the spool's account, after the
//! switch, so no link the account plants there is followed by root;
//! the scheduler loads the queue before the first new message can arrive,
//! signal handlers are in place before `ready` is printed, and `ready` is
//! printed only when every listener accepts connections.
//!
//! SIGHUP (or `posthorn reload`) builds a new *generation* — configuration,
//! routing tables, transports, the door into the queue — and publishes it:
//! new connections and the next deliveries use it; sessions and deliveries
//! in progress finish with the one they started with; the queue is untouched.
//! Listeners the new configuration adds or drops are opened or closed
//! (`listeners`). A configuration that does not load, or whose new
//! listeners cannot be bound, is refused and the old one stays.

pub(crate) mod listeners;
mod notify;
pub(crate) mod pidfile;
pub(crate) mod privilege;
mod trim;

use crate::config::Config;
use crate::control::{self, Request, Response};
use crate::deliver::Transports;
use crate::ingress::{Ingress, maildrop};
use crate::metrics::{Metrics, QueueGauges};
use crate::queue::Outbound;
use crate::queue::{Command, Scheduler};
use crate::route::router::Router;
use crate::smtp::server::Generation;
use crate::spool::envelope::Envelope;
use crate::spool::lock::SpoolLock;
use crate::spool::{Spool, State};
use anyhow::Context;
use pidfile::PidFile;
use std::sync::Arc;
use std::time::Duration;
use tokio::signal::unix::{SignalKind, signal};
use tokio::sync::{Notify, mpsc, oneshot, watch};

/// What a reload needs to build a new generation.
#[derive(Clone)]
struct Builder {
    spool: Spool,
    new_mail: mpsc::UnboundedSender<Envelope>,
    metrics: Arc<Metrics>,
    /// The SMTP listeners as bound (the kernel's port where the
    /// configuration says 0): the transports never deliver to them.
    listening: Vec<std::net::SocketAddr>,
}

impl Builder {
    fn build(&self, config: &Config) -> anyhow::Result<(Arc<Config>, Ingress, Arc<Outbound>)> {
        let (router, transports) = load(&self.as_bound(config))?;
        let router = Arc::new(router);
        let ingress = Ingress::to_queue(config, self.spool.clone(), Some(self.new_mail.clone()), Some(router.clone()))
            .with_metrics(self.metrics.clone());
        let outbound = Arc::new(Outbound { router, transports });
        Ok((Arc::new(config.clone()), ingress, outbound))
    }

    /// `config` with the SMTP listeners this process really has: they do
    /// not change on reload, and a configured port 0 is no address.
    fn as_bound(&self, config: &Config) -> Config {
        let mut config = config.clone();
        config.smtp.listen = self.listening.clone();
        config.smtp.submission.clear();
        config.smtp.submissions.clear();
        config
    }
}

/// Everything a generation reads from files: the tables, the certificate
/// and key, the client CA, the users, the DKIM keys, the resolver. A file
/// that does not load refuses the start or the reload; `posthorn check`
/// calls this same function (as the daemon's account), so the gate and
/// the daemon cannot disagree.
/// Every file is tried, and every one that fails is named.
pub(crate) fn load(config: &Config) -> Result<(Router, Transports), Unloadable> {
    let router = Router::from_config(config).map_err(|e| anyhow::anyhow!("{e}"));
    // The listeners read the certificate, key and users themselves;
    // checked here so that a bad file refuses the start or the reload.
    let security = crate::smtp::server::session::Security::load(config);
    let transports = crate::route::tls_policy::PolicyTables::open(config)
        .map_err(|e| anyhow::anyhow!("{e}"))
        .and_then(|table| Transports::new(config, table));
    match (router, security, transports) {
        (Ok(router), Ok(_), Ok(transports)) => Ok((router, transports)),
        (router, security, transports) => {
            Err(Unloadable([router.err(), security.err(), transports.err()].into_iter().flatten().collect()))
        }
    }
}

/// The files of a configuration that did not load, one error each.
#[derive(Debug)]
pub(crate) struct Unloadable(pub(crate) Vec<anyhow::Error>);

impl std::fmt::Display for Unloadable {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let all: Vec<String> = self.0.iter().map(|e| format!("{e:#}")).collect();
        f.write_str(&all.join("; "))
    }
}

impl std::error::Error for Unloadable {}

/// What `serve` refuses in a configuration before it reads any file.
pub(crate) fn refusals(config: &Config) -> anyhow::Result<()> {
    if !config.smtp.submissions.is_empty() && !config.tls.is_configured() {
        anyhow::bail!("smtp.submissions needs a certificate: set tls.cert and tls.key");
    }
    Ok(())
}

/// What `serve` logs as a warning at start, and starts all the same.
pub(crate) fn warnings(config: &Config) -> Vec<String> {
    let mut out = Vec::new();
    let submission = !config.smtp.submission.is_empty() || !config.smtp.submissions.is_empty();
    if submission && config.auth.users.is_none() {
        out.push("submission listeners without auth.users refuse every MAIL: nobody can authenticate".to_string());
    }
    out.extend(crate::route::router::open_local_domains(config));
    out
}

pub(crate) async fn serve(config: Config) -> anyhow::Result<()> {
    let root = config.spool.clone();
    // Before recovery: recovery under a running daemon destroys its mail.
    // A command acting on the files with the daemon down is waited for.
    let _lock = SpoolLock::acquire_waiting(&root, |holder| {
        tracing::warn!(
            "the spool {} is in use by {holder}: waiting up to {} s for it to finish",
            root.display(),
            crate::spool::lock::COMMAND_WAIT.as_secs()
        )
    })?;

    // Every port, as root; served once the rest is in place.
    let bound = listeners::bind_all(&config).await?;
    refusals(&config)?;
    for warning in warnings(&config) {
        tracing::warn!("{warning}");
    }
    // The pid file is the last thing written with root's rights; what the
    // spool needs from here on is done as its account.
    let switches = privilege::account_for(config.user.as_deref())?.is_some();
    let pid_file = PidFile::create(&root, switches)?;
    // Every port is bound: root is no longer needed. What is read from
    // here on (keys, tables, the configuration on reload) is read as the
    // account the daemon runs as, at start and at every reload alike.
    // The local delivery agent keeps root to write mailboxes as their
    // users: started now, before root is given up.
    crate::deliver::local_agent::start_if_needed(&config)?;
    let account = privilege::drop_root(config.user.as_deref(), &root)?;
    privilege::check_layout(&root, &spool_dirs())?;
    let (spool, floor) = open_spool(&config)?;
    if account.is_some() {
        privilege::settle_maildrop(&root).context("setting the maildrop's mode")?;
    }
    let control_listener = control::bind(&config.control_socket(), 0o600)
        .with_context(|| format!("control socket {}", config.control_socket().display()))?;
    let pickup_listener = control::bind(&root.join("pickup.sock"), 0o666).context("pickup socket")?;
    let showq_listener = control::bind(&root.join("showq.sock"), 0o666).context("showq socket")?;
    let flush_listener = control::bind(&root.join(control::FLUSH_SOCKET), 0o666).context("flush socket")?;

    let (shutdown_tx, shutdown_rx) = watch::channel(false);
    let (new_tx, new_rx) = mpsc::unbounded_channel();
    let (cmd_tx, cmd_rx) = mpsc::channel::<Command>(64);
    let metrics = Arc::new(Metrics::default());
    let listening = bound.iter().filter_map(|b| b.smtp_address()).collect();
    let builder = Builder { spool: spool.clone(), new_mail: new_tx, metrics: metrics.clone(), listening };
    let (config, ingress, outbound) = builder.build(&config).with_context(|| match &account {
        Some(a) => format!("running as user {}", a.name),
        None => "starting".into(),
    })?;
    let mut scheduler =
        Scheduler::new(config.clone(), spool.clone(), outbound.clone(), ingress.clone()).with_metrics(metrics.clone());
    scheduler.index(floor);
    let scheduler = tokio::spawn(scheduler.run(new_rx, cmd_rx, shutdown_rx.clone()));
    let (generation_tx, generation_rx) = watch::channel::<Generation>((config.clone(), ingress));

    let pickup_now = Arc::new(Notify::new());
    let taken = Arc::new(maildrop::Taken::default());
    tokio::spawn(pickup_loop(
        generation_rx.clone(),
        spool.clone(),
        pickup_now.clone(),
        taken.clone(),
        shutdown_rx.clone(),
    ));
    tokio::spawn(wake_on_connect(pickup_listener, pickup_now.clone(), taken));
    tokio::spawn(control::showq::serve(showq_listener, spool.clone()));
    tokio::spawn(flush_on_connect(flush_listener, cmd_tx.clone()));
    let (ctl_tx, mut ctl_rx) = mpsc::channel(64);
    tokio::spawn(control::serve(control_listener, ctl_tx));

    // Signal handlers go in before `ready`: a SIGTERM right after it must
    // mean a clean shutdown, not the default action.
    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    let mut hup = signal(SignalKind::hangup())?;
    let mut usr1 = signal(SignalKind::user_defined1())?;
    let probe = Arc::new(Probe { scheduler: cmd_tx.clone(), spool: root.clone(), generation: generation_rx.clone() });
    let mut listening = listeners::Listeners::new(listeners::Shared {
        generation: generation_rx.clone(),
        metrics: metrics.clone(),
        probe,
    });
    listening.serve(bound)?;
    tracing::info!("posthorn {} started as {:?} for {}", env!("CARGO_PKG_VERSION"), config.role, config.hostname);
    if let Some(a) = &account {
        tracing::info!("running as user {} (uid {}, gid {})", a.name, a.uid, a.gid);
    }
    crate::logging::announce(crate::logging::Announcement::Ready);
    let notifier = notify::Notifier::from_env();
    notifier.ready();
    // Start-up ran once; its code need not stay resident (`trim`).
    trim::start_up_pages();
    // Pinged from this loop, not from a task of its own: a main loop that
    // hangs stops the pings, and systemd restarts the daemon.
    let mut watchdog = notifier.watchdog_interval().map(tokio::time::interval);

    let mut reloader =
        Reloader { builder, generation: generation_tx, scheduler: cmd_tx.clone(), outbound, listeners: listening };
    loop {
        tokio::select! {
            _ = term.recv() => break,
            _ = int.recv() => break,
            _ = usr1.recv() => crate::logging::reopen(),
            _ = tick(&mut watchdog) => notifier.watchdog(),
            _ = hup.recv() => {
                crate::logging::reopen();
                if let Err(e) = reloader.reload_telling(&notifier).await {
                    tracing::error!("reload refused, the running configuration stays: {e:#}");
                }
            }
            Some((req, answer)) = ctl_rx.recv() => {
                let response = match req {
                    Request::Reload => match reloader.reload_telling(&notifier).await {
                        Ok(()) => control::success("configuration reloaded", None),
                        Err(e) => control::failure(&format!("reload refused, the running configuration stays: {e:#}")),
                    },
                    Request::Stop => {
                        tracing::info!("stop requested over the control socket");
                        let _ = answer.send(with_pid(control::success("stopping", None)));
                        break;
                    }
                    other => handle_control(other, &cmd_tx, &pickup_now).await,
                };
                let _ = answer.send(response);
            }
        }
    }
    tracing::info!("shutting down");
    notifier.stopping();
    let _ = shutdown_tx.send(true);
    // Sessions in the middle of DATA finish their message (the server
    // bounds that wait); then deliveries in flight get a few seconds.
    let Reloader { listeners, outbound, .. } = reloader;
    listeners.shut_down().await;
    let _ = tokio::time::timeout(Duration::from_secs(10), scheduler).await;
    // Removals of delivered messages are made durable in batches and
    // their bodies unlinked afterwards: wait for that, so that a clean
    // stop leaves no orphan body for the next start to set aside.
    if let Err(e) = tokio::time::timeout(Duration::from_secs(10), spool.settle()).await.unwrap_or(Ok(())) {
        tracing::warn!("the spool's last removals may not be durable: {e}");
    }
    outbound.transports.close_idle().await;
    let _ = std::fs::remove_file(config.control_socket());
    let _ = std::fs::remove_file(root.join("pickup.sock"));
    let _ = std::fs::remove_file(root.join("showq.sock"));
    let _ = std::fs::remove_file(root.join(control::FLUSH_SOCKET));
    drop(pid_file);
    Ok(())
}

/// The watchdog's next tick; never, when there is no watchdog.
async fn tick(watchdog: &mut Option<tokio::time::Interval>) {
    match watchdog {
        Some(interval) => {
            interval.tick().await;
        }
        None => std::future::pending().await,
    }
}

/// The spool's directories, checked before recovery (`privilege::check_layout`).
pub(crate) fn spool_dirs() -> Vec<&'static str> {
    ["tmp", "data"].into_iter().chain(State::QUEUED.map(State::dir_name)).chain(["corrupt", "maildrop"]).collect()
}

/// `response` with this process's id, for `postfix status` and `stop`.
fn with_pid(mut response: Response) -> Response {
    response.pid = Some(std::process::id());
    response
}

/// Opens the spool and runs the part of crash recovery that must come
/// before any session writes (`Spool::recover_quick`); returns it with the
/// id floor it opened with, below which the scheduler's background index
/// finishes recovery. A spool without an id lease (made by a release
/// before leases) is recovered whole first: only its newest queued id can
/// floor the generator then.
fn open_spool(config: &Config) -> anyhow::Result<(Spool, u64)> {
    let root = &config.spool;
    let opened = Spool::open_with(root, None, config.queue.sync)
        .with_context(|| format!("cannot open the spool {}", root.display()))?;
    let (recovery, spool) = if opened.has_id_lease() {
        let recovery = opened.recover_quick().with_context(|| format!("recovering the spool {}", root.display()))?;
        (recovery, opened)
    } else {
        let recovery = opened.recover().with_context(|| format!("recovering the spool {}", root.display()))?;
        let spool = Spool::open_with(root, recovery.newest_id.as_deref(), config.queue.sync)?;
        (recovery, spool)
    };
    if recovery.tmp_removed + recovery.active_requeued > 0 {
        tracing::info!(
            "recovery: {} half-written file(s) removed, {} message(s) in delivery requeued",
            recovery.tmp_removed,
            recovery.active_requeued,
        );
    }
    crate::spool::log_set_aside(&recovery);
    let floor = spool.id_floor();
    Ok((spool, floor))
}

struct Reloader {
    builder: Builder,
    generation: watch::Sender<Generation>,
    scheduler: mpsc::Sender<Command>,
    outbound: Arc<Outbound>,
    listeners: listeners::Listeners,
}

impl Reloader {
    /// `reload`, framed for systemd: RELOADING before, READY after, even
    /// when the reload is refused (the old configuration still serves).
    async fn reload_telling(&mut self, notifier: &notify::Notifier) -> anyhow::Result<()> {
        notifier.reloading();
        let result = self.reload().await;
        notifier.ready();
        result
    }

    /// Reads the configuration file again and publishes a new generation.
    async fn reload(&mut self) -> anyhow::Result<()> {
        let old = self.generation.borrow().0.clone();
        let fresh = match &old.source {
            Some(path) => Config::load(path)?,
            None => Config::builtin(),
        };
        if fresh.spool != old.spool {
            anyhow::bail!(
                "spool changed from {} to {}: that needs a restart",
                old.spool.display(),
                fresh.spool.display()
            );
        }
        if fresh.user != old.user {
            anyhow::bail!("user changed: the account the daemon runs as is chosen at start; restart it");
        }
        // New listeners are bound before anything changes: one that cannot
        // be refuses the reload (it names the key), so the daemon never runs
        // half of a configuration.
        let change = self.listeners.prepare(&fresh).await?;
        let smtp = self.listeners.smtp_addresses(Some(&change));
        let builder = Builder { listening: smtp, ..self.builder.clone() };
        let (config, ingress, outbound) = builder.build(&fresh)?;
        self.builder = builder;
        self.listeners.commit(change)?;
        let fixed = |c: &Config| (c.smtp.max_connections, c.smtp.trusted_reserve, c.smtp.repeat_log_interval);
        if fixed(&fresh) != fixed(&old) {
            tracing::warn!(
                "reload: smtp.max_connections, smtp.trusted_reserve and smtp.repeat_log_interval apply to listeners \
                 opened from now on; the others keep theirs until the next restart"
            );
        }
        let _ = self
            .scheduler
            .send(Command::Reload { config: config.clone(), outbound: outbound.clone(), ingress: ingress.clone() })
            .await;
        self.generation.send_replace((config, ingress));
        let retired = std::mem::replace(&mut self.outbound, outbound);
        tokio::spawn(async move { retired.transports.close_idle().await });
        tracing::info!(
            "reload: configuration {} applied",
            old.source.as_ref().map(|p| p.display().to_string()).unwrap_or_else(|| "built-in".into())
        );
        Ok(())
    }
}

/// Takes maildrop files into the queue: at start, when poked, and every
/// `queue.pickup_interval` in case a poke was missed.
async fn pickup_loop(
    generation: watch::Receiver<Generation>,
    spool: Spool,
    now: Arc<Notify>,
    taken: Arc<maildrop::Taken>,
    mut shutdown: watch::Receiver<bool>,
) {
    let quarantine = spool.dir(State::Corrupt);
    loop {
        let (config, ingress) = generation.borrow().clone();
        maildrop::pickup(&ingress, &spool.maildrop_dir(), &quarantine, &taken).await;
        tokio::select! {
            _ = now.notified() => {}
            _ = tokio::time::sleep(config.queue.pickup_interval) => {}
            _ = shutdown.changed() => return,
        }
    }
}

/// Wakes the pickup for each connection to `pickup.sock`, and tells a
/// `sendmail -bs` that names its drop which queue id it became
/// (`maildrop::answer_pickup`). At most `PICKUP_WAITERS` connections wait
/// for an answer at once; past that a connection only wakes the pickup. A
/// failed accept (out of descriptors) is waited out, never the end of the loop.
async fn wake_on_connect(listener: tokio::net::UnixListener, now: Arc<Notify>, taken: Arc<maildrop::Taken>) {
    let waiters = Arc::new(tokio::sync::Semaphore::new(PICKUP_WAITERS));
    loop {
        let Some(stream) = control::accept(&listener).await else { continue };
        let Ok(permit) = waiters.clone().try_acquire_owned() else {
            now.notify_one();
            continue;
        };
        let (now, taken) = (now.clone(), taken.clone());
        tokio::spawn(async move {
            maildrop::answer_pickup(stream, &now, &taken).await;
            drop(permit);
        });
    }
}

/// Connections to `pickup.sock` that may wait for their drop's queue id.
const PICKUP_WAITERS: usize = 64;

/// Flushes the queue for each connection to `flush.sock` (any local user,
/// as Postfix's `postqueue -f`) and answers with the count; connections
/// within `FLUSH_EVERY` of the last flush get its count without another.
async fn flush_on_connect(listener: tokio::net::UnixListener, scheduler: mpsc::Sender<Command>) {
    use tokio::io::AsyncWriteExt;
    let mut last: Option<(tokio::time::Instant, usize)> = None;
    loop {
        let Some(mut stream) = control::accept(&listener).await else { continue };
        let n = match last {
            Some((at, n)) if at.elapsed() < control::FLUSH_EVERY => n,
            _ => {
                let (tx, rx) = oneshot::channel();
                if scheduler.send(Command::Flush(tx)).await.is_err() {
                    return;
                }
                let Ok(n) = rx.await else { return };
                last = Some((tokio::time::Instant::now(), n));
                n
            }
        };
        tokio::spawn(async move {
            let _ = tokio::time::timeout(Duration::from_secs(5), stream.write_all(format!("{n}\n").as_bytes())).await;
        });
    }
}

/// Answers the control requests that go to the scheduler or the pickup.
async fn handle_control(req: Request, scheduler: &mpsc::Sender<Command>, pickup: &Notify) -> Response {
    let stopped = || control::failure("the scheduler has stopped");
    match req {
        Request::Ping => with_pid(control::success("pong", None)),
        Request::Pickup => {
            pickup.notify_one();
            control::success("pickup scheduled", None)
        }
        Request::Reload | Request::Stop => control::failure("reload and stop are handled by the daemon's main loop"),
        Request::Act { action, ids } => {
            let (tx, rx) = oneshot::channel();
            if scheduler.send(Command::Act { action, ids, reply: tx }).await.is_err() {
                return stopped();
            }
            match rx.await {
                Ok(results) => {
                    let mut r = control::success(action.past_tense(), Some(results.len()));
                    r.results = results;
                    r
                }
                Err(_) => stopped(),
            }
        }
        Request::Flush => {
            let (tx, rx) = oneshot::channel();
            if scheduler.send(Command::Flush(tx)).await.is_err() {
                return stopped();
            }
            match rx.await {
                Ok(n) => control::success(format!("{n} deferred message(s) scheduled for delivery"), Some(n)),
                Err(_) => stopped(),
            }
        }
    }
}

/// What the metrics endpoint asks the daemon: the scheduler's gauges (its
/// answering is the sign of life), whether the spool takes a file, the role.
struct Probe {
    scheduler: mpsc::Sender<Command>,
    spool: std::path::PathBuf,
    generation: watch::Receiver<Generation>,
}

impl crate::metrics::Probe for Probe {
    async fn queue(&self, oldest: bool) -> Option<QueueGauges> {
        let (reply, answer) = oneshot::channel();
        self.scheduler.send(Command::Status { oldest, reply }).await.ok()?;
        answer.await.ok()
    }

    /// Creates and removes an empty file in `tmp/` (no sync: this checks
    /// permissions, a read-only or full file system, not durability).
    /// Start-up recovery sweeps anything a crash leaves there.
    async fn spool_writable(&self) -> Result<(), String> {
        let path = self.spool.join("tmp").join(format!("health.{}", fastrand::u64(..)));
        let check = move || {
            std::fs::OpenOptions::new().write(true).create_new(true).open(&path)?;
            std::fs::remove_file(&path)
        };
        match tokio::task::spawn_blocking(check).await {
            Ok(result) => result.map_err(|e| e.to_string()),
            Err(e) => Err(e.to_string()),
        }
    }

    fn role(&self) -> String {
        format!("{:?}", self.generation.borrow().0.role).to_lowercase()
    }
}
