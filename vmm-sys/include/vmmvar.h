/*
 * vmmvar.h -- the amd64 vmm(4) ioctl ABI as seen by userland, written for
 * this project from the published layout of OpenBSD 7.8/7.9 ("era B":
 * sys/dev/vmm/vmm.h 1.11, sys/arch/amd64/include/vmmvar.h 1.117).
 *
 * Only what userland needs is here: the ioctl argument structures, the
 * exit record, register state and the constants vmd uses.  Layouts are
 * LP64 with natural alignment, exactly as the OpenBSD kernel lays them out;
 * tests in vmm-sys assert every size and offset.
 *
 * Era B has no vee_gpa in struct vm_exit_eptviolation; adding it would move
 * vrs inside struct vm_exit and break the record the kernel writes.
 */
#ifndef VMM_SYS_VMMVAR_H
#define VMM_SYS_VMMVAR_H

#include <stdint.h>
#include <stddef.h>

typedef uint64_t vmm_paddr_t;	/* paddr_t on amd64 */
typedef uint64_t vmm_vaddr_t;	/* vaddr_t on amd64 */
typedef int32_t vmm_pid_t;	/* pid_t */

#define VMM_HV_SIGNATURE	"OpenBSDVMM58"

/* Limits (dev/vmm/vmm.h) */
#define VMM_MAX_MEM_RANGES	16
#define VMM_MAX_DISKS_PER_VM	4
#define VMM_MAX_NAME_LEN	64
#define VMM_MAX_VCPUS		512
#define VMM_MAX_VCPUS_PER_VM	64
#define VMM_MAX_VM_MEM_SIZE	(128ULL * 1024 * 1024 * 1024)
#define VMM_MAX_NICS_PER_VM	4

#define VMM_PCI_MMIO_BAR_BASE	0xF0000000ULL
#define VMM_PCI_MMIO_BAR_END	0xFFDFFFFFULL
#define VMM_PCI_MMIO_BAR_SIZE	0x00010000
#define VMM_PCI_IO_BAR_BASE	0x1000
#define VMM_PCI_IO_BAR_END	0xFFFF
#define VMM_PCI_IO_BAR_SIZE	0x1000

/* Guest memory range types */
#define VM_MEM_RAM		0
#define VM_MEM_RESERVED		1
#define VM_MEM_MMIO		2

