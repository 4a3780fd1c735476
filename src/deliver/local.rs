//! Local delivery as the user, the way Postfix's local(8) does it (the
//! `local:` transport): a recipient's local part names an account in the
//! system's user database, and its mail goes, written as that account,
//! into `local.mail_spool_directory/USER` (an mbox, see `mbox`) or, with
//! `local.home_mailbox`, into a Maildir or mbox in the user's home.
//!
//! Who writes: mail for the daemon's own account is written by the daemon
//! itself (a blocking task, no process per message). Mail for any other
//! account goes to the local delivery agent (`local_agent`), which a
//! daemon started as root started before it gave root up; the agent forks
//! a child per delivery that becomes the user. A daemon without the agent
//! (started as an ordinary user) refuses other users with a reply that
//! says so, and defers their mail. Root's own mailbox is refused unless
//! `local.deliver_to_root` is set.
//!
//! An alias that ends in commands or files (`|cmd`, `/path`; the route
//! hands them over in [`OutRecipient::alias_deliveries`]) is delivered to
//! each of them as the alias file's owner, or as `local.default_privs`
//! when root owns the file (`local_command`); never as root. Those that
//! took the message before another failed are reported back
//! ([`Followup::Done`]) and skipped at the next attempt.
//!
//! Mail for a user's mailbox first goes through the user's `.forward`
//! (`forward`), read and carried out as the user; the addresses it names
//! are handed back ([`Followup::Forward`]) for the queue to commit as a
//! new message before the recipient counts as delivered.

use super::local_agent;
use super::{Delivery, Followup, Forward};
use crate::account::{self, Entry};
use crate::config::{Config, HomeMailbox};
use crate::message::outcome::{Attempt, ErrorClass, Outcome};
use crate::message::{AliasDelivery, AliasTarget, OutMessage, OutRecipient};
use crate::smtp::proto::reply::{Enhanced, Reply};
use serde::{Deserialize, Serialize};
use std::path::PathBuf;
use std::sync::Arc;

/// What decides where and how a user's mail is written. The agent gets
/// these once, from root's configuration when it starts, never from a
/// request: the daemon cannot steer the agent to another path.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct Settings {
    pub(crate) spool_dir: PathBuf,
    /// `Maildir/`: a Maildir under the home.
    pub(crate) home_maildir: Option<PathBuf>,
    /// `Mailbox`: an mbox under the home.
    pub(crate) home_mbox: Option<PathBuf>,
    pub(crate) deliver_to_root: bool,
    /// For Maildir file names.
    pub(crate) hostname: String,
    /// `local.default_privs`: who runs a root-owned alias file's commands.
    #[serde(default)]
    pub(crate) default_privs: String,
    /// `rewrite.alias_maps`: the agent runs only commands and writes only
    /// files these list.
    #[serde(default)]
    pub(crate) alias_maps: Vec<String>,
    /// `allow_mail_to_commands` and `allow_mail_to_files` name `alias`.
    #[serde(default)]
    pub(crate) commands_allowed: bool,
    #[serde(default)]
    pub(crate) files_allowed: bool,
    /// `local.forward_path`: where a user's `.forward` may be; empty:
    /// none is read.
    #[serde(default)]
    pub(crate) forward_path: Vec<String>,
    /// `allow_mail_to_commands` and `allow_mail_to_files` name `forward`.
    #[serde(default)]
    pub(crate) forward_commands: bool,
    #[serde(default)]
    pub(crate) forward_files: bool,
    /// `local.recipient_delimiter`, for `$extension` and a command's
    /// `EXTENSION`.
    #[serde(default)]
    pub(crate) delimiter: String,
    /// `local.command_time_limit` for a `.forward`'s commands.
    #[serde(default)]
    pub(crate) command_time_limit_secs: u64,
}

impl Settings {
    pub(crate) fn from_config(config: &Config) -> Settings {
        let mut settings = Settings::from_local(&config.local, &config.hostname);
        settings.alias_maps = config.rewrite.alias_maps.clone();
        settings.commands_allowed = config.local.allow_mail_to_commands.iter().any(|s| s == "alias");
        settings.files_allowed = config.local.allow_mail_to_files.iter().any(|s| s == "alias");
        settings.forward_commands = config.local.allow_mail_to_commands.iter().any(|s| s == "forward");
        settings.forward_files = config.local.allow_mail_to_files.iter().any(|s| s == "forward");
        settings
    }

