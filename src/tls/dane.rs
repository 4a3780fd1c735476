//! The DANE certificate check (RFC 6698, RFC 7671, RFC 7672 for SMTP): a
//! server certificate is accepted when one of the MX host's TLSA records
//! matches it, instead of when a CA vouches for it. Which records exist,
//! and whether DNSSEC made them trustworthy, is `deliver::dane`'s work;
//! this module only matches.
//!
//! - DANE-EE(3): the server's own certificate (selector 0) or its public
//!   key (selector 1) matches; names and dates are not checked (RFC 7672
//!   3.1.1: the record itself binds the key to the host).
//! - DANE-TA(2): a certificate of the presented chain matches; the server
//!   certificate must chain to it (webpki, with that certificate as the
//!   only trust anchor) and carry one of the reference names: the MX host
//!   name or the next-hop domain (RFC 7672 3.2.2).
//! - PKIX-TA(0) and PKIX-EE(1) are unusable for SMTP (RFC 7672 3.1.3) and
//!   are dropped by [`Tlsa::usable`], as are unknown selectors and
//!   matching types.
//!
//! The handshake signature is checked as for any other connection.

use super::{TlsError, provider};
use rustls::client::WebPkiServerVerifier;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::WebPkiSupportedAlgorithms;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{ClientConfig, DigitallySignedStruct, RootCertStore, SignatureScheme};
use std::sync::Arc;

/// One TLSA record (RFC 6698 2.1): usage, selector, matching type, data.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Tlsa {
    pub(crate) usage: u8,
    pub(crate) selector: u8,
    pub(crate) matching: u8,
    pub(crate) data: Vec<u8>,
}

/// DANE-TA(2) and DANE-EE(3), the usages SMTP uses.
const DANE_TA: u8 = 2;
const DANE_EE: u8 = 3;

impl Tlsa {
    /// The record can be used for SMTP: DANE-TA or DANE-EE, selector 0 or
    /// 1, matching type 0, 1 or 2 (a digest of the right length).
    pub(crate) fn usable(&self) -> bool {
        let length_ok = match self.matching {
            0 => !self.data.is_empty(),
            1 => self.data.len() == 32,
            2 => self.data.len() == 64,
            _ => false,
        };
        matches!(self.usage, DANE_TA | DANE_EE) && self.selector <= 1 && length_ok
    }

    /// The record matches the certificate `der`.
    fn matches(&self, der: &[u8]) -> bool {
        let selected = match self.selector {
            0 => der,
            1 => match super::subject::public_key_info(der) {
                Some(spki) => spki,
                None => return false,
            },
            _ => return false,
        };
        match self.matching {
            0 => selected == self.data.as_slice(),
            1 => ring::digest::digest(&ring::digest::SHA256, selected).as_ref() == self.data.as_slice(),
            2 => ring::digest::digest(&ring::digest::SHA512, selected).as_ref() == self.data.as_slice(),
            _ => false,
        }
    }
}

impl std::fmt::Display for Tlsa {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} {} {} ", self.usage, self.selector, self.matching)?;
        self.data.iter().take(8).try_for_each(|b| write!(f, "{b:02x}"))?;
        if self.data.len() > 8 { f.write_str("...") } else { Ok(()) }
    }
}

/// A client configuration that accepts a server certificate only when one
/// of `records` (usable ones, at least one) matches it; `names` are the
/// reference identifiers for DANE-TA (MX host name, next-hop domain).
pub(crate) fn client_config(records: Vec<Tlsa>, names: Vec<String>) -> Result<Arc<ClientConfig>, TlsError> {
    let algorithms = provider().signature_verification_algorithms;
    let verifier = Arc::new(DaneVerifier { records, names, algorithms });
    let config = ClientConfig::builder_with_provider(provider())
        .with_protocol_versions(super::VERSIONS)
        .map_err(|e| TlsError::Config(e.to_string()))?
        .dangerous()
        .with_custom_certificate_verifier(verifier)
        .with_no_client_auth();
    Ok(Arc::new(config))
}

