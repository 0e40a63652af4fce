//! The store: a directory that describes itself (every file is described in `FORMAT.md`).
//!
//! ```text
//! config.json            format, chunker, block size, compression
//! packs/ab/<name>.pack   sealed packs of chunks (see pack.rs)
//! trash/ab/<name>.pack   packs gc is about to delete; still readable, never deduplicated against
//! snapshots/<id>.json    manifests; a snapshot exists once its manifest does
//! snapshots/<id>.data    its entries (tree) or chunk list (image)
//! locks/                 gc.lock, and one <writer>.lock + <writer>.refs per running import
//! tmp/                   files being written
//! ```
//!
//! Several processes may use one store at once; see writer.rs and gc.rs for how imports and
//! gc stay out of each other's way without a store-wide lock.

use crate::chunk_stream;
use crate::config::StoreConfig;
use crate::error::{Error, IoContext, Result};
use crate::fsutil::write_atomic;
use crate::id::ChunkId;
use crate::pack::{self, pack_path, PackEntry};
use crate::snapshot::{self, Entry, Manifest, SnapshotKind};
use sha2::{Digest, Sha256};
use std::collections::{HashMap, HashSet};
use std::fs::{self, File};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, RwLock};

#[derive(Debug, Clone)]
pub struct Location {
    pub pack: Arc<str>,
    pub in_trash: bool,
    pub entry: PackEntry,
}

#[derive(Default)]
struct ChunkIndex {
    map: HashMap<ChunkId, Location>,
    loaded: HashSet<(Arc<str>, bool)>,
    /// Packs whose trailer cannot be read, and why: left out of the index (their chunks are
    /// missing) so that the rest of the store stays usable; `verify` names them.
    damaged: HashMap<(Arc<str>, bool), String>,
}

pub struct Store {
    root: PathBuf,
    config: StoreConfig,
    index: RwLock<ChunkIndex>,
    open_packs: Mutex<HashMap<PathBuf, Arc<File>>>,
}

/// A pack name and whether it sits in trash/.
pub type PackRef = (Arc<str>, bool);

impl Store {
    /// Opens the store at `root`, creating it with the default configuration if `root` holds
    /// no store yet (a server's own store on first use).
    pub fn open_or_init(root: &Path) -> Result<Store> {
        if root.join("config.json").is_file() {
            Store::open(root)
        } else {
            Store::init(root, StoreConfig::default())
        }
    }

    pub fn init(root: &Path, config: StoreConfig) -> Result<Store> {
        config.validate()?;
        if root.join("config.json").exists() {
            return Err(Error::StoreExists(root.to_path_buf()));
        }
        if root.exists() && fs::read_dir(root).at(root)?.next().is_some() {
            return Err(Error::StoreExists(root.to_path_buf()));
        }
        for d in ["packs", "trash", "snapshots", "locks", "tmp"] {
            fs::create_dir_all(root.join(d)).at(root.join(d))?;
        }
        let json = serde_json::to_vec_pretty(&config).expect("config serializes");
        write_atomic(&root.join("tmp"), &root.join("config.json"), &json)?;
        Store::open(root)
    }

