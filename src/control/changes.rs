//! What a change changed, in words, computed from an app's state before
//! and after it: the `changes` of each `GET /v1/history` entry and of
//! `cutover history`. Nothing here is stored; the history keeps the two
//! states whole.
//!
//! ```text
//! live blue -> green
//! split 0% -> 10%
//! rules: added "testers" (header x-preview=1 -> green)
//! rules: removed "mobile"
//! rules: "canary" 5% -> 20%
//! server blue/10.0.0.1:80 ready -> drain
//! mirror configured -> 10%
//! ```

use std::collections::BTreeSet;

use crate::config::RuleSpec;
use crate::model::Compared;
use crate::route::snapshot::ServerSetting;
use crate::route::AppState;

/// One line per difference between `before` and `after`: live colour,
/// split, rules (added, removed, changed, reordered), servers, mirror.
pub fn describe(before: &AppState, after: &AppState) -> Vec<String> {
    let mut out = Vec::new();
    if before.live != after.live {
        out.push(format!("live {} -> {}", before.live, after.live));
    }
    if before.standby_percent != after.standby_percent {
        out.push(format!(
            "split {} -> {}",
            percent(before.standby_percent),
            percent(after.standby_percent)
        ));
    }
    rules(&before.rules, &after.rules, &mut out);
    let keys: BTreeSet<&String> = before.servers.keys().chain(after.servers.keys()).collect();
    for key in keys {
        let (b, a) = (before.servers.get(key), after.servers.get(key));
        if b == a {
            continue;
        }
        out.push(format!("server {key} {}", server(b, a)));
    }
    if before.mirror_percent != after.mirror_percent {
        // Unset: the config's `[apps.NAME.mirror] percent` applies.
        let shown = |p: Option<f64>| p.map_or("configured".into(), percent);
        out.push(format!(
            "mirror {} -> {}",
            shown(before.mirror_percent),
            shown(after.mirror_percent)
        ));
    }
    if before.mirror_compare != after.mirror_compare {
        let shown = |c: &Option<Vec<Compared>>| {
            c.as_deref()
                .map_or("configured".into(), |c| format!("[{}]", Compared::join(c)))
        };
        out.push(format!(
            "mirror compare {} -> {}",
            shown(&before.mirror_compare),
            shown(&after.mirror_compare)
        ));
    }
    out
}

/// `12.5%`, `10%`.
pub fn percent(p: f64) -> String {
    if p.fract() == 0.0 {
        format!("{p:.0}%")
    } else {
        format!("{p}%")
    }
}

fn rules(before: &[RuleSpec], after: &[RuleSpec], out: &mut Vec<String>) {
    let find = |list: &'_ [RuleSpec], name: &str| -> Option<usize> {
        list.iter().position(|r| r.name == name)
    };
    for r in before {
        if find(after, &r.name).is_none() {
            out.push(format!("rules: removed {:?}", r.name));
        }
    }
    for r in after {
        match find(before, &r.name) {
            None => out.push(format!("rules: added {:?} ({})", r.name, summary(r))),
            Some(i) if before[i] != *r => out.push(format!(
                "rules: {:?} {}",
                r.name,
                rule_change(&before[i], r)
            )),
            Some(_) => {}
        }
    }
    // The rules both lists have, in a different order: the first that
    // matches a request wins, so order is a change too.
    let common = |list: &[RuleSpec], other: &[RuleSpec]| -> Vec<String> {
        list.iter()
            .filter(|r| find(other, &r.name).is_some())
            .map(|r| r.name.clone())
            .collect()
    };
    let (was, now) = (common(before, after), common(after, before));
    if was != now {
        out.push(format!(
            "rules: order {} -> {}",
            was.join(", "),
            now.join(", ")
        ));
    }
}

/// `header x-preview=1 -> green`, `user_agent ~ (?i)android -> green, 20%`.
pub fn summary(r: &RuleSpec) -> String {
    let share = match r.percent {
        Some(p) if p != 100.0 => format!(", {}", percent(p)),
        _ => String::new(),
    };
    format!("{} -> {}{share}", conditions(r), r.to)
}

/// A rule's conditions in words; `every request` when it has none.
pub fn conditions(r: &RuleSpec) -> String {
    let mut c = Vec::new();
    if let Some(ua) = &r.user_agent {
        c.push(format!("user_agent ~ {ua}"));
    }
    if let Some(h) = &r.header {
        c.push(format!("header {}={}", h.name, h.value));
    }
    if let Some(k) = &r.cookie {
        c.push(format!("cookie {}={}", k.name, k.value));
    }
    if let Some(ips) = &r.client_ip {
        c.push(format!("client_ip in {}", ips.join(",")));
    }
    if let Some(p) = &r.path_prefix {
        c.push(format!("path {p}*"));
    }
    if c.is_empty() {
        "every request".into()
    } else {
        c.join(" and ")
    }
}

