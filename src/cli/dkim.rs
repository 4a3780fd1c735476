//! `posthorn dkim keygen DOMAIN SELECTOR`: writes a signing key and prints
//! the DNS TXT record to publish for it.
//!
//! Ed25519 keys are made here (ring). ring cannot make RSA keys, so for RSA
//! this runs `openssl genpkey` (an argument vector, no shell) and reads the
//! public key back with `openssl pkey`; the same by hand:
//! `openssl genpkey -algorithm RSA -pkeyopt rsa_keygen_bits:2048 -out key.pem`
//! and `openssl pkey -in key.pem -pubout -outform DER | base64 -w0` for `p=`.

use super::exit;
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;

#[derive(clap::Subcommand)]
pub(crate) enum Verb {
    /// Write a new key for DOMAIN and SELECTOR, print the DNS TXT record
    Keygen {
        domain: String,
        selector: String,
        #[arg(long, value_enum, default_value_t = Algorithm::Ed25519)]
        algorithm: Algorithm,
        /// Where to write the private key (default: SELECTOR.DOMAIN.pem here)
        #[arg(long)]
        out: Option<PathBuf>,
        /// RSA key size
        #[arg(long, default_value_t = 2048)]
        bits: u32,
    },
}

#[derive(Clone, Copy, clap::ValueEnum)]
pub(crate) enum Algorithm {
    Ed25519,
    Rsa,
}

pub(crate) fn main(verb: Verb) -> u8 {
    let Verb::Keygen { domain, selector, algorithm, out, bits } = verb;
    let out = out.unwrap_or_else(|| PathBuf::from(format!("{selector}.{domain}.pem")));
    if out.exists() {
        eprintln!("posthorn: {} exists; not overwriting a key", out.display());
        return exit::CANTCREAT;
    }
    let made = match algorithm {
        Algorithm::Ed25519 => crate::deliver::dkim::generate_ed25519()
            .and_then(|(pem, public)| write_private(&out, pem.as_bytes()).map(|()| ("ed25519", public))),
        Algorithm::Rsa => rsa(&out, bits).map(|public| ("rsa", public)),
    };
    match made {
        Ok((k, public)) => {
            eprintln!("posthorn: private key written to {}", out.display());
            println!("{selector}._domainkey.{domain}. IN TXT {}", txt_value(&format!("v=DKIM1; k={k}; p={public}")));
            exit::OK
        }
        Err(e) => {
            eprintln!("posthorn: {e:#}");
            exit::CANTCREAT
        }
    }
}

/// Creates the key file readable by its owner only.
fn write_private(path: &Path, pem: &[u8]) -> anyhow::Result<()> {
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?;
    f.write_all(pem).and_then(|()| f.sync_all()).map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))
}

fn rsa(out: &Path, bits: u32) -> anyhow::Result<String> {
    let made = Command::new("openssl")
        .args(["genpkey", "-algorithm", "RSA", "-pkeyopt", &format!("rsa_keygen_bits:{bits}")])
        .output()
        .map_err(|e| anyhow::anyhow!("cannot run openssl (needed for RSA keys; or use --algorithm ed25519): {e}"))?;
    if !made.status.success() {
        anyhow::bail!("openssl genpkey failed: {}", String::from_utf8_lossy(&made.stderr).trim());
    }
    write_private(out, &made.stdout)?;
    let public = Command::new("openssl")
        .args(["pkey", "-pubout", "-outform", "DER", "-in"])
        .arg(out)
        .output()
        .map_err(|e| anyhow::anyhow!("cannot run openssl: {e}"))?;
    if !public.status.success() {
        anyhow::bail!("openssl pkey failed: {}", String::from_utf8_lossy(&public.stderr).trim());
    }
    Ok(data_encoding::BASE64.encode(&public.stdout))
}

/// A TXT value as zone files want it: quoted strings of at most 255 bytes.
fn txt_value(value: &str) -> String {
    let parts: Vec<String> =
        value.as_bytes().chunks(255).map(|c| format!("\"{}\"", String::from_utf8_lossy(c))).collect();
    if parts.len() == 1 { parts[0].clone() } else { format!("( {} )", parts.join(" ")) }
}

#[cfg(test)]
mod tests {
    #[test]
    fn long_txt_values_are_split() {
        assert_eq!(super::txt_value("v=DKIM1"), "\"v=DKIM1\"");
        let long = "x".repeat(300);
        assert_eq!(super::txt_value(&long), format!("( \"{}\" \"{}\" )", "x".repeat(255), "x".repeat(45)));
    }
}
