//! MTA-STS (RFC 8461) for MX delivery (`[mta_sts]`): a recipient domain
//! publishes `_mta-sts.DOMAIN TXT "v=STSv1; id=..."` and a policy at
//! `https://mta-sts.DOMAIN/.well-known/mta-sts.txt`; posthorn fetches it,
//! keeps it in `<spool>/mta-sts/DOMAIN` (so it survives restarts) for its
//! `max_age`, and fetches again when the TXT record's `id` changes.
//!
//! `mx::Mx` asks [`MtaSts::policy`] for a domain that no TLS policy table
//! names (an explicit entry wins, as with Postfix's MTA-STS add-ons) and
//! applies the answer: `enforce` keeps only the MX hosts matching the
//! policy's `mx` patterns and verifies their certificates against the MX
//! host name; `testing` changes nothing but what `tls_report` records.
//!
//! The fetch is hyper's HTTP/1 client over the tokio-rustls session the
//! SMTP client uses too: no redirects (RFC 8461 3.3), `200` with
//! `text/plain` only, at most 64 KiB, the whole fetch under
//! `mta_sts.fetch_timeout`, and the certificate verified for
//! `mta-sts.DOMAIN` against `outbound_tls.ca` or the system roots. A fetch
//! that fails falls back to the cached policy while it has not expired.

use crate::config::Config;
use crate::deliver::dns::Dns;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

/// RFC 8461 3.2: `max_age` is at most about a year.
const MAX_AGE_LIMIT: u64 = 31_557_600;
/// RFC 8461 3.3: a policy body is small.
const MAX_BODY: usize = 64 * 1024;

/// A policy's mode.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    Enforce,
    Testing,
    None,
}

impl Mode {
    pub fn name(self) -> &'static str {
        match self {
            Mode::Enforce => "enforce",
            Mode::Testing => "testing",
            Mode::None => "none",
        }
    }
}

/// A parsed policy, with the text it came from (the report's
/// `policy-string`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Policy {
    pub mode: Mode,
    /// `mx` patterns, lowercase: `mx.example.com` or `*.example.com`.
    pub mx: Vec<String>,
    pub max_age: u64,
    /// The policy's lines, as fetched.
    pub lines: Vec<String>,
}

/// Parses a policy body (RFC 8461 3.2): `key: value` lines, CRLF or LF.
pub fn parse_policy(text: &str) -> Result<Policy, String> {
    let (mut version, mut mode, mut max_age) = (None, None, None);
    let mut mx = Vec::new();
    let mut lines = Vec::new();
    for line in text.lines() {
        let line = line.trim_end_matches('\r');
        if line.trim().is_empty() {
            continue;
        }
        lines.push(line.to_string());
        let Some((key, value)) = line.split_once(':') else {
            return Err(format!("line `{line}` is not `key: value`"));
        };
        let value = value.trim();
        match key.trim() {
            "version" => version = Some(value.to_string()),
            "mode" => {
                mode = Some(match value {
                    "enforce" => Mode::Enforce,
                    "testing" => Mode::Testing,
                    "none" => Mode::None,
                    other => return Err(format!("unknown mode `{other}`")),
                })
            }
            "max_age" => {
                let n: u64 = value.parse().map_err(|_| format!("max_age `{value}` is not a number"))?;
                max_age = Some(n.min(MAX_AGE_LIMIT));
            }
            "mx" => {
                let p = value.trim_end_matches('.').to_ascii_lowercase();
                if p.is_empty() || p.strip_prefix("*.").unwrap_or(&p).contains('*') {
                    return Err(format!("mx pattern `{value}` is not a host name or *.domain"));
                }
                mx.push(p);
            }
            // Unknown keys are ignored (RFC 8461 3.2, extensions).
            _ => {}
        }
    }
    if version.as_deref() != Some("STSv1") {
        return Err("no `version: STSv1`".into());
    }
    let mode = mode.ok_or("no mode")?;
    let max_age = max_age.ok_or("no max_age")?;
    if mx.is_empty() && mode != Mode::None {
        return Err("no mx pattern".into());
    }
    Ok(Policy { mode, mx, max_age, lines })
}

