//! `[apps.NAME]`'s and `[server]`'s keys for what an app changes in what
//! it passes — its own limits, header rules, path rewriting — checked and
//! turned into [`super::edits`]' values, each error naming its key.

use std::sync::Arc;

use http::HeaderName;
use regex::Regex;

use super::edits::{client_like, AppLimits, HeaderRules, PathRewrite, RewriteRule, Template};
use super::error::Errors;
use super::raw::{RawApp, RawDuration, RawHeaderRules, RawRewrite};
use super::types::ServerSettings;
use super::values::{int_range, positive_duration};

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
