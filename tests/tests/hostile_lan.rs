//! Issue 18's end-to-end proof: a hostile client on the boot network attacks `ignite server`
//! while a real guest (QEMU, SeaBIOS + iPXE) network-installs from it. The attacker has a
//! DHCP lease of its own and tries to steal the guest's install token (its iPXE script over
//! HTTP, its TFTP files), boots made-up MACs under a default install action, calls the admin
//! API, sends a huge chunk batch, holds slow (slowloris) connections, and floods DHCP with
//! DISCOVERs from spoofed MACs. The install must finish and the attacker hold nothing.
//! Meanwhile the sysadmin follows it in the web console (headless Chromium on the server
//! host): the client's progress bar advances to done, and a boot action set in the page is
//! what the server then serves that MAC's next PXE boot.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream, UdpSocket};
use std::process::Command;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use ignite_e2e::browser::{self, Browser};
use ignite_e2e::lab::in_netns;
use ignite_e2e::site::*;
use ignite_e2e::*;

const SERVER: &str = "http://10.77.0.1:8080";
/// The attacker's two machines: one for most attacks, one for slow connections (which
/// would otherwise take the first one's own connection slots).
const ATTACKER_MAC: &str = "52:54:00:66:00:01";
const SLOW_MAC: &str = "52:54:00:66:00:02";
/// The server's default `[limits]`.
const PER_ADDRESS: usize = 64;
const HEADER_TIMEOUT: Duration = Duration::from_secs(20);
/// DISCOVERs a second from spoofed MACs while the guest boots: below what the default pool
/// (100 addresses, unrequested offers reused after 2 s) recycles, 50 a second, so a new
/// client still gets an address. Faster floods starve clients without a lease (README,
/// "Security model"); `a_dhcp_flood_takes_no_address_from_a_leased_client` floods at
/// `FLOOD_HARD`.
const FLOOD: u32 = 40;
const FLOOD_HARD: u32 = 300;

/// What the attacker saw, for the failure messages.
#[derive(Default)]
struct Seen {
    lines: Mutex<Vec<String>>,
}

impl Seen {
    fn note(&self, line: String) {
        self.lines.lock().unwrap().push(line);
    }

    fn text(&self) -> String {
        self.lines.lock().unwrap().join("\n")
    }
}

/// curl from the attacker's namespace: HTTP status and body.
fn curl(ns: &str, args: &[&str]) -> (String, String) {
    let o = Lab::cmd(ns, "curl")
        .args(["-s", "-m", "20", "-w", "\n%{http_code}"])
        .args(args)
        .output()
        .unwrap();
    let out = String::from_utf8_lossy(&o.stdout).into_owned();
    let (body, code) = out.rsplit_once('\n').unwrap_or(("", &out));
    (code.to_string(), body.to_string())
}

/// One round of everything that needs no special socket: token theft over HTTP and TFTP,
/// made-up MACs, the admin API, the install API with a guessed token, a huge chunk batch.
fn round(ns: &str, victim: &str, junk: &std::path::Path, seen: &Seen, n: u64) {
    let dashed = victim.replace(':', "-");
    for url in [
        format!("{SERVER}/ipxe/{dashed}"),
        format!("tftp://10.77.0.1/ipxe/{dashed}"),
        format!("tftp://10.77.0.1/pxelinux.cfg/01-{dashed}"),
    ] {
        let (code, body) = curl(ns, &[&url]);
        seen.note(format!("steal {url} -> {code} {body:?}"));
    }
    // Made-up MACs: the default action is install, so each would be an install.
    for i in 0..20u64 {
        let x = rand_u64() ^ (n << 8) ^ i;
        let mac = format!(
            "02-{:02x}-{:02x}-{:02x}-{:02x}-{:02x}",
            x as u8,
            (x >> 8) as u8,
            (x >> 16) as u8,
            (x >> 24) as u8,
            (x >> 32) as u8
        );
        let (code, body) = curl(ns, &[&format!("{SERVER}/ipxe/{mac}")]);
        seen.note(format!("made-up {mac} -> {code} {body:?}"));
    }
    for (what, args) in [
        ("admin list", vec![format!("{SERVER}/api/clients")]),
        ("admin stats", vec![format!("{SERVER}/api/stats")]),
        (
            "admin installed",
            vec![
                "-X".into(),
                "POST".into(),
                format!("{SERVER}/api/clients/{victim}/installed"),
            ],
        ),
        (
            "install plan",
            vec![
                "-H".into(),
                "Authorization: Bearer 00112233445566778899aabbccddeeff".into(),
                "--data".into(),
                "{}".into(),
                format!("{SERVER}/api/install/{victim}/plan"),
            ],
        ),
        (
            "chunk batch",
            vec![
                "-H".into(),
                "Authorization: Bearer 00112233445566778899aabbccddeeff".into(),
                "--data-binary".into(),
                format!("@{}", junk.display()),
                format!("{SERVER}/api/install/{victim}/chunks"),
            ],
        ),
    ] {
        let a: Vec<&str> = args.iter().map(String::as_str).collect();
        let (code, body) = curl(ns, &a);
        seen.note(format!("{what} -> {code} {body:?}"));
    }
}

