//! Slow and greedy clients end to end (issue 12, items 11 and 18): one
//! client, or a handful of addresses, must not be able to take the SMTP
//! listener from the trusted satellites, nor flood the log.
//!
//! Every daemon here trusts 127.0.0.1 only; the attackers come from other
//! loopback addresses (127.0.0.2 and up), so they are strangers.
//!
//! 1. Per-client connection cap: the 51st connection from one address gets
//!    `421 4.7.0 ... too many connections from 127.0.0.2`, while another
//!    address and the trusted client still get in; a closed connection
//!    gives its count back.
//! 2. 1,000 slow sockets from eight addresses dribbling a byte a second:
//!    they fill what strangers may take, the trusted reserve stays free and
//!    smtplib from 127.0.0.1 gets 250; the dribblers are cut at the command
//!    deadline.
//! 3. Deadlines, not per-read timeouts: a command line, a DATA text and a
//!    BDAT chunk dribbled a byte a second (within every per-read limit) are
//!    cut with `421 4.4.2` at their deadline; nothing is queued.
//! 4. A TLS handshake that never completes, on the submissions port and
//!    after STARTTLS, is dropped at `smtp.tls_handshake_timeout`.
//! 5. 200 refused connections from one address log one refusal line and
//!    then summaries ("N more suppressed") that add up to the rest.
//! 6. 452s count toward `smtp.max_errors`, and RCPTs over the limit log one
//!    reject line, then a summary.

mod harness;

use harness::*;
use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpStream};
use std::sync::LazyLock;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

/// A satellite trusting 127.0.0.1 only, with `smtp` lines added to its
/// `[smtp]` section. Its smarthost is unreachable: accepted mail stays
/// queued, where the test finds it.
fn daemon(smtp: &[&str]) -> Posthorn {
    let mut lines = vec!["access.trusted_networks = [\"127.0.0.1/32\"]".to_string()];
    lines.extend(smtp.iter().map(|l| format!("smtp.{l}")));
    let lines: Vec<&str> = lines.iter().map(String::as_str).collect();
    Posthorn::start(&with_lines(&satellite_config(&[free_addr()]), &lines))
}

/// A TCP connection to `addr` from the loopback address `src`.
fn connect_from(src: Ipv4Addr, addr: SocketAddr) -> TcpStream {
    // std cannot bind before connecting; tokio's TcpSocket can.
    static RUNTIME: LazyLock<tokio::runtime::Runtime> =
        LazyLock::new(|| tokio::runtime::Builder::new_multi_thread().worker_threads(1).enable_all().build().unwrap());
    let stream = RUNTIME.block_on(async {
        let socket = tokio::net::TcpSocket::new_v4().unwrap();
        socket.bind(SocketAddr::from((src, 0))).unwrap();
        let stream = socket.connect(addr).await.unwrap_or_else(|e| panic!("connect {src} -> {addr}: {e}"));
        stream.into_std().unwrap()
    });
    stream.set_nonblocking(false).unwrap();
    stream.set_read_timeout(Some(secs(10))).unwrap();
    stream
}

/// The first line the server sends (the greeting or a refusal), CRLF
/// included; empty if it closes first.
fn first_line(stream: &mut TcpStream) -> String {
    let mut line = Vec::new();
    let mut byte = [0u8];
    while !line.ends_with(b"\n") {
        match stream.read(&mut byte) {
            Ok(0) => break,
            Ok(_) => line.push(byte[0]),
            Err(e) => panic!("reading from the server after {line:?}: {e}"),
        }
    }
    String::from_utf8_lossy(&line).into_owned()
}

/// Whether the server closes `stream` (after whatever it still sends)
/// within its read timeout.
fn closed(stream: &mut TcpStream) -> bool {
    let mut rest = Vec::new();
    stream.read_to_end(&mut rest).is_ok()
}

/// Sends `bytes` one per `every` on a thread of its own, until the server
/// closes the connection.
fn dribble(stream: &TcpStream, bytes: &'static [u8], every: Duration) {
    let mut stream = stream.try_clone().unwrap();
    thread::spawn(move || {
        for byte in bytes {
            thread::sleep(every);
            if stream.write_all(&[*byte]).is_err() {
                return;
            }
        }
    });
}

