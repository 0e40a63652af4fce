//! Real TFTP clients against the TFTP server on loopback (no root needed): tftp-hpa reads a
//! text file bigger than 16 MiB in netascii, its default mode, and gets it back byte for
//! byte after its own conversion to local line ends. Skips with a reason when the client is
//! missing; fails instead under `IGNITE_CI=1`.

use std::net::{Ipv4Addr, SocketAddr};
use std::path::Path;
use std::process::Command;
use std::sync::Arc;
use std::time::Duration;

use ignite_netboot::boot::{BootPlan, ClientMap, FixedPlan};
use ignite_netboot::testing::{require, text_with_line_ends};
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tftp_hpa_reads_a_17_mib_text_file_in_netascii() {
    if !require(false, &["tftp"]) {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("boot");
    std::fs::create_dir(&root).unwrap();
    let raw = text_with_line_ends(17 << 20);
    std::fs::write(root.join("big.txt"), &raw).unwrap();
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
    let got = dir.path().join("got.txt");
    let port = addr.port();
    let got2 = got.clone();
    tokio::time::timeout(
        Duration::from_secs(600),
        tokio::task::spawn_blocking(move || tftp_hpa_get(port, "netascii", "big.txt", &got2)),
    )
    .await
    .expect("tftp-hpa did not finish in 10 minutes")
    .unwrap();
    let back = std::fs::read(&got).unwrap();
    assert_eq!(back.len(), raw.len(), "size after tftp-hpa's conversion");
    assert!(back == raw, "content differs after the netascii round trip");
    stop.send(true).unwrap();
    server.await.unwrap();
}
