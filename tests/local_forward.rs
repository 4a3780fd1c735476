//! End-to-end for `.forward` files, as Postfix's local(8) treats them:
//! a root daemon with the local delivery agent, login accounts made for
//! each test, mail by SMTP, mailboxes and an SMTP sink read back.
//!
//! Scenarios:
//! 1. ann's `.forward` names bob: the mail lands in bob's mbox with
//!    `Delivered-To:` ann, ann's mbox stays empty, and the log says
//!    `forwarded as ID`; `\ann, bob` keeps a copy and forwards one;
//!    `route explain` shows the chain, read as ann at delivery; a
//!    `.forward` naming only ann's own address keeps the mail.
//! 2. A `.forward` to a remote address: the copy reaches the sink (MX
//!    through the harness DNS) with the original envelope sender, or an
//!    SRS0 sender at the hub's domain when SRS is set up.
//! 3. A group-writable `.forward` is ignored with a log line naming it;
//!    the mail goes to the user's own mailbox.
//! 4. ann forwards to bob and bob to ann: the copy that comes back to
//!    ann bounces with 5.4.6 "mail forwarding loop", to the sender's
//!    mailbox, and nothing goes round again. A `.forward` to a local user
//!    who does not exist bounces with 5.1.1.
//! 5. A `.forward`'s `|command` runs as the user (it records `id -u`);
//!    its `/file` is written as the user; an address whose extension
//!    holds shell metacharacters reaches the command's environment and
//!    no shell; a `.forward` naming a file the user cannot write (root's)
//!    defers with the reason, and the file stays untouched.
//! 6. A daemon running as the user (its own account) reads and carries
//!    out that user's `.forward` itself: a command and a mailbox copy.

mod harness;

use harness::*;
use std::fs;
use std::net::IpAddr;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::Path;
use std::process::Command;

/// A hub that delivers example.org with `local:` (the daemon is root, so
/// the agent runs), and everything else by MX to `sink` through `dns`.
fn hub(spool: &Path, dns: &DnsServer, sink: &Sink, extra: &[&str]) -> Posthorn {
    let base = "role = \"hub\"\n\n[smtp]\nlisten = [\"127.0.0.1:0\"]\n\n[relay]\ntls = \"none\"\n\n[queue]\nretry_min = \"1s\"\nretry_max = \"2s\"\n";
    let mut lines = vec![
        "access.local_domains = [\"example.org\"]".to_string(),
        "local.local_transport = \"local\"".into(),
        format!("local.mail_spool_directory = {}", toml_str(&spool.display().to_string())),
        format!("deliver.mx_port = {}", sink.addr().port()),
        dns.config_line(),
    ];
    lines.extend(extra.iter().map(|s| s.to_string()));
    let refs: Vec<&str> = lines.iter().map(String::as_str).collect();
    Posthorn::start(&with_lines(base, &refs))
}

/// DNS that sends remote.example's mail to `sink`.
fn dns_for(sink: &Sink) -> DnsServer {
    let IpAddr::V4(ip) = sink.addr().ip() else { panic!("the sink is on IPv4") };
    DnsServer::start(vec![
        DnsRecord::mx("remote.example", 10, "mx.remote.example"),
        DnsRecord::a("mx.remote.example", ip),
    ])
}

/// Writes `user`'s `.forward`, owned by the user, with `mode`.
fn write_forward(user: &TestUser, text: &str, mode: u32) {
    let path = user.home.join(".forward");
    fs::write(&path, text).unwrap();
    let chown = Command::new("chown").arg(format!("{0}:{0}", user.name)).arg(&path).status().unwrap();
    assert!(chown.success());
    fs::set_permissions(&path, fs::Permissions::from_mode(mode)).unwrap();
}

/// The messages of an mbox, split at its `From ` lines.
fn mbox_messages(path: &Path) -> Vec<String> {
    let text = fs::read_to_string(path).unwrap_or_default();
    let mut out: Vec<String> = Vec::new();
    for line in text.split_inclusive('\n') {
        if line.starts_with("From ") {
            out.push(String::new());
        }
        if let Some(last) = out.last_mut() {
            last.push_str(line);
        }
    }
    out
}

