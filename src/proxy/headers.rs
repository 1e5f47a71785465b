//! Header rewriting between client and upstream.
//!
//! Hop-by-hop fields are defined by RFC 9110 §7.6.1: `Connection` and every
//! field it names, plus the well-known `Keep-Alive`, `Proxy-Connection`,
//! `TE`, `Transfer-Encoding` and `Upgrade`. A proxy must not forward them.
//! `Trailer` is not one of them (RFC 9110 §6.6.2): it announces the
//! trailer fields end to end, and hyper sends a response's trailers to an
//! HTTP/1.1 client that asked for them (`TE: trailers`) only when the
//! response names them in it. `TE: trailers` is the exception kept towards upstreams
//! (RFC 9110 §10.1.4), since gRPC needs it. An upgrade request keeps its
//! `Upgrade` field and `Connection: upgrade` (RFC 9110 §7.8).

use std::net::IpAddr;

use http::header::{self, HeaderMap, HeaderName, HeaderValue};

static KEEP_ALIVE: HeaderName = HeaderName::from_static("keep-alive");
static PROXY_CONNECTION: HeaderName = HeaderName::from_static("proxy-connection");
static HTTP2_SETTINGS: HeaderName = HeaderName::from_static("http2-settings");
pub static X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
pub static X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");
pub static X_FORWARDED_HOST: HeaderName = HeaderName::from_static("x-forwarded-host");
pub static X_CUTOVER_COLOR: HeaderName = HeaderName::from_static("x-cutover-color");

/// Does `name` say who the client is or how it came, or is it one of
/// cutover's own fields? `X-Forwarded-*` (also spelled with underscores,
/// which CGI and WSGI read as the same variable), `Forwarded`,
/// `X-Real-IP` and `X-Cutover-*`. These are believed only from a trusted
/// proxy (as nginx's `set_real_ip_from` decides whom to believe); from
/// anyone else they are removed before cutover sets its own.
pub fn is_client_claim(name: &HeaderName) -> bool {
    let n = name.as_str().as_bytes();
    if n.first() != Some(&b'x') {
        return n == b"forwarded";
    }
    let same = |want: &[u8]| {
        n.len() >= want.len()
            && n.iter()
                .zip(want)
                .all(|(c, w)| c == w || (*c == b'_' && *w == b'-'))
    };
    (n.len() > 12 && same(b"x-forwarded-"))
        || (n.len() > 10 && same(b"x-cutover-"))
        || (n.len() == 9 && same(b"x-real-ip"))
}

/// Remove every field of [`is_client_claim`]: the peer is not trusted.
pub fn remove_client_claims(headers: &mut HeaderMap) {
    let claims: Vec<HeaderName> = headers
        .keys()
        .filter(|k| is_client_claim(k))
        .cloned()
        .collect();
    for name in claims {
        headers.remove(name);
    }
}

/// The client's address behind trusted proxies: the right-most
/// `X-Forwarded-For` element that is not itself a trusted proxy (each
/// trusted hop appended the address it saw). `peer` when there is none;
/// the last trusted element when every one is trusted or an element does
/// not parse (nothing left of it can be believed).
pub fn client_behind(headers: &HeaderMap, peer: IpAddr, trusted: &[ipnet::IpNet]) -> IpAddr {
    let mut client = peer;
    let lines: Vec<&HeaderValue> = headers.get_all(&X_FORWARDED_FOR).iter().collect();
    for line in lines.iter().rev() {
        let Ok(line) = line.to_str() else {
            return client;
        };
        for element in line.rsplit(',') {
            let Some(ip) = parse_element(element.trim()) else {
                return client;
            };
            client = ip;
            if !is_trusted(ip, trusted) {
                return client;
            }
        }
    }
    client
}

/// An `X-Forwarded-For` element: an address, perhaps with a port
/// (`192.0.2.1:4711`, `[2001:db8::1]:4711`).
fn parse_element(e: &str) -> Option<IpAddr> {
    if let Ok(ip) = e.parse() {
        return Some(ip);
    }
    if let Ok(sa) = e.parse::<std::net::SocketAddr>() {
        return Some(sa.ip());
    }
    e.strip_prefix('[')
        .and_then(|r| r.strip_suffix(']'))
        .and_then(|r| r.parse().ok())
}

