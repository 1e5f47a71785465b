//! The dashboard's page: one HTML file, its script and its style sheet,
//! built into the binary (no build step, no framework). Served without a
//! token, for a page has nothing to hide; every call its script makes
//! carries one. The Content-Security-Policy allows only these files and
//! calls to this listener: no inline script, no other origin, no frame.

use http::header::{self, HeaderValue};
use http::{Method, Response};

use super::reply::{method_not_allowed, whole, Reply};

const INDEX: &str = include_str!("page/index.html");
const SCRIPT: &str = include_str!("page/dashboard.js");
const STYLE: &str = include_str!("page/dashboard.css");

const POLICY: &str = "default-src 'none'; script-src 'self'; style-src 'self'; \
    connect-src 'self'; img-src 'self' data:; base-uri 'none'; form-action 'none'; \
    frame-ancestors 'none'";

/// The file at `path` (`""` for `/`) with its content type; `None`: the
/// path is not one of the page's.
fn file(path: &str) -> Option<(&'static str, &'static str)> {
    match path {
        "" | "index.html" => Some((INDEX, "text/html; charset=utf-8")),
        "dashboard.js" => Some((SCRIPT, "text/javascript; charset=utf-8")),
        "dashboard.css" => Some((STYLE, "text/css; charset=utf-8")),
        _ => None,
    }
}

/// The answer for `path` (without its leading `/`), if it is the page's.
pub fn serve(method: &Method, path: &str) -> Option<Reply> {
    let (text, kind) = file(path)?;
    if *method != Method::GET && *method != Method::HEAD {
        return Some(method_not_allowed("GET"));
    }
    let mut r = Response::new(whole(text));
    let h = r.headers_mut();
    h.insert(header::CONTENT_TYPE, HeaderValue::from_static(kind));
    h.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(POLICY),
    );
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    h.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    h.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("no-referrer"),
    );
    // An upgraded binary's page is taken at once.
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    Some(r)
}
