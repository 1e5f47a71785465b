//! The admin API's route table ([`Route::find`]) and one function per
//! endpoint. Each answers with a type of [`crate::api`], the same the CLI
//! reads back.

use bytes::Bytes;
use http::header::{self, HeaderValue};
use http::{Method, Response};
use serde::de::DeserializeOwned;

use super::params::{Params, Takes};
use super::plane::Admin;
use super::reply::{refusal, reply, whole, Reply};
use crate::api;
use crate::control::ops::{self, Change, OpError, Request as OpRequest, Steer};
use crate::control::rollout;
use crate::control::state::HistoryEntry;

/// An endpoint's answer; `Err` is a refusal, which changed nothing.
type Answer = Result<Reply, Refused>;

/// A change's answer, before it is sent: the new state, or a refusal.
type Changed = Result<api::Status, Refused>;

/// A refusal: its status and what it says.
pub(super) struct Refused(u16, api::Error);

/// Refused with `status`, saying `message`.
fn refuse(status: u16, message: impl Into<String>) -> Refused {
    Refused(status, api::Error::new(message))
}

/// One endpoint, with the parts of its path it was called with.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(super) enum Route<'p> {
    Metrics,
    Status,
    History,
    Rules(&'p str),
    SetRules(&'p str),
    DeleteRule(&'p str, &'p str),
    /// App and rule: one rule's percent.
    PatchRule(&'p str, &'p str),
    /// One app, or every app in one step (`None`).
    Flip(Option<&'p str>),
    /// One app's last change, or the last change (`None`).
    Rollback(Option<&'p str>),
    Shift(&'p str),
    Mirror(&'p str),
    /// App and server address.
    Server(&'p str, &'p str),
    Rollout(&'p str),
    StartRollout(&'p str),
    Steer(&'p str, Steer),
    Reload,
    Upgrade,
    Fleet,
    /// The dashboard's live feed.
    Events,
}

/// No route: no such path (404), or not with this method (405, with the
/// methods it takes).
#[derive(Debug, PartialEq)]
pub(super) enum Miss {
    NotFound,
    Method(&'static str),
}

impl<'p> Route<'p> {
    /// The route table: a path (split at `/`) and a method to an endpoint.
    pub fn find(method: &Method, path: &[&'p str]) -> Result<Route<'p>, Miss> {
        use Route::*;
        let read = *method == Method::GET || *method == Method::HEAD;
        let (get, post) = (*method == Method::GET, *method == Method::POST);
        let only = |allow: &'static str, ok: bool, route: Route<'p>| match ok {
            true => Ok(route),
            false => Err(Miss::Method(allow)),
        };
        match *path {
            ["metrics"] => only("GET", read, Metrics),
            ["v1", "status"] => only("GET", read, Status),
            ["v1", "history"] => only("GET", read, History),
            ["v1", "fleet"] => only("GET", read, Fleet),
            ["v1", "events"] => only("GET", get, Events),
            ["v1", "reload"] => only("POST", post, Reload),
            ["v1", "upgrade"] => only("POST", post, Upgrade),
            ["v1", "flip"] => only("POST", post, Flip(None)),
            ["v1", "rollback"] => only("POST", post, Rollback(None)),
            ["v1", "apps", app, "flip"] => only("POST", post, Flip(Some(app))),
            ["v1", "apps", app, "rollback"] => only("POST", post, Rollback(Some(app))),
            ["v1", "apps", app, "shift"] => only("POST", post, Shift(app)),
            // The percent is a setting replaced whole (PUT); POST as for shift.
            ["v1", "apps", app, "mirror"] => {
                only("PUT, POST", post || *method == Method::PUT, Mirror(app))
            }
            ["v1", "apps", app, "rules"] if get => Ok(Rules(app)),
            ["v1", "apps", app, "rules"] => only("GET, PUT", *method == Method::PUT, SetRules(app)),
            ["v1", "apps", app, "rules", name] if *method == Method::PATCH => {
                Ok(PatchRule(app, name))
            }
            ["v1", "apps", app, "rules", name] => only(
                "DELETE, PATCH",
                *method == Method::DELETE,
                DeleteRule(app, name),
            ),
            ["v1", "apps", app, "servers", addr] => only("POST", post, Server(app, addr)),
            ["v1", "apps", app, "rollout"] if get => Ok(Rollout(app)),
            ["v1", "apps", app, "rollout"] => only("GET, POST", post, StartRollout(app)),
            ["v1", "apps", app, "rollout", "pause"] => {
                only("POST", post, Steer(app, ops::Steer::Pause))
            }
            ["v1", "apps", app, "rollout", "resume"] => {
                only("POST", post, Steer(app, ops::Steer::Resume))
            }
            ["v1", "apps", app, "rollout", "abort"] => {
                only("POST", post, Steer(app, ops::Steer::Abort))
            }
            _ => Err(Miss::NotFound),
        }
    }

    /// The parameters it takes beside its path and body.
    pub fn takes(self) -> Takes {
        use Route::*;
        match self {
            History => Takes::Limit,
            Flip(_) | Rollback(_) | Shift(_) | Mirror(_) | SetRules(_) | DeleteRule(..)
            | PatchRule(..) | Server(..) => Takes::Change,
            Rollout(_) => Takes::Watch,
            Steer(..) => Takes::IfMatch,
            Metrics | Status | Rules(_) | StartRollout(_) | Reload | Upgrade | Fleet | Events => {
                Takes::Nothing
            }
        }
    }

    /// Reads change nothing: any token may call them, and they have no body.
    pub fn reads(self) -> bool {
        use Route::*;
        matches!(
            self,
            Metrics | Status | History | Rules(_) | Rollout(_) | Fleet | Events
        )
    }
}

/// What an endpoint is given: the daemon, the connection, who calls, the
/// call's parameters and its body (empty for a read).
pub(super) struct Call<'a> {
    pub admin: &'a Admin,
    /// Who connected: an upgrade takes a binary path only from loopback.
    pub peer: std::net::SocketAddr,
    /// The token's name (see [`HistoryEntry::actor`]).
    pub actor: String,
    /// What the token may do.
    pub role: crate::config::Role,
    pub params: Params,
    pub body: Bytes,
}

/// Answer `call` at `route`.
pub(super) async fn answer(route: Route<'_>, call: Call<'_>) -> Reply {
    let answer = match route {
        Route::Metrics => Ok(metrics(&call)),
        Route::Status => Ok(reply(200, call.admin.lock().status())),
        Route::History => Ok(history(&call)),
        Route::Rules(app) => rules(&call, app),
        Route::SetRules(app) => waited(&call, set_rules(&call, app)).await,
        Route::DeleteRule(app, name) => {
            let change = Change::DeleteRule(app.into(), name.into());
            waited(&call, apply(&call, change, false, false)).await
        }
        Route::PatchRule(app, name) => waited(&call, patch_rule(&call, app, name)).await,
        Route::Flip(app) => waited(&call, flip(&call, app)).await,
        Route::Rollback(app) => waited(&call, rollback(&call, app)).await,
        Route::Shift(app) => waited(&call, shift(&call, app)).await,
        Route::Mirror(app) => waited(&call, mirror(&call, app)).await,
        Route::Server(app, addr) => waited(&call, server(&call, app, addr)).await,
        Route::Rollout(app) => watched_rollout(&call, app).await,
        Route::StartRollout(app) => start_rollout(&call, app),
        Route::Steer(app, steer) => steer_rollout(&call, app, steer),
        Route::Reload => reload(&call),
        Route::Upgrade => upgrade(&call).await,
        Route::Fleet => Ok(reply(200, call.admin.lock().fleet_answer())),
        Route::Events => {
            let admin = call.admin;
            let actor = call.actor.clone();
            Ok(super::events::stream(
                &admin.events,
                &admin.control,
                actor,
                call.role,
            ))
        }
    };
    answer.unwrap_or_else(|Refused(status, why)| refusal(status, &why))
}

/// `body` as `T`; an empty body (or only white space) is `T::default()`.
fn optional_body<T: DeserializeOwned + Default>(body: &Bytes) -> Result<T, Refused> {
    if body.iter().all(u8::is_ascii_whitespace) {
        return Ok(T::default());
    }
    serde_json::from_slice(body).map_err(|e| refuse(400, format!("bad JSON: {e}")))
}

/// A change's answer; with `?wait=`, once every instance of the fleet
/// serves it (or the wait is over), saying which did and which did not.
async fn waited(call: &Call<'_>, changed: Changed) -> Answer {
    let mut status = changed?;
    let fleet = call.admin.lock().fleet.clone();
    if let (Some(limit), Some(fleet), Some(false)) = (call.params.wait, fleet, status.dry_run) {
        status.waited = Some(fleet.wait_for(status.epoch, limit).await);
    }
    Ok(reply(200, &status))
}

/// Apply `change` with the call's `force` and `dry_run` (from the body or
/// the query) and its `If-Match`: the new state, or why not.
fn apply(call: &Call, change: Change, force: bool, dry_run: bool) -> Changed {
    apply_guarded(call, change, force, dry_run, None)
}

/// [`apply`] with a flip's or shift's own guard window.
fn apply_guarded(
    call: &Call,
    change: Change,
    force: bool,
    dry_run: bool,
    guard: Option<std::time::Duration>,
) -> Changed {
    let p = &call.params;
    let result = call.admin.lock().apply(OpRequest {
        change,
        force: p.force(force),
        dry_run: p.dry_run(dry_run),
        if_match: p.if_match,
        actor: call.actor.clone(),
        reason: p.reason.clone(),
        guard,
    });
    match result {
        Ok(status) => Ok(status),
        Err(e @ (OpError::Stale { current, .. } | OpError::Moved(current, _))) => {
            let why = api::Error {
                epoch: Some(current),
                ..api::Error::new(e.to_string())
            };
            Err(Refused(e.status(), why))
        }
        Err(e) => Err(refuse(e.status(), e.to_string())),
    }
}

const COMPARE_ONLY_MIRROR: &str = "compare: only mirror takes a compare list";

/// The body of a change: `force`, `dry_run`, and `percent` or `to` only
/// where the change takes one (`bad JSON` names a `to` that is no colour).
fn change_body(call: &Call, percent: bool, to: bool) -> Result<api::ChangeBody, Refused> {
    let body: api::ChangeBody = optional_body(&call.body)?;
    if body.compare.is_some() && !percent {
        return Err(refuse(400, COMPARE_ONLY_MIRROR));
    }
    if body.percent.is_some() && !percent {
        return Err(refuse(400, "percent: only shift and mirror take a percent"));
    }
    if body.to.is_some() && !to {
        return Err(refuse(400, "to: only flip takes a colour"));
    }
    // Flip takes a colour and shift a percent; mirror refuses it itself.
    if body.guard.is_some() && !(to || percent) {
        return Err(refuse(400, GUARD_ONLY));
    }
    Ok(body)
}

const GUARD_ONLY: &str = "guard: only flip and shift take a guard";

/// A flip's or shift's `guard`: `"off"` or a duration.
fn guard_of(b: &api::ChangeBody) -> Result<Option<std::time::Duration>, Refused> {
    b.guard
        .as_deref()
        .map(crate::model::guard_window)
        .transpose()
        .map_err(|e| refuse(400, format!("guard: {e}")))
}

/// `POST /v1/flip`, `POST /v1/apps/{app}/flip`, with `{"to": "green"}`
/// to set the live colour rather than toggle it.
fn flip(call: &Call, app: Option<&str>) -> Changed {
    let b = change_body(call, false, true)?;
    let change = Change::Flip(app.map(Into::into), b.to);
    apply_guarded(call, change, b.force, b.dry_run, guard_of(&b)?)
}

/// `POST /v1/rollback`, `POST /v1/apps/{app}/rollback`.
fn rollback(call: &Call, app: Option<&str>) -> Changed {
    let b = change_body(call, false, false)?;
    apply(
        call,
        Change::Rollback(app.map(Into::into)),
        b.force,
        b.dry_run,
    )
}

/// `POST /v1/apps/{app}/shift` with `{"percent": P}`.
fn shift(call: &Call, app: &str) -> Changed {
    let b = change_body(call, true, false)?;
    if b.compare.is_some() {
        return Err(refuse(400, COMPARE_ONLY_MIRROR));
    }
    let Some(p) = b.percent else {
        return Err(refuse(400, "percent: missing (e.g. {\"percent\": 12.5})"));
    };
    let change = Change::Shift(app.into(), p);
    apply_guarded(call, change, b.force, b.dry_run, guard_of(&b)?)
}

/// `PUT|POST /v1/apps/{app}/mirror` with `{"percent": P}` and, to change
/// what copies are compared by, `"compare": ["status", "body"]`.
fn mirror(call: &Call, app: &str) -> Changed {
    let b = change_body(call, true, false)?;
    let Some(p) = b.percent else {
        return Err(refuse(400, "percent: missing (e.g. {\"percent\": 10})"));
    };
    if b.guard.is_some() {
        return Err(refuse(400, GUARD_ONLY));
    }
    let change = Change::Mirror(app.into(), p, b.compare);
    apply(call, change, b.force, b.dry_run)
}

/// `POST /v1/apps/{app}/servers/{addr}`: drain, maint, ready, weight.
fn server(call: &Call, app: &str, addr: &str) -> Changed {
    let Ok(addr) = addr.parse::<std::net::SocketAddr>() else {
        return Err(refuse(
            400,
            format!("{addr:?} is not a server address like 10.0.0.1:8080"),
        ));
    };
    let b: api::ServerBody = serde_json::from_slice(&call.body).map_err(|e| {
        refuse(
            400,
            format!("bad JSON: {e} (expected {{\"state\": \"ready\"|\"drain\"|\"maint\", \"weight\": N, \"color\": \"blue\"|\"green\"}})"),
        )
    })?;
    let setting = crate::route::snapshot::ServerSetting {
        state: b.state.unwrap_or_default(),
        weight: b.weight,
    };
    let change = Change::Server(app.into(), b.color, addr, setting);
    apply(call, change, b.force, b.dry_run)
}

/// `PUT /v1/apps/{app}/rules`: a list of rules, or `{"rules": [...]}`
/// with `force` and `dry_run` beside it.
#[derive(Debug, serde::Deserialize)]
#[serde(untagged)]
enum RulesBody {
    List(Vec<crate::config::RuleSpec>),
    Wrapped(RulesWrapped),
}

#[derive(Debug, serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct RulesWrapped {
    rules: Vec<crate::config::RuleSpec>,
    #[serde(default)]
    force: bool,
    #[serde(default)]
    dry_run: bool,
}

/// `PUT /v1/apps/{app}/rules`.
fn set_rules(call: &Call, app: &str) -> Changed {
    let (rules, force, dry_run) = match serde_json::from_slice::<RulesBody>(&call.body) {
        Ok(RulesBody::List(rules)) => (rules, false, false),
        Ok(RulesBody::Wrapped(w)) => (w.rules, w.force, w.dry_run),
        Err(e) => {
            // Untagged enums hide the cause: try each shape for a useful message.
            let detail = serde_json::from_slice::<Vec<crate::config::RuleSpec>>(&call.body)
                .err()
                .map(|e| e.to_string())
                .unwrap_or_else(|| e.to_string());
            let message = format!("bad JSON: expected a list of rules: {detail}");
            return Err(refuse(400, message));
        }
    };
    apply(call, Change::SetRules(app.into(), rules), force, dry_run)
}

/// `PATCH /v1/apps/{app}/rules/{name}` with `{"percent": P}`: that
/// rule's percent, the rest of it and the other rules as they are.
fn patch_rule(call: &Call, app: &str, name: &str) -> Changed {
    let b: api::ChangeBody = optional_body(&call.body)?;
    if b.to.is_some() {
        return Err(refuse(
            400,
            "to: a rule's colour is not changed in place (PUT the rules)",
        ));
    }
    let Some(p) = b.percent else {
        return Err(refuse(400, "percent: missing (e.g. {\"percent\": 25})"));
    };
    let change = Change::PatchRule(app.into(), name.into(), p);
    apply(call, change, b.force, b.dry_run)
}

/// `GET /v1/apps/{app}/rules`.
fn rules(call: &Call, app: &str) -> Answer {
    let ctl = call.admin.lock();
    let snap = ctl.shared.snapshot.load();
    let Some(a) = snap.app(app) else {
        return Err(refuse(404, format!("no app named {app:?}")));
    };
    let rules = a.state.rules.clone();
    Ok(reply(
        200,
        &api::Rules {
            epoch: ctl.epoch(),
            rules,
        },
    ))
}

/// `GET /v1/history`: oldest first; with `?limit=N`, the newest N.
fn history(call: &Call) -> Reply {
    let ctl = call.admin.lock();
    let all = ctl.history();
    let skip = all
        .len()
        .saturating_sub(call.params.limit.unwrap_or(usize::MAX));
    let history = all.iter().skip(skip).map(HistoryEntry::answer).collect();
    reply(
        200,
        &api::History {
            epoch: ctl.epoch(),
            history,
        },
    )
}

/// `GET /metrics`: Prometheus text.
fn metrics(call: &Call) -> Reply {
    let text = crate::control::metrics::render(&call.admin.lock());
    let mut r = Response::new(whole(text));
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; version=0.0.4; charset=utf-8"),
    );
    r
}

/// `GET /v1/apps/{app}/rollout?wait=30s`: once the rollout record moves
/// (phase, step, a transition; or one starts), or the wait is over, or
/// shutdown begins: then the rollout as it stands. Every move of a
/// rollout stores a snapshot, which the `swapped` watch announces; the
/// lock is taken only to compare, never across the wait.
async fn watched_rollout(call: &Call<'_>, app: &str) -> Answer {
    let Some(limit) = call.params.wait else {
        return rollout(call, app);
    };
    let deadline = tokio::time::Instant::now() + limit;
    let (mut swapped, mut shutdown, began) = {
        let ctl = call.admin.lock();
        if ctl.config().app(app).is_none() {
            return Err(refuse(404, format!("no app named {app:?}")));
        }
        let record = ctl.rollouts().get(app).cloned();
        (
            ctl.shared.swapped.subscribe(),
            ctl.shared.shutdown.subscribe(),
            record,
        )
    };
    loop {
        let woke = tokio::select! {
            changed = tokio::time::timeout_at(deadline, swapped.changed()) => {
                matches!(changed, Ok(Ok(())))
            }
            _ = shutdown.wait_for(|s| *s) => false,
        };
        if !woke || call.admin.lock().rollouts().get(app) != began.as_ref() {
            return rollout(call, app);
        }
    }
}

/// `GET /v1/apps/{app}/rollout`.
fn rollout(call: &Call, app: &str) -> Answer {
    let ctl = call.admin.lock();
    if ctl.config().app(app).is_none() {
        return Err(refuse(404, format!("no app named {app:?}")));
    }
    let Some(rollout) = ctl.rollout_doc(app) else {
        return Err(refuse(404, format!("app {app:?} has no rollout")));
    };
    Ok(reply(
        200,
        &api::RolloutAnswer {
            epoch: ctl.epoch(),
            rollout,
        },
    ))
}

/// `POST /v1/apps/{app}/rollout` with the plan (every field optional).
fn start_rollout(call: &Call, app: &str) -> Answer {
    let asked: rollout::Request = optional_body(&call.body)?;
    let plan = asked.plan().map_err(|e| refuse(400, e))?;
    let mut ctl = call.admin.lock();
    let reason = call.params.reason.as_deref();
    let started = ctl.start_rollout(app, plan, asked.force, &call.actor, reason);
    rollout_answer(&ctl, started)
}

/// A rollout call's answer: the rollout as it now stands, with the epoch.
fn rollout_answer(ctl: &ops::Control, r: Result<api::Rollout, OpError>) -> Answer {
    let rollout = r.map_err(|e| refuse(e.status(), e.to_string()))?;
    Ok(reply(
        200,
        &api::RolloutAnswer {
            epoch: ctl.epoch(),
            rollout,
        },
    ))
}

/// `POST /v1/apps/{app}/rollout/{pause|resume|abort}`: no body, or `{}`.
fn steer_rollout(call: &Call, app: &str, steer: Steer) -> Answer {
    let body = &call.body;
    if !body.iter().all(u8::is_ascii_whitespace)
        && serde_json::from_slice::<serde::de::IgnoredAny>(body).is_err()
    {
        let message = "bad JSON: pause, resume and abort take no body (or {})";
        return Err(refuse(400, message));
    }
    let mut ctl = call.admin.lock();
    if let Some(given) = call.params.if_match.filter(|e| *e != ctl.epoch()) {
        let current = ctl.epoch();
        let why = api::Error {
            epoch: Some(current),
            ..api::Error::new(OpError::Stale { given, current }.to_string())
        };
        return Err(Refused(412, why));
    }
    let reason = call.params.reason.as_deref();
    let steered = ctl.steer_rollout(app, steer, &call.actor, reason);
    rollout_answer(&ctl, steered)
}

/// `POST /v1/reload`: re-read the config file.
fn reload(call: &Call) -> Answer {
    let b: api::ReloadBody = optional_body(&call.body)?;
    let reason = call.params.reason.as_deref();
    match call
        .admin
        .reload(b.take_rules_from_file, &call.actor, reason)
    {
        Ok(status) => Ok(reply(200, &status)),
        Err(errors) => {
            let why = api::Error {
                errors: Some(errors.clone()),
                ..api::Error::new(errors.join("; "))
            };
            Err(Refused(400, why))
        }
    }
}

/// `POST /v1/upgrade`: hand the listening sockets to a new process.
async fn upgrade(call: &Call<'_>) -> Answer {
    let b: api::UpgradeBody = optional_body(&call.body)?;
    let (shared, binary) = {
        let ctl = call.admin.lock();
        let settings = &ctl.config().admin;
        let binary = match b.binary {
            None => crate::control::upgrade::installed_binary(settings),
            Some(b) => match crate::control::upgrade::may_name_binary(settings, call.peer, &b) {
                Ok(()) => Ok(b),
                Err(why) => return Err(refuse(400, why)),
            },
        };
        (ctl.shared.clone(), binary)
    };
    match crate::control::upgrade::upgrade(&shared, binary).await {
        Ok(pid) => Ok(reply(
            200,
            &api::Upgraded {
                old_pid: std::process::id(),
                pid,
                upgraded: true,
            },
        )),
        Err((status, why)) => Err(refuse(status, why)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Where `method path` goes, in words.
    fn find(method: Method, path: &str) -> String {
        let segments: Vec<&str> = path.trim_matches('/').split('/').collect();
        format!("{:?}", Route::find(&method, &segments))
    }

    #[test]
    fn every_path_names_one_endpoint_and_a_wrong_method_is_told_the_right_ones() {
        for (method, path, to) in [
            (Method::GET, "/v1/status", "Ok(Status)"),
            (Method::HEAD, "/metrics", "Ok(Metrics)"),
            (Method::POST, "/v1/flip", "Ok(Flip(None))"),
            (
                Method::POST,
                "/v1/apps/shop/flip",
                "Ok(Flip(Some(\"shop\")))",
            ),
            (Method::PUT, "/v1/apps/shop/mirror", "Ok(Mirror(\"shop\"))"),
            (
                Method::GET,
                "/v1/apps/shop/rollout",
                "Ok(Rollout(\"shop\"))",
            ),
            (
                Method::POST,
                "/v1/apps/shop/rollout",
                "Ok(StartRollout(\"shop\"))",
            ),
            (
                Method::POST,
                "/v1/apps/shop/rollout/abort",
                "Ok(Steer(\"shop\", Abort))",
            ),
            (
                Method::DELETE,
                "/v1/apps/shop/rules/x",
                "Ok(DeleteRule(\"shop\", \"x\"))",
            ),
            (
                Method::PATCH,
                "/v1/apps/shop/rules/x",
                "Ok(PatchRule(\"shop\", \"x\"))",
            ),
            (
                Method::PUT,
                "/v1/apps/shop/rules/x",
                "Err(Method(\"DELETE, PATCH\"))",
            ),
            (
                Method::DELETE,
                "/v1/apps/shop/flip",
                "Err(Method(\"POST\"))",
            ),
            (
                Method::HEAD,
                "/v1/apps/shop/rules",
                "Err(Method(\"GET, PUT\"))",
            ),
            (Method::POST, "/v1/status", "Err(Method(\"GET\"))"),
            (Method::GET, "/v1/events", "Ok(Events)"),
            (Method::POST, "/v1/events", "Err(Method(\"GET\"))"),
            (Method::POST, "/v1/nowhere", "Err(NotFound)"),
            (Method::POST, "/v1/apps/shop/rollout/skip", "Err(NotFound)"),
        ] {
            assert_eq!(find(method.clone(), path), to, "{method} {path}");
        }
    }

    #[test]
    fn only_changes_of_the_routing_take_force_dry_run_and_if_match() {
        assert_eq!(Route::Shift("a").takes(), Takes::Change);
        assert_eq!(Route::Server("a", "b").takes(), Takes::Change);
        assert_eq!(Route::Reload.takes(), Takes::Nothing);
        assert_eq!(Route::StartRollout("a").takes(), Takes::Nothing);
        assert_eq!(Route::History.takes(), Takes::Limit);
        assert_eq!(Route::PatchRule("a", "r").takes(), Takes::Change);
        assert_eq!(Route::Rollout("a").takes(), Takes::Watch);
        assert_eq!(Route::Steer("a", Steer::Pause).takes(), Takes::IfMatch);
        assert_eq!(Route::Events.takes(), Takes::Nothing);
        assert!(Route::Rules("a").reads() && !Route::SetRules("a").reads());
        assert!(Route::Events.reads());
    }
}
