//! Postfix lookup tables read straight from their text source: the files
//! operators feed to postmap(1) (`/etc/postfix/virtual`, transport maps) and
//! postalias(1) (`/etc/aliases`). No `.db` is built or needed: `hash:PATH`
//! and `texthash:PATH` both read the text at `PATH`.
//!
//! This module owns the table spec (`hash:/path`), the postmap source
//! grammar, the case folding of keys, and `Table`: a handle that notices
//! when its file changes and loads it again, keeping the previous good
//! version when the new one has a bad line. Parsing does no I/O; loading is
//! bounded in file size and line length.
//!
//! The grammar, as postmap(1) defines it:
//! - a logical line starts with non-whitespace text; a physical line that
//!   starts with whitespace continues it; blank lines and lines whose first
//!   non-whitespace character is `#` are ignored (also between a line and
//!   its continuation), `#` elsewhere is data;
//! - `key whitespace value`: the value is the rest of the line with
//!   surrounding whitespace removed; a key may be written in double quotes
//!   to contain whitespace (`\"` and `\\` escape inside the quotes);
//! - keys are folded to lower case, and so are the keys looked up;
//! - a later duplicate key is reported and the first one kept.

use std::collections::HashMap;
use std::fmt;
use std::fs::File;
use std::io::{self, Read};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

/// Largest table source accepted, in bytes.
pub(crate) const MAX_FILE_SIZE: u64 = 64 * 1024 * 1024;
/// Longest logical line (a line with its continuations), in bytes.
pub(crate) const MAX_LINE: usize = 256 * 1024;
/// How often a lookup may look at the file to see whether it changed.
pub(crate) const CHECK_INTERVAL: Duration = Duration::from_secs(1);

/// The table types posthorn reads. Both read the text source; `hash` exists
/// so that Postfix configurations (`hash:/etc/postfix/virtual`) work as
/// they are.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum TableKind {
    Hash,
    TextHash,
}

impl TableKind {
    pub(crate) fn name(self) -> &'static str {
        match self {
            TableKind::Hash => "hash",
            TableKind::TextHash => "texthash",
        }
    }
}

/// A table as configured: `hash:/etc/postfix/virtual`,
/// `texthash:/etc/postfix/virtual`, or a bare path (= `hash:`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct TableSpec {
    pub(crate) kind: TableKind,
    pub(crate) path: PathBuf,
}

impl FromStr for TableSpec {
    type Err = TableError;

    fn from_str(s: &str) -> Result<Self, TableError> {
        let bad = |why: &str| TableError::Spec(format!("{s:?}: {why}"));
        let s = s.trim();
        // A path never starts with a type name, but it may contain a colon.
        let (kind, path) = match s.split_once(':') {
            Some((t, p)) if !s.starts_with('/') && !s.starts_with('.') => {
                let kind = match t.to_ascii_lowercase().as_str() {
                    "hash" => TableKind::Hash,
                    "texthash" => TableKind::TextHash,
                    _ => {
                        return Err(bad(&format!(
                            "unsupported table type {t:?} (posthorn reads the text source of hash: and texthash: tables)"
                        )));
                    }
                };
                (kind, p)
            }
            _ => (TableKind::Hash, s),
        };
        if path.is_empty() {
            return Err(bad("missing file name"));
        }
        Ok(TableSpec { kind, path: PathBuf::from(path) })
    }
}

impl fmt::Display for TableSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.kind.name(), self.path.display())
    }
}

impl TableSpec {
    /// The text file to read. Postfix opens `PATH.db` for `hash:PATH`; we
    /// read the source `PATH`. A spec written with the `.db` name
    /// (`hash:/etc/postfix/virtual.db`) whose file is missing falls back to
    /// the source beside it.
    pub(crate) fn source(&self) -> PathBuf {
        if !self.path.exists()
            && let Some(stem) = self.path.to_str().and_then(|p| p.strip_suffix(".db"))
            && Path::new(stem).is_file()
        {
            return PathBuf::from(stem);
        }
        self.path.clone()
    }
}

/// Which grammar a table's lines follow.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Syntax {
    /// postmap(1) source, `key value` (virtual(5), access lists, local users).
    Map,
    /// transport(5): postmap source whose values must parse as a next hop.
    Transport,
    /// aliases(5): `name: value, value`; commands, files and includes refused.
    Aliases,
    /// smtp_tls_policy_maps: postmap source whose values must parse as a
    /// TLS policy (`secure match=.example.com`).
    TlsPolicy,
}

