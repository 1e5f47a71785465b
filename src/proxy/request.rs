//! What a request names before it is routed: its authority and its path,
//! checked and normalized so that the proxy and the application can never
//! disagree about which app a request belongs to.
//!
//! - **Host** (RFC 9112 §3.2, RFC 9110 §7.2): one field, whose value is
//!   `uri-host [ ":" port ]` — a reg-name, an IPv4 address or a bracketed
//!   IPv6 address (RFC 3986 §3.2.2), nothing else. An HTTP/1.1 request
//!   without it, with two, or with any other value gets 400.
//! - **Absolute form** (RFC 9112 §3.2.2): `GET http://a.test/x` is routed
//!   by its own authority, which replaces `Host` towards the upstream.
//! - **HTTP/2** (RFC 9113 §8.3.1): `:authority` and `Host`, when both are
//!   present, must name the same authority.
//! - **Paths** (RFC 3986 §5.2.4): dot segments are removed — also when
//!   spelled `%2e` — before routing, and the upstream receives the same
//!   normalized path. Other percent-encodings, `%2F` included, pass as
//!   they came.
//! - **Target forms** (RFC 9112 §3.2): origin form and absolute form
//!   (`http` or `https`); `*` only for `OPTIONS`, authority form only for
//!   `CONNECT`. Anything else gets 400.

use http::header::{self, HeaderMap, HeaderValue};
use http::uri::{Authority, PathAndQuery, Scheme};
use http::{Method, Uri, Version};

use crate::config::Protocol;
use crate::route::Server;

/// Why a request was refused with 400.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum Invalid {
    #[error("HTTP/1.1 request without Host")]
    NoHost,
    #[error("more than one Host field")]
    TwoHosts,
    #[error("Host is not uri-host[:port]")]
    BadHost,
    #[error("the request target's authority is not uri-host[:port]")]
    BadAuthority,
    #[error(":authority and Host disagree")]
    AuthorityMismatch,
    #[error("request target is not origin-form or absolute-form")]
    BadTarget,
    /// Found by the socket's head scan (hyper drops the length, or keeps
    /// one of two equal ones).
    #[error("Content-Length beside Transfer-Encoding, or twice")]
    BadFraming,
    /// `Transfer-Encoding` other than one final `chunked`.
    #[error("a transfer coding other than chunked")]
    BadCoding,
    /// A `..;` (or `.;`) segment or a backslash: servers disagree on what
    /// they mean (Tomcat reads `/..;/` as `/../`, IIS `\` as `/`), so
    /// the app a prefix chose could differ from what the backend serves.
    #[error("an ambiguous path: a dot segment with parameters, or a backslash")]
    AmbiguousPath,
}

/// A request's checked target: the authority it names (to route by, and
/// to send upstream as `Host` or `:authority`) and its normalized path.
#[derive(Debug)]
pub struct Target {
    /// The authority as it will be sent upstream; `None` for an HTTP/1.0
    /// request that named none.
    pub authority: Option<HeaderValue>,
    /// `Some` when dot segments were removed: the path to route by and to
    /// send. `None`: the request's own path stands.
    pub path: Option<String>,
    /// The request named its host only in its target (absolute form or
    /// `:authority`), or its `Host` field differs from it: the upstream's
    /// `Host` must be set from `authority`.
    pub replace_host: bool,
}

impl Target {
    /// The host to route by (empty when the request named none).
    pub fn host(&self) -> &str {
        self.authority
            .as_ref()
            .and_then(|h| h.to_str().ok())
            .unwrap_or("")
    }

    /// The path to route by.
    /// The path the request routes by: `CONNECT`'s authority-form target
    /// has none, and routes as `/`.
    pub fn path<'a>(&'a self, uri: &'a Uri) -> &'a str {
        match self.path.as_deref().unwrap_or_else(|| uri.path()) {
            "" => "/",
            p => p,
        }
    }
}

