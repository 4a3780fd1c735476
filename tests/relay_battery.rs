//! End-to-end: the open-relay battery. A hub that trusts only 127.0.0.1,
//! relays for `relay.example` (and `aliased.relay.example`) and delivers
//! `local.example` to Maildir, probed from the untrusted address 127.0.0.5
//! with the classic tricks, one test each, and then the same address from
//! the trusted 127.0.0.1 (so the battery shows it refuses the trick, not
//! everything).
//!
//! The hub's next hops are two `smtp-sink`s, chosen by a transport table:
//! "inside" for the relay domains, and "elsewhere" (`*`) for every other
//! destination, the internet an open relay would reach. Each test:
//! 1. from 127.0.0.5: MAIL, RCPT with the trick, checks the reply (554
//!    5.7.1 for relaying, 501/553 for syntax, 250 where the address really
//!    is ours), then a control recipient in `relay.example` and DATA, so a
//!    message is committed whatever the trick's fate;
//! 2. waits until the hub's queue is empty and checks, by reading the
//!    sinks' captures and the Maildir, that every recipient went where it
//!    should: a refused trick never rides along with the accepted control
//!    recipient, and "elsewhere" gets nothing but the fixed targets of the
//!    hub's own aliases (`fwd@relay.example`, the catch-all of
//!    `aliased.relay.example`);
//! 3. the same from 127.0.0.1, where every address that parses is
//!    accepted and goes where its domain says.
//!
//! A few tricks are sessions rather than addresses (XCLIENT, a HELO
//! claiming to be the hub, pipelined DATA after a refused RCPT, header
//! recipients); they have tests of their own at the end.

mod harness;

use std::fs;
use std::io::{self, BufRead, BufReader, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpStream};
use std::path::Path;
use std::time::Duration;

use harness::*;

/// The client the hub must not trust.
const UNTRUSTED: Ipv4Addr = Ipv4Addr::new(127, 0, 0, 5);
/// The one address in `access.trusted_networks`.
const TRUSTED: Ipv4Addr = Ipv4Addr::new(127, 0, 0, 1);

