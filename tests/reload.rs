//! Reload: SIGHUP re-reads the configuration without dropping the open
//! SMTP session or losing queued mail; a broken file is refused and the
//! running configuration stays.

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
