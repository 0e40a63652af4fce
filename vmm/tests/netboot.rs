//! The monitor's network boot firmware against dnsmasq (its own DHCP and TFTP) in a network
//! namespace: the boot file is a guest test program, or an iPXE script naming one and an
//! initrd; a missing server or file ends with a clear error in bounded time.

mod common;

use ignite_vmm::netns::Netns;
use ignite_vmm::{KernelImage, NetBackend, NetConfig, SerialTarget, SharedBuffer, Vm, VmConfig};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

const MAC: [u8; 6] = [0x52, 0x54, 0x00, 0x4e, 0x42, 0x01];
const MAC_STR: &str = "52:54:00:4e:42:01";

fn prerequisites() -> bool {
    common::kvm()
        && common::root()
        && common::require(
            "dnsmasq and python3 (scripts/deps/vmm.apt)",
            ["dnsmasq", "python3"]
                .iter()
                .try_for_each(|p| Command::new(p).arg("--version").output().map(|_| ()))
                .map_err(|e| e.to_string()),
        )
}

/// A namespace with bridge `nbbr0` at 10.79.0.1/24.
fn lab(tag: &str) -> Netns {
    let ns = Netns::new(tag).unwrap();
    ns.ip(&[
        "link",
        "add",
        "nbbr0",
        "type",
        "bridge",
        "forward_delay",
        "0",
    ])
    .unwrap();
    ns.ip(&["addr", "add", "10.79.0.1/24", "dev", "nbbr0"])
        .unwrap();
    ns.ip(&["link", "set", "nbbr0", "up"]).unwrap();
    ns
}

/// A server process in the namespace, killed on drop.
struct Daemon(Child);

impl Daemon {
    /// dnsmasq with DHCP and TFTP on the bridge.
    fn dnsmasq(ns: &Netns, tftp_root: &Path, extra: &[&str]) -> Daemon {
        let child = Command::new("ip")
            .args(["netns", "exec", ns.name(), "dnsmasq", "--no-daemon"])
            .args(["--conf-file=/dev/null", "--port=0", "--bind-interfaces"])
            .args([
                "--interface=nbbr0",
                "--dhcp-range=10.79.0.100,10.79.0.150,1h",
            ])
            .args(["--enable-tftp", "--log-dhcp", "--pid-file="])
            .arg(format!("--tftp-root={}", tftp_root.display()))
            .args(extra)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start dnsmasq");
        // dnsmasq binds before it serves; give it a moment.
        std::thread::sleep(Duration::from_millis(300));
        Daemon(child)
    }

