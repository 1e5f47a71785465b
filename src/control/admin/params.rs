//! What a call says beside its path and body, read in one place for every
//! endpoint: `force`, `dry_run`, `limit` and `wait` in the query string,
//! `If-Match` and `x-cutover-reason` in the head. A value that does not
//! parse, a parameter this API does not know, and one the endpoint does
//! not take are all refused (400, naming the parameter): a dry run asked
//! for where none is possible must never act for real.

use http::header;
use http::Request;

/// The parameters of one call, each checked.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct Params {
    /// `?force=true`: apply even if traffic would go to a pool with no
    /// healthy server. `None`: not given.
    pub force: Option<bool>,
    /// `?dry_run=true`: answer with the state that would result.
    pub dry_run: Option<bool>,
    /// `?limit=N`: at most the newest N history entries.
    pub limit: Option<usize>,
    /// `If-Match: EPOCH`: refuse a change if the state moved on since.
    pub if_match: Option<u64>,
    /// Why, as the client says (`x-cutover-reason`), cleaned.
    pub reason: Option<String>,
    /// `?wait=5s`. On a change: answer once every instance of the fleet
    /// serves it, or when this long has passed. On `GET` of a rollout:
    /// answer once the rollout moves, or when this long has passed.
    pub wait: Option<std::time::Duration>,
}

/// Which parameters an endpoint takes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Takes {
    /// None (reads other than history; reload, upgrade, rollouts).
    Nothing,
    /// `limit` (the history).
    Limit,
    /// `force`, `dry_run`, `If-Match` and `wait` (changes of the routing
    /// state; `wait` for the fleet).
    Change,
    /// `wait` (a rollout, read once it moves).
    Watch,
    /// `If-Match` only (a rollout's pause, resume and abort).
    IfMatch,
}

/// The longest reason recorded.
const MAX_REASON: usize = 200;

impl Params {
    /// Read and check every parameter of `req`. `Err`: why, naming the
    /// parameter.
    pub fn extract<B>(req: &Request<B>) -> Result<Params, String> {
        let mut p = Params {
            if_match: if_match(req)?,
            reason: reason(req),
            ..Params::default()
        };
        let query = req.uri().query().unwrap_or("");
        for pair in query.split('&').filter(|s| !s.is_empty()) {
            let (name, value) = pair.split_once('=').unwrap_or((pair, ""));
            match name {
                "force" => set(&mut p.force, name, flag(name, value)?)?,
                "dry_run" => set(&mut p.dry_run, name, flag(name, value)?)?,
                "limit" => set(&mut p.limit, name, count(name, value)?)?,
                "wait" => set(&mut p.wait, name, wait(value)?)?,
                _ => {
                    return Err(format!(
                        "unknown query parameter {name:?}: this API takes force, dry_run, limit and wait"
                    ))
                }
            }
        }
        Ok(p)
    }

    /// Refuse a parameter that `endpoint` (`"POST /v1/reload"`) does not
    /// take.
    pub fn check(&self, takes: Takes, endpoint: &str) -> Result<(), String> {
        use Takes::{Change, IfMatch, Limit, Watch};
        let given: [(&str, bool, &[Takes]); 5] = [
            ("force", self.force.is_some(), &[Change]),
            ("dry_run", self.dry_run.is_some(), &[Change]),
            ("If-Match", self.if_match.is_some(), &[Change, IfMatch]),
            ("limit", self.limit.is_some(), &[Limit]),
            ("wait", self.wait.is_some(), &[Change, Watch]),
        ];
        match given
            .iter()
            .find(|(_, set, takers)| *set && !takers.contains(&takes))
        {
            Some((name, ..)) => Err(format!("{name}: {endpoint} does not take it")),
            None => Ok(()),
        }
    }

    /// `force` from the body or the query: either says so.
    pub fn force(&self, in_body: bool) -> bool {
        in_body || self.force == Some(true)
    }

    /// `dry_run` from the body or the query: either says so.
    pub fn dry_run(&self, in_body: bool) -> bool {
        in_body || self.dry_run == Some(true)
    }
}

fn set<T>(slot: &mut Option<T>, name: &str, value: T) -> Result<(), String> {
    if slot.replace(value).is_some() {
        return Err(format!("{name}: given twice"));
    }
    Ok(())
}

/// `true`, `1` or nothing (`?dry_run`) is yes; `false` or `0` is no.
fn flag(name: &str, value: &str) -> Result<bool, String> {
    match value {
        "" | "true" | "1" => Ok(true),
        "false" | "0" => Ok(false),
        other => Err(format!("{name}: must be true or false, got {other:?}")),
    }
}

/// The longest `?wait=`: a fleet that has not followed in a minute has
/// an instance that is away, which the answer says; a rollout watched
/// longer is asked again (the CLI asks every 30 s).
const MAX_WAIT: std::time::Duration = std::time::Duration::from_secs(60);

/// `?wait=5s`: a duration from above 0 up to [`MAX_WAIT`].
fn wait(value: &str) -> Result<std::time::Duration, String> {
    let d = humantime::parse_duration(value)
        .map_err(|_| format!("wait: must be a duration like 5s, got {value:?}"))?;
    if d.is_zero() || d > MAX_WAIT {
        return Err(format!(
            "wait: must be above 0s and at most 60s, got {value:?}"
        ));
    }
    Ok(d)
}

