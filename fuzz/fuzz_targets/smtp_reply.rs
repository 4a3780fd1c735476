//! Reply lines from a server: parsing never panics, and a parsed reply
//! written back to the wire parses to the same value.
#![no_main]
use libfuzzer_sys::fuzz_target;
use posthorn::smtp::proto::reply::Reply;

fuzz_target!(|lines: Vec<String>| {
    if let Some(reply) = Reply::from_lines(&lines) {
        let wire = String::from_utf8_lossy(&reply.to_wire()).into_owned();
        let again: Vec<&str> = wire.split("\r\n").filter(|l| !l.is_empty()).collect();
        if lines.iter().all(|l| !l.contains(['\r', '\n'])) {
            assert_eq!(Reply::from_lines(&again).map(|r| r.code), Some(reply.code));
        }
    }
});
