//! The CPL0 part: the entries (vmd's ELF boot in 32-bit compatibility mode,
//! and the boot sector SeaBIOS loads from a disk), the GDT, TSS, IDT and
//! static identity page tables, the interrupt stubs, and the drop to CPL 3.
//! Port I/O at CPL 3 goes through the TSS's I/O permission bitmap, which
//! allows every port: kvm-pvm keeps IOPL at 0 for user mode whatever the
//! guest asks.  Software interrupts do not reach this IDT there either,
//! so the two requests to CPL0 are faults: HLT (wait for an interrupt)
//! and CLI (halt for good) at CPL 3 raise #GP with IOPL 0 on any host.
//!
//! Everything here is assembly on purpose: on hosts whose KVM emulates CPL0
//! code instruction by instruction (about 1 µs each, and no SSE), the less
//! runs at CPL0 the better; all Rust code runs at CPL 3.
//!
//! Selectors: 0x08 kernel code64, 0x10 kernel data, 0x18 user code32 (unused;
//! keeps the SYSENTER layout), 0x20 user data, 0x28 user code64, 0x30 user
//! data, 0x38 the TSS.  User CS = 0x2b, SS = 0x33.
use core::arch::global_asm;

/// How the guest was started: by vmd loading the ELF, or from a disk by the
/// boot sector (which also loaded the script sector at 0x7e00).
pub const BOOT_ELF: u64 = 0;
pub const BOOT_DISK: u64 = 1;

/// Where the boot sector put the payload sectors, and how much.
pub const PAYLOAD_ADDR: u64 = 0x70000;
pub const PAYLOAD_LEN: u64 = 0x10000;

// The boot sector: SeaBIOS loads it at 0x7c00 and jumps to it in real mode
// with the drive in DL.  It reads the script sector (LBA 1) to 0x7e00, the
// payload (LBA 1536-1663) to 0x70000 and the image (LBA 2 on) to
// __image_start with int 13h extended reads, then
// enters long mode directly (PAE, the image's own page tables, LME, PE|PG)
// and jumps to entry64.
global_asm!(
    r#"
    .section .boot16, "awx"
    .code16
    .globl boot16
boot16:
    cli
    xorw %ax, %ax
    movw %ax, %ds
    movw %ax, %es
    movw %ax, %ss
    movw $0x7c00, %sp
    ljmp $0, $boot16_go
boot16_go:
    movb %dl, boot16_drive
    movw $1, dap_count
    movw $0x7e00, dap_off
    movw $0, dap_seg
    movl $1, dap_lba
    call boot16_read
    /* The payload: 64 KiB at LBA 1536 (768 KiB) to 0x70000, for tests of
       what the firmware's int 13h reads (boot-payload). */
    movw $128, dap_count
    movw $0, dap_off
    movw $0x7000, dap_seg
    movl $1536, dap_lba
    call boot16_read
    movw $__image_seg, dap_seg
    movl $2, dap_lba
    movw $__image_sectors, %bx
1:
    movw %bx, %cx
    cmpw $64, %cx
    jbe 2f
    movw $64, %cx
2:
    movw %cx, dap_count
    movw $0, dap_off
    pushw %cx
    call boot16_read
    popw %cx
    addw %cx, dap_lba
    movw %cx, %ax
    shlw $5, %ax
    addw %ax, dap_seg
    subw %cx, %bx
    jnz 1b

    inb $0x92, %al
    orb $2, %al
    andb $0xfe, %al
    outb %al, $0x92
    lgdtl boot16_gdt
    movl %cr4, %eax
    orl $0x20, %eax
    movl %eax, %cr4
    movl $boot_pml4, %eax
    movl %eax, %cr3
    movl $0xc0000080, %ecx
    rdmsr
    orl $0x100, %eax
    wrmsr
    movl %cr0, %eax
    orl $0x80000001, %eax
    movl %eax, %cr0
    movl $1, %edi
    movl $0x7e00, %esi
    ljmpl $0x08, $entry64

boot16_read:
    movw $dap, %si
    movb boot16_drive, %dl
    movb $0x42, %ah
    int $0x13
    jc 3f
    ret
3:
    movw $boot16_err, %si
4:
    lodsb
    testb %al, %al
    jz 5f
    movw $0x3f8, %dx
    outb %al, %dx
    jmp 4b
5:
    hlt
    jmp 5b

boot16_err:
    .asciz "testguest: boot sector: disk read error\n"
    .balign 4
boot16_gdt:
    .word 0x47
    .long gdt
dap:
    .byte 16, 0
dap_count:
    .word 0
dap_off:
    .word 0
dap_seg:
    .word 0
dap_lba:
    .quad 0
boot16_drive:
    .byte 0
    .code64
"#,
    options(att_syntax)
);

