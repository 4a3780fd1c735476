//! TLS and SMTP AUTH end to end, with real TLS peers: Python's smtplib
//! (an `ssl` context trusting a CA the test makes with rcgen), `openssl
//! s_client -starttls smtp`, and posthorn itself as satellite and hub.
//!
//! 1. STARTTLS is offered only with a certificate; after it the client must
//!    say EHLO again, STARTTLS is gone from the list, and the message's
//!    `Received:` says `with ESMTPS`.
//! 2. openssl s_client verifies the certificate against the test CA.
//! 3. Satellite -> hub with `relay.tls = "verify"` and the private CA:
//!    delivered; the satellite logs the TLS version and cipher.
//! 4. Wrong host name, or a CA the satellite does not trust: deferred with
//!    the TLS reason, and the hub never sees a MAIL command.
//! 5. `encrypt` towards a hub without STARTTLS: deferred, nothing sent.
//! 6. AUTH: refused before TLS (538), bad password 535 after a delay,
//!    malformed exchanges 501 with the session going on, LOGIN, and an
//!    authenticated client from an untrusted address may relay.
//! 7. Failed AUTH is limited per client address, also against parallel
//!    sessions: each attempt is counted before its password is checked.
//! 8. `posthorn auth add` writes a user the daemon accepts after reload.
//! 9. A missing certificate file refuses the start, naming the file.
//! 10. Satellite AUTH to the hub over TLS (`relay.auth_file`).
//! 11. Submission (587, RFC 6409): STARTTLS offered, MAIL before AUTH gets
//!     530; smtplib `starttls()` + `login()` sends. Submissions (465,
//!     RFC 8314): smtplib `SMTP_SSL` speaks TLS from the first byte, no
//!     STARTTLS offered, 530 before AUTH, `login()` sends. `Received:`
//!     names the AUTH user only with `tls.received_auth_user = true`.
//! 13. swaks `--tls --auth PLAIN` on the submission port and
//!     `--tls-on-connect` on the submissions port; a bad password is 535.
//! 12. Client-certificate trust: a satellite presenting a certificate from
//!     `tls.client_ca` (or with a fingerprint in
//!     `access.trusted_fingerprints`) relays through a hub that trusts no
//!     network; without a certificate it gets 554 5.7.1; with a sender
//!     outside `access.client_cert_senders` it gets 553 5.7.1.

mod harness;

use harness::*;
use std::fs;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::time::Instant;

/// A hub on 127.0.0.1 trusting no network, delivering `hub.example` into
/// Maildirs under `mail`, with `extra` appended.
fn hub(mail: &Path, extra: &str) -> Posthorn {
    Posthorn::start(&hub_text(mail, extra))
}

fn hub_text(mail: &Path, extra: &str) -> String {
    format!(
        "role = \"hub\"\n[smtp]\nlisten = [\"127.0.0.1:0\"]\n[access]\ntrusted_networks = []\nlocal_domains = [\"hub.example\"]\n[deliver]\nmaildir_root = {}\n[queue]\nretry_min = \"1s\"\nretry_max = \"2s\"\n{extra}",
        toml_str(&format!("{}/{{domain}}/{{user}}", mail.display()))
    )
}

fn maildir(mail: &Path, user: &str) -> Vec<Vec<u8>> {
    let new = mail.join("hub.example").join(user).join("new");
    let mut names: Vec<PathBuf> =
        fs::read_dir(&new).map(|d| d.flatten().map(|e| e.path()).collect()).unwrap_or_default();
    names.sort();
    names.iter().map(|p| fs::read(p).unwrap()).collect()
}

fn wait_maildir(mail: &Path, user: &str, n: usize) -> Vec<Vec<u8>> {
    wait_until(secs(20), || maildir(mail, user).len() >= n);
    maildir(mail, user)
}

/// An `[auth]` section with a users file holding `user:password` pairs.
fn auth_section(dir: &Path, users: &[(&str, &str)], extra: &str) -> String {
    let path = dir.join("users");
    for (user, password) in users {
        posthorn::auth::set_password(&path, user, password.as_bytes()).unwrap();
    }
    format!("\n[auth]\nusers = {}\n{extra}", toml_str(&path.display().to_string()))
}

fn codes(steps: &[(String, u16, String)]) -> Vec<String> {
    steps.iter().map(|(step, code, _)| format!("{step}:{code}")).collect()
}

