//! TLS termination: certificates chosen by SNI
//! from their subject alternative names, behind an `ArcSwap` so that a
//! reload swaps them for new handshakes without touching open connections.
//!
//! rustls with the `ring` provider: TLS 1.2 and 1.3 only, ALPN `h2` and
//! `http/1.1`. A client without SNI (or with an unknown name) gets the
//! first certificate of the config.

use std::sync::Arc;

use arc_swap::ArcSwap;
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;

pub use crate::config::certs::CertInfo;
use crate::config::certs::{self, Cert};
use crate::config::CertPaths;

/// The certificates of one config, ready to serve.
#[derive(Debug)]
pub struct CertStore {
    /// In config order; the first is the default.
    entries: Vec<Cert>,
}

impl CertStore {
    /// Read and check every certificate ([`certs::load`]).
    pub fn load(
        certs: &[CertPaths],
    ) -> Result<(CertStore, Vec<CertInfo>, Vec<String>), Vec<String>> {
        let (entries, infos, warnings) = certs::load(certs)?;
        Ok((CertStore { entries }, infos, warnings))
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
