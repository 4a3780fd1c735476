//! The control socket: how commands reach the running daemon.
//!
//! `SPOOL/control.sock` is a Unix socket only the daemon's user (and root)
//! can open (mode 0600). A client sends one JSON request line, the daemon
//! answers one JSON line. Every request carries the protocol version so an
//! old command talking to a new daemon gets a clear refusal, not a guess.
//!
//! Each socket is bound inside a private directory and renamed into place
//! (`bind`), so it is never reachable with looser permissions than its
//! mode, whatever the umask. The accept loops back off when the process is
//! out of file descriptors instead of spinning (`accept`).
//!
//! `SPOOL/pickup.sock` is open to every local user: a connection wakes the
//! maildrop pickup, the way Postfix's public pickup fifo does, so `sendmail`
//! run by anyone gets prompt delivery without any power over the queue. A
//! client may name one drop on its first line and is told the queue id it
//! became (`ingress::maildrop::ask_pickup`; `sendmail -bs` needs it for its
//! reply); nothing else is read.
//!
//! `SPOOL/showq.sock`, also open to every local user, lists the queue
//! (`showq`).
//!
//! `SPOOL/flush.sock`, open to every local user too, carries no request: a
//! connection asks for a flush and is answered with one line, the number of
//! messages scheduled. Postfix lets everyone flush the queue
//! (`authorized_flush_users = static:anyone`); a flush changes no message,
//! and the daemon serves at most one a second (`FLUSH_EVERY`).

use serde::{Deserialize, Serialize};
use std::path::Path;
use std::time::Duration;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{UnixListener, UnixStream};
use tokio::sync::{mpsc, oneshot};

pub(crate) mod showq;

pub(crate) const VERSION: u32 = 1;

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(tag = "cmd", rename_all = "snake_case")]
pub(crate) enum Request {
    /// Liveness check.
    Ping,
    /// Retry every deferred message now.
    Flush,
    /// Scan the maildrop now.
    Pickup,
    /// An operator action on the named messages.
    Act { action: crate::queue::QueueAction, ids: Vec<String> },
    /// Read the configuration and tables again (same as SIGHUP).
    Reload,
    /// Shut down as on SIGTERM (`postfix stop`), once the answer is sent.
    Stop,
}

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub(crate) struct Response {
    pub(crate) ok: bool,
    #[serde(default)]
    pub(crate) message: String,
    #[serde(default)]
    pub(crate) count: Option<usize>,
    /// Per-message results of `Act`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub(crate) results: Vec<crate::queue::ActResult>,
    /// The daemon's process id, in the answers to `Ping` and `Stop`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) pid: Option<u32>,
}

#[derive(Serialize, Deserialize)]
struct Versioned<T> {
    v: u32,
    #[serde(flatten)]
    body: T,
}

/// Why a control request failed.
#[derive(Debug, thiserror::Error)]
pub(crate) enum ControlError {
    #[error("the posthorn daemon is not running (no answer on {0})")]
    NotRunning(String),
    #[error("the posthorn daemon did not answer in time")]
    Timeout,
    #[error("control protocol error: {0}")]
    Protocol(String),
    #[error("the posthorn daemon refused: {0}")]
    Refused(String),
}

/// A request on its way to the daemon's handler, with where to answer.
pub(crate) type PendingRequest = (Request, oneshot::Sender<Response>);

/// Sends one request to the daemon whose control socket is `path`.
pub(crate) async fn request(path: &Path, req: &Request) -> Result<Response, ControlError> {
    let not_running = || ControlError::NotRunning(path.display().to_string());
    let work = async {
        let stream = UnixStream::connect(path).await.map_err(|_| not_running())?;
        let (read, mut write) = stream.into_split();
        let mut line = serde_json::to_vec(&Versioned { v: VERSION, body: req.clone() })
            .map_err(|e| ControlError::Protocol(e.to_string()))?;
        line.push(b'\n');
        write.write_all(&line).await.map_err(|_| not_running())?;
        let mut answer = String::new();
        BufReader::new(read.take(256 << 20)).read_line(&mut answer).await.map_err(|_| not_running())?;
        serde_json::from_str::<Response>(&answer).map_err(|e| ControlError::Protocol(format!("{e}: {answer:?}")))
    };
    tokio::time::timeout(Duration::from_secs(30), work).await.map_err(|_| ControlError::Timeout)?
}

