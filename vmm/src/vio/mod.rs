//! VIO: fully emulated legacy devices that stock drivers bind (the contrast case for AVIO).
//! Every register access is a VM exit; the models keep the work per exit small and move whole
//! string-I/O exits (`rep insw/outsw`) at once.

pub mod ide;
pub mod ne2k;
