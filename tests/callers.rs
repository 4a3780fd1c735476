//! End-to-end: `sendmail` as real programs call it, against a running
//! satellite relaying to `smtp-sink`; every message is read back from the
//! sink. The callers are the real programs where they exist here (bsd-mailx,
//! mutt, git send-email); cron's and PHP's invocations are replayed
//! exactly, since neither can be run on demand in a test.
//!
//! Scenarios:
//! 1. bsd-mailx `mail -s SUBJ RCPT`, pointed at ours with `set sendmail=`
//!    in a `MAILRC`.
//! 2. Debian cron's invocation (`-FCronDaemon -i -B8BITMIME -oem RCPT`, read
//!    from the cron binary) with a cron-made message, and the `-oi -t` form.
//! 3. PHP's `mail()`: `sendmail -t -i`, LF line ends, a lone `.` line kept.
//! 4. `git send-email --sendmail-cmd` on a patch from `git format-patch`.
//! 5. mutt in batch mode with `dsn_notify`/`dsn_return`: the next hop
//!    sees NOTIFY and RET; a refused recipient's bounce has headers only.
//! 6. `-N never`: a failing recipient, no bounce; `-R hdrs -V id`: the
//!    bounce returns headers only and names the envelope id.
//! 7. `-bs` from a here-document (LF ends): the reply names the queue id
//!    the message keeps; input ending inside DATA exits non-zero.
//! 8. `-f '<>'` and `-f ''`: the null sender, `From: MAILER-DAEMON@host`.
//! 9. `newaliases`, `sendmail -bi`, `sendmail -I`: silent on a good file,
//!    file:line on a bad one, fine with no alias file and no daemon; a
//!    running hub uses the changed file without a reload.
//! 10. `sendmail -bv`, `exim -bt`, `exim -bv`, `exim4`: routes and refusals.
//! 11. Options Postfix ignores are ignored (`-L tag` takes its value), and
//!     `-c PATH` names the configuration.
//! 12. `delay=` after a pickup counts from the submission.
//! 13. `install-links` makes `exim4` and `newaliases`.

mod harness;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use harness::*;

/// A satellite relaying to `sink`, with `fail.example` routed to `bad`
/// (which refuses every RCPT) when given.
fn satellite(sink: &Sink, bad: Option<&Sink>, extra: &[&str]) -> Posthorn {
    let mut lines: Vec<String> = extra.iter().map(|s| s.to_string()).collect();
    if let Some(bad) = bad {
        let table = bad.dir().join("transport");
        std::fs::write(&table, format!("fail.example smtp:[{}]:{}\n", bad.addr().ip(), bad.addr().port())).unwrap();
        lines.push(format!("deliver.transport_maps = [{}]", toml_str(&format!("hash:{}", table.display()))));
    }
    let refs: Vec<&str> = lines.iter().map(String::as_str).collect();
    Posthorn::start(&with_lines(&satellite_config(&[sink.addr()]), &refs))
}

