//! Metrics and health over HTTP on a loopback port (`[metrics] listen`).
//!
//! - `Metrics`: the daemon's counters, plain atomics. One value is created
//!   by the daemon and handed by `Arc` to the parts that count (ingress, the
//!   scheduler, the SMTP listeners), not kept in a process-wide static: the
//!   in-process tests run many servers side by side, each with its own
//!   counts, and a static would mix them (STYLE.md: no global singletons).
//!   Counters live as long as the process; a reload keeps them.
//!   Besides counters it keeps one histogram family, delivery delay by
//!   destination class (`Histogram`, atomics too). Labels come from closed
//!   enums (`Door`, `DeferReason`, `DestClass`, `AuthMechanism`, ...), never
//!   from what a peer sends, so the number of series is fixed.
//! - `render`: the Prometheus text exposition format 0.0.4.
//! - `serve`: a small, strict HTTP/1.x server: `GET /metrics`,
//!   `GET /health`, nothing else. Request heads are parsed by `httparse`,
//!   at most `MAX_HEAD` bytes within `READ_TIMEOUT`; every answer closes
//!   the connection.
//!
//! The gauges that belong to the scheduler (queue sizes, oldest message)
//! and the health checks come through a `Probe` the daemon supplies, so this
//! module uses nothing else in the crate.

use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::time::{Duration, SystemTime, UNIX_EPOCH};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Semaphore, watch};

/// The longest request head read; a longer one gets 400.
pub(crate) const MAX_HEAD: usize = 8 * 1024;
/// Time allowed for the whole request head, and again for the answer.
pub(crate) const READ_TIMEOUT: Duration = Duration::from_secs(5);
/// How long a scrape or a health check waits for the scheduler.
const PROBE_TIMEOUT: Duration = Duration::from_secs(2);
/// Connections served at once; more are closed unanswered.
const MAX_CLIENTS: usize = 16;

/// The door a message came in through (`posthorn_messages_accepted_total`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Door {
    /// An SMTP listener (`smtp.listen`).
    Smtp,
    /// Submission, STARTTLS or implicit TLS (`smtp.submission(s)`).
    Submission,
    /// `sendmail` and the maildrop pickup.
    Local,
    /// Back from the content filter (`filter.reinject_listen`).
    Reinject,
    /// Delivery status notifications the daemon writes itself.
    Notice,
}

impl Door {
    const ALL: [Door; 5] = [Door::Smtp, Door::Submission, Door::Local, Door::Reinject, Door::Notice];

    fn label(self) -> &'static str {
        match self {
            Door::Smtp => "smtp",
            Door::Submission => "submission",
            Door::Local => "local",
            Door::Reinject => "reinject",
            Door::Notice => "notice",
        }
    }
}

/// What became of one recipient in one delivery attempt
/// (`posthorn_recipients_total`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum RcptOutcome {
    Delivered,
    /// A temporary failure, or a destination known to be down: tried again later.
    Deferred,
    /// A permanent failure: the sender gets a bounce.
    Bounced,
    /// Still failing after `queue.max_lifetime`: the sender gets a bounce.
    Expired,
}

impl RcptOutcome {
    const ALL: [RcptOutcome; 4] =
        [RcptOutcome::Delivered, RcptOutcome::Deferred, RcptOutcome::Bounced, RcptOutcome::Expired];

    fn label(self) -> &'static str {
        match self {
            RcptOutcome::Delivered => "delivered",
            RcptOutcome::Deferred => "deferred",
            RcptOutcome::Bounced => "bounced",
            RcptOutcome::Expired => "expired",
        }
    }
}

/// The mechanism of a failed AUTH attempt (`posthorn_auth_failures_total`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum AuthMechanism {
    Plain,
    Login,
    /// One the server does not know, refused by the limiter before it was
    /// looked at (the label keeps what a client sends out of the exposition).
    Other,
}

impl AuthMechanism {
    const ALL: [AuthMechanism; 3] = [AuthMechanism::Plain, AuthMechanism::Login, AuthMechanism::Other];

    /// `PLAIN`, `LOGIN`, anything else, as the AUTH command named it.
    pub(crate) fn named(name: &str) -> AuthMechanism {
        match name {
            "PLAIN" => AuthMechanism::Plain,
            "LOGIN" => AuthMechanism::Login,
            _ => AuthMechanism::Other,
        }
    }

    fn label(self) -> &'static str {
        match self {
            AuthMechanism::Plain => "PLAIN",
            AuthMechanism::Login => "LOGIN",
            AuthMechanism::Other => "other",
        }
    }
}

/// Why an AUTH attempt failed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum AuthFailure {
    /// The user name or password was wrong (535).
    Credentials,
    /// The client or the user had too many failures already: refused
    /// without a check (454).
    Limited,
}

impl AuthFailure {
    const ALL: [AuthFailure; 2] = [AuthFailure::Credentials, AuthFailure::Limited];

