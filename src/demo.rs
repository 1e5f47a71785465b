//! `cutover demo`: two tiny upstreams that answer with their colour, for a
//! first look without deploying anything.

use std::convert::Infallible;
use std::net::SocketAddr;

use bytes::Bytes;
use http_body_util::Full;
use hyper::{Request, Response};
use hyper_util::rt::{TokioExecutor, TokioIo};

/// The demo config, embedded at build time.
pub const DEMO_CONFIG: &str = include_str!("../config/demo.toml");

/// Serve `color` (plus a newline) on every path of `listener`, until the
/// runtime stops.
pub async fn serve_color(listener: tokio::net::TcpListener, color: &'static str) {
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            continue;
        };
        tokio::spawn(async move {
            let svc = hyper::service::service_fn(
                move |_req: Request<hyper::body::Incoming>| async move {
                    let mut r = Response::new(Full::new(Bytes::from(format!("{color}\n"))));
                    r.headers_mut()
                        .insert("content-type", "text/plain".parse().expect("static"));
                    Ok::<_, Infallible>(r)
                },
            );
            let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                .serve_connection(TokioIo::new(stream), svc)
                .await;
        });
    }
}

/// Start the blue and green demo upstreams on a background thread.
pub fn start_upstreams(blue: SocketAddr, green: SocketAddr) -> std::io::Result<()> {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()?;
    let (b, g) = rt.block_on(async {
        Ok::<_, std::io::Error>((
            tokio::net::TcpListener::bind(blue).await?,
            tokio::net::TcpListener::bind(green).await?,
        ))
    })?;
    std::thread::Builder::new()
        .name("cutover-demo-upstreams".into())
        .spawn(move || {
            rt.block_on(async {
                tokio::spawn(serve_color(b, "blue"));
                serve_color(g, "green").await;
            })
        })?;
    Ok(())
}
