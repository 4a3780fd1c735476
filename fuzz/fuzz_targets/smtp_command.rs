//! Any command line: parsing never panics, and what parses as a path
//! stays within RFC 5321's length limits.
#![no_main]
use libfuzzer_sys::fuzz_target;
use posthorn::smtp::proto::command::Command;

fuzz_target!(|line: &[u8]| {
    if let Ok(Command::Rcpt(rcpt)) = Command::parse(line) {
        assert!(rcpt.address.len() <= posthorn::smtp::proto::address::MAX_PATH);
    }
});
