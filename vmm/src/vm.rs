//! A VM: KVM objects, guest memory, platform devices, vCPU threads; run in the foreground
//! until it stops.

use crate::boot;
use crate::change_tracking::ChangeTracker;
use crate::config::{KernelImage, SerialTarget, VmConfig};
use crate::devices::console::{self, SocketOut};
pub use crate::devices::StopSignal;
pub use crate::devices::{Mark, StopReason};
use crate::devices::{Platform, SerialOut};
use crate::error::{Error, Result};
use crate::irq::KvmRouter;
use crate::layout::*;
use crate::memory::{self, GuestMemory};
use crate::pci::PciBus;
use crate::scsi::{DriveUnit, MediaControl};
use crate::vcpu;
use crate::virtio::block::Block;
use crate::virtio::net::Net;
use crate::virtio::pci::VirtioPci;
use kvm_bindings::{kvm_pit_config, KVM_MAX_CPUID_ENTRIES, KVM_PIT_SPEAKER_DUMMY};
use kvm_ioctls::{Kvm, VcpuFd, VmFd};
use std::os::unix::net::UnixListener;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};
use vmm_sys_util::eventfd::EventFd;

/// How a run ended and what was observed.
#[derive(Debug)]
pub struct RunOutcome {
    pub reason: StopReason,
    pub elapsed: Duration,
    /// Exits handled by the monitor (port I/O and MMIO that reached userspace).
    pub exits: u64,
    pub marks: Vec<Mark>,
    /// What a guest program's exception handler reported (error code / RIP words).
    pub fault_info: Vec<u32>,
    /// All exits KVM counted, and the instructions its emulator ran (KVM binary stats,
    /// where available).
    pub kvm_exits: Option<u64>,
    pub kvm_emulated: Option<u64>,
    /// Instructions KVM could not emulate that the monitor handled, by name.
    pub monitor_emulated: Vec<(&'static str, u64)>,
}

pub struct Vm {
    // Field order is drop order: vCPUs and devices before the VM fd, guest memory last.
    vcpus: Vec<VcpuFd>,
    platform: Arc<Platform>,
    trackers: Vec<(PathBuf, Arc<ChangeTracker>)>,
    media: MediaControl,
    _vm: Arc<VmFd>,
    _kvm: Kvm,
    /// Also lent to the vCPU threads, to read instructions KVM could not emulate.
    mem: GuestMemory,
}

fn serial_out(t: &SerialTarget, socket: &Option<(UnixListener, SocketOut)>) -> Result<SerialOut> {
    if let (Some((_, out)), SerialTarget::LoggedUnix { log, .. }) = (socket, t) {
        let file =
            console::RotatingLog::open(log, console::LOG_CAP).map_err(|err| Error::SerialFile {
                path: log.clone(),
                err,
            })?;
        return Ok(Box::new(console::Tee(out.clone(), file)));
    }
    if let Some((_, out)) = socket {
        return Ok(Box::new(out.clone()));
    }
    Ok(match t {
        SerialTarget::Stdout => Box::new(std::io::stdout()),
        SerialTarget::File(p) => {
            Box::new(std::fs::File::create(p).map_err(|err| Error::SerialFile {
                path: p.clone(),
                err,
            })?)
        }
        SerialTarget::Buffer(b) => Box::new(b.clone()),
        SerialTarget::Null | SerialTarget::Unix(_) | SerialTarget::LoggedUnix { .. } => {
            Box::new(std::io::sink())
        }
    })
}

/// What guest kernel code meets on this host's CPU (probed once per process). A failed probe
/// assumes a host that runs guest code on the hardware: CPUID as KVM reports it, obeyed.
fn guest_cpu() -> crate::hwcheck::GuestCpu {
    static CPU: std::sync::OnceLock<crate::hwcheck::GuestCpu> = std::sync::OnceLock::new();
    *CPU.get_or_init(|| {
        let cpu = crate::hwcheck::guest_cpu().unwrap_or_else(|e| {
            tracing::warn!(error = %e, "guest CPU probe failed; offering CPUID as KVM reports it");
            crate::hwcheck::GuestCpu {
                xsave_runs: true,
                xsave_hideable: true,
            }
        });
        if !cpu.xsave_runs {
            tracing::info!(
                xsave_hideable = cpu.xsave_hideable,
                "this KVM cannot run xsave/xrstor for guest kernel code: XSAVE (and AVX) taken out of the guest's CPUID{}",
                if cpu.xsave_hideable { "" } else { ", which the guest's CPUID still reports here: Linux guests get `noxsave`" }
            );
        }
        cpu
    })
}

/// The command line a kernel gets: `cmdline`, plus `noxsave` for Linux where XSAVE cannot
/// run for it and cannot be hidden from its CPUID either.
fn linux_cmdline(cmdline: &str, is_linux: impl FnOnce() -> bool) -> String {
    let cpu = guest_cpu();
    if !cpu.xsave_runs && !cpu.xsave_hideable && is_linux() {
        let sep = if cmdline.is_empty() { "" } else { " " };
        return format!("{cmdline}{sep}noxsave");
    }
    cmdline.to_owned()
}

/// Opens the drives and their media: the control handle, the VIO (ATAPI) CD-ROMs and the
/// AVIO (virtio-scsi) LUNs in configuration order.
#[allow(clippy::type_complexity)]
fn open_drives(
    drives: &[crate::config::DriveConfig],
) -> Result<(
    MediaControl,
    Vec<crate::scsi::SharedUnit<crate::scsi::cdrom::Cdrom>>,
    Vec<crate::virtio::scsi::Lun>,
)> {
    use crate::config::{DriveKind, MediaBus};
    use crate::scsi::{cdrom, tape};
    use std::sync::Mutex;
    let (mut control, mut vio, mut avio) = (MediaControl::default(), Vec::new(), Vec::new());
    for d in drives {
        match (d.kind, d.bus) {
            (DriveKind::Cdrom, bus) => {
                let medium = d
                    .medium
                    .as_ref()
                    .map(|m| cdrom::Medium::open(&m.path))
                    .transpose()?;
                let iface = match bus {
                    MediaBus::Vio => cdrom::Interface::Atapi,
                    MediaBus::Avio => cdrom::Interface::Scsi,
                };
                let unit = Arc::new(Mutex::new(cdrom::Cdrom::new(medium, iface)));
                control.add(DriveUnit::Cdrom(unit.clone()));
                match bus {
                    MediaBus::Vio => vio.push(unit),
                    MediaBus::Avio => avio.push(unit as crate::virtio::scsi::Lun),
                }
            }
            (DriveKind::Tape, MediaBus::Avio) => {
                let medium = d
                    .medium
                    .as_ref()
                    .map(|m| tape::TapeMedium::open(&m.path, m.read_only))
                    .transpose()?;
                let unit = Arc::new(Mutex::new(tape::Tape::new(medium)));
                control.add(DriveUnit::Tape(unit.clone()));
                avio.push(unit as crate::virtio::scsi::Lun);
            }
            (DriveKind::Tape, MediaBus::Vio) => {
                return Err(Error::Media(
                    "tape drives are on AVIO (virtio-scsi) only".into(),
                ))
            }
        }
    }
    Ok((control, vio, avio))
}

impl Vm {
    pub fn new(config: &VmConfig) -> Result<Vm> {
        if config.cpus == 0 || config.cpus > MAX_CPUS {
            return Err(Error::CpuCount(config.cpus));
        }
        let vio_units = config.vio_disks.len()
            + config
                .drives
                .iter()
                .filter(|d| d.bus == crate::config::MediaBus::Vio)
                .count();
        if vio_units > crate::vio::ide::MAX_DISKS {
            return Err(Error::TooManyVioDisks(vio_units));
        }
        if config.vio_nets.len() > 4 {
            return Err(Error::TooManyVioNics(config.vio_nets.len()));
        }
        let socket = match &config.serial {
            SerialTarget::Unix(p) | SerialTarget::LoggedUnix { socket: p, .. } => Some((
                console::bind(p).map_err(|err| Error::SerialFile {
                    path: p.clone(),
                    err,
                })?,
                SocketOut::default(),
            )),
            _ => None,
        };
        let mut serial = serial_out(&config.serial, &socket)?;
        // The boot firmware runs first, on the NIC's tap before the NIC device holds it, and
        // prints its steps on the VM's console.
        let fetched = match config.kernel {
            KernelImage::Net => {
                let nic = config
                    .nets
                    .first()
                    .or(config.vio_nets.first())
                    .ok_or_else(|| {
                        Error::Netboot(
                            "no NIC to boot from; add one (--net bridge=BR or tap=NAME)".into(),
                        )
                    })?;
                Some(crate::netboot::fetch(
                    nic,
                    &config.cmdline,
                    config.mem_bytes,
                    &mut serial,
                )?)
            }
            _ => None,
        };
        let kvm = crate::hwcheck::open_kvm()?;
        let vm = Arc::new(kvm.create_vm().map_err(Error::kvm("KVM_CREATE_VM"))?);
        vm.set_tss_address(KVM_TSS_ADDR)
            .map_err(Error::kvm("KVM_SET_TSS_ADDR"))?;
        vm.set_identity_map_address(KVM_IDENTITY_MAP_ADDR)
            .map_err(Error::kvm("KVM_SET_IDENTITY_MAP_ADDR"))?;
        vm.create_irq_chip()
            .map_err(Error::kvm("KVM_CREATE_IRQCHIP"))?;
        let pit = kvm_pit_config {
            flags: KVM_PIT_SPEAKER_DUMMY,
            ..Default::default()
        };
        vm.create_pit2(pit).map_err(Error::kvm("KVM_CREATE_PIT2"))?;

        let mem = memory::create(config.mem_bytes)?;
        memory::register(&vm, &mem)?;
        let router = Arc::new(KvmRouter::new(vm.clone()));
        router.init()?;

        let serial_irq = EventFd::new(libc::EFD_NONBLOCK)?;
        vm.register_irqfd(&serial_irq, SERIAL_IRQ)
            .map_err(Error::kvm("KVM_IRQFD"))?;
        let stop = Arc::new(StopSignal::default());
        let mut pci = PciBus::new();
        let mut trackers = Vec::new();
        let mut next_bar = MMIO_START;
        let mut add = |pci: &mut PciBus, dev: Box<dyn crate::virtio::VirtioDevice>| -> Result<()> {
            let t = VirtioPci::new(dev, next_bar, mem.clone(), router.clone(), vm.clone())?;
            next_bar += crate::virtio::pci::BAR_SIZE;
            pci.add(Box::new(t)).ok_or(Error::TooManyDevices(
                config.disks.len() + config.nets.len(),
            ))?;
            Ok(())
        };
        for (i, d) in config.disks.iter().enumerate() {
            let blk = Block::new(d, i)?;
            if let Some(t) = blk.tracker() {
                trackers.push((d.path.clone(), t));
            }
            add(&mut pci, Box::new(blk))?;
        }
        for (i, n) in config.nets.iter().enumerate() {
            add(&mut pci, Box::new(Net::new(n, i)?))?;
        }
        let (media, vio_cds, avio_luns) = open_drives(&config.drives)?;
        if !avio_luns.is_empty() {
            add(
                &mut pci,
                Box::new(crate::virtio::scsi::Scsi::new(avio_luns)?),
            )?;
        }
        let ide = if config.vio_disks.is_empty() && vio_cds.is_empty() {
            None
        } else {
            let mut irqs = [None, None];
            for (slot, gsi) in irqs.iter_mut().zip(crate::vio::ide::IRQS) {
                let e = EventFd::new(libc::EFD_NONBLOCK)?;
                vm.register_irqfd(&e, gsi)
                    .map_err(Error::kvm("KVM_IRQFD"))?;
                *slot = Some(e);
            }
            let ide = crate::vio::ide::Ide::new(&config.vio_disks, vio_cds, irqs)?;
            for (d, t) in config
                .vio_disks
                .iter()
                .filter(|d| !d.read_only && d.track_changes.is_some())
                .zip(ide.trackers())
            {
                trackers.push((d.path.clone(), t));
            }
            pci.add(Box::new(crate::vio::ide::piix_function()))
                .ok_or(Error::TooManyDevices(
                    config.disks.len() + config.nets.len() + 1,
                ))?;
            Some(ide)
        };
        // VIO NICs: I/O BAR at 0xc000 + 0x100·i, INTA on IOAPIC input 16 + i (level, in the
        // MP table).
        let mut intx = Vec::new();
        for (i, n) in config.vio_nets.iter().enumerate() {
            let gsi = 16 + i as u8;
            let vmfd = vm.clone();
            let line = Box::new(move |level: bool| {
                if let Err(e) = vmfd.set_irq_line(gsi as u32, level) {
                    tracing::warn!(error = %e, gsi, "ne2k: cannot set the INTx line");
                }
            });
            let dev = crate::vio::ne2k::Ne2kPci::new(n, 0xc000 + 0x100 * i as u16, gsi, line)?;
            let slot = pci.add(Box::new(dev)).ok_or(Error::TooManyDevices(
                config.disks.len() + config.nets.len() + config.vio_nets.len(),
            ))?;
            intx.push(boot::mptable::PciIntx {
                slot,
                pin: 1,
                ioapic_pin: gsi,
            });
        }
        let mut platform = Platform::new(serial, serial_irq, pci, stop);
        if let Some(ide) = ide {
            platform = platform.with_ide(ide);
        }
        let platform = Arc::new(platform);
        match (socket, &config.serial) {
            (Some((listener, out)), _) => {
                console::serve_socket(listener, out, Arc::downgrade(&platform))
            }
            (None, SerialTarget::Stdout) if config.serial_input => {
                console::forward_stdin(Arc::downgrade(&platform))
            }
            _ => {}
        }

        let entry = match fetched {
            Some(mut f) => {
                f.cmdline = linux_cmdline(&f.cmdline, || boot::is_linux(&f.kernel));
                boot::load_fetched(&mem, &f, config.cpus, &intx)?
            }
            None => boot::load(
                &mem,
                &config.kernel,
                config.initrd.as_deref(),
                &linux_cmdline(&config.cmdline, || boot::image_is_linux(&config.kernel)),
                config.cpus,
                &intx,
            )?,
        };
        let mut supported = kvm
            .get_supported_cpuid(KVM_MAX_CPUID_ENTRIES)
            .map_err(Error::kvm("KVM_GET_SUPPORTED_CPUID"))?;
        if !guest_cpu().xsave_runs {
            boot::cpu_state::hide_xsave(&mut supported);
        }
        let mut vcpus = Vec::new();
        for id in 0..config.cpus {
            let vcpu = vm
                .create_vcpu(id as u64)
                .map_err(Error::kvm("KVM_CREATE_VCPU"))?;
            boot::cpu_state::setup_vcpu(&vcpu, id, config.cpus, entry.rip, &supported)?;
            platform.add_vcpu_stats(crate::kvm_stats::VcpuStats::open(&vcpu));
            vcpus.push(vcpu);
        }
        // Application processors wait for INIT/SIPI like on real hardware.
        for vcpu in vcpus.iter().skip(1) {
            let mp = kvm_bindings::kvm_mp_state {
                mp_state: kvm_bindings::KVM_MP_STATE_UNINITIALIZED,
            };
            vcpu.set_mp_state(mp)
                .map_err(Error::kvm("KVM_SET_MP_STATE"))?;
        }
        Ok(Vm {
            vcpus,
            platform,
            trackers,
            media,
            _vm: vm,
            _kvm: kvm,
            mem,
        })
    }

