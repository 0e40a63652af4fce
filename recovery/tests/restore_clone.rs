//! Restore and clone of a captured disk (a GPT disk with a real ext4 root made by mke2fs):
//! a restore is byte-identical and refuses what it cannot do before writing anything (a
//! device too small, a damaged chunk, a missing snapshot); a clone differs from a plain
//! restore in exactly the identity files, and a hostile image's symlinks lead nowhere.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::time::Instant;

use ignite_archive::{FileImage, Progress, Store, StoreConfig};
use ignite_e2e::{have, is_root, require_all, run, run_output};
use ignite_recovery::capture::block::BlockDisk;
use ignite_recovery::capture::record::{CaptureStats, Record, SourceInfo};
use ignite_recovery::capture::{finish, read_disks};
use ignite_recovery::clone::{reset, MountedImage, NewIdentity};
use ignite_recovery::restore::restore_disk;

const UUID: &str = "8c1e4a2b-5d3f-4e6a-9b21-7d0f1a3b9c22";
const OLD_MAC: &str = "52:54:00:aa:bb:cc";
const NEW_MAC: &str = "52:54:00:12:34:56";
const PART_START: u64 = 1 << 20;
const FS_SIZE: u64 = 48 << 20;
const DISK_SIZE: u64 = 64 << 20;

fn prerequisites() -> bool {
    require_all(&[
        ("root (loop devices, mounts)", is_root()),
        ("mke2fs (e2fsprogs)", have("mke2fs")),
        (
            "sfdisk, losetup (util-linux)",
            have("sfdisk") && have("losetup"),
        ),
        ("ssh-keygen (openssh-client)", have("ssh-keygen")),
    ])
}

/// A source system: identity files, MAC-bound network configuration, a lease, a seed, and
/// hostile symlinks where a careless clone would write.
fn make_root(root: &Path) {
    let w = |p: &str, text: &str| {
        let p = root.join(p);
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(p, text).unwrap();
    };
    w("etc/hostname", "src1\n");
    w(
        "etc/hosts",
        "127.0.0.1\tlocalhost\n127.0.1.1\tsrc1.lab src1\n10.0.0.9\tsrc10 other # src1 here\n",
    );
    w("etc/machine-id", "0123456789abcdef0123456789abcdef\n");
    w(
        "var/lib/dbus/machine-id",
        "0123456789abcdef0123456789abcdef\n",
    );
    w(
        "etc/fstab",
        &format!("UUID={UUID} / ext4 errors=remount-ro 0 1\n"),
    );
    w("etc/ssh/ssh_host_ed25519_key", "old private key\n");
    w(
        "etc/ssh/ssh_host_ed25519_key.pub",
        "ssh-ed25519 OLD root@src1\n",
    );
    w("etc/ssh/sshd_config", "PermitRootLogin no\n");
    w(
        "etc/udev/rules.d/70-persistent-net.rules",
        &format!("SUBSYSTEM==\"net\", ATTR{{address}}==\"{OLD_MAC}\", NAME=\"eth0\"\n"),
    );
    w(
        "etc/systemd/network/10-lan.network",
        &format!(
            "[Match]\nMACAddress={}\n[Network]\nDHCP=yes\n",
            OLD_MAC.to_uppercase()
        ),
    );
    w(
        "var/lib/dhcp/dhclient.eth0.leases",
        "lease { fixed-address 10.0.0.5; }\n",
    );
    w("var/lib/systemd/random-seed", "seed");
    w("home/user/work.txt", "the user's work\n");
    // Where identity files live in other distributions: links out of the image.
    std::os::unix::fs::symlink("/etc/passwd", root.join("etc/ssh/ssh_host_rsa_key")).unwrap();
    std::os::unix::fs::symlink("/etc/shadow", root.join("var/lib/urandom")).unwrap();
}

/// A 64 MiB GPT disk whose one partition (at 1 MiB) holds an ext4 made from `root`.
fn make_disk(root: &Path, img: &Path) {
    std::fs::File::create(img)
        .unwrap()
        .set_len(DISK_SIZE)
        .unwrap();
    let mut sf = Command::new("sfdisk");
    sf.args(["-q", "-X", "gpt"]).arg(img);
    sf.stdin(std::process::Stdio::piped());
    let mut child = sf.spawn().unwrap();
    use std::io::Write;
    writeln!(
        child.stdin.take().unwrap(),
        "start={}, size={}, type=L",
        PART_START / 512,
        FS_SIZE / 512
    )
    .unwrap();
    assert!(child.wait().unwrap().success());
    run(Command::new("mke2fs")
        .args(["-q", "-F", "-t", "ext4", "-U", UUID, "-d"])
        .arg(root)
        .args(["-E", &format!("offset={PART_START}")])
        .arg(img)
        .arg(format!("{}k", FS_SIZE / 1024)));
}

