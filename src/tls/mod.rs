//! TLS: building rustls configurations for both sides, loading certificates
//! and keys (errors name the file), and describing a connection for logs.
//!
//! One crypto provider everywhere (ring), TLS 1.2 and 1.3 only. The server
//! side serves `tls.cert`/`tls.key`; the client side verifies against
//! `relay.tls_ca` or the system roots (`verify`), or takes any certificate
//! (`encrypt`, `may`: RFC 7435 opportunistic security, where an encrypted
//! but unauthenticated session still beats clear text).

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::{ClientConfig, DigitallySignedStruct, ProtocolVersion, RootCertStore, ServerConfig, SignatureScheme};
use std::path::{Path, PathBuf};
use std::sync::Arc;

pub use tokio_rustls::{TlsAcceptor, TlsConnector};

/// A certificate, key or CA file that could not be used.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("{}: {what}", path.display())]
    File { path: PathBuf, what: String },
    #[error("{0}")]
    Config(String),
}

fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

const VERSIONS: &[&rustls::SupportedProtocolVersion] = &[&rustls::version::TLS13, &rustls::version::TLS12];

/// Every certificate in a PEM file (at least one).
pub fn load_certs(path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let file_err = |what: String| TlsError::File { path: path.to_path_buf(), what };
    // Read first, so a missing file says so plainly.
    let pem = std::fs::read(path).map_err(|e| file_err(format!("cannot read: {e}")))?;
    let certs = CertificateDer::pem_slice_iter(&pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| file_err(format!("bad PEM: {e}")))?;
    if certs.is_empty() {
        return Err(file_err("no certificate (PEM \"BEGIN CERTIFICATE\") found".into()));
    }
    Ok(certs)
}

/// The private key in a PEM file (PKCS#8, PKCS#1 or SEC1).
pub fn load_key(path: &Path) -> Result<PrivateKeyDer<'static>, TlsError> {
    let file_err = |what: String| TlsError::File { path: path.to_path_buf(), what };
    let pem = std::fs::read(path).map_err(|e| file_err(format!("cannot read: {e}")))?;
    PrivateKeyDer::from_pem_slice(&pem).map_err(|e| file_err(format!("no usable private key: {e}")))
}

/// The server configuration for a certificate chain and key.
pub fn server_config(cert: &Path, key: &Path) -> Result<Arc<ServerConfig>, TlsError> {
    let certs = load_certs(cert)?;
    let key_der = load_key(key)?;
    let config = ServerConfig::builder_with_provider(provider())
        .with_protocol_versions(VERSIONS)
        .map_err(|e| TlsError::Config(e.to_string()))?
        .with_no_client_auth()
        .with_single_cert(certs, key_der)
        .map_err(|e| TlsError::File {
            path: key.to_path_buf(),
            what: format!("does not fit the certificate in {}: {e}", cert.display()),
        })?;
    Ok(Arc::new(config))
}

/// The server configuration from `[tls]`, or `None` when no certificate
/// is configured.
pub fn server_from_config(tls: &crate::config::Tls) -> Result<Option<Arc<ServerConfig>>, TlsError> {
    match (&tls.cert, &tls.key) {
        (Some(cert), Some(key)) => server_config(cert, key).map(Some),
        _ => Ok(None),
    }
}

/// How the client checks the server's certificate.
#[derive(Clone, Debug)]
pub enum Verify {
    /// Any certificate (`encrypt`, `may`).
    Nothing,
    /// Against these roots, with the host name (`verify`).
    Roots(Arc<RootCertStore>),
}

/// The client configuration: verifying against `ca` (a PEM file) or the
/// system roots when `verify`, accepting any certificate otherwise.
pub fn client_config(verify: bool, ca: Option<&Path>) -> Result<Arc<ClientConfig>, TlsError> {
    let builder = ClientConfig::builder_with_provider(provider())
        .with_protocol_versions(VERSIONS)
        .map_err(|e| TlsError::Config(e.to_string()))?;
    let config = if verify {
        builder.with_root_certificates(roots(ca)?).with_no_client_auth()
    } else {
        builder.dangerous().with_custom_certificate_verifier(Arc::new(AnyCertificate(provider()))).with_no_client_auth()
    };
    Ok(Arc::new(config))
}

