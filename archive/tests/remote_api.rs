//! The chunk API that remote capture and install use: ask which chunks are missing, upload
//! them (checked against their ids), commit a snapshot that names them. A capture runs the
//! same import code as a local one, into a sink that talks to a server's write session
//! through the wire formats (here in memory, as a capture agent does over HTTP).

mod common;

use common::*;
use ignite_archive::chunk_stream::{
    decode_upload, encode_request, encode_upload, parse_request, Limits,
};
use ignite_archive::writer::compress;
use ignite_archive::{
    ChunkId, ChunkSink, Draft, DraftContent, Entry, EntryKind, Error, Extent, ImageSource,
    Manifest, Store, StoreConfig, StoredChunk, Writer,
};
use std::fs;
use std::path::Path;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;

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
    let forged = StoredChunk {
        id: ids[0],
        ..compress(ids[1], &b, &mut zc).unwrap()
    };
    let e = w.upload(&[forged]).unwrap_err();
    assert!(e.to_string().contains("uploaded chunk refused"), "{e}");
    w.upload(&[compress(ids[0], &a, &mut zc).unwrap()]).unwrap();
    // Committing a tree that names a chunk never uploaded is refused...
    let err = w
        .commit_uploaded(draft(vec![file_entry("a", &a), file_entry("b", &b)]))
        .unwrap_err();
    assert!(err.to_string().contains("lacks"), "{err}");
    // The failed session's upload was kept: only b is still missing.
    assert_eq!(store.missing(&ids).unwrap(), vec![ids[1]]);
    // A tree that would write outside its target is refused too.
    let w = Writer::new(&store).unwrap();
    w.upload(&[compress(ids[1], &b, &mut zc).unwrap()]).unwrap();
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

/// A capture agent's sink, in memory: every call goes through the wire formats to a
/// server's write session, as it would over HTTP.
struct Remote {
    server: Writer<'static>,
    config: StoreConfig,
    /// The connection drops at this put.
    drop_at: Option<usize>,
    puts: AtomicUsize,
    sent_chunks: AtomicU64,
    sent_bytes: AtomicU64,
}

impl Remote {
    fn new(store: &Arc<Store>) -> Remote {
        Remote {
            server: Writer::shared(store.clone()).unwrap(),
            config: store.config().clone(),
            drop_at: None,
            puts: AtomicUsize::new(0),
            sent_chunks: AtomicU64::new(0),
            sent_bytes: AtomicU64::new(0),
        }
    }

    /// The end of a capture: the client sends its draft, the server commits it.
    fn commit(self, draft: &Draft) -> ignite_archive::Result<Manifest> {
        let sent = draft.encode()?;
        self.server.commit_uploaded(Draft::decode(&sent)?)
    }
}

impl ChunkSink for Remote {
    fn config(&self) -> &StoreConfig {
        &self.config
    }

    fn missing(&self, ids: &[ChunkId]) -> ignite_archive::Result<Vec<ChunkId>> {
        let asked = parse_request(&encode_request(ids), ignite_archive::BATCH_CHUNKS)?;
        self.server.missing(&asked)
    }

    fn put(&self, chunks: &[StoredChunk]) -> ignite_archive::Result<()> {
        if self.drop_at == Some(self.puts.fetch_add(1, Ordering::SeqCst)) {
            return Err(Error::Invalid("connection reset by peer".into()));
        }
        let body = encode_upload(chunks);
        let got = decode_upload(&body, ignite_archive::BATCH_CHUNKS, Limits::default())?;
        self.server.upload(&got)?;
        self.sent_chunks
            .fetch_add(got.len() as u64, Ordering::Relaxed);
        self.sent_bytes
            .fetch_add(body.len() as u64, Ordering::Relaxed);
        Ok(())
    }
}

fn shared_store(dir: &Path, pack_size: u64) -> Arc<Store> {
    let cfg = StoreConfig {
        pack_size,
        ..Default::default()
    };
    Arc::new(Store::init(&dir.join("store"), cfg).unwrap())
}

fn export_matches(store: &Store, m: &Manifest, src: &Path, out: &Path) {
    ignite_archive::export_dir(store, m, out, &progress()).unwrap();
    assert_same_tree(src, out);
}

