//! The pipe variant of the after-queue content filter
//! (`filter.content_filter = "pipe:/path/to/cmd arg ${sender} ${recipient}"`).
//!
//! The command runs with an argument vector, never through a shell, so no
//! address can be interpreted as shell syntax. `${sender}` becomes the
//! sender, `${recipient}` one argument per recipient. The message goes on
//! stdin. Exit 0: the filter took the message (and reinjects it if it
//! wants to); exit 75 (EX_TEMPFAIL), or death by a signal: try again later;
//! any other exit code: the message failed. `${sender}` is empty for the
//! null sender, so that `sendmail -f ${sender}` keeps it null. A command still running after `filter.pipe_timeout` is
//! killed, with its process group, and the message deferred.
//!
//! The SMTP variant needs no code of its own: it is an explicit next hop
//! (`mx::Mx::deliver_to`).

use super::Delivery;
use crate::message::OutMessage;
use crate::message::outcome::{Attempt, ErrorClass, Outcome};
use std::process::Stdio;
use std::time::Duration;
use tokio::io::AsyncWriteExt;
use tokio::process::Command;

/// sysexits.h EX_TEMPFAIL.
const EX_TEMPFAIL: i32 = 75;
/// Bytes of the command's stderr kept for the log and the bounce.
const STDERR_KEPT: usize = 200;

/// The command line with `${sender}` and `${recipient}` substituted.
pub(crate) fn argv(template: &[String], msg: &OutMessage) -> Vec<String> {
    let mut out = Vec::with_capacity(template.len() + msg.recipients.len());
    for arg in template {
        match arg.as_str() {
            "${recipient}" => out.extend(msg.recipients.iter().map(|r| r.address.clone())),
            _ => out.push(arg.replace("${sender}", &msg.sender)),
        }
    }
    out
}

