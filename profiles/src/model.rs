//! The profile as loaded and checked: plain data, defaults filled in.

use crate::size::{Size, SizeRange};
use serde::{Deserialize, Serialize};
use std::net::IpAddr;

/// A checked install profile (after `extends` merging and validation).
#[derive(Debug, Clone)]
pub struct Profile {
    /// The file stem of the profile (`web` for `web.toml`).
    pub name: String,
    pub description: Option<String>,
    pub archive: ArchiveRef,
    pub disk: DiskSpec,
    pub identity: Identity,
    pub network: Network,
    pub boot: Boot,
    /// A software RAID across the disks (`[raid]`), made of the `raid` partition of each.
    pub raid: Option<RaidSpec>,
    /// An LVM volume group (`[lvm]`) on the RAID array, or on the `lvm` partitions.
    pub lvm: Option<LvmSpec>,
    /// Shell commands run in the installed system (chroot) before first boot, in order.
    pub hooks: Vec<String>,
    /// The profiles this one was built from, deepest base first, this one last.
    pub chain: Vec<String>,
    pub(crate) hostname_template: Vec<crate::template::Piece>,
}

/// The golden archive: `debian-12` (its latest snapshot) or `debian-12@<id prefix>`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ArchiveRef {
    pub name: String,
    pub id: Option<String>,
}

impl std::fmt::Display for ArchiveRef {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.id {
            Some(id) => write!(f, "{}@{id}", self.name),
            None => f.write_str(&self.name),
        }
    }
}

/// Which client disk to install on: every given criterion must match; of the matching disks
/// the first (in the client's order) wins, or with `pick = "smallest"` the smallest the
/// layout fits on; no criterion means the client's first disk.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct DiskSelect {
    pub path: Option<String>,
    /// A `/dev/disk/by-id/` name (`nvme-Samsung_SSD_980_S64ANS0T1234`), as udev makes it.
    #[serde(default)]
    pub by_id: Option<String>,
    pub serial: Option<String>,
    pub size: Option<SizeRange>,
    #[serde(default)]
    pub transport: Option<Transport>,
    #[serde(default)]
    pub media: Option<Media>,
    #[serde(default)]
    pub pick: Pick,
}

/// How a disk is attached, as the agent tells it from where the kernel found it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Transport {
    Nvme,
    Sata,
    Sas,
    /// Any other SCSI host (parallel SCSI, RAID HBAs that hide the disks' transport).
    Scsi,
    Virtio,
    Usb,
}

impl Transport {
    pub const ALL: [(&'static str, Transport); 6] = [
        ("nvme", Transport::Nvme),
        ("sata", Transport::Sata),
        ("sas", Transport::Sas),
        ("scsi", Transport::Scsi),
        ("virtio", Transport::Virtio),
        ("usb", Transport::Usb),
    ];

    pub fn name(self) -> &'static str {
        Transport::ALL
            .iter()
            .find(|(_, t)| *t == self)
            .map_or("?", |(n, _)| n)
    }
}

/// Spinning or solid-state (the kernel's `queue/rotational`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Media {
    Ssd,
    Hdd,
}

/// Which of several matching disks to take.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Pick {
    /// The first in the client's order.
    #[default]
    First,
    /// The smallest the layout fits on (keeps the big disks for data).
    Smallest,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PartitionTable {
    Gpt,
}

#[derive(Debug, Clone)]
pub struct DiskSpec {
    pub select: DiskSelect,
    pub table: PartitionTable,
    /// How many disks get this layout (`count`, default 1): the first that match, or the
    /// smallest with `pick = "smallest"`. Each gets the same partitions, sized for the
    /// smallest of them, as a RAID1 mirror needs.
    pub count: usize,
    pub partitions: Vec<PartitionSpec>,
}

/// `[raid]`: one md array over the `raid` partition of every disk.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RaidSpec {
    /// The RAID level; 1 (a mirror: any one disk holds everything) is the one supported.
    pub level: u32,
}

/// `[lvm]`: a volume group and its logical volumes.
#[derive(Debug, Clone)]
pub struct LvmSpec {
    pub vg: String,
    /// Logical volumes, as partitions are written (name, size, fs, mount, options).
    pub volumes: Vec<PartitionSpec>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PartKind {
    /// Linux file system data (also used for partitions without a file system).
    Linux,
    /// EFI system partition (vfat).
    Efi,
    /// BIOS boot partition, for GRUB's core image on BIOS + GPT.
    BiosBoot,
    Swap,
    /// A member of the `[raid]` array (mdadm superblock, no file system of its own).
    Raid,
    /// An LVM physical volume of the `[lvm]` volume group (without `[raid]`).
    Lvm,
}

impl PartKind {
    /// The GPT partition type GUID.
    pub fn type_guid(self) -> &'static str {
        match self {
            PartKind::Linux => "0FC63DAF-8483-4772-8E79-3D69D8477DE4",
            PartKind::Efi => "C12A7328-F81F-11D2-BA4B-00A0C93EC93B",
            PartKind::BiosBoot => "21686148-6449-6E6F-744E-656564454649",
            PartKind::Swap => "0657FD6D-A4AB-43C4-84E5-0933C84B4F4F",
            PartKind::Raid => "A19D880F-05FC-4D3B-A006-743F0F84911E",
            PartKind::Lvm => "E6D6D379-F507-44C2-A23C-238F2A3DF928",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Fs {
    Ext4,
    Xfs,
    Vfat,
    Swap,
}

#[derive(Debug, Clone)]
pub struct PartitionSpec {
    /// GPT partition name.
    pub name: String,
    pub kind: PartKind,
    pub size: Size,
    pub fs: Option<Fs>,
    pub mount: Option<String>,
    pub options: Vec<String>,
}

#[derive(Debug, Clone)]
pub struct Identity {
    /// The template as written (`web-{mac6}`).
    pub hostname: String,
    pub fresh_machine_id: bool,
    pub fresh_ssh_host_keys: bool,
    pub root_authorized_keys: Vec<String>,
    pub users: Vec<User>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct User {
    pub name: String,
    pub uid: Option<u32>,
    pub groups: Vec<String>,
    pub shell: String,
    pub authorized_keys: Vec<String>,
}

/// The network configuration format written into the installed system.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum NetFormat {
    /// Detect what the image uses (netplan, then systemd-networkd, then ifupdown).
    Auto,
    Ifupdown,
    Networkd,
    Netplan,
}

#[derive(Debug, Clone)]
pub struct Network {
    pub format: NetFormat,
    pub interfaces: Vec<Interface>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Interface {
    /// The interface name in the installed system, or `boot`: the NIC the client booted from
    /// (matched by its MAC address).
    pub name: String,
    pub dhcp: bool,
    /// `address/prefix`, for a static configuration.
    pub address: Option<String>,
    pub gateway: Option<IpAddr>,
    pub dns: Vec<IpAddr>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Loader {
    Grub,
    Extlinux,
    /// No boot loader: the monitor boots the guest's kernel directly.
    None,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Firmware {
    Bios,
    Uefi,
    Both,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Boot {
    pub loader: Loader,
    pub firmware: Firmware,
}
