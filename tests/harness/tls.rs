//! TLS for the end-to-end tests: a private CA made with rcgen, server
//! certificates it signs, and real TLS clients (Python's smtplib with an
//! `ssl` context trusting the CA, `openssl s_client -starttls smtp`).

use super::{COMMAND_TIMEOUT, new_tempdir, run_with_timeout};
use rcgen::{
    BasicConstraints, CertificateParams, CertifiedIssuer, DnType, ExtendedKeyUsagePurpose, IsCa, KeyPair,
    KeyUsagePurpose,
};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Command;

/// A test certificate authority whose files live in a temporary directory.
pub struct TestCa {
    dir: tempfile::TempDir,
    issuer: CertifiedIssuer<'static, KeyPair>,
}

/// A certificate and key issued by a `TestCa`, as PEM files.
pub struct Issued {
    pub cert: PathBuf,
    pub key: PathBuf,
    /// The certificate (DER) and its subjectPublicKeyInfo (DER), for
    /// TLSA records.
    pub der: Vec<u8>,
    pub spki: Vec<u8>,
}

impl Issued {
    /// The `[tls]` section serving this certificate.
    pub fn tls_section(&self) -> String {
        format!(
            "\n[tls]\ncert = {}\nkey = {}\n",
            super::toml_str(&self.cert.display().to_string()),
            super::toml_str(&self.key.display().to_string())
        )
    }
    /// The `relay.tls_client_cert`/`relay.tls_client_key` lines presenting
    /// this certificate to a smarthost.
    pub fn relay_lines(&self) -> [String; 2] {
        [
            format!("relay.tls_client_cert = {}", super::toml_str(&self.cert.display().to_string())),
            format!("relay.tls_client_key = {}", super::toml_str(&self.key.display().to_string())),
        ]
    }
}

impl TestCa {
    pub fn new(name: &str) -> TestCa {
        let dir = new_tempdir("posthorn-ca-");
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.distinguished_name.push(DnType::CommonName, name);
        params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        let issuer = CertifiedIssuer::self_signed(params, KeyPair::generate().unwrap()).unwrap();
        std::fs::write(dir.path().join("ca.pem"), issuer.pem()).unwrap();
        TestCa { dir, issuer }
    }

    /// The CA certificate (PEM), for `relay.tls_ca` and clients.
    pub fn ca_path(&self) -> PathBuf {
        self.dir.path().join("ca.pem")
    }

    /// A server certificate for `names` (DNS names or IP addresses),
    /// written as `<file>.pem` and `<file>.key`.
    pub fn issue(&self, file: &str, names: &[&str]) -> Issued {
        let mut params = CertificateParams::new(names.iter().map(|n| n.to_string()).collect::<Vec<_>>()).unwrap();
        params.distinguished_name.push(DnType::CommonName, names.first().copied().unwrap_or("server"));
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth, ExtendedKeyUsagePurpose::ClientAuth];
        let key = KeyPair::generate().unwrap();
        let cert = params.signed_by(&key, &self.issuer).unwrap();
        let issued = Issued {
            cert: self.dir.path().join(format!("{file}.pem")),
            key: self.dir.path().join(format!("{file}.key")),
            der: cert.der().to_vec(),
            spki: rcgen::PublicKeyData::subject_public_key_info(&key),
        };
        std::fs::write(&issued.cert, cert.pem()).unwrap();
        std::fs::write(&issued.key, key.serialize_pem()).unwrap();
        issued
    }

    /// The CA certificate (DER).
    pub fn ca_der(&self) -> Vec<u8> {
        self.issuer.der().to_vec()
    }

    /// The CA certificate (PEM), to append to a server's chain.
    pub fn ca_pem(&self) -> String {
        self.issuer.pem()
    }

    pub fn dir(&self) -> &Path {
        self.dir.path()
    }
}

const SMTPLIB_TLS_SCRIPT: &str = r#"
import base64, json, smtplib, ssl, sys
job = json.load(sys.stdin)
out = []
def note(step, reply):
    code, text = reply
    out.append({"step": step, "code": code, "text": text.decode("utf-8", "replace") if isinstance(text, bytes) else str(text)})
