//! A write session: adds chunks to the store and commits one snapshot. A local import uses
//! one for its whole run; a server uses one per remote capture (`missing`, then `upload` in
//! batches from several requests at once, then `commit_uploaded`).
//!
//! How a session and a concurrent gc stay safe without a store-wide lock (Dekker-style: each
//! side writes its intent, then reads the other's):
//! - the writer holds `locks/<w>.lock` (flock) for its life, and appends the id of every
//!   chunk its snapshot will reference to `locks/<w>.refs` *before* relying on that chunk;
//!   after appending the id of a chunk that lives in an existing pack, it checks that the pack
//!   is still in `packs/`; if gc moved it to `trash/`, the chunk counts as missing and is
//!   stored again;
//! - gc moves doomed packs to `trash/` first, *then* reads every writer's refs file and the
//!   snapshots committed meanwhile, and rescues any trashed pack still needed.
//!
//! Either the writer's check sees the pack gone, or gc's read sees the writer's id.
//!
//! A session that ends without a commit (dropped, or its client gone) seals what it wrote:
//! a capture that starts again finds those chunks in the store and does not send them again,
//! and gc removes them if no snapshot ever names them. A session killed outright leaves an
//! unlocked lease and a temporary pack, which gc clears; the store verifies either way.

use crate::chunk_stream::{StoredChunk, MAX_CHUNK_BYTES};
use crate::error::{Error, IoContext, Result};
use crate::fsutil::{flock, write_atomic};
use crate::id::ChunkId;
use crate::pack::{self, Codec, PackWriter};
use crate::snapshot::SnapshotKind;
use crate::snapshot::{self, check_tree, validate_name, Draft, DraftContent, Manifest};
use crate::store::Store;
use sha2::{Digest, Sha256};
use std::collections::{HashMap, HashSet};
use std::fs::{self, File, OpenOptions};
use std::io::Write;
use std::ops::Deref;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

#[derive(Clone)]
enum Known {
    /// In a sealed pack of the store (maybe another writer's).
    Packed(Arc<str>),
    /// Stored by this session (in its open pack, or one it sealed).
    Mine,
}

/// What this session added to the store.
#[derive(Default, Debug, Clone, Copy)]
pub struct WriteStats {
    pub new_chunks: u64,
    pub new_stored_bytes: u64,
    pub new_raw_bytes: u64,
}

/// The store a session writes to: borrowed for a local import, shared for a session a server
/// keeps across requests.
enum StoreRef<'s> {
    Borrowed(&'s Store),
    Shared(Arc<Store>),
}

impl Deref for StoreRef<'_> {
    type Target = Store;

    fn deref(&self) -> &Store {
        match self {
            StoreRef::Borrowed(s) => s,
            StoreRef::Shared(s) => s,
        }
    }
}

pub struct Writer<'s> {
    store: StoreRef<'s>,
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

impl<'s> Writer<'s> {
    pub fn new(store: &'s Store) -> Result<Self> {
        Writer::open(StoreRef::Borrowed(store))
    }

