//! A user's `.forward` text: parsing never panics, and never yields the
//! user's own address as one to forward to.
#![no_main]
use libfuzzer_sys::fuzz_target;
use posthorn::deliver::forward::{Item, parse};

fuzz_target!(|text: &str| {
    if let Ok(items) = parse(text, "alice", "alice@example.org") {
        for (_, item) in items {
            if let Item::Address(a) = item {
                assert!(!a.eq_ignore_ascii_case("alice@example.org"));
            }
        }
    }
});
