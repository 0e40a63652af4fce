//! Unit tests: every semantic rule, merging, and rendering arithmetic.

use super::*;

const KEY: &str =
    "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIOMqqnkVzrm0SdG6UOoqKLsabgH5C9okWi0dh2l9GKJl a@b";

/// A valid minimal profile: bios_boot + root.
const GOOD: &str = r#"archive = "debian-12"

[disk]

[[disk.partitions]]
type = "bios_boot"
size = "1M"

[[disk.partitions]]
size = "rest"
fs = "ext4"
mount = "/"
"#;

fn load(text: &str) -> Result<Profile, Errors> {
    Profile::from_str_named("t.toml", text)
}

/// Errors as "line:col message".
fn errs(text: &str) -> Vec<String> {
    match load(text) {
        Ok(_) => Vec::new(),
        Err(e) => {
            e.0.iter()
                .map(|d| format!("{}:{} {}", d.line, d.col, d.message))
                .collect()
        }
    }
}

fn one_err(text: &str) -> String {
    let e = errs(text);
    assert_eq!(e.len(), 1, "expected one error, got {e:#?}");
    e[0].clone()
}

fn facts(size: u64) -> ClientFacts {
    ClientFacts {
        mac: "52:54:00:aa:bb:cc".into(),
        disks: vec![DiskFact {
            path: "/dev/vda".into(),
            size,
            serial: None,
            sector_size: 512,
            ..Default::default()
        }],
        hostname: None,
    }
}

#[test]
fn good_profile_loads_with_defaults() {
    let p = load(GOOD).unwrap();
    assert_eq!(p.name, "t");
    assert_eq!(p.archive.name, "debian-12");
    assert_eq!(p.identity.hostname, "ignite-{mac6}");
    assert!(p.identity.fresh_machine_id && p.identity.fresh_ssh_host_keys);
    assert_eq!(p.network.format, NetFormat::Auto);
    assert_eq!(p.network.interfaces.len(), 1);
    assert_eq!(p.network.interfaces[0].name, "boot");
    assert!(p.network.interfaces[0].dhcp);
    assert_eq!(p.boot.loader, Loader::Grub);
    assert_eq!(p.boot.firmware, Firmware::Bios);
    assert_eq!(p.disk.partitions[0].kind, PartKind::BiosBoot);
    assert_eq!(p.disk.partitions[1].name, "root");
}

#[test]
fn syntax_errors_have_positions() {
    let e = errs("archive = \"debian-12\"\n[disk\n");
    assert!(!e.is_empty());
    assert!(e[0].starts_with("2:"), "{e:?}");
    assert!(e[0].contains("TOML syntax"), "{e:?}");
}

#[test]
fn unknown_keys_suggest() {
    let e = one_err(&GOOD.replace("mount = \"/\"", "mount = \"/\"\nmout = \"/x\""));
    assert_eq!(
        e,
        "13:1 unknown key \"mout\" in [[disk.partitions]] #2; did you mean \"mount\"? known keys: name, type, size, fs, mount, options"
    );
    let e = one_err(&format!("{GOOD}\n[bogus]\n"));
    assert!(
        e.starts_with("14:2 unknown key \"bogus\" in the profile; known keys"),
        "{e}"
    );
}

#[test]
fn wrong_types() {
    let e = one_err(&GOOD.replace("size = \"1M\"", "size = 1"));
    assert_eq!(
        e,
        "7:8 disk.partitions[1].size is an integer, not a string; write e.g. size = \"10G\""
    );
    let e = one_err(&format!("{GOOD}[identity]\nfresh_machine_id = \"yes\"\n"));
    assert!(e.contains("identity.fresh_machine_id is a string, not a boolean; write e.g. fresh_machine_id = true"), "{e}");
}

#[test]
fn missing_archive_and_disk() {
    let e = errs("");
    assert_eq!(e.len(), 2, "{e:?}");
    assert!(
        e[0].starts_with("1:1 no golden archive; add archive = \"debian-12\""),
        "{e:?}"
    );
    assert!(e[1].starts_with("1:1 no [disk]"), "{e:?}");
}

#[test]
fn archive_forms() {
    let p = load(&GOOD.replace("\"debian-12\"", "\"debian-12@3fa9c2\"")).unwrap();
    assert_eq!(p.archive.id.as_deref(), Some("3fa9c2"));
    let e = one_err(&GOOD.replace("\"debian-12\"", "\"debian-12@XYZ\""));
    assert!(
        e.starts_with("1:11 archive \"debian-12@XYZ\": \"XYZ\" is not a snapshot id"),
        "{e}"
    );
}

#[test]
fn bad_size_message() {
    let e = one_err(&GOOD.replace("\"1M\"", "\"10X\""));
    assert_eq!(
        e,
        "7:8 size \"10X\" is not a size; use e.g. \"10G\", \"512M\", \"20%\" or \"rest\""
    );
}

#[test]
fn mount_points_unique() {
    let t = format!("{GOOD}\n[[disk.partitions]]\nsize = \"1G\"\nfs = \"xfs\"\nmount = \"/\"\n");
    let e = one_err(&t);
    assert_eq!(
        e,
        "17:9 mount point \"/\" is already used by partition 2; use each mount point once"
    );
}