/// Is `ip` (IPv4 seen through a dual-stack socket included) in `nets`?
pub fn is_trusted(ip: IpAddr, nets: &[ipnet::IpNet]) -> bool {
    if nets.is_empty() {
        return false;
    }
    let ip = match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map(IpAddr::V4).unwrap_or(ip),
        v4 => v4,
    };
    nets.iter().any(|n| n.contains(&ip))
}

/// The fixed hop-by-hop fields a header map holds, found in one pass over
/// its names: the handler asks whether a request is an upgrade and then
/// strips it with the same scan. The pass also notes whether any
/// `X-Forwarded-*` field is there.
#[derive(Clone, Copy, Debug)]
pub struct HopFields(u16);

impl HopFields {
    pub fn scan(headers: &HeaderMap) -> HopFields {
        HopFields(headers.keys().fold(0u16, |acc, k| {
            acc | u16::from(hop_bit(k)) | forwarded_bit(k)
        }))
    }

    /// Does the map hold any field of [`is_client_claim`]?
    pub fn has_forwarded(self) -> bool {
        self.0 & FORWARDED_BIT != 0
    }

    /// Does this request ask for a protocol upgrade (RFC 9110 §7.8)? It
    /// has an `Upgrade` field and `Connection` lists `upgrade`.
    pub fn upgrade_requested(self, headers: &HeaderMap) -> bool {
        let hop = (self.0 & 0xff) as u8;
        hop & UPGRADE_BIT != 0
            && hop & CONNECTION_BIT != 0
            && headers.get_all(header::CONNECTION).iter().any(|v| {
                v.to_str()
                    .unwrap_or("")
                    .split(',')
                    .any(|t| t.trim().eq_ignore_ascii_case("upgrade"))
            })
    }
}

/// May the upgrade a request asks for go ahead? Every protocol its
/// `Upgrade` field lists (the name, without a `/version`) must be in
/// `allowed` (`[server] upgrades`, lowercase). `h2c` never is: a backend
/// that accepted it would get the client's raw HTTP/2 connection, past
/// every check cutover makes on requests (h2c smuggling). A request whose
/// upgrade is refused is forwarded as a plain request, without `Upgrade`
/// (RFC 9110 §7.8 lets a server ignore it).
// Not inlined: only some requests need it, and inlined it spread
// the request path's code over more cache lines.
#[inline(never)]
pub fn upgrade_allowed(headers: &HeaderMap, allowed: &[String]) -> bool {
    let mut any = false;
    for v in headers.get_all(header::UPGRADE) {
        let Ok(v) = v.to_str() else { return false };
        for p in v.split(',').map(str::trim).filter(|p| !p.is_empty()) {
            let name = p.split('/').next().unwrap_or("").trim();
            if name.eq_ignore_ascii_case("h2c")
                || !allowed.iter().any(|a| a.eq_ignore_ascii_case(name))
            {
                return false;
            }
            any = true;
        }
    }
    any
}

/// Remove hop-by-hop fields in place. With `upgrade` set (a request or 101
/// response of a protocol upgrade), `Upgrade` and `Connection: upgrade`
/// survive; everything else the `Connection` field names is still removed.
/// `true` when `Connection` named other fields, which were removed.
pub fn strip_hop_by_hop(headers: &mut HeaderMap, upgrade: bool) -> bool {
    strip_found(headers, HopFields::scan(headers), upgrade)
}

