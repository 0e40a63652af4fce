//! The store's self-description (`config.json`): format, chunker, block size, compression.
//! Everything that decides how bytes become chunk ids is recorded here, because changing any
//! of it silently ends deduplication against what the store already holds.

use crate::error::{Error, Result};
use serde::{Deserialize, Serialize};

pub const FORMAT_VERSION: u32 = 1;
pub const FASTCDC_CRATE_VERSION: &str = "5.0.0";

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StoreConfig {
    pub format: u32,
    pub chunker: ChunkerParams,
    /// Fixed chunk size for block-image snapshots (bytes, power of two).
    pub block_size: u32,
    pub hash: String,
    pub compression: Compression,
    /// Packs are sealed once they reach this many bytes.
    pub pack_size: u64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ChunkerParams {
    pub algorithm: String,
    pub crate_version: String,
    pub min: u32,
    pub avg: u32,
    pub max: u32,
    pub normalization: u8,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Compression {
    pub algorithm: String,
    pub level: i32,
}

impl Default for StoreConfig {
    fn default() -> Self {
        StoreConfig {
            format: FORMAT_VERSION,
            chunker: ChunkerParams {
                algorithm: "fastcdc-v2020".into(),
                crate_version: FASTCDC_CRATE_VERSION.into(),
                min: 64 * 1024,
                avg: 256 * 1024,
                max: 1024 * 1024,
                normalization: 1,
            },
            block_size: DEFAULT_BLOCK_SIZE,
            hash: "sha256".into(),
            compression: Compression {
                algorithm: "zstd".into(),
                level: DEFAULT_ZSTD_LEVEL,
            },
            pack_size: 16 * 1024 * 1024,
        }
    }
}

/// Chosen by `scripts/bench-block-size` over the five-generation nightly series (BENCHMARKS.md).
pub const DEFAULT_BLOCK_SIZE: u32 = 64 * 1024;
/// Chosen by measurement on a Debian root file system (BENCHMARKS.md).
pub const DEFAULT_ZSTD_LEVEL: i32 = 3;

impl StoreConfig {
    pub fn validate(&self) -> Result<()> {
        let bad = |what: String| Err(Error::Invalid(format!("store config: {what}")));
        if self.format != FORMAT_VERSION {
            return bad(format!(
                "format {} is not supported by this ignite (knows {FORMAT_VERSION}); upgrade ignite",
                self.format
            ));
        }
        let c = &self.chunker;
        if c.algorithm != "fastcdc-v2020" || c.crate_version != FASTCDC_CRATE_VERSION {
            return bad(format!(
                "chunker {} {} differs from this build's fastcdc-v2020 {FASTCDC_CRATE_VERSION}",
                c.algorithm, c.crate_version
            ));
        }
        // fastcdc v2020 limits; it only debug_asserts them, and odd sizes misbehave.
        if !(64..=1 << 20).contains(&c.min)
            || !(256..=4 << 20).contains(&c.avg)
            || !(1024..=16 << 20).contains(&c.max)
            || !c.min.is_multiple_of(2)
            || !c.avg.is_multiple_of(2)
            || !c.max.is_multiple_of(2)
            || !(c.min <= c.avg && c.avg <= c.max)
            || c.normalization > 3
        {
            return bad(format!(
                "chunker sizes min {} avg {} max {} are outside fastcdc's limits",
                c.min, c.avg, c.max
            ));
        }
        if !self.block_size.is_power_of_two() || !(4096..=16 << 20).contains(&self.block_size) {
            return bad(format!(
                "block size {} must be a power of two from 4K to 16M",
                self.block_size
            ));
        }
        if self.hash != "sha256" || self.compression.algorithm != "zstd" {
            return bad("only sha256 ids and zstd compression are supported".into());
        }
        if !(1..=19).contains(&self.compression.level) {
            return bad(format!(
                "zstd level {} must be 1..=19",
                self.compression.level
            ));
        }
        if self.pack_size < 1 << 20 {
            return bad("pack size must be at least 1M".into());
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_is_valid() {
        StoreConfig::default().validate().unwrap();
    }

    #[test]
    fn rejects_bad_block_size() {
        let c = StoreConfig {
            block_size: 3000,
            ..Default::default()
        };
        assert!(c.validate().is_err());
    }
}
