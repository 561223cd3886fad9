// SPDX-License-Identifier: GPL-2.0-only
/*
 * vmm.c: the oracle's VMM. Runs inside the L1 arm64 kernel (nested KVM under
 * QEMU, or pKVM with kvm-arm.mode=protected) and replays ITS command streams
 * against the kernel's own vITS (arch/arm64/kvm/vgic/vgic-its.c).
 *
 *   vmm JOB         reads the job file, writes the observations to stdout
 *
 * Built by sim/oracle/kvm.py: aarch64-linux-gnu-gcc -static -O2 vmm.c l2.S.
 * The job format (written by kvm.py:encode_job) is one record per line:
 *
 *   S name                         a stream begins
 *   V nr_vcpus protected ram_base ram_size save save_pending    (hex numbers)
 *   F gpa hexbytes                 RAM fill before the vCPU runs
 *   M gpa                          the L2 program MEM_SHAREs this page (pKVM)
 *   W 32|64 gpa value              an MMIO store by the L2 program
 *   C slot cwriter dw0dw1dw2dw3    one command: 32 bytes at slot, then CWRITER
 *   R gpa                          a host read of this guest address
 *   X name                         a restore into a second VM begins
 *   P gpa hexbytes                 a patch of the saved image for that restore
 *   E                              the stream ends: run it
 *
 * For each stream: a fresh VM (type bit 31 for a protected pKVM VM), a RAM
 * memslot and a code memslot at CODE_BASE, the vCPUs, a vGICv3 and a vITS;
 * RAM is filled, then vCPU0 runs l2.S over an op list built from the W/M/C
 * records (a protected VM first touches every RAM page, so that all of RAM is
 * donated to it, then shares the result pages and the M pages). The VMM then
 * reads GITS_* and GICR<n>_* through the device attributes, dumps RAM, runs
 * KVM_DEV_ARM_ITS_SAVE_TABLES and KVM_DEV_ARM_VGIC_SAVE_PENDING_TABLES
 * (dumping RAM after each), and for each restore creates a second VM, copies
 * the saved image plus patches, restores the redistributors and the ITS as
 * Documentation/virt/kvm/devices/arm-vgic-its.rst orders it (CBASER, other
 * GITS_* registers, RESTORE_TABLES, then CTLR) and re-saves.
 *
 * Output, one record per line (numbers in hex, errors as negative decimal):
 *   K uname-r | S name | c creadr... | r REG value | p phase ret | m gpa word
 *   h gpa ok|fault | x name ret resave_ret|- | e message | # comment | E
 * Memory is dumped as the non-zero 64-bit words the VMM can read; a page the
 * host cannot read (pKVM: owned by the protected guest) is skipped.
 *
 * Kernel behaviours relied on: vgic_mmio_write_its_cwriter() processes the
 * queue synchronously, so one CREADR read after each CWRITER write sees the
 * result; a store to an address in no memslot exits with KVM_EXIT_MMIO; pKVM
 * (arch/arm64/kvm/hyp/nvhe/pkvm.c:pkvm_memshare_call) maps a not-yet-faulted
 * page before sharing it and leaves the host's bytes in a donated page
 * (mem_protect.c:__pkvm_host_donate_guest does not clear it); a host access to
 * a guest-owned page is an abort injected into the host (host_inject_mem_abort),
 * which the VMM sees as a signal and reports as "fault".
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <setjmp.h>
#include <signal.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <sys/utsname.h>
#include <time.h>
#include <unistd.h>
#include <linux/kvm.h>

/* include/uapi/linux/kvm.h (7.3); absent from the 6.1 cross headers */
#define KVM_VM_TYPE_ARM_PROTECTED	(1UL << 31)

/* sim/oracle/stream.py */
#define CODE_BASE	0x10000000UL
#define ITS_BASE	0x08080000UL
#define GICD_BASE	0x08000000UL
#define GICR_BASE	0x080a0000UL
#define GICR_STRIDE	0x20000UL
#define MAILBOX		0x09000000UL	/* in no memslot */

#define CODE_SIZE	(4UL << 20)
#define OPS_OFF		0x2000UL
#define RES_OFF		(CODE_SIZE - 0x80000UL)	/* 64K results */
#define MAX_RES		(0x80000UL / 8)
#define PAGE		4096UL

/* arch/arm64/include/uapi/asm/kvm.h: core register ids */
#define CORE_REG(x) (KVM_REG_ARM64 | KVM_REG_SIZE_U64 | KVM_REG_ARM_CORE | \
		     (offsetof(struct kvm_regs, x) / sizeof(__u32)))

enum { OP_END, OP_W32, OP_W64, OP_SHARE, OP_TOUCH, OP_CMD, OP_PAUSE, OP_W8 };

extern const char l2_start[], l2_end[];

struct patch { uint64_t gpa; size_t len; uint8_t *data; };
struct restore {
	char name[128];
	struct patch *patches; int nr_patches;
	uint64_t *cmds; int nr_cmds;	/* 4 dwords each */
};

