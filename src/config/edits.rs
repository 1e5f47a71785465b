//! What an app changes in the requests and answers it passes, beside
//! routing them: its own limits for one request (`max_body_bytes` and the
//! timeouts of `[limits]` that concern one request), its header rules
//! (`request_headers`, `response_headers`) and its path rewriting
//! (`strip_prefix`, `rewrite`). Raw keys → typed values here, each error
//! naming its key; the proxy applies them ([`HeaderRules::apply`],
//! [`PathRewrite::apply`]) only for an app that has them.

use std::fmt;
use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use http::{HeaderMap, HeaderName, HeaderValue};
use regex::Regex;

use super::error::Errors;
use super::raw::{RawApp, RawDuration, RawHeaderRules, RawRewrite};
use super::types::{Limits, ServerSettings};
use super::values::{int_range, positive_duration};
use crate::model::Color;

/// An app's own limits, header rules and path rewriting.
pub(crate) struct AppEdits {
    pub limits: AppLimits,
    pub request_headers: Option<Arc<HeaderRules>>,
    pub response_headers: Option<Arc<HeaderRules>>,
    pub paths: Option<Arc<PathRewrite>>,
}

/// The edits of `[apps.NAME]` (`key`); header rules it has none of are
/// `server`'s.
pub(crate) fn app_edits(
    key: &str,
    raw: &RawApp,
    server: &ServerSettings,
    errs: &mut Errors,
) -> AppEdits {
    let own = server.own_request_id();
    AppEdits {
        limits: app_limits(key, raw, errs),
        request_headers: app_header_rules(
            &format!("{key}.request_headers"),
            raw.request_headers.as_ref(),
            &server.request_headers,
            own,
            errs,
        ),
        response_headers: app_header_rules(
            &format!("{key}.response_headers"),
            raw.response_headers.as_ref(),
            &server.response_headers,
            own,
            errs,
        ),
        paths: path_rewrite(key, &raw.path_prefix, raw.strip_prefix, &raw.rewrite, errs),
    }
}

/// The `[limits]` keys an app may set for its own requests; `None` takes
/// `[limits]`'s.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct AppLimits {
    pub max_body_bytes: Option<u64>,
    pub client_body_timeout: Option<Duration>,
    pub upstream_connect_timeout: Option<Duration>,
    pub upstream_response_timeout: Option<Duration>,
    pub upstream_read_timeout: Option<Duration>,
}

/// The limits one request of an app runs under: `[limits]` with the app's
/// own keys over it, resolved when the routing snapshot is built so that a
/// request reads them from its app in one place.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RequestLimits {
    pub max_body_bytes: u64,
    pub client_body_timeout: Duration,
    pub upstream_connect_timeout: Duration,
    pub upstream_response_timeout: Duration,
    pub upstream_read_timeout: Duration,
}

impl AppLimits {
    /// `limits` with this app's keys over it.
    pub fn over(&self, limits: &Limits) -> RequestLimits {
        RequestLimits {
            max_body_bytes: self.max_body_bytes.unwrap_or(limits.max_body_bytes),
            client_body_timeout: self
                .client_body_timeout
                .unwrap_or(limits.client_body_timeout),
            upstream_connect_timeout: self
                .upstream_connect_timeout
                .unwrap_or(limits.upstream_connect_timeout),
            upstream_response_timeout: self
                .upstream_response_timeout
                .unwrap_or(limits.upstream_response_timeout),
            upstream_read_timeout: self
                .upstream_read_timeout
                .unwrap_or(limits.upstream_read_timeout),
        }
    }
}

/// `[apps.NAME]`'s limits keys, checked as `[limits]`' own are.
pub(crate) fn app_limits(key: &str, raw: &RawApp, errs: &mut Errors) -> AppLimits {
    let d = |name: &str, v: &Option<RawDuration>, errs: &mut Errors| {
        v.as_ref()
            .map(|v| positive_duration(&format!("{key}.{name}"), v, errs))
    };
    AppLimits {
        max_body_bytes: raw
            .max_body_bytes
            .map(|n| int_range(&format!("{key}.max_body_bytes"), n, 0, i64::MAX, errs) as u64),
        client_body_timeout: d("client_body_timeout", &raw.client_body_timeout, errs),
        upstream_connect_timeout: d(
            "upstream_connect_timeout",
            &raw.upstream_connect_timeout,
            errs,
        ),
        upstream_response_timeout: d(
            "upstream_response_timeout",
            &raw.upstream_response_timeout,
            errs,
        ),
        upstream_read_timeout: d("upstream_read_timeout", &raw.upstream_read_timeout, errs),
    }
}

