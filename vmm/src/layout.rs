//! Guest physical memory layout (below 1 MiB follows the Linux boot protocol conventions
//! used by Firecracker and vmm-reference).

/// Boot GDT and (empty) IDT.
pub const GDT_ADDR: u64 = 0x500;
pub const IDT_ADDR: u64 = 0x520;
/// Linux zero page (`boot_params`); RSI points here at entry.
pub const ZERO_PAGE: u64 = 0x7000;
/// Initial stack top.
pub const BOOT_STACK: u64 = 0x8ff0;
/// Identity page tables: PML4, one PDPT, four page directories (4 GiB in 2 MiB pages).
pub const PML4_ADDR: u64 = 0x9000;
pub const PDPT_ADDR: u64 = 0xa000;
pub const PD_ADDR: u64 = 0xb000;
/// Kernel command line.
pub const CMDLINE_ADDR: u64 = 0x20000;
pub const CMDLINE_MAX: usize = 2048;
/// MP table, in the EBDA (Linux scans it for the floating pointer).
pub const MPTABLE_ADDR: u64 = 0x9fc00;
/// End of low RAM reported by e820 (the EBDA and legacy hole follow).
pub const LOW_RAM_END: u64 = 0x9fc00;
/// Start of high RAM (kernel load address for bzImage and ELF loader minimum).
pub const HIMEM_START: u64 = 0x10_0000;
/// RAM below 4 GiB ends here; PCI MMIO BARs live in [MMIO_START, IOAPIC).
pub const MMIO_START: u64 = 0xc000_0000;
pub const MMIO_END: u64 = 0xfec0_0000;
pub const IOAPIC_ADDR: u64 = 0xfec0_0000;
pub const LAPIC_ADDR: u64 = 0xfee0_0000;
/// RAM beyond MMIO_START continues here.
pub const HIGH_RAM_START: u64 = 1 << 32;
/// KVM needs three pages for the TSS just below the BIOS area.
pub const KVM_TSS_ADDR: usize = 0xfffb_d000;
pub const KVM_IDENTITY_MAP_ADDR: u64 = 0xfffb_c000;

pub const MAX_CPUS: u8 = 16;
pub const MIN_MEM: u64 = 16 << 20;
pub const MAX_MEM: u64 = 64 << 30;

/// Legacy interrupt lines (GSIs) and ports.
pub const SERIAL_IRQ: u32 = 4;
pub const COM1: u16 = 0x3f8;
/// Guest test programs write their result here (0 = pass), like QEMU's isa-debug-exit.
pub const TEST_EXIT_PORT: u16 = 0xf4;
/// Guest writes here are timestamped with exit counters (benchmarks bracket phases).
pub const MARK_PORT: u16 = 0xf5;
/// A guest program's exception handler reports error code / RIP here before failing.
pub const FAULT_INFO_PORT: u16 = 0xf6;
/// Firecracker-style boot timer: init writes 123 here when userspace starts.
pub const BOOT_MARKER_PORT: u16 = 0x3f0;
/// Number of IOAPIC pins KVM emulates; GSIs above are free for MSI routes.
pub const IOAPIC_PINS: u32 = 24;
