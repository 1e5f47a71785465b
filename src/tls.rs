//! TLS both ways, and the upstream socket.
//!
//! Termination: certificates chosen by SNI from their subject alternative
//! names, behind an `ArcSwap` so that a reload swaps them for new
//! handshakes without touching open connections. rustls with the `ring`
//! provider: TLS 1.2 and 1.3 only, ALPN `h2` and `http/1.1`. A client
//! without SNI (or with an unknown name) gets the first certificate of the
//! config.
//!
//! Upstreams: [`connect`] opens a [`Stream`] to a server — TCP, the PROXY
//! header if its pool sends one, TLS if its pool has `tls = true` (with the
//! pool's one `ClientConfig`, built at config load, see
//! `config::upstream_tls`). The proxy and the health checks both use it.

use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, Waker};

use arc_swap::ArcSwap;
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use rustls_pki_types::ServerName;
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::net::TcpStream;
use tokio_rustls::client::TlsStream;
use tokio_rustls::TlsConnector;

pub use crate::config::certs::CertInfo;
use crate::config::certs::{self, Cert};
use crate::config::{CertPaths, ProxyProtocol, UpstreamTls};

/// The certificates of one config, ready to serve.
#[derive(Debug)]
pub struct CertStore {
    /// In config order; the first is the default.
    entries: Vec<Cert>,
}

impl CertStore {
    /// Read and check every certificate ([`certs::load`]).
    pub fn load(
        certs: &[CertPaths],
    ) -> Result<(CertStore, Vec<CertInfo>, Vec<String>), Vec<String>> {
        let (entries, infos, warnings) = certs::load(certs)
            .map_err(|errors| errors.iter().map(ToString::to_string).collect::<Vec<_>>())?;
        Ok((CertStore { entries }, infos, warnings))
    }

    /// The certificate for `sni`: an exact name first (the config's, then
    /// those `issued` by ACME), then a `*.` wildcard covering it (one
    /// label, as RFC 6125 §6.4.3 has it), else the default: the config's
    /// first, or the first issued.
    fn pick(&self, sni: Option<&str>, issued: &[Cert]) -> Option<Arc<CertifiedKey>> {
        if let Some(sni) = sni {
            let sni = sni.trim_end_matches('.').to_ascii_lowercase();
            let exact = |list: &[Cert]| {
                let found = list.iter().find(|e| e.names.contains(&sni));
                found.map(|e| e.key.clone())
            };
            if let Some(key) = exact(&self.entries).or_else(|| exact(issued)) {
                return Some(key);
            }
            if let Some((_, parent)) = sni.split_once('.') {
                let wildcard = format!("*.{parent}");
                if let Some(e) = self.entries.iter().find(|e| e.names.contains(&wildcard)) {
                    return Some(e.key.clone());
                }
            }
        }
        self.entries
            .first()
            .or(issued.first())
            .map(|e| e.key.clone())
    }
}

/// The ALPN protocol of ACME's tls-alpn-01 challenge (RFC 8737).
pub const ACME_TLS_ALPN: &[u8] = b"acme-tls/1";

/// Chooses the certificate at each handshake from the current store.
#[derive(Debug)]
pub struct Resolver {
    pub store: ArcSwap<CertStore>,
    /// Certificates obtained by ACME (`control::acme`), beside the
    /// config's; a reload replaces the store, not these.
    pub issued: ArcSwap<Vec<Cert>>,
    /// tls-alpn-01: the challenge certificate of each name being
    /// validated, shown only to a client offering `acme-tls/1`.
    pub challenges: ArcSwap<std::collections::HashMap<String, Arc<CertifiedKey>>>,
}

impl Resolver {
    pub fn new(store: CertStore) -> Resolver {
        Resolver {
            store: ArcSwap::from_pointee(store),
            issued: ArcSwap::from_pointee(Vec::new()),
            challenges: ArcSwap::from_pointee(Default::default()),
        }
    }
}

impl ResolvesServerCert for Resolver {
    fn resolve(&self, hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        if hello
            .alpn()
            .is_some_and(|mut offered| offered.any(|p| p == ACME_TLS_ALPN))
        {
            let name = hello.server_name()?.to_ascii_lowercase();
            return self.challenges.load().get(&name).cloned();
        }
        self.store
            .load()
            .pick(hello.server_name(), &self.issued.load())
    }
}

/// The rustls server config: TLS 1.2 and 1.3, ALPN h2 then http/1.1 (and
/// ACME's `acme-tls/1`),
/// certificates from `resolver`.
pub fn server_config(resolver: Arc<Resolver>) -> Arc<rustls::ServerConfig> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = rustls::ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
        .expect("ring supports TLS 1.2 and 1.3")
        .with_no_client_auth()
        .with_cert_resolver(resolver);
    // `acme-tls/1` last: chosen only by a CA's validation, which offers
    // nothing else (and gets no HTTP).
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec(), ACME_TLS_ALPN.to_vec()];
    Arc::new(config)
}

/// An upstream connection's socket: plain TCP, or TLS over it. One type,
/// so that one HTTP/1.1 client (and hyper's h2 client, and tunnels) serve
/// both; the plain path pays a branch, not an allocation.
pub enum Stream {
    Plain(TcpStream),
    /// Boxed: a rustls client connection is large, and one box per
    /// connection keeps every plain socket small.
    Tls(Box<TlsStream<TcpStream>>),
}

