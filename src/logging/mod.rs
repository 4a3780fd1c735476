//! Where log lines go and what they look like: the daemon's one logging
//! layer under `tracing`.
//!
//! Every `tracing` event becomes one line in Postfix's shape, so the tools
//! admins already run on `mail.log` (pflogsumm, fail2ban, the Postfix
//! exporter, mailgraph, logwatch, grep habits) read it unchanged:
//!
//! - the tag is `log.syslog_name` plus the *service* that logged the line,
//!   as Postfix's daemons do: `posthorn/smtpd[PID]`, `posthorn/qmgr[PID]`,
//!   `posthorn/smtp[PID]`, ... An event names its service with a `service`
//!   field, or the module it comes from decides (`service_of`);
//! - the level becomes a syslog priority, and warnings, errors and fatal
//!   errors start with Postfix's `warning: `, `error: `, `fatal: ` prefixes;
//! - the message is the line's text. Structured fields (`queue_id`,
//!   `client_addr`, `to`, `delay`, ...) are not repeated in the text: they
//!   go to journald as its own fields and to JSON lines as typed values.
//!
//! Destinations (`[log] to`): stderr, a file (`file:PATH`, reopened on
//! SIGHUP and SIGUSR1 for logrotate), syslog over `/dev/log` (RFC 3164 or
//! 5424, facility `mail`), or journald's native protocol. `[log] format =
//! "json"` makes the stderr or file stream one JSON object per line. The
//! sinks are in `sink`; the formats in `line`.
//!
//! Writes are synchronous, one `write`/`send` per line, as Postfix's
//! msg_syslog does: a line that was logged is in the kernel before the code
//! goes on, so a crash right after loses nothing that was written.

mod line;
mod sink;

pub(crate) use line::Format;
pub(crate) use sink::Destination;

use std::fmt::Write as _;
use std::sync::OnceLock;
use tracing::field::{Field, Visit};
use tracing::{Event, Level, Subscriber};
use tracing_subscriber::layer::{Context, Layer};

/// How the daemon logs: the `[log]` section, resolved.
#[derive(Clone, Debug)]
pub(crate) struct Settings {
    /// `None`: not set in the file; the caller's default applies (stderr in
    /// the foreground, syslog when started by `postfix start`).
    pub(crate) to: Option<Destination>,
    pub(crate) format: Format,
    /// The first half of every tag (`log.syslog_name`, default `posthorn`).
    pub(crate) syslog_name: String,
    /// `log.syslog_facility`, default `mail`.
    pub(crate) facility: Facility,
    /// `log.syslog_format`: `rfc3164` (the default, what glibc's syslog(3)
    /// sends) or `rfc5424`.
    pub(crate) rfc5424: bool,
    /// `log.syslog_socket`, default `/dev/log`.
    pub(crate) syslog_socket: std::path::PathBuf,
    /// `log.journald_socket`, default `/run/systemd/journal/socket`.
    pub(crate) journald_socket: std::path::PathBuf,
}

impl Default for Settings {
    fn default() -> Settings {
        Settings {
            to: None,
            format: Format::Text,
            syslog_name: "posthorn".into(),
            facility: Facility::MAIL,
            rfc5424: false,
            syslog_socket: "/dev/log".into(),
            journald_socket: "/run/systemd/journal/socket".into(),
        }
    }
}

/// A syslog facility, by its number (RFC 5424 6.2.1).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Facility(pub(crate) u8);

impl Facility {
    pub(crate) const MAIL: Facility = Facility(2);

    /// The facilities a mail system may log to, by name.
    pub(crate) fn from_name(name: &str) -> Option<Facility> {
        let code = match name {
            "mail" => 2,
            "daemon" => 3,
            "user" => 1,
            "local0" => 16,
            "local1" => 17,
            "local2" => 18,
            "local3" => 19,
            "local4" => 20,
            "local5" => 21,
            "local6" => 22,
            "local7" => 23,
            _ => return None,
        };
        Some(Facility(code))
    }
}

/// Syslog severities (RFC 5424 6.2.1) and Postfix's text prefixes for them.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Severity {
    /// `fatal: ` and `panic: `: the process is going away.
    Critical,
    Error,
    Warning,
    Info,
    Debug,
}

