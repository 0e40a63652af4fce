use super::*;
use crate::boot::{BootPlan, FixedPlan};
use crate::testing::{pxe_options as pxe_opts, request as req};
use dhcproto::v4::relay;

const SERVER: Ipv4Addr = Ipv4Addr::new(10, 9, 0, 1);

fn cfg(pool: Option<(u8, u8)>) -> DhcpConfig {
    DhcpConfig {
        server_ip: SERVER,
        pool: pool.map(|(a, b)| (Ipv4Addr::new(10, 9, 0, a), Ipv4Addr::new(10, 9, 0, b))),
        subnet_mask: Ipv4Addr::new(255, 255, 255, 0),
        router: Some(SERVER),
        dns: vec![SERVER],
        domain: Some("lab".into()),
        lease_secs: 600,
        reservations: vec![Reservation {
            mac: MacAddr([2, 0, 0, 0, 0, 0x99]),
            ip: Ipv4Addr::new(10, 9, 0, 5),
            hostname: Some("fixed".into()),
        }],
        relay_pools: vec![RelayPool {
            first: Ipv4Addr::new(10, 90, 0, 50),
            last: Ipv4Addr::new(10, 90, 0, 60),
            mask: Ipv4Addr::new(255, 255, 255, 0),
        }],
        files: BootFiles::default(),
        http_base: "http://10.9.0.1:8080".into(),
    }
}

struct Env {
    _dir: tempfile::TempDir,
    db: std::path::PathBuf,
    engine: DhcpEngine,
}

fn env(pool: Option<(u8, u8)>) -> Env {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("state.db");
    let leases = pool.map(|_| shared(LeaseStore::open(&db).unwrap()));
    let engine = DhcpEngine::new(
        cfg(pool),
        leases,
        Arc::new(FixedPlan(BootPlan::Local)),
        Arc::new(ClientMap::default()),
    )
    .unwrap();
    Env {
        _dir: dir,
        db,
        engine,
    }
}

fn mac(n: u8) -> MacAddr {
    MacAddr([2, 0, 0, 0, 0, n])
}

fn send(e: &mut DhcpEngine, msg: &Message, port: Port, now: u64) -> Option<Reply> {
    let bytes = msg.to_vec().unwrap();
    e.handle(
        &bytes,
        SocketAddrV4::new(Ipv4Addr::UNSPECIFIED, 68),
        port,
        now,
    )
}

fn kind(r: &Reply) -> MessageType {
    r.msg.opts().msg_type().unwrap()
}

fn dora(e: &mut DhcpEngine, m: MacAddr, now: u64) -> Ipv4Addr {
    let offer = send(e, &req(MessageType::Discover, m, vec![]), Port::Dhcp, now).unwrap();
    assert_eq!(kind(&offer), MessageType::Offer);
    let ip = offer.msg.yiaddr();
    let r = req(
        MessageType::Request,
        m,
        vec![
            DhcpOption::RequestedIpAddress(ip),
            DhcpOption::ServerIdentifier(SERVER),
        ],
    );
    let ack = send(e, &r, Port::Dhcp, now).unwrap();
    assert_eq!(kind(&ack), MessageType::Ack);
    assert_eq!(ack.msg.yiaddr(), ip);
    ip
}

#[test]
fn dora_gives_distinct_addresses_with_options() {
    let mut e = env(Some((100, 110)));
    let a = dora(&mut e.engine, mac(1), 1000);
    let b = dora(&mut e.engine, mac(2), 1000);
    assert_ne!(a, b);
    let offer = send(
        &mut e.engine,
        &req(MessageType::Discover, mac(3), vec![]),
        Port::Dhcp,
        1000,
    )
    .unwrap();
    let o = offer.msg.opts();
    assert_eq!(
        o.get(OptionCode::AddressLeaseTime),
        Some(&DhcpOption::AddressLeaseTime(600))
    );
    assert_eq!(o.get(OptionCode::Renewal), Some(&DhcpOption::Renewal(300)));
    assert_eq!(
        o.get(OptionCode::SubnetMask),
        Some(&DhcpOption::SubnetMask(Ipv4Addr::new(255, 255, 255, 0)))
    );
    assert_eq!(
        o.get(OptionCode::ServerIdentifier),
        Some(&DhcpOption::ServerIdentifier(SERVER))
    );
    assert_eq!(offer.to, SocketAddrV4::new(Ipv4Addr::BROADCAST, 68));
    assert!(encode_reply(&offer.msg).len() >= MIN_REPLY_LEN);
    // Not a boot client: no boot file.
    assert!(offer.msg.fname().is_none_or(|f| f.is_empty()));
}