    fn label(self) -> &'static str {
        match self {
            AuthFailure::Credentials => "credentials",
            AuthFailure::Limited => "limited",
        }
    }
}

/// The kind of next hop a recipient was delivered to
/// (`posthorn_delivery_delay_seconds`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum DestClass {
    /// A smarthost, or a next hop named in the transport table.
    Relay,
    /// The recipient domain's MX hosts.
    Mx,
    /// A local Maildir.
    Maildir,
    /// Handed to the after-queue content filter.
    Filter,
}

impl DestClass {
    const ALL: [DestClass; 4] = [DestClass::Relay, DestClass::Mx, DestClass::Maildir, DestClass::Filter];

    fn label(self) -> &'static str {
        match self {
            DestClass::Relay => "relay",
            DestClass::Mx => "mx",
            DestClass::Maildir => "maildir",
            DestClass::Filter => "filter",
        }
    }
}

/// Why a recipient was deferred (`posthorn_deferrals_total`): the error
/// class of the temporary failure, or a destination known to be down.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum DeferReason {
    Dns,
    Connect,
    Tls,
    Timeout,
    Protocol,
    /// The remote server answered 4xx.
    Reply4xx,
    /// A 5xx taken as temporary (a session refused at its greeting).
    Reply5xx,
    /// Trouble here: reading the message, a Maildir, the configuration.
    Local,
    /// Not tried: the destination is down and waiting out its backoff.
    DestinationDown,
}

impl DeferReason {
    const ALL: [DeferReason; 9] = [
        DeferReason::Dns,
        DeferReason::Connect,
        DeferReason::Tls,
        DeferReason::Timeout,
        DeferReason::Protocol,
        DeferReason::Reply4xx,
        DeferReason::Reply5xx,
        DeferReason::Local,
        DeferReason::DestinationDown,
    ];

    fn label(self) -> &'static str {
        match self {
            DeferReason::Dns => "dns",
            DeferReason::Connect => "connect",
            DeferReason::Tls => "tls",
            DeferReason::Timeout => "timeout",
            DeferReason::Protocol => "protocol",
            DeferReason::Reply4xx => "4xx",
            DeferReason::Reply5xx => "5xx",
            DeferReason::Local => "local",
            DeferReason::DestinationDown => "destination_down",
        }
    }
}

/// Upper bounds of the delivery delay buckets, in microseconds: 1 ms to two
/// days, the bounds the Prometheus Postfix exporter uses for its delays.
const DELAY_BOUNDS_US: [u64; 9] =
    [1_000, 10_000, 100_000, 1_000_000, 10_000_000, 60_000_000, 3_600_000_000, 86_400_000_000, 172_800_000_000];

/// A Prometheus histogram kept with atomics: a count per bucket (not
/// cumulative; `render` adds them up), the sum in microseconds, the count.
/// A scrape may see an observation in one field and not yet in another;
/// Prometheus tolerates that, and the next scrape is whole again.
#[derive(Debug, Default)]
struct Histogram {
    /// One per bound, then the last for everything above (`+Inf`).
    buckets: [AtomicU64; DELAY_BOUNDS_US.len() + 1],
    sum_us: AtomicU64,
    count: AtomicU64,
}

impl Histogram {
    fn observe(&self, us: u64) {
        let bucket = DELAY_BOUNDS_US.iter().position(|&bound| us <= bound).unwrap_or(DELAY_BOUNDS_US.len());
        self.buckets[bucket].fetch_add(1, Relaxed);
        self.sum_us.fetch_add(us, Relaxed);
        self.count.fetch_add(1, Relaxed);
    }
}

/// The daemon's counters and the one gauge kept by counting (connections).
#[derive(Debug)]
pub(crate) struct Metrics {
    started: u64,
    accepted: [AtomicU64; Door::ALL.len()],
    recipients: [AtomicU64; RcptOutcome::ALL.len()],
    deferrals: [AtomicU64; DeferReason::ALL.len()],
    delivery_delay: [Histogram; DestClass::ALL.len()],
    /// By mechanism, then by `AuthFailure`.
    auth_failures: [[AtomicU64; AuthFailure::ALL.len()]; AuthMechanism::ALL.len()],
    smtp_sessions: AtomicU64,
    smtp_connections: AtomicU64,
    smtp_refused: AtomicU64,
    /// 4xx and 5xx replies to SMTP commands and messages.
    smtp_rejections: [AtomicU64; 2],
}

impl Default for Metrics {
    fn default() -> Metrics {
        Metrics {
            started: SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs()),
            accepted: Default::default(),
            recipients: Default::default(),
            deferrals: Default::default(),
            delivery_delay: Default::default(),
            auth_failures: Default::default(),
            smtp_sessions: AtomicU64::new(0),
            smtp_connections: AtomicU64::new(0),
            smtp_refused: AtomicU64::new(0),
            smtp_rejections: Default::default(),
        }
    }
}

