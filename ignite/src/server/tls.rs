//! The install API over HTTPS (`[install] tls`): the server's certificate authority and the
//! certificate it serves with.
//!
//! The authority (an ECDSA P-256 key and a self-signed CA certificate, valid 1975-4096 so that
//! an agent's unset clock does not matter) is made at first start in the state directory:
//! `tls-ca.key` (0600) and `tls-ca.der`. Its pin (SHA-256 of the DER, see
//! `ignite_recovery::tls`) goes on every agent's kernel command line as `ignite.tls=`. At each
//! start the server signs a fresh certificate for the addresses it serves on, so a changed
//! address needs no step from the operator, and sends it with the authority's certificate.

use std::io::Write;
use std::net::{IpAddr, Ipv4Addr};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::{bail, Context, Result};
use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose, SanType,
};
use tokio_rustls::rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use tokio_rustls::rustls::ServerConfig;
use tokio_rustls::TlsAcceptor;

pub struct InstallTls {
    pub acceptor: TlsAcceptor,
    /// The authority's certificate (served at `ignite_recovery::tls::CA_PATH`).
    pub ca_der: Vec<u8>,
    pub ca_path: PathBuf,
    /// What agents pin: `ignite_recovery::tls::pin` of `ca_der`.
    pub pin: String,
}

fn paths(state_dir: &Path) -> (PathBuf, PathBuf) {
    (state_dir.join("tls-ca.key"), state_dir.join("tls-ca.der"))
}

/// The authority's certificate parameters: the same at every start, so that the server
/// certificates signed later name the issuer the stored certificate has.
fn ca_params() -> CertificateParams {
    let mut p = CertificateParams::default();
    p.distinguished_name
        .push(DnType::CommonName, "Ignite install API authority");
    p.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    p.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    p
}

/// The authority in `state_dir`, made when there is none; its key and certificate.
fn load_or_create_ca(state_dir: &Path) -> Result<(KeyPair, Vec<u8>)> {
    let (key_path, cert_path) = paths(state_dir);
    match (key_path.exists(), cert_path.exists()) {
        (true, true) => {
            let pem = std::fs::read_to_string(&key_path)
                .with_context(|| format!("TLS authority key {}", key_path.display()))?;
            let key = KeyPair::from_pem(&pem)
                .with_context(|| format!("TLS authority key {}", key_path.display()))?;
            let der = std::fs::read(&cert_path)
                .with_context(|| format!("TLS authority certificate {}", cert_path.display()))?;
            Ok((key, der))
        }
        (false, false) => {
            let key = KeyPair::generate().context("making the TLS authority key")?;
            let cert = ca_params()
                .self_signed(&key)
                .context("making the TLS authority certificate")?;
            write_new(&key_path, key.serialize_pem().as_bytes(), 0o600)?;
            write_new(&cert_path, cert.der(), 0o644)?;
            tracing::info!(
                "made the install API's TLS authority {} (agents pin its SHA-256)",
                cert_path.display()
            );
            Ok((key, cert.der().to_vec()))
        }
        _ => bail!(
            "TLS authority: one of {} and {} is missing; delete the other to make a new \
             authority (clients booted with the old pin must then boot again)",
            key_path.display(),
            cert_path.display()
        ),
    }
}

fn write_new(path: &Path, data: &[u8], mode: u32) -> Result<()> {
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode)
        .open(path)
        .with_context(|| format!("cannot create {}", path.display()))?;
    f.write_all(data)
        .and_then(|_| f.sync_all())
        .with_context(|| format!("cannot write {}", path.display()))
}

/// The authority in `state_dir` (made at first start) and a server certificate for
/// `addresses`, signed by it.
pub fn load_or_create(state_dir: &Path, addresses: &[Ipv4Addr]) -> Result<InstallTls> {
    let (ca_key, ca_der) = load_or_create_ca(state_dir)?;
    let issuer = Issuer::new(ca_params(), &ca_key);
    let key = KeyPair::generate().context("making the TLS server key")?;
    let mut p = CertificateParams::default();
    p.distinguished_name
        .push(DnType::CommonName, "Ignite install API");
    p.subject_alt_names = addresses
        .iter()
        .map(|a| SanType::IpAddress(IpAddr::V4(*a)))
        .collect();
    p.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
    p.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    let cert = p
        .signed_by(&key, &issuer)
        .context("signing the TLS server certificate")?;
    let chain = vec![cert.der().clone(), CertificateDer::from(ca_der.clone())];
    let private = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.serialize_der()));
    let config = ServerConfig::builder_with_provider(ignite_recovery::tls::crypto())
        .with_safe_default_protocol_versions()
        .context("TLS protocol versions")?
        .with_no_client_auth()
        .with_single_cert(chain, private)
        .context("TLS server certificate")?;
    Ok(InstallTls {
        acceptor: TlsAcceptor::from(Arc::new(config)),
        pin: ignite_recovery::tls::pin(&ca_der),
        ca_der,
        ca_path: paths(state_dir).1,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_authority_is_made_once_and_kept() {
        let dir = tempfile::tempdir().unwrap();
        let a = load_or_create(dir.path(), &[Ipv4Addr::new(10, 0, 0, 1)]).unwrap();
        let b = load_or_create(dir.path(), &[Ipv4Addr::new(10, 0, 0, 2)]).unwrap();
        assert_eq!(a.pin, b.pin);
        assert_eq!(a.ca_der, b.ca_der);
        let (key, _) = paths(dir.path());
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&key).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
        // Half an authority is refused, not silently replaced.
        std::fs::remove_file(&key).unwrap();
        let e = load_or_create(dir.path(), &[]).err().unwrap();
        assert!(format!("{e:#}").contains("is missing"), "{e:#}");
    }
}
