//! Where an agent gets its plan and its archive, and where it reports: the server over HTTP
//! ([`Http`]), a store on this machine ([`Store`], for `ignite install`), or — as the install
//! benchmark's baseline — a plain tarball unpacked with `curl | tar` ([`CurlTar`]).

mod curl_tar;
mod http;
mod store;

pub use curl_tar::CurlTar;
pub use http::Http;
pub use store::Store;
