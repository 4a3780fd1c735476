//! `posthorn import postfix|exim`: the migration path, end to end.
//!
//! 1. Debian's "Internet Site": main.cf and master.cf made the way the
//!    postfix package's postinst makes them (its main.cf.debian, main.cf.tls
//!    when the snakeoil key exists, master.cf.dist, then `postconf -e` with
//!    the debconf answers), imported: a hub that delivers its domains to
//!    Maildir.
//! 2. Debian's "Satellite system": imported, a satellite whose mail reaches
//!    the sink playing its relayhost.
//! 3. A hand-written hub: virtual alias maps, a transport table, TLS and an
//!    after-queue content filter with its reinjection service; the alias is
//!    rewritten, the filter sees every message, the transport is followed.
//! 4. Exim's update-exim4.conf.conf, satellite and smarthost types.
//! 5. What is not carried over is named with file and line; `--dry-run`
//!    writes nothing; an existing file is not replaced without `--force`.
//!
//! The imported file is run by the harness, which chooses the spool and
//! hostname itself: the test takes those two keys out and moves the
//! listeners to port 0, the only changes made.

mod harness;

use harness::*;
use std::fs;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

fn postfix_installed(test: &str) -> bool {
    let ok = Path::new("/usr/sbin/postconf").exists() && Path::new("/usr/share/postfix/main.cf.debian").exists();
    if !ok {
        eprintln!("{test}: skipped: Debian's postfix package is not installed");
    }
    ok
}

/// `posthorn import ARGS...` with no configuration around.
fn import(args: &[&str]) -> Output {
    let mut cmd = Command::new(BIN);
    cmd.arg("import").args(args).env_remove("POSTHORN_CONFIG");
    run_with_timeout(cmd, b"", COMMAND_TIMEOUT)
}

fn text(out: &[u8]) -> String {
    String::from_utf8_lossy(out).into_owned()
}

/// The config directory Debian's postinst writes for `mailer`, with the
/// debconf answers in `answers` (`postconf -e` settings).
fn debian_postfix(dir: &Path, answers: &[String]) -> PathBuf {
    let conf = dir.join("postfix");
    fs::create_dir_all(&conf).unwrap();
    let mut main = fs::read_to_string("/usr/share/postfix/main.cf.debian").unwrap();
    if Path::new("/etc/ssl/private/ssl-cert-snakeoil.key").exists() {
        main.push_str(&fs::read_to_string("/usr/share/postfix/main.cf.tls").unwrap());
    }
    fs::write(conf.join("main.cf"), main).unwrap();
    fs::copy("/usr/share/postfix/master.cf.dist", conf.join("master.cf")).unwrap();
    // What postinst creates when /etc/aliases is missing.
    fs::write(dir.join("aliases"), "# See man 5 aliases for format\npostmaster:    root\n").unwrap();
    fs::write(dir.join("mailname"), "example.net\n").unwrap();
    let mut settings = vec![
        "smtpd_relay_restrictions=permit_mynetworks permit_sasl_authenticated defer_unauth_destination".to_string(),
        "myhostname=vm7.example.net".into(),
        format!("alias_maps=hash:{}/aliases", dir.display()),
        format!("alias_database=hash:{}/aliases", dir.display()),
        format!("myorigin={}/mailname", dir.display()),
        "mynetworks=127.0.0.0/8 [::ffff:127.0.0.0]/104 [::1]/128".into(),
        "mailbox_size_limit=0".into(),
        "recipient_delimiter=+".into(),
        "inet_protocols=all".into(),
    ];
    settings.extend(answers.iter().cloned());
    let out = Command::new("/usr/sbin/postconf").arg("-c").arg(&conf).arg("-e").args(&settings).output().unwrap();
    assert!(out.status.success(), "postconf -e: {out:?}");
    conf
}

