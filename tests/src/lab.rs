//! Network namespaces for tests that run real network clients against `ignite server`.
//! Nothing here touches the host's own network: every address lives on a bridge inside a
//! namespace named `ign-nb-<pid>-<tag>`, removed on drop even when a test fails.

use std::ffi::OsStr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::{ignite_bin, rand_u64, run};

pub const SERVER_IP: &str = "10.77.0.1";

/// Debian's kernel and a busybox initramfs whose init prints `marker` and powers off
/// (`ignite netboot fetch-boot-files --kernel`) in `dir/boot/debian/`; returns `dir/boot`.
pub fn fetch_boot_files(dir: &Path, marker: &str) -> PathBuf {
    let boot = dir.join("boot");
    run(Command::new(ignite_bin())
        .args([
            "netboot",
            "fetch-boot-files",
            "--kernel",
            "--marker",
            marker,
            "--boot-dir",
        ])
        .arg(&boot));
    boot
}

fn ip(args: &[&str]) {
    run(Command::new("ip").args(args));
}

/// A namespace with a bridge `br0` holding the server address, plus client namespaces,
/// each joined to the bridge by a veth pair.
pub struct Lab {
    pub ns: String,
    pub clients: Vec<String>,
    children: Vec<Child>,
}

impl Lab {
    pub fn new(tag: &str) -> Lab {
        let ns = format!("ign-nb-{}-{tag}", std::process::id());
        // A leftover from a crashed earlier run with the same pid would make `add` fail.
        let _ = Command::new("ip")
            .args(["netns", "del", &ns])
            .stderr(Stdio::null())
            .status();
        ip(&["netns", "add", &ns]);
        let lab = Lab {
            ns,
            clients: Vec::new(),
            children: Vec::new(),
        };
        ip(&["-n", &lab.ns, "link", "set", "lo", "up"]);
        lab.add_bridge("br0", &format!("{SERVER_IP}/24"));
        lab
    }

    /// Adds a client namespace with interface `c0` (MAC `52:54:00:77:00:<n>`); returns its name.
    pub fn add_client(&mut self, n: u8) -> String {
        self.add_client_with_mac(n, &format!("52:54:00:77:00:{n:02x}"))
    }

    /// Adds client namespace `n` whose `c0` has `mac`; returns its name.
    pub fn add_client_with_mac(&mut self, n: u8, mac: &str) -> String {
        let cns = format!("{}-c{n}", self.ns);
        let _ = Command::new("ip")
            .args(["netns", "del", &cns])
            .stderr(Stdio::null())
            .status();
        ip(&["netns", "add", &cns]);
        self.clients.push(cns.clone());
        let peer = format!("vc{n}");
        ip(&[
            "link", "add", "c0", "netns", &cns, "type", "veth", "peer", "name", &peer, "netns",
            &self.ns,
        ]);
        ip(&["-n", &self.ns, "link", "set", &peer, "master", "br0", "up"]);
        ip(&["-n", &cns, "link", "set", "c0", "address", mac]);
        ip(&["-n", &cns, "link", "set", "c0", "up"]);
        ip(&["-n", &cns, "link", "set", "lo", "up"]);
        cns
    }

    /// Leases an address for client namespace `cns` from the DHCP server on the bridge (busybox
    /// udhcpc, once) and puts it on its `c0`; returns the address.
    pub fn lease(cns: &str) -> String {
        // One script for every test process (the same text, put in place by rename), not one
        // per process left behind in /tmp.
        let script = std::env::temp_dir().join("ignite-e2e-lease.sh");
        if !script.exists() {
            let tmp = script.with_extension(format!("{:x}", rand_u64()));
            std::fs::write(
                &tmp,
                "#!/bin/sh\ncase \"$1\" in bound|renew) ip -4 addr flush dev \"$interface\"; \
                 ip addr add \"$ip/$subnet\" dev \"$interface\" ;; esac\nexit 0\n",
            )
            .unwrap();
            run(Command::new("chmod").arg("+x").arg(&tmp));
            std::fs::rename(&tmp, &script).unwrap();
        }
        let out = Lab::cmd(cns, "udhcpc")
            .args(["-i", "c0", "-n", "-q", "-t", "10", "-T", "1", "-s"])
            .arg(&script)
            .output()
            .expect("run udhcpc");
        let text = String::from_utf8_lossy(&out.stderr).into_owned()
            + &String::from_utf8_lossy(&out.stdout);
        // "udhcpc: lease of 10.77.0.100 obtained from 10.77.0.1, lease time 3600"
        text.split("lease of ")
            .nth(1)
            .and_then(|r| r.split_whitespace().next())
            .map(str::to_string)
            .unwrap_or_else(|| panic!("no DHCP lease for {cns}: {text}"))
    }

