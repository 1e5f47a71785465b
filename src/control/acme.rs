//! Certificates that renew themselves (`[tls.acme]`, RFC 8555): obtained
//! from the CA at start when the cache has none, renewed at two thirds
//! of their lifetime, swapped in for new handshakes without a restart,
//! kept in `cache_dir` across restarts. A failure is retried with a
//! growing pause, shown in status, metrics and logs, while the
//! certificate in use (if any) keeps serving.
//!
//! Challenges: tls-alpn-01 (RFC 8737) answers the CA's handshake with a
//! certificate made for it ([`crate::tls::Resolver::challenges`]);
//! http-01 answers `/.well-known/acme-challenge/TOKEN` on the plain
//! listeners ([`super::Shared::acme_http`]).

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use instant_acme::{
    Account, AccountCredentials, AuthorizationStatus, ChallengeType, Identifier, NewAccount,
    NewOrder, OrderStatus, RetryPolicy,
};

use super::Shared;
use crate::api;
use crate::config::{AcmeChallenge, AcmeSettings, CertPaths};

/// The pause after the first failure; it doubles up to the longest.
const RETRY: (Duration, Duration) = (Duration::from_secs(1), Duration::from_secs(3600));

type Error = String;

/// At start, before the first handshake: serve the cached certificate
/// (if any), so that a restart does not wait for the CA.
pub fn serve_cached(settings: &AcmeSettings, shared: &Shared) {
    if let Err(e) = install_cached(settings, shared) {
        tracing::warn!(error = %e, "the cached ACME certificate is unusable");
    }
}

/// Keep the certificate of `settings` valid until shutdown.
pub async fn run(settings: AcmeSettings, shared: Arc<Shared>) {
    let mut stop = shared.shutdown.subscribe();
    let mut pause = RETRY.0;
    let mut failures = 0u64;
    loop {
        let (due, expires) = match install_cached(&settings, &shared) {
            Ok(Some(dates)) => dates,
            Ok(None) => (SystemTime::now(), None),
            Err(e) => {
                tracing::warn!(error = %e, "the cached ACME certificate is unusable; obtaining a new one");
                (SystemTime::now(), None)
            }
        };
        let wait = due.duration_since(SystemTime::now()).unwrap_or_default();
        if !wait.is_zero() {
            let s = standing(&settings, failures, None, due, expires);
            shared.acme.store(Some(Arc::new(s)));
            tokio::select! {
                _ = tokio::time::sleep(wait) => {}
                _ = stop.wait_for(|s| *s) => return,
            }
        }
        match obtain(&settings, &shared).await {
            Ok(()) => {
                tracing::info!(domains = ?settings.domains, "ACME certificate obtained");
                pause = RETRY.0;
                failures = 0;
            }
            Err(e) => {
                failures += 1;
                tracing::error!(error = %e, retry_in = ?pause, domains = ?settings.domains, "ACME certificate not obtained; the certificate in use (if any) keeps serving");
                let next = SystemTime::now() + pause;
                let s = standing(&settings, failures, Some(e), next, expires);
                shared.acme.store(Some(Arc::new(s)));
                tokio::select! {
                    _ = tokio::time::sleep(pause) => {}
                    _ = stop.wait_for(|s| *s) => return,
                }
                pause = (pause * 2).min(RETRY.1);
            }
        }
        clear_challenges(&shared);
    }
}

/// Where the certificate stands, for status.
fn standing(
    settings: &AcmeSettings,
    failures: u64,
    last_error: Option<String>,
    next: SystemTime,
    expires: Option<SystemTime>,
) -> api::Acme {
    api::Acme {
        domains: settings.domains.clone(),
        failures,
        last_error,
        next_renewal: Some(rfc3339(next)),
        not_after: expires.map(rfc3339),
    }
}

fn rfc3339(t: SystemTime) -> String {
    humantime::format_rfc3339_seconds(t).to_string()
}

/// The cache's files for these domains.
fn cached(settings: &AcmeSettings) -> CertPaths {
    let stem = settings.domains.first().map_or("cert", String::as_str);
    CertPaths {
        cert: settings.cache_dir.join(format!("{stem}.crt")),
        key: settings.cache_dir.join(format!("{stem}.key")),
    }
}