/// The imported file as the harness runs it: its hostname and spool are
/// the harness's, `lines` (`with_lines` syntax) move the rest.
fn for_harness(imported: &str, lines: &[&str]) -> String {
    let kept: Vec<&str> = imported
        .lines()
        .take_while(|l| !l.starts_with('['))
        .filter(|l| !l.starts_with("hostname = ") && !l.starts_with("spool = "))
        .chain(imported.lines().skip_while(|l| !l.starts_with('[')))
        .collect();
    with_lines(&(kept.join("\n") + "\n"), lines)
}

fn maildir_line(dir: &Path) -> String {
    format!("deliver.maildir_root = {}", toml_str(&format!("{}/{{domain}}/{{user}}", dir.display())))
}

fn wait_for_maildir(root: &Path, domain: &str, user: &str) -> Vec<u8> {
    let new = root.join(domain).join(user).join("new");
    let found = wait_until(secs(20), || fs::read_dir(&new).map(|d| d.count() > 0).unwrap_or(false));
    assert!(found, "nothing delivered to {}", new.display());
    let file = fs::read_dir(&new).unwrap().next().unwrap().unwrap().path();
    fs::read(file).unwrap()
}

/// `posthorn -c FILE check` on a running instance's file.
fn check(ph: &Posthorn) -> Output {
    ph.command(&["check"], b"")
}

#[test]
fn debian_internet_site_becomes_a_hub_delivering_to_maildir() {
    if !postfix_installed("debian_internet_site") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let answers = [
        "mydestination=$myhostname, example.net, vm7.example.net, localhost.example.net, localhost".to_string(),
        "relayhost=".into(),
        "inet_interfaces=all".into(),
    ];
    let conf = debian_postfix(dir.path(), &answers);
    let target = dir.path().join("posthorn.toml");
    let out = import(&["postfix", conf.to_str().unwrap(), "-o", target.to_str().unwrap()]);
    let (stderr, written) = (text(&out.stderr), fs::read_to_string(&target).unwrap_or_default());
    assert!(out.status.success(), "{stderr}");
    assert!(written.contains("# Role: hub: no relayhost is set"), "{written}");
    assert!(written.contains("role = \"hub\""), "{written}");
    assert!(written.contains("myorigin = \"example.net\""), "{written}");
    assert!(written.contains("listen = [\"0.0.0.0:25\"]"), "{written}");
    let dest_line = written.lines().find(|l| l.starts_with("# main.cf:") && l.contains("mydestination = ")).unwrap();
    assert!(written.contains(&format!("{dest_line}\nlocal_domains = [\"vm7.example.net\", \"example.net\", \"localhost.example.net\", \"localhost\"]")), "{written}");
    // Reported with file and line, never dropped silently.
    assert!(written.contains("recipient_delimiter = \"+\""), "{written}");
    assert!(stderr.lines().any(|l| l.contains("main.cf:") && l.contains("smtpd_banner: not carried over")), "{stderr}");

    let mail = dir.path().join("mail");
    let body = for_harness(&written, &["smtp.listen = [\"127.0.0.1:0\"]", &maildir_line(&mail)]);
    let ph = Posthorn::start(&body);
    smtplib_send(
        ph.smtp_addr(),
        "sender@elsewhere.example",
        &["alice@example.net"],
        "Subject: imported\r\n\r\nhello\r\n",
    )
    .unwrap();
    let delivered = wait_for_maildir(&mail, "example.net", "alice");
    assert!(text(&delivered).contains("Subject: imported"), "{}", text(&delivered));
    let checked = check(&ph);
    assert!(checked.status.success(), "{}{}", text(&checked.stdout), text(&checked.stderr));
}