/// [`strip_hop_by_hop`] with the fields already scanned. Only those
/// present are removed: a failed removal still hashes its name.
pub fn strip_found(headers: &mut HeaderMap, found: HopFields, upgrade: bool) -> bool {
    let present = (found.0 & 0xff) as u8;
    let mut named = false;
    if present == 0 && !upgrade {
        return false;
    }
    if present & CONNECTION_BIT != 0 {
        // One lookup takes every `Connection` line out. The common
        // `keep-alive` / `close` names nothing else to remove; only other
        // tokens need the slow path (which allocates).
        if let http::header::Entry::Occupied(entry) = headers.entry(header::CONNECTION) {
            let (_, mut values) = entry.remove_entry_mult();
            let first = values.next();
            let more: Vec<HeaderValue> = values.collect();
            let simple =
                more.is_empty() && first.as_ref().is_some_and(|v| is_plain_token(v.as_bytes()));
            if !simple {
                named = true;
                for v in first.iter().chain(&more) {
                    for token in v.to_str().unwrap_or("").split(',') {
                        let token = token.trim();
                        if upgrade && token.eq_ignore_ascii_case("upgrade") {
                            continue;
                        }
                        if let Ok(name) = HeaderName::from_bytes(token.as_bytes()) {
                            if !connection_may_name(&name) {
                                continue;
                            }
                            headers.remove(name);
                        }
                    }
                }
            }
        }
    }
    if present & KEEP_ALIVE_BIT != 0 {
        headers.remove(&KEEP_ALIVE);
    }
    if present & PROXY_CONNECTION_BIT != 0 {
        headers.remove(&PROXY_CONNECTION);
    }
    if present & TRANSFER_ENCODING_BIT != 0 {
        headers.remove(header::TRANSFER_ENCODING);
    }
    if present & HTTP2_SETTINGS_BIT != 0 {
        headers.remove(&HTTP2_SETTINGS);
    }
    if present & TE_BIT != 0 {
        if let Some(te) = headers.remove(header::TE) {
            let wants_trailers = te.to_str().unwrap_or("").split(',').any(|t| {
                t.split(';')
                    .next()
                    .unwrap_or("")
                    .trim()
                    .eq_ignore_ascii_case("trailers")
            });
            if wants_trailers {
                headers.insert(header::TE, HeaderValue::from_static("trailers"));
            }
        }
    }
    if upgrade {
        headers.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
    } else if present & UPGRADE_BIT != 0 {
        headers.remove(header::UPGRADE);
    }
    named
}

const CONNECTION_BIT: u8 = 1;
const KEEP_ALIVE_BIT: u8 = 2;
const PROXY_CONNECTION_BIT: u8 = 4;
const TE_BIT: u8 = 8;
const TRANSFER_ENCODING_BIT: u8 = 32;
const UPGRADE_BIT: u8 = 64;
/// `HTTP2-Settings` belongs to an `h2c` upgrade (RFC 7540 §3.2.1), which
/// is never forwarded: removed whether or not `Connection` names it.
const HTTP2_SETTINGS_BIT: u8 = 128;

/// May a client's `Connection` field remove `name`? Not `Host`, which
/// routed the request, nor the fields that say who the client is
/// ([`is_client_claim`]): a client (or a trusted proxy's client) naming
/// `X-Forwarded-For` there would have cutover drop the address a trusted
/// proxy appended, and the upstream see the proxy's own.
fn connection_may_name(name: &HeaderName) -> bool {
    name != header::HOST && !is_client_claim(name)
}

/// Is `name` one of the fixed hop-by-hop fields (not counting those a
/// `Connection` field names)?
pub fn is_hop_by_hop(name: &HeaderName) -> bool {
    hop_bit(name) != 0
}

/// Set in [`HopFields`] when an `X-Forwarded-*` field is present.
const FORWARDED_BIT: u16 = 256;

fn forwarded_bit(name: &HeaderName) -> u16 {
    if is_client_claim(name) {
        FORWARDED_BIT
    } else {
        0
    }
}

/// Which fixed hop-by-hop field `name` is, as a bit (0 for none).
fn hop_bit(name: &HeaderName) -> u8 {
    if name == header::CONNECTION {
        CONNECTION_BIT
    } else if name == header::TE {
        TE_BIT
    } else if name == header::TRANSFER_ENCODING {
        TRANSFER_ENCODING_BIT
    } else if name == header::UPGRADE {
        UPGRADE_BIT
    } else if name == KEEP_ALIVE {
        KEEP_ALIVE_BIT
    } else if name == PROXY_CONNECTION {
        PROXY_CONNECTION_BIT
    } else if name == HTTP2_SETTINGS {
        HTTP2_SETTINGS_BIT
    } else {
        0
    }
}

