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
//! R: text        the client sends `text` and nothing more (BDAT octets)
//! S: 250         the next reply has code 250
//! S: 550 5.5.2   ... and enhanced code 5.5.2
//! S: 250 2.0.0 Ok: queued as    ... and its text starts like this
//! S: 250 ... CHUNKING           ` ... ` skips text: the word comes later
//! S: CLOSED      the server closes the connection
//! D: text        the message the last `queued as ID` reply named reaches
//!                its Maildir (`user@local.test`) and ends with `text`;
//!                Maildir files end lines in LF, so `\n` stands for CRLF
//! ```
//!
//! In `C:`, `R:` and `D:` text, `\n` is a bare LF, `\r` a bare CR, `\\` a
//! backslash, and `${N*text}` expands to `text` repeated N times (for long
//! lines). Consecutive `C:` and `R:` lines go out in one write before the
//! next `S:` is read, so a run of them is a pipelined batch.
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
/// so relay access applies: only `@example.org` and `@local.test` are
/// accepted from it. A hub, so that `@local.test` is delivered to Maildirs
/// under `mail`; its DNS server is a closed port, so mail for elsewhere
/// just waits in the queue.
fn config(mail: &Path, dns: SocketAddr) -> String {
    let root = format!("{}/{{domain}}/{{user}}", mail.display());
    format!(
        "role = \"hub\"

[smtp]
listen = [\"127.0.0.1:0\"]
max_recipients = 5
max_message_size = \"10k\"
max_errors = 8

[access]
trusted_networks = [\"192.0.2.0/24\"]
relay_domains = [\"example.org\"]
local_domains = [\"local.test\"]

[deliver]
maildir_root = {}
dns_servers = [\"{dns}\"]
",
        harness::toml_str(&root)
    )
}

/// How long a queued message may take to reach its Maildir.
const DELIVERY_TIMEOUT: Duration = Duration::from_secs(15);

/// How long one reply may take.
const REPLY_TIMEOUT: Duration = Duration::from_secs(15);

#[derive(Debug, PartialEq)]
enum Step {
    Send(Vec<u8>),
    Expect(String),
    Closed,
    Delivered(Vec<u8>),
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
            "R" => steps.push((n, Step::Send(expand(rest).map_err(|e| format!("line {n}: {e}"))?))),
            "D" => steps.push((n, Step::Delivered(expand(rest).map_err(|e| format!("line {n}: {e}"))?))),
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
    let mut out = expand(text)?;
    out.extend_from_slice(b"\r\n");
    Ok(out)
}

/// Expands escapes and `${N*text}`.
fn expand(text: &str) -> Result<Vec<u8>, String> {
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
    Ok(out)
}

/// The queue id in a `250 2.0.0 Ok: queued as ID` reply.
fn queued_id(reply: &str) -> Option<&str> {
    reply.split_once("queued as ").map(|(_, id)| id.split_whitespace().next().unwrap_or(""))
}

/// The message with queue id `id` in a Maildir under `mail`: the file whose
/// `Received:` header says `id ID`.
fn delivered(mail: &Path, id: &str) -> Option<Vec<u8>> {
    let mut files = Vec::new();
    for domain in std::fs::read_dir(mail).ok()?.flatten() {
        for user in std::fs::read_dir(domain.path()).into_iter().flatten().flatten() {
            files.extend(std::fs::read_dir(user.path().join("new")).into_iter().flatten().flatten().map(|e| e.path()));
        }
    }
    let tag = format!(" id {id}");
    files.into_iter().filter_map(|f| std::fs::read(f).ok()).find(|m| {
        m.windows(tag.len())
            .enumerate()
            .any(|(i, w)| w == tag.as_bytes() && m.get(i + tag.len()).is_none_or(|c| !c.is_ascii_alphanumeric()))
    })
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
/// `550 5.5.2`. ` ... ` skips text: `250 ... CHUNKING` is a 250 whose
/// text has the word `CHUNKING` somewhere (an EHLO keyword: the greeting
/// name before it differs from run to run).
fn matches(reply: &str, expected: &str) -> bool {
    let mut parts = expected.split(" ... ");
    let first = parts.next().unwrap_or("");
    let word = |c: char| c.is_alphanumeric() || c == '.';
    if !reply.starts_with(first) || first.ends_with(word) && reply[first.len()..].starts_with(word) {
        return false;
    }
    let words: Vec<&str> = reply[first.len()..].split(' ').collect();
    let mut at = 0;
    parts.all(|part| {
        let wanted: Vec<&str> = part.split(' ').collect();
        let found = words[at..].windows(wanted.len()).position(|w| w == wanted);
        found.inspect(|p| at += p + wanted.len()).is_some()
    })
}

/// Plays one dialog; the error names the file and line.
fn play(addr: SocketAddr, mail: &Path, path: &Path) -> Result<(), String> {
    let name = path.display();
    let text = std::fs::read_to_string(path).map_err(|e| format!("{name}: {e}"))?;
    let steps = parse(&text).map_err(|e| format!("{name}: {e}"))?;
    let stream = TcpStream::connect(addr).map_err(|e| format!("{name}: connect: {e}"))?;
    stream.set_read_timeout(Some(REPLY_TIMEOUT)).unwrap();
    let mut writer = stream.try_clone().unwrap();
    let mut reader = BufReader::new(stream);
    let mut batch = Vec::new();
    let mut last_queued: Option<String> = None;
    for (line, step) in steps {
        let fail = |msg: String| format!("{name}:{line}: {msg}");
        if !matches!(step, Step::Send(_)) && !batch.is_empty() {
            writer.write_all(&batch).map_err(|e| fail(format!("send: {e}")))?;
            batch.clear();
        }
        match step {
            Step::Send(bytes) => batch.extend(bytes),
            Step::Expect(expected) => match read_reply(&mut reader).map_err(fail)? {
                Some(reply) if matches(&reply, &expected) => {
                    if let Some(id) = queued_id(&reply) {
                        last_queued = Some(id.to_string());
                    }
                }
                Some(reply) => return Err(fail(format!("expected `{expected}`, got `{reply}`"))),
                None => return Err(fail(format!("expected `{expected}`, the server closed the connection"))),
            },
            Step::Closed => match read_reply(&mut reader).map_err(fail)? {
                None => {}
                Some(reply) => return Err(fail(format!("expected the connection to close, got `{reply}`"))),
            },
            Step::Delivered(tail) => {
                let id = last_queued.take().ok_or_else(|| fail("`D:` without a `queued as` reply before it".into()))?;
                let mut message = None;
                harness::wait_until(DELIVERY_TIMEOUT, || {
                    message = delivered(mail, &id);
                    message.is_some()
                });
                let message =
                    message.ok_or_else(|| fail(format!("{id} not in a Maildir after {DELIVERY_TIMEOUT:?}")))?;
                if !message.ends_with(&tail) {
                    return Err(fail(format!("{id} was delivered as {:?}", String::from_utf8_lossy(&message))));
                }
            }
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
    let mail = tempfile::tempdir().expect("Maildir root");
    let ph = harness::Posthorn::start(&config(mail.path(), harness::free_addr()));
    let addr = ph.smtp_addr();
    let mail = mail.path();
    let results: Vec<Result<(), String>> = std::thread::scope(|scope| {
        let handles: Vec<_> = files.iter().map(|f| scope.spawn(move || play(addr, mail, f))).collect();
        handles.into_iter().map(|h| h.join().unwrap_or_else(|_| Err("dialog thread panicked".into()))).collect()
    });
    let failures: Vec<String> = results.into_iter().filter_map(Result::err).collect();
    assert!(failures.is_empty(), "{} of {} dialogs failed:\n{}", failures.len(), files.len(), failures.join("\n"));
}

#[test]
fn dialog_format() {
    let text =
        "# c\n\nS: 220\nC: EHLO x\nC:\nC*2: a\\nb\nC: ${3*ab}\\\\\nS: 250 2.0.0 Ok\nS: CLOSED\nR: a\\r\nD: x${2*y}\n";
    let steps = parse(text).unwrap();
    let expected = vec![
        (3, Step::Expect("220".into())),
        (4, Step::Send(b"EHLO x\r\n".to_vec())),
        (5, Step::Send(b"\r\n".to_vec())),
        (6, Step::Send(b"a\nb\r\na\nb\r\n".to_vec())),
        (7, Step::Send(b"ababab\\\r\n".to_vec())),
        (8, Step::Expect("250 2.0.0 Ok".into())),
        (9, Step::Closed),
        (10, Step::Send(b"a\r".to_vec())),
        (11, Step::Delivered(b"xyy".to_vec())),
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
    assert!(!matches("250", "250 2.0.0"));
    let ehlo = "250 ph1.test PIPELINING SIZE 10240 8BITMIME DSN CHUNKING XPOSTHORN-TRACE";
    assert!(matches(ehlo, "250 ... CHUNKING"));
    assert!(matches(ehlo, "250 ... SIZE 10240 ... CHUNKING"));
    assert!(!matches(ehlo, "250 ... CHUNKING ... SIZE 10240"));
    assert!(!matches(ehlo, "250 ... CHUNK"));
    assert!(!matches(ehlo, "250 ... BINARYMIME"));
    assert!(!matches(ehlo, "220 ... CHUNKING"));
    assert_eq!(queued_id("250 2.0.0 Ok: queued as AB12cd"), Some("AB12cd"));
    assert_eq!(queued_id("250 2.0.0 Ok"), None);
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