#[test]
fn mount_points_absolute() {
    let t = format!("{GOOD}\n[[disk.partitions]]\nsize = \"1G\"\nfs = \"xfs\"\nmount = \"srv\"\n");
    assert_eq!(
        one_err(&t),
        "17:9 mount point \"srv\" is not absolute; write e.g. \"/srv\""
    );
    let t =
        format!("{GOOD}\n[[disk.partitions]]\nsize = \"1G\"\nfs = \"xfs\"\nmount = \"/srv/\"\n");
    assert!(one_err(&t).contains("ends with '/'"));
    let t =
        format!("{GOOD}\n[[disk.partitions]]\nsize = \"1G\"\nfs = \"xfs\"\nmount = \"/a/../b\"\n");
    assert!(one_err(&t).contains("'..'"));
}

#[test]
fn root_required_unless_no_file_systems() {
    let t = GOOD.replace("mount = \"/\"", "mount = \"/srv\"");
    let e = one_err(&t);
    assert!(e.starts_with("5:1 no partition is mounted at \"/\""), "{e}");
    // raw partitions only: fine
    let t = "archive = \"x\"\n[boot]\nloader = \"none\"\n[[disk.partitions]]\nsize = \"rest\"\n";
    let p = load(t).unwrap();
    let plan = p.render(&facts(1 << 30)).unwrap();
    assert_eq!(plan.steps.len(), 1, "{:?}", plan.steps);
}

#[test]
fn efi_must_be_vfat() {
    let t = GOOD.replace(
        "type = \"bios_boot\"\nsize = \"1M\"",
        "type = \"efi\"\nsize = \"512M\"\nfs = \"ext4\"",
    );
    let e = errs(&t);
    assert!(
        e.iter().any(|x| x
            == "8:6 an EFI system partition must be vfat; write fs = \"vfat\" (or leave fs out)"),
        "{e:?}"
    );
}

#[test]
fn efi_defaults() {
    let t = GOOD.replace(
        "type = \"bios_boot\"\nsize = \"1M\"",
        "type = \"efi\"\nsize = \"512M\"",
    ) + "[boot]\nfirmware = \"uefi\"\n";
    let p = load(&t).unwrap();
    assert_eq!(p.disk.partitions[0].fs, Some(Fs::Vfat));
    assert_eq!(p.disk.partitions[0].mount.as_deref(), Some("/boot/efi"));
}

#[test]
fn uefi_needs_efi_partition() {
    let e = one_err(&format!("{GOOD}[boot]\nfirmware = \"uefi\"\n"));
    assert_eq!(e, "14:12 boot firmware \"uefi\" needs an EFI system partition; add [[disk.partitions]] type = \"efi\", size = \"512M\"");
    let e = errs(&format!("{GOOD}[boot]\nfirmware = \"both\"\n"));
    assert_eq!(e.len(), 1, "{e:?}");
}

#[test]
fn bios_grub_needs_bios_boot() {
    let t = GOOD.replace(
        "type = \"bios_boot\"\nsize = \"1M\"",
        "size = \"1G\"\nfs = \"swap\"",
    );
    let e = one_err(&t);
    assert!(
        e.starts_with("5:1 GRUB on BIOS with a GPT disk needs a bios_boot partition"),
        "{e}"
    );
    let e = one_err(&format!("{t}[boot]\nloader = \"grub\"\n"));
    assert!(e.starts_with("14:10 GRUB on BIOS"), "{e}");
    // extlinux and none do not need one
    assert!(load(&format!("{t}[boot]\nloader = \"extlinux\"\n")).is_ok());
    assert!(load(&format!("{t}[boot]\nloader = \"none\"\n")).is_ok());
}

/// ESP, ext4 /boot, xfs root: what extlinux can boot on BIOS and UEFI alike.
const EXTLINUX: &str = r#"archive = "debian-12"

[[disk.partitions]]
type = "efi"
size = "64M"

[[disk.partitions]]
size = "256M"
fs = "ext4"
mount = "/boot"

[[disk.partitions]]
size = "rest"
fs = "xfs"
mount = "/"

[boot]
loader = "extlinux"
firmware = "both"
"#;

#[test]
fn extlinux_on_bios_needs_a_boot_file_system_it_can_read() {
    let p = load(EXTLINUX).unwrap();
    assert_eq!(p.boot.loader, Loader::Extlinux);
    // /boot on xfs (its own partition, or inside root): the error points at its fs.
    let e = one_err(&EXTLINUX.replace("fs = \"ext4\"", "fs = \"xfs\""));
    assert!(
        e.starts_with("9:6 extlinux on BIOS cannot boot from /boot on xfs: xfs keeps its superblock in the partition's first sector"),
        "{e}"
    );
    assert!(e.ends_with("or use loader = \"grub\""), "{e}");
    let no_boot = EXTLINUX.replace(
        "[[disk.partitions]]\nsize = \"256M\"\nfs = \"ext4\"\nmount = \"/boot\"\n\n",
        "",
    );
    let e = one_err(&no_boot);
    assert!(
        e.starts_with("9:6 extlinux on BIOS cannot boot from / (which holds /boot) on xfs"),
        "{e}"
    );
    let e = one_err(&no_boot.replace("\"both\"", "\"bios\""));
    assert!(e.starts_with("9:6 extlinux on BIOS"), "{e}");
    // UEFI boots copies on the ESP, so /boot may be anything; GRUB reads xfs.
    assert!(load(&no_boot.replace("\"both\"", "\"uefi\"")).is_ok());
    let grub = no_boot
        .replace("\"extlinux\"", "\"grub\"")
        .replace("\"both\"", "\"uefi\"");
    assert!(load(&grub).is_ok());
    // vfat /boot (the ESP mounted there) is readable.
    let esp_boot = no_boot.replace("size = \"64M\"", "size = \"256M\"\nmount = \"/boot\"");
    assert!(load(&esp_boot).is_ok(), "{:?}", errs(&esp_boot));
}

