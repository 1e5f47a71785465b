//! One raw value → one typed value, each error naming its key: the
//! conversions the other `validate` files share. Nothing here looks at a
//! second key, reads a file or asks DNS.

use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use http::HeaderValue;

use super::error::Errors;
use super::raw::RawDuration;
use super::types::HostPattern;
use crate::model::Color;

/// The longest any duration key may be. Longer is a typo, or a way of
/// saying "never" that a deadline (`Instant` + it) cannot be computed
/// from; no timeout or period of a proxy needs more.
const MAX_DURATION: Duration = Duration::from_secs(86_400);

/// A duration key where `0s` has a meaning of its own (the key's doc says
/// which): from 0 to [`MAX_DURATION`].
pub fn duration(key: &str, d: &RawDuration, errs: &mut Errors) -> Duration {
    bounded_duration(key, d, true, errs)
}

/// A timeout or a period, which `0s` cannot work as (every request would
/// time out, a timer would spin): above 0, at most [`MAX_DURATION`].
pub fn positive_duration(key: &str, d: &RawDuration, errs: &mut Errors) -> Duration {
    bounded_duration(key, d, false, errs)
}

fn bounded_duration(key: &str, d: &RawDuration, zero_allowed: bool, errs: &mut Errors) -> Duration {
    let text = &d.text;
    let value = match &d.value {
        Ok(v) => *v,
        Err(e) => {
            errs.push(
                key,
                format!("{text:?} is not a duration like \"250ms\", \"2s\" or \"5m\" ({e})"),
            );
            return Duration::ZERO;
        }
    };
    if value.is_zero() && !zero_allowed {
        errs.push(key, format!("must be longer than 0s, got {text:?}"));
    } else if value > MAX_DURATION {
        errs.push(
            key,
            format!("must be at most 1 day (\"24h\"), got {text:?}"),
        );
    }
    value
}

/// An integer key in `min..=max`.
pub fn int_range(key: &str, v: i64, min: i64, max: i64, errs: &mut Errors) -> i64 {
    if !(min..=max).contains(&v) {
        errs.push(key, format!("must be between {min} and {max}, got {v}"));
        return min;
    }
    v
}

pub fn percent(key: &str, p: f64, errs: &mut Errors) {
    if !(0.0..=100.0).contains(&p) {
        errs.push(key, format!("must be between 0 and 100, got {p}"));
    }
}

pub fn color(key: &str, s: &str, errs: &mut Errors) -> Color {
    Color::parse(s).unwrap_or_else(|| {
        errs.push(key, format!("must be \"blue\" or \"green\", got {s:?}"));
        Color::Blue
    })
}

/// One of `choices` (the TOML spelling and its value), or an error listing
/// them and the first choice.
pub fn one_of<T: Copy>(key: &str, s: &str, choices: &[(&str, T)], errs: &mut Errors) -> T {
    if let Some((_, v)) = choices.iter().find(|(name, _)| *name == s) {
        return *v;
    }
    let names: Vec<String> = choices.iter().map(|(n, _)| format!("{n:?}")).collect();
    let list = match names.split_last() {
        Some((last, [])) => last.clone(),
        Some((last, rest)) => format!("{} or {last}", rest.join(", ")),
        None => String::new(),
    };
    errs.push(key, format!("must be {list}, got {s:?}"));
    choices[0].1
}

/// `IP:PORT` for a listener, or `localhost:PORT` (127.0.0.1). Host names
/// are not looked up here: validation asks no DNS.
pub fn listen_addr(key: &str, s: &str, errs: &mut Errors) -> Option<SocketAddr> {
    if let Ok(a) = s.parse::<SocketAddr>() {
        return Some(a);
    }
    match s.rsplit_once(':') {
        Some((host, port)) if host.eq_ignore_ascii_case("localhost") => {
            if let Ok(port) = port.parse::<u16>() {
                return Some(SocketAddr::from(([127, 0, 0, 1], port)));
            }
        }
        _ => {}
    }
    errs.push(
        key,
        format!("{s:?} is not an address like \"127.0.0.1:8080\", \"[::1]:8080\" or \"localhost:8080\" (a listener's host name is not looked up)"),
    );
    None
}

