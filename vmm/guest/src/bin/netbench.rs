//! Bulk Ethernet frames through whichever NIC the VM has, virtio-net (AVIO) or the NE2000
//! (VIO), with a host peer on the tap (see `rt::bulk`): marks 51/52 around sending, 61/62
//! around receiving; sleeps until the receive interrupt whenever it has nothing to do.
//! Args: `peer=MAC frames=N window=FRAMES ack=FRAMES`.
#![no_std]
#![no_main]

use rt::bulk::{self, Params};
use rt::eth::{self, Nic};
use rt::ne2k::Ne2k;
use rt::pci::{self, Bdf};
use rt::vnet::VirtioNet;
use rt::{boot, check, println};

rt::entry!(main);

fn bench(nic: &mut impl Nic, model: &str) {
    let p = Params {
        peer: eth::mac(boot::arg("peer").unwrap_or("02:00:00:00:00:01")),
        frames: boot::arg_u64("frames", 1024) as u32,
        window: boot::arg_u64("window", 64) as u32,
        ack_every: boot::arg_u64("ack", 16) as u32,
    };
    check!(
        p.window > 0 && p.ack_every > 0,
        "window and ack must be positive"
    );
    let sent = bulk::send(nic, &p);
    let received = bulk::receive(nic, &p);
    println!(
        "netbench {}: sent {} frames checksum {:016x}, received {} frames checksum {:016x}, {} interrupts",
        model,
        p.frames,
        sent,
        p.frames,
        received,
        rt::irq_count(0)
    );
}

fn main() {
    let mut found = [(Bdf { dev: 0, func: 0 }, 0u16, 0u16); 8];
    let n = pci::scan(&mut found);
    let found = &found[..n.min(8)];
    if let Some(&(bdf, _, _)) = found.iter().find(|&&(_, v, d)| (v, d) == (0x1af4, 0x1041)) {
        bench(&mut VirtioNet::open(bdf), "virtio-net");
    } else if let Some(&(bdf, _, _)) = found.iter().find(|&&(_, v, d)| (v, d) == (0x10ec, 0x8029)) {
        bench(&mut Ne2k::open(bdf), "ne2k");
    } else {
        check!(false, "no virtio-net or NE2000 device");
    }
}