    /// A bridge `name` with server address `addr` (CIDR) in the lab namespace. Its MAC is
    /// fixed (02:00 and the IPv4 address): a bridge left to choose takes its lowest port's MAC
    /// and changes it as ports join, and a client that resolved the server's address before
    /// then sends to a MAC the bridge no longer answers to — its connections hang until its
    /// ARP entry expires (install_api saw a 134 s connect timeout in CI).
    pub fn add_bridge(&self, name: &str, addr: &str) {
        let mac = bridge_mac(addr);
        ip(&[
            "-n",
            &self.ns,
            "link",
            "add",
            name,
            "address",
            &mac,
            "type",
            "bridge",
            "forward_delay",
            "0",
        ]);
        ip(&["-n", &self.ns, "addr", "add", addr, "dev", name]);
        ip(&["-n", &self.ns, "link", "set", name, "up"]);
    }

    /// Moves client `n`'s bridge port to bridge `name`.
    pub fn move_client(&self, n: u8, bridge: &str) {
        ip(&[
            "-n",
            &self.ns,
            "link",
            "set",
            &format!("vc{n}"),
            "master",
            bridge,
        ]);
    }

    /// A tap device on the bridge, for QEMU (run QEMU inside `self.ns`).
    pub fn add_tap(&self, name: &str) {
        ip(&["-n", &self.ns, "tuntap", "add", "dev", name, "mode", "tap"]);
        ip(&["-n", &self.ns, "link", "set", name, "master", "br0", "up"]);
    }

    /// A command that runs inside namespace `ns`.
    pub fn cmd(ns: &str, prog: impl AsRef<OsStr>) -> Command {
        let mut c = Command::new("ip");
        c.args(["netns", "exec", ns]).arg(prog);
        c
    }

    /// Runs a diskless QEMU (TCG, 512 MiB, no reboot) on `tap0` with `args` (firmware, NIC
    /// `-device ...,netdev=n0`), its serial console in `serial`, until the console shows
    /// `marker` followed by a space or `limit` passes; returns the console text.
    pub fn netboot_qemu(
        &mut self,
        args: &[String],
        serial: &Path,
        marker: &str,
        limit: Duration,
    ) -> String {
        self.add_tap("tap0");
        let child = Lab::cmd(&self.ns, "qemu-system-x86_64")
            .args(crate::EMULATED_CPU)
            .args(["-m", "512", "-display", "none"])
            .args(["-monitor", "none", "-no-reboot"])
            .args(args)
            .args(["-netdev", "tap,id=n0,ifname=tap0,script=no,downscript=no"])
            .arg("-serial")
            .arg(format!("file:{}", serial.display()))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start qemu");
        self.adopt(child);
        let t = Instant::now();
        loop {
            let text =
                String::from_utf8_lossy(&std::fs::read(serial).unwrap_or_default()).into_owned();
            if text.contains(&format!("{marker} ")) || t.elapsed() > limit {
                eprintln!("console after {:?}", t.elapsed());
                return text;
            }
            std::thread::sleep(Duration::from_millis(250));
        }
    }

    /// Keeps a background process to kill when the lab goes away.
    pub fn adopt(&mut self, c: Child) -> u32 {
        let id = c.id();
        self.children.push(c);
        id
    }
}

/// Runs `f` on a thread of its own inside network namespace `ns`: the sockets it opens live
/// there (raw traffic no command-line client makes: floods, half-sent requests).
pub fn in_netns<T: Send + 'static>(
    ns: &str,
    f: impl FnOnce() -> T + Send + 'static,
) -> std::thread::JoinHandle<T> {
    let path = format!("/var/run/netns/{ns}");
    std::thread::spawn(move || {
        use std::os::fd::AsRawFd;
        let fd = std::fs::File::open(&path).unwrap_or_else(|e| panic!("{path}: {e}"));
        // SAFETY: setns(2) on a namespace file we hold open; it moves this thread only.
        let r = unsafe { libc::setns(fd.as_raw_fd(), libc::CLONE_NEWNET) };
        assert_eq!(r, 0, "setns {path}: {}", std::io::Error::last_os_error());
        f()
    })
}

