//! Any bytes into the DHCP parser and a full server engine (pool + proxy): no panic, and
//! a reply, if any, encodes to at least the BOOTP minimum.
#![no_main]

use std::net::{Ipv4Addr, SocketAddrV4};
use std::sync::{Arc, Mutex, OnceLock};

use ignite_netboot::boot::{BootFiles, BootPlan, ClientMap, FixedPlan};
use ignite_netboot::dhcp::{encode_reply, parse_request, shared, DhcpConfig, DhcpEngine, Port};
use ignite_netboot::leases::LeaseStore;
use libfuzzer_sys::fuzz_target;

fn engine(dir: &tempfile::TempDir, pool: bool) -> DhcpEngine {
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
    let leases = pool.then(|| shared(LeaseStore::open(&dir.path().join("l.db")).unwrap()));
    DhcpEngine::new(cfg, leases, Arc::new(FixedPlan(BootPlan::Local)), Arc::new(ClientMap::default())).unwrap()
}

/// Both engines live for the whole run (state accumulates); the directory is kept with them
/// so it is removed at exit rather than leaked.
static ENGINES: OnceLock<Mutex<(DhcpEngine, DhcpEngine, tempfile::TempDir)>> = OnceLock::new();

fuzz_target!(|data: &[u8]| {
    let _ = parse_request(data);
    let e = ENGINES.get_or_init(|| {
        let dir = tempfile::tempdir().unwrap();
        Mutex::new((engine(&dir, true), engine(&dir, false), dir))
    });
    let mut e = e.lock().unwrap();
    let src = SocketAddrV4::new(Ipv4Addr::new(10, 0, 0, 99), 68);
    for (is_proxy, port) in [(false, Port::Dhcp), (true, Port::Dhcp), (true, Port::Pxe)] {
        let eng = if is_proxy { &mut e.1 } else { &mut e.0 };
        if let Some(r) = eng.handle(data, src, port, 1000) {
            assert!(encode_reply(&r.msg).len() >= 300);
        }
    }
});
