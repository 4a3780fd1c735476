//! End-to-end: one trace id finds a message on both hops.
//!
//! Scenarios:
//! 1. A satellite stamps `X-Posthorn-Trace` (its queue id) on a `sendmail`
//!    submission and passes it to its hub (posthorn, offering
//!    `XPOSTHORN-TRACE`) as `TRACE=`. The hub's next hop is dead, so the
//!    message waits there: the trace id from the satellite's log finds the
//!    hub's accept and delivery lines (both ids on them) and, with `posthorn queue find`,
//!    the message in the hub's queue; so does its Message-ID.
//! 2. On the satellite itself (smarthost down) `queue find` takes the trace
//!    id, the Message-ID with or without `<>`, and says so when nothing matches.
//! 3. Through the hub's SMTP content filter (issue 14, item 10): the copy
//!    the filter reinjects keeps the satellite's trace id, so `queue find`
//!    finds it; delivered to a next hop that is not posthorn (smtp-sink),
//!    the message arrives without `X-Posthorn-Trace`.

mod harness;

use harness::*;

fn stdout(out: &std::process::Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

const MESSAGE: &[u8] = b"From: root@vm12.internal\nTo: ops@example.net\nSubject: backup failed\n\
Message-ID: <trace-test-1@vm12.internal>\n\nsee /var/log/backup.log\n";

#[test]
fn satellite_trace_id_finds_the_message_in_the_hubs_log_and_queue() {
    let dead = free_addr();
    let hub_body = format!(
        "role = \"hub\"\n\n[smtp]\nlisten = [\"127.0.0.1:0\"]\n\n[relay]\nsmarthosts = [\"{dead}\"]\ntls = \"none\"\n\
         connect_timeout = \"2s\"\n\n[queue]\nretry_min = \"1h\"\nretry_max = \"1h\"\n"
    );
    let hub = Posthorn::start(&hub_body);
    let sat = Posthorn::start(&satellite_config(&[hub.smtp_addr()]));

    let out = sat.sendmail(&["-f", "root@vm12.internal", "ops@example.net"], MESSAGE);
    assert!(out.status.success(), "sendmail: {}", String::from_utf8_lossy(&out.stderr));
    assert!(sat.wait_for_log_count(&["to=<ops@example.net>", "status=sent"], 1, secs(20)), "{}", sat.log());

    // The satellite's queue id is the trace id (its accept line shows the id).
    let accepted = sat.log_lines(&["/qmgr[", "from=<root@vm12.internal>"]);
    assert_eq!(accepted.len(), 1, "satellite log:\n{}", sat.log());
    let trace = queue_id_of(&accepted[0]).unwrap();

    // The hub's `client=` line names it after Postfix's fields, as Postfix
    // names a previous hop's id (`orig_queue_id=`).
    let orig = format!("orig_queue_id={trace}");
    assert!(hub.wait_for_log(&orig, secs(10)), "hub log:\n{}", hub.log());
    let hub_line = hub.log_lines(&[&orig]).remove(0);
    assert!(hub_line.contains(": client=unknown[127.0.0.1], orig_queue_id="), "{hub_line}");
    let hub_id = queue_id_of(&hub_line).unwrap();
    assert_ne!(hub_id, trace);
    // The hub's own lines follow its id: the accept line and the (failed)
    // delivery attempt.
    // (qmgr's line follows smtpd's a moment later.)
    let queued = format!("{hub_id}: from=<root@vm12.internal>");
    assert!(hub.wait_for_log(&queued, secs(10)), "{}", hub.log());
    assert_eq!(hub.log_lines(&[&queued]).len(), 1, "{}", hub.log());
    assert!(
        hub.wait_for_log_count(&[&format!("{hub_id}: to=<ops@example.net>"), "status=deferred"], 1, secs(15)),
        "hub log:\n{}",
        hub.log()
    );

    // And `queue find` finds it in the hub's queue, by trace id and by Message-ID.
    let found = hub.command(&["queue", "find", &trace], b"");
    assert!(found.status.success(), "queue find: {}", String::from_utf8_lossy(&found.stderr));
    let text = stdout(&found);
    assert!(text.starts_with(&format!("{hub_id} ")), "{text}");
    assert!(text.contains(&format!("trace={trace}")), "{text}");
    let by_mid = hub.command(&["queue", "find", "<trace-test-1@vm12.internal>"], b"");
    assert!(stdout(&by_mid).starts_with(&format!("{hub_id} ")), "{}", stdout(&by_mid));

    // The header travelled with the message, once.
    let shown = stdout(&hub.command(&["queue", "show", &hub_id], b""));
    assert_eq!(shown.matches(&format!("X-Posthorn-Trace: {trace}")).count(), 1, "{shown}");
}

#[test]
fn queue_find_on_the_satellite() {
    let sat = Posthorn::start(&satellite_config(&[free_addr()]));
    let out = sat.sendmail(&["-f", "root@vm12.internal", "ops@example.net"], MESSAGE);
    assert!(out.status.success(), "sendmail: {}", String::from_utf8_lossy(&out.stderr));
    assert!(sat.wait_for_log("from=<root@vm12.internal>", secs(20)), "{}", sat.log());
    let line = sat.log_lines(&["from=<root@vm12.internal>"]).remove(0);
    let trace = queue_id_of(&line).unwrap();

    for key in [trace.as_str(), "trace-test-1@vm12.internal", "<trace-test-1@vm12.internal>"] {
        let found = sat.command(&["queue", "find", key], b"");
        assert!(found.status.success(), "{key}: {}", String::from_utf8_lossy(&found.stderr));
        assert!(stdout(&found).starts_with(&format!("{trace} ")), "{key}: {}", stdout(&found));
    }
    let none = sat.command(&["queue", "find", "nothing@here"], b"");
    assert_eq!(none.status.code(), Some(1));
    assert!(stdout(&none).is_empty());
}

#[test]
fn the_trace_id_survives_the_content_filter_and_stays_inside_the_fleet() {
    let dir = tempfile::tempdir().unwrap();
    let mut sink = Sink::start_stopped();
    let filter_addr = free_addr();
    let hub_body = format!(
        "role = \"hub\"\n\n[smtp]\nlisten = [\"127.0.0.1:0\"]\n\n[relay]\nsmarthosts = [\"{}\"]\ntls = \"none\"\n\
         connect_timeout = \"2s\"\n\n[queue]\nretry_min = \"1s\"\nretry_max = \"1s\"\n\n[filter]\n\
         content_filter = \"smtp:[{}]:{}\"\nreinject_listen = \"127.0.0.1:0\"\n",
        sink.addr(),
        filter_addr.ip(),
        filter_addr.port()
    );
    let hub = Posthorn::start(&hub_body);
    let mut filter = SmtpFilter::new(dir.path(), filter_addr, hub.reinject_addr());
    filter.start();
    let sat = Posthorn::start(&satellite_config(&[hub.smtp_addr()]));

    let out = sat.sendmail(&["-f", "root@vm12.internal", "ops@example.net"], MESSAGE);
    assert!(out.status.success(), "sendmail: {}", String::from_utf8_lossy(&out.stderr));
    assert!(sat.wait_for_log_count(&["to=<ops@example.net>", "status=sent"], 1, secs(20)), "{}", sat.log());
    let accepted = sat.log_lines(&["/qmgr[", "from=<root@vm12.internal>"]);
    let trace = queue_id_of(&accepted[0]).unwrap();

    // The filtered copy waits for the (stopped) sink; the trace id finds it.
    assert!(hub.wait_for_log_count(&["to=<ops@example.net>", "status=deferred"], 1, secs(20)), "{}", hub.log());
    let found = hub.command(&["queue", "find", &trace], b"");
    let text = stdout(&found);
    assert!(found.status.success(), "queue find: {text}\n{}", hub.log());
    let hub_id = text.split_whitespace().next().unwrap_or_default().to_string();
    let shown = stdout(&hub.command(&["queue", "show", &hub_id], b""));
    assert!(shown.contains("X-Filtered: yes"), "queue find found the copy before the filter:\n{shown}");

    // Leaving the fleet, the header stays behind.
    sink.restart();
    let got = sink.wait_for_parsed(1, secs(20));
    assert_eq!(got[0].header("X-Filtered").as_deref(), Some("yes"), "{got:?}");
    assert_eq!(got[0].header("X-Posthorn-Trace"), None, "{got:?}");
    assert_eq!(got[0].header("Message-ID").as_deref(), Some("<trace-test-1@vm12.internal>"));
}
