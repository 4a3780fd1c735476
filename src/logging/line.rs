//! The text of a log line for each destination: the traditional syslog
//! file line (stderr and `file:`), the RFC 3164 and RFC 5424 datagrams sent
//! to `/dev/log`, a JSON object, and journald's native fields. Pure
//! functions of a `Record` and the process's `Tag`.

use super::{Record, Value};
use std::cell::RefCell;
use std::fmt::Write as _;

/// `[log] format`: how the stderr or file stream is written.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Format {
    /// `Dec  5 03:41:00 host posthorn/smtpd[123]: text`, as syslog writes
    /// `mail.log`, so the same tools read either.
    Text,
    /// One JSON object per line, typed fields.
    Json,
}

/// What every line of this process says about who wrote it.
#[derive(Clone, Debug)]
pub(crate) struct Tag {
    /// `log.syslog_name`.
    pub(crate) name: String,
    /// The short host name, as syslog daemons write it.
    pub(crate) host: String,
    pub(crate) pid: u32,
    pub(crate) facility: u8,
}

impl Tag {
    pub(crate) fn new(name: &str, facility: u8) -> Tag {
        let uts = rustix::system::uname();
        let host = uts.nodename().to_string_lossy();
        let short = host.split('.').next().filter(|h| !h.is_empty()).unwrap_or("localhost").to_string();
        Tag { name: name.to_string(), host: short, pid: std::process::id(), facility }
    }

    fn pri(&self, record: &Record) -> u8 {
        self.facility * 8 + record.severity.code()
    }
}

thread_local! {
    /// The last second formatted on this thread and its text: one line in
    /// thousands needs the calendar.
    static STAMP: RefCell<(u64, String)> = const { RefCell::new((u64::MAX, String::new())) };
}

/// `Dec  5 03:41:00` in local time (syslog's traditional timestamp).
fn traditional_stamp(out: &mut String) {
    let now = crate::clock::now_secs();
    STAMP.with(|cell| {
        let mut cell = cell.borrow_mut();
        if cell.0 != now {
            let text = crate::clock::timestamp(now)
                .to_zoned_datetime(jiff::tz::TimeZone::system())
                .strftime("%b %e %H:%M:%S")
                .to_string();
            *cell = (now, text);
        }
        out.push_str(&cell.1);
    });
}

/// RFC 3339 with microseconds and the local offset (RFC 5424, JSON).
fn rfc3339_now() -> String {
    jiff::Timestamp::now()
        .to_zoned_datetime(jiff::tz::TimeZone::system())
        .strftime("%Y-%m-%dT%H:%M:%S%.6f%:z")
        .to_string()
}

/// `name/service[pid]`
fn tag(out: &mut String, tag: &Tag, record: &Record) {
    let _ = write!(out, "{}/{}[{}]", tag.name, record.service, tag.pid);
}

/// The line a syslog daemon would write to `mail.log`, newline included.
pub(crate) fn file_line(t: &Tag, record: &Record) -> String {
    let mut out = String::with_capacity(record.text.len() + 64);
    traditional_stamp(&mut out);
    out.push(' ');
    out.push_str(&t.host);
    out.push(' ');
    tag(&mut out, t, record);
    out.push_str(": ");
    push_one_line(&mut out, &record.text);
    out.push('\n');
    out
}

/// The datagram glibc's syslog(3) sends to `/dev/log` (RFC 3164 without
/// the host name, which the local daemon adds).
pub(crate) fn rfc3164(t: &Tag, record: &Record) -> String {
    let mut out = String::with_capacity(record.text.len() + 48);
    let _ = write!(out, "<{}>", t.pri(record));
    traditional_stamp(&mut out);
    out.push(' ');
    tag(&mut out, t, record);
    out.push_str(": ");
    push_one_line(&mut out, &record.text);
    out
}

/// An RFC 5424 datagram: `<PRI>1 TIMESTAMP HOST APP PROCID MSGID SD MSG`.
/// The APP-NAME is the whole tag (`posthorn/smtpd`), which is how rsyslog's
/// `%programname%` and pflogsumm see Postfix's own lines.
pub(crate) fn rfc5424(t: &Tag, record: &Record) -> String {
    let mut out = String::with_capacity(record.text.len() + 80);
    let _ =
        write!(out, "<{}>1 {} {} {}/{} {} - - ", t.pri(record), rfc3339_now(), t.host, t.name, record.service, t.pid);
    push_one_line(&mut out, &record.text);
    out
}

/// One JSON object: time, host, service, pid, level, the event's typed
/// fields, then `message` (the line's text), newline included.
pub(crate) fn json(t: &Tag, record: &Record) -> String {
    let mut map = serde_json::Map::new();
    map.insert("time".into(), rfc3339_now().into());
    map.insert("host".into(), t.host.clone().into());
    map.insert("service".into(), record.service.clone().into());
    map.insert("pid".into(), t.pid.into());
    map.insert("level".into(), record.severity.name().into());
    for (name, value) in &record.fields {
        map.insert((*name).into(), json_value(value));
    }
    map.insert("message".into(), record.text.clone().into());
    let mut out = serde_json::Value::Object(map).to_string();
    out.push('\n');
    out
}