// The ELF entry: vmd starts the kernel in compatibility mode on its own GDT
// (0x08 flat 32-bit code, 0x18 64-bit code) with its identity page tables.
global_asm!(
    r#"
    .section .text.entry, "ax"
    .code32
    .globl entry32
entry32:
    xorl %edi, %edi
    xorl %esi, %esi
    ljmp $0x18, $entry64
    .code64

    .globl entry64
entry64:
    cli
    movl %edi, %r15d
    movl %esi, %r14d
    lgdt gdt_ptr(%rip)
    movw $0x10, %ax
    movw %ax, %ds
    movw %ax, %es
    movw %ax, %ss
    movw %ax, %fs
    movw %ax, %gs
    leaq boot_kstack_top(%rip), %rsp
    pushq $0x08
    leaq 1f(%rip), %rax
    pushq %rax
    lretq
1:
    leaq boot_pml4(%rip), %rax
    movq %rax, %cr3
    /* x87/SSE for the CPL3 code: MP and NE set, EM clear; OSFXSR,
       OSXMMEXCPT, PAE, PSE. */
    movq %cr0, %rax
    andq $~0x4, %rax
    orq $0x22, %rax
    movq %rax, %cr0
    movq %cr4, %rax
    orq $0x630, %rax
    movq %rax, %cr4

    /* The TSS descriptor (base split across the descriptor). */
    leaq tss(%rip), %rax
    movl %eax, %ecx
    andl $0xffffff, %ecx
    shlq $16, %rcx
    orq $(104 + 8192), %rcx
    movq $0x89, %rdx
    shlq $40, %rdx
    orq %rdx, %rcx
    movl %eax, %edx
    shrl $24, %edx
    shlq $56, %rdx
    orq %rdx, %rcx
    movq %rcx, gdt+0x38(%rip)
    shrq $32, %rax
    movq %rax, gdt+0x40(%rip)
    movw $0x38, %ax
    ltr %ax

    /* The IDT: 48 stubs (exceptions, PIC lines) and the halt gate. */
    leaq idt(%rip), %rdi
    leaq isr_stubs(%rip), %rax
    movl $48, %ecx
2:
    movl $0x8e00, %edx
    call set_gate
    addq $16, %rax
    addq $16, %rdi
    decl %ecx
    jnz 2b
    lidt idt_ptr(%rip)

    /* CPL 3, interrupts off, IOPL 0 on every host: port access comes from
       the TSS's bitmap, and CLI must fault (it is the halt request). */
    pushq $0x33
    leaq boot_ustack_top(%rip), %rax
    pushq %rax
    pushq $0x0002
    pushq $0x2b
    leaq user_start(%rip), %rax
    pushq %rax
    iretq

/* rax = handler, rdi = the gate, edx = attributes << 8 */
set_gate:
    movq %rax, %rbx
    andq $0xffff, %rbx
    orq $0x80000, %rbx
    movq %rdx, %r8
    shlq $32, %r8
    orq %r8, %rbx
    movq %rax, %r8
    shrq $16, %r8
    andq $0xffff, %r8
    shlq $48, %r8
    orq %r8, %rbx
    movq %rbx, (%rdi)
    movq %rax, %r8
    shrq $32, %r8
    movq %r8, 8(%rdi)
    ret

/* BSS (minus the stacks) is cleared here, natively: a disk boot loads
   only the file's bytes. */
user_start:
    leaq __bss_zero_start(%rip), %rdi
    leaq __bss_zero_end(%rip), %rcx
    subq %rdi, %rcx
    xorl %eax, %eax
    cld
    rep stosb
    movq %r15, %rdi
    movq %r14, %rsi
    call testguest_main
    cli
    ud2

/* CLI from CPL 3 (a #GP: IOPL is 0): stop for good. */
halt_gate:
    cli
3:
    hlt
    jmp 3b

    .balign 16
isr_stubs:
    .set vec, 0
    .rept 48
    .balign 16
    .if (vec == 8) || (vec == 10) || (vec == 11) || (vec == 12) || (vec == 13) || (vec == 14) || (vec == 17)
    .else
    pushq $0
    .endif
    pushq $vec
    jmp isr_common
    .set vec, vec + 1
    .endr

/* Stack: vector, error code, then the CPU's frame. */
isr_common:
    cmpq $32, (%rsp)
    jae irq_common
    /* The two "system calls": software interrupts do not reach this IDT
       on every host, but a #GP from CPL 3 does.  HLT waits for an
       interrupt with interrupts enabled, CLI stops. */
    cmpq $13, (%rsp)
    jne 9f
    testq $3, 24(%rsp)
    jz 9f
    movq 16(%rsp), %rax
    movb (%rax), %al
    cmpb $0xfa, %al
    je halt_gate
    cmpb $0xf4, %al
    jne 9f
    incq 16(%rsp)
    sti
    hlt
    cli
    addq $16, %rsp
    iretq
9:
    leaq exc_msg(%rip), %rsi
    call kputs
    movq (%rsp), %rax
    call kputhex
    leaq exc_err(%rip), %rsi
    call kputs
    movq 8(%rsp), %rax
    call kputhex
    leaq exc_rip(%rip), %rsi
    call kputs
    movq 16(%rsp), %rax
    call kputhex
    leaq exc_cs(%rip), %rsi
    call kputs
    movq 24(%rsp), %rax
    call kputhex
    leaq exc_fl(%rip), %rsi
    call kputs
    movq 32(%rsp), %rax
    call kputhex
    leaq exc_cr2(%rip), %rsi
    call kputs
    movq %cr2, %rax
    call kputhex
    leaq exc_rsp(%rip), %rsi
    call kputs
    movq 40(%rsp), %rax
    call kputhex
    movb $10, %al
    call kputc
    jmp halt_gate

/* A PIC line: count it, mask it (it is level-triggered: the CPL3 driver
   acknowledges the device, then unmasks), end of interrupt. */
irq_common:
    pushq %rax
    pushq %rcx
    pushq %rdx
    movq 24(%rsp), %rcx
    subq $32, %rcx
    leaq irq_counts(%rip), %rax
    incq (%rax,%rcx,8)
    cmpl $8, %ecx
    jae 4f
    movb $1, %dl
    shlb %cl, %dl
    inb $0x21, %al
    orb %dl, %al
    outb %al, $0x21
    movb $0x20, %al
    outb %al, $0x20
    jmp 5f
4:
    subl $8, %ecx
    movb $1, %dl
    shlb %cl, %dl
    inb $0xa1, %al
    orb %dl, %al
    outb %al, $0xa1
    movb $0x20, %al
    outb %al, $0xa0
    outb %al, $0x20
5:
    popq %rdx
    popq %rcx
    popq %rax
    addq $16, %rsp
    iretq

kputc:
    pushq %rdx
    pushq %rax
    movw $0x3fd, %dx
6:
    inb %dx, %al
    testb $0x20, %al
    jz 6b
    popq %rax
    movw $0x3f8, %dx
    outb %al, %dx
    popq %rdx
    ret

kputs:
    lodsb
    testb %al, %al
    jz 7f
    call kputc
    jmp kputs
7:
    ret

kputhex:
    movq %rax, %rbx
    movl $16, %ecx
8:
    rolq $4, %rbx
    movl %ebx, %eax
    andl $0xf, %eax
    leaq hexdigits(%rip), %rsi
    movb (%rsi,%rax), %al
    call kputc
    decl %ecx
    jnz 8b
    ret

    .section .rodata
exc_msg:
    .asciz "\nFATAL exception "
exc_err:
    .asciz " err "
exc_rip:
    .asciz " rip "
exc_cs:
    .asciz " cs "
exc_fl:
    .asciz " rflags "
exc_rsp:
    .asciz " rsp "
exc_cr2:
    .asciz " cr2 "
hexdigits:
    .ascii "0123456789abcdef"

    .section .data
    .balign 16
    .globl gdt
gdt:
    .quad 0
    .quad 0x00af9b000000ffff
    .quad 0x00cf93000000ffff
    .quad 0x00cffb000000ffff
    .quad 0x00cff3000000ffff
    .quad 0x00affb000000ffff
    .quad 0x00cff3000000ffff
    .quad 0
    .quad 0
gdt_ptr:
    .word 0x47
    .quad gdt
idt_ptr:
    .word 4095
    .quad idt
    .balign 16
tss:
    .long 0
    .quad boot_kstack_top
    .quad 0, 0, 0
    .fill 7, 8, 0
    .quad 0
    .word 0
    .word 104
    /* The I/O permission bitmap: every port allowed, in case the host
       does not let IOPL 3 through to CPL 3. */
    .fill 8192, 1, 0
    .byte 0xff
tss_end:

    .section .data.pagetables, "aw"
    .balign 4096
    .globl boot_pml4
boot_pml4:
    .quad boot_pdpt + 7
    .fill 511, 8, 0
boot_pdpt:
    .quad boot_pd + 7
    .quad boot_pd + 0x1007
    .quad boot_pd + 0x2007
    .quad boot_pd + 0x3007
    .fill 508, 8, 0
boot_pd:
    .set pde, 0
    .rept 2048
    .quad (pde << 21) | 0x87
    .set pde, pde + 1
    .endr

    /* Zero-filled in the file: the disk loader does not clear BSS. */
    .section .data
    .balign 4096
idt:
    .fill 4096, 1, 0
    .globl irq_counts
irq_counts:
    .fill 16, 8, 0

    /* Not cleared by user_start: the stacks in use while it runs. */
    .section .bss.boot, "aw", @nobits
    .balign 16
    .skip 16384
boot_kstack_top:
    .skip 131072
boot_ustack_top:
    .text
"#,
    options(att_syntax)
);