#[test]
fn extlinux_errors_point_into_the_base_profile() {
    let base = EXTLINUX
        .replace("fs = \"ext4\"", "fs = \"xfs\"")
        .replace("[boot]\nloader = \"extlinux\"\nfirmware = \"both\"\n", "");
    let mut resolve = |_: &str| Ok(("dir/base.toml".to_string(), base.clone()));
    let child = "extends = \"base\"\n[boot]\nloader = \"extlinux\"\n";
    let e = Profile::from_str_with("dir/x.toml", child, &mut resolve).unwrap_err();
    assert_eq!(e.0.len(), 1, "{e}");
    assert_eq!(e.0[0].file, "dir/base.toml");
    assert_eq!((e.0[0].line, e.0[0].col), (9, 6));
    assert!(
        e.to_string()
            .starts_with("profile dir/base.toml line 9 col 6: extlinux on BIOS"),
        "{e}"
    );
    // the same base with GRUB (its default loader) and a bios_boot-less disk on UEFI is fine
    let mut resolve = |_: &str| Ok(("dir/base.toml".to_string(), base.clone()));
    assert!(Profile::from_str_with(
        "dir/y.toml",
        "extends = \"base\"\n[boot]\nfirmware = \"uefi\"\n",
        &mut resolve
    )
    .is_ok());
}

#[test]
fn render_marks_the_boot_partition_for_extlinux_on_bios_only() {
    let marks = |text: &str| -> Vec<bool> {
        load(text)
            .unwrap()
            .render(&facts(4 << 30))
            .unwrap()
            .disk
            .partitions
            .iter()
            .map(|p| p.legacy_bios_bootable)
            .collect()
    };
    assert_eq!(marks(EXTLINUX), [false, true, false]);
    let plan = load(EXTLINUX).unwrap().render(&facts(4 << 30)).unwrap();
    assert_eq!(
        plan.disk.boot_partition().unwrap().mount.as_deref(),
        Some("/boot")
    );
    assert_eq!(
        marks(&EXTLINUX.replace("\"both\"", "\"bios\"")),
        [false, true, false]
    );
    assert_eq!(
        marks(&EXTLINUX.replace("\"both\"", "\"uefi\"")),
        [false, false, false]
    );
    let grub = EXTLINUX
        .replace("\"extlinux\"", "\"grub\"")
        .replace("\"both\"", "\"uefi\"");
    assert_eq!(marks(&grub), [false, false, false]);
    // without a /boot partition, root holds /boot
    let root_only = GOOD.to_string() + "[boot]\nloader = \"extlinux\"\n";
    assert_eq!(marks(&root_only), [false, true]);
}

#[test]
fn percentages_at_most_100() {
    let t = format!(
        "{GOOD}\n[[disk.partitions]]\nsize = \"60%\"\n[[disk.partitions]]\nsize = \"50%\"\n"
    );
    let e = one_err(&t);
    assert_eq!(e, "17:8 percentages add up to 110% with this partition (over 100%); lower \"50%\" to at most \"40%\" or use \"rest\"");
}

#[test]
fn one_rest_at_most() {
    let t = format!("{GOOD}\n[[disk.partitions]]\nsize = \"rest\"\n");
    let e = one_err(&t);
    assert!(
        e.starts_with(
            "15:8 partition 3 also has size \"rest\" (partition 2 already takes the rest)"
        ),
        "{e}"
    );
}

#[test]
fn hostname_template_variables() {
    let e = one_err(&format!(
        "{GOOD}[identity]\nhostname = \"web-{{serial}}\"\n"
    ));
    assert!(
        e.starts_with("14:12 hostname template \"web-{serial}\" uses unknown variable {serial}"),
        "{e}"
    );
    let e = one_err(&format!("{GOOD}[identity]\nhostname = \"web_{{mac6}}\"\n"));
    assert!(e.contains("contains '_'"), "{e}");
}

#[test]
fn static_addresses_parse() {
    let net = |body: &str| format!("{GOOD}[network.interfaces.eth0]\n{body}\n");
    let e = one_err(&net("address = \"10.0.0.5\""));
    assert!(
        e.starts_with("14:11 address \"10.0.0.5\" has no prefix length"),
        "{e}"
    );
    let e = one_err(&net("address = \"10.0.0.5/33\""));
    assert!(e.contains("prefix length \"33\" is not 1 to 32"), "{e}");
    let e = one_err(&net("address = \"10.0.0.5/24\"\ngateway = \"10.0.1.1\""));
    assert!(
        e.starts_with("15:11 gateway \"10.0.1.1\" is outside 10.0.0.5/24"),
        "{e}"
    );
    let e = one_err(&net("address = \"10.0.0.5/24\"\ndns = [\"8.8.8.x\"]"));
    assert!(
        e.starts_with("15:8 dns server \"8.8.8.x\" is not an IP address"),
        "{e}"
    );
    let e = one_err(&net("dhcp = false"));
    assert!(e.contains("dhcp = false and no address"), "{e}");
    let e = one_err(&net("dhcp = true\naddress = \"10.0.0.5/24\""));
    assert!(e.contains("both dhcp = true and a static address"), "{e}");
    let p = load(&net(
        "address = \"2001:db8::5/64\"\ngateway = \"2001:db8::1\"",
    ))
    .unwrap();
    assert!(!p.network.interfaces[0].dhcp);
}

