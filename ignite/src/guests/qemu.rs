//! The QEMU engine: the same definition under `qemu-system-x86_64` (same disk files, MACs,
//! taps on the same bridges, console on the same socket and log), stopped through QMP.
//!
//! Disks are `-blockdev` nodes named `disk0`, `disk1`, ... on devices `vd0`, `vd1`, ...: the
//! capture session (`qemu_capture`) adds dirty bitmaps and a copy-before-write filter to
//! them by name. QEMU starts paused (`-S`) so the first bitmap sees every write. A disk of an
//! instant restore still copying is its qcow2 overlay instead (node `diskN` all the same),
//! and QEMU gets a second QMP monitor for the copy (`instant`).

use super::{Boot, Bus, Definition, Firmware, Paths};
use anyhow::{bail, Context, Result};
use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

/// OVMF from Debian's `ovmf` package: the code (read-only) and the template each UEFI guest's
/// variable store is copied from.
pub const OVMF_CODE: &str = "/usr/share/OVMF/OVMF_CODE_4M.fd";
pub const OVMF_VARS: &str = "/usr/share/OVMF/OVMF_VARS_4M.fd";
/// OVMF without IPv6 networking (Ignite's boot network is DHCPv4/PXE): otherwise, after iPXE
/// hands a booting guest back to the firmware (action `local`), OVMF tries PXE and HTTP boot
/// over IPv6 before the disk, and each waits out its DHCPv6 timeouts: about 80 s a boot,
/// measured with Debian 12's OVMF.
pub const OVMF_IPV4_ONLY: [&str; 2] = ["-fw_cfg", "name=opt/org.tianocore/IPv6Support,string=no"];

/// How a guest runs without KVM. `-icount`: the guest's clock counts the instructions it
/// ran (8 ns each, about the host's pace for one guest on a quiet core) and follows the
/// host's only while the guest idles, so a guest a busy host starves does not see its own
/// timeouts expire (systemd's 90 s wait for a disk dropped starved emulated guests into
/// emergency mode); it costs CPU: 11% for a Debian boot, 40% for a guest busy on its NIC
/// (measured with the tests' guests). RDRAND: without it the default CPU leaves a guest
/// kernel to seed its random pool from interrupts alone, which took minutes on a busy host,
/// and anything asking for random bytes early (a DHCP client's transaction id) waited.
const TCG: [&str; 6] = [
    "-accel",
    "tcg",
    "-icount",
    "shift=3,sleep=on",
    "-cpu",
    "qemu64,+rdrand",
];

/// First file descriptor number handed to QEMU for taps (`-netdev tap,fd=N`).
pub const FIRST_TAP_FD: i32 = 3;

