//! Reload: SIGHUP re-reads the configuration without dropping the open
//! SMTP session or losing queued mail; a broken file is refused and the
//! running configuration stays.
//!
//! Listeners are configuration like any other (issue 14, item 9): a reload
//! that adds `filter.reinject_listen` opens it at once, one that drops a
//! listener closes it, and one whose new listener cannot be bound is refused
//! by `postfix reload` naming the key, with nothing of it applied.

mod harness;

use harness::*;

#[test]
fn sighup_switches_smarthost_keeps_sessions_and_queue() {
    let dead = free_addr();
    let sink = Sink::start();
    let mut ph = Posthorn::start(&satellite_config(&[dead]));
    // A session opened before the reload must survive it.
    let mut open = RawSmtp::connect(ph.smtp_addr()).unwrap();
    assert!(open.ehlo("early.test").unwrap().is_positive());

    let out = ph.sendmail(&["-f", "app@vm.test", "ops@example.org"], b"Subject: queued before reload\n\nhello\n");
    assert!(out.status.success());
    assert!(ph.wait_for_log("status=deferred", secs(10)), "{}", ph.log());

    let text = std::fs::read_to_string(ph.config_path()).unwrap();
    std::fs::write(ph.config_path(), text.replace(&dead.to_string(), &sink.addr().to_string())).unwrap();
    hup(&ph);
    assert!(ph.wait_for_log("reload: configuration", secs(10)), "{}", ph.log());

    let got = sink.wait_for_parsed(1, secs(15));
    assert_eq!(got.len(), 1, "queued mail reaches the new smarthost; log:\n{}", ph.log());
    assert_eq!(got[0].header("Subject").as_deref(), Some("queued before reload"));

    let reply =
        open.send("app@vm.test", &["late@example.org"], b"Subject: same session\r\n\r\nstill here\r\n").unwrap();
    assert!(reply.is_positive(), "the session opened before the reload still works: {reply:?}");
    assert_eq!(sink.wait_for_parsed(2, secs(15)).len(), 2);

    // A broken file is refused; the daemon keeps running on the old one.
    std::fs::write(ph.config_path(), "role = \"nonsense\"\n").unwrap();
    hup(&ph);
    assert!(ph.wait_for_log("reload refused", secs(10)), "{}", ph.log());
    assert!(ph.is_running());
    assert!(
        smtplib_send(ph.smtp_addr(), "app@vm.test", &["third@example.org"], "Subject: after refusal\n\nx\n").is_ok()
    );
    assert_eq!(sink.wait_for_parsed(3, secs(15)).len(), 3);
}

fn hup(ph: &Posthorn) {
    let pid = rustix::process::Pid::from_raw(ph.pid().expect("running") as i32).unwrap();
    rustix::process::kill_process(pid, rustix::process::Signal::HUP).unwrap();
}

/// Whether something accepts connections on `addr`.
fn answers(addr: std::net::SocketAddr) -> bool {
    RawSmtp::connect(addr).is_ok()
}

#[test]
fn reload_opens_and_closes_listeners_or_refuses_naming_the_key() {
    let sink = Sink::start();
    let ph = Posthorn::start(&satellite_config(&[sink.addr()]));
    let original = std::fs::read_to_string(ph.config_path()).unwrap();

    // Adding the filter's reinjection listener opens it now.
    let reinject = free_addr();
    let with_filter = with_lines(&original, &[&format!("filter.reinject_listen = \"{reinject}\"")]);
    std::fs::write(ph.config_path(), &with_filter).unwrap();
    let out = ph.run_as("postfix", &["reload"], b"");
    assert!(out.status.success(), "{out:?}\n{}", ph.log());
    assert!(ph.wait_for_log(&format!("listening reinject={reinject}"), secs(10)), "{}", ph.log());
    let got = smtplib_send(reinject, "app@vm.test", &["ops@example.org"], "Subject: reinjected\n\nx\n");
    assert!(got.is_ok(), "{got:?}\n{}", ph.log());
    assert_eq!(sink.wait_for_parsed(1, secs(15)).len(), 1, "{}", ph.log());

    // A new listener that cannot be bound refuses the whole reload: the
    // smarthost change that comes with it is not applied either.
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let busy = taken.local_addr().unwrap();
    let dead = free_addr();
    let broken = with_filter
        .replace(&sink.addr().to_string(), &dead.to_string())
        .replace("listen = [\"127.0.0.1:0\"]", &format!("listen = [\"127.0.0.1:0\", \"{busy}\"]"));
    assert_ne!(broken, with_filter.replace(&sink.addr().to_string(), &dead.to_string()), "the listen line was found");
    std::fs::write(ph.config_path(), &broken).unwrap();
    let out = ph.run_as("postfix", &["reload"], b"");
    let said = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(!out.status.success(), "{said}");
    assert!(said.contains("smtp.listen") && said.contains(&busy.to_string()) && said.contains("in use"), "{said}");
    assert!(smtplib_send(ph.smtp_addr(), "app@vm.test", &["ops@example.org"], "Subject: still old\n\nx\n").is_ok());
    assert_eq!(sink.wait_for_parsed(2, secs(15)).len(), 2, "the old smarthost still applies; log:\n{}", ph.log());
    assert!(answers(reinject));
    drop(taken);

    // Dropping the listener closes it; the SMTP port stays.
    std::fs::write(ph.config_path(), &original).unwrap();
    let out = ph.run_as("postfix", &["reload"], b"");
    assert!(out.status.success(), "{out:?}");
    assert!(wait_until(secs(10), || !answers(reinject)), "{}", ph.log());
    assert!(answers(ph.smtp_addr()));
}
