//! [`Scripted`]: a small SMTP server that answers from a script, for the
//! next hop of a queue test: "451 at the end of DATA for the first three
//! messages, then 250", "550 to RCPT TO:<bob@...>", "offer DSN or not",
//! "accept the connection and hang up at once".
//!
//! It speaks real SMTP over a loopback socket on a port the kernel picked:
//! greeting, EHLO (PIPELINING, 8BITMIME, ENHANCEDSTATUSCODES, SIZE, and
//! DSN when asked), HELO, MAIL, RCPT, DATA with dot-unstuffing, RSET,
//! NOOP, QUIT; anything else gets 502. Pipelining is honoured the way
//! real servers do it: commands are read from one buffered reader for the
//! whole session (nothing sent ahead is lost), replies are answered in
//! order, and the output is flushed only when no complete command is
//! waiting in the input, so a pipelined group gets its replies in one
//! write and the 354 is on the wire before the body is awaited.
//!
//! Everything is recorded: connections, every command line, and every
//! transaction (a MAIL that got 2xx) with its accepted and refused
//! recipients, the message as received (CRLF line ends, dot-unstuffed)
//! and the reply to its final dot. Tests wait on the record with
//! [`Scripted::wait_for_accepted`] or [`Scripted::wait_until`].
//!
//! Transactions are numbered in the order their MAIL was accepted, over
//! all connections; messages (transactions that reached the final dot) are
//! numbered likewise, and [`Script::data_end`] answers by that number.

use std::io::{self, BufRead, BufReader, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::thread;
use std::time::{Duration, Instant};

/// The longest command line accepted (RFC 5321 allows 512 with parameters;
/// DSN parameters make lines longer in practice).
const MAX_COMMAND: usize = 4096;
/// Sessions idle this long are closed.
const IDLE: Duration = Duration::from_secs(60);

/// One reply rule: a command whose address contains `pattern`
/// (case-insensitive; "" matches every address) gets `reply`.
#[derive(Clone, Debug)]
struct Rule {
    pattern: String,
    reply: String,
}

/// What the server answers. Built with the methods below; anything not
/// scripted gets a plain positive answer.
#[derive(Clone, Debug)]
pub struct Script {
    name: String,
    greeting: Option<String>,
    keywords: Vec<String>,
    mail: Vec<Rule>,
    rcpt: Vec<Rule>,
    data_end: Vec<String>,
    hang_up: bool,
}

impl Default for Script {
    fn default() -> Script {
        Script::new()
    }
}

impl Script {
    /// Accepts everything; offers PIPELINING, 8BITMIME, ENHANCEDSTATUSCODES
    /// and SIZE, not DSN.
    pub fn new() -> Script {
        Script {
            name: "scripted.test".into(),
            greeting: None,
            keywords: ["PIPELINING", "8BITMIME", "ENHANCEDSTATUSCODES", "SIZE 52428800"].map(String::from).to_vec(),
            mail: Vec::new(),
            rcpt: Vec::new(),
            data_end: Vec::new(),
            hang_up: false,
        }
    }

    /// Offers DSN (RFC 3461) in the EHLO reply.
    pub fn dsn(mut self) -> Script {
        self.keywords.push("DSN".into());
        self
    }

    /// Greets with `reply` (`"421 4.3.2 busy"`) instead of 220.
    pub fn greeting(mut self, reply: &str) -> Script {
        self.greeting = Some(reply.into());
        self
    }

    /// MAIL FROM whose address contains `pattern` gets `reply`.
    pub fn mail(mut self, pattern: &str, reply: &str) -> Script {
        self.mail.push(Rule { pattern: pattern.to_ascii_lowercase(), reply: reply.into() });
        self
    }

    /// RCPT TO whose address contains `pattern` gets `reply` (the first
    /// matching rule wins).
    pub fn rcpt(mut self, pattern: &str, reply: &str) -> Script {
        self.rcpt.push(Rule { pattern: pattern.to_ascii_lowercase(), reply: reply.into() });
        self
    }

    /// The replies to the final dot of the first `replies.len()` messages,
    /// in order; later messages get 250.
    pub fn data_end(mut self, replies: &[&str]) -> Script {
        self.data_end = replies.iter().map(|r| r.to_string()).collect();
        self
    }

    /// Accepts each connection, counts it, and closes it before greeting:
    /// a next hop that is down in the way that costs a connection.
    pub fn hang_up() -> Script {
        Script { hang_up: true, ..Script::new() }
    }

    fn rule_reply(rules: &[Rule], address: &str) -> Option<String> {
        let address = address.to_ascii_lowercase();
        rules.iter().find(|r| address.contains(&r.pattern)).map(|r| r.reply.clone())
    }
}

/// One accepted RCPT, or a refused one with the reply it got.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ScriptedRcpt {
    /// The address without angle brackets.
    pub address: String,
    /// ESMTP parameters as received (`NOTIFY=SUCCESS`, `ORCPT=rfc822;x@y`).
    pub params: Vec<String>,
    /// The reply it was given.
    pub reply: String,
}

