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

/// Where md puts a RAID member's data (`mdadm --data-offset`): after the 1.2 superblock
/// (4 KiB in) and its write-intent bitmap. Said explicitly so the array's size is known
/// when the plan is made (mdadm's own default depends on the member's size and version).
pub const RAID_DATA_OFFSET: u64 = 4 * MIB;
/// The array device the agent makes (the installed system assembles it under its own
/// number: nothing names it, LVM finds its physical volume by content).
pub const RAID_DEVICE: &str = "/dev/md0";
/// Where LVM puts a physical volume's first extent (`pvcreate --dataalignment 1m`): after
/// its label and metadata area.
pub const PV_DATA_START: u64 = MIB;
/// LVM extent size (`vgcreate -s 4m`, LVM's default): volumes are whole extents.
pub const EXTENT: u64 = 4 * MIB;

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
    /// The disk (the first of several): its partitions, and where the boot loader goes.
    pub disk: DiskPlan,
    /// The other disks of a layout on several disks (`disk.count`): the same partitions,
    /// at the same places, on each.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub more_disks: Vec<DiskPlan>,
    /// The md array, made by the agent once every disk is partitioned.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub raid: Option<RaidPlan>,
    /// The LVM volume group and its volumes, made right after the array (or the partitions).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lvm: Option<LvmPlan>,
    pub steps: Vec<Step>,
}

impl InstallPlan {
    /// Every disk of the plan, the first first.
    pub fn disks(&self) -> impl Iterator<Item = &DiskPlan> {
        std::iter::once(&self.disk).chain(&self.more_disks)
    }

    /// The devices that hold swap space: partitions and volumes.
    pub fn swap_devices(&self) -> Vec<&str> {
        let parts = self
            .disks()
            .flat_map(|d| &d.partitions)
            .filter_map(|p| (p.fs == Some(Fs::Swap)).then_some(p.device.as_str()));
        let vols = self
            .lvm
            .iter()
            .flat_map(|l| &l.volumes)
            .filter_map(|v| (v.fs == Some(Fs::Swap)).then_some(v.device.as_str()));
        parts.chain(vols).collect()
    }
}

/// A software RAID array (`mdadm --create`, metadata 1.2).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RaidPlan {
    pub device: String,
    /// The array's name in its superblock (`<hostname>:<name>`).
    pub name: String,
    pub level: u32,
    /// The member partitions, one per disk.
    pub members: Vec<String>,
    /// Where each member's data starts ([`RAID_DATA_OFFSET`]).
    pub data_offset_bytes: u64,
    /// The array's size: a member's size less the data offset.
    pub size_bytes: u64,
}

