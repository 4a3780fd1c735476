//! A user's `.forward` file, as Postfix's local(8) treats it: found
//! through `local.forward_path`, read by a process that already is the
//! user (the local delivery agent's child, or the daemon for its own
//! account), and honoured only when it is a regular file owned by the
//! user (or root) that neither its group nor others may write.
//!
//! Its items share the grammar of an alias's value (`message::alias_items`):
//! addresses (local or remote; a bare name gets the recipient's domain),
//! `\user` or the user's own address (the mailbox, not forwarded again),
//! `|command` and `/file` (run and written here, as the user, when
//! `local.allow_mail_to_commands`/`allow_mail_to_files` name `forward`;
//! never as root; the commands of one file share `command_time_limit`), and `:include:/path` (addresses only, read as the
//! user). What this returns to forward is the queue's to reinject: a new
//! message, never one delivered from here. A message that already shows
//! `Delivered-To:` with this recipient has been here: it bounces with
//! 5.4.6 instead of going round again.

use super::local::{Failure, Request};
use crate::account::Entry;
use crate::message::alias_items::{Target, parse_target, split_list};
use std::io::Read;
use std::os::unix::fs::MetadataExt;
use std::path::PathBuf;

/// The largest `.forward` or `:include:` file read; a larger one is ignored.
pub(crate) const MAX_BYTES: u64 = 64 * 1024;
/// How deep `:include:` files may nest.
const INCLUDE_DEPTH: usize = 5;

/// One item of a `.forward` file, as delivered.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Item {
    /// The user's own mailbox (`\user`, or the user's own address).
    Mailbox,
    /// An address to forward to, qualified.
    Address(String),
    Command(String),
    File(String),
    /// `:include:/path`, replaced by what that file lists once read.
    Include(String),
}

/// What the `.forward` of a recipient says.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum Found {
    /// No `.forward` file on `forward_path`: the mailbox.
    Absent,
    /// A file that is not honoured, and why (for the log): the mailbox.
    Ignored(String),
    /// The file honoured and its items.
    Honoured { path: PathBuf, items: Vec<Item> },
}

/// The paths `forward_path` names for this recipient, in order. An entry
/// whose expansion would put a `/` or `..` from the address into the path
/// is skipped.
pub(crate) fn paths(forward_path: &[String], entry: &Entry, recipient: &str, delimiter: &str) -> Vec<PathBuf> {
    let (local, domain) = recipient.rsplit_once('@').unwrap_or((recipient, ""));
    let (_, extension) = crate::config::split_extension(delimiter, local);
    let home = entry.home.to_string_lossy();
    let lower = local.to_lowercase();
    let values = [
        ("home", home.as_ref()),
        ("user", entry.account.name.as_str()),
        ("local", lower.as_str()),
        ("extension", extension.unwrap_or("")),
        ("domain", domain),
        ("recipient", recipient),
    ];
    forward_path
        .iter()
        .filter_map(|template| {
            let mut out = String::new();
            let mut rest = template.as_str();
            while let Some(at) = rest.find('$') {
                out.push_str(&rest[..at]);
                rest = &rest[at + 1..];
                let name;
                if let Some(braced) = rest.strip_prefix('{') {
                    let end = braced.find('}')?;
                    name = &braced[..end];
                    rest = &braced[end + 1..];
                } else {
                    let end = rest.find(|c: char| !c.is_ascii_alphanumeric() && c != '_').unwrap_or(rest.len());
                    name = &rest[..end];
                    rest = &rest[end..];
                }
                let value = values.iter().find(|(n, _)| *n == name)?.1;
                if name != "home" && (value.contains('/') || value.contains("..")) {
                    return None;
                }
                out.push_str(value);
            }
            out.push_str(rest);
            Some(PathBuf::from(out))
        })
        .collect()
}

