//! TLS: building rustls configurations for both sides, loading certificates
//! and keys (errors name the file), and describing a connection for logs.
//!
//! One crypto provider everywhere (ring), TLS 1.2 and 1.3 only. The server
//! side serves `tls.cert`/`tls.key`; the client side verifies against
//! `relay.tls_ca` or the system roots (`verify`), or takes any certificate
//! (`encrypt`, `may`: RFC 7435 opportunistic security, where an encrypted
//! but unauthenticated session still beats clear text). `subject` reads the
//! common names of a certificate, for names given there and not as SANs.
//! `matching` verifies a next hop against a list of names (`secure`, and
//! `verify` with the policy table's `match=`).

pub(crate) mod dane;
pub(crate) mod matching;
pub mod subject;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::{ClientConfig, DigitallySignedStruct, ProtocolVersion, RootCertStore, ServerConfig, SignatureScheme};
use std::path::{Path, PathBuf};
use std::sync::Arc;

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
pub(crate) fn load_key(path: &Path) -> Result<PrivateKeyDer<'static>, TlsError> {
    let file_err = |what: String| TlsError::File { path: path.to_path_buf(), what };
    let pem = std::fs::read(path).map_err(|e| file_err(format!("cannot read: {e}")))?;
    PrivateKeyDer::from_pem_slice(&pem).map_err(|e| file_err(format!("no usable private key: {e}")))
}

/// The server configuration for a certificate chain and key.
#[cfg(test)]
pub(crate) fn server_config(cert: &Path, key: &Path) -> Result<Arc<ServerConfig>, TlsError> {
    server_config_requesting(cert, key, false)
}

/// Like `server_config`; with `request_client_cert` the server asks for a
/// client certificate (RFC 8446 4.3.2) but does not require one, and takes
/// any: `ClientTrust` decides after the handshake what it is worth.
pub(crate) fn server_config_requesting(
    cert: &Path,
    key: &Path,
    request_client_cert: bool,
) -> Result<Arc<ServerConfig>, TlsError> {
    let certs = load_certs(cert)?;
    let key_der = load_key(key)?;
    let builder = ServerConfig::builder_with_provider(provider())
        .with_protocol_versions(VERSIONS)
        .map_err(|e| TlsError::Config(e.to_string()))?;
    let builder = if request_client_cert {
        builder.with_client_cert_verifier(Arc::new(AnyClientCertificate(provider())))
    } else {
        builder.with_no_client_auth()
    };
    let config = builder.with_single_cert(certs, key_der).map_err(|e| TlsError::File {
        path: key.to_path_buf(),
        what: format!("does not fit the certificate in {}: {e}", cert.display()),
    })?;
    Ok(Arc::new(config))
}

/// The server configuration from `[tls]`, or `None` when no certificate
/// is configured; asking for client certificates when `request_client_cert`.
pub(crate) fn server_requesting(
    tls: &crate::config::Tls,
    request_client_cert: bool,
) -> Result<Option<Arc<ServerConfig>>, TlsError> {
    match (&tls.cert, &tls.key) {
        (Some(cert), Some(key)) => server_config_requesting(cert, key, request_client_cert).map(Some),
        _ => Ok(None),
    }
}

/// Which client certificates the server trusts: those issued by the CAs in
/// `tls.client_ca`, and those whose SHA-256 fingerprint is listed in
/// `access.trusted_fingerprints`.
#[derive(Debug)]
pub(crate) struct ClientTrust {
    ca: Option<Arc<dyn rustls::server::danger::ClientCertVerifier>>,
    /// Lowercase hex, no separators.
    fingerprints: Vec<String>,
}

impl ClientTrust {
    /// `None` when neither a CA nor a fingerprint is configured (no client
    /// certificate is then asked for).
    pub(crate) fn from_config(ca: Option<&Path>, fingerprints: &[String]) -> Result<Option<ClientTrust>, TlsError> {
        if ca.is_none() && fingerprints.is_empty() {
            return Ok(None);
        }
        let ca = match ca {
            Some(path) => {
                let roots = Arc::new(roots(Some(path))?);
                let verifier =
                    rustls::server::WebPkiClientVerifier::builder_with_provider(roots, provider())
                        .build()
                        .map_err(|e| TlsError::File { path: path.into(), what: format!("bad client CA: {e}") })?;
                Some(verifier)
            }
            None => None,
        };
        Ok(Some(ClientTrust { ca, fingerprints: fingerprints.iter().map(|f| normalize_fingerprint(f)).collect() }))
    }