/// Waves of half-sent requests, one header byte a second, until `stop`; returns the longest
/// any connection lived and the most that were still open two seconds into a wave or later
/// (the server closes those over its per-address limit as soon as it accepts them).
fn slowloris(stop: Arc<AtomicBool>, seen: Arc<Seen>) -> (Duration, usize) {
    let addr: SocketAddr = "10.77.0.1:8080".parse().unwrap();
    let (mut longest, mut most) = (Duration::ZERO, 0);
    while !stop.load(Ordering::Relaxed) {
        let t = Instant::now();
        let mut open: Vec<(TcpStream, Instant)> = Vec::new();
        for _ in 0..150 {
            if let Ok(mut s) = TcpStream::connect_timeout(&addr, Duration::from_secs(5)) {
                let _ = s.write_all(b"GET /ipxe/52-54-00-78-00-01 HTTP/1.1\r\nHost: a\r\n");
                s.set_nonblocking(true).unwrap();
                open.push((s, Instant::now()));
            }
        }
        let mut served = 0;
        while !open.is_empty() && t.elapsed() < Duration::from_secs(120) {
            std::thread::sleep(Duration::from_secs(1));
            open.retain_mut(|(s, since)| {
                let mut buf = [0u8; 512];
                let closed = match s.read(&mut buf) {
                    Ok(0) => true,
                    Ok(_) => {
                        served += 1;
                        true
                    }
                    Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                        s.write_all(b"X").is_err()
                    }
                    Err(_) => true,
                };
                if closed {
                    longest = longest.max(since.elapsed());
                }
                !closed
            });
            if t.elapsed() >= Duration::from_secs(2) {
                most = most.max(open.len());
            }
        }
        // Whatever is still open after two minutes counts as living that long.
        for (_, since) in &open {
            longest = longest.max(since.elapsed());
        }
        seen.note(format!(
            "slowloris wave: {} connections still open after {:?}, {served} answered",
            open.len(),
            t.elapsed()
        ));
    }
    (longest, most)
}

/// A DHCPDISCOVER from `mac` that looks like a BIOS PXE client.
fn discover(mac: [u8; 6], xid: u32) -> Vec<u8> {
    let mut p = vec![0u8; 236];
    p[0] = 1; // BOOTREQUEST
    p[1] = 1; // Ethernet
    p[2] = 6;
    p[4..8].copy_from_slice(&xid.to_be_bytes());
    p[10] = 0x80; // broadcast
    p[28..34].copy_from_slice(&mac);
    p.extend([99, 130, 83, 99, 53, 1, 1]);
    let class = b"PXEClient:Arch:00000:UNDI:002001";
    p.extend([60, class.len() as u8]);
    p.extend_from_slice(class);
    p.extend([93, 2, 0, 0, 94, 3, 1, 2, 1, 255]);
    p
}

