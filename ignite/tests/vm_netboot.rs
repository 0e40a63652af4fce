//! `ignite vm run --boot net` against `ignite server` in a network namespace: the monitor's
//! boot firmware gets the iPXE script URL over DHCP (user class iPXE), follows the script
//! over HTTP, and boots the client's planned kernel (a guest test program) and initramfs;
//! the program reports the command line and initrd it was given over the serial console.

mod common;

use common::*;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

fn kvm() -> bool {
    let ok = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/kvm")
        .is_ok();
    if !ok && std::env::var("IGNITE_CI").as_deref() == Ok("1") {
        panic!("prerequisite missing with IGNITE_CI=1: /dev/kvm");
    }
    if !ok {
        eprintln!("skipping: needs /dev/kvm");
    }
    ok
}

fn fnv1a(d: &[u8]) -> String {
    let h = d.iter().fold(0x811c_9dc5u32, |h, &b| {
        (h ^ b as u32).wrapping_mul(0x0100_0193)
    });
    format!("{h:08x}")
}

#[test]
fn monitor_netboots_the_planned_kernel_from_ignite_server() {
    if !require(&["ip"]) || !kvm() {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let boot = tmp.path().join("boot");
    std::fs::create_dir_all(boot.join("debian")).unwrap();
    let kernel = ignite_vmm::guest::program("netbooted").unwrap();
    std::fs::write(boot.join("debian/vmlinuz"), kernel).unwrap();
    let initrd = pattern(300_001, 7);
    std::fs::write(boot.join("debian/initrd.img"), &initrd).unwrap();
    let state = tmp.path().join("state");
    let mac = "52:54:00:77:00:21";
    run(Command::new(ignite())
        .args(["client", "add", mac, "vm1", "install", "web", "--state-dir"])
        .arg(&state));
    let lab = Lab::new("vmnb");
    let server = Server::start(&lab, &state, &boot, &[]);
    let serial = tmp.path().join("serial.log");
    let t = Instant::now();
    let out = Lab::cmd(&lab.ns, ignite())
        .args([
            "vm",
            "run",
            "--boot",
            "net",
            "--mem",
            "128M",
            "--timeout",
            "60",
        ])
        .args(["--net", &format!("bridge=br0,mac={mac}")])
        .arg("--serial")
        .arg(format!("file:{}", serial.display()))
        .stdin(Stdio::null())
        .output()
        .unwrap();
    let text = std::fs::read_to_string(&serial).unwrap_or_default();
    let log = server.log_text();
    assert!(
        out.status.success(),
        "ignite vm run: {}\n--- console:\n{text}\n--- server log:\n{log}",
        String::from_utf8_lossy(&out.stderr)
    );
    eprintln!("netboot and run took {:?}\n{text}", t.elapsed());
    // The server recognized the firmware as iPXE and handed out the script URL at once.
    assert!(
        text.contains(&format!(
            "http://{SERVER_IP}:8080/ipxe/{} ok",
            mac.replace(':', "-")
        )),
        "{text}"
    );
    let cmdline = text
        .lines()
        .find(|l| l.starts_with("cmdline: "))
        .unwrap_or_else(|| panic!("no cmdline line:\n{text}"));
    for want in [
        "initrd=initrd.img",
        "ignite.action=install ignite.profile=web",
        &format!("ignite.mac={mac}"),
    ] {
        assert!(cmdline.contains(want), "{want:?} not in {cmdline}");
    }
    assert!(
        text.contains(&format!(
            "initrd: {} bytes fnv1a {}",
            initrd.len(),
            fnv1a(&initrd)
        )),
        "{text}"
    );
    for step in [
        format!("boot step dhcp-ack mac={mac}"),
        "GET /files/debian/vmlinuz".to_string(),
        "GET /files/debian/initrd.img".to_string(),
    ] {
        assert!(log.contains(&step), "server log lacks {step:?}:\n{log}");
    }
    assert!(t.elapsed() < Duration::from_secs(60));
}

#[test]
fn missing_kernel_on_the_server_is_a_clear_error() {
    if !require(&["ip"]) || !kvm() {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let boot = tmp.path().join("boot");
    std::fs::create_dir_all(&boot).unwrap();
    let state = tmp.path().join("state");
    let mac = "52:54:00:77:00:22";
    run(Command::new(ignite())
        .args(["client", "add", mac, "vm2", "install", "web", "--state-dir"])
        .arg(&state));
    let lab = Lab::new("vmnb404");
    let _server = Server::start(&lab, &state, &boot, &[]);
    let out = Lab::cmd(&lab.ns, ignite())
        .args([
            "vm",
            "run",
            "--boot",
            "net",
            "--mem",
            "128M",
            "--timeout",
            "30",
        ])
        .args([
            "--net",
            &format!("bridge=br0,mac={mac}"),
            "--serial",
            "null",
        ])
        .stdin(Stdio::null())
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        err.contains(&format!(
            "network boot: download: HTTP GET http://{SERVER_IP}:8080/files/debian/vmlinuz: server answered 404"
        )),
        "{err}"
    );
}
