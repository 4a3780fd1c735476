//! SMTP authentication: the credentials file, password hashes, the limit on
//! failed attempts, and the SASL PLAIN/LOGIN encodings both sides use.
//!
//! - `Users`: the server's `user:hash` file. New entries are Argon2id
//!   (`$argon2id$`, the PHC string format; memory-hard, where SHA-512-crypt
//!   with its 5,000 rounds is cheap to guess on a GPU); SHA-512-crypt
//!   entries (`$6$`, the format of /etc/shadow, `mkpasswd -m sha-512` and
//!   `openssl passwd -6`) are still read and verified.
//! - `AuthLimiter`: AUTH attempts per client (IPv6 by /64) and per user,
//!   counted before the check; past the limit AUTH is refused until the
//!   window ends.
//! - `ClientCredentials`: the `user:password` file the relay client sends.
//! - `decode_base64` and `decode_plain`: the wire encodings (RFC 4648, RFC
//!   4616); encoding is `data_encoding::BASE64` itself.
//!
//! The session (`smtp::server::auth`) owns the exchange itself; this
//! module owns no I/O besides reading and writing the files.

use argon2::Argon2;
use sha_crypt::{PasswordHasher, PasswordVerifier, ShaCrypt};
use std::collections::HashMap;
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Longest user name accepted, in the file and on the wire.
const MAX_USER: usize = 255;
/// Longest password accepted on the wire: hashing is costly, and a client
/// must not make us hash megabytes.
const MAX_PASSWORD: usize = 1024;
/// Client addresses tracked at once by a `AuthLimiter`; beyond that the oldest
/// entries are dropped (a flood of addresses cannot exhaust memory).
const MAX_TRACKED: usize = 10_000;

/// A problem with a credentials file, naming the file and the line.
#[derive(Debug, thiserror::Error)]
pub enum FileError {
    #[error("{}: cannot read: {}", path.display(), crate::message::outcome::strerror(source))]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{}:{line}: {what}", path.display())]
    Syntax { path: PathBuf, line: usize, what: String },
}

/// The server's users: name and password hash.
#[derive(Clone, Debug, Default)]
pub(crate) struct Users {
    hashes: HashMap<String, String>,
}

impl Users {
    /// Reads a `user:hash` file; blank lines and `#` comments are skipped.
    pub(crate) fn load(path: &Path) -> Result<Users, FileError> {
        let text =
            std::fs::read_to_string(path).map_err(|source| FileError::Read { path: path.to_path_buf(), source })?;
        Users::parse(&text).map_err(|(line, what)| FileError::Syntax { path: path.to_path_buf(), line, what })
    }

    /// Parses the file's text; an error is (line, message).
    pub(crate) fn parse(text: &str) -> Result<Users, (usize, String)> {
        let mut hashes = HashMap::new();
        for (n, line) in text.lines().enumerate() {
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let (user, hash) = line.split_once(':').ok_or((n + 1, "expected user:hash".to_string()))?;
            check_user(user).map_err(|m| (n + 1, m))?;
            Scheme::of(hash).map_err(|what| (n + 1, format!("{user}: {what}")))?;
            hashes.insert(user.to_string(), hash.to_string());
        }
        Ok(Users { hashes })
    }

    #[cfg(test)]
    pub(crate) fn len(&self) -> usize {
        self.hashes.len()
    }

    /// Whether `password` is `user`'s. Costs a hash computation even for
    /// an unknown user, so timing does not tell which names exist. CPU-bound
    /// (a few milliseconds): call it off the async threads.
    pub(crate) fn verify(&self, user: &str, password: &[u8]) -> bool {
        // A well-formed hash that no known password matches, in the scheme
        // new entries get, stands in for unknown users: same cost.
        const DECOY: &str =
            "$argon2id$v=19$m=19456,t=2,p=1$5ZCNjj9pZFsPZdA4pWhVVA$N7RRDP8bhCuS7c7ov+zJM3GUwR+3Usy9MHg2fXYBv8A";
        let (hash, known) = match self.hashes.get(user) {
            Some(h) => (h.as_str(), true),
            None => (DECOY, false),
        };
        let ok = match Scheme::of(hash) {
            Ok(Scheme::Argon2) => Argon2::default().verify_password(password, hash).is_ok(),
            Ok(Scheme::Sha512Crypt) => ShaCrypt::default().verify_password(password, hash).is_ok(),
            Err(_) => false,
        };
        ok && known
    }
}

