//! SMTP replies: the value every verb handler returns and every client reads.
//!
//! A `Reply` is a three-digit code, an optional RFC 3463 enhanced status code
//! and one or more text lines. It knows how to write itself on the wire
//! (multi-line replies use `code-text`) and how to be parsed back from the
//! lines a server sent, so the server and the relay client share one type.

use std::fmt;

/// An RFC 3463 enhanced status code, `class.subject.detail`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
pub struct Enhanced(pub u8, pub u16, pub u16);

impl fmt::Display for Enhanced {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}.{}.{}", self.0, self.1, self.2)
    }
}

impl Enhanced {
    /// The code of a whole reply line as logged or stored,
    /// `554 5.6.3 Conversion required ...`; `None` when it has none.
    /// Like a reply on the wire, the code's class must be the reply's.
    #[cfg(test)]
    pub(crate) fn of_reply_text(text: &str) -> Option<Enhanced> {
        let mut words = text.split_whitespace();
        let reply = words.next().filter(|code| code.len() == 3 && code.bytes().all(|b| b.is_ascii_digit()))?;
        let (code, _) = Enhanced::parse_prefix(words.next()?)?;
        (reply.as_bytes()[0] - b'0' == code.0).then_some(code)
    }

    /// Parses `2.1.5` at the start of `text`; returns the code and the rest.
    pub(crate) fn parse_prefix(text: &str) -> Option<(Enhanced, &str)> {
        let end = text.find(' ').unwrap_or(text.len());
        let mut parts = text[..end].split('.');
        let class: u8 = parts.next()?.parse().ok()?;
        let subject: u16 = parts.next()?.parse().ok()?;
        let detail: u16 = parts.next()?.parse().ok()?;
        if parts.next().is_some() || !matches!(class, 2 | 4 | 5) || subject > 999 || detail > 999 {
            return None;
        }
        Some((Enhanced(class, subject, detail), text[end..].trim_start()))
    }
}

/// One complete SMTP reply.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Reply {
    pub code: u16,
    pub enhanced: Option<Enhanced>,
    /// Text lines without the code or enhanced code; never empty.
    pub(crate) lines: Vec<String>,
}

impl Reply {
    /// A single-line reply with an enhanced status code.
    pub(crate) fn new(code: u16, enhanced: Enhanced, text: impl Into<String>) -> Reply {
        Reply { code, enhanced: Some(enhanced), lines: vec![text.into()] }
    }

    /// A single-line reply without an enhanced status code (greeting, EHLO, 354).
    pub(crate) fn plain(code: u16, text: impl Into<String>) -> Reply {
        Reply { code, enhanced: None, lines: vec![text.into()] }
    }

    /// A multi-line reply without enhanced codes (the EHLO keyword list).
    pub(crate) fn multi(code: u16, lines: Vec<String>) -> Reply {
        debug_assert!(!lines.is_empty());
        Reply { code, enhanced: None, lines }
    }

    pub(crate) fn is_positive(&self) -> bool {
        (200..400).contains(&self.code)
    }
    pub(crate) fn is_permanent(&self) -> bool {
        self.code >= 500
    }

    /// The reply as it goes on the wire, CRLF-terminated lines.
    pub fn to_wire(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(64);
        let last = self.lines.len().saturating_sub(1);
        for (i, line) in self.lines.iter().enumerate() {
            let sep = if i == last { ' ' } else { '-' };
            match self.enhanced {
                Some(e) => out.extend_from_slice(format!("{}{}{} {}\r\n", self.code, sep, e, line).as_bytes()),
                None => out.extend_from_slice(format!("{}{}{}\r\n", self.code, sep, line).as_bytes()),
            }
        }
        out
    }

