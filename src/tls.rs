//! TLS termination: certificates chosen by SNI
//! from their subject alternative names, behind an `ArcSwap` so that a
//! reload swaps them for new handshakes without touching open connections.
//!
//! rustls with the `ring` provider: TLS 1.2 and 1.3 only, ALPN `h2` and
//! `http/1.1`. A client without SNI (or with an unknown name) gets the
//! first certificate of the config.

use std::path::Path;
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use arc_swap::ArcSwap;
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};

use crate::config::CertPaths;

/// The certificates of one config, ready to serve.
#[derive(Debug)]
pub struct CertStore {
    /// In config order; the first is the default.
    entries: Vec<Entry>,
}

#[derive(Debug)]
struct Entry {
    key: Arc<CertifiedKey>,
    /// DNS names from the certificate, lower case; `*.` wildcards kept.
    names: Vec<String>,
}

/// What a loaded certificate says about itself, for `check` and logs.
#[derive(Debug, Clone)]
pub struct CertInfo {
    pub file: String,
    pub names: Vec<String>,
    /// Seconds since the Unix epoch.
    pub not_after: i64,
}

impl CertStore {
    /// Read and check every certificate: files readable, PEM valid, key
    /// matching its certificate. An expired certificate is a warning (the
    /// second list), not an error. Errors name the file.
    pub fn load(
        certs: &[CertPaths],
    ) -> Result<(CertStore, Vec<CertInfo>, Vec<String>), Vec<String>> {
        let mut errors = Vec::new();
        let mut warnings = Vec::new();
        let mut entries = Vec::new();
        let mut infos = Vec::new();
        for c in certs {
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
                Err(e) => errors.push(e),
            }
        }
        if errors.is_empty() {
            Ok((CertStore { entries }, infos, warnings))
        } else {
            Err(errors)
        }
    }

    /// The certificate for `sni`: an exact name first, then a `*.` wildcard
    /// covering it (one label, as RFC 6125 §6.4.3 has it), else the default.
    fn pick(&self, sni: Option<&str>) -> Option<Arc<CertifiedKey>> {
        if let Some(sni) = sni {
            let sni = sni.trim_end_matches('.').to_ascii_lowercase();
            if let Some(e) = self.entries.iter().find(|e| e.names.contains(&sni)) {
                return Some(e.key.clone());
            }
            if let Some((_, parent)) = sni.split_once('.') {
                let wildcard = format!("*.{parent}");
                if let Some(e) = self.entries.iter().find(|e| e.names.contains(&wildcard)) {
                    return Some(e.key.clone());
                }
            }
        }
        self.entries.first().map(|e| e.key.clone())
    }
}

fn load_one(c: &CertPaths) -> Result<(Entry, CertInfo), String> {
    let cert_name = c.cert.display().to_string();
    let key_name = c.key.display().to_string();
    let chain: Vec<CertificateDer<'static>> = read_certs(&c.cert)?;
    let Some(leaf) = chain.first() else {
        return Err(format!("{cert_name}: no certificate in the file"));
    };
    let key = PrivateKeyDer::from_pem_file(&c.key)
        .map_err(|e| format!("{key_name}: cannot read a private key: {e}"))?;
    let signer = rustls::crypto::ring::sign::any_supported_type(&key)
        .map_err(|e| format!("{key_name}: unsupported private key: {e}"))?;
    let (names, not_after) = describe(leaf).map_err(|e| format!("{cert_name}: {e}"))?;
    let certified = CertifiedKey::new(chain, signer);
    certified
        .keys_match()
        .map_err(|_| format!("{key_name}: the key does not match the certificate {cert_name}"))?;
    Ok((
        Entry {
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

/// Chooses the certificate at each handshake from the current store.
#[derive(Debug)]
pub struct Resolver {
    pub store: ArcSwap<CertStore>,
}

impl ResolvesServerCert for Resolver {
    fn resolve(&self, hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        self.store.load().pick(hello.server_name())
    }
}

/// The rustls server config: TLS 1.2 and 1.3, ALPN h2 then http/1.1,
/// certificates from `resolver`.
pub fn server_config(resolver: Arc<Resolver>) -> Arc<rustls::ServerConfig> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = rustls::ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
        .expect("ring supports TLS 1.2 and 1.3")
        .with_no_client_auth()
        .with_cert_resolver(resolver);
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Arc::new(config)
}
