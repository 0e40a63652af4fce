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
