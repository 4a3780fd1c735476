//! End-to-end: SPF, DKIM and DMARC checks of incoming mail (`[verify]`,
//! issue 16) on a real hub, with every record served by the test DNS
//! server and clients that connect from chosen loopback addresses
//! (127.0.0.x), driven by a small Python client. Each delivered message
//! is read back from its Maildir and its Authentication-Results header
//! compared whole.
//!
//! Scenarios (the hub has spf, dkim and dmarc on, authserv-id `mx.test`,
//! and trusts 127.0.0.5 only):
//! 1. SPF pass from 127.0.0.3 for `good.test` (`ip4:127.0.0.3 -all`);
//!    the HELO identity passes too; no signature: `dkim=none`; DMARC
//!    passes on the aligned SPF result (`p=none`); an Authentication-Results
//!    field the client wrote with the hub's authserv-id is removed.
//! 2. SPF fail from 127.0.0.4 for `good.test`: 550 5.7.23 at MAIL.
//! 3. SPF softfail (`~all`): accepted, `spf=softfail`.
//! 4. No SPF record: accepted, `spf=none`.
//! 5. A domain whose servers never answer: 451 4.7.24 at MAIL (RFC 7372:
//!    a temporary error is deferred, not let through unchecked).
//! 6. A message signed in the test with mail-auth (Ed25519, key in DNS):
//!    `dkim=pass`, `dmarc=pass`; its body tampered with: `dkim=neutral
//!    (body hash did not verify)` (mail-auth's word); a signed header
//!    changed: `dkim=fail`.
//! 7. A forged `From:` of a `p=reject` domain: 550 5.7.1 at the end of
//!    DATA; of a `p=quarantine` domain: accepted onto hold (mailq `!`).
//! 8. A trusted client is never checked: SPF fail passes, no header.
//! 9. Off by default: no header on a hub without `[verify]`.
//! 10. With both actions `tag`: SPF fail, SPF temperror and a forged
//!     `p=reject` From: are all accepted, and the header says so.
//! 11. ARC (`verify.arc`): a message sealed in the test with mail-auth's
//!     `ArcSealer` as a mailing list at `list.test` would (Ed25519, key in
//!     DNS) gets `arc=pass`; its body or a signed header changed after
//!     the seal `arc=fail`; a message without ARC headers `arc=none`.
//! 12. `queue show` of a message put on hold by DMARC prints the results
//!     (and `--json` carries them as `auth_results`, `postcat -e -q` as
//!     `named_attribute: posthorn_auth_results=`, `exim -Mvh` as
//!     `-posthorn_auth_results`).
//! 13. `verify.arc_trusted_sealers = ["list.test"]`: a forged `p=reject`
//!     From: sealed by list.test with a passing chain is accepted
//!     (`dmarc.override=arc` in the log); its tampered copy is refused; on
//!     a hub without the key the sealed one is refused too.

mod harness;

use harness::dns::{DnsRecord, DnsServer};
use harness::*;
use mail_auth::arc::ArcSealer;
use mail_auth::common::crypto::Ed25519Key;
use mail_auth::common::headers::HeaderWriter;
use mail_auth::dkim::DkimSigner;
use mail_auth::{ArcOutput, AuthenticatedMessage, AuthenticationResults};
use std::net::SocketAddr;
use std::process::Command;

/// One SMTP dialogue from `job["source"]`: EHLO, MAIL, RCPT and, when
/// both were taken, DATA and the message. Prints the replies as JSON.
const DIALOGUE: &str = r#"
import json, smtplib, sys
job = json.load(sys.stdin)
out = []
s = smtplib.SMTP(timeout=60, source_address=(job["source"], 0))
s.connect(job["host"], job["port"])
out.append("%d %s" % s.ehlo(job["helo"]))
def go():
    for cmd in ["MAIL FROM:<%s>" % job["sender"], "RCPT TO:<%s>" % job["rcpt"]]:
        code, text = s.docmd(cmd)
        out.append("%d %s" % (code, text.decode()))
        if code != 250:
            return
    code, text = s.data(job["message"].encode())
    out.append("%d %s" % (code, text.decode()))
go()
s.quit()
print(json.dumps(out))
"#;

