// SPDX-License-Identifier: GPL-2.0-only
/*
 * kvm.c: the oracle VMM's KVM plumbing (see vmm.c): VMs with a vGICv3 and a
 * vITS, their registers through the device attributes, guest RAM as the host
 * may read it, and running the L2 program (l2.S) on vCPU0.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <signal.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <unistd.h>

#include "vmm.h"

#define GICR_STRIDE	0x20000UL	/* RD_base + SGI_base frames per vCPU */

/* arch/arm64/include/uapi/asm/kvm.h: core register ids */
#define CORE_REG(x) (KVM_REG_ARM64 | KVM_REG_SIZE_U64 | KVM_REG_ARM_CORE | \
		     (offsetof(struct kvm_regs, x) / sizeof(__u32)))

extern const char l2_start[], l2_end[];

int kvm_fd;
size_t run_size;

/* ---- host access probing ------------------------------------------------ */

static jmp_buf fault_jmp;
static volatile sig_atomic_t in_probe;

static void on_fault(int sig)
{
	if (!in_probe) {
		signal(sig, SIG_DFL);
		raise(sig);
	}
	longjmp(fault_jmp, sig);
}

/* Copy one page the host may not be allowed to read; returns 0 or the signal. */
int probe_copy(void *dst, const void *src, size_t len)
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
int dev_attr(int fd, unsigned long req, uint32_t group, uint64_t attr,
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

void vm_create(struct vm *vm, const struct stream *s)
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

void vm_destroy(struct vm *vm)
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

_Static_assert(sizeof(its_regs) / sizeof(its_regs[0]) == NR_ITS_REGS, "its_regs");

static const struct { const char *name; uint32_t off; int is64; } rd_regs[] = {
	{ "CTLR", 0x0, 0 }, { "PROPBASER", 0x70, 1 }, { "PENDBASER", 0x78, 1 },
};

_Static_assert(sizeof(rd_regs) / sizeof(rd_regs[0]) == NR_RD_REGS, "rd_regs");

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

void read_regs(struct vm *vm, struct regs *rg)
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
int restore_gic(struct vm *vm, const struct regs *rg)
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
void dump_ram(struct vm *vm)
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

void snapshot(struct vm *vm, struct image *img)
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

void poke(struct vm *vm, const struct patch *pt)
{
	if (pt->gpa < vm->ram_base || pt->gpa + pt->len > vm->ram_base + vm->ram_size)
		fail("fill/patch %llx+%zu outside RAM", (unsigned long long)pt->gpa,
		     pt->len);
	memcpy(vm->ram + (pt->gpa - vm->ram_base), pt->data, pt->len);
}

/* ---- running the L2 program --------------------------------------------- */

size_t nr_prologue_res(const struct stream *s, size_t nr_res)
{
	return s->protected ? (nr_res * 8 + PAGE - 1) / PAGE + s->nr_shares : 0;
}

/*
 * A protected VM first loads from every page of RAM (so that all of it is
 * donated to the guest), shares the result pages, then the stream's pages.
 */
size_t l2_prologue(struct vm *vm, const struct stream *s, size_t nr_res)
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

void l2_boot(struct vm *vm, uint64_t ops)
{
	set_reg(vm->vcpu[0], CORE_REG(regs.pc), CODE_BASE);
	set_reg(vm->vcpu[0], CORE_REG(regs.regs[0]), ops);
	set_reg(vm->vcpu[0], CORE_REG(regs.regs[1]), CODE_BASE + RES_OFF);
	set_reg(vm->vcpu[0], CORE_REG(regs.regs[2]), MAILBOX);
}

/* Run vCPU0 until the L2 program stores to the mailbox (END or PAUSE). */
void l2_run(struct vm *vm)
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

void read_results(struct vm *vm, uint64_t *res, size_t nr_res)
{
	if (probe_copy(res, vm->code + RES_OFF, nr_res * 8))
		fail("the host cannot read the result pages");
}

void install_fault_handlers(void)
{
	struct sigaction sa = { .sa_handler = on_fault, .sa_flags = SA_NODEFER };

	sigaction(SIGSEGV, &sa, NULL);
	sigaction(SIGBUS, &sa, NULL);
}
