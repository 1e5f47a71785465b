//! An app's front door: `allow` / `deny` by client address, `basic_auth`
//! and `rate_limit`, checked in that order once the app is known
//! ([`Gate::admit`]). An app with none of them has no `Gate`, and its
//! requests pay one pointer test.
//!
//! The order: an address refused costs nothing more and never takes a
//! limiter slot; the limit comes before the password so that guessing
//! passwords (each a bcrypt run of milliseconds) is itself limited.

use std::collections::hash_map::RandomState;
use std::hash::BuildHasher;
use std::net::IpAddr;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::Arc;
use std::time::{Duration, Instant};

use base64::Engine as _;
use http::header::{self, HeaderMap, HeaderValue};

use super::rate::RateLimiter;
use crate::config::{AccessConfig, AppConfig};

/// Why a request is turned away at the door.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Refusal {
    /// 403: the client's address is not allowed.
    Forbidden,
    /// 401, with this `WWW-Authenticate` challenge.
    Unauthorized(HeaderValue),
    /// 429: the key may try again after this long.
    TooManyRequests(Duration),
}

/// The checks of one app. Kept across snapshots while its config is the
/// same (a flip rebuilds the snapshot, not the door).
#[derive(Debug)]
pub struct Gate {
    pub access: Option<Arc<Access>>,
    pub rate: Option<Arc<RateLimiter>>,
}

impl Gate {
    /// The gate of `cfg`, reusing what `old` has that did not change:
    /// `None` when the app checks nothing. A new limiter counts its
    /// refusals in `limited` (the app's).
    pub fn build(
        cfg: &AppConfig,
        old: Option<&Arc<Gate>>,
        limited: &Arc<AtomicU64>,
    ) -> Option<Arc<Gate>> {
        if cfg.access.is_none() && cfg.rate_limit.is_none() {
            return None;
        }
        let old_access = old.and_then(|g| g.access.as_ref());
        let old_rate = old.and_then(|g| g.rate.as_ref());
        let access = cfg.access.as_ref().map(|a| match old_access {
            Some(o) if o.config == *a => o.clone(),
            _ => Arc::new(Access::new(a.clone())),
        });
        let rate = cfg.rate_limit.as_ref().map(|r| match old_rate {
            Some(o) if o.config == *r => o.clone(),
            _ => Arc::new(RateLimiter::new(r.clone(), limited.clone())),
        });
        let same = |a: Option<&Arc<Access>>, b: Option<&Arc<Access>>| match (a, b) {
            (Some(a), Some(b)) => Arc::ptr_eq(a, b),
            (a, b) => a.is_none() && b.is_none(),
        };
        let same_rate = match (old_rate, rate.as_ref()) {
            (Some(a), Some(b)) => Arc::ptr_eq(a, b),
            (a, b) => a.is_none() && b.is_none(),
        };
        match old {
            Some(o) if same(old_access, access.as_ref()) && same_rate => Some(o.clone()),
            _ => Some(Arc::new(Gate { access, rate })),
        }
    }

    /// May this request in? `Ok(true)`: it may, and its `Authorization`
    /// (the app's password) must not go upstream.
    // Not inlined: only some requests need it, and inlined it spread
    // the request path's code over more cache lines.
    #[inline(never)]
    pub fn admit(
        &self,
        headers: &HeaderMap,
        client: IpAddr,
        now: Instant,
    ) -> Result<bool, Refusal> {
        if let Some(a) = &self.access {
            if !a.address_allowed(client) {
                return Err(Refusal::Forbidden);
            }
        }
        if let Some(r) = &self.rate {
            r.check(headers, client, now)
                .map_err(Refusal::TooManyRequests)?;
        }
        if let Some(auth) = self.access.as_ref().and_then(|a| a.auth.as_ref()) {
            if !auth.authorized(headers) {
                return Err(Refusal::Unauthorized(auth.challenge.clone()));
            }
            return Ok(!auth.config.forward);
        }
        Ok(false)
    }
}

/// `allow`, `deny` and `basic_auth`, ready to check.
#[derive(Debug)]
pub struct Access {
    pub config: AccessConfig,
    auth: Option<Auth>,
}

impl Access {
    pub fn new(config: AccessConfig) -> Access {
        let auth = config.basic_auth.clone().map(Auth::new);
        Access { config, auth }
    }

    /// The most specific network that holds the address decides: `allow
    /// 10.0.0.0/8` with `deny 10.1.0.0/16` refuses 10.1.2.3, and the other
    /// way round lets it in. The same network in both is denied. An
    /// address in neither is let in only when `allow` is empty.
    pub fn address_allowed(&self, client: IpAddr) -> bool {
        let ip = client.to_canonical();
        let best = |nets: &[ipnet::IpNet]| {
            nets.iter()
                .filter(|n| n.contains(&ip))
                .map(|n| n.prefix_len())
                .max()
        };
        match (best(&self.config.allow), best(&self.config.deny)) {
            (Some(a), Some(d)) => a > d,
            (Some(_), None) => true,
            (None, Some(_)) => false,
            (None, None) => self.config.allow.is_empty(),
        }
    }
}