/// Check a request's Host, target and path (see the module's doc).
pub fn check(
    method: &Method,
    uri: &Uri,
    version: Version,
    headers: &HeaderMap,
) -> Result<Target, Invalid> {
    let mut hosts = headers.get_all(header::HOST).iter();
    let host = hosts.next();
    if hosts.next().is_some() {
        return Err(Invalid::TwoHosts);
    }
    if let Some(h) = host {
        if !valid_authority(h.as_bytes()) {
            return Err(Invalid::BadHost);
        }
    }
    let h2 = version == Version::HTTP_2;

    // The target's form.
    let target_authority = match (uri.scheme(), uri.authority()) {
        (Some(scheme), Some(a)) => {
            if *scheme != Scheme::HTTP && *scheme != Scheme::HTTPS {
                return Err(Invalid::BadTarget);
            }
            if !valid_authority(a.as_str().as_bytes()) {
                return Err(Invalid::BadAuthority);
            }
            if !h2 && !uri.path().starts_with('/') && !uri.path().is_empty() {
                return Err(Invalid::BadTarget);
            }
            Some(a)
        }
        (None, Some(a)) => {
            // Authority form: `CONNECT host:port` only.
            if method != Method::CONNECT || !valid_authority(a.as_str().as_bytes()) {
                return Err(Invalid::BadTarget);
            }
            Some(a)
        }
        (Some(_), None) => return Err(Invalid::BadTarget),
        (None, None) => {
            let p = uri.path();
            if p == "*" {
                if method != Method::OPTIONS {
                    return Err(Invalid::BadTarget);
                }
            } else if !p.starts_with('/') {
                return Err(Invalid::BadTarget);
            }
            None
        }
    };
    if method == Method::CONNECT && target_authority.is_none() && !h2 {
        return Err(Invalid::BadTarget);
    }
    if !h2 && version == Version::HTTP_11 && host.is_none() {
        return Err(Invalid::NoHost);
    }

    let (authority, replace_host) = match (target_authority, host) {
        (Some(a), Some(h)) => {
            let same = a.as_str().as_bytes().eq_ignore_ascii_case(h.as_bytes());
            if h2 && !same {
                return Err(Invalid::AuthorityMismatch);
            }
            if same {
                (Some(h.clone()), false)
            } else {
                // HTTP/1.1 absolute form: its authority wins (RFC 9112 §3.2.2).
                let v = HeaderValue::from_str(a.as_str()).map_err(|_| Invalid::BadAuthority)?;
                (Some(v), true)
            }
        }
        (Some(a), None) => {
            let v = HeaderValue::from_str(a.as_str()).map_err(|_| Invalid::BadAuthority)?;
            (Some(v), true)
        }
        (None, Some(h)) => (Some(h.clone()), false),
        (None, None) => (None, false),
    };
    let path = if uri.path() == "*" {
        None
    } else {
        if ambiguous_path(uri.path().as_bytes()) {
            return Err(Invalid::AmbiguousPath);
        }
        remove_dot_segments(uri.path())
    };
    Ok(Target {
        authority,
        path,
        replace_host,
    })
}

/// Is `b` `uri-host [ ":" port ]` (RFC 3986 §3.2.2, §3.2.3)? The host is a
/// non-empty reg-name (unreserved, percent-encoded and sub-delims
/// characters), which covers IPv4 addresses, or a bracketed IPv6 address;
/// the port is at most five digits.
pub fn valid_authority(b: &[u8]) -> bool {
    let (host_ok, rest) = if b.first() == Some(&b'[') {
        let Some(end) = b.iter().position(|c| *c == b']') else {
            return false;
        };
        let inner = std::str::from_utf8(&b[1..end]).unwrap_or("");
        (inner.parse::<std::net::Ipv6Addr>().is_ok(), &b[end + 1..])
    } else {
        let end = b.iter().position(|c| *c == b':').unwrap_or(b.len());
        (end > 0 && reg_name(&b[..end]), &b[end..])
    };
    if !host_ok {
        return false;
    }
    match rest.split_first() {
        None => true,
        Some((b':', port)) => port.len() <= 5 && port.iter().all(u8::is_ascii_digit),
        Some(_) => false,
    }
}

/// The bytes a reg-name may hold besides `%` escapes: unreserved and
/// sub-delims (RFC 3986 §3.2.2), as a table (one load per byte).
const REG_NAME: [bool; 256] = {
    let mut t = [false; 256];
    let extra = b"-._~!$&'()*+,;=";
    let mut c = 0;
    while c < 256 {
        let b = c as u8;
        t[c] = b.is_ascii_alphanumeric();
        c += 1;
    }
    let mut i = 0;
    while i < extra.len() {
        t[extra[i] as usize] = true;
        i += 1;
    }
    t
};