/// Blocking form for the command-line front ends.
pub(crate) fn request_blocking(path: &Path, req: &Request) -> Result<Response, ControlError> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| ControlError::Protocol(e.to_string()))?;
    rt.block_on(request(path, req))
}

/// The public flush socket's name in the spool.
pub(crate) const FLUSH_SOCKET: &str = "flush.sock";

/// How often the public flush socket really flushes; a connection sooner
/// gets the last count.
pub(crate) const FLUSH_EVERY: Duration = Duration::from_secs(1);

/// Asks the daemon of `spool` for a flush through its public socket (any
/// local user may); the number of messages it scheduled.
pub(crate) fn flush_public(spool: &Path) -> Result<usize, ControlError> {
    use std::io::Read;
    let path = spool.join(FLUSH_SOCKET);
    let mut stream = std::os::unix::net::UnixStream::connect(&path)
        .map_err(|_| ControlError::NotRunning(path.display().to_string()))?;
    let _ = stream.set_read_timeout(Some(Duration::from_secs(30)));
    let mut answer = String::new();
    stream.by_ref().take(64).read_to_string(&mut answer).map_err(|_| ControlError::Timeout)?;
    answer.trim().parse().map_err(|_| ControlError::Protocol(format!("flush answered {answer:?}")))
}

/// Pokes the daemon's pickup socket; false when no daemon listens.
pub(crate) fn wake_pickup(spool: &Path) -> bool {
    std::os::unix::net::UnixStream::connect(spool.join("pickup.sock")).is_ok()
}

/// Binds a Unix socket at `path` with `mode`, replacing a stale one.
///
/// The socket is made in a fresh directory of mode 0700 next to `path`,
/// given its mode there and only then renamed into place: bound at `path`
/// directly, it would exist with the umask's permissions until the chmod.
pub(crate) fn bind(path: &Path, mode: u32) -> std::io::Result<UnixListener> {
    use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
    if std::os::unix::net::UnixStream::connect(path).is_ok() {
        return Err(std::io::Error::new(
            std::io::ErrorKind::AddrInUse,
            format!("{} is in use: is another posthorn running on this spool?", path.display()),
        ));
    }
    let (dir, name) = match (path.parent(), path.file_name()) {
        (Some(dir), Some(name)) => (dir, name),
        _ => return Err(std::io::Error::new(std::io::ErrorKind::InvalidInput, "a socket path names no file")),
    };
    let private = dir.join(format!(".bind-{}-{}", std::process::id(), fastrand::u32(..)));
    if let Err(e) = std::fs::DirBuilder::new().mode(0o700).create(&private) {
        if !crate::spool::space::is_full(&e) {
            return Err(e);
        }
        // A full spool must not stop the start (the daemon delivers what it
        // has, which frees space): the directory needs a block a socket
        // does not, so the socket is bound in place and given its mode
        // after, as before the private directory.
        tracing::warn!("{}: binding in place: cannot make a private directory: {e}", path.display());
        let _ = std::fs::remove_file(path);
        let listener = UnixListener::bind(path)?;
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))?;
        return Ok(listener);
    }
    let inside = private.join(name);
    let placed = UnixListener::bind(&inside).and_then(|listener| {
        std::fs::set_permissions(&inside, std::fs::Permissions::from_mode(mode))?;
        std::fs::rename(&inside, path)?;
        Ok(listener)
    });
    let _ = std::fs::remove_file(&inside);
    let _ = std::fs::remove_dir(&private);
    placed
}

/// How long an accept loop waits when the process is out of descriptors:
/// the pending connection stays queued, so retrying at once would spin.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(100);

/// The next connection on `listener`; `None` after a failed accept, having
/// waited `ACCEPT_BACKOFF` when the failure was a resource shortage.
pub(crate) async fn accept(listener: &UnixListener) -> Option<UnixStream> {
    match listener.accept().await {
        Ok((stream, _)) => Some(stream),
        Err(e) => {
            if is_shortage(&e) {
                tracing::warn!("accept on a local socket: {e}; waiting {} ms", ACCEPT_BACKOFF.as_millis());
                tokio::time::sleep(ACCEPT_BACKOFF).await;
            }
            None
        }
    }
}

