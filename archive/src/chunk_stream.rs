//! Chunk batches in transit: how a client asks a server for chunks, and how the server sends
//! them as stored (compressed chunks are not recompressed), one chunk at a time.
//!
//! Request: the chunk ids, 32 bytes each, back to back; 1 to the server's limit, none twice
//! (`parse_request`).
//! Reply: for each chunk asked for, in the order asked: codec (u8: 0 raw, 1 zstd), raw length
//! (u32 LE), stored length (u32 LE), then the stored bytes. Ids are not repeated: the receiver
//! knows what it asked for, and checks every chunk against its id.
//!
//! Upload (a capture sending chunks the server lacks): for each chunk, its id (32 bytes), then
//! its header and stored bytes as in a reply; no id twice (`encode_upload`, `decode_upload`).
//!
//! A server writes the reply with an `Encoder` as it reads the chunks (to any `Write`, e.g. a
//! streamed HTTP body); a client reads it with a `Decoder` (from any `Read`), chunk by chunk,
//! which refuses anything beyond its `Limits` before allocating for it.

use crate::error::{Error, Result};
use crate::id::ChunkId;
use crate::pack::{self, Codec, PackEntry};
use std::collections::HashSet;
use std::io::{self, Read, Write};

/// Bytes before each chunk's stored bytes in a reply.
pub const HEADER_LEN: usize = 9;
/// The largest chunk a store makes (FastCDC's maximum and the largest block size).
pub const MAX_CHUNK_BYTES: u32 = 16 << 20;
/// A reply's stored bytes (headers included) a server should refuse to go beyond: room for
/// an export batch (`chunk_source::BATCH_BYTES`) plus the largest chunk.
pub const MAX_REPLY_BYTES: u64 = 64 << 20;

fn bad(what: String) -> Error {
    Error::Invalid(format!("chunk stream: {what}"))
}

/// A chunk as stored (compressed or raw), with what is needed to check it: what a reply
/// carries, and what a client uploads.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredChunk {
    pub id: ChunkId,
    pub codec: Codec,
    pub raw_len: u32,
    pub data: Vec<u8>,
}

impl StoredChunk {
    pub fn entry(&self) -> PackEntry {
        PackEntry {
            id: self.id,
            offset: 0,
            stored_len: self.data.len() as u32,
            raw_len: self.raw_len,
            codec: self.codec,
        }
    }
}

/// The ids of a request body, refusing a malformed one, more than `max_chunks` ids, or an id
/// asked for twice (which would make the server read and send it twice).
pub fn parse_request(body: &[u8], max_chunks: usize) -> Result<Vec<ChunkId>> {
    let bad = |what: String| {
        Error::Invalid(format!(
            "chunk request: {what}; send 1 to {max_chunks} different ids of 32 bytes back to back"
        ))
    };
    if body.is_empty() || !body.len().is_multiple_of(32) {
        return Err(bad(format!("{} bytes", body.len())));
    }
    if body.len() / 32 > max_chunks {
        return Err(bad(format!("{} ids", body.len() / 32)));
    }
    let mut seen = HashSet::with_capacity(body.len() / 32);
    body.chunks_exact(32)
        .map(|b| {
            let id = ChunkId(b.try_into().expect("32 bytes"));
            if seen.insert(id) {
                Ok(id)
            } else {
                Err(bad(format!("chunk {} asked for twice", id.to_hex())))
            }
        })
        .collect()
}

/// The request body for `ids`.
pub fn encode_request(ids: &[ChunkId]) -> Vec<u8> {
    ids.iter().flat_map(|id| id.0).collect()
}

fn header(entry: &PackEntry, stored_len: usize) -> [u8; HEADER_LEN] {
    let mut h = [0u8; HEADER_LEN];
    h[0] = entry.codec as u8;
    h[1..5].copy_from_slice(&entry.raw_len.to_le_bytes());
    h[5..9].copy_from_slice(&(stored_len as u32).to_le_bytes());
    h
}