/// A problem with one logical line, numbered from 1 (its first physical line).
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct LineError {
    pub(crate) line: usize,
    pub(crate) message: String,
}

/// Why a table could not be opened or loaded.
#[derive(Debug, thiserror::Error)]
pub(crate) enum TableError {
    #[error("bad table: {0}")]
    Spec(String),
    /// Worded like Postfix's `open PATH: No such file or directory`.
    #[error("open {}: {}", path.display(), strerror(source))]
    Open { path: PathBuf, source: io::Error },
    #[error("read {}: {}", path.display(), strerror(source))]
    Read { path: PathBuf, source: io::Error },
    #[error("{}: file too large ({size} bytes; at most {MAX_FILE_SIZE})", path.display())]
    TooLarge { path: PathBuf, size: u64 },
    /// Every bad line; the message shows the first one.
    #[error("{}", syntax_summary(path, errors))]
    Syntax { path: PathBuf, errors: Vec<LineError> },
}

fn syntax_summary(path: &Path, errors: &[LineError]) -> String {
    let Some(first) = errors.first() else { return format!("{}: bad table", path.display()) };
    let mut s = format!("{}:{}: {}", path.display(), first.line, first.message);
    if errors.len() > 1 {
        s.push_str(&format!(" (and {} more bad lines)", errors.len() - 1));
    }
    s
}

pub(crate) use crate::message::outcome::strerror;

/// Folds a key the way Postfix does before storing or looking it up.
pub(crate) fn fold(key: &str) -> String {
    if key.is_ascii() { key.to_ascii_lowercase() } else { key.to_lowercase() }
}

/// One entry as the file has it: the key folded, the value as written.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Entry {
    pub(crate) key: String,
    pub(crate) value: String,
    pub(crate) line: usize,
}

/// One parsed version of a table: the good entries in file order, plus the
/// bad lines and warnings (duplicates) found on the way.
#[derive(Clone, Debug, Default)]
pub struct Contents {
    entries: Vec<Entry>,
    index: HashMap<String, usize>,
    pub(crate) errors: Vec<LineError>,
    pub(crate) warnings: Vec<LineError>,
}

impl Contents {
    /// The entry for `key` (folded here).
    pub(crate) fn find(&self, key: &str) -> Option<&Entry> {
        self.index.get(&fold(key)).map(|&i| &self.entries[i])
    }

    pub(crate) fn get(&self, key: &str) -> Option<&str> {
        self.find(key).map(|e| e.value.as_str())
    }

    /// The entries in file order.
    pub(crate) fn entries(&self) -> &[Entry] {
        &self.entries
    }

    pub(crate) fn len(&self) -> usize {
        self.entries.len()
    }

    /// Adds an entry unless the key is already there (then: a warning).
    fn insert(&mut self, key: String, value: String, line: usize) {
        if let Some(&i) = self.index.get(&key) {
            let first = self.entries[i].line;
            self.warnings.push(LineError {
                line,
                message: format!("duplicate entry: \"{key}\" (keeping the one on line {first})"),
            });
            return;
        }
        self.index.insert(key.clone(), self.entries.len());
        self.entries.push(Entry { key, value, line });
    }
}

/// Parses a whole table source. Never fails: bad lines are collected in
/// `errors` and left out, so callers choose between refusing the version
/// (a `Table`) and answering from the good lines (`postmap -q`).
pub fn parse(text: &str, syntax: Syntax) -> Contents {
    let mut out = Contents::default();
    for (line, logical) in logical_lines(text) {
        let parsed = logical.and_then(|l| match syntax {
            Syntax::Map => parse_map_line(&l),
            Syntax::Transport => {
                parse_map_line(&l).and_then(|(k, v)| super::transport::TransportValue::parse(&v).map(|_| (k, v)))
            }
            Syntax::Aliases => super::aliases::parse_line(&l),
            Syntax::TlsPolicy => {
                parse_map_line(&l).and_then(|(k, v)| crate::deliver::tls_policy::parse_value(&v).map(|_| (k, v)))
            }
        });
        match parsed {
            Ok((key, value)) => out.insert(fold(&key), value, line),
            Err(message) => out.errors.push(LineError { line, message }),
        }
    }
    out
}

