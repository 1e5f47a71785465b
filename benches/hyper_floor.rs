//! The thinnest reverse proxy hyper allows, to measure what hyper itself
//! costs per request — the floor under cutover — in the same harness:
//!
//!     cargo build --release --example hyper_floor
//!     python3 benches/callgrind.py --proxy hyper-floor [--floor-features N]
//!
//! One current-thread runtime with a `LocalSet` and mimalloc, as in a
//! cutover worker; hyper's `http1` server in front and its `http1` client
//! behind, each client connection owning one upstream connection. Nothing
//! else: no routing, no header rewriting, no timeouts, no accounting.
//! `FEATURES` (a bit set, default 0) adds cutover's structural pieces one at
//! a time, to price each:
//!
//! | bit | adds |
//! |---|---|
//! | 1 | hyper-util's `auto` server (HTTP/1.1 and h2c on one listener) |
//! | 2 | the upstream connection driven `with_upgrades()` |
//! | 4 | a per-thread pool of upstream connections (take, `ready()`, put back) instead of one owned per client |
//! | 8 | a `tokio::time::timeout` around each upstream exchange |
//! | 16 | cutover's client socket wrapper (`TimedIo`: head/idle timeouts, parking) |
//! | 32 | a response body wrapper holding a guard dropped at the body's end |
//! | 64 | (without 4) the upstream connection polled in the client connection's task, not its own |
//! | 128 | (alone; an experiment, not a design) hyper's client replaced by the least an HTTP/1.1 client can do in the request's own task: the request head written, the response head parsed with `httparse`, a `Content-Length` body read whole — no channel, no second task. It priced what a client codec of our own could save (cutover has one since: `src/proxy/h1.rs`, with the whole of RFC 9112's response framing); this one handles nothing else (no chunked bodies, no request bodies, no errors beyond failing the request) |
//!
//! Usage: `hyper_floor LISTEN UPSTREAM [FEATURES]`, e.g.
//! `hyper_floor 127.0.0.1:18081 127.0.0.1:18080 63`. Runs until killed.

use std::cell::{Cell, RefCell};
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::rc::Rc;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use hyper::body::Incoming;
use hyper::client::conn::http1 as client;
use hyper::server::conn::http1 as server;
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use tokio::net::{TcpListener, TcpStream};

use cutover::proxy::io::{ConnState, TimedIo};

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

const AUTO: u32 = 1;
const UPGRADES: u32 = 2;
const POOL: u32 = 4;
const TIMEOUT: u32 = 8;
const TIMED_IO: u32 = 16;
const GUARD: u32 = 32;
const SAME_TASK: u32 = 64;
const INLINE_CLIENT: u32 = 128;

#[derive(Clone, Copy)]
struct Local;

impl<F: Future + 'static> hyper::rt::Executor<F> for Local {
    fn execute(&self, fut: F) {
        tokio::task::spawn_local(fut);
    }
}

/// Counts finished responses when dropped, as cutover's exchange does.
struct Guard(Rc<Cell<u64>>, Arc<ConnState>);

impl Drop for Guard {
    fn drop(&mut self) {
        self.0.set(self.0.get() + 1);
        self.1.request_ended();
    }
}

pin_project_lite::pin_project! {
    struct Guarded {
        #[pin]
        inner: Incoming,
        guard: Option<Guard>,
    }
}

