//! The Sender Rewriting Scheme: the envelope sender of mail the hub
//! forwards to another organisation becomes an address at the hub's SRS
//! domain, so the final destination checks SPF against the hub, not against
//! the original sender's domain; a bounce to that address is turned back
//! into the original sender at RCPT.
//!
//! The addresses are those of libsrs2 and postsrsd, byte for byte, so a
//! fleet can move between them without losing bounces in flight:
//!
//! - `SRS0=HHHH=TT=domain=local@srs-domain`: `TT` is the day number modulo
//!   1024 in two base32 letters; `HHHH` the first four base64 characters of
//!   HMAC-SHA1(secret, TT + domain + local), every part lower-cased first.
//! - An SRS0 sender forwarded again becomes
//!   `SRS1=HHHH=first-forwarder==HHHH=TT=domain=local@srs-domain`, hashed
//!   over the first forwarder's domain and its `=HHHH=...` part; an SRS1
//!   sender keeps its first forwarder and gets a new hash.
//! - On the way back the hash is compared without regard to case (some
//!   MTAs fold case), against every secret, and an SRS0 timestamp must be
//!   at most `max_age` days old.

use crate::config::Config;
use data_encoding::BASE64;
use ring::hmac;

/// Base32 letters of the timestamp (RFC 4648 alphabet, upper case).
const STAMP_CHARS: &[u8; 32] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZ234567";
/// Timestamps wrap around after this many days (two base32 letters).
const STAMP_SLOTS: u64 = 1024;
/// The separators libsrs2 accepts right after `SRS0`/`SRS1`.
const SEPARATORS: &[u8] = b"=-+";
const HASH_LEN: usize = 4;

/// Why an address at the SRS domain is refused on the way back.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub(crate) enum SrsError {
    #[error("the SRS address is malformed")]
    Malformed,
    #[error("the SRS address has a bad hash")]
    BadHash,
    #[error("the SRS address has a bad timestamp")]
    BadTimestamp,
    #[error("the SRS address has expired")]
    Expired,
}

/// The secrets and the domains: what forwarding and reversing need.
pub(crate) struct Srs {
    domain: String,
    /// The first signs; all verify.
    secrets: Vec<Vec<u8>>,
    /// Senders never rewritten: the hub's own domains and `exclude_domains`
    /// (a leading `.` for subdomains).
    own: Vec<String>,
    max_age_days: u64,
}

/// Today's day number, the unit SRS timestamps count.
pub(crate) fn today() -> u64 {
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default();
    now.as_secs() / 86400
}

/// Reads the secrets file: one secret a line, blank lines and surrounding
/// white space ignored, as postsrsd reads its own.
pub(crate) fn read_secrets(path: &std::path::Path) -> Result<Vec<Vec<u8>>, String> {
    let text = std::fs::read(path).map_err(|e| {
        format!("srs.secret: {}: cannot read: {}", path.display(), crate::message::outcome::strerror(&e))
    })?;
    let secrets: Vec<Vec<u8>> =
        text.split(|&b| b == b'\n').map(|line| line.trim_ascii().to_vec()).filter(|line| !line.is_empty()).collect();
    if secrets.is_empty() {
        return Err(format!("srs.secret: {}: holds no secret", path.display()));
    }
    Ok(secrets)
}

impl Srs {
    /// From `[srs]`, reading its secrets file; `None` when SRS is off.
    pub(crate) fn from_config(config: &Config) -> Result<Option<Srs>, String> {
        let Some(c) = &config.srs else { return Ok(None) };
        let mut own: Vec<String> = config.access.local_domains.clone();
        own.extend(config.access.relay_domains.iter().cloned());
        own.extend(config.access.virtual_alias_domains.iter().cloned());
        own.extend([config.myorigin.to_ascii_lowercase(), config.hostname.to_ascii_lowercase(), c.domain.clone()]);
        own.extend(c.exclude_domains.iter().cloned());
        Ok(Some(Srs {
            domain: c.domain.clone(),
            secrets: read_secrets(&c.secret)?,
            own,
            max_age_days: c.max_age.as_secs() / 86400,
        }))
    }

