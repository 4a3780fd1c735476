//! `[local]`: local delivery as Postfix's local(8) does it, into the
//! user's mbox in the mail spool or a mailbox in the user's home, as the
//! user (docs/security.md, "The local delivery agent"); or, with
//! `local_transport = "lmtp:..."`, to an LMTP server such as Dovecot's
//! (Postfix's `mailbox_transport`/`virtual_transport = lmtp:...`).

use super::{ConfigError, Dur, KeyError};
use crate::message::nexthop::LmtpTarget;
use serde::Deserialize;
use std::path::PathBuf;
use std::time::Duration;

/// Where the local domains' mail goes when no transport entry says.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub(crate) enum LocalTransport {
    /// `deliver.maildir_root`, as the daemon's account (the default).
    #[default]
    Maildir,
    /// The user's mailbox, as the user (`local:`).
    Local,
    /// An LMTP server, the mail store's (`lmtp:unix:/path`, `lmtp:[host]:port`).
    Lmtp(LmtpTarget),
}

/// `home_mailbox`: where in the home a user's mail goes; `None` (unset,
/// the default): the spool file `mail_spool_directory/USER`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum HomeMailbox {
    /// `Maildir/`: a Maildir at this path under the home (trailing `/`).
    Maildir(PathBuf),
    /// `Mailbox`: an mbox file at this path under the home.
    Mbox(PathBuf),
}

#[derive(Clone, Debug)]
pub(crate) struct Local {
    /// Whether any `[local]` key is set: a daemon started as root then
    /// starts the local delivery agent before it drops root.
    pub(crate) configured: bool,
    pub(crate) local_transport: LocalTransport,
    /// The spool directory of mbox files named after their users.
    pub(crate) mail_spool_directory: PathBuf,
    pub(crate) home_mailbox: Option<HomeMailbox>,
    /// Whether mail may be delivered as root (uid 0): root's own mailbox.
    /// Off by default; alias root to a person instead.
    pub(crate) deliver_to_root: bool,
    /// `recipient_delimiter`: the characters that start an address
    /// extension (`user+tag`); empty: none.
    pub(crate) recipient_delimiter: String,
    /// `default_privs`: the account commands and files of an alias file
    /// owned by root run as (never root itself).
    pub(crate) default_privs: String,
    /// `command_time_limit`: how long a command from an alias may run.
    pub(crate) command_time_limit: Duration,
    /// `allow_mail_to_commands`: where commands may come from (`alias`,
    /// `forward`).
    pub(crate) allow_mail_to_commands: Vec<String>,
    /// `allow_mail_to_files`: where files may come from.
    pub(crate) allow_mail_to_files: Vec<String>,
    /// `forward_path`: where a user's `.forward` file may be, tried in
    /// order (`$home`, `$user`, `$local`, `$extension`, `$domain`,
    /// `$recipient`, also as `${name}`); empty: no `.forward` is read.
    pub(crate) forward_path: Vec<String>,
}

/// Postfix's default `forward_path` (without its `$extension` forms).
pub(crate) const DEFAULT_FORWARD_PATH: &str = "$home/.forward";

/// The names a `forward_path` entry may expand.
pub(crate) const FORWARD_PATH_NAMES: [&str; 6] = ["home", "user", "local", "extension", "domain", "recipient"];

impl Default for Local {
    fn default() -> Local {
        Local {
            configured: false,
            local_transport: LocalTransport::Maildir,
            mail_spool_directory: PathBuf::from("/var/mail"),
            home_mailbox: None,
            deliver_to_root: false,
            recipient_delimiter: String::new(),
            default_privs: "nobody".into(),
            command_time_limit: Duration::from_secs(1000),
            allow_mail_to_commands: vec!["alias".into(), "forward".into()],
            allow_mail_to_files: vec!["alias".into(), "forward".into()],
            forward_path: vec![DEFAULT_FORWARD_PATH.into()],
        }
    }
}

impl Local {
    /// `local` without its address extension (`user+tag` -> `user`), and
    /// the extension, when a delimiter is configured and occurs in it.
    pub(crate) fn split_extension<'a>(&self, local: &'a str) -> (&'a str, Option<&'a str>) {
        split_extension(&self.recipient_delimiter, local)
    }
}

/// See [`Local::split_extension`]; a leading delimiter is no extension
/// (`+tag` alone names nobody).
pub(crate) fn split_extension<'a>(delimiters: &str, local: &'a str) -> (&'a str, Option<&'a str>) {
    match local.char_indices().find(|(i, c)| *i > 0 && delimiters.contains(*c)) {
        Some((i, c)) => (&local[..i], Some(&local[i + c.len_utf8()..])),
        None => (local, None),
    }
}