impl Body for Guarded {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        let this = self.project();
        let frame = std::task::ready!(this.inner.poll_frame(cx));
        if frame.is_none() {
            this.guard.take();
        }
        Poll::Ready(frame)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

thread_local! {
    static IDLE: RefCell<Vec<client::SendRequest<Incoming>>> = const { RefCell::new(Vec::new()) };
}

type Upstream = client::Connection<TokioIo<TcpStream>, Incoming>;

/// A new upstream connection: its sending half, and the connection itself
/// unless it was spawned as its own task.
async fn open(
    upstream: SocketAddr,
    features: u32,
) -> (client::SendRequest<Incoming>, Option<Upstream>) {
    let stream = TcpStream::connect(upstream).await.expect("upstream");
    let _ = stream.set_nodelay(true);
    let (tx, conn) = client::handshake(TokioIo::new(stream))
        .await
        .expect("handshake");
    if features & SAME_TASK != 0 && features & POOL == 0 {
        return (tx, Some(conn));
    }
    if features & UPGRADES != 0 {
        tokio::task::spawn_local(conn.with_upgrades());
    } else {
        tokio::task::spawn_local(conn);
    }
    (tx, None)
}

async fn connect(upstream: SocketAddr, features: u32) -> client::SendRequest<Incoming> {
    open(upstream, features).await.0
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let (Some(listen), Some(upstream)) = (args.get(1), args.get(2)) else {
        eprintln!("usage: hyper_floor LISTEN UPSTREAM [FEATURES]");
        std::process::exit(64);
    };
    let listen: SocketAddr = listen.parse().expect("LISTEN is host:port");
    let upstream: SocketAddr = upstream.parse().expect("UPSTREAM is host:port");
    let features: u32 = args.get(3).map_or(0, |f| f.parse().expect("FEATURES"));
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let done = Rc::new(Cell::new(0u64));
    tokio::task::LocalSet::new().block_on(&rt, async move {
        let listener = TcpListener::bind(listen).await.expect("listen");
        let mut builder = auto::Builder::new(Local);
        // As in cutover: no hyper header timer (cutover's own is in
        // `TimedIo`); hyper's default would arm a timer per request.
        builder
            .http1()
            .timer(TokioTimer::new())
            .header_read_timeout(None)
            .keep_alive(true);
        let builder = Rc::new(builder);
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                continue;
            };
            let _ = stream.set_nodelay(true);
            if features & INLINE_CLIENT != 0 {
                tokio::task::spawn_local(inline::serve(stream, upstream));
                continue;
            }
            let (builder, done) = (builder.clone(), done.clone());
            tokio::task::spawn_local(async move {
                let (owned, same_task) = if features & POOL == 0 {
                    let (tx, conn) = open(upstream, features).await;
                    (Some(tx), conn)
                } else {
                    (None, None)
                };
                let owned = Rc::new(RefCell::new(owned));
                let state = Arc::new(ConnState::default());
                let svc_state = state.clone();
                let svc = service_fn(move |req: hyper::Request<Incoming>| {
                    let (owned, done, state) = (owned.clone(), done.clone(), svc_state.clone());
                    async move {
                        state.request_started();
                        let mut tx = if features & POOL != 0 {
                            let mut tx = match IDLE.with(|p| p.borrow_mut().pop()) {
                                Some(tx) => tx,
                                None => connect(upstream, features).await,
                            };
                            tx.ready().await?;
                            tx
                        } else {
                            owned.borrow_mut().take().expect("one request at a time")
                        };
                        let resp = if features & TIMEOUT != 0 {
                            tokio::time::timeout(Duration::from_secs(60), tx.send_request(req))
                                .await
                                .expect("the upstream answers")
                        } else {
                            tx.send_request(req).await
                        };
                        if features & POOL != 0 {
                            IDLE.with(|p| p.borrow_mut().push(tx));
                        } else {
                            *owned.borrow_mut() = Some(tx);
                        }
                        let guard = if features & GUARD != 0 {
                            Some(Guard(done, state))
                        } else {
                            state.request_ended();
                            None
                        };
                        Ok::<_, hyper::Error>(resp?.map(|inner| Guarded { inner, guard }))
                    }
                });
                let timed = |s| {
                    TimedIo::new(
                        s,
                        state.clone(),
                        Duration::from_secs(10),
                        Duration::from_secs(300),
                        None,
                    )
                };
                let serve = async move {
                    match (features & TIMED_IO != 0, features & AUTO != 0) {
                        (true, true) => {
                            builder
                                .serve_connection_with_upgrades(TokioIo::new(timed(stream)), svc)
                                .await
                        }
                        (true, false) => server::Builder::new()
                            .serve_connection(TokioIo::new(timed(stream)), svc)
                            .with_upgrades()
                            .await
                            .map_err(Into::into),
                        (false, true) => {
                            builder
                                .serve_connection_with_upgrades(TokioIo::new(stream), svc)
                                .await
                        }
                        (false, false) => server::Builder::new()
                            .serve_connection(TokioIo::new(stream), svc)
                            .await
                            .map_err(Into::into),
                    }
                };
                match same_task {
                    Some(conn) => {
                        let _ = tokio::join!(serve, conn);
                    }
                    None => {
                        let _ = serve.await;
                    }
                }
            });
        }
    });
}