#[test]
fn repeated_discover_gets_the_same_offer() {
    let mut e = env(Some((100, 110)));
    let a = send(
        &mut e.engine,
        &req(MessageType::Discover, mac(1), vec![]),
        Port::Dhcp,
        1,
    )
    .unwrap();
    let b = send(
        &mut e.engine,
        &req(MessageType::Discover, mac(1), vec![]),
        Port::Dhcp,
        2,
    )
    .unwrap();
    assert_eq!(a.msg.yiaddr(), b.msg.yiaddr());
    let c = send(
        &mut e.engine,
        &req(MessageType::Discover, mac(2), vec![]),
        Port::Dhcp,
        2,
    )
    .unwrap();
    assert_ne!(a.msg.yiaddr(), c.msg.yiaddr());
}

#[test]
fn same_client_gets_same_address_and_leases_survive_restart() {
    let mut e = env(Some((100, 110)));
    let a = dora(&mut e.engine, mac(1), 1000);
    assert_eq!(dora(&mut e.engine, mac(1), 1001), a);
    // Restart: a new engine on the same database.
    let leases = shared(LeaseStore::open(&e.db).unwrap());
    let mut e2 = DhcpEngine::new(
        cfg(Some((100, 110))),
        Some(leases),
        Arc::new(FixedPlan(BootPlan::Local)),
        Arc::new(ClientMap::default()),
    )
    .unwrap();
    assert_eq!(dora(&mut e2, mac(1), 1002), a);
    assert_ne!(dora(&mut e2, mac(2), 1002), a);
}

#[test]
fn request_for_someone_elses_address_is_naked() {
    let mut e = env(Some((100, 110)));
    let a = dora(&mut e.engine, mac(1), 1000);
    let r = req(
        MessageType::Request,
        mac(2),
        vec![DhcpOption::RequestedIpAddress(a)],
    );
    let nak = send(&mut e.engine, &r, Port::Dhcp, 1000).unwrap();
    assert_eq!(kind(&nak), MessageType::Nak);
    // Another server's identifier: silence.
    let r = req(
        MessageType::Request,
        mac(3),
        vec![
            DhcpOption::RequestedIpAddress(a),
            DhcpOption::ServerIdentifier(Ipv4Addr::new(10, 9, 0, 2)),
        ],
    );
    assert!(send(&mut e.engine, &r, Port::Dhcp, 1000).is_none());
    // Foreign network in INIT-REBOOT: silence too.
    let r = req(
        MessageType::Request,
        mac(3),
        vec![DhcpOption::RequestedIpAddress(Ipv4Addr::new(
            192, 168, 7, 7,
        ))],
    );
    assert!(send(&mut e.engine, &r, Port::Dhcp, 1000).is_none());
}

#[test]
fn renew_release_decline() {
    let mut e = env(Some((100, 101)));
    let a = dora(&mut e.engine, mac(1), 1000);
    // RENEW: unicast from ciaddr, reply to ciaddr.
    let mut r = req(MessageType::Request, mac(1), vec![]);
    r.set_ciaddr(a);
    let ack = send(&mut e.engine, &r, Port::Dhcp, 1300).unwrap();
    assert_eq!(kind(&ack), MessageType::Ack);
    assert_eq!(ack.to, SocketAddrV4::new(a, 68));
    assert_eq!(e.engine.leases().unwrap().get(a).unwrap().expires, 1900);
    // RELEASE frees it for others.
    let mut r = req(
        MessageType::Release,
        mac(1),
        vec![DhcpOption::ServerIdentifier(SERVER)],
    );
    r.set_ciaddr(a);
    assert!(send(&mut e.engine, &r, Port::Dhcp, 1301).is_none());
    assert!(!e.engine.leases().unwrap().get(a).unwrap().active(1301));
    // DECLINE quarantines the address: the pool of two then has one left.
    let b = dora(&mut e.engine, mac(2), 1302);
    let r = req(
        MessageType::Decline,
        mac(2),
        vec![DhcpOption::RequestedIpAddress(b)],
    );
    assert!(send(&mut e.engine, &r, Port::Dhcp, 1303).is_none());
    let c = dora(&mut e.engine, mac(2), 1304);
    assert_ne!(b, c);
    // Pool exhausted now (b declined, c bound): no offer.
    assert!(send(
        &mut e.engine,
        &req(MessageType::Discover, mac(4), vec![]),
        Port::Dhcp,
        1305
    )
    .is_none());
}