#[test]
fn users_unique() {
    let u = |n: &str, uid: u32| format!("[[identity.users]]\nname = \"{n}\"\nuid = {uid}\n");
    let t = format!("{GOOD}{}{}", u("ann", 1000), u("ann", 1001));
    assert_eq!(
        one_err(&t),
        "17:8 user \"ann\" is defined twice; give each user once"
    );
    let t = format!("{GOOD}{}{}", u("ann", 1000), u("bob", 1000));
    assert_eq!(
        one_err(&t),
        "18:7 uid 1000 is already used by user \"ann\"; give each user its own uid"
    );
    let t = format!("{GOOD}{}", u("Ann", 1000));
    assert!(one_err(&t).contains("is not a valid login"));
    let t = format!("{GOOD}{}", u("root", 1000));
    assert!(one_err(&t).contains("root_authorized_keys"));
}

#[test]
fn ssh_keys_checked() {
    let t = format!("{GOOD}[identity]\nroot_authorized_keys = [\"{KEY}\", \"not a key\"]\n");
    let e = one_err(&t);
    assert!(
        e.starts_with("14:113 ") && e.contains("\"not a key\" is not an SSH public key"),
        "{e}"
    );
    let t =
        format!("{GOOD}[identity]\nroot_authorized_keys = [\"from=\\\"10.0.0.0/8\\\" {KEY}\"]\n");
    assert!(load(&t).is_ok());
}

#[test]
fn every_error_at_once() {
    let t = GOOD
        .replace("\"1M\"", "\"10X\"")
        .replace("mount = \"/\"", "mount = \"/\"\nmout = 1")
        + "[identity]\nhostname = \"{nope}\"\n[boot]\nloader = \"lilo\"\n";
    let e = errs(&t);
    assert_eq!(e.len(), 4, "{e:#?}");
}

#[test]
fn extends_merges_tables_and_replaces_arrays() {
    let base = format!("{GOOD}[identity]\nhostname = \"base-{{mac6}}\"\nfresh_ssh_host_keys = false\nroot_authorized_keys = [\"{KEY}\"]\n");
    let child = "extends = \"base\"\n[identity]\nhostname = \"child-{mac}\"\nroot_authorized_keys = []\n[[disk.partitions]]\nsize = \"rest\"\n[boot]\nloader = \"none\"\n";
    let mut resolve = |n: &str| -> Result<(String, String), String> {
        assert_eq!(n, "base");
        Ok(("base.toml".into(), base.clone()))
    };
    let p = Profile::from_str_with("child.toml", child, &mut resolve).unwrap();
    assert_eq!(p.identity.hostname, "child-{mac}");
    assert!(!p.identity.fresh_ssh_host_keys, "kept from base");
    assert!(p.identity.root_authorized_keys.is_empty(), "array replaced");
    assert_eq!(p.disk.partitions.len(), 1, "array replaced");
    assert_eq!(p.archive.name, "debian-12", "inherited");
    assert_eq!(p.chain, vec!["base".to_string(), "child".to_string()]);
}

#[test]
fn extends_errors_point_into_the_right_file() {
    let base = GOOD.replace("\"1M\"", "\"1Q\"");
    let mut resolve = |_: &str| Ok(("dir/base.toml".to_string(), base.clone()));
    let e =
        Profile::from_str_with("dir/web.toml", "extends = \"base\"\n", &mut resolve).unwrap_err();
    assert_eq!(e.0.len(), 1);
    assert_eq!(e.0[0].file, "dir/base.toml");
    assert_eq!((e.0[0].line, e.0[0].col), (7, 8));
}

#[test]
fn extends_cycle_names_the_chain() {
    let mut resolve = |n: &str| -> Result<(String, String), String> {
        match n {
            "a" => Ok(("a.toml".into(), "extends = \"b\"\n".into())),
            "b" => Ok(("b.toml".into(), "extends = \"c\"\n".into())),
            "c" => Ok(("c.toml".into(), "\n\nextends = \"a\"\n".into())),
            _ => Err("nope".into()),
        }
    };
    let e = Profile::from_str_with("a.toml", "extends = \"b\"\n", &mut resolve).unwrap_err();
    assert_eq!(e.0.len(), 1, "{e}");
    assert_eq!(e.0[0].file, "c.toml");
    assert_eq!((e.0[0].line, e.0[0].col), (3, 11));
    assert!(
        e.0[0]
            .message
            .contains("a.toml -> b.toml -> c.toml -> a.toml"),
        "{e}"
    );
}

#[test]
fn extends_missing_and_bad_names() {
    let e = one_err("extends = \"nothere\"\n");
    assert!(
        e.starts_with("1:11 extends \"nothere\": cannot read the base profile"),
        "{e}"
    );
    let e = one_err("extends = \"../etc/x\"\n");
    assert!(e.contains("is not a profile name"), "{e}");
}

