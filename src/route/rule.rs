//! Canary rules, compiled: the conditions of one rule must all hold
//! (SPEC §3). Cheap conditions are tested first and the user-agent regex
//! last, so a request that fails a header or path test never runs it.

use std::net::IpAddr;

use http::{HeaderMap, HeaderName, HeaderValue};
use ipnet::IpNet;
use regex::Regex;

use crate::config::{Color, RuleSpec};

/// What a rule looks at in a request. Built once per request, no copies.
pub struct RequestView<'a> {
    pub path: &'a str,
    pub headers: &'a HeaderMap,
    pub client_ip: IpAddr,
    /// The client connection's memory of user-agent verdicts, if any.
    pub ua_cache: Option<&'a UaCache>,
    /// The `Cookie` field, split into pairs once, on first use.
    cookies: std::cell::OnceCell<CookieIndex<'a>>,
}

/// The pairs of a request's `Cookie` field, as offsets into it.
struct CookieIndex<'a> {
    field: &'a [u8],
    /// `(name start, name end, value start, value end)`.
    pairs: [(u16, u16, u16, u16); MAX_INDEXED_COOKIES],
    len: usize,
    /// More pairs than indexed, a field over 64 KiB, or several `Cookie`
    /// fields (HTTP/2 may split them): look up by scanning instead.
    scan: bool,
}

const MAX_INDEXED_COOKIES: usize = 16;

impl<'a> CookieIndex<'a> {
    fn new(headers: &'a HeaderMap) -> CookieIndex<'a> {
        let mut all = headers.get_all(http::header::COOKIE).iter();
        let (field, several) = match (all.next(), all.next()) {
            (None, _) => (&[][..], false),
            (Some(v), next) => (v.as_bytes(), next.is_some()),
        };
        let mut index = CookieIndex {
            field,
            pairs: [(0, 0, 0, 0); MAX_INDEXED_COOKIES],
            len: 0,
            scan: several || field.len() > usize::from(u16::MAX),
        };
        if index.scan {
            return index;
        }
        let mut start = 0;
        while start < field.len() {
            let end = memchr::memchr(b';', &field[start..]).map_or(field.len(), |i| start + i);
            if let Some((n0, n1, v0, v1)) = split_pair(field, start, end) {
                if index.len == MAX_INDEXED_COOKIES {
                    index.scan = true;
                    break;
                }
                index.pairs[index.len] = (n0 as u16, n1 as u16, v0 as u16, v1 as u16);
                index.len += 1;
            }
            start = end + 1;
        }
        index
    }

    fn get(&self, headers: &'a HeaderMap, name: &[u8]) -> Option<&'a [u8]> {
        if self.scan {
            return headers
                .get_all(http::header::COOKIE)
                .iter()
                .find_map(|v| cookie_in(v.as_bytes(), name));
        }
        self.pairs[..self.len].iter().find_map(|&(n0, n1, v0, v1)| {
            (&self.field[n0 as usize..n1 as usize] == name)
                .then(|| &self.field[v0 as usize..v1 as usize])
        })
    }
}

/// Offsets of `name` and `value` in `field[start..end]` (`name=value`, with
/// spaces and quotes trimmed); `None` for a pair without `=` or value.
fn split_pair(field: &[u8], start: usize, end: usize) -> Option<(usize, usize, usize, usize)> {
    let pair = &field[start..end];
    let eq = memchr::memchr(b'=', pair)?;
    let n0 = start
        + pair
            .iter()
            .take_while(|b| **b == b' ' || **b == b'\t')
            .count();
    let n1 = start + eq;
    let mut v0 = n1 + 1;
    let mut v1 = end;
    while v1 > v0 && matches!(field[v1 - 1], b' ' | b'\t') {
        v1 -= 1;
    }
    if v1 - v0 >= 2 && field[v0] == b'"' && field[v1 - 1] == b'"' {
        v0 += 1;
        v1 -= 1;
    }
    (v1 > v0 && n1 > n0).then_some((n0, n1, v0, v1))
}

impl<'a> RequestView<'a> {
    pub fn new(
        path: &'a str,
        headers: &'a HeaderMap,
        client_ip: IpAddr,
        ua_cache: Option<&'a UaCache>,
    ) -> Self {
        RequestView {
            path,
            headers,
            client_ip,
            ua_cache,
            cookies: std::cell::OnceCell::new(),
        }
    }

    /// The raw value of cookie `name`, if the request carries it
    /// (RFC 6265 §5.4: `Cookie: a=1; b=2`). An empty value counts as absent.
    pub fn cookie_bytes(&self, name: &str) -> Option<&'a [u8]> {
        self.cookies
            .get_or_init(|| CookieIndex::new(self.headers))
            .get(self.headers, name.as_bytes())
    }

    /// [`Self::cookie_bytes`] as text.
    pub fn cookie(&self, name: &str) -> Option<&'a str> {
        self.cookie_bytes(name)
            .and_then(|v| std::str::from_utf8(v).ok())
    }