struct stream {
	char name[256];
	int nr_vcpus, protected, save, save_pending;
	uint64_t ram_base, ram_size;
	struct patch *fills; int nr_fills;
	uint64_t *ops; size_t nr_ops, cap_ops;	/* W and C, in order */
	int nr_cmds;
	uint64_t *shares; int nr_shares;	/* M */
	uint64_t *reads; int nr_reads;
	struct restore *restores; int nr_restores;
};

struct vm {
	int fd, vgic, its, vcpu[8], nr_vcpus;
	struct kvm_run *run[8];
	uint8_t *ram, *code;
	uint8_t *noread;	/* pages the host failed to read (pKVM) */
	uint64_t ram_base, ram_size;
};

static int kvm_fd;
static size_t run_size;
static jmp_buf fault_jmp;
static volatile sig_atomic_t in_probe;

/* A stream-fatal error: reported, and the stream is abandoned. */
static jmp_buf stream_jmp;
static void fail(const char *fmt, ...)
{
	va_list ap;

	printf("e ");
	va_start(ap, fmt);
	vprintf(fmt, ap);
	va_end(ap);
	printf("\n");
	longjmp(stream_jmp, 1);
}

static void *xrealloc(void *p, size_t n)
{
	p = realloc(p, n);
	if (!p) {
		fprintf(stderr, "vmm: out of memory\n");
		exit(1);
	}
	return p;
}

static void push_op(struct stream *s, uint64_t w)
{
	if (s->nr_ops == s->cap_ops) {
		s->cap_ops = s->cap_ops ? 2 * s->cap_ops : 256;
		s->ops = xrealloc(s->ops, s->cap_ops * 8);
	}
	s->ops[s->nr_ops++] = w;
}

/* ---- host access probing ------------------------------------------------ */

static void on_fault(int sig)
{
	if (!in_probe) {
		signal(sig, SIG_DFL);
		raise(sig);
	}
	longjmp(fault_jmp, sig);
}

/* Copy one page the host may not be allowed to read; returns 0 or the signal. */
static int probe_copy(void *dst, const void *src, size_t len)
{
	int sig;

	in_probe = 1;
	sig = setjmp(fault_jmp);
	if (!sig)
		memcpy(dst, src, len);
	in_probe = 0;
	return sig;
}

/* ---- KVM plumbing ------------------------------------------------------- */

static int xioctl(int fd, unsigned long req, void *arg, const char *what)
{
	int r = ioctl(fd, req, arg);

	if (r < 0)
		fail("%s: %s (errno %d)", what, strerror(errno), errno);
	return r;
}

/* A device attribute access whose failure is an observation, not an error. */
static int dev_attr(int fd, unsigned long req, uint32_t group, uint64_t attr,
		    void *addr)
{
	struct kvm_device_attr a = { .group = group, .attr = attr,
				     .addr = (uint64_t)(uintptr_t)addr };

	return ioctl(fd, req, &a) < 0 ? -errno : 0;
}

static void dev_set(int fd, uint32_t group, uint64_t attr, void *addr,
		    const char *what)
{
	int r = dev_attr(fd, KVM_SET_DEVICE_ATTR, group, attr, addr);

	if (r)
		fail("%s: %s (errno %d)", what, strerror(-r), -r);
}

static int create_device(int vm, uint32_t type, const char *what)
{
	struct kvm_create_device cd = { .type = type };

	xioctl(vm, KVM_CREATE_DEVICE, &cd, what);
	return cd.fd;
}

static void set_reg(int vcpu, uint64_t id, uint64_t val)
{
	struct kvm_one_reg r = { .id = id, .addr = (uint64_t)(uintptr_t)&val };

	xioctl(vcpu, KVM_SET_ONE_REG, &r, "KVM_SET_ONE_REG");
}

static void *map_anon(size_t len)
{
	void *p = mmap(NULL, len, PROT_READ | PROT_WRITE,
		       MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);

	if (p == MAP_FAILED)
		fail("mmap %zu: %s", len, strerror(errno));
	return p;
}

