//! Delivery to the commands and files a local alias lists (`|cmd`,
//! `/path`), as Postfix's local(8) does it, in a process that already is
//! the account they run as: the daemon for its own account, or the local
//! delivery agent's child that became the account (`local_agent`). Never
//! root: the transport and the agent both refuse uid 0.
//!
//! A command gets the message on its standard input after `Return-Path:`
//! and `Delivered-To:` lines, with LF line ends, and the environment
//! local(8) sets (`SENDER`, `RECIPIENT`, `USER`, `LOCAL`, `EXTENSION`,
//! `DOMAIN`, `HOME`, `SHELL`, `ORIGINAL_RECIPIENT`). The command text is
//! the alias file's, never anything from the envelope: it is run with
//! `/bin/sh -c` when it holds shell metacharacters, else split at blanks
//! and executed directly. Its exit status follows sysexits: 0 delivered,
//! 75 (`EX_TEMPFAIL`) deferred, anything else bounced with the start of
//! its output. After the time limit its process group is killed and the
//! mail deferred. A file is appended to as an mbox, with the mbox locks.

use super::local::{Failure, Request};
use crate::account::Entry;
use std::io::{Read, Write};
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// What Postfix counts as shell metacharacters in a command.
const SHELL_META: &str = "\"'`\\$;&()|<>*?[]{}~!#\t\r\n";
/// How much of a command's output a bounce quotes.
const OUTPUT_SHOWN: usize = 500;

/// The argument vector for `command`: `/bin/sh -c command` when it needs
/// a shell, else its words.
pub(crate) fn argv(command: &str) -> Vec<String> {
    if command.contains(|c| SHELL_META.contains(c)) {
        vec!["/bin/sh".into(), "-c".into(), command.into()]
    } else {
        command.split(' ').filter(|w| !w.is_empty()).map(str::to_string).collect()
    }
}

/// The environment local(8) gives a command. `delimiter`: the address
/// extension's (`local.recipient_delimiter`).
pub(crate) fn environment(entry: &Entry, request: &Request, delimiter: &str) -> Vec<(String, String)> {
    let (local, domain) = request.recipient.rsplit_once('@').unwrap_or((&request.recipient, ""));
    let (_, extension) = crate::config::split_extension(delimiter, local);
    [
        ("PATH", "/usr/bin:/bin"),
        ("SENDER", request.sender.as_str()),
        ("RECIPIENT", request.recipient.as_str()),
        ("ORIGINAL_RECIPIENT", request.original.as_str()),
        ("USER", entry.account.name.as_str()),
        ("LOCAL", local),
        ("EXTENSION", extension.unwrap_or("")),
        ("DOMAIN", domain),
        ("HOME", &entry.home.to_string_lossy()),
        ("SHELL", &entry.shell.to_string_lossy()),
    ]
    .iter()
    .map(|(k, v)| (k.to_string(), v.to_string()))
    .collect()
}

/// The bytes a command reads: `Return-Path:`, `Delivered-To:`, then the
/// message with LF line ends.
fn input(request: &Request, message: &[u8]) -> Vec<u8> {
    let mut out = format!("Return-Path: <{}>\nDelivered-To: {}\n", request.sender, request.recipient).into_bytes();
    for line in message.split_inclusive(|&b| b == b'\n') {
        match line.strip_suffix(b"\r\n") {
            Some(body) => {
                out.extend_from_slice(body);
                out.push(b'\n');
            }
            None => out.extend_from_slice(line),
        }
    }
    out
}

