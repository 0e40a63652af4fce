//! What a nightly block capture over the network says about the blocks that did not change:
//! next to nothing. The client hashes its whole disk (it has no change log), then sends one
//! digest per group of [`GROUP_BLOCKS`] blocks; the server compares them with the same
//! digests of the disk's previous capture and answers which groups differ. Only those
//! groups' chunk ids are asked about, uploaded where missing, and committed; the server
//! takes every other group from the previous capture.
//!
//! ```text
//! compare request   digest of group 0 | digest of group 1 | ...      (32 bytes each)
//! compare answer    bitmap, bit g (byte g/8, bit g%8) set: group g differs
//! group digest      SHA-256 over each block of the group: 0x00 (no chunk: zeros or a
//!                   hole), or 0x01 and its chunk id
//! changes body      u32 LE length | header (JSON: stats) | the differing groups' blocks,
//!                   in order, as an image index (`snapshot::encode_image`)
//! ```
//!
//! Why: measured with `scripts/bench-capture --network` (a 4 GiB disk holding 1.9 GB of
//! data, bytes on the client's veth), the way before this — every block's id asked about as
//! it was hashed, in many small requests, then the whole block list committed — cost 5.0 MB
//! on a night with nothing changed (1.9 MB of bodies, the rest the requests' headers and
//! packets) and 4.2 MB above the 42.9 MB of new data on a night with 1% changed. Digests of
//! 16 blocks cost 2 bytes per 64 KiB block (32 KiB per GiB of disk): the unchanged night
//! now costs 0.14 MB and the 1% night 0.6 MB above its new data. A changed block costs its
//! group's ids twice (asked, committed); 1% changed at random places touches 15% of the
//! groups. The client keeps no state between captures: the netbooted agent has nowhere to
//! keep the previous block list, and the server sending it would cost as much as it saves.
//! The price is a second read of the blocks to upload (hashing comes first): the new data.

use anyhow::{bail, ensure, Result};
use ignite_archive::snapshot::SnapshotStats;
use ignite_archive::snapshot::{decode_image, encode_image};
use ignite_archive::ChunkId;
use serde::{Deserialize, Serialize};

/// Blocks per digest.
pub const GROUP_BLOCKS: usize = 16;
/// Chunk ids in one `missing` request.
pub const MAX_IDS: usize = 4096;

/// One digest per [`GROUP_BLOCKS`] blocks (the last group may be shorter).
pub fn group_digests(blocks: &[Option<ChunkId>]) -> Vec<[u8; 32]> {
    blocks
        .chunks(GROUP_BLOCKS)
        .map(|group| {
            let mut buf = Vec::with_capacity(GROUP_BLOCKS * 33);
            for b in group {
                match b {
                    Some(id) => {
                        buf.push(1);
                        buf.extend_from_slice(&id.0);
                    }
                    None => buf.push(0),
                }
            }
            ChunkId::of(&buf).0
        })
        .collect()
}

/// Groups of `nblocks` blocks.
pub fn groups(nblocks: usize) -> usize {
    nblocks.div_ceil(GROUP_BLOCKS)
}

pub fn encode_digests(digests: &[[u8; 32]]) -> Vec<u8> {
    digests.concat()
}

/// A compare request for a disk of `nblocks` blocks.
pub fn decode_digests(body: &[u8], nblocks: usize) -> Result<Vec<[u8; 32]>> {
    let want = groups(nblocks);
    ensure!(
        body.len() == want * 32,
        "{} bytes of group digests for a disk of {nblocks} blocks: expected {want} digests of 32 bytes",
        body.len()
    );
    Ok(body
        .chunks_exact(32)
        .map(|d| d.try_into().expect("32 bytes"))
        .collect())
}

pub fn encode_bitmap(differs: &[bool]) -> Vec<u8> {
    let mut out = vec![0u8; differs.len().div_ceil(8)];
    for (g, _) in differs.iter().enumerate().filter(|(_, d)| **d) {
        out[g / 8] |= 1 << (g % 8);
    }
    out
}

/// A compare answer for `ngroups` groups; bits past the last group must be clear.
pub fn decode_bitmap(data: &[u8], ngroups: usize) -> Result<Vec<bool>> {
    ensure!(
        data.len() == ngroups.div_ceil(8),
        "a bitmap of {} bytes for {ngroups} groups",
        data.len()
    );
    let differs: Vec<bool> = (0..ngroups)
        .map(|g| data[g / 8] & (1 << (g % 8)) != 0)
        .collect();
    ensure!(
        encode_bitmap(&differs) == data,
        "the bitmap sets bits past its {ngroups} groups"
    );
    Ok(differs)
}

