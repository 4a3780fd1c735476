//! Splitting the command stream into lines, with a length limit.
//!
//! This module owns the buffer of bytes read from the client that have not
//! yet been handled. The session pushes whatever a read returned and takes
//! complete lines out; during DATA it takes the whole buffer for the DATA
//! decoder and pushes back what followed the terminating dot; for BDAT it
//! takes exactly the chunk's octets that are already buffered.
//!
//! Line ends: RFC 5321 says CRLF, but command lines also end at a bare LF.
//! Hand-written clients (`printf ... | nc`, old scripts) send bare LF, and
//! accepting it for commands is harmless: a command line is interpreted here
//! and never passed on, so there is no second parser that could disagree
//! with this one. Message content is another matter; the DATA decoder is
//! strict (see `data.rs`).
//!
//! An over-long line is reported once, when its line end arrives, so the
//! client gets exactly one reply for it in order with its other commands;
//! its bytes are dropped as they come so memory stays bounded.

/// One item taken from the buffer.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Line<'a> {
    /// A complete line without its CRLF (or LF).
    Command(&'a [u8]),
    /// A line longer than the limit ended; its content was discarded.
    TooLong,
}

/// Buffered client input, split into command lines.
#[derive(Debug)]
pub struct LineReader {
    buf: Vec<u8>,
    /// Start of the bytes not yet handed out.
    start: usize,
    /// Longest line accepted, line end included.
    max: usize,
    /// Inside an over-long line: drop bytes up to its line end.
    discarding: bool,
}

impl LineReader {
    /// `max` is the longest line accepted, CRLF included.
    pub fn new(max: usize) -> LineReader {
        LineReader { buf: Vec::with_capacity(max.min(4096)), start: 0, max: max.max(2), discarding: false }
    }

    /// Appends bytes read from the client.
    pub fn push(&mut self, bytes: &[u8]) {
        if self.start == self.buf.len() {
            self.buf.clear();
            self.start = 0;
        } else if self.start > self.buf.len() / 2 {
            self.buf.drain(..self.start);
            self.start = 0;
        }
        self.buf.extend_from_slice(bytes);
    }