/// Remembered successful logins: slots of keyed hashes of (user, password,
/// stored hash). A slot is one atomic: a login checked once is not run
/// through bcrypt again until its slot is taken by another.
const AUTH_CACHE_SLOTS: usize = 1024;

#[derive(Debug)]
struct Auth {
    config: crate::config::BasicAuth,
    /// `Basic realm="…"`.
    challenge: HeaderValue,
    /// An unknown user's password is checked against this, so that an
    /// answer takes as long whether the user exists or not.
    dummy: String,
    hasher: RandomState,
    cache: Box<[AtomicU64]>,
}

impl Auth {
    fn new(config: crate::config::BasicAuth) -> Auth {
        let challenge = HeaderValue::from_str(&format!("Basic realm=\"{}\"", config.realm))
            .unwrap_or_else(|_| HeaderValue::from_static("Basic"));
        // The first user's hash has the cost the file uses.
        let dummy = config.users.values().next().cloned().unwrap_or_default();
        Auth {
            config,
            challenge,
            dummy,
            hasher: RandomState::new(),
            cache: (0..AUTH_CACHE_SLOTS).map(|_| AtomicU64::new(0)).collect(),
        }
    }

    /// Does `Authorization: Basic …` name a user of the file with its
    /// password (RFC 7617)?
    fn authorized(&self, headers: &HeaderMap) -> bool {
        let Some((user, password)) = credentials(headers) else {
            return false;
        };
        let (hash, known) = match self.config.users.get(&user) {
            Some(h) => (h.as_str(), true),
            None => (self.dummy.as_str(), false),
        };
        let key = self.hasher.hash_one((&user, &password, hash)) | 1;
        let slot = &self.cache[key as usize % AUTH_CACHE_SLOTS];
        if known && slot.load(Relaxed) == key {
            return true;
        }
        let ok = bcrypt::verify(&password, hash).unwrap_or(false) && known;
        if ok {
            slot.store(key, Relaxed);
        }
        ok
    }
}

/// The user and password of `Authorization: Basic base64(user:password)`.
fn credentials(headers: &HeaderMap) -> Option<(String, String)> {
    let value = headers.get(header::AUTHORIZATION)?.to_str().ok()?;
    let (scheme, token) = value.trim().split_once(' ')?;
    if !scheme.eq_ignore_ascii_case("basic") {
        return None;
    }
    let decoded = base64::engine::general_purpose::STANDARD
        .decode(token.trim())
        .ok()?;
    let text = String::from_utf8(decoded).ok()?;
    let (user, password) = text.split_once(':')?;
    Some((user.to_string(), password.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;

    fn nets(list: &[&str]) -> Vec<ipnet::IpNet> {
        list.iter().map(|s| s.parse().unwrap()).collect()
    }

    fn access(allow: &[&str], deny: &[&str]) -> Access {
        Access::new(AccessConfig {
            allow: nets(allow),
            deny: nets(deny),
            basic_auth: None,
        })
    }

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn the_most_specific_network_decides() {
        let a = access(&["10.0.0.0/8"], &["10.1.0.0/16"]);
        assert!(a.address_allowed(ip("10.2.0.1")));
        assert!(!a.address_allowed(ip("10.1.0.1")));
        assert!(
            !a.address_allowed(ip("192.0.2.1")),
            "allow names who may come"
        );
        let carve = access(&["10.1.2.3/32"], &["10.0.0.0/8"]);
        assert!(carve.address_allowed(ip("10.1.2.3")));
        assert!(!carve.address_allowed(ip("10.1.2.4")));
        assert!(!carve.address_allowed(ip("192.0.2.1")));
        let deny_only = access(&[], &["192.0.2.0/24"]);
        assert!(deny_only.address_allowed(ip("10.0.0.1")));
        assert!(!deny_only.address_allowed(ip("192.0.2.9")));
        // An IPv4 client on a dual-stack socket is still an IPv4 client.
        assert!(!deny_only.address_allowed(ip("::ffff:192.0.2.9")));
        let tie = access(&["10.0.0.0/8"], &["10.0.0.0/8"]);
        assert!(!tie.address_allowed(ip("10.0.0.1")));
    }

    #[test]
    fn basic_auth_takes_the_right_password_only() {
        let hash = bcrypt::hash("s3cret", 4).unwrap();
        let users = BTreeMap::from([("alice".to_string(), hash)]);
        let auth = Auth::new(crate::config::BasicAuth {
            realm: "ops".into(),
            users_file: "htpasswd".into(),
            users,
            forward: false,
        });
        let with = |user: &str, pw: &str| {
            let mut h = HeaderMap::new();
            let token = base64::engine::general_purpose::STANDARD.encode(format!("{user}:{pw}"));
            h.insert(
                header::AUTHORIZATION,
                format!("Basic {token}").parse().unwrap(),
            );
            h
        };
        assert!(auth.authorized(&with("alice", "s3cret")));
        // Again, from the cache.
        assert!(auth.authorized(&with("alice", "s3cret")));
        assert!(!auth.authorized(&with("alice", "wrong")));
        // An unknown user with the dummy's password is still refused.
        assert!(!auth.authorized(&with("mallory", "s3cret")));
        assert!(!auth.authorized(&HeaderMap::new()));
        assert_eq!(auth.challenge, "Basic realm=\"ops\"");
    }
}