/// Reads the first `.forward` that exists on `paths`, with this process's
/// rights, and checks it belongs to `uid`. A file that cannot be read for
/// a passing reason (an I/O error) defers; one that is not acceptable is
/// ignored.
pub(crate) fn find(paths: &[PathBuf], uid: u32, user: &str, recipient: &str) -> Result<Found, Failure> {
    for path in paths {
        let file = match std::fs::File::open(path) {
            Ok(f) => f,
            Err(e) if matches!(e.kind(), std::io::ErrorKind::NotFound | std::io::ErrorKind::NotADirectory) => {
                continue;
            }
            Err(e) if e.kind() == std::io::ErrorKind::PermissionDenied => {
                return Ok(Found::Ignored(format!("{} ignored: cannot be read: {e}", path.display())));
            }
            Err(e) => return Err(Failure::transient(format!("{}: {e}", path.display()))),
        };
        let text = match checked_text(&file, uid) {
            Ok(text) => text,
            Err(why) => return Ok(Found::Ignored(format!("{} ignored: {why}", path.display()))),
        };
        let items = parse(&text, user, recipient).and_then(|items| with_includes(items, user, recipient, 0));
        return match items {
            Ok(items) if items.is_empty() => {
                Ok(Found::Ignored(format!("{} ignored: it lists nothing", path.display())))
            }
            Ok(items) => Ok(Found::Honoured { path: path.clone(), items }),
            Err(why) => Err(Failure { permanent: true, status: (5, 3, 5), text: format!("{}: {why}", path.display()) }),
        };
    }
    Ok(Found::Absent)
}

/// The text of an open `.forward`: a regular file, owned by `uid` or root,
/// not group- or world-writable, at most [`MAX_BYTES`].
fn checked_text(file: &std::fs::File, uid: u32) -> Result<String, String> {
    let meta = file.metadata().map_err(|e| e.to_string())?;
    if !meta.is_file() {
        return Err("not a regular file".into());
    }
    if meta.uid() != uid && meta.uid() != 0 {
        return Err(format!("owned by uid {}, neither the user's (uid {uid}) nor root's", meta.uid()));
    }
    if meta.mode() & 0o022 != 0 {
        let who = if meta.mode() & 0o002 != 0 { "world" } else { "group" };
        return Err(format!("{who}-writable (mode {:o})", meta.mode() & 0o7777));
    }
    read_bounded(file)
}

fn read_bounded(file: &std::fs::File) -> Result<String, String> {
    let mut text = String::new();
    file.take(MAX_BYTES + 1).read_to_string(&mut text).map_err(|e| e.to_string())?;
    if text.len() as u64 > MAX_BYTES {
        return Err(format!("larger than {MAX_BYTES} bytes"));
    }
    Ok(text)
}

/// The items of a `.forward` or of an `:include:` file it names, without
/// I/O: lines of comma-separated items, `#` lines skipped, duplicates
/// dropped. Bare names get `recipient`'s domain; `user`'s own name or
/// address is the mailbox. Each item comes with its line number.
pub fn parse(text: &str, user: &str, recipient: &str) -> Result<Vec<(usize, Item)>, String> {
    let domain = recipient.rsplit_once('@').map_or("", |(_, d)| d);
    let mut out: Vec<(usize, Item)> = Vec::new();
    for (i, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        for raw in split_list(line) {
            let at = |why: String| format!("line {}: {why}", i + 1);
            let item = match parse_target(&raw).map_err(at)? {
                Target::Mailbox(name) if name.eq_ignore_ascii_case(user) => Item::Mailbox,
                Target::Mailbox(name) => return Err(at(format!("\\{name}: only \\{user} names this user's mailbox"))),
                Target::Address(a) => {
                    let qualified = if a.contains('@') { a } else { format!("{a}@{domain}") };
                    let own = qualified.eq_ignore_ascii_case(recipient)
                        || qualified
                            .rsplit_once('@')
                            .is_some_and(|(l, d)| l.eq_ignore_ascii_case(user) && d.eq_ignore_ascii_case(domain));
                    if own { Item::Mailbox } else { Item::Address(qualified) }
                }
                Target::Command(c) => Item::Command(c),
                Target::File(f) => Item::File(f),
                Target::Include(path) => Item::Include(path),
            };
            if !out.iter().any(|(_, seen)| *seen == item) {
                out.push((i + 1, item));
            }
        }
    }
    Ok(out)
}

