//! The example profiles load and render; broken profiles report every error at its exact
//! line and column.

use ignite_profiles::*;
use std::path::{Path, PathBuf};

fn dir(sub: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(sub)
}

fn client(size: u64) -> ClientFacts {
    ClientFacts {
        mac: "52:54:00:12:34:56".into(),
        disks: vec![DiskFact {
            path: "/dev/vda".into(),
            size,
            serial: Some("QM00001".into()),
            sector_size: 512,
            ..Default::default()
        }],
        hostname: Some("db1".into()),
    }
}

/// "file:line:col: message" with the file's name only.
fn diags(file: &str) -> Vec<String> {
    let e = Profile::load(&dir("tests/broken").join(file)).unwrap_err();
    e.diagnostics()
        .iter()
        .map(|d| {
            let name = Path::new(&d.file)
                .file_name()
                .unwrap()
                .to_string_lossy()
                .to_string();
            format!("{name}:{}:{}: {}", d.line, d.col, d.message)
        })
        .collect()
}

#[test]
fn examples_load() {
    let mut n = 0;
    for e in std::fs::read_dir(dir("examples")).unwrap().flatten() {
        let f = e.path();
        if f.extension().is_some_and(|x| x == "toml") {
            let p = Profile::load(&f);
            assert!(p.is_ok(), "{}: {}", f.display(), p.unwrap_err());
            n += 1;
        }
    }
    assert!(n >= 6, "only {n} examples found");
}

#[test]
fn web_extends_base() {
    let p = Profile::load(&dir("examples/web.toml")).unwrap();
    assert_eq!(p.chain, ["base", "web"]);
    assert_eq!(p.archive.to_string(), "debian-12", "from base");
    assert_eq!(p.identity.root_authorized_keys.len(), 1, "from base");
    assert_eq!(p.identity.hostname, "web-{mac6}", "overridden");
    assert_eq!(p.network.format, NetFormat::Networkd);
    assert_eq!(
        p.disk.partitions.len(),
        5,
        "partitions replaced, not appended"
    );
    assert_eq!(p.hooks.len(), 2);
    let plan = p.render(&client(40 << 30)).unwrap();
    assert_eq!(plan.hostname, "web-123456");
    let srv = plan
        .disk
        .partitions
        .iter()
        .find(|x| x.mount.as_deref() == Some("/srv"))
        .unwrap();
    assert_eq!(srv.fs, Some(Fs::Xfs));
    let swap = plan.disk.partitions.last().unwrap();
    assert_eq!(swap.fs, Some(Fs::Swap));
    assert_eq!(swap.size_bytes, 2 << 30);
    assert_eq!(
        swap.end_sector,
        (40u64 << 30) / 512 - 2048 - 1,
        "rest in the middle: swap ends the disk"
    );
    // too small for 8G root + 2G swap + 20% + rest, and the selector wants 10G or more
    let e = p.render(&client(9 << 30)).unwrap_err();
    assert!(matches!(e, RenderError::NoMatchingDisk { .. }), "{e}");
    let e = p.render(&client(12 << 30)).unwrap_err();
    assert!(matches!(e, RenderError::DiskTooSmall { .. }), "{e}");
}

#[test]
fn uefi_example_renders() {
    let p = Profile::load(&dir("examples/uefi.toml")).unwrap();
    let plan = p.render(&client(8 << 30)).unwrap();
    assert_eq!(plan.hostname, "db1");
    assert_eq!(plan.archive.id.as_deref(), Some("latest"));
    assert_eq!(plan.disk.partitions[0].kind, PartKind::Efi);
    assert_eq!(plan.disk.partitions[0].mount.as_deref(), Some("/boot/efi"));
    assert!(plan.steps.iter().any(|s| matches!(
        s,
        Step::BootLoader {
            loader: Loader::Grub,
            firmware: Firmware::Uefi,
            ..
        }
    )));
    let json = serde_json::to_value(&plan).unwrap();
    assert_eq!(
        json["disk"]["partitions"][0]["type_guid"],
        "C12A7328-F81F-11D2-BA4B-00A0C93EC93B"
    );
}

fn disks(sizes: &[(&str, u64, u64)]) -> ClientFacts {
    ClientFacts {
        mac: "52:54:00:12:34:56".into(),
        disks: sizes
            .iter()
            .map(|&(path, size, sector_size)| DiskFact {
                path: path.into(),
                size,
                sector_size,
                ..Default::default()
            })
            .collect(),
        hostname: Some("db1".into()),
    }
}

