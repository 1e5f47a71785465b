//! Entry points for the fuzz targets in `fuzz/`: untrusted bytes into the
//! data plane's parsers. Each must return, never panic, whatever it gets.
//! Not an API.

use bytes::BytesMut;

use super::h1::codec::{self, Asked, Decoded, Decoder, Parsed};

/// An upstream's answer, as bytes arriving in pieces: the first byte of
/// `data` picks how it is split and what the request asked for; the rest
/// goes through the response head parser and then the body decoder.
pub fn upstream_response(data: &[u8]) {
    let Some((&knobs, rest)) = data.split_first() else {
        return;
    };
    let asked = Asked {
        head: knobs & 1 != 0,
        upgrade: knobs & 2 != 0,
        connect: knobs & 4 != 0,
    };
    let piece = usize::from(knobs >> 3) + 1;
    let mut buf = BytesMut::new();
    let mut decoder: Option<Decoder> = None;
    for chunk in rest.chunks(piece) {
        buf.extend_from_slice(chunk);
        loop {
            match &mut decoder {
                None => match codec::parse_head(&mut buf, asked) {
                    Ok(Some(Parsed::Interim(_))) => continue,
                    Ok(Some(Parsed::Final(head))) => {
                        if head.switched {
                            return;
                        }
                        decoder = Some(Decoder::new(head.framing));
                    }
                    Ok(None) => break,
                    Err(_) => return,
                },
                Some(d) => match d.decode(&mut buf) {
                    Ok(Decoded::Frame(_)) => continue,
                    Ok(Decoded::More) => break,
                    Ok(Decoded::End) => return,
                    Err(_) => return,
                },
            }
        }
    }
    if let Some(d) = &mut decoder {
        let _ = d.closed();
    }
}
