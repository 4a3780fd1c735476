//! Configuration text: loading never panics; errors are values.
#![no_main]
use libfuzzer_sys::fuzz_target;
use posthorn::config::Config;

fuzz_target!(|text: &str| {
    let _ = Config::parse(text, std::path::Path::new("fuzz.toml"));
});