impl Severity {
    fn code(self) -> u8 {
        match self {
            Severity::Critical => 2,
            Severity::Error => 3,
            Severity::Warning => 4,
            Severity::Info => 6,
            Severity::Debug => 7,
        }
    }

    fn of(level: &Level, fatal: bool) -> Severity {
        match *level {
            _ if fatal => Severity::Critical,
            Level::ERROR => Severity::Error,
            Level::WARN => Severity::Warning,
            Level::INFO => Severity::Info,
            _ => Severity::Debug,
        }
    }

    /// The text Postfix puts before the message at this severity.
    fn prefix(self, panic: bool) -> &'static str {
        match self {
            Severity::Critical if panic => "panic: ",
            Severity::Critical => "fatal: ",
            Severity::Error => "error: ",
            Severity::Warning => "warning: ",
            Severity::Info | Severity::Debug => "",
        }
    }

    fn name(self) -> &'static str {
        match self {
            Severity::Critical => "crit",
            Severity::Error => "err",
            Severity::Warning => "warning",
            Severity::Info => "info",
            Severity::Debug => "debug",
        }
    }
}

/// One event, taken apart: what every sink formats from.
#[derive(Debug)]
pub(crate) struct Record {
    pub(crate) service: String,
    pub(crate) severity: Severity,
    /// The message with Postfix's severity prefix.
    pub(crate) text: String,
    /// Structured fields in the order they were given; the queue id first
    /// when the text starts with one and no field named it.
    pub(crate) fields: Vec<(&'static str, Value)>,
}

/// A typed field value, kept typed for JSON.
#[derive(Clone, Debug, PartialEq)]
pub(crate) enum Value {
    Str(String),
    U64(u64),
    I64(i64),
    F64(f64),
    Bool(bool),
}

impl std::fmt::Display for Value {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Value::Str(s) => f.write_str(s),
            Value::U64(v) => write!(f, "{v}"),
            Value::I64(v) => write!(f, "{v}"),
            Value::F64(v) => write!(f, "{v}"),
            Value::Bool(v) => write!(f, "{v}"),
        }
    }
}

/// Collects an event's message and fields.
#[derive(Default)]
struct Collect {
    message: String,
    service: Option<String>,
    fatal: bool,
    panic: bool,
    fields: Vec<(&'static str, Value)>,
}

impl Visit for Collect {
    fn record_debug(&mut self, field: &Field, value: &dyn std::fmt::Debug) {
        match field.name() {
            "message" => {
                let _ = write!(self.message, "{value:?}");
            }
            name => self.push(name, Value::Str(format!("{value:?}"))),
        }
    }

    fn record_str(&mut self, field: &Field, value: &str) {
        match field.name() {
            "message" => self.message.push_str(value),
            name => self.push(name, Value::Str(value.to_string())),
        }
    }

    fn record_u64(&mut self, field: &Field, value: u64) {
        self.push(field.name(), Value::U64(value));
    }

    fn record_i64(&mut self, field: &Field, value: i64) {
        self.push(field.name(), Value::I64(value));
    }

    fn record_f64(&mut self, field: &Field, value: f64) {
        self.push(field.name(), Value::F64(value));
    }

    fn record_bool(&mut self, field: &Field, value: bool) {
        self.push(field.name(), Value::Bool(value));
    }
}

impl Collect {
    fn push(&mut self, name: &'static str, value: Value) {
        match (name, value) {
            ("service", Value::Str(s)) => self.service = Some(s),
            ("fatal", Value::Bool(b)) => self.fatal = b,
            ("panic", Value::Bool(b)) => {
                self.fatal |= b;
                self.panic = b;
            }
            (name, value) => self.fields.push((name, value)),
        }
    }
}

/// The Postfix service a module's lines belong to, when the event does not
/// say: the SMTP server is `smtpd`, the scheduler `qmgr`, the door
/// `cleanup`, the maildrop scan `pickup`, notices `bounce`, Maildir
/// delivery `virtual`, LMTP `lmtp`, the other transports `smtp`, routing
/// `trivial-rewrite`, and the daemon's own life `master`.
pub(crate) fn service_of(target: &str) -> &'static str {
    const TABLE: &[(&str, &str)] = &[
        ("posthorn::smtp::server", "smtpd"),
        ("posthorn::smtp::client", "smtp"),
        ("posthorn::ingress::maildrop", "pickup"),
        ("posthorn::ingress", "cleanup"),
        ("posthorn::queue::notice", "bounce"),
        ("posthorn::dsn", "bounce"),
        ("posthorn::queue", "qmgr"),
        ("posthorn::spool", "qmgr"),
        ("posthorn::deliver::maildir", "virtual"),
        ("posthorn::deliver::lmtp", "lmtp"),
        ("posthorn::deliver", "smtp"),
        ("posthorn::route", "trivial-rewrite"),
        ("posthorn::cli", "postsuper"),
    ];
    TABLE.iter().find(|(prefix, _)| target.starts_with(prefix)).map(|(_, s)| *s).unwrap_or("master")
}

