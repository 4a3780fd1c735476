//! Logs that the mail ecosystem's own tools read, unchanged (issue 13).
//!
//! 1. A hub (`log.syslog_name = "postfix"`) and a satellite (the default
//!    name, `posthorn`) log through a real rsyslogd, facility `mail`, into
//!    `mail.log`-style files. The hub delivers, defers, bounces, expires,
//!    rejects relay attempts and refuses AUTH; the satellite relays to it.
//!    Then:
//!    - `pflogsumm` counts received/delivered/deferred/bounced/rejected and
//!      bytes as the test made them (`--syslog-name=posthorn` for the
//!      satellite);
//!    - `fail2ban-regex` with the shipped `postfix` filter matches every
//!      relay attempt, and in `mode=auth` every failed AUTH;
//!    - Debian's `prometheus-postfix-exporter` tails the hub's file and
//!      counts the same events, with no unsupported smtpd, smtp or cleanup
//!      line (qmgr's expiry line is unsupported by it, as Postfix's is);
//!    - `mailgraph` counts received, sent, bounced and rejected.
//! 2. `log.format = "json"`: `jq` reads every line of the stream; fields
//!    keep their types.
//! 3. `log.to = "file:..."`: the file renamed under load and SIGHUP loses
//!    no line.
//! 4. journald (started here when the machine has the binary and none is
//!    running): `journalctl QUEUE_ID=...` finds a message's lines with the
//!    tag and priorities.

mod harness;

use harness::*;
use std::collections::BTreeMap;
use std::fs;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};

/// A private rsyslogd: reads a socket in its directory, writes mail
/// facility lines by program name (`postfix` to `hub.log`, `posthorn` to
/// `sat.log`), anything else to `other.log`.
struct Rsyslog {
    dir: tempfile::TempDir,
    child: Child,
}

impl Rsyslog {
    fn start() -> Rsyslog {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path().display().to_string();
        // No rate limit: the default would drop a busy daemon's lines.
        let conf = format!(
            "global(workDirectory=\"{d}\")\n\
             module(load=\"imuxsock\" SysSock.Use=\"off\")\n\
             input(type=\"imuxsock\" Socket=\"{d}/log.sock\" RateLimit.Interval=\"0\")\n\
             if $syslogfacility-text == \"mail\" and $programname == \"postfix\" then {{\n\
               action(type=\"omfile\" file=\"{d}/hub.log\" template=\"RSYSLOG_TraditionalFileFormat\")\n\
               stop\n\
             }}\n\
             if $syslogfacility-text == \"mail\" and $programname == \"posthorn\" then {{\n\
               action(type=\"omfile\" file=\"{d}/sat.log\" template=\"RSYSLOG_TraditionalFileFormat\")\n\
               stop\n\
             }}\n\
             *.* action(type=\"omfile\" file=\"{d}/other.log\")\n"
        );
        fs::write(dir.path().join("rsyslog.conf"), conf).unwrap();
        for f in ["hub.log", "sat.log"] {
            fs::write(dir.path().join(f), "").unwrap();
        }
        let mut cmd = Command::new("rsyslogd");
        cmd.args(["-n", "-f"]).arg(dir.path().join("rsyslog.conf")).arg("-i").arg(dir.path().join("pid"));
        cmd.stdout(Stdio::null()).stderr(Stdio::null());
        die_with_parent(&mut cmd);
        let child = cmd.spawn().expect("rsyslogd (installed by .ci/run: apt-get install rsyslog)");
        let socket = dir.path().join("log.sock");
        assert!(wait_until(secs(10), || socket.exists()), "rsyslogd made no socket");
        Rsyslog { dir, child }
    }

    fn socket(&self) -> PathBuf {
        self.dir.path().join("log.sock")
    }