const MESSAGE: &str = "Subject: tls test\n\nover TLS\n";

#[test]
fn starttls_only_with_a_certificate_and_received_says_esmtps() {
    let ca = TestCa::new("posthorn test CA");
    let cert = ca.issue("hub", &["hub.test", "127.0.0.1"]);
    let mail = tempfile::tempdir().unwrap();
    let ph = hub(mail.path(), &cert.tls_section());
    let steps = smtplib_steps(
        ph.smtp_addr(),
        &ca.ca_path(),
        &[TlsStep::StartTls, TlsStep::Cmd("STARTTLS"), TlsStep::Send("a@client.test", &["user@hub.example"], MESSAGE)],
    );
    assert_eq!(codes(&steps), ["ehlo:250", "starttls:220", "ehlo:250", "STARTTLS:503", "send:250"], "{steps:?}");
    assert!(steps[0].2.contains("starttls"), "offered before TLS: {}", steps[0].2);
    assert!(!steps[2].2.contains("starttls"), "not offered again: {}", steps[2].2);
    assert!(steps[2].2.contains("TLSv1.3"), "{}", steps[2].2);
    let got = wait_maildir(mail.path(), "user", 1);
    let received = header(&got[0], "Received").unwrap();
    assert!(received.contains("with ESMTPS"), "{received}");
    assert!(
        ph.wait_for_log("Anonymous TLS connection established from unknown[127.0.0.1]: TLSv1.3 with cipher", secs(5))
    );

    // Without a certificate: not offered, and refused when asked.
    let plain = hub(mail.path(), "");
    let steps = smtplib_steps(plain.smtp_addr(), &ca.ca_path(), &[TlsStep::Cmd("STARTTLS"), TlsStep::Cmd("NOOP")]);
    assert_eq!(codes(&steps), ["ehlo:250", "STARTTLS:502", "NOOP:250"], "{steps:?}");
    assert!(!steps[0].2.contains("starttls"), "{}", steps[0].2);
}

#[test]
fn commands_pipelined_behind_starttls_are_discarded() {
    let ca = TestCa::new("posthorn test CA");
    let cert = ca.issue("hub", &["127.0.0.1"]);
    let mail = tempfile::tempdir().unwrap();
    let ph = hub(mail.path(), &cert.tls_section());
    let mut raw = RawSmtp::connect(ph.smtp_addr()).unwrap();
    raw.ehlo("client.test").unwrap();
    // The injected MAIL must not be taken as if sent over TLS; the
    // handshake then fails (the client never starts one) and the session ends.
    raw.send_raw(b"STARTTLS\r\nMAIL FROM:<evil@client.test>\r\n").unwrap();
    assert_eq!(raw.read().unwrap().code, 220);
    assert!(ph.wait_for_log("pipelined after STARTTLS discarded", secs(5)), "{}", ph.log());
    drop(raw);
    assert!(ph.wait_for_log("disconnect from unknown[127.0.0.1]", secs(5)));
    assert!(!ph.log().contains("mail="), "{}", ph.log());
}

#[test]
fn openssl_s_client_verifies_the_certificate() {
    if !have_openssl() {
        eprintln!("openssl not installed; skipped");
        return;
    }
    let ca = TestCa::new("posthorn test CA");
    let cert = ca.issue("hub", &["hub.test", "127.0.0.1"]);
    let mail = tempfile::tempdir().unwrap();
    let ph = hub(mail.path(), &cert.tls_section());
    let (out, err) = openssl_starttls(ph.smtp_addr(), &ca.ca_path(), "EHLO openssl.test\nNOOP\nQUIT\n");
    assert!(out.contains("250-STARTTLS") || out.contains("250 "), "stdout: {out}\nstderr: {err}");
    assert!(out.contains("250 2.0.0 Ok"), "NOOP over TLS: {out}\nstderr: {err}");
    assert!(out.contains("221 2.0.0 Bye"), "{out}\nstderr: {err}");
    assert!(!err.contains("verify error"), "{err}");
    // Against another CA the verification fails.
    let other = TestCa::new("someone else");
    let (out, err) = openssl_starttls(ph.smtp_addr(), &other.ca_path(), "NOOP\nQUIT\n");
    assert!(!out.contains("221 2.0.0 Bye"), "{out}");
    assert!(err.contains("verify") || err.contains("certificate"), "{err}");
}

