//! Header blocks, byte-exact: where a message's header section ends, its
//! fields one by one, and finding, removing or rewriting a field.
//!
//! Header fields may hold any byte (8-bit names in old mail, Latin-1 in a
//! `Subject:`), and an upstream DKIM signature covers them as they are.
//! So everything here works on bytes, and whatever it does not change it
//! hands back byte for byte. A line ends with CRLF or a bare LF; a CR
//! alone ends no line. The only values parsed here are address lists,
//! left to `mail-parser`. Uses nothing else in the crate.

use std::borrow::Cow;

/// A message cut at the end of its header section: `head`, `blank` and
/// `body` follow each other and together are the whole message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Split<'a> {
    /// The header fields, each with its line end.
    pub(crate) head: &'a [u8],
    /// The blank line that ended the header section (`\r\n` or `\n`);
    /// empty when another line, or the end of the message, ended it.
    pub(crate) blank: &'a [u8],
    /// Everything after.
    pub(crate) body: &'a [u8],
}

/// Cuts `message` at the end of its header section. As in Postfix, the
/// section ends at the first line that neither starts a field (`name:`)
/// nor continues one (leading space or tab): normally the blank line; any
/// other such line is the first line of the body.
pub(crate) fn split(message: &[u8]) -> Split<'_> {
    let mut at = 0;
    for line in lines(message) {
        if line == b"\r\n" || line == b"\n" {
            return Split { head: &message[..at], blank: line, body: &message[at + line.len()..] };
        }
        let continues = at > 0 && is_folded(line);
        if !continues && name_end(line).is_none() {
            break;
        }
        at += line.len();
    }
    Split { head: &message[..at], blank: &[], body: &message[at..] }
}

/// The header block of `message`: its fields, without the blank line.
pub(crate) fn block(message: &[u8]) -> &[u8] {
    split(message).head
}

/// One header field: its first line and its continuation lines, exactly
/// as they were.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Field<'a> {
    raw: &'a [u8],
    /// The colon after the name; `None` for a line that is no header field.
    colon: Option<usize>,
}

impl<'a> Field<'a> {
    /// The whole field, with its line end.
    pub(crate) fn raw(&self) -> &'a [u8] {
        self.raw
    }

    /// The name as written, without spaces before the colon (the obsolete
    /// syntax of RFC 5322 4.5); empty for a line that is no header field.
    pub(crate) fn name(&self) -> &'a [u8] {
        self.colon.map_or(&[], |c| self.raw[..c].trim_ascii_end())
    }

    /// Everything after the colon up to the field's last line end, with
    /// the folding kept; empty for a line that is no header field.
    pub(crate) fn value(&self) -> &'a [u8] {
        self.colon.map_or(&[], |c| &self.raw[c + 1..self.raw.len() - self.line_end().len()])
    }

    /// Whether the field is called `name`, ignoring ASCII case.
    pub(crate) fn is(&self, name: &str) -> bool {
        self.colon.is_some() && self.name().eq_ignore_ascii_case(name.as_bytes())
    }

    fn line_end(&self) -> &'a [u8] {
        &self.raw[without_line_end(self.raw).len()..]
    }
}

/// The fields of a header block, in order. A line that is no header field
/// (there is none in a block from [`split`]) comes as a field without name.
pub(crate) fn fields(head: &[u8]) -> Fields<'_> {
    Fields { rest: head }
}

/// Iterator returned by [`fields`].
pub(crate) struct Fields<'a> {
    rest: &'a [u8],
}

impl<'a> Iterator for Fields<'a> {
    type Item = Field<'a>;

    fn next(&mut self) -> Option<Field<'a>> {
        let mut lines = lines(self.rest);
        let first = lines.next()?;
        let len = first.len() + lines.take_while(|l| is_folded(l)).map(<[u8]>::len).sum::<usize>();
        let (raw, rest) = self.rest.split_at(len);
        self.rest = rest;
        Some(Field { raw, colon: name_end(first) })
    }
}

/// The first field called `name` in a header block.
pub(crate) fn find<'a>(head: &'a [u8], name: &str) -> Option<Field<'a>> {
    fields(head).find(|f| f.is(name))
}

/// Whether a header block has a field called `name`.
pub(crate) fn has(head: &[u8], name: &str) -> bool {
    find(head, name).is_some()
}

/// A header block without its fields called `name` (`Bcc` before a
/// message leaves its submitter).
pub(crate) fn remove(head: &[u8], name: &str) -> Vec<u8> {
    fields(head).filter(|f| !f.is(name)).flat_map(|f| f.raw).copied().collect()
}