/// A rule's own `rate_limit` in words: `rate_limit 5/s burst 10 by
/// header:x-api-key`; `None` without one.
pub fn limit(r: &RuleSpec) -> Option<String> {
    let l = r.rate_limit.as_ref()?;
    let mut out = format!("rate_limit {}", l.rate.as_deref().unwrap_or("?"));
    if let Some(b) = l.burst {
        out.push_str(&format!(" burst {b}"));
    }
    out.push_str(&format!(" by {}", l.key.as_deref().unwrap_or("client_ip")));
    Some(out)
}

/// How one rule (same name) changed: `5% -> 20%`, `to green -> blue`,
/// `when header a=1 -> header a=2`.
fn rule_change(b: &RuleSpec, a: &RuleSpec) -> String {
    let mut parts = Vec::new();
    let (bp, ap) = (b.percent.unwrap_or(100.0), a.percent.unwrap_or(100.0));
    if bp != ap {
        parts.push(format!("{} -> {}", percent(bp), percent(ap)));
    }
    if b.to != a.to {
        parts.push(format!("to {} -> {}", b.to, a.to));
    }
    let (bc, ac) = (conditions(b), conditions(a));
    if bc != ac {
        parts.push(format!("when {bc} -> {ac}"));
    }
    if b.rate_limit != a.rate_limit {
        let words = |r: &RuleSpec| limit(r).unwrap_or_else(|| "no rate_limit".into());
        parts.push(format!("{} -> {}", words(b), words(a)));
    }
    if parts.is_empty() {
        "changed".into()
    } else {
        parts.join(", ")
    }
}

/// `ready -> drain`, `weight 3 -> 5`; a server not listed is ready with
/// its configured weight.
fn server(b: Option<&ServerSetting>, a: Option<&ServerSetting>) -> String {
    let state = |s: Option<&ServerSetting>| s.map(|s| s.state).unwrap_or_default();
    let weight = |s: Option<&ServerSetting>| match s.and_then(|s| s.weight) {
        Some(w) => w.to_string(),
        None => "configured".into(),
    };
    let mut parts = Vec::new();
    if state(b) != state(a) {
        parts.push(format!("{} -> {}", state(b).as_str(), state(a).as_str()));
    }
    if weight(b) != weight(a) {
        parts.push(format!("weight {} -> {}", weight(b), weight(a)));
    }
    parts.join(", ")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{Color, NameValue};
    use crate::route::snapshot::ServerState;

    fn state(live: Color, p: f64, rules: Vec<RuleSpec>) -> AppState {
        AppState {
            live,
            standby_percent: p,
            rules,
            runtime_rules: true,
            servers: Default::default(),
            mirror_percent: None,
            mirror_compare: None,
        }
    }

    fn rule(name: &str, to: &str, percent: Option<f64>) -> RuleSpec {
        RuleSpec {
            name: name.into(),
            to: to.into(),
            percent,
            user_agent: None,
            header: Some(NameValue {
                name: "x-preview".into(),
                value: "1".into(),
            }),
            cookie: None,
            client_ip: None,
            path_prefix: None,
            all: None,
            rate_limit: None,
        }
    }

    #[test]
    fn every_kind_of_difference_is_named() {
        let before = state(
            Color::Blue,
            0.0,
            vec![
                rule("mobile", "green", None),
                rule("canary", "green", Some(5.0)),
                rule("a", "green", None),
                rule("b", "green", None),
            ],
        );
        let mut after = state(
            Color::Green,
            12.5,
            vec![
                rule("canary", "green", Some(20.0)),
                rule("b", "green", None),
                rule("a", "green", None),
                rule("testers", "green", None),
            ],
        );
        after.servers.insert(
            "blue/10.0.0.1:80".into(),
            ServerSetting {
                state: ServerState::Drain,
                weight: Some(3),
            },
        );
        after.mirror_percent = Some(10.0);
        assert_eq!(
            describe(&before, &after),
            [
                "live blue -> green",
                "split 0% -> 12.5%",
                "rules: removed \"mobile\"",
                "rules: \"canary\" 5% -> 20%",
                "rules: added \"testers\" (header x-preview=1 -> green)",
                "rules: order canary, a, b -> canary, b, a",
                "server blue/10.0.0.1:80 ready -> drain, weight configured -> 3",
                "mirror configured -> 10%",
            ]
        );
        assert_eq!(
            describe(&after, &after),
            Vec::<String>::new(),
            "no change, no words"
        );
        let mut moved = rule("canary", "blue", Some(20.0));
        moved.header = None;
        moved.path_prefix = Some("/beta".into());
        let later = state(Color::Green, 12.5, vec![moved]);
        let words = describe(
            &state(Color::Green, 12.5, vec![after.rules[0].clone()]),
            &later,
        );
        assert_eq!(
            words,
            ["rules: \"canary\" to green -> blue, when header x-preview=1 -> path /beta*"]
        );
        let mut limited = later.clone();
        limited.rules[0].rate_limit = Some(crate::model::RateLimitSpec {
            rate: Some("5/s".into()),
            burst: Some(10),
            ..Default::default()
        });
        assert_eq!(
            describe(&later, &limited),
            ["rules: \"canary\" no rate_limit -> rate_limit 5/s burst 10 by client_ip"]
        );
    }
}
