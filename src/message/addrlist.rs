//! Address lists in header fields (RFC 5322 3.4: `From:`, `To:`, `Cc:`
//! ...), changed one address at a time and byte-exact otherwise.
//!
//! A rewriting MTA must change only the addr-spec: display names, comments,
//! groups, folding and 8-bit bytes stay as the writer left them, so that a
//! signature over other fields still verifies and a reader sees the names
//! it was sent. `mail_parser` reads addresses well but gives no positions,
//! so this small scanner finds each mailbox's addr-spec by position:
//! the part inside `<...>`, or a bare addr-spec with any comments around
//! it. Group names (`undisclosed-recipients:;`) are no addresses.
//!
//! Pure: no I/O; tested with tables of input and expected output.

/// Replaces each addr-spec in a header field value by what `f` returns for
/// it (`None`: keep it). `f` gets the addr-spec as written, without the
/// angle brackets, white space or comments around it. An element the
/// scanner cannot read as one mailbox (a bare phrase of several words,
/// an unterminated quote) is left alone.
pub(crate) fn map_addresses(value: &[u8], mut f: impl FnMut(&[u8]) -> Option<Vec<u8>>) -> Vec<u8> {
    let mut out = Vec::with_capacity(value.len() + 32);
    let mut start = 0;
    for (end, delimiter) in elements(value) {
        out.extend(map_element(&value[start..end], delimiter == Some(b':'), &mut f));
        if let Some(d) = delimiter {
            out.push(d);
        }
        start = end + usize::from(delimiter.is_some());
    }
    out
}

/// Adds `@domain` to every address without a domain (Postfix's
/// `append_at_myorigin`): `root` becomes `root@domain`, `"Cron" <root>`
/// becomes `"Cron" <root@domain>`.
pub(crate) fn qualify(value: &[u8], domain: &str) -> Vec<u8> {
    map_addresses(value, |addr| (!has_domain(addr)).then(|| [addr, b"@", domain.as_bytes()].concat()))
}

/// Whether an addr-spec has an `@` outside quotes.
fn has_domain(addr: &[u8]) -> bool {
    let mut quoted = false;
    let mut escaped = false;
    for &b in addr {
        match b {
            _ if escaped => escaped = false,
            b'\\' => escaped = true,
            b'"' => quoted = !quoted,
            b'@' if !quoted => return true,
            _ => {}
        }
    }
    false
}

/// The ends of the top-level elements of an address list: each is closed
/// by `,`, by `:` (it was a group's name) or `;` (a group's end), or by the
/// end of the value (`None`). Commas inside quotes, comments or angle
/// brackets separate nothing.
fn elements(value: &[u8]) -> Vec<(usize, Option<u8>)> {
    let mut ends = Vec::new();
    let mut scan = Scanner::default();
    for (i, &b) in value.iter().enumerate() {
        if scan.top_level() && matches!(b, b',' | b':' | b';') {
            ends.push((i, Some(b)));
        } else {
            scan.feed(b);
        }
    }
    ends.push((value.len(), None));
    ends
}

/// Quoting state while walking a value byte by byte.
#[derive(Default)]
struct Scanner {
    quoted: bool,
    escaped: bool,
    /// Nesting depth of `(comments)`.
    comment: usize,
    angle: bool,
}

impl Scanner {
    fn top_level(&self) -> bool {
        !self.quoted && !self.escaped && self.comment == 0 && !self.angle
    }

    fn in_comment(&self) -> bool {
        self.comment > 0
    }

    fn feed(&mut self, b: u8) {
        if self.escaped {
            self.escaped = false;
            return;
        }
        match b {
            b'\\' if self.quoted || self.comment > 0 => self.escaped = true,
            b'"' if self.comment == 0 => self.quoted = !self.quoted,
            b'(' if !self.quoted => self.comment += 1,
            b')' if !self.quoted && self.comment > 0 => self.comment -= 1,
            b'<' if !self.quoted && self.comment == 0 => self.angle = true,
            b'>' if !self.quoted && self.comment == 0 => self.angle = false,
            _ => {}
        }
    }
}

/// One element: a group name (left alone), a `name <addr>` mailbox, or a
/// bare addr-spec with comments around it.
fn map_element(element: &[u8], group_name: bool, f: &mut impl FnMut(&[u8]) -> Option<Vec<u8>>) -> Vec<u8> {
    if group_name {
        return element.to_vec();
    }
    match angle_span(element) {
        Some((open, close)) => {
            let inner = &element[open + 1..close];
            let lead = inner.len() - inner.trim_ascii_start().len();
            let addr = inner.trim_ascii();
            // `<>` and source routes (`<@a:b@c>`) are left as they are.
            if addr.is_empty() || addr.starts_with(b"@") {
                return element.to_vec();
            }
            match f(addr) {
                Some(new) => {
                    let at = open + 1 + lead;
                    [&element[..at], &new, &element[at + addr.len()..]].concat()
                }
                None => element.to_vec(),
            }
        }
        None => match bare_span(element) {
            Some((from, to)) => match f(&element[from..to]) {
                Some(new) => [&element[..from], &new, &element[to..]].concat(),
                None => element.to_vec(),
            },
            None => element.to_vec(),
        },
    }
}

