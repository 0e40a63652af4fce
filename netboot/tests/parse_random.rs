//! The fuzz targets' properties (netboot/fuzz/) as randomized tests that run in every
//! `cargo test`: random and mutated DHCP/TFTP packets never panic the parsers or the DHCP
//! engine, never produce short replies, and parsed TFTP requests round-trip.

use std::net::{Ipv4Addr, SocketAddrV4};
use std::sync::{Arc, Mutex, OnceLock};

use dhcproto::v4::{Architecture, DhcpOption, Message, MessageType};
use dhcproto::Encodable;
use ignite_netboot::boot::{BootFiles, BootPlan, ClientMap, FixedPlan};
use ignite_netboot::dhcp::{encode_reply, shared, DhcpConfig, DhcpEngine, Port};
use ignite_netboot::leases::LeaseStore;
use ignite_netboot::tftp::{encode_rrq, parse, Packet};
use proptest::prelude::*;

fn engine(dir: &std::path::Path, pool: bool) -> DhcpEngine {
    let cfg = DhcpConfig {
        server_ip: Ipv4Addr::new(10, 0, 0, 1),
        pool: pool.then(|| (Ipv4Addr::new(10, 0, 0, 10), Ipv4Addr::new(10, 0, 0, 20))),
        subnet_mask: Ipv4Addr::new(255, 255, 255, 0),
        router: None,
        dns: vec![],
        domain: None,
        lease_secs: 600,
        reservations: vec![],
        relay_pools: vec![],
        files: BootFiles::default(),
        http_base: "http://10.0.0.1:8080".into(),
    };
    let leases = pool.then(|| shared(LeaseStore::open(&dir.join("l.db")).unwrap()));
    DhcpEngine::new(
        cfg,
        leases,
        Arc::new(FixedPlan(BootPlan::Local)),
        Arc::new(ClientMap::default()),
    )
    .unwrap()
}

/// A valid PXE DISCOVER/REQUEST to mutate, so mutations reach deep into option parsing.
fn seed(kind: u8) -> Vec<u8> {
    let u = Ipv4Addr::UNSPECIFIED;
    let mut m = Message::new(u, u, u, u, &[2, 0, 0, 0, 0, kind]);
    let t = if kind.is_multiple_of(2) {
        MessageType::Discover
    } else {
        MessageType::Request
    };
    m.opts_mut().insert(DhcpOption::MessageType(t));
    m.opts_mut().insert(DhcpOption::ClassIdentifier(
        b"PXEClient:Arch:00007:UNDI:003016".to_vec(),
    ));
    m.opts_mut()
        .insert(DhcpOption::ClientSystemArchitecture(Architecture::from(7)));
    m.opts_mut()
        .insert(DhcpOption::RequestedIpAddress(Ipv4Addr::new(10, 0, 0, 12)));
    m.opts_mut()
        .insert(DhcpOption::ClientNetworkInterface(1, 2, 1));
    m.to_vec().unwrap()
}

/// One full and one proxy engine for all cases, so state (leases, offers) accumulates as it
/// would in a server under attack.
fn engines() -> &'static Mutex<(DhcpEngine, DhcpEngine, tempfile::TempDir)> {
    static E: OnceLock<Mutex<(DhcpEngine, DhcpEngine, tempfile::TempDir)>> = OnceLock::new();
    E.get_or_init(|| {
        let dir = tempfile::tempdir().unwrap();
        Mutex::new((engine(dir.path(), true), engine(dir.path(), false), dir))
    })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2000))]

    #[test]
    fn dhcp_engine_survives_anything(
        kind in 0u8..4,
        flips in prop::collection::vec((0usize..400, any::<u8>()), 0..12),
        tail in prop::collection::vec(any::<u8>(), 0..64),
        cut in 0usize..400,
        random in prop::collection::vec(any::<u8>(), 0..600),
    ) {
        let mut guard = engines().lock().unwrap_or_else(|p| p.into_inner());
        let (full, proxy, _) = &mut *guard;
        let mut p = seed(kind);
        for (i, b) in flips {
            let n = p.len();
            p[i % n] = b;
        }
        p.extend_from_slice(&tail);
        let cut_p = p[..cut.min(p.len())].to_vec();
        let src = SocketAddrV4::new(Ipv4Addr::new(10, 0, 0, 99), 68);
        for pkt in [&p, &cut_p, &random] {
            for (is_proxy, port) in [(false, Port::Dhcp), (true, Port::Dhcp), (true, Port::Pxe)] {
                let e = if is_proxy { &mut *proxy } else { &mut *full };
                if let Some(r) = e.handle(pkt, src, port, 1000) {
                    prop_assert!(encode_reply(&r.msg).len() >= 300);
                }
            }
        }
    }

    #[test]
    fn tftp_parser_never_panics_and_requests_round_trip(data in prop::collection::vec(any::<u8>(), 0..700)) {
        if let Ok(Packet::Read(r)) = parse(&data) {
            let opts: Vec<(&str, &str)> = r.options.iter().map(|(a, b)| (a.as_str(), b.as_str())).collect();
            prop_assert_eq!(parse(&encode_rrq(&r.filename, &r.mode, &opts)), Ok(Packet::Read(r)));
        }
    }

    #[test]
    fn tftp_requests_parse_back(name in "[a-zA-Z0-9/._-]{1,60}", blk in 8u32..65464, win in 1u32..100) {
        let b = blk.to_string();
        let w = win.to_string();
        let pkt = encode_rrq(&name, "octet", &[("blksize", &b), ("windowsize", &w)]);
        let Ok(Packet::Read(r)) = parse(&pkt) else { panic!("valid request did not parse") };
        prop_assert_eq!(r.filename, name);
        prop_assert_eq!(r.options, vec![("blksize".to_string(), b), ("windowsize".to_string(), w)]);
    }
}
