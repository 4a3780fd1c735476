//! Postfix table text in every syntax: parsing never panics.
#![no_main]
use libfuzzer_sys::fuzz_target;
use posthorn::route::table::{Syntax, parse};

fuzz_target!(|text: &str| {
    for syntax in [Syntax::Map, Syntax::Aliases, Syntax::Transport] {
        let _ = parse(text, syntax);
    }
});
