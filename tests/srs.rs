//! End-to-end: the Sender Rewriting Scheme on the hub. The hub forwards
//! `alice@hub.example` to `alice@forward.example` by a virtual alias; the
//! test DNS server has MX records for the other domains pointing at one
//! `smtp-sink`, and SPF records: `hub.example` allows loopback, the
//! outside sender's domain allows only 192.0.2.0/24.
//!
//! Scenarios:
//! 1. A message from an outside sender, forwarded by the alias, reaches
//!    the next domain with an SRS0 sender at hub.example, which passes SPF
//!    (python3-spf asked of the test DNS server) where the original sender
//!    fails. A local recipient of the same kind of message keeps the
//!    original sender, and so does a sender of the hub's own domain.
//! 2. The bounce the next domain sends back to the SRS address is accepted
//!    and delivered to the original sender; a forged hash and an expired
//!    timestamp get 550 at RCPT, nothing is queued. The hub's own bounce of
//!    a forward (a null MX) goes to the SRS sender and on to the original.
//! 3. postsrsd (Debian's, its TCP tables) with the same secret: it reverses
//!    what posthorn wrote, writes byte for byte what posthorn writes, and
//!    posthorn takes a bounce to an address postsrsd wrote.

mod harness;

use std::fs;
use std::net::IpAddr;
use std::path::PathBuf;

use harness::postsrsd::{Postsrsd, spf};
use harness::*;

const HUB_IP: &str = "127.0.0.3";
const SECRET: &str = "b4cK-t0-s3nder secret\n";

/// The hub's files and its DNS, with one sink for every other domain.
struct World {
    dir: tempfile::TempDir,
    dns: DnsServer,
    sink: Sink,
    hub: Posthorn,
}

impl World {
    fn start(extra: &[&str]) -> World {
        let sink = Sink::start();
        let IpAddr::V4(sink_ip) = sink.addr().ip() else { panic!("the sink is on IPv4") };
        let dns = DnsServer::start(vec![
            DnsRecord::mx("forward.example", 10, "mx.sink.example"),
            DnsRecord::mx("outside.example", 10, "mx.sink.example"),
            DnsRecord::mx("elsewhere.example", 10, "mx.sink.example"),
            DnsRecord::a("mx.sink.example", sink_ip),
            DnsRecord::null_mx("nomail.example"),
            DnsRecord::txt("hub.example", "v=spf1 ip4:127.0.0.0/8 -all"),
            DnsRecord::txt("outside.example", "v=spf1 ip4:192.0.2.0/24 -all"),
        ]);
        let dir = tempfile::tempdir().expect("temporary directory");
        let virtual_map = dir.path().join("virtual");
        fs::write(&virtual_map, "alice@hub.example alice@forward.example\nbob@hub.example bob@hub.example\ndan@hub.example dan@nomail.example\n").unwrap();
        let secret = dir.path().join("srs.secret");
        fs::write(&secret, SECRET).unwrap();
        let maildirs = format!("{}/{{domain}}/{{user}}", dir.path().join("mail").display());
        let base = format!(
            "role = \"hub\"\n\n[smtp]\nlisten = [\"{HUB_IP}:0\"]\n\n[relay]\ntls = \"none\"\n\n[queue]\nretry_min = \"1s\"\nretry_max = \"2s\"\n"
        );
        let mut lines = vec![
            "access.local_domains = [\"hub.example\"]".to_string(),
            format!("rewrite.virtual_alias_maps = [{}]", toml_str(&format!("hash:{}", virtual_map.display()))),
            format!("deliver.maildir_root = {}", toml_str(&maildirs)),
            format!("deliver.mx_port = {}", sink.addr().port()),
            dns.config_line(),
            "srs.domain = \"hub.example\"".into(),
            format!("srs.secret = {}", toml_str(&secret.display().to_string())),
        ];
        lines.extend(extra.iter().map(|s| s.to_string()));
        let refs: Vec<&str> = lines.iter().map(String::as_str).collect();
        let hub = Posthorn::start(&with_lines(&base, &refs));
        World { dir, dns, sink, hub }
    }