/// Room for `n` more descriptors here and in the daemons started after.
fn raise_nofile(n: u64) {
    use rustix::process::{Resource, Rlimit, getrlimit, setrlimit};
    let limit = getrlimit(Resource::Nofile);
    let want = limit.current.unwrap_or(u64::MAX).max(n + 1024);
    let raised = Rlimit { current: Some(limit.maximum.map_or(want, |max| want.min(max))), maximum: limit.maximum };
    setrlimit(Resource::Nofile, raised).expect("raise RLIMIT_NOFILE");
}

fn send_trusted(ph: &Posthorn) -> Result<(), String> {
    let message = message(&[("Subject", "from a trusted satellite")], "still gets through\n");
    smtplib_send(ph.smtp_addr(), "cron@vm1.test", &["ops@example.org"], &message)
}

#[test]
fn one_address_cannot_take_every_slot() {
    let ph = daemon(&[]);
    let addr = ph.smtp_addr();
    let greedy = Ipv4Addr::new(127, 0, 0, 2);
    let mut held: Vec<TcpStream> = (0..50).map(|_| connect_from(greedy, addr)).collect();
    for stream in &mut held {
        assert!(first_line(stream).starts_with("220 "));
    }
    let mut over = connect_from(greedy, addr);
    let expected = format!("421 4.7.0 {} Error: too many connections from 127.0.0.2\r\n", ph.hostname());
    assert_eq!(first_line(&mut over), expected);
    assert!(closed(&mut over), "closed after the 421");
    assert!(
        ph.wait_for_log("connect from unknown[127.0.0.2]: too many connections from this client (limit 50)", secs(5))
    );

    // The cap is the client's own: another address and the trusted
    // satellite get in.
    let mut other = connect_from(Ipv4Addr::new(127, 0, 0, 3), addr);
    assert!(first_line(&mut other).starts_with("220 "));
    send_trusted(&ph).expect("the trusted client's mail");
    assert!(ph.wait_for_queued(1, secs(5)), "the message is in the queue");

    // A connection that ends gives its count back.
    let mut quitting = held.pop().unwrap();
    quitting.write_all(b"QUIT\r\n").unwrap();
    assert!(first_line(&mut quitting).starts_with("221 "));
    assert!(closed(&mut quitting));
    assert!(ph.wait_for_log("disconnect from unknown[127.0.0.2]", secs(5)));
    // The count is given back just after that line, when the session ends.
    let mut again = None;
    wait_until(secs(5), || {
        let mut stream = connect_from(greedy, addr);
        let greeted = first_line(&mut stream).starts_with("220 ");
        again = greeted.then_some(stream);
        greeted
    });
    assert!(again.is_some(), "a slot of 127.0.0.2 came back after QUIT");
}

#[test]
fn a_slowloris_from_many_addresses_leaves_the_trusted_reserve() {
    const SOCKETS: usize = 1000;
    raise_nofile(SOCKETS as u64);
    // Per-client limits at their defaults (50 each): eight addresses stay
    // under them and would still fill 200 slots. The reserve is what holds.
    let ph = daemon(&["max_connections = 200", "trusted_reserve = 20", "command_timeout = \"6s\""]);
    let addr = ph.smtp_addr();
    let mut sockets: Vec<TcpStream> =
        (0..SOCKETS).map(|i| connect_from(Ipv4Addr::new(127, 0, 0, 10 + (i % 8) as u8), addr)).collect();
    let mut open = Vec::new();
    let mut refused = 0;
    for stream in sockets.drain(..) {
        let mut stream = stream;
        match first_line(&mut stream) {
            line if line.starts_with("220 ") => open.push(stream),
            line if line.starts_with("421 4.7.0 ") => refused += 1,
            line => panic!("unexpected first line {line:?}"),
        }
    }
    assert_eq!((open.len(), refused), (180, SOCKETS - 180), "strangers get all but the reserve");

    // The attack: a byte a second on every open socket, never a whole line.
    let stop = Arc::new(AtomicBool::new(false));
    let attackers = Arc::new(Mutex::new(open));
    let dribbler = {
        let (stop, attackers) = (stop.clone(), attackers.clone());
        thread::spawn(move || {
            while !stop.load(Ordering::Relaxed) {
                for stream in attackers.lock().unwrap().iter_mut() {
                    let _ = stream.write_all(b"x");
                }
                thread::sleep(secs(1));
            }
        })
    };
    let mut stranger = connect_from(Ipv4Addr::new(127, 0, 0, 18), addr);
    assert!(first_line(&mut stranger).starts_with("421 4.7.0 "), "a new stranger finds no slot");
    let start = Instant::now();
    send_trusted(&ph).expect("the trusted client's mail during the attack");
    eprintln!("trusted client accepted after {:?} during the attack", start.elapsed());
    assert!(ph.wait_for_queued(1, secs(5)));

    // Dribbling does not keep a slot: every attacker is cut at the deadline.
    let cut = ph.wait_for_log_count(&["timeout after CONNECT from unknown[127.0.0.1"], 180, secs(15));
    stop.store(true, Ordering::Relaxed);
    dribbler.join().unwrap();
    assert!(cut, "{} of 180 attackers cut", count_lines(&ph.log(), &["timeout after CONNECT"]));
    let refusals = count_lines(&ph.log(), &["connect from unknown[127.0.0.", "too many connections"]);
    assert!(refusals <= 9 * 2, "{refusals} refusal lines for {} refused connections", SOCKETS - 180 + 1);
}

