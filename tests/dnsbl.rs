//! End-to-end: postscreen's tests (`[screen]`, issue 16) on a real hub,
//! with DNS lists served by the test DNS server and clients that connect
//! from chosen loopback addresses (127.0.0.x), driven by a small Python
//! client (the standard library's socket: it must be able to talk before
//! the greeting, which smtplib never does).
//!
//! Scenarios:
//! 1. A client listed in `zen.example` (weight 3) is refused at RCPT with
//!    550 5.7.1 naming the list, and logged with its rank; an unlisted
//!    client is unaffected; a client listed there and in an allowlist of
//!    weight -5 passes (rank -2); a listed client in `trusted_networks` is
//!    never looked up.
//! 2. A list that never answers holds RCPT no longer than
//!    `screen.dnsbl_timeout`, and does not count.
//! 3. Pregreet: a client that talks before the end of the greeting gets
//!    521 and is refused again at once while remembered; a client that
//!    waits gets the whole greeting and sends mail, and its next
//!    connection is not made to wait.
//! 4. Off by default: the same listed client passes a hub without `[screen]`.
//! 5. A reload that adds lists applies them to the next connections and
//!    keeps what pregreet learned.

mod harness;

use harness::dns::{DnsRecord, DnsServer};
use harness::*;
use std::net::SocketAddr;
use std::process::Command;

/// One SMTP dialogue from `job["source"]`: optionally an EHLO before the
/// greeting (`early`), then the greeting, EHLO, MAIL, RCPT and, if the
/// recipient is taken, the message. Prints each reply (lines joined by
/// `\n`) and the seconds to the greeting and to the RCPT reply as JSON.
const DIALOGUE: &str = r#"
import json, socket, sys, time
job = json.load(sys.stdin)
start = time.time()
s = socket.create_connection((job["host"], job["port"]), timeout=30, source_address=(job["source"], 0))
f = s.makefile("rb")
out = {"replies": [], "greeting_secs": None, "rcpt_secs": None}
def reply():
    lines = []
    while True:
        line = f.readline()
        if not line:
            lines.append("EOF")
            return "\n".join(lines)
        line = line.decode(errors="replace").rstrip("\r\n")
        lines.append(line)
        if len(line) < 4 or line[3] != "-":
            return "\n".join(lines)
def done():
    print(json.dumps(out))
    sys.exit(0)
if job.get("early"):
    s.sendall(b"EHLO early.test\r\n")
greeting = reply()
out["greeting_secs"] = time.time() - start
out["replies"].append(greeting)
if not greeting.split("\n")[-1].startswith("220 "):
    done()
for cmd in ["EHLO client.test", "MAIL FROM:<a@sender.test>", "RCPT TO:<u@example.org>"]:
    s.sendall(cmd.encode() + b"\r\n")
    r = reply()
    out["replies"].append(r)
    if cmd.startswith("RCPT"):
        out["rcpt_secs"] = time.time() - start
    if not r.startswith("250"):
        done()
s.sendall(b"DATA\r\n")
out["replies"].append(reply())
s.sendall(b"From: a@sender.test\r\nTo: u@example.org\r\nSubject: screen\r\n\r\nhello\r\n.\r\n")
out["replies"].append(reply())
s.sendall(b"QUIT\r\n")
out["replies"].append(reply())
done()
"#;

/// What one dialogue got.
#[derive(Debug)]
struct Dialogue {
    replies: Vec<String>,
    greeting_secs: f64,
    rcpt_secs: Option<f64>,
}

impl Dialogue {
    /// The reply to RCPT, if the dialogue got that far.
    fn rcpt(&self) -> &str {
        self.replies.get(3).map_or("", String::as_str)
    }

    /// The reply to the end of the message.
    fn queued(&self) -> bool {
        self.replies.get(5).is_some_and(|r| r.starts_with("250 2.0.0"))
    }
}

fn dialogue(addr: SocketAddr, source: &str, early: bool) -> Dialogue {
    let job = serde_json::json!({"host": addr.ip().to_string(), "port": addr.port(), "source": source, "early": early});
    let mut cmd = Command::new("python3");
    cmd.arg("-c").arg(DIALOGUE);
    let out = run_with_timeout(cmd, job.to_string().as_bytes(), secs(60));
    assert!(out.status.success(), "python3: {}", String::from_utf8_lossy(&out.stderr));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("the dialogue's JSON");
    Dialogue {
        replies: v["replies"].as_array().unwrap().iter().map(|r| r.as_str().unwrap().to_string()).collect(),
        greeting_secs: v["greeting_secs"].as_f64().unwrap_or(0.0),
        rcpt_secs: v["rcpt_secs"].as_f64(),
    }
}

