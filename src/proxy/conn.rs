//! Accepting client connections and serving HTTP/1.1 and h2c on them.

use std::collections::VecDeque;
use std::future::Future;
use std::net::SocketAddr;
use std::rc::Rc;
use std::sync::{Arc, Weak};
use std::task::Poll;
use std::time::Duration;

use hyper_util::rt::TokioIo;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, TryAcquireError};

use super::handler;
use super::headers::client_value;
use super::io::{ConnInfo, ConnState, ResetOnClose, TimedIo};
use super::worker::{OpenConnection, StopWatch, Worker};
use crate::route::rule::ConnMemo;

/// Accept until shutdown. `max_connections` is a semaphore shared by all
/// workers and listeners: past it, a connection just accepted waits for a
/// slot before it is served, and accept waits with it (the kernel backlog
/// holds new clients). The slot is taken after accept, so that a listener
/// with nobody arriving holds none. With `tls`, each connection is a TLS
/// handshake first (within `client_header_timeout`).
pub async fn accept_loop(worker: Rc<Worker>, listener: TcpListener, tls: bool) {
    let mut shutdown = worker.shared.shutdown.subscribe();
    let mut fresh = Fresh::default();
    // As configured (`0.0.0.0:80`), for `proxy_protocol`'s list.
    let Ok(listening) = listener.local_addr() else {
        return;
    };
    loop {
        let (stream, peer) = tokio::select! {
            biased;
            _ = shutdown.wait_for(|stop| *stop) => break,
            r = listener.accept() => match r {
                Ok(pair) => pair,
                Err(e) => {
                    // Out of file descriptors and the like: back off briefly.
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        let limit = worker.shared.conn_limit.clone();
        let permit = match limit.clone().try_acquire_owned() {
            Ok(p) => p,
            Err(TryAcquireError::Closed) => break,
            Err(TryAcquireError::NoPermits) => {
                // Full: a connection that never spoke makes room.
                if fresh.shed_one() {
                    tracing::debug!("max_connections reached: closing the oldest connection that has sent nothing");
                }
                tokio::select! {
                    biased;
                    _ = shutdown.wait_for(|stop| *stop) => break,
                    p = limit.acquire_owned() => match p {
                        Ok(p) => p,
                        Err(_) => break,
                    },
                }
            }
        };
        let _ = stream.set_nodelay(true);
        let state = Arc::new(ConnState::default());
        // Open from here (in the metrics, and for drain), handshake included.
        let slot = (permit, worker.connection_opened());
        fresh.note(&state);
        let w = worker.clone();
        let accepted = Box::new(Accepted {
            stream,
            peer,
            listening,
            slot,
            state,
        });
        if tls {
            tokio::task::spawn_local(serve_tls(w, accepted));
        } else {
            tokio::task::spawn_local(serve_plain(w, accepted));
        }
    }
}

/// A connection just accepted, as its task receives it. One box rather
/// than five arguments: an async fn keeps its arguments for its whole
/// life, and a kept-alive connection's task lives as long as the client
/// stays; what the task holds is what 10,000 idle clients cost most of.
struct Accepted {
    stream: TcpStream,
    peer: SocketAddr,
    listening: SocketAddr,
    slot: (OwnedSemaphorePermit, OpenConnection),
    state: Arc<ConnState>,
}

/// The client's address: the peer's, or on a `proxy_protocol` listener
/// the one its PROXY header names (`None`: the connection is closed — a
/// peer not among `trusted_proxies`, a missing or malformed header).
async fn client_of(worker: &Worker, accepted: &mut Accepted) -> Option<SocketAddr> {
    let (peer, listening) = (accepted.peer, accepted.listening);
    let (applies, trusted, limit) = {
        let snap = worker.shared.snapshot.load();
        let s = &snap.settings;
        (
            s.proxy_protocol.applies(listening),
            super::headers::is_trusted(peer.ip(), &s.trusted_proxies),
            s.limits.client_header_timeout,
        )
    };
    if !applies {
        return Some(peer);
    }
    if !trusted {
        tracing::debug!(%peer, "closed: a PROXY protocol listener, and the peer is not among trusted_proxies");
        return None;
    }
    // Boxed: the read is large, and the connection's task would hold its
    // room for the connection's whole life.
    match Box::pin(tokio::time::timeout(
        limit,
        super::proxy_protocol::read_header(&mut accepted.stream),
    ))
    .await
    {
        Ok(Ok(client)) => Some(client.unwrap_or(peer)),
        Ok(Err(e)) => {
            tracing::debug!(%peer, error = %e, "closed: no valid PROXY protocol header");
            None
        }
        Err(_) => {
            tracing::debug!(%peer, "closed: no PROXY protocol header within client_header_timeout");
            None
        }
    }
}

/// A listener's connections that had sent nothing when last looked at
/// (on TLS: had not finished their handshake, or sent nothing since),
/// oldest first: the first to close when the proxy is full, so that
/// an idle flood does not lock everyone else out until its head timeout.
#[derive(Default)]
struct Fresh(VecDeque<Weak<ConnState>>);

impl Fresh {
    /// A new connection. Entries of connections that spoke or closed are
    /// dropped from the front as new ones come, which keeps the list to
    /// about those accepted within a head timeout.
    fn note(&mut self, state: &Arc<ConnState>) {
        while self
            .0
            .front()
            .is_some_and(|w| w.upgrade().is_none_or(|s| s.spoke()))
        {
            self.0.pop_front();
        }
        self.0.push_back(Arc::downgrade(state));
    }

    /// Close the oldest connection that has still sent nothing, if any.
    /// One accepted but not yet read is passed over (and kept): its
    /// request may be waiting in the socket. Those are the newest few, at
    /// the back.
    fn shed_one(&mut self) -> bool {
        let mut i = 0;
        while let Some(w) = self.0.get(i) {
            match w.upgrade() {
                Some(s) if !s.looked() && !s.spoke() => i += 1,
                Some(s) if s.shed() => {
                    self.0.remove(i);
                    return true;
                }
                _ => {
                    self.0.remove(i);
                }
            }
        }
        false
    }
}

/// The client timeouts of a connection, and its longest head.
struct ClientTimeouts {
    header: Duration,
    idle: Duration,
    send: Duration,
    max_head: usize,
}

/// The per-connection state every request shares (holding the
/// connection's slot), and the client timeouts.
fn conn_info(
    worker: &Rc<Worker>,
    peer: SocketAddr,
    local: SocketAddr,
    tls: Option<(&'static str, Option<Arc<str>>)>,
    slot: (OwnedSemaphorePermit, OpenConnection),
    state: Arc<ConnState>,
) -> (Rc<ConnInfo>, ClientTimeouts) {
    let snap = worker.shared.snapshot.load();
    let limits = &snap.settings.limits;
    let info = Rc::new(ConnInfo {
        peer,
        local,
        client_value: client_value(peer.ip()),
        tls: tls.is_some(),
        tls_detail: tls,
        trusted: super::headers::is_trusted(peer.ip(), &snap.settings.trusted_proxies),
        state,
        memo: ConnMemo::default(),
        slot,
    });
    let timeouts = ClientTimeouts {
        header: limits.client_header_timeout,
        idle: limits.client_idle_timeout,
        send: limits.client_send_timeout,
        max_head: limits.max_header_bytes,
    };
    (info, timeouts)
}

/// A plain connection: HTTP/1.1 or h2c. hyper's connection is made once
/// the first request head has arrived ([`TimedIo::read_head`]). An
/// HTTP/1.1 connection idle for a moment is parked (see [`super::io`]):
/// hyper's connection and buffers are freed and the bare socket waits
/// here for its next request, until the idle timeout.
async fn serve_plain(worker: Rc<Worker>, accepted: Box<Accepted>) {
    let Some((info, t, mut stream)) = plain_info(&worker, accepted).await else {
        return;
    };
    loop {
        let (park, parked) = tokio::sync::oneshot::channel();
        // Boxed, with the socket wrapper made inside: the task's own future
        // then only holds what a parked connection needs, not the serving
        // state. hyper's connection (and its buffers) is made once a
        // request head is here.
        Box::pin(async {
            let io = TimedIo::new(stream, info.state.clone(), t.header, t.idle, Some(park))
                .with_send_timeout(t.send);
            run_http(&worker, &info, io, t.max_head).await;
        })
        .await;
        // The wrapper is gone with hyper's connection: it either sent the
        // socket back (parked) or dropped it (closed).
        let Ok(back) = parked.await else { break };
        stream = back;
        info.memo.forget();
        if !wait_parked(&stream, t.idle).await {
            break;
        }
    }
}

/// The connection's shared state and timeouts, once its client is known
/// (`None`: closed, see [`client_of`]).
async fn plain_info(
    worker: &Rc<Worker>,
    accepted: Box<Accepted>,
) -> Option<(Rc<ConnInfo>, ClientTimeouts, TcpStream)> {
    let mut a = *accepted;
    let peer = client_of(worker, &mut a).await?;
    let local = a.stream.local_addr().unwrap_or(peer);
    let (info, t) = conn_info(worker, peer, local, None, a.slot, a.state);
    Some((info, t, a.stream))
}

/// A parked connection waits for its next request: `true` when the client
/// sent something (or closed: hyper will see it), `false` at the idle
/// timeout. Shutdown does not end the wait: a kept-alive client may be
/// sending its next request right now, and closing would fail it. That
/// request is answered with `Connection: close`
/// ([`handler::handle`]); a client that sends none is closed at its idle
/// timeout (or at the end of the drain). What it holds is what 10,000
/// idle clients cost most of, so it is kept small: the socket's readiness
/// is polled in place (`readable()` would store a 152-byte future).
async fn wait_parked(stream: &TcpStream, idle_timeout: Duration) -> bool {
    let rest = idle_timeout.saturating_sub(super::io::park_after(idle_timeout));
    let mut idle = std::pin::pin!(tokio::time::sleep(rest));
    std::future::poll_fn(|cx| {
        // A request that arrives with the deadline is still served.
        if let Poll::Ready(r) = stream.poll_read_ready(cx) {
            return Poll::Ready(r.is_ok());
        }
        idle.as_mut().poll(cx).map(|()| false)
    })
    .await
}

/// The TLS handshake, then HTTP on the decrypted stream (ALPN `h2` or
/// `http/1.1`; the HTTP layer tells them apart by the preface).
async fn serve_tls(worker: Rc<Worker>, accepted: Box<Accepted>) {
    let mut a = *accepted;
    let Some(peer) = client_of(&worker, &mut a).await else {
        return;
    };
    let Accepted {
        stream,
        slot,
        state,
        ..
    } = a;
    let Some(acceptor) = worker.shared.tls.as_ref().map(|t| t.acceptor.clone()) else {
        return;
    };
    let limit = worker
        .shared
        .snapshot
        .load()
        .settings
        .limits
        .client_header_timeout;
    let local = stream.local_addr().unwrap_or(peer);
    // A handshake not yet done is a connection that has sent nothing: it
    // makes room first when the proxy is full. Marked here, in the same
    // poll that reads the ClientHello, so that one already sent is read
    // before the accept loop (this worker's other task) can shed it.
    state.found_nothing();
    let tls = tokio::select! {
        r = tokio::time::timeout(limit, acceptor.accept(stream)) => match r {
            Ok(Ok(tls)) => tls,
            Ok(Err(e)) => return tracing::debug!(%peer, error = %e, "TLS handshake failed"),
            Err(_) => return tracing::debug!(%peer, "TLS handshake timed out"),
        },
        () = state.shed_wait() => {
            return tracing::debug!(%peer, "closed within its TLS handshake to make room (max_connections)")
        }
    };
    if tls.get_ref().1.alpn_protocol() == Some(crate::tls::ACME_TLS_ALPN) {
        // A CA validating tls-alpn-01: the handshake was the answer.
        return tracing::debug!(%peer, "ACME tls-alpn-01 validation answered");
    }
    let detail = {
        let (_, session) = tls.get_ref();
        let version = match session.protocol_version() {
            Some(rustls::ProtocolVersion::TLSv1_3) => "TLSv1.3",
            Some(rustls::ProtocolVersion::TLSv1_2) => "TLSv1.2",
            _ => "TLS",
        };
        (version, session.server_name().map(Arc::from))
    };
    let (info, t) = conn_info(&worker, peer, local, Some(detail), slot, state);
    let io =
        TimedIo::new(tls, info.state.clone(), t.header, t.idle, None).with_send_timeout(t.send);
    run_http(&worker, &info, io, t.max_head).await;
}

/// Serve HTTP on `io` until the connection ends (or is parked). hyper's
/// connection is made once the first request head (of at most `max_head`
/// bytes) has arrived ([`TimedIo::read_head`]): HTTP/2 if it began with
/// the HTTP/2 preface, else HTTP/1.1.
async fn run_http<T>(worker: &Rc<Worker>, info: &Rc<ConnInfo>, mut io: TimedIo<T>, max_head: usize)
where
    T: tokio::io::AsyncRead + tokio::io::AsyncWrite + ResetOnClose + Unpin + Send + 'static,
{
    if !io.read_head(max_head).await {
        return;
    }
    let (svc_worker, svc_info) = (worker.clone(), info.clone());
    let svc = hyper::service::service_fn(move |req| {
        handler::handle(svc_worker.clone(), svc_info.clone(), req)
    });
    let io = TokioIo::new(io);
    // Boxed, so that a parked connection's task does not keep hyper's
    // connection state inline.
    let result = if info.state.is_h2() {
        // GOAWAY as soon as shutdown begins: the client opens new streams
        // elsewhere; those under way finish.
        let mut conn = Box::pin(worker.http2.serve_connection(io, svc));
        let watch = StopWatch::new(worker);
        let mut running = true;
        std::future::poll_fn(|cx| {
            if running && watch.stopping(cx) {
                running = false;
                conn.as_mut().graceful_shutdown();
            }
            conn.as_mut().poll(cx)
        })
        .await
    } else {
        // Left to finish on its own when shutdown begins: each response
        // from then on carries `Connection: close` ([`handler::handle`]),
        // and an idle connection waits for its next request or its idle
        // timeout, so that a request already on its way is answered, not
        // lost.
        Box::pin(worker.http1.serve_connection(io, svc).with_upgrades()).await
    };
    if let Err(e) = result {
        tracing::debug!(peer = %info.peer, error = %e, "client connection ended with an error");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_oldest_silent_connection_is_shed_and_one_not_yet_read_is_kept() {
        let mut fresh = Fresh::default();
        let state = || Arc::new(ConnState::default());
        let (unread, closed, old, silent) = (state(), state(), state(), state());
        for s in [&unread, &closed, &old, &silent] {
            fresh.note(s);
        }
        old.found_nothing();
        silent.found_nothing();
        drop(closed);
        // `unread` is the oldest, but its task has not read its socket yet.
        assert!(fresh.shed_one());
        assert!(!old.shed(), "the oldest silent one was shed first");
        assert!(fresh.shed_one());
        assert!(!silent.shed(), "then the next silent one");
        assert!(!fresh.shed_one(), "none left: the unread one is not shed");
        assert_eq!(fresh.0.len(), 1, "and it is still listed");
        unread.found_nothing();
        assert!(fresh.shed_one(), "looked at and silent, it can go now");
    }
}