#[test]
fn positions_count_characters() {
    let t = GOOD.replace(
        "size = \"1M\"",
        "name = \"é\"; size = \"1X\""
            .replace("; ", "\nsize = \"é\" # ")
            .as_str(),
    );
    // name = "é" then size line with a multi-byte char before the error column is not needed:
    let _ = t;
    let text = "archive = \"é-12\"\n";
    let e = errs(text);
    assert!(e.iter().any(|x| x.starts_with("1:11 archive")), "{e:?}");
    let text = "description = \"ééé\"; archive = 1\n".replace("; ", "\n");
    let e = errs(&text);
    assert!(
        e.iter()
            .any(|x| x.starts_with("2:11 archive is an integer")),
        "{e:?}"
    );
}

#[test]
fn render_layout_is_exact_and_aligned() {
    let t = GOOD.replace("size = \"rest\"", "size = \"rest\"\n[[disk.partitions]]\nsize = \"25%\"\nfs = \"xfs\"\nmount = \"/var\"\n[[disk.partitions]]\nsize = \"1.5G\"\nfs = \"swap\"");
    let t = t.replacen("fs = \"ext4\"\nmount = \"/\"\n", "", 1).replace(
        "size = \"rest\"\n",
        "size = \"rest\"\nfs = \"ext4\"\nmount = \"/\"\n",
    );
    let p = load(&t).unwrap();
    let disk = 20u64 << 30;
    let plan = p.render(&facts(disk)).unwrap();
    let parts = &plan.disk.partitions;
    assert_eq!(parts.len(), 4);
    let usable = disk - 2 * MIB; // 1 MiB head; the GPT tail rounds to the last MiB
    assert_eq!(parts[0].start_bytes, MIB);
    assert_eq!(parts[0].size_bytes, MIB);
    assert_eq!(parts[2].size_bytes, usable / 4 / MIB * MIB);
    assert_eq!(parts[3].size_bytes, 1536 * MIB);
    let mut at = MIB;
    for p in parts {
        assert_eq!(p.start_bytes, at);
        assert_eq!(p.start_bytes % MIB, 0);
        assert_eq!(p.size_bytes % MIB, 0);
        assert_eq!(p.start_sector, p.start_bytes / 512);
        assert_eq!(p.end_sector, (p.start_bytes + p.size_bytes) / 512 - 1);
        at += p.size_bytes;
    }
    assert_eq!(at, disk - MIB, "rest fills to the last whole MiB");
    assert!((parts[3].end_sector + 1) * 512 + 33 * 512 <= disk);
    assert_eq!(parts[1].device, "/dev/vda2");
}

#[test]
fn render_counts_in_the_disks_sector_size_and_says_what_it_rounded() {
    let t = GOOD.replace("size = \"1M\"", "size = \"1000K\"");
    let p = load(&t).unwrap();
    // A 4K-native disk whose size is not a whole number of MiB.
    let disk = (3u64 << 30) + 4096 * 7;
    let mut f = facts(disk);
    f.disks[0].sector_size = 4096;
    let plan = p.render(&f).unwrap();
    assert_eq!(plan.disk.sector_size, 4096);
    let parts = &plan.disk.partitions;
    assert_eq!((parts[0].start_sector, parts[0].end_sector), (256, 511));
    assert_eq!(parts[1].start_sector, 512);
    assert_eq!(
        (parts[1].end_sector + 1) * 4096,
        parts[1].start_bytes + parts[1].size_bytes
    );
    // The backup GPT (16 KiB of entries and a 4 KiB header) fits behind the last one.
    assert!((parts[1].end_sector + 1) * 4096 + 16384 + 4096 <= disk);
    assert_eq!(
        parts[0].note.as_deref(),
        Some("size 1000 KiB rounded up to 1 MiB: partitions start and end on 1 MiB boundaries")
    );
    assert_eq!(parts[1].note, None);
    // The same profile on a 512-byte disk: the same bytes, eight times the sectors.
    let plan512 = p.render(&facts(disk)).unwrap();
    for (a, b) in plan512.disk.partitions.iter().zip(parts) {
        assert_eq!((a.start_bytes, a.size_bytes), (b.start_bytes, b.size_bytes));
        assert_eq!(a.start_sector, b.start_sector * 8);
    }
    f.disks[0].sector_size = 520;
    let e = p.render(&f).unwrap_err().to_string();
    assert_eq!(e, "profile t: disk /dev/vda reports 520-byte logical sectors; only 512 to 4096 (a power of two) are supported");
}

#[test]
fn render_disk_too_small_says_how_much() {
    let t = GOOD.replace("\"1M\"", "\"8G\"");
    let p = load(&t).unwrap();
    let e = p.render(&facts(4 << 30)).unwrap_err();
    match &e {
        RenderError::DiskTooSmall { need_bytes, .. } => {
            assert!(*need_bytes > 8 << 30);
            // and that much is enough
            assert!(p.render(&facts(*need_bytes)).is_ok());
            assert!(p.render(&facts(*need_bytes - 2 * MIB)).is_err());
        }
        other => panic!("{other:?}"),
    }
    let msg = e.to_string();
    assert!(
        msg.contains("disk /dev/vda has 4 GiB but the layout needs at least"),
        "{msg}"
    );
    // percentages count too
    let t = format!("{GOOD}[[disk.partitions]]\nsize = \"50%\"\n").replace("\"1M\"", "\"1G\"");
    let p = load(&t).unwrap();
    let RenderError::DiskTooSmall { need_bytes, .. } = p.render(&facts(2 << 30)).unwrap_err()
    else {
        panic!()
    };
    assert!(p.render(&facts(need_bytes)).is_ok());
}