fn send(ph: &Posthorn, from: &str, to: &str, subject: &str) {
    let msg = message(&[("From", from), ("Subject", subject)], "the body line\n");
    smtplib_send(ph.smtp_addr(), from, &[to], &msg).unwrap();
}

#[test]
fn forwards_to_local_and_remote_addresses() {
    let (tree, spool) = mail_tree();
    let ann = TestUser::new(tree.path());
    let bob = TestUser::new(tree.path());
    let sink = Sink::start();
    let dns = dns_for(&sink);
    let ph = hub(&spool, &dns, &sink, &[]);
    let (ann_box, bob_box) = (spool.join(&ann.name), spool.join(&bob.name));

    // 1. To another local user.
    write_forward(&ann, &format!("# mine\n{}\n", bob.name), 0o644);
    send(&ph, "sender@example.net", &ann.address(), "to bob");
    assert!(wait_until(secs(20), || mbox_messages(&bob_box).len() == 1), "{}", ph.log());
    let got = &mbox_messages(&bob_box)[0];
    assert!(got.contains(&format!("Delivered-To: {}\n", ann.address())), "{got}");
    assert!(got.contains(&format!("Delivered-To: {}\n", bob.address())), "{got}");
    assert!(got.contains("Return-Path: <sender@example.net>") && got.contains("Subject: to bob"), "{got}");
    assert!(!ann_box.exists(), "ann's mail went on, not into her mailbox");
    assert!(ph.wait_for_log(&format!("to=<{}>", ann.address()), secs(5)));
    let line = ph.log_lines(&[&format!("to=<{}>", ann.address()), "status=sent"]);
    assert!(line.iter().any(|l| l.contains("(forwarded as ")), "{line:?}");

    // `route explain` shows the chain.
    let explained = ph.command(&["route", "explain", &ann.address()], b"");
    let explained = String::from_utf8_lossy(&explained.stdout);
    let want = format!("(.forward, read as {} at delivery): forward to {}", ann.name, bob.address());
    assert!(explained.contains(&want), "{explained}");

    // `\ann, bob`: a copy for ann, one for bob.
    write_forward(&ann, &format!("\\{}, {}\n", ann.name, bob.name), 0o600);
    send(&ph, "sender@example.net", &ann.address(), "both");
    assert!(wait_until(secs(20), || mbox_messages(&bob_box).len() == 2), "{}", ph.log());
    assert!(wait_until(secs(20), || mbox_messages(&ann_box).len() == 1), "{}", ph.log());
    assert!(mbox_messages(&ann_box)[0].contains("Subject: both"));
    assert_eq!(fs::metadata(&ann_box).unwrap().uid(), ann.uid);

    // A .forward naming only ann's own address: her mailbox, no loop.
    write_forward(&ann, &format!("{}\n", ann.address().to_uppercase()), 0o644);
    send(&ph, "sender@example.net", &ann.address(), "just me");
    assert!(wait_until(secs(20), || mbox_messages(&ann_box).len() == 2), "{}", ph.log());
    assert!(mbox_messages(&ann_box)[1].contains("Subject: just me"));
    assert_eq!(mbox_messages(&bob_box).len(), 2);

    // 2. To a remote address: the sink gets it from the original sender.
    write_forward(&ann, "carol@remote.example\n", 0o644);
    send(&ph, "sender@example.net", &ann.address(), "far away");
    let all = sink.wait_for_parsed(1, secs(20));
    assert_eq!(all.len(), 1, "{}", ph.log());
    assert_eq!(all[0].mail_from, "sender@example.net");
    assert_eq!(all[0].rcpt_to, ["carol@remote.example"]);
    assert_eq!(all[0].header("Delivered-To").as_deref(), Some(ann.address().as_str()));
    assert_eq!(all[0].header("Subject").as_deref(), Some("far away"));
    assert_eq!(mbox_messages(&ann_box).len(), 2, "no copy kept");

    // With SRS, the copy that leaves the hub's domains gets an SRS sender.
    let secret = tree.path().join("srs.secret");
    fs::write(&secret, "a secret of the forward test\n").unwrap();
    let srs_lines = [
        "srs.domain = \"example.org\"".to_string(),
        format!("srs.secret = {}", toml_str(&secret.display().to_string())),
    ];
    let srs = hub(&spool, &dns, &sink, &[&srs_lines[0], &srs_lines[1]]);
    send(&srs, "sender@example.net", &ann.address(), "far away, SRS");
    let all = sink.wait_for_parsed(2, secs(20));
    assert_eq!(all.len(), 2, "{}", srs.log());
    assert!(
        all[1].mail_from.starts_with("SRS0=") && all[1].mail_from.ends_with("=example.net=sender@example.org"),
        "{:?}",
        all[1]
    );
    assert_eq!(all[1].rcpt_to, ["carol@remote.example"]);
}

