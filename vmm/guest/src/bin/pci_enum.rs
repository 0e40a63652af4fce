//! PCI enumeration finds exactly the configured devices: the host bridge at 00:00.0, then
//! the devices listed in `expect=VVVV:DDDD,...` in slot order, each with a 32 KiB memory
//! BAR0 in the MMIO window, MSI-X and the virtio capabilities; nothing else on bus 0.
#![no_std]
#![no_main]

use rt::pci::{self, Bdf};
use rt::{boot, check, println};

rt::entry!(main);

fn hex16(s: &str) -> u16 {
    u16::from_str_radix(s, 16).unwrap_or(0)
}

fn main() {
    let mut found = [(Bdf { dev: 0, func: 0 }, 0u16, 0u16); 32];
    let n = pci::scan(&mut found);
    for &(b, v, d) in &found[..n] {
        let class = pci::read32(b, 8) >> 16;
        println!(
            "00:{:02x}.{} {:04x}:{:04x} class {:04x}",
            b.dev, b.func, v, d, class
        );
    }
    check!(n >= 1 && found[0].0.dev == 0, "no device at 00:00.0");
    check!(
        (found[0].1, found[0].2) == (0x8086, 0x0d57),
        "00:00.0 is not the host bridge"
    );
    check!(
        pci::read32(found[0].0, 8) >> 16 == 0x0600,
        "00:00.0 class is not host bridge"
    );
    let expect = boot::arg("expect").unwrap_or("");
    let mut want = 0;
    for (i, id) in expect.split(',').filter(|s| !s.is_empty()).enumerate() {
        want += 1;
        let (v, d) = id.split_once(':').unwrap_or(("", ""));
        let slot = i + 1;
        check!(
            slot < n,
            "expected {} at slot {} but the bus has only {} devices",
            id,
            slot,
            n
        );
        let (b, vv, dd) = found[slot];
        check!(
            b.dev as usize == slot,
            "device {} found at slot {} instead of {}",
            id,
            b.dev,
            slot
        );
        check!(
            (vv, dd) == (hex16(v), hex16(d)),
            "slot {}: {:04x}:{:04x}, expected {}",
            slot,
            vv,
            dd,
            id
        );
        let (addr, size, is_mem) = pci::bar(b, 0);
        println!("  BAR0 {:#x} size {:#x}", addr, size);
        check!(
            is_mem && size == 0x8000,
            "slot {}: BAR0 is not a 32 KiB memory BAR",
            slot
        );
        check!(
            (0xc000_0000..0xfec0_0000).contains(&addr),
            "slot {}: BAR0 {:#x} outside the MMIO window",
            slot,
            addr
        );
        let mut caps = [0u8; 8];
        check!(
            pci::find_caps(b, 0x11, &mut caps) == 1,
            "slot {}: no MSI-X capability",
            slot
        );
        check!(
            pci::find_caps(b, 0x09, &mut caps) == 4,
            "slot {}: not 4 virtio capabilities",
            slot
        );
        check!(
            rt::virtio::Device::probe(b).is_some(),
            "slot {}: virtio capabilities incomplete",
            slot
        );
        check!(
            pci::read8(b, 8) >= 1,
            "slot {}: revision 0 (modern virtio needs >= 1)",
            slot
        );
    }
    check!(
        n == want + 1,
        "bus has {} devices, expected {} plus the host bridge",
        n,
        want
    );
    // Functions other than 0 and other buses are empty.
    check!(
        pci::read32(Bdf { dev: 1, func: 1 }, 0) == 0xffff_ffff,
        "phantom function 00:01.1"
    );
    println!("found exactly {} devices", want);
}
