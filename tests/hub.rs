//! End-to-end: the hub (mail node). Several posthorn processes on their
//! own loopback addresses (satellite 127.0.0.2, hub 127.0.0.3, MX target
//! 127.0.0.4), the harness's real DNS server for MX lookups, Postfix's
//! `smtp-sink` for next hops named by a transport table. Delivered mail is
//! read back from the Maildir or the sink, never trusted from a log line.
//!
//! Scenarios:
//! 1. `sendmail` on a satellite -> hub (virtual aliases, two levels) -> MX
//!    target found through DNS -> a file in the target's Maildir, with the
//!    alias target in `Delivered-To:` and every hop in `Received:`.
//! 2. Catch-all for a staging domain; a specific entry wins over it; two
//!    addresses expanding to one mailbox are delivered once.
//! 3. An alias to two addresses: both get the message.
//! 4. An alias loop: 550 5.4.6 at RCPT naming the loop, nothing queued;
//!    `sendmail` to it fails and queues nothing either.
//! 5. MX fallback: the preferred MX refuses connections, the second gets
//!    the mail.
//! 6. Null MX: the recipient bounces at once; the bounce reaches the
//!    sender's Maildir on the hub.
//! 7. DNS SERVFAIL: deferred, retried, never bounced.
//! 8. Transport table: `.example.net relay:[ip]:port` sends subdomains
//!    (not example.net itself) to a sink; an alias target carries the
//!    original address as ORCPT.
//! 9. Routing at delivery time: mail queued while the transport table
//!    points at a dead next hop goes to the new one after the table changes
//!    and the queue is flushed.
//! 10. `local_recipient_maps`: unknown users in a local domain (also via
//!     an alias) get 550 5.1.1 at RCPT; known users, as `user@domain` or
//!     bare `user`, are accepted and delivered.
//! 11. An aliases(5) file for local names, recursive, with `\name`.
//! 12. An alias file with a pipe is refused at start, naming file and line.
//! 13. `sendmail` to a refused recipient beside a good one: the good one
//!     gets the message, the sender a bounce for the other.
//! 14. An all-ASCII message sent with SMTPUTF8 reaches a next hop that
//!     does not offer SMTPUTF8.

mod harness;

use std::fs;
use std::net::{Ipv4Addr, SocketAddr, TcpStream};
use std::path::PathBuf;
use std::time::Duration;

use harness::*;

const SATELLITE_IP: &str = "127.0.0.2";
const HUB_IP: &str = "127.0.0.3";
const MX_IP: Ipv4Addr = Ipv4Addr::new(127, 0, 0, 4);
/// Nothing listens here on any port the tests use: a refusing MX.
const DEAD_MX_IP: Ipv4Addr = Ipv4Addr::new(127, 0, 0, 6);

/// Where one instance keeps its tables and Maildirs.
struct Files {
    dir: tempfile::TempDir,
}

impl Files {
    fn new() -> Files {
        Files { dir: tempfile::tempdir().expect("temporary directory") }
    }

