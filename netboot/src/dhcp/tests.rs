use super::*;
use crate::boot::{BootEvent, BootPlan, FixedPlan};
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

fn discover(e: &mut DhcpEngine, m: MacAddr, now: u64) -> Option<Reply> {
    send(e, &req(MessageType::Discover, m, vec![]), Port::Dhcp, now)
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
    let offer = discover(&mut e.engine, mac(3), 1000).unwrap();
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
    let a = discover(&mut e.engine, mac(1), 1).unwrap();
    let b = discover(&mut e.engine, mac(1), 2).unwrap();
    assert_eq!(a.msg.yiaddr(), b.msg.yiaddr());
    let c = discover(&mut e.engine, mac(2), 2).unwrap();
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
    assert!(discover(&mut e.engine, mac(4), 1305).is_none());
}

#[test]
fn reservation_and_hostname() {
    let mut e = env(Some((100, 110)));
    let ip = dora(&mut e.engine, mac(0x99), 1000);
    assert_eq!(ip, Ipv4Addr::new(10, 9, 0, 5));
    let offer = discover(&mut e.engine, mac(0x99), 1000).unwrap();
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
    assert!(discover(&mut e.engine, mac(1), 1).is_none());
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

#[test]
fn lengths_the_wire_format_cannot_carry_are_refused() {
    let mut c = cfg(Some((100, 110)));
    c.files.bios = format!("{}.kpxe", "b".repeat(130));
    let e = c.validate().unwrap_err().to_string();
    assert!(
        e.contains("BIOS boot file") && e.contains("at most 128"),
        "{e}"
    );
    // Without the check, dhcproto asserts when the name goes into the reply.
    let mut c = cfg(Some((100, 110)));
    c.http_base = format!("http://{}.example:8080", "h".repeat(90));
    let e = c.validate().unwrap_err().to_string();
    assert!(e.contains("iPXE script URL"), "{e}");
    let mut c = cfg(Some((100, 110)));
    c.dns = (0..80).map(|n| Ipv4Addr::new(10, 9, 1, n)).collect();
    let e = c.validate().unwrap_err().to_string();
    assert!(e.contains("576") && e.contains("DNS"), "{e}");
    let mut c = cfg(Some((100, 110)));
    c.reservations[0].hostname = Some(String::new());
    assert!(c.validate().unwrap_err().to_string().contains("host name"));
    // The longest names that fit still make replies every client takes.
    let mut c = cfg(Some((100, 110)));
    c.files.bios = "b".repeat(128);
    c.validate().unwrap();
    let mut e = DhcpEngine::new(
        c,
        Some(shared(
            LeaseStore::open(&tempfile::tempdir().unwrap().path().join("l")).unwrap(),
        )),
        Arc::new(FixedPlan(BootPlan::Local)),
        Arc::new(ClientMap::default()),
    )
    .unwrap();
    let offer = send(
        &mut e,
        &req(MessageType::Discover, mac(1), pxe_opts(0, false)),
        Port::Dhcp,
        1000,
    )
    .unwrap();
    let n = encode_reply(&offer.msg).len();
    assert!((MIN_REPLY_LEN..=MAX_REPLY_LEN).contains(&n), "{n}");
}

fn attacker(n: u16) -> MacAddr {
    let [a, b] = n.to_be_bytes();
    MacAddr([6, 6, 6, 0, a, b])
}

#[test]
fn forged_discovers_do_not_lock_a_short_pool() {
    // 51 addresses; 60 forged DISCOVERs (new MAC each, never a REQUEST) take them all as
    // offers. They used to keep every new client out for the 30 s an offer is held.
    let mut e = env(Some((100, 150)));
    for n in 0..60 {
        discover(&mut e.engine, attacker(n), 1000);
    }
    let ip = dora(&mut e.engine, mac(1), 1003);
    assert!((100..=150).contains(&ip.octets()[3]));
    // Resent at 2 packets a second, they still leave room for every new client.
    let mut n = 60;
    for t in 1004..1100 {
        for _ in 0..2 {
            discover(&mut e.engine, attacker(n % 120), t);
            n += 1;
        }
        if t % 10 == 0 {
            dora(&mut e.engine, mac(t as u8), t);
        }
    }
}

#[test]
fn a_request_takes_an_address_only_offered_to_another() {
    let mut e = env(Some((100, 100)));
    let offer = discover(&mut e.engine, mac(1), 1000).unwrap();
    let ip = offer.msg.yiaddr();
    // The one address is on offer to mac 1; mac 2, after the short hold, is offered it.
    let o2 = discover(&mut e.engine, mac(2), 1001);
    assert!(o2.is_none(), "an offer younger than the short hold is kept");
    let o2 = discover(&mut e.engine, mac(2), 1002).unwrap();
    assert_eq!(o2.msg.yiaddr(), ip);
    // mac 1 asks first and gets the lease; mac 2's request is then refused.
    let ask = |m| {
        req(
            MessageType::Request,
            m,
            vec![
                DhcpOption::RequestedIpAddress(ip),
                DhcpOption::ServerIdentifier(SERVER),
            ],
        )
    };
    let ack = send(&mut e.engine, &ask(mac(1)), Port::Dhcp, 1002).unwrap();
    assert_eq!(kind(&ack), MessageType::Ack);
    let nak = send(&mut e.engine, &ask(mac(2)), Port::Dhcp, 1002).unwrap();
    assert_eq!(kind(&nak), MessageType::Nak);
}

#[test]
fn one_mac_is_rate_limited_and_others_are_not() {
    let mut e = env(Some((100, 110)));
    e.engine
        .set_limits(DhcpLimits {
            per_mac: Some(RateLimit {
                burst: 5,
                per_minute: 60,
            }),
            ..DhcpLimits::default()
        })
        .unwrap();
    let discover = |m| req(MessageType::Discover, m, vec![]);
    let answered = (0..50)
        .filter(|_| send(&mut e.engine, &discover(mac(1)), Port::Dhcp, 1000).is_some())
        .count();
    assert_eq!(answered, 5);
    assert!(send(&mut e.engine, &discover(mac(2)), Port::Dhcp, 1000).is_some());
    assert!(
        send(&mut e.engine, &discover(mac(1)), Port::Dhcp, 1001).is_some(),
        "one more a second"
    );
    let bad = DhcpLimits {
        per_mac: Some(RateLimit {
            burst: 0,
            per_minute: 60,
        }),
        ..DhcpLimits::default()
    };
    assert!(e.engine.set_limits(bad).is_err());
}

#[test]
fn forged_macs_behind_one_relay_port_share_its_budget() {
    let mut e = env(Some((100, 110)));
    e.engine
        .set_limits(DhcpLimits {
            per_port: Some(RateLimit {
                burst: 4,
                per_minute: 60,
            }),
            ..DhcpLimits::default()
        })
        .unwrap();
    let via = |port: &[u8], m| {
        let mut info = relay::RelayAgentInformation::default();
        info.insert(relay::RelayInfo::AgentCircuitId(port.to_vec()));
        let mut r = req(
            MessageType::Discover,
            m,
            vec![DhcpOption::RelayAgentInformation(info)],
        );
        r.set_giaddr(Ipv4Addr::new(10, 9, 0, 254));
        r
    };
    let answered = (0..40)
        .filter(|n| {
            send(
                &mut e.engine,
                &via(b"port7", attacker(*n)),
                Port::Dhcp,
                1000,
            )
            .is_some()
        })
        .count();
    assert_eq!(answered, 4);
    assert!(send(&mut e.engine, &via(b"port8", mac(1)), Port::Dhcp, 1000).is_some());
}

#[test]
fn proxy_learns_addresses_only_from_their_owners() {
    let clients = Arc::new(ClientMap::default());
    let mut e = DhcpEngine::new(
        cfg(None),
        None,
        Arc::new(FixedPlan(BootPlan::Local)),
        clients.clone(),
    )
    .unwrap();
    let claim = |ip: Ipv4Addr, m| {
        let mut q = req(MessageType::Request, m, pxe_opts(7, false));
        q.set_ciaddr(ip);
        q.to_vec().unwrap()
    };
    let real = Ipv4Addr::new(10, 9, 0, 77);
    let src = SocketAddrV4::new(real, 4011);
    assert!(e.handle(&claim(real, mac(1)), src, Port::Pxe, 1).is_some());
    assert_eq!(clients.mac_of(real), Some(mac(1)));
    // Forged: another address in ciaddr than the packet came from.
    for n in 0..100u8 {
        let forged = Ipv4Addr::new(10, 9, 1, n);
        e.handle(&claim(forged, attacker(n.into())), src, Port::Pxe, 1);
        assert_eq!(clients.mac_of(forged), None);
    }
    assert_eq!(clients.len(), 1);
}

#[test]
fn a_flood_writes_a_few_warnings_not_one_per_packet() {
    let mut e = env(Some((100, 101)));
    dora(&mut e.engine, mac(1), 1000);
    dora(&mut e.engine, mac(2), 1000);
    let lines = crate::testing::log_lines(|| {
        for n in 0..2000 {
            let d = req(MessageType::Discover, attacker(n), vec![]);
            assert!(send(&mut e.engine, &d, Port::Dhcp, 1000).is_none());
        }
    });
    let exhausted = lines
        .iter()
        .filter(|l| l.contains("pool exhausted"))
        .count();
    assert!(
        exhausted <= 5,
        "{exhausted} lines for 2000 packets: {lines:#?}"
    );
    // The rest were counted, to be reported once the window ends. (Other tests share the
    // limiter and may have used this window's lines; they only add to the count.)
    let later = std::time::Instant::now() + 2 * crate::lograte::WINDOW;
    let counted: u64 = crate::lograte::WARNINGS
        .take_ended(later)
        .iter()
        .filter(|(k, _)| *k == "DHCP pool exhausted")
        .map(|(_, n)| n)
        .sum();
    assert!(
        exhausted as u64 + counted >= 2000,
        "{exhausted} logged + {counted} counted < 2000"
    );
}

/// A boot provider with a bug: recording a step for one MAC panics.
struct PanicsFor(MacAddr);

impl BootProvider for PanicsFor {
    fn plan(&self, _: MacAddr, _: Option<std::net::Ipv4Addr>) -> BootPlan {
        BootPlan::Local
    }
    fn step(&self, ev: &BootEvent) {
        assert_ne!(ev.mac, Some(self.0), "provider bug");
    }
}

#[tokio::test]
async fn a_packet_that_panics_is_dropped_and_the_service_goes_on() {
    let engine = DhcpEngine::new(
        cfg(None),
        None,
        Arc::new(PanicsFor(mac(1))),
        Arc::new(ClientMap::default()),
    )
    .unwrap();
    let sock = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let server = sock.local_addr().unwrap();
    let (stop, rx) = watch::channel(false);
    let service = tokio::spawn(run(engine, vec![(sock, Port::Pxe)], rx));
    let client = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let ask = |m| {
        let mut q = req(MessageType::Request, m, pxe_opts(7, false));
        q.set_ciaddr(Ipv4Addr::LOCALHOST);
        q.to_vec().unwrap()
    };
    client.send_to(&ask(mac(1)), server).await.unwrap();
    client.send_to(&ask(mac(2)), server).await.unwrap();
    let mut buf = [0u8; 1500];
    let (n, _) = tokio::time::timeout(
        std::time::Duration::from_secs(20),
        client.recv_from(&mut buf),
    )
    .await
    .expect("no reply after a packet that panicked: the DHCP service died with it")
    .unwrap();
    let reply = Message::from_bytes(&buf[..n]).unwrap();
    assert_eq!(MacAddr::from_chaddr(reply.chaddr()), Some(mac(2)));
    assert_eq!(reply.opts().msg_type(), Some(MessageType::Ack));
    stop.send(true).unwrap();
    service.await.unwrap();
}

#[tokio::test]
async fn a_dead_socket_task_stops_the_service_with_an_error() {
    let mut tasks = tokio::task::JoinSet::new();
    let (_stop, mut rx) = watch::channel(false);
    tasks.spawn(async move {
        let _ = rx.wait_for(|v| *v).await;
        Ok(())
    });
    tasks.spawn(async { Err(("DHCP service on 0.0.0.0:67".into(), "socket gone".into())) });
    let e = tokio::time::timeout(std::time::Duration::from_secs(20), supervise(tasks))
        .await
        .expect("supervise waited on the healthy task instead of failing")
        .unwrap_err()
        .to_string();
    assert!(e.contains("0.0.0.0:67") && e.contains("socket gone"), "{e}");
    let mut tasks: tokio::task::JoinSet<SocketTask> = tokio::task::JoinSet::new();
    tasks.spawn(async { panic!("bug outside packet handling") });
    let e = supervise(tasks).await.unwrap_err().to_string();
    assert!(e.contains("panicked"), "{e}");
}

/// A boot provider that keeps every step.
#[derive(Default)]
struct Steps(std::sync::Mutex<Vec<BootEvent>>);

impl BootProvider for Steps {
    fn plan(&self, _: MacAddr, _: Option<std::net::Ipv4Addr>) -> BootPlan {
        BootPlan::Local
    }
    fn step(&self, ev: &BootEvent) {
        self.0.lock().unwrap().push(ev.clone());
    }
}

/// The firmware of `m` (x64 UEFI, or iPXE) takes an address: DISCOVER, REQUEST.
fn pxe_dora(e: &mut DhcpEngine, m: MacAddr, ipxe: bool) -> Ipv4Addr {
    let offer = send(
        e,
        &req(MessageType::Discover, m, pxe_opts(7, ipxe)),
        Port::Dhcp,
        1000,
    )
    .unwrap();
    let ip = offer.msg.yiaddr();
    let mut opts = pxe_opts(7, ipxe);
    opts.push(DhcpOption::RequestedIpAddress(ip));
    opts.push(DhcpOption::ServerIdentifier(SERVER));
    let ack = send(e, &req(MessageType::Request, m, opts), Port::Dhcp, 1000).unwrap();
    assert_eq!(kind(&ack), MessageType::Ack);
    ip
}

#[test]
fn uefi_firmware_asking_again_after_an_unsigned_loader_is_logged_with_the_fix() {
    let dir = tempfile::tempdir().unwrap();
    let steps = Arc::new(Steps::default());
    let clients = Arc::new(ClientMap::default());
    let mut e = DhcpEngine::new(
        cfg(Some((100, 110))),
        Some(shared(LeaseStore::open(&dir.path().join("l.db")).unwrap())),
        steps.clone(),
        clients.clone(),
    )
    .unwrap();
    let notes = |m: MacAddr| -> Vec<String> {
        let s = steps.0.lock().unwrap();
        s.iter()
            .filter(|ev| ev.step == "secure-boot" && ev.mac == Some(m))
            .map(|ev| ev.detail.clone())
            .collect()
    };
    // Refused: iPXE sent whole over TFTP, then the firmware is back (its next boot option).
    let ip = pxe_dora(&mut e, mac(1), false);
    clients.fetched(ip, "ipxe.efi", crate::pe::PeSignature::Unsigned);
    pxe_dora(&mut e, mac(1), false);
    let n = notes(mac(1));
    assert_eq!(n.len(), 1, "{n:?}");
    assert!(
        n[0].contains("client 02:00:00:00:00:01 fetched ipxe.efi")
            && n[0].contains("uefi_secure_boot = true"),
        "{}",
        n[0]
    );
    // Ran: iPXE asks for its script as itself; a later firmware boot is not a refusal.
    let ip = pxe_dora(&mut e, mac(2), false);
    clients.fetched(ip, "ipxe.efi", crate::pe::PeSignature::Unsigned);
    pxe_dora(&mut e, mac(2), true);
    pxe_dora(&mut e, mac(2), false);
    assert_eq!(notes(mac(2)), Vec::<String>::new());
    // Signed: shim was fetched; whatever the firmware does next is not this.
    let ip = pxe_dora(&mut e, mac(3), false);
    clients.fetched(ip, "shimx64.efi", crate::pe::PeSignature::Signed);
    pxe_dora(&mut e, mac(3), false);
    assert_eq!(notes(mac(3)), Vec::<String>::new());
}