    fn user_agent(&self) -> &[u8] {
        self.headers
            .get(http::header::USER_AGENT)
            .map_or(&[], |v| v.as_bytes())
    }
}

/// Cookie `name` in the headers (where no [`RequestView`] exists).
pub fn find_cookie<'h>(headers: &'h HeaderMap, name: &str) -> Option<&'h str> {
    headers
        .get_all(http::header::COOKIE)
        .iter()
        .find_map(|v| cookie_in(v.as_bytes(), name.as_bytes()))
        .and_then(|v| std::str::from_utf8(v).ok())
}

/// Cookie `name` in one `Cookie` field, by scanning it.
fn cookie_in<'h>(field: &'h [u8], name: &[u8]) -> Option<&'h [u8]> {
    let mut start = 0;
    while start < field.len() {
        let end = memchr::memchr(b';', &field[start..]).map_or(field.len(), |i| start + i);
        if let Some((n0, n1, v0, v1)) = split_pair(field, start, end) {
            if &field[n0..n1] == name {
                return Some(&field[v0..v1]);
            }
        }
        start = end + 1;
    }
    None
}

/// User-agent verdicts remembered per client connection. A browser sends
/// the same `User-Agent` on every request of a keep-alive connection, so
/// the regexes run once per connection rather than once per request. The
/// memory is keyed by the app's [`rule_set`](crate::route::App) id, which
/// changes whenever the rules do.
#[derive(Debug, Default)]
pub struct UaCache {
    entry: std::cell::RefCell<UaEntry>,
}

#[derive(Debug, Default)]
struct UaEntry {
    rule_set: u64,
    ua: Vec<u8>,
    /// Bit i: rule i's regex was evaluated for `ua`.
    known: u64,
    /// Bit i: and it matched.
    matched: u64,
}

impl UaCache {
    fn verdict(&self, rule_set: u64, index: usize, ua: &[u8], re: &Regex) -> bool {
        if index >= 64 {
            return re.is_match(std::str::from_utf8(ua).unwrap_or(""));
        }
        let Ok(mut e) = self.entry.try_borrow_mut() else {
            return re.is_match(std::str::from_utf8(ua).unwrap_or(""));
        };
        if e.rule_set != rule_set || e.ua != ua {
            e.rule_set = rule_set;
            e.ua.clear();
            e.ua.extend_from_slice(ua);
            e.known = 0;
            e.matched = 0;
        }
        let bit = 1u64 << index;
        if e.known & bit == 0 {
            e.known |= bit;
            if re.is_match(std::str::from_utf8(ua).unwrap_or("")) {
                e.matched |= bit;
            }
        }
        e.matched & bit != 0
    }
}

#[derive(Debug, Clone)]
pub struct Rule {
    pub name: String,
    pub to: Color,
    /// Share of matching users, in basis points (0..=10000).
    pub percent_bp: u32,
    path_prefix: Option<String>,
    header: Option<(HeaderName, HeaderValue)>,
    /// The header's bit in the app's per-request presence mask, if any.
    header_slot: Option<u8>,
    cookie: Option<(String, String)>,
    client_ip: Option<Vec<IpNet>>,
    user_agent: Option<Regex>,
}