#[test]
fn render_picks_disks() {
    let client = ClientFacts {
        mac: "52:54:00:aa:bb:cc".into(),
        disks: vec![
            DiskFact {
                path: "/dev/sda".into(),
                size: 8 << 30,
                serial: Some("SMALL".into()),
                sector_size: 512,
                ..Default::default()
            },
            DiskFact {
                path: "/dev/nvme0n1".into(),
                size: 100 << 30,
                serial: Some("BIG".into()),
                sector_size: 512,
                ..Default::default()
            },
        ],
        hostname: Some("db1".into()),
    };
    let p = load(GOOD).unwrap();
    assert_eq!(p.render(&client).unwrap().disk.path, "/dev/sda");
    let p = load(&GOOD.replace("[disk]", "[disk]\nsize = \"50G..\"")).unwrap();
    let plan = p.render(&client).unwrap();
    assert_eq!(plan.disk.path, "/dev/nvme0n1");
    assert_eq!(plan.disk.partitions[1].device, "/dev/nvme0n1p2");
    let p = load(&GOOD.replace("[disk]", "[disk]\nserial = \"SMALL\"")).unwrap();
    assert_eq!(p.render(&client).unwrap().disk.path, "/dev/sda");
    let p = load(&GOOD.replace("[disk]", "[disk]\npath = \"/dev/vdb\"")).unwrap();
    let e = p.render(&client).unwrap_err().to_string();
    assert!(
        e.contains("no disk of the client matches path /dev/vdb"),
        "{e}"
    );
    assert!(e.contains("/dev/sda 8 GiB serial SMALL"), "{e}");
    let mut none = client.clone();
    none.disks.clear();
    assert!(matches!(
        load(GOOD).unwrap().render(&none),
        Err(RenderError::NoMatchingDisk { .. })
    ));
}

/// A server's disks: a small SATA SSD, two SAS disks (one spinning), an NVMe SSD.
fn server_disks() -> ClientFacts {
    let d = |path: &str, gib: u64, t: Transport, rot: bool, ids: &[&str]| DiskFact {
        path: path.into(),
        size: gib << 30,
        serial: Some(format!("S-{gib}")),
        ids: ids.iter().map(|s| s.to_string()).collect(),
        rotational: Some(rot),
        transport: Some(t),
        ..Default::default()
    };
    ClientFacts {
        mac: "52:54:00:aa:bb:cc".into(),
        disks: vec![
            d("/dev/sda", 2, Transport::Sata, false, &[]),
            d(
                "/dev/sdb",
                4000,
                Transport::Sas,
                true,
                &["wwn-0x5000c500a1b2c3d4"],
            ),
            d("/dev/sdc", 900, Transport::Sas, false, &[]),
            d(
                "/dev/nvme0n1",
                480,
                Transport::Nvme,
                false,
                &["nvme-Samsung_SSD_980_S64"],
            ),
        ],
        hostname: None,
    }
}

#[test]
fn render_picks_disks_by_transport_media_id_and_smallest_that_fits() {
    let client = server_disks();
    // A layout needing a bit over 3 GiB: the 2 GiB SATA disk is too small.
    let big = GOOD.replace("size = \"1M\"", "size = \"3G\"");
    let pick = |select: &str| {
        load(&big.replace("[disk]", &format!("[disk]\n{select}")))
            .unwrap()
            .render(&client)
            .map(|p| p.disk.path)
            .map_err(|e| e.to_string())
    };
    assert_eq!(pick("transport = \"nvme\"").unwrap(), "/dev/nvme0n1");
    assert_eq!(pick("transport = \"sas\"").unwrap(), "/dev/sdb");
    assert_eq!(
        pick("transport = \"sas\"\nmedia = \"ssd\"").unwrap(),
        "/dev/sdc"
    );
    assert_eq!(pick("media = \"hdd\"").unwrap(), "/dev/sdb");
    assert_eq!(
        pick("by_id = \"nvme-Samsung_SSD_980_S64\"").unwrap(),
        "/dev/nvme0n1"
    );
    assert_eq!(
        pick("by_id = \"/dev/disk/by-id/wwn-0x5000c500a1b2c3d4\"").unwrap(),
        "/dev/sdb"
    );
    // The smallest that fits skips the 2 GiB disk; among SSDs it is the NVMe one.
    assert_eq!(pick("pick = \"smallest\"").unwrap(), "/dev/nvme0n1");
    assert_eq!(
        pick("pick = \"smallest\"\nmedia = \"hdd\"").unwrap(),
        "/dev/sdb"
    );
    // Without `pick = "smallest"` the first disk is taken, fit or not.
    assert!(pick("").unwrap_err().contains("disk /dev/sda has 2 GiB"));
    // When nothing that matches fits, the largest match says by how much.
    let e = pick("pick = \"smallest\"\ntransport = \"sata\"").unwrap_err();
    assert!(
        e.contains("disk /dev/sda has 2 GiB but the layout needs at least"),
        "{e}"
    );
    let e = pick("transport = \"usb\"\nmedia = \"ssd\"").unwrap_err();
    assert!(
        e.contains("no disk of the client matches transport usb, media ssd (the client has: /dev/sda 2 GiB sata ssd serial S-2; /dev/sdb 3.9 TiB (4294967296000 bytes) sas hdd serial S-4000;"),
        "{e}"
    );
    assert_eq!(
        one_err(&GOOD.replace("[disk]", "[disk]\ntransport = \"scsci\"")),
        "4:13 disk.transport \"scsci\" is not known; did you mean \"scsi\"? use one of \"nvme\", \"sata\", \"sas\", \"scsi\", \"virtio\", \"usb\""
    );
    assert!(one_err(&GOOD.replace("[disk]", "[disk]\nby_id = \"a/b\""))
        .contains("is not a /dev/disk/by-id/ name"));
}