/// The password hash schemes the users file may hold.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Scheme {
    /// `$argon2id$` (also `$argon2i$`, `$argon2d$`): what new entries get.
    Argon2,
    /// `$6$`: read and verified, never written any more.
    Sha512Crypt,
}

impl Scheme {
    /// The scheme of `hash`, or why it is none of them.
    fn of(hash: &str) -> Result<Scheme, String> {
        if hash.starts_with("$6$") {
            return Ok(Scheme::Sha512Crypt);
        }
        if hash.starts_with("$argon2") {
            // Checked now, so that a broken entry fails the load, not AUTH.
            return argon2::PasswordHash::new(hash)
                .map(|_| Scheme::Argon2)
                .map_err(|e| format!("not a valid Argon2 hash: {e}"));
        }
        Err("not a SHA-512-crypt hash ($6$...) nor an Argon2 one ($argon2id$...)".into())
    }
}

/// Why a user name is unusable (in the file, or from `auth add`).
pub(crate) fn check_user(user: &str) -> Result<(), String> {
    if user.is_empty() || user.len() > MAX_USER {
        return Err("user name must have 1 to 255 characters".into());
    }
    if user.chars().any(|c| c.is_control() || c == ':' || c.is_whitespace()) {
        return Err(format!("{user:?}: user name must not contain ':', spaces or control characters"));
    }
    Ok(())
}

/// A new Argon2id hash of `password` with a random salt, in the default
/// parameters of the `argon2` crate (19 MiB, 2 passes: OWASP's minimum).
pub(crate) fn hash_password(password: &[u8]) -> String {
    let mut salt = [0u8; 16];
    rustls::crypto::ring::default_provider().secure_random.fill(&mut salt).expect("system random source");
    Argon2::default().hash_password_with_salt(password, &salt).expect("Argon2id of a bounded password").to_string()
}

/// Adds or replaces `user` in the file at `path` (created mode 0600),
/// writing a temporary file and renaming it over the old one.
pub fn set_password(path: &Path, user: &str, password: &[u8]) -> Result<(), FileError> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    check_user(user).map_err(|what| FileError::Syntax { path: path.to_path_buf(), line: 0, what })?;
    let read_err = |source| FileError::Read { path: path.to_path_buf(), source };
    let old = match std::fs::read_to_string(path) {
        Ok(text) => text,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => String::new(),
        Err(e) => return Err(read_err(e)),
    };
    Users::parse(&old).map_err(|(line, what)| FileError::Syntax { path: path.to_path_buf(), line, what })?;
    let entry = format!("{user}:{}", hash_password(password));
    let mut replaced = false;
    let mut lines: Vec<String> = old
        .lines()
        .map(|l| {
            if l.trim().split_once(':').is_some_and(|(u, _)| u == user) {
                replaced = true;
                entry.clone()
            } else {
                l.to_string()
            }
        })
        .collect();
    if !replaced {
        lines.push(entry);
    }
    let tmp = path.with_extension("tmp");
    let write = || -> std::io::Result<()> {
        let mut f = std::fs::OpenOptions::new().write(true).create(true).truncate(true).mode(0o600).open(&tmp)?;
        f.write_all((lines.join("\n") + "\n").as_bytes())?;
        f.sync_all()?;
        std::fs::rename(&tmp, path)
    };
    write().map_err(read_err)
}

/// Credentials the relay client presents to the smarthosts: the first
/// `user:password` line of the file.
#[derive(Clone, PartialEq, Eq)]
pub(crate) struct ClientCredentials {
    pub(crate) user: String,
    pub(crate) password: String,
}