    /// Writes `name` and returns `hash:PATH` for the config.
    fn table(&self, name: &str, text: &str) -> String {
        let path = self.dir.path().join(name);
        fs::write(&path, text).unwrap_or_else(|e| panic!("write {}: {e}", path.display()));
        format!("hash:{}", path.display())
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    fn maildir_root(&self) -> PathBuf {
        self.dir.path().join("mail")
    }

    /// `deliver.maildir_root = ".../mail/{domain}/{user}"`.
    fn maildir_line(&self) -> String {
        format!(
            "deliver.maildir_root = {}",
            toml_str(&format!("{}/{{domain}}/{{user}}", self.maildir_root().display()))
        )
    }

    /// The messages in the Maildir of `user@domain`, oldest name first.
    fn maildir(&self, domain: &str, user: &str) -> Vec<Vec<u8>> {
        let new = self.maildir_root().join(domain).join(user).join("new");
        let mut names: Vec<PathBuf> =
            fs::read_dir(&new).map(|d| d.flatten().map(|e| e.path()).collect()).unwrap_or_default();
        names.sort();
        names.iter().map(|p| fs::read(p).unwrap()).collect()
    }

    /// Waits until the Maildir of `user@domain` holds at least `n`
    /// messages (or 15 s passed) and returns them.
    fn wait_maildir(&self, domain: &str, user: &str, n: usize) -> Vec<Vec<u8>> {
        wait_until(secs(15), || self.maildir(domain, user).len() >= n);
        self.maildir(domain, user)
    }

    /// The mailboxes (`domain/user`) that exist under the root.
    fn mailboxes(&self) -> Vec<String> {
        let mut out = Vec::new();
        for domain in fs::read_dir(self.maildir_root()).into_iter().flatten().flatten() {
            for user in fs::read_dir(domain.path()).into_iter().flatten().flatten() {
                out.push(format!("{}/{}", domain.file_name().to_string_lossy(), user.file_name().to_string_lossy()));
            }
        }
        out.sort();
        out
    }
}

/// A hub on `ip:0` with fast retries and plain SMTP to next hops; `lines`
/// as for [`with_lines`].
fn hub_config(ip: &str, lines: &[&str]) -> String {
    let base = format!(
        "role = \"hub\"\n\n[smtp]\nlisten = [\"{ip}:0\"]\n\n[relay]\ntls = \"none\"\nconnect_timeout = \"5s\"\n\n[queue]\nretry_min = \"1s\"\nretry_max = \"2s\"\n"
    );
    with_lines(&base, lines)
}

/// The MX target: a hub on 127.0.0.4 delivering `domains` to its Maildirs.
fn mx_target(files: &Files, domains: &[&str]) -> Posthorn {
    let list: Vec<String> = domains.iter().map(|d| toml_str(d)).collect();
    let local = format!("access.local_domains = [{}]", list.join(", "));
    Posthorn::start(&hub_config(&MX_IP.to_string(), &[&local, &files.maildir_line()]))
}

fn text(message: &[u8]) -> String {
    String::from_utf8_lossy(message).into_owned()
}

/// The one log line reporting the final status of `rcpt` with `status`.
fn status_line(ph: &Posthorn, rcpt: &str, status: &str) -> String {
    let to = format!("to=<{rcpt}>");
    let st = format!("status={status}");
    assert!(ph.wait_for_log_count(&[&to, &st], 1, secs(15)), "no `{to} ... {st}` log line; log:\n{}", ph.log());
    ph.log_lines(&[&to, &st]).remove(0)
}

/// EHLO, MAIL FROM; the session is ready for RCPT.
fn session(ph: &Posthorn, from: &str) -> RawSmtp {
    let mut c = RawSmtp::connect(ph.smtp_addr()).expect("connect to the hub");
    c.ehlo("client.test").expect("EHLO");
    let reply = c.cmd(&format!("MAIL FROM:<{from}>")).unwrap();
    assert_eq!(reply.code, 250, "MAIL: {reply}");
    c
}

#[test]
fn satellite_sendmail_through_hub_aliases_to_mx_target_maildir() {
    let target_files = Files::new();
    let target = mx_target(&target_files, &["example.org"]);
    let dns = DnsServer::start(vec![
        DnsRecord::mx("example.org", 10, "mx1.example.org"),
        DnsRecord::a("mx1.example.org", MX_IP),
    ]);
    let hub_files = Files::new();
    let virtual_map = hub_files.table(
        "virtual",
        "# The fleet's cron mail goes to the ops team.\n\
         root@fleet.example    ops@example.org\n\
         ops@example.org       alice@example.org\n",
    );
    let hub = Posthorn::start(&hub_config(
        HUB_IP,
        &[
            &format!("rewrite.virtual_alias_maps = [{}]", toml_str(&virtual_map)),
            &dns.config_line(),
            &format!("deliver.mx_port = {}", target.smtp_addr().port()),
        ],
    ));
    let satellite = Posthorn::start(&with_lines(
        &satellite_config(&[hub.smtp_addr()]),
        &[&format!("smtp.listen = [\"{SATELLITE_IP}:0\"]")],
    ));

    let msg = "From: Cron Daemon <root@vm1.fleet.example>\nTo: root@fleet.example\nSubject: backup report\n\nbackup finished: 42 files\n.hidden line\n";
    let out = satellite.sendmail(&["-i", "-f", "root@vm1.fleet.example", "root@fleet.example"], msg.as_bytes());
    assert!(out.status.success(), "sendmail: {out:?}");

    let got = target_files.wait_maildir("example.org", "alice", 1);
    assert_eq!(got.len(), 1, "alice's Maildir; hub log:\n{}\ntarget log:\n{}", hub.log(), target.log());
    let m = &got[0];
    assert_eq!(header(m, "Delivered-To").as_deref(), Some("alice@example.org"), "{}", text(m));
    assert_eq!(header(m, "Return-Path").as_deref(), Some("<root@vm1.fleet.example>"), "{}", text(m));
    assert_eq!(header(m, "Subject").as_deref(), Some("backup report"));
    assert_eq!(header(m, "To").as_deref(), Some("root@fleet.example"), "headers are not rewritten");
    assert_eq!(text(&body(m)), "backup finished: 42 files\n.hidden line\n");
    // The target, the hub and the satellite each added one.
    let received = headers(m, "Received");
    assert_eq!(received.len(), 3, "Received: {received:#?}");
    for (ph, r) in [(&target, &received[0]), (&hub, &received[1]), (&satellite, &received[2])] {
        assert!(r.contains(ph.hostname()), "{r:?} lacks {}", ph.hostname());
    }
    // The alias chain's intermediate names got nothing.
    assert_eq!(target_files.mailboxes(), ["example.org/alice"]);

    let line = status_line(&hub, "alice@example.org", "sent");
    let relay = format!("relay=mx1.example.org[{MX_IP}]:{}", target.smtp_addr().port());
    assert!(line.contains(&relay), "{line}");
    assert!(hub.wait_for_queued(0, secs(10)), "hub queue not empty");
    assert!(satellite.wait_for_queued(0, secs(10)), "satellite queue not empty");
}

#[test]
fn catch_all_for_staging_domain() {
    let files = Files::new();
    let virtual_map = files.table(
        "virtual",
        "@staging.example.org       team@example.org\n\
         qa@staging.example.org     alice@example.org\n",
    );
    let hub = Posthorn::start(&hub_config(
        HUB_IP,
        &[
            "access.local_domains = [\"example.org\"]",
            &format!("rewrite.virtual_alias_maps = [{}]", toml_str(&virtual_map)),
            &files.maildir_line(),
        ],
    ));
    let to = ["deploy@staging.example.org", "ci@staging.example.org", "qa@staging.example.org"];
    let msg =
        message(&[("From", "ci@build.test"), ("To", "deploy@staging.example.org"), ("Subject", "staging")], "x\n");
    smtplib_send(hub.smtp_addr(), "ci@build.test", &to, &msg).unwrap_or_else(|e| panic!("{e}\n{}", hub.log()));

    let team = files.wait_maildir("example.org", "team", 1);
    let alice = files.wait_maildir("example.org", "alice", 1);
    assert!(hub.wait_for_queued(0, secs(10)));
    // Two catch-all recipients, one mailbox: delivered once.
    assert_eq!(files.maildir("example.org", "team").len(), 1, "team got duplicates");
    assert_eq!(header(&team[0], "Delivered-To").as_deref(), Some("team@example.org"));
    // The specific entry wins over the catch-all (Postfix order).
    assert_eq!(alice.len(), 1);
    assert_eq!(header(&alice[0], "Delivered-To").as_deref(), Some("alice@example.org"));
    assert_eq!(files.mailboxes(), ["example.org/alice", "example.org/team"]);
}

#[test]
fn alias_to_two_addresses_reaches_both() {
    let files = Files::new();
    let virtual_map = files.table("virtual", "oncall@example.org   alice@example.org, bob@example.org\n");
    let hub = Posthorn::start(&hub_config(
        HUB_IP,
        &[
            "access.local_domains = [\"example.org\"]",
            &format!("rewrite.virtual_alias_maps = [{}]", toml_str(&virtual_map)),
            &files.maildir_line(),
        ],
    ));
    let msg = message(&[("From", "nagios@mon.test"), ("To", "oncall@example.org"), ("Subject", "disk full")], "sda1\n");
    smtplib_send(hub.smtp_addr(), "nagios@mon.test", &["oncall@example.org"], &msg).unwrap();
    for user in ["alice", "bob"] {
        let got = files.wait_maildir("example.org", user, 1);
        assert_eq!(got.len(), 1, "{user}; log:\n{}", hub.log());
        assert_eq!(header(&got[0], "Delivered-To"), Some(format!("{user}@example.org")));
        assert_eq!(header(&got[0], "Subject").as_deref(), Some("disk full"));
        assert_eq!(text(&body(&got[0])), "sda1\n");
    }
    assert_eq!(files.mailboxes(), ["example.org/alice", "example.org/bob"]);
}

#[test]
fn alias_loop_refused_at_rcpt_nothing_queued() {
    let files = Files::new();
    let virtual_map = files.table(
        "virtual",
        "loop1@example.org   loop2@example.org\n\
         loop2@example.org   loop3@example.org\n\
         loop3@example.org   loop1@example.org\n",
    );
    let hub = Posthorn::start(&hub_config(
        HUB_IP,
        &[
            "access.local_domains = [\"example.org\"]",
            &format!("rewrite.virtual_alias_maps = [{}]", toml_str(&virtual_map)),
            &files.maildir_line(),
        ],
    ));
    let mut c = session(&hub, "someone@client.test");
    let reply = c.cmd("RCPT TO:<loop1@example.org>").unwrap();
    assert_eq!(reply.code, 550, "{reply}");
    assert!(reply.text.starts_with("5.4.6 "), "{reply}");
    assert!(
        reply.text.contains("alias loop")
            && reply.text.contains("loop1@example.org -> loop2@example.org -> loop3@example.org -> loop1@example.org"),
        "the reply should name the loop: {reply}"
    );
    let reply = c.cmd("DATA").unwrap();
    assert!(reply.code >= 500, "DATA without recipients: {reply}");
    c.quit().unwrap();

    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(hub.queued_count(), 0, "nothing may be queued; log:\n{}", hub.log());
    assert!(files.mailboxes().is_empty(), "{:?}", files.mailboxes());
}

#[test]
fn mx_fallback_first_refuses_second_accepts() {
    let target_files = Files::new();
    let target = mx_target(&target_files, &["example.org"]);
    let port = target.smtp_addr().port();
    assert!(
        TcpStream::connect_timeout(&SocketAddr::from((DEAD_MX_IP, port)), Duration::from_secs(1)).is_err(),
        "something listens on {DEAD_MX_IP}:{port}"
    );
    let dns = DnsServer::start(vec![
        DnsRecord::mx("example.org", 10, "mx1.example.org"),
        DnsRecord::mx("example.org", 20, "mx2.example.org"),
        DnsRecord::a("mx1.example.org", DEAD_MX_IP),
        DnsRecord::a("mx2.example.org", MX_IP),
    ]);
    let hub = Posthorn::start(&hub_config(HUB_IP, &[&dns.config_line(), &format!("deliver.mx_port = {port}")]));
    let msg = message(&[("From", "app@vm.test"), ("To", "alice@example.org"), ("Subject", "fallback")], "x\n");
    smtplib_send(hub.smtp_addr(), "app@vm.test", &["alice@example.org"], &msg).unwrap();

    let got = target_files.wait_maildir("example.org", "alice", 1);
    assert_eq!(got.len(), 1, "hub log:\n{}", hub.log());
    assert_eq!(header(&got[0], "Subject").as_deref(), Some("fallback"));
    let line = status_line(&hub, "alice@example.org", "sent");
    assert!(line.contains(&format!("relay=mx2.example.org[{MX_IP}]:{port}")), "{line}");
    assert!(hub.log_lines(&["status=deferred"]).is_empty(), "the fallback happens within one attempt");
}

#[test]
fn null_mx_bounces_to_sender() {
    let files = Files::new();
    let dns = DnsServer::start(vec![DnsRecord::null_mx("nomail.example")]);
    let hub = Posthorn::start(&hub_config(
        HUB_IP,
        &["access.local_domains = [\"example.org\"]", &files.maildir_line(), &dns.config_line()],
    ));
    let msg = message(&[("From", "alice@example.org"), ("To", "bob@nomail.example"), ("Subject", "hello bob")], "x\n");
    smtplib_send(hub.smtp_addr(), "alice@example.org", &["bob@nomail.example"], &msg).unwrap();

    let line = status_line(&hub, "bob@nomail.example", "bounced");
    assert!(line.contains("dsn=5.1.10"), "{line}");
    let bounces = files.wait_maildir("example.org", "alice", 1);
    assert_eq!(bounces.len(), 1, "bounce in alice's Maildir; log:\n{}", hub.log());
    let b = &bounces[0];
    let t = text(b);
    assert_eq!(header(b, "Return-Path").as_deref(), Some("<>"), "{t}");
    assert!(header(b, "From").unwrap_or_default().starts_with("MAILER-DAEMON@"), "{t}");
    assert!(t.contains("Final-Recipient: rfc822; bob@nomail.example"), "{t}");
    assert!(t.contains("Action: failed"), "{t}");
    assert!(t.contains("Status: 5.1.10"), "{t}");
    assert!(t.contains("Subject: hello bob"), "the original's headers come back: {t}");
    assert!(hub.wait_for_queued(0, secs(10)), "queue not empty; log:\n{}", hub.log());
}

#[test]
fn servfail_defers_never_bounces() {
    let files = Files::new();
    let dns = DnsServer::start(vec![DnsRecord::servfail("broken.example")]);
    let hub = Posthorn::start(&hub_config(
        HUB_IP,
        &["access.local_domains = [\"example.org\"]", &files.maildir_line(), &dns.config_line()],
    ));
    let msg = message(&[("From", "alice@example.org"), ("To", "x@broken.example")], "x\n");
    smtplib_send(hub.smtp_addr(), "alice@example.org", &["x@broken.example"], &msg).unwrap();

    // Deferred, then retried (retry_min 1 s) and deferred again.
    let to = "to=<x@broken.example>";
    assert!(hub.wait_for_log_count(&[to, "status=deferred"], 2, secs(20)), "want two deferrals; log:\n{}", hub.log());
    let id = queue_id_of(&status_line(&hub, "x@broken.example", "deferred")).unwrap();
    assert!(hub.log_lines(&["status=bounced"]).is_empty(), "log:\n{}", hub.log());
    assert_eq!(hub.queued_count(), 1);
    assert!(files.maildir("example.org", "alice").is_empty(), "no bounce may reach the sender");
    let why = hub.command(&["queue", "why", &id], b"");
    let why_text = String::from_utf8_lossy(&why.stdout);
    assert!(why.status.success() && why_text.contains("SERVFAIL"), "queue why {id}: {why:?}");
}

#[test]
fn transport_table_sends_subdomains_to_next_hop() {
    let sink = Sink::start();
    let files = Files::new();
    let transport =
        files.table("transport", &format!(".example.net   relay:[{}]:{}\n", sink.addr().ip(), sink.addr().port()));
    let virtual_map = files.table("virtual", "oncall@mail.example.net   ops@deep.sub.example.net\n");
    // No DNS data at all: a lookup would fail, so delivery proves the table.
    let dns = DnsServer::start(vec![]);
    let hub = Posthorn::start(&hub_config(
        HUB_IP,
        &[
            &format!("deliver.transport_maps = [{}]", toml_str(&transport)),
            &format!("rewrite.virtual_alias_maps = [{}]", toml_str(&virtual_map)),
            &dns.config_line(),
        ],
    ));
    let msg = message(&[("From", "app@vm.test"), ("To", "db@mail.example.net"), ("Subject", "via table")], "x\n");
    let to = ["db@mail.example.net", "oncall@mail.example.net", "top@example.net"];
    smtplib_send(hub.smtp_addr(), "app@vm.test", &to, &msg).unwrap();

    let got = sink.wait_for_parsed(1, secs(15));
    let mut rcpts: Vec<String> = got.iter().flat_map(|d| d.rcpt_to.clone()).collect();
    rcpts.sort();
    assert_eq!(rcpts, ["db@mail.example.net", "ops@deep.sub.example.net"], "log:\n{}", hub.log());
    assert_eq!(got[0].header("Subject").as_deref(), Some("via table"));
    // The alias target carries the address the client gave as ORCPT.
    let raw = String::from_utf8_lossy(&sink.messages()[0]).into_owned();
    assert!(raw.contains("<ops@deep.sub.example.net> ORCPT=rfc822;oncall@mail.example.net"), "{raw}");
    let line = status_line(&hub, "db@mail.example.net", "sent");
    assert!(line.contains(&format!(":{}", sink.addr().port())), "{line}");
    // `.example.net` is for subdomains only (transport(5)); example.net
    // itself takes the default route, MX, whose lookup fails here.
    let line = status_line(&hub, "top@example.net", "deferred");
    assert!(!line.contains(&format!(":{}", sink.addr().port())), "{line}");
}

#[test]
fn transport_change_applies_to_queued_mail() {
    let dead = free_addr();
    let files = Files::new();
    let transport_text = |to: SocketAddr| format!(".example.net   relay:[{}]:{}\n", to.ip(), to.port());
    let transport = files.table("transport", &transport_text(dead));
    let hub = Posthorn::start(&hub_config(
        HUB_IP,
        &[
            &format!("deliver.transport_maps = [{}]", toml_str(&transport)),
            // Without the flush the retry would come too late for the test.
            "queue.retry_min = \"60s\"",
            "queue.retry_max = \"60s\"",
        ],
    ));
    let msg = message(&[("From", "app@vm.test"), ("To", "db@mail.example.net"), ("Subject", "rerouted")], "x\n");
    smtplib_send(hub.smtp_addr(), "app@vm.test", &["db@mail.example.net"], &msg).unwrap();
    let line = status_line(&hub, "db@mail.example.net", "deferred");
    assert!(line.contains(&dead.port().to_string()), "tried the dead hop first: {line}");
    assert!(hub.wait_for_queued(1, secs(5)), "{}", hub.log());

    let sink = Sink::start();
    fs::write(files.path("transport"), transport_text(sink.addr())).unwrap();
    // Tables are looked at again at most once a second.
    std::thread::sleep(Duration::from_millis(1100));
    let out = hub.command(&["queue", "flush"], b"");
    assert!(out.status.success(), "queue flush: {out:?}");

    let got = sink.wait_for_parsed(1, secs(15));
    assert_eq!(got.len(), 1, "the queued message went to the new next hop; log:\n{}", hub.log());
    assert_eq!(got[0].rcpt_to, ["db@mail.example.net"]);
    assert_eq!(got[0].header("Subject").as_deref(), Some("rerouted"));
    let line = status_line(&hub, "db@mail.example.net", "sent");
    assert!(line.contains(&format!(":{}", sink.addr().port())), "{line}");
    assert!(hub.wait_for_queued(0, secs(10)));
}

#[test]
fn unknown_local_user_refused_at_rcpt() {
    let files = Files::new();
    let users = files.table("users", "alice@example.org   ok\nbob   ok\n");
    let virtual_map = files.table("virtual", "sales@example.org   ghost@example.org\n");
    let hub = Posthorn::start(&hub_config(
        HUB_IP,
        &[
            "access.local_domains = [\"example.org\"]",
            &format!("access.local_recipient_maps = [{}]", toml_str(&users)),
            &format!("rewrite.virtual_alias_maps = [{}]", toml_str(&virtual_map)),
            &files.maildir_line(),
        ],
    ));
    let mut c = session(&hub, "someone@client.test");
    for unknown in ["nobody@example.org", "sales@example.org"] {
        let reply = c.cmd(&format!("RCPT TO:<{unknown}>")).unwrap();
        assert_eq!(reply.code, 550, "{unknown}: {reply}");
        assert!(reply.text.starts_with("5.1.1 "), "{unknown}: {reply}");
        assert!(reply.text.contains("User unknown"), "{unknown}: {reply}");
    }
    for known in ["alice@example.org", "bob@example.org", "postmaster@example.org"] {
        let reply = c.cmd(&format!("RCPT TO:<{known}>")).unwrap();
        assert_eq!(reply.code, 250, "{known}: {reply}");
    }
    let reply = c.cmd("DATA").unwrap();
    assert_eq!(reply.code, 354, "{reply}");
    c.send_raw(&dot_stuff(b"Subject: users\n\nx\n")).unwrap();
    let reply = c.cmd(".").unwrap();
    assert_eq!(reply.code, 250, "{reply}");
    c.quit().unwrap();

    for user in ["alice", "bob", "postmaster"] {
        assert_eq!(files.wait_maildir("example.org", user, 1).len(), 1, "{user}; log:\n{}", hub.log());
    }
    assert!(hub.wait_for_queued(0, secs(10)));
    assert_eq!(files.mailboxes(), ["example.org/alice", "example.org/bob", "example.org/postmaster"]);
    assert!(hub.log_lines(&["status=bounced"]).is_empty(), "refused at RCPT, never bounced later");
}

/// `sendmail` to a recipient the hub refuses (an alias loop) beside a good
/// one. Either answer is acceptable: sendmail fails and says why, or the
/// good recipient gets the message and the sender a bounce for the other.
#[test]
fn sendmail_to_alias_loop_is_not_lost_silently() {
    let files = Files::new();
    let virtual_map =
        files.table("virtual", "loop1@example.org   loop2@example.org\nloop2@example.org   loop1@example.org\n");
    let hub = Posthorn::start(&hub_config(
        HUB_IP,
        &[
            "access.local_domains = [\"example.org\"]",
            &format!("rewrite.virtual_alias_maps = [{}]", toml_str(&virtual_map)),
            &files.maildir_line(),
        ],
    ));
    let out = hub.sendmail(
        &["-i", "-f", "alice@example.org", "alice@example.org", "loop1@example.org"],
        b"Subject: loop\n\nx\n",
    );
    if !out.status.success() {
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains("alias loop"), "sendmail failed without naming the loop: {err}");
        return;
    }
    // Accepted: the good recipient gets the message, the sender a bounce.
    let alice = files.wait_maildir("example.org", "alice", 2);
    assert_eq!(alice.len(), 2, "want the message and a bounce in alice's Maildir; log:\n{}", hub.log());
    assert!(alice.iter().any(|m| header(m, "Subject").as_deref() == Some("loop")));
    assert!(
        alice
            .iter()
            .any(|m| header(m, "Return-Path").as_deref() == Some("<>") && text(m).contains("loop1@example.org"))
    );
}