impl Rule {
    /// Validate and compile one rule; errors are `(field, message)` pairs.
    pub fn compile(spec: &RuleSpec) -> Result<Rule, Vec<(&'static str, String)>> {
        let mut errs = Vec::new();
        let to = Color::parse(&spec.to).unwrap_or_else(|| {
            errs.push((
                "to",
                format!("must be \"blue\" or \"green\", got {:?}", spec.to),
            ));
            Color::Green
        });
        let percent = spec.percent.unwrap_or(100.0);
        if !(0.0..=100.0).contains(&percent) {
            errs.push((
                "percent",
                format!("must be between 0 and 100, got {percent}"),
            ));
        }
        let user_agent = spec
            .user_agent
            .as_deref()
            .and_then(|re| match Regex::new(re) {
                Ok(r) => Some(r),
                Err(e) => {
                    let first = e
                        .to_string()
                        .lines()
                        .last()
                        .unwrap_or("")
                        .trim()
                        .to_string();
                    errs.push(("user_agent", format!("invalid regex {re:?}: {first}")));
                    None
                }
            });
        let header = spec.header.as_ref().and_then(|nv| {
            match (
                HeaderName::from_bytes(nv.name.as_bytes()),
                HeaderValue::from_str(&nv.value),
            ) {
                (Ok(n), Ok(v)) => Some((n, v)),
                (Err(_), _) => {
                    errs.push((
                        "header.name",
                        format!("{:?} is not a valid header name", nv.name),
                    ));
                    None
                }
                (_, Err(_)) => {
                    errs.push((
                        "header.value",
                        format!("{:?} is not a valid header value", nv.value),
                    ));
                    None
                }
            }
        });
        let cookie = spec.cookie.as_ref().and_then(|nv| {
            if nv.name.is_empty() || nv.name.contains([';', '=', ' ']) {
                errs.push((
                    "cookie.name",
                    format!("{:?} is not a valid cookie name", nv.name),
                ));
                None
            } else {
                Some((nv.name.clone(), nv.value.clone()))
            }
        });
        let client_ip = spec.client_ip.as_ref().map(|list| {
            if list.is_empty() {
                errs.push(("client_ip", "must list at least one network".to_string()));
            }
            list.iter()
                .filter_map(|s| {
                    parse_net(s).or_else(|| {
                        errs.push((
                            "client_ip",
                            format!("{s:?} is not an address or CIDR network"),
                        ));
                        None
                    })
                })
                .collect()
        });
        if let Some(p) = &spec.path_prefix {
            if !p.starts_with('/') {
                errs.push(("path_prefix", format!("must start with '/', got {p:?}")));
            }
        }
        if !errs.is_empty() {
            return Err(errs);
        }
        Ok(Rule {
            name: spec.name.clone(),
            to,
            percent_bp: (percent * 100.0).round() as u32,
            path_prefix: spec.path_prefix.clone(),
            header,
            header_slot: None,
            cookie,
            client_ip,
            user_agent,
        })
    }

    /// Give the rule's header condition a bit among the app's `names`, so
    /// that one pass over the request's names (see [`header_presence`])
    /// answers "absent" without a lookup per rule.
    pub fn assign_header_slot(&mut self, names: &mut Vec<HeaderName>) {
        let Some((name, _)) = &self.header else {
            return;
        };
        let i = names.iter().position(|n| n == name).unwrap_or_else(|| {
            names.push(name.clone());
            names.len() - 1
        });
        self.header_slot = u8::try_from(i).ok().filter(|i| *i < 64);
    }

    /// Does every condition hold? A rule with no condition matches all.
    /// `rule_set` and `index` identify the rule for the user-agent memory;
    /// `present(slot)` says whether a header with that slot is in the
    /// request at all.
    pub fn matches(
        &self,
        req: &RequestView<'_>,
        rule_set: u64,
        index: usize,
        present: &dyn Fn(u8) -> bool,
    ) -> bool {
        if let Some(p) = &self.path_prefix {
            if !req.path.starts_with(p.as_str()) {
                return false;
            }
        }
        if let Some((name, value)) = &self.header {
            if self.header_slot.is_some_and(|slot| !present(slot)) {
                return false;
            }
            if !req.headers.get_all(name).iter().any(|v| v == value) {
                return false;
            }
        }
        if let Some((name, value)) = &self.cookie {
            if req.cookie_bytes(name) != Some(value.as_bytes()) {
                return false;
            }
        }
        if let Some(nets) = &self.client_ip {
            let ip = canonical_ip(req.client_ip);
            if !nets.iter().any(|n| n.contains(&ip)) {
                return false;
            }
        }
        if let Some(re) = &self.user_agent {
            let ua = req.user_agent();
            let hit = match req.ua_cache {
                Some(cache) => cache.verdict(rule_set, index, ua, re),
                None => re.is_match(std::str::from_utf8(ua).unwrap_or("")),
            };
            if !hit {
                return false;
            }
        }
        true
    }
}

/// Bit i set: a header named `names[i]` is in `headers`. One pass over the
/// request's names; standard names compare by tag, custom ones by bytes.
pub fn header_presence(headers: &HeaderMap, names: &[HeaderName]) -> u64 {
    let mut bits = 0u64;
    for key in headers.keys() {
        for (i, n) in names.iter().enumerate().take(64) {
            if key == n {
                bits |= 1 << i;
            }
        }
    }
    bits
}

/// An IPv4 client seen through a dual-stack socket (`::ffff:a.b.c.d`) is
/// matched as IPv4.
fn canonical_ip(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map(IpAddr::V4).unwrap_or(ip),
        v4 => v4,
    }
}

