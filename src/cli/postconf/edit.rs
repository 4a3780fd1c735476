//! `postconf -e 'name = value'...`, `postconf -X name...` and `-# name...`: edit the
//! configuration file in place, as config management drives Postfix's.
//!
//! The file is edited as a TOML document (`toml_edit`), so its comments,
//! order and layout stay; a replaced value keeps its trailing comment.
//! Names are posthorn's dotted keys or the Postfix names of
//! `POSTFIX_NAMES`; values are written as admins type them for Postfix
//! (`mynetworks = 127.0.0.0/8, 10.0.0.0/8`) and become the TOML the key
//! takes, found by trying, in order, an integer, a boolean (`yes`/`no`
//! too), a string and a list split on commas and spaces against the key's
//! type (`config::accepts`). The edited text must load (`Config::parse`)
//! before it replaces the file: a temporary file in the same directory,
//! written, synced, given the old file's mode and owner, then renamed over
//! it. An edit that does not load changes nothing. A running daemon is not
//! told; `postfix reload` applies the change, as with Postfix.

use super::{POSTFIX_NAMES, exit};
use crate::config::{self, Config};
use std::fs;
use std::io::Write;
use std::os::unix::fs::{MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use toml_edit::{DocumentMut, Item, TableLike};

pub(super) enum Mode {
    /// `-e name=value`.
    Set,
    /// `-X name`.
    Remove,
    /// `-# name`.
    CommentOut,
}

pub(super) fn main(explicit: Option<&Path>, mode: Mode, args: &[String]) -> u8 {
    match edit(explicit, mode, args) {
        Ok(()) => exit::OK,
        Err(e) => {
            eprintln!("postconf: fatal: {e}");
            1
        }
    }
}

fn edit(explicit: Option<&Path>, mode: Mode, args: &[String]) -> Result<(), String> {
    let path = Config::locate(explicit).ok_or_else(|| {
        format!(
            "no configuration file to edit: {} does not exist (give -c PATH or set POSTHORN_CONFIG)",
            config::DEFAULT_PATH
        )
    })?;
    // Edit the file a symlink points at, not the link.
    let path = fs::canonicalize(&path).map_err(|e| format!("{}: cannot open: {}", path.display(), reason(&e)))?;
    let text = fs::read_to_string(&path).map_err(|e| format!("{}: cannot read: {}", path.display(), reason(&e)))?;
    let not_toml = |e: toml_edit::TomlError| format!("{}: {}", path.display(), e.message().trim());
    let edited = match mode {
        Mode::CommentOut => args.iter().try_fold(text.clone(), |t, a| comment_out(&t, a))?,
        Mode::Set | Mode::Remove => {
            let mut doc: DocumentMut = text.parse().map_err(not_toml)?;
            for arg in args {
                match mode {
                    Mode::Set => set(&mut doc, arg)?,
                    _ => remove(&mut doc, arg)?,
                }
            }
            doc.to_string()
        }
    };
    if edited == text {
        return Ok(());
    }
    Config::parse(&edited, &path).map_err(|e| format!("{e}; {} not changed", path.display()))?;
    replace(&path, &edited).map_err(|e| format!("{}: cannot replace: {}; not changed", path.display(), reason(&e)))
}

/// The posthorn key `name` stands for, and whether it is a Postfix name.
fn key_of(name: &str) -> Result<(&str, bool), String> {
    if let Some((_, key)) = POSTFIX_NAMES.iter().find(|(p, _)| *p == name) {
        return Ok((key, true));
    }
    if config::keys().iter().any(|k| k == name) {
        return Ok((name, false));
    }
    Err(format!("{name}: unknown parameter"))
}

/// `name = value` (spaces optional, as Postfix takes it).
fn set(doc: &mut DocumentMut, arg: &str) -> Result<(), String> {
    let (name, value) = arg.split_once('=').ok_or_else(|| format!("`{arg}`: expected name = value"))?;
    let (name, value) = (name.trim(), value.trim());
    let (key, postfix) = key_of(name)?;
    let value = match (key, postfix, value) {
        ("smtp.bare_newline", true, "yes") => "normalize",
        ("smtp.bare_newline", true, "no") => {
            return Err(format!("{name}: `no` is not offered: bare LF is always refused from untrusted clients"));
        }
        _ => value,
    };
    let typed = typed(key, value).map_err(|e| format!("{name}: {e}"))?;
    let (section, leaf) = split(key);
    let table = table_mut(doc, section, true)?.expect("created");
    match table.get_mut(leaf) {
        Some(Item::Value(old)) => {
            // Keep the spacing and the comment after the old value.
            let decor = old.decor().clone();
            *old = typed;
            *old.decor_mut() = decor;
        }
        _ => {
            table.insert(leaf, Item::Value(typed));
        }
    }
    Ok(())
}

/// `-X name`: a key that is not in the file is no error, as in Postfix.
fn remove(doc: &mut DocumentMut, name: &str) -> Result<(), String> {
    let (key, _) = key_of(name)?;
    let (section, leaf) = split(key);
    if let Some(table) = table_mut(doc, section, false)? {
        table.remove(leaf);
    }
    Ok(())
}

/// `-# name`: the key's lines become comments (`#name = value`), as
/// Postfix's `-#` leaves them; a key not in the file is no error.
fn comment_out(text: &str, name: &str) -> Result<String, String> {
    let (key, _) = key_of(name)?;
    let doc = toml_edit::Document::parse(text.to_string()).map_err(|e| e.message().trim().to_string())?;
    let (section, leaf) = split(key);
    let table: &dyn TableLike = match section.map(|s| doc.as_table().get(s)) {
        None => doc.as_table(),
        Some(Some(Item::Table(t))) => t,
        Some(None) => return Ok(text.to_string()),
        // An inline table's keys share one line.
        Some(Some(_)) => return Err(format!("{name}: in an inline table; edit the file")),
    };
    let Some((k, item)) = table.get_key_value(leaf) else { return Ok(text.to_string()) };
    let (Some(key_span), Some(value_span)) = (k.span(), item.span()) else {
        return Err(format!("{name}: its line in the file is not known"));
    };
    let start = text[..key_span.start].rfind('\n').map_or(0, |i| i + 1);
    let end = text[value_span.end..].find('\n').map_or(text.len(), |i| value_span.end + i);
    let commented: Vec<String> = text[start..end].lines().map(|l| format!("#{l}")).collect();
    Ok(format!("{}{}{}", &text[..start], commented.join("\n"), &text[end..]))
}

fn split(key: &str) -> (Option<&str>, &str) {
    match key.split_once('.') {
        Some((section, leaf)) => (Some(section), leaf),
        None => (None, key),
    }
}

/// The table holding a key of `section` (the root for `None`); created at
/// the end of the file when `create` and missing.
fn table_mut<'d>(
    doc: &'d mut DocumentMut,
    section: Option<&str>,
    create: bool,
) -> Result<Option<&'d mut dyn TableLike>, String> {
    let Some(section) = section else { return Ok(Some(doc.as_table_mut() as &mut dyn TableLike)) };
    if !doc.contains_key(section) {
        if !create {
            return Ok(None);
        }
        doc.insert(section, toml_edit::table());
    }
    doc[section].as_table_like_mut().map(Some).ok_or_else(|| format!("{section} in the file is not a table"))
}

