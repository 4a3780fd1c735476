//! The milters' changes applied to a message, without I/O: header fields
//! added, inserted, changed and deleted, the body replaced, and the
//! envelope's sender and recipients changed, in the order asked.
//!
//! Header values come from the milter with bare LF between folded lines
//! (as Postfix and Sendmail send them); they go into the message with CRLF.

use super::proto::Response;
use crate::message::header;

/// A message as the milters see it: its header fields and its body.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Message {
    /// `(name, value)`: the value without the colon and the one space
    /// after it, folded lines joined with LF, no final line end.
    pub(crate) fields: Vec<(String, String)>,
    pub(crate) body: Vec<u8>,
}

/// The envelope changes asked for: the sender, recipients added (with
/// their ESMTP arguments) and removed, addresses without angle brackets.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub(crate) struct Envelope {
    pub(crate) sender: Option<String>,
    pub(crate) added: Vec<String>,
    pub(crate) removed: Vec<String>,
}

impl Message {
    /// Cuts decoded message text (CRLF line ends) into fields and body.
    pub(crate) fn parse(text: &[u8]) -> Message {
        let split = header::split(text);
        let fields = header::fields(split.head)
            .filter(|f| !f.name().is_empty())
            .map(|f| {
                let value = f.value();
                let value = value.strip_prefix(b" ").unwrap_or(value);
                let value = String::from_utf8_lossy(value).replace("\r\n", "\n");
                (String::from_utf8_lossy(f.name()).into_owned(), value)
            })
            .collect();
        Message { fields, body: split.body.to_vec() }
    }

    /// The message text again, CRLF line ends.
    pub(crate) fn to_bytes(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(self.body.len() + 64 * self.fields.len() + 2);
        for (name, value) in &self.fields {
            out.extend_from_slice(name.as_bytes());
            out.push(b':');
            if !value.starts_with([' ', '\t']) {
                out.push(b' ');
            }
            out.extend_from_slice(crlf(value).as_bytes());
            out.extend_from_slice(b"\r\n");
        }
        out.extend_from_slice(b"\r\n");
        out.extend_from_slice(&self.body);
        out
    }

    /// Applies `changes` in order; returns the envelope changes.
    pub(crate) fn apply(&mut self, changes: &[Response]) -> Envelope {
        let mut envelope = Envelope::default();
        let mut new_body: Option<Vec<u8>> = None;
        for change in changes {
            match change {
                Response::AddHeader { name, value } => self.fields.push((name.clone(), value.clone())),
                Response::InsertHeader { index, name, value } => {
                    let at = (*index as usize).min(self.fields.len());
                    self.fields.insert(at, (name.clone(), value.clone()));
                }
                Response::ChangeHeader { index, name, value } => self.change(*index, name, value),
                Response::ReplaceBody(chunk) => new_body.get_or_insert_with(Vec::new).extend_from_slice(chunk),
                Response::AddRcpt { address, .. } => envelope.added.push(bare(address)),
                Response::DeleteRcpt(address) => envelope.removed.push(bare(address)),
                Response::ChangeFrom { address, .. } => envelope.sender = Some(bare(address)),
                _ => {}
            }
        }
        if let Some(body) = new_body {
            self.body = crlf_bytes(&body);
        }
        envelope
    }

    /// SMFIR_CHGHEADER: the `index`th field called `name` (1-based; 0 is
    /// taken as 1, as Sendmail does) gets `value`, or goes when `value`
    /// is empty; a field that is not there is added.
    fn change(&mut self, index: u32, name: &str, value: &str) {
        let wanted = index.max(1) as usize;
        let found = self.fields.iter().enumerate().filter(|(_, (n, _))| n.eq_ignore_ascii_case(name)).nth(wanted - 1);
        match (found.map(|(at, _)| at), value.is_empty()) {
            (Some(at), true) => {
                self.fields.remove(at);
            }
            (Some(at), false) => self.fields[at].1 = value.to_string(),
            (None, true) => {}
            (None, false) => self.fields.push((name.to_string(), value.to_string())),
        }
    }
}

/// An address as a milter writes it, `<a@b>` or `a@b`, without brackets.
fn bare(address: &str) -> String {
    let a = address.trim();
    a.strip_prefix('<').and_then(|a| a.strip_suffix('>')).unwrap_or(a).to_string()
}

