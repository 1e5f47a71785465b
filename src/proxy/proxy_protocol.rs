//! The PROXY protocol (v1 text, v2 binary) in front of a client
//! connection, from an L4 balancer: read exactly the header, nothing of
//! what follows it, so the socket goes on to TLS or HTTP as it is. The
//! crate `ppp` parses; this only finds where the header ends.

use std::io;
use std::net::SocketAddr;

use tokio::io::AsyncReadExt;
use tokio::net::TcpStream;

/// The v2 signature (12 bytes); v1 starts with `PROXY `.
const V2_SIGNATURE: &[u8; 12] = b"\r\n\r\n\0\r\nQUIT\n";
/// A v1 line is at most 107 bytes, CRLF included.
const V1_MAX: usize = 107;
/// Shortest header of either version (`PROXY UNKNOWN\r\n`).
const SHORTEST: usize = 15;

/// Read the header off `stream`. `Ok(Some(addr))`: the client's address
/// as the balancer saw it; `Ok(None)`: a header that names no client
/// (v2 `LOCAL`, the balancer's own health check; v1 `UNKNOWN`). An error
/// for a missing or malformed header: the connection is to be closed.
pub async fn read_header(stream: &mut TcpStream) -> io::Result<Option<SocketAddr>> {
    let mut buf = vec![0u8; SHORTEST];
    stream.read_exact(&mut buf).await?;
    if buf.starts_with(b"PROXY ") {
        // Up to the CRLF: peek at what has come, take exactly the line.
        while !buf.ends_with(b"\r\n") {
            if buf.len() >= V1_MAX {
                return Err(invalid("PROXY v1 line longer than 107 bytes"));
            }
            let mut peeked = [0u8; V1_MAX];
            let n = stream.peek(&mut peeked[..V1_MAX - buf.len()]).await?;
            if n == 0 {
                return Err(io::ErrorKind::UnexpectedEof.into());
            }
            let take = if buf.ends_with(b"\r") {
                1 // the LF, if that is what comes: checked above, next round
            } else {
                match peeked[..n].windows(2).position(|w| w == b"\r\n") {
                    Some(i) => i + 2,
                    // Not all here yet: take one byte, which waits for more.
                    None => 1,
                }
            };
            let at = buf.len();
            buf.resize(at + take, 0);
            stream.read_exact(&mut buf[at..]).await?;
        }
    } else if buf.starts_with(&V2_SIGNATURE[..]) {
        buf.resize(16, 0);
        stream.read_exact(&mut buf[SHORTEST..]).await?;
        let len = usize::from(u16::from_be_bytes([buf[14], buf[15]]));
        buf.resize(16 + len, 0);
        stream.read_exact(&mut buf[16..]).await?;
    } else {
        return Err(invalid("no PROXY protocol header"));
    }
    parse(&buf)
}

/// The client address of one complete header.
fn parse(header: &[u8]) -> io::Result<Option<SocketAddr>> {
    match ppp::HeaderResult::parse(header) {
        ppp::HeaderResult::V1(Ok(h)) => Ok(match h.addresses {
            ppp::v1::Addresses::Tcp4(a) => Some((a.source_address, a.source_port).into()),
            ppp::v1::Addresses::Tcp6(a) => Some((a.source_address, a.source_port).into()),
            ppp::v1::Addresses::Unknown => None,
        }),
        ppp::HeaderResult::V2(Ok(h)) => Ok(match (h.command, h.addresses) {
            (ppp::v2::Command::Local, _) => None,
            (_, ppp::v2::Addresses::IPv4(a)) => Some((a.source_address, a.source_port).into()),
            (_, ppp::v2::Addresses::IPv6(a)) => Some((a.source_address, a.source_port).into()),
            (_, _) => None,
        }),
        ppp::HeaderResult::V1(Err(e)) => Err(invalid(&format!("PROXY v1: {e}"))),
        ppp::HeaderResult::V2(Err(e)) => Err(invalid(&format!("PROXY v2: {e}"))),
    }
}

fn invalid(why: &str) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, why.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::AsyncWriteExt;

    async fn through_socket(pieces: Vec<Vec<u8>>) -> (io::Result<Option<SocketAddr>>, Vec<u8>) {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let writer = tokio::spawn(async move {
            let mut c = TcpStream::connect(addr).await.unwrap();
            for p in pieces {
                c.write_all(&p).await.unwrap();
                c.flush().await.unwrap();
                tokio::time::sleep(std::time::Duration::from_millis(5)).await;
            }
        });
        let (mut s, _) = listener.accept().await.unwrap();
        let got = read_header(&mut s).await;
        writer.await.unwrap();
        let mut rest = Vec::new();
        if got.is_ok() {
            s.read_to_end(&mut rest).await.unwrap();
        }
        (got, rest)
    }

    #[tokio::test]
    async fn v1_and_v2_headers_give_the_client_and_leave_what_follows() {
        let v1 = b"PROXY TCP4 203.0.113.7 192.0.2.1 40000 443\r\nGET / HTTP/1.1\r\n".to_vec();
        // Split within the line and within the CRLF.
        for at in [6, 20, 43, 44] {
            let (got, rest) = through_socket(vec![v1[..at].to_vec(), v1[at..].to_vec()]).await;
            assert_eq!(
                got.unwrap(),
                Some("203.0.113.7:40000".parse().unwrap()),
                "split at {at}"
            );
            assert_eq!(rest, b"GET / HTTP/1.1\r\n");
        }
        let (got, _) = through_socket(vec![b"PROXY UNKNOWN\r\nx".to_vec()]).await;
        assert_eq!(got.unwrap(), None);

        let addrs: ppp::v2::Addresses = (
            "[2001:db8::5]:5000".parse::<SocketAddr>().unwrap(),
            "[2001:db8::1]:443".parse::<SocketAddr>().unwrap(),
        )
            .into();
        let mut v2 = ppp::v2::Builder::with_addresses(
            ppp::v2::Version::Two | ppp::v2::Command::Proxy,
            ppp::v2::Protocol::Stream,
            addrs,
        )
        .write_tlv(ppp::v2::Type::NoOp, b"pad")
        .unwrap()
        .build()
        .unwrap();
        v2.extend_from_slice(b"\x16\x03\x01");
        let (got, rest) = through_socket(vec![v2[..10].to_vec(), v2[10..].to_vec()]).await;
        assert_eq!(got.unwrap(), Some("[2001:db8::5]:5000".parse().unwrap()));
        assert_eq!(rest, b"\x16\x03\x01");
    }

    #[tokio::test]
    async fn a_missing_or_malformed_header_is_an_error() {
        for bad in [
            b"GET / HTTP/1.1\r\nHost: x\r\n\r\n".to_vec(),
            b"PROXY TCP4 999.0.0.1 1.2.3.4 1 2\r\n".to_vec(),
            [b"PROXY TCP4 ".to_vec(), vec![b'1'; 120]].concat(),
            b"\r\n\r\n\0\r\nQUIT\n\x21\x11\x00\x02ab".to_vec(),
        ] {
            let (got, _) = through_socket(vec![bad.clone()]).await;
            assert!(got.is_err(), "{:?}", String::from_utf8_lossy(&bad));
        }
    }
}
