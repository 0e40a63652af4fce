//! Real DHCP clients (busybox udhcpc, ISC dhclient) against `ignite server` in a network
//! namespace: leases with the right options, renew, release, leases across a restart.

use std::process::{Command, Stdio};
use std::time::Duration;

use ignite_e2e::*;

fn leases(state: &std::path::Path) -> Vec<serde_json::Value> {
    let out = run(Command::new(ignite_bin())
        .args(["netboot", "leases", "--json", "--state-dir"])
        .arg(state));
    serde_json::from_str(&out).unwrap()
}

fn lease_of<'a>(l: &'a [serde_json::Value], mac: &str) -> Option<&'a serde_json::Value> {
    l.iter().find(|x| x["mac"] == mac)
}

/// A udhcpc/dhclient hook script that records each event's environment and configures the
/// address, inside the client namespace only.
fn hook(dir: &std::path::Path) -> std::path::PathBuf {
    let p = dir.join("hook.sh");
    let d = dir.display();
    std::fs::write(
        &p,
        format!(
            "#!/bin/sh\nev=\"${{1:-$reason}}\"\nenv > {d}/ev.$ev.tmp && mv {d}/ev.$ev.tmp {d}/ev.$ev\n\
             case \"$ev\" in\n\
               bound|renew) ip -4 addr flush dev \"$interface\"; ip addr add \"$ip/$subnet\" dev \"$interface\" ;;\n\
               BOUND|RENEW|REBOOT) ip -4 addr flush dev \"$interface\"; ip addr add \"$new_ip_address/$new_subnet_mask\" dev \"$interface\" ;;\n\
             esac\nexit 0\n"
        ),
    )
    .unwrap();
    run(Command::new("chmod").arg("+x").arg(&p));
    p
}

fn boot_dir(dir: &std::path::Path) -> std::path::PathBuf {
    let b = dir.join("boot");
    std::fs::create_dir_all(&b).unwrap();
    b
}