/// `local.local_transport` as `postconf` shows it.
pub(crate) fn local_transport_name(local: &Local) -> String {
    match &local.local_transport {
        LocalTransport::Maildir => "maildir".into(),
        LocalTransport::Local => "local".into(),
        LocalTransport::Lmtp(target) => format!("lmtp:{target}"),
    }
}

/// `local.home_mailbox` as written (`Maildir/`, `Mailbox`), empty when unset.
pub(crate) fn home_mailbox_text(local: &Local) -> String {
    match &local.home_mailbox {
        Some(HomeMailbox::Maildir(p)) => format!("{}/", p.display()),
        Some(HomeMailbox::Mbox(p)) => p.display().to_string(),
        None => String::new(),
    }
}

#[derive(Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawLocal {
    local_transport: Option<String>,
    mail_spool_directory: Option<PathBuf>,
    home_mailbox: Option<String>,
    deliver_to_root: Option<bool>,
    recipient_delimiter: Option<String>,
    default_privs: Option<String>,
    command_time_limit: Option<Dur>,
    allow_mail_to_commands: Option<Vec<String>>,
    allow_mail_to_files: Option<Vec<String>>,
    forward_path: Option<Vec<String>>,
}

pub(super) fn resolve_local(raw: RawLocal, err: &KeyError) -> Result<Local, ConfigError> {
    // An LMTP server alone needs no local delivery agent.
    let lmtp = raw.local_transport.as_deref().is_some_and(|t| t.trim().starts_with("lmtp:"));
    let configured = (raw.local_transport.is_some() && !lmtp)
        || raw.mail_spool_directory.is_some()
        || raw.home_mailbox.is_some()
        || raw.deliver_to_root.is_some()
        || raw.default_privs.is_some()
        || raw.command_time_limit.is_some()
        || raw.allow_mail_to_commands.is_some()
        || raw.allow_mail_to_files.is_some()
        || raw.forward_path.is_some();
    let local_transport = match raw.local_transport.as_deref().map(str::trim) {
        None | Some("maildir" | "maildir:" | "virtual" | "virtual:") => LocalTransport::Maildir,
        Some(t) if t == "local" || t.starts_with("local:") => LocalTransport::Local,
        Some(t) if t.starts_with("lmtp:") => {
            LocalTransport::Lmtp(LmtpTarget::parse(&t[5..]).map_err(|e| err("local.local_transport", e))?)
        }
        Some(t) => {
            return Err(err("local.local_transport", format!("`{t}` is neither `local`, `maildir` nor `lmtp:...`")));
        }
    };
    let mail_spool_directory = raw.mail_spool_directory.unwrap_or_else(|| PathBuf::from("/var/mail"));
    if !mail_spool_directory.is_absolute() {
        let shown = mail_spool_directory.display();
        return Err(err("local.mail_spool_directory", format!("`{shown}` is not an absolute path")));
    }
    Ok(Local {
        configured,
        local_transport,
        mail_spool_directory,
        home_mailbox: home_mailbox(raw.home_mailbox.as_deref(), err)?,
        deliver_to_root: raw.deliver_to_root.unwrap_or(false),
        recipient_delimiter: delimiter(raw.recipient_delimiter, err)?,
        default_privs: default_privs(raw.default_privs, err)?,
        command_time_limit: match raw.command_time_limit.map(|d| d.0) {
            Some(d) if d.is_zero() => return Err(err("local.command_time_limit", "must be more than zero".into())),
            d => d.unwrap_or(Duration::from_secs(1000)),
        },
        allow_mail_to_commands: sources(raw.allow_mail_to_commands, "local.allow_mail_to_commands", err)?,
        allow_mail_to_files: sources(raw.allow_mail_to_files, "local.allow_mail_to_files", err)?,
        forward_path: forward_path(raw.forward_path, err)?,
    })
}

/// Each entry an absolute path once expanded, naming only
/// [`FORWARD_PATH_NAMES`].
fn forward_path(written: Option<Vec<String>>, err: &KeyError) -> Result<Vec<String>, ConfigError> {
    let Some(written) = written else { return Ok(vec![DEFAULT_FORWARD_PATH.into()]) };
    let mut out = Vec::new();
    for entry in written.iter().map(|e| e.trim()).filter(|e| !e.is_empty()) {
        let bad = |why: String| err("local.forward_path", format!("`{}`: {why}", entry.escape_default()));
        let names = expansion_names(entry).map_err(bad)?;
        if let Some(name) = names.iter().find(|n| !FORWARD_PATH_NAMES.contains(&n.as_str())) {
            return Err(bad(format!("${name} is not one of ${}", FORWARD_PATH_NAMES.join(", $"))));
        }
        if !entry.starts_with('/') && !entry.starts_with("$home") && !entry.starts_with("${home}") {
            return Err(bad("must be an absolute path or start with $home".into()));
        }
        out.push(entry.to_string());
    }
    Ok(out)
}

