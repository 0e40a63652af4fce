//! Stored chunks in transit: how the install API sends a batch of chunks in one answer.
//!
//! For each chunk asked for, in the order asked: codec (u8: 0 raw, 1 zstd), raw length (u32
//! LE), stored length (u32 LE), then the stored bytes. Ids are not repeated: the receiver
//! knows what it asked for, and `decode` checks every chunk against its id anyway.

use crate::error::{Error, Result};
use crate::id::ChunkId;
use crate::pack::{self, Codec, PackEntry};

const HEADER_LEN: usize = 9;

/// Appends one stored chunk's frame to `out`.
pub fn encode(entry: &PackEntry, stored: &[u8], out: &mut Vec<u8>) {
    out.push(entry.codec as u8);
    out.extend_from_slice(&entry.raw_len.to_le_bytes());
    out.extend_from_slice(&(stored.len() as u32).to_le_bytes());
    out.extend_from_slice(stored);
}

/// The chunks `ids` from a stream of frames, each decoded and checked against its id. Raw
/// lengths above `max_raw` are refused before anything is allocated for them.
pub fn decode(ids: &[ChunkId], mut body: &[u8], max_raw: u32) -> Result<Vec<Vec<u8>>> {
    let bad = |what: String| Error::Invalid(format!("chunk stream: {what}"));
    let mut out = Vec::with_capacity(ids.len());
    for (n, id) in ids.iter().enumerate() {
        if body.len() < HEADER_LEN {
            return Err(bad(format!(
                "ends after {n} of {} chunks (chunk {} missing)",
                ids.len(),
                id.to_hex()
            )));
        }
        let codec = match body[0] {
            0 => Codec::Raw,
            1 => Codec::Zstd,
            c => return Err(bad(format!("chunk {}: unknown codec {c}", id.to_hex()))),
        };
        let raw_len = u32::from_le_bytes(body[1..5].try_into().expect("4 bytes"));
        let stored_len = u32::from_le_bytes(body[5..9].try_into().expect("4 bytes"));
        if raw_len > max_raw {
            return Err(bad(format!(
                "chunk {}: {raw_len} bytes is more than any chunk ({max_raw})",
                id.to_hex()
            )));
        }
        let rest = &body[HEADER_LEN..];
        if rest.len() < stored_len as usize {
            return Err(bad(format!(
                "chunk {}: {stored_len} bytes announced, {} left",
                id.to_hex(),
                rest.len()
            )));
        }
        let (stored, next) = rest.split_at(stored_len as usize);
        let entry = PackEntry {
            id: *id,
            offset: 0,
            stored_len,
            raw_len,
            codec,
        };
        out.push(pack::decode(&entry, stored)?);
        body = next;
    }
    if !body.is_empty() {
        return Err(bad(format!("{} bytes after the last chunk", body.len())));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn stream(chunks: &[&[u8]]) -> (Vec<ChunkId>, Vec<u8>) {
        let mut out = Vec::new();
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
            encode(&entry, &stored, &mut out);
            ids.push(id);
        }
        (ids, out)
    }

    #[test]
    fn round_trip_in_order() {
        let chunks: [&[u8]; 3] = [b"first", &[7u8; 5000], b""];
        let (ids, body) = stream(&chunks);
        let got = decode(&ids, &body, 1 << 20).unwrap();
        assert_eq!(got, chunks.iter().map(|c| c.to_vec()).collect::<Vec<_>>());
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
}