    /// The next complete line, or `None` when no complete line is buffered.
    pub(crate) fn next_line(&mut self) -> Option<Line<'_>> {
        let pending = &self.buf[self.start..];
        let Some(lf) = pending.iter().position(|&c| c == b'\n') else {
            // A partial line that cannot fit any more: start dropping it.
            if self.discarding || pending.len() >= self.max {
                self.discarding = true;
                self.start = self.buf.len();
            }
            return None;
        };
        let raw_len = lf + 1;
        let begin = self.start;
        self.start += raw_len;
        if std::mem::take(&mut self.discarding) || raw_len > self.max {
            return Some(Line::TooLong);
        }
        let line = &self.buf[begin..begin + lf];
        Some(Line::Command(line.strip_suffix(b"\r").unwrap_or(line)))
    }

    /// Whether bytes are buffered (a partial line, or unread complete lines).
    pub fn is_empty(&self) -> bool {
        self.start == self.buf.len()
    }

    /// Takes up to `max` buffered bytes: the start of a BDAT chunk that
    /// arrived together with its command line. What follows the chunk
    /// stays buffered as command input.
    pub fn take_up_to(&mut self, max: u64) -> &[u8] {
        let n = (self.buf.len() - self.start).min(usize::try_from(max).unwrap_or(usize::MAX));
        let begin = self.start;
        self.start += n;
        &self.buf[begin..begin + n]
    }

    /// Takes every buffered byte (used when DATA starts: what follows the
    /// DATA line belongs to the message).
    pub fn take_buffered(&mut self) -> Vec<u8> {
        let rest = self.buf.split_off(self.start);
        self.buf.clear();
        self.start = 0;
        rest
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// What a reader yields for `chunks`, with `max`: lines as strings,
    /// `!` for too-long; then the bytes still buffered.
    fn run(max: usize, chunks: &[&[u8]]) -> (Vec<String>, Vec<u8>) {
        let mut r = LineReader::new(max);
        let mut out = Vec::new();
        for chunk in chunks {
            r.push(chunk);
            while let Some(line) = r.next_line() {
                out.push(match line {
                    Line::Command(l) => String::from_utf8_lossy(l).into_owned(),
                    Line::TooLong => "!".into(),
                });
            }
        }
        (out, r.take_buffered())
    }

    #[test]
    fn lines_table() {
        type Case<'a> = (usize, Vec<&'a [u8]>, Vec<&'a str>, &'a [u8]);
        let cases: Vec<Case> = vec![
            (512, vec![b"EHLO x\r\n"], vec!["EHLO x"], b""),
            (512, vec![b"EHLO x\r\nMAIL FROM:<>\r\nRCPT"], vec!["EHLO x", "MAIL FROM:<>"], b"RCPT"),
            (512, vec![b"EH", b"LO x\r", b"\nQUIT\r\n"], vec!["EHLO x", "QUIT"], b""),
            // Bare LF ends a command line; a bare CR is part of the line.
            (512, vec![b"EHLO x\nQUIT\n"], vec!["EHLO x", "QUIT"], b""),
            (512, vec![b"NOOP a\rb\r\n"], vec!["NOOP a\rb"], b""),
            (512, vec![b"\r\n\n"], vec!["", ""], b""),
            // Limit: 10 bytes including CRLF.
            (10, vec![b"12345678\r\n"], vec!["12345678"], b""),
            (10, vec![b"123456789\r\n"], vec!["!"], b""),
            (10, vec![b"123456789\n"], vec!["123456789"], b""),
            (10, vec![b"1234567890\n"], vec!["!"], b""),
            (10, vec![b"12345678901234567890\r\nQUIT\r\n"], vec!["!", "QUIT"], b""),
            // An over-long line arriving in pieces is dropped as it comes and
            // reported once, at its end.
            (10, vec![b"1234567890", b"abcdefghij", b"klm\r\nNOOP\r\n"], vec!["!", "NOOP"], b""),
            (10, vec![b"1234567890", b"abc"], vec![], b""),
            (10, vec![b"123456789"], vec![], b"123456789"),
            (10, vec![b"123456789", b"\r", b"\n"], vec!["!"], b""),
            (10, vec![b"12345678\r", b"\n"], vec!["12345678"], b""),
        ];
        for (max, chunks, lines, rest) in cases {
            let (got_lines, got_rest) = run(max, &chunks);
            assert_eq!(got_lines, lines, "chunks {chunks:?}");
            assert_eq!(got_rest, rest, "rest of {chunks:?}");
        }
    }

    #[test]
    fn every_split_point_gives_the_same_lines() {
        let input: &[u8] = b"EHLO a\r\nMAIL FROM:<x@y>\nxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx\r\nRCPT TO:<z@y>\r\nDA";
        let whole = run(20, &[input]);
        assert_eq!(whole.0, ["EHLO a", "MAIL FROM:<x@y>", "!", "RCPT TO:<z@y>"]);
        for i in 0..=input.len() {
            for j in i..=input.len() {
                let got = run(20, &[&input[..i], &input[i..j], &input[j..]]);
                assert_eq!(got, whole, "split at {i},{j}");
            }
        }
    }

    #[test]
    fn buffer_stays_bounded_while_discarding() {
        let mut r = LineReader::new(100);
        for _ in 0..1000 {
            r.push(&[b'x'; 1000]);
            assert_eq!(r.next_line(), None);
            assert!(r.buf.len() <= 1000, "{}", r.buf.len());
        }
        r.push(b"\r\nQUIT\r\n");
        assert_eq!(r.next_line(), Some(Line::TooLong));
        assert_eq!(r.next_line(), Some(Line::Command(b"QUIT")));
        assert!(r.is_empty());
    }

    #[test]
    fn take_up_to_leaves_the_rest() {
        let mut r = LineReader::new(512);
        r.push(b"BDAT 5\r\nab\r\ncBDAT 3 LAST\r\nxy");
        assert_eq!(r.next_line(), Some(Line::Command(b"BDAT 5")));
        assert_eq!(r.take_up_to(5), b"ab\r\nc");
        assert_eq!(r.next_line(), Some(Line::Command(b"BDAT 3 LAST")));
        assert_eq!(r.take_up_to(3), b"xy");
        assert!(r.is_empty());
        assert_eq!(r.take_up_to(u64::MAX), b"");
        r.push(b"z\r\nQUIT\r\n");
        assert_eq!(r.take_up_to(1), b"z");
        assert_eq!(r.take_up_to(0), b"");
        assert_eq!(r.next_line(), Some(Line::Command(b"")));
        assert_eq!(r.next_line(), Some(Line::Command(b"QUIT")));
    }

    #[test]
    fn take_buffered_then_push_back() {
        let mut r = LineReader::new(512);
        r.push(b"DATA\r\nSubject: x\r\n");
        assert_eq!(r.next_line(), Some(Line::Command(b"DATA")));
        assert_eq!(r.take_buffered(), b"Subject: x\r\n");
        assert!(r.is_empty());
        r.push(b"QUIT\r\n");
        assert_eq!(r.next_line(), Some(Line::Command(b"QUIT")));
        assert_eq!(r.next_line(), None);
    }
}