/// A satellite relaying to `hub` with `tls` and `ca`.
fn satellite(hub: &Posthorn, tls: &str, ca: Option<&Path>, extra: &[&str]) -> Posthorn {
    let tls_line = format!("relay.tls = \"{tls}\"");
    let ca_line = ca.map(|p| format!("relay.tls_ca = {}", toml_str(&p.display().to_string())));
    let mut lines = vec![tls_line.as_str()];
    if let Some(ca_line) = &ca_line {
        lines.push(ca_line);
    }
    lines.extend_from_slice(extra);
    Posthorn::start(&with_lines(&satellite_config(&[hub.smtp_addr()]), &lines))
}

#[test]
fn satellite_to_hub_verified_against_a_private_ca() {
    let ca = TestCa::new("posthorn test CA");
    let cert = ca.issue("hub", &["hub.test", "127.0.0.1"]);
    let mail = tempfile::tempdir().unwrap();
    // The hub trusts loopback here: the satellite relays by address.
    let hub = hub(mail.path(), &cert.tls_section().to_string().replace("trusted_networks = []", ""));
    let sat = satellite(&hub, "verify", Some(&ca.ca_path()), &[]);
    smtplib_send(sat.smtp_addr(), "cron@vm.test", &["user@hub.example"], MESSAGE).unwrap();
    let got = wait_maildir(mail.path(), "user", 1);
    assert!(String::from_utf8_lossy(&got[0]).contains("over TLS"));
    assert!(header(&got[0], "Received").unwrap().contains("with ESMTPS"));
    assert!(sat.wait_for_log("Verified TLS connection established to 127.0.0.1[127.0.0.1]", secs(5)), "{}", sat.log());
    // OpenSSL's cipher name and the key bits, as Postfix logs them.
    assert!(sat.log().contains("TLSv1.3 with cipher TLS_AES_256_GCM_SHA384 (256/256 bits)"), "{}", sat.log());
    assert!(sat.wait_for_log("status=sent", secs(5)));
}

#[test]
fn wrong_name_or_untrusted_ca_defers_and_sends_nothing() {
    let ca = TestCa::new("posthorn test CA");
    let mail = tempfile::tempdir().unwrap();
    // A certificate for another name than the one the satellite dials.
    let wrong_name = ca.issue("other", &["other.test"]);
    let hub1 = hub(mail.path(), &wrong_name.tls_section());
    // A certificate from a CA the satellite does not trust.
    let stranger = TestCa::new("a stranger");
    let untrusted = stranger.issue("hub", &["127.0.0.1"]);
    let hub2 = hub(mail.path(), &untrusted.tls_section());
    for (hub, why) in [(&hub1, "certificate not valid for name"), (&hub2, "UnknownIssuer")] {
        let sat = satellite(hub, "verify", Some(&ca.ca_path()), &[]);
        smtplib_send(sat.smtp_addr(), "cron@vm.test", &["user@hub.example"], MESSAGE).unwrap();
        assert!(sat.wait_for_log("status=deferred", secs(15)), "{}", sat.log());
        let line = sat.log_lines(&["status=deferred"]).remove(0);
        assert!(line.contains("TLS failed: handshake failed") && line.contains(why), "{line}");
        assert_eq!(sat.queued_count(), 1, "the message waits");
        let id = queue_id_of(&line).unwrap();
        // The log line comes as the attempt ends; the spool's record of it
        // follows within moments.
        let mut why_text = String::new();
        let recorded = wait_until(secs(10), || {
            why_text = String::from_utf8_lossy(&sat.command(&["queue", "why", &id], b"").stdout).into_owned();
            why_text.to_ascii_lowercase().contains("tls")
        });
        assert!(recorded, "{why_text}");
        assert!(!hub.log().contains("mail="), "nothing sent in clear:\n{}", hub.log());
        assert!(maildir(mail.path(), "user").is_empty());
    }
}

