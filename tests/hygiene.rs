//! Input and output hygiene, end to end (issue 12, the Low list): what a
//! local user or a remote peer writes must reach our logs, listings and
//! outgoing commands only as what it claims to be.
//!
//! 1. `sendmail` refuses a sender or recipient that is not an address
//!    (exit 64); a drop written past `sendmail` with such an address is
//!    quarantined at pickup, never logged raw nor relayed.
//! 2. A next hop's reply text with terminal escapes reaches the log,
//!    `mailq` and `queue why` escaped, printable UTF-8 kept.
//! 3. The pipe content filter never gets an address as an option: a
//!    recipient starting with `-` is bounced (5.1.3), the others piped.
//! 4. `TRACE=` from a client outside the trusted networks gets 555 and
//!    `XPOSTHORN-TRACE` is not offered to it; a trusted one still may.
//! 5. A bounce's MIME boundary cannot be predicted from what the sender
//!    knows (its queue id, the time): random, different in each bounce.
//! 6. A local part that cannot name a Maildir is refused at RCPT (550
//!    5.1.3), not accepted and bounced; a hub with local domains and no
//!    `local_recipient_maps` says at start that it takes any local part.
//! 7. 8-bit octets in a body sent without `BODY=8BITMIME` reach a next hop
//!    without 8BITMIME converted to 7 bit, or (an 8-bit header) fail 5.6.3,
//!    never raw.
//! 8. Masquerading rewrites `From:`; every other header byte, non-UTF-8
//!    ones included, reaches the next hop as it was (an upstream DKIM
//!    signature still holds).
//! 9. `posthorn auth add` writes Argon2id entries; the SHA-512-crypt
//!    entries of an older file still log in beside them.
//! 10. A message with bare LF line ends (smtplib with a LF-built message)
//!    is normalized from trusted clients and the reinjection listener,
//!    refused (550 5.5.2) from others and from all with `bare_newline =
//!    "reject"` (issue 14, item 7).

mod harness;

use std::fs;
use std::path::Path;
use std::thread;
use std::time::Duration;

use harness::*;

/// A satellite relaying to `sink` only.
fn satellite(sink: &Sink) -> Posthorn {
    Posthorn::start(&satellite_config(&[sink.addr()]))
}

/// Writes a maildrop file the way a local user could without `sendmail`:
/// a dot-file renamed into place (pickup skips dot-files).
fn plant_drop(ph: &Posthorn, name: &str, envelope: &serde_json::Value, message: &str) {
    let dir = ph.spool_dir().join("maildrop");
    let tmp = dir.join(format!(".{name}"));
    fs::write(&tmp, format!("{envelope}\n{message}")).unwrap();
    fs::rename(&tmp, dir.join(name)).unwrap();
}

