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
//! An address that would become a whole argument starting with `-` is
//! refused (5.1.3 for a recipient, 5.1.7 for the sender) and never handed
//! to the command: the command would read it as an option
//! (`-oQ/tmp/x@example.org`). Refusing, as Postfix does by default
//! (`allow_min_user = no`), was chosen over inserting `--`: that would
//! change the argument vector of every existing filter, and a filter that
//! does not know `--` would take it for an address; such addresses are
//! practically never real.
//!
//! The SMTP variant needs no code of its own: it is an explicit next hop
//! (`mx::Mx::deliver_to`).

use super::Delivery;
use crate::message::outcome::{Attempt, ErrorClass, Outcome};
use crate::message::{OutMessage, OutRecipient};
use crate::smtp::proto::reply::{Enhanced, Reply};
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

/// Why the command may not see `rcpt` (or the sender) as an argument: one
/// that would start with `-` where the template's argument does not.
fn refusal(template: &[String], msg: &OutMessage, rcpt: &OutRecipient) -> Option<Reply> {
    let sender_leads = template.iter().any(|a| a.starts_with("${sender}"));
    let recipient_leads = template.iter().any(|a| a == "${recipient}");
    let why = "starts with '-', which the pipe content filter would read as an option";
    if sender_leads && msg.sender.starts_with('-') {
        return Some(Reply::new(553, Enhanced(5, 1, 7), format!("sender <{}> {why}", msg.sender)));
    }
    if recipient_leads && rcpt.address.starts_with('-') {
        return Some(Reply::new(553, Enhanced(5, 1, 3), format!("<{}> {why}", rcpt.address)));
    }
    None
}

/// Runs the pipe filter for `msg`: one run for all its recipients but
/// those it may not be given (see the module doc), which fail here.
pub(crate) async fn run_pipe(template: &[String], timeout: Duration, msg: &OutMessage) -> Delivery {
    let refused: Vec<Option<Reply>> = msg.recipients.iter().map(|r| refusal(template, msg, r)).collect();
    if refused.iter().all(Option::is_none) {
        return run_command(template, timeout, msg).await;
    }
    let mut rest = msg.clone();
    rest.recipients =
        msg.recipients.iter().zip(&refused).filter(|(_, r)| r.is_none()).map(|(r, _)| r.clone()).collect();
    let ran = if rest.recipients.is_empty() { None } else { Some(run_command(template, timeout, &rest).await) };
    let hop_down = ran.as_ref().is_some_and(|d| d.hop_down);
    let mut ran_outcomes = ran.map(|d| d.outcomes).unwrap_or_default().into_iter();
    let outcomes = refused
        .into_iter()
        .map(|refusal| match refusal {
            Some(reply) => {
                tracing::warn!("{}: pipe content filter: {reply}", msg.id);
                let detail = reply.to_string();
                let attempt =
                    Attempt { relay: None, tls: false, reply: Some(reply), class: Some(ErrorClass::Local), detail };
                Outcome::Permanent(attempt)
            }
            None => ran_outcomes.next().expect("one outcome per recipient run"),
        })
        .collect();
    Delivery { outcomes, hop_down, remote_dsn: false, setup: None, followups: Vec::new() }
}

/// Runs the command once for `msg` and all its recipients.
async fn run_command(template: &[String], timeout: Duration, msg: &OutMessage) -> Delivery {
    let argv = argv(template, msg);
    let relay = Some(format!("pipe:{}", argv[0]));
    let result = |outcome: fn(Attempt) -> Outcome, class, detail: String, hop_down| {
        let attempt = Attempt { relay: relay.clone(), tls: false, reply: None, class, detail };
        Delivery {
            outcomes: vec![outcome(attempt); msg.recipients.len()],
            hop_down,
            remote_dsn: false,
            setup: None,
            followups: Vec::new(),
        }
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
    async fn addresses_that_would_be_options_are_refused() {
        let t = template("/bin/sh -c exit ${sender} ${recipient}");
        let msg = OutMessage::simple("q1", "a@x.test", &["-oQ@y.test", "b@y.test", "--help@y.test"], b"x\r\n");
        let d = run_pipe(&t, Duration::from_secs(10), &msg).await;
        let codes: Vec<_> =
            d.outcomes.iter().map(|o| (matches!(o, Outcome::Permanent(_)), o.attempt().enhanced())).collect();
        assert_eq!(codes, [(true, Some(Enhanced(5, 1, 3))), (false, None), (true, Some(Enhanced(5, 1, 3)))], "{d:?}");
        // A sender that leads an argument fails every recipient.
        let msg = OutMessage::simple("q1", "-x@x.test", &["b@y.test"], b"x\r\n");
        let d = run_pipe(&t, Duration::from_secs(10), &msg).await;
        assert!(matches!(&d.outcomes[0], Outcome::Permanent(a) if a.enhanced() == Some(Enhanced(5, 1, 7))), "{d:?}");
        // Inside an argument that is already an option, it is a value.
        let t = template("/bin/sh -c exit --from=${sender}");
        let d = run_pipe(&t, Duration::from_secs(10), &msg).await;
        assert!(matches!(&d.outcomes[0], Outcome::Delivered(_)), "{d:?}");
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
