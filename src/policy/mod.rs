//! Policy delegation: Postfix's SMTPD_POLICY_README protocol, as a client.
//!
//! A policy service (postgrey, policyd-spf, a site's own script) gets one
//! request per question: `name=value` lines ending with an empty line, and
//! answers with `action=...` and an empty line. The connection stays open
//! for the next request, so one service process serves many sessions one
//! question at a time; idle connections are kept in a small pool per
//! service (`Services`) and dropped after `policy.max_idle`.
//!
//! This module owns the wire format (`Query::encode`, `parse_response`),
//! the meaning of the actions (`Action::parse`, as access(5) defines them
//! and Postfix applies them to a policy reply), and the order in which
//! several services are asked (`Services::decide`). It knows nothing of the
//! SMTP session: the server fills in a `Query` and applies the `Verdict`.

mod action;
mod client;

pub(crate) use action::Verdict;
pub(crate) use client::Services;

use std::fmt::Write as _;
use std::net::IpAddr;

/// The SMTP stage a question is asked at (`protocol_state`).
pub(crate) use crate::config::PolicyStage as Stage;

/// What the server knows about the client and the transaction when it
/// asks: the attributes of SMTPD_POLICY_README's "Protocol description".
/// Unknown values are sent empty, as Postfix does.
#[derive(Clone, Debug, Default)]
pub(crate) struct Query {
    pub(crate) stage: Option<Stage>,
    /// `SMTP` or `ESMTP`.
    pub(crate) protocol_name: String,
    pub(crate) helo_name: String,
    pub(crate) queue_id: String,
    pub(crate) sender: String,
    pub(crate) recipient: String,
    pub(crate) recipient_count: usize,
    pub(crate) client_address: Option<IpAddr>,
    pub(crate) client_port: Option<u16>,
    pub(crate) server_address: Option<IpAddr>,
    pub(crate) server_port: Option<u16>,
    /// Unique per transaction: services cache per message with it.
    pub(crate) instance: String,
    pub(crate) sasl_method: String,
    pub(crate) sasl_username: String,
    pub(crate) ccert_fingerprint: String,
    pub(crate) encryption_protocol: String,
    pub(crate) encryption_cipher: String,
    pub(crate) encryption_keysize: String,
    /// The size the client declared with `SIZE=`, 0 if none.
    pub(crate) size: u64,
    pub(crate) hostname: String,
}

impl Query {
    /// The request as it goes on the wire. Values never contain a newline
    /// (one would end the attribute early and let a client forge the
    /// next): control characters are dropped.
    pub(crate) fn encode(&self) -> Vec<u8> {
        let client = self.client_address.map(|ip| ip.to_canonical().to_string()).unwrap_or_default();
        let attrs: [(&str, String); 24] = [
            ("request", "smtpd_access_policy".into()),
            ("protocol_state", self.stage.map_or("", Stage::name).into()),
            ("protocol_name", self.protocol_name.clone()),
            ("helo_name", self.helo_name.clone()),
            ("queue_id", self.queue_id.clone()),
            ("sender", self.sender.clone()),
            ("recipient", self.recipient.clone()),
            ("recipient_count", self.recipient_count.to_string()),
            ("client_address", client),
            // posthorn does no reverse lookups: Postfix's word for that.
            ("client_name", "unknown".into()),
            ("reverse_client_name", "unknown".into()),
            ("instance", self.instance.clone()),
            ("sasl_method", self.sasl_method.clone()),
            ("sasl_username", self.sasl_username.clone()),
            ("sasl_sender", String::new()),
            ("size", self.size.to_string()),
            ("ccert_subject", String::new()),
            ("ccert_issuer", String::new()),
            ("ccert_fingerprint", self.ccert_fingerprint.clone()),
            ("encryption_protocol", self.encryption_protocol.clone()),
            ("encryption_cipher", self.encryption_cipher.clone()),
            ("encryption_keysize", self.encryption_keysize.clone()),
            ("etrn_domain", String::new()),
            ("stress", String::new()),
        ];
        let mut out = String::with_capacity(512);
        for (name, value) in attrs {
            let _ = writeln!(out, "{name}={}", clean(&value));
        }
        let extra = [
            ("client_port", self.client_port.map(|p| p.to_string())),
            ("server_address", self.server_address.map(|ip| ip.to_canonical().to_string())),
            ("server_port", self.server_port.map(|p| p.to_string())),
            ("policy_context", Some(String::new())),
            ("server_hostname", Some(self.hostname.clone())),
        ];
        for (name, value) in extra {
            let _ = writeln!(out, "{name}={}", clean(&value.unwrap_or_default()));
        }
        out.push('\n');
        out.into_bytes()
    }
}

fn clean(value: &str) -> String {
    value.chars().filter(|c| !c.is_control()).collect()
}

/// The `action=` value of a complete response (the lines before the empty
/// one). A response without one is a broken service.
pub(crate) fn parse_response(lines: &[String]) -> Result<String, String> {
    lines
        .iter()
        .find_map(|l| l.strip_prefix("action="))
        .map(|a| a.trim().to_string())
        .ok_or_else(|| "the policy service answered without an action= attribute".to_string())
}

/// `TLSv1.3 with cipher NAME (256/256 bits)` (`tls::describe`) as
/// protocol, cipher and key size.
pub(crate) fn split_tls(description: &str) -> (String, String, String) {
    let Some((protocol, rest)) = description.split_once(" with cipher ") else {
        return (description.to_string(), String::new(), String::new());
    };
    let (cipher, bits) = match rest.split_once(" (") {
        Some((c, b)) => (c, b.split('/').next().unwrap_or("")),
        None => (rest, ""),
    };
    (protocol.to_string(), cipher.to_string(), bits.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn request_has_the_attributes_and_ends_with_an_empty_line() {
        let q = Query {
            stage: Some(Stage::Rcpt),
            protocol_name: "ESMTP".into(),
            helo_name: "client.example".into(),
            sender: "a@example.net".into(),
            recipient: "b@example.org\naction=OK".into(),
            recipient_count: 0,
            client_address: Some("::ffff:192.0.2.1".parse().unwrap()),
            instance: "1.2".into(),
            ..Query::default()
        };
        let text = String::from_utf8(q.encode()).unwrap();
        assert!(text.starts_with("request=smtpd_access_policy\nprotocol_state=RCPT\nprotocol_name=ESMTP\n"));
        assert!(text.contains("\nclient_address=192.0.2.1\n"), "{text}");
        assert!(text.contains("\nhelo_name=client.example\n"));
        assert!(text.contains("\nrecipient=b@example.orgaction=OK\n"), "a newline cannot forge an attribute");
        assert!(text.contains("\ninstance=1.2\n"));
        assert!(text.ends_with("\n\n"));
        assert_eq!(text.matches("\n\n").count(), 1);
    }

    #[test]
    fn response_action() {
        let lines = |l: &[&str]| l.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        assert_eq!(parse_response(&lines(&["action=DUNNO"])).unwrap(), "DUNNO");
        assert_eq!(parse_response(&lines(&["x=y", "action=REJECT no thanks "])).unwrap(), "REJECT no thanks");
        assert!(parse_response(&lines(&["foo=bar"])).is_err());
    }

    #[test]
    fn tls_description() {
        let got = split_tls("TLSv1.3 with cipher TLS_AES_256_GCM_SHA384 (256/256 bits)");
        assert_eq!(got, ("TLSv1.3".into(), "TLS_AES_256_GCM_SHA384".into(), "256".into()));
    }
}