/// Bare LF (and bare CR) line ends as CRLF.
fn crlf(value: &str) -> String {
    String::from_utf8_lossy(&crlf_bytes(value.as_bytes())).into_owned()
}

fn crlf_bytes(text: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(text.len() + text.len() / 32);
    let mut i = 0;
    while i < text.len() {
        match text[i] {
            b'\r' if text.get(i + 1) == Some(&b'\n') => {
                out.extend_from_slice(b"\r\n");
                i += 1;
            }
            b'\r' | b'\n' => out.extend_from_slice(b"\r\n"),
            b => out.push(b),
        }
        i += 1;
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    const TEXT: &[u8] = b"From: a@example.net\r\nSubject: one\r\n two\r\nX-Tag: 1\r\nx-tag: 2\r\n\r\nbody\r\n";

    #[test]
    fn parse_and_back() {
        let m = Message::parse(TEXT);
        assert_eq!(
            m.fields,
            [
                ("From".to_string(), "a@example.net".to_string()),
                ("Subject".into(), "one\n two".into()),
                ("X-Tag".into(), "1".into()),
                ("x-tag".into(), "2".into()),
            ]
        );
        assert_eq!(m.body, b"body\r\n");
        assert_eq!(m.to_bytes(), TEXT);
    }

    #[test]
    fn changes_in_order() {
        let h = |name: &str, value: &str| (name.to_string(), value.to_string());
        type Fields = Vec<(String, String)>;
        let cases: Vec<(Vec<Response>, Fields, &[u8])> = vec![
            (
                vec![Response::AddHeader { name: "X-Spam".into(), value: "Yes".into() }],
                vec![
                    h("From", "a@example.net"),
                    h("Subject", "one\n two"),
                    h("X-Tag", "1"),
                    h("x-tag", "2"),
                    h("X-Spam", "Yes"),
                ],
                b"body\r\n",
            ),
            (
                vec![Response::InsertHeader {
                    index: 0,
                    name: "Authentication-Results".into(),
                    value: "mx; dkim=pass".into(),
                }],
                vec![
                    h("Authentication-Results", "mx; dkim=pass"),
                    h("From", "a@example.net"),
                    h("Subject", "one\n two"),
                    h("X-Tag", "1"),
                    h("x-tag", "2"),
                ],
                b"body\r\n",
            ),
            (
                vec![
                    Response::ChangeHeader { index: 2, name: "X-TAG".into(), value: String::new() },
                    Response::ChangeHeader { index: 1, name: "Subject".into(), value: "[SPAM] one".into() },
                    Response::ChangeHeader { index: 3, name: "X-Tag".into(), value: "new".into() },
                    Response::ReplaceBody(b"new\nbody\n".to_vec()),
                ],
                vec![h("From", "a@example.net"), h("Subject", "[SPAM] one"), h("X-Tag", "1"), h("X-Tag", "new")],
                b"new\r\nbody\r\n",
            ),
        ];
        for (changes, fields, body) in cases {
            let mut m = Message::parse(TEXT);
            m.apply(&changes);
            assert_eq!((m.fields, m.body.as_slice()), (fields, body), "{changes:?}");
        }
    }

    #[test]
    fn folded_values_get_crlf() {
        let mut m = Message::parse(b"\r\nbody\r\n");
        m.apply(&[Response::AddHeader { name: "X-Spam-Status".into(), value: "Yes,\n\tscore=9".into() }]);
        assert_eq!(m.to_bytes(), b"X-Spam-Status: Yes,\r\n\tscore=9\r\n\r\nbody\r\n");
    }

    #[test]
    fn envelope_changes() {
        let mut m = Message::parse(TEXT);
        let env = m.apply(&[
            Response::AddRcpt { address: "<new@example.org>".into(), args: None },
            Response::DeleteRcpt("<old@example.org>".into()),
            Response::ChangeFrom { address: "bounce@example.net".into(), args: None },
        ]);
        assert_eq!(
            env,
            Envelope {
                sender: Some("bounce@example.net".into()),
                added: vec!["new@example.org".into()],
                removed: vec!["old@example.org".into()],
            }
        );
    }
}
