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
use crate::control::access_log::{push_rfc3339, push_time_local};
use crate::model::Color;
use crate::route::Server;

/// `,"name":` as one literal, so a field's key is one copy.
macro_rules! key {
    ($name:literal) => {
        concat!(",\"", $name, "\":")
    };
}

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
        let mut out = String::with_capacity(768);
        match self.format {
            AccessFormat::Json => self.json(&mut out, o, started),
            AccessFormat::Combined => self.combined(&mut out, o, started),
        }
        out.push('\n');
        out
    }

    /// One object, written field by field with no formatting machinery:
    /// a line is written for every request, and `write!` and `Display`
    /// cost several times what pushing the bytes does.
    fn json(&self, out: &mut String, o: &Outcome<'_>, started: SystemTime) {
        out.push_str("{\"time\":\"");
        push_rfc3339(out, started);
        out.push('"');
        field(
            out,
            key!("request_id"),
            o.request_id.map(HeaderValue::as_bytes),
        );
        out.push_str(",\"client\":\"");
        push_ip(out, self.client);
        out.push('"');
        field(out, key!("method"), Some(self.method.as_str().as_bytes()));
        field(
            out,
            key!("host"),
            self.host.as_ref().map(HeaderValue::as_bytes),
        );
        field(out, key!("path"), Some(self.path.as_bytes()));
        if let Some(q) = &self.query {
            field(out, key!("query"), Some(q.as_bytes()));
        }
        out.push_str(",\"protocol\":\"");
        out.push_str(version(self.version));
        out.push_str("\",\"status\":");
        push_int(out, o.status.into());
        out.push_str(",\"bytes_in\":");
        push_int(out, self.bytes_in.load(Relaxed));
        out.push_str(",\"bytes_out\":");
        push_int(out, o.bytes_out);
        out.push_str(",\"duration_ms\":");
        push_ms(out, o.elapsed);
        match o.server {
            Some(s) => {
                out.push_str(",\"upstream\":\"");
                push_ip(out, s.addr.ip());
                out.push(':');
                push_int(out, s.addr.port().into());
                out.push('"');
            }
            None => out.push_str(",\"upstream\":null"),
        }
        match self.upstream_time {
            Some(t) => {
                out.push_str(",\"upstream_ms\":");
                push_ms(out, t);
            }
            None => out.push_str(",\"upstream_ms\":null"),
        }
        field(out, key!("app"), self.app.as_deref().map(str::as_bytes));
        field(out, key!("color"), o.color.map(|c| c.as_str().as_bytes()));
        field(
            out,
            key!("placed"),
            self.placed.as_deref().map(str::as_bytes),
        );
        if let Some((v, sni)) = &self.tls {
            field(out, key!("tls_version"), Some(v.as_bytes()));
            field(out, key!("sni"), sni.as_deref().map(str::as_bytes));
        }
        field(
            out,
            key!("user_agent"),
            self.user_agent.as_ref().map(HeaderValue::as_bytes),
        );
        field(
            out,
            key!("referer"),
            self.referer.as_ref().map(HeaderValue::as_bytes),
        );
        out.push('}');
    }

    /// nginx's `combined`, then the app and the colour:
    /// `client - - [time] "request" status bytes "referer" "user agent" app color`.
    fn combined(&self, out: &mut String, o: &Outcome<'_>, started: SystemTime) {
        push_ip(out, self.client);
        out.push_str(" - - [");
        push_time_local(out, started);
        out.push_str("] \"");
        escaped(out, self.method.as_str().as_bytes());
        out.push(' ');
        escaped(out, self.path.as_bytes());
        if let Some(q) = &self.query {
            out.push('?');
            escaped(out, q.as_bytes());
        }
        out.push(' ');
        out.push_str(version(self.version));
        out.push_str("\" ");
        push_int(out, o.status.into());
        out.push(' ');
        push_int(out, o.bytes_out);
        out.push(' ');
        quoted(
            out,
            self.referer.as_ref().map_or(&b""[..], |v| v.as_bytes()),
        );
        out.push(' ');
        quoted(
            out,
            self.user_agent.as_ref().map_or(&b""[..], |v| v.as_bytes()),
        );
        out.push(' ');
        out.push_str(self.app.as_deref().unwrap_or("-"));
        out.push(' ');
        out.push_str(o.color.map_or("-", |c| c.as_str()));
    }
}

/// `"value"` as nginx writes it, `"-"` when empty.
fn quoted(out: &mut String, v: &[u8]) {
    out.push('"');
    if v.is_empty() {
        out.push('-');
    }
    escaped(out, v);
    out.push('"');
}

/// nginx writes `"`, `\` and bytes outside printable ASCII as `\xHH`.
fn escaped(out: &mut String, v: &[u8]) {
    let plain = |b: u8| b != b'"' && b != b'\\' && (0x20..0x7f).contains(&b);
    // Printable ASCII throughout (the usual case) is pushed whole.
    if v.iter().all(|&b| plain(b)) {
        if let Ok(s) = std::str::from_utf8(v) {
            out.push_str(s);
            return;
        }
    }
    for &b in v {
        if plain(b) {
            out.push(char::from(b));
        } else {
            const HEX: &[u8; 16] = b"0123456789ABCDEF";
            out.push_str("\\x");
            out.push(char::from(HEX[usize::from(b >> 4)]));
            out.push(char::from(HEX[usize::from(b & 15)]));
        }
    }
}

fn push_int(out: &mut String, n: u64) {
    out.push_str(itoa::Buffer::new().format(n));
}

/// Milliseconds with three decimals (microseconds).
fn push_ms(out: &mut String, d: Duration) {
    let us = u64::try_from(d.as_micros()).unwrap_or(u64::MAX);
    push_int(out, us / 1000);
    let frac = us % 1000;
    out.push('.');
    out.push(char::from(b'0' + (frac / 100) as u8));
    out.push(char::from(b'0' + (frac / 10 % 10) as u8));
    out.push(char::from(b'0' + (frac % 10) as u8));
}

fn push_ip(out: &mut String, ip: IpAddr) {
    match ip {
        IpAddr::V4(v4) => {
            for (i, octet) in v4.octets().into_iter().enumerate() {
                if i > 0 {
                    out.push('.');
                }
                push_int(out, octet.into());
            }
        }
        // Rarer, and its shortest form takes the standard library's rules.
        IpAddr::V6(v6) => {
            let _ = write!(out, "{v6}");
        }
    }
}

/// `key` (`,"name":`, from [`key!`]) then `"value"` (JSON-escaped;
/// bytes that are not UTF-8 become U+FFFD) or `null`.
fn field(out: &mut String, key: &str, value: Option<&[u8]>) {
    out.push_str(key);
    let Some(v) = value else {
        out.push_str("null");
        return;
    };
    out.push('"');
    let plain = |b: u8| b != b'"' && b != b'\\' && b >= 0x20;
    match std::str::from_utf8(v) {
        // Most values need no escaping: pushed whole.
        Ok(s) if s.bytes().all(plain) => {
            out.reserve(s.len() + 1);
            out.push_str(s);
        }
        _ => {
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