    fn secret(&self) -> PathBuf {
        self.dir.path().join("srs.secret")
    }

    /// Sends one message to the hub, as an outside MTA would.
    fn send(&self, from: &str, to: &str, subject: &str) {
        let msg = message(&[("From", from), ("To", to), ("Subject", subject)], "hello\n");
        let mut c = RawSmtp::connect(self.hub.smtp_addr()).expect("connect to the hub");
        c.ehlo("mta.outside.example").unwrap();
        let reply = c.send(from, &[to], msg.as_bytes()).expect("send");
        assert_eq!(reply.code, 250, "{reply}; hub log:\n{}", self.hub.log());
        c.quit().unwrap();
    }

    /// The reply to `RCPT TO:<rcpt>` after `MAIL FROM:<>`.
    fn rcpt_reply(&self, rcpt: &str) -> Reply {
        let mut c = RawSmtp::connect(self.hub.smtp_addr()).expect("connect to the hub");
        c.ehlo("mta.forward.example").unwrap();
        assert_eq!(c.cmd("MAIL FROM:<>").unwrap().code, 250);
        c.cmd(&format!("RCPT TO:<{rcpt}>")).unwrap()
    }

    /// The one message with `subject` among the first `n` the sink got.
    fn received(&self, subject: &str, n: usize) -> harness::sink::Dumped {
        let all = self.sink.wait_for_parsed(n, secs(20));
        let mine: Vec<_> = all.iter().filter(|d| d.header("Subject").as_deref() == Some(subject)).cloned().collect();
        assert_eq!(mine.len(), 1, "messages with Subject: {subject}: {all:#?}\nhub log:\n{}", self.hub.log());
        mine.into_iter().next().unwrap()
    }

    fn spf(&self, d: &harness::sink::Dumped) -> String {
        let ip = d.client_addr.split(['[', ']']).find(|s| s.parse::<IpAddr>().is_ok()).unwrap_or(&d.client_addr);
        spf(self.dns.addr(), ip, &d.mail_from, d.helo.as_deref().unwrap_or("unknown"))
    }
}

/// The local part's fields of an SRS0 address: hash, stamp, domain, user.
fn srs0_fields(address: &str) -> Vec<String> {
    let (local, domain) = address.rsplit_once('@').unwrap();
    assert_eq!(domain, "hub.example", "{address}");
    let fields: Vec<String> = local.splitn(5, '=').map(str::to_string).collect();
    assert_eq!(fields.len(), 5, "{address}");
    assert_eq!(fields[0], "SRS0", "{address}");
    fields[1..].to_vec()
}

/// An SRS0 address as libsrs2 makes it, for a given day (Python's hmac).
fn srs0_for_day(secret: &str, user: &str, host: &str, day: u64) -> String {
    let script = "import sys, hmac, hashlib, base64\n\
        day = int(sys.argv[1]) % 1024\n\
        c = 'ABCDEFGHIJKLMNOPQRSTUVWXYZ234567'\n\
        t = c[day >> 5] + c[day & 31]\n\
        h = base64.b64encode(hmac.new(sys.argv[2].encode(), (t + sys.argv[4] + sys.argv[3]).lower().encode(), hashlib.sha1).digest())[:4].decode()\n\
        print('SRS0=%s=%s=%s=%s@hub.example' % (h, t, sys.argv[4], sys.argv[3]))\n";
    let mut cmd = std::process::Command::new("/usr/bin/python3");
    cmd.args(["-c", script, &day.to_string(), secret, user, host]);
    let out = run_with_timeout(cmd, b"", secs(20));
    assert!(out.status.success(), "{out:?}");
    String::from_utf8(out.stdout).unwrap().trim().to_string()
}

fn today() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs() / 86400
}

