//! cutover's HTTP/1.1 upstream client, laid out in two layers:
//!
//! - [`codec`]: parses and frames HTTP/1.1 — request heads and bodies out,
//!   response heads and bodies in — over buffers, with no I/O;
//! - [`conn`]: one connection, driving the codec over its socket in the
//!   request's own task, and the response [`conn::Body`] read from it.
//!
//! The pool that owns idle connections is [`super::upstream`].

pub mod codec;
pub mod conn;

pub use codec::{Asked, ConnectionFields, Forwarded, Head};
pub use conn::{Body, Conn, Counted, Error, Outgoing};
