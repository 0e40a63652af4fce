//! DHCPv4 + proxyDHCP with PXE options, TFTP and HTTP boot; which client gets which boot files.
//!
//! The crate holds the protocol engines and their sockets. What a given client should boot is
//! asked from a [`boot::BootProvider`] that the caller (the `ignite` binary, with its client
//! registry) implements, so TFTP and HTTP serve per-client files from the same code.

pub mod boot;
pub mod dhcp;
pub mod error;
pub mod files;
pub mod http;
pub mod iface;
pub mod leases;
pub mod lograte;
pub mod mac;
pub mod pe;
pub mod pxe;
pub mod ra;
#[cfg(any(test, feature = "testing"))]
pub mod testing;
pub mod tftp;

pub use error::Error;
pub use mac::MacAddr;
