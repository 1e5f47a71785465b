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

    fn json(&self, out: &mut String, o: &Outcome<'_>, started: SystemTime) {
        let mut obj = serde_json::Map::new();
        let mut put = |k: &str, v: serde_json::Value| {
            obj.insert(k.to_string(), v);
        };
        let text = |v: &Option<HeaderValue>| match v {
            Some(v) => serde_json::Value::String(String::from_utf8_lossy(v.as_bytes()).into()),
            None => serde_json::Value::Null,
        };
        let ms = |d: Duration| serde_json::json!((d.as_secs_f64() * 1e6).round() / 1e3);
        put("time", rfc3339(started).into());
        put("request_id", text(&o.request_id.cloned()));
        put("client", self.client.to_string().into());
        put("method", self.method.as_str().into());
        put("host", text(&self.host));
        put("path", self.path.clone().into());
        if let Some(q) = &self.query {
            put("query", q.clone().into());
        }
        put("protocol", version(self.version).into());
        put("status", o.status.into());
        put("bytes_in", self.bytes_in.load(Relaxed).into());
        put("bytes_out", o.bytes_out.into());
        put("duration_ms", ms(o.elapsed));
        put(
            "upstream",
            o.server
                .map_or(serde_json::Value::Null, |s| s.addr.to_string().into()),
        );
        put(
            "upstream_ms",
            self.upstream_time.map_or(serde_json::Value::Null, ms),
        );
        put(
            "app",
            self.app
                .as_deref()
                .map_or(serde_json::Value::Null, Into::into),
        );
        put(
            "color",
            o.color
                .map_or(serde_json::Value::Null, |c| c.as_str().into()),
        );
        put(
            "placed",
            self.placed
                .as_deref()
                .map_or(serde_json::Value::Null, Into::into),
        );
        if let Some((v, sni)) = &self.tls {
            put("tls_version", (*v).into());
            put(
                "sni",
                sni.as_deref().map_or(serde_json::Value::Null, Into::into),
            );
        }
        put("user_agent", text(&self.user_agent));
        put("referer", text(&self.referer));
        out.push_str(&serde_json::Value::Object(obj).to_string());
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

fn version(v: Version) -> &'static str {
    match v {
        Version::HTTP_09 => "HTTP/0.9",
        Version::HTTP_10 => "HTTP/1.0",
        Version::HTTP_2 => "HTTP/2.0",
        Version::HTTP_3 => "HTTP/3.0",
        _ => "HTTP/1.1",
    }
}
