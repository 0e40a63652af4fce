//! A capture's record as an install profile (`ignite recovery show NAME --profile`): the
//! recorded disk layout (partition types, sizes, names, file systems, mount points and
//! options from the captured fstab), boot loader and firmware, and hostname, so that a
//! machine can be installed to look like the captured one. A files capture brings its own
//! archive (its file tree); a block capture holds disks, not a tree, so the operator names
//! the archive to install on that layout.

use std::fmt::Write as _;

use anyhow::{bail, Result};

use ignite_archive::Manifest;

use super::layout::{PartitionLayout, Table};
use super::record::{files_snapshot_name, short, Record};

/// The profile text (TOML) for the capture `m` (`rec`), installing `archive`, or by default
/// a files capture's own tree; a block capture needs an archive named.
pub fn profile_for(m: &Manifest, rec: &Record, archive: Option<&str>) -> Result<String> {
    let archive = match (archive, &rec.files) {
        (Some(a), _) => a.to_string(),
        (None, Some(f)) => format!("{}@{}", files_snapshot_name(&rec.name), f.snapshot),
        (None, None) => bail!(
            "{}@{} is a block capture: it holds disks, not a file tree to install; name one with --archive NAME",
            rec.name,
            short(&m.id)
        ),
    };
    profile_toml(rec, &archive)
}

/// The profile text (TOML) for `rec`, installing `archive`.
pub fn profile_toml(rec: &Record, archive: &str) -> Result<String> {
    let Some(disk) = rec.disks.first().map(|d| &d.layout) else {
        bail!("capture {} recorded no disk layout", rec.name);
    };
    if disk.table != Table::Gpt {
        bail!(
            "capture {}: disk 0 has a {:?} partition table; profiles write GPT",
            rec.name,
            disk.table
        );
    }
    let sys = &rec.system;
    let mut t = String::new();
    writeln!(
        t,
        "# From the capture record of {} (`ignite recovery show {0} --profile`).",
        rec.name
    )?;
    writeln!(
        t,
        "description = {}",
        quote(&format!("as captured: {}", rec.name))
    )?;
    writeln!(t, "archive = {}", quote(archive))?;
    writeln!(t, "\n[disk]\ntable = \"gpt\"")?;
    let mut parts: Vec<&PartitionLayout> = disk.partitions.iter().collect();
    parts.sort_by_key(|p| p.number);
    for p in parts {
        let kind = match p.kind.as_deref() {
            Some(k @ ("bios_boot" | "efi" | "swap")) => k,
            None | Some("linux") => "linux",
            Some(other) => bail!(
                "capture {}: partition {} is {other}; profiles have no such partitions yet",
                rec.name,
                p.number
            ),
        };
        writeln!(t, "\n[[disk.partitions]]")?;
        writeln!(t, "type = {}", quote(kind))?;
        if let Some(n) = p.name.as_deref().filter(|n| !n.is_empty()) {
            writeln!(t, "name = {}", quote(n))?;
        }
        writeln!(t, "size = {}", quote(&size(p.size)))?;
        let Some(fs) = &p.fs else { continue };
        let fs_type = match fs.fs_type.as_str() {
            f @ ("ext4" | "xfs" | "vfat" | "swap") => f,
            other => bail!(
                "capture {}: partition {} holds {other}; profiles make ext4, xfs, vfat or swap",
                rec.name,
                p.number
            ),
        };
        if kind != "bios_boot" {
            writeln!(t, "fs = {}", quote(fs_type))?;
        }
        // The captured fstab names each file system by UUID, LABEL or PARTUUID.
        let names = [
            fs.uuid.as_ref().map(|u| format!("UUID={u}")),
            fs.label.as_ref().map(|l| format!("LABEL={l}")),
            p.part_uuid.as_ref().map(|u| format!("PARTUUID={u}")),
        ];
        let entry = sys.fstab.iter().find(|e| {
            names
                .iter()
                .flatten()
                .any(|n| n.eq_ignore_ascii_case(&e.what))
        });
        if let Some(e) = entry.filter(|e| e.mount.starts_with('/')) {
            writeln!(t, "mount = {}", quote(&e.mount))?;
            let opts: Vec<&str> = e
                .options
                .split(',')
                .filter(|o| !o.is_empty() && *o != "defaults")
                .collect();
            if !opts.is_empty() {
                let list: Vec<String> = opts.iter().map(|o| quote(o)).collect();
                writeln!(t, "options = [{}]", list.join(", "))?;
            }
        }
    }
    writeln!(t, "\n[identity]")?;
    let host = sys.hostname.as_deref().unwrap_or(&rec.name);
    writeln!(t, "hostname = {}", quote(host))?;
    writeln!(
        t,
        "\n[network]\nformat = \"auto\"\n\n[network.interfaces.boot]\ndhcp = true"
    )?;
    let loader = sys.boot_loader.as_deref().unwrap_or("none");
    let bios = sys.firmware.iter().any(|f| f == "bios");
    let uefi = sys.firmware.iter().any(|f| f == "uefi");
    let firmware = match (bios, uefi) {
        (true, true) => "both",
        (false, true) => "uefi",
        _ => "bios",
    };
    writeln!(
        t,
        "\n[boot]\nloader = {}\nfirmware = {}",
        quote(loader),
        quote(firmware)
    )?;
    Ok(t)
}

/// Sizes in whole MiB where they are (partitions are MiB-aligned), else in bytes.
fn size(bytes: u64) -> String {
    if bytes.is_multiple_of(1 << 20) {
        format!("{}M", bytes >> 20)
    } else {
        format!("{bytes}B")
    }
}

