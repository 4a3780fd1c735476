//! Mailbox addresses inside SMTP paths: `<local@domain>` as RFC 5321 4.1.2
//! defines it, widened by RFC 6531 for UTF-8.
//!
//! This module owns the path grammar and its length limits, nothing else:
//! whether a non-ASCII address is allowed depends on the transaction
//! (SMTPUTF8), so the parser accepts UTF-8 everywhere the RFC 6531 grammar
//! does and callers check `str::is_ascii` against the transaction.
//!
//! The mailbox is returned as written (a quoted local part keeps its quotes),
//! because rewriting it here would change what the next hop sees. Source
//! routes (`<@a,@b:user@c>`) are checked and dropped, as RFC 5321 4.1.1.3
//! tells servers to do.

use std::net::{Ipv4Addr, Ipv6Addr};

/// Longest local part, in octets (RFC 5321 4.5.3.1.1).
pub(crate) const MAX_LOCAL_PART: usize = 64;
/// Longest domain, in octets (RFC 5321 4.5.3.1.2).
pub(crate) const MAX_DOMAIN: usize = 255;
/// Longest path including `<`, `>` and any source route (RFC 5321 4.5.3.1.3).
pub const MAX_PATH: usize = 256;

/// Which path is being parsed; they differ in the special forms allowed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum PathKind {
    /// MAIL FROM: the null path `<>` is allowed.
    Reverse,
    /// RCPT TO: `<postmaster>` without a domain is allowed.
    Forward,
}

/// Why an address was refused. The text is safe to send to the peer: it
/// never echoes client input.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub(crate) enum AddressError {
    #[error("address must be enclosed in <>")]
    MissingAngle,
    #[error("missing closing >")]
    Unterminated,
    #[error("empty address")]
    Empty,
    #[error("invalid source route")]
    BadRoute,
    #[error("invalid local part")]
    BadLocalPart,
    #[error("missing @domain")]
    MissingDomain,
    #[error("invalid domain")]
    BadDomain,
    #[error("invalid address literal")]
    BadLiteral,
    #[error("local part longer than 64 octets")]
    LocalPartTooLong,
    #[error("domain longer than 255 octets")]
    DomainTooLong,
    #[error("path longer than 256 octets")]
    PathTooLong,
}

/// Parses the `<path>` at the start of `input`. Returns the mailbox (empty
/// for the null sender, `postmaster` for the bare postmaster recipient) and
/// what follows the closing `>`.
pub(crate) fn parse_path(input: &str, kind: PathKind) -> Result<(String, &str), AddressError> {
    let b = input.as_bytes();
    if b.first() != Some(&b'<') {
        return Err(AddressError::MissingAngle);
    }
    let mut i = 1;
    let routed = b.get(i) == Some(&b'@');
    if routed {
        i = skip_route(b, i)?;
    }
    let start = i;
    match b.get(i) {
        None => return Err(AddressError::Unterminated),
        Some(b'>') if kind == PathKind::Reverse && !routed => return Ok((String::new(), &input[i + 1..])),
        Some(b'>') => return Err(AddressError::Empty),
        _ => {}
    }
    i = skip_local_part(b, i)?;
    let local_len = i - start;
    match b.get(i) {
        Some(b'@') => {}
        Some(b'>') if kind == PathKind::Forward && !routed && input[start..i].eq_ignore_ascii_case("postmaster") => {
            return Ok(("postmaster".into(), &input[i + 1..]));
        }
        Some(b'>') => return Err(AddressError::MissingDomain),
        None => return Err(AddressError::Unterminated),
        Some(_) => return Err(AddressError::BadLocalPart),
    }
    let domain_start = i + 1;
    i = if b.get(domain_start) == Some(&b'[') { skip_literal(b, domain_start)? } else { skip_domain(b, domain_start)? };
    match b.get(i) {
        Some(b'>') => {}
        None => return Err(AddressError::Unterminated),
        Some(_) => return Err(AddressError::BadDomain),
    }
    if local_len > MAX_LOCAL_PART {
        return Err(AddressError::LocalPartTooLong);
    }
    if i - domain_start > MAX_DOMAIN {
        return Err(AddressError::DomainTooLong);
    }
    if i + 1 > MAX_PATH {
        return Err(AddressError::PathTooLong);
    }
    Ok((input[start..i].to_string(), &input[i + 1..]))
}

