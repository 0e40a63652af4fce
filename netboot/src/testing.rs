//! Packet builders and engines shared by the unit tests, `tests/`, and the fuzz targets
//! (`netboot/fuzz`, which enables the `testing` feature), so each property and each
//! packet shape is written once.

use std::net::{Ipv4Addr, SocketAddrV4};
use std::sync::Arc;

use dhcproto::v4::{Architecture, DhcpOption, Message, MessageType, OptionCode};
use dhcproto::Encodable;

use crate::boot::{BootFiles, BootPlan, ClientMap, FixedPlan};
use crate::dhcp::{
    encode_reply, shared, DhcpConfig, DhcpEngine, DhcpLimits, Port, RateLimit, MIN_REPLY_LEN,
};
use crate::leases::LeaseStore;
use crate::tftp::{encode_rrq, parse, Packet};
use crate::MacAddr;

/// A client request of `kind` from `mac` with `opts` (message type first).
pub fn request(kind: MessageType, mac: MacAddr, opts: Vec<DhcpOption>) -> Message {
    let u = Ipv4Addr::UNSPECIFIED;
    let mut msg = Message::new(u, u, u, u, &mac.0);
    msg.opts_mut().insert(DhcpOption::MessageType(kind));
    for o in opts {
        msg.opts_mut().insert(o);
    }
    msg
}

/// What PXE firmware of architecture `arch` (option 93) sends; `ipxe` adds user class iPXE.
pub fn pxe_options(arch: u16, ipxe: bool) -> Vec<DhcpOption> {
    let mut v = vec![
        DhcpOption::ClassIdentifier(format!("PXEClient:Arch:{arch:05}:UNDI:002001").into_bytes()),
        DhcpOption::ClientSystemArchitecture(Architecture::from(arch)),
        DhcpOption::ClientNetworkInterface(1, 2, 1),
        DhcpOption::ClientMachineIdentifier((0..17).collect()),
        DhcpOption::ParameterRequestList(vec![
            OptionCode::from(66),
            OptionCode::from(67),
            OptionCode::from(43),
        ]),
    ];
    if ipxe {
        v.push(DhcpOption::UserClass(b"iPXE".to_vec()));
    }
    v
}

/// A valid x64 UEFI PXE DISCOVER (even `n`) or REQUEST (odd `n`) from MAC `02:..:n`, as
/// bytes: the seed that fuzzers and randomized tests mutate, so mutations reach deep into
/// option parsing.
pub fn pxe_seed(n: u8) -> Vec<u8> {
    let kind = if n.is_multiple_of(2) {
        MessageType::Discover
    } else {
        MessageType::Request
    };
    let mut opts = pxe_options(7, false);
    opts.push(DhcpOption::RequestedIpAddress(Ipv4Addr::new(10, 0, 0, 12)));
    let msg = request(kind, MacAddr([2, 0, 0, 0, 0, n]), opts);
    msg.to_vec().expect("a request we built encodes")
}

/// Server 10.0.0.1/24; with `pool`, addresses 10.0.0.10-20, else proxy mode.
pub fn config(pool: bool) -> DhcpConfig {
    DhcpConfig {
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
    }
}

/// A full DHCP engine and a proxyDHCP engine that live as long as a test or fuzz run, so
/// state (leases, offers) accumulates as it would in a server under attack.
pub struct Engines {
    pub full: DhcpEngine,
    pub proxy: DhcpEngine,
    /// Holds the lease database; removed when the engines go.
    _dir: tempfile::TempDir,
}