/// The `id` of a `_mta-sts` TXT answer; `Ok(None)` when no record starts
/// with `v=STSv1`. More than one such record is an error (RFC 8461 3.1).
pub fn parse_txt(records: &[String]) -> Result<Option<String>, String> {
    let ours: Vec<&String> = records.iter().filter(|r| r.trim_start().starts_with("v=STSv1")).collect();
    let record = match ours.as_slice() {
        [] => return Ok(None),
        [one] => one,
        _ => return Err("more than one v=STSv1 TXT record".into()),
    };
    for field in record.split(';').skip(1) {
        if let Some(id) = field.trim().strip_prefix("id=") {
            let ok = !id.is_empty() && id.len() <= 32 && id.bytes().all(|b| b.is_ascii_alphanumeric());
            return if ok { Ok(Some(id.to_string())) } else { Err(format!("bad id `{id}`")) };
        }
    }
    Err("the v=STSv1 record has no id".into())
}

/// Whether MX host `host` matches pattern `pattern` (RFC 8461 4.1): exact,
/// or `*.example.com` for exactly one label in front of `example.com`.
pub fn mx_matches(pattern: &str, host: &str) -> bool {
    let host = host.trim_end_matches('.').to_ascii_lowercase();
    match pattern.strip_prefix("*.") {
        Some(parent) => host.split_once('.').is_some_and(|(first, rest)| !first.is_empty() && rest == parent),
        None => host == pattern,
    }
}

impl Policy {
    /// Whether `host` may be used under this policy.
    pub fn allows(&self, host: &str) -> bool {
        self.mx.iter().any(|p| mx_matches(p, host))
    }
}

/// A policy as kept in the spool: its id and when it was fetched.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Cached {
    pub(crate) id: String,
    /// Seconds since the epoch.
    pub(crate) fetched: u64,
    pub(crate) policy: Policy,
}

impl Cached {
    pub(crate) fn expires(&self) -> u64 {
        self.fetched.saturating_add(self.policy.max_age)
    }

    /// The file: two header lines, a blank line, the policy as fetched.
    fn to_text(&self) -> String {
        format!("id: {}\nfetched: {}\n\n{}\n", self.id, self.fetched, self.policy.lines.join("\n"))
    }

    fn from_text(text: &str) -> Option<Cached> {
        let (head, body) = text.split_once("\n\n")?;
        let mut id = None;
        let mut fetched = None;
        for line in head.lines() {
            match line.split_once(": ") {
                Some(("id", v)) => id = Some(v.to_string()),
                Some(("fetched", v)) => fetched = v.parse().ok(),
                _ => {}
            }
        }
        Some(Cached { id: id?, fetched: fetched?, policy: parse_policy(body).ok()? })
    }
}

/// The cache file of `domain` under `dir` (`<spool>/mta-sts`); `None` for a
/// name that could escape the directory.
fn cache_file(dir: &Path, domain: &str) -> Option<PathBuf> {
    let ok = !domain.is_empty()
        && !domain.starts_with('.')
        && domain.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'.' || b == b'-');
    ok.then(|| dir.join(domain))
}

/// The cached policy of `domain`, expired or not.
pub(crate) fn read_cache(dir: &Path, domain: &str) -> Option<Cached> {
    Cached::from_text(&std::fs::read_to_string(cache_file(dir, domain)?).ok()?)
}

/// Replaces the cached policy of `domain` (tmp and rename: a reader sees
/// the old file or the new one; no fsync, a lost cache is fetched again).
fn write_cache(dir: &Path, domain: &str, cached: &Cached) -> std::io::Result<()> {
    let path = cache_file(dir, domain).ok_or_else(|| std::io::Error::other("bad domain name"))?;
    std::fs::create_dir_all(dir)?;
    let tmp = dir.join(format!(".{domain}.tmp"));
    std::fs::write(&tmp, cached.to_text())?;
    std::fs::rename(&tmp, &path)
}