impl Metrics {
    /// A message is durable in the queue.
    pub(crate) fn accepted(&self, door: Door) {
        self.accepted[door as usize].fetch_add(1, Relaxed);
    }

    pub(crate) fn recipient(&self, outcome: RcptOutcome) {
        self.recipients[outcome as usize].fetch_add(1, Relaxed);
    }

    /// A recipient was deferred, and why (counted besides `recipient`).
    pub(crate) fn deferred(&self, reason: DeferReason) {
        self.deferrals[reason as usize].fetch_add(1, Relaxed);
    }

    /// A recipient reached its destination `delay_us` microseconds after
    /// its message arrived.
    pub(crate) fn delivered(&self, class: DestClass, delay_us: u64) {
        self.delivery_delay[class as usize].observe(delay_us);
    }

    /// An AUTH attempt failed.
    pub(crate) fn auth_failed(&self, mechanism: AuthMechanism, why: AuthFailure) {
        self.auth_failures[mechanism as usize][why as usize].fetch_add(1, Relaxed);
    }

    /// An SMTP session starts; it counts as a current connection until the
    /// returned guard is dropped (also when the session task is aborted).
    pub(crate) fn session_started(self: &Arc<Self>) -> Connection {
        self.smtp_sessions.fetch_add(1, Relaxed);
        self.smtp_connections.fetch_add(1, Relaxed);
        Connection(self.clone())
    }

    /// A connection turned away at accept (over the limit, or not allowed
    /// on the reinjection listener).
    pub(crate) fn connection_refused(&self) {
        self.smtp_refused.fetch_add(1, Relaxed);
    }

    /// An SMTP session sent the reply `code` to a command or a message;
    /// only 4xx and 5xx are counted. Called for every reply, so a positive
    /// one costs a comparison and nothing more.
    pub(crate) fn smtp_reply(&self, code: u16) {
        let class = match code {
            400..=499 => 0,
            500..=599 => 1,
            _ => return,
        };
        self.smtp_rejections[class].fetch_add(1, Relaxed);
    }
}

/// One open SMTP connection; see `Metrics::session_started`.
pub(crate) struct Connection(Arc<Metrics>);

impl Drop for Connection {
    fn drop(&mut self) {
        self.0.smtp_connections.fetch_sub(1, Relaxed);
    }
}

/// The scheduler's own bookkeeping, read when scraped.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub(crate) struct QueueGauges {
    pub(crate) incoming: u64,
    pub(crate) active: u64,
    pub(crate) deferred: u64,
    pub(crate) hold: u64,
    /// Arrival (Unix seconds) of the oldest message the scheduler holds;
    /// `None` with an empty queue or when not asked for.
    pub(crate) oldest_arrival: Option<u64>,
    /// Why the queue cannot take mail as it should (free space below
    /// `queue.min_free`, spool writes failing); `None` when it can.
    pub(crate) storage: Option<String>,
}

/// What the daemon tells the HTTP server.
pub(crate) trait Probe: Send + Sync + 'static {
    /// The queue's gauges, `oldest` included when asked (it costs a pass
    /// over the queued ids); `None` when the scheduler is gone.
    fn queue(&self, oldest: bool) -> impl Future<Output = Option<QueueGauges>> + Send;
    /// Whether a new file can be created in the spool; `Err` says why not.
    fn spool_writable(&self) -> impl Future<Output = Result<(), String>> + Send;
    /// `satellite` or `hub`, as configured now.
    fn role(&self) -> String;
}