    pub(crate) fn from_local(local: &crate::config::Local, hostname: &str) -> Settings {
        let (home_maildir, home_mbox) = match &local.home_mailbox {
            Some(HomeMailbox::Maildir(p)) => (Some(p.clone()), None),
            Some(HomeMailbox::Mbox(p)) => (None, Some(p.clone())),
            None => (None, None),
        };
        Settings {
            spool_dir: local.mail_spool_directory.clone(),
            home_maildir,
            home_mbox,
            deliver_to_root: local.deliver_to_root,
            hostname: hostname.to_string(),
            default_privs: local.default_privs.clone(),
            alias_maps: Vec::new(),
            commands_allowed: false,
            files_allowed: false,
            forward_path: local.forward_path.clone(),
            forward_commands: false,
            forward_files: false,
            delimiter: local.recipient_delimiter.clone(),
            command_time_limit_secs: local.command_time_limit.as_secs().max(1),
        }
    }

    /// Where `entry`'s mail goes.
    pub(crate) fn mailbox(&self, entry: &Entry) -> Mailbox {
        match (&self.home_maildir, &self.home_mbox) {
            (Some(dir), _) => Mailbox::Maildir(entry.home.join(dir)),
            (None, Some(file)) => Mailbox::Mbox(entry.home.join(file)),
            (None, None) => Mailbox::Mbox(self.spool_dir.join(&entry.account.name)),
        }
    }
}

/// A user's mailbox.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum Mailbox {
    Mbox(PathBuf),
    Maildir(PathBuf),
}

impl std::fmt::Display for Mailbox {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Mailbox::Mbox(p) => write!(f, "mailbox {}", p.display()),
            Mailbox::Maildir(p) => write!(f, "maildir {}/", p.display()),
        }
    }
}

/// One delivery, as the daemon asks it of the agent (or of itself): the
/// account by name, the envelope, and the message's length; the message
/// follows as bytes.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub(crate) struct Request {
    pub(crate) user: String,
    pub(crate) sender: String,
    pub(crate) recipient: String,
    pub(crate) original: String,
    pub(crate) length: u64,
    /// A command or file of an alias instead of the user's mailbox.
    #[serde(default)]
    pub(crate) target: Option<Target>,
}

/// What an alias delivers to, besides mailboxes.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) enum Target {
    /// A command line from the alias file, with `local.command_time_limit`
    /// and `local.recipient_delimiter`.
    Command { command: String, time_limit_secs: u64, delimiter: String },
    /// An absolute file path from the alias file.
    File { path: String },
}

/// What one delivery did.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct Done {
    /// Where the message went here: the mailbox, a command, a file.
    pub(crate) places: Vec<String>,
    /// Addresses a `.forward` sends a new copy to (the queue's to commit).
    pub(crate) forward_to: Vec<String>,
    /// For the daemon's log: a `.forward` not honoured, and why.
    pub(crate) notes: Vec<String>,
}

impl Done {
    pub(crate) fn at(place: String) -> Done {
        Done { places: vec![place], ..Done::default() }
    }

    /// A `.forward`'s result, the mailbox's place added when it got a copy.
    pub(crate) fn forwarded(applied: super::forward::Applied, mailbox: Option<String>) -> Done {
        let mut places = applied.places;
        places.extend(mailbox);
        Done { places, forward_to: applied.forward_to, notes: applied.notes }
    }
}

/// Why a delivery failed; `permanent` bounces, the rest defers.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct Failure {
    pub(crate) permanent: bool,
    /// RFC 3463 status.
    pub(crate) status: (u8, u16, u16),
    pub(crate) text: String,
}

impl Failure {
    pub(crate) fn transient(text: String) -> Failure {
        Failure { permanent: false, status: (4, 3, 0), text }
    }
}

/// The account a recipient names: its local part, lower case, without an
/// address extension (`delimiters`, `local.recipient_delimiter`). Refuses
/// what no login name looks like, so nothing odd reaches NSS or a path.
pub(crate) fn user_of(address: &str, delimiters: &str) -> Result<String, String> {
    let (local, _) = address.rsplit_once('@').unwrap_or((address, ""));
    let (local, _) = crate::config::split_extension(delimiters, local);
    let user = local.to_lowercase();
    valid_user(&user)?;
    Ok(user)
}

/// A login name: letters, digits, `.`, `_`, `-`, not starting with `.` or
/// `-`, at most 64 bytes. Also what the agent checks of every request.
pub(crate) fn valid_user(user: &str) -> Result<(), String> {
    let ok_chars = user.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'));
    if user.is_empty() || user.len() > 64 || !ok_chars || user.starts_with(['.', '-']) {
        return Err(format!("`{}` is not a local user name", user.escape_default()));
    }
    Ok(())
}

