//! Interop with real Postfix as the SMTP peer: private Postfix instances
//! (tests/harness/postfix.rs) on loopback, as the client that relays into a
//! posthorn hub and as the smarthost a posthorn satellite relays through.
//! What arrived is read back from the hub's Maildirs or the harness's sink;
//! both sides' logs confirm it.
//!
//! 1. Postfix (`sendmail -N success,failure`, three recipients, one through
//!    a virtual alias so its ORCPT differs, an 8-bit body with a dot line)
//!    -> posthorn hub -> Maildir: byte-exact body, the Received chain with
//!    both queue ids, Postfix pipelined MAIL/RCPT/DATA with the DSN
//!    parameters and logged `status=sent`; posthorn's success DSN names
//!    exactly the recipients that still asked for SUCCESS, with their ORCPT.
//! 2. The same over TLS: Postfix with `smtp_tls_security_level = encrypt`
//!    verifies posthorn's certificate against the test CA; posthorn logs
//!    TLS and writes `with ESMTPS`. Towards a hub without a certificate
//!    Postfix refuses to send at all.
//! 3. posthorn satellite -> Postfix smtpd (smarthost) -> sink: Postfix
//!    rejects one recipient at RCPT with 550; the others are delivered
//!    once, the rejected one bounces back to the sender with Postfix's reply.
//! 4. Postfix answers 450 (DEFER_IF_PERMIT) at RCPT: the satellite defers,
//!    `posthorn queue why` shows Postfix's reply, nothing is bounced; once
//!    Postfix accepts again, the retry delivers it.
//!
//! A private Postfix needs root: not root, each test prints a line and
//! returns. A missing /usr/sbin/postfix fails them.

mod harness;

use std::fs;
use std::path::{Path, PathBuf};

use harness::postfix::*;
use harness::*;

/// The local domain of the hubs below.
const HUB_DOMAIN: &str = "hub.example";

/// A hub on 127.0.0.1 delivering `hub.example` into Maildirs under `mail`,
/// with `extra` appended (a `[tls]` section).
fn hub(mail: &Path, extra: &str) -> Posthorn {
    Posthorn::start(&format!(
        "role = \"hub\"\n[smtp]\nlisten = [\"127.0.0.1:0\"]\n[access]\ntrusted_networks = []\nlocal_domains = [\"{HUB_DOMAIN}\"]\n[deliver]\nmaildir_root = {}\n[queue]\nretry_min = \"1s\"\nretry_max = \"2s\"\n{extra}",
        toml_str(&format!("{}/{{domain}}/{{user}}", mail.display()))
    ))
}

/// The messages in the Maildir of `user@hub.example`, oldest name first.
fn maildir(mail: &Path, user: &str) -> Vec<Vec<u8>> {
    let new = mail.join(HUB_DOMAIN).join(user).join("new");
    let mut names: Vec<PathBuf> =
        fs::read_dir(&new).map(|d| d.flatten().map(|e| e.path()).collect()).unwrap_or_default();
    names.sort();
    names.iter().map(|p| fs::read(p).unwrap()).collect()
}

/// Waits until a message containing `needle` is in `user`'s Maildir.
fn wait_maildir_with(mail: &Path, user: &str, needle: &str) -> Vec<u8> {
    let found = |m: &Vec<u8>| String::from_utf8_lossy(m).contains(needle);
    wait_until(secs(20), || maildir(mail, user).iter().any(found));
    maildir(mail, user)
        .into_iter()
        .find(found)
        .unwrap_or_else(|| panic!("no message with {needle:?} in the Maildir of {user}@{HUB_DOMAIN}"))
}

/// `relayhost` value for a posthorn listener (brackets: no MX lookup).
fn relayhost(ph: &Posthorn) -> String {
    format!("[{}]:{}", ph.smtp_addr().ip(), ph.smtp_addr().port())
}

