//! Loading what the guest runs first: a Linux bzImage (64-bit boot protocol) or a 64-bit ELF
//! image (guest test programs), the initramfs, the command line and the zero page with the
//! e820 map; plus the platform tables (MP table) and the boot CPU state (long mode).

pub mod cpu_state;
pub mod mptable;

use crate::config::KernelImage;
use crate::error::{Error, Result};
use crate::layout::*;
use crate::memory::{self, GuestMemory};
use linux_loader::configurator::linux::LinuxBootConfigurator;
use linux_loader::configurator::{BootConfigurator, BootParams};
use linux_loader::loader::bootparam::{boot_e820_entry, boot_params, setup_header};
use linux_loader::loader::{BzImage, Elf, KernelLoader};
use std::fs::File;
use std::io::{Cursor, Read, Seek};
use std::path::Path;
use vm_memory::{Bytes, GuestAddress, GuestMemoryBackend};

const E820_RAM: u32 = 1;
const E820_RESERVED: u32 = 2;
/// `xloadflags` bit: the kernel has a 64-bit entry point at load address + 0x200.
const XLF_KERNEL_64: u16 = 1;
const KERNEL_BOOT_FLAG_MAGIC: u16 = 0xaa55;
const KERNEL_HDR_MAGIC: u32 = 0x5372_6448;

/// Where the boot CPU starts.
pub struct BootEntry {
    pub rip: u64,
}

/// Loads kernel, initrd and command line, writes the zero page and MP table.
pub fn load(
    mem: &GuestMemory,
    kernel: &KernelImage,
    initrd: Option<&Path>,
    cmdline: &str,
    cpus: u8,
    intx: &[mptable::PciIntx],
) -> Result<BootEntry> {
    let (entry, hdr) = match kernel {
        KernelImage::Path(path) => {
            let mut f = File::open(path).map_err(|err| Error::KernelUnreadable {
                path: path.clone(),
                err,
            })?;
            load_kernel(mem, &mut f, path)?
        }
        KernelImage::Bytes { name, data } => {
            load_kernel(mem, &mut Cursor::new(data), Path::new(name))?
        }
        KernelImage::Net => {
            return Err(Error::Netboot(
                "no kernel fetched yet: the boot firmware runs before loading (Vm::new)".into(),
            ))
        }
    };
    finish(mem, entry, hdr, cmdline, cpus, intx, |hdr| {
        initrd.map(|p| load_initrd(mem, p, hdr)).transpose()
    })
}

/// Loads what the network boot firmware fetched, as `load` does files.
pub fn load_fetched(
    mem: &GuestMemory,
    fetched: &crate::netboot::Loaded,
    cpus: u8,
    intx: &[mptable::PciIntx],
) -> Result<BootEntry> {
    let name = Path::new(&fetched.name);
    let (entry, hdr) = load_kernel(mem, &mut Cursor::new(&fetched.kernel[..]), name)?;
    finish(mem, entry, hdr, &fetched.cmdline, cpus, intx, |hdr| {
        let Some(data) = &fetched.initrd else {
            return Ok(None);
        };
        let addr = initrd_addr(mem, name, hdr, data.len() as u64)?;
        mem.write_slice(data, GuestAddress(addr))
            .map_err(|e| Error::Memory(format!("initrd: {e}")))?;
        Ok(Some((addr, data.len() as u64)))
    })
}