#[test]
fn raid1_lvm_example_renders_a_mirror_of_two_disks() {
    let p = Profile::load(&dir("examples/raid1-lvm.toml")).unwrap();
    let (a, b) = (8u64 << 30, 6u64 << 30);
    let plan = p
        .render(&disks(&[("/dev/vda", a, 512), ("/dev/vdb", b, 512)]))
        .unwrap();
    assert_eq!(plan.disk.path, "/dev/vda");
    assert_eq!(plan.more_disks.len(), 1);
    let second = &plan.more_disks[0];
    assert_eq!(second.path, "/dev/vdb");
    assert_eq!(plan.disk.size_bytes, a, "each disk keeps its own size");
    // Both laid out for the smaller disk, partition for partition.
    for (x, y) in plan.disk.partitions.iter().zip(&second.partitions) {
        assert_eq!(
            (x.start_sector, x.end_sector),
            (y.start_sector, y.end_sector)
        );
    }
    assert_eq!(second.partitions[1].device, "/dev/vdb2");
    let member = &plan.disk.partitions[1];
    assert_eq!(member.kind, PartKind::Raid);
    assert_eq!(member.type_guid, "A19D880F-05FC-4D3B-A006-743F0F84911E");
    assert_eq!(
        member.start_bytes + member.size_bytes,
        (b - (1 << 20)) / MIB * MIB
    );
    let raid = plan.raid.as_ref().unwrap();
    assert_eq!(raid.members, ["/dev/vda2", "/dev/vdb2"]);
    assert_eq!(raid.size_bytes, member.size_bytes - RAID_DATA_OFFSET);
    let lvm = plan.lvm.as_ref().unwrap();
    assert_eq!(lvm.pvs, [RAID_DEVICE]);
    assert_eq!(
        lvm.size_bytes,
        (raid.size_bytes - PV_DATA_START) / EXTENT * EXTENT
    );
    let sizes: Vec<(&str, &str, u64)> = lvm
        .volumes
        .iter()
        .map(|v| (v.name.as_str(), v.device.as_str(), v.size_bytes))
        .collect();
    assert_eq!(
        sizes,
        [
            ("root", "/dev/mapper/vg0-root", lvm.size_bytes - (768 << 20)),
            ("var", "/dev/mapper/vg0-var", 512 << 20),
            ("swap", "/dev/mapper/vg0-swap", 256 << 20)
        ]
    );
    let partitioned: Vec<&str> = plan
        .steps
        .iter()
        .filter_map(|s| match s {
            Step::Partition { disk } => Some(disk.as_str()),
            _ => None,
        })
        .collect();
    assert_eq!(partitioned, ["/dev/vda", "/dev/vdb"]);
    let mounts: Vec<(&str, &str, Vec<String>)> = plan
        .steps
        .iter()
        .filter_map(|s| match s {
            Step::Mount {
                device,
                mount,
                options,
                ..
            } => Some((device.as_str(), mount.as_str(), options.clone())),
            _ => None,
        })
        .collect();
    assert_eq!(
        mounts,
        [
            ("/dev/mapper/vg0-root", "/", vec![]),
            ("/dev/mapper/vg0-var", "/var", vec![]),
            ("/dev/vda1", "/boot/efi", vec!["nofail".to_string()]),
            ("/dev/vdb1", "/boot/efi2", vec!["nofail".to_string()]),
        ]
    );
    assert_eq!(
        plan.swap_devices(),
        ["/dev/mapper/vg0-swap"],
        "swap is the volume"
    );
    let json = serde_json::to_string(&plan).unwrap();
    assert_eq!(serde_json::from_str::<InstallPlan>(&json).unwrap(), plan);
}

#[test]
fn raid1_lvm_refuses_what_cannot_work_before_anything_is_written() {
    let p = Profile::load(&dir("examples/raid1-lvm.toml")).unwrap();
    let e = p.render(&disks(&[("/dev/vda", 8 << 30, 512)])).unwrap_err();
    assert!(
        matches!(
            e,
            RenderError::TooFewDisks {
                count: 2,
                found: 1,
                ..
            }
        ),
        "{e}"
    );
    assert!(
        e.to_string().contains("give the client 2 such disks"),
        "{e}"
    );
    let e = p
        .render(&disks(&[
            ("/dev/vda", 8 << 30, 512),
            ("/dev/vdb", 8 << 30, 4096),
        ]))
        .unwrap_err();
    assert!(matches!(e, RenderError::MixedSectorSizes { .. }), "{e}");
    assert!(e.to_string().contains("/dev/vdb 4096-byte sectors"), "{e}");
    // 256M ESP + 4M RAID offset + 1M PV start + 512M + 256M + a rest extent do not fit in
    // 1 GiB; the error names the smaller disk and the exact size that works.
    let small = disks(&[("/dev/vda", 2 << 30, 512), ("/dev/vdb", 1 << 30, 512)]);
    let e = p.render(&small).unwrap_err();
    let RenderError::DiskTooSmall {
        disk, need_bytes, ..
    } = &e
    else {
        panic!("{e}")
    };
    assert_eq!(disk, "/dev/vdb");
    assert!(e.to_string().contains("needs at least"), "{e}");
    let at = |size: u64| disks(&[("/dev/vda", 2 << 30, 512), ("/dev/vdb", size, 512)]);
    assert!(p.render(&at(*need_bytes)).is_ok());
    assert!(p.render(&at(*need_bytes - MIB)).is_err());
}

