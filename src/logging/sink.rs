//! Where lines go: stderr, a file, syslog's `/dev/log` or journald's
//! socket. One write or send per line, under a lock, so lines never
//! interleave. A socket that stops answering (the syslog daemon restarted)
//! is connected again once; a line that still cannot be sent goes to
//! stderr rather than nowhere.

use super::line::{self, Format, Tag};
use super::{Record, Settings};
use std::fs::File;
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::os::unix::net::UnixDatagram;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::Duration;

/// The longest datagram sent; rsyslog and journald take far more, but a
/// line this long is a runaway reply text, not information.
const MAX_DATAGRAM: usize = 16 * 1024;
/// How long a send may wait for a busy syslog daemon before the line goes
/// to stderr instead.
const SEND_TIMEOUT: Duration = Duration::from_secs(1);

/// `[log] to`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum Destination {
    Stderr,
    Syslog,
    Journald,
    File(PathBuf),
}

impl std::str::FromStr for Destination {
    type Err = String;

    fn from_str(s: &str) -> Result<Destination, String> {
        match s {
            "stderr" => Ok(Destination::Stderr),
            "syslog" => Ok(Destination::Syslog),
            "journald" => Ok(Destination::Journald),
            _ => match s.strip_prefix("file:") {
                Some(path) if Path::new(path).is_absolute() => Ok(Destination::File(path.into())),
                Some(_) => Err(format!("`{s}`: the file must be an absolute path")),
                None => Err(format!("`{s}` is not stderr, syslog, journald or file:PATH")),
            },
        }
    }
}

enum Out {
    Stderr,
    File { file: File, path: PathBuf },
    Syslog { socket: UnixDatagram, path: PathBuf, rfc5424: bool },
    Journald { socket: UnixDatagram, path: PathBuf },
}

pub(super) struct Sink {
    tag: Tag,
    format: Format,
    out: Mutex<Out>,
}

impl Sink {
    /// Opens `to`. When it cannot be used, the sink is stderr and the
    /// second value says why, to be logged once logging is up.
    pub(super) fn open(settings: &Settings, to: &Destination) -> (Sink, Option<String>) {
        let tag = Tag::new(&settings.syslog_name, settings.facility.0);
        let opened = match to {
            Destination::Stderr => Ok(Out::Stderr),
            Destination::File(path) => open_file(path).map(|file| Out::File { file, path: path.clone() }),
            Destination::Syslog => connect(&settings.syslog_socket).map(|socket| Out::Syslog {
                socket,
                path: settings.syslog_socket.clone(),
                rfc5424: settings.rfc5424,
            }),
            Destination::Journald => connect(&settings.journald_socket)
                .map(|socket| Out::Journald { socket, path: settings.journald_socket.clone() }),
        };
        let (out, fallback) = match opened {
            Ok(out) => (out, None),
            Err(e) => (Out::Stderr, Some(format!("cannot log to {}: {e}; logging to stderr", describe(settings, to)))),
        };
        (Sink { tag, format: settings.format, out: Mutex::new(out) }, fallback)
    }

    pub(super) fn format(&self) -> Format {
        self.format
    }

    pub(super) fn write(&self, record: &Record) {
        let mut out = self.out.lock().unwrap_or_else(|e| e.into_inner());
        match &mut *out {
            Out::Stderr => write_stderr(self.stream_line(record).as_bytes()),
            Out::File { file, .. } => {
                if file.write_all(self.stream_line(record).as_bytes()).is_err() {
                    write_stderr(line::file_line(&self.tag, record).as_bytes());
                }
            }
            Out::Syslog { socket, path, rfc5424 } => {
                let text = if *rfc5424 { line::rfc5424(&self.tag, record) } else { line::rfc3164(&self.tag, record) };
                let bytes = &text.as_bytes()[..text.len().min(MAX_DATAGRAM)];
                if !send(socket, path, bytes) {
                    write_stderr(line::file_line(&self.tag, record).as_bytes());
                }
            }
            Out::Journald { socket, path } => {
                let data = line::journald(&self.tag, record);
                if !send(socket, path, &data) {
                    write_stderr(line::file_line(&self.tag, record).as_bytes());
                }
            }
        }
    }

