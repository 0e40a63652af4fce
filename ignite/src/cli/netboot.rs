//! `ignite netboot`: boot-file fetching, lease listing and benchmarks.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use clap::{Args, Subcommand};

use super::remote::ServerOpts;
use crate::bootfiles;
use crate::state::views::LeaseView;

#[derive(Args)]
pub struct NetbootArgs {
    #[command(subcommand)]
    cmd: NetbootCmd,
}

#[derive(Subcommand)]
enum NetbootCmd {
    /// Fill a boot directory with iPXE (Debian package ipxe) and, with --kernel, a Debian
    /// kernel (linux-image-amd64) plus a small busybox initramfs.
    FetchBootFiles {
        #[arg(long, env = "IGNITE_BOOT_DIR", default_value = "/var/lib/ignite/boot")]
        boot_dir: PathBuf,
        /// Also fetch the kernel and build the test initramfs (debian/vmlinuz, debian/initrd.img).
        #[arg(long)]
        kernel: bool,
        /// Where downloaded .deb packages are kept between runs.
        #[arg(long, env = "IGNITE_CACHE_DIR", default_value = "/var/cache/ignite")]
        cache_dir: PathBuf,
        /// Text the initramfs prints on the console before powering off.
        #[arg(long, default_value = "IGNITE-INITRAMFS-OK")]
        marker: String,
    },
    /// Build the install initramfs: this `ignite` as /init (the install agent), the kernel
    /// modules it needs, mkfs tools with their libraries, busybox for the rescue shell.
    BuildInitramfs {
        /// The kernel version the modules are for (`uname -r` of the install kernel).
        /// Default: the kernel `fetch-boot-files --kernel` serves (the one the package
        /// linux-image-amd64 depends on).
        #[arg(long)]
        kernel_version: Option<String>,
        /// /lib/modules/VERSION, a package root holding lib/modules/VERSION, or a
        /// linux-image .deb. Default: /lib/modules/VERSION, else package
        /// linux-image-VERSION from the cache (downloaded with apt).
        #[arg(long)]
        modules_from: Option<PathBuf>,
        #[arg(long, default_value = "ignite-initrd.img")]
        output: PathBuf,
        #[arg(long, env = "IGNITE_CACHE_DIR", default_value = "/var/cache/ignite")]
        cache_dir: PathBuf,
    },
    /// Benchmarks against the usual peers (tftpd-hpa, dnsmasq, perfdhcp), side by side.
    Bench(crate::cli::netboot_bench::BenchArgs),
    /// List DHCP leases.
    Leases {
        #[arg(long, env = "IGNITE_STATE_DIR", default_value = "/var/lib/ignite")]
        state_dir: PathBuf,
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        api: ServerOpts,
    },
}

pub fn run(a: NetbootArgs) -> Result<()> {
    match a.cmd {
        NetbootCmd::FetchBootFiles {
            boot_dir,
            kernel,
            cache_dir,
            marker,
        } => bootfiles::fetch_boot_files(&boot_dir, kernel, &cache_dir, &marker),
        NetbootCmd::Leases {
            state_dir,
            json,
            api,
        } => leases(&state_dir, json, &api),
        NetbootCmd::Bench(b) => crate::cli::netboot_bench::run(b),
        NetbootCmd::BuildInitramfs {
            kernel_version,
            modules_from,
            output,
            cache_dir,
        } => {
            let version = match kernel_version {
                Some(v) => v,
                None => bootfiles::kernel_package()?
                    .strip_prefix("linux-image-")
                    .map(str::to_string)
                    .context("the kernel package name does not start with linux-image-")?,
            };
            bootfiles::build_initramfs(&version, modules_from, &output, &cache_dir)
        }
    }
}

fn leases(state_dir: &Path, json: bool, api: &ServerOpts) -> Result<()> {
    let rows: Vec<LeaseView> = match api.remote(state_dir)? {
        Some(r) => r.get("/api/v1/leases")?,
        None => crate::state::State::open(state_dir)?.lease_views()?,
    };
    if json {
        println!("{}", serde_json::to_string_pretty(&rows)?);
    } else {
        println!(
            "{:<16} {:<18} {:<9} {:<6} EXPIRES",
            "IP", "MAC", "STATE", "ACTIVE"
        );
        for r in rows {
            println!(
                "{:<16} {:<18} {:<9} {:<6} {}",
                r.ip,
                r.mac.as_deref().unwrap_or("-"),
                r.state,
                r.active,
                r.expires
            );
        }
    }
    Ok(())
}