/// `(Postfix queue id, posthorn queue id)` from Postfix's `status=sent`
/// line for `rcpt`: `ID: to=<rcpt>, ... status=sent (250 ... queued as ID2)`.
fn sent_ids(pf: &Postfix, rcpt: &str) -> (String, String) {
    let to = format!("to=<{rcpt}>");
    let line = pf.log_lines(&[&to, "status=sent"]).pop().unwrap_or_else(|| panic!("no {to} status=sent"));
    let pf_id = queue_id_of(&line).unwrap_or_else(|| panic!("no queue id in {line:?}"));
    let ph_id = line
        .rsplit_once("queued as ")
        .map(|(_, rest)| rest.trim_end_matches(')').trim().to_string())
        .unwrap_or_else(|| panic!("no `queued as` in {line:?}"));
    (pf_id, ph_id)
}

/// The body Postfix relays in tests 1 and 2: UTF-8, one raw Latin-1 byte,
/// and a line starting with a dot (stuffed and unstuffed on both hops).
const BODY_8BIT: &[u8] =
    b"Gr\xc3\xbc\xc3\x9fe aus K\xc3\xb6ln, \xe2\x82\xac 5\n.a line starting with a dot\nLatin-1: caf\xe9\n";

fn message_8bit(subject: &str) -> Vec<u8> {
    let mut m = format!(
        "From: sender@{HUB_DOMAIN}\nTo: team@interop.test\nSubject: {subject}\nMIME-Version: 1.0\nContent-Type: text/plain; charset=utf-8\nContent-Transfer-Encoding: 8bit\n\n"
    )
    .into_bytes();
    m.extend_from_slice(BODY_8BIT);
    m
}

/// Postfix's debug dialogue with `peer` (lines `> peer: CMD` and
/// `< peer: REPLY`) in the session that sent `MAIL FROM:<from>`, from its
/// MAIL command to the end of DATA; panics when there is none. Only that
/// `smtp[PID]` process's lines count: another may talk to the same peer.
fn dialogue_after_mail(pf: &Postfix, peer: &str, from: &str) -> Vec<String> {
    let sent = format!("> {peer}: ");
    let got = format!("< {peer}: ");
    let log = pf.log();
    let mail = format!("{sent}MAIL FROM:<{from}>");
    let first = log
        .lines()
        .find(|l| l.contains(&mail))
        .unwrap_or_else(|| panic!("no `{mail}` in Postfix's debug log (debug_peer_list); maillog:\n{log}"));
    // `... postfix-NAME/smtp[1234]: > peer: MAIL FROM:<...>`
    let process = first.split_whitespace().find(|w| w.contains("/smtp[")).expect("no smtp[PID] in the line");
    let lines: Vec<String> = log
        .lines()
        .filter(|l| l.contains(process) && (l.contains(&sent) || l.contains(&got)))
        .map(str::to_string)
        .collect();
    let start = lines.iter().position(|l| l.contains(&mail)).unwrap();
    let end = lines[start..].iter().position(|l| l.contains(&format!("{sent}."))).map_or(lines.len(), |n| start + n);
    lines[start..end].to_vec()
}

