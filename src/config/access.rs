//! `[apps.NAME]`'s front-door checks — `allow` / `deny` by client
//! address, `basic_auth` (an htpasswd file of bcrypt entries, read now)
//! and `rate_limit` — from their raw tables (`raw.rs`) to their typed
//! forms (`types.rs`).

use std::collections::BTreeMap;
use std::path::Path;
use std::time::Duration;

use super::error::Errors;
use super::raw::RawBasicAuth;
use super::types::{AccessConfig, BasicAuth, RateKey, RateLimitConfig};
use super::values::{int_range, networks};
use crate::model::RateLimitSpec;

/// The default of `rate_limit.max_keys`.
pub const DEFAULT_MAX_KEYS: u32 = 100_000;
/// `basic_auth.realm`'s default.
const DEFAULT_REALM: &str = "restricted";

/// `allow`, `deny` and `basic_auth` of `[apps.NAME]` (`key`); `None`
/// when none is set.
pub fn access(
    key: &str,
    allow: &[String],
    deny: &[String],
    basic_auth: Option<RawBasicAuth>,
    base: &Path,
    errs: &mut Errors,
) -> Option<AccessConfig> {
    let allow = networks(&format!("{key}.allow"), allow, errs);
    let deny = networks(&format!("{key}.deny"), deny, errs);
    let basic_auth =
        basic_auth.and_then(|b| self::basic_auth(&format!("{key}.basic_auth"), b, base, errs));
    if allow.is_empty() && deny.is_empty() && basic_auth.is_none() {
        return None;
    }
    Some(AccessConfig {
        allow,
        deny,
        basic_auth,
    })
}

fn basic_auth(key: &str, raw: RawBasicAuth, base: &Path, errs: &mut Errors) -> Option<BasicAuth> {
    let realm = raw.realm.unwrap_or_else(|| DEFAULT_REALM.to_string());
    // Sent inside a quoted string: no quote, backslash or control byte.
    if realm.is_empty()
        || realm
            .chars()
            .any(|c| c == '"' || c == '\\' || c.is_control())
    {
        errs.push(
            format!("{key}.realm"),
            format!("must be non-empty printable text without '\"' or '\\', got {realm:?}"),
        );
    }
    let Some(file) = raw.users_file else {
        errs.push(
            format!("{key}.users_file"),
            "is required: an htpasswd file of bcrypt entries (htpasswd -B)",
        );
        return None;
    };
    let path = base.join(&file);
    let k = format!("{key}.users_file");
    let text = match std::fs::read_to_string(&path) {
        Ok(t) => t,
        Err(e) => {
            errs.push(&k, format!("cannot read {}: {e}", path.display()));
            return None;
        }
    };
    let users = match htpasswd(&text) {
        Ok(u) if u.is_empty() => {
            errs.push(&k, format!("{} holds no users", path.display()));
            return None;
        }
        Ok(u) => u,
        Err((line, why)) => {
            errs.push(&k, format!("{}:{line}: {why}", path.display()));
            return None;
        }
    };
    Some(BasicAuth {
        realm,
        users_file: path,
        users,
        forward: raw.forward,
    })
}

/// An htpasswd file's `user:hash` lines; blank lines and `#` comments are
/// skipped. Only bcrypt hashes are taken: the others htpasswd can write
/// (MD5, SHA-1, crypt) are too weak to keep. `Err`: the 1-based line and
/// what is wrong with it.
pub fn htpasswd(text: &str) -> Result<BTreeMap<String, String>, (usize, String)> {
    let mut users = BTreeMap::new();
    for (i, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let Some((user, hash)) = line.split_once(':') else {
            return Err((i + 1, "not a `user:hash` line".into()));
        };
        if user.is_empty() {
            return Err((i + 1, "the user name is empty".into()));
        }
        let bcrypt = ["$2y$", "$2b$", "$2a$"].iter().any(|p| hash.starts_with(p));
        if !bcrypt || hash.len() != 60 {
            return Err((
                i + 1,
                format!(
                    "user {user:?}: only bcrypt hashes are accepted (write them with htpasswd -B)"
                ),
            ));
        }
        if users.insert(user.to_string(), hash.to_string()).is_some() {
            return Err((i + 1, format!("user {user:?} appears twice")));
        }
    }
    Ok(users)
}

