//! A canary rule, validated and compiled from its [`RuleSpec`]: the
//! colour and share it sends, and each condition in the typed form the
//! routing table tests (header names and values, networks, a compiled
//! regex).

use std::net::IpAddr;

use http::{HeaderName, HeaderValue};
use ipnet::IpNet;
use regex::bytes::Regex;

use crate::model::{Color, NameValue, RuleSpec};

/// One rule, validated and compiled. The routing table evaluates its
/// conditions (`route::rule::RuleTable`); a condition that is `None` is
/// not part of the rule.
#[derive(Debug, Clone)]
pub struct Rule {
    pub name: String,
    pub to: Color,
    /// Share of matching users, in basis points (0..=10000).
    pub percent_bp: u32,
    pub path_prefix: Option<String>,
    pub header: Option<(HeaderName, HeaderValue)>,
    pub cookie: Option<(String, String)>,
    pub client_ip: Option<Vec<IpNet>>,
    pub user_agent: Option<Regex>,
    /// The rule's own `rate_limit`, on the requests it places; set by
    /// `config::compile_rules`, which checks it.
    pub rate_limit: Option<super::types::RateLimitConfig>,
}

/// A rule's errors: `(field, message)` pairs.
type Errs = Vec<(&'static str, String)>;

impl Rule {
    /// Validate and compile one rule; errors are `(field, message)` pairs.
    pub fn compile(spec: &RuleSpec) -> Result<Rule, Errs> {
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
            .and_then(|re| user_agent(re, &mut errs));
        let header = spec.header.as_ref().and_then(|nv| header(nv, &mut errs));
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
        let client_ip = spec.client_ip.as_deref().map(|l| client_ip(l, &mut errs));
        if let Some(p) = &spec.path_prefix {
            if !p.starts_with('/') {
                errs.push(("path_prefix", format!("must start with '/', got {p:?}")));
            }
        }
        all_on_purpose(spec, &mut errs);
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
            rate_limit: None,
        })
    }
}

fn user_agent(re: &str, errs: &mut Errs) -> Option<Regex> {
    match Regex::new(re) {
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
    }
}

fn header(nv: &NameValue, errs: &mut Errs) -> Option<(HeaderName, HeaderValue)> {
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
}

fn client_ip(list: &[String], errs: &mut Errs) -> Vec<IpNet> {
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
}

/// A rule without a condition takes every request (of its percent): only
/// on purpose, said with `all = true`, which no condition may go with.
fn all_on_purpose(spec: &RuleSpec, errs: &mut Errs) {
    let conditions = spec.user_agent.is_some()
        || spec.header.is_some()
        || spec.cookie.is_some()
        || spec.client_ip.is_some()
        || spec.path_prefix.is_some();
    match (conditions, spec.all) {
        (false, Some(true)) | (true, None | Some(false)) => {}
        (false, _) => errs.push((
            "all",
            "a rule without a condition (user_agent, header, cookie, client_ip, path_prefix) takes all traffic: say all = true if that is meant".to_string(),
        )),
        (true, Some(true)) => errs.push((
            "all",
            "all = true takes every request: it cannot go with a condition".to_string(),
        )),
    }
}

pub fn parse_net(s: &str) -> Option<IpNet> {
    s.parse::<IpNet>()
        .ok()
        .or_else(|| s.parse::<IpAddr>().ok().map(IpNet::from))
}
