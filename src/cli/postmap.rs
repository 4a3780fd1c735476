//! `postmap`: query and check lookup tables the way Postfix's postmap(1)
//! does, reading the text source directly (no `.db` is built).
//!
//! - `postmap -q KEY type:PATH...`: print the value, exit 0; exit 1 when no
//!   table has the key. Keys are folded to lower case, as Postfix does.
//! - `postmap -q - type:PATH...`: keys from stdin, one per line; print
//!   `key<TAB>value` for each one found; exit 0 if any was found.
//! - `postmap -s type:PATH...`: print every entry as `key<TAB>value`.
//! - `postmap type:PATH...`: check the files; report bad lines and
//!   duplicate keys with their line numbers; exit 1 on a bad line. Prints
//!   nothing for a good file, like postmap.
//!
//! `-c DIR`, `-v`, `-n`, `-N` are accepted and ignored; `-w` silences the
//! duplicate warnings. Other options are usage errors (exit 64).

use super::exit;
use crate::route::table::{Contents, Syntax, TableError, TableSpec, load_file};
use std::ffi::OsString;
use std::io::{BufRead, Write};

const USAGE: &str = "usage: postmap [-nNsvw] [-c config_dir] [-q key] [type:]file...";

/// What to do, from the command line.
#[derive(Debug, PartialEq, Eq)]
enum Mode {
    Check,
    Query(String),
    Dump,
}

#[derive(Debug, PartialEq, Eq)]
struct Options {
    mode: Mode,
    warn_duplicates: bool,
    maps: Vec<String>,
}

/// Entry point for the name `postmap`; `args` are the arguments after the
/// program name. Returns the exit status.
pub(crate) fn main(args: &[OsString]) -> u8 {
    let stdin = std::io::stdin();
    run(args, &mut stdin.lock(), &mut std::io::stdout().lock(), &mut std::io::stderr().lock())
}

/// [`main`] with its streams passed in.
pub(crate) fn run(args: &[OsString], stdin: &mut dyn BufRead, out: &mut dyn Write, err: &mut dyn Write) -> u8 {
    let opts = match parse_args(args) {
        Ok(o) => o,
        Err(why) => {
            if !why.is_empty() {
                let _ = writeln!(err, "postmap: {why}");
            }
            let _ = writeln!(err, "postmap: fatal: {USAGE}");
            return exit::USAGE;
        }
    };
    let mut tables = Vec::new();
    for map in &opts.maps {
        match open(map) {
            Ok(t) => tables.push(t),
            Err(e) => {
                let _ = writeln!(err, "postmap: fatal: {e}");
                return 1;
            }
        }
    }
    let status = match &opts.mode {
        Mode::Check => check(&tables, opts.warn_duplicates, err),
        Mode::Query(key) if key == "-" => query_stdin(&tables, stdin, out, err),
        Mode::Query(key) => query(&tables, key, out, err),
        Mode::Dump => dump(&tables, out, err),
    };
    let _ = out.flush();
    status
}

/// A table read for postmap: its source path (for messages) and contents.
struct Loaded {
    path: String,
    contents: Contents,
}

fn open(map: &str) -> Result<Loaded, TableError> {
    let spec: TableSpec = map.parse()?;
    let path = spec.source();
    let contents = load_file(&path, Syntax::Map)?;
    Ok(Loaded { path: path.display().to_string(), contents })
}

/// Bad lines are warnings when querying: the good lines still answer, as
/// with Postfix's texthash tables.
fn warn_bad_lines(tables: &[Loaded], err: &mut dyn Write) {
    for t in tables {
        for e in &t.contents.errors {
            let _ = writeln!(err, "postmap: warning: {}:{}: {}", t.path, e.line, e.message);
        }
    }
}

fn lookup<'a>(tables: &'a [Loaded], key: &str) -> Option<&'a str> {
    tables.iter().find_map(|t| t.contents.get(key))
}

