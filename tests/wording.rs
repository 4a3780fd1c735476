//! What the operator reads (issue 14, item 11): words, not Rust.
//!
//! 1. A connection refused by the smarthost reads "Connection refused" in
//!    the log, `mailq` and `queue why`, never "(os error 111)".
//! 2. Failing over from a smarthost that greets with 421 is logged: the
//!    refusal, then the delivery through the next one.
//! 3. Times are local, as Postfix and Exim print them: the daemon's
//!    `Date:` and `Received:` fields, `mailq`, `postcat` and `exim -Mvl`
//!    follow `TZ` (Asia/Kolkata, +05:30 all year, here).
//! 4. A configuration error names the line even when it is found after
//!    parsing, and says "a whole number", not "usize".

mod harness;

use std::process::{Command, Output};

use harness::*;

fn text(out: &Output) -> String {
    format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr))
}

#[test]
fn refused_connections_are_words_without_error_numbers() {
    let dead = free_addr();
    let ph = Posthorn::start(&satellite_config(&[dead]));
    let out = ph.sendmail(&["-f", "app@vm.test", "ops@example.org"], b"Subject: x\n\nx\n");
    assert!(out.status.success(), "{}", text(&out));
    assert!(ph.wait_for_log("status=deferred", secs(20)), "{}", ph.log());
    let log = ph.log();
    assert!(log.contains("Connection refused"), "{log}");
    assert!(!log.contains("os error"), "{log}");
    // Between two attempts (retries come every second here) mailq shows
    // the reason.
    let mut mailq = String::new();
    let shown = wait_until(secs(15), || {
        mailq = text(&ph.run_as("mailq", &[], b""));
        mailq.contains("Connection refused")
    });
    assert!(shown && !mailq.contains("os error"), "{mailq}");
}

#[test]
fn failover_from_a_busy_smarthost_is_logged() {
    let busy = Scripted::start(Script::new().greeting("421 4.3.2 busy.test Service not available, try later"));
    let sink = Sink::start();
    let ph = Posthorn::start(&satellite_config(&[busy.addr(), sink.addr()]));
    let out = ph.sendmail(&["-f", "app@vm.test", "ops@example.org"], b"Subject: failover\n\nx\n");
    assert!(out.status.success(), "{}", text(&out));
    assert_eq!(sink.wait_for_parsed(1, secs(20)).len(), 1, "{}", ph.log());
    assert!(ph.wait_for_log("status=sent", secs(10)), "{}", ph.log());
    let refused = ph.log_lines(&[&busy.addr().port().to_string(), "421 4.3.2"]);
    assert_eq!(refused.len(), 1, "one line for the busy smarthost:\n{}", ph.log());
    assert!(refused[0].contains("refused to talk to us"), "{}", refused[0]);
}

/// `HH:MM` of the first `HH:MM:SS` in `text`, as minutes of the day.
fn minutes_of_day(text: &str) -> Option<i64> {
    let bytes = text.as_bytes();
    (0..bytes.len().saturating_sub(7)).find_map(|i| {
        let t = &text[i..i + 8];
        let ok = t.bytes().enumerate().all(|(j, b)| if j == 2 || j == 5 { b == b':' } else { b.is_ascii_digit() });
        ok.then(|| t[..2].parse::<i64>().unwrap() * 60 + t[3..5].parse::<i64>().unwrap())
    })
}

/// Runs `name args` with `TZ` set.
fn run_in_zone(ph: &Posthorn, tz: &str, name: &str, args: &[&str]) -> String {
    let mut cmd = Command::new(ph.link(name));
    cmd.args(args).env("POSTHORN_CONFIG", ph.config_path()).env("TZ", tz);
    let out = run_with_timeout(cmd, b"", secs(30));
    assert!(out.status.success(), "{name}: {}", text(&out));
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[test]
fn times_are_local() {
    let dead = free_addr();
    let sink = Sink::start();
    let ph = Posthorn::start_with_env(&satellite_config(&[dead]), &[("TZ", "Asia/Kolkata")]);
    let out = ph.sendmail(&["-f", "app@vm.test", "ops@example.org"], b"Subject: when\n\nx\n");
    assert!(out.status.success(), "{}", text(&out));
    assert!(ph.wait_for_log("status=deferred", secs(20)), "{}", ph.log());
    let id = queue_id_of(&ph.log_lines(&["status=deferred"])[0]).unwrap();

    // Each listing, in two zones: 5 h 30 apart.
    let offset = |name: &str, args: &[&str], pick: &dyn Fn(&str) -> String| {
        let utc = pick(&run_in_zone(&ph, "UTC", name, args));
        let india = pick(&run_in_zone(&ph, "Asia/Kolkata", name, args));
        let (u, i) = (minutes_of_day(&utc).expect(&utc), minutes_of_day(&india).expect(&india));
        (i - u).rem_euclid(24 * 60)
    };
    let arrival_line = |s: &str| s.lines().find(|l| l.starts_with("message_arrival_time")).unwrap_or("").to_string();
    let second_line = |s: &str| s.lines().nth(1).unwrap_or("").to_string();
    let first_line = |s: &str| s.lines().next().unwrap_or("").to_string();
    assert_eq!(offset("mailq", &[], &second_line), 330, "mailq");
    assert_eq!(offset("postcat", &["-q", &id], &arrival_line), 330, "postcat");
    assert_eq!(offset("exim", &["-Mvl", &id], &first_line), 330, "exim -Mvl");

    // The daemon's own fields carry its zone's offset.
    let shown = run_in_zone(&ph, "UTC", "posthorn", &["queue", "show", &id]);
    let date = shown.lines().find(|l| l.starts_with("Date: ")).unwrap_or_default();
    assert!(date.contains(" +0530 "), "{shown}");
    let received = shown.lines().skip_while(|l| !l.starts_with("Received: ")).take(3).collect::<Vec<_>>().join(" ");
    assert!(received.contains(" +0530 "), "{shown}");
    drop(sink);
}

#[test]
fn configuration_errors_name_the_line_in_words() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("posthorn.toml");
    let cases = [
        ("[smtp]\nmax_connections = 5\n\ntrusted_reserve = 5\n", ":4: smtp.trusted_reserve: "),
        (
            "[smtp]\nmax_recipients = -3\n",
            ":2: smtp.max_recipients: invalid value: integer `-3`, expected a whole number",
        ),
    ];
    for (body, expected) in cases {
        std::fs::write(&path, body).unwrap();
        let mut cmd = Command::new(BIN);
        cmd.args(["check", "-c"]).arg(&path);
        let out = run_with_timeout(cmd, b"", secs(30));
        let said = text(&out);
        assert!(!out.status.success(), "{said}");
        assert!(said.contains(&format!("{}{expected}", path.display())), "{said}");
        assert!(!said.contains("usize"), "{said}");
    }
}
