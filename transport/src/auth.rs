//! The handshake's proof of the job secret: HMAC-SHA-256 (the RustCrypto `hmac` and `sha2`
//! crates) over both HELLOs, compared in constant time, and nonces from the kernel. The
//! secret itself never crosses the wire, and a listener computes nothing with it for a
//! dialer that has not proved it first.

use std::io::{self, Read};

use hmac::{Hmac, Mac};
use sha2::Sha256;

/// HMAC-SHA-256 (RFC 2104) of the concatenation of `parts`.
pub(crate) fn hmac_sha256(key: &[u8], parts: &[&[u8]]) -> [u8; 32] {
    let mut mac = <Hmac<Sha256> as Mac>::new_from_slice(key).expect("HMAC takes a key of any length");
    for p in parts {
        mac.update(p);
    }
    mac.finalize().into_bytes().into()
}

/// Equality whose time does not depend on where the inputs differ (lengths are public).
pub(crate) fn ct_eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    let diff = a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y));
    // Keeps the optimizer from turning the fold into an early exit.
    std::hint::black_box(diff) == 0
}

/// `N` bytes from the kernel's random source (nonces, incarnations).
pub(crate) fn random<const N: usize>() -> io::Result<[u8; N]> {
    let mut out = [0u8; N];
    std::fs::File::open("/dev/urandom")?.read_exact(&mut out)?;
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hex(b: &[u8]) -> String {
        b.iter().map(|x| format!("{x:02x}")).collect()
    }

    #[test]
    fn hmac_sha256_rfc4231() {
        assert_eq!(hex(&hmac_sha256(&[0x0b; 20], &[b"Hi There"])), "b0344c61d8db38535ca8afceaf0bf12b881dc200c9833da726e9376c2e32cff7");
        assert_eq!(
            hex(&hmac_sha256(b"Jefe", &[b"what do ya ", b"want for nothing?"])),
            "5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"
        );
        // A key longer than the block is hashed first.
        assert_eq!(
            hex(&hmac_sha256(&[0xaa; 131], &[b"Test Using Larger Than Block-Size Key - Hash Key First"])),
            "60e431591ee0b67f0d8a26aacbf5b77f8e0bc6213728c5140546040f0ee37f54"
        );
    }

    #[test]
    fn ct_eq_compares_whole_slices() {
        assert!(ct_eq(b"secret", b"secret"));
        assert!(!ct_eq(b"secret", b"secreT"));
        assert!(!ct_eq(b"Secret", b"secret"));
        assert!(!ct_eq(b"secret", b"secret!"));
        assert!(ct_eq(b"", b""));
    }

    #[test]
    fn random_draws_differ() {
        let a: [u8; 16] = random().unwrap();
        let b: [u8; 16] = random().unwrap();
        assert_ne!(a, b, "two 128-bit draws from /dev/urandom collided");
    }
}
