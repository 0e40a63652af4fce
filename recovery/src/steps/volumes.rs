//! Software RAID and LVM under the file systems, made by the runner once every disk of the
//! plan is partitioned (within the `partitioned` phase), with Debian's own tools, which the
//! agent's initramfs carries: `mdadm` and `lvm`.
//!
//! - RAID1 (`mdadm --create`, metadata 1.2): the superblock 4 KiB into each member, data
//!   from [`RAID_DATA_OFFSET`] on, as the plan sized it, an internal write-intent bitmap (a
//!   member that was away catches up on what changed, not the whole disk). The members are
//!   declared in sync (`--assume-clean`) instead of copied one onto the other: every block
//!   the installed system reads is written through the array first (mkfs, the extract), so
//!   both members hold it; blocks never written may differ, which no file system reads. An
//!   initial resync would take as long as the disks are big, and until it ends only the
//!   first disk holds everything: a machine whose first disk dies before then does not boot.
//! - The ESPs are not mirrored by md (the firmware reads each as a plain FAT file system):
//!   each disk has its own, the boot loader step writes them all and installs a unit that
//!   keeps the others copies of the first (see `bootloader`).
//! - LVM: `pvcreate` on the array (or on each `lvm` partition), `vgcreate -s 4m`, one
//!   `lvcreate` per volume, sized in bytes as the plan says, the `rest` volume last with the
//!   free extents that are left.
//!
//! The agent runs no udev: LVM is told so (`udev_sync=0`, `udev_rules=0`), and creates the
//! `/dev/mapper` nodes itself. The installed system finds the array and the volume group by
//! their content (its initramfs has Debian's mdadm and lvm2 hooks: the golden image needs
//! those packages); `/etc/mdadm/mdadm.conf` gets the array's `ARRAY` line all the same, for
//! its monitor and later initramfs builds. Once the file systems are unmounted, the volume
//! group is deactivated and the array stopped, so both members are marked clean.

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use ignite_profiles::{InstallPlan, LvmPlan, RaidPlan, PV_DATA_START};

use crate::log::Log;

/// What LVM is told about this environment: no udev to wait for or to make nodes.
const LVM_CONFIG: &str =
    "activation { udev_sync = 0 udev_rules = 0 } devices { obtain_device_list_from_udev = 0 }";
/// How long a new array or volume's device node may take to appear.
const DEVICE_WAIT: Duration = Duration::from_secs(15);

/// `mdadm --create` for `raid` (the array named `<hostname>:<name>`).
pub fn raid_create_args(raid: &RaidPlan, hostname: &str) -> Vec<String> {
    let mut args: Vec<String> = vec![
        "--create".into(),
        raid.device.clone(),
        "--run".into(),
        "--assume-clean".into(),
        format!("--level={}", raid.level),
        format!("--raid-devices={}", raid.members.len()),
        "--metadata=1.2".into(),
        format!("--data-offset={}K", raid.data_offset_bytes / 1024),
        "--bitmap=internal".into(),
        format!("--homehost={hostname}"),
        format!("--name={}", raid.name),
    ];
    args.extend(raid.members.iter().cloned());
    args
}

/// The `lvm` commands that make `lvm`'s volume group and volumes, in order.
pub fn lvm_commands(lvm: &LvmPlan) -> Vec<Vec<String>> {
    let s = |x: &str| x.to_string();
    let mut cmds = Vec::new();
    let mut pv = vec![
        s("pvcreate"),
        s("-ff"),
        s("--yes"),
        format!("--dataalignment={}k", PV_DATA_START / 1024),
    ];
    pv.extend(lvm.pvs.iter().cloned());
    cmds.push(pv);
    let mut vg = vec![
        s("vgcreate"),
        s("--yes"),
        format!("--physicalextentsize={}k", lvm.extent_bytes / 1024),
        lvm.vg.clone(),
    ];
    vg.extend(lvm.pvs.iter().cloned());
    cmds.push(vg);
    // The volume that takes the rest goes last: the others have their sizes first.
    let (rest, fixed): (Vec<_>, Vec<_>) = lvm.volumes.iter().partition(|v| v.rest);
    for v in fixed.into_iter().chain(rest) {
        let size = if v.rest {
            s("--extents=100%FREE")
        } else {
            format!("--size={}b", v.size_bytes)
        };
        cmds.push(vec![
            s("lvcreate"),
            s("--yes"),
            s("--wipesignatures=y"),
            s("--zero=y"),
            format!("--name={}", v.name),
            size,
            lvm.vg.clone(),
        ]);
    }
    cmds
}