    #[cfg(test)]
    fn new(domain: &str, secrets: &[&str], own: &[&str]) -> Srs {
        Srs {
            domain: domain.into(),
            secrets: secrets.iter().map(|s| s.as_bytes().to_vec()).collect(),
            own: own.iter().map(|s| s.to_string()).collect(),
            max_age_days: 21,
        }
    }

    /// Whether `domain` is one of the hub's own (or excluded): its senders
    /// keep their address, and mail to it is not forwarding.
    pub(crate) fn is_own(&self, domain: &str) -> bool {
        let domain = domain.trim_end_matches('.').to_ascii_lowercase();
        self.own.iter().any(|o| match o.strip_prefix('.') {
            Some(parent) => domain.ends_with(o.as_str()) || domain == parent,
            None => *o == domain,
        })
    }

    /// The sender to use when forwarding mail from `sender` out of the
    /// hub's domains; `None` keeps it (the null sender, an address of
    /// ours, one without a domain).
    pub(crate) fn forward(&self, sender: &str, day: u64) -> Option<String> {
        let (_, host) = sender.split_once('@')?;
        if host.is_empty() || self.is_own(host) {
            return None;
        }
        forward_address(&self.secrets[0], sender, &self.domain, day)
    }

    /// Whether an alias from `original` to `target` forwards mail out of
    /// the hub's domains.
    pub(crate) fn forwards(&self, original: &str, target: &str) -> bool {
        let leaves = target.rsplit_once('@').is_some_and(|(_, d)| !self.is_own(d));
        leaves && !original.eq_ignore_ascii_case(target)
    }

    /// Rewrites the sender of a forwarded message; returns the original
    /// when it changed.
    pub(crate) fn rewrite_sender(&self, sender: &mut String) -> Option<String> {
        let rewritten = self.forward(sender, today())?;
        Some(std::mem::replace(sender, rewritten))
    }

    /// `Some` when `address` is an SRS address at our SRS domain: the
    /// address it stands for, or why it is refused. `None`: not ours.
    pub(crate) fn reverse(&self, address: &str, day: u64) -> Option<Result<String, SrsError>> {
        let (local, host) = address.rsplit_once('@')?;
        if !host.trim_end_matches('.').eq_ignore_ascii_case(&self.domain) || tag(local).is_none() {
            return None;
        }
        Some(reverse_local(&self.secrets, local, day, self.max_age_days))
    }
}

/// `0` or `1` when `local` starts with `SRS0`/`SRS1` and a separator.
fn tag(local: &str) -> Option<u8> {
    let b = local.as_bytes();
    if b.len() < 5 || !b[..3].eq_ignore_ascii_case(b"SRS") || !SEPARATORS.contains(&b[4]) {
        return None;
    }
    match b[3] {
        b'0' => Some(0),
        b'1' => Some(1),
        _ => None,
    }
}

/// The two letters for `day`.
fn stamp(day: u64) -> String {
    let slot = day % STAMP_SLOTS;
    [STAMP_CHARS[(slot >> 5) as usize & 31] as char, STAMP_CHARS[slot as usize & 31] as char].iter().collect()
}

/// The four-character hash of `parts` under `secret`.
fn hash(secret: &[u8], parts: &[&str]) -> String {
    let key = hmac::Key::new(hmac::HMAC_SHA1_FOR_LEGACY_USE_ONLY, secret);
    let mut ctx = hmac::Context::with_key(&key);
    for part in parts {
        ctx.update(part.to_ascii_lowercase().as_bytes());
    }
    let tag = ctx.sign();
    BASE64.encode(tag.as_ref())[..HASH_LEN].to_string()
}