/// What the hub should do with one RCPT, and where the mail then goes.
#[derive(Clone, Copy, Debug)]
enum Want {
    /// 554 5.7.1 `<addr>: Relay access denied`.
    Denied,
    /// A syntax refusal: 501 (5.1.3 address, 5.5.4 parameters) or 553.
    Syntax,
    /// 553 5.6.7: a UTF-8 address in a transaction without SMTPUTF8.
    NeedsSmtpUtf8,
    /// Accepted; reaches the relay domains' own next hop as this address.
    Inside(&'static str),
    /// Accepted; leaves through "elsewhere" as this address (the trusted
    /// client, or a fixed target of the hub's own aliases).
    Outside(&'static str),
    /// Accepted; a file in the Maildir of (domain, user).
    Local(&'static str, &'static str),
    /// The bare `<postmaster>` (RFC 5321 4.5.1): accepted, and delivered as
    /// `postmaster@` the hub's hostname.
    HubPostmaster,
}

/// One trick: the RCPT argument exactly as sent, whether MAIL asks for
/// SMTPUTF8, and the expected outcome from each side.
#[derive(Clone, Copy, Debug)]
struct Trick {
    rcpt: &'static str,
    smtputf8: bool,
    untrusted: Want,
    trusted: Want,
}

/// A client bound to a chosen source address before it connects.
struct Client {
    reader: BufReader<TcpStream>,
    writer: TcpStream,
}

impl Client {
    /// Connects from `source` (port chosen by the kernel), reads the
    /// greeting and says EHLO.
    fn connect_from(source: Ipv4Addr, addr: SocketAddr) -> Client {
        let stream = bound_stream(source, addr).unwrap_or_else(|e| panic!("connect {source} -> {addr}: {e}"));
        stream.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
        stream.set_write_timeout(Some(Duration::from_secs(30))).unwrap();
        let writer = stream.try_clone().unwrap();
        let mut client = Client { reader: BufReader::new(stream), writer };
        let banner = client.read().expect("greeting");
        assert_eq!(banner.code, 220, "greeting {banner}");
        client
    }

    fn ehlo(&mut self, name: &str) {
        let reply = self.cmd(&format!("EHLO {name}"));
        assert_eq!(reply.code, 250, "EHLO {name}: {reply}");
    }

    fn cmd(&mut self, line: &str) -> Reply {
        self.send(line.as_bytes());
        self.send(b"\r\n");
        self.read().unwrap_or_else(|e| panic!("reply to {line:?}: {e}"))
    }

    fn send(&mut self, bytes: &[u8]) {
        self.writer.write_all(bytes).expect("write to the hub");
    }

    fn read(&mut self) -> io::Result<Reply> {
        let mut lines = Vec::new();
        loop {
            let mut raw = Vec::new();
            if self.reader.read_until(b'\n', &mut raw)? == 0 {
                return Err(io::Error::new(io::ErrorKind::UnexpectedEof, "connection closed"));
            }
            let line = String::from_utf8_lossy(&raw).trim_end_matches(['\r', '\n']).to_string();
            let code = line.get(..3).and_then(|c| c.parse::<u16>().ok());
            let Some(code) = code else { return Err(io::Error::other(format!("malformed reply {line:?}"))) };
            lines.push(line.get(4..).unwrap_or("").to_string());
            if line.as_bytes().get(3) != Some(&b'-') {
                return Ok(Reply { code, text: lines.join("\n") });
            }
        }
    }

    fn mail(&mut self, smtputf8: bool) {
        let line =
            if smtputf8 { "MAIL FROM:<probe@client.example> SMTPUTF8" } else { "MAIL FROM:<probe@client.example>" };
        let reply = self.cmd(line);
        assert_eq!(reply.code, 250, "{line}: {reply}");
    }

    /// DATA with `msg`; returns the reply to the final dot.
    fn data(&mut self, msg: &str) -> Reply {
        let reply = self.cmd("DATA");
        assert_eq!(reply.code, 354, "DATA: {reply}");
        self.send(&dot_stuff(msg.as_bytes()));
        self.send(b".\r\n");
        self.read().expect("reply to the end of DATA")
    }

    fn quit(mut self) {
        let _ = self.cmd("QUIT");
    }
}

/// A TCP connection to `addr` from `source`: std cannot bind before
/// connecting, tokio's `TcpSocket` can.
fn bound_stream(source: Ipv4Addr, addr: SocketAddr) -> io::Result<TcpStream> {
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    let stream = rt.block_on(async {
        let socket = tokio::net::TcpSocket::new_v4()?;
        socket.bind(SocketAddr::new(source.into(), 0))?;
        tokio::time::timeout(Duration::from_secs(10), socket.connect(addr))
            .await
            .map_err(|_| io::Error::new(io::ErrorKind::TimedOut, "connect timed out"))?
    })?;
    let stream = stream.into_std()?;
    stream.set_nonblocking(false)?;
    Ok(stream)
}

/// A next hop of the hub that records what it receives.
enum Hop {
    /// Postfix's `smtp-sink`: an independent peer, but without SMTPUTF8.
    Sink(Sink),
    /// Another posthorn delivering every domain into its own Maildir, for
    /// the SMTPUTF8 tricks (the hub refuses to hand an SMTPUTF8 message to
    /// a next hop that does not offer it).
    Catcher { ph: Posthorn, mail: tempfile::TempDir, _tables: tempfile::TempDir },
}

impl Hop {
    fn start(smtputf8: bool, ip: &str) -> Hop {
        if !smtputf8 {
            return Hop::Sink(Sink::start());
        }
        let tables = tempfile::tempdir().unwrap();
        let mail = tempfile::tempdir().unwrap();
        let transport = tables.path().join("transport");
        fs::write(&transport, "*  maildir:\n").unwrap();
        let config = format!(
            "role = \"hub\"\n\n[smtp]\nlisten = [\"{ip}:0\"]\n\n[deliver]\ntransport_maps = [{}]\nmaildir_root = {}\n",
            toml_str(&format!("hash:{}", transport.display())),
            toml_str(&format!("{}/{{domain}}/{{user}}", mail.path().display())),
        );
        Hop::Catcher { ph: Posthorn::start(&config), mail, _tables: tables }
    }

    fn addr(&self) -> SocketAddr {
        match self {
            Hop::Sink(sink) => sink.addr(),
            Hop::Catcher { ph, .. } => ph.smtp_addr(),
        }
    }

    /// Every recipient received so far, lower-cased and sorted.
    fn rcpts(&self) -> Vec<String> {
        let all: Vec<String> = match self {
            Hop::Sink(sink) => sink.parsed().into_iter().flat_map(|d| d.rcpt_to).collect(),
            Hop::Catcher { mail, .. } => {
                let mut files = Vec::new();
                for domain in fs::read_dir(mail.path()).into_iter().flatten().flatten() {
                    for user in fs::read_dir(domain.path()).into_iter().flatten().flatten() {
                        for file in fs::read_dir(user.path().join("new")).into_iter().flatten().flatten() {
                            files.push(file.path());
                        }
                    }
                }
                files
                    .iter()
                    .map(|f| {
                        let data = fs::read(f).unwrap();
                        header(&data, "Delivered-To").unwrap_or_else(|| panic!("no Delivered-To in {}", f.display()))
                    })
                    .collect()
            }
        };
        sorted_lower(&all)
    }
}

/// The hub, its two next hops and its Maildir, plus what each of them
/// should have received so far.
struct Battery {
    hub: Posthorn,
    inside: Hop,
    elsewhere: Hop,
    mail: tempfile::TempDir,
    _tables: tempfile::TempDir,
    want_inside: Vec<String>,
    want_outside: Vec<String>,
    want_local: Vec<(String, String)>,
}

impl Battery {
    fn start() -> Battery {
        Battery::start_with(false)
    }

    /// `smtputf8`: next hops that offer SMTPUTF8 (see [`Hop::Catcher`]).
    fn start_with(smtputf8: bool) -> Battery {
        let inside = Hop::start(smtputf8, "127.0.0.7");
        let elsewhere = Hop::start(smtputf8, "127.0.0.8");
        let tables = tempfile::tempdir().unwrap();
        let mail = tempfile::tempdir().unwrap();
        let virtual_map = tables.path().join("virtual");
        let transport = tables.path().join("transport");
        fs::write(
            &virtual_map,
            "# Legitimate forwarding out of the relay domains: fixed targets.\n\
             fwd@relay.example         friend@elsewhere.com\n\
             @aliased.relay.example    team@elsewhere.com\n",
        )
        .unwrap();
        fs::write(
            &transport,
            format!(
                "relay.example           relay:[{in_ip}]:{in_port}\n\
                 aliased.relay.example   relay:[{in_ip}]:{in_port}\n\
                 local.example           maildir:\n\
                 # Everything else is the internet an open relay would reach.\n\
                 *                       relay:[{out_ip}]:{out_port}\n",
                in_ip = inside.addr().ip(),
                in_port = inside.addr().port(),
                out_ip = elsewhere.addr().ip(),
                out_port = elsewhere.addr().port(),
            ),
        )
        .unwrap();
        let config = format!(
            "role = \"hub\"\n\n\
             [smtp]\nlisten = [\"127.0.0.3:0\"]\n\n\
             [access]\ntrusted_networks = [\"127.0.0.1/32\"]\n\
             relay_domains = [\"relay.example\", \"aliased.relay.example\"]\n\
             local_domains = [\"local.example\"]\n\n\
             [rewrite]\nvirtual_alias_maps = [{virtual_map}]\n\n\
             [deliver]\ntransport_maps = [{transport}]\nmaildir_root = {root}\n\n\
             [relay]\ntls = \"none\"\nconnect_timeout = \"5s\"\n\n\
             [queue]\nretry_min = \"1s\"\nretry_max = \"2s\"\n",
            virtual_map = toml_str(&format!("hash:{}", virtual_map.display())),
            transport = toml_str(&format!("hash:{}", transport.display())),
            root = toml_str(&format!("{}/{{domain}}/{{user}}", mail.path().display())),
        );
        let hub = Posthorn::start(&config);
        Battery {
            hub,
            inside,
            elsewhere,
            mail,
            _tables: tables,
            want_inside: Vec::new(),
            want_outside: Vec::new(),
            want_local: Vec::new(),
        }
    }

    fn client(&self, source: Ipv4Addr) -> Client {
        let mut c = Client::connect_from(source, self.hub.smtp_addr());
        c.ehlo("client.example");
        c
    }

    /// Notes where an accepted recipient must end up.
    fn expect(&mut self, want: Want) {
        match want {
            Want::Denied | Want::Syntax | Want::NeedsSmtpUtf8 => {}
            Want::Inside(a) => self.want_inside.push(a.to_string()),
            Want::Outside(a) => self.want_outside.push(a.to_string()),
            Want::Local(d, u) => self.want_local.push((d.to_string(), u.to_string())),
            Want::HubPostmaster => self.want_outside.push(format!("postmaster@{}", self.hub.hostname())),
        }
    }

    /// One transaction from `source`: the trick's RCPT (reply checked
    /// against `want`), a control recipient, DATA.
    fn transaction(&mut self, source: Ipv4Addr, trick: &Trick, want: Want, control: &str) {
        let side = if source == UNTRUSTED { "untrusted 127.0.0.5" } else { "trusted 127.0.0.1" };
        let mut c = self.client(source);
        c.mail(trick.smtputf8);
        let reply = c.cmd(&format!("RCPT TO:{}", trick.rcpt));
        check_reply(&reply, want, &format!("{side}: RCPT TO:{}", trick.rcpt), &self.hub);
        self.expect(want);
        let reply = c.cmd(&format!("RCPT TO:<{control}>"));
        assert_eq!(reply.code, 250, "{side}: control recipient {control}: {reply}");
        self.want_inside.push(control.to_string());
        let msg = message(
            &[("From", "probe@client.example"), ("To", "undisclosed-recipients:;"), ("Subject", "relay battery")],
            "If this reached elsewhere.com, the hub is an open relay.\n",
        );
        let reply = c.data(&msg);
        assert_eq!(reply.code, 250, "{side}: end of DATA: {reply}");
        c.quit();
    }

    /// Waits until the hub has delivered everything, then checks every
    /// recipient arrived where expected and nowhere else.
    fn settle(&self) {
        let done = wait_until(secs(20), || {
            self.hub.queued_count() == 0
                && self.inside.rcpts().len() >= self.want_inside.len()
                && self.elsewhere.rcpts().len() >= self.want_outside.len()
        });
        assert!(
            done,
            "not everything delivered within 20 s: {} queued, inside got {:?} (want {:?}), elsewhere got {:?} (want {:?})",
            self.hub.queued_count(),
            self.inside.rcpts(),
            self.want_inside,
            self.elsewhere.rcpts(),
            self.want_outside
        );
        assert_eq!(self.inside.rcpts(), sorted_lower(&self.want_inside), "recipients at the relay domains' next hop");
        assert_eq!(
            self.elsewhere.rcpts(),
            sorted_lower(&self.want_outside),
            "recipients that left for elsewhere (an open relay shows here)"
        );
        for (domain, user) in &self.want_local {
            let want = self.want_local.iter().filter(|(d, u)| d == domain && u == user).count();
            let files = maildir_files(self.mail.path(), domain, user);
            assert_eq!(files.len(), want, "Maildir {domain}/{user}: {files:?}");
            for file in files {
                let text = fs::read_to_string(&file).unwrap();
                assert!(text.contains("Subject: relay battery"), "{text}");
            }
        }
        let log = self.hub.log();
        assert!(!log.contains("status=bounced"), "nothing may bounce; log:\n{log}");
    }
}

fn sorted_lower(list: &[String]) -> Vec<String> {
    let mut v: Vec<String> = list.iter().map(|s| s.to_lowercase()).collect();
    v.sort();
    v
}

/// Files in `root/domain/user/new`.
fn maildir_files(root: &Path, domain: &str, user: &str) -> Vec<std::path::PathBuf> {
    let dir = root.join(domain).join(user).join("new");
    let mut out: Vec<_> = fs::read_dir(&dir).map(|d| d.flatten().map(|e| e.path()).collect()).unwrap_or_default();
    out.sort();
    out
}

fn check_reply(reply: &Reply, want: Want, what: &str, hub: &Posthorn) {
    let ok = match want {
        Want::Denied => {
            reply.code == 554 && reply.text.starts_with("5.7.1 ") && reply.text.contains("Relay access denied")
        }
        Want::Syntax => {
            (reply.code == 501 && (reply.text.starts_with("5.1.3 ") || reply.text.starts_with("5.5.4 ")))
                || reply.code == 553
        }
        Want::NeedsSmtpUtf8 => reply.code == 553 && reply.text.starts_with("5.6.7 "),
        Want::Inside(_) | Want::Outside(_) | Want::Local(..) | Want::HubPostmaster => reply.code == 250,
    };
    assert!(ok, "{what}: got {reply}, want {want:?}; hub log:\n{}", hub.log());
}

/// The whole battery for one trick.
fn run(trick: Trick) {
    let mut b = Battery::start_with(trick.smtputf8);
    b.transaction(UNTRUSTED, &trick, trick.untrusted, "control@relay.example");
    b.settle();
    b.transaction(TRUSTED, &trick, trick.trusted, "trusted-control@relay.example");
    b.settle();
}

/// `trick!(name, "<rcpt>", untrusted, trusted)`; `trick!(utf8 name, ...)`
/// for a transaction with SMTPUTF8.
macro_rules! trick {
    (utf8 $name:ident, $rcpt:expr, $untrusted:expr, $trusted:expr) => {
        #[test]
        fn $name() {
            run(Trick { rcpt: $rcpt, smtputf8: true, untrusted: $untrusted, trusted: $trusted });
        }
    };
    ($name:ident, $rcpt:expr, $untrusted:expr, $trusted:expr) => {
        #[test]
        fn $name() {
            run(Trick { rcpt: $rcpt, smtputf8: false, untrusted: $untrusted, trusted: $trusted });
        }
    };
}

use Want::*;

// Percent hack: `%` as a second `@` for a next hop that honours it.
trick!(percent_hack, "<user%elsewhere.com@relay.example>", Denied, Inside("user%elsewhere.com@relay.example"));
trick!(
    percent_hack_in_local_domain,
    "<user%elsewhere.com@local.example>",
    Denied,
    Local("local.example", "user%elsewhere.com")
);
trick!(
    percent_hack_twice,
    "<user%elsewhere.com%relay.example@relay.example>",
    Denied,
    Inside("user%elsewhere.com%relay.example@relay.example")
);

// Source routes: RFC 5321 says drop the route and use the mailbox.
trick!(source_route, "<@relay.example:user@elsewhere.com>", Denied, Outside("user@elsewhere.com"));
trick!(source_route_two_hops, "<@relay.example,@x.example:user@elsewhere.com>", Denied, Outside("user@elsewhere.com"));
trick!(
    source_route_via_elsewhere_to_us,
    "<@elsewhere.com:user@relay.example>",
    Inside("user@relay.example"),
    Inside("user@relay.example")
);

// UUCP bang paths.
trick!(bang_path, "<elsewhere.com!user>", Syntax, Syntax);
trick!(
    bang_path_at_relay_domain,
    "<elsewhere.com!user@relay.example>",
    Denied,
    Inside("elsewhere.com!user@relay.example")
);

// Quoted local parts holding an `@`.
trick!(quoted_address_without_domain, "<\"user@elsewhere.com\">", Syntax, Syntax);
trick!(
    quoted_at_in_relay_domain,
    "<\"user@elsewhere.com\"@relay.example>",
    Denied,
    Inside("\"user@elsewhere.com\"@relay.example")
);
trick!(
    quoted_escaped_at_in_relay_domain,
    "<\"user\\@elsewhere.com\"@relay.example>",
    Denied,
    Inside("\"user\\@elsewhere.com\"@relay.example")
);
trick!(
    quoted_relay_domain_at_foreign,
    "<\"user@relay.example\"@elsewhere.com>",
    Denied,
    Outside("\"user@relay.example\"@elsewhere.com")
);
trick!(unquoted_two_ats, "<user@elsewhere.com@relay.example>", Syntax, Syntax);
trick!(unquoted_escaped_at, "<user\\@elsewhere.com@relay.example>", Syntax, Syntax);

// Address literals.
trick!(ipv4_literal, "<user@[192.0.2.1]>", Denied, Outside("user@[192.0.2.1]"));
trick!(ipv6_literal, "<user@[IPv6:2001:db8::1]>", Denied, Outside("user@[IPv6:2001:db8::1]"));
trick!(loopback_literal, "<user@[127.0.0.1]>", Denied, Outside("user@[127.0.0.1]"));
trick!(hub_own_address_literal, "<user@[127.0.0.3]>", Denied, Outside("user@[127.0.0.3]"));

// Trailing dots (not valid in an SMTP path).
trick!(trailing_dot_foreign, "<user@elsewhere.com.>", Syntax, Syntax);
trick!(trailing_dot_ours, "<user@relay.example.>", Syntax, Syntax);

// Case.
trick!(mixed_case_foreign, "<user@ElseWhere.COM>", Denied, Outside("user@ElseWhere.COM"));
trick!(mixed_case_ours, "<User@RELAY.Example>", Inside("User@RELAY.Example"), Inside("User@RELAY.Example"));

// Lookalike domains.
trick!(
    relay_domain_as_prefix,
    "<user@relay.example.elsewhere.com>",
    Denied,
    Outside("user@relay.example.elsewhere.com")
);
trick!(relay_domain_as_suffix_without_dot, "<user@evilrelay.example>", Denied, Outside("user@evilrelay.example"));
trick!(subdomain_of_relay_domain, "<user@sub.relay.example>", Denied, Outside("user@sub.relay.example"));

// UTF-8 domains.
trick!(utf8_domain_without_smtputf8, "<user@élsewhere.example>", NeedsSmtpUtf8, NeedsSmtpUtf8);
trick!(utf8 utf8_domain, "<user@élsewhere.example>", Denied, Outside("user@élsewhere.example"));
// Cyrillic "е" in "rеlay": looks like ours, is not.
trick!(utf8 utf8_homoglyph_of_relay_domain, "<user@r\u{435}lay.example>", Denied, Outside("user@r\u{435}lay.example"));
trick!(punycode_domain, "<user@xn--lsewhere-e1a.example>", Denied, Outside("user@xn--lsewhere-e1a.example"));
// A fullwidth commercial at in the local part is not an `@`: the address
// is ours and goes to our next hop unchanged.
trick!(
    utf8 fullwidth_at_in_local_part,
    "<user\u{ff20}elsewhere.com@relay.example>",
    Inside("user\u{ff20}elsewhere.com@relay.example"),
    Inside("user\u{ff20}elsewhere.com@relay.example")
);

// Empty and postmaster.
trick!(null_recipient, "<>", Syntax, Syntax);
trick!(postmaster_elsewhere, "<postmaster@elsewhere.com>", Denied, Outside("postmaster@elsewhere.com"));
trick!(bare_postmaster, "<postmaster>", HubPostmaster, HubPostmaster);

// Spaces, comments, lists, parameters.
trick!(comment_after_path, "<user@elsewhere.com> (relay.example)", Syntax, Syntax);
trick!(comment_inside_path, "<user@elsewhere.com(relay.example)>", Syntax, Syntax);
trick!(path_without_angle_brackets, "user@elsewhere.com", Syntax, Syntax);
trick!(space_before_path, " <user@elsewhere.com>", Denied, Outside("user@elsewhere.com"));
trick!(two_paths_in_one_rcpt, "<user@relay.example>,<user@elsewhere.com>", Syntax, Syntax);
trick!(
    orcpt_pointing_outside,
    "<user@relay.example> ORCPT=rfc822;victim@elsewhere.com",
    Inside("user@relay.example"),
    Inside("user@relay.example")
);

// Virtual aliases out of the relay domains: the fixed target is allowed
// forwarding; nothing lets the client pick the target.
trick!(alias_pointing_outside, "<fwd@relay.example>", Outside("friend@elsewhere.com"), Outside("friend@elsewhere.com"));
trick!(
    catch_all_pointing_outside,
    "<anyone@aliased.relay.example>",
    Outside("team@elsewhere.com"),
    Outside("team@elsewhere.com")
);
trick!(
    percent_hack_through_catch_all,
    "<user%elsewhere.com@aliased.relay.example>",
    Denied,
    Outside("team@elsewhere.com")
);
trick!(percent_hack_on_alias, "<fwd%elsewhere.com@relay.example>", Denied, Inside("fwd%elsewhere.com@relay.example"));

// A plain local user, for contrast.
trick!(local_user, "<user@local.example>", Local("local.example", "user"), Local("local.example", "user"));

/// Asserts nothing was queued and nothing reached either next hop.
fn assert_nothing_went_anywhere(b: &Battery) {
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(b.hub.queued_count(), 0, "queued; log:\n{}", b.hub.log());
    assert!(b.elsewhere.rcpts().is_empty(), "elsewhere got {:?}", b.elsewhere.rcpts());
    assert!(b.inside.rcpts().is_empty(), "inside got {:?}", b.inside.rcpts());
}

#[test]
fn xclient_cannot_claim_a_trusted_address() {
    let b = Battery::start();
    let mut c = b.client(UNTRUSTED);
    let reply = c.cmd("XCLIENT ADDR=127.0.0.1 NAME=localhost");
    assert!(reply.code >= 500, "XCLIENT: {reply}");
    let reply = c.cmd("XFORWARD ADDR=127.0.0.1");
    assert!(reply.code >= 500, "XFORWARD: {reply}");
    c.ehlo("localhost");
    c.mail(false);
    let reply = c.cmd("RCPT TO:<user@elsewhere.com>");
    check_reply(&reply, Denied, "RCPT after XCLIENT", &b.hub);
    c.quit();
    assert_nothing_went_anywhere(&b);
}

#[test]
fn helo_naming_the_hub_or_loopback_is_not_trust() {
    let b = Battery::start();
    let hostname = b.hub.hostname().to_string();
    for helo in ["localhost", "[127.0.0.1]", "[127.0.0.3]", hostname.as_str()] {
        let mut c = Client::connect_from(UNTRUSTED, b.hub.smtp_addr());
        c.ehlo(helo);
        c.mail(false);
        let reply = c.cmd("RCPT TO:<user@elsewhere.com>");
        check_reply(&reply, Denied, &format!("RCPT after EHLO {helo}"), &b.hub);
        c.quit();
    }
    assert_nothing_went_anywhere(&b);
}

#[test]
fn pipelined_data_after_refused_rcpt_queues_nothing() {
    let b = Battery::start();
    let mut c = b.client(UNTRUSTED);
    c.send(b"MAIL FROM:<probe@client.example>\r\nRCPT TO:<user@elsewhere.com>\r\nRCPT TO:<user%elsewhere.com@relay.example>\r\nDATA\r\n");
    let replies: Vec<Reply> = (0..4).map(|_| c.read().expect("pipelined reply")).collect();
    assert_eq!(replies[0].code, 250, "MAIL: {}", replies[0]);
    check_reply(&replies[1], Denied, "pipelined RCPT", &b.hub);
    check_reply(&replies[2], Denied, "pipelined RCPT", &b.hub);
    assert!(replies[3].code >= 500, "DATA without a valid recipient must fail: {}", replies[3]);
    // The client pushes the message anyway; its lines are commands now.
    c.send(b"Subject: open relay?\r\n\r\nhello\r\n.\r\n");
    let _ = c.cmd("QUIT");
    assert_nothing_went_anywhere(&b);
}

#[test]
fn header_recipients_are_not_envelope_recipients() {
    let mut b = Battery::start();
    let mut c = b.client(UNTRUSTED);
    c.mail(false);
    let reply = c.cmd("RCPT TO:<user@relay.example>");
    assert_eq!(reply.code, 250, "{reply}");
    let msg = message(
        &[
            ("From", "probe@client.example"),
            ("To", "victim@elsewhere.com"),
            ("Cc", "victim2@elsewhere.com"),
            ("Bcc", "victim3@elsewhere.com"),
            ("Resent-To", "victim4@elsewhere.com"),
            ("Subject", "relay battery"),
        ],
        "headers name elsewhere; the envelope does not.\n",
    );
    let reply = c.data(&msg);
    assert_eq!(reply.code, 250, "{reply}");
    c.quit();
    b.want_inside.push("user@relay.example".into());
    b.settle();
}

#[test]
fn auth_attempt_without_auth_configured_grants_nothing() {
    let b = Battery::start();
    let mut c = b.client(UNTRUSTED);
    // "\0alice\0secret": a PLAIN response for a server that offers no AUTH.
    let reply = c.cmd("AUTH PLAIN AGFsaWNlAHNlY3JldA==");
    assert!(reply.code >= 500, "AUTH: {reply}");
    c.mail(false);
    let reply = c.cmd("RCPT TO:<user@elsewhere.com>");
    check_reply(&reply, Denied, "RCPT after a failed AUTH", &b.hub);
    // A MAIL FROM with AUTH= claiming an identity is no login either.
    let _ = c.cmd("RSET");
    let reply = c.cmd("MAIL FROM:<probe@client.example> AUTH=<alice@relay.example>");
    if reply.code == 250 {
        let reply = c.cmd("RCPT TO:<user@elsewhere.com>");
        check_reply(&reply, Denied, "RCPT after MAIL FROM AUTH=", &b.hub);
    }
    c.quit();
    assert_nothing_went_anywhere(&b);
}
