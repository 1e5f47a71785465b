//! `[tls.acme]`: certificates from an ACME CA (Let's Encrypt, a private
//! CA such as step-ca or Pebble), checked here, obtained by
//! `control::acme`.

use std::path::Path;

use super::error::Errors;
use super::raw::RawAcme;
use super::types::{AcmeChallenge, AcmeSettings, ServerSettings};

pub fn acme(
    raw: Option<RawAcme>,
    server: &ServerSettings,
    base: &Path,
    errs: &mut Errors,
) -> Option<AcmeSettings> {
    let raw = raw?;
    let directory = match raw.directory {
        Some(d) if d.starts_with("https://") => d,
        Some(d) => {
            errs.push(
                "tls.acme.directory",
                format!("{d:?}: an https:// URL (ACME is spoken over TLS)"),
            );
            d
        }
        None => {
            errs.push(
                "tls.acme.directory",
                "missing: the CA's directory URL, like \"https://acme-v02.api.letsencrypt.org/directory\"",
            );
            String::new()
        }
    };
    if raw.domains.is_empty() {
        errs.push(
            "tls.acme.domains",
            "missing: the names to obtain a certificate for",
        );
    }
    for d in &raw.domains {
        if let Err(why) = domain(d) {
            errs.push("tls.acme.domains", format!("{d:?}: {why}"));
        }
    }
    let challenge = match raw.challenge.as_deref() {
        None | Some("tls-alpn-01") => AcmeChallenge::TlsAlpn01,
        Some("http-01") => AcmeChallenge::Http01,
        Some(other) => {
            errs.push(
                "tls.acme.challenge",
                format!("{other:?}: \"tls-alpn-01\" or \"http-01\""),
            );
            AcmeChallenge::TlsAlpn01
        }
    };
    let (needs, listeners) = match challenge {
        AcmeChallenge::TlsAlpn01 => ("server.listen_tls", &server.listen_tls),
        AcmeChallenge::Http01 => ("server.listen", &server.listen),
    };
    if listeners.is_empty() {
        errs.push(
            "tls.acme.challenge",
            format!("the CA checks this challenge on {needs}, which has no address"),
        );
    }
    Some(AcmeSettings {
        directory,
        email: raw.email,
        domains: raw.domains.iter().map(|d| d.to_ascii_lowercase()).collect(),
        ca_file: raw.ca_file.map(|f| base.join(f)),
        challenge,
        cache_dir: base.join(raw.cache_dir.unwrap_or_else(|| "acme".into())),
    })
}

/// A name a CA can issue for with these challenges: a host name, no
/// wildcard (that takes dns-01), no address.
fn domain(d: &str) -> Result<(), &'static str> {
    if d.starts_with("*.") {
        return Err("a wildcard needs the dns-01 challenge, which cutover does not do");
    }
    if d.parse::<std::net::IpAddr>().is_ok() {
        return Err("an IP address, not a host name");
    }
    let ok = !d.is_empty()
        && d.len() <= 253
        && d.split('.').all(|l| {
            !l.is_empty()
                && l.len() <= 63
                && !l.starts_with('-')
                && !l.ends_with('-')
                && l.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
        });
    ok.then_some(()).ok_or("not a host name")
}