/// libsrs2's forward rewriting of `sender` (which has an `@`) into an
/// address at `alias`; `None` for a malformed SRS1 sender.
fn forward_address(secret: &[u8], sender: &str, alias: &str, day: u64) -> Option<String> {
    let (user, host) = sender.split_once('@')?;
    match tag(user) {
        Some(1) => {
            // SRS1=HHHH=first==rest: keep the first forwarder, new hash.
            let (_, rest) = user[5..].split_once('=')?;
            let (first, srs0) = rest.split_once('=')?;
            let h = hash(secret, &[first, srs0]);
            Some(format!("SRS1={h}={first}={srs0}@{alias}"))
        }
        Some(_) => {
            // `srs0` keeps its separator: SRS1=HHHH=host==HHHH=TT=...
            let srs0 = &user[4..];
            let h = hash(secret, &[host, srs0]);
            Some(format!("SRS1={h}={host}={srs0}@{alias}"))
        }
        None => {
            let t = stamp(day);
            let h = hash(secret, &[&t, host, user]);
            Some(format!("SRS0={h}={t}={host}={user}@{alias}"))
        }
    }
}

/// libsrs2's reversal of an SRS local part.
fn reverse_local(secrets: &[Vec<u8>], local: &str, day: u64, max_age: u64) -> Result<String, SrsError> {
    let rest = &local[5..];
    if tag(local) == Some(1) {
        let (h, rest) = rest.split_once('=').ok_or(SrsError::Malformed)?;
        let (first, srs0) = rest.split_once('=').ok_or(SrsError::Malformed)?;
        check_hash(secrets, h, &[first, srs0])?;
        return Ok(format!("SRS0{srs0}@{first}"));
    }
    let (h, rest) = rest.split_once('=').ok_or(SrsError::Malformed)?;
    let (t, rest) = rest.split_once('=').ok_or(SrsError::Malformed)?;
    let (host, user) = rest.split_once('=').ok_or(SrsError::Malformed)?;
    if host.is_empty() || user.is_empty() {
        return Err(SrsError::Malformed);
    }
    check_stamp(t, day, max_age)?;
    check_hash(secrets, h, &[t, host, user])?;
    Ok(format!("{user}@{host}"))
}

/// A hash matches when one of the secrets gives it, letters' case aside.
fn check_hash(secrets: &[Vec<u8>], got: &str, parts: &[&str]) -> Result<(), SrsError> {
    let good = got.len() == HASH_LEN && secrets.iter().any(|s| hash(s, parts).eq_ignore_ascii_case(got));
    if good { Ok(()) } else { Err(SrsError::BadHash) }
}

