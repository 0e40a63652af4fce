//! A write session: adds chunks to the store and commits one snapshot.
//!
//! How an import and a concurrent gc stay safe without a store-wide lock (Dekker-style: each
//! side writes its intent, then reads the other's):
//! - the writer holds `locks/<w>.lock` (flock) for its life, and appends the id of every
//!   chunk its snapshot will reference to `locks/<w>.refs` *before* relying on that chunk;
//!   after appending the id of a chunk that lives in an existing pack, it checks that the pack
//!   is still in `packs/`; if gc moved it to `trash/`, the writer stores the chunk again;
//! - gc moves doomed packs to `trash/` first, *then* reads every writer's refs file and the
//!   snapshots committed meanwhile, and rescues any trashed pack still needed.
//!
//! Either the writer's check sees the pack gone, or gc's read sees the writer's id.

use crate::error::{Error, IoContext, Result};
use crate::fsutil::{flock, write_atomic};
use crate::id::ChunkId;
use crate::pack::{Codec, PackWriter};
use crate::snapshot::{self, Entry, Manifest, SnapshotKind, SnapshotStats};
use crate::store::Store;
use sha2::{Digest, Sha256};
use std::collections::{BTreeMap, HashMap};
use std::fs::{self, File, OpenOptions};
use std::io::Write;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

#[derive(Clone)]
enum Known {
    /// In a sealed pack of the store (maybe another writer's).
    Packed(Arc<str>),
    /// Written (or being written) by this session.
    Mine,
}

#[derive(Default, Debug, Clone, Copy)]
pub struct WriteStats {
    pub new_chunks: u64,
    pub new_stored_bytes: u64,
    pub new_raw_bytes: u64,
    pub chunks: u64,
}

pub struct Writer<'s> {
    store: &'s Store,
    id: String,
    lock_path: PathBuf,
    refs_path: PathBuf,
    _lock: File,
    refs: File,
    known: Mutex<HashMap<ChunkId, Known>>,
    pack: Mutex<Option<PackWriter>>,
    stats: Mutex<WriteStats>,
    committed: bool,
}

/// What a finished import hands to `commit`.
pub struct Draft {
    pub name: String,
    pub labels: BTreeMap<String, String>,
    pub parent: Option<String>,
    pub content: DraftContent,
    pub stats: SnapshotStats,
}

pub enum DraftContent {
    Tree(Vec<Entry>),
    Image {
        size: u64,
        block_size: u32,
        blocks: Vec<Option<ChunkId>>,
    },
}

impl<'s> Writer<'s> {
    pub fn new(store: &'s Store) -> Result<Self> {
        let id = format!("w{}", hex::encode(rand::random::<[u8; 8]>()));
        let locks = store.dir("locks");
        let lock_path = locks.join(format!("{id}.lock"));
        let refs_path = locks.join(format!("{id}.refs"));
        // Lock under a temporary name, then rename: gc never sees an unlocked live lease.
        let tmp_lock = store.dir("tmp").join(format!("{id}.lock"));
        let lock = OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(&tmp_lock)
            .at(&tmp_lock)?;
        flock(&lock, false).at(&tmp_lock)?;
        writeln!(&lock, "pid {}", std::process::id()).at(&tmp_lock)?;
        fs::rename(&tmp_lock, &lock_path).at(&lock_path)?;
        let refs = OpenOptions::new()
            .append(true)
            .create(true)
            .open(&refs_path)
            .at(&refs_path)?;
        store.refresh_index()?;
        let known = store
            .packed_ids()
            .into_iter()
            .map(|(id, p)| (id, Known::Packed(p)))
            .collect();
        Ok(Writer {
            store,
            id,
            lock_path,
            refs_path,
            _lock: lock,
            refs,
            known: Mutex::new(known),
            pack: Mutex::new(None),
            stats: Mutex::new(WriteStats::default()),
            committed: false,
        })
    }

    pub fn store(&self) -> &Store {
        self.store
    }

    pub fn stats(&self) -> WriteStats {
        *self.stats.lock().unwrap()
    }

    fn touch(&self, id: &ChunkId) -> Result<()> {
        (&self.refs).write_all(&id.0).at(&self.refs_path)
    }

    /// Records that the snapshot will reference `id`, if the store still has it. False means
    /// the caller must supply the data (`put`).
    pub fn reference(&self, id: &ChunkId) -> Result<bool> {
        self.touch(id)?;
        let known = self.known.lock().unwrap().get(id).cloned();
        Ok(match known {
            Some(Known::Mine) => true,
            Some(Known::Packed(pack)) => self.store.pack_file_path(&pack, false).exists(),
            None => false,
        })
    }

    /// Stores a chunk (compressing it with `zc`) unless the store has it; returns its id.
    pub fn put(&self, data: &[u8], zc: &mut zstd::bulk::Compressor<'static>) -> Result<ChunkId> {
        let id = ChunkId::of(data);
        self.put_with_id(id, data, zc)?;
        Ok(id)
    }

    /// A chunk uploaded by a remote client: refused unless it hashes to the id it claims.
    pub fn upload(
        &self,
        id: ChunkId,
        data: &[u8],
        zc: &mut zstd::bulk::Compressor<'static>,
    ) -> Result<()> {
        if ChunkId::of(data) != id {
            return Err(Error::CorruptChunk {
                id: id.to_hex(),
                what: "uploaded data does not hash to this id".into(),
            });
        }
        self.put_with_id(id, data, zc)
    }

