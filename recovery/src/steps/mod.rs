//! The steps of a plan, one module each; [`crate::runner`] runs them in order.

pub mod bootloader;
pub mod chroot;
pub mod format;
pub mod fstab;
pub mod gpt;
pub mod identity;
pub mod mount;
pub mod network;
pub mod partition;
pub mod volumes;
