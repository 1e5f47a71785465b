//! The admin API (SPEC §7): JSON over HTTP/1.1 on its own listener, on the
//! control thread, apart from the data plane and its connection limit.

use std::convert::Infallible;
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use http::header::{self, HeaderValue};
use http::{Method, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use serde::Deserialize;
use serde_json::json;
use subtle::ConstantTimeEq;

use super::ops::{Change, Control, OpError, Request as OpRequest};

/// Largest admin request body.
const MAX_BODY: usize = 1 << 20;

pub struct Admin {
    /// Serializes every change; held only for synchronous work (never
    /// across an await), off the request path.
    pub control: Mutex<Control>,
    /// `None`: no token configured (loopback only).
    token: Option<String>,
}

impl Admin {
    pub fn new(control: Control, token: Option<String>) -> Admin {
        Admin {
            control: Mutex::new(control),
            token,
        }
    }

    pub fn lock(&self) -> std::sync::MutexGuard<'_, Control> {
        self.control
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

/// Serve the admin API until `shutdown` turns true.
pub async fn serve(
    listener: tokio::net::TcpListener,
    admin: Arc<Admin>,
    mut shutdown: tokio::sync::watch::Receiver<bool>,
) {
    loop {
        let (stream, _) = tokio::select! {
            _ = stopped(&mut shutdown) => return,
            r = listener.accept() => match r {
                Ok(x) => x,
                Err(e) => {
                    tracing::warn!(error = %e, "admin accept failed");
                    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        let admin = admin.clone();
        tokio::spawn(async move {
            let svc = hyper::service::service_fn(move |req| {
                let admin = admin.clone();
                async move { Ok::<_, Infallible>(handle(&admin, req).await) }
            });
            let _ = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(stream), svc)
                .await;
        });
    }
}

/// Resolves once shutdown begins (without holding the watch guard).
async fn stopped(shutdown: &mut tokio::sync::watch::Receiver<bool>) {
    let _ = shutdown.wait_for(|s| *s).await;
}

fn reply(status: u16, body: impl serde::Serialize) -> Response<Full<Bytes>> {
    let mut text = serde_json::to_vec_pretty(&body).unwrap_or_default();
    text.push(b'\n');
    let mut r = Response::new(Full::new(Bytes::from(text)));
    *r.status_mut() = StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    r
}

fn error(status: u16, message: impl Into<String>) -> Response<Full<Bytes>> {
    reply(status, json!({ "error": message.into() }))
}

fn method_not_allowed(allow: &'static str) -> Response<Full<Bytes>> {
    let mut r = error(405, format!("method not allowed; use {allow}"));
    r.headers_mut()
        .insert(header::ALLOW, HeaderValue::from_static(allow));
    r
}

/// Body of flip, shift and rollback calls. All fields optional.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct Options {
    #[serde(default)]
    force: bool,
    #[serde(default)]
    dry_run: bool,
    percent: Option<f64>,
}

/// `PUT /v1/apps/{app}/rules`: a list of rules, or `{"rules": [...]}`.
#[derive(Debug, Deserialize)]
#[serde(untagged)]
enum RulesBody {
    List(Vec<crate::config::RuleSpec>),
    Wrapped(RulesWrapped),
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RulesWrapped {
    rules: Vec<crate::config::RuleSpec>,
    #[serde(default)]
    force: bool,
}

fn authorized(admin: &Admin, req: &Request<Incoming>) -> bool {
    let Some(token) = &admin.token else {
        return true;
    };
    let given = req
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .unwrap_or("");
    bool::from(given.as_bytes().ct_eq(token.as_bytes()))
}

fn actor(admin: &Admin, req: &Request<Incoming>) -> String {
    let named = req
        .headers()
        .get("x-cutover-actor")
        .and_then(|v| v.to_str().ok())
        .map(|s| {
            s.chars()
                .filter(|c| c.is_ascii_graphic())
                .take(64)
                .collect::<String>()
        })
        .filter(|s| !s.is_empty());
    match (&admin.token, named) {
        (Some(_), Some(n)) => format!("token:{n}"),
        (Some(_), None) => "token".into(),
        (None, Some(n)) => format!("local:{n}"),
        (None, None) => "local".into(),
    }
}

async fn handle(admin: &Admin, req: Request<Incoming>) -> Response<Full<Bytes>> {
    let path = req.uri().path().to_string();
    let segments: Vec<&str> = path.trim_matches('/').split('/').collect();
    let method = req.method().clone();
    if segments == ["healthz"] {
        return match method {
            Method::GET | Method::HEAD => reply(200, json!({ "status": "ok" })),
            _ => method_not_allowed("GET"),
        };
    }
    if !authorized(admin, &req) {
        return error(401, "missing or wrong bearer token");
    }
    let actor = actor(admin, &req);
    let if_match = match req.headers().get(header::IF_MATCH) {
        None => None,
        Some(v) => match v
            .to_str()
            .ok()
            .map(|s| s.trim().trim_matches('"'))
            .and_then(|s| s.parse::<u64>().ok())
        {
            Some(e) => Some(e),
            None => return error(400, "If-Match: must be an epoch number"),
        },
    };
    let query_force = req
        .uri()
        .query()
        .is_some_and(|q| q.split('&').any(|kv| kv == "force=true" || kv == "force=1"));
    // Route first, so a wrong method is 405 before the body is read.
    enum Route<'a> {
        Status,
        History,
        Metrics,
        Reload,
        FlipAll,
        RollbackAll,
        Flip(&'a str),
        Shift(&'a str),
        Rollback(&'a str),
        Rules(&'a str),
        Rule(&'a str, &'a str),
    }
    let route = match segments.as_slice() {
        ["metrics"] => Route::Metrics,
        ["v1", "status"] => Route::Status,
        ["v1", "history"] => Route::History,
        ["v1", "reload"] => Route::Reload,
        ["v1", "flip"] => Route::FlipAll,
        ["v1", "rollback"] => Route::RollbackAll,
        ["v1", "apps", app, "flip"] => Route::Flip(app),
        ["v1", "apps", app, "shift"] => Route::Shift(app),
        ["v1", "apps", app, "rollback"] => Route::Rollback(app),
        ["v1", "apps", app, "rules"] => Route::Rules(app),
        ["v1", "apps", app, "rules", name] => Route::Rule(app, name),
        _ => return error(404, format!("no such endpoint: {path}")),
    };
    let read_only = matches!(route, Route::Status | Route::History | Route::Metrics)
        || matches!(route, Route::Rules(_)) && method == Method::GET;
    if read_only {
        if method != Method::GET && method != Method::HEAD && !matches!(route, Route::Rules(_)) {
            return method_not_allowed("GET");
        }
        let ctl = admin.lock();
        return match route {
            Route::Status => reply(200, ctl.status()),
            Route::History => reply(
                200,
                json!({ "epoch": ctl.epoch(), "history": ctl.history() }),
            ),
            Route::Metrics => {
                let text = super::metrics::render(&ctl);
                let mut r = Response::new(Full::new(Bytes::from(text)));
                r.headers_mut().insert(
                    header::CONTENT_TYPE,
                    HeaderValue::from_static("text/plain; version=0.0.4; charset=utf-8"),
                );
                r
            }
            Route::Rules(app) => {
                let status = ctl.status();
                match status.rules(app) {
                    Some(rules) => reply(200, json!({ "epoch": status.epoch(), "rules": rules })),
                    None => error(404, format!("no app named {app:?}")),
                }
            }
            _ => unreachable!("read-only routes only"),
        };
    }
    let allowed = match route {
        Route::Rules(_) => "GET, PUT",
        Route::Rule(..) => "DELETE",
        _ => "POST",
    };
    let method_ok = match route {
        Route::Rules(_) => method == Method::PUT,
        Route::Rule(..) => method == Method::DELETE,
        _ => method == Method::POST,
    };
    if !method_ok {
        return method_not_allowed(allowed);
    }
    let (_, body) = req.into_parts();
    let body = match Limited::new(body, MAX_BODY).collect().await {
        Ok(b) => b.to_bytes(),
        Err(e) => return error(400, format!("cannot read the request body: {e}")),
    };
    if let Route::Reload = route {
        let result = admin.lock().reload();
        return match result {
            Ok(status) => reply(200, status),
            Err(errors) => reply(400, json!({ "error": errors.join("; "), "errors": errors })),
        };
    }
    let parse_options = |body: &Bytes| -> Result<Options, String> {
        if body.iter().all(u8::is_ascii_whitespace) {
            return Ok(Options::default());
        }
        serde_json::from_slice(body).map_err(|e| format!("bad JSON: {e}"))
    };
    let (change, force, dry_run) = match route {
        Route::Rules(app) => match serde_json::from_slice::<RulesBody>(&body) {
            Ok(RulesBody::List(rules)) => (Change::SetRules(app.into(), rules), query_force, false),
            Ok(RulesBody::Wrapped(w)) => (
                Change::SetRules(app.into(), w.rules),
                w.force || query_force,
                false,
            ),
            Err(e) => {
                // Untagged enums hide the cause: try each shape for a useful message.
                let detail = serde_json::from_slice::<Vec<crate::config::RuleSpec>>(&body)
                    .err()
                    .map(|e| e.to_string())
                    .unwrap_or_else(|| e.to_string());
                return error(400, format!("bad JSON: expected a list of rules: {detail}"));
            }
        },
        Route::Rule(app, name) => (
            Change::DeleteRule(app.into(), name.into()),
            query_force,
            false,
        ),
        _ => {
            let opts = match parse_options(&body) {
                Ok(o) => o,
                Err(e) => return error(400, e),
            };
            let change = match route {
                Route::FlipAll => Change::Flip(None),
                Route::RollbackAll => Change::Rollback(None),
                Route::Flip(app) => Change::Flip(Some(app.into())),
                Route::Rollback(app) => Change::Rollback(Some(app.into())),
                Route::Shift(app) => match opts.percent {
                    Some(p) => Change::Shift(app.into(), p),
                    None => return error(400, "percent: missing (e.g. {\"percent\": 12.5})"),
                },
                _ => unreachable!("mutating routes only"),
            };
            if opts.percent.is_some() && !matches!(change, Change::Shift(..)) {
                return error(400, "percent: only shift takes a percent");
            }
            (change, opts.force || query_force, opts.dry_run)
        }
    };
    let result = admin.lock().apply(OpRequest {
        change,
        force,
        dry_run,
        if_match,
        actor,
    });
    match result {
        Ok(v) => reply(200, v),
        Err(e @ OpError::Stale { current, .. }) => {
            reply(412, json!({ "error": e.to_string(), "epoch": current }))
        }
        Err(e) => error(e.status(), e.to_string()),
    }
}