/// The admin's text as the TOML value `key` takes: the first of integer,
/// boolean, string and list that has the key's type.
fn typed(key: &str, text: &str) -> Result<toml_edit::Value, String> {
    let mut candidates = Vec::new();
    if let Ok(n) = text.parse::<i64>() {
        candidates.push(toml::Value::Integer(n));
    }
    match text.to_ascii_lowercase().as_str() {
        "yes" | "true" => candidates.push(toml::Value::Boolean(true)),
        "no" | "false" => candidates.push(toml::Value::Boolean(false)),
        _ => {}
    }
    candidates.push(toml::Value::String(text.to_string()));
    let items = text.split([',', ' ', '\t']).filter(|s| !s.is_empty());
    candidates.push(toml::Value::Array(items.map(|s| toml::Value::String(s.into())).collect()));
    let mut errors = Vec::new();
    for candidate in candidates {
        match config::accepts(key, candidate.clone()) {
            Ok(()) => return Ok(edit_value(&candidate)),
            Err(e) => errors.push(e),
        }
    }
    // A candidate of the right type with a bad value says more than the
    // type mismatches of the others.
    let why = errors.iter().find(|e| !e.starts_with("invalid type")).or(errors.first());
    let why = why.map_or("not a value this key takes", String::as_str);
    Err(if why.contains(&format!("`{text}`")) { why.to_string() } else { format!("`{text}`: {why}") })
}

fn edit_value(v: &toml::Value) -> toml_edit::Value {
    match v {
        toml::Value::Integer(n) => (*n).into(),
        toml::Value::Boolean(b) => (*b).into(),
        toml::Value::Array(items) => items.iter().filter_map(toml::Value::as_str).collect::<toml_edit::Array>().into(),
        other => other.as_str().unwrap_or_default().into(),
    }
}