/// A timestamp is good from its day to `max_age` days later, counting
/// around the 1024-day wrap as libsrs2 does.
fn check_stamp(t: &str, day: u64, max_age: u64) -> Result<(), SrsError> {
    if t.is_empty() || t.len() > 2 {
        return Err(SrsError::BadTimestamp);
    }
    let mut then = 0u64;
    for c in t.bytes() {
        let pos = STAMP_CHARS.iter().position(|&x| x == c.to_ascii_uppercase()).ok_or(SrsError::BadTimestamp)?;
        then = (then << 5) | pos as u64;
    }
    let mut now = day % STAMP_SLOTS;
    while now < then {
        now += STAMP_SLOTS;
    }
    if now <= then + max_age { Ok(()) } else { Err(SrsError::Expired) }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// 2026-12-05 is day 20427.
    const DAY: u64 = 20427;

    #[test]
    fn timestamps_are_two_base32_letters_of_the_day() {
        // 20427 % 1024 = 971 = 30 * 32 + 11: `6` and `L`.
        assert_eq!(stamp(DAY), "6L");
        assert_eq!(stamp(0), "AA");
        assert_eq!(stamp(1023), "77");
        assert_eq!(stamp(1024), "AA");
    }

    #[test]
    fn hash_is_hmac_sha1_of_the_lowercased_parts_in_base64() {
        // Python's hmac.new(b"key", b"the quick brown fox jumps over the
        // lazy dog", sha1), base64: `xoge...`; the parts are joined, and
        // lower-cased first, so upper case gives the same hash.
        assert_eq!(hash(b"key", &["the quick brown fox ", "jumps over the lazy dog"]), "xoge");
        assert_eq!(hash(b"key", &["The Quick brown fox jumps over the lazy DOG"]), "xoge");
    }

    #[test]
    fn forward_then_reverse() {
        let srs = Srs::new("srs.example.org", &["tops3cret"], &["example.org"]);
        let fwd = srs.forward("Alice@Outside.example", DAY).unwrap();
        let h = hash(b"tops3cret", &["6L", "Outside.example", "Alice"]);
        assert_eq!(fwd, format!("SRS0={h}=6L=Outside.example=Alice@srs.example.org"));
        assert_eq!(srs.reverse(&fwd, DAY), Some(Ok("Alice@Outside.example".into())));
        // Case folded on the way back still matches.
        assert_eq!(srs.reverse(&fwd.to_ascii_lowercase(), DAY), Some(Ok("alice@outside.example".into())));
        assert_eq!(srs.reverse(&fwd, DAY + 21), Some(Ok("Alice@Outside.example".into())));
        assert_eq!(srs.reverse(&fwd, DAY + 22), Some(Err(SrsError::Expired)));
        // Across the 1024-day wrap.
        let late = srs.forward("a@b.example", 1023).unwrap();
        assert_eq!(srs.reverse(&late, 1024 + 5), Some(Ok("a@b.example".into())));
        let bad = fwd.replacen("SRS0=", "SRS0=x", 1);
        assert_eq!(srs.reverse(&bad, DAY), Some(Err(SrsError::BadHash)));
        assert_eq!(srs.reverse("SRS0=abcd@srs.example.org", DAY), Some(Err(SrsError::Malformed)));
        assert_eq!(srs.reverse("alice@srs.example.org", DAY), None);
        assert_eq!(srs.reverse(&fwd.replace("srs.example.org", "other.example"), DAY), None);
    }

    #[test]
    fn own_and_excluded_senders_are_kept() {
        let srs = Srs::new("srs.example.org", &["s"], &["example.org", ".corp.example"]);
        assert_eq!(srs.forward("ops@example.org", DAY), None);
        assert_eq!(srs.forward("ops@EXAMPLE.ORG.", DAY), None);
        assert_eq!(srs.forward("ops@a.corp.example", DAY), None);
        assert_eq!(srs.forward("ops@corp.example", DAY), None);
        assert_eq!(srs.forward("", DAY), None);
        assert_eq!(srs.forward("root", DAY), None);
        assert!(srs.forward("ops@notcorp.example", DAY).is_some());
    }

    #[test]
    fn srs0_becomes_srs1_and_back() {
        let first = Srs::new("fwd1.example", &["one"], &[]);
        let second = Srs::new("fwd2.example", &["two"], &[]);
        let srs0 = first.forward("bob@origin.example", DAY).unwrap();
        let srs1 = second.forward(&srs0, DAY).unwrap();
        let (srs0_local, _) = srs0.split_once('@').unwrap();
        let h = hash(b"two", &["fwd1.example", &srs0_local[4..]]);
        assert_eq!(srs1, format!("SRS1={h}=fwd1.example={}@fwd2.example", &srs0_local[4..]));
        assert!(srs1.contains("=fwd1.example==")); // the double separator of the format
        // Forwarded a third time: same first forwarder, new hash.
        let third = Srs::new("fwd3.example", &["three"], &[]);
        let again = third.forward(&srs1, DAY).unwrap();
        assert!(again.starts_with("SRS1=") && again.contains("=fwd1.example==") && again.ends_with("@fwd3.example"));
        assert_eq!(third.reverse(&again, DAY), Some(Ok(srs0.clone())));
        assert_eq!(second.reverse(&srs1, DAY), Some(Ok(srs0.clone())));
        assert_eq!(first.reverse(&srs0, DAY), Some(Ok("bob@origin.example".into())));
    }

    #[test]
    fn every_secret_verifies_the_first_signs() {
        let old = Srs::new("srs.example.org", &["old"], &[]);
        let rotated = Srs::new("srs.example.org", &["new", "old"], &[]);
        let signed_before = old.forward("a@b.example", DAY).unwrap();
        assert_eq!(rotated.reverse(&signed_before, DAY), Some(Ok("a@b.example".into())));
        let signed_now = rotated.forward("a@b.example", DAY).unwrap();
        assert_eq!(old.reverse(&signed_now, DAY), Some(Err(SrsError::BadHash)));
    }
}