/// The QEMU command line for `def`; tap `i` is expected on fd `FIRST_TAP_FD + i`.
pub fn command(def: &Definition, paths: &Paths, kvm: bool) -> Command {
    let mut c = Command::new("qemu-system-x86_64");
    let chardev = format!(
        "socket,id=con,path={},server=on,wait=off,logfile={},logappend=on",
        paths.console().display(),
        paths.console_log().display()
    );
    c.args(["-name", &def.name])
        .args(if kvm {
            &["-accel", "kvm"][..]
        } else {
            &TCG[..]
        })
        .args(["-m", &format!("{}M", def.mem >> 20)])
        .args(["-smp", &def.cpus.to_string()])
        .args(["-display", "none", "-monitor", "none", "-S"])
        .args(["-chardev", &chardev, "-serial", "chardev:con"])
        .arg("-qmp")
        .arg(format!("unix:{},server=on,wait=off", paths.qmp().display()));
    let uefi = def.firmware == Firmware::Uefi;
    if uefi {
        c.args(["-machine", "q35"])
            .args(OVMF_IPV4_ONLY)
            .arg("-drive")
            .arg(format!("if=pflash,format=raw,readonly=on,file={OVMF_CODE}"))
            .arg("-drive")
            .arg(format!(
                "if=pflash,format=raw,file={}",
                paths.uefi_vars().display()
            ));
    } else {
        c.args(["-machine", "pc"]);
    }
    let mut instant = false;
    for (i, d) in def.disks.iter().enumerate() {
        // An instant restore still copying runs on its overlay (the backing, the snapshot's
        // NBD export, is opened as the overlay's header names it).
        let (path, format) = match super::instant_files::overlay_in_use(&d.path) {
            Some(o) => {
                instant = true;
                (o, "qcow2")
            }
            None => (d.path.clone(), "raw"),
        };
        let file = serde_json::json!({"driver": "file", "filename": path, "node-name": format!("file{i}")});
        let top = serde_json::json!({"driver": format, "file": format!("file{i}"), "node-name": format!("disk{i}")});
        c.arg("-blockdev").arg(file.to_string());
        c.arg("-blockdev").arg(top.to_string());
        c.arg("-device").arg(match def.disk_bus {
            Bus::Avio => format!("virtio-blk-pci,drive=disk{i},id=vd{i}"),
            // q35's AHCI ports take one drive each; PIIX channels two.
            Bus::Vio if uefi => format!("ide-hd,drive=disk{i},id=vd{i},bus=ide.{i}"),
            Bus::Vio => format!(
                "ide-hd,drive=disk{i},id=vd{i},bus=ide.{},unit={}",
                i / 2,
                i % 2
            ),
        });
    }
    if instant {
        c.arg("-qmp").arg(format!(
            "unix:{},server=on,wait=off",
            super::instant_files::qmp_socket(&paths.dir).display()
        ));
    }
    for (i, n) in def.nics.iter().enumerate() {
        c.arg("-netdev")
            .arg(format!("tap,id=net{i},fd={}", FIRST_TAP_FD + i as i32));
        let model = match def.net_model {
            Bus::Avio => "virtio-net-pci",
            Bus::Vio => "ne2k_pci",
        };
        c.arg("-device")
            .arg(format!("{model},netdev=net{i},mac={}", n.mac));
    }
    match &def.boot {
        // Network first, then the disk: a server that answers "boot locally" (an installed
        // client) hands the guest on to its disk, as on a physical machine.
        Boot::Net => {
            c.args(["-boot", "order=nc"]);
        }
        Boot::Disk => {
            c.args(["-boot", "c"]);
        }
        Boot::Kernel {
            kernel,
            initrd,
            cmdline,
        } => {
            // A kernel booted directly has nothing to reboot into but itself: a reboot (or
            // a panic, with panic=N) ends the guest. Firmware-booted guests reboot like a
            // machine: an install or recovery agent reboots into the installed system.
            c.arg("-no-reboot");
            c.arg("-kernel").arg(kernel);
            if let Some(i) = initrd {
                c.arg("-initrd").arg(i);
            }
            c.arg("-append")
                .arg(cmdline.as_deref().unwrap_or("console=ttyS0"));
        }
    }
    c
}

/// A QMP session (after capabilities negotiation).
pub struct Qmp {
    stream: UnixStream,
    reader: BufReader<UnixStream>,
}

impl Qmp {
    /// Connects to QEMU's QMP socket, waiting up to `limit` for QEMU to create it.
    pub fn connect(paths: &Paths, limit: Duration) -> Result<Qmp> {
        Qmp::connect_at(&paths.qmp(), limit).map_err(|e| match qemu_said(paths) {
            Some(said) => e.context(said),
            None => e,
        })
    }

    /// Connects to the QMP socket at `socket` (see [`Qmp::connect`]).
    pub fn connect_at(socket: &Path, limit: Duration) -> Result<Qmp> {
        let t = Instant::now();
        let stream = loop {
            match UnixStream::connect(socket) {
                Ok(s) => break s,
                Err(e) if t.elapsed() >= limit => {
                    return Err(e).with_context(|| {
                        format!("QMP socket {}: QEMU did not open it", socket.display())
                    })
                }
                Err(_) => std::thread::sleep(Duration::from_millis(50)),
            }
        };
        stream.set_read_timeout(Some(Duration::from_secs(10)))?;
        let mut q = Qmp {
            reader: BufReader::new(stream.try_clone()?),
            stream,
        };
        let mut greeting = String::new();
        q.reader.read_line(&mut greeting)?;
        q.execute("qmp_capabilities")?;
        Ok(q)
    }

    /// Runs a command and waits for its return (skipping events).
    pub fn execute(&mut self, cmd: &str) -> Result<()> {
        self.call(cmd, serde_json::Value::Null).map(|_| ())
    }

