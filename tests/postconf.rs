//! End-to-end: `postconf` as configuration management uses it, run as
//! `postconf` (a symlink, as `install-links` makes) through a real shell.
//!
//! Scenarios:
//! 1. Every key is listed with its value, set or not: every key the
//!    README's configuration examples show, and the sections with no
//!    example block (`[filter]`).
//! 2. Postfix names answer with Postfix's syntax; `mail_version`, also
//!    with `-d`; an unknown name warns and exits 0, as Postfix's does.
//! 3. `-n` on a hub's file names `role = hub` and exactly the keys that
//!    differ from the defaults; `-d` prints the defaults.
//! 4. `-e` on the README's commented example changes only the edited
//!    lines (comments, order, mode kept); `-X` removes a key, `-#`
//!    comments it out.
//! 5. An invalid `-e` changes nothing and names the key; so does an
//!    unknown name.
//! 6. A config-management loop of `postconf -e`, then `postfix reload`:
//!    the running daemon refuses a message over the new size limit with
//!    552, and so does a restarted one.

mod harness;

use harness::*;
use std::fs;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

/// Runs `script` with `sh -c`, `postconf` and `postfix` (links to the
/// binary) first on PATH and `POSTHORN_CONFIG` pointing at `config`.
fn sh(config: &Path, script: &str) -> Output {
    let bin = config.parent().unwrap().join("bin");
    if !bin.join("postconf").exists() {
        let mut cmd = Command::new(BIN);
        cmd.arg("install-links").arg(&bin);
        let out = run_with_timeout(cmd, b"", secs(60));
        assert!(out.status.success(), "install-links: {}", text(&out.stderr));
    }
    let mut cmd = Command::new("sh");
    cmd.arg("-c")
        .arg(script)
        .env("PATH", format!("{}:{}", bin.display(), std::env::var("PATH").unwrap_or_default()))
        .env("POSTHORN_CONFIG", config)
        .current_dir(config.parent().unwrap());
    run_with_timeout(cmd, b"", secs(60))
}

/// `sh(config, script)`, which must exit 0; its stdout.
fn run(config: &Path, script: &str) -> String {
    let out = sh(config, script);
    assert!(out.status.success(), "`{script}` exited {}; stderr:\n{}", out.status, text(&out.stderr));
    text(&out.stdout)
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

/// A directory holding `posthorn.toml` with `body`; not a running daemon.
fn config_file(body: &str) -> (tempfile::TempDir, PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("posthorn.toml");
    fs::write(&path, body).unwrap();
    (dir, path)
}

/// `key = value` lines as pairs (`key =` for an empty value).
fn pairs(listing: &str) -> Vec<(String, String)> {
    listing
        .lines()
        .map(|l| match l.split_once(" = ") {
            Some((k, v)) => (k.to_string(), v.to_string()),
            None => {
                (l.strip_suffix(" =").unwrap_or_else(|| panic!("not `key = value`: {l}")).to_string(), String::new())
            }
        })
        .collect()
}

/// The ```toml blocks of README.md, each parsed.
fn readme_examples() -> Vec<toml::Table> {
    let readme = fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("README.md")).unwrap();
    let mut blocks = Vec::new();
    let mut current: Option<String> = None;
    for line in readme.lines() {
        match (&mut current, line.trim_end()) {
            (None, "```toml") => current = Some(String::new()),
            (Some(block), "```") => {
                blocks.push(block.parse::<toml::Table>().unwrap_or_else(|e| panic!("README block: {e}\n{block}")));
                current = None;
            }
            (Some(block), _) => {
                block.push_str(line);
                block.push('\n');
            }
            (None, _) => {}
        }
    }
    assert!(blocks.len() >= 4, "README's configuration examples not found");
    blocks
}

/// The keys a file sets: top-level keys and `section.key`.
fn keys_of(table: &toml::Table) -> Vec<String> {
    let mut keys = Vec::new();
    for (k, v) in table {
        match v {
            toml::Value::Table(section) => keys.extend(section.keys().map(|leaf| format!("{k}.{leaf}"))),
            _ => keys.push(k.clone()),
        }
    }
    keys
}

