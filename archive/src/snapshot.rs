//! Snapshots: an immutable manifest (`snapshots/<id>.json`) plus its data file
//! (`snapshots/<id>.data`): the entries of a file tree, or the chunk list of a block image.
//! Also what makes a tree safe to export (`check_tree`) and a valid series name.
//!
//! The types below ARE the on-disk format: a tree is postcard of `Vec<Entry>`, which writes
//! fields in declaration order and enum variants by index, without names. Reordering,
//! adding or removing a field or variant silently changes what existing stores decode to.
//! The golden fixture store (`tests/golden`, checked by `tests/golden.rs`) pins format 1;
//! see `FORMAT.md` before touching anything here.

use crate::error::{Error, Result};
use crate::id::ChunkId;
use crate::paths::{normalize, SymlinkGuard};
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, HashSet};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SnapshotKind {
    Tree,
    Image,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Manifest {
    pub id: String,
    pub name: String,
    pub kind: SnapshotKind,
    /// Creation time, seconds since the epoch (UTC).
    pub time: i64,
    /// Sub-second part of `time`: several snapshots a second must still sort in order.
    #[serde(default)]
    pub time_nsec: u32,
    pub labels: BTreeMap<String, String>,
    pub parent: Option<String>,
    /// SHA-256 of the data file, checked on every load.
    pub data_sha256: String,
    pub data_len: u64,
    /// For images: total size and chunk size.
    pub image_size: Option<u64>,
    pub block_size: Option<u32>,
    pub stats: SnapshotStats,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct SnapshotStats {
    /// Bytes of file content (trees) or of the image (images), holes and zeros included.
    pub logical_bytes: u64,
    pub zero_bytes: u64,
    pub entries: u64,
    pub chunks: u64,
    /// Chunks and compressed bytes this snapshot added to the store when it was made.
    pub new_chunks: u64,
    pub new_stored_bytes: u64,
    /// Bytes read from the source (less than logical when a parent made reading unnecessary).
    pub read_bytes: u64,
    pub seconds: f64,
}

/// One file system object in a tree snapshot. Paths are raw bytes, relative, `/`-separated;
/// the empty path is the root of the tree.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Entry {
    #[serde(with = "serde_bytes")]
    pub path: Vec<u8>,
    pub kind: EntryKind,
    /// Permission bits including setuid/setgid/sticky (`mode & 0o7777`).
    pub mode: u32,
    pub uid: u32,
    pub gid: u32,
    pub mtime: i64,
    pub mtime_nsec: u32,
    pub xattrs: Vec<Xattr>,
    /// Where the entry came from when imported from a directory; lets the next import of the
    /// same directory skip unchanged files (size, mtime, ctime, inode), as restic does.
    pub source: Option<SourceStamp>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Xattr {
    #[serde(with = "serde_bytes")]
    pub name: Vec<u8>,
    #[serde(with = "serde_bytes")]
    pub value: Vec<u8>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct SourceStamp {
    pub dev: u64,
    pub ino: u64,
    pub ctime: i64,
    pub ctime_nsec: u32,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum EntryKind {
    Dir,
    /// Content is `size` bytes; each extent is a data chunk at an offset. Gaps between extents
    /// are zeros (holes, or all-zero chunks never stored): restored as holes.
    File {
        size: u64,
        extents: Vec<Extent>,
    },
    Symlink {
        #[serde(with = "serde_bytes")]
        target: Vec<u8>,
    },
    /// Another name for an earlier regular file of the same snapshot.
    HardLink {
        #[serde(with = "serde_bytes")]
        target: Vec<u8>,
    },
    CharDevice {
        major: u32,
        minor: u32,
    },
    BlockDevice {
        major: u32,
        minor: u32,
    },
    Fifo,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Extent {
    pub offset: u64,
    pub len: u32,
    pub id: ChunkId,
}

impl Entry {
    pub fn path_str(&self) -> String {
        String::from_utf8_lossy(&self.path).into_owned()
    }
}

/// Snapshot names select series on the command line (`NAME@ID`): keep them printable.
pub fn validate_name(name: &str) -> Result<()> {
    let ok = !name.is_empty()
        && name.len() <= 128
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "-_.:+".contains(c));
    if ok {
        Ok(())
    } else {
        Err(Error::Invalid(format!(
            "snapshot name {name:?}: use 1-128 letters, digits and - _ . : + (no @, which selects an id)"
        )))
    }
}

/// Checks the whole tree before anything is written: hostile input changes nothing.
pub fn check_tree(entries: &[Entry]) -> Result<()> {
    let mut guard = SymlinkGuard::default();
    let mut paths: HashSet<&[u8]> = HashSet::with_capacity(entries.len());
    let mut files: HashSet<&[u8]> = HashSet::new();
    let refuse = |e: &Entry, what: &str| Error::UnsafePath {
        path: e.path_str(),
        what: what.into(),
    };
    for e in entries {
        if normalize(&e.path)? != e.path {
            return Err(refuse(e, "is not in normal form"));
        }
        // A second entry of the same path would replace the first while exporting, e.g. a
        // file by a symlink to /etc/shadow that the file's content and mode then go through.
        if !paths.insert(&e.path) {
            return Err(refuse(e, "appears twice in the tree"));
        }
        guard.check(&e.path)?;
        match &e.kind {
            EntryKind::HardLink { target } if !files.contains(target.as_slice()) => {
                return Err(refuse(
                    e,
                    "hard link to something other than an earlier file of the tree",
                ));
            }
            EntryKind::File { size, extents } => {
                check_extents(e, *size, extents)?;
                files.insert(&e.path);
            }
            EntryKind::Symlink { .. } => guard.add(&e.path),
            _ => {}
        }
        if e.path.is_empty() && e.kind != EntryKind::Dir {
            return Err(refuse(e, "the tree root is not a directory"));
        }
    }
    Ok(())
}

/// Extents lie inside the file, in order, without overlapping: an export never writes
/// beyond a file's size (a hostile tree could otherwise fill the target's disk).
fn check_extents(e: &Entry, size: u64, extents: &[Extent]) -> Result<()> {
    let mut end = 0u64;
    for x in extents {
        let x_end = x.offset.checked_add(u64::from(x.len));
        if x.len == 0 || x.offset < end || x_end.is_none_or(|n| n > size) {
            return Err(Error::Invalid(format!(
                "tree entry {:?}: extent of {} bytes at {} lies outside its {size} bytes or \
                 overlaps the one before",
                e.path_str(),
                x.len,
                x.offset
            )));
        }
        end = x_end.expect("checked");
    }
    Ok(())
}

/// A snapshot before it is committed: what an import hands to `Writer::commit`, or, encoded
/// (`encode`), what a remote capture sends to its server.
#[derive(Debug, Clone, PartialEq)]
pub struct Draft {
    pub name: String,
    pub labels: BTreeMap<String, String>,
    pub parent: Option<String>,
    pub content: DraftContent,
    pub stats: SnapshotStats,
}

#[derive(Debug, Clone, PartialEq)]
pub enum DraftContent {
    Tree(Vec<Entry>),
    Image {
        size: u64,
        block_size: u32,
        blocks: Vec<Option<ChunkId>>,
    },
}

/// A draft's fields besides its content, as JSON.
#[derive(Serialize, Deserialize)]
struct DraftHeader {
    name: String,
    labels: BTreeMap<String, String>,
    parent: Option<String>,
    kind: SnapshotKind,
    image_size: Option<u64>,
    block_size: Option<u32>,
    stats: SnapshotStats,
}

const DRAFT_MAGIC: &[u8; 8] = b"IGNDRFT1";
const MAX_DRAFT_HEADER: usize = 1 << 20;

impl Draft {
    /// `IGNDRFT1`, the header's length (u32 LE), the header (JSON: name, labels, parent,
    /// kind, image size and block size, stats), then the content as a snapshot's data file
    /// holds it.
    pub fn encode(&self) -> Result<Vec<u8>> {
        let (kind, image_size, block_size, data) = match &self.content {
            DraftContent::Tree(entries) => (SnapshotKind::Tree, None, None, encode_tree(entries)?),
            DraftContent::Image {
                size,
                block_size,
                blocks,
            } => (
                SnapshotKind::Image,
                Some(*size),
                Some(*block_size),
                encode_image(blocks)?,
            ),
        };
        let header = serde_json::to_vec(&DraftHeader {
            name: self.name.clone(),
            labels: self.labels.clone(),
            parent: self.parent.clone(),
            kind,
            image_size,
            block_size,
            stats: self.stats.clone(),
        })
        .expect("draft header serializes");
        let mut out = DRAFT_MAGIC.to_vec();
        out.extend_from_slice(&(header.len() as u32).to_le_bytes());
        out.extend_from_slice(&header);
        out.extend_from_slice(&data);
        Ok(out)
    }

    /// A draft sent by a client; its content is decoded with the same limits as a snapshot's.
    /// (Whether it may be committed is `Writer::commit_uploaded`'s to say.)
    pub fn decode(bytes: &[u8]) -> Result<Draft> {
        let bad = |what: String| Error::Invalid(format!("snapshot draft: {what}"));
        let rest = bytes
            .strip_prefix(DRAFT_MAGIC)
            .ok_or_else(|| bad("does not start with IGNDRFT1".into()))?;
        let len = rest
            .get(..4)
            .map(|b| u32::from_le_bytes(b.try_into().expect("4 bytes")) as usize)
            .ok_or_else(|| bad("too short".into()))?;
        if len > MAX_DRAFT_HEADER || rest.len() < 4 + len {
            return Err(bad(format!("header of {len} bytes does not fit")));
        }
        let h: DraftHeader = serde_json::from_slice(&rest[4..4 + len])
            .map_err(|e| bad(format!("header does not parse: {e}")))?;
        let data = &rest[4 + len..];
        let content = match h.kind {
            SnapshotKind::Tree => DraftContent::Tree(decode_tree("draft", data)?),
            SnapshotKind::Image => {
                let (Some(size), Some(block_size)) = (h.image_size, h.block_size) else {
                    return Err(bad("an image without its size and block size".into()));
                };
                if block_size == 0 {
                    return Err(bad("block size 0".into()));
                }
                let n = size.div_ceil(block_size.into());
                let blocks = decode_image("draft", data, n)?;
                DraftContent::Image {
                    size,
                    block_size,
                    blocks,
                }
            }
        };
        Ok(Draft {
            name: h.name,
            labels: h.labels,
            parent: h.parent,
            content,
            stats: h.stats,
        })
    }
}

/// Snapshot ids: 16 hex digits, random. A unique prefix selects a snapshot, as in restic.
pub fn new_snapshot_id() -> String {
    hex::encode(rand::random::<[u8; 8]>())
}

// Format 1 (FORMAT.md), pinned by the golden fixture store in tests/golden.
const TREE_MAGIC: &[u8; 8] = b"IGNTREE1";
const IMAGE_MAGIC: &[u8; 8] = b"IGNIMGE1";

pub fn encode_tree(entries: &[Entry]) -> Result<Vec<u8>> {
    let body = postcard::to_stdvec(entries)
        .map_err(|e| Error::Invalid(format!("cannot encode tree: {e}")))?;
    let mut out = TREE_MAGIC.to_vec();
    out.extend(zstd::bulk::compress(&body, 3).map_err(|e| Error::Invalid(e.to_string()))?);
    Ok(out)
}

/// Largest tree decoded (about eight million entries): a few bytes of zstd can claim
/// gigabytes, and a tree may come from a remote server or client.
pub const MAX_TREE_BYTES: u64 = 1 << 30;

/// Decompresses one zstd stream of at most `max` bytes; None if it holds more.
fn unzstd(body: &[u8], max: u64) -> std::io::Result<Option<Vec<u8>>> {
    use std::io::Read;
    let mut raw = Vec::new();
    zstd::stream::read::Decoder::with_buffer(body)?
        .take(max + 1)
        .read_to_end(&mut raw)?;
    Ok((raw.len() as u64 <= max).then_some(raw))
}

pub fn decode_tree(id: &str, data: &[u8]) -> Result<Vec<Entry>> {
    decode_tree_capped(id, data, MAX_TREE_BYTES)
}

fn decode_tree_capped(id: &str, data: &[u8], max: u64) -> Result<Vec<Entry>> {
    let bad = |what: String| Error::BadSnapshot {
        id: id.to_string(),
        what,
    };
    let body = data
        .strip_prefix(TREE_MAGIC)
        .ok_or_else(|| bad("data file is not a tree".into()))?;
    let raw = unzstd(body, max)
        .map_err(|e| bad(format!("tree: {e}")))?
        .ok_or_else(|| {
            bad(format!(
                "tree is larger than {max} bytes decoded; refusing it"
            ))
        })?;
    let (entries, rest) =
        postcard::take_from_bytes(&raw).map_err(|e| bad(format!("tree does not decode: {e}")))?;
    if !rest.is_empty() {
        return Err(bad(format!("{} bytes after the tree", rest.len())));
    }
    Ok(entries)
}

/// A block image's chunk list: one id per block, `None` for an all-zero block.
pub fn encode_image(blocks: &[Option<ChunkId>]) -> Result<Vec<u8>> {
    let mut body = Vec::with_capacity(blocks.len() * 32);
    for b in blocks {
        body.extend_from_slice(&b.map(|id| id.0).unwrap_or([0u8; 32]));
    }
    let mut out = IMAGE_MAGIC.to_vec();
    out.extend(zstd::bulk::compress(&body, 3).map_err(|e| Error::Invalid(e.to_string()))?);
    Ok(out)
}

/// Most blocks an image index may list (32 bytes each, 4 GiB): 8 TiB at 64 KiB blocks.
pub const MAX_IMAGE_BLOCKS: u64 = 1 << 27;

/// The chunk list of an image of `blocks` blocks.
pub fn decode_image(id: &str, data: &[u8], blocks: u64) -> Result<Vec<Option<ChunkId>>> {
    let bad = |what: String| Error::BadSnapshot {
        id: id.to_string(),
        what,
    };
    if blocks > MAX_IMAGE_BLOCKS {
        return Err(bad(format!(
            "{blocks} blocks is more than an image may have ({MAX_IMAGE_BLOCKS})"
        )));
    }
    let body = data
        .strip_prefix(IMAGE_MAGIC)
        .ok_or_else(|| bad("data file is not an image index".into()))?;
    let want = blocks * 32;
    let raw = unzstd(body, want).map_err(|e| bad(format!("image index: {e}")))?;
    if raw.as_ref().is_none_or(|r| r.len() as u64 != want) {
        return Err(bad("chunk list length does not match the image size".into()));
    }
    let raw = raw.expect("checked");
    Ok(raw
        .chunks_exact(32)
        .map(|c| {
            let id: [u8; 32] = c.try_into().unwrap();
            (id != [0u8; 32]).then_some(ChunkId(id))
        })
        .collect())
}

/// Every chunk a snapshot needs.
pub fn tree_chunks(entries: &[Entry]) -> impl Iterator<Item = ChunkId> + '_ {
    entries
        .iter()
        .flat_map(|e| match &e.kind {
            EntryKind::File { extents, .. } => extents.as_slice(),
            _ => &[],
        })
        .map(|x| x.id)
}

/// Bytes of file content held in chunks (the rest of the files' sizes are holes and zeros).
pub(crate) fn extent_bytes(entries: &[Entry]) -> u64 {
    entries
        .iter()
        .map(|e| match &e.kind {
            EntryKind::File { extents, .. } => extents.iter().map(|x| x.len as u64).sum(),
            _ => 0,
        })
        .sum()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tree_round_trip() {
        let entries = vec![Entry {
            path: b"etc/\xffbad-utf8".to_vec(),
            kind: EntryKind::File {
                size: 10,
                extents: vec![Extent {
                    offset: 0,
                    len: 10,
                    id: ChunkId::of(b"0123456789"),
                }],
            },
            mode: 0o644,
            uid: 0,
            gid: 0,
            mtime: 1,
            mtime_nsec: 2,
            xattrs: vec![Xattr {
                name: b"security.capability".to_vec(),
                value: vec![1, 2, 3],
            }],
            source: None,
        }];
        let enc = encode_tree(&entries).unwrap();
        assert_eq!(decode_tree("t", &enc).unwrap(), entries);
        assert!(decode_tree("t", &enc[..enc.len() - 3]).is_err());
        assert!(decode_tree("t", b"garbage").is_err());
    }

    #[test]
    fn trees_decompressing_past_the_cap_or_with_trailing_bytes_are_refused() {
        // 2 MiB of zeros in a few hundred bytes: postcard reads an empty tree, then garbage.
        let bomb = [
            TREE_MAGIC.as_slice(),
            &zstd::bulk::compress(&vec![0u8; 2 << 20], 19).unwrap(),
        ]
        .concat();
        assert!(bomb.len() < 1024);
        let e = decode_tree_capped("t", &bomb, 1 << 20).unwrap_err();
        assert!(e.to_string().contains("larger than 1048576 bytes"), "{e}");
        let e = decode_tree("t", &bomb).unwrap_err();
        assert!(e.to_string().contains("bytes after the tree"), "{e}");
        let e = decode_image("i", &[IMAGE_MAGIC.as_slice(), &bomb[8..]].concat(), 2).unwrap_err();
        assert!(
            e.to_string().contains("does not match the image size"),
            "{e}"
        );
    }

    #[test]
    fn image_round_trip() {
        let blocks = vec![Some(ChunkId::of(b"a")), None, Some(ChunkId::of(b"b"))];
        let enc = encode_image(&blocks).unwrap();
        assert_eq!(decode_image("i", &enc, 3).unwrap(), blocks);
        assert!(decode_image("i", &enc, 2).is_err());
        assert!(decode_image("i", &enc, 4).is_err());
    }
}