#[test]
fn render_hostnames() {
    let p = load(&format!("{GOOD}[identity]\nhostname = \"web-{{mac6}}\"\n")).unwrap();
    assert_eq!(p.render(&facts(4 << 30)).unwrap().hostname, "web-aabbcc");
    let p = load(&format!("{GOOD}[identity]\nhostname = \"{{name}}\"\n")).unwrap();
    assert!(matches!(
        p.render(&facts(4 << 30)),
        Err(RenderError::NoClientHostname { .. })
    ));
    let mut f = facts(4 << 30);
    f.hostname = Some("db1".into());
    assert_eq!(p.render(&f).unwrap().hostname, "db1");
    f.hostname = Some("bad name".into());
    assert!(matches!(p.render(&f), Err(RenderError::BadHostname { .. })));
    f.mac = "nope".into();
    assert!(matches!(p.render(&f), Err(RenderError::BadMac { .. })));
}

#[test]
fn render_steps_in_order() {
    let t = format!("hooks = [\"echo one\", \"echo two\"]\n{GOOD}[identity]\nroot_authorized_keys = [\"{KEY}\"]\n[[identity.users]]\nname = \"ann\"\n");
    let plan = load(&t).unwrap().render(&facts(4 << 30)).unwrap();
    let names: Vec<String> = plan
        .steps
        .iter()
        .map(|s| {
            serde_json::to_value(s).unwrap()["step"]
                .as_str()
                .unwrap()
                .to_string()
        })
        .collect();
    assert_eq!(
        names,
        [
            "partition",
            "format",
            "mount",
            "extract",
            "fstab",
            "hostname",
            "machine_id",
            "ssh_host_keys",
            "root_authorized_keys",
            "user",
            "network",
            "boot_loader",
            "hook",
            "hook",
            "unmount"
        ]
    );
    let json = serde_json::to_string(&plan).unwrap();
    let back: InstallPlan = serde_json::from_str(&json).unwrap();
    assert_eq!(back, plan);
}

#[test]
fn suggestions() {
    assert_eq!(suggest("mout", &["mount", "fs"]), Some("mount"));
    assert_eq!(suggest("mca6", &["mac", "mac6", "name"]), Some("mac6"));
    assert_eq!(suggest("zzzzzz", &["mount", "fs"]), None);
}

#[test]
fn rules_still_run_beside_a_bad_size() {
    let t = format!("{GOOD}\n[[disk.partitions]]\nsize = \"1Q\"\nfs = \"xfs\"\nmount = \"/\"\n");
    let e = errs(&t);
    assert_eq!(e.len(), 2, "{e:#?}");
    assert!(e[0].starts_with("15:8 size \"1Q\""), "{e:?}");
    assert!(
        e[1].starts_with("17:9 mount point \"/\" is already used by partition 2"),
        "{e:?}"
    );
}

#[test]
fn extends_must_be_a_string() {
    let e = one_err("extends = 3\n");
    assert_eq!(
        e,
        "1:11 extends is an integer, not a string; write e.g. extends = \"base\""
    );
    let mut resolve = |_: &str| Ok(("base.toml".to_string(), format!("extends = [1]\n{GOOD}")));
    let e = Profile::from_str_with("web.toml", "extends = \"base\"\n", &mut resolve).unwrap_err();
    assert_eq!(e.0.len(), 1, "{e}");
    assert_eq!(
        (e.0[0].file.as_str(), e.0[0].line, e.0[0].col),
        ("base.toml", 1, 11)
    );
}

/// A mirrored layout with `disk`, `raid` and `lvm` tables replaced as given.
fn mirror(count: &str, parts: &str, raid: &str, lvm: &str) -> String {
    format!(
        "archive = \"debian-12\"\n[disk]\n{count}\n{parts}\n{raid}\n{lvm}\n[boot]\nfirmware = \"uefi\"\n"
    )
}

const ESP_AND_MEMBER: &str = "[[disk.partitions]]\ntype = \"efi\"\nsize = \"256M\"\n[[disk.partitions]]\ntype = \"raid\"\nsize = \"rest\"";
const VG: &str = "[lvm]\nvg = \"vg0\"\n[[lvm.volumes]]\nname = \"root\"\nsize = \"rest\"\nfs = \"ext4\"\nmount = \"/\"";

