//! Guest lifecycle through the real binary: `ignite vm create/list/show/remove` (no VM), then
//! guests started detached on the bundled monitor (a guest test program taking console
//! input; a guest program booted from the ext4 /boot of a GPT disk) and under QEMU (Debian's
//! kernel with a busybox initramfs, its NIC a tap on a bridge), attached to with
//! `ignite vm console` and stopped.

use serde_json::Value;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use ignite_e2e::{ignite_bin, wait_for, which};

fn vm(state: &Path, args: &[&str]) -> Output {
    Command::new(ignite_bin())
        .arg("vm")
        .args(args)
        .env("IGNITE_STATE_DIR", state)
        .output()
        .expect("run ignite")
}

/// Runs `ignite vm ARGS` and returns its stdout; panics with its output on failure.
fn ok(state: &Path, args: &[&str]) -> String {
    let o = vm(state, args);
    let (out, err) = (
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr),
    );
    assert!(o.status.success(), "ignite vm {args:?} failed:\n{out}{err}");
    out.into_owned()
}

/// Runs `ignite vm ARGS`, expects failure with exit code 1 and `needle` in the message.
fn fails(state: &Path, args: &[&str], needle: &str) {
    let o = vm(state, args);
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(1), "ignite vm {args:?}: {err}");
    assert!(
        err.contains(needle),
        "ignite vm {args:?}: error lacks {needle:?}: {err}"
    );
}

fn show(state: &Path, name: &str) -> Value {
    serde_json::from_str(&ok(state, &["show", name, "--json"])).unwrap()
}

fn kvm() -> (&'static str, bool) {
    ("/dev/kvm (read-write)", ignite_e2e::have_kvm())
}

fn guest_program(dir: &Path, name: &str) -> PathBuf {
    let p = dir.join(format!("{name}.elf"));
    std::fs::write(&p, ignite_vmm::guest::program(name).expect("guest program")).unwrap();
    p
}

fn console_log(state: &Path, name: &str) -> String {
    std::fs::read_to_string(state.join("guests").join(name).join("console.log")).unwrap_or_default()
}

fn wait_stopped(state: &Path, name: &str, limit: Duration) -> Value {
    wait_for(&format!("guest {name} to stop"), limit, || {
        show(state, name)["state"] == "stopped"
    });
    show(state, name)
}

/// `ignite vm console NAME` with its output collected as it arrives.
struct Console {
    child: std::process::Child,
    out: Arc<Mutex<String>>,
}

impl Console {
    fn attach(state: &Path, name: &str) -> Console {
        let mut child = Command::new(ignite_bin())
            .args(["vm", "console", name])
            .env("IGNITE_STATE_DIR", state)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let out = Arc::new(Mutex::new(String::new()));
        let mut stdout = child.stdout.take().unwrap();
        let o = out.clone();
        std::thread::spawn(move || {
            let mut buf = [0u8; 1024];
            while let Ok(n) = stdout.read(&mut buf) {
                if n == 0 {
                    break;
                }
                o.lock()
                    .unwrap()
                    .push_str(&String::from_utf8_lossy(&buf[..n]));
            }
        });
        Console { child, out }
    }
    fn text(&self) -> String {
        self.out.lock().unwrap().clone()
    }
    fn wait_exit(&mut self, limit: Duration) {
        wait_for("the console to end", limit, || {
            self.child.try_wait().unwrap().is_some()
        });
    }
}

