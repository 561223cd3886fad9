/* SPDX-License-Identifier: GPL-2.0-only */
/*
 * The L2 vCPU program of the oracle VMM (sim/oracle/vmm/vmm.c).
 *
 * Bare metal, EL1, MMU off (every data access is Device-nGnRnE, which is
 * what an MMIO access wants and harmless for RAM under TCG, which models no
 * caches). Position independent: vmm.c copies the bytes between l2_start and
 * l2_end to CODE_BASE and starts vCPU0 there with
 *
 *   x0 = the op list (u64 words, in the code memslot)
 *   x1 = the result array (u64 words, in the code memslot)
 *   x2 = the mailbox (an address in no memslot: a store exits to the VMM)
 *
 * Ops (the first word is the op number, its operands follow):
 *   0 END                          store 0 to the mailbox: the VMM stops here
 *   1 W32   addr value             32-bit store (GITS_CTLR, GICR_CTLR)
 *   2 W64   addr value             64-bit store (BASER, CBASER, PROPBASER...)
 *   3 SHARE ipa                    pKVM MEM_SHARE hypercall; x0 -> result
 *   4 TOUCH ipa npages             load one word of each page (a protected VM's
 *                                  stage-2 fault donates the page to it)
 *   5 CMD   slot cwriter_addr cwriter creadr_addr dw0 dw1 dw2 dw3
 *                                  write the 32-byte command at slot, write
 *                                  CWRITER, read CREADR -> result
 *   6 PAUSE next                   store 0 to the mailbox; when the VMM runs the
 *                                  vCPU again, go on with the op list at next
 *   7 W8    addr value             8-bit store (guest writes of odd bytes)
 * An exception stores x9 and x19 (the op and the op pointer), FAR_EL1, ELR_EL1
 * and last ESR_EL1 to mailbox + 32, 40, 24, 16, 8.
 */

#define SMCCC_KVM_MEM_SHARE	0xc6000003	/* include/linux/arm-smccc.h */

	.section .rodata.l2, "a"
	.balign	4096
	.global	l2_start
l2_start:
	mov	x21, x2
	adr	x9, l2_vectors
	msr	vbar_el1, x9
	isb
	mov	x19, x0
	mov	x20, x1
next:
	ldr	x9, [x19], #8
	cbz	x9, op_end
	cmp	x9, #1
	b.eq	op_w32
	cmp	x9, #2
	b.eq	op_w64
	cmp	x9, #3
	b.eq	op_share
	cmp	x9, #4
	b.eq	op_touch
	cmp	x9, #5
	b.eq	op_cmd
	cmp	x9, #6
	b.eq	op_pause
	cmp	x9, #7
	b.eq	op_w8
	brk	#1

op_pause:
	ldr	x10, [x19]
	str	xzr, [x21]
	mov	x19, x10
	b	next

op_w8:
	ldp	x10, x11, [x19], #16
	strb	w11, [x10]
	b	next

op_end:
	str	xzr, [x21]
	b	op_end

op_w32:
	ldp	x10, x11, [x19], #16
	str	w11, [x10]
	b	next

op_w64:
	ldp	x10, x11, [x19], #16
	str	x11, [x10]
	b	next

op_share:
	ldr	x1, [x19], #8
	movz	x0, #(SMCCC_KVM_MEM_SHARE >> 16), lsl #16
	movk	x0, #(SMCCC_KVM_MEM_SHARE & 0xffff)
	mov	x2, xzr
	mov	x3, xzr
	hvc	#0
	str	x0, [x20], #8
	b	next

op_touch:
	ldp	x10, x11, [x19], #16
1:	cbz	x11, next
	ldr	x12, [x10]
	add	x10, x10, #4096
	sub	x11, x11, #1
	b	1b

op_cmd:
	ldp	x10, x11, [x19], #16		/* slot, &CWRITER */
	ldp	x12, x13, [x19], #16		/* CWRITER value, &CREADR */
	ldp	x14, x15, [x19], #16
	stp	x14, x15, [x10]
	ldp	x14, x15, [x19], #16
	stp	x14, x15, [x10, #16]
	dsb	sy
	str	x12, [x11]
	ldr	x14, [x13]
	str	x14, [x20], #8
	b	next

exception:
	str	x9, [x21, #32]
	str	x19, [x21, #40]
	mrs	x9, esr_el1
	mrs	x10, elr_el1
	mrs	x11, far_el1
	str	x10, [x21, #16]
	str	x11, [x21, #24]
	str	x9, [x21, #8]
	b	exception

	.balign	2048
l2_vectors:
	.rept	16
	b	exception
	.balign	128
	.endr
	.global	l2_end
l2_end:
