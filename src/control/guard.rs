//! What keeps a web page out of the admin API. A browser on the admin's
//! host will send requests a page asks for to any address, loopback
//! included, but it tells on itself:
//!
//! - **Host** (421 Misdirected Request, RFC 9110 §15.5.20): a page on
//!   `evil.example` whose name is re-pointed at 127.0.0.1 (DNS rebinding)
//!   reaches the listener with `Host: evil.example`. Only a name for the
//!   listener itself is served: the IP address the client connected to
//!   (with the listener's port, or none), `localhost` (likewise), or a
//!   name listed in `[admin] hosts`. HTTP/1.1 without `Host` is malformed
//!   (400, RFC 9112 §3.2); HTTP/1.0 may omit it — no browser sends 1.0.
//! - **Origin** (403, RFC 6454): browsers send it with every cross-origin
//!   request and every POST. Only the admin listener's own origin passes:
//!   `http://` (`https://` when it speaks TLS) and a host that the `Host`
//!   rule accepts, on the listener's port exactly (an origin without a
//!   port means the scheme's, 80 or 443). `null` and anything else are
//!   refused. No CORS header is ever sent, so a page
//!   elsewhere cannot read an answer either.
//! - **Content-Type** (415, RFC 9110 §15.5.16): a change needs
//!   `application/json`. A page can send `text/plain`, form data or no body
//!   without a CORS preflight, but not `application/json`.

use std::net::{IpAddr, SocketAddr};

use http::header::{self, HeaderMap};

/// The admin listener as this connection reached it.
#[derive(Debug, Clone, Copy)]
pub struct Listener {
    /// The address the listener is bound to (perhaps `0.0.0.0`).
    pub bound: SocketAddr,
    /// The connection's local address: the IP the client connected to.
    pub local: SocketAddr,
    /// It speaks TLS (`[admin] tls_cert_file`): its origin is `https://`.
    pub tls: bool,
}

impl Listener {
    fn port(&self) -> u16 {
        self.local.port()
    }

    /// The scheme of this listener's origin, and its default port.
    fn scheme(&self) -> (&'static str, u16) {
        if self.tls {
            ("https://", 443)
        } else {
            ("http://", 80)
        }
    }

    /// Does `host` (no port; lower case; an IPv6 address without
    /// brackets) name this listener?
    fn is_own_host(&self, host: &str, hosts: &[String]) -> bool {
        match host.parse::<IpAddr>() {
            Ok(ip) => {
                let ip = ip.to_canonical();
                ip == self.local.ip().to_canonical()
                    || (!self.bound.ip().is_unspecified() && ip == self.bound.ip().to_canonical())
                    || hosts.iter().any(|h| *h == ip.to_string())
            }
            Err(_) => host == "localhost" || hosts.iter().any(|h| h == host),
        }
    }
}

/// Split `host[:port]` (`[v6]:port` too) into a lower-case host, without
/// brackets or a trailing dot, and its port (`None`: none given). `None`
/// for anything else, userinfo and paths included.
fn split_authority(authority: &str) -> Option<(String, Option<u16>)> {
    let (host, port, bracketed) = if let Some(rest) = authority.strip_prefix('[') {
        let (h, after) = rest.split_once(']')?;
        h.parse::<std::net::Ipv6Addr>().ok()?;
        (h, after, true)
    } else {
        match authority.find(':') {
            Some(i) => (&authority[..i], &authority[i..], false),
            None => (authority, "", false),
        }
    };
    let port = match port {
        "" | ":" => None,
        p => {
            let digits = p.strip_prefix(':')?;
            if !digits.bytes().all(|b| b.is_ascii_digit()) {
                return None;
            }
            Some(digits.parse::<u16>().ok()?)
        }
    };
    let host = host.strip_suffix('.').unwrap_or(host);
    let name_chars = |c: char| c.is_ascii_alphanumeric() || matches!(c, '-' | '.' | '_');
    if host.is_empty() || !bracketed && !host.chars().all(name_chars) {
        return None;
    }
    Some((host.to_ascii_lowercase(), port))
}

/// Why a request was refused: status and message.
pub type Refusal = (u16, String);

