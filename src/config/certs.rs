//! Certificates read and checked: files readable, PEM valid, each key
//! matching its certificate. Part of validating a config, so that `check`
//! and a reload refuse what the TLS listener could not serve; the TLS
//! module serves what this returns.

use std::path::Path;
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use rustls::sign::CertifiedKey;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};

use super::types::CertPaths;

#[derive(Debug)]
pub struct Cert {
    pub key: Arc<CertifiedKey>,
    /// DNS names from the certificate, lower case; `*.` wildcards kept.
    pub names: Vec<String>,
}

/// What a loaded certificate says about itself, for `check` and logs.
#[derive(Debug, Clone)]
pub struct CertInfo {
    pub file: String,
    pub names: Vec<String>,
    /// Seconds since the Unix epoch.
    pub not_after: i64,
}

/// Which file of a certificate pair an error is about.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PairFile {
    Cert,
    Key,
}

/// An error of the pair at `index` in the list [`load`] was given: the
/// file it is about, and the message (which names that file).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct CertError {
    pub index: usize,
    pub file: PairFile,
    pub message: String,
}

/// What [`load`] gives: the certificates in config order, what each says
/// about itself, and warnings.
pub type Loaded = (Vec<Cert>, Vec<CertInfo>, Vec<String>);

/// Read and check every certificate: files readable, PEM valid, key
/// matching its certificate. An expired certificate is a warning, not an
/// error. Errors name the file.
pub fn load(certs: &[CertPaths]) -> Result<Loaded, Vec<CertError>> {
    let mut errors = Vec::new();
    let mut warnings = Vec::new();
    let mut entries = Vec::new();
    let mut infos = Vec::new();
    for (index, c) in certs.iter().enumerate() {
        match load_one(c) {
            Ok((entry, info)) => {
                let now = SystemTime::now()
                    .duration_since(UNIX_EPOCH)
                    .map_or(0, |d| d.as_secs() as i64);
                if info.not_after < now {
                    warnings.push(format!("{}: the certificate has expired", c.cert.display()));
                }
                entries.push(entry);
                infos.push(info);
            }
            Err((file, message)) => errors.push(CertError {
                index,
                file,
                message,
            }),
        }
    }
    if errors.is_empty() {
        Ok((entries, infos, warnings))
    } else {
        Err(errors)
    }
}

/// The rustls server config of the admin listener: one certificate,
/// TLS 1.2 and 1.3, ALPN `http/1.1` only. Errors name the file; a
/// warning says the certificate has expired.
pub fn admin_server_config(
    c: &CertPaths,
) -> Result<(Arc<rustls::ServerConfig>, Vec<String>), Vec<CertError>> {
    let (mut entries, _, warnings) = load(std::slice::from_ref(c))?;
    let cert = entries.remove(0);
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = rustls::ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
        .expect("ring supports TLS 1.2 and 1.3")
        .with_no_client_auth()
        .with_cert_resolver(Arc::new(rustls::sign::SingleCertAndKey::from(cert.key)));
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok((Arc::new(config), warnings))
}

fn load_one(c: &CertPaths) -> Result<(Cert, CertInfo), (PairFile, String)> {
    let cert_name = c.cert.display().to_string();
    let key_name = c.key.display().to_string();
    let cert_error = |e: String| (PairFile::Cert, e);
    let key_error = |e: String| (PairFile::Key, e);
    let chain: Vec<CertificateDer<'static>> = read_certs(&c.cert).map_err(cert_error)?;
    let Some(leaf) = chain.first() else {
        return Err(cert_error(format!(
            "{cert_name}: no certificate in the file"
        )));
    };
    let key = PrivateKeyDer::from_pem_file(&c.key)
        .map_err(|e| key_error(format!("{key_name}: cannot read a private key: {e}")))?;
    let signer = rustls::crypto::ring::sign::any_supported_type(&key)
        .map_err(|e| key_error(format!("{key_name}: unsupported private key: {e}")))?;
    let (names, not_after) = describe(leaf).map_err(|e| cert_error(format!("{cert_name}: {e}")))?;
    let certified = CertifiedKey::new(chain, signer);
    certified.keys_match().map_err(|_| {
        key_error(format!(
            "{key_name}: the key does not match the certificate {cert_name}"
        ))
    })?;
    Ok((
        Cert {
            key: Arc::new(certified),
            names: names.clone(),
        },
        CertInfo {
            file: cert_name,
            names,
            not_after,
        },
    ))
}

fn read_certs(path: &Path) -> Result<Vec<CertificateDer<'static>>, String> {
    let name = path.display();
    let iter =
        CertificateDer::pem_file_iter(path).map_err(|e| format!("{name}: cannot read: {e}"))?;
    iter.collect::<Result<Vec<_>, _>>()
        .map_err(|e| format!("{name}: not a PEM certificate: {e}"))
}

/// DNS names (subject alternative names, else the common name) and expiry.
fn describe(der: &CertificateDer<'_>) -> Result<(Vec<String>, i64), String> {
    let (_, cert) = x509_parser::parse_x509_certificate(der.as_ref())
        .map_err(|e| format!("cannot parse the certificate: {e}"))?;
    let mut names = Vec::new();
    if let Ok(Some(san)) = cert.subject_alternative_name() {
        for n in &san.value.general_names {
            if let x509_parser::extensions::GeneralName::DNSName(d) = n {
                names.push(d.to_ascii_lowercase());
            }
        }
    }
    if names.is_empty() {
        for cn in cert.subject().iter_common_name() {
            if let Ok(s) = cn.as_str() {
                names.push(s.to_ascii_lowercase());
            }
        }
    }
    Ok((names, cert.validity().not_after.timestamp()))
}
