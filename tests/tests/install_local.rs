//! `ignite install` end to end onto a disk image file (its partitions on loop devices): the
//! debootstrap golden archive installed with a two-partition profile, then checked with
//! independent tools (sgdisk, sfdisk, blkid, e2fsck, GNU tar --compare).

use std::path::{Path, PathBuf};
use std::process::Command;

use ignite_e2e::{ignite_bin, run};

/// Loop devices over the image's partitions (and a mount), undone on drop, also when the
/// test fails.
#[derive(Default)]
struct Loops {
    devs: Vec<String>,
    mnt: Option<PathBuf>,
}

impl Loops {
    fn attach(&mut self, img: &Path, part: &serde_json::Value) -> String {
        let start = part["start"].as_u64().unwrap() * 512;
        let size = part["size"].as_u64().unwrap() * 512;
        let dev = run(Command::new("losetup")
            .args(["--show", "-f", "-r", "--offset", &start.to_string()])
            .args(["--sizelimit", &size.to_string()])
            .arg(img))
        .trim()
        .to_string();
        self.devs.push(dev.clone());
        dev
    }
}

impl Drop for Loops {
    fn drop(&mut self) {
        if let Some(m) = &self.mnt {
            let _ = Command::new("umount").arg(m).status();
        }
        for d in &self.devs {
            let _ = Command::new("losetup").args(["-d", d]).status();
        }
    }
}

const PROFILE: &str = r#"
archive = "debian-12"
hooks = ["echo hook-ran-in-$(cat /etc/hostname) > /root/hook-marker"]

[[disk.partitions]]
type = "swap"
size = "64M"
fs = "swap"

[[disk.partitions]]
name = "root"
size = "1200M"
fs = "ext4"
mount = "/"
options = ["noatime", "errors=remount-ro"]

[[disk.partitions]]
name = "srv"
size = "rest"
fs = "xfs"
mount = "/srv"

[identity]
hostname = "web-{mac6}"
fresh_machine_id = true
fresh_ssh_host_keys = true
root_authorized_keys = ["ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIOMqqnkVzrm0SdG6UOoqKLsabgH5C9okWi0dh2l9GKJl admin@ignite"]

[network]
format = "ifupdown"

[network.interfaces.boot]
dhcp = true

[boot]
loader = "none"
"#;

/// The debootstrap fixture imported as `debian-12` into a new store under `dir`; returns the
/// fixture tree and the store.
fn golden_store(dir: &Path) -> (PathBuf, PathBuf) {
    let fixture = run(&mut Command::new(
        ignite_e2e::repo_root().join("scripts/fixtures/rootfs"),
    ));
    let base = PathBuf::from(fixture.lines().next().unwrap());
    let tar = PathBuf::from(fixture.lines().nth(1).unwrap());
    let store = dir.join("store");
    run(Command::new(ignite_bin())
        .args(["archive", "init", "--store"])
        .arg(&store));
    run(Command::new(ignite_bin())
        .args(["archive", "import", "--name", "debian-12", "--store"])
        .arg(&store)
        .arg(&tar));
    (base, store)
}

