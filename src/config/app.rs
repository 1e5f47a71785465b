//! `[apps.NAME]`: an app's hosts, split, stickiness, compression, rules,
//! its own answers (redirect, HSTS, Retry-After, error pages) and its
//! shadow traffic. Its pools are [`super::pool`]'s.

use std::collections::{BTreeMap, HashMap};
use std::path::Path;

use http::HeaderValue;

use super::access::{access, rate_limit};
use super::error::{ConfigError, Errors};
use super::json_path::JsonPath;
use super::pool::pool;
use super::raw::{RawApp, RawDuration, RawMirror};
use super::rule::Rule;
use super::types::*;
use super::values::{
    color, duration, host_pattern, hsts, int_range, media_range, page_type, percent,
    positive_duration,
};
use crate::model::{Compared, RuleSpec};

pub fn build_app(
    name: String,
    raw: RawApp,
    defaults: &OwnAnswers,
    server: &ServerSettings,
    base: &Path,
    errs: &mut Errors,
    warnings: &mut Vec<String>,
) -> AppConfig {
    let key = format!("apps.{name}");
    if name.is_empty()
        || !name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
    {
        errs.push(&key, "app names may hold only letters, digits, '-' and '_'");
    }
    let hosts = raw
        .hosts
        .iter()
        .enumerate()
        .filter_map(|(i, h)| host_pattern(&format!("{key}.hosts[{i}]"), h, errs))
        .collect();
    if !raw.path_prefix.starts_with('/') {
        errs.push(
            format!("{key}.path_prefix"),
            format!("must start with '/', got {:?}", raw.path_prefix),
        );
    }
    percent(&format!("{key}.standby_percent"), raw.standby_percent, errs);
    let drain_timeout = raw
        .drain_timeout
        .as_ref()
        .map(|d| duration(&format!("{key}.drain_timeout"), d, errs));
    let compress = compression(&key, &raw, errs, warnings);
    let edits = super::app_edits::app_edits(&key, &raw, server, errs);
    let pools = [
        pool(&format!("{key}.blue"), raw.blue, base, errs, warnings),
        pool(&format!("{key}.green"), raw.green, base, errs, warnings),
    ];
    compile_rules_into(&key, &raw.rules, errs);
    let own = RawAnswers {
        redirect_https: raw.redirect_https,
        hsts: raw.hsts,
        retry_after: raw.retry_after,
        error_pages: raw.error_pages,
    };
    let mut answers = answers(&key, own, defaults, base, errs);
    answers.allow_connect = raw.allow_connect;
    let access = access(&key, &raw.allow, &raw.deny, raw.basic_auth, base, errs);
    let rate_limit = raw
        .rate_limit
        .and_then(|r| rate_limit(&format!("{key}.rate_limit"), r.into(), errs));
    AppConfig {
        hosts,
        live: color(&format!("{key}.live"), &raw.live, errs),
        standby_percent: raw.standby_percent,
        sticky: sticky(&format!("{key}.sticky"), &raw.sticky, errs),
        drain_timeout,
        compress,
        pools,
        rules: raw.rules,
        answers,
        mirror: mirror(&format!("{key}.mirror"), raw.mirror, errs),
        access,
        rate_limit,
        limits: edits.limits,
        request_headers: edits.request_headers,
        response_headers: edits.response_headers,
        paths: edits.paths,
        guard: match raw.guard.as_deref().map(crate::model::guard_window) {
            None => DEFAULT_GUARD,
            Some(Ok(d)) => d,
            Some(Err(e)) => {
                errs.push(format!("{key}.guard"), e);
                DEFAULT_GUARD
            }
        },
        guard_max_slow: match raw.guard_max_slow.as_deref() {
            None => Some(crate::model::DEFAULT_GUARD_MAX_SLOW),
            Some(text) => crate::model::guard_max_slow(text).unwrap_or_else(|e| {
                errs.push(format!("{key}.guard_max_slow"), e);
                None
            }),
        },
        path_prefix: raw.path_prefix,
        name,
    }
}