/// `items` with the `:include:` files they name read (as this process's
/// account) in their place, at most [`INCLUDE_DEPTH`] deep. An include
/// file lists addresses only: a command or file in one is an error.
fn with_includes(items: Vec<(usize, Item)>, user: &str, recipient: &str, depth: usize) -> Result<Vec<Item>, String> {
    let mut out = Vec::new();
    for (line, item) in items {
        let at = |why: String| format!("line {line}: {why}");
        let found = match item {
            Item::Include(path) if depth < INCLUDE_DEPTH => {
                let text = std::fs::File::open(&path)
                    .map_err(|e| e.to_string())
                    .and_then(|f| match f.metadata().map_err(|e| e.to_string())?.is_file() {
                        true => read_bounded(&f),
                        false => Err("not a regular file".into()),
                    })
                    .map_err(|why| at(format!(":include:{path}: {why}")))?;
                let inner = parse(&text, user, recipient).map_err(|why| at(format!(":include:{path} {why}")))?;
                if let Some((l, bad)) = inner.iter().find(|(_, i)| matches!(i, Item::Command(_) | Item::File(_))) {
                    return Err(at(format!(
                        ":include:{path} line {l}: {bad:?}: commands and files are not allowed from an :include: file"
                    )));
                }
                with_includes(inner, user, recipient, depth + 1).map_err(|why| at(format!(":include:{path} {why}")))?
            }
            Item::Include(path) => {
                return Err(at(format!(":include:{path}: include files nested more than {INCLUDE_DEPTH} deep")));
            }
            item => vec![item],
        };
        for item in found {
            if !out.contains(&item) {
                out.push(item);
            }
        }
    }
    Ok(out)
}

/// Whether `message`'s header already shows `Delivered-To: recipient`:
/// it came round through a forward before.
pub(crate) fn seen_before(message: &[u8], recipient: &str) -> bool {
    let head = crate::message::header::block(message);
    crate::message::header::fields(head).any(|f| {
        f.is("Delivered-To")
            && String::from_utf8_lossy(&crate::message::header::unfold(f.value()))
                .trim()
                .eq_ignore_ascii_case(recipient)
    })
}

/// The outcome of a `.forward` for one delivery.
#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub(crate) struct Applied {
    /// Whether the user's mailbox gets a copy.
    pub(crate) mailbox: bool,
    /// Where it went here: commands run, files written.
    pub(crate) places: Vec<String>,
    /// Addresses the queue sends a new copy to.
    pub(crate) forward_to: Vec<String>,
    /// For the daemon's log: a `.forward` not honoured, and why.
    pub(crate) notes: Vec<String>,
}

