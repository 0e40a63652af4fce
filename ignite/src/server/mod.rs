//! The `ignite server` daemon: DHCP (or proxyDHCP), TFTP and HTTP in one process; its
//! management API and web console.

pub mod admin;
pub mod api_error;
pub mod api_v1;
pub mod capture_api;
pub mod chunk_cache;
pub mod config;
pub mod install_api;
pub mod prepare;
pub mod provider;
pub mod run;
pub mod scheduler;
pub mod serve;
pub mod tls;
pub mod web;