/// The trust anchors: a CA file, or the system's store.
fn roots(ca: Option<&Path>) -> Result<RootCertStore, TlsError> {
    let mut roots = RootCertStore::empty();
    match ca {
        Some(path) => {
            for cert in load_certs(path)? {
                roots.add(cert).map_err(|e| TlsError::File { path: path.into(), what: format!("bad CA: {e}") })?;
            }
        }
        None => {
            let found = rustls_native_certs::load_native_certs();
            let (added, _) = roots.add_parsable_certificates(found.certs);
            if added == 0 {
                return Err(TlsError::Config("no system CA certificates found (set relay.tls_ca)".into()));
            }
        }
    }
    Ok(roots)
}

/// The name the client verifies and sends as SNI: a DNS name, or an IP
/// address literal (which is checked against the certificate's IP entries
/// and not sent as SNI).
pub fn server_name(host: &str) -> Result<ServerName<'static>, TlsError> {
    let host = host.trim_start_matches('[').trim_end_matches(']').trim_end_matches('.');
    ServerName::try_from(host.to_string())
        .map_err(|_| TlsError::Config(format!("`{host}` is not a valid TLS server name")))
}

/// `TLSv1.3 with cipher TLS13_AES_256_GCM_SHA384`, for logs.
pub fn describe(conn: &rustls::CommonState) -> String {
    let version = match conn.protocol_version() {
        Some(ProtocolVersion::TLSv1_3) => "TLSv1.3".to_string(),
        Some(ProtocolVersion::TLSv1_2) => "TLSv1.2".to_string(),
        Some(other) => format!("{other:?}"),
        None => "TLS".to_string(),
    };
    match conn.negotiated_cipher_suite() {
        Some(suite) => format!("{version} with cipher {:?}", suite.suite()),
        None => version,
    }
}

/// Accepts any certificate but still checks the handshake signatures, so
/// the session is at least encrypted to whoever holds the presented key.
#[derive(Debug)]
struct AnyCertificate(Arc<CryptoProvider>);

impl ServerCertVerifier for AnyCertificate {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &self.0.signature_verification_algorithms)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.0.signature_verification_algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn errors_name_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let missing = dir.path().join("missing.pem");
        let err = load_certs(&missing).unwrap_err().to_string();
        assert!(err.starts_with(&missing.display().to_string()) && err.contains("cannot read"), "{err}");
        let empty = dir.path().join("empty.pem");
        std::fs::write(&empty, "not pem\n").unwrap();
        let err = load_certs(&empty).unwrap_err().to_string();
        assert!(err.contains("empty.pem: no certificate"), "{err}");
        let err = load_key(&empty).unwrap_err().to_string();
        assert!(err.contains("empty.pem: no usable private key"), "{err}");
    }

    #[test]
    fn certificate_and_key_load() {
        let dir = tempfile::tempdir().unwrap();
        let key = rcgen::KeyPair::generate().unwrap();
        let cert = rcgen::CertificateParams::new(vec!["mx.test".into()]).unwrap().self_signed(&key).unwrap();
        let (cert_path, key_path) = (dir.path().join("cert.pem"), dir.path().join("key.pem"));
        std::fs::write(&cert_path, cert.pem()).unwrap();
        std::fs::write(&key_path, key.serialize_pem()).unwrap();
        server_config(&cert_path, &key_path).unwrap();
        client_config(true, Some(&cert_path)).unwrap();
        client_config(false, None).unwrap();
        // A key that is not the certificate's names the key file.
        let other = rcgen::KeyPair::generate().unwrap();
        std::fs::write(&key_path, other.serialize_pem()).unwrap();
        let err = server_config(&cert_path, &key_path).unwrap_err().to_string();
        assert!(err.contains("key.pem: does not fit the certificate"), "{err}");
    }

    #[test]
    fn server_names() {
        assert!(matches!(server_name("mail.example.org").unwrap(), ServerName::DnsName(_)));
        assert!(matches!(server_name("127.0.0.1").unwrap(), ServerName::IpAddress(_)));
        assert!(matches!(server_name("[::1]").unwrap(), ServerName::IpAddress(_)));
        assert!(server_name("bad name").is_err());
    }
}
