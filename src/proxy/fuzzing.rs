//! Entry points for the fuzz targets in `fuzz/`: untrusted bytes into the
//! data plane's parsers. Each must return, never panic, whatever it gets.
//! Not an API.

use std::collections::BTreeMap;
use std::sync::OnceLock;

use bytes::BytesMut;

use super::h1::codec::{self, Asked, Decoded, Decoder, Parsed};
use super::request;
use crate::route::rule::RequestView;
use crate::route::Snapshot;

/// Apps and rules of every kind, for [`request_routing`].
const ROUTING: &str = r#"
[apps.shop]
hosts = ["shop.test", "*.shop.test"]
sticky = "cookie:cutover"
standby_percent = 10
[apps.shop.blue]
servers = ["127.0.0.1:1"]
[apps.shop.green]
servers = ["127.0.0.1:2"]
[[apps.shop.rules]]
name = "mobile"
user_agent = "(?i)android|iphone"
to = "green"
percent = 20
[[apps.shop.rules]]
name = "testers"
header = { name = "x-preview", value = "yes" }
cookie = { name = "beta", value = "1" }
to = "green"
[[apps.shop.rules]]
name = "office"
client_ip = ["192.0.2.0/24"]
path_prefix = "/beta"
to = "green"
[apps.api]
path_prefix = "/api"
sticky = "ip"
[apps.api.blue]
servers = ["127.0.0.1:3"]
[apps.api.green]
servers = ["127.0.0.1:4"]
"#;

/// A request head, as a client sends it, through the checks before
/// routing and the routing decision.
pub fn request_routing(data: &[u8]) {
    static SNAPSHOT: OnceLock<Snapshot> = OnceLock::new();
    let snap = SNAPSHOT.get_or_init(|| {
        let config = crate::config::Config::from_toml(ROUTING).expect("the fuzz config is valid");
        Snapshot::build(&config, &BTreeMap::new(), None, 1).expect("the fuzz snapshot builds")
    });
    let mut slots = [httparse::EMPTY_HEADER; 64];
    let mut req = httparse::Request::new(&mut slots);
    let Ok(httparse::Status::Complete(_)) = req.parse(data) else {
        return;
    };
    let mut b = http::Request::builder()
        .method(req.method.unwrap_or("GET"))
        .uri(req.path.unwrap_or("/"))
        .version(if req.version == Some(0) {
            http::Version::HTTP_10
        } else {
            http::Version::HTTP_11
        });
    for h in req.headers.iter() {
        b = b.header(h.name, h.value);
    }
    let Ok(req) = b.body(()) else {
        return;
    };
    let Ok(target) = request::check(req.method(), req.uri(), req.version(), req.headers()) else {
        return;
    };
    let host = target
        .authority
        .as_ref()
        .and_then(|h| h.to_str().ok())
        .unwrap_or("");
    let path = target.path(req.uri());
    if let Some(app) = snap.find_app(host, path) {
        let ip = std::net::IpAddr::from([192, 0, 2, 7]);
        let view = RequestView::new(path, req.headers(), ip, None);
        let _ = app.decide(&view);
    }
}

/// An upstream's answer, as bytes arriving in pieces: the first byte of
/// `data` picks how it is split and what the request asked for; the rest
/// goes through the response head parser and then the body decoder.
pub fn upstream_response(data: &[u8]) {
    let Some((&knobs, rest)) = data.split_first() else {
        return;
    };
    let asked = Asked {
        head: knobs & 1 != 0,
        upgrade: knobs & 2 != 0,
        connect: knobs & 4 != 0,
    };
    let piece = usize::from(knobs >> 3) + 1;
    let mut buf = BytesMut::new();
    let mut decoder: Option<Decoder> = None;
    for chunk in rest.chunks(piece) {
        buf.extend_from_slice(chunk);
        loop {
            match &mut decoder {
                None => match codec::parse_head(&mut buf, asked) {
                    Ok(Some(Parsed::Interim(_))) => continue,
                    Ok(Some(Parsed::Final(head))) => {
                        if head.switched {
                            return;
                        }
                        decoder = Some(Decoder::new(head.framing));
                    }
                    Ok(None) => break,
                    Err(_) => return,
                },
                Some(d) => match d.decode(&mut buf) {
                    Ok(Decoded::Frame(_)) => continue,
                    Ok(Decoded::More) => break,
                    Ok(Decoded::End) => return,
                    Err(_) => return,
                },
            }
        }
    }
    if let Some(d) = &mut decoder {
        let _ = d.closed();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_entry_points_take_what_they_are_seeded_with() {
        request_routing(b"GET /beta/x HTTP/1.1\r\nHost: shop.test\r\nCookie: beta=1\r\n\r\n");
        request_routing(b"GET http://api.test/api HTTP/1.1\r\nHost: api.test\r\n\r\n");
        upstream_response(b"\x00HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok");
    }
}
