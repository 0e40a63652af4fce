//! Rendering a profile for one client: the disk chosen, exact partition ranges, the hostname,
//! and the ordered steps the install agent runs.

use crate::error::RenderError;
use crate::model::*;
use crate::size::{human, Size, MIB};
use crate::template::{expand, hostname_problem, normalize_mac};
use serde::{Deserialize, Serialize};

/// Bytes per logical sector of a disk that does not say (and of disk images).
pub const SECTOR: u64 = 512;

/// Space GPT keeps at the end of a disk with `sector`-byte sectors: the 16 KiB entry array
/// and the backup header's sector.
fn gpt_tail(sector: u64) -> u64 {
    16384 + sector
}

fn default_sector() -> u64 {
    SECTOR
}

impl Default for DiskFact {
    fn default() -> DiskFact {
        DiskFact {
            path: String::new(),
            size: 0,
            serial: None,
            sector_size: SECTOR,
            ids: Vec::new(),
            rotational: None,
            transport: None,
        }
    }
}

/// What the server knows about a client when it renders its plan.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClientFacts {
    /// The boot NIC's MAC address (`52:54:00:12:34:56`).
    pub mac: String,
    /// The client's disks, in the order it lists them.
    pub disks: Vec<DiskFact>,
    /// The per-client hostname (the template's `{name}`).
    pub hostname: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DiskFact {
    pub path: String,
    /// Size in bytes.
    pub size: u64,
    pub serial: Option<String>,
    /// Logical sector size in bytes (512, or 4096 on 4K-native disks): the unit of the
    /// partition table.
    #[serde(default = "default_sector")]
    pub sector_size: u64,
    /// Its `/dev/disk/by-id/` names (without the directory).
    #[serde(default)]
    pub ids: Vec<String>,
    /// Spinning (true) or solid-state, if the kernel says.
    #[serde(default)]
    pub rotational: Option<bool>,
    #[serde(default)]
    pub transport: Option<Transport>,
}