/// Command line, initrd (placed by `initrd`), zero page, MP table and CPU tables.
fn finish(
    mem: &GuestMemory,
    entry: BootEntry,
    hdr: Option<setup_header>,
    cmdline: &str,
    cpus: u8,
    intx: &[mptable::PciIntx],
    initrd: impl FnOnce(&setup_header) -> Result<Option<(u64, u64)>>,
) -> Result<BootEntry> {
    let hdr = match hdr {
        Some(h) => h,
        None => setup_header {
            boot_flag: KERNEL_BOOT_FLAG_MAGIC,
            header: KERNEL_HDR_MAGIC,
            kernel_alignment: 0x0100_0000,
            ..Default::default()
        },
    };
    let mut params = boot_params {
        hdr,
        ..Default::default()
    };
    // "Undefined" boot loader: 0 makes Linux treat us as LILO and fail (cloud-hypervisor #918).
    params.hdr.type_of_loader = 0xff;

    let max_cmdline = if params.hdr.cmdline_size != 0 {
        (params.hdr.cmdline_size as usize).min(CMDLINE_MAX)
    } else {
        CMDLINE_MAX
    };
    if cmdline.len() + 1 > max_cmdline {
        return Err(Error::CmdlineTooLong {
            len: cmdline.len(),
            max: max_cmdline - 1,
        });
    }
    let mut bytes = cmdline.as_bytes().to_vec();
    bytes.push(0);
    mem.write_slice(&bytes, GuestAddress(CMDLINE_ADDR))
        .map_err(|e| Error::Memory(e.to_string()))?;
    params.hdr.cmd_line_ptr = CMDLINE_ADDR as u32;
    params.hdr.cmdline_size = bytes.len() as u32;

    if let Some((addr, size)) = initrd(&params.hdr)? {
        params.hdr.ramdisk_image = addr as u32;
        params.hdr.ramdisk_size = size as u32;
    }

    let e820 = e820_map(mem);
    for (i, &(addr, size, ty)) in e820.iter().enumerate() {
        params.e820_table[i] = boot_e820_entry {
            addr,
            size,
            r#type: ty,
        };
    }
    params.e820_entries = e820.len() as u8;
    LinuxBootConfigurator::write_bootparams::<GuestMemory>(
        &BootParams::new::<boot_params>(&params, GuestAddress(ZERO_PAGE)),
        mem,
    )
    .map_err(|e| Error::Memory(format!("zero page: {e}")))?;

    mptable::write(mem, cpus, intx)?;
    cpu_state::write_tables(mem)?;
    Ok(entry)
}

fn load_kernel<F: Read + Seek + vm_memory::ReadVolatile>(
    mem: &GuestMemory,
    image: &mut F,
    path: &Path,
) -> Result<(BootEntry, Option<setup_header>)> {
    let mut magic = [0u8; 4];
    let format_err = |msg: String| Error::KernelFormat {
        path: path.to_owned(),
        msg,
    };
    image
        .read_exact(&mut magic)
        .map_err(|e| format_err(format!("cannot read its header: {e}")))?;
    image.rewind().map_err(|e| format_err(e.to_string()))?;
    if magic == *b"\x7fELF" {
        let r = Elf::load(mem, None, image, Some(GuestAddress(HIMEM_START)))
            .map_err(|e| format_err(format!("not a loadable ELF image: {e}")))?;
        // For ELF the loader reports the entry point as kernel_load.
        return Ok((
            BootEntry {
                rip: r.kernel_load.0,
            },
            None,
        ));
    }
    let r = BzImage::load(mem, None, image, Some(GuestAddress(HIMEM_START)))
        .map_err(|e| format_err(format!("neither ELF nor a loadable bzImage: {e}")))?;
    let hdr = r
        .setup_header
        .ok_or_else(|| format_err("bzImage without a setup header".into()))?;
    let (version, xloadflags) = (hdr.version, hdr.xloadflags);
    if version < 0x020c || xloadflags & XLF_KERNEL_64 == 0 {
        return Err(format_err(format!(
            "boot protocol {version:#x} without a 64-bit entry point (needs 2.12+ and XLF_KERNEL_64)"
        )));
    }
    Ok((
        BootEntry {
            rip: r.kernel_load.0 + 0x200,
        },
        Some(hdr),
    ))
}