/// Joins continuation lines: yields (number of the first physical line,
/// the logical line or why it is bad). Comments and blank lines are skipped.
pub(crate) fn logical_lines(text: &str) -> Vec<(usize, Result<String, String>)> {
    let mut out: Vec<(usize, Result<String, String>)> = Vec::new();
    let mut current: Option<(usize, Result<String, String>)> = None;
    for (i, raw) in text.split('\n').enumerate() {
        let number = i + 1;
        let line = raw.strip_suffix('\r').unwrap_or(raw);
        let trimmed = line.trim_start();
        if trimmed.is_empty() || trimmed.starts_with('#') {
            continue;
        }
        if line.len() > MAX_LINE {
            out.extend(current.take());
            out.push((number, Err(format!("line longer than {MAX_LINE} bytes"))));
            continue;
        }
        if trimmed.len() < line.len() {
            // Starts with whitespace: continues the current logical line.
            match &mut current {
                Some((_, state)) => {
                    if let Ok(text) = state {
                        if text.len() + line.len() > MAX_LINE {
                            *state = Err(format!("logical line longer than {MAX_LINE} bytes"));
                        } else {
                            text.push_str(line);
                        }
                    }
                }
                None => out.push((number, Err("logical line must not start with whitespace".into()))),
            }
            continue;
        }
        out.extend(current.take());
        current = Some((number, Ok(line.to_string())));
    }
    out.extend(current);
    out
}

/// `key whitespace value`, the key possibly in double quotes.
fn parse_map_line(line: &str) -> Result<(String, String), String> {
    let (key, rest) = if line.starts_with('"') {
        let (key, rest) = unquote_prefix(line)?;
        if !rest.is_empty() && !rest.starts_with(char::is_whitespace) {
            return Err("expected whitespace after the quoted key".into());
        }
        (key, rest)
    } else {
        let end = line.find(char::is_whitespace).unwrap_or(line.len());
        (line[..end].to_string(), &line[end..])
    };
    let value = rest.trim();
    if key.is_empty() {
        return Err("empty key".into());
    }
    if value.is_empty() {
        return Err("expected format: key whitespace value".into());
    }
    Ok((key, value.to_string()))
}

pub(crate) use crate::message::alias_items::{split_list, unquote_prefix};

/// Reads a table source, bounded by [`MAX_FILE_SIZE`], and parses it.
/// Bad lines are in the result's `errors`, not an `Err`.
pub(crate) fn load_file(path: &Path, syntax: Syntax) -> Result<Contents, TableError> {
    let (text, _) = read_bounded(path)?;
    Ok(parse(&text, syntax))
}

/// What identifies one version of a file without reading it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Identity {
    dev: u64,
    ino: u64,
    size: u64,
    mtime: i64,
    mtime_nsec: i64,
}

impl Identity {
    fn of(m: &std::fs::Metadata) -> Self {
        Identity { dev: m.dev(), ino: m.ino(), size: m.size(), mtime: m.mtime(), mtime_nsec: m.mtime_nsec() }
    }
}

fn read_bounded(path: &Path) -> Result<(String, Identity), TableError> {
    let file = File::open(path).map_err(|source| TableError::Open { path: path.into(), source })?;
    let read_err = |source| TableError::Read { path: path.into(), source };
    let meta = file.metadata().map_err(read_err)?;
    if meta.is_dir() {
        return Err(read_err(io::Error::from_raw_os_error(21 /* EISDIR */)));
    }
    if meta.size() > MAX_FILE_SIZE {
        return Err(TableError::TooLarge { path: path.into(), size: meta.size() });
    }
    let mut bytes = Vec::with_capacity(meta.size() as usize);
    file.take(MAX_FILE_SIZE + 1).read_to_end(&mut bytes).map_err(read_err)?;
    if bytes.len() as u64 > MAX_FILE_SIZE {
        return Err(TableError::TooLarge { path: path.into(), size: bytes.len() as u64 });
    }
    let text = match String::from_utf8(bytes) {
        Ok(t) => t,
        Err(e) => {
            let at = e.utf8_error().valid_up_to();
            let line = e.as_bytes()[..at].iter().filter(|&&b| b == b'\n').count() + 1;
            let errors = vec![LineError { line, message: "not valid UTF-8".into() }];
            return Err(TableError::Syntax { path: path.into(), errors });
        }
    };
    Ok((text, Identity::of(&meta)))
}