/// `rate_limit` of `[apps.NAME]` or of one of its rules (`key` is its
/// key: `apps.NAME.rate_limit`, `apps.NAME.rules[i].rate_limit`).
pub fn rate_limit(key: &str, raw: RateLimitSpec, errs: &mut Errors) -> Option<RateLimitConfig> {
    let by = match raw.key.as_deref() {
        None => Some(RateKey::ClientIp),
        Some(s) => rate_key(&format!("{key}.key"), s, errs),
    };
    let rate_key = format!("{key}.rate");
    let parsed = match raw.rate.as_deref() {
        None => {
            errs.push(
                &rate_key,
                "is required, like \"20/s\", \"600/m\" or \"1000/h\"",
            );
            None
        }
        Some(r) => {
            let parsed = parse_rate(r);
            if parsed.is_none() {
                errs.push(
                    &rate_key,
                    format!("{r:?} is not a rate like \"20/s\", \"600/m\" or \"1000/h\" (1 to 1000000 requests)"),
                );
            }
            parsed
        }
    };
    let burst = raw
        .burst
        .map(|b| int_range(&format!("{key}.burst"), b, 1, 1_000_000, errs) as u32);
    let max_keys = raw.max_keys.map_or(DEFAULT_MAX_KEYS, |m| {
        int_range(&format!("{key}.max_keys"), m, 1, 10_000_000, errs) as u32
    });
    let (count, interval) = parsed?;
    Some(RateLimitConfig {
        key: by?,
        rate: raw.rate.unwrap_or_default(),
        interval,
        burst: burst.unwrap_or(count),
        max_keys,
    })
}

fn rate_key(key: &str, s: &str, errs: &mut Errors) -> Option<RateKey> {
    let bad = |errs: &mut Errors, why: &str| {
        errs.push(
            key,
            format!("{why}: \"client_ip\", \"header:NAME\" or \"cookie:NAME\", got {s:?}"),
        );
        None
    };
    match s.split_once(':') {
        None if s == "client_ip" => Some(RateKey::ClientIp),
        Some(("header", name)) => match http::HeaderName::from_bytes(name.as_bytes()) {
            Ok(h) => Some(RateKey::Header(h)),
            Err(_) => bad(errs, "not a header name"),
        },
        Some(("cookie", name))
            if !name.is_empty()
                && name
                    .bytes()
                    .all(|b| b.is_ascii_graphic() && !b"=;,\"".contains(&b)) =>
        {
            Some(RateKey::Cookie(name.to_string()))
        }
        Some(("cookie", _)) => bad(errs, "not a cookie name"),
        _ => bad(errs, "must be one of"),
    }
}

/// `"20/s"` → 20 and the time one request of it takes (50 ms).
fn parse_rate(s: &str) -> Option<(u32, Duration)> {
    let (n, unit) = s.trim().split_once('/')?;
    let n: u32 = n
        .trim()
        .parse()
        .ok()
        .filter(|n| (1..=1_000_000).contains(n))?;
    let per = match unit.trim() {
        "s" => Duration::from_secs(1),
        "m" => Duration::from_secs(60),
        "h" => Duration::from_secs(3600),
        _ => return None,
    };
    Some((n, per / n))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rates_read_as_a_count_per_second_minute_or_hour() {
        assert_eq!(parse_rate("20/s"), Some((20, Duration::from_millis(50))));
        assert_eq!(parse_rate("600/m"), Some((600, Duration::from_millis(100))));
        assert_eq!(parse_rate("3600/h"), Some((3600, Duration::from_secs(1))));
        for bad in ["20", "0/s", "20/d", "x/s", "2000000/s"] {
            assert_eq!(parse_rate(bad), None, "{bad}");
        }
    }

    #[test]
    fn htpasswd_takes_bcrypt_lines_and_names_the_first_bad_one() {
        let hash = "$2y$05$abcdefghijklmnopqrstuuNpF0aJ9f5sQ2b4VK6iC8p1kD3oWm1xa";
        assert_eq!(hash.len(), 60);
        let ok = format!("# users\n\nalice:{hash}\nbob:{hash}\n");
        assert_eq!(htpasswd(&ok).unwrap().len(), 2);
        let md5 = format!("alice:{hash}\nbob:$apr1$x$y\n");
        let (line, why) = htpasswd(&md5).unwrap_err();
        assert_eq!(line, 2);
        assert!(why.contains("bcrypt"), "{why}");
        assert_eq!(htpasswd("no colon here").unwrap_err().0, 1);
    }
}