/// A leading `QUEUEID: ` in a message, for events that did not name their
/// queue id as a field: ids are 10 to 13 upper-case letters and digits.
fn leading_queue_id(text: &str) -> Option<&str> {
    let (head, _) = text.split_once(": ")?;
    let ok = (10..=13).contains(&head.len()) && head.bytes().all(|b| b.is_ascii_digit() || b.is_ascii_uppercase());
    ok.then_some(head)
}

impl Record {
    fn from_event(event: &Event<'_>) -> Record {
        let mut collect = Collect::default();
        event.record(&mut collect);
        let meta = event.metadata();
        let severity = Severity::of(meta.level(), collect.fatal);
        let service = collect.service.unwrap_or_else(|| service_of(meta.target()).to_string());
        let mut fields = collect.fields;
        if !fields.iter().any(|(n, _)| *n == "queue_id")
            && let Some(id) = leading_queue_id(&collect.message)
        {
            fields.insert(0, ("queue_id", Value::Str(id.to_string())));
        }
        let mut text = String::with_capacity(collect.message.len() + 10);
        text.push_str(severity.prefix(collect.panic));
        text.push_str(&without_errno(&collect.message));
        Record { service, severity, text, fields }
    }
}

/// `text` without Rust's " (os error N)" after an I/O error's words:
/// Postfix's lines say "Connection refused", and so do ours, whichever
/// error chain the words came through.
fn without_errno(text: &str) -> std::borrow::Cow<'_, str> {
    const MARK: &str = " (os error ";
    if !text.contains(MARK) {
        return text.into();
    }
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(at) = rest.find(MARK) {
        let after = &rest[at + MARK.len()..];
        let digits = after.bytes().take_while(u8::is_ascii_digit).count();
        if digits > 0 && after[digits..].starts_with(')') {
            out.push_str(&rest[..at]);
            rest = &after[digits + 1..];
        } else {
            out.push_str(&rest[..at + MARK.len()]);
            rest = after;
        }
    }
    out.push_str(rest);
    out.into()
}

/// The `tracing` layer that hands each event to the sink.
struct Posthorn {
    sink: &'static sink::Sink,
}

impl<S: Subscriber> Layer<S> for Posthorn {
    fn on_event(&self, event: &Event<'_>, _ctx: Context<'_, S>) {
        self.sink.write(&Record::from_event(event));
    }
}

static SINK: OnceLock<sink::Sink> = OnceLock::new();

/// Installs the logging layer for this process. `default_to` is where logs
/// go when the file does not say (`postfix start` passes syslog). Returns a
/// line to log once logging is up when the destination could not be used
/// and stderr stands in for it.
pub(crate) fn init(settings: &Settings, default_to: Destination) -> Option<String> {
    use tracing_subscriber::layer::SubscriberExt;
    let to = settings.to.clone().unwrap_or(default_to);
    let (sink, fallback) = sink::Sink::open(settings, &to);
    let sink = SINK.get_or_init(|| sink);
    let filter = tracing_subscriber::EnvFilter::try_from_env("POSTHORN_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let subscriber = tracing_subscriber::registry().with(filter).with(Posthorn { sink });
    let _ = tracing::subscriber::set_global_default(subscriber);
    install_panic_hook();
    fallback
}

/// Reopens a `file:` log (logrotate renamed it); other sinks need nothing.
pub(crate) fn reopen() {
    if let Some(sink) = SINK.get() {
        sink.reopen();
    }
}

/// The lines that tell whoever started the daemon where it listens, that
/// it is ready (it accepts mail) and that it has loaded the queue it found
/// at start (`listening smtp=ADDR`, `ready`, `loaded`). They are not log
/// lines: they always go to stderr, as text or, with `format = "json"`, as
/// JSON objects (`{"event":"listening","listener":"smtp","address":...}`,
/// `{"event":"ready"}`), so a JSON stream on stderr stays all JSON.
pub(crate) enum Announcement<'a> {
    Listening { kind: &'a str, addr: &'a str },
    Ready,
    Loaded,
}

