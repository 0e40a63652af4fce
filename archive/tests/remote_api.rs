//! The chunk API that remote capture and install use: ask which chunks are missing, upload
//! them (checked against their ids), commit a snapshot that names them.

mod common;

use common::*;
use ignite_archive::snapshot::{Entry, EntryKind, Extent};
use ignite_archive::writer::{Draft, DraftContent, Writer};
use ignite_archive::ChunkId;

fn file_entry(path: &str, data: &[u8]) -> Entry {
    Entry {
        path: path.as_bytes().to_vec(),
        kind: EntryKind::File {
            size: data.len() as u64,
            extents: vec![Extent {
                offset: 0,
                len: data.len() as u32,
                id: ChunkId::of(data),
            }],
        },
        mode: 0o644,
        uid: 0,
        gid: 0,
        mtime: 0,
        mtime_nsec: 0,
        xattrs: vec![],
        source: None,
    }
}

fn draft(entries: Vec<Entry>) -> Draft {
    Draft {
        name: "remote".into(),
        labels: Default::default(),
        parent: None,
        content: DraftContent::Tree(entries),
        stats: Default::default(),
    }
}

#[test]
fn missing_upload_commit_and_read_back() {
    let t = tempfile::tempdir().unwrap();
    let store = new_store(t.path());
    let (a, b) = (random_bytes(100_000, 1), random_bytes(50_000, 2));
    let ids = [ChunkId::of(&a), ChunkId::of(&b)];
    assert_eq!(store.missing(&ids).unwrap(), ids.to_vec());
    let mut zc = zstd::bulk::Compressor::new(3).unwrap();
    let w = Writer::new(&store).unwrap();
    // A chunk that does not hash to its claimed id is refused.
    assert!(w.upload(ids[0], &b, &mut zc).is_err());
    w.upload(ids[0], &a, &mut zc).unwrap();
    // Committing a tree that names a chunk never uploaded is refused...
    let err = w
        .commit_uploaded(draft(vec![file_entry("a", &a), file_entry("b", &b)]))
        .unwrap_err();
    assert!(err.to_string().contains("lacks"), "{err}");
    // The failed session's upload was kept: only b is still missing.
    assert_eq!(store.missing(&ids).unwrap(), vec![ids[1]]);
    // A tree that would write outside its target is refused too.
    let w = Writer::new(&store).unwrap();
    w.upload(ids[1], &b, &mut zc).unwrap();
    assert!(w
        .commit_uploaded(draft(vec![file_entry("../b", &b)]))
        .is_err());
    let w = Writer::new(&store).unwrap();
    let m = w
        .commit_uploaded(draft(vec![file_entry("a", &a), file_entry("b", &b)]))
        .unwrap();
    assert!(store.missing(&ids).unwrap().is_empty());
    assert_eq!(store.read_chunk(&ids[1]).unwrap(), b);
    let tree = store.load_tree(&store.resolve(&m.id).unwrap()).unwrap();
    assert_eq!(tree.len(), 2);
    assert!(ignite_archive::verify::verify(&store, 1.0).unwrap().ok());
}

#[test]
fn a_streamed_reply_is_as_long_as_the_store_says_and_decodes() {
    use ignite_archive::chunk_stream::{parse_request, Decoder, Encoder, Limits};
    let t = tempfile::tempdir().unwrap();
    let store = new_store(t.path());
    let chunks = [
        random_bytes(70_000, 1),
        b"abc".repeat(20_000),
        vec![5u8; 10],
    ];
    let mut zc = zstd::bulk::Compressor::new(3).unwrap();
    let w = Writer::new(&store).unwrap();
    let ids: Vec<ChunkId> = chunks.iter().map(|c| w.put(c, &mut zc).unwrap()).collect();
    drop(w);
    // The server: parse the request, check the reply's size, stream the chunks as stored.
    let asked = parse_request(&ignite_archive::chunk_stream::encode_request(&ids), 16).unwrap();
    let len = store.reply_len(&asked).unwrap();
    let mut enc = Encoder::new(Vec::new());
    for id in &asked {
        let (entry, stored) = store.read_chunk_stored(id).unwrap();
        enc.push(&entry, &stored).unwrap();
    }
    let body = enc.finish().unwrap();
    assert_eq!(len, body.len() as u64);
    assert!(
        len < 90_000,
        "the compressible chunk went compressed: {len}"
    );
    // The client: chunk by chunk, each checked.
    let got: Vec<Vec<u8>> = Decoder::new(&body[..], &ids, Limits::default())
        .collect::<Result<_, _>>()
        .unwrap();
    assert_eq!(got, chunks);
    let unknown = ChunkId::of(b"never stored");
    assert!(matches!(
        store.reply_len(&[ids[0], unknown]),
        Err(ignite_archive::Error::MissingChunk { .. })
    ));
}
