//! Connections beyond `smtp.max_connections` wait in the listen backlog
//! (issue 18, item 3): with four slots, twelve clients connecting at once
//! all get 220 in turn and have their mail accepted, none gets 421; the
//! per-client limit still answers 421 at once.
//!
//! The daemon trusts 127.0.0.1 (the waiting clients); the per-client limit
//! is checked from 127.0.0.2, a stranger.

mod harness;

use harness::*;
use std::io::Read;
use std::net::{Ipv4Addr, SocketAddr, TcpStream};
use std::thread;
use std::time::{Duration, Instant};

const SLOTS: usize = 4;
const CLIENTS: usize = 3 * SLOTS;
/// How long each client keeps its session open after the greeting, so
/// that the later ones must wait for a slot.
const HOLD: Duration = Duration::from_millis(400);

fn daemon() -> Posthorn {
    let lines = [
        "access.trusted_networks = [\"127.0.0.1/32\"]".to_string(),
        format!("smtp.max_connections = {SLOTS}"),
        "smtp.trusted_reserve = 0".to_string(),
        "smtp.client_connection_limit = 2".to_string(),
    ];
    let lines: Vec<&str> = lines.iter().map(String::as_str).collect();
    Posthorn::start(&with_lines(&satellite_config(&[free_addr()]), &lines))
}

/// One client: connect, greeting, hold, one message, QUIT. Returns the
/// greeting and the reply to the message's text.
fn client(addr: SocketAddr, n: usize) -> Result<(Reply, Reply), String> {
    let mut smtp = RawSmtp::connect(addr).map_err(|e| format!("client {n}: connect: {e}"))?;
    let banner = smtp.banner.clone();
    if banner.code != 220 {
        return Ok((banner.clone(), banner));
    }
    thread::sleep(HOLD);
    smtp.ehlo("vm1.test").map_err(|e| format!("client {n}: EHLO: {e}"))?;
    let text = message(&[("Subject", &format!("waiting client {n}"))], "served in turn\n");
    let reply =
        smtp.send("cron@vm1.test", &["ops@example.org"], text.as_bytes()).map_err(|e| format!("client {n}: {e}"))?;
    smtp.quit().map_err(|e| format!("client {n}: QUIT: {e}"))?;
    Ok((banner, reply))
}

#[test]
fn connections_over_the_cap_wait_in_the_backlog() {
    let ph = daemon();
    let addr = ph.smtp_addr();
    let start = Instant::now();
    let clients: Vec<_> = (0..CLIENTS).map(|n| thread::spawn(move || client(addr, n))).collect();
    for (n, handle) in clients.into_iter().enumerate() {
        let (banner, reply) = handle.join().unwrap().unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(banner.code, 220, "client {n} greeted, not refused: {banner}");
        assert_eq!(reply.code, 250, "client {n}'s message accepted: {reply}");
    }
    // Four at a time, each holding its slot for HOLD: three rounds at least.
    let took = start.elapsed();
    assert!(took >= HOLD * 3, "twelve clients on four slots served in {took:?}: more than four at once");
    assert!(ph.wait_for_queued(CLIENTS, secs(10)), "every message queued");
    assert_eq!(count_lines(&ph.log(), &["too many connections"]), 0, "nobody refused:\n{}", ph.log());
}

/// A TCP connection to `addr` from the loopback address `src`.
fn connect_from(src: Ipv4Addr, addr: SocketAddr) -> TcpStream {
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    let stream = runtime.block_on(async {
        let socket = tokio::net::TcpSocket::new_v4().unwrap();
        socket.bind(SocketAddr::from((src, 0))).unwrap();
        socket.connect(addr).await.unwrap_or_else(|e| panic!("connect {src} -> {addr}: {e}"))
    });
    let stream = stream.into_std().unwrap();
    stream.set_nonblocking(false).unwrap();
    stream.set_read_timeout(Some(secs(10))).unwrap();
    stream
}

/// The first line the server sends, CRLF included.
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

#[test]
fn the_per_client_limit_still_says_421() {
    let ph = daemon();
    let addr = ph.smtp_addr();
    let stranger = Ipv4Addr::new(127, 0, 0, 2);
    let mut held: Vec<TcpStream> = (0..2).map(|_| connect_from(stranger, addr)).collect();
    for stream in &mut held {
        assert!(first_line(stream).starts_with("220 "));
    }
    // Two slots are still free: the third from the same address is over
    // its own limit, and told so at once rather than left waiting.
    let mut over = connect_from(stranger, addr);
    let expected = format!("421 4.7.0 {} Error: too many connections from 127.0.0.2\r\n", ph.hostname());
    assert_eq!(first_line(&mut over), expected);
}