/// aliases(5) for local names. A name without a domain is qualified with
/// the hub's `hostname` (Postfix's `$myorigin`). A hub counts its hostname
/// as local only while `local_domains` is unset (like Postfix's default
/// `mydestination`); this test sets `local_domains`, so it adds the
/// hostname there once it is known.
#[test]
fn alias_file_for_local_names() {
    let files = Files::new();
    fs::write(files.path("aliases"), "# local names\npostmaster: root\nroot:   alice@example.org, \\root\n").unwrap();
    let mut hub = Posthorn::start(&hub_config(
        HUB_IP,
        &[
            "access.local_domains = [\"example.org\"]",
            &format!("rewrite.alias_maps = [{}]", toml_str(&files.path("aliases").display().to_string())),
            &files.maildir_line(),
        ],
    ));
    let host = hub.hostname().to_string();
    let config = fs::read_to_string(hub.config_path()).unwrap();
    let config =
        config.replace("local_domains = [\"example.org\"]", &format!("local_domains = [\"example.org\", \"{host}\"]"));
    fs::write(hub.config_path(), config).unwrap();
    hub.restart();

    let msg = message(&[("From", "app@vm.test"), ("To", "postmaster@example.org"), ("Subject", "aliases")], "x\n");
    smtplib_send(hub.smtp_addr(), "app@vm.test", &["postmaster@example.org"], &msg).unwrap();
    for (domain, user) in [("example.org", "alice"), (host.as_str(), "root")] {
        let got = files.wait_maildir(domain, user, 1);
        assert_eq!(got.len(), 1, "{user}@{domain}; log:\n{}", hub.log());
        assert_eq!(header(&got[0], "Delivered-To"), Some(format!("{user}@{domain}")));
        assert_eq!(header(&got[0], "Subject").as_deref(), Some("aliases"));
    }
    let mut want = vec!["example.org/alice".to_string(), format!("{host}/root")];
    want.sort();
    assert_eq!(files.mailboxes(), want);
}

