//! What shadow traffic leaves behind: per-app counts of how each copy
//! ended and the last differences found, and the pure comparison that
//! says where two answers first differ ([`body_divergence`],
//! [`header_divergence`]). The copies themselves are sent by
//! `proxy::mirror`; the counts are the record the snapshot carries from
//! one state of the world to the next, as it does a colour's statistics.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::Mutex;

use http::{HeaderMap, HeaderName};
use serde_json::Value;

use crate::config::JsonPath;

/// How one sampled request's copy ended, as the `outcome` label of
/// `cutover_mirror_total`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// Both answers in the same status class (and with the same body, when
    /// bodies are compared).
    Same,
    StatusDiffers,
    /// Same status class, different bodies.
    BodyDiffers,
    /// Same status class and body, different header fields (when
    /// compared).
    HeadersDiffer,
    /// The standby gave no whole answer: connect failure, timeout, or a
    /// broken response.
    Error,
    /// `max_in_flight` copies were under way already.
    Dropped,
    /// Not copied, or nothing to compare it with: see [`Skip`].
    Skipped,
}

impl Outcome {
    pub const ALL: [Outcome; 7] = [
        Outcome::Same,
        Outcome::StatusDiffers,
        Outcome::BodyDiffers,
        Outcome::HeadersDiffer,
        Outcome::Error,
        Outcome::Dropped,
        Outcome::Skipped,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Outcome::Same => "same",
            Outcome::StatusDiffers => "status_differs",
            Outcome::BodyDiffers => "body_differs",
            Outcome::HeadersDiffer => "headers_differ",
            Outcome::Error => "error",
            Outcome::Dropped => "dropped",
            Outcome::Skipped => "skipped",
        }
    }
}

/// Why a sampled request was not compared, as the `reason` label of
/// `cutover_mirror_skipped_total`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Skip {
    /// Its method is not among `methods`.
    Method,
    /// A WebSocket upgrade or `CONNECT`: a tunnel, not an answer.
    Upgrade,
    /// A body of unknown length (chunked, or HTTP/2 without
    /// `Content-Length`): it could not be copied within `max_body`.
    BodyLengthUnknown,
    /// A body longer than `max_body`.
    BodyTooLarge,
    /// The standby colour had no healthy server in rotation.
    NoServer,
    /// The live request got no whole answer from its upstream (a failed
    /// connect, a timeout, the client gone, its body not sent whole): there
    /// is nothing to compare the copy with.
    LiveIncomplete,
}

impl Skip {
    pub const ALL: [Skip; 6] = [
        Skip::Method,
        Skip::Upgrade,
        Skip::BodyLengthUnknown,
        Skip::BodyTooLarge,
        Skip::NoServer,
        Skip::LiveIncomplete,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Skip::Method => "method",
            Skip::Upgrade => "upgrade",
            Skip::BodyLengthUnknown => "body_length_unknown",
            Skip::BodyTooLarge => "body_too_large",
            Skip::NoServer => "no_server",
            Skip::LiveIncomplete => "live_incomplete",
        }
    }
}

/// How many differences status keeps.
pub const KEPT_DIFFERENCES: usize = 20;

/// One copy whose answer differed from the live one (or that failed).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Difference {
    /// RFC 3339, UTC, to the millisecond.
    pub time: String,
    pub method: String,
    /// Without its query, which may carry what a status page should not.
    pub path: String,
    pub live_status: u16,
    /// `None` when the standby gave no answer.
    pub shadow_status: Option<u16>,
    /// `status_differs`, `body_differs`, `headers_differ` or `error`.
    pub outcome: &'static str,
    /// For an `error`: `connect`, `timeout` or `upstream`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<&'static str>,
    /// For `body_differs` and `headers_differ`: where the answers first
    /// differ, and how.
    #[serde(flatten)]
    pub divergence: Option<Divergence>,
}

/// Where two answers first differ, and what each has there.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Divergence {
    /// A JSON path (`$.items[2].price`) when both bodies are JSON; else
    /// `byte N`, the offset of the first differing byte; for header
    /// fields, `header NAME`.
    #[serde(rename = "where")]
    pub at: String,
    /// The live answer's value there (`None`: it has none), as JSON text
    /// for a JSON path, else the bytes from the offset; cut to
    /// [`SHOWN_BYTES`] bytes.
    pub live_value: Option<String>,
    pub shadow_value: Option<String>,
}

/// How much of each value a [`Divergence`] shows: enough to recognise
/// it, not enough to fill a status page with someone's answer.
pub const SHOWN_BYTES: usize = 64;