fn stderr(out: &std::process::Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

#[test]
fn sendmail_refuses_addresses_that_are_not_addresses() {
    let sink = Sink::start();
    let ph = satellite(&sink);
    let msg = message(&[("Subject", "forged")], "x\n");
    let forged_rcpt = "ops@example.test\nFAKEID: to=<boss@example.test>, status=sent";
    let cases: [&[&str]; 4] = [
        &["-i", forged_rcpt],
        &["-i", "ops@example.test> NOTIFY=SUCCESS ORCPT=rfc822;spy@example.test"],
        &["-i", "-f", "app@vm.test SIZE=1 RET=FULL", "ops@example.test"],
        &["-i", "ops example.test"],
    ];
    for args in cases {
        let out = ph.sendmail(args, msg.as_bytes());
        assert_eq!(out.status.code(), Some(64), "sendmail {args:?}: {}", stderr(&out));
        assert!(stderr(&out).contains("address"), "sendmail {args:?}: {}", stderr(&out));
    }
    // Nothing was dropped: a good message after them is the only one out.
    let good = message(&[("Subject", "good")], "y\n");
    let out = ph.sendmail(&["-i", "ops@example.test"], good.as_bytes());
    assert!(out.status.success(), "{}", stderr(&out));
    let got = sink.wait_for_parsed(1, secs(15));
    thread::sleep(Duration::from_millis(500));
    assert_eq!(sink.parsed().len(), 1, "log:\n{}", ph.log());
    assert_eq!(got[0].header("Subject").as_deref(), Some("good"));
    assert!(!ph.log().contains("FAKEID"), "log:\n{}", ph.log());
}

#[test]
fn a_drop_with_a_forged_address_is_quarantined_at_pickup() {
    let sink = Sink::start();
    let ph = satellite(&sink);
    let forged = serde_json::json!({
        "sender": "app@vm.test",
        "recipients": ["ops@example.test\nFAKEID: to=<boss@example.test>, status=sent"],
    });
    plant_drop(&ph, "forgedlogline", &forged, "Subject: forged\n\nx\n");
    let injected = serde_json::json!({
        "sender": "app@vm.test> RET=FULL",
        "recipients": ["ops@example.test> NOTIFY=SUCCESS ORCPT=rfc822;spy@example.test"],
    });
    plant_drop(&ph, "injectedparams", &injected, "Subject: injected\n\ny\n");
    // A good message through `sendmail` wakes the pickup, which scans all.
    let out = ph.sendmail(&["-i", "ops@example.test"], message(&[("Subject", "good")], "z\n").as_bytes());
    assert!(out.status.success(), "{}", stderr(&out));

    let got = sink.wait_for_parsed(1, secs(15));
    for name in ["forgedlogline", "injectedparams"] {
        let line = format!("maildrop {name}: refused: bad ");
        assert!(ph.wait_for_log(&line, secs(15)), "no `{line}` line; log:\n{}", ph.log());
        let kept = ph.spool_dir().join("corrupt").join(format!("maildrop-{name}"));
        assert!(kept.exists(), "{} missing", kept.display());
        assert!(!Path::new(&ph.spool_dir().join("maildrop").join(name)).exists());
    }
    thread::sleep(Duration::from_millis(500));
    let all = sink.parsed();
    assert_eq!(all.len(), 1, "a forged drop was relayed: {all:?}");
    assert_eq!(got[0].header("Subject").as_deref(), Some("good"));
    assert!(all[0].rcpt_to.iter().all(|r| r == "ops@example.test"), "{all:?}");
    // The forged text appears only escaped, inside the refusal line.
    for line in ph.log().lines().filter(|l| l.contains("FAKEID")) {
        assert!(line.contains("refused: bad recipient address") && line.contains("\\n"), "forged line: {line}");
    }
}

#[test]
fn remote_reply_text_is_escaped_in_logs_and_listings() {
    let busy = "451 4.2.1 Mailbox busy \u{1b}[2J\u{1b}]0;pwned\u{7} Grüße \u{202e}txt";
    let next = Scripted::start(Script::new().rcpt("slow@", busy));
    let ph = Posthorn::start(&with_lines(
        &satellite_config(&[next.addr()]),
        &["queue.retry_min = \"1h\"", "queue.retry_max = \"1h\""],
    ));
    let out = swaks(ph.smtp_addr(), &["--from", "app@vm.test", "--to", "slow@example.test"]);
    assert!(out.status.success(), "swaks: {}", String::from_utf8_lossy(&out.stdout));
    assert!(ph.wait_for_log_count(&["to=<slow@example.test>", "status=deferred"], 1, secs(15)), "log:\n{}", ph.log());
    let line = ph.log_lines(&["to=<slow@example.test>", "status=deferred"]).remove(0);
    let id = queue_id_of(&line).unwrap();

    // The deferral is logged a moment before the envelope that `mailq`
    // reads is saved with its reason.
    let mut mailq = ph.run_as("mailq", &[], b"");
    wait_until(secs(10), || {
        mailq = ph.run_as("mailq", &[], b"");
        String::from_utf8_lossy(&mailq.stdout).contains("Mailbox busy")
    });
    let why = ph.command(&["queue", "why", &id], b"");
    let outputs = [("log", ph.log().into_bytes()), ("mailq", mailq.stdout), ("queue why", why.stdout)];
    for (what, text) in outputs {
        let shown = String::from_utf8_lossy(&text);
        assert!(!text.iter().any(|&b| b == 0x1b || b == 0x07), "{what} carries raw escapes:\n{shown:?}");
        assert!(!shown.contains('\u{202e}'), "{what} carries a bidi override:\n{shown}");
        assert!(shown.contains("Mailbox busy \\x1b[2J\\x1b]0;pwned\\x07 Grüße \\u{202e}txt"), "{what}:\n{shown}");
    }
}

/// A hub whose content filter is the script `filter` (pipe), Maildirs
/// under `dir/mail`.
fn filter_hub(dir: &Path, filter: &Path) -> Posthorn {
    let root = format!("{}/mail/{{domain}}/{{user}}", dir.display());
    let base = "role = \"hub\"\n\n[smtp]\nlisten = [\"127.0.0.1:0\"]\n\n[relay]\ntls = \"none\"\n\n[queue]\nretry_min = \"1s\"\nretry_max = \"2s\"\n";
    let lines = [
        "access.local_domains = [\"example.org\"]".to_string(),
        format!("deliver.maildir_root = {}", toml_str(&root)),
        format!("filter.content_filter = {}", toml_str(&format!("pipe:{} ${{recipient}}", filter.display()))),
    ];
    Posthorn::start(&with_lines(base, &lines.iter().map(String::as_str).collect::<Vec<_>>()))
}

#[test]
fn pipe_filter_never_gets_an_address_as_an_option() {
    let dir = tempfile::tempdir().unwrap();
    let calls = dir.path().join("calls");
    fs::create_dir(&calls).unwrap();
    // A filter in sendmail's style: options first (getopts), then addresses.
    let script = dir.path().join("filter.sh");
    let text = format!(
        "#!/bin/sh\nout={calls}/call.$$\nwhile getopts o: opt; do echo \"option:$OPTARG\" >> $out.tmp; done\nshift $((OPTIND-1))\nprintf 'rcpt:%s\\n' \"$@\" >> $out.tmp\ncat > /dev/null\nmv $out.tmp $out\nexit 0\n",
        calls = calls.display()
    );
    fs::write(&script, text).unwrap();
    fs::set_permissions(&script, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    let hub = filter_hub(dir.path(), &script);
    let msg = message(&[("Subject", "options")], "x\n");
    smtplib_send(hub.smtp_addr(), "app@vm.test", &["-oinjected@example.org", "ok@example.org"], &msg).unwrap();

    let line = "to=<-oinjected@example.org>";
    assert!(hub.wait_for_log_count(&[line, "status=bounced"], 1, secs(20)), "log:\n{}", hub.log());
    let bounced = hub.log_lines(&[line, "status=bounced"]).remove(0);
    assert!(bounced.contains("5.1.3") && bounced.contains("read as an option"), "{bounced}");
    assert!(hub.wait_for_log_count(&["to=<ok@example.org>", "status=sent"], 1, secs(20)), "log:\n{}", hub.log());
    let runs: Vec<String> = fs::read_dir(&calls)
        .unwrap()
        .flatten()
        .filter(|e| !e.file_name().to_string_lossy().ends_with(".tmp"))
        .map(|e| fs::read_to_string(e.path()).unwrap())
        .collect();
    assert!(runs.iter().any(|r| r == "rcpt:ok@example.org\n"), "{runs:?}");
    assert!(runs.iter().all(|r| !r.contains("option:")), "an address became an option: {runs:?}");
}

/// Runs a Python smtplib program with `addr`'s host and port as argv[1:3];
/// returns its stdout.
fn smtplib_program(addr: std::net::SocketAddr, program: &str) -> String {
    let mut cmd = std::process::Command::new("python3");
    cmd.args(["-c", program, &addr.ip().to_string(), &addr.port().to_string()]);
    let out = run_with_timeout(cmd, b"", secs(30));
    assert!(out.status.success(), "python: {}", stderr(&out));
    String::from_utf8_lossy(&out.stdout).into_owned()
}

const TRACE_PROGRAM: &str = "import smtplib, sys\n\
    s = smtplib.SMTP(sys.argv[1], int(sys.argv[2]), timeout=30)\n\
    code, text = s.ehlo('client.test')\n\
    print('offered' if b'XPOSTHORN-TRACE' in text else 'not offered')\n\
    print(s.mail('app@vm.test', ['TRACE=forged-1'])[0])\n\
    s.rset()\n\
    print(s.mail('app@vm.test')[0])\n\
    s.quit()\n";

#[test]
fn trace_is_accepted_from_trusted_clients_only() {
    let base = "role = \"hub\"\n\n[smtp]\nlisten = [\"127.0.0.1:0\"]\n";
    let stranger = Posthorn::start(&with_lines(base, &["access.trusted_networks = [\"192.0.2.0/24\"]"]));
    let got = smtplib_program(stranger.smtp_addr(), TRACE_PROGRAM);
    assert_eq!(got.lines().collect::<Vec<_>>(), ["not offered", "555", "250"], "log:\n{}", stranger.log());
    assert!(!stranger.log().contains("forged-1"), "log:\n{}", stranger.log());

    let trusted = Posthorn::start(base);
    let got = smtplib_program(trusted.smtp_addr(), TRACE_PROGRAM);
    assert_eq!(got.lines().collect::<Vec<_>>(), ["offered", "250", "250"], "log:\n{}", trusted.log());
}

/// The `boundary=` parameter of a Content-Type value.
fn boundary_of(content_type: &str) -> String {
    let at = content_type.find("boundary=").expect("a boundary") + "boundary=".len();
    content_type[at..].trim_matches('"').split('"').next().unwrap().to_string()
}

#[test]
fn bounce_boundaries_are_unpredictable() {
    let next = Scripted::start(Script::new().rcpt("nobody@", "550 5.1.1 no such user"));
    let ph = Posthorn::start(&satellite_config(&[next.addr()]));
    let mut ids = Vec::new();
    for i in 0..2 {
        let msg = message(&[("Subject", &format!("bounce {i}"))], "x\n");
        let (code, text) = smtplib_transaction(ph.smtp_addr(), "app@vm.test", &["nobody@example.test"], &msg).unwrap();
        assert_eq!(code, 250, "{text}");
        ids.push(text.rsplit(' ').next().unwrap().to_string());
    }
    let notices = next.wait_until(secs(20), |r| r.accepted().iter().filter(|t| t.mail_from.is_empty()).count() >= 2);
    let notices: Vec<_> = notices.accepted().into_iter().filter(|t| t.mail_from.is_empty()).collect();
    assert_eq!(notices.len(), 2, "log:\n{}", ph.log());
    let boundaries: Vec<String> = notices.iter().map(|n| boundary_of(&n.header("Content-Type").unwrap())).collect();
    assert_ne!(boundaries[0], boundaries[1]);
    for b in &boundaries {
        assert!(ids.iter().all(|id| !b.contains(id.as_str())), "boundary {b:?} holds a queue id of {ids:?}");
        let random = b.chars().filter(char::is_ascii_hexdigit).count();
        assert!(random >= 32, "boundary {b:?} has too little randomness");
    }
}

#[test]
fn unsafe_maildir_names_are_refused_at_rcpt() {
    let dir = tempfile::tempdir().unwrap();
    let root = format!("{}/mail/{{domain}}/{{user}}", dir.path().display());
    let base = "role = \"hub\"\n\n[smtp]\nlisten = [\"127.0.0.1:0\"]\n";
    let maildirs = format!("deliver.maildir_root = {}", toml_str(&root));
    let hub = Posthorn::start(&with_lines(base, &["access.local_domains = [\"example.org\"]", &maildirs]));
    assert!(
        hub.log().contains("access.local_domains (example.org) without access.local_recipient_maps"),
        "no start-up warning; log:\n{}",
        hub.log()
    );
    for rcpt in ["a/b@example.org", "\"../../tmp/x\"@example.org"] {
        let out = swaks(hub.smtp_addr(), &["--from", "stranger@elsewhere.test", "--to", rcpt, "--quit-after", "RCPT"]);
        let transcript = String::from_utf8_lossy(&out.stdout);
        assert!(transcript.contains("<** 550 5.1.3"), "{rcpt}: {transcript}");
    }
    let out = swaks(hub.smtp_addr(), &["--from", "stranger@elsewhere.test", "--to", "alice@example.org"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stdout));
    assert!(wait_until(secs(15), || dir
        .path()
        .join("mail/example.org/alice/new")
        .read_dir()
        .is_ok_and(|mut d| d.next().is_some())));
    thread::sleep(Duration::from_millis(500));
    assert!(!hub.log().contains("status=bounced"), "log:\n{}", hub.log());
}

#[test]
fn undeclared_eight_bit_is_converted_for_a_seven_bit_hop() {
    let seven = SevenBitHost::start();
    let ph = Posthorn::start(&satellite_config(&[seven.addr]));
    let msg = "From: app@vm.test\nTo: ops@example.test\nSubject: plain\nMIME-Version: 1.0\n\
        Content-Type: text/plain; charset=utf-8\n\nGrüße aus Köln\n";
    smtplib_send(ph.smtp_addr(), "app@vm.test", &["ops@example.test"], msg).unwrap();
    let (mail, got) = seven.wait_from("app@vm.test", secs(15)).unwrap_or_else(|| panic!("log:\n{}", ph.log()));
    assert!(!mail.contains("BODY="), "{mail}");
    let text = String::from_utf8_lossy(&got);
    assert!(got.iter().all(|b| *b < 0x80), "raw 8-bit relayed:\n{text}");
    assert_eq!(header(&got, "Content-Transfer-Encoding").as_deref(), Some("quoted-printable"), "{text}");
    assert!(text.contains("Gr=C3=BC=C3=9Fe aus K=C3=B6ln"), "{text}");

    // An 8-bit header cannot be converted: a bounce with 5.6.3, not raw.
    let msg = "From: app@vm.test\nTo: ops@example.test\nSubject: Grüße\n\nx\n";
    smtplib_send(ph.smtp_addr(), "other@vm.test", &["ops@example.test"], msg).unwrap();
    assert!(
        ph.wait_for_log_count(&["to=<ops@example.test>", "status=bounced", "5.6.3"], 1, secs(15)),
        "log:\n{}",
        ph.log()
    );
    assert!(seven.wait_from("other@vm.test", secs(1)).is_none(), "the 8-bit header went out raw");
}

#[test]
fn header_rewriting_keeps_the_bytes_it_does_not_rewrite() {
    let sink = Sink::start();
    let config = with_lines(
        &satellite_config(&[sink.addr()]),
        &["rewrite.masquerade_as = \"vm12.example.org\"", "rewrite.masquerade_domains = [\"vm12.internal\"]"],
    );
    let ph = Posthorn::start(&config);
    // Latin-1, as old programs write it: not UTF-8.
    let kept: &[u8] = b"DKIM-Signature: v=1; a=rsa-sha256; d=vm12.internal; s=s1;\n\th=from:subject; bh=x; b=y\n\
        Subject: caf\xe9 cr\xe8me\nX-Raw: \xff\xfe\n \xe9t\xe9\n";
    let msg = [&b"From: \"Andr\xe9\" <root@vm12.internal>\n"[..], kept, b"\nbody\n"].concat();
    let out = ph.sendmail(&["-i", "-f", "root@vm12.internal", "ops@example.net"], &msg);
    assert!(out.status.success(), "{}", stderr(&out));

    let got = sink.wait_for_parsed(1, secs(15));
    assert_eq!(got.len(), 1, "log:\n{}", ph.log());
    let text = &got[0].message;
    let from = b"From: \"Andr\xe9\" <root@vm12.example.org>\n";
    assert!(text.windows(from.len()).any(|w| w == from), "{:?}", String::from_utf8_lossy(text));
    assert!(text.windows(kept.len()).any(|w| w == kept), "fields changed: {:?}", String::from_utf8_lossy(text));
}

const LOGIN_PROGRAM: &str = "import smtplib, sys\n\
    s = smtplib.SMTP(sys.argv[1], int(sys.argv[2]), timeout=30)\n\
    s.ehlo('client.test')\n\
    for user, pw in [('ops', 'secret'), ('alice', 'wonder'), ('alice', 'wrong')]:\n\
    \x20   try:\n\
    \x20       print(user, s.login(user, pw)[0])\n\
    \x20   except smtplib.SMTPAuthenticationError as e:\n\
    \x20       print(user, e.smtp_code)\n\
    \x20   s.close(); s.connect(sys.argv[1], int(sys.argv[2])); s.ehlo('client.test')\n";

#[test]
fn new_password_entries_are_argon2id_and_old_ones_still_verify() {
    let dir = tempfile::tempdir().unwrap();
    let users = dir.path().join("users");
    // `openssl passwd -6 -salt saltsalt secret`, as an older file has it.
    let old =
        "ops:$6$saltsalt$TVLlQcbpFVof5W3Yz4DTP6gRstiNuHwwTt6GLc1E5n0U0aDehy0S5knV8wiOQSpT0Y77vwPZN.Pq.H91p5hVO1\n";
    fs::write(&users, old).unwrap();
    let base = "role = \"hub\"\n\n[smtp]\nlisten = [\"127.0.0.1:0\"]\n";
    let auth = format!(
        "\n[auth]\nusers = {}\nallow_plaintext = true\nfailure_delay = \"0s\"\n",
        toml_str(&users.display().to_string())
    );
    let ph = Posthorn::start(&format!("{base}{auth}"));
    let out = ph.command(&["auth", "add", "alice"], b"wonder\n");
    assert!(out.status.success(), "{}", stderr(&out));
    let text = fs::read_to_string(&users).unwrap();
    assert!(text.lines().any(|l| l.starts_with("alice:$argon2id$v=19$")), "{text}");
    assert!(text.contains(old), "the old entry is kept as it was: {text}");
    let out = ph.command(&["reload"], b"");
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(ph.wait_for_log("reload", secs(10)), "log:\n{}", ph.log());

    let got = smtplib_program(ph.smtp_addr(), LOGIN_PROGRAM);
    assert_eq!(got.lines().collect::<Vec<_>>(), ["ops 235", "alice 235", "alice 535"], "log:\n{}", ph.log());
}

/// Python's `smtplib.sendmail` with a message built with LF line ends: it
/// dot-stuffs after each LF and ends with CRLF . CRLF. Prints the reply
/// code and enhanced code of the end of data.
const BARE_LF_PROGRAM: &str = r#"
import smtplib, sys
s = smtplib.SMTP(sys.argv[1], int(sys.argv[2]), timeout=30)
try:
    s.sendmail('app@vm.test', ['ops@example.org'], b'Subject: bare lf\n\n.dotted line\nsecond line\n')
    print('250')
except smtplib.SMTPDataError as e:
    print(e.smtp_code, e.smtp_error.decode().split()[0])
s.quit()
"#;

#[test]
fn bare_lf_is_normalized_from_trusted_clients_and_refused_from_others() {
    let sink = Sink::start();
    let trusted = satellite(&sink);
    assert_eq!(smtplib_program(trusted.smtp_addr(), BARE_LF_PROGRAM).trim(), "250", "log:\n{}", trusted.log());
    let got = sink.wait_for_parsed(1, secs(30));
    let body = String::from_utf8_lossy(&got[0].body()).into_owned();
    assert_eq!(got[0].header("Subject").as_deref(), Some("bare lf"), "{got:?}");
    assert!(body.starts_with(".dotted line\nsecond line\n"), "{body:?}");

    // 127.0.0.1 is a stranger here; the reinjection listener still takes
    // the filter's output as it is written.
    let base = "role = \"hub\"\n\n[smtp]\nlisten = [\"127.0.0.1:0\"]\n";
    let stranger = Posthorn::start(&with_lines(
        base,
        &[
            "access.trusted_networks = [\"192.0.2.0/24\"]",
            "access.relay_domains = [\"example.org\"]",
            "filter.reinject_listen = \"127.0.0.1:0\"",
        ],
    ));
    assert_eq!(smtplib_program(stranger.smtp_addr(), BARE_LF_PROGRAM).trim(), "550 5.5.2", "log:\n{}", stranger.log());
    assert_eq!(smtplib_program(stranger.reinject_addr(), BARE_LF_PROGRAM).trim(), "250", "log:\n{}", stranger.log());

    // `reject` refuses it from everyone.
    let strict = Posthorn::start(&with_lines(&satellite_config(&[sink.addr()]), &["smtp.bare_newline = \"reject\""]));
    assert_eq!(smtplib_program(strict.smtp_addr(), BARE_LF_PROGRAM).trim(), "550 5.5.2", "log:\n{}", strict.log());
}