/// Is this kernel image Linux? A bzImage (setup header "HdrS"), or an ELF image with a
/// "Linux" note (vmlinux; the guest test programs have none).
pub fn is_linux(image: &[u8]) -> bool {
    if image.get(0x202..0x206) == Some(b"HdrS") {
        return true;
    }
    if !image.starts_with(b"\x7fELF") || image.get(4) != Some(&2) {
        return false;
    }
    let u16_at = |o: usize| {
        image
            .get(o..o + 2)
            .map(|b| u16::from_le_bytes([b[0], b[1]]))
    };
    let u32_at = |o: usize| {
        image
            .get(o..o + 4)
            .map(|b| u32::from_le_bytes(b.try_into().unwrap()))
    };
    let u64_at = |o: usize| {
        image
            .get(o..o + 8)
            .map(|b| u64::from_le_bytes(b.try_into().unwrap()))
    };
    let (Some(phoff), Some(phentsize), Some(phnum)) = (u64_at(0x20), u16_at(0x36), u16_at(0x38))
    else {
        return false;
    };
    (0..phnum as u64).any(|i| {
        let ph = (phoff + i * phentsize as u64) as usize;
        if u32_at(ph) != Some(4) {
            return false; // not PT_NOTE
        }
        let (Some(off), Some(size)) = (u64_at(ph + 8), u64_at(ph + 0x20)) else {
            return false;
        };
        let Some(notes) = image.get(off as usize..(off.saturating_add(size)) as usize) else {
            return false;
        };
        let mut at = 0usize;
        while let (Some(namesz), Some(descsz)) = (
            notes
                .get(at..at + 4)
                .map(|b| u32::from_le_bytes(b.try_into().unwrap())),
            notes
                .get(at + 4..at + 8)
                .map(|b| u32::from_le_bytes(b.try_into().unwrap())),
        ) {
            let name = at + 12;
            if notes.get(name..name + namesz as usize) == Some(b"Linux\0") {
                return true;
            }
            let next = name
                .saturating_add((namesz as usize).next_multiple_of(4))
                .saturating_add((descsz as usize).next_multiple_of(4));
            if next <= at {
                return false;
            }
            at = next;
        }
        false
    })
}

/// `is_linux` for a kernel given by path or bytes (an unreadable file is not Linux; loading
/// it reports why).
pub fn image_is_linux(kernel: &KernelImage) -> bool {
    match kernel {
        KernelImage::Path(p) => std::fs::read(p).is_ok_and(|d| is_linux(&d)),
        KernelImage::Bytes { data, .. } => is_linux(data),
        KernelImage::Net => false,
    }
}

/// Places the initrd as high as allowed below 4 GiB, page aligned.
fn load_initrd(mem: &GuestMemory, path: &Path, hdr: &setup_header) -> Result<(u64, u64)> {
    let err = |msg: String| Error::Initrd {
        path: path.to_owned(),
        msg,
    };
    let mut f =
        File::open(path).map_err(|e| err(format!("{e}; pass --initrd with a readable file")))?;
    let size = f.metadata().map_err(|e| err(e.to_string()))?.len();
    let addr = initrd_addr(mem, path, hdr, size)?;
    mem.read_exact_volatile_from(GuestAddress(addr), &mut f, size as usize)
        .map_err(|e| err(format!("cannot load: {e}")))?;
    Ok((addr, size))
}

/// Where an initrd of `size` bytes goes: as high as the kernel allows, below 4 GiB.
fn initrd_addr(mem: &GuestMemory, path: &Path, hdr: &setup_header, size: u64) -> Result<u64> {
    let max = if hdr.initrd_addr_max != 0 {
        hdr.initrd_addr_max as u64
    } else {
        0x37ff_ffff
    };
    let top = memory::low_ram_end(mem).min(max + 1);
    // Keep clear of where the kernel decompresses itself (pref_address 16 MiB + init_size).
    top.checked_sub(size)
        .map(|a| a & !0xfff)
        .filter(|&a| a >= 96 << 20)
        .ok_or_else(|| Error::Initrd {
            path: path.to_owned(),
            msg: format!(
                "{} MiB does not fit in guest RAM; give the VM more --mem",
                size >> 20
            ),
        })
}