/// The indices of the blocks in the groups that differ, in order.
pub fn blocks_in(differs: &[bool], nblocks: usize) -> impl Iterator<Item = usize> + '_ {
    differs
        .iter()
        .enumerate()
        .filter(|(_, d)| **d)
        .flat_map(move |(g, _)| g * GROUP_BLOCKS..((g + 1) * GROUP_BLOCKS).min(nblocks))
}

#[derive(Serialize, Deserialize)]
struct ChangesHeader {
    stats: SnapshotStats,
}

/// The blocks of the differing groups (in order) and the snapshot's stats.
pub fn encode_changes(stats: &SnapshotStats, blocks: &[Option<ChunkId>]) -> Result<Vec<u8>> {
    let header = serde_json::to_vec(&ChangesHeader {
        stats: stats.clone(),
    })?;
    let mut out = (header.len() as u32).to_le_bytes().to_vec();
    out.extend_from_slice(&header);
    out.extend(encode_image(blocks)?);
    Ok(out)
}

/// A changes body holding `nblocks` blocks.
pub fn decode_changes(
    body: &[u8],
    nblocks: usize,
) -> Result<(SnapshotStats, Vec<Option<ChunkId>>)> {
    let Some((len, rest)) = body.split_first_chunk::<4>() else {
        bail!("a changes body of {} bytes has no header", body.len());
    };
    let len = u32::from_le_bytes(*len) as usize;
    ensure!(
        len <= rest.len().min(1 << 20),
        "a changes header of {len} bytes in a body of {}",
        body.len()
    );
    let header: ChangesHeader = serde_json::from_slice(&rest[..len])?;
    let blocks = decode_image("changes", &rest[len..], nblocks as u64)?;
    Ok((header.stats, blocks))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id(n: u8) -> Option<ChunkId> {
        Some(ChunkId::of(&[n]))
    }

    #[test]
    fn a_digest_changes_with_any_block_of_its_group_and_only_its_group() {
        let mut blocks: Vec<Option<ChunkId>> = (0..40).map(|i| id(i as u8)).collect();
        blocks[3] = None;
        let before = group_digests(&blocks);
        assert_eq!(before.len(), 3, "40 blocks make groups of 16, 16 and 8");
        for (i, new) in [(3, id(200)), (17, None), (39, id(201))] {
            let mut after = blocks.clone();
            after[i] = new;
            let d = group_digests(&after);
            for g in 0..3 {
                assert_eq!(
                    d[g] != before[g],
                    g == i / GROUP_BLOCKS,
                    "block {i}, group {g}"
                );
            }
        }
        // A zero block is not a block whose id is all zeros.
        let mut zeros = blocks.clone();
        zeros[3] = Some(ChunkId([0; 32]));
        assert_ne!(group_digests(&zeros)[0], before[0]);
    }

    #[test]
    fn bitmaps_and_block_indices_round_trip() {
        let differs = vec![
            true, false, false, true, false, false, false, false, true, true,
        ];
        let map = encode_bitmap(&differs);
        assert_eq!(map, vec![0b0000_1001, 0b0000_0011]);
        assert_eq!(decode_bitmap(&map, 10).unwrap(), differs);
        assert!(decode_bitmap(&map, 9).is_err(), "bit 9 lies past 9 groups");
        assert!(decode_bitmap(&map, 17).is_err(), "17 groups need 3 bytes");
        let nblocks = 9 * GROUP_BLOCKS + 5;
        let idx: Vec<usize> = blocks_in(&differs, nblocks).collect();
        let mut want: Vec<usize> = (0..16).chain(48..64).chain(128..144).collect();
        want.extend(144..149);
        assert_eq!(idx, want);
    }

    #[test]
    fn digests_and_changes_are_checked_for_their_size() {
        let d = group_digests(&[id(1), None, id(2)]);
        let body = encode_digests(&d);
        assert_eq!(decode_digests(&body, 3).unwrap(), d);
        assert!(decode_digests(&body, 17).is_err());
        assert!(decode_digests(&body[..31], 3).is_err());

        let stats = SnapshotStats {
            read_bytes: 7,
            ..Default::default()
        };
        let blocks = vec![id(1), None, id(3)];
        let body = encode_changes(&stats, &blocks).unwrap();
        assert_eq!(decode_changes(&body, 3).unwrap(), (stats, blocks));
        assert!(decode_changes(&body, 4).is_err());
        for bad in [&body[..2], &body[..10], &[255u8, 255, 255, 255, b'{'][..]] {
            assert!(decode_changes(bad, 3).is_err());
        }
    }
}
