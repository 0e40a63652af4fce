//! What a VM is made of. Parsing of user strings (sizes, `path,ro`, `tap=NAME`) lives here
//! so that the CLI and tests share one set of rules and error messages.

use std::io::Write;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

#[derive(Clone)]
pub enum KernelImage {
    /// A bzImage or ELF file.
    Path(PathBuf),
    /// An in-memory ELF image (the embedded guest test programs).
    Bytes { name: String, data: &'static [u8] },
    /// Fetched by the monitor's network boot firmware on the first NIC (`--boot net`);
    /// `VmConfig::initrd` is not used, `cmdline` only if the boot file is a kernel itself.
    Net,
}

impl KernelImage {
    pub fn name(&self) -> String {
        match self {
            KernelImage::Path(p) => p.display().to_string(),
            KernelImage::Bytes { name, .. } => name.clone(),
            KernelImage::Net => "network boot".into(),
        }
    }
}

/// A byte buffer shared with the serial device, for tests and the selftest to read output.
#[derive(Clone, Default)]
pub struct SharedBuffer(pub Arc<Mutex<Vec<u8>>>);

impl SharedBuffer {
    pub fn contents(&self) -> String {
        String::from_utf8_lossy(&self.0.lock().unwrap_or_else(|e| e.into_inner())).into_owned()
    }
}

impl Write for SharedBuffer {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

#[derive(Clone)]
pub enum SerialTarget {
    Stdout,
    File(PathBuf),
    Buffer(SharedBuffer),
    /// A Unix socket the monitor listens on; one client at a time gets output and sends input.
    Unix(PathBuf),
    /// A Unix socket as above, with all output also appended to a log file (a detached
    /// guest's console: attach any time, read what was missed in the log), which moves to
    /// `<log>.1` at `devices::console::LOG_CAP`.
    LoggedUnix {
        socket: PathBuf,
        log: PathBuf,
    },
    /// Output is discarded.
    Null,
}

impl SerialTarget {
    /// `stdio` or `file:PATH`.
    pub fn parse(s: &str) -> Result<SerialTarget, String> {
        match s {
            "stdio" => Ok(SerialTarget::Stdout),
            "null" => Ok(SerialTarget::Null),
            _ => match s.strip_prefix("file:") {
                Some(p) if !p.is_empty() => Ok(SerialTarget::File(p.into())),
                _ => Err(format!(
                    "serial target {s:?} is not valid; use stdio, null or file:PATH"
                )),
            },
        }
    }
}

#[derive(Clone, Debug)]
pub struct DiskConfig {
    pub path: PathBuf,
    pub read_only: bool,
    /// Open the image with O_DIRECT (bypassing the host page cache); requests whose buffers
    /// or offsets are not 4 KiB aligned go through the page cache instead.
    pub direct: bool,
    /// Change-tracking granularity in bytes (a power of two, at least 4 KiB), or None to
    /// not track (read-only disks are never tracked).
    pub track_changes: Option<u64>,
}

/// Default change-tracking granularity: 64 KiB.
pub const DEFAULT_TRACK_GRANULARITY: u64 = 64 << 10;

impl DiskConfig {
    /// `PATH[,ro][,direct]`. Writable disks get change tracking at the default granularity.
    pub fn parse(s: &str) -> Result<DiskConfig, String> {
        let mut parts = s.split(',');
        let path = parts.next().unwrap_or("");
        let (mut ro, mut direct) = (false, false);
        for opt in parts {
            match opt {
                "ro" => ro = true,
                "rw" => ro = false,
                "direct" => direct = true,
                _ => {
                    return Err(format!(
                        "disk {s:?}: unknown option {opt:?}; use PATH[,ro][,direct]"
                    ))
                }
            }
        }
        if path.is_empty() {
            return Err(format!("disk {s:?}: empty path; use PATH[,ro][,direct]"));
        }
        Ok(DiskConfig {
            path: path.into(),
            read_only: ro,
            direct,
            track_changes: (!ro).then_some(DEFAULT_TRACK_GRANULARITY),
        })
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum NetBackend {
    /// Attach to the tap of that name, creating it if it does not exist.
    Tap(String),
    /// Create a tap (named by the kernel) and add it to this existing bridge.
    Bridge(String),
}

#[derive(Clone, Debug)]
pub struct NetConfig {
    pub backend: NetBackend,
    pub mac: [u8; 6],
}

impl NetConfig {
    /// `tap=NAME` or `bridge=BR`, optionally `,mac=52:54:...`. Without a MAC, one is derived
    /// from `index` (locally administered, unicast).
    pub fn parse(s: &str, index: usize) -> Result<NetConfig, String> {
        let mut backend = None;
        let mut mac = [0x52, 0x54, 0x00, 0x1e, 0x00, index as u8];
        for part in s.split(',') {
            match part.split_once('=') {
                Some(("tap", n)) if valid_ifname(n) => backend = Some(NetBackend::Tap(n.into())),
                Some(("bridge", n)) if valid_ifname(n) => backend = Some(NetBackend::Bridge(n.into())),
                Some(("mac", m)) => mac = parse_mac(m).ok_or_else(|| format!("net {s:?}: MAC {m:?} is not like 52:54:00:12:34:56"))?,
                _ => return Err(format!("net {s:?}: use tap=NAME or bridge=BR (interface names up to 15 characters), optionally ,mac=M")),
            }
        }
        let backend = backend.ok_or_else(|| format!("net {s:?}: say tap=NAME or bridge=BR"))?;
        Ok(NetConfig { backend, mac })
    }
}

fn valid_ifname(n: &str) -> bool {
    !n.is_empty()
        && n.len() < 16
        && n.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b))
}

pub fn parse_mac(m: &str) -> Option<[u8; 6]> {
    let mut out = [0u8; 6];
    let mut parts = m.split(':');
    for b in out.iter_mut() {
        *b = u8::from_str_radix(parts.next()?, 16).ok()?;
    }
    parts.next().is_none().then_some(out)
}

/// Which bus a removable-media drive sits on.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MediaBus {
    /// ATAPI on the PIIX IDE channels (CD-ROMs only).
    Vio,
    /// A LUN of the virtio-scsi controller.
    Avio,
}

pub use crate::scsi::DriveKind;

/// A CD-ROM or tape drive, empty or with a medium in it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DriveConfig {
    pub kind: DriveKind,
    pub bus: MediaBus,
    pub medium: Option<crate::scsi::MediumConfig>,
}

