//! virtio-net through the tap: ARP for the peer (`peer=A.B.C.D`) from `ip=A.B.C.D`, then an
//! ICMP echo request and its reply; answers ARP requests for its own address meanwhile.
#![no_std]
#![no_main]

use rt::eth::{self, Nic};
use rt::pci::{self, Bdf};
use rt::vnet::VirtioNet;
use rt::{boot, check, println};

rt::entry!(main);

fn main() {
    let mut found = [(Bdf { dev: 0, func: 0 }, 0u16, 0u16); 8];
    let n = pci::scan(&mut found);
    let Some(&(bdf, _, _)) = found[..n]
        .iter()
        .find(|&&(_, v, d)| (v, d) == (0x1af4, 0x1041))
    else {
        check!(false, "no virtio-net device");
        return;
    };
    let mut nic = VirtioNet::open(bdf);
    let mac = nic.mac();
    println!(
        "MAC {:02x}:{:02x}:{:02x}:{:02x}:{:02x}:{:02x}",
        mac[0], mac[1], mac[2], mac[3], mac[4], mac[5]
    );
    let me = eth::ip(boot::arg("ip").unwrap_or("10.77.0.2"));
    let peer = eth::ip(boot::arg("peer").unwrap_or("10.77.0.1"));
    eth::ping(&mut nic, me, peer);
}
