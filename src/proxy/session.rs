//! One way to an upstream server, for live requests, their mirrored
//! copies and health probes alike: take an idle connection of the pool or
//! open one ([`connection`]), open a fresh one to send a request again
//! after a pooled connection turned out stale ([`fresh_h1`]), and probe a
//! server with the same connect, PROXY header, TLS and HTTP client that
//! its traffic uses ([`probe`]). A probe that took a path of its own would
//! pass while requests fail.
//!
//! Sending is the connection's own: [`super::h1::Conn::send`] for
//! HTTP/1.1, hyper's client for HTTP/2.

use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use http::header::{self, HeaderValue};
use http::{Method, Request, Uri};
use tokio::time::Instant;

use super::body::RequestBody;
use super::h1;
use super::upstream::{self, Counting, Lease, Pooled, Sender, Upstreams};
use crate::route::Server;

/// An idle connection of `pools` to `server` that is still usable, else a
/// new one (within `timeout`). `client`: the client's address and the
/// listener's, which a pool that sends PROXY headers matches connections
/// by. `now`: the request's start.
pub async fn connection(
    pools: &Upstreams,
    server: &Arc<Server>,
    timeout: Duration,
    client: (SocketAddr, SocketAddr),
    now: Instant,
) -> io::Result<Pooled> {
    while let Some(mut c) = pools.take(server, now, client.0) {
        match &mut c.tx {
            Sender::H1(_) => return Ok(c),
            Sender::H2(tx) => {
                if tx.ready().await.is_ok() {
                    return Ok(c);
                }
            }
        }
    }
    // Boxed: the connect future is large and rarely needed.
    Box::pin(pools.connect(server, timeout, client)).await
}

/// A new HTTP/1.1 connection to `server`, for a request sent again after a
/// pooled one failed before the upstream could have acted on it
/// ([`h1::Error::may_send_again`]).
pub async fn fresh_h1(
    pools: &Upstreams,
    server: &Arc<Server>,
    timeout: Duration,
    client: (SocketAddr, SocketAddr),
) -> io::Result<(Box<h1::Conn>, Lease)> {
    match pools.connect(server, timeout, client).await? {
        Pooled {
            tx: Sender::H1(c),
            lease,
        } => Ok((c, lease)),
        Pooled { .. } => Err(other_protocol()),
    }
}

/// A fresh connection of the other protocol: the pool's protocol changed
/// by a reload while the request waited.
pub fn other_protocol() -> io::Error {
    io::Error::other("the new connection speaks the other protocol (the pool changed)")
}

/// A health probe of `server`: `GET path` answered 2xx or 3xx within
/// `timeout`, or with no path a connection made. The connection is opened
/// as traffic's are (the PROXY header naming no client), but not counted
/// among the server's open connections, and not pooled. Runs on a
/// `LocalSet` (an HTTP/2 connection is driven by a local task).
pub fn probe(
    server: Arc<Server>,
    path: Option<String>,
    timeout: Duration,
) -> Pin<Box<dyn Future<Output = bool>>> {
    Box::pin(async move {
        let attempt = async {
            let tx = match upstream::open(&server, timeout, None, Counting::No).await {
                Ok(tx) => tx,
                Err(e) => {
                    tracing::debug!(server = %server.addr, error = %e, "health check connect failed");
                    return false;
                }
            };
            let Some(path) = path else { return true };
            match ask(&server, tx, &path).await {
                Some(status) => status.is_success() || status.is_redirection(),
                None => false,
            }
        };
        tokio::time::timeout(timeout, attempt)
            .await
            .unwrap_or(false)
    })
}

/// `GET path` on `tx`: the answer's status, if one came.
async fn ask(server: &Server, tx: Sender, path: &str) -> Option<http::StatusCode> {
    let mut req = Request::new(RequestBody::empty());
    req.headers_mut().insert(
        header::USER_AGENT,
        HeaderValue::from_static("cutover-health-check"),
    );
    match tx {
        Sender::H1(mut c) => {
            *req.uri_mut() = path.parse::<Uri>().ok()?;
            let host = HeaderValue::from_str(&server.addr.to_string()).ok()?;
            req.headers_mut().insert(header::HOST, host);
            req.headers_mut()
                .insert(header::CONNECTION, HeaderValue::from_static("close"));
            let (parts, _) = req.into_parts();
            let out = h1::Outgoing {
                parts: &parts,
                forwarded: None,
                asked: h1::Asked::new(&Method::GET, false),
                request_id: None,
                sent: None,
                write_timeout: None,
            };
            let head = c.send(out, None::<&mut RequestBody>).await.ok()?;
            Some(head.response.status())
        }
        Sender::H2(mut tx) => {
            // An h2c-only server (gRPC, say) is probed in its own protocol,
            // with the absolute target HTTP/2 takes (RFC 9113 §8.3.1).
            let scheme = if server.transport.tls.is_some() {
                "https"
            } else {
                "http"
            };
            *req.uri_mut() = format!("{scheme}://{}{path}", server.addr).parse().ok()?;
            *req.version_mut() = http::Version::HTTP_2;
            let resp = tx.send_request(req).await.ok()?;
            Some(resp.status())
        }
    }
}
