//! `[srs]`: the Sender Rewriting Scheme for forwarded mail (`route::srs`
//! does the rewriting). Off unless `domain` and `secret` are both set.

use super::{Dur, KeyError, lower};
use crate::config::ConfigError;
use serde::Deserialize;
use std::path::PathBuf;
use std::time::Duration;

/// The SRS settings; present only when `[srs]` names a domain.
#[derive(Clone, Debug)]
pub(crate) struct Srs {
    /// The domain rewritten senders take (`SRS0=...@domain`); its SPF
    /// record must allow this host, and bounces to it come back here.
    pub(crate) domain: String,
    /// A file of secrets, one a line: the first signs, every one verifies
    /// (as postsrsd's secrets file), so a secret can be rotated.
    pub(crate) secret: PathBuf,
    /// Senders in these domains are never rewritten (a leading `.` takes
    /// the subdomains, as postsrsd's `-X`).
    pub(crate) exclude_domains: Vec<String>,
    /// How long an SRS address stays valid for bounces (whole days).
    pub(crate) max_age: Duration,
}

#[derive(Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawSrs {
    domain: Option<String>,
    secret: Option<PathBuf>,
    exclude_domains: Option<Vec<String>>,
    max_age: Option<Dur>,
}

/// `access` is the resolved `[access]`: the SRS domain must be one it
/// accepts mail for from anyone, or bounces would meet "Relay access denied".
pub(super) fn resolve_srs(raw: RawSrs, access: &super::Access, err: &KeyError) -> Result<Option<Srs>, ConfigError> {
    let domain = match raw.domain.map(|d| d.trim().trim_end_matches('.').to_ascii_lowercase()) {
        None => {
            if raw.secret.is_some() {
                return Err(err("srs.secret", "is set without srs.domain".into()));
            }
            return Ok(None);
        }
        Some(d) if d.is_empty() || d.contains(['@', ' ', '=']) || !d.contains('.') => {
            return Err(err("srs.domain", format!("`{d}` is not a domain")));
        }
        Some(d) if !access.local_domains.contains(&d) && !access.relay_domains.contains(&d) => {
            return Err(err(
                "srs.domain",
                format!(
                    "`{d}` is in neither access.local_domains nor access.relay_domains, so bounces to it would be refused"
                ),
            ));
        }
        Some(d) => d,
    };
    let Some(secret) = raw.secret else {
        return Err(err("srs.domain", "is set without srs.secret (a file of secrets, one a line)".into()));
    };
    if !secret.is_absolute() {
        return Err(err("srs.secret", format!("`{}` is not an absolute path", secret.display())));
    }
    let max_age = raw.max_age.map(|d| d.0).unwrap_or(Duration::from_secs(21 * 86400));
    if max_age < Duration::from_secs(86400) {
        return Err(err("srs.max_age", "is less than one day (SRS timestamps count whole days)".into()));
    }
    Ok(Some(Srs { domain, secret, exclude_domains: lower(raw.exclude_domains.unwrap_or_default()), max_age }))
}

#[cfg(test)]
mod tests {
    use crate::config::Config;
    use std::path::Path;

    fn parse(text: &str) -> Result<Config, String> {
        Config::parse(text, Path::new("/etc/posthorn/posthorn.toml")).map_err(|e| e.0)
    }

    #[test]
    fn srs_section() {
        let base = "role = \"hub\"\n[access]\nlocal_domains = [\"hub.example\"]\n[srs]\n";
        assert!(parse("role = \"hub\"\n").unwrap().srs.is_none());
        let c = parse(&format!("{base}domain = \"Hub.Example.\"\nsecret = \"/etc/posthorn/srs.secret\"\n")).unwrap();
        let srs = c.srs.unwrap();
        assert_eq!(srs.domain, "hub.example");
        assert_eq!(srs.max_age.as_secs(), 21 * 86400);
        let errors = [
            ("secret = \"/s\"\n", "/etc/posthorn/posthorn.toml:5: srs.secret: is set without srs.domain"),
            ("domain = \"hub.example\"\n", "/etc/posthorn/posthorn.toml:5: srs.domain: is set without srs.secret"),
            ("domain = \"hub.example\"\nsecret = \"s\"\n", "srs.secret: `s` is not an absolute path"),
            ("domain = \"other.example\"\nsecret = \"/s\"\n", "srs.domain: `other.example` is in neither"),
            ("domain = \"a@b\"\nsecret = \"/s\"\n", "srs.domain: `a@b` is not a domain"),
            ("domain = \"hub.example\"\nsecret = \"/s\"\nmax_age = \"1h\"\n", "srs.max_age: is less than one day"),
        ];
        for (text, want) in errors {
            let got = parse(&format!("{base}{text}")).unwrap_err();
            assert!(got.contains(want), "{text:?}: {got}");
        }
    }
}