/// The cache directory in `spool`.
pub(crate) fn cache_dir(spool: &Path) -> PathBuf {
    spool.join("mta-sts")
}

/// Why a policy could not be had (RFC 8460's `sts-policy-fetch-error`,
/// `sts-policy-invalid`, `sts-webpki-invalid`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Failure {
    Fetch,
    Invalid,
    Webpki,
}

/// Where the policy in force came from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Source {
    Cache,
    Fetched,
}

/// The policy that applies to a domain, and where it came from.
#[derive(Clone, Debug)]
pub(crate) struct Applied {
    pub(crate) id: String,
    pub(crate) policy: Policy,
    pub(crate) source: Source,
}

impl Applied {
    /// For logs and `route explain`: `enforce (id 2026a, fetched)`.
    pub(crate) fn describe(&self) -> String {
        let from = match self.source {
            Source::Cache => "cached",
            Source::Fetched => "fetched",
        };
        format!("{} (id {}, {from})", self.policy.mode.name(), self.id)
    }
}

/// The answer for one domain: the policy in force (if any) and a failure
/// to report (a fetch that failed, whether or not a cached policy stood in).
#[derive(Clone, Debug, Default)]
pub(crate) struct Lookup {
    pub(crate) applied: Option<Applied>,
    pub(crate) failure: Option<(Failure, String)>,
}

/// The policy lookups of the MX transport; one per daemon.
pub(crate) struct MtaSts {
    dns: Arc<Dns>,
    dir: PathBuf,
    timeout: Duration,
    /// Verifying against `outbound_tls.ca` or the system roots; an error
    /// (no roots) makes every fetch fail, which is reported.
    tls: Result<Arc<rustls::ClientConfig>, String>,
    port: u16,
    /// One fetch per domain at a time: the deliveries that wait for it
    /// then find its result in the cache.
    fetching: std::sync::Mutex<std::collections::HashMap<String, Arc<tokio::sync::Mutex<()>>>>,
}

impl MtaSts {
    /// `None` unless `mta_sts.enabled`.
    pub(crate) fn from_config(config: &Config, dns: Arc<Dns>) -> Option<MtaSts> {
        if !config.mta_sts.enabled {
            return None;
        }
        let tls = crate::tls::client_config_with_cert(true, config.outbound_tls.ca.as_deref(), None)
            .map_err(|e| e.to_string());
        Some(MtaSts {
            dns,
            dir: cache_dir(&config.spool),
            timeout: config.mta_sts.fetch_timeout,
            tls,
            port: 443,
            fetching: Default::default(),
        })
    }

    /// The policy of `domain` now: the cached one while its id is the
    /// published one and it has not expired, else a fresh fetch, else the
    /// unexpired cached one.
    pub(crate) async fn policy(&self, domain: &str) -> Lookup {
        let now = crate::clock::now_secs();
        let cached = read_cache(&self.dir, domain).filter(|c| c.expires() > now);
        let from_cache = |c: Cached| Applied { id: c.id, policy: c.policy, source: Source::Cache };
        let id = match self.dns.txt(&format!("_mta-sts.{domain}")).await.map(|r| parse_txt(&r)) {
            Ok(Ok(Some(id))) => id,
            // No record (or an unusable one, or DNS trouble): a policy
            // still cached keeps applying (RFC 8461 5.1).
            Ok(Ok(None)) | Ok(Err(_)) | Err(_) => {
                return Lookup { applied: cached.map(from_cache), failure: None };
            }
        };
        if let Some(c) = cached.as_ref().filter(|c| c.id == id) {
            return Lookup { applied: Some(from_cache(c.clone())), failure: None };
        }
        let gate = {
            let mut map = self.fetching.lock().unwrap_or_else(|e| e.into_inner());
            map.retain(|_, m| Arc::strong_count(m) > 1);
            map.entry(domain.to_string()).or_default().clone()
        };
        let _turn = gate.lock().await;
        // Another delivery may have fetched it while this one waited.
        let cached = read_cache(&self.dir, domain).filter(|c| c.expires() > now);
        if let Some(c) = cached.as_ref().filter(|c| c.id == id) {
            return Lookup { applied: Some(from_cache(c.clone())), failure: None };
        }
        match self
            .fetch(domain)
            .await
            .and_then(|text| parse_policy(&text).map_err(|e| (Failure::Invalid, format!("policy of {domain}: {e}"))))
        {
            Ok(policy) => {
                let fresh = Cached { id: id.clone(), fetched: now, policy: policy.clone() };
                if let Err(e) = write_cache(&self.dir, domain, &fresh) {
                    tracing::warn!("MTA-STS: cannot cache the policy of {domain} in {}: {e}", self.dir.display());
                }
                tracing::info!("MTA-STS: fetched the policy of {domain}: mode {} (id {id})", policy.mode.name());
                Lookup { applied: Some(Applied { id, policy, source: Source::Fetched }), failure: None }
            }
            Err((kind, detail)) => {
                tracing::warn!("MTA-STS: {detail}{}", if cached.is_some() { "; using the cached policy" } else { "" });
                Lookup { applied: cached.map(from_cache), failure: Some((kind, detail)) }
            }
        }
    }