/// The replies to EHLO, MAIL, RCPT and the end of DATA (as far as the
/// dialogue went).
fn dialogue(addr: SocketAddr, source: &str, sender: &str, rcpt: &str, message: &str) -> Vec<String> {
    let job = serde_json::json!({
        "host": addr.ip().to_string(), "port": addr.port(), "source": source,
        "helo": "client.test", "sender": sender, "rcpt": rcpt, "message": message,
    });
    let mut cmd = Command::new("python3");
    cmd.arg("-c").arg(DIALOGUE);
    let out = run_with_timeout(cmd, job.to_string().as_bytes(), secs(90));
    assert!(out.status.success(), "python3: {}", String::from_utf8_lossy(&out.stderr));
    serde_json::from_slice(&out.stdout).expect("the dialogue's JSON")
}

/// The zone: SPF for good.test, soft.test, bank.test and shop.test (all
/// allowing 127.0.0.3 only), client.test (the HELO name, all of
/// 127.0.0.0/24), DMARC for bank.test (reject) and shop.test
/// (quarantine), the DKIM key of good.test, and slow.test never answered.
fn zone(dkim_key: &str) -> DnsServer {
    DnsServer::start(records(dkim_key))
}

fn records(dkim_key: &str) -> Vec<DnsRecord> {
    vec![
        DnsRecord::txt("good.test", "v=spf1 ip4:127.0.0.3 -all"),
        DnsRecord::txt("soft.test", "v=spf1 ip4:127.0.0.3 ~all"),
        DnsRecord::txt("bank.test", "v=spf1 ip4:127.0.0.3 -all"),
        DnsRecord::txt("shop.test", "v=spf1 ip4:127.0.0.3 -all"),
        DnsRecord::txt("client.test", "v=spf1 ip4:127.0.0.0/24 -all"),
        DnsRecord::txt("_dmarc.good.test", "v=DMARC1; p=none"),
        DnsRecord::txt("_dmarc.bank.test", "v=DMARC1; p=reject"),
        DnsRecord::txt("_dmarc.shop.test", "v=DMARC1; p=quarantine"),
        DnsRecord::txt("s1._domainkey.good.test", &format!("v=DKIM1; k=ed25519; p={dkim_key}")),
        DnsRecord::silent("slow.test"),
        DnsRecord::silent("_dmarc.slow.test"),
    ]
}

/// A hub on 127.0.0.1 trusting 127.0.0.5, delivering example.org to
/// Maildirs in the directory returned with it.
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

const VERIFY: [&str; 4] =
    ["verify.spf = true", "verify.dkim = true", "verify.dmarc = true", "verify.authserv_id = \"mx.test\""];

/// The one message delivered to `user@example.org`.
fn delivered(ph: &Posthorn, mail: &tempfile::TempDir, user: &str) -> Vec<u8> {
    let new = mail.path().join(format!("example.org/{user}/new"));
    let files =
        || std::fs::read_dir(&new).map(|d| d.flatten().map(|e| e.path()).collect::<Vec<_>>()).unwrap_or_default();
    assert!(wait_until(secs(20), || files().len() == 1), "nothing for {user}\n{}", ph.log());
    std::fs::read(&files()[0]).unwrap()
}

/// The Authentication-Results header of a message, unfolded.
fn auth_results(message: &[u8]) -> String {
    header(message, "Authentication-Results")
        .unwrap_or_else(|| panic!("no Authentication-Results:\n{}", String::from_utf8_lossy(message)))
}

fn message(from: &str, subject: &str) -> String {
    format!(
        "From: {from}\r\nTo: u@example.org\r\nSubject: {subject}\r\nDate: Sun, 06 Dec 2026 03:00:00 +0000\r\nMessage-ID: <{subject}@test>\r\n\r\nhello\r\n"
    )
}

/// SPF pass for both identities, by 127.0.0.3 for `sender`, in the
/// header's words.
fn spf_pass(sender: &str) -> String {
    format!(
        "spf=pass (mx.test: domain of {sender} designates 127.0.0.3 as permitted sender) smtp.mailfrom={sender}; \
         spf=pass (mx.test: domain of postmaster@client.test designates 127.0.0.3 as permitted sender) smtp.helo=client.test"
    )
}

/// A new Ed25519 key: the key and its `p=` value.
fn dkim_key() -> (Ed25519Key, String) {
    let der = Ed25519Key::generate_pkcs8().unwrap();
    let key = Ed25519Key::from_pkcs8_der(&der).unwrap();
    let public = data_encoding::BASE64.encode(&key.public_key());
    (key, public)
}

/// `text` with a DKIM-Signature of good.test (selector s1) on top.
fn signed(key: Ed25519Key, text: &str) -> String {
    let signer = DkimSigner::from_key(key).domain("good.test").selector("s1").headers(["From", "To", "Subject"]);
    let signature = signer.sign(text.as_bytes()).unwrap();
    format!("{}{text}", signature.to_header())
}