/// Fields no rule may touch: the connection's own (RFC 9110 §7.6.1) and
/// the message's framing, which the proxy sets for each side itself, and
/// `Host`, which is the authority the request was routed by (and stands
/// as `:authority` for an HTTP/2 upstream).
const UNTOUCHABLE: [&str; 9] = [
    "connection",
    "keep-alive",
    "proxy-connection",
    "transfer-encoding",
    "content-length",
    "te",
    "trailer",
    "upgrade",
    "host",
];

/// What a header value may name, written `$name`; `$$` is a `$`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Var {
    ClientIp,
    RequestId,
    Color,
    Host,
    Scheme,
}

const VARS: [(&str, Var); 5] = [
    ("client_ip", Var::ClientIp),
    ("request_id", Var::RequestId),
    ("color", Var::Color),
    ("host", Var::Host),
    ("scheme", Var::Scheme),
];

#[derive(Debug, Clone, PartialEq)]
enum Piece {
    Text(String),
    Var(Var),
}

/// A header value as written, with its variables found; one without any
/// is a ready [`HeaderValue`].
#[derive(Debug, Clone, PartialEq)]
pub struct Template {
    pub text: String,
    fixed: Option<HeaderValue>,
    pieces: Vec<Piece>,
}

/// The values of the variables for one request.
#[derive(Debug, Clone)]
pub struct Vars {
    pub client_ip: IpAddr,
    pub request_id: Option<HeaderValue>,
    pub color: Color,
    pub host: Option<HeaderValue>,
    pub tls: bool,
}

impl Template {
    fn parse(key: &str, text: &str, errs: &mut Errors) -> Option<Template> {
        let mut pieces = Vec::new();
        let mut lit = String::new();
        let mut rest = text;
        while let Some(i) = rest.find('$') {
            lit.push_str(&rest[..i]);
            rest = &rest[i + 1..];
            if let Some(after) = rest.strip_prefix('$') {
                lit.push('$');
                rest = after;
                continue;
            }
            let end = rest
                .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
                .unwrap_or(rest.len());
            let Some((_, var)) = VARS.iter().find(|(n, _)| *n == &rest[..end]) else {
                errs.push(
                    key,
                    format!(
                        "${} is no variable: the variables are $client_ip, $request_id, $color, $host and $scheme ($$ is a $)",
                        &rest[..end]
                    ),
                );
                return None;
            };
            if !lit.is_empty() {
                pieces.push(Piece::Text(std::mem::take(&mut lit)));
            }
            pieces.push(Piece::Var(*var));
            rest = &rest[end..];
        }
        lit.push_str(rest);
        if HeaderValue::from_str(&lit).is_err() {
            errs.push(key, format!("{text:?} is not a valid header value"));
            return None;
        }
        let fixed = pieces
            .is_empty()
            .then(|| HeaderValue::from_str(&lit).ok())
            .flatten();
        if !lit.is_empty() {
            pieces.push(Piece::Text(lit));
        }
        Some(Template {
            text: text.to_string(),
            fixed,
            pieces,
        })
    }

