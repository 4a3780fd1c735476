//! Queue ids that Postfix log tools accept (issue 13, item 4), and the old
//! ids of a spool an earlier release wrote.
//!
//! New ids are eleven characters of base 31, digits and upper-case
//! consonants; earlier releases wrote ten of base 36 (`HORTZ59IUL`), which
//! mailgraph and logwatch skip for their vowels. The test installs the
//! messages of `tests/fixtures/spool-0.1.0/` (written by 0.1.0 itself, old
//! ids) and an old-form `id-lease` a year ahead, then starts the daemon
//! with its smarthost down:
//! 1. every compatibility command finds the old messages by their old ids
//!    (`mailq`, `postcat -q`, `posthorn queue show`, `exiqgrep -i`,
//!    `exim -Mvh`), and removes them (`postsuper -d`, `exim -Mrm`);
//! 2. new mail gets new-form ids: vowel-free, matched by mailgraph's own
//!    regex (run in Perl), decoding above the old lease, in arrival order
//!    under `sort` in the C and en_US locales, and listed after the old
//!    messages;
//! 3. with the smarthost up, old and new mail is delivered; after a restart
//!    on the empty queue the lease, now in the new form, keeps new ids
//!    above all earlier ones.

mod harness;

use harness::*;
use std::fs;
use std::path::Path;
use std::process::{Command, Output};
use std::time::{SystemTime, UNIX_EPOCH};

/// mailgraph's pattern for the line that counts a received message
/// (`/usr/sbin/mailgraph`, Postfix section).
const MAILGRAPH: &str = r"/^(?:[\dA-F]+|[\dB-DF-HJ-NP-TV-Zb-df-hj-np-tv-z]+): client=/";

const NEW_ALPHABET: &str = "0123456789BCDFGHJKLMNPQRSTVWXYZ";

/// The microseconds an id of either form stands for (a test's own reading
/// of the format, not the crate's).
fn decode(id: &str) -> u64 {
    let (base, alphabet) = match id.len() {
        11 => (31, NEW_ALPHABET),
        10 => (36, "0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZ"),
        _ => panic!("not a queue id: {id:?}"),
    };
    id.chars().fold(0, |acc, c| acc * base + alphabet.find(c).unwrap_or_else(|| panic!("{id:?}")) as u64)
}

