//! Content-addressed chunk store: FastCDC, SHA-256 ids, zstd; file-tree and block snapshots.
//! The on-disk format is described in `archive/FORMAT.md`.
//!
//! Modules form a one-way stack; each uses only modules of lower layers (checked by
//! `tests/layers.rs`):
//!
//! ```text
//! 5 diff retention                          comparing snapshots, choosing what to keep
//! 4 import import_dir import_tar import_image pipeline
//!   export_dir export_tar export_image      turning trees/images into snapshots and back
//! 3 writer gc verify stats chunk_source     write sessions, maintenance, reading for export
//!   chunk_sink                              where an import's chunks go (local or remote)
//! 2 store                                   the directory: packs, index, snapshots
//! 1 pack snapshot chunk_stream              file formats: packs, trees/images, chunk batches
//! 0 error id config fsutil paths chunker    primitives
//!   image_reader                            where block imports read disks from
//!   beneath                                 writing into a target without following symlinks
//! ```
//!
//! What other crates use is re-exported here, so they do not depend on the module layout.

pub mod beneath;
pub mod chunk_sink;
pub mod chunk_source;
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
pub mod image_reader;
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

pub use chunk_sink::ChunkSink;
pub use chunk_source::{ChunkSource, BATCH_BYTES, BATCH_CHUNKS};
pub use chunk_stream::StoredChunk;
pub use config::StoreConfig;
pub use error::{Error, Result};
pub use export_dir::{export_dir, export_tree, ExportStats};
pub use export_image::export_image;
pub use export_tar::export_tar;
pub use id::ChunkId;
pub use image_reader::{FileImage, ImageReader};
pub use import::{ImportOptions, ParentChoice};
pub use import_dir::{import_dir, import_dir_into};
pub use import_image::{import_image, import_image_into, ImageSource};
pub use import_tar::{import_tar, import_tar_into};
pub use pack::{Codec, PackEntry};
pub use snapshot::{
    check_tree, decode_tree, encode_tree, tree_chunks, Draft, DraftContent, Entry, EntryKind,
    Extent, Manifest, SnapshotKind, Xattr,
};
pub use stats::Progress;
pub use store::Store;
pub use writer::Writer;