/* VMX basic exit reasons */
#define VMX_EXIT_NMI				0
#define VMX_EXIT_EXTINT				1
#define VMX_EXIT_TRIPLE_FAULT			2
#define VMX_EXIT_INIT				3
#define VMX_EXIT_SIPI				4
#define VMX_EXIT_IO_SMI				5
#define VMX_EXIT_OTHER_SMI			6
#define VMX_EXIT_INT_WINDOW			7
#define VMX_EXIT_NMI_WINDOW			8
#define VMX_EXIT_TASK_SWITCH			9
#define VMX_EXIT_CPUID				10
#define VMX_EXIT_GETSEC				11
#define VMX_EXIT_HLT				12
#define VMX_EXIT_INVD				13
#define VMX_EXIT_INVLPG				14
#define VMX_EXIT_RDPMC				15
#define VMX_EXIT_RDTSC				16
#define VMX_EXIT_RSM				17
#define VMX_EXIT_VMCALL				18
#define VMX_EXIT_VMCLEAR			19
#define VMX_EXIT_VMLAUNCH			20
#define VMX_EXIT_VMPTRLD			21
#define VMX_EXIT_VMPTRST			22
#define VMX_EXIT_VMREAD				23
#define VMX_EXIT_VMRESUME			24
#define VMX_EXIT_VMWRITE			25
#define VMX_EXIT_VMXOFF				26
#define VMX_EXIT_VMXON				27
#define VMX_EXIT_CR_ACCESS			28
#define VMX_EXIT_MOV_DR				29
#define VMX_EXIT_IO				30
#define VMX_EXIT_RDMSR				31
#define VMX_EXIT_WRMSR				32
#define VMX_EXIT_ENTRY_FAILED_GUEST_STATE	33
#define VMX_EXIT_ENTRY_FAILED_MSR_LOAD		34
#define VMX_EXIT_MWAIT				36
#define VMX_EXIT_MTF				37
#define VMX_EXIT_MONITOR			39
#define VMX_EXIT_PAUSE				40
#define VMX_EXIT_ENTRY_FAILED_MCE		41
#define VMX_EXIT_TPR_BELOW_THRESHOLD		43
#define VMX_EXIT_APIC_ACCESS			44
#define VMX_EXIT_VIRTUALIZED_EOI		45
#define VMX_EXIT_GDTR_IDTR			46
#define VMX_EXIT_LDTR_TR			47
#define VMX_EXIT_EPT_VIOLATION			48
#define VMX_EXIT_EPT_MISCONFIGURATION		49
#define VMX_EXIT_INVEPT				50
#define VMX_EXIT_RDTSCP				51
#define VMX_EXIT_VMX_PREEMPTION_TIMER_EXPIRED	52
#define VMX_EXIT_INVVPID			53
#define VMX_EXIT_WBINVD				54
#define VMX_EXIT_XSETBV				55
#define VMX_EXIT_APIC_WRITE			56
#define VMX_EXIT_RDRAND				57
#define VMX_EXIT_INVPCID			58
#define VMX_EXIT_VMFUNC				59
#define VMX_EXIT_RDSEED				61
#define VMX_EXIT_XSAVES				63
#define VMX_EXIT_XRSTORS			64

/* Exit reasons that are neither VMX nor SVM */
#define VM_EXIT_TERMINATED			0xFFFE
#define VM_EXIT_NONE				0xFFFF

/* SVM exit codes vmd dispatches on (the full CRx/DRx/EXCPx ranges included) */
#define SVM_VMEXIT_CR0_READ			0x00
#define SVM_VMEXIT_CR0_WRITE			0x10
#define SVM_VMEXIT_DR0_READ			0x20
#define SVM_VMEXIT_DR0_WRITE			0x30
#define SVM_VMEXIT_EXCP0			0x40
#define SVM_VMEXIT_INTR				0x60
#define SVM_VMEXIT_NMI				0x61
#define SVM_VMEXIT_SMI				0x62
#define SVM_VMEXIT_INIT				0x63
#define SVM_VMEXIT_VINTR			0x64
#define SVM_VMEXIT_CR0_SEL_WRITE		0x65
#define SVM_VMEXIT_IDTR_READ			0x66
#define SVM_VMEXIT_GDTR_READ			0x67
#define SVM_VMEXIT_LDTR_READ			0x68
#define SVM_VMEXIT_TR_READ			0x69
#define SVM_VMEXIT_IDTR_WRITE			0x6A
#define SVM_VMEXIT_GDTR_WRITE			0x6B
#define SVM_VMEXIT_LDTR_WRITE			0x6C
#define SVM_VMEXIT_TR_WRITE			0x6D
#define SVM_VMEXIT_RDTSC			0x6E
#define SVM_VMEXIT_RDPMC			0x6F
#define SVM_VMEXIT_PUSHF			0x70
#define SVM_VMEXIT_POPF				0x71
#define SVM_VMEXIT_CPUID			0x72
#define SVM_VMEXIT_RSM				0x73
#define SVM_VMEXIT_IRET				0x74
#define SVM_VMEXIT_SWINT			0x75
#define SVM_VMEXIT_INVD				0x76
#define SVM_VMEXIT_PAUSE			0x77
#define SVM_VMEXIT_HLT				0x78
#define SVM_VMEXIT_INVLPG			0x79
#define SVM_VMEXIT_INVLPGA			0x7A
#define SVM_VMEXIT_IOIO				0x7B
#define SVM_VMEXIT_MSR				0x7C
#define SVM_VMEXIT_TASK_SWITCH			0x7D
#define SVM_VMEXIT_FERR_FREEZE			0x7E
#define SVM_VMEXIT_SHUTDOWN			0x7F
#define SVM_VMEXIT_VMRUN			0x80
#define SVM_VMEXIT_VMMCALL			0x81
#define SVM_VMEXIT_VMLOAD			0x82
#define SVM_VMEXIT_VMSAVE			0x83
#define SVM_VMEXIT_STGI				0x84
#define SVM_VMEXIT_CLGI				0x85
#define SVM_VMEXIT_SKINIT			0x86
#define SVM_VMEXIT_RDTSCP			0x87
#define SVM_VMEXIT_ICEBP			0x88
#define SVM_VMEXIT_WBINVD			0x89
#define SVM_VMEXIT_MONITOR			0x8A
#define SVM_VMEXIT_MWAIT			0x8B
#define SVM_VMEXIT_MWAIT_CONDITIONAL		0x8C
#define SVM_VMEXIT_XSETBV			0x8D
#define SVM_VMEXIT_EFER_WRITE_TRAP		0x8F
#define SVM_VMEXIT_CR0_WRITE_TRAP		0x90
#define SVM_VMEXIT_NPF				0x400
#define SVM_AVIC_INCOMPLETE_IPI			0x401
#define SVM_AVIC_NOACCEL			0x402
#define SVM_VMEXIT_VMGEXIT			0x403

