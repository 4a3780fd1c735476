//! DKIM signing of outbound mail (`[dkim]`, RFC 6376, RFC 8463).
//!
//! One key per signing domain, read once when a configuration generation
//! is built (a key that does not load refuses the start or the reload).
//! `Transports::deliver` signs a message just before an SMTP transmission:
//! after the content filter, never for local Maildir delivery. The signing
//! domain is the `From:` header's domain (or its closest parent with a key),
//! else the envelope sender's. An 8-bit message is signed in its 7-bit form
//! and sent so to every hop, so that the SMTP client's conversion for a hop
//! without 8BITMIME cannot break the signature (RFC 6376 5.3); see
//! [`Signer::sign_message`].

use crate::config::{DkimAlgorithm, DkimKeyConfig};
use crate::message::Body;
use mail_auth::common::crypto::{Ed25519Key, RsaKey, Sha256};
use mail_auth::common::headers::HeaderWriter;
use mail_auth::dkim::{Canonicalization, DkimSigner, Done};
use rustls_pki_types::PrivateKeyDer;
use rustls_pki_types::pem::PemObject;
use std::borrow::Cow;
use std::path::Path;

use crate::message::OutMessage;

/// Headers signed when `dkim.headers` is not set.
pub(crate) const DEFAULT_HEADERS: [&str; 14] = [
    "From",
    "To",
    "Cc",
    "Subject",
    "Date",
    "Message-ID",
    "Reply-To",
    "In-Reply-To",
    "References",
    "MIME-Version",
    "Content-Type",
    "Content-Transfer-Encoding",
    "List-Unsubscribe",
    "Sender",
];

enum Key {
    Rsa(DkimSigner<RsaKey<Sha256>, Done>),
    Ed25519(DkimSigner<Ed25519Key, Done>),
}

/// Every configured signing key, by domain.
pub(crate) struct Signer {
    keys: Vec<(String, Key)>,
}

impl Signer {
    /// Loads every key; `None` when none is configured. Errors name the file.
    pub(crate) fn new(keys: &[DkimKeyConfig], headers: &[String]) -> anyhow::Result<Option<Signer>> {
        if keys.is_empty() {
            return Ok(None);
        }
        let headers: Vec<String> =
            if headers.is_empty() { DEFAULT_HEADERS.iter().map(|h| h.to_string()).collect() } else { headers.to_vec() };
        let mut out = Vec::new();
        for k in keys {
            let key = load_key(&k.key, k.algorithm)
                .map_err(|e| anyhow::anyhow!("dkim key {} for {}: {e}", k.key.display(), k.domain))?;
            let key = match key {
                Loaded::Rsa(key) => Key::Rsa(signer(key, &k.domain, &k.selector, &headers)),
                Loaded::Ed25519(key) => Key::Ed25519(signer(key, &k.domain, &k.selector, &headers)),
            };
            out.push((k.domain.to_ascii_lowercase(), key));
        }
        Ok(Some(Signer { keys: out }))
    }

    /// `msg` signed in the form that goes out, or `None` when no key covers
    /// it (or signing failed, logged).
    ///
    /// RFC 6376 5.3: a signer whose mail may be downconverted on the way
    /// converts first and signs the converted form. Whether a next hop
    /// offers 8BITMIME is only known once the client has its EHLO reply, so
    /// rather than sign per session, an 8-bit message that a key covers is
    /// converted to 7 bit here, signed, and that form (flagged 7-bit) goes
    /// to every hop. It costs quoted-printable or base64 size on hops that
    /// take 8 bits, but the signature always matches what is sent, and the
    /// client has nothing left to convert. When conversion is refused (an
    /// 8-bit header field, say) the 8-bit form is signed as before: hops
    /// with 8BITMIME get it intact, the others fail it with 5.6.3.
    pub(crate) fn sign_message(&self, msg: &OutMessage) -> Option<OutMessage> {
        let (domain, key) = self.key_for_message(&msg.sender, &msg.body)?;
        let converted = match msg.eight_bit {
            true => crate::message::downconvert::to_seven_bit(&msg.body).ok(),
            false => None,
        };
        let (body, eight_bit) = match &converted {
            Some(Cow::Owned(seven)) => (&seven[..], false),
            _ => (&msg.body[..], msg.eight_bit),
        };
        let signed = sign_with(key, &msg.id, &domain, body)?;
        Some(OutMessage { body: Body::from(signed), eight_bit, ..msg.clone() })
    }