/// A header block where each field for which `new_value` returns a value
/// gets that value after its colon. Every other byte stays as it was: the
/// other fields, and the name, colon and last line end of a rewritten one.
pub(crate) fn rewrite(head: &[u8], mut new_value: impl FnMut(&Field<'_>) -> Option<Vec<u8>>) -> Vec<u8> {
    let mut out = Vec::with_capacity(head.len() + 64);
    for field in fields(head) {
        match field.colon.and_then(|colon| Some((colon, new_value(&field)?))) {
            Some((colon, value)) => {
                out.extend_from_slice(&field.raw[..=colon]);
                out.extend_from_slice(&value);
                out.extend_from_slice(field.line_end());
            }
            None => out.extend_from_slice(field.raw),
        }
    }
    out
}

/// A field value unfolded (RFC 5322 2.2.3): its line breaks removed, the
/// white space after them kept.
pub(crate) fn unfold(value: &[u8]) -> Cow<'_, [u8]> {
    if !value.contains(&b'\n') {
        return Cow::Borrowed(value);
    }
    Cow::Owned(lines(value).flat_map(without_line_end).copied().collect())
}

/// The addresses in the To, Cc and Bcc fields of a header block, in that
/// order, read by a real RFC 5322 parser (groups, quoted names, comments).
/// A bare word such as `root` parses as a display name without address; it
/// is taken as the address it stands for, as `sendmail -t` users mean it.
pub(crate) fn recipients(head: &[u8]) -> Vec<String> {
    let mut block = head.to_vec();
    if !block.is_empty() && !block.ends_with(b"\n") {
        block.extend_from_slice(b"\r\n");
    }
    // The parser wants the blank line that ends a header section.
    block.extend_from_slice(b"\r\n");
    let Some(msg) = mail_parser::MessageParser::default().parse_headers(&block[..]) else {
        return Vec::new();
    };
    [msg.to(), msg.cc(), msg.bcc()]
        .into_iter()
        .flatten()
        .flat_map(|a| a.iter())
        .filter_map(|a| a.address().or(a.name().filter(|n| !n.trim().contains(char::is_whitespace))))
        .map(|a| a.trim().to_string())
        .collect()
}

/// The lines of `bytes`, each with its line end; a CR alone ends no line.
/// Counts the `Received:` fields of a header block that arrives in pieces
/// of any size, so that a mail loop is seen without holding the block:
/// only the first bytes of the current line are kept. The block ends as in
/// [`split`]; what follows it is not looked at.
#[derive(Debug, Default)]
pub(crate) struct HopCounter {
    /// The start of the current line, at most [`HOP_LINE_PREFIX`] bytes.
    line: Vec<u8>,
    /// A field was seen, so a folded line continues it.
    started: bool,
    /// The header block has ended.
    done: bool,
    hops: usize,
}

/// Enough of a line to see a field name and its colon; a line with no
/// colon this far is no header field.
const HOP_LINE_PREFIX: usize = 998;

impl HopCounter {
    /// Takes the next bytes of the message.
    pub(crate) fn feed(&mut self, mut chunk: &[u8]) {
        while !self.done && !chunk.is_empty() {
            let (line, rest) = match chunk.iter().position(|&b| b == b'\n') {
                Some(i) => chunk.split_at(i + 1),
                None => (chunk, &[][..]),
            };
            let room = HOP_LINE_PREFIX.saturating_sub(self.line.len());
            self.line.extend_from_slice(&line[..line.len().min(room)]);
            if line.ends_with(b"\n") {
                self.end_line();
            }
            chunk = rest;
        }
    }

    fn end_line(&mut self) {
        let line = std::mem::take(&mut self.line);
        if self.started && is_folded(&line) {
            return;
        }
        match name_end(&line) {
            Some(colon) if line[..colon].trim_ascii_end().eq_ignore_ascii_case(b"received") => self.hops += 1,
            Some(_) => {}
            // The blank line, or a first body line.
            None => self.done = true,
        }
        self.started = true;
    }

    /// The `Received:` fields seen so far.
    pub(crate) fn hops(&self) -> usize {
        self.hops
    }
}

fn lines(bytes: &[u8]) -> impl Iterator<Item = &[u8]> {
    bytes.split_inclusive(|&b| b == b'\n')
}

fn without_line_end(line: &[u8]) -> &[u8] {
    line.strip_suffix(b"\r\n").or_else(|| line.strip_suffix(b"\n")).unwrap_or(line)
}

/// Whether `line` continues the field before it.
fn is_folded(line: &[u8]) -> bool {
    matches!(line.first(), Some(b' ' | b'\t'))
}

/// Where the colon is when `line` starts a header field: a name of
/// printable ASCII, maybe spaces, then the colon.
fn name_end(line: &[u8]) -> Option<usize> {
    let colon = line.iter().position(|&b| b == b':')?;
    let name = line[..colon].trim_ascii_end();
    (!name.is_empty() && name.iter().all(|b| (33..=126).contains(b))).then_some(colon)
}

