//! The queue listing: `SPOOL/showq.sock`, open to every local user, as
//! Postfix's showq service is. A connection gets one JSON line per queued
//! message and is closed; it takes no input, so it can only ever read.
//!
//! The root and the daemon's own account get whole envelopes; anyone else
//! gets them redacted (see `Envelope::redacted`): the socket is how `mailq`
//! lists the queue of a running daemon for everyone, so that every listing
//! comes from one consistent reading of the spool (`Spool::collect`).
//!
//! A local user must not be able to exhaust the daemon's memory by opening
//! many listings and never reading them, so:
//! - requests that arrive while a reading of the spool is under way share
//!   it, and every connection writes from the one shared copy of the output;
//! - at most `MAX_LISTINGS` connections are served at once, and
//!   `MAX_PER_USER` per local user (by the socket's peer credentials);
//!   others get one error line and are closed;
//! - each connection has `DEADLINE` to take its whole listing.

use crate::spool::envelope::Envelope;
use crate::spool::{Spool, State};
use std::collections::HashMap;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::io::AsyncWriteExt;
use tokio::net::{UnixListener, UnixStream};
use tokio::sync::{OnceCell, Semaphore};

/// Listings served at once, over all users.
const MAX_LISTINGS: usize = 16;
/// Listings served at once to one local user.
const MAX_PER_USER: usize = 4;
/// Time a client has to take its whole listing.
const DEADLINE: Duration = Duration::from_secs(60);

/// One reading of the spool, rendered for both kinds of reader.
#[derive(Default)]
struct Listing {
    /// Whole envelopes: for root and the daemon's account.
    full: Vec<u8>,
    /// Redacted envelopes: for every other local user.
    public: Vec<u8>,
}

impl Listing {
    fn of(queue: &[(State, Envelope)]) -> Listing {
        let mut listing =
            Listing { full: Vec::with_capacity(queue.len() * 512), public: Vec::with_capacity(queue.len() * 256) };
        for (state, env) in queue {
            line(&mut listing.full, *state, env);
            line(&mut listing.public, *state, &env.redacted());
        }
        listing
    }
}

fn line(out: &mut Vec<u8>, state: State, env: &Envelope) {
    let line = serde_json::json!({ "state": state.dir_name(), "envelope": env });
    out.extend_from_slice(line.to_string().as_bytes());
    out.push(b'\n');
}

struct Service {
    spool: Spool,
    /// The reading under way, which new requests join.
    reading: Mutex<Option<Arc<OnceCell<Arc<Listing>>>>>,
    slots: Arc<Semaphore>,
    /// Listings being served, per peer uid.
    per_user: Mutex<HashMap<u32, usize>>,
}

/// Serves `SPOOL/showq.sock` until the daemon exits.
pub(crate) async fn serve(listener: UnixListener, spool: Spool) {
    let service = Arc::new(Service {
        spool,
        reading: Mutex::default(),
        slots: Arc::new(Semaphore::new(MAX_LISTINGS)),
        per_user: Mutex::default(),
    });
    loop {
        if let Some(stream) = super::accept(&listener).await {
            tokio::spawn(service.clone().answer(stream));
        }
    }
}

impl Service {
    async fn answer(self: Arc<Self>, mut stream: UnixStream) {
        let uid = stream.peer_cred().map_or(u32::MAX, |c| c.uid());
        let Ok(_slot) = self.slots.clone().try_acquire_owned() else {
            return refuse(stream, "too many queue listings in progress; try again").await;
        };
        let Some(_user) = UserSlot::take(&self, uid) else {
            return refuse(stream, "too many queue listings in progress for this user; try again").await;
        };
        let listing = self.current().await;
        // The daemon's own account (asked now: it changes when root is
        // given up) sees what it could read in the spool anyway.
        let whole = uid == 0 || uid == rustix::process::geteuid().as_raw();
        let out = if whole { &listing.full } else { &listing.public };
        let _ = tokio::time::timeout(DEADLINE, stream.write_all(out)).await;
    }

    /// The reading under way, or a new one.
    async fn current(&self) -> Arc<Listing> {
        let cell = {
            let mut reading = self.reading.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
            match &*reading {
                Some(cell) if !cell.initialized() => cell.clone(),
                _ => reading.insert(Arc::default()).clone(),
            }
        };
        let spool = self.spool.clone();
        let read = || async move {
            let listing = tokio::task::spawn_blocking(move || Listing::of(&spool.collect())).await;
            Arc::new(listing.unwrap_or_default())
        };
        cell.get_or_init(read).await.clone()
    }
}

/// One listing counted against its user; released when dropped.
struct UserSlot<'a> {
    service: &'a Service,
    uid: u32,
}

impl<'a> UserSlot<'a> {
    fn take(service: &'a Service, uid: u32) -> Option<UserSlot<'a>> {
        let mut users = service.per_user.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        let n = users.entry(uid).or_default();
        if *n >= MAX_PER_USER {
            return None;
        }
        *n += 1;
        Some(UserSlot { service, uid })
    }
}

impl Drop for UserSlot<'_> {
    fn drop(&mut self) {
        let mut users = self.service.per_user.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        if let Some(n) = users.get_mut(&self.uid) {
            *n -= 1;
            if *n == 0 {
                users.remove(&self.uid);
            }
        }
    }
}

async fn refuse(mut stream: UnixStream, why: &str) {
    let mut out = serde_json::json!({ "error": why }).to_string().into_bytes();
    out.push(b'\n');
    let _ = tokio::time::timeout(Duration::from_secs(1), stream.write_all(&out)).await;
}

/// Reads the listing of the daemon whose spool is `spool`.
pub(crate) fn read(spool: &Path) -> Result<Vec<(State, Envelope)>, super::ControlError> {
    use super::ControlError;
    use std::io::BufRead;
    let path = spool.join("showq.sock");
    let stream = std::os::unix::net::UnixStream::connect(&path)
        .map_err(|_| ControlError::NotRunning(path.display().to_string()))?;
    let _ = stream.set_read_timeout(Some(DEADLINE));
    let mut out = Vec::new();
    for line in std::io::BufReader::new(stream).lines() {
        let line = line.map_err(|e| ControlError::Protocol(e.to_string()))?;
        let v: serde_json::Value = serde_json::from_str(&line).map_err(|e| ControlError::Protocol(e.to_string()))?;
        if let Some(why) = v["error"].as_str() {
            return Err(ControlError::Refused(why.to_string()));
        }
        let state = v["state"].as_str().and_then(State::from_dir_name);
        let env = serde_json::from_value(v["envelope"].clone()).ok();
        if let (Some(state), Some(env)) = (state, env) {
            out.push((state, env));
        }
    }
    Ok(out)
}