/// `header.b=` of the A-R header: the first 8 base64 characters of `b=`.
fn b_prefix(message: &[u8]) -> String {
    let sig = header(message, "DKIM-Signature").unwrap();
    let b = sig.split(';').map(str::trim).find_map(|t| t.strip_prefix("b=")).unwrap();
    b.chars().filter(|c| !c.is_whitespace()).take(8).collect()
}

#[test]
fn spf_results_and_refusals() {
    let (_key, public) = dkim_key();
    let dns = zone(&public);
    let (ph, mail) = hub(&dns, &VERIFY);
    let addr = ph.smtp_addr();

    // A field claiming to be the hub's own results is removed.
    let forged =
        format!("Authentication-Results: mx.test; dkim=pass header.d=bank.test\r\n{}", message("a@good.test", "pass"));
    let pass = dialogue(addr, "127.0.0.3", "a@good.test", "pass@example.org", &forged);
    assert!(pass[3].starts_with("250 2.0.0 Ok: queued"), "{pass:?}\n{}", ph.log());
    let msg = delivered(&ph, &mail, "pass");
    assert_eq!(headers(&msg, "Authentication-Results").len(), 1, "{}", String::from_utf8_lossy(&msg));
    assert_eq!(
        auth_results(&msg),
        format!("mx.test; {}; dkim=none; dmarc=pass header.from=good.test policy.dmarc=none", spf_pass("a@good.test"))
    );
    assert!(
        ph.wait_for_log(
            "verify: spf=pass (good.test) spf.helo=pass (client.test) dkim=none dmarc=pass (good.test)",
            secs(5)
        ),
        "{}",
        ph.log()
    );

    let fail = dialogue(addr, "127.0.0.4", "a@good.test", "fail@example.org", &message("a@good.test", "fail"));
    assert_eq!(
        fail[1], "550 5.7.23 SPF validation failed: good.test does not designate 127.0.0.4 as permitted sender",
        "{fail:?}"
    );
    assert!(ph.wait_for_log("NOQUEUE: reject: MAIL from unknown[127.0.0.4]: 550 5.7.23", secs(5)), "{}", ph.log());

    let soft = dialogue(addr, "127.0.0.4", "a@soft.test", "soft@example.org", &message("a@soft.test", "soft"));
    assert!(soft[3].starts_with("250 "), "{soft:?}");
    assert_eq!(
        auth_results(&delivered(&ph, &mail, "soft")),
        "mx.test; spf=softfail (mx.test: domain of a@soft.test reports soft fail for 127.0.0.4) smtp.mailfrom=a@soft.test; \
         spf=pass (mx.test: domain of postmaster@client.test designates 127.0.0.4 as permitted sender) smtp.helo=client.test; \
         dkim=none; dmarc=none header.from=soft.test policy.dmarc=none"
    );

    let none = dialogue(addr, "127.0.0.4", "a@none.test", "none@example.org", &message("a@none.test", "none"));
    assert!(none[3].starts_with("250 "), "{none:?}");
    assert_eq!(
        auth_results(&delivered(&ph, &mail, "none")),
        "mx.test; spf=none (mx.test: no SPF records found for a@none.test) smtp.mailfrom=a@none.test; \
         spf=pass (mx.test: domain of postmaster@client.test designates 127.0.0.4 as permitted sender) smtp.helo=client.test; \
         dkim=none; dmarc=none header.from=none.test policy.dmarc=none"
    );

    let slow = dialogue(addr, "127.0.0.4", "a@slow.test", "slow@example.org", &message("a@slow.test", "slow"));
    assert_eq!(slow[1], "451 4.7.24 SPF validation error: temporary DNS failure for slow.test", "{slow:?}");
}