/// Runs `command` with the message on its input, as this process's
/// account; `entry` is that account.
pub(crate) fn run(
    entry: &Entry,
    request: &Request,
    command: &str,
    time_limit: Duration,
    delimiter: &str,
    message: &[u8],
) -> Result<String, Failure> {
    let words = argv(command);
    let Some((program, args)) = words.split_first() else {
        return Err(Failure { permanent: true, status: (5, 3, 5), text: "empty command".into() });
    };
    let home = if entry.home.is_dir() { entry.home.clone() } else { "/".into() };
    let mut child = Command::new(program)
        .args(args)
        .env_clear()
        .envs(environment(entry, request, delimiter))
        .current_dir(home)
        .process_group(0)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| Failure::transient(format!("cannot run command {command}: {e}")))?;
    let data = input(request, message);
    let mut stdin = child.stdin.take().expect("piped");
    // A command need not read its input: a broken pipe is no failure.
    let writer = std::thread::spawn(move || {
        let _ = stdin.write_all(&data);
    });
    let readers: Vec<_> = [
        child.stdout.take().map(|o| Box::new(o) as Box<dyn Read + Send>),
        child.stderr.take().map(|e| Box::new(e) as Box<dyn Read + Send>),
    ]
    .into_iter()
    .flatten()
    .map(|r| std::thread::spawn(move || keep_start(r)))
    .collect();
    let started = Instant::now();
    let status = loop {
        match child.try_wait() {
            Ok(Some(status)) => break Some(status),
            Ok(None) if started.elapsed() >= time_limit => break None,
            Ok(None) => std::thread::sleep(Duration::from_millis(20)),
            Err(e) => return Err(Failure::transient(format!("waiting for command {command}: {e}"))),
        }
    };
    if status.is_none() {
        // The whole process group: a shell's children too.
        let _ = rustix::process::kill_process_group(
            rustix::process::Pid::from_raw(child.id() as i32).expect("a child's pid"),
            rustix::process::Signal::KILL,
        );
        let _ = child.wait();
    }
    let _ = writer.join();
    let output: Vec<u8> = readers.into_iter().flat_map(|r| r.join().unwrap_or_default()).collect();
    let output = shown(&output);
    let Some(status) = status else {
        return Err(Failure::transient(format!(
            "command {command} ran longer than local.command_time_limit ({}s): killed",
            time_limit.as_secs()
        )));
    };
    let said = if output.is_empty() { String::new() } else { format!(". Command output: {output}") };
    match status.code() {
        Some(0) => Ok(format!("command {command}")),
        Some(75) => Err(Failure { permanent: false, status: (4, 3, 0), text: format!("temporary failure{said}") }),
        Some(code) => Err(Failure {
            permanent: true,
            status: (5, 3, 0),
            text: format!("Command died with status {code}: \"{command}\"{said}"),
        }),
        None => Err(Failure::transient(format!(
            "command {command} was killed by signal {}{said}",
            status.signal().unwrap_or(0)
        ))),
    }
}

/// The first bytes a stream gives; the rest is read and dropped, so the
/// writer never blocks.
fn keep_start(mut r: Box<dyn Read + Send>) -> Vec<u8> {
    let mut kept = Vec::new();
    let mut buf = [0u8; 4096];
    while let Ok(n) = r.read(&mut buf) {
        if n == 0 {
            break;
        }
        let room = (OUTPUT_SHOWN * 2).saturating_sub(kept.len());
        kept.extend_from_slice(&buf[..n.min(room)]);
    }
    kept
}

/// Output as one printable line of at most [`OUTPUT_SHOWN`] bytes.
fn shown(output: &[u8]) -> String {
    let text = String::from_utf8_lossy(output);
    let one: String =
        text.split_whitespace().collect::<Vec<_>>().join(" ").chars().filter(|c| !c.is_control()).collect();
    let mut end = one.len().min(OUTPUT_SHOWN);
    while !one.is_char_boundary(end) {
        end -= 1;
    }
    one[..end].to_string()
}

/// Appends the message to `path` as an mbox, as this process's account.
pub(crate) fn append_file(entry: &Entry, request: &Request, path: &str, message: &[u8]) -> Result<String, Failure> {
    let date = super::mbox::from_line_date(&crate::clock::local(crate::clock::now_secs()));
    let bytes = super::mbox::format(&request.sender, &request.recipient, &request.original, message, &date);
    super::mbox::append(std::path::Path::new(path), &bytes, entry.account.uid).map_err(|text| Failure {
        permanent: false,
        status: (4, 2, 0),
        text,
    })?;
    Ok(format!("file {path}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn argv_table() {
        let cases: &[(&str, &[&str])] = &[
            ("/usr/local/bin/ticket-intake", &["/usr/local/bin/ticket-intake"]),
            ("/usr/bin/vacation -a  x", &["/usr/bin/vacation", "-a", "x"]),
            ("/bin/cat > /tmp/x", &["/bin/sh", "-c", "/bin/cat > /tmp/x"]),
            ("a; b", &["/bin/sh", "-c", "a; b"]),
            ("echo $HOME", &["/bin/sh", "-c", "echo $HOME"]),
        ];
        for (command, want) in cases {
            assert_eq!(argv(command), *want, "{command}");
        }
    }

    #[test]
    fn output_is_one_bounded_line() {
        assert_eq!(shown(b"no such\n ticket\r\n"), "no such ticket");
        assert_eq!(shown("é".repeat(400).as_bytes()).len(), 500);
    }

    #[test]
    fn input_has_trace_lines_and_lf() {
        let r = Request {
            user: "u".into(),
            sender: "s@x".into(),
            recipient: "r@y".into(),
            original: "r@y".into(),
            length: 0,
            target: None,
        };
        assert_eq!(input(&r, b"A: b\r\n\r\nbody\r\n"), b"Return-Path: <s@x>\nDelivered-To: r@y\nA: b\n\nbody\n");
    }
}