/// The exposition: every family with its HELP and TYPE lines. The queue
/// families are left out when the scheduler did not answer (`queue: None`);
/// `posthorn_scheduler_up` says so.
pub(crate) fn render(m: &Metrics, role: &str, queue: Option<&QueueGauges>, now: u64) -> String {
    let mut out = Out(String::with_capacity(4096));
    out.family("posthorn_up", "gauge", "Whether the daemon answers (always 1 when scraped).");
    out.sample("posthorn_up", &[], 1);
    out.family("posthorn_build_info", "gauge", "The running version and configured role.");
    out.sample("posthorn_build_info", &[("version", env!("CARGO_PKG_VERSION")), ("role", role)], 1);
    out.family("posthorn_start_time_seconds", "gauge", "When the daemon started, in seconds since the Unix epoch.");
    out.sample("posthorn_start_time_seconds", &[], m.started);
    let name = "posthorn_messages_accepted_total";
    out.family(name, "counter", "Messages committed to the queue, by the door they came in through.");
    for door in Door::ALL {
        out.sample(name, &[("door", door.label())], m.accepted[door as usize].load(Relaxed));
    }
    let name = "posthorn_recipients_total";
    out.family(name, "counter", "Delivery outcomes, one per recipient per attempt.");
    for outcome in RcptOutcome::ALL {
        out.sample(name, &[("outcome", outcome.label())], m.recipients[outcome as usize].load(Relaxed));
    }
    let name = "posthorn_deferrals_total";
    out.family(name, "counter", "Recipients deferred, by the class of the temporary failure (destination_down: not tried, its destination is backing off).");
    for reason in DeferReason::ALL {
        out.sample(name, &[("reason", reason.label())], m.deferrals[reason as usize].load(Relaxed));
    }
    delivery_delays(&mut out, m);
    let name = "posthorn_auth_failures_total";
    out.family(
        name,
        "counter",
        "Failed SMTP AUTH attempts, by mechanism and reason (credentials: 535, limited: 454 from the failure limit).",
    );
    for mechanism in AuthMechanism::ALL {
        for why in AuthFailure::ALL {
            // Only the limiter refuses a mechanism it does not know.
            if mechanism == AuthMechanism::Other && why == AuthFailure::Credentials {
                continue;
            }
            let n = m.auth_failures[mechanism as usize][why as usize].load(Relaxed);
            out.sample(name, &[("mechanism", mechanism.label()), ("reason", why.label())], n);
        }
    }
    out.family("posthorn_smtp_sessions_total", "counter", "SMTP sessions started.");
    out.sample("posthorn_smtp_sessions_total", &[], m.smtp_sessions.load(Relaxed));
    out.family("posthorn_smtp_connections", "gauge", "SMTP connections open now.");
    out.sample("posthorn_smtp_connections", &[], m.smtp_connections.load(Relaxed));
    let name = "posthorn_smtp_connections_refused_total";
    out.family(name, "counter", "SMTP connections turned away at accept (too many, or not allowed).");
    out.sample(name, &[], m.smtp_refused.load(Relaxed));
    let name = "posthorn_smtp_rejections_total";
    out.family(name, "counter", "SMTP commands and messages refused, by reply class (4xx temporary, 5xx permanent).");
    for (class, n) in ["4xx", "5xx"].into_iter().zip(&m.smtp_rejections) {
        out.sample(name, &[("class", class)], n.load(Relaxed));
    }
    out.family("posthorn_scheduler_up", "gauge", "Whether the scheduler answered this scrape.");
    out.sample("posthorn_scheduler_up", &[], u64::from(queue.is_some()));
    if let Some(q) = queue {
        let name = "posthorn_queue_messages";
        out.family(name, "gauge", "Messages in the queue, by state.");
        for (state, n) in [("incoming", q.incoming), ("active", q.active), ("deferred", q.deferred), ("hold", q.hold)] {
            out.sample(name, &[("state", state)], n);
        }
        let name = "posthorn_queue_oldest_message_age_seconds";
        out.family(
            name,
            "gauge",
            "Age of the oldest message in incoming, active or deferred, held mail aside (0: none).",
        );
        out.sample(name, &[], q.oldest_arrival.map_or(0, |t| now.saturating_sub(t)));
    }
    out.0
}

/// `posthorn_delivery_delay_seconds`: cumulative buckets, sum and count
/// per destination class.
fn delivery_delays(out: &mut Out, m: &Metrics) {
    let name = "posthorn_delivery_delay_seconds";
    out.family(
        name,
        "histogram",
        "Time from a message's arrival to the delivery of a recipient, by destination class.",
    );
    for class in DestClass::ALL {
        let h = &m.delivery_delay[class as usize];
        let label = class.label();
        let mut cumulative = 0;
        for (i, n) in h.buckets.iter().enumerate() {
            cumulative += n.load(Relaxed);
            let le = DELAY_BOUNDS_US.get(i).map_or("+Inf".to_string(), |&us| seconds(us));
            out.sample(&format!("{name}_bucket"), &[("class", label), ("le", &le)], cumulative);
        }
        out.sample(&format!("{name}_sum"), &[("class", label)], seconds(h.sum_us.load(Relaxed)));
        out.sample(&format!("{name}_count"), &[("class", label)], h.count.load(Relaxed));
    }
}

/// Microseconds as seconds in decimal, exactly: `1000` is `0.001`,
/// `3600000000` is `3600`.
fn seconds(us: u64) -> String {
    match us % 1_000_000 {
        0 => format!("{}", us / 1_000_000),
        frac => format!("{}.{}", us / 1_000_000, format!("{frac:06}").trim_end_matches('0')),
    }
}

struct Out(String);

impl Out {
    fn family(&mut self, name: &str, kind: &str, help: &str) {
        self.0.push_str(&format!("# HELP {name} {help}\n# TYPE {name} {kind}\n"));
    }

    fn sample(&mut self, name: &str, labels: &[(&str, &str)], value: impl std::fmt::Display) {
        self.0.push_str(name);
        if !labels.is_empty() {
            let pairs: Vec<String> = labels.iter().map(|(k, v)| format!("{k}=\"{}\"", escape(v))).collect();
            self.0.push_str(&format!("{{{}}}", pairs.join(",")));
        }
        self.0.push_str(&format!(" {value}\n"));
    }
}

