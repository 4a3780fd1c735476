//! The DATA decoder: the message text between `354` and `CRLF.CRLF`, and
//! the octets of BDAT chunks (RFC 3030).
//!
//! This module owns end-of-data detection and dot-unstuffing (RFC 5321
//! 4.1.1.4 and 4.5.2), and the checks that must see the raw stream: bare CR
//! or LF, line length, size. It is fed arbitrary chunks and keeps its state
//! between them, so a terminator split across reads is still found.
//!
//! BDAT data (`DataDecoder::chunks`) is counted and checked the same way,
//! so both commands apply one policy to message content, but it is neither
//! dot-unstuffed nor ever ended by a dot: the BDAT sizes say where it ends,
//! and a CRLF split between two chunks is still one line end.
//!
//! Only `CRLF . CRLF` ends the data, and a bare LF never counts as the start
//! of a line. That strictness is the defence against SMTP smuggling: if
//! `LF . LF` or `LF . CRLF` ended a message here but not at the sending
//! server, a client could hide a second transaction inside one message,
//! which this server would then accept as coming from that sender. A message
//! with any bare CR or LF is flagged so the session refuses it.
//!
//! Trusted clients (Python's `smtplib.sendmail` with a message built with LF
//! line ends, scripts on the machine itself) get Postfix 3.9's
//! `smtpd_forbid_bare_newline = normalize` instead (`normalizing`): a bare
//! LF ends the line and is stored as CRLF, and a dot after it is stuffing
//! like any other line's, but the data still ends only at `CRLF . CRLF`.
//! A `.` line that follows a bare LF is text: the end of data cannot be
//! smuggled even from a trusted client.
//!
//! The CRLF that ended the DATA command counts as the first CRLF of the
//! terminator, so a message may be empty.

/// Where the decoder is inside the current line.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum State {
    /// At the start of a line (after CRLF, or right after DATA).
    LineStart,
    /// Inside a line.
    Text,
    /// Inside a line, just after a CR.
    Cr,
    /// A line began with `.`; the dot was dropped (unstuffing).
    Dot,
    /// A line began with `.` CR: LF now ends the data, unless the line
    /// began after a bare LF (normalizing only).
    DotCr,
    /// The terminator was seen.
    Done,
}

/// Incremental decoder for one message's DATA.
#[derive(Debug)]
pub struct DataDecoder {
    state: State,
    max_line: usize,
    /// Raw bytes in the current line so far, line end included.
    line_len: usize,
    size: u64,
    bare_cr: bool,
    bare_lf: bool,
    long_line: bool,
    /// DATA: a leading dot is stuffing, and `.` CRLF ends the data. Not
    /// for BDAT.
    dot_stuffed: bool,
    /// A bare LF is a line end, stored as CRLF, instead of a refusal.
    normalize: bool,
    /// The current line began after a bare LF (normalizing only): a lone
    /// dot on it does not end the data.
    after_bare_lf: bool,
}

impl DataDecoder {
    /// A decoder for DATA; `max_line` is the longest text line accepted,
    /// CRLF included.
    pub fn new(max_line: usize) -> DataDecoder {
        DataDecoder {
            state: State::LineStart,
            max_line,
            dot_stuffed: true,
            line_len: 0,
            size: 0,
            bare_cr: false,
            bare_lf: false,
            long_line: false,
            normalize: false,
            after_bare_lf: false,
        }
    }

    /// The same decoder, with bare LF taken as a line end and stored as
    /// CRLF (see the module doc); bare CR is still flagged.
    pub fn normalizing(self) -> DataDecoder {
        DataDecoder { normalize: true, ..self }
    }

    /// A decoder for the octets of a message's BDAT chunks, fed one after
    /// another: every byte belongs to the message, and `feed` always
    /// consumes all of its input. Call `end` after the LAST chunk.
    pub fn chunks(max_line: usize) -> DataDecoder {
        DataDecoder { dot_stuffed: false, ..DataDecoder::new(max_line) }
    }

