//! The platform as the vCPUs see it: port and MMIO dispatch to the legacy devices (8250
//! serial, i8042 reset line, test-exit and mark ports) and the PCI bus; and the stop signal
//! through which any device or vCPU ends the run with a reason.

pub mod console;

use crate::layout::*;
use crate::pci::PciBus;
use std::io::Write;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};
use vm_superio::{I8042Device, Serial, Trigger};
use vmm_sys_util::eventfd::EventFd;

/// Why a VM stopped.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum StopReason {
    /// A guest test program wrote its result to the test port (0 = pass).
    TestExit(u32),
    /// The guest asked for a reset (i8042 0xFE, `reboot=k`) or a KVM system event reset.
    Reset,
    /// KVM system event: shutdown / power off.
    PowerOff,
    /// KVM_EXIT_SHUTDOWN: the guest triple-faulted.
    TripleFault,
    /// `run` was given a time limit and it passed.
    Timeout,
    /// KVM reported an error it cannot continue from.
    Failed(String),
}

impl std::fmt::Display for StopReason {
    fn fmt(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        match self {
            StopReason::TestExit(0) => write!(f, "guest program passed"),
            StopReason::TestExit(c) if *c >= 0x100 && *c < 0x200 => {
                write!(
                    f,
                    "guest program took exception vector {} (code {c:#x})",
                    c - 0x100
                )
            }
            StopReason::TestExit(c) => write!(f, "guest program failed with code {c}"),
            StopReason::Reset => write!(f, "guest reset"),
            StopReason::PowerOff => write!(f, "guest powered off"),
            StopReason::TripleFault => write!(f, "guest triple fault (CPU shutdown)"),
            StopReason::Timeout => write!(f, "time limit reached"),
            StopReason::Failed(m) => write!(f, "KVM error: {m}"),
        }
    }
}

/// First reason wins; waiters wake.
#[derive(Default)]
pub struct StopSignal {
    reason: Mutex<Option<StopReason>>,
    cv: Condvar,
}

impl StopSignal {
    pub fn stop(&self, r: StopReason) {
        let mut g = self.reason.lock().unwrap_or_else(|e| e.into_inner());
        if g.is_none() {
            tracing::debug!(reason = %r, "VM stopping");
            *g = Some(r);
            self.cv.notify_all();
        }
    }
    pub fn get(&self) -> Option<StopReason> {
        self.reason
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }
    pub fn wait(&self, timeout: Option<Duration>) -> Option<StopReason> {
        let deadline = timeout.map(|t| Instant::now() + t);
        let mut g = self.reason.lock().unwrap_or_else(|e| e.into_inner());
        while g.is_none() {
            match deadline {
                None => g = self.cv.wait(g).unwrap_or_else(|e| e.into_inner()),
                Some(d) => {
                    let now = Instant::now();
                    if now >= d {
                        return None;
                    }
                    g = self
                        .cv
                        .wait_timeout(g, d - now)
                        .unwrap_or_else(|e| e.into_inner())
                        .0;
                }
            }
        }
        g.clone()
    }
}

/// A timestamp the guest asked for by writing `value` to the mark port.
#[derive(Clone, Debug)]
pub struct Mark {
    pub value: u32,
    pub at: Duration,
    /// Exits to the monitor (port and MMIO) so far.
    pub exits: u64,
    /// Monitor process CPU time (user + system) so far.
    pub cpu: Duration,
    /// All VM exits KVM counted so far (including those it handled itself), where KVM
    /// exposes binary statistics.
    pub kvm_exits: Option<u64>,
    /// Instructions KVM's emulator ran so far (same source).
    pub kvm_emulated: Option<u64>,
}

pub fn process_cpu_time() -> Duration {
    let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: getrusage writes into the struct we own.
    unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut ru) };
    let tv = |t: libc::timeval| Duration::new(t.tv_sec as u64, t.tv_usec as u32 * 1000);
    tv(ru.ru_utime) + tv(ru.ru_stime)
}

