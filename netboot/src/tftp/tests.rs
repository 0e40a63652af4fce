use super::*;
use crate::boot::{BootPlan, FixedPlan};
use crate::testing::text_with_line_ends;

#[test]
fn parses_requests_with_options() {
    let b = encode_rrq(
        "pxe/undionly.kpxe",
        "OCTET",
        &[("BLKSIZE", "1468"), ("tsize", "0")],
    );
    let Packet::Read(r) = parse(&b).unwrap() else {
        panic!()
    };
    assert_eq!(r.filename, "pxe/undionly.kpxe");
    assert_eq!(r.mode, "octet");
    assert_eq!(
        r.options,
        vec![
            ("blksize".into(), "1468".into()),
            ("tsize".into(), "0".into())
        ]
    );
}

#[test]
fn rejects_malformed_packets() {
    assert_eq!(parse(&[0, 1]), Err(BadPacket::Short));
    assert_eq!(parse(&[0, 9, 0, 0]), Err(BadPacket::Opcode(9)));
    assert_eq!(parse(b"\x00\x01file\x00oct"), Err(BadPacket::Unterminated));
    assert_eq!(
        parse(b"\x00\x01file\x00octet\x00blksize\x00"),
        Err(BadPacket::OddOptions)
    );
    assert_eq!(
        parse(b"\x00\x01\xff\xfe\x00octet\x00"),
        Err(BadPacket::NotUtf8)
    );
    let mut many = b"\x00\x01f\x00octet\x00".to_vec();
    for _ in 0..40 {
        many.extend_from_slice(b"a\x00b\x00");
    }
    assert_eq!(parse(&many), Err(BadPacket::TooManyOptions));
    assert_eq!(parse(&[0, 4, 0xff, 0xff]), Ok(Packet::Ack(65535)));
}

fn cfg(root: PathBuf) -> TftpConfig {
    let mut c = TftpConfig::new(root, Ipv4Addr::LOCALHOST, None, "http://127.0.0.1:1".into());
    c.max_blksize = 1468;
    c.max_window = 16;
    c
}

#[test]
fn negotiation_clamps_and_ignores_bad_values() {
    let c = cfg(PathBuf::from("/"));
    let req = |opts: &[(&str, &str)]| Request {
        filename: "f".into(),
        mode: "octet".into(),
        options: opts
            .iter()
            .map(|(a, b)| (a.to_string(), b.to_string()))
            .collect(),
    };
    let n = negotiate(
        &c,
        &req(&[
            ("blksize", "65464"),
            ("windowsize", "64"),
            ("tsize", "0"),
            ("timeout", "3"),
        ]),
        12345,
    );
    assert_eq!(n.blksize, 1468);
    assert_eq!(n.window, 16);
    assert_eq!(n.timeout, Duration::from_secs(3));
    assert_eq!(
        n.oack,
        vec![
            ("blksize", "1468".to_string()),
            ("windowsize", "16".to_string()),
            ("tsize", "12345".to_string()),
            ("timeout", "3".to_string())
        ]
    );
    let n = negotiate(
        &c,
        &req(&[
            ("blksize", "4"),
            ("timeout", "0"),
            ("windowsize", "x"),
            ("foo", "1"),
        ]),
        1,
    );
    assert_eq!((n.blksize, n.window), (512, 1));
    assert!(n.oack.is_empty());
    // A client-chosen timeout longer than ours is not acknowledged (RFC 2349 allows only
    // the value asked for), so it cannot hold a slot for minutes.
    let n = negotiate(&c, &req(&[("timeout", "255")]), 1);
    assert_eq!(n.timeout, c.timeout);
    assert!(n.oack.is_empty());
    let n = negotiate(&c, &req(&[("timeout", "5")]), 1);
    assert_eq!(n.timeout, Duration::from_secs(5));
}

#[test]
fn netascii_conversion() {
    let mut out = Vec::new();
    to_netascii(b"a\nb\rc", &mut out);
    assert_eq!(out, b"a\r\nb\r\0c");
}

