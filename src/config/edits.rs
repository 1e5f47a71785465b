//! What an app changes in the requests and answers it passes, beside
//! routing them, as typed values and as the request path applies them:
//! its own limits for one request, its header rules ([`HeaderRules`]) and
//! its path rewriting ([`PathRewrite`]). Built from the config's keys by
//! `app_edits.rs`; an app without any costs a request one pointer test.

use std::fmt;
use std::net::IpAddr;
use std::time::Duration;

use http::{HeaderMap, HeaderName, HeaderValue};
use regex::Regex;

use super::error::Errors;
use crate::model::Color;

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
    pub(crate) fn parse(key: &str, text: &str, errs: &mut Errors) -> Option<Template> {
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
pub(crate) fn client_like(p: &str) -> bool {
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