fn capture(store: &Arc<Store>, img: &Path) -> Record {
    let disks = vec![BlockDisk {
        index: 0,
        reader: Box::new(FileImage::open(img).unwrap()),
        changes: None,
    }];
    let ms = read_disks(store, "src1", &disks, &Progress::default()).unwrap();
    let source = SourceInfo::Client {
        mac: None,
        facts: serde_json::json!({}),
    };
    let (_, r) = finish(
        store.clone(),
        "src1",
        source,
        &[(0, ms[0].clone())],
        CaptureStats::default(),
        Instant::now(),
    )
    .unwrap();
    r
}

/// The source disk (`dir/src.img`) captured into store `dir/store`: the image, the store,
/// the record and the disk's snapshot.
fn captured_source(dir: &Path) -> (PathBuf, Arc<Store>, Record, ignite_archive::Manifest) {
    let root = dir.join("root");
    make_root(&root);
    let img = dir.join("src.img");
    make_disk(&root, &img);
    let store = Arc::new(Store::init(&dir.join("store"), StoreConfig::default()).unwrap());
    let rec = capture(&store, &img);
    let disk = store.resolve(&rec.disks[0].snapshot).unwrap();
    (img, store, rec, disk)
}

/// Every file under `dir` with its content (symlinks as their targets), for comparison.
fn files(dir: &Path) -> std::collections::BTreeMap<String, Vec<u8>> {
    let mut out = std::collections::BTreeMap::new();
    let mut stack = vec![PathBuf::new()];
    while let Some(rel) = stack.pop() {
        for e in std::fs::read_dir(dir.join(&rel)).unwrap() {
            let e = e.unwrap();
            let r = rel.join(e.file_name());
            let t = e.file_type().unwrap();
            if t.is_dir() {
                stack.push(r);
            } else if t.is_symlink() {
                let to = std::fs::read_link(e.path()).unwrap();
                out.insert(
                    r.display().to_string(),
                    to.as_os_str().as_encoded_bytes().to_vec(),
                );
            } else {
                out.insert(r.display().to_string(), std::fs::read(e.path()).unwrap());
            }
        }
    }
    out
}

