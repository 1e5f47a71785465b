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
}

impl RequestView<'_> {
    /// The value of cookie `name`, if the request carries it
    /// (RFC 6265 §5.4: `Cookie: a=1; b=2`, possibly over several headers).
    pub fn cookie(&self, name: &str) -> Option<&str> {
        find_cookie(self.headers, name)
    }
}

pub fn find_cookie<'h>(headers: &'h HeaderMap, name: &str) -> Option<&'h str> {
    for value in headers.get_all(http::header::COOKIE) {
        let Ok(s) = value.to_str() else { continue };
        for pair in s.split(';') {
            let pair = pair.trim_start_matches(' ');
            if let Some(rest) = pair.strip_prefix(name) {
                if let Some(v) = rest.strip_prefix('=') {
                    return Some(v.trim_end().trim_matches('"'));
                }
            }
        }
    }
    None
}

#[derive(Debug, Clone)]
pub struct Rule {
    pub name: String,
    pub to: Color,
    /// Share of matching users, in basis points (0..=10000).
    pub percent_bp: u32,
    path_prefix: Option<String>,
    header: Option<(HeaderName, HeaderValue)>,
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
            cookie,
            client_ip,
            user_agent,
        })
    }

    /// Does every condition hold? A rule with no condition matches all.
    pub fn matches(&self, req: &RequestView<'_>) -> bool {
        if let Some(p) = &self.path_prefix {
            if !req.path.starts_with(p.as_str()) {
                return false;
            }
        }
        if let Some((name, value)) = &self.header {
            if !req.headers.get_all(name).iter().any(|v| v == value) {
                return false;
            }
        }
        if let Some((name, value)) = &self.cookie {
            if req.cookie(name) != Some(value.as_str()) {
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
            let ua = req
                .headers
                .get(http::header::USER_AGENT)
                .and_then(|v| v.to_str().ok())
                .unwrap_or("");
            if !re.is_match(ua) {
                return false;
            }
        }
        true
    }
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
        RequestView {
            path,
            headers,
            client_ip: ip.parse().unwrap(),
        }
    }

    #[test]
    fn cookie_is_found_among_several() {
        let mut h = HeaderMap::new();
        h.insert("cookie", "a=1; cutover=xyz; b=2".parse().unwrap());
        assert_eq!(find_cookie(&h, "cutover"), Some("xyz"));
        assert_eq!(find_cookie(&h, "cut"), None);
        assert_eq!(find_cookie(&h, "b"), Some("2"));
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
        assert!(rule.matches(&view(&h, "/beta/x", "192.0.2.7")));
        assert!(rule.matches(&view(&h, "/beta/x", "::ffff:192.0.2.7")));
        assert!(!rule.matches(&view(&h, "/alpha", "192.0.2.7")));
        assert!(!rule.matches(&view(&h, "/beta", "198.51.100.1")));
        assert!(!rule.matches(&view(&HeaderMap::new(), "/beta", "192.0.2.7")));
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
}