pub fn listen_addrs(key: &str, list: &[String], errs: &mut Errors) -> Vec<SocketAddr> {
    list.iter()
        .enumerate()
        .filter_map(|(i, a)| listen_addr(&format!("{key}[{i}]"), a, errs))
        .collect()
}

/// CIDR networks (`10.0.0.0/8`) or single addresses (`192.0.2.1`).
pub fn networks(key: &str, list: &[String], errs: &mut Errors) -> Vec<ipnet::IpNet> {
    list.iter()
        .enumerate()
        .filter_map(|(i, s)| {
            let net = s
                .parse::<ipnet::IpNet>()
                .ok()
                .or_else(|| s.parse::<std::net::IpAddr>().ok().map(ipnet::IpNet::from));
            if net.is_none() {
                errs.push(
                    format!("{key}[{i}]"),
                    format!("not a network (CIDR) or an address: {s:?}"),
                );
            }
            net.map(|n| n.trunc())
        })
        .collect()
}

pub fn host_pattern(key: &str, h: &str, errs: &mut Errors) -> Option<HostPattern> {
    let lower = h.to_ascii_lowercase();
    let (wild, name) = match lower.strip_prefix("*.") {
        Some(rest) => (true, rest.to_string()),
        None => (false, lower),
    };
    let ok = !name.is_empty()
        && name.split('.').all(|label| {
            !label.is_empty()
                && label
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        });
    if !ok {
        errs.push(
            key,
            format!("{h:?} is not a host name or a \"*.\" wildcard"),
        );
        return None;
    }
    Some(if wild {
        HostPattern::Wildcard(name)
    } else {
        HostPattern::Exact(name)
    })
}

/// A `Strict-Transport-Security` value: `max-age=N` first (RFC 6797
/// §6.1.1), then any other directives.
pub fn hsts(key: &str, v: &str, errs: &mut Errors) -> Option<HeaderValue> {
    let first = v.split(';').next().unwrap_or("").trim();
    let age = first
        .get(..8)
        .filter(|p| p.eq_ignore_ascii_case("max-age="))
        .map(|_| first[8..].trim_matches('"'));
    if !age.is_some_and(|a| !a.is_empty() && a.bytes().all(|b| b.is_ascii_digit())) {
        errs.push(
            key,
            format!("must start with max-age=SECONDS, like \"max-age=31536000; includeSubDomains\", got {v:?}"),
        );
        return None;
    }
    match HeaderValue::from_str(v.trim()) {
        Ok(h) => Some(h),
        Err(_) => {
            errs.push(key, format!("{v:?} is not a valid header value"));
            None
        }
    }
}

/// A page's `Content-Type`, from its file's extension.
pub fn page_type(path: &Path) -> HeaderValue {
    let ext = path
        .extension()
        .and_then(|e| e.to_str())
        .map(str::to_ascii_lowercase);
    HeaderValue::from_static(match ext.as_deref() {
        Some("html" | "htm") => "text/html; charset=utf-8",
        Some("json") => "application/json",
        _ => "text/plain; charset=utf-8",
    })
}

/// A media type or range for `compress_types`: `type/subtype`, `type/*` or
/// `*/*`, without parameters; kept lowercase (media types are
/// case-insensitive, RFC 9110 §8.3.1).
pub fn media_range(key: &str, t: &str, errs: &mut Errors) -> Option<String> {
    let t = t.trim().to_ascii_lowercase();
    let token = |s: &str| {
        !s.is_empty()
            && s.bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"!#$&-^_.+".contains(&b))
    };
    let ok = match t.split_once('/') {
        Some(("*", "*")) => true,
        Some((ty, "*")) => token(ty),
        Some((ty, sub)) => token(ty) && token(sub),
        None => false,
    };
    if ok {
        Some(t)
    } else {
        errs.push(
            key,
            format!("{t:?} is not a media type like \"text/html\" or \"text/*\""),
        );
        None
    }
}