impl ScriptedRcpt {
    /// The value of parameter `name` (case-insensitive), if given.
    pub fn param(&self, name: &str) -> Option<&str> {
        param(&self.params, name)
    }
}

/// One transaction: from an accepted MAIL to its end (final dot, RSET,
/// EHLO, QUIT or a lost connection).
#[derive(Clone, Debug)]
pub struct ScriptedTx {
    /// The connection it ran on (0 for the first).
    pub connection: usize,
    /// The reverse path without angle brackets ("" for `<>`).
    pub mail_from: String,
    pub mail_params: Vec<String>,
    /// Recipients given 2xx.
    pub rcpts: Vec<ScriptedRcpt>,
    /// Recipients refused, with the reply each got.
    pub refused: Vec<ScriptedRcpt>,
    /// The message as received (CRLF line ends, dot-unstuffed), when the
    /// final dot was reached.
    pub message: Option<Vec<u8>>,
    /// The reply to the final dot.
    pub reply: Option<String>,
}

impl ScriptedTx {
    /// The message reached the final dot and got 2xx there.
    pub fn accepted(&self) -> bool {
        self.reply.as_deref().is_some_and(|r| r.starts_with('2'))
    }

    /// The accepted recipients' addresses, in order.
    pub fn rcpt_to(&self) -> Vec<String> {
        self.rcpts.iter().map(|r| r.address.clone()).collect()
    }

    pub fn mail_param(&self, name: &str) -> Option<&str> {
        param(&self.mail_params, name)
    }

    /// The message, empty when none was sent.
    pub fn message(&self) -> &[u8] {
        self.message.as_deref().unwrap_or(b"")
    }

    pub fn text(&self) -> String {
        String::from_utf8_lossy(self.message()).into_owned()
    }

    pub fn header(&self, name: &str) -> Option<String> {
        super::header(self.message(), name)
    }
}

fn param<'a>(params: &'a [String], name: &str) -> Option<&'a str> {
    params.iter().find_map(|p| {
        let (k, v) = p.split_once('=').unwrap_or((p, ""));
        k.eq_ignore_ascii_case(name).then_some(v)
    })
}

/// What the server has seen so far.
#[derive(Clone, Debug, Default)]
pub struct Record {
    pub connections: usize,
    /// Every command line, in arrival order, without CRLF.
    pub commands: Vec<String>,
    pub transactions: Vec<ScriptedTx>,
    /// Messages that reached the final dot (accepted or not).
    pub messages: usize,
}

impl Record {
    /// Transactions whose message was accepted.
    pub fn accepted(&self) -> Vec<ScriptedTx> {
        self.transactions.iter().filter(|t| t.accepted()).cloned().collect()
    }
}

struct Shared {
    script: Script,
    record: Mutex<Record>,
    changed: Condvar,
    stop: AtomicBool,
}

impl Shared {
    fn update<T>(&self, f: impl FnOnce(&mut Record) -> T) -> T {
        let mut record = self.record.lock().unwrap_or_else(|e| e.into_inner());
        let out = f(&mut record);
        self.changed.notify_all();
        out
    }
}

/// The running server; dropping it stops accepting (sessions in progress
/// end when their client leaves).
pub struct Scripted {
    addr: SocketAddr,
    shared: Arc<Shared>,
}