/// DISCOVERs from a new spoofed MAC each, `rate` a second (it may change), until `stop`;
/// how many.
fn dhcp_flood(stop: Arc<AtomicBool>, rate: Arc<AtomicU32>) -> u64 {
    let sock = UdpSocket::bind("0.0.0.0:68").expect("bind port 68 in the attacker's namespace");
    sock.set_broadcast(true).unwrap();
    let dev = b"c0\0";
    // SAFETY: setsockopt with a NUL-terminated interface name of the given length.
    let r = unsafe {
        libc::setsockopt(
            std::os::fd::AsRawFd::as_raw_fd(&sock),
            libc::SOL_SOCKET,
            libc::SO_BINDTODEVICE,
            dev.as_ptr().cast(),
            dev.len() as libc::socklen_t,
        )
    };
    assert_eq!(r, 0, "SO_BINDTODEVICE: {}", std::io::Error::last_os_error());
    let mut sent = 0u64;
    let seed = rand_u64();
    while !stop.load(Ordering::Relaxed) {
        for _ in 0..rate.load(Ordering::Relaxed) / 10 {
            let x = seed.wrapping_add(sent.wrapping_mul(0x9e37_79b9_7f4a_7c15));
            let b = x.to_le_bytes();
            let mac = [0x02, b[1], b[2], b[3], b[4], b[5]];
            if sock
                .send_to(&discover(mac, x as u32), "255.255.255.255:67")
                .is_ok()
            {
                sent += 1;
            }
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    sent
}

fn install_status(site: &Site) -> serde_json::Value {
    serde_json::from_str(&site.ignite(&["client", "show", "g1", "--json"])).unwrap()
}

fn tail(text: &str, n: usize) -> String {
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

#[test]
fn a_hostile_client_steals_nothing_while_a_guest_installs() {
    let mut need = vec![
        "qemu-system-x86_64",
        "ip",
        "apt-get",
        "debootstrap",
        "curl",
        "udhcpc",
    ];
    need.extend(browser::prerequisites());
    if !require_tools(&need) {
        return;
    }
    let site = Site::new(&[("lab", profile(&[]))]);
    let mut lab = Lab::new("hostile");
    let server = site.server(&lab, "");
    // Unknown machines would install: made-up MACs are each a would-be install.
    site.ignite(&["client", "default", "install", "lab"]);
    let attacker = lab.add_client_with_mac(60, ATTACKER_MAC);
    let attacker_ip = Lab::lease(&attacker);
    let slow_ns = lab.add_client_with_mac(61, SLOW_MAC);
    Lab::lease(&slow_ns);
    let junk = site.tmp.path().join("junk.bin");
    std::fs::write(&junk, [7u8; 32].repeat(1024)).unwrap();

    let victim = "52:54:00:78:00:01";
    site.client(victim, "g1", "lab");
    let seen = Arc::new(Seen::default());
    let stop = Arc::new(AtomicBool::new(false));
    let stop_flood = Arc::new(AtomicBool::new(false));
    // The flood is on before the guest's firmware asks for its first address.
    let rate = Arc::new(AtomicU32::new(FLOOD));
    let flood = {
        let (s, r) = (stop_flood.clone(), rate.clone());
        in_netns(&attacker, move || dhcp_flood(s, r))
    };
    std::thread::sleep(Duration::from_secs(3));
    let mut guest = Guest::start(&lab, site.tmp.path(), 1, Firmware::Bios, 4 << 30, 1);
    let t = Instant::now();
    // The sysadmin's browser on the server host follows the install in the web console.
    let console = {
        let token = std::fs::read_to_string(site.state.join("admin.token")).unwrap();
        let (ns, stop) = (lab.ns.clone(), stop.clone());
        std::thread::spawn(move || {
            let b = Browser::start(&ns);
            browser::log_in(&b, SERVER, token.trim());
            // Given up 30 s after the test stopped without the page showing done.
            let mut stopped: Option<Instant> = None;
            let seen = browser::watch_install(&b, victim, Duration::from_secs(1300), || {
                if stop.load(Ordering::Relaxed) {
                    let since = *stopped.get_or_insert_with(Instant::now);
                    return (since.elapsed() > Duration::from_secs(30))
                        .then(|| "the test stopped".to_string());
                }
                None
            });
            (b, seen)
        })
    };
    let slow = {
        let (s, seen) = (stop.clone(), seen.clone());
        in_netns(&slow_ns, move || slowloris(s, seen))
    };
    let thief = {
        let (s, seen, ns, junk) = (stop.clone(), seen.clone(), attacker.clone(), junk.clone());
        let victim = victim.to_string();
        std::thread::spawn(move || {
            let mut n = 0;
            while !s.load(Ordering::Relaxed) {
                round(&ns, &victim, &junk, &seen, n);
                n += 1;
                std::thread::sleep(Duration::from_secs(2));
            }
        })
    };

    let report = |why: &str, guest: &Guest| -> String {
        format!(
            "{why} after {:?}\n--- what the attacker saw (last 60):\n{}\n--- server log (last 80):\n{}\n--- guest console (last 40):\n{}\n--- clients:\n{}",
            t.elapsed(),
            tail(&seen.text(), 60),
            tail(&server.log_text(), 80),
            tail(&strip_ansi(&guest.console()), 40),
            site.ignite(&["client", "list"])
        )
    };
    let limit = Duration::from_secs(1200);
    loop {
        let v = install_status(&site);
        if v["install"]["status"] == "done" {
            break;
        }
        // The flood runs while the guest boots and until its agent has leased an address.
        if v["phases"].as_array().is_some_and(|p| !p.is_empty()) {
            stop_flood.store(true, Ordering::Relaxed);
        }
        if v["install"]["status"] == "failed" || guest.exited() || t.elapsed() > limit {
            stop.store(true, Ordering::Relaxed);
            stop_flood.store(true, Ordering::Relaxed);
            panic!("{}", report("the install did not finish", &guest));
        }
        std::thread::sleep(Duration::from_secs(2));
    }
    eprintln!("installed under attack in {:?}", t.elapsed());
    stop.store(true, Ordering::Relaxed);
    stop_flood.store(true, Ordering::Relaxed);
    let discovers = flood.join().unwrap();
    let (b, shown) = console.join().unwrap();
    let (longest, most) = slow.join().unwrap();
    thief.join().unwrap();
    let seen_text = seen.text();
    eprintln!(
        "attacker {attacker_ip}: {discovers} spoofed DISCOVERs, slow connections open at most {most} at once, the longest {longest:?}, {} requests",
        seen_text.lines().count()
    );

    // The guest's real token, from its kernel command line: the attacker never saw it.
    let console = strip_ansi(&guest.console());
    let token = console
        .split("ignite.token=")
        .nth(1)
        .and_then(|r| r.split_whitespace().next())
        .unwrap_or_else(|| panic!("{}", report("no token on the guest's kernel line", &guest)))
        .to_string();
    let fail = |why: String| panic!("{}", report(&why, &guest));
    if seen_text.contains(&token) || seen_text.contains("ignite.token=") {
        fail("the attacker got a token".into());
    }
    for l in seen_text.lines() {
        let ok = if l.starts_with("steal ") {
            // The plan (install, then local once installed), without the token.
            l.contains("ignite.action=install") || l.contains("exit 1") || l.contains("LOCALBOOT")
        } else if l.starts_with("made-up ") {
            l.contains("exit") && !l.contains("kernel")
        } else if l.starts_with("admin ") {
            l.contains(" -> 401 ")
        } else if l.starts_with("install plan") || l.starts_with("chunk batch") {
            l.contains(" -> 403 ")
        } else {
            l.starts_with("slowloris wave: 0 connections still open") && l.ends_with(" 0 answered")
        };
        if !ok {
            fail(format!("the attacker got more than it should: {l}"));
        }
    }
    if longest > HEADER_TIMEOUT + Duration::from_secs(20) || most > PER_ADDRESS + 150 {
        fail(format!(
            "slow connections lived {longest:?} ({most} open at once)"
        ));
    }
    if discovers < 500 {
        fail(format!("the flood sent only {discovers} DISCOVERs"));
    }
    // The registry holds the guest alone, installed; no made-up MAC left an install.
    let v = install_status(&site);
    assert_eq!(v["client"]["action"], "local", "{v}");
    let list: serde_json::Value =
        serde_json::from_str(&site.ignite(&["client", "list", "--json"])).unwrap();
    let macs: Vec<&str> = list
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["mac"].as_str().unwrap())
        .collect();
    if macs != [victim] {
        fail(format!("the registry changed: {macs:?}"));
    }
    // The flood took no addresses: only the guest and the attacker's two machines hold
    // leases.
    let leases: serde_json::Value =
        serde_json::from_str(&site.ignite(&["netboot", "leases", "--json"])).unwrap();
    let n = leases.as_array().map_or(0, |l| l.len());
    if n > 3 {
        fail(format!("{n} leases after the flood: {leases}"));
    }
    // The server is still up and answering.
    let (code, _) = curl(
        &attacker,
        &[&format!("{SERVER}/ipxe/{}", victim.replace(':', "-"))],
    );
    if code != "200" {
        fail(format!("the server answers {code} after the attack"));
    }

    // The console showed the install's phases and its progress bar advancing to done.
    eprintln!("the console showed: {shown:?}");
    let extracting: Vec<f64> = shown
        .iter()
        .filter(|(text, _)| text.starts_with("extracting"))
        .map(|s| s.1)
        .collect();
    if !extracting.windows(2).any(|w| w[1] > w[0]) {
        fail(format!(
            "the progress bar never advanced while extracting: {shown:?}"
        ));
    }
    if shown.windows(2).any(|w| w[1].1 < w[0].1) {
        fail(format!("the progress bar went back: {shown:?}"));
    }
    if shown.last() != Some(&("done".to_string(), 1.0)) {
        fail(format!("the console did not end at done: {shown:?}"));
    }
    // A boot action set in the page is what that MAC's next PXE boot is served.
    let script = || {
        run(Lab::cmd(&lab.ns, "curl")
            .args(["-s", &format!("{SERVER}/ipxe/{}", victim.replace(':', "-"))]))
    };
    let before = script();
    browser::set_action(&b, victim, "install", "lab");
    let after = script();
    if before.contains("ignite.action=install") || !after.contains("ignite.action=install") {
        fail(format!(
            "the action set in the console is not served: before {before:?}, after {after:?}"
        ));
    }
    b.screenshot("clients-reinstall");
}

/// A flood of DISCOVERs from spoofed MACs at `FLOOD_HARD` a second, faster than the pool
/// recycles unrequested offers: a client that holds a lease still gets its address at once
/// (the agent's own DHCP client, as after a reboot), the flood takes no lease, and the
/// server keeps answering.
#[test]
fn a_dhcp_flood_takes_no_address_from_a_leased_client() {
    if !require_tools(&["ip", "udhcpc"]) {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let boot = tmp.path().join("boot");
    std::fs::create_dir_all(&boot).unwrap();
    let state = tmp.path().join("state");
    let mut lab = Lab::new("flood");
    let client = lab.add_client(1);
    let attacker = lab.add_client_with_mac(2, ATTACKER_MAC);
    let server = Server::start(&lab, &state, &boot, &[]);
    let ip = Lab::lease(&client);
    let stop = Arc::new(AtomicBool::new(false));
    let flood = {
        let (s, r) = (stop.clone(), Arc::new(AtomicU32::new(FLOOD_HARD)));
        in_netns(&attacker, move || dhcp_flood(s, r))
    };
    // Let the flood fill the pool with offers first.
    std::thread::sleep(Duration::from_secs(3));
    let t = Instant::now();
    let out = Lab::cmd(&client, ignite_bin())
        .args(["agent", "dhcp", "--iface", "c0", "--timeout-secs", "30"])
        .output()
        .unwrap();
    let took = t.elapsed();
    std::thread::sleep(Duration::from_secs(2));
    stop.store(true, Ordering::Relaxed);
    let sent = flood.join().unwrap();
    let text =
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    let leases = run(Command::new(ignite_bin())
        .args(["netboot", "leases", "--json", "--state-dir"])
        .arg(&state));
    let report = || {
        format!("{sent} DISCOVERs; agent after {took:?}: {text}\n--- leases: {leases}\n--- server log:\n{}", tail(&server.log_text(), 40))
    };
    assert!(
        out.status.success() && text.contains(&format!("c0: {ip} ")),
        "{}",
        report()
    );
    assert!(sent > 1000, "{}", report());
    let n = serde_json::from_str::<serde_json::Value>(&leases)
        .unwrap()
        .as_array()
        .map_or(0, |l| l.len());
    assert_eq!(n, 1, "{}", report());
    let code = run(Lab::cmd(&client, "curl").args([
        "-s",
        "-o",
        "/dev/null",
        "-w",
        "%{http_code}",
        &format!("{SERVER}/ipxe/52-54-00-77-00-01"),
    ]));
    assert_eq!(code, "200", "{}", report());
}