    /// Runs `cmd` with `args` (an object, or null for none); its `return` value.
    pub fn call(&mut self, cmd: &str, args: serde_json::Value) -> Result<serde_json::Value> {
        let mut req = serde_json::json!({ "execute": cmd });
        if !args.is_null() {
            req["arguments"] = args;
        }
        // QEMU closes QMP as it quits, also on its own while a command is on its way (the
        // guest powered off as `vm stop --force` sent `quit`): a closed QMP is its answer.
        match writeln!(self.stream, "{req}") {
            Err(e) if super::peer_gone(&e) => return Ok(serde_json::Value::Null),
            r => r?,
        }
        loop {
            let mut line = String::new();
            match self.reader.read_line(&mut line) {
                Ok(0) => return Ok(serde_json::Value::Null),
                Err(e) if super::peer_gone(&e) => return Ok(serde_json::Value::Null),
                r => r?,
            };
            let v: serde_json::Value =
                serde_json::from_str(&line).with_context(|| format!("QMP: bad reply {line:?}"))?;
            if let Some(r) = v.get("return") {
                return Ok(r.clone());
            }
            if let Some(e) = v.get("error") {
                bail!(
                    "QMP {cmd}: {}",
                    e["desc"].as_str().unwrap_or(&e.to_string())
                );
            }
        }
    }
}

/// Why QEMU ended before opening its monitor: its last error in the supervisor's log (its
/// stderr), and what to do when it is an instant restore's missing server.
fn qemu_said(paths: &Paths) -> Option<String> {
    let log = std::fs::read_to_string(paths.supervisor_log()).ok()?;
    let line = log
        .lines()
        .rev()
        .find_map(|l| l.strip_prefix("qemu-system-x86_64: "))?;
    let mut said = format!("QEMU: {line}");
    if line.contains(".nbd.sock") {
        let name = paths.dir.file_name().unwrap_or_default().to_string_lossy();
        said.push_str(&format!(
            "; the server of its instant restore is not running: start it again with \
             `ignite recovery instant {name} --resume`"
        ));
    }
    Some(said)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn session() -> (Qmp, UnixStream) {
        let (ours, qemu) = UnixStream::pair().unwrap();
        let q = Qmp {
            reader: BufReader::new(ours.try_clone().unwrap()),
            stream: ours,
        };
        (q, qemu)
    }

    #[test]
    fn a_qemu_that_quit_before_the_command_answers_with_its_closed_socket() {
        let (mut q, qemu) = session();
        drop(qemu);
        // The write meets a closed socket (before: "Broken pipe (os error 32)").
        assert!(q.execute("quit").is_ok());
        let (mut q, qemu) = session();
        let reader = std::thread::spawn(move || {
            let mut line = String::new();
            BufReader::new(&qemu).read_line(&mut line).unwrap();
            line
        });
        assert!(q.execute("quit").is_ok(), "EOF after the command");
        assert!(reader.join().unwrap().contains("\"quit\""));
    }

    #[test]
    fn a_qemu_that_ended_early_is_explained_by_its_own_error() {
        let dir = tempfile::tempdir().unwrap();
        let paths = Paths::new_at(&dir.path().join("web2"));
        std::fs::create_dir(&paths.dir).unwrap();
        assert!(qemu_said(&paths).is_none(), "no log, nothing said");
        std::fs::write(
            paths.supervisor_log(),
            "guest web2: engine qemu\nqemu-system-x86_64: -blockdev {}: Could not open backing \
             file: Failed to connect to '/x/web2/disk0.nbd.sock': No such file or directory\n",
        )
        .unwrap();
        let Err(e) = Qmp::connect(&paths, Duration::ZERO) else {
            panic!("connected to a QMP socket that does not exist");
        };
        let e = format!("{e:#}");
        assert!(
            e.contains("QEMU: -blockdev {}: Could not open backing file"),
            "{e}"
        );
        assert!(e.contains("`ignite recovery instant web2 --resume`"), "{e}");
    }

    #[test]
    fn errors_and_returns_of_a_live_qemu_are_passed_on() {
        let (mut q, mut qemu) = session();
        let peer = std::thread::spawn(move || {
            let mut r = BufReader::new(qemu.try_clone().unwrap());
            let mut line = String::new();
            r.read_line(&mut line).unwrap();
            writeln!(qemu, r#"{{"event": "STOP"}}"#).unwrap();
            writeln!(qemu, r#"{{"return": {{"running": false}}}}"#).unwrap();
            line.clear();
            r.read_line(&mut line).unwrap();
            writeln!(
                qemu,
                r#"{{"error": {{"class": "GenericError", "desc": "no such bitmap"}}}}"#
            )
            .unwrap();
        });
        let v = q.call("query-status", serde_json::Value::Null).unwrap();
        assert_eq!(v["running"], false);
        let e = q.execute("block-dirty-bitmap-remove").unwrap_err();
        assert!(format!("{e}").contains("no such bitmap"), "{e}");
        peer.join().unwrap();
    }
}