#[test]
fn debootstrap_image_installs_onto_a_disk_image() {
    if !ignite_e2e::require_tools(&[
        "losetup",
        "sgdisk",
        "sfdisk",
        "blkid",
        "e2fsck",
        "mkfs.vfat",
        "tar",
    ]) {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let (base, store) = golden_store(dir.path());
    let profile = dir.path().join("web.toml");
    std::fs::write(&profile, PROFILE).unwrap();

    let img = dir.path().join("disk.img");
    std::fs::File::create(&img)
        .unwrap()
        .set_len(2 << 30)
        .unwrap();
    let out = Command::new(ignite_bin())
        .args(["install", "--profile"])
        .arg(&profile)
        .arg("--disk")
        .arg(&img)
        .args(["--mac", "52:54:00:ab:cd:ef", "--store"])
        .arg(&store)
        .arg("--root")
        .arg(dir.path().join("target"))
        .output()
        .unwrap();
    let log = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "ignite install failed:\n{log}");
    eprintln!("{log}");
    for phase in [
        "partitioned",
        "formatted",
        "extracted",
        "configured",
        "done",
    ] {
        assert!(
            log.contains(&format!("\"phase\":\"{phase}\"")),
            "no {phase} phase in:\n{log}"
        );
    }

    assert_eq!(
        run(Command::new("losetup").args(["-j"]).arg(&img)),
        "",
        "ignite install left loop devices attached"
    );
    let v = run(Command::new("sgdisk").arg("-v").arg(&img));
    assert!(v.contains("No problems found"), "{v}");
    let json: serde_json::Value =
        serde_json::from_str(&run(Command::new("sfdisk").arg("--json").arg(&img))).unwrap();
    let parts = json["partitiontable"]["partitions"]
        .as_array()
        .unwrap()
        .clone();
    assert_eq!(parts.len(), 3);
    assert_eq!(parts[0]["start"], 2048);
    assert_eq!(parts[0]["size"], 64 * 2048);
    assert_eq!(parts[0]["type"], "0657FD6D-A4AB-43C4-84E5-0933C84B4F4F");
    assert_eq!(parts[1]["start"], 2048 + 64 * 2048);
    assert_eq!(parts[1]["size"], 1200 * 2048);
    assert_eq!(parts[1]["name"], "root");
    assert_eq!(parts[1]["type"], "0FC63DAF-8483-4772-8E79-3D69D8477DE4");
    assert_eq!(parts[2]["name"], "srv");

    let mut lo = Loops::default();
    let p1 = lo.attach(&img, &parts[0]);
    let p2 = lo.attach(&img, &parts[1]);
    let p3 = lo.attach(&img, &parts[2]);
    let blkid = |dev: &str, tag: &str| {
        run(Command::new("blkid").args(["-p", "-o", "value", "-s", tag, dev]))
            .trim()
            .to_string()
    };
    assert_eq!(blkid(&p1, "TYPE"), "swap");
    assert_eq!(blkid(&p2, "TYPE"), "ext4");
    assert_eq!(blkid(&p2, "LABEL"), "root");
    assert_eq!(blkid(&p3, "TYPE"), "xfs");
    run(Command::new("e2fsck").args(["-fn", &p2]));
    if ignite_e2e::which("xfs_repair").is_some() {
        run(Command::new("xfs_repair").args(["-n", &p3]));
    }

    let mnt = dir.path().join("mnt");
    std::fs::create_dir_all(&mnt).unwrap();
    run(Command::new("mount").args(["-o", "ro", &p2]).arg(&mnt));
    lo.mnt = Some(mnt.clone());
    let read = |p: &str| std::fs::read_to_string(mnt.join(p)).unwrap();
    let fstab = read("etc/fstab");
    for line in [
        format!(
            "UUID={} / ext4 noatime,errors=remount-ro 0 1",
            blkid(&p2, "UUID")
        ),
        format!("UUID={} /srv xfs defaults 0 2", blkid(&p3, "UUID")),
        format!("UUID={} none swap sw 0 0", blkid(&p1, "UUID")),
    ] {
        assert!(fstab.contains(&line), "no `{line}` in:\n{fstab}");
    }
    assert_eq!(read("etc/hostname"), "web-abcdef\n");
    assert!(read("etc/hosts").contains("127.0.1.1\tweb-abcdef\n"));
    let id = read("etc/machine-id");
    assert_eq!(id.trim().len(), 32);
    assert!(id.trim().chars().all(|c| c.is_ascii_hexdigit()));
    assert_ne!(
        id,
        std::fs::read_to_string(base.join("etc/machine-id")).unwrap_or_default()
    );
    assert_eq!(read("root/hook-marker"), "hook-ran-in-web-abcdef\n");
    assert!(read("root/.ssh/authorized_keys").contains("admin@ignite"));
    assert!(read("etc/network/interfaces").contains("iface boot0 inet dhcp"));
    assert!(
        read("etc/systemd/network/10-ignite-boot.link").contains("MACAddress=52:54:00:ab:cd:ef")
    );

    // Everything else is exactly the golden tree: contents, owners, modes, times, xattrs,
    // hard links (GNU tar compares each against the installed file system).
    let cmp = Command::new("bash")
        .arg("-c")
        .arg(format!(
            "tar -C {} --xattrs --numeric-owner -cf - . | tar -C {} --xattrs --numeric-owner -df - 2>&1",
            base.display(),
            mnt.display()
        ))
        .output()
        .unwrap();
    let changed = [
        "./etc/fstab",
        "./etc/hostname",
        "./etc/hosts",
        "./etc/machine-id",
        "./etc/network",
        "./etc",
        "./root",
        "./etc/systemd",
        "./srv",
        "./boot",
        "./var/lib/dbus/machine-id",
        "./",
    ];
    let diffs = String::from_utf8_lossy(&cmp.stdout);
    eprintln!("tar --compare, golden vs installed:\n{diffs}");
    for line in diffs.lines() {
        let path = line.split(':').next().unwrap_or("");
        assert!(
            changed
                .iter()
                .any(|c| path == *c || path.starts_with(&format!("{c}/"))),
            "installed tree differs from the golden image beyond identity files: {line}"
        );
    }
}

/// A failing hook and a disk too small each end with a clear error, and nothing is left
/// mounted or attached.
#[test]
fn failures_are_reported_and_leave_nothing_behind() {
    if !ignite_e2e::require_tools(&["losetup", "mkfs.xfs", "mkswap"]) {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let (_, store) = golden_store(dir.path());
    let install = |profile: &str, size: u64| {
        let p = dir.path().join("p.toml");
        std::fs::write(&p, profile).unwrap();
        let img = dir.path().join("disk.img");
        let _ = std::fs::remove_file(&img);
        std::fs::File::create(&img).unwrap().set_len(size).unwrap();
        let root = dir.path().join("target");
        let out = Command::new(ignite_bin())
            .args(["install", "--profile"])
            .arg(&p)
            .arg("--disk")
            .arg(&img)
            .arg("--store")
            .arg(&store)
            .arg("--root")
            .arg(&root)
            .output()
            .unwrap();
        assert!(!out.status.success());
        assert_eq!(run(Command::new("losetup").arg("-j").arg(&img)), "");
        let mounts = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
        assert!(!mounts.contains(root.to_str().unwrap()), "{mounts}");
        String::from_utf8_lossy(&out.stderr).into_owned()
    };
    let hook = PROFILE.replace(
        "hooks = [\"echo hook-ran-in-$(cat /etc/hostname) > /root/hook-marker\"]",
        "hooks = [\"true\", \"echo about to fail; exit 3\"]",
    );
    let err = install(&hook, 2 << 30);
    assert!(
        err.contains("hook 2 (`echo about to fail; exit 3`) failed")
            && err.contains("exit status: 3")
            && err.contains("\"phase\":\"failed\""),
        "{err}"
    );
    let err = install(PROFILE, 1 << 30);
    assert!(
        err.contains("has 1 GiB but the layout needs at least 1.2 GiB"),
        "{err}"
    );
}
