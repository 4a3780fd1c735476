//! End-to-end for local delivery as Postfix's local(8) does it: the real
//! daemon, mail by SMTP, mailboxes read back from disk and with bsd-mailx.
//! Each test makes its own login account (useradd) and removes it.
//!
//! Scenarios:
//! 1. mbox in the spool directory: bsd-mailx (`mail -f MBOX`) lists the
//!    messages; the file is the user's, mode 0600; `From ` lines, `>From `
//!    quoting, `Return-Path:` and `Delivered-To:`; an unknown user is
//!    refused at RCPT with 550 5.1.1.
//! 2. Concurrent deliveries to one mbox wait while a reader holds the
//!    dotlock (`dotlockfile`), then all land, each message whole.
//! 3. The daemon runs as `nobody` and the agent (holding CAP_SETUID and
//!    CAP_SETGID only) writes as the user;
//!    `home_mailbox = "Maildir/"` puts the mail in the home's Maildir.
//! 4. A daemon without the agent (no `[local]` key) defers mail for
//!    another user with a log line that says why, and writes nothing.
//! 5. `recipient_delimiter = "+"`: user+tag goes to user's mbox with the
//!    whole address in `Delivered-To:`; an alias team+x without an entry
//!    of its own takes team's; `route explain` names the mailbox; without
//!    the delimiter user+tag is refused.
//! 6. An alias `staff: :include:/path` fans out to the two local users the
//!    file lists, and `route explain` names the file; a command listed in
//!    an include file is refused at RCPT (550 5.7.1) with the file, line
//!    and reason; `newaliases` names the alias line of a missing include
//!    file and of one that lists a command.
//! 7. Aliases to commands and files, run and written through the agent as
//!    `local.default_privs` (the alias file is root's): a script records
//!    its argv, uid, environment and input; exit 75 defers, exit 67
//!    bounces with its output in the DSN; a command past
//!    `command_time_limit` is killed and deferred; a file alias appends
//!    an mbox message; an alias named `"a;touch FILE"` runs its command
//!    without a shell ever seeing the address; without `alias` in
//!    `allow_mail_to_commands` the command alias is refused at RCPT.
//! 8. A daemon running as the alias file's owner runs its command itself.
//! 9. An alias to two commands, the second deferring once: the retry runs
//!    only the second; the first ran once.

mod harness;

use harness::*;
use std::fs;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::Path;
use std::process::{Command, Stdio};

fn hub(lines: &[&str]) -> Posthorn {
    let base =
        "role = \"hub\"\n\n[smtp]\nlisten = [\"127.0.0.1:0\"]\n\n[queue]\nretry_min = \"1s\"\nretry_max = \"2s\"\n";
    let mut all = vec!["access.local_domains = [\"example.org\"]"];
    all.extend_from_slice(lines);
    Posthorn::start(&with_lines(base, &all))
}

/// How many messages an mbox holds: its `From ` lines.
fn count_messages(path: &Path) -> usize {
    let text = fs::read(path).unwrap_or_default();
    text.split(|&b| b == b'\n').filter(|l| l.starts_with(b"From ")).count()
}

