//! The DATA decoder fed arbitrary input in arbitrary chunks: never panics,
//! never consumes more than it is given, never emits more than it got.
#![no_main]
use libfuzzer_sys::fuzz_target;
use posthorn::smtp::proto::data::DataDecoder;

fuzz_target!(|input: (u8, Vec<u8>)| {
    let (chunk, data) = input;
    let mut decoder = DataDecoder::new(1000);
    let mut out = Vec::new();
    let mut total = 0;
    for part in data.chunks(usize::from(chunk).max(1)) {
        let used = decoder.feed(part, &mut out);
        assert!(used <= part.len());
        total += used;
        if decoder.is_done() {
            break;
        }
    }
    assert!(out.len() <= total);
});
