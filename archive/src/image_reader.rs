//! Where a block import reads a disk from: an image file or block device ([`FileImage`]), or
//! anything else that reads at offsets — a point-in-time view of a running guest's disk
//! served over NBD, a block snapshot read in place.

use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use crate::error::{IoContext, Result};
use crate::fsutil::{data_ranges, source_size};

pub trait ImageReader: Sync {
    /// Size in bytes.
    fn size(&self) -> u64;
    /// Fills `buf` from `offset` (an error past the end).
    fn read_at(&self, buf: &mut [u8], offset: u64) -> std::io::Result<()>;
    /// Byte ranges (offset, length) that may hold data, in order; the rest reads as zeros and
    /// is never read. By default the whole disk.
    fn data_ranges(&self) -> std::io::Result<Vec<(u64, u64)>> {
        Ok(vec![(0, self.size())])
    }
    /// What error messages call it.
    fn name(&self) -> String;
}

/// An image file or a block device; holes are found with SEEK_DATA/SEEK_HOLE.
pub struct FileImage {
    file: File,
    size: u64,
    path: PathBuf,
}

impl FileImage {
    pub fn open(path: &Path) -> Result<FileImage> {
        let file = File::open(path).at(path)?;
        let size = source_size(&file).at(path)?;
        Ok(FileImage {
            file,
            size,
            path: path.to_path_buf(),
        })
    }
}

impl ImageReader for FileImage {
    fn size(&self) -> u64 {
        self.size
    }

    fn read_at(&self, buf: &mut [u8], offset: u64) -> std::io::Result<()> {
        self.file.read_exact_at(buf, offset)
    }

    fn data_ranges(&self) -> std::io::Result<Vec<(u64, u64)>> {
        Ok(data_ranges(&self.file, self.size)
            .into_iter()
            .map(|(a, b)| (a, b - a))
            .collect())
    }

    fn name(&self) -> String {
        self.path.display().to_string()
    }
}