/// At RCPT, for a recipient routed to `local:`: the user must exist. The
/// error has the status's detail (5.1.x) and the reason.
pub(crate) fn check_address(address: &str, delimiters: &str) -> Result<(), (u16, String)> {
    let user = user_of(address, delimiters).map_err(|why| (3, why))?;
    match account::lookup_entry(&user) {
        Ok(Some(_)) => Ok(()),
        Ok(None) => Err((1, "User unknown in local recipient table".into())),
        // NSS trouble is not the client's: accepted, and delivery decides.
        Err(_) => Ok(()),
    }
}

/// Where `local:` puts `address`'s mail, for `posthorn route explain`:
/// `user alice (uid 1000): mailbox /var/mail/alice`, or why it would not.
pub(crate) fn describe(local: &crate::config::Local, address: &str) -> String {
    let user = match user_of(address, &local.recipient_delimiter) {
        Ok(user) => user,
        Err(why) => return format!("refused: {why}"),
    };
    match account::lookup_entry(&user) {
        Ok(Some(entry)) if entry.account.uid == 0 && !local.deliver_to_root => {
            format!("user {user} is root: bounced unless local.deliver_to_root is set")
        }
        Ok(Some(entry)) => {
            let mailbox = Settings::from_local(local, "").mailbox(&entry);
            let delimiter = &local.recipient_delimiter;
            match super::forward::describe(&local.forward_path, &entry, address, delimiter) {
                Some(forward) => format!("user {user} (uid {}): {forward}; mailbox: {mailbox}", entry.account.uid),
                None => format!("user {user} (uid {}): {mailbox}", entry.account.uid),
            }
        }
        Ok(None) => format!("unknown user {user}"),
        Err(e) => e.to_string(),
    }
}

/// The `local:` transport.
pub(crate) struct Local {
    settings: Arc<Settings>,
    /// `local.recipient_delimiter`.
    delimiters: String,
    /// `local.command_time_limit`.
    time_limit: std::time::Duration,
}

impl Local {
    pub(crate) fn new(config: &Config) -> Local {
        Local {
            settings: Arc::new(Settings::from_config(config)),
            delimiters: config.local.recipient_delimiter.clone(),
            time_limit: config.local.command_time_limit,
        }
    }

    /// Delivers `msg` to every recipient's mailbox; one outcome each.
    pub(crate) async fn deliver(&self, msg: &OutMessage) -> Delivery {
        let mut outcomes = Vec::with_capacity(msg.recipients.len());
        let mut followups = Vec::new();
        for rcpt in &msg.recipients {
            let result = if rcpt.alias_deliveries.is_empty() {
                self.deliver_one(msg, rcpt).await
            } else {
                let (result, parts) = self.deliver_aliases(msg, rcpt).await;
                if result.is_err() && !parts.is_empty() {
                    followups.push(Followup::Done { outcome: outcomes.len(), parts });
                }
                result
            };
            let outcome = match result {
                Ok(done) => {
                    for note in &done.notes {
                        tracing::warn!("{}: to=<{}>: {note}", msg.id, rcpt.address);
                    }
                    if !done.forward_to.is_empty() {
                        let from = rcpt.address.clone();
                        followups.push(Followup::Forward(Forward {
                            outcome: outcomes.len(),
                            from,
                            to: done.forward_to,
                        }));
                    }
                    let detail = match done.places.is_empty() {
                        true => String::new(),
                        false => format!("delivered to {}", done.places.join(", ")),
                    };
                    Outcome::Delivered(Attempt {
                        relay: Some("local".into()),
                        tls: false,
                        reply: None,
                        class: None,
                        detail,
                    })
                }
                Err(failure) => {
                    tracing::warn!("{}: to=<{}>: {}", msg.id, rcpt.address, failure.text);
                    failed(failure)
                }
            };
            outcomes.push(outcome);
        }
        Delivery { outcomes, hop_down: false, remote_dsn: false, setup: None, followups }
    }

    /// An alias's commands and files, in order, up to the first that
    /// fails; those done at an earlier attempt are skipped. Also returns
    /// the keys of those done now.
    async fn deliver_aliases(&self, msg: &OutMessage, rcpt: &OutRecipient) -> (Result<Done, Failure>, Vec<String>) {
        let mut done = Done::default();
        let mut parts = Vec::new();
        for d in &rcpt.alias_deliveries {
            let key = d.target.key();
            if rcpt.done.contains(&key) {
                done.places.push(format!("{key} (at an earlier attempt)"));
                continue;
            }
            match self.deliver_alias(msg, rcpt, d).await {
                Ok(one) => {
                    done.places.extend(one.places);
                    parts.push(key);
                }
                Err(failure) => return (Err(failure), parts),
            }
        }
        (Ok(done), parts)
    }