    fn file(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    fn read(&self, name: &str) -> String {
        fs::read_to_string(self.file(name)).unwrap_or_default()
    }
}

impl Drop for Rsyslog {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// `[log]` lines sending a daemon's lines to `rsyslog` under `name`.
fn syslog_lines(rsyslog: &Rsyslog, name: &str) -> Vec<String> {
    vec![
        "log.to = \"syslog\"".to_string(),
        format!("log.syslog_name = {}", toml_str(name)),
        format!("log.syslog_socket = {}", toml_str(&rsyslog.socket().display().to_string())),
    ]
}

/// Runs a tool and returns its stdout; panics with its stderr on failure.
fn run(program: &str, args: &[&str]) -> String {
    let mut cmd = Command::new(program);
    cmd.args(args);
    let out = run_with_timeout(cmd, b"", secs(60));
    assert!(out.status.success(), "{program} {args:?}: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// pflogsumm's grand totals: `received`, `delivered`, ..., `bytes received`.
fn pflogsumm_totals(report: &str) -> BTreeMap<String, u64> {
    let mut totals = BTreeMap::new();
    for line in report.lines() {
        let mut words = line.split_whitespace();
        let (Some(n), Some(what)) = (words.next(), words.next()) else { continue };
        let Ok(n) = n.parse::<u64>() else { continue };
        let what = match what {
            "bytes" => format!("bytes {}", words.next().unwrap_or("")),
            w => w.to_string(),
        };
        totals.entry(what).or_insert(n);
    }
    totals
}

/// A Python program that tries to relay from 127.0.0.5 (not trusted):
/// argv: host, port. Prints each RCPT reply code.
const STRANGER: &str = "import smtplib, sys\n\
    s = smtplib.SMTP(sys.argv[1], int(sys.argv[2]), timeout=30, source_address=('127.0.0.5', 0))\n\
    s.ehlo('stranger.test')\n\
    s.mail('spam@stranger.test')\n\
    print(s.rcpt('victim@elsewhere.test')[0])\n\
    print(s.rcpt('other@elsewhere.test')[0])\n\
    s.quit()\n\
    s = smtplib.SMTP(sys.argv[1], int(sys.argv[2]), timeout=30, source_address=('127.0.0.5', 0))\n\
    s.ehlo('stranger.test')\n\
    for pw in ['guess1', 'guess2', 'guess3']:\n\
    \x20   s.user, s.password = 'alice', pw\n\
    \x20   try:\n\
    \x20       s.auth('PLAIN', s.auth_plain)\n\
    \x20   except smtplib.SMTPAuthenticationError as e:\n\
    \x20       print(e.smtp_code)\n\
    s.quit()\n";

fn python(program: &str, addr: SocketAddr) -> String {
    let mut cmd = Command::new("python3");
    cmd.args(["-c", program, &addr.ip().to_string(), &addr.port().to_string()]);
    let out = run_with_timeout(cmd, b"", secs(60));
    assert!(out.status.success(), "python: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// The exporter's metrics, as `name{labels} value` → value.
fn scrape(addr: SocketAddr) -> BTreeMap<String, f64> {
    use std::io::{Read, Write};
    let mut stream = std::net::TcpStream::connect(addr).unwrap();
    stream.write_all(b"GET /metrics HTTP/1.0\r\nHost: localhost\r\n\r\n").unwrap();
    let mut text = String::new();
    stream.read_to_string(&mut text).unwrap();
    text.lines()
        .filter(|l| l.starts_with("postfix_"))
        .filter_map(|l| {
            let (name, value) = l.rsplit_once(' ')?;
            Some((name.to_string(), value.parse().ok()?))
        })
        .collect()
}

/// mailgraph's per-minute updates summed: sent, received, bounced, rejected.
fn mailgraph_counts(log: &Path, dir: &Path) -> [u64; 4] {
    let out = run(
        "mailgraph",
        &["-c", "-v", "-l", &log.display().to_string(), "--daemon-rrd", &dir.display().to_string(), "--rrd-name=mg"],
    );
    let mut sums = [0u64; 4];
    for line in out.lines().filter(|l| l.starts_with("update ")) {
        let fields: Vec<u64> = line[7..].split(':').skip(1).take(4).filter_map(|f| f.parse().ok()).collect();
        for (sum, v) in sums.iter_mut().zip(fields) {
            *sum += v;
        }
    }
    sums
}

#[test]
fn postfix_log_tools_read_a_hub_and_a_satellite() {
    let rsyslog = Rsyslog::start();
    let ok_sink = Sink::start();
    let soft_sink = Sink::start_with(&["-r", "RCPT"]);
    let hard_sink = Sink::start_with(&["-f", "RCPT"]);
    let dir = tempfile::tempdir().unwrap();
    let hop = |s: &Sink| format!("relay:[{}]:{}", s.addr().ip(), s.addr().port());
    let transport = dir.path().join("transport");
    fs::write(
        &transport,
        format!("ok.test {}\ndefer.test {}\nbounce.test {}\n", hop(&ok_sink), hop(&soft_sink), hop(&hard_sink)),
    )
    .unwrap();
    let users = dir.path().join("users");
    fs::write(&users, "").unwrap();
    let aliases = dir.path().join("virtual");
    fs::write(&aliases, "a@ok.test alice@ok.test\n").unwrap();

    // The exporter tails from the end of the file: start it first.
    let exporter_addr = free_addr();
    let mut exporter = Command::new("prometheus-postfix-exporter");
    exporter
        .arg(format!("--web.listen-address={exporter_addr}"))
        .arg(format!("--postfix.logfile_path={}", rsyslog.file("hub.log").display()))
        .arg("--postfix.showq_path=/nonexistent/showq")
        .arg("--log.unsupported")
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    die_with_parent(&mut exporter);
    let mut exporter = exporter.spawn().expect("prometheus-postfix-exporter (installed by .ci/run)");
    assert!(
        wait_until(secs(10), || std::net::TcpStream::connect(exporter_addr).is_ok()),
        "the exporter did not listen"
    );

    let mut hub_lines = syslog_lines(&rsyslog, "postfix");
    hub_lines.extend([
        "access.trusted_networks = [\"127.0.0.1/32\"]".to_string(),
        format!("deliver.transport_maps = [{}]", toml_str(&transport.display().to_string())),
        format!("rewrite.virtual_alias_maps = [{}]", toml_str(&aliases.display().to_string())),
        // The deferred message expires after a few tries.
        "queue.max_lifetime = \"3s\"".to_string(),
    ]);
    let hub_lines: Vec<&str> = hub_lines.iter().map(String::as_str).collect();
    let base = "role = \"hub\"\n\n[smtp]\nlisten = [\"127.0.0.1:0\"]\n\n[relay]\ntls = \"none\"\n\n[queue]\nretry_min = \"1s\"\nretry_max = \"1s\"\n";
    let auth = format!(
        "\n[auth]\nusers = {}\nallow_plaintext = true\nfailure_delay = \"0s\"\nmax_failures = 10\n",
        toml_str(&users.display().to_string())
    );
    let hub = Posthorn::start(&format!("{}{auth}", with_lines(base, &hub_lines)));
    let out = hub.command(&["auth", "add", "alice"], b"wonderland\n");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(hub.command(&["reload"], b"").status.success());

    let sat_lines = syslog_lines(&rsyslog, "posthorn");
    let sat_lines: Vec<&str> = sat_lines.iter().map(String::as_str).collect();
    let sat = Posthorn::start(&with_lines(&satellite_config(&[hub.smtp_addr()]), &sat_lines));

    // Through the satellite: three messages from `sendmail`.
    for n in 0..3 {
        let msg = format!("From: app@vm.test\nTo: ops{n}@ok.test\nSubject: via satellite {n}\n\nbody {n}\n");
        let out = sat.sendmail(&["-f", "app@vm.test", &format!("ops{n}@ok.test")], msg.as_bytes());
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    }
    // Straight to the hub: two messages (one to two recipients), one
    // that bounces, one that is deferred until it expires.
    let m = |s: &str| message(&[("From", "app@ok.test"), ("Subject", s)], "text\n");
    smtplib_send(hub.smtp_addr(), "app@ok.test", &["a@ok.test"], &m("one")).unwrap();
    smtplib_send(hub.smtp_addr(), "app@ok.test", &["b@ok.test", "c@ok.test"], &m("two")).unwrap();
    smtplib_send(hub.smtp_addr(), "app@ok.test", &["nobody@bounce.test"], &m("bounces")).unwrap();
    smtplib_send(hub.smtp_addr(), "app@ok.test", &["late@defer.test"], &m("expires")).unwrap();
    // A stranger: two relay attempts, three failed AUTH attempts.
    let replies = python(STRANGER, hub.smtp_addr());
    assert_eq!(replies.lines().collect::<Vec<_>>(), ["554", "554", "535", "535", "535"], "log:\n{}", hub.log());

    // 3 relayed + 3 direct + 2 notices (bounce, expiry) reach the good sink.
    let got = ok_sink.wait_for_parsed(7, secs(30));
    assert_eq!(got.iter().map(|d| d.rcpt_to.len()).sum::<usize>(), 8, "hub:\n{}", rsyslog.read("hub.log"));
    assert!(wait_until(secs(20), || hub.queued_count() == 0 && sat.queued_count() == 0), "{}", hub.log());
    let hub_log_has =
        |pattern: &str, n: usize| wait_until(secs(10), || count_lines(&rsyslog.read("hub.log"), &[pattern]) >= n);
    assert!(hub_log_has("]: disconnect from", 6), "{}", rsyslog.read("hub.log"));
    assert!(hub_log_has(": removed", 9), "{}", rsyslog.read("hub.log"));
    let hub_log = rsyslog.read("hub.log");
    let sat_log = rsyslog.read("sat.log");
    assert!(rsyslog.read("other.log").is_empty(), "every line is facility mail: {}", rsyslog.read("other.log"));
    assert!(hub_log.contains(" postfix/smtpd["), "{hub_log}");
    assert!(sat_log.contains(" posthorn/pickup["), "{sat_log}");
    assert!(hub_log.contains("status=expired, returned to sender"), "{hub_log}");
    assert!(hub_log.contains(": to=<alice@ok.test>, orig_to=<a@ok.test>, relay="), "{hub_log}");
    // AUTH counts as accepted only when it succeeded (Postfix's auth=0/3).
    assert!(hub_log.contains("]: disconnect from unknown[127.0.0.5] ehlo=1 auth=0/3 quit=1 commands=2/5"), "{hub_log}");

    // What the tools must find, counted from the run itself.
    let sizes: u64 = hub_log
        .lines()
        .filter(|l| l.contains(" postfix/qmgr[") && l.contains(", nrcpt="))
        .filter(|l| {
            let id = queue_id_of(l).unwrap();
            hub_log.lines().any(|c| c.contains(&format!("]: {id}: client=")))
        })
        .map(|l| l.split("size=").nth(1).unwrap().split(',').next().unwrap().parse::<u64>().unwrap())
        .sum();

    // pflogsumm, as a Postfix admin runs it.
    let report = run("pflogsumm", &[&rsyslog.file("hub.log").display().to_string()]);
    let t = pflogsumm_totals(&report);
    let want = [("received", 7), ("delivered", 8), ("deferred", 1), ("bounced", 1), ("rejected", 2)];
    for (what, n) in want {
        assert_eq!(t.get(what).copied(), Some(n), "pflogsumm {what}:\n{report}\nlog:\n{hub_log}");
    }
    assert_eq!(t.get("bytes received").copied(), Some(sizes), "{report}");
    let report = run("pflogsumm", &["--syslog-name=posthorn", &rsyslog.file("sat.log").display().to_string()]);
    let t = pflogsumm_totals(&report);
    assert_eq!((t.get("received").copied(), t.get("delivered").copied()), (Some(3), Some(3)), "{report}\n{sat_log}");

    // fail2ban's shipped filters.
    let hub_file = rsyslog.file("hub.log").display().to_string();
    let matched = |filter: &str| {
        let out = run("fail2ban-regex", &["--print-all-matched", &hub_file, filter]);
        let n = out
            .lines()
            .find_map(|l| l.trim().strip_prefix("Failregex: ")?.split_whitespace().next()?.parse::<u64>().ok())
            .unwrap_or_else(|| panic!("fail2ban-regex {filter}: {out}"));
        (n, out)
    };
    let (n, out) = matched("/etc/fail2ban/filter.d/postfix.conf");
    assert_eq!(n, 2, "relay attempts:\n{out}");
    let (n, out) = matched("postfix[mode=auth]");
    assert_eq!(n, 3, "failed AUTH:\n{out}");

    // The Postfix exporter. It tails the file on its own schedule: wait
    // until it has counted the last message's lines before reading on.
    let read_all = |m: &BTreeMap<String, f64>| {
        let get = |k: &str| m.get(k).copied().unwrap_or(0.0);
        get("postfix_qmgr_messages_removed_total") >= 9.0 && get("postfix_cleanup_messages_processed_total") >= 9.0
    };
    wait_until(secs(10), || read_all(&scrape(exporter_addr)));
    let m = scrape(exporter_addr);
    let get = |k: &str| m.get(k).copied().unwrap_or(0.0);
    assert_eq!(get("postfix_smtpd_sasl_authentication_failures_total"), 3.0, "{m:?}");
    assert_eq!(get("postfix_smtpd_messages_rejected_total{code=\"554\"}"), 2.0, "{m:?}");
    assert_eq!(get("postfix_qmgr_messages_removed_total"), 9.0, "{m:?}");
    assert_eq!(get("postfix_cleanup_messages_processed_total"), 9.0, "{m:?}");
    // Every delivery line (sent, bounced, each deferral) carries delays=.
    let smtp_lines = count_lines(&hub_log, &[" postfix/smtp[", ", delays="]);
    // Each line gives four observations (a, b, c, d); this exporter's
    // build files them all under an empty `stage` label.
    let observed: f64 =
        m.iter().filter(|(k, _)| k.starts_with("postfix_smtp_delivery_delay_seconds_count")).map(|(_, v)| v).sum();
    assert_eq!(observed, 4.0 * smtp_lines as f64, "{m:?}");
    assert!(get("postfix_smtp_status_deferred") >= 1.0, "{m:?}");
    for service in ["smtpd", "smtp", "cleanup"] {
        let key = format!("postfix_unsupported_log_entries_total{{service=\"{service}\"}}");
        assert_eq!(get(&key), 0.0, "{service} lines the exporter cannot read: {m:?}\n{hub_log}");
    }
    // qmgr's expiry line is Postfix's own, which this exporter does not know.
    assert_eq!(get("postfix_unsupported_log_entries_total{service=\"qmgr\"}"), 1.0, "{m:?}");
    let _ = exporter.kill();
    let _ = exporter.wait();

    // mailgraph counts by minute and writes a minute out at the first
    // event of a later one: a (made-up) event two minutes on closes the run.
    let stamp = hub_log.lines().last().unwrap()[..15].to_string();
    let later = later_minute(&stamp);
    let copy = dir.path().join("mailgraph.log");
    fs::write(&copy, format!("{hub_log}{later} vm postfix/smtpd[1]: NOQUEUE: reject: RCPT from unknown[192.0.2.1]: 554 5.7.1 <x@y.test>: Relay access denied; from=<a@b.test> to=<x@y.test> proto=ESMTP helo=<h>\n")).unwrap();
    let [sent, received, bounced, rejected] = mailgraph_counts(&copy, dir.path());
    // All eight deliveries went out by SMTP from the hub.
    assert_eq!((sent, received, bounced, rejected), (8, 7, 1, 2), "mailgraph:\n{hub_log}");
}

/// The syslog timestamp `stamp` (`Dec  5 03:41:00`) moved two minutes on.
fn later_minute(stamp: &str) -> String {
    let (day, time) = stamp.split_at(7);
    let mut parts: Vec<u32> = time.split(':').map(|p| p.parse().unwrap()).collect();
    parts[1] += 2;
    if parts[1] >= 60 {
        parts[1] -= 60;
        parts[0] = (parts[0] + 1) % 24;
    }
    format!("{day}{:02}:{:02}:{:02}", parts[0], parts[1], parts[2])
}

#[test]
fn json_lines_are_json_to_the_last_line() {
    let sink = Sink::start();
    let config = with_lines(&satellite_config(&[sink.addr()]), &["log.format = \"json\""]);
    let sat = Posthorn::start(&config);
    smtplib_send(sat.smtp_addr(), "app@vm.test", &["ops@example.org"], &message(&[("Subject", "j")], "x\n")).unwrap();
    sink.wait_for_messages(1, secs(15));
    assert!(sat.wait_for_log("\"event\":\"delivery\"", secs(10)), "{}", sat.log());
    let log = sat.log();
    let path = sat.dir().join("stream.json");
    fs::write(&path, &log).unwrap();
    // jq reads the whole stream: listening, ready and every log line.
    let all = run("jq", &["-c", ".", &path.display().to_string()]);
    assert_eq!(all.lines().count(), log.lines().count(), "{log}");
    let delivery = run("jq", &["-c", "select(.event == \"delivery\")", &path.display().to_string()]);
    let v: serde_json::Value = serde_json::from_str(delivery.lines().next().unwrap()).unwrap();
    assert!(v["delay"].is_number(), "{v}");
    assert_eq!(v["status"], "sent");
    assert_eq!(v["to"], "ops@example.org");
    assert_eq!(v["service"], "smtp");
    assert!(v["queue_id"].is_string() && v["relay"].is_string(), "{v}");
    let queued = run("jq", &["-c", "select(.event == \"queued\")", &path.display().to_string()]);
    let q: serde_json::Value = serde_json::from_str(queued.lines().next().unwrap()).unwrap();
    assert!(q["size"].is_u64() && q["nrcpt"].is_u64(), "{q}");
    assert_eq!(q["queue_id"], v["queue_id"]);
    assert!(log.lines().any(|l| l.contains("\"event\":\"ready\"")), "{log}");
}

#[test]
fn a_log_file_renamed_and_reopened_on_sighup_loses_no_line() {
    let sink = Sink::start();
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("mail.log");
    let to = format!("log.to = {}", toml_str(&format!("file:{}", file.display())));
    let sat = Posthorn::start(&with_lines(&satellite_config(&[sink.addr()]), &[&to]));
    let pid = sat.pid().unwrap();
    let rotated = dir.path().join("mail.log.1");
    let sessions = 40;
    for n in 0..sessions {
        smtplib_send(sat.smtp_addr(), "app@vm.test", &["ops@example.org"], &message(&[("Subject", "r")], "x\n"))
            .unwrap();
        if n == sessions / 2 {
            // logrotate without copytruncate: rename, then signal.
            fs::rename(&file, &rotated).unwrap();
            let _ = Command::new("kill").args(["-HUP", &pid.to_string()]).status();
        }
    }
    sink.wait_for_messages(sessions, secs(30));
    let both = || fs::read_to_string(&rotated).unwrap_or_default() + &fs::read_to_string(&file).unwrap_or_default();
    assert!(wait_until(secs(10), || count_lines(&both(), &[": removed"]) == sessions), "{}", both());
    let text = both();
    assert_eq!(count_lines(&text, &["]: connect from "]), sessions, "{text}");
    assert_eq!(count_lines(&text, &["]: disconnect from "]), sessions, "{text}");
    assert!(!fs::read_to_string(&file).unwrap().is_empty(), "lines go to the new file after SIGHUP");
    use std::os::unix::fs::PermissionsExt;
    assert_eq!(fs::metadata(&file).unwrap().permissions().mode() & 0o777, 0o640);
}

#[test]
fn journald_gets_native_fields() {
    let socket = Path::new("/run/systemd/journal/socket");
    let binary = Path::new("/lib/systemd/systemd-journald");
    let mut own = None;
    // A socket file left by a journald that has gone is not a journald.
    let alive = || std::os::unix::net::UnixDatagram::unbound().and_then(|s| s.connect(socket)).is_ok();
    if !alive() {
        if !binary.exists() || !rustix::process::geteuid().is_root() {
            eprintln!("no journald here and none can be started: skipped");
            return;
        }
        let mut cmd = Command::new(binary);
        cmd.stdout(Stdio::null()).stderr(Stdio::null());
        die_with_parent(&mut cmd);
        own = Some(cmd.spawn().unwrap());
        assert!(wait_until(secs(10), alive), "journald made no socket");
    }
    let sink = Sink::start();
    let config = with_lines(&satellite_config(&[sink.addr()]), &["log.to = \"journald\""]);
    let sat = Posthorn::start(&config);
    smtplib_send(sat.smtp_addr(), "app@vm.test", &["ops@example.org"], &message(&[("Subject", "jd")], "x\n")).unwrap();
    sink.wait_for_messages(1, secs(15));
    // The daemon's stderr has only the readiness lines; find the id in the journal.
    let pid = sat.pid().unwrap().to_string();
    let lines = || {
        let out = run("journalctl", &["--no-pager", "-o", "json", &format!("SYSLOG_PID={pid}")]);
        out.lines().filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok()).collect::<Vec<_>>()
    };
    assert!(wait_until(secs(10), || lines()
        .iter()
        .any(|l| l["MESSAGE"].as_str().is_some_and(|m| m.ends_with(": removed")))));
    let all = lines();
    let removed = all.iter().find(|l| l["MESSAGE"].as_str().unwrap().ends_with(": removed")).unwrap();
    let id = removed["QUEUE_ID"].as_str().unwrap().to_string();
    assert_eq!(removed["SYSLOG_IDENTIFIER"], "posthorn/qmgr");
    assert_eq!(removed["PRIORITY"], "6");
    assert_eq!(removed["SYSLOG_FACILITY"], "2");
    let out = run("journalctl", &["--no-pager", "-o", "json", &format!("QUEUE_ID={id}")]);
    let by_id: Vec<serde_json::Value> = out.lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    let idents: Vec<&str> = by_id.iter().filter_map(|l| l["SYSLOG_IDENTIFIER"].as_str()).collect();
    for service in ["posthorn/smtpd", "posthorn/qmgr", "posthorn/smtp"] {
        assert!(idents.contains(&service), "{service} missing: {idents:?}");
    }
    let client = by_id.iter().find(|l| l["MESSAGE"].as_str().unwrap().contains(": client=")).unwrap();
    assert_eq!(client["CLIENT_ADDR"], "127.0.0.1");
    let warning = all.iter().find(|l| l["PRIORITY"] == "4");
    assert!(warning.is_none_or(|w| w["MESSAGE"].as_str().unwrap().starts_with("warning: ")), "{warning:?}");
    if let Some(mut child) = own {
        let _ = child.kill();
        let _ = child.wait();
    }
}

#[test]
fn postfix_start_logs_to_syslog_by_default() {
    let rsyslog = Rsyslog::start();
    let dir = tempfile::tempdir().unwrap();
    let spool = dir.path().join("spool");
    let config = dir.path().join("posthorn.toml");
    let socket = format!("log.syslog_socket = {}", toml_str(&rsyslog.socket().display().to_string()));
    let body = with_lines(&satellite_config(&[free_addr()]), &[&socket]);
    let text = format!("user = \"root\"\nspool = {}\n{body}", toml_str(&spool.display().to_string()));
    fs::write(&config, text).unwrap();
    let postfix = |arg: &str| {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_posthorn"));
        cmd.args(["postfix", "-c", config.to_str().unwrap(), arg]).env_remove("POSTHORN_CONFIG");
        run_with_timeout(cmd, b"", secs(30))
    };
    let out = postfix("start");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let started = wait_until(secs(10), || rsyslog.read("sat.log").contains(" posthorn/master["));
    // Stopping is tests/operator.rs's subject; here it only cleans up.
    if !postfix("stop").status.success()
        && let Ok(pid) = fs::read_to_string(spool.join("posthorn.pid"))
    {
        let _ = Command::new("kill").args(["-9", pid.trim()]).status();
    }
    assert!(
        started,
        "sat.log: {}\nposthorn.log: {}",
        rsyslog.read("sat.log"),
        fs::read_to_string(spool.join("posthorn.log")).unwrap_or_default()
    );
    // The daemon's own file holds only the readiness lines.
    let own = fs::read_to_string(spool.join("posthorn.log")).unwrap();
    assert!(own.lines().all(|l| l.starts_with("listening ") || l == "ready" || l == "loaded"), "{own}");
}