    /// Python's HTTP/1.1 server on 10.79.0.1:8000 serving `root` with chunked bodies, and
    /// `/start` redirecting to `/b/boot.ipxe`.
    fn http(ns: &Netns, root: &Path) -> Daemon {
        let child = Command::new("ip")
            .args(["netns", "exec", ns.name(), "python3", "-c", HTTP_SERVER])
            .arg(root)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start python3");
        // Serving once it accepts a connection (a loaded machine starts python slowly).
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let up = ns
                .run(|| {
                    let addr = std::net::SocketAddr::from(([10, 79, 0, 1], 8000));
                    std::net::TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_ok()
                })
                .unwrap();
            if up {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "the HTTP server did not start within 30 s"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        Daemon(child)
    }
}

const HTTP_SERVER: &str = r#"
import http.server, os, sys
root = sys.argv[1]
class H(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    def do_GET(self):
        if self.path == "/start":
            self.send_response(302)
            self.send_header("Location", "/b/boot.ipxe")
            self.send_header("Content-Length", "0")
            self.end_headers()
            return
        p = os.path.join(root, self.path.lstrip("/"))
        if not os.path.isfile(p):
            self.send_error(404)
            return
        d = open(p, "rb").read()
        self.send_response(200)
        self.send_header("Transfer-Encoding", "chunked")
        self.end_headers()
        for i in range(0, len(d), 1000):
            c = d[i:i + 1000]
            self.wfile.write(b"%x\r\n" % len(c) + c + b"\r\n")
        self.wfile.write(b"0\r\n\r\n")
http.server.ThreadingHTTPServer(("10.79.0.1", 8000), H).serve_forever()
"#;

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Netboots a VM on the bridge; returns how Vm::new ended (error text) or the console text.
fn netboot(ns: &Netns, cmdline: &str) -> (Result<String, String>, Duration) {
    netboot_with_ram(ns, cmdline, 128 << 20)
}

fn netboot_with_ram(ns: &Netns, cmdline: &str, ram: u64) -> (Result<String, String>, Duration) {
    let cmdline = cmdline.to_owned();
    ns.run(move || {
        let buf = SharedBuffer::default();
        let mut cfg = VmConfig::new(KernelImage::Net);
        cfg.cmdline = cmdline;
        cfg.mem_bytes = ram;
        cfg.nets = vec![NetConfig {
            backend: NetBackend::Bridge("nbbr0".into()),
            mac: MAC,
        }];
        cfg.serial = SerialTarget::Buffer(buf.clone());
        let t = Instant::now();
        let r = Vm::new(&cfg).map_err(|e| e.to_string()).and_then(|vm| {
            let out = vm
                .run(Some(Duration::from_secs(30)))
                .map_err(|e| e.to_string())?;
            let text = buf.contents().replace('\r', "");
            if out.reason != ignite_vmm::StopReason::TestExit(0) {
                return Err(format!("{} — console:\n{text}", out.reason));
            }
            Ok(text)
        });
        (r, t.elapsed())
    })
    .unwrap()
}

/// `b/k.elf` (the netbooted program) and `b/initrd.img` of `len` bytes under `root`;
/// returns the initrd.
fn boot_files(root: &Path, len: u32) -> Vec<u8> {
    std::fs::create_dir(root.join("b")).unwrap();
    std::fs::write(root.join("b/k.elf"), guest("netbooted")).unwrap();
    let initrd: Vec<u8> = (0..len).map(|i| (i * 7 + i / 251) as u8).collect();
    std::fs::write(root.join("b/initrd.img"), &initrd).unwrap();
    initrd
}

fn guest(name: &str) -> &'static [u8] {
    ignite_vmm::guest::program(name).unwrap()
}

#[test]
fn dnsmasq_tftp_boot_file_is_the_kernel() {
    if !prerequisites() {
        return;
    }
    let dir = common::tempdir();
    std::fs::write(dir.as_path().join("netbooted.elf"), guest("netbooted")).unwrap();
    let ns = lab("nbk");
    let _d = Daemon::dnsmasq(&ns, dir.as_path(), &["--dhcp-boot=netbooted.elf"]);
    let (r, t) = netboot(&ns, "from=dnsmasq-direct");
    let text = r.unwrap();
    eprintln!("netboot took {t:?}\n{text}");
    assert!(text.contains("DHCP: ACK 10.79.0."), "{text}");
    assert!(text.contains("tftp://10.79.0.1/netbooted.elf ok"), "{text}");
    assert!(text.contains("cmdline: from=dnsmasq-direct"), "{text}");
    assert!(text.contains("initrd: none"), "{text}");
}

#[test]
fn dnsmasq_tftp_ipxe_script_names_kernel_initrd_and_cmdline() {
    if !prerequisites() {
        return;
    }
    let dir = common::tempdir();
    let root = dir.as_path();
    // Several TFTP blocks with a short last one, and a second initrd to concatenate.
    let initrd = boot_files(root, 5000);
    std::fs::write(root.join("b/extra.img"), b"xyz").unwrap();
    std::fs::write(
        root.join("b/boot.ipxe"),
        "#!ipxe\necho script for ${net0/mac}\n\
         kernel k.elf ignite.mac=${net0/mac} ip=${net0/ip} dashed=${mac:hexhyp}\n\
         initrd initrd.img\ninitrd tftp://10.79.0.1/b/extra.img\nboot\n",
    )
    .unwrap();
    let ns = lab("nbs");
    let _d = Daemon::dnsmasq(&ns, root, &["--dhcp-boot=b/boot.ipxe"]);
    let (r, t) = netboot(&ns, "unused");
    let text = r.unwrap();
    eprintln!("netboot took {t:?}\n{text}");
    assert!(text.contains(&format!("script for {MAC_STR}")), "{text}");
    let line = text
        .lines()
        .find(|l| l.starts_with("cmdline: "))
        .unwrap_or_else(|| panic!("{text}"));
    assert!(
        line.starts_with(&format!("cmdline: ignite.mac={MAC_STR} ip=10.79.0.1")),
        "{line}"
    );
    assert!(line.ends_with(" dashed=52-54-00-4e-42-01"), "{line}");
    let mut both = initrd.clone();
    both.resize(both.len().next_multiple_of(4), 0);
    both.extend_from_slice(b"xyz");
    assert!(
        text.contains(&ignite_vmm::guest::netbooted_initrd_line(&both)),
        "{text}"
    );
}

#[test]
fn no_dhcp_server_is_a_clear_error_in_bounded_time() {
    if !prerequisites() {
        return;
    }
    let ns = lab("nbnone");
    let (r, t) = netboot(&ns, "");
    let e = r.unwrap_err();
    assert!(
        e.starts_with("network boot: DHCP on tap ") && e.contains(&format!("MAC {MAC_STR}")),
        "{e}"
    );
    assert!(
        e.contains("no usable answer to 4 DISCOVERs over 15 s"),
        "{e}"
    );
    assert!(t < Duration::from_secs(20), "{t:?}");
}

#[test]
fn missing_tftp_file_or_server_is_a_clear_error_in_bounded_time() {
    if !prerequisites() {
        return;
    }
    let cases = [
        (
            "nbmiss",
            "nosuch.elf",
            "network boot: download: TFTP 10.79.0.1 file \"nosuch.elf\": server error",
        ),
        // siaddr names a host that does not exist on the bridge: ARP goes unanswered.
        (
            "nbgone",
            "k.elf,boothost,10.79.0.99",
            "network boot: download: TFTP 10.79.0.99 file \"k.elf\": no answer after 5 tries over 5 s",
        ),
    ];
    for (tag, dhcp_boot, want) in cases {
        let dir = common::tempdir();
        let ns = lab(tag);
        let _d = Daemon::dnsmasq(&ns, dir.as_path(), &[&format!("--dhcp-boot={dhcp_boot}")]);
        let (r, t) = netboot(&ns, "");
        let e = r.unwrap_err();
        assert!(e.starts_with(want), "{e}");
        assert!(t < Duration::from_secs(10), "{t:?}");
    }
}

#[test]
fn dhcp_boot_url_redirect_and_chunked_http() {
    if !prerequisites() {
        return;
    }
    let dir = common::tempdir();
    let root = dir.as_path();
    let initrd = boot_files(root, 4321);
    std::fs::write(
        root.join("b/boot.ipxe"),
        "#!ipxe\nkernel k.elf via=http\ninitrd /b/initrd.img\nboot\n",
    )
    .unwrap();
    let ns = lab("nbhttp");
    let _h = Daemon::http(&ns, root);
    let _d = Daemon::dnsmasq(&ns, root, &["--dhcp-boot=http://10.79.0.1:8000/start"]);
    let (r, t) = netboot(&ns, "unused");
    let text = r.unwrap();
    eprintln!("netboot took {t:?}\n{text}");
    assert!(
        text.contains("http://10.79.0.1:8000/start ok from http://10.79.0.1:8000/b/boot.ipxe"),
        "{text}"
    );
    assert!(text.contains("http://10.79.0.1:8000/b/k.elf ok:"), "{text}");
    assert!(text.contains("cmdline: via=http\n"), "{text}");
    assert!(
        text.contains(&ignite_vmm::guest::netbooted_initrd_line(&initrd)),
        "{text}"
    );
}

#[test]
fn initrds_beyond_the_guests_ram_are_refused_while_downloading() {
    if !prerequisites() {
        return;
    }
    let dir = common::tempdir();
    let root = dir.as_path();
    boot_files(root, 16);
    // Eight initrd lines of 10 MiB for a guest of 32 MiB: the fourth passes the budget (the
    // firmware used to download every one, whatever their number and size).
    std::fs::File::create(root.join("b/big.img"))
        .unwrap()
        .set_len(10 << 20)
        .unwrap();
    let script = format!(
        "#!ipxe\nkernel k.elf\n{}boot\n",
        "initrd big.img\n".repeat(8)
    );
    std::fs::write(root.join("b/boot.ipxe"), script).unwrap();
    let ns = lab("nbbig");
    let _h = Daemon::http(&ns, root);
    let _d = Daemon::dnsmasq(
        &ns,
        root,
        &["--dhcp-boot=http://10.79.0.1:8000/b/boot.ipxe"],
    );
    let (r, t) = netboot_with_ram(&ns, "", 32 << 20);
    let e = r.unwrap_err();
    assert!(
        e.starts_with("network boot: download: HTTP GET http://10.79.0.1:8000/b/big.img: body larger than the"),
        "{e}"
    );
    assert!(
        e.contains("one network boot loads at most 33554432 bytes in all"),
        "{e}"
    );
    assert!(t < Duration::from_secs(60), "{t:?}");
}
