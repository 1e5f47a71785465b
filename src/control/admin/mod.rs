//! The admin API: JSON over HTTP/1.1 on its own listener, on the
//! control thread, apart from the data plane and its connection limit,
//! with its own: `[admin] max_connections`, `header_timeout` and
//! `idle_timeout`. Over TLS only when `[admin] tls_cert_file` is set.
//! Requests from web pages are refused ([`super::guard`]).
//!
//! - `conn`: the listener, each connection and its timing, and the checks
//!   every request passes (listener, token, parameters, route, body);
//! - `routes`: the route table and one function per endpoint;
//! - `params`: the one reader of `force`, `dry_run`, `limit`, `If-Match`;
//! - `reply`: JSON answers and refusals; `plane`: the lock on the control
//!   state the endpoints share;
//! - `page`: the dashboard's page (`GET /`); `events`: its live feed
//!   (`GET /v1/events`) and the once-a-second series behind it.
//!
//! The answers are the types of [`crate::api`], which the CLI reads back.

mod conn;
mod events;
mod page;
mod params;
mod plane;
mod reply;
mod routes;

pub use conn::serve;
pub use plane::Admin;
