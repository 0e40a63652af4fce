//! `ignite profile`: check install profiles and show the plan one renders for a client.

use anyhow::{bail, Context};
use clap::{Parser, Subcommand};
use ignite_profiles::{parse_bytes, ClientFacts, DiskFact, LoadError, Profile, Step};
use std::path::PathBuf;

#[derive(Parser)]
pub struct Args {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Check profiles: every error, one per line, with file, line and column. Exit 1 if any.
    Check {
        /// Profile files (TOML).
        #[arg(required = true)]
        files: Vec<PathBuf>,
    },
    /// Render a profile for a client and show the install plan.
    Render {
        /// Profile file (TOML).
        file: PathBuf,
        /// The client's boot NIC MAC address.
        #[arg(long)]
        mac: String,
        /// A client disk, PATH:SIZE[:SERIAL] (e.g. /dev/vda:20G); repeat for more, in order.
        #[arg(long = "disk", required = true, value_parser = parse_disk)]
        disks: Vec<DiskFact>,
        /// The client's own hostname (the template's {name}).
        #[arg(long)]
        hostname: Option<String>,
        /// Print the plan as JSON (what the agent receives).
        #[arg(long)]
        json: bool,
    },
}

pub(crate) fn parse_disk(s: &str) -> Result<DiskFact, String> {
    let mut it = s.splitn(3, ':');
    let path = it.next().unwrap_or_default();
    let (Some(size), true) = (it.next(), path.starts_with('/')) else {
        return Err(format!(
            "{s:?}: write PATH:SIZE[:SERIAL], e.g. /dev/vda:20G"
        ));
    };
    let size = parse_bytes(size)?;
    Ok(DiskFact {
        path: path.to_string(),
        size,
        serial: it.next().map(str::to_string),
        sector_size: ignite_profiles::SECTOR,
        ..Default::default()
    })
}

/// Print load errors one per line; exit status 1 follows.
fn report(e: &LoadError) {
    match e {
        LoadError::Invalid(errs) => {
            for d in &errs.0 {
                println!("{d}");
            }
        }
        other => println!("{other}"),
    }
}

pub fn run(args: Args) -> anyhow::Result<()> {
    match args.cmd {
        Cmd::Check { files } => {
            let mut bad = false;
            for f in &files {
                match Profile::load(f) {
                    Ok(p) => eprintln!(
                        "profile {}: ok ({} partitions, archive {})",
                        f.display(),
                        p.disk.partitions.len(),
                        p.archive
                    ),
                    Err(e) => {
                        report(&e);
                        bad = true;
                    }
                }
            }
            if bad {
                std::process::exit(1);
            }
            Ok(())
        }
        Cmd::Render {
            file,
            mac,
            disks,
            hostname,
            json,
        } => {
            let profile = match Profile::load(&file) {
                Ok(p) => p,
                Err(e) => {
                    report(&e);
                    std::process::exit(1);
                }
            };
            let facts = ClientFacts {
                mac,
                disks,
                hostname,
            };
            let plan = profile.render(&facts)?;
            if json {
                println!(
                    "{}",
                    serde_json::to_string_pretty(&plan).context("plan to JSON")?
                );
                return Ok(());
            }
            println!(
                "profile {} → {} (archive {}, MAC {})",
                plan.profile, plan.hostname, plan.archive, plan.mac
            );
            let fs_name = |fs: Option<ignite_profiles::Fs>| {
                fs.map(|f| format!("{f:?}").to_lowercase())
                    .unwrap_or_default()
            };
            for disk in plan.disks() {
                println!(
                    "disk {} ({}), {:?}",
                    disk.path,
                    ignite_profiles::human(disk.size_bytes),
                    disk.table
                );
                for p in &disk.partitions {
                    println!(
                        "  {:<14} {:<10} sectors {:>10}-{:<10} {:>12}  {:<5} {}",
                        p.device,
                        p.name,
                        p.start_sector,
                        p.end_sector,
                        ignite_profiles::human(p.size_bytes),
                        fs_name(p.fs),
                        p.mount.as_deref().unwrap_or("")
                    );
                }
            }
            if let Some(r) = &plan.raid {
                println!(
                    "raid: RAID{} {} over {} ({})",
                    r.level,
                    r.device,
                    r.members.join(", "),
                    ignite_profiles::human(r.size_bytes)
                );
            }
            if let Some(l) = &plan.lvm {
                println!(
                    "lvm: {} on {} ({})",
                    l.vg,
                    l.pvs.join(", "),
                    ignite_profiles::human(l.size_bytes)
                );
                for v in &l.volumes {
                    println!(
                        "  {:<24} {:>12}  {:<5} {} {}",
                        v.device,
                        ignite_profiles::human(v.size_bytes),
                        fs_name(v.fs),
                        v.mount.as_deref().unwrap_or(""),
                        v.note.as_deref().unwrap_or("")
                    );
                }
            }
            println!("steps:");
            for (i, s) in plan.steps.iter().enumerate() {
                println!("  {:>2}. {}", i + 1, describe(s));
            }
            if plan.steps.is_empty() {
                bail!("the plan has no steps");
            }
            Ok(())
        }
    }
}

fn describe(s: &Step) -> String {
    match s {
        Step::Partition { disk } => format!("partition {disk} (GPT)"),
        Step::Format { device, fs, .. } => format!("format {device} as {fs:?}").to_lowercase(),
        Step::Mount { device, mount, .. } => format!("mount {device} on {mount}"),
        Step::Extract { archive } => format!("extract archive {archive}"),
        Step::Fstab => "write /etc/fstab (by UUID)".into(),
        Step::Hostname { hostname } => format!("set hostname {hostname}"),
        Step::MachineId => "fresh /etc/machine-id".into(),
        Step::SshHostKeys => "fresh SSH host keys".into(),
        Step::RootAuthorizedKeys { keys } => format!("root authorized keys ({})", keys.len()),
        Step::User { user } => format!("user {}", user.name),
        Step::Network {
            format, interfaces, ..
        } => format!(
            "network ({format:?}): {}",
            interfaces
                .iter()
                .map(|i| match &i.address {
                    Some(a) => format!("{} {a}", i.name),
                    None => format!("{} dhcp", i.name),
                })
                .collect::<Vec<_>>()
                .join(", ")
        ),
        Step::BootLoader {
            loader,
            firmware,
            disk,
        } => format!("boot loader {loader:?} for {firmware:?} on {disk}"),
        Step::Hook { index, command } => format!("hook {index}: {command}"),
        Step::Unmount => "unmount".into(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn disk_arguments() {
        let d = parse_disk("/dev/vda:20G").unwrap();
        assert_eq!(
            (d.path.as_str(), d.size, d.serial),
            ("/dev/vda", 20 << 30, None)
        );
        let d = parse_disk("/dev/sdb:1T:WD-123").unwrap();
        assert_eq!(d.serial.as_deref(), Some("WD-123"));
        assert!(parse_disk("/dev/vda").is_err());
        assert!(parse_disk("vda:20G").is_err());
        assert!(parse_disk("/dev/vda:20X").is_err());
    }
}
