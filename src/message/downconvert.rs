//! Conversion of an 8-bit message to 7 bit, for a next hop that does not
//! offer 8BITMIME (RFC 6152 3: such a message is converted or bounced,
//! never sent as is). This is Postfix's `disable_mime_output_conversion = no`.
//!
//! The MIME structure (RFC 2045, 2046) is walked over the raw bytes, so that
//! every byte that does not need to change is sent unchanged: part headers,
//! boundaries, preambles and epilogues, and every part whose body is already
//! 7-bit. Only the header fields are parsed with mail-parser. A leaf part
//! with 8-bit octets labelled `8bit`, `binary`, `7bit` or nothing is
//! re-encoded: text (and `message/*` leaves such as `message/global`, RFC
//! 6532 3.5) as quoted-printable, anything else as base64, and its
//! `Content-Transfer-Encoding` is set to match. `multipart/*` and
//! `message/rfc822`, which may not be encoded themselves (RFC 2046 5.2.1),
//! are converted inside and relabelled `7bit`.
//!
//! What cannot be converted is refused, and the caller fails the delivery
//! with 5.6.3 (RFC 3463): 8-bit octets in a header field other than
//! `Received` (RFC 2047 encoding of arbitrary fields is out of scope), in a
//! multipart preamble or epilogue, in a part already labelled
//! quoted-printable or base64 (or with an unknown encoding), in
//! `message/partial` or `message/external-body`, in a multipart without its
//! boundary, or nested deeper than `MAX_DEPTH`.

use mail_parser::{MessageParser, MimeHeaders};
use std::borrow::Cow;

/// Deepest nesting of multiparts and messages walked; the walk recurses.
const MAX_DEPTH: usize = 32;
/// Longest encoded line, not counting CRLF (RFC 2045 6.7 rule 5, 6.8).
const LINE: usize = 76;

/// Why a message cannot be converted; the text is safe to show to a sender.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub(crate) struct Refusal(pub String);

fn refuse<T>(why: impl Into<String>) -> Result<T, Refusal> {
    Err(Refusal(why.into()))
}

/// The message with every 8-bit body converted to 7 bit; borrowed when
/// nothing had to change (8-bit octets only in `Received` fields are left).
pub(crate) fn to_seven_bit(message: &[u8]) -> Result<Cow<'_, [u8]>, Refusal> {
    if !has_8bit(message) {
        return Ok(Cow::Borrowed(message));
    }
    let mut out = Vec::with_capacity(message.len() + message.len() / 4);
    entity(message, Assumed::Text, true, 0, &mut out)?;
    Ok(if out == message { Cow::Borrowed(message) } else { Cow::Owned(out) })
}

/// Whether `bytes` hold an 8-bit octet, whatever the envelope declared: a
/// client may send 8-bit data without `BODY=8BITMIME`.
pub(crate) fn has_8bit(bytes: &[u8]) -> bool {
    bytes.iter().any(|b| *b >= 0x80)
}

/// The Content-Type a part without one has: text/plain, or message/rfc822
/// inside multipart/digest (RFC 2046 5.1.5).
#[derive(Clone, Copy, PartialEq, Eq)]
enum Assumed {
    Text,
    Message,
}

/// What a part is, as far as conversion cares.
#[derive(Debug, PartialEq, Eq)]
enum Kind {
    Multipart {
        boundary: Option<String>,
        digest: bool,
    },
    Rfc822,
    /// message/partial and message/external-body: 7bit only, never encoded.
    SevenBitOnly,
    /// A leaf encoded as quoted-printable.
    Text,
    /// A leaf encoded as base64.
    Binary,
}