/* Exception vectors for VCPU_INJECT_EX */
#define VMM_EX_DE	0
#define VMM_EX_DB	1
#define VMM_EX_NMI	2
#define VMM_EX_BP	3
#define VMM_EX_OF	4
#define VMM_EX_BR	5
#define VMM_EX_UD	6
#define VMM_EX_NM	7
#define VMM_EX_DF	8
#define VMM_EX_CP	9
#define VMM_EX_TS	10
#define VMM_EX_NP	11
#define VMM_EX_SS	12
#define VMM_EX_GP	13
#define VMM_EX_PF	14
#define VMM_EX_MF	16
#define VMM_EX_AC	17
#define VMM_EX_MC	18
#define VMM_EX_XM	19
#define VMM_EX_VE	20

/* Per-vCPU states reported in vir_vcpu_state */
#define VCPU_STATE_STOPPED	0
#define VCPU_STATE_RUNNING	1
#define VCPU_STATE_REQTERM	2
#define VCPU_STATE_TERMINATED	3
#define VCPU_STATE_UNKNOWN	4

/* vei_dir */
#define VEI_DIR_OUT	0
#define VEI_DIR_IN	1

/* CPU modes used by the MMIO decoder */
#define VMM_CPU_MODE_REAL	0
#define VMM_CPU_MODE_PROT	1
#define VMM_CPU_MODE_PROT32	2
#define VMM_CPU_MODE_COMPAT	3
#define VMM_CPU_MODE_LONG	4
#define VMM_CPU_MODE_UNKNOWN	5

/* Ports named in vmmvar.h */
#define PCKBC_AUX	0x61
#define ELCR0		0x4D0
#define ELCR1		0x4D1

/* struct vm_exit_inout: an IN/OUT exit */
struct vm_exit_inout {
	uint8_t		vei_size;	/* access size: 1, 2 or 4 */
	uint8_t		vei_dir;	/* VEI_DIR_OUT or VEI_DIR_IN */
	uint8_t		vei_rep;	/* REP prefix present */
	uint8_t		vei_string;	/* INS/OUTS */
	uint8_t		vei_encoding;	/* 0: port in DX, 1: immediate */
	uint16_t	vei_port;
	uint32_t	vei_data;	/* OUT: value; IN: result for RAX */
	uint8_t		vei_insn_len;	/* length of the IN/OUT instruction */
};