/// The README's main configuration example (the block that sets `role`).
fn readme_main_example() -> String {
    let readme = fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("README.md")).unwrap();
    let start = readme.find("```toml\nrole = ").expect("README's main example") + "```toml\n".len();
    let len = readme[start..].find("```").unwrap();
    readme[start..start + len].to_string()
}

#[test]
fn every_key_is_listed() {
    let (_dir, config) = config_file("spool = \"spool\"\n");
    let listed = pairs(&run(&config, "postconf"));
    let keys: Vec<&str> = listed.iter().map(|(k, _)| k.as_str()).collect();
    let mut expected: Vec<String> = readme_examples().iter().flat_map(keys_of).collect();
    expected.extend(
        ["filter.content_filter", "filter.reinject_listen", "filter.pipe_timeout", "filter.domains"].map(String::from),
    );
    let missing: Vec<&String> = expected.iter().filter(|k| !keys.contains(&k.as_str())).collect();
    assert!(missing.is_empty(), "keys of the README that `postconf` does not list: {missing:?}\n{keys:?}");
    let mut unique = keys.clone();
    unique.sort();
    unique.dedup();
    assert_eq!(unique.len(), keys.len(), "a key listed twice: {keys:?}");
    // Unset keys print their default, or empty where unset means "none".
    let get = |k: &str| listed.iter().find(|(key, _)| key == k).map(|(_, v)| v.as_str());
    assert_eq!(get("filter.pipe_timeout"), Some("5m"));
    assert_eq!(get("auth.max_failures"), Some("5"));
    assert_eq!(get("tls.cert"), Some(""));
    assert_eq!(get("log.syslog_facility"), Some("mail"));
    assert_eq!(get("smtp.bare_newline"), Some("normalize"));
    assert_eq!(get("dkim.keys"), Some(""));
    assert_eq!(get("metrics.listen"), Some(""));
}

#[test]
fn postfix_names_answer_in_postfix_syntax() {
    let body = "spool = \"spool\"\n[rewrite]\nvirtual_alias_maps = [\"hash:/etc/postfix/virtual\"]\n\
                [deliver]\ntransport_maps = [\"hash:/etc/posthorn/transport\"]\n\
                [relay]\nsmarthosts = [\"[10.0.0.6]:25\", \"[10.0.0.7]:25\"]\n\
                [tls]\nreceived_auth_user = true\n[filter]\ncontent_filter = \"smtp:[127.0.0.1]:10025\"\n";
    let (_dir, config) = config_file(body);
    let names = "virtual_alias_maps transport_maps relayhost mynetworks mydestination relay_domains \
                 smtpd_sasl_authenticated_header content_filter smtpd_forbid_bare_newline message_size_limit";
    let out = run(&config, &format!("postconf {names}"));
    assert_eq!(
        out,
        "virtual_alias_maps = hash:/etc/postfix/virtual\n\
         transport_maps = hash:/etc/posthorn/transport\n\
         relayhost = [10.0.0.6]:25, [10.0.0.7]:25\n\
         mynetworks = 127.0.0.0/8, ::1/128\n\
         mydestination =\n\
         relay_domains =\n\
         smtpd_sasl_authenticated_header = yes\n\
         content_filter = smtp:[127.0.0.1]:10025\n\
         smtpd_forbid_bare_newline = normalize\n\
         message_size_limit = 52428800\n"
    );
    let version = format!("{}\n", env!("CARGO_PKG_VERSION"));
    assert_eq!(run(&config, "postconf -h mail_version"), version);
    assert_eq!(run(&config, "postconf -d mail_version"), format!("mail_version = {version}"));
    assert_eq!(run(&config, "postconf -H relayhost"), "relayhost\n");
    // Postfix warns and still exits 0; the known names are printed.
    let out = sh(&config, "postconf no_such_parameter myhostname");
    assert_eq!(out.status.code(), Some(0));
    assert_eq!(text(&out.stderr), "postconf: warning: no_such_parameter: unknown parameter\n");
    assert!(text(&out.stdout).starts_with("myhostname = "), "{}", text(&out.stdout));
}

