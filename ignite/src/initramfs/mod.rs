//! Initramfs images: the install agent's ([`build`]) and the marker image that proves a
//! netboot chain, both written as cpio archives ([`cpio`]).

pub mod build;
pub mod cpio;

use cpio::{cpio, Entry};

/// A tiny busybox initramfs whose /init prints `marker` and the kernel command line on the
/// console, then powers the machine off. Proves a netboot chain end to end.
pub fn marker_initramfs(busybox: Vec<u8>, marker: &str) -> Vec<u8> {
    let init = format!(
        "#!/bin/busybox sh\n\
         /bin/busybox mkdir -p /proc /sys\n\
         /bin/busybox mount -t proc proc /proc\n\
         echo \"{marker} $(/bin/busybox cat /proc/cmdline)\"\n\
         /bin/busybox sync\n\
         /bin/busybox poweroff -f\n"
    );
    cpio(&[
        Entry::Dir {
            path: "bin".into(),
            mode: 0o755,
        },
        Entry::Dir {
            path: "dev".into(),
            mode: 0o755,
        },
        Entry::CharDev {
            path: "dev/console".into(),
            mode: 0o600,
            major: 5,
            minor: 1,
        },
        Entry::File {
            path: "bin/busybox".into(),
            mode: 0o755,
            data: busybox,
        },
        Entry::File {
            path: "init".into(),
            mode: 0o755,
            data: init.into_bytes(),
        },
    ])
}
