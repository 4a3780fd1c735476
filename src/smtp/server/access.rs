//! Relay access: which recipients a client may give.
//!
//! This module owns the one rule that keeps posthorn from being an open
//! relay. A recipient is accepted when the client is trusted (a local
//! submission, or an address in `access.trusted_networks`) or when the
//! recipient's domain is one this host handles (`access.relay_domains`,
//! `access.local_domains`). The bare `postmaster` is always accepted, as
//! RFC 5321 4.5.1 requires. A client that authenticated (SMTP AUTH, or a
//! trusted TLS client certificate) may relay like a trusted one. Per-domain recipient checks will be added here.

use super::session::Peer;
use crate::config::Access;
use crate::smtp::proto::address;
use crate::smtp::proto::reply::{Enhanced, Reply};

/// Accepts or refuses `recipient` (a mailbox as the parser returns it) from
/// `peer`, authenticated as `user` if at all; the refusal is the reply to send.
pub(crate) fn check_relay(access: &Access, peer: &Peer, user: Option<&str>, recipient: &str) -> Result<(), Reply> {
    if user.is_some() || is_trusted(access, peer) {
        return Ok(());
    }
    let denied = || Err(Reply::new(554, Enhanced(5, 7, 1), format!("<{recipient}>: Relay access denied")));
    match address::domain_of(recipient) {
        None => Ok(()),
        // `user%elsewhere@ours`, `elsewhere!user@ours` and `"user@elsewhere"@ours`
        // name another destination inside our domain: the classic ways to
        // make some MTA behind us relay onward. Untrusted clients get none.
        Some(_) if routes_elsewhere(recipient) => denied(),
        Some(domain) if is_our_domain(access, domain) => Ok(()),
        Some(_) => denied(),
    }
}

/// A local part carrying a routing hint of its own: a `%` or `!`, or an
/// `@` (necessarily quoted).
fn routes_elsewhere(recipient: &str) -> bool {
    let local = recipient.rsplit_once('@').map(|(l, _)| l).unwrap_or(recipient);
    local.contains(['%', '!', '@'])
}

/// Whether `peer` may relay to any domain.
pub(crate) fn is_trusted(access: &Access, peer: &Peer) -> bool {
    match peer {
        Peer::Local { .. } => true,
        Peer::Tcp(addr) => access.trusts(addr.ip()),
    }
}

/// Whether mail for `domain` is accepted from anyone: case-insensitive, a
/// trailing dot ignored on either side.
pub(crate) fn is_our_domain(access: &Access, domain: &str) -> bool {
    let domain = domain.trim_end_matches('.');
    access
        .relay_domains
        .iter()
        .chain(&access.local_domains)
        .any(|d| d.trim_end_matches('.').eq_ignore_ascii_case(domain))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn access() -> Access {
        Access {
            trusted_networks: vec!["10.0.0.0/8".parse().unwrap(), "2001:db8::/32".parse().unwrap()],
            relay_domains: vec!["webplatform.org".into(), "relay.example.".into()],
            local_domains: vec!["mail.example.org".into()],
            local_recipient_maps: vec![],
            trusted_fingerprints: vec![],
            client_cert_senders: vec![],
        }
    }

    #[test]
    fn relay_table() {
        let tcp = |s: &str| Peer::Tcp(s.parse().unwrap());
        let local = Peer::Local { user: "cron".into() };
        let cases = [
            // Trusted clients may send anywhere.
            (tcp("10.1.2.3:40000"), "anyone@gmail.example", true),
            (tcp("[::ffff:10.1.2.3]:40000"), "anyone@gmail.example", true),
            (tcp("[2001:db8::5]:25"), "anyone@gmail.example", true),
            (local.clone(), "anyone@gmail.example", true),
            // Others only to our domains.
            (tcp("192.0.2.7:40000"), "anyone@gmail.example", false),
            (tcp("192.0.2.7:40000"), "ops@webplatform.org", true),
            (tcp("192.0.2.7:40000"), "ops@WebPlatform.ORG", true),
            (tcp("192.0.2.7:40000"), "ops@relay.example", true),
            (tcp("192.0.2.7:40000"), "root@mail.example.org", true),
            (tcp("192.0.2.7:40000"), "ops@sub.webplatform.org", false),
            (tcp("192.0.2.7:40000"), "ops@webplatform.org.evil.example", false),
            (tcp("192.0.2.7:40000"), "\"a@webplatform.org\"@evil.example", false),
            (tcp("192.0.2.7:40000"), "a@[10.0.0.1]", false),
            (tcp("192.0.2.7:40000"), "user%evil.example@webplatform.org", false),
            (tcp("192.0.2.7:40000"), "evil.example!user@webplatform.org", false),
            (tcp("192.0.2.7:40000"), "\"user@evil.example\"@webplatform.org", false),
            (tcp("10.1.2.3:40000"), "user%evil.example@webplatform.org", true),
            (tcp("[2001:db9::1]:25"), "anyone@gmail.example", false),
            // The bare postmaster is always ours.
            (tcp("192.0.2.7:40000"), "postmaster", true),
        ];
        for (peer, rcpt, allowed) in cases {
            let got = check_relay(&access(), &peer, None, rcpt);
            assert_eq!(got.is_ok(), allowed, "{peer} -> {rcpt}");
            if let Err(reply) = got {
                assert_eq!(reply.to_string(), format!("554 5.7.1 <{rcpt}>: Relay access denied"));
            }
        }
    }

    #[test]
    fn no_networks_no_domains_refuses_everything_remote() {
        let none = Access {
            trusted_networks: vec![],
            relay_domains: vec![],
            local_domains: vec![],
            local_recipient_maps: vec![],
            trusted_fingerprints: vec![],
            client_cert_senders: vec![],
        };
        assert!(check_relay(&none, &Peer::Tcp("127.0.0.1:1".parse().unwrap()), None, "a@b.example").is_err());
        assert!(check_relay(&none, &Peer::Local { user: "root".into() }, None, "a@b.example").is_ok());
        // An authenticated client relays from anywhere.
        assert!(check_relay(&none, &Peer::Tcp("192.0.2.7:1".parse().unwrap()), Some("alice"), "a@b.example").is_ok());
    }
}
