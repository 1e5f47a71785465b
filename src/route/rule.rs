//! Canary rules, compiled into a [`RuleTable`]: instead of
//! walking each rule's conditions in turn, the table evaluates each kind of
//! condition once per request for all rules at a time — every path prefix,
//! every header test, every cookie test, every network — each giving a
//! bitmask of the rules it lets through. The first rule left in the mask
//! wins, and its user-agent regex (the one costly condition) runs only when
//! the rule got that far.

use std::cell::RefCell;
use std::net::IpAddr;
use std::sync::atomic::AtomicU64;
use std::sync::Arc;

use http::{HeaderMap, HeaderName, HeaderValue};
use ipnet::IpNet;
use regex::bytes::Regex;

use super::rate::RateLimiter;
pub use crate::config::Rule;

/// Does `path` lie under `prefix`, by whole segments? `/api` takes `/api`,
/// `/api/` and `/api/x`, not `/apiary`; a prefix that ends in `/` matches
/// as written.
pub fn under_prefix(path: &str, prefix: &str) -> bool {
    path.starts_with(prefix)
        && (prefix.ends_with('/')
            || path.len() == prefix.len()
            || path.as_bytes()[prefix.len()] == b'/')
}

/// What a rule looks at in a request. Built once per request, no copies.
pub struct RequestView<'a> {
    pub path: &'a str,
    pub headers: &'a HeaderMap,
    pub client_ip: IpAddr,
    /// The client connection's memory of earlier requests, if any.
    pub memo: Option<&'a ConnMemo>,
}

impl<'a> RequestView<'a> {
    pub fn new(
        path: &'a str,
        headers: &'a HeaderMap,
        client_ip: IpAddr,
        memo: Option<&'a ConnMemo>,
    ) -> Self {
        RequestView {
            path,
            headers,
            client_ip,
            memo,
        }
    }
}

/// What a table needs from a request's headers, found in one pass over
/// them (see [`RuleTable::scan`]).
pub struct Scan<'a> {
    pub cookies: CookieJar<'a>,
    user_agent: &'a [u8],
    /// Bit i: a header named `header_names[i]` is present.
    present: u64,
}

/// How many wanted cookies one pass over the `Cookie` fields records;
/// names past these are looked up by scanning.
const JAR_SLOTS: usize = 8;

/// The values of the cookies an app asks about, found in one pass over the
/// request's `Cookie` fields (RFC 6265 §5.4: `Cookie: a=1; b=2`; HTTP/2 may
/// split them over several fields). The first pair with a name wins; an
/// empty value counts as absent.
pub struct CookieJar<'a> {
    headers: &'a HeaderMap,
    values: [Option<&'a [u8]>; JAR_SLOTS],
    /// The sticky bucket of slot 0's value, when the connection's memo
    /// knows it.
    sticky_bucket: Option<u32>,
}

impl<'a> CookieJar<'a> {
    /// Record the values of `names` (an app's wanted list, see
    /// [`RuleTable::cookie_names`]) from every `Cookie` field.
    pub fn new(headers: &'a HeaderMap, names: &CookieNames) -> CookieJar<'a> {
        let mut jar = CookieJar {
            headers,
            values: [None; JAR_SLOTS],
            sticky_bucket: None,
        };
        let wanted = names.recorded();
        if !wanted.is_empty() {
            for field in headers.get_all(http::header::COOKIE) {
                if jar.record(field.as_bytes(), wanted, |_, _| {}) {
                    break;
                }
            }
        }
        jar
    }

    /// [`Self::new`] for a request with at most one `Cookie` field, which
    /// the connection's memo may already have split: a browser sends the
    /// same field on every request until a cookie changes. With `sticky`,
    /// slot 0 is the sticky cookie and its bucket is remembered too.
    fn from_field(
        headers: &'a HeaderMap,
        field: Option<&'a [u8]>,
        names: &CookieNames,
        (table, sticky): (u64, bool),
        memo: Option<&ConnMemo>,
    ) -> CookieJar<'a> {
        let mut jar = CookieJar {
            headers,
            values: [None; JAR_SLOTS],
            sticky_bucket: None,
        };
        let wanted = names.recorded();
        let Some(field) = field.filter(|_| !wanted.is_empty()) else {
            return jar;
        };
        let entries = memo
            .filter(|_| field.len() <= MEMO_MAX)
            .and_then(|m| m.entries());
        let Some(mut entries) = entries else {
            jar.record(field, wanted, |_, _| {});
            return jar;
        };
        let e = &mut entries.cookies;
        if e.table == table && e.field == field {
            for (v, &(v0, v1)) in jar.values.iter_mut().zip(&e.spans) {
                *v = (v1 > v0).then(|| &field[usize::from(v0)..usize::from(v1)]);
            }
            jar.sticky_bucket = e.sticky_bucket;
            return jar;
        }
        e.table = table;
        e.field.clear();
        e.field.extend_from_slice(field);
        e.spans = [(0, 0); JAR_SLOTS];
        let spans = &mut e.spans;
        jar.record(field, wanted, |slot, (v0, v1)| {
            // `field.len() <= MEMO_MAX` fits u16.
            spans[slot] = (v0 as u16, v1 as u16);
        });
        jar.sticky_bucket = jar.values[0].filter(|_| sticky).map(super::sticky::bucket);
        e.sticky_bucket = jar.sticky_bucket;
        jar
    }

    /// [`super::sticky::bucket`] of the sticky cookie, if already known.
    pub fn sticky_bucket(&self) -> Option<u32> {
        self.sticky_bucket
    }