#[test]
fn non_defaults_name_the_role() {
    let (_dir, config) = config_file(
        "role = \"hub\"\nhostname = \"mx.example.org\"\nspool = \"/var/spool/posthorn\"\n\
         [smtp]\nlisten = [\"0.0.0.0:25\"]\nmax_recipients = 100\n[tls]\nreceived_auth_user = true\n",
    );
    let out = run(&config, "postconf -n");
    // listen and spool are set, but to their (hub) defaults.
    assert_eq!(
        out,
        "role = hub\nhostname = mx.example.org\nsmtp.max_recipients = 100\ntls.received_auth_user = true\n"
    );
    // -d: the hub's defaults, its local domains this host's own name.
    let defaults = pairs(&run(&config, "postconf -d"));
    let get = |k: &str| defaults.iter().find(|(key, _)| key == k).map(|(_, v)| v.clone());
    assert_eq!(get("smtp.max_recipients").as_deref(), Some("1000"));
    assert_eq!(get("smtp.listen").as_deref(), Some("0.0.0.0:25"));
    assert_eq!(get("tls.received_auth_user").as_deref(), Some("false"));
    assert_eq!(run(&config, "postconf -n -h role"), "hub\n");
    assert_eq!(run(&config, "postconf -n smtpd_recipient_limit message_size_limit"), "smtpd_recipient_limit = 100\n");
}

#[test]
fn edits_keep_comments_order_and_mode() {
    let original = readme_main_example();
    assert!(original.contains("# "), "the README example has no comments");
    let (_dir, config) = config_file(&original);
    fs::set_permissions(&config, fs::Permissions::from_mode(0o640)).unwrap();
    // As root (CI), the file belongs to another account, as /etc files
    // edited by root may: the edit keeps that owner.
    let owned = std::os::unix::fs::chown(&config, Some(65534), Some(65534)).is_ok();
    run(
        &config,
        "postconf -e 'message_size_limit = 1000' 'mynetworks = 127.0.0.0/8, 10.0.0.0/8' smtp.max_errors=7 \
         'smtpd_sasl_authenticated_header = yes'",
    );
    let edited = fs::read_to_string(&config).unwrap();
    let (before, after): (Vec<&str>, Vec<&str>) = (original.lines().collect(), edited.lines().collect());
    let changed: Vec<(&str, &str)> = before.iter().zip(&after).filter(|(b, a)| b != a).map(|(b, a)| (*b, *a)).collect();
    assert_eq!(
        changed,
        [
            (
                "max_message_size = \"50M\"                  # 552 5.3.4 beyond",
                "max_message_size = 1000                  # 552 5.3.4 beyond"
            ),
            (
                "max_errors = 20                           # 4xx and 5xx replies, then 421 and close; also max_line_length",
                "max_errors = 7                           # 4xx and 5xx replies, then 421 and close; also max_line_length"
            ),
            (
                "trusted_networks = [\"127.0.0.0/8\", \"::1/128\"]",
                "trusted_networks = [\"127.0.0.0/8\", \"10.0.0.0/8\"]"
            ),
        ]
    );
    // The one new key comes at the end, in a new [tls] section.
    assert_eq!(after.len(), before.len() + 3, "{edited}");
    assert_eq!(&after[before.len()..], ["", "[tls]", "received_auth_user = true"]);
    assert_eq!(fs::metadata(&config).unwrap().permissions().mode() & 0o7777, 0o640);
    if owned {
        let meta = fs::metadata(&config).unwrap();
        assert_eq!((meta.uid(), meta.gid()), (65534, 65534), "owner not kept");
    }
    let listed = run(&config, "postconf -h message_size_limit mynetworks smtp.max_errors");
    assert_eq!(listed, "1000\n127.0.0.0/8, 10.0.0.0/8\n7\n");

    run(&config, "postconf -X smtpd_sasl_authenticated_header rewrite.masquerade_as mail_owner");
    let removed = fs::read_to_string(&config).unwrap();
    assert!(!removed.contains("masquerade_as = ") && !removed.contains("received_auth_user"), "{removed}");
    assert!(!removed.lines().any(|l| l.starts_with("user = ")), "{removed}");
    assert!(removed.contains("masquerade_domains = [\"vm12.internal\"]    # whose senders are local"), "{removed}");
    assert_eq!(run(&config, "postconf -h rewrite.masquerade_as mail_owner"), "\nposthorn\n");
    // -# leaves the line as a comment; the key is back at its default.
    run(&config, "postconf -# smtp_connect_timeout");
    let commented = fs::read_to_string(&config).unwrap();
    assert!(commented.contains("\n#connect_timeout = \"30s\"\n"), "{commented}");
    assert_eq!(commented.lines().count(), removed.lines().count());
    run(&config, "postconf -e 'relay.connect_timeout = 5s'");
    assert_eq!(run(&config, "postconf -h relay.connect_timeout"), "5s\n");
    // No temporary file left beside it.
    let left: Vec<_> = fs::read_dir(config.parent().unwrap()).unwrap().map(|e| e.unwrap().file_name()).collect();
    assert!(left.iter().all(|n| !n.to_string_lossy().contains("postconf")), "{left:?}");
}