pub(crate) fn announce(what: Announcement<'_>) {
    let json = SINK.get().is_some_and(|s| s.format() == Format::Json);
    let line = match (what, json) {
        (Announcement::Listening { kind, addr }, false) => format!("listening {kind}={addr}\n"),
        (Announcement::Listening { kind, addr }, true) => {
            serde_json::json!({"event": "listening", "listener": kind, "address": addr}).to_string() + "\n"
        }
        (Announcement::Ready, false) => "ready\n".to_string(),
        (Announcement::Ready, true) => "{\"event\":\"ready\"}\n".to_string(),
        (Announcement::Loaded, false) => "loaded\n".to_string(),
        (Announcement::Loaded, true) => "{\"event\":\"loaded\"}\n".to_string(),
    };
    sink::write_stderr(line.as_bytes());
}

/// A panic is logged as Postfix logs one (`panic: ...`, priority crit)
/// before the default hook prints it to stderr.
fn install_panic_hook() {
    let default = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        let place = info.location().map(|l| format!(" at {}:{}", l.file(), l.line())).unwrap_or_default();
        let what = info
            .payload()
            .downcast_ref::<&str>()
            .map(|s| s.to_string())
            .or_else(|| info.payload().downcast_ref::<String>().cloned())
            .unwrap_or_else(|| "panic".into());
        tracing::error!(panic = true, service = "master", "{what}{place}");
        default(info);
    }));
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn services_by_module() {
        for (target, service) in [
            ("posthorn::smtp::server::conn", "smtpd"),
            ("posthorn::ingress::maildrop", "pickup"),
            ("posthorn::ingress", "cleanup"),
            ("posthorn::queue::attempt", "qmgr"),
            ("posthorn::queue::notice", "bounce"),
            ("posthorn::deliver::relay", "smtp"),
            ("posthorn::deliver::maildir", "virtual"),
            ("posthorn::deliver::lmtp", "lmtp"),
            ("posthorn::daemon", "master"),
            ("posthorn::daemonic", "master"),
            ("rustls::conn", "master"),
        ] {
            assert_eq!(service_of(target), service, "{target}");
        }
    }

    #[test]
    fn io_errors_lose_their_number() {
        assert_eq!(
            without_errno("connect to x: Connection refused (os error 111)"),
            "connect to x: Connection refused"
        );
        assert_eq!(without_errno("a (os error 2): b (os error 13) c"), "a: b c");
        assert_eq!(without_errno("kept (os error x)"), "kept (os error x)");
    }

    #[test]
    fn queue_ids_at_the_start_of_a_message() {
        assert_eq!(leading_queue_id("HOHQ7MHK1C: removed"), Some("HOHQ7MHK1C"));
        assert_eq!(leading_queue_id("0BJ8Z9KQ2XW: to=<a@b>"), Some("0BJ8Z9KQ2XW"));
        assert_eq!(leading_queue_id("NOQUEUE: reject: RCPT"), None);
        assert_eq!(leading_queue_id("connect from unknown[127.0.0.1]"), None);
        assert_eq!(leading_queue_id("hohq7mhk1c: x"), None);
    }

    #[test]
    fn facilities_by_name() {
        assert_eq!(Facility::from_name("mail"), Some(Facility(2)));
        assert_eq!(Facility::from_name("local7"), Some(Facility(23)));
        assert_eq!(Facility::from_name("kern"), None);
    }
}