/// `keep-alive` or `close`: a Connection value naming no other field.
fn is_plain_token(v: &[u8]) -> bool {
    v.eq_ignore_ascii_case(b"keep-alive") || v.eq_ignore_ascii_case(b"close")
}

/// Set `X-Forwarded-For` (appended), `X-Forwarded-Proto` and
/// `X-Forwarded-Host` (the host the client asked for). `client` is the
/// peer's address already rendered as a header value. With `trusted`
/// (the peer is a trusted proxy) a `X-Forwarded-Proto` and
/// `X-Forwarded-Host` it sent are kept; an untrusted peer's fields must
/// have been removed first ([`remove_client_claims`]).
pub fn add_forwarded(
    headers: &mut HeaderMap,
    client: &HeaderValue,
    tls: bool,
    host: Option<HeaderValue>,
    trusted: bool,
) {
    match headers.entry(&X_FORWARDED_FOR) {
        http::header::Entry::Vacant(e) => {
            e.insert(client.clone());
        }
        http::header::Entry::Occupied(mut e) => {
            // Every earlier line, in order, then this client (RFC 7239
            // §7.1's list semantics, which `X-Forwarded-For` follows).
            let mut v = Vec::with_capacity(e.get().len() + 2 + client.len());
            for prev in e.iter() {
                v.extend_from_slice(prev.as_bytes());
                v.extend_from_slice(b", ");
            }
            v.extend_from_slice(client.as_bytes());
            if let Ok(v) = HeaderValue::from_bytes(&v) {
                e.insert(v);
            }
        }
    }
    let proto = if tls { "https" } else { "http" };
    if !(trusted && headers.contains_key(&X_FORWARDED_PROTO)) {
        headers.insert(X_FORWARDED_PROTO.clone(), HeaderValue::from_static(proto));
    }
    if trusted && headers.contains_key(&X_FORWARDED_HOST) {
        return;
    }
    match host {
        Some(h) => {
            headers.insert(X_FORWARDED_HOST.clone(), h);
        }
        None => {
            headers.remove(&X_FORWARDED_HOST);
        }
    }
}

/// Remove from a request's trailer section what must not travel there
/// (RFC 9110 §6.5.1): framing (`Content-Length`, `Transfer-Encoding`),
/// routing (`Host`), connection and hop-by-hop fields, request modifiers
/// and credentials (`Authorization`, `Cookie`, conditionals, `Range`),
/// content metadata, and every field that says who the client is
/// ([`is_client_claim`]). An upstream that merges trailers into the head
/// would otherwise take them as the request's own, past every check
/// cutover made on the head. The rest go on.
pub fn clean_trailers(trailers: &mut HeaderMap) {
    const BANNED: &[&str] = &[
        "host",
        "content-length",
        "transfer-encoding",
        "connection",
        "keep-alive",
        "proxy-connection",
        "te",
        "upgrade",
        "trailer",
        "http2-settings",
        "authorization",
        "proxy-authorization",
        "cookie",
        "expect",
        "max-forwards",
        "cache-control",
        "pragma",
        "range",
        "if-match",
        "if-none-match",
        "if-modified-since",
        "if-unmodified-since",
        "if-range",
        "content-encoding",
        "content-type",
        "content-range",
        "content-location",
    ];
    let banned: Vec<HeaderName> = trailers
        .keys()
        .filter(|k| BANNED.contains(&k.as_str()) || is_client_claim(k))
        .cloned()
        .collect();
    for name in banned {
        trailers.remove(name);
    }
}

/// The client address as an `X-Forwarded-For` element (computed once per
/// connection).
pub fn client_value(ip: IpAddr) -> HeaderValue {
    let ip = match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map(IpAddr::V4).unwrap_or(ip),
        v4 => v4,
    };
    HeaderValue::from_str(&ip.to_string()).expect("an IP address is a valid header value")
}

