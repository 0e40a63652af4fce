//! `ignite profile`: check install profiles and show the plan one renders for a client.

use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use clap::{Parser, Subcommand};
use ignite_profiles::{ClientFacts, DiskFact, InstallPlan, LoadError, Profile, Step};

use super::remote::{default_state_dir, segment, Remote, ServerOpts, Upload};
pub(crate) use crate::server::api_v1::profiles::parse_disk;
use crate::server::api_v1::profiles::{check, facts, Checked};

#[derive(Parser)]
pub struct Args {
    #[command(flatten)]
    api: ServerOpts,
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Check profiles: every error, one per line, with file, line and column. Exit 1 if any.
    ///
    /// With --server the server checks them: `extends` then names a profile of the server.
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

/// Profile `file` checked (and rendered for `client`) here, or by the server.
fn checked(remote: Option<&Remote>, file: &Path, client: Option<&ClientFacts>) -> Result<Checked> {
    let name = file.display().to_string();
    let Some(r) = remote else {
        return check(&name, Profile::load(file), client);
    };
    let text = match std::fs::read_to_string(file) {
        Ok(t) => t,
        Err(e) => {
            let unread = LoadError::Read {
                file: name.clone(),
                error: e.to_string(),
            };
            return check(&name, Err(unread), None);
        }
    };
    let mut path = format!("/api/v1/profiles/check?file={}", segment(&name));
    if let Some(c) = client {
        let disks: Vec<String> = c
            .disks
            .iter()
            .map(|d| match &d.serial {
                Some(s) => format!("{}:{}B:{s}", d.path, d.size),
                None => format!("{}:{}B", d.path, d.size),
            })
            .collect();
        path += &format!(
            "&mac={}&disk={}",
            segment(&c.mac),
            segment(&disks.join(","))
        );
        if let Some(h) = &c.hostname {
            path += &format!("&hostname={}", segment(h));
        }
    }
    r.post_body(&path, "application/toml", Upload::Text(text))
}

/// A failed check's problems, one per line (exit status 1 follows).
fn report(c: &Checked) {
    for e in &c.errors {
        println!("{}", e.text);
    }
}

pub fn run(args: Args) -> Result<()> {
    let remote = args.api.remote_if_asked(&default_state_dir())?;
    match args.cmd {
        Cmd::Check { files } => {
            let mut bad = false;
            for f in &files {
                let c = checked(remote.as_ref(), f, None)?;
                if c.ok {
                    eprintln!(
                        "profile {}: ok ({} partitions, archive {})",
                        f.display(),
                        c.partitions.unwrap_or_default(),
                        c.archive.as_deref().unwrap_or_default()
                    );
                } else {
                    report(&c);
                    bad = true;
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
            let client = facts(&mac, disks, hostname);
            let c = checked(remote.as_ref(), &file, Some(&client))?;
            if !c.ok {
                report(&c);
                std::process::exit(1);
            }
            let plan = c.plan.context("the check rendered no plan")?;
            if json {
                println!(
                    "{}",
                    serde_json::to_string_pretty(&plan).context("plan to JSON")?
                );
                return Ok(());
            }
            print_plan(&plan)
        }
    }
}

fn print_plan(plan: &InstallPlan) -> Result<()> {
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