    /// The data ends here (BDAT LAST): a CR still waiting for its LF is a
    /// bare CR. It is passed on to `out` like any other bare CR.
    pub fn end(&mut self, out: &mut Vec<u8>) {
        if self.state == State::Cr {
            self.bare_cr = true;
            self.emit(b"\r", out);
            self.state = State::Text;
        }
    }

    /// Decodes `input`, appending the message bytes (unstuffed, CRLF line
    /// ends kept) to `out`. Returns how many input bytes belong to the
    /// message; when that is less than `input.len()` the terminator was
    /// found and the rest is the client's next command. After the
    /// terminator, feeding consumes nothing.
    pub fn feed(&mut self, input: &[u8], out: &mut Vec<u8>) -> usize {
        let mut i = 0;
        while i < input.len() {
            match self.state {
                State::Done => break,
                State::LineStart => {
                    self.line_len = 0;
                    if self.dot_stuffed && input[i] == b'.' {
                        self.count(1);
                        i += 1;
                        self.state = State::Dot;
                    } else {
                        self.state = State::Text;
                    }
                }
                State::Text => {
                    // Fast path: copy the run up to the next CR or LF at once.
                    let rest = &input[i..];
                    let run = rest.iter().position(|&c| c == b'\r' || c == b'\n').unwrap_or(rest.len());
                    self.emit(&rest[..run], out);
                    self.count(run);
                    i += run;
                    if let Some(&c) = input.get(i) {
                        i += 1;
                        self.count(1);
                        if c == b'\r' {
                            self.state = State::Cr;
                        } else if self.normalize {
                            self.emit(b"\r\n", out);
                            self.state = State::LineStart;
                            self.after_bare_lf = true;
                        } else {
                            // Bare LF: not a line start (see the module doc).
                            self.bare_lf = true;
                            self.emit(b"\n", out);
                            self.line_len = 0;
                        }
                    }
                }
                State::Cr | State::DotCr => {
                    if input[i] == b'\n' {
                        i += 1;
                        if self.state == State::DotCr && !self.after_bare_lf {
                            self.state = State::Done;
                        } else {
                            self.count(1);
                            self.emit(b"\r\n", out);
                            self.state = State::LineStart;
                            self.after_bare_lf = false;
                        }
                    } else {
                        // Bare CR; the byte after it is handled as text.
                        self.bare_cr = true;
                        self.emit(b"\r", out);
                        self.state = State::Text;
                    }
                }
                State::Dot => {
                    if input[i] == b'\r' {
                        self.count(1);
                        i += 1;
                        self.state = State::DotCr;
                    } else {
                        self.state = State::Text;
                    }
                }
            }
        }
        i
    }

    /// The terminating `CRLF.CRLF` was seen.
    pub fn is_done(&self) -> bool {
        self.state == State::Done
    }

    /// Bytes of decoded message so far.
    pub fn size(&self) -> u64 {
        self.size
    }

    /// A CR not followed by LF, or an LF not preceded by CR, was seen.
    pub(crate) fn saw_bare_line_ending(&self) -> bool {
        self.bare_cr || self.bare_lf
    }

    pub fn saw_bare_cr(&self) -> bool {
        self.bare_cr
    }

    pub fn saw_bare_lf(&self) -> bool {
        self.bare_lf
    }

    /// A line longer than the limit was seen.
    pub fn saw_long_line(&self) -> bool {
        self.long_line
    }

    fn emit(&mut self, bytes: &[u8], out: &mut Vec<u8>) {
        self.size += bytes.len() as u64;
        out.extend_from_slice(bytes);
    }

    fn count(&mut self, n: usize) {
        self.line_len += n;
        if self.line_len > self.max_line {
            self.long_line = true;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, PartialEq, Eq)]
    struct Result {
        message: Vec<u8>,
        done: bool,
        rest: Vec<u8>,
        bare_cr: bool,
        bare_lf: bool,
        long_line: bool,
        size: u64,
    }

    /// Feeds `chunks` one after another, as the session does: what a chunk
    /// leaves over after the end is the rest.
    fn decode(max_line: usize, chunks: &[&[u8]]) -> Result {
        let mut d = DataDecoder::new(max_line);
        let mut message = Vec::new();
        let mut rest = Vec::new();
        for chunk in chunks {
            let used = d.feed(chunk, &mut message);
            rest.extend_from_slice(&chunk[used..]);
        }
        Result {
            size: d.size(),
            done: d.is_done(),
            rest,
            bare_cr: d.saw_bare_cr(),
            bare_lf: d.saw_bare_lf(),
            long_line: d.saw_long_line(),
            message,
        }
    }