    pub fn open(root: &Path) -> Result<Store> {
        let cfg_path = root.join("config.json");
        let bytes = match fs::read(&cfg_path) {
            Ok(b) => b,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return Err(Error::NotAStore(root.to_path_buf()))
            }
            Err(e) => return Err(e).at(&cfg_path),
        };
        let config: StoreConfig = serde_json::from_slice(&bytes).map_err(|e| Error::BadStore {
            path: root.to_path_buf(),
            what: format!("config.json: {e}"),
        })?;
        config.validate()?;
        let store = Store {
            root: root.to_path_buf(),
            config,
            index: RwLock::new(ChunkIndex::default()),
            open_packs: Mutex::new(HashMap::new()),
        };
        store.refresh_index()?;
        Ok(store)
    }

    pub fn root(&self) -> &Path {
        &self.root
    }
    pub fn config(&self) -> &StoreConfig {
        &self.config
    }
    pub(crate) fn dir(&self, name: &str) -> PathBuf {
        self.root.join(name)
    }

    /// Lists the packs on disk: (name, in_trash, path).
    pub(crate) fn list_packs(&self) -> Result<Vec<(String, bool, PathBuf)>> {
        let mut out = Vec::new();
        for (sub, trash) in [("packs", false), ("trash", true)] {
            let dir = self.dir(sub);
            for fan in fs::read_dir(&dir).at(&dir)? {
                let fan = fan.at(&dir)?.path();
                if !fan.is_dir() {
                    continue;
                }
                let rd = match fs::read_dir(&fan) {
                    Ok(rd) => rd,
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
                    Err(e) => return Err(e).at(&fan),
                };
                for f in rd {
                    let p = f.at(&fan)?.path();
                    if let Some(name) = p
                        .file_name()
                        .and_then(|n| n.to_str())
                        .and_then(|n| n.strip_suffix(".pack"))
                    {
                        out.push((name.to_string(), trash, p.clone()));
                    }
                }
            }
        }
        Ok(out)
    }

    /// Loads the trailers of packs not seen before; if packs went away (gc), rebuilds the
    /// index, since a chunk may live on in another copy. Returns the newly seen packs.
    pub fn refresh_index(&self) -> Result<Vec<(PackRef, Vec<PackEntry>)>> {
        let on_disk = self.list_packs()?;
        let present: HashSet<PackRef> = on_disk
            .iter()
            .map(|(n, t, _)| (Arc::from(n.as_str()), *t))
            .collect();
        let mut idx = self.index.write().unwrap();
        if idx
            .loaded
            .iter()
            .chain(idx.damaged.keys())
            .any(|p| !present.contains(p))
        {
            *idx = ChunkIndex::default();
            self.open_packs.lock().unwrap().clear();
        }
        let mut fresh = Vec::new();
        for (name, trash, path) in &on_disk {
            let key: PackRef = (Arc::from(name.as_str()), *trash);
            if idx.loaded.contains(&key) || idx.damaged.contains_key(&key) {
                continue;
            }
            let entries = match pack::read_trailer(path) {
                Ok(entries) => entries,
                // Moved to or from trash by a concurrent gc between listing and reading.
                Err(Error::Io { source, .. }) if source.kind() == std::io::ErrorKind::NotFound => {
                    continue
                }
                Err(e) => {
                    tracing::warn!("{e}; its chunks are missing until it is repaired");
                    idx.damaged.insert(key, e.to_string());
                    continue;
                }
            };
            for e in &entries {
                // Prefer a copy outside trash: it is the one that stays.
                let keep_old = matches!(idx.map.get(&e.id), Some(old) if !old.in_trash || *trash);
                if !keep_old {
                    let loc = Location {
                        pack: key.0.clone(),
                        in_trash: *trash,
                        entry: *e,
                    };
                    idx.map.insert(e.id, loc);
                }
            }
            idx.loaded.insert(key.clone());
            fresh.push((key, entries));
        }
        Ok(fresh)
    }

    /// Rebuilds the index from scratch (after packs moved underneath us).
    pub fn rebuild_index(&self) -> Result<()> {
        *self.index.write().unwrap() = ChunkIndex::default();
        self.open_packs.lock().unwrap().clear();
        self.refresh_index().map(|_| ())
    }

    /// Packs left out of the index because their trailer cannot be read: (name, in trash,
    /// what is wrong).
    pub fn damaged_packs(&self) -> Vec<(String, bool, String)> {
        let idx = self.index.read().unwrap();
        let mut out: Vec<_> = idx
            .damaged
            .iter()
            .map(|((name, trash), what)| (name.to_string(), *trash, what.clone()))
            .collect();
        out.sort();
        out
    }

    pub fn locate(&self, id: &ChunkId) -> Option<Location> {
        self.index.read().unwrap().map.get(id).cloned()
    }

    pub fn contains(&self, id: &ChunkId) -> bool {
        self.index.read().unwrap().map.contains_key(id)
    }

    /// Every chunk id the index knows, with the pack it lives in (outside trash only).
    pub(crate) fn packed_ids(&self) -> HashMap<ChunkId, Arc<str>> {
        let idx = self.index.read().unwrap();
        idx.map
            .iter()
            .filter(|(_, l)| !l.in_trash)
            .map(|(id, l)| (*id, l.pack.clone()))
            .collect()
    }

    pub(crate) fn pack_file_path(&self, name: &str, in_trash: bool) -> PathBuf {
        pack_path(&self.dir(if in_trash { "trash" } else { "packs" }), name)
    }

    fn open_pack(&self, path: &Path) -> Result<Arc<File>> {
        let mut open = self.open_packs.lock().unwrap();
        if let Some(f) = open.get(path) {
            return Ok(f.clone());
        }
        let f = Arc::new(File::open(path).at(path)?);
        if open.len() >= 256 {
            open.clear();
        }
        open.insert(path.to_path_buf(), f.clone());
        Ok(f)
    }

    /// The chunk's stored (possibly compressed) bytes and its pack record, unverified: for
    /// passing chunks on over the network without recompressing.
    pub fn read_chunk_stored(&self, id: &ChunkId) -> Result<(PackEntry, Vec<u8>)> {
        for attempt in 0..3 {
            let Some(loc) = self.locate(id) else {
                if attempt == 0 {
                    self.refresh_index()?;
                    continue;
                }
                break;
            };
            let path = self.pack_file_path(&loc.pack, loc.in_trash);
            let res = self
                .open_pack(&path)
                .and_then(|f| pack::read_stored(&f, &path, &loc.entry));
            match res {
                Ok(stored) => return Ok((loc.entry, stored)),
                // gc moved or repacked it since we indexed: look again.
                Err(Error::Io { .. }) => {
                    self.rebuild_index()?;
                }
                Err(e) => return Err(e),
            }
        }
        Err(Error::MissingChunk { id: id.to_hex() })
    }

    /// The chunk's bytes, decompressed and checked against its id.
    pub fn read_chunk(&self, id: &ChunkId) -> Result<Vec<u8>> {
        let (entry, stored) = self.read_chunk_stored(id)?;
        pack::decode(&entry, &stored)
    }

    /// Which of these chunks the store lacks: what a remote client must upload.
    pub fn missing(&self, ids: &[ChunkId]) -> Result<Vec<ChunkId>> {
        self.refresh_index()?;
        let idx = self.index.read().unwrap();
        Ok(ids
            .iter()
            .filter(|id| !idx.map.contains_key(id))
            .copied()
            .collect())
    }

    /// How many bytes a `chunk_stream` reply with these chunks holds, headers included: what
    /// a server checks against its limit before it starts answering.
    pub fn reply_len(&self, ids: &[ChunkId]) -> Result<u64> {
        let mut total = 0;
        for id in ids {
            if !self.contains(id) {
                self.refresh_index()?;
            }
            let loc = self
                .locate(id)
                .ok_or_else(|| Error::MissingChunk { id: id.to_hex() })?;
            total += (chunk_stream::HEADER_LEN as u64) + u64::from(loc.entry.stored_len);
        }
        Ok(total)
    }

    pub fn chunk_count(&self) -> usize {
        self.index.read().unwrap().map.len()
    }

    // ---- snapshots ----

    pub fn list_snapshots(&self) -> Result<Vec<Manifest>> {
        let dir = self.dir("snapshots");
        let mut out = Vec::new();
        for f in fs::read_dir(&dir).at(&dir)? {
            let p = f.at(&dir)?.path();
            if p.extension().and_then(|e| e.to_str()) != Some("json") {
                continue;
            }
            match fs::read(&p) {
                Ok(bytes) => {
                    let m: Manifest =
                        serde_json::from_slice(&bytes).map_err(|e| Error::BadStore {
                            path: p.clone(),
                            what: format!("manifest does not parse: {e}"),
                        })?;
                    out.push(m);
                }
                // Removed by a concurrent prune.
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => return Err(e).at(&p),
            }
        }
        out.sort_by(|a, b| (a.time, a.time_nsec, &a.id).cmp(&(b.time, b.time_nsec, &b.id)));
        Ok(out)
    }

    /// `NAME` (its latest snapshot), `NAME@ID-PREFIX`, or a bare id prefix.
    pub fn resolve(&self, spec: &str) -> Result<Manifest> {
        let all = self.list_snapshots()?;
        let pick = |cands: Vec<&Manifest>| -> Result<Manifest> {
            match cands.len() {
                0 => Err(Error::NoSuchSnapshot(spec.to_string())),
                1 => Ok(cands[0].clone()),
                _ => Err(Error::AmbiguousSnapshot(spec.to_string())),
            }
        };
        if let Some((name, id)) = spec.split_once('@') {
            let mut named = all.iter().filter(|m| m.name == name);
            if id == "latest" {
                return named
                    .next_back()
                    .cloned()
                    .ok_or_else(|| Error::NoSuchSnapshot(spec.to_string()));
            }
            return pick(named.filter(|m| m.id.starts_with(id)).collect());
        }
        if let Some(m) = all.iter().rev().find(|m| m.name == spec) {
            return Ok(m.clone());
        }
        if spec.len() >= 4 {
            return pick(all.iter().filter(|m| m.id.starts_with(spec)).collect());
        }
        Err(Error::NoSuchSnapshot(spec.to_string()))
    }

    pub(crate) fn manifest_path(&self, id: &str) -> PathBuf {
        self.dir("snapshots").join(format!("{id}.json"))
    }
    pub(crate) fn data_path(&self, id: &str) -> PathBuf {
        self.dir("snapshots").join(format!("{id}.data"))
    }

    fn load_data(&self, m: &Manifest) -> Result<Vec<u8>> {
        let p = self.data_path(&m.id);
        let data = fs::read(&p).at(&p)?;
        if data.len() as u64 != m.data_len || hex::encode(Sha256::digest(&data)) != m.data_sha256 {
            return Err(Error::BadSnapshot {
                id: m.id.clone(),
                what: "data file does not match its manifest checksum".into(),
            });
        }
        Ok(data)
    }

    pub fn load_tree(&self, m: &Manifest) -> Result<Vec<Entry>> {
        if m.kind != SnapshotKind::Tree {
            return Err(Error::BadSnapshot {
                id: m.id.clone(),
                what: "is a block image, not a file tree; export it with --image".into(),
            });
        }
        snapshot::decode_tree(&m.id, &self.load_data(m)?)
    }

    pub fn load_image(&self, m: &Manifest) -> Result<Vec<Option<ChunkId>>> {
        if m.kind != SnapshotKind::Image {
            return Err(Error::BadSnapshot {
                id: m.id.clone(),
                what: "is a file tree, not a block image; export it with --dir or --tar".into(),
            });
        }
        let (size, bs) = (m.image_size.unwrap_or(0), m.block_size.unwrap_or(0));
        if bs == 0 {
            return Err(Error::BadSnapshot {
                id: m.id.clone(),
                what: "image without a block size".into(),
            });
        }
        snapshot::decode_image(&m.id, &self.load_data(m)?, size.div_ceil(bs.into()))
    }

    /// All chunk ids a snapshot references.
    pub fn snapshot_chunks(&self, m: &Manifest) -> Result<Vec<ChunkId>> {
        Ok(match m.kind {
            SnapshotKind::Tree => snapshot::tree_chunks(&self.load_tree(m)?).collect(),
            SnapshotKind::Image => self.load_image(m)?.into_iter().flatten().collect(),
        })
    }

    /// Waits until no gc runs (`locks/gc.lock` is free).
    pub fn wait_for_gc(&self) -> Result<()> {
        let path = self.dir("locks").join("gc.lock");
        let lock = fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(false)
            .open(&path)
            .at(&path)?;
        crate::fsutil::flock(&lock, false).at(&path)?;
        Ok(()) // closing the file releases the lock
    }

    /// Removes a snapshot (its manifest first: from then on it does not exist).
    pub fn forget(&self, id: &str) -> Result<()> {
        let m = self.manifest_path(id);
        fs::remove_file(&m).at(&m)?;
        crate::fsutil::fsync_dir(&self.dir("snapshots"))?;
        let d = self.data_path(id);
        match fs::remove_file(&d) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(e).at(&d),
            _ => Ok(()),
        }
    }
}