#[test]
fn alias_file_with_a_bad_line_is_refused_naming_file_and_line() {
    let files = Files::new();
    fs::write(files.path("aliases"), "postmaster: root\nbackup: :include:lists/backup\n").unwrap();
    let path = files.path("aliases").display().to_string();
    let config = hub_config(
        HUB_IP,
        &["access.local_domains = [\"example.org\"]", &format!("rewrite.alias_maps = [{}]", toml_str(&path))],
    );
    let err = match Posthorn::try_start(&config) {
        Ok(ph) => panic!("a relative :include: must be refused; log:\n{}", ph.log()),
        Err(e) => e,
    };
    assert!(err.contains(&format!("{path}:2")) || (err.contains(&path) && err.contains("line 2")), "{err}");

    // A pipe alias is good syntax, but a hub that delivers its local
    // domains to Maildirs has nothing to run it with: refused at RCPT.
    fs::write(files.path("aliases"), "postmaster: root\nbackup: |/usr/local/bin/save\n").unwrap();
    let hub = Posthorn::start(&config);
    let err =
        smtplib_send(hub.smtp_addr(), "a@example.net", &["backup@example.org"], "Subject: x\r\n\r\nx\r\n").unwrap_err();
    assert!(err.contains("550 5.3.5") && err.contains("only the local: transport delivers to"), "{err}");
}