static void vm_create(struct vm *vm, const struct stream *s)
{
	struct kvm_userspace_memory_region mr;
	struct kvm_vcpu_init init;
	uint64_t addr;
	int i;

	memset(vm, 0, sizeof(*vm));
	vm->noread = xrealloc(NULL, s->ram_size / PAGE);
	memset(vm->noread, 0, s->ram_size / PAGE);
	vm->nr_vcpus = s->nr_vcpus;
	vm->ram_base = s->ram_base;
	vm->ram_size = s->ram_size;
	vm->fd = xioctl(kvm_fd, KVM_CREATE_VM,
			(void *)(s->protected ? KVM_VM_TYPE_ARM_PROTECTED : 0),
			"KVM_CREATE_VM");
	vm->ram = map_anon(s->ram_size);
	vm->code = map_anon(CODE_SIZE);
	mr = (struct kvm_userspace_memory_region){
		.slot = 0, .guest_phys_addr = s->ram_base,
		.memory_size = s->ram_size, .userspace_addr = (uintptr_t)vm->ram };
	xioctl(vm->fd, KVM_SET_USER_MEMORY_REGION, &mr, "memslot RAM");
	mr = (struct kvm_userspace_memory_region){
		.slot = 1, .guest_phys_addr = CODE_BASE,
		.memory_size = CODE_SIZE, .userspace_addr = (uintptr_t)vm->code };
	xioctl(vm->fd, KVM_SET_USER_MEMORY_REGION, &mr, "memslot code");

	xioctl(vm->fd, KVM_ARM_PREFERRED_TARGET, &init, "KVM_ARM_PREFERRED_TARGET");
	for (i = 0; i < s->nr_vcpus; i++) {
		vm->vcpu[i] = xioctl(vm->fd, KVM_CREATE_VCPU, (void *)(long)i,
				     "KVM_CREATE_VCPU");
		memset(init.features, 0, sizeof(init.features));
		if (i)
			init.features[0] = 1U << KVM_ARM_VCPU_POWER_OFF;
		xioctl(vm->vcpu[i], KVM_ARM_VCPU_INIT, &init, "KVM_ARM_VCPU_INIT");
		vm->run[i] = mmap(NULL, run_size, PROT_READ | PROT_WRITE,
				  MAP_SHARED, vm->vcpu[i], 0);
		if (vm->run[i] == MAP_FAILED)
			fail("mmap kvm_run: %s", strerror(errno));
	}

	vm->vgic = create_device(vm->fd, KVM_DEV_TYPE_ARM_VGIC_V3, "create vGICv3");
	addr = GICD_BASE;
	dev_set(vm->vgic, KVM_DEV_ARM_VGIC_GRP_ADDR, KVM_VGIC_V3_ADDR_TYPE_DIST,
		&addr, "GICD address");
	addr = GICR_BASE;
	dev_set(vm->vgic, KVM_DEV_ARM_VGIC_GRP_ADDR, KVM_VGIC_V3_ADDR_TYPE_REDIST,
		&addr, "GICR address");
	vm->its = create_device(vm->fd, KVM_DEV_TYPE_ARM_VGIC_ITS, "create vITS");
	addr = ITS_BASE;
	dev_set(vm->its, KVM_DEV_ARM_VGIC_GRP_ADDR, KVM_VGIC_ITS_ADDR_TYPE,
		&addr, "ITS address");
	dev_set(vm->vgic, KVM_DEV_ARM_VGIC_GRP_CTRL, KVM_DEV_ARM_VGIC_CTRL_INIT,
		NULL, "vGICv3 CTRL_INIT");
	dev_set(vm->its, KVM_DEV_ARM_VGIC_GRP_CTRL, KVM_DEV_ARM_VGIC_CTRL_INIT,
		NULL, "vITS CTRL_INIT");
}

static void vm_destroy(struct vm *vm)
{
	int i;

	for (i = 0; i < vm->nr_vcpus; i++) {
		if (vm->run[i] && vm->run[i] != MAP_FAILED)
			munmap(vm->run[i], run_size);
		if (vm->vcpu[i] > 0)
			close(vm->vcpu[i]);
	}
	if (vm->its > 0)
		close(vm->its);
	if (vm->vgic > 0)
		close(vm->vgic);
	if (vm->fd > 0)
		close(vm->fd);
	if (vm->ram)
		munmap(vm->ram, vm->ram_size);
	if (vm->code)
		munmap(vm->code, CODE_SIZE);
	free(vm->noread);
	memset(vm, 0, sizeof(*vm));
}

/* ---- registers ---------------------------------------------------------- */

static const struct { const char *name; uint32_t off; } its_regs[] = {
	{ "CTLR", 0x0 }, { "IIDR", 0x4 }, { "TYPER", 0x8 }, { "CBASER", 0x80 },
	{ "CWRITER", 0x88 }, { "CREADR", 0x90 },
	{ "BASER0", 0x100 }, { "BASER1", 0x108 }, { "BASER2", 0x110 },
	{ "BASER3", 0x118 }, { "BASER4", 0x120 }, { "BASER5", 0x128 },
	{ "BASER6", 0x130 }, { "BASER7", 0x138 },
};
#define NR_ITS_REGS (sizeof(its_regs) / sizeof(its_regs[0]))

static const struct { const char *name; uint32_t off; int is64; } rd_regs[] = {
	{ "CTLR", 0x0, 0 }, { "PROPBASER", 0x70, 1 }, { "PENDBASER", 0x78, 1 },
};
#define NR_RD_REGS (sizeof(rd_regs) / sizeof(rd_regs[0]))

/* MPIDR affinity of vCPU n as KVM assigns it (Aff0 = n for n < 16). */
static uint64_t rd_attr(int vcpu, uint32_t off)
{
	return ((uint64_t)vcpu << 32) | off;
}

