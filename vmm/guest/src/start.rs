//! CPL0 startup: the monitor enters `_start` in 64-bit mode with identity paging (user pages)
//! and RSI pointing at the zero page. CPL0 code is emulated instruction by instruction on
//! nested KVM without hardware assistance, so this does the minimum in plain integer asm:
//! own GDT + TSS, an IDT whose stubs count device interrupts and turn exceptions into a
//! failure exit, legacy PIC/LINT0 masked, then IRETQ to CPL3 with IOPL=3 and IF=1.

use core::arch::global_asm;

/// First vector used for device (MSI-X) interrupts; vectors IRQ_BASE..IRQ_BASE+16 are counted.
pub const IRQ_BASE: u8 = 0x40;

#[no_mangle]
pub static mut BOOT_PARAMS: u64 = 0;
#[no_mangle]
pub static mut IRQ_COUNTS: [u64; 16] = [0; 16];

global_asm!(
    r#"
    .section .text.start, "ax"
    .global _start
    .code64
_start:
    cli
    lea rsp, [rip + rt_kstack_top]
    mov [rip + BOOT_PARAMS], rsi

    /* TSS: rsp0 for interrupts taken at CPL3, and its descriptor base in the GDT. */
    lea rax, [rip + rt_kstack_top]
    mov [rip + rt_tss + 4], rax
    /* I/O permission bitmap (all ports allowed) besides IOPL=3: some software-assisted
       KVMs (PVM) honour only the bitmap for CPL3 port access. */
    mov word ptr [rip + rt_tss + 0x66], 104
    mov byte ptr [rip + rt_tss + 104 + 8192], 0xff
    lea rax, [rip + rt_tss]
    lea rdi, [rip + rt_gdt + 0x28]
    mov [rdi + 2], ax
    shr rax, 16
    mov [rdi + 4], al
    mov [rdi + 7], ah
    shr rax, 16
    mov [rdi + 8], eax

    lgdt [rip + rt_gdt_ptr]
    push 0x08
    lea rax, [rip + 2f]
    push rax
    retfq
2:
    mov ax, 0x10
    mov ds, ax
    mov es, ax
    mov ss, ax
    mov fs, ax
    mov gs, ax
    mov ax, 0x28
    ltr ax

    /* 256 interrupt gates, stub i at rt_isr_stubs + 16*i. */
    lea rdi, [rip + rt_idt]
    lea rsi, [rip + rt_isr_stubs]
    xor ecx, ecx
3:
    mov rax, rsi
    mov [rdi], ax
    mov word ptr [rdi + 2], 0x08
    mov word ptr [rdi + 4], 0x8e00
    shr rax, 16
    mov [rdi + 6], ax
    shr rax, 16
    mov [rdi + 8], eax
    mov dword ptr [rdi + 12], 0
    add rdi, 16
    add rsi, 16
    inc ecx
    cmp ecx, 256
    jne 3b
    lidt [rip + rt_idt_ptr]

    /* Mask both PICs and LINT0 (ExtINT): only MSI-X reaches us. Software-enable the LAPIC. */
    mov al, 0xff
    out 0x21, al
    out 0xa1, al
    mov rax, 0xfee00350
    mov dword ptr [rax], 0x10000
    mov rax, 0xfee000f0
    mov dword ptr [rax], 0x1ff

    /* To CPL3: SS, RSP, RFLAGS (IF | IOPL=3), CS, RIP. */
    push 0x1b
    lea rax, [rip + rt_ustack_top - 8]
    push rax
    push 0x3202
    push 0x23
    lea rax, [rip + rt_user_entry]
    push rax
    iretq

    .global rt_isr_common
rt_isr_common:
    push rax
    push rcx
    mov rax, [rsp + 16]
    cmp rax, 0xff
    je 5f
    sub rax, 0x40
    cmp rax, 16
    jae 4f
    lea rcx, [rip + IRQ_COUNTS]
    lock inc qword ptr [rcx + rax * 8]
    mov rax, 0xfee000b0
    mov dword ptr [rax], 0
5:
    pop rcx
    pop rax
    add rsp, 8
    iretq
4:
    /* Exception or unexpected vector: the two words above the vector (error code and/or
       RIP) to the fault-info port, then exit code 0x100 + vector through the test port. */
    mov dx, 0xf6
    mov rax, [rsp + 24]
    out dx, eax
    mov rax, [rsp + 32]
    out dx, eax
    mov rax, [rsp + 16]
    add eax, 0x100
    mov dx, 0xf4
    out dx, eax
6:
    hlt
    jmp 6b

    .section .data.rt_gdt, "aw"
    .align 16
rt_gdt:
    .quad 0
    .quad 0x00af9b000000ffff
    .quad 0x00cf93000000ffff
    .quad 0x00cff3000000ffff
    .quad 0x00affb000000ffff
    .quad 0x0000890000002068
    .quad 0
rt_gdt_end:
    .align 16
rt_gdt_ptr:
    .word rt_gdt_end - rt_gdt - 1
    .quad rt_gdt
    .align 16
rt_idt_ptr:
    .word 256 * 16 - 1
    .quad rt_idt

    .section .bss.rt_tables, "aw", @nobits
    .align 4096
rt_idt:
    .skip 4096
rt_tss:
    .skip 104 + 8192 + 1
    .align 16
rt_kstack:
    .skip 16384
rt_kstack_top:
    .align 16
rt_ustack:
    .skip 262144
rt_ustack_top:
"#
);

// Interrupt stubs in AT&T syntax, where `$vec` is unambiguously an immediate.
global_asm!(
    r#"
    .section .text.start, "ax"
    .align 16
    .global rt_isr_stubs
rt_isr_stubs:
    .set vec, 0
    .rept 256
    .align 16
    pushq $vec
    jmp rt_isr_common
    .set vec, vec + 1
    .endr
"#,
    options(att_syntax)
);