/// The `$name` and `${name}` references in `text`.
pub(crate) fn expansion_names(text: &str) -> Result<Vec<String>, String> {
    let mut names = Vec::new();
    let mut rest = text;
    while let Some(at) = rest.find('$') {
        rest = &rest[at + 1..];
        let name = if let Some(braced) = rest.strip_prefix('{') {
            let end = braced.find('}').ok_or("a ${ without its }")?;
            rest = &braced[end + 1..];
            &braced[..end]
        } else {
            let end = rest.find(|c: char| !c.is_ascii_alphanumeric() && c != '_').unwrap_or(rest.len());
            let name = &rest[..end];
            rest = &rest[end..];
            name
        };
        if name.is_empty() {
            return Err("a $ without a name".into());
        }
        names.push(name.to_string());
    }
    Ok(names)
}

/// `alias`, `forward`: where commands or files may come from. Postfix's
/// `include` is refused: `:include:` files list addresses only here.
fn sources(written: Option<Vec<String>>, key: &str, err: &KeyError) -> Result<Vec<String>, ConfigError> {
    let Some(written) = written else { return Ok(vec!["alias".into(), "forward".into()]) };
    let mut out = Vec::new();
    for source in written {
        match source.trim().to_ascii_lowercase().as_str() {
            s @ ("alias" | "forward") => out.push(s.to_string()),
            "include" => {
                return Err(err(key, "`include` is not supported: :include: files may list addresses only".into()));
            }
            other => return Err(err(key, format!("`{other}` is neither `alias` nor `forward`"))),
        }
    }
    Ok(out)
}

/// A login name, not root's.
fn default_privs(written: Option<String>, err: &KeyError) -> Result<String, ConfigError> {
    let name = written.unwrap_or_else(|| "nobody".into());
    if name == "root" {
        return Err(err("local.default_privs", "commands and files are never run or written as root".into()));
    }
    let ok_chars = name.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'));
    if name.is_empty() || name.len() > 64 || !ok_chars || name.starts_with(['.', '-']) {
        return Err(err("local.default_privs", format!("`{}` is not a login name", name.escape_default())));
    }
    Ok(name)
}

/// Characters that cannot be part of an address's local part as a
/// delimiter would split it: no `@`, space or control characters.
fn delimiter(written: Option<String>, err: &KeyError) -> Result<String, ConfigError> {
    let written = written.unwrap_or_default();
    if written.chars().any(|c| c == '@' || c == '"' || c == '\\' || c.is_whitespace() || c.is_control()) {
        let why = format!("`{}` holds a character an address extension cannot start with", written.escape_default());
        return Err(err("local.recipient_delimiter", why));
    }
    Ok(written)
}

/// `Maildir/` or `Mailbox`: relative, inside the home, no `..`.
fn home_mailbox(written: Option<&str>, err: &KeyError) -> Result<Option<HomeMailbox>, ConfigError> {
    let Some(written) = written.map(str::trim).filter(|w| !w.is_empty()) else { return Ok(None) };
    let path = PathBuf::from(written.trim_end_matches('/'));
    let inside = path.is_relative() && path.components().all(|c| matches!(c, std::path::Component::Normal(_)));
    if !inside || path.as_os_str().is_empty() {
        let why = format!("`{written}` must be a path inside the home, like Maildir/ or Mailbox");
        return Err(err("local.home_mailbox", why));
    }
    Ok(Some(if written.ends_with('/') { HomeMailbox::Maildir(path) } else { HomeMailbox::Mbox(path) }))
}

#[cfg(test)]
mod tests {
    use crate::config::Config;

    fn parse(text: &str) -> Result<Config, String> {
        Config::parse(text, std::path::Path::new("/etc/posthorn/posthorn.toml")).map_err(|e| e.to_string())
    }