#[test]
fn encrypt_to_a_server_without_starttls_defers() {
    let mail = tempfile::tempdir().unwrap();
    let hub = hub(mail.path(), "");
    let sat = satellite(&hub, "encrypt", None, &[]);
    smtplib_send(sat.smtp_addr(), "cron@vm.test", &["user@hub.example"], MESSAGE).unwrap();
    assert!(sat.wait_for_log("status=deferred", secs(15)), "{}", sat.log());
    let line = sat.log_lines(&["status=deferred"]).remove(0);
    assert!(line.contains("STARTTLS is not offered"), "{line}");
    assert!(hub.wait_for_log("disconnect from", secs(5)));
    assert!(!hub.log().contains("mail="), "{}", hub.log());
}

#[test]
fn auth_rules() {
    let ca = TestCa::new("posthorn test CA");
    let cert = ca.issue("hub", &["127.0.0.1"]);
    let mail = tempfile::tempdir().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let auth = auth_section(dir.path(), &[("alice", "wonderland")], "failure_delay = \"1s\"\n");
    let ph = hub(mail.path(), &format!("{}{auth}", cert.tls_section()));
    let addr = ph.smtp_addr();
    let far = ["friend@far.example"];

    // Not offered and refused before TLS.
    let steps = smtplib_steps(addr, &ca.ca_path(), &[TlsStep::Plain("alice", "wonderland"), TlsStep::Cmd("NOOP")]);
    assert_eq!(codes(&steps), ["ehlo:250", "auth:538", "NOOP:250"], "{steps:?}");
    assert!(steps[1].2.starts_with("5.7.11 "), "{}", steps[1].2);
    assert!(!steps[0].2.contains("auth"), "{}", steps[0].2);

    // Untrusted and unauthenticated: no relaying.
    let steps = smtplib_steps(addr, &ca.ca_path(), &[TlsStep::StartTls, TlsStep::Send("a@client.test", &far, MESSAGE)]);
    assert_eq!(codes(&steps), ["ehlo:250", "starttls:220", "ehlo:250", "send:554"], "{steps:?}");
    assert!(steps[2].2.contains("auth"), "offered over TLS: {}", steps[2].2);

    // Malformed exchanges get 501 and the session goes on; a bad password
    // gets 535 after the delay; the right one may relay.
    let started = Instant::now();
    let steps = smtplib_steps(
        addr,
        &ca.ca_path(),
        &[
            TlsStep::StartTls,
            TlsStep::Cmd("AUTH PLAIN !!notbase64"),
            TlsStep::Cmd("AUTH PLAIN AGFsaWNl"),
            TlsStep::Cmd("AUTH CRAM-MD5"),
            TlsStep::Cmd("AUTH LOGIN"),
            TlsStep::Cmd("*"),
            TlsStep::Plain("alice", "guess"),
            TlsStep::Plain("alice", "wonderland"),
            TlsStep::Plain("alice", "wonderland"),
            TlsStep::Send("a@client.test", &far, MESSAGE),
        ],
    );
    assert_eq!(
        codes(&steps),
        [
            "ehlo:250",
            "starttls:220",
            "ehlo:250",
            "AUTH PLAIN !!notbase64:501",
            "AUTH PLAIN AGFsaWNl:501",
            "AUTH CRAM-MD5:504",
            "AUTH LOGIN:334",
            "*:501",
            "auth:535",
            "auth:235",
            "auth:503",
            "send:250"
        ],
        "{steps:?}"
    );
    assert!(steps[8].2.starts_with("5.7.8 "), "{}", steps[8].2);
    assert!(started.elapsed() >= secs(1), "the failure was answered after the delay");
    assert!(ph.wait_for_log("sasl_method=PLAIN, sasl_username=alice", secs(5)));
    assert!(ph.log().contains("SASL PLAIN authentication failed"));

    // LOGIN, step by step.
    let steps = smtplib_steps(
        addr,
        &ca.ca_path(),
        &[TlsStep::StartTls, TlsStep::Cmd("AUTH LOGIN"), TlsStep::Cmd("YWxpY2U="), TlsStep::Cmd("d29uZGVybGFuZA==")],
    );
    assert_eq!(
        codes(&steps),
        ["ehlo:250", "starttls:220", "ehlo:250", "AUTH LOGIN:334", "YWxpY2U=:334", "d29uZGVybGFuZA==:235"],
        "{steps:?}"
    );
    assert_eq!(steps[3].2, "VXNlcm5hbWU6");
}