#[test]
fn mbox_in_the_spool_is_read_by_mailx() {
    let (tree, spool) = mail_tree();
    let user = TestUser::new(tree.path());
    let spool_line = format!("local.mail_spool_directory = {}", toml_str(&spool.display().to_string()));
    let ph = hub(&["local.local_transport = \"local\"", &spool_line]);
    let to = user.address();
    let first = message(&[("From", "alice@example.net"), ("Subject", "first of two")], "From the start\nto the end\n");
    let second = message(&[("From", "bob@example.net"), ("Subject", "second of two")], "body two\n");
    smtplib_send(ph.smtp_addr(), "alice@example.net", &[&to], &first).unwrap();
    smtplib_send(ph.smtp_addr(), "", &[&to], &second).unwrap();
    let mbox = spool.join(&user.name);
    assert!(wait_until(secs(20), || count_messages(&mbox) == 2), "{}", ph.log());

    let meta = fs::metadata(&mbox).unwrap();
    assert_eq!(meta.uid(), user.uid, "the mailbox belongs to its user");
    assert_eq!(meta.mode() & 0o777, 0o600);
    let text = fs::read_to_string(&mbox).unwrap();
    assert!(text.starts_with("From alice@example.net  "), "{text}");
    assert!(text.contains("\nFrom MAILER-DAEMON  "), "{text}");
    assert!(text.contains("Return-Path: <alice@example.net>\n"), "{text}");
    assert!(text.contains("Return-Path: <>\n"), "{text}");
    assert!(text.contains(&format!("Delivered-To: {to}\n")), "{text}");
    assert!(text.contains("\n>From the start\n"), "{text}");
    assert!(!text.contains('\r'), "LF line ends on disk");
    assert!(!spool.join(format!("{}.lock", user.name)).exists(), "the dotlock is gone");

    // bsd-mailx lists both (its header summary, then end of input).
    let out = Command::new("mail")
        .arg("-f")
        .arg(&mbox)
        .stdin(Stdio::null())
        .env("MAILRC", "/dev/null")
        .output()
        .expect("run mail (bsd-mailx)");
    let listing = String::from_utf8_lossy(&out.stdout);
    assert!(listing.contains(": 2 messages 2 new"), "mail -f: {listing:?} {out:?}");
    let summary: Vec<&str> = listing.lines().filter(|l| l.contains(" of two")).collect();
    assert!(summary[0].contains("alice@example.net") && summary[0].contains("first of two"), "{listing}");
    assert!(summary[1].contains("bob@example.net") && summary[1].contains("second of two"), "{listing}");

    // An unknown user is refused at RCPT, not bounced later.
    let err = smtplib_send(ph.smtp_addr(), "a@example.net", &["no-such-user-ph@example.org"], &first).unwrap_err();
    assert!(err.contains("550") && err.contains("5.1.1"), "{err}");
}

#[test]
fn concurrent_deliveries_wait_for_a_readers_dotlock() {
    let (tree, spool) = mail_tree();
    let user = TestUser::new(tree.path());
    let spool_line = format!("local.mail_spool_directory = {}", toml_str(&spool.display().to_string()));
    let ph = hub(&["local.local_transport = \"local\"", &spool_line, "deliver.destination_concurrency = 8"]);
    let to = user.address();
    let mbox = spool.join(&user.name);
    smtplib_send(ph.smtp_addr(), "s@example.net", &[&to], &message(&[("Subject", "zero")], "zero\n")).unwrap();
    assert!(wait_until(secs(20), || count_messages(&mbox) == 1), "{}", ph.log());

    // A reader takes the dotlock, as mail readers do.
    let lock = spool.join(format!("{}.lock", user.name));
    let status = Command::new("dotlockfile").args(["-r", "0", "-l"]).arg(&lock).status().expect("dotlockfile");
    assert!(status.success(), "dotlockfile -l");
    let size = fs::metadata(&mbox).unwrap().len();
    let senders: Vec<_> = (1..=8)
        .map(|n| {
            let addr = ph.smtp_addr();
            let to = to.clone();
            std::thread::spawn(move || {
                let lines: String = (0..300).map(|i| format!("message {n} line {i}\n")).collect();
                let msg = message(&[("Subject", &format!("number {n}"))], &lines);
                smtplib_send(addr, "s@example.net", &[&to], &msg).unwrap();
            })
        })
        .collect();
    for s in senders {
        s.join().unwrap();
    }
    std::thread::sleep(secs(3));
    assert_eq!(fs::metadata(&mbox).unwrap().len(), size, "nothing is written while the reader holds the lock");
    let status = Command::new("dotlockfile").arg("-u").arg(&lock).status().expect("dotlockfile -u");
    assert!(status.success());

    assert!(wait_until(secs(60), || count_messages(&mbox) == 9), "{}", ph.log());
    let text = fs::read_to_string(&mbox).unwrap();
    for n in 1..=8 {
        let lines: Vec<usize> = (0..300).filter(|i| text.contains(&format!("\nmessage {n} line {i}\n"))).collect();
        assert_eq!(lines.len(), 300, "message {n} is whole");
        let start = text.find(&format!("Subject: number {n}\n")).unwrap();
        let end = text.find(&format!("message {n} line 299\n")).unwrap();
        assert!(!text[start..end].contains("\nFrom "), "message {n} is not interleaved with another");
    }
}

