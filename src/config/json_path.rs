//! `ignore_json_fields`: the JSON paths a shadow comparison leaves out
//! (`$.timestamp`, `$.items[*].id`). A small subset of JSONPath (RFC
//! 9535), enough to name a field wherever it is:
//!
//! - `$` is the body; a path must name something inside it;
//! - `.name` or `['name']`: a member of an object;
//! - `[N]`: the N-th element (from 0) of an array;
//! - `[*]`: every element of an array; `.*`: every member of an object.
//!
//! Filters, slices, recursive descent (`..`) and negative indices are not
//! part of it: a path with one is refused when the config is read.

use std::fmt;

use serde_json::Value;

/// One step of a path.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Step {
    Member(String),
    Index(usize),
    /// `[*]` or `.*`: every element or member.
    All,
}

/// A parsed `ignore_json_fields` path.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JsonPath {
    /// As written, for messages and status.
    text: String,
    steps: Vec<Step>,
}

impl fmt::Display for JsonPath {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.text)
    }
}

impl JsonPath {
    /// Parse `$.a.b`, `$.a[*].b`, `$['a b'][0]` and the like.
    pub fn parse(text: &str) -> Result<JsonPath, String> {
        let Some(mut rest) = text.strip_prefix('$') else {
            return Err(format!(
                "{text:?} must start with \"$\" (e.g. \"$.timestamp\")"
            ));
        };
        let mut steps = Vec::new();
        while !rest.is_empty() {
            let (step, after) = step(rest).map_err(|why| format!("{text:?}: {why}"))?;
            steps.push(step);
            rest = after;
        }
        if steps.is_empty() {
            return Err("\"$\" is the whole body: set compare = [\"status\"] instead".into());
        }
        Ok(JsonPath {
            text: text.to_string(),
            steps,
        })
    }

    /// Take out of `value` everything the path names (nothing if it names
    /// nothing there).
    pub fn remove_from(&self, value: &mut Value) {
        remove(value, &self.steps);
    }
}

/// The first step of `s` and what follows it.
fn step(s: &str) -> Result<(Step, &str), String> {
    if let Some(r) = s.strip_prefix(".*") {
        return Ok((Step::All, r));
    }
    if let Some(r) = s.strip_prefix('.') {
        let end = r.find(['.', '[']).unwrap_or(r.len());
        if end == 0 {
            return Err("a \".\" must be followed by a name (\"..\" is not supported)".into());
        }
        return Ok((Step::Member(r[..end].to_string()), &r[end..]));
    }
    let Some(r) = s.strip_prefix('[') else {
        return Err(format!("expected \".name\" or \"[...]\" at {s:?}"));
    };
    let Some(close) = r.find(']') else {
        return Err("a \"[\" is never closed".into());
    };
    let inside = &r[..close];
    let after = &r[close + 1..];
    if inside == "*" {
        return Ok((Step::All, after));
    }
    for q in ['\'', '"'] {
        if let Some(name) = inside.strip_prefix(q).and_then(|n| n.strip_suffix(q)) {
            return Ok((Step::Member(name.to_string()), after));
        }
    }
    match inside.parse::<usize>() {
        Ok(n) => Ok((Step::Index(n), after)),
        Err(_) => Err(format!(
            "[{inside}] is not supported: write [N], [*] or ['name']"
        )),
    }
}

fn remove(value: &mut Value, steps: &[Step]) {
    let [first, rest @ ..] = steps else {
        return;
    };
    if rest.is_empty() {
        match (first, value) {
            (Step::Member(m), Value::Object(o)) => {
                o.remove(m);
            }
            (Step::Index(i), Value::Array(a)) if *i < a.len() => {
                a.remove(*i);
            }
            (Step::All, Value::Array(a)) => a.clear(),
            (Step::All, Value::Object(o)) => o.clear(),
            _ => {}
        }
        return;
    }
    match (first, value) {
        (Step::Member(m), Value::Object(o)) => {
            if let Some(v) = o.get_mut(m) {
                remove(v, rest);
            }
        }
        (Step::Index(i), Value::Array(a)) => {
            if let Some(v) = a.get_mut(*i) {
                remove(v, rest);
            }
        }
        (Step::All, Value::Array(a)) => a.iter_mut().for_each(|v| remove(v, rest)),
        (Step::All, Value::Object(o)) => o.values_mut().for_each(|v| remove(v, rest)),
        _ => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn without(path: &str, mut v: Value) -> Value {
        JsonPath::parse(path).unwrap().remove_from(&mut v);
        v
    }

    #[test]
    fn a_member_is_removed_wherever_the_path_names_it() {
        let v = json!({"a": {"b": 1, "c": 2}, "t": 3});
        assert_eq!(without("$.t", v.clone()), json!({"a": {"b": 1, "c": 2}}));
        assert_eq!(without("$.a.b", v.clone()), json!({"a": {"c": 2}, "t": 3}));
        assert_eq!(
            without("$['a']['c']", v.clone()),
            json!({"a": {"b": 1}, "t": 3})
        );
        assert_eq!(without("$.missing.x", v.clone()), v);
    }

    #[test]
    fn wildcards_reach_every_element_and_member() {
        let v = json!({"items": [{"id": 1, "n": "a"}, {"id": 2, "n": "b"}]});
        assert_eq!(
            without("$.items[*].id", v.clone()),
            json!({"items": [{"n": "a"}, {"n": "b"}]})
        );
        assert_eq!(
            without("$.items[1]", v.clone()),
            json!({"items": [{"id": 1, "n": "a"}]})
        );
        assert_eq!(
            without("$.*.id", json!({"x": {"id": 1}, "y": {"id": 2, "k": 0}})),
            json!({"x": {}, "y": {"k": 0}})
        );
    }

    #[test]
    fn paths_outside_the_subset_are_refused_with_why() {
        for bad in [
            "timestamp",
            "$",
            "$..id",
            "$.a[?(@.x)]",
            "$.a[-1]",
            "$.a[0",
            "$x",
        ] {
            assert!(JsonPath::parse(bad).is_err(), "{bad} was accepted");
        }
        assert_eq!(JsonPath::parse("$.a[*].b").unwrap().to_string(), "$.a[*].b");
    }
}
