//! VIO NIC: the NE2000 (RTL8029) function through its I/O BAR. The driver checks ids, the I/O
//! BAR, INTA, reset (ISR.RST), the RTL8029 id bytes and the station-address PROM read by
//! remote DMA (word mode, `rep insw`); this program checks the PROM holds `mac=`, then does
//! ARP + ICMP echo with the peer (the kernel of a test network namespace) through the tap:
//! frames written to NIC memory by remote DMA and sent with TRANS, received frames read from
//! the ring (8390 header, BNRY/CURR). The INTx line (IOAPIC input from config 0x3c) must
//! interrupt on receive. Args: `ip=A.B.C.D peer=A.B.C.D mac=52:54:...`.
#![no_std]
#![no_main]

use rt::eth::{self, Nic};
use rt::ne2k::Ne2k;
use rt::pci::{self, Bdf};
use rt::{boot, check, println};

rt::entry!(main);

fn main() {
    let mut found = [(Bdf { dev: 0, func: 0 }, 0u16, 0u16); 8];
    let n = pci::scan(&mut found);
    let Some(&(bdf, _, _)) = found[..n.min(8)]
        .iter()
        .find(|&&(_, v, d)| (v, d) == (0x10ec, 0x8029))
    else {
        check!(false, "no NE2000 (10ec:8029) on bus 0");
        return;
    };
    let mut nic = Ne2k::open(bdf);
    let want = eth::mac(boot::arg("mac").unwrap_or("52:54:00:12:34:56"));
    check!(
        nic.mac() == want,
        "PROM MAC {:02x?} want {:02x?}",
        nic.mac(),
        want
    );
    let me = eth::ip(boot::arg("ip").unwrap_or("10.77.0.2"));
    let peer = eth::ip(boot::arg("peer").unwrap_or("10.77.0.1"));
    eth::ping(&mut nic, me, peer);
    check!(
        rt::irq_count(0) > 0,
        "no receive interrupt through INTA (IOAPIC input {})",
        nic.line
    );
    println!("ne2k: {} interrupts", rt::irq_count(0));
}