#[test]
fn an_unprivileged_daemon_delivers_through_the_agent_into_a_home_maildir() {
    let (tree, spool) = mail_tree();
    let user = TestUser::new(tree.path());
    let spool_line = format!("local.mail_spool_directory = {}", toml_str(&spool.display().to_string()));
    let ph = hub(&[
        "user = \"nobody\"",
        "local.local_transport = \"local\"",
        "local.home_mailbox = \"Maildir/\"",
        &spool_line,
    ]);
    assert!(ph.wait_for_log("local delivery agent started", secs(5)), "{}", ph.log());
    // The agent keeps root's uid with CAP_SETGID and CAP_SETUID only.
    let log = ph.log();
    let pid = log.split("local delivery agent started (pid ").nth(1).and_then(|r| r.split(')').next()).unwrap();
    let status = fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let cap = |name: &str| status.lines().find_map(|l| l.strip_prefix(name)).map(str::trim).unwrap().to_string();
    assert_eq!(cap("CapEff:"), "00000000000000c0", "{status}");
    assert_eq!(cap("CapPrm:"), "00000000000000c0", "{status}");
    let to = user.address();
    smtplib_send(ph.smtp_addr(), "s@example.net", &[&to], &message(&[("Subject", "home")], "in the home\n")).unwrap();
    let new = user.home.join("Maildir/new");
    assert!(wait_until(secs(20), || fs::read_dir(&new).is_ok_and(|d| d.count() == 1)), "{}", ph.log());
    let file = fs::read_dir(&new).unwrap().next().unwrap().unwrap().path();
    assert_eq!(fs::metadata(&file).unwrap().uid(), user.uid, "written as the user");
    assert_eq!(fs::metadata(user.home.join("Maildir")).unwrap().uid(), user.uid);
    let text = fs::read_to_string(&file).unwrap();
    assert!(text.contains(&format!("Delivered-To: {to}\n")) && text.contains("in the home"), "{text}");
    assert!(!spool.join(&user.name).exists(), "nothing in the spool directory");
    assert!(ph.wait_for_log("status=sent", secs(10)), "{}", ph.log());
}

#[test]
fn without_the_agent_other_users_are_deferred_with_a_reason() {
    let (tree, spool) = mail_tree();
    let user = TestUser::new(tree.path());
    let transport = tree.path().join("transport");
    fs::write(&transport, "example.org local:\n").unwrap();
    let maps = format!("deliver.transport_maps = [{}]", toml_str(&format!("texthash:{}", transport.display())));
    let ph = hub(&["user = \"nobody\"", &maps]);
    let to = user.address();
    smtplib_send(ph.smtp_addr(), "s@example.net", &[&to], &message(&[("Subject", "x")], "x\n")).unwrap();
    assert!(ph.wait_for_log("has no local delivery agent", secs(20)), "{}", ph.log());
    assert!(ph.log().contains("status=deferred"), "{}", ph.log());
    assert!(!ph.log().contains("local delivery agent started"), "{}", ph.log());
    assert!(!spool.join(&user.name).exists());
    assert!(ph.wait_for_queued(1, secs(5)), "the message stays queued");
}