/// Appends `raw` (header block, blank line, body) converted to `out`.
/// `message` is true for a whole message (the top, or a message/rfc822
/// body), which needs `MIME-Version` for its new encoding to count.
fn entity(raw: &[u8], default: Assumed, message: bool, depth: usize, out: &mut Vec<u8>) -> Result<(), Refusal> {
    if depth > MAX_DEPTH {
        return refuse(format!("MIME parts nested deeper than {MAX_DEPTH}"));
    }
    let (head, body) = split_entity(raw);
    check_header(head)?;
    if !has_8bit(body) {
        out.extend_from_slice(raw);
        return Ok(());
    }
    let (kind, cte) = describe(head, default);
    let label = cte.as_deref().unwrap_or("7bit");
    let identity = matches!(label, "7bit" | "8bit" | "binary");
    if !identity {
        return refuse(format!("8-bit octets in a part encoded as {label}"));
    }
    let mut converted = Vec::with_capacity(body.len() + body.len() / 4);
    let new_cte = match kind {
        Kind::Multipart { boundary: None, .. } => return refuse("multipart without a boundary parameter"),
        Kind::Multipart { boundary: Some(boundary), digest } => {
            multipart(body, &boundary, digest, depth, &mut converted)?;
            "7bit"
        }
        Kind::Rfc822 => {
            entity(body, Assumed::Text, true, depth + 1, &mut converted)?;
            "7bit"
        }
        Kind::SevenBitOnly => return refuse("8-bit octets in a message/partial or message/external-body part"),
        Kind::Text => {
            quoted_printable(body, &mut converted);
            "quoted-printable"
        }
        Kind::Binary => {
            base64(body, &mut converted);
            "base64"
        }
    };
    if cte.as_deref() == Some(new_cte) || (cte.is_none() && new_cte == "7bit") {
        out.extend_from_slice(head);
    } else {
        set_cte(head, new_cte, message, out);
    }
    out.extend_from_slice(&converted);
    Ok(())
}

/// Splits an entity after the empty line that ends its header block; with
/// no such line it is all header.
fn split_entity(raw: &[u8]) -> (&[u8], &[u8]) {
    let mut pos = 0;
    for line in raw.split_inclusive(|b| *b == b'\n') {
        pos += line.len();
        if line == b"\r\n" || line == b"\n" {
            return raw.split_at(pos);
        }
    }
    (raw, &[])
}

/// Refuses 8-bit octets in any header field but `Received`, where they
/// are common (8-bit HELO names) and harmless.
fn check_header(head: &[u8]) -> Result<(), Refusal> {
    let mut name: &[u8] = b"";
    for line in head.split_inclusive(|b| *b == b'\n') {
        if !line.starts_with(b" ") && !line.starts_with(b"\t") {
            name = line.split(|b| *b == b':').next().unwrap_or(b"").trim_ascii();
        }
        if has_8bit(line) && !name.eq_ignore_ascii_case(b"Received") {
            let shown: String =
                String::from_utf8_lossy(name).chars().filter(|c| c.is_ascii_graphic()).take(40).collect();
            return refuse(format!("8-bit octets in the {shown} header field"));
        }
    }
    Ok(())
}

/// The part's kind and its Content-Transfer-Encoding, lowercased.
fn describe(head: &[u8], default: Assumed) -> (Kind, Option<String>) {
    let parsed = MessageParser::new().parse_headers(head);
    let cte = parsed.as_ref().and_then(|m| m.content_transfer_encoding()).map(|c| c.trim().to_ascii_lowercase());
    let ctype = parsed.as_ref().and_then(|m| m.content_type());
    let Some(ctype) = ctype.filter(|c| !c.ctype().is_empty()) else {
        return (if default == Assumed::Text { Kind::Text } else { Kind::Rfc822 }, cte);
    };
    let main = ctype.ctype().to_ascii_lowercase();
    let sub = ctype.subtype().unwrap_or("").to_ascii_lowercase();
    let kind = match (main.as_str(), sub.as_str()) {
        ("multipart", _) => Kind::Multipart {
            boundary: ctype.attribute("boundary").filter(|b| !b.is_empty()).map(str::to_string),
            digest: sub == "digest",
        },
        ("message", "rfc822") => Kind::Rfc822,
        ("message", "partial" | "external-body") => Kind::SevenBitOnly,
        ("text" | "message", _) => Kind::Text,
        _ => Kind::Binary,
    };
    (kind, cte)
}