/// Undoes netascii as a client does: CR LF -> LF, CR NUL -> CR.
fn from_netascii(b: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        match (b[i], b.get(i + 1)) {
            (b'\r', Some(b'\n')) => {
                out.push(b'\n');
                i += 2;
            }
            (b'\r', Some(0)) => {
                out.push(b'\r');
                i += 2;
            }
            (c, _) => {
                out.push(c);
                i += 1;
            }
        }
    }
    out
}

#[test]
fn netascii_streams_in_bounded_memory() {
    let raw = text_with_line_ends(40 << 20);
    let mut whole = Vec::new();
    to_netascii(&raw, &mut whole);
    assert_eq!(
        netascii_len(&Source::Memory(raw.clone())).unwrap(),
        whole.len() as u64
    );
    // Windows of 16 blocks of 1468, with a resend of the last window now and then.
    let (blk, window) = (1468u64, 16u64);
    let mut r = NetasciiReader::new(Source::Memory(raw));
    let mut got = Vec::new();
    let mut acked = 0u64;
    let mut peak = 0;
    loop {
        let mut last = false;
        for b in acked..acked + window {
            let d = r.get(b * blk, blk as usize).unwrap().to_vec();
            if b % 1000 == 7 {
                // Lost: the same block is read again before the window moves.
                assert_eq!(r.get(b * blk, blk as usize).unwrap(), &d[..]);
            }
            got.extend_from_slice(&d);
            peak = peak.max(r.out.capacity());
            if (d.len() as u64) < blk {
                last = true;
                break;
            }
        }
        acked += window;
        r.release(acked * blk);
        if last {
            break;
        }
    }
    assert!(got == whole, "converted stream differs");
    let bound = (window * blk) as usize + 2 * READ_AHEAD + READ_AHEAD;
    assert!(
        peak <= bound,
        "kept {peak} bytes for a {} MiB file (bound {bound})",
        whole.len() >> 20
    );
    assert!(
        r.get(0, 512).is_err(),
        "acknowledged data is gone and says so"
    );
}

/// A minimal in-test client over loopback: checks blocks, rollover, windows and options
/// against our own server without needing root or network namespaces.
async fn fetch(
    server: SocketAddrV4,
    name: &str,
    opts: &[(&str, &str)],
    window: u64,
) -> std::result::Result<Vec<u8>, String> {
    fetch_mode(server, name, "octet", opts, window).await
}

async fn fetch_mode(
    server: SocketAddrV4,
    name: &str,
    mode: &str,
    opts: &[(&str, &str)],
    window: u64,
) -> std::result::Result<Vec<u8>, String> {
    let sock = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    sock.send_to(&encode_rrq(name, mode, opts), server)
        .await
        .unwrap();
    let mut buf = vec![0u8; 70000];
    let mut out = Vec::new();
    let mut blksize = 512;
    let mut expect: u16 = 1;
    let mut in_window = 0;
    loop {
        let (n, from) = tokio::time::timeout(Duration::from_secs(5), sock.recv_from(&mut buf))
            .await
            .map_err(|_| "timeout".to_string())?
            .unwrap();
        match parse(&buf[..n]).map_err(|e| e.to_string())? {
            Packet::Oack(o) => {
                for (k, v) in o {
                    if k == "blksize" {
                        blksize = v.parse().unwrap();
                    }
                }
                sock.send_to(&[0, 4, 0, 0], from).await.unwrap();
            }
            Packet::Data { block, len } => {
                assert_eq!(block, expect, "blocks in order on loopback");
                out.extend_from_slice(&buf[4..4 + len]);
                expect = expect.wrapping_add(1);
                in_window += 1;
                let last = len < blksize;
                if last || in_window == window {
                    in_window = 0;
                    let mut ack = vec![0, 4];
                    ack.extend_from_slice(&block.to_be_bytes());
                    sock.send_to(&ack, from).await.unwrap();
                }
                if last {
                    return Ok(out);
                }
            }
            Packet::Error { code, msg } => return Err(format!("error {code}: {msg}")),
            p => return Err(format!("unexpected {p:?}")),
        }
    }
}

async fn start(root: PathBuf) -> (SocketAddrV4, watch::Sender<bool>) {
    start_with(cfg(root)).await
}

