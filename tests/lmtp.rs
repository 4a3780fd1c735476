//! End-to-end for the `lmtp:` transport against a real Dovecot LMTP
//! server (a private instance, `harness::dovecot`): the hub's transport
//! table sends a domain to Dovecot, mail is read back from the Maildir
//! Dovecot wrote, bounces from the sender's own Maildir on the hub.
//!
//! Scenarios:
//! 1. Over TCP (`lmtp:[ip]:port`), one message to three recipients:
//!    Dovecot takes it for one, refuses an unknown one at RCPT (550) and
//!    one over quota after the final dot (552, its own reply among the
//!    per-recipient replies). The refused two bounce to the sender; the
//!    other is delivered once.
//! 2. Over the Unix socket (`lmtp:unix:/path`): one delivered once, one
//!    unknown bounced.
//! 3. `local.local_transport = "lmtp:unix:..."` sends every local domain
//!    to Dovecot, bounces included: the sender's bounce lands in the
//!    sender's Dovecot Maildir.
//! 4. `route explain` names the LMTP hop.

mod harness;

use harness::dovecot::Dovecot;
use harness::*;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

/// A hub delivering example.org (the senders) to its own Maildirs and
/// mail.test through `transport`.
fn hub(dir: &Path, transport: &str) -> Posthorn {
    let table = dir.join("transport");
    fs::write(&table, format!("mail.test {transport}\n")).unwrap();
    let base =
        "role = \"hub\"\n\n[smtp]\nlisten = [\"127.0.0.1:0\"]\n\n[queue]\nretry_min = \"1s\"\nretry_max = \"2s\"\n";
    let maildir =
        format!("deliver.maildir_root = {}", toml_str(&format!("{}/{{domain}}/{{user}}", maildirs(dir).display())));
    let maps = format!("deliver.transport_maps = [{}]", toml_str(&format!("texthash:{}", table.display())));
    Posthorn::start(&with_lines(base, &["access.local_domains = [\"example.org\"]", &maildir, &maps]))
}

fn maildirs(dir: &Path) -> PathBuf {
    dir.join("mail")
}

/// The messages in `user@example.org`'s Maildir on the hub.
fn hub_messages(dir: &Path, user: &str) -> Vec<String> {
    let new = maildirs(dir).join("example.org").join(user).join("new");
    let files = fs::read_dir(new).map(|rd| rd.filter_map(|e| e.ok()).collect::<Vec<_>>()).unwrap_or_default();
    files.iter().filter_map(|e| fs::read_to_string(e.path()).ok()).collect()
}

/// The bounces alice got, once they name every one of `rcpts`.
fn bounces_naming(ph: &Posthorn, dir: &Path, rcpts: &[&str]) -> Vec<String> {
    let names_all =
        |got: &[String]| rcpts.iter().all(|r| got.iter().any(|b| b.contains(&format!("Final-Recipient: rfc822; {r}"))));
    let ok = wait_until(secs(30), || names_all(&hub_messages(dir, "alice")));
    assert!(ok, "no bounce for {rcpts:?}; log:\n{}", ph.log());
    hub_messages(dir, "alice")
}

fn status_line(ph: &Posthorn, rcpt: &str, status: &str) -> String {
    let (to, st) = (format!("to=<{rcpt}>"), format!("status={status}"));
    assert!(ph.wait_for_log_count(&[&to, &st], 1, secs(30)), "no `{to} ... {st}`; log:\n{}", ph.log());
    ph.log_lines(&[&to, &st]).remove(0)
}

#[test]
fn per_recipient_replies_over_tcp_bounce_the_refused_and_deliver_the_rest_once() {
    let dovecot = Dovecot::start(&["bob@mail.test"], &["carol@mail.test"]);
    let dir = tempfile::tempdir().unwrap();
    let addr = dovecot.addr();
    let ph = hub(dir.path(), &format!("lmtp:[{}]:{}", addr.ip(), addr.port()));
    let msg = message(&[("From", "alice@example.org"), ("Subject", "to the store")], "stored by Dovecot\n");
    let rcpts = ["bob@mail.test", "nobody@mail.test", "carol@mail.test"];
    smtplib_send(ph.smtp_addr(), "alice@example.org", &rcpts, &msg).unwrap();

    let sent = status_line(&ph, "bob@mail.test", "sent");
    assert!(sent.contains("posthorn/lmtp["), "{sent}");
    assert!(sent.contains(&format!("relay={}[{}]:{}", addr.ip(), addr.ip(), addr.port())), "{sent}");
    let unknown = status_line(&ph, "nobody@mail.test", "bounced");
    assert!(unknown.contains("dsn=5.1.1"), "{unknown}");
    let full = status_line(&ph, "carol@mail.test", "bounced");
    assert!(full.contains("dsn=5.2.2") && full.contains("end of DATA"), "{full}");

    let bounces = bounces_naming(&ph, dir.path(), &["nobody@mail.test", "carol@mail.test"]);
    let all = bounces.concat();
    assert!(all.contains("Action: failed") && all.contains("Quota exceeded"), "{all}");
    assert!(!all.contains("Final-Recipient: rfc822; bob@mail.test"), "bob was delivered: {all}");

    assert!(ph.wait_for_queued(0, secs(15)), "queue not empty; log:\n{}", ph.log());
    let got = dovecot.messages("bob");
    assert_eq!(got.len(), 1, "bob has the message once; dovecot log:\n{}", dovecot.log());
    assert_eq!(header(&got[0], "Subject").as_deref(), Some("to the store"));
    assert_eq!(header(&got[0], "Return-Path").as_deref(), Some("<alice@example.org>"));
    assert!(dovecot.messages("carol").is_empty(), "carol is over quota");
    assert!(dovecot.messages("nobody").is_empty());
}