pub struct EventFdTrigger(pub EventFd);

impl Trigger for EventFdTrigger {
    type E = std::io::Error;
    fn trigger(&self) -> std::io::Result<()> {
        self.0.write(1)
    }
}

struct ResetTrigger(Arc<StopSignal>);

impl Trigger for ResetTrigger {
    type E = std::io::Error;
    fn trigger(&self) -> std::io::Result<()> {
        self.0.stop(StopReason::Reset);
        Ok(())
    }
}

pub type SerialOut = Box<dyn Write + Send>;

pub struct Platform {
    serial: Mutex<Serial<EventFdTrigger, vm_superio::serial::NoEvents, SerialOut>>,
    i8042: Mutex<I8042Device<ResetTrigger>>,
    pub pci: Mutex<PciBus>,
    pub stop: Arc<StopSignal>,
    marks: Mutex<Vec<Mark>>,
    faults: Mutex<Vec<Mark>>,
    exits: AtomicU64,
    start: Instant,
    vcpu_stats: Mutex<Vec<crate::kvm_stats::VcpuStats>>,
    /// Instructions KVM handed back unemulated that the monitor handled, by name.
    monitor_emulated: Mutex<std::collections::BTreeMap<&'static str, u64>>,
    /// The IDE channels behind the legacy ATA ports, when the VM has VIO disks.
    ide: Option<Mutex<crate::vio::ide::Ide>>,
}

impl Platform {
    /// `serial_irq` is an eventfd the caller registers as irqfd on SERIAL_IRQ.
    pub fn new(
        serial_out: SerialOut,
        serial_irq: EventFd,
        pci: PciBus,
        stop: Arc<StopSignal>,
    ) -> Platform {
        Platform {
            serial: Mutex::new(Serial::new(EventFdTrigger(serial_irq), serial_out)),
            i8042: Mutex::new(I8042Device::new(ResetTrigger(stop.clone()))),
            pci: Mutex::new(pci),
            stop,
            marks: Mutex::new(Vec::new()),
            faults: Mutex::new(Vec::new()),
            exits: AtomicU64::new(0),
            start: Instant::now(),
            vcpu_stats: Mutex::new(Vec::new()),
            monitor_emulated: Mutex::default(),
            ide: None,
        }
    }

    /// Puts IDE channels behind ports 0x1F0–0x1F7/0x3F6 and 0x170–0x177/0x376.
    pub fn with_ide(mut self, ide: crate::vio::ide::Ide) -> Platform {
        self.ide = Some(Mutex::new(ide));
        self
    }

    pub(crate) fn add_vcpu_stats(&self, c: crate::kvm_stats::VcpuStats) {
        self.vcpu_stats
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(c);
    }

    /// A KVM counter summed over vCPUs (None without binary stats).
    fn kvm_sum(
        &self,
        which: impl Fn(&crate::kvm_stats::VcpuStats) -> Option<&crate::kvm_stats::VcpuCounter>,
    ) -> Option<u64> {
        let s = self.vcpu_stats.lock().unwrap_or_else(|e| e.into_inner());
        s.iter().map(|c| which(c).and_then(|c| c.read())).sum()
    }

    /// KVM's count of all exits, summed over vCPUs (None without binary stats).
    pub fn kvm_exits(&self) -> Option<u64> {
        self.kvm_sum(|s| s.exits.as_ref())
    }

    /// Instructions KVM's emulator ran, summed over vCPUs (None without binary stats).
    pub fn kvm_emulated(&self) -> Option<u64> {
        self.kvm_sum(|s| s.emulated.as_ref())
    }

    pub(crate) fn count_monitor_emulated(&self, name: &'static str) {
        *self
            .monitor_emulated
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .entry(name)
            .or_default() += 1;
    }