#[test]
fn an_unsafe_forward_is_ignored_and_a_loop_bounces() {
    let (tree, spool) = mail_tree();
    let ann = TestUser::new(tree.path());
    let bob = TestUser::new(tree.path());
    let dan = TestUser::new(tree.path());
    let sink = Sink::start();
    let dns = dns_for(&sink);
    let ph = hub(&spool, &dns, &sink, &[]);
    let (ann_box, bob_box, dan_box) = (spool.join(&ann.name), spool.join(&bob.name), spool.join(&dan.name));

    // 3. Group-writable: ignored, with a log line, and the mail stays.
    write_forward(&ann, "carol@remote.example\n", 0o664);
    send(&ph, &dan.address(), &ann.address(), "kept home");
    assert!(wait_until(secs(20), || mbox_messages(&ann_box).len() == 1), "{}", ph.log());
    let forward = ann.home.join(".forward");
    assert!(ph.wait_for_log(&format!("{} ignored: group-writable (mode 664)", forward.display()), secs(5)));
    assert!(sink.messages().is_empty(), "nothing forwarded");

    // 4. ann -> bob -> ann: a bounce with 5.4.6 to dan, and no more mail.
    write_forward(&ann, &format!("{}\n", bob.address()), 0o644);
    write_forward(&bob, &format!("{}\n", ann.address()), 0o644);
    send(&ph, &dan.address(), &ann.address(), "round and round");
    assert!(wait_until(secs(30), || mbox_messages(&dan_box).len() == 1), "{}", ph.log());
    let dsn = mbox_messages(&dan_box)[0].replace("\n ", " ");
    assert!(dsn.contains("5.4.6"), "{dsn}");
    assert!(dsn.contains(&format!("mail forwarding loop for {}", ann.address())), "{dsn}");
    std::thread::sleep(secs(3));
    assert_eq!(mbox_messages(&ann_box).len(), 1, "only the first message");
    assert!(!bob_box.exists());
    assert_eq!(mbox_messages(&dan_box).len(), 1, "one bounce");
    assert!(ph.wait_for_queued(0, secs(10)), "nothing left going round");

    // A .forward to a local user who does not exist: a bounce, 5.1.1.
    write_forward(&ann, "nobody-here-posthorn\n", 0o644);
    send(&ph, &dan.address(), &ann.address(), "to no one");
    assert!(wait_until(secs(20), || mbox_messages(&dan_box).len() == 2), "{}", ph.log());
    let dsn = mbox_messages(&dan_box)[1].replace("\n ", " ");
    assert!(dsn.contains("Status: 5.1.1") && dsn.contains("<nobody-here-posthorn@example.org>"), "{dsn}");
    assert!(ph.log().contains(&format!("status=bounced (forwarding as {}'s .forward asks: 550 5.1.1", ann.address())));
}

