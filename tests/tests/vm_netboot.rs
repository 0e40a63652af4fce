//! `ignite vm run --boot net` against `ignite server` in a network namespace: the monitor's
//! boot firmware gets the iPXE script URL over DHCP (user class iPXE), follows the script
//! over HTTP, and boots the client's planned kernel (a guest test program) and initramfs;
//! the program reports the command line and initrd it was given over the serial console.

use ignite_e2e::*;
use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

/// A lab whose `ignite server` serves `files` (paths in the boot directory) and knows `mac`
/// as a client to install with profile `web`.
fn lab_with_server(tmp: &Path, tag: &str, mac: &str, files: &[(&str, &[u8])]) -> (Lab, Server) {
    let boot = tmp.join("boot");
    for (name, data) in files {
        let p = boot.join(name);
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(p, data).unwrap();
    }
    std::fs::create_dir_all(&boot).unwrap();
    let state = tmp.join("state");
    run(Command::new(ignite_bin())
        .args(["client", "add", mac, tag, "install", "web", "--state-dir"])
        .arg(&state));
    let lab = Lab::new(tag);
    let server = Server::start(&lab, &state, &boot, &[]);
    (lab, server)
}

/// `ignite vm run --boot net` with one NIC on the lab's bridge.
fn vm_run(lab: &Lab, mac: &str, serial: &str) -> Output {
    Lab::cmd(&lab.ns, ignite_bin())
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
        .args([
            "--net",
            &format!("bridge=br0,mac={mac}"),
            "--serial",
            serial,
        ])
        .stdin(Stdio::null())
        .output()
        .unwrap()
}

#[test]
fn monitor_netboots_the_planned_kernel_from_ignite_server() {
    if !require_tools(&["ip", "/dev/kvm"]) {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let mac = "52:54:00:77:00:21";
    let kernel = ignite_vmm::guest::program("netbooted").unwrap();
    let initrd = pattern(300_001, 7);
    let files: &[(&str, &[u8])] = &[("debian/vmlinuz", kernel), ("debian/initrd.img", &initrd)];
    let (lab, server) = lab_with_server(tmp.path(), "vmnb", mac, files);
    let serial = tmp.path().join("serial.log");
    let t = Instant::now();
    let out = vm_run(&lab, mac, &format!("file:{}", serial.display()));
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
        text.contains(&ignite_vmm::guest::netbooted_initrd_line(&initrd)),
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
    if !require_tools(&["ip", "/dev/kvm"]) {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let mac = "52:54:00:77:00:22";
    let (lab, _server) = lab_with_server(tmp.path(), "vmnb404", mac, &[]);
    let out = vm_run(&lab, mac, "null");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        err.contains(&format!(
            "network boot: download: HTTP GET http://{SERVER_IP}:8080/files/debian/vmlinuz: server answered 404"
        )),
        "{err}"
    );
}

#[test]
fn defined_guest_with_boot_net_netboots_on_the_bundled_engine() {
    if !require_tools(&["ip", "/dev/kvm"]) {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let mac = "52:54:00:77:00:23";
    let kernel = ignite_vmm::guest::program("netbooted").unwrap();
    let initrd = pattern(4097, 3);
    let files: &[(&str, &[u8])] = &[("debian/vmlinuz", kernel), ("debian/initrd.img", &initrd)];
    let (lab, server) = lab_with_server(tmp.path(), "vmnbdef", mac, files);
    let guests = tmp.path().join("guests-state");
    let vm = |args: &[&str]| {
        let o = Lab::cmd(&lab.ns, ignite_bin())
            .arg("vm")
            .args(args)
            .env("IGNITE_STATE_DIR", &guests)
            .stdin(Stdio::null())
            .output()
            .unwrap();
        assert!(
            o.status.success(),
            "ignite vm {args:?}: {}",
            String::from_utf8_lossy(&o.stderr)
        );
    };
    vm(&[
        "create",
        "nb1",
        "--mem",
        "128M",
        "--net",
        "bridge=br0",
        "--mac",
        mac,
        "--boot",
        "net",
        "--engine",
        "bundled",
    ]);
    vm(&["start", "nb1"]);
    let log = guests.join("guests/nb1/console.log");
    let want = ignite_vmm::guest::netbooted_initrd_line(&initrd);
    wait_for(
        "the netbooted program's report",
        Duration::from_secs(30),
        || std::fs::read_to_string(&log).is_ok_and(|t| t.contains(&want)),
    );
    let text = std::fs::read_to_string(&log).unwrap();
    assert!(text.contains("DHCP: ACK 10.77.0."), "{text}");
    assert!(text.contains(&format!("ignite.mac={mac}")), "{text}");
    assert!(
        server.log_text().contains("GET /files/debian/vmlinuz"),
        "{}",
        server.log_text()
    );
}