#[test]
fn postfix_relays_into_the_hub_with_dsn_8bit_and_pipelining() {
    if !postfix_usable("postfix_relays_into_the_hub_with_dsn_8bit_and_pipelining") {
        return;
    }
    let mail = tempfile::tempdir().unwrap();
    let hub = hub(mail.path(), "");
    let peer = format!("{0}[{0}]:{1}", hub.smtp_addr().ip(), hub.smtp_addr().port());
    let pf = Postfix::start(&[
        ("relayhost", &relayhost(&hub)),
        // One alias: Postfix passes ORCPT=rfc822;team@interop.test for alice,
        // reports the expansion itself and asks only NOTIFY=FAILURE further.
        ("virtual_alias_maps", "inline:{ team@interop.test=alice@hub.example }"),
        // Logs the whole SMTP dialogue with the hub.
        ("debug_peer_list", &hub.smtp_addr().ip().to_string()),
    ]);
    let sender = format!("sender@{HUB_DOMAIN}");
    let rcpts = ["team@interop.test", "bob@hub.example", "carol@hub.example"];
    let mut args = vec!["-N", "success,failure", "-f", &sender];
    args.extend_from_slice(&rcpts);
    let out = pf.sendmail(&args, &message_8bit("interop caf\u{e9} \u{2709}"));
    assert!(out.status.success(), "Postfix sendmail: {out:?}");

    // Postfix: all three sent to the hub in one transaction.
    for rcpt in ["alice@hub.example", "bob@hub.example", "carol@hub.example"] {
        let to = format!("to=<{rcpt}>");
        assert!(pf.wait_for_log(&[&to, "status=sent", &peer], secs(20)), "Postfix never sent {to}:\n{}", pf.log());
    }
    let (pf_id, ph_id) = sent_ids(&pf, "alice@hub.example");
    assert_eq!(sent_ids(&pf, "carol@hub.example"), (pf_id.clone(), ph_id.clone()), "one transaction");
    assert_eq!(pf.log_lines(&["to=<alice@hub.example>", "orig_to=<team@interop.test>", "dsn=2.0.0"]).len(), 1);

    // Postfix pipelined: MAIL, the RCPTs (with DSN parameters) and DATA
    // went out before it read the first reply.
    assert!(!pf.log_lines(&["Using ESMTP PIPELINING"]).is_empty(), "{}", pf.log());
    let dialogue = dialogue_after_mail(&pf, &peer, &sender);
    let first_reply = dialogue.iter().position(|l| l.contains("< ")).expect("no reply in the dialogue");
    let batch: Vec<&String> = dialogue[..first_reply].iter().collect();
    let commands: Vec<String> =
        batch.iter().map(|l| l.split_once(&format!("{peer}: ")).unwrap().1.to_string()).collect();
    assert_eq!(commands.len(), 5, "MAIL + 3 RCPT + DATA in one batch: {dialogue:#?}");
    assert!(commands[0].contains("BODY=8BITMIME"), "{}", commands[0]);
    assert_eq!(commands[1], "RCPT TO:<alice@hub.example> ORCPT=rfc822;team@interop.test NOTIFY=FAILURE");
    assert_eq!(commands[2], "RCPT TO:<bob@hub.example> ORCPT=rfc822;bob@hub.example NOTIFY=SUCCESS,FAILURE");
    assert_eq!(commands[3], "RCPT TO:<carol@hub.example> ORCPT=rfc822;carol@hub.example NOTIFY=SUCCESS,FAILURE");
    assert_eq!(commands[4], "DATA");
    let replies: Vec<&String> = dialogue[first_reply..].iter().collect();
    assert!(replies.iter().take(5).all(|l| l.contains(": 250 ") || l.contains(": 354 ")), "{replies:#?}");

    // posthorn: one message, three recipients, each in its Maildir intact.
    assert!(hub.wait_for_log(&format!("{ph_id}: client="), secs(5)), "{}", hub.log());
    assert!(hub.wait_for_log(&format!("{ph_id}: from="), secs(5)), "{}", hub.log());
    assert!(hub.log_lines(&[&format!("{ph_id}: from=")])[0].contains("nrcpt=3"), "{}", hub.log());
    for user in ["alice", "bob", "carol"] {
        let got = wait_maildir_with(mail.path(), user, &ph_id);
        assert_eq!(body(&got), BODY_8BIT, "{user}: body changed:\n{}", String::from_utf8_lossy(&got));
        assert_eq!(header(&got, "Subject").as_deref(), Some("interop caf\u{e9} \u{2709}"));
        let received = headers(&got, "Received");
        assert_eq!(received.len(), 2, "{received:#?}");
        assert!(
            received[0].contains(&format!("from {}", pf.hostname()))
                && received[0].contains(&format!("by {} (posthorn)", hub.hostname()))
                && received[0].contains(&format!("id {ph_id}")),
            "posthorn's Received: {}",
            received[0]
        );
        assert!(
            received[1].contains(&format!("by {} (Postfix", pf.hostname())) && received[1].contains(&pf_id),
            "Postfix's Received: {}",
            received[1]
        );
    }
    // The Maildir files appear a moment before the attempt is logged.
    hub.wait_for_log_count(&[&format!("{ph_id}: to=<"), "status=sent"], 3, secs(10));
    for rcpt in ["alice@hub.example", "bob@hub.example", "carol@hub.example"] {
        let line = format!("{ph_id}: to=<{rcpt}>");
        assert_eq!(hub.log_lines(&[&line, "status=sent"]).len(), 1, "{}", hub.log());
    }

    // NOTIFY as Postfix passed it on: posthorn's success report names bob
    // and carol, with the ORCPT it was given, and not alice (NOTIFY=FAILURE).
    let dsn = wait_maildir_with(mail.path(), "sender", &format!("X-Posthorn-Queue-ID: {ph_id}"));
    let text = String::from_utf8_lossy(&dsn);
    assert!(text.contains("Action: delivered"), "{text}");
    for rcpt in ["bob@hub.example", "carol@hub.example"] {
        assert!(text.contains(&format!("Final-Recipient: rfc822; {rcpt}")), "{rcpt} missing:\n{text}");
        assert!(text.contains(&format!("Original-Recipient: rfc822; {rcpt}")), "{rcpt}'s ORCPT missing:\n{text}");
    }
    assert!(!text.contains("Final-Recipient: rfc822; alice@hub.example"), "{text}");
    // Postfix's own report of the alias expansion, relayed through the hub.
    let expanded = wait_maildir_with(mail.path(), "sender", "Action: expanded");
    assert!(String::from_utf8_lossy(&expanded).contains("Original-Recipient: rfc822;team@interop.test"));
    assert!(wait_until(secs(10), || pf.mailq().contains("Mail queue is empty")), "{}", pf.mailq());
}

