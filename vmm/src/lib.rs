//! The KVM monitor: memory, vCPUs, Linux boot, AVIO (virtio-pci) devices, serial console,
//! tap networking, disk change tracking and the guest test programs that exercise it all.
//!
//! A VM is described by a [`VmConfig`], built by [`Vm::new`] and run in the foreground by
//! [`Vm::run`], which returns why it stopped.

pub mod bench;
pub mod boot;
pub mod change_tracking;

pub mod config;
pub mod devices;
pub mod diskboot;
pub mod emulation;
mod error;
#[doc(hidden)]
pub mod fuzzing;
pub mod guest;
pub mod hwcheck;
pub mod irq;
mod kvm_stats;
pub mod layout;
pub mod memory;
pub mod netbench;
pub mod netboot;
pub mod netns;
pub mod pci;
pub mod scsi;
pub mod selftest;
mod vcpu;
pub mod vio;
pub mod virtio;

mod vm;

pub use config::{
    DiskConfig, DriveConfig, DriveKind, KernelImage, MediaBus, NetBackend, NetConfig, SerialTarget,
    SharedBuffer, VmConfig,
};
pub use error::{Error, Result};
pub use vm::{Mark, RunOutcome, StopReason, StopSignal, Vm};