fn query(tables: &[Loaded], key: &str, out: &mut dyn Write, err: &mut dyn Write) -> u8 {
    warn_bad_lines(tables, err);
    match lookup(tables, key) {
        Some(value) => {
            let _ = writeln!(out, "{value}");
            0
        }
        None => 1,
    }
}

fn query_stdin(tables: &[Loaded], stdin: &mut dyn BufRead, out: &mut dyn Write, err: &mut dyn Write) -> u8 {
    warn_bad_lines(tables, err);
    let mut found = false;
    let mut line = Vec::new();
    loop {
        line.clear();
        match stdin.read_until(b'\n', &mut line) {
            Ok(0) => break,
            Ok(_) => {}
            Err(e) => {
                let _ = writeln!(err, "postmap: fatal: read standard input: {e}");
                return 1;
            }
        }
        let key = String::from_utf8_lossy(&line);
        let key = key.trim_end_matches(['\n', '\r']);
        if key.is_empty() {
            continue;
        }
        if let Some(value) = lookup(tables, key) {
            let _ = writeln!(out, "{key}\t{value}");
            found = true;
        }
    }
    if found { 0 } else { 1 }
}

fn dump(tables: &[Loaded], out: &mut dyn Write, err: &mut dyn Write) -> u8 {
    warn_bad_lines(tables, err);
    for t in tables {
        for e in t.contents.entries() {
            let _ = writeln!(out, "{}\t{}", e.key, e.value);
        }
    }
    0
}

fn check(tables: &[Loaded], warn_duplicates: bool, err: &mut dyn Write) -> u8 {
    let mut status = 0;
    for t in tables {
        for e in &t.contents.errors {
            let _ = writeln!(err, "postmap: error: {}:{}: {}", t.path, e.line, e.message);
            status = 1;
        }
        if warn_duplicates {
            for w in &t.contents.warnings {
                let _ = writeln!(err, "postmap: warning: {}:{}: {}", t.path, w.line, w.message);
            }
        }
    }
    status
}

/// getopt(3)-style: flags may be grouped (`-vq key`), an option's argument
/// may be glued on (`-qroot`), `--` ends the options. `Err("")` asks for
/// the usage text alone.
fn parse_args(args: &[OsString]) -> Result<Options, String> {
    let mut opts = Options { mode: Mode::Check, warn_duplicates: true, maps: Vec::new() };
    let mut args = args.iter().map(|a| a.to_str().ok_or("arguments must be UTF-8".to_string()));
    let mut only_operands = false;
    while let Some(arg) = args.next() {
        let arg = arg?;
        let flags = match arg.strip_prefix('-') {
            Some(flags) if !only_operands && !flags.is_empty() => flags,
            _ => {
                opts.maps.push(arg.to_string());
                continue;
            }
        };
        if flags == "-" {
            only_operands = true;
            continue;
        }
        for (i, flag) in flags.char_indices() {
            match flag {
                'q' | 'c' => {
                    let glued = &flags[i + 1..];
                    let value = if glued.is_empty() {
                        args.next().ok_or(format!("option -{flag} requires an argument"))??.to_string()
                    } else {
                        glued.to_string()
                    };
                    if flag == 'q' {
                        set_mode(&mut opts, Mode::Query(value))?;
                    }
                    break;
                }
                's' => set_mode(&mut opts, Mode::Dump)?,
                'w' => opts.warn_duplicates = false,
                'v' | 'n' | 'N' => {}
                other => return Err(format!("unsupported option -{other}")),
            }
        }
    }
    if opts.maps.is_empty() {
        return Err(String::new());
    }
    Ok(opts)
}