impl DriveConfig {
    /// `cd|tape[,vio|avio][,medium=PATH][,ro]`: CD-ROMs default to VIO (ATAPI), tapes are
    /// AVIO (virtio-scsi) only; an ISO is always read-only.
    pub fn parse(s: &str) -> Result<DriveConfig, String> {
        let usage = "use cd|tape[,vio|avio][,medium=PATH][,ro]";
        let mut parts = s.split(',');
        let kind = match parts.next() {
            Some("cd") => DriveKind::Cdrom,
            Some("tape") => DriveKind::Tape,
            _ => return Err(format!("drive {s:?}: say cd or tape first; {usage}")),
        };
        let mut bus = match kind {
            DriveKind::Cdrom => MediaBus::Vio,
            DriveKind::Tape => MediaBus::Avio,
        };
        let (mut path, mut ro) = (None, kind == DriveKind::Cdrom);
        for opt in parts {
            match opt.split_once('=') {
                None if opt == "vio" => bus = MediaBus::Vio,
                None if opt == "avio" => bus = MediaBus::Avio,
                None if opt == "ro" => ro = true,
                Some(("medium", p)) if !p.is_empty() => path = Some(PathBuf::from(p)),
                _ => return Err(format!("drive {s:?}: unknown option {opt:?}; {usage}")),
            }
        }
        if kind == DriveKind::Tape && bus == MediaBus::Vio {
            return Err(format!(
                "drive {s:?}: tape drives are on AVIO (virtio-scsi) only; drop ,vio"
            ));
        }
        if path.is_none() && ro && kind == DriveKind::Tape {
            return Err(format!("drive {s:?}: ,ro needs a medium=PATH"));
        }
        Ok(DriveConfig {
            kind,
            bus,
            medium: path.map(|path| crate::scsi::MediumConfig {
                path,
                read_only: ro,
            }),
        })
    }
}