/// Out of file descriptors (per process or system-wide) or kernel memory.
fn is_shortage(e: &std::io::Error) -> bool {
    matches!(e.raw_os_error(), Some(libc::EMFILE | libc::ENFILE | libc::ENOBUFS | libc::ENOMEM))
}

/// Serves the control socket, handing each request to `handler`.
pub(crate) async fn serve(listener: UnixListener, handler: mpsc::Sender<PendingRequest>) {
    loop {
        let Some(stream) = accept(&listener).await else { continue };
        let handler = handler.clone();
        tokio::spawn(async move {
            let (read, mut write) = stream.into_split();
            let mut line = String::new();
            // Room for an action on a few hundred thousand ids.
            let mut reader = BufReader::new(read.take(64 << 20));
            let read = tokio::time::timeout(Duration::from_secs(10), reader.read_line(&mut line));
            if !matches!(read.await, Ok(Ok(n)) if n > 0) {
                return;
            }
            let response = match serde_json::from_str::<Versioned<Request>>(&line) {
                Ok(env) if env.v == VERSION => {
                    let (tx, rx) = oneshot::channel();
                    match handler.send((env.body, tx)).await {
                        Ok(()) => rx.await.unwrap_or_else(|_| failure("the daemon is shutting down")),
                        Err(_) => failure("the daemon is shutting down"),
                    }
                }
                Ok(env) => {
                    failure(&format!("control protocol version {} not supported (this daemon speaks {VERSION})", env.v))
                }
                Err(e) => failure(&format!("bad request: {e}")),
            };
            let mut out = serde_json::to_vec(&response).unwrap_or_default();
            out.push(b'\n');
            let _ = write.write_all(&out).await;
        });
    }
}

pub(crate) fn failure(message: &str) -> Response {
    Response { ok: false, message: message.into(), count: None, results: Vec::new(), pid: None }
}

pub(crate) fn success(message: impl Into<String>, count: Option<usize>) -> Response {
    Response { ok: true, message: message.into(), count, results: Vec::new(), pid: None }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn request_roundtrip_and_version_check() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("control.sock");
        let listener = bind(&path, 0o600).unwrap();
        let (tx, mut rx) = mpsc::channel::<PendingRequest>(4);
        tokio::spawn(serve(listener, tx));
        tokio::spawn(async move {
            while let Some((req, answer)) = rx.recv().await {
                let _ = answer.send(success(format!("{req:?}"), Some(7)));
            }
        });
        let r = request(&path, &Request::Flush).await.unwrap();
        assert_eq!(r, success("Flush", Some(7)));

        let mut raw = UnixStream::connect(&path).await.unwrap();
        raw.write_all(b"{\"v\":99,\"cmd\":\"ping\"}\n").await.unwrap();
        let mut answer = String::new();
        BufReader::new(raw).read_line(&mut answer).await.unwrap();
        assert!(answer.contains("version 99 not supported"), "{answer}");

        assert!(matches!(
            request(&dir.path().join("none.sock"), &Request::Ping).await,
            Err(ControlError::NotRunning(_))
        ));
    }

    #[tokio::test]
    async fn a_socket_appears_with_its_mode_and_replaces_a_stale_one() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("public.sock");
        drop(bind(&path, 0o666).unwrap());
        // Nobody listens on the old one now: replaced.
        let _listener = bind(&path, 0o600).unwrap();
        assert_eq!(std::fs::metadata(&path).unwrap().permissions().mode() & 0o777, 0o600);
        let left: Vec<_> = std::fs::read_dir(dir.path()).unwrap().map(|e| e.unwrap().file_name()).collect();
        assert_eq!(left, ["public.sock"], "the private directory is gone");
        let e = bind(&path, 0o600).unwrap_err();
        assert_eq!(e.kind(), std::io::ErrorKind::AddrInUse, "{e}");
    }
}