/// The `Host` rule. `authority`: the request target's authority when it
/// was given in absolute form (`POST http://host/...`), which RFC 9112
/// §3.2.2 says wins over the `Host` field; both are checked.
pub fn check_host(
    listener: &Listener,
    hosts: &[String],
    version: http::Version,
    headers: &HeaderMap,
    authority: Option<&str>,
) -> Result<(), Refusal> {
    let mut fields = headers.get_all(header::HOST).iter();
    let field = fields.next();
    if fields.next().is_some() {
        return Err((400, "Host: given more than once".into()));
    }
    let field = match field.map(|v| v.to_str()) {
        Some(Ok(v)) => Some(v.trim()),
        Some(Err(_)) => return Err((400, "Host: not a valid host".into())),
        None => None,
    };
    if field.is_none() && authority.is_none() && version != http::Version::HTTP_10 {
        return Err((400, "Host: missing (HTTP/1.1 requires it)".into()));
    }
    for given in field.into_iter().chain(authority) {
        let ok = split_authority(given).is_some_and(|(host, port)| {
            port.is_none_or(|p| p == listener.port()) && listener.is_own_host(&host, hosts)
        });
        if !ok {
            return Err((
                421,
                format!(
                    "Host: {given:?} does not name this admin listener ({}); \
                     list the name in [admin] hosts if it should",
                    listener.local
                ),
            ));
        }
    }
    Ok(())
}

/// The `Origin` rule: absent, or the admin listener's own origin.
pub fn check_origin(
    listener: &Listener,
    hosts: &[String],
    headers: &HeaderMap,
) -> Result<(), Refusal> {
    let (scheme, default_port) = listener.scheme();
    let mut refused = None;
    for value in headers.get_all(header::ORIGIN) {
        let text = value.to_str().unwrap_or("");
        let own = text
            .get(..scheme.len())
            .filter(|s| s.eq_ignore_ascii_case(scheme))
            .and_then(|_| split_authority(&text[scheme.len()..]))
            .is_some_and(|(host, port)| {
                port.unwrap_or(default_port) == listener.port()
                    && listener.is_own_host(&host, hosts)
            });
        if !own {
            refused = Some(text.to_string());
        }
    }
    match refused {
        None => Ok(()),
        Some(o) => Err((
            403,
            format!(
                "Origin: {o:?} is not this admin listener's own origin ({scheme}{}); \
                 the admin API does not serve web pages of other origins",
                listener.local
            ),
        )),
    }
}

