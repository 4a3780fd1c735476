//! End-to-end: the operator commands, run as the names operators type
//! (symlinks made by `posthorn install-links`) through a real shell, against
//! a satellite whose smarthost is down so that mail waits in the queue with
//! a reason. Effects are checked in the spool, never from output alone.
//!
//! Scenarios:
//! 1. `install-links` makes every name; an unknown option to any name is a
//!    usage error (exit 64).
//! 2. `mailq`, `postqueue -p`, `sendmail -bp`: Postfix's layout; `postqueue -j`.
//! 3. Runbook: `postqueue -p | grep SENDER | awk | tr | while read ... postsuper -d`
//!    deletes exactly the messages whose sender line matches.
//! 4. Runbook: `exiqgrep -i | xargs exim -Mrm`, first narrowed by `-f`;
//!    and `postmap -q KEY hash:FILE && echo OK || echo 'No match found'`.
//! 5. `postsuper` -h, -H, -r, -d with `-`, `ALL queue`, bad and unknown ids.
//! 6. `postcat -q` with -e, -h, -b and the section markers.
//! 7. `exim` -bp, -bpc, -Mf, -Mt, -Mvb, -Mvh, -Mvl, -M, -q; `exiqgrep` options.
//! 8. `posthorn queue` list/why/show/delete with selectors, dry run,
//!    confirmation threshold and the audit log.
//! 9. The daemon stopped: listing works; what needs a delivery or a notice
//!    says so and exits 75 (changes on the files: tests/surgery.rs).
//! 10. `postfix start|status|reload|flush|check|stop`.
//! 11. `postconf`, `-n`, `KEY`, Postfix names, `-h`.
//! 12. `postsuper -d` while a delivery is in flight: never delivered.

mod harness;

use harness::*;
use std::path::PathBuf;
use std::process::{Command, Output};

/// A satellite whose smarthost refuses connections, retrying only hourly,
/// so every message ends up deferred and stays there.
fn down_satellite() -> Posthorn {
    let config =
        with_lines(&satellite_config(&[free_addr()]), &["queue.retry_min = \"1h\"", "queue.retry_max = \"1h\""]);
    Posthorn::start(&config)
}

/// Submits one message per `(sender, recipients)` and waits until all are
/// deferred. Returns their queue ids, in submission order.
fn fill(ph: &Posthorn, messages: &[(&str, &[&str])]) -> Vec<String> {
    let before = ph.spool_files("deferred").len();
    for (i, (sender, rcpts)) in messages.iter().enumerate() {
        let mut args = vec!["-f", sender];
        args.extend_from_slice(rcpts);
        let body = format!("Subject: test {i}\nFrom: {sender}\n\nmessage {i} from {sender}\n");
        let out = ph.sendmail(&args, body.as_bytes());
        assert!(out.status.success(), "sendmail: {}", String::from_utf8_lossy(&out.stderr));
        // One at a time, so that queue ids follow submission order.
        let want = before + i + 1;
        assert!(
            wait_until(secs(20), || ph.spool_files("deferred").len() == want),
            "message {i} not deferred; log:\n{}",
            ph.log()
        );
    }
    let json = run(ph, "posthorn queue list --json");
    let mut ids = Vec::new();
    for (sender, _) in messages {
        let id = json
            .lines()
            .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
            .filter(|v| v["sender"] == *sender)
            .map(|v| v["queue_id"].as_str().unwrap().to_string())
            .find(|id| !ids.contains(id))
            .unwrap_or_else(|| panic!("no queued message from {sender} in\n{json}"));
        ids.push(id);
    }
    ids
}

/// The directory with the compatibility symlinks, made by `install-links`.
fn links(ph: &Posthorn) -> PathBuf {
    let dir = ph.dir().join("links");
    if !dir.join("postsuper").exists() {
        let out = ph.command(&["install-links", dir.to_str().unwrap()], b"");
        assert!(out.status.success(), "install-links: {}", String::from_utf8_lossy(&out.stderr));
    }
    dir
}

/// Runs `script` with `sh -c`, the links first on PATH, POSTHORN_CONFIG set.
fn sh(ph: &Posthorn, script: &str) -> Output {
    sh_in(ph, script, b"")
}