#[test]
fn debian_satellite_system_relays_through_its_relayhost() {
    if !postfix_installed("debian_satellite") {
        return;
    }
    let sink = Sink::start();
    let dir = tempfile::tempdir().unwrap();
    let answers = [
        "mydestination=$myhostname, vm7.example.net, localhost.example.net, localhost".to_string(),
        format!("relayhost=[{}]:{}", sink.addr().ip(), sink.addr().port()),
        "inet_interfaces=loopback-only".into(),
    ];
    let conf = debian_postfix(dir.path(), &answers);
    let target = dir.path().join("posthorn.toml");
    let out = import(&["postfix", conf.to_str().unwrap(), "-o", target.to_str().unwrap()]);
    let (stderr, written) = (text(&out.stderr), fs::read_to_string(&target).unwrap_or_default());
    assert!(out.status.success(), "{stderr}");
    assert!(written.contains("role = \"satellite\""), "{written}");
    assert!(written.contains("# Role: satellite: relayhost is ["), "{written}");
    let relay = format!("smarthosts = [\"[{}]:{}\"]", sink.addr().ip(), sink.addr().port());
    assert!(written.contains(&relay), "{written}");
    assert!(written.contains("listen = [\"127.0.0.1:25\"]"), "{written}");
    assert!(stderr.contains("mydestination: carried over with a difference"), "{stderr}");

    let body = for_harness(&written, &["smtp.listen = [\"127.0.0.1:0\"]", "relay.tls = \"none\""]);
    let ph = Posthorn::start(&body);
    let out = ph.sendmail(&["-i", "ops@example.org"], b"Subject: from the satellite\n\ncron output\n");
    assert!(out.status.success(), "{out:?}");
    let got = sink.wait_for_parsed(1, secs(20));
    assert_eq!(got.len(), 1, "the relayhost got nothing");
    assert_eq!(got[0].rcpt_to, ["ops@example.org"]);
    assert!(got[0].mail_from.ends_with("@example.net"), "myorigin from the mailname file: {:?}", got[0]);
    let checked = check(&ph);
    assert!(checked.status.success(), "{}{}", text(&checked.stdout), text(&checked.stderr));
}

/// A hub as an admin writes it by hand: virtual aliases, a transport
/// table, TLS, an SMTP content filter (FILTER_README's layout) and a
/// submission service.
fn hub_files(dir: &Path, cert: &Issued, filter: SocketAddr, reinject: SocketAddr, relay: SocketAddr) -> PathBuf {
    let conf = dir.join("postfix");
    fs::create_dir_all(&conf).unwrap();
    let d = conf.display();
    fs::write(
        conf.join("virtual"),
        "sales@virt.example   alice@local.example\n@virt.example  catchall@local.example\n",
    )
    .unwrap();
    fs::write(conf.join("transport"), format!("partner.example   smtp:[{}]:{}\n", relay.ip(), relay.port())).unwrap();
    let main = format!(
        "# hub\nmyhostname = mx.local.example\nmydomain = local.example\nmydestination = $myhostname, $mydomain,\n    localhost\n\
         virtual_alias_domains = virt.example\nvirtual_alias_maps = hash:{d}/virtual\ntransport_maps = hash:{d}/transport\n\
         mynetworks = 127.0.0.0/8, 10.0.0.0/8\nmessage_size_limit = 10240000\n\
         smtpd_tls_cert_file = {}\nsmtpd_tls_key_file = {}\nsmtpd_tls_security_level = may\n\
         smtp_tls_security_level = may\ncontent_filter = scan:[{}]:{}\n\
         smtpd_helo_restrictions = reject_invalid_helo_hostname\n",
        cert.cert.display(),
        cert.key.display(),
        filter.ip(),
        filter.port()
    );
    fs::write(conf.join("main.cf"), main).unwrap();
    let master = format!(
        "smtp      inet  n       -       y       -       -       smtpd\n\
         submission inet n       -       y       -       -       smtpd\n  -o syslog_name=postfix/submission\n  -o smtpd_tls_security_level=encrypt\n  -o smtpd_sasl_auth_enable=yes\n\
         pickup    unix  n       -       y       60      1       pickup\n\
         cleanup   unix  n       -       y       -       0       cleanup\n\
         scan      unix  -       -       n       -       10      smtp\n  -o smtp_send_xforward_command=yes\n\
         {reinject} inet  n  -       n       -       10      smtpd\n  -o content_filter=\n  -o receive_override_options=no_unknown_recipient_checks,no_header_body_checks\n  -o smtpd_helo_restrictions=\n  -o mynetworks=127.0.0.0/8\n\
         dovecot   unix  -       n       n       -       -       pipe\n  flags=DRhu user=vmail argv=/usr/lib/dovecot/deliver -d ${{recipient}}\n"
    );
    fs::write(conf.join("master.cf"), master).unwrap();
    conf
}