/// Runs `dialog` against a fresh connection and returns the 421 it ends
/// with and the time from `dialog`'s return (the start of the dribble).
fn cut_after(addr: SocketAddr, dialog: impl FnOnce(&mut TcpStream)) -> (String, Duration) {
    let mut stream = connect_from(Ipv4Addr::new(127, 0, 0, 1), addr);
    assert!(first_line(&mut stream).starts_with("220 "));
    dialog(&mut stream);
    let start = Instant::now();
    let line = first_line(&mut stream);
    (line, start.elapsed())
}

/// Sends `lines` (CRLF added) and reads one reply line for each.
fn commands(stream: &mut TcpStream, lines: &[&str]) -> Vec<String> {
    let mut replies = Vec::new();
    for line in lines {
        stream.write_all(format!("{line}\r\n").as_bytes()).unwrap();
        let mut reply = first_line(stream);
        // Skip the continuation lines of a multi-line reply (EHLO).
        while reply.as_bytes().get(3) == Some(&b'-') {
            reply = first_line(stream);
        }
        replies.push(reply[..3].to_string());
    }
    replies
}

#[test]
fn dribbled_commands_and_messages_meet_their_deadlines() {
    // Every read is within its limit (a byte a second, limits of 2 s); only
    // the deadlines can end these sessions.
    let ph = daemon(&["command_timeout = \"2s\"", "data_timeout = \"2s\"", "data_deadline = \"3s\""]);
    let addr = ph.smtp_addr();
    let envelope = ["EHLO client.test", "MAIL FROM:<a@client.test>", "RCPT TO:<b@example.org>"];
    let line = thread::spawn(move || cut_after(addr, |s| dribble(s, b"NOOP NOOP NOOP\r\n", secs(1))));
    let data = thread::spawn(move || {
        cut_after(addr, |s| {
            assert_eq!(commands(s, &[envelope[0], envelope[1], envelope[2], "DATA"]), ["250", "250", "250", "354"]);
            dribble(s, b"Subject: slow\r\n\r\none byte a second\r\n.\r\n", secs(1));
        })
    });
    let bdat = thread::spawn(move || {
        cut_after(addr, |s| {
            assert_eq!(commands(s, &envelope), ["250", "250", "250"]);
            s.write_all(b"BDAT 40 LAST\r\n").unwrap();
            dribble(s, b"Subject: slow\r\n\r\none byte a second\r\n..", secs(1));
        })
    });
    for (what, deadline, handle) in [("command", 2, line), ("DATA", 3, data), ("BDAT", 3, bdat)] {
        let (reply, waited) = handle.join().unwrap();
        let expected = format!("421 4.4.2 {} Error: timeout exceeded\r\n", ph.hostname());
        assert_eq!(reply, expected, "{what}");
        let deadline = secs(deadline);
        assert!(waited + Duration::from_millis(100) >= deadline && waited < deadline + secs(2), "{what}: {waited:?}");
    }
    for after in ["CONNECT", "DATA", "BDAT"] {
        assert!(ph.wait_for_log(&format!("timeout after {after} from unknown[127.0.0.1]"), secs(5)), "{after}");
    }
    assert_eq!(ph.queued_count(), 0, "nothing queued from a message cut short");
}

