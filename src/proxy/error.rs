//! Proxy errors and the one place they become status codes.

use bytes::Bytes;
use http::{header, HeaderValue, Response, StatusCode};

use crate::config::OwnAnswers;

#[derive(Debug, thiserror::Error, Clone, Copy, PartialEq, Eq)]
pub enum ProxyError {
    #[error("no app for this host and path")]
    NoApp,
    #[error("no healthy server")]
    NoHealthyServer,
    #[error("upstream connect failed")]
    Connect,
    #[error("upstream connection broke")]
    Upstream,
    #[error("upstream response timed out")]
    UpstreamTimeout,
    #[error("request body too large")]
    BodyTooLarge,
    #[error("bad request")]
    BadRequest,
    /// `CONNECT` to an app without `allow_connect`.
    #[error("method not allowed")]
    MethodNotAllowed,
    /// The client paused within its body past `client_body_timeout`.
    #[error("client body timed out")]
    ClientTimeout,
    /// The client's address is not let into the app (`allow`/`deny`).
    #[error("forbidden")]
    Forbidden,
    /// No user and password of the app's `basic_auth`.
    #[error("unauthorized")]
    Unauthorized,
    /// Over the app's `rate_limit`, or that of the rule that placed it.
    #[error("too many requests")]
    TooManyRequests,
    /// The client went away before its request was complete (nginx logs
    /// these as 499); nobody reads the answer.
    #[error("client closed the request")]
    ClientAbort,
    /// An app's `rewrite` made a path no client could have sent: the
    /// config's fault, not the client's.
    #[error("rewrite made no path")]
    BadRewrite,
}

/// The status recorded for a client abort: not an HTTP status any client
/// receives, the one nginx logs for it.
pub const CLIENT_ABORT: u16 = 499;

impl ProxyError {
    pub fn status(self) -> StatusCode {
        match self {
            ProxyError::NoApp => StatusCode::NOT_FOUND,
            ProxyError::NoHealthyServer => StatusCode::SERVICE_UNAVAILABLE,
            ProxyError::Connect | ProxyError::Upstream => StatusCode::BAD_GATEWAY,
            ProxyError::UpstreamTimeout => StatusCode::GATEWAY_TIMEOUT,
            ProxyError::BodyTooLarge => StatusCode::PAYLOAD_TOO_LARGE,
            ProxyError::BadRequest => StatusCode::BAD_REQUEST,
            ProxyError::MethodNotAllowed => StatusCode::METHOD_NOT_ALLOWED,
            ProxyError::ClientTimeout => StatusCode::REQUEST_TIMEOUT,
            ProxyError::Forbidden => StatusCode::FORBIDDEN,
            ProxyError::Unauthorized => StatusCode::UNAUTHORIZED,
            ProxyError::TooManyRequests => StatusCode::TOO_MANY_REQUESTS,
            ProxyError::ClientAbort => {
                StatusCode::from_u16(CLIENT_ABORT).unwrap_or(StatusCode::BAD_REQUEST)
            }
            ProxyError::BadRewrite => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    /// A short plain-text body: what happened, nothing of the internals.
    fn body(self) -> &'static str {
        match self {
            ProxyError::NoApp => "not found\n",
            ProxyError::NoHealthyServer => "service unavailable: no healthy server\n",
            ProxyError::Connect | ProxyError::Upstream => "bad gateway\n",
            ProxyError::UpstreamTimeout => "gateway timeout\n",
            ProxyError::BodyTooLarge => "payload too large\n",
            ProxyError::BadRequest => "bad request\n",
            ProxyError::MethodNotAllowed => "method not allowed\n",
            ProxyError::ClientTimeout => "request timeout\n",
            ProxyError::Forbidden => "forbidden\n",
            ProxyError::Unauthorized => "unauthorized\n",
            ProxyError::TooManyRequests => "too many requests\n",
            ProxyError::ClientAbort => "client closed request\n",
            ProxyError::BadRewrite => "internal server error\n",
        }
    }

    pub fn response<B: From<Bytes>>(self) -> Response<B> {
        let mut resp = Response::new(B::from(Bytes::from_static(self.body().as_bytes())));
        *resp.status_mut() = self.status();
        let h = resp.headers_mut();
        h.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("text/plain; charset=utf-8"),
        );
        if self == ProxyError::MethodNotAllowed {
            // RFC 9110 §15.5.6: the methods the target supports. cutover
            // cannot know the app's; it names those it forwards.
            h.insert(
                header::ALLOW,
                HeaderValue::from_static("GET, HEAD, POST, PUT, PATCH, DELETE, OPTIONS"),
            );
        }
        if matches!(
            self,
            ProxyError::MethodNotAllowed
                | ProxyError::BodyTooLarge
                | ProxyError::BadRequest
                | ProxyError::ClientAbort
                | ProxyError::ClientTimeout
                | ProxyError::BadRewrite
        ) {
            // The rest of the body is not read: the connection cannot be reused.
            h.insert(header::CONNECTION, HeaderValue::from_static("close"));
        }
        resp
    }
}

impl ProxyError {
    /// [`ProxyError::response`] as `own` has it: its page for the status
    /// (a refcount clone), `Retry-After` on a 503, and over TLS its
    /// `Strict-Transport-Security`.
    pub fn answer<B: From<Bytes>>(self, own: &OwnAnswers, tls: bool) -> Response<B> {
        let status = self.status();
        let mut resp = match own.pages.get(status.as_u16()) {
            Some(page) => {
                let mut r = Response::new(B::from(page.body.clone()));
                *r.status_mut() = status;
                r.headers_mut()
                    .insert(header::CONTENT_TYPE, page.content_type.clone());
                r
            }
            None => self.response(),
        };
        let h = resp.headers_mut();
        if status == StatusCode::SERVICE_UNAVAILABLE {
            if let Some(v) = &own.retry_after {
                h.insert(header::RETRY_AFTER, v.clone());
            }
        }
        if tls {
            if let Some(v) = &own.hsts {
                h.insert(header::STRICT_TRANSPORT_SECURITY, v.clone());
            }
        }
        resp
    }
}

/// Written straight to the socket when a request head does not arrive in
/// time: hyper has no request to answer at that point.
pub const REQUEST_TIMEOUT_RESPONSE: &[u8] = b"HTTP/1.1 408 Request Timeout\r\ncontent-type: text/plain; charset=utf-8\r\ncontent-length: 16\r\nconnection: close\r\n\r\nrequest timeout\n";