    /// The policy text of `domain` over HTTPS, or why not.
    async fn fetch(&self, domain: &str) -> Result<String, (Failure, String)> {
        let host = format!("mta-sts.{domain}");
        match tokio::time::timeout(self.timeout, self.fetch_from(&host)).await {
            Ok(result) => {
                result.map_err(|(kind, e)| (kind, format!("fetching https://{host}/.well-known/mta-sts.txt: {e}")))
            }
            Err(_) => Err((
                Failure::Fetch,
                format!("fetching https://{host}/.well-known/mta-sts.txt: timed out after {:?}", self.timeout),
            )),
        }
    }

    async fn fetch_from(&self, host: &str) -> Result<String, (Failure, String)> {
        use http_body_util::BodyExt;
        let fetch_error = |e: String| (Failure::Fetch, e);
        let config = self.tls.clone().map_err(fetch_error)?;
        let addrs = self.dns.addresses(host).await.map_err(|e| fetch_error(e.to_string()))?;
        let mut last = format!("{host} has no address");
        let mut tcp = None;
        for ip in addrs {
            match tokio::net::TcpStream::connect((ip, self.port)).await {
                Ok(s) => {
                    tcp = Some(s);
                    break;
                }
                Err(e) => last = format!("connect to {ip}:{}: {e}", self.port),
            }
        }
        let tcp = tcp.ok_or_else(|| fetch_error(last))?;
        let name = crate::tls::server_name(host).map_err(|e| fetch_error(e.to_string()))?;
        let tls = tokio_rustls::TlsConnector::from(config)
            .connect(name, tcp)
            .await
            .map_err(|e| (Failure::Webpki, format!("TLS: {e}")))?;
        let (mut sender, conn) = hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(tls))
            .await
            .map_err(|e| fetch_error(e.to_string()))?;
        let driver = tokio::spawn(conn);
        let request = hyper::Request::get("/.well-known/mta-sts.txt")
            .header(hyper::header::HOST, host)
            .header(hyper::header::USER_AGENT, concat!("posthorn/", env!("CARGO_PKG_VERSION")))
            .body(http_body_util::Empty::<hyper::body::Bytes>::new())
            .map_err(|e| fetch_error(e.to_string()))?;
        let result = async {
            let response = sender.send_request(request).await.map_err(|e| fetch_error(e.to_string()))?;
            let status = response.status();
            if status != hyper::StatusCode::OK {
                // Redirects included: RFC 8461 3.3 forbids following them.
                return Err(fetch_error(format!("HTTP status {status} (redirects are not followed)")));
            }
            let kind = response.headers().get(hyper::header::CONTENT_TYPE).and_then(|v| v.to_str().ok());
            if !kind.is_some_and(|k| k.trim().to_ascii_lowercase().starts_with("text/plain")) {
                return Err(fetch_error(format!("Content-Type {} is not text/plain", kind.unwrap_or("(none)"))));
            }
            let body = http_body_util::Limited::new(response.into_body(), MAX_BODY)
                .collect()
                .await
                .map_err(|e| fetch_error(format!("body: {e} (at most {MAX_BODY} bytes)")))?
                .to_bytes();
            String::from_utf8(body.to_vec()).map_err(|_| (Failure::Invalid, "body is not UTF-8".into()))
        }
        .await;
        driver.abort();
        result
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &str =
        "version: STSv1\r\nmode: enforce\r\nmx: mx1.example.com\r\nmx: *.example.net\r\nmax_age: 86400\r\n";