/// A TOML basic string.
fn quote(s: &str) -> String {
    let mut out = String::from("\"");
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            c if c.is_control() => out.push_str(&format!("\\u{:04X}", c as u32)),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::capture::layout::SystemInfo;
    use crate::capture::layout::{DiskLayout, FsInfo, FstabEntry};
    use crate::capture::record::{CaptureKind, CaptureStats, DiskRecord, SourceInfo};
    use ignite_profiles::{ClientFacts, DiskFact, Profile};

    fn part(
        number: u32,
        start_mib: u64,
        size_mib: u64,
        kind: &str,
        fs: Option<(&str, &str)>,
    ) -> PartitionLayout {
        PartitionLayout {
            number,
            start: start_mib << 20,
            size: size_mib << 20,
            type_id: String::new(),
            kind: Some(kind.to_string()),
            part_uuid: Some(format!("0000000{number}-0000-4000-8000-000000000000")),
            name: Some(format!("part{number}")),
            attributes: 0,
            fs: fs.map(|(t, u)| FsInfo {
                fs_type: t.into(),
                uuid: Some(u.into()),
                label: None,
            }),
        }
    }

    /// The lab guest's layout as a capture records it.
    fn record() -> Record {
        let layout = DiskLayout {
            size: 4 << 30,
            sector_size: 512,
            table: Table::Gpt,
            disk_id: None,
            partitions: vec![
                part(1, 1, 1, "bios_boot", None),
                part(2, 2, 64, "efi", Some(("vfat", "ABCD-1234"))),
                part(
                    3,
                    66,
                    2048,
                    "linux",
                    Some(("ext4", "11111111-2222-3333-4444-555555555555")),
                ),
                part(
                    4,
                    2114,
                    1933,
                    "linux",
                    Some(("xfs", "66666666-7777-8888-9999-000000000000")),
                ),
            ],
        };
        let fstab = |what: &str, mount: &str, ty: &str, opts: &str| FstabEntry {
            what: what.into(),
            mount: mount.into(),
            fs_type: ty.into(),
            options: opts.into(),
        };
        Record {
            format: 1,
            name: "web1".into(),
            kind: CaptureKind::Block,
            source: SourceInfo::Client {
                mac: None,
                facts: serde_json::json!({}),
            },
            disks: vec![DiskRecord {
                index: 0,
                snapshot: "x".into(),
                layout,
            }],
            files: None,
            system: SystemInfo {
                root_partition: Some(3),
                hostname: Some("web1".into()),
                machine_id: None,
                fstab: vec![
                    fstab(
                        "UUID=11111111-2222-3333-4444-555555555555",
                        "/",
                        "ext4",
                        "errors=remount-ro",
                    ),
                    fstab(
                        "UUID=66666666-7777-8888-9999-000000000000",
                        "/var",
                        "xfs",
                        "defaults",
                    ),
                    fstab("UUID=ABCD-1234", "/boot/efi", "vfat", "umask=0077"),
                ],
                boot_loader: Some("grub".into()),
                firmware: vec!["bios".into(), "uefi".into()],
                ..Default::default()
            },
            stats: CaptureStats::default(),
        }
    }

    #[test]
    fn a_record_renders_to_its_own_layout() {
        let rec = record();
        let text = profile_toml(&rec, "debian-12").unwrap();
        let p = Profile::from_str_named("web1", &text).unwrap_or_else(|e| panic!("{e}\n{text}"));
        // As the agent reports a 4 GiB disk (later fields take their defaults).
        let disk: DiskFact = serde_json::from_value(
            serde_json::json!({"path": "/dev/vda", "size": 4u64 << 30, "serial": null}),
        )
        .unwrap();
        let facts = ClientFacts {
            mac: "52:54:00:00:00:01".into(),
            disks: vec![disk],
            hostname: None,
        };
        let plan = p.render(&facts).unwrap();
        assert_eq!(plan.hostname, "web1");
        assert_eq!(plan.archive.name, "debian-12");
        let got: Vec<(u64, u64, Option<String>)> = plan
            .disk
            .partitions
            .iter()
            .map(|x| (x.start_bytes, x.size_bytes, x.mount.clone()))
            .collect();
        let want: Vec<(u64, u64, Option<String>)> = rec.disks[0]
            .layout
            .partitions
            .iter()
            .map(|x| {
                let mount = rec.system.fstab.iter().find(|e| {
                    x.fs.as_ref()
                        .and_then(|f| f.uuid.as_ref())
                        .is_some_and(|u| e.what.ends_with(u.as_str()))
                });
                (x.start, x.size, mount.map(|e| e.mount.clone()))
            })
            .collect();
        assert_eq!(got, want, "{text}");
        assert!(text.contains("options = [\"errors=remount-ro\"]"), "{text}");
        assert!(text.contains("firmware = \"both\""), "{text}");
    }

    #[test]
    fn what_profiles_cannot_say_is_refused_by_name() {
        let mut rec = record();
        rec.disks[0].layout.partitions[3].kind = Some("lvm".into());
        let e = profile_toml(&rec, "a").unwrap_err().to_string();
        assert!(e.contains("partition 4 is lvm"), "{e}");
        let mut rec = record();
        rec.disks[0].layout.partitions[2]
            .fs
            .as_mut()
            .unwrap()
            .fs_type = "ext3".into();
        let e = profile_toml(&rec, "a").unwrap_err().to_string();
        assert!(e.contains("partition 3 holds ext3"), "{e}");
        let mut rec = record();
        rec.disks.clear();
        assert!(profile_toml(&rec, "a").is_err());
    }

    #[test]
    fn strings_are_quoted_for_toml() {
        assert_eq!(quote("a\"b\\c\n"), "\"a\\\"b\\\\c\\u000A\"");
    }
}