static int rd_access(struct vm *vm, unsigned long req, int vcpu, int i,
		     uint64_t *val)
{
	uint32_t lo = (uint32_t)*val, hi = (uint32_t)(*val >> 32);
	int r;

	/* Documentation/virt/kvm/devices/arm-vgic-v3.rst: 32-bit halves */
	r = dev_attr(vm->vgic, req, KVM_DEV_ARM_VGIC_GRP_REDIST_REGS,
		     rd_attr(vcpu, rd_regs[i].off), &lo);
	if (!r && rd_regs[i].is64)
		r = dev_attr(vm->vgic, req, KVM_DEV_ARM_VGIC_GRP_REDIST_REGS,
			     rd_attr(vcpu, rd_regs[i].off + 4), &hi);
	*val = rd_regs[i].is64 ? ((uint64_t)hi << 32) | lo : lo;
	return r;
}

struct regs { uint64_t its[NR_ITS_REGS]; uint64_t rd[8][NR_RD_REGS]; };

static void read_regs(struct vm *vm, struct regs *rg)
{
	unsigned int i;
	int v, r;

	for (i = 0; i < NR_ITS_REGS; i++) {
		r = dev_attr(vm->its, KVM_GET_DEVICE_ATTR, KVM_DEV_ARM_VGIC_GRP_ITS_REGS,
			     its_regs[i].off, &rg->its[i]);
		if (r)
			fail("read GITS_%s: %d", its_regs[i].name, r);
		printf("r GITS_%s %llx\n", its_regs[i].name,
		       (unsigned long long)rg->its[i]);
	}
	for (v = 0; v < vm->nr_vcpus; v++)
		for (i = 0; i < NR_RD_REGS; i++) {
			rg->rd[v][i] = 0;
			r = rd_access(vm, KVM_GET_DEVICE_ATTR, v, i, &rg->rd[v][i]);
			if (r)
				fail("read GICR%d_%s: %d", v, rd_regs[i].name, r);
			printf("r GICR%d_%s %llx\n", v, rd_regs[i].name,
			       (unsigned long long)rg->rd[v][i]);
		}
}

static void write_its_reg(struct vm *vm, const char *name, uint64_t val)
{
	unsigned int i;
	char what[64];

	for (i = 0; i < NR_ITS_REGS; i++)
		if (!strcmp(its_regs[i].name, name))
			break;
	snprintf(what, sizeof(what), "restore GITS_%s", name);
	dev_set(vm->its, KVM_DEV_ARM_VGIC_GRP_ITS_REGS, its_regs[i].off, &val, what);
}

/*
 * The migration order of arm-vgic-its.rst, "ITS Restore Sequence", as
 * sim/oracle/stream.py:Restore states it: every redistributor's PROPBASER and
 * PENDBASER, then each GICR_CTLR (EnableLPIs only: its other bits are read-only),
 * then GITS_CBASER, GITS_IIDR, GITS_CREADR, GITS_CWRITER, GITS_BASER0/1,
 * RESTORE_TABLES, and GITS_CTLR (Enabled only) whatever RESTORE_TABLES returned.
 */
static int restore_gic(struct vm *vm, const struct regs *rg)
{
	static const char *const order[] = {
		"CBASER", "IIDR", "CREADR", "CWRITER", "BASER0", "BASER1" };
	unsigned int i, k;
	uint64_t val;
	int v, r;

	for (v = 0; v < vm->nr_vcpus; v++)
		for (i = 1; i < NR_RD_REGS; i++) {	/* PROPBASER, PENDBASER */
			val = rg->rd[v][i];
			r = rd_access(vm, KVM_SET_DEVICE_ATTR, v, i, &val);
			if (r)
				fail("restore GICR%d_%s: %d", v, rd_regs[i].name, r);
		}
	for (v = 0; v < vm->nr_vcpus; v++) {
		val = rg->rd[v][0] & 1;
		r = rd_access(vm, KVM_SET_DEVICE_ATTR, v, 0, &val);
		if (r)
			fail("restore GICR%d_CTLR: %d", v, r);
	}
	for (i = 0; i < sizeof(order) / sizeof(order[0]); i++) {
		for (k = 0; k < NR_ITS_REGS; k++)
			if (!strcmp(its_regs[k].name, order[i]))
				break;
		write_its_reg(vm, order[i], rg->its[k]);
	}
	r = dev_attr(vm->its, KVM_SET_DEVICE_ATTR, KVM_DEV_ARM_VGIC_GRP_CTRL,
		     KVM_DEV_ARM_ITS_RESTORE_TABLES, NULL);
	write_its_reg(vm, "CTLR", rg->its[0] & 1);
	return r;
}

/* ---- memory ------------------------------------------------------------- */

static uint8_t page_buf[PAGE];

/* Print the non-zero words of RAM the host can read. */
static void dump_ram(struct vm *vm)
{
	size_t npages = vm->ram_size / PAGE, p, w;
	unsigned char *vec = xrealloc(NULL, npages);

	if (mincore(vm->ram, vm->ram_size, vec))
		memset(vec, 1, npages);
	for (p = 0; p < npages; p++) {
		const uint64_t *words = (const uint64_t *)page_buf;

		if (!(vec[p] & 1) || vm->noread[p])
			continue;	/* never touched (zero), or not the host's */
		if (probe_copy(page_buf, vm->ram + p * PAGE, PAGE)) {
			vm->noread[p] = 1;
			continue;
		}
		for (w = 0; w < PAGE / 8; w++)
			if (words[w])
				printf("m %llx %llx\n",
				       (unsigned long long)(vm->ram_base + p * PAGE + w * 8),
				       (unsigned long long)words[w]);
	}
	free(vec);
}

