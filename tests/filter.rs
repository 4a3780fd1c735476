//! End-to-end: the after-queue content filter (`[filter]`).
//!
//! 1. SMTP filter: a real filter process (Python, started here) takes each
//!    message from the hub, adds `X-Filtered: yes` and sends it back to the
//!    hub's reinjection listener; the header arrives in the Maildir, once.
//! 2. SMTP filter down: messages wait (deferred, never bounced); once the
//!    filter is up again they are all delivered.
//! 3. SMTP filter replies: 4xx defers, 5xx bounces (and the bounce itself
//!    goes through the filter).
//! 4. Pipe filter: argument vector, message on stdin; exit 0, 75, 1.
//! 5. Pipe filter that hangs: killed after `filter.pipe_timeout`, deferred.
//! 6. `filter.domains`: only those recipients go through the filter.

mod harness;

use std::fs;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Command;

use harness::*;

/// A hub on 127.0.0.1 delivering `example.org` (and `other.test`) to
/// Maildirs under `dir`, with the reinjection listener and `lines`.
fn hub(dir: &Path, lines: &[&str]) -> Posthorn {
    let root = format!("{}/mail/{{domain}}/{{user}}", dir.display());
    let base = "role = \"hub\"\n\n[smtp]\nlisten = [\"127.0.0.1:0\"]\n\n[relay]\ntls = \"none\"\nconnect_timeout = \"5s\"\n\n[queue]\nretry_min = \"1s\"\nretry_max = \"2s\"\n";
    let mut all = vec![
        "access.local_domains = [\"example.org\", \"other.test\"]".to_string(),
        format!("deliver.maildir_root = {}", toml_str(&root)),
        "filter.reinject_listen = \"127.0.0.1:0\"".to_string(),
    ];
    all.extend(lines.iter().map(|l| l.to_string()));
    let refs: Vec<&str> = all.iter().map(String::as_str).collect();
    Posthorn::start(&with_lines(base, &refs))
}

fn maildir(dir: &Path, domain: &str, user: &str) -> Vec<Vec<u8>> {
    let new = dir.join("mail").join(domain).join(user).join("new");
    let mut files: Vec<PathBuf> = fs::read_dir(new).into_iter().flatten().flatten().map(|e| e.path()).collect();
    files.sort();
    files.iter().filter_map(|p| fs::read(p).ok()).collect()
}

fn wait_maildir(dir: &Path, domain: &str, user: &str, n: usize) -> Vec<Vec<u8>> {
    wait_until(secs(20), || maildir(dir, domain, user).len() >= n);
    maildir(dir, domain, user)
}

fn send(hub: &Posthorn, from: &str, to: &[&str], subject: &str) {
    let msg = message(&[("From", from), ("To", &to.join(", ")), ("Subject", subject)], "body\n");
    smtplib_send(hub.smtp_addr(), from, to, &msg).unwrap_or_else(|e| panic!("submit {subject}: {e}"));
}

/// Waits for a `to=<rcpt> ... status=...` line and returns it.
fn status_line(hub: &Posthorn, rcpt: &str, status: &str) -> String {
    let to = format!("to=<{rcpt}>");
    let st = format!("status={status}");
    assert!(hub.wait_for_log_count(&[&to, &st], 1, secs(20)), "no `{to} ... {st}` line; log:\n{}", hub.log());
    hub.log_lines(&[&to, &st]).remove(0)
}

fn filter_line(addr: SocketAddr) -> String {
    format!("filter.content_filter = \"smtp:[{}]:{}\"", addr.ip(), addr.port())
}

#[test]
fn smtp_filter_adds_its_header_and_reinjects_once() {
    let dir = tempfile::tempdir().unwrap();
    let filter_addr = free_addr();
    let hub = hub(dir.path(), &[&filter_line(filter_addr)]);
    let mut filter = SmtpFilter::new(dir.path(), filter_addr, hub.reinject_addr());
    filter.start();

    send(&hub, "app@vm.test", &["alice@example.org", "bob@example.org"], "filtered");
    let alice = wait_maildir(dir.path(), "example.org", "alice", 1);
    let bob = wait_maildir(dir.path(), "example.org", "bob", 1);
    assert_eq!((alice.len(), bob.len()), (1, 1), "log:\n{}", hub.log());
    for got in [&alice[0], &bob[0]] {
        assert_eq!(headers(got, "X-Filtered"), ["yes"], "filtered exactly once");
        assert_eq!(header(got, "Subject").as_deref(), Some("filtered"));
    }
    // The first hop was the filter, for both recipients in one delivery.
    // The filter reinjects before it answers the hub, so the Maildir's
    // `sent` line may come first: wait for the filter hop's own line.
    let hop = format!("relay={ip}[{ip}]:{}", filter_addr.port(), ip = filter_addr.ip());
    for rcpt in ["alice@example.org", "bob@example.org"] {
        let to = format!("to=<{rcpt}>");
        assert!(
            hub.wait_for_log_count(&[&to, "status=sent", &hop], 1, secs(20)),
            "no `{to} ... {hop} ... status=sent` line; log:\n{}",
            hub.log()
        );
    }
    // No loop: nothing else arrives, the queue empties.
    std::thread::sleep(secs(1));
    assert_eq!(maildir(dir.path(), "example.org", "alice").len(), 1);
    assert!(hub.wait_for_queued(0, secs(10)), "queue empties; log:\n{}", hub.log());
}