/// RAM below the EBDA, RAM from 1 MiB, RAM above 4 GiB; the EBDA/BIOS area reserved.
pub fn e820_map(mem: &GuestMemory) -> Vec<(u64, u64, u32)> {
    let mut map = vec![
        (0, LOW_RAM_END, E820_RAM),
        (LOW_RAM_END, HIMEM_START - LOW_RAM_END, E820_RESERVED),
    ];
    for r in mem.iter() {
        use vm_memory::GuestMemoryRegion;
        let (start, len) = (r.start_addr().0, r.len());
        let s = start.max(HIMEM_START);
        if start + len > s {
            map.push((s, start + len - s, E820_RAM));
        }
    }
    map
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn e820_covers_ram_and_skips_the_hole() {
        let mem = memory::create(4 << 30).unwrap();
        let map = e820_map(&mem);
        assert_eq!(map[0], (0, 0x9fc00, E820_RAM));
        assert_eq!(map[2], (0x10_0000, MMIO_START - 0x10_0000, E820_RAM));
        assert_eq!(map[3], (1 << 32, (4 << 30) - MMIO_START, E820_RAM));
    }

    #[test]
    fn garbage_kernel_is_an_error_not_a_panic() {
        let mem = memory::create(64 << 20).unwrap();
        for junk in [&b""[..], b"\x7fELF", b"MZ\0\0\0\0", &[0u8; 8192]] {
            let r = load_kernel(&mem, &mut Cursor::new(junk), Path::new("junk"));
            assert!(matches!(r, Err(Error::KernelFormat { .. })), "{junk:?}");
        }
    }

    #[test]
    fn linux_is_recognized_by_its_header_or_elf_note() {
        let mut bz = vec![0u8; 0x300];
        bz[0x202..0x206].copy_from_slice(b"HdrS");
        assert!(is_linux(&bz));
        assert!(!is_linux(crate::guest::program("hello").unwrap()));
        // An ELF with one PT_NOTE holding a GNU note, then a Linux note.
        let mut e = vec![0u8; 0x100];
        e[..5].copy_from_slice(b"\x7fELF\x02");
        e[0x20..0x28].copy_from_slice(&0x40u64.to_le_bytes());
        e[0x36..0x38].copy_from_slice(&56u16.to_le_bytes());
        e[0x38..0x3a].copy_from_slice(&1u16.to_le_bytes());
        e[0x40..0x44].copy_from_slice(&4u32.to_le_bytes());
        e[0x48..0x50].copy_from_slice(&0x80u64.to_le_bytes());
        let mut notes = Vec::new();
        for (name, desc) in [(&b"GNU\0"[..], &[1u8; 20][..]), (b"Linux\0", &[0u8; 4])] {
            notes.extend_from_slice(&(name.len() as u32).to_le_bytes());
            notes.extend_from_slice(&(desc.len() as u32).to_le_bytes());
            notes.extend_from_slice(&1u32.to_le_bytes());
            notes.extend_from_slice(name);
            notes.resize(notes.len().next_multiple_of(4), 0);
            notes.extend_from_slice(desc);
        }
        e[0x60..0x68].copy_from_slice(&(notes.len() as u64).to_le_bytes());
        e[0x80..0x80 + notes.len()].copy_from_slice(&notes);
        assert!(is_linux(&e));
        e[0x80 + 48] = b'X'; // "Linux" → "Xinux"
        assert!(!is_linux(&e));
        // Truncated or hostile headers are simply not Linux.
        for n in [0, 5, 0x40, 0x60, 0x90] {
            assert!(!is_linux(&e[..n]));
        }
    }

    #[test]
    fn guest_program_loads_with_cmdline() {
        let mem = memory::create(64 << 20).unwrap();
        let k = KernelImage::Bytes {
            name: "hello".into(),
            data: crate::guest::program("hello").unwrap(),
        };
        let e = load(&mem, &k, None, "a=b", 1, &[]).unwrap();
        assert_eq!(e.rip, 0x20_0000);
        let ptr: u32 = mem.read_obj(GuestAddress(ZERO_PAGE + 0x228)).unwrap();
        let mut s = [0u8; 4];
        mem.read_slice(&mut s, GuestAddress(ptr as u64)).unwrap();
        assert_eq!(&s, b"a=b\0");
        let long = "x".repeat(5000);
        assert!(matches!(
            load(&mem, &k, None, &long, 1, &[]),
            Err(Error::CmdlineTooLong { .. })
        ));
    }
}