#[test]
fn reservation_and_hostname() {
    let mut e = env(Some((100, 110)));
    let ip = dora(&mut e.engine, mac(0x99), 1000);
    assert_eq!(ip, Ipv4Addr::new(10, 9, 0, 5));
    let offer = send(
        &mut e.engine,
        &req(MessageType::Discover, mac(0x99), vec![]),
        Port::Dhcp,
        1000,
    )
    .unwrap();
    assert_eq!(
        offer.msg.opts().get(OptionCode::Hostname),
        Some(&DhcpOption::Hostname("fixed".into()))
    );
}

#[test]
fn inform_gets_options_without_lease() {
    let mut e = env(Some((100, 110)));
    let mut r = req(MessageType::Inform, mac(7), vec![]);
    r.set_ciaddr(Ipv4Addr::new(10, 9, 0, 50));
    let ack = send(&mut e.engine, &r, Port::Dhcp, 1000).unwrap();
    assert_eq!(kind(&ack), MessageType::Ack);
    assert_eq!(ack.msg.yiaddr(), Ipv4Addr::UNSPECIFIED);
    assert!(ack.msg.opts().get(OptionCode::AddressLeaseTime).is_none());
    assert_eq!(ack.to, SocketAddrV4::new(Ipv4Addr::new(10, 9, 0, 50), 68));
}

#[test]
fn relayed_request_goes_to_giaddr_with_option_82_echoed() {
    let mut e = env(Some((100, 110)));
    let mut info = relay::RelayAgentInformation::default();
    info.insert(relay::RelayInfo::AgentCircuitId(b"port7".to_vec()));
    let mut r = req(
        MessageType::Discover,
        mac(1),
        vec![DhcpOption::RelayAgentInformation(info.clone())],
    );
    r.set_giaddr(Ipv4Addr::new(10, 9, 0, 254));
    let offer = send(&mut e.engine, &r, Port::Dhcp, 1000).unwrap();
    assert_eq!(
        offer.to,
        SocketAddrV4::new(Ipv4Addr::new(10, 9, 0, 254), 67)
    );
    assert_eq!(offer.msg.giaddr(), Ipv4Addr::new(10, 9, 0, 254));
    assert_eq!(
        offer.msg.opts().get(OptionCode::RelayAgentInformation),
        Some(&DhcpOption::RelayAgentInformation(info))
    );
}

#[test]
fn relay_on_another_subnet_gets_its_own_pool() {
    let mut e = env(Some((100, 110)));
    let gi = Ipv4Addr::new(10, 90, 0, 1);
    let mut r = req(MessageType::Discover, mac(1), vec![]);
    r.set_giaddr(gi);
    let offer = send(&mut e.engine, &r, Port::Dhcp, 1000).unwrap();
    let ip = offer.msg.yiaddr();
    assert!(
        (50..=60).contains(&ip.octets()[3]) && ip.octets()[..3] == [10, 90, 0],
        "{ip}"
    );
    assert_eq!(
        offer.msg.opts().get(OptionCode::Router),
        Some(&DhcpOption::Router(vec![gi]))
    );
    assert_eq!(offer.to, SocketAddrV4::new(gi, 67));
    let mut q = req(
        MessageType::Request,
        mac(1),
        vec![
            DhcpOption::RequestedIpAddress(ip),
            DhcpOption::ServerIdentifier(SERVER),
        ],
    );
    q.set_giaddr(gi);
    assert_eq!(
        kind(&send(&mut e.engine, &q, Port::Dhcp, 1000).unwrap()),
        MessageType::Ack
    );
    // A relay from a subnet we have no pool for: no answer.
    let mut r = req(MessageType::Discover, mac(2), vec![]);
    r.set_giaddr(Ipv4Addr::new(192, 168, 5, 1));
    assert!(send(&mut e.engine, &r, Port::Dhcp, 1000).is_none());
}