fn wait_for(device: &str, what: &str) -> Result<()> {
    let start = Instant::now();
    while !Path::new(device).exists() {
        if start.elapsed() > DEVICE_WAIT {
            bail!(
                "{what} {device} did not appear within {} s",
                DEVICE_WAIT.as_secs()
            );
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    Ok(())
}

fn lvm(args: &[String], log: &mut Log) -> Result<String> {
    let mut cmd = Command::new("lvm");
    cmd.arg(&args[0])
        .args(["--config", LVM_CONFIG])
        .args(&args[1..]);
    log.run(&mut cmd)
}

/// Makes the plan's array and volume group, with its volumes.
pub fn make(plan: &InstallPlan, log: &mut Log) -> Result<()> {
    if let Some(raid) = &plan.raid {
        let args = raid_create_args(raid, &plan.hostname);
        log.run(Command::new("mdadm").args(&args))
            .with_context(|| format!("cannot make RAID{} {}", raid.level, raid.device))?;
        wait_for(&raid.device, "RAID array")?;
        log.line(&format!(
            "RAID{} {} over {}: {} bytes",
            raid.level,
            raid.device,
            raid.members.join(", "),
            raid.size_bytes
        ));
    }
    if let Some(l) = &plan.lvm {
        for args in lvm_commands(l) {
            lvm(&args, log).with_context(|| format!("cannot make LVM volume group {}", l.vg))?;
        }
        for v in &l.volumes {
            wait_for(&v.device, "logical volume")?;
        }
        let free = lvm(
            &[
                "vgs".into(),
                "--noheadings".into(),
                "--units=b".into(),
                "--nosuffix".into(),
                "--options=vg_size,vg_free".into(),
                l.vg.clone(),
            ],
            log,
        )?;
        log.line(&format!(
            "LVM {} on {} (size, free in bytes: {}): {}",
            l.vg,
            l.pvs.join(", "),
            free.trim(),
            l.volumes
                .iter()
                .map(|v| format!("{} {}", v.name, v.size_bytes))
                .collect::<Vec<_>>()
                .join(", ")
        ));
    }
    Ok(())
}

/// After the file systems are unmounted: the volume group deactivated, the array stopped.
pub fn stop(plan: &InstallPlan, log: &mut Log) -> Result<()> {
    if let Some(l) = &plan.lvm {
        lvm(
            &["vgchange".into(), "--activate=n".into(), l.vg.clone()],
            log,
        )
        .with_context(|| format!("cannot deactivate volume group {}", l.vg))?;
    }
    if let Some(raid) = &plan.raid {
        log.run(Command::new("mdadm").args(["--stop", &raid.device]))
            .with_context(|| format!("cannot stop RAID array {}", raid.device))?;
    }
    Ok(())
}

/// `/etc/mdadm/mdadm.conf` of the installed system with the array's `ARRAY` line (what
/// `mdadm --detail --brief` says) in place of any the image had.
pub fn mdadm_conf(image_conf: &str, array_line: &str) -> String {
    let mut out: String = image_conf
        .lines()
        .filter(|l| !l.trim_start().starts_with("ARRAY"))
        .map(|l| format!("{l}\n"))
        .collect();
    if !out.is_empty() && !out.ends_with("\n\n") {
        out.push('\n');
    }
    out.push_str("# The install's array (Ignite).\n");
    out.push_str(array_line.trim());
    out.push('\n');
    out
}

/// Writes the array's line into the target's mdadm.conf (`root` is the target root).
pub fn write_mdadm_conf(root: &Path, raid: &RaidPlan, log: &mut Log) -> Result<()> {
    let line = log
        .run(Command::new("mdadm").args(["--detail", "--brief", &raid.device]))
        .with_context(|| format!("cannot read RAID array {}", raid.device))?;
    let path = root.join("etc/mdadm/mdadm.conf");
    let old = std::fs::read_to_string(&path).unwrap_or_default();
    std::fs::create_dir_all(root.join("etc/mdadm"))?;
    let text = mdadm_conf(&old, &line);
    std::fs::write(&path, &text).with_context(|| format!("cannot write {}", path.display()))?;
    log.line(&format!("/etc/mdadm/mdadm.conf: {}", line.trim()));
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use ignite_profiles::{ClientFacts, DiskFact, Profile};

    fn plan(volumes: &str) -> InstallPlan {
        let text = format!(
            "archive = \"debian-12\"\n[disk]\ncount = 2\n[[disk.partitions]]\ntype = \"efi\"\nsize = \"64M\"\n[[disk.partitions]]\ntype = \"raid\"\nsize = \"rest\"\n[raid]\nlevel = 1\n[lvm]\nvg = \"vg0\"\n{volumes}\n[boot]\nfirmware = \"uefi\"\n"
        );
        let p = Profile::from_str_named("m.toml", &text).unwrap();
        let disk = |path: &str| DiskFact {
            path: path.into(),
            size: 4 << 30,
            ..Default::default()
        };
        p.render(&ClientFacts {
            mac: "52:54:00:00:00:01".into(),
            disks: vec![disk("/dev/vda"), disk("/dev/vdb")],
            hostname: None,
        })
        .unwrap()
    }

    const VOLS: &str = "[[lvm.volumes]]\nname = \"root\"\nsize = \"rest\"\nfs = \"ext4\"\nmount = \"/\"\n[[lvm.volumes]]\nname = \"swap\"\nsize = \"100M\"\nfs = \"swap\"\n";

    #[test]
    fn the_array_is_made_as_the_plan_sized_it() {
        let p = plan(VOLS);
        let args = raid_create_args(p.raid.as_ref().unwrap(), "web1");
        assert_eq!(
            args.join(" "),
            "--create /dev/md0 --run --assume-clean --level=1 --raid-devices=2 --metadata=1.2 \
             --data-offset=4096K --bitmap=internal --homehost=web1 --name=root /dev/vda2 /dev/vdb2"
        );
    }

    #[test]
    fn the_rest_volume_is_made_last_with_the_free_extents() {
        let p = plan(VOLS);
        let cmds: Vec<String> = lvm_commands(p.lvm.as_ref().unwrap())
            .iter()
            .map(|c| c.join(" "))
            .collect();
        assert_eq!(
            cmds,
            [
                "pvcreate -ff --yes --dataalignment=1024k /dev/md0",
                "vgcreate --yes --physicalextentsize=4096k vg0 /dev/md0",
                "lvcreate --yes --wipesignatures=y --zero=y --name=swap --size=104857600b vg0",
                "lvcreate --yes --wipesignatures=y --zero=y --name=root --extents=100%FREE vg0",
            ]
        );
        // Without a rest volume, every size is said.
        let fixed =
            plan("[[lvm.volumes]]\nname = \"root\"\nsize = \"1G\"\nfs = \"ext4\"\nmount = \"/\"\n");
        let cmds = lvm_commands(fixed.lvm.as_ref().unwrap());
        assert_eq!(cmds[2].last().unwrap(), "vg0");
        assert!(
            cmds[2].contains(&"--size=1073741824b".to_string()),
            "{cmds:?}"
        );
    }

    #[test]
    fn mdadm_conf_gets_the_arrays_line_in_place_of_the_images() {
        let image = "HOMEHOST <system>\nMAILADDR root\nARRAY /dev/md/old metadata=1.2 UUID=1\n";
        let conf = mdadm_conf(
            image,
            "ARRAY /dev/md0 metadata=1.2 name=web1:root UUID=a:b:c:d\n",
        );
        assert_eq!(
            conf,
            "HOMEHOST <system>\nMAILADDR root\n\n# The install's array (Ignite).\nARRAY /dev/md0 metadata=1.2 name=web1:root UUID=a:b:c:d\n"
        );
        assert_eq!(
            mdadm_conf("", "ARRAY /dev/md0 UUID=x"),
            "# The install's array (Ignite).\nARRAY /dev/md0 UUID=x\n"
        );
    }
}