    #[test]
    fn policies() {
        let p = parse_policy(GOOD).unwrap();
        assert_eq!(p.mode, Mode::Enforce);
        assert_eq!(p.mx, ["mx1.example.com", "*.example.net"]);
        assert_eq!(p.max_age, 86400);
        assert_eq!(p.lines.len(), 5);
        let huge = parse_policy("version: STSv1\nmode: testing\nmx: a.b\nmax_age: 99999999999\n").unwrap();
        assert_eq!((huge.mode, huge.max_age), (Mode::Testing, MAX_AGE_LIMIT));
        assert_eq!(parse_policy("version: STSv1\nmode: none\nmax_age: 1\n").unwrap().mode, Mode::None);
        let bad = |text: &str, want: &str| {
            let e = parse_policy(text).unwrap_err();
            assert!(e.contains(want), "{text:?}: {e}");
        };
        bad("mode: enforce\nmx: a.b\nmax_age: 1\n", "STSv1");
        bad("version: STSv2\nmode: enforce\nmx: a.b\nmax_age: 1\n", "STSv1");
        bad("version: STSv1\nmode: strict\nmx: a.b\nmax_age: 1\n", "unknown mode");
        bad("version: STSv1\nmode: enforce\nmax_age: 1\n", "no mx");
        bad("version: STSv1\nmode: enforce\nmx: a.b\n", "no max_age");
        bad("version: STSv1\nmode: enforce\nmx: a.*.b\nmax_age: 1\n", "not a host name");
        bad("version: STSv1\nrubbish\n", "key: value");
    }

    #[test]
    fn txt_records() {
        let one = |r: &[&str]| parse_txt(&r.iter().map(|s| s.to_string()).collect::<Vec<_>>());
        assert_eq!(one(&["v=STSv1; id=20260101T01"]), Ok(Some("20260101T01".into())));
        assert_eq!(one(&["v=spf1 -all", "v=STSv1;id=abc;"]), Ok(Some("abc".into())));
        assert_eq!(one(&["v=spf1 -all"]), Ok(None));
        assert!(one(&["v=STSv1; id=a", "v=STSv1; id=b"]).is_err());
        assert!(one(&["v=STSv1;"]).is_err());
        assert!(one(&["v=STSv1; id=a-b"]).is_err());
    }

    #[test]
    fn mx_patterns() {
        for (pattern, host, want) in [
            ("mx.example.com", "MX.example.com.", true),
            ("mx.example.com", "mx2.example.com", false),
            ("*.example.com", "mx.example.com", true),
            ("*.example.com", "a.mx.example.com", false),
            ("*.example.com", "example.com", false),
        ] {
            assert_eq!(mx_matches(pattern, host), want, "{pattern} {host}");
        }
    }

    #[test]
    fn the_cache_round_trips() {
        let dir = tempfile::tempdir().unwrap();
        let cached = Cached { id: "x1".into(), fetched: 1000, policy: parse_policy(GOOD).unwrap() };
        write_cache(dir.path(), "example.com", &cached).unwrap();
        assert_eq!(read_cache(dir.path(), "example.com"), Some(cached.clone()));
        assert_eq!(cached.expires(), 87400);
        assert_eq!(read_cache(dir.path(), "other.com"), None);
        assert!(write_cache(dir.path(), "../etc", &cached).is_err());
    }
}