/// A label value as the text format wants it: `\`, `"` and newline escaped.
fn escape(v: &str) -> String {
    v.replace('\\', r"\\").replace('"', "\\\"").replace('\n', r"\n")
}

/// A request head, as far as this server cares.
#[derive(Debug, PartialEq, Eq)]
enum Head {
    /// More bytes are needed.
    Partial,
    Request {
        method: String,
        path: String,
    },
    /// Not an HTTP/1.x request head.
    Bad,
}

fn parse_head(buf: &[u8]) -> Head {
    let mut headers = [httparse::EMPTY_HEADER; 32];
    let mut req = httparse::Request::new(&mut headers);
    match req.parse(buf) {
        Ok(httparse::Status::Complete(_)) => match (req.method, req.path) {
            (Some(method), Some(path)) => Head::Request { method: method.to_string(), path: path.to_string() },
            _ => Head::Bad,
        },
        Ok(httparse::Status::Partial) => Head::Partial,
        Err(_) => Head::Bad,
    }
}

/// What a request asks for.
#[derive(Debug, PartialEq, Eq)]
enum Target {
    Metrics,
    Health,
    NotFound,
    MethodNotAllowed,
}

/// Known paths first: an unknown path is 404 whatever the method. HEAD is
/// answered like GET, without the body.
fn target(method: &str, path: &str) -> Target {
    let path = path.split('?').next().unwrap_or(path);
    let found = match path {
        "/metrics" => Target::Metrics,
        "/health" => Target::Health,
        _ => return Target::NotFound,
    };
    if method == "GET" || method == "HEAD" { found } else { Target::MethodNotAllowed }
}

struct Response {
    status: u16,
    content_type: &'static str,
    body: String,
}

impl Response {
    fn text(status: u16, body: impl Into<String>) -> Response {
        Response { status, content_type: "text/plain; charset=utf-8", body: body.into() }
    }

    fn to_bytes(&self, with_body: bool) -> Vec<u8> {
        let reason = match self.status {
            200 => "OK",
            400 => "Bad Request",
            404 => "Not Found",
            405 => "Method Not Allowed",
            408 => "Request Timeout",
            _ => "Service Unavailable",
        };
        let allow = if self.status == 405 { "Allow: GET, HEAD\r\n" } else { "" };
        let mut out = format!(
            "HTTP/1.1 {} {reason}\r\nContent-Type: {}\r\nContent-Length: {}\r\n{allow}Cache-Control: no-store\r\nConnection: close\r\n\r\n",
            self.status,
            self.content_type,
            self.body.len()
        )
        .into_bytes();
        if with_body {
            out.extend_from_slice(self.body.as_bytes());
        }
        out
    }
}

