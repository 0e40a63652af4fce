//! Recovery media (Ignite-UX's `make_tape_recovery`, as a bootable ISO): one capture, the
//! install kernel and the agent initramfs on a disc that restores the capture onto a machine
//! with no network.
//!
//! The ISO's files:
//!   boot/grub/grub.cfg       one entry: the kernel with `ignite.action=recover-media
//!                            ignite.snapshot=NAME@ID` (and `ignite.yes` when asked for)
//!   ignite/vmlinuz, ignite/initrd.img
//!   ignite-recovery/store/   an archive store holding only the capture: its record and its
//!                            disks' block snapshots, chunks copied as stored (not recompressed)
//! `grub-mkrescue` (GRUB for BIOS and UEFI, xorriso, mtools) makes it bootable both ways and
//! hybrid (it boots as a CD or written to a USB stick).

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{bail, Context, Result};
use ignite_archive::{
    ChunkId, Draft, DraftContent, Manifest, Store, StoredChunk, Writer, BATCH_CHUNKS,
};

use crate::capture::record::{short, CaptureKind, Record};
use crate::process::output as sh;
use crate::recover::{RecoverDisk, RecoverPlan};

/// The store's directory on the medium.
pub const STORE_DIR: &str = "ignite-recovery/store";
/// The boot action of recovery media.
pub const ACTION: &str = "recover-media";

/// What goes on the medium besides the capture.
pub struct MediaFiles {
    pub kernel: PathBuf,
    pub initrd: PathBuf,
    /// Kernel options before Ignite's own (consoles).
    pub cmdline: String,
    /// Put `ignite.yes` on the command line: restore without asking.
    pub yes: bool,
}

/// What `write_iso` made.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Written {
    /// `NAME@ID` of the capture in the medium's store.
    pub capture: String,
    pub chunks: u64,
    /// Compressed bytes of the copied chunks.
    pub stored_bytes: u64,
    pub iso_bytes: u64,
}

/// Copies capture `spec` of `from` into a new store at `to` (which must not hold one):
/// every chunk of its disks as stored, each disk's block snapshot, then its record naming
/// the new snapshots. Returns `NAME@ID` of the copy, chunks and stored bytes copied.
pub fn copy_capture(from: &Store, spec: &str, to: &Path) -> Result<(String, u64, u64)> {
    let (m, rec) = Record::load(from, spec)?;
    let label = format!("{}@{}", rec.name, short(&m.id));
    if rec.kind != CaptureKind::Block {
        bail!("capture {label} is a {} capture; recovery media carry block captures (capture the guest's disks, or the client's with --disk)", rec.kind);
    }
    let dst = Store::init(to, from.config().clone())
        .with_context(|| format!("cannot make the medium's store in {}", to.display()))?;
    let mut copy = rec.clone();
    let (mut chunks, mut bytes) = (0u64, 0u64);
    for d in &mut copy.disks {
        let dm = from.resolve(&d.snapshot)?;
        let blocks = from.load_image(&dm)?;
        let mut seen = HashSet::new();
        let ids: Vec<ChunkId> = blocks
            .iter()
            .flatten()
            .filter(|id| seen.insert(**id))
            .copied()
            .collect();
        let writer = Writer::new(&dst)?;
        for batch in ids.chunks(BATCH_CHUNKS) {
            let stored = batch
                .iter()
                .map(|id| {
                    let (e, data) = from.read_chunk_stored(id)?;
                    bytes += data.len() as u64;
                    Ok(StoredChunk {
                        id: *id,
                        codec: e.codec,
                        raw_len: e.raw_len,
                        data,
                    })
                })
                .collect::<ignite_archive::Result<Vec<_>>>()?;
            // upload() checks every chunk against its id: a damaged source store stops here.
            writer.upload(&stored)?;
            chunks += batch.len() as u64;
        }
        let copied = writer.commit_uploaded(Draft {
            name: dm.name.clone(),
            labels: dm.labels.clone(),
            parent: None,
            content: DraftContent::Image {
                size: dm.image_size.unwrap_or(0),
                block_size: dm.block_size.unwrap_or(0),
                blocks,
            },
            stats: dm.stats.clone(),
        })?;
        d.snapshot = copied.id;
    }
    let saved = copy.save(&dst)?;
    Ok((format!("{}@{}", copy.name, saved.id), chunks, bytes))
}

