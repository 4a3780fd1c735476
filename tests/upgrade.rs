//! Upgrade: a spool written by posthorn 0.1.0 (the release before the
//! `message` ground floor and typed attempt records) loads and delivers.
//!
//! `tests/fixtures/spool-0.1.0/` holds files that the 0.1.0 binary wrote
//! itself, a satellite whose smarthost first refused connections, then
//! greylisted with `451 4.7.1`:
//! - deferred: a plain message; one with two recipients; an 8-bit message
//!   with RET, ENVID, NOTIFY and ORCPT; a greylisted one whose history holds
//!   the remote reply; one picked up from the maildrop;
//! - hold: a message put on hold with `postsuper -h`;
//! - maildrop: a `sendmail` drop made while the daemon was down.
//!
//! The test copies them into a fresh instance's spool, starts it with its
//! smarthost down, checks the listings, then brings the smarthost up,
//! releases the held message and flushes, and reads every message back.

mod harness;

use harness::*;

#[test]
fn spool_of_0_1_0_loads_and_delivers() {
    // The fixture's retry times are long past: with the smarthost down
    // until the listings are checked, nothing leaves before that.
    let mut sink = Sink::start_stopped();
    let config = spool_0_1_0_config(sink.addr());
    let mut ph = Posthorn::start(&config);
    ph.stop();
    install_spool_0_1_0(&ph.spool_dir(), &["data", "deferred", "hold", "maildrop"]);
    ph.restart();

    // Listings read the old envelopes, typed history included.
    let out = ph.command(&["queue", "why", "HORTZ59IUL"], b"");
    let why = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "queue why: {why}");
    assert!(why.contains("451 4.7.1 Greylisted, try again later"), "{why}");
    assert!(why.contains("deferred"), "{why}");
    let out = ph.command(&["postqueue", "-p"], b"");
    let listing = String::from_utf8_lossy(&out.stdout);
    for id in ["HORSBLX12J", "HORSBM3MUH", "HORSBMC88O", "HORTZ59IUK", "HORTZ59IUL"] {
        assert!(listing.contains(id), "{id} missing from mailq:\n{listing}");
    }
    assert!(listing.contains("HORSBQJ470!"), "the held message is listed as held:\n{listing}");

    sink.restart();
    let out = ph.command(&["postsuper", "-H", "HORSBQJ470"], b"");
    assert!(out.status.success(), "postsuper -H: {}", String::from_utf8_lossy(&out.stderr));
    let out = ph.command(&["postqueue", "-f"], b"");
    assert!(out.status.success(), "postqueue -f: {}", String::from_utf8_lossy(&out.stderr));

    // 6 queued messages and the maildrop drop; one has two recipients.
    let got = sink.wait_for_parsed(7, secs(30));
    assert_eq!(got.len(), 7, "{got:?}");
    let mut rcpts: Vec<String> = got.iter().flat_map(|d| d.rcpt_to.clone()).collect();
    rcpts.sort();
    assert_eq!(
        rcpts,
        [
            "a@example.org",
            "b@example.net",
            "dsn@example.org",
            "grey@example.org",
            "hold@example.org",
            "ops@example.org",
            "root@example.org",
            "root@example.org"
        ]
    );
    let eight = got.iter().find(|d| d.rcpt_to == ["dsn@example.org"]).unwrap();
    assert!(eight.text().contains("café au lait"), "the 8-bit body arrives intact: {eight:?}");
    assert!(eight.mail_params.iter().any(|p| p == "BODY=8BITMIME"), "{:?}", eight.mail_params);
    let held = got.iter().find(|d| d.rcpt_to == ["hold@example.org"]).unwrap();
    assert_eq!(held.header("Subject").as_deref(), Some("held"));
    assert!(ph.wait_for_log("HORTZ59IUL: removed", secs(10)), "{}", ph.log());
    // "removed" is logged when the removal is decided; the files go in
    // the next batch of unlinks.
    assert!(wait_until(secs(10), || ph.queued_count() == 0), "{}", ph.log());
}