impl Drop for Console {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[test]
fn definitions_round_trip_with_unique_macs_and_clear_errors() {
    let tmp = tempfile::tempdir().unwrap();
    let state = tmp.path().join("state");
    let s = &state;
    let image = tmp.path().join("existing.img");
    std::fs::write(&image, vec![0u8; 1 << 20]).unwrap();
    let image = image.to_str().unwrap();

    let out = ok(
        s,
        &[
            "create",
            "web1",
            "--mem",
            "512M",
            "--cpus",
            "2",
            "--disk",
            "2G",
            "--disk",
            image,
            "--net",
            "bridge=br0",
            "--net",
            "bridge=br1",
            "--mac",
            "52:54:00:AA:00:01",
            "--boot",
            "net",
            "--engine",
            "qemu",
        ],
    );
    assert!(out.contains("guest web1 defined"), "{out}");
    let created = state.join("guests/web1/disk0.img");
    let meta = std::fs::metadata(&created).unwrap();
    assert_eq!(meta.len(), 2 << 30);
    assert!(
        std::os::unix::fs::MetadataExt::blocks(&meta) < 64,
        "new image is not sparse"
    );

    let web1 = show(s, "web1");
    assert_eq!(web1["state"], "defined");
    assert_eq!(web1["mem"], 512 << 20);
    assert_eq!(web1["cpus"], 2);
    assert_eq!(web1["engine"], "qemu");
    assert_eq!(web1["boot"]["from"], "net");
    assert_eq!(web1["disks"][0]["owned"], true);
    assert_eq!(web1["disks"][1]["path"], image);
    assert_eq!(web1["disks"][1]["owned"], false);
    let nics = web1["nics"].as_array().unwrap();
    assert_eq!(nics[0]["mac"], "52:54:00:aa:00:01");
    assert_eq!(nics[0]["bridge"], "br0");
    let generated = nics[1]["mac"].as_str().unwrap().to_owned();
    assert!(
        generated.starts_with("52:54:00:") && generated.len() == 17,
        "{generated}"
    );

    // Many guests with generated MACs: all distinct, and distinct from web1's.
    let mut macs = vec!["52:54:00:aa:00:01".to_string(), generated.clone()];
    for i in 0..8 {
        let n = format!("g{i}");
        ok(s, &["create", &n, "--net", "bridge=br0", "--boot", "net"]);
        macs.push(show(s, &n)["nics"][0]["mac"].as_str().unwrap().to_owned());
    }
    let mut uniq = macs.clone();
    uniq.sort();
    uniq.dedup();
    assert_eq!(uniq.len(), macs.len(), "{macs:?}");

    let list: Value = serde_json::from_str(&ok(s, &["list", "--json"])).unwrap();
    assert_eq!(list.as_array().unwrap().len(), 9);
    let table = ok(s, &["list"]);
    assert!(
        table
            .lines()
            .any(|l| l.starts_with("web1") && l.contains("defined")),
        "{table}"
    );

    // Errors: each names the object and what to do, and stores nothing.
    let dup_generated = format!("create dup --net bridge=br0 --mac {generated} --boot net");
    let cases: &[(&str, &str)] = &[
        ("create web1 --boot net --net bridge=br0", "guest web1 is already defined"),
        (
            "create dup --net bridge=br0 --mac 52:54:00:aa:00:01 --boot net",
            "MAC 52:54:00:aa:00:01 is already used by guest web1",
        ),
        (&dup_generated, "is already used by guest web1"),
        (
            "create twice --net bridge=a --net bridge=b --mac 52:54:00:00:00:09 --mac 52:54:00:00:00:09 --boot net",
            "is given twice",
        ),
        ("create bad --disk 10X", "neither a size"),
        ("create bad --disk 0", "too small"),
        ("create bad --mem lots --disk 1G", "not a size"),
        ("create bad --mem 1M --disk 1G", "out of range"),
        ("create bad --cpus 0 --disk 1G", "out of range"),
        ("create bad --mac zz --net bridge=b --boot net", "is not a MAC address"),
        ("create bad --mac 01:00:00:00:00:01 --net bridge=b --boot net", "multicast"),
        ("create bad --mac 52:54:00:00:00:01 --boot net", "at most one MAC per NIC"),
        (
            "create bad --disk-bus vio --disk 1G --disk 1G --disk 1G --disk 1G --disk 1G",
            "at most 4",
        ),
        ("create bad", "--boot disk needs a disk"),
        ("create bad --boot net", "--boot net needs a NIC"),
        ("create bad --disk 1G --boot kernel=/no/such/vmlinuz", "no such file"),
        ("create bad --disk 1G --boot cdrom", "not a boot source"),
        ("create bad/name --disk 1G", "not valid"),
        ("create bad --net tap=x --boot net", "use bridge=BR"),
        ("show nosuch", "guest nosuch is not defined"),
        ("start nosuch", "guest nosuch is not defined"),
        ("stop web1", "guest web1 is not running"),
        ("console web1", "guest web1 is not running"),
        ("remove nosuch", "guest nosuch is not defined"),
    ];
    for (args, needle) in cases {
        fails(s, &args.split(' ').collect::<Vec<_>>(), needle);
    }
    assert!(!state.join("guests/bad").exists() && !state.join("guests/dup").exists());

    // Remove keeping the created image, then fully; the existing image is never touched.
    let out = ok(s, &["remove", "web1", "--keep-disks"]);
    assert!(out.contains("disk0.img"), "{out}");
    assert!(created.exists() && Path::new(image).exists());
    fails(s, &["show", "web1"], "not defined");
    // Its MAC is free again, and the kept image blocks a new guest's image of the same name.
    ok(
        s,
        &[
            "create",
            "web2",
            "--net",
            "bridge=br0",
            "--mac",
            "52:54:00:aa:00:01",
            "--boot",
            "net",
        ],
    );
    fails(s, &["create", "web1", "--disk", "1G"], "cannot create it");
    std::fs::remove_file(&created).unwrap();
    ok(s, &["create", "web1", "--disk", "1G"]);
    ok(s, &["remove", "web1"]);
    assert!(!state.join("guests/web1").exists());
    assert!(Path::new(image).exists());
}

#[test]
fn bundled_guest_starts_takes_console_input_and_stops() {
    if !ignite_e2e::require_all(&[kvm()]) {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let s = &tmp.path().join("state");
    let prog = guest_program(tmp.path(), "console");
    let boot = format!("kernel={},cmdline=expect=hello-ignite", prog.display());
    ok(
        s,
        &[
            "create", "con1", "--mem", "64M", "--boot", &boot, "--engine", "bundled",
        ],
    );

    let out = ok(s, &["start", "con1"]);
    assert!(out.contains("engine bundled"), "{out}");
    let v = show(s, "con1");
    assert_eq!(v["state"], "running");
    assert_eq!(v["running"]["engine"], "bundled");
    let pid = v["running"]["pid"].as_u64().unwrap();
    assert!(Path::new(&format!("/proc/{pid}")).exists());
    fails(s, &["start", "con1"], "guest con1 is already running");
    fails(s, &["remove", "con1"], "guest con1 is running");

    // The program prints its prompt before anyone attaches: the log has it.
    wait_for("the prompt in console.log", Duration::from_secs(20), || {
        console_log(s, "con1").contains("console ready")
    });
    let mut console = Console::attach(s, "con1");
    std::thread::sleep(Duration::from_millis(300));
    let stdin = console.child.stdin.as_mut().unwrap();
    stdin.write_all(b"hello-ignite\r").unwrap();
    stdin.flush().unwrap();
    wait_for(
        "the echo through the console",
        Duration::from_secs(20),
        || console.text().contains("got: hello-ignite"),
    );
    // The program then passes and the guest ends: the console and the supervisor go.
    console.wait_exit(Duration::from_secs(20));
    let v = wait_stopped(s, "con1", Duration::from_secs(20));
    assert_eq!(v["last_stop"], "guest program passed");
    assert!(console.text().contains("PASS"), "{}", console.text());
    assert!(console_log(s, "con1").contains("got: hello-ignite"));
    assert!(!s.join("guests/con1/control.sock").exists());

    // Started again (the prompt waits for input forever), then stopped from outside.
    ok(s, &["start", "con1"]);
    assert_eq!(show(s, "con1")["state"], "running");
    // Ctrl-] detaches the console and leaves the guest running.
    let mut console = Console::attach(s, "con1");
    console
        .child
        .stdin
        .as_mut()
        .unwrap()
        .write_all(&[0x1d])
        .unwrap();
    console.wait_exit(Duration::from_secs(10));
    assert_eq!(show(s, "con1")["state"], "running");
    let out = ok(s, &["stop", "con1"]);
    assert!(out.contains("guest con1 stopped"), "{out}");
    let v = show(s, "con1");
    assert_eq!(v["state"], "stopped");
    assert_eq!(v["last_stop"], "stopped by ignite vm stop");
    ok(s, &["remove", "con1"]);
}

/// An ext4 file system image of `size` holding `files`, with a fixed UUID.
fn ext4(dir: &Path, name: &str, uuid: &str, files: &[(&str, &[u8])], size: &str) -> Vec<u8> {
    let root = dir.join(format!("{name}-root"));
    for (path, data) in files {
        let p = root.join(path);
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(p, data).unwrap();
    }
    std::fs::create_dir_all(&root).unwrap();
    let img = dir.join(format!("{name}.ext4"));
    ignite_e2e::run(
        Command::new("mke2fs")
            .args(["-q", "-F", "-t", "ext4", "-U", uuid, "-d"])
            .arg(&root)
            .arg(&img)
            .arg(size),
    );
    std::fs::read(img).unwrap()
}

/// A disk image with a partition table written by sfdisk and these file systems placed in
/// its partitions (each 8 MiB, from 1 MiB on).
fn partitioned(dir: &Path, name: &str, label: &str, filesystems: &[Vec<u8>]) -> PathBuf {
    use std::os::unix::fs::FileExt;
    let disk = dir.join(name);
    let f = std::fs::File::create(&disk).unwrap();
    f.set_len((2 + 8 * filesystems.len() as u64) << 20).unwrap();
    let mut script = format!("label: {label}\n");
    for i in 0..filesystems.len() {
        script += &format!("start={}, size=16384, type=L\n", 2048 + 16384 * i);
    }
    let mut sf = Command::new("sfdisk")
        .arg("-q")
        .arg(&disk)
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .spawn()
        .unwrap();
    sf.stdin
        .take()
        .unwrap()
        .write_all(script.as_bytes())
        .unwrap();
    assert!(sf.wait().unwrap().success(), "sfdisk failed");
    for (i, fs) in filesystems.iter().enumerate() {
        f.write_all_at(fs, (1 + 8 * i as u64) << 20).unwrap();
    }
    disk
}

/// Defines and starts a bundled guest booting from `disk`; waits for its guest program to
/// pass and returns its console log.
fn boot_from_disk(s: &Path, name: &str, disk: &Path, bus: &str) -> String {
    let disk = disk.to_str().unwrap();
    let args = [
        "create",
        name,
        "--mem",
        "128M",
        "--disk",
        disk,
        "--disk-bus",
        bus,
        "--engine",
        "bundled",
    ];
    ok(s, &args);
    ok(s, &["start", name]);
    let v = wait_stopped(s, name, Duration::from_secs(30));
    let log = console_log(s, name);
    assert_eq!(v["last_stop"], "guest program passed", "{log}");
    log
}

#[test]
fn bundled_guest_boots_kernel_from_ext4_boot_without_a_boot_loader() {
    if !ignite_e2e::require_all(&[
        kvm(),
        ("mke2fs (e2fsprogs)", which("mke2fs").is_some()),
        ("sfdisk (util-linux)", which("sfdisk").is_some()),
    ]) {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path();
    let s = &d.join("state");
    let hello = ignite_vmm::guest::program("hello").unwrap();
    // The monitor places an initrd above 96 MiB: these guests get 128M.
    let initrd = vec![0x5a; 64 << 10];

    // GPT, /boot inside the root file system.
    let root_uuid = "6f1c1e2a-3b4c-4d5e-8f90-a1b2c3d4e5f6";
    let fs = ext4(
        d,
        "rootfs",
        root_uuid,
        &[
            ("boot/vmlinuz", hello),
            ("boot/initrd.img", &initrd),
            ("etc/hostname", b"g1\n"),
        ],
        "8M",
    );
    let disk = partitioned(d, "gpt.img", "gpt", &[fs]);
    let log = boot_from_disk(s, "disk1", &disk, "avio");
    assert!(
        log.contains(&format!("cmdline: root=UUID={root_uuid} ro console=ttyS0")),
        "{log}"
    );
    let sup = std::fs::read_to_string(s.join("guests/disk1/supervisor.log")).unwrap();
    assert!(
        sup.contains("partition 1: /boot/vmlinuz + /boot/initrd.img"),
        "{sup}"
    );

    // MBR, /boot a partition of its own with a versioned kernel; root on the second.
    let boot_uuid = "0a0b0c0d-1111-4222-8333-444455556666";
    let root2 = "7e7e7e7e-aaaa-4bbb-8ccc-dddddddddddd";
    let bootfs = ext4(
        d,
        "bootfs",
        boot_uuid,
        &[
            ("vmlinuz-6.1.0-9-amd64", b"not this one"),
            ("vmlinuz-6.10.2-amd64", hello),
            ("initrd.img-6.10.2-amd64", &initrd),
        ],
        "8M",
    );
    let rootfs = ext4(d, "rootfs2", root2, &[("etc/hostname", b"g2\n")], "8M");
    let disk = partitioned(d, "mbr.img", "dos", &[bootfs, rootfs]);
    let log = boot_from_disk(s, "disk2", &disk, "vio");
    assert!(
        log.contains(&format!("cmdline: root=UUID={root2} ")),
        "{log}"
    );

    // A disk without ext4: start says why and the guest stays stopped.
    let blank = d.join("blank.img");
    std::fs::write(&blank, vec![0u8; 4 << 20]).unwrap();
    ok(
        s,
        &[
            "create",
            "blank",
            "--mem",
            "64M",
            "--disk",
            blank.to_str().unwrap(),
            "--engine",
            "bundled",
        ],
    );
    fails(s, &["start", "blank"], "no ext4 file system");
    assert_eq!(show(s, "blank")["state"], "stopped");
}

#[test]
fn qemu_engine_runs_the_same_definition_with_a_debian_kernel() {
    if !ignite_e2e::require_all(&[
        ("qemu-system-x86_64", which("qemu-system-x86_64").is_some()),
        ("apt-get (fetch-boot-files)", which("apt-get").is_some()),
        (
            "root (a bridge in a network namespace)",
            unsafe { libc::geteuid() } == 0,
        ),
        ("ip (iproute2)", which("ip").is_some()),
    ]) {
        return;
    }
    const MARKER: &str = "IGNITE-LIFECYCLE-MARKER";
    let tmp = tempfile::tempdir().unwrap();
    let s = &tmp.path().join("state");
    let boot = ignite_e2e::fetch_boot_files(tmp.path(), MARKER);
    let spec = format!(
        "kernel={},initrd={},cmdline=console=ttyS0 panic=-1",
        boot.join("debian/vmlinuz").display(),
        boot.join("debian/initrd.img").display()
    );
    ok(
        s,
        &[
            "create",
            "q1",
            "--mem",
            "256M",
            "--disk",
            "64M",
            "--net",
            "bridge=br0",
            "--boot",
            &spec,
            "--engine",
            "qemu",
        ],
    );
    // Started inside a namespace holding bridge br0 (the supervisor and QEMU stay there; the
    // lab kills whatever is left in it).
    let lab = ignite_e2e::Lab::new("vmlc");
    let taps = || {
        ignite_e2e::run(
            Command::new("ip").args(["-n", &lab.ns, "-o", "link", "show", "master", "br0"]),
        )
    };
    let start = || {
        ignite_e2e::run(
            ignite_e2e::Lab::cmd(&lab.ns, ignite_bin())
                .args(["vm", "start", "q1"])
                .env("IGNITE_STATE_DIR", s),
        )
    };
    let out = start();
    assert!(
        out.contains("engine qemu") && out.contains("-accel"),
        "{out}"
    );
    assert_eq!(show(s, "q1")["running"]["engine"], "qemu");
    assert!(
        taps().contains("ignite"),
        "no tap on br0 while q1 runs: {}",
        taps()
    );
    let mut console = Console::attach(s, "q1");
    // The initramfs prints the marker and powers off: QEMU exits, the guest is stopped.
    let v = wait_stopped(s, "q1", Duration::from_secs(90));
    assert_eq!(v["last_stop"], "guest powered off or reset (qemu exited)");
    let log = console_log(s, "q1");
    assert!(log.contains(&format!("{MARKER} ")), "console log:\n{log}");
    console.wait_exit(Duration::from_secs(10));
    assert!(
        console.text().contains(MARKER),
        "console:\n{}",
        console.text()
    );

    assert!(!taps().contains("ignite"), "tap left on br0: {}", taps());

    // Started again and forced off through QMP before it gets far.
    start();
    ok(s, &["stop", "q1", "--force"]);
    let v = show(s, "q1");
    assert_eq!(v["state"], "stopped");
    assert_eq!(v["last_stop"], "stopped by ignite vm stop");
    ok(s, &["remove", "q1"]);
}
