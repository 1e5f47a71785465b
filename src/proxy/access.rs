//! One access log line, in JSON or nginx's combined format. The fields
//! are gathered as the request goes (only when the log is on) and the line
//! is formatted when it ends; the writer thread
//! ([`crate::control::access_log`]) does the I/O.

use std::fmt::Write as _;
use std::net::IpAddr;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use http::{HeaderValue, Method, Version};

use crate::config::AccessFormat;
use crate::control::access_log::{rfc3339, time_local};
use crate::model::Color;
use crate::route::Server;

/// What the request said and where it went.
pub struct Fields {
    pub format: AccessFormat,
    pub method: Method,
    pub host: Option<HeaderValue>,
    /// The path as the client sent it, and the query (`None` when the
    /// config leaves queries out of the JSON line).
    pub path: String,
    pub query: Option<String>,
    pub version: Version,
    /// After `trusted_proxies` and the PROXY protocol.
    pub client: IpAddr,
    pub user_agent: Option<HeaderValue>,
    pub referer: Option<HeaderValue>,
    pub app: Option<Arc<str>>,
    /// The rule's name, or `split` / `live`.
    pub placed: Option<Arc<str>>,
    /// Until the upstream's response head.
    pub upstream_time: Option<Duration>,
    /// Request body bytes read, counted by the body as it streams.
    pub bytes_in: Arc<AtomicU64>,
    /// TLS version and the SNI name, on a TLS listener.
    pub tls: Option<(&'static str, Option<Arc<str>>)>,
}

/// How it ended.
pub struct Outcome<'a> {
    pub status: u16,
    pub elapsed: Duration,
    pub bytes_out: u64,
    pub color: Option<Color>,
    pub server: Option<&'a Server>,
    pub request_id: Option<&'a HeaderValue>,
}

impl Fields {
    pub fn line(&self, o: &Outcome<'_>) -> String {
        let started = SystemTime::now() - o.elapsed;
        let mut out = String::with_capacity(512);
        match self.format {
            AccessFormat::Json => self.json(&mut out, o, started),
            AccessFormat::Combined => self.combined(&mut out, o, started),
        }
        out.push('\n');
        out
    }

    /// One object, written field by field (a `serde_json::Map` would
    /// allocate every key and value again).
    fn json(&self, out: &mut String, o: &Outcome<'_>, started: SystemTime) {
        let ms = |d: Duration| (d.as_secs_f64() * 1e6).round() / 1e3;
        let _ = write!(out, "{{\"time\":\"{}\"", rfc3339(started));
        field(out, "request_id", o.request_id.map(HeaderValue::as_bytes));
        let _ = write!(out, ",\"client\":\"{}\"", self.client);
        field(out, "method", Some(self.method.as_str().as_bytes()));
        field(out, "host", self.host.as_ref().map(HeaderValue::as_bytes));
        field(out, "path", Some(self.path.as_bytes()));
        if let Some(q) = &self.query {
            field(out, "query", Some(q.as_bytes()));
        }
        let _ = write!(
            out,
            ",\"protocol\":\"{}\",\"status\":{},\"bytes_in\":{},\"bytes_out\":{},\"duration_ms\":{}",
            version(self.version),
            o.status,
            self.bytes_in.load(Relaxed),
            o.bytes_out,
            ms(o.elapsed)
        );
        match o.server {
            Some(s) => {
                let _ = write!(out, ",\"upstream\":\"{}\"", s.addr);
            }
            None => out.push_str(",\"upstream\":null"),
        }
        match self.upstream_time {
            Some(t) => {
                let _ = write!(out, ",\"upstream_ms\":{}", ms(t));
            }
            None => out.push_str(",\"upstream_ms\":null"),
        }
        field(out, "app", self.app.as_deref().map(str::as_bytes));
        field(out, "color", o.color.map(|c| c.as_str().as_bytes()));
        field(out, "placed", self.placed.as_deref().map(str::as_bytes));
        if let Some((v, sni)) = &self.tls {
            field(out, "tls_version", Some(v.as_bytes()));
            field(out, "sni", sni.as_deref().map(str::as_bytes));
        }
        field(
            out,
            "user_agent",
            self.user_agent.as_ref().map(HeaderValue::as_bytes),
        );
        field(
            out,
            "referer",
            self.referer.as_ref().map(HeaderValue::as_bytes),
        );
        out.push('}');
    }

