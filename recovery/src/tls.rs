//! HTTPS between agents and `ignite server` when the server runs with `[install] tls`.
//!
//! The server keeps a certificate authority of its own (made at first start) and signs a
//! fresh server certificate for its addresses at each start. An agent cannot check a
//! certificate against the web's roots (the server has no public name) and must not trust
//! whatever answers: its kernel command line pins the authority (`ignite.tls=` the SHA-256
//! of its DER, [`pin`]). The agent fetches the authority's certificate from the server
//! ([`CA_PATH`], over an unverified connection: the pin is what makes it trusted), checks its
//! digest against the pin, and from then on verifies every connection against that one
//! authority, server name (its IP address) included. rustls runs on ring: no cmake or C++ in
//! the static build.

use std::sync::Arc;

use ignite_archive::ChunkId;

/// Where the server serves its authority's certificate (DER), on its HTTPS port.
pub const CA_PATH: &str = "/tls/ca.der";

/// The pin of a certificate: lowercase hex SHA-256 of its DER bytes (the digest the store
/// names chunks by).
pub fn pin(der: &[u8]) -> String {
    ChunkId::of(der).to_hex()
}

/// Whether `text` has the form of a pin (64 hex digits).
pub fn is_pin(text: &str) -> bool {
    text.len() == 64 && text.bytes().all(|b| b.is_ascii_hexdigit())
}

/// The crypto every TLS connection here uses: ring. rustls deprecates it for lacking
/// post-quantum key exchange; aws-lc-rs, which has it, needs cmake and a C++ toolchain in
/// the static build, and a recorded boot LAN session with a pinned authority is not where
/// harvest-now-decrypt-later matters most. Revisit when ring gains ML-KEM.
#[allow(deprecated)]
pub fn crypto() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pin_is_the_hex_sha256_of_the_bytes() {
        // SHA-256("abc"), FIPS 180-2 appendix B.1.
        assert_eq!(
            pin(b"abc"),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
        assert!(is_pin(&pin(b"abc")));
        assert!(!is_pin("ba7816bf"));
        assert!(!is_pin(&"g".repeat(64)));
    }
}