#[test]
fn extlinux_example_renders_for_bios_and_uefi() {
    let p = Profile::load(&dir("examples/extlinux.toml")).unwrap();
    assert_eq!(p.chain, ["base", "extlinux"]);
    let plan = p.render(&client(8 << 30)).unwrap();
    assert!(plan.steps.iter().any(|s| matches!(
        s,
        Step::BootLoader {
            loader: Loader::Extlinux,
            firmware: Firmware::Both,
            ..
        }
    )));
    let bootable: Vec<_> = plan
        .disk
        .partitions
        .iter()
        .filter(|p| p.legacy_bios_bootable)
        .map(|p| p.mount.as_deref())
        .collect();
    assert_eq!(bootable, [Some("/boot")]);
    let json = serde_json::to_value(&plan).unwrap();
    assert_eq!(json["disk"]["partitions"][1]["legacy_bios_bootable"], true);
}

#[test]
fn extlinux_on_an_xfs_root_is_refused_where_the_fs_is_written() {
    let d = diags("extlinux-xfs-root.toml");
    assert_eq!(d.len(), 1, "{d:#?}");
    assert!(
        d[0].starts_with("extlinux-xfs-root.toml:6:6: extlinux on BIOS cannot boot from / (which holds /boot) on xfs"),
        "{}",
        d[0]
    );
}

#[test]
fn broken_profile_reports_every_error_with_position() {
    assert_eq!(
        diags("bad-web.toml"),
        [
            "bad-web.toml:2:11: archive \"debian-12@ZZ\": \"ZZ\" is not a snapshot id; after '@' write a lower-case hex id (prefix) or \"latest\", e.g. \"debian-12@3fa9c2\"",
            "bad-web.toml:5:8: size range \"10G\" has no \"..\"; use e.g. \"10G..100G\", \"10G..\" or \"..2T\"",
            "bad-web.toml:12:8: size \"10X\" is not a size; use e.g. \"10G\", \"512M\", \"20%\" or \"rest\"",
            "bad-web.toml:19:9: mount point \"srv\" is not absolute; write e.g. \"/srv\"",
            "bad-web.toml:20:1: unknown key \"optoins\" in [[disk.partitions]] #3; did you mean \"options\"? known keys: name, type, size, fs, mount, options",
            "bad-web.toml:23:8: partition 4 also has size \"rest\" (partition 3 already takes the rest); give it a size such as \"10G\" or \"20%\"",
            "bad-web.toml:27:12: hostname template \"web-{mac7}\" uses unknown variable {mac7}; did you mean {mac6}? known variables are {mac}, {mac6} and {name}",
            "bad-web.toml:30:11: address \"192.0.2.300/24\": \"192.0.2.300\" is not an IP address; write e.g. address = \"192.0.2.10/24\" (or an IPv6 address/prefix)",
        ]
    );
}

#[test]
fn errors_in_a_base_name_the_base_file() {
    assert_eq!(
        diags("child-of-bad.toml"),
        [
            "child-of-bad.toml:8:8: user \"ann\" is defined twice; give each user once",
            "bad-base.toml:8:6: an EFI system partition must be vfat; write fs = \"vfat\" (or leave fs out)",
            "bad-base.toml:16:8: percentages add up to 110% with this partition (over 100%); lower \"40%\" to at most \"30%\" or use \"rest\"",
            "bad-base.toml:18:9: mount point \"/\" is already used by partition 2; use each mount point once",
        ]
    );
}

#[test]
fn semantic_rules_across_files() {
    // bad-base alone: the same errors plus none about users
    let d = diags("bad-base.toml");
    assert_eq!(d.len(), 3, "{d:#?}");
}

#[test]
fn syntax_errors_are_positioned() {
    let d = diags("syntax.toml");
    assert!(!d.is_empty());
    for x in &d {
        assert!(
            x.starts_with("syntax.toml:2:") || x.starts_with("syntax.toml:3:"),
            "{x}"
        );
        assert!(x.contains("TOML syntax"), "{x}");
    }
}

#[test]
fn extends_cycle_is_an_error_naming_the_chain() {
    assert_eq!(
        diags("loop-a.toml"),
        ["loop-b.toml:1:11: extends cycle: loop-a.toml -> loop-b.toml -> loop-a.toml; remove one of these extends"]
    );
}

#[test]
fn display_format() {
    let e = Profile::load(&dir("tests/broken/bad-web.toml")).unwrap_err();
    let first = e.to_string().lines().next().unwrap().to_string();
    assert!(first.starts_with("profile "), "{first}");
    assert!(first.ends_with("bad-web.toml line 2 col 11: archive \"debian-12@ZZ\": \"ZZ\" is not a snapshot id; after '@' write a lower-case hex id (prefix) or \"latest\", e.g. \"debian-12@3fa9c2\""), "{first}");
}
