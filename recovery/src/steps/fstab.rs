//! The `Fstab` step: /etc/fstab naming every mounted file system and swap space (partitions
//! and logical volumes) by the UUID the agent gave it. (The runner also writes the array's
//! line into /etc/mdadm/mdadm.conf in this step: see `volumes`.)

use anyhow::{Context, Result};
use ignite_profiles::{Fs, InstallPlan};

use super::mount::{fs_type, Target};
use crate::log::Log;

fn uuid_of<'t>(target: &'t Target, device: &str) -> Result<&'t str> {
    target
        .uuids
        .get(device)
        .map(String::as_str)
        .with_context(|| {
            format!("partition {device} was not formatted by this install; it has no known UUID")
        })
}

pub fn render(target: &Target, plan: &InstallPlan) -> Result<String> {
    let mut out = String::from("# Written by the Ignite install agent.\n# <file system> <mount point> <type> <options> <dump> <pass>\n");
    for m in &target.mounted {
        let opts = if m.options.is_empty() {
            match m.fs {
                Fs::Vfat => "umask=0077".to_string(),
                _ => "defaults".to_string(),
            }
        } else {
            m.options.join(",")
        };
        let pass = if m.mount == "/" { 1 } else { 2 };
        out.push_str(&format!(
            "UUID={} {} {} {opts} 0 {pass}\n",
            uuid_of(target, &m.device)?,
            m.mount,
            fs_type(m.fs)
        ));
    }
    for device in plan.swap_devices() {
        out.push_str(&format!(
            "UUID={} none swap sw 0 0\n",
            uuid_of(target, device)?
        ));
    }
    Ok(out)
}

pub fn write(target: &Target, plan: &InstallPlan, log: &mut Log) -> Result<()> {
    let text = render(target, plan)?;
    let path = target.path("/etc/fstab");
    std::fs::write(&path, &text).with_context(|| format!("cannot write {}", path.display()))?;
    log.line(text.trim_end());
    Ok(())
}