impl std::fmt::Debug for ClientCredentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClientCredentials").field("user", &self.user).finish_non_exhaustive()
    }
}

impl ClientCredentials {
    pub(crate) fn load(path: &Path) -> Result<ClientCredentials, FileError> {
        let text =
            std::fs::read_to_string(path).map_err(|source| FileError::Read { path: path.to_path_buf(), source })?;
        let syntax = |line, what: &str| FileError::Syntax { path: path.to_path_buf(), line, what: what.into() };
        let (n, line) = text
            .lines()
            .enumerate()
            .find(|(_, l)| !l.trim().is_empty() && !l.trim_start().starts_with('#'))
            .ok_or_else(|| syntax(1, "no user:password line"))?;
        let (user, password) = line.trim().split_once(':').ok_or_else(|| syntax(n + 1, "expected user:password"))?;
        check_user(user).map_err(|m| syntax(n + 1, &m))?;
        Ok(ClientCredentials { user: user.into(), password: password.into() })
    }
}

/// Decodes an AUTH response: padded base64 and nothing else, `None` for a
/// wrong length, stray characters or non-zero bits after the last byte.
/// data-encoding also accepts padding inside the input (concatenated
/// encodings), which no SASL client sends; that is refused here.
pub(crate) fn decode_base64(wire: &[u8]) -> Option<Vec<u8>> {
    if wire.iter().skip_while(|&&c| c != b'=').any(|&c| c != b'=') {
        return None;
    }
    data_encoding::BASE64.decode(wire).ok()
}

/// The SASL PLAIN message (RFC 4616): `authzid NUL authcid NUL passwd`.
/// Returns (user, password); an authorization identity other than the
/// user itself is refused (no proxy authentication here).
pub(crate) fn decode_plain(message: &[u8]) -> Result<(String, Vec<u8>), &'static str> {
    let mut parts = message.splitn(3, |&b| b == 0);
    let (Some(authz), Some(user), Some(password)) = (parts.next(), parts.next(), parts.next()) else {
        return Err("malformed PLAIN message");
    };
    let user = std::str::from_utf8(user).map_err(|_| "user name is not UTF-8")?;
    if user.is_empty() || user.len() > MAX_USER || password.len() > MAX_PASSWORD {
        return Err("user name or password of a bad length");
    }
    if !authz.is_empty() && authz != user.as_bytes() {
        return Err("authorization identity differs from the user");
    }
    Ok((user.to_string(), password.to_vec()))
}

/// Checks a LOGIN user name or password as decoded.
pub(crate) fn check_login_field(field: &[u8], max: usize) -> bool {
    !field.is_empty() && field.len() <= max && !field.contains(&0)
}

pub(crate) const MAX_USER_LEN: usize = MAX_USER;
pub(crate) const MAX_PASSWORD_LEN: usize = MAX_PASSWORD;

/// The address a client is counted under, here and in the SMTP listener's
/// per-client limits: an IPv4 address as it is (also when it arrives
/// IPv4-mapped), an IPv6 address by its /64, so a host cannot get a fresh
/// count by hopping addresses inside the network it usually holds whole.
pub(crate) fn client_key(ip: IpAddr) -> IpAddr {
    match ip.to_canonical() {
        IpAddr::V6(v6) => IpAddr::V6((u128::from(v6) & !((1u128 << 64) - 1)).into()),
        v4 => v4,
    }
}

/// What a failure is counted against: a client (an IPv4 address, or an
/// IPv6 /64, which one host usually holds whole) or a user name.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
enum Key {
    Client(IpAddr),
    User(String),
}

impl Key {
    fn client(ip: IpAddr) -> Key {
        Key::Client(client_key(ip))
    }

    /// The keys an attempt from `ip` as `user` counts against.
    fn of(ip: Option<IpAddr>, user: Option<&str>) -> Vec<Key> {
        ip.map(Key::client).into_iter().chain(user.map(|u| Key::User(u.to_string()))).collect()
    }
}