/// `[apps.NAME.mirror]`; an absent table is every default.
fn mirror(key: &str, raw: RawMirror, errs: &mut Errors) -> MirrorConfig {
    percent(&format!("{key}.percent"), raw.percent, errs);
    let d = MirrorConfig::default();
    let methods = match raw.methods {
        None => d.methods.clone(),
        Some(list) => mirror_methods(key, &list, errs),
    };
    let compared = match raw.compare {
        None => d.compared(),
        Some(list) => compare(&format!("{key}.compare"), &list, errs),
    };
    let ignore_json_fields = (raw.ignore_json_fields.iter().enumerate())
        .filter_map(|(i, p)| match JsonPath::parse(p) {
            Ok(p) => Some(p),
            Err(why) => {
                errs.push(format!("{key}.ignore_json_fields[{i}]"), why);
                None
            }
        })
        .collect();
    let ignore_headers = (raw.ignore_headers.iter().enumerate())
        .filter_map(|(i, h)| match http::HeaderName::from_bytes(h.as_bytes()) {
            Ok(h) => Some(h),
            Err(_) => {
                let why = format!("{h:?} is not a header field name");
                errs.push(format!("{key}.ignore_headers[{i}]"), why);
                None
            }
        })
        .collect();
    let d = d.with_compared(&compared);
    MirrorConfig {
        percent: raw.percent,
        methods,
        max_body: int_range(&format!("{key}.max_body"), raw.max_body, 0, 1 << 30, errs) as u64,
        compare_body: d.compare_body,
        compare_headers: d.compare_headers,
        ignore_json_fields,
        ignore_headers,
        timeout: positive_duration(&format!("{key}.timeout"), &raw.timeout, errs),
        max_in_flight: int_range(
            &format!("{key}.max_in_flight"),
            raw.max_in_flight,
            1,
            100_000,
            errs,
        ) as u64,
    }
}

fn mirror_methods(key: &str, list: &[String], errs: &mut Errors) -> Vec<http::Method> {
    if list.is_empty() {
        errs.push(
            format!("{key}.methods"),
            "an empty list copies nothing: set percent = 0 instead",
        );
    }
    let mut out: Vec<http::Method> = Vec::new();
    for (i, m) in list.iter().enumerate() {
        let k = format!("{key}.methods[{i}]");
        match mirror_method(m) {
            Ok(m) if !out.contains(&m) => out.push(m),
            Ok(_) => errs.push(&k, format!("{m:?} is listed twice")),
            Err(why) => errs.push(&k, why),
        }
    }
    out
}

/// `compare`: `"status"` (which must be there: status classes are always
/// compared), `"body"`, `"headers"`.
fn compare(k: &str, list: &[String], errs: &mut Errors) -> Vec<Compared> {
    let mut out = Vec::new();
    for (i, c) in list.iter().enumerate() {
        match Compared::parse(c) {
            Some(c) if !out.contains(&c) => out.push(c),
            Some(_) => errs.push(format!("{k}[{i}]"), format!("{c:?} is listed twice")),
            None => errs.push(
                format!("{k}[{i}]"),
                format!("must be \"status\", \"body\" or \"headers\", got {c:?}"),
            ),
        }
    }
    if !list.iter().any(|c| c == "status") {
        errs.push(
            k,
            "status classes are always compared: write [\"status\"] or [\"status\", \"body\"]",
        );
    }
    out
}

/// A method `methods` may list: a token as the request line carries it
/// (methods are case-sensitive, RFC 9110 §9.1), never `CONNECT`, whose
/// tunnel has no answer to compare.
fn mirror_method(m: &str) -> Result<http::Method, String> {
    let method = http::Method::from_bytes(m.as_bytes())
        .map_err(|_| format!("{m:?} is not a method like \"GET\" or \"POST\""))?;
    if method == http::Method::CONNECT {
        return Err("CONNECT opens a tunnel and is never copied".into());
    }
    let upper = m.to_ascii_uppercase();
    if m != upper
        && http::Method::from_bytes(upper.as_bytes()).is_ok_and(|u| {
            matches!(
                u,
                http::Method::GET
                    | http::Method::HEAD
                    | http::Method::POST
                    | http::Method::PUT
                    | http::Method::DELETE
                    | http::Method::OPTIONS
                    | http::Method::PATCH
                    | http::Method::TRACE
            )
        })
    {
        return Err(format!(
            "methods are case-sensitive: {m:?} is not {upper:?}, which is what clients send"
        ));
    }
    Ok(method)
}