impl Stream {
    /// Has the upstream closed this idle connection (or sent something
    /// unasked)? The reactor's readiness says whether anything arrived
    /// since the last read; only then is the socket read. Over TLS the
    /// read also takes in what the server may send unasked that is not
    /// data (session tickets): still open; a `close_notify`: closed.
    pub fn is_closed(&mut self) -> bool {
        let mut cx = Context::from_waker(Waker::noop());
        match self {
            Stream::Plain(io) => match io.poll_read_ready(&mut cx) {
                Poll::Pending => false,
                Poll::Ready(Err(_)) => true,
                Poll::Ready(Ok(())) => !matches!(
                    io.try_read(&mut [0u8; 1]),
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock
                ),
            },
            Stream::Tls(io) => {
                let mut byte = [0u8; 1];
                let mut buf = ReadBuf::new(&mut byte);
                !Pin::new(io.as_mut())
                    .poll_read(&mut cx, &mut buf)
                    .is_pending()
            }
        }
    }
}

impl AsyncRead for Stream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Stream::Plain(io) => Pin::new(io).poll_read(cx, buf),
            Stream::Tls(io) => Pin::new(io.as_mut()).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for Stream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Stream::Plain(io) => Pin::new(io).poll_write(cx, buf),
            Stream::Tls(io) => Pin::new(io.as_mut()).poll_write(cx, buf),
        }
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Stream::Plain(io) => Pin::new(io).poll_write_vectored(cx, bufs),
            Stream::Tls(io) => Pin::new(io.as_mut()).poll_write_vectored(cx, bufs),
        }
    }

    fn is_write_vectored(&self) -> bool {
        match self {
            Stream::Plain(io) => io.is_write_vectored(),
            Stream::Tls(io) => io.is_write_vectored(),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Stream::Plain(io) => Pin::new(io).poll_flush(cx),
            Stream::Tls(io) => Pin::new(io.as_mut()).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Stream::Plain(io) => Pin::new(io).poll_shutdown(cx),
            Stream::Tls(io) => Pin::new(io.as_mut()).poll_shutdown(cx),
        }
    }
}

/// How to reach one upstream server beyond its address: TLS, and the
/// PROXY header its pool sends. Small (a pointer and a byte), as it sits
/// in every server beside the counters the request path updates.
#[derive(Debug, Clone, PartialEq)]
pub struct Transport {
    pub tls: Option<Arc<ServerTls>>,
    pub proxy_protocol: Option<ProxyProtocol>,
}

/// TLS to one server: its pool's settings and the name it is verified as.
#[derive(Debug, PartialEq)]
pub struct ServerTls {
    pub pool: UpstreamTls,
    pub name: ServerName<'static>,
}

/// Open a connection to `addr`: TCP, then the PROXY header if `transport`
/// sends one — naming `client` (its address, and the listener address it
/// came to), or with none (a health check) saying so — then the TLS
/// handshake if it is on. The caller bounds the whole with its timeout.
pub async fn connect(
    addr: SocketAddr,
    transport: &Transport,
    client: Option<(SocketAddr, SocketAddr)>,
) -> io::Result<Stream> {
    let mut tcp = TcpStream::connect(addr).await?;
    let _ = tcp.set_nodelay(true);
    if let Some(version) = transport.proxy_protocol {
        tcp.write_all(&proxy_header(version, client)?).await?;
    }
    let Some(tls) = &transport.tls else {
        return Ok(Stream::Plain(tcp));
    };
    let (name, connector) = (&tls.name, TlsConnector::from(tls.pool.client.clone()));
    match connector.connect(name.clone(), tcp).await {
        Ok(s) => Ok(Stream::Tls(Box::new(s))),
        // rustls's own words (an unknown issuer, a name that does not
        // match), with the name that was verified.
        Err(e) => Err(io::Error::new(
            e.kind(),
            format!("TLS handshake as {}: {e}", name.to_str()),
        )),
    }
}

/// The PROXY header for `client` (peer, local); with none, or with the two
/// in different address families, the header that names no addresses
/// (`LOCAL` in v2, `UNKNOWN` in v1), which the server takes as the
/// connection's own.
fn proxy_header(
    version: ProxyProtocol,
    client: Option<(SocketAddr, SocketAddr)>,
) -> io::Result<Vec<u8>> {
    // An IPv4 client of a dual-stack listener is an IPv4 client.
    let canonical = |a: SocketAddr| SocketAddr::new(a.ip().to_canonical(), a.port());
    let client = client.map(|(peer, local)| (canonical(peer), canonical(local)));
    match version {
        ProxyProtocol::V1 => {
            let addrs = client.map_or(ppp::v1::Addresses::Unknown, ppp::v1::Addresses::from);
            Ok(addrs.to_string().into_bytes())
        }
        ProxyProtocol::V2 => {
            use ppp::v2::{Builder, Command, Protocol, Version};
            let addrs = client.map_or(ppp::v2::Addresses::Unspecified, ppp::v2::Addresses::from);
            let command = match addrs {
                ppp::v2::Addresses::Unspecified => Command::Local,
                _ => Command::Proxy,
            };
            Builder::with_addresses(Version::Two | command, Protocol::Stream, addrs).build()
        }
    }
}
