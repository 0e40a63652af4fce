//! Partitions of an image file as loop devices over their byte ranges (`losetup --offset
//! --sizelimit`): that needs no partition support in the kernel (many VM kernels have no GPT
//! support) and no udev. Every device attached is detached on drop.

use std::path::Path;
use std::process::Command;

use anyhow::{Context, Result};

use crate::process::output;

#[derive(Default)]
pub struct Loops {
    devs: Vec<String>,
}

impl Loops {
    /// A loop device over `size` bytes at `start` of `image`; returns its path.
    pub fn attach(
        &mut self,
        image: &Path,
        start: u64,
        size: u64,
        read_only: bool,
    ) -> Result<String> {
        let mut cmd = Command::new("losetup");
        cmd.args(["--show", "-f", "--offset"])
            .arg(start.to_string())
            .arg("--sizelimit")
            .arg(size.to_string());
        if read_only {
            cmd.arg("--read-only");
        }
        let dev = output(cmd.arg(image))
            .with_context(|| {
                format!(
                    "image {}: cannot attach {size} bytes at {start}",
                    image.display()
                )
            })?
            .trim()
            .to_string();
        self.devs.push(dev.clone());
        Ok(dev)
    }
}

impl Drop for Loops {
    fn drop(&mut self) {
        for d in self.devs.drain(..) {
            let _ = Command::new("losetup").args(["-d", &d]).status();
        }
    }
}