    fn ok(message: &[u8], rest: &[u8]) -> Result {
        Result {
            message: message.into(),
            done: true,
            rest: rest.into(),
            bare_cr: false,
            bare_lf: false,
            long_line: false,
            size: message.len() as u64,
        }
    }

    /// Normalizing (trusted clients): bare LF is a line end stored as
    /// CRLF, dots after it are unstuffed, and only CRLF . CRLF ends.
    #[test]
    fn normalizing_bare_lf() {
        let run = |input: &[u8]| {
            let mut d = DataDecoder::new(1000).normalizing();
            let mut out = Vec::new();
            let used = d.feed(input, &mut out);
            (out, d.is_done(), input[used..].to_vec(), d.saw_bare_line_ending())
        };
        // smtplib's bytes message: LF lines, stuffed, then CRLF . CRLF.
        let (out, done, rest, flagged) = run(b"Subject: x\n\n..dot\nbody\r\n.\r\nQUIT\r\n");
        assert_eq!(out, b"Subject: x\r\n\r\n.dot\r\nbody\r\n");
        assert!(done && !flagged);
        assert_eq!(rest, b"QUIT\r\n");
        // LF . CRLF and LF . LF are text, never the end.
        let (out, done, _, _) = run(b"one\n.\r\nMAIL FROM:<x@y>\r\n.\n");
        assert!(!done);
        assert_eq!(out, b"one\r\n\r\nMAIL FROM:<x@y>\r\n\r\n");
        // The standard end still ends it, after a normalized line too.
        let (out, done, _, _) = run(b"a\nb\r\n.\r\n");
        assert!(done);
        assert_eq!(out, b"a\r\nb\r\n");
        // A bare CR is still flagged.
        let (_, _, _, flagged) = run(b"a\rb\r\n.\r\n");
        assert!(flagged);
    }

