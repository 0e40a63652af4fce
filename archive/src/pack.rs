//! Pack files: many compressed chunks in one file, with a checksummed trailer that lists them.
//!
//! Why packs and not one file per chunk: on these machines an fsync costs about 2.6 ms, and a
//! Debian root file system has over ten thousand small files, each its own chunk. One durable
//! file per chunk would spend half a minute in fsync alone; a 16 MiB pack costs one fsync.
//! Packs are written under a temporary name by exactly one writer and renamed into `packs/`
//! when sealed, so a pack in `packs/` is always complete.
//!
//! Layout: `IGNPACK1`, the chunk blobs back to back, then the trailer: one 49-byte record per
//! chunk (id, offset, stored length, raw length, codec), the record count (u64 LE), SHA-256 of
//! the records, and `IGNPKEND` (FORMAT.md; pinned by the golden fixture store in tests/golden).

use crate::error::{Error, IoContext, Result};
use crate::fsutil::{fsync_dir, make_dir_durable};
use crate::id::ChunkId;
use sha2::{Digest, Sha256};
use std::fs::{self, File, OpenOptions};
use std::io::{BufWriter, Write};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

const PACK_MAGIC: &[u8; 8] = b"IGNPACK1";
const END_MAGIC: &[u8; 8] = b"IGNPKEND";
const RECORD_LEN: usize = 49;
const FOOTER_LEN: usize = 8 + 32 + 8;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Codec {
    Raw = 0,
    Zstd = 1,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PackEntry {
    pub id: ChunkId,
    pub offset: u64,
    pub stored_len: u32,
    pub raw_len: u32,
    pub codec: Codec,
}

/// `packs/ab/abcdef….pack`: two hex digits of fan-out keep directories small.
pub fn pack_path(packs_dir: &Path, name: &str) -> PathBuf {
    packs_dir.join(&name[..2]).join(format!("{name}.pack"))
}

pub struct PackWriter {
    name: String,
    tmp_path: PathBuf,
    file: BufWriter<File>,
    offset: u64,
    entries: Vec<PackEntry>,
}

impl PackWriter {
    pub fn create(tmp_dir: &Path, prefix: &str) -> Result<Self> {
        let name = hex::encode(rand::random::<[u8; 16]>());
        let tmp_path = tmp_dir.join(format!("{prefix}.{name}.pack.tmp"));
        let file = OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(&tmp_path)
            .at(&tmp_path)?;
        let mut file = BufWriter::with_capacity(1 << 20, file);
        file.write_all(PACK_MAGIC).at(&tmp_path)?;
        Ok(PackWriter {
            name,
            tmp_path,
            file,
            offset: PACK_MAGIC.len() as u64,
            entries: Vec::new(),
        })
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    pub fn size(&self) -> u64 {
        self.offset
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    pub fn add(&mut self, id: ChunkId, codec: Codec, raw_len: u32, data: &[u8]) -> Result<()> {
        self.file.write_all(data).at(&self.tmp_path)?;
        self.entries.push(PackEntry {
            id,
            offset: self.offset,
            stored_len: data.len() as u32,
            raw_len,
            codec,
        });
        self.offset += data.len() as u64;
        Ok(())
    }

    /// Writes the trailer, fsyncs and renames the pack into `packs_dir`.
    pub fn seal(mut self, packs_dir: &Path) -> Result<(String, Vec<PackEntry>)> {
        let records = encode_records(&self.entries);
        let mut footer = Vec::with_capacity(FOOTER_LEN);
        footer.extend_from_slice(&(self.entries.len() as u64).to_le_bytes());
        footer.extend_from_slice(&Sha256::digest(&records));
        footer.extend_from_slice(END_MAGIC);
        self.file.write_all(&records).at(&self.tmp_path)?;
        self.file.write_all(&footer).at(&self.tmp_path)?;
        let file = self
            .file
            .into_inner()
            .map_err(|e| e.into_error())
            .at(&self.tmp_path)?;
        file.sync_all().at(&self.tmp_path)?;
        let dest = pack_path(packs_dir, &self.name);
        let dir = dest.parent().expect("pack path has a parent");
        make_dir_durable(dir)?;
        fs::rename(&self.tmp_path, &dest).at(&dest)?;
        fsync_dir(dir)?;
        Ok((self.name, self.entries))
    }

    pub fn abort(self) {
        let _ = fs::remove_file(&self.tmp_path);
    }
}

fn encode_records(entries: &[PackEntry]) -> Vec<u8> {
    let mut out = Vec::with_capacity(entries.len() * RECORD_LEN);
    for e in entries {
        out.extend_from_slice(&e.id.0);
        out.extend_from_slice(&e.offset.to_le_bytes());
        out.extend_from_slice(&e.stored_len.to_le_bytes());
        out.extend_from_slice(&e.raw_len.to_le_bytes());
        out.push(e.codec as u8);
    }
    out
}

/// Reads and checks a sealed pack's trailer.
pub fn read_trailer(path: &Path) -> Result<Vec<PackEntry>> {
    let bad = |what: &str| Error::BadStore {
        path: path.to_path_buf(),
        what: format!("damaged pack: {what}"),
    };
    let file = File::open(path).at(path)?;
    let size = file.metadata().at(path)?.len();
    if size < (PACK_MAGIC.len() + FOOTER_LEN) as u64 {
        return Err(bad("too short"));
    }
    let mut footer = [0u8; FOOTER_LEN];
    file.read_exact_at(&mut footer, size - FOOTER_LEN as u64)
        .at(path)?;
    if &footer[40..] != END_MAGIC {
        return Err(bad("no trailer magic"));
    }
    let count = u64::from_le_bytes(footer[..8].try_into().unwrap());
    let records_len = count
        .checked_mul(RECORD_LEN as u64)
        .filter(|&n| n + (PACK_MAGIC.len() + FOOTER_LEN) as u64 <= size)
        .ok_or_else(|| bad("record count exceeds the file"))?;
    let records_at = size - FOOTER_LEN as u64 - records_len;
    let mut records = vec![0u8; records_len as usize];
    file.read_exact_at(&mut records, records_at).at(path)?;
    if Sha256::digest(&records)[..] != footer[8..40] {
        return Err(bad("trailer checksum mismatch"));
    }
    let mut entries = Vec::with_capacity(count as usize);
    for r in records.chunks_exact(RECORD_LEN) {
        let e = PackEntry {
            id: ChunkId(r[..32].try_into().unwrap()),
            offset: u64::from_le_bytes(r[32..40].try_into().unwrap()),
            stored_len: u32::from_le_bytes(r[40..44].try_into().unwrap()),
            raw_len: u32::from_le_bytes(r[44..48].try_into().unwrap()),
            codec: match r[48] {
                0 => Codec::Raw,
                1 => Codec::Zstd,
                _ => return Err(bad("unknown codec")),
            },
        };
        if e.offset < PACK_MAGIC.len() as u64 || e.offset + e.stored_len as u64 > records_at {
            return Err(bad("record points outside the data area"));
        }
        entries.push(e);
    }
    Ok(entries)
}

thread_local! {
    /// A decompression context per thread: making one costs more than a small chunk.
    static DECOMPRESSOR: std::cell::RefCell<std::io::Result<zstd::bulk::Decompressor<'static>>> =
        std::cell::RefCell::new(zstd::bulk::Decompressor::new());
}

/// Turns a stored blob back into the chunk's bytes, checking it hashes to its id.
pub fn decode(entry: &PackEntry, stored: &[u8]) -> Result<Vec<u8>> {
    let corrupt = |what: String| Error::CorruptChunk {
        id: entry.id.to_hex(),
        what,
    };
    let data = match entry.codec {
        Codec::Raw => stored.to_vec(),
        Codec::Zstd => DECOMPRESSOR
            .with(|d| match &mut *d.borrow_mut() {
                Ok(d) => d.decompress(stored, entry.raw_len as usize),
                Err(e) => Err(std::io::Error::new(e.kind(), e.to_string())),
            })
            .map_err(|e| corrupt(format!("does not decompress: {e}")))?,
    };
    if data.len() != entry.raw_len as usize {
        return Err(corrupt(format!(
            "{} bytes, expected {}",
            data.len(),
            entry.raw_len
        )));
    }
    if ChunkId::of(&data) != entry.id {
        return Err(corrupt("content does not hash to its id".into()));
    }
    Ok(data)
}

pub fn read_stored(file: &File, path: &Path, entry: &PackEntry) -> Result<Vec<u8>> {
    let mut buf = vec![0u8; entry.stored_len as usize];
    file.read_exact_at(&mut buf, entry.offset).at(path)?;
    Ok(buf)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn write_seal_read_back() {
        let dir = tempfile::tempdir().unwrap();
        let tmp = dir.path().join("tmp");
        let packs = dir.path().join("packs");
        fs::create_dir_all(&tmp).unwrap();
        fs::create_dir_all(&packs).unwrap();
        let mut w = PackWriter::create(&tmp, "w").unwrap();
        let a = b"hello world".to_vec();
        let b = vec![7u8; 100_000];
        let bz = zstd::bulk::compress(&b, 3).unwrap();
        w.add(ChunkId::of(&a), Codec::Raw, a.len() as u32, &a)
            .unwrap();
        w.add(ChunkId::of(&b), Codec::Zstd, b.len() as u32, &bz)
            .unwrap();
        let (name, entries) = w.seal(&packs).unwrap();
        let path = pack_path(&packs, &name);
        let read = read_trailer(&path).unwrap();
        assert_eq!(read, entries);
        let f = File::open(&path).unwrap();
        assert_eq!(
            decode(&read[0], &read_stored(&f, &path, &read[0]).unwrap()).unwrap(),
            a
        );
        assert_eq!(
            decode(&read[1], &read_stored(&f, &path, &read[1]).unwrap()).unwrap(),
            b
        );
    }

    #[test]
    fn damaged_trailer_is_an_error() {
        let dir = tempfile::tempdir().unwrap();
        let tmp = dir.path().to_path_buf();
        let mut w = PackWriter::create(&tmp, "w").unwrap();
        w.add(ChunkId::of(b"x"), Codec::Raw, 1, b"x").unwrap();
        let (name, _) = w.seal(&tmp).unwrap();
        let path = pack_path(&tmp, &name);
        let mut bytes = fs::read(&path).unwrap();
        let n = bytes.len();
        bytes[n - 60] ^= 1;
        fs::write(&path, &bytes).unwrap();
        assert!(read_trailer(&path).is_err());
        fs::write(&path, &bytes[..10]).unwrap();
        assert!(read_trailer(&path).is_err());
    }

    #[test]
    fn corrupt_blob_is_detected() {
        let data = b"some chunk".to_vec();
        let e = PackEntry {
            id: ChunkId::of(&data),
            offset: 8,
            stored_len: data.len() as u32,
            raw_len: data.len() as u32,
            codec: Codec::Raw,
        };
        assert!(decode(&e, b"some chunK").is_err());
        let z = PackEntry {
            codec: Codec::Zstd,
            ..e
        };
        assert!(decode(&z, b"not zstd at all").is_err());
    }
}