/// Shadow traffic's counts for one app, shared by every snapshot (like a
/// colour's statistics), so that a flip, a shift or a reload keeps them.
#[derive(Debug, Default)]
pub struct MirrorStats {
    /// By [`Outcome`].
    outcomes: [AtomicU64; Outcome::ALL.len()],
    /// By [`Skip`]; their sum is the `skipped` outcome.
    skipped: [AtomicU64; Skip::ALL.len()],
    /// Copies under way, over all workers (`max_in_flight` bounds it).
    pub in_flight: AtomicU64,
    /// The last [`KEPT_DIFFERENCES`], oldest first. A lock, off the request
    /// path: only a copy's own task, once it found a difference, and a
    /// status call take it, each for a push or a clone.
    differences: Mutex<VecDeque<Difference>>,
    /// The copies' own answers, as evidence about the standby.
    pub evidence: CopyEvidence,
}

impl MirrorStats {
    pub fn count(&self, outcome: Outcome) {
        self.outcomes[outcome as usize].fetch_add(1, Relaxed);
    }

    pub fn skip(&self, why: Skip) {
        self.skipped[why as usize].fetch_add(1, Relaxed);
        self.count(Outcome::Skipped);
    }

    pub fn outcome(&self, outcome: Outcome) -> u64 {
        self.outcomes[outcome as usize].load(Relaxed)
    }

    pub fn skipped(&self, why: Skip) -> u64 {
        self.skipped[why as usize].load(Relaxed)
    }

    /// Copies compared (`same`, `status_differs`, `body_differs`,
    /// `headers_differ`, `error`)
    /// and, of those, the mismatched (all but `same`): a failed copy
    /// counts against the standby, as a failed request would.
    pub fn compared(&self) -> (u64, u64) {
        let [same, status, body, headers, error] = [
            Outcome::Same,
            Outcome::StatusDiffers,
            Outcome::BodyDiffers,
            Outcome::HeadersDiffer,
            Outcome::Error,
        ]
        .map(|o| self.outcome(o));
        let mismatched = status + body + headers + error;
        (same + mismatched, mismatched)
    }

    pub fn record_difference(&self, d: Difference) {
        let mut list = self.differences.lock().unwrap_or_else(|p| p.into_inner());
        if list.len() == KEPT_DIFFERENCES {
            list.pop_front();
        }
        list.push_back(d);
    }

    /// The last differences, newest first.
    pub fn differences(&self) -> Vec<Difference> {
        let list = self.differences.lock().unwrap_or_else(|p| p.into_inner());
        list.iter().rev().cloned().collect()
    }
}

/// Where two whole bodies first differ, or `None` when they are the
/// same. Two bodies that both parse as JSON are compared as JSON values,
/// without what `ignore` names (so key order and white space do not
/// matter), and the first difference is a JSON path; any other two, byte
/// by byte. Off the request path: a copy's own task calls it once both
/// answers are in.
pub fn body_divergence(live: &[u8], shadow: &[u8], ignore: &[JsonPath]) -> Option<Divergence> {
    if live == shadow {
        return None;
    }
    let json = |b: &[u8]| serde_json::from_slice::<Value>(b).ok();
    if let (Some(mut a), Some(mut b)) = (json(live), json(shadow)) {
        for path in ignore {
            path.remove_from(&mut a);
            path.remove_from(&mut b);
        }
        return json_divergence(&a, &b, &mut "$".to_string());
    }
    let at = (live.iter().zip(shadow))
        .position(|(a, b)| a != b)
        .unwrap_or(live.len().min(shadow.len()));
    Some(Divergence {
        at: format!("byte {at}"),
        live_value: Some(shown(&live[at..])),
        shadow_value: Some(shown(&shadow[at..])),
    })
}

/// The first place, in document order (an object's members by name),
/// where `a` and `b` differ; `path` leads to them.
fn json_divergence(a: &Value, b: &Value, path: &mut String) -> Option<Divergence> {
    let at = path.len();
    let found = match (a, b) {
        (Value::Object(x), Value::Object(y)) => {
            let names: std::collections::BTreeSet<&String> = x.keys().chain(y.keys()).collect();
            names.into_iter().find_map(|name| {
                path.truncate(at);
                push_member(path, name);
                members(x.get(name), y.get(name), path)
            })
        }
        (Value::Array(x), Value::Array(y)) => (0..x.len().max(y.len())).find_map(|i| {
            path.truncate(at);
            path.push_str(&format!("[{i}]"));
            members(x.get(i), y.get(i), path)
        }),
        _ if a != b => Some(Divergence {
            at: path.clone(),
            live_value: Some(json_text(a)),
            shadow_value: Some(json_text(b)),
        }),
        _ => None,
    };
    path.truncate(at);
    found
}

