//! Errors of the netboot services. Each names the object, what is wrong and what to do.

use std::path::PathBuf;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("interface {iface}: {msg}")]
    Interface { iface: String, msg: String },
    #[error("cannot bind {what} on {addr}: {source}; is another DHCP/TFTP/HTTP server running, and are you root?")]
    Bind {
        what: &'static str,
        addr: String,
        source: std::io::Error,
    },
    #[error(
        "lease database {path}: {source}; check the state directory is writable and not corrupt"
    )]
    Leases {
        path: PathBuf,
        source: rusqlite::Error,
    },
    #[error("DHCP pool {first}-{last}: {msg}")]
    Pool {
        first: std::net::Ipv4Addr,
        last: std::net::Ipv4Addr,
        msg: String,
    },
    #[error("{0}")]
    Config(String),
    #[error("{what} stopped: {msg}; the server must be restarted")]
    Stopped { what: String, msg: String },
    #[error("I/O error on {what}: {source}")]
    Io {
        what: String,
        source: std::io::Error,
    },
}

pub type Result<T> = std::result::Result<T, Error>;