#[derive(Debug)]
struct DaneVerifier {
    records: Vec<Tlsa>,
    names: Vec<String>,
    algorithms: WebPkiSupportedAlgorithms,
}

impl DaneVerifier {
    /// DANE-TA: `anchor` (a certificate of the chain that a record
    /// matched) vouches for `end_entity` under one of the names.
    fn chains_to(
        &self,
        anchor: &CertificateDer<'_>,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
    ) -> Result<(), String> {
        let mut roots = RootCertStore::empty();
        roots.add(anchor.clone().into_owned()).map_err(|e| format!("trust anchor unreadable: {e}"))?;
        let webpki = WebPkiServerVerifier::builder_with_provider(Arc::new(roots), provider())
            .build()
            .map_err(|e| e.to_string())?;
        let mut last = String::from("no reference name");
        for name in &self.names {
            let Ok(name) = ServerName::try_from(name.clone()) else { continue };
            match webpki.verify_server_cert(end_entity, intermediates, &name, &[], now) {
                Ok(_) => return Ok(()),
                Err(e) => last = e.to_string(),
            }
        }
        Err(last)
    }
}

impl ServerCertVerifier for DaneVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        if self.records.iter().any(|r| r.usage == DANE_EE && r.matches(end_entity)) {
            return Ok(ServerCertVerified::assertion());
        }
        let mut why = String::from("no TLSA record matches the server certificate");
        for anchor in intermediates {
            if self.records.iter().any(|r| r.usage == DANE_TA && r.matches(anchor)) {
                match self.chains_to(anchor, end_entity, intermediates, now) {
                    Ok(()) => return Ok(ServerCertVerified::assertion()),
                    Err(e) => why = format!("DANE-TA trust anchor matched, but: {e}"),
                }
            }
        }
        Err(rustls::Error::General(why))
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &self.algorithms)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.algorithms.supported_schemes()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(usage: u8, selector: u8, matching: u8, data: Vec<u8>) -> Tlsa {
        Tlsa { usage, selector, matching, data }
    }

    #[test]
    fn usable_records() {
        let sha256 = vec![0; 32];
        assert!(record(3, 1, 1, sha256.clone()).usable());
        assert!(record(2, 0, 2, vec![0; 64]).usable());
        assert!(record(3, 0, 0, vec![1, 2, 3]).usable());
        assert!(!record(0, 1, 1, sha256.clone()).usable(), "PKIX-TA");
        assert!(!record(1, 1, 1, sha256.clone()).usable(), "PKIX-EE");
        assert!(!record(3, 2, 1, sha256.clone()).usable(), "selector 2");
        assert!(!record(3, 1, 3, sha256.clone()).usable(), "matching 3");
        assert!(!record(3, 1, 1, vec![0; 31]).usable(), "short digest");
    }

    #[test]
    fn matching_by_certificate_and_key() {
        let key = rcgen::KeyPair::generate().unwrap();
        let cert = rcgen::CertificateParams::new(vec!["mx.example.test".into()]).unwrap().self_signed(&key).unwrap();
        let der = cert.der().to_vec();
        let spki = rcgen::PublicKeyData::subject_public_key_info(&key);
        assert_eq!(super::super::subject::public_key_info(&der), Some(spki.as_slice()));
        let sha256 = |b: &[u8]| ring::digest::digest(&ring::digest::SHA256, b).as_ref().to_vec();
        let sha512 = |b: &[u8]| ring::digest::digest(&ring::digest::SHA512, b).as_ref().to_vec();
        assert!(record(3, 1, 1, sha256(&spki)).matches(&der));
        assert!(record(3, 0, 1, sha256(&der)).matches(&der));
        assert!(record(3, 1, 2, sha512(&spki)).matches(&der));
        assert!(record(3, 0, 0, der.clone()).matches(&der));
        assert!(!record(3, 1, 1, sha256(&der)).matches(&der));
        assert!(!record(3, 0, 1, sha256(&spki)).matches(&der));
        assert!(!record(3, 1, 1, sha256(&spki)).matches(b"not a certificate"));
    }
}