/* The readable, touched pages of RAM, for restoring into a second VM. */
struct image { uint64_t *index; uint8_t *pages; size_t nr; };

static void snapshot(struct vm *vm, struct image *img)
{
	size_t npages = vm->ram_size / PAGE, p;
	unsigned char *vec = xrealloc(NULL, npages);

	img->nr = 0;
	img->index = xrealloc(NULL, npages * 8);
	img->pages = NULL;
	if (mincore(vm->ram, vm->ram_size, vec))
		memset(vec, 1, npages);
	for (p = 0; p < npages; p++) {
		if (!(vec[p] & 1) || vm->noread[p] ||
		    probe_copy(page_buf, vm->ram + p * PAGE, PAGE))
			continue;
		img->pages = xrealloc(img->pages, (img->nr + 1) * PAGE);
		memcpy(img->pages + img->nr * PAGE, page_buf, PAGE);
		img->index[img->nr++] = p;
	}
	free(vec);
}

static void poke(struct vm *vm, const struct patch *pt)
{
	if (pt->gpa < vm->ram_base || pt->gpa + pt->len > vm->ram_base + vm->ram_size)
		fail("fill/patch %llx+%zu outside RAM", (unsigned long long)pt->gpa,
		     pt->len);
	memcpy(vm->ram + (pt->gpa - vm->ram_base), pt->data, pt->len);
}

/* ---- running the L2 program --------------------------------------------- */

/* Op lists: phase 1 at OPS_OFF, phase 2 (after a PAUSE) at OPS2_OFF. */
#define OPS2_OFF	(CODE_SIZE / 2)

static size_t nr_prologue_res(const struct stream *s, size_t nr_res)
{
	return s->protected ? (nr_res * 8 + PAGE - 1) / PAGE + s->nr_shares : 0;
}

/*
 * A protected VM first loads from every page of RAM (so that all of it is
 * donated to the guest), shares the result pages, then the stream's pages.
 */
static size_t l2_prologue(struct vm *vm, const struct stream *s, size_t nr_res)
{
	uint64_t *ops = (uint64_t *)(vm->code + OPS_OFF);
	size_t n = 0, i;

	memcpy(vm->code, l2_start, l2_end - l2_start);
	if (!s->protected)
		return 0;
	ops[n++] = OP_TOUCH;
	ops[n++] = vm->ram_base;
	ops[n++] = vm->ram_size / PAGE;
	for (i = 0; i < (nr_res * 8 + PAGE - 1) / PAGE; i++) {
		ops[n++] = OP_SHARE;
		ops[n++] = CODE_BASE + RES_OFF + i * PAGE;
	}
	for (i = 0; i < (size_t)s->nr_shares; i++) {
		ops[n++] = OP_SHARE;
		ops[n++] = s->shares[i];
	}
	return n;
}

static void l2_boot(struct vm *vm, uint64_t ops)
{
	set_reg(vm->vcpu[0], CORE_REG(regs.pc), CODE_BASE);
	set_reg(vm->vcpu[0], CORE_REG(regs.regs[0]), ops);
	set_reg(vm->vcpu[0], CORE_REG(regs.regs[1]), CODE_BASE + RES_OFF);
	set_reg(vm->vcpu[0], CORE_REG(regs.regs[2]), MAILBOX);
}

/* Run vCPU0 until the L2 program stores to the mailbox (END or PAUSE). */
static void l2_run(struct vm *vm)
{
	struct kvm_run *run = vm->run[0];
	uint64_t exc[6] = { 0 };

	for (;;) {
		xioctl(vm->vcpu[0], KVM_RUN, NULL, "KVM_RUN");
		if (run->exit_reason != KVM_EXIT_MMIO)
			fail("vCPU exit %u (hw reason %llx)", run->exit_reason,
			     (unsigned long long)run->hw.hardware_exit_reason);
		if (!run->mmio.is_write) {
			memset(run->mmio.data, 0, sizeof(run->mmio.data));
			continue;
		}
		if (run->mmio.phys_addr == MAILBOX)
			return;
		if (run->mmio.phys_addr >= MAILBOX + 8 && run->mmio.phys_addr < MAILBOX + 48) {
			memcpy(&exc[(run->mmio.phys_addr - MAILBOX) / 8], run->mmio.data, 8);
			if (run->mmio.phys_addr == MAILBOX + 8)
				fail("L2 exception ESR %llx ELR %llx FAR %llx x9 %llx x19 %llx",
				     (unsigned long long)exc[1], (unsigned long long)exc[2],
				     (unsigned long long)exc[3], (unsigned long long)exc[4],
				     (unsigned long long)exc[5]);
			continue;
		}
		printf("# unbacked MMIO write %llx\n", (unsigned long long)run->mmio.phys_addr);
	}
}