/// Everything the install agent needs, in order. Serialized as JSON for the agent.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct InstallPlan {
    pub profile: String,
    /// The client's MAC, as 12 lower-case hex digits.
    pub mac: String,
    pub hostname: String,
    pub archive: ArchiveRef,
    pub disk: DiskPlan,
    pub steps: Vec<Step>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DiskPlan {
    pub path: String,
    pub size_bytes: u64,
    pub sector_size: u64,
    pub table: PartitionTable,
    pub partitions: Vec<PartitionPlan>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PartitionPlan {
    /// 1-based partition number.
    pub number: u32,
    /// GPT partition name.
    pub name: String,
    pub kind: PartKind,
    pub type_guid: String,
    /// The partition's device (`/dev/vda1`, `/dev/nvme0n1p1`, `/dev/disk/by-id/X-part1`).
    pub device: String,
    pub start_sector: u64,
    /// Inclusive, as sgdisk takes it.
    pub end_sector: u64,
    pub start_bytes: u64,
    pub size_bytes: u64,
    pub fs: Option<Fs>,
    pub mount: Option<String>,
    pub options: Vec<String>,
    /// GPT attribute bit 2: Syslinux's gptmbr.bin boots the first partition that has it
    /// (set on the partition holding /boot for extlinux on BIOS).
    #[serde(default)]
    pub legacy_bios_bootable: bool,
    /// Said when the profile's size was not what the partition got: every partition starts
    /// and ends on a 1 MiB boundary (a multiple of any sector size), so a size is rounded
    /// up to whole MiB, as parted does with `unit MiB` and optimal alignment.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub note: Option<String>,
}

impl DiskPlan {
    /// The partition whose file system holds `/boot`: the one mounted there, else root.
    pub fn boot_partition(&self) -> Option<&PartitionPlan> {
        holding_boot(&self.partitions)
    }
}

fn holding_boot(parts: &[PartitionPlan]) -> Option<&PartitionPlan> {
    ["/boot", "/"]
        .iter()
        .find_map(|m| parts.iter().find(|p| p.mount.as_deref() == Some(*m)))
}

/// One thing the agent does. Paths in `mount` are inside the target root.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "step", rename_all = "snake_case")]
pub enum Step {
    /// Write a fresh GPT with `disk.partitions`.
    Partition {
        disk: String,
    },
    /// Make a file system (or swap space) on a partition.
    Format {
        device: String,
        fs: Fs,
        label: String,
    },
    /// Mount a partition under the target root (parents before children).
    Mount {
        device: String,
        mount: String,
        fs: Fs,
        options: Vec<String>,
    },
    /// Stream the golden archive into the target root.
    Extract {
        archive: ArchiveRef,
    },
    /// Write /etc/fstab for every mounted partition and swap (by UUID).
    Fstab,
    Hostname {
        hostname: String,
    },
    MachineId,
    SshHostKeys,
    RootAuthorizedKeys {
        keys: Vec<String>,
    },
    User {
        user: User,
    },
    /// Write the network configuration. `boot` interfaces match `mac`.
    Network {
        format: NetFormat,
        mac: String,
        interfaces: Vec<Interface>,
    },
    BootLoader {
        loader: Loader,
        firmware: Firmware,
        disk: String,
    },
    /// A shell command run in the installed system (chroot), in profile order.
    Hook {
        index: usize,
        command: String,
    },
    /// Unmount everything, children first.
    Unmount,
}

impl Profile {
    /// Render this profile for one client.
    pub fn render(&self, facts: &ClientFacts) -> Result<InstallPlan, RenderError> {
        let profile = self.name.clone();
        let mac = normalize_mac(&facts.mac).ok_or_else(|| RenderError::BadMac {
            profile: profile.clone(),
            mac: facts.mac.clone(),
        })?;
        let hostname =
            expand(&self.hostname_template, &mac, facts.hostname.as_deref()).map_err(|_| {
                RenderError::NoClientHostname {
                    profile: profile.clone(),
                    template: self.identity.hostname.clone(),
                }
            })?;
        if let Some(why) = hostname_problem(&hostname) {
            return Err(RenderError::BadHostname {
                profile,
                hostname,
                why,
            });
        }
        let disk = self.pick_disk(facts)?;
        let sector = disk.sector_size;
        if !(512..=4096).contains(&sector) || !sector.is_power_of_two() {
            return Err(RenderError::BadSectorSize {
                profile,
                disk: disk.path.clone(),
                sector,
            });
        }
        let mut parts = self.layout(disk)?;
        if self.boot.loader == Loader::Extlinux
            && matches!(self.boot.firmware, Firmware::Bios | Firmware::Both)
        {
            let n = holding_boot(&parts).map(|p| p.number);
            if let Some(p) = parts.iter_mut().find(|p| Some(p.number) == n) {
                p.legacy_bios_bootable = true;
            }
        }
        let disk_plan = DiskPlan {
            path: disk.path.clone(),
            size_bytes: disk.size,
            sector_size: sector,
            table: self.disk.table,
            partitions: parts,
        };

        let mut steps = vec![Step::Partition {
            disk: disk.path.clone(),
        }];
        for p in &disk_plan.partitions {
            if let Some(fs) = p.fs {
                steps.push(Step::Format {
                    device: p.device.clone(),
                    fs,
                    label: p.name.clone(),
                });
            }
        }
        let mut mounts: Vec<&PartitionPlan> = disk_plan
            .partitions
            .iter()
            .filter(|p| p.mount.is_some())
            .collect();
        mounts.sort_by_key(|p| {
            let m = p.mount.as_deref().unwrap_or("/");
            (m.trim_end_matches('/').matches('/').count(), m.to_string())
        });
        for p in &mounts {
            steps.push(Step::Mount {
                device: p.device.clone(),
                mount: p.mount.clone().unwrap_or_default(),
                fs: p.fs.unwrap_or(Fs::Ext4),
                options: p.options.clone(),
            });
        }
        let has_root = !mounts.is_empty();
        if has_root {
            steps.push(Step::Extract {
                archive: self.archive.clone(),
            });
            steps.push(Step::Fstab);
            steps.push(Step::Hostname {
                hostname: hostname.clone(),
            });
            if self.identity.fresh_machine_id {
                steps.push(Step::MachineId);
            }
            if self.identity.fresh_ssh_host_keys {
                steps.push(Step::SshHostKeys);
            }
            if !self.identity.root_authorized_keys.is_empty() {
                steps.push(Step::RootAuthorizedKeys {
                    keys: self.identity.root_authorized_keys.clone(),
                });
            }
            for u in &self.identity.users {
                steps.push(Step::User { user: u.clone() });
            }
            steps.push(Step::Network {
                format: self.network.format,
                mac: mac.clone(),
                interfaces: self.network.interfaces.clone(),
            });
            if self.boot.loader != Loader::None {
                steps.push(Step::BootLoader {
                    loader: self.boot.loader,
                    firmware: self.boot.firmware,
                    disk: disk.path.clone(),
                });
            }
            for (i, h) in self.hooks.iter().enumerate() {
                steps.push(Step::Hook {
                    index: i + 1,
                    command: h.clone(),
                });
            }
            steps.push(Step::Unmount);
        }
        Ok(InstallPlan {
            profile: self.name.clone(),
            mac,
            hostname,
            archive: self.archive.clone(),
            disk: disk_plan,
            steps,
        })
    }

    fn pick_disk<'f>(&self, facts: &'f ClientFacts) -> Result<&'f DiskFact, RenderError> {
        let sel = &self.disk.select;
        let matching: Vec<&DiskFact> = facts
            .disks
            .iter()
            .filter(|d| {
                sel.path.as_ref().is_none_or(|p| p == &d.path)
                    && sel.by_id.as_ref().is_none_or(|i| d.ids.contains(i))
                    && sel
                        .serial
                        .as_ref()
                        .is_none_or(|s| d.serial.as_deref() == Some(s.as_str()))
                    && sel.size.is_none_or(|r| r.contains(d.size))
                    && sel.transport.is_none_or(|t| d.transport == Some(t))
                    && sel
                        .media
                        .is_none_or(|m| d.rotational == Some(m == Media::Hdd))
            })
            .collect();
        let found = match sel.pick {
            Pick::First => matching.first().copied(),
            // The smallest the layout fits on; if none fits, the largest says by how much.
            Pick::Smallest => matching
                .iter()
                .filter(|d| self.layout(d).is_ok())
                .min_by_key(|d| d.size)
                .or_else(|| matching.iter().max_by_key(|d| d.size))
                .copied(),
        };
        found.ok_or_else(|| {
            let mut wanted = Vec::new();
            if let Some(p) = &sel.path {
                wanted.push(format!("path {p}"));
            }
            if let Some(i) = &sel.by_id {
                wanted.push(format!("by-id {i}"));
            }
            if let Some(s) = &sel.serial {
                wanted.push(format!("serial {s}"));
            }
            if let Some(r) = &sel.size {
                wanted.push(format!("size {r}"));
            }
            if let Some(t) = sel.transport {
                wanted.push(format!("transport {}", t.name()));
            }
            if let Some(m) = sel.media {
                wanted.push(format!(
                    "media {}",
                    if m == Media::Ssd { "ssd" } else { "hdd" }
                ));
            }
            if wanted.is_empty() {
                wanted.push("any disk".into());
            }
            let have: Vec<String> = facts.disks.iter().map(describe_disk).collect();
            RenderError::NoMatchingDisk {
                profile: self.name.clone(),
                wanted: wanted.join(", "),
                have: if have.is_empty() {
                    "no disks".into()
                } else {
                    have.join("; ")
                },
            }
        })
    }

    /// Exact, 1 MiB aligned partition ranges on `disk`.
    fn layout(&self, disk: &DiskFact) -> Result<Vec<PartitionPlan>, RenderError> {
        let parts = &self.disk.partitions;
        let first = MIB;
        let sector = disk.sector_size;
        let end = disk.size.saturating_sub(gpt_tail(sector)) / MIB * MIB;
        let usable = end.saturating_sub(first);
        let fixed: u64 = parts
            .iter()
            .map(|p| match p.size {
                Size::Bytes(b) => b.div_ceil(MIB) * MIB,
                _ => 0,
            })
            .sum();
        let pct_total: u64 = parts
            .iter()
            .map(|p| match p.size {
                Size::Percent(n) => n as u64,
                _ => 0,
            })
            .sum();
        let n_pct = parts
            .iter()
            .filter(|p| matches!(p.size, Size::Percent(_)))
            .count() as u64;
        let has_rest = parts.iter().any(|p| p.size == Size::Rest);
        let mut sizes: Vec<u64> = parts
            .iter()
            .map(|p| match p.size {
                Size::Bytes(b) => b.div_ceil(MIB) * MIB,
                Size::Percent(n) => {
                    ((usable as u128 * n as u128 / 100) as u64 / MIB * MIB).max(MIB)
                }
                Size::Rest => 0,
            })
            .collect();
        let taken: u64 = sizes.iter().sum();
        let rest_min = if has_rest { MIB } else { 0 };
        if taken + rest_min > usable || usable == 0 {
            // The smallest usable space where the fixed parts, the percentages and 1 MiB of
            // rest fit, plus the 1 MiB head and the GPT tail (rounded to a MiB).
            let need_rest = fixed + rest_min + n_pct * MIB;
            let need_usable = if pct_total >= 100 {
                need_rest.max(MIB) * 100
            } else {
                (need_rest as u128 * 100).div_ceil(100 - pct_total as u128) as u64
            };
            let need = need_usable.div_ceil(MIB) * MIB + 2 * MIB;
            return Err(RenderError::DiskTooSmall {
                profile: self.name.clone(),
                disk: disk.path.clone(),
                have: human(disk.size),
                need: human(need),
                need_bytes: need,
            });
        }
        if let Some(i) = parts.iter().position(|p| p.size == Size::Rest) {
            sizes[i] = usable - taken;
        }
        let mut at = first;
        let mut out = Vec::new();
        for (i, (p, size)) in parts.iter().zip(sizes).enumerate() {
            let number = i as u32 + 1;
            let note = match p.size {
                Size::Bytes(b) if b != size => Some(format!(
                    "size {} rounded up to {}: partitions start and end on 1 MiB boundaries",
                    human(b),
                    human(size)
                )),
                _ => None,
            };
            out.push(PartitionPlan {
                number,
                name: p.name.clone(),
                kind: p.kind,
                type_guid: p.kind.type_guid().to_string(),
                device: partition_device(&disk.path, number),
                start_sector: at / sector,
                end_sector: (at + size) / sector - 1,
                start_bytes: at,
                size_bytes: size,
                fs: p.fs,
                mount: p.mount.clone(),
                options: p.options.clone(),
                legacy_bios_bootable: false,
                note,
            });
            at += size;
        }
        Ok(out)
    }
}