    /// A session that owns its handle on the store, so that a server can keep it between
    /// the requests of one remote capture.
    pub fn shared(store: Arc<Store>) -> Result<Writer<'static>> {
        Writer::open(StoreRef::Shared(store))
    }

    fn open(store: StoreRef<'s>) -> Result<Self> {
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
        &self.store
    }

    pub fn stats(&self) -> WriteStats {
        *self.stats.lock().unwrap()
    }

    /// Records that the snapshot will reference these chunks (before relying on them).
    fn touch(&self, ids: &[ChunkId]) -> Result<()> {
        let bytes: Vec<u8> = ids.iter().flat_map(|id| id.0).collect();
        (&self.refs).write_all(&bytes).at(&self.refs_path)
    }

    /// Which of `ids` the store lacks, in the order given: what must be stored (`upload`, or
    /// a local import's own chunks) before the snapshot is committed. The others count as
    /// referenced by this session from now on: gc keeps them.
    pub fn missing(&self, ids: &[ChunkId]) -> Result<Vec<ChunkId>> {
        self.touch(ids)?;
        let known: Vec<Option<Known>> = {
            let map = self.known.lock().unwrap();
            ids.iter().map(|id| map.get(id).cloned()).collect()
        };
        let mut packs: HashMap<Arc<str>, bool> = HashMap::new();
        let mut exists = |p: &Arc<str>| {
            *packs
                .entry(p.clone())
                .or_insert_with(|| self.store.pack_file_path(p, false).exists())
        };
        let mut out = Vec::new();
        let mut refreshed = false;
        for (id, k) in ids.iter().zip(known) {
            let have = match k {
                Some(Known::Mine) => true,
                Some(Known::Packed(p)) if exists(&p) => true,
                // gc removed the pack the session knew: the chunk may live on in the pack gc
                // copied it to, or be gone.
                Some(Known::Packed(_)) => {
                    if !refreshed {
                        self.store.refresh_index()?;
                        refreshed = true;
                    }
                    match self.store.locate(id) {
                        Some(l) if !l.in_trash && exists(&l.pack) => {
                            self.known
                                .lock()
                                .unwrap()
                                .insert(*id, Known::Packed(l.pack));
                            true
                        }
                        _ => false,
                    }
                }
                None => false,
            };
            if !have {
                out.push(*id);
            }
        }
        Ok(out)
    }

    /// Stores a chunk, compressed with `zc`, unless the session has it; returns its id.
    pub fn put(&self, data: &[u8], zc: &mut zstd::bulk::Compressor<'static>) -> Result<ChunkId> {
        let id = ChunkId::of(data);
        if self.missing(&[id])?.is_empty() {
            return Ok(id);
        }
        self.store_chunk(&compress(id, data, zc)?)?;
        Ok(id)
    }

    /// Chunks sent by a remote client, as stored: each must be at most `MAX_CHUNK_BYTES`,
    /// decompress to its raw length and hash to its id, or nothing of the batch is stored.
    pub fn upload(&self, chunks: &[StoredChunk]) -> Result<()> {
        for c in chunks {
            if c.raw_len > MAX_CHUNK_BYTES {
                return Err(Error::CorruptChunk {
                    id: c.id.to_hex(),
                    what: format!("{} bytes is more than any chunk", c.raw_len),
                });
            }
            pack::decode(&c.entry(), &c.data).map_err(|e| match e {
                Error::CorruptChunk { id, what } => Error::CorruptChunk {
                    id,
                    what: format!("uploaded chunk refused: {what}"),
                },
                e => e,
            })?;
        }
        let ids: Vec<ChunkId> = chunks.iter().map(|c| c.id).collect();
        self.touch(&ids)?;
        chunks.iter().try_for_each(|c| self.store_chunk(c))
    }

    /// Appends a chunk to the session's pack unless the session has it. The caller vouches
    /// for the id (it hashed the data itself, or `upload` checked it) and touched it.
    pub(crate) fn store_chunk(&self, c: &StoredChunk) -> Result<()> {
        let mut guard = self.pack.lock().unwrap();
        {
            let mut known = self.known.lock().unwrap();
            let have = match known.get(&c.id) {
                Some(Known::Mine) => true,
                Some(Known::Packed(p)) => self.store.pack_file_path(p, false).exists(),
                None => false,
            };
            if have {
                return Ok(()); // another worker or request stored it meanwhile
            }
            known.insert(c.id, Known::Mine);
        }
        if guard.is_none() {
            *guard = Some(PackWriter::create(&self.store.dir("tmp"), &self.id)?);
        }
        let pw = guard.as_mut().expect("created above");
        pw.add(c.id, c.codec, c.raw_len, &c.data)?;
        {
            let mut st = self.stats.lock().unwrap();
            st.new_chunks += 1;
            st.new_stored_bytes += c.data.len() as u64;
            st.new_raw_bytes += u64::from(c.raw_len);
        }
        if pw.size() >= self.store.config().pack_size {
            let pw = guard.take().expect("present");
            drop(guard);
            self.seal(pw)?;
        }
        Ok(())
    }

    /// Seals a pack and learns about packs other writers sealed meanwhile, so that two
    /// concurrent imports deduplicate against each other.
    fn seal(&self, pw: PackWriter) -> Result<()> {
        pw.seal(&self.store.dir("packs"))?;
        self.learn()
    }

    /// Takes in packs sealed by other sessions since this one looked.
    fn learn(&self) -> Result<()> {
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

    /// Commits a snapshot described by a remote client: its name must be valid, its parent
    /// must exist, its tree must be safe to export (or its image must use the store's block
    /// size), and every chunk it names must be in the store (uploaded or already there).
    pub fn commit_uploaded(self, draft: Draft) -> Result<Manifest> {
        validate_name(&draft.name)?;
        if let Some(p) = &draft.parent {
            if p.len() != 16 || !self.store.manifest_path(p).exists() {
                return Err(Error::NoSuchSnapshot(p.clone()));
            }
        }
        let ids: HashSet<ChunkId> = match &draft.content {
            DraftContent::Tree(entries) => {
                check_tree(entries)?;
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
                if blocks.len() as u64 != size.div_ceil(u64::from(*block_size)) {
                    return Err(Error::Invalid(
                        "image chunk list does not match its size".into(),
                    ));
                }
                blocks.iter().flatten().copied().collect()
            }
        };
        self.learn()?;
        let ids: Vec<ChunkId> = ids.into_iter().collect();
        let mut missing = self.missing(&ids)?;
        if !missing.is_empty() {
            // A gc may have a pack in trash/ right now, which it puts back if it saw our
            // refs: once it is done, what is missing is missing.
            self.store.wait_for_gc()?;
            self.learn()?;
            missing = self.missing(&missing)?;
        }
        if let Some(first) = missing.first() {
            return Err(Error::Invalid(format!(
                "snapshot names {} chunks the store lacks (first {}); upload them first",
                missing.len(),
                first.to_hex()
            )));
        }
        self.commit(draft)
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

/// A chunk as a session stores it: zstd-compressed, or raw when that is not smaller.
pub fn compress(
    id: ChunkId,
    data: &[u8],
    zc: &mut zstd::bulk::Compressor<'static>,
) -> Result<StoredChunk> {
    let compressed = zc
        .compress(data)
        .map_err(|e| Error::Invalid(format!("zstd: {e}")))?;
    let (codec, stored) = if compressed.len() < data.len() {
        (Codec::Zstd, compressed)
    } else {
        (Codec::Raw, data.to_vec())
    };
    Ok(StoredChunk {
        id,
        codec,
        raw_len: data.len() as u32,
        data: stored,
    })
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
