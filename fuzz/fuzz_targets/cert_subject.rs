//! Certificate DER of any shape: reading the subject's common names never
//! panics (malformed input yields no names).
#![no_main]
use libfuzzer_sys::fuzz_target;
use posthorn::tls::subject::common_names;

fuzz_target!(|der: &[u8]| {
    let _ = common_names(der);
});