#[derive(Clone)]
pub struct VmConfig {
    pub kernel: KernelImage,
    pub initrd: Option<PathBuf>,
    pub cmdline: String,
    pub mem_bytes: u64,
    pub cpus: u8,
    pub disks: Vec<DiskConfig>,
    /// Disks on the emulated IDE controller (VIO), at most 4.
    pub vio_disks: Vec<DiskConfig>,
    pub nets: Vec<NetConfig>,
    /// NICs of the emulated NE2000 model (VIO), at most 4.
    pub vio_nets: Vec<NetConfig>,
    /// Removable-media drives: CD-ROMs named cd0, cd1... and tapes st0, st1... in order.
    pub drives: Vec<DriveConfig>,
    pub serial: SerialTarget,
    /// With `SerialTarget::Stdout`: forward the monitor's stdin to the guest console.
    pub serial_input: bool,
}

impl VmConfig {
    pub fn new(kernel: KernelImage) -> VmConfig {
        VmConfig {
            kernel,
            initrd: None,
            cmdline: "console=ttyS0 reboot=k panic=1".into(),
            mem_bytes: 512 << 20,
            cpus: 1,
            disks: Vec::new(),
            vio_disks: Vec::new(),
            nets: Vec::new(),
            vio_nets: Vec::new(),
            drives: Vec::new(),
            serial: SerialTarget::Stdout,
            serial_input: false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn disks() {
        let d = DiskConfig::parse("/a/b.img,ro").unwrap();
        assert!(d.read_only && d.track_changes.is_none());
        let d = DiskConfig::parse("x.img").unwrap();
        assert!(!d.read_only && d.track_changes == Some(64 << 10));
        assert!(DiskConfig::parse("x.img,rx").is_err());
        assert!(DiskConfig::parse(",ro").is_err());
        let d = DiskConfig::parse("x.img,ro,direct").unwrap();
        assert!(d.read_only && d.direct);
    }

    #[test]
    fn drives() {
        let d = DriveConfig::parse("cd,medium=/x.iso").unwrap();
        assert_eq!((d.kind, d.bus), (DriveKind::Cdrom, MediaBus::Vio));
        assert!(d.medium.unwrap().read_only, "an ISO is read-only");
        let d = DriveConfig::parse("tape,medium=/t.tap").unwrap();
        assert_eq!(d.bus, MediaBus::Avio);
        assert!(!d.medium.unwrap().read_only);
        assert_eq!(DriveConfig::parse("cd,avio").unwrap().medium, None);
        for bad in ["dvd", "tape,vio", "cd,medium=", "tape,ro", "cd,fast"] {
            assert!(DriveConfig::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn nets() {
        let n = NetConfig::parse("tap=tap0,mac=02:00:00:00:00:01", 0).unwrap();
        assert_eq!(n.backend, NetBackend::Tap("tap0".into()));
        assert_eq!(n.mac, [2, 0, 0, 0, 0, 1]);
        assert_eq!(NetConfig::parse("bridge=br0", 3).unwrap().mac[5], 3);
        assert!(NetConfig::parse("tap=", 0).is_err());
        assert!(NetConfig::parse("tap=a/b", 0).is_err());
        assert!(NetConfig::parse("tap=x,mac=zz", 0).is_err());
        assert!(NetConfig::parse("vde=x", 0).is_err());
        assert!(SerialTarget::parse("file:").is_err());
        assert!(matches!(
            SerialTarget::parse("file:/tmp/x").unwrap(),
            SerialTarget::File(_)
        ));
    }
}