#[test]
fn a_tls_handshake_that_never_ends_is_dropped() {
    let ca = TestCa::new("posthorn test CA");
    let cert = ca.issue("server", &["127.0.0.1"]);
    let text = with_lines(
        &satellite_config(&[free_addr()]),
        &[
            "smtp.submissions = [\"127.0.0.1:0\"]",
            "smtp.tls_handshake_timeout = \"1s\"",
            "smtp.command_timeout = \"30s\"",
            &cert.tls_section(),
        ],
    );
    let ph = Posthorn::start(&text);

    // Implicit TLS: the start of a TLS record, and then nothing.
    let mut implicit = connect_from(Ipv4Addr::new(127, 0, 0, 1), ph.submissions_addr());
    implicit.write_all(&[0x16, 0x03, 0x01]).unwrap();
    let start = Instant::now();
    assert!(closed(&mut implicit), "dropped");
    let waited = start.elapsed();
    assert!(waited >= Duration::from_millis(900) && waited < secs(4), "submissions: {waited:?}");

    // STARTTLS accepted, and then no ClientHello.
    let mut starttls = connect_from(Ipv4Addr::new(127, 0, 0, 1), ph.smtp_addr());
    assert!(first_line(&mut starttls).starts_with("220 "));
    assert_eq!(commands(&mut starttls, &["EHLO client.test", "STARTTLS"]), ["250", "220"]);
    let start = Instant::now();
    assert!(closed(&mut starttls), "dropped");
    let waited = start.elapsed();
    assert!(waited >= Duration::from_millis(900) && waited < secs(4), "STARTTLS: {waited:?}");
    assert!(ph.wait_for_log_count(&["SSL_accept timeout from unknown[127.0.0.1]"], 2, secs(5)), "{}", ph.log());

    // Whoever completes the handshake is still served.
    let steps = smtps_steps(ph.submissions_addr(), &ca.ca_path(), &[TlsStep::Cmd("NOOP")]);
    assert_eq!(steps.last().map(|s| s.1), Some(250), "{steps:?}");
}

/// The numbers N in the log's "N more suppressed" lines containing `pattern`.
fn suppressed(ph: &Posthorn, pattern: &str) -> u64 {
    ph.log_lines(&[pattern, "more suppressed"])
        .iter()
        .filter_map(|l| l.split("; ").nth(1)?.split(' ').next()?.parse::<u64>().ok())
        .sum()
}

#[test]
fn refused_connections_are_logged_once_then_summarised() {
    let ph = daemon(&["client_connection_limit = 2", "repeat_log_interval = \"1s\""]);
    let addr = ph.smtp_addr();
    let client = Ipv4Addr::new(127, 0, 0, 4);
    let mut held: Vec<TcpStream> = (0..2).map(|_| connect_from(client, addr)).collect();
    for stream in &mut held {
        assert!(first_line(stream).starts_with("220 "));
    }
    for _ in 0..200 {
        let mut over = connect_from(client, addr);
        assert!(first_line(&mut over).starts_with("421 4.7.0 "));
    }
    let line = "connect from unknown[127.0.0.4]: too many connections from this client";
    let summary = "connect from unknown[127.0.0.4]: refused;";
    let all_told = wait_until(secs(5), || count_lines(&ph.log(), &[line]) as u64 + suppressed(&ph, summary) == 200);
    let written = count_lines(&ph.log(), &[line]);
    assert!(all_told, "{written} lines and {} suppressed:\n{}", suppressed(&ph, summary), ph.log());
    assert!(written <= 5, "{written} refusal lines for 200 refused connections");
}

#[test]
fn temporary_refusals_end_the_session_and_are_logged_once() {
    let ph = daemon(&["max_recipients = 1", "max_errors = 5", "repeat_log_interval = \"1s\""]);
    let mut raw = RawSmtp::connect(ph.smtp_addr()).unwrap();
    raw.ehlo("client.test").unwrap();
    assert_eq!(raw.cmd("MAIL FROM:<a@client.test>").unwrap().code, 250);
    assert_eq!(raw.cmd("RCPT TO:<r0@example.org>").unwrap().code, 250);
    for n in 1..=5 {
        let reply = raw.cmd(&format!("RCPT TO:<r{n}@example.org>")).unwrap();
        assert_eq!((reply.code, reply.text.as_str()), (452, "4.5.3 Error: too many recipients"));
    }
    let last = raw.read().unwrap();
    assert_eq!(
        (last.code, last.text.as_str()),
        (421, format!("4.7.0 {} Error: too many errors", ph.hostname()).as_str())
    );
    let summary = "RCPT from unknown[127.0.0.1]: too many recipients;";
    assert!(ph.wait_for_log(summary, secs(5)), "{}", ph.log());
    assert_eq!(ph.log_lines(&["NOQUEUE: reject: RCPT from unknown[127.0.0.1]: 452 4.5.3"]).len(), 1);
    assert_eq!(suppressed(&ph, summary), 4);
}
