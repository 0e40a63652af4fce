//! proxyDHCP: dnsmasq (in its own namespace on the same bridge) hands out addresses, Ignite
//! runs with --proxy-dhcp and only tells PXE clients what to boot. Real firmware in QEMU
//! must get its address from dnsmasq and its boot file from Ignite, and boot to the marker.

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use ignite_e2e::*;

const MARKER: &str = "IGNITE-PROXY-MARKER";

fn start_dnsmasq(lab: &mut Lab, dir: &Path) -> std::path::PathBuf {
    let ns = lab.add_client(0x20);
    run(Command::new("ip").args(["-n", &ns, "addr", "add", "10.77.0.2/24", "dev", "c0"]));
    let leases = dir.join("dnsmasq.leases");
    let child = Lab::cmd(&ns, "dnsmasq")
        .args([
            "--no-daemon",
            "--conf-file=/dev/null",
            "--port=0",
            "--interface=c0",
            "--bind-interfaces",
            "--user=root",
        ])
        .args([
            "--dhcp-range=10.77.0.150,10.77.0.199,255.255.255.0,1h",
            "--log-dhcp",
        ])
        .arg(format!("--dhcp-leasefile={}", leases.display()))
        .arg(format!("--pid-file={}", dir.join("dnsmasq.pid").display()))
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(dir.join("dnsmasq.log")).unwrap())
        .spawn()
        .expect("start dnsmasq");
    lab.adopt(child);
    leases
}

/// proxyDHCP, installing clients that are not in the registry (the default action here).
const PROXY: &[&str] = &["--proxy-dhcp", "--install-unregistered"];

fn prepare(tag: &str) -> Option<(tempfile::TempDir, Lab, std::path::PathBuf)> {
    if !require_tools(&["qemu-system-x86_64", "dnsmasq", "ip", "apt-get"]) {
        return None;
    }
    let tmp = tempfile::tempdir().unwrap();
    let boot = fetch_boot_files(tmp.path(), MARKER);
    run(Command::new(ignite_bin())
        .args(["client", "default", "install", "base", "--state-dir"])
        .arg(tmp.path().join("state")));
    let lab = Lab::new(tag);
    Some((tmp, lab, boot))
}

fn check(tmp: &Path, server: &Server, leases: &Path, mac: &str, text: &str) {
    let log = server.log_text();
    let dns = std::fs::read_to_string(tmp.join("dnsmasq.log")).unwrap_or_default();
    assert!(
        text.contains(&format!("{MARKER} ")),
        "no marker:\n{text}\n--- ignite:\n{log}\n--- dnsmasq:\n{dns}"
    );
    assert!(
        text.contains("ignite.action=install ignite.profile=base"),
        "{text}"
    );
    // The address came from dnsmasq's range, the boot information from Ignite.
    let l = std::fs::read_to_string(leases).unwrap();
    assert!(
        l.contains(mac) && l.contains("10.77.0.1"),
        "dnsmasq leases: {l}"
    );
    assert!(
        log.contains(&format!("boot step proxy-offer mac={mac}")),
        "{log}"
    );
    assert!(
        log.contains(&format!("boot step script mac={mac} ip=10.77.0.1")),
        "{log}"
    );
    assert!(log.contains("GET /files/debian/vmlinuz"), "{log}");
    assert!(
        !log.contains("dhcp-ack"),
        "Ignite must not lease addresses in proxy mode:\n{log}"
    );
    let ours = run(Command::new(ignite_bin())
        .args(["netboot", "leases", "--json", "--state-dir"])
        .arg(tmp.join("state")));
    assert_eq!(ours.trim(), "[]");
}

#[test]
fn proxydhcp_next_to_dnsmasq_bios() {
    let Some((tmp, mut lab, boot)) = prepare("pxbios") else {
        return;
    };
    let leases = start_dnsmasq(&mut lab, tmp.path());
    let mut server = Server::start(&lab, &tmp.path().join("state"), &boot, PROXY);
    let mac = "52:54:00:77:00:30";
    let args: Vec<String> = [
        "-boot",
        "n",
        "-device",
        &format!("e1000,netdev=n0,mac={mac}"),
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    let text = lab.netboot_qemu(
        &args,
        &tmp.path().join("serial"),
        MARKER,
        Duration::from_secs(150),
    );
    check(tmp.path(), &server, &leases, mac, &text);
    server.stop();
}

#[test]
fn proxydhcp_next_to_dnsmasq_uefi_port_4011() {
    let code = "/usr/share/OVMF/OVMF_CODE_4M.fd";
    let vars = "/usr/share/OVMF/OVMF_VARS_4M.fd";
    if !require_tools(&[code, vars]) {
        return;
    }
    let Some((tmp, mut lab, boot)) = prepare("pxuefi") else {
        return;
    };
    let leases = start_dnsmasq(&mut lab, tmp.path());
    let mut server = Server::start(&lab, &tmp.path().join("state"), &boot, PROXY);
    let mac = "52:54:00:77:00:31";
    let my_vars = tmp.path().join("vars.fd");
    std::fs::copy(vars, &my_vars).unwrap();
    let args = vec![
        "-machine".to_string(),
        "q35".to_string(),
        "-drive".to_string(),
        format!("if=pflash,format=raw,readonly=on,file={code}"),
        "-drive".to_string(),
        format!("if=pflash,format=raw,file={}", my_vars.display()),
        "-device".to_string(),
        format!("virtio-net-pci,romfile=,netdev=n0,mac={mac}"),
    ];
    let text = lab.netboot_qemu(
        &args,
        &tmp.path().join("serial"),
        MARKER,
        Duration::from_secs(170),
    );
    check(tmp.path(), &server, &leases, mac, &text);
    let log = server.log_text();
    // UEFI firmware asks the proxy on port 4011, then fetches ipxe.efi over TFTP.
    assert!(
        log.contains(&format!("boot step proxy-4011-ack mac={mac}")),
        "{log}"
    );
    assert!(
        log.contains(&format!("boot step tftp mac={mac}")) && log.contains("sent file ipxe.efi"),
        "{log}"
    );
    server.stop();
}
