//! The plan runner: runs an [`InstallPlan`] step by step on this machine, reporting each
//! phase to its [`Source`]. The agent (`/init` of the install initramfs) runs it against the
//! server ([`crate::source::Http`]); `ignite install` runs the same steps from a local store
//! ([`crate::source::Store`]). An install is a restore of a golden archive onto a fresh layout.
//!
//! A plan's RAID array and LVM volume group are not steps of their own: they are made right
//! after the last `Partition` step (within the `partitioned` phase), and stopped after the
//! last unmount; see [`crate::steps::volumes`].

use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use ignite_profiles::{ClientFacts, InstallPlan, Step};

use crate::log::Log;
use crate::protocol::{Phase, Source};
use crate::steps::mount::Target;
use crate::steps::{bootloader, chroot, format, fstab, identity, network, partition, volumes};

/// The whole install: asks `server` for the plan for `facts`, runs it under `root`, and
/// reports `Done`, or `Failed` with the error and the log's tail.
pub fn install(server: &dyn Source, facts: &ClientFacts, root: &std::path::Path) -> Result<()> {
    let mut log = Log::new(server);
    let result = server
        .plan(facts)
        .context("cannot get the install plan")
        .and_then(|plan| {
            log.line(&format!(
                "plan: profile {}, hostname {}, disk {}, {} steps",
                plan.profile,
                plan.hostname,
                plan.disks()
                    .map(|d| d.path.as_str())
                    .collect::<Vec<_>>()
                    .join(" and "),
                plan.steps.len()
            ));
            run_plan(server, &plan, root, &mut log)
        });
    match result {
        Ok(()) => {
            log.line("install done");
            server.report(&Phase::Done)
        }
        Err(e) => {
            let error = format!("{e:#}");
            log.line(&format!("install failed: {error}"));
            if let Err(r) = server.report(&Phase::Failed {
                error: error.clone(),
                log_tail: log.tail(),
            }) {
                eprintln!("ignite-agent: cannot report the failure: {r:#}");
            }
            Err(e)
        }
    }
}

/// Runs every step of `plan` with the target root at `root`, reporting phases. On error the
/// mounts made so far are undone and the error is returned (the caller reports `Failed`).
pub fn run_plan(
    server: &dyn Source,
    plan: &InstallPlan,
    root: &std::path::Path,
    log: &mut Log,
) -> Result<()> {
    let mut target = Target::new(root)?;
    let steps = &plan.steps;
    for (i, step) in steps.iter().enumerate() {
        log.line(&format!(
            "step {}/{}: {}",
            i + 1,
            steps.len(),
            describe(step)
        ));
        run_step(server, plan, step, &mut target, log)
            .with_context(|| format!("step {} ({})", i + 1, describe(step)))?;
        let next = steps.get(i + 1);
        if matches!(step, Step::Partition { .. }) && !matches!(next, Some(Step::Partition { .. })) {
            volumes::make(plan, log).context("after partitioning")?;
        }
        // Phases are reported when the last step of their kind is done.
        let phase = match (step, next) {
            (Step::Partition { .. }, Some(Step::Partition { .. })) => None,
            (Step::Partition { .. }, _) => Some(Phase::Partitioned),
            (Step::Format { .. }, Some(Step::Format { .. })) => None,
            (Step::Format { .. }, _) => Some(Phase::Formatted),
            (Step::BootLoader { .. }, _) => Some(Phase::BootLoader),
            _ => None,
        };
        if let Some(p) = phase {
            server.report(&p)?;
        }
        let last_config = !steps[i + 1..].iter().any(configures);
        if configures(step) && last_config {
            server.report(&Phase::Configured)?;
        }
    }
    target.unmount_all(log)?;
    volumes::stop(plan, log)
}

/// True for the identity/network/hook steps that make up the `Configured` phase.
fn configures(step: &Step) -> bool {
    !matches!(
        step,
        Step::Partition { .. }
            | Step::Format { .. }
            | Step::Mount { .. }
            | Step::Extract { .. }
            | Step::Unmount
    )
}

