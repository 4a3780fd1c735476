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

/// Refuses a return path that is an address literal of a loopback,
/// private or link-local address (`x@[127.0.0.1]`) from a client that is
/// neither trusted nor authenticated: no outsider has a mailbox there, and
/// a notice to it comes back to this host or its neighbours (issue 12: one
/// such message with `NOTIFY=SUCCESS` looped without end).
pub(crate) fn check_sender_literal(
    access: &Access,
    peer: &Peer,
    user: Option<&str>,
    sender: &str,
) -> Result<(), Reply> {
    if user.is_some() || is_trusted(access, peer) {
        return Ok(());
    }
    match address::domain_of(sender).and_then(literal_ip) {
        Some(ip) if is_internal(ip) => Err(Reply::new(
            553,
            Enhanced(5, 1, 7),
            format!("<{sender}>: Sender address rejected: address literal of a local or private network"),
        )),
        _ => Ok(()),
    }
}

/// The address in `[192.0.2.1]` or `[IPv6:2001:db8::1]`.
fn literal_ip(domain: &str) -> Option<std::net::IpAddr> {
    let inner = domain.strip_prefix('[')?.strip_suffix(']')?;
    let inner = match inner.get(..5) {
        Some(tag) if tag.eq_ignore_ascii_case("IPv6:") => &inner[5..],
        _ => inner,
    };
    inner.parse().ok()
}

/// Loopback, private, link-local, unspecified or broadcast: addresses that
/// mean "here" or "our own network", never a stranger's mail host.
fn is_internal(ip: std::net::IpAddr) -> bool {
    use std::net::IpAddr;
    match ip.to_canonical() {
        IpAddr::V4(v4) => {
            v4.is_loopback() || v4.is_private() || v4.is_link_local() || v4.is_unspecified() || v4.is_broadcast()
        }
        IpAddr::V6(v6) => v6.is_loopback() || v6.is_unspecified() || v6.is_unique_local() || v6.is_unicast_link_local(),
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
        .chain(&access.virtual_alias_domains)
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
            virtual_alias_domains: vec!["lists.example.org".into()],
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
            (tcp("192.0.2.7:40000"), "team@lists.example.org", true),
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
            virtual_alias_domains: vec![],
        };
        assert!(check_relay(&none, &Peer::Tcp("127.0.0.1:1".parse().unwrap()), None, "a@b.example").is_err());
        assert!(check_relay(&none, &Peer::Local { user: "root".into() }, None, "a@b.example").is_ok());
        // An authenticated client relays from anywhere.
        assert!(check_relay(&none, &Peer::Tcp("192.0.2.7:1".parse().unwrap()), Some("alice"), "a@b.example").is_ok());
    }

    #[test]
    fn address_literal_senders_of_internal_networks() {
        let tcp = |s: &str| Peer::Tcp(s.parse().unwrap());
        let outsider = tcp("192.0.2.7:40000");
        // (peer, authenticated, sender, allowed)
        let cases = [
            (outsider.clone(), None, "x@[127.0.0.1]", false),
            (outsider.clone(), None, "x@[10.9.8.7]", false),
            (outsider.clone(), None, "x@[192.168.1.1]", false),
            (outsider.clone(), None, "x@[169.254.0.1]", false),
            (outsider.clone(), None, "x@[0.0.0.0]", false),
            (outsider.clone(), None, "x@[IPv6:::1]", false),
            (outsider.clone(), None, "x@[ipv6:fd00::1]", false),
            (outsider.clone(), None, "x@[IPv6:fe80::1]", false),
            (outsider.clone(), None, "x@[IPv6:::ffff:127.0.0.1]", false),
            (outsider.clone(), None, "x@[192.0.2.1]", true),
            (outsider.clone(), None, "x@[IPv6:2001:db8::1]", true),
            (outsider.clone(), None, "x@example.org", true),
            (outsider.clone(), None, "", true),
            (outsider.clone(), Some("alice"), "x@[127.0.0.1]", true),
            (tcp("10.1.2.3:40000"), None, "x@[127.0.0.1]", true),
            (Peer::Local { user: "cron".into() }, None, "x@[127.0.0.1]", true),
        ];
        for (peer, user, sender, allowed) in cases {
            let got = check_sender_literal(&access(), &peer, user, sender);
            assert_eq!(got.is_ok(), allowed, "{peer} {user:?} MAIL FROM:<{sender}>");
            if let Err(reply) = got {
                assert!(reply.to_string().starts_with("553 5.1.7 "), "{reply}");
            }
        }
    }
}