    /// Instructions the monitor handled for KVM (see `emulation`), by name.
    pub fn monitor_emulated(&self) -> Vec<(&'static str, u64)> {
        self.monitor_emulated
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
            .map(|(k, v)| (*k, *v))
            .collect()
    }

    fn mark(&self, value: u32) -> Mark {
        Mark {
            value,
            at: self.start.elapsed(),
            exits: self.exits(),
            cpu: process_cpu_time(),
            kvm_exits: self.kvm_exits(),
            kvm_emulated: self.kvm_emulated(),
        }
    }

    pub fn exits(&self) -> u64 {
        self.exits.load(Ordering::Relaxed)
    }

    pub fn marks(&self) -> Vec<Mark> {
        self.marks.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// Feeds console input to the guest's UART, waiting while its FIFO is full. Gives up
    /// when the VM stops.
    pub fn serial_input(&self, mut bytes: &[u8]) {
        while !bytes.is_empty() && self.stop.get().is_none() {
            let n = {
                let mut s = self.serial.lock().unwrap_or_else(|e| e.into_inner());
                s.enqueue_raw_bytes(bytes).unwrap_or(0)
            };
            bytes = &bytes[n..];
            if n == 0 {
                std::thread::sleep(Duration::from_millis(1));
            }
        }
    }

    /// Words the guest's exception handler reported before failing.
    pub fn fault_info(&self) -> Vec<u32> {
        self.faults
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
            .map(|m| m.value)
            .collect()
    }

    pub fn pio_read(&self, port: u16, data: &mut [u8]) {
        self.pio_read_sized(port, data.len().min(4), data)
    }

    pub fn pio_write(&self, port: u16, data: &[u8]) {
        self.pio_write_sized(port, data.len().min(4), data)
    }

    /// One port-read exit: `size` is the access width (1, 2, 4), `data` holds
    /// `size × count` bytes for string I/O (`rep insw`).
    pub fn pio_read_sized(&self, port: u16, size: usize, data: &mut [u8]) {
        self.exits.fetch_add(1, Ordering::Relaxed);
        if let (Some(ide), Some((ch, off))) = (&self.ide, crate::vio::ide::Ide::decode(port)) {
            let mut ide = ide.lock().unwrap_or_else(|e| e.into_inner());
            return ide.channels[ch].pio_read(off, size, data);
        }
        match port {
            COM1..=0x3ff => {
                let mut s = self.serial.lock().unwrap_or_else(|e| e.into_inner());
                for d in data.iter_mut() {
                    *d = s.read((port - COM1) as u8);
                }
            }
            0x60 | 0x64 => {
                let mut k = self.i8042.lock().unwrap_or_else(|e| e.into_inner());
                for d in data.iter_mut() {
                    *d = k.read((port - 0x60) as u8);
                }
            }
            0xcf8..=0xcff => self
                .pci
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .pio_read(port - 0xcf8, data),
            // PCI I/O BARs (VIO NIC), else nothing: reads of absent hardware float high.
            _ => {
                if !self
                    .pci
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .io_bar_read(port, size, data)
                {
                    data.fill(0xff)
                }
            }
        }
    }

    pub fn pio_write_sized(&self, port: u16, size: usize, data: &[u8]) {
        self.exits.fetch_add(1, Ordering::Relaxed);
        if let (Some(ide), Some((ch, off))) = (&self.ide, crate::vio::ide::Ide::decode(port)) {
            let mut ide = ide.lock().unwrap_or_else(|e| e.into_inner());
            return ide.channels[ch].pio_write(off, size, data);
        }
        match port {
            COM1..=0x3ff => {
                let mut s = self.serial.lock().unwrap_or_else(|e| e.into_inner());
                for d in data {
                    if let Err(e) = s.write((port - COM1) as u8, *d) {
                        tracing::debug!(error = ?e, "serial write");
                    }
                }
                if port == COM1 {
                    let _ = s.writer_mut().flush();
                }
            }
            0x60 | 0x64 => {
                let mut k = self.i8042.lock().unwrap_or_else(|e| e.into_inner());
                for d in data {
                    let _ = k.write((port - 0x60) as u8, *d);
                }
            }
            0xcf8..=0xcff => self
                .pci
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .pio_write(port - 0xcf8, data),
            TEST_EXIT_PORT => self.stop.stop(StopReason::TestExit(le_value(data))),
            MARK_PORT => {
                let m = self.mark(le_value(data));
                push_bounded(&self.marks, m);
            }
            FAULT_INFO_PORT => {
                let v = le_value(data);
                tracing::warn!(
                    value = format_args!("{v:#x}"),
                    "guest fault info (error code / RIP)"
                );
                let m = self.mark(v);
                push_bounded(&self.faults, m);
            }
            BOOT_MARKER_PORT => {
                if data.first() == Some(&123) {
                    tracing::info!(
                        ms = self.start.elapsed().as_millis() as u64,
                        "guest boot marker"
                    );
                    let m = self.mark(123);
                    push_bounded(&self.marks, m);
                }
            }
            _ => {
                if !self
                    .pci
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .io_bar_write(port, size, data)
                {
                    tracing::trace!(port, ?data, "write to unclaimed port")
                }
            }
        }
    }

    pub fn mmio_read(&self, addr: u64, data: &mut [u8]) {
        self.exits.fetch_add(1, Ordering::Relaxed);
        if !self
            .pci
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .mmio_read(addr, data)
        {
            tracing::trace!(addr, "read of unclaimed MMIO");
            data.fill(0xff);
        }
    }

    pub fn mmio_write(&self, addr: u64, data: &[u8]) {
        self.exits.fetch_add(1, Ordering::Relaxed);
        if !self
            .pci
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .mmio_write(addr, data)
        {
            tracing::trace!(addr, "write to unclaimed MMIO");
        }
    }
}

/// Marks a guest can make are bounded: a guest writing the port in a loop must not grow the
/// monitor's memory without end.
const MAX_MARKS: usize = 4096;

fn push_bounded(v: &Mutex<Vec<Mark>>, m: Mark) {
    let mut g = v.lock().unwrap_or_else(|e| e.into_inner());
    if g.len() < MAX_MARKS {
        g.push(m);
    }
}

fn le_value(data: &[u8]) -> u32 {
    let mut v = [0u8; 4];
    for (i, b) in data.iter().take(4).enumerate() {
        v[i] = *b;
    }
    u32::from_le_bytes(v)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::SharedBuffer;

    fn platform() -> (Platform, SharedBuffer) {
        let buf = SharedBuffer::default();
        let p = Platform::new(
            Box::new(buf.clone()),
            EventFd::new(0).unwrap(),
            PciBus::new(),
            Arc::default(),
        );
        (p, buf)
    }

    #[test]
    fn serial_test_port_and_reset() {
        let (p, buf) = platform();
        for b in b"hi" {
            p.pio_write(COM1, &[*b]);
        }
        assert_eq!(buf.contents(), "hi");
        p.pio_write(TEST_EXIT_PORT, &[3, 0, 0, 0]);
        assert_eq!(p.stop.get(), Some(StopReason::TestExit(3)));
        let (p, _) = platform();
        p.pio_write(0x64, &[0xfe]);
        assert_eq!(p.stop.get(), Some(StopReason::Reset));
        let mut d = [0u8; 2];
        p.pio_read(0x1234, &mut d);
        assert_eq!(d, [0xff, 0xff]);
        p.pio_write(MARK_PORT, &[]);
        assert_eq!(p.marks().len(), 1);
        for _ in 0..MAX_MARKS + 10 {
            p.pio_write(MARK_PORT, &[1]);
        }
        assert_eq!(
            p.marks().len(),
            MAX_MARKS,
            "a guest cannot grow the mark list without end"
        );
        assert_eq!(p.exits(), 3 + MAX_MARKS as u64 + 10);
    }
}
