//! End-to-end: what the door does to addresses (issue 14 items 3 to 5),
//! checked where the mail lands: at the satellite's smarthost (Postfix's
//! `smtp-sink`) or in the hub's Maildir, never from a log line.
//!
//! Scenarios:
//! 1. `myorigin`: cron's mail to `root` on a satellite leaves as
//!    `root@myorigin` in the envelope and in `To:`/`Cc:`/`From:`, display
//!    names and comments kept; SMTP from this host gets its header
//!    addresses qualified too; `postconf myorigin` answers.
//! 2. `alias_maps` on a satellite: `root: ops@example.org` sends cron's
//!    mail for root to ops@example.org.
//! 3. `postcat -q` shows `original_recipient:` before the aliased
//!    `recipient:`.
//! 4. `posthorn route explain` shows recipient canonical maps, then the
//!    virtual alias, then the route of the final address; a message sent
//!    to the same address lands there, with `X-Original-To:`.
//! 5. A Bcc'd recipient that only a catch-all matches is traceable: the
//!    Maildir file says `X-Original-To:` the address it was sent to.
//! 6. Virtual alias domains: an unknown address gets `550 5.1.1 ... User
//!    unknown in virtual alias table` at RCPT from a client outside the
//!    trusted networks, the session goes on and a known address, and one a
//!    catch-all covers, are accepted and delivered.

mod harness;

use harness::*;
use std::fs;
use std::path::{Path, PathBuf};

/// cron's own invocation (Debian's cron, `do_command.c`).
const CRON_ARGS: [&str; 5] = ["-FCronDaemon", "-i", "-B8BITMIME", "-oem", "root"];

/// A message as cron writes it, with the headers cron and admins add.
const CRON_MESSAGE: &[u8] = b"From: root (Cron Daemon)\nTo: root\nCc: \"Ops, on call\" <oncall>, Team: alice, bob@example.net;\nSubject: Cron <root@vm7> /usr/local/bin/backup\nContent-Type: text/plain; charset=UTF-8\n\nbackup done\n";