#[cfg(test)]
mod tests {
    use super::*;

    type Bytes = &'static [u8];
    type NameValueRaw = (Bytes, Bytes, Bytes);

    #[test]
    fn hop_counter_counts_received_fields_in_any_chunking() {
        // (message, Received: fields in its header block)
        let cases: &[(Bytes, usize)] = &[
            (b"Received: a\r\nreceived : b\r\n\tc\r\nSubject: x\r\n\r\nReceived: body\r\n", 2),
            (b"Subject: x\nRECEIVED:a\n\nReceived: b\n", 1),
            (b"X-Received: a\r\nReceived-SPF: b\r\n Received: folded\r\n\r\n", 0),
            (b"Received: a\r\nnot a field\r\nReceived: b\r\n\r\n", 1),
            (b"\r\nReceived: a\r\n", 0),
            (b"Received: a", 0),
        ];
        for (message, hops) in cases {
            for size in [1, 2, 3, 7, message.len()] {
                let mut counter = HopCounter::default();
                message.chunks(size).for_each(|c| counter.feed(c));
                assert_eq!(counter.hops(), *hops, "{:?} in chunks of {size}", String::from_utf8_lossy(message));
            }
        }
    }

    #[test]
    fn split_table() {
        // (message, head, blank, body)
        let cases: &[(Bytes, Bytes, Bytes, Bytes)] = &[
            (b"A: 1\r\n\r\nbody\r\n", b"A: 1\r\n", b"\r\n", b"body\r\n"),
            (b"A: 1\r\nB: 2\r\n\r\nbody\r\n", b"A: 1\r\nB: 2\r\n", b"\r\n", b"body\r\n"),
            (b"A: 1\r\n continued\r\nB: 2\r\n\r\n", b"A: 1\r\n continued\r\nB: 2\r\n", b"\r\n", b""),
            (b"A: 1\r\n\tfolded\r\n\r\n\r\nbody", b"A: 1\r\n\tfolded\r\n", b"\r\n", b"\r\nbody"),
            // Bare LF, and both kinds in one message.
            (b"A: 1\nB: 2\n\nbody\n", b"A: 1\nB: 2\n", b"\n", b"body\n"),
            (b"A: 1\nB: 2\r\n\nbody", b"A: 1\nB: 2\r\n", b"\n", b"body"),
            // No body, no blank line, no line end.
            (b"A: 1\r\n", b"A: 1\r\n", b"", b""),
            (b"A: 1", b"A: 1", b"", b""),
            (b"", b"", b"", b""),
            // An empty header block.
            (b"\r\nbody\r\n", b"", b"\r\n", b"body\r\n"),
            (b"\n", b"", b"\n", b""),
            // A line without colon, or with a bad name, starts the body.
            (b"just text\r\n", b"", b"", b"just text\r\n"),
            (b"A: 1\r\nnot a header\r\n", b"A: 1\r\n", b"", b"not a header\r\n"),
            (b"A: 1\r\nnot a header\r\n\r\nx", b"A: 1\r\n", b"", b"not a header\r\n\r\nx"),
            (b": no name\r\n\r\n", b"", b"", b": no name\r\n\r\n"),
            (b"Two words: x\r\n\r\n", b"", b"", b"Two words: x\r\n\r\n"),
            (b"Caf\xe9: x\r\n\r\n", b"", b"", b"Caf\xe9: x\r\n\r\n"),
            // A continuation line with nothing to continue.
            (b" A: 1\r\n\r\n", b"", b"", b" A: 1\r\n\r\n"),
            // Spaces before the colon (obsolete syntax) still make a field.
            (b"Subject : x\r\n\r\nb", b"Subject : x\r\n", b"\r\n", b"b"),
            // 8-bit values are header bytes like any other.
            (b"Subject: caf\xe9\r\nX: \xff\xfe\r\n\r\nb", b"Subject: caf\xe9\r\nX: \xff\xfe\r\n", b"\r\n", b"b"),
            // A CR alone ends no line.
            (b"A: 1\rB: 2\r\n\r\nb", b"A: 1\rB: 2\r\n", b"\r\n", b"b"),
            (b"A: 1\r\n\rbody\r\n", b"A: 1\r\n", b"", b"\rbody\r\n"),
            (b"A: 1\r\r\n\r\nb", b"A: 1\r\r\n", b"\r\n", b"b"),
        ];
        for &(message, head, blank, body) in cases {
            let got = split(message);
            assert_eq!(got, Split { head, blank, body }, "{:?}", String::from_utf8_lossy(message));
            assert_eq!(block(message), head);
        }
    }