#[test]
fn failed_auth_is_limited_per_address() {
    let ca = TestCa::new("posthorn test CA");
    let cert = ca.issue("hub", &["127.0.0.1"]);
    let mail = tempfile::tempdir().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let auth = auth_section(dir.path(), &[("alice", "wonderland")], "failure_delay = \"0s\"\nmax_failures = 2\n");
    let ph = hub(mail.path(), &format!("{}{auth}", cert.tls_section()));
    let steps = smtplib_steps(
        ph.smtp_addr(),
        &ca.ca_path(),
        &[TlsStep::StartTls, TlsStep::Plain("alice", "one"), TlsStep::Plain("alice", "two")],
    );
    assert_eq!(codes(&steps)[3..], ["auth:535", "auth:535"], "{steps:?}");
    // A new session from the same address: refused even with the password.
    let steps =
        smtplib_steps(ph.smtp_addr(), &ca.ca_path(), &[TlsStep::StartTls, TlsStep::Plain("alice", "wonderland")]);
    assert_eq!(codes(&steps)[3..], ["auth:454"], "{steps:?}");
}

#[test]
fn parallel_auth_guesses_are_limited_too() {
    let ca = TestCa::new("posthorn test CA");
    let cert = ca.issue("hub", &["127.0.0.1"]);
    let mail = tempfile::tempdir().unwrap();
    let dir = tempfile::tempdir().unwrap();
    // A failure is answered only after the delay: every guess is in flight
    // before the first one is answered.
    let auth = auth_section(dir.path(), &[("alice", "wonderland")], "failure_delay = \"3s\"\nmax_failures = 3\n");
    let ph = hub(mail.path(), &format!("{}{auth}", cert.tls_section()));
    let (addr, ca_path) = (ph.smtp_addr(), ca.ca_path());
    let guesses: Vec<_> = (0..10)
        .map(|n| {
            let ca_path = ca_path.clone();
            std::thread::spawn(move || {
                let guess = format!("guess{n}");
                let steps = smtplib_steps(addr, &ca_path, &[TlsStep::StartTls, TlsStep::Plain("alice", &guess)]);
                codes(&steps)[3..].to_vec()
            })
        })
        .collect();
    let answers: Vec<String> = guesses.into_iter().flat_map(|g| g.join().unwrap()).collect();
    assert_eq!(answers.len(), 10, "{answers:?}");
    let checked = answers.iter().filter(|a| *a == "auth:535").count();
    assert!(checked <= 3, "{checked} guesses were checked with max_failures = 3: {answers:?}");
    assert!(answers.iter().all(|a| a == "auth:535" || a == "auth:454"), "{answers:?}");
}

#[test]
fn auth_add_then_reload() {
    let ca = TestCa::new("posthorn test CA");
    let cert = ca.issue("hub", &["127.0.0.1"]);
    let mail = tempfile::tempdir().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let auth = auth_section(dir.path(), &[("alice", "wonderland")], "");
    let ph = hub(mail.path(), &format!("{}{auth}", cert.tls_section()));
    let out = ph.command(&["auth", "add", "bob"], b"builder\n");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let text = fs::read_to_string(dir.path().join("users")).unwrap();
    assert!(text.lines().any(|l| l.starts_with("bob:$argon2id$")), "{text}");
    let plain_bob = [TlsStep::StartTls, TlsStep::Plain("bob", "builder")];
    assert_eq!(codes(&smtplib_steps(ph.smtp_addr(), &ca.ca_path(), &plain_bob))[3..], ["auth:535"]);
    let out = ph.command(&["reload"], b"");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(codes(&smtplib_steps(ph.smtp_addr(), &ca.ca_path(), &plain_bob))[3..], ["auth:235"]);
    // Bad input: an empty password, a bad name.
    assert!(!ph.command(&["auth", "add", "carol"], b"\n").status.success());
    assert!(!ph.command(&["auth", "add", "a:b"], b"pw\n").status.success());
}

#[test]
fn missing_certificate_refuses_to_start_naming_the_file() {
    let mail = tempfile::tempdir().unwrap();
    let err = match Posthorn::try_start(&hub_text(
        mail.path(),
        "\n[tls]\ncert = \"/nonexistent/posthorn-cert.pem\"\nkey = \"/nonexistent/posthorn-key.pem\"\n",
    )) {
        Ok(_) => panic!("started without its certificate"),
        Err(e) => e,
    };
    assert!(err.contains("/nonexistent/posthorn-cert.pem: cannot read"), "{err}");
}

