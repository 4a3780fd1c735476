//! The actions a policy service answers with, as access(5) defines them,
//! and how the answers of several services combine into one verdict
//! (`Tally`), the way Postfix evaluates a restriction list.

use super::Stage;
use crate::smtp::proto::reply::{Enhanced, Reply};

/// One `action=` value.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum Action {
    /// Accept: no later service is asked.
    Ok,
    /// No opinion: ask the next service.
    Dunno,
    /// Refuse with this code, enhanced code and text.
    Refuse(u16, Option<Enhanced>, String),
    /// `DEFER_IF_PERMIT text`: 450 if the rest would accept.
    DeferIfPermit(String),
    /// `DEFER_IF_REJECT text`: 450 instead of a later rejection.
    DeferIfReject(String),
    /// `PREPEND header: value`: add the header, then go on.
    Prepend(String),
    /// `WARN text` and `INFO text`: log, then go on.
    Log(String),
    /// Anything else (`HOLD`, `FILTER`, a restriction name, a typo):
    /// Postfix answers 451 4.3.5 and logs a warning; so does posthorn.
    Unknown(String),
}

impl Action {
    pub(crate) fn parse(value: &str) -> Action {
        let value = value.trim();
        let (word, text) = match value.split_once([' ', '\t']) {
            Some((w, t)) => (w, t.trim()),
            None => (value, ""),
        };
        let text = text.to_string();
        match word.to_ascii_uppercase().as_str() {
            "OK" => Action::Ok,
            "DUNNO" => Action::Dunno,
            "REJECT" => Action::Refuse(554, None, text),
            "DEFER" => Action::Refuse(450, None, text),
            "DEFER_IF_PERMIT" => Action::DeferIfPermit(text),
            "DEFER_IF_REJECT" => Action::DeferIfReject(text),
            "PREPEND" if header_like(&text) => Action::Prepend(text),
            "WARN" | "INFO" => Action::Log(text),
            code if is_refusal_code(code) => match Reply::from_text(value) {
                Some(reply) => Action::Refuse(reply.code, reply.enhanced, reply.lines.join(" ")),
                None => Action::Unknown(value.to_string()),
            },
            _ => Action::Unknown(value.to_string()),
        }
    }
}

/// `4NN` or `5NN`: the numeric forms access(5) allows.
fn is_refusal_code(word: &str) -> bool {
    word.len() == 3 && word.bytes().all(|b| b.is_ascii_digit()) && matches!(word.as_bytes()[0], b'4' | b'5')
}

/// `Name: value`, the name printable ASCII without a colon or space.
fn header_like(text: &str) -> bool {
    match text.split_once(':') {
        Some((name, _)) => !name.is_empty() && name.bytes().all(|b| b.is_ascii_graphic()),
        None => false,
    }
}

/// The outcome of asking every service at one stage.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum Verdict {
    /// Go on, adding these headers to the message.
    Accept {
        prepend: Vec<String>,
    },
    Refuse(Reply),
}

/// What a stage's services said so far. Postfix semantics: a refusal or
/// `OK` ends the list; `DEFER_IF_PERMIT` and `DEFER_IF_REJECT` wait for
/// the end (an implicit permit, since posthorn asks after its own checks
/// passed) or for a later refusal.
pub(crate) struct Tally {
    stage: Stage,
    /// `<address>` the refusal names.
    subject: String,
    prepend: Vec<String>,
    defer_if_permit: Option<String>,
    defer_if_reject: Option<String>,
}

impl Tally {
    pub(crate) fn new(stage: Stage, subject: &str) -> Tally {
        Tally { stage, subject: subject.to_string(), prepend: Vec::new(), defer_if_permit: None, defer_if_reject: None }
    }

    /// Takes one service's action; `Some` when the list ends here.
    pub(crate) fn take(&mut self, action: Action) -> Option<Verdict> {
        match action {
            Action::Ok => Some(self.permit()),
            Action::Dunno => None,
            Action::Prepend(header) => {
                self.prepend.push(header);
                None
            }
            Action::Log(text) => {
                tracing::info!("policy service: {} {}: {text}", self.stage.name(), self.subject);
                None
            }
            Action::DeferIfPermit(text) => {
                self.defer_if_permit.get_or_insert(text);
                None
            }
            Action::DeferIfReject(text) => {
                self.defer_if_reject.get_or_insert(text);
                None
            }
            Action::Refuse(code, enhanced, text) if code >= 500 => Some(match self.defer_if_reject.take() {
                Some(text) => self.refusal(450, None, &text),
                None => self.refusal(code, enhanced, &text),
            }),
            Action::Refuse(code, enhanced, text) => Some(self.refusal(code, enhanced, &text)),
            Action::Unknown(value) => {
                tracing::warn!("policy service: unknown action `{value}`; answering 451 4.3.5");
                Some(Verdict::Refuse(Reply::new(451, Enhanced(4, 3, 5), "Server configuration error")))
            }
        }
    }