try:
    if job.get("implicit"):
        ctx = ssl.create_default_context(cafile=job["ca"])
        ctx.check_hostname = False
        s = smtplib.SMTP_SSL(job["host"], job["port"], timeout=30, context=ctx)
        s.ehlo("client.test")
        out.append({"step": "ehlo", "code": 250, "text": " ".join(sorted(s.esmtp_features)) + " " + s.sock.version() + " " + s.sock.cipher()[0]})
    else:
        s = smtplib.SMTP(job["host"], job["port"], timeout=30)
        s.ehlo("client.test")
        out.append({"step": "ehlo", "code": 250, "text": " ".join(sorted(s.esmtp_features))})
    for step in job["steps"]:
        kind = step[0]
        if kind == "starttls":
            ctx = ssl.create_default_context(cafile=job["ca"])
            ctx.check_hostname = False
            note("starttls", s.starttls(context=ctx))
            s.ehlo("client.test")
            out.append({"step": "ehlo", "code": 250, "text": " ".join(sorted(s.esmtp_features)) + " " + s.sock.version() + " " + s.sock.cipher()[0]})
        elif kind == "cmd":
            note(step[1], s.docmd(step[1]))
        elif kind == "login":
            try:
                note("login", s.login(step[1], step[2]))
            except smtplib.SMTPResponseException as e:
                out.append({"step": "login", "code": e.smtp_code, "text": e.smtp_error.decode()})
        elif kind == "plain":
            msg = base64.b64encode(("\0%s\0%s" % (step[1], step[2])).encode()).decode()
            note("auth", s.docmd("AUTH PLAIN " + msg))
        elif kind == "send":
            try:
                s.sendmail(step[1], step[2], step[3].replace("\n", "\r\n").encode())
                out.append({"step": "send", "code": 250, "text": "sent"})
            except smtplib.SMTPRecipientsRefused as e:
                code, text = list(e.recipients.values())[0]
                out.append({"step": "send", "code": code, "text": text.decode()})
            except smtplib.SMTPResponseException as e:
                out.append({"step": "send", "code": e.smtp_code, "text": e.smtp_error.decode()})
    s.quit()
except Exception as e:
    out.append({"step": "error", "code": 0, "text": "%s: %s" % (type(e).__name__, e)})
print(json.dumps(out))
"#;

/// One step of a scripted smtplib session.
pub enum TlsStep<'a> {
    /// STARTTLS trusting the CA, then EHLO again (the reply's text lists
    /// the extensions, the TLS version and the cipher).
    StartTls,
    /// A raw command line.
    Cmd(&'a str),
    /// `AUTH PLAIN` with an initial response.
    Plain(&'a str, &'a str),
    /// smtplib's `login()`: the mechanism it picks from the EHLO list.
    Login(&'a str, &'a str),
    /// A whole transaction.
    Send(&'a str, &'a [&'a str], &'a str),
}

/// Runs `steps` with Python's smtplib against `addr`, trusting `ca`; returns
/// (step, code, text) per step, starting with the first EHLO (its text is
/// the extension names). An exception ends the list with step `error`.
pub fn smtplib_steps(addr: SocketAddr, ca: &Path, steps: &[TlsStep<'_>]) -> Vec<(String, u16, String)> {
    smtplib_run(addr, ca, false, steps)
}

/// Like `smtplib_steps` over implicit TLS (`SMTP_SSL`, RFC 8314); the first
/// EHLO's text ends with the TLS version and cipher.
pub fn smtps_steps(addr: SocketAddr, ca: &Path, steps: &[TlsStep<'_>]) -> Vec<(String, u16, String)> {
    smtplib_run(addr, ca, true, steps)
}

fn smtplib_run(addr: SocketAddr, ca: &Path, implicit: bool, steps: &[TlsStep<'_>]) -> Vec<(String, u16, String)> {
    let steps: Vec<serde_json::Value> = steps
        .iter()
        .map(|s| match s {
            TlsStep::StartTls => serde_json::json!(["starttls"]),
            TlsStep::Cmd(c) => serde_json::json!(["cmd", c]),
            TlsStep::Plain(u, p) => serde_json::json!(["plain", u, p]),
            TlsStep::Login(u, p) => serde_json::json!(["login", u, p]),
            TlsStep::Send(f, t, b) => serde_json::json!(["send", f, t, b]),
        })
        .collect();
    let job = serde_json::json!({
        "host": addr.ip().to_string(), "port": addr.port(), "ca": ca.display().to_string(), "steps": steps,
        "implicit": implicit,
    });
    let mut cmd = Command::new("python3");
    cmd.arg("-c").arg(SMTPLIB_TLS_SCRIPT);
    let out = run_with_timeout(cmd, job.to_string().as_bytes(), COMMAND_TIMEOUT);
    let parsed: Vec<serde_json::Value> = serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("smtplib output: {e}: {}", String::from_utf8_lossy(&out.stderr)));
    parsed
        .iter()
        .map(|v| {
            (
                v["step"].as_str().unwrap_or("").to_string(),
                v["code"].as_u64().unwrap_or(0) as u16,
                v["text"].as_str().unwrap_or("").to_string(),
            )
        })
        .collect()
}

/// Whether `openssl` is installed (the tests that need it skip otherwise).
pub fn have_openssl() -> bool {
    Command::new("openssl").arg("version").output().is_ok_and(|o| o.status.success())
}

/// `openssl s_client -starttls smtp` against `addr`, verifying against
/// `ca`, sending `input` once TLS is up; returns stdout and stderr.
pub fn openssl_starttls(addr: SocketAddr, ca: &Path, input: &str) -> (String, String) {
    let mut cmd = Command::new("openssl");
    cmd.args(["s_client", "-starttls", "smtp", "-crlf", "-quiet", "-verify_return_error"])
        .arg("-connect")
        .arg(addr.to_string())
        .arg("-CAfile")
        .arg(ca);
    let out = run_with_timeout(cmd, input.as_bytes(), COMMAND_TIMEOUT);
    (String::from_utf8_lossy(&out.stdout).into_owned(), String::from_utf8_lossy(&out.stderr).into_owned())
}