/// A lookup table in use: the current good version of a file, picked up
/// again when the file changes (checked on lookup at most once per
/// [`CHECK_INTERVAL`], or on [`Table::refresh`]). A new version with a bad
/// line is logged (file and line) and ignored: the previous one stays.
///
/// Lookups take no lock that I/O holds, except for the check itself: a
/// stat once a second, and a read when the file changed (bounded by
/// [`MAX_FILE_SIZE`]; callers on an async runtime with huge tables may call
/// [`Table::refresh`] from a blocking task instead). Share a `Table`
/// behind an `Arc`.
#[derive(Debug)]
pub(crate) struct Table {
    name: String,
    syntax: Syntax,
    /// `None` for a table built from text ([`Table::from_text`]).
    source: Option<PathBuf>,
    current: RwLock<Arc<Contents>>,
    check: Mutex<Check>,
}

#[derive(Debug)]
struct Check {
    identity: Option<Identity>,
    last: Instant,
    interval: Duration,
}

impl Table {
    /// Opens and loads a table; a bad line makes this fail (file and line
    /// in the error). Duplicate keys are logged as warnings.
    pub(crate) fn open(spec: &TableSpec, syntax: Syntax) -> Result<Table, TableError> {
        let path = spec.source();
        let (contents, identity) = load_checked(&path, syntax)?;
        Ok(Table {
            name: spec.to_string(),
            syntax,
            source: Some(path),
            current: RwLock::new(Arc::new(contents)),
            check: Mutex::new(Check { identity: Some(identity), last: Instant::now(), interval: CHECK_INTERVAL }),
        })
    }

    /// Parses `spec` and opens it.
    pub(crate) fn open_str(spec: &str, syntax: Syntax) -> Result<Table, TableError> {
        Table::open(&spec.parse()?, syntax)
    }

    /// A table that is not backed by a file (tests, inline configuration);
    /// `name` stands for the file in messages.
    #[cfg(test)]
    pub(crate) fn from_text(name: &str, text: &str, syntax: Syntax) -> Result<Table, TableError> {
        let contents = parse(text, syntax);
        if !contents.errors.is_empty() {
            return Err(TableError::Syntax { path: name.into(), errors: contents.errors });
        }
        Ok(Table {
            name: name.to_string(),
            syntax,
            source: None,
            current: RwLock::new(Arc::new(contents)),
            check: Mutex::new(Check { identity: None, last: Instant::now(), interval: CHECK_INTERVAL }),
        })
    }

    /// The table as configured (`hash:/etc/postfix/virtual`), for messages.
    pub(crate) fn name(&self) -> &str {
        &self.name
    }

    /// The file read, if any.
    pub(crate) fn path(&self) -> Option<&Path> {
        self.source.as_deref()
    }

    /// Changes how often lookups look at the file (tests use zero).
    #[cfg(test)]
    pub(crate) fn set_check_interval(&self, interval: Duration) {
        self.check.lock().unwrap_or_else(|e| e.into_inner()).interval = interval;
    }

    /// The value for `key` (case-insensitive).
    pub(crate) fn lookup(&self, key: &str) -> Option<String> {
        self.find(key).map(|e| e.value)
    }

    /// The entry for `key` with its line number.
    pub(crate) fn find(&self, key: &str) -> Option<Entry> {
        self.maybe_refresh();
        self.contents().find(key).cloned()
    }