#[test]
fn address_extensions_reach_the_user() {
    let (tree, spool) = mail_tree();
    let user = TestUser::new(tree.path());
    let aliases = tree.path().join("aliases");
    fs::write(&aliases, format!("team: {}@example.org\n", user.name)).unwrap();
    let spool_line = format!("local.mail_spool_directory = {}", toml_str(&spool.display().to_string()));
    let alias_line = format!("rewrite.alias_maps = [{}]", toml_str(&format!("hash:{}", aliases.display())));
    let ph = hub(&["local.local_transport = \"local\"", "local.recipient_delimiter = \"+\"", &spool_line, &alias_line]);
    let tagged = format!("{}+lists@example.org", user.name);
    smtplib_send(ph.smtp_addr(), "s@example.net", &[&tagged], &message(&[("Subject", "tagged")], "t\n")).unwrap();
    smtplib_send(ph.smtp_addr(), "s@example.net", &["team+x@example.org"], &message(&[("Subject", "team")], "u\n"))
        .unwrap();
    let mbox = spool.join(&user.name);
    assert!(wait_until(secs(20), || count_messages(&mbox) == 2), "{}", ph.log());
    let text = fs::read_to_string(&mbox).unwrap();
    assert!(text.contains(&format!("Delivered-To: {tagged}\n")), "{text}");
    assert!(text.contains("X-Original-To: team+x@example.org\n"), "{text}");
    assert!(!spool.join(format!("{}+lists", user.name)).exists());

    // `route explain` names the mailbox.
    let out = ph.command(&["route", "explain", &tagged], b"");
    let text = String::from_utf8_lossy(&out.stdout);
    let want = format!("local: -> user {} (uid {}): mailbox {}", user.name, user.uid, mbox.display());
    assert!(text.contains(&want), "{text}");

    // Without a delimiter, + is part of the name, which no login name has.
    let plain = hub(&["local.local_transport = \"local\"", &spool_line]);
    let err = smtplib_send(plain.smtp_addr(), "s@example.net", &[&tagged], &message(&[], "v\n")).unwrap_err();
    assert!(err.contains("550 5.1.3") && err.contains("not a local user name"), "{err}");
}

#[test]
fn include_lists_fan_out_and_refuse_commands() {
    let (tree, spool) = mail_tree();
    let (ann, bob) = (TestUser::new(tree.path()), TestUser::new(tree.path()));
    let staff = tree.path().join("staff.list");
    fs::write(&staff, format!("# the staff\n{}@example.org\n\\{}\n", ann.name, bob.name)).unwrap();
    let piped = tree.path().join("piped.list");
    fs::write(&piped, format!("{}\n\"|/usr/bin/touch /tmp/never\"\n", ann.name)).unwrap();
    let aliases = tree.path().join("aliases");
    fs::write(&aliases, format!("staff: :include:{}\npiped: :include:{}\n", staff.display(), piped.display())).unwrap();
    let spool_line = format!("local.mail_spool_directory = {}", toml_str(&spool.display().to_string()));
    let alias_line = format!("rewrite.alias_maps = [{}]", toml_str(&format!("hash:{}", aliases.display())));
    let ph = hub(&["local.local_transport = \"local\"", &spool_line, &alias_line]);

    let msg = message(&[("Subject", "to the staff")], "all hands\n");
    smtplib_send(ph.smtp_addr(), "s@example.net", &["staff@example.org"], &msg).unwrap();
    let (ann_box, bob_box) = (spool.join(&ann.name), spool.join(&bob.name));
    assert!(wait_until(secs(20), || count_messages(&ann_box) == 1 && count_messages(&bob_box) == 1), "{}", ph.log());
    for (user, mbox) in [(&ann, &ann_box), (&bob, &bob_box)] {
        let text = fs::read_to_string(mbox).unwrap();
        assert!(text.contains("X-Original-To: staff@example.org\n") && text.contains("all hands"), "{text}");
        assert_eq!(fs::metadata(mbox).unwrap().uid(), user.uid);
    }

    let out = ph.command(&["route", "explain", "staff@example.org"], b"");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains(&format!("(listed in :include:{})", staff.display())), "{text}");
    assert!(text.contains(&format!("{}: local: -> user {}", ann.address(), ann.name)), "{text}");

    let err = smtplib_send(ph.smtp_addr(), "s@example.net", &["piped@example.org"], &msg).unwrap_err();
    let want = format!(
        "550 5.7.1 <piped@example.org>: :include:{} line 2: mail to command |/usr/bin/touch /tmp/never is not allowed",
        piped.display()
    );
    assert!(err.contains(&want), "{err}");

    // newaliases reads the include files too.
    fs::write(
        &aliases,
        format!("gone: :include:{}/missing\npiped: :include:{}\n", tree.path().display(), piped.display()),
    )
    .unwrap();
    let out = ph.run_as("newaliases", &[], b"");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{err}");
    let file = aliases.display();
    assert!(err.contains(&format!("{file}:1: :include:{}/missing: No such file", tree.path().display())), "{err}");
    assert!(err.contains(&format!("{file}:2: :include:{} line 2: mail to command", piped.display())), "{err}");
}