    /// A line on the stderr or file stream, in the configured format.
    fn stream_line(&self, record: &Record) -> String {
        match self.format {
            Format::Text => line::file_line(&self.tag, record),
            Format::Json => line::json(&self.tag, record),
        }
    }

    /// Opens a `file:` log again under its name: logrotate has renamed the
    /// old one. Lines written meanwhile went to the old file, which
    /// logrotate keeps; none is lost. On failure the old file stays in use.
    pub(super) fn reopen(&self) {
        let mut out = self.out.lock().unwrap_or_else(|e| e.into_inner());
        if let Out::File { file, path } = &mut *out {
            match open_file(path) {
                Ok(new) => *file = new,
                Err(e) => {
                    let text = format!(
                        "warning: cannot reopen the log {}: {e}; still writing to the old file\n",
                        path.display()
                    );
                    let _ = file.write_all(text.as_bytes());
                }
            }
        }
    }
}

fn describe(settings: &Settings, to: &Destination) -> String {
    match to {
        Destination::Stderr => "stderr".into(),
        Destination::File(p) => p.display().to_string(),
        Destination::Syslog => format!("syslog at {}", settings.syslog_socket.display()),
        Destination::Journald => format!("journald at {}", settings.journald_socket.display()),
    }
}

/// Opens a log file for appending, created 0640 (the group may read it,
/// as `adm` reads `mail.log` on Debian).
fn open_file(path: &Path) -> std::io::Result<File> {
    std::fs::OpenOptions::new().append(true).create(true).mode(0o640).open(path)
}

fn connect(path: &Path) -> std::io::Result<UnixDatagram> {
    let socket = UnixDatagram::unbound()?;
    socket.connect(path)?;
    socket.set_write_timeout(Some(SEND_TIMEOUT))?;
    Ok(socket)
}

/// Sends one datagram; when the socket lost its peer (the daemon behind
/// it restarted), connects again once and retries.
fn send(socket: &mut UnixDatagram, path: &Path, data: &[u8]) -> bool {
    if socket.send(data).is_ok() {
        return true;
    }
    match connect(path) {
        Ok(fresh) => {
            *socket = fresh;
            socket.send(data).is_ok()
        }
        Err(_) => false,
    }
}

/// One write of `bytes` to stderr; a failure has nowhere left to go.
pub(super) fn write_stderr(bytes: &[u8]) {
    let _ = std::io::stderr().lock().write_all(bytes);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn destinations_parse() {
        assert_eq!("syslog".parse::<Destination>(), Ok(Destination::Syslog));
        assert_eq!("file:/var/log/posthorn.log".parse(), Ok(Destination::File("/var/log/posthorn.log".into())));
        assert!("file:relative.log".parse::<Destination>().is_err());
        assert!("mail.log".parse::<Destination>().is_err());
    }

    #[test]
    fn a_syslog_datagram_reaches_the_socket() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("log");
        let server = UnixDatagram::bind(&path).unwrap();
        let settings = Settings { syslog_socket: path.clone(), ..Settings::default() };
        let (sink, fallback) = Sink::open(&settings, &Destination::Syslog);
        assert_eq!(fallback, None);
        let record = Record {
            service: "qmgr".into(),
            severity: super::super::Severity::Info,
            text: "0BJ8Z9KQ2XW: removed".into(),
            fields: vec![],
        };
        sink.write(&record);
        let mut buf = [0u8; 512];
        let n = server.recv(&mut buf).unwrap();
        let got = String::from_utf8_lossy(&buf[..n]);
        assert!(got.starts_with("<22>"), "{got}");
        assert!(got.ends_with("]: 0BJ8Z9KQ2XW: removed"), "{got}");
        assert!(got.contains(" posthorn/qmgr["), "{got}");
    }

    #[test]
    fn a_missing_syslog_socket_falls_back_to_stderr() {
        let settings = Settings { syslog_socket: "/nonexistent/log".into(), ..Settings::default() };
        let (_sink, fallback) = Sink::open(&settings, &Destination::Syslog);
        assert!(fallback.unwrap().contains("/nonexistent/log"));
    }
}