static void read_results(struct vm *vm, uint64_t *res, size_t nr_res)
{
	if (probe_copy(res, vm->code + RES_OFF, nr_res * 8))
		fail("the host cannot read the result pages");
}

static void print_shares(const struct stream *s, const uint64_t *res, size_t nr_res)
{
	size_t i, k = nr_prologue_res(s, nr_res);

	for (i = 0; i < k; i++)
		if (res[i])
			printf("# MEM_SHARE %zu of the prologue: %llx\n", i,
			       (unsigned long long)res[i]);
}

/* ---- one stream ---------------------------------------------------------- */

/* Globals, so that the error path (a longjmp) can release them. */
static struct vm cur, rvm;
static struct image img;
static uint64_t *res;

/* CMD ops for commands the guest queues from the CBASER and CWRITER it knows. */
static size_t queue_ops(uint64_t *ops, const uint64_t *cmds, int nr, uint64_t cbaser,
			uint64_t cwriter)
{
	uint64_t base = cbaser & 0x000ffffffffff000ULL;	/* [51:12] */
	uint64_t size = ((cbaser & 0xff) + 1) * PAGE;
	uint64_t off = (cwriter & 0xfffe0) % size;
	size_t n = 0;
	int i;

	for (i = 0; i < nr; i++) {
		uint64_t next = (off + 32) % size;

		ops[n++] = OP_CMD;
		ops[n++] = base + off;
		ops[n++] = ITS_BASE + 0x88;
		ops[n++] = next;
		ops[n++] = ITS_BASE + 0x90;
		memcpy(&ops[n], &cmds[4 * i], 32);
		n += 4;
		off = next;
	}
	return n;
}

static void run_restore(const struct stream *s, const struct restore *rs,
			const struct image *im, const struct regs *rg)
{
	size_t nr_res = rs->nr_cmds + 64, k = nr_prologue_res(s, nr_res), n, i;
	uint64_t *ops2;
	struct regs rg2;
	int r, rr = 0;

	vm_create(&rvm, s);
	for (i = 0; i < im->nr; i++)
		memcpy(rvm.ram + im->index[i] * PAGE, im->pages + i * PAGE, PAGE);
	for (i = 0; i < (size_t)rs->nr_patches; i++)
		poke(&rvm, &rs->patches[i]);
	n = l2_prologue(&rvm, s, nr_res);
	if (s->protected) {	/* own and share RAM as the first VM did */
		uint64_t *ops = (uint64_t *)(rvm.code + OPS_OFF);

		ops[n++] = OP_PAUSE;
		ops[n++] = CODE_BASE + OPS2_OFF;
		l2_boot(&rvm, CODE_BASE + OPS_OFF);
		l2_run(&rvm);
	}
	r = restore_gic(&rvm, rg);
	if (!r && rs->nr_cmds) {
		ops2 = (uint64_t *)(rvm.code + OPS2_OFF);
		n = queue_ops(ops2, rs->cmds, rs->nr_cmds, rg->its[3], rg->its[4]);
		ops2[n++] = OP_END;
		if (!s->protected)
			l2_boot(&rvm, CODE_BASE + OPS2_OFF);
		l2_run(&rvm);
	}
	if (!r)
		rr = dev_attr(rvm.its, KVM_SET_DEVICE_ATTR, KVM_DEV_ARM_VGIC_GRP_CTRL,
			      KVM_DEV_ARM_ITS_SAVE_TABLES, NULL);
	if (r) {
		printf("x %s %d -\n", rs->name, r);
	} else {
		printf("x %s %d %d\n", rs->name, r, rr);
		if (rs->nr_cmds) {
			read_results(&rvm, res, nr_res);
			print_shares(s, res, nr_res);
			printf("c");
			for (i = 0; i < (size_t)rs->nr_cmds; i++)
				printf(" %llx", (unsigned long long)res[k + i]);
			printf("\n");
		}
	}
	read_regs(&rvm, &rg2);
	dump_ram(&rvm);
	vm_destroy(&rvm);
}

static void release(void)
{
	vm_destroy(&cur);
	vm_destroy(&rvm);
	free(img.index);
	free(img.pages);
	free(res);
	memset(&img, 0, sizeof(img));
	res = NULL;
}

static uint64_t now_us(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return ts.tv_sec * 1000000ULL + ts.tv_nsec / 1000;
}

/* Where a stream's time goes: "# t label us" since the previous lap. */
static uint64_t lap_t;

static void lap(const char *label)
{
	uint64_t t = now_us();

	printf("# t %s %llu\n", label, (unsigned long long)(t - lap_t));
	lap_t = t;
}

static void end_stream(uint64_t t0)
{
	printf("# us %llu\nE\n", (unsigned long long)(now_us() - t0));
	fflush(stdout);
}

