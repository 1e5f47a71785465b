//! An app's header rules and path rewriting as a request applies them.
//! Everything is compiled into the routing snapshot ([`Edits`]); an app
//! without any costs a request one pointer test, in the handler.

use std::net::IpAddr;
use std::sync::Arc;

use http::uri::PathAndQuery;
use http::{HeaderMap, HeaderName, HeaderValue, Uri};

use super::error::ProxyError;
use super::request;
use crate::config::edits::Vars;
use crate::config::{HeaderRules, PathRewrite};
use crate::model::Color;
use crate::route::snapshot::Edits;

/// The variables' values for one request: `$request_id` is empty when
/// cutover keeps no id, `$host` when the request named none.
// Not inlined: only some requests need it, and inlined it spread
// the request path's code over more cache lines.
#[inline(never)]
pub fn vars(
    client_ip: IpAddr,
    request_id: Option<&(HeaderName, HeaderValue)>,
    color: Color,
    host: Option<&HeaderValue>,
    tls: bool,
) -> Vars {
    Vars {
        client_ip,
        request_id: request_id.map(|(_, id)| id.clone()),
        color,
        host: host.cloned(),
        tls,
    }
}

/// An app's `response_headers` with one request's values, kept for its
/// answer.
#[derive(Debug)]
pub struct ResponseEdits {
    rules: Arc<HeaderRules>,
    vars: Vars,
}

impl ResponseEdits {
    pub fn apply(&self, h: &mut HeaderMap) {
        self.rules.apply(h, &self.vars);
    }
}

/// `Some` when the app has `response_headers`.
// Not inlined: only some requests need it, and inlined it spread
// the request path's code over more cache lines.
#[inline(never)]
pub fn response(edits: &Edits, vars: &Vars) -> Option<Box<ResponseEdits>> {
    let rules = edits.response_headers.clone()?;
    Some(Box::new(ResponseEdits {
        rules,
        vars: vars.clone(),
    }))
}

/// The target to send for `path` (the normalized path the request was
/// routed by) after `strip_prefix` and `rewrite`, with the request's
/// query. A rewrite that makes no path is the config's fault: 500.
pub fn path(
    paths: &PathRewrite,
    path: &str,
    uri: &Uri,
) -> Result<Option<PathAndQuery>, ProxyError> {
    let new = paths.apply(path).map_err(|_| ProxyError::BadRewrite)?;
    let new = new.as_deref().unwrap_or(path);
    request::path_and_query(new, uri)
        .map(Some)
        .ok_or(ProxyError::BadRewrite)
}