#[test]
fn raid_and_lvm_rules_name_the_fix() {
    let ok = mirror("count = 2", ESP_AND_MEMBER, "[raid]\nlevel = 1", VG);
    assert_eq!(errs(&ok), Vec::<String>::new());
    let cases = [
        (
            mirror("", ESP_AND_MEMBER, "[raid]\nlevel = 1", VG),
            "[raid] level 1 mirrors disks, but disk.count is 1; set disk.count = 2",
        ),
        (
            mirror("count = 2", ESP_AND_MEMBER, "[raid]\nlevel = 5", VG),
            "raid.level 5 is not supported; use level = 1",
        ),
        (
            mirror("count = 2", ESP_AND_MEMBER, "", VG),
            "partition 2 is of type \"raid\" but the profile has no [raid]",
        ),
        (
            mirror("count = 2", ESP_AND_MEMBER, "[raid]\nlevel = 1", ""),
            "[raid] makes an array but nothing goes on it; add [lvm]",
        ),
        (
            mirror("count = 0", ESP_AND_MEMBER, "[raid]\nlevel = 1", VG),
            "disk.count 0 is not a number of disks; write 1 to 16",
        ),
        (
            mirror(
                "count = 2",
                "[[disk.partitions]]\ntype = \"efi\"\nsize = \"256M\"\n[[disk.partitions]]\nsize = \"rest\"\nfs = \"ext4\"\nmount = \"/data\"",
                "",
                VG,
            ),
            "partition 2 has a file system, but disk.count = 2 puts this layout on every disk",
        ),
        (
            mirror(
                "count = 2",
                "[[disk.partitions]]\ntype = \"raid\"\nsize = \"rest\"\nfs = \"ext4\"",
                "[raid]\nlevel = 1",
                VG,
            ),
            "a raid partition holds no file system of its own",
        ),
        (
            mirror("", "[[disk.partitions]]\ntype = \"efi\"\nsize = \"256M\"", "", VG),
            "[lvm] has no physical volume",
        ),
        (
            mirror(
                "count = 2",
                ESP_AND_MEMBER,
                "[raid]\nlevel = 1",
                "[lvm]\nvg = \"vg-0\"\n[[lvm.volumes]]\nname = \"root\"\nsize = \"rest\"\nfs = \"ext4\"\nmount = \"/\"",
            ),
            "volume group name \"vg-0\" may only hold letters, digits and _ . +",
        ),
        (
            mirror(
                "count = 2",
                ESP_AND_MEMBER,
                "[raid]\nlevel = 1",
                &format!("{VG}\n[[lvm.volumes]]\nname = \"boot\"\nsize = \"1G\"\nfs = \"ext4\"\nmount = \"/boot/efi\""),
            ),
            "mount point \"/boot/efi\" is already used by partition 1",
        ),
        (
            mirror(
                "count = 2",
                ESP_AND_MEMBER,
                "[raid]\nlevel = 1",
                "[lvm]\n[[lvm.volumes]]\nname = \"var\"\nsize = \"rest\"\nfs = \"ext4\"\nmount = \"/var\"",
            ),
            "no volume is mounted at \"/\"",
        ),
        (
            mirror("count = 2", ESP_AND_MEMBER, "[raid]\nlevel = 1", VG)
                .replace("[boot]\n", "[boot]\nloader = \"extlinux\"\n"),
            "extlinux cannot read LVM, but / is on volume 1",
        ),
    ];
    for (text, want) in cases {
        let e = errs(&text);
        assert!(
            e.iter().any(|m| m.contains(want)),
            "want {want:?} in {e:#?}\n{text}"
        );
    }
}

#[test]
fn lvm_on_plain_partitions_spans_every_disk() {
    let text = mirror(
        "count = 2",
        "[[disk.partitions]]\ntype = \"efi\"\nsize = \"256M\"\n[[disk.partitions]]\ntype = \"lvm\"\nsize = \"rest\"",
        "",
        &format!("{VG}\n[[lvm.volumes]]\nname = \"home\"\nsize = \"50%\"\nfs = \"xfs\"\nmount = \"/home\""),
    );
    let p = load(&text).unwrap();
    let mut f = facts(2 << 30);
    f.disks.push(DiskFact {
        path: "/dev/vdb".into(),
        ..f.disks[0].clone()
    });
    let plan = p.render(&f).unwrap();
    let lvm = plan.lvm.unwrap();
    assert_eq!(lvm.pvs, ["/dev/vda2", "/dev/vdb2"]);
    assert!(plan.raid.is_none());
    let pv = plan.disk.partitions[1].size_bytes;
    let extents = 2 * ((pv - PV_DATA_START) / EXTENT);
    assert_eq!(lvm.size_bytes, extents * EXTENT);
    assert_eq!(lvm.volumes[1].size_bytes, extents / 2 * EXTENT);
    assert_eq!(lvm.volumes[0].size_bytes, (extents - extents / 2) * EXTENT);
}

#[test]
fn pick_smallest_takes_the_smallest_disks_that_fit_in_the_clients_order() {
    let text = mirror(
        "count = 2\npick = \"smallest\"",
        ESP_AND_MEMBER,
        "[raid]\nlevel = 1",
        VG,
    );
    let p = load(&text).unwrap();
    let disk = |path: &str, size: u64| DiskFact {
        path: path.into(),
        size,
        ..Default::default()
    };
    let mut f = facts(0);
    f.disks = vec![
        disk("/dev/sda", 8 << 30),
        disk("/dev/sdb", 200 << 20),
        disk("/dev/sdc", 6 << 30),
        disk("/dev/sdd", 4 << 30),
    ];
    let plan = p.render(&f).unwrap();
    let paths: Vec<&str> = plan.disks().map(|d| d.path.as_str()).collect();
    assert_eq!(
        paths,
        ["/dev/sdc", "/dev/sdd"],
        "sdb is too small for the layout"
    );
    // Laid out for the smaller of the two.
    assert_eq!(
        plan.raid.unwrap().size_bytes + RAID_DATA_OFFSET,
        plan.disk.partitions[1].size_bytes
    );
    assert!(plan.disk.partitions[1].end_sector < (4u64 << 30) / 512);
}