/// AUTH attempts per client and per user name within a window. An attempt
/// is counted before its password is checked, so parallel sessions cannot
/// all guess while the first checks are running; a success gives it back.
#[derive(Debug)]
pub(crate) struct AuthLimiter {
    max: u32,
    window: Duration,
    /// Key -> (attempts not given back, start of the window).
    seen: Mutex<HashMap<Key, (u32, Instant)>>,
}

impl AuthLimiter {
    pub(crate) fn new(max: u32, window: Duration) -> AuthLimiter {
        AuthLimiter { max, window, seen: Mutex::new(HashMap::new()) }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<Key, (u32, Instant)>> {
        self.seen.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Whether the client `ip` has used up its failures (0 = no limit).
    pub(crate) fn is_blocked(&self, ip: IpAddr) -> bool {
        self.blocked(&mut self.lock(), &Key::client(ip), Instant::now())
    }

    /// Whether `key` has used up its failures; forgets it once its window ended.
    fn blocked(&self, seen: &mut HashMap<Key, (u32, Instant)>, key: &Key, now: Instant) -> bool {
        match seen.get(key) {
            Some((_, since)) if now.duration_since(*since) >= self.window => {
                seen.remove(key);
                false
            }
            Some((n, _)) => self.max > 0 && *n >= self.max,
            None => false,
        }
    }

    /// Counts an attempt from `ip` as `user` before it is verified; `false`
    /// (and nothing counted) when the client or the user has used up its
    /// failures. The check and the count are one step under the lock, so
    /// parallel sessions cannot all pass the check first.
    pub(crate) fn reserve(&self, ip: Option<IpAddr>, user: Option<&str>) -> bool {
        let now = Instant::now();
        let keys = Key::of(ip, user);
        let mut seen = self.lock();
        if keys.iter().any(|k| self.blocked(&mut seen, k, now)) {
            return false;
        }
        for key in keys {
            self.make_room(&mut seen, &key, now);
            let entry = seen.entry(key).or_insert((0, now));
            entry.0 += 1;
        }
        true
    }

    /// A success clears the records of the client and the user: the
    /// attempt it reserved, and the failures before it.
    pub(crate) fn release(&self, ip: Option<IpAddr>, user: Option<&str>) {
        let mut seen = self.lock();
        for key in Key::of(ip, user) {
            seen.remove(&key);
        }
    }

    /// Keeps at most `MAX_TRACKED` records: expired ones go first, then the
    /// oldest, so a flood of addresses or names cannot exhaust memory.
    fn make_room(&self, seen: &mut HashMap<Key, (u32, Instant)>, key: &Key, now: Instant) {
        if seen.len() < MAX_TRACKED || seen.contains_key(key) {
            return;
        }
        seen.retain(|_, (_, since)| now.duration_since(*since) < self.window);
        if seen.len() >= MAX_TRACKED
            && let Some(oldest) = seen.iter().min_by_key(|(_, (_, since))| *since).map(|(k, _)| k.clone())
        {
            seen.remove(&oldest);
        }
    }

    /// Counts a failure from `ip`, as the tests of the per-client count say it.
    #[cfg(test)]
    fn failed(&self, ip: IpAddr) {
        self.reserve(Some(ip), None);
    }

    #[cfg(test)]
    fn succeeded(&self, ip: IpAddr) {
        self.release(Some(ip), None);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use data_encoding::BASE64;

    #[test]
    fn rfc4648_vectors() {
        let cases = [
            ("", ""),
            ("f", "Zg=="),
            ("fo", "Zm8="),
            ("foo", "Zm9v"),
            ("foob", "Zm9vYg=="),
            ("fooba", "Zm9vYmE="),
            ("foobar", "Zm9vYmFy"),
        ];
        for (plain, coded) in cases {
            assert_eq!(BASE64.encode(plain.as_bytes()), coded);
            assert_eq!(decode_base64(coded.as_bytes()).as_deref(), Some(plain.as_bytes()), "{coded}");
        }
        assert_eq!(BASE64.encode(b"\0alice\0pw"), "AGFsaWNlAHB3");
    }

    #[test]
    fn rejects_garbage() {
        for bad in ["Zg", "Zg=", "Z===", "Zm9v!A==", "Zh==", "Zg==Zm9v", "Zm 9", "Zm9v\r\n", "Zg=a"] {
            assert_eq!(decode_base64(bad.as_bytes()), None, "{bad}");
        }
    }

    #[test]
    fn hash_and_verify() {
        let hash = hash_password(b"s3cret");
        assert!(hash.starts_with("$argon2id$v=19$m=19456,t=2,p=1$"), "{hash}");
        let users = Users::parse(&format!("# users\n\nalice:{hash}\n")).unwrap();
        assert_eq!(users.len(), 1);
        assert!(users.verify("alice", b"s3cret"));
        assert!(!users.verify("alice", b"wrong"));
        assert!(!users.verify("bob", b"s3cret"));
    }

    #[test]
    fn old_and_new_schemes_verify_side_by_side() {
        // `openssl passwd -6 -salt saltsalt secret`, and an Argon2id entry.
        let old = "$6$saltsalt$TVLlQcbpFVof5W3Yz4DTP6gRstiNuHwwTt6GLc1E5n0U0aDehy0S5knV8wiOQSpT0Y77vwPZN.Pq.H91p5hVO1";
        let users = Users::parse(&format!("ops:{old}\nnew:{}\n", hash_password(b"fresh"))).unwrap();
        assert!(users.verify("ops", b"secret") && users.verify("new", b"fresh"));
        assert!(!users.verify("ops", b"fresh") && !users.verify("new", b"secret"));
    }

    #[test]
    fn openssl_passwd_hashes_verify() {
        // `openssl passwd -6 -salt saltsalt secret`
        let users = Users::parse(
            "ops:$6$saltsalt$TVLlQcbpFVof5W3Yz4DTP6gRstiNuHwwTt6GLc1E5n0U0aDehy0S5knV8wiOQSpT0Y77vwPZN.Pq.H91p5hVO1\n",
        )
        .unwrap();
        assert!(users.verify("ops", b"secret"));
        assert!(!users.verify("ops", b"Secret"));
    }

    #[test]
    fn users_file_errors_name_the_line() {
        let cases = [
            ("alice\n", 1, "expected user:hash"),
            ("\n# x\nbob:plain\n", 3, "not a SHA-512-crypt hash"),
            ("a b:$6$x$y\n", 1, "must not contain"),
            ("carol:$argon2id$v=19$m=19456,t=2,p=1$not base64!\n", 1, "not a valid Argon2 hash"),
        ];
        for (text, line, what) in cases {
            let (got_line, got) = Users::parse(text).unwrap_err();
            assert_eq!(got_line, line, "{text:?}");
            assert!(got.contains(what), "{text:?}: {got}");
        }
    }

    #[test]
    fn plain_messages() {
        let cases: [(&[u8], Result<(&str, &[u8]), ()>); 6] = [
            (b"\0alice\0pw", Ok(("alice", b"pw"))),
            (b"alice\0alice\0pw", Ok(("alice", b"pw"))),
            (b"bob\0alice\0pw", Err(())),
            (b"alice\0pw", Err(())),
            (b"\0\0pw", Err(())),
            (b"\0alice\0p\0w", Ok(("alice", b"p\0w"))),
        ];
        for (msg, want) in cases {
            let got = decode_plain(msg);
            match want {
                Ok((u, p)) => assert_eq!(got.unwrap(), (u.to_string(), p.to_vec()), "{msg:?}"),
                Err(()) => assert!(got.is_err(), "{msg:?}"),
            }
        }
    }

    #[test]
    fn limiter_counts_per_address_and_window() {
        let a: IpAddr = "192.0.2.1".parse().unwrap();
        let b: IpAddr = "192.0.2.2".parse().unwrap();
        let limiter = AuthLimiter::new(2, Duration::from_secs(60));
        assert!(!limiter.is_blocked(a));
        limiter.failed(a);
        assert!(!limiter.is_blocked(a));
        limiter.failed(a);
        assert!(limiter.is_blocked(a));
        assert!(!limiter.is_blocked(b));
        limiter.succeeded(a);
        assert!(!limiter.is_blocked(a));
        let short = AuthLimiter::new(1, Duration::from_millis(1));
        short.failed(a);
        std::thread::sleep(Duration::from_millis(5));
        assert!(!short.is_blocked(a), "the window ended");
    }

    #[test]
    fn an_attempt_is_counted_before_it_is_checked() {
        let a: IpAddr = "192.0.2.1".parse().unwrap();
        let limiter = AuthLimiter::new(3, Duration::from_secs(60));
        // Three checks in flight at once use up the client's attempts.
        let granted = (0..10).filter(|_| limiter.reserve(Some(a), Some("alice"))).count();
        assert_eq!(granted, 3);
        assert!(limiter.is_blocked(a));
        limiter.release(Some(a), Some("alice"));
        assert!(!limiter.is_blocked(a), "a success gives the attempts back");
        assert!(limiter.reserve(Some(a), Some("alice")));
    }

    #[test]
    fn ipv6_clients_are_counted_by_their_64() {
        let limiter = AuthLimiter::new(2, Duration::from_secs(60));
        assert!(limiter.reserve(Some("2001:db8:1:2::1".parse().unwrap()), None));
        assert!(limiter.reserve(Some("2001:db8:1:2:ffff::9".parse().unwrap()), None));
        assert!(limiter.is_blocked("2001:db8:1:2::abcd".parse().unwrap()));
        assert!(!limiter.is_blocked("2001:db8:1:3::1".parse().unwrap()), "another /64");
        assert!(limiter.reserve(Some("::ffff:192.0.2.7".parse().unwrap()), None));
        assert!(limiter.reserve(Some("192.0.2.7".parse().unwrap()), None));
        assert!(limiter.is_blocked("192.0.2.7".parse().unwrap()), "a mapped IPv4 address is the IPv4 client");
    }

    #[test]
    fn a_user_is_counted_across_clients() {
        let limiter = AuthLimiter::new(2, Duration::from_secs(60));
        assert!(limiter.reserve(Some("192.0.2.1".parse().unwrap()), Some("alice")));
        assert!(limiter.reserve(Some("198.51.100.1".parse().unwrap()), Some("alice")));
        assert!(!limiter.reserve(Some("203.0.113.1".parse().unwrap()), Some("alice")), "alice is used up");
        assert!(limiter.reserve(Some("203.0.113.1".parse().unwrap()), Some("bob")));
        assert!(!limiter.reserve(None, Some("alice")), "local clients count against the user too");
    }

    #[test]
    fn set_password_adds_and_replaces() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("users");
        set_password(&path, "alice", b"one").unwrap();
        set_password(&path, "bob", b"two").unwrap();
        set_password(&path, "alice", b"three").unwrap();
        let users = Users::load(&path).unwrap();
        assert_eq!(users.len(), 2);
        assert!(users.verify("alice", b"three"));
        assert!(users.verify("bob", b"two"));
        use std::os::unix::fs::PermissionsExt;
        assert_eq!(std::fs::metadata(&path).unwrap().permissions().mode() & 0o777, 0o600);
        assert!(set_password(&path, "a:b", b"x").is_err());
    }

    #[test]
    fn client_credentials() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("relay-auth");
        std::fs::write(&path, "# for the hub\nsatellite:pa:ss\n").unwrap();
        let c = ClientCredentials::load(&path).unwrap();
        assert_eq!((c.user.as_str(), c.password.as_str()), ("satellite", "pa:ss"));
        assert!(!format!("{c:?}").contains("pa:ss"), "the password never reaches a log");
        std::fs::write(&path, "nocolon\n").unwrap();
        assert!(ClientCredentials::load(&path).unwrap_err().to_string().ends_with(":1: expected user:password"));
    }
}