#[test]
fn postfix_requires_tls_towards_the_hub() {
    if !postfix_usable("postfix_requires_tls_towards_the_hub") {
        return;
    }
    let ca = TestCa::new("posthorn interop CA");
    let cert = ca.issue("hub", &["hub.test", "127.0.0.1"]);
    let mail = tempfile::tempdir().unwrap();
    let tls_hub = hub(mail.path(), &cert.tls_section());
    // A second hub without a certificate, for a domain of its own.
    let plain_mail = tempfile::tempdir().unwrap();
    let plain_hub = hub(plain_mail.path(), "");
    let ca_pem = fs::read(ca.ca_path()).unwrap();
    let transport = format!("inline:{{ plain.example=smtp:{} }}", relayhost(&plain_hub));
    let pf = Postfix::start_with_files(
        &[
            ("relayhost", &relayhost(&tls_hub)),
            ("transport_maps", &transport),
            ("smtp_tls_security_level", "encrypt"),
            ("smtp_tls_CAfile", "$config_directory/ca.pem"),
            ("smtp_tls_loglevel", "1"),
        ],
        &[("ca.pem", &ca_pem)],
    );

    let out = pf.sendmail(&["-f", "sender@interop.test", "dana@hub.example"], &message_8bit("over TLS"));
    assert!(out.status.success(), "Postfix sendmail: {out:?}");
    let got = wait_maildir_with(mail.path(), "dana", "over TLS");
    assert_eq!(body(&got), BODY_8BIT);
    let (_, ph_id) = sent_ids(&pf, "dana@hub.example");
    let received = header(&got, "Received").unwrap();
    assert!(received.contains("with ESMTPS") && received.contains(&ph_id), "{received}");
    // Postfix verified the chain (the CA is its smtp_tls_CAfile) ...
    let peer = format!("{0}[{0}]:{1}", tls_hub.smtp_addr().ip(), tls_hub.smtp_addr().port());
    let established = pf.log_lines(&["TLS connection established to", &peer]);
    assert!(!established.is_empty(), "{}", pf.log());
    assert!(established[0].contains("Trusted TLS connection") && established[0].contains("TLSv1."), "{established:?}");
    // ... and posthorn saw the handshake.
    assert!(tls_hub.wait_for_log("TLS connection established from", secs(5)), "{}", tls_hub.log());

    // `encrypt` towards a hub that offers no STARTTLS: Postfix defers and
    // sends nothing.
    let out = pf.sendmail(&["-f", "sender@interop.test", "erin@plain.example"], b"Subject: never\n\nnever\n");
    assert!(out.status.success(), "Postfix sendmail: {out:?}");
    assert!(
        pf.wait_for_log(&["to=<erin@plain.example>", "status=deferred", "TLS is required"], secs(20)),
        "{}",
        pf.log()
    );
    assert!(!plain_hub.log().contains("mail="), "the plain hub got a MAIL command:\n{}", plain_hub.log());
    assert!(plain_hub.log().contains("connect from"), "Postfix never tried the plain hub:\n{}", plain_hub.log());
}

