//! How the admin API answers: pretty JSON (an [`api`] type), and
//! refusals as `{"error": ...}`.

use std::convert::Infallible;

use bytes::Bytes;
use http::header::{self, HeaderValue};
use http::{Response, StatusCode};
use http_body_util::combinators::UnsyncBoxBody;
use http_body_util::{BodyExt, Full};

use crate::api;

/// An answer's body: whole, or a stream of events (`GET /v1/events`).
pub type Body = UnsyncBoxBody<Bytes, Infallible>;

pub type Reply = Response<Body>;

/// `bytes` as a whole answer.
pub fn whole(bytes: impl Into<Bytes>) -> Body {
    Full::new(bytes.into()).boxed_unsync()
}

/// `body` as pretty JSON, with a final newline.
pub fn reply(status: u16, body: impl serde::Serialize) -> Reply {
    let mut text = serde_json::to_vec_pretty(&body).unwrap_or_default();
    text.push(b'\n');
    let mut r = Response::new(whole(text));
    *r.status_mut() = StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    r
}

/// A refusal saying why.
pub fn error(status: u16, message: impl Into<String>) -> Reply {
    refusal(status, &api::Error::new(message))
}

/// A refusal with more than its message (an epoch, a list of errors).
pub fn refusal(status: u16, body: &api::Error) -> Reply {
    let mut r = reply(status, body);
    if status == 503 {
        // A hand-over to a new process takes a moment: ask again then.
        r.headers_mut()
            .insert(header::RETRY_AFTER, HeaderValue::from_static("2"));
    }
    r
}

/// 405, with the methods the path takes.
pub fn method_not_allowed(allow: &'static str) -> Reply {
    let mut r = error(405, format!("method not allowed; use {allow}"));
    r.headers_mut()
        .insert(header::ALLOW, HeaderValue::from_static(allow));
    r
}