    /// nginx's `combined`, then the app and the colour:
    /// `client - - [time] "request" status bytes "referer" "user agent" app color`.
    fn combined(&self, out: &mut String, o: &Outcome<'_>, started: SystemTime) {
        let quoted = |out: &mut String, v: &[u8]| {
            out.push('"');
            if v.is_empty() {
                out.push('-');
            }
            for &b in v {
                // nginx writes `"`, `\` and bytes outside printable ASCII as \xHH.
                if b == b'"' || b == b'\\' || !(0x20..0x7f).contains(&b) {
                    let _ = write!(out, "\\x{b:02X}");
                } else {
                    out.push(b as char);
                }
            }
            out.push('"');
        };
        let _ = write!(out, "{} - - [{}] ", self.client, time_local(started));
        let request = format!(
            "{} {}{}{} {}",
            self.method,
            self.path,
            if self.query.is_some() { "?" } else { "" },
            self.query.as_deref().unwrap_or(""),
            version(self.version)
        );
        quoted(out, request.as_bytes());
        let _ = write!(out, " {} {} ", o.status, o.bytes_out);
        quoted(
            out,
            self.referer.as_ref().map_or(&b""[..], |v| v.as_bytes()),
        );
        out.push(' ');
        quoted(
            out,
            self.user_agent.as_ref().map_or(&b""[..], |v| v.as_bytes()),
        );
        let _ = write!(
            out,
            " {} {}",
            self.app.as_deref().unwrap_or("-"),
            o.color.map_or("-", |c| c.as_str())
        );
    }
}

/// `,"name":"value"` (JSON-escaped; bytes that are not UTF-8 become
/// U+FFFD), or `,"name":null`.
fn field(out: &mut String, name: &str, value: Option<&[u8]>) {
    let _ = write!(out, ",\"{name}\":");
    let Some(v) = value else {
        out.push_str("null");
        return;
    };
    out.push('"');
    for c in String::from_utf8_lossy(v).chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            c if (c as u32) < 0x20 => {
                let _ = write!(out, "\\u{:04x}", c as u32);
            }
            c => out.push(c),
        }
    }
    out.push('"');
}

fn version(v: Version) -> &'static str {
    match v {
        Version::HTTP_09 => "HTTP/0.9",
        Version::HTTP_10 => "HTTP/1.0",
        Version::HTTP_2 => "HTTP/2.0",
        Version::HTTP_3 => "HTTP/3.0",
        _ => "HTTP/1.1",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_json_line_is_valid_json_whatever_the_request_carried() {
        let f = Fields {
            format: AccessFormat::Json,
            method: Method::GET,
            host: Some(HeaderValue::from_static("shop.test")),
            path: "/a\"b\\c".into(),
            query: Some("q=\u{1}".into()),
            version: Version::HTTP_2,
            client: "2001:db8::1".parse().unwrap(),
            user_agent: Some(HeaderValue::from_bytes(b"caf\xe9 \"x\"").unwrap()),
            referer: None,
            app: Some("shop".into()),
            placed: Some("split".into()),
            upstream_time: Some(Duration::from_micros(1500)),
            bytes_in: Arc::new(AtomicU64::new(7)),
            tls: Some(("TLSv1.3", Some("shop.test".into()))),
        };
        let id = HeaderValue::from_static("abc");
        let line = f.line(&Outcome {
            status: 200,
            elapsed: Duration::from_millis(3),
            bytes_out: 10,
            color: Some(Color::Green),
            server: None,
            request_id: Some(&id),
        });
        assert!(line.ends_with('\n'));
        let j: serde_json::Value = serde_json::from_str(&line).unwrap();
        assert_eq!(j["path"], "/a\"b\\c");
        assert_eq!(j["query"], "q=\u{1}");
        assert_eq!(j["user_agent"], "caf\u{fffd} \"x\"");
        assert_eq!(j["client"], "2001:db8::1");
        assert_eq!(j["protocol"], "HTTP/2.0");
        assert_eq!(
            (j["upstream_ms"].as_f64(), j["duration_ms"].as_f64()),
            (Some(1.5), Some(3.0))
        );
        assert_eq!(
            (j["bytes_in"].as_u64(), j["bytes_out"].as_u64()),
            (Some(7), Some(10))
        );
        assert!(j["upstream"].is_null() && j["referer"].is_null());
        assert_eq!(
            (j["color"].as_str(), j["placed"].as_str()),
            (Some("green"), Some("split"))
        );
        assert_eq!(
            (j["tls_version"].as_str(), j["sni"].as_str()),
            (Some("TLSv1.3"), Some("shop.test"))
        );
        assert_eq!(j["request_id"], "abc");
    }
}
