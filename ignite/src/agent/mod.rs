//! What runs as PID 1 of the install initramfs, around [`ignite_recovery`]'s plan runner:
//! kernel file systems, module loading by modalias, the boot NIC and its DHCP client, and
//! what it says about controllers that have no driver; restores from recovery media
//! (`media`).

pub mod dhcp;
pub mod hw;
pub mod init;
pub mod media;
pub mod modules;
pub mod netif;
