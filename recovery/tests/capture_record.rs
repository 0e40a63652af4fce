//! A block capture of a real ext4 file system (made by mke2fs from a directory) records what
//! a recovery needs — the file system's type, UUID and label, the hostname, machine-id and
//! mount table read from it — and `diff` of two captures names the partitions and the paths
//! that changed.

use std::process::Command;
use std::sync::Arc;
use std::time::Instant;

use ignite_archive::diff::Change;
use ignite_archive::{FileImage, Progress, Store, StoreConfig};
use ignite_e2e::{have, require_all, run};
use ignite_recovery::capture::block::BlockDisk;
use ignite_recovery::capture::record::{CaptureStats, Record, SourceInfo};
use ignite_recovery::capture::{diff, finish, read_disks};

const UUID: &str = "3f1c2a4e-8b7d-4c6a-9e21-5d0f7a3b9c11";

fn make_fs(dir: &std::path::Path, img: &std::path::Path) {
    let _ = std::fs::remove_file(img);
    run(Command::new("mke2fs")
        .args(["-q", "-F", "-t", "ext4", "-L", "rootfs", "-U", UUID, "-d"])
        .arg(dir)
        .arg(img)
        .arg("64M"));
}

fn capture(store: &Arc<Store>, img: &std::path::Path) -> Record {
    let disks = vec![BlockDisk {
        index: 0,
        reader: Box::new(FileImage::open(img).unwrap()),
        changes: None,
    }];
    let ms = read_disks(store, "host1", &disks, &Progress::default()).unwrap();
    let source = SourceInfo::Client {
        mac: None,
        facts: serde_json::json!({}),
    };
    let (m, r) = finish(
        store.clone(),
        "host1",
        source,
        &[(0, ms[0].clone())],
        CaptureStats::default(),
        Instant::now(),
    )
    .unwrap();
    // What was stored reads back the same.
    assert_eq!(Record::load(store, &m.id).unwrap().1, r);
    r
}

#[test]
fn records_the_system_on_an_ext4_disk_and_diffs_two_captures() {
    if !require_all(&[("mke2fs with -d (e2fsprogs)", have("mke2fs"))]) {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().join("root");
    std::fs::create_dir_all(root.join("etc")).unwrap();
    std::fs::write(root.join("etc/hostname"), "web1\n").unwrap();
    std::fs::write(
        root.join("etc/machine-id"),
        "0123456789abcdef0123456789abcdef\n",
    )
    .unwrap();
    std::fs::write(
        root.join("etc/fstab"),
        format!("# static\nUUID={UUID} / ext4 errors=remount-ro 0 1\n"),
    )
    .unwrap();
    std::fs::write(root.join("a"), "one").unwrap();
    std::fs::write(root.join("b"), "two").unwrap();
    let img = tmp.path().join("disk.img");
    make_fs(&root, &img);
    let store = Arc::new(Store::init(&tmp.path().join("store"), StoreConfig::default()).unwrap());

    let r1 = capture(&store, &img);
    let p = &r1.disks[0].layout.partitions[0];
    let fs = p.fs.as_ref().unwrap();
    assert_eq!((p.number, fs.fs_type.as_str()), (0, "ext4"));
    assert_eq!(fs.uuid.as_deref(), Some(UUID));
    assert_eq!(fs.label.as_deref(), Some("rootfs"));
    assert_eq!(r1.system.hostname.as_deref(), Some("web1"));
    assert_eq!(
        r1.system.machine_id.as_deref(),
        Some("0123456789abcdef0123456789abcdef")
    );
    assert_eq!(r1.system.fstab.len(), 1);
    assert_eq!(r1.system.fstab[0].mount, "/");

    std::fs::write(root.join("a"), "one, and more").unwrap();
    std::fs::remove_file(root.join("b")).unwrap();
    std::fs::write(root.join("c"), "three").unwrap();
    make_fs(&root, &img);
    let r2 = capture(&store, &img);

    let d = diff::diff(store, &r1, &r2).unwrap();
    assert_eq!(d.regions.len(), 1);
    assert!(d.regions[0].changed_bytes > 0);
    assert_eq!(d.regions[0].partitions[0].1.as_deref(), Some("/"));
    let (_, _, mount, changes) = &d.files[0];
    assert_eq!(mount.as_deref(), Some("/"));
    let has = |want: &Change| changes.contains(want);
    assert!(has(&Change::Added { path: "/c".into() }), "{changes:?}");
    assert!(has(&Change::Removed { path: "/b".into() }), "{changes:?}");
    assert!(
        changes.iter().any(|c| matches!(c, Change::Changed { path, what } if path == "/a" && what.iter().any(|w| w == "size"))),
        "{changes:?}"
    );
    assert!(!changes
        .iter()
        .any(|c| matches!(c, Change::Changed { path, .. } if path == "/etc/hostname")));
}

/// A GPT made by sgdisk (the peer) reads back with each partition's kind, and the firmware
/// its layout boots with: what restore, clone and `show --profile` rely on.
#[test]
fn gpt_partition_kinds_and_firmware_are_recorded() {
    if !require_all(&[("sgdisk", have("sgdisk"))]) {
        return;
    }
    use ignite_recovery::capture::layout;
    let dir = tempfile::tempdir().unwrap();
    let img = dir.path().join("gpt.img");
    std::fs::File::create(&img)
        .unwrap()
        .set_len(64 << 20)
        .unwrap();
    run(Command::new("sgdisk")
        .arg("-n1:2048:+1M")
        .arg("-t1:ef02")
        .arg("-n2:0:+8M")
        .arg("-t2:ef00")
        .arg("-n3:0:+8M")
        .arg("-t3:8200")
        .arg("-n4:0:0")
        .arg("-t4:8300")
        .arg(&img));
    let reader = Arc::new(FileImage::open(&img).unwrap());
    let l = layout::probe(reader.as_ref()).unwrap();
    let kinds: Vec<Option<&str>> = l.partitions.iter().map(|p| p.kind.as_deref()).collect();
    assert_eq!(
        kinds,
        [Some("bios_boot"), Some("efi"), Some("swap"), Some("linux")]
    );
    let sys = layout::system_info(reader, &l);
    assert_eq!(sys.firmware, ["uefi", "bios"]);
}