/// Serves metrics and health on `listener` until `shutdown` turns true.
pub(crate) async fn serve<P: Probe>(
    listener: TcpListener,
    metrics: Arc<Metrics>,
    probe: Arc<P>,
    mut shutdown: watch::Receiver<bool>,
) {
    let slots = Arc::new(Semaphore::new(MAX_CLIENTS));
    loop {
        let accepted = tokio::select! {
            accepted = listener.accept() => accepted,
            _ = shutdown.wait_for(|v| *v) => return,
        };
        let stream = match accepted {
            Ok((stream, _)) => stream,
            Err(e) => {
                tracing::warn!("metrics: accept failed: {e}");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let Ok(slot) = slots.clone().try_acquire_owned() else { continue };
        let (metrics, probe) = (metrics.clone(), probe.clone());
        tokio::spawn(async move {
            handle(stream, &metrics, &*probe).await;
            drop(slot);
        });
    }
}

/// One request, one answer, then the connection is closed.
async fn handle<P: Probe>(mut stream: TcpStream, metrics: &Metrics, probe: &P) {
    let head = match tokio::time::timeout(READ_TIMEOUT, read_head(&mut stream)).await {
        Ok(Some(head)) => head,
        Ok(None) => return, // closed before a whole head arrived
        Err(_) => {
            let _ =
                tokio::time::timeout(READ_TIMEOUT, stream.write_all(&Response::text(408, "").to_bytes(false))).await;
            return;
        }
    };
    let (response, with_body) = match head {
        Head::Request { method, path } => {
            let response = match target(&method, &path) {
                Target::Metrics => {
                    let queue = tokio::time::timeout(PROBE_TIMEOUT, probe.queue(true)).await.ok().flatten();
                    let now = SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs());
                    Response {
                        status: 200,
                        content_type: "text/plain; version=0.0.4; charset=utf-8",
                        body: render(metrics, &probe.role(), queue.as_ref(), now),
                    }
                }
                Target::Health => match health(probe).await {
                    Ok(()) => Response::text(200, "ok\n"),
                    Err(why) => Response::text(503, format!("{why}\n")),
                },
                Target::NotFound => Response::text(404, "not found: try /metrics or /health\n"),
                Target::MethodNotAllowed => Response::text(405, "only GET and HEAD\n"),
            };
            (response, method != "HEAD")
        }
        Head::Partial | Head::Bad => (Response::text(400, "bad request\n"), true),
    };
    let write = async {
        stream.write_all(&response.to_bytes(with_body)).await?;
        stream.shutdown().await
    };
    let _ = tokio::time::timeout(READ_TIMEOUT, write).await;
}

/// Reads until the head is complete, bad, or `MAX_HEAD` bytes long (then
/// bad); `None` when the peer closes first.
async fn read_head(stream: &mut TcpStream) -> Option<Head> {
    let mut buf = vec![0u8; MAX_HEAD];
    let mut len = 0;
    loop {
        let n = stream.read(&mut buf[len..]).await.ok()?;
        if n == 0 {
            return None;
        }
        len += n;
        match parse_head(&buf[..len]) {
            Head::Partial if len < MAX_HEAD => continue,
            Head::Partial => return Some(Head::Bad),
            done => return Some(done),
        }
    }
}

/// Serving means: the scheduler answers, the queue has its free space and
/// its writes succeed, and the spool takes a new file.
async fn health<P: Probe>(probe: &P) -> Result<(), String> {
    match tokio::time::timeout(PROBE_TIMEOUT, probe.queue(false)).await {
        Ok(Some(QueueGauges { storage: Some(why), .. })) => return Err(why),
        Ok(Some(_)) => {}
        Ok(None) => return Err("scheduler stopped".into()),
        Err(_) => return Err(format!("scheduler did not answer within {PROBE_TIMEOUT:?}")),
    }
    match tokio::time::timeout(PROBE_TIMEOUT, probe.spool_writable()).await {
        Ok(Ok(())) => Ok(()),
        Ok(Err(why)) => Err(format!("spool not writable: {why}")),
        Err(_) => Err(format!("spool did not answer within {PROBE_TIMEOUT:?}")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::AtomicBool;

    #[test]
    fn request_heads() {
        let cases: &[(&[u8], Head)] = &[
            (b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n", req("GET", "/metrics")),
            (b"GET /health HTTP/1.0\r\n\r\n", req("GET", "/health")),
            (b"POST /x HTTP/1.1\r\nContent-Length: 3\r\n\r\nabc", req("POST", "/x")),
            (b"GET /metrics HTTP/1.1\r\nHost: x\r\n", Head::Partial),
            (b"GET /met", Head::Partial),
            (b"", Head::Partial),
            (b"hello there\r\n\r\n", Head::Bad),
            (b"GET /metrics HTTP/2.0\r\n\r\n", Head::Bad),
            (b"GET /metrics\r\n\r\n", Head::Bad),
            (b"\x16\x03\x01\x02\x00\x01\x00", Head::Bad),
            (b"GET /metrics HTTP/1.1\r\nBad Header\r\n\r\n", Head::Bad),
        ];
        for (input, expected) in cases {
            assert_eq!(&parse_head(input), expected, "{:?}", String::from_utf8_lossy(input));
        }
    }

    fn req(method: &str, path: &str) -> Head {
        Head::Request { method: method.into(), path: path.into() }
    }

    #[test]
    fn routing() {
        let cases = [
            ("GET", "/metrics", Target::Metrics),
            ("HEAD", "/metrics", Target::Metrics),
            ("GET", "/metrics?name[]=x", Target::Metrics),
            ("GET", "/health", Target::Health),
            ("POST", "/metrics", Target::MethodNotAllowed),
            ("DELETE", "/health", Target::MethodNotAllowed),
            ("GET", "/", Target::NotFound),
            ("GET", "/metrics/", Target::NotFound),
            ("POST", "/nope", Target::NotFound),
        ];
        for (method, path, expected) in cases {
            assert_eq!(target(method, path), expected, "{method} {path}");
        }
    }

    #[test]
    fn microseconds_as_seconds() {
        let cases = [
            (0, "0"),
            (1, "0.000001"),
            (1_000, "0.001"),
            (100_000, "0.1"),
            (2_500_000, "2.5"),
            (172_800_000_000, "172800"),
        ];
        for (us, text) in cases {
            assert_eq!(seconds(us), text, "{us}");
        }
    }

    #[test]
    fn label_values_are_escaped() {
        assert_eq!(escape(r#"a"b\c"#), r#"a\"b\\c"#);
        assert_eq!(escape("x\ny"), r"x\ny");
    }

    #[test]
    fn rendering() {
        let m = Arc::new(Metrics::default());
        m.accepted(Door::Smtp);
        m.accepted(Door::Smtp);
        m.accepted(Door::Notice);
        m.recipient(RcptOutcome::Deferred);
        let open = m.session_started();
        let _closed = m.session_started();
        drop(open);
        m.connection_refused();
        for code in [250, 354, 421, 452, 503, 550, 554, 221, 600, 0] {
            m.smtp_reply(code);
        }
        m.deferred(DeferReason::Reply4xx);
        m.deferred(DeferReason::Reply4xx);
        m.deferred(DeferReason::DestinationDown);
        m.auth_failed(AuthMechanism::named("PLAIN"), AuthFailure::Credentials);
        m.auth_failed(AuthMechanism::named("LOGIN"), AuthFailure::Limited);
        m.auth_failed(AuthMechanism::named("CRAM-MD5"), AuthFailure::Limited);
        for us in [500, 1_000, 1_001, 2_500_000, 200_000_000_000] {
            m.delivered(DestClass::Mx, us);
        }
        let q = QueueGauges {
            incoming: 1,
            active: 2,
            deferred: 3,
            hold: 4,
            oldest_arrival: Some(m.started - 7),
            storage: None,
        };
        let text = render(&m, "hub", Some(&q), m.started);
        for line in [
            "posthorn_up 1",
            &format!("posthorn_build_info{{version=\"{}\",role=\"hub\"}} 1", env!("CARGO_PKG_VERSION")),
            &format!("posthorn_start_time_seconds {}", m.started),
            "posthorn_messages_accepted_total{door=\"smtp\"} 2",
            "posthorn_messages_accepted_total{door=\"submission\"} 0",
            "posthorn_messages_accepted_total{door=\"notice\"} 1",
            "posthorn_recipients_total{outcome=\"deferred\"} 1",
            "posthorn_recipients_total{outcome=\"delivered\"} 0",
            "posthorn_smtp_sessions_total 2",
            "posthorn_smtp_connections 1",
            "posthorn_smtp_connections_refused_total 1",
            "posthorn_smtp_rejections_total{class=\"4xx\"} 2",
            "posthorn_smtp_rejections_total{class=\"5xx\"} 3",
            "posthorn_scheduler_up 1",
            "posthorn_queue_messages{state=\"incoming\"} 1",
            "posthorn_queue_messages{state=\"hold\"} 4",
            "posthorn_queue_oldest_message_age_seconds 7",
            "posthorn_deferrals_total{reason=\"4xx\"} 2",
            "posthorn_deferrals_total{reason=\"destination_down\"} 1",
            "posthorn_deferrals_total{reason=\"dns\"} 0",
            "posthorn_auth_failures_total{mechanism=\"PLAIN\",reason=\"credentials\"} 1",
            "posthorn_auth_failures_total{mechanism=\"PLAIN\",reason=\"limited\"} 0",
            "posthorn_auth_failures_total{mechanism=\"LOGIN\",reason=\"limited\"} 1",
            "posthorn_auth_failures_total{mechanism=\"other\",reason=\"limited\"} 1",
            "posthorn_delivery_delay_seconds_bucket{class=\"mx\",le=\"0.001\"} 2",
            "posthorn_delivery_delay_seconds_bucket{class=\"mx\",le=\"0.01\"} 3",
            "posthorn_delivery_delay_seconds_bucket{class=\"mx\",le=\"1\"} 3",
            "posthorn_delivery_delay_seconds_bucket{class=\"mx\",le=\"10\"} 4",
            "posthorn_delivery_delay_seconds_bucket{class=\"mx\",le=\"172800\"} 4",
            "posthorn_delivery_delay_seconds_bucket{class=\"mx\",le=\"+Inf\"} 5",
            "posthorn_delivery_delay_seconds_sum{class=\"mx\"} 200002.502501",
            "posthorn_delivery_delay_seconds_count{class=\"mx\"} 5",
            "posthorn_delivery_delay_seconds_bucket{class=\"relay\",le=\"+Inf\"} 0",
            "posthorn_delivery_delay_seconds_sum{class=\"relay\"} 0",
            "posthorn_delivery_delay_seconds_count{class=\"filter\"} 0",
        ] {
            assert!(text.lines().any(|l| l == line), "missing {line:?} in:\n{text}");
        }
        assert!(text.ends_with('\n'));
        assert!(!text.contains("mechanism=\"other\",reason=\"credentials\""), "{text}");
        // Every sample belongs to the family announced just before it (a
        // histogram's with its suffixes).
        let (mut family, mut kind) = ("", "");
        for line in text.lines() {
            if let Some(rest) = line.strip_prefix("# TYPE ") {
                (family, kind) = rest.split_once(' ').unwrap();
                assert!(matches!(kind, "gauge" | "counter" | "histogram"), "{line}");
            } else if !line.starts_with("# HELP ") {
                let name = line.split(['{', ' ']).next().unwrap();
                match kind {
                    "histogram" => assert!(
                        ["_bucket", "_sum", "_count"].iter().any(|suffix| name == format!("{family}{suffix}")),
                        "{line}"
                    ),
                    _ => assert_eq!(name, family, "{line}"),
                }
            }
        }
        let without = render(&m, "satellite", None, m.started);
        assert!(without.contains("posthorn_scheduler_up 0\n"));
        assert!(!without.contains("posthorn_queue_messages"));
    }

    struct FakeProbe {
        scheduler: AtomicBool,
        disk_full: AtomicBool,
    }

    impl Probe for FakeProbe {
        async fn queue(&self, _oldest: bool) -> Option<QueueGauges> {
            let storage = self.disk_full.load(Relaxed).then(|| "1.0 MiB available, below queue.min_free".to_string());
            self.scheduler.load(Relaxed).then(|| QueueGauges { storage, ..QueueGauges::default() })
        }
        async fn spool_writable(&self) -> Result<(), String> {
            Ok(())
        }
        fn role(&self) -> String {
            "satellite".into()
        }
    }

    async fn exchange(addr: std::net::SocketAddr, request: &[u8]) -> String {
        let mut s = TcpStream::connect(addr).await.unwrap();
        s.write_all(request).await.unwrap();
        let mut out = String::new();
        tokio::time::timeout(Duration::from_secs(10), s.read_to_string(&mut out)).await.unwrap().unwrap();
        out
    }

    #[tokio::test]
    async fn server_answers_and_closes() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let probe = Arc::new(FakeProbe { scheduler: AtomicBool::new(true), disk_full: AtomicBool::new(false) });
        let (stop, stopped) = watch::channel(false);
        let server = tokio::spawn(serve(listener, Arc::new(Metrics::default()), probe.clone(), stopped));

        let r = exchange(addr, b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n").await;
        assert!(r.starts_with("HTTP/1.1 200 OK\r\n"), "{r}");
        assert!(r.contains("\r\nContent-Type: text/plain; version=0.0.4; charset=utf-8\r\n"), "{r}");
        assert!(r.contains("\r\nConnection: close\r\n"), "{r}");
        assert!(r.contains("\nposthorn_up 1\n"), "{r}");
        let r = exchange(addr, b"HEAD /metrics HTTP/1.1\r\n\r\n").await;
        assert!(r.starts_with("HTTP/1.1 200 OK\r\n") && r.ends_with("\r\n\r\n"), "{r}");
        let r = exchange(addr, b"GET /health HTTP/1.1\r\n\r\n").await;
        assert!(r.starts_with("HTTP/1.1 200 OK\r\n") && r.ends_with("\r\n\r\nok\n"), "{r}");
        probe.disk_full.store(true, Relaxed);
        let r = exchange(addr, b"GET /health HTTP/1.1\r\n\r\n").await;
        assert!(r.starts_with("HTTP/1.1 503 ") && r.ends_with("below queue.min_free\n"), "{r}");
        probe.disk_full.store(false, Relaxed);
        probe.scheduler.store(false, Relaxed);
        let r = exchange(addr, b"GET /health HTTP/1.1\r\n\r\n").await;
        assert!(r.starts_with("HTTP/1.1 503 ") && r.ends_with("scheduler stopped\n"), "{r}");
        let r = exchange(addr, b"GET /nope HTTP/1.1\r\n\r\n").await;
        assert!(r.starts_with("HTTP/1.1 404 "), "{r}");
        let r = exchange(addr, b"PUT /metrics HTTP/1.1\r\n\r\n").await;
        assert!(r.starts_with("HTTP/1.1 405 ") && r.contains("\r\nAllow: GET, HEAD\r\n"), "{r}");
        let r = exchange(addr, b"EHLO example.org\r\n\r\n").await;
        assert!(r.starts_with("HTTP/1.1 400 "), "{r}");
        // A head that does not end within the limit (exactly the limit, so
        // that nothing is left unread to turn the close into a reset).
        let mut long = b"GET /metrics HTTP/1.1\r\nX-Pad: ".to_vec();
        long.resize(MAX_HEAD, b'x');
        let r = exchange(addr, &long).await;
        assert!(r.starts_with("HTTP/1.1 400 "), "{r}");

        stop.send(true).unwrap();
        tokio::time::timeout(Duration::from_secs(5), server).await.expect("server stops").unwrap();
    }

    #[tokio::test(start_paused = true)]
    async fn a_silent_client_is_cut_off() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let probe = Arc::new(FakeProbe { scheduler: AtomicBool::new(true), disk_full: AtomicBool::new(false) });
        let (_stop, stopped) = watch::channel(false);
        tokio::spawn(serve(listener, Arc::new(Metrics::default()), probe, stopped));
        let r = exchange(addr, b"GET /metrics HTTP/1.1\r\n").await;
        assert!(r.starts_with("HTTP/1.1 408 "), "{r}");
    }
}