/// Runs the pipe filter for `msg`: one run for all its recipients.
pub(crate) async fn run_pipe(template: &[String], timeout: Duration, msg: &OutMessage) -> Delivery {
    let argv = argv(template, msg);
    let relay = Some(format!("pipe:{}", argv[0]));
    let result = |outcome: fn(Attempt) -> Outcome, class, detail: String, hop_down| {
        let attempt = Attempt { relay: relay.clone(), tls: false, reply: None, class, detail };
        Delivery { outcomes: vec![outcome(attempt); msg.recipients.len()], hop_down, remote_dsn: false }
    };
    let mut cmd = Command::new(&argv[0]);
    cmd.args(&argv[1..])
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .process_group(0)
        .kill_on_drop(true);
    let mut child = match cmd.spawn() {
        Ok(child) => child,
        Err(e) => {
            let detail = format!("content filter {} cannot be started: {e}", argv[0]);
            tracing::error!("{}: {detail}", msg.id);
            return result(Outcome::Transient, Some(ErrorClass::Local), detail, true);
        }
    };
    let pgid = child.id();
    if let Some(mut stdin) = child.stdin.take() {
        let body = msg.body.clone();
        // A filter may exit without reading everything; EPIPE is then fine.
        tokio::spawn(async move {
            let _ = stdin.write_all(&body).await;
        });
    }
    let output = match tokio::time::timeout(timeout, child.wait_with_output()).await {
        Ok(Ok(output)) => output,
        Ok(Err(e)) => {
            let detail = format!("content filter {}: {e}", argv[0]);
            return result(Outcome::Transient, Some(ErrorClass::Local), detail, false);
        }
        Err(_) => {
            // The child itself dies with the dropped future (kill_on_drop);
            // whatever it started goes with its process group.
            if let Some(pid) = pgid.and_then(|p| rustix::process::Pid::from_raw(p as i32)) {
                let _ = rustix::process::kill_process_group(pid, rustix::process::Signal::KILL);
            }
            let detail = format!("content filter {} killed after {}s", argv[0], timeout.as_secs());
            tracing::warn!("{}: {detail}", msg.id);
            return result(Outcome::Transient, Some(ErrorClass::Timeout), detail, true);
        }
    };
    let stderr = String::from_utf8_lossy(&output.stderr);
    let said: String =
        stderr.lines().next().unwrap_or("").chars().filter(|c| !c.is_control()).take(STDERR_KEPT).collect();
    let status = output.status;
    let what = match (status.code(), said.is_empty()) {
        (Some(code), true) => format!("content filter {} exited with {code}", argv[0]),
        (Some(code), false) => format!("content filter {} exited with {code}: {said}", argv[0]),
        (None, _) => format!("content filter {} died: {status}", argv[0]),
    };
    match status.code() {
        Some(0) => result(Outcome::Delivered, None, format!("delivered to content filter {}", argv[0]), false),
        // A crash says nothing about the message: deferred, never lost.
        Some(EX_TEMPFAIL) | None => result(Outcome::Transient, Some(ErrorClass::Local), what, false),
        Some(_) => result(Outcome::Permanent, Some(ErrorClass::Local), what, false),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn template(s: &str) -> Vec<String> {
        s.split_whitespace().map(String::from).collect()
    }

    #[test]
    fn sender_and_recipients_substituted() {
        let msg = OutMessage::simple("q1", "a@x.test", &["b@y.test", "c@z.test"], b"x\r\n");
        let cases = [
            ("/f ${sender} ${recipient}", vec!["/f", "a@x.test", "b@y.test", "c@z.test"]),
            ("/f -f ${sender} -- ${recipient} end", vec!["/f", "-f", "a@x.test", "--", "b@y.test", "c@z.test", "end"]),
            ("/f --from=${sender}", vec!["/f", "--from=a@x.test"]),
            ("/f", vec!["/f"]),
        ];
        for (t, expected) in cases {
            assert_eq!(argv(&template(t), &msg), expected, "{t}");
        }
        // A hostile address stays one argument.
        let msg = OutMessage::simple("q1", "", &["\"a;rm -rf /\"@y.test"], b"x\r\n");
        assert_eq!(argv(&template("/f ${sender} ${recipient}"), &msg), vec!["/f", "", "\"a;rm -rf /\"@y.test"]);
    }

    async fn run_script(script: &str, timeout: Duration) -> Delivery {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("filter");
        std::fs::write(&path, format!("{script}\n")).unwrap();
        let msg = OutMessage::simple("q1", "a@x.test", &["b@y.test", "c@y.test"], b"Subject: t\r\n\r\nhi\r\n");
        // Through /bin/sh: executing a file just written races with forks
        // in other test threads (ETXTBSY).
        let t = template(&format!("/bin/sh {} ${{sender}} ${{recipient}}", path.display()));
        run_pipe(&t, timeout, &msg).await
    }

    #[tokio::test]
    async fn exit_codes() {
        let d = run_script("cat >/dev/null; exit 0", Duration::from_secs(10)).await;
        assert!(d.outcomes.iter().all(|o| matches!(o, Outcome::Delivered(_))), "{d:?}");
        assert_eq!(d.outcomes.len(), 2);
        let d = run_script("echo busy >&2; exit 75", Duration::from_secs(10)).await;
        assert!(matches!(&d.outcomes[0], Outcome::Transient(a) if a.detail.ends_with("exited with 75: busy")), "{d:?}");
        let d = run_script("kill -SEGV $$", Duration::from_secs(10)).await;
        assert!(matches!(&d.outcomes[0], Outcome::Transient(a) if a.detail.contains("died")), "{d:?}");
        let d = run_script("echo \"$#:$1:$3\" >&2; exit 1", Duration::from_secs(10)).await;
        assert!(matches!(&d.outcomes[0], Outcome::Permanent(a) if a.detail.ends_with("3:a@x.test:c@y.test")), "{d:?}");
        let started = std::time::Instant::now();
        let d = run_script("sleep 30", Duration::from_millis(300)).await;
        assert!(matches!(&d.outcomes[0], Outcome::Transient(a) if a.detail.contains("killed")), "{d:?}");
        assert!(d.hop_down);
        assert!(started.elapsed() < Duration::from_secs(10));
    }
}