/// A satellite whose only smarthost is `pf`.
fn satellite_via(pf: &Postfix) -> Posthorn {
    Posthorn::start(&satellite_config(&[pf.addr()]))
}

#[test]
fn satellite_relays_through_postfix_which_rejects_one_recipient() {
    if !postfix_usable("satellite_relays_through_postfix_which_rejects_one_recipient") {
        return;
    }
    let sink = Sink::start();
    let pf = Postfix::start(&[
        ("relayhost", &format!("[{}]:{}", sink.addr().ip(), sink.addr().port())),
        (
            "smtpd_recipient_restrictions",
            "check_recipient_access inline:{ { refused@example.org = 550 5.1.1 no such user here } }, permit_mynetworks, reject",
        ),
    ]);
    let sat = satellite_via(&pf);
    let msg = message(&[("From", "cron@vm.test"), ("To", "ops@example.org"), ("Subject", "nightly")], "all done\n");
    let rcpts = ["ops@example.org", "refused@example.org", "dev@example.org"];
    smtplib_send(sat.smtp_addr(), "cron@vm.test", &rcpts, &msg).unwrap();

    // The two accepted recipients arrive once, through Postfix.
    let got = sink.wait_for_parsed(2, secs(20));
    let delivered: Vec<&Dumped> = got.iter().filter(|d| d.mail_from == "cron@vm.test").collect();
    assert_eq!(delivered.len(), 1, "{got:#?}");
    let d = delivered[0];
    let mut rcpt_to = d.rcpt_to.clone();
    rcpt_to.sort();
    assert_eq!(rcpt_to, ["dev@example.org", "ops@example.org"]);
    assert_eq!(d.body(), b"all done\n");
    let received = d.headers("Received");
    assert!(received[0].contains(&format!("by {} (Postfix)", pf.hostname())), "{received:#?}");
    assert!(received[1].contains(&format!("by {} (posthorn)", sat.hostname())), "{received:#?}");

    // The satellite: two sent (Postfix's queue id in the reply), one bounced
    // with Postfix's RCPT reply.
    let sent = sat.log_lines(&["to=<ops@example.org>", "status=sent"]);
    assert_eq!(sent.len(), 1, "{}", sat.log());
    let pf_id = sent[0].rsplit_once("queued as ").map(|(_, r)| r.trim_end_matches(')').trim().to_string()).unwrap();
    assert!(received[0].contains(&pf_id), "{received:#?}");
    assert!(sat.wait_for_log("to=<refused@example.org>", secs(5)));
    let bounced = sat.log_lines(&["to=<refused@example.org>"]);
    assert_eq!(bounced.len(), 1, "{}", sat.log());
    assert!(bounced[0].contains("status=bounced") && bounced[0].contains("550 5.1.1"), "{}", bounced[0]);
    assert!(bounced[0].contains("no such user here"), "{}", bounced[0]);

    // Postfix: the RCPT refused, the others relayed to the sink.
    assert_eq!(pf.log_lines(&["reject: RCPT", "<refused@example.org>", "550 5.1.1"]).len(), 1);
    assert!(pf.wait_for_log(&[&format!("{pf_id}: to=<dev@example.org>"), "status=sent"], secs(10)), "{}", pf.log());

    // The bounce goes the same way: satellite -> Postfix -> sink.
    let got = sink.wait_for_parsed(2, secs(20));
    let bounces: Vec<&Dumped> = got.iter().filter(|d| d.mail_from.is_empty()).collect();
    assert_eq!(bounces.len(), 1, "{got:#?}");
    assert_eq!(bounces[0].rcpt_to, ["cron@vm.test"]);
    let text = bounces[0].text();
    assert!(text.contains("Final-Recipient: rfc822; refused@example.org"), "{text}");
    assert!(text.contains("550 5.1.1") && !text.contains("Final-Recipient: rfc822; ops@"), "{text}");
    assert!(sat.wait_for_queued(0, secs(10)), "the satellite's queue is not empty");
}