#[test]
fn dkim_pass_and_fail_and_dmarc() {
    let (key, public) = dkim_key();
    let dns = zone(&public);
    let (ph, mail) = hub(&dns, &VERIFY);
    let addr = ph.smtp_addr();

    let text = signed(key, &message("a@good.test", "signed"));
    let got = dialogue(addr, "127.0.0.3", "a@good.test", "signed@example.org", &text);
    assert!(got[3].starts_with("250 "), "{got:?}\n{}", ph.log());
    let msg = delivered(&ph, &mail, "signed");
    assert_eq!(
        auth_results(&msg),
        format!(
            "mx.test; {}; dkim=pass header.d=good.test header.s=s1 header.b={}; dmarc=pass header.from=good.test policy.dmarc=none",
            spf_pass("a@good.test"),
            b_prefix(&msg)
        )
    );

    // mail-auth reports a body that no longer matches its hash as
    // neutral (RFC 6376 3.9 names it a PERMFAIL); a signed header changed
    // is a failed signature.
    for (user, tampered, result) in [
        ("body", text.replace("hello", "hullo"), "neutral (body hash did not verify)"),
        ("header", text.replace("Subject: signed", "Subject: changed"), "fail (verification failed)"),
    ] {
        let got = dialogue(addr, "127.0.0.3", "a@good.test", &format!("{user}@example.org"), &tampered);
        assert!(got[3].starts_with("250 "), "{got:?}");
        let msg = delivered(&ph, &mail, user);
        assert_eq!(
            auth_results(&msg),
            format!(
                "mx.test; {}; dkim={result} header.d=good.test header.s=s1 header.b={}; dmarc=pass header.from=good.test policy.dmarc=none",
                spf_pass("a@good.test"),
                b_prefix(&msg)
            )
        );
    }
    assert!(ph.wait_for_log("dkim=fail (good.test) dmarc=pass (good.test)", secs(5)), "{}", ph.log());

    // SPF passes for good.test, but the author is bank.test: not aligned.
    let forged = dialogue(addr, "127.0.0.3", "a@good.test", "forged@example.org", &message("ceo@bank.test", "forged"));
    assert_eq!(forged[3], "550 5.7.1 Message rejected: DMARC policy of bank.test is reject", "{forged:?}");
    assert!(ph.wait_for_log("reject: END-OF-MESSAGE from unknown[127.0.0.3]: 550 5.7.1", secs(5)), "{}", ph.log());

    let held = dialogue(addr, "127.0.0.3", "a@good.test", "held@example.org", &message("sales@shop.test", "held"));
    assert!(held[3].starts_with("250 2.0.0 Ok: queued as "), "{held:?}");
    let id = held[3].rsplit(' ').next().unwrap().to_string();
    assert!(wait_until(secs(10), || ph.spool_files("hold").len() == 1), "{}", ph.log());
    let mailq = ph.command(&["queue", "list"], b"");
    let listing = String::from_utf8_lossy(&mailq.stdout);
    assert!(listing.contains(&format!("{id}!")), "{listing}");
    assert!(ph.wait_for_log(
        &format!("{id}: hold: END-OF-MESSAGE from unknown[127.0.0.3]: DMARC policy of shop.test"),
        secs(5)
    ));
}

#[test]
fn trusted_clients_are_never_checked_and_verify_is_off_by_default() {
    let (_key, public) = dkim_key();
    let dns = zone(&public);
    let (ph, mail) = hub(&dns, &VERIFY);
    let got = dialogue(ph.smtp_addr(), "127.0.0.5", "a@good.test", "trusted@example.org", &message("a@good.test", "t"));
    assert!(got[3].starts_with("250 "), "{got:?}");
    let msg = delivered(&ph, &mail, "trusted");
    assert_eq!(header(&msg, "Authentication-Results"), None);
    assert_eq!(count_lines(&ph.log(), &["verify:"]), 0, "{}", ph.log());

    let (plain, mail) = hub(&dns, &[]);
    let got = dialogue(plain.smtp_addr(), "127.0.0.4", "a@good.test", "off@example.org", &message("a@good.test", "o"));
    assert!(got[3].starts_with("250 "), "{got:?}");
    assert_eq!(header(&delivered(&plain, &mail, "off"), "Authentication-Results"), None);
}