    /// The version in use, as it is now (no check for changes).
    pub(crate) fn contents(&self) -> Arc<Contents> {
        self.current.read().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// Looks at the file now and loads it if it changed. `Ok(true)`: a new
    /// version is in use; `Ok(false)`: unchanged; `Err`: the file changed
    /// but could not be used, the previous version stays (already logged).
    #[cfg(test)]
    pub(crate) fn refresh(&self) -> Result<bool, TableError> {
        let mut check = self.check.lock().unwrap_or_else(|e| e.into_inner());
        self.refresh_locked(&mut check)
    }

    /// The lookup-time check: at most once per interval, and never waiting
    /// for another thread that is already loading.
    fn maybe_refresh(&self) {
        let Ok(mut check) = self.check.try_lock() else { return };
        if self.source.is_none() || check.last.elapsed() < check.interval {
            return;
        }
        let _ = self.refresh_locked(&mut check);
    }

    fn refresh_locked(&self, check: &mut Check) -> Result<bool, TableError> {
        let Some(path) = &self.source else { return Ok(false) };
        check.last = Instant::now();
        let now = match std::fs::metadata(path) {
            Ok(m) => Identity::of(&m),
            Err(source) => {
                let e = TableError::Open { path: path.clone(), source };
                // Report a vanished file once, not on every check.
                if check.identity.take().is_some() {
                    tracing::error!("table {}: {e}; keeping the previous version", self.name);
                }
                return Err(e);
            }
        };
        if check.identity == Some(now) {
            return Ok(false);
        }
        match load_checked(path, self.syntax) {
            Ok((contents, identity)) => {
                check.identity = Some(identity);
                tracing::info!("table {} loaded again: {} entries", self.name, contents.len());
                *self.current.write().unwrap_or_else(|e| e.into_inner()) = Arc::new(contents);
                Ok(true)
            }
            Err(e) => {
                // Remember this version so a bad file is reported once, and
                // loaded again as soon as it changes.
                check.identity = Some(now);
                tracing::error!("table {}: {e}; keeping the previous version", self.name);
                Err(e)
            }
        }
    }
}

/// Opens every table of a configuration list (`virtual_alias_maps =
/// ["hash:/etc/postfix/virtual", ...]`), in order.
pub(crate) fn open_all<S: AsRef<str>>(specs: &[S], syntax: Syntax) -> Result<Vec<Arc<Table>>, TableError> {
    specs.iter().map(|s| Table::open_str(s.as_ref(), syntax).map(Arc::new)).collect()
}

/// Reads and parses a file, refusing it when any line is bad; logs the
/// duplicate-key warnings.
fn load_checked(path: &Path, syntax: Syntax) -> Result<(Contents, Identity), TableError> {
    let (text, identity) = read_bounded(path)?;
    let mut contents = parse(&text, syntax);
    if !contents.errors.is_empty() {
        return Err(TableError::Syntax { path: path.into(), errors: std::mem::take(&mut contents.errors) });
    }
    for w in &contents.warnings {
        tracing::warn!("{}:{}: {}", path.display(), w.line, w.message);
    }
    Ok((contents, identity))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    /// (key, value, line)
    type Row = (String, String, usize);

    fn entries(text: &str) -> Vec<Row> {
        let c = parse(text, Syntax::Map);
        assert!(c.errors.is_empty(), "{text:?}: {:?}", c.errors);
        c.entries().iter().map(|e| (e.key.clone(), e.value.clone(), e.line)).collect()
    }

    #[test]
    fn parses_postmap_source() {
        let e = |k: &str, v: &str, l| (k.to_string(), v.to_string(), l);
        let cases: &[(&str, Vec<Row>)] = &[
            ("root admin@example.org\n", vec![e("root", "admin@example.org", 1)]),
            ("root\tadmin@example.org", vec![e("root", "admin@example.org", 1)]),
            ("root   a@x, b@x  \n", vec![e("root", "a@x, b@x", 1)]),
            ("# comment\n\n   \nroot a@x\n", vec![e("root", "a@x", 4)]),
            ("  # indented comment\nroot a@x\n", vec![e("root", "a@x", 2)]),
            ("Root@Example.ORG a@x\n", vec![e("root@example.org", "a@x", 1)]),
            ("root A@X\n", vec![e("root", "A@X", 1)]),
            ("root a@x,\n  b@x\n", vec![e("root", "a@x,  b@x", 1)]),
            ("root a@x,\n# between\n\tb@x\nnext c@x\n", vec![e("root", "a@x,\tb@x", 1), e("next", "c@x", 4)]),
            ("root a@x # not a comment\n", vec![e("root", "a@x # not a comment", 1)]),
            ("root a@x\r\nops b@x\r\n", vec![e("root", "a@x", 1), e("ops", "b@x", 2)]),
            ("\"john smith\" js@x\n", vec![e("john smith", "js@x", 1)]),
            ("\"a\\\"b\\\\c\" v\n", vec![e("a\"b\\c", "v", 1)]),
            ("@staging.example.org team@example.org\n", vec![e("@staging.example.org", "team@example.org", 1)]),
            ("Ünïcode@X v\n", vec![e("ünïcode@x", "v", 1)]),
            ("", vec![]),
        ];
        for (text, want) in cases {
            assert_eq!(&entries(text), want, "{text:?}");
        }
    }

    #[test]
    fn reports_bad_lines_with_numbers() {
        let cases: &[(&str, &[(usize, &str)])] = &[
            ("root\n", &[(1, "expected format: key whitespace value")]),
            ("ok v\nroot   \nok2 v\n", &[(2, "expected format: key whitespace value")]),
            ("  leading v\n", &[(1, "logical line must not start with whitespace")]),
            ("\"open v\n", &[(1, "missing closing double quote")]),
            ("\"k\"v\n", &[(1, "expected whitespace after the quoted key")]),
            ("\"\" v\n", &[(1, "empty key")]),
            ("a\n\nb\n", &[(1, "expected format: key whitespace value"), (3, "expected format: key whitespace value")]),
        ];
        for (text, want) in cases {
            let c = parse(text, Syntax::Map);
            let got: Vec<(usize, &str)> = c.errors.iter().map(|e| (e.line, e.message.as_str())).collect();
            assert_eq!(&got, want, "{text:?}");
        }
    }

    #[test]
    fn continuation_line_number_is_the_first_line() {
        let c = parse("a 1\nb\n  \n  2,\n  3\nc\n", Syntax::Map);
        assert_eq!(c.get("b"), Some("2,  3"));
        assert_eq!(c.find("b").unwrap().line, 2);
        assert_eq!(c.errors, vec![LineError { line: 6, message: "expected format: key whitespace value".into() }]);
    }

    #[test]
    fn long_lines_are_refused() {
        let long = format!("k {}\nok v\n", "x".repeat(MAX_LINE));
        let c = parse(&long, Syntax::Map);
        assert_eq!(c.errors.len(), 1);
        assert_eq!(c.errors[0].line, 1);
        assert_eq!(c.get("ok"), Some("v"));
        // Continuations that add up past the limit.
        let piece = format!("  {}\n", "y".repeat(MAX_LINE / 2));
        let text = format!("k v\n{piece}{piece}{piece}after v\n");
        let c = parse(&text, Syntax::Map);
        assert_eq!(c.errors.len(), 1, "{:?}", c.errors);
        assert!(c.errors[0].message.contains("logical line longer"));
        assert_eq!(c.get("after"), Some("v"));
    }

    #[test]
    fn duplicate_keeps_the_first_and_warns() {
        let c = parse("root a@x\nROOT b@x\n", Syntax::Map);
        assert_eq!(c.get("root"), Some("a@x"));
        assert_eq!(c.len(), 1);
        assert_eq!(c.warnings.len(), 1);
        assert_eq!(c.warnings[0].line, 2);
        assert!(c.warnings[0].message.starts_with("duplicate entry: \"root\""), "{:?}", c.warnings);
        assert!(c.errors.is_empty());
    }

    #[test]
    fn lookups_fold_case() {
        let c = parse("Root a@x\nuser@Example.org b@x\n", Syntax::Map);
        for k in ["root", "ROOT", "rOoT"] {
            assert_eq!(c.get(k), Some("a@x"), "{k}");
        }
        assert_eq!(c.get("USER@EXAMPLE.ORG"), Some("b@x"));
        assert_eq!(c.get("nobody"), None);
    }

    #[test]
    fn splits_lists() {
        let cases: &[(&str, &[&str])] = &[
            ("a@x", &["a@x"]),
            ("a@x, b@x", &["a@x", "b@x"]),
            ("a@x,b@x", &["a@x", "b@x"]),
            ("a@x b@x\tc@x", &["a@x", "b@x", "c@x"]),
            (" , a@x ,, b@x , ", &["a@x", "b@x"]),
            ("\"a, b\"@x, c@x", &["\"a, b\"@x", "c@x"]),
            ("\"a \\\" b\"@x c", &["\"a \\\" b\"@x", "c"]),
            ("<a@x>, b@x", &["a@x", "b@x"]),
            ("", &[]),
        ];
        for (value, want) in cases {
            assert_eq!(split_list(value), *want, "{value:?}");
        }
    }

    #[test]
    fn parses_specs() {
        type Want = Result<(TableKind, &'static str), &'static str>;
        let cases: &[(&str, Want)] = &[
            ("hash:/etc/postfix/virtual", Ok((TableKind::Hash, "/etc/postfix/virtual"))),
            ("texthash:/etc/postfix/virtual", Ok((TableKind::TextHash, "/etc/postfix/virtual"))),
            ("HASH:/x", Ok((TableKind::Hash, "/x"))),
            ("/etc/aliases", Ok((TableKind::Hash, "/etc/aliases"))),
            ("relative/file", Ok((TableKind::Hash, "relative/file"))),
            ("/odd:name", Ok((TableKind::Hash, "/odd:name"))),
            ("hash:", Err("missing file name")),
            ("regexp:/etc/postfix/re", Err("unsupported table type \"regexp\"")),
            ("", Err("missing file name")),
        ];
        for (s, want) in cases {
            match (s.parse::<TableSpec>(), want) {
                (Ok(spec), Ok((kind, path))) => {
                    assert_eq!((spec.kind, spec.path.to_str().unwrap()), (*kind, *path), "{s}")
                }
                (Err(e), Err(msg)) => assert!(e.to_string().contains(msg), "{s}: {e}"),
                (got, want) => panic!("{s}: got {got:?}, want {want:?}"),
            }
        }
        assert_eq!("texthash:/a/b".parse::<TableSpec>().unwrap().to_string(), "texthash:/a/b");
        assert_eq!("/a/b".parse::<TableSpec>().unwrap().to_string(), "hash:/a/b");
    }

    #[test]
    fn db_suffix_falls_back_to_the_source() {
        let dir = tempfile::tempdir().unwrap();
        let src = dir.path().join("virtual");
        std::fs::write(&src, "root a@x\n").unwrap();
        let spec: TableSpec = format!("hash:{}.db", src.display()).parse().unwrap();
        assert_eq!(spec.source(), src);
        let t = Table::open(&spec, Syntax::Map).unwrap();
        assert_eq!(t.lookup("root").as_deref(), Some("a@x"));
    }

    #[test]
    fn open_errors_name_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let missing = dir.path().join("nope");
        let e = Table::open_str(&format!("hash:{}", missing.display()), Syntax::Map).unwrap_err();
        assert_eq!(e.to_string(), format!("open {}: No such file or directory", missing.display()));

        let bad = dir.path().join("virtual");
        std::fs::write(&bad, "ok v\n\nbroken\nalso\n").unwrap();
        let e = Table::open_str(&format!("texthash:{}", bad.display()), Syntax::Map).unwrap_err();
        assert_eq!(
            e.to_string(),
            format!("{}:3: expected format: key whitespace value (and 1 more bad lines)", bad.display())
        );

        std::fs::write(&bad, b"ok v\nk \xff\n").unwrap();
        let e = Table::open_str(bad.to_str().unwrap(), Syntax::Map).unwrap_err();
        assert_eq!(e.to_string(), format!("{}:2: not valid UTF-8", bad.display()));

        let e = Table::open_str(dir.path().to_str().unwrap(), Syntax::Map).unwrap_err();
        assert!(e.to_string().starts_with("read "), "{e}");
    }

    #[test]
    fn too_large_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("big");
        let f = File::create(&path).unwrap();
        f.set_len(MAX_FILE_SIZE + 1).unwrap(); // sparse: costs no disk
        let e = Table::open_str(path.to_str().unwrap(), Syntax::Map).unwrap_err();
        assert!(matches!(e, TableError::TooLarge { .. }), "{e}");
        assert!(e.to_string().contains("file too large"), "{e}");
    }