    /// The end of the list: an implicit permit.
    pub(crate) fn finish(mut self) -> Verdict {
        self.permit()
    }

    fn permit(&mut self) -> Verdict {
        match self.defer_if_permit.take() {
            Some(text) => self.refusal(450, None, &text),
            None => Verdict::Accept { prepend: std::mem::take(&mut self.prepend) },
        }
    }

    /// `550 5.7.1 <b@example.org>: Recipient address rejected: text`, as
    /// Postfix words a refusal from an access table or policy service.
    fn refusal(&self, code: u16, enhanced: Option<Enhanced>, text: &str) -> Verdict {
        let (enhanced, text) = match enhanced {
            Some(e) => (e, text),
            None => match Enhanced::parse_prefix(text) {
                Some((e, rest)) if u16::from(e.0) == code / 100 => (e, rest),
                _ => (Enhanced((code / 100) as u8, 7, 1), text),
            },
        };
        let text = if text.trim().is_empty() { "Access denied" } else { text.trim() };
        let class = match self.stage {
            Stage::Mail => "Sender address",
            Stage::Rcpt => "Recipient address",
            Stage::Data => "Data command",
        };
        Verdict::Refuse(Reply::new(code, enhanced, format!("<{}>: {class} rejected: {text}", self.subject)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn verdict(actions: &[&str]) -> String {
        let mut tally = Tally::new(Stage::Rcpt, "b@example.org");
        for a in actions {
            if let Some(v) = tally.take(Action::parse(a)) {
                return show(v);
            }
        }
        show(tally.finish())
    }

    fn show(v: Verdict) -> String {
        match v {
            Verdict::Accept { prepend } => format!("accept {prepend:?}"),
            Verdict::Refuse(r) => r.to_string(),
        }
    }

    #[test]
    fn actions_as_postfix_applies_them() {
        let r = "<b@example.org>: Recipient address rejected:";
        let cases: Vec<(Vec<&str>, String)> = vec![
            (vec!["DUNNO"], "accept []".into()),
            (vec!["dunno", "OK", "REJECT never asked"], "accept []".into()),
            (vec!["REJECT"], format!("554 5.7.1 {r} Access denied")),
            (vec!["REJECT go away"], format!("554 5.7.1 {r} go away")),
            (vec!["REJECT 5.7.23 SPF fail"], format!("554 5.7.23 {r} SPF fail")),
            (vec!["DEFER try later"], format!("450 4.7.1 {r} try later")),
            (vec!["550 5.7.1 no"], format!("550 5.7.1 {r} no")),
            (vec!["550 no"], format!("550 5.7.1 {r} no")),
            (vec!["421 4.3.2 busy"], format!("421 4.3.2 {r} busy")),
            (vec!["DEFER_IF_PERMIT Greylisted"], format!("450 4.7.1 {r} Greylisted")),
            (vec!["DEFER_IF_PERMIT Greylisted", "OK"], format!("450 4.7.1 {r} Greylisted")),
            (vec!["DEFER_IF_PERMIT Greylisted", "REJECT spam"], format!("554 5.7.1 {r} spam")),
            (vec!["DEFER_IF_REJECT maybe", "DUNNO"], "accept []".into()),
            (vec!["DEFER_IF_REJECT maybe", "REJECT spam"], format!("450 4.7.1 {r} maybe")),
            (vec!["DEFER_IF_REJECT maybe", "DEFER busy"], format!("450 4.7.1 {r} busy")),
            (
                vec!["PREPEND X-Greylist: delayed 2 seconds", "PREPEND Received-SPF: pass"],
                "accept [\"X-Greylist: delayed 2 seconds\", \"Received-SPF: pass\"]".into(),
            ),
            (vec!["PREPEND not a header"], "451 4.3.5 Server configuration error".into()),
            (vec!["WARN odd", "INFO fine"], "accept []".into()),
            (vec!["HOLD"], "451 4.3.5 Server configuration error".into()),
            (vec!["permit_mynetworks"], "451 4.3.5 Server configuration error".into()),
            (vec!["250 fine"], "451 4.3.5 Server configuration error".into()),
            (vec![""], "451 4.3.5 Server configuration error".into()),
        ];
        for (actions, expected) in cases {
            assert_eq!(verdict(&actions), expected, "{actions:?}");
        }
    }
}