#[test]
fn forwarded_mail_passes_spf_and_its_bounce_reaches_the_sender() {
    let w = World::start(&[]);
    w.send("carol@outside.example", "alice@hub.example", "forwarded");
    let got = w.received("forwarded", 1);
    assert_eq!(got.rcpt_to, ["alice@forward.example"]);
    let fields = srs0_fields(&got.mail_from);
    assert_eq!(&fields[2..], ["outside.example", "carol"], "{}", got.mail_from);
    // Today's stamp, and the hash libsrs2 computes (checked independently).
    assert_eq!(got.mail_from, srs0_for_day(SECRET.trim(), "carol", "outside.example", today()));
    assert_eq!(got.header("From").as_deref(), Some("carol@outside.example"), "headers are not rewritten");
    // What SRS is for: the forward passes SPF, the original sender would not.
    assert_eq!(w.spf(&got), "pass", "{got:?}");
    let unrewritten = harness::sink::Dumped { mail_from: "carol@outside.example".into(), ..got.clone() };
    assert_eq!(w.spf(&unrewritten), "fail");
    assert!(w.hub.wait_for_log("rewritten by SRS to <SRS0=", secs(5)), "{}", w.hub.log());

    // The next domain bounces it to the SRS address: it reaches carol.
    let bounce = message(&[("From", "MAILER-DAEMON@forward.example"), ("Subject", "Undelivered Mail")], "gone\n");
    let mut c = RawSmtp::connect(w.hub.smtp_addr()).unwrap();
    c.ehlo("mta.forward.example").unwrap();
    let reply = c.send("", &[&got.mail_from], bounce.as_bytes()).unwrap();
    assert_eq!(reply.code, 250, "{reply}; hub log:\n{}", w.hub.log());
    let back = w.received("Undelivered Mail", 2);
    assert_eq!(back.rcpt_to, ["carol@outside.example"]);
    assert_eq!(back.mail_from, "", "a bounce keeps the null sender");
    assert_eq!(back.header("Subject").as_deref(), Some("Undelivered Mail"));
    // Case folded by some MTA on the way: still accepted.
    assert_eq!(w.rcpt_reply(&got.mail_from.to_ascii_lowercase()).code, 250);
}

#[test]
fn the_hubs_own_bounce_of_a_forward_reaches_the_original_sender() {
    let w = World::start(&[]);
    // nomail.example has a null MX: the hub bounces to the SRS sender,
    // which it reverses at its own door.
    w.send("carol@outside.example", "dan@hub.example", "to nowhere");
    let all = w.sink.wait_for_parsed(1, secs(20));
    assert_eq!(all.len(), 1, "hub log:\n{}", w.hub.log());
    assert_eq!(all[0].rcpt_to, ["carol@outside.example"], "{all:#?}");
    assert_eq!(all[0].mail_from, "");
    assert!(all[0].text().contains("dan@nomail.example"), "{all:#?}");
}

#[test]
fn forged_and_expired_srs_addresses_are_refused_at_rcpt() {
    let w = World::start(&[]);
    let good = srs0_for_day(SECRET.trim(), "carol", "outside.example", today());
    assert_eq!(w.rcpt_reply(&good).code, 250);
    let fields = srs0_fields(&good);
    let forged = good.replace(&format!("SRS0={}=", fields[0]), "SRS0=AAAA=");
    let reply = w.rcpt_reply(&forged);
    assert_eq!(reply.code, 550, "{reply}");
    assert!(reply.text.contains("bad hash"), "{reply}");
    // Another user under the same hash.
    let reply = w.rcpt_reply(&good.replace("=carol@", "=mallory@"));
    assert_eq!((reply.code, reply.text.contains("bad hash")), (550, true), "{reply}");
    // 21 days is the default limit.
    assert_eq!(w.rcpt_reply(&srs0_for_day(SECRET.trim(), "carol", "outside.example", today() - 21)).code, 250);
    let old = srs0_for_day(SECRET.trim(), "carol", "outside.example", today() - 22);
    let reply = w.rcpt_reply(&old);
    assert_eq!(reply.code, 550, "{reply}");
    assert!(reply.text.contains("expired"), "{reply}");
    // A secret the hub does not have.
    let reply = w.rcpt_reply(&srs0_for_day("another secret", "carol", "outside.example", today()));
    assert_eq!(reply.code, 550, "{reply}");
    assert_eq!(w.hub.queued_count(), 0);
}