#[test]
fn tag_actions_only_record() {
    let (_key, public) = dkim_key();
    let dns = zone(&public);
    let mut lines = VERIFY.to_vec();
    lines.extend(["verify.spf_fail_action = \"tag\"", "verify.dmarc_reject_action = \"tag\""]);
    let (ph, mail) = hub(&dns, &lines);
    let addr = ph.smtp_addr();

    let fail = dialogue(addr, "127.0.0.4", "a@good.test", "fail@example.org", &message("a@good.test", "fail"));
    assert!(fail[3].starts_with("250 "), "{fail:?}\n{}", ph.log());
    assert_eq!(
        auth_results(&delivered(&ph, &mail, "fail")),
        "mx.test; spf=fail (mx.test: domain of a@good.test does not designate 127.0.0.4 as permitted sender) smtp.mailfrom=a@good.test; \
         spf=pass (mx.test: domain of postmaster@client.test designates 127.0.0.4 as permitted sender) smtp.helo=client.test; \
         dkim=none; dmarc=fail (policy not aligned) header.from=good.test policy.dmarc=none"
    );

    let slow = dialogue(addr, "127.0.0.4", "a@slow.test", "slow@example.org", &message("a@good.test", "slow"));
    assert!(slow[3].starts_with("250 "), "{slow:?}\n{}", ph.log());
    assert_eq!(
        auth_results(&delivered(&ph, &mail, "slow")),
        "mx.test; spf=temperror (mx.test: temporary dns error validating a@slow.test) smtp.mailfrom=a@slow.test; \
         spf=pass (mx.test: domain of postmaster@client.test designates 127.0.0.4 as permitted sender) smtp.helo=client.test; \
         dkim=none; dmarc=fail (policy not aligned) header.from=good.test policy.dmarc=none"
    );

    let forged = dialogue(addr, "127.0.0.3", "a@good.test", "forged@example.org", &message("ceo@bank.test", "forged"));
    assert!(forged[3].starts_with("250 "), "{forged:?}");
    assert_eq!(
        auth_results(&delivered(&ph, &mail, "forged")),
        format!(
            "mx.test; {}; dkim=none; dmarc=fail (policy not aligned) header.from=bank.test policy.dmarc=reject",
            spf_pass("a@good.test")
        )
    );
    assert!(ph.spool_files("hold").is_empty());
}

/// `text` with the ARC set (RFC 8617) of a mailing list at `list.test`
/// (selector `arc`) on top, as the first hop of its chain: the list's own
/// Authentication-Results, its message signature and its seal.
fn sealed(key: Ed25519Key, text: &str) -> String {
    let message = AuthenticatedMessage::parse(text.as_bytes()).unwrap();
    let results = AuthenticationResults::new("lists.list.test").with_spf_mailfrom_result(
        &mail_auth::SpfOutput::default(),
        "127.0.0.9".parse().unwrap(),
        "a@good.test",
        "client.test",
    );
    let sealer = ArcSealer::from_key(key).domain("list.test").selector("arc").headers(["From", "To", "Subject"]);
    let set = sealer.seal(&message, &results, &ArcOutput::default()).unwrap();
    format!("{}{text}", set.to_header())
}

/// The hub with every check on, ARC too; the zone also holds the seal key
/// of list.test.
fn arc_hub(extra: &[&str]) -> (Posthorn, tempfile::TempDir, DnsServer, Ed25519Key) {
    let (_key, public) = dkim_key();
    let (seal_key, seal_public) = dkim_key();
    let mut zone = records(&public);
    zone.push(DnsRecord::txt("arc._domainkey.list.test", &format!("v=DKIM1; k=ed25519; p={seal_public}")));
    let dns = DnsServer::start(zone);
    let mut lines = VERIFY.to_vec();
    lines.push("verify.arc = true");
    lines.extend(extra);
    let (ph, mail) = hub(&dns, &lines);
    (ph, mail, dns, seal_key)
}

#[test]
fn arc_pass_fail_and_none() {
    let (ph, mail, _dns, seal_key) = arc_hub(&[]);
    let addr = ph.smtp_addr();
    let text = sealed(seal_key, &message("a@good.test", "listed"));
    let base =
        format!("mx.test; {}; dkim=none; dmarc=pass header.from=good.test policy.dmarc=none", spf_pass("a@good.test"));

    let got = dialogue(addr, "127.0.0.3", "a@good.test", "sealed@example.org", &text);
    assert!(got[3].starts_with("250 "), "{got:?}\n{}", ph.log());
    assert_eq!(auth_results(&delivered(&ph, &mail, "sealed")), format!("{base}; arc=pass smtp.remote-ip=127.0.0.3"));
    assert!(ph.wait_for_log("dkim=none dmarc=pass (good.test) arc=pass (list.test) client=", secs(5)), "{}", ph.log());

    // The body changed after the seal, or a header the list signed.
    for (user, tampered, reason) in [
        ("body", text.replace("hello", "hullo"), "body hash did not verify"),
        ("header", text.replace("Subject: listed", "Subject: changed"), "verification failed"),
    ] {
        let got = dialogue(addr, "127.0.0.3", "a@good.test", &format!("{user}@example.org"), &tampered);
        assert!(got[3].starts_with("250 "), "{got:?}");
        assert_eq!(
            auth_results(&delivered(&ph, &mail, user)),
            format!("{base}; arc=fail ({reason}) smtp.remote-ip=127.0.0.3")
        );
    }
    assert!(ph.wait_for_log("arc=fail (list.test)", secs(5)), "{}", ph.log());

    let got = dialogue(addr, "127.0.0.3", "a@good.test", "plain@example.org", &message("a@good.test", "plain"));
    assert!(got[3].starts_with("250 "), "{got:?}");
    assert_eq!(auth_results(&delivered(&ph, &mail, "plain")), format!("{base}; arc=none smtp.remote-ip=127.0.0.3"));
}

