//! The maildrop: how `sendmail` hands a message to the daemon.
//!
//! Any local user may write a file here (the directory is mode 1733, like
//! Postfix's; 3733 with the daemon's group once it runs as its own user);
//! only the daemon reads them. A drop is one file: a JSON line
//! with the envelope as `sendmail` was told it, then the message as given.
//! The writer syncs the file and the directory before `sendmail` exits 0, so
//! a message handed to `sendmail` survives a crash whether or not the
//! daemon runs. The daemon treats every drop as untrusted input: it bounds
//! the size, parses defensively, takes the submitting user from the file's
//! owner rather than from its content, and quarantines what it cannot read.

use super::{Ingress, IngressError};
use serde::{Deserialize, Serialize};
use std::io::{self, Read, Write};
use std::os::unix::fs::{MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

/// The envelope part of a drop.
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq)]
pub(crate) struct Drop {
    /// `-f`; `None` means "the submitting user".
    pub(crate) sender: Option<String>,
    pub(crate) recipients: Vec<String>,
    /// `-t`: take recipients from To/Cc/Bcc too.
    #[serde(default)]
    pub(crate) extract_recipients: bool,
    /// `-F`: the sender's full name for a generated `From:`.
    #[serde(default)]
    pub(crate) full_name: Option<String>,
}

/// A fresh drop name: time and randomness, alphanumeric.
pub(crate) fn new_name() -> String {
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_micros()).unwrap_or(0);
    format!("{now:x}{:08x}", fastrand::u32(..))
}

/// Writes a drop durably and returns its name.
pub(crate) fn write(dir: &Path, drop: &Drop, message: &[u8]) -> io::Result<String> {
    let name = new_name();
    write_named(dir, &name, drop, message)?;
    Ok(name)
}

/// Writes a drop under `name`: a dot-file first (pickup skips those), synced,
/// then renamed into place and the directory synced.
pub(crate) fn write_named(dir: &Path, name: &str, drop: &Drop, message: &[u8]) -> io::Result<()> {
    let tmp = dir.join(format!(".{name}"));
    let mut file = std::fs::OpenOptions::new().write(true).create_new(true).mode(0o600).open(&tmp)?;
    // Readable by the directory's group, whatever the umask: a daemon that
    // dropped root reads drops through its group (the directory is setgid,
    // see `daemon::privilege`); no other user can read them.
    file.set_permissions(std::fs::Permissions::from_mode(0o640))?;
    let mut head = serde_json::to_vec(drop).map_err(io::Error::other)?;
    head.push(b'\n');
    let result = file.write_all(&head).and_then(|_| file.write_all(message)).and_then(|_| file.sync_all());
    if let Err(e) = result.and_then(|_| std::fs::rename(&tmp, dir.join(name))) {
        let _ = std::fs::remove_file(&tmp);
        return Err(e);
    }
    match crate::spool::commit::sync_dir(dir) {
        // An ordinary user may write into the maildrop but not open it
        // (mode 1733): the rename is made durable by syncing the whole
        // filesystem through the file instead.
        Err(e) if e.kind() == io::ErrorKind::PermissionDenied => rustix::fs::syncfs(&file).map_err(io::Error::from),
        other => other,
    }
}

/// Reads a drop, refusing anything larger than `max` bytes of message.
pub(crate) fn read(path: &Path, max: u64) -> Result<(Drop, Vec<u8>, u32), String> {
    let file = std::fs::File::open(path).map_err(|e| format!("cannot open: {e}"))?;
    let uid = file.metadata().map_err(|e| e.to_string())?.uid();
    let mut data = Vec::new();
    // One line of envelope (bounded) plus the message.
    file.take(max + 1024 * 1024).read_to_end(&mut data).map_err(|e| format!("cannot read: {e}"))?;
    let nl = data.iter().position(|&b| b == b'\n').ok_or("no envelope line")?;
    let drop: Drop = serde_json::from_slice(&data[..nl]).map_err(|e| format!("bad envelope line: {e}"))?;
    let message = data.split_off(nl + 1);
    if message.len() as u64 > max {
        return Err(format!("message larger than the limit of {max} bytes"));
    }
    if drop.recipients.len() > 10_000 {
        return Err("too many recipients".into());
    }
    Ok((drop, message, uid))
}

/// Drops ready for pickup, oldest name first.
pub(crate) fn pending(dir: &Path) -> io::Result<Vec<PathBuf>> {
    let mut out: Vec<PathBuf> = std::fs::read_dir(dir)?
        .filter_map(|e| e.ok())
        .filter(|e| e.file_name().to_str().is_some_and(|n| !n.starts_with('.')))
        .map(|e| e.path())
        .collect();
    out.sort();
    Ok(out)
}

/// Takes every pending drop into the queue through `ingress`. A drop is
/// removed only after its message is committed; one that cannot be read is
/// moved to `quarantine` with a log line, never silently deleted.
pub(crate) async fn pickup(ingress: &Ingress, dir: &Path, quarantine: &Path) -> usize {
    let files = match pending(dir) {
        Ok(f) => f,
        Err(e) => {
            tracing::error!("maildrop {}: cannot list: {e}", dir.display());
            return 0;
        }
    };
    let mut taken = 0;
    for path in files {
        let max = ingress.max_size();
        let p = path.clone();
        let read = tokio::task::spawn_blocking(move || read(&p, max)).await.unwrap_or_else(|e| Err(e.to_string()));
        let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("?").to_string();
        let (drop, message, uid) = match read {
            Ok(r) => r,
            Err(reason) => {
                tracing::error!("maildrop {name}: refused: {reason}; moved to {}", quarantine.display());
                let _ = std::fs::rename(&path, quarantine.join(format!("maildrop-{name}")));
                continue;
            }
        };
        let user = crate::account::user_name(uid);
        match super::local::submit(ingress, drop, message, &user).await {
            Ok(id) => {
                tracing::info!("{id}: maildrop={name}, uid={uid}");
                if let Err(e) = std::fs::remove_file(&path) {
                    tracing::error!("maildrop {name}: cannot remove after queueing as {id}: {e}");
                }
                taken += 1;
            }
            Err(IngressError::Io(e)) => {
                // The spool is in trouble; leave the drop for the next scan.
                tracing::error!("maildrop {name}: cannot queue now: {e}");
                break;
            }
            Err(e) => {
                tracing::error!("maildrop {name}: refused: {e}; moved to {}", quarantine.display());
                let _ = std::fs::rename(&path, quarantine.join(format!("maildrop-{name}")));
            }
        }
    }
    taken
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn write_then_read() {
        let dir = tempfile::tempdir().unwrap();
        let drop = Drop { sender: Some("a@b".into()), recipients: vec!["c@d".into()], ..Drop::default() };
        let name = write(dir.path(), &drop, b"Subject: x\n\nbody\n").unwrap();
        let files = pending(dir.path()).unwrap();
        assert_eq!(files, vec![dir.path().join(&name)]);
        let (read_drop, message, _uid) = read(&files[0], 1000).unwrap();
        assert_eq!(read_drop, drop);
        assert_eq!(message, b"Subject: x\n\nbody\n");
        assert!(read(&files[0], 5).unwrap_err().contains("larger than the limit"));
    }

    #[test]
    fn garbage_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        for (i, content) in [&b"no newline at all"[..], b"{not json}\nbody", b"[1,2]\nbody"].iter().enumerate() {
            let p = dir.path().join(format!("f{i}"));
            std::fs::write(&p, content).unwrap();
            assert!(read(&p, 1000).is_err());
        }
    }
}