    /// Record the wanted cookies of one field that are not yet known,
    /// telling `found` each value's span. `true` once all are known.
    fn record(
        &mut self,
        field: &'a [u8],
        wanted: &[Box<[u8]>],
        mut found: impl FnMut(usize, (usize, usize)),
    ) -> bool {
        let mut missing = self.values[..wanted.len()]
            .iter()
            .filter(|v| v.is_none())
            .count();
        for pair in pairs(field) {
            for (slot, key) in wanted.iter().enumerate() {
                if self.values[slot].is_some() {
                    continue;
                }
                if let Some((v0, v1)) = value_of(field, pair, key) {
                    self.values[slot] = Some(&field[v0..v1]);
                    found(slot, (v0, v1));
                    missing -= 1;
                    if missing == 0 {
                        return true;
                    }
                    break;
                }
            }
        }
        false
    }

    /// The value of wanted cookie `slot`, named `name`.
    pub fn get(&self, slot: usize, name: &[u8]) -> Option<&'a [u8]> {
        match self.values.get(slot) {
            Some(v) => *v,
            None => self
                .headers
                .get_all(http::header::COOKIE)
                .iter()
                .find_map(|v| cookie_in(v.as_bytes(), name)),
        }
    }
}

/// The cookies an app asks about, in slot order. A field is split at
/// its `;`s by a vectorised search, and each pair's start compared with
/// the wanted names: the bytes of values (most of a browser's field) are
/// not looked at one by one.
#[derive(Debug, Default)]
pub struct CookieNames {
    names: Vec<Box<[u8]>>,
    /// Per slot, what a pair must start with, before its `=`: the name,
    /// or nothing (matches no pair) for a name no pair can have — one
    /// with `=`, `;` or a blank in it (config validation refuses those).
    keys: Vec<Box<[u8]>>,
}

impl CookieNames {
    pub fn new<N: AsRef<[u8]>>(names: impl IntoIterator<Item = N>) -> CookieNames {
        let mut list = CookieNames::default();
        for n in names {
            list.slot_of(n.as_ref());
        }
        list
    }

    /// The slot of `name`, added if new.
    fn slot_of(&mut self, name: &[u8]) -> usize {
        let slot = slot_of(&mut self.names, name.into());
        if slot == self.keys.len() {
            let key = if can_name_a_pair(name) { name } else { &[] };
            self.keys.push(key.into());
        }
        slot
    }

    pub fn names(&self) -> &[Box<[u8]>] {
        &self.names
    }

    /// The keys of the names a [`CookieJar`] records in one pass.
    fn recorded(&self) -> &[Box<[u8]>] {
        &self.keys[..self.keys.len().min(JAR_SLOTS)]
    }
}

fn can_name_a_pair(name: &[u8]) -> bool {
    !name.is_empty() && !name.iter().any(|b| matches!(b, b'=' | b';' | b' ' | b'\t'))
}

/// The pairs of one `Cookie` field (RFC 6265 §5.4: `a=1; b=2`), as the
/// spans between its `;`s, each without its leading spaces and tabs.
fn pairs(field: &[u8]) -> impl Iterator<Item = (usize, usize)> + '_ {
    let ends = memchr::memchr_iter(b';', field).chain(std::iter::once(field.len()));
    ends.scan(0, move |start, end| {
        let mut n0 = *start;
        *start = end + 1;
        while n0 < end && matches!(field[n0], b' ' | b'\t') {
            n0 += 1;
        }
        Some((n0, end))
    })
}

/// The span of the value of pair `(n0, end)` if the pair is named `key`
/// (a name [`can_name_a_pair`]; an empty key matches nothing) and its value
/// is not empty: trailing spaces and tabs trimmed, one pair of quotes
/// removed.
fn value_of(field: &[u8], (n0, end): (usize, usize), key: &[u8]) -> Option<(usize, usize)> {
    let n1 = n0 + key.len();
    if key.is_empty() || n1 >= end || field[n1] != b'=' || field[n0..n1] != *key {
        return None;
    }
    let (mut v0, mut v1) = (n1 + 1, end);
    while v1 > v0 && matches!(field[v1 - 1], b' ' | b'\t') {
        v1 -= 1;
    }
    if v1 - v0 >= 2 && field[v0] == b'"' && field[v1 - 1] == b'"' {
        v0 += 1;
        v1 -= 1;
    }
    (v1 > v0).then_some((v0, v1))
}

/// Cookie `name` in one `Cookie` field (for names past the jar's slots):
/// the first pair with that name and a value that is not empty.
fn cookie_in<'h>(field: &'h [u8], name: &[u8]) -> Option<&'h [u8]> {
    if !can_name_a_pair(name) {
        return None;
    }
    pairs(field).find_map(|pair| value_of(field, pair, name).map(|(v0, v1)| &field[v0..v1]))
}

/// Up to this many rule header names, [`RuleTable::scan`] compares every
/// request header's name with each.
const FEW_NAMES: usize = 8;

/// Header values longer than this are not remembered per connection.
const MEMO_MAX: usize = 1024;

/// What a client connection remembers of its earlier requests, so that
/// work repeated on every request of a keep-alive connection is done once:
/// browsers send the same `User-Agent` and, until a cookie changes, the
/// same `Cookie` field each time. Every entry is keyed by the exact bytes
/// it was derived from and by the table's id (which changes whenever the
/// rules do), so a stale entry is never used. Boxed on first use and
/// dropped by [`ConnMemo::forget`], so an idle connection holds one word.
#[derive(Debug, Default)]
pub struct ConnMemo {
    entries: RefCell<Option<Box<Entries>>>,
}

#[derive(Debug, Default)]
struct Entries {
    user_agent: UaEntry,
    cookies: CookieEntry,
}

#[derive(Debug, Default)]
struct UaEntry {
    table: u64,
    ua: Vec<u8>,
    /// Bit i: rule i's regex was evaluated for `ua`.
    known: u64,
    /// Bit i: and it matched.
    matched: u64,
}

#[derive(Debug, Default)]
struct CookieEntry {
    table: u64,
    field: Vec<u8>,
    /// Per jar slot, the value's span in `field`; empty when absent.
    spans: [(u16, u16); JAR_SLOTS],
    sticky_bucket: Option<u32>,
}