#[test]
fn satellite_authenticates_to_the_hub_over_tls() {
    let ca = TestCa::new("posthorn test CA");
    let cert = ca.issue("hub", &["127.0.0.1"]);
    let mail = tempfile::tempdir().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let auth = auth_section(dir.path(), &[("vm12", "fleet-secret")], "");
    // The hub trusts no network: only AUTH lets the satellite relay.
    let hub = hub(
        mail.path(),
        &format!("{}{auth}", cert.tls_section())
            .replace("local_domains = [\"hub.example\"]", "local_domains = [\"hub.example\"]\n"),
    );
    let creds = dir.path().join("relay-auth");
    fs::write(&creds, "vm12:fleet-secret\n").unwrap();
    let auth_line = format!("relay.auth_file = {}", toml_str(&creds.display().to_string()));
    let sat = satellite(&hub, "verify", Some(&ca.ca_path()), &[&auth_line]);
    smtplib_send(sat.smtp_addr(), "cron@vm.test", &["user@hub.example"], MESSAGE).unwrap();
    let got = wait_maildir(mail.path(), "user", 1);
    assert!(header(&got[0], "Received").unwrap().contains("with ESMTPSA"), "{:?}", header(&got[0], "Received"));
    assert!(hub.log().contains("sasl_username=vm12"), "{}", hub.log());

    // Nor over TLS whose certificate was not checked, unless allowed: a
    // man in the middle could present any certificate and take them.
    let sat = satellite(&hub, "encrypt", None, &[&auth_line]);
    smtplib_send(sat.smtp_addr(), "cron@vm.test", &["user@hub.example"], MESSAGE).unwrap();
    assert!(sat.wait_for_log("status=deferred", secs(15)), "{}", sat.log());
    assert!(sat.log_lines(&["status=deferred"])[0].contains("was not verified"), "{}", sat.log());
    let sat = satellite(&hub, "encrypt", None, &[&auth_line, "relay.auth_unverified = true"]);
    smtplib_send(sat.smtp_addr(), "cron@vm.test", &["user@hub.example"], MESSAGE).unwrap();
    wait_maildir(mail.path(), "user", 2);

    // Credentials are never sent in clear: a hub without TLS gets none.
    let plain_hub = hub_plain(mail.path(), &auth);
    let sat = satellite(&plain_hub, "may", None, &[&auth_line]);
    smtplib_send(sat.smtp_addr(), "cron@vm.test", &["user@hub.example"], MESSAGE).unwrap();
    assert!(sat.wait_for_log("status=deferred", secs(15)), "{}", sat.log());
    assert!(sat.log_lines(&["status=deferred"])[0].contains("without TLS"), "{}", sat.log());
    assert!(!plain_hub.log().contains("AUTH") && !plain_hub.log().contains("sasl"), "{}", plain_hub.log());
}

/// A hub with AUTH allowed without TLS (so that it offers AUTH in clear).
fn hub_plain(mail: &Path, auth: &str) -> Posthorn {
    hub(mail, &format!("{auth}allow_plaintext = true\n"))
}

/// A hub that also listens for submission (587 style) and submissions
/// (465 style), with a certificate and one AUTH user.
/// `tls_extra` goes into the `[tls]` section.
fn submission_hub(mail: &Path, ca: &TestCa, dir: &Path, tls_extra: &str) -> Posthorn {
    let cert = ca.issue("hub", &["hub.test", "127.0.0.1"]);
    let auth = auth_section(dir, &[("alice", "wonderland")], "");
    let text = hub_text(mail, &format!("{}{tls_extra}{auth}", cert.tls_section())).replace(
        "listen = [\"127.0.0.1:0\"]\n",
        "listen = [\"127.0.0.1:0\"]\nsubmission = [\"127.0.0.1:0\"]\nsubmissions = [\"127.0.0.1:0\"]\n",
    );
    Posthorn::start(&text)
}

