//! End-to-end: `postmap` as operators call it, through a symlink named
//! `postmap` to the posthorn binary (which dispatches on its invoked name).
//!
//! Scenarios:
//! 1. The runbook line `postmap -q 'root' hash:FILE && echo OK || echo 'No
//!    match found'`, run by sh, for a key that is there and one that is not.
//! 2. `-q KEY` prints the value (case-insensitive key), exit 0; exit 1 and
//!    no output when missing.
//! 3. `-q -` reads keys from stdin and prints `key<TAB>value` for the found ones.
//! 4. `postmap hash:FILE` checks the file: silent for a good one, bad lines
//!    with their numbers and exit 1 otherwise.
//! 5. A missing file is fatal with Postfix's wording; an unknown option is
//!    a usage error (64).

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

const BIN: &str = env!("CARGO_BIN_EXE_posthorn");

/// A temp dir with `bin/postmap -> posthorn` and a virtual table.
struct Fixture {
    dir: tempfile::TempDir,
}

impl Fixture {
    fn new(virtual_text: &str) -> Fixture {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir(dir.path().join("bin")).unwrap();
        std::os::unix::fs::symlink(BIN, dir.path().join("bin/postmap")).unwrap();
        std::fs::write(dir.path().join("virtual"), virtual_text).unwrap();
        Fixture { dir }
    }

    fn bin(&self) -> PathBuf {
        self.dir.path().join("bin")
    }

    fn table(&self) -> String {
        format!("hash:{}", self.dir.path().join("virtual").display())
    }

    fn postmap(&self, args: &[&str], stdin: &str) -> Output {
        run(Command::new(self.bin().join("postmap")).args(args), stdin)
    }

    /// Runs a shell line with `postmap` on PATH.
    fn sh(&self, line: &str) -> Output {
        let path = format!("{}:{}", self.bin().display(), std::env::var("PATH").unwrap_or_default());
        run(Command::new("sh").arg("-c").arg(line).env("PATH", path), "")
    }
}

fn run(cmd: &mut Command, stdin: &str) -> Output {
    let mut child = cmd
        .env_remove("POSTHORN_CONFIG")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn");
    child.stdin.take().unwrap().write_all(stdin.as_bytes()).unwrap();
    child.wait_with_output().unwrap()
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

/// (exit status, stdout, stderr)
fn outcome(o: &Output) -> (i32, String, String) {
    (o.status.code().unwrap_or(-1), text(&o.stdout), text(&o.stderr))
}

const VIRTUAL: &str = "\
# /etc/postfix/virtual
root        admin@example.org, ops@example.org
@staging.example.org  team@example.org
";

#[test]
fn runbook_line_works_verbatim() {
    let f = Fixture::new(VIRTUAL);
    let found = f.sh(&format!("postmap -q 'root' {} && echo OK || echo 'No match found'", f.table()));
    assert_eq!(outcome(&found), (0, "admin@example.org, ops@example.org\nOK\n".into(), "".into()));
    let missing = f.sh(&format!("postmap -q 'nobody' {} && echo OK || echo 'No match found'", f.table()));
    assert_eq!(outcome(&missing), (0, "No match found\n".into(), "".into()));
}

#[test]
fn query_one_key() {
    let f = Fixture::new(VIRTUAL);
    assert_eq!(
        outcome(&f.postmap(&["-q", "ROOT", &f.table()], "")),
        (0, "admin@example.org, ops@example.org\n".into(), "".into())
    );
    assert_eq!(outcome(&f.postmap(&["-q", "@staging.example.org", &f.table()], "")).0, 0);
    assert_eq!(outcome(&f.postmap(&["-q", "nobody", &f.table()], "")), (1, "".into(), "".into()));
    let texthash = f.table().replacen("hash:", "texthash:", 1);
    assert_eq!(outcome(&f.postmap(&["-q", "root", &texthash], "")).0, 0);
}

#[test]
fn query_keys_from_stdin() {
    let f = Fixture::new(VIRTUAL);
    let o = f.postmap(&["-q", "-", &f.table()], "root\nnobody\n@staging.example.org\n");
    assert_eq!(
        outcome(&o),
        (0, "root\tadmin@example.org, ops@example.org\n@staging.example.org\tteam@example.org\n".into(), "".into())
    );
    assert_eq!(outcome(&f.postmap(&["-q", "-", &f.table()], "nobody\n")).0, 1);
}

#[test]
fn check_reports_bad_lines() {
    let f = Fixture::new(VIRTUAL);
    assert_eq!(outcome(&f.postmap(&[&f.table()], "")), (0, "".into(), "".into()));
    assert!(!f.dir.path().join("virtual.db").exists(), "no .db is made");

    let bad = Fixture::new("root a@example.org\nbroken-line-without-value\n");
    let (status, out, err) = outcome(&bad.postmap(&[&bad.table()], ""));
    let path = bad.dir.path().join("virtual");
    assert_eq!((status, out.as_str()), (1, ""));
    assert_eq!(err, format!("postmap: error: {}:2: expected format: key whitespace value\n", path.display()));
}

#[test]
fn fatal_and_usage_errors() {
    let f = Fixture::new(VIRTUAL);
    let missing: &Path = &f.dir.path().join("nope");
    let (status, out, err) = outcome(&f.postmap(&["-q", "root", &format!("hash:{}", missing.display())], ""));
    assert_eq!((status, out.as_str()), (1, ""));
    assert_eq!(err, format!("postmap: fatal: open {}: No such file or directory\n", missing.display()));

    let (status, _, err) = outcome(&f.postmap(&["-Z", &f.table()], ""));
    assert_eq!(status, 64);
    assert!(err.contains("usage: postmap"), "{err}");
}
