//! Partitions of an image file as loop devices over their byte ranges (`losetup --offset
//! --sizelimit`): that needs no partition support in the kernel (many VM kernels have no GPT
//! support) and no udev. Every device attached is detached on drop.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};

use crate::process::output;

#[derive(Default)]
pub struct Loops {
    /// Each device with the image and the offset it was attached over.
    devs: Vec<(String, PathBuf, u64)>,
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
        let image = image.canonicalize().unwrap_or_else(|_| image.to_path_buf());
        self.devs.push((dev.clone(), image, start));
        Ok(dev)
    }
}

impl Drop for Loops {
    /// Detaches every device and waits (a bounded while) until the kernel has let each go:
    /// while another process still has one open (udev probing a fresh file system does),
    /// `losetup -d` only marks it to go at the last close, and a caller that exits right
    /// after would leave it attached for a moment (a test saw two left behind).
    fn drop(&mut self) {
        for (dev, image, start) in self.devs.drain(..) {
            let _ = Command::new("losetup").args(["-d", &dev]).status();
            let sys = Path::new("/sys/block")
                .join(dev.trim_start_matches("/dev/"))
                .join("loop");
            // Still ours: the same file at the same offset (once it is free, another
            // process may attach the same device number to something else).
            let ours = || {
                let read = |f: &str| std::fs::read_to_string(sys.join(f)).unwrap_or_default();
                Path::new(read("backing_file").trim()) == image
                    && read("offset").trim() == start.to_string()
            };
            let t = Instant::now();
            while ours() && t.elapsed() < DETACH_WAIT {
                std::thread::sleep(Duration::from_millis(50));
            }
        }
    }
}

const DETACH_WAIT: Duration = Duration::from_secs(10);

#[cfg(test)]
mod tests {
    use super::*;

    /// A device another process holds open when we detach it (udev probing it) is gone by
    /// the time the drop returns, not left attached behind us.
    #[test]
    fn a_device_held_open_at_detach_is_gone_when_the_drop_returns() {
        if !rustix::process::geteuid().is_root() {
            assert!(
                std::env::var_os("IGNITE_CI").is_none(),
                "needs root for loop devices"
            );
            eprintln!("skipped: loop devices need root");
            return;
        }
        let dir = tempfile::tempdir().unwrap();
        let image = dir.path().join("disk.img");
        std::fs::File::create(&image)
            .unwrap()
            .set_len(4 << 20)
            .unwrap();
        let mut loops = Loops::default();
        let dev = loops.attach(&image, 1 << 20, 2 << 20, false).unwrap();
        let holder = std::fs::File::open(&dev).unwrap();
        let release = std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(500));
            drop(holder);
        });
        drop(loops);
        let attached = std::process::Command::new("losetup")
            .arg("-j")
            .arg(&image)
            .output()
            .unwrap();
        assert_eq!(
            String::from_utf8_lossy(&attached.stdout),
            "",
            "{dev} is still attached"
        );
        release.join().unwrap();
    }
}
