//! Boot action `recover-media`: the agent booted from recovery media (`ignite recovery
//! media`) restores the capture the medium carries onto this machine's disks, with no
//! network. The medium is the CD (or disk, for an ISO written to a USB stick) holding
//! `ignite-recovery/store`; it is mounted read-only, every target disk's size is checked
//! before anything is written, and unless the command line says `ignite.yes` the operator
//! confirms on the console.

use std::io::BufRead;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use ignite_archive::Store;
use ignite_profiles::DiskFact;
use ignite_recovery::media::{plan, STORE_DIR};
use ignite_recovery::recover::recover_disk;
use ignite_recovery::steps::mount::mount;

const MEDIUM_WAIT: Duration = Duration::from_secs(60);
const MOUNT_POINT: &str = "/run/ignite/media";

fn say(text: &str) {
    eprintln!("ignite-agent: {text}");
}

/// Block devices that may hold the medium: CD drives first, then whole disks.
fn candidates(sys_block: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(sys_block)
        .map(|rd| {
            rd.flatten()
                .filter_map(|e| e.file_name().into_string().ok())
                .filter(|n| {
                    !["loop", "ram", "zram", "dm-", "md", "nbd"]
                        .iter()
                        .any(|p| n.starts_with(p))
                })
                .collect()
        })
        .unwrap_or_default();
    names.sort_by_key(|n| (!n.starts_with("sr"), n.clone()));
    names
}

/// Mounts the first device holding a medium's store read-only; returns the device.
fn find_medium(settle: &dyn Fn()) -> Result<String> {
    let at = Path::new(MOUNT_POINT);
    std::fs::create_dir_all(at)?;
    let start = Instant::now();
    loop {
        settle();
        let mut tried = Vec::new();
        for name in candidates(Path::new("/sys/block")) {
            let dev = format!("/dev/{name}");
            if mount(&dev, at, Some("iso9660"), libc::MS_RDONLY, "").is_err() {
                continue;
            }
            if at.join(STORE_DIR).join("config.json").is_file() {
                return Ok(dev);
            }
            tried.push(dev);
            let _ = ignite_recovery::steps::mount::umount(at, 0);
        }
        if start.elapsed() > MEDIUM_WAIT {
            bail!(
                "no recovery medium (a disc holding {STORE_DIR}) appeared within {} s; ISO 9660 file systems seen: {}",
                MEDIUM_WAIT.as_secs(),
                if tried.is_empty() { "none".into() } else { tried.join(" ") }
            );
        }
        std::thread::sleep(Duration::from_millis(500));
    }
}

/// Asks on the console; anything but `yes` refuses.
fn confirm(question: &str) -> Result<()> {
    say(question);
    eprint!("ignite-agent: type yes to go on: ");
    let mut line = String::new();
    std::io::stdin()
        .lock()
        .read_line(&mut line)
        .context("cannot read the answer from the console")?;
    if line.trim() != "yes" {
        bail!("not confirmed on the console; nothing was written (boot with ignite.yes to skip the question)");
    }
    Ok(())
}

/// The restore: `snapshot` is `NAME@ID` in the medium's store, `disks` waits for this
/// machine's disks, `settle` loads the drivers the devices seen so far ask for (a CD drive
/// appears behind its controller's driver, and needs sr_mod in turn).
pub fn recover_media(
    snapshot: Option<&str>,
    yes: bool,
    disks: &dyn Fn() -> Result<Vec<DiskFact>>,
    settle: &dyn Fn(),
) -> Result<()> {
    let spec = snapshot.context(
        "the kernel command line lacks ignite.snapshot=NAME@ID; boot from media `ignite recovery media` made",
    )?;
    let medium = find_medium(settle)?;
    say(&format!("recovery medium on {medium}"));
    let store_dir = PathBuf::from(MOUNT_POINT).join(STORE_DIR);
    let store = Store::open(&store_dir)
        .with_context(|| format!("the medium's store {}", store_dir.display()))?;
    let (plan, blocks) = plan(&store, spec)?;
    // An ISO written to a USB stick is itself a disk: never a target.
    let targets: Vec<DiskFact> = disks()?.into_iter().filter(|d| d.path != medium).collect();
    ignite_recovery::recover::check_fits(&plan, &targets)
        .context("the disks besides the medium")?;
    let what: Vec<String> = plan
        .disks
        .iter()
        .zip(&targets)
        .map(|(d, disk)| format!("disk {} ({} bytes) onto {}", d.index, d.size, disk.path))
        .collect();
    let question = format!(
        "restore {} from the medium: {}; everything on those disks is overwritten",
        plan.capture,
        what.join(", ")
    );
    if yes {
        say(&question);
    } else {
        confirm(&question)?;
    }
    let t = Instant::now();
    for ((d, disk), blocks) in plan.disks.iter().zip(&targets).zip(&blocks) {
        let mut last = Instant::now();
        let r = recover_disk(
            Path::new(&disk.path),
            d,
            blocks,
            &store,
            &mut |done, total| {
                if last.elapsed() > Duration::from_secs(10) {
                    last = Instant::now();
                    say(&format!("disk {}: {done} of {total} bytes", d.index));
                }
            },
        )?;
        say(&format!(
            "recovered disk {} of {} onto {}: {} blocks, {} already as captured, {} read from the medium, {} zeroed, {} bytes written",
            d.index, plan.capture, disk.path, r.blocks, r.same, r.fetched, r.zeroed, r.bytes_written
        ));
    }
    say(&format!(
        "RECOVERY-MEDIA-DONE {} in {:.1} s",
        plan.capture,
        t.elapsed().as_secs_f64()
    ));
    let _ = ignite_recovery::steps::mount::umount(Path::new(MOUNT_POINT), 0);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cd_drives_are_tried_first_and_virtual_devices_never() {
        let d = tempfile::tempdir().unwrap();
        for n in ["vda", "sr1", "loop0", "sda", "sr0", "ram0", "nbd0"] {
            std::fs::create_dir(d.path().join(n)).unwrap();
        }
        assert_eq!(candidates(d.path()), ["sr0", "sr1", "sda", "vda"]);
    }
}