/// Feature 128: the upstream exchange done in the request's own task.
mod inline {
    use std::cell::RefCell;
    use std::io;
    use std::net::SocketAddr;
    use std::rc::Rc;

    use bytes::{Buf, Bytes, BytesMut};
    use http::{HeaderMap, HeaderName, HeaderValue, Request, Response, StatusCode};
    use http_body_util::Full;
    use hyper::body::Incoming;
    use hyper::server::conn::http1 as server;
    use hyper::service::service_fn;
    use hyper_util::rt::TokioIo;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpStream;

    struct Upstream {
        stream: TcpStream,
        buf: BytesMut,
        out: Vec<u8>,
    }

    pub async fn serve(client: TcpStream, addr: SocketAddr) {
        let stream = TcpStream::connect(addr).await.expect("upstream");
        let _ = stream.set_nodelay(true);
        let up = Rc::new(RefCell::new(Some(Upstream {
            stream,
            buf: BytesMut::with_capacity(8192),
            out: Vec::with_capacity(1024),
        })));
        let svc = service_fn(move |req: Request<Incoming>| {
            let up = up.clone();
            async move {
                let mut conn = up.borrow_mut().take().expect("one request at a time");
                let resp = exchange(&mut conn, req).await;
                *up.borrow_mut() = Some(conn);
                resp
            }
        });
        let _ = server::Builder::new()
            .serve_connection(TokioIo::new(client), svc)
            .await;
    }

    async fn exchange(
        up: &mut Upstream,
        req: Request<Incoming>,
    ) -> io::Result<Response<Full<Bytes>>> {
        let out = &mut up.out;
        out.clear();
        out.extend_from_slice(req.method().as_str().as_bytes());
        out.push(b' ');
        let target = req.uri().path_and_query().map_or("/", |p| p.as_str());
        out.extend_from_slice(target.as_bytes());
        out.extend_from_slice(b" HTTP/1.1\r\n");
        for (name, value) in req.headers() {
            out.extend_from_slice(name.as_str().as_bytes());
            out.extend_from_slice(b": ");
            out.extend_from_slice(value.as_bytes());
            out.extend_from_slice(b"\r\n");
        }
        out.extend_from_slice(b"\r\n");
        up.stream.write_all(out).await?;
        let (status, headers, length) = loop {
            let mut fields = [httparse::EMPTY_HEADER; 32];
            let mut head = httparse::Response::new(&mut fields);
            if let httparse::Status::Complete(n) = head.parse(&up.buf).map_err(io::Error::other)? {
                let status =
                    StatusCode::from_u16(head.code.unwrap_or(502)).map_err(io::Error::other)?;
                let mut headers = HeaderMap::with_capacity(head.headers.len());
                let mut length = 0usize;
                for f in head.headers.iter() {
                    let name =
                        HeaderName::from_bytes(f.name.as_bytes()).map_err(io::Error::other)?;
                    if name == http::header::CONTENT_LENGTH {
                        length = std::str::from_utf8(f.value)
                            .ok()
                            .and_then(|v| v.parse().ok())
                            .ok_or_else(|| io::Error::other("content-length"))?;
                    }
                    let value = HeaderValue::from_bytes(f.value).map_err(io::Error::other)?;
                    headers.append(name, value);
                }
                up.buf.advance(n);
                break (status, headers, length);
            }
            if up.stream.read_buf(&mut up.buf).await? == 0 {
                return Err(io::ErrorKind::UnexpectedEof.into());
            }
        };
        while up.buf.len() < length {
            if up.stream.read_buf(&mut up.buf).await? == 0 {
                return Err(io::ErrorKind::UnexpectedEof.into());
            }
        }
        let body = up.buf.split_to(length).freeze();
        if up.buf.capacity() < 4096 {
            up.buf.reserve(8192);
        }
        let mut resp = Response::new(Full::new(body));
        *resp.status_mut() = status;
        *resp.headers_mut() = headers;
        Ok(resp)
    }
}