static size_t max_restore_cmds(const struct stream *s)
{
	size_t m = 0;
	int i;

	for (i = 0; i < s->nr_restores; i++)
		if ((size_t)s->restores[i].nr_cmds > m)
			m = s->restores[i].nr_cmds;
	return m;
}

static void run_stream(const struct stream *s)
{
	uint64_t t0 = now_us(), *ops;
	const size_t max_res = max_restore_cmds(s);
	size_t nr_res = ((size_t)s->nr_cmds > max_res ? (size_t)s->nr_cmds : max_res) + 64, i, k, n;
	struct regs rg;
	int r;

	printf("S %s\n", s->name);
	if (setjmp(stream_jmp)) {
		release();
		end_stream(t0);
		return;
	}
	if (nr_res > MAX_RES || OPS_OFF + (s->nr_ops + 16 + s->nr_shares * 2 + 3 +
					   2 * nr_res / 512) * 8 > OPS2_OFF ||
	    OPS2_OFF + (max_res * 9 + 1) * 8 > RES_OFF)
		fail("stream too long for the code memslot");
	res = xrealloc(NULL, nr_res * 8);
	memset(res, 0, nr_res * 8);
	lap_t = t0;
	vm_create(&cur, s);
	for (i = 0; i < (size_t)s->nr_fills; i++)
		poke(&cur, &s->fills[i]);
	n = l2_prologue(&cur, s, nr_res);
	ops = (uint64_t *)(cur.code + OPS_OFF);
	memcpy(&ops[n], s->ops, s->nr_ops * 8);
	n += s->nr_ops;
	ops[n++] = OP_END;
	lap("create");
	l2_boot(&cur, CODE_BASE + OPS_OFF);
	l2_run(&cur);
	read_results(&cur, res, nr_res);
	lap("run");

	print_shares(s, res, nr_res);
	k = nr_prologue_res(s, nr_res);
	printf("c");
	for (i = 0; i < (size_t)s->nr_cmds; i++)
		printf(" %llx", (unsigned long long)res[k + i]);
	printf("\n");

	for (i = 0; i < (size_t)s->nr_reads; i++) {
		uint64_t off = s->reads[i] - s->ram_base, w;

		if (s->reads[i] < s->ram_base || off + 8 > s->ram_size)
			fail("host read %llx outside RAM", (unsigned long long)s->reads[i]);
		r = probe_copy(&w, cur.ram + off, 8);
		printf("h %llx %s\n", (unsigned long long)s->reads[i], r ? "fault" : "ok");
		if (r)
			printf("# host read %llx: signal %d\n",
			       (unsigned long long)s->reads[i], r);
	}
	read_regs(&cur, &rg);
	printf("p commands 0\n");
	dump_ram(&cur);
	lap("dump");
	if (s->save) {
		r = dev_attr(cur.its, KVM_SET_DEVICE_ATTR, KVM_DEV_ARM_VGIC_GRP_CTRL,
			     KVM_DEV_ARM_ITS_SAVE_TABLES, NULL);
		printf("p save %d\n", r);
		dump_ram(&cur);
		lap("save");
	}
	if (s->save_pending) {
		r = dev_attr(cur.vgic, KVM_SET_DEVICE_ATTR, KVM_DEV_ARM_VGIC_GRP_CTRL,
			     KVM_DEV_ARM_VGIC_SAVE_PENDING_TABLES, NULL);
		printf("p save_pending %d\n", r);
		dump_ram(&cur);
		lap("save_pending");
	}
	if (s->nr_restores)
		snapshot(&cur, &img);
	vm_destroy(&cur);
	lap("destroy");
	for (i = 0; i < (size_t)s->nr_restores; i++) {
		run_restore(s, &s->restores[i], &img, &rg);
		lap("restore");
	}
	release();
	end_stream(t0);
}

/* ---- the job file --------------------------------------------------------- */

static void parse_hex(const char *hex, struct patch *pt, uint64_t gpa)
{
	size_t n = strlen(hex) / 2, i;

	pt->gpa = gpa;
	pt->len = n;
	pt->data = xrealloc(NULL, n ? n : 1);
	for (i = 0; i < n; i++)
		sscanf(hex + 2 * i, "%2hhx", &pt->data[i]);
}

static void free_stream(struct stream *s)
{
	int i, j;

	for (i = 0; i < s->nr_fills; i++)
		free(s->fills[i].data);
	for (i = 0; i < s->nr_restores; i++) {
		for (j = 0; j < s->restores[i].nr_patches; j++)
			free(s->restores[i].patches[j].data);
		free(s->restores[i].patches);
		free(s->restores[i].cmds);
	}
	free(s->fills);
	free(s->ops);
	free(s->shares);
	free(s->reads);
	free(s->restores);
	memset(s, 0, sizeof(*s));
}

static void die_job(int lineno, const char *line)
{
	fprintf(stderr, "vmm: job line %d: cannot parse: %.80s\n", lineno, line);
	exit(2);
}