/// A client that asks for SMTPUTF8 (some do whenever it is offered) for a
/// message that is ASCII throughout, envelope and headers: like Postfix,
/// posthorn hands it to a next hop without SMTPUTF8 instead of bouncing.
#[test]
fn smtputf8_flag_on_ascii_message_is_delivered_to_next_hop_without_it() {
    let sink = Sink::start();
    let files = Files::new();
    let transport =
        files.table("transport", &format!("example.net   relay:[{}]:{}\n", sink.addr().ip(), sink.addr().port()));
    let hub = Posthorn::start(&hub_config(HUB_IP, &[&format!("deliver.transport_maps = [{}]", toml_str(&transport))]));
    let mut c = RawSmtp::connect(hub.smtp_addr()).unwrap();
    c.ehlo("client.test").unwrap();
    assert_eq!(c.cmd("MAIL FROM:<app@vm.test> SMTPUTF8").unwrap().code, 250);
    assert_eq!(c.cmd("RCPT TO:<db@example.net>").unwrap().code, 250);
    assert_eq!(c.cmd("DATA").unwrap().code, 354);
    c.send_raw(&dot_stuff(b"From: app@vm.test\nTo: db@example.net\nSubject: plain ascii\n\nx\n")).unwrap();
    assert_eq!(c.cmd(".").unwrap().code, 250);
    c.quit().unwrap();
    let got = sink.wait_for_parsed(1, secs(10));
    assert_eq!(got.len(), 1, "log:\n{}", hub.log());
}
