//! Content-addressed chunk store: FastCDC, SHA-256 ids, zstd; file-tree and block snapshots.
//!
//! `Store` is the directory; `Writer` adds chunks and commits one snapshot; the `import_*` and
//! `export_*` modules turn tar streams, directories and raw images into snapshots and back;
//! `verify`, `retention` (prune), `gc`, `diff` and `stats` maintain and inspect a store.

pub mod chunk_stream;
pub mod chunker;
pub mod config;
pub mod diff;
pub mod error;
pub mod export_dir;
pub mod export_image;
pub mod export_tar;
pub mod fsutil;
pub mod gc;
pub mod id;
pub mod import;
pub mod import_dir;
pub mod import_image;
pub mod import_tar;
pub mod pack;
pub mod paths;
pub mod pipeline;
pub mod retention;
pub mod snapshot;
pub mod stats;
pub mod store;
pub mod verify;
pub mod writer;

pub use config::StoreConfig;
pub use error::{Error, Result};
pub use id::ChunkId;
pub use snapshot::{Entry, EntryKind, Manifest, SnapshotKind};
pub use store::Store;
pub use writer::Writer;