/// One member (or element) of both sides, either of which may lack it.
fn members(a: Option<&Value>, b: Option<&Value>, path: &mut String) -> Option<Divergence> {
    match (a, b) {
        (Some(a), Some(b)) => json_divergence(a, b, path),
        (None, None) => None,
        _ => Some(Divergence {
            at: path.clone(),
            live_value: a.map(json_text),
            shadow_value: b.map(json_text),
        }),
    }
}

/// `.name`, or `["odd name"]` for one that is not a plain identifier.
fn push_member(path: &mut String, name: &str) {
    let plain = name
        .chars()
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
        && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_');
    if plain {
        path.push('.');
        path.push_str(name);
    } else {
        path.push_str(&format!("[{}]", json_text(&Value::String(name.into()))));
    }
}

fn json_text(v: &Value) -> String {
    shown(v.to_string().as_bytes())
}

/// At most [`SHOWN_BYTES`] of `bytes`, as text (invalid UTF-8 replaced),
/// with `…` when cut.
fn shown(bytes: &[u8]) -> String {
    if bytes.len() <= SHOWN_BYTES {
        return String::from_utf8_lossy(bytes).into_owned();
    }
    let mut cut = String::from_utf8_lossy(&bytes[..SHOWN_BYTES]).into_owned();
    // A character split at the cut shows as one replacement character.
    if cut.ends_with('\u{fffd}') {
        cut.pop();
    }
    cut.push('…');
    cut
}

/// Header fields that differ between any two answers by nature: the
/// time, and how the message is framed and carried (RFC 9110 §7.6.1).
const NEVER_COMPARED: &[&str] = &[
    "date",
    "content-length",
    "transfer-encoding",
    "connection",
    "keep-alive",
    "proxy-connection",
    "te",
    "trailer",
    "upgrade",
];

/// The first header field, by name, whose values differ (all of its
/// lines, in order), but those in `ignore` and [`NEVER_COMPARED`].
pub fn header_divergence(
    live: &HeaderMap,
    shadow: &HeaderMap,
    ignore: &[HeaderName],
) -> Option<Divergence> {
    let names: std::collections::BTreeSet<&str> = (live.keys().chain(shadow.keys()))
        .filter(|n| !ignore.contains(n) && !NEVER_COMPARED.contains(&n.as_str()))
        .map(HeaderName::as_str)
        .collect();
    names.into_iter().find_map(|name| {
        let values = |h: &HeaderMap| -> Option<Vec<u8>> {
            let all: Vec<&[u8]> = h.get_all(name).iter().map(|v| v.as_bytes()).collect();
            (!all.is_empty()).then(|| all.join(&b", "[..]))
        };
        let (a, b) = (values(live), values(shadow));
        (a != b).then(|| Divergence {
            at: format!("header {name}"),
            live_value: a.as_deref().map(shown),
            shadow_value: b.as_deref().map(shown),
        })
    })
}

/// How the standby itself answered the copies, whatever the live answer
/// was: a rollout whose step gets too few live requests judges the
/// standby on these too. Counted apart from the colour's own statistics,
/// which stay the standby's real traffic.
#[derive(Debug, Default)]
pub struct CopyEvidence {
    /// Copies the standby answered, or failed to.
    answered: AtomicU64,
    /// Of those, a 5xx, a failed connect, a timeout or a broken answer:
    /// what a live request would count as bad.
    bad: AtomicU64,
    /// Of those, the ones whose whole exchange took longer than
    /// `slow_micros`.
    slow: AtomicU64,
    /// What counts as slow, in microseconds (0: nothing), set with the
    /// colours' (a rollout's `max_slow`, else the guard's).
    pub slow_micros: AtomicU64,
}

impl CopyEvidence {
    /// One copy's answer: `status` (`None`: none came) after `took`.
    pub fn record(&self, status: Option<u16>, took: std::time::Duration) {
        self.answered.fetch_add(1, Relaxed);
        if status.is_none_or(|s| s >= 500) {
            self.bad.fetch_add(1, Relaxed);
        }
        let slow = self.slow_micros.load(Relaxed);
        if slow > 0 && took.as_micros() > u128::from(slow) {
            self.slow.fetch_add(1, Relaxed);
        }
    }

