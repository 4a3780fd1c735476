//! SMTP dialogs: each `tests/dialogs/*.dialog` file is one conversation with
//! a real `posthorn serve`, played over a raw TCP connection.
//!
//! File format, one directive per line:
//!
//! ```text
//! # comment (blank lines are ignored too)
//! C: text        the client sends `text` CRLF
//! C:             the client sends an empty line
//! C*N: text      the client sends `text` CRLF, N times
//! S: 250         the next reply has code 250
//! S: 550 5.5.2   ... and enhanced code 5.5.2
//! S: 250 2.0.0 Ok: queued as    ... and its text starts like this
//! S: CLOSED      the server closes the connection
//! ```
//!
//! In `C:` text, `\n` sends a bare LF, `\r` a bare CR, `\\` a backslash,
//! and `${N*text}` expands to `text` repeated N times (for long lines).
//! Consecutive `C:` lines go out in one write before the next `S:` is
//! read, so a run of `C:` lines is a pipelined batch.
//!
//! Every file is played (in parallel, on one daemon) and all mismatches are
//! reported together, each with its file name and line.

#[allow(unused_imports)] // the harness re-exports more than dialogs use
mod harness;

use std::io::{BufRead, BufReader, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::time::Duration;

/// The daemon the dialogs talk to. 127.0.0.1 is deliberately not trusted,
/// so relay access applies: only `@example.org` is accepted from it.
const CONFIG: &str = "[smtp]
listen = [\"127.0.0.1:0\"]
max_recipients = 5
max_message_size = \"10k\"
max_errors = 8

[access]
trusted_networks = [\"192.0.2.0/24\"]
relay_domains = [\"example.org\"]
";

/// How long one reply may take.
const REPLY_TIMEOUT: Duration = Duration::from_secs(15);

#[derive(Debug, PartialEq)]
enum Step {
    Send(Vec<u8>),
    Expect(String),
    Closed,
}

/// Parses a dialog file into steps, each with its line number.
fn parse(text: &str) -> Result<Vec<(usize, Step)>, String> {
    let mut steps = Vec::new();
    for (i, line) in text.lines().enumerate() {
        let n = i + 1;
        let line = line.trim_end_matches('\r');
        if line.trim().is_empty() || line.starts_with('#') {
            continue;
        }
        let (head, rest) = line.split_once(':').ok_or_else(|| format!("line {n}: expected `C:` or `S:`"))?;
        let rest = rest.strip_prefix(' ').unwrap_or(rest);
        match head {
            "S" if rest.trim() == "CLOSED" => steps.push((n, Step::Closed)),
            "S" => {
                let code = rest.get(..3).filter(|c| c.bytes().all(|b| b.is_ascii_digit()));
                code.ok_or_else(|| format!("line {n}: `S:` needs a reply code"))?;
                steps.push((n, Step::Expect(rest.trim_end().to_string())));
            }
            "C" => steps.push((n, Step::Send(client_line(rest).map_err(|e| format!("line {n}: {e}"))?))),
            _ => {
                let count = head.strip_prefix("C*").and_then(|c| c.parse::<usize>().ok());
                let count = count.ok_or_else(|| format!("line {n}: unknown directive `{head}:`"))?;
                steps.push((n, Step::Send(client_line(rest).map_err(|e| format!("line {n}: {e}"))?.repeat(count))));
            }
        }
    }
    Ok(steps)
}

/// Expands escapes and `${N*text}`, and appends CRLF.
fn client_line(text: &str) -> Result<Vec<u8>, String> {
    let mut out = Vec::new();
    let mut rest = text;
    while let Some(c) = rest.chars().next() {
        if let Some(after) = rest.strip_prefix("${") {
            let (spec, tail) = after.split_once('}').ok_or("unterminated ${")?;
            let (n, what) = spec.split_once('*').ok_or("expected ${N*text}")?;
            let n: usize = n.parse().map_err(|_| "bad repeat count")?;
            out.extend(what.repeat(n).into_bytes());
            rest = tail;
        } else if let Some(after) = rest.strip_prefix('\\') {
            match after.chars().next() {
                Some('n') => out.push(b'\n'),
                Some('r') => out.push(b'\r'),
                Some('\\') => out.push(b'\\'),
                _ => return Err("unknown escape".into()),
            }
            rest = &after[1..];
        } else {
            let mut buf = [0; 4];
            out.extend_from_slice(c.encode_utf8(&mut buf).as_bytes());
            rest = &rest[c.len_utf8()..];
        }
    }
    out.extend_from_slice(b"\r\n");
    Ok(out)
}

/// Reads one (possibly multi-line) reply, as `code text text`, the way
/// `Reply`'s Display prints it; `None` when the server closed.
fn read_reply(reader: &mut BufReader<TcpStream>) -> Result<Option<String>, String> {
    let mut joined = String::new();
    loop {
        let mut line = String::new();
        match reader.read_line(&mut line) {
            Ok(0) if joined.is_empty() => return Ok(None),
            Ok(0) => return Err(format!("connection closed inside a reply: {joined}")),
            Ok(_) => {}
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset && joined.is_empty() => return Ok(None),
            Err(e) => return Err(format!("reading a reply: {e}")),
        }
        let line = line.trim_end_matches(['\r', '\n']);
        let (code, sep, text) =
            (line.get(..3).unwrap_or(line), line.get(3..4).unwrap_or(" "), line.get(4..).unwrap_or(""));
        if joined.is_empty() {
            joined.push_str(code);
        }
        if !text.is_empty() {
            joined.push(' ');
            joined.push_str(text);
        }
        if sep != "-" {
            return Ok(Some(joined));
        }
    }
}

/// Whether `reply` is what `expected` asks for: a prefix that does not end
/// inside a word or code, so `S: 25` never matches `250` nor `S: 550 5.5`
/// `550 5.5.2`.
fn matches(reply: &str, expected: &str) -> bool {
    let word = |c: char| c.is_alphanumeric() || c == '.';
    let cut_inside = expected.ends_with(word) && reply[expected.len()..].starts_with(word);
    reply.starts_with(expected) && !cut_inside
}

/// Plays one dialog; the error names the file and line.
fn play(addr: SocketAddr, path: &Path) -> Result<(), String> {
    let name = path.display();
    let text = std::fs::read_to_string(path).map_err(|e| format!("{name}: {e}"))?;
    let steps = parse(&text).map_err(|e| format!("{name}: {e}"))?;
    let stream = TcpStream::connect(addr).map_err(|e| format!("{name}: connect: {e}"))?;
    stream.set_read_timeout(Some(REPLY_TIMEOUT)).unwrap();
    let mut writer = stream.try_clone().unwrap();
    let mut reader = BufReader::new(stream);
    let mut batch = Vec::new();
    for (line, step) in steps {
        let fail = |msg: String| format!("{name}:{line}: {msg}");
        if !matches!(step, Step::Send(_)) && !batch.is_empty() {
            writer.write_all(&batch).map_err(|e| fail(format!("send: {e}")))?;
            batch.clear();
        }
        match step {
            Step::Send(bytes) => batch.extend(bytes),
            Step::Expect(expected) => match read_reply(&mut reader).map_err(fail)? {
                Some(reply) if matches(&reply, &expected) => {}
                Some(reply) => return Err(fail(format!("expected `{expected}`, got `{reply}`"))),
                None => return Err(fail(format!("expected `{expected}`, the server closed the connection"))),
            },
            Step::Closed => match read_reply(&mut reader).map_err(fail)? {
                None => {}
                Some(reply) => return Err(fail(format!("expected the connection to close, got `{reply}`"))),
            },
        }
    }
    if !batch.is_empty() {
        // Trailing client lines: send them; nothing more is checked.
        let _ = writer.write_all(&batch);
    }
    Ok(())
}

fn dialog_files() -> Vec<PathBuf> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/dialogs");
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|x| x == "dialog"))
        .collect();
    files.sort();
    files
}

#[test]
fn dialogs() {
    let files = dialog_files();
    assert!(!files.is_empty(), "no dialog files");
    let ph = harness::Posthorn::start(CONFIG);
    let addr = ph.smtp_addr();
    let results: Vec<Result<(), String>> = std::thread::scope(|scope| {
        let handles: Vec<_> = files.iter().map(|f| scope.spawn(move || play(addr, f))).collect();
        handles.into_iter().map(|h| h.join().unwrap_or_else(|_| Err("dialog thread panicked".into()))).collect()
    });
    let failures: Vec<String> = results.into_iter().filter_map(Result::err).collect();
    assert!(failures.is_empty(), "{} of {} dialogs failed:\n{}", failures.len(), files.len(), failures.join("\n"));
}

#[test]
fn dialog_format() {
    let text = "# c\n\nS: 220\nC: EHLO x\nC:\nC*2: a\\nb\nC: ${3*ab}\\\\\nS: 250 2.0.0 Ok\nS: CLOSED\n";
    let steps = parse(text).unwrap();
    let expected = vec![
        (3, Step::Expect("220".into())),
        (4, Step::Send(b"EHLO x\r\n".to_vec())),
        (5, Step::Send(b"\r\n".to_vec())),
        (6, Step::Send(b"a\nb\r\na\nb\r\n".to_vec())),
        (7, Step::Send(b"ababab\\\r\n".to_vec())),
        (8, Step::Expect("250 2.0.0 Ok".into())),
        (9, Step::Closed),
    ];
    assert_eq!(steps, expected);
    for bad in ["X: 1", "S: ok", "C: \\q", "C: ${x*a}", "C*x: a", "no colon"] {
        assert!(parse(bad).is_err(), "{bad}");
    }
    assert!(matches("250 2.0.0 Ok: queued as X", "250 2.0.0 Ok:"));
    assert!(matches("250 mx.test PIPELINING", "250"));
    assert!(!matches("250 2.0.0", "25"));
    assert!(!matches("550 5.5.2 x", "550 5.5.1"));
    assert!(!matches("550 5.5.2 x", "550 5.5"));
    assert!(matches("501 5.5.4 Bad NOTIFY parameter: expected", "501 5.5.4 Bad NOTIFY parameter"));
}

#[test]
fn every_dialog_parses() {
    for file in dialog_files() {
        let text = std::fs::read_to_string(&file).unwrap();
        let steps = parse(&text).unwrap_or_else(|e| panic!("{}: {e}", file.display()));
        assert!(
            matches!(steps.first(), Some((_, Step::Expect(s))) if s.starts_with("220")),
            "{}: must start with S: 220",
            file.display()
        );
    }
}