    /// Rewrites a file so that its identity surely changes (new inode).
    fn replace(path: &Path, text: &str) {
        let tmp = path.with_extension("tmp");
        let mut f = File::create(&tmp).unwrap();
        f.write_all(text.as_bytes()).unwrap();
        drop(f);
        std::fs::rename(&tmp, path).unwrap();
    }

    #[test]
    fn picks_up_changes_and_keeps_the_last_good_version() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("virtual");
        std::fs::write(&path, "root a@x\n").unwrap();
        let t = Table::open_str(&format!("hash:{}", path.display()), Syntax::Map).unwrap();
        assert_eq!(t.name(), format!("hash:{}", path.display()));
        assert_eq!(t.lookup("root").as_deref(), Some("a@x"));
        assert!(!t.refresh().unwrap(), "unchanged file is not loaded again");

        replace(&path, "root b@x\nops c@x\n");
        assert!(t.refresh().unwrap());
        assert_eq!(t.lookup("root").as_deref(), Some("b@x"));
        assert_eq!(t.lookup("ops").as_deref(), Some("c@x"));

        // A bad line: the error names file and line; the old version stays.
        replace(&path, "root d@x\n\nbroken\n");
        let e = t.refresh().unwrap_err();
        assert_eq!(e.to_string(), format!("{}:3: expected format: key whitespace value", path.display()));
        assert_eq!(t.lookup("root").as_deref(), Some("b@x"));
        assert_eq!(t.lookup("ops").as_deref(), Some("c@x"));
        // Reported once: the same bad version is not tried again.
        assert!(!t.refresh().unwrap());