#[test]
fn a_remote_capture_is_exact_and_sends_only_what_changed() {
    let t = tempfile::tempdir().unwrap();
    let store = shared_store(t.path(), 16 << 20);
    let src = t.path().join("src");
    build_sample_tree(&src);
    let sink = Remote::new(&store);
    let draft =
        ignite_archive::import_dir_into(&sink, &src, &opts("web1"), None, &progress()).unwrap();
    let first_sent = sink.sent_bytes.load(Ordering::Relaxed);
    let m1 = sink.commit(&draft).unwrap();
    assert!(
        first_sent > 3 << 20,
        "the random file went up: {first_sent}"
    );
    export_matches(&store, &m1, &src, &t.path().join("out1"));

    // Next night: one file changed. The agent fetches the parent's manifest and tree from
    // the server; unchanged files are neither read nor sent.
    fs::write(src.join("etc/hostname"), b"web1-renamed\n").unwrap();
    let parent_tree = store.load_tree(&m1).unwrap();
    let sink = Remote::new(&store);
    let parent = Some((&m1, parent_tree.as_slice()));
    let draft =
        ignite_archive::import_dir_into(&sink, &src, &opts("web1"), parent, &progress()).unwrap();
    assert_eq!(draft.parent.as_deref(), Some(m1.id.as_str()));
    assert_eq!(draft.stats.read_bytes, 13, "only the changed file is read");
    assert_eq!(sink.sent_chunks.load(Ordering::Relaxed), 1);
    let m2 = sink.commit(&draft).unwrap();
    assert_eq!(m2.stats.new_chunks, 1);
    export_matches(&store, &m2, &src, &t.path().join("out2"));
    let r = ignite_archive::verify::verify(&store, 1.0).unwrap();
    assert!(r.ok(), "{:?}", r.problems);
}

#[test]
fn an_interrupted_capture_resumes_sending_only_what_is_missing() {
    let t = tempfile::tempdir().unwrap();
    let store = shared_store(t.path(), 1 << 20);
    let src = t.path().join("src");
    fs::create_dir(&src).unwrap();
    for i in 0..24 {
        // 24 MiB: several batches of at most 4 MiB.
        let data = random_bytes(1 << 20, 2 * i + 1);
        fs::write(src.join(format!("f{i:02}")), data).unwrap();
    }
    // The connection drops at the 4th upload; the server's session ends without a commit.
    let mut sink = Remote::new(&store);
    sink.drop_at = Some(3);
    let e =
        ignite_archive::import_dir_into(&sink, &src, &opts("db"), None, &progress()).unwrap_err();
    assert!(e.to_string().contains("connection reset"), "{e}");
    let sent_before = sink.sent_chunks.load(Ordering::Relaxed);
    assert!(sent_before > 0);
    drop(sink);
    // The agent starts over: what the server stored is not sent again.
    let sink = Remote::new(&store);
    let draft =
        ignite_archive::import_dir_into(&sink, &src, &opts("db"), None, &progress()).unwrap();
    let sent_after = sink.sent_chunks.load(Ordering::Relaxed);
    let DraftContent::Tree(entries) = &draft.content else {
        panic!("a tree");
    };
    let chunks = ignite_archive::tree_chunks(entries)
        .collect::<std::collections::HashSet<_>>()
        .len() as u64;
    assert_eq!(sent_before + sent_after, chunks, "each chunk went up once");
    let m = sink.commit(&draft).unwrap();
    export_matches(&store, &m, &src, &t.path().join("out"));
    let r = ignite_archive::verify::verify(&store, 1.0).unwrap();
    assert!(r.ok(), "{:?}", r.problems);
}

#[test]
fn concurrent_captures_into_one_store_beside_gc_all_commit_exactly() {
    let t = tempfile::tempdir().unwrap();
    let store = shared_store(t.path(), 1 << 20);
    let srcs: Vec<_> = (0..3u64)
        .map(|c| {
            let d = t.path().join(format!("client{c}"));
            fs::create_dir(&d).unwrap();
            for i in 0..12 {
                // Half the files are the same on every client.
                let seed = if i % 2 == 0 {
                    2 * i + 1
                } else {
                    1000 * (c + 1) + 2 * i + 1
                };
                fs::write(d.join(format!("f{i:02}")), random_bytes(150_000, seed)).unwrap();
            }
            d
        })
        .collect();
    let manifests: Vec<Manifest> = std::thread::scope(|s| {
        let captures: Vec<_> = srcs
            .iter()
            .enumerate()
            .map(|(c, src)| {
                let store = &store;
                s.spawn(move || {
                    let sink = Remote::new(store);
                    let o = opts(&format!("client{c}"));
                    let draft =
                        ignite_archive::import_dir_into(&sink, src, &o, None, &progress()).unwrap();
                    sink.commit(&draft).unwrap()
                })
            })
            .collect();
        let mut gcs = 0;
        while captures.iter().any(|h| !h.is_finished()) || gcs < 2 {
            ignite_archive::gc::gc(&store).unwrap();
            gcs += 1;
        }
        captures.into_iter().map(|h| h.join().unwrap()).collect()
    });
    ignite_archive::gc::gc(&store).unwrap();
    let r = ignite_archive::verify::verify(&store, 1.0).unwrap();
    assert!(r.ok(), "{:?}", r.problems);
    for (i, (m, src)) in manifests.iter().zip(&srcs).enumerate() {
        export_matches(&store, m, src, &t.path().join(format!("out{i}")));
    }
    // Nothing but what the snapshots name is left.
    let named: std::collections::HashSet<ChunkId> = manifests
        .iter()
        .flat_map(|m| store.snapshot_chunks(m).unwrap())
        .collect();
    assert_eq!(
        ignite_archive::stats::stats(&store).unwrap().chunks,
        named.len()
    );
}

