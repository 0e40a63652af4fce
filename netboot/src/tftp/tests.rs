use super::*;
use crate::boot::{BootPlan, FixedPlan};

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
}

#[test]
fn netascii_conversion() {
    assert_eq!(to_netascii(b"a\nb\rc"), b"a\r\nb\r\0c");
}

/// A minimal in-test client over loopback: checks blocks, rollover, windows and options
/// against our own server without needing root or network namespaces.
async fn fetch(
    server: SocketAddrV4,
    name: &str,
    opts: &[(&str, &str)],
    window: u64,
) -> std::result::Result<Vec<u8>, String> {
    let sock = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    sock.send_to(&encode_rrq(name, "octet", opts), server)
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
    let mut c = cfg(root);
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
    tokio::spawn(run(c, sock, provider, Arc::new(ClientMap::default()), rx));
    (addr, tx)
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
    let mut c = cfg(dir.path().to_path_buf());
    c.port = 0;
    c.timeout = Duration::from_millis(100);
    let sock = bind(&c).unwrap();
    let SocketAddr::V4(srv) = sock.local_addr().unwrap() else {
        panic!()
    };
    let (_tx, rx) = watch::channel(false);
    tokio::spawn(run(
        c,
        sock,
        Arc::new(FixedPlan(BootPlan::Local)),
        Arc::new(ClientMap::default()),
        rx,
    ));
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
