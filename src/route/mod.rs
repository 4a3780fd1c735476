//! Routing: which final recipients an address stands for, and where each
//! one goes. Everything here is decided from lookup tables at the time it
//! is asked (delivery time), so a changed table applies to mail already
//! queued.
//!
//! - [`table`]: Postfix lookup tables read from their text source
//!   (`hash:`/`texthash:`), picked up again when the file changes.
//! - `aliases`: the aliases(5) grammar and that of `:include:` files;
//!   addresses and include lists, commands and files refused.
//! - `rewrite`: virtual alias expansion (`user@domain`, `user`, catch-all
//!   `@domain`), local aliases, loops, limits, duplicates, and a trace of
//!   every step for `posthorn route explain`.
//! - `canonical`: canonical(5) sender/recipient rewriting and
//!   masquerading of local senders, applied at the door into the queue.
//! - `transport`: transport(5) lookup and the typed `NextHop`.
//! - `srs`: the Sender Rewriting Scheme (libsrs2/postsrsd format): the
//!   sender of forwarded mail rewritten, bounces to it reversed at RCPT.
//! - `router`: the configuration's tables opened once; recipient checks
//!   at the door and next-hop decisions at delivery time.
//! - `tls_policy`: the TLS policy tables (`outbound_tls.policy_maps`),
//!   opened for `deliver::tls_policy`, which gives their values meaning.
//!
//! No I/O beyond reading table files; no SMTP, no queue.

pub(crate) mod aliases;
pub(crate) mod canonical;
pub(crate) mod rewrite;
pub(crate) mod router;
pub(crate) mod srs;
pub mod table;
pub(crate) mod tls_policy;
pub(crate) mod transport;

/// The text of `posthorn route explain ADDRESS`: every rewriting step,
/// then the route of each final recipient. `default_for` gives the next
/// hop a recipient takes when no transport entry matches (Maildir for local
/// domains, MX otherwise on a hub; the smarthosts on a satellite).
#[cfg(test)]
pub(crate) fn explain(
    rewriter: &rewrite::Rewriter,
    transports: &transport::TransportMaps,
    default_for: &dyn Fn(&str) -> transport::NextHop,
    address: &str,
) -> String {
    use std::fmt::Write;
    let mut out = String::new();
    let expansion = match rewriter.expand(address) {
        Ok(x) => x,
        Err(e) => {
            let _ = writeln!(out, "{address}: error: {e}");
            return out;
        }
    };
    out.push_str(&expansion.to_string());
    for rcpt in &expansion.recipients {
        let route = transports.route(rcpt, &default_for(rcpt));
        let _ = writeln!(out, "{rcpt}: {route}");
    }
    out
}

#[cfg(test)]
mod tests {
    use super::rewrite::Rewriter;
    use super::table::{Syntax, Table};
    use super::transport::{NextHop, TransportMaps};
    use super::*;
    use std::sync::Arc;

    #[test]
    fn explains_the_whole_chain() {
        let v = Table::from_text(
            "hash:/etc/postfix/virtual",
            "@staging.example.org team@example.org\nteam@example.org alice@example.org, bob@example.net\n",
            Syntax::Map,
        )
        .unwrap();
        let t = Table::from_text(
            "hash:/etc/posthorn/transport",
            "example.net relay:[gw.example.net]:2525\n",
            Syntax::Transport,
        )
        .unwrap();
        let rewriter = Rewriter::new("example.org", |d| d == "example.org").with_virtual_maps(vec![Arc::new(v)]);
        let transports = TransportMaps::new(vec![Arc::new(t)]);
        let default_for = |rcpt: &str| if rcpt.ends_with("@example.org") { NextHop::maildir() } else { NextHop::mx() };
        let want = "\
deploy@staging.example.org: virtual alias (hash:/etc/postfix/virtual line 1, key \"@staging.example.org\") -> team@example.org
  team@example.org: virtual alias (hash:/etc/postfix/virtual line 2, key \"team@example.org\") -> alice@example.org, bob@example.net
    alice@example.org: final recipient
    bob@example.net: final recipient
alice@example.org: transport default: maildir:
bob@example.net: transport hash:/etc/posthorn/transport: relay:[gw.example.net]:2525 (line 1, key \"example.net\", value \"relay:[gw.example.net]:2525\")
";
        assert_eq!(explain(&rewriter, &transports, &default_for, "deploy@staging.example.org"), want);

        let looping = Table::from_text("v", "a@x.net b@x.net\nb@x.net a@x.net\n", Syntax::Map).unwrap();
        let rewriter = Rewriter::new("example.org", |_| false).with_virtual_maps(vec![Arc::new(looping)]);
        assert_eq!(
            explain(&rewriter, &transports, &default_for, "a@x.net"),
            "a@x.net: error: alias loop: a@x.net -> b@x.net -> a@x.net\n"
        );
    }
}