async fn start_with(c: TftpConfig) -> (SocketAddrV4, watch::Sender<bool>) {
    start_sharing(c, Arc::new(ClientMap::default())).await
}

/// A server that fills `clients` (as the DHCP service shares it).
async fn start_sharing(
    mut c: TftpConfig,
    clients: Arc<ClientMap>,
) -> (SocketAddrV4, watch::Sender<bool>) {
    c.port = 0;
    let sock = bind(&c).unwrap();
    let SocketAddr::V4(addr) = sock.local_addr().unwrap() else {
        panic!()
    };
    let (tx, rx) = watch::channel(false);
    let provider = Arc::new(FixedPlan(BootPlan::Kernel {
        kernel: "vmlinuz".into(),
        initrds: vec!["initrd.img".into()],
        cmdline: "console=ttyS0".into(),
    }));
    tokio::spawn(run(c, sock, provider, clients, rx));
    (addr, tx)
}

#[tokio::test]
async fn grub_configs_are_served_and_unsigned_loaders_remembered() {
    use crate::boot::{grub_config, GRUB_NET_CFG};
    use crate::pxe::{Firmware, PxeClient};
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("ipxe.efi"), crate::pe::test_image(false)).unwrap();
    std::fs::write(dir.path().join("shimx64.efi"), crate::pe::test_image(true)).unwrap();
    let clients = Arc::new(ClientMap::default());
    let mac: crate::MacAddr = "52:54:00:00:00:01".parse().unwrap();
    clients.insert(Ipv4Addr::LOCALHOST, mac);
    let (srv, _stop) = start_sharing(cfg(dir.path().to_path_buf()), clients.clone()).await;
    let text = |b: Vec<u8>| String::from_utf8(b).unwrap();
    let first = fetch(srv, "/grub/x86_64-efi/grub.cfg", &[], 1)
        .await
        .unwrap();
    assert_eq!(text(first), GRUB_NET_CFG);
    let own = fetch(srv, "/grub/ignite/52:54:00:00:00:01.cfg", &[], 1)
        .await
        .unwrap();
    let plan = BootPlan::Kernel {
        kernel: "vmlinuz".into(),
        initrds: vec!["initrd.img".into()],
        cmdline: "console=ttyS0".into(),
    };
    assert_eq!(text(own), grub_config(&plan));
    let firmware = PxeClient {
        firmware: Firmware::EfiX64,
        http_client: false,
        is_ipxe: false,
        uuid: None,
    };
    // The server notes a transfer once the last ACK is in, after the client has the file.
    let settles = |want: Option<&str>| {
        let t = std::time::Instant::now();
        while clients.pending_unsigned(mac).as_deref() != want {
            assert!(
                t.elapsed() < Duration::from_secs(10),
                "pending {:?}, want {want:?}",
                clients.pending_unsigned(mac)
            );
            std::thread::sleep(Duration::from_millis(10));
        }
    };
    fetch(srv, "ipxe.efi", &[], 1).await.unwrap();
    settles(Some("ipxe.efi"));
    fetch(srv, "shimx64.efi", &[], 1).await.unwrap();
    settles(None);
    fetch(srv, "ipxe.efi", &[], 1).await.unwrap();
    settles(Some("ipxe.efi"));
    assert_eq!(
        clients.asked_again(mac, &firmware).as_deref(),
        Some("ipxe.efi")
    );
}