impl Engines {
    pub fn new() -> Engines {
        let dir = tempfile::tempdir().expect("temporary directory");
        let leases = shared(LeaseStore::open(&dir.path().join("l.db")).expect("lease database"));
        // Rate limits that never bite, so mutated packets from one MAC still reach the
        // protocol code while the limiter's own parsing runs on every packet.
        let unlimited = RateLimit {
            burst: u32::MAX,
            per_minute: 60,
        };
        let make = |pool: bool, leases| {
            let mut e = DhcpEngine::new(
                config(pool),
                leases,
                Arc::new(FixedPlan(BootPlan::Local)),
                Arc::new(ClientMap::default()),
            )
            .expect("valid test configuration");
            e.set_limits(DhcpLimits {
                per_mac: Some(unlimited),
                per_port: Some(unlimited),
                ..DhcpLimits::default()
            })
            .expect("valid limits");
            e
        };
        Engines {
            full: make(true, Some(leases)),
            proxy: make(false, None),
            _dir: dir,
        }
    }

    /// Feeds `packet` to both engines on every port they listen on. Whatever the bytes,
    /// nothing may panic and every reply must encode to at least the BOOTP minimum.
    pub fn check(&mut self, packet: &[u8]) -> Result<(), String> {
        let src = SocketAddrV4::new(Ipv4Addr::new(10, 0, 0, 99), 68);
        for (is_proxy, port) in [(false, Port::Dhcp), (true, Port::Dhcp), (true, Port::Pxe)] {
            let e = if is_proxy {
                &mut self.proxy
            } else {
                &mut self.full
            };
            if let Some(r) = e.handle(packet, src, port, 1000) {
                let n = encode_reply(&r.msg).len();
                if n < MIN_REPLY_LEN {
                    return Err(format!("reply of {n} bytes to {packet:02x?}"));
                }
            }
        }
        Ok(())
    }
}

impl Default for Engines {
    fn default() -> Self {
        Engines::new()
    }
}

/// Any bytes into the TFTP parser: no panic, and a parsed read request encodes back to a
/// packet that parses to the same request.
pub fn check_tftp_round_trip(data: &[u8]) -> Result<(), String> {
    if let Ok(Packet::Read(r)) = parse(data) {
        let opts: Vec<(&str, &str)> = r
            .options
            .iter()
            .map(|(a, b)| (a.as_str(), b.as_str()))
            .collect();
        let again = parse(&encode_rrq(&r.filename, &r.mode, &opts));
        if again != Ok(Packet::Read(r.clone())) {
            return Err(format!("{r:?} came back as {again:?}"));
        }
    }
    Ok(())
}

/// `len` bytes of text with LF and lone CR line ends, the bytes netascii rewrites.
pub fn text_with_line_ends(len: usize) -> Vec<u8> {
    (0..len)
        .map(|i| match i % 61 {
            0 => b'\n',
            30 => b'\r',
            n => b'a' + (n % 26) as u8,
        })
        .collect()
}

/// Any bytes as a `Range` header value: no panic, and a range that is kept is in the
/// canonical form, which parses back to itself.
pub fn check_range_header(data: &[u8]) -> Result<(), String> {
    let value = String::from_utf8_lossy(data);
    if let Some(c) = crate::http::single_byte_range(&value) {
        let again = crate::http::single_byte_range(&c);
        if again.as_deref() != Some(c.as_str()) {
            return Err(format!("{value:?} -> {c:?} -> {again:?}"));
        }
    }
    Ok(())
}

/// The log lines (INFO and up) `f` writes on this thread.
#[cfg(test)]
pub(crate) fn log_lines(f: impl FnOnce()) -> Vec<String> {
    use std::sync::Mutex;
    #[derive(Clone, Default)]
    struct Sink(Arc<Mutex<Vec<u8>>>);
    impl std::io::Write for Sink {
        fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(b);
            Ok(b.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }
    let sink = Sink::default();
    let writer = sink.clone();
    let subscriber = tracing_subscriber::fmt()
        .with_writer(move || writer.clone())
        .with_ansi(false)
        .with_max_level(tracing::Level::INFO)
        .finish();
    tracing::subscriber::with_default(subscriber, f);
    let bytes = sink.0.lock().unwrap().clone();
    String::from_utf8_lossy(&bytes)
        .lines()
        .map(str::to_string)
        .collect()
}