#[test]
fn pipe_and_file_aliases_run_as_default_privs() {
    let (tree, spool) = mail_tree();
    let ann = TestUser::new(tree.path());
    let records = ann.home.join("records");
    fs::create_dir(&records).unwrap();
    let chown = Command::new("chown").arg(format!("{0}:{0}", ann.name)).arg(&records).status().unwrap();
    assert!(chown.success());
    let script = |name: &str, body: &str| {
        let path = tree.path().join(name);
        fs::write(&path, format!("#!/bin/sh\n{body}\n")).unwrap();
        fs::set_permissions(&path, fs::Permissions::from_mode(0o755)).unwrap();
        path.display().to_string()
    };
    let record = script(
        "record.sh",
        &format!(
            "out={}/$1\n{{ echo \"argv: $*\"; echo \"uid: $(id -u)\"; env | sort; echo stdin:; cat; }} > $out.tmp && mv $out.tmp $out.txt",
            records.display()
        ),
    );
    let tempfail = script("tempfail.sh", "cat >/dev/null; exit 75");
    let refuse = script("refuse.sh", "echo 'no such ticket queue'; exit 67");
    let slow = script("slow.sh", "sleep 60");
    let pwned = tree.path().join("pwned");
    let archive = ann.home.join("archive.mbox");
    let aliases = tree.path().join("aliases");
    fs::write(
        &aliases,
        format!(
            "ticket: \"|{record} ticket two\"\nlater: |{tempfail}\nrefused: |{refuse}\nslow: |{slow}\narchive: {}\n\"a;touch {}\": \"|{record} weird\"\n",
            archive.display(),
            pwned.display()
        ),
    )
    .unwrap();
    let spool_line = format!("local.mail_spool_directory = {}", toml_str(&spool.display().to_string()));
    let alias_line = format!("rewrite.alias_maps = [{}]", toml_str(&format!("hash:{}", aliases.display())));
    let privs = format!("local.default_privs = {}", toml_str(&ann.name));
    let ph = hub(&[
        "local.local_transport = \"local\"",
        "local.command_time_limit = \"2s\"",
        &spool_line,
        &alias_line,
        &privs,
    ]);
    let sender = ann.address();
    let send = |to: &str, subject: &str| {
        let msg = message(&[("Subject", subject)], "the body line\n");
        smtplib_send(ph.smtp_addr(), &sender, &[to], &msg)
    };

    send("ticket@example.org", "to the ticket queue").unwrap();
    let out = records.join("ticket.txt");
    assert!(wait_until(secs(20), || out.exists()), "{}", ph.log());
    let text = fs::read_to_string(&out).unwrap();
    for want in [
        "argv: ticket two\n".to_string(),
        format!("uid: {}\n", ann.uid),
        format!("SENDER={sender}\n"),
        "RECIPIENT=ticket@example.org\n".into(),
        "ORIGINAL_RECIPIENT=ticket@example.org\n".into(),
        format!("USER={}\n", ann.name),
        "LOCAL=ticket\n".into(),
        "DOMAIN=example.org\n".into(),
        "EXTENSION=\n".into(),
        format!("HOME={}\n", ann.home.display()),
        "SHELL=/bin/sh\n".into(),
        format!("stdin:\nReturn-Path: <{sender}>\nDelivered-To: ticket@example.org\n"),
        "Subject: to the ticket queue\n".into(),
        "\nthe body line\n".into(),
    ] {
        assert!(text.contains(&want), "{want:?} in {text}");
    }
    assert!(!text.contains('\r'), "{text}");

    // `route explain` says the address ends in a command.
    let explained = ph.command(&["route", "explain", "ticket@example.org"], b"");
    let explained = String::from_utf8_lossy(&explained.stdout);
    assert!(explained.contains(&format!("ends in |{record} ticket two: final recipient for local:")), "{explained}");

    // A file alias: an mbox message, written as default_privs.
    send("archive@example.org", "archived").unwrap();
    assert!(wait_until(secs(20), || count_messages(&archive) == 1), "{}", ph.log());
    assert_eq!(fs::metadata(&archive).unwrap().uid(), ann.uid);
    assert!(fs::read_to_string(&archive).unwrap().contains("Subject: archived\n"));

    // The address never reaches a shell: only the alias file's command runs.
    let weird = format!("\"a;touch {}\"@example.org", pwned.display());
    send(&weird, "weird").unwrap();
    let out = records.join("weird.txt");
    assert!(wait_until(secs(20), || out.exists()), "{}", ph.log());
    assert!(fs::read_to_string(&out).unwrap().contains(&format!("RECIPIENT={weird}\n")));
    assert!(!pwned.exists(), "a shell saw the address");

    // 75 defers; a command past the time limit is killed and deferred.
    send("later@example.org", "later").unwrap();
    send("slow@example.org", "slow").unwrap();
    assert!(ph.wait_for_log("to=<later@example.org>", secs(20)), "{}", ph.log());
    assert!(ph.wait_for_log("ran longer than local.command_time_limit (2s): killed", secs(20)), "{}", ph.log());
    let log = ph.log();
    let later = log.lines().find(|l| l.contains("to=<later@example.org>") && l.contains("relay=")).unwrap();
    assert!(later.contains("status=deferred"), "{later}");

    // 67 bounces, the command's output in the DSN (to ann's mailbox).
    send("refused@example.org", "refused").unwrap();
    let mbox = spool.join(&ann.name);
    assert!(wait_until(secs(20), || count_messages(&mbox) == 1), "{}", ph.log());
    let dsn = fs::read_to_string(&mbox).unwrap().replace("\n ", " ");
    assert!(dsn.contains("Command died with status 67"), "{dsn}");
    assert!(dsn.contains("no such ticket queue"), "{dsn}");

    // Without `alias` in allow_mail_to_commands the command alias is
    // refused at RCPT, naming the alias file and line; files still go.
    let strict = hub(&[
        "local.local_transport = \"local\"",
        "local.allow_mail_to_commands = [\"forward\"]",
        &spool_line,
        &alias_line,
        &privs,
    ]);
    let msg = message(&[("Subject", "strict")], "x\n");
    let err = smtplib_send(strict.smtp_addr(), &sender, &["ticket@example.org"], &msg).unwrap_err();
    let want = format!(
        "550 5.7.1 <ticket@example.org>: hash:{} line 1: mail to command |{record} ticket two is not allowed",
        aliases.display()
    );
    assert!(err.contains(&want), "{err}");
    smtplib_send(strict.smtp_addr(), &sender, &["archive@example.org"], &msg).unwrap();
    assert!(wait_until(secs(20), || count_messages(&archive) == 2), "{}", strict.log());
}