fn count(name: &str, value: &str) -> Result<usize, String> {
    value
        .parse()
        .map_err(|_| format!("{name}: must be a whole number, got {value:?}"))
}

/// `If-Match: EPOCH` (quoted, as an entity tag, or not).
fn if_match<B>(req: &Request<B>) -> Result<Option<u64>, String> {
    let Some(v) = req.headers().get(header::IF_MATCH) else {
        return Ok(None);
    };
    v.to_str()
        .ok()
        .map(|s| s.trim().trim_matches('"'))
        .and_then(|s| s.parse::<u64>().ok())
        .map(Some)
        .ok_or_else(|| "If-Match: must be an epoch number".to_string())
}

/// The reason the client gives for a change (`x-cutover-reason`):
/// printable ASCII only (other bytes are dropped), trimmed, at most 200
/// characters. `None` when nothing is left.
fn reason<B>(req: &Request<B>) -> Option<String> {
    let mut text = String::new();
    for (i, v) in req.headers().get_all("x-cutover-reason").iter().enumerate() {
        if i > 0 {
            text.push_str(", ");
        }
        text.extend(
            v.as_bytes()
                .iter()
                .filter(|b| (0x20..=0x7e).contains(*b))
                .map(|&b| char::from(b)),
        );
    }
    let cut: String = text.trim().chars().take(MAX_REASON).collect();
    let cut = cut.trim_end();
    (!cut.is_empty()).then(|| cut.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn params(uri: &str, headers: &[(&str, &str)]) -> Result<Params, String> {
        let mut b = Request::builder().uri(uri);
        for (k, v) in headers {
            b = b.header(*k, *v);
        }
        Params::extract(&b.body(()).unwrap())
    }

    #[test]
    fn flags_read_true_1_and_a_bare_name_as_yes() {
        for q in ["dry_run=true", "dry_run=1", "dry_run"] {
            let p = params(&format!("/v1/flip?{q}"), &[]).unwrap();
            assert_eq!(p.dry_run, Some(true), "{q}");
            assert!(p.dry_run(false));
        }
        let p = params("/v1/flip?force=false&dry_run=0", &[]).unwrap();
        assert_eq!((p.force, p.dry_run), (Some(false), Some(false)));
        assert!(
            !p.force(false) && p.force(true),
            "the body's word counts too"
        );
    }

    #[test]
    fn a_bad_value_an_unknown_name_or_a_repeat_is_refused_by_name() {
        for (uri, headers, needle) in [
            (
                "/v1/flip?dry_run=yes",
                &[][..],
                "dry_run: must be true or false",
            ),
            ("/v1/flip?force=2", &[][..], "force:"),
            (
                "/v1/history?limit=-1",
                &[][..],
                "limit: must be a whole number",
            ),
            (
                "/v1/flip?dryrun=true",
                &[][..],
                "unknown query parameter \"dryrun\"",
            ),
            ("/v1/flip?force&force", &[][..], "force: given twice"),
            ("/v1/flip", &[("if-match", "abc")][..], "If-Match"),
        ] {
            let e = params(uri, headers).unwrap_err();
            assert!(e.contains(needle), "{uri}: {e:?} lacks {needle:?}");
        }
    }

    #[test]
    fn an_endpoint_refuses_what_it_does_not_take() {
        let p = params("/v1/reload?dry_run=true", &[]).unwrap();
        let e = p.check(Takes::Nothing, "POST /v1/reload").unwrap_err();
        assert_eq!(e, "dry_run: POST /v1/reload does not take it");
        assert!(p.check(Takes::Change, "POST /v1/flip").is_ok());
        let p = params("/v1/status", &[("if-match", "\"3\"")]).unwrap();
        assert_eq!(p.if_match, Some(3));
        assert!(p.check(Takes::Limit, "GET /v1/history").is_err());
        let p = params("/v1/history?limit=2", &[]).unwrap();
        assert!(p.check(Takes::Limit, "GET /v1/history").is_ok());
        assert!(p.check(Takes::Change, "POST /v1/flip").is_err());
    }

    #[test]
    fn wait_goes_with_changes_and_with_a_rollout_read_only() {
        let p = params("/v1/apps/a/rollout?wait=30s", &[]).unwrap();
        assert_eq!(p.wait, Some(std::time::Duration::from_secs(30)));
        assert!(p.check(Takes::Watch, "GET /v1/apps/a/rollout").is_ok());
        assert!(p.check(Takes::Change, "POST /v1/flip").is_ok());
        let e = p.check(Takes::Nothing, "GET /v1/status").unwrap_err();
        assert_eq!(e, "wait: GET /v1/status does not take it");
        let p = params("/v1/apps/a/rollout?force", &[]).unwrap();
        assert!(p.check(Takes::Watch, "GET /v1/apps/a/rollout").is_err());
    }

    #[test]
    fn a_reason_keeps_printable_ascii_and_at_most_200_characters() {
        let long = "x".repeat(300);
        let p = params("/", &[("x-cutover-reason", &long)]).unwrap();
        assert_eq!(p.reason.unwrap().len(), 200);
        let p = params("/", &[("x-cutover-reason", "  ")]).unwrap();
        assert_eq!(p.reason, None);
    }
}
