//! A real client (busybox udhcpc) gets a lease from the DHCP service while forged DISCOVERs
//! (a new MAC each, never a REQUEST) keep every address of a short pool on offer: the attack
//! that used to lock new clients out for the 30 s an offer was held, and for good when resent.
//!
//! Runs in two network namespaces joined by a veth pair (server and client); needs root,
//! `ip` and `udhcpc`. Skips with a reason otherwise; fails instead under `IGNITE_CI=1`.

use std::collections::HashSet;
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use dhcproto::v4::{Message, MessageType};
use dhcproto::{Decodable, Encodable};
use ignite_netboot::boot::{BootPlan, ClientMap, FixedPlan};
use ignite_netboot::dhcp::{self, DhcpEngine, Port};
use ignite_netboot::iface::std_udp_socket;
use ignite_netboot::leases::LeaseStore;
use ignite_netboot::testing::{config, request};
use ignite_netboot::MacAddr;
use tokio::sync::watch;

const SERVER: Ipv4Addr = Ipv4Addr::new(10, 123, 0, 1);
const POOL: (Ipv4Addr, Ipv4Addr) = (Ipv4Addr::new(10, 123, 0, 10), Ipv4Addr::new(10, 123, 0, 19));

fn ip(args: &[&str]) {
    let out = Command::new("ip").args(args).output().expect("run ip");
    assert!(
        out.status.success(),
        "ip {}: {}",
        args.join(" "),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Two namespaces and a veth pair between them, removed on drop.
struct Lab {
    server_ns: String,
    client_ns: String,
    server_if: String,
    client_if: String,
}

impl Lab {
    fn new() -> Lab {
        let id = std::process::id() % 100_000;
        let lab = Lab {
            server_ns: format!("ign-nbt-{id}-s"),
            client_ns: format!("ign-nbt-{id}-c"),
            server_if: format!("nbs{id}"),
            client_if: format!("nbc{id}"),
        };
        for ns in [&lab.server_ns, &lab.client_ns] {
            let _ = Command::new("ip").args(["netns", "del", ns]).output();
            ip(&["netns", "add", ns]);
            ip(&["-n", ns, "link", "set", "lo", "up"]);
        }
        ip(&[
            "link",
            "add",
            &lab.server_if,
            "netns",
            &lab.server_ns,
            "type",
            "veth",
            "peer",
            "name",
            &lab.client_if,
            "netns",
            &lab.client_ns,
        ]);
        ip(&[
            "-n",
            &lab.server_ns,
            "addr",
            "add",
            "10.123.0.1/24",
            "dev",
            &lab.server_if,
        ]);
        ip(&["-n", &lab.server_ns, "link", "set", &lab.server_if, "up"]);
        ip(&["-n", &lab.client_ns, "link", "set", &lab.client_if, "up"]);
        lab
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        for ns in [&self.server_ns, &self.client_ns] {
            let _ = Command::new("ip").args(["netns", "del", ns]).output();
        }
    }
}

/// Runs `f` on a thread that has entered network namespace `ns`; sockets it creates stay
/// in that namespace wherever they are used afterwards.
fn in_netns<T: Send + 'static>(ns: &str, f: impl FnOnce() -> T + Send + 'static) -> T {
    let path = format!("/var/run/netns/{ns}");
    std::thread::spawn(move || {
        let file = std::fs::File::open(&path).expect("namespace file");
        // SAFETY: setns on this thread only, with a namespace fd we hold open.
        let r = unsafe { libc::setns(std::os::fd::AsRawFd::as_raw_fd(&file), libc::CLONE_NEWNET) };
        assert_eq!(r, 0, "setns {path}: {}", std::io::Error::last_os_error());
        f()
    })
    .join()
    .expect("namespace thread")
}

fn forged(n: u32) -> MacAddr {
    let b = n.to_be_bytes();
    MacAddr([6, 6, b[1], b[2], b[3], 1])
}

#[test]
fn udhcpc_gets_a_lease_while_forged_discovers_hold_the_pool() {
    if !ignite_e2e::require_tools(&["ip", "udhcpc"]) {
        return;
    }
    let lab = Lab::new();
    let dir = tempfile::tempdir().unwrap();

    // The server: a pool of ten, in the server namespace.
    let server_if = lab.server_if.clone();
    let server_sock = in_netns(&lab.server_ns, move || {
        std_udp_socket(
            Some(&server_if),
            SocketAddrV4::new(Ipv4Addr::UNSPECIFIED, 67),
            "DHCP server",
        )
        .unwrap()
    });
    let mut cfg = config(true);
    cfg.server_ip = SERVER;
    cfg.pool = Some(POOL);
    cfg.http_base = "http://10.123.0.1:8080".into();
    let leases = dhcp::shared(LeaseStore::open(&dir.path().join("state.db")).unwrap());
    let engine = DhcpEngine::new(
        cfg,
        Some(leases),
        Arc::new(FixedPlan(BootPlan::Local)),
        Arc::new(ClientMap::default()),
    )
    .unwrap();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let (stop, rx) = watch::channel(false);
    let service = rt.spawn(async move {
        server_sock.set_nonblocking(true).unwrap();
        let sock = tokio::net::UdpSocket::from_std(server_sock).unwrap();
        dhcp::serve(engine, vec![(sock, Port::Dhcp)], rx).await
    });

    // The attacker, in the client namespace: forged DISCOVERs until every address is on
    // offer to one of them.
    let client_if = lab.client_if.clone();
    let attacker = in_netns(&lab.client_ns, move || {
        let s = std_udp_socket(
            Some(&client_if),
            SocketAddrV4::new(Ipv4Addr::UNSPECIFIED, 68),
            "forger",
        )
        .unwrap();
        s.set_read_timeout(Some(Duration::from_millis(200)))
            .unwrap();
        s
    });
    let to = SocketAddr::from((Ipv4Addr::BROADCAST, 67));
    let discover = |n: u32| {
        request(MessageType::Discover, forged(n), vec![])
            .to_vec()
            .unwrap()
    };
    let mut offered = HashSet::new();
    let mut n = 0u32;
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut buf = [0u8; 1500];
    while offered.len() < 10 {
        assert!(
            Instant::now() < deadline,
            "the forged DISCOVERs got only {offered:?} on offer"
        );
        for _ in 0..20 {
            attacker.send_to(&discover(n), to).unwrap();
            n += 1;
        }
        while let Ok((len, _)) = attacker.recv_from(&mut buf) {
            if let Ok(m) = Message::from_bytes(&buf[..len]) {
                if m.opts().msg_type() == Some(MessageType::Offer) {
                    offered.insert(m.yiaddr());
                }
            }
        }
    }
    // Keep it up: two forged DISCOVERs a second, a new MAC each, while udhcpc asks.
    let flooding = Arc::new(AtomicBool::new(true));
    let flood = {
        let flooding = flooding.clone();
        std::thread::spawn(move || {
            let mut n = 1_000_000;
            while flooding.load(Ordering::Relaxed) {
                let _ = attacker.send_to(&discover(n), to);
                n += 1;
                std::thread::sleep(Duration::from_millis(500));
            }
        })
    };

    // The victim: six DISCOVERs three seconds apart, well inside the 30 s offers used to
    // be held for.
    let out = Command::new("ip")
        .args(["netns", "exec", &lab.client_ns, "udhcpc", "-f", "-n", "-q"])
        .args([
            "-t",
            "6",
            "-T",
            "3",
            "-s",
            "/bin/true",
            "-i",
            &lab.client_if,
        ])
        .output()
        .unwrap();
    flooding.store(false, Ordering::Relaxed);
    flood.join().unwrap();
    let log =
        String::from_utf8_lossy(&out.stderr).into_owned() + &String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success() && log.contains("lease of 10.123.0."),
        "udhcpc got no lease while the pool was held by forged offers: {:?}\n{log}",
        out.status
    );

    stop.send(true).unwrap();
    rt.block_on(service).unwrap().unwrap();
}