#[test]
fn submission_requires_auth_and_offers_starttls() {
    let ca = TestCa::new("posthorn test CA");
    let mail = tempfile::tempdir().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let ph = submission_hub(mail.path(), &ca, dir.path(), "");
    let addr = ph.submission_addr();
    assert_ne!(addr, ph.smtp_addr());
    assert!(ph.log().contains(&format!("listening submission={addr}")), "{}", ph.log());

    let to: &[&str] = &["user@hub.example"];
    let anonymous =
        smtplib_steps(addr, &ca.ca_path(), &[TlsStep::StartTls, TlsStep::Send("a@client.test", to, MESSAGE)]);
    assert!(anonymous[0].2.contains("starttls"), "{anonymous:?}");
    assert_eq!(codes(&anonymous)[1..], ["starttls:220", "ehlo:250", "send:530"], "{anonymous:?}");
    assert!(anonymous[3].2.contains("5.7.0 Authentication required"), "{anonymous:?}");

    let steps =
        [TlsStep::StartTls, TlsStep::Login("alice", "wonderland"), TlsStep::Send("alice@hub.example", to, MESSAGE)];
    let got = smtplib_steps(addr, &ca.ca_path(), &steps);
    assert_eq!(codes(&got)[1..], ["starttls:220", "ehlo:250", "login:235", "send:250"], "{got:?}");
    let delivered = wait_maildir(mail.path(), "user", 1);
    let received = header(&delivered[0], "Received").unwrap();
    assert!(received.contains("with ESMTPSA"), "{received}");
    assert!(!received.contains("alice"), "the AUTH user is named only when configured: {received}");

    // Port 25 still takes mail for the hub's own domain without AUTH.
    let plain = smtplib_steps(ph.smtp_addr(), &ca.ca_path(), &[TlsStep::Send("a@client.test", to, MESSAGE)]);
    assert_eq!(codes(&plain)[1..], ["send:250"], "{plain:?}");
}

#[test]
fn submissions_is_tls_from_the_first_byte() {
    let ca = TestCa::new("posthorn test CA");
    let mail = tempfile::tempdir().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let ph = submission_hub(mail.path(), &ca, dir.path(), "received_auth_user = true\n");
    let addr = ph.submissions_addr();
    assert!(ph.log().contains(&format!("listening submissions={addr}")), "{}", ph.log());

    let to: &[&str] = &["user@hub.example"];
    let anonymous = smtps_steps(addr, &ca.ca_path(), &[TlsStep::Send("a@client.test", to, MESSAGE)]);
    assert_eq!(codes(&anonymous), ["ehlo:250", "send:530"], "{anonymous:?}");
    let features = &anonymous[0].2;
    assert!(features.contains("auth") && !features.contains("starttls"), "{features}");
    assert!(features.contains("TLSv1.3"), "{features}");

    let steps = [TlsStep::Login("alice", "wonderland"), TlsStep::Send("alice@hub.example", to, MESSAGE)];
    let got = smtps_steps(addr, &ca.ca_path(), &steps);
    assert_eq!(codes(&got), ["ehlo:250", "login:235", "send:250"], "{got:?}");
    let delivered = wait_maildir(mail.path(), "user", 1);
    let received = header(&delivered[0], "Received").unwrap();
    assert!(received.contains("with ESMTPSA"), "{received}");
    // `tls.received_auth_user = true`: the header names the AUTH user.
    assert!(received.contains("(Authenticated sender: alice)"), "{received}");

    // A client speaking plain SMTP there gets no greeting: its EHLO is not
    // a TLS ClientHello, and the connection closes.
    let mut plain = std::net::TcpStream::connect(addr).unwrap();
    plain.set_read_timeout(Some(secs(10))).unwrap();
    plain.write_all(b"EHLO client.test\r\n").unwrap();
    let mut answer = Vec::new();
    let _ = plain.read_to_end(&mut answer);
    assert!(!String::from_utf8_lossy(&answer).contains("220"), "{answer:?}");
    assert!(ph.wait_for_log("SSL_accept error", secs(10)), "{}", ph.log());
}