/// The keys of [`OwnAnswers`] as `[server]` and `[apps.NAME]` both have
/// them; `None` takes the defaults' value.
pub struct RawAnswers {
    pub redirect_https: Option<bool>,
    pub hsts: Option<String>,
    pub retry_after: Option<RawDuration>,
    pub error_pages: BTreeMap<String, String>,
}

/// The answers of `key` (`server` or `apps.NAME`): each of its keys, or
/// `defaults`' value where it has none; an error page per status.
pub fn answers(
    key: &str,
    raw: RawAnswers,
    defaults: &OwnAnswers,
    base: &Path,
    errs: &mut Errors,
) -> OwnAnswers {
    let hsts = match raw.hsts {
        None => defaults.hsts.clone(),
        Some(v) => hsts(&format!("{key}.hsts"), &v, errs),
    };
    let retry_after = match raw.retry_after {
        None => defaults.retry_after.clone(),
        Some(v) => {
            let d = duration(&format!("{key}.retry_after"), &v, errs);
            // Whole seconds, rounded up: `Retry-After` has no fractions
            // (RFC 9110 §10.2.3).
            let secs = d.as_secs() + u64::from(d.subsec_nanos() > 0);
            (secs > 0).then(|| HeaderValue::from(secs))
        }
    };
    let mut pages = defaults.pages.clone();
    for (status, file) in raw.error_pages {
        error_page(key, &status, &file, &mut pages, base, errs);
    }
    OwnAnswers {
        redirect_https: raw.redirect_https.unwrap_or(defaults.redirect_https),
        https_port: defaults.https_port,
        hsts,
        retry_after,
        pages,
        allow_connect: defaults.allow_connect,
    }
}

/// `error_pages.STATUS = FILE`: the file read now into `pages`.
fn error_page(
    key: &str,
    status: &str,
    file: &str,
    pages: &mut ErrorPages,
    base: &Path,
    errs: &mut Errors,
) {
    let k = format!("{key}.error_pages.{status}");
    let Some(i) = PAGE_STATUSES.iter().position(|s| s.to_string() == status) else {
        errs.push(&k, "only 404, 502, 503 and 504 can be replaced by a page");
        return;
    };
    if status == "404" && key != "server" {
        // cutover answers 404 itself only when no app matched.
        errs.push(
            &k,
            "an app's requests never get cutover's own 404: set it in [server.error_pages]",
        );
        return;
    }
    let path = base.join(file);
    match std::fs::read(&path) {
        Ok(body) => {
            pages.0[i] = Some(ErrorPage {
                content_type: page_type(&path),
                body: body.into(),
                path,
            })
        }
        Err(e) => errs.push(&k, format!("cannot read {}: {e}", path.display())),
    }
}

/// `compress`, `compress_types`, `compress_min_length` of `[apps.NAME]`.
/// The last two are checked even while compression is off, so that turning
/// it on cannot reveal an old mistake.
fn compression(
    key: &str,
    raw: &RawApp,
    errs: &mut Errors,
    warnings: &mut Vec<String>,
) -> Option<Compression> {
    let types = match &raw.compress_types {
        None => Compression::DEFAULT_TYPES
            .iter()
            .map(|t| t.to_string())
            .collect(),
        Some(list) => {
            if list.is_empty() {
                errs.push(
                    format!("{key}.compress_types"),
                    "an empty list compresses nothing: leave compress = false instead",
                );
            }
            list.iter()
                .enumerate()
                .filter_map(|(i, t)| media_range(&format!("{key}.compress_types[{i}]"), t, errs))
                .collect()
        }
    };
    let min_length = match raw.compress_min_length {
        None => Compression::DEFAULT_MIN_LENGTH,
        Some(n) => int_range(&format!("{key}.compress_min_length"), n, 0, i64::MAX, errs) as u64,
    };
    if raw.compress {
        return Some(Compression { types, min_length });
    }
    if raw.compress_types.is_some() || raw.compress_min_length.is_some() {
        warnings.push(format!(
            "{key}: compress_types and compress_min_length have no effect without compress = true"
        ));
    }
    None
}