    /// `[answered, bad, slow]`, in the order of a colour's judged counts.
    pub fn counts(&self) -> [u64; 3] {
        [&self.answered, &self.bad, &self.slow].map(|c| c.load(Relaxed))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn difference(n: u16) -> Difference {
        Difference {
            time: String::new(),
            method: "GET".into(),
            path: format!("/{n}"),
            live_status: 200,
            shadow_status: Some(500),
            outcome: Outcome::StatusDiffers.as_str(),
            error: None,
            divergence: None,
        }
    }

    fn json(a: &str, b: &str, ignore: &[&str]) -> Option<Divergence> {
        let ignore: Vec<JsonPath> = ignore.iter().map(|p| JsonPath::parse(p).unwrap()).collect();
        body_divergence(a.as_bytes(), b.as_bytes(), &ignore)
    }

    #[test]
    fn json_bodies_that_differ_only_in_ignored_fields_are_the_same() {
        let a = r#"{"id": 7, "timestamp": "12:00:01", "items": [{"n": 1, "rid": "a"}]}"#;
        let b = r#"{"items": [{"rid": "b", "n": 1}], "id": 7, "timestamp": "12:00:02"}"#;
        assert_eq!(json(a, b, &["$.timestamp", "$.items[*].rid"]), None);
        let d = json(a, b, &["$.timestamp"]).unwrap();
        assert_eq!(d.at, "$.items[0].rid");
        assert_eq!(
            (d.live_value.as_deref(), d.shadow_value.as_deref()),
            (Some("\"a\""), Some("\"b\""))
        );
    }

    #[test]
    fn a_member_only_one_side_has_is_where_json_bodies_differ() {
        let d = json(r#"{"a": {"x y": 1}}"#, r#"{"a": {}}"#, &[]).unwrap();
        assert_eq!(d.at, "$.a[\"x y\"]");
        assert_eq!((d.live_value.as_deref(), d.shadow_value), (Some("1"), None));
        let d = json("[1, 2]", "[1, 2, 3]", &[]).unwrap();
        assert_eq!(
            (d.at.as_str(), d.shadow_value.as_deref()),
            ("$[2]", Some("3"))
        );
    }

    #[test]
    fn other_bodies_differ_at_their_first_differing_byte_shown_cut_short() {
        let long = "y".repeat(100);
        let d =
            body_divergence(b"hello world", format!("hello there{long}").as_bytes(), &[]).unwrap();
        assert_eq!(d.at, "byte 6");
        assert_eq!(d.live_value.as_deref(), Some("world"));
        let shadow = d.shadow_value.unwrap();
        assert!(
            shadow.starts_with("there") && shadow.ends_with('…'),
            "{shadow}"
        );
        assert_eq!(shadow.len(), SHOWN_BYTES + '…'.len_utf8());
        let d = body_divergence(b"abc", b"abcdef", &[]).unwrap();
        assert_eq!(
            (d.at.as_str(), d.live_value.as_deref()),
            ("byte 3", Some(""))
        );
        assert_eq!(body_divergence(b"same", b"same", &[]), None);
    }

    #[test]
    fn header_fields_are_compared_but_the_ignored_and_those_that_differ_by_nature() {
        let mut live = HeaderMap::new();
        live.insert("date", "Mon".parse().unwrap());
        live.insert("x-trace", "1".parse().unwrap());
        live.insert("etag", "\"a\"".parse().unwrap());
        let mut shadow = live.clone();
        shadow.insert("date", "Tue".parse().unwrap());
        shadow.insert("x-trace", "2".parse().unwrap());
        let ignore = [HeaderName::from_static("x-trace")];
        assert_eq!(header_divergence(&live, &shadow, &ignore), None);
        shadow.insert("etag", "\"b\"".parse().unwrap());
        let d = header_divergence(&live, &shadow, &ignore).unwrap();
        assert_eq!(d.at, "header etag");
        assert_eq!(d.shadow_value.as_deref(), Some("\"b\""));
    }

    #[test]
    fn compared_counts_every_answered_copy_and_mismatches_are_all_but_same() {
        let s = MirrorStats::default();
        for o in [
            Outcome::Same,
            Outcome::Same,
            Outcome::StatusDiffers,
            Outcome::BodyDiffers,
            Outcome::Error,
            Outcome::Dropped,
        ] {
            s.count(o);
        }
        s.skip(Skip::Method);
        assert_eq!(s.compared(), (5, 3));
        assert_eq!(s.outcome(Outcome::Skipped), 1);
        assert_eq!(s.skipped(Skip::Method), 1);
    }

    #[test]
    fn only_the_last_twenty_differences_are_kept_newest_first() {
        let s = MirrorStats::default();
        for n in 0..25 {
            s.record_difference(difference(n));
        }
        let kept = s.differences();
        assert_eq!(kept.len(), KEPT_DIFFERENCES);
        assert_eq!(kept[0].path, "/24");
        assert_eq!(kept[19].path, "/5");
    }

    #[test]
    fn a_copy_is_bad_on_a_5xx_or_no_answer_and_slow_past_the_threshold() {
        let e = CopyEvidence::default();
        let ms = std::time::Duration::from_millis;
        e.record(Some(200), ms(900));
        e.slow_micros.store(500_000, Relaxed);
        e.record(Some(404), ms(10));
        e.record(Some(503), ms(10));
        e.record(None, ms(600));
        assert_eq!(e.counts(), [4, 2, 1]);
    }
}