#[test]
fn a_daemon_runs_its_own_accounts_alias_commands_itself() {
    let (tree, spool) = mail_tree();
    let ann = TestUser::new(tree.path());
    let record = tree.path().join("record.sh");
    let out = ann.home.join("ran.txt");
    fs::write(&record, format!("#!/bin/sh\n{{ id -u; cat; }} > {}\n", out.display())).unwrap();
    fs::set_permissions(&record, fs::Permissions::from_mode(0o755)).unwrap();
    let aliases = tree.path().join("aliases");
    fs::write(&aliases, format!("own: |{}\n", record.display())).unwrap();
    let chown = Command::new("chown").arg(&ann.name).arg(&aliases).status().unwrap();
    assert!(chown.success());
    let spool_line = format!("local.mail_spool_directory = {}", toml_str(&spool.display().to_string()));
    let alias_line = format!("rewrite.alias_maps = [{}]", toml_str(&format!("hash:{}", aliases.display())));
    let user = format!("user = {}", toml_str(&ann.name));
    let ph = hub(&[&user, "local.local_transport = \"local\"", &spool_line, &alias_line]);
    let msg = message(&[("Subject", "own")], "mine\n");
    smtplib_send(ph.smtp_addr(), "s@example.net", &["own@example.org"], &msg).unwrap();
    assert!(wait_until(secs(20), || fs::read_to_string(&out).is_ok_and(|t| t.contains("mine"))), "{}", ph.log());
    let text = fs::read_to_string(&out).unwrap();
    assert!(text.starts_with(&format!("{}\n", ann.uid)), "{text}");
    assert!(ph.wait_for_log("status=sent (delivered to command", secs(10)), "{}", ph.log());
}