#[tokio::test]
async fn serves_files_with_rollover_windows_and_virtual_scripts() {
    let dir = tempfile::tempdir().unwrap();
    // 70000 blocks of 512 bytes: the block number wraps past 65535.
    let big: Vec<u8> = (0..512u64 * 70_000).map(|i| (i * 7 % 251) as u8).collect();
    std::fs::write(dir.path().join("big.bin"), &big).unwrap();
    std::fs::write(dir.path().join("exact.bin"), vec![9u8; 1024]).unwrap();
    let (srv, _stop) = start(dir.path().to_path_buf()).await;

    assert!(
        fetch(srv, "big.bin", &[], 1).await.unwrap() == big,
        "rollover at 512"
    );
    let got = fetch(
        srv,
        "big.bin",
        &[("blksize", "1468"), ("windowsize", "8")],
        8,
    )
    .await
    .unwrap();
    assert!(got == big, "windowed");
    // A file that is a multiple of blksize ends with an empty block.
    assert_eq!(
        fetch(srv, "exact.bin", &[], 1).await.unwrap(),
        vec![9u8; 1024]
    );
    let s = fetch(srv, "ipxe/52-54-00-00-00-01.ipxe", &[], 1)
        .await
        .unwrap();
    assert!(String::from_utf8(s)
        .unwrap()
        .contains("kernel http://127.0.0.1:1/files/vmlinuz initrd=initrd.img"));
    let e = fetch(srv, "../etc/passwd", &[], 1).await.unwrap_err();
    assert!(e.contains("error 2"), "{e}");
    let e = fetch(srv, "missing", &[], 1).await.unwrap_err();
    assert!(e.contains("error 1"), "{e}");
}

#[tokio::test]
async fn tsize_probe_then_real_transfer_and_write_refused() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("f"), vec![1u8; 3000]).unwrap();
    let (srv, _stop) = start(dir.path().to_path_buf()).await;
    let sock = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    sock.send_to(&encode_rrq("f", "octet", &[("tsize", "0")]), srv)
        .await
        .unwrap();
    let mut buf = [0u8; 2048];
    let (n, from) = sock.recv_from(&mut buf).await.unwrap();
    assert_eq!(
        parse(&buf[..n]).unwrap(),
        Packet::Oack(vec![("tsize".into(), "3000".into())])
    );
    sock.send_to(&encode_error(8, "User aborted the transfer"), from)
        .await
        .unwrap();
    assert_eq!(
        fetch(srv, "f", &[("tsize", "0")], 1).await.unwrap(),
        vec![1u8; 3000]
    );
    let mut wrq = encode_rrq("f", "octet", &[]);
    wrq[1] = 2;
    sock.send_to(&wrq, srv).await.unwrap();
    let (n, _) = sock.recv_from(&mut buf).await.unwrap();
    assert!(matches!(
        parse(&buf[..n]).unwrap(),
        Packet::Error { code: 2, .. }
    ));
}

#[tokio::test]
async fn lost_ack_is_retransmitted() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("f"), vec![5u8; 700]).unwrap();
    let (srv, _stop) = start_with(quick(dir.path().to_path_buf())).await;
    let cl = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    cl.send_to(&encode_rrq("f", "octet", &[]), srv)
        .await
        .unwrap();
    let mut buf = [0u8; 1024];
    let (_, from) = cl.recv_from(&mut buf).await.unwrap();
    // Do not ACK block 1: it must come again.
    let (n, _) = cl.recv_from(&mut buf).await.unwrap();
    assert_eq!(
        parse(&buf[..n]).unwrap(),
        Packet::Data { block: 1, len: 512 }
    );
    cl.send_to(&[0, 4, 0, 1], from).await.unwrap();
    let (n, _) = cl.recv_from(&mut buf).await.unwrap();
    assert_eq!(
        parse(&buf[..n]).unwrap(),
        Packet::Data { block: 2, len: 188 }
    );
}

#[tokio::test]
async fn netascii_above_16_mib_is_streamed() {
    let dir = tempfile::tempdir().unwrap();
    let raw = text_with_line_ends(17 << 20);
    std::fs::write(dir.path().join("big.txt"), &raw).unwrap();
    let (srv, _stop) = start(dir.path().to_path_buf()).await;
    let got = fetch_mode(
        srv,
        "big.txt",
        "netascii",
        &[("blksize", "1468"), ("windowsize", "16")],
        16,
    )
    .await
    .unwrap();
    assert!(from_netascii(&got) == raw, "netascii round trip differs");
}

/// Packets that arrive at `sock` until it has been quiet for `quiet`.
async fn drain(sock: &UdpSocket, quiet: Duration) -> Vec<Packet> {
    let mut buf = [0u8; 2048];
    let mut got = Vec::new();
    while let Ok(r) = tokio::time::timeout(quiet, sock.recv_from(&mut buf)).await {
        let (n, _) = r.unwrap();
        got.push(parse(&buf[..n]).unwrap());
    }
    got
}