#[test]
fn a_remote_image_capture_reads_and_sends_only_written_ranges() {
    let t = tempfile::tempdir().unwrap();
    let store = shared_store(t.path(), 16 << 20);
    let img = t.path().join("disk.img");
    let f = fs::File::create(&img).unwrap();
    f.set_len(64 << 20).unwrap();
    use std::os::unix::fs::FileExt;
    f.write_all_at(&random_bytes(3 << 20, 1), 0).unwrap();
    let src = ImageSource {
        reader: &ignite_archive::FileImage::open(&img).unwrap(),
        changed: None,
    };
    let sink = Remote::new(&store);
    let draft =
        ignite_archive::import_image_into(&sink, src, &opts("vm1"), None, &progress()).unwrap();
    let m1 = sink.commit(&draft).unwrap();
    // The guest writes two places; the monitor's change log has the byte ranges.
    f.write_all_at(b"new boot sector", 0).unwrap();
    f.write_all_at(&random_bytes(100_000, 2), 40 << 20).unwrap();
    let changed = [(0u64, 15u64), (40 << 20, 100_000)];
    let blocks = store.load_image(&m1).unwrap();
    let src = ImageSource {
        reader: &ignite_archive::FileImage::open(&img).unwrap(),
        changed: Some(&changed),
    };
    let sink = Remote::new(&store);
    let parent = Some((&m1, blocks.as_slice()));
    let draft =
        ignite_archive::import_image_into(&sink, src, &opts("vm1"), parent, &progress()).unwrap();
    let bs = u64::from(store.config().block_size);
    // Block 0, and the two blocks 40 MiB + 100 KB spans.
    assert_eq!(draft.stats.read_bytes, 3 * bs);
    assert_eq!(sink.sent_chunks.load(Ordering::Relaxed), 3);
    let m2 = sink.commit(&draft).unwrap();
    let out = t.path().join("out.img");
    ignite_archive::export_image(&store, &m2, &out, &progress()).unwrap();
    sh(&format!("cmp {} {}", img.display(), out.display()));
}

#[test]
fn a_server_refuses_what_a_hostile_client_commits() {
    let t = tempfile::tempdir().unwrap();
    let store = shared_store(t.path(), 16 << 20);
    let data = random_bytes(10_000, 1);
    let upload = |d: &Draft| {
        let s = Remote::new(&store);
        s.put(&[compress(
            ChunkId::of(&data),
            &data,
            &mut zstd::bulk::Compressor::new(3).unwrap(),
        )
        .unwrap()])
            .unwrap();
        s.commit(d)
    };
    let good = draft(vec![file_entry("a", &data)]);
    let cases = [
        (
            Draft {
                name: "bad@name".into(),
                ..good.clone()
            },
            "snapshot name",
        ),
        (
            Draft {
                parent: Some("0123456789abcdef".into()),
                ..good.clone()
            },
            "no snapshot matches",
        ),
        (
            draft(vec![file_entry("a", &data), file_entry("a", &data)]),
            "appears twice",
        ),
        (
            Draft {
                content: DraftContent::Image {
                    size: 1 << 20,
                    block_size: 4096,
                    blocks: vec![None; 256],
                },
                ..good.clone()
            },
            "block size 4096",
        ),
        (draft(vec![file_entry("b", &random_bytes(10, 9))]), "lacks"),
    ];
    for (d, expect) in cases {
        let e = upload(&d).unwrap_err();
        assert!(e.to_string().contains(expect), "{e} should say {expect:?}");
    }
    assert!(store.list_snapshots().unwrap().is_empty());
    upload(&good).unwrap();
    // Garbage where a draft should be is refused before anything is looked at.
    assert!(Draft::decode(b"IGNDRFT1\xff\xff\xff\xff").is_err());
    assert!(Draft::decode(&[b"IGNDRFT1".as_slice(), &2u32.to_le_bytes(), b"{}"].concat()).is_err());
}