impl Scripted {
    /// Binds `127.0.0.1:0` and serves `script` from a background thread,
    /// one more thread per connection.
    pub fn start(script: Script) -> Scripted {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind the scripted server");
        let addr = listener.local_addr().unwrap();
        let shared = Arc::new(Shared {
            script,
            record: Mutex::new(Record::default()),
            changed: Condvar::new(),
            stop: AtomicBool::new(false),
        });
        let accept_shared = shared.clone();
        thread::spawn(move || accept_loop(listener, accept_shared));
        Scripted { addr, shared }
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// A copy of everything seen so far.
    pub fn record(&self) -> Record {
        self.shared.record.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    pub fn connections(&self) -> usize {
        self.record().connections
    }

    pub fn commands(&self) -> Vec<String> {
        self.record().commands
    }

    pub fn transactions(&self) -> Vec<ScriptedTx> {
        self.record().transactions
    }

    /// Transactions whose message was accepted, in order.
    pub fn accepted(&self) -> Vec<ScriptedTx> {
        self.record().accepted()
    }

    /// Waits until `done` holds for the record or `timeout` passes;
    /// returns the record either way (the caller asserts).
    pub fn wait_until(&self, timeout: Duration, mut done: impl FnMut(&Record) -> bool) -> Record {
        let deadline = Instant::now() + timeout;
        let mut record = self.shared.record.lock().unwrap_or_else(|e| e.into_inner());
        loop {
            let now = Instant::now();
            if done(&record) || now >= deadline {
                return record.clone();
            }
            record = self.shared.changed.wait_timeout(record, deadline - now).unwrap_or_else(|e| e.into_inner()).0;
        }
    }

    /// Waits until at least `n` messages were accepted and returns them all.
    pub fn wait_for_accepted(&self, n: usize, timeout: Duration) -> Vec<ScriptedTx> {
        self.wait_until(timeout, |r| r.transactions.iter().filter(|t| t.accepted()).count() >= n).accepted()
    }
}

impl Drop for Scripted {
    fn drop(&mut self) {
        self.shared.stop.store(true, Ordering::SeqCst);
        // Wake the accept loop so it sees the flag.
        let _ = TcpStream::connect_timeout(&self.addr, Duration::from_secs(1));
    }
}

fn accept_loop(listener: TcpListener, shared: Arc<Shared>) {
    for stream in listener.incoming() {
        if shared.stop.load(Ordering::SeqCst) {
            return;
        }
        let Ok(stream) = stream else { continue };
        let connection = shared.update(|r| {
            r.connections += 1;
            r.connections - 1
        });
        if shared.script.hang_up {
            let _ = stream.shutdown(Shutdown::Both);
            continue;
        }
        let shared = shared.clone();
        thread::spawn(move || {
            let _ = Session::new(stream, shared, connection).and_then(|mut s| s.run());
        });
    }
}

/// One connection.
struct Session {
    reader: BufReader<TcpStream>,
    writer: TcpStream,
    out: Vec<u8>,
    shared: Arc<Shared>,
    connection: usize,
    /// Index into `Record::transactions` of the open transaction.
    open: Option<usize>,
}

/// What the session loop does after a command.
enum Next {
    Continue,
    ReadBody,
    Close,
}

impl Session {
    fn new(stream: TcpStream, shared: Arc<Shared>, connection: usize) -> io::Result<Session> {
        stream.set_read_timeout(Some(IDLE))?;
        stream.set_write_timeout(Some(IDLE))?;
        let writer = stream.try_clone()?;
        Ok(Session { reader: BufReader::new(stream), writer, out: Vec::new(), shared, connection, open: None })
    }

    fn run(&mut self) -> io::Result<()> {
        let script = &self.shared.script;
        let greeting =
            script.greeting.clone().unwrap_or_else(|| format!("220 {} ESMTP scripted test server", script.name));
        self.reply(&greeting);
        if !greeting.starts_with('2') {
            // A refusing greeting ends the session (RFC 5321 3.1).
            return self.flush();
        }
        while let Some(line) = self.read_line()? {
            let text = String::from_utf8_lossy(&line).into_owned();
            self.shared.update(|r| r.commands.push(text.clone()));
            match self.command(&text) {
                Next::Continue => {}
                Next::Close => break,
                Next::ReadBody => self.body()?,
            }
        }
        self.flush()?;
        // A transaction still open when the client left ends unfinished.
        self.open = None;
        Ok(())
    }

    /// Queues a reply; it goes out at the next flush.
    fn reply(&mut self, text: &str) {
        self.out.extend_from_slice(text.as_bytes());
        self.out.extend_from_slice(b"\r\n");
    }

    fn flush(&mut self) -> io::Result<()> {
        if !self.out.is_empty() {
            self.writer.write_all(&self.out)?;
            self.out.clear();
        }
        Ok(())
    }

    /// The next line without its line end; `None` at end of input. Replies
    /// are flushed first unless a whole line is already buffered (a
    /// pipelined command whose reply may wait for the rest of the group).
    fn read_line(&mut self) -> io::Result<Option<Vec<u8>>> {
        if !self.reader.buffer().contains(&b'\n') {
            self.flush()?;
        }
        let mut line = Vec::new();
        let n = (&mut self.reader).take(MAX_COMMAND as u64).read_until(b'\n', &mut line)?;
        if n == 0 {
            return Ok(None);
        }
        while line.last().is_some_and(|b| *b == b'\n' || *b == b'\r') {
            line.pop();
        }
        Ok(Some(line))
    }

    fn command(&mut self, line: &str) -> Next {
        let verb = line.split_whitespace().next().unwrap_or("").to_ascii_uppercase();
        let rest = line.get(verb.len()..).unwrap_or("").trim();
        match verb.as_str() {
            "EHLO" => {
                self.open = None;
                let mut lines = vec![self.shared.script.name.clone()];
                lines.extend(self.shared.script.keywords.iter().cloned());
                let n = lines.len();
                for (i, l) in lines.iter().enumerate() {
                    let sep = if i + 1 == n { ' ' } else { '-' };
                    self.reply(&format!("250{sep}{l}"));
                }
            }
            "HELO" => {
                self.open = None;
                let r = format!("250 {}", self.shared.script.name);
                self.reply(&r);
            }
            "MAIL" => self.mail(rest),
            "RCPT" => self.rcpt(rest),
            "DATA" => return self.data(),
            "RSET" => {
                self.open = None;
                self.reply("250 2.0.0 Ok");
            }
            "NOOP" => self.reply("250 2.0.0 Ok"),
            "QUIT" => {
                self.open = None;
                self.reply("221 2.0.0 Bye");
                return Next::Close;
            }
            _ => self.reply("502 5.5.2 Command not recognized"),
        }
        Next::Continue
    }

    fn mail(&mut self, rest: &str) {
        if self.open.is_some() {
            return self.reply("503 5.5.1 Nested MAIL command");
        }
        let Some((address, params)) = path_arg(rest, "FROM:") else {
            return self.reply("501 5.5.4 Syntax: MAIL FROM:<address>");
        };
        let reply = Script::rule_reply(&self.shared.script.mail, &address).unwrap_or_else(|| "250 2.1.0 Ok".into());
        if reply.starts_with('2') {
            let tx = ScriptedTx {
                connection: self.connection,
                mail_from: address,
                mail_params: params,
                rcpts: Vec::new(),
                refused: Vec::new(),
                message: None,
                reply: None,
            };
            self.open = Some(self.shared.update(|r| {
                r.transactions.push(tx);
                r.transactions.len() - 1
            }));
        }
        self.reply(&reply);
    }

    fn rcpt(&mut self, rest: &str) {
        let Some(open) = self.open else {
            return self.reply("503 5.5.1 Need MAIL command");
        };
        let Some((address, params)) = path_arg(rest, "TO:") else {
            return self.reply("501 5.5.4 Syntax: RCPT TO:<address>");
        };
        let reply = Script::rule_reply(&self.shared.script.rcpt, &address).unwrap_or_else(|| "250 2.1.5 Ok".into());
        let rcpt = ScriptedRcpt { address, params, reply: reply.clone() };
        self.shared.update(|r| {
            let tx = &mut r.transactions[open];
            if reply.starts_with('2') { tx.rcpts.push(rcpt) } else { tx.refused.push(rcpt) }
        });
        self.reply(&reply);
    }

    fn data(&mut self) -> Next {
        let Some(open) = self.open else {
            self.reply("503 5.5.1 Need MAIL command");
            return Next::Continue;
        };
        if self.shared.update(|r| r.transactions[open].rcpts.is_empty()) {
            self.reply("554 5.5.1 No valid recipients");
            return Next::Continue;
        }
        self.reply("354 End data with <CR><LF>.<CR><LF>");
        Next::ReadBody
    }

    /// Reads the message up to the final dot, unstuffing dots, and answers
    /// it from the script.
    fn body(&mut self) -> io::Result<()> {
        self.flush()?;
        let mut message = Vec::new();
        loop {
            let mut line = Vec::new();
            if self.reader.read_until(b'\n', &mut line)? == 0 {
                // Lost in the middle of DATA: the transaction never ended.
                self.open = None;
                return Ok(());
            }
            let content = line.strip_suffix(b"\n").unwrap_or(&line);
            let content = content.strip_suffix(b"\r").unwrap_or(content);
            if content == b"." {
                break;
            }
            let unstuffed = if line.first() == Some(&b'.') { &line[1..] } else { &line[..] };
            message.extend_from_slice(unstuffed);
        }
        let open = self.open.take().expect("a transaction is open in DATA");
        let replies = &self.shared.script.data_end;
        let reply = self.shared.update(|r| {
            let reply =
                replies.get(r.messages).cloned().unwrap_or_else(|| format!("250 2.0.0 Ok: message {}", r.messages));
            r.messages += 1;
            let tx = &mut r.transactions[open];
            tx.message = Some(message);
            tx.reply = Some(reply.clone());
            reply
        });
        self.reply(&reply);
        Ok(())
    }
}

/// `FROM:<a@b> K=V ...` (with `keyword` "FROM:") -> ("a@b", ["K=V", ...]).
fn path_arg(rest: &str, keyword: &str) -> Option<(String, Vec<String>)> {
    let head = rest.get(..keyword.len())?;
    if !head.eq_ignore_ascii_case(keyword) {
        return None;
    }
    let after = rest[keyword.len()..].trim_start();
    let inner = after.strip_prefix('<')?;
    let end = inner.find('>')?;
    let params = inner[end + 1..].split_whitespace().map(str::to_string).collect();
    Some((inner[..end].to_string(), params))
}