#[test]
fn commands_and_files_run_as_the_user() {
    let (tree, spool) = mail_tree();
    let ann = TestUser::new(tree.path());
    let eve = TestUser::new(tree.path());
    let sink = Sink::start();
    let dns = dns_for(&sink);
    let ph = hub(&spool, &dns, &sink, &["local.recipient_delimiter = \"+\""]);

    // 5. A command and a file, as ann.
    let record = tree.path().join("record.sh");
    let out = ann.home.join("ran");
    fs::write(&record, format!("#!/bin/sh\n{{ echo \"uid: $(id -u)\"; env | sort; cat; }} > {}.$1\n", out.display()))
        .unwrap();
    fs::set_permissions(&record, fs::Permissions::from_mode(0o755)).unwrap();
    let archive = ann.home.join("archive");
    write_forward(&ann, &format!("\"|{} one\"\n{}\n", record.display(), archive.display()), 0o644);
    send(&ph, "sender@example.net", &ann.address(), "to a command");
    let ran = ann.home.join("ran.one");
    assert!(
        wait_until(secs(20), || fs::read_to_string(&ran).is_ok_and(|t| t.contains("the body line"))),
        "{}",
        ph.log()
    );
    let text = fs::read_to_string(&ran).unwrap();
    assert!(text.starts_with(&format!("uid: {}\n", ann.uid)), "{text}");
    assert!(text.contains(&format!("RECIPIENT={}\n", ann.address())), "{text}");
    assert_eq!(fs::metadata(&ran).unwrap().uid(), ann.uid);
    assert!(wait_until(secs(20), || fs::read_to_string(&archive).is_ok_and(|t| t.contains("to a command"))));
    assert_eq!(fs::metadata(&archive).unwrap().uid(), ann.uid, "written as ann");
    assert!(!spool.join(&ann.name).exists(), "no mailbox copy");

    // The address's extension reaches the environment, never a shell.
    let pwned = tree.path().join("pwned");
    let weird = format!("{}+x`touch${{IFS}}{}`@example.org", ann.name, pwned.display());
    fs::remove_file(&ran).unwrap();
    send(&ph, "sender@example.net", &weird, "weird");
    assert!(wait_until(secs(20), || fs::read_to_string(&ran).is_ok_and(|t| t.contains("weird"))), "{}", ph.log());
    let text = fs::read_to_string(&ran).unwrap();
    assert!(text.contains(&format!("RECIPIENT={weird}\n")), "{text}");
    assert!(!pwned.exists(), "a shell saw the address");

    // A file eve cannot write: deferred, the reason logged, untouched.
    let roots = tree.path().join("posthorn-test-owned-by-root");
    fs::write(&roots, "root's\n").unwrap();
    fs::set_permissions(&roots, fs::Permissions::from_mode(0o644)).unwrap();
    write_forward(&eve, &format!("{}\n", roots.display()), 0o644);
    send(&ph, "sender@example.net", &eve.address(), "not yours");
    let to = format!("to=<{}>", eve.address());
    assert!(ph.wait_for_log_count(&[&to, "status=deferred"], 2, secs(20)), "{}", ph.log());
    let lines = ph.log_lines(&[&to, "status=deferred"]);
    assert!(lines[0].contains("Permission denied"), "{lines:?}");
    assert_eq!(fs::read_to_string(&roots).unwrap(), "root's\n");
    assert_eq!(fs::metadata(&roots).unwrap().uid(), 0);
    assert!(!spool.join(&eve.name).exists());
}

#[test]
fn the_daemons_own_account_reads_its_forward_itself() {
    let (tree, spool) = mail_tree();
    let ann = TestUser::new(tree.path());
    let sink = Sink::start();
    let dns = dns_for(&sink);
    let out = ann.home.join("ran");
    let record = tree.path().join("record.sh");
    fs::write(&record, format!("#!/bin/sh\n{{ id -u; cat; }} > {}\n", out.display())).unwrap();
    fs::set_permissions(&record, fs::Permissions::from_mode(0o755)).unwrap();
    write_forward(&ann, &format!("\\{}\n|{}\n", ann.name, record.display()), 0o644);
    let user = format!("user = {}", toml_str(&ann.name));
    // A mailbox in the home: the daemon's account is not in the spool's group.
    let ph = hub(&spool, &dns, &sink, &[&user, "local.home_mailbox = \"Mailbox\""]);
    send(&ph, "sender@example.net", &ann.address(), "in-process");
    let ann_box = ann.home.join("Mailbox");
    assert!(wait_until(secs(20), || mbox_messages(&ann_box).len() == 1), "{}", ph.log());
    assert!(wait_until(secs(20), || fs::read_to_string(&out).is_ok_and(|t| t.contains("in-process"))));
    assert!(fs::read_to_string(&out).unwrap().starts_with(&format!("{}\n", ann.uid)));
    let sent = ph.log_lines(&[&format!("to=<{}>", ann.address()), "status=sent"]);
    let want = format!("(delivered to command {}, mailbox {})", record.display(), ann_box.display());
    assert!(sent.iter().any(|l| l.contains(&want)), "{sent:?}");
}