    /// The value for one request (`None`: a variable's value made it no
    /// header value, which the variables' values cannot).
    fn value(&self, vars: &Vars) -> Option<HeaderValue> {
        if let Some(v) = &self.fixed {
            return Some(v.clone());
        }
        let mut out = Vec::with_capacity(self.text.len() + 32);
        for p in &self.pieces {
            match p {
                Piece::Text(t) => out.extend_from_slice(t.as_bytes()),
                Piece::Var(Var::ClientIp) => {
                    out.extend_from_slice(vars.client_ip.to_string().as_bytes())
                }
                Piece::Var(Var::RequestId) => out
                    .extend_from_slice(vars.request_id.as_ref().map_or(&b""[..], |v| v.as_bytes())),
                Piece::Var(Var::Color) => out.extend_from_slice(vars.color.to_string().as_bytes()),
                Piece::Var(Var::Host) => {
                    out.extend_from_slice(vars.host.as_ref().map_or(&b""[..], |v| v.as_bytes()))
                }
                Piece::Var(Var::Scheme) => {
                    out.extend_from_slice(if vars.tls { b"https" } else { b"http" })
                }
            }
        }
        HeaderValue::from_bytes(&out).ok()
    }
}

/// `request_headers` or `response_headers`: fields removed, then set
/// (replacing every field of the name), then added (beside any there).
#[derive(Debug, Clone, PartialEq, Default)]
pub struct HeaderRules {
    pub remove: Vec<HeaderName>,
    pub set: Vec<(HeaderName, Template)>,
    pub add: Vec<(HeaderName, Template)>,
}

impl HeaderRules {
    /// Edit `h` for one request.
    pub fn apply(&self, h: &mut HeaderMap, vars: &Vars) {
        for name in &self.remove {
            h.remove(name);
        }
        for (name, t) in &self.set {
            if let Some(v) = t.value(vars) {
                h.insert(name.clone(), v);
            }
        }
        for (name, t) in &self.add {
            if let Some(v) = t.value(vars) {
                h.append(name.clone(), v);
            }
        }
    }
}

/// `KEY = { set, add, remove }`. `own`: the field name cutover writes
/// itself (the request id's), which no rule may touch either.
pub(crate) fn header_rules(
    key: &str,
    raw: &RawHeaderRules,
    own: Option<&HeaderName>,
    errs: &mut Errors,
) -> HeaderRules {
    let name_of = |k: String, n: &str, errs: &mut Errors| -> Option<HeaderName> {
        let Ok(name) = HeaderName::from_bytes(n.as_bytes()) else {
            errs.push(k, format!("{n:?} is not a header field name"));
            return None;
        };
        if UNTOUCHABLE.contains(&name.as_str()) {
            errs.push(
                k,
                format!("{name} cannot be changed: cutover sets it for each connection itself"),
            );
            return None;
        }
        if Some(&name) == own {
            errs.push(
                k,
                format!("{name} is the request id's field (server.request_id_header), which cutover sets itself"),
            );
            return None;
        }
        Some(name)
    };
    let remove = raw
        .remove
        .iter()
        .enumerate()
        .filter_map(|(i, n)| name_of(format!("{key}.remove[{i}]"), n, errs))
        .collect();
    let pairs =
        |table: &str, map: &std::collections::BTreeMap<String, String>, errs: &mut Errors| {
            map.iter()
                .filter_map(|(n, v)| {
                    let k = format!("{key}.{table}.{n}");
                    let name = name_of(k.clone(), n, errs)?;
                    Some((name, Template::parse(&k, v, errs)?))
                })
                .collect()
        };
    let set = pairs("set", &raw.set, errs);
    let add = pairs("add", &raw.add, errs);
    HeaderRules { remove, set, add }
}

/// An app's header rules: its own table, or else `[server]`'s (a table of
/// its own replaces the server's whole, as nginx's `proxy_set_header` and
/// `add_header` of a `location` replace the `server` block's). An empty
/// table is no rules: `None`, which costs a request nothing.
pub(crate) fn app_header_rules(
    key: &str,
    raw: Option<&RawHeaderRules>,
    server: &Option<Arc<HeaderRules>>,
    own: Option<&HeaderName>,
    errs: &mut Errors,
) -> Option<Arc<HeaderRules>> {
    match raw {
        None => server.clone(),
        Some(raw) => {
            let rules = header_rules(key, raw, own, errs);
            (rules != HeaderRules::default()).then(|| Arc::new(rules))
        }
    }
}