/// `verify.arc_trusted_sealers`: a list's passing chain lets a DMARC
/// `p=reject` failure in (the list rewrote nothing here, but the author's
/// domain is not the envelope's: not aligned, as after a list's changes);
/// a broken chain does not, nor does a hub without the key.
#[test]
fn trusted_sealers_override_a_dmarc_reject() {
    let forged = message("ceo@bank.test", "listed");
    for (trusted, user) in [(None, "untrusted"), (Some("\"list.test\""), "trusted")] {
        let extra = trusted.map(|t| format!("verify.arc_trusted_sealers = [{t}]"));
        let extra: Vec<&str> = extra.iter().map(String::as_str).collect();
        let (ph, mail, _dns, seal_key) = arc_hub(&extra);
        let addr = ph.smtp_addr();
        let text = sealed(seal_key, &forged);

        let got = dialogue(addr, "127.0.0.3", "a@good.test", &format!("{user}@example.org"), &text);
        if trusted.is_none() {
            assert_eq!(got[3], "550 5.7.1 Message rejected: DMARC policy of bank.test is reject", "{got:?}");
            continue;
        }
        assert!(got[3].starts_with("250 "), "{got:?}\n{}", ph.log());
        assert_eq!(
            auth_results(&delivered(&ph, &mail, user)),
            format!(
                "mx.test; {}; dkim=none; dmarc=fail (policy not aligned) header.from=bank.test policy.dmarc=reject; \
                 arc=pass smtp.remote-ip=127.0.0.3",
                spf_pass("a@good.test")
            )
        );
        assert!(
            ph.wait_for_log("dmarc=fail (bank.test) arc=pass (list.test) dmarc.override=arc (list.test)", secs(5)),
            "{}",
            ph.log()
        );

        let tampered = text.replace("hello", "hullo");
        let got = dialogue(addr, "127.0.0.3", "a@good.test", "tampered@example.org", &tampered);
        assert_eq!(got[3], "550 5.7.1 Message rejected: DMARC policy of bank.test is reject", "{got:?}");
    }
}

#[test]
fn queue_show_prints_the_results_of_a_held_message() {
    let (ph, _mail, _dns, _seal_key) = arc_hub(&[]);
    let held =
        dialogue(ph.smtp_addr(), "127.0.0.3", "a@good.test", "held@example.org", &message("sales@shop.test", "held"));
    assert!(held[3].starts_with("250 2.0.0 Ok: queued as "), "{held:?}\n{}", ph.log());
    let id = held[3].rsplit(' ').next().unwrap().to_string();
    assert!(wait_until(secs(10), || ph.spool_files("hold").len() == 1), "{}", ph.log());
    let results = "spf=pass (good.test) spf.helo=pass (client.test) dkim=none dmarc=fail (shop.test) arc=none";

    let show = ph.command(&["queue", "show", &id], b"");
    let text = String::from_utf8_lossy(&show.stdout);
    assert!(show.status.success(), "{text}{}", String::from_utf8_lossy(&show.stderr));
    assert!(text.contains(&format!("\n  verify: {results}\n")), "{text}");

    let json = ph.command(&["queue", "show", "--json", &id], b"");
    let v: serde_json::Value = serde_json::from_slice(&json.stdout).expect("queue show --json");
    assert_eq!(v["auth_results"], results, "{v}");
    assert_eq!(v["state"], "hold");

    let postcat = ph.run_as("postcat", &["-e", "-q", &id], b"");
    let text = String::from_utf8_lossy(&postcat.stdout);
    assert!(text.contains(&format!("\nnamed_attribute: posthorn_auth_results={results}\n")), "{text}");

    let exim = ph.run_as("exim", &["-Mvh", &id], b"");
    let text = String::from_utf8_lossy(&exim.stdout);
    assert!(text.contains(&format!("\n-posthorn_auth_results {results}\n")), "{text}");
}