    /// `message` with a DKIM-Signature header in front, or `None` when no
    /// key covers its author's domain (or signing failed, logged). The
    /// bytes are signed as given; [`Signer::sign_message`] is for mail that
    /// may still be converted on the way.
    #[cfg(test)]
    pub(crate) fn sign(&self, id: &str, sender: &str, message: &[u8]) -> Option<Vec<u8>> {
        let (domain, key) = self.key_for_message(sender, message)?;
        sign_with(key, id, &domain, message)
    }

    /// The signing domain of `message` and its key, if a key covers it.
    fn key_for_message(&self, sender: &str, message: &[u8]) -> Option<(String, &Key)> {
        let domain = author_domain(message).or_else(|| sender.rsplit_once('@').map(|(_, d)| d.to_ascii_lowercase()))?;
        let key = self.key_for(&domain)?;
        Some((domain, key))
    }

    /// The key for `domain` or its closest parent domain.
    fn key_for(&self, domain: &str) -> Option<&Key> {
        let mut d = domain;
        loop {
            if let Some((_, key)) = self.keys.iter().find(|(k, _)| k == d) {
                return Some(key);
            }
            d = d.split_once('.')?.1;
        }
    }
}

/// `message` with a DKIM-Signature by `key` in front; `None` (logged) when
/// signing fails.
fn sign_with(key: &Key, id: &str, domain: &str, message: &[u8]) -> Option<Vec<u8>> {
    let signature = match key {
        Key::Rsa(s) => s.sign(message).map(|s| s.to_header()),
        Key::Ed25519(s) => s.sign(message).map(|s| s.to_header()),
    };
    match signature {
        Ok(header) => {
            let mut out = Vec::with_capacity(header.len() + message.len());
            out.extend_from_slice(header.as_bytes());
            out.extend_from_slice(message);
            Some(out)
        }
        Err(e) => {
            tracing::warn!("{id}: DKIM signing for {domain} failed, sent unsigned: {e}");
            None
        }
    }
}

fn signer<T: mail_auth::common::crypto::SigningKey<Hasher = Sha256>>(
    key: T,
    domain: &str,
    selector: &str,
    headers: &[String],
) -> DkimSigner<T, Done> {
    DkimSigner::from_key(key)
        .domain(domain)
        .selector(selector)
        .headers(headers.iter().cloned())
        .header_canonicalization(Canonicalization::Relaxed)
        .body_canonicalization(Canonicalization::Relaxed)
}

enum Loaded {
    Rsa(RsaKey<Sha256>),
    Ed25519(Ed25519Key),
}

/// Reads a PEM private key: PKCS#1 or PKCS#8 RSA, PKCS#8 Ed25519. Without
/// an explicit algorithm the key's own type decides.
fn load_key(path: &Path, algorithm: Option<DkimAlgorithm>) -> Result<Loaded, String> {
    let pem = std::fs::read(path).map_err(|e| format!("cannot read: {e}"))?;
    let der = PrivateKeyDer::from_pem_slice(&pem).map_err(|e| format!("not a PEM private key: {e}"))?;
    let ed25519 = |der: &[u8]| Ed25519Key::from_pkcs8_maybe_unchecked_der(der).map_err(|e| e.to_string());
    match (algorithm, &der) {
        (Some(DkimAlgorithm::Ed25519Sha256), PrivateKeyDer::Pkcs8(p)) => {
            ed25519(p.secret_pkcs8_der()).map(Loaded::Ed25519)
        }
        (Some(DkimAlgorithm::Ed25519Sha256), _) => Err("an Ed25519 key must be PKCS#8 (BEGIN PRIVATE KEY)".into()),
        (Some(DkimAlgorithm::RsaSha256), _) => RsaKey::from_key_der(der).map(Loaded::Rsa).map_err(|e| e.to_string()),
        (None, PrivateKeyDer::Pkcs8(p)) => match ed25519(p.secret_pkcs8_der()) {
            Ok(k) => Ok(Loaded::Ed25519(k)),
            Err(_) => RsaKey::from_key_der(der).map(Loaded::Rsa).map_err(|e| e.to_string()),
        },
        (None, _) => RsaKey::from_key_der(der).map(Loaded::Rsa).map_err(|e| e.to_string()),
    }
}

/// The domain of the first `From:` address, lowercased.
fn author_domain(message: &[u8]) -> Option<String> {
    let parsed = mail_parser::MessageParser::new().parse_headers(message)?;
    let from = parsed.from()?.first()?.address()?;
    from.rsplit_once('@').map(|(_, d)| d.to_ascii_lowercase())
}