/// A hub on 127.0.0.1 that trusts only 127.0.0.5 among the loopback
/// clients, delivering example.org to Maildirs in the directory returned
/// with it.
fn hub(dns: &DnsServer, lines: &[&str]) -> (Posthorn, tempfile::TempDir) {
    let mail = tempfile::tempdir().unwrap();
    let base = format!(
        "role = \"hub\"\n\n[smtp]\nlisten = [\"127.0.0.1:0\"]\n\n[access]\ntrusted_networks = [\"127.0.0.5/32\"]\nlocal_domains = [\"example.org\"]\n\n[deliver]\nmaildir_root = {}\n",
        toml_str(&format!("{}/{{domain}}/{{user}}", mail.path().display()))
    );
    let mut all = vec![dns.config_line()];
    all.extend(lines.iter().map(|l| l.to_string()));
    let all: Vec<&str> = all.iter().map(String::as_str).collect();
    (Posthorn::start(&with_lines(&base, &all)), mail)
}

/// The lists of scenarios 1, 2 and 4: 127.0.0.2, .4 and .5 are listed in
/// zen.example; .4 is also in the allowlist; .6's query of slow.example
/// is never answered.
fn lists() -> DnsServer {
    let ip = |s: &str| s.parse().unwrap();
    DnsServer::start(vec![
        DnsRecord::a("2.0.0.127.zen.example", ip("127.0.0.2")),
        DnsRecord::a("4.0.0.127.zen.example", ip("127.0.0.2")),
        DnsRecord::a("5.0.0.127.zen.example", ip("127.0.0.2")),
        DnsRecord::a("4.0.0.127.wl.example", ip("127.0.5.1")),
        // Outside the allowlist's filter: does not count.
        DnsRecord::a("2.0.0.127.wl.example", ip("127.1.0.1")),
        DnsRecord::silent("6.0.0.127.slow.example"),
    ])
}

const SITES: &str =
    "screen.dnsbl_sites = [\"zen.example*3\", \"wl.example=127.0.[0..255].[0..255]*-5\", \"slow.example*3\"]";

#[test]
fn lists_refuse_allow_and_spare_trusted_clients() {
    let dns = lists();
    let (ph, mail) = hub(&dns, &[SITES, "screen.dnsbl_threshold = 1", "screen.dnsbl_timeout = \"3s\""]);
    let addr = ph.smtp_addr();

    let listed = dialogue(addr, "127.0.0.2", false);
    assert_eq!(
        listed.rcpt(),
        "550 5.7.1 Service unavailable; client [127.0.0.2] blocked using zen.example",
        "{listed:?}\n{}",
        ph.log()
    );
    assert!(ph.wait_for_log("DNSBL rank 3 for [127.0.0.2]:", secs(5)), "{}", ph.log());
    assert!(
        ph.wait_for_log(
            "NOQUEUE: reject: RCPT from unknown[127.0.0.2]: 550 5.7.1 Service unavailable; client [127.0.0.2] blocked using zen.example",
            secs(5)
        ),
        "{}",
        ph.log()
    );

    let clean = dialogue(addr, "127.0.0.3", false);
    assert!(clean.queued(), "{clean:?}");

    let allowed = dialogue(addr, "127.0.0.4", false);
    assert!(allowed.queued(), "{allowed:?}");
    assert!(ph.wait_for_log("DNSBL rank -2 for [127.0.0.4]:", secs(5)), "{}", ph.log());

    let trusted = dialogue(addr, "127.0.0.5", false);
    assert!(trusted.queued(), "{trusted:?}");
    assert!(ph.wait_for_log_count(&["disconnect from unknown[127.0.0.5]"], 1, secs(5)), "{}", ph.log());
    assert_eq!(count_lines(&ph.log(), &["DNSBL", "[127.0.0.5]"]), 0, "{}", ph.log());

    // The three that passed arrived; the refused one did not.
    let new = mail.path().join("example.org/u/new");
    let delivered = || std::fs::read_dir(&new).map(|d| d.count()).unwrap_or(0);
    assert!(wait_until(secs(15), || delivered() == 3), "{} delivered\n{}", delivered(), ph.log());

    // Remembered: the second refusal needs no lookup, and says the same.
    let again = dialogue(addr, "127.0.0.2", false);
    assert!(again.rcpt().starts_with("550 5.7.1 Service unavailable"), "{again:?}");
}