#[test]
fn invalid_edits_change_nothing() {
    let original = "# satellite\nrole = \"satellite\"\n\n[access]\ntrusted_networks = [\"127.0.0.0/8\"]  # loopback\n";
    let (_dir, config) = config_file(original);
    let cases = [
        ("postconf -e 'mynetworks = 10.0.0.0/33'", "access.trusted_networks: `10.0.0.0/33`: bad prefix length"),
        ("postconf -e 'message_size_limit = lots'", "message_size_limit: `lots` is not a size"),
        ("postconf -e 'minimal_backoff_time = 2h'", "queue.retry_min: is larger than queue.retry_max"),
        ("postconf -e 'role = server'", "role: unknown variant `server`"),
        ("postconf -e 'no_such_parameter = 1'", "no_such_parameter: unknown parameter"),
        ("postconf -e 'smtp.max_recipients = 5' 'smtpd_forbid_bare_newline = no'", "smtpd_forbid_bare_newline: `no`"),
        ("postconf -X no_such_parameter", "no_such_parameter: unknown parameter"),
    ];
    for (script, why) in cases {
        let out = sh(&config, script);
        assert_eq!(out.status.code(), Some(1), "{script}");
        let err = text(&out.stderr);
        assert!(err.starts_with("postconf: fatal: ") && err.contains(why), "{script}: {err}");
        assert_eq!(fs::read_to_string(&config).unwrap(), original, "{script} changed the file");
    }
}

#[test]
fn reload_and_restart_apply_an_edit() {
    let mut ph = Posthorn::start(&satellite_config(&[free_addr()]));
    let config = ph.config_path().to_path_buf();
    let big = format!("Subject: big\n\n{}\n", "x".repeat(2000));
    let send = |ph: &Posthorn| {
        let mut c = RawSmtp::connect(ph.smtp_addr()).unwrap();
        c.ehlo("client.test").unwrap();
        c.send("app@vm1.test", &["ops@example.org"], big.as_bytes()).unwrap().code
    };
    assert_eq!(send(&ph), 250);
    // As config management does it: one edit per parameter, then a reload.
    run(
        &config,
        "for kv in 'message_size_limit = 1000' 'smtpd_recipient_limit = 5'; do postconf -e \"$kv\" || exit 1; done; postfix reload",
    );
    assert!(wait_until(secs(10), || send(&ph) == 552), "still accepted after the reload; log:\n{}", ph.log());
    ph.restart();
    assert_eq!(send(&ph), 552);
    assert_eq!(run(&config, "postconf -h message_size_limit smtpd_recipient_limit"), "1000\n5\n");
}