#[test]
fn postfix_450_defers_and_queue_why_shows_its_reply() {
    if !postfix_usable("postfix_450_defers_and_queue_why_shows_its_reply") {
        return;
    }
    let sink = Sink::start();
    let mut pf = Postfix::start(&[
        ("relayhost", &format!("[{}]:{}", sink.addr().ip(), sink.addr().port())),
        (
            "smtpd_recipient_restrictions",
            "check_recipient_access inline:{ { later@example.org = DEFER_IF_PERMIT mailbox busy } }, permit_mynetworks, reject",
        ),
    ]);
    // The default relay.idle_timeout (10 s) is longer than the retries:
    // each retry must still meet a fresh smtpd (see below).
    let sat = Posthorn::start(&satellite_config(&[pf.addr()]));
    let msg = message(&[("From", "cron@vm.test"), ("Subject", "retry me")], "second time lucky\n");
    smtplib_send(sat.smtp_addr(), "cron@vm.test", &["later@example.org"], &msg).unwrap();

    let to = "to=<later@example.org>";
    assert!(sat.wait_for_log_count(&[to, "status=deferred"], 2, secs(20)), "{}", sat.log());
    let line = sat.log_lines(&[to, "status=deferred"]).remove(0);
    assert!(line.contains("450 4.7.1") && line.contains("mailbox busy"), "{line}");
    let id = queue_id_of(&line).unwrap();
    let why = sat.command(&["queue", "why", &id], b"");
    let why_text = String::from_utf8_lossy(&why.stdout);
    assert!(why.status.success(), "queue why {id}: {why:?}");
    assert!(
        why_text.contains("450 4.7.1") && why_text.contains("Recipient address rejected: mailbox busy"),
        "{why_text}"
    );
    assert!(why_text.contains(&pf.addr().ip().to_string()), "the next hop tried: {why_text}");
    assert!(!pf.log_lines(&["reject: RCPT", "<later@example.org>", "450 4.7.1"]).is_empty());
    assert!(sink.messages().is_empty());
    assert!(sat.log_lines(&["status=bounced"]).is_empty(), "a 4xx never bounces:\n{}", sat.log());
    assert_eq!(sat.queued_count(), 1);

    // Postfix accepts again: the next retry delivers, once.
    pf.reconfigure(&[("smtpd_recipient_restrictions", "permit_mynetworks, reject")]);
    let got = sink.wait_for_parsed(1, secs(10));
    assert_eq!(got.len(), 1, "{}", sat.log());
    // A session whose recipients were all refused is closed, not kept for
    // the retry: Postfix counts those refusals against the session (and
    // slows it down, then drops it), and a kept session would still answer
    // with the restrictions it started with.
    let sessions = pf.log_lines(&["disconnect from", "rcpt=0/1"]);
    assert!(sessions.len() >= 2, "one session per deferred try: {sessions:#?}");
    let reused: Vec<String> =
        pf.log_lines(&["disconnect from", "mail="]).into_iter().filter(|l| !l.contains(" mail=1 ")).collect();
    assert!(reused.is_empty(), "a session was reused after refusals: {reused:#?}");
    assert_eq!(got[0].rcpt_to, ["later@example.org"]);
    assert_eq!(got[0].body(), b"second time lucky\n");
    let sent = format!("{id}: {to}");
    assert!(sat.wait_for_log_count(&[&sent, "status=sent"], 1, secs(5)), "{}", sat.log());
    assert_eq!(sat.log_lines(&[&sent, "status=sent"]).len(), 1, "{}", sat.log());
    assert!(sat.wait_for_queued(0, secs(10)));
}