    #[test]
    fn decode_table() {
        // (input, message, done, rest, bare CR, bare LF, long line)
        type Case<'a> = (&'a [u8], &'a [u8], bool, &'a [u8], bool, bool, bool);
        let cases: Vec<Case> = vec![
            // Plain messages and the terminator.
            (b".\r\n", b"", true, b"", false, false, false),
            (b"a\r\n.\r\n", b"a\r\n", true, b"", false, false, false),
            (b"Subject: x\r\n\r\nbody\r\n.\r\n", b"Subject: x\r\n\r\nbody\r\n", true, b"", false, false, false),
            (b"\r\n.\r\n", b"\r\n", true, b"", false, false, false),
            (b"a\r\n.\r\nQUIT\r\n", b"a\r\n", true, b"QUIT\r\n", false, false, false),
            (b"a\r\n.\r\n.\r\n", b"a\r\n", true, b".\r\n", false, false, false),
            (b"a\r\n", b"a\r\n", false, b"", false, false, false),
            (b"a\r\n.", b"a\r\n", false, b"", false, false, false),
            (b"a\r\n.\r", b"a\r\n", false, b"", false, false, false),
            (b"", b"", false, b"", false, false, false),
            // Dot-unstuffing: a leading dot is dropped from any other line.
            (b"..\r\n.\r\n", b".\r\n", true, b"", false, false, false),
            (b"..x\r\n.\r\n", b".x\r\n", true, b"", false, false, false),
            (b"...\r\n.\r\n", b"..\r\n", true, b"", false, false, false),
            (b".x\r\n.\r\n", b"x\r\n", true, b"", false, false, false),
            (b"a.\r\n.b\r\n.\r\n", b"a.\r\nb\r\n", true, b"", false, false, false),
            (b"a\r\n. \r\n.\r\n", b"a\r\n \r\n", true, b"", false, false, false),
            // Bare LF: flagged, and never the start of a line, so none of
            // these end the data (the smuggling forms).
            (b"a\n.\n", b"a\n.\n", false, b"", false, true, false),
            (b"a\n.\r\n", b"a\n.\r\n", false, b"", false, true, false),
            (b"a\r\n.\n", b"a\r\n\n", false, b"", false, true, false),
            (b"a\n.\r\nMAIL FROM:<x@y>\r\n", b"a\n.\r\nMAIL FROM:<x@y>\r\n", false, b"", false, true, false),
            (b"a\nb\r\n.\r\n", b"a\nb\r\n", true, b"", false, true, false),
            (b"\n.\r\n", b"\n.\r\n", false, b"", false, true, false),
            // Bare CR: flagged, never a line end either.
            (b"a\rb\r\n.\r\n", b"a\rb\r\n", true, b"", true, false, false),
            (b"a\r.\r\n", b"a\r.\r\n", false, b"", true, false, false),
            (b"a\r\r\n.\r\n", b"a\r\r\n", true, b"", true, false, false),
            (b"a\r\n.\r.\r\n", b"a\r\n\r.\r\n", false, b"", true, false, false),
            (b"\r\r\n.\r\n", b"\r\r\n", true, b"", true, false, false),
            // 8-bit and NUL bytes pass through untouched.
            (b"\xc3\xa9\x00\xff\r\n.\r\n", b"\xc3\xa9\x00\xff\r\n", true, b"", false, false, false),
        ];
        for (input, message, done, rest, bare_cr, bare_lf, long_line) in cases {
            let expected = Result {
                message: message.into(),
                done,
                rest: rest.into(),
                bare_cr,
                bare_lf,
                long_line,
                size: message.len() as u64,
            };
            assert_eq!(decode(1000, &[input]), expected, "input {:?}", String::from_utf8_lossy(input));
        }
    }

    #[test]
    fn line_length_limit() {
        // Limit 10 bytes per line, CRLF (and a stuffing dot) included.
        let cases: Vec<(&[u8], bool)> = vec![
            (b"12345678\r\n.\r\n", false),
            (b"123456789\r\n.\r\n", true),
            (b"..345678\r\n.\r\n", false),
            (b"..23456789\r\n.\r\n", true),
            (b"12345678\r\n12345678\r\n.\r\n", false),
            (b"12345678\r\n1234567890123\r\n.\r\n", true),
            (b"1234\n12345\r\n.\r\n", false),
        ];
        for (input, long) in cases {
            let got = decode(10, &[input]);
            assert!(got.done, "{input:?}");
            assert_eq!(got.long_line, long, "input {:?}", String::from_utf8_lossy(input));
        }
    }

    #[test]
    fn every_split_point_gives_the_same_result() {
        let inputs: &[&[u8]] = &[
            b"From: a\r\n\r\n..dot\r\n.x\r\n\r\n.\r\nQUIT\r\n",
            b"a\r\n.\r\n",
            b".\r\nRSET\r\n",
            b"a\n.\r\nb\r\n.\r\nNOOP\r\n",
            b"a\r.\r\nb\rc\r\n.\r\n",
            b"long line here\r\n.\r\n",
        ];
        for input in inputs {
            let whole = decode(10, &[input]);
            assert!(whole.done, "{input:?}");
            for i in 0..=input.len() {
                for j in i..=input.len() {
                    let got = decode(10, &[&input[..i], &input[i..j], &input[j..]]);
                    assert_eq!(got, whole, "input {:?} split at {i},{j}", String::from_utf8_lossy(input));
                }
            }
            let bytes: Vec<&[u8]> = input.chunks(1).collect();
            assert_eq!(decode(10, &bytes), whole, "byte by byte");
        }
    }

    #[test]
    fn feeding_after_the_end_consumes_nothing() {
        let mut d = DataDecoder::new(1000);
        let mut out = Vec::new();
        assert_eq!(d.feed(b"x\r\n.\r\n", &mut out), 6);
        assert_eq!(d.feed(b"QUIT\r\n", &mut out), 0);
        assert_eq!(out, b"x\r\n");
        assert_eq!(decode(1000, &[b"x\r\n.\r\n"]), ok(b"x\r\n", b""));
    }

    #[test]
    fn size_counts_decoded_bytes() {
        let mut d = DataDecoder::new(1000);
        let mut out = Vec::new();
        for _ in 0..100 {
            d.feed(b"..0123456789\r\n", &mut out);
        }
        assert_eq!(d.size(), 1300);
        assert_eq!(d.size(), out.len() as u64);
        d.feed(b".\r\n", &mut out);
        assert!(d.is_done());
        assert_eq!(d.size(), 1300);
    }

    /// BDAT octets: every byte is message, dots are text, and the checks
    /// see through chunk boundaries. (chunks, message, bare CR, bare LF, long line)
    #[test]
    fn chunked_table() {
        type Case<'a> = (Vec<&'a [u8]>, &'a [u8], bool, bool, bool);
        let cases: Vec<Case> = vec![
            (vec![b"a\r\n.\r\nb\r\n"], b"a\r\n.\r\nb\r\n", false, false, false),
            (vec![b"..x\r\n", b".\r\n"], b"..x\r\n.\r\n", false, false, false),
            (vec![], b"", false, false, false),
            (vec![b"", b""], b"", false, false, false),
            // A CRLF split between chunks is one line end.
            (vec![b"a\r", b"\nb\r\n"], b"a\r\nb\r\n", false, false, false),
            // No line end at the very end is allowed (RFC 5322 body).
            (vec![b"S: x\r\n\r\nno CRLF"], b"S: x\r\n\r\nno CRLF", false, false, false),
            // A CR at the very end has no LF to come: bare.
            (vec![b"a\r\nb\r"], b"a\r\nb\r", true, false, false),
            (vec![b"a\r", b"b"], b"a\rb", true, false, false),
            (vec![b"a\nb"], b"a\nb", false, true, false),
            (vec![b"a\r\n", b"\n"], b"a\r\n\n", false, true, false),
            (vec![b"123456789", b"0\r\n"], b"1234567890\r\n", false, false, true),
            (vec![b"12345678\r\n1234567"], b"12345678\r\n1234567", false, false, false),
        ];
        for (chunks, message, bare_cr, bare_lf, long_line) in cases {
            let mut d = DataDecoder::chunks(10);
            let mut out = Vec::new();
            for chunk in &chunks {
                assert_eq!(d.feed(chunk, &mut out), chunk.len(), "{chunks:?}");
            }
            d.end(&mut out);
            assert!(!d.is_done(), "{chunks:?}");
            let got = (out.as_slice(), d.saw_bare_cr(), d.saw_bare_lf(), d.saw_long_line(), d.size());
            assert_eq!(got, (message, bare_cr, bare_lf, long_line, message.len() as u64), "{chunks:?}");
        }
    }

    /// Random streams over the bytes that matter: the result never depends
    /// on how the stream is cut, and a clean message re-stuffed and
    /// terminated decodes back to itself.
    #[test]
    fn random_streams() {
        let mut rng = fastrand::Rng::with_seed(5321);
        for _ in 0..2000 {
            let len = rng.usize(0..40);
            let input: Vec<u8> = (0..len).map(|_| *rng.choice(b"\r\n.a").unwrap()).collect();
            let whole = decode(8, &[&input]);
            let cut = rng.usize(0..=input.len());
            assert_eq!(decode(8, &[&input[..cut], &input[cut..]]), whole, "{input:?} cut at {cut}");
            if whole.done {
                let used = input.len() - whole.rest.len();
                assert!(input[..used].ends_with(b"\r\n.\r\n") || &input[..used] == b".\r\n", "{input:?}");
            }
            if !whole.bare_cr && !whole.bare_lf && whole.done {
                assert_eq!(decode(8, &[&stuff(&whole.message)]).message, whole.message, "{input:?}");
            }
        }
    }

    /// Dot-stuffs a CRLF message and appends the terminator, as a client does.
    fn stuff(message: &[u8]) -> Vec<u8> {
        let mut out = Vec::new();
        let mut at_line_start = true;
        for &c in message {
            if at_line_start && c == b'.' {
                out.push(b'.');
            }
            out.push(c);
            at_line_start = c == b'\n';
        }
        out.extend_from_slice(b".\r\n");
        out
    }
}