/// An LVM volume group on the array or on the `lvm` partitions.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LvmPlan {
    pub vg: String,
    /// Its physical volumes.
    pub pvs: Vec<String>,
    pub extent_bytes: u64,
    /// Whole extents of all physical volumes together.
    pub size_bytes: u64,
    pub volumes: Vec<VolumePlan>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct VolumePlan {
    pub name: String,
    /// `/dev/mapper/<vg>-<name>`.
    pub device: String,
    pub size_bytes: u64,
    /// Takes the extents the others leave (`size = "rest"`): made last, with all of them.
    #[serde(default)]
    pub rest: bool,
    pub fs: Option<Fs>,
    pub mount: Option<String>,
    pub options: Vec<String>,
    /// Said when the profile's size was not what the volume got (whole extents).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub note: Option<String>,
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
        let disks = self.pick_disks(facts)?;
        let sector = disks[0].sector_size;
        for d in &disks {
            if !(512..=4096).contains(&d.sector_size) || !d.sector_size.is_power_of_two() {
                return Err(RenderError::BadSectorSize {
                    profile,
                    disk: d.path.clone(),
                    sector: d.sector_size,
                });
            }
            if d.sector_size != sector {
                return Err(RenderError::MixedSectorSizes {
                    profile,
                    disks: disks
                        .iter()
                        .map(|d| describe_sector(d))
                        .collect::<Vec<_>>()
                        .join(", "),
                });
            }
        }
        // Every disk gets the layout made for the smallest, so RAID members are equal.
        let smallest = disks
            .iter()
            .copied()
            .min_by_key(|d| d.size)
            .unwrap_or(disks[0]);
        let sized = self.sized(smallest, disks.len())?;
        let mut parts = sized.parts;
        if self.boot.loader == Loader::Extlinux
            && matches!(self.boot.firmware, Firmware::Bios | Firmware::Both)
        {
            let n = holding_boot(&parts).map(|p| p.number);
            if let Some(p) = parts.iter_mut().find(|p| Some(p.number) == n) {
                p.legacy_bios_bootable = true;
            }
        }
        let mut disk_plans: Vec<DiskPlan> = disks
            .iter()
            .map(|d| DiskPlan {
                path: d.path.clone(),
                size_bytes: d.size,
                sector_size: sector,
                table: self.disk.table,
                partitions: parts
                    .iter()
                    .map(|p| PartitionPlan {
                        device: partition_device(&d.path, p.number),
                        ..p.clone()
                    })
                    .collect(),
            })
            .collect();
        let members = |kind: PartKind| -> Vec<String> {
            disk_plans
                .iter()
                .flat_map(|d| &d.partitions)
                .filter(|p| p.kind == kind)
                .map(|p| p.device.clone())
                .collect()
        };
        let raid = self.raid.map(|r| RaidPlan {
            device: RAID_DEVICE.into(),
            name: "root".into(),
            level: r.level,
            members: members(PartKind::Raid),
            data_offset_bytes: RAID_DATA_OFFSET,
            size_bytes: sized.raid_size,
        });
        let lvm = self.lvm.as_ref().map(|l| LvmPlan {
            vg: l.vg.clone(),
            pvs: match &raid {
                Some(r) => vec![r.device.clone()],
                None => members(PartKind::Lvm),
            },
            extent_bytes: EXTENT,
            size_bytes: sized.vg_size,
            volumes: l
                .volumes
                .iter()
                .zip(&sized.volumes)
                .map(|(v, &size)| VolumePlan {
                    name: v.name.clone(),
                    device: volume_device(&l.vg, &v.name),
                    size_bytes: size,
                    rest: v.size == Size::Rest,
                    fs: v.fs,
                    mount: v.mount.clone(),
                    options: v.options.clone(),
                    note: match v.size {
                        Size::Bytes(b) if b != size => Some(format!(
                            "size {} rounded up to {}: volumes are whole {} extents",
                            human(b),
                            human(size),
                            human(EXTENT)
                        )),
                        _ => None,
                    },
                })
                .collect(),
        });
        let several = disk_plans.len() > 1;

        let mut steps: Vec<Step> = disk_plans
            .iter()
            .map(|d| Step::Partition {
                disk: d.path.clone(),
            })
            .collect();
        // What gets a file system, and where it is mounted. On several disks, the ESP of
        // disk k (k > 1) is mounted at its mount point with k appended (/boot/efi2), and
        // every ESP is `nofail`: with one disk gone the system still boots from the other.
        struct Fsys {
            device: String,
            fs: Fs,
            label: String,
            mount: Option<String>,
            options: Vec<String>,
        }
        let mut fsys = Vec::new();
        for (k, d) in disk_plans.iter().enumerate() {
            for p in &d.partitions {
                let Some(fs) = p.fs else { continue };
                let mut options = p.options.clone();
                if several && p.kind == PartKind::Efi && !options.iter().any(|o| o == "nofail") {
                    options.push("nofail".into());
                }
                fsys.push(Fsys {
                    device: p.device.clone(),
                    fs,
                    label: p.name.clone(),
                    mount: p.mount.as_ref().map(|m| match k {
                        0 => m.clone(),
                        _ => format!("{m}{}", k + 1),
                    }),
                    options,
                });
            }
        }
        for v in lvm.iter().flat_map(|l| &l.volumes) {
            if let Some(fs) = v.fs {
                fsys.push(Fsys {
                    device: v.device.clone(),
                    fs,
                    label: v.name.clone(),
                    mount: v.mount.clone(),
                    options: v.options.clone(),
                });
            }
        }
        for f in &fsys {
            steps.push(Step::Format {
                device: f.device.clone(),
                fs: f.fs,
                label: f.label.clone(),
            });
        }
        let mut mounts: Vec<&Fsys> = fsys.iter().filter(|f| f.mount.is_some()).collect();
        mounts.sort_by_key(|f| {
            let m = f.mount.as_deref().unwrap_or("/");
            (m.trim_end_matches('/').matches('/').count(), m.to_string())
        });
        for f in &mounts {
            steps.push(Step::Mount {
                device: f.device.clone(),
                mount: f.mount.clone().unwrap_or_default(),
                fs: f.fs,
                options: f.options.clone(),
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
                    disk: disk_plans[0].path.clone(),
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
            disk: disk_plans.remove(0),
            more_disks: disk_plans,
            raid,
            lvm,
            steps,
        })
    }

    /// The `disk.count` disks the layout goes on, in the client's order.
    fn pick_disks<'f>(&self, facts: &'f ClientFacts) -> Result<Vec<&'f DiskFact>, RenderError> {
        let count = self.disk.count.max(1);
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
        let found: Vec<&DiskFact> = match sel.pick {
            Pick::First => matching.iter().take(count).copied().collect(),
            // The smallest the layout fits on; if too few fit, the largest say by how much.
            Pick::Smallest => {
                let mut fit: Vec<&DiskFact> = matching
                    .iter()
                    .filter(|d| self.sized(d, count).is_ok())
                    .copied()
                    .collect();
                if fit.len() < count {
                    fit = matching.clone();
                    fit.sort_by_key(|d| std::cmp::Reverse(d.size));
                } else {
                    fit.sort_by_key(|d| d.size);
                }
                fit.truncate(count);
                // Back in the client's order: the first disk gets the boot loader first.
                facts
                    .disks
                    .iter()
                    .filter(|d| fit.iter().any(|f| std::ptr::eq(*f, *d)))
                    .collect()
            }
        };
        if found.len() == count {
            return Ok(found);
        }
        Err({
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
            let have = if have.is_empty() {
                "no disks".into()
            } else {
                have.join("; ")
            };
            if count > 1 {
                RenderError::TooFewDisks {
                    profile: self.name.clone(),
                    count,
                    found: found.len(),
                    wanted: wanted.join(", "),
                    have,
                }
            } else {
                RenderError::NoMatchingDisk {
                    profile: self.name.clone(),
                    wanted: wanted.join(", "),
                    have,
                }
            }
        })
    }

    /// The layout sized on `disk` (the smallest of `count`): its partitions, and the RAID,
    /// volume group and volume sizes. Too small: the error names the size that works.
    fn sized(&self, disk: &DiskFact, count: usize) -> Result<Sized, RenderError> {
        let parts = self.layout(disk)?;
        if let Some(s) = self.volumes(parts.clone(), count) {
            return Ok(s);
        }
        // The partitions fit but the volumes do not: the smallest disk (in whole MiB) they
        // fit on, found by bisection (the layout only grows with the disk).
        let fits = |size: u64| {
            let d = DiskFact {
                size,
                ..disk.clone()
            };
            self.layout(&d)
                .ok()
                .and_then(|p| self.volumes(p, count))
                .is_some()
        };
        let (mut lo, mut hi) = (disk.size / MIB, disk.size / MIB * 2 + 1);
        while !fits(hi * MIB) {
            lo = hi;
            hi = hi.saturating_mul(2);
            if hi >= u64::MAX / MIB / 2 {
                break;
            }
        }
        while hi - lo > 1 {
            let mid = lo + (hi - lo) / 2;
            if fits(mid * MIB) {
                hi = mid;
            } else {
                lo = mid;
            }
        }
        Err(RenderError::DiskTooSmall {
            profile: self.name.clone(),
            disk: disk.path.clone(),
            have: human(disk.size),
            need: human(hi * MIB),
            need_bytes: hi * MIB,
        })
    }

    /// The array and volume sizes on top of `parts` (one disk's partitions; `count` disks),
    /// or None when the volumes do not fit in the volume group.
    fn volumes(&self, parts: Vec<PartitionPlan>, count: usize) -> Option<Sized> {
        let of = |k: PartKind| parts.iter().filter(move |p| p.kind == k);
        let raid_size = of(PartKind::Raid)
            .map(|p| p.size_bytes.saturating_sub(RAID_DATA_OFFSET))
            .next()
            .unwrap_or(0);
        let Some(lvm) = &self.lvm else {
            return Some(Sized {
                parts,
                raid_size,
                vg_size: 0,
                volumes: Vec::new(),
            });
        };
        let pvs: Vec<u64> = match self.raid {
            Some(_) => vec![raid_size],
            None => of(PartKind::Lvm)
                .flat_map(|p| std::iter::repeat_n(p.size_bytes, count))
                .collect(),
        };
        let extents: u64 = pvs
            .iter()
            .map(|pv| pv.saturating_sub(PV_DATA_START) / EXTENT)
            .sum();
        let mut sizes: Vec<u64> = lvm
            .volumes
            .iter()
            .map(|v| match v.size {
                Size::Bytes(b) => b.div_ceil(EXTENT),
                Size::Percent(n) => (extents * n as u64 / 100).max(1),
                Size::Rest => 0,
            })
            .collect();
        let taken: u64 = sizes.iter().sum();
        let rest = lvm.volumes.iter().position(|v| v.size == Size::Rest);
        let need = taken + u64::from(rest.is_some());
        if need > extents || extents == 0 {
            return None;
        }
        if let Some(i) = rest {
            sizes[i] = extents - taken;
        }
        Some(Sized {
            parts,
            raid_size,
            vg_size: extents * EXTENT,
            volumes: sizes.into_iter().map(|e| e * EXTENT).collect(),
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

/// A layout sized for a disk: see [`Profile::sized`].
struct Sized {
    parts: Vec<PartitionPlan>,
    raid_size: u64,
    vg_size: u64,
    volumes: Vec<u64>,
}

/// A logical volume's device-mapper node (names hold no '-', which it would double).
pub fn volume_device(vg: &str, lv: &str) -> String {
    format!("/dev/mapper/{vg}-{lv}")
}

/// `/dev/sdb 4096-byte sectors`, for errors.
fn describe_sector(d: &DiskFact) -> String {
    format!("{} {}-byte sectors", d.path, d.sector_size)
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