    /// Commits a snapshot described by a remote client: its tree must be safe to export and
    /// every chunk it names must be in the store (uploaded or already there).
    pub fn commit_uploaded(self, draft: Draft) -> Result<Manifest> {
        let ids: Vec<ChunkId> = match &draft.content {
            DraftContent::Tree(entries) => {
                snapshot::check_tree(entries)?;
                snapshot::tree_chunks(entries).collect()
            }
            DraftContent::Image {
                size,
                block_size,
                blocks,
            } => {
                if *block_size != self.store.config().block_size {
                    return Err(Error::Invalid(format!(
                        "image block size {block_size} is not the store's ({}); chunk the image \
                         with the store's block size",
                        self.store.config().block_size
                    )));
                }
                if blocks.len() as u64 != size.div_ceil(*block_size as u64) {
                    return Err(Error::Invalid(
                        "image chunk list does not match its size".into(),
                    ));
                }
                blocks.iter().flatten().copied().collect()
            }
        };
        let mut missing = Vec::new();
        for id in ids {
            if !self.reference(&id)? {
                missing.push(id.to_hex());
            }
        }
        if !missing.is_empty() {
            return Err(Error::Invalid(format!(
                "snapshot names {} chunks the store lacks (first {}); upload them first",
                missing.len(),
                missing[0]
            )));
        }
        self.commit(draft)
    }

    fn put_with_id(
        &self,
        id: ChunkId,
        data: &[u8],
        zc: &mut zstd::bulk::Compressor<'static>,
    ) -> Result<()> {
        self.stats.lock().unwrap().chunks += 1;
        if self.reference(&id)? {
            return Ok(());
        }
        {
            let mut known = self.known.lock().unwrap();
            if matches!(known.get(&id), Some(Known::Mine)) {
                return Ok(()); // another worker claimed it meanwhile
            }
            known.insert(id, Known::Mine);
        }
        let compressed = zc
            .compress(data)
            .map_err(|e| Error::Invalid(format!("zstd: {e}")))?;
        let (codec, stored) = if compressed.len() < data.len() {
            (Codec::Zstd, &compressed[..])
        } else {
            (Codec::Raw, data)
        };
        let mut guard = self.pack.lock().unwrap();
        if guard.is_none() {
            *guard = Some(PackWriter::create(&self.store.dir("tmp"), &self.id)?);
        }
        let pw = guard.as_mut().unwrap();
        pw.add(id, codec, data.len() as u32, stored)?;
        {
            let mut st = self.stats.lock().unwrap();
            st.new_chunks += 1;
            st.new_stored_bytes += stored.len() as u64;
            st.new_raw_bytes += data.len() as u64;
        }
        if pw.size() >= self.store.config().pack_size {
            let pw = guard.take().unwrap();
            drop(guard);
            self.seal(pw)?;
        }
        Ok(())
    }

    /// Seals a pack and learns about packs other writers sealed meanwhile, so that two
    /// concurrent imports deduplicate against each other.
    fn seal(&self, pw: PackWriter) -> Result<()> {
        pw.seal(&self.store.dir("packs"))?;
        let fresh = self.store.refresh_index()?;
        let mut known = self.known.lock().unwrap();
        for ((pack, trash), entries) in fresh {
            if trash {
                continue;
            }
            for e in entries {
                known
                    .entry(e.id)
                    .or_insert_with(|| Known::Packed(pack.clone()));
            }
        }
        Ok(())
    }

    fn flush(&self) -> Result<()> {
        let pw = self.pack.lock().unwrap().take();
        match pw {
            Some(pw) if !pw.is_empty() => self.seal(pw),
            Some(pw) => {
                pw.abort();
                Ok(())
            }
            None => Ok(()),
        }
    }

    /// Seals the last pack, writes the snapshot's data file, then its manifest.
    pub fn commit(mut self, draft: Draft) -> Result<Manifest> {
        self.flush()?;
        let id = snapshot::new_snapshot_id();
        let (kind, data, image_size, block_size) = match &draft.content {
            DraftContent::Tree(entries) => (
                SnapshotKind::Tree,
                snapshot::encode_tree(entries)?,
                None,
                None,
            ),
            DraftContent::Image {
                size,
                block_size,
                blocks,
            } => (
                SnapshotKind::Image,
                snapshot::encode_image(blocks)?,
                Some(*size),
                Some(*block_size),
            ),
        };
        let ws = self.stats();
        let mut stats = draft.stats;
        stats.new_chunks = ws.new_chunks;
        stats.new_stored_bytes = ws.new_stored_bytes;
        let now = chrono::Utc::now();
        let manifest = Manifest {
            id: id.clone(),
            name: draft.name,
            kind,
            time: now.timestamp(),
            time_nsec: now.timestamp_subsec_nanos(),
            labels: draft.labels,
            parent: draft.parent,
            data_sha256: hex::encode(Sha256::digest(&data)),
            data_len: data.len() as u64,
            image_size,
            block_size,
            stats,
        };
        let tmp = self.store.dir("tmp");
        write_atomic(&tmp, &self.store.data_path(&id), &data)?;
        let json = serde_json::to_vec_pretty(&manifest).expect("manifest serializes");
        write_atomic(&tmp, &self.store.manifest_path(&id), &json)?;
        self.committed = true;
        Ok(manifest)
    }
}

impl Drop for Writer<'_> {
    fn drop(&mut self) {
        if !self.committed {
            // Keep what was written: an interrupted upload resumes without sending it again,
            // and gc removes it if no snapshot ever names it.
            if let Err(e) = self.flush() {
                tracing::warn!("writer {}: could not seal its last pack: {e}", self.id);
            }
        }
        // Refs go before the lock: gc treats refs without a live lock as stale.
        let _ = fs::remove_file(&self.refs_path);
        let _ = fs::remove_file(&self.lock_path);
    }
}