/// A chunk's header: codec, raw length, stored length, each checked.
fn parse_header(id: &ChunkId, h: &[u8; HEADER_LEN], max_raw: u32) -> Result<(Codec, u32, u32)> {
    let codec = match h[0] {
        0 => Codec::Raw,
        1 => Codec::Zstd,
        c => return Err(bad(format!("chunk {}: unknown codec {c}", id.to_hex()))),
    };
    let raw_len = u32::from_le_bytes(h[1..5].try_into().expect("4 bytes"));
    let stored_len = u32::from_le_bytes(h[5..9].try_into().expect("4 bytes"));
    if raw_len > max_raw || stored_len > max_raw {
        return Err(bad(format!(
            "chunk {}: {} bytes is more than any chunk ({max_raw})",
            id.to_hex(),
            raw_len.max(stored_len),
        )));
    }
    Ok((codec, raw_len, stored_len))
}

/// An upload: for each chunk, its id, then its header and stored bytes as in a reply.
pub fn encode_upload(chunks: &[StoredChunk]) -> Vec<u8> {
    let mut out = Vec::new();
    for c in chunks {
        out.extend_from_slice(&c.id.0);
        encode(&c.entry(), &c.data, &mut out);
    }
    out
}

/// The chunks of an upload, refusing more than `max_chunks`, a chunk or a body beyond
/// `limits`, an id sent twice, or a truncated body. Whether each chunk is what its id says
/// is for `Writer::upload` to check.
pub fn decode_upload(
    mut body: &[u8],
    max_chunks: usize,
    limits: Limits,
) -> Result<Vec<StoredChunk>> {
    if body.len() as u64 > limits.max_bytes {
        return Err(bad(format!(
            "upload of {} bytes is more than {}",
            body.len(),
            limits.max_bytes
        )));
    }
    let mut out: Vec<StoredChunk> = Vec::new();
    let mut seen = HashSet::new();
    while !body.is_empty() {
        if out.len() == max_chunks {
            return Err(bad(format!("more than {max_chunks} chunks in one upload")));
        }
        if body.len() < 32 + HEADER_LEN {
            return Err(bad(format!("upload ends inside chunk {}", out.len() + 1)));
        }
        let id = ChunkId(body[..32].try_into().expect("32 bytes"));
        if !seen.insert(id) {
            return Err(bad(format!("chunk {} sent twice", id.to_hex())));
        }
        let h: &[u8; HEADER_LEN] = body[32..32 + HEADER_LEN].try_into().expect("9 bytes");
        let (codec, raw_len, stored_len) = parse_header(&id, h, limits.max_raw)?;
        let rest = &body[32 + HEADER_LEN..];
        if rest.len() < stored_len as usize {
            return Err(bad(format!(
                "chunk {}: {stored_len} bytes announced, {} left",
                id.to_hex(),
                rest.len()
            )));
        }
        let (data, next) = rest.split_at(stored_len as usize);
        out.push(StoredChunk {
            id,
            codec,
            raw_len,
            data: data.to_vec(),
        });
        body = next;
    }
    Ok(out)
}

/// Appends one stored chunk to a reply held in memory.
pub fn encode(entry: &PackEntry, stored: &[u8], out: &mut Vec<u8>) {
    out.extend_from_slice(&header(entry, stored.len()));
    out.extend_from_slice(stored);
}

/// Writes a reply chunk by chunk.
pub struct Encoder<W: Write> {
    out: W,
    bytes: u64,
}

impl<W: Write> Encoder<W> {
    pub fn new(out: W) -> Self {
        Encoder { out, bytes: 0 }
    }

    /// Writes the next chunk asked for, as the store holds it.
    pub fn push(&mut self, entry: &PackEntry, stored: &[u8]) -> io::Result<()> {
        self.out.write_all(&header(entry, stored.len()))?;
        self.out.write_all(stored)?;
        self.bytes += (HEADER_LEN + stored.len()) as u64;
        Ok(())
    }

    /// Bytes written so far.
    pub fn bytes(&self) -> u64 {
        self.bytes
    }

    pub fn finish(mut self) -> io::Result<W> {
        self.out.flush()?;
        Ok(self.out)
    }
}