/// The domain part of a mailbox returned by `parse_path`, if it has one.
/// The last `@` is the separator: a quoted local part may contain `@`, a
/// domain never does.
pub(crate) fn domain_of(mailbox: &str) -> Option<&str> {
    mailbox.rsplit_once('@').map(|(_, d)| d)
}

/// Skips `@dom,@dom:` starting at the first `@`; returns the index after `:`.
fn skip_route(b: &[u8], mut i: usize) -> Result<usize, AddressError> {
    loop {
        if b.get(i) != Some(&b'@') {
            return Err(AddressError::BadRoute);
        }
        let end = skip_domain(b, i + 1).map_err(|_| AddressError::BadRoute)?;
        match b.get(end) {
            Some(b',') => i = end + 1,
            Some(b':') => return Ok(end + 1),
            None => return Err(AddressError::Unterminated),
            Some(_) => return Err(AddressError::BadRoute),
        }
    }
}

/// RFC 5321 atext, plus any non-ASCII byte (RFC 6531 UTF8-non-ascii; the
/// input is a `str`, so the bytes form valid UTF-8).
fn is_atext(c: u8) -> bool {
    c.is_ascii_alphanumeric() || b"!#$%&'*+-/=?^_`{|}~".contains(&c) || c >= 0x80
}

/// Skips a dot-string or quoted-string local part; returns the index after it.
fn skip_local_part(b: &[u8], mut i: usize) -> Result<usize, AddressError> {
    if b.get(i) == Some(&b'"') {
        i += 1;
        loop {
            match b.get(i) {
                None => return Err(AddressError::Unterminated),
                Some(b'"') => return Ok(i + 1),
                Some(b'\\') => match b.get(i + 1) {
                    Some(32..=126) => i += 2,
                    None => return Err(AddressError::Unterminated),
                    Some(_) => return Err(AddressError::BadLocalPart),
                },
                Some(&c) if (32..=126).contains(&c) || c >= 0x80 => i += 1,
                Some(_) => return Err(AddressError::BadLocalPart),
            }
        }
    }
    // Dot-string: atoms separated by single dots, no dot at either end.
    let start = i;
    let mut last_dot = true;
    while let Some(&c) = b.get(i) {
        if c == b'.' {
            if last_dot {
                return Err(AddressError::BadLocalPart);
            }
            last_dot = true;
        } else if is_atext(c) {
            last_dot = false;
        } else {
            break;
        }
        i += 1;
    }
    if i == start || last_dot {
        return Err(AddressError::BadLocalPart);
    }
    Ok(i)
}

/// Skips a domain name starting at `i`; returns the index of the first byte
/// that cannot belong to it, after checking the labels.
fn skip_domain(b: &[u8], i: usize) -> Result<usize, AddressError> {
    let end = b[i..]
        .iter()
        .position(|&c| !(c.is_ascii_alphanumeric() || c == b'-' || c == b'.' || c >= 0x80))
        .map_or(b.len(), |p| i + p);
    let domain = &b[i..end];
    if domain.is_empty() {
        return Err(AddressError::BadDomain);
    }
    for label in domain.split(|&c| c == b'.') {
        // RFC 5321 sub-domain: Let-dig [Ldh-str]; U-labels (RFC 6531) may
        // hold non-ASCII but still may not start or end with a hyphen.
        let bad = label.is_empty() || label.len() > 63 || label.first() == Some(&b'-') || label.last() == Some(&b'-');
        if bad {
            return Err(AddressError::BadDomain);
        }
    }
    Ok(end)
}