#[test]
fn pxe_boot_files_per_arch_and_ipxe_gets_script() {
    let mut e = env(Some((100, 110)));
    let cases = [
        (0u16, false, "undionly.kpxe"),
        (7, false, "ipxe.efi"),
        (9, false, "ipxe.efi"),
        (11, false, "ipxe-arm64.efi"),
        (0, true, "http://10.9.0.1:8080/ipxe/02-00-00-00-00-01"),
        (7, true, "http://10.9.0.1:8080/ipxe/02-00-00-00-00-01"),
    ];
    for (arch, ipxe, file) in cases {
        let offer = send(
            &mut e.engine,
            &req(MessageType::Discover, mac(1), pxe_opts(arch, ipxe)),
            Port::Dhcp,
            1000,
        )
        .unwrap();
        let m = &offer.msg;
        assert_eq!(
            m.fname_str().unwrap().unwrap(),
            file,
            "arch {arch} ipxe {ipxe}"
        );
        assert_eq!(m.siaddr(), SERVER);
        assert_eq!(
            m.opts().get(OptionCode::BootfileName),
            Some(&DhcpOption::BootfileName(file.as_bytes().to_vec()))
        );
        assert_eq!(
            m.opts().get(OptionCode::ClassIdentifier),
            Some(&DhcpOption::ClassIdentifier(b"PXEClient".to_vec()))
        );
        assert!(
            m.opts().get(OptionCode::ClientMachineIdentifier).is_some(),
            "97 echoed"
        );
        assert_ne!(m.yiaddr(), Ipv4Addr::UNSPECIFIED);
    }
}

#[test]
fn proxy_mode_answers_only_boot_info() {
    let mut e = env(None);
    // Ordinary client: nothing.
    assert!(send(
        &mut e.engine,
        &req(MessageType::Discover, mac(1), vec![]),
        Port::Dhcp,
        1
    )
    .is_none());
    // BIOS: offer with yiaddr 0, option 43 and the file, broadcast.
    let r = send(
        &mut e.engine,
        &req(MessageType::Discover, mac(1), pxe_opts(0, false)),
        Port::Dhcp,
        1,
    )
    .unwrap();
    assert_eq!(kind(&r), MessageType::Offer);
    assert_eq!(r.msg.yiaddr(), Ipv4Addr::UNSPECIFIED);
    assert_eq!(
        r.msg.opts().get(OptionCode::VendorExtensions),
        Some(&DhcpOption::VendorExtensions(vec![6, 1, 8, 255]))
    );
    assert!(r.msg.opts().get(OptionCode::AddressLeaseTime).is_none());
    assert_eq!(r.to, SocketAddrV4::new(Ipv4Addr::BROADCAST, 68));
    assert!(r.msg.flags().broadcast());
    // UEFI: no option 43 on port 67; its 4011 request is answered to the sender.
    let r = send(
        &mut e.engine,
        &req(MessageType::Discover, mac(1), pxe_opts(7, false)),
        Port::Dhcp,
        1,
    )
    .unwrap();
    assert!(r.msg.opts().get(OptionCode::VendorExtensions).is_none());
    let mut q = req(MessageType::Request, mac(1), pxe_opts(7, false));
    q.set_ciaddr(Ipv4Addr::new(10, 9, 0, 77));
    let bytes = q.to_vec().unwrap();
    let src = SocketAddrV4::new(Ipv4Addr::new(10, 9, 0, 77), 4011);
    let r = e.engine.handle(&bytes, src, Port::Pxe, 1).unwrap();
    assert_eq!(kind(&r), MessageType::Ack);
    assert_eq!(r.to, src);
    assert_eq!(r.msg.fname_str().unwrap().unwrap(), "ipxe.efi");
    // A REQUEST on 67 meant for the address-giving server is not ours.
    let q = req(
        MessageType::Request,
        mac(1),
        [
            pxe_opts(0, false),
            vec![DhcpOption::ServerIdentifier(Ipv4Addr::new(10, 9, 0, 2))],
        ]
        .concat(),
    );
    assert!(send(&mut e.engine, &q, Port::Dhcp, 1).is_none());
}