#[test]
fn smtp_filter_down_defers_and_loses_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let filter_addr = free_addr();
    let hub = hub(dir.path(), &[&filter_line(filter_addr)]);
    let mut filter = SmtpFilter::new(dir.path(), filter_addr, hub.reinject_addr());

    for i in 0..3 {
        send(&hub, "app@vm.test", &["carol@example.org"], &format!("waiting {i}"));
    }
    assert!(
        hub.wait_for_log_count(&["to=<carol@example.org>", "status=deferred"], 3, secs(20)),
        "all three deferred; log:\n{}",
        hub.log()
    );
    std::thread::sleep(secs(3));
    // (A count can miss a message between two queue directories; hence a wait.)
    assert!(hub.wait_for_queued(3, secs(5)), "all three still queued; log:\n{}", hub.log());
    assert!(maildir(dir.path(), "example.org", "carol").is_empty(), "nothing went around the filter");
    assert!(!hub.log().contains("status=bounced"), "never bounced for the filter being down");

    filter.start();
    let out = hub.command(&["queue", "flush"], b"");
    assert!(out.status.success(), "queue flush: {out:?}");
    let got = wait_maildir(dir.path(), "example.org", "carol", 3);
    assert_eq!(got.len(), 3, "log:\n{}", hub.log());
    let mut subjects: Vec<String> = got.iter().map(|m| header(m, "Subject").unwrap()).collect();
    subjects.sort();
    assert_eq!(subjects, ["waiting 0", "waiting 1", "waiting 2"]);
    assert!(got.iter().all(|m| headers(m, "X-Filtered") == ["yes"]));
    assert!(hub.wait_for_queued(0, secs(10)));
}

#[test]
fn smtp_filter_4xx_defers_and_5xx_bounces() {
    let dir = tempfile::tempdir().unwrap();
    let filter_addr = free_addr();
    let hub = hub(dir.path(), &[&filter_line(filter_addr)]);
    let mut filter = SmtpFilter::new(dir.path(), filter_addr, hub.reinject_addr());
    filter.start();

    send(&hub, "app@example.org", &["tempfail@example.org"], "later");
    let line = status_line(&hub, "tempfail@example.org", "deferred");
    assert!(line.contains("filter busy"), "{line}");

    send(&hub, "app@example.org", &["reject@example.org"], "refused");
    let line = status_line(&hub, "reject@example.org", "bounced");
    assert!(line.contains("rejected by content filter"), "{line}");
    // The bounce is mail like any other: through the filter to the sender.
    let bounce = wait_maildir(dir.path(), "example.org", "app", 1);
    assert_eq!(bounce.len(), 1, "log:\n{}", hub.log());
    assert_eq!(headers(&bounce[0], "X-Filtered"), ["yes"]);
    assert!(String::from_utf8_lossy(&bounce[0]).contains("reject@example.org"));

    assert!(hub.wait_for_queued(1, secs(10)), "only the deferred one waits");
    assert!(maildir(dir.path(), "example.org", "tempfail").is_empty());
}