/// `v` in the ten-character base-36 form of earlier releases.
fn old_form(mut v: u64) -> String {
    let digits = b"0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZ";
    let mut out = [b'0'; 10];
    for slot in out.iter_mut().rev() {
        *slot = digits[(v % 36) as usize];
        v /= 36;
    }
    String::from_utf8(out.to_vec()).unwrap()
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

fn ok(out: &Output, what: &str) -> String {
    assert!(out.status.success(), "{what}: {}{}", text(&out.stdout), text(&out.stderr));
    text(&out.stdout)
}

/// Submits one message over SMTP and returns the id of its `queued as` reply.
fn submit(ph: &Posthorn, rcpt: &str) -> String {
    let mut smtp = RawSmtp::connect(ph.smtp_addr()).unwrap();
    smtp.ehlo("client.example.test").unwrap();
    let body = message(&[("From", "app@vm1.example.test"), ("To", rcpt), ("Subject", "new id")], "hello\r\n");
    let reply = smtp.send("app@vm1.example.test", &[rcpt], body.as_bytes()).unwrap();
    assert!(reply.is_positive(), "{reply:?}");
    smtp.quit().unwrap();
    reply.text.rsplit(' ').next().unwrap().to_string()
}

/// The lines of `input` that mailgraph's regex matches, run by Perl.
fn mailgraph_matches(input: &str) -> Vec<String> {
    // Where mailgraph is installed, the pattern is still the one it uses.
    if let Ok(script) = fs::read_to_string("/usr/sbin/mailgraph") {
        let pattern = MAILGRAPH.trim_matches('/');
        assert!(script.contains(pattern), "/usr/sbin/mailgraph no longer matches ids with {pattern}");
    }
    let mut cmd = Command::new("perl");
    cmd.args(["-ne", &format!("print if {MAILGRAPH}")]);
    ok(&run_with_timeout(cmd, input.as_bytes(), secs(10)), "perl").lines().map(str::to_string).collect()
}

/// `lines` through `sort` with LC_ALL=`locale` (from `locpath` when set).
fn sort_in(locale: &str, locpath: Option<&Path>, lines: &[String]) -> Vec<String> {
    let mut cmd = Command::new("sort");
    cmd.env("LC_ALL", locale);
    if let Some(dir) = locpath {
        cmd.env("LOCPATH", dir);
    }
    let input = lines.join("\n") + "\n";
    ok(&run_with_timeout(cmd, input.as_bytes(), secs(10)), "sort").lines().map(str::to_string).collect()
}

/// An en_US.UTF-8 locale compiled into `dir` (the machine may have none
/// installed; `locales` ships its source). Checked to be in effect: it
/// sorts `b1` before `Z0`, where C sorts by byte.
fn en_us(dir: &Path) -> std::path::PathBuf {
    let out = dir.join("locales");
    fs::create_dir_all(&out).unwrap();
    let mut cmd = Command::new("localedef");
    cmd.args(["-i", "en_US", "-f", "UTF-8"]).arg(out.join("en_US.UTF-8"));
    let made = run_with_timeout(cmd, b"", secs(60));
    assert!(out.join("en_US.UTF-8").exists(), "localedef en_US.UTF-8: {}", text(&made.stderr));
    let probe = sort_in("en_US.UTF-8", Some(&out), &["Z0".into(), "b1".into()]);
    assert_eq!(probe, ["b1", "Z0"], "the en_US locale is not in effect");
    out
}

#[test]
fn old_ids_keep_working_and_new_ids_suit_postfix_log_tools() {
    let mut sink = Sink::start_stopped();
    let config = spool_0_1_0_config(sink.addr());
    let mut ph = Posthorn::start(&config);
    ph.stop();
    install_spool_0_1_0(&ph.spool_dir(), &["data", "deferred", "hold"]);
    // An earlier release's lease, a year ahead of now: every new id must
    // decode above it, though as a string (`HP…`) it sorts after them all.
    let now_us = SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_micros() as u64;
    let old_lease = now_us + 365 * 86_400 * 1_000_000;
    fs::write(ph.spool_dir().join("id-lease"), format!("{}\n", old_form(old_lease))).unwrap();
    ph.restart();

    // 1. Old ids, in every command that takes or shows one.
    let old = ["HORSBLX12J", "HORSBM3MUH", "HORSBMC88O", "HORSBQJ470", "HORTZ59IUK", "HORTZ59IUL"];
    let listing = ok(&ph.run_as("mailq", &[], b""), "mailq");
    for id in old {
        assert!(listing.contains(id), "{id} missing from mailq:\n{listing}");
    }
    let cat = ok(&ph.run_as("postcat", &["-q", "HORTZ59IUK"], b""), "postcat -q");
    assert!(cat.contains("root@example.org"), "{cat}");
    let show = ok(&ph.command(&["queue", "show", "HORTZ59IUL"], b""), "queue show");
    assert!(show.contains("grey@example.org"), "{show}");
    let listed = ok(&ph.run_as("exiqgrep", &["-i"], b""), "exiqgrep -i");
    assert_eq!(listed.lines().collect::<Vec<_>>(), old, "exiqgrep -i lists the old ids, oldest first");
    let header = ok(&ph.run_as("exim", &["-Mvh", "HORSBMC88O"], b""), "exim -Mvh");
    assert!(header.starts_with("HORSBMC88O-H\n"), "{header}");
    let out = ph.run_as("postsuper", &["-d", "HORSBLX12J"], b"");
    let said = text(&out.stderr);
    assert!(out.status.success() && said.contains("Deleted: 1 message"), "postsuper -d: {said}");
    assert!(!ph.spool_dir().join("deferred/HORSBLX12J").exists(), "postsuper -d left it: {said}");
    let out = ok(&ph.run_as("exim", &["-Mrm", "HORSBM3MUH"], b""), "exim -Mrm");
    assert!(out.contains("Message HORSBM3MUH has been removed"), "{out}");
    ok(&ph.run_as("postsuper", &["-H", "HORSBQJ470"], b""), "postsuper -H");

    // 2. New ids.
    let new: Vec<String> =
        ["n1@example.org", "n2@example.org", "n3@example.org"].iter().map(|r| submit(&ph, r)).collect();
    let old_max = old.iter().map(|i| decode(i)).max().unwrap();
    for id in &new {
        assert_eq!(id.len(), 11, "{id}");
        assert!(id.chars().all(|c| NEW_ALPHABET.contains(c)), "{id}: not digits and upper-case consonants");
        assert!(decode(id) > old_lease && decode(id) > old_max, "{id} does not decode above the old lease");
    }
    let line = |id: &str| format!("{id}: client=unknown[127.0.0.1]");
    let lines: String = new.iter().map(String::as_str).chain(old).map(|i| line(i) + "\n").collect();
    let matched = mailgraph_matches(&lines);
    let expected: Vec<String> = new.iter().map(|i| line(i)).collect();
    assert_eq!(matched, expected, "mailgraph counts the new ids, and only those: the old ones hold vowels");
    let mut reversed = new.clone();
    reversed.reverse();
    let locales = en_us(ph.dir());
    assert_eq!(sort_in("C", None, &reversed), new, "C locale");
    assert_eq!(sort_in("en_US.UTF-8", Some(&locales), &reversed), new, "en_US locale");
    // The listing runs in arrival order: the old messages first.
    assert!(wait_until(secs(10), || ph.queued_count() == 7), "{}", ph.log());
    let listing = ok(&ph.run_as("mailq", &[], b""), "mailq");
    let at = |id: &str| listing.find(id).unwrap_or_else(|| panic!("{id} missing from mailq:\n{listing}"));
    let order = ["HORSBMC88O", "HORSBQJ470", "HORTZ59IUK", "HORTZ59IUL", &new[0], &new[1], &new[2]];
    assert!(order.windows(2).all(|w| at(w[0]) < at(w[1])), "not in arrival order:\n{listing}");

    // 3. Delivery, then a restart on the empty queue.
    sink.restart();
    ok(&ph.run_as("postqueue", &["-f"], b""), "postqueue -f");
    let got = sink.wait_for_parsed(7, secs(30));
    let mut rcpts: Vec<String> = got.iter().flat_map(|d| d.rcpt_to.clone()).collect();
    rcpts.sort();
    let want = [
        "dsn@example.org",
        "grey@example.org",
        "hold@example.org",
        "n1@example.org",
        "n2@example.org",
        "n3@example.org",
        "root@example.org",
    ];
    assert_eq!(rcpts, want, "{}", ph.log());
    assert!(ph.wait_for_log("HORTZ59IUL: removed", secs(10)), "{}", ph.log());
    assert!(ph.wait_for_log(&format!("{}: removed", new[2]), secs(10)), "{}", ph.log());
    assert!(wait_until(secs(10), || ph.queued_count() == 0), "{}", ph.log());
    ph.restart();
    let lease = fs::read_to_string(ph.spool_dir().join("id-lease")).unwrap();
    assert_eq!(lease.trim().len(), 11, "the lease is kept in the new form: {lease:?}");
    assert!(decode(lease.trim()) > decode(&new[2]));
    let after = submit(&ph, "n4@example.org");
    assert!(decode(&after) > decode(&new[2]) && after > new[2], "{after} after {}", new[2]);
}