/// Finds and carries out `entry`'s `.forward` for `request`, as this
/// process's account (which is `entry`'s): commands and files here,
/// addresses returned. Without an honoured file: the mailbox.
pub(crate) fn apply(
    settings: &super::local::Settings,
    entry: &Entry,
    request: &Request,
    message: &[u8],
) -> Result<Applied, Failure> {
    let paths = paths(&settings.forward_path, entry, &request.recipient, &settings.delimiter);
    let (path, items) = match find(&paths, entry.account.uid, &entry.account.name, &request.recipient)? {
        Found::Absent => return Ok(Applied { mailbox: true, ..Applied::default() }),
        Found::Ignored(why) => return Ok(Applied { mailbox: true, notes: vec![why], ..Applied::default() }),
        Found::Honoured { path, items } => (path, items),
    };
    if items != [Item::Mailbox] && seen_before(message, &request.recipient) {
        return Err(Failure {
            permanent: true,
            status: (5, 4, 6),
            text: format!("mail forwarding loop for {}", request.recipient),
        });
    }
    let refused = |what: &str, key: &str| Failure {
        permanent: true,
        status: (5, 7, 1),
        text: format!("{}: mail to {what} is not allowed ({key})", path.display()),
    };
    let mut applied = Applied::default();
    let limit = std::time::Duration::from_secs(settings.command_time_limit_secs.max(1));
    let started = std::time::Instant::now();
    for item in items {
        match item {
            Item::Mailbox => applied.mailbox = true,
            Item::Address(a) => applied.forward_to.push(a),
            Item::Command(c) => {
                if !settings.forward_commands {
                    return Err(refused(&format!("command |{c}"), "local.allow_mail_to_commands has no forward"));
                }
                if entry.account.uid == 0 {
                    return Err(refused(&format!("command |{c}"), "never as root"));
                }
                // The commands of one .forward share the time limit.
                let Some(limit) = limit.checked_sub(started.elapsed()).filter(|left| !left.is_zero()) else {
                    let why = "its commands ran longer than local.command_time_limit together";
                    return Err(Failure::transient(format!("{}: {why}", path.display())));
                };
                let done = super::local_command::run(entry, request, &c, limit, &settings.delimiter, message)?;
                applied.places.push(done);
            }
            Item::Include(_) => unreachable!("find reads the include files"),
            Item::File(f) => {
                if !settings.forward_files {
                    return Err(refused(&format!("file {f}"), "local.allow_mail_to_files has no forward"));
                }
                if entry.account.uid == 0 {
                    return Err(refused(&format!("file {f}"), "never as root"));
                }
                applied.places.push(super::local_command::append_file(entry, request, &f, message)?);
            }
        }
    }
    Ok(applied)
}

