//! `[[deliver.shaping]]`: per-destination traffic shaping, as KumoMTA's:
//! connections at once, messages per time window and messages per
//! connection for one destination
//! (a recipient domain delivered by MX, or a queue destination key such
//! as `relay` or `smtp:[10.0.0.1]:25`).

use super::{Dur, KeyError};
use crate::config::ConfigError;
use serde::Deserialize;
use std::time::Duration;

/// One destination's limits.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Shaping {
    /// A domain (lower case) or a destination key.
    pub(crate) destination: String,
    /// Connections open at once; `None`: `deliver.destination_concurrency`.
    pub(crate) max_connections: Option<usize>,
    /// Messages started per `per`; `None`: no limit.
    pub(crate) max_messages: Option<u32>,
    /// The window `max_messages` counts in (one minute unless a test or a
    /// slow receiver wants another).
    pub(crate) per: Duration,
    /// Messages one session carries before it is closed with QUIT and a
    /// new one opened; `None`: no limit.
    pub(crate) max_per_connection: Option<u32>,
}

impl Shaping {
    /// Whether this entry is for the queue destination `key`
    /// (`mx:example.org` for MX delivery to example.org).
    pub(crate) fn matches(&self, key: &str) -> bool {
        key.eq_ignore_ascii_case(&self.destination)
            || key.strip_prefix("mx:").is_some_and(|d| d.eq_ignore_ascii_case(&self.destination))
    }
}

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawShaping {
    destination: String,
    max_connections: Option<usize>,
    max_messages_per_minute: Option<u32>,
    per: Option<Dur>,
    max_messages_per_connection: Option<u32>,
}

pub(super) fn resolve_shaping(raw: Option<Vec<RawShaping>>, err: &KeyError) -> Result<Vec<Shaping>, ConfigError> {
    let key = "deliver.shaping";
    raw.unwrap_or_default()
        .into_iter()
        .map(|r| {
            let destination = r.destination.trim().trim_end_matches('.').to_ascii_lowercase();
            if destination.is_empty() || destination.contains(['@', ' ']) {
                return Err(err(key, format!("destination `{}` is not a domain or destination", r.destination)));
            }
            if r.max_connections == Some(0)
                || r.max_messages_per_minute == Some(0)
                || r.max_messages_per_connection == Some(0)
            {
                return Err(err(key, format!("{destination}: a limit of 0 would hold its mail forever")));
            }
            let per = r.per.map(|d| d.0).unwrap_or(Duration::from_secs(60));
            if per.is_zero() {
                return Err(err(key, format!("{destination}: per must be longer than 0s")));
            }
            Ok(Shaping {
                destination,
                max_connections: r.max_connections,
                max_messages: r.max_messages_per_minute,
                per,
                max_per_connection: r.max_messages_per_connection,
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use crate::config::Config;
    use std::path::Path;

    #[test]
    fn shaping_tables() {
        let parse = |t: &str| Config::parse(t, Path::new("p.toml")).map_err(|e| e.0);
        let c = parse("[[deliver.shaping]]\ndestination = \"Example.ORG\"\nmax_messages_per_minute = 100\n").unwrap();
        let s = &c.deliver.shaping[0];
        assert_eq!((s.destination.as_str(), s.max_messages, s.per.as_secs()), ("example.org", Some(100), 60));
        assert!(s.matches("mx:example.org") && s.matches("mx:EXAMPLE.org") && !s.matches("mx:sub.example.org"));
        let e = parse("[[deliver.shaping]]\ndestination = \"a.example\"\nmax_connections = 0\n").unwrap_err();
        assert!(e.contains("deliver.shaping: a.example: a limit of 0"), "{e}");
        let c = parse("[[deliver.shaping]]\ndestination = \"a.example\"\nmax_messages_per_connection = 2\n").unwrap();
        assert_eq!(c.deliver.shaping[0].max_per_connection, Some(2));
        assert_eq!(s.max_per_connection, None, "unlimited unless set");
        let e =
            parse("[[deliver.shaping]]\ndestination = \"a.example\"\nmax_messages_per_connection = 0\n").unwrap_err();
        assert!(e.contains("deliver.shaping: a.example: a limit of 0"), "{e}");
        let e = parse("[[deliver.shaping]]\nmax_connections = 1\n").unwrap_err();
        assert!(e.contains("destination"), "{e}");
    }
}
