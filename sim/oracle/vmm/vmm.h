/* SPDX-License-Identifier: GPL-2.0-only */
/* vmm.h: what the oracle VMM's files share (see vmm.c). */
#ifndef ORACLE_VMM_H
#define ORACLE_VMM_H

#include <setjmp.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <linux/kvm.h>

/* include/uapi/linux/kvm.h (7.3); absent from the 6.1 cross headers */
#define KVM_VM_TYPE_ARM_PROTECTED	(1UL << 31)

/* sim/oracle/stream.py */
#define CODE_BASE	0x10000000UL
#define ITS_BASE	0x08080000UL
#define GICD_BASE	0x08000000UL
#define GICR_BASE	0x080a0000UL
#define MAILBOX		0x09000000UL	/* in no memslot: a store exits to the VMM */

/* The code memslot: l2.S, op lists at OPS_OFF and OPS2_OFF, results at RES_OFF. */
#define CODE_SIZE	(4UL << 20)
#define OPS_OFF		0x2000UL
#define OPS2_OFF	(CODE_SIZE / 2)
#define RES_OFF		(CODE_SIZE - 0x80000UL)
#define MAX_RES		(0x80000UL / 8)
#define PAGE		4096UL

/* The L2 program's ops (l2.S) */
enum { OP_END, OP_W32, OP_W64, OP_SHARE, OP_TOUCH, OP_CMD, OP_PAUSE, OP_W8 };

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
	uint64_t *ops; size_t nr_ops, cap_ops;	/* W and C records, as ops, in order */
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

/* The GITS_* and GICR<n>_* registers the VMM reads and restores. */
#define NR_ITS_REGS	14
#define NR_RD_REGS	3
struct regs { uint64_t its[NR_ITS_REGS]; uint64_t rd[8][NR_RD_REGS]; };

/* The readable pages of RAM, for restoring into a second VM. */
struct image { uint64_t *index; uint8_t *pages; size_t nr; };

/* vmm.c */
extern jmp_buf stream_jmp;
void fail(const char *fmt, ...) __attribute__((noreturn, format(printf, 1, 2)));
void *xrealloc(void *p, size_t n);

/* job.c */
int job_next(FILE *job, struct stream *s);
void job_free(struct stream *s);

/* kvm.c */
extern int kvm_fd;
extern size_t run_size;
void install_fault_handlers(void);
int probe_copy(void *dst, const void *src, size_t len);
int dev_attr(int fd, unsigned long req, uint32_t group, uint64_t attr, void *addr);
void vm_create(struct vm *vm, const struct stream *s);
void vm_destroy(struct vm *vm);
void read_regs(struct vm *vm, struct regs *rg);
int restore_gic(struct vm *vm, const struct regs *rg);
void dump_ram(struct vm *vm);
void snapshot(struct vm *vm, struct image *img);
void poke(struct vm *vm, const struct patch *pt);
size_t nr_prologue_res(const struct stream *s, size_t nr_res);
size_t l2_prologue(struct vm *vm, const struct stream *s, size_t nr_res);
void l2_boot(struct vm *vm, uint64_t ops);
void l2_run(struct vm *vm);
void read_results(struct vm *vm, uint64_t *res, size_t nr_res);

#endif