#[test]
fn hand_written_hub_with_virtual_maps_transport_tls_and_content_filter() {
    let dir = tempfile::tempdir().unwrap();
    let ca = TestCa::new("import test CA");
    let cert = ca.issue("mx", &["mx.local.example", "127.0.0.1"]);
    let sink = Sink::start();
    let filter_addr = free_addr();
    let reinject = free_addr();
    let conf = hub_files(dir.path(), &cert, filter_addr, reinject, sink.addr());
    let target = dir.path().join("posthorn.toml");

    // --dry-run: the TOML on stdout, nothing written.
    let dry = import(&["postfix", conf.to_str().unwrap(), "--dry-run", "-o", target.to_str().unwrap()]);
    assert!(dry.status.success(), "{}", text(&dry.stderr));
    assert!(!target.exists(), "--dry-run wrote {}", target.display());
    let toml = text(&dry.stdout);
    let stderr = text(&dry.stderr);
    let expected = [
        "role = \"hub\"",
        &format!("virtual_alias_maps = [\"hash:{}/virtual\"]", conf.display()),
        "virtual_alias_domains = [\"virt.example\"]",
        &format!("transport_maps = [\"hash:{}/transport\"]", conf.display()),
        &format!("content_filter = \"smtp:[{}]:{}\"", filter_addr.ip(), filter_addr.port()),
        &format!("reinject_listen = \"{reinject}\""),
        "submission = [\"0.0.0.0:587\"]",
        "max_message_size = 10240000",
        "trusted_networks = [\"127.0.0.0/8\", \"10.0.0.0/8\"]",
        &format!("cert = {}", toml_str(&cert.cert.display().to_string())),
        "# main.cf:7: virtual_alias_maps = hash:",
        "local_domains = [\"mx.local.example\", \"local.example\", \"localhost\"]",
    ];
    for e in expected {
        assert!(toml.contains(e), "missing {e:?} in:\n{toml}");
    }
    // Unsupported settings, each with its file and line.
    for e in [
        "posthorn import: main.cf:16: smtpd_helo_restrictions: not carried over: ",
        "posthorn import: master.cf:15: dovecot: not carried over: a unix service running pipe",
        "posthorn import: master.cf:2: submission: carried over with a difference: posthorn requires AUTH there",
    ] {
        assert!(stderr.contains(e), "missing {e:?} in:\n{stderr}");
    }
    assert!(
        !stderr.contains("receive_override_options"),
        "FILTER_README's reinjection options are posthorn's own: {stderr}"
    );

    // Written, then refused a second time without --force.
    let out = import(&["postfix", conf.to_str().unwrap(), "-o", target.to_str().unwrap()]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert_eq!(fs::read_to_string(&target).unwrap(), toml, "the file is what --dry-run showed");
    fs::write(&target, "# edited\n").unwrap();
    let again = import(&["postfix", conf.to_str().unwrap(), "-o", target.to_str().unwrap()]);
    assert!(!again.status.success() && text(&again.stderr).contains("not replacing it without --force"), "{again:?}");
    assert_eq!(fs::read_to_string(&target).unwrap(), "# edited\n");
    let forced = import(&["postfix", conf.to_str().unwrap(), "-o", target.to_str().unwrap(), "--force"]);
    assert!(forced.status.success(), "{forced:?}");
    assert_eq!(fs::read_to_string(&target).unwrap(), toml);

    // Run it: listeners on port 0, the reinjection address as imported.
    let mail = dir.path().join("mail");
    let body = for_harness(
        &toml,
        &[
            "smtp.listen = [\"127.0.0.1:0\"]",
            "smtp.submission = [\"127.0.0.1:0\"]",
            "relay.tls = \"none\"",
            &maildir_line(&mail),
        ],
    );
    let ph = Posthorn::start(&body);
    assert_eq!(ph.reinject_addr(), reinject);
    let mut filter = SmtpFilter::new(dir.path(), filter_addr, reinject);
    filter.start();
    let mut smtp = RawSmtp::connect(ph.smtp_addr()).unwrap();
    let ehlo = smtp.ehlo("client.example").unwrap();
    assert!(ehlo.text.contains("STARTTLS"), "the imported certificate is offered: {ehlo:?}");
    smtp.quit().unwrap();

    let msg = "Subject: to sales\r\n\r\nhello\r\n";
    smtplib_send(ph.smtp_addr(), "buyer@outside.example", &["sales@virt.example", "nobody@virt.example"], msg).unwrap();
    smtplib_send(ph.smtp_addr(), "alice@local.example", &["bob@partner.example"], "Subject: partner\r\n\r\nhi\r\n")
        .unwrap();
    let alice = wait_for_maildir(&mail, "local.example", "alice");
    assert!(text(&alice).contains("X-Filtered: yes"), "not through the filter: {}", text(&alice));
    let catchall = wait_for_maildir(&mail, "local.example", "catchall");
    assert!(text(&catchall).contains("Subject: to sales"), "{}", text(&catchall));
    let got = sink.wait_for_parsed(1, secs(20));
    assert_eq!(got.len(), 1, "the transport table's relay got nothing");
    assert_eq!(got[0].rcpt_to, ["bob@partner.example"]);
    assert_eq!(got[0].header("X-Filtered").as_deref(), Some("yes"), "{:?}", got[0]);
    filter.stop();
}

/// `DIR/exim4/update-exim4.conf.conf` and `DIR/mailname`, as exim4-config
/// writes them.
fn exim_files(dir: &Path, configtype: &str, smarthost: &str) -> PathBuf {
    let conf = dir.join("exim4");
    fs::create_dir_all(&conf).unwrap();
    let text = format!(
        "# /etc/exim4/update-exim4.conf.conf\n#\n# This is a Debian specific file\n\n\
         dc_eximconfig_configtype='{configtype}'\ndc_other_hostnames='vm7.example.net : intranet.example.net'\n\
         dc_local_interfaces='127.0.0.1 ; ::1'\ndc_readhost='example.net'\ndc_relay_domains=''\n\
         dc_minimaldns='false'\ndc_relay_nets='10.1.0.0/16'\ndc_smarthost='{smarthost}'\nCFILEMODE='644'\n\
         dc_use_split_config='false'\ndc_hide_mailname='true'\ndc_mailname_in_oh='true'\ndc_localdelivery='mail_spool'\n\
         dc_never_users='root'\n"
    );
    fs::write(conf.join("update-exim4.conf.conf"), text).unwrap();
    fs::write(dir.join("mailname"), "vm7.example.net\n").unwrap();
    conf
}

#[test]
fn exim_satellite_sends_to_its_smarthost() {
    let sink = Sink::start();
    let dir = tempfile::tempdir().unwrap();
    let conf = exim_files(dir.path(), "satellite", &format!("{}::{}", sink.addr().ip(), sink.addr().port()));
    let out = import(&["exim", conf.to_str().unwrap(), "--dry-run"]);
    let (toml, stderr) = (text(&out.stdout), text(&out.stderr));
    assert!(out.status.success(), "{stderr}");
    assert!(toml.contains("role = \"satellite\""), "{toml}");
    assert!(toml.contains(&format!("smarthosts = [\"[{}]:{}\"]", sink.addr().ip(), sink.addr().port())), "{toml}");
    assert!(toml.contains("masquerade_as = \"example.net\""), "{toml}");
    assert!(toml.contains("myorigin = \"vm7.example.net\""), "{toml}");
    assert!(toml.contains("listen = [\"127.0.0.1:25\", \"[::1]:25\"]"), "{toml}");
    assert!(stderr.contains("update-exim4.conf.conf:18: dc_never_users: not carried over"), "{stderr}");
    assert!(!stderr.contains("CFILEMODE"), "{stderr}");

    let body = for_harness(&toml, &["smtp.listen = [\"127.0.0.1:0\"]", "relay.tls = \"none\""]);
    let ph = Posthorn::start(&body);
    let out = ph.sendmail(&["-i", "-f", "cron", "ops@example.org"], b"Subject: exim satellite\n\nok\n");
    assert!(out.status.success(), "{out:?}");
    let got = sink.wait_for_parsed(1, secs(20));
    assert_eq!(got.len(), 1, "the smarthost got nothing");
    assert_eq!(got[0].rcpt_to, ["ops@example.org"]);
    assert_eq!(got[0].mail_from, "cron@example.net", "dc_readhost: {:?}", got[0]);
}

#[test]
fn exim_smarthost_type_is_a_hub_that_relays_the_rest() {
    let sink = Sink::start();
    let dir = tempfile::tempdir().unwrap();
    let conf = exim_files(dir.path(), "smarthost", &format!("{}::{}", sink.addr().ip(), sink.addr().port()));
    let target = dir.path().join("posthorn.toml");
    let out = import(&["exim", conf.to_str().unwrap(), "-o", target.to_str().unwrap()]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let toml = fs::read_to_string(&target).unwrap();
    assert!(toml.contains("role = \"hub\""), "{toml}");
    assert!(toml.contains("\"vm7.example.net\", \"intranet.example.net\"]"), "{toml}");
    assert!(toml.contains("trusted_networks = [\"127.0.0.0/8\", \"::1\", \"10.1.0.0/16\"]"), "{toml}");
    // The loader takes it: postconf reads it back.
    let mut cmd = Command::new(BIN);
    cmd.args(["postconf", "-c"]).arg(&target).args(["-h", "relayhost", "mydestination"]);
    let shown = run_with_timeout(cmd, b"", COMMAND_TIMEOUT);
    let shown_text = text(&shown.stdout);
    assert!(shown.status.success(), "{shown:?}");
    assert!(shown_text.starts_with(&format!("[{}]:{}\n", sink.addr().ip(), sink.addr().port())), "{shown_text}");
    assert!(shown_text.contains("intranet.example.net"), "{shown_text}");

    let mail = dir.path().join("mail");
    let body = for_harness(&toml, &["smtp.listen = [\"127.0.0.1:0\"]", "relay.tls = \"none\"", &maildir_line(&mail)]);
    let ph = Posthorn::start(&body);
    smtplib_send(ph.smtp_addr(), "a@intranet.example.net", &["someone@far.example"], "Subject: out\r\n\r\nx\r\n")
        .unwrap();
    let got = sink.wait_for_parsed(1, secs(20));
    assert_eq!(got.len(), 1, "the smarthost got nothing");
    assert_eq!(got[0].rcpt_to, ["someone@far.example"]);
}

#[test]
fn a_missing_configuration_is_a_clear_error() {
    let dir = tempfile::tempdir().unwrap();
    let out = import(&["postfix", dir.path().to_str().unwrap(), "--dry-run"]);
    assert_eq!(out.status.code(), Some(78), "{out:?}");
    let said = text(&out.stderr);
    assert!(
        said.contains(&format!("{}/main.cf: cannot read: No such file or directory", dir.path().display())),
        "{said}"
    );
}
