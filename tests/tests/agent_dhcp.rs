//! The agent's own DHCP client against a real server (dnsmasq) in a network namespace: it
//! gets a lease and sets the address and default route by ioctl, as it does in the
//! initramfs.

use std::process::{Command, Stdio};

use ignite_e2e::*;

#[test]
fn agent_dhcp_client_configures_its_interface_from_dnsmasq() {
    if !require_tools(&["dnsmasq", "ip"]) {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let mut lab = Lab::new("agdhcp");
    let client = lab.add_client(7);
    let child = Lab::cmd(&lab.ns, "dnsmasq")
        .args([
            "--no-daemon",
            "--conf-file=/dev/null",
            "--port=0",
            "--user=root",
            "--interface=br0",
            "--dhcp-range=10.77.0.50,10.77.0.60,255.255.255.0,1h",
            "--dhcp-option=option:router,10.77.0.1",
            "--log-dhcp",
        ])
        .arg(format!(
            "--dhcp-leasefile={}",
            tmp.path().join("leases").display()
        ))
        .arg(format!("--pid-file={}", tmp.path().join("pid").display()))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    lab.adopt(child);
    // Clear any address the namespace set-up gave: the agent starts with none.
    run(Command::new("ip").args(["-n", &client, "addr", "flush", "dev", "c0"]));
    let out = run(Lab::cmd(&client, ignite_bin()).args(["agent", "dhcp", "--iface", "c0"]));
    assert!(
        out.starts_with("c0: 10.77.0.5") || out.starts_with("c0: 10.77.0.60"),
        "{out}"
    );
    assert!(
        out.contains("netmask 255.255.255.0 router 10.77.0.1 server 10.77.0.1"),
        "{out}"
    );
    let ip = out.split_whitespace().nth(1).unwrap();
    let addr = run(Command::new("ip").args(["-n", &client, "-4", "addr", "show", "c0"]));
    assert!(addr.contains(&format!("inet {ip}/24")), "{addr}");
    let route = run(Command::new("ip").args(["-n", &client, "route", "show", "default"]));
    assert!(route.contains("default via 10.77.0.1 dev c0"), "{route}");
    // The server recorded the lease for this client's MAC.
    let leases = std::fs::read_to_string(tmp.path().join("leases")).unwrap();
    assert!(
        leases.contains("52:54:00:77:00:07") && leases.contains(ip),
        "{leases}"
    );
}