/// A reg-name: unreserved / pct-encoded / sub-delims (RFC 3986 §3.2.2).
fn reg_name(b: &[u8]) -> bool {
    let mut i = 0;
    while i < b.len() {
        let c = b[i];
        if c == b'%' {
            if i + 2 >= b.len() || !(b[i + 1].is_ascii_hexdigit() && b[i + 2].is_ascii_hexdigit()) {
                return false;
            }
            i += 3;
            continue;
        }
        if !REG_NAME[c as usize] {
            return false;
        }
        i += 1;
    }
    true
}

/// How many dots a segment stands for: 1 for `.`, 2 for `..` (either
/// spelled with `%2e`), 0 for any other segment.
fn dots(seg: &str) -> usize {
    let b = seg.as_bytes();
    let mut i = 0;
    let mut n = 0;
    while i < b.len() {
        if b[i] == b'.' {
            i += 1;
        } else if b.len() - i >= 3 && b[i] == b'%' && b[i + 1] == b'2' && b[i + 2] | 0x20 == b'e' {
            i += 3;
        } else {
            return 0;
        }
        n += 1;
        if n > 2 {
            return 0;
        }
    }
    n
}

/// Is the request's `Transfer-Encoding` exactly one `chunked` (the only
/// coding cutover forwards a request body in; nginx refuses the rest)?
pub fn only_chunked(headers: &HeaderMap) -> bool {
    let mut te = headers.get_all(header::TRANSFER_ENCODING).iter();
    match (te.next(), te.next()) {
        (Some(v), None) => v.as_bytes().trim_ascii().eq_ignore_ascii_case(b"chunked"),
        _ => false,
    }
}

/// Does the path hold a backslash (also as `%5C`), or a segment that is
/// a dot segment once its `;` parameters are cut off (`..;`, `.;x`,
/// `%2e%2e;`)? See [`Invalid::AmbiguousPath`]. One pass finds none in
/// the common case.
fn ambiguous_path(p: &[u8]) -> bool {
    for i in memchr::memchr3_iter(b'\\', b';', b'%', p) {
        match p[i] {
            b'\\' => return true,
            b'%' => {
                if p.len() > i + 2 && p[i + 1] == b'5' && p[i + 2] | 0x20 == b'c' {
                    return true;
                }
            }
            _ => {
                let start = memchr::memrchr(b'/', &p[..i]).map_or(0, |s| s + 1);
                let seg = std::str::from_utf8(&p[start..i]).unwrap_or("");
                if dots(seg) > 0 {
                    return true;
                }
            }
        }
    }
    false
}

/// The path with its dot segments removed (RFC 3986 §5.2.4), or `None`
/// when it has none (the common case, found without allocating).
pub fn remove_dot_segments(path: &str) -> Option<String> {
    let b = path.as_bytes();
    // A `.` right after a `/`, or a `%2e`: found with two byte searches
    // (no searcher to build per request).
    let may_have = memchr::memchr_iter(b'.', b).any(|i| i > 0 && b[i - 1] == b'/')
        || memchr::memchr_iter(b'%', b)
            .any(|i| b.len() > i + 2 && b[i + 1] == b'2' && b[i + 2] | 0x20 == b'e');
    if !may_have || !path.starts_with('/') {
        return None;
    }
    let segs: Vec<&str> = path[1..].split('/').collect();
    let last = segs.len() - 1;
    let mut out: Vec<&str> = Vec::with_capacity(segs.len());
    let mut trailing = false;
    let mut changed = false;
    for (i, s) in segs.iter().enumerate() {
        match dots(s) {
            0 => out.push(s),
            n => {
                changed = true;
                if n == 2 {
                    out.pop();
                }
                trailing |= i == last;
            }
        }
    }
    if !changed {
        return None;
    }
    let mut p = String::with_capacity(path.len());
    for s in &out {
        p.push('/');
        p.push_str(s);
    }
    if trailing || out.is_empty() {
        p.push('/');
    }
    Some(p)
}

/// The upstream's request target for a normalized `path`, with the
/// request's query.
pub fn path_and_query(path: &str, uri: &Uri) -> Option<PathAndQuery> {
    let pq = match uri.query() {
        Some(q) => PathAndQuery::try_from(format!("{path}?{q}")),
        None => PathAndQuery::try_from(path),
    };
    pq.ok()
}

