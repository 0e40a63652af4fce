//! `ignite install`: installs a profile onto a disk of this machine from a local store, with
//! the same steps the network install agent runs (also how guest disk images are prepared
//! host-side, on a loop device).

use std::path::PathBuf;

use anyhow::{Context, Result};
use clap::Args as ClapArgs;
use ignite_profiles::{ClientFacts, DiskFact, Profile};

use ignite_recovery::steps::partition::{device_sector_size, device_size};
use ignite_recovery::{facts, runner, source};

#[derive(ClapArgs)]
pub struct Args {
    /// The install profile (TOML).
    #[arg(long)]
    profile: PathBuf,
    /// The disk to install on (its contents are lost): /dev/sdX, or a disk image file.
    #[arg(long)]
    disk: String,
    #[arg(long, env = "IGNITE_STORE")]
    store: PathBuf,
    /// The per-client hostname (the profile template's `{name}`).
    #[arg(long)]
    hostname: Option<String>,
    /// The MAC address the hostname template and the `boot` interface use.
    #[arg(long, default_value = "02:00:00:00:00:01")]
    mac: String,
    /// Where the target is mounted while installing.
    #[arg(long, default_value = "/run/ignite/target")]
    root: PathBuf,
}

pub fn run(a: Args) -> Result<()> {
    let profile = Profile::load(&a.profile).map_err(|e| anyhow::anyhow!("{e}"))?;
    let f =
        std::fs::File::open(&a.disk).with_context(|| format!("disk {}: cannot open it", a.disk))?;
    let size = device_size(&f).with_context(|| format!("disk {}", a.disk))?;
    // An image has 512-byte sectors; a block device says.
    let sector_size = device_sector_size(&f)
        .with_context(|| format!("disk {}", a.disk))?
        .unwrap_or(ignite_profiles::SECTOR);
    let name = std::fs::canonicalize(&a.disk)
        .ok()
        .and_then(|p| p.file_name().map(|n| n.to_string_lossy().into_owned()));
    let serial = name
        .and_then(|n| facts::disk(std::path::Path::new("/sys/block"), &n))
        .and_then(|d| d.serial);
    let facts = ClientFacts {
        mac: a.mac,
        disks: vec![DiskFact {
            path: a.disk.clone(),
            size,
            serial,
            sector_size,
            ..Default::default()
        }],
        hostname: a.hostname,
    };
    let source = source::Store::new(profile, a.store);
    runner::install(&source, &facts, &a.root)
}