/// A pipe filter script: records its arguments and stdin as one
/// `*.call` file in `dir`, then exits by the first recipient's name.
fn pipe_script(dir: &Path) -> PathBuf {
    let calls = dir.join("calls");
    fs::create_dir_all(&calls).unwrap();
    let script = dir.join("pipe-filter");
    let text = format!(
        "#!/bin/sh\nf=$(mktemp {calls}/call.XXXXXX)\n{{ printf '%s\\n' \"$@\"; echo; cat; }} > \"$f\"\nmv \"$f\" \"$f.call\"\ncase \"$2\" in\n  later@*) exit 75 ;;\n  fail@*) echo 'no such mailbox here' >&2; exit 1 ;;\n  hang@*) exec sleep 60 ;;\nesac\nexit 0\n",
        calls = calls.display()
    );
    fs::write(&script, text).unwrap();
    fs::set_permissions(&script, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    script
}

/// Each run of the pipe filter: its arguments and the message it read.
fn calls(dir: &Path) -> Vec<(Vec<String>, String)> {
    let mut files: Vec<PathBuf> = fs::read_dir(dir.join("calls"))
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|x| x == "call"))
        .collect();
    files.sort();
    files
        .iter()
        .map(|p| {
            let text = fs::read_to_string(p).unwrap();
            let (args, message) = text.split_once("\n\n").unwrap_or((&text, ""));
            (args.lines().map(String::from).collect(), message.to_string())
        })
        .collect()
}

fn pipe_line(script: &Path) -> String {
    format!("filter.content_filter = \"pipe:{} ${{sender}} ${{recipient}}\"", script.display())
}

#[test]
fn pipe_filter_exit_codes() {
    let dir = tempfile::tempdir().unwrap();
    let script = pipe_script(dir.path());
    let hub = hub(dir.path(), &[&pipe_line(&script), "filter.pipe_timeout = \"2s\""]);

    // Exit 0: handed over; the filter is responsible from here.
    send(&hub, "app@example.org", &["ok@example.org", "\"odd;$(x) name\"@example.org"], "piped");
    status_line(&hub, "ok@example.org", "sent");
    let call = calls(dir.path()).into_iter().find(|(a, _)| a.get(1).map(String::as_str) == Some("ok@example.org"));
    let (args, message) = call.expect("the filter ran for ok@");
    assert_eq!(args, ["app@example.org", "ok@example.org", "\"odd;$(x) name\"@example.org"], "an argument vector");
    assert!(message.contains("Subject: piped"), "{message}");
    assert!(message.contains("Received: "), "the message as queued: {message}");
    assert!(maildir(dir.path(), "example.org", "ok").is_empty(), "not delivered around the filter");

    // Exit 75: deferred, kept.
    send(&hub, "app@example.org", &["later@example.org"], "later");
    let line = status_line(&hub, "later@example.org", "deferred");
    assert!(line.contains("exited with 75"), "{line}");

    // Exit 1: bounced, with what the filter said; the bounce itself goes
    // through the filter (null sender, to the original sender).
    send(&hub, "app@example.org", &["fail@example.org"], "failing");
    let line = status_line(&hub, "fail@example.org", "bounced");
    assert!(line.contains("exited with 1: no such mailbox here"), "{line}");
    let bounced = wait_until(secs(20), || {
        calls(dir.path()).iter().any(|(a, m)| a[..] == ["", "app@example.org"] && m.contains("fail@example.org"))
    });
    assert!(bounced, "the bounce reached the filter; log:\n{}", hub.log());

    std::thread::sleep(secs(1));
    assert!(hub.wait_for_queued(1, secs(5)), "only the exit-75 message waits; log:\n{}", hub.log());
}

#[test]
fn hanging_pipe_filter_is_killed_and_the_message_deferred() {
    let dir = tempfile::tempdir().unwrap();
    let script = pipe_script(dir.path());
    let hub = hub(dir.path(), &[&pipe_line(&script), "filter.pipe_timeout = \"2s\""]);

    let started = std::time::Instant::now();
    send(&hub, "app@example.org", &["hang@example.org"], "stuck");
    let line = status_line(&hub, "hang@example.org", "deferred");
    assert!(line.contains("killed after 2s"), "{line}");
    assert!(started.elapsed() < secs(15), "the timeout applied");
    assert!(hub.wait_for_queued(1, secs(5)), "still queued; log:\n{}", hub.log());
    assert!(!hub.log().contains("status=bounced"));
}

#[test]
fn only_the_filter_domains_are_filtered() {
    let dir = tempfile::tempdir().unwrap();
    let script = pipe_script(dir.path());
    let hub = hub(dir.path(), &[&pipe_line(&script), "filter.domains = [\"example.org\"]"]);

    send(&hub, "app@vm.test", &["dave@example.org", "erin@other.test"], "split");
    status_line(&hub, "dave@example.org", "sent");
    let direct = wait_maildir(dir.path(), "other.test", "erin", 1);
    assert_eq!(direct.len(), 1, "log:\n{}", hub.log());
    assert!(header(&direct[0], "X-Filtered").is_none());
    let runs = calls(dir.path());
    assert_eq!(runs.len(), 1, "one run of the filter");
    assert_eq!(runs[0].0, ["app@vm.test", "dave@example.org"], "only the filtered domain's recipient");
}