/// `/dev/sda 8 GiB sata ssd serial X`: what a disk is, for errors.
fn describe_disk(d: &DiskFact) -> String {
    let mut out = format!("{} {}", d.path, human(d.size));
    if let Some(t) = d.transport {
        out += &format!(" {}", t.name());
    }
    match d.rotational {
        Some(true) => out += " hdd",
        Some(false) => out += " ssd",
        None => {}
    }
    if let Some(s) = &d.serial {
        out += &format!(" serial {s}");
    }
    out
}

/// The device node of partition `n` of `disk`.
pub fn partition_device(disk: &str, n: u32) -> String {
    if disk.starts_with("/dev/disk/by-") {
        format!("{disk}-part{n}")
    } else if disk.ends_with(|c: char| c.is_ascii_digit()) {
        format!("{disk}p{n}")
    } else {
        format!("{disk}{n}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn partition_devices() {
        assert_eq!(partition_device("/dev/vda", 2), "/dev/vda2");
        assert_eq!(partition_device("/dev/nvme0n1", 1), "/dev/nvme0n1p1");
        assert_eq!(partition_device("/dev/mmcblk0", 3), "/dev/mmcblk0p3");
        assert_eq!(
            partition_device("/dev/disk/by-id/virtio-abc", 1),
            "/dev/disk/by-id/virtio-abc-part1"
        );
    }
}