#[test]
fn local_recipients_and_own_senders_keep_the_sender() {
    let w =
        World::start(&["access.relay_domains = [\"fleet.example\"]", "srs.exclude_domains = [\".partner.example\"]"]);
    // bob stays local: no forwarding, no rewriting.
    w.send("carol@outside.example", "bob@hub.example", "local");
    // Senders of the hub's own and excluded domains are kept.
    w.send("cron@fleet.example", "alice@hub.example", "own");
    w.send("x@mx.partner.example", "alice@hub.example", "excluded");
    let all = w.sink.wait_for_parsed(2, secs(20));
    let mut froms: Vec<&str> = all.iter().map(|d| d.mail_from.as_str()).collect();
    froms.sort();
    assert_eq!(froms, ["cron@fleet.example", "x@mx.partner.example"], "hub log:\n{}", w.hub.log());
    let maildir = w.dir.path().join("mail/hub.example/bob/new");
    assert!(wait_until(secs(20), || fs::read_dir(&maildir).is_ok_and(|d| d.count() == 1)), "{}", w.hub.log());
    let m = fs::read_dir(&maildir).unwrap().next().unwrap().unwrap().path();
    assert_eq!(header(&fs::read(m).unwrap(), "Return-Path").as_deref(), Some("<carol@outside.example>"));
}

#[test]
fn postsrsd_reverses_what_posthorn_writes_and_the_other_way() {
    let w = World::start(&[]);
    let postsrsd = Postsrsd::start("hub.example", &w.secret());

    w.send("carol@outside.example", "alice@hub.example", "forwarded");
    let got = w.received("forwarded", 1);
    assert_eq!(got.rcpt_to, ["alice@forward.example"]);
    assert!(got.mail_from.starts_with("SRS0="), "{got:?}");
    // postsrsd takes posthorn's address back to the sender...
    assert_eq!(postsrsd.reverse(&got.mail_from).as_deref(), Ok("carol@outside.example"));
    // ...and, the same day with the same secret, writes the same one.
    assert_eq!(postsrsd.forward("carol@outside.example").as_deref(), Ok(got.mail_from.as_str()));

    // An address postsrsd wrote: posthorn takes the bounce to it.
    let theirs = postsrsd.forward("dave@elsewhere.example").expect("postsrsd forward");
    let bounce = message(&[("From", "MAILER-DAEMON@forward.example"), ("Subject", "for dave")], "gone\n");
    let mut c = RawSmtp::connect(w.hub.smtp_addr()).unwrap();
    c.ehlo("mta.forward.example").unwrap();
    let reply = c.send("", &[&theirs], bounce.as_bytes()).unwrap();
    assert_eq!(reply.code, 250, "{reply} for {theirs}; hub log:\n{}", w.hub.log());
    let back = w.received("for dave", 2);
    assert_eq!(back.rcpt_to, ["dave@elsewhere.example"]);
    assert_eq!(back.header("Subject").as_deref(), Some("for dave"));

    // SRS1: a sender another forwarder rewrote is rewritten again as
    // libsrs2 does, keeping that forwarder; postsrsd reverses it. (Its
    // forward table leaves SRS senders alone: "500 Already rewritten".)
    let srs0_elsewhere = got.mail_from.replace("@hub.example", "@fwd1.example");
    w.send(&srs0_elsewhere, "alice@hub.example", "twice");
    let twice = w.received("twice", 3);
    assert!(twice.mail_from.starts_with("SRS1=") && twice.mail_from.ends_with("@hub.example"), "{}", twice.mail_from);
    assert!(twice.mail_from.contains("=fwd1.example=="), "{}", twice.mail_from);
    assert_eq!(postsrsd.reverse(&twice.mail_from).as_deref(), Ok(srs0_elsewhere.as_str()));
}