/// Converts each body part of a multipart body, keeping the preamble,
/// the delimiter lines (with the CRLF before each, which belongs to the
/// delimiter, RFC 2046 5.1.1) and the epilogue byte for byte.
fn multipart(body: &[u8], boundary: &str, digest: bool, depth: usize, out: &mut Vec<u8>) -> Result<(), Refusal> {
    let default = if digest { Assumed::Message } else { Assumed::Text };
    let parts = part_ranges(body, boundary.as_bytes());
    if parts.is_empty() {
        return refuse("8-bit octets in a multipart whose boundary never appears");
    }
    let mut copied = 0;
    for (start, end) in parts {
        let between = &body[copied..start];
        if has_8bit(between) {
            return refuse("8-bit octets in a multipart preamble");
        }
        out.extend_from_slice(between);
        entity(&body[start..end], default, false, depth + 1, out)?;
        copied = end;
    }
    if has_8bit(&body[copied..]) {
        return refuse("8-bit octets in a multipart epilogue");
    }
    out.extend_from_slice(&body[copied..]);
    Ok(())
}

/// The byte ranges of the body parts between delimiter lines. A missing
/// close delimiter ends the last part at the end of the body.
fn part_ranges(body: &[u8], boundary: &[u8]) -> Vec<(usize, usize)> {
    let mut parts = Vec::new();
    let mut open: Option<usize> = None;
    let mut pos = 0;
    for line in body.split_inclusive(|b| *b == b'\n') {
        let start = pos;
        pos += line.len();
        let Some(close) = delimiter(line, boundary) else {
            continue;
        };
        if let Some(from) = open {
            // The line end before the delimiter belongs to it.
            let crlf = if body[..start].ends_with(b"\r\n") { 2 } else { usize::from(body[..start].ends_with(b"\n")) };
            parts.push((from, (start - crlf).max(from)));
        }
        if close {
            return parts;
        }
        open = Some(pos);
    }
    if let Some(from) = open {
        parts.push((from, body.len()));
    }
    parts
}

/// Whether `line` is `--boundary` (Some(false)) or `--boundary--`
/// (Some(true)), allowing the trailing white space RFC 2046 permits.
fn delimiter(line: &[u8], boundary: &[u8]) -> Option<bool> {
    let rest = line.strip_prefix(b"--")?.strip_prefix(boundary)?;
    let (close, rest) = match rest.strip_prefix(b"--") {
        Some(rest) => (true, rest),
        None => (false, rest),
    };
    rest.iter().all(|b| matches!(b, b' ' | b'\t' | b'\r' | b'\n')).then_some(close)
}

/// Copies `head` to `out` with its Content-Transfer-Encoding fields
/// replaced by one saying `cte`, and `MIME-Version: 1.0` added to a
/// message that lacks it.
fn set_cte(head: &[u8], cte: &str, message: bool, out: &mut Vec<u8>) {
    let field = format!("Content-Transfer-Encoding: {cte}\r\n");
    let mut placed = false;
    let mut dropping = false;
    let mut has_version = false;
    for line in head.split_inclusive(|b| *b == b'\n') {
        let blank = line == b"\r\n" || line == b"\n";
        if !line.starts_with(b" ") && !line.starts_with(b"\t") {
            let name = line.split(|b| *b == b':').next().unwrap_or(b"").trim_ascii();
            dropping = !blank && name.eq_ignore_ascii_case(b"Content-Transfer-Encoding");
            has_version |= name.eq_ignore_ascii_case(b"MIME-Version");
        }
        if blank {
            break;
        }
        if dropping {
            if !placed {
                out.extend_from_slice(field.as_bytes());
                placed = true;
            }
            continue;
        }
        out.extend_from_slice(line);
    }
    if message && !has_version {
        out.extend_from_slice(b"MIME-Version: 1.0\r\n");
    }
    if !placed {
        out.extend_from_slice(field.as_bytes());
    }
    // The blank line as it was (the body is 8-bit, so there was one).
    out.extend_from_slice(if head.ends_with(b"\r\n") { b"\r\n" } else { b"\n" });
}