#[test]
fn a_retry_runs_only_the_alias_commands_that_did_not_take_the_message() {
    let (tree, spool) = mail_tree();
    let ann = TestUser::new(tree.path());
    let script = |name: &str, body: &str| {
        let path = tree.path().join(name);
        fs::write(&path, format!("#!/bin/sh\n{body}\n")).unwrap();
        fs::set_permissions(&path, fs::Permissions::from_mode(0o755)).unwrap();
        path.display().to_string()
    };
    let runs = ann.home.join("runs");
    let marker = ann.home.join("tried");
    let count = script("count.sh", &format!("cat >/dev/null; echo ran >> {}", runs.display()));
    let flaky =
        script("flaky.sh", &format!("cat >/dev/null; [ -e {0} ] && exit 0; touch {0}; exit 75", marker.display()));
    let aliases = tree.path().join("aliases");
    fs::write(&aliases, format!("pair: |{count}, |{flaky}\n")).unwrap();
    let spool_line = format!("local.mail_spool_directory = {}", toml_str(&spool.display().to_string()));
    let alias_line = format!("rewrite.alias_maps = [{}]", toml_str(&format!("hash:{}", aliases.display())));
    let privs = format!("local.default_privs = {}", toml_str(&ann.name));
    let ph = hub(&["local.local_transport = \"local\"", &spool_line, &alias_line, &privs]);
    let msg = message(&[("Subject", "pair")], "x\n");
    smtplib_send(ph.smtp_addr(), "s@example.net", &["pair@example.org"], &msg).unwrap();
    assert!(ph.wait_for_log("status=deferred", secs(20)), "{}", ph.log());
    assert!(ph.wait_for_log("status=sent", secs(20)), "{}", ph.log());
    let sent = ph.log_lines(&["to=<pair@example.org>", "status=sent"]);
    assert!(sent[0].contains(&format!("|{count} (at an earlier attempt), command {flaky}")), "{sent:?}");
    assert_eq!(fs::read_to_string(&runs).unwrap(), "ran\n", "the first command ran once");
}
