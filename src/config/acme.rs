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

#[cfg(test)]
mod tests {
    use crate::config::Config;

    fn errors(acme: &str, listen_tls: bool) -> String {
        let tls = if listen_tls {
            "listen_tls = [\"127.0.0.1:8443\"]"
        } else {
            ""
        };
        let text = format!(
            "[server]\nlisten = [\"127.0.0.1:8080\"]\n{tls}\n[tls.acme]\n{acme}\n\
             [apps.a]\n[apps.a.blue]\nservers = [\"127.0.0.1:1\"]\n[apps.a.green]\nservers = [\"127.0.0.1:2\"]\n"
        );
        match Config::from_toml(&text) {
            Ok(_) => String::new(),
            Err(e) => format!("{e:?}"),
        }
    }

    #[test]
    fn a_good_acme_table_needs_no_certificate_files() {
        let ok = "directory = \"https://ca.test/dir\"\ndomains = [\"shop.test\"]";
        assert_eq!(errors(ok, true), "");
    }

    #[test]
    fn each_wrong_acme_key_is_named() {
        let cases = [
            ("directory = \"http://ca.test/dir\"\ndomains = [\"a.test\"]", "tls.acme.directory"),
            ("domains = [\"a.test\"]", "tls.acme.directory"),
            ("directory = \"https://ca.test/dir\"", "tls.acme.domains"),
            ("directory = \"https://ca.test/dir\"\ndomains = [\"*.a.test\"]", "dns-01"),
            ("directory = \"https://ca.test/dir\"\ndomains = [\"10.0.0.1\"]", "IP address"),
            ("directory = \"https://ca.test/dir\"\ndomains = [\"a.test\"]\nchallenge = \"dns-01\"", "tls.acme.challenge"),
            ("directory = \"https://ca.test/dir\"\ndomains = [\"a.test\"]\nrenew = true", "renew"),
        ];
        for (acme, want) in cases {
            let e = errors(acme, true);
            assert!(e.contains(want), "{acme}: {e}");
        }
        let no_tls = errors(
            "directory = \"https://ca.test/dir\"\ndomains = [\"a.test\"]",
            false,
        );
        assert!(no_tls.contains("listen_tls"), "{no_tls}");
    }
}