/// An absolute URI for an h2 upstream, from parsed parts.
pub fn absolute(scheme: Scheme, authority: &HeaderValue, pq: PathAndQuery) -> Option<Uri> {
    let authority = Authority::try_from(authority.as_bytes()).ok()?;
    let mut parts = http::uri::Parts::default();
    parts.scheme = Some(scheme);
    parts.authority = Some(authority);
    parts.path_and_query = Some(pq);
    Uri::from_parts(parts).ok()
}

/// The request's target and version as `server`'s protocol takes them,
/// for a live request and its mirrored copy alike: origin form for
/// HTTP/1.1 (a split `Cookie` of an HTTP/2 request joined); for HTTP/2
/// the absolute target from `authority`, which stands for `Host`.
/// `new_pq`: a normalized path to send instead of the request's own.
pub fn target_for(
    parts: &mut http::request::Parts,
    server: &Server,
    authority: Option<HeaderValue>,
    new_pq: Option<http::uri::PathAndQuery>,
) -> Option<()> {
    if server.protocol != Protocol::H2 {
        if parts.version == Version::HTTP_2 {
            super::headers::join_cookies(&mut parts.headers);
        }
        if let Some(pq) = new_pq {
            parts.uri = Uri::from(pq);
        } else if parts.uri.scheme().is_some() {
            // Absolute form (HTTP/2 clients' targets are); HTTP/1.1
            // upstreams want origin form.
            let pq = parts.uri.path_and_query().cloned();
            parts.uri = Uri::from(pq.unwrap_or_else(|| http::uri::PathAndQuery::from_static("/")));
        }
        parts.version = Version::HTTP_11;
        return Some(());
    }
    // h2 upstreams take the target as :scheme, :authority and :path, and
    // the authority stands for `Host` (RFC 9113 §8.3.1): the field is not
    // sent beside it, as strict servers (nginx) refuse a request that
    // names its host twice.
    parts.headers.remove(header::HOST);
    // An upstream reached over TLS is an `https` target: its :scheme says
    // so (RFC 9113 §8.3.1).
    let tls = server.transport.tls.is_some();
    // An HTTP/2 client's absolute target that already names this host is
    // kept as it is (no new URI per request).
    let kept = new_pq.is_none()
        && parts
            .uri
            .scheme()
            .is_some_and(|s| !tls || *s == Scheme::HTTPS)
        && parts.uri.authority().map(|a| a.as_str().as_bytes())
            == authority.as_ref().map(|a| a.as_bytes());
    if !kept && parts.method != Method::CONNECT {
        // No host at all (HTTP/1.0): hyper's h2 client needs one.
        let authority = authority.unwrap_or_else(|| HeaderValue::from_static("localhost"));
        let pq = new_pq.or_else(|| parts.uri.path_and_query().cloned());
        let pq = pq.unwrap_or_else(|| http::uri::PathAndQuery::from_static("/"));
        let scheme = if tls { Scheme::HTTPS } else { Scheme::HTTP };
        parts.uri = absolute(scheme, &authority, pq)?;
    }
    parts.version = Version::HTTP_2;
    Some(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn authorities_are_uri_host_and_port() {
        for ok in [
            "shop.test",
            "shop.test:8080",
            "SHOP.test",
            "127.0.0.1",
            "127.0.0.1:80",
            "[::1]",
            "[::1]:8443",
            "a-b_c~d.test",
            "xn--bcher-kva.test",
            "shop.test:",
            "a%41.test",
        ] {
            assert!(valid_authority(ok.as_bytes()), "{ok}");
        }
        for bad in [
            "",
            ":80",
            "[shop.test]/admin#",
            "shop.test/admin",
            "shop.test#x",
            "user@shop.test",
            "shop.test?x",
            "shop .test",
            "shop.test:80:80",
            "shop.test:123456",
            "shop.test:8o",
            "[::1",
            "[::1]x",
            "[zz]",
            "shop\0.test",
            "shop\t.test",
            "a%4.test",
            "a%",
            "a%g1",
        ] {
            assert!(!valid_authority(bad.as_bytes()), "{bad:?}");
        }
    }

    #[test]
    fn dot_segments_are_removed_in_every_spelling() {
        let cases = [
            ("/public/../admin", Some("/admin")),
            ("/public/%2e%2e/admin", Some("/admin")),
            ("/public/%2E%2e/admin", Some("/admin")),
            ("/public/.%2e/admin", Some("/admin")),
            ("/a/./b", Some("/a/b")),
            ("/a/%2e/b", Some("/a/b")),
            ("/a/b/..", Some("/a/")),
            ("/a/b/.", Some("/a/b/")),
            ("/..", Some("/")),
            ("/../../x", Some("/x")),
            ("/a//../b", Some("/a/b")),
            ("/a/b/../c/./d/", Some("/a/c/d/")),
            ("/.well-known/x", None),
            ("/a/...", None),
            ("/a/%2e%2e%2e", None),
            ("/a%2Fb/../c", Some("/c")),
            ("/a/%2Fb", None),
            ("/plain/path", None),
            ("/", None),
        ];
        for (input, want) in cases {
            assert_eq!(remove_dot_segments(input).as_deref(), want, "{input}");
        }
    }

    #[test]
    fn ambiguous_paths_are_found() {
        for bad in [
            "/public/..;/admin",
            "/public/.;/admin",
            "/public/..;x=1/admin",
            "/public/%2e%2e;/admin",
            "/public\\..\\admin",
            "/public/%5c../admin",
            "/public/%5C",
        ] {
            assert!(ambiguous_path(bad.as_bytes()), "{bad}");
        }
        for ok in [
            "/public/a;b=1/x",
            "/public/x;jsessionid=1",
            "/public/...;/x",
            "/public/%2e%2e%2e;/x",
            "/public/%5d",
            "/",
        ] {
            assert!(!ambiguous_path(ok.as_bytes()), "{ok}");
        }
    }

    fn req(
        method: &str,
        target: &str,
        version: Version,
        hosts: &[&str],
    ) -> Result<Target, Invalid> {
        let uri: Uri = target.parse().unwrap();
        let mut h = HeaderMap::new();
        for v in hosts {
            h.append(header::HOST, HeaderValue::from_bytes(v.as_bytes()).unwrap());
        }
        check(&method.parse().unwrap(), &uri, version, &h)
    }

    #[test]
    fn host_rules_of_rfc_9112() {
        use Version as V;
        assert!(req("GET", "/", V::HTTP_11, &["shop.test"]).is_ok());
        assert_eq!(
            req("GET", "/", V::HTTP_11, &[]).unwrap_err(),
            Invalid::NoHost
        );
        assert!(req("GET", "/", V::HTTP_10, &[]).is_ok());
        assert_eq!(
            req("GET", "/", V::HTTP_11, &["a.test", "a.test"]).unwrap_err(),
            Invalid::TwoHosts
        );
        assert_eq!(
            req("GET", "/", V::HTTP_11, &["[shop.test]/admin#"]).unwrap_err(),
            Invalid::BadHost
        );
        // Absolute form: its authority wins, Host is replaced.
        let t = req("GET", "http://api.test/x", V::HTTP_11, &["shop.test"]).unwrap();
        assert_eq!(t.authority.unwrap(), "api.test");
        assert!(t.replace_host);
        // HTTP/2: :authority and Host must agree.
        assert_eq!(
            req("GET", "http://api.test/x", V::HTTP_2, &["shop.test"]).unwrap_err(),
            Invalid::AuthorityMismatch
        );
        let t = req("GET", "http://API.test/x", V::HTTP_2, &["api.test"]).unwrap();
        assert!(!t.replace_host);
        let t = req("GET", "http://api.test/x", V::HTTP_2, &[]).unwrap();
        assert!(t.replace_host);
    }

    #[test]
    fn target_forms() {
        use Version as V;
        assert!(req("OPTIONS", "*", V::HTTP_11, &["a.test"]).is_ok());
        assert_eq!(
            req("GET", "*", V::HTTP_11, &["a.test"]).unwrap_err(),
            Invalid::BadTarget
        );
        assert!(req("CONNECT", "a.test:443", V::HTTP_11, &["a.test:443"]).is_ok());
        assert_eq!(
            req("GET", "a.test:443", V::HTTP_11, &["a.test"]).unwrap_err(),
            Invalid::BadTarget
        );
        assert_eq!(
            req("GET", "ftp://a.test/x", V::HTTP_11, &["a.test"]).unwrap_err(),
            Invalid::BadTarget
        );
        let t = req("GET", "/public/%2e%2e/admin?q=1", V::HTTP_11, &["a.test"]).unwrap();
        assert_eq!(t.path.as_deref(), Some("/admin"));
    }
}
