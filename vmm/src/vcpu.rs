//! vCPU threads: run KVM_RUN, hand port/MMIO exits to the platform, instructions KVM could
//! not emulate to `emulation`, turn fatal exits into stop reasons. Other threads stop a vCPU
//! by setting the stop signal and kicking it with SIGRTMIN (KVM_RUN returns EINTR),
//! repeatedly until it has left.

use crate::devices::{Platform, StopReason};
use crate::memory::GuestMemory;
use kvm_ioctls::{VcpuExit, VcpuFd};
use std::os::unix::thread::JoinHandleExt;
use std::sync::{Arc, Once};
use std::thread::JoinHandle;
use std::time::Duration;

fn kick_signal() -> i32 {
    libc::SIGRTMIN()
}

extern "C" fn on_kick(_: libc::c_int, _: *mut libc::siginfo_t, _: *mut libc::c_void) {}

fn install_kick_handler() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        if let Err(e) = vmm_sys_util::signal::register_signal_handler(kick_signal(), on_kick) {
            tracing::error!(error = %e, "cannot install the vCPU kick signal handler");
        }
    });
}

pub struct VcpuThread {
    handle: Option<JoinHandle<()>>,
}

pub fn spawn(
    id: u8,
    mut vcpu: VcpuFd,
    platform: Arc<Platform>,
    mem: GuestMemory,
) -> std::io::Result<VcpuThread> {
    install_kick_handler();
    let handle = std::thread::Builder::new()
        .name(format!("vcpu{id}"))
        .spawn(move || {
            run_loop(id, &mut vcpu, &platform, &mem);
        })?;
    Ok(VcpuThread {
        handle: Some(handle),
    })
}

fn run_loop(id: u8, vcpu: &mut VcpuFd, p: &Platform, mem: &GuestMemory) {
    // The access width of port I/O exits (kvm_run.io.size) is not part of VcpuExit; read it
    // through the shared kvm_run mapping, which lives as long as the vCPU fd.
    let run = vcpu.get_kvm_run() as *const kvm_bindings::kvm_run;
    // SAFETY: `run` points into the vCPU's kvm_run mapping; after an IO exit the kernel has
    // filled the `io` member of the exit union, and we only read it.
    let io_size = || unsafe { (*run).__bindgen_anon_1.io.size as usize };
    // SAFETY: as above, after an internal-error exit the `internal` member is filled.
    let suberror = || unsafe { (*run).__bindgen_anon_1.internal.suberror };
    loop {
        if p.stop.get().is_some() {
            return;
        }
        match vcpu.run() {
            Ok(exit) => match exit {
                VcpuExit::IoOut(port, data) => p.pio_write_sized(port, io_size(), data),
                VcpuExit::IoIn(port, data) => p.pio_read_sized(port, io_size(), data),
                VcpuExit::MmioRead(addr, data) => p.mmio_read(addr, data),
                VcpuExit::MmioWrite(addr, data) => p.mmio_write(addr, data),
                VcpuExit::Hlt => {
                    // With the in-kernel irqchip HLT normally stays in KVM; if it reaches us
                    // the CPU can never be woken.
                    p.stop.stop(StopReason::Failed(format!(
                        "vCPU {id} halted with nothing to wake it"
                    )));
                }
                VcpuExit::Shutdown => p.stop.stop(StopReason::TripleFault),
                VcpuExit::SystemEvent(kind, _) => p.stop.stop(match kind {
                    kvm_bindings::KVM_SYSTEM_EVENT_RESET => StopReason::Reset,
                    _ => StopReason::PowerOff,
                }),
                VcpuExit::FailEntry(reason, cpu) => p.stop.stop(StopReason::Failed(format!(
                    "VM entry failed on vCPU {id} (hardware reason {reason:#x}, cpu {cpu})"
                ))),
                VcpuExit::InternalError
                    if suberror() == kvm_bindings::KVM_INTERNAL_ERROR_EMULATION =>
                {
                    match crate::emulation::handle(vcpu, mem) {
                        Ok(name) => p.count_monitor_emulated(name),
                        Err(e) => p.stop.stop(StopReason::Failed(format!("vCPU {id}: {e}"))),
                    }
                }
                VcpuExit::InternalError => {
                    let rip = vcpu.get_regs().map(|r| r.rip).unwrap_or(0);
                    p.stop.stop(StopReason::Failed(format!(
                        "KVM internal error (suberror {}) on vCPU {id} at rip {rip:#x}",
                        suberror()
                    )))
                }
                VcpuExit::Intr | VcpuExit::IrqWindowOpen => {}
                other => tracing::debug!(vcpu = id, exit = ?other, "unhandled exit ignored"),
            },
            Err(e) if e.errno() == libc::EINTR || e.errno() == libc::EAGAIN => {}
            Err(e) => {
                p.stop
                    .stop(StopReason::Failed(format!("KVM_RUN on vCPU {id}: {e}")));
                return;
            }
        }
    }
}

impl VcpuThread {
    /// Kicks the thread until it exits (the stop signal must already be set).
    pub fn stop_and_join(&mut self) {
        let Some(h) = self.handle.take() else { return };
        let tid = h.as_pthread_t();
        while !h.is_finished() {
            // SAFETY: the thread has not been joined, so its pthread_t is valid.
            unsafe { libc::pthread_kill(tid, kick_signal()) };
            std::thread::sleep(Duration::from_millis(2));
        }
        let _ = h.join();
    }
}

impl Drop for VcpuThread {
    fn drop(&mut self) {
        self.stop_and_join();
    }
}