impl ConnMemo {
    /// Free what is remembered (a parked connection does not need it).
    pub fn forget(&self) {
        if let Ok(mut e) = self.entries.try_borrow_mut() {
            *e = None;
        }
    }

    fn entries(&self) -> Option<std::cell::RefMut<'_, Entries>> {
        let e = self.entries.try_borrow_mut().ok()?;
        Some(std::cell::RefMut::map(e, |e| {
            &mut **e.get_or_insert_with(Box::default)
        }))
    }

    /// Does rule `index`'s regex match `ua`? Remembered for rules 0..64.
    fn user_agent_matches(&self, table: u64, index: usize, ua: &[u8], re: &Regex) -> bool {
        let entries = (index < 64 && ua.len() <= MEMO_MAX)
            .then(|| self.entries())
            .flatten();
        match entries {
            Some(mut e) => e.user_agent.verdict(table, index, ua, || re.is_match(ua)),
            None => re.is_match(ua),
        }
    }
}

impl UaEntry {
    /// Rule `index`'s verdict on `ua` under `table`, from this entry or,
    /// the first time, from `decide` (then remembered).
    fn verdict(
        &mut self,
        table: u64,
        index: usize,
        ua: &[u8],
        decide: impl FnOnce() -> bool,
    ) -> bool {
        if self.table != table || self.ua != ua {
            self.table = table;
            self.ua.clear();
            self.ua.extend_from_slice(ua);
            self.known = 0;
            self.matched = 0;
        }
        let bit = 1u64 << index;
        if self.known & bit == 0 {
            self.known |= bit;
            if decide() {
                self.matched |= bit;
            }
        }
        self.matched & bit != 0
    }
}

/// A client address as the network tests see it: IPv4 (including IPv4
/// seen through a dual-stack socket, `::ffff:a.b.c.d`) or IPv6, as bits.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct IpKey {
    v4: bool,
    bits: u128,
}

impl IpKey {
    fn of(ip: IpAddr) -> IpKey {
        match ip {
            IpAddr::V4(v4) => IpKey {
                v4: true,
                bits: u128::from(u32::from(v4)),
            },
            IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
                Some(v4) => IpKey::of(IpAddr::V4(v4)),
                None => IpKey {
                    v4: false,
                    bits: u128::from(v6),
                },
            },
        }
    }
}

/// One network test: `(addr & mask) == net` within one address family.
#[derive(Debug, Clone)]
struct NetTest {
    net: IpKey,
    mask: u128,
    rules: u64,
}

impl NetTest {
    fn new(net: &IpNet, rules: u64) -> NetTest {
        let (net, mask) = match net {
            IpNet::V4(n) => (
                IpKey::of(IpAddr::V4(n.network())),
                u128::from(u32::from(n.netmask())),
            ),
            IpNet::V6(n) => (
                IpKey {
                    v4: false,
                    bits: u128::from(n.network()),
                },
                u128::from(n.netmask()),
            ),
        };
        NetTest { net, mask, rules }
    }

    fn contains(&self, ip: IpKey) -> bool {
        ip.v4 == self.net.v4 && ip.bits & self.mask == self.net.bits
    }
}

/// Up to 64 consecutive rules, with each kind of condition gathered into
/// one list of tests; every test carries the bits of the rules it serves.
#[derive(Debug, Default)]
struct Chunk {
    /// Index of the chunk's first rule in the table.
    base: usize,
    all: u64,
    /// Distinct path prefixes.
    paths: Vec<(Box<str>, u64)>,
    path_rules: u64,
    /// `(header name slot, value)`.
    headers: Vec<(usize, HeaderValue, u64)>,
    header_rules: u64,
    /// `(cookie name slot, value)`.
    cookies: Vec<(usize, Box<[u8]>, u64)>,
    cookie_rules: u64,
    nets: Vec<NetTest>,
    net_rules: u64,
    user_agent: u64,
}

/// The rules of one app, compiled for evaluation by condition kind.
#[derive(Debug)]
pub struct RuleTable {
    rules: Vec<Rule>,
    /// Unique per table, for the per-connection user-agent memory.
    id: u64,
    /// The cookies the app asks about: the sticky cookie first (if any),
    /// then the rules' cookie names.
    cookie_names: CookieNames,
    /// `cookie_names[0]` is the sticky cookie.
    sticky: bool,
    /// The header names the rules test, in slot order.
    header_names: Vec<HeaderName>,
    /// Bit `n` set: a name in `header_names` is `n` bytes long (63: longer).
    header_lens: u64,
    chunks: Vec<Chunk>,
    /// The rules' own `rate_limit`s, by rule index; empty when no rule
    /// has one. Set by [`Self::with_limiters`].
    limiters: Vec<Option<Arc<RateLimiter>>>,
}

static NEXT_TABLE_ID: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(1);

/// Position of `item` in `list`, appending it if new.
fn slot_of<T: PartialEq>(list: &mut Vec<T>, item: T) -> usize {
    list.iter().position(|x| *x == item).unwrap_or_else(|| {
        list.push(item);
        list.len() - 1
    })
}

