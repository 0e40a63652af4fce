//! Content-addressed chunk store: FastCDC, SHA-256 ids, zstd; file-tree and block snapshots.