#[test]
fn check_warns_of_a_filter_without_reinjection_listener() {
    let dir = tempfile::tempdir().unwrap();
    let filter = filter_line(free_addr());
    let with = hub(dir.path(), &[&filter]);
    let out = with.command(&["check"], b"");
    assert!(!String::from_utf8_lossy(&out.stdout).contains("reinject_listen"), "{out:?}");
    let base = "role = \"hub\"\n\n[smtp]\nlisten = [\"127.0.0.1:0\"]\n";
    let without = Posthorn::start(&with_lines(base, &[&filter]));
    let out = without.command(&["check"], b"");
    let said = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(1), "{said}");
    assert!(said.contains("filter.reinject_listen is not set") && said.contains("in a loop"), "{said}");
}

/// Sends `message` over SMTP from the source address `from_ip`.
fn send_from(from_ip: &str, to: SocketAddr, sender: &str, rcpt: &str, message: &str) {
    let script = "import smtplib, sys\n\
        with smtplib.SMTP(sys.argv[2], int(sys.argv[3]), source_address=(sys.argv[1], 0), timeout=30) as s:\n\
        \x20   s.sendmail(sys.argv[4], [sys.argv[5]], sys.stdin.read())\n";
    let mut cmd = Command::new("python3");
    cmd.args(["-c", script, from_ip, &to.ip().to_string(), &to.port().to_string(), sender, rcpt]);
    let out = run_with_timeout(cmd, message.as_bytes(), secs(30));
    assert!(out.status.success(), "smtplib from {from_ip}: {}", String::from_utf8_lossy(&out.stderr));
}

/// Only mail we vouch for is DKIM-signed, and the filter's loopback
/// address must not vouch for what it hands back: a stranger's forgery
/// (even one carrying a made-up seal) leaves unsigned after the filter, a
/// trusted client's mail leaves signed, and no seal field leaves the host.
#[test]
fn the_filter_neither_launders_nor_loses_trust_for_dkim() {
    let dir = tempfile::tempdir().unwrap();
    let key = dir.path().join("s1.pem");
    let mut cmd = Command::new(BIN);
    cmd.args(["dkim", "keygen", "example.org", "s1", "--algorithm", "ed25519", "--out"]).arg(&key);
    assert!(run_with_timeout(cmd, b"", secs(60)).status.success());
    let sink = Sink::start();
    let filter_addr = free_addr();
    let dkim = format!(
        "[[dkim.keys]]\ndomain = \"example.org\"\nselector = \"s1\"\nkey = {}\n",
        toml_str(&key.display().to_string())
    );
    let hub = hub(
        dir.path(),
        &[
            &filter_line(filter_addr),
            "access.trusted_networks = [\"127.0.0.1/32\"]",
            "access.relay_domains = [\"example.net\"]",
            &format!("relay.smarthosts = [{}]", toml_str(&sink.addr().to_string())),
            &dkim,
        ],
    );
    let mut filter = SmtpFilter::new(dir.path(), filter_addr, hub.reinject_addr());
    filter.start();

    let forged = "From: CEO <ceo@example.org>\r\nTo: cfo@example.net\r\nSubject: stranger\r\n\r\nPay at once.\r\n";
    send_from("127.0.0.2", hub.smtp_addr(), "ceo@example.org", "cfo@example.net", forged);
    let with_seal = format!("X-Posthorn-Seal: HORV1 {}\r\n{forged}", "ab".repeat(32)).replace("stranger", "sealed");
    send_from("127.0.0.2", hub.smtp_addr(), "ceo@example.org", "cfo@example.net", &with_seal);
    let own = forged.replace("stranger", "trusted");
    send_from("127.0.0.1", hub.smtp_addr(), "ceo@example.org", "cfo@example.net", &own);

    let got = sink.wait_for_parsed(3, secs(30));
    assert_eq!(got.len(), 3, "log:\n{}", hub.log());
    for message in &got {
        let subject = message.header("Subject").unwrap_or_default();
        assert_eq!(message.header("X-Filtered").as_deref(), Some("yes"), "not filtered: {subject}");
        assert_eq!(message.header("X-Posthorn-Seal"), None, "a seal left the host:\n{}", message.text());
        let signed = message.header("DKIM-Signature").is_some();
        assert_eq!(signed, subject.contains("trusted"), "{subject}: signed {signed}\n{}", message.text());
    }
}