impl RuleTable {
    /// Compile `rules` (in priority order). `sticky_cookie` is the app's
    /// sticky cookie name, looked up in the same pass as the rules' cookies.
    pub fn new(rules: Vec<Rule>, sticky_cookie: Option<&str>) -> RuleTable {
        let mut cookie_names = CookieNames::new(sticky_cookie);
        let mut header_names = Vec::new();
        let mut chunks = Vec::new();
        for (base, group) in (0..).step_by(64).zip(rules.chunks(64)) {
            let mut c = Chunk {
                base,
                ..Chunk::default()
            };
            for (i, rule) in group.iter().enumerate() {
                let bit = 1u64 << i;
                c.all |= bit;
                if let Some(p) = &rule.path_prefix {
                    c.path_rules |= bit;
                    match c.paths.iter_mut().find(|(q, _)| **q == **p) {
                        Some((_, bits)) => *bits |= bit,
                        None => c.paths.push((p.as_str().into(), bit)),
                    }
                }
                if let Some((name, value)) = &rule.header {
                    c.header_rules |= bit;
                    let slot = slot_of(&mut header_names, name.clone());
                    c.headers.push((slot, value.clone(), bit));
                }
                if let Some((name, value)) = &rule.cookie {
                    c.cookie_rules |= bit;
                    let slot = cookie_names.slot_of(name.as_bytes());
                    c.cookies.push((slot, value.as_bytes().into(), bit));
                }
                if let Some(nets) = &rule.client_ip {
                    c.net_rules |= bit;
                    c.nets.extend(nets.iter().map(|n| NetTest::new(n, bit)));
                }
                if rule.user_agent.is_some() {
                    c.user_agent |= bit;
                }
            }
            chunks.push(c);
        }
        let header_lens = header_names
            .iter()
            .fold(0u64, |m, n| m | 1 << n.as_str().len().min(63));
        RuleTable {
            rules,
            id: NEXT_TABLE_ID.fetch_add(1, std::sync::atomic::Ordering::Relaxed),
            sticky: sticky_cookie.is_some(),
            cookie_names,
            header_names,
            header_lens,
            chunks,
            limiters: Vec::new(),
        }
    }

    /// This table with a limiter for each rule that has a `rate_limit`:
    /// `old`'s for a rule of the same name and the same limit, so that a
    /// reload or a change of the other rules hands out no fresh bursts;
    /// else a new one. Refusals are counted in `limited` (the app's).
    pub fn with_limiters(mut self, old: Option<&RuleTable>, limited: &Arc<AtomicU64>) -> RuleTable {
        if self.rules.iter().all(|r| r.rate_limit.is_none()) {
            return self;
        }
        let kept = |rule: &Rule| {
            let old = old?;
            let i = old.rules.iter().position(|o| o.name == rule.name)?;
            let l = old.limiters.get(i)?.as_ref()?;
            (Some(&l.config) == rule.rate_limit.as_ref()).then(|| l.clone())
        };
        self.limiters = (self.rules.iter())
            .map(|rule| {
                let config = rule.rate_limit.clone()?;
                kept(rule).or_else(|| Some(Arc::new(RateLimiter::new(config, limited.clone()))))
            })
            .collect();
        self
    }

    /// The limiter of the rule at `index`, if it has a `rate_limit`.
    pub fn limiter(&self, index: usize) -> Option<&RateLimiter> {
        self.limiters.get(index)?.as_deref()
    }

    /// Does any rule have a `rate_limit`?
    pub fn limits_any(&self) -> bool {
        !self.limiters.is_empty()
    }

    pub fn rules(&self) -> &[Rule] {
        &self.rules
    }

    /// The cookie names a [`CookieJar`] for this table records; slot 0 is
    /// the sticky cookie when the table was given one.
    pub fn cookie_names(&self) -> &CookieNames {
        &self.cookie_names
    }