/// `strip_prefix` and `rewrite`: how the path a request routed by becomes
/// the one sent upstream.
#[derive(Debug, Clone)]
pub struct PathRewrite {
    /// `strip_prefix = true`: the app's `path_prefix`, removed first.
    pub strip: Option<String>,
    /// Tried in order on the path (after `strip`); the first that matches
    /// gives the path.
    pub rules: Vec<RewriteRule>,
}

#[derive(Debug, Clone)]
pub struct RewriteRule {
    pub from: Regex,
    pub to: String,
}

impl PartialEq for PathRewrite {
    fn eq(&self, other: &PathRewrite) -> bool {
        self.strip == other.strip
            && self.rules.len() == other.rules.len()
            && self
                .rules
                .iter()
                .zip(&other.rules)
                .all(|(a, b)| a.from.as_str() == b.from.as_str() && a.to == b.to)
    }
}

/// A rewritten path that is no path a client could have sent: the rule's
/// fault, answered 500.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BadRewrite;

impl fmt::Display for BadRewrite {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a rewrite made a path that is no path")
    }
}

impl PathRewrite {
    /// The path to send for `path` (normalized, as routing saw it):
    /// `Ok(None)` when it stays as it is.
    pub fn apply(&self, path: &str) -> Result<Option<String>, BadRewrite> {
        let mut out: Option<String> = None;
        if let Some(prefix) = &self.strip {
            let rest = path.get(prefix.len()..).unwrap_or("");
            out = Some(if rest.starts_with('/') {
                rest.to_string()
            } else {
                format!("/{rest}")
            });
        }
        let current = out.as_deref().unwrap_or(path);
        for rule in &self.rules {
            if let Some(caps) = rule.from.captures(current) {
                let mut new = String::new();
                caps.expand(&rule.to, &mut new);
                if !client_like(&new) {
                    return Err(BadRewrite);
                }
                return Ok(Some(new));
            }
        }
        Ok(out)
    }
}

/// Is `p` a path as a client's would be once checked: absolute, in the
/// characters of a path (RFC 3986 §3.3), with no dot segments and nothing
/// a server could read two ways (`\`, `%5c`, `..;`)?
fn client_like(p: &str) -> bool {
    p.starts_with('/')
        && p.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-._~!$&'()*+,;=:@/%".contains(&b))
        && !p.contains('\\')
        && !p.to_ascii_lowercase().contains("%5c")
        && !p.split('/').any(|seg| {
            let s = seg.split(';').next().unwrap_or("").to_ascii_lowercase();
            s == "." || s == ".." || s == "%2e" || s == "%2e%2e" || s == ".%2e" || s == "%2e."
        })
}

/// `strip_prefix` and `rewrite` of `[apps.NAME]`; `None` when neither is
/// set.
pub(crate) fn path_rewrite(
    key: &str,
    path_prefix: &str,
    strip_prefix: bool,
    raw: &[RawRewrite],
    errs: &mut Errors,
) -> Option<Arc<PathRewrite>> {
    let rules: Vec<RewriteRule> = raw
        .iter()
        .enumerate()
        .filter_map(|(i, r)| rewrite_rule(&format!("{key}.rewrite[{i}]"), r, errs))
        .collect();
    // A prefix of "/" strips nothing.
    let strip = (strip_prefix && path_prefix != "/").then(|| path_prefix.to_string());
    (strip.is_some() || !rules.is_empty()).then(|| Arc::new(PathRewrite { strip, rules }))
}