        // Fixed: picked up.
        replace(&path, "root e@x\n");
        assert!(t.refresh().unwrap());
        assert_eq!(t.lookup("root").as_deref(), Some("e@x"));
        assert_eq!(t.lookup("ops"), None);

        // Removed: the previous version stays; back again: loaded.
        std::fs::remove_file(&path).unwrap();
        assert!(matches!(t.refresh(), Err(TableError::Open { .. })));
        assert_eq!(t.lookup("root").as_deref(), Some("e@x"));
        replace(&path, "root f@x\n");
        assert!(t.refresh().unwrap());
        assert_eq!(t.lookup("root").as_deref(), Some("f@x"));
    }

    #[test]
    fn in_place_edit_of_the_same_size_is_noticed() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("virtual");
        std::fs::write(&path, "root a@x\n").unwrap();
        let t = Table::open_str(path.to_str().unwrap(), Syntax::Map).unwrap();
        let before = std::fs::metadata(&path).unwrap().modified().unwrap();
        // Same inode, same size; only the mtime tells.
        std::fs::write(&path, "root b@x\n").unwrap();
        let f = File::options().write(true).open(&path).unwrap();
        f.set_modified(before + Duration::from_secs(2)).unwrap();
        drop(f);
        assert!(t.refresh().unwrap());
        assert_eq!(t.lookup("root").as_deref(), Some("b@x"));
    }

    #[test]
    fn lookups_check_for_changes_at_most_once_per_interval() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("virtual");
        std::fs::write(&path, "root a@x\n").unwrap();
        let t = Table::open_str(path.to_str().unwrap(), Syntax::Map).unwrap();
        replace(&path, "root b@x\n");
        // Just opened: the default interval has not passed.
        assert_eq!(t.lookup("root").as_deref(), Some("a@x"));
        t.set_check_interval(Duration::ZERO);
        assert_eq!(t.lookup("root").as_deref(), Some("b@x"));
        replace(&path, "root c@x\nbad\n");
        assert_eq!(t.lookup("root").as_deref(), Some("b@x"));
    }

    #[test]
    fn opens_configuration_lists() {
        let dir = tempfile::tempdir().unwrap();
        let (a, b) = (dir.path().join("a"), dir.path().join("b"));
        std::fs::write(&a, "k 1\n").unwrap();
        std::fs::write(&b, "k 2\n").unwrap();
        let specs = [format!("hash:{}", a.display()), format!("texthash:{}", b.display())];
        let tables = open_all(&specs, Syntax::Map).unwrap();
        assert_eq!(tables.iter().map(|t| t.lookup("k").unwrap()).collect::<Vec<_>>(), ["1", "2"]);
        assert_eq!(tables[1].name(), specs[1]);
        assert!(open_all(&["hash:/nonexistent/x"], Syntax::Map).is_err());
        assert!(open_all::<&str>(&[], Syntax::Map).unwrap().is_empty());
    }

    #[test]
    fn from_text_tables() {
        let t = Table::from_text("inline", "a 1\n", Syntax::Map).unwrap();
        assert_eq!(t.lookup("A").as_deref(), Some("1"));
        assert!(!t.refresh().unwrap());
        assert_eq!(t.path(), None);
        let e = Table::from_text("inline", "a\n", Syntax::Map).unwrap_err();
        assert_eq!(e.to_string(), "inline:1: expected format: key whitespace value");
    }

    #[test]
    fn strerror_drops_the_os_error_number() {
        assert_eq!(strerror(&io::Error::from_raw_os_error(2)), "No such file or directory");
        assert_eq!(strerror(&io::Error::other("plain")), "plain");
    }
}