    /// One pass over the request's headers: the `Cookie` field(s), the
    /// `User-Agent`, and which of the rules' header names are present.
    pub fn scan<'a>(&self, req: &RequestView<'a>) -> Scan<'a> {
        if self.rules.is_empty() && self.cookie_names.names.is_empty() {
            // Nothing to look for (no rules, no sticky cookie).
            return Scan {
                cookies: CookieJar::new(req.headers, &self.cookie_names),
                user_agent: &[],
                present: 0,
            };
        }
        let mut cookie: Option<&'a [u8]> = None;
        let mut several_cookies = false;
        let mut user_agent: Option<&'a [u8]> = None;
        let mut present = 0u64;
        for (name, value) in req.headers {
            if name == http::header::COOKIE {
                several_cookies |= cookie.is_some();
                cookie = cookie.or(Some(value.as_bytes()));
            } else if name == http::header::USER_AGENT {
                user_agent = user_agent.or(Some(value.as_bytes()));
            }
            // A few names are compared directly (a standard name against a
            // custom one is a tag compare); more are filtered by length.
            if self.header_names.len() <= FEW_NAMES
                || self.header_lens & (1 << name.as_str().len().min(63)) != 0
            {
                for (i, n) in self.header_names.iter().enumerate().take(64) {
                    if name == n {
                        present |= 1 << i;
                    }
                }
            }
        }
        let cookies = if several_cookies {
            CookieJar::new(req.headers, &self.cookie_names)
        } else {
            CookieJar::from_field(
                req.headers,
                cookie,
                &self.cookie_names,
                (self.id, self.sticky),
                req.memo,
            )
        };
        Scan {
            cookies,
            user_agent: user_agent.unwrap_or(&[]),
            present,
        }
    }

    /// The first rule (in order) whose conditions all hold.
    /// The first rule that matches, with its index.
    pub fn first_match(&self, req: &RequestView<'_>, scan: &Scan<'_>) -> Option<(usize, &Rule)> {
        if self.rules.is_empty() {
            return None;
        }
        let (jar, present) = (&scan.cookies, scan.present);
        let ip = IpKey::of(req.client_ip);
        for c in &self.chunks {
            let mut ok = c.all;
            if c.path_rules & ok != 0 {
                let pass = c
                    .paths
                    .iter()
                    .filter(|(p, _)| under_prefix(req.path, p))
                    .fold(0, |m, (_, bits)| m | bits);
                ok &= !c.path_rules | pass;
            }
            if c.net_rules & ok != 0 {
                let pass = c
                    .nets
                    .iter()
                    .filter(|t| t.contains(ip))
                    .fold(0, |m, t| m | t.rules);
                ok &= !c.net_rules | pass;
            }
            if c.cookie_rules & ok != 0 {
                let pass = c
                    .cookies
                    .iter()
                    .filter(|(slot, value, _)| {
                        jar.get(*slot, &self.cookie_names.names[*slot]) == Some(&**value)
                    })
                    .fold(0, |m, (_, _, bits)| m | bits);
                ok &= !c.cookie_rules | pass;
            }
            if c.header_rules & ok != 0 {
                let pass = c
                    .headers
                    .iter()
                    .filter(|(slot, value, _)| {
                        (*slot >= 64 || present & (1 << slot) != 0)
                            && req
                                .headers
                                .get_all(&self.header_names[*slot])
                                .iter()
                                .any(|v| v == value)
                    })
                    .fold(0, |m, (_, _, bits)| m | bits);
                ok &= !c.header_rules | pass;
            }
            while ok != 0 {
                let i = ok.trailing_zeros() as usize;
                ok &= ok - 1;
                let rule = &self.rules[c.base + i];
                if c.user_agent & (1 << i) != 0
                    && !self.user_agent_matches(c.base + i, req, scan.user_agent)
                {
                    continue;
                }
                return Some((c.base + i, rule));
            }
        }
        None
    }

    /// The rule at `index` (as [`Self::first_match`] gave it).
    pub fn get(&self, index: usize) -> Option<&Rule> {
        self.rules.get(index)
    }

    fn user_agent_matches(&self, index: usize, req: &RequestView<'_>, ua: &[u8]) -> bool {
        let Some(re) = &self.rules[index].user_agent else {
            return true;
        };
        match req.memo {
            Some(memo) => memo.user_agent_matches(self.id, index, ua, re),
            None => re.is_match(ua),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::rule::parse_net;
    use crate::config::{NameValue, RuleSpec};

    /// Cookie `name` in one field, by splitting it at every `;` and each
    /// pair at its first `=`: the reference the searches are checked
    /// against.
    fn split_cookie<'h>(field: &'h [u8], name: &[u8]) -> Option<&'h [u8]> {
        let blank = |b: &u8| matches!(b, b' ' | b'\t');
        field.split(|&b| b == b';').find_map(|pair| {
            let pair = &pair[pair.iter().take_while(|b| blank(b)).count()..];
            let eq = pair.iter().position(|&b| b == b'=')?;
            let value = &pair[eq + 1..];
            let mut value =
                &value[..value.len() - value.iter().rev().take_while(|b| blank(b)).count()];
            if value.len() >= 2 && value.starts_with(b"\"") && value.ends_with(b"\"") {
                value = &value[1..value.len() - 1];
            }
            (eq > 0 && &pair[..eq] == name && !value.is_empty()).then_some(value)
        })
    }

    /// Cookie `name` in the headers, by splitting: the reference the jar
    /// is checked against.
    fn find_cookie<'h>(headers: &'h HeaderMap, name: &str) -> Option<&'h str> {
        headers
            .get_all(http::header::COOKIE)
            .iter()
            .find_map(|v| split_cookie(v.as_bytes(), name.as_bytes()))
            .and_then(|v| std::str::from_utf8(v).ok())
    }

    #[test]
    fn searching_a_field_agrees_with_splitting_it() {
        // Names that are wanted, and look-alikes around them; values with
        // `=`, blanks, quotes, wanted names inside, or nothing at all.
        let names = ["beta", "qa", "cutover", "c3"];
        let noise = [
            "beta", "xbeta", "betax", "qa", "q", "a", "cutover", "c3", "_ga", " ", "\t",
        ];
        let values = [
            "1", "", "\"\"", "\"on\"", "a=b", "beta=2", " 7 ", "x y", "\"", "qa", "=",
        ];
        let wanted = CookieNames::new(names);
        let mut rng = fastrand::Rng::with_seed(11);
        for _ in 0..20_000 {
            let mut field = String::new();
            for i in 0..rng.usize(0..6) {
                if i > 0 {
                    field.push(';');
                }
                for _ in 0..rng.usize(0..3) {
                    field.push(if rng.bool() { ' ' } else { '\t' });
                }
                field.push_str(noise[rng.usize(..noise.len())]);
                match rng.usize(..8) {
                    0 => {}                    // no `=`
                    1 => field.push_str(" ="), // a blank before it
                    _ => field.push('='),
                }
                field.push_str(values[rng.usize(..values.len())]);
            }
            let field = field.as_bytes();
            let mut h = HeaderMap::new();
            h.insert("cookie", HeaderValue::from_bytes(field).unwrap());
            let jar = CookieJar::new(&h, &wanted);
            for (slot, name) in names.iter().enumerate() {
                let expected = split_cookie(field, name.as_bytes());
                let shown = String::from_utf8_lossy(field);
                assert_eq!(
                    cookie_in(field, name.as_bytes()),
                    expected,
                    "{name} in {shown:?}"
                );
                assert_eq!(
                    jar.get(slot, name.as_bytes()),
                    expected,
                    "{name} in {shown:?}"
                );
            }
        }
    }

    fn spec(name: &str) -> RuleSpec {
        RuleSpec {
            name: name.into(),
            to: "green".into(),
            percent: None,
            user_agent: None,
            header: None,
            cookie: None,
            client_ip: None,
            path_prefix: None,
            all: None,
            rate_limit: None,
        }
    }

    /// Compile a test rule; one without a condition says `all` for it.
    fn compiled(s: &RuleSpec) -> Rule {
        let mut s = s.clone();
        if s.user_agent.is_none()
            && s.header.is_none()
            && s.cookie.is_none()
            && s.client_ip.is_none()
            && s.path_prefix.is_none()
        {
            s.all = Some(true);
        }
        Rule::compile(&s).unwrap()
    }

    fn table(specs: &[RuleSpec]) -> RuleTable {
        RuleTable::new(specs.iter().map(compiled).collect(), Some("cutover"))
    }

    /// The name of the first matching rule.
    fn first(t: &RuleTable, h: &HeaderMap, path: &str, ip: &str) -> Option<String> {
        let view = RequestView::new(path, h, ip.parse().unwrap(), None);
        t.first_match(&view, &t.scan(&view))
            .map(|(_, r)| r.name.clone())
    }

    #[test]
    fn cookies_are_found_among_several() {
        let mut h = HeaderMap::new();
        h.insert("cookie", "a=1; cutover=xyz; b=2".parse().unwrap());
        assert_eq!(find_cookie(&h, "cutover"), Some("xyz"));
        assert_eq!(find_cookie(&h, "cut"), None);
        assert_eq!(find_cookie(&h, "b"), Some("2"));
        assert_eq!(find_cookie(&h, "a"), Some("1"));
        let names = CookieNames::new(["cutover", "cut", "b", "q", "x"]);
        let jar = CookieJar::new(&h, &names);
        assert_eq!(jar.get(0, b"cutover"), Some(&b"xyz"[..]));
        assert_eq!(jar.get(1, b"cut"), None);
        assert_eq!(jar.get(2, b"b"), Some(&b"2"[..]));
        h.insert("cookie", "q=\"quoted\" ;x=".parse().unwrap());
        assert_eq!(find_cookie(&h, "q"), Some("quoted"));
        assert_eq!(find_cookie(&h, "x"), None);
        let jar = CookieJar::new(&h, &names);
        assert_eq!(jar.get(3, b"q"), Some(&b"quoted"[..]));
        assert_eq!(jar.get(4, b"x"), None, "an empty value is absent");
        h.insert("cookie", "a=b=c; =d; a b=e".parse().unwrap());
        let odd = CookieNames::new(["a=b", "", "a b", "a"]);
        let jar = CookieJar::new(&h, &odd);
        assert_eq!(
            (0..4)
                .map(|i| jar.get(i, &odd.names()[i]))
                .collect::<Vec<_>>(),
            [None, None, None, Some(&b"b=c"[..])],
            "no pair is named with `=` or a blank, or nothing"
        );

        let mut split = HeaderMap::new();
        split.append("cookie", "a=1; b=2".parse().unwrap());
        split.append("cookie", "b=3; c=4".parse().unwrap());
        let many: Vec<String> = (0..12)
            .map(|i| format!("n{i}"))
            .chain(["b".into(), "c".into()])
            .collect();
        let jar = CookieJar::new(&split, &CookieNames::new(&many));
        assert_eq!(
            (jar.get(12, b"b"), jar.get(13, b"c")),
            (Some(&b"2"[..]), Some(&b"4"[..])),
            "past the recorded slots, lookups scan every field; the first pair wins"
        );
        let jar = CookieJar::new(&split, &CookieNames::new(&many[12..]));
        assert_eq!(
            (jar.get(0, b"b"), jar.get(1, b"c")),
            (Some(&b"2"[..]), Some(&b"4"[..]))
        );
    }

    #[test]
    fn a_connection_remembers_its_cookie_field_and_sticky_bucket() {
        let t = table(&[]);
        let memo = ConnMemo::default();
        let scan = |field: &str| {
            let mut h = HeaderMap::new();
            h.insert("cookie", field.parse().unwrap());
            let view = RequestView::new("/", &h, "127.0.0.1".parse().unwrap(), Some(&memo));
            let s = t.scan(&view);
            (
                s.cookies.get(0, b"cutover").map(|v| v.to_vec()),
                s.cookies.sticky_bucket(),
            )
        };
        let first = scan("a=1; cutover=abc");
        assert_eq!(
            first,
            (
                Some(b"abc".to_vec()),
                Some(crate::route::sticky::bucket(b"abc"))
            )
        );
        assert_eq!(scan("a=1; cutover=abc"), first, "answered from the memo");
        assert_eq!(
            memo.entries.borrow().as_ref().unwrap().cookies.field,
            b"a=1; cutover=abc"
        );
        let other = scan("cutover=xyz");
        assert_eq!(
            other,
            (
                Some(b"xyz".to_vec()),
                Some(crate::route::sticky::bucket(b"xyz"))
            )
        );
        assert_eq!(scan("a=1"), (None, None));
        memo.forget();
        assert!(
            memo.entries.borrow().is_none(),
            "forgetting frees the entries"
        );
        assert_eq!(scan("cutover=xyz"), other);
    }

    #[test]
    fn user_agent_verdicts_are_remembered_per_table_and_agent() {
        let mut s = spec("mobile");
        s.user_agent = Some("(?i)iphone".into());
        let rule = Rule::compile(&s).unwrap();
        let (t1, t2) = (
            RuleTable::new(vec![rule.clone()], None),
            RuleTable::new(vec![rule], None),
        );
        let cache = ConnMemo::default();
        let mut iphone = HeaderMap::new();
        iphone.insert("user-agent", "Mozilla (iPhone)".parse().unwrap());
        let mut desktop = HeaderMap::new();
        desktop.insert("user-agent", "Mozilla (X11)".parse().unwrap());
        let hit = |t: &RuleTable, h: &HeaderMap| {
            let view = RequestView::new("/", h, "127.0.0.1".parse().unwrap(), Some(&cache));
            t.first_match(&view, &t.scan(&view)).is_some()
        };
        assert!(hit(&t1, &iphone));
        assert!(hit(&t1, &iphone));
        assert_eq!(cache.entries.borrow().as_ref().unwrap().user_agent.known, 1);
        assert!(!hit(&t1, &desktop), "a new user agent is evaluated afresh");
        assert!(hit(&t2, &iphone), "a new table is evaluated afresh");
        assert!(
            !hit(&t2, &HeaderMap::new()),
            "no user agent matches nothing"
        );
    }

    #[test]
    fn user_agent_verdicts_are_right_with_or_without_a_memo() {
        let mut s = spec("mobile");
        s.user_agent = Some("(?i)iphone".into());
        let t = RuleTable::new(vec![Rule::compile(&s).unwrap()], None);
        let agents: Vec<(String, bool)> = (0..300)
            .map(|i| {
                let mobile = i % 3 == 0;
                let device = if mobile { "iPhone" } else { "X11" };
                (format!("Mozilla/5.0 ({device}; build {i})"), mobile)
            })
            .collect();
        for round in 0..2 {
            for (ua, mobile) in &agents {
                let mut h = HeaderMap::new();
                h.insert("user-agent", ua.parse().unwrap());
                // A new connection every time.
                let memo = ConnMemo::default();
                let memo = (round == 1).then_some(&memo);
                let view = RequestView::new("/", &h, "127.0.0.1".parse().unwrap(), memo);
                let hit = t.first_match(&view, &t.scan(&view)).is_some();
                assert_eq!(hit, *mobile, "{ua}, round {round}");
            }
        }
    }

    #[test]
    fn all_conditions_must_hold() {
        let mut s = spec("r");
        s.header = Some(NameValue {
            name: "x-preview".into(),
            value: "yes".into(),
        });
        s.path_prefix = Some("/beta".into());
        s.client_ip = Some(vec!["192.0.2.0/24".into()]);
        let t = table(&[s]);
        let mut h = HeaderMap::new();
        h.insert("x-preview", "yes".parse().unwrap());
        let r = Some("r".to_string());
        assert_eq!(first(&t, &h, "/beta/x", "192.0.2.7"), r);
        assert_eq!(first(&t, &h, "/beta/x", "::ffff:192.0.2.7"), r);
        assert_eq!(first(&t, &h, "/alpha", "192.0.2.7"), None);
        assert_eq!(first(&t, &h, "/beta", "198.51.100.1"), None);
        assert_eq!(first(&t, &HeaderMap::new(), "/beta", "192.0.2.7"), None);
    }

    #[test]
    fn networks_keep_to_their_family() {
        let mut any6 = spec("any6");
        any6.client_ip = Some(vec!["::/0".into()]);
        let mut v4 = spec("v4");
        v4.client_ip = Some(vec!["10.0.0.0/8".into(), "192.0.2.1".into()]);
        let t = table(&[any6, v4]);
        let h = HeaderMap::new();
        assert_eq!(first(&t, &h, "/", "10.9.8.7").as_deref(), Some("v4"));
        assert_eq!(first(&t, &h, "/", "::ffff:10.9.8.7").as_deref(), Some("v4"));
        assert_eq!(first(&t, &h, "/", "192.0.2.1").as_deref(), Some("v4"));
        assert_eq!(first(&t, &h, "/", "192.0.2.2"), None);
        assert_eq!(first(&t, &h, "/", "2001:db8::1").as_deref(), Some("any6"));
    }

    #[test]
    fn bad_fields_are_named() {
        let mut s = spec("r");
        s.to = "red".into();
        s.percent = Some(150.0);
        s.user_agent = Some("(".into());
        s.client_ip = Some(vec!["nope".into()]);
        let errs = Rule::compile(&s).unwrap_err();
        let fields: Vec<_> = errs.iter().map(|e| e.0).collect();
        assert_eq!(fields, ["to", "percent", "user_agent", "client_ip"]);
    }

    #[test]
    fn header_rules_share_slots_and_compare_every_value() {
        let mk = |name: &str, header: &str, value: &str| {
            let mut s = spec(name);
            s.header = Some(NameValue {
                name: header.into(),
                value: value.into(),
            });
            s
        };
        let t = table(&[
            mk("a1", "x-a", "1"),
            mk("b", "x-b", "1"),
            mk("a2", "X-A", "2"),
        ]);
        assert_eq!(t.header_names.len(), 2, "x-a is one slot whatever its case");
        let mut h = HeaderMap::new();
        h.insert("x-a", "2".parse().unwrap());
        let view = RequestView::new("/", &h, "127.0.0.1".parse().unwrap(), None);
        assert_eq!(t.scan(&view).present, 0b01);
        assert_eq!(first(&t, &h, "/", "127.0.0.1").as_deref(), Some("a2"));
        h.append("x-a", "1".parse().unwrap());
        assert_eq!(first(&t, &h, "/", "127.0.0.1").as_deref(), Some("a1"));
        let mut b = HeaderMap::new();
        b.insert("x-b", "1".parse().unwrap());
        assert_eq!(first(&t, &b, "/", "127.0.0.1").as_deref(), Some("b"));
    }

    /// The same rules walked one by one, condition by condition: what the
    /// table must agree with.
    fn first_by_walking(specs: &[RuleSpec], req: &RequestView<'_>, ua: &Regex) -> Option<String> {
        let ip = match req.client_ip {
            IpAddr::V6(v6) => v6.to_ipv4_mapped().map(IpAddr::V4).unwrap_or(req.client_ip),
            v4 => v4,
        };
        specs
            .iter()
            .find(|s| {
                s.path_prefix
                    .as_ref()
                    .is_none_or(|p| under_prefix(req.path, p))
                    && s.header.as_ref().is_none_or(|h| {
                        req.headers
                            .get_all(h.name.as_str())
                            .iter()
                            .any(|v| v.as_bytes() == h.value.as_bytes())
                    })
                    && s.cookie
                        .as_ref()
                        .is_none_or(|c| find_cookie(req.headers, &c.name) == Some(&c.value))
                    && s.client_ip
                        .as_ref()
                        .is_none_or(|nets| nets.iter().any(|n| parse_net(n).unwrap().contains(&ip)))
                    && s.user_agent.as_ref().is_none_or(|_| {
                        let agent = req.headers.get(http::header::USER_AGENT);
                        ua.is_match(agent.map_or(&[][..], |v| v.as_bytes()))
                    })
            })
            .map(|s| s.name.clone())
    }

    #[test]
    fn the_table_agrees_with_walking_the_rules() {
        let mut rng = fastrand::Rng::with_seed(7);
        let pick =
            |rng: &mut fastrand::Rng, list: &[&str]| list[rng.usize(..list.len())].to_string();
        let paths = ["/", "/beta", "/beta/x", "/checkout/v2/pay", "/api"];
        let hnames = ["x-a", "x-b", "accept-language", "x-long-header-name"];
        let values = ["1", "2", "yes"];
        let cnames = ["beta", "qa", "cutover", "c3"];
        let nets = [
            "10.0.0.0/8",
            "192.0.2.0/24",
            "2001:db8::/32",
            "::/0",
            "0.0.0.0/0",
        ];
        let ips = [
            "10.1.2.3",
            "192.0.2.9",
            "::ffff:192.0.2.9",
            "2001:db8::7",
            "203.0.113.1",
        ];
        let uas = ["Mozilla (iPhone)", "Mozilla (X11)", "curl/8"];
        let ua_re = "(?i)iphone|android";
        let compiled_ua = Regex::new(ua_re).unwrap();
        for round in 0..40 {
            // Up to 150 rules: several 64-rule chunks.
            let n = if round % 4 == 0 {
                150
            } else {
                1 + rng.usize(..12)
            };
            let specs: Vec<RuleSpec> = (0..n)
                .map(|i| {
                    let mut s = spec(&format!("r{i}"));
                    // Mostly one or two conditions, sometimes none.
                    for _ in 0..rng.usize(..3) {
                        match rng.usize(..5) {
                            0 => s.path_prefix = Some(pick(&mut rng, &paths)),
                            1 => {
                                s.header = Some(NameValue {
                                    name: pick(&mut rng, &hnames),
                                    value: pick(&mut rng, &values),
                                })
                            }
                            2 => {
                                s.cookie = Some(NameValue {
                                    name: pick(&mut rng, &cnames),
                                    value: pick(&mut rng, &values),
                                })
                            }
                            3 => {
                                s.client_ip =
                                    Some(vec![pick(&mut rng, &nets), pick(&mut rng, &nets)])
                            }
                            _ => s.user_agent = Some(ua_re.into()),
                        }
                    }
                    if n > 12 && i < n - 3 && s.user_agent.is_none() && s.client_ip.is_none() {
                        // Keep most of a long list from matching everything.
                        s.cookie = Some(NameValue {
                            name: pick(&mut rng, &cnames),
                            value: "never".into(),
                        });
                    }
                    s
                })
                .collect();
            let t = table(&specs);
            let memo = ConnMemo::default();
            let mut h = HeaderMap::new();
            for _ in 0..200 {
                if rng.u8(..4) == 0 {
                    // The same request again: the connection's memo answers.
                    let view = RequestView::new("/", &h, "10.1.2.3".parse().unwrap(), Some(&memo));
                    assert_eq!(
                        t.first_match(&view, &t.scan(&view))
                            .map(|(_, r)| r.name.clone()),
                        first_by_walking(&specs, &view, &compiled_ua),
                        "round {round}, repeated, headers {h:?}"
                    );
                    continue;
                }
                h = HeaderMap::new();
                for _ in 0..rng.usize(..4) {
                    h.append(
                        HeaderName::from_bytes(pick(&mut rng, &hnames).as_bytes()).unwrap(),
                        pick(&mut rng, &values).parse().unwrap(),
                    );
                }
                let cookies: Vec<String> = (0..rng.usize(..4))
                    .map(|_| format!("{}={}", pick(&mut rng, &cnames), pick(&mut rng, &values)))
                    .collect();
                if !cookies.is_empty() {
                    h.append("cookie", cookies.join("; ").parse().unwrap());
                }
                h.insert("user-agent", pick(&mut rng, &uas).parse().unwrap());
                let path = pick(&mut rng, &paths);
                let ip = pick(&mut rng, &ips).parse().unwrap();
                let with_memo = rng.bool().then_some(&memo);
                let view = RequestView::new(&path, &h, ip, with_memo);
                assert_eq!(
                    t.first_match(&view, &t.scan(&view))
                        .map(|(_, r)| r.name.clone()),
                    first_by_walking(&specs, &view, &compiled_ua),
                    "round {round}, {path} from {ip}, headers {h:?}"
                );
            }
        }
    }

    /// A rule's limit of `burst` requests a minute.
    fn limited(name: &str, burst: u32) -> Rule {
        let mut r = compiled(&spec(name));
        r.rate_limit = Some(crate::config::RateLimitConfig {
            key: crate::config::RateKey::ClientIp,
            rate: "1/m".into(),
            interval: std::time::Duration::from_secs(60),
            burst,
            max_keys: 16,
        });
        r
    }

    #[test]
    fn a_rules_limiter_is_kept_by_name_while_its_limit_is_the_same() {
        let counter = Arc::default();
        let old = RuleTable::new(vec![compiled(&spec("plain")), limited("beta", 2)], None)
            .with_limiters(None, &counter);
        assert!(old.limits_any());
        assert!(old.limiter(0).is_none());
        let beta = old.limiter(1).unwrap() as *const RateLimiter;
        // Moved to the front, same limit: the same table.
        let moved = RuleTable::new(vec![limited("beta", 2), limited("new", 2)], None)
            .with_limiters(Some(&old), &counter);
        assert!(std::ptr::eq(moved.limiter(0).unwrap(), beta));
        assert!(moved.limiter(1).is_some());
        // Another limit, or another name: a new table.
        let changed =
            RuleTable::new(vec![limited("beta", 3)], None).with_limiters(Some(&moved), &counter);
        assert!(!std::ptr::eq(changed.limiter(0).unwrap(), beta));
        let renamed =
            RuleTable::new(vec![limited("gamma", 2)], None).with_limiters(Some(&moved), &counter);
        assert!(!std::ptr::eq(renamed.limiter(0).unwrap(), beta));
        // No limit anywhere: nothing to look up.
        let none = RuleTable::new(vec![compiled(&spec("plain"))], None)
            .with_limiters(Some(&old), &counter);
        assert!(!none.limits_any());
    }
}