/// For `route explain`: what `entry`'s `.forward` says, read with this
/// process's rights (root's, for display only).
pub(crate) fn describe(forward_path: &[String], entry: &Entry, recipient: &str, delimiter: &str) -> Option<String> {
    let paths = paths(forward_path, entry, recipient, delimiter);
    let user = &entry.account.name;
    match find(&paths, entry.account.uid, user, recipient) {
        Ok(Found::Absent) => None,
        Ok(Found::Ignored(why)) => Some(format!("{why}; mail goes to the mailbox")),
        Ok(Found::Honoured { path, items }) => {
            let shown: Vec<String> = items
                .iter()
                .map(|i| match i {
                    Item::Mailbox => format!("\\{user} (the mailbox)"),
                    Item::Address(a) => format!("forward to {a}"),
                    Item::Command(c) => format!("command |{c} as {user}"),
                    Item::File(f) => format!("file {f} as {user}"),
                    Item::Include(path) => format!(":include:{path}"),
                })
                .collect();
            Some(format!("{} (.forward, read as {user} at delivery): {}", path.display(), shown.join(", ")))
        }
        Err(f) => Some(format!("{}: {}", if f.permanent { "bounced" } else { "deferred" }, f.text)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry() -> Entry {
        Entry {
            account: crate::account::Account { name: "alice".into(), uid: 1000, gid: 1000 },
            home: "/home/alice".into(),
            shell: "/bin/sh".into(),
        }
    }

    #[test]
    fn forward_path_expansions() {
        let fp = |t: &[&str], rcpt: &str| {
            let t: Vec<String> = t.iter().map(|s| s.to_string()).collect();
            paths(&t, &entry(), rcpt, "+").into_iter().map(|p| p.display().to_string()).collect::<Vec<_>>()
        };
        assert_eq!(fp(&["$home/.forward"], "alice@example.org"), ["/home/alice/.forward"]);
        assert_eq!(
            fp(&["$home/.forward+${extension}", "/var/fw/$user.$domain"], "Alice+lists@example.org"),
            ["/home/alice/.forward+lists", "/var/fw/alice.example.org"]
        );
        assert!(fp(&["$home/.forward+$extension"], "alice+../x@example.org").is_empty(), "no path from the address");
        assert!(fp(&["$home/.forward$nothing"], "alice@x").is_empty());
    }

    #[test]
    fn items_table() {
        let p = |text: &str| {
            parse(text, "alice", "alice@example.org").map(|v| v.into_iter().map(|(_, i)| i).collect::<Vec<_>>())
        };
        assert_eq!(
            p("# mine\n\\alice, bob\n\"|/usr/bin/vacation alice\"\n/home/alice/archive, carol@example.net\n"),
            Ok(vec![
                Item::Mailbox,
                Item::Address("bob@example.org".into()),
                Item::Command("/usr/bin/vacation alice".into()),
                Item::File("/home/alice/archive".into()),
                Item::Address("carol@example.net".into()),
            ])
        );
        assert_eq!(p("alice\n"), Ok(vec![Item::Mailbox]));
        assert_eq!(p("ALICE@example.org, alice@example.org\n"), Ok(vec![Item::Mailbox]));
        assert_eq!(p("\"a b\"@example.net\n"), Ok(vec![Item::Address("\"a b\"@example.net".into())]));
        assert!(p("\\bob\n").unwrap_err().contains("only \\alice"));
        assert!(p("bob\n|\n").unwrap_err().starts_with("line 2: "));
        assert_eq!(parse("a\n:include:/etc/l\n", "alice", "alice@d").unwrap()[1], (2, Item::Include("/etc/l".into())));
    }

    #[test]
    fn include_files_list_addresses_only() {
        let dir = tempfile::tempdir().unwrap();
        let list = dir.path().join("list");
        std::fs::write(&list, "bob, carol@example.net\n").unwrap();
        let bad = dir.path().join("bad");
        std::fs::write(&bad, "bob\n|/bin/x\n").unwrap();
        let items = |text: String| {
            parse(&text, "alice", "alice@d")
                .map_err(|e| e.to_string())
                .and_then(|i| with_includes(i, "alice", "alice@d", 0))
        };
        assert_eq!(
            items(format!("\\alice, :include:{}\n", list.display())),
            Ok(vec![Item::Mailbox, Item::Address("bob@d".into()), Item::Address("carol@example.net".into())])
        );
        let e = items(format!("bob\n:include:{}\n", bad.display())).unwrap_err();
        assert!(
            e.starts_with("line 2: :include:") && e.contains("line 2: Command") && e.contains("not allowed"),
            "{e}"
        );
        let e = items(format!(":include:{}\n", dir.path().join("none").display())).unwrap_err();
        assert!(e.contains("No such file"), "{e}");
    }

    #[test]
    fn files_that_are_ignored() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("fw");
        std::fs::write(&path, "bob@example.net\n").unwrap();
        let me = rustix::process::geteuid().as_raw();
        let found = |uid| find(std::slice::from_ref(&path), uid, "alice", "alice@example.org").unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
        assert!(matches!(found(me), Found::Honoured { .. }));
        if me != 0 {
            assert!(matches!(found(me + 1), Found::Ignored(why) if why.contains("neither the user's")));
        }
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o664)).unwrap();
        assert!(matches!(found(me), Found::Ignored(why) if why.contains("group-writable (mode 664)")));
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o646)).unwrap();
        assert!(matches!(found(me), Found::Ignored(why) if why.contains("world-writable")));
        std::fs::write(&path, "x".repeat(MAX_BYTES as usize + 1)).unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
        assert!(matches!(found(me), Found::Ignored(why) if why.contains("larger than")));
        let missing = dir.path().join("none");
        assert_eq!(find(&[missing], me, "alice", "alice@x").unwrap(), Found::Absent);
    }

    #[test]
    fn loops_are_seen_in_delivered_to() {
        let msg = b"Delivered-To: Bob@Example.org\r\nDelivered-To: alice@example.org\r\nSubject: x\r\n\r\nDelivered-To: carol@example.org\r\n";
        assert!(seen_before(msg, "alice@example.org"));
        assert!(seen_before(msg, "bob@example.org"));
        assert!(!seen_before(msg, "carol@example.org"), "the body is no header");
    }
}
