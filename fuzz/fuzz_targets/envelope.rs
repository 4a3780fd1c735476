//! Envelope files as found in a spool (possibly corrupt): reading never
//! panics, and what reads back serializes to something that reads again.
#![no_main]
use libfuzzer_sys::fuzz_target;
use posthorn::spool::envelope::Envelope;

fuzz_target!(|data: &[u8]| {
    if let Ok(env) = Envelope::from_json(data) {
        assert!(Envelope::from_json(&env.to_json()).is_ok());
    }
});