#[test]
fn over_the_unix_socket_one_bounces_and_the_other_is_delivered_once() {
    let dovecot = Dovecot::start(&["bob@mail.test"], &[]);
    let dir = tempfile::tempdir().unwrap();
    let ph = hub(dir.path(), &format!("lmtp:unix:{}", dovecot.socket().display()));
    let msg = message(&[("From", "alice@example.org"), ("Subject", "by socket")], "x\n");
    smtplib_send(ph.smtp_addr(), "alice@example.org", &["bob@mail.test", "nobody@mail.test"], &msg).unwrap();

    let sent = status_line(&ph, "bob@mail.test", "sent");
    assert!(sent.contains(&format!("relay=unix:{}", dovecot.socket().display())), "{sent}");
    bounces_naming(&ph, dir.path(), &["nobody@mail.test"]);
    assert!(ph.wait_for_queued(0, secs(15)), "queue not empty; log:\n{}", ph.log());
    let got = dovecot.wait_messages("bob", 1, secs(5));
    assert_eq!(got.len(), 1, "dovecot log:\n{}", dovecot.log());
    assert_eq!(header(&got[0], "Subject").as_deref(), Some("by socket"));
}

#[test]
fn local_domains_go_to_lmtp_with_local_transport() {
    let dovecot = Dovecot::start(&["alice@example.org", "bob@example.org"], &[]);
    let base =
        "role = \"hub\"\n\n[smtp]\nlisten = [\"127.0.0.1:0\"]\n\n[queue]\nretry_min = \"1s\"\nretry_max = \"2s\"\n";
    let lmtp = format!("local.local_transport = {}", toml_str(&format!("lmtp:unix:{}", dovecot.socket().display())));
    let ph = Posthorn::start(&with_lines(base, &["access.local_domains = [\"example.org\"]", &lmtp]));
    let msg = message(&[("From", "alice@example.org"), ("Subject", "local by lmtp")], "x\n");
    smtplib_send(ph.smtp_addr(), "alice@example.org", &["bob@example.org", "nobody@example.org"], &msg).unwrap();

    status_line(&ph, "bob@example.org", "sent");
    status_line(&ph, "nobody@example.org", "bounced");
    let bounce = dovecot.wait_messages("alice", 1, secs(30));
    assert_eq!(bounce.len(), 1, "the bounce went to alice through LMTP; log:\n{}", ph.log());
    let text = String::from_utf8_lossy(&bounce[0]).into_owned();
    assert!(text.contains("Final-Recipient: rfc822; nobody@example.org"), "{text}");
    assert!(ph.wait_for_queued(0, secs(15)), "queue not empty; log:\n{}", ph.log());
    let got = dovecot.messages("bob");
    assert_eq!(got.len(), 1, "dovecot log:\n{}", dovecot.log());
    assert_eq!(header(&got[0], "Subject").as_deref(), Some("local by lmtp"));
}

#[test]
fn route_explain_names_the_lmtp_hop() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path().display();
    fs::write(dir.path().join("transport"), "mail.test lmtp:unix:/run/dovecot/lmtp\nstore.test lmtp:[127.0.0.1]:24\n")
        .unwrap();
    let config = dir.path().join("posthorn.toml");
    fs::write(
        &config,
        format!(
            "role = \"hub\"\nspool = \"{d}/spool\"\n[access]\nlocal_domains = [\"example.org\"]\n\
             [local]\nlocal_transport = \"lmtp:[127.0.0.1]:2424\"\n\
             [deliver]\ntransport_maps = [\"texthash:{d}/transport\"]\n"
        ),
    )
    .unwrap();
    let run = |address: &str| {
        let out =
            Command::new(BIN).args(["-c", config.to_str().unwrap(), "route", "explain", address]).output().unwrap();
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        String::from_utf8(out.stdout).unwrap()
    };
    let text = run("bob@mail.test");
    assert!(text.contains("bob@mail.test: lmtp:unix:/run/dovecot/lmtp -> LMTP server"), "{text}");
    assert!(text.contains("tls=none (lmtp)"), "{text}");
    let text = run("bob@store.test");
    assert!(text.contains("bob@store.test: lmtp:[127.0.0.1]:24 -> LMTP server"), "{text}");
    let text = run("alice@example.org");
    let want = "alice@example.org: lmtp:[127.0.0.1]:2424 -> LMTP server (example.org is a local domain, local.local_transport)";
    assert!(text.contains(want), "{text}");
}