fn quick(root: PathBuf) -> TftpConfig {
    let mut c = cfg(root);
    c.timeout = Duration::from_millis(100);
    c
}

#[tokio::test]
async fn a_forged_request_is_answered_twice_at_most() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("f"), vec![7u8; 5000]).unwrap();
    let (srv, _stop) = start_with(quick(dir.path().to_path_buf())).await;
    // The "client" never answers, as a victim whose address was forged would not.
    let victim = UdpSocket::bind("127.0.0.2:0").await.unwrap();
    victim
        .send_to(&encode_rrq("f", "octet", &[]), srv)
        .await
        .unwrap();
    let got = drain(&victim, Duration::from_secs(3)).await;
    assert_eq!(
        got,
        vec![Packet::Data { block: 1, len: 512 }; 2],
        "the first block and one resend, nothing more"
    );
    // With options, not even one DATA packet before the client ACKs.
    victim
        .send_to(
            &encode_rrq("f", "octet", &[("blksize", "1468"), ("windowsize", "8")]),
            srv,
        )
        .await
        .unwrap();
    let got = drain(&victim, Duration::from_secs(3)).await;
    assert_eq!(got.len(), 2, "{got:?}");
    assert!(got.iter().all(|p| matches!(p, Packet::Oack(_))), "{got:?}");
}

#[tokio::test]
async fn a_client_that_acked_gets_every_retry() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("f"), vec![7u8; 700]).unwrap();
    let mut c = quick(dir.path().to_path_buf());
    c.max_retries = 4;
    let (srv, _stop) = start_with(c).await;
    let client = UdpSocket::bind("127.0.0.3:0").await.unwrap();
    client
        .send_to(&encode_rrq("f", "octet", &[]), srv)
        .await
        .unwrap();
    let mut buf = [0u8; 2048];
    let (_, from) = client.recv_from(&mut buf).await.unwrap();
    client.send_to(&[0, 4, 0, 1], from).await.unwrap();
    // Block 2 (the last) is never ACKed: a proven client gets the full retries.
    let got = drain(&client, Duration::from_secs(3)).await;
    assert_eq!(got, vec![Packet::Data { block: 2, len: 188 }; 5]);
}

#[tokio::test]
async fn transfers_are_limited_per_client_and_for_unproven_clients() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("f"), vec![7u8; 5000]).unwrap();
    let mut c = cfg(dir.path().to_path_buf());
    // Long enough that unanswered transfers are still running while we look.
    c.timeout = Duration::from_secs(4);
    c.max_per_client = 2;
    c.max_transfers = 6;
    let (srv, _stop) = start_with(c).await;
    // 127.0.0.1 completes a transfer: from now on it is a proven client.
    assert_eq!(fetch(srv, "f", &[], 1).await.unwrap().len(), 5000);
    let ask = |ip: &'static str| async move {
        let s = UdpSocket::bind(format!("{ip}:0")).await.unwrap();
        s.send_to(&encode_rrq("f", "octet", &[]), srv)
            .await
            .unwrap();
        let mut buf = [0u8; 2048];
        let answered = tokio::time::timeout(Duration::from_secs(2), s.recv_from(&mut buf))
            .await
            .is_ok();
        (s, answered)
    };
    // One address: two transfers, the third is refused.
    let (_a, ok1) = ask("127.0.0.4").await;
    let (_b, ok2) = ask("127.0.0.4").await;
    let (_c, ok3) = ask("127.0.0.4").await;
    assert_eq!((ok1, ok2, ok3), (true, true, false));
    // Clients that never ACKed hold at most half the slots (3 of 6): 127.0.0.4 has two,
    // 127.0.0.5 gets the third, 127.0.0.6 none.
    let (_d, ok4) = ask("127.0.0.5").await;
    let (_e, ok5) = ask("127.0.0.6").await;
    assert_eq!((ok4, ok5), (true, false));
    // A client that has ACKed before still gets a slot.
    assert_eq!(fetch(srv, "f", &[], 1).await.unwrap().len(), 5000);
}
