use std::path::PathBuf;

/// Every error names the object, what is wrong and, where it helps, what to do.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("store {0}: not an Ignite archive store (no config.json); create one with `ignite archive init`")]
    NotAStore(PathBuf),
    #[error("store {path}: {what}")]
    BadStore { path: PathBuf, what: String },
    #[error("store {0} already exists; pick an empty directory")]
    StoreExists(PathBuf),
    #[error("no snapshot matches {0:?}; `ignite archive list` shows what there is")]
    NoSuchSnapshot(String),
    #[error("snapshot {0:?} is ambiguous: it matches several ids; give more of the id")]
    AmbiguousSnapshot(String),
    #[error("snapshot {id}: {what}")]
    BadSnapshot { id: String, what: String },
    #[error("chunk {id} is missing from the store; run `ignite archive verify` to see what else is damaged")]
    MissingChunk { id: String },
    #[error("chunk {id} is corrupt: {what}")]
    CorruptChunk { id: String, what: String },
    #[error("tar entry {entry:?}: {what}")]
    BadTar { entry: String, what: String },
    #[error("tar stream: {0}")]
    TarStream(String),
    #[error("unsafe path {path:?}: {what}; refusing to write outside the target")]
    UnsafePath { path: String, what: String },
    #[error("{0}")]
    Invalid(String),
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Attaches a path to an `io::Error`, so messages say which file failed.
pub trait IoContext<T> {
    fn at(self, path: impl Into<PathBuf>) -> Result<T>;
    /// The same, the path made only on error (for hot paths).
    fn at_with(self, path: impl FnOnce() -> PathBuf) -> Result<T>;
}

impl<T> IoContext<T> for std::io::Result<T> {
    fn at(self, path: impl Into<PathBuf>) -> Result<T> {
        self.at_with(|| path.into())
    }

    fn at_with(self, path: impl FnOnce() -> PathBuf) -> Result<T> {
        self.map_err(|source| Error::Io {
            path: path(),
            source,
        })
    }
}
