//! virtio-net under real KVM: a guest program ARPs for and pings a peer — the kernel of a
//! network namespace created for the test — through a tap the monitor creates on a bridge,
//! or through an existing tap; the network benchmark's programs move and verify bulk frames
//! both ways through virtio-net and the NE2000.

mod common;

use ignite_vmm::guest::ProgramRun;
use ignite_vmm::netns::Netns;
use ignite_vmm::{NetBackend, NetConfig};
use std::process::Command;

fn prerequisites() -> bool {
    common::kvm()
        && common::root()
        && common::require(
            "iproute2 (ip)",
            Command::new("ip")
                .arg("-V")
                .output()
                .map(|_| ())
                .map_err(|e| e.to_string()),
        )
        && common::require(
            "/dev/net/tun",
            std::fs::metadata("/dev/net/tun")
                .map(|_| ())
                .map_err(|e| e.to_string()),
        )
}

fn ping(backend: NetBackend, me: &str, peer: &str) -> ignite_vmm::guest::ProgramResult {
    let mut run = ProgramRun::new("net");
    run.nets = vec![NetConfig {
        backend,
        mac: [0x52, 0x54, 0x00, 0x12, 0x34, 0x56],
    }];
    run.args = format!("ip={me} peer={peer}");
    run.timeout = std::time::Duration::from_secs(30);
    common::expect_pass(run)
}

#[test]
fn guest_pings_a_peer_through_a_new_tap_on_a_bridge() {
    if !prerequisites() {
        return;
    }
    let ns = Netns::new("br").unwrap();
    ns.ip(&["link", "add", "ignbr0", "type", "bridge"]).unwrap();
    ns.ip(&["addr", "add", "10.77.0.1/24", "dev", "ignbr0"])
        .unwrap();
    ns.ip(&["link", "set", "ignbr0", "up"]).unwrap();
    let r = ns
        .run(|| {
            ping(
                NetBackend::Bridge("ignbr0".into()),
                "10.77.0.2",
                "10.77.0.1",
            )
        })
        .unwrap();
    assert!(r.serial.contains("MAC 52:54:00:12:34:56"), "{}", r.serial);
    assert!(r.serial.contains("ARP reply: peer is at"), "{}", r.serial);
    assert!(
        r.serial.contains("ICMP echo reply from 10.77.0.1"),
        "{}",
        r.serial
    );
}

#[test]
fn guest_pings_a_peer_through_an_existing_tap() {
    if !prerequisites() {
        return;
    }
    let ns = Netns::new("tap").unwrap();
    ns.ip(&["tuntap", "add", "dev", "igntap0", "mode", "tap", "vnet_hdr"])
        .unwrap();
    ns.ip(&["addr", "add", "10.78.0.1/24", "dev", "igntap0"])
        .unwrap();
    ns.ip(&["link", "set", "igntap0", "up"]).unwrap();
    let r = ns
        .run(|| ping(NetBackend::Tap("igntap0".into()), "10.78.0.2", "10.78.0.1"))
        .unwrap();
    assert!(
        r.serial.contains("ICMP echo reply from 10.78.0.1"),
        "{}",
        r.serial
    );
}

#[test]
fn missing_bridge_is_a_clear_error() {
    if !prerequisites() {
        return;
    }
    let ns = Netns::new("nobr").unwrap();
    let msg = ns
        .run(|| {
            let cfg = NetConfig {
                backend: NetBackend::Bridge("nosuchbr".into()),
                mac: [2, 0, 0, 0, 0, 1],
            };
            match ignite_vmm::virtio::net::Net::new(&cfg, 0) {
                Ok(_) => String::new(),
                Err(e) => e.to_string(),
            }
        })
        .unwrap();
    assert!(
        msg.contains("bridge nosuchbr") && msg.contains("ip link add nosuchbr type bridge"),
        "{msg}"
    );
}

#[test]
fn tap_that_cannot_be_created_is_a_clear_error() {
    if !prerequisites() {
        return;
    }
    let ns = Netns::new("badtap").unwrap();
    // "lo" exists and is not a tap: TUNSETIFF refuses it.
    let msg = ns
        .run(|| {
            ignite_vmm::virtio::tap::Tap::open("lo")
                .err()
                .map(|e| e.to_string())
        })
        .unwrap();
    let msg = msg.expect("opening lo as a tap must fail");
    assert!(
        msg.starts_with("tap lo:") && msg.contains("CAP_NET_ADMIN"),
        "{msg}"
    );
}

#[test]
fn ne2k_guest_pings_a_peer_through_a_tap_on_a_bridge() {
    if !prerequisites() {
        return;
    }
    let ns = Netns::new("ne2k").unwrap();
    ns.ip(&["link", "add", "ignbr0", "type", "bridge"]).unwrap();
    ns.ip(&["addr", "add", "10.76.0.1/24", "dev", "ignbr0"])
        .unwrap();
    ns.ip(&["link", "set", "ignbr0", "up"]).unwrap();
    let r = ns
        .run(|| {
            let mut run = ProgramRun::new("ne2k");
            run.vio_nets = vec![NetConfig {
                backend: NetBackend::Bridge("ignbr0".into()),
                mac: [0x52, 0x54, 0x00, 0x12, 0x34, 0x57],
            }];
            run.args = "ip=10.76.0.2 peer=10.76.0.1 mac=52:54:00:12:34:57".into();
            run.timeout = std::time::Duration::from_secs(30);
            common::expect_pass(run)
        })
        .unwrap();
    assert!(r.serial.contains("ARP reply: peer is at"), "{}", r.serial);
    assert!(
        r.serial.contains("ICMP echo reply from 10.76.0.1"),
        "{}",
        r.serial
    );
}

#[test]
fn bulk_frames_both_ways_through_virtio_net_and_ne2k_arrive_verified() {
    if !prerequisites() {
        return;
    }
    // 256 KiB each way per model; avio_vio_net fails unless every frame arrived in order and
    // each receiver's checksum matches the pattern the sender made.
    let bytes = 256 << 10;
    let (avio, vio) = ignite_vmm::netbench::avio_vio_net(bytes, bytes).unwrap();
    let frames = bytes.div_ceil(ignite_vmm::netbench::FRAME as u64);
    for (model, phases) in [("AVIO", &avio), ("VIO", &vio)] {
        let names: Vec<&str> = phases.iter().map(|p| p.name).collect();
        assert_eq!(names, ["net send", "net receive"], "{model}");
        for p in phases.iter() {
            assert_eq!(p.bytes, frames * ignite_vmm::netbench::FRAME as u64);
            assert!(
                p.secs > 0.0,
                "{model} {}: no time between its marks",
                p.name
            );
        }
    }
    // The NE2000 moves every frame through port I/O; virtio-net batches.
    for (a, v) in avio.iter().zip(&vio) {
        assert!(
            v.user_exits > 4 * frames && a.user_exits < v.user_exits / 10,
            "{}: AVIO {} exits, VIO {} exits for {frames} frames",
            a.name,
            a.user_exits,
            v.user_exits
        );
    }
}
