//! Content-defined chunking of file data (FastCDC v2020, parameters from the store config).

use crate::config::ChunkerParams;
use crate::error::{Error, Result};
use fastcdc::v2020::{Normalization, StreamCDC};
use std::io::Read;

fn level(n: u8) -> Normalization {
    match n {
        0 => Normalization::Level0,
        1 => Normalization::Level1,
        2 => Normalization::Level2,
        _ => Normalization::Level3,
    }
}

/// Splits everything `reader` yields into chunks, calling `each(offset, data)` in order.
/// `size_hint` is the expected length, if known: a stream shorter than the minimum chunk
/// size is one chunk whatever the chunker says, so it is read whole without the chunker's
/// max-size buffer (most files of a root file system are that small). `what` names the
/// source in errors.
pub fn split(
    mut reader: impl Read,
    size_hint: Option<u64>,
    p: &ChunkerParams,
    what: &str,
    mut each: impl FnMut(u64, Vec<u8>) -> Result<()>,
) -> Result<u64> {
    if let Some(n) = size_hint.filter(|&n| n < p.min as u64) {
        let mut data = Vec::with_capacity(n as usize);
        reader.read_to_end(&mut data).map_err(|e| Error::Io {
            path: what.into(),
            source: e,
        })?;
        let len = data.len() as u64;
        if len > 0 {
            each(0, data)?;
        }
        return Ok(len);
    }
    let cdc = StreamCDC::with_level(
        reader,
        p.min as usize,
        p.avg as usize,
        p.max as usize,
        level(p.normalization),
    );
    let mut total = 0;
    for chunk in cdc {
        let chunk = chunk.map_err(|e| match e {
            fastcdc::v2020::Error::IoError(e) => Error::Io {
                path: what.into(),
                source: e,
            },
            other => Error::Invalid(format!("{what}: chunking failed: {other}")),
        })?;
        total += chunk.length as u64;
        each(chunk.offset, chunk.data)?;
    }
    Ok(total)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::StoreConfig;

    #[test]
    fn chunks_cover_input_and_resync_after_insert() {
        let p = StoreConfig::default().chunker;
        let mut data = vec![0u8; 8 << 20];
        let mut x = 0x9e3779b97f4a7c15u64;
        for b in data.iter_mut() {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            *b = x as u8;
        }
        let cut = |d: &[u8]| {
            let mut v = Vec::new();
            split(d, None, &p, "test", |off, c| {
                v.push((off, c.len() as u64, crate::id::ChunkId::of(&c)));
                Ok(())
            })
            .unwrap();
            v
        };
        let a = cut(&data);
        let mut pos = 0;
        for (off, len, _) in &a {
            assert_eq!(*off, pos, "chunks are contiguous");
            assert!(*len <= p.max as u64);
            pos = off + len;
        }
        assert_eq!(pos, data.len() as u64);
        let mut b_data = data.clone();
        b_data.splice(100_000..100_000, [1u8; 777]);
        let b = cut(&b_data);
        let ids_a: std::collections::HashSet<_> = a.iter().map(|x| x.2).collect();
        let shared = b.iter().filter(|x| ids_a.contains(&x.2)).count();
        // An insertion near the start changes one or two chunks, not the rest.
        assert!(shared + 3 >= b.len(), "shared {shared} of {}", b.len());
    }
}