/// The positions of the first top-level `<` and its `>`.
fn angle_span(element: &[u8]) -> Option<(usize, usize)> {
    let mut scan = Scanner::default();
    let mut open = None;
    for (i, &b) in element.iter().enumerate() {
        let before = scan.top_level();
        scan.feed(b);
        match (b, open) {
            (b'<', None) if before => open = Some(i),
            (b'>', Some(o)) if !scan.angle && !scan.quoted && !scan.in_comment() => return Some((o, i)),
            _ => {}
        }
    }
    None
}

/// The addr-spec of a bare element: the bytes outside comments, which
/// must form one run without white space (outside quotes) or comments
/// inside it. `None` when there is nothing, or not one address.
fn bare_span(element: &[u8]) -> Option<(usize, usize)> {
    let mut scan = Scanner::default();
    let mut span: Option<(usize, usize)> = None;
    let mut closed = false;
    for (i, &b) in element.iter().enumerate() {
        let in_comment = scan.in_comment() || (b == b'(' && !scan.quoted);
        let quoted = scan.quoted;
        scan.feed(b);
        let content = !in_comment && (quoted || scan.quoted || !b.is_ascii_whitespace());
        match (content, span) {
            (true, None) => span = Some((i, i + 1)),
            (true, Some(_)) if closed => return None,
            (true, Some((from, _))) => span = Some((from, i + 1)),
            (false, Some(_)) => closed = true,
            (false, None) => {}
        }
    }
    if scan.quoted || scan.in_comment() {
        return None;
    }
    span
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unqualified_addresses_get_the_domain_and_nothing_else_changes() {
        let cases: &[(&str, &str)] = &[
            (" root", " root@example.org"),
            (" root\r\n", " root@example.org\r\n"),
            (" root, alice@example.net,bob", " root@example.org, alice@example.net,bob@example.org"),
            (" \"Cron Daemon\" <root>", " \"Cron Daemon\" <root@example.org>"),
            (" Cron <root> (the daemon)", " Cron <root@example.org> (the daemon)"),
            (" root (Cron, the daemon)", " root@example.org (Cron, the daemon)"),
            (" (first) root", " (first) root@example.org"),
            (" \"root, the admin\" <root>", " \"root, the admin\" <root@example.org>"),
            (" \"a b\"", " \"a b\"@example.org"),
            (" \"a@b\"", " \"a@b\"@example.org"),
            (" undisclosed-recipients:;", " undisclosed-recipients:;"),
            (" Team: root, Bob <bob>;, carol", " Team: root@example.org, Bob <bob@example.org>;, carol@example.org"),
            (" root,\r\n\tops", " root@example.org,\r\n\tops@example.org"),
            (" <root >", " <root@example.org >"),
            (" <>", " <>"),
            (" <@relay.example:root@x.example>", " <@relay.example:root@x.example>"),
            (" alice@example.net", " alice@example.net"),
            (" =?utf-8?q?J=C3=B6rg?= <jorg>", " =?utf-8?q?J=C3=B6rg?= <jorg@example.org>"),
            // A bare phrase of several words is no address: left alone.
            (" John Smith", " John Smith"),
            (" \"unterminated", " \"unterminated"),
            ("", ""),
            (" ", " "),
            (" ,,", " ,,"),
        ];
        for (input, want) in cases {
            let got = qualify(input.as_bytes(), "example.org");
            assert_eq!(String::from_utf8_lossy(&got), *want, "{input:?}");
        }
    }

    #[test]
    fn eight_bit_names_stay_as_they_were() {
        let value = b" \"Andr\xe9\" <andre>, caf\xe9@example.net";
        assert_eq!(qualify(value, "example.org"), b" \"Andr\xe9\" <andre@example.org>, caf\xe9@example.net".to_vec());
    }

    #[test]
    fn the_callback_sees_each_addr_spec_once() {
        let mut seen = Vec::new();
        map_addresses(b" A <a@x>, (c) b@y (d), G: c@z;", |a| {
            seen.push(String::from_utf8_lossy(a).into_owned());
            None
        });
        assert_eq!(seen, ["a@x", "b@y", "c@z"]);
    }
}