    #[test]
    fn fields_table() {
        // (head, [(name, value, raw)])
        let cases: &[(Bytes, &[NameValueRaw])] = &[
            (b"", &[]),
            (
                b"A: 1\r\n continued\r\n\tmore\r\nB:2\n",
                &[(b"A", b" 1\r\n continued\r\n\tmore", b"A: 1\r\n continued\r\n\tmore\r\n"), (b"B", b"2", b"B:2\n")],
            ),
            (b"Subject : x\r\n", &[(b"Subject", b" x", b"Subject : x\r\n")]),
            (b"Empty:\r\nLast: v", &[(b"Empty", b"", b"Empty:\r\n"), (b"Last", b" v", b"Last: v")]),
            (b"X: caf\xe9 \xff\r\n", &[(b"X", b" caf\xe9 \xff", b"X: caf\xe9 \xff\r\n")]),
            (b"A: 1\rB: 2\r\n", &[(b"A", b" 1\rB: 2", b"A: 1\rB: 2\r\n")]),
            (b"A: 1\r", &[(b"A", b" 1\r", b"A: 1\r")]),
            (b"not a header\r\nA: 1\r\n", &[(b"", b"", b"not a header\r\n"), (b"A", b" 1", b"A: 1\r\n")]),
            (b" lead\r\n more\r\nA: 1\r\n", &[(b"", b"", b" lead\r\n more\r\n"), (b"A", b" 1", b"A: 1\r\n")]),
        ];
        for &(head, expected) in cases {
            let got: Vec<_> = fields(head).map(|f| (f.name(), f.value(), f.raw())).collect();
            assert_eq!(got, expected, "{:?}", String::from_utf8_lossy(head));
        }
    }

    #[test]
    fn unfold_table() {
        let cases: &[(&[u8], &[u8])] = &[
            (b" plain", b" plain"),
            (b" 1\r\n continued\r\n\tmore", b" 1 continued\tmore"),
            (b" a\n b", b" a b"),
            (b" a\rb", b" a\rb"),
            (b" caf\xe9\r\n \xff", b" caf\xe9 \xff"),
            (b"", b""),
        ];
        for &(value, expected) in cases {
            assert_eq!(unfold(value).as_ref(), expected, "{:?}", String::from_utf8_lossy(value));
        }
        assert!(matches!(unfold(b" plain"), Cow::Borrowed(_)));
    }

    #[test]
    fn find_and_has_ignore_case() {
        let head = b"Message-ID: <a@b>\r\nSUBJECT: x\r\nsubject: second\r\nnot a header\r\n";
        assert_eq!(find(head, "subject").map(|f| f.value()), Some(&b" x"[..]));
        assert_eq!(find(head, "message-id").map(|f| f.name()), Some(&b"Message-ID"[..]));
        assert!(has(head, "Subject") && !has(head, "date") && !has(head, "not a header") && !has(head, ""));
    }

    #[test]
    fn remove_keeps_every_other_byte() {
        let head = b"To: a\r\nBcc: b,\r\n c\r\nX: caf\xe9\nbcc : d\r\nSubject: s";
        assert_eq!(remove(head, "bcc"), b"To: a\r\nX: caf\xe9\nSubject: s");
        assert_eq!(remove(head, "date"), head);
    }

    #[test]
    fn rewrite_changes_only_the_values_asked_for() {
        let head = b"Subject: caf\xe9\r\nFrom : old,\r\n folded\r\nX: \xff\nfrom:\xe9\n";
        let got = rewrite(head, |f| f.is("from").then(|| [b" new<", unfold(f.value()).as_ref(), b">"].concat()));
        assert_eq!(got, b"Subject: caf\xe9\r\nFrom : new< old, folded>\r\nX: \xff\nfrom: new<\xe9>\n");
        assert_eq!(rewrite(head, |_| None), head);
        // A line that is no field is never offered for rewriting.
        assert_eq!(rewrite(b"no field\r\n", |_| Some(b"x".to_vec())), b"no field\r\n");
    }

    #[test]
    fn recipients_from_to_cc_bcc() {
        let h = b"To: Alice <a@example.org>, b@example.org\r\nCc: undisclosed:;\r\nBcc: \"C, Esq\" <c@example.org>,\r\n x <d@example.org>\r\nSubject: s\r\n";
        assert_eq!(recipients(h), vec!["a@example.org", "b@example.org", "c@example.org", "d@example.org"]);
        assert_eq!(
            remove(h, "bcc"),
            b"To: Alice <a@example.org>, b@example.org\r\nCc: undisclosed:;\r\nSubject: s\r\n".to_vec()
        );
        assert!(has(h, "subject") && !has(h, "date"));
        assert_eq!(recipients(b"To: root\nCc: ops@example.org"), vec!["root", "ops@example.org"]);
        assert!(recipients(b"").is_empty());
    }
}