/// A new Ed25519 key: the PKCS#8 PEM to store, and the `p=` value.
pub(crate) fn generate_ed25519() -> anyhow::Result<(String, String)> {
    let der = Ed25519Key::generate_pkcs8().map_err(|e| anyhow::anyhow!("{e}"))?;
    let key = Ed25519Key::from_pkcs8_der(&der).map_err(|e| anyhow::anyhow!("{e}"))?;
    Ok((pem("PRIVATE KEY", &der), data_encoding::BASE64.encode(&key.public_key())))
}

fn pem(label: &str, der: &[u8]) -> String {
    let b64 = data_encoding::BASE64.encode(der);
    let mut out = format!("-----BEGIN {label}-----\n");
    for chunk in b64.as_bytes().chunks(64) {
        out.push_str(std::str::from_utf8(chunk).unwrap_or_default());
        out.push('\n');
    }
    out.push_str(&format!("-----END {label}-----\n"));
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(dir: &Path, pem: &str) -> Vec<DkimKeyConfig> {
        let path = dir.join("k.pem");
        std::fs::write(&path, pem).unwrap();
        vec![DkimKeyConfig { domain: "example.org".into(), selector: "s1".into(), key: path, algorithm: None }]
    }

    #[test]
    fn signs_for_the_from_domain_and_its_subdomains() {
        let dir = tempfile::tempdir().unwrap();
        let (pem, _) = generate_ed25519().unwrap();
        let signer = Signer::new(&config(dir.path(), &pem), &[]).unwrap().unwrap();
        let msg = b"From: a@vm.example.org\r\nTo: b@example.net\r\nSubject: hi\r\n\r\nbody\r\n";
        let signed = String::from_utf8(signer.sign("Q1", "", msg).unwrap()).unwrap();
        assert!(signed.starts_with("DKIM-Signature: v=1; a=ed25519-sha256;"), "{signed}");
        assert!(signed.contains("d=example.org"), "{signed}");
        assert!(signed.contains("s=s1"), "{signed}");
        let other = b"From: a@example.net\r\n\r\nbody\r\n";
        assert!(signer.sign("Q1", "a@example.net", other).is_none());
    }

    /// 8-bit mail is signed in its 7-bit form, which is what goes out; a
    /// message that cannot be converted, or needs no change, is signed as
    /// it is; mail no key covers is left alone, unconverted.
    #[test]
    fn eight_bit_mail_is_signed_in_its_seven_bit_form() {
        let dir = tempfile::tempdir().unwrap();
        let (pem, _) = generate_ed25519().unwrap();
        let signer = Signer::new(&config(dir.path(), &pem), &[]).unwrap().unwrap();
        let body = "From: a@example.org\r\nSubject: hi\r\n\r\nGrüße\r\n".as_bytes();
        let cases: [(&str, &[u8], Option<bool>); 4] = [
            // (sender, message, Some(eight_bit after signing) or None: unsigned)
            ("a@example.org", body, Some(false)),
            ("a@example.org", "From: a@example.org\r\nSubject: Grüße\r\n\r\nü\r\n".as_bytes(), Some(true)),
            ("a@example.org", b"From: a@example.org\r\n\r\nplain\r\n", Some(true)),
            ("a@example.net", "From: a@example.net\r\n\r\nGrüße\r\n".as_bytes(), None),
        ];
        for (sender, message, want) in cases {
            let msg = OutMessage { eight_bit: true, ..OutMessage::simple("Q1", sender, &["b@example.net"], message) };
            let got = signer.sign_message(&msg);
            assert_eq!(got.as_ref().map(|m| m.eight_bit), want, "{}", String::from_utf8_lossy(message));
            let Some(got) = got else { continue };
            assert!(got.body.starts_with(b"DKIM-Signature: "), "{}", String::from_utf8_lossy(&got.body));
            match got.eight_bit {
                true => assert!(got.body.ends_with(message), "nothing to convert, or refused: signed as it is"),
                false => assert!(got.body.is_ascii(), "{}", String::from_utf8_lossy(&got.body)),
            }
        }
    }

    #[test]
    fn a_bad_key_file_is_named() {
        let dir = tempfile::tempdir().unwrap();
        let keys = config(dir.path(), "not a key\n");
        let err = Signer::new(&keys, &[]).err().unwrap().to_string();
        assert!(err.contains("k.pem"), "{err}");
        let mut keys = keys;
        keys[0].key = dir.path().join("missing.pem");
        let err = Signer::new(&keys, &[]).err().unwrap().to_string();
        assert!(err.contains("missing.pem"), "{err}");
    }
}