fn sh_in(ph: &Posthorn, script: &str, stdin: &[u8]) -> Output {
    let path = format!("{}:{}", links(ph).display(), std::env::var("PATH").unwrap_or_default());
    let mut cmd = Command::new("sh");
    cmd.arg("-c").arg(script).env("PATH", path).env("POSTHORN_CONFIG", ph.config_path()).current_dir(ph.dir());
    // `posthorn` itself on PATH too, for scripts that call it by name.
    let bin_dir = PathBuf::from(BIN).parent().unwrap().to_path_buf();
    let path = format!("{}:{}", links(ph).display(), bin_dir.display());
    cmd.env("PATH", format!("{path}:{}", std::env::var("PATH").unwrap_or_default()));
    run_with_timeout(cmd, stdin, COMMAND_TIMEOUT)
}

/// `sh -c script`, which must succeed; its stdout.
fn run(ph: &Posthorn, script: &str) -> String {
    let out = sh(ph, script);
    assert!(out.status.success(), "`{script}` exited {}; stderr:\n{}", out.status, text(&out.stderr));
    text(&out.stdout)
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

fn code(out: &Output) -> i32 {
    out.status.code().unwrap_or(-1)
}

/// Ids of the queued messages, sorted, straight from the spool directories.
fn queued_ids(ph: &Posthorn) -> Vec<String> {
    let mut ids: Vec<String> = ["incoming", "active", "deferred", "hold"]
        .iter()
        .flat_map(|s| ph.spool_files(s))
        .map(|p| p.file_name().unwrap().to_string_lossy().into_owned())
        .collect();
    ids.sort();
    ids
}

fn sorted(mut v: Vec<String>) -> Vec<String> {
    v.sort();
    v
}

#[test]
fn install_links_and_usage_errors() {
    let ph = down_satellite();
    let dir = links(&ph);
    let names = [
        "sendmail",
        "mailq",
        "postqueue",
        "postsuper",
        "postcat",
        "postconf",
        "postfix",
        "postmap",
        "exim",
        "exiqgrep",
    ];
    for name in names {
        let target = std::fs::read_link(dir.join(name)).unwrap_or_else(|e| panic!("{name}: {e}"));
        assert_eq!(std::fs::canonicalize(target).unwrap(), std::fs::canonicalize(BIN).unwrap(), "{name}");
        let out = sh(&ph, &format!("{name} -Z"));
        assert_eq!(code(&out), 64, "{name} -Z: {}", text(&out.stderr));
        assert!(text(&out.stderr).contains("usage"), "{name} -Z printed no usage: {}", text(&out.stderr));
    }
    // Again: links already in place are fine.
    let out = ph.command(&["install-links", dir.to_str().unwrap()], b"");
    assert!(out.status.success());
    assert!(text(&out.stdout).contains("already a link"), "{}", text(&out.stdout));
    assert_eq!(code(&sh(&ph, "posthorn queue frobnicate")), 64);
    assert_eq!(code(&sh(&ph, "posthorn queue delete")), 64, "a bulk action without a selection");
    let help = run(&ph, "posthorn queue delete --help");
    for flag in ["--sender", "--rcpt", "--older-than", "--state", "--error-class", "--dry-run", "--yes"] {
        assert!(help.contains(flag), "help lacks {flag}:\n{help}");
    }
}

#[test]
fn mailq_layout_and_json() {
    let ph = down_satellite();
    assert_eq!(run(&ph, "mailq"), "Mail queue is empty\n");
    let ids = fill(&ph, &[("root@vm1.test", &["ops@example.org", "dev@example.org"]), ("", &["ops@example.org"])]);
    let listing = run(&ph, "mailq");
    assert_eq!(run(&ph, "postqueue -p"), listing);
    assert_eq!(run(&ph, "sendmail -bp"), listing);
    assert_eq!(run(&ph, "posthorn queue list"), listing);

    let lines: Vec<&str> = listing.lines().collect();
    assert_eq!(lines[0], "-Queue ID-  --Size-- ----Arrival Time---- -Sender/Recipient-------");
    let id_line = |id: &str, sender: &str| {
        let line = lines.iter().find(|l| l.starts_with(id)).unwrap_or_else(|| panic!("no line for {id}:\n{listing}"));
        let fields: Vec<&str> = line.split_whitespace().collect();
        assert_eq!(fields[0], id, "{line}");
        assert!(fields[1].parse::<u64>().is_ok(), "size in {line}");
        assert_eq!(fields.len(), 7, "id, size, 4 date fields, sender: {line}");
        assert_eq!(fields[6], sender, "{line}");
        assert_eq!(line[12..20].trim_start(), fields[1], "size right-aligned in columns 13-20: {line}");
    };
    id_line(&ids[0], "root@vm1.test");
    id_line(&ids[1], "MAILER-DAEMON");
    let reasons = lines.iter().filter(|l| l.starts_with('(') && l.ends_with(')')).count();
    assert_eq!(reasons, 2, "one deferral reason per message:\n{listing}");
    let indent = " ".repeat(42);
    assert!(listing.contains(&format!("{indent}ops@example.org\n{indent}dev@example.org\n\n")), "{listing}");
    assert!(listing.ends_with(" Kbytes in 2 Requests.\n"), "{listing}");
    assert!(listing.contains("\n\n-- "), "a blank line before the footer:\n{listing}");

    let json = run(&ph, "postqueue -j");
    let objects: Vec<serde_json::Value> = json.lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    assert_eq!(objects.len(), 2);
    let first = &objects[0];
    assert_eq!(first["queue_name"], "deferred");
    assert_eq!(first["queue_id"], ids[0].as_str());
    assert_eq!(first["sender"], "root@vm1.test");
    assert!(first["arrival_time"].as_u64().unwrap() > 1_600_000_000);
    assert!(first["message_size"].as_u64().unwrap() > 0);
    assert_eq!(first["recipients"][1]["address"], "dev@example.org");
    assert!(first["recipients"][0]["delay_reason"].as_str().unwrap().contains("127."), "{first}");
    assert_eq!(objects[1]["sender"], "");
}

#[test]
fn runbook_postqueue_grep_postsuper_deletes_exactly_the_sender() {
    let ph = down_satellite();
    let ids = fill(
        &ph,
        &[
            ("ubuntu@webplatform.org", &["ops@example.org"]),
            ("alice@example.org", &["ops@example.org"]),
            ("ubuntu@webplatform.org", &["dev@example.org", "ops@example.org"]),
            // Matched by grep on its recipient line: awk then hands postsuper
            // an address, which is not a queue id, and the message stays.
            ("bob@example.org", &["ubuntu@webplatform.org"]),
        ],
    );
    let out = sh(
        &ph,
        "postqueue -p | grep ubuntu@webplatform.org | awk '{print $1}' | tr -d '*' | while read mid ; do postsuper -d $mid ; done",
    );
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert_eq!(queued_ids(&ph), sorted(vec![ids[1].clone(), ids[3].clone()]));
    let err = text(&out.stderr);
    for id in [&ids[0], &ids[2]] {
        assert!(err.contains(&format!("postsuper: {id}: removed\npostsuper: Deleted: 1 message\n")), "{err}");
    }
    assert!(err.contains("postsuper: warning: invalid mail queue id: ubuntu@webplatform.org"), "{err}");
    let audit = std::fs::read_to_string(ph.spool_dir().join("audit.log")).unwrap();
    assert_eq!(audit.lines().count(), 2, "{audit}");
    assert!(audit.lines().all(|l| l.contains("via=postsuper action=delete count=1 ids=")), "{audit}");
    // The daemon logs it as Postfix's postsuper does.
    assert!(ph.wait_for_log_count(&["/postsuper[", &format!("]: {}: removed", ids[0])], 1, secs(5)), "{}", ph.log());
}

#[test]
fn runbook_exiqgrep_xargs_exim_mrm() {
    let ph = down_satellite();
    let ids = fill(
        &ph,
        &[
            ("alice@example.org", &["ops@example.org"]),
            ("bob@example.org", &["ops@example.org"]),
            ("carol@example.org", &["x@example.net"]),
        ],
    );
    let out = sh(&ph, "exiqgrep -i -f '^<alice@' | xargs exim -Mrm");
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert_eq!(text(&out.stdout), format!("Message {} has been removed\n", ids[0]));
    assert_eq!(queued_ids(&ph), sorted(ids[1..].to_vec()));

    let out = sh(&ph, "exiqgrep -i | xargs exim -Mrm");
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert_eq!(
        text(&out.stdout),
        format!("Message {} has been removed\nMessage {} has been removed\n", ids[1], ids[2])
    );
    assert!(queued_ids(&ph).is_empty());
    assert_eq!(run(&ph, "exim -bpc"), "0\n");
}

#[test]
fn runbook_postmap_query_exit_status() {
    let ph = down_satellite();
    let virtual_map = ph.dir().join("virtual");
    std::fs::write(&virtual_map, "# aliases\nroot   ops@example.org, admin@example.org\n").unwrap();
    // The runbook line, with the table in the test's directory instead of
    // /etc/postfix/virtual.
    let line =
        |key: &str| format!("postmap -q '{key}' hash:{} && echo OK || echo 'No match found'", virtual_map.display());
    assert_eq!(run(&ph, &line("root")), "ops@example.org, admin@example.org\nOK\n");
    assert_eq!(run(&ph, &line("nobody")), "No match found\n");
}

#[test]
fn postsuper_forms() {
    let ph = down_satellite();
    let ids = fill(
        &ph,
        &[
            ("a@example.org", &["x@example.net"]),
            ("b@example.org", &["x@example.net"]),
            ("c@example.org", &["x@example.net"]),
            ("d@example.org", &["x@example.net"]),
        ],
    );
    let out = sh(&ph, &format!("postsuper -h {} -h {}", ids[0], ids[1]));
    assert_eq!(
        text(&out.stderr),
        format!(
            "postsuper: {}: placed on hold\npostsuper: {}: placed on hold\npostsuper: Placed on hold: 2 messages\n",
            ids[0], ids[1]
        )
    );
    assert_eq!(ph.spool_files("hold").len(), 2);
    let listing = run(&ph, "mailq");
    assert!(listing.contains(&format!("{}! ", ids[0])), "held messages carry '!':\n{listing}");

    let out = sh(&ph, &format!("postsuper -H {}", ids[0]));
    assert_eq!(
        text(&out.stderr),
        format!("postsuper: {}: released from hold\npostsuper: Released from hold: 1 message\n", ids[0])
    );
    assert!(wait_until(secs(10), || ph.spool_files("hold").len() == 1));

    // Invalid and unknown ids are named; the others are still done.
    let unknown = "0000000001";
    let out = sh(&ph, &format!("postsuper -d not-an-id -d {unknown} -d {}", ids[2]));
    assert!(out.status.success());
    let err = text(&out.stderr);
    assert!(err.contains("postsuper: warning: invalid mail queue id: not-an-id\n"), "{err}");
    assert!(err.contains(&format!("postsuper: warning: {unknown}: ")), "{err}");
    assert!(err.contains(&format!("postsuper: {}: removed\n", ids[2])), "{err}");
    assert!(err.ends_with("postsuper: Deleted: 1 message\n"), "{err}");
    assert!(!queued_ids(&ph).contains(&ids[2]));

    // Ids from standard input.
    let out = sh_in(&ph, "postsuper -r -", format!("{}\n", ids[3]).as_bytes());
    assert!(text(&out.stderr).contains(&format!("postsuper: {}: requeued\npostsuper: Requeued: 1 message\n", ids[3])));
    assert!(ph.wait_for_log_count(&["/postsuper[", &format!("]: {}: requeued", ids[3])], 1, secs(5)), "{}", ph.log());

    // ALL narrowed by a queue name: the held message stays.
    assert!(wait_until(secs(20), || ph.spool_files("deferred").len() == 2), "{}", ph.log());
    let out = sh(&ph, "postsuper -d ALL deferred");
    assert_eq!(text(&out.stderr), "postsuper: Deleted: 2 messages\n");
    assert_eq!(queued_ids(&ph), vec![ids[1].clone()]);
    assert_eq!(ph.spool_files("hold").len(), 1);
    let out = sh(&ph, "postsuper -d ALL");
    assert_eq!(text(&out.stderr), "postsuper: Deleted: 1 message\n");
    assert!(queued_ids(&ph).is_empty());
    assert_eq!(code(&sh(&ph, "postsuper -d ALL nosuchqueue")), 64);
}

#[test]
fn postcat_sections() {
    let ph = down_satellite();
    let ids = fill(&ph, &[("root@vm1.test", &["ops@example.org"])]);
    let id = &ids[0];
    let all = run(&ph, &format!("postcat -q {id}"));
    let lines: Vec<&str> = all.lines().collect();
    assert_eq!(lines[0], format!("*** ENVELOPE RECORDS deferred/{id} ***"));
    assert!(lines.contains(&"sender: root@vm1.test"), "{all}");
    assert!(lines.contains(&"recipient: ops@example.org"), "{all}");
    let contents = lines.iter().position(|l| *l == format!("*** MESSAGE CONTENTS deferred/{id} ***")).expect(&all);
    assert!(lines[contents + 1].starts_with("Received: "), "{all}");
    assert!(lines.contains(&"Subject: test 0"), "{all}");
    assert!(lines.contains(&"message 0 from root@vm1.test"), "{all}");
    assert_eq!(lines[lines.len() - 2], format!("*** HEADER EXTRACTED deferred/{id} ***"));
    assert_eq!(lines[lines.len() - 1], format!("*** MESSAGE FILE END deferred/{id} ***"));

    let headers = run(&ph, &format!("postcat -h -q {id}"));
    assert!(headers.starts_with("Received: ") && headers.contains("Subject: test 0\n"), "{headers}");
    assert!(!headers.contains("***") && !headers.contains("message 0 from"), "{headers}");
    assert_eq!(run(&ph, &format!("postcat -bq {id}")), "\nmessage 0 from root@vm1.test\n");
    let env = run(&ph, &format!("postcat -e -q {id}"));
    assert!(env.contains("sender: root@vm1.test\n") && env.contains("*** MESSAGE FILE END"), "{env}");
    assert!(!env.contains("Subject:"), "{env}");

    let out = sh(&ph, "postcat -q 0000000001");
    assert_eq!(code(&out), 1);
    assert_eq!(text(&out.stderr), "postcat: fatal: open queue file 0000000001: No such file or directory\n");
}

#[test]
fn exim_and_exiqgrep_forms() {
    let ph = down_satellite();
    let ids = fill(
        &ph,
        &[("alice@example.org", &["ops@example.org", "dev@example.org"]), ("bob@example.org", &["ops@other.example"])],
    );
    let bp = run(&ph, "exim -bp");
    let mut blocks = bp.split("\n\n");
    let first = blocks.next().unwrap();
    let head: Vec<&str> = first.lines().next().unwrap().split_whitespace().collect();
    assert!(head[0].ends_with('m') && head[0][..head[0].len() - 1].parse::<u32>().is_ok(), "age: {bp}");
    assert!(head[1].parse::<u64>().is_ok(), "{bp}");
    assert_eq!(&head[2..], [ids[0].as_str(), "<alice@example.org>"], "{bp}");
    assert_eq!(first.lines().skip(1).collect::<Vec<_>>(), ["          ops@example.org", "          dev@example.org"]);
    assert_eq!(run(&ph, "exim -bpc"), "2\n");

    assert_eq!(run(&ph, &format!("exim -Mf {}", ids[1])), format!("Message {} is now frozen\n", ids[1]));
    assert!(run(&ph, "exim -bp").contains(&format!("{} <bob@example.org> *** frozen ***\n", ids[1])));
    assert_eq!(run(&ph, "exiqgrep -z -i"), format!("{}\n", ids[1]));
    assert_eq!(run(&ph, "exiqgrep -x -i"), format!("{}\n", ids[0]));
    let out = sh(&ph, &format!("exim -Mf {}", ids[1]));
    assert_eq!((code(&out), text(&out.stdout)), (1, format!("Message {} is already frozen\n", ids[1])));
    assert_eq!(run(&ph, &format!("exim -Mt {}", ids[1])), format!("Message {} is no longer frozen\n", ids[1]));
    assert!(wait_until(secs(20), || ph.spool_files("deferred").len() == 2), "{}", ph.log());

    assert_eq!(run(&ph, &format!("exim -Mvb {}", ids[0])), format!("{}-D\nmessage 0 from alice@example.org\n", ids[0]));
    let vh = run(&ph, &format!("exim -Mvh {}", ids[0]));
    assert!(vh.starts_with(&format!("{}-H\n", ids[0])) && vh.contains("<alice@example.org>\n"), "{vh}");
    assert!(vh.contains("F From: alice@example.org\n"), "{vh}");
    let vl = run(&ph, &format!("exim -Mvl {}", ids[0]));
    assert!(vl.lines().next().unwrap().contains("<= alice@example.org P=local"), "{vl}");
    assert!(vl.contains("== ops@example.org: "), "{vl}");

    assert_eq!(run(&ph, "exiqgrep -c -f alice"), "1 matches out of 2 messages\n");
    assert_eq!(run(&ph, "exiqgrep -c -r 'other\\.example$'"), "1 matches out of 2 messages\n");
    assert_eq!(run(&ph, "exiqgrep -c -o 3600"), "0 matches out of 2 messages\n");
    assert_eq!(run(&ph, "exiqgrep -c -y 3600"), "2 matches out of 2 messages\n");
    assert_eq!(run(&ph, "exiqgrep -c -f ALICE"), "0 matches out of 2 messages\n", "case-sensitive, as in Perl");
    assert_eq!(run(&ph, "exiqgrep -b -f bob"), format!("{} From: <bob@example.org> To: ops@other.example\n", ids[1]));
    assert!(
        run(&ph, "exiqgrep -f bob")
            .contains(&format!(" {} <bob@example.org>\n          ops@other.example\n\n", ids[1]))
    );

    let mark = ph.log_mark();
    assert_eq!(run(&ph, &format!("exim -M {}", ids[0])), "");
    assert!(ph.wait_for_log_since(mark, &format!("{}: scheduled for delivery", ids[0]), secs(5)));
    assert_eq!(code(&sh(&ph, "exim -q")), 0);
    // One destination only: `postqueue -s` (and Exim's `-qR`).
    let mark = ph.log_mark();
    assert_eq!(run(&ph, "postqueue -s other.example"), "");
    assert!(ph.wait_for_log_since(mark, &format!("{}: scheduled for delivery", ids[1]), secs(5)));
    assert!(!ph.log()[mark..].contains(&format!("{}: scheduled", ids[0])), "{}", ph.log());
    assert_eq!(run(&ph, "exim -qR other.example"), "");
    let out = sh(&ph, "exim -Mrm 0000000001");
    assert_eq!(code(&out), 1);
    assert!(text(&out.stdout).contains("Message 0000000001 has been removed or did not exist"));
    let out = sh(&ph, "exim -Mrm 1RBuSi-0004UY-Lx");
    assert_eq!(code(&out), 64);
    assert!(text(&out.stderr).contains("malformed message id 1RBuSi-0004UY-Lx"));
}

#[test]
fn native_queue_interface() {
    let ph = down_satellite();
    let ids = fill(
        &ph,
        &[
            ("ubuntu@webplatform.org", &["ops@example.org"]),
            ("Ubuntu@WebPlatform.org", &["dev@example.org"]),
            ("alice@example.org", &["ops@example.org"]),
        ],
    );
    let json = run(&ph, "posthorn queue list --json --sender '^ubuntu@webplatform'");
    let got: Vec<serde_json::Value> = json.lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    assert_eq!(got.len(), 2, "case-insensitive selection:\n{json}");
    assert_eq!(got[0]["queue_name"], "deferred");
    assert_eq!(got[0]["recipients"][0]["error_class"], "connect");
    assert!(got[0]["attempts"].as_u64().is_some_and(|n| n >= 1), "{json}");
    assert_eq!(run(&ph, "posthorn queue list --json --error-class dns"), "");
    assert_eq!(run(&ph, "posthorn queue list --json --older-than 1h"), "");
    assert_eq!(run(&ph, "posthorn queue list --json --state deferred --rcpt '^dev@'").lines().count(), 1);

    let why = run(&ph, &format!("posthorn queue why {}", ids[2]));
    assert!(why.starts_with(&format!("{}: deferred, from <alice@example.org>", ids[2])), "{why}");
    assert!(why.contains("next attempt: 20"), "{why}");
    assert!(why.contains("<ops@example.org>: pending\n"), "{why}");
    assert!(why.contains(" deferred relay=none tls=no class=connect: "), "{why}");
    let why_json: serde_json::Value =
        serde_json::from_str(&run(&ph, &format!("posthorn queue why --json {}", ids[2]))).unwrap();
    assert_eq!(why_json["state"], "deferred");
    assert_eq!(why_json["recipients"][0]["history"][0]["status"], "deferred");
    let show = run(&ph, &format!("posthorn queue show {}", ids[2]));
    assert!(show.contains("Subject: test 2\n") && show.contains("message 2 from alice@example.org"), "{show}");
    assert_eq!(code(&sh(&ph, "posthorn queue why 0000000001")), 1);

    // Dry run: shown, nothing changed.
    let dry = run(&ph, "posthorn queue delete --sender ubuntu@ --dry-run");
    assert!(dry.ends_with("would delete 2 messages\n"), "{dry}");
    assert_eq!(queued_ids(&ph).len(), 3);
    // Above the threshold without --yes (and no terminal): refused.
    let out = sh(&ph, "posthorn queue delete --sender ubuntu@ --threshold 1 </dev/null");
    assert_eq!(code(&out), 1, "{}", text(&out.stderr));
    assert!(text(&out.stderr).contains("add --yes"), "{}", text(&out.stderr));
    assert_eq!(queued_ids(&ph).len(), 3);
    let done = run(&ph, "posthorn queue delete --sender ubuntu@ --threshold 1 --yes");
    assert!(done.ends_with("removed: 2 messages\n"), "{done}");
    assert_eq!(queued_ids(&ph), vec![ids[2].clone()]);

    let held = run(&ph, &format!("posthorn queue hold {}", ids[2]));
    assert_eq!(held, format!("{}: placed on hold\nplaced on hold: 1 message\n", ids[2]));
    assert_eq!(ph.spool_files("hold").len(), 1);
    assert_eq!(run(&ph, "posthorn queue list --json --state hold").lines().count(), 1);
    let released = run(&ph, "posthorn queue release --state hold");
    assert!(released.ends_with("released from hold: 1 message\n"), "{released}");
    assert!(wait_until(secs(20), || ph.spool_files("deferred").len() == 1), "{}", ph.log());
    let bounced = run(&ph, &format!("posthorn queue bounce {}", ids[2]));
    assert!(bounced.ends_with("returned to sender: 1 message\n"), "{bounced}");
    assert!(!queued_ids(&ph).contains(&ids[2]), "the bounced message is gone");
    assert!(ph.wait_for_log(&format!("{}: sender non-delivery notification", ids[2]), secs(10)), "{}", ph.log());

    let audit = std::fs::read_to_string(ph.spool_dir().join("audit.log")).unwrap();
    let lines: Vec<&str> = audit.lines().collect();
    assert_eq!(lines.len(), 4, "{audit}");
    let user = text(&Command::new("id").arg("-un").output().unwrap().stdout).trim().to_string();
    assert!(lines[0].contains(&format!(" user={user} ")), "{audit}");
    assert!(lines[0].ends_with(&format!("action=delete count=2 ids={},{}", ids[0], ids[1])), "{audit}");
    assert!(lines[1].ends_with(&format!("action=hold count=1 ids={}", ids[2])), "{audit}");
    assert!(lines[2].contains("action=release"), "{audit}");
    assert!(lines[3].ends_with(&format!("action=bounce count=1 ids={}", ids[2])), "{audit}");
    assert!(lines[0].split(' ').next().unwrap().ends_with('Z'), "time first: {audit}");
}

#[test]
fn daemon_stopped_listing_works_deliveries_refused() {
    let mut ph = down_satellite();
    let ids = fill(&ph, &[("alice@example.org", &["ops@example.org"])]);
    let before = run(&ph, "mailq");
    assert!(ph.stop().success());
    assert_eq!(run(&ph, "mailq"), before);
    assert_eq!(run(&ph, "exiqgrep -i"), format!("{}\n", ids[0]));
    assert!(run(&ph, &format!("posthorn queue why {}", ids[0])).contains("class=connect"));
    let id = &ids[0];
    // Deleting, holding and releasing work on the files (tests/surgery.rs);
    // what needs a delivery or a notice needs the daemon.
    for script in [
        format!("postqueue -i {id}"),
        format!("exim -M {id}"),
        format!("posthorn queue bounce {id}"),
        "postqueue -f".into(),
        "exim -q".into(),
    ] {
        let out = sh(&ph, &script);
        assert_eq!(code(&out), 75, "{script}: {}", text(&out.stderr));
        assert!(text(&out.stderr).contains("daemon is not running"), "{script}: {}", text(&out.stderr));
    }
    assert_eq!(queued_ids(&ph), ids);
    let out = sh(&ph, "postfix status");
    assert_eq!(code(&out), 1);
    assert!(text(&out.stderr).contains("is not running"));
}

/// Stops a daemon started with `postfix start` when the test ends, however.
struct StopOnDrop(PathBuf);

impl Drop for StopOnDrop {
    fn drop(&mut self) {
        if let Ok(pid) = std::fs::read_to_string(self.0.join("posthorn.pid")) {
            let _ = Command::new("kill").arg("-9").arg(pid.trim()).status();
        }
    }
}

#[test]
fn postfix_start_status_stop() {
    let dir = tempfile::tempdir().unwrap();
    let spool = dir.path().join("spool");
    let config = dir.path().join("posthorn.toml");
    // `postfix start` logs to syslog unless told otherwise; with no syslog
    // daemon at the socket, the daemon's own file gets the lines.
    let no_syslog = format!("log.syslog_socket = {}", toml_str(&dir.path().join("no-syslog").display().to_string()));
    let body = with_lines(
        &satellite_config(&[free_addr()]),
        &["queue.retry_min = \"1h\"", "queue.retry_max = \"1h\"", &no_syslog],
    );
    std::fs::write(
        &config,
        // Started as root in CI: stays root (see tests/privilege.rs).
        format!("user = \"root\"\nspool = {}\nhostname = \"vm9.test\"\n{body}", toml_str(&spool.display().to_string())),
    )
    .unwrap();
    let _guard = StopOnDrop(spool.clone());
    let postfix = |arg: &str| {
        let mut cmd = Command::new(BIN);
        cmd.args(["postfix", "-c", config.to_str().unwrap(), arg]).env_remove("POSTHORN_CONFIG");
        run_with_timeout(cmd, b"", COMMAND_TIMEOUT)
    };
    assert_eq!(code(&postfix("status")), 1);
    let out = postfix("start");
    assert!(out.status.success(), "start: {}", text(&out.stderr));
    assert!(text(&out.stderr).contains("starting the posthorn mail system"));
    assert_eq!(code(&postfix("start")), 1, "already running");
    let out = postfix("status");
    assert!(out.status.success());
    let pid = std::fs::read_to_string(spool.join("posthorn.pid")).unwrap();
    assert!(text(&out.stderr).contains(&format!("is running: PID: {}", pid.trim())), "{}", text(&out.stderr));
    assert!(postfix("reload").status.success());
    assert!(postfix("flush").status.success());
    assert!(postfix("check").status.success(), "{}", text(&postfix("check").stdout));
    let log = || std::fs::read_to_string(spool.join("posthorn.log")).unwrap_or_default();
    assert!(wait_until(secs(5), || log().contains("reload: configuration")), "{}", log());
    assert!(log().contains("warning: cannot log to syslog at "), "{}", log());
    // A configuration that no longer loads is refused, with file, line and
    // key; the daemon goes on with the one it has.
    let good = std::fs::read_to_string(&config).unwrap();
    std::fs::write(&config, good.replace("[queue]", "[queue]\npickup_interval = \"soon\"")).unwrap();
    let out = postfix("reload");
    assert_eq!(code(&out), 78, "{}", text(&out.stderr));
    assert!(text(&out.stderr).contains("queue.pickup_interval"), "{}", text(&out.stderr));
    std::fs::write(&config, good).unwrap();
    assert!(postfix("status").status.success());
    let out = postfix("stop");
    assert!(out.status.success(), "stop: {}", text(&out.stderr));
    assert!(!spool.join("posthorn.pid").exists());
    assert_eq!(code(&postfix("status")), 1);
    assert_eq!(code(&postfix("stop")), 1);
    assert_eq!(code(&postfix("bogus")), 64);
}

#[test]
fn postconf_forms() {
    let ph = down_satellite();
    let all = run(&ph, "postconf");
    for line in ["role = satellite", "smtp.max_message_size = 52428800", "queue.retry_min = 1h", "relay.tls = none"] {
        assert!(all.lines().any(|l| l == line), "no `{line}` in\n{all}");
    }
    assert!(all.contains(&format!("hostname = {}\n", ph.hostname())));
    let non_default = run(&ph, "postconf -n");
    let keys: Vec<&str> = non_default.lines().map(|l| l.split(" = ").next().unwrap()).collect();
    assert!(keys.contains(&"relay.smarthosts") && keys.contains(&"queue.retry_min"), "{non_default}");
    assert!(!keys.contains(&"smtp.max_message_size") && !keys.contains(&"role"), "{non_default}");
    assert_eq!(run(&ph, "postconf message_size_limit relay.tls"), "message_size_limit = 52428800\nrelay.tls = none\n");
    assert_eq!(run(&ph, "postconf -h myhostname"), format!("{}\n", ph.hostname()));
    assert_eq!(run(&ph, "postconf -h queue_directory"), format!("{}\n", ph.spool_dir().display()));
    let out = sh(&ph, "postconf no_such_parameter");
    assert_eq!(code(&out), 0, "Postfix warns and exits 0");
    assert_eq!(text(&out.stderr), "postconf: warning: no_such_parameter: unknown parameter\n");
}

#[test]
fn delete_during_delivery_in_flight_is_never_delivered() {
    // The sink holds its answer to DATA for 8 s: the delivery is in flight.
    let sink = Sink::start_with(&["-w", "8"]);
    let ph = Posthorn::start(&satellite_config(&[sink.addr()]));
    let out = ph.sendmail(&["-f", "app@vm1.test", "ops@example.org"], b"Subject: slow\n\nhello\n");
    assert!(out.status.success());
    assert!(wait_until(secs(20), || ph.spool_files("active").len() == 1), "never active; log:\n{}", ph.log());
    // Well inside the DATA wait: the client has sent DATA by now.
    std::thread::sleep(std::time::Duration::from_millis(500));
    let id = ph.spool_files("active")[0].file_name().unwrap().to_string_lossy().into_owned();
    let out = sh(&ph, &format!("postsuper -d {id}"));
    assert_eq!(text(&out.stderr), format!("postsuper: {id}: removed\npostsuper: Deleted: 1 message\n"));
    assert!(queued_ids(&ph).is_empty());
    assert!(!ph.spool_dir().join("data").join(&id).exists(), "body removed too");
    assert!(ph.wait_for_log(&format!("{id}: delivery stopped by operator action"), secs(5)), "{}", ph.log());
    // Past the sink's wait: nothing arrived, nothing came back.
    std::thread::sleep(secs(10));
    assert!(sink.messages().is_empty(), "a deleted message was delivered");
    assert!(queued_ids(&ph).is_empty());
    assert!(ph.log_lines(&[&id, "status=sent"]).is_empty(), "{}", ph.log());
}