/// Skips `[1.2.3.4]` or `[IPv6:...]` starting at `[`; returns the index
/// after `]`. General address literals (`[tag:...]`) are refused: nothing
/// here could deliver to them.
fn skip_literal(b: &[u8], i: usize) -> Result<usize, AddressError> {
    let close = b[i..].iter().position(|&c| c == b']').map(|p| i + p).ok_or(AddressError::BadLiteral)?;
    let inner = std::str::from_utf8(&b[i + 1..close]).map_err(|_| AddressError::BadLiteral)?;
    let ok = match inner.get(..5) {
        Some(tag) if tag.eq_ignore_ascii_case("IPv6:") => inner[5..].parse::<Ipv6Addr>().is_ok(),
        _ => inner.parse::<Ipv4Addr>().is_ok(),
    };
    if ok { Ok(close + 1) } else { Err(AddressError::BadLiteral) }
}

#[cfg(test)]
mod tests {
    use super::AddressError::*;
    use super::PathKind::*;
    use super::*;

    #[test]
    fn paths_table() {
        let long_local = format!("<{}@example.org>", "a".repeat(65));
        let max_local = format!("<{}@example.org>", "a".repeat(64));
        let long_label = format!("<a@{}.org>", "b".repeat(64));
        let long_domain = format!("<a@{}>", vec!["c".repeat(63); 5].join("."));
        let long_path = format!("<{}@{}>", "a".repeat(64), vec!["c".repeat(60); 4].join("."));
        let max_path = format!("<{}@{}>", "a".repeat(64), vec!["c".repeat(46); 4].join(".") + ".a");
        type Case<'a> = (&'a str, PathKind, Result<(&'a str, &'a str), AddressError>);
        let cases: Vec<Case> = vec![
            // Ordinary addresses and what follows them.
            ("<user@example.org>", Forward, Ok(("user@example.org", ""))),
            ("<user@example.org> SIZE=10", Reverse, Ok(("user@example.org", " SIZE=10"))),
            ("<first.last+tag@sub.example.org>", Forward, Ok(("first.last+tag@sub.example.org", ""))),
            ("<!#$%&'*+-/=?^_`{|}~@x>", Forward, Ok(("!#$%&'*+-/=?^_`{|}~@x", ""))),
            ("<a@localhost>", Forward, Ok(("a@localhost", ""))),
            ("<a@EXAMPLE.org>", Forward, Ok(("a@EXAMPLE.org", ""))),
            ("<a@1-2.x9>", Forward, Ok(("a@1-2.x9", ""))),
            // Null sender and postmaster.
            ("<>", Reverse, Ok(("", ""))),
            ("<> BODY=8BITMIME", Reverse, Ok(("", " BODY=8BITMIME"))),
            ("<>", Forward, Err(Empty)),
            ("<postmaster>", Forward, Ok(("postmaster", ""))),
            ("<PostMaster>", Forward, Ok(("postmaster", ""))),
            ("<postmaster>", Reverse, Err(MissingDomain)),
            ("<root>", Forward, Err(MissingDomain)),
            // Quoted local parts keep their quotes; > and @ inside are data.
            ("<\"john doe\"@example.org>", Forward, Ok(("\"john doe\"@example.org", ""))),
            ("<\"a>b@c\"@example.org>", Forward, Ok(("\"a>b@c\"@example.org", ""))),
            ("<\"a\\\"b\"@x>", Forward, Ok(("\"a\\\"b\"@x", ""))),
            ("<\"\"@x>", Forward, Ok(("\"\"@x", ""))),
            ("<\"a\tb\"@x>", Forward, Err(BadLocalPart)),
            ("<\"abc@x>", Forward, Err(Unterminated)),
            // Source routes are dropped.
            ("<@a.example:user@c.example>", Forward, Ok(("user@c.example", ""))),
            ("<@a,@b.example:user@c>", Reverse, Ok(("user@c", ""))),
            ("<@a:>", Reverse, Err(Empty)),
            ("<@a:postmaster>", Forward, Err(MissingDomain)),
            ("<@a;user@c>", Forward, Err(BadRoute)),
            ("<@a,b:user@c>", Forward, Err(BadRoute)),
            ("<@:user@c>", Forward, Err(BadRoute)),
            ("<@-a:user@c>", Forward, Err(BadRoute)),
            // Address literals.
            ("<a@[192.0.2.1]>", Forward, Ok(("a@[192.0.2.1]", ""))),
            ("<a@[IPv6:2001:db8::1]>", Forward, Ok(("a@[IPv6:2001:db8::1]", ""))),
            ("<a@[ipv6:::1]>", Forward, Ok(("a@[ipv6:::1]", ""))),
            ("<a@[192.0.2.256]>", Forward, Err(BadLiteral)),
            ("<a@[2001:db8::1]>", Forward, Err(BadLiteral)),
            ("<a@[x400:foo]>", Forward, Err(BadLiteral)),
            ("<a@[192.0.2.1>", Forward, Err(BadLiteral)),
            ("<a@[192.0.2.1]x>", Forward, Err(BadDomain)),
            // Broken syntax.
            ("user@example.org", Forward, Err(MissingAngle)),
            ("", Reverse, Err(MissingAngle)),
            (" <a@b>", Forward, Err(MissingAngle)),
            ("<", Reverse, Err(Unterminated)),
            ("<a@b", Forward, Err(Unterminated)),
            ("<a", Forward, Err(Unterminated)),
            ("<a@b.c", Forward, Err(Unterminated)),
            ("<a b@c>", Forward, Err(BadLocalPart)),
            ("<.a@c>", Forward, Err(BadLocalPart)),
            ("<a.@c>", Forward, Err(BadLocalPart)),
            ("<a..b@c>", Forward, Err(BadLocalPart)),
            ("<a(b)@c>", Forward, Err(BadLocalPart)),
            ("<@>", Forward, Err(BadRoute)),
            ("<a@>", Forward, Err(BadDomain)),
            ("<a@b..c>", Forward, Err(BadDomain)),
            ("<a@.b>", Forward, Err(BadDomain)),
            ("<a@b.>", Forward, Err(BadDomain)),
            ("<a@-b.c>", Forward, Err(BadDomain)),
            ("<a@b-.c>", Forward, Err(BadDomain)),
            ("<a@b_c.d>", Forward, Err(BadDomain)),
            ("<a@b@c>", Forward, Err(BadDomain)),
            ("<a@b c>", Forward, Err(BadDomain)),
            // UTF-8 (allowed by the grammar; SMTPUTF8 is checked by callers).
            ("<jøran@blåbærsyltetøy.example>", Forward, Ok(("jøran@blåbærsyltetøy.example", ""))),
            ("<\"ü ü\"@x>", Forward, Ok(("\"ü ü\"@x", ""))),
            ("<用户@例子.广告>", Reverse, Ok(("用户@例子.广告", ""))),
            // Length limits.
            (&max_local, Forward, Ok((&max_local[1..max_local.len() - 1], ""))),
            (&long_local, Forward, Err(LocalPartTooLong)),
            (&long_label, Forward, Err(BadDomain)),
            (&long_domain, Forward, Err(DomainTooLong)),
            (&long_path, Forward, Err(PathTooLong)),
            (&max_path, Forward, Ok((&max_path[1..max_path.len() - 1], ""))),
        ];
        for (input, kind, expected) in cases {
            let got = parse_path(input, kind);
            let got = got.as_ref().map(|(m, rest)| (m.as_str(), *rest)).map_err(|e| *e);
            assert_eq!(got, expected, "input {input:?} as {kind:?}");
        }
        assert_eq!(max_path.len(), MAX_PATH);
    }

    #[test]
    fn domain_of_takes_the_last_at() {
        let cases = [
            ("a@example.org", Some("example.org")),
            ("\"a@b\"@example.org", Some("example.org")),
            ("postmaster", None),
            ("", None),
        ];
        for (mailbox, expected) in cases {
            assert_eq!(domain_of(mailbox), expected, "{mailbox:?}");
        }
    }
}