fn text(out: &Output) -> String {
    format!(
        "status {}\nstdout:\n{}\nstderr:\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// Runs `program` with `args` in `ph`'s directory, `POSTHORN_CONFIG`
/// pointing at it, `HOME` there, and `PATH` starting with the links.
fn run(ph: &Posthorn, program: &str, args: &[&str], env: &[(&str, &str)], stdin: &[u8]) -> Output {
    let bin = ph.link("sendmail").parent().unwrap().to_path_buf();
    let path = format!("{}:{}", bin.display(), std::env::var("PATH").unwrap_or_default());
    let mut cmd = Command::new(program);
    cmd.args(args)
        .env("POSTHORN_CONFIG", ph.config_path())
        .env("HOME", ph.dir())
        .env("PATH", path)
        .current_dir(ph.dir());
    for (k, v) in env {
        cmd.env(k, v);
    }
    run_with_timeout(cmd, stdin, COMMAND_TIMEOUT)
}

/// The raw `X-Rcpt-Args:`/`X-Mail-Args:` lines of a sink capture.
fn envelope_lines(raw: &[u8]) -> Vec<String> {
    String::from_utf8_lossy(raw).lines().take_while(|l| l.starts_with("X-")).map(str::to_string).collect()
}

fn wait_one(sink: &Sink, ph: &Posthorn) -> Dumped {
    let got = sink.wait_for_parsed(1, secs(20));
    assert_eq!(got.len(), 1, "want one message; log:\n{}", ph.log());
    got.into_iter().next().unwrap()
}

#[test]
fn bsd_mailx_sends_through_our_sendmail() {
    let sink = Sink::start();
    let ph = satellite(&sink, None, &[]);
    let mailrc = ph.dir().join("mailrc");
    std::fs::write(&mailrc, format!("set sendmail={}\n", ph.link("sendmail").display())).unwrap();
    let out = run(
        &ph,
        "mail",
        &["-s", "Disk report", "ops@example.org"],
        &[("MAILRC", mailrc.to_str().unwrap())],
        b"/var is 91% full\n",
    );
    assert!(out.status.success(), "{}", text(&out));
    let d = wait_one(&sink, &ph);
    assert_eq!(d.rcpt_to, ["ops@example.org"]);
    assert_eq!(d.header("Subject").as_deref(), Some("Disk report"));
    assert!(d.text().contains("/var is 91% full"), "{}", d.text());
}

#[test]
fn cron_invocation_and_message() {
    let sink = Sink::start();
    let ph = satellite(&sink, None, &[]);
    let host = ph.hostname().to_string();
    let message = format!(
        "From: root (Cron Daemon)\nTo: ops@example.org\nSubject: Cron <root@{host}> /usr/local/bin/backup\nMIME-Version: 1.0\nContent-Type: text/plain; charset=UTF-8\nContent-Transfer-Encoding: 8bit\nX-Cron-Env: <SHELL=/bin/sh>\nX-Cron-Env: <HOME=/root>\n\nbackup: 3 files skipped (Größe)\n.\nend\n"
    );
    // Debian cron 3.0pl1, as its binary formats it: "%s -FCronDaemon -i -B8BITMIME -oem  %s".
    let out =
        ph.run_as("sendmail", &["-FCronDaemon", "-i", "-B8BITMIME", "-oem", "ops@example.org"], message.as_bytes());
    assert!(out.status.success(), "{}", text(&out));
    let d = wait_one(&sink, &ph);
    assert_eq!(d.rcpt_to, ["ops@example.org"]);
    assert_eq!(d.header("Subject"), Some(format!("Cron <root@{host}> /usr/local/bin/backup")));
    // Qualified as Postfix's cleanup does for local submissions (myorigin).
    assert_eq!(d.header("From"), Some(format!("root@{host} (Cron Daemon)")));
    let body = String::from_utf8_lossy(&d.body()).into_owned();
    assert!(body.contains("(Größe)\n.\nend"), "-i keeps the lone dot and the 8-bit text: {body:?}");
    assert!(d.mail_params.iter().any(|p| p.eq_ignore_ascii_case("BODY=8BITMIME")), "{:?}", d.mail_params);

    // The form with the recipients in the header (`-oi -t`).
    let out = ph.run_as("sendmail", &["-FCronDaemon", "-i", "-B8BITMIME", "-oem", "-oi", "-t"], message.as_bytes());
    assert!(out.status.success(), "{}", text(&out));
    let got = sink.wait_for_parsed(2, secs(20));
    assert_eq!(got.len(), 2, "log:\n{}", ph.log());
    assert_eq!(got[1].rcpt_to, ["ops@example.org"]);
}

#[test]
fn php_mail_invocation() {
    let sink = Sink::start();
    let ph = satellite(&sink, None, &[]);
    // PHP's default sendmail_path is "sendmail -t -i"; mail() writes LF ends
    // and puts its additional headers after To: and Subject:.
    let message = b"To: customer@example.net\nSubject: Your order 1234\nFrom: shop@example.org\nReply-To: help@example.org\nX-Mailer: PHP/8.2.7\n\nThank you.\n.\nThe shop\n";
    let out = ph.run_as("sendmail", &["-t", "-i"], message);
    assert!(out.status.success(), "{}", text(&out));
    let d = wait_one(&sink, &ph);
    assert_eq!(d.rcpt_to, ["customer@example.net"]);
    assert_eq!(d.header("Reply-To").as_deref(), Some("help@example.org"));
    assert!(String::from_utf8_lossy(&d.body()).contains("Thank you.\n.\nThe shop"), "{}", d.text());
    assert!(d.header("Date").is_some() && d.header("Message-ID").is_some(), "{}", d.text());
}

#[test]
fn git_send_email_with_sendmail_cmd() {
    let sink = Sink::start();
    let ph = satellite(&sink, None, &[]);
    let repo = ph.dir().join("repo");
    std::fs::create_dir(&repo).unwrap();
    let git = |args: &[&str]| {
        let out =
            run(&ph, "git", &[&["-C", repo.to_str().unwrap()], args].concat(), &[("GIT_CONFIG_NOSYSTEM", "1")], b"");
        assert!(out.status.success(), "git {args:?}: {}", text(&out));
        out
    };
    git(&["init", "-q"]);
    git(&["config", "user.name", "Dev Eloper"]);
    git(&["config", "user.email", "dev@example.org"]);
    std::fs::write(repo.join("README"), "hello\n").unwrap();
    git(&["add", "README"]);
    git(&["commit", "-q", "-m", "Add a README"]);
    git(&["format-patch", "-q", "--root", "-o", "out"]);
    let patch = std::fs::read_dir(repo.join("out")).unwrap().next().unwrap().unwrap().path();
    let cmd = format!("--sendmail-cmd={}", ph.link("sendmail").display());
    let out = git(&[
        "send-email",
        &cmd,
        "--to=list@example.org",
        "--envelope-sender=auto",
        "--confirm=never",
        "--quiet",
        patch.to_str().unwrap(),
    ]);
    let d = wait_one(&sink, &ph);
    assert!(d.rcpt_to.contains(&"list@example.org".to_string()), "{:?}; {}", d.rcpt_to, text(&out));
    assert_eq!(d.header("Subject").as_deref(), Some("[PATCH] Add a README"));
    assert!(d.text().contains("+hello"), "the diff arrives: {}", d.text());
    assert_eq!(d.mail_from, "dev@example.org");
}

#[test]
fn mutt_dsn_options_reach_the_envelope_and_rule_the_bounce() {
    let sink = Sink::start();
    let bad = Sink::start_with(&["-f", "RCPT"]);
    let ph = satellite(&sink, Some(&bad), &[]);
    let muttrc = ph.dir().join("muttrc");
    std::fs::write(
        &muttrc,
        format!(
            "set sendmail=\"{} -oem -oi\"\nset dsn_notify=\"success,failure\"\nset dsn_return=\"hdrs\"\nset from=\"alice@example.org\"\nset use_envelope_from=yes\nset record=\"\"\nset copy=no\nset charset=\"utf-8\"\n",
            ph.link("sendmail").display()
        ),
    )
    .unwrap();
    let mutt = |subject: &str, to: &str| {
        let args = ["-n", "-F", muttrc.to_str().unwrap(), "-s", subject, to];
        let out = run(&ph, "mutt", &args, &[], b"hello, private body\n");
        assert!(out.status.success(), "{}", text(&out));
    };
    // Relayed to a DSN-capable next hop: NOTIFY and RET go along with it
    // (the next hop, not this one, sends the success notice).
    mutt("dsn test", "bob@example.org");
    let raw = sink.wait_for_messages(1, secs(20));
    assert_eq!(raw.len(), 1, "log:\n{}", ph.log());
    let envelope = envelope_lines(&raw[0]);
    assert!(envelope.iter().any(|l| l.contains("<alice@example.org>") && l.contains("RET=HDRS")), "{envelope:?}");
    assert!(
        envelope.iter().any(|l| l.contains("<bob@example.org>") && l.contains("NOTIFY=SUCCESS,FAILURE")),
        "{envelope:?}"
    );

    // Refused by the next hop: a bounce, with the headers only.
    mutt("to nowhere", "x@fail.example");
    let got = sink.wait_for_parsed(2, secs(20));
    assert_eq!(got.len(), 2, "log:\n{}", ph.log());
    let bounce = &got[1];
    assert_eq!((bounce.mail_from.as_str(), bounce.rcpt_to.as_slice()), ("", &["alice@example.org".to_string()][..]));
    let t = bounce.text();
    assert!(t.contains("Subject: to nowhere") && !t.contains("private body"), "{t}");
}

#[test]
fn dsn_never_means_no_bounce_and_hdrs_returns_headers_only() {
    let sink = Sink::start();
    let bad = Sink::start_with(&["-f", "RCPT"]);
    let ph = satellite(&sink, Some(&bad), &[]);
    let msg = b"Subject: no notice wanted\n\nsecret body text\n";
    let out = ph.run_as("sendmail", &["-f", "alice@example.org", "-N", "never", "x@fail.example"], msg);
    assert!(out.status.success(), "{}", text(&out));
    assert!(ph.wait_for_log("to=<x@fail.example>", secs(20)), "log:\n{}", ph.log());
    assert!(ph.wait_for_log("status=bounced", secs(20)), "log:\n{}", ph.log());

    // Failure notices wanted (the default), headers only, with an id.
    let msg = b"Subject: headers back\n\nsecret body text\n";
    let out =
        ph.run_as("sendmail", &["-f", "alice@example.org", "-R", "hdrs", "-V", "order-77", "y@fail.example"], msg);
    assert!(out.status.success(), "{}", text(&out));
    let got = sink.wait_for_parsed(1, secs(20));
    assert_eq!(got.len(), 1, "one bounce, for y only; log:\n{}", ph.log());
    let bounce = &got[0];
    assert_eq!((bounce.mail_from.as_str(), bounce.rcpt_to.as_slice()), ("", &["alice@example.org".to_string()][..]));
    let t = bounce.text();
    assert!(t.contains("y@fail.example") && !t.contains("x@fail.example"), "{t}");
    assert!(t.contains("text/rfc822-headers") && t.contains("Subject: headers back"), "{t}");
    assert!(!t.contains("secret body text"), "RET=HDRS returns no body: {t}");
    assert!(t.contains("Original-Envelope-Id: order-77"), "{t}");
    // Nothing more comes for x.
    std::thread::sleep(secs(2));
    assert_eq!(sink.messages().len(), 1, "log:\n{}", ph.log());
}

#[test]
fn bs_from_a_here_document_answers_the_queue_id() {
    let sink = Sink::start();
    let ph = satellite(&sink, None, &[]);
    let script = b"EHLO client\nMAIL FROM:<app@example.org>\nRCPT TO:<ops@example.org>\nDATA\nSubject: via -bs\n\nhello\n.\nQUIT\n";
    let out = ph.run_as("sendmail", &["-bs"], script);
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(out.status.success(), "{}", text(&out));
    let id = stdout
        .lines()
        .find_map(|l| l.strip_prefix("250 2.0.0 Ok: queued as "))
        .unwrap_or_else(|| panic!("no queued line: {stdout}"))
        .trim()
        .to_string();
    let d = wait_one(&sink, &ph);
    assert_eq!(d.header("Subject").as_deref(), Some("via -bs"));
    assert!(
        d.text().contains(&format!("id {id}")),
        "the answer names the queue id the message keeps: {id}\n{}",
        d.text()
    );
    assert!(ph.log().contains(&format!("{id}: to=<ops@example.org>")), "log:\n{}", ph.log());

    // Input that ends inside DATA: nothing queued, and the caller knows.
    let out = ph.run_as(
        "sendmail",
        &["-bs"],
        b"EHLO c\nMAIL FROM:<a@example.org>\nRCPT TO:<b@example.org>\nDATA\nSubject: cut\n\nno end\n",
    );
    assert!(!out.status.success(), "{}", text(&out));
    assert!(String::from_utf8_lossy(&out.stderr).contains("not queued"), "{}", text(&out));
}

#[test]
fn null_sender_gets_from_mailer_daemon() {
    let sink = Sink::start();
    let ph = satellite(&sink, None, &[]);
    for sender in ["<>", ""] {
        let out = ph.run_as("sendmail", &["-f", sender, "ops@example.org"], b"Subject: null\n\nx\n");
        assert!(out.status.success(), "{}", text(&out));
    }
    let got = sink.wait_for_parsed(2, secs(20));
    assert_eq!(got.len(), 2, "log:\n{}", ph.log());
    for d in got {
        assert_eq!(d.mail_from, "");
        assert_eq!(d.header("From"), Some(format!("MAILER-DAEMON@{}", ph.hostname())));
    }
}

#[test]
fn newaliases_checks_the_alias_files() {
    let sink = Sink::start();
    let dir = tempfile::tempdir().unwrap();
    let aliases = dir.path().join("aliases");
    std::fs::write(&aliases, "root: ops@example.org\n").unwrap();
    let ph = satellite(&sink, None, &[&format!("rewrite.alias_maps = [{}]", toml_str(aliases.to_str().unwrap()))]);
    for (name, args) in [("newaliases", &[][..]), ("sendmail", &["-bi"][..]), ("sendmail", &["-I"][..])] {
        let out = ph.run_as(name, args, b"");
        assert!(
            out.status.success() && out.stdout.is_empty() && out.stderr.is_empty(),
            "{name} {args:?}: {}",
            text(&out)
        );
    }
    std::fs::write(&aliases, "root: ops@example.org\npostmaster root\nbin: \"| \"\n").unwrap();
    let out = ph.run_as("newaliases", &[], b"");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{}", text(&out));
    let file = aliases.display();
    assert!(err.contains(&format!("{file}:2: ")) && err.contains(&format!("{file}:3: ")), "{err}");

    // A fresh install: no alias file (configured but missing), no daemon.
    let fresh = dir.path().join("fresh.toml");
    std::fs::write(
        &fresh,
        format!(
            "role = \"satellite\"\nspool = {}\n[rewrite]\nalias_maps = [{}]\n",
            toml_str(dir.path().join("no-spool").to_str().unwrap()),
            toml_str(dir.path().join("no-aliases").to_str().unwrap())
        ),
    )
    .unwrap();
    let mut cmd = Command::new(ph.link("newaliases"));
    cmd.env("POSTHORN_CONFIG", &fresh);
    let out = run_with_timeout(cmd, b"", COMMAND_TIMEOUT);
    assert!(out.status.success() && out.stdout.is_empty(), "{}", text(&out));
}

#[test]
fn verify_and_route_in_the_native_formats() {
    let sink = Sink::start();
    let bad = Sink::start();
    let dir = tempfile::tempdir().unwrap();
    let virt = dir.path().join("virtual");
    std::fs::write(&virt, "loop@example.org loop2@example.org\nloop2@example.org loop@example.org\n").unwrap();
    let ph = satellite(
        &sink,
        Some(&bad),
        &[&format!("rewrite.virtual_alias_maps = [{}]", toml_str(&format!("hash:{}", virt.display())))],
    );
    let smarthost = sink.addr().to_string();
    let out = ph.run_as("sendmail", &["-bv", "ops@example.org"], b"");
    assert!(out.status.success(), "{}", text(&out));
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        format!("ops@example.org... deliverable: mailer relay, host {smarthost}, user ops@example.org\n")
    );
    let out = ph.run_as("sendmail", &["-bv", "loop@example.org"], b"");
    assert_eq!(out.status.code(), Some(67), "{}", text(&out));
    assert!(String::from_utf8_lossy(&out.stdout).starts_with("loop@example.org... 550 5.4.6 "), "{}", text(&out));

    for name in ["exim", "exim4"] {
        let out = ph.run_as(name, &["-bt", "x@fail.example"], b"");
        assert!(out.status.success(), "{}", text(&out));
        let want = format!(
            "x@fail.example\n  router = manualroute, transport = remote_smtp\n  host [{}]:{}\n",
            bad.addr().ip(),
            bad.addr().port()
        );
        assert_eq!(String::from_utf8_lossy(&out.stdout), want);
    }
    let out = ph.run_as("exim", &["-bv", "ops@example.org", "loop@example.org"], b"");
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(stdout.starts_with("ops@example.org verified\nloop@example.org failed to verify: 550 5.4.6 "), "{stdout}");
}

#[test]
fn ignored_options_and_dash_c() {
    let sink = Sink::start();
    let ph = satellite(&sink, None, &[]);
    let args = [
        "-L",
        "mytag",
        "-h",
        "3",
        "-O",
        "DeliveryMode=b",
        "-G",
        "-Am",
        "-oem",
        "-oi",
        "-B",
        "8BITMIME",
        "ops@example.org",
    ];
    let out = ph.run_as("sendmail", &args, b"Subject: ignored options\n\nx\n");
    assert!(out.status.success(), "{}", text(&out));
    let d = wait_one(&sink, &ph);
    assert_eq!(d.rcpt_to, ["ops@example.org"], "-L's tag is not a recipient");

    // `-c PATH` with no POSTHORN_CONFIG in sight.
    let mut cmd = Command::new(ph.link("sendmail"));
    cmd.env_remove("POSTHORN_CONFIG").args(["-c", ph.config_path().to_str().unwrap(), "dev@example.org"]);
    let out = run_with_timeout(cmd, b"Subject: dash c\n\nx\n", COMMAND_TIMEOUT);
    assert!(out.status.success(), "{}", text(&out));
    let got = sink.wait_for_parsed(2, secs(20));
    assert_eq!(got.len(), 2, "log:\n{}", ph.log());
    assert_eq!(got[1].rcpt_to, ["dev@example.org"]);
}

#[test]
fn delay_counts_from_submission() {
    let sink = Sink::start();
    let mut ph = satellite(&sink, None, &[]);
    ph.stop();
    let out = ph.sendmail(&["ops@example.org"], b"Subject: waited\n\nx\n");
    assert!(out.status.success(), "{}", text(&out));
    std::thread::sleep(secs(3));
    ph.restart();
    wait_one(&sink, &ph);
    assert!(ph.wait_for_log("status=sent", secs(20)), "log:\n{}", ph.log());
    let line = ph.log_lines(&["to=<ops@example.org>", "status=sent"]).pop().unwrap();
    let delay: f64 =
        line.split("delay=").nth(1).and_then(|s| s.split(',').next()).and_then(|s| s.parse().ok()).unwrap();
    assert!(delay >= 3.0, "delay counts from the drop, 3 s before the start: {line}");
}

#[test]
fn install_links_makes_exim4_and_newaliases() {
    let dir = tempfile::tempdir().unwrap();
    let out = run_with_timeout(
        {
            let mut c = Command::new(BIN);
            c.args(["install-links", dir.path().to_str().unwrap()]);
            c
        },
        b"",
        COMMAND_TIMEOUT,
    );
    assert!(out.status.success(), "{}", text(&out));
    for name in ["sendmail", "exim", "exim4", "newaliases"] {
        let link: PathBuf = dir.path().join(name);
        assert_eq!(
            std::fs::read_link(&link).ok().map(|t| t.canonicalize().unwrap()),
            Some(Path::new(BIN).canonicalize().unwrap()),
            "{name}"
        );
    }
}

#[test]
fn a_running_daemon_uses_the_aliases_newaliases_checked() {
    let sink = Sink::start();
    let dir = tempfile::tempdir().unwrap();
    let aliases = dir.path().join("aliases");
    std::fs::write(&aliases, "root: ops@elsewhere.example\n").unwrap();
    let config = format!(
        "role = \"hub\"\n\n[smtp]\nlisten = [\"127.0.0.1:0\"]\n\n[access]\nlocal_domains = [\"example.org\"]\n\n[rewrite]\nalias_maps = [{}]\n\n[relay]\nsmarthosts = [{}]\ntls = \"none\"\n\n[queue]\nretry_min = \"1s\"\nretry_max = \"2s\"\n",
        toml_str(aliases.to_str().unwrap()),
        toml_str(&sink.addr().to_string())
    );
    let ph = Posthorn::start(&config);
    let out = ph.run_as("sendmail", &["root@example.org"], b"Subject: first\n\nx\n");
    assert!(out.status.success(), "{}", text(&out));
    assert_eq!(wait_one(&sink, &ph).rcpt_to, ["ops@elsewhere.example"]);

    std::fs::write(&aliases, "root: dev@elsewhere.example\n").unwrap();
    let out = ph.run_as("newaliases", &[], b"");
    assert!(out.status.success() && out.stderr.is_empty(), "{}", text(&out));
    // Tables are looked at again at most once a second.
    std::thread::sleep(std::time::Duration::from_millis(1500));
    let out = ph.run_as("sendmail", &["root@example.org"], b"Subject: second\n\nx\n");
    assert!(out.status.success(), "{}", text(&out));
    let got = sink.wait_for_parsed(2, secs(20));
    assert_eq!(got.len(), 2, "log:\n{}", ph.log());
    assert_eq!(got[1].rcpt_to, ["dev@elsewhere.example"], "log:\n{}", ph.log());
}