/// Quoted-printable (RFC 2045 6.7) with CRLF kept as line breaks, as text
/// needs; any other CR or LF is encoded. Lines are soft-broken to at most
/// `LINE` characters; white space before a line end is encoded.
fn quoted_printable(body: &[u8], out: &mut Vec<u8>) {
    const HEX: &[u8; 16] = b"0123456789ABCDEF";
    let mut rest = body;
    while !rest.is_empty() {
        let (line, hard) = match rest.windows(2).position(|w| w == b"\r\n") {
            Some(end) => (&rest[..end], true),
            None => (rest, false),
        };
        rest = &rest[line.len() + if hard { 2 } else { 0 }..];
        let mut width = 0;
        for (i, &b) in line.iter().enumerate() {
            let last = i + 1 == line.len();
            let mut literal = match b {
                b' ' | b'\t' => !last,
                b'=' => false,
                0x21..=0x7e => true,
                _ => false,
            };
            // Room for the '=' of a soft break, unless this ends the line.
            let room = if last { LINE } else { LINE - 1 };
            if width + if literal { 1 } else { 3 } > room {
                out.extend_from_slice(b"=\r\n");
                width = 0;
            }
            // A '-' opening a soft-broken line could read as a boundary.
            literal &= !(b == b'-' && width == 0 && i > 0);
            if literal {
                out.push(b);
                width += 1;
            } else {
                out.extend_from_slice(&[b'=', HEX[usize::from(b >> 4)], HEX[usize::from(b & 15)]]);
                width += 3;
            }
        }
        if hard {
            out.extend_from_slice(b"\r\n");
        }
    }
}

