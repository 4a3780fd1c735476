//! Certificate names for `verify` and `secure` towards a next hop: the
//! chain is checked against the trust anchors as webpki does, and the
//! names against a list of patterns (Postfix's `match=`) instead of the
//! single name that was dialled.

use super::{TlsError, provider, roots};
use rustls::client::WebPkiServerVerifier;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{CertificateError, ClientConfig, DigitallySignedStruct, SignatureScheme};
use std::path::Path;
use std::sync::Arc;

/// One name a server certificate may carry.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub(crate) enum CertName {
    /// The host name that was dialled (an MX host's name as DNS gave it).
    Dialled,
    /// Exactly this DNS name.
    Exact(String),
    /// Any name below this domain (`.example.com`: `mx.example.com`, not
    /// `example.com` itself).
    Below(String),
}

impl std::fmt::Display for CertName {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            CertName::Dialled => f.write_str("the host name"),
            CertName::Exact(n) => f.write_str(n),
            CertName::Below(d) => write!(f, "*{d}"),
        }
    }
}

/// A client configuration that requires a certificate chaining to `ca`
/// (or the system roots) and carrying one of `names`; presenting
/// `client_cert` when asked.
pub(crate) fn client_config(
    ca: Option<&Path>,
    client_cert: Option<(&Path, &Path)>,
    names: Vec<CertName>,
) -> Result<Arc<ClientConfig>, TlsError> {
    let inner = WebPkiServerVerifier::builder_with_provider(Arc::new(roots(ca)?), provider())
        .build()
        .map_err(|e| TlsError::Config(e.to_string()))?;
    let verifier = Arc::new(Matching { inner, names });
    let builder = ClientConfig::builder_with_provider(provider())
        .with_protocol_versions(super::VERSIONS)
        .map_err(|e| TlsError::Config(e.to_string()))?
        .dangerous()
        .with_custom_certificate_verifier(verifier);
    let config =
        match client_cert {
            None => builder.with_no_client_auth(),
            Some((cert, key)) => builder
                .with_client_auth_cert(super::load_certs(cert)?, super::load_key(key)?)
                .map_err(|e| TlsError::File {
                    path: key.to_path_buf(),
                    what: format!("does not fit the certificate in {}: {e}", cert.display()),
                })?,
        };
    Ok(Arc::new(config))
}

/// webpki's verifier, asked once per candidate name.
#[derive(Debug)]
struct Matching {
    inner: Arc<WebPkiServerVerifier>,
    names: Vec<CertName>,
}

impl Matching {
    /// The names to ask webpki about: the patterns, with `Below` replaced
    /// by the certificate's own names under that domain (wildcards aside).
    fn candidates(&self, end_entity: &CertificateDer<'_>, dialled: &ServerName<'_>) -> Vec<ServerName<'static>> {
        let presented: Vec<String> = webpki::EndEntityCert::try_from(end_entity)
            .map(|ee| ee.valid_dns_names().map(str::to_ascii_lowercase).collect())
            .unwrap_or_default();
        let mut out = Vec::new();
        for name in &self.names {
            match name {
                CertName::Dialled => out.push(dialled.to_owned()),
                CertName::Exact(n) => out.extend(ServerName::try_from(n.clone()).ok()),
                CertName::Below(domain) => out.extend(
                    presented
                        .iter()
                        .filter(|p| !p.starts_with('*') && p.len() > domain.len() && p.ends_with(domain.as_str()))
                        .filter_map(|p| ServerName::try_from(p.clone()).ok()),
                ),
            }
        }
        out
    }
}

impl ServerCertVerifier for Matching {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        if self.names == [CertName::Dialled] {
            // Plain `verify`: webpki's own answer and wording.
            return self.inner.verify_server_cert(end_entity, intermediates, server_name, ocsp_response, now);
        }
        for name in self.candidates(end_entity, server_name) {
            match self.inner.verify_server_cert(end_entity, intermediates, &name, ocsp_response, now) {
                Ok(verified) => return Ok(verified),
                // Another candidate may match; any other fault (the chain,
                // the dates) is the certificate's whatever the name.
                Err(rustls::Error::InvalidCertificate(
                    CertificateError::NotValidForName | CertificateError::NotValidForNameContext { .. },
                )) => {}
                Err(e) => return Err(e),
            }
        }
        let wanted: Vec<String> = self.names.iter().map(|n| n.to_string()).collect();
        Err(rustls::Error::General(format!("certificate not valid for any of: {}", wanted.join(", "))))
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.inner.supported_verify_schemes()
    }
}