/* vee_fault_type */
#define VEE_FAULT_INVALID	0
#define VEE_FAULT_HANDLED	1
#define VEE_FAULT_MMIO_ASSIST	2
#define VEE_FAULT_PROTECT	3

/* vee_insn_info bits */
#define VEE_LEN_VALID		0x1	/* vee_insn_len is valid (VMX) */
#define VEE_BYTES_VALID		0x2	/* vee_insn_bytes is valid (SVM) */

/* struct vm_exit_eptviolation: an EPT violation / nested page fault */
struct vm_exit_eptviolation {
	uint8_t		vee_fault_type;
	uint8_t		vee_insn_info;
	uint8_t		vee_insn_len;		/* [VMX] instruction length */
	uint8_t		vee_insn_bytes[15];	/* [SVM] bytes at RIP */
};

/* struct vcpu_inject_event: an event to inject on the next VMM_IOC_RUN */
struct vcpu_inject_event {
	uint8_t		vie_vector;
	uint32_t	vie_errorcode;
	uint8_t		vie_type;
};
#define VCPU_INJECT_NONE	0
#define VCPU_INJECT_INTR	1	/* external interrupt */
#define VCPU_INJECT_EX		2	/* exception */
#define VCPU_INJECT_NMI		3	/* non-maskable interrupt */

/* struct vcpu_segment_info: selector, limit, VMX access rights, base */
struct vcpu_segment_info {
	uint16_t	vsi_sel;
	uint32_t	vsi_limit;
	uint32_t	vsi_ar;
	uint64_t	vsi_base;
};

/* GPR indices: x86 encoding order (era B) */
#define VCPU_REGS_RAX		0
#define VCPU_REGS_RCX		1
#define VCPU_REGS_RDX		2
#define VCPU_REGS_RBX		3
#define VCPU_REGS_RSP		4
#define VCPU_REGS_RBP		5
#define VCPU_REGS_RSI		6
#define VCPU_REGS_RDI		7
#define VCPU_REGS_R8		8
#define VCPU_REGS_R9		9
#define VCPU_REGS_R10		10
#define VCPU_REGS_R11		11
#define VCPU_REGS_R12		12
#define VCPU_REGS_R13		13
#define VCPU_REGS_R14		14
#define VCPU_REGS_R15		15
#define VCPU_REGS_RIP		16
#define VCPU_REGS_RFLAGS	17
#define VCPU_REGS_NGPRS		(VCPU_REGS_RFLAGS + 1)

#define VCPU_REGS_CR0		0
#define VCPU_REGS_CR2		1
#define VCPU_REGS_CR3		2
#define VCPU_REGS_CR4		3
#define VCPU_REGS_CR8		4
#define VCPU_REGS_XCR0		5
#define VCPU_REGS_PDPTE0	6
#define VCPU_REGS_PDPTE1	7
#define VCPU_REGS_PDPTE2	8
#define VCPU_REGS_PDPTE3	9
#define VCPU_REGS_NCRS		(VCPU_REGS_PDPTE3 + 1)

/* Segment register indices: x86 encoding order (era B) */
#define VCPU_REGS_ES		0
#define VCPU_REGS_CS		1
#define VCPU_REGS_SS		2
#define VCPU_REGS_DS		3
#define VCPU_REGS_FS		4
#define VCPU_REGS_GS		5
#define VCPU_REGS_LDTR		6
#define VCPU_REGS_TR		7
#define VCPU_REGS_NSREGS	(VCPU_REGS_TR + 1)

#define VCPU_REGS_EFER		0
#define VCPU_REGS_STAR		1
#define VCPU_REGS_LSTAR		2
#define VCPU_REGS_CSTAR		3
#define VCPU_REGS_SFMASK	4
#define VCPU_REGS_KGSBASE	5
#define VCPU_REGS_MISC_ENABLE	6
#define VCPU_REGS_NMSRS		(VCPU_REGS_MISC_ENABLE + 1)