/// A fresh request id: 128 random bits in hex, as nginx's `$request_id`.
pub fn new_request_id() -> HeaderValue {
    let hex = crate::route::sticky::CookieId::random().as_hex();
    HeaderValue::from_bytes(&hex).expect("hex digits are a valid field value")
}

/// A client's request id is kept if it is a plain token of up to 200
/// visible characters (no spaces, nothing a log could misread).
pub fn acceptable_request_id(v: &HeaderValue) -> bool {
    let b = v.as_bytes();
    !b.is_empty() && b.len() <= 200 && b.iter().all(|c| (0x21..0x7f).contains(c) && *c != b'"')
}

/// An HTTP/2 client may split `Cookie` into one field per pair (RFC 9113
/// §8.2.3); an HTTP/1.1 upstream gets them joined with `; ` into one.
pub fn join_cookies(headers: &mut HeaderMap) {
    if let http::header::Entry::Occupied(e) = headers.entry(header::COOKIE) {
        if e.iter().nth(1).is_none() {
            return;
        }
        let (_, values) = e.remove_entry_mult();
        let mut joined = Vec::new();
        for v in values {
            if !joined.is_empty() {
                joined.extend_from_slice(b"; ");
            }
            joined.extend_from_slice(v.as_bytes());
        }
        if let Ok(v) = HeaderValue::from_bytes(&joined) {
            headers.insert(header::COOKIE, v);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn map(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.append(
                HeaderName::from_bytes(k.as_bytes()).unwrap(),
                v.parse().unwrap(),
            );
        }
        h
    }

    #[test]
    fn connection_is_removed() {
        let mut h = map(&[("connection", "keep-alive"), ("x-a", "1")]);
        strip_hop_by_hop(&mut h, false);
        assert!(h.get("connection").is_none());
        assert_eq!(h.get("x-a").unwrap(), "1");
    }

    #[test]
    fn fields_named_by_connection_are_removed() {
        let mut h = map(&[
            ("connection", "close, x-secret, X-Other"),
            ("x-secret", "s"),
            ("x-other", "o"),
            ("x-keep", "k"),
        ]);
        strip_hop_by_hop(&mut h, false);
        assert!(h.get("x-secret").is_none());
        assert!(h.get("x-other").is_none());
        assert_eq!(h.get("x-keep").unwrap(), "k");
    }

    #[test]
    fn keep_alive_is_removed() {
        let mut h = map(&[("keep-alive", "timeout=5")]);
        strip_hop_by_hop(&mut h, false);
        assert!(h.is_empty());
    }

    #[test]
    fn proxy_connection_is_removed() {
        let mut h = map(&[("proxy-connection", "keep-alive")]);
        strip_hop_by_hop(&mut h, false);
        assert!(h.is_empty());
    }

    #[test]
    fn te_is_removed_except_trailers() {
        let mut h = map(&[("te", "gzip")]);
        strip_hop_by_hop(&mut h, false);
        assert!(h.get("te").is_none());
        let mut h = map(&[("te", "gzip, trailers;q=1")]);
        strip_hop_by_hop(&mut h, false);
        assert_eq!(h.get("te").unwrap(), "trailers");
    }

    #[test]
    fn trailer_is_kept() {
        let mut h = map(&[("trailer", "x-checksum")]);
        strip_hop_by_hop(&mut h, false);
        assert_eq!(h.get("trailer").unwrap(), "x-checksum");
    }

    #[test]
    fn transfer_encoding_is_removed() {
        let mut h = map(&[("transfer-encoding", "chunked")]);
        strip_hop_by_hop(&mut h, false);
        assert!(h.is_empty());
    }

    #[test]
    fn upgrade_is_removed_unless_upgrading() {
        let mut h = map(&[("upgrade", "websocket"), ("connection", "Upgrade")]);
        assert!(HopFields::scan(&h).upgrade_requested(&h));
        strip_hop_by_hop(&mut h, false);
        assert!(h.is_empty());

        let mut h = map(&[
            ("upgrade", "websocket"),
            ("connection", "Upgrade, x-drop"),
            ("x-drop", "1"),
        ]);
        strip_hop_by_hop(&mut h, true);
        assert_eq!(h.get("upgrade").unwrap(), "websocket");
        assert_eq!(h.get("connection").unwrap(), "upgrade");
        assert!(h.get("x-drop").is_none());
    }

    #[test]
    fn forwarded_for_is_appended() {
        let client = client_value("192.0.2.9".parse().unwrap());
        let mut h = map(&[("x-forwarded-for", "203.0.113.1")]);
        add_forwarded(
            &mut h,
            &client,
            false,
            Some(HeaderValue::from_static("shop.example.com")),
            true,
        );
        assert_eq!(h.get("x-forwarded-for").unwrap(), "203.0.113.1, 192.0.2.9");
        assert_eq!(h.get("x-forwarded-proto").unwrap(), "http");
        assert_eq!(h.get("x-forwarded-host").unwrap(), "shop.example.com");

        // Two earlier lines: both kept, in order, as one line.
        let mut h = map(&[
            ("x-forwarded-for", "203.0.113.1, 198.51.100.2"),
            ("x-forwarded-for", "203.0.113.7"),
        ]);
        add_forwarded(&mut h, &client, false, None, true);
        let all: Vec<_> = h.get_all("x-forwarded-for").iter().collect();
        assert_eq!(all, ["203.0.113.1, 198.51.100.2, 203.0.113.7, 192.0.2.9"]);

        let mut h = HeaderMap::new();
        add_forwarded(
            &mut h,
            &client_value("::ffff:10.1.2.3".parse().unwrap()),
            true,
            None,
            false,
        );
        assert_eq!(h.get("x-forwarded-for").unwrap(), "10.1.2.3");
        assert_eq!(h.get("x-forwarded-proto").unwrap(), "https");
    }

    #[test]
    fn only_allowed_upgrades_go_ahead_and_h2c_never() {
        let allowed = vec!["websocket".to_string()];
        let ok = |v: &str, allowed: &[String]| {
            upgrade_allowed(&map(&[("upgrade", v), ("connection", "upgrade")]), allowed)
        };
        assert!(ok("websocket", &allowed));
        assert!(ok("WebSocket", &allowed));
        assert!(!ok("h2c", &allowed));
        assert!(!ok("websocket, h2c", &allowed));
        assert!(!ok("TLS/1.2", &allowed));
        assert!(!ok("h2c", &["h2c".to_string()]), "h2c is never allowed");
        assert!(!ok("websocket", &[]));
    }

    #[test]
    fn http2_settings_is_always_removed() {
        let mut h = map(&[
            ("upgrade", "h2c"),
            ("http2-settings", "AAMAAABkAAQAoAAAAAIAAAAA"),
            ("connection", "upgrade"),
        ]);
        strip_hop_by_hop(&mut h, false);
        assert!(h.is_empty(), "{h:?}");
        let mut h = map(&[("http2-settings", "AAMAAABk"), ("x-a", "1")]);
        strip_hop_by_hop(&mut h, false);
        assert_eq!(h.keys().map(|k| k.as_str()).collect::<Vec<_>>(), ["x-a"]);
    }

    #[test]
    fn connection_cannot_remove_host_or_forwarding_fields() {
        let mut h = map(&[
            (
                "connection",
                "close, X-Forwarded-For, host, x-cutover-mirror, x-drop",
            ),
            ("host", "shop.test"),
            ("x-forwarded-for", "198.51.100.7"),
            ("x-drop", "1"),
        ]);
        strip_hop_by_hop(&mut h, false);
        assert_eq!(h.get("x-forwarded-for").unwrap(), "198.51.100.7");
        assert_eq!(h.get("host").unwrap(), "shop.test");
        assert!(h.get("x-drop").is_none());
    }

    #[test]
    fn client_claims_include_underscore_spellings_and_cutovers_own() {
        for name in [
            "x-forwarded-for",
            "x_forwarded_for",
            "x-forwarded_for",
            "x-forwarded-ssl",
            "x-forwarded-scheme",
            "x-forwarded-client-cert",
            "x_real_ip",
            "x-real-ip",
            "forwarded",
            "x-cutover-mirror",
            "x_cutover_color",
        ] {
            assert!(is_client_claim(&HeaderName::from_static(name)), "{name}");
        }
        for name in [
            "x-forwarded",
            "x-real-ipx",
            "x-request-id",
            "forwardedx",
            "host",
        ] {
            assert!(!is_client_claim(&HeaderName::from_static(name)), "{name}");
        }
    }

    #[test]
    fn trailers_lose_framing_routing_and_forwarding_fields() {
        let mut t = map(&[
            ("host", "admin.test"),
            ("content-length", "5"),
            ("transfer-encoding", "chunked"),
            ("connection", "close"),
            ("x-forwarded-for", "127.0.0.1"),
            ("forwarded", "for=127.0.0.1"),
            ("authorization", "Basic YWRtaW46YWRtaW4="),
            ("x-checksum", "abc"),
            ("grpc-status", "0"),
        ]);
        clean_trailers(&mut t);
        let mut left: Vec<&str> = t.keys().map(|k| k.as_str()).collect();
        left.sort_unstable();
        assert_eq!(left, ["grpc-status", "x-checksum"]);
    }

    #[test]
    fn an_untrusted_peers_claims_are_removed() {
        let mut h = map(&[
            ("x-forwarded-for", "203.0.113.1"),
            ("x-forwarded-proto", "https"),
            ("x-forwarded-host", "evil.test"),
            ("x-forwarded-port", "443"),
            ("x-forwarded-prefix", "/admin"),
            ("x-real-ip", "203.0.113.1"),
            ("forwarded", "for=203.0.113.1"),
            ("x-forwarded-ssl", "on"),
            ("x-forwarded-scheme", "https"),
            ("x-forwarded-client-cert", "Hash=1"),
            ("x_forwarded_for", "203.0.113.1"),
            ("x-cutover-mirror", "1"),
            ("x-kept", "1"),
        ]);
        assert!(HopFields::scan(&h).has_forwarded());
        remove_client_claims(&mut h);
        let names: Vec<&str> = h.keys().map(|k| k.as_str()).collect();
        assert_eq!(names, ["x-kept"]);
    }

    #[test]
    fn the_client_behind_trusted_proxies_is_the_rightmost_untrusted_hop() {
        let trusted: Vec<ipnet::IpNet> = vec!["10.0.0.0/8".parse().unwrap()];
        let peer: IpAddr = "10.0.0.1".parse().unwrap();
        let h = map(&[("x-forwarded-for", "198.51.100.7, 203.0.113.9, 10.0.0.2")]);
        assert_eq!(
            client_behind(&h, peer, &trusted),
            "203.0.113.9".parse::<IpAddr>().unwrap()
        );
        let h = map(&[
            ("x-forwarded-for", "10.0.0.3"),
            ("x-forwarded-for", "10.0.0.2"),
        ]);
        assert_eq!(
            client_behind(&h, peer, &trusted),
            "10.0.0.3".parse::<IpAddr>().unwrap()
        );
        let h = map(&[("x-forwarded-for", "junk, 10.0.0.2")]);
        assert_eq!(
            client_behind(&h, peer, &trusted),
            "10.0.0.2".parse::<IpAddr>().unwrap()
        );
        let h = map(&[("x-forwarded-for", "[2001:db8::1]:4711")]);
        assert_eq!(
            client_behind(&h, peer, &trusted),
            "2001:db8::1".parse::<IpAddr>().unwrap()
        );
        assert_eq!(client_behind(&HeaderMap::new(), peer, &trusted), peer);
    }

    #[test]
    fn http2_cookie_fields_are_joined() {
        let mut h = HeaderMap::new();
        for v in ["a=1", "b=2"] {
            h.append(header::COOKIE, HeaderValue::from_static(v));
        }
        join_cookies(&mut h);
        let all: Vec<_> = h.get_all(header::COOKIE).iter().collect();
        assert_eq!(all, ["a=1; b=2"]);
    }
}