/// What a decoder accepts.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// Largest chunk (raw length).
    pub max_raw: u32,
    /// Largest reply, headers included.
    pub max_bytes: u64,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_raw: MAX_CHUNK_BYTES,
            max_bytes: MAX_REPLY_BYTES,
        }
    }
}

/// Reads a reply to a request for `ids`, yielding each chunk decoded and checked against its
/// id, in order; after the last one, anything more is an error.
pub struct Decoder<'a, R: Read> {
    input: R,
    ids: &'a [ChunkId],
    next: usize,
    read: u64,
    limits: Limits,
    failed: bool,
}

/// Reads as much of `buf` as the input has; the number of bytes read.
fn read_full(r: &mut impl Read, buf: &mut [u8]) -> io::Result<usize> {
    let mut n = 0;
    while n < buf.len() {
        match r.read(&mut buf[n..]) {
            Ok(0) => break,
            Ok(k) => n += k,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(n)
}

impl<'a, R: Read> Decoder<'a, R> {
    pub fn new(input: R, ids: &'a [ChunkId], limits: Limits) -> Self {
        Decoder {
            input,
            ids,
            next: 0,
            read: 0,
            limits,
            failed: false,
        }
    }

    fn io(e: io::Error) -> Error {
        bad(format!("cannot read: {e}"))
    }

    fn chunk(&mut self) -> Result<Vec<u8>> {
        let (n, id) = (self.next, self.ids[self.next]);
        let mut h = [0u8; HEADER_LEN];
        if read_full(&mut self.input, &mut h).map_err(Self::io)? < HEADER_LEN {
            return Err(bad(format!(
                "ends after {n} of {} chunks (chunk {} missing)",
                self.ids.len(),
                id.to_hex()
            )));
        }
        let (codec, raw_len, stored_len) = parse_header(&id, &h, self.limits.max_raw)?;
        self.read += (HEADER_LEN as u64) + u64::from(stored_len);
        if self.read > self.limits.max_bytes {
            return Err(bad(format!(
                "more than {} bytes in one reply",
                self.limits.max_bytes
            )));
        }
        let mut stored = vec![0u8; stored_len as usize];
        let got = read_full(&mut self.input, &mut stored).map_err(Self::io)?;
        if got < stored.len() {
            return Err(bad(format!(
                "chunk {}: {stored_len} bytes announced, {got} left",
                id.to_hex()
            )));
        }
        let entry = PackEntry {
            id,
            offset: 0,
            stored_len,
            raw_len,
            codec,
        };
        let data = pack::decode(&entry, &stored)?;
        self.next += 1;
        if self.next == self.ids.len() {
            let mut more = [0u8; 1];
            if read_full(&mut self.input, &mut more).map_err(Self::io)? > 0 {
                return Err(bad("bytes after the last chunk".into()));
            }
        }
        Ok(data)
    }
}

impl<R: Read> Iterator for Decoder<'_, R> {
    type Item = Result<Vec<u8>>;

    fn next(&mut self) -> Option<Result<Vec<u8>>> {
        if self.failed || self.next >= self.ids.len() {
            return None;
        }
        let r = self.chunk();
        self.failed = r.is_err();
        Some(r)
    }
}

/// The chunks `ids` from a whole reply in memory. Raw lengths above `max_raw` are refused
/// before anything is allocated for them.
pub fn decode(ids: &[ChunkId], body: &[u8], max_raw: u32) -> Result<Vec<Vec<u8>>> {
    if ids.is_empty() && !body.is_empty() {
        return Err(bad(format!("{} bytes after the last chunk", body.len())));
    }
    let limits = Limits {
        max_raw,
        max_bytes: u64::MAX,
    };
    Decoder::new(body, ids, limits).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn stream(chunks: &[&[u8]]) -> (Vec<ChunkId>, Vec<u8>) {
        let mut enc = Encoder::new(Vec::new());
        let mut ids = Vec::new();
        for (n, c) in chunks.iter().enumerate() {
            let id = ChunkId::of(c);
            let (codec, stored) = if n % 2 == 0 {
                (Codec::Raw, c.to_vec())
            } else {
                (Codec::Zstd, zstd::bulk::compress(c, 3).unwrap())
            };
            let entry = PackEntry {
                id,
                offset: 0,
                stored_len: stored.len() as u32,
                raw_len: c.len() as u32,
                codec,
            };
            enc.push(&entry, &stored).unwrap();
            ids.push(id);
        }
        let bytes = enc.bytes();
        let body = enc.finish().unwrap();
        assert_eq!(bytes, body.len() as u64);
        (ids, body)
    }

    #[test]
    fn round_trip_in_order() {
        let chunks: [&[u8]; 3] = [b"first", &[7u8; 5000], b""];
        let (ids, body) = stream(&chunks);
        let got = decode(&ids, &body, 1 << 20).unwrap();
        assert_eq!(got, chunks.iter().map(|c| c.to_vec()).collect::<Vec<_>>());
        // The same bytes as `encode` appends.
        let mut one = Vec::new();
        let e = PackEntry {
            id: ids[0],
            offset: 0,
            stored_len: 5,
            raw_len: 5,
            codec: Codec::Raw,
        };
        encode(&e, b"first", &mut one);
        assert_eq!(one, body[..HEADER_LEN + 5]);
    }

    #[test]
    fn short_long_oversized_and_swapped_streams_are_refused() {
        let (ids, body) = stream(&[b"one", b"two"]);
        let e = decode(&ids, &body[..body.len() - 1], 1 << 20).unwrap_err();
        assert!(e.to_string().contains("announced"), "{e}");
        let e = decode(&ids[..1], &body, 1 << 20).unwrap_err();
        assert!(e.to_string().contains("after the last chunk"), "{e}");
        let e = decode(&ids, &body, 2).unwrap_err();
        assert!(e.to_string().contains("more than any chunk"), "{e}");
        let swapped = [ids[1], ids[0]];
        let e = decode(&swapped, &body, 1 << 20).unwrap_err();
        assert!(e.to_string().contains("does not hash to its id"), "{e}");
        let e = decode(&ids, &[], 1 << 20).unwrap_err();
        assert!(e.to_string().contains("ends after 0 of 2"), "{e}");
    }

    #[test]
    fn a_decoder_reads_chunk_by_chunk_within_its_byte_limit() {
        let big = vec![9u8; 100_000];
        let (ids, body) = stream(&[b"a", b"b", &big]); // the third is stored raw
                                                       // A reader that hands out a few bytes at a time, as a network does.
        struct Trickle<'a>(&'a [u8]);
        impl Read for Trickle<'_> {
            fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
                let n = buf.len().min(self.0.len()).min(7);
                buf[..n].copy_from_slice(&self.0[..n]);
                self.0 = &self.0[n..];
                Ok(n)
            }
        }
        let lens: Vec<usize> = Decoder::new(Trickle(&body), &ids, Limits::default())
            .map(|c| c.unwrap().len())
            .collect();
        assert_eq!(lens, [1, 1, 100_000]);
        // The limit stops the decoder at the chunk that goes beyond it, before its bytes.
        let limits = Limits {
            max_raw: 1 << 20,
            max_bytes: 1000,
        };
        let mut d = Decoder::new(&body[..], &ids, limits);
        assert!(d.next().unwrap().is_ok());
        assert!(d.next().unwrap().is_ok());
        let e = d.next().unwrap().map(|c| c.len()).unwrap_err();
        assert!(e.to_string().contains("more than 1000 bytes"), "{e}");
        assert!(d.next().is_none(), "nothing after an error");
    }

    #[test]
    fn requests_with_repeats_or_too_many_ids_are_refused() {
        let (a, b) = (ChunkId::of(b"a"), ChunkId::of(b"b"));
        let body = encode_request(&[a, b]);
        assert_eq!(parse_request(&body, 2).unwrap(), [a, b]);
        let e = parse_request(&body, 1).unwrap_err();
        assert!(e.to_string().contains("2 ids"), "{e}");
        let e = parse_request(&encode_request(&[a, b, a]), 8).unwrap_err();
        assert!(e.to_string().contains("asked for twice"), "{e}");
        assert!(parse_request(&[], 8).is_err());
        assert!(parse_request(&body[..40], 8).is_err());
    }
}