/// One `{ from, to }`: `from` compiles, `to` starts with `/` and names
/// only groups `from` has, and what it writes itself is path text.
fn rewrite_rule(key: &str, raw: &RawRewrite, errs: &mut Errors) -> Option<RewriteRule> {
    let from = match Regex::new(&raw.from) {
        Ok(re) => re,
        Err(e) => {
            errs.push(format!("{key}.from"), format!("not a regex: {e}"));
            return None;
        }
    };
    let k = format!("{key}.to");
    if !raw.to.starts_with('/') {
        errs.push(&k, format!("must start with '/', got {:?}", raw.to));
        return None;
    }
    // Checked with each group standing for "x": a `to` whose own text is
    // no path is refused now, not at the first request.
    let mut probe = String::new();
    let mut rest = raw.to.as_str();
    while let Some(i) = rest.find('$') {
        probe.push_str(&rest[..i]);
        rest = &rest[i + 1..];
        if let Some(after) = rest.strip_prefix('$') {
            probe.push('$');
            rest = after;
            continue;
        }
        let (name, after) = if let Some(braced) = rest.strip_prefix('{') {
            match braced.find('}') {
                Some(j) => (&braced[..j], &braced[j + 1..]),
                None => (braced, ""),
            }
        } else {
            let end = rest
                .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
                .unwrap_or(rest.len());
            (&rest[..end], &rest[end..])
        };
        let known = match name.parse::<usize>() {
            Ok(n) => n < from.captures_len(),
            Err(_) => from.capture_names().flatten().any(|g| g == name),
        };
        if !known {
            errs.push(
                &k,
                format!("${name} names no group of from (write ${{1}} before a letter or digit)"),
            );
            return None;
        }
        probe.push('x');
        rest = after;
    }
    probe.push_str(rest);
    if !client_like(&probe) {
        errs.push(
            &k,
            format!(
                "{:?} is not a path (no dot segments, '?', '#', spaces or backslashes)",
                raw.to
            ),
        );
        return None;
    }
    Some(RewriteRule {
        from,
        to: raw.to.clone(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rewrite(strip: Option<&str>, rules: &[(&str, &str)]) -> PathRewrite {
        PathRewrite {
            strip: strip.map(str::to_string),
            rules: rules
                .iter()
                .map(|(f, t)| RewriteRule {
                    from: Regex::new(f).unwrap(),
                    to: t.to_string(),
                })
                .collect(),
        }
    }

    #[test]
    fn strip_prefix_removes_the_prefix_and_an_empty_path_becomes_slash() {
        let r = rewrite(Some("/api"), &[]);
        assert_eq!(r.apply("/api/users"), Ok(Some("/users".into())));
        assert_eq!(r.apply("/api"), Ok(Some("/".into())));
        assert_eq!(r.apply("/api/"), Ok(Some("/".into())));
        let r = rewrite(Some("/api/"), &[]);
        assert_eq!(r.apply("/api/users"), Ok(Some("/users".into())));
    }

    #[test]
    fn the_first_rule_that_matches_gives_the_path() {
        let r = rewrite(
            None,
            &[
                ("^/old/(.*)$", "/new/$1"),
                ("^/old/x$", "/never"),
                ("^/a/(?P<rest>.*)$", "/b/${rest}"),
            ],
        );
        assert_eq!(r.apply("/old/x"), Ok(Some("/new/x".into())));
        assert_eq!(r.apply("/a/y"), Ok(Some("/b/y".into())));
        assert_eq!(r.apply("/other"), Ok(None));
        // After the prefix is gone.
        let r = rewrite(Some("/api"), &[("^/v1/(.*)$", "/v2/$1")]);
        assert_eq!(r.apply("/api/v1/z"), Ok(Some("/v2/z".into())));
    }

    #[test]
    fn a_rewritten_path_no_client_could_send_is_refused() {
        let r = rewrite(None, &[("^/go/(.*)$", "/$1")]);
        assert_eq!(r.apply("/go/../etc"), Err(BadRewrite));
        assert_eq!(r.apply("/go/%5c"), Err(BadRewrite));
        assert_eq!(r.apply("/go/ok"), Ok(Some("/ok".into())));
    }

    #[test]
    fn a_template_expands_its_variables() {
        let mut errs = Errors::default();
        let t = Template::parse("k", "$scheme://$host/ $color $$ $request_id", &mut errs).unwrap();
        let vars = Vars {
            client_ip: "192.0.2.1".parse().unwrap(),
            request_id: Some(HeaderValue::from_static("r1")),
            color: Color::Green,
            host: Some(HeaderValue::from_static("a.test")),
            tls: true,
        };
        assert_eq!(t.value(&vars).unwrap(), "https://a.test/ green $ r1");
        assert!(Template::parse("k", "$nope", &mut errs).is_none());
        assert!(
            errs.0[0].to_string().starts_with("k: $nope is no variable"),
            "{errs:?}"
        );
    }
}