#[test]
fn client_certificate_lets_a_satellite_relay() {
    let ca = TestCa::new("posthorn test CA");
    let hub_cert = ca.issue("hub", &["127.0.0.1"]);
    let vm12 = ca.issue("vm12", &["vm12.example.org"]);
    // A certificate from a CA the hub does not know, trusted by fingerprint.
    let stranger = TestCa::new("a stranger");
    let pinned = stranger.issue("pinned", &["pinned.example.org"]);
    let der = posthorn::tls::load_certs(&pinned.cert).unwrap();
    let fp = posthorn::tls::fingerprint(&der[0]).to_uppercase();
    let fp: Vec<String> = fp.as_bytes().chunks(2).map(|c| String::from_utf8_lossy(c).into_owned()).collect();
    let mail = tempfile::tempdir().unwrap();
    let tls = format!("{}client_ca = {}\n", hub_cert.tls_section(), toml_str(&ca.ca_path().display().to_string()));
    let access = format!(
        "local_domains = [\"hub.example\"]\ntrusted_fingerprints = [\"{}\"]\nclient_cert_senders = {{ \"vm12.example.org\" = [\"*@vm12.example.org\"] }}",
        fp.join(":")
    );
    let text = hub_text(mail.path(), &tls).replace("local_domains = [\"hub.example\"]", &access);
    let hub = Posthorn::start(&text);
    let ca_path = ca.ca_path();

    let [cert_line, key_line] = vm12.relay_lines();
    let sat = satellite(&hub, "verify", Some(&ca_path), &[&cert_line, &key_line]);
    smtplib_send(sat.smtp_addr(), "cron@vm12.example.org", &["ok@far.example"], MESSAGE).unwrap();
    assert!(sat.wait_for_log_count(&["ok@far.example", "status=sent"], 1, secs(20)), "{}", sat.log());
    assert!(hub.log().contains("Trusted TLS connection established from"), "{}", hub.log());

    // The same certificate with a sender it does not own.
    smtplib_send(sat.smtp_addr(), "cron@elsewhere.test", &["foreign@far.example"], MESSAGE).unwrap();
    assert!(sat.wait_for_log_count(&["foreign@far.example", "553 5.7.1"], 1, secs(20)), "{}", sat.log());
    assert!(sat.log().contains("not owned by certificate"), "{}", sat.log());

    // No certificate: an untrusted address may not relay.
    let bare = satellite(&hub, "verify", Some(&ca_path), &[]);
    smtplib_send(bare.smtp_addr(), "cron@vm12.example.org", &["denied@far.example"], MESSAGE).unwrap();
    assert!(bare.wait_for_log_count(&["denied@far.example", "554 5.7.1"], 1, secs(20)), "{}", bare.log());

    // Trusted by fingerprint, no sender policy for its name.
    let [cert_line, key_line] = pinned.relay_lines();
    let sat = satellite(&hub, "verify", Some(&ca_path), &[&cert_line, &key_line]);
    smtplib_send(sat.smtp_addr(), "cron@pinned.example.org", &["pinned@far.example"], MESSAGE).unwrap();
    assert!(sat.wait_for_log_count(&["pinned@far.example", "status=sent"], 1, secs(20)), "{}", sat.log());
}

#[test]
fn swaks_tls_and_auth_plain_on_the_submission_ports() {
    let ca = TestCa::new("posthorn test CA");
    let mail = tempfile::tempdir().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let ph = submission_hub(mail.path(), &ca, dir.path(), "");
    let auth = ["--auth", "PLAIN", "--auth-user", "alice", "--auth-password", "wonderland"];
    let mail_args = ["--from", "alice@hub.example", "--to", "user@hub.example", "--body", "via swaks"];
    let run = |addr, tls: &str, auth: &[&str]| {
        let mut args = vec![tls];
        args.extend_from_slice(auth);
        args.extend_from_slice(&mail_args);
        let out = swaks(addr, &args);
        (out.status.success(), String::from_utf8_lossy(&out.stdout).into_owned())
    };
    let (ok, transcript) = run(ph.submission_addr(), "--tls", &auth);
    assert!(ok, "{transcript}");
    assert!(transcript.contains("<-  220 2.0.0 Ready to start TLS"), "{transcript}");
    assert!(transcript.contains("235 2.7.0 Authentication successful"), "{transcript}");
    let (ok, transcript) = run(ph.submissions_addr(), "--tls-on-connect", &auth);
    assert!(ok, "{transcript}");
    assert!(transcript.contains("235 2.7.0"), "{transcript}");
    assert_eq!(wait_maildir(mail.path(), "user", 2).len(), 2);

    let bad = ["--auth", "PLAIN", "--auth-user", "alice", "--auth-password", "looking-glass"];
    let (ok, transcript) = run(ph.submission_addr(), "--tls", &bad);
    assert!(!ok, "{transcript}");
    assert!(transcript.contains("535 5.7.8"), "{transcript}");
}