fn parse_net(s: &str) -> Option<IpNet> {
    s.parse::<IpNet>()
        .ok()
        .or_else(|| s.parse::<IpAddr>().ok().map(IpNet::from))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::NameValue;

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
        }
    }

    fn view<'a>(headers: &'a HeaderMap, path: &'a str, ip: &str) -> RequestView<'a> {
        RequestView::new(path, headers, ip.parse().unwrap(), None)
    }

    #[test]
    fn cookie_is_found_among_several() {
        let mut h = HeaderMap::new();
        h.insert("cookie", "a=1; cutover=xyz; b=2".parse().unwrap());
        assert_eq!(find_cookie(&h, "cutover"), Some("xyz"));
        assert_eq!(find_cookie(&h, "cut"), None);
        assert_eq!(find_cookie(&h, "b"), Some("2"));
        assert_eq!(find_cookie(&h, "a"), Some("1"));
        h.insert("cookie", "q=\"quoted\" ;x=".parse().unwrap());
        assert_eq!(find_cookie(&h, "q"), Some("quoted"));
        assert_eq!(find_cookie(&h, "x"), None);
        let v = RequestView::new("/", &h, "127.0.0.1".parse().unwrap(), None);
        assert_eq!(v.cookie("q"), Some("quoted"));
        assert_eq!(v.cookie("x"), None);
        let mut many = HeaderMap::new();
        let field: Vec<String> = (0..40).map(|i| format!("c{i}=v{i}")).collect();
        many.insert("cookie", field.join("; ").parse().unwrap());
        let v = RequestView::new("/", &many, "127.0.0.1".parse().unwrap(), None);
        assert_eq!(v.cookie("c3"), Some("v3"));
        assert_eq!(
            v.cookie("c39"),
            Some("v39"),
            "past the indexed pairs, lookups scan"
        );
        let mut split = HeaderMap::new();
        split.append("cookie", "a=1".parse().unwrap());
        split.append("cookie", "b=2".parse().unwrap());
        let v = RequestView::new("/", &split, "127.0.0.1".parse().unwrap(), None);
        assert_eq!((v.cookie("a"), v.cookie("b")), (Some("1"), Some("2")));
    }

    #[test]
    fn user_agent_verdicts_are_remembered_per_rule_set_and_agent() {
        let mut s = spec("mobile");
        s.user_agent = Some("(?i)iphone".into());
        let rule = Rule::compile(&s).unwrap();
        let cache = UaCache::default();
        let mut iphone = HeaderMap::new();
        iphone.insert("user-agent", "Mozilla (iPhone)".parse().unwrap());
        let mut desktop = HeaderMap::new();
        desktop.insert("user-agent", "Mozilla (X11)".parse().unwrap());
        let v = |h: &HeaderMap, set| {
            let view = RequestView::new("/", h, "127.0.0.1".parse().unwrap(), Some(&cache));
            rule.matches(&view, set, 3, &|_| true)
        };
        assert!(v(&iphone, 1));
        assert!(v(&iphone, 1));
        assert!(!v(&desktop, 1), "a new user agent is evaluated afresh");
        assert!(v(&iphone, 2), "a new rule set is evaluated afresh");
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
        let rule = Rule::compile(&s).unwrap();
        let mut h = HeaderMap::new();
        h.insert("x-preview", "yes".parse().unwrap());
        assert!(rule.matches(&view(&h, "/beta/x", "192.0.2.7"), 0, 0, &|_| true));
        assert!(rule.matches(&view(&h, "/beta/x", "::ffff:192.0.2.7"), 0, 0, &|_| true));
        assert!(!rule.matches(&view(&h, "/alpha", "192.0.2.7"), 0, 0, &|_| true));
        assert!(!rule.matches(&view(&h, "/beta", "198.51.100.1"), 0, 0, &|_| true));
        assert!(!rule.matches(
            &view(&HeaderMap::new(), "/beta", "192.0.2.7"),
            0,
            0,
            &|_| true
        ));
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
    fn header_rules_share_slots_and_absent_headers_fail_fast() {
        let mk = |name: &str, header: &str, value: &str| {
            let mut s = spec(name);
            s.header = Some(NameValue {
                name: header.into(),
                value: value.into(),
            });
            Rule::compile(&s).unwrap()
        };
        let mut rules = vec![
            mk("a1", "x-a", "1"),
            mk("b", "x-b", "1"),
            mk("a2", "X-A", "2"),
        ];
        let mut names = Vec::new();
        for r in &mut rules {
            r.assign_header_slot(&mut names);
        }
        assert_eq!(names.len(), 2, "x-a is one slot whatever its case");
        let mut h = HeaderMap::new();
        h.insert("x-a", "2".parse().unwrap());
        let bits = header_presence(&h, &names);
        assert_eq!(bits, 0b01);
        let present = |slot: u8| bits & (1 << slot) != 0;
        let v = view(&h, "/", "127.0.0.1");
        assert!(
            !rules[0].matches(&v, 0, 0, &present),
            "present, other value"
        );
        assert!(!rules[1].matches(&v, 0, 1, &present), "absent");
        assert!(rules[2].matches(&v, 0, 2, &present));
    }
}
