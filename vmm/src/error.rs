//! Errors a user can act on: each names the object, what is wrong and what to do.

use std::path::PathBuf;

pub type Result<T> = std::result::Result<T, Error>;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("/dev/kvm: {0}; load the kvm module (kvm_intel/kvm_amd) and run as a user that may open /dev/kvm")]
    NoKvm(std::io::Error),
    #[error("KVM: {what} failed: {err}; this host's KVM lacks a feature the monitor needs")]
    Kvm {
        what: &'static str,
        err: kvm_ioctls::Error,
    },
    #[error("kernel {path}: {err}; pass --kernel with a readable bzImage or ELF image")]
    KernelUnreadable { path: PathBuf, err: std::io::Error },
    #[error("kernel {path}: {msg}; pass a bzImage (Linux) or a 64-bit ELF image")]
    KernelFormat { path: PathBuf, msg: String },
    #[error("initrd {path}: {msg}")]
    Initrd { path: PathBuf, msg: String },
    #[error(
        "command line is {len} bytes, more than the {max} the kernel accepts; shorten --cmdline"
    )]
    CmdlineTooLong { len: usize, max: usize },
    #[error("memory size {0} MiB is out of range; use between 16M and 64G (e.g. --mem 512M)")]
    MemorySize(u64),
    #[error("{0} vCPUs is out of range; use between 1 and {max}", max = crate::layout::MAX_CPUS)]
    CpuCount(u8),
    #[error("guest memory: {0}")]
    Memory(String),
    #[error(
        "disk {path}: {err}; check the path and its permissions (append ,ro for read-only use)"
    )]
    DiskUnreadable { path: PathBuf, err: std::io::Error },
    #[error("disk {path}: {msg}")]
    Disk { path: PathBuf, msg: String },
    #[error("disk {path}: cannot boot from it: {msg}")]
    DiskBoot { path: PathBuf, msg: String },
    #[error("change tracking map {path}: {msg}")]
    ChangeMap { path: PathBuf, msg: String },
    #[error("tap {name}: {err}; run as root (CAP_NET_ADMIN) and check that /dev/net/tun exists")]
    Tap { name: String, err: std::io::Error },
    #[error("bridge {name}: {msg}")]
    Bridge { name: String, msg: String },
    #[error("serial output {path}: {err}; choose a writable file for --serial file:PATH")]
    SerialFile { path: PathBuf, err: std::io::Error },
    #[error(
        "too many PCI devices ({0}); at most 248 disks and NICs together (31 slots of 8 functions)"
    )]
    TooManyDevices(usize),
    #[error("{0} VIO (IDE) drives (disks and CD-ROMs) requested; the PIIX IDE controller takes at most 4 (two channels of two drives): put the other disks on AVIO (virtio-blk), CD-ROMs on AVIO (virtio-scsi)")]
    TooManyVioDisks(usize),
    #[error("{0} VIO (NE2000) NICs requested; at most 4 are supported: put the others on AVIO (virtio-net)")]
    TooManyVioNics(usize),
    #[error("medium {path}: {msg}")]
    Medium { path: PathBuf, msg: String },
    #[error("{0}")]
    Media(String),
    #[error("network boot: {0}")]
    Netboot(String),
    #[error("benchmark: {0}")]
    Bench(String),
    #[error("{0}")]
    Io(#[from] std::io::Error),
}

impl Error {
    pub(crate) fn kvm(what: &'static str) -> impl FnOnce(kvm_ioctls::Error) -> Error {
        move |err| Error::Kvm { what, err }
    }
}