    /// Whether the chain a client presented (end entity first) is trusted.
    pub(crate) fn trusts(&self, chain: &[CertificateDer<'_>]) -> bool {
        let Some((end_entity, intermediates)) = chain.split_first() else {
            return false;
        };
        if self.fingerprints.contains(&fingerprint(end_entity)) {
            return true;
        }
        self.ca.as_ref().is_some_and(|ca| ca.verify_client_cert(end_entity, intermediates, UnixTime::now()).is_ok())
    }
}

/// The SHA-256 fingerprint of a certificate, lowercase hex.
pub fn fingerprint(cert: &CertificateDer<'_>) -> String {
    let digest = ring::digest::digest(&ring::digest::SHA256, cert.as_ref());
    digest.as_ref().iter().map(|b| format!("{b:02x}")).collect()
}

/// `AB:CD:...` or `abcd...` to `abcd...`.
fn normalize_fingerprint(text: &str) -> String {
    text.chars().filter(|c| c.is_ascii_hexdigit()).map(|c| c.to_ascii_lowercase()).collect()
}

/// Whether `cert` carries the DNS name `name`: in its subject alternative
/// names, or as its subject's common name.
pub(crate) fn cert_has_name(cert: &CertificateDer<'_>, name: &str) -> bool {
    let Ok(server_name) = ServerName::try_from(name.to_string()) else {
        return false;
    };
    let in_san =
        webpki::EndEntityCert::try_from(cert).is_ok_and(|ee| ee.verify_is_valid_for_subject_name(&server_name).is_ok());
    in_san || subject::common_names(cert.as_ref()).iter().any(|cn| cn.trim_end_matches('.').eq_ignore_ascii_case(name))
}

/// The client configuration: verifying against `ca` (a PEM file) or the
/// system roots when `verify`, accepting any certificate otherwise.
#[cfg(test)]
pub(crate) fn client_config(verify: bool, ca: Option<&Path>) -> Result<Arc<ClientConfig>, TlsError> {
    client_config_with_cert(verify, ca, None)
}

/// `client_config`, presenting the certificate chain and key in
/// `client_cert` (PEM files) when the server asks for one.
pub(crate) fn client_config_with_cert(
    verify: bool,
    ca: Option<&Path>,
    client_cert: Option<(&Path, &Path)>,
) -> Result<Arc<ClientConfig>, TlsError> {
    let builder = ClientConfig::builder_with_provider(provider())
        .with_protocol_versions(VERSIONS)
        .map_err(|e| TlsError::Config(e.to_string()))?;
    let builder = if verify {
        builder.with_root_certificates(roots(ca)?)
    } else {
        builder.dangerous().with_custom_certificate_verifier(Arc::new(AnyCertificate(provider())))
    };
    let config = match client_cert {
        None => builder.with_no_client_auth(),
        Some((cert, key)) => {
            builder.with_client_auth_cert(load_certs(cert)?, load_key(key)?).map_err(|e| TlsError::File {
                path: key.to_path_buf(),
                what: format!("does not fit the certificate in {}: {e}", cert.display()),
            })?
        }
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
pub(crate) fn server_name(host: &str) -> Result<ServerName<'static>, TlsError> {
    let host = host.trim_start_matches('[').trim_end_matches(']').trim_end_matches('.');
    ServerName::try_from(host.to_string())
        .map_err(|_| TlsError::Config(format!("`{host}` is not a valid TLS server name")))
}

/// `TLSv1.3 with cipher TLS13_AES_256_GCM_SHA384`, for logs.
pub(crate) fn describe(conn: &rustls::CommonState) -> String {
    let version = match conn.protocol_version() {
        Some(ProtocolVersion::TLSv1_3) => "TLSv1.3".to_string(),
        Some(ProtocolVersion::TLSv1_2) => "TLSv1.2".to_string(),
        Some(other) => format!("{other:?}"),
        None => "TLS".to_string(),
    };
    match conn.negotiated_cipher_suite() {
        Some(suite) => {
            let (name, bits) = openssl_cipher(suite.suite());
            format!("{version} with cipher {name} ({bits}/{bits} bits)")
        }
        None => version,
    }
}

/// A cipher suite by the name OpenSSL gives it, which is what Postfix logs
/// and what log tools (the Postfix exporter's TLS counters) expect, with the
/// symmetric key's bits. A suite rustls adds later keeps its IANA name.
fn openssl_cipher(suite: rustls::CipherSuite) -> (String, u32) {
    use rustls::CipherSuite as S;
    let (name, bits) = match suite {
        S::TLS13_AES_256_GCM_SHA384 => ("TLS_AES_256_GCM_SHA384", 256),
        S::TLS13_AES_128_GCM_SHA256 => ("TLS_AES_128_GCM_SHA256", 128),
        S::TLS13_CHACHA20_POLY1305_SHA256 => ("TLS_CHACHA20_POLY1305_SHA256", 256),
        S::TLS_ECDHE_RSA_WITH_AES_256_GCM_SHA384 => ("ECDHE-RSA-AES256-GCM-SHA384", 256),
        S::TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256 => ("ECDHE-RSA-AES128-GCM-SHA256", 128),
        S::TLS_ECDHE_RSA_WITH_CHACHA20_POLY1305_SHA256 => ("ECDHE-RSA-CHACHA20-POLY1305", 256),
        S::TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384 => ("ECDHE-ECDSA-AES256-GCM-SHA384", 256),
        S::TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256 => ("ECDHE-ECDSA-AES128-GCM-SHA256", 128),
        S::TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305_SHA256 => ("ECDHE-ECDSA-CHACHA20-POLY1305", 256),
        other => {
            let name = format!("{other:?}");
            let bits = if name.contains("128") { 128 } else { 256 };
            return (name, bits);
        }
    };
    (name.to_string(), bits)
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

/// Asks for a client certificate, accepts any (or none) in the handshake
/// and checks only the handshake signature: an untrusted certificate leaves
/// an ordinary anonymous session, not a failed handshake.
#[derive(Debug)]
struct AnyClientCertificate(Arc<CryptoProvider>);

impl rustls::server::danger::ClientCertVerifier for AnyClientCertificate {
    fn client_auth_mandatory(&self) -> bool {
        false
    }

    fn root_hint_subjects(&self) -> &[rustls::DistinguishedName] {
        &[]
    }

    fn verify_client_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _now: UnixTime,
    ) -> Result<rustls::server::danger::ClientCertVerified, rustls::Error> {
        Ok(rustls::server::danger::ClientCertVerified::assertion())
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
    fn certificate_names_and_fingerprints() {
        let key = rcgen::KeyPair::generate().unwrap();
        let cert = rcgen::CertificateParams::new(vec!["vm12.example.org".into()]).unwrap().self_signed(&key).unwrap();
        let der = cert.der();
        assert!(cert_has_name(der, "vm12.example.org"));
        assert!(cert_has_name(der, "VM12.example.org"));
        assert!(!cert_has_name(der, "vm13.example.org"));
        assert!(!cert_has_name(der, "not a name"));
        // A common name alone counts too.
        let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        params.distinguished_name.push(rcgen::DnType::CommonName, "cn-only.example.org");
        let cn_only = params.self_signed(&key).unwrap();
        assert!(cert_has_name(cn_only.der(), "cn-only.example.org"));
        assert!(!cert_has_name(cn_only.der(), "vm12.example.org"));
        let fp = fingerprint(der);
        assert_eq!(fp.len(), 64);
        let colons: Vec<String> = fp.as_bytes().chunks(2).map(|c| String::from_utf8_lossy(c).to_uppercase()).collect();
        let trust = ClientTrust::from_config(None, &[colons.join(":")]).unwrap().unwrap();
        assert!(trust.trusts(std::slice::from_ref(der)));
        let other = rcgen::KeyPair::generate().unwrap();
        let other = rcgen::CertificateParams::new(vec!["x.test".into()]).unwrap().self_signed(&other).unwrap();
        assert!(!trust.trusts(std::slice::from_ref(other.der())));
        assert!(!trust.trusts(&[]));
        assert!(ClientTrust::from_config(None, &[]).unwrap().is_none());
    }

    #[test]
    fn server_names() {
        assert!(matches!(server_name("mail.example.org").unwrap(), ServerName::DnsName(_)));
        assert!(matches!(server_name("127.0.0.1").unwrap(), ServerName::IpAddress(_)));
        assert!(matches!(server_name("[::1]").unwrap(), ServerName::IpAddress(_)));
        assert!(server_name("bad name").is_err());
    }
}
