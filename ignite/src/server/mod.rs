//! The `ignite server` daemon: DHCP (or proxyDHCP), TFTP and HTTP in one process.

pub mod config;
pub mod provider;
pub mod run;