fn json_value(value: &Value) -> serde_json::Value {
    match value {
        Value::Str(s) => s.clone().into(),
        Value::U64(v) => (*v).into(),
        Value::I64(v) => (*v).into(),
        // A NaN or infinity has no JSON form; it becomes null.
        Value::F64(v) => serde_json::Number::from_f64(*v).map(serde_json::Value::Number).unwrap_or_default(),
        Value::Bool(v) => (*v).into(),
    }
}

/// A journald native-protocol datagram: `NAME=value` lines, or the binary
/// form (name, newline, little-endian length, value) for a value holding a
/// newline. Every structured field goes in under its upper-cased name, so
/// `journalctl QUEUE_ID=...` finds a message's lines.
pub(crate) fn journald(t: &Tag, record: &Record) -> Vec<u8> {
    let mut out = Vec::with_capacity(record.text.len() + 200);
    let mut field = |name: &str, value: &str| {
        if value.contains('\n') {
            out.extend_from_slice(name.as_bytes());
            out.push(b'\n');
            out.extend_from_slice(&(value.len() as u64).to_le_bytes());
            out.extend_from_slice(value.as_bytes());
        } else {
            out.extend_from_slice(name.as_bytes());
            out.push(b'=');
            out.extend_from_slice(value.as_bytes());
        }
        out.push(b'\n');
    };
    field("MESSAGE", &record.text);
    field("PRIORITY", &record.severity.code().to_string());
    field("SYSLOG_FACILITY", &t.facility.to_string());
    field("SYSLOG_IDENTIFIER", &format!("{}/{}", t.name, record.service));
    field("SYSLOG_PID", &t.pid.to_string());
    for (name, value) in &record.fields {
        if let Some(name) = journald_name(name) {
            field(&name, &value.to_string());
        }
    }
    out
}

/// A field name as journald accepts it: upper case, digits and `_`, not
/// starting with `_` (those are the journal's own trusted fields).
fn journald_name(name: &str) -> Option<String> {
    let upper: String =
        name.chars().map(|c| if c.is_ascii_alphanumeric() { c.to_ascii_uppercase() } else { '_' }).collect();
    let ok = upper.starts_with(|c: char| c.is_ascii_uppercase()) && upper.len() <= 64;
    ok.then_some(upper)
}

/// Appends `text` with any line break written as a space: one event, one
/// line, whatever a remote peer put in its reply.
fn push_one_line(out: &mut String, text: &str) {
    if text.contains(['\n', '\r']) {
        out.extend(text.chars().map(|c| if c == '\n' || c == '\r' { ' ' } else { c }));
    } else {
        out.push_str(text);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::logging::Severity;

    fn record(text: &str, severity: Severity) -> Record {
        Record {
            service: "smtpd".into(),
            severity,
            text: text.into(),
            fields: vec![("queue_id", Value::Str("0BJ8Z9KQ2XW".into())), ("delay", Value::F64(0.25))],
        }
    }

    fn tag() -> Tag {
        Tag { name: "posthorn".into(), host: "mx1".into(), pid: 42, facility: 2 }
    }

    #[test]
    fn the_file_line_is_what_syslog_writes() {
        let line = file_line(&tag(), &record("connect from unknown[127.0.0.1]", Severity::Info));
        let (stamp, rest) = line.split_at(15);
        assert_eq!(stamp.len(), 15, "Mmm dd HH:MM:SS");
        assert_eq!(rest, " mx1 posthorn/smtpd[42]: connect from unknown[127.0.0.1]\n");
    }

    #[test]
    fn datagrams_carry_facility_mail_and_the_severity() {
        let t = tag();
        let warn = rfc3164(&t, &record("warning: x", Severity::Warning));
        assert!(warn.starts_with("<20>"), "mail.warning is 2*8+4: {warn}");
        assert!(warn.ends_with(" posthorn/smtpd[42]: warning: x"), "{warn}");
        let info = rfc5424(&t, &record("a\nb", Severity::Info));
        assert!(info.starts_with("<22>1 "), "{info}");
        assert!(info.ends_with(" mx1 posthorn/smtpd 42 - - a b"), "{info}");
    }

    #[test]
    fn json_fields_keep_their_types() {
        let line = json(&tag(), &record("x", Severity::Info));
        let v: serde_json::Value = serde_json::from_str(&line).unwrap();
        assert_eq!(v["queue_id"], "0BJ8Z9KQ2XW");
        assert_eq!(v["delay"], 0.25);
        assert_eq!(v["service"], "smtpd");
        assert_eq!(v["pid"], 42);
        assert_eq!(v["message"], "x");
    }

    #[test]
    fn journald_fields() {
        let data = journald(&tag(), &record("two\nlines", Severity::Error));
        let text = String::from_utf8_lossy(&data);
        assert!(text.starts_with("MESSAGE\n"), "a value with a newline takes the binary form");
        assert!(text.contains("\nPRIORITY=3\n"));
        assert!(text.contains("\nSYSLOG_IDENTIFIER=posthorn/smtpd\n"));
        assert!(text.contains("\nQUEUE_ID=0BJ8Z9KQ2XW\n"));
        assert!(text.contains("\nDELAY=0.25\n"));
        assert_eq!(journald_name("_hidden"), None);
        assert_eq!(journald_name("sasl_username").as_deref(), Some("SASL_USERNAME"));
    }
}