/// Base64 (RFC 2045 6.8) in lines of `LINE` characters; ends with CRLF when
/// the body did, so that a whole message still ends with a line end.
fn base64(body: &[u8], out: &mut Vec<u8>) {
    // BASE64_MIME wraps at 76 columns (= `LINE`) with CRLF, and ends its last
    // line with CRLF too; that one is kept only when the body ended a line.
    use data_encoding::BASE64_MIME;
    let start = out.len();
    out.resize(start + BASE64_MIME.encode_len(body.len()), 0);
    BASE64_MIME.encode_mut(body, &mut out[start..]);
    if !body.ends_with(b"\n") && out[start..].ends_with(b"\r\n") {
        out.truncate(out.len() - 2);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Decodes quoted-printable as a receiver would (soft breaks removed).
    fn decode_qp(text: &[u8]) -> Vec<u8> {
        let hex = |b: u8| (b as char).to_digit(16).unwrap() as u8;
        let (mut out, mut i) = (Vec::new(), 0);
        while i < text.len() {
            match text[i] {
                b'=' if text[i + 1..].starts_with(b"\r\n") => i += 3,
                b'=' => {
                    out.push(hex(text[i + 1]) << 4 | hex(text[i + 2]));
                    i += 3;
                }
                b => {
                    out.push(b);
                    i += 1;
                }
            }
        }
        out
    }

    fn decode_b64(text: &[u8]) -> Vec<u8> {
        let value = |b: u8| match b {
            b'A'..=b'Z' => b - b'A',
            b'a'..=b'z' => b - b'a' + 26,
            b'0'..=b'9' => b - b'0' + 52,
            b'+' => 62,
            _ => 63,
        };
        let clean: Vec<u8> =
            text.iter().copied().filter(|b| b.is_ascii_alphanumeric() || *b == b'+' || *b == b'/').collect();
        let mut out = Vec::new();
        for group in clean.chunks(4) {
            let v = group.iter().enumerate().fold(0u32, |v, (i, &b)| v | u32::from(value(b)) << (18 - 6 * i));
            out.extend_from_slice(&v.to_be_bytes()[1..group.len()]);
        }
        out
    }

    fn convert(message: &[u8]) -> Vec<u8> {
        let out = to_seven_bit(message).unwrap().into_owned();
        assert!(!has_8bit(&out), "{}", String::from_utf8_lossy(&out));
        out
    }

    fn body_of(entity: &[u8]) -> &[u8] {
        split_entity(entity).1
    }

    fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
        haystack.windows(needle.len()).position(|w| w == needle)
    }

    /// Every line of `text` is at most 76 characters.
    fn assert_short_lines(text: &[u8]) {
        for line in text.split(|b| *b == b'\n') {
            assert!(line.strip_suffix(b"\r").unwrap_or(line).len() <= LINE, "{:?}", String::from_utf8_lossy(line));
        }
    }

    const TEXT: &[u8] = "Grüße aus Köln\r\nline two: naïve café\r\n".as_bytes();

    #[test]
    fn text_plain_becomes_quoted_printable() {
        let mut msg = b"From: a@x.test\r\nSubject: hi\r\nContent-Type: text/plain; charset=utf-8\r\n\
            Content-Transfer-Encoding: 8bit\r\nMIME-Version: 1.0\r\n\r\n"
            .to_vec();
        msg.extend_from_slice(TEXT);
        let out = convert(&msg);
        let expected_head = b"From: a@x.test\r\nSubject: hi\r\nContent-Type: text/plain; charset=utf-8\r\n\
            Content-Transfer-Encoding: quoted-printable\r\nMIME-Version: 1.0\r\n\r\n";
        assert!(out.starts_with(expected_head), "{}", String::from_utf8_lossy(&out));
        let body = body_of(&out);
        assert_eq!(body, b"Gr=C3=BC=C3=9Fe aus K=C3=B6ln\r\nline two: na=C3=AFve caf=C3=A9\r\n");
        assert_eq!(decode_qp(body), TEXT);
    }

    #[test]
    fn non_mime_message_gets_a_label() {
        let mut msg = b"Subject: hi\r\n\r\n".to_vec();
        msg.extend_from_slice(TEXT);
        let out = convert(&msg);
        let (head, body) = split_entity(&out);
        assert_eq!(head, b"Subject: hi\r\nMIME-Version: 1.0\r\nContent-Transfer-Encoding: quoted-printable\r\n\r\n");
        assert_eq!(decode_qp(body), TEXT);
    }

    #[test]
    fn seven_bit_message_is_unchanged() {
        let msg = b"Subject: hi\r\nContent-Transfer-Encoding: 8bit\r\n\r\nplain ascii\r\n";
        assert!(matches!(to_seven_bit(msg), Ok(Cow::Borrowed(m)) if m == msg));
        // 8-bit octets only in a Received field: left as they are.
        let msg = "Received: from héllo.test by mx.test\r\n\tfor <ü@x.test>\r\nSubject: hi\r\n\r\nascii\r\n";
        assert!(matches!(to_seven_bit(msg.as_bytes()), Ok(Cow::Borrowed(_))));
    }

    #[test]
    fn eight_bit_headers_are_refused() {
        let cases: &[&str] = &[
            "Subject: Grüße\r\n\r\nbody\r\n",
            "Subject: ok\r\n  continued ü\r\n\r\nbody ü\r\n",
            "Received: from a\r\nFrom: Jürgen <j@x.test>\r\n\r\nbody\r\n",
            // In a part's header.
            "Content-Type: multipart/mixed; boundary=b\r\n\r\n--b\r\nContent-Type: text/plain; name=\"ü.txt\"\r\n\r\nx\r\n--b--\r\n",
        ];
        for msg in cases {
            let err = to_seven_bit(msg.as_bytes()).unwrap_err();
            assert!(err.0.contains("header field"), "{msg:?}: {err}");
        }
        let err = to_seven_bit("From: Jürgen <j@x.test>\r\n\r\n".as_bytes()).unwrap_err();
        assert_eq!(err.0, "8-bit octets in the From header field");
    }

    #[test]
    fn multipart_converts_only_the_eight_bit_parts() {
        let seven = b"Content-Type: text/plain; charset=us-ascii\r\n\r\nplain ascii part\r\n\r\nwith a blank line";
        let binary: Vec<u8> = (0..=255u8).chain(b"\r\n\r\n--bound\r\n".iter().copied()).collect();
        let mut msg = b"MIME-Version: 1.0\r\nContent-Type: multipart/mixed; boundary=\"bound\"\r\n\r\n\
            This is the preamble.\r\n--bound\r\nContent-Type: text/plain; charset=utf-8\r\n\r\n"
            .to_vec();
        msg.extend_from_slice(TEXT);
        msg.extend_from_slice(b"\r\n--bound  \r\n");
        msg.extend_from_slice(seven);
        msg.extend_from_slice(
            b"\r\n--bound\r\nContent-Type: application/octet-stream\r\n\
            Content-Transfer-Encoding: binary\r\n\r\n",
        );
        // Without the delimiter text inside: that would end the part.
        let binary = &binary[..256];
        msg.extend_from_slice(binary);
        msg.extend_from_slice(b"\r\n--bound--\r\nepilogue\r\n");
        let out = convert(&msg);
        let text = String::from_utf8(out.clone()).unwrap();
        // Head, preamble, every delimiter, the 7-bit part and the epilogue intact.
        assert!(text.starts_with(
            "MIME-Version: 1.0\r\nContent-Type: multipart/mixed; boundary=\"bound\"\r\n\r\nThis is the preamble.\r\n--bound\r\n"
        ));
        let mut seven_part = b"\r\n--bound  \r\n".to_vec();
        seven_part.extend_from_slice(seven);
        seven_part.extend_from_slice(b"\r\n--bound\r\n");
        assert!(find(&out, &seven_part).is_some(), "{text}");
        assert!(text.ends_with("\r\n--bound--\r\nepilogue\r\n"));
        assert_eq!(text.matches("--bound").count(), 4);
        // The text part as quoted-printable, the binary one as base64.
        let ranges = part_ranges(body_of(&out), b"bound");
        assert_eq!(ranges.len(), 3);
        let part = |i: usize| &body_of(&out)[ranges[i].0..ranges[i].1];
        let (head, body) = split_entity(part(0));
        assert_eq!(
            head,
            b"Content-Type: text/plain; charset=utf-8\r\nContent-Transfer-Encoding: quoted-printable\r\n\r\n"
        );
        assert_eq!(decode_qp(body), TEXT);
        assert_eq!(part(1), seven);
        let (head, body) = split_entity(part(2));
        assert_eq!(head, b"Content-Type: application/octet-stream\r\nContent-Transfer-Encoding: base64\r\n\r\n");
        assert_eq!(decode_b64(body), binary);
        assert_short_lines(body);
    }

    #[test]
    fn nested_multipart() {
        let msg = "Content-Type: multipart/mixed; boundary=outer\r\nContent-Transfer-Encoding: 8bit\r\n\r\n\
            --outer\r\nContent-Type: multipart/alternative; boundary=\"outer-inner\"\r\n\r\n\
            --outer-inner\r\nContent-Type: text/plain\r\n\r\nä\r\n\
            --outer-inner\r\nContent-Type: text/html\r\n\r\n<p>ö</p>\r\n\
            --outer-inner--\r\n\
            --outer\r\nContent-Type: text/plain\r\n\r\nascii\r\n--outer--\r\n";
        let out = String::from_utf8(convert(msg.as_bytes())).unwrap();
        let expected = "Content-Type: multipart/mixed; boundary=outer\r\nContent-Transfer-Encoding: 7bit\r\n\
            MIME-Version: 1.0\r\n\r\n\
            --outer\r\nContent-Type: multipart/alternative; boundary=\"outer-inner\"\r\n\r\n\
            --outer-inner\r\nContent-Type: text/plain\r\nContent-Transfer-Encoding: quoted-printable\r\n\r\n=C3=A4\r\n\
            --outer-inner\r\nContent-Type: text/html\r\nContent-Transfer-Encoding: quoted-printable\r\n\r\n<p>=C3=B6</p>\r\n\
            --outer-inner--\r\n\
            --outer\r\nContent-Type: text/plain\r\n\r\nascii\r\n--outer--\r\n";
        assert_eq!(out, expected);
    }

    #[test]
    fn message_rfc822_is_converted_inside() {
        let msg = "MIME-Version: 1.0\r\nContent-Type: multipart/mixed; boundary=b\r\n\r\n\
            --b\r\nContent-Type: text/plain\r\n\r\nsee attached\r\n\
            --b\r\nContent-Type: message/rfc822\r\nContent-Transfer-Encoding: 8bit\r\n\r\n\
            Subject: inner\r\nMIME-Version: 1.0\r\nContent-Type: text/plain; charset=utf-8\r\n\r\nÜber\r\n\
            --b--\r\n";
        let out = String::from_utf8(convert(msg.as_bytes())).unwrap();
        let expected = "MIME-Version: 1.0\r\nContent-Type: multipart/mixed; boundary=b\r\n\r\n\
            --b\r\nContent-Type: text/plain\r\n\r\nsee attached\r\n\
            --b\r\nContent-Type: message/rfc822\r\nContent-Transfer-Encoding: 7bit\r\n\r\n\
            Subject: inner\r\nMIME-Version: 1.0\r\nContent-Type: text/plain; charset=utf-8\r\n\
            Content-Transfer-Encoding: quoted-printable\r\n\r\n=C3=9Cber\r\n\
            --b--\r\n";
        assert_eq!(out, expected);
        // An 8-bit header inside the attached message cannot be converted.
        let bad = msg.replace("Subject: inner", "Subject: Über");
        assert!(to_seven_bit(bad.as_bytes()).unwrap_err().0.contains("Subject"));
    }

    #[test]
    fn header_names_and_values_ignore_case() {
        let msg = "content-type: Multipart/Mixed; BOUNDARY=\"X y\"\r\nMIME-Version: 1.0\r\n\r\n\
            --X y\r\nCONTENT-TYPE: TEXT/PLAIN\r\ncontent-transfer-encoding:\r\n 8BIT\r\nX-Other: 1\r\n\r\nñ\r\n--X y--\r\n";
        let out = String::from_utf8(convert(msg.as_bytes())).unwrap();
        let expected = "content-type: Multipart/Mixed; BOUNDARY=\"X y\"\r\nMIME-Version: 1.0\r\n\r\n\
            --X y\r\nCONTENT-TYPE: TEXT/PLAIN\r\nContent-Transfer-Encoding: quoted-printable\r\nX-Other: 1\r\n\r\n\
            =C3=B1\r\n--X y--\r\n";
        assert_eq!(out, expected);
    }

    #[test]
    fn digest_parts_default_to_messages() {
        let msg = "Content-Type: multipart/digest; boundary=d\r\n\r\n\
            --d\r\n\r\nSubject: one\r\n\r\né\r\n--d--\r\n";
        let out = String::from_utf8(convert(msg.as_bytes())).unwrap();
        assert!(
            out.contains("--d\r\n\r\nSubject: one\r\nMIME-Version: 1.0\r\nContent-Transfer-Encoding: quoted-printable\r\n\r\n=C3=A9\r\n--d--"),
            "{out}"
        );
    }

    #[test]
    fn long_lines_get_soft_breaks() {
        let line = "é".repeat(100) + &"x".repeat(200) + " - -" + &"-".repeat(90);
        let msg = format!("Subject: long\r\n\r\n{line}\r\nshort\r\n{}\r\n", "a".repeat(76));
        let out = convert(msg.as_bytes());
        let body = body_of(&out);
        assert_short_lines(body);
        assert!(body.split(|b| *b == b'\n').count() > 8);
        assert_eq!(decode_qp(body), format!("{line}\r\nshort\r\n{}\r\n", "a".repeat(76)).as_bytes());
        // A line of exactly 76 stays whole; 77 is broken.
        for (n, breaks) in [(75, 0), (76, 0), (77, 1)] {
            let mut out = Vec::new();
            quoted_printable(format!("é{}", "a".repeat(n - 6)).as_bytes(), &mut out);
            assert_eq!(out.windows(3).filter(|w| w == b"=\r\n").count(), breaks, "{n}");
        }
        // No soft-broken line starts with '-': it could read as a boundary.
        assert!(!body.windows(3).any(|w| w == b"\n--"));
    }

    #[test]
    fn quoted_printable_table() {
        let cases: &[(&[u8], &[u8])] = &[
            (b"", b""),
            (b"a=b\r\n", b"a=3Db\r\n"),
            (b"trailing  \r\n", b"trailing =20\r\n"),
            (b"tab\t\r\nx \t y", b"tab=09\r\nx \t y"),
            (b"end space ", b"end space=20"),
            (b"bare\nlf\rcr\r\n", b"bare=0Alf=0Dcr\r\n"),
            (b"\xff\x00", b"=FF=00"),
            (b"-- \r\n.\r\n", b"--=20\r\n.\r\n"),
        ];
        for (input, expected) in cases {
            let mut out = Vec::new();
            quoted_printable(input, &mut out);
            assert_eq!(String::from_utf8_lossy(&out), String::from_utf8_lossy(expected));
            assert_eq!(decode_qp(&out), *input);
        }
    }

    #[test]
    fn base64_round_trips() {
        for n in [0, 1, 2, 3, 56, 57, 58, 200] {
            let data: Vec<u8> = (0..n).map(|i| (i * 37 % 256) as u8).collect();
            let mut out = Vec::new();
            base64(&data, &mut out);
            assert_short_lines(&out);
            assert_eq!(decode_b64(&out), data, "{n}");
        }
        let mut out = Vec::new();
        base64(b"\xfa", &mut out);
        assert_eq!(out, b"+g==");
    }

    #[test]
    fn random_text_round_trips() {
        let mut rng = fastrand::Rng::with_seed(6152);
        let alphabet: &[u8] = b"ab =\t-.\r\n\xc3\xa9\xff";
        for _ in 0..500 {
            let body: Vec<u8> = (0..rng.usize(0..300)).map(|_| alphabet[rng.usize(..alphabet.len())]).collect();
            let mut out = Vec::new();
            quoted_printable(&body, &mut out);
            assert!(!has_8bit(&out));
            assert_short_lines(&out);
            assert_eq!(decode_qp(&out), body, "{:?}", String::from_utf8_lossy(&body));
            for line in out.split(|b| *b == b'\n') {
                let line = line.strip_suffix(b"\r").unwrap_or(line);
                assert!(!line.ends_with(b" ") && !line.ends_with(b"\t"), "{:?}", String::from_utf8_lossy(line));
            }
        }
    }

    #[test]
    fn what_cannot_be_converted_is_refused() {
        let deep: String =
            (0..40).map(|i| format!("Content-Type: multipart/mixed; boundary=b{i}\r\n\r\n--b{i}\r\n")).collect();
        let deep = deep + "\r\né\r\n";
        let cases: &[(&str, &str)] = &[
            ("Content-Transfer-Encoding: base64\r\n\r\n6Q==é\r\n", "encoded as base64"),
            ("Content-Transfer-Encoding: quoted-printable\r\n\r\né\r\n", "encoded as quoted-printable"),
            ("Content-Transfer-Encoding: x-uuencode\r\n\r\né\r\n", "encoded as x-uuencode"),
            ("Content-Type: multipart/mixed\r\n\r\n--b\r\n\r\né\r\n--b--\r\n", "without a boundary"),
            ("Content-Type: multipart/mixed; boundary=b\r\n\r\né\r\n", "boundary never appears"),
            ("Content-Type: multipart/mixed; boundary=b\r\n\r\npré\r\n--b\r\n\r\nx\r\n--b--\r\n", "preamble"),
            ("Content-Type: multipart/mixed; boundary=b\r\n\r\n--b\r\n\r\nx\r\n--b--\r\nepí\r\n", "epilogue"),
            ("Content-Type: message/partial; id=x; number=1\r\n\r\né\r\n", "message/partial"),
            (&deep, "nested deeper"),
        ];
        for (msg, why) in cases {
            let err = to_seven_bit(msg.as_bytes()).unwrap_err();
            assert!(err.0.contains(why), "{msg:?}: {err}");
        }
    }

    #[test]
    fn delimiter_table() {
        let cases: &[(&[u8], Option<bool>)] = &[
            (b"--b\r\n", Some(false)),
            (b"--b--\r\n", Some(true)),
            (b"--b \t\r\n", Some(false)),
            (b"--b-- \r\n", Some(true)),
            (b"--b", Some(false)),
            (b"--bc\r\n", None),
            (b"--b-x\r\n", None),
            (b" --b\r\n", None),
            (b"-b\r\n", None),
        ];
        for (line, expected) in cases {
            assert_eq!(delimiter(line, b"b"), *expected, "{:?}", String::from_utf8_lossy(line));
        }
    }
}