fn satellite(sink: &Sink, lines: &[&str]) -> Posthorn {
    Posthorn::start(&with_lines(&satellite_config(&[sink.addr()]), lines))
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// Writes `name` in `dir` and returns its path as a TOML string.
fn table(dir: &Path, name: &str, contents: &str) -> String {
    let path = dir.join(name);
    fs::write(&path, contents).unwrap();
    toml_str(&format!("hash:{}", path.display()))
}

#[test]
fn cron_mail_to_root_is_qualified_with_myorigin() {
    let sink = Sink::start();
    let ph = satellite(&sink, &["myorigin = \"example.org\""]);
    let out = ph.run_as("sendmail", &CRON_ARGS, CRON_MESSAGE);
    assert!(out.status.success(), "{}", text(&out.stderr));
    // SMTP from this host: header addresses are qualified as for sendmail.
    let body = "From: Backup <backup>\nTo: root\nSubject: smtp\n\nok\n";
    smtplib_send(ph.smtp_addr(), "backup@vm7.example.org", &["root@example.org"], body).unwrap();

    let mut got = sink.wait_for_parsed(2, secs(20));
    assert_eq!(got.len(), 2, "log:\n{}", ph.log());
    got.sort_by_key(|d| d.header("Subject"));
    let (cron, smtp) = (&got[0], &got[1]);
    assert_eq!(cron.rcpt_to, ["root@example.org"], "{cron:?}");
    assert!(cron.mail_from.ends_with("@example.org"), "envelope sender: {cron:?}");
    assert_eq!(cron.header("To").unwrap(), "root@example.org");
    assert_eq!(cron.header("From").unwrap(), "root@example.org (Cron Daemon)");
    assert_eq!(
        cron.header("Cc").unwrap(),
        "\"Ops, on call\" <oncall@example.org>, Team: alice@example.org, bob@example.net;"
    );
    assert_eq!(cron.header("Subject").unwrap(), "Cron <root@vm7> /usr/local/bin/backup", "not an address field");
    assert_eq!(smtp.header("From").unwrap(), "Backup <backup@example.org>");
    assert_eq!(smtp.header("To").unwrap(), "root@example.org");

    let out = ph.run_as("postconf", &["myorigin"], b"");
    assert_eq!(text(&out.stdout), "myorigin = example.org\n", "{}", text(&out.stderr));
    let out = ph.run_as("postconf", &["-h", "myorigin"], b"");
    assert_eq!(text(&out.stdout), "example.org\n");
}

#[test]
fn without_myorigin_the_hostname_qualifies() {
    let sink = Sink::start();
    let ph = satellite(&sink, &[]);
    let out = ph.run_as("sendmail", &CRON_ARGS, CRON_MESSAGE);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let got = sink.wait_for_parsed(1, secs(20));
    assert_eq!(got.len(), 1, "log:\n{}", ph.log());
    let want = format!("root@{}", ph.hostname());
    assert_eq!(got[0].rcpt_to, [want.as_str()]);
    assert_eq!(got[0].header("To").unwrap(), want);
    let out = ph.run_as("postconf", &["-h", "myorigin"], b"");
    assert_eq!(text(&out.stdout), format!("{}\n", ph.hostname()));
}

#[test]
fn alias_maps_work_on_a_satellite() {
    let sink = Sink::start();
    let dir = tempfile::tempdir().unwrap();
    let aliases = dir.path().join("aliases");
    fs::write(&aliases, "# /etc/aliases\npostmaster: root\nroot: ops@example.org\n").unwrap();
    let ph = satellite(&sink, &[&format!("rewrite.alias_maps = [{}]", toml_str(&aliases.display().to_string()))]);
    let out = ph.run_as("sendmail", &CRON_ARGS, CRON_MESSAGE);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let out = ph.run_as("sendmail", &["-i", "postmaster"], b"Subject: to postmaster\n\nhi\n");
    assert!(out.status.success(), "{}", text(&out.stderr));

    let mut got = sink.wait_for_parsed(2, secs(20));
    assert_eq!(got.len(), 2, "log:\n{}", ph.log());
    got.sort_by_key(|d| d.header("Subject"));
    assert_eq!(got[0].rcpt_to, ["ops@example.org"], "cron's root: {:?}", got[0]);
    assert_eq!(got[1].rcpt_to, ["ops@example.org"], "postmaster -> root -> ops: {:?}", got[1]);
    // The header still says whom the sender wrote to.
    assert_eq!(got[0].header("To").unwrap(), format!("root@{}", ph.hostname()));
}

#[test]
fn postcat_shows_the_original_recipient() {
    let dir = tempfile::tempdir().unwrap();
    let aliases = dir.path().join("aliases");
    fs::write(&aliases, "root: ops@example.org\n").unwrap();
    // No smarthost answers: the message stays queued.
    let dead = free_addr();
    let config = with_lines(
        &satellite_config(&[dead]),
        &[&format!("rewrite.alias_maps = [{}]", toml_str(&aliases.display().to_string()))],
    );
    let ph = Posthorn::start(&config);
    let out = ph.run_as("sendmail", &["-i", "root", "alice@example.net"], b"Subject: hold on\n\nhi\n");
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(ph.wait_for_queued(1, secs(15)), "log:\n{}", ph.log());
    let id = QUEUE_STATES
        .iter()
        .flat_map(|s| ph.spool_files(s))
        .map(|p| p.file_name().unwrap().to_string_lossy().into_owned())
        .next()
        .unwrap();
    let out = ph.run_as("postcat", &["-e", "-q", &id], b"");
    let records = text(&out.stdout);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let lines: Vec<&str> = records.lines().collect();
    let root = format!("original_recipient: root@{}", ph.hostname());
    let at = lines.iter().position(|l| *l == root).unwrap_or_else(|| panic!("no `{root}`:\n{records}"));
    assert_eq!(lines[at + 1..].iter().find(|l| l.starts_with("recipient: ")), Some(&"recipient: ops@example.org"));
    let alice = lines.iter().position(|l| *l == "original_recipient: alice@example.net").expect(&records);
    assert_eq!(lines[alice + 1], "recipient: alice@example.net", "{records}");
}

/// A hub on 127.0.0.1 delivering `example.org` to Maildirs under `dir`.
fn hub(dir: &Path, lines: &[&str]) -> Posthorn {
    let root = format!("{}/mail/{{domain}}/{{user}}", dir.display());
    let base = format!(
        "role = \"hub\"\n\n[smtp]\nlisten = [\"127.0.0.1:0\"]\n\n[access]\nlocal_domains = [\"example.org\"]\n\n[deliver]\nmaildir_root = {}\n\n[queue]\nretry_min = \"1s\"\nretry_max = \"2s\"\n",
        toml_str(&root)
    );
    Posthorn::start(&with_lines(&base, lines))
}

/// The files in the Maildir of `user@example.org` once there are `n`.
fn maildir(dir: &Path, user: &str, n: usize) -> Vec<String> {
    let new: PathBuf = dir.join("mail/example.org").join(user).join("new");
    let read =
        || -> Vec<PathBuf> { fs::read_dir(&new).map(|d| d.flatten().map(|e| e.path()).collect()).unwrap_or_default() };
    wait_until(secs(15), || read().len() >= n);
    read().iter().map(|p| fs::read_to_string(p).unwrap()).collect()
}

#[test]
fn route_explain_shows_canonical_rewrites_and_the_final_route() {
    let dir = tempfile::tempdir().unwrap();
    let canonical = table(dir.path(), "canonical", "@old.example @example.org\n");
    let sender = table(dir.path(), "sender_canonical", "info@old.example noreply@example.org\n");
    let virtual_ = table(dir.path(), "virtual", "info@example.org alice@example.org\n");
    let ph = hub(
        dir.path(),
        &[
            "myorigin = \"example.org\"",
            &format!("rewrite.recipient_canonical_maps = [{canonical}]"),
            &format!("rewrite.sender_canonical_maps = [{sender}]"),
            &format!("rewrite.virtual_alias_maps = [{virtual_}]"),
        ],
    );
    let explain = |address: &str| {
        let out = ph.command(&["route", "explain", address], b"");
        assert!(out.status.success(), "{}", text(&out.stderr));
        text(&out.stdout).replace(&dir.path().display().to_string(), "DIR")
    };
    let want = "\
info@old.example: recipient canonical (hash:DIR/canonical line 1, key \"@old.example\") -> info@example.org
info@example.org: virtual alias (hash:DIR/virtual line 1, key \"info@example.org\") -> alice@example.org
  alice@example.org: final recipient
alice@example.org: maildir: -> example.org (example.org is a local domain); tls=local
as a sender: info@old.example: sender canonical (hash:DIR/sender_canonical line 1, key \"info@old.example\") -> noreply@example.org
";
    assert_eq!(explain("info@old.example"), want);
    let bare = explain("info");
    assert!(bare.starts_with("info: qualified as info@example.org (myorigin)\n"), "{bare}");
    assert!(bare.contains("alice@example.org: maildir:"), "{bare}");

    // What explain says is where the mail goes.
    let body = "From: a@example.net\nTo: info@old.example\nSubject: canonical\n\nhi\n";
    smtplib_send(ph.smtp_addr(), "a@example.net", &["info@old.example"], body).unwrap();
    let got = maildir(dir.path(), "alice", 1);
    assert_eq!(got.len(), 1, "log:\n{}", ph.log());
    assert!(got[0].contains("\nX-Original-To: info@old.example\nDelivered-To: alice@example.org\n"), "{}", got[0]);
}

#[test]
fn a_bcc_catch_all_recipient_is_traceable_by_x_original_to() {
    let dir = tempfile::tempdir().unwrap();
    let virtual_ = table(dir.path(), "virtual", "@staging.example.org team@example.org\n");
    let ph = hub(dir.path(), &[&format!("rewrite.virtual_alias_maps = [{virtual_}]")]);
    let body = "From: deploy@example.net\nTo: alice@example.org\nSubject: release\n\nshipped\n";
    smtplib_send(ph.smtp_addr(), "deploy@example.net", &["alice@example.org", "ci-bot@staging.example.org"], body)
        .unwrap();
    let team = maildir(dir.path(), "team", 1);
    assert_eq!(team.len(), 1, "log:\n{}", ph.log());
    assert!(team[0].starts_with("Return-Path: <deploy@example.net>\nX-Original-To: ci-bot@staging.example.org\nDelivered-To: team@example.org\n"), "{}", team[0]);
    assert!(!team[0].contains("ci-bot@staging.example.org>"), "the Bcc is not disclosed elsewhere: {}", team[0]);
    let alice = maildir(dir.path(), "alice", 1);
    assert_eq!(alice.len(), 1);
    assert!(alice[0].contains("\nX-Original-To: alice@example.org\nDelivered-To: alice@example.org\n"), "{}", alice[0]);
}

#[test]
fn virtual_alias_domains_refuse_unknown_addresses_at_rcpt() {
    let dir = tempfile::tempdir().unwrap();
    let virtual_ = table(
        dir.path(),
        "virtual",
        "team@lists.example.org alice@example.org\n@catch.example.org alice@example.org\n",
    );
    let ph = hub(
        dir.path(),
        &[
            "access.trusted_networks = []",
            "rewrite.virtual_alias_domains = [\"lists.example.org\", \"catch.example.org\"]",
            &format!("rewrite.virtual_alias_maps = [{virtual_}]"),
        ],
    );
    let out = swaks(
        ph.smtp_addr(),
        &[
            "--from",
            "bob@example.net",
            "--to",
            "nobody@lists.example.org,team@lists.example.org,x@elsewhere.example,anyone@catch.example.org",
            "--header",
            "Subject: lists",
        ],
    );
    let dialog = text(&out.stdout);
    assert!(
        dialog.contains(
            "<** 550 5.1.1 <nobody@lists.example.org>: Recipient address rejected: User unknown in virtual alias table"
        ),
        "{dialog}"
    );
    assert!(dialog.contains("<** 554 5.7.1 <x@elsewhere.example>: Relay access denied"), "{dialog}");
    assert_eq!(dialog.matches("<-  250 2.1.5 Ok").count(), 2, "team@ and the catch-all accepted: {dialog}");
    assert!(dialog.contains("<-  250 2.0.0 Ok: queued as"), "{dialog}");
    // Both accepted addresses lead to alice: one copy, which says the first.
    let got = maildir(dir.path(), "alice", 1);
    assert_eq!(got.len(), 1, "log:\n{}", ph.log());
    assert!(got[0].contains("\nX-Original-To: team@lists.example.org\n"), "{}", got[0]);
    assert!(ph.log().contains("User unknown in virtual alias table"), "refusal logged:\n{}", ph.log());
}
