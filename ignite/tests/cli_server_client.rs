//! `ignite client …` and `ignite server --check` from the command line (no root needed).

use std::process::Command;

fn ignite(args: &[&str], state: &std::path::Path) -> (bool, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_ignite"))
        .args(args)
        .env("IGNITE_STATE_DIR", state)
        .output()
        .unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn client_registry_from_the_cli() {
    let tmp = tempfile::tempdir().unwrap();
    let st = tmp.path();
    assert!(
        ignite(
            &[
                "client",
                "add",
                "52:54:00:aa:00:01",
                "web1",
                "install",
                "web"
            ],
            st
        )
        .0
    );
    assert!(ignite(&["client", "add", "52-54-00-AA-00-02", "db1"], st).0);
    let (ok, _, err) = ignite(&["client", "add", "52:54:00:aa:00:03", "x", "reboot"], st);
    assert!(!ok && err.contains("not a boot action"), "{err}");
    let (ok, _, err) = ignite(&["client", "add", "nonsense", "y"], st);
    assert!(!ok && err.contains("not a MAC address"), "{err}");
    let (ok, out, _) = ignite(&["client", "list", "--json"], st);
    assert!(ok);
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    let names: Vec<&str> = v
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["db1", "web1"]);
    assert_eq!(v[0]["action"], "local");
    assert_eq!(v[1]["action"], "install");
    assert_eq!(v[1]["arg"], "web");
    assert!(ignite(&["client", "set", "db1", "recover", "db1@latest"], st).0);
    let (_, out, _) = ignite(&["client", "show", "52:54:00:aa:00:02"], st);
    assert!(out.contains("action: recover db1@latest"), "{out}");
    assert!(ignite(&["client", "remove", "web1"], st).0);
    let (ok, _, err) = ignite(&["client", "show", "web1"], st);
    assert!(!ok && err.contains("not registered"), "{err}");
    assert!(ignite(&["client", "default", "capture"], st).0);
    assert_eq!(ignite(&["client", "default"], st).1.trim(), "capture");
}

#[test]
fn server_check_validates_config() {
    let tmp = tempfile::tempdir().unwrap();
    let st = tmp.path();
    let boot = st.join("boot");
    std::fs::create_dir_all(&boot).unwrap();
    let b = boot.to_str().unwrap();
    let (ok, out, err) = ignite(
        &["server", "--check", "--interface", "lo", "--boot-dir", b],
        st,
    );
    assert!(ok, "{err}");
    assert!(
        out.contains("config OK: interface lo (127.0.0.1/8), DHCP 127.0.0.100-127.0.0.199"),
        "{out}"
    );
    // Every default boot file can be made at start: listed, not an error.
    for (file, role) in [
        ("undionly.kpxe", "BIOS PXE clients"),
        ("ipxe.efi", "UEFI x86-64 clients"),
        ("debian/vmlinuz", "install kernel"),
        ("ignite/initrd.img", "install initramfs"),
    ] {
        let line = out.lines().find(|l| l.contains(file)).unwrap_or("");
        assert!(
            line.contains(role) && line.contains("missing: `ignite server` makes it"),
            "{file}: {out}"
        );
    }
    // A file the configuration names otherwise must be provided: --check fails naming it,
    // and says so again once it is there.
    let custom = st.join("custom.toml");
    std::fs::write(&custom, "[boot]\nkernel = \"site/vmlinuz\"\n").unwrap();
    let args = [
        "server",
        "--check",
        "--interface",
        "lo",
        "--boot-dir",
        b,
        "--config",
        custom.to_str().unwrap(),
    ];
    let (ok, out, err) = ignite(&args, st);
    assert!(!ok && err.contains("cannot make"), "{err}");
    assert!(
        out.lines()
            .any(|l| l.contains("site/vmlinuz") && l.contains("MISSING: provide it")),
        "{out}"
    );
    std::fs::create_dir_all(boot.join("site")).unwrap();
    std::fs::write(boot.join("site/vmlinuz"), b"kernel").unwrap();
    let (ok, out, err) = ignite(&args, st);
    assert!(ok, "{err}");
    assert!(
        out.lines()
            .any(|l| l.contains("site/vmlinuz") && l.contains("present")),
        "{out}"
    );
    let (ok, out, _) = ignite(
        &[
            "server",
            "--check",
            "--interface",
            "lo",
            "--proxy-dhcp",
            "--boot-dir",
            b,
        ],
        st,
    );
    assert!(ok && out.contains("proxyDHCP"), "{out}");
    let (ok, _, err) = ignite(&["server", "--check", "--interface", "nosuchif9"], st);
    assert!(
        !ok && err.contains("nosuchif9") && err.contains("does not exist"),
        "{err}"
    );
    let (ok, _, err) = ignite(
        &[
            "server",
            "--check",
            "--interface",
            "lo",
            "--dhcp-range",
            "10.0.0.1-10.0.0.9",
        ],
        st,
    );
    assert!(!ok && err.contains("outside the server's subnet"), "{err}");
    let cfg = st.join("bad.toml");
    std::fs::write(&cfg, "[boot]\ndefault_action = \"explode\"\n").unwrap();
    let (ok, _, err) = ignite(
        &[
            "server",
            "--check",
            "--interface",
            "lo",
            "--config",
            cfg.to_str().unwrap(),
        ],
        st,
    );
    assert!(
        !ok && err.contains("default_action") && err.contains("not a boot action"),
        "{err}"
    );
}

/// A reader that goes away (`ignite client list | grep -q x`) ends a printing command the
/// Unix way, by SIGPIPE, not with a panic about a failed print.
#[test]
fn a_closed_stdout_ends_a_listing_quietly() {
    use std::os::unix::process::ExitStatusExt;
    let tmp = tempfile::tempdir().unwrap();
    let (reader, writer) = std::io::pipe().unwrap();
    drop(reader);
    let out = Command::new(env!("CARGO_BIN_EXE_ignite"))
        .args(["client", "list"])
        .env("IGNITE_STATE_DIR", tmp.path())
        .stdout(writer)
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(
        out.status.signal(),
        Some(libc::SIGPIPE),
        "{:?}: {err}",
        out.status
    );
    assert!(!err.contains("panicked"), "{err}");
}

/// `profile render` of a two-disk RAID1 + LVM profile shows both disks, the array over their
/// members and the volume group's volumes (it printed only the first disk before).
#[test]
fn profile_render_shows_every_disk_the_array_and_the_volumes() {
    let tmp = tempfile::tempdir().unwrap();
    let example = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../profiles/examples/raid1-lvm.toml"
    );
    let (ok, out, err) = ignite(
        &[
            "profile",
            "render",
            example,
            "--mac",
            "52:54:00:00:00:01",
            "--hostname",
            "web1",
            "--disk",
            "/dev/vda:8G",
            "--disk",
            "/dev/vdb:8G",
        ],
        tmp.path(),
    );
    assert!(ok, "{err}");
    for line in [
        "disk /dev/vda (8 GiB)",
        "disk /dev/vdb (8 GiB)",
        "raid: RAID1 /dev/md0 over /dev/vda2, /dev/vdb2",
        "lvm: vg0 on /dev/md0",
        "/dev/mapper/vg0-root",
        "/dev/mapper/vg0-swap",
    ] {
        assert!(out.contains(line), "no {line:?} in:\n{out}");
    }
}