#define VCPU_REGS_DR0		0
#define VCPU_REGS_DR1		1
#define VCPU_REGS_DR2		2
#define VCPU_REGS_DR3		3
#define VCPU_REGS_DR6		4
#define VCPU_REGS_DR7		5
#define VCPU_REGS_NDRS		(VCPU_REGS_DR7 + 1)

struct vcpu_reg_state {
	uint64_t			vrs_gprs[VCPU_REGS_NGPRS];
	uint64_t			vrs_crs[VCPU_REGS_NCRS];
	uint64_t			vrs_msrs[VCPU_REGS_NMSRS];
	uint64_t			vrs_drs[VCPU_REGS_NDRS];
	struct vcpu_segment_info	vrs_sregs[VCPU_REGS_NSREGS];
	struct vcpu_segment_info	vrs_gdtr;
	struct vcpu_segment_info	vrs_idtr;
};

/* struct vm_exit: the exit record VMM_IOC_RUN fills in through vrp_exit */
struct vm_exit {
	union {
		struct vm_exit_inout		vei;	/* IN/OUT exit */
		struct vm_exit_eptviolation	vee;	/* EPT violation / NPF */
	};
	struct vcpu_reg_state		vrs;
	int				cpl;
};

struct vm_mem_range {
	vmm_paddr_t	vmr_gpa;
	vmm_vaddr_t	vmr_va;
	size_t		vmr_size;
	int		vmr_type;	/* VM_MEM_RAM, _RESERVED, _MMIO */
};

struct vm_create_params {
	/* in */
	size_t			vcp_nmemranges;
	size_t			vcp_ncpus;
	struct vm_mem_range	vcp_memranges[VMM_MAX_MEM_RANGES];
	char			vcp_name[VMM_MAX_NAME_LEN];
	int			vcp_sev;
	int			vcp_seves;
	/* out */
	uint32_t		vcp_id;
	uint32_t		vcp_poscbit;
	uint32_t		vcp_asid[VMM_MAX_VCPUS];
};

struct vm_info_result {
	size_t		vir_memory_size;
	size_t		vir_used_size;
	size_t		vir_ncpus;
	uint8_t		vir_vcpu_state[VMM_MAX_VCPUS_PER_VM];
	vmm_pid_t	vir_creator_pid;
	uint32_t	vir_id;
	char		vir_name[VMM_MAX_NAME_LEN];
};

struct vm_info_params {
	size_t			vip_size;	/* in: buffer size; out: needed */
	size_t			vip_info_ct;	/* out: entries returned */
	struct vm_info_result	*vip_info;	/* out: buffer */
};

struct vm_terminate_params {
	uint32_t	vtp_vm_id;
};

struct vm_resetcpu_params {
	uint32_t		vrp_vm_id;
	uint32_t		vrp_vcpu_id;
	struct vcpu_reg_state	vrp_init_state;
};

struct vm_sharemem_params {
	/* in */
	uint32_t		vsp_vm_id;
	size_t			vsp_nmemranges;
	struct vm_mem_range	vsp_memranges[VMM_MAX_MEM_RANGES];
	/* out */
	vmm_vaddr_t		vsp_va[VMM_MAX_MEM_RANGES];
};

struct vm_run_params {
	/* in */
	uint32_t			vrp_vm_id;
	uint32_t			vrp_vcpu_id;
	struct vcpu_inject_event	vrp_inject;
	uint8_t				vrp_intr_pending;
	/* in/out */
	struct vm_exit			*vrp_exit;
	/* out */
	uint16_t			vrp_exit_reason;
	uint8_t				vrp_irqready;
};

#define VM_RWVMPARAMS_PVCLOCK_SYSTEM_GPA	0x1
#define VM_RWVMPARAMS_PVCLOCK_VERSION		0x2
#define VM_RWVMPARAMS_ALL	(VM_RWVMPARAMS_PVCLOCK_SYSTEM_GPA | \
				 VM_RWVMPARAMS_PVCLOCK_VERSION)