int main(int argc, char **argv)
{
	static char line[1 << 20], hex[1 << 20];
	struct stream s = { 0 };
	struct sigaction sa = { .sa_handler = on_fault, .sa_flags = SA_NODEFER };
	struct utsname u;
	unsigned long long a, b, c;
	int lineno = 0, n;
	FILE *job;

	if (argc != 2) {
		fprintf(stderr, "usage: vmm JOB\n");
		return 2;
	}
	job = fopen(argv[1], "r");
	if (!job) {
		perror(argv[1]);
		return 2;
	}
	kvm_fd = open("/dev/kvm", O_RDWR | O_CLOEXEC);
	if (kvm_fd < 0) {
		perror("/dev/kvm");
		return 2;
	}
	n = ioctl(kvm_fd, KVM_GET_VCPU_MMAP_SIZE, 0);
	if (n <= 0) {
		perror("KVM_GET_VCPU_MMAP_SIZE");
		return 2;
	}
	run_size = n;
	sigaction(SIGSEGV, &sa, NULL);
	sigaction(SIGBUS, &sa, NULL);
	uname(&u);
	printf("K %s\n", u.release);

	while (fgets(line, sizeof(line), job)) {
		char *arg = line + 2;
		struct patch pt;

		lineno++;
		line[strcspn(line, "\n")] = 0;
		switch (line[0]) {
		case 'S':
			free_stream(&s);
			snprintf(s.name, sizeof(s.name), "%s", arg);
			break;
		case 'V':
			if (sscanf(arg, "%d %d %llx %llx %d %d", &s.nr_vcpus, &s.protected,
				   &a, &b, &s.save, &s.save_pending) != 6 ||
			    s.nr_vcpus < 1 || s.nr_vcpus > 8 || b % PAGE || !b)
				die_job(lineno, line);
			s.ram_base = a;
			s.ram_size = b;
			break;
		case 'F':
		case 'P':
			if (sscanf(arg, "%llx %s", &a, hex) != 2)
				die_job(lineno, line);
			parse_hex(hex, &pt, a);
			if (line[0] == 'F') {
				s.fills = xrealloc(s.fills, (s.nr_fills + 1) * sizeof(pt));
				s.fills[s.nr_fills++] = pt;
			} else {
				struct restore *rs;

				if (!s.nr_restores)
					die_job(lineno, line);
				rs = &s.restores[s.nr_restores - 1];
				rs->patches = xrealloc(rs->patches,
						       (rs->nr_patches + 1) * sizeof(pt));
				rs->patches[rs->nr_patches++] = pt;
			}
			break;
		case 'M':
			if (sscanf(arg, "%llx", &a) != 1)
				die_job(lineno, line);
			s.shares = xrealloc(s.shares, (s.nr_shares + 1) * 8);
			s.shares[s.nr_shares++] = a;
			break;
		case 'W':
			if (sscanf(arg, "%d %llx %llx", &n, &a, &b) != 3 ||
			    (n != 8 && n != 32 && n != 64))
				die_job(lineno, line);
			push_op(&s, n == 8 ? OP_W8 : n == 32 ? OP_W32 : OP_W64);
			push_op(&s, a);
			push_op(&s, b);
			break;
		case 'C':
			if (sscanf(arg, "%llx %llx %64s", &a, &b, hex) != 3 || strlen(hex) != 64)
				die_job(lineno, line);
			parse_hex(hex, &pt, 0);
			push_op(&s, OP_CMD);
			push_op(&s, a);
			push_op(&s, ITS_BASE + 0x88);
			push_op(&s, b);
			push_op(&s, ITS_BASE + 0x90);
			for (n = 0; n < 4; n++) {
				memcpy(&c, pt.data + 8 * n, 8);
				push_op(&s, c);
			}
			free(pt.data);
			s.nr_cmds++;
			break;
		case 'Q': {
			struct restore *rs;

			if (!s.nr_restores || sscanf(arg, "%64s", hex) != 1 || strlen(hex) != 64)
				die_job(lineno, line);
			rs = &s.restores[s.nr_restores - 1];
			parse_hex(hex, &pt, 0);
			rs->cmds = xrealloc(rs->cmds, (rs->nr_cmds + 1) * 32);
			memcpy(&rs->cmds[4 * rs->nr_cmds++], pt.data, 32);
			free(pt.data);
			break;
		}
		case 'R':
			if (sscanf(arg, "%llx", &a) != 1)
				die_job(lineno, line);
			s.reads = xrealloc(s.reads, (s.nr_reads + 1) * 8);
			s.reads[s.nr_reads++] = a;
			break;
		case 'X':
			s.restores = xrealloc(s.restores,
					      (s.nr_restores + 1) * sizeof(*s.restores));
			memset(&s.restores[s.nr_restores], 0, sizeof(*s.restores));
			snprintf(s.restores[s.nr_restores].name,
				 sizeof(s.restores[0].name), "%s", arg);
			s.nr_restores++;
			break;
		case 'E':
			if (!s.nr_vcpus)
				die_job(lineno, line);
			run_stream(&s);
			free_stream(&s);
			break;
		case '#':
		case 0:
			break;
		default:
			die_job(lineno, line);
		}
	}
	printf("Z\n");
	return 0;
}