#[test]
fn hostile_packets_are_dropped() {
    let good = req(MessageType::Discover, mac(1), vec![]).to_vec().unwrap();
    assert_eq!(parse_request(&good[..100]), Err(Dropped::Truncated(100)));
    let mut bad = good.clone();
    bad[236] = 0;
    assert_eq!(parse_request(&bad), Err(Dropped::NoMagic));
    let mut bad = good.clone();
    bad[0] = 2;
    assert_eq!(parse_request(&bad), Err(Dropped::NotRequest));
    let mut bad = good.clone();
    bad[2] = 16;
    assert_eq!(parse_request(&bad), Err(Dropped::NotEthernet));
    // Option overload.
    let mut overload = good[..240].to_vec();
    overload.extend_from_slice(&[53, 1, 1, 52, 1, 3, 255]);
    assert_eq!(parse_request(&overload), Err(Dropped::Overload));
    // Found by fuzzing: option 94 must be 3 bytes (dhcproto asserts on it).
    let mut short94 = good[..240].to_vec();
    short94.extend_from_slice(&[53, 1, 1, 94, 2, 1, 2, 255]);
    assert_eq!(parse_request(&short94), Err(Dropped::BadOptionLength(94)));
    let mut twice94 = good[..240].to_vec();
    twice94.extend_from_slice(&[53, 1, 1, 94, 3, 1, 2, 1, 94, 3, 1, 2, 1, 255]);
    assert_eq!(parse_request(&twice94), Err(Dropped::BadOptionLength(94)));
    let mut empty151 = good[..240].to_vec();
    empty151.extend_from_slice(&[53, 1, 1, 151, 0, 255]);
    assert_eq!(parse_request(&empty151), Err(Dropped::BadOptionLength(151)));
    // Unknown message type 42.
    let mut bad = good[..240].to_vec();
    bad.extend_from_slice(&[53, 1, 42, 255]);
    assert_eq!(parse_request(&bad), Err(Dropped::NoMessageType));
    // An option claiming more bytes than the packet has never comes out as an option.
    let mut bad = good[..240].to_vec();
    bad.extend_from_slice(&[53, 1, 1, 60, 200, b'P']);
    if let Ok(m) = parse_request(&bad) {
        assert!(m.opts().get(OptionCode::ClassIdentifier).is_none());
    }
    // The engine survives all of them and still serves.
    let mut e = env(Some((100, 110)));
    for p in [
        &good[..10],
        &overload[..],
        &[0u8; 600][..],
        &[0xffu8; 1500][..],
    ] {
        assert!(e
            .engine
            .handle(
                p,
                SocketAddrV4::new(Ipv4Addr::UNSPECIFIED, 68),
                Port::Dhcp,
                1
            )
            .is_none());
    }
    dora(&mut e.engine, mac(1), 1);
}

#[test]
fn config_validation_names_the_problem() {
    let mut c = cfg(Some((100, 110)));
    c.pool = Some((Ipv4Addr::new(10, 9, 0, 100), Ipv4Addr::new(10, 9, 1, 5)));
    assert!(c
        .validate()
        .unwrap_err()
        .to_string()
        .contains("outside the server's subnet"));
    c.pool = Some((Ipv4Addr::new(10, 9, 0, 110), Ipv4Addr::new(10, 9, 0, 100)));
    assert!(c.validate().unwrap_err().to_string().contains("swap"));
    c.pool = Some((Ipv4Addr::new(10, 9, 0, 1), Ipv4Addr::new(10, 9, 0, 100)));
    assert!(c
        .validate()
        .unwrap_err()
        .to_string()
        .contains("own address"));
}