/// The `Content-Type` rule for a change: exactly one field, of media type
/// `application/json` (any case, any parameters).
pub fn check_json(headers: &HeaderMap) -> Result<(), Refusal> {
    let mut fields = headers.get_all(header::CONTENT_TYPE).iter();
    let got = match (fields.next(), fields.next()) {
        (None, _) => "none".to_string(),
        (Some(_), Some(_)) => "more than one".to_string(),
        (Some(v), None) => {
            let text = v.to_str().unwrap_or("");
            let media = text.split(';').next().unwrap_or("").trim();
            if media.eq_ignore_ascii_case("application/json") {
                return Ok(());
            }
            format!("{text:?}")
        }
    };
    Err((
        415,
        format!("Content-Type: a change needs application/json, got {got}"),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::{HeaderValue, Version};

    fn listener() -> Listener {
        Listener {
            bound: "127.0.0.1:9901".parse().unwrap(),
            local: "127.0.0.1:9901".parse().unwrap(),
            tls: false,
        }
    }

    fn headers(pairs: &[(&'static str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.append(*k, HeaderValue::from_str(v).unwrap());
        }
        h
    }

    fn host(value: &str, hosts: &[&str]) -> Option<u16> {
        let hosts: Vec<String> = hosts.iter().map(|s| s.to_string()).collect();
        check_host(
            &listener(),
            &hosts,
            Version::HTTP_11,
            &headers(&[("host", value)]),
            None,
        )
        .err()
        .map(|e| e.0)
    }

    #[test]
    fn host_names_the_listener_or_is_refused() {
        for ok in [
            "127.0.0.1:9901",
            "127.0.0.1",
            "localhost:9901",
            "LOCALHOST",
            "localhost.:9901",
        ] {
            assert_eq!(host(ok, &[]), None, "{ok}");
        }
        for bad in [
            "evil.example",
            "evil.example:9901",
            "127.0.0.1:9902",
            "127.0.0.2:9901",
            "localhost:80",
            "[::1]:9901",
            "",
            "127.0.0.1:x",
            "localhost:9901@evil",
        ] {
            assert_eq!(host(bad, &[]), Some(421), "{bad}");
        }
        assert_eq!(host("admin.internal:9901", &["admin.internal"]), None);
        assert_eq!(host("Admin.Internal", &["admin.internal"]), None);
        assert_eq!(host("10.0.0.5:9901", &["10.0.0.5"]), None);
        assert_eq!(host("admin.internal:1", &["admin.internal"]), Some(421));
        let v6 = Listener {
            bound: "[::]:9901".parse().unwrap(),
            local: "[::1]:9901".parse().unwrap(),
            tls: false,
        };
        let h = headers(&[("host", "[::1]:9901")]);
        assert!(check_host(&v6, &[], Version::HTTP_11, &h, None).is_ok());
    }

    #[test]
    fn host_is_required_of_http_1_1_only_and_once() {
        let l = listener();
        let none = HeaderMap::new();
        assert_eq!(
            check_host(&l, &[], Version::HTTP_11, &none, None).map_err(|e| e.0),
            Err(400)
        );
        assert!(check_host(&l, &[], Version::HTTP_10, &none, None).is_ok());
        let twice = headers(&[("host", "127.0.0.1:9901"), ("host", "127.0.0.1:9901")]);
        assert_eq!(
            check_host(&l, &[], Version::HTTP_11, &twice, None).map_err(|e| e.0),
            Err(400)
        );
        let good = headers(&[("host", "127.0.0.1:9901")]);
        assert_eq!(
            check_host(&l, &[], Version::HTTP_11, &good, Some("evil.example")).map_err(|e| e.0),
            Err(421),
            "the absolute-form target counts too"
        );
    }

    #[test]
    fn only_the_listeners_own_origin_passes() {
        let l = listener();
        let hosts = vec!["admin.internal".to_string()];
        for ok in [
            "http://127.0.0.1:9901",
            "http://localhost:9901",
            "HTTP://LOCALHOST:9901",
            "http://admin.internal:9901",
        ] {
            assert!(
                check_origin(&l, &hosts, &headers(&[("origin", ok)])).is_ok(),
                "{ok}"
            );
        }
        for bad in [
            "http://evil.example",
            "http://evil.example:9901",
            "null",
            "https://127.0.0.1:9901",
            "http://127.0.0.1",
            "http://127.0.0.1:9902",
            "http://127.0.0.1:9901/path",
            "",
        ] {
            assert_eq!(
                check_origin(&l, &hosts, &headers(&[("origin", bad)])).map_err(|e| e.0),
                Err(403),
                "{bad}"
            );
        }
        assert!(check_origin(&l, &hosts, &HeaderMap::new()).is_ok());
        // Over TLS the origin is https://, and only that.
        let l = Listener { tls: true, ..l };
        for (origin, ok) in [
            ("https://127.0.0.1:9901", true),
            ("HTTPS://localhost:9901", true),
            ("http://127.0.0.1:9901", false),
            ("https://127.0.0.1", false),
        ] {
            let checked = check_origin(&l, &hosts, &headers(&[("origin", origin)]));
            assert_eq!(checked.is_ok(), ok, "{origin}");
        }
    }

    #[test]
    fn a_change_needs_json() {
        for ok in [
            "application/json",
            "Application/JSON",
            "application/json; charset=utf-8",
            " application/json ;charset=UTF-8",
        ] {
            assert!(
                check_json(&headers(&[("content-type", ok)])).is_ok(),
                "{ok}"
            );
        }
        for bad in [
            "text/plain",
            "application/x-www-form-urlencoded",
            "multipart/form-data; boundary=x",
            "application/jsonx",
            "application/merge-patch+json",
            "",
        ] {
            assert_eq!(
                check_json(&headers(&[("content-type", bad)])).map_err(|e| e.0),
                Err(415),
                "{bad}"
            );
        }
        assert_eq!(check_json(&HeaderMap::new()).map_err(|e| e.0), Err(415));
        let twice = headers(&[
            ("content-type", "application/json"),
            ("content-type", "text/plain"),
        ]);
        assert_eq!(check_json(&twice).map_err(|e| e.0), Err(415));
    }
}