fn run_step(
    server: &dyn Source,
    plan: &InstallPlan,
    step: &Step,
    target: &mut Target,
    log: &mut Log,
) -> Result<()> {
    match step {
        Step::Partition { disk } => {
            let d = plan
                .disks()
                .find(|d| &d.path == disk)
                .with_context(|| format!("the plan has no layout for disk {disk}"))?;
            partition::partition(d, disk, log)
        }
        Step::Format { device, fs, label } => {
            let uuid = format::format(device, *fs, label, plan.disk.sector_size, log)?;
            target.uuids.insert(device.clone(), uuid);
            Ok(())
        }
        Step::Mount {
            device,
            mount,
            fs,
            options,
        } => target.mount(device, mount, *fs, options, log),
        Step::Extract { archive } => {
            let started = Instant::now();
            let mut last = Instant::now();
            let mut report_err = None;
            let bytes = server.extract(archive, target.root(), &mut |done, total| {
                if last.elapsed() >= Duration::from_secs(1) {
                    last = Instant::now();
                    if let Err(e) = server.report(&Phase::Extracting { done, total }) {
                        report_err.get_or_insert(e);
                    }
                }
            })?;
            if let Some(e) = report_err {
                log.line(&format!("warning: progress report failed: {e:#}"));
            }
            // On disk before `extracted` is reported, so the phase times say where the time
            // went: write-back would otherwise land in whichever step comes next.
            let written = started.elapsed();
            rustix::fs::sync();
            log.line(&format!(
                "extracted {archive}: {bytes} bytes in {:.1} s, then {:.1} s until on disk",
                written.as_secs_f64(),
                (started.elapsed() - written).as_secs_f64()
            ));
            server.report(&Phase::Extracted { bytes })
        }
        Step::Fstab => {
            fstab::write(target, plan, log)?;
            match &plan.raid {
                Some(raid) => volumes::write_mdadm_conf(target.root(), raid, log),
                None => Ok(()),
            }
        }
        Step::Hostname { hostname } => identity::hostname(target.root(), hostname, log),
        Step::MachineId => identity::machine_id(target.root(), log).map(|_| ()),
        Step::SshHostKeys => identity::ssh_host_keys(target, log),
        Step::RootAuthorizedKeys { keys } => identity::root_authorized_keys(target.root(), keys),
        Step::User { user } => identity::user(target, user, log),
        Step::Network {
            format,
            mac,
            interfaces,
        } => network::write(target.root(), *format, mac, interfaces, log),
        Step::BootLoader {
            loader,
            firmware,
            disk,
        } => bootloader::install(target, plan, *loader, *firmware, disk, log),
        Step::Hook { index, command } => chroot::hook(target, *index, command, log),
        Step::Unmount => target.unmount_all(log),
    }
}

/// One line naming a step, for the log.
fn describe(step: &Step) -> String {
    match step {
        Step::Partition { disk } => format!("partition {disk}"),
        Step::Format { device, fs, .. } => format!("format {device} as {fs:?}"),
        Step::Mount { device, mount, .. } => format!("mount {device} on {mount}"),
        Step::Extract { archive } => format!("extract {archive}"),
        Step::Fstab => "write /etc/fstab".into(),
        Step::Hostname { hostname } => format!("hostname {hostname}"),
        Step::MachineId => "fresh machine-id".into(),
        Step::SshHostKeys => "fresh SSH host keys".into(),
        Step::RootAuthorizedKeys { keys } => format!("{} root authorized keys", keys.len()),
        Step::User { user } => format!("user {}", user.name),
        Step::Network { format, .. } => format!("network ({format:?})"),
        Step::BootLoader {
            loader, firmware, ..
        } => format!("boot loader {loader:?} for {firmware:?}"),
        Step::Hook { index, command } => format!("hook {index}: {command}"),
        Step::Unmount => "unmount".into(),
    }
}