/// Serve the cached certificate, if there is one for every domain:
/// when to renew it, and when it expires.
fn install_cached(
    settings: &AcmeSettings,
    shared: &Shared,
) -> Result<Option<(SystemTime, Option<SystemTime>)>, Error> {
    let paths = cached(settings);
    if !paths.cert.exists() {
        return Ok(None);
    }
    let (mut certs, _, _) =
        crate::config::certs::load(std::slice::from_ref(&paths)).map_err(|errors| {
            let all: Vec<String> = errors.iter().map(ToString::to_string).collect();
            all.join("; ")
        })?;
    let cert = certs.pop().ok_or("no certificate in the cache")?;
    if settings.domains.iter().any(|d| !cert.names.contains(d)) {
        return Ok(None);
    }
    let (not_before, not_after) = validity(&paths.cert)?;
    if let Some(tls) = &shared.tls {
        tls.resolver.issued.store(Arc::new(vec![cert]));
    }
    // Two thirds into its lifetime.
    let life = not_after.duration_since(not_before).unwrap_or_default();
    Ok(Some((not_before + life * 2 / 3, Some(not_after))))
}

/// The leaf's notBefore and notAfter.
fn validity(path: &Path) -> Result<(SystemTime, SystemTime), Error> {
    let pem = std::fs::read(path).map_err(|e| format!("{}: {e}", path.display()))?;
    let (_, pem) = x509_parser::pem::parse_x509_pem(&pem).map_err(|e| e.to_string())?;
    let cert = pem.parse_x509().map_err(|e| e.to_string())?;
    let at = |t: x509_parser::time::ASN1Time| {
        SystemTime::UNIX_EPOCH + Duration::from_secs(t.timestamp().max(0) as u64)
    };
    Ok((
        at(cert.validity().not_before),
        at(cert.validity().not_after),
    ))
}

/// One order: account, challenges, finalization, the certificate into
/// the cache.
async fn obtain(settings: &AcmeSettings, shared: &Shared) -> Result<(), Error> {
    let account = account(settings).await?;
    let ids: Vec<Identifier> = settings
        .domains
        .iter()
        .map(|d| Identifier::Dns(d.clone()))
        .collect();
    let mut order = account
        .new_order(&NewOrder::new(&ids))
        .await
        .map_err(|e| format!("new order: {e}"))?;
    let mut authorizations = order.authorizations();
    while let Some(a) = authorizations.next().await {
        let mut a = a.map_err(|e| format!("authorization: {e}"))?;
        match a.status {
            AuthorizationStatus::Valid => continue,
            AuthorizationStatus::Pending => {}
            other => return Err(format!("authorization is {other:?}")),
        }
        let kind = match settings.challenge {
            AcmeChallenge::TlsAlpn01 => ChallengeType::TlsAlpn01,
            AcmeChallenge::Http01 => ChallengeType::Http01,
        };
        let mut challenge = a
            .challenge(kind.clone())
            .ok_or_else(|| format!("the CA offers no {kind:?} challenge"))?;
        let name = challenge.identifier().to_string();
        let key_auth = challenge.key_authorization();
        answer(
            shared,
            settings.challenge,
            &name,
            &challenge.token,
            &key_auth,
        )?;
        challenge
            .set_ready()
            .await
            .map_err(|e| format!("challenge for {name}: {e}"))?;
    }
    let retry = RetryPolicy::new().timeout(Duration::from_secs(60));
    let status = order
        .poll_ready(&retry)
        .await
        .map_err(|e| format!("order: {e}"))?;
    if status != OrderStatus::Ready {
        return Err(format!(
            "the order is {status:?}, not ready (a challenge failed)"
        ));
    }
    let key = order
        .finalize()
        .await
        .map_err(|e| format!("finalize: {e}"))?;
    let chain = order
        .poll_certificate(&retry)
        .await
        .map_err(|e| format!("certificate: {e}"))?;
    let paths = cached(settings);
    write_private(&paths.key, key.as_bytes())?;
    write_private(&paths.cert, chain.as_bytes())?;
    Ok(())
}