    /// Parses the lines of one reply as received (without CRLF). Every line
    /// must carry the same code; the enhanced code is taken from the first
    /// line when present.
    pub fn from_lines<S: AsRef<str>>(raw: &[S]) -> Option<Reply> {
        let mut code = None;
        let mut enhanced = None;
        let mut lines = Vec::with_capacity(raw.len());
        for (i, line) in raw.iter().enumerate() {
            let line = line.as_ref();
            let (head, rest) = line.split_at_checked(3)?;
            let c: u16 = head.parse().ok()?;
            if !(200..600).contains(&c) || *code.get_or_insert(c) != c {
                return None;
            }
            let text = rest.get(1..).unwrap_or("");
            let text = match Enhanced::parse_prefix(text) {
                Some((e, t)) if u16::from(e.0) == c / 100 => {
                    if i == 0 {
                        enhanced = Some(e);
                    }
                    t
                }
                _ => text,
            };
            lines.push(text.to_string());
        }
        Some(Reply { code: code?, enhanced, lines })
    }
}

impl Reply {
    /// Parses the one-line form [`Display`](fmt::Display) writes
    /// (`550 5.1.1 text text`); the lines of a multi-line reply come back
    /// as one.
    pub(crate) fn from_text(text: &str) -> Option<Reply> {
        let (code, rest) = text.split_at_checked(3)?;
        let code: u16 = code.parse().ok().filter(|c| (200..600).contains(c))?;
        let rest = match rest.strip_prefix(' ') {
            Some(r) => r,
            None if rest.is_empty() => "",
            None => return None,
        };
        let (enhanced, text) = match Enhanced::parse_prefix(rest) {
            Some((e, t)) if u16::from(e.0) == code / 100 => (Some(e), t),
            _ => (None, rest),
        };
        Some(Reply { code, enhanced, lines: vec![text.to_string()] })
    }
}

impl fmt::Display for Reply {
    /// One line for logs: `550 5.1.1 text text`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.code)?;
        if let Some(e) = self.enhanced {
            write!(f, " {e}")?;
        }
        for line in &self.lines {
            write!(f, " {line}")?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wire_single_and_multi() {
        let r = Reply::new(250, Enhanced(2, 1, 0), "Ok");
        assert_eq!(r.to_wire(), b"250 2.1.0 Ok\r\n");
        let r = Reply::multi(250, vec!["host".into(), "PIPELINING".into(), "SIZE 10".into()]);
        assert_eq!(r.to_wire(), b"250-host\r\n250-PIPELINING\r\n250 SIZE 10\r\n");
    }

    #[test]
    fn parse_table() {
        let cases: &[(&[&str], Option<(u16, Option<Enhanced>, &str)>)] = &[
            (&["250 2.0.0 Ok: queued as X"], Some((250, Some(Enhanced(2, 0, 0)), "Ok: queued as X"))),
            (&["550 5.1.1 <a@b>: unknown"], Some((550, Some(Enhanced(5, 1, 1)), "<a@b>: unknown"))),
            (&["220 mx.example ESMTP"], Some((220, None, "mx.example ESMTP"))),
            (&["250-a", "250 b"], Some((250, None, "a"))),
            (&["451 5.0.0 class mismatch"], Some((451, None, "5.0.0 class mismatch"))),
            (&["250"], Some((250, None, ""))),
            (&["250-a", "251 b"], None),
            (&["abc"], None),
            (&["099 x"], None),
        ];
        for (input, expected) in cases {
            let got = Reply::from_lines(input).map(|r| (r.code, r.enhanced, r.lines[0].clone()));
            let expected = expected.map(|(c, e, t)| (c, e, t.to_string()));
            assert_eq!(got, expected, "input {input:?}");
        }
    }

    #[test]
    fn code_of_a_stored_reply_line() {
        let of = Enhanced::of_reply_text;
        assert_eq!(of("554 5.6.3 Conversion required but not supported"), Some(Enhanced(5, 6, 3)));
        assert_eq!(of("451 5.0.0 class mismatch"), None);
        assert_eq!(of("connect to 127.0.0.1:25: refused"), None);
        assert_eq!(of("SMTPUTF8 is required 5.6.7"), None);
    }

    #[test]
    fn display_for_logs() {
        let r = Reply::from_lines(&["451-4.3.0 first", "451 4.3.0 second"]).unwrap();
        assert_eq!(r.to_string(), "451 4.3.0 first second");
    }
}