fn kill_ns_pids(ns: &str) {
    // Only processes inside our own namespaces: all started by this test.
    if let Ok(out) = Command::new("ip").args(["netns", "pids", ns]).output() {
        for pid in String::from_utf8_lossy(&out.stdout).split_whitespace() {
            if let Ok(pid) = pid.parse::<i32>() {
                // SAFETY: plain kill(2) on a pid we read from our namespace.
                unsafe { libc::kill(pid, libc::SIGKILL) };
            }
        }
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        for c in &mut self.children {
            let _ = c.kill();
            let _ = c.wait();
        }
        for ns in self.clients.iter().chain(std::iter::once(&self.ns)) {
            kill_ns_pids(ns);
        }
        std::thread::sleep(Duration::from_millis(50));
        for ns in self.clients.iter().chain(std::iter::once(&self.ns)) {
            let _ = Command::new("ip").args(["netns", "del", ns]).status();
        }
    }
}

/// `ignite server` running in the lab namespace, its log in a file.
pub struct Server {
    child: Option<Child>,
    pub log: PathBuf,
}

impl Server {
    pub fn start(lab: &Lab, state: &Path, boot: &Path, extra: &[&str]) -> Server {
        Server::start_env(lab, state, boot, extra, &[])
    }

    /// As `start`, with extra environment variables (test hooks).
    pub fn start_env(
        lab: &Lab,
        state: &Path,
        boot: &Path,
        extra: &[&str],
        env: &[(&str, &str)],
    ) -> Server {
        let log = state.join(format!("server-{:x}.log", rand_u64()));
        std::fs::create_dir_all(state).unwrap();
        let f = std::fs::File::create(&log).unwrap();
        let iface: &[&str] = if extra.contains(&"--interface") {
            &[]
        } else {
            &["--interface", "br0"]
        };
        // Tests bring their own boot files: the server makes none at start. Without a
        // configuration, the boot directory is fetch_boot_files' (the marker initramfs
        // stands in for the agent).
        // Beside the state directory, which holds only what the server writes (private).
        let marker_cfg = state.with_file_name("marker-server.toml");
        let config: Vec<&str> = if extra.contains(&"--config") {
            vec![]
        } else {
            std::fs::write(&marker_cfg, "[boot]\ninitrd = [\"debian/initrd.img\"]\n").unwrap();
            vec!["--config", marker_cfg.to_str().unwrap()]
        };
        let child = Lab::cmd(&lab.ns, ignite_bin())
            .args(["server", "--no-prepare", "--http-port", "8080"])
            .args(iface)
            .args(config)
            .arg("--state-dir")
            .arg(state)
            .arg("--boot-dir")
            .arg(boot)
            .args(extra)
            .env("RUST_LOG", "info")
            .envs(env.iter().copied())
            .stdout(Stdio::null())
            .stderr(f)
            .spawn()
            .expect("start ignite server");
        let s = Server {
            child: Some(child),
            log,
        };
        s.wait_log("ignite server ready", Duration::from_secs(20));
        s
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    pub fn wait_log(&self, needle: &str, timeout: Duration) {
        let t = Instant::now();
        while t.elapsed() < timeout {
            if self.log_text().contains(needle) {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        panic!("server log never said {needle:?}:\n{}", self.log_text());
    }

    pub fn pid(&self) -> u32 {
        self.child.as_ref().map(|c| c.id()).unwrap_or(0)
    }

    /// SIGKILL: the server dies mid-work, as in a crash or power loss.
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// SIGTERM, then wait: the server must exit 0 by itself.
    pub fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            // SAFETY: kill(2) on our own child.
            unsafe { libc::kill(c.id() as i32, libc::SIGTERM) };
            let t = Instant::now();
            loop {
                if let Some(st) = c.try_wait().unwrap() {
                    assert!(
                        st.success(),
                        "server exited with {st}:\n{}",
                        self.log_text()
                    );
                    break;
                }
                if t.elapsed() > Duration::from_secs(10) {
                    let _ = c.kill();
                    panic!("server ignored SIGTERM for 10 s:\n{}", self.log_text());
                }
                std::thread::sleep(Duration::from_millis(20));
            }
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.kill();
    }
}

/// 02:00 (locally administered) followed by the four bytes of `cidr`'s IPv4 address.
fn bridge_mac(cidr: &str) -> String {
    let ip: std::net::Ipv4Addr = cidr
        .split('/')
        .next()
        .and_then(|a| a.parse().ok())
        .unwrap_or_else(|| panic!("bridge address {cidr:?} is not IPv4/len"));
    let [a, b, c, d] = ip.octets();
    format!("02:00:{a:02x}:{b:02x}:{c:02x}:{d:02x}")
}