#[test]
fn a_list_that_does_not_answer_holds_nobody() {
    let dns = lists();
    let (ph, _mail) = hub(&dns, &[SITES, "screen.dnsbl_timeout = \"2s\""]);
    let got = dialogue(ph.smtp_addr(), "127.0.0.6", false);
    assert!(got.queued(), "{got:?}\n{}", ph.log());
    let rcpt_secs = got.rcpt_secs.unwrap();
    assert!((1.5..10.0).contains(&rcpt_secs), "RCPT answered after {rcpt_secs} s");
    assert!(ph.wait_for_log("no answer within 2s from slow.example", secs(5)), "{}", ph.log());
}

#[test]
fn screen_is_off_by_default() {
    let dns = lists();
    let (ph, _mail) = hub(&dns, &[]);
    let got = dialogue(ph.smtp_addr(), "127.0.0.2", false);
    assert!(got.queued(), "{got:?}");
    assert!(got.replies[0].starts_with("220 "), "{got:?}");
}

#[test]
fn pregreet_refuses_early_talkers_and_remembers() {
    let dns = DnsServer::start(vec![]);
    let (ph, _mail) = hub(&dns, &["screen.pregreet = true", "screen.greet_wait = \"1s\"", "screen.cache_ttl = \"1h\""]);
    let addr = ph.smtp_addr();

    let early = dialogue(addr, "127.0.0.7", true);
    let greeting = &early.replies[0];
    assert!(greeting.starts_with("220-"), "{early:?}");
    assert!(greeting.ends_with("\n521 5.5.1 Protocol error"), "{early:?}");
    assert!(ph.wait_for_log("PREGREET 17 after ", secs(5)), "{}", ph.log());
    assert!(ph.log().contains("from [127.0.0.7]:"), "{}", ph.log());

    // Remembered: refused at once, even behaving.
    let again = dialogue(addr, "127.0.0.7", false);
    assert_eq!(
        again.replies[0], "521 5.7.1 Service unavailable; client [127.0.0.7] talked before the greeting",
        "{again:?}"
    );

    // A client that waits: the partial line, then the rest after the wait.
    let patient = dialogue(addr, "127.0.0.8", false);
    let lines: Vec<&str> = patient.replies[0].lines().collect();
    assert_eq!(lines.len(), 2, "{patient:?}");
    assert!(lines[0].starts_with("220-") && lines[1].starts_with("220 "), "{patient:?}");
    assert!(patient.greeting_secs >= 0.9, "{patient:?}");
    assert!(patient.queued(), "{patient:?}");
    // Passed, remembered: no wait the next time.
    let next = dialogue(addr, "127.0.0.8", false);
    assert!(next.replies[0].starts_with("220 ") && !next.replies[0].contains('\n'), "{next:?}");
    assert!(next.queued(), "{next:?}");
}

/// A reload (SIGHUP) that adds DNS lists applies them to the next
/// connections, and keeps what pregreet learned.
#[test]
fn reload_adds_lists_and_keeps_pregreet_results() {
    let dns = lists();
    let (ph, _mail) = hub(&dns, &["screen.pregreet = true", "screen.greet_wait = \"1s\""]);
    let addr = ph.smtp_addr();
    let early = dialogue(addr, "127.0.0.7", true);
    assert!(early.replies[0].ends_with("\n521 5.5.1 Protocol error"), "{early:?}");
    let listed = dialogue(addr, "127.0.0.2", false);
    assert!(listed.queued(), "no lists yet: {listed:?}");

    let text = std::fs::read_to_string(ph.config_path()).unwrap();
    std::fs::write(ph.config_path(), with_lines(&text, &[SITES])).unwrap();
    let pid = rustix::process::Pid::from_raw(ph.pid().expect("running") as i32).unwrap();
    rustix::process::kill_process(pid, rustix::process::Signal::HUP).unwrap();
    assert!(ph.wait_for_log("reload: configuration", secs(10)), "{}", ph.log());

    let listed = dialogue(addr, "127.0.0.2", false);
    assert_eq!(
        listed.rcpt(),
        "550 5.7.1 Service unavailable; client [127.0.0.2] blocked using zen.example",
        "{listed:?}\n{}",
        ph.log()
    );
    let again = dialogue(addr, "127.0.0.7", false);
    assert!(again.replies[0].starts_with("521 5.7.1 "), "{again:?}");
}