#[test]
fn restore_is_exact_and_a_clone_differs_only_in_identity() {
    if !prerequisites() {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let (img, store, rec, disk) = captured_source(tmp.path());

    // A plain restore is the captured disk, byte for byte.
    let plain = tmp.path().join("plain.img");
    restore_disk(&store, &disk, &plain, &Progress::default()).unwrap();
    assert_eq!(std::fs::read(&plain).unwrap(), std::fs::read(&img).unwrap());

    // A clone: restore, then reset the identity in the image.
    let twin = tmp.path().join("twin.img");
    restore_disk(&store, &disk, &twin, &Progress::default()).unwrap();
    let id = NewIdentity {
        hostname: "twin1".into(),
        macs: vec![(OLD_MAC.into(), NEW_MAC.into())],
    };
    let layout = &rec.disks[0].layout;
    let changed = {
        let m =
            MountedImage::open(&[(&twin, layout)], &rec.system, &tmp.path().join("m1")).unwrap();
        reset(&m, &id, &rec.system).unwrap()
    };
    // Dropped: nothing of the image stays mounted (a guest is about to boot from it).
    let scratch = tmp.path().join("m1").display().to_string();
    let mounts = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
    assert!(
        !mounts.lines().any(|l| l.contains(&scratch)),
        "still mounted under {scratch}:\n{mounts}"
    );
    let passwd = std::fs::read("/etc/passwd").unwrap();

    // Compare the two images' trees.
    let a = MountedImage::open(&[(&plain, layout)], &rec.system, &tmp.path().join("ma")).unwrap();
    let b = MountedImage::open(&[(&twin, layout)], &rec.system, &tmp.path().join("mb")).unwrap();
    let (fa, fb) = (files(a.root_dir()), files(b.root_dir()));
    let mut differ: Vec<String> = fa
        .keys()
        .chain(fb.keys())
        .filter(|k| fa.get(*k) != fb.get(*k))
        .cloned()
        .collect();
    differ.sort();
    differ.dedup();
    let want = [
        "etc/hostname",
        "etc/hosts",
        "etc/machine-id",
        "etc/ssh/ssh_host_ed25519_key",
        "etc/ssh/ssh_host_ed25519_key.pub",
        "etc/ssh/ssh_host_rsa_key",
        "etc/ssh/ssh_host_rsa_key.pub",
        "etc/systemd/network/10-lan.network",
        "etc/udev/rules.d/70-persistent-net.rules",
        "var/lib/dbus/machine-id",
        "var/lib/dhcp/dhclient.eth0.leases",
        "var/lib/systemd/random-seed",
    ];
    assert_eq!(
        differ, want,
        "the clone differs from the capture in exactly these"
    );
    let mut reported: Vec<String> = changed.iter().map(|p| p[1..].to_string()).collect();
    reported.sort();
    assert_eq!(reported, want, "reset reports what it changed");

    let text = |p: &str| String::from_utf8(fb[p].clone()).unwrap();
    assert_eq!(text("etc/hostname"), "twin1\n");
    assert_eq!(
        text("etc/hosts"),
        "127.0.0.1\tlocalhost\n127.0.1.1\ttwin1.lab twin1\n10.0.0.9\tsrc10 other # src1 here\n"
    );
    let mid = text("etc/machine-id");
    assert!(
        mid.len() == 33 && mid != "0123456789abcdef0123456789abcdef\n",
        "{mid}"
    );
    assert_eq!(text("var/lib/dbus/machine-id"), mid);
    assert!(text("etc/ssh/ssh_host_ed25519_key.pub").starts_with("ssh-ed25519 AAAA"));
    assert!(text("etc/ssh/ssh_host_ed25519_key.pub").ends_with("root@twin1\n"));
    assert!(text("etc/udev/rules.d/70-persistent-net.rules").contains(NEW_MAC));
    assert!(text("etc/systemd/network/10-lan.network").contains(&NEW_MAC.to_uppercase()));
    assert!(!fb.contains_key("var/lib/dhcp/dhclient.eth0.leases"));
    assert!(!fb.contains_key("var/lib/systemd/random-seed"));
    // The hostile links were replaced or left, never followed: what they point at on this
    // host is untouched.
    assert!(text("etc/ssh/ssh_host_rsa_key").starts_with("-----BEGIN OPENSSH PRIVATE KEY"));
    assert_eq!(fb["var/lib/urandom"], b"/etc/shadow");
    assert_eq!(std::fs::read("/etc/passwd").unwrap(), passwd);
    drop((a, b));
    let mut loops = ignite_recovery::loopdev::Loops::default();
    let dev = loops.attach(&twin, PART_START, FS_SIZE, true).unwrap();
    let out = run_output(Command::new("e2fsck").args(["-fn", &dev]));
    assert!(
        out.status.success(),
        "the clone's file system is not clean:\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn a_restore_that_cannot_succeed_writes_nothing() {
    if !prerequisites() {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let (_, store, _, disk) = captured_source(tmp.path());
    let store_dir = tmp.path().join("store");

    // A device smaller than the disk: refused, naming the size that works; not one byte written.
    let small = tmp.path().join("small.img");
    std::fs::write(&small, vec![0x5a; (DISK_SIZE / 2) as usize]).unwrap();
    let mut loops = ignite_recovery::loopdev::Loops::default();
    let dev = loops.attach(&small, 0, DISK_SIZE / 2, false).unwrap();
    let err = format!(
        "{:#}",
        restore_disk(&store, &disk, Path::new(&dev), &Progress::default()).unwrap_err()
    );
    assert!(
        err.contains("smaller than the captured disk")
            && err.contains(&format!("at least {DISK_SIZE} bytes")),
        "{err}"
    );
    drop(loops);
    assert!(std::fs::read(&small).unwrap().iter().all(|&b| b == 0x5a));

    // A missing snapshot.
    let err = format!("{:#}", Record::load(&store, "src1@ffffffff").unwrap_err());
    assert!(err.contains("ffffffff"), "{err}");

    // A damaged chunk: the image file target keeps its old content, no temporary is left.
    let target = tmp.path().join("target.img");
    std::fs::write(&target, b"old content").unwrap();
    damage_a_pack(&store_dir);
    let store = Arc::new(Store::open(&store_dir).unwrap());
    let err = format!(
        "{:#}",
        restore_disk(&store, &disk, &target, &Progress::default()).unwrap_err()
    );
    assert!(err.contains("target is unchanged"), "{err}");
    assert_eq!(std::fs::read(&target).unwrap(), b"old content");
    let left: Vec<_> = std::fs::read_dir(tmp.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.contains("restoring"))
        .collect();
    assert!(left.is_empty(), "{left:?}");
    // The same damage on a block device is found before the first write.
    let dev_file = tmp.path().join("dev.img");
    std::fs::write(&dev_file, vec![0x77; DISK_SIZE as usize]).unwrap();
    let mut loops = ignite_recovery::loopdev::Loops::default();
    let dev = loops.attach(&dev_file, 0, DISK_SIZE, false).unwrap();
    let err = format!(
        "{:#}",
        restore_disk(&store, &disk, Path::new(&dev), &Progress::default()).unwrap_err()
    );
    assert!(err.contains("nothing was written"), "{err}");
    drop(loops);
    assert!(std::fs::read(&dev_file).unwrap().iter().all(|&b| b == 0x77));
}

/// Flips a byte in the middle of the largest pack (a chunk's compressed data).
fn damage_a_pack(store: &Path) {
    let mut packs: Vec<(u64, PathBuf)> = walk(&store.join("packs"))
        .into_iter()
        .map(|p| (std::fs::metadata(&p).unwrap().len(), p))
        .collect();
    packs.sort();
    let (len, pack) = packs.pop().expect("a pack");
    let mut data = std::fs::read(&pack).unwrap();
    data[(len / 2) as usize] ^= 0xff;
    std::fs::write(&pack, data).unwrap();
}

fn walk(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir).unwrap() {
        let p = e.unwrap().path();
        if p.is_dir() {
            out.extend(walk(&p));
        } else {
            out.push(p);
        }
    }
    out
}