#[test]
fn udhcpc_lease_pxe_options_renew_release_and_restart() {
    if !require_tools(&["udhcpc", "ip"]) {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let state = tmp.path().join("state");
    let boot = boot_dir(tmp.path());
    let mut lab = Lab::new("udhcpc");
    let c1 = lab.add_client(1);
    let c2 = lab.add_client(2);
    let mut server = Server::start(
        &lab,
        &state,
        &boot,
        &["--dhcp-range", "10.77.0.100-10.77.0.110"],
    );

    let d1 = tmp.path().join("c1");
    std::fs::create_dir_all(&d1).unwrap();
    let script = hook(&d1);
    // A BIOS PXE client: vendor class and option 93 = 0.
    let child = Lab::cmd(&c1, "udhcpc")
        .args([
            "-i",
            "c0",
            "-f",
            "-t",
            "5",
            "-T",
            "1",
            "-V",
            "PXEClient:Arch:00000:UNDI:002001",
            "-x",
            "0x5d:0000",
            "-s",
        ])
        .arg(&script)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let pid = lab.adopt(child);
    wait_for("udhcpc bound", Duration::from_secs(15), || {
        d1.join("ev.bound").exists()
    });
    let env = env_file(&d1.join("ev.bound"));
    let ip1 = env["ip"].clone();
    assert!(ip1.starts_with("10.77.0.1"), "{env:?}");
    assert_eq!(env["subnet"], "255.255.255.0");
    assert_eq!(env["serverid"], SERVER_IP);
    assert_eq!(env["siaddr"], SERVER_IP);
    assert_eq!(env["boot_file"], "undionly.kpxe");
    assert_eq!(env["lease"], "3600");
    let l = leases(&state);
    assert_eq!(
        lease_of(&l, "52:54:00:77:00:01").unwrap()["ip"],
        ip1.as_str()
    );
    server.wait_log(
        "boot step dhcp-ack mac=52:54:00:77:00:01",
        Duration::from_secs(5),
    );

    // Renew (SIGUSR1): a unicast REQUEST from ciaddr, answered with the same address.
    // SAFETY: signalling our own child.
    unsafe { libc::kill(pid as i32, libc::SIGUSR1) };
    wait_for("udhcpc renew", Duration::from_secs(10), || {
        d1.join("ev.renew").exists()
    });
    assert_eq!(env_file(&d1.join("ev.renew"))["ip"], ip1);

    // Release (SIGUSR2).
    // SAFETY: as above.
    unsafe { libc::kill(pid as i32, libc::SIGUSR2) };
    wait_for("lease released", Duration::from_secs(10), || {
        lease_of(&leases(&state), "52:54:00:77:00:01").is_some_and(|l| l["state"] == "released")
    });
    // SAFETY: as above.
    unsafe { libc::kill(pid as i32, libc::SIGTERM) };

    // Rebind c1 before the restart, then restart: the lease is remembered, a second client
    // gets a different address, and c1 gets its own back.
    let once = |ns: &str, dir: &std::path::Path| {
        std::fs::create_dir_all(dir).unwrap();
        let script = hook(dir);
        run(Lab::cmd(ns, "udhcpc")
            .args(["-i", "c0", "-f", "-q", "-n", "-t", "5", "-T", "1", "-s"])
            .arg(&script));
        env_file(&dir.join("ev.bound"))["ip"].clone()
    };
    let again = once(&c1, &tmp.path().join("c1b"));
    assert_eq!(again, ip1, "same client, same address");
    server.stop();
    let mut server = Server::start(
        &lab,
        &state,
        &boot,
        &["--dhcp-range", "10.77.0.100-10.77.0.110"],
    );
    let ip2 = once(&c2, &tmp.path().join("c2"));
    assert_ne!(ip2, ip1, "never the same address to two clients");
    assert_eq!(
        once(&c1, &tmp.path().join("c1c")),
        ip1,
        "lease survived the restart"
    );
    server.stop();
    assert!(server.log_text().contains("ignite server stopped"));
}

#[test]
fn dhclient_lease_and_release() {
    if !require_tools(&["dhclient", "ip"]) {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let state = tmp.path().join("state");
    let boot = boot_dir(tmp.path());
    let mut lab = Lab::new("dhclient");
    let c = lab.add_client(3);
    let mut server = Server::start(
        &lab,
        &state,
        &boot,
        &["--dhcp-range", "10.77.0.150-10.77.0.160"],
    );
    let d = tmp.path().join("c");
    std::fs::create_dir_all(&d).unwrap();
    let script = hook(&d);
    let lf = d.join("leases");
    let pf = d.join("pid");
    let dhclient = |extra: &[&str]| {
        let mut c = Lab::cmd(&c, "dhclient");
        c.args(["-4", "-v"])
            .args(extra)
            .arg("-sf")
            .arg(&script)
            .arg("-lf")
            .arg(&lf)
            .arg("-pf")
            .arg(&pf)
            .arg("c0");
        c
    };
    run(&mut dhclient(&["-1"]));
    let env = env_file(&d.join("ev.BOUND"));
    let ip = env["new_ip_address"].clone();
    assert!(
        ip.starts_with("10.77.0.15") || ip == "10.77.0.160",
        "{env:?}"
    );
    assert_eq!(env["new_subnet_mask"], "255.255.255.0");
    assert_eq!(env["new_dhcp_server_identifier"], SERVER_IP);
    assert_eq!(env["new_dhcp_lease_time"], "3600");
    let l = leases(&state);
    assert_eq!(lease_of(&l, "52:54:00:77:00:03").unwrap()["state"], "bound");
    // Stop without releasing, then start again: INIT-REBOOT asks for the remembered address
    // (REQUEST with option 50, no server identifier) and gets it.
    run(&mut dhclient(&["-x"]));
    run(&mut dhclient(&["-1"]));
    let env = env_file(&d.join("ev.REBOOT"));
    assert_eq!(env["new_ip_address"], ip, "{env:?}");
    // dhclient -r sends RELEASE and stops the running dhclient.
    run(&mut dhclient(&["-r"]));
    wait_for("lease released", Duration::from_secs(10), || {
        lease_of(&leases(&state), "52:54:00:77:00:03").is_some_and(|l| l["state"] == "released")
    });
    server.stop();
}

#[test]
fn default_lab_bridge_is_created_and_serves() {
    if !require_tools(&["udhcpc", "ip"]) {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let boot = boot_dir(tmp.path());
    let mut lab = Lab::new("labbr");
    let log = tmp.path().join("server.log");
    // No --interface: the built-in lab network, created inside our namespace.
    let child = Lab::cmd(&lab.ns, ignite_bin())
        .args([
            "server",
            "--no-prepare",
            "--http-port",
            "8080",
            "--state-dir",
        ])
        .arg(tmp.path().join("state"))
        .arg("--boot-dir")
        .arg(&boot)
        .env("RUST_LOG", "info")
        .stderr(std::fs::File::create(&log).unwrap())
        .spawn()
        .unwrap();
    let pid = lab.adopt(child);
    wait_for("server ready", Duration::from_secs(20), || {
        std::fs::read_to_string(&log)
            .unwrap_or_default()
            .contains("ignite server ready on ignite0 (10.77.0.1/24)")
    });
    assert!(std::fs::read_to_string(&log)
        .unwrap()
        .contains("created the lab bridge ignite0"));
    // A client on the lab bridge gets a lease from the default range.
    let c = lab.add_client(9);
    run(Command::new("ip").args(["-n", &lab.ns, "link", "set", "vc9", "master", "ignite0"]));
    let d = tmp.path().join("c");
    std::fs::create_dir_all(&d).unwrap();
    let script = hook(&d);
    run(Lab::cmd(&c, "udhcpc")
        .args(["-i", "c0", "-f", "-q", "-n", "-t", "5", "-T", "1", "-s"])
        .arg(&script));
    let ip = env_file(&d.join("ev.bound"))["ip"].clone();
    assert!(
        ip.starts_with("10.77.0.1") && ip.len() == "10.77.0.100".len(),
        "{ip}"
    );
    // The bridge keeps its MAC as more ports join (left to itself it would take its lowest
    // port's, and clients that resolved the server before would lose it).
    let ns = lab.ns.clone();
    let mac_of = |dev: &str| {
        let out = run(Command::new("ip").args(["-n", &ns, "-br", "link", "show", dev]));
        out.split_whitespace()
            .nth(2)
            .unwrap_or_default()
            .to_string()
    };
    let before = mac_of("ignite0");
    for n in 10..14 {
        lab.add_client(n);
        run(Command::new("ip").args([
            "-n",
            &lab.ns,
            "link",
            "set",
            &format!("vc{n}"),
            "master",
            "ignite0",
        ]));
    }
    assert_eq!(mac_of("ignite0"), before);
    assert_eq!(before, "02:00:0a:4d:00:01");
    // So does the test lab's own bridge (every e2e test's clients hang off it).
    assert_eq!(mac_of("br0"), "02:00:0a:4d:00:01");
    // SAFETY: signalling our own child.
    unsafe { libc::kill(pid as i32, libc::SIGTERM) };
    wait_for("server stopped", Duration::from_secs(10), || {
        std::fs::read_to_string(&log)
            .unwrap_or_default()
            .contains("ignite server stopped")
    });
}

#[test]
fn two_interfaces_each_serve_their_own_subnet() {
    if !require_tools(&["udhcpc", "curl", "ip"]) {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let state = tmp.path().join("state");
    let boot = boot_dir(tmp.path());
    let mut lab = Lab::new("twoif");
    lab.add_bridge("br1", "10.78.0.1/24");
    let c1 = lab.add_client(11);
    let c2 = lab.add_client(12);
    lab.move_client(12, "br1");
    let mut server = Server::start(
        &lab,
        &state,
        &boot,
        &[
            "--interface",
            "br0,br1",
            "--dhcp-range",
            "10.78.0.20-10.78.0.30,10.77.0.20-10.77.0.30",
        ],
    );
    let lease = |ns: &str, dir: &std::path::Path| {
        std::fs::create_dir_all(dir).unwrap();
        let script = hook(dir);
        run(Lab::cmd(ns, "udhcpc")
            .args(["-i", "c0", "-f", "-q", "-n", "-t", "5", "-T", "1", "-s"])
            .arg(&script));
        env_file(&dir.join("ev.bound"))
    };
    let e1 = lease(&c1, &tmp.path().join("c1"));
    let e2 = lease(&c2, &tmp.path().join("c2"));
    assert!(
        e1["ip"].starts_with("10.77.0.") && e1["serverid"] == "10.77.0.1",
        "{e1:?}"
    );
    assert!(
        e2["ip"].starts_with("10.78.0.") && e2["serverid"] == "10.78.0.1",
        "{e2:?}"
    );
    // The script a client fetches names the address it reached the server at.
    run(Command::new(ignite_bin())
        .args(["client", "default", "capture", "--state-dir"])
        .arg(&state));
    let s = run(Lab::cmd(&c2, "curl").args([
        "-sS",
        "--fail",
        "http://10.78.0.1:8080/ipxe/52-54-00-77-00-0c",
    ]));
    assert!(s.contains("kernel http://10.78.0.1:8080/files/"), "{s}");
    let l = leases(&state);
    assert_eq!(l.len(), 2, "{l:?}");
    server.stop();
}

#[test]
fn client_behind_dnsmasq_relay_gets_address_from_relay_pool() {
    if !require_tools(&["udhcpc", "dnsmasq", "ip"]) {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let state = tmp.path().join("state");
    let boot = boot_dir(tmp.path());
    let mut lab = Lab::new("relay");
    // The relay: one leg on the server's bridge (10.77.0.2), one on the remote subnet.
    let relay = lab.add_client(0x21);
    run(Command::new("ip").args(["-n", &relay, "addr", "add", "10.77.0.2/24", "dev", "c0"]));
    run(Command::new("ip").args([
        "-n",
        &lab.ns,
        "route",
        "add",
        "10.90.0.0/24",
        "via",
        "10.77.0.2",
    ]));
    let remote = format!("{}-remote", lab.ns);
    run(Command::new("ip").args(["netns", "add", &remote]));
    lab.clients.push(remote.clone());
    run(Command::new("ip").args([
        "link", "add", "r1", "netns", &relay, "type", "veth", "peer", "name", "c0", "netns",
        &remote,
    ]));
    run(Command::new("ip").args(["-n", &relay, "addr", "add", "10.90.0.1/24", "dev", "r1"]));
    run(Command::new("ip").args(["-n", &relay, "link", "set", "r1", "up"]));
    run(Command::new("ip").args([
        "-n",
        &remote,
        "link",
        "set",
        "c0",
        "address",
        "52:54:00:77:00:22",
    ]));
    run(Command::new("ip").args(["-n", &remote, "link", "set", "c0", "up"]));
    let child = Lab::cmd(&relay, "dnsmasq")
        .args([
            "--no-daemon",
            "--conf-file=/dev/null",
            "--port=0",
            "--user=root",
            "--interface=r1",
            "--interface=c0",
        ])
        .args(["--dhcp-relay=10.90.0.1,10.77.0.1", "--log-dhcp"])
        .arg(format!(
            "--pid-file={}",
            tmp.path().join("relay.pid").display()
        ))
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(tmp.path().join("relay.log")).unwrap())
        .spawn()
        .unwrap();
    lab.adopt(child);
    let mut server = Server::start(
        &lab,
        &state,
        &boot,
        &[
            "--dhcp-range",
            "10.77.0.100-10.77.0.110,10.90.0.50-10.90.0.60/24",
        ],
    );
    let d = tmp.path().join("c");
    std::fs::create_dir_all(&d).unwrap();
    let script = hook(&d);
    let out = Lab::cmd(&remote, "udhcpc")
        .args(["-i", "c0", "-f", "-q", "-n", "-t", "6", "-T", "1", "-s"])
        .arg(&script)
        .output()
        .unwrap();
    let relay_log = std::fs::read_to_string(tmp.path().join("relay.log")).unwrap_or_default();
    assert!(
        out.status.success(),
        "udhcpc: {out:?}\nrelay: {relay_log}\nserver: {}",
        server.log_text()
    );
    let env = env_file(&d.join("ev.bound"));
    assert!(
        env["ip"].starts_with("10.90.0.5") || env["ip"] == "10.90.0.60",
        "{env:?}"
    );
    assert_eq!(env["router"], "10.90.0.1", "{env:?}");
    assert_eq!(env["serverid"], SERVER_IP);
    server.stop();
}

/// iPXE waits ~16 s for an IPv6 router before it reports its network configured: the server
/// tells a netbooting client (one whose firmware just asked DHCP for a boot file) that there
/// is none, unicast, and tells an operating system's DHCP client nothing. rdisc6 (ndisc6) is
/// the real router solicitation peer.
#[test]
fn netbooting_clients_are_told_there_is_no_ipv6_router() {
    if !require_tools(&["udhcpc", "ip", "rdisc6"]) {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let state = tmp.path().join("state");
    let boot = boot_dir(tmp.path());
    let mut lab = Lab::new("ra");
    let pxe = lab.add_client(21);
    let os = lab.add_client(22);
    // Debug: the failure message then shows each advertisement the server sent.
    let env = [("RUST_LOG", "info,ignite_netboot::ra=debug")];
    let mut server = Server::start_env(&lab, &state, &boot, &[], &env);
    for (ns, class) in [
        (&pxe, Some("PXEClient:Arch:00000:UNDI:002001")),
        (&os, None),
    ] {
        let d = tmp.path().join(ns);
        std::fs::create_dir_all(&d).unwrap();
        let script = hook(&d);
        let mut c = Lab::cmd(ns, "udhcpc");
        c.args(["-i", "c0", "-f", "-q", "-n", "-t", "5", "-T", "1"]);
        if let Some(class) = class {
            c.args(["-V", class, "-x", "0x5d:0000"]);
        }
        run(c.arg("-s").arg(&script));
    }
    // A solicitation from a tentative address goes out from :: and is not answered; an
    // advertisement cannot leave from one.
    for (ns, dev) in [(&pxe, "c0"), (&os, "c0"), (&lab.ns, "br0")] {
        wait_for("link-local addresses", Duration::from_secs(20), || {
            let a =
                run(Lab::cmd(ns, "ip")
                    .args(["-6", "-o", "addr", "show", "dev", dev, "scope", "link"]));
            a.contains("fe80::") && !a.contains("tentative")
        });
    }
    let solicit = |ns: &str| {
        Lab::cmd(ns, "rdisc6")
            .args(["-1", "-r", "3", "-w", "1000", "c0"])
            .output()
            .unwrap()
    };
    let got = solicit(&pxe);
    let text = String::from_utf8_lossy(&got.stdout);
    let log = server.log_text();
    assert!(
        got.status.success(),
        "no advertisement for the netbooting client: {got:?}\n--- server log:\n{log}"
    );
    assert!(
        text.contains("Router lifetime") && text.contains(" 0 (0x00000000) seconds"),
        "{text}"
    );
    assert!(!text.contains("Prefix"), "{text}");
    let got = solicit(&os);
    assert!(
        !got.status.success(),
        "an OS's solicitation was answered: {got:?}"
    );
    server.stop();
}