    async fn deliver_one(&self, msg: &OutMessage, rcpt: &OutRecipient) -> Result<Done, Failure> {
        let permanent = |status, text| Failure { permanent: true, status, text };
        let user = user_of(&rcpt.address, &self.delimiters).map_err(|why| permanent((5, 1, 3), why))?;
        let entry = match account::lookup_entry(&user) {
            Ok(Some(entry)) => entry,
            Ok(None) => return Err(permanent((5, 1, 1), format!("unknown user: \"{user}\""))),
            Err(e) => return Err(Failure::transient(e.to_string())),
        };
        if entry.account.uid == 0 && !self.settings.deliver_to_root {
            let why = format!(
                "user {user} is root (uid 0): mail is not delivered as root; alias {user} to a person, or set local.deliver_to_root"
            );
            return Err(permanent((5, 7, 1), why));
        }
        let request = Request {
            user,
            sender: msg.sender.clone(),
            recipient: rcpt.address.clone(),
            original: rcpt.original(),
            length: msg.body.len() as u64,
            target: None,
        };
        self.hand_over(entry, request, msg).await
    }

    /// One command or file of an alias, as the alias file's owner (or
    /// `local.default_privs` for root's files).
    async fn deliver_alias(&self, msg: &OutMessage, rcpt: &OutRecipient, d: &AliasDelivery) -> Result<Done, Failure> {
        let permanent = |status, text| Failure { permanent: true, status, text };
        let entry = match account_for(d.owner, &self.settings.default_privs) {
            Ok(Some(entry)) if entry.account.uid != 0 => entry,
            Ok(Some(_)) => {
                return Err(permanent((5, 7, 1), format!("{}: commands and files never run as root", d.source)));
            }
            Ok(None) => {
                return Err(Failure::transient(format!("{}: no account to run as (uid {})", d.source, d.owner)));
            }
            Err(e) => return Err(Failure::transient(e)),
        };
        let target = match &d.target {
            AliasTarget::Command(command) => Target::Command {
                command: command.clone(),
                time_limit_secs: self.time_limit.as_secs().max(1),
                delimiter: self.delimiters.clone(),
            },
            AliasTarget::File(path) => Target::File { path: path.clone() },
        };
        let request = Request {
            user: entry.account.name.clone(),
            sender: msg.sender.clone(),
            recipient: rcpt.address.clone(),
            original: rcpt.original(),
            length: msg.body.len() as u64,
            target: Some(target),
        };
        self.hand_over(entry, request, msg).await
    }

    /// Writes (or runs) `request` here when it is for our own account,
    /// else through the agent.
    async fn hand_over(&self, entry: Entry, request: Request, msg: &OutMessage) -> Result<Done, Failure> {
        let me = rustix::process::geteuid().as_raw();
        let body = msg.body.clone();
        let settings = Arc::clone(&self.settings);
        let work = move || {
            if entry.account.uid == me {
                // Our own account: written here, no process per message.
                deliver_as_self(&settings, &entry, &request, &body)
            } else if let Some(agent) = local_agent::running() {
                agent.deliver(&request, &body)
            } else {
                Err(Failure::transient(format!(
                    "cannot deliver as user {}: posthorn runs as {} and has no local delivery agent; \
                     only a daemon started as root (with a [local] key set) delivers as other users",
                    request.user,
                    account::user_name(me)
                )))
            }
        };
        tokio::task::spawn_blocking(work)
            .await
            .unwrap_or_else(|e| Err(Failure::transient(format!("local delivery failed: {e}"))))
    }
}

/// The account an alias file owned by `owner` runs its commands as.
fn account_for(owner: u32, default_privs: &str) -> Result<Option<Entry>, String> {
    let name = if owner == 0 {
        default_privs.to_string()
    } else {
        match account::lookup_uid(owner) {
            Ok(Some(a)) => a.name,
            Ok(None) => return Ok(None),
            Err(e) => return Err(e.to_string()),
        }
    };
    account::lookup_entry(&name).map_err(|e| e.to_string())
}

fn failed(f: Failure) -> Outcome {
    let (class, subject, detail) = f.status;
    let code = match (f.permanent, f.status) {
        (true, _) => 550,
        (false, (_, 2, 2) | (_, 3, 1)) => 452,
        (false, _) => 451,
    };
    let reply = Reply::new(code, Enhanced(class, subject, detail), f.text.clone());
    let attempt =
        Attempt { relay: None, tls: false, detail: f.text, reply: Some(reply), class: Some(ErrorClass::Local) };
    if f.permanent { Outcome::Permanent(attempt) } else { Outcome::Transient(attempt) }
}