fn set_mode(opts: &mut Options, mode: Mode) -> Result<(), String> {
    if opts.mode != Mode::Check {
        return Err("options -q and -s exclude each other".into());
    }
    opts.mode = mode;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(a: &[&str]) -> Vec<OsString> {
        a.iter().map(OsString::from).collect()
    }

    /// Runs postmap; returns (status, stdout, stderr).
    fn postmap(a: &[&str], stdin: &str) -> (u8, String, String) {
        let (mut out, mut err) = (Vec::new(), Vec::new());
        let status = run(&args(a), &mut stdin.as_bytes(), &mut out, &mut err);
        (status, String::from_utf8(out).unwrap(), String::from_utf8(err).unwrap())
    }

    #[test]
    fn parses_arguments() {
        let o = |mode, maps: &[&str]| Options {
            mode,
            warn_duplicates: true,
            maps: maps.iter().map(|m| m.to_string()).collect(),
        };
        let cases: &[(&[&str], Result<Options, &str>)] = &[
            (&["hash:/v"], Ok(o(Mode::Check, &["hash:/v"]))),
            (&["-q", "root", "hash:/v"], Ok(o(Mode::Query("root".into()), &["hash:/v"]))),
            (&["-qroot", "hash:/v"], Ok(o(Mode::Query("root".into()), &["hash:/v"]))),
            (&["-vq", "root", "hash:/v"], Ok(o(Mode::Query("root".into()), &["hash:/v"]))),
            (&["-q", "-", "hash:/v"], Ok(o(Mode::Query("-".into()), &["hash:/v"]))),
            (&["-q", "-x", "hash:/v"], Ok(o(Mode::Query("-x".into()), &["hash:/v"]))),
            (&["-c", "/etc/postfix", "-q", "k", "a", "b"], Ok(o(Mode::Query("k".into()), &["a", "b"]))),
            (&["-s", "texthash:/v"], Ok(o(Mode::Dump, &["texthash:/v"]))),
            (&["--", "-odd"], Ok(o(Mode::Check, &["-odd"]))),
            (&["-x", "hash:/v"], Err("unsupported option -x")),
            (&["-f", "hash:/v"], Err("unsupported option -f")),
            (&["-q"], Err("option -q requires an argument")),
            (&["-q", "k"], Err("")),
            (&["-s", "-q", "k", "m"], Err("exclude each other")),
            (&[], Err("")),
        ];
        for (a, want) in cases {
            match (parse_args(&args(a)), want) {
                (Ok(got), Ok(want)) => assert_eq!(&got, want, "{a:?}"),
                (Err(got), Err(want)) => {
                    assert!(got.contains(want) && (want.is_empty() == got.is_empty()), "{a:?}: {got}")
                }
                (got, want) => panic!("{a:?}: got {got:?}, want {want:?}"),
            }
        }
        let o = parse_args(&args(&["-w", "m"])).unwrap();
        assert!(!o.warn_duplicates);
    }

    fn table(text: &str) -> (tempfile::TempDir, String) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("virtual");
        std::fs::write(&path, text).unwrap();
        let p = path.display().to_string();
        (dir, p)
    }

    #[test]
    fn queries() {
        let (_dir, p) = table("root admin@example.org, ops@example.org\n@staging.example.org team@example.org\n");
        let map = format!("hash:{p}");
        assert_eq!(postmap(&["-q", "root", &map], ""), (0, "admin@example.org, ops@example.org\n".into(), "".into()));
        assert_eq!(postmap(&["-q", "ROOT", &map], ""), (0, "admin@example.org, ops@example.org\n".into(), "".into()));
        assert_eq!(postmap(&["-q", "nobody", &map], ""), (1, "".into(), "".into()));
        assert_eq!(postmap(&["-q", "@staging.example.org", &format!("texthash:{p}")], "").0, 0);
        // A bare path is hash:.
        assert_eq!(postmap(&["-q", "root", &p], "").0, 0);
    }

    #[test]
    fn queries_from_stdin() {
        let (_dir, p) = table("root admin@example.org\nops ops@example.org\n");
        let map = format!("hash:{p}");
        let (status, out, _) = postmap(&["-q", "-", &map], "root\nnobody\n\nOps\r\n");
        assert_eq!((status, out.as_str()), (0, "root\tadmin@example.org\nOps\tops@example.org\n"));
        assert_eq!(postmap(&["-q", "-", &map], "nobody\n"), (1, "".into(), "".into()));
        assert_eq!(postmap(&["-q", "-", &map], ""), (1, "".into(), "".into()));
    }

    #[test]
    fn several_tables_first_one_wins() {
        let (_a, first) = table("root first@example.org\n");
        let (_b, second) = table("root second@example.org\nonly second-only@example.org\n");
        let (s, out, _) = postmap(&["-q", "root", &first, &second], "");
        assert_eq!((s, out.as_str()), (0, "first@example.org\n"));
        let (s, out, _) = postmap(&["-q", "only", &first, &second], "");
        assert_eq!((s, out.as_str()), (0, "second-only@example.org\n"));
    }

    #[test]
    fn checks_files() {
        let (_dir, p) = table("root a@x\n");
        assert_eq!(postmap(&[&format!("hash:{p}")], ""), (0, "".into(), "".into()));

        let (_dir, p) = table("root a@x\nbroken\nROOT b@x\n  \nalso-broken   \n");
        let (status, out, err) = postmap(&[&format!("hash:{p}")], "");
        assert_eq!((status, out.as_str()), (1, ""));
        assert_eq!(
            err,
            format!(
                "postmap: error: {p}:2: expected format: key whitespace value\n\
                 postmap: error: {p}:5: expected format: key whitespace value\n\
                 postmap: warning: {p}:3: duplicate entry: \"root\" (keeping the one on line 1)\n"
            )
        );
        // Duplicates alone are warnings, -w silences them.
        let (_dir, p) = table("root a@x\nroot b@x\n");
        let (status, _, err) = postmap(&[&p], "");
        assert_eq!(status, 0);
        assert!(err.contains(":2: duplicate entry"), "{err}");
        assert_eq!(postmap(&["-w", &p], ""), (0, "".into(), "".into()));
    }

    #[test]
    fn queries_answer_from_the_good_lines() {
        let (_dir, p) = table("broken\nroot a@x\n");
        let (status, out, err) = postmap(&["-q", "root", &p], "");
        assert_eq!((status, out.as_str()), (0, "a@x\n"));
        assert_eq!(err, format!("postmap: warning: {p}:1: expected format: key whitespace value\n"));
    }

    #[test]
    fn dumps() {
        let (_dir, p) = table("B 2\na 1\n");
        assert_eq!(postmap(&["-s", &p], ""), (0, "b\t2\na\t1\n".into(), "".into()));
    }

    #[test]
    fn fatal_errors() {
        let dir = tempfile::tempdir().unwrap();
        let missing = dir.path().join("virtual");
        let (status, out, err) = postmap(&["-q", "root", &format!("hash:{}", missing.display())], "");
        assert_eq!((status, out.as_str()), (1, ""));
        assert_eq!(err, format!("postmap: fatal: open {}: No such file or directory\n", missing.display()));
        let (status, _, err) = postmap(&[&format!("hash:{}", missing.display())], "");
        assert_eq!(status, 1);
        assert!(err.starts_with("postmap: fatal: open "), "{err}");
        let (status, _, err) = postmap(&["-q", "k", "regexp:/etc/postfix/re"], "");
        assert_eq!(status, 1);
        assert!(err.contains("unsupported table type"), "{err}");
    }

    #[test]
    fn usage_errors() {
        let (status, out, err) = postmap(&["-x", "hash:/v"], "");
        assert_eq!((status, out.as_str()), (64, ""));
        assert_eq!(err, format!("postmap: unsupported option -x\npostmap: fatal: {USAGE}\n"));
        let (status, _, err) = postmap(&[], "");
        assert_eq!(status, 64);
        assert_eq!(err, format!("postmap: fatal: {USAGE}\n"));
    }
}
