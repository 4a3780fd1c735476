//! What the session tests share: the test configuration, a whole
//! conversation in one write (`converse`), a client that talks step by step
//! (`Client`), and the runner of dialog tables (`check_dialogs`).

use super::session::{Peer, run_session};
use crate::config::Config;
use crate::ingress::test_support::queue_ingress;
use crate::smtp::proto::reply::Reply;
use crate::spool::Spool;
use std::path::Path;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader, DuplexStream, ReadHalf, WriteHalf};

/// A client in `access.trusted_networks` of `config`, and one that is not.
pub(super) const TRUSTED: &str = "10.0.0.5:40000";
pub(super) const STRANGER: &str = "192.0.2.9:40000";

/// The test configuration; `smtp` lines go into `[smtp]`, replacing
/// the defaults of the same key.
pub(super) fn config(smtp: &str) -> Config {
    let defaults = ["max_recipients = 3", "max_message_size = 5000", "max_data_line_length = 1000", "max_errors = 50"];
    let given: Vec<&str> = smtp.lines().filter(|l| !l.trim().is_empty()).collect();
    let key = |l: &str| l.split('=').next().unwrap_or("").trim().to_string();
    let mut section: Vec<&str> = defaults.into_iter().filter(|d| !given.iter().any(|g| key(g) == key(d))).collect();
    section.extend(given);
    let text = format!(
        "hostname = \"mx.test\"\n[smtp]\n{}\n[access]\ntrusted_networks = [\"10.0.0.0/8\"]\nrelay_domains = [\"example.org\"]\n",
        section.join("\n")
    );
    Config::parse(&text, Path::new("test.toml")).expect("test config")
}

pub(super) fn tcp(addr: &str) -> Peer {
    Peer::Tcp(addr.parse().unwrap())
}

/// Command lines joined with CRLF, CRLF-terminated.
pub(super) fn lines(lines: &[&str]) -> Vec<u8> {
    lines.iter().flat_map(|l| [l.as_bytes(), b"\r\n"]).flatten().copied().collect()
}

/// `250 2.1.0` for a reply with an enhanced code, `250` without.
pub(super) fn short(r: &Reply) -> String {
    match r.enhanced {
        Some(e) => format!("{} {e}", r.code),
        None => r.code.to_string(),
    }
}

/// Splits what the server wrote into replies.
pub(super) fn replies(output: &str) -> Vec<Reply> {
    let mut out = Vec::new();
    let mut pending = Vec::new();
    for line in output.split("\r\n").filter(|l| !l.is_empty()) {
        pending.push(line);
        if line.as_bytes().get(3) != Some(&b'-') {
            out.push(Reply::from_lines(&pending).unwrap_or_else(|| panic!("bad reply {pending:?}")));
            pending.clear();
        }
    }
    assert!(pending.is_empty(), "unterminated reply {pending:?}");
    out
}

/// Sends `input` in one write, closes the sending side, and returns
/// every reply until the server closed, with the spool it used.
pub(super) async fn converse(config: &Config, peer: Peer, input: &[u8]) -> (Vec<Reply>, Spool, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let (ingress, spool) = queue_ingress(dir.path(), config);
    let (client, server) = tokio::io::duplex(1 << 20);
    let ((), output) = tokio::join!(run_session(server, peer, config, &ingress), talk(client, input, true));
    (replies(&output), spool, dir)
}

/// The client side of a one-write conversation: sends `input` (then
/// closes the sending side when `close`), and returns everything the
/// server wrote until it closed.
pub(super) async fn talk(client: DuplexStream, input: &[u8], close: bool) -> String {
    let (mut r, mut w) = tokio::io::split(client);
    w.write_all(input).await.unwrap();
    if close {
        w.shutdown().await.unwrap();
    }
    let mut out = String::new();
    r.read_to_string(&mut out).await.unwrap();
    out
}

/// One conversation: its name, the client's address, what it sends in one
/// write, and the replies it expects after the greeting.
pub(super) type Dialog<'a> = (&'a str, &'a str, Vec<u8>, Vec<&'a str>);

/// Runs each dialog in a session of its own and checks the greeting, then
/// the replies.
pub(super) async fn check_dialogs(cases: Vec<Dialog<'_>>) {
    let config = config("");
    for (name, peer, input, expected) in cases {
        let (got, _spool, _dir) = converse(&config, tcp(peer), &input).await;
        let got: Vec<String> = got.iter().map(short).collect();
        assert_eq!(got[0], "220", "{name}: greeting");
        assert_eq!(got[1..], expected, "{name}");
    }
}

/// A client that talks step by step.
pub(super) struct Client {
    r: BufReader<ReadHalf<DuplexStream>>,
    w: WriteHalf<DuplexStream>,
}

impl Client {
    pub(super) fn new(stream: DuplexStream) -> Client {
        let (r, w) = tokio::io::split(stream);
        Client { r: BufReader::new(r), w }
    }

    pub(super) async fn send(&mut self, bytes: &[u8]) {
        self.w.write_all(bytes).await.unwrap();
    }

    /// The next reply, or `None` at end of stream.
    pub(super) async fn reply(&mut self) -> Option<Reply> {
        let mut raw = Vec::new();
        loop {
            let mut line = String::new();
            if self.r.read_line(&mut line).await.unwrap() == 0 {
                assert!(raw.is_empty(), "stream ended inside a reply");
                return None;
            }
            let line = line.trim_end_matches("\r\n").to_string();
            let last = line.as_bytes().get(3) != Some(&b'-');
            raw.push(line);
            if last {
                return Some(Reply::from_lines(&raw).expect("a reply"));
            }
        }
    }

    pub(super) async fn expect(&mut self, expected: &str) -> Reply {
        let reply = self.reply().await.unwrap_or_else(|| panic!("closed, expected {expected}"));
        assert_eq!(short(&reply), expected, "{reply}");
        reply
    }
}
