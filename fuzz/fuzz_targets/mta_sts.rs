//! MTA-STS policy bodies and `_mta-sts` TXT records, as any web server or
//! DNS answer may send them: parsing never panics, and a policy that parses
//! allows only hosts its patterns match.
#![no_main]
use libfuzzer_sys::fuzz_target;
use posthorn::deliver::mta_sts::{mx_matches, parse_policy, parse_txt};

fuzz_target!(|text: &str| {
    if let Ok(policy) = parse_policy(text) {
        for host in ["mx.example.com", "a.b.example.com", ""] {
            assert_eq!(policy.allows(host), policy.mx.iter().any(|p| mx_matches(p, host)));
        }
    }
    let _ = parse_txt(&text.lines().map(str::to_string).collect::<Vec<_>>());
});