    /// Change trackers of the writable disks, by image path (valid while and after running).
    pub fn change_trackers(&self) -> Vec<(PathBuf, Arc<ChangeTracker>)> {
        self.trackers.clone()
    }

    /// The removable-media drives, to change media while the VM runs.
    pub fn media(&self) -> MediaControl {
        self.media.clone()
    }

    /// Stops a running VM from another thread: `stop(StopReason::PowerOff)` ends `run`.
    pub fn stop_signal(&self) -> Arc<StopSignal> {
        self.platform.stop.clone()
    }

    /// Runs until the guest stops or `limit` passes.
    pub fn run(mut self, limit: Option<Duration>) -> Result<RunOutcome> {
        let start = Instant::now();
        let mut threads = Vec::new();
        for (id, vcpu) in self.vcpus.drain(..).enumerate() {
            threads.push(vcpu::spawn(
                id as u8,
                vcpu,
                self.platform.clone(),
                self.mem.clone(),
            )?);
        }
        let reason = match self.platform.stop.wait(limit) {
            Some(r) => r,
            None => {
                self.platform.stop.stop(StopReason::Timeout);
                self.platform.stop.get().unwrap_or(StopReason::Timeout)
            }
        };
        for t in threads.iter_mut() {
            t.stop_and_join();
        }
        Ok(RunOutcome {
            reason,
            elapsed: start.elapsed(),
            exits: self.platform.exits(),
            marks: self.platform.marks(),
            fault_info: self.platform.fault_info(),
            kvm_exits: self.platform.kvm_exits(),
            kvm_emulated: self.platform.kvm_emulated(),
            monitor_emulated: self.platform.monitor_emulated(),
        })
    }
}
