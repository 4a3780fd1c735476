//! BDAT chunks (RFC 3030) read the way the session reads them: chunks of
//! any size, the octets arriving in reads of any size, `take_up_to` handing
//! over what was buffered behind the command line and what a read brings
//! beyond a chunk pushed back. Never panics; every chunk is consumed whole;
//! every octet is message, once and in order, so the output is never
//! longer than the input; and the verdict (bare CR, bare LF, long line,
//! size) is the same however the stream is cut, and the same as a plain
//! model of the line rules.
#![no_main]
use libfuzzer_sys::fuzz_target;
use posthorn::smtp::proto::data::DataDecoder;
use posthorn::smtp::proto::line::LineReader;

/// What a message's chunks came to.
#[derive(Debug, PartialEq, Eq)]
struct Verdict {
    message: Vec<u8>,
    size: u64,
    bare_cr: bool,
    bare_lf: bool,
    long_line: bool,
}

fn feed(decoder: &mut DataDecoder, chunk: &[u8], out: &mut Vec<u8>) {
    assert_eq!(decoder.feed(chunk, out), chunk.len(), "a chunk is consumed whole");
}

/// After the LAST chunk.
fn finish(mut decoder: DataDecoder, mut out: Vec<u8>) -> Verdict {
    decoder.end(&mut out);
    assert!(!decoder.is_done(), "BDAT data has no terminator");
    Verdict {
        size: decoder.size(),
        bare_cr: decoder.saw_bare_cr(),
        bare_lf: decoder.saw_bare_lf(),
        long_line: decoder.saw_long_line(),
        message: out,
    }
}

/// The rules written plainly: CR must come before LF and LF after CR; a
/// line runs up to and including an LF, and may not exceed `max_line`.
fn model(data: &[u8], max_line: usize) -> Verdict {
    let bare_cr = data.iter().enumerate().any(|(i, &c)| c == b'\r' && data.get(i + 1) != Some(&b'\n'));
    let bare_lf = data.iter().enumerate().any(|(i, &c)| c == b'\n' && (i == 0 || data[i - 1] != b'\r'));
    let long_line = data.split_inclusive(|&c| c == b'\n').any(|line| line.len() > max_line);
    Verdict { message: data.to_vec(), size: data.len() as u64, bare_cr, bare_lf, long_line }
}

fuzz_target!(|input: (u8, u8, Vec<u8>, Vec<u8>)| {
    let (max_line, read_size, sizes, data) = input;
    let max_line = usize::from(max_line);

    let mut decoder = DataDecoder::chunks(max_line);
    let mut out = Vec::new();
    feed(&mut decoder, &data, &mut out);
    let whole = finish(decoder, out);
    assert_eq!(whole, model(&data, max_line));

    // BDAT size, the chunk's octets, ..., then the rest as the LAST chunk.
    let mut reads = data.chunks(usize::from(read_size).max(1));
    let mut reader = LineReader::new(512);
    let mut decoder = DataDecoder::chunks(max_line);
    let mut out = Vec::new();
    for size in sizes.iter().map(|&s| u64::from(s)) {
        let early = reader.take_up_to(size);
        let mut left = size - early.len() as u64;
        feed(&mut decoder, early, &mut out);
        assert!(left == 0 || reader.is_empty(), "take_up_to left octets of the chunk behind");
        while left > 0 {
            let Some(read) = reads.next() else { break };
            let used = read.len().min(usize::try_from(left).unwrap_or(usize::MAX));
            feed(&mut decoder, &read[..used], &mut out);
            reader.push(&read[used..]);
            left -= used as u64;
        }
    }
    let mut last = reader.take_buffered();
    reads.for_each(|read| last.extend_from_slice(read));
    feed(&mut decoder, &last, &mut out);
    assert_eq!(finish(decoder, out), whole);
});