/// Validates and compiles an app's rules; `app_key` is `apps.NAME`.
/// Used for the config, the state file and `PUT /v1/apps/{app}/rules` alike.
pub fn compile_rules(app_key: &str, specs: &[RuleSpec]) -> Result<Vec<Rule>, Vec<String>> {
    let mut errs = Errors::default();
    let rules = compile_rules_into(app_key, specs, &mut errs);
    if errs.is_empty() {
        Ok(rules)
    } else {
        Err(errs.0.iter().map(ConfigError::to_string).collect())
    }
}

/// [`compile_rules`], its errors added to `errs`.
fn compile_rules_into(app_key: &str, specs: &[RuleSpec], errs: &mut Errors) -> Vec<Rule> {
    let mut out = Vec::with_capacity(specs.len());
    let mut names: HashMap<&str, usize> = HashMap::new();
    for (i, spec) in specs.iter().enumerate() {
        let key = format!("{app_key}.rules[{i}]");
        if spec.name.is_empty() {
            errs.push(format!("{key}.name"), "must not be empty");
        } else if let Some(j) = names.insert(&spec.name, i) {
            errs.push(
                format!("{key}.name"),
                format!("{:?} is already the name of rules[{j}]", spec.name),
            );
        }
        // Checked here rather than in `Rule::compile`, by the function that
        // checks an app's, so that both say the same about the same keys.
        let limit = (spec.rate_limit.clone())
            .and_then(|r| rate_limit(&format!("{key}.rate_limit"), r, errs));
        match Rule::compile(spec) {
            Ok(mut rule) => {
                rule.rate_limit = limit;
                out.push(rule);
            }
            Err(list) => {
                for (field, msg) in list {
                    errs.push(format!("{key}.{field}"), msg);
                }
            }
        }
    }
    out
}

/// No two apps serve the same host (or the catch-all) and path prefix.
pub fn check_overlaps(apps: &[AppConfig], errs: &mut Errors) {
    let mut seen: HashMap<(Option<&HostPattern>, &str), &str> = HashMap::new();
    for app in apps {
        let hosts: Vec<Option<&HostPattern>> = if app.hosts.is_empty() {
            vec![None]
        } else {
            app.hosts.iter().map(Some).collect()
        };
        for h in hosts {
            if let Some(other) = seen.insert((h, app.path_prefix.as_str()), &app.name) {
                let what = h
                    .map(|h| format!("host {h}"))
                    .unwrap_or_else(|| "the catch-all (no hosts)".into());
                errs.push(
                    format!("apps.{}", app.name),
                    format!(
                        "{what} with path_prefix {:?} is already served by apps.{other}",
                        app.path_prefix
                    ),
                );
            }
        }
    }
}

fn sticky(key: &str, s: &str, errs: &mut Errors) -> Sticky {
    if let Some(name) = s.strip_prefix("cookie:") {
        if !name.is_empty()
            && name
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b))
        {
            return Sticky::Cookie(name.to_string());
        }
    } else if let Some(name) = s.strip_prefix("header:") {
        if let Ok(h) = http::HeaderName::from_bytes(name.as_bytes()) {
            return Sticky::Header(h);
        }
    } else if s == "ip" {
        return Sticky::Ip;
    } else if s == "none" {
        return Sticky::None;
    }
    errs.push(
        key,
        format!("must be \"cookie:NAME\", \"header:NAME\", \"ip\" or \"none\", got {s:?}"),
    );
    Sticky::None
}
