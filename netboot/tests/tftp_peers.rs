//! Real TFTP clients against the TFTP server on loopback (no root needed): tftp-hpa reads a
//! text file bigger than 16 MiB in netascii, its default mode, and gets it back byte for
//! byte after its own conversion to local line ends. Skips with a reason when the client is
//! missing; fails instead under `IGNITE_CI=1`.
//!
//! `cargo test -p ignite-netboot --test tftp_peers -- --ignored --nocapture` also times the
//! same tftp-hpa client against this server and tftpd-hpa, side by side.

use std::net::{Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::{Child, Command};
use std::sync::Arc;
use std::time::{Duration, Instant};

use ignite_netboot::boot::{BootPlan, ClientMap, FixedPlan};
use ignite_netboot::testing::text_with_line_ends;
use ignite_netboot::tftp::{self, TftpConfig};
use tokio::sync::watch;

fn tftp_hpa_get(port: u16, mode: &str, remote: &str, local: &Path) {
    let out = Command::new("tftp")
        .args([
            "-m",
            mode,
            "127.0.0.1",
            &port.to_string(),
            "-c",
            "get",
            remote,
        ])
        .arg(local)
        .output()
        .expect("run tftp");
    assert!(
        out.status.success() && local.is_file(),
        "tftp -m {mode} get {remote}: {:?}\n{}{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// This crate's TFTP server on 127.0.0.1, serving `root`; its port and a stop switch.
async fn start(root: PathBuf) -> (u16, watch::Sender<bool>, tokio::task::JoinHandle<()>) {
    let mut cfg = TftpConfig::new(root, Ipv4Addr::LOCALHOST, None, "http://127.0.0.1:1".into());
    cfg.port = 0;
    let sock = tftp::bind(&cfg).unwrap();
    let SocketAddr::V4(addr) = sock.local_addr().unwrap() else {
        panic!("IPv4 socket")
    };
    let (stop, rx) = watch::channel(false);
    let server = tokio::spawn(tftp::run(
        cfg,
        sock,
        Arc::new(FixedPlan(BootPlan::Local)),
        Arc::new(ClientMap::default()),
        rx,
    ));
    (addr.port(), stop, server)
}

/// tftp-hpa's `get` on a blocking thread, within 10 minutes; returns how long it took.
async fn timed_get(
    port: u16,
    mode: &'static str,
    remote: &'static str,
    local: PathBuf,
) -> Duration {
    tokio::time::timeout(
        Duration::from_secs(600),
        tokio::task::spawn_blocking(move || {
            let t = Instant::now();
            tftp_hpa_get(port, mode, remote, &local);
            t.elapsed()
        }),
    )
    .await
    .expect("tftp-hpa did not finish in 10 minutes")
    .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tftp_hpa_reads_a_17_mib_text_file_in_netascii() {
    if !ignite_e2e::require_all(&[("tftp", ignite_e2e::have("tftp"))]) {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("boot");
    std::fs::create_dir(&root).unwrap();
    let raw = text_with_line_ends(17 << 20);
    std::fs::write(root.join("big.txt"), &raw).unwrap();
    let (port, stop, server) = start(root).await;
    let got = dir.path().join("got.txt");
    timed_get(port, "netascii", "big.txt", got.clone()).await;
    let back = std::fs::read(&got).unwrap();
    assert_eq!(back.len(), raw.len(), "size after tftp-hpa's conversion");
    assert!(back == raw, "content differs after the netascii round trip");
    stop.send(true).unwrap();
    server.await.unwrap();
}

/// tftpd-hpa serving `root` on a free loopback port; killed on drop.
struct TftpdHpa(Child, u16);

impl TftpdHpa {
    fn start(root: &Path) -> TftpdHpa {
        let port = std::net::UdpSocket::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        // Owned at once, so that it is killed and waited for on every path.
        let server = TftpdHpa(
            Command::new("in.tftpd")
                .args(["-L", "-u", "root", "-s"])
                .arg(root)
                .args(["-a", &format!("127.0.0.1:{port}")])
                .spawn()
                .expect("start in.tftpd"),
            port,
        );
        // Ready once it answers a request for a file that is not there.
        let probe = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        probe
            .set_read_timeout(Some(Duration::from_millis(200)))
            .unwrap();
        let deadline = Instant::now() + Duration::from_secs(20);
        let mut buf = [0u8; 600];
        loop {
            let rrq = tftp::encode_rrq("no-such-file", "octet", &[]);
            probe.send_to(&rrq, ("127.0.0.1", port)).unwrap();
            if probe.recv_from(&mut buf).is_ok() {
                return server;
            }
            assert!(Instant::now() < deadline, "tftpd-hpa did not start");
        }
    }
}

impl Drop for TftpdHpa {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "benchmark: run with --ignored --nocapture"]
async fn bench_tftp_hpa_client_against_ignite_and_tftpd_hpa() {
    if !ignite_e2e::require_all(&[
        ("tftp", ignite_e2e::have("tftp")),
        ("in.tftpd", ignite_e2e::have("in.tftpd")),
    ]) {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("boot");
    std::fs::create_dir(&root).unwrap();
    // World-readable, since tftpd-hpa checks permissions as if it were anyone.
    std::fs::set_permissions(
        dir.path(),
        std::os::unix::fs::PermissionsExt::from_mode(0o755),
    )
    .unwrap();
    let bin: Vec<u8> = (0..64u64 << 20).map(|i| (i * 7 % 251) as u8).collect();
    std::fs::write(root.join("big.bin"), &bin).unwrap();
    std::fs::write(root.join("big.txt"), text_with_line_ends(17 << 20)).unwrap();
    let (ours, stop, server) = start(root.clone()).await;
    let peer = TftpdHpa::start(&root);
    let rounds = 3;
    println!(
        "tftp-hpa client on loopback, blksize 512 lock-step, median of {rounds} alternating rounds"
    );
    println!(
        "| file | mode | Ignite | tftpd-hpa | tftpd-hpa / Ignite (time) |\n|---|---|---|---|---|"
    );
    for (file, mode, mib) in [("big.bin", "octet", 64.0), ("big.txt", "netascii", 17.0)] {
        let (mut a, mut b) = (Vec::new(), Vec::new());
        for _ in 0..rounds {
            a.push(timed_get(ours, mode, file, dir.path().join("a")).await);
            b.push(timed_get(peer.1, mode, file, dir.path().join("b")).await);
            assert!(
                std::fs::read(dir.path().join("a")).unwrap()
                    == std::fs::read(dir.path().join("b")).unwrap(),
                "both servers sent the same {file}"
            );
        }
        let (a, b) = (median(a), median(b));
        println!(
            "| {file} ({mib} MiB) | {mode} | {:.2} s ({:.1} MiB/s) | {:.2} s ({:.1} MiB/s) | x{:.2} |",
            a.as_secs_f64(),
            mib / a.as_secs_f64(),
            b.as_secs_f64(),
            mib / b.as_secs_f64(),
            b.as_secs_f64() / a.as_secs_f64()
        );
    }
    stop.send(true).unwrap();
    server.await.unwrap();
}