/// The disks of capture `spec` in `store` with each one's block list, in order.
pub fn plan(store: &Store, spec: &str) -> Result<(RecoverPlan, Vec<Vec<Option<ChunkId>>>)> {
    let (m, rec) = Record::load(store, spec)?;
    let mut disks = Vec::new();
    let mut blocks = Vec::new();
    for d in &rec.disks {
        let dm: Manifest = store.resolve(&d.snapshot)?;
        blocks.push(store.load_image(&dm)?);
        disks.push(RecoverDisk {
            index: d.index,
            snapshot: dm.id.clone(),
            size: dm.image_size.unwrap_or(0),
            block_size: u64::from(dm.block_size.unwrap_or(0)),
        });
    }
    let plan = RecoverPlan {
        capture: format!("{}@{}", rec.name, m.id),
        disks,
    };
    Ok((plan, blocks))
}

fn on_path(tool: &str) -> bool {
    std::env::var_os("PATH")
        .is_some_and(|p| std::env::split_paths(&p).any(|d| d.join(tool).is_file()))
}

/// GRUB's menu: serial and screen consoles, one entry booted at once.
fn grub_cfg(title: &str, cmdline: &str) -> String {
    format!(
        "serial --unit=0 --speed=115200\n\
         terminal_input console serial\n\
         terminal_output console serial\n\
         set timeout=2\n\
         menuentry \"{title}\" {{\n\
         \tlinux /ignite/vmlinuz {cmdline}\n\
         \tinitrd /ignite/initrd.img\n\
         }}\n"
    )
}

/// The kernel command line of a medium restoring `capture`.
pub fn cmdline(files: &MediaFiles, capture: &str) -> String {
    let mut c = format!(
        "{} ignite.action={ACTION} ignite.snapshot={capture}",
        files.cmdline
    );
    if files.yes {
        c.push_str(" ignite.yes");
    }
    c.trim().to_string()
}

