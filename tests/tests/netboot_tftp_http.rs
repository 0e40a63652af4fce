//! tftp-hpa, atftp and curl against `ignite server` in a network namespace: small and
//! 100 MB files, with and without TFTP options, byte-identical; HTTP HEAD and Range; the
//! per-client iPXE script over both; path escapes refused; the boot step log.

use std::path::Path;
use std::process::Command;
use std::time::Instant;

use ignite_e2e::*;

fn static_ip(ns: &str, ip: &str) {
    run(Command::new("ip").args(["-n", ns, "addr", "add", &format!("{ip}/24"), "dev", "c0"]));
}

fn same(a: &Path, b: &[u8]) -> bool {
    std::fs::read(a).map(|x| x == b).unwrap_or(false)
}

#[test]
fn tftp_hpa_and_atftp_small_and_100mb_files() {
    if !require_tools(&["tftp", "atftp", "ip"]) {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let boot = tmp.path().join("boot");
    std::fs::create_dir_all(boot.join("sub")).unwrap();
    let small = pattern(70_001, 1);
    let big = pattern(100 << 20, 2);
    std::fs::write(boot.join("sub/small.bin"), &small).unwrap();
    std::fs::write(boot.join("big.bin"), &big).unwrap();
    std::fs::write(tmp.path().join("secret"), b"secret").unwrap();
    std::os::unix::fs::symlink(tmp.path().join("secret"), boot.join("escape")).unwrap();

    let mut lab = Lab::new("tftp");
    let c = lab.add_client(4);
    static_ip(&c, "10.77.0.50");
    let mut server = Server::start(&lab, &tmp.path().join("state"), &boot, &[]);
    let out = tmp.path().join("out");
    std::fs::create_dir_all(&out).unwrap();

    // tftp-hpa: RFC 1350 lock-step, 512-byte blocks (the 100 MB file rolls the block number
    // over three times).
    let hpa = |remote: &str, local: &Path| {
        Lab::cmd(&c, "tftp")
            .args(["-m", "binary", SERVER_IP, "-c", "get", remote])
            .arg(local)
            .output()
            .unwrap()
    };
    assert!(hpa("sub/small.bin", &out.join("a")).status.success());
    assert!(same(&out.join("a"), &small), "tftp-hpa small");
    let t = Instant::now();
    assert!(hpa("big.bin", &out.join("b")).status.success());
    eprintln!("tftp-hpa 100 MB default options: {:?}", t.elapsed());
    assert!(same(&out.join("b"), &big), "tftp-hpa 100 MB");
    std::fs::remove_file(out.join("b")).unwrap();

    // atftp with options: blksize, tsize, windowsize, timeout.
    let at = |remote: &str, local: &Path, opts: &[&str]| {
        let mut cmd = Lab::cmd(&c, "atftp");
        for o in opts {
            cmd.args(["--option", o]);
        }
        cmd.args(["-g", "-r", remote, "-l"])
            .arg(local)
            .arg(SERVER_IP)
            .output()
            .unwrap()
    };
    assert!(at("sub/small.bin", &out.join("c"), &[]).status.success());
    assert!(same(&out.join("c"), &small), "atftp small, no options");
    let opts = ["blksize 1468", "tsize 0", "windowsize 16", "timeout 2"];
    assert!(at("/sub/small.bin", &out.join("d"), &opts).status.success());
    assert!(same(&out.join("d"), &small), "atftp small with options");
    let t = Instant::now();
    let r = at("big.bin", &out.join("e"), &opts);
    assert!(r.status.success(), "{}", String::from_utf8_lossy(&r.stderr));
    eprintln!("atftp 100 MB blksize 1468 windowsize 16: {:?}", t.elapsed());
    assert!(same(&out.join("e"), &big), "atftp 100 MB with options");
    std::fs::remove_file(out.join("e")).unwrap();

    // Escapes and writes are refused.
    assert!(!same(&out.join("f"), b"secret"));
    let r = hpa("../secret", &out.join("f"));
    assert!(!same(&out.join("f"), b"secret"), "{r:?}");
    let _ = hpa("escape", &out.join("g"));
    assert!(!same(&out.join("g"), b"secret"));
    std::fs::write(out.join("up"), b"x").unwrap();
    let r = Lab::cmd(&c, "tftp")
        .args(["-m", "binary", SERVER_IP, "-c", "put"])
        .arg(out.join("up"))
        .arg("up")
        .output()
        .unwrap();
    assert!(!boot.join("up").exists(), "{r:?}");

    // The iPXE script is a virtual per-client file over TFTP too.
    assert!(hpa("ipxe/52-54-00-77-00-04.ipxe", &out.join("s"))
        .status
        .success());
    let s = std::fs::read_to_string(out.join("s")).unwrap();
    assert!(s.starts_with("#!ipxe"), "{s}");

    let log = server.log_text();
    assert!(log.contains("boot step tftp mac=- ip=10.77.0.50 sent file big.bin (104857600 bytes, octet, blksize 512, window 1"), "{log}");
    assert!(log.contains("blksize 1468, window 16"), "{log}");
    assert!(log.contains("boot step tftp-missing"), "{log}");
    server.stop();
}

#[test]
fn http_head_range_scripts_and_client_actions() {
    if !require_tools(&["curl", "ip"]) {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let boot = tmp.path().join("boot");
    std::fs::create_dir_all(boot.join("debian")).unwrap();
    let data = pattern(3 << 20, 3);
    std::fs::write(boot.join("debian/vmlinuz"), &data).unwrap();
    let state = tmp.path().join("state");
    let mut lab = Lab::new("http");
    let c = lab.add_client(5);
    static_ip(&c, "10.77.0.51");
    run(Command::new(ignite_bin())
        .args([
            "client",
            "add",
            "52:54:00:77:00:05",
            "web1",
            "install",
            "web",
        ])
        .arg("--state-dir")
        .arg(&state));
    let mut server = Server::start(&lab, &state, &boot, &[]);
    let curl = |args: &[&str]| run(Lab::cmd(&c, "curl").args(["-sS", "--fail"]).args(args));
    let url = format!("http://{SERVER_IP}:8080/files/debian/vmlinuz");

    let head = curl(&["-I", &url]);
    assert!(
        head.to_lowercase()
            .contains(&format!("content-length: {}", data.len())),
        "{head}"
    );
    assert!(
        head.to_lowercase().contains("accept-ranges: bytes"),
        "{head}"
    );
    let part = tmp.path().join("part");
    curl(&["-r", "1000-1999", "-o", part.to_str().unwrap(), &url]);
    assert!(same(&part, &data[1000..2000]), "Range");
    let whole = tmp.path().join("whole");
    curl(&["-o", whole.to_str().unwrap(), &url]);
    assert!(same(&whole, &data));
    let missing = Lab::cmd(&c, "curl")
        .args([
            "-s",
            "-o",
            "/dev/null",
            "-w",
            "%{http_code}",
            &format!("http://{SERVER_IP}:8080/files/../state/ignite.db"),
        ])
        .output()
        .unwrap();
    assert_ne!(String::from_utf8_lossy(&missing.stdout), "200");

    // The script follows the registry: install → kernel line with the profile; local → exit.
    let script_url = format!("http://{SERVER_IP}:8080/ipxe/52-54-00-77-00-05");
    let s = curl(&[&script_url]);
    assert!(
        s.contains(
            "kernel http://10.77.0.1:8080/files/debian/vmlinuz initrd=initrd.img console=ttyS0"
        ),
        "{s}"
    );
    assert!(
        s.contains("ignite.action=install ignite.profile=web"),
        "{s}"
    );
    // The admin reports the install done: the action flips to local, the script says exit.
    let admin = std::fs::read_to_string(state.join("admin.token")).unwrap();
    curl(&[
        "-X",
        "POST",
        "-H",
        &format!("Authorization: Bearer {}", admin.trim()),
        &format!("http://{SERVER_IP}:8080/api/clients/52:54:00:77:00:05/installed"),
    ]);
    let s = curl(&[&script_url]);
    assert!(s.contains("exit") && !s.contains("kernel"), "{s}");
    let show = run(Command::new(ignite_bin())
        .args(["client", "show", "web1", "--json", "--state-dir"])
        .arg(&state));
    let v: serde_json::Value = serde_json::from_str(&show).unwrap();
    assert_eq!(v["client"]["action"], "local");
    assert!(
        v["steps"]
            .as_array()
            .unwrap()
            .iter()
            .any(|s| s["step"] == "script"),
        "{v}"
    );
    // Unknown clients get the default action.
    run(Command::new(ignite_bin())
        .args(["client", "default", "capture", "--state-dir"])
        .arg(&state));
    let s = curl(&[&format!("http://{SERVER_IP}:8080/ipxe/52-54-00-77-00-99")]);
    assert!(s.contains("ignite.action=capture"), "{s}");
    let log = server.log_text();
    assert!(log.contains("boot step http mac=- ip=10.77.0.51 GET /files/debian/vmlinuz range=bytes=1000-1999 -> 206"), "{log}");
    server.stop();
}