struct vm_rwvmparams_params {
	uint32_t	vpp_vm_id;
	uint32_t	vpp_vcpu_id;
	uint32_t	vpp_mask;
	vmm_paddr_t	vpp_pvclock_system_gpa;
	uint32_t	vpp_pvclock_version;
};

struct vm_intr_params {
	uint32_t	vip_vm_id;
	uint32_t	vip_vcpu_id;
	uint16_t	vip_intr;	/* 1: interrupt pending, 0: none */
};

#define VM_RWREGS_GPRS	0x1
#define VM_RWREGS_SREGS	0x2
#define VM_RWREGS_CRS	0x4
#define VM_RWREGS_MSRS	0x8
#define VM_RWREGS_DRS	0x10
#define VM_RWREGS_ALL	(VM_RWREGS_GPRS | VM_RWREGS_SREGS | VM_RWREGS_CRS | \
			 VM_RWREGS_MSRS | VM_RWREGS_DRS)

struct vm_rwregs_params {
	uint32_t		vrwp_vm_id;
	uint32_t		vrwp_vcpu_id;
	uint64_t		vrwp_mask;
	struct vcpu_reg_state	vrwp_regs;
};

/*
 * ioctl request numbers, OpenBSD encoding:
 * IOC_OUT 0x40000000, IOC_IN 0x80000000, length in 13 bits at bit 16,
 * group 'V' in bits 8..15, number in bits 0..7.
 */
#define VMM_IOCPARM_MASK	0x1fff
#define VMM_IOC_VOID		0x20000000UL
#define VMM_IOC_OUT		0x40000000UL
#define VMM_IOC_IN		0x80000000UL
#define VMM_IOC_INOUT		(VMM_IOC_IN | VMM_IOC_OUT)
#define VMM_IOC_ENCODE(inout, num, len) \
	((unsigned long)(inout) | (((unsigned long)(len) & VMM_IOCPARM_MASK) << 16) | \
	 ((unsigned long)'V' << 8) | (num))

#define VMM_IOC_CREATE	VMM_IOC_ENCODE(VMM_IOC_INOUT, 1, sizeof(struct vm_create_params))
#define VMM_IOC_RUN	VMM_IOC_ENCODE(VMM_IOC_INOUT, 2, sizeof(struct vm_run_params))
#define VMM_IOC_INFO	VMM_IOC_ENCODE(VMM_IOC_INOUT, 3, sizeof(struct vm_info_params))
#define VMM_IOC_TERM	VMM_IOC_ENCODE(VMM_IOC_IN, 4, sizeof(struct vm_terminate_params))
#define VMM_IOC_RESETCPU VMM_IOC_ENCODE(VMM_IOC_IN, 5, sizeof(struct vm_resetcpu_params))
#define VMM_IOC_INTR	VMM_IOC_ENCODE(VMM_IOC_IN, 6, sizeof(struct vm_intr_params))
#define VMM_IOC_READREGS VMM_IOC_ENCODE(VMM_IOC_INOUT, 7, sizeof(struct vm_rwregs_params))
#define VMM_IOC_WRITEREGS VMM_IOC_ENCODE(VMM_IOC_IN, 8, sizeof(struct vm_rwregs_params))
#define VMM_IOC_READVMPARAMS VMM_IOC_ENCODE(VMM_IOC_INOUT, 9, sizeof(struct vm_rwvmparams_params))
#define VMM_IOC_WRITEVMPARAMS VMM_IOC_ENCODE(VMM_IOC_IN, 10, sizeof(struct vm_rwvmparams_params))
#define VMM_IOC_SHAREMEM VMM_IOC_ENCODE(VMM_IOC_INOUT, 11, sizeof(struct vm_sharemem_params))

#endif /* VMM_SYS_VMMVAR_H */