/// Writes the recovery ISO of capture `spec` to `out` (through a temporary name beside it:
/// a failure leaves no half ISO).
pub fn write_iso(from: &Store, spec: &str, files: &MediaFiles, out: &Path) -> Result<Written> {
    for tool in ["grub-mkrescue", "xorriso", "mformat"] {
        if !on_path(tool) {
            bail!("{tool} is not installed; recovery media need Debian's grub-common, grub-pc-bin, grub-efi-amd64-bin, xorriso and mtools");
        }
    }
    for f in [&files.kernel, &files.initrd] {
        if !f.is_file() {
            bail!(
                "{} is missing; `ignite server --prepare` makes the install kernel and the agent initramfs (or give --boot-dir)",
                f.display()
            );
        }
    }
    let parent = match out.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    };
    let root = tempfile::Builder::new()
        .prefix(".ignite-media-")
        .tempdir_in(parent)
        .with_context(|| format!("cannot make a scratch directory in {}", parent.display()))?;
    let (capture, chunks, stored_bytes) = copy_capture(from, spec, &root.path().join(STORE_DIR))?;
    let ign = root.path().join("ignite");
    std::fs::create_dir_all(&ign)?;
    for (f, name) in [(&files.kernel, "vmlinuz"), (&files.initrd, "initrd.img")] {
        std::fs::copy(f, ign.join(name)).with_context(|| format!("cannot copy {}", f.display()))?;
    }
    let grub = root.path().join("boot/grub");
    std::fs::create_dir_all(&grub)?;
    std::fs::write(
        grub.join("grub.cfg"),
        grub_cfg(
            &format!("Ignite recovery of {capture}"),
            &cmdline(files, &capture),
        ),
    )?;
    let tmp = parent.join(format!(
        ".{}.tmp",
        out.file_name()
            .map_or("media.iso".into(), |n| n.to_string_lossy())
    ));
    let made = sh(Command::new("grub-mkrescue")
        .arg("-o")
        .arg(&tmp)
        .arg(root.path())
        // Volume id: what the ISO is called when mounted elsewhere.
        .args(["--", "-volid", "IGNITE_RECOVERY"]))
    .context("grub-mkrescue failed");
    if let Err(e) = made {
        let _ = std::fs::remove_file(&tmp);
        return Err(e);
    }
    std::fs::rename(&tmp, out).with_context(|| format!("cannot write {}", out.display()))?;
    let iso_bytes = std::fs::metadata(out)?.len();
    Ok(Written {
        capture,
        chunks,
        stored_bytes,
        iso_bytes,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::capture::block::BlockDisk;
    use crate::capture::record::{CaptureStats, SourceInfo};
    use crate::capture::{finish, read_disks};
    use ignite_archive::{FileImage, Progress, StoreConfig};
    use std::os::unix::fs::FileExt;
    use std::sync::Arc;
    use std::time::Instant;

    /// Captures `img` as `name` into `store`.
    fn capture(store: &Arc<Store>, name: &str, img: &Path) {
        let disks = vec![BlockDisk {
            index: 0,
            reader: Box::new(FileImage::open(img).unwrap()),
            changes: None,
        }];
        let ms = read_disks(store, name, &disks, &Progress::default()).unwrap();
        let source = SourceInfo::Client {
            mac: None,
            facts: serde_json::json!({}),
        };
        finish(
            store.clone(),
            name,
            source,
            &[(0, ms[0].clone())],
            CaptureStats::default(),
            Instant::now(),
        )
        .unwrap();
    }

    fn image(path: &Path, seed: u8) {
        let f = std::fs::File::create(path).unwrap();
        f.set_len(8 << 20).unwrap();
        // Two different blocks, one repeated, the rest a gap of zeros.
        let block = |v: u8| vec![v; 64 << 10];
        f.write_all_at(&block(seed), 0).unwrap();
        f.write_all_at(&block(seed.wrapping_add(1)), 1 << 20)
            .unwrap();
        f.write_all_at(&block(seed), 4 << 20).unwrap();
    }

    #[test]
    fn the_medium_store_holds_the_capture_and_nothing_else() {
        let tmp = tempfile::tempdir().unwrap();
        let cfg = StoreConfig {
            block_size: 64 << 10,
            ..StoreConfig::default()
        };
        let src = Arc::new(Store::init(&tmp.path().join("src"), cfg).unwrap());
        image(&tmp.path().join("a.img"), 1);
        image(&tmp.path().join("b.img"), 9);
        capture(&src, "a", &tmp.path().join("a.img"));
        capture(&src, "b", &tmp.path().join("b.img"));

        let to = tmp.path().join("medium");
        let (spec, chunks, bytes) = copy_capture(&src, "a", &to).unwrap();
        assert!(spec.starts_with("a@"), "{spec}");
        let dst = Store::open(&to).unwrap();
        let (want, want_blocks) = plan(&src, "a").unwrap();
        let (got, got_blocks) = plan(&dst, &spec).unwrap();
        assert_eq!(got_blocks, want_blocks);
        assert_eq!(got.disks.len(), 1);
        assert_eq!(
            (got.disks[0].size, got.disks[0].block_size),
            (want.disks[0].size, want.disks[0].block_size)
        );
        // The disk's two distinct blocks (its gap is no chunk), and none of b's.
        let disk_chunks = 2;
        assert_eq!(chunks, disk_chunks);
        assert!(bytes > 0);
        let names: Vec<String> = dst
            .list_snapshots()
            .unwrap()
            .into_iter()
            .map(|m| m.name)
            .collect();
        assert!(names.iter().all(|n| n.starts_with('a')), "{names:?}");
        assert_eq!(names.len(), 2, "{names:?}");
        // A store already there is never written over.
        let again = copy_capture(&src, "a", &to).unwrap_err();
        assert!(format!("{again:#}").contains("medium's store"), "{again:#}");
    }

    #[test]
    fn yes_is_on_the_command_line_only_when_asked_for() {
        let mut f = MediaFiles {
            kernel: "k".into(),
            initrd: "i".into(),
            cmdline: "console=ttyS0".into(),
            yes: false,
        };
        assert_eq!(
            cmdline(&f, "web1@00ff"),
            "console=ttyS0 ignite.action=recover-media ignite.snapshot=web1@00ff"
        );
        f.yes = true;
        assert!(cmdline(&f, "web1@00ff").ends_with(" ignite.yes"));
    }

    #[test]
    fn missing_boot_files_are_named_before_anything_is_made() {
        let tmp = tempfile::tempdir().unwrap();
        let src = Store::init(&tmp.path().join("src"), StoreConfig::default()).unwrap();
        let f = MediaFiles {
            kernel: tmp.path().join("vmlinuz"),
            initrd: tmp.path().join("initrd.img"),
            cmdline: String::new(),
            yes: false,
        };
        let out = tmp.path().join("out.iso");
        let e = format!("{:#}", write_iso(&src, "a", &f, &out).unwrap_err());
        assert!(
            e.contains("vmlinuz is missing") || e.contains("is not installed"),
            "{e}"
        );
        assert!(!out.exists());
        assert_eq!(std::fs::read_dir(tmp.path()).unwrap().count(), 1);
    }
}