/// Replaces `path` by `text` atomically: a temporary file beside it with
/// the same mode and owner, synced, renamed over it, the directory synced.
fn replace(path: &Path, text: &str) -> std::io::Result<()> {
    let meta = fs::metadata(path)?;
    let dir = path.parent().unwrap_or(Path::new("/"));
    let name = path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    let tmp: PathBuf = dir.join(format!(".{name}.postconf.{}", std::process::id()));
    let write = || -> std::io::Result<()> {
        let mut f = fs::OpenOptions::new().write(true).create_new(true).mode(0o600).open(&tmp)?;
        f.write_all(text.as_bytes())?;
        let mine = f.metadata()?;
        if (mine.uid(), mine.gid()) != (meta.uid(), meta.gid()) {
            std::os::unix::fs::fchown(&f, Some(meta.uid()), Some(meta.gid()))?;
        }
        f.set_permissions(fs::Permissions::from_mode(meta.mode() & 0o7777))?;
        f.sync_all()?;
        fs::rename(&tmp, path)?;
        fs::File::open(dir)?.sync_all()
    };
    let result = write();
    if result.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    result
}

/// An I/O error in words, without Rust's "(os error N)".
fn reason(e: &std::io::Error) -> String {
    crate::route::table::strerror(e)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn edited(text: &str, args: &[&str], mode: fn(&mut DocumentMut, &str) -> Result<(), String>) -> String {
        let mut doc: DocumentMut = text.parse().unwrap();
        for a in args {
            mode(&mut doc, a).unwrap();
        }
        doc.to_string()
    }

    #[test]
    fn values_typed_by_key() {
        let cases = [
            (
                "mynetworks = 127.0.0.0/8, 10.0.0.0/8",
                "[access]\ntrusted_networks = [\"127.0.0.0/8\", \"10.0.0.0/8\"]\n",
            ),
            ("mynetworks=127.0.0.0/8", "[access]\ntrusted_networks = [\"127.0.0.0/8\"]\n"),
            ("message_size_limit = 1000", "[smtp]\nmax_message_size = 1000\n"),
            ("smtp.max_message_size = 10M", "[smtp]\nmax_message_size = \"10M\"\n"),
            ("minimal_backoff_time = 300s", "[queue]\nretry_min = \"300s\"\n"),
            ("smtpd_sasl_authenticated_header = yes", "[tls]\nreceived_auth_user = true\n"),
            ("relayhost = [10.0.0.6]:25", "[relay]\nsmarthosts = [\"[10.0.0.6]:25\"]\n"),
            ("role = hub", "role = \"hub\"\n"),
            ("smtpd_forbid_bare_newline = yes", "[smtp]\nbare_newline = \"normalize\"\n"),
            ("relay_domains =", "[access]\nrelay_domains = []\n"),
        ];
        for (arg, expected) in cases {
            assert_eq!(edited("", &[arg], set), expected, "{arg}");
        }
    }

    #[test]
    fn comments_and_order_stay() {
        let text = "# top\nrole = \"hub\"   # the role\n\n[smtp]\n# size\nmax_message_size = \"50M\" # keep me\nlisten = [\"0.0.0.0:25\"]\n";
        let out = edited(text, &["message_size_limit = 2000", "hostname = mx", "smtp.max_recipients = 5"], set);
        assert_eq!(
            out,
            "# top\nrole = \"hub\"   # the role\nhostname = \"mx\"\n\n[smtp]\n# size\nmax_message_size = 2000 # keep me\nlisten = [\"0.0.0.0:25\"]\nmax_recipients = 5\n"
        );
        let out = edited(text, &["smtp.listen", "queue.retry_min"], remove);
        assert_eq!(out, "# top\nrole = \"hub\"   # the role\n\n[smtp]\n# size\nmax_message_size = \"50M\" # keep me\n");
    }

    #[test]
    fn comment_out_keeps_the_line() {
        let text = "role = \"hub\"\n[smtp]\nlisten = [\n  \"0.0.0.0:25\",\n] # all\nmax_errors = 3\n";
        let out = comment_out(text, "smtp.listen").unwrap();
        assert_eq!(out, "role = \"hub\"\n[smtp]\n#listen = [\n#  \"0.0.0.0:25\",\n#] # all\nmax_errors = 3\n");
        assert_eq!(comment_out(&out, "smtp.listen").unwrap(), out, "already gone");
        assert_eq!(comment_out(text, "role").unwrap(), text.replacen("role", "#role", 1));
        assert!(comment_out("access = { relay_domains = [] }\n", "relay_domains").unwrap_err().contains("inline"));
    }

    #[test]
    fn refusals_name_the_key() {
        let mut doc = DocumentMut::new();
        let err = |arg: &str, doc: &mut DocumentMut| set(doc, arg).unwrap_err();
        assert_eq!(err("no_such = 1", &mut doc), "no_such: unknown parameter");
        assert!(
            err("message_size_limit = lots", &mut doc).contains("`lots` is not a size"),
            "{}",
            err("message_size_limit = lots", &mut doc)
        );
        assert!(err("smtpd_forbid_bare_newline = no", &mut doc).starts_with("smtpd_forbid_bare_newline: `no`"));
        assert_eq!(err("relayhost", &mut doc), "`relayhost`: expected name = value");
    }
}