/// Publish the answer to one challenge where the CA will look for it.
fn answer(
    shared: &Shared,
    kind: AcmeChallenge,
    name: &str,
    token: &str,
    key_auth: &instant_acme::KeyAuthorization,
) -> Result<(), Error> {
    match kind {
        AcmeChallenge::Http01 => {
            let mut tokens = HashMap::clone(&shared.acme_http.load());
            tokens.insert(token.to_string(), key_auth.as_str().to_string());
            shared.acme_http.store(Arc::new(tokens));
        }
        AcmeChallenge::TlsAlpn01 => {
            let tls = shared
                .tls
                .as_ref()
                .ok_or("tls-alpn-01 needs a TLS listener")?;
            let cert = alpn_certificate(name, key_auth.digest().as_ref())?;
            let mut certs = HashMap::clone(&tls.resolver.challenges.load());
            certs.insert(name.to_ascii_lowercase(), Arc::new(cert));
            tls.resolver.challenges.store(Arc::new(certs));
        }
    }
    Ok(())
}

fn clear_challenges(shared: &Shared) {
    shared.acme_http.store(Arc::default());
    if let Some(tls) = &shared.tls {
        tls.resolver.challenges.store(Arc::default());
    }
}

/// The self-signed certificate of RFC 8737: the name, and the digest of
/// the key authorization in the critical acmeIdentifier extension.
fn alpn_certificate(name: &str, digest: &[u8]) -> Result<rustls::sign::CertifiedKey, Error> {
    let mut params =
        rcgen::CertificateParams::new(vec![name.to_string()]).map_err(|e| e.to_string())?;
    params
        .custom_extensions
        .push(rcgen::CustomExtension::new_acme_identifier(digest));
    let key = rcgen::KeyPair::generate().map_err(|e| e.to_string())?;
    let cert = params.self_signed(&key).map_err(|e| e.to_string())?;
    let der = rustls_pki_types::PrivateKeyDer::Pkcs8(key.serialize_der().into());
    let signer = rustls::crypto::ring::sign::any_supported_type(&der).map_err(|e| e.to_string())?;
    Ok(rustls::sign::CertifiedKey::new(
        vec![cert.der().clone()],
        signer,
    ))
}

/// The ACME account: from the cache, or created (and cached).
async fn account(settings: &AcmeSettings) -> Result<Account, Error> {
    let builder = match &settings.ca_file {
        Some(ca) => Account::builder_with_root(ca),
        None => Account::builder(),
    }
    .map_err(|e| format!("ACME client: {e}"))?;
    let path = settings.cache_dir.join("account.json");
    if let Ok(text) = std::fs::read_to_string(&path) {
        let creds: AccountCredentials =
            serde_json::from_str(&text).map_err(|e| format!("{}: {e}", path.display()))?;
        return builder
            .from_credentials(creds)
            .await
            .map_err(|e| format!("account: {e}"));
    }
    let contact: Vec<String> = settings
        .email
        .iter()
        .map(|e| format!("mailto:{e}"))
        .collect();
    let contact: Vec<&str> = contact.iter().map(String::as_str).collect();
    let new = NewAccount {
        contact: &contact,
        terms_of_service_agreed: true,
        only_return_existing: false,
    };
    let (account, creds) = builder
        .create(&new, settings.directory.clone(), None)
        .await
        .map_err(|e| format!("new account at {}: {e}", settings.directory))?;
    let text = serde_json::to_vec(&creds).map_err(|e| e.to_string())?;
    write_private(&path, &text)?;
    Ok(account)
}

/// Write a file of the cache: the folder made (0700) when missing, the
/// file owner-only, replaced whole.
fn write_private(path: &Path, bytes: &[u8]) -> Result<(), Error> {
    use std::io::Write;
    use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
    let dir = path.parent().map_or(PathBuf::from("."), Path::to_path_buf);
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(&dir)
        .map_err(|e| format!("{}: {e}", dir.display()))?;
    let tmp = path.with_extension("tmp");
    let write = || -> std::io::Result<()> {
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(&tmp)?;
        f.write_all(bytes)?;
        f.sync_all()?;
        std::fs::rename(&tmp, path)
    };
    write().map_err(|e| format!("{}: {e}", path.display()))
}