/// Delivers one message as this process's account, which is `entry`'s:
/// the daemon for its own account. An alias's command or file, or the
/// user's `.forward` and mailbox. (The agent runs the same steps, each in
/// a child of its own: `local_agent`.)
pub(crate) fn deliver_as_self(
    settings: &Settings,
    entry: &Entry,
    request: &Request,
    message: &[u8],
) -> Result<Done, Failure> {
    if request.target.is_some() {
        return alias_target(entry, request, message).map(Done::at);
    }
    let applied = super::forward::apply(settings, entry, request, message)?;
    let mailbox = if applied.mailbox { Some(write_mailbox(settings, entry, request, message)?) } else { None };
    Ok(Done::forwarded(applied, mailbox))
}

/// Runs or writes the command or file of an alias that `request` names.
pub(crate) fn alias_target(entry: &Entry, request: &Request, message: &[u8]) -> Result<String, Failure> {
    match &request.target {
        Some(Target::Command { command, time_limit_secs, delimiter }) => {
            let limit = std::time::Duration::from_secs(*time_limit_secs);
            super::local_command::run(entry, request, command, limit, delimiter, message)
        }
        Some(Target::File { path }) => super::local_command::append_file(entry, request, path, message),
        None => Err(Failure { permanent: true, status: (5, 3, 5), text: "no command or file to deliver to".into() }),
    }
}

/// Writes one message into `entry`'s mailbox, with the rights this process
/// has. Returns where it went.
pub(crate) fn write_mailbox(
    settings: &Settings,
    entry: &Entry,
    request: &Request,
    message: &[u8],
) -> Result<String, Failure> {
    let mailbox = settings.mailbox(entry);
    match &mailbox {
        Mailbox::Mbox(path) => {
            let date = super::mbox::from_line_date(&crate::clock::local(crate::clock::now_secs()));
            let entry_bytes =
                super::mbox::format(&request.sender, &request.recipient, &request.original, message, &date);
            super::mbox::append(path, &entry_bytes, entry.account.uid).map_err(|text| Failure {
                permanent: false,
                status: (4, 2, 0),
                text,
            })?;
        }
        Mailbox::Maildir(dir) => {
            let clean = |s: &str| s.chars().filter(|c| !c.is_control()).collect::<String>();
            let header = format!(
                "Return-Path: <{}>\nX-Original-To: {}\nDelivered-To: {}\n",
                clean(&request.sender),
                clean(&request.original),
                clean(&request.recipient)
            );
            let name = super::maildir::unique_name(&super::maildir::escape_host(&settings.hostname));
            super::maildir::write_message(dir, &name, header.as_bytes(), message).map_err(|e| Failure {
                permanent: false,
                status: (4, 2, 0),
                text: format!("maildir {}: {e}", dir.display()),
            })?;
        }
    }
    Ok(mailbox.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn user_names_table() {
        for (address, want) in [
            ("Alice@example.org", Ok("alice")),
            ("bob.smith@x", Ok("bob.smith")),
            ("a_b-c@x", Ok("a_b-c")),
            ("../etc@x", Err(())),
            (".hidden@x", Err(())),
            ("-x@x", Err(())),
            ("a/b@x", Err(())),
            ("a b@x", Err(())),
            ("@x", Err(())),
            ("\"q\"@x", Err(())),
        ] {
            assert_eq!(user_of(address, "").map_err(|_| ()), want.map(str::to_string), "{address}");
        }
        assert_eq!(user_of("Bob+Lists@x", "+").as_deref(), Ok("bob"));
        assert!(user_of("bob+lists@x", "").is_err(), "no delimiter: + is part of the name");
    }

    #[test]
    fn mailbox_paths() {
        let entry = Entry {
            account: crate::account::Account { name: "alice".into(), uid: 1000, gid: 1000 },
            home: "/home/alice".into(),
            shell: "/bin/sh".into(),
        };
        let mut s = Settings::from_local(&crate::config::Local::default(), "h");
        assert_eq!(s.mailbox(&entry).to_string(), "mailbox /var/mail/alice");
        s.home_maildir = Some("Maildir".into());
        assert_eq!(s.mailbox(&entry).to_string(), "maildir /home/alice/Maildir/");
        s.home_maildir = None;
        s.home_mbox = Some("Mailbox".into());
        assert_eq!(s.mailbox(&entry), Mailbox::Mbox("/home/alice/Mailbox".into()));
    }
}