    #[test]
    fn defaults_and_values() {
        let c = parse("").unwrap();
        assert!(!c.local.configured);
        let c = parse("[local]\nlocal_transport = \"local\"\nhome_mailbox = \"Maildir/\"\n").unwrap();
        assert!(c.local.configured);
        assert_eq!(c.local.local_transport, super::LocalTransport::Local);
        assert_eq!(c.local.home_mailbox, Some(super::HomeMailbox::Maildir("Maildir".into())));
        assert_eq!(c.local.mail_spool_directory, std::path::PathBuf::from("/var/mail"));
        let c = parse("[local]\nhome_mailbox = \"mail/inbox\"\n").unwrap();
        assert_eq!(c.local.home_mailbox, Some(super::HomeMailbox::Mbox("mail/inbox".into())));
        // An LMTP server needs no local delivery agent.
        let c = parse("[local]\nlocal_transport = \"lmtp:unix:/run/dovecot/lmtp\"\n").unwrap();
        assert!(!c.local.configured);
        let target = crate::message::nexthop::LmtpTarget::Unix("/run/dovecot/lmtp".into());
        assert_eq!(c.local.local_transport, super::LocalTransport::Lmtp(target));
        assert_eq!(super::local_transport_name(&c.local), "lmtp:unix:/run/dovecot/lmtp");
    }

    #[test]
    fn forward_path_values_and_errors() {
        assert_eq!(parse("").unwrap().local.forward_path, ["$home/.forward"]);
        let c = parse("[local]\nforward_path = [\"$home/.forward${extension}\", \"/var/forward/$user\"]\n").unwrap();
        assert_eq!(c.local.forward_path, ["$home/.forward${extension}", "/var/forward/$user"]);
        assert!(c.local.configured);
        assert!(parse("[local]\nforward_path = []\n").unwrap().local.forward_path.is_empty());
        for (text, want) in [
            (
                "[local]\nforward_path = [\"$home/.forward$shell\"]\n",
                ":2: local.forward_path: `$home/.forward$shell`: $shell is not one of",
            ),
            ("[local]\nforward_path = [\".forward\"]\n", "must be an absolute path or start with $home"),
            ("[local]\nforward_path = [\"/x/${user\"]\n", "a ${ without its }"),
        ] {
            let e = parse(text).unwrap_err();
            assert!(e.contains(want), "{text}: {e}");
        }
    }

    #[test]
    fn alias_command_keys() {
        let c = parse("").unwrap();
        assert_eq!(c.local.default_privs, "nobody");
        assert_eq!(c.local.command_time_limit, std::time::Duration::from_secs(1000));
        assert_eq!(c.local.allow_mail_to_commands, ["alias", "forward"]);
        let c = parse("[local]\nallow_mail_to_commands = [\"forward\"]\ncommand_time_limit = \"30s\"\n").unwrap();
        assert!(c.local.configured);
        assert_eq!(c.local.allow_mail_to_commands, ["forward"]);
        assert_eq!(c.local.allow_mail_to_files, ["alias", "forward"]);
        for (text, want) in [
            ("[local]\ndefault_privs = \"root\"\n", ":2: local.default_privs: commands and files are never run"),
            ("[local]\n\ndefault_privs = \"a b\"\n", ":3: local.default_privs: `a b` is not a login name"),
            ("[local]\ncommand_time_limit = \"0s\"\n", ":2: local.command_time_limit: must be more than zero"),
            (
                "[local]\nallow_mail_to_files = [\"include\"]\n",
                ":2: local.allow_mail_to_files: `include` is not supported",
            ),
            ("[local]\nallow_mail_to_commands = [\"aliases\"]\n", "local.allow_mail_to_commands: `aliases` is neither"),
        ] {
            let e = parse(text).unwrap_err();
            assert!(e.contains(want), "{text:?}: {e}");
        }
    }

    #[test]
    fn extensions_table() {
        for (delims, local, want) in [
            ("+", "user+tag", ("user", Some("tag"))),
            ("+", "user+a+b", ("user", Some("a+b"))),
            ("+-", "user-tag", ("user", Some("tag"))),
            ("+", "user", ("user", None)),
            ("+", "+tag", ("+tag", None)),
            ("", "user+tag", ("user+tag", None)),
        ] {
            assert_eq!(super::split_extension(delims, local), want, "{delims} {local}");
        }
        assert!(parse("[local]\nrecipient_delimiter = \"@\"\n").unwrap_err().contains("local.recipient_delimiter"));
        assert!(!parse("[local]\nrecipient_delimiter = \"+\"\n").unwrap().local.configured);
    }

    #[test]
    fn bad_values_name_the_key() {
        for (text, key) in [
            ("[local]\nlocal_transport = \"smtp\"\n", "local.local_transport"),
            ("[local]\nlocal_transport = \"lmtp:unix:run/lmtp\"\n", "local.local_transport"),
            ("[local]\nhome_mailbox = \"../x\"\n", "local.home_mailbox"),
            ("[local]\nhome_mailbox = \"/var/x\"\n", "local.home_mailbox"),
            ("[local]\nmail_spool_directory = \"mail\"\n", "local.mail_spool_directory"),
        ] {
            let e = parse(text).unwrap_err();
            assert!(e.contains(key), "{text}: {e}");
        }
    }
}