/// A session killed outright (kill -9) in the middle of an upload: the store verifies, gc
/// clears what the session left, and the next session sends only chunks that did not reach
/// a sealed pack.
#[test]
fn a_killed_upload_session_leaves_a_verifiable_store() {
    const CHILD: &str = "IGNITE_TEST_KILLED_SESSION";
    let chunks: Vec<Vec<u8>> = (0..14)
        .map(|i| random_bytes(256 << 10, 51 + 2 * i))
        .collect();
    if let Some(root) = std::env::var_os(CHILD) {
        let store = Store::open(Path::new(&root)).unwrap();
        let w = Writer::new(&store).unwrap();
        let mut zc = zstd::bulk::Compressor::new(3).unwrap();
        for c in &chunks {
            w.upload(&[compress(ChunkId::of(c), c, &mut zc).unwrap()])
                .unwrap();
        }
        unsafe { libc::kill(libc::getpid(), libc::SIGKILL) };
        unreachable!("killed");
    }
    let t = tempfile::tempdir().unwrap();
    let store = shared_store(t.path(), 1 << 20);
    let status = std::process::Command::new(std::env::current_exe().unwrap())
        .args([
            "--exact",
            "a_killed_upload_session_leaves_a_verifiable_store",
        ])
        .env(CHILD, store.root())
        .status()
        .unwrap();
    assert!(!status.success(), "the child was to be killed");
    let store = Store::open(store.root()).unwrap();
    let r = ignite_archive::verify::verify(&store, 1.0).unwrap();
    assert!(r.ok(), "{:?}", r.problems);
    let ids: Vec<ChunkId> = chunks.iter().map(|c| ChunkId::of(c)).collect();
    let w = Writer::new(&store).unwrap();
    let missing = w.missing(&ids).unwrap();
    // 1 MiB packs hold four 256 KiB chunks: the first 12 were sealed, the last 2 were not.
    assert_eq!(missing, ids[12..]);
    drop(w);
    // gc clears the dead session's lease and temporary pack (and, as no snapshot names
    // them, the chunks it sent).
    let g = ignite_archive::gc::gc(&store).unwrap();
    assert_eq!(g.stale_writers, 1);
    assert_eq!(fs::read_dir(store.root().join("tmp")).unwrap().count(), 0);
    assert!(ignite_archive::verify::verify(&store, 1.0).unwrap().ok());
}

/// A sink whose server stops answering: a directory import of many files ends with that
/// error instead of waiting forever on the queue of file readers that stopped on it.
#[test]
fn a_sink_that_fails_ends_a_directory_import_with_its_error() {
    struct Gone(StoreConfig);
    impl ChunkSink for Gone {
        fn config(&self) -> &StoreConfig {
            &self.0
        }
        fn missing(&self, _: &[ChunkId]) -> ignite_archive::Result<Vec<ChunkId>> {
            // Long enough for the walk to fill the readers' queue and wait on it.
            std::thread::sleep(std::time::Duration::from_millis(500));
            Err(Error::Invalid("connection reset by peer".into()))
        }
        fn put(&self, _: &[StoredChunk]) -> ignite_archive::Result<()> {
            Err(Error::Invalid("connection reset by peer".into()))
        }
    }
    let t = tempfile::tempdir().unwrap();
    let src = t.path().join("many");
    fs::create_dir_all(&src).unwrap();
    // Far more files than the readers' queue holds, each distinct (one chunk each).
    for i in 0..3000u64 {
        fs::write(src.join(format!("f{i}")), random_bytes(2000, i + 1)).unwrap();
    }
    let sink = Gone(StoreConfig::default());
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let r = ignite_archive::import_dir_into(&sink, &src, &opts("many"), None, &progress());
        let _ = tx.send(r.map(|_| ()).map_err(|e| e.to_string()));
    });
    let got = rx
        .recv_timeout(std::time::Duration::from_secs(120))
        .expect("the import hung after its sink failed");
    let e = got.expect_err("the sink failed, the import must too");
    assert!(e.contains("connection reset by peer"), "{e}");
}
