//! What the micro-benchmarks share: a typical browser request's headers.

use http::HeaderMap;

/// A desktop browser's request headers, with `cookie` if given.
pub fn browser_headers(cookie: Option<&str>) -> HeaderMap {
    let mut h = HeaderMap::new();
    h.insert("host", "shop.example.com".parse().unwrap());
    h.insert(
        "user-agent",
        "Mozilla/5.0 (X11; Linux x86_64; rv:128.0) Gecko/20100101 Firefox/128.0"
            .parse()
            .unwrap(),
    );
    h.insert(
        "accept",
        "text/html,application/xhtml+xml;q=0.9,*/*;q=0.8"
            .parse()
            .unwrap(),
    );
    h.insert("accept-language", "en-GB,en;q=0.5".parse().unwrap());
    h.insert("accept-encoding", "gzip, deflate, br".parse().unwrap());
    h.insert("connection", "keep-alive".parse().unwrap());
    if let Some(c) = cookie {
        h.insert("cookie", c.parse().unwrap());
    }
    h
}
